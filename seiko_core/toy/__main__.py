"""``python -m seiko_core.toy build --out models/shapes-sd``: train the embedded shapes model."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
from pathlib import Path

from ..atomic import temp_sibling
from ..checkpoint import CheckpointError
from ..models import ModelLoadError
from ..sampling import SchedulerConfigError
from .build import (
    BuildConfig,
    QualityFileError,
    RefineError,
    build,
    refine_existing,
    refine_unet_existing,
    remeasure,
    replace_model,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seiko_core.toy", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train the shapes model from scratch and save it in diffusers format")
    b.add_argument("--out", required=True, help="output directory (created)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--quick", action="store_true", help="a few steps per stage, to check the build (useless model)")
    for field in ("clip_steps", "vae_steps", "unet_steps", "n_images"):
        b.add_argument("--" + field.replace("_", "-"), type=int, default=None)
    q = sub.add_parser("quality", help="re-measure a built model's QUALITY.json and model card (no training)")
    q.add_argument("--model", required=True, help="a directory written by `build`")
    q.add_argument("--guidance", type=float, default=None, help="classifier-free guidance for the fidelity samples")
    q.add_argument("--steps", type=int, default=None, help="DDIM steps for the fidelity samples")
    q.add_argument("--samples", type=int, default=None, help="fresh samples for the fidelity figures (default: the build's)")
    r = sub.add_parser("refine-encoder", help="run the build's last stage (image-encoder refinement) on a finished "
                       "build made before that stage existed, then re-measure (on a copy: the old model is moved aside to "
                       "MODEL.replaced-<UTC time>)")
    r.add_argument("--model", required=True, help="a directory written by `build`")
    r.add_argument("--steps", type=int, default=None, help="refinement steps (default: the build's)")
    u = sub.add_parser("refine-unet", help="run the UNet-refinement stage (every named shape drawn as often) on a "
                       "finished build, then re-measure (on a copy: the old model is moved aside to "
                       "MODEL.replaced-<UTC time>)")
    u.add_argument("--model", required=True, help="a directory written by `build`")
    u.add_argument("--steps", type=int, default=None, help="refinement steps (default: the build's)")
    u.add_argument("--threads", type=int, default=None, help="CPU threads (default: the build's)")
    u.add_argument("--min-snr-gamma", type=float, default=None,
                   help="the stage's min-SNR loss weighting (0: plain MSE; default: the build's)")
    args = parser.parse_args(argv)
    if args.command == "quality" and args.samples is not None and args.samples < 1:
        parser.error(f"--samples must be at least 1, got {args.samples}")
    # --steps 0 or -3 and --threads 0 raised ValueError and RuntimeError tracebacks deep in the commands (sixth review)
    for flag in ("steps", "threads"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be at least 1, got {value}")
    gamma = getattr(args, "min_snr_gamma", None)
    if gamma is not None and not (math.isfinite(gamma) and gamma >= 0):
        parser.error(f"--min-snr-gamma must be a finite number of at least 0, got {gamma}")
    guidance = getattr(args, "guidance", None)
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        parser.error(f"--guidance must be a finite number of at least 0, got {guidance}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.command in ("quality", "refine-encoder", "refine-unet"):
        model = Path(args.model)
        if not (model / "QUALITY.json").is_file() or not (model / "model_index.json").is_file():
            parser.error(f"{args.model!r} is not a model written by `build` (it needs model_index.json and QUALITY.json)")
    # a full disk, a missing file; the commands that read a finished model also an edited QUALITY.json
    faults: tuple[type[Exception], ...] = (OSError,)
    if args.command in ("quality", "refine-encoder", "refine-unet"):
        faults = (OSError, json.JSONDecodeError, KeyError, RefineError)
    try:
        return _run(args)
    except (ModelLoadError, CheckpointError, SchedulerConfigError, QualityFileError) as exc:
        # the project's own refusals are sentences already (a model with NaN weights was a traceback: sixth review)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except faults as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    if args.command == "quality":
        quality = remeasure(args.model, guidance=args.guidance, steps=args.steps, samples=args.samples)
        print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
        return 0
    if args.command == "refine-encoder":
        quality = refine_existing(args.model, steps=args.steps)
        print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
        return 0
    if args.command == "refine-unet":
        quality = refine_unet_existing(args.model, steps=args.steps, threads=args.threads, min_snr_gamma=args.min_snr_gamma)
        print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
        return 0
    cfg = BuildConfig.quick() if args.quick else BuildConfig()
    cfg.seed = args.seed
    for field in ("clip_steps", "vae_steps", "unet_steps", "n_images"):
        if getattr(args, field) is not None:
            setattr(cfg, field, getattr(args, field))
    quality = build_in_place_of(Path(args.out), cfg)
    print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
    return 0


def build_in_place_of(out: Path, cfg: BuildConfig) -> dict:
    """Build into a temporary sibling of ``out`` and move it into place only when the build has finished: an
    interrupted or failed build leaves ``out`` as it was. A model already at ``out`` (say the shipped
    ``models/shapes-sd``, whose adapters depend on it) is moved aside to ``out.replaced-<UTC time>``, not deleted."""
    out = out.expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {str(out)!r} is a file, not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(out)
    try:
        quality = build(tmp, cfg)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the partial build only; ``out`` was never touched
        raise
    replace_model(out, tmp)
    return quality


if __name__ == "__main__":
    raise SystemExit(main())
