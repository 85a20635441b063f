"""spread at the sd15 preset's scale (fifth review): a float32 Gram matrix only decides which candidates need their
exact distance to a new pick, within a proven bound, so the picks are those of the definition in
``selection.spread_order``'s docstring, checked here against a brute force written from it with plain loops: on
random data of several sizes and dimensions, duplicated embeddings and scores, near-duplicates (where float32
distances are noise), already-chosen images, and with the Gram matrix kept or not."""

from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest

from app import selection


def row_norm(v: np.ndarray) -> float:
    """One vector's norm as the docstring defines it: sqrt of numpy's add.reduce of the squares (what
    np.linalg.norm(..., axis=1) gives each row; np.linalg.norm of a 1-d vector uses a dot product instead)."""
    return float(np.sqrt(np.add.reduce(v * v)))


def half_rank(x: list[float], v: float) -> int:
    """Twice v's average rank (0 = lowest) among x, ties averaged: each value compared."""
    return 2 * sum(1 for w in x if w < v) + sum(1 for w in x if w == v) - 1


def brute_spread_order(score, emb, chosen, n_pick):
    """From the docstring: add one candidate at a time, the remaining one with the largest score rank plus rank of its
    distance to the nearest chosen image (ranks among the remaining, ties averaged), then the higher score, then the
    lower index; distances between unit embeddings (divided by the norm, or by 1e-12 if smaller), not rounded."""
    unit = [row / max(row_norm(row), 1e-12) for row in np.asarray(emb)]  # in emb's own dtype, as the code
    cache: dict[tuple[int, int], float] = {}

    def dist(i: int, c: int) -> float:
        if (i, c) not in cache:
            cache[(i, c)] = row_norm(unit[i] - unit[c])
        return cache[(i, c)]

    chosen = list(chosen)
    left = [i for i in range(len(score)) if i not in chosen]
    picks = []
    for _ in range(n_pick):
        nearest = {i: min((dist(i, c) for c in chosen), default=math.inf) for i in left}
        scores = [score[i] for i in left]
        dists = list(nearest.values())
        best = max(left, key=lambda i: (half_rank(scores, score[i]) + half_rank(dists, nearest[i]), score[i], -i))
        picks.append(best)
        chosen.append(best)
        left.remove(best)
    return picks


def both_ways(score, emb, chosen, n_pick):
    """The picks with the Gram matrix kept and with each row computed when needed (gram_bytes=0)."""
    kept = selection.spread_order(score, emb, chosen, n_pick)
    rows = selection.spread_order(score, emb, chosen, n_pick, gram_bytes=0)
    return kept, rows


