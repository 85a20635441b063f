"""What the person cares about, per round: the mean rating and the share of images rated >= 6, each with a 95%
confidence interval, from the database's ratings (the dashboard's first plot, and the product benchmark).

- mean: Student's t interval, mean +- t(0.975, n - 1) * s / sqrt(n), s the sample standard deviation (n - 1);
  n is the number of ratings (every rating of every query image of the round); none for n < 2 (with several
  ratings per image, below: none for fewer than 2 images), and none when every rating is the same: s = 0 then,
  and a band of zero width claimed the mean exactly from two ratings of 7 (found by the tenth review; a t interval
  with no spread is undefined, as scipy's t.interval with scale 0 is);
- share >= 6: Wilson's score interval at z = 1.959964 (the 97.5% normal quantile).

With several ratings of one image (overlap > 1) the ratings are not independent draws: the images are. Then
(``clustered_intervals``) the mean's variance is the ratio estimator's over images (cluster-robust, K images:
K / (K - 1) * sum_i n_i^2 (m_i - mean)^2 / N^2, never below the plain s^2 / N) with t on K - 1 degrees of freedom,
and the share's Wilson interval
uses the effective number of ratings N / deff, deff the same variance over p (1 - p) / (N - 1) (never below 1; 1
where it cannot be estimated: every rating liked, or none, and one image). With
one rating per image both reduce exactly to the plain intervals above. A review measured what the plain intervals
gave at overlap 3: 80% coverage for the mean's, 84% for the share's, where 95% is claimed.

The share's interval follows one rule with the A/B win rate (``seiko_core.stats.clustered_wilson``, used by
``db.comparisons.clustered_win_interval`` too). Where some image has several ratings and the ratings differ in being
liked (2 <= K < N images), the share's variance is estimated from K images, with K - 1 degrees of freedom, so its
Wilson interval at N / max(1, deff) is taken at Student's ``t975(K - 1)``, whatever deff is: continuous across
deff = 1 (eleventh review: it was the normal 1.96 at deff <= 1 and t above, so the share 24 of 48 on 16 images
was 10% wider at deff 1.044 than at 0.870, and a deff of exactly 1 went either way by rounding). At the normal
1.96, Wilson's own interval: one rating per image (independent ratings, over N: which case applies is the design,
never an estimate). Every rating liked or none is deff 1 at t with K - 1 df, the limit of one rating that differs,
and one image Wilson over its ratings at t with 1 df (thirteenth review: they were the K images as K trials and one
rating's worth at 1.96, so one rating that differed could narrow the interval eight-fold, and one image was
narrower than two images rated alike).
Measured (``tests/app/test_stats_reference.py``; image effect sd 1.5 about 5, rater noise sd 1, whole scores 1-10,
3 ratings per image, 2000 rounds, seed 0; re-measured after the rule was made continuous): at the 8 images of one
rating batch the share's interval at 1.96 held the true share (0.391) in 91.75% of rounds, at t with 7 df in
96.65% (15% wider; 91 of the 2000 rounds had deff <= 1, taken at 1.96 until then: 96.2%); at 16 images 95.25% and
96.65% (7.5% wider); at the 32 images of a round of the shapes preset 94.7% and 95.55% (4% wider).

Raters (fifteenth review). Several raters rate one round and raters differ (one rates higher than another), so one
rater's ratings across images move together, which clustering by image alone does not see: at 48 images of 3
ratings by 16 raters (rater effect sd 1) the share's interval held the population's share in 0.859 of rounds. The
A/B win rate's rule (``db.comparisons.clustered_win_interval``) now applies to the share too: from
``RATERS_TO_GENERALISE`` (15) raters the variance is two-way, V_image + V_rater - V_(image, rater) (each rater
rates an image once, so the last is the single ratings' own), at t with min(images, raters) - 1 df, and the
interval generalises over raters like these (0.961 there); with fewer raters it is about these raters' taste over
the population of images, by image alone as before (4 raters: 0.959 of rounds held these raters' own share). The
plot says which (``interval_reading``, in ``seiko_core.model_card.rater_reading``'s words, the A/B table's and the
model card's). ``tests/app/test_stats_reference.py``; BENCHMARKS.md.

The mean's band follows the same rule (sixteenth review; it was clustered by image only): from 15 raters the
variance of the mean is two-way over the scores, V_image + V_rater - V_(image, rater) (``seiko_core.stats``'s
helpers, as the share's), at t with min(images, raters) - 1 df, never below the plain s^2 / N; below 15 by image
alone, about these raters, and its legend says which as the share's does. At the 48 images by 16 raters above
(rater offsets sd 1, 2000 rounds) the band by image alone held the population's mean in 0.840 of rounds, two-way in
0.950 (46% wider); 4 raters, by image alone: these raters' own mean in 0.949.

No scipy here: the t quantile is ``seiko_core.stats.t975`` (bisection on the t distribution's CDF, written with the
regularised incomplete beta function; continued fraction, modified Lentz), the one implementation, which
``db.comparisons`` uses too (through ``clustered_wilson``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.comparisons import RATERS_TO_GENERALISE, clusters_by_rater, generalises_over_raters
from db.models import SCORE_MAX, SCORE_MIN, Image, Rating, Round
from seiko_core.stats import Z95, cluster_variance, clustered_wilson, t975, two_way_variance, wilson_bounds

LIKED = 6  # a rating >= 6 counts as liked


def mean_interval(scores: list[float]) -> tuple[float | None, float | None, float | None]:
    """(mean, low, high) with the 95% t interval; (None, None, None) without scores; no interval for one score, nor
    for scores that are all the same (no spread to measure one by: it had zero width)."""
    n = len(scores)
    if n == 0:
        return None, None, None
    mean = sum(scores) / n
    if n < 2 or max(scores) == min(scores):
        return mean, None, None
    sd = math.sqrt(sum((x - mean) ** 2 for x in scores) / (n - 1))
    half = t975(n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float | None, float | None, float | None]:
    """(share, low, high): k successes of n with Wilson's score interval; Nones for n = 0."""
    if n == 0:
        return None, None, None
    return k / n, *wilson_bounds(k, n, z)


