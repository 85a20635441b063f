"""The shapes dataset: deterministic, captioned, procedurally drawn images.

Each image shows one flat-coloured shape on a flat background. Attribute frequencies are
deliberately uneven (``purple``, ``pink`` and ``cyan`` shapes, ``star`` and ``cross`` shapes and the
``brown`` background are rare) so that what a rater likes can lie in a low-probability region of
the pretrained model: the situation SEIKO is designed for.

Captions name a random subset of the attributes ("a large red circle on a white background",
"a star", "a purple shape at the left"), so that a short prompt samples the unnamed attributes
from the training frequencies. The vocabulary and frequencies are documented in
``models/shapes-sd/README.md`` and returned by :func:`vocabulary_table`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Each attribute: name -> (frequency, payload). Frequencies sum to 1 per attribute.
SHAPES: dict[str, float] = {"circle": 0.34, "square": 0.28, "triangle": 0.26, "star": 0.07, "cross": 0.05}
COLORS: dict[str, tuple[float, tuple[int, int, int]]] = {
    "red": (0.22, (220, 40, 40)),
    "blue": (0.22, (40, 80, 220)),
    "green": (0.20, (40, 170, 60)),
    "yellow": (0.15, (240, 210, 40)),
    "orange": (0.10, (245, 130, 30)),
    "purple": (0.05, (140, 50, 180)),
    "pink": (0.04, (245, 130, 190)),
    "cyan": (0.02, (40, 200, 210)),
}
BACKGROUNDS: dict[str, tuple[float, tuple[int, int, int]]] = {
    "white": (0.40, (245, 245, 245)),
    "black": (0.30, (15, 15, 15)),
    "gray": (0.25, (128, 128, 128)),
    "brown": (0.05, (110, 70, 40)),
}
SIZES: dict[str, tuple[float, float]] = {"small": (0.30, 0.17), "medium": (0.40, 0.25), "large": (0.30, 0.34)}
POSITIONS: dict[str, tuple[float, tuple[float, float]]] = {
    "center": (0.40, (0.5, 0.5)),
    "left": (0.15, (0.3, 0.5)),
    "right": (0.15, (0.7, 0.5)),
    "top": (0.15, (0.5, 0.3)),
    "bottom": (0.15, (0.5, 0.7)),
}
ATTRIBUTES = ("shape", "color", "background", "size", "position")
# Probability that a caption names each attribute (the shape word is almost always named).
CAPTION_KEEP = {"shape": 0.9, "color": 0.75, "background": 0.7, "size": 0.6, "position": 0.4}
IMAGE_SIZE = 32
SUPERSAMPLE = 4  # draw at 4x and downsample with Lanczos for clean anti-aliased edges


def _names(table: dict) -> list[str]:
    return list(table)


def _probs(table: dict) -> np.ndarray:
    vals = [v[0] if isinstance(v, tuple) else v for v in table.values()]
    p = np.asarray(vals, dtype=np.float64)
    return p / p.sum()


VOCAB: dict[str, list[str]] = {
    "shape": _names(SHAPES),
    "color": _names(COLORS),
    "background": _names(BACKGROUNDS),
    "size": _names(SIZES),
    "position": _names(POSITIONS),
}
PROBS: dict[str, np.ndarray] = {
    "shape": _probs(SHAPES),
    "color": _probs(COLORS),
    "background": _probs(BACKGROUNDS),
    "size": _probs(SIZES),
    "position": _probs(POSITIONS),
}


@dataclass(frozen=True)
class ShapeSpec:
    """One image's attributes plus a small sub-pixel jitter of position and size."""

    shape: str
    color: str
    background: str
    size: str
    position: str
    jitter_x: float = 0.0
    jitter_y: float = 0.0
    jitter_scale: float = 1.0
    rotation: float = 0.0

    def attribute(self, name: str) -> str:
        return getattr(self, name)


def caption(spec: ShapeSpec, keep: dict[str, bool] | None = None) -> str:
    """The caption naming the attributes in ``keep`` (all of them when ``keep`` is None)."""
    keep = keep or {a: True for a in ATTRIBUTES}
    words = ["a"]
    if keep.get("size"):
        words.append(spec.size)
    if keep.get("color"):
        words.append(spec.color)
    words.append(spec.shape if keep.get("shape") else "shape")
    if keep.get("position"):
        words += ["at", "the", spec.position]
    if keep.get("background"):
        words += ["on", "a", spec.background, "background"]
    return " ".join(words)


def parse_caption(text: str) -> dict[str, str]:
    """The attributes a caption names (the inverse of :func:`caption` on its own vocabulary)."""
    words = text.lower().split()
    found: dict[str, str] = {}
    for i, w in enumerate(words):
        if w in SHAPES:
            found["shape"] = w
        elif w in COLORS and not (i + 1 < len(words) and words[i + 1] == "background"):
            found["color"] = w
        elif w in BACKGROUNDS and i + 1 < len(words) and words[i + 1] == "background":
            found["background"] = w
        elif w in SIZES:
            found["size"] = w
        elif w in POSITIONS and i > 0 and words[i - 1] == "the":
            found["position"] = w
    return found


