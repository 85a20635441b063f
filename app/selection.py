"""Which images a round asks about (issue 12, item 3): more candidates than the round shows, and the ones that
teach the most offered.

For round k >= 1 the worker generates ``candidate_factor x budget`` candidates with round k's model, scores them
with the reward ensemble that round k's model was trained against (``<data>/rewards/exp<id>/round_<k>``) and
shows ``budget`` of them (``app.experiment_options``):

- ``random``: a seeded permutation of the candidates; the first ``budget`` are shown (score: none, rank: the
  position in the permutation);
- ``uncertainty``: score = the ensemble's across-head standard deviation (population std over heads);
- ``optimistic``: score = the most optimistic head's prediction (max over heads: the bootstrap's optimism);
- ``spread``: the optimistic score and the round's variety together (issue 12, lever K): images are added one at a
  time, each the remaining candidate with the largest sum of two ranks among the remaining candidates (ties
  averaged): its optimistic score's and its embedding distance's to the nearest image already chosen (the honest
  ones included). Equal weight, in ranks so that neither scale dominates, to what the ensemble most optimistically
  expects the person to like and to what the round has not shown yet; ties go to the higher score, then the lower
  index;

for the last three, ``round(honest_share x budget)`` images are first drawn uniformly at random from the candidates
(mode ``random``: an honest sample of round k's model) and the rest are the highest-scoring remaining candidates
(mode ``uncertainty`` or ``optimistic``) or ``spread``'s picks. Round 0 has no reward model: random, with no extra
candidates.

Only shown images become Image rows, so an unshown candidate can never be served; what was not shown is recorded
in ``Round.metrics["selection"]`` (its prompt, seed, score and rank) next to each shown image's score, rank and
mode (keyed by seed, unique within a round).

Who needs an honest sample: the reward fit (bootstrap ensemble) uses every rated image as it is (selected images
are where the model is unsure or optimistic, which is what a fit wants); statistics of "what the model makes"
(the mean rating of a round, the share >= 6, the benchmark's learning curve) are honest only on the images of
mode ``random``: ``honest_ids`` picks them out (all images under the ``random`` selection).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from app.experiment_options import ExperimentOptions


@dataclass(frozen=True)
class Choice:
    index: int  # the candidate's position in the generated batch
    shown: bool
    mode: str  # random (honest), uncertainty, optimistic or spread
    score: float | None  # the selection score (None for random selection)
    # 1 = first: by score (highest first) for uncertainty and optimistic, by permutation position for random; for
    # spread the pick order (the honest images first, in permutation order), then the unshown by score
    rank: int


def scores(mode: str, preds: torch.Tensor) -> torch.Tensor:
    """The selection score of each candidate from the ensemble's (C, H) head predictions."""
    if preds.ndim != 2:
        raise ValueError(f"head predictions must have shape (candidates, heads), got {tuple(preds.shape)}")
    if mode == "uncertainty":
        return preds.std(dim=1, unbiased=False)
    if mode in ("optimistic", "spread"):
        return preds.max(dim=1).values
    raise ValueError(f"selection {mode!r} has no score; choose uncertainty, optimistic or spread")


def half_ranks(x: np.ndarray) -> np.ndarray:
    """Twice each value's rank among ``x`` (0 = lowest), tied values sharing their average rank: whole numbers, so
    that sums of ranks that are equal compare equal (as fractions ``k / (m - 1)`` they may differ in the last bit).
    NaN (a damaged embedding's distance) ranks above every number, all NaNs tied, as numpy's sort orders them."""
    # from one sort, O(m log m): the m x m comparison matrices it was built from made spread's picks roughly cubic
    # in the candidates (140 s for 4096 of them: fourth review); then runs of equal values in the sorted order, not
    # a binary search per value (two searchsorted calls were half of spread's time per pick: fifth review)
    m = len(x)
    order = np.argsort(x)
    ordered = x[order]
    starts_run = np.empty(m, dtype=bool)
    starts_run[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=starts_run[1:])
    first_nan = int(np.searchsorted(ordered, np.nan))  # NaNs sort last (m: none)
    starts_run[first_nan + 1:] = False  # NaN != NaN: one run for them all
    starts = np.flatnonzero(starts_run)  # values strictly below each run
    sizes = np.diff(starts, append=m)  # values equal within each run
    run = np.cumsum(starts_run) - 1
    out = np.empty(m, dtype=np.int64)
    out[order] = 2 * starts[run] + sizes[run] - 1
    return out


