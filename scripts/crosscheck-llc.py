#!/usr/bin/env python3
"""Cross-check `llc` against devinterp on the PyTorch reference MLP (tests/fixtures/reference/
mlp_1x128.safetensors) with the paper's settings: ε 1e-4, γ 100, nβ = 128/ln 128, batch 128,
1000 draws, 2 chains, on the MNIST training set (data/mnist, `make data`).

For each of several seeds both tools give λ̂ (the mean of their 2 chains). The two sets of per-seed
values are compared by their means and standard errors across seeds:
  z = (mean_ours − mean_devinterp) / sqrt(se_ours² + se_devinterp²),
and the check passes when |z| < 3. Skipped (exit 0, message) when devinterp is not importable.

  $ python3 scripts/crosscheck-llc.py [--seeds 1,2,3,4,5] [--data-dir data] [--draws 1000]
"""
import argparse
import json
import math
import os
import subprocess
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def mean_se(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, sd / math.sqrt(len(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="1,2,3,4,5")
    ap.add_argument("--data-dir", default=os.path.join(ROOT, "data"))
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--checkpoint", default=os.path.join(ROOT, "tests/fixtures/reference/mlp_1x128.safetensors"))
    args = ap.parse_args()
    try:
        import devinterp  # noqa: F401
    except ImportError:
        print("crosscheck-llc: devinterp is not importable (pip install devinterp); skipped")
        return 0
    mnist = os.path.join(args.data_dir, "mnist")
    # The tool as built now (cargo is a no-op when it is up to date), where cargo puts it.
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    llc_bin = os.path.join(target, "release", "llc")
    subprocess.run(["cargo", "build", "--release", "-p", "llc"], cwd=ROOT, check=True)
    seeds = [int(s) for s in args.seeds.split(",")]

    ours = []
    for seed in seeds:
        out = subprocess.run(
            [llc_bin, "--data-dir", args.data_dir, "--dataset", "mnist", "--seed", str(seed),
             "--draws", str(args.draws), "--chains", str(args.chains), "--quiet", args.checkpoint],
            cwd=ROOT, check=True, capture_output=True, text=True,
        )
        rec = json.loads(out.stdout.splitlines()[-1])["llc"]
        ours.append(rec)
        print(f"ours      seed {seed}: λ̂ = {rec['llc']:.3f} (chains {', '.join(f'{v:.3f}' for v in rec['llc_per_chain'])}), "
              f"L_init {rec['init_loss']:.4f}, {rec['seconds']:.1f} s, verdict {rec['verdict']}", flush=True)

    anchor = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts/anchors/devinterp_llc.py"), "--checkpoint", args.checkpoint,
         "--data-dir", mnist, "--seeds", args.seeds, "--draws", str(args.draws), "--chains", str(args.chains),
         "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"},
    )
    if anchor.returncode == 3:
        print("crosscheck-llc: devinterp anchor skipped:", anchor.stderr.strip().splitlines()[-1])
        return 0
    if anchor.returncode != 0:
        print(anchor.stderr, file=sys.stderr)
        return 1
    theirs = [json.loads(l) for l in anchor.stdout.splitlines() if l.startswith("{")]
    for r in theirs:
        print(f"devinterp seed {r['seed']}: λ̂ = {r['llc_mean']:.3f} (chains {', '.join(f'{v:.3f}' for v in r['llc_per_chain'])}), "
              f"L_init {r['init_loss']:.4f}, {r['seconds']:.1f} s")

    a = [r["llc"] for r in ours]
    b = [r["llc_mean"] for r in theirs]
    ma, sa = mean_se(a)
    mb, sb = mean_se(b)
    z = (ma - mb) / math.sqrt(sa * sa + sb * sb)
    ta = sum(r["seconds"] for r in ours) / len(ours)
    tb = sum(r["seconds"] for r in theirs) / len(theirs)
    print(f"ours      λ̂ = {ma:.3f} ± {sa:.3f} (se over {len(a)} seeds), {ta:.2f} s per estimate")
    print(f"devinterp λ̂ = {mb:.3f} ± {sb:.3f} (se over {len(b)} seeds), {tb:.2f} s per estimate")
    print(f"difference {ma - mb:+.3f}, z = {z:+.2f}: {'agree' if abs(z) < 3 else 'DISAGREE'} (|z| < 3)")
    return 0 if abs(z) < 3 else 1


if __name__ == "__main__":
    sys.exit(main())
