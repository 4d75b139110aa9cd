#!/usr/bin/env python3
"""Print the tables of results/grokking-nanda.md from the records `make grokking-nanda` commits.

Usage: scripts/grokking-nanda-tables.py [results/grokking-nanda]

1. Per seed, the epochs of the transition (from every epoch's record of `train --eval-train`) and λ̂ at
   its peak, at the first checkpoint with test accuracy >= 50 % and >= 90 %, and at the last epoch.
2. Does λ̂ fall because the network generalises, or only because the training loss at w* falls (a
   cross-entropy minimum with a smaller loss is flatter)? Over the checkpoints from epoch 100 (after the
   peak) until the test set is solved (test accuracy < 99 %), ordinary least squares of ln λ̂ on
   ln L(w*) (the training loss over the whole training set at the checkpoint), on the epoch (time, which
   weight decay acts over), on the test accuracy, and on their combinations, with the coefficients' t
   statistics and R².

3. When `make grokking-nanda-check` has run: seed 1's λ̂ every 50 epochs with the run's sampler and the two
   check samplers, and the Hessian trace of the same checkpoints with nβ·tr H/(2γ) (λ̂'s value if the
   loss were quadratic out to the chains' distance from w*).

Only the standard library is used; the toolkit itself never needs Python.
"""
import json
import math
import sys
from pathlib import Path


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ols(xs, ys):
    """Least squares y ≈ X b with an intercept column in X: (b, t statistics of b, R²)."""
    k = len(xs[0])
    xtx = [[sum(x[i] * x[j] for x in xs) for j in range(k)] for i in range(k)]
    xty = [sum(x[i] * y for x, y in zip(xs, ys)) for i in range(k)]
    inv = invert(xtx)
    b = [sum(inv[i][j] * xty[j] for j in range(k)) for i in range(k)]
    res = [y - sum(bi * xi for bi, xi in zip(b, x)) for x, y in zip(xs, ys)]
    s2 = sum(r * r for r in res) / (len(ys) - k)
    t = [b[i] / math.sqrt(s2 * inv[i][i]) for i in range(k)]
    mean = sum(ys) / len(ys)
    r2 = 1 - sum(r * r for r in res) / sum((y - mean) ** 2 for y in ys)
    return b, t, r2


def invert(a):
    """Gauss-Jordan inverse of a small symmetric positive-definite matrix."""
    n = len(a)
    m = [row[:] + [1.0 if i == j else 0.0 for j in range(n)] for i, row in enumerate(a)]
    for c in range(n):
        p = max(range(c, n), key=lambda r: abs(m[r][c]))
        m[c], m[p] = m[p], m[c]
        piv = m[c][c]
        m[c] = [v / piv for v in m[c]]
        for r in range(n):
            if r != c:
                f = m[r][c]
                m[r] = [v - f * w for v, w in zip(m[r], m[c])]
    return [row[n:] for row in m]


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "results/grokking-nanda")
    seeds = sorted(int(p.name.split("-")[1]) for p in root.glob("seed-*") if (p / "llc.jsonl").exists())
    print("| seed | training acc. 100 % | test ≥ 50 % | test ≥ 90 % | test 100 % | λ̂ peak (epoch) "
          "| λ̂ at test ≥ 50 % | λ̂ at test ≥ 90 % | λ̂ at the last epoch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for s in seeds:
        train = {r["epoch"]: r for r in read_jsonl(root / f"seed-{s}" / "train.jsonl")}
        llc = read_jsonl(root / f"seed-{s}" / "llc.jsonl")

        def first(pred):
            return next((e for e in sorted(train) if pred(train[e])), None)

        def llc_from(epoch):
            after = [r for r in llc if epoch is not None and r["epoch"] >= epoch]
            if not after:
                return "—"
            r = after[0]
            return f"{r['llc']['llc']:.1f} ± {r['llc']['llc_sd']:.1f} (epoch {r['epoch']})"

        e50 = first(lambda r: r["test_acc"] >= 0.5)
        e90 = first(lambda r: r["test_acc"] >= 0.9)
        peak = max(llc, key=lambda r: r["llc"]["llc"])
        last = llc[-1]
        print(f"| {s} | {first(lambda r: r['train_acc'] >= 1.0)} | {e50} | {e90} | "
              f"{first(lambda r: r['test_acc'] >= 1.0)} | "
              f"{peak['llc']['llc']:.1f} ± {peak['llc']['llc_sd']:.1f} ({peak['epoch']}) | "
              f"{llc_from(e50)} | {llc_from(e90)} | "
              f"{last['llc']['llc']:.2f} ± {last['llc']['llc_sd']:.2f} ({last['epoch']}) |")
        for r in llc:
            t = train[r["epoch"]]
            if r["epoch"] >= 100 and t["test_acc"] < 0.99:
                rows.append((math.log(r["llc"]["llc"]), math.log(t["train_eval_loss"]), t["test_acc"],
                             r["epoch"] / 100))
    print()
    ys = [r[0] for r in rows]
    print(f"ln λ̂ over the {len(rows)} checkpoints from epoch 100 with test accuracy < 99 % "
          f"(seeds {', '.join(map(str, seeds))}):")
    print()
    print("| regressors | coefficients (t) | R² |")
    print("| --- | --- | --- |")
    names = {1: "ln L(w*)", 2: "test accuracy", 3: "epoch/100"}
    for cols in ([1], [3], [2], [1, 3], [1, 2], [1, 2, 3]):
        xs = [[1.0] + [r[c] for c in cols] for r in rows]
        b, t, r2 = ols(xs, ys)
        labels = [names[c] for c in cols]
        name = " + ".join(labels)
        coef = ", ".join(f"{lab} {bi:+.3f} (t {ti:+.1f})" for lab, bi, ti in zip(labels, b[1:], t[1:]))
        print(f"| {name} | {coef} | {r2:.3f} |")

    check = root / "seed-1"
    files = [check / f for f in ("llc.jsonl", "llc-check-1.jsonl", "llc-check-2.jsonl", "trace-check.jsonl")]
    if all(f.exists() for f in files):
        train = {r["epoch"]: r for r in read_jsonl(check / "train.jsonl")}
        runs = [{r["epoch"]: r["llc"] for r in read_jsonl(f)} for f in files[:3]]
        traces = {r["epoch"]: r["hessian"] for r in read_jsonl(files[3])}
        heads = [f"ε {r['epsilon']:.0e}, γ {r['gamma']:g}".replace("e-0", "e-") for r in (next(iter(x.values())) for x in runs)]
        print()
        print(f"| epoch | test acc. % | L(w*) | λ̂, {heads[0]} (the run's) | λ̂, {heads[1]} | λ̂, {heads[2]} "
              f"| tr H (Hutch++) | nβ·tr H/(2γ), γ of the run |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for e in sorted(traces):
            t = train[e]
            cells = []
            for x in runs:
                L = x[e]
                acc = L["diagnostics"]["mala_acceptance_mean"]
                cells.append(f"{L['llc']:.1f} ± {L['llc_sd']:.1f} (acc. {acc:.2f})")
            h = traces[e]
            quad = runs[0][e]["nbeta"] * h["trace"] / (2 * runs[0][e]["gamma"])
            print(f"| {e} | {t['test_acc'] * 100:.1f} | {t['train_eval_loss']:.3g} | {' | '.join(cells)} | "
                  f"{h['trace']:.3g} ± {h['trace_se']:.2g} | {quad:.3g} |")


if __name__ == "__main__":
    main()