# the float32 Gram matrix of the candidates' unit embeddings is kept when it fits in this many bytes (16,384
# candidates: exactly 1 GiB); above it each chosen image's row is computed when needed (a float32 matrix-vector product)
GRAM_BYTES = 2**30
EXACT_ROWS = 4096  # exact distances are measured in blocks of this many rows (2 x 25 MB of temporaries at 768-d)


def spread_order(score: list[float], emb: np.ndarray, chosen: list[int], n_pick: int, *,
                 gram_bytes: int = GRAM_BYTES) -> list[int]:
    """``spread``'s picks, in order: ``n_pick`` candidates added one at a time to ``chosen`` (already shown), each
    the one with the largest rank of score plus rank of distance to the nearest chosen image (see the module).

    The distance between candidates ``i`` and ``c`` is the norm of the difference of their unit embeddings
    (``emb`` divided by its norm, or by 1e-12 if smaller) exactly as ``np.linalg.norm(unit[i] - unit[c], axis=1)``
    computes it row by row, i.e. ``sqrt`` of numpy's ``add.reduce`` of the squared differences: the same bits for the
    same pair of rows, 0 for identical rows, so duplicates tie exactly. No rounding: the same value, and so the same
    picks, as measuring every distance that way (before 5 Dec 2026 that is what was done, per pick and candidate).

    How it is fast: a pick can only lower a candidate's nearest distance where it is nearer than that. A float32
    Gram matrix (or row) gives each squared distance within a proven bound (``_float32_margin``); only the candidates
    that the bound cannot show to be at least as far as their nearest get the exact distance above. Ranks of score
    among the remaining candidates are kept up to date as the picks leave (no sort per pick); the distances' ranks
    come from one sort per pick (``half_ranks``).

    Memory: the float64 unit embeddings, their float32 copy, blocks of ``EXACT_ROWS`` exact differences and, if at
    most ``gram_bytes`` (n x n x 4 bytes), the Gram matrix: at 16,384 x 768 that is 100.7 MB + 50.3 MB + 2 x 25.2 MB +
    1.07 GB, about 1.27 GB; above ``gram_bytes`` a row of n float32 per chosen image instead of the matrix."""
    if n_pick <= 0:
        return []
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    s = np.asarray(score, dtype=np.float64)
    n, dim = unit.shape
    # the bound is for float64 unit rows (what choose passes); others are all measured exactly, as before
    rel, shift, err = _float32_margin(dim) if unit.dtype == np.float64 else (1.0, 0.0, math.inf)
    filtered = math.isfinite(err)
    u32 = unit.astype(np.float32) if filtered else unit[:, :0]
    sq = np.einsum("ij,ij->i", u32, u32, dtype=np.float64)  # exact products, float64 sums: error ~dim x 2^-53
    # numpy's matmul of A and A.T is BLAS syrk, with no temporary: n x n x 4 bytes
    gram = u32 @ u32.T if filtered and n * n * 4 <= gram_bytes else None
    remaining = np.ones(n, dtype=bool)
    remaining[list(chosen)] = False
    left = np.flatnonzero(remaining)  # ascending indices: the first of tied candidates has the lowest index
    nearest = np.full(left.size, np.inf)
    skip_above = np.full(left.size, np.inf)  # a float32 squared distance above this cannot lower nearest
    sq_left = sq[left]

    def add(c: int) -> None:
        if filtered:
            row = gram[c] if gram is not None else u32 @ u32[c]
            approx = sq_left + (sq[c] - 2.0 * row[left].astype(np.float64))
            maybe = np.flatnonzero(~(approx > skip_above))  # NaN (a damaged embedding) is measured too, as before
        else:
            maybe = np.arange(left.size)
        for start in range(0, maybe.size, EXACT_ROWS):  # row by row: the same bits whatever the block
            part = maybe[start:start + EXACT_ROWS]
            exact = np.linalg.norm(unit[left[part]] - unit[c], axis=1)
            nearest[part] = np.minimum(nearest[part], exact)
            skip_above[part] = (nearest[part] * rel + shift) ** 2 + err

    for c in chosen:
        add(int(c))
    key = half_ranks(s)  # the scores' order as whole numbers (equal scores equal), for the tie-break and the updates
    key_left = key[left]
    score_ranks = half_ranks(s[left])  # among the remaining; kept up to date below rather than sorted again
    scale = 2 * n  # above every key: total * scale + key orders by total, then by score
    picks: list[int] = []
    for k in range(n_pick):
        total = score_ranks + half_ranks(nearest)  # both ranks share the scale: whole numbers compare exactly
        # the largest total, then the higher score, then the lower index (argmax: the first of the ties)
        j = int(np.argmax(total * scale + key_left))
        pick = int(left[j])
        picks.append(pick)
        if k == n_pick - 1:
            break
        gone = key_left[j]
        left, nearest, skip_above, sq_left, key_left, score_ranks = (
            np.delete(a, j) for a in (left, nearest, skip_above, sq_left, key_left, score_ranks))
        # the pick's score leaves the remaining ones: one fewer below each higher score, one fewer tie for its equals
        score_ranks -= 2 * (key_left > gone) + (key_left == gone)
        add(pick)
    return picks


