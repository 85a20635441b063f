"""Lever Q, measurement 1 (BENCHMARKS.md): shape, colour and background fidelity at each candidate guidance scale.

One prompt draw no earlier figure used (480 prompts, seed 7; image seeds 30,000 on), eta 1, at 10 and 30 DDIM steps,
every candidate on the same prompts and seeds, so the shape differences from 7.5 are paired per sample.

Usage: python docs/lever-q/guidance.py MODEL_DIR   (prints one JSON line per guidance and step count, then the choice)
"""

import collections
import json
import math
import sys

import numpy as np
import torch

from seiko_core.models import load_model
from seiko_core.sampling import sample, to_uint8
from seiko_core.toy import quality as q
from seiko_core.toy.pixels import read_batch

CANDIDATES = (7.5, 10.0, 12.5, 15.0)
N = 480

torch.set_num_threads(2)
parts = load_model(sys.argv[1], device="cpu")
prompts, specs = q.fidelity_prompts(N, seed=7)
seeds = list(range(30_000, 30_000 + N))
hits = {}  # (guidance, steps) -> per-sample shape hit (0/1)
figures = {}
for steps in (10, 30):
    for g in CANDIDATES:
        rd = read_batch(to_uint8(sample(parts, prompts, seeds, steps=steps, guidance=g, eta=1.0, batch_size=32)))
        shape = np.array([r.shape == s.shape for r, s in zip(rd, specs, strict=True)], dtype=float)
        hits[g, steps] = shape
        per = collections.defaultdict(list)
        for ok, s in zip(shape, specs, strict=True):
            per[s.shape].append(ok)
        fig = {
            "guidance": g, "steps": steps, "n": N,
            "shape": round(float(shape.mean()), 4),
            "colour": round(float(np.mean([r.color == s.color for r, s in zip(rd, specs, strict=True)])), 4),
            "background": round(float(np.mean([r.background == s.background for r, s in zip(rd, specs, strict=True)])), 4),
            "per_shape": {k: [round(float(np.mean(v)), 3), len(v)] for k, v in sorted(per.items())},
        }
        if g != CANDIDATES[0]:
            d = shape - hits[CANDIDATES[0], steps]
            half = 1.96 * float(d.std(ddof=1)) / math.sqrt(N)
            fig["shape_minus_7.5"] = [round(float(d.mean()), 4), round(float(d.mean()) - half, 4),
                                      round(float(d.mean()) + half, 4)]
        figures[g, steps] = fig
        print(json.dumps(fig), flush=True)

# the rule: highest shape at 10 steps among candidates with colour >= 0.85 and background >= 0.90 at both step
# counts (ties to the lower guidance); it goes on only if its paired interval against 7.5 at 10 steps is above 0
ok = [g for g in CANDIDATES
      if all(figures[g, st]["colour"] >= 0.85 and figures[g, st]["background"] >= 0.90 for st in (10, 30))]
best = max(ok, key=lambda g: (figures[g, 10]["shape"], -g)) if ok else None
goes_on = best is not None and best != CANDIDATES[0] and figures[best, 10]["shape_minus_7.5"][1] > 0
print(json.dumps({"g_star": best, "goes_on": goes_on}))
