"""Repository functions for comparisons (issue 14, items 1 and 3): pairs of images shown side by side and raters'
votes on them, the blind A/B win rates between rounds, and round lineage (rollback).

Same conventions as ``db.repo``: keyword-only, the caller owns the transaction, bad input raises a
``db.errors`` exception with one sentence before anything is written.

Pair kinds: ``'ab'`` (the same held-out prompt and seed rendered by two rounds' models; the pair's round is the
newer one) and ``'preference'`` (two query images of one round, for pairwise reward fitting). A pair's sides
(``image_a`` left, ``image_b`` right) are fixed when it is created, already in a random order.

The A/B win rate of round r against an opponent counts a tie as half a win:
``rate = (wins + ties / 2) / n`` over all votes ``n`` on r's pairs against that opponent, with a 95% Wilson score
interval on that rate. With overlap above 1 several raters vote on one pair and their votes are not independent
trials: ``ab_win_rates`` then gives Wilson's interval at the effective number of votes ``n / deff``
(``clustered_win_interval``; the same design-effect correction as the dashboard's liked share, app.taste_stats),
at Student's t with (pairs - 1) degrees of freedom, which is Wilson's own interval when every pair has one vote;
where ``RATERS_TO_GENERALISE`` (15) or more raters each voted on several pairs, the design effect is two-way,
over pairs and raters, at t with min(pairs, raters) - 1 degrees of freedom, and the interval generalises over raters
like these; with fewer raters it is about these raters, over pairs only (fourteenth review). ``pair_bootstrap_interval`` is a bootstrap over
whole pairs (measured by ``python -m app.tools.ab_coverage``; not shown on the dashboard).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, aliased

from db import repo
from db.checks import MAX_ID, shown
from db.errors import Conflict, InvalidInput, NotFound
from db.models import (
    COMPARISON_KINDS,
    VOTE_CHOICES,
    ComparisonPair,
    ComparisonVote,
    Image,
    PairShow,
    PairSkip,
    Rater,
    Round,
    utcnow,
)
from seiko_core.stats import Z95, cluster_variance, clustered_wilson, two_way_variance, wilson_bounds


def _kind(kind: Any) -> str:
    if kind not in COMPARISON_KINDS:
        raise InvalidInput(f"unknown comparison kind {kind!r}; choose from {list(COMPARISON_KINDS)}")
    return kind


def _id(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInput(f"{what} must be a positive whole number, got {shown(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# pairs
# ---------------------------------------------------------------------------------------------


def create_pairs(*, session: Session, experiment_id: int, round_id: int, kind: str,
                 pairs: Sequence[tuple[int, int]]) -> list[ComparisonPair]:
    """Add one pair per ``(image_a_id, image_b_id)``, in that display order (the caller randomised it).

    Every image must be an image of this experiment and the two of a pair must differ; ``round_id`` must be a
    round of the experiment. Nothing is written when any pair is bad."""
    _kind(kind)
    experiment = repo.get_experiment(session=session, experiment_id=_id("experiment id", experiment_id))
    round_ = repo.get_round(session=session, round_id=_id("round id", round_id))
    if round_.experiment_id != experiment.id:
        raise InvalidInput(f"round id {round_id} belongs to experiment {round_.experiment_id}, not {experiment_id}")
    checked: list[tuple[int, int]] = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise InvalidInput(f"a pair must be two image ids (left, right), got {pair!r}")
        a, b = _id("image id", pair[0]), _id("image id", pair[1])
        if a == b:
            raise InvalidInput(f"a pair needs two different images, got image {a} twice")
        checked.append((a, b))
    ids = {i for p in checked for i in p}
    found = dict(session.execute(select(Image.id, Round.experiment_id).join(Round, Round.id == Image.round_id)
                                 .where(Image.id.in_(ids))).all()) if ids else {}
    for i in sorted(ids):
        if i not in found:
            raise NotFound(f"there is no image with id {i}")
        if found[i] != experiment.id:
            raise InvalidInput(f"image {i} belongs to experiment {found[i]}, not {experiment_id}")
    now = utcnow()
    rows = [ComparisonPair(experiment_id=experiment.id, round_id=round_.id, kind=kind, image_a_id=a, image_b_id=b,
                           created_at=now) for a, b in checked]
    session.add_all(rows)
    session.flush()
    return rows


def no_pair_with_id(pair_id: Any) -> str:
    """The sentence for a pair id that names none (and for a pair of an experiment that does not list the rater,
    ``app.members.check``'s ``unknown``: the refusal does not tell them the pair exists; fifth review)."""
    return f"there is no comparison pair with id {pair_id}"


def get_pair(*, session: Session, pair_id: int) -> ComparisonPair:
    pair = session.get(ComparisonPair, _id("pair id", pair_id))
    if pair is None:
        raise NotFound(no_pair_with_id(pair_id))
    return pair


def list_pairs(*, session: Session, experiment_id: int, kind: str, round_id: int | None = None) -> list[ComparisonPair]:
    stmt = select(ComparisonPair).where(ComparisonPair.experiment_id == experiment_id, ComparisonPair.kind == _kind(kind))
    if round_id is not None:
        stmt = stmt.where(ComparisonPair.round_id == round_id)
    return list(session.scalars(stmt.order_by(ComparisonPair.id)))


def _unvoted(experiment_id: int, rater_id: int, kind: str) -> Any:
    """The pairs of this kind the rater has neither voted on nor skipped."""
    voted = select(ComparisonVote.pair_id).where(ComparisonVote.rater_id == rater_id)
    skipped = select(PairSkip.pair_id).where(PairSkip.rater_id == rater_id)
    return (ComparisonPair.experiment_id == experiment_id, ComparisonPair.kind == kind, ComparisonPair.id.not_in(voted),
            ComparisonPair.id.not_in(skipped))


def skipped_pairs(*, session: Session, rater_id: int, pair_ids: Any = None) -> set[int]:
    """The pairs the rater skipped (among ``pair_ids`` when given)."""
    stmt = select(PairSkip.pair_id).where(PairSkip.rater_id == rater_id)
    if pair_ids is not None:
        stmt = stmt.where(PairSkip.pair_id.in_(list(pair_ids)))
    return set(session.scalars(stmt))


def record_skip(*, session: Session, pair_id: int, rater_id: int) -> bool:
    """The rater sets the pair aside: not offered to them again, counted nowhere. Refused (Conflict) for a pair they
    voted on (they change their vote instead). Returns whether it is new (skipping twice is one skip)."""
    pair = get_pair(session=session, pair_id=pair_id)
    repo.get_rater(session=session, rater_id=_id("rater id", rater_id))
    if session.scalar(select(ComparisonVote.id).where(ComparisonVote.pair_id == pair.id,
                                                      ComparisonVote.rater_id == rater_id)) is not None:
        raise Conflict(f"you have compared pair {pair.id} already; change your choice instead of skipping it")
    stmt = (repo._dialect_insert(session)(PairSkip).values(pair_id=pair.id, rater_id=rater_id, created_at=utcnow())
            .on_conflict_do_nothing(index_elements=[PairSkip.pair_id, PairSkip.rater_id]))
    return session.execute(stmt).rowcount == 1


def _offerable(session: Session, experiment_id: int, rater_id: int, kind: str) -> list[tuple[int, int]]:
    """(pair id, round index) of the pairs of this kind the rater may still vote on.

    Blind A/B pairs (kind ``'ab'``): the eval grid's cells (prompt, seed) are the same in every round, so one image
    appears in several pairs: a round trained from a round other than the base has two pairs per cell with the same
    new image (against the previous round and against the base), the base's image is the old side of every round's
    "vs base" pair, and round r-1's image is the old side of round r's "vs previous" pair. A rater who met one side
    of a pair before could tell which side is which: an image met twice in one round is the new one, and across
    rounds the image met in an earlier round is the old one (found by review, 3 Dec 2026, and again for rounds).
    So a rater is offered only a pair whose two images they have met in none of the experiment's other A/B pairs
    they voted on, skipped or were shown (``serve_pair``: a pair on screen counts, found by review); the other
    raters answer the rest."""
    return [(pid, index) for pid, index, _, _, _ in _offerable_rows(session, experiment_id, rater_id, kind)]


def _offerable_rows(session: Session, experiment_id: int, rater_id: int,
                    kind: str) -> list[tuple[int, int, int, int, bool]]:
    """``_offerable`` with each pair's images and whether it is on the rater's screen (shown, not yet answered):
    (pair id, round index, image a id, image b id, shown)."""
    shown = select(PairShow.pair_id).where(PairShow.rater_id == rater_id)
    rows = session.execute(
        select(ComparisonPair.id, Round.index, ComparisonPair.image_a_id, ComparisonPair.image_b_id,
               ComparisonPair.id.in_(shown))
        .join(Round, Round.id == ComparisonPair.round_id)
        .where(*_unvoted(experiment_id, rater_id, kind))
    ).all()
    rows = [(pid, index, a, b, bool(on_screen)) for pid, index, a, b, on_screen in rows]
    if kind != "ab" or not rows:
        return rows
    met = _met_images(session, experiment_id, rater_id, kind)
    # a pair's own showing does not withhold it: the pair on screen is offered again until it is answered
    return [row for row in rows if met.get(row[2], set()) <= {row[0]} and met.get(row[3], set()) <= {row[0]}]


def _met_images(session: Session, experiment_id: int, rater_id: int, kind: str) -> dict[int, set[int]]:
    """Image id -> the pairs holding it, of every pair of this kind in the experiment that the rater has met: voted
    on, skipped, or been shown (``serve_pair``)."""
    met: dict[int, set[int]] = {}
    for table in (ComparisonVote, PairSkip, PairShow):
        for pid, a, b in session.execute(
                select(ComparisonPair.id, ComparisonPair.image_a_id, ComparisonPair.image_b_id)
                .join(table, table.pair_id == ComparisonPair.id)
                .where(ComparisonPair.experiment_id == experiment_id, ComparisonPair.kind == kind,
                       table.rater_id == rater_id)):
            met.setdefault(a, set()).add(pid)
            met.setdefault(b, set()).add(pid)
    return met


def may_answer(*, session: Session, pair_id: int, rater_id: int) -> bool:
    """Whether the rater may vote on (or skip) ``pair``: one they voted on already (they change their choice), or one
    ``_offerable`` would offer them. A page's pair id can be edited: without this a rater voted on a pair the blind
    rule withholds, meeting one image twice, or on a pair they had set aside (found by review)."""
    pair = get_pair(session=session, pair_id=pair_id)
    if session.scalar(select(ComparisonVote.id).where(ComparisonVote.pair_id == pair.id,
                                                      ComparisonVote.rater_id == rater_id)) is not None:
        return True
    return any(pid == pair.id for pid, _ in _offerable(session, pair.experiment_id, rater_id, pair.kind))


def next_pair(*, session: Session, experiment_id: int, rater_id: int, kind: str) -> ComparisonPair | None:
    """A pair of this kind the rater may vote on (``_offerable``), or None when none is left. Reads only: the page
    calls ``serve_pair``, which records the showing.

    A pair shown to the rater and not yet answered comes first; then the newest round's pairs; within a round the
    order is a hash of (pair, rater), so raters see the pairs in different, stable orders (a page reload shows the
    same pair)."""
    rows = _offerable_rows(session, experiment_id, rater_id, _kind(kind))
    if not rows:
        return None
    chosen = min(rows, key=lambda row: _offer_order(row[0], row[1], rater_id, row[4]))[0]
    return session.get(ComparisonPair, chosen)


def serve_pair(*, session: Session, experiment_id: int, rater_id: int, kind: str) -> ComparisonPair | None:
    """``next_pair``, recorded as shown to the rater (``pair_shows``): until they vote on it or skip it, it is offered
    to them again, first, and its images count as met, so no pair added while it is on screen (a new round's eval
    grid, ``app.ab.add_dependent_pairs``) is offered with one of them (found by review: newest round first, the next
    page showed such a pair, its shared image always the old side).

    The rater's row is locked first, as a vote locks it: two pages served at once both chose before either recorded
    its showing (PostgreSQL); now they are served one at a time and the second shows the first's pair."""
    session.scalars(select(Rater.id).where(Rater.id == rater_id).with_for_update()).all()
    pair = next_pair(session=session, experiment_id=experiment_id, rater_id=rater_id, kind=kind)
    if pair is not None:
        session.execute(repo._dialect_insert(session)(PairShow)
                        .values(pair_id=pair.id, rater_id=rater_id, created_at=utcnow())
                        .on_conflict_do_nothing(index_elements=[PairShow.pair_id, PairShow.rater_id]))
    return pair


def _offer_order(pair_id: int, round_index: int, rater_id: int, shown: bool = False) -> tuple[bool, int, bytes]:
    """``next_pair`` offers the offerable pair with the smallest key: the pair on the rater's screen first, then the
    newest round, then a hash."""
    return not shown, -round_index, hashlib.sha256(f"{pair_id}:{rater_id}".encode()).digest()


def count_unvoted(*, session: Session, experiment_id: int, rater_id: int, kind: str) -> int:
    """How many more pairs of this kind ``next_pair`` will offer the rater if they answer each in turn (and no pair
    is added meanwhile).

    For blind A/B pairs this is fewer than ``_offerable`` holds: two offerable pairs can share an image (a cell's
    pairs against the previous round and against the base, or a round's and its parent's pair of one cell), and
    once the rater answers one the other is withheld. So the pairs are walked in ``next_pair``'s order, keeping each
    whose images no pair kept before holds."""
    rows = _offerable_rows(session, experiment_id, rater_id, _kind(kind))
    if kind != "ab":
        return len(rows)
    met: set[int] = set()
    count = 0
    for _, _, a, b, _ in sorted(rows, key=lambda row: _offer_order(row[0], row[1], rater_id, row[4])):
        if a not in met and b not in met:
            met.update((a, b))
            count += 1
    return count


# ---------------------------------------------------------------------------------------------
# votes
# ---------------------------------------------------------------------------------------------


def record_vote(*, session: Session, pair_id: int, rater_id: int, choice: str) -> ComparisonVote:
    """Record the rater's choice on a pair: 'a' (left), 'b' (right) or 'tie'. Voting again edits the choice.

    A vote takes back the rater's skip of the pair, if any, as a rating takes back a skip of its image
    (``repo.add_rating``): a rater answers a pair once, by a vote or a skip (``record_skip`` refuses a voted pair). A
    preference pair skipped and then voted on through the API (its id kept, or a second tab) kept the skip beside the
    vote, so the ratings dataset held a skip and a vote of one rater on one pair (found by review, 5 Dec 2026)."""
    if choice not in VOTE_CHOICES:
        raise InvalidInput(f"a vote must be one of {list(VOTE_CHOICES)} ('a' left, 'b' right), got {choice!r}")
    pair = get_pair(session=session, pair_id=pair_id)
    repo.get_rater(session=session, rater_id=_id("rater id", rater_id))
    now = utcnow()
    insert = repo._dialect_insert(session)
    stmt = (
        insert(ComparisonVote)
        .values(pair_id=pair.id, rater_id=rater_id, choice=choice, created_at=now, updated_at=now)
        .on_conflict_do_update(index_elements=[ComparisonVote.pair_id, ComparisonVote.rater_id],
                               set_={"choice": choice, "updated_at": now})
        .returning(ComparisonVote)
    )
    vote = session.scalars(stmt, execution_options={"populate_existing": True}).one()
    session.execute(delete(PairSkip).where(PairSkip.pair_id == pair.id, PairSkip.rater_id == rater_id))
    return vote


@dataclass(frozen=True)
class VoteRow:
    pair_id: int
    round_id: int  # the pair's round
    rater_id: int
    choice: str
    image_a_id: int
    image_b_id: int


def votes(*, session: Session, experiment_id: int, kind: str, round_id: int | None = None) -> list[VoteRow]:
    """Every vote on the experiment's pairs of this kind (optionally of one round), oldest pair first."""
    stmt = (
        select(ComparisonVote.pair_id, ComparisonPair.round_id, ComparisonVote.rater_id, ComparisonVote.choice,
               ComparisonPair.image_a_id, ComparisonPair.image_b_id)
        .join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
        .where(ComparisonPair.experiment_id == experiment_id, ComparisonPair.kind == _kind(kind))
    )
    if round_id is not None:
        stmt = stmt.where(ComparisonPair.round_id == round_id)
    return [VoteRow(*row) for row in session.execute(stmt.order_by(ComparisonPair.id, ComparisonVote.rater_id))]


# ---------------------------------------------------------------------------------------------
# lineage (rollback)
# ---------------------------------------------------------------------------------------------


def set_round_parent(*, session: Session, round_id: int, parent_round_id: int | None) -> Round:
    """Record that round ``round_id`` was trained from ``parent_round_id``'s adapter (None: the previous index)."""
    round_ = repo.get_round(session=session, round_id=_id("round id", round_id))
    if parent_round_id is not None:
        parent = repo.get_round(session=session, round_id=_id("parent round id", parent_round_id))
        if parent.experiment_id != round_.experiment_id or parent.index >= round_.index:
            raise InvalidInput(f"round {round_.index} can only be trained from an earlier round of its own experiment, "
                               f"not from round {parent.index} of experiment {parent.experiment_id}")
    round_.parent_round_id = parent_round_id
    session.flush()
    return round_


def parent_of(*, session: Session, round_id: int) -> Round | None:
    """The round whose model round ``round_id`` was trained from: its recorded parent, else index - 1; None for round 0."""
    round_ = repo.get_round(session=session, round_id=round_id)
    if round_.parent_round_id is not None:
        return repo.get_round(session=session, round_id=round_.parent_round_id)
    if round_.index == 0:
        return None
    return repo.get_round_by_index(session=session, experiment_id=round_.experiment_id, index=round_.index - 1)


def lineage(*, session: Session, round_id: int) -> list[Round]:
    """The rounds round ``round_id``'s model descends from, root (round 0) first and ending with the round itself:
    ``parent_of`` followed back to round 0. Rounds abandoned by a rollback are not in it."""
    chain = [repo.get_round(session=session, round_id=_id("round id", round_id))]
    while (parent := parent_of(session=session, round_id=chain[-1].id)) is not None:
        if parent.index >= chain[-1].index:  # set_round_parent refuses this; a hand-edited row could still hold it
            raise Conflict(f"round {chain[-1].index} records round {parent.index} as its parent; a parent must be earlier")
        chain.append(parent)
    return chain[::-1]


# ---------------------------------------------------------------------------------------------
# A/B win rates
# ---------------------------------------------------------------------------------------------


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion ``successes / n`` (``successes`` may hold halves for ties)."""
    if n <= 0:
        raise InvalidInput(f"an interval needs at least one vote, got n={n}")
    if not 0 <= successes <= n:
        raise InvalidInput(f"successes must be between 0 and n={n}, got {successes}")
    return wilson_bounds(successes, n, z)


def _voted_pairs(votes_by_pair: Sequence[tuple[int, int, int]], what: str = "pair") -> list[tuple[int, int, int]]:
    """Each pair's (or rater's: ``what``) (wins, losses, ties), checked (InvalidInput, one sentence), those without
    votes left out."""
    counts = []
    for pair in votes_by_pair:
        if (not isinstance(pair, tuple | list) or len(pair) != 3
                or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in pair)):
            raise InvalidInput(f"each {what}'s votes must be (wins, losses, ties), whole numbers >= 0, got {pair!r}")
        if sum(pair) > 0:
            counts.append(tuple(pair))
    return counts


RATERS_TO_GENERALISE = 15
"""The fewest raters from which the A/B interval generalises over raters (two-way clustering); below it the interval
is about these raters (``clustered_win_interval``). The smallest count whose t quantile at raters - 1 df is within 10%
of the normal's: t975(14) = 2.1448 is 9.4% above 1.95996, t975(13) = 2.1604 10.2% (fourteenth review, chosen before
it was measured, BENCHMARKS.md)."""


def _residual_variance(counts: list[tuple[int, int, int]], rate: float, n: int) -> float:
    """The pooled rate's cluster-robust variance over these clusters' (wins, losses, ties)
    (``seiko_core.stats.cluster_variance``; K >= 2 clusters, s_j a cluster's score, n_j its votes)."""
    return cluster_variance((w + t / 2 - (w + los + t) * rate for w, los, t in counts), n)


def generalises_over_raters(raters: int | None, generalise_from: int = RATERS_TO_GENERALISE) -> bool:
    """Whether the A/B interval of votes by ``raters`` raters (those with votes; None: unknown) generalises over
    raters like these (two-way clustering, ``clustered_win_interval``) rather than being about these raters (pairs
    only): ``raters >= generalise_from`` (and at least 2). Each vote its own rater is the pairs' interval either way
    (the two-way formula reduces to it)."""
    return raters is not None and raters >= max(2, generalise_from)


def clusters_by_rater(raters: int | None, n: int, generalise_from: int = RATERS_TO_GENERALISE) -> bool:
    """Whether a share of ``n`` votes (or ratings) by ``raters`` raters is clustered by rater as well as by its items
    (two-way, ``seiko_core.stats.two_way_variance``): the raters generalise (``generalises_over_raters``) and some
    rater voted more than once (raters < n; each vote its own rater reduces to the items alone). The one gate of the
    A/B win rate (``clustered_win_interval``) and the dashboard's liked share and mean rating (``app.taste_stats``)."""
    return raters is not None and generalises_over_raters(raters, generalise_from) and raters < n


def clustered_win_interval(votes_by_pair: Sequence[tuple[int, int, int]],
                           votes_by_rater: Sequence[tuple[int, int, int]] | None = None, *,
                           generalise_from: int = RATERS_TO_GENERALISE) -> tuple[float, float]:
    """Wilson's interval for the pooled win rate ``(wins + ties / 2) / N`` of votes clustered by pair: Wilson at the
    effective number of votes ``N / deff`` (never more than N), ``deff`` the ratio of the rate's cluster-robust
    variance over the K pairs with votes, ``K / (K - 1) * sum_j (s_j - n_j rate)^2 / N^2`` (s_j the pair's score,
    n_j its votes), to the variance as if the N votes were independent, ``sum_i (y_i - rate)^2 / ((N - 1) N)``
    (y_i a vote's 1, 1/2 or 0). One vote on every pair: exactly Wilson's interval over the N votes. Every vote the
    same (no spread to measure deff by) and one pair (no variance between pairs): deff 1, at t with max(1, K - 1)
    df (thirteenth review; they were the K pairs as K trials and one vote's worth, at 1.96), as ``app.taste_stats``.

    The rule is ``seiko_core.stats.clustered_wilson``, shared with the dashboard's liked share (``app.taste_stats``).
    Where the pairs hold several votes and the votes differ (2 <= K < N), the interval rests on the variance over the
    K pairs, estimated with K - 1 degrees of freedom, so it is Wilson at ``N / max(1, deff)`` at Student's t,
    ``seiko_core.stats.t975(K - 1)`` (2.1314 at the 16 pairs of a round, 1.9720 at 200), whatever deff is: a deff at
    or below 1 (the votes on a pair disagree as much as independent ones, or more) never narrows it below Wilson over
    the N votes at that t. Continuous in deff (eleventh review): it was the normal 1.96 at deff <= 1 and t above, so
    one vote moved between two of 16 pairs (deff 0.996 to 1.029) widened the interval by 10%, and 2 pairs gave
    [0.14, 0.69] for 3 wins in 8 votes (deff 0.47) but [0.01, 0.99] for 4 in 10 (deff 1.5); with weak pair effects
    deff is at or below 1 by chance in nearly half the draws (874 of 2000 in ``app.tools.ab_coverage``'s cell k = 32,
    64 votes, p = 0.5), and a deff of exactly 1 computed as 1 + 2e-16 chose t, as 1.0 the normal.
    At the normal 1.96, Wilson's own interval (no variance estimated from a spread): one vote on every pair
    (independent votes; which case applies is the design, never an estimate). Every vote the same is the limit of
    one vote lost (thirteenth review): 16 pairs of 16 votes all won give [0.983, 1], one lost [0.975, 0.999] (deff
    exactly 1 there); they were [0.806, 1] (the K pairs as K trials at 1.96) and [0.975, 0.999]. One pair: Wilson
    over its votes at t with 1 df, never narrower than two pairs with the same votes (it was one vote's worth).

    Measured (``tests/app/test_stats_reference.py``, 2000 draws, seed 0; re-measured after the eleventh review made
    the rule continuous: no draw there had deff <= 1, so the figures stood): at 16 pairs of 16 votes each the normal
    quantile held the true rate in 93.6% / 93.5% of draws (p = 0.5 / 0.7), t in 95.85% / 95.3% (8% wider); at 200
    pairs 94.8% / 94.8% and 95.0% / 94.9% (0.6% wider; with the table's 1.980 it was 95.0% / 95.0%, 1% wider).
    Where the pair effects are weak and pairs hold 4 votes, deff is often at or below 1 and t makes the interval
    conservative: ``python -m app.tools.ab_coverage`` (k = 32, 64 votes) 0.979 / 0.965 at p = 0.5 / 0.7, where 1.96
    at deff <= 1 gave 0.961 / 0.951 (BENCHMARKS.md).

    Chosen over ``pair_bootstrap_interval`` for the dashboard: it needs no random draws (the table does not change
    between refreshes), is Wilson's interval itself when every pair has one vote, and keeps Wilson's ends inside
    [0, 1]; a percentile bootstrap over the 16 pairs of a round is itself too narrow (it has no small-sample
    correction) and says nothing below two pairs.

    Raters (fourteenth review). ``votes_by_rater`` (each rater's (wins, losses, ties) over the same votes, as
    ``ab_win_rates`` gives them) makes the interval about the population of raters as well as of pairs: one rater's
    votes across pairs move together when raters differ in taste, and with pairs alone the interval held the true
    rate in only 0.76-0.80 of draws at a rater logit sd of 1.0 (BENCHMARKS.md). The rule, stated before it was
    measured: two-way cluster-robust variance (Cameron, Gelbach and Miller 2011),
    ``V = V_pair + V_rater - V_pair∩rater``, each term ``K / (K - 1) * sum_c (s_c - n_c rate)^2 / N^2`` over its
    clusters c; a rater votes at most once on a pair (the table's unique (pair, rater)), so the pair∩rater clusters
    are the N single votes and that term is exactly the independent-vote variance above, and ``deff = V / that``
    is ``deff_pair + deff_rater - 1``; Student's t at ``min(K_pair, K_rater) - 1`` df (the fewer clusters bound
    how well V is known), in ``clustered_wilson`` with ``k = min(K_pair, K_rater)``. It applies where the votes
    have at least ``generalise_from`` raters (15, "Which raters" below; it was 2 for a while that day) and some rater
    voted more than once (generalise_from <= K_rater < N); otherwise the rule above,
    unchanged: each vote its own rater (K_rater = N; the two-way formula gives exactly the pairs' interval then),
    raters unknown (``votes_by_rater`` None), or one rater (K_rater = 1: nothing measures how raters differ, so the
    interval is about that rater's own preference over the population of pairs, as before). With one vote on every
    pair and raters voting on several, it is the raters' one-way interval (deff_pair is exactly 1). Every vote the
    same, or ``min(K_pair, K_rater)`` of 1: deff 1, as above. The price, while it applied from 2 raters: with 2 raters t
    had 1 df (12.7), so the interval was nearly [0, 1] (two raters say little about raters in general).

    Which raters (fourteenth review, second rule, stated in BENCHMARKS.md before it was measured): the two-way
    interval applies only from ``generalise_from`` raters (``RATERS_TO_GENERALISE``, 15: the smallest count whose
    t975(raters - 1) is within 10% of the normal's 1.96). With fewer raters the question is which model these raters
    prefer (a team of 2-4 is this product's usual case; the raters are fixed, not a sample, as one rater already
    was): the interval is about these raters' mean preference over the population of pairs, clustered by pair only,
    at t with pairs - 1 df, exactly the interval without ``votes_by_rater``. The two-way one with 2 raters was nearly
    [0, 1] and with 4 raters held the rate in 0.97-0.998 of draws even where raters agreed. ``generalise_from`` other
    than the default is for measuring (``app.tools.ab_coverage``); ``generalises_over_raters`` says which applies."""
    counts = _voted_pairs(votes_by_pair)
    if not counts:
        raise InvalidInput("an interval needs at least one vote, got none")
    n = sum(sum(c) for c in counts)
    wins, losses, ties = (sum(c[i] for c in counts) for i in range(3))
    raters = None if votes_by_rater is None else _voted_pairs(votes_by_rater, "rater")
    if raters is not None:
        rater_totals = [sum(c[i] for c in raters) for i in range(3)]
        if rater_totals != [wins, losses, ties]:
            raise InvalidInput(f"the raters' votes add up to {rater_totals}, not the pairs' {[wins, losses, ties]}")
        if not clusters_by_rater(len(raters), n, generalise_from):  # pairs only (docstring)
            raters = None
    rate = (wins + ties / 2) / n
    k = len(counts) if raters is None else min(len(counts), len(raters))
    if (raters is None and k == n) or k < 2:  # one vote on every pair, or one cluster: no design effect to estimate
        return clustered_wilson(wins + ties / 2, n, k, None)
    spread = wins * (1 - rate) ** 2 + ties * (0.5 - rate) ** 2 + losses * rate ** 2
    if spread == 0:  # every vote the same: no spread to measure a design effect by
        return clustered_wilson(wins + ties / 2, n, k, None)
    independent = spread / ((n - 1) * n)
    cluster = _residual_variance(counts, rate, n)
    if raters is not None:  # two-way: V_pair + V_rater - V_pair∩rater, the last the N single votes' (docstring)
        cluster, k = two_way_variance(cluster, len(counts), _residual_variance(raters, rate, n), len(raters),
                                      independent)
    return clustered_wilson(wins + ties / 2, n, k, cluster / independent)


def win_stats(wins: int, losses: int, ties: int, pairs: int = 0,
              by_pair: Sequence[tuple[int, int, int]] | None = None,
              by_rater: Sequence[tuple[int, int, int]] | None = None) -> dict[str, Any]:
    """{wins, losses, ties, n, pairs, raters, over_raters, rate, ci95}: ties count half; rate and ci95 are None
    without votes. ``raters`` is how many raters voted (None without ``by_rater``); ``over_raters`` whether ci95
    generalises over raters like these (True: ``RATERS_TO_GENERALISE`` or more raters, two-way) or is about these
    raters (False), None without ``by_rater`` or votes (``generalises_over_raters``).

    ``pairs`` is how many distinct pairs the n votes are on: votes on the same pair (same prompt and seed) are not
    independent evidence about the model, so an interval over n votes on few pairs is narrower than it should be.
    ``by_pair`` (each pair's (wins, losses, ties), summing to the totals): ci95 is ``clustered_win_interval``, which
    allows for that; without it, Wilson's interval over the n votes as independent trials. ``by_rater`` (each rater's
    (wins, losses, ties) over the same votes; only with ``by_pair``) allows for one rater's votes across pairs too
    (``clustered_win_interval``: two-way clustering over pairs and raters)."""
    n = wins + losses + ties
    if n == 0:
        return {"wins": 0, "losses": 0, "ties": 0, "n": 0, "pairs": 0, "raters": None, "over_raters": None,
                "rate": None, "ci95": None}
    score = wins + ties / 2
    if by_pair is None:
        if by_rater is not None:
            raise InvalidInput("the raters' votes need each pair's votes too (by_pair)")
        lo, hi = wilson_interval(score, n)
    else:
        totals = [sum(c[i] for c in by_pair) for i in range(3)]
        if totals != [wins, losses, ties]:
            raise InvalidInput(f"the pairs' votes add up to {totals}, not the totals {[wins, losses, ties]}")
        lo, hi = clustered_win_interval(by_pair, by_rater)
    raters = None if by_rater is None else len(_voted_pairs(by_rater, "rater"))
    return {"wins": wins, "losses": losses, "ties": ties, "n": n, "pairs": pairs, "raters": raters,
            "over_raters": None if raters is None else generalises_over_raters(raters), "rate": score / n,
            "ci95": [lo, hi]}


def ab_win_rates(*, session: Session, experiment_id: int) -> dict[int, dict[str, Any]]:
    """Per trained round index r >= 1 that has A/B pairs: its win rate against the round it was trained from
    ("vs_previous", the recorded parent on a rolled-back branch) and against the base model ("vs_base", round 0),
    with ``parent_index``. When the parent is round 0 the two are the same votes."""
    repo.get_experiment(session=session, experiment_id=experiment_id)
    rounds = {r.id: r for r in repo.list_rounds(session=session, experiment_id=experiment_id)}
    base = next((r for r in rounds.values() if r.index == 0), None)
    parents = {rid: parent_of(session=session, round_id=rid) for rid in rounds}  # once per round, not per vote
    image_a, image_b = aliased(Image), aliased(Image)
    rows = session.execute(
        select(ComparisonPair.id, ComparisonPair.round_id, image_a.round_id, image_b.round_id, ComparisonVote.choice,
               ComparisonVote.rater_id)
        .join(image_a, image_a.id == ComparisonPair.image_a_id)
        .join(image_b, image_b.id == ComparisonPair.image_b_id)
        .outerjoin(ComparisonVote, ComparisonVote.pair_id == ComparisonPair.id)
        .where(ComparisonPair.experiment_id == experiment_id, ComparisonPair.kind == "ab")
    ).all()
    tallies: dict[int, dict[str, list[int]]] = {}
    voted_pairs: dict[tuple[int, str], dict[int, list[int]]] = {}  # each pair's (wins, losses, ties)
    voted_raters: dict[tuple[int, str], dict[int, list[int]]] = {}  # each rater's (wins, losses, ties)
    for pair_id, pair_round, round_a, round_b, choice, rater_id in rows:
        if (round_a == pair_round) == (round_b == pair_round):
            raise Conflict(f"an A/B pair of round id {pair_round} has images of rounds {round_a} and {round_b}; "
                           "exactly one side must be the pair's own round")
        new_side, opponent = ("a", round_b) if round_a == pair_round else ("b", round_a)
        parent = parents[pair_round]
        against = []
        if parent is not None and opponent == parent.id:
            against.append("vs_previous")
        if base is not None and opponent == base.id:
            against.append("vs_base")
        if not against:
            raise Conflict(f"an A/B pair of round {rounds[pair_round].index} compares it with round "
                           f"{rounds[opponent].index}, which is neither its parent nor the base model")
        tally = tallies.setdefault(pair_round, {"vs_previous": [0, 0, 0], "vs_base": [0, 0, 0]})
        if choice is None:  # a pair nobody voted on yet
            continue
        slot = 2 if choice == "tie" else (0 if choice == new_side else 1)
        for name in against:
            tally[name][slot] += 1
            voted_pairs.setdefault((pair_round, name), {}).setdefault(pair_id, [0, 0, 0])[slot] += 1
            voted_raters.setdefault((pair_round, name), {}).setdefault(rater_id, [0, 0, 0])[slot] += 1
    out: dict[int, dict[str, Any]] = {}
    for round_id, tally in sorted(tallies.items(), key=lambda item: rounds[item[0]].index):
        parent = parents[round_id]
        out[rounds[round_id].index] = {"parent_index": None if parent is None else parent.index}
        for name in ("vs_previous", "vs_base"):
            by_pair = [tuple(c) for c in voted_pairs.get((round_id, name), {}).values()]
            by_rater = [tuple(c) for c in voted_raters.get((round_id, name), {}).values()]
            out[rounds[round_id].index][name] = win_stats(*tally[name], len(by_pair), by_pair, by_rater)
    return out


def pair_bootstrap_interval(votes_by_pair: Sequence[tuple[int, int, int]], *, level: float = 0.95,
                            resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """A percentile bootstrap interval for the win rate that resamples whole pairs instead of single votes.

    ``votes_by_pair`` holds one ``(wins, losses, ties)`` per pair. Each resample draws as many pairs as there are,
    with replacement, and takes the pooled rate ``(wins + ties / 2) / n`` of the drawn pairs' votes; the interval is
    the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of those rates. Votes on one pair move together, so this
    reads the spread between pairs rather than assuming independent votes (app.tools.ab_coverage measures both).
    Pairs without votes are left out; at least two pairs with votes are needed. ``seed`` makes it repeatable."""
    if not 0 < level < 1:
        raise InvalidInput(f"level must be between 0 and 1, got {level!r}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise InvalidInput(f"resamples must be a whole number of at least 100, got {resamples!r}")
    counts = _voted_pairs(votes_by_pair)
    if len(counts) < 2:
        raise InvalidInput(f"a bootstrap over pairs needs at least two pairs with votes, got {len(counts)}")
    import numpy as np

    arr = np.asarray(counts, dtype=float)
    score, n = arr[:, 0] + arr[:, 2] / 2, arr.sum(axis=1)
    draw = np.random.default_rng(seed).integers(0, len(counts), size=(resamples, len(counts)))
    rates = score[draw].sum(axis=1) / n[draw].sum(axis=1)
    lo, hi = np.quantile(rates, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