def clustered_intervals(scores: list[float], groups: list[object], raters: list[object] | None = None, *,
                        generalise_from: int = RATERS_TO_GENERALISE,
                        ) -> tuple[tuple[float | None, float | None, float | None],
                                   tuple[float | None, float | None, float | None]]:
    """((mean, low, high), (share, low, high)) of ``scores`` whose ``groups`` (the rated image of each) may repeat;
    see the module docstring. Nones as ``mean_interval`` and ``wilson_interval`` give them. ``raters`` (the rater of
    each score): from ``generalise_from`` raters (``RATERS_TO_GENERALISE``) both intervals are clustered by rater as
    well as by image (two-way, as the A/B win rate's; the share's since the fifteenth review, the mean's since the
    sixteenth), below it about these raters (images only, as without ``raters``)."""
    n = len(scores)
    if n == 0:
        return (None, None, None), (None, None, None)
    by_group: dict[object, list[float]] = {}
    for x, g in zip(scores, groups, strict=True):
        by_group.setdefault(g, []).append(x)
    k = len(by_group)
    mean = sum(scores) / n
    liked = sum(1 for x in scores if x >= LIKED)
    p = liked / n

    def cluster_var(values: dict[object, list[float]], centre: float) -> float:
        # the clusters: images, raters or (image, rater) cells (seiko_core.stats.cluster_variance)
        return cluster_variance((sum(v) - len(v) * centre for v in values.values()), n)

    def values_by(keys: list[object], as_liked: bool = False) -> dict[object, list[float]]:
        # the scores (``as_liked``: 1 for a score >= LIKED, 0 below) grouped by ``keys``, one key per score
        out: dict[object, list[float]] = {}
        for x, key in zip(scores, keys, strict=True):
            out.setdefault(key, []).append((1.0 if x >= LIKED else 0.0) if as_liked else x)
        return out

    def liked_by(keys: list[object]) -> dict[object, list[float]]:
        return values_by(keys, as_liked=True)

    rater_count = None if raters is None else len(set(raters))
    # two-way over images and raters where the raters generalise and some rater rated more than one image (the A/B
    # rule, db.comparisons.clusters_by_rater); each rating its own rater reduces to images alone
    two_way = clusters_by_rater(rater_count, n, generalise_from)

    deff = None  # the share's design effect; None (taken as 1) for no spread (every rating liked, or none), one image
    if k < 2 or max(scores) == min(scores):  # one image, or no spread at all: no interval (``mean_interval``)
        mean_ci = (mean, None, None)
    else:
        # never below the plain s^2 / N (a design effect of at least 1, as for the share): images whose mean ratings
        # happened to agree gave a zero-width band (found by review)
        plain = sum((x - mean) ** 2 for x in scores) / (n - 1) / n
        variance, clusters = cluster_var(by_group, mean), k
        if two_way:  # two-way as the share's below, on the scores, at t with min(K_image, K_rater) - 1 df (sixteenth
            # review: by image alone, the band missed the raters' own offsets)
            variance, clusters = two_way_variance(variance, k, cluster_var(values_by(raters), mean), rater_count,
                                                  cluster_var(values_by(list(zip(groups, raters))), mean))
        half = t975(clusters - 1) * math.sqrt(max(variance, plain))
        mean_ci = (mean, mean - half, mean + half)
        srs = p * (1 - p) / (n - 1)
        if srs > 0:
            variance = cluster_var(liked_by(groups), p)
            if two_way:  # V_image + V_rater - V_(image, rater) (Cameron, Gelbach and Miller 2011)
                variance, _ = two_way_variance(variance, k, cluster_var(liked_by(raters), p), rater_count,
                                               cluster_var(liked_by(list(zip(groups, raters))), p))
            deff = variance / srs
    if two_way:  # t at min(K_image, K_rater) - 1 df: the fewer clusters bound how well the variance is known
        k = min(k, rater_count)
    # one rule with the A/B win rate (seiko_core.stats.clustered_wilson): t(K - 1) at N / max(1, deff) where the
    # ratings are clustered and spread, whatever deff is (eleventh review: 1.96 at deff <= 1 made it jump at 1)
    lo, hi = clustered_wilson(liked, n, k, deff)
    return mean_ci, (p, lo, hi)


