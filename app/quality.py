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
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"a score must be a finite number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf  # an integer too large for a float
    if not math.isfinite(number):
        raise ValueError(f"a score must be a finite number, got {value!r}")
    return number


def _table(ratings: Iterable[Rating]) -> dict[Hashable, dict[Hashable, float]]:
    """item -> {rater: score}, checked as ``coded`` checks (a rater rating the same item twice is refused: repeats go
    to self_consistency)."""
    c = coded(ratings)
    table: dict[Hashable, dict[Hashable, float]] = defaultdict(dict)
    for item, rater, score in zip(c.items.tolist(), c.raters.tolist(), c.scores.tolist(), strict=True):
        table[c.item_ids[item]][c.rater_ids[rater]] = score
    return dict(table)


_NUMBER_TYPES = (int, float, np.integer, np.floating)


def _scores(raw: list[object]) -> np.ndarray:
    """``raw`` as float64, each checked as ``_score`` does; the per-value check runs only where a fast one cannot."""
    kinds = set(map(type, raw))
    if all(issubclass(k, _NUMBER_TYPES) and not issubclass(k, bool | np.bool_) for k in kinds):
        try:
            out = np.asarray(raw, dtype=np.float64)
        except OverflowError:
            out = None
        if out is not None and np.isfinite(out).all():
            return out
    return np.asarray([_score(v) for v in raw], dtype=np.float64)


@dataclass(frozen=True)
class Coded:
    """Ratings as arrays, checked once: ``items[i]``, ``raters[i]`` index ``item_ids`` / ``rater_ids``; no (item,
    rater) twice. Every function here that takes ratings also takes a ``Coded`` (``coded(ratings)``), so a report
    that computes several figures from the same ratings checks and codes them once."""

    items: np.ndarray  # int64 codes
    raters: np.ndarray  # int64 codes
    scores: np.ndarray  # float64
    item_ids: tuple[Hashable, ...]
    rater_ids: tuple[Hashable, ...]

    def subset(self, mask: np.ndarray) -> Coded:
        """The ratings where ``mask`` holds (codes kept, so ids still read through ``item_ids`` / ``rater_ids``)."""
        return Coded(self.items[mask], self.raters[mask], self.scores[mask], self.item_ids, self.rater_ids)


def coded(ratings: Iterable[Rating] | Coded) -> Coded:
    """``(item, rater, score)`` ratings as a ``Coded``; the same checks and sentences as every function here."""
    if isinstance(ratings, Coded):
        return ratings
    item_code: dict[Hashable, int] = {}
    rater_code: dict[Hashable, int] = {}
    items, raters, raw = [], [], []
    for row in ratings:
        if not isinstance(row, tuple | list) or len(row) != 3:
            raise ValueError(f"a rating must be an (item, rater, score) triple, got {row!r}")
        item, rater, score = row
        items.append(item_code.setdefault(item, len(item_code)))
        raters.append(rater_code.setdefault(rater, len(rater_code)))
        raw.append(score)
    it, rt = np.asarray(items, dtype=np.int64), np.asarray(raters, dtype=np.int64)
    if len(it):
        key = it * len(rater_code) + rt
        order = np.argsort(key, kind="stable")
        again = order[1:][key[order][1:] == key[order][:-1]]  # the later rows of each (item, rater) seen before
        if len(again):
            first = int(again.min())
            item_ids, rater_ids = list(item_code), list(rater_code)
            raise ValueError(f"rater {rater_ids[rt[first]]!r} rated item {item_ids[it[first]]!r} twice; pass repeated "
                             "ratings to self_consistency instead")
    scores = _scores(raw)
    return Coded(it, rt, scores, tuple(item_code), tuple(rater_code))


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


def coincidences(ratings: Iterable[Rating] | Coded) -> tuple[list[float], np.ndarray]:
    """The values present and the coincidence matrix ``o[c, k]`` over items with at least two ratings."""
    values, o, _ = _coincidences(_pairable(coded(ratings)))
    return values, o


def _pairable(c: Coded) -> Coded:
    """The ratings of items rated at least twice."""
    per_item = np.bincount(c.items, minlength=len(c.item_ids))
    return c.subset(per_item[c.items] >= 2)


def _coincidences(c: Coded) -> tuple[list[float], np.ndarray, int]:
    """(values, o, units) of ratings whose items all have two or more ratings.

    ``o = sum_u (n_u n_u^T - diag(n_u)) / (m_u - 1)``, ``n_u`` the count of each value in item u: the pairs of values
    from different raters. Counted over each item's distinct values, so the work grows with the ratings, not with
    items x values."""
    values, value_idx = np.unique(c.scores, return_inverse=True)
    n_values = len(values)
    o = np.zeros((n_values, n_values))
    if not len(c.items):
        return [], o, 0
    m = np.bincount(c.items)
    # (item, value) cells with their counts, sorted by item
    cell, count = np.unique(c.items * n_values + value_idx.astype(np.int64), return_counts=True)
    item, value = cell // n_values, cell % n_values
    weight = 1.0 / (m[item] - 1)
    # every ordered pair of cells of the same item: cell i with each cell of its item's block
    start = np.searchsorted(item, item, side="left")
    length = np.searchsorted(item, item, side="right") - start
    left = np.repeat(np.arange(len(cell)), length)
    offset = np.arange(len(left)) - np.repeat(np.cumsum(length) - length, length)
    right = start[left] + offset
    pair_weight = weight[left] * count[left] * count[right]
    o += np.bincount(value[left] * n_values + value[right], weights=pair_weight,
                     minlength=n_values * n_values).reshape(n_values, n_values)
    o -= np.diag(np.bincount(value, weights=weight * count, minlength=n_values))
    return [float(v) for v in values], o, int(np.count_nonzero(m >= 2))


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


