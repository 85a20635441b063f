"""Fidelity of the shapes model's samples at several DDIM step counts, on the same prompts and seeds (paired).

    python -m seiko_core.toy.step_fidelity --model models/shapes-sd --steps 10,15,20 --n 192

The prompts name shape, colour, background and size (``quality.fidelity_prompts``); each image is read back by the
pixel reader (``quality.fidelity``). Every step count gets the same prompts and the same seeds, so the differences
are the sampler's. Used to choose the shapes preset's sampler steps (BENCHMARKS.md, issue 12).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch

from .quality import fidelity, fidelity_prompts


def step_fidelity(parts, steps: list[int], n: int, *, seed: int = 777, guidance: float = 7.5, eta: float = 1.0,
                  batch_size: int = 32) -> dict[int, dict[str, float]]:
    from ..sampling import sample, to_uint8

    prompts, specs = fidelity_prompts(n, seed=seed)
    seeds = list(range(5000, 5000 + n))
    out = {}
    for k in steps:
        with torch.no_grad():
            images = sample(parts, prompts, seeds, steps=k, guidance=guidance, eta=eta, batch_size=batch_size)
        out[k] = fidelity(np.asarray(to_uint8(images)), specs)
    return out


def main(argv: list[str] | None = None) -> int:
    from ..models import load_model

    ap = argparse.ArgumentParser(prog="python -m seiko_core.toy.step_fidelity", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="models/shapes-sd")
    ap.add_argument("--steps", default="10,15,20", help="comma-separated DDIM step counts (default 10,15,20)")
    ap.add_argument("--n", type=int, default=192, help="samples per step count (default 192)")
    ap.add_argument("--seed", type=int, default=777, help="seed of the prompts (default 777)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        steps = [int(s) for s in args.steps.split(",") if s.strip()]
    except ValueError:
        print(f"error: --steps must be whole numbers separated by commas, got {args.steps!r}", file=sys.stderr)
        return 1
    parts = load_model(args.model, device="cpu")
    print(json.dumps({str(k): v for k, v in step_fidelity(parts, steps, args.n, seed=args.seed).items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
