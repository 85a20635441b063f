"""``python -m seiko_core.sample --model M --prompt P --n N --seed S --out grid.png``: a grid of samples.

Image k uses seed S + k, so the same seed always gives the same image. ``--adapter DIR`` samples with
a round's LoRA adapter (as saved by the fine-tuning step).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from .atomic import atomic_write, check_can_write


class GridOutError(ValueError):
    """``--out`` cannot be written: one sentence naming the path."""


def check_grid_out(out: Path) -> str:
    """The PIL format that writes the grid (an RGB image) to ``out``, checked before the model is loaded; GridOutError
    with one sentence when PIL has no writer of RGB images for its extension (``.xyz``; ``.xbm``, whose writer takes
    only black-and-white images; ``.h5``, whose writer is a stub) or its folder cannot hold a new file (a path under
    a file, a folder that refuses new files). Each of these was found only when the grid was saved, after all the
    sampling (sixth and seventh reviews)."""
    import io

    from PIL import Image

    Image.init()
    image_format = Image.registered_extensions().get(out.suffix.lower())
    if image_format is None or image_format not in Image.SAVE:
        ending = f"the extension {out.suffix!r}" if out.suffix else "a name without an extension"
        raise GridOutError(f"cannot write {str(out)!r}: PIL writes no image format for {ending}; use .png")
    try:  # the grid's mode through the format's own writer, on one pixel
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    except (OSError, ValueError, KeyError) as exc:
        raise GridOutError(f"cannot write {str(out)!r}: PIL cannot write an RGB image as {image_format} ({exc}); "
                           "use .png") from exc
    try:
        check_can_write(out)
    except OSError as exc:
        raise GridOutError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from exc
    return image_format


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seiko_core.sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/shapes-sd", help="local diffusers directory or hub id")
    p.add_argument("--prompt", action="append", required=True, help="repeat for several prompts (cycled over the grid)")
    p.add_argument("--n", type=int, default=16, help="number of images")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image k uses seed + k")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the preset's)")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--eta", type=float, default=None)
    p.add_argument("--preset", default=None, help="sampling defaults from a preset (shapes, sd15); default by model")
    p.add_argument("--adapter", default=None, help="a round's adapter directory to sample with")
    p.add_argument("--cols", type=int, default=8)
    p.add_argument("--scale", type=int, default=None, help="nearest-neighbour upscaling of each tile")
    p.add_argument("--out", required=True, help="PNG file to write")
    args = p.parse_args(argv)

    from .checkpoint import CheckpointError
    from .models import ModelLoadError, load_model
    from .presets import PRESETS, preset
    from .sampling import grid, sample

    # checked before the model is loaded (an unknown preset was refused only after it; sixth review), and a value of
    # 0 is the value asked for, not "the preset's" (--steps 0 ran the preset's steps, --guidance 0 its guidance)
    if args.n < 1:
        p.error("--n must be at least 1")
    if args.preset is not None and args.preset not in PRESETS:
        p.error(f"unknown preset {args.preset!r}; choose from {', '.join(sorted(PRESETS))}")
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be at least 1, got {args.steps}")
    if args.guidance is not None and not (math.isfinite(args.guidance) and args.guidance >= 0):
        p.error(f"--guidance must be a finite number of at least 0, got {args.guidance}")  # nan made a PNG
    if args.eta is not None and not (math.isfinite(args.eta) and 0 <= args.eta <= 1):
        p.error(f"--eta must be a number from 0 to 1, got {args.eta}")
    for flag in ("cols", "scale"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    out = Path(args.out)
    try:
        image_format = check_grid_out(out)
    except GridOutError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        parts = load_model(args.model)
        small = parts.sample_size <= 32
        cfg = preset(args.preset or ("shapes" if small else "sd15")).sampling
        if args.adapter:
            from .lora import load_adapter

            load_adapter(parts, args.adapter, name="sample")
    except (ModelLoadError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    prompts = [args.prompt[k % len(args.prompt)] for k in range(args.n)]
    seeds = [args.seed + k for k in range(args.n)]
    steps = cfg.steps if args.steps is None else args.steps
    with tqdm(total=args.n * steps, desc="sampling", unit="img-step") as bar:
        images = sample(parts, prompts, seeds, steps=steps, guidance=cfg.guidance if args.guidance is None else args.guidance,
                        eta=cfg.eta if args.eta is None else args.eta, batch_size=cfg.batch_size,
                        on_progress=lambda done, total, _m: bar.update(done - bar.n))
    picture = grid(images, cols=args.cols, scale=args.scale or (4 if small else 1))
    try:  # a temporary name renamed into place: a failed write (a full disk) leaves no half PNG, an old grid whole
        atomic_write(out, lambda tmp: picture.save(tmp, format=image_format))
    except OSError as exc:
        print(f"error: cannot write {str(out)!r}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
