"""``python -m seiko_core.sample --model M --prompt P --n N --seed S --out grid.png``: a grid of samples.

Image k uses seed S + k, so the same seed always gives the same image. ``--adapter DIR`` samples with
a round's LoRA adapter (as saved by the fine-tuning step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm


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

    from .models import ModelLoadError, load_model
    from .presets import preset
    from .sampling import grid, sample

    if args.n < 1:
        p.error("--n must be at least 1")
    try:
        parts = load_model(args.model)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    small = parts.sample_size <= 32
    cfg = preset(args.preset or ("shapes" if small else "sd15")).sampling
    if args.adapter:
        from .lora import load_adapter

        load_adapter(parts, args.adapter, name="sample")
    prompts = [args.prompt[k % len(args.prompt)] for k in range(args.n)]
    seeds = [args.seed + k for k in range(args.n)]
    steps = args.steps or cfg.steps
    with tqdm(total=args.n * steps, desc="sampling", unit="img-step") as bar:
        images = sample(parts, prompts, seeds, steps=steps, guidance=args.guidance or cfg.guidance,
                        eta=cfg.eta if args.eta is None else args.eta, batch_size=cfg.batch_size,
                        on_progress=lambda done, total, _m: bar.update(done - bar.n))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid(images, cols=args.cols, scale=args.scale or (4 if small else 1)).save(out)
    print(out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
