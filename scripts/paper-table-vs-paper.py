#!/usr/bin/env python3
"""The paper's table against ours: for each MLP, our mean ± sd over seeds for SGD and NGD next to the
paper's (arXiv 2409.04913, Table 1, 30 seeds), Welch's t and two-sided p of ours against the paper's
(from the summary statistics, n = 30 on the paper's side), and NGD against SGD with wins, from the
report's JSON. Standard library only.

    scripts/paper-table-vs-paper.py results/paper-table.json results/paper-values.json
"""
import json
import math
import sys


def betacf(a, b, x):
    """Continued fraction of the regularised incomplete beta (Numerical Recipes, betacf)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < 1e-15:
            break
    return h


def betai(a, b, x):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
    front = math.exp(lbeta + a * math.log(x) + b * math.log(1.0 - x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * betacf(a, b, x) / a
    return 1.0 - front * betacf(b, a, 1.0 - x) / b


def welch(m1, s1, n1, m2, s2, n2):
    """Welch's t of sample 1 against sample 2 and its two-sided p (Welch–Satterthwaite df)."""
    v1, v2 = s1 * s1 / n1, s2 * s2 / n2
    t = (m1 - m2) / math.sqrt(v1 + v2)
    df = (v1 + v2) ** 2 / (v1 * v1 / (n1 - 1) + v2 * v2 / (n2 - 1))
    p = betai(df / 2.0, 0.5, df / (df + t * t))
    return t, p


def main():
    ours = json.load(open(sys.argv[1]))
    paper = json.load(open(sys.argv[2]))
    n_paper = 30
    rows = []
    order = ["mlp_1x64", "mlp_1x128", "mlp_1x256", "mlp_2x64", "mlp_2x128", "mlp_2x256"]
    print("| MLP | SGD λ̂ (n) | paper SGD | SGD vs paper: t, p | NGD λ̂ (n) | paper NGD | NGD vs paper: t, p "
          "| NGD vs SGD: Welch t, p | NGD higher | test loss SGD / NGD |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for arch in order:
        g = ours["groups"].get(arch)
        if g is None:
            continue
        cells = [arch.replace("mlp_", "")]
        for opt in ["sgd", "ngd"]:
            lab = g["labels"][opt]
            pm, ps = (float(v) for v in paper[arch][opt].split("±"))
            t, p = welch(lab["mean"], lab["sd"], lab["n"], pm, ps, n_paper)
            cells += [f"{lab['mean']:.2f} ± {lab['sd']:.2f} ({lab['n']})", f"{pm:.2f} ± {ps:.2f}",
                      f"{t:+.2f}, {p:.2g}"]
        s, n = g["labels"]["sgd"], g["labels"]["ngd"]
        t, p = welch(n["mean"], n["sd"], n["n"], s["mean"], s["sd"], s["n"])
        seeds = sorted(set(s["per_seed"]) & set(n["per_seed"]), key=int)
        wins = sum(n["per_seed"][k] > s["per_seed"][k] for k in seeds)
        cells += [f"{t:.2f}, {p:.2g}", f"{wins}/{len(seeds)}", f"{s['test_loss']:.3f} / {n['test_loss']:.3f}"]
        rows.append(cells)
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
