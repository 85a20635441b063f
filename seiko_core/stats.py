"""Small statistics shared by the benchmarks' reports and the dashboard: the 95% t-interval of a mean (Student's t
quantile computed exactly, without scipy), the Wilson interval of a proportion (numpy only, no torch)."""

from __future__ import annotations

import functools
import math
from statistics import NormalDist

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz), for :func:`betainc`."""
    tiny, eps = 1e-300, 3e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c if abs(1.0 + aa / c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """The CDF of Student's t with ``df`` degrees of freedom, by the incomplete beta function."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


# From this many degrees of freedom on, t_quantile is the Cornish-Fisher expansion (A&S 26.7.5), whose error there is
# below float precision; the bisection on t_cdf lost the quantile as df grew (x = df / (df + t^2) rounds towards 1,
# and lgamma(df / 2) swamps the difference taken of it): 1.95991 at 1e12, below the normal's 1.95996, and 8.6e141 at
# 1e300 (twelfth review)
EXPANSION_DF_MIN = 10_000


def _t_quantile_expansion(p: float, df: float) -> float:
    """Student's t p-quantile as the normal's plus four terms in 1 / df (Abramowitz & Stegun 26.7.5; error O(df^-5),
    below 1e-15 relative at 1e4 df and above for 0.5 < p <= 0.9995)."""
    z = NormalDist().inv_cdf(p)
    g = ((z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    series = 0.0
    for gi in reversed(g):  # Horner's rule in 1 / df: df ** 4 overflowed a float at df 1e300
        series = (series + gi) / df
    return z + series


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (0.5 < p < 1), by bisection on :func:`t_cdf` to
    1e-12 (no scipy here); from EXPANSION_DF_MIN df on, by the Cornish-Fisher expansion. Checked against printed
    tables, the closed forms at 1 and 2 df and a 50-digit computation at large df (``tests/seiko_core/test_stats_t.py``)."""
    if not 0.5 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df > 0, got p={p}, df={df}")
    if df >= EXPANSION_DF_MIN:
        return _t_quantile_expansion(p, float(df))
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@functools.lru_cache(maxsize=1024)
def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom, exact (:func:`t_quantile`; 12.7062 at 1 df,
    2.1314 at 15, 1.9799 at 120, towards the normal's 1.95996). It was a printed table's value at the next
    tabulated df below (1.980 for every df above 120: 1.972 is the quantile at 199), conservative but not the
    quantile (eleventh review). Cached: the dashboard asks for the same few df on every refresh."""
    if not math.isfinite(df) or df < 1:  # inf or nan passed "df < 1" and bisected to a quantile near 0 (review)
        raise ValueError(f"a t quantile needs a finite number of degrees of freedom, at least 1, got {df}")
    return t_quantile(0.975, df)


def mean_ci95(values) -> tuple[float, float]:
    """(mean, half-width of the 95% t confidence interval); the half-width is nan for fewer than two values, and
    exactly 0 for values that are all the same (their mean is that value: the mean of 3 x 0.1 is not, in floats,
    and their sd came out 1.7e-17), which :func:`interval_text` shows as no interval."""
    v = np.asarray(list(values), dtype=float)
    if len(v) < 2:
        return float(v.mean()) if len(v) else float("nan"), float("nan")
    if v.max() == v.min():  # NaN compares unequal: a value that is not a number falls through to a NaN mean
        return float(v[0]), 0.0
    return float(v.mean()), float(t975(len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))


def interval_text(mean: float, half: float, fmt: str) -> str:
    """"[mean - half, mean + half]" in ``fmt`` (e.g. "+.2f"), or "[no interval: one value]" where the half-width is
    nan (:func:`mean_ci95` of one value: a t interval needs two); the tables printed "[+nan, +nan]" (found by review).
    A half-width of 0 (values all the same: s = 0, where the t interval is undefined, as scipy's t.interval with
    scale 0 is) is "[no interval: every value the same]": "[+1.00, +1.00]" read as a mean known exactly (tenth
    review)."""
    if math.isnan(mean):  # a value that is not a number (a run whose reward went NaN): not "one value" (review)
        return "[no interval: a value is not a number]"
    if math.isnan(half):
        return "[no interval: one value]"
    if half == 0:
        return NO_SPREAD
    return f"[{mean - half:{fmt}}, {mean + half:{fmt}}]"


NO_SPREAD = "[no interval: every value the same]"


Z95 = 1.959963984540054  # the standard normal's 97.5% quantile: the one copy (app.taste_stats, db.comparisons)


def wilson_ci95(successes: int, n: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a proportion ``successes / n``: the p for which the observed share lies within
    1.96 standard errors sqrt(p (1 - p) / n) of p. Unlike the normal approximation it stays inside [0, 1] and is not
    empty at 0 or n successes (a fidelity of 1.000 on 96 samples is [0.962, 1])."""
    if n < 1 or not 0 <= successes <= n:
        raise ValueError(f"a proportion needs 0 <= successes <= n and n >= 1, got {successes} of {n}")
    return wilson_bounds(successes, n, Z95)


def wilson_bounds(successes: float, n: int, z: float) -> tuple[float, float]:
    """Wilson's score interval (low, high) of ``successes / n`` at the normal quantile ``z``: the one formula behind
    ``wilson_ci95``, the dashboard's band (``app.taste_stats``) and the A/B win rate (``db.comparisons``), each of
    which checks its own arguments first (``n`` >= 1, 0 <= ``successes`` <= ``n``; halves allowed for ties)."""
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 (n) successes the lower (upper) end is exactly 0 (1); centre - half rounds to 5.6e-17 there (review)
    return (0.0 if successes <= 0 else max(0.0, centre - half)), (1.0 if successes >= n else min(1.0, centre + half))


def clustered_wilson(successes: float, n: int, k: int, deff: float | None) -> tuple[float, float]:
    """The 95% interval (low, high) of the share ``successes / n`` of ``n`` votes (or ratings) on ``k`` clusters
    (pairs, images), ``deff`` the design effect (the share's cluster-robust variance over the k clusters divided by
    its variance as if the n votes were independent), None where it cannot be estimated: every vote the same (no
    spread to measure it by) or one cluster (no variance between clusters). The one rule of the A/B win rate
    (``db.comparisons.clustered_win_interval``) and the dashboard's liked share (``app.taste_stats.clustered_intervals``);
    each checks its own arguments first. Two cases, by the design (how many votes each cluster has), never by an
    estimate:

    - one vote per cluster (k == n): Wilson over the n votes at the normal 1.96, exactly (independent votes; no
      variance is estimated from a spread, Wilson's own binomial variance is used);
    - clustered (k < n): Wilson at the effective number ``n / max(1, deff)`` at Student's ``t975(max(1, k - 1))``,
      deff taken as 1 where it is None. The variance is estimated from k clusters (k - 1 degrees of freedom); a deff
      at or below 1 never narrows the interval below Wilson over the n votes at that t (eleventh review: at deff <= 1
      it was the normal 1.96, so the interval jumped as deff crossed 1).

    Thirteenth review (the rule stated before it was measured): deff None is 1, the floor, because that is its limit
    from the votes nearest to it: one dissenting vote on clusters of equal size has a deff of exactly 1, so every
    vote the same and one vote different are now the same formula one success apart (16 pairs of 16 votes all won:
    [0.983, 1], one lost: [0.975, 0.999]). They were k trials at 1.96 ([0.806, 1]) against n votes at t, so one
    dissenting vote narrowed the interval from 0.194 to 0.024 wide. One cluster has 1 degree of freedom, not 0: with
    k = 1 nothing estimates the variance between clusters, so the interval is the n votes' Wilson at t with 1 df
    (12.7), at least as wide as at k = 2 with the same votes on each, so adding a cluster whose votes equal the
    others' never widens the interval (it was one vote's worth at 1.96: one pair of 4 votes, 2 won, gave
    [0.05, 0.95], two such pairs [0.01, 0.99]; one such pair now gives [0.006, 0.994])."""
    if k == n:
        return wilson_bounds(successes, n, Z95)
    n_eff = n / max(1.0, 1.0 if deff is None else deff)
    return wilson_bounds(successes / n * n_eff, n_eff, t975(max(1, k - 1)))


def cluster_variance(residuals, n: int) -> float:
    """A pooled share's (or mean's) cluster-robust variance over K >= 2 clusters, ``K / (K - 1) * sum_c e_c^2 / N^2``:
    ``residuals`` holds each cluster's e_c = s_c - n_c * share (its observations' sum less their count times the
    pooled share), N all the observations. The one formula of the A/B win rate's (``db.comparisons``) and the
    dashboard's (``app.taste_stats``) clustered intervals, by pair, image, rater or (image, rater) cell."""
    e = list(residuals)
    k = len(e)
    return k / (k - 1) * sum(x * x for x in e) / (n * n)


def two_way_variance(v_first: float, k_first: int, v_rater: float, k_rater: int, v_cell: float) -> tuple[float, int]:
    """(variance, clusters) of a share (or a mean: the dashboard's mean rating) clustered two ways, by its items
    (pairs, images; ``k_first`` of them, variance ``v_first``) and by rater (``k_rater``, ``v_rater``), ``v_cell``
    the variance over the (item, rater) cells (``cluster_variance`` each): V_first + V_rater - V_cell (Cameron,
    Gelbach and Miller 2011), and the clusters whose count - 1 gives Student's t its degrees of freedom,
    min(k_first, k_rater) (the fewer clusters bound how well the variance is known). For ``clustered_wilson`` and
    the mean's t band (``app.taste_stats``); where it applies is ``db.comparisons.clusters_by_rater``."""
    # summed in this order, as before this helper (a read-only review: (v_first + v_rater) - v_cell differs in
    # its last bits)
    return v_first + (v_rater - v_cell), min(k_first, k_rater)


def pearson(a, b) -> float | None:
    """Pearson's r of two equal-length sequences; None when either is constant (every value the same) or has fewer
    than two values. Constancy is read from the values themselves (their max equals their min), not from a centred
    sum of squares: the mean of equal floats is not always that float (3 x 0.1 / 3), so a constant series centred on
    it left a few 1e-17 residues and r came out 0.0 where it is undefined (found by review)."""
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(x) != len(y):
        raise ValueError(f"a correlation needs two sequences of one length, got {len(x)} and {len(y)}")
    if len(x) < 2 or x.max() == x.min() or y.max() == y.min():
        return None
    x, y = x - x.mean(), y - y.mean()
    return float(np.clip((x * y).sum() / math.sqrt(float((x * x).sum()) * float((y * y).sum())), -1.0, 1.0))


def wins(differences) -> float:
    """Paired wins of B over A from the differences B - A: a positive one counts 1, an exact tie 1/2 (the rule every
    table here states; the simulator's and the pooled tables counted a tie as a loss, found by review). NaN when a
    difference is NaN (a run whose reward went NaN): neither a win, a tie nor a loss, so the count of n is undefined,
    as the mean of those differences is (:func:`mean_ci95`); it was counted as a loss (tenth review). Tables show it
    with :func:`wins_text`."""
    ds = [float(d) for d in differences]
    if any(math.isnan(d) for d in ds):
        return float("nan")
    return float(sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in ds))


NO_WINS = "[no count: a value is not a number]"


def wins_text(won: float, n: int) -> str:
    """"won/n" (``won`` from :func:`wins`, halves kept), or NO_WINS where ``won`` is NaN: "nan/5" read as a count."""
    return NO_WINS if math.isnan(won) else f"{won:g}/{n}"


def number_or_none(value) -> bool:
    """Whether ``value`` (read from a results file) is None or a finite number: a bool is not a number, and NaN or an
    infinity (which Python's json reads from ``NaN`` and ``Infinity``) is not one a mean or a table can use, nor is a
    whole number past float's range (json reads 400 digits as an int: ``math.isfinite`` raised OverflowError on it,
    a traceback from the report and from bench-taste's resume; found by the nineteenth review)."""
    if value is None:
        return True
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