def _float32_margin(dim: int) -> tuple[float, float, float]:
    """(rel, shift, err) such that a float32 squared distance ``approx`` above ``(d * rel + shift) ** 2 + err`` proves
    the exact (float64, row-wise norm) distance of the two unit embeddings is at least ``d``.

    With u the float64 unit rows (norm <= 1 + (dim + 4) x 2^-53) and a = float32(u): |a - u| <= 2^-24 |u| (per
    component, round to nearest; float32 underflow adds at most sqrt(dim) x 2^-150), so |a_i - a_c| and |u_i - u_c|
    differ by at most 2^-23 (x1.000001): ``shift`` = 2^-22. ``approx`` = |a_i|^2 + |a_c|^2 - 2 a_i.a_c, the squares
    summed in float64 (error ~dim x 2^-53) and the float32 dot product within gamma = dim x 2^-24 / (1 - dim x 2^-24)
    of |a_i| |a_c| (any summation order, FMA or not): |approx - |a_i - a_c|^2| <= 2 gamma x 1.000001 + 1e-13; ``err``
    = 4 gamma + 1e-12. The row-wise norm is within (dim + 4) x 2^-53 relative of |u_i - u_c|: ``rel`` = 1 + (2 dim +
    16) x 2^-53. All with at least twice the room the bound needs."""
    unit_round = 2.0**-24
    if dim * unit_round >= 0.25:  # no useful bound: every candidate is measured exactly
        return 1.0, 0.0, math.inf
    gamma = dim * unit_round / (1 - dim * unit_round)
    return 1 + (2 * dim + 16) * 2.0**-53, 2.0**-22, 4 * gamma + 1e-12


def choose(mode: str, n_show: int, n_candidates: int, *, seed: int, preds: torch.Tensor | None = None,
           honest_share: float = 0.0, emb: torch.Tensor | None = None) -> list[Choice]:
    """One Choice per candidate: which ``n_show`` of ``n_candidates`` to show, and why. ``spread`` needs the
    candidates' embeddings ``emb`` (C, D); its ranks are the pick order (honest images first), then the unshown
    candidates by score."""
    if not 1 <= n_show <= n_candidates:
        raise ValueError(f"cannot show {n_show} of {n_candidates} candidates")
    perm = [int(i) for i in np.random.default_rng(seed).permutation(n_candidates)]
    if mode == "random" or preds is None:
        return [Choice(i, pos < n_show, "random", None, pos + 1) for pos, i in enumerate(perm)]
    if preds.shape[0] != n_candidates:
        raise ValueError(f"{preds.shape[0]} predictions for {n_candidates} candidates")
    s = scores(mode, preds.detach().to("cpu", torch.float64)).tolist()
    if any(math.isnan(v) for v in s):  # no order to rank them by (spread's pick found no best and failed obscurely)
        bad = sum(1 for v in s if math.isnan(v))
        raise ValueError(f"the reward model scored {bad} of the {n_candidates} candidates as not a number, so they "
                         "cannot be ranked: its weights or the images' embeddings are damaged; nothing was shown")
    by_score = sorted(range(n_candidates), key=lambda i: (-s[i], i))
    n_honest = honest_count(honest_share, n_show)
    honest = perm[:n_honest]
    if mode == "spread":
        if emb is None or emb.shape[0] != n_candidates:
            raise ValueError(f"selection 'spread' needs one embedding per candidate ({n_candidates}), got "
                             f"{None if emb is None else emb.shape[0]}")
        if bad := int((~torch.isfinite(emb)).any(dim=1).sum()):  # a NaN distance ranked as the farthest: picked first
            raise ValueError(f"{bad} of the {n_candidates} candidates' image embeddings are not finite numbers, so "
                             "'spread' cannot measure how far apart they are: the image encoder's output is damaged; "
                             "nothing was shown")
        order = honest + spread_order(s, emb.detach().to("cpu", torch.float64).numpy(), honest, n_show - n_honest)
        placed = set(order)
        order += [i for i in by_score if i not in placed]
    else:
        order = by_score
    rank = {i: r + 1 for r, i in enumerate(order)}
    drawn = set(honest)
    picked = drawn | set([i for i in order if i not in drawn][: n_show - n_honest])
    return [Choice(i, i in picked, "random" if i in drawn else mode, s[i], rank[i]) for i in range(n_candidates)]


