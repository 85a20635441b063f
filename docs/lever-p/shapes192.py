"""Shape fidelity per shape and size on 192 fresh samples (BENCHMARKS.md, "Lever P"), and what short prompts draw.

Usage: python docs/lever-p/shapes192.py MODEL_DIR   (prints JSON lines)
"""

import collections
import json
import sys

import numpy as np
import torch

from seiko_core.models import load_model
from seiko_core.sampling import sample, to_uint8
from seiko_core.toy import quality as q
from seiko_core.toy.pixels import read_batch

torch.set_num_threads(2)
parts = load_model(sys.argv[1], device="cpu")
prompts, specs = q.fidelity_prompts(192, seed=1)
out = {}
for steps in (30, 10):
    rd = read_batch(to_uint8(sample(parts, prompts, list(range(10_000, 10_192)), steps=steps, guidance=7.5, eta=1.0,
                                    batch_size=32)))
    by = collections.defaultdict(list)
    for r, s in zip(rd, specs, strict=True):
        for key in (s.shape, s.size, "all"):
            by[key].append(r.shape == s.shape)
        by["colour"].append(r.color == s.color)
        by["background"].append(r.background == s.background)
    out[steps] = {k: round(float(np.mean(v)), 3) for k, v in by.items()}
    out[f"{steps}_n"] = {k: len(v) for k, v in by.items()}
    misread = collections.Counter((s.shape, r.shape) for r, s in zip(rd, specs, strict=True) if r.shape != s.shape)
    out[f"{steps}_misread"] = [[a, b, n] for (a, b), n in misread.most_common(6)]
print(json.dumps({"model": sys.argv[1], **{str(k): v for k, v in out.items()}}))
# what a short prompt draws: the shapes and colours of 192 samples at the app's 10 steps
for prompt in ("a shape", "a purple shape"):
    rd = read_batch(to_uint8(sample(parts, [prompt] * 192, list(range(20_000, 20_192)), steps=10, guidance=7.5, eta=1.0,
                                    batch_size=32)))
    print(json.dumps({"model": sys.argv[1], "prompt": prompt,
                      "shapes": dict(collections.Counter(r.shape for r in rd).most_common()),
                      "colours": dict(collections.Counter(r.color for r in rd).most_common())}))
