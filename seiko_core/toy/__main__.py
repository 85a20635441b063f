"""``python -m seiko_core.toy build --out models/shapes-sd``: train the embedded shapes model."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .build import BuildConfig, build, refine_existing, remeasure


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
    r = sub.add_parser("refine-encoder", help="run the build's last stage (image-encoder refinement) on a finished "
                       "build made before that stage existed, then re-measure")
    r.add_argument("--model", required=True, help="a directory written by `build`")
    r.add_argument("--steps", type=int, default=None, help="refinement steps (default: the build's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.command == "quality":
        quality = remeasure(args.model, guidance=args.guidance, steps=args.steps)
        print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
        return 0
    if args.command == "refine-encoder":
        quality = refine_existing(args.model, steps=args.steps)
        print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
        return 0
    cfg = BuildConfig.quick() if args.quick else BuildConfig()
    cfg.seed = args.seed
    for field in ("clip_steps", "vae_steps", "unet_steps", "n_images"):
        if getattr(args, field) is not None:
            setattr(cfg, field, getattr(args, field))
    quality = build(args.out, cfg)
    print(json.dumps({k: v for k, v in quality.items() if k != "build_config"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
