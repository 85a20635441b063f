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

``--share 0.6`` adds the yardstick for the two goals together (:func:`mixture_variety`): the variety of rounds of
32 in which 60% of the images are liked and the rest are not, each part drawn from the training distribution, as %
of the variety of rounds drawn from all of it: what a model that learned the taste and narrowed nothing else keeps.
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
# the person rates all --n images in one batch (float32, 12 KiB each at 32 px): 10x the default is 240 MiB. Past it,
# --n 10**11 was numpy's MemoryError traceback, and --n 0 or 1 printed a liked share of 0.0 and no variety at all
# (nineteenth review)
MAX_N = 20_000


def _subset(idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= MAX_PAIRS_SET else rng.choice(idx, MAX_PAIRS_SET, replace=False)


def _as_tensor(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0


def liked_mask(person_spec: str, images_u8: np.ndarray) -> np.ndarray:
    """Which of the images (N, H, W, 3) uint8 the person rates >= 6."""
    person = people.load_person(person_spec)
    return np.asarray(person.rate(_as_tensor(images_u8), [""] * len(images_u8))) >= taste_stats.LIKED


def _pixels(images_u8: np.ndarray, ids) -> list[np.ndarray]:
    """The images ``ids`` as float64 arrays in [0, 1], as bench-taste's pixel variety takes them."""
    return [images_u8[i].astype(np.float64) / 255.0 for i in ids]


def liked_variety(person_spec: str, images_u8: np.ndarray, embeddings: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Variety of the images ``person_spec`` rates >= 6 as % of the variety of all of them.

    ``images_u8`` (N, H, W, 3) uint8; ``embeddings`` (N, D), the image encoder's embeddings of the same images."""
    return {"person": person_spec, **variety_of_liked(liked_mask(person_spec, images_u8), images_u8, embeddings, seed)}


def variety_of_liked(liked: np.ndarray, images_u8: np.ndarray, embeddings: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """:func:`liked_variety` for a boolean mask of the liked images instead of a person."""
    liked = np.flatnonzero(liked)
    rng = np.random.default_rng(seed)
    every = _subset(np.arange(len(images_u8)), rng)
    out: dict[str, Any] = {"n": int(len(images_u8)), "liked": int(len(liked)),
                           "liked_share": float(len(liked) / max(1, len(images_u8)))}
    emb = embeddings.astype(np.float64)
    for name, fn, pick in (("pixels", mean_pairwise_pixel_distance, lambda ids: _pixels(images_u8, ids)),
                           ("embedding", mean_pairwise_distance, lambda ids: emb[ids])):
        all_v = fn(pick(every))
        liked_v = fn(pick(_subset(liked, rng))) if len(liked) >= 2 else None
        out[f"variety_{name}_all"] = all_v
        out[f"variety_{name}_liked"] = liked_v
        out[f"variety_{name}_liked_pct"] = None if liked_v is None or not all_v else 100.0 * liked_v / all_v
    return out


def mixture_variety(images_u8: np.ndarray, embeddings: np.ndarray, liked: np.ndarray, share: float, *,
                    size: int = 32, rounds: int = 200, seed: int = 0) -> dict[str, Any]:
    """Variety of rounds in which a share of the images is liked, as % of the variety of rounds drawn from all images.

    The yardstick for bench-taste's two goals together: a model that learned the taste and nothing else would draw
    a round of ``size`` images of which ``round(share * size)`` are liked (drawn from the liked images) and the rest
    not (drawn from the others), each part as varied as the training distribution is within it. ``rounds`` such
    rounds and as many rounds of ``size`` images drawn from all of them (round 0's stand-in) are measured with
    bench-taste's own variety functions; the result is the ratio of their means, per measure. ``liked`` is a boolean
    mask over the images."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    liked_idx, other_idx = np.flatnonzero(liked), np.flatnonzero(~liked)
    k = int(round(share * size))
    if k > len(liked_idx) or size - k > len(other_idx):
        raise ValueError(f"a round of {size} with {k} liked images needs {k} liked and {size - k} other images; "
                         f"there are {len(liked_idx)} and {len(other_idx)}")
    rng = np.random.default_rng(seed)
    emb = embeddings.astype(np.float64)
    sums = {"pixels": [0.0, 0.0], "embedding": [0.0, 0.0]}  # [mixed rounds, random rounds]
    for _ in range(rounds):
        mixed = np.concatenate([rng.choice(liked_idx, k, replace=False), rng.choice(other_idx, size - k, replace=False)])
        every = rng.choice(len(liked), size, replace=False)
        for col, ids in enumerate((mixed, every)):
            sums["pixels"][col] += mean_pairwise_pixel_distance(_pixels(images_u8, ids))
            sums["embedding"][col] += mean_pairwise_distance(emb[ids])
    out: dict[str, Any] = {"share": share, "round_size": size, "liked_per_round": k, "rounds": rounds}
    for name, (mixed_sum, every_sum) in sums.items():
        out[f"variety_{name}_mixture_pct"] = 100.0 * mixed_sum / every_sum if every_sum else None
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
    ap.add_argument("--share", type=float, action="append", default=[], metavar="P",
                    help="also the variety of rounds of 32 in which this share is liked (repeatable; e.g. 0.6)")
    args = ap.parse_args(argv)
    if not 2 <= args.n <= MAX_N:  # variety is a mean over pairs of images
        ap.error(f"--n must be from 2 to {MAX_N:,} images, got {args.n}")
    if args.seed < 0:  # numpy's "expected non-negative integer", naming no flag (nineteenth review)
        ap.error(f"--seed must be a whole number of at least 0, got {args.seed}")
    try:
        data = generate(args.n, args.seed)
        parts = load_model(args.model, device="cpu")
        with torch.no_grad():
            emb = embed_images_batched(parts, _as_tensor(data.images))
        liked = liked_mask(args.person, data.images)
        result = {"person": args.person, **variety_of_liked(liked, data.images, emb.numpy(), seed=args.seed)}
        if args.share:
            result["mixtures"] = [mixture_variety(data.images, emb.numpy(), liked, p, seed=args.seed) for p in args.share]
    except (people.PersonError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
