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
    that sums of ranks that are equal compare equal (as fractions ``k / (m - 1)`` they may differ in the last bit)."""
    # from one sort, O(m log m): the m x m comparison matrices it was built from made spread's picks roughly cubic
    # in the candidates (140 s for 4096 of them: fourth review)
    ordered = np.sort(x)
    below = np.searchsorted(ordered, x, "left")  # values strictly below
    upto = np.searchsorted(ordered, x, "right")  # values below or equal
    return 2 * below + (upto - below) - 1


def spread_order(score: list[float], emb: np.ndarray, chosen: list[int], n_pick: int) -> list[int]:
    """``spread``'s picks, in order: ``n_pick`` candidates added one at a time to ``chosen`` (already shown), each
    the one with the largest rank of score plus rank of distance to the nearest chosen image (see the module)."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    s = np.asarray(score, dtype=np.float64)
    nearest = np.full(len(s), np.inf)
    for c in chosen:
        nearest = np.minimum(nearest, np.linalg.norm(unit - unit[c], axis=1))
    remaining = np.ones(len(s), dtype=bool)
    remaining[list(chosen)] = False
    picks: list[int] = []
    for _ in range(n_pick):
        rest = np.flatnonzero(remaining)  # ascending indices
        total = half_ranks(s[rest]) + half_ranks(nearest[rest])  # both ranks share the scale: whole numbers compare exactly
        # the largest total, then the higher score, then the lower index (rest is ascending: the first of the ties)
        best = total == total.max()
        score_best = s[rest] == s[rest][best].max()
        pick = int(rest[np.flatnonzero(best & score_best)[0]])
        picks.append(pick)
        remaining[pick] = False
        left = np.flatnonzero(remaining)  # only the candidates still in play need their nearest distance
        nearest[left] = np.minimum(nearest[left], np.linalg.norm(unit[left] - unit[pick], axis=1))
    return picks


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


def select_query(images: torch.Tensor, emb: torch.Tensor, pairs: list[tuple[str, int]], *, options: ExperimentOptions,
                 mode: str, n_show: int, seed: int, reward_dir=None, device="cpu"):
    """The worker's step between generating a round's candidates and storing its query images: returns the shown
    (images, embeddings, (prompt, seed) pairs) and the ``Round.metrics["selection"]`` record."""
    preds = None
    if mode != "random":
        from seiko_core.reward import RewardEnsemble

        if reward_dir is None:
            raise ValueError(f"selection {mode!r} needs the round's reward model, and none was given")
        preds = head_predictions(RewardEnsemble.load(reward_dir, device=device), emb)
    choices = choose(mode, min(n_show, len(pairs)), len(pairs), seed=seed, preds=preds, honest_share=options.honest_share,
                     emb=emb)
    keep = sorted(c.index for c in choices if c.shown)
    index = torch.tensor(keep, dtype=torch.long)
    return images[index], emb[index], [pairs[i] for i in keep], record(choices, pairs, options, mode)