@dataclass(frozen=True)
class RoundTaste:
    index: int
    n: int  # ratings
    mean: float | None
    mean_low: float | None
    mean_high: float | None
    liked: int  # ratings >= LIKED
    share: float | None
    share_low: float | None
    share_high: float | None
    # the honest sample alone (app.selection: the images drawn at random, not chosen by a selection mode), when the
    # round has chosen images too; None otherwise (every image shown was the model's own sample)
    honest_n: int | None = None
    honest_mean: float | None = None
    honest_share: float | None = None
    # how many raters rated the round (None: not known) and whether its intervals (the mean's and the share's)
    # generalise over raters like these (RATERS_TO_GENERALISE or more: two-way) or are about these raters;
    # model_card.rater_reading words it
    raters: int | None = None
    over_raters: bool | None = None


def round_taste(index: int, scores: list[int], images: list[int] | None = None,
                raters: list[int] | None = None) -> RoundTaste:
    """The round's figures; with ``images`` (the rated image of each score) the intervals count images, not
    ratings, as the independent draws (``clustered_intervals``), and with ``raters`` (the rater of each score) both
    count raters too from ``RATERS_TO_GENERALISE`` of them."""
    liked = sum(1 for s in scores if s >= LIKED)
    if raters is not None and images is None:
        raise ValueError("the raters of a round's ratings need the rated images too")
    rater_count = None if raters is None or not scores else len(set(raters))
    if images is not None:
        (mean, lo, hi), (share, slo, shi) = clustered_intervals([float(s) for s in scores], images, raters)
    else:
        mean, lo, hi = mean_interval([float(s) for s in scores])
        share, slo, shi = wilson_interval(liked, len(scores))
    # within the scale: the mean of 1-10 ratings is too (a band to 11.3 reached bench-taste's JSON; found by review)
    lo, hi = (None if lo is None else max(float(SCORE_MIN), lo)), (None if hi is None else min(float(SCORE_MAX), hi))
    return RoundTaste(index, len(scores), mean, lo, hi, liked, share, slo, shi, raters=rater_count,
                      over_raters=None if rater_count is None else generalises_over_raters(rater_count))


