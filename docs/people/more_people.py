"""Four simulated people for `python -m app bench-taste --person docs/people/more_people.py:NAME`, written before
any run with them (3 Dec 2026) to see how tastes other than the two built-in ones fare at today's defaults.

The built-in people (`gold_on_black`, `purple`) score colour coverage with smooth kernels. These score what the
pixel reader of the embedded model's quality check sees (`seiko_core.toy.pixels.read`: background and shape colour
as nearest palette entries, shape as the best-matching template, area as the covered fraction), so each rates in
steps, as a person with a clear rule would: a shape taste, two rare tastes, and a two-part taste.
"""

from __future__ import annotations

import numpy as np
import torch

from seiko_core.toy import dataset as ds
from seiko_core.toy.pixels import Reading, _unit_area, read_batch

# a shape is large when its radius (from its area and its shape's template) is nearer the data set's "large" radius
# than its "medium" one: a large triangle covers less of the image than a medium square, so area alone cannot say
LARGE_RADIUS = (ds.SIZES["medium"][1] + ds.SIZES["large"][1]) / 2


def _large(r: Reading) -> bool:
    return r.shape is not None and float(np.sqrt(r.area / _unit_area(r.shape))) >= LARGE_RADIUS


def _readings(images: torch.Tensor) -> list[Reading]:
    u8 = (images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255.0 + 0.5).astype(np.uint8)
    return read_batch(u8)


def triangles(images: torch.Tensor, prompts: list[str]) -> list[int]:
    """A shape taste: a triangle 8, a large triangle 9; any other shape 2; no shape 1."""
    out = []
    for r in _readings(images):
        if r.shape is None:
            out.append(1)
        elif r.shape == "triangle":
            out.append(9 if _large(r) else 8)
        else:
            out.append(2)
    return out


def cyan_or_pink(images: torch.Tensor, prompts: list[str]) -> list[int]:
    """A rare colour taste (cyan and pink are 2% and 4% of the training shapes): either 9, anything else 1."""
    return [9 if r.color in ("cyan", "pink") else 1 for r in _readings(images)]


def brown_background(images: torch.Tensor, prompts: list[str]) -> list[int]:
    """A rare background (5% of training images, named by no training prompt): brown 8, with a shape on it 9;
    anything else 1."""
    return [(9 if r.shape is not None else 8) if r.background == "brown" else 1 for r in _readings(images)]


def big_on_white(images: torch.Tensor, prompts: list[str]) -> list[int]:
    """A two-part taste: a large shape on a white background 9; large on another background 5; small or medium on
    white 4; anything else 2."""
    out = []
    for r in _readings(images):
        large, white = _large(r), r.background == "white"
        out.append(9 if large and white else 5 if large else 4 if white else 2)
    return out
