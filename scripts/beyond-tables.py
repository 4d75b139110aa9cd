#!/usr/bin/env python3
"""Print the four tables of results/beyond.md from the JSON that `make beyond-report` writes.

Usage: scripts/beyond-tables.py [results/beyond]

Each cell is mean ± sd over seeds; for a variant other than sgd, the brackets give the seeds where its
value is higher than SGD's for the same seed and Welch's two-sided p against SGD, as `report table`
computed them. Only the standard library is used; the toolkit itself never needs Python.
"""
import json
import sys
from pathlib import Path

VARIANTS = ["sgd", "sgd-noise", "ngd-f32", "ngd-f64", "exact-empirical", "exact-sampled"]
GROUPS = ["mnist mlp_1x128", "mnist mlp_2x256", "fashion-mnist mlp_2x128"]
TABLES = [
    ("llc", "λ̂ (epochs 19–20)", 1.0, 1),
    ("trace", "Hessian trace (exact, epoch 20)", 1.0, 1),
    ("test-loss", "test loss (epoch 20)", 1.0, 3),
    ("test-acc", "test accuracy, % (epoch 20)", 100.0, 2),
]


def p_text(p):
    return "p < 1e-16" if p < 1e-16 else f"p {p:.1e}"


def cell(entry, comparison, scale, digits):
    text = f"{entry['mean'] * scale:.{digits}f} ± {entry['sd'] * scale:.{digits}f}"
    if comparison is not None:
        wins, paired = comparison["wins"], comparison["paired_seeds"]
        text += f" ({wins}/{paired} higher, {p_text(comparison['p_two_sided'])})"
    return text


def main():
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "results/beyond")
    for stem, title, scale, digits in TABLES:
        data = json.loads((folder / f"{stem}.json").read_text())
        print(f"| {title} | " + " | ".join(VARIANTS) + " |")
        print("|---" * (len(VARIANTS) + 1) + "|")
        for group in GROUPS:
            labels = data["groups"][group]["labels"]
            comparisons = {c["label"]: c for c in data["groups"][group].get("comparisons", [])}
            n = labels["sgd"]["n"]
            cells = [
                cell(labels[v], comparisons.get(v) if v != "sgd" else None, scale, digits)
                for v in VARIANTS
            ]
            print(f"| {group} (n = {n}) | " + " | ".join(cells) + " |")
        print()


if __name__ == "__main__":
    main()