class _Rated(NamedTuple):  # what app.selection.honest_ids reads of a rated image
    id: int
    seed: int


def experiment_taste(session: Session, experiment_id: int) -> list[RoundTaste]:
    """Per round (oldest first, rounds without ratings included), every rating of the round's query images, with
    intervals over images (``clustered_intervals``)."""
    rounds = list(session.scalars(select(Round).where(Round.experiment_id == experiment_id).order_by(Round.index)))
    rows = session.execute(
        select(Round.index, Rating.score, Image.id, Image.seed, Rating.rater_id).join(Image, Image.round_id == Round.id)
        .join(Rating, Rating.image_id == Image.id).where(Round.experiment_id == experiment_id, Image.kind == "query")
        .order_by(Rating.id)
    ).all()
    by_round: dict[int, tuple[list[int], list[int], list[int]]] = {r.index: ([], [], []) for r in rounds}
    seeds: dict[int, int] = {}
    for index, score, image_id, seed, rater_id in rows:
        scores, images, raters = by_round.setdefault(index, ([], [], []))
        scores.append(int(score))
        images.append(int(image_id))
        raters.append(int(rater_id))
        seeds[int(image_id)] = int(seed)
    # several raters may rate one image (overlap > 1): its ratings are one draw, not several
    out = [round_taste(k, *by_round[k]) for k in sorted(by_round)]
    # a selection mode shows chosen images beside the honest sample: the plot then also draws the honest part, the
    # model's own images, so that what the selection picked is not read as what the model learnt (found by review)
    from app import selection

    metrics = {r.index: r.metrics for r in rounds}
    for i, taste in enumerate(out):
        if not isinstance((metrics.get(taste.index) or {}).get("selection"), dict):
            continue
        scores, images, _ = by_round[taste.index]
        rated = [_Rated(im, seeds[im]) for im in dict.fromkeys(images)]
        honest = set(selection.honest_ids(metrics[taste.index], rated))
        kept = [sc for sc, im in zip(scores, images, strict=True) if im in honest]
        if len(kept) < len(scores):
            out[i] = replace(taste, honest_n=len(kept), honest_mean=sum(kept) / len(kept) if kept else None,
                             honest_share=sum(1 for sc in kept if sc >= LIKED) / len(kept) if kept else None)
    return out


def _bands(ax, rows: list[RoundTaste], low: str, high: str, scale: float, color: str, alpha: float, label: str) -> None:
    """The rounds' intervals (``low``, ``high``) shaded between neighbouring rounds that both have one, and as a bar
    for a round whose neighbours have none. One band through the rounds that had one was drawn across a round without
    it (no ratings, one image, ratings all the same) as if that round had the interpolated interval of its neighbours
    (tenth review)."""
    lo = [math.nan if getattr(r, low) is None else scale * getattr(r, low) for r in rows]
    hi = [math.nan if getattr(r, high) is None else scale * getattr(r, high) for r in rows]
    x = [r.index for r in rows]
    has = [not math.isnan(v) for v in lo]
    ax.fill_between(x, lo, hi, where=has, color=color, alpha=alpha, label=label)
    alone = [k for k in range(len(rows)) if has[k] and not (k > 0 and has[k - 1]) and not (k + 1 < len(rows) and has[k + 1])]
    if alone:  # a band of one round has no width: its interval as a bar
        ax.vlines([x[k] for k in alone], [lo[k] for k in alone], [hi[k] for k in alone], color=color, alpha=2 * alpha,
                  linewidth=6)


