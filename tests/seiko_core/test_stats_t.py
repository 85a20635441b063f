"""Student's t quantile without scipy (``seiko_core.stats.t975`` / ``t_quantile``) against printed tables, the
closed forms at 1, 2 and 4 degrees of freedom, and the Cornish-Fisher expansion for many degrees of freedom
(eleventh review: ``t975`` was a table's value at the next tabulated df below, 1.980 for every df above 120)."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from seiko_core import stats

Z975 = 1.959963984540054  # the normal's 97.5% quantile

# printed tables (e.g. Abramowitz & Stegun, table 26.10; NIST/SEMATECH e-Handbook 1.3.6.7.2), 97.5%, 4 decimals
TEXTBOOK = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 7: 2.3646, 10: 2.2281, 15: 2.1314, 20: 2.0860,
            30: 2.0423, 60: 2.0003, 120: 1.9799}


@pytest.mark.parametrize("df", sorted(TEXTBOOK))
def test_t975_matches_the_printed_tables(df):
    assert stats.t975(df) == pytest.approx(TEXTBOOK[df], abs=6e-5)


def closed_form(p: float, df: int) -> float:
    """Student's t quantile in closed form at 1, 2 and 4 degrees of freedom (Hill 1970; Shaw 2006)."""
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    alpha = 4 * p * (1 - p)  # df == 4
    q = math.cos(math.acos(math.sqrt(alpha)) / 3) / math.sqrt(alpha)
    return 2 * math.sqrt(q - 1)


@pytest.mark.parametrize("df", [1, 2, 4])
@pytest.mark.parametrize("p", [0.6, 0.9, 0.975, 0.995, 0.9995])
def test_t_quantile_matches_the_closed_forms(df, p):
    assert stats.t_quantile(p, df) == pytest.approx(closed_form(p, df), rel=1e-10)


def test_t975_at_one_and_two_degrees_of_freedom_is_the_closed_form():
    assert stats.t975(1) == pytest.approx(math.tan(math.pi * (0.975 - 0.5)), rel=1e-10)
    assert stats.t975(2) == pytest.approx(0.95 / math.sqrt(2 * 0.975 * 0.025), rel=1e-10)


def cornish_fisher(df: int, z: float = Z975) -> float:
    """Abramowitz & Stegun 26.7.5: t's quantile as the normal's plus a series in 1 / df (error O(df^-5))."""
    g = [(z**3 + z) / 4, (5 * z**5 + 16 * z**3 + 3 * z) / 96, (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
         (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160]
    return z + sum(gi / df ** (i + 1) for i, gi in enumerate(g))


@pytest.mark.parametrize("df", [121, 199, 500, 1000, 10**4, 10**5, 10**6])
def test_t975_for_many_degrees_of_freedom_follows_the_expansion_towards_the_normal(df):
    """The table gave 1.980 for each of these (1.972 is the quantile at 199); now each is the exact quantile, above
    the normal's 1.95996 and falling towards it."""
    assert stats.t975(df) == pytest.approx(cornish_fisher(df), abs=1e-7)
    assert Z975 < stats.t975(df) < 1.980
    assert stats.t975(10**6) == pytest.approx(1.95996, abs=1e-5)


@pytest.mark.parametrize("df", [0, -1, float("inf"), float("nan")])
def test_t975_needs_a_finite_degree_of_freedom(df):
    """inf and nan passed the check (nan < 1 and inf < 1 are false) and bisected to a quantile near 0, an interval of
    no width (second read-only review, 6 Dec 2026)."""
    with pytest.raises(ValueError, match="at least 1, got"):
        stats.t975(df)


def _mp_t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t at 50 digits (mpmath's regularised incomplete beta, root by findroot): the
    reference computed independently of seiko_core.stats, started from the normal's quantile plus its first term."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(50):
        nu = mp.mpf(df)
        z = NormalDist().inv_cdf(p)
        tail = lambda t: mp.betainc(nu / 2, mp.mpf(1) / 2, 0, nu / (nu + t * t), regularized=True) / 2 - (1 - mp.mpf(p))  # noqa: E731
        return float(mp.findroot(tail, z + (z**3 + z) / (4 * df)))


@pytest.mark.parametrize("df", [10**4, 10**5, 10**7, 10**9, 10**12, 10**15, 10**30])
@pytest.mark.parametrize("p", [0.6, 0.975, 0.9995])
def test_t_quantile_at_a_huge_degree_of_freedom_is_still_the_quantile(p, df):
    """Twelfth review (6 Dec 2026): the bisection on the incomplete beta lost the quantile as df grew (the tail's
    x = df / (df + t^2) rounds towards 1 and lgamma(df / 2) swamps the difference it is taken for): t975(1e9) was
    1.9599637 and t975(1e12) 1.95991, both below the normal's 1.95996 (the t quantile is above it at every df), and
    t975(1e300) was 8.6e141. Now within 1e-12 (relative) of an independent 50-digit computation at every df."""
    got = stats.t_quantile(p, df)
    assert got == pytest.approx(_mp_t_quantile(p, df), rel=1e-12)
    assert got > NormalDist().inv_cdf(p) or df > 10**15  # beyond that the two are one float


def test_t975_falls_towards_the_normal_as_df_grows_without_bound():
    """The same finding without mpmath: t975 is above the normal's quantile at every finite df (one float with it
    from about 1e17 df on), never rises as df grows, and tends to it as z + (z^3 + z) / (4 df) (A&S 26.7.5's first
    term; the rest is O(df^-2))."""
    seq = [stats.t975(10**e) for e in range(0, 301, 3)]
    assert all(a >= b for a, b in zip(seq, seq[1:])) and all(t >= NormalDist().inv_cdf(0.975) for t in seq)
    assert seq[4] > Z975  # 1e12 df
    for df in (10**8, 10**12, 10.0**300):
        assert stats.t975(df) == pytest.approx(Z975 + (Z975**3 + Z975) / (4 * df), rel=1e-14, abs=0)
