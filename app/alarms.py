"""Reward-hacking alarms: cheap statistics of each round's eval images, and flags when they move too far.

A model that learns to please the reward model rather than the person tends to collapse (every image alike),
saturate its colours, go dark or blank, or move far from the previous round's model. ``image_stats`` measures
one round's eval grid (the same held-out prompts and seeds every round, so rounds compare like with like);
the worker stores the result in the round's metrics under ``eval.image_stats``. ``flags`` compares each round
with round 0 and with the round it was trained from (after a rollback not the previous one) and says which statistic moved, by how much, against which threshold.

Statistics (pixels scaled to [0, 1]):
- ``saturation``: mean HSV saturation ``(max - min) / max`` over all pixels (0 where max is 0);
- ``dark_fraction``: share of pixels whose luma ``0.299 R + 0.587 G + 0.114 B`` is below ``DARK_LEVEL``;
- ``colour_entropy``: per image, the entropy in bits of its colours quantised to 4 levels per channel (64 bins),
  averaged over the images (0 for a flat image, at most 6);
- ``blank_fraction``: share of images whose pixel standard deviation is below ``BLANK_STD`` (a blank image);
- ``diversity_embedding``: mean pairwise Euclidean distance between the images' encoder embeddings;
- ``diversity_pixels``: mean pairwise root-mean-square pixel difference.

Thresholds come from ``Thresholds`` (defaults below; ``Thresholds.from_env`` reads ``SEIKO_ALARM_<FIELD>``).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

DARK_LEVEL = 0.1  # luma below this (of 1.0) is a dark pixel
BLANK_STD = 0.02  # an image whose pixels vary less than this (of 1.0) is blank
LEVELS = 4  # quantisation levels per channel for the colour entropy
STATS = ("saturation", "dark_fraction", "colour_entropy", "blank_fraction", "diversity_embedding", "diversity_pixels")
LABELS = {
    "saturation": "mean saturation",
    "dark_fraction": "dark-pixel fraction",
    "colour_entropy": "colour entropy",
    "blank_fraction": "blank images",
    "diversity_embedding": "diversity (image-encoder embeddings)",
    "diversity_pixels": "diversity (pixels)",
    "kl": "KL to the round it was trained from",
}


def _pixels(images: Any) -> np.ndarray:
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[0] < 1:
        raise ValueError(f"images must be an (N, H, W, 3) array of at least one RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    a = a.astype(np.float64)
    if not np.isfinite(a).all() or a.min() < 0 or a.max() > 1:
        raise ValueError("float images must hold finite values in [0, 1]; pass uint8 images for 0-255 values")
    return a


def saturation(px: np.ndarray) -> float:
    hi, lo = px.max(axis=-1), px.min(axis=-1)
    sat = np.divide(hi - lo, hi, out=np.zeros_like(hi), where=hi > 0)
    return float(sat.mean())


def dark_fraction(px: np.ndarray, level: float = DARK_LEVEL) -> float:
    luma = px @ np.array([0.299, 0.587, 0.114])
    return float((luma < level).mean())


def colour_entropy(px: np.ndarray, levels: int = LEVELS) -> float:
    q = np.minimum((px * levels).astype(np.int64), levels - 1)  # 0 .. levels-1 per channel
    codes = (q[..., 0] * levels + q[..., 1]) * levels + q[..., 2]
    out = []
    for image in codes.reshape(codes.shape[0], -1):
        p = np.bincount(image, minlength=levels**3) / image.size
        p = p[p > 0]
        out.append(float(-(p * np.log2(p)).sum()) + 0.0)
    return float(np.mean(out))


def blank_fraction(px: np.ndarray, std: float = BLANK_STD) -> float:
    return float((px.reshape(px.shape[0], -1).std(axis=1) < std).mean())


def _mean_pairwise(x: np.ndarray) -> float | None:
    """Mean Euclidean distance over the pairs of rows of ``x``; None for fewer than two rows."""
    n = x.shape[0]
    if n < 2:
        return None
    sq = (x * x).sum(axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    iu = np.triu_indices(n, k=1)
    return float(np.sqrt(d2[iu]).mean())


def diversity_embedding(embeddings: Any) -> float | None:
    e = np.asarray(embeddings, dtype=np.float64)
    if e.ndim != 2 or not np.isfinite(e).all():
        raise ValueError(f"embeddings must be a finite (N, D) array, got shape {e.shape}")
    return _mean_pairwise(e)


def diversity_pixels(px: np.ndarray) -> float | None:
    flat = px.reshape(px.shape[0], -1)
    d = _mean_pairwise(flat)
    return None if d is None else d / math.sqrt(flat.shape[1])  # root-mean-square difference per value


def image_stats(images: Any, embeddings: Any | None = None) -> dict[str, float | int | None]:
    """The statistics of one round's eval images: ``images`` (N, H, W, 3) uint8 or float in [0, 1], ``embeddings`` (N, D)."""
    px = _pixels(images)
    if embeddings is not None and np.asarray(embeddings).shape[0] != px.shape[0]:
        raise ValueError(f"got {px.shape[0]} images but {np.asarray(embeddings).shape[0]} embeddings; they must match")
    return {
        "n": int(px.shape[0]),
        "saturation": saturation(px),
        "dark_fraction": dark_fraction(px),
        "colour_entropy": colour_entropy(px),
        "blank_fraction": blank_fraction(px),
        "diversity_embedding": None if embeddings is None else diversity_embedding(embeddings),
        "diversity_pixels": diversity_pixels(px),
    }