def _index_ranges(indices: list[int]) -> str:
    """"round 2" or "rounds 1-3, 5": the round indices (ascending), runs of consecutive ones as a range."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return f"round {text}" if len(indices) == 1 else f"rounds {text}"


def interval_reading(rows: list[RoundTaste], low: str = "share_low") -> str:
    """Whose taste the rounds' intervals of one figure are about (``low``, the field of their low end: "share_low"
    the liked share's, "mean_low" the mean rating's; both follow one rule), in ``model_card.rater_reading``'s words
    (the A/B table's and the model card's): "about these 3 raters" below ``RATERS_TO_GENERALISE`` raters, "over
    raters like these 16" from it, and a range where the rounds' rater counts differ ("about these 3-7 raters"), so
    one phrase per reading however many rounds there are; the rounds are named only where some read one way and some
    the other ("rounds 1-4 about these 3-7 raters, round 5 over raters like these 16"); "" where none is known."""
    from seiko_core.model_card import rater_reading

    counts: dict[bool, list[int]] = {}  # over_raters -> the rater counts of the rounds read that way
    indices: dict[bool, list[int]] = {}
    for r in rows:
        if getattr(r, low) is not None and r.raters is not None:
            counts.setdefault(bool(r.over_raters), []).append(r.raters)
            indices.setdefault(bool(r.over_raters), []).append(r.index)

    def phrase(over: bool) -> str:
        lo, hi = min(counts[over]), max(counts[over])
        if lo == hi:
            return rater_reading({"raters": lo, "over_raters": over})
        return f"over raters like these {lo}-{hi}" if over else f"about these {lo}-{hi} raters"

    if len(counts) <= 1:
        return phrase(next(iter(counts))) if counts else ""
    return ", ".join(f"{_index_ranges(sorted(indices[over]))} {phrase(over)}" for over in (False, True))


def figure(rows: list[RoundTaste]):
    """Mean rating (left axis, 1-10) and share >= 6 (right axis, %) per round, each with its 95% band."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.4), dpi=100, layout="constrained")
    ax = fig.subplots(1, 1)
    ax2 = ax.twinx()
    pts = [r for r in rows if r.mean is not None]
    if pts:
        x = [r.index for r in pts]
        ax.plot(x, [r.mean for r in pts], "o-", color="#15803d", label="mean rating")
        if any(r.mean_low is not None for r in pts):
            reading = interval_reading(rows, "mean_low")  # two-way from RATERS_TO_GENERALISE raters, as the share's
            _bands(ax, rows, "mean_low", "mean_high", 1.0, "#15803d", 0.18,
                   f"95% CI (t{'; ' + reading if reading else ''})")
        ax2.plot(x, [100 * r.share for r in pts], "s--", color="#c2410c", label=f"share rated >= {LIKED}")
        reading = interval_reading(rows)
        _bands(ax2, rows, "share_low", "share_high", 100.0, "#c2410c", 0.12,
               f"95% CI (Wilson{'; ' + reading if reading else ''})")
        if any(r.honest_n is not None for r in pts):  # a selection mode chose some images: the model's own, apart
            own = [r for r in pts if r.honest_mean is not None or r.honest_n is None]
            ax.plot([r.index for r in own], [r.mean if r.honest_n is None else r.honest_mean for r in own], "o:",
                    color="#15803d", alpha=0.6, label="mean, model's own sample (honest)")
    ax.set_ylim(1, 10)
    ax2.set_ylim(0, 100)
    ax.set_xlabel("round")
    ax.set_ylabel("mean rating (1-10)")
    ax2.set_ylabel(f"% of ratings >= {LIKED}")
    ax.set_title("What you rated, per round (dotted: the model's own sample; a selection mode chose the rest)"
                 if any(r.honest_n is not None for r in rows) else "What you rated, per round")
    if rows:
        ax.set_xticks([r.index for r in rows])
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()
    handles2 = ax2.get_legend_handles_labels()
    if handles[0] or handles2[0]:
        ax.legend(handles[0] + handles2[0], handles[1] + handles2[1], fontsize=8, loc="upper left")
    return fig
