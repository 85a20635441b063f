"""Rater quality, as pure functions of plain ratings (no database, no model).

- ``krippendorff_alpha``: agreement between raters on the same items, for ordinal (default), interval or nominal
  scores, with missing values (each item rated by any subset of raters). Krippendorff (2011), "Computing
  Krippendorff's Alpha-Reliability": coincidence matrix ``o_ck = sum_u (pairs (c, k) in unit u) / (m_u - 1)``
  over units with at least two values, ``alpha = 1 - (n - 1) * sum o_ck d_ck / sum n_c n_k d_ck``, with the
  ordinal metric ``d_ck = (sum_{g=c..k} n_g - (n_c + n_k) / 2) ** 2``.
- ``self_consistency``: a rater's agreement with themself on repeated items (the same image shown again).
- ``gold_errors``: a rater's error on gold items (images with a known answer).
- ``rater_stats``: count, mean, spread and range used, and agreement with the other raters on shared items.
- ``standardize``: each rater's scores as z-scores mapped back to the pooled scale, so a rater who uses 3-7 and
  one who uses 1-10 count alike in the reward fit.

A rating is ``(item, rater, score)``; items and raters are any hashable ids. Bad input raises ValueError with
one sentence.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

METRICS = ("ordinal", "interval", "nominal")

Rating = tuple[Hashable, Hashable, float]


def _score(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) or not math.isfinite(float(value)):
        raise ValueError(f"a score must be a finite number, got {value!r}")
    return float(value)


def _table(ratings: Iterable[Rating]) -> dict[Hashable, dict[Hashable, float]]:
    """item -> {rater: score}; a rater rating the same item twice is refused (repeats go to self_consistency)."""
    table: dict[Hashable, dict[Hashable, float]] = defaultdict(dict)
    for row in ratings:
        if not isinstance(row, tuple | list) or len(row) != 3:
            raise ValueError(f"a rating must be an (item, rater, score) triple, got {row!r}")
        item, rater, score = row
        if rater in table[item]:
            raise ValueError(f"rater {rater!r} rated item {item!r} twice; pass repeated ratings to self_consistency instead")
        table[item][rater] = _score(score)
    return dict(table)


# ---------------------------------------------------------------------------------------------
# Krippendorff's alpha
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alpha:
    alpha: float | None  # None when undefined: fewer than two pairable values, or every value the same
    metric: str
    units: int  # items with at least two ratings (the pairable ones)
    values: int  # ratings in those items (n)
    observed: float | None  # observed disagreement D_o
    expected: float | None  # expected disagreement D_e
    reason: str = ""  # why alpha is None


def _units(ratings: Iterable[Rating]) -> list[list[float]]:
    return [list(by_rater.values()) for by_rater in _table(ratings).values() if len(by_rater) >= 2]


def coincidences(ratings: Iterable[Rating]) -> tuple[list[float], np.ndarray]:
    """The values present and the coincidence matrix ``o[c, k]`` over items with at least two ratings."""
    return _coincidences(_units(ratings))


def _coincidences(units: list[list[float]]) -> tuple[list[float], np.ndarray]:
    values = sorted({v for unit in units for v in unit})
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for unit in units:
        counts = np.zeros(len(values))
        for v in unit:
            counts[index[v]] += 1
        # pairs of values from different raters: counts_c * counts_k, less the pairs of a value with itself
        o += (np.outer(counts, counts) - np.diag(counts)) / (len(unit) - 1)
    return values, o


def distance_matrix(values: list[float], n_c: np.ndarray, metric: str) -> np.ndarray:
    """Squared distances ``d[c, k]`` between the values for the metric (ordinal uses the marginals ``n_c``)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}")
    v = np.asarray(values, dtype=float)
    if metric == "nominal":
        return (v[:, None] != v[None, :]).astype(float)
    if metric == "interval":
        return (v[:, None] - v[None, :]) ** 2
    cum = np.concatenate([[0.0], np.cumsum(n_c)])  # cum[i] = sum of n_g for g < i
    idx = np.arange(len(v))
    lo, hi = np.minimum.outer(idx, idx), np.maximum.outer(idx, idx)
    between = cum[hi + 1] - cum[lo]  # sum of n_g for g from c to k inclusive
    return (between - (n_c[:, None] + n_c[None, :]) / 2) ** 2


