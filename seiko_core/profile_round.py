"""Time (and optionally profile) one train round of a preset on random labels, as the worker runs it.

    HF_HUB_OFFLINE=1 .venv/bin/python -m seiko_core.profile_round                      # round 1: the KL's reference is the base model
    HF_HUB_OFFLINE=1 .venv/bin/python -m seiko_core.profile_round --adapters DIR/adapters/exp1 --previous 3 --profile 30

``--adapters`` is a data dir's adapter folder (``round_1`` .. ``round_K`` inside, as the worker writes them);
``--previous K`` loads rounds 1..K onto the UNet, as a worker that trained them holds them, and trains round K+1
from round K (the KL's reference). The labels are 32 random scores on the pretrained model's own images: the
timing does not depend on what they say. Prints the round's wall time, the fine-tuning's, and with ``--profile N``
cProfile's N most expensive calls by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/shapes-sd")
    parser.add_argument("--preset", default="shapes")
    parser.add_argument("--adapters", type=Path, default=None, help="folder with round_1 .. round_K adapters")
    parser.add_argument("--previous", type=int, default=0, help="train round K+1 from round K (needs --adapters)")
    parser.add_argument("--profile", type=int, default=0, help="print cProfile's N most expensive calls")
    parser.add_argument("--flush-denormal", choices=("on", "off"), default=None,
                        help="torch.set_flush_denormal before the round (default: leave the process's setting)")
    parser.add_argument("--no-time-limit", action="store_true",
                        help="take every optimiser step of the preset's epochs (finetune.max_seconds = None)")
    args = parser.parse_args(argv)
    if args.flush_denormal == "on" and not torch.set_flush_denormal(True):
        parser.error("this CPU cannot flush denormal numbers (torch.set_flush_denormal needs SSE3)")
    if args.previous and args.adapters is None:
        parser.error("--previous needs --adapters")
    from . import lora
    from .loop import generate_batch, train_round
    from .models import load_model
    from .presets import preset

    torch.manual_seed(0)
    if args.flush_denormal == "off":
        torch.set_flush_denormal(False)
    cfg = preset(args.preset)
    if args.no_time_limit:
        cfg.finetune.max_seconds = None
    parts = load_model(args.model)
    _, emb = generate_batch(parts, None, ["a shape"] * 32, list(range(32)), cfg)
    scores = torch.rand(32) * 9 + 1
    for k in range(1, args.previous + 1):
        lora.load_adapter(parts, args.adapters / f"round_{k}", lora.round_adapter_name(k))
    prev = lora.round_adapter_name(args.previous) if args.previous else None
    prof = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if prof:
        prof.enable()
    out = train_round(parts, emb, scores, cfg, new_index=args.previous + 1, prev_adapter=prev, seed=0)
    if prof:
        prof.disable()
    ft = out.metrics["finetune"]
    print(f"round {args.previous + 1} (reference: {prev or 'base'}), torch threads {torch.get_num_threads()}, "
          f"flush denormal {args.flush_denormal or 'unset'}: train_round {time.perf_counter() - start:.2f} s, "
          f"fine-tuning {ft['wall_s']:.2f} s ({out.finetune.steps} optimiser steps, {ft['wall_s'] / max(1, out.finetune.steps):.3f} s a step)")
    if prof:
        pstats.Stats(prof).sort_stats("cumulative").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
