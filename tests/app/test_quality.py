"""Rater quality (app.quality) against hand computation.

The reference alpha here is written independently of the implementation: plain loops over units and value
pairs for the coincidence matrix, the ordinal metric summed category by category, no numpy."""

from __future__ import annotations

import math
import random

import pytest

from app import quality

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", the reliability data with missing values:
# four observers, twelve units, values 1-5; None is a missing value. Unit 12 has one value and does not count.
K2011 = {
    "A": [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    "B": [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    "C": [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    "D": [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
}


def triples(matrix):
    return [(u, rater, v) for rater, row in matrix.items() for u, v in enumerate(row) if v is not None]


def reference_alpha(rows, metric):
    """Krippendorff's alpha by the book, with plain loops (independent of app.quality)."""
    units = {}
    for item, _rater, score in rows:
        units.setdefault(item, []).append(score)
    values = sorted({v for vs in units.values() if len(vs) >= 2 for v in vs})
    o = {(c, k): 0.0 for c in values for k in values}
    for vs in units.values():
        m = len(vs)
        if m < 2:
            continue
        for i in range(m):
            for j in range(m):
                if i != j:
                    o[(vs[i], vs[j])] += 1.0 / (m - 1)
    n_c = {c: sum(o[(c, k)] for k in values) for c in values}
    n = sum(n_c.values())

    def delta(c, k):
        if metric == "nominal":
            return 0.0 if c == k else 1.0
        if metric == "interval":
            return float(c - k) ** 2
        lo, hi = min(c, k), max(c, k)
        total = 0.0
        for g in values:
            if lo <= g <= hi:
                total += n_c[g]
        return (total - (n_c[c] + n_c[k]) / 2.0) ** 2

    observed = sum(o[(c, k)] * delta(c, k) for c in values for k in values)
    expected = sum(n_c[c] * n_c[k] * delta(c, k) for c in values for k in values)
    return 1.0 - (n - 1) * observed / expected


def test_coincidence_matrix_of_the_published_example_matches_a_loop_count():
    values, o = quality.coincidences(triples(K2011))
    assert values == [1, 2, 3, 4, 5]
    # Krippendorff 2011, the coincidence table: n_c = 9, 13, 10, 5, 3 and n = 40 pairable values
    assert [round(x, 6) for x in o.sum(axis=1)] == [9, 13, 10, 5, 3]
    assert o[0, 0] == pytest.approx(7.0)
    assert o[0, 1] == pytest.approx(4 / 3)
    assert o[1, 1] == pytest.approx(10.0)
    assert o[2, 2] == pytest.approx(8.0)
    assert o[4, 4] == pytest.approx(3.0)
    assert (o == o.T).all()


@pytest.mark.parametrize("metric,published", [("nominal", 0.743), ("interval", 0.849), ("ordinal", None)])
def test_alpha_of_the_published_example(metric, published):
    rows = triples(K2011)
    got = quality.krippendorff_alpha(rows, metric)
    assert got.alpha == pytest.approx(reference_alpha(rows, metric), abs=1e-12)
    if published is not None:
        assert round(got.alpha, 3) == published
    assert got.units == 11 and got.values == 40


def test_alpha_on_a_small_example_computed_by_hand():
    # items u1..u4, two raters each: (1,1), (1,2), (2,3), (3,3)
    rows = [("u1", "a", 1), ("u1", "b", 1), ("u2", "a", 1), ("u2", "b", 2),
            ("u3", "a", 2), ("u3", "b", 3), ("u4", "a", 3), ("u4", "b", 3)]
    # coincidences o = [[2,1,0],[1,0,1],[0,1,2]]; n_1 = 3, n_2 = 2, n_3 = 3, n = 8
    values, o = quality.coincidences(rows)
    assert values == [1, 2, 3]
    assert o.tolist() == [[2, 1, 0], [1, 0, 1], [0, 1, 2]]
    # ordinal: d12 = ((3+2) - (3+2)/2)^2 = 6.25, d23 = 6.25, d13 = (3+2+3 - (3+3)/2)^2 = 25
    # sum o d = 4 * 6.25 = 25; sum n_c n_k d = 2 * (3*2*6.25 + 2*3*6.25 + 3*3*25) = 600
    # alpha = 1 - (8 - 1) * 25 / 600 = 1 - 175/600
    assert quality.krippendorff_alpha(rows, "ordinal").alpha == pytest.approx(1 - 175 / 600)
    # interval: d12 = d23 = 1, d13 = 4: sum o d = 4; sum n n d = 2 * (6 + 6 + 36) = 96; alpha = 1 - 7*4/96
    assert quality.krippendorff_alpha(rows, "interval").alpha == pytest.approx(1 - 28 / 96)
    # nominal: sum o d = 4; sum n n d = 2 * (6 + 6 + 9) = 42; alpha = 1 - 28/42
    assert quality.krippendorff_alpha(rows, "nominal").alpha == pytest.approx(1 / 3)


def test_ordinal_and_interval_differ_where_categories_are_unevenly_used():
    # most values at 1 and 10: the ordinal metric weighs by how many values lie between, the interval one by size
    rng = random.Random(3)
    rows = []
    for item in range(30):
        base = rng.choice([1, 1, 1, 2, 9, 10])
        for rater in "abc":
            rows.append((item, rater, min(10, max(1, base + rng.choice([-1, 0, 0, 1])))))
    for metric in ("ordinal", "interval"):
        assert quality.krippendorff_alpha(rows, metric).alpha == pytest.approx(reference_alpha(rows, metric), abs=1e-12)
    assert quality.krippendorff_alpha(rows, "ordinal").alpha != pytest.approx(quality.krippendorff_alpha(rows, "interval").alpha)


def test_perfect_agreement_is_one_and_random_scores_near_zero():
    perfect = [(i, r, 1 + i % 10) for i in range(20) for r in ("a", "b", "c")]
    for metric in quality.METRICS:
        assert quality.krippendorff_alpha(perfect, metric).alpha == pytest.approx(1.0)
    rng = random.Random(0)
    noise = [(i, r, rng.randint(1, 10)) for i in range(400) for r in ("a", "b", "c")]
    for metric in quality.METRICS:
        assert abs(quality.krippendorff_alpha(noise, metric).alpha) < 0.05


def test_alpha_is_undefined_without_pairs_or_without_variation():
    single = quality.krippendorff_alpha([(1, "a", 3), (2, "a", 5), (3, "b", 4)])
    assert single.alpha is None and single.units == 0 and "two or more raters" in single.reason
    same = quality.krippendorff_alpha([(1, "a", 3), (1, "b", 3), (2, "a", 3), (2, "b", 3)])
    assert same.alpha is None and "same value" in same.reason


def test_alpha_by_group_is_alpha_of_each_group():
    rows = [("r0", *t) for t in triples(K2011)] + [("r1", i, r, 5) for i in range(3) for r in "ab"] + [("r1", 9, "a", 1), ("r1", 9, "b", 1)]
    got = quality.alpha_by_group(rows, "interval")
    assert got["r0"].alpha == pytest.approx(reference_alpha(triples(K2011), "interval"))
    assert got["r1"].alpha == pytest.approx(1.0)


def test_bad_input_is_one_clear_sentence():
    with pytest.raises(ValueError, match="rated item 1 twice"):
        quality.krippendorff_alpha([(1, "a", 3), (1, "a", 4)])
    with pytest.raises(ValueError, match="finite number"):
        quality.krippendorff_alpha([(1, "a", float("nan"))])
    with pytest.raises(ValueError, match="unknown metric"):
        quality.krippendorff_alpha([(1, "a", 3)], "ratio")
    with pytest.raises(ValueError, match="triple"):
        quality.krippendorff_alpha([(1, 3)])


def test_self_consistency_from_repeated_items():
    got = quality.self_consistency([("a", 5, 5), ("a", 5, 7), ("a", 2, 3), ("a", 9, 9), ("b", 1, 10)])
    assert got["a"].n == 4
    assert got["a"].mean_abs_diff == pytest.approx((0 + 2 + 1 + 0) / 4)
    assert got["a"].exact == pytest.approx(0.5)
    assert got["a"].within_one == pytest.approx(0.75)
    assert got["b"].mean_abs_diff == 9 and got["b"].exact == 0


def test_gold_errors_per_rater():
    rows = [("g1", "a", 7), ("g1", "b", 3), ("g2", "a", 2), ("g2", "b", 2), ("x", "a", 10)]
    got = quality.gold_errors(rows, {"g1": 5, "g2": 3})
    assert got["a"].n == 2 and got["a"].mean_abs_error == pytest.approx((2 + 1) / 2) and got["a"].bias == pytest.approx(0.5)
    assert got["b"].mean_abs_error == pytest.approx((2 + 1) / 2) and got["b"].bias == pytest.approx(-1.5)


def test_rater_stats():
    rows = [(1, "a", 3), (2, "a", 5), (3, "a", 7), (1, "b", 2), (2, "b", 6), (3, "b", 10), (4, "b", 1)]
    got = quality.rater_stats(rows)
    a, b = got["a"], got["b"]
    assert (a.n, a.mean, a.low, a.high, a.range_used, a.distinct, a.shared) == (3, 5.0, 3, 7, 4, 3, 3)
    assert a.std == pytest.approx((8 / 3) ** 0.5)
    assert a.mad_vs_others == pytest.approx((1 + 1 + 3) / 3)
    assert a.corr_vs_others == pytest.approx(1.0)
    assert b.n == 4 and b.shared == 3 and b.range_used == 9
    lonely = quality.rater_stats([(1, "c", 4)])["c"]
    assert lonely.mad_vs_others is None and lonely.corr_vs_others is None


def test_standardize_makes_a_narrow_and_a_wide_rater_count_alike():
    narrow = {1: 4, 2: 5, 3: 6}  # uses 4-6
    wide = {1: 1, 2: 5.5, 3: 10}  # uses 1-10, same order and spacing
    rows = [(i, "narrow", s) for i, s in narrow.items()] + [(i, "wide", s) for i, s in wide.items()]
    z = quality.standardize(rows)
    for i in narrow:
        assert z[(i, "narrow")] == pytest.approx(z[(i, "wide")])
    pooled = list(narrow.values()) + list(wide.values())
    mu = sum(pooled) / 6
    sd = (sum((v - mu) ** 2 for v in pooled) / 6) ** 0.5
    assert z[(3, "narrow")] == pytest.approx(mu + 1.5 ** 0.5 * sd)  # z = (6 - 5) / sqrt(2/3)
    raw = quality.item_means(rows)
    std = quality.item_means(rows, standardized=True)
    assert raw[3] == pytest.approx(8.0) and std[3] == pytest.approx(mu + 1.5 ** 0.5 * sd)
    # a rater who always gives the same score expresses no preference: the pooled mean
    flat = quality.standardize([(1, "f", 7), (2, "f", 7), (1, "g", 1), (2, "g", 9)])
    assert flat[(1, "f")] == pytest.approx(6.0) and flat[(2, "f")] == pytest.approx(6.0)


def test_standardize_changes_which_item_wins():
    # rater w scores everything high, rater n is harsh: n's middle score (item 4) is below everything raw,
    # but standardised it is a middle score, above item 3 (the bottom of both raters)
    rows = [(1, "w", 10), (2, "w", 8), (3, "w", 9), (2, "n", 3), (3, "n", 1), (4, "n", 2)]
    raw, std = quality.item_means(rows), quality.item_means(rows, standardized=True)
    assert raw[4] < raw[3] < raw[2] < raw[1]
    assert std[3] < std[4] < std[1]
    assert std[4] == pytest.approx(std[2])
    assert std[4] == pytest.approx(sum(s for *_, s in rows) / 6)


def reference_rater_stats(rows):
    """Per rater (n, mean, population sd, low, high, distinct, shared, mad vs others, corr vs others), by plain loops."""
    by_item = {}
    for item, rater, score in rows:
        by_item.setdefault(item, {})[rater] = score
    own, pairs = {}, {}
    for item, rater, score in rows:
        own.setdefault(rater, []).append(score)
        others = [v for r, v in by_item[item].items() if r != rater]
        if others:
            pairs.setdefault(rater, []).append((score, sum(others) / len(others)))
    out = {}
    for rater, scores in own.items():
        n = len(scores)
        mean = sum(scores) / n
        sd = (sum((s - mean) ** 2 for s in scores) / n) ** 0.5
        p = pairs.get(rater, [])
        mad = sum(abs(a - b) for a, b in p) / len(p) if p else None
        corr = None
        xs, ys = [a for a, _ in p], [b for _, b in p]
        if len(p) >= 3 and len(set(xs)) > 1 and len(set(ys)) > 1:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            cov = sum((a - mx) * (b - my) for a, b in p)
            corr = cov / (sum((a - mx) ** 2 for a in xs) * sum((b - my) ** 2 for b in ys)) ** 0.5
        out[rater] = (n, mean, sd, min(scores), max(scores), len(set(scores)), len(p), mad, corr)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_the_array_implementation_matches_plain_loops_on_random_ratings(seed):
    """Random experiments (1-7 raters an item, integer or fractional scores, items in any order, string and int
    ids): alpha, per-round alpha, rater statistics and gold errors against the loops above."""
    rng = random.Random(seed)
    raters = [f"r{i}" for i in range(rng.randint(2, 9))]
    rows, grouped = [], []
    for item in rng.sample(range(1000), rng.randint(5, 120)):
        for rater in rng.sample(raters, rng.randint(1, min(7, len(raters)))):
            score = rng.randint(1, 10) if seed % 2 == 0 else rng.choice([1, 2.5, 3, 7.25, 10])
            rows.append((item if seed % 3 else str(item), rater, score))
    rng.shuffle(rows)
    for row in rows:
        grouped.append((hash(row[0]) % 3, *row))
    for metric in quality.METRICS:
        got = quality.krippendorff_alpha(rows, metric)
        assert got.alpha == pytest.approx(reference_alpha(rows, metric), rel=1e-9, abs=1e-12)
        for g, a in quality.alpha_by_group(grouped, metric).items():
            sub = [r[1:] for r in grouped if r[0] == g]
            pairable = any(sum(1 for s in sub if s[0] == it) >= 2 for it, _, _ in sub)
            assert (a.alpha is None) == (not pairable) or a.reason.startswith("every rating")
            if a.alpha is not None:
                assert a.alpha == pytest.approx(reference_alpha(sub, metric), rel=1e-9, abs=1e-12)
    want = reference_rater_stats(rows)
    got = quality.rater_stats(rows)
    assert set(got) == set(want)
    for rater, w in want.items():
        g = got[rater]
        assert (g.n, g.low, g.high, g.distinct, g.shared) == (w[0], w[3], w[4], w[5], w[6])
        assert g.mean == pytest.approx(w[1]) and g.std == pytest.approx(w[2])
        assert (g.mad_vs_others is None) == (w[7] is None) and (g.corr_vs_others is None) == (w[8] is None)
        if w[7] is not None:
            assert g.mad_vs_others == pytest.approx(w[7])
        if w[8] is not None:
            assert g.corr_vs_others == pytest.approx(w[8], abs=1e-9)
    gold = {rows[0][0]: 5, rows[-1][0]: 2}
    errors = quality.gold_errors(rows, gold)
    for rater in raters:
        e = [s - gold[i] for i, r, s in rows if r == rater and i in gold]
        if not e:
            assert rater not in errors
        else:
            assert errors[rater].n == len(e) and errors[rater].bias == pytest.approx(sum(e) / len(e))
            assert errors[rater].mean_abs_error == pytest.approx(sum(abs(x) for x in e) / len(e))


def test_checks_hold_for_arrays_too():
    """The array path refuses what the per-value check refuses: a bool among numbers, a NaN, an overflowing
    integer; a duplicate deep in many rows names the first one repeated."""
    many = [(i, "a", 5) for i in range(500)]
    with pytest.raises(ValueError, match="finite number"):
        quality.rater_stats([*many, (900, "a", True)])
    with pytest.raises(ValueError, match="finite number"):
        quality.rater_stats([*many, (900, "a", float("inf"))])
    with pytest.raises(ValueError, match="finite number"):
        quality.rater_stats([*many, (900, "a", 10 ** 400)])
    with pytest.raises(ValueError, match="rater 'a' rated item 7 twice"):
        quality.krippendorff_alpha([*many, (9, "b", 4), (7, "a", 3), (8, "a", 1), (8, "a", 2)])


@pytest.mark.parametrize("value", [0.1, 0.3, 1 / 3, 5.7, 9.95])
def test_standardize_puts_a_rater_whose_scores_are_all_the_same_at_the_pooled_mean(value):
    """The docstring's rule for a rater with no spread (z = 0, the pooled mean) was read from a float std: the mean
    of 3 x 0.1 is not 0.1, the std came out 1.4e-17, and each of their scores became -0.82 where the pooled mean is
    2.55 (tenth review). The reference: exact rationals, whose variance of the constant rater is 0."""
    from fractions import Fraction

    ratings = [(i, "flat", value) for i in range(3)] + [(0, "wide", 1.0), (1, "wide", 5.0), (2, "wide", 9.0)]
    exact = [Fraction(float(s)) for _, _, s in ratings]
    flat = exact[:3]
    assert sum((x - sum(flat) / 3) ** 2 for x in flat) == 0
    pooled_mean = float(sum(exact) / len(exact))
    out = quality.standardize(ratings)
    for i in range(3):
        assert out[(i, "flat")] == pytest.approx(pooled_mean, abs=1e-12)
    # the rater with a spread is unchanged: pooled mean + z * pooled sd, z = (score - 5) / sd(1, 5, 9)
    pooled_sd = math.sqrt(float(sum((x - sum(exact) / 6) ** 2 for x in exact) / 6))
    for i, score in enumerate((1.0, 5.0, 9.0)):
        assert out[(i, "wide")] == pytest.approx(pooled_mean + (score - 5.0) / math.sqrt(32 / 3) * pooled_sd, abs=1e-12)
