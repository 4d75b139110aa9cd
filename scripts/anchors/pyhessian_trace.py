#!/usr/bin/env python3
"""PyHessian anchor for common/benches/hessian.rs: the same Hessian work done by PyHessian.

Loads a checkpoint (safetensors, PyTorch names) into the matching PyTorch module, takes the first
--samples MNIST training images in file order (torchvision normalisation, float32) in batches of
--batch-size (the paper's setting: 10 batches of 128), and times with 1 torch thread:
  * one Hessian-vector product over all batches (pyhessian.hessian.dataloader_hv_product, the
    paper's dataloader mode) and, for reference, over one batch of all samples (PyHessian's cached
    single-batch mode);
  * hessian.trace(maxIter=--probes, tol=0), i.e. exactly --probes Rademacher probes.
Prints one JSON line: hvp_seconds, hvp_single_batch_seconds, trace_seconds, probes, trace,
sd_per_probe. Exits 2 with a message when torch or pyhessian is missing.
"""
import argparse
import gzip
import json
import os
import sys
import time

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    from pyhessian import hessian
    from safetensors.torch import load_file
except ImportError as e:  # the benchmark prints this and goes on
    print(f"pyhessian anchor: {e}", file=sys.stderr)
    sys.exit(2)


class LeNet(nn.Module):
    """The paper's LeNet (architectures.LeNet, mnist, extra_layers=k), as the fixtures README describes."""

    def __init__(self, extra_layers=2):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU())
        self.extra = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(6, 6, 5, padding=2), nn.ReLU()) for _ in range(extra_layers)]
        )
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU())
        self.fc_1 = nn.Linear(256, 120)
        self.fc_2 = nn.Linear(120, 84)
        self.fc_3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.conv1(x)
        for layer in self.extra:
            x = layer(x)
        x = F.max_pool2d(x, 2)
        x = F.max_pool2d(self.conv2(x), 2)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc_1(x))
        x = F.relu(self.fc_2(x))
        return self.fc_3(x)


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find(data_dir, stem):
    for d in [data_dir, os.path.join(data_dir, "mnist")]:
        for name in [stem, stem + ".gz"]:
            p = os.path.join(d, name)
            if os.path.exists(p):
                return p
    raise FileNotFoundError(f"{stem}[.gz] not in {data_dir}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--model", default="mlp", choices=["mlp", "lenet"])
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--samples", type=int, default=1280)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--probes", type=int, default=100)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    images = read_idx(find(a.data_dir, "train-images-idx3-ubyte"))[: a.samples]
    labels = read_idx(find(a.data_dir, "train-labels-idx1-ubyte"))[: a.samples]
    x = ((torch.from_numpy(images.copy()).float() / 255.0) - 0.1307) / 0.3081
    x = x.unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    if a.model == "mlp":
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    else:
        model = LeNet(2)
    model.load_state_dict(load_file(a.checkpoint))
    model.eval()
    crit = nn.CrossEntropyLoss()
    batches = [(x[i: i + a.batch_size], y[i: i + a.batch_size]) for i in range(0, a.samples, a.batch_size)]

    h = hessian(model, crit, dataloader=batches, cuda=False)
    v = [torch.randn_like(p) for p in h.params]
    times = []
    for _ in range(3):
        t = time.perf_counter()
        h.dataloader_hv_product(v)
        times.append(time.perf_counter() - t)
    hvp = sorted(times)[1]

    hs = hessian(model, crit, data=(x, y), cuda=False)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        from pyhessian.utils import hessian_vector_product

        hessian_vector_product(hs.gradsH, hs.params, v)
        times.append(time.perf_counter() - t)
    hvp_single = sorted(times)[1]

    t = time.perf_counter()
    vhv = h.trace(maxIter=a.probes, tol=0.0)
    trace_s = time.perf_counter() - t
    vhv = np.array(vhv)
    print(json.dumps({
        "hvp_seconds": hvp,
        "hvp_single_batch_seconds": hvp_single,
        "trace_seconds": trace_s,
        "probes": len(vhv),
        "trace": float(vhv.mean()),
        "sd_per_probe": float(vhv.std(ddof=1)) if len(vhv) > 1 else float("nan"),
        "torch_threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
