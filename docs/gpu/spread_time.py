"""Time app.selection.choose('spread') at the sd15 preset's candidate counts (candidate_factor 2, honest_share 0.25,
768-d image embeddings, 4 reward heads; random inputs from a fixed seed).

Run from the root of the tree to be timed, reading the script from stdin so that tree's `app` is imported:
    python - 1024 2048 4096 < docs/gpu/spread_time.py
"""

import hashlib
import sys
import time

import numpy as np
import torch

from app.selection import choose

torch.set_num_threads(1)
for n_show in [int(a) for a in sys.argv[1:]]:
    n_cand = 2 * n_show
    rng = np.random.default_rng(0)
    preds = torch.from_numpy(rng.normal(size=(n_cand, 4)))
    emb = torch.from_numpy(rng.normal(size=(n_cand, 768)).astype(np.float32))
    start = time.perf_counter()
    out = choose("spread", n_show, n_cand, seed=0, preds=preds, honest_share=0.25, emb=emb)
    seconds = time.perf_counter() - start
    # the choices themselves (which candidates, shown or not, in what rank), so two trees' runs can be compared
    digest = hashlib.sha256(repr(sorted((c.index, c.shown, c.rank) for c in out)).encode()).hexdigest()[:12]
    print(f"shown={n_show} candidates={n_cand}: {seconds:.1f} s, choices sha256 {digest}", flush=True)
