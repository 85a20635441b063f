"""spread selection at scale (fourth review): half_ranks from one sort and a vectorised pick, the same answers as the
O(m^2) definitions they replace (written here from their definitions, as independent references)."""

from __future__ import annotations

import numpy as np
import torch

from app import selection


def brute_half_ranks(x: np.ndarray) -> np.ndarray:
    """Twice the average rank (0 = lowest) among x, from the definition: each pair compared."""
    out = []
    for v in x:
        below = sum(1 for w in x if w < v)
        equal = sum(1 for w in x if w == v)
        out.append(2 * below + equal - 1)  # average rank below + (equal - 1) / 2, doubled
    return np.array(out)


def brute_spread_order(score, emb, chosen, n_pick):
    """spread's picks by the module docstring: each the remaining candidate with the largest sum of ranks (score,
    distance to the nearest chosen), ties to the higher score, then the lower index."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    s = np.asarray(score, dtype=np.float64)
    chosen = list(chosen)
    picks = []
    left = [i for i in range(len(s)) if i not in chosen]
    for _ in range(n_pick):
        # distances row-wise, as the code measures them (one vector's norm alone may differ in the last bit, and the
        # tied embeddings here make such a bit decide a tie): what is checked is the ranks, ties and picks
        nearest = np.full(len(left), np.inf)
        for c in chosen:
            nearest = np.minimum(nearest, np.linalg.norm(unit[left] - unit[c], axis=1))
        total = brute_half_ranks(s[left]) + brute_half_ranks(nearest)
        best = min(range(len(left)), key=lambda j: (-total[j], -s[left[j]], left[j]))
        pick = left.pop(best)
        picks.append(pick)
        chosen.append(pick)
    return picks


def test_half_ranks_equal_pairwise_definition_with_ties_and_inf():
    rng = np.random.default_rng(5)
    for trial in range(200):
        m = int(rng.integers(1, 40))
        x = rng.integers(-3, 4, size=m).astype(np.float64)  # many ties
        x[rng.random(m) < 0.2] = np.inf
        x[rng.random(m) < 0.1] = -np.inf
        if trial % 3 == 0:
            x = rng.normal(size=m)
        got = selection.half_ranks(x)
        np.testing.assert_array_equal(got, brute_half_ranks(x))
        assert np.issubdtype(got.dtype, np.integer)


def test_spread_order_equals_definition_on_ties():
    rng = np.random.default_rng(7)
    for _ in range(30):
        m = int(rng.integers(3, 25))
        score = rng.integers(0, 3, size=m).astype(np.float64).tolist()  # tied scores
        emb = rng.integers(-1, 2, size=(m, 4)).astype(np.float64)  # tied (even equal) embeddings
        emb[0] = 0.0  # a zero vector too
        k = int(rng.integers(0, 3))
        chosen = [int(i) for i in rng.choice(m, size=k, replace=False)]
        n_pick = int(rng.integers(1, m - k + 1))
        assert selection.spread_order(score, emb, chosen, n_pick) == brute_spread_order(score, emb, chosen, n_pick)


def test_choose_spread_seeded_case_unchanged():
    """A seeded case's choices, as the code before the change made them (recorded from it): shown set and ranks."""
    rng = np.random.default_rng(0)
    preds = torch.from_numpy(rng.normal(size=(40, 4)))
    emb = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))
    out = selection.choose("spread", 20, 40, seed=3, preds=preds, honest_share=0.25, emb=emb)
    ranks = [c.rank for c in out]
    shown = [c.index for c in out if c.shown]
    assert shown == SEEDED_SHOWN
    assert ranks == SEEDED_RANKS


def test_a_score_that_is_not_a_number_is_refused_in_one_sentence():
    preds = torch.zeros(6, 2, dtype=torch.float64)
    preds[2] = float("nan")
    for mode in ("spread", "optimistic", "uncertainty"):
        try:
            selection.choose(mode, 3, 6, seed=0, preds=preds, emb=torch.eye(6))
        except ValueError as refused:
            assert str(refused).startswith("the reward model scored 1 of the 6 candidates as not a number")
            assert "\n" not in str(refused)
        else:
            raise AssertionError(f"{mode}: a NaN score was ranked")


def test_an_embedding_that_is_not_a_number_is_refused_in_one_sentence_not_picked_as_the_farthest():
    """A NaN in one candidate's embedding made its distances NaN, ranked above every number: it was shown early."""
    preds = torch.tensor([[5.0], [3.0], [3.0], [3.0]], dtype=torch.float64)
    emb = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [float("nan"), 0.0]])
    for bad in (emb, emb.nan_to_num(nan=float("inf"))):
        try:
            selection.choose("spread", 2, 4, seed=0, preds=preds, emb=bad)
        except ValueError as refused:
            assert str(refused).startswith("1 of the 4 candidates' image embeddings are not finite numbers")
            assert "\n" not in str(refused)
        else:
            raise AssertionError("a candidate with a non-finite embedding was ranked")
    finite = selection.choose("spread", 2, 4, seed=0, preds=preds, emb=emb.nan_to_num(nan=0.5))
    assert sum(c.shown for c in finite) == 2


SEEDED_SHOWN = [1, 9, 11, 13, 15, 16, 17, 18, 19, 20, 21, 22, 23, 25, 26, 28, 30, 32, 34, 37]
SEEDED_RANKS = [29, 10, 38, 40, 26, 24, 27, 36, 30, 19, 22, 9, 21, 17, 28, 8, 12, 4, 7, 6, 5, 15, 11, 1, 37, 16, 20, 32, 18,
                23, 3, 35, 2, 25, 14, 31, 33, 13, 39, 34]


def test_half_ranks_memory_is_linear():
    """No m x m comparison matrix: ranking 4000 values peaks far below the 16 MB one boolean matrix would take."""
    import tracemalloc

    x = np.random.default_rng(1).normal(size=4000)
    tracemalloc.start()
    try:
        selection.half_ranks(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, peak