def sample_specs(n: int, seed: int, fixed: dict[str, str] | None = None) -> list[ShapeSpec]:
    """``n`` attribute draws from the (uneven) training frequencies; ``fixed`` pins attributes."""
    rng = np.random.default_rng(seed)
    fixed = fixed or {}
    cols: dict[str, list[str]] = {}
    for attr in ATTRIBUTES:
        names = VOCAB[attr]
        if attr in fixed:
            cols[attr] = [fixed[attr]] * n
        else:
            cols[attr] = [names[i] for i in rng.choice(len(names), size=n, p=PROBS[attr])]
    jx = rng.uniform(-0.04, 0.04, size=n)
    jy = rng.uniform(-0.04, 0.04, size=n)
    js = rng.uniform(0.92, 1.08, size=n)
    rot = rng.uniform(-0.15, 0.15, size=n)
    return [
        ShapeSpec(
            shape=cols["shape"][i], color=cols["color"][i], background=cols["background"][i],
            size=cols["size"][i], position=cols["position"][i],
            jitter_x=float(jx[i]), jitter_y=float(jy[i]), jitter_scale=float(js[i]), rotation=float(rot[i]),
        )
        for i in range(n)
    ]


def shape_polygon(shape: str, cx: float, cy: float, r: float, rotation: float = 0.0) -> list[tuple[float, float]] | None:
    """Vertices of ``shape`` centred at (cx, cy) with radius r; None for a circle."""

    def rot(points):
        c, s = math.cos(rotation), math.sin(rotation)
        return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in points]

    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.85
        return rot([(-h, -h), (h, -h), (h, h), (-h, h)])
    if shape == "triangle":
        return rot([(0.0, -r), (r * 0.95, r * 0.72), (-r * 0.95, r * 0.72)])
    if shape == "star":
        pts = []
        for k in range(10):
            ang = -math.pi / 2 + k * math.pi / 5
            rad = r if k % 2 == 0 else r * 0.45
            pts.append((rad * math.cos(ang), rad * math.sin(ang)))
        return rot(pts)
    if shape == "cross":
        a, b = r * 0.3, r * 0.95
        return rot([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)])
    raise ValueError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")


def draw_mask(shape: str, cx: float, cy: float, r: float, rotation: float = 0.0, size: int = IMAGE_SIZE) -> np.ndarray:
    """A float mask in [0, 1] of ``shape`` drawn anti-aliased at ``size`` x ``size`` (coordinates in [0, 1])."""
    big = size * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(img)
    poly = shape_polygon(shape, cx * big, cy * big, r * big, rotation)
    if poly is None:
        d.ellipse([cx * big - r * big, cy * big - r * big, cx * big + r * big, cy * big + r * big], fill=255)
    else:
        d.polygon(poly, fill=255)
    return np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float32) / 255.0


def render(spec: ShapeSpec, size: int = IMAGE_SIZE) -> np.ndarray:
    """The image of ``spec`` as uint8 (size, size, 3)."""
    px, py = POSITIONS[spec.position][1]
    r = SIZES[spec.size][1] * spec.jitter_scale
    mask = np.clip(draw_mask(spec.shape, px + spec.jitter_x, py + spec.jitter_y, r, spec.rotation, size), 0, 1)[..., None]
    fg = np.asarray(COLORS[spec.color][1], dtype=np.float32)
    bg = np.asarray(BACKGROUNDS[spec.background][1], dtype=np.float32)
    return np.clip(mask * fg + (1 - mask) * bg + 0.5, 0, 255).astype(np.uint8)


def caption_keep_masks(n: int, seed: int) -> list[dict[str, bool]]:
    """Which attributes each of ``n`` captions names (independent draws per attribute)."""
    rng = np.random.default_rng(seed + 7919)
    draws = {a: rng.random(n) < CAPTION_KEEP[a] for a in ATTRIBUTES}
    return [{a: bool(draws[a][i]) for a in ATTRIBUTES} for i in range(n)]


@dataclass
class ShapesData:
    images: np.ndarray  # uint8 (N, H, W, 3)
    captions: list[str]  # partial captions, as used for training
    specs: list[ShapeSpec]
    keeps: list[dict[str, bool]]

    def attribute_codes(self) -> dict[str, np.ndarray]:
        """Per attribute, the integer code of each image's value (index into ``VOCAB[attr]``)."""
        return {a: np.asarray([VOCAB[a].index(s.attribute(a)) for s in self.specs]) for a in ATTRIBUTES}


def generate(n: int, seed: int = 0, size: int = IMAGE_SIZE) -> ShapesData:
    """``n`` captioned images, identical for the same ``(n, seed, size)``."""
    specs = sample_specs(n, seed)
    keeps = caption_keep_masks(n, seed)
    images = np.stack([render(s, size) for s in specs]) if n else np.zeros((0, size, size, 3), np.uint8)
    return ShapesData(images=images, captions=[caption(s, k) for s, k in zip(specs, keeps)], specs=specs, keeps=keeps)


def all_words() -> list[str]:
    """Every word a caption can contain: the tokenizer's vocabulary."""
    words = {"a", "shape", "at", "the", "on", "background"}
    for attr in ATTRIBUTES:
        words.update(VOCAB[attr])
    return sorted(words)


def vocabulary_table() -> str:
    """A Markdown table of every attribute value and its training frequency."""
    lines = ["| attribute | value | frequency | caption names it |", "|---|---|---|---|"]
    for attr in ATTRIBUTES:
        for name, p in zip(VOCAB[attr], PROBS[attr]):
            lines.append(f"| {attr} | {name} | {p:.2f} | {CAPTION_KEEP[attr]:.2f} |")
    return "\n".join(lines)
