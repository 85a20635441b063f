"""How much variety a taste leaves: the yardstick for bench-taste's variety figures (issue 12).

    python -m app.taste_variety --person gold_on_black [--n 2000] [--seed 0]

A person who likes only gold shapes on black cannot also be shown the variety of every colour on every background:
the images they like are less varied than the images the pretrained model draws. This measures by how much,
without any model training: ``n`` images of the training distribution (``seiko_core.toy.dataset.generate``, the
images the embedded model was trained to draw) are rated by the person; the variety (bench-taste's two measures:
mean pairwise RMS pixel distance and mean pairwise distance of the embedded model's image-encoder embeddings) of
the images rated >= 6 is reported as a percentage of the variety of all ``n``. A model whose rounds are all liked
images cannot keep more than about this share of round 0's variety (round 0 is close to the training distribution),
so bench-taste's variety target is read against it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np
import torch

from app import people, taste_stats
from app.bench_taste import mean_pairwise_distance, mean_pairwise_pixel_distance

MAX_PAIRS_SET = 400  # variety is a mean over pairs: a random subset of this many images per set is plenty


def _subset(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= MAX_PAIRS_SET else rng.choice(idx, MAX_PAIRS_SET, replace=False)


def liked_variety(person_spec: str, images_u8: np.ndarray, embeddings: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Variety of the images ``person_spec`` rates >= 6 as % of the variety of all of them.

    ``images_u8`` (N, H, W, 3) uint8; ``embeddings`` (N, D), the image encoder's embeddings of the same images."""
    person = people.load_person(person_spec)
    images = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    ratings = np.asarray(person.rate(images, [""] * len(images)))
    liked = np.flatnonzero(ratings >= taste_stats.LIKED)
    rng = np.random.default_rng(seed)
    every = _subset(np.arange(len(images)), rng)
    out: dict[str, Any] = {"person": person_spec, "n": int(len(images)), "liked": int(len(liked)),
                           "liked_share": float(len(liked) / max(1, len(images)))}
    pixels = images_u8.astype(np.float64) / 255.0
    for name, fn, data in (("pixels", mean_pairwise_pixel_distance, list(pixels)),
                           ("embedding", mean_pairwise_distance, embeddings.astype(np.float64))):
        pick = (lambda ids, data=data: [data[i] for i in ids]) if name == "pixels" else (lambda ids, data=data: data[ids])
        all_v = fn(pick(every))
        liked_v = fn(pick(_subset(liked, rng))) if len(liked) >= 2 else None
        out[f"variety_{name}_all"] = all_v
        out[f"variety_{name}_liked"] = liked_v
        out[f"variety_{name}_liked_pct"] = None if liked_v is None or not all_v else 100.0 * liked_v / all_v
    return out


def main(argv: list[str] | None = None) -> int:
    from app.settings import DEFAULT_MODEL
    from seiko_core.features import embed_images_batched
    from seiko_core.models import ModelLoadError, load_model
    from seiko_core.toy.dataset import generate

    ap = argparse.ArgumentParser(prog="python -m app.taste_variety", description=__doc__.split("\n\n")[0])
    ap.add_argument("--person", required=True, help="a built-in person or path/to/file.py:function")
    ap.add_argument("--n", type=int, default=2000, help="training-distribution images to rate (default 2000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=DEFAULT_MODEL, help="the model whose image encoder embeds them")
    args = ap.parse_args(argv)
    try:
        data = generate(args.n, args.seed)
        parts = load_model(args.model, device="cpu")
        with torch.no_grad():
            emb = embed_images_batched(parts, torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255.0)
        result = liked_variety(args.person, data.images, emb.numpy(), seed=args.seed)
    except (people.PersonError, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