# ---------------------------------------------------------------------------------------------
# flags
# ---------------------------------------------------------------------------------------------


FRACTIONS = ("diversity_drop", "saturation_jump", "dark_jump", "blank_jump")  # of 1: a change past 1 cannot happen


@dataclass(frozen=True)
class Thresholds:
    """When a round is flagged. Diversity: a relative fall; the others: an absolute change either way."""

    diversity_drop: float = 0.25  # diversity fell by more than this fraction
    saturation_jump: float = 0.15  # mean saturation moved by more than this (of 1.0)
    dark_jump: float = 0.15  # dark-pixel fraction moved by more than this
    entropy_jump: float = 1.0  # colour entropy moved by more than this many bits
    blank_jump: float = 0.0  # the share of blank images rose by more than this (0: any new blank image)
    kl_max: float = 1.0  # KL to the previous round above this

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
                raise ValueError(f"alarm threshold {f.name} must be a finite number of at least 0, got {v!r}")
            if f.name in FRACTIONS and v >= 1:  # 25 meant as 25% switched the alarm off for good (review)
                raise ValueError(f"alarm threshold {f.name} is a fraction (0.25 means 25%) below 1, got {v!r}: at 1 "
                                 "or more it could never fire")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Thresholds:
        """Defaults, overridden by ``SEIKO_ALARM_<NAME>`` variables (e.g. ``SEIKO_ALARM_DIVERSITY_DROP=0.3``)."""
        env = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = env.get(f"SEIKO_ALARM_{f.name.upper()}")
            if raw is not None and raw.strip():
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise ValueError(f"SEIKO_ALARM_{f.name.upper()} must be a number, got {raw!r}") from None
        return cls(**values)


