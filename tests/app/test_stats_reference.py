"""The project's reported statistics against independent references (seventh review, 5 Dec 2026): correlations
against exact rational arithmetic, Wilson intervals against the roots of their defining quadratic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from app import taste_stats
from app.bench_taste import correlations
from app.bench_taste_report import goals_across
from db import comparisons
from seiko_core import stats
from seiko_core.simulate import _pearson, uncertainty_calibration
from tests.seiko_core import test_stats_t

Z = 1.959963984540054


def exact_pearson(a, b) -> float | None:
    """Pearson's r from exact rationals of the float inputs: None when a side's sum of squares is exactly 0."""
    x, y = [Fraction(float(v)) for v in a], [Fraction(float(v)) for v in b]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    sxy = sum((u - mx) * (v - my) for u, v in zip(x, y, strict=True))
    sxx, syy = sum((u - mx) ** 2 for u in x), sum((v - my) ** 2 for v in y)
    if sxx == 0 or syy == 0:
        return None
    return math.copysign(math.sqrt(sxy * sxy / (sxx * syy)), sxy)


def exact_ranks(values) -> list[float]:
    """Average ranks from 0, by counting: (values below) + (ties - 1) / 2."""
    return [sum(w < v for w in values) + (sum(w == v for w in values) - 1) / 2 for v in values]


CONSTANT_SERIES = [[0.1] * 3, [0.1] * 7, [0.3] * 10, [5.7] * 7, [1 / 3] * 10, [9.95] * 7]


@pytest.mark.parametrize("series", CONSTANT_SERIES, ids=lambda s: f"{s[0]:.3g}x{len(s)}")
def test_a_correlation_with_a_constant_series_is_undefined_not_zero(series):
    """The mean of n equal floats is not always that float (0.1 + 0.1 + 0.1 = 0.30000000000000004), so centring left
    1e-17 residues and the held-out correlation, the goals' r and the simulator's calibration read 0.0 where r is
    undefined; their docstrings promise None."""
    other = np.arange(len(series), dtype=float)
    assert exact_pearson(series, other) is None  # the reference: no spread, no correlation
    assert stats.pearson(series, other) is None
    assert stats.pearson(other, series) is None
    assert correlations(np.asarray(series), other) == {"pearson": None, "spearman": None}
    assert _pearson(torch.tensor(series, dtype=torch.float64), torch.tensor(other)) is None
    cal = uncertainty_calibration(torch.tensor(series, dtype=torch.float64)[:, None].repeat(1, 2),
                                  torch.tensor(series, dtype=torch.float64) + 0.5, torch.tensor(other))
    assert cal == {"spread_abs_error_corr": None, "bonus_error_corr": None}  # spread 0; a constant bonus of 0.5
    rounds = [{"share_ge6": series[0] / 10, "variety_embedding_pct_round0": 70.0 + 10 * k,
               "variety_pixels_pct_round0": 90.0} for k in range(len(series))]
    doc = {"seeds": {"0": {"rounds": [{}] + rounds}}}
    assert goals_across([doc])["r_share_variety_emb"] is None


def test_correlations_match_exact_arithmetic_with_ties_and_small_n():
    rng = np.random.default_rng(7)
    checked = 0
    for trial in range(300):
        n = int(rng.integers(2, 12))
        a = rng.integers(1, 5, n).astype(float)  # many ties
        b = rng.integers(1, 11, n) + (rng.normal(0, 1, n) if trial % 2 else 0.0)
        got = correlations(a, b)
        for key, ref in (("pearson", exact_pearson(a, b)), ("spearman", exact_pearson(exact_ranks(list(a)),
                                                                                      exact_ranks(list(b))))):
            if ref is None:
                assert got[key] is None
            else:
                assert got[key] == pytest.approx(ref, abs=1e-12)
                checked += 1
    assert checked > 400
    assert correlations(np.array([1.0, 2.0]), np.array([5.0, 3.0]))["pearson"] == -1.0  # two points: +-1 exactly


def wilson_roots(k: float, n: float, z: float = Z) -> tuple[float, float]:
    """The Wilson interval as the roots p of (k/n - p)^2 = z^2 p (1 - p) / n."""
    ph = k / n
    a, b, c = 1 + z * z / n, -(2 * ph + z * z / n), ph * ph
    disc = math.sqrt(b * b - 4 * a * c)
    return (-b - disc) / (2 * a), (-b + disc) / (2 * a)


@pytest.mark.parametrize("n", [1, 2, 3, 6, 7, 9, 12, 24, 25, 96, 100, 255])
def test_wilson_intervals_match_the_quadratic_and_reach_0_and_1_exactly(n):
    """At 0 successes the interval's lower end is 0, at n the upper end is 1 (the quadratic's root there, exactly);
    the three copies gave 5.6e-17 and 0.9999999999999999 for many n."""
    for k in [x / 2 for x in range(0, 2 * n + 1)]:
        lo, hi = wilson_roots(k, n)
        got = [taste_stats.wilson_interval(k, n)[1:], comparisons.wilson_interval(k, n)]
        if k == int(k):
            got.append(stats.wilson_ci95(int(k), n))
        for g in got:
            assert g[0] == pytest.approx(max(0.0, lo), abs=1e-7)
            assert g[1] == pytest.approx(min(1.0, hi), abs=1e-7)
    for lo_hi in (taste_stats.wilson_interval(0, n)[1:], comparisons.wilson_interval(0, n), stats.wilson_ci95(0, n)):
        assert lo_hi[0] == 0.0
    for lo_hi in (taste_stats.wilson_interval(n, n)[1:], comparisons.wilson_interval(n, n), stats.wilson_ci95(n, n)):
        assert lo_hi[1] == 1.0
    assert comparisons.win_stats(0, n, 0)["ci95"][0] == 0.0 and comparisons.win_stats(n, 0, 0)["ci95"][1] == 1.0


def test_the_clustered_win_interval_is_wilsons_with_one_vote_per_pair_and_counts_pairs_without_spread():
    """One vote on every pair: the quadratic's roots over the votes, exactly as the independent-vote interval."""
    for votes in ([(1, 0, 0)] * 7 + [(0, 1, 0)] * 3, [(1, 0, 0), (0, 0, 1), (0, 1, 0), (0, 0, 1)], [(1, 0, 0)] * 5):
        n, score = len(votes), sum(w + t / 2 for w, _, t in votes)
        lo, hi = comparisons.clustered_win_interval(votes)
        ref = wilson_roots(score, n)
        assert (lo, hi) == pytest.approx((max(0.0, ref[0]), min(1.0, ref[1])), abs=1e-12)
    # every vote a win on 3 pairs of 4 votes: no spread to measure deff by, so deff is 1, its limit from one lost
    # vote (thirteenth review; it was the 3 pairs as 3 trials at 1.96): Wilson over the 12 votes at t with 2 df,
    # whose lower end at 12 of 12 is 12 / (12 + t^2)
    t2 = T975_TABLE[2]
    assert comparisons.clustered_win_interval([(4, 0, 0)] * 3) == pytest.approx((12 / (12 + t2 * t2), 1.0), abs=1e-6)
    # votes on each pair that disagree more than independent votes would (deff 0 here): deff below 1 is not used to
    # narrow the interval (never narrower than Wilson's over the votes), and the quantile is still t with K - 1 df,
    # as at deff just above 1 (eleventh review: it was the normal 1.96 here)
    ref = wilson_roots(4, 8, 3.182446)  # t(0.975, 3 df), printed tables
    assert comparisons.clustered_win_interval([(1, 1, 0)] * 4) == pytest.approx(ref, abs=1e-6)


def direct_design_effect(votes) -> tuple[float, int, float]:
    """(rate, n, deff) from the per-vote arrays (numpy, the ratio estimator's linearised variance over the pairs)."""
    y, g = [], []
    for j, (w, los, t) in enumerate(votes):
        y += [1.0] * w + [0.0] * los + [0.5] * t
        g += [j] * (w + los + t)
    y, g = np.array(y), np.array(g)
    n, k, rate = len(y), len(votes), y.mean()
    totals = np.bincount(g, weights=y - rate)
    return rate, n, (k / (k - 1) * (totals ** 2).sum() / n**2) / (y.var(ddof=1) / n)


# Student's t 97.5% quantiles, exact (eleventh review: t975 was the conservative table, 2.776 at 4 df and 1.980 at
# 199, which these tests pinned): 2.776445 at 4 df from the printed tables, and at 199 df the Cornish-Fisher
# expansion (Abramowitz & Stegun 26.7.5; tests/seiko_core/test_stats_t.py checks t975 against it to 1e-7)
T975_DF4 = 2.776445
T975_DF199 = test_stats_t.cornish_fisher(199)


