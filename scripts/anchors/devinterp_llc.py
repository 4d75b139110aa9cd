#!/usr/bin/env python3
"""devinterp anchor: the LLC of an MLP checkpoint on MNIST with devinterp's own SGLD sampler.

Runs devinterp (2.x) `sample()` + `compute_llc()` with the paper's settings (lr 1e-4, localization
100, nbeta = default_nbeta(128) = 128/ln 128, batch 128, 1000 draws, 2 chains) on the same
checkpoint and training images that `llc` uses, and prints one JSON line per seed:
  {"seed", "seconds", "llc_mean", "llc_std", "llc_per_chain", "init_loss", "steps"}.

devinterp 2.x expects a HuggingFace dataset with an `input_ids` column and a per-token loss; each
row here is [sample index, label] and the loss function looks the image up by index, so the sampled
quantity is the plain mean cross-entropy of the MLP on the minibatch (context length 1).

Exit status 3 (with a message on stderr) when devinterp is not importable.
Used by `common/benches/sgld.rs` (timing) and `scripts/crosscheck-llc.sh` (agreement).
"""
import argparse
import gzip
import json
import os
import sys
import tempfile
import time
import warnings


def read_idx(folder, stem):
    for name in (stem, stem + ".gz"):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                return f.read()
    raise FileNotFoundError(f"{stem}[.gz] not in {folder}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data-dir", required=True, help="folder with train-images-idx3-ubyte[.gz]")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--train-samples", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--gamma", type=float, default=100.0)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    try:
        import numpy as np
        import torch
        from datasets import Dataset
        from devinterp.slt.llc import compute_llc
        from devinterp.slt.sampling import sample
        from devinterp.utils import default_nbeta
        from safetensors.torch import load_file
    except ImportError as e:
        print(f"devinterp anchor skipped: {e}", file=sys.stderr)
        sys.exit(3)
    warnings.filterwarnings("ignore")
    import logging
    logging.disable(logging.WARNING)
    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(args.threads)

    images = np.frombuffer(read_idx(args.data_dir, "train-images-idx3-ubyte"), np.uint8, offset=16)
    labels = np.frombuffer(read_idx(args.data_dir, "train-labels-idx1-ubyte"), np.uint8, offset=8)
    n = labels.shape[0]
    images = images.reshape(n, 784)
    if args.train_samples:
        n = min(n, args.train_samples)
        images, labels = images[:n], labels[:n]
    # The paper's normalisation in float32 (torchvision ToTensor + Normalize).
    x_all = (torch.from_numpy(images.astype(np.float32)) / 255.0 - 0.1307) / 0.3081
    y_all = torch.from_numpy(labels.astype(np.int64))

    state = load_file(args.checkpoint)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)
    )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)

    rows = [[i, int(labels[i])] for i in range(n)]
    ds = Dataset.from_dict({"input_ids": rows}).with_format("torch")

    def loss_fn(m, input_ids):
        idx = input_ids[:, 0]
        logits = m(x_all[idx])
        ce = torch.nn.functional.cross_entropy(logits, y_all[idx], reduction="none")
        return ce[:, None]

    nbeta = default_nbeta(args.batch_size)
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = os.path.join(tempfile.mkdtemp(), "samples.zarr")
        t = time.perf_counter()
        samples = sample(
            model=model,
            dataset=ds,
            observables={},
            lr=args.lr,
            n_beta=nbeta,
            num_chains=args.chains,
            num_draws=args.draws,
            batch_size=args.batch_size,
            num_init_loss_batches=args.chains,
            init_seed=seed,
            localization=args.gamma,
            device="cpu",
            output_path=out,
            loss_fn=loss_fn,
        )
        res = compute_llc(samples)
        seconds = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "seed": seed,
                    "seconds": seconds,
                    "llc_mean": float(res["llc_mean"].values),
                    "llc_std": float(res["llc_std"].values),
                    "llc_per_chain": [float(v) for v in res["llc_per_chain"].values],
                    "init_loss": float(res["init_loss"].values),
                    "nbeta": float(nbeta),
                    "steps": args.chains * args.draws,
                    "devinterp": __import__("devinterp").__version__
                    if hasattr(__import__("devinterp"), "__version__")
                    else "unknown",
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
