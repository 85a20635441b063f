"""``python -m app bench-taste --person SPEC --rounds 4 --budget 32 --seeds 0,1,2 --out DIR [--feedback pairs]``: the
product benchmark (app.bench_taste; docs/bench-taste.md)."""

from __future__ import annotations

import argparse
import math
import signal
import sys
from pathlib import Path

from app.experiment_options import FEEDBACKS, MAX_CANDIDATE_FACTOR, SELECTIONS, ExperimentOptions
from app.settings import DEFAULT_MODEL

MAX_SEED = 10_000  # seed s creates s placeholder experiments first (app.bench_taste: its experiment id is s + 1)
MAX_SEEDS = 64  # each seed is a whole run of the app: hours on a GPU


def _seeds(text: str) -> tuple[int, ...]:
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--seeds must be whole numbers separated by commas, got {shown!r}") from exc
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must be distinct whole numbers >= 0, got {shown!r}")
    if len(seeds) > MAX_SEEDS or max(seeds) > MAX_SEED:
        raise argparse.ArgumentTypeError(f"--seeds must be at most {MAX_SEEDS} seeds, each from 0 to {MAX_SEED}, "
                                         f"got {len(seeds)} seed(s) up to {max(seeds)}")
    return seeds


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from app.people import BUILT_IN

    people = "; ".join(f"{k}: {v}" for k, v in sorted(BUILT_IN.items()))
    parser.add_argument("--person", required=True, help=f"a built-in person ({people}) or path/to/file.py:function")
    parser.add_argument("--rounds", type=int, default=4, help="trainings (rounds 0..R are rated; default 4)")
    parser.add_argument("--budget", type=int, default=32,
                        help="query images per round (default 32): as many ratings; with --feedback pairs at most as "
                             "many comparisons (the pairs the round offers)")
    parser.add_argument("--seeds", type=_seeds, default=(0, 1, 2), help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", type=Path, required=True, help="output directory: results.json, bench_taste.png, seed_<s>/")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"base model directory (default {DEFAULT_MODEL})")
    default = ExperimentOptions()  # a new experiment's (app.experiment_options)
    parser.add_argument("--selection", choices=SELECTIONS, default=default.selection,
                        help=f"which candidates a round shows (default {default.selection}; before 2 Dec 2026 random)")
    parser.add_argument("--candidate-factor", type=int, default=default.candidate_factor,
                        help=f"candidates generated per shown image in rounds >= 1, 1..{MAX_CANDIDATE_FACTOR} (default "
                             f"{default.candidate_factor}; before 2 Dec 2026 1)")
    parser.add_argument("--honest-share", type=float, default=0.25,
                        help="share of a selected round drawn uniformly at random from the candidates (default 0.25)")
    parser.add_argument("--auto-close", action="store_true", help="let the app close each round at its last rating")
    # checked in main (one sentence), not by argparse choices (a usage block)
    parser.add_argument("--feedback", default="scores",
                        help="what the person gives: scores (1-10 ratings, the default), pairs (a choice on every pair "
                             "of two images of one prompt the round offers, nothing rated) or both")
    parser.add_argument("--temperature", type=float, default=None,
                        help="with pairs or both: the person's choice temperature T in rating points, P(left) = "
                             "sigmoid((s_left - s_right) / T) (default sqrt(6)/pi * 0.5 = 0.39)")
    parser.add_argument("--tie-eps", type=float, default=None,
                        help="with pairs or both: a tie when the two ratings differ by at most this (default 0: equal ratings)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE", dest="overrides",
                        help="override a field of the experiment's SEIKO config, as `python -m seiko_core.simulate --set` "
                             "does (e.g. finetune.epochs=2); repeatable; recorded in results.json")
    parser.add_argument("--round-timeout", type=float, default=3600.0, help="seconds to wait for a round's images (default 3600)")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke test of the plumbing only: the tests' tiny config (3 sampling steps, 2 training "
                             "trajectories, a 2x2 eval grid); its figures say nothing about learning")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    from app.bench_taste import BenchConfig, BenchError, PairChoice, run
    from app.experiment_options import ExperimentOptions
    from app.people import PersonError
    from db.errors import InvalidInput

    try:
        if not 1 <= args.rounds <= 50:
            raise BenchError(f"--rounds must be from 1 to 50, got {args.rounds}")
        if not 2 <= args.budget <= 4096:
            raise BenchError(f"--budget must be from 2 to 4096, got {args.budget}")
        if not (math.isfinite(args.round_timeout) and args.round_timeout > 0):
            raise BenchError(f"--round-timeout must be a positive number of seconds, got {args.round_timeout}")
        if args.feedback not in FEEDBACKS:
            raise BenchError(f"--feedback must be scores, pairs or both, got {args.feedback!r}")
        choice = {k: v for k, v in (("temperature", args.temperature), ("tie_eps", args.tie_eps)) if v is not None}
        if choice and args.feedback == "scores":
            raise BenchError("--temperature and --tie-eps are how the person compares two images; give them with "
                             "--feedback pairs or both")
        for flag, key in (("--temperature", "temperature"), ("--tie-eps", "tie_eps")):
            if key in choice and not (math.isfinite(choice[key]) and choice[key] >= 0):
                raise BenchError(f"{flag} must be a finite number >= 0, got {choice[key]}")
        options = ExperimentOptions(selection=args.selection, candidate_factor=args.candidate_factor,
                                    honest_share=args.honest_share, auto_close=bool(args.auto_close),
                                    feedback=args.feedback)
        cfg = BenchConfig(person=args.person, rounds=args.rounds, budget=args.budget, seeds=args.seeds, out=args.out,
                          model=args.model, options=options, round_timeout_s=args.round_timeout, tiny=bool(args.tiny),
                          pair_choice=PairChoice(**choice), overrides=tuple(args.overrides))
        cfg.check_overrides()
        signal.signal(signal.SIGTERM, _interrupt)  # SIGTERM like Ctrl-C: the worker is stopped on the way out
        run(cfg, ["python", "-m", "app", "bench-taste", *sys.argv[2:]], log=lambda line: print(line, flush=True))
    except (BenchError, PersonError, InvalidInput) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopped; run the same command again to resume (finished seeds are kept)", file=sys.stderr)
        return 130
    print(f"wrote {args.out / 'results.json'} and {args.out / 'bench_taste.png'}", flush=True)
    return 0