def test_the_clustered_win_interval_against_a_direct_design_effect():
    """Unequal pairs with ties: Wilson at n / deff, at Student's t with K - 1 = 4 degrees of freedom (the cluster-
    robust variance is estimated from 5 pairs; eleventh review: it was the normal 1.96)."""
    votes = [(3, 0, 1), (0, 2, 0), (1, 1, 1), (2, 0, 0), (0, 0, 2)]
    rate, n, deff = direct_design_effect(votes)
    assert deff > 1
    ref = wilson_roots(rate * n / deff, n / deff, T975_DF4)
    assert comparisons.clustered_win_interval(votes) == pytest.approx(ref, abs=1e-6)  # the quantile to 6 decimals
    with pytest.raises(comparisons.InvalidInput, match="add up to"):
        comparisons.win_stats(6, 3, 4, 5, votes[:-1])


# Student's t 97.5% quantiles from printed tables, for the deff = 1 cases below
T975_TABLE = {2: 4.302653, 3: 3.182446, 7: 2.364624, 14: 2.144787, 15: 2.131450}


def exact_design_effect(votes) -> Fraction:
    """deff of (wins, losses, ties) per pair in exact rationals (the per-vote form: y in {1, 1/2, 0})."""
    y, g = [], []
    for j, (w, los, t) in enumerate(votes):
        y += [Fraction(1)] * w + [Fraction(0)] * los + [Fraction(1, 2)] * t
        g += [j] * (w + los + t)
    n, k = len(y), len(votes)
    rate = sum(y) / n
    totals = [sum(v - rate for v, h in zip(y, g, strict=True) if h == j) for j in range(k)]
    return (Fraction(k, k - 1) * sum(t * t for t in totals) / n**2) / (sum((v - rate) ** 2 for v in y) / (n - 1) / n)


