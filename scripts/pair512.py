#!/usr/bin/env python
"""4 x 512 SEIKO-UCB (covariance) and SEIKO-TS against Greedy and Non-adaptive: paired against this machine's Greedy
rerun where it exists, Welch against the per-seed values printed in BENCHMARKS.md (the Xeon runs)."""
import json
import math
import sys
from pathlib import Path

import numpy as np

from seiko_core.pooled import pretrained_spread
from seiko_core.simulate import final_rewards
from seiko_core.stats import mean_ci95, t975

PRINTED = {"greedy": {"gold_on_black": [3.88, 4.80, 5.67, 4.19, 4.54], "purple": [5.20, 4.62, 6.58, 5.85, 3.80]},
           "nonadaptive": {"gold_on_black": [2.89, 2.57, 3.00, 1.23], "purple": [6.26, 6.00, 4.82, 4.03, 3.67]}}
root = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/prior")

def load(name):
    p = root / name / "results.json"
    return json.loads(p.read_text()) if p.exists() else None

def welch(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    d = a.mean() - b.mean()
    h = t975(int(math.floor(df))) * math.sqrt(va + vb)
    return d, h, df

for oracle in ("gold_on_black", "purple"):
    res = load(f"x512cts-{oracle}")
    if res is None:
        continue
    sd = pretrained_spread(res)
    g = load(f"x512g-{oracle}")
    gfin = final_rewards(g, "greedy") if g else {}
    print(f"== {oracle} (pretrained sd {sd:.3f}); Greedy rerun here: {[round(gfin[k], 2) for k in sorted(gfin)]}")
    if gfin:
        m, h = mean_ci95(gfin.values())
        print(f"   Greedy (this machine) {m:.2f} [{m-h:.2f}, {m+h:.2f}]")
    for method in ("ucb_cov", "ts"):
        fin = final_rewards(res, method)
        if not fin:
            continue
        runs = res["runs"][method]
        kl = np.mean([runs[k]["rounds"][-1].get("kl_base", float("nan")) for k in fin])
        m, h = mean_ci95(fin.values()) if len(fin) > 1 else (list(fin.values())[0], float("nan"))
        print(f" {method}: n={len(fin)} {m:.2f} [{m-h:.2f}, {m+h:.2f}] per seed {[(k, round(fin[k], 2)) for k in sorted(fin)]} kl_base {kl:.1f}")
        if gfin:
            diffs = [fin[k] - gfin[k] for k in sorted(fin) if k in gfin]
            dm, dh = mean_ci95(diffs)
            print(f"   paired minus Greedy (this machine): {dm:+.2f} [{dm-dh:+.2f}, {dm+dh:+.2f}], {sum(d > 0 for d in diffs)}/{len(diffs)}")
        for base in ("greedy", "nonadaptive"):
            if len(fin) > 1:
                d, h, df = welch(list(fin.values()), PRINTED[base][oracle])
                print(f"   Welch minus {base} (printed, Xeon): {d:+.2f} [{d-h:+.2f}, {d+h:+.2f}] (df {df:.1f})")

# the machine effect: the same Greedy seeds on the Xeon (printed) and here
g = load("x512g-gold_on_black")
if g and final_rewards(g, "greedy"):
    here = final_rewards(g, "greedy")
    xeon = PRINTED["greedy"]["gold_on_black"]
    pairs = [(xeon[int(k)], here[k]) for k in sorted(here)]
    a, b = np.array(pairs).T
    d = b - a
    m, h = mean_ci95(d)
    r = float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 else float("nan")
    print(f"Greedy gold, Xeon vs here, per seed: {pairs}; here minus Xeon {m:+.2f} [{m-h:+.2f}, {m+h:+.2f}]; r = {r:+.2f}; "
          f"sd of the machine difference {d.std(ddof=1):.2f} against the sd between seeds {a.std(ddof=1):.2f} (Xeon) / {b.std(ddof=1):.2f} (here)")
    rep = load("x512rep-gold_on_black")
    print("serial repeat seed 0 here:", round(final_rewards(rep, "greedy")["0"], 4), "pool seed 0 here:", round(here.get("0", float("nan")), 4))