def honest_count(share: float, n_show: int) -> int:
    """How many of ``n_show`` images are the honest sample: ``share`` of them rounded half up, at least one when the
    share is above 0 (Python's round-half-to-even gave 0 of 2 at 0.25, so a small round had no honest image)."""
    if share <= 0:
        return 0
    return min(n_show, max(1, math.floor(share * n_show + 0.5)))


def record(choices: list[Choice], pairs: list[tuple[str, int]], options: ExperimentOptions, mode: str) -> dict[str, Any]:
    """``Round.metrics["selection"]``: the setting (``honest_share``), the share of the shown images that were
    the honest sample (``honest_share_shown``: what happened, after rounding; all of them with ``random``), each shown
    image's score, rank and mode (keyed by seed), and the unshown candidates."""
    shown = {str(pairs[c.index][1]): {"prompt": pairs[c.index][0], "score": c.score, "rank": c.rank, "mode": c.mode}
             for c in choices if c.shown}
    unshown = [{"prompt": pairs[c.index][0], "seed": int(pairs[c.index][1]), "score": c.score, "rank": c.rank}
               for c in choices if not c.shown]
    honest = sum(1 for v in shown.values() if v["mode"] == "random")
    return {"selection": mode, "candidate_factor": len(choices) / max(1, len(shown)), "honest_share": options.honest_share,
            "honest_share_shown": honest / len(shown) if shown else None,
            "candidates": len(choices), "shown": len(shown), "images": shown, "unshown": unshown}


def honest_ids(metrics: dict[str, Any] | None, images) -> list[int]:
    """The ids of ``images`` (query Image rows of one round) that are an honest (uniform random) sample."""
    sel = (metrics or {}).get("selection")
    if not isinstance(sel, dict):
        return [im.id for im in images]  # rounds from before selection existed showed every generated image
    per = sel.get("images") or {}
    return [im.id for im in images if (per.get(str(im.seed)) or {}).get("mode", "random") == "random"]


def head_predictions(ensemble, embeddings: torch.Tensor) -> torch.Tensor:
    """The ensemble's (C, H) head predictions on candidate embeddings (no gradient)."""
    with torch.no_grad():
        device = next(ensemble.parameters()).device
        return ensemble(embeddings.float().to(device)).cpu()


def select_query(emb: torch.Tensor, pairs: list[tuple[str, int]], *, options: ExperimentOptions,
                 mode: str, n_show: int, seed: int, reward_dir=None, device="cpu"):
    """The worker's step between generating a round's candidates and storing its query images: returns the shown
    candidates' indices (ascending) and (prompt, seed) pairs, and the ``Round.metrics["selection"]`` record.

    Indices, not the shown images: the worker reads each one's pixels as it stores it. Copying the shown half out
    of the candidates held another 6 GiB at sd15's round 3 (fifth review)."""
    preds = None
    if mode != "random":
        from seiko_core.reward import RewardEnsemble

        if reward_dir is None:
            raise ValueError(f"selection {mode!r} needs the round's reward model, and none was given")
        preds = head_predictions(RewardEnsemble.load(reward_dir, device=device), emb)
    choices = choose(mode, min(n_show, len(pairs)), len(pairs), seed=seed, preds=preds, honest_share=options.honest_share,
                     emb=emb)
    keep = sorted(c.index for c in choices if c.shown)
    return keep, [pairs[i] for i in keep], record(choices, pairs, options, mode)