@pytest.mark.parametrize("pairs, votes_each", [(3, 3), (4, 3), (8, 3)])  # deff rounds to 1, 1 + 2e-16, 1 - 2e-16
def test_a_design_effect_of_exactly_one_gets_one_interval_however_it_rounds(pairs, votes_each):
    """One lost vote among pairs of equal size: deff is exactly 1 (exact rationals), and in floats 1.0, 1 + 2e-16 or
    1 - 2e-16 by the pair count. The rule chose 1.96 at deff <= 1 and t above (eleventh review), so rounding chose
    the quantile: 3 pairs of 3 got Wilson at 1.96, 4 pairs of 3 at t with 3 df. Now both: Wilson over the N votes
    at Student's t with K - 1 df (the quantile from printed tables), for the votes on a pair and for the ratings of
    an image alike."""
    votes = [(1, votes_each - 1, 0)] + [(0, votes_each, 0)] * (pairs - 1)
    assert exact_design_effect(votes) == 1
    n = pairs * votes_each
    ref = wilson_roots(1, n, T975_TABLE[pairs - 1])
    assert comparisons.clustered_win_interval(votes) == pytest.approx((max(0.0, ref[0]), ref[1]), abs=1e-6)
    scores = [7.0] + [2.0] * (n - 1)  # one liked rating: the same design on images
    _, (share, lo, hi) = taste_stats.clustered_intervals(scores, [i // votes_each for i in range(n)])
    assert (lo, hi) == pytest.approx((max(0.0, ref[0]), ref[1]), abs=1e-6)


# Student's t 97.5% quantile at 1 degree of freedom, tan(0.475 pi) (the Cauchy distribution's quantile, in closed form)
T975_DF1 = math.tan(0.475 * math.pi)


@pytest.mark.parametrize("pairs, votes_each", [(16, 16), (8, 3), (4, 3), (3, 5)])
def test_every_vote_the_same_is_the_limit_of_one_dissenting_vote(pairs, votes_each):
    """All N votes won, then one and two lost (on different pairs of equal size): deff cannot be estimated for the
    first, is exactly 1 for the second (exact rationals) and at or below 1 for the third, so all three are Wilson
    over the N votes at t with K - 1 df (the quadratic's roots; the lower end at N of N in closed form,
    N / (N + t^2)), and each lost vote lowers both ends: the step from none lost to one lost is no larger than
    Wilson's own steps. Before (thirteenth review) every vote the same was the K pairs as K trials at 1.96, so one
    lost vote narrowed 16 pairs of 16 from [0.806, 1] to [0.975, 0.999] and raised the lower end by 0.17. The same
    for ratings all liked, then one and two not liked."""
    n, t = pairs * votes_each, T975_TABLE[pairs - 1]
    got_votes, got_share = [], []
    for lost in range(3):
        votes = [(votes_each - (j < lost), int(j < lost), 0) for j in range(pairs)]
        if lost == 1:
            assert exact_design_effect(votes) == 1
        if lost == 2:
            assert exact_design_effect(votes) <= 1
        lo, hi = wilson_roots(n - lost, n, t)
        ref = (max(0.0, lo), 1.0 if lost == 0 else hi)
        if lost == 0:
            assert ref[0] == pytest.approx(n / (n + t * t), abs=1e-12)
        got = comparisons.clustered_win_interval(votes)
        assert got == pytest.approx(ref, abs=1e-6)
        got_votes.append(got)
        scores = [2.0 if j < lost and r == 0 else 8.0 for j in range(pairs) for r in range(votes_each)]
        images = [j for j in range(pairs) for _ in range(votes_each)]
        _, (share, slo, shi) = taste_stats.clustered_intervals(scores, images)
        assert share == (n - lost) / n and (slo, shi) == pytest.approx(ref, abs=1e-6)
        got_share.append((slo, shi))
    for got in (got_votes, got_share):
        assert got[0][0] > got[1][0] > got[2][0] and got[0][1] >= got[1][1] >= got[2][1]
        assert got[0][0] - got[1][0] <= 1.5 * (got[1][0] - got[2][0])


@pytest.mark.parametrize("pair", [(2, 2, 0), (3, 1, 0), (4, 0, 0), (1, 2, 1), (5, 11, 0), (1, 0, 0), (0, 1, 0)])
def test_a_pair_more_with_the_same_votes_never_widens_the_interval(pair):
    """K pairs, each with the votes ``pair``, for K = 1 to 8: each interval holds the next (adding a pair whose
    votes are those of the others never widens it). One pair has no variance between pairs to estimate, so it is
    the independent votes' Wilson at t with 1 df (tan(0.475 pi), closed form), which holds the independent votes'
    Wilson at 1.96. Before (thirteenth review) one pair was one vote's worth at 1.96, narrower than two pairs: a pair
    of 4 votes, 2 won, gave [0.05, 0.95], two such pairs [0.01, 0.99]. One vote a pair (the last two) is Wilson
    over the votes at 1.96 at every K, as before. The same for the ratings of an image."""
    m, score = sum(pair), pair[0] + pair[2] / 2
    previous = None
    for k in range(1, 9):
        got = comparisons.clustered_win_interval([pair] * k)
        liked = [8.0] * pair[0] + [2.0] * pair[1]
        if pair[2] == 0:
            _, (_, slo, shi) = taste_stats.clustered_intervals(liked * k, [j for j in range(k) for _ in range(m)])
            assert (slo, shi) == pytest.approx(got, abs=1e-12)
        if k == 1 and m > 1:
            lo, hi = wilson_roots(score, m, T975_DF1)
            assert got == pytest.approx((max(0.0, lo), min(1.0, hi)), abs=1e-6)
            lo, hi = wilson_roots(score, m)
            assert got[0] <= max(0.0, lo) and got[1] >= min(1.0, hi)
        if previous is not None:
            assert got[0] >= previous[0] - 1e-12 and got[1] <= previous[1] + 1e-12, (k, previous, got)
        previous = got


def test_the_win_interval_is_continuous_across_a_design_effect_of_one():
    """16 pairs of 16 votes, 128 won: moving one won vote from a pair of 4 wins to another of 4 takes deff from
    0.996 to 1.029 (exact rationals). The interval at 0.996 was Wilson over the 256 votes at 1.96, at 1.029 Wilson
    over 256 / 1.029 at t with 15 df, 10% wider for a vote moved (eleventh review). Now both at t: the widths differ
    by about the 1.5% of sqrt(1.029)."""
    below = [10, 10, 10, 9, 9, 9, 9, 9, 9, 8, 8, 8, 7, 5, 4, 4]
    above = [10, 10, 10, 9, 9, 9, 9, 9, 9, 8, 8, 8, 7, 5, 5, 3]
    widths = []
    for wins, deff in ((below, Fraction(255, 256)), (above, Fraction(527, 512))):
        votes = [(w, 16 - w, 0) for w in wins]
        assert sum(wins) == 128 and exact_design_effect(votes) == deff
        lo, hi = comparisons.clustered_win_interval(votes)
        ref = wilson_roots(128 / max(1, float(deff)), 256 / max(1, float(deff)), T975_TABLE[15])
        assert (lo, hi) == pytest.approx(ref, abs=1e-6)
        widths.append(hi - lo)
    assert 1 < widths[1] / widths[0] < 1.02


def test_the_liked_share_is_continuous_across_a_design_effect_of_one():
    """16 images of 3 ratings, 24 of 48 liked, the liked ones spread over the images in two ways: deff 0.870 and
    1.044. The share's interval at 0.870 was Wilson over the 48 ratings at 1.96, at 1.044 Wilson over 48 / 1.044
    at t with 15 df, 10% wider (eleventh review); now both at t, 2% apart."""
    widths = []
    for liked_per_image in ([1] * 11 + [2, 2, 3, 3, 3], [1] * 12 + [3] * 4):
        scores = [7.0 if r < liked else 3.0 for liked in liked_per_image for r in range(3)]
        images = [i for i in range(16) for _ in range(3)]
        deff = exact_design_effect([(liked, 3 - liked, 0) for liked in liked_per_image])
        _, (share, lo, hi) = taste_stats.clustered_intervals(scores, images)
        ref = wilson_roots(24 / max(1, float(deff)), 48 / max(1, float(deff)), T975_TABLE[15])
        assert share == 0.5 and (lo, hi) == pytest.approx(ref, abs=1e-6)
        widths.append(hi - lo)
    assert 1 < widths[1] / widths[0] < 1.03


def _clustered_draws(pairs: int):
    """2000 seeded draws (seed 0) per true rate p = 0.5, 0.7 of ``pairs`` pairs with 16 votes each, pair j won with
    probability q_j ~ Beta(p k, (1 - p) k), k = 2 (two votes on a pair correlated by 1/3), as app.tools.ab_coverage
    draws them."""
    rng = np.random.default_rng(0)
    for p in (0.5, 0.7):
        q = rng.beta(2 * p, 2 * (1 - p), size=(2000, pairs))
        yield p, rng.binomial(16, q).tolist()


def test_the_clustered_win_interval_covers_where_wilsons_falls_short():
    """16 pairs of 16 votes (a round's pairs, 16 raters each voting on every pair), 2000 trials, seed 0: Wilson's
    interval over the 256 votes held p in 58.4% / 57.5% of draws (p = 0.5 / 0.7); the clustered one at the normal
    quantile in 93.6% / 93.5% (tenth review: too narrow, the variance over 16 pairs has 15 degrees of freedom), at
    Student's t with 15 df (eleventh review) in 95.85% / 95.3%, 8% wider."""
    for p, wins in _clustered_draws(16):
        plain = clustered = 0
        for row in wins:
            lo, hi = comparisons.win_stats(sum(row), 256 - sum(row), 0)["ci95"]
            plain += lo <= p <= hi
            lo, hi = comparisons.clustered_win_interval([(w, 16 - w, 0) for w in row])
            clustered += lo <= p <= hi
        assert plain / 2000 < 0.7
        # 95% less two Monte-Carlo standard errors (0.0049 each) is 0.940: the normal quantile's 0.936 / 0.935 fell short
        assert 0.94 <= clustered / 2000 <= 0.97


def test_the_clustered_win_interval_at_many_pairs_is_hardly_wider_than_at_the_normal_quantile():
    """200 pairs of 16 votes, the draws above: the t quantile (exact, 1.9720 for 199 df) covers p in 95.0% / 94.9%
    of draws, and is on average 0.6% wider than the same interval at the normal 1.96 (which covered 94.8% / 94.8%):
    the correction fades as pairs grow, as it should. (At the table's 1.980, before the quantile was exact: 95.0% /
    95.0%, 1.0% wider.)"""
    for p, wins in _clustered_draws(200):
        covered, width, normal_width = 0, 0.0, 0.0
        for row in wins:
            votes = [(w, 16 - w, 0) for w in row]
            lo, hi = comparisons.clustered_win_interval(votes)
            rate, n, deff = direct_design_effect(votes)
            assert deff > 1
            assert (lo, hi) == pytest.approx(wilson_roots(rate * n / deff, n / deff, T975_DF199), abs=1e-9)
            nlo, nhi = wilson_roots(rate * n / deff, n / deff)
            covered += lo <= p <= hi
            width += hi - lo
            normal_width += nhi - nlo
        assert 0.94 <= covered / 2000 <= 0.96
        assert 1.004 < width / normal_width < 1.008  # 1.97196 / 1.95996 = 1.0061 (the table's 1.980: 1.0102)


def _one_round_results(finals: dict[str, dict[int, float]]) -> dict:
    runs = {m: {str(s): {"seed": s, "status": "done", "wall_s": 60.0,
                         "rounds": [{"true_reward_mean": 0.0, "labels": 0, "kl_base": 0.0},
                                    {"true_reward_mean": v, "labels": 4, "kl_base": 1.0, "finetune_steps": 2}]}
                for s, v in by_seed.items()} for m, by_seed in finals.items()}
    return {"settings": {"oracle": "a", "budgets": [4], "noise_sigma": 0.1, "eval": {"seeds": [0, 1]}},
            "pretrained": {"true_reward_mean": 0.0, "true_reward_std": 1.0}, "runs": runs}


def test_a_table_of_one_seed_says_it_has_no_interval_instead_of_printing_nan(tmp_path):
    """A t interval needs two values (0 degrees of freedom for one); the simulator's and the pooled tables printed
    "[+nan, +nan]" for one seed or pair."""
    from seiko_core import pooled
    from seiko_core.simulate import write_table

    one = _one_round_results({"greedy": {0: 1.0}, "ucb": {0: 2.0}})
    for text in (pooled.pooled_table([one]), write_table(one, tmp_path / "table.md")):
        assert "nan" not in text.lower() and "[no interval: one value]" in text
    # two seeds: the interval is t(0.975, 1) = tan(0.475 pi) times sd / sqrt(2), printed as before
    two = _one_round_results({"greedy": {0: 1.0, 1: 1.0}, "ucb": {0: 2.0, 1: 3.0}})  # differences +1, +2
    half = stats.t975(1) * math.sqrt(0.5) / math.sqrt(2)
    assert stats.t975(1) == pytest.approx(math.tan(0.475 * math.pi), rel=1e-10)  # exact (the table's 12.706 before)
    assert f"**+1.50** [{1.5 - half:+.2f}, {1.5 + half:+.2f}] | 2/2 |" in pooled.pooled_table([two])
    assert f"+1.500 [{1.5 - half:+.3f}, {1.5 + half:+.3f}] | 2/2 |" in write_table(two, tmp_path / "table2.md")


def test_an_interval_over_a_value_that_is_not_a_number_does_not_say_one_value():
    """Found by review: three seeds, one of whose rewards went NaN, printed "[no interval: one value]"."""
    assert stats.interval_text(*stats.mean_ci95([0.5, float("nan"), 0.7]), "+.2f") == \
        "[no interval: a value is not a number]"
    assert stats.interval_text(*stats.mean_ci95([0.5]), "+.2f") == "[no interval: one value]"
    half = stats.t975(1) * math.sqrt(0.02) / math.sqrt(2)  # two values 0.5, 0.7: sd sqrt(0.02)
    assert stats.interval_text(*stats.mean_ci95([0.5, 0.7]), "+.2f") == f"[{0.6 - half:+.2f}, {0.6 + half:+.2f}]"


def exact_sample_variance(values) -> Fraction:
    """s^2 with n - 1, in exact rationals of the inputs."""
    x = [Fraction(float(v)) for v in values]
    m = sum(x) / len(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


@pytest.mark.parametrize("scores, images", [([7, 7], [1, 2]), ([10] * 5, [1, 2, 3, 4, 5]), ([1, 1, 1], None),
                                            ([4] * 6, [1, 1, 2, 2, 3, 3]), ([6] * 40, [i // 4 for i in range(40)])],
                         ids=["two-images-rated-7", "five-10s", "three-1s-plain", "three-images-x2-rated-4",
                              "ten-images-x4-rated-6"])
def test_ratings_that_are_all_the_same_get_no_mean_band_not_one_of_zero_width(scores, images):
    """Found by the tenth review: two images rated 7 drew a 95% band [7, 7] on the dashboard's first plot, as if two
    ratings fixed the mean exactly. The t interval is mean +- t s / sqrt(n) with s from the ratings; with s = 0 it is
    undefined (scipy's t.interval with scale 0 gives nan), as it is for one rating: no band, the mean still drawn.
    The share's Wilson interval is still there (it is defined at 0 or n successes): over the ratings, at 1.96 with
    one rating per image, at t with K - 1 df where images have several (deff 1, the limit from one rating that
    differs; thirteenth review: it was the K images as K trials at 1.96)."""
    assert exact_sample_variance(scores) == 0  # the reference: no spread to measure an interval by
    r = taste_stats.round_taste(1, scores, images)
    assert r.mean == scores[0] and (r.mean_low, r.mean_high) == (None, None)
    k = len(set(images)) if images is not None else len(scores)
    z = Z if k == len(scores) else {2: 4.302653, 9: 2.262157}[k - 1]  # printed tables
    liked = len(scores) if scores[0] >= taste_stats.LIKED else 0
    lo, hi = wilson_roots(liked, len(scores), z)
    assert (r.share_low, r.share_high) == pytest.approx((max(0.0, lo), min(1.0, hi)), abs=1e-7)
    ax = taste_stats.figure([r]).axes[0]
    assert "95% CI (t)" not in ax.get_legend_handles_labels()[1]


def test_ratings_one_point_apart_keep_their_t_band():
    """The rule is no spread at all, not a small one: 7 and 8 on two images is t(0.975, 1) = tan(0.475 pi) times
    s / sqrt(2) = 1/2 either side (cut at 10, the top of the scale), 7, 7, 8 on three is t(0.975, 2) s / sqrt(3)."""
    r = taste_stats.round_taste(1, [7, 8], [1, 2])
    half = math.tan(0.475 * math.pi) * math.sqrt(exact_sample_variance([7, 8])) / math.sqrt(2)
    assert (r.mean_low, r.mean_high) == pytest.approx((7.5 - half, 10.0), rel=1e-9)
    t2 = 0.95 * math.sqrt(2 / (4 * 0.975 * 0.025))  # Student's t with 2 df: (2p - 1) sqrt(2 / (4 p (1 - p)))
    half = t2 * math.sqrt(exact_sample_variance([7, 7, 8])) / math.sqrt(3)
    assert taste_stats.mean_interval([7.0, 7.0, 8.0])[1:] == pytest.approx((22 / 3 - half, 22 / 3 + half), rel=1e-9)


@pytest.mark.parametrize("series", CONSTANT_SERIES, ids=lambda s: f"{s[0]:.3g}x{len(s)}")
def test_a_mean_of_values_all_the_same_has_no_interval_in_the_benchmark_tables(series):
    """Found by the tenth review: seeds (or pairs) whose values are all the same printed "[+0.10, +0.10]" (a sd of
    1.7e-17 from the float mean of 3 x 0.1) or "[+5.70, +5.70]": a mean known exactly. With s = 0 the t interval is
    undefined (scipy's t.interval with scale 0 is nan); the mean is the value itself, exactly."""
    assert exact_sample_variance(series) == 0  # the reference
    mean, half = stats.mean_ci95(series)
    assert mean == series[0] and half == 0.0
    assert stats.interval_text(mean, half, "+.2f") == "[no interval: every value the same]"
    # a value that is not a number among equal ones is still that, not "every value the same"
    assert stats.interval_text(*stats.mean_ci95([*series, float("nan")]), "+.2f") == \
        "[no interval: a value is not a number]"


def test_the_pooled_bench_table_shows_no_interval_for_pairs_that_all_differ_alike():
    """Two seeds whose share >= 6 both rose by 25 points: the pooled row said "+25.0 [+25.0, +25.0]"."""
    from app import bench_taste_report as report

    def doc(shares):
        return {"config": {"person": "purple", "options": {"selection": "random", "candidate_factor": 1}},
                "seeds": {str(i): {"complete": True, "rounds": [
                    {"share_ge6": s, "mean_rating": 5.0, "variety_pixels_pct_round0": 100.0,
                     "variety_embedding_pct_round0": 100.0, "wait_s": None}]} for i, s in enumerate(shares)}}

    table = report.pooled_table([(doc([0.25, 0.5]), doc([0.5, 0.75]))], [("a", "b")])
    assert exact_sample_variance([25, 25]) == 0
    assert "| 2 | +25.0 [no interval: every value the same] | 2/2 |" in table
    assert "[+25.0, +25.0]" not in table and "[+0.0, +0.0]" not in table  # the varieties' differences: 0 and 0
    spread = report.pooled_table([(doc([0.25, 0.5]), doc([0.5, 1.0]))], [("a", "b")])
    half = math.tan(0.475 * math.pi) * math.sqrt(exact_sample_variance([25, 50])) / math.sqrt(2)
    assert f"| 2 | +37.5 [{37.5 - half:+.1f}, {37.5 + half:+.1f}] | 2/2 |" in spread


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_reward_models_correlation_over_a_prediction_that_is_not_finite_is_undefined(bad):
    """Found by the tenth review: one NaN among four predictions gave Spearman's rho 0.8 (its ranks put NaN above
    every number; scipy's spearmanr gives nan) and Pearson's r NaN, which results.json (written without NaN) refused,
    so the run's results were not written; an infinite prediction made Pearson's r NaN the same way. A correlation of
    a value that is not a finite number is taken as undefined: None, as for a constant series, and the record is
    written."""
    import json

    from app.bench_taste import reward_figures

    pred = np.array([0.1, bad, 0.3, 0.5])
    got = reward_figures(1, pred, [3, 5, 4, 8], [True, True, True, False])
    assert (got["pearson"], got["spearman"]) == (None, None)
    assert (got["honest"]["pearson"], got["honest"]["spearman"]) == (None, None)
    json.dumps(got, allow_nan=False)
    finite = reward_figures(1, np.array([0.1, 0.2, 0.3, 0.5]), [3, 5, 4, 8])  # the same scores, finite: as before
    assert finite["spearman"] == pytest.approx(exact_pearson(exact_ranks([0.1, 0.2, 0.3, 0.5]), exact_ranks([3, 5, 4, 8])))


def test_the_plots_bands_are_not_drawn_across_a_round_without_an_interval():
    """Found by the tenth review: the mean's band was one shape through the rounds that had an interval, so a round
    without one (ratings all the same, one image) between two with one was shaded with its neighbours' interpolated
    interval, and the share's band crossed a round with no ratings the same way. Now no shaded shape spans such a
    round, and a round whose neighbours have no interval still shows its own, as a bar from its low to its high."""
    from matplotlib.collections import LineCollection, PolyCollection

    rows = [taste_stats.round_taste(0, [4, 6, 7]), taste_stats.round_taste(1, [7, 7]),
            taste_stats.round_taste(2, [5, 6, 8]), taste_stats.round_taste(3, []),
            taste_stats.round_taste(4, [3, 9]), taste_stats.round_taste(5, [3, 9, 5])]
    assert rows[1].mean_low is None and rows[3].n == 0 and rows[0].mean_low is not None
    mean_ax, share_ax = taste_stats.figure(rows).axes

    def spans(ax, label):
        (band,) = [c for c in ax.collections if isinstance(c, PolyCollection) and c.get_label() == label]
        return [(min(p.vertices[:, 0]), max(p.vertices[:, 0])) for p in band.get_paths()]

    def bars(ax):
        return sorted((float(s[0][0]), float(s[0][1]), float(s[1][1])) for c in ax.collections
                      if isinstance(c, LineCollection) for s in c.get_segments())

    for lo, hi in spans(mean_ax, "95% CI (t)"):
        assert not lo < 1 < hi and not lo < 3 < hi
    for lo, hi in spans(share_ax, "95% CI (Wilson)"):
        assert not lo < 3 < hi  # round 3 has no ratings
    assert (4, 5) in spans(mean_ax, "95% CI (t)") and (0, 2) in spans(share_ax, "95% CI (Wilson)")
    # rounds 0 and 2 have a mean interval and no neighbour with one: each is a bar at its own interval
    got = bars(mean_ax)
    assert len(got) == 2
    for (x, lo, hi), k in zip(got, (0, 2), strict=True):
        assert (x, lo, hi) == pytest.approx((k, rows[k].mean_low, rows[k].mean_high))
    assert bars(share_ax) == []


T975_DF7 = 2.364624  # printed tables, 7 degrees of freedom


def _rated_rounds(images: int, trials: int = 2000, centre: float = 5.0):
    """``trials`` seeded rounds (seed 0) of ``images`` images, 3 ratings each: an image's effect ~ N(centre, 1.5^2),
    a rater's noise ~ N(0, 1), whole scores 1-10 (as the dashboard test in test_taste.py draws them)."""
    rng = np.random.default_rng(0)
    for _ in range(trials):
        raw = (centre + 1.5 * rng.standard_normal(images))[:, None] + rng.standard_normal((images, 3))
        yield np.clip(np.rint(raw), 1, 10).ravel(), np.repeat(np.arange(images), 3)


def direct_share_design_effect(scores: np.ndarray, images: np.ndarray) -> tuple[float, int, float]:
    """(share, n, deff) of the ratings >= 6, from the per-rating arrays (numpy, ratio estimator over the images)."""
    y = (scores >= 6).astype(float)
    n, k, p = len(y), len(np.unique(images)), y.mean()
    if p in (0.0, 1.0):  # no spread: no design effect
        return p, n, float("nan")
    totals = np.bincount(images, weights=y - p)
    return p, n, (k / (k - 1) * (totals ** 2).sum() / n**2) / (y.var(ddof=1) / n)


@pytest.mark.parametrize("images, covered_at_196", [(8, 0.9175), (16, 0.9525), (32, 0.947)])
def test_the_dashboards_liked_share_covers_at_few_images(images, covered_at_196):
    """The share rated >= 6 with 3 ratings per image: Wilson's interval at the effective number of ratings N / deff,
    deff from the K images' cluster-robust variance, was taken at the normal 1.96; at the 8 images of one rating batch
    it held the true share (0.391: P(N(5, 1.5^2 + 1) >= 5.5), in closed form) in 91.75% of 2000 rounds, short of 95%
    by 6.8 Monte-Carlo standard errors (0.0049), and 94.7% at a round's 32 images. Now at Student's t with K - 1 df
    wherever the ratings are clustered and differ, at N / max(1, deff) (the rule of the A/B interval,
    ``seiko_core.stats.clustered_wilson``; eleventh review): 96.65% and 95.55%, 15% and 4% wider (96.2% at 8 images
    while the 91 rounds with deff <= 1 were still taken at 1.96)."""
    true = 0.5 * math.erfc(0.5 / math.sqrt(1.5**2 + 1) / math.sqrt(2))
    covered = used = 0
    for scores, ims in _rated_rounds(images):
        _, (share, lo, hi) = taste_stats.clustered_intervals(scores.tolist(), ims.tolist())
        covered += lo <= true <= hi
        p, n, deff = direct_share_design_effect(scores, ims)
        if images == 8 and 0 < p < 1:  # the interval rests on the images' variance, whatever deff: t, 7 df
            n_eff = n / max(1.0, deff)
            assert (lo, hi) == pytest.approx(wilson_roots(p * n_eff, n_eff, T975_DF7), abs=1e-5)
            used += 1
    assert images != 8 or used > 1900
    # 95% less two Monte-Carlo standard errors is 0.940: the normal quantile's 0.9175 at 8 images fell short
    assert 0.94 <= covered / 2000 <= 0.975, covered_at_196


def test_the_liked_share_covers_where_every_rating_is_often_liked():
    """8 images x 3 ratings about 7.5 (true share 0.866: P(N(7.5, 1.5^2 + 1) >= 5.5), in closed form), 2000 rounds,
    seed 0: every rating is liked in about a tenth of the rounds, whose interval is now Wilson over the 24 ratings at
    t with 7 df (deff 1, the limit of one rating not liked; thirteenth review) where it was the 8 images as 8 trials
    at 1.96. Coverage 98.25% before and after (mean width 0.406 before, 0.392 after): the change does not cost
    coverage here. The all-liked rounds' interval is checked against the closed form of Wilson's lower end at N of N,
    N / (N + t^2)."""
    true = 0.5 * math.erfc(-2.0 / math.sqrt(1.5**2 + 1) / math.sqrt(2))
    covered = all_liked = 0
    for scores, ims in _rated_rounds(8, centre=7.5):
        _, (share, lo, hi) = taste_stats.clustered_intervals(scores.tolist(), ims.tolist())
        covered += lo <= true <= hi
        if share == 1.0:
            all_liked += 1
            assert (lo, hi) == pytest.approx((24 / (24 + T975_DF7**2), 1.0), abs=1e-6)
    assert 150 <= all_liked <= 260
    # 95% less two Monte-Carlo standard errors is 0.940
    assert 0.94 <= covered / 2000 <= 0.99


# fourteenth review: the A/B interval clustered by rater as well as by pair (two-way), against explicit sums

T975_DF1 = 12.706205  # printed tables; tan(0.475 pi)
HALF = Fraction(1, 2)


def two_way_reference(votes, t: float, *, over_raters: bool = True) -> tuple[tuple[float, float], Fraction]:
    """(interval, deff) for votes given one by one as (pair, rater, y), y in {1, 1/2, 0}, by explicit sums in exact
    rationals: V = V_pair + V_rater - V_(pair, rater), each ``G / (G - 1) * sum_g (sum_{i in g} (y_i - rate))^2 / N^2``
    over its own grouping of the votes (Cameron, Gelbach and Miller 2011), divided by the independent-vote variance
    ``sum_i (y_i - rate)^2 / ((N - 1) N)``; Wilson's roots at N / max(1, deff) and the quantile ``t``. With
    ``over_raters`` False, V is V_pair alone (the interval about these raters)."""
    y = [Fraction(v) for *_, v in votes]
    n = len(y)
    rate = sum(y) / n
    e = [v - rate for v in y]

    def variance(key):
        groups: dict = {}
        for (pair, rater, _), ei in zip(votes, e, strict=True):
            groups[key(pair, rater)] = groups.get(key(pair, rater), 0) + ei
        g = len(groups)
        return Fraction(g, g - 1) * sum(s * s for s in groups.values()) / n**2

    v = variance(lambda p, r: p)
    if over_raters:
        v += variance(lambda p, r: r) - variance(lambda p, r: (p, r))
    deff = v / (sum(x * x for x in e) / ((n - 1) * n))
    n_eff = n / max(1, float(deff))
    return wilson_roots(float(rate) * n_eff, n_eff, t), deff


def tallies(votes, by: int) -> list[tuple[int, int, int]]:
    """(wins, losses, ties) per pair (by=0) or per rater (by=1) of votes given as (pair, rater, y)."""
    out: dict = {}
    for vote in votes:
        c = out.setdefault(vote[by], [0, 0, 0])
        c[0 if vote[2] == 1 else (1 if vote[2] == 0 else 2)] += 1
    return [tuple(c) for c in out.values()]


# 5 pairs, 4 raters, not every rater on every pair, ties; rater 0 wins every time (a strong rater effect)
FIVE_BY_FOUR = [(0, 0, 1), (0, 1, 1), (0, 2, 1), (0, 3, HALF), (1, 0, 1), (1, 1, 0), (1, 2, 1),
                (2, 0, 1), (2, 1, 0), (2, 2, HALF), (2, 3, 0), (3, 0, 1), (3, 1, 0), (3, 3, 1),
                (4, 0, 1), (4, 1, HALF), (4, 2, 1), (4, 3, 0)]


def two_way(by_pair, by_rater):
    """The two-way interval at any rater count (``generalise_from=2``: the rule of 954b47e, kept for measuring)."""
    return comparisons.clustered_win_interval(by_pair, by_rater, generalise_from=2)


def test_the_two_way_interval_against_explicit_sums():
    """The pair and rater terms each over their own groups and the (pair, rater) term over single votes: deff
    1292281 / 476280 = 2.713 here (pairs alone 0.702, raters alone 3.011), at t with min(5, 4) - 1 = 3 df. Asked
    for at 4 raters with ``generalise_from=2``; the dashboard's rule gives 4 raters the pairs' interval (below)."""
    ref, deff = two_way_reference(FIVE_BY_FOUR, T975_TABLE[3])
    assert deff == Fraction(1292281, 476280)
    got = two_way(tallies(FIVE_BY_FOUR, 0), tallies(FIVE_BY_FOUR, 1))
    assert got == pytest.approx(ref, abs=1e-6)  # the quantile to 6 decimals
    # pairs alone (the interval before the fourteenth review) is narrower: deff 0.70 floored to 1, t with 4 df
    alone = comparisons.clustered_win_interval(tallies(FIVE_BY_FOUR, 0))
    assert alone == pytest.approx(wilson_roots(11.5, 18, T975_DF4), abs=1e-6)
    assert got[1] - got[0] > 1.3 * (alone[1] - alone[0])
    # one vote on every pair, raters voting on several: the raters' own one-way interval (the pair term is the
    # single votes' and cancels), t with 3 - 1 df
    one_each = [(0, 0, 1), (1, 0, 1), (2, 0, 1), (3, 1, 0), (4, 1, 0), (5, 1, HALF), (6, 2, 1), (7, 2, 0), (8, 2, 1)]
    ref, deff = two_way_reference(one_each, T975_TABLE[2])
    assert deff > 1
    got = two_way(tallies(one_each, 0), tallies(one_each, 1))
    assert got == pytest.approx(ref, abs=1e-6)
    assert comparisons.clustered_win_interval(tallies(one_each, 0)) == pytest.approx(wilson_roots(5.5, 9), abs=1e-12)
    # a two-way deff below 1 (raters disagree within themselves) is floored: Wilson over the votes at t(min - 1)
    mixed = [(0, 0, 1), (0, 1, 0), (1, 0, 0), (1, 1, 1), (2, 0, 1), (2, 1, 1), (3, 0, 0), (3, 1, 0)]
    ref, deff = two_way_reference(mixed, T975_DF1)
    assert deff < 1
    assert two_way(tallies(mixed, 0), tallies(mixed, 1)) == pytest.approx(ref, abs=1e-6)


def test_the_two_way_interval_is_bit_for_bit_the_one_before_the_shared_helper():
    """The shared helper (``seiko_core.stats.two_way_variance``, b231e82) was to change neither interval, but summed
    ``(V_pairs + V_rater) - V_cell`` where the A/B win rate had added ``V_rater - V_cell`` to ``V_pairs``: float sums
    in another order, other last bits in 42% of triples (a read-only review). Against the interval the code before
    that change gave for these votes (4 pairs, 3 raters, ties), recorded to the last bit."""
    votes = [(0, 0, HALF), (0, 2, 1), (1, 0, 0), (1, 1, HALF), (2, 0, HALF), (2, 1, HALF), (3, 1, 1), (3, 2, HALF)]
    assert two_way(tallies(votes, 0), tallies(votes, 1)) == (0.07783699549234718, 0.951419553443031)


def test_without_raters_to_cluster_by_the_interval_is_the_pairs_one():
    """Raters unknown, each vote its own rater, or one rater: the interval over pairs alone, unchanged (with each
    vote its own rater the two-way formula reduces to it: the rater term equals the single votes' term)."""
    votes = tallies(FIVE_BY_FOUR, 0)
    rate, n, deff = direct_design_effect(votes)
    pairs_only = comparisons.clustered_win_interval(votes)
    assert pairs_only == pytest.approx(wilson_roots(rate * n, n, T975_DF4), abs=1e-6)  # deff 0.70 < 1: floored
    singles = [(1, 0, 0)] * 10 + [(0, 1, 0)] * 5 + [(0, 0, 1)] * 3
    one_rater = [(10, 5, 3)]
    assert comparisons.clustered_win_interval(votes, None) == pairs_only
    assert comparisons.clustered_win_interval(votes, one_rater) == pairs_only
    assert comparisons.clustered_win_interval(votes, singles) == pytest.approx(pairs_only, abs=1e-12)
    assert two_way(votes, singles) == pytest.approx(pairs_only, abs=1e-12)
    # 4 raters, fewer than RATERS_TO_GENERALISE: about these raters, the pairs' interval (second rule)
    assert comparisons.clustered_win_interval(votes, tallies(FIVE_BY_FOUR, 1)) == pairs_only
    ref, _ = two_way_reference([(p, i, y) for i, (p, _, y) in enumerate(FIVE_BY_FOUR)], T975_DF4)
    assert pairs_only == pytest.approx(ref, abs=1e-6)
    assert comparisons.win_stats(10, 5, 3, 5, votes, one_rater)["ci95"] == list(pairs_only)


# 15 raters (RATERS_TO_GENERALISE) on 3 pairs: raters 0-4 win every pair, 5-9 lose every pair, 10-14 win pair 0,
# tie pair 1 and lose pair 2 (a strong rater effect)
FIFTEEN_ON_THREE = [(p, r, 1 if r < 5 else 0 if r < 10 else (1, HALF, 0)[p]) for r in range(15) for p in range(3)]


def test_fewer_than_fifteen_raters_are_about_these_raters_and_fifteen_generalise():
    """Fourteenth review, second rule: below RATERS_TO_GENERALISE (15) raters the interval is about these raters,
    over pairs only; from 15 it generalises over raters (two-way). Each against explicit sums (two_way_reference).
    The branch's first rule (two-way from 2 raters) fails every case below 15."""
    by_pair = tallies(FIFTEEN_ON_THREE, 0)
    # 15 raters: two-way, deff over pairs and raters, t with min(3, 15) - 1 = 2 df
    ref, deff = two_way_reference(FIFTEEN_ON_THREE, T975_TABLE[2])
    pairs_ref, pairs_deff = two_way_reference(FIFTEEN_ON_THREE, T975_TABLE[2], over_raters=False)
    assert deff > 1 and deff > pairs_deff
    got = comparisons.clustered_win_interval(by_pair, tallies(FIFTEEN_ON_THREE, 1))
    assert got == pytest.approx(ref, abs=1e-6)
    assert got[1] - got[0] > pairs_ref[1] - pairs_ref[0] + 0.05
    stats = comparisons.win_stats(20, 20, 5, 3, by_pair, tallies(FIFTEEN_ON_THREE, 1))  # 5 x 3 won, 5 x 3 lost, 5 x (1, 1, 1)
    assert (stats["raters"], stats["over_raters"]) == (15, True) and stats["ci95"] == list(got)
    # 14 raters (rater 14 left out): pairs only, t with 3 - 1 df
    fourteen = [v for v in FIFTEEN_ON_THREE if v[1] < 14]
    ref, _ = two_way_reference(fourteen, T975_TABLE[2], over_raters=False)
    two_way_14, _ = two_way_reference(fourteen, T975_TABLE[2])
    got = comparisons.clustered_win_interval(tallies(fourteen, 0), tallies(fourteen, 1))
    assert got == pytest.approx(ref, abs=1e-6)
    assert abs(got[0] - two_way_14[0]) > 0.02  # the two-way interval is clearly another one here
    stats = comparisons.win_stats(19, 19, 4, 3, tallies(fourteen, 0), tallies(fourteen, 1))
    assert (stats["raters"], stats["over_raters"]) == (14, False) and stats["ci95"] == list(got)
    # 2 raters, one winning every pair and one losing every pair: each pair split 1-1 (pair deff 0, floored to 1),
    # so Wilson over the 6 votes at t with 3 - 1 df; the two-way one was at t with 1 df and deff 4
    two = [v for v in FIFTEEN_ON_THREE if v[1] in (0, 5)]
    ref, pairs_deff = two_way_reference(two, T975_TABLE[2], over_raters=False)
    assert pairs_deff == 0 and ref == pytest.approx(wilson_roots(3, 6, T975_TABLE[2]), abs=1e-12)
    got = comparisons.clustered_win_interval(tallies(two, 0), tallies(two, 1))
    assert got == pytest.approx(ref, abs=1e-6)
    two_way_2, deff_2 = two_way_reference(two, T975_DF1)
    assert deff_2 == 4 and two_way(tallies(two, 0), tallies(two, 1)) == pytest.approx(two_way_2, abs=1e-6)
    assert got[0] > two_way_2[0] + 0.05 and got[1] < two_way_2[1] - 0.05  # narrower: not the two-way one
    stats = comparisons.win_stats(3, 3, 0, 3, tallies(two, 0), tallies(two, 1))
    assert (stats["raters"], stats["over_raters"]) == (2, False)
    assert comparisons.win_stats(3, 3, 0, 3, tallies(two, 0))["raters"] is None
    assert comparisons.RATERS_TO_GENERALISE == 15


# 15 raters on 4 pairs (images), rater r winning pair p where r + p is even: every rater wins half, each pair nearly
# half, so deff_pair + deff_rater < 1 and the two-way variance V_pair + V_rater - V_(pair, rater) is negative
BALANCED = [(p, r, 1 if (r + p) % 2 == 0 else 0) for r in range(15) for p in range(4)]


def test_a_negative_two_way_variance_is_wilson_over_the_votes_at_t():
    """Where the pairs (images) and the raters each vary less than independent votes would, the two-way variance is
    below zero (deff < 0): it is floored at deff 1, so Wilson over the N votes at t with min(K_pair, K_rater) - 1 df,
    for the A/B win rate and the dashboard's liked share alike."""
    ref, deff = two_way_reference(BALANCED, T975_TABLE[3])
    assert deff < 0
    assert ref == pytest.approx(wilson_roots(30, 60, T975_TABLE[3]), abs=1e-12)
    assert comparisons.clustered_win_interval(tallies(BALANCED, 0), tallies(BALANCED, 1)) == pytest.approx(ref, abs=1e-6)
    scores = [7.0 if y == 1 else 3.0 for *_, y in BALANCED]
    _, (share, lo, hi) = taste_stats.clustered_intervals(scores, [p for p, *_ in BALANCED], [r for _, r, _ in BALANCED])
    assert share == 0.5 and (lo, hi) == pytest.approx(ref, abs=1e-6)


@pytest.mark.parametrize("by_rater, message", [
    ([(10, 5, 2)], "the raters' votes add up to"),
    ([(10, 5, 3), (0, -1, 0)], "each rater's votes must be"),
])
def test_raters_votes_that_do_not_match_the_pairs_are_refused(by_rater, message):
    with pytest.raises(comparisons.InvalidInput, match=message):
        comparisons.clustered_win_interval(tallies(FIVE_BY_FOUR, 0), by_rater)
    with pytest.raises(comparisons.InvalidInput, match="need each pair's votes too"):
        comparisons.win_stats(10, 5, 3, 5, None, [(10, 5, 3)])


# fifteenth review: the dashboard's liked share clustered by rater as well as by image, from the A/B rule's 15 raters

def _liked_votes(raters: int, images: int = 16):
    """(image, rater, liked) for ``images`` images, each rated by 3 raters ((3 i + j) mod ``raters``): raters 0-5
    like every image, 6-11 none, the others the even images (a strong rater effect)."""
    def liked(image, rater):
        return 1 if rater < 6 else 0 if rater < 12 else int(image % 2 == 0)

    return [(i, (3 * i + j) % raters, liked(i, (3 * i + j) % raters)) for i in range(images) for j in range(3)]


def test_the_liked_share_from_fifteen_raters_is_two_way_against_explicit_sums():
    """16 raters on 16 images: the share's interval is the two-way one (images and raters, explicit sums in exact
    rationals, ``two_way_reference``) at t with min(16, 16) - 1 = 15 df, clearly wider than over images alone, which
    is what it was before the fifteenth review. With the ratings of raters 14 and 15 left out (14 raters), it is
    about these raters: images only, as without raters."""
    votes = _liked_votes(16)
    scores = [8.0 if y else 3.0 for *_, y in votes]
    images, raters = [v[0] for v in votes], [v[1] for v in votes]
    ref, deff = two_way_reference(votes, T975_TABLE[15])
    images_only, images_deff = two_way_reference(votes, T975_TABLE[15], over_raters=False)
    assert deff > 1.5 * images_deff
    _, (share, lo, hi) = taste_stats.clustered_intervals(scores, images, raters)
    assert share == sum(v[2] for v in votes) / len(votes)
    assert (lo, hi) == pytest.approx(ref, abs=1e-6)
    assert hi - lo > (images_only[1] - images_only[0]) + 0.05
    row = taste_stats.round_taste(1, [int(s) for s in scores], images, raters)
    assert (row.raters, row.over_raters, row.share_low, row.share_high) == (16, True, lo, hi)

    fourteen = [v for v in votes if v[1] < 14]
    scores = [8.0 if y else 3.0 for *_, y in fourteen]
    images, raters = [v[0] for v in fourteen], [v[1] for v in fourteen]
    ref, _ = two_way_reference(fourteen, T975_TABLE[15], over_raters=False)
    _, (_, lo, hi) = taste_stats.clustered_intervals(scores, images, raters)
    assert (lo, hi) == pytest.approx(ref, abs=1e-6)
    assert (lo, hi) == taste_stats.clustered_intervals(scores, images)[1][1:]
    row = taste_stats.round_taste(1, [int(s) for s in scores], images, raters)
    assert (row.raters, row.over_raters) == (14, False)


def _rounds_with_raters(images: int, raters: int, trials: int, rater_sd: float = 1.0):
    """``trials`` seeded rounds (seed 0) of ``images`` images, 3 ratings each by raters (3 i + j) mod ``raters``
    (each rater rates 3 images / raters of them): score = image effect ~ N(5, 1.5^2) + the rater's effect
    ~ N(0, rater_sd^2), fresh raters every round (a population of raters), + noise N(0, 1), whole scores 1-10.
    Yields (scores, images, raters, the raters' effects)."""
    rng = np.random.default_rng(0)
    who = np.array([[(3 * i + j) % raters for j in range(3)] for i in range(images)])
    for _ in range(trials):
        effect = rater_sd * rng.standard_normal(raters)
        raw = (5.0 + 1.5 * rng.standard_normal(images))[:, None] + effect[who] + rng.standard_normal((images, 3))
        yield np.clip(np.rint(raw), 1, 10).ravel(), np.repeat(np.arange(images), 3), who.ravel(), effect


def _liked_probability(centre: float, sd: float) -> float:
    """P(N(centre, sd^2) >= 5.5): a whole score >= 6, in closed form."""
    return 0.5 * math.erfc((5.5 - centre) / sd / math.sqrt(2))


def _coverage(images: int, raters: int, trials: int, rater_sd: float, which: int, truth) -> dict[str, float]:
    """The share of ``_rounds_with_raters`` rounds whose interval ``which`` of ``clustered_intervals`` (0 the mean's,
    1 the liked share's) holds the truth, ``truth(centre, sd)`` the figure's true value (closed form) for ratings
    N(centre, sd^2) made whole scores 1-10: with the raters ("with raters") and by image alone ("images only") the
    population's, ``truth(5, sqrt(1.5^2 + rater_sd^2 + 1))``, and these raters' own ("these raters", with raters),
    the mean over the ratings of ``truth(5 + b_rater, sqrt(1.5^2 + 1))``; and the mean widths."""
    true = truth(5.0, math.sqrt(1.5**2 + rater_sd**2 + 1))
    hits = {"with raters": 0, "images only": 0, "these raters": 0, "width with raters": 0.0, "width images only": 0.0}
    for scores, ims, who, effect in _rounds_with_raters(images, raters, trials, rater_sd):
        _, lo, hi = taste_stats.clustered_intervals(scores.tolist(), ims.tolist(), who.tolist())[which]
        _, olo, ohi = taste_stats.clustered_intervals(scores.tolist(), ims.tolist())[which]
        these = float(np.array([truth(5.0 + b, math.sqrt(1.5**2 + 1)) for b in effect])[who].mean())
        hits["with raters"] += lo <= true <= hi
        hits["images only"] += olo <= true <= ohi
        hits["these raters"] += lo <= these <= hi
        hits["width with raters"] += hi - lo
        hits["width images only"] += ohi - olo
    return {k: round(v / trials, 4) for k, v in hits.items()}


def liked_share_coverage(images: int, raters: int, trials: int = 1000, rater_sd: float = 1.0) -> dict[str, float]:
    """The share of ``_rounds_with_raters`` rounds whose liked share's interval holds the truth (closed form), with
    the raters (``clustered_intervals(..., raters)``: "with raters") and by image alone ("images only"): the
    population's share P(N(5, 1.5^2 + rater_sd^2 + 1) >= 5.5), and these raters' own ("these raters", with raters),
    the mean over the ratings of P(N(5 + b_rater, 1.5^2 + 1) >= 5.5); and the mean widths."""
    return _coverage(images, raters, trials, rater_sd, 1, _liked_probability)


def test_the_liked_share_covers_over_raters_from_fifteen_and_about_these_raters_below():
    """Fifteenth review, measured against the generator's known truth (closed form). 48 images x 3 ratings by 16
    raters (9 each), rater effect sd 1: the share's interval over images alone held the population's share
    (P(N(5, 1.5^2 + 1 + 1) >= 5.5) = 0.409) in 0.859 of 1000 rounds; two-way (images and raters) in 0.961.
    4 raters: the interval is about these raters, so the truth is these raters' own share over the population of
    images: held in 0.959 of rounds (the population's share in 0.721: not what it claims)."""
    got = liked_share_coverage(48, 16)
    # 95% less two Monte-Carlo standard errors (0.0069) is 0.936; images alone fall well short (0.859)
    assert 0.936 <= got["with raters"] <= 0.985, got
    assert got["images only"] < 0.9, got
    got = liked_share_coverage(32, 4)
    assert 0.936 <= got["these raters"] <= 0.985, got


# sixteenth review: the dashboard's mean rating clustered by rater too, with the liked share's two-way variance

def brute_force_mean_interval(scores, images, raters, t: float, *, over_raters: bool = True):
    """((low, high), V, s^2 / N) of the mean of ``scores`` by Cameron, Gelbach and Miller's two-way variance written
    as double sums over pairs of ratings with numpy: V_g = G / (G - 1) * e' S_g e / N^2, S_g[i, j] = 1 where ratings
    i and j share a cluster of grouping g (G clusters), e the residuals from the mean; V = V_image + V_rater -
    V_(image, rater) (with ``over_raters`` False, V_image alone), floored at the plain s^2 / N; mean +- t sqrt(V)."""
    y = np.asarray(scores, dtype=float)
    n, e = len(y), y - y.mean()

    def v(keys):
        keys = list(keys)
        same = np.array([[a == b for b in keys] for a in keys], dtype=float)
        g = len(set(keys))
        return g / (g - 1) * float(e @ same @ e) / n**2

    variance = v(images) + ((v(raters) - v(zip(images, raters, strict=True))) if over_raters else 0.0)
    plain = float(e @ e) / (n - 1) / n
    half = t * math.sqrt(max(variance, plain))
    return (y.mean() - half, y.mean() + half), variance, plain


def _rated_by_offset_raters(raters: int, images: int = 16):
    """(scores, images, raters): ``images`` images, each rated by raters (3 i + j) mod ``raters``, j = 0-2; the
    score is the image's 4-7 (i mod 4) plus its rater's offset: +2 for raters 0-5, -2 for 6-11, 0 for the others."""
    rows = [(i, (3 * i + j) % raters) for i in range(images) for j in range(3)]
    offset = [2 if r < 6 else -2 if r < 12 else 0 for r in range(raters)]
    return [float(4 + i % 4 + offset[r]) for i, r in rows], [i for i, _ in rows], [r for _, r in rows]


def test_the_mean_rating_from_fifteen_raters_is_two_way_against_a_brute_force_sandwich():
    """16 raters on 16 images, raters scoring 2 above or below each other: the mean's band is the two-way one (the
    brute-force double sums above) at t with min(16, 16) - 1 = 15 df (printed tables), clearly wider than over images
    alone, which is what it was before the sixteenth review. With 14 raters it is about these raters: images alone,
    at t with 15 df, as without raters. With exactly 15 raters it is two-way, at t with min(16, 15) - 1 = 14 df; with
    32 images by 16 raters at t with min(32, 16) - 1 = 15 df (not 31, the images'). Where the two-way variance is
    below zero, it is the plain s^2 / N."""
    scores, images, raters = _rated_by_offset_raters(16)
    ref, variance, plain = brute_force_mean_interval(scores, images, raters, T975_TABLE[15])
    images_only, images_variance, _ = brute_force_mean_interval(scores, images, raters, T975_TABLE[15],
                                                                over_raters=False)
    assert variance > 1.4 * max(images_variance, plain)
    (mean, lo, hi), _ = taste_stats.clustered_intervals(scores, images, raters)
    assert mean == pytest.approx(np.mean(scores), abs=1e-12)
    assert (lo, hi) == pytest.approx(ref, abs=1e-6)
    assert hi - lo > (images_only[1] - images_only[0]) + 0.2
    row = taste_stats.round_taste(1, [int(s) for s in scores], images, raters)
    assert (row.raters, row.over_raters) == (16, True) and (row.mean_low, row.mean_high) == pytest.approx(ref, abs=1e-6)
    legend = taste_stats.figure([row]).axes[0].get_legend_handles_labels()[1]
    assert "95% CI (t; over raters like these 16)" in legend

    scores, images, raters = _rated_by_offset_raters(14)
    ref, _, _ = brute_force_mean_interval(scores, images, raters, T975_TABLE[15], over_raters=False)
    (_, lo, hi), _ = taste_stats.clustered_intervals(scores, images, raters)
    assert (lo, hi) == pytest.approx(ref, abs=1e-6)
    assert (lo, hi) == taste_stats.clustered_intervals(scores, images)[0][1:]

    # the gate exactly: 15 raters (RATERS_TO_GENERALISE) on 16 images are two-way, at t with 14 df
    scores, images, raters = _rated_by_offset_raters(15)
    ref, _, _ = brute_force_mean_interval(scores, images, raters, T975_TABLE[14])
    images_only, _, _ = brute_force_mean_interval(scores, images, raters, T975_TABLE[15], over_raters=False)
    (_, lo, hi), _ = taste_stats.clustered_intervals(scores, images, raters)
    assert (lo, hi) == pytest.approx(ref, abs=1e-6)
    assert hi - lo > (images_only[1] - images_only[0]) + 0.2

    # more images than raters: the df are the raters' count - 1 (min(32, 16) - 1 = 15), not the images' (31)
    scores, images, raters = _rated_by_offset_raters(16, images=32)
    ref, _, _ = brute_force_mean_interval(scores, images, raters, T975_TABLE[15])
    (_, lo, hi), _ = taste_stats.clustered_intervals(scores, images, raters)
    assert (lo, hi) == pytest.approx(ref, abs=1e-6)

    # only the fallback: the two-way variance below zero is floored at the plain s^2 / N, so this case cannot tell
    # the two-way band from the images' (floored too; both at t with 3 df)
    scores = [7.0 if y == 1 else 3.0 for *_, y in BALANCED]  # 15 raters on 4 images, each liking half
    images, raters = [p for p, *_ in BALANCED], [r for _, r, _ in BALANCED]
    ref, variance, plain = brute_force_mean_interval(scores, images, raters, T975_TABLE[3])
    assert variance < 0
    (_, lo, hi), _ = taste_stats.clustered_intervals(scores, images, raters)
    assert (lo, hi) == pytest.approx((5 - T975_TABLE[3] * math.sqrt(plain), 5 + T975_TABLE[3] * math.sqrt(plain)),
                                     abs=1e-6)
    assert (lo, hi) == pytest.approx(taste_stats.clustered_intervals(scores, images)[0][1:], abs=1e-12)


def _mean_score(centre: float, sd: float) -> float:
    """E[clip(round(X), 1, 10)] for X ~ N(centre, sd^2), in closed form: 1 + sum_{s=2..10} P(X >= s - 1/2)."""
    return 1.0 + sum(0.5 * math.erfc((s - 0.5 - centre) / sd / math.sqrt(2)) for s in range(2, 11))


def mean_rating_coverage(images: int, raters: int, trials: int = 2000, rater_sd: float = 1.0) -> dict[str, float]:
    """The share of ``_rounds_with_raters`` rounds whose mean rating's band holds the true mean (closed form,
    ``_mean_score``), with the raters ("with raters") and by image alone ("images only", the band before the
    sixteenth review): the population's mean E[clip(round(N(5, 1.5^2 + rater_sd^2 + 1)), 1, 10)], and these
    raters' own ("these raters", with raters), the mean over the ratings of E[clip(round(N(5 + b_rater, 1.5^2 + 1)),
    1, 10)]; and the mean widths."""
    return _coverage(images, raters, trials, rater_sd, 0, _mean_score)


def test_the_mean_rating_covers_over_raters_from_fifteen_raters():
    """Sixteenth review, measured against the generator's known truth (closed form). 48 images x 3 ratings by 16
    raters (9 each), rater offsets N(0, 1): the mean's band over images alone held the population's mean
    (E[clip(round(N(5, 1.5^2 + 1 + 1)), 1, 10)]) in 0.840 of 2000 rounds; two-way (images and raters, as the liked
    share's) in 0.9495, 46% wider. 4 raters: the band is about these raters (by image alone), so the truth is these
    raters' own mean over the population of images: held in 0.949 of rounds."""
    got = mean_rating_coverage(48, 16)
    # 95% less two Monte-Carlo standard errors (0.0049) is 0.940; images alone fall well short (0.840)
    assert 0.940 <= got["with raters"] <= 0.985, got
    assert got["images only"] < 0.9, got
    got = mean_rating_coverage(32, 4)
    assert 0.940 <= got["these raters"] <= 0.985, got