@pytest.mark.parametrize("n, dim, seed", [(12, 3, 0), (40, 8, 1), (90, 64, 2), (150, 768, 3), (160, 16, 4)])
def test_spread_picks_equal_the_definition_on_random_data(n, dim, seed):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n, dim))
    score = rng.normal(size=n).tolist()
    for k in (0, 1, n // 4):
        chosen = [int(i) for i in rng.choice(n, size=k, replace=False)]
        n_pick = (n - k) // 2 + 1
        want = brute_spread_order(score, emb, chosen, n_pick)
        assert both_ways(score, emb, chosen, n_pick) == (want, want)


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_spread_picks_equal_the_definition_with_duplicated_embeddings_and_scores(seed):
    """Exact copies of rows (some scaled by 2 or 0.5: the same unit vector to the bit), a few scores repeated many
    times, and chosen images that have copies among the candidates (distance exactly 0)."""
    rng = np.random.default_rng(seed)
    n, dim = 120, 32
    emb = rng.normal(size=(n, dim))
    src = rng.integers(0, 30, size=60)
    emb[60:] = emb[src] * rng.choice([1.0, 2.0, 0.5], size=(60, 1))
    emb[5] = 0.0  # a zero vector: distance 1 to every unit vector, 0 to another zero vector
    emb[77] = 0.0
    score = rng.integers(0, 4, size=n).astype(np.float64)
    score[rng.random(n) < 0.2] = 0.25
    score = score.tolist()
    chosen = [int(src[0]), int(src[1]), 5, 100]
    want = brute_spread_order(score, emb, chosen, 70)
    assert both_ways(score, emb, chosen, 70) == (want, want)
    assert len(set(want)) == 70 and not set(want) & set(chosen)


@pytest.mark.parametrize("scale", [1e-3, 1e-5, 1e-7])
def test_spread_picks_equal_the_definition_among_near_duplicates(scale):
    """Clusters of embeddings this close: float32 squared distances err by about 1e-7, far more than the gaps between
    these distances, so the picks come right only if every candidate the bound cannot clear is measured exactly."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(6, 64))
    emb = np.repeat(centres, 20, axis=0) + scale * rng.normal(size=(120, 64))
    score = rng.integers(0, 3, size=120).astype(np.float64).tolist()
    for chosen in ([], [0, 21, 45]):
        want = brute_spread_order(score, emb, chosen, 60)
        assert both_ways(score, emb, chosen, 60) == (want, want)


def test_spread_picks_equal_the_definition_on_a_grid_of_exact_ties():
    """Small whole-number embeddings in 3 dimensions: many equal distances and equal scores, a zero vector."""
    rng = np.random.default_rng(12)
    for _ in range(20):
        m = int(rng.integers(4, 40))
        emb = rng.integers(-2, 3, size=(m, 3)).astype(np.float64)
        score = rng.integers(0, 3, size=m).astype(np.float64).tolist()
        k = int(rng.integers(0, 4))
        chosen = [int(i) for i in rng.choice(m, size=k, replace=False)]
        n_pick = int(rng.integers(1, m - k + 1))
        want = brute_spread_order(score, emb, chosen, n_pick)
        assert both_ways(score, emb, chosen, n_pick) == (want, want)


def test_the_float32_bound_holds_on_random_pairs():
    """What the speed rests on: a float32 squared distance above the margin's threshold for d means the exact distance
    is at least d. Checked on random and near-duplicate pairs at the threshold's edge: d the exact distance itself, so
    the float32 value must never exceed the threshold (it would skip a candidate whose distance ties its nearest)."""
    rng = np.random.default_rng(13)
    for dim in (3, 64, 768, 1024):
        rel, shift, err = selection._float32_margin(dim)
        emb = rng.normal(size=(400, dim))
        emb[200:] = emb[:200] + rng.choice([1e-2, 1e-5, 1e-8], size=(200, 1)) * rng.normal(size=(200, dim))
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        u32 = unit.astype(np.float32)
        sq = np.einsum("ij,ij->i", u32, u32, dtype=np.float64)
        gram = (u32 @ u32.T).astype(np.float64)
        exact = np.array([[row_norm(unit[i] - unit[j]) for j in range(0, 400, 7)] for i in range(400)])
        approx = sq[:, None] + (sq[None, ::7] - 2.0 * gram[:, ::7])
        assert not (approx > (exact * rel + shift) ** 2 + err).any()
        assert err < 1e-3 and shift < 1e-6  # and it is tight enough to skip almost every candidate


def test_the_gram_matrix_is_kept_only_within_gram_bytes():
    """Memory: above gram_bytes no n x n matrix is made (the float32 Gram of 2048 candidates would take 16 MiB)."""
    rng = np.random.default_rng(14)
    emb = rng.normal(size=(2048, 16))
    score = rng.normal(size=2048).tolist()
    peaks, picks = {}, {}
    for limit in (selection.GRAM_BYTES, 2048 * 2048 * 4 - 1):
        tracemalloc.start()
        try:
            picks[limit] = selection.spread_order(score, emb, [3, 9], 3, gram_bytes=limit)
            _, peaks[limit] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert picks[selection.GRAM_BYTES] == picks[2048 * 2048 * 4 - 1]
    assert peaks[selection.GRAM_BYTES] >= 2048 * 2048 * 4
    assert peaks[2048 * 2048 * 4 - 1] < 2_000_000, peaks
    assert selection.GRAM_BYTES == 16384 * 16384 * 4  # the sd15 preset's largest round keeps it: 1 GiB


def test_half_ranks_from_runs_equal_the_pairwise_definition_with_nan_and_signed_zero():
    """half_ranks now reads runs of equal values off one sort: checked pair by pair, NaN above every number and tied
    with NaN (numpy's sort order: a damaged embedding's distance), -0.0 equal to 0.0, inf, and empty input."""
    def order_key(v: float) -> tuple[int, float]:
        return (1, 0.0) if math.isnan(v) else (0, v)

    rng = np.random.default_rng(15)
    for trial in range(300):
        m = int(rng.integers(0, 30))
        x = rng.integers(-2, 3, size=m).astype(np.float64)
        r = rng.random(m)
        x[r < 0.15] = np.nan
        x[(r >= 0.15) & (r < 0.25)] = np.inf
        x[(r >= 0.25) & (r < 0.35)] = -0.0
        if trial % 5 == 0:
            x = rng.normal(size=m)
        keys = [order_key(v) for v in x]
        want = [2 * sum(1 for w in keys if w < k) + sum(1 for w in keys if w == k) - 1 for k in keys]
        got = selection.half_ranks(x)
        assert got.tolist() == want and got.dtype == np.int64


def test_spread_picks_equal_the_definition_on_float32_embeddings():
    """Embeddings passed as float32 (choose passes float64): distances in float32, where the float32 bound does not
    hold, so every candidate is measured exactly, as before."""
    rng = np.random.default_rng(16)
    emb = rng.normal(size=(80, 24)).astype(np.float32)
    emb[40:50] = emb[:10]
    score = rng.integers(0, 3, size=80).astype(np.float64).tolist()
    want = brute_spread_order(score, emb, [4, 41], 40)
    assert both_ways(score, emb, [4, 41], 40) == (want, want)


def test_only_candidates_the_bound_cannot_clear_are_measured_exactly(monkeypatch):
    """The work, counted rather than timed: the exact distance (a float64 row of the embedding's width per candidate)
    was measured for every remaining candidate at every pick; now only where the float32 bound cannot show that the
    pick is no nearer than the candidate's nearest chosen image (random 768-d data: under 2% as many rows)."""
    rng = np.random.default_rng(17)
    n, k, n_pick = 1024, 128, 384
    emb = rng.normal(size=(n, 768))
    score = rng.normal(size=n).tolist()
    chosen = [int(i) for i in rng.choice(n, size=k, replace=False)]
    want = selection.spread_order(score, emb, chosen, n_pick)
    rows = []
    norm = np.linalg.norm

    def counting(x, *args, **kwargs):
        rows.append(np.shape(x)[0])
        return norm(x, *args, **kwargs)

    monkeypatch.setattr(np.linalg, "norm", counting)
    assert selection.spread_order(score, emb, chosen, n_pick) == want
    every_remaining_each_time = k * n + sum(n - k - j for j in range(n_pick))
    assert sum(rows) < 0.05 * every_remaining_each_time, (sum(rows), every_remaining_each_time)


def test_exact_distances_measured_in_small_blocks_give_the_same_picks(monkeypatch):
    """The exact distances are measured EXACT_ROWS rows at a time (bounded temporaries); blocks of 5 rows here."""
    monkeypatch.setattr(selection, "EXACT_ROWS", 5)
    rng = np.random.default_rng(18)
    emb = rng.normal(size=(70, 12))
    emb[35:] = emb[:35] * 2.0
    score = rng.integers(0, 3, size=70).astype(np.float64).tolist()
    want = brute_spread_order(score, emb, [0, 50], 40)
    assert both_ways(score, emb, [0, 50], 40) == (want, want)
