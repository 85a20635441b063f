"""Pixel-level reading of a shapes image: background colour, shape colour, shape, area.

Used to measure the shapes model's fidelity (does the image show what the prompt names?) and by the
built-in oracles. Nothing here is learned: colours are the nearest palette entry, the shape is the
template (matched in area and centroid) with the best IoU.

A template is placed so that its own pixel centroid lies on the mask's. ``draw_mask`` centres a shape on its
parameter centre, which for the triangle is 0.15 r above its centroid; until 5 Dec 2026 the reader put the parameter
centre on the mask's centroid, so every triangle template sat shifted against the drawn triangle and 12% of drawn
triangles read as circles or squares (a review's count on 800 drawn images).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from . import dataset as ds

FG_THRESHOLD = 60.0  # RGB distance from the background beyond which a pixel belongs to the shape


@dataclass(frozen=True)
class Reading:
    background: str
    color: str | None  # None when no shape is found
    shape: str | None
    area: float  # fraction of the image covered by the shape


def _nearest(rgb: np.ndarray, table: dict) -> str:
    names = list(table)
    cols = np.asarray([table[n][1] for n in names], dtype=np.float32)
    return names[int(np.argmin(((cols - rgb) ** 2).sum(1)))]


@cache
def _unit_area(shape: str) -> float:
    r = 0.3
    m = ds.draw_mask(shape, 0.5, 0.5, r, 0.0, size=64)
    return float(m.sum()) / (r * 64) ** 2


@cache
def _centroid_offset(shape: str) -> tuple[float, float]:
    """(dx, dy): the shape's pixel centroid minus its parameter centre, in units of its radius (drawn unrotated)."""
    r, size = 0.3, 256
    ys, xs = np.nonzero(ds.draw_mask(shape, 0.5, 0.5, r, 0.0, size=size) > 0.5)
    return ((xs.mean() + 0.5) / size - 0.5) / r, ((ys.mean() + 0.5) / size - 0.5) / r


def _border(img: np.ndarray, width: int = 2) -> np.ndarray:
    top, bottom = img[:width].reshape(-1, 3), img[-width:].reshape(-1, 3)
    left, right = img[:, :width].reshape(-1, 3), img[:, -width:].reshape(-1, 3)
    return np.concatenate([top, bottom, left, right])


def read(image: np.ndarray) -> Reading:
    """Read one uint8 (H, W, 3) image."""
    img = image.astype(np.float32)
    bg_rgb = np.median(_border(img), axis=0)
    dist = np.sqrt(((img - bg_rgb) ** 2).sum(-1))
    mask = dist > FG_THRESHOLD
    background = _nearest(bg_rgb, ds.BACKGROUNDS)
    h, w = mask.shape
    if mask.sum() < 3:
        return Reading(background, None, None, 0.0)
    core = dist >= 0.6 * dist[mask].max()
    color = _nearest(np.median(img[core], axis=0), ds.COLORS)
    area = float(mask.mean())
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean() / h + 0.5 / h, xs.mean() / w + 0.5 / w
    best, best_iou = None, -1.0
    for shape in ds.SHAPES:
        r = float(np.sqrt(mask.sum() / _unit_area(shape))) / w
        dx, dy = _centroid_offset(shape)
        tmpl = ds.draw_mask(shape, cx - dx * r, cy - dy * r, r, 0.0, size=w) > 0.5
        iou = (tmpl & mask).sum() / max(1, (tmpl | mask).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return Reading(background, color, best, area)


def read_batch(images: np.ndarray) -> list[Reading]:
    return [read(im) for im in images]