def krippendorff_alpha(ratings: Iterable[Rating], metric: str = "ordinal") -> Alpha:
    """Krippendorff's alpha of ``(item, rater, score)`` ratings; items rated once do not count."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}")
    units = _units(ratings)
    values, o = _coincidences(units)
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    pairable = sum(len(u) for u in units)
    if not units:
        return Alpha(None, metric, 0, 0, None, None, "no item was rated by two or more raters")
    d = distance_matrix(values, n_c, metric)
    observed = float((o * d).sum() / n)
    expected = float((np.outer(n_c, n_c) * d).sum() / (n * (n - 1)))
    if expected == 0:
        return Alpha(None, metric, len(units), pairable, observed, expected,
                     "every rating has the same value, so agreement is undefined")
    return Alpha(1.0 - observed / expected, metric, len(units), pairable, observed, expected)


def alpha_by_group(ratings: Iterable[tuple[Hashable, Hashable, Hashable, float]], metric: str = "ordinal") -> dict[Hashable, Alpha]:
    """Alpha per group (e.g. per round) of ``(group, item, rater, score)`` ratings."""
    groups: dict[Hashable, list[Rating]] = defaultdict(list)
    for row in ratings:
        if not isinstance(row, tuple | list) or len(row) != 4:
            raise ValueError(f"a grouped rating must be a (group, item, rater, score) tuple, got {row!r}")
        groups[row[0]].append((row[1], row[2], row[3]))
    return {g: krippendorff_alpha(rows, metric) for g, rows in groups.items()}


# ---------------------------------------------------------------------------------------------
# repeated items, gold items, per-rater statistics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consistency:
    rater: Hashable
    n: int  # repeated items
    mean_abs_diff: float  # mean |first score - repeat score|
    exact: float  # share of repeats given the same score
    within_one: float  # share of repeats within one point


def self_consistency(repeats: Iterable[tuple[Hashable, float, float]]) -> dict[Hashable, Consistency]:
    """Per rater, from ``(rater, first score, repeat score)`` triples of the same item shown to them twice."""
    diffs: dict[Hashable, list[float]] = defaultdict(list)
    for row in repeats:
        if not isinstance(row, tuple | list) or len(row) != 3:
            raise ValueError(f"a repeat must be a (rater, first score, repeat score) triple, got {row!r}")
        diffs[row[0]].append(abs(_score(row[1]) - _score(row[2])))
    return {r: Consistency(r, len(d), float(np.mean(d)), float(np.mean([x == 0 for x in d])),
                           float(np.mean([x <= 1 for x in d]))) for r, d in diffs.items()}


@dataclass(frozen=True)
class GoldError:
    rater: Hashable
    n: int  # gold items the rater rated
    mean_abs_error: float
    bias: float  # mean (score - known answer): positive for a rater who scores high


def gold_errors(ratings: Iterable[Rating], gold: Mapping[Hashable, float]) -> dict[Hashable, GoldError]:
    """Per rater, their error on the items of ``gold`` (item -> known score) among ``(item, rater, score)`` ratings."""
    known = {item: _score(v) for item, v in gold.items()}
    errors: dict[Hashable, list[float]] = defaultdict(list)
    for item, by_rater in _table(ratings).items():
        if item in known:
            for rater, score in by_rater.items():
                errors[rater].append(score - known[item])
    return {r: GoldError(r, len(e), float(np.mean(np.abs(e))), float(np.mean(e))) for r, e in errors.items()}


@dataclass(frozen=True)
class RaterStats:
    rater: Hashable
    n: int
    mean: float
    std: float  # population standard deviation of the rater's scores
    low: float
    high: float
    distinct: int  # different scores used
    shared: int  # ratings on items someone else rated too
    mad_vs_others: float | None  # mean |score - mean of the others' scores on the item|; None without shared items
    corr_vs_others: float | None  # Pearson correlation with the others' mean on shared items (3+ shared, both varying)

    @property
    def range_used(self) -> float:
        return self.high - self.low


def rater_stats(ratings: Iterable[Rating]) -> dict[Hashable, RaterStats]:
    """Per rater: how many, mean, spread and range used, and agreement with the others on the items they share."""
    table = _table(ratings)
    own: dict[Hashable, list[float]] = defaultdict(list)
    pairs: dict[Hashable, list[tuple[float, float]]] = defaultdict(list)  # (own score, others' mean)
    for by_rater in table.values():
        for rater, score in by_rater.items():
            own[rater].append(score)
            others = [v for r, v in by_rater.items() if r != rater]
            if others:
                pairs[rater].append((score, float(np.mean(others))))
    out = {}
    for rater, scores in own.items():
        a = np.asarray(scores)
        p = np.asarray(pairs.get(rater, []), dtype=float).reshape(-1, 2)
        corr = None
        if len(p) >= 3 and p[:, 0].std() > 0 and p[:, 1].std() > 0:
            corr = float(np.corrcoef(p[:, 0], p[:, 1])[0, 1])
        out[rater] = RaterStats(rater, len(a), float(a.mean()), float(a.std()), float(a.min()), float(a.max()),
                                len(set(scores)), len(p), float(np.abs(p[:, 0] - p[:, 1]).mean()) if len(p) else None, corr)
    return out


# ---------------------------------------------------------------------------------------------
# standardising each rater's scores before the reward fit
# ---------------------------------------------------------------------------------------------


def standardize(ratings: Iterable[Rating]) -> dict[tuple[Hashable, Hashable], float]:
    """(item, rater) -> the rater's z-score mapped back to the pooled scale: ``pooled mean + z * pooled std``.

    ``z = (score - rater's mean) / rater's std`` (population std). A rater whose scores are all the same (or who
    gave one rating) expresses no preference between items: their z is 0, i.e. the pooled mean. Mapping back
    keeps the reward model's targets in rating units, so predicted rewards still read like ratings.

    What it assumes (a review's measurements, 3 Dec 2026): raters see comparable images. Two raters who rated
    different rounds (one early, one late) have the rounds' real difference removed along with their own (raw item
    means 3.95 and 7.45 both became 5.70); and a rater with a few close scores (5 and 6) is stretched as far as one
    who used 1 and 10. On simulated raters who use different parts of the scale (``python -m
    app.tools.standardise_check``: 100 items, 10 raters, 200 seeds) the correlation of per-item means with the truth
    went 0.612 -> 0.723 at 10 ratings a rater and 0.801 -> 0.879 at 40, and 0.573 -> 0.557 at 3 (a difference of
    -0.016, 95% interval -0.039 to 0.007: no gain with so few ratings a rater). A review's scratch simulation, whose
    parameters were not kept, had found it hurt at 3 (0.765 -> 0.66); that is not reproduced here.
    """
    table = _table(ratings)
    by_rater: dict[Hashable, list[float]] = defaultdict(list)
    for by in table.values():
        for rater, score in by.items():
            by_rater[rater].append(score)
    if not by_rater:
        return {}
    pooled = np.asarray([v for vs in by_rater.values() for v in vs])
    mu, sd = float(pooled.mean()), float(pooled.std())
    moments = {r: (float(np.mean(v)), float(np.std(v))) for r, v in by_rater.items()}
    out = {}
    for item, by in table.items():
        for rater, score in by.items():
            m, s = moments[rater]
            z = 0.0 if s == 0 else (score - m) / s
            out[(item, rater)] = mu + z * sd
    return out


def item_means(ratings: Iterable[Rating], *, standardized: bool = False) -> dict[Hashable, float]:
    """item -> mean score over its raters (of the standardised scores when ``standardized``)."""
    ratings = list(ratings)
    if standardized:
        values = standardize(ratings)
    else:
        values = {(item, rater): v for item, by in _table(ratings).items() for rater, v in by.items()}
    sums: dict[Hashable, list[float]] = defaultdict(list)
    for (item, _), v in values.items():
        sums[item].append(v)
    return {item: float(np.mean(v)) for item, v in sums.items()}


def training_scores(image_ids: list[Hashable], ratings: Iterable[Rating], *, standardized: bool) -> list[float]:
    """The reward fit's target for each of ``image_ids``: the mean of its ratings, standardised per rater or not.

    ``ratings`` are ``(image id, rater, score)`` for (at least) every rating of those images."""
    means = item_means(ratings, standardized=standardized)
    missing = [i for i in image_ids if i not in means]
    if missing:
        raise ValueError(f"images {missing[:5]} have no ratings to train on; the ratings and the snapshot disagree")
    return [means[i] for i in image_ids]