def krippendorff_alpha(ratings: Iterable[Rating] | Coded, metric: str = "ordinal") -> Alpha:
    """Krippendorff's alpha of ``(item, rater, score)`` ratings; items rated once do not count."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {list(METRICS)}")
    pairable = _pairable(coded(ratings))
    values, o, units = _coincidences(pairable)
    if not units:
        return Alpha(None, metric, 0, 0, None, None, "no item was rated by two or more raters")
    n_c = o.sum(axis=1)
    n = float(n_c.sum())
    d = distance_matrix(values, n_c, metric)
    observed = float((o * d).sum() / n)
    expected = float((np.outer(n_c, n_c) * d).sum() / (n * (n - 1)))
    if expected == 0:
        return Alpha(None, metric, units, len(pairable.items), observed, expected,
                     "every rating has the same value, so agreement is undefined")
    return Alpha(1.0 - observed / expected, metric, units, len(pairable.items), observed, expected)


def alpha_by_group(ratings: Iterable[tuple[Hashable, Hashable, Hashable, float]], metric: str = "ordinal") -> dict[Hashable, Alpha]:
    """Alpha per group (e.g. per round) of ``(group, item, rater, score)`` ratings."""
    groups: dict[Hashable, int] = {}
    codes, triples = [], []
    for row in ratings:
        if not isinstance(row, tuple | list) or len(row) != 4:
            raise ValueError(f"a grouped rating must be a (group, item, rater, score) tuple, got {row!r}")
        codes.append(groups.setdefault(row[0], len(groups)))
        triples.append((row[1], row[2], row[3]))
    all_rows, group_of = coded(triples), np.asarray(codes, dtype=np.int64)
    return {g: krippendorff_alpha(all_rows.subset(group_of == k), metric) for g, k in groups.items()}


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


def gold_errors(ratings: Iterable[Rating] | Coded, gold: Mapping[Hashable, float]) -> dict[Hashable, GoldError]:
    """Per rater, their error on the items of ``gold`` (item -> known score) among ``(item, rater, score)`` ratings."""
    known = {item: _score(v) for item, v in gold.items()}
    c = coded(ratings)
    answer = np.asarray([known.get(item, np.nan) for item in c.item_ids], dtype=np.float64)[c.items]
    on_gold = ~np.isnan(answer)
    error, rater = c.scores[on_gold] - answer[on_gold], c.raters[on_gold]
    out = {}
    for r in np.unique(rater):
        e = error[rater == r]
        out[c.rater_ids[r]] = GoldError(c.rater_ids[r], len(e), float(np.mean(np.abs(e))), float(np.mean(e)))
    return out


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


def rater_stats(ratings: Iterable[Rating] | Coded) -> dict[Hashable, RaterStats]:
    """Per rater: how many, mean, spread and range used, and agreement with the others on the items they share."""
    c = coded(ratings)
    if not len(c.items):
        return {}
    per_item = np.bincount(c.items)
    item_sum = np.bincount(c.items, weights=c.scores)
    shared = per_item[c.items] >= 2
    others = np.where(shared, (item_sum[c.items] - c.scores) / np.maximum(per_item[c.items] - 1, 1), np.nan)
    order = np.argsort(c.raters, kind="stable")  # each rater's rows together, in the order given
    raters = c.raters[order]
    starts = np.flatnonzero(np.r_[True, raters[1:] != raters[:-1]])
    out = {}
    for begin, end in zip(starts, np.r_[starts[1:], len(order)], strict=True):
        rows = order[begin:end]
        a = c.scores[rows]
        mine = shared[rows]
        x, y = a[mine], others[rows][mine]
        corr = None
        if len(x) >= 3 and x.min() < x.max() and y.min() < y.max():
            corr = float(np.corrcoef(x, y)[0, 1])
        rater = c.rater_ids[raters[begin]]
        out[rater] = RaterStats(rater, len(a), float(a.mean()), float(a.std()), float(a.min()), float(a.max()),
                                len(np.unique(a)), len(x), float(np.abs(x - y).mean()) if len(x) else None, corr)
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
    # a rater's constancy read from the scores themselves, not from the std: the float mean of 3 x 0.1 is not 0.1, so
    # the std came out 1.4e-17 and every z -1.0, not 0 (tenth review; whole-number scores were not affected)
    moments = {r: (float(np.mean(v)), float(np.std(v)), max(v) == min(v)) for r, v in by_rater.items()}
    out = {}
    for item, by in table.items():
        for rater, score in by.items():
            m, s, constant = moments[rater]
            z = 0.0 if constant or s == 0 else (score - m) / s
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
