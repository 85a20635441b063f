"""Lever S, measurement 2 (BENCHMARKS.md): two models' shape, colour and background fidelity on the same fresh draw.

One prompt draw no earlier figure used (480 prompts, seed 11; image seeds 50,000 on), guidance 7.5, eta 1, at the
app's 10 DDIM steps and QUALITY.json's 30, both models on the same prompts and seeds, so the shape difference
(second model minus first) is paired per sample: mean and 95% interval (mean +- 1.96 sd / sqrt(n)).

Usage: python docs/lever-s/paired.py MODEL_A MODEL_B   (one JSON line per model and step count, then the differences)
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

N = 480
GUIDANCE = 7.5

torch.set_num_threads(2)
prompts, specs = q.fidelity_prompts(N, seed=11)
seeds = list(range(50_000, 50_000 + N))
hits = {}  # (model index, steps) -> per-sample shape hit (0/1)
for m, model in enumerate(sys.argv[1:3]):
    parts = load_model(model, device="cpu")
    for steps in (10, 30):
        rd = read_batch(to_uint8(sample(parts, prompts, seeds, steps=steps, guidance=GUIDANCE, eta=1.0, batch_size=32)))
        shape = np.array([r.shape == s.shape for r, s in zip(rd, specs, strict=True)], dtype=float)
        hits[m, steps] = shape
        cell = collections.defaultdict(list)
        for ok, s in zip(shape, specs, strict=True):
            cell[f"{s.shape}/{s.size}"].append(ok)
        print(json.dumps({
            "model": model, "steps": steps, "n": N, "shape": round(float(shape.mean()), 4),
            "colour": round(float(np.mean([r.color == s.color for r, s in zip(rd, specs, strict=True)])), 4),
            "background": round(float(np.mean([r.background == s.background for r, s in zip(rd, specs, strict=True)])), 4),
            "shape_by_size": {k: [round(float(np.mean(v)), 3), len(v)] for k, v in sorted(cell.items())},
            "misread": collections.Counter(f"{s.shape}->{r.shape}" for r, s in zip(rd, specs, strict=True)
                                           if r.shape != s.shape).most_common(6),
        }), flush=True)
for steps in (10, 30):
    d = hits[1, steps] - hits[0, steps]
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(N)
    print(json.dumps({"steps": steps, "shape_b_minus_a": [round(float(d.mean()), 4), round(float(d.mean()) - half, 4),
                                                          round(float(d.mean()) + half, 4)]}), flush=True)