@dataclass(frozen=True)
class Flag:
    round: int
    statistic: str  # a key of STATS, or "kl"
    value: float
    reference: float | None  # the compared value (None for the KL limit)
    reference_round: int | None  # the round compared with (None for the KL limit)
    change: float  # relative for diversity, absolute otherwise
    threshold: float

    def message(self) -> str:
        label = LABELS[self.statistic]
        if self.statistic == "kl":
            return f"round {self.round}: {label} is {self.value:.3g}, above the limit {self.threshold:.3g}"
        if self.statistic.startswith("diversity"):
            return (f"round {self.round}: {label} fell {-self.change:.0%} vs round {self.reference_round} "
                    f"({self.reference:.3g} → {self.value:.3g}; alarm above {self.threshold:.0%})")
        unit = " bits" if self.statistic == "colour_entropy" else ""
        return (f"round {self.round}: {label} {'rose' if self.change > 0 else 'fell'} by {abs(self.change):.3g}{unit} "
                f"vs round {self.reference_round} ({self.reference:.3g} → {self.value:.3g}; alarm above "
                f"{self.threshold:.3g}{unit})")


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _compare(k: int, name: str, value: float, ref: float, ref_round: int, t: Thresholds) -> Flag | None:
    if name.startswith("diversity"):
        if ref <= 0:
            return None
        change = (value - ref) / ref
        return Flag(k, name, value, ref, ref_round, change, t.diversity_drop) if -change > t.diversity_drop else None
    change = value - ref
    if name == "blank_fraction":
        return Flag(k, name, value, ref, ref_round, change, t.blank_jump) if change > t.blank_jump else None
    limit = {"saturation": t.saturation_jump, "dark_fraction": t.dark_jump, "colour_entropy": t.entropy_jump}[name]
    return Flag(k, name, value, ref, ref_round, change, limit) if abs(change) > limit else None


def flags(rounds: dict[int, dict[str, Any]], kls: dict[int, float | None] | None = None,
          thresholds: Thresholds | None = None, parents: dict[int, int] | None = None) -> list[Flag]:
    """Flags for each round (by index) against round 0 and against the round it was trained from, plus large KL.

    ``rounds`` maps a round index to its ``image_stats`` dict (missing rounds and missing values are skipped);
    ``kls`` maps a round index to its KL to the round it was trained from. ``parents`` maps a round index to the
    index of the round it was trained from (after a rollback not the one before it; default: the previous round
    with statistics): a rolled-back round was compared with the abandoned branch (found by review). For each
    statistic a round gets at most one flag: the comparison that moved most.
    """
    t = thresholds or Thresholds()
    out: list[Flag] = []
    indices = sorted(rounds)
    for pos, k in enumerate(indices):
        stats = rounds[k] or {}
        refs = []
        if 0 in rounds and k != 0:
            refs.append(0)
        parent = (parents or {}).get(k, indices[pos - 1] if pos > 0 else None)
        if parent is not None and parent != 0 and parent in rounds and parent != k:
            refs.append(parent)
        for name in STATS:
            value = _num(stats.get(name))
            if value is None:
                continue
            found = [f for r in refs if (ref := _num((rounds[r] or {}).get(name))) is not None
                     and (f := _compare(k, name, value, ref, r, t)) is not None]
            if found:
                out.append(max(found, key=lambda f: abs(f.change)))
    for k, kl in sorted((kls or {}).items()):
        value = _num(kl)
        if value is not None and value > t.kl_max:
            out.append(Flag(k, "kl", value, None, None, value, t.kl_max))
    return sorted(out, key=lambda f: (f.round, f.statistic != "kl"))


def flags_from_metrics(round_metrics: dict[int, dict[str, Any] | None], thresholds: Thresholds | None = None,
                       parents: dict[int, int] | None = None) -> list[Flag]:
    """Flags from rounds' stored metrics (``Round.metrics``): ``eval.image_stats`` and ``eval.kl_to_prev`` (``parents``
    as ``flags`` takes it)."""
    stats, kls = {}, {}
    for k, m in round_metrics.items():
        ev = (m or {}).get("eval") if isinstance(m, dict) else None
        if isinstance(ev, dict):
            if isinstance(ev.get("image_stats"), dict):
                stats[k] = ev["image_stats"]
            kls[k] = ev.get("kl_to_prev")
    return flags(stats, kls, thresholds, parents)
