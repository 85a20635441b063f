"""Pairwise preferences in the product (issue 14, item 1): a rater compares two query images of the same prompt
(left, right or tie) instead of, or besides, rating each on 1-10; images alone with their prompt are compared with
each other.

The setting. ``feedback`` in the experiment's app options (``app.experiment_options``, stored in
``Experiment.config["app"]``): ``"scores"`` (1-10 ratings only, the default), ``"pairs"`` (comparisons only: the
Rate tab offers nothing, the Compare tab everything) or ``"both"``. An admin changes it on the Admin tab
(:func:`set_feedback`: admins only, audit-logged); it applies at once to the open round (its pairs are made then)
and to every round generated afterwards.

The pairs. When a round's query images are published (the worker's generate job) and the setting asks for
comparisons, :func:`create_round_pairs` groups the round's query images by prompt and pairs them inside each
group: two images make one pair, m >= 3 images make a cycle of m pairs (1-2, 2-3, ..., m-1), so every image is
compared twice and the pairs of a prompt are connected; the images alone with their prompt are paired the same
way among themselves, across prompts (one lone image is not compared). Left and
right are drawn per pair from a hash of (experiment, round, pair), so the same re-run makes the same pairs. Rows
are ``db.comparisons`` pairs of kind ``'preference'``.

Votes. :func:`vote_in_session` records one rater's choice ('a' left, 'b' right, 'tie'; keys ``left``/``right``
accepted too) while the pair's round is open for labeling; the round is locked FOR SHARE first, as a rating does,
so closing a round waits for votes in flight and no vote lands after the close. A pair is offered to a rater who
has not voted on it (nor skipped it) while it has fewer votes than the experiment's overlap; voting again on the
same pair edits the vote. ``skip`` (can't judge, an image that does not load) sets the pair aside for that rater:
not offered to them again, no vote, no label, nothing in training (before 3 Dec 2026 the only way past a pair was
a vote, so "can't judge" went into training as a tie); a vote on it later (the API) takes the skip back. Bad input
is refused with one sentence and writes nothing.

Budget. With ``"pairs"`` a round's labels are pair votes: progress counts votes (at most ``overlap`` per pair)
against pairs x overlap, and a round can be closed once it has a vote. With ``"both"`` ratings count as before
and votes are extra labels.

Training (:func:`training_feedback`): the worker's train job takes every image that was rated (up to the job's
rating watermark) or compared, its mean score (NaN when only compared; no scores at all with ``"pairs"``) and one
comparison row (i, j, outcome) per vote on a preference pair of the rounds up to the one being trained (outcome 1:
left preferred, 0: right, 0.5: tie). ``seiko_core.loop.train_round(..., pairs=...)`` fits the ensemble with
``seiko_core.preference.fit_preference_reward`` (Bradley-Terry on pairs, regression on scores).
"""

from __future__ import annotations

import hashlib
import html
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import members
from app.auth import Who, require_admin
from db import comparisons, repo
from db.checks import MAX_ID, shown, whole_number
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import ComparisonPair, ComparisonVote, Experiment, Image, Round

FEEDBACKS = ("scores", "pairs", "both")
APP_KEY = "app"  # Experiment.config's app-level settings (app.experiment_options)
KIND = "preference"
CHOICE_ALIASES = {"a": "a", "left": "a", "b": "b", "right": "b", "tie": "tie", "skip": "skip"}
SKIP = "skip"  # not a vote: the pair is set aside for this rater (db.comparisons.record_skip), counted nowhere
OUTCOME = {"a": 1.0, "b": 0.0, "tie": 0.5}  # the left image's (i's) share of the win

log = logging.getLogger("seiko.pairwise")


# ---------------------------------------------------------------------------------------------
# the setting
# ---------------------------------------------------------------------------------------------


def check_feedback(value: Any) -> str:
    if value not in FEEDBACKS:
        raise InvalidInput(f"unknown feedback {value!r}; choose from {list(FEEDBACKS)} (1-10 scores, pairwise "
                           "comparisons, or both)")
    return value


def feedback_of(experiment: Experiment) -> str:
    """The experiment's feedback setting: 'scores' (the default), 'pairs' or 'both' (``config["app"]["feedback"]``,
    the key ``app.experiment_options`` reads and checks too)."""
    config = experiment.config if isinstance(experiment.config, dict) else {}
    options = config.get(APP_KEY) or {}
    if not isinstance(options, dict):
        raise InvalidInput(f"the experiment's {APP_KEY!r} settings must be a JSON object, got {type(options).__name__}")
    return check_feedback(options.get("feedback", "scores"))


def wants_pairs(feedback: str) -> bool:
    return feedback in ("pairs", "both")


def wants_scores(feedback: str) -> bool:
    return feedback in ("scores", "both")


def set_feedback(factory, who: Who, experiment_id: int, feedback: Any) -> str:
    """An admin sets the experiment's feedback (checked, audit-logged); with comparisons asked, the open round's
    pairs are made now. Returns a sentence for the admin."""
    require_admin(who)
    feedback = check_feedback(feedback)
    made = 0
    with write_session(factory) as s:
        # locked: the config is rewritten whole, and another admin's change of it meanwhile was undone (review)
        experiment = repo.lock_experiment(session=s, experiment_id=int(experiment_id))
        config = dict(experiment.config or {})
        config[APP_KEY] = {**(config.get(APP_KEY) or {}), "feedback": feedback}
        experiment.config = config
        if wants_pairs(feedback):
            open_ = repo.get_open_round(session=s, experiment_id=experiment.id)
            if open_ is not None:
                made = create_round_pairs(session=s, experiment_id=experiment.id, round_id=open_.id)
        repo.add_audit(session=s, actor_id=who.rater_id, actor_name=who.name, action="experiment.feedback",
                       target=f"experiment {experiment.id}", detail={"feedback": feedback, "pairs_made": made})
    what = {"scores": "1-10 scores", "pairs": "pairwise comparisons", "both": "1-10 scores and pairwise comparisons"}
    extra = f" {made} pairs were made for the open round." if made else ""
    return f"Raters now give {what[feedback]} on experiment {experiment_id}.{extra}"


# ---------------------------------------------------------------------------------------------
# making the pairs
# ---------------------------------------------------------------------------------------------


def _bit(*parts: Any) -> bool:
    return hashlib.sha256(":".join(map(str, ("seiko-pairs", *parts))).encode()).digest()[0] & 1 == 1


def plan_pairs(images: Sequence[tuple[int, str, int]], *, salt: Any = "") -> list[tuple[int, int]]:
    """(left, right) image ids for ``images`` = [(image id, prompt, seed), ...]: pairs within each prompt's group.

    A group of 2 gives one pair; a group of m >= 3 the cycle of m pairs through its images in (seed, id) order. The
    images alone with their prompt are linked the same way among themselves, across prompts (in prompt order), so a
    round whose prompts are all different still gets pairs (before, it got none and could never be closed with
    comparisons only); a single lone image is not compared. The sides of each pair are swapped or not by a hash of
    (``salt``, the two ids)."""
    groups: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for image_id, prompt, seed in images:
        groups[prompt].append((int(seed), int(image_id)))

    def cycle(ids: list[int]) -> list[tuple[int, int]]:
        m = len(ids)
        return [] if m < 2 else [(ids[0], ids[1])] if m == 2 else [(ids[k], ids[(k + 1) % m]) for k in range(m)]

    links: list[tuple[int, int]] = []
    alone: list[int] = []
    for prompt in sorted(groups):
        ids = [i for _, i in sorted(groups[prompt])]
        if len(ids) == 1:
            alone.append(ids[0])
        else:
            links += cycle(ids)
    links += cycle(alone)
    return [(b, a) if _bit(salt, min(a, b), max(a, b)) else (a, b) for a, b in links]


def create_round_pairs(*, session: Session, experiment_id: int, round_id: int) -> int:
    """Make the round's preference pairs from its query images, once (a round that has some is left alone);
    returns how many were made. Runs in the caller's transaction."""
    existing = session.scalar(select(func.count(ComparisonPair.id)).where(ComparisonPair.round_id == round_id,
                                                                          ComparisonPair.kind == KIND))
    if existing:
        return 0
    images = [(im.id, im.prompt, im.seed) for im in repo.list_images(session=session, round_id=round_id, kind="query")]
    planned = plan_pairs(images, salt=f"{experiment_id}:{round_id}")
    if planned:
        comparisons.create_pairs(session=session, experiment_id=experiment_id, round_id=round_id, kind=KIND,
                                 pairs=planned)
    return len(planned)


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairProgress:
    experiment: str | None
    round_index: int | None
    round_status: str | None
    feedback: str = "scores"
    pairs: int = 0  # preference pairs of the open round
    votes: int = 0  # all votes on them
    labels: int = 0  # votes that count: at most ``overlap`` per pair
    labels_wanted: int = 0  # pairs x overlap, less what skips leave nobody to give (``_wanted``)
    you_voted: int = 0
    you_left: int = 0  # pairs still offered to you

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _vote_counts(session: Session, round_id: int) -> dict[int, int]:
    rows = session.execute(
        select(ComparisonPair.id, func.count(ComparisonVote.id))
        .outerjoin(ComparisonVote, ComparisonVote.pair_id == ComparisonPair.id)
        .where(ComparisonPair.round_id == round_id, ComparisonPair.kind == KIND)
        .group_by(ComparisonPair.id)
    ).all()
    return {pid: int(n) for pid, n in rows}


def _mine(session: Session, round_id: int, rater_id: int) -> set[int]:
    return set(session.scalars(
        select(ComparisonVote.pair_id).join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
        .where(ComparisonPair.round_id == round_id, ComparisonPair.kind == KIND, ComparisonVote.rater_id == rater_id)
    ))


def _offered(session: Session, round_id: int, rater_id: int, overlap: int) -> list[int]:
    """Pair ids of the round the rater may vote on (not yet voted or skipped, fewer than ``overlap`` votes), in the
    rater's order."""
    counts = _vote_counts(session, round_id)
    mine = _mine(session, round_id, rater_id) | comparisons.skipped_pairs(session=session, rater_id=rater_id,
                                                                         pair_ids=counts)
    ids = [pid for pid, n in counts.items() if pid not in mine and n < overlap]
    return sorted(ids, key=lambda pid: hashlib.sha256(f"{rater_id}:{pid}".encode()).digest())


def _wanted(session: Session, round_id: int, counts: dict[int, int], overlap: int) -> int:
    """The votes the round's pairs want: per pair ``overlap``, or fewer when fewer accounts can still give them
    (enabled accounts less those who skipped it), but never fewer than it has. So a pair every rater skipped does
    not keep the round from being complete (auto-close), and with one rater a skip is not a wait for nobody. A closed
    round's is what it wanted when it closed (``repo.recorded_wanted``), not what today's accounts could give."""
    round_ = repo.get_round(session=session, round_id=round_id)
    recorded = repo.recorded_wanted(round_, KIND)
    return recorded if recorded is not None else repo.pair_votes_wanted(session, round_, counts, overlap)


def round_labels(session: Session, experiment: Experiment, round_: Round) -> tuple[int, int, str]:
    """(labels given, labels wanted, what they are) of a round: ratings, or pair votes with comparisons only."""
    if feedback_of(experiment) == "pairs":
        labels, wanted = round_vote_labels(session, round_.id, experiment.overlap)
        return labels, wanted, "comparisons"
    p = repo.round_progress(session=session, round_id=round_.id, kind="query")
    return p.labels, p.labels_wanted, "ratings"


def round_vote_labels(session: Session, round_id: int, overlap: int) -> tuple[int, int]:
    """(votes that count, votes wanted: ``_wanted``) of the round's preference pairs."""
    counts = _vote_counts(session, round_id)
    return sum(min(n, overlap) for n in counts.values()), _wanted(session, round_id, counts, overlap)


def progress(session: Session, experiment: Experiment | None, who: Who) -> PairProgress:
    return _progress(session, experiment, who)[0]


def _progress(session: Session, experiment: Experiment | None, who: Who) -> tuple[PairProgress, Round | None]:
    """``progress`` and the open round it was counted on (None when none is open). A caller that goes on with the
    open round takes this one: on PostgreSQL (READ COMMITTED) reading it again could find it closed meanwhile."""
    if experiment is None:
        return PairProgress(None, None, None), None
    feedback = feedback_of(experiment)
    round_ = repo.get_open_round(session=session, experiment_id=experiment.id)
    if round_ is None:
        rounds = repo.list_rounds(session=session, experiment_id=experiment.id)
        last = rounds[-1] if rounds else None
        return PairProgress(experiment.name, last.index if last else None, last.status if last else None, feedback), None
    counts = _vote_counts(session, round_.id)
    mine = _mine(session, round_.id, who.rater_id)
    overlap = experiment.overlap
    return PairProgress(
        experiment.name, round_.index, round_.status, feedback, pairs=len(counts), votes=sum(counts.values()),
        labels=sum(min(n, overlap) for n in counts.values()), labels_wanted=_wanted(session, round_.id, counts, overlap),
        you_voted=len(mine), you_left=len(_offered(session, round_.id, who.rater_id, overlap))), round_


def progress_html(p: PairProgress) -> str:
    if p.experiment is None:
        return "<div class='seiko-progress'>No experiment yet. An admin creates one on the <b>Admin</b> tab.</div>"
    if not wants_pairs(p.feedback):
        return (f"<div class='seiko-progress' id='pair-progress'><b>{html.escape(p.experiment)}</b> asks for 1-10 "
                "ratings, not comparisons: rate on the <b>Rate</b> tab.</div>")
    if p.round_status != "labeling":
        where = f"round {p.round_index} is {p.round_status}" if p.round_index is not None else "it has no round yet"
        return (f"<div class='seiko-progress' id='pair-progress'><b>{html.escape(p.experiment)}</b>: no round is open "
                f"({where}). New pairs appear here by themselves when the next round opens.</div>")
    pct = min(100.0, 100.0 * p.labels / p.labels_wanted) if p.labels_wanted else 0.0
    return (f"<div class='seiko-progress' id='pair-progress'><b>{html.escape(p.experiment)} · round {p.round_index}"
            f"</b>: <span id='pair-round-progress'><b>{p.labels} of {p.labels_wanted}</b> comparisons</span>"
            f"<div class='bar'><div style='width:{pct:.1f}%'></div></div>"
            f"<span class='you' id='pair-you'>You: <b>{p.you_voted} compared</b> this round, {p.you_left} left for you"
            "</span></div>")


# ---------------------------------------------------------------------------------------------
# choosing and voting
# ---------------------------------------------------------------------------------------------


def parse_choice(value: Any) -> str:
    """'a' (left), 'b' (right) or 'tie'; 'left' and 'right' are accepted. Anything else: one sentence."""
    key = value.strip().lower() if isinstance(value, str) else None
    if key not in CHOICE_ALIASES:
        raise InvalidInput(f"a comparison must be 'a' (the left image), 'b' (the right image), 'tie', or 'skip' (can't "
                           f"judge: not offered to you again), got {shown(value)}; nothing was saved")
    return CHOICE_ALIASES[key]


def parse_pair_id(value: Any) -> int:
    value = whole_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInput(f"a pair id must be a positive whole number, got {shown(value)}; nothing was saved")
    return value


class NotOffered(Conflict):
    """The pair is not (or no longer) offered to this rater."""


def vote_in_session(session: Session, who: Who, pair_id: int, choice: str) -> str | None:
    """Record the rater's choice on a preference pair of an open round; returns the previous choice (None if new).
    ``skip`` sets the pair aside for the rater instead (not offered again; no vote, no label).

    Raises a db error (one sentence) and writes nothing when the vote is refused."""
    pair = comparisons.get_pair(session=session, pair_id=pair_id)
    # the experiment shared, then the round, as a rating locks them (repo.lock_image_for_rating): a change of who may
    # rate it waits for the vote, or the vote for it (fifth review). A rater the experiment does not list: refused as
    # for a pair that does not exist (not its kind nor experiment), nothing saved, before the lock (a wait on an
    # admin's change told that it exists; sixth review) and again under it
    members.share(session, who, pair.experiment_id, unknown=comparisons.no_pair_with_id(pair_id))
    if pair.kind != KIND:
        raise Conflict(f"pair {pair_id} is a blind A/B pair, not a preference pair; it is voted on elsewhere")
    round_ = session.scalar(select(Round).where(Round.id == pair.round_id).with_for_update(read=True),
                            execution_options={"populate_existing": True})
    # then the pair itself (FOR UPDATE, as a rating locks its image): on PostgreSQL two raters racing for the last
    # vote a pair needs would otherwise both count the votes before either inserts, and both be saved
    session.scalars(select(ComparisonPair.id).where(ComparisonPair.id == pair_id).with_for_update()).all()
    if round_.status != "labeling":
        raise Conflict(f"round {round_.index} is closed for comparisons (it is {round_.status}); pair {pair_id} "
                       "was not saved")
    experiment = repo.get_experiment(session=session, experiment_id=round_.experiment_id)
    if not wants_pairs(feedback_of(experiment)):
        raise Conflict(f"experiment {experiment.name!r} asks for 1-10 ratings, not comparisons; nothing was saved")
    if choice == SKIP:
        comparisons.record_skip(session=session, pair_id=pair_id, rater_id=who.rater_id)
        return None
    previous = session.scalar(select(ComparisonVote.choice).where(ComparisonVote.pair_id == pair_id,
                                                                  ComparisonVote.rater_id == who.rater_id))
    if previous is None:
        n = session.scalar(select(func.count(ComparisonVote.id)).where(ComparisonVote.pair_id == pair_id))
        if n >= experiment.overlap:
            raise NotOffered(f"pair {pair_id} is not offered to you: other raters have already given the comparisons "
                             "it needs; nothing was saved")
    comparisons.record_vote(session=session, pair_id=pair_id, rater_id=who.rater_id, choice=choice)
    return previous


def submit_vote(factory, who: Who, pair_id: Any, choice: Any) -> dict[str, Any]:
    """Vote on one pair in its own transaction; returns what was saved and the progress."""
    pair_id, choice = parse_pair_id(pair_id), parse_choice(choice)
    with write_session(factory) as s:
        previous = vote_in_session(s, who, pair_id, choice)
        experiment_id = comparisons.get_pair(session=s, pair_id=pair_id).experiment_id
    after_vote(factory, pair_id)
    with read_session(factory) as s:
        p = progress(s, repo.get_experiment(session=s, experiment_id=experiment_id), who)
    return {"pair_id": pair_id, "choice": choice, "previous_choice": previous, "edited": previous is not None,
            "progress": p.as_dict()}


def after_vote(factory, pair_id: int) -> int | None:
    """The experiment option auto_close (app.auto_close) after a vote: with comparisons only, a round whose pairs
    have every vote they want is closed. A failure is logged with its traceback; the vote is already saved."""
    from app import auto_close

    try:
        with read_session(factory) as s:
            pair = comparisons.get_pair(session=s, pair_id=pair_id)
            round_ = repo.get_round(session=s, round_id=pair.round_id)
            experiment_id, index = round_.experiment_id, round_.index
        return auto_close.maybe_close(factory, experiment_id, index)
    except Exception:
        log.exception("auto-close after the vote on pair %d failed; the vote is saved, close the round by hand", pair_id)
        return None


@dataclass(frozen=True)
class PairView:
    """The next pair for a rater (``pair_id`` None when there is none) and what the Compare tab shows."""

    experiment_id: int | None
    pair_id: int | None
    prompt: str | None
    left: str | None  # data: URIs
    right: str | None
    progress: str
    message: str


def offered_pair(session: Session, experiment: Experiment | None,
                 who: Who) -> tuple[PairProgress, ComparisonPair | None, str]:
    """(the rater's progress, the next pair offered to them or None, why there is none) for the Pairs tab and the
    public API alike. Reads only: a pair is not reserved. The reason is '' when the experiment asks for no
    comparisons or no round is open (the progress says so); image ``a`` of the pair is shown on the left.

    The open round is read once, by the progress, and the pair chosen from it: read again, a close committed in
    between (PostgreSQL, READ COMMITTED) left it None and the API answered a bare "Error" (found by review). A pair of
    a round closed since is refused when voted on, as one offered just before the close is."""
    p, round_ = _progress(session, experiment, who)
    if experiment is None or round_ is None or not wants_pairs(p.feedback):
        return p, None, ""
    offered = _offered(session, round_.id, who.rater_id, experiment.overlap)
    if not offered:
        msg = (f"You have compared (or skipped) every pair of round {round_.index} that still needs a comparison. "
               "Thank you! "
               "The next round's pairs will appear here." if p.pairs else
               f"Round {round_.index} has no pairs to compare (it has fewer than two query images).")
        return p, None, msg
    return p, comparisons.get_pair(session=session, pair_id=offered[0]), ""


def next_pair(factory, data_dir, who: Who, experiment_id: int | None) -> PairView:
    from app import ui_rate

    with read_session(factory) as s:
        try:
            # one the rater may rate (app.members); the id is the page's state (app.ui's exp_state)
            experiment = ui_rate.pick_experiment(s, experiment_id, who, from_state=True)
        except NotFound as e:  # members.PAGE_EXPERIMENT_GONE: the tab (and its timer) shows it, and no pair
            return PairView(None, None, None, None, None, "", str(e))
        p, pair, msg = offered_pair(s, experiment, who)
        exp_id = experiment.id if experiment is not None else None
        if pair is None:
            return PairView(exp_id, None, None, None, None, progress_html(p), msg)
        a = repo.get_image(session=s, image_id=pair.image_a_id)
        b = repo.get_image(session=s, image_id=pair.image_b_id)
        prompt = " / ".join(dict.fromkeys([a.prompt, b.prompt]))  # two prompts for images alone with theirs
        return PairView(exp_id, pair.id, prompt, ui_rate.png_data_uri(data_dir, a), ui_rate.png_data_uri(data_dir, b),
                        progress_html(p), "")


# ---------------------------------------------------------------------------------------------
# training data for the worker
# ---------------------------------------------------------------------------------------------


@dataclass
class TrainingFeedback:
    image_ids: list[int]
    embeddings: np.ndarray  # (N, D) float32
    scores: np.ndarray | None  # (N,) mean score, NaN where only compared; None when no image was rated
    pairs: np.ndarray | None  # (P, 3) rows (i, j, outcome) into image_ids; None without votes
    n_ratings: int
    n_votes: int
    votes_sha256: str  # of the votes used, so a re-run can tell whether it trains on the same comparisons

    def snapshot(self) -> dict[str, Any]:
        return {"images": len(self.image_ids), "ratings": self.n_ratings, "votes": self.n_votes,
                "votes_sha256": self.votes_sha256}


def training_feedback(session: Session, *, experiment_id: int, up_to_round_index: int, feedback: str,
                      rated: Sequence[Any], scores: Sequence[float] | None = None) -> TrainingFeedback:
    """The reward fit's data: the ``rated`` snapshot rows (``repo.ratings_snapshot``; ignored with ``"pairs"``), with
    ``scores`` in their order (default: their mean scores), and every vote on the preference pairs of rounds
    ``<= up_to_round_index`` (ignored with ``"scores"``)."""
    check_feedback(feedback)
    rated = list(rated) if wants_scores(feedback) else []
    values = [r.mean_score for r in rated] if scores is None or not rated else list(scores)
    emb: dict[int, bytes] = {r.image_id: r.embedding for r in rated}
    dims = {r.embedding_dim for r in rated}
    score_of = {r.image_id: float(v) for r, v in zip(rated, values)}
    rows: list[tuple[int, int, str, int]] = []
    if wants_pairs(feedback):
        rounds = {r.id: r.index for r in repo.list_rounds(session=session, experiment_id=experiment_id)}
        for v in comparisons.votes(session=session, experiment_id=experiment_id, kind=KIND):
            if rounds.get(v.round_id, up_to_round_index + 1) <= up_to_round_index:
                rows.append((v.image_a_id, v.image_b_id, v.choice, v.rater_id))
    need = sorted({i for a, b, _, _ in rows for i in (a, b)} - set(emb))
    for image in (session.scalars(select(Image).where(Image.id.in_(need))) if need else []):
        emb[image.id] = bytes(image.embedding)
        dims.add(image.embedding_dim)
    if len(dims) > 1:
        raise InvalidInput(f"the images' embeddings have different sizes {sorted(dims)}; they come from different encoders")
    ids = sorted(emb)
    if not ids:
        raise Conflict(f"experiment {experiment_id} has no "
                       f"{'ratings or comparisons' if feedback == 'both' else 'comparisons' if feedback == 'pairs' else 'ratings'}"
                       " to train on")
    pos = {i: k for k, i in enumerate(ids)}
    x = np.stack([np.frombuffer(emb[i], dtype="<f4") for i in ids]).astype(np.float32)
    y = None
    if score_of:
        y = np.full(len(ids), np.nan, dtype=np.float64)
        for i, v in score_of.items():
            y[pos[i]] = v
    # a pair's votes are one comparison, its outcome the left image's share of them, as an image's ratings are one
    # target (their mean): one vote a row let comparisons weigh `overlap` times as much as ratings, and the bootstrap
    # resample a pair's votes as if independent (found by review)
    shares: dict[tuple[int, int], list[float]] = {}
    for a, b, c, _ in rows:
        shares.setdefault((a, b), []).append(OUTCOME[c])
    p = (np.array([(pos[a], pos[b], sum(o) / len(o)) for (a, b), o in shares.items()], dtype=np.float64)
         .reshape(-1, 3) if rows else None)
    digest = hashlib.sha256(repr(sorted(rows)).encode()).hexdigest()
    return TrainingFeedback(ids, x, y, p, int(sum(getattr(r, "n_ratings", 1) for r in rated)), len(rows), digest)


def count_round_votes(session: Session, round_id: int) -> int:
    return int(session.scalar(select(func.count(ComparisonVote.id)).join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
                              .where(ComparisonPair.round_id == round_id, ComparisonPair.kind == KIND)) or 0)



def worker_training_data(session: Session, *, experiment_id: int, round_index: int, feedback: str, rated: Sequence[Any],
                         watermark: Any, standardize: bool, per_rating: Sequence[Any]) -> tuple[Any, Any, Any, dict]:
    """The worker's train job with comparisons: (embeddings (N, D), scores (N,) or None, pairs (P, 3) or None,
    snapshot) as torch tensors, the scores standardised per rater when ``standardize`` (as for scores only)."""
    import torch

    from app import quality

    scores = None
    if rated and wants_scores(feedback) and standardize:
        scores = quality.training_scores([r.image_id for r in rated],
                                         [(q.image_id, q.rater_id, q.score) for q in per_rating], standardized=True)
    fb = training_feedback(session, experiment_id=experiment_id, up_to_round_index=round_index, feedback=feedback,
                           rated=rated, scores=scores)
    snapshot = {"watermark": watermark, "feedback": feedback, **fb.snapshot()}
    if scores is not None:
        snapshot["standardized"] = True
    return (torch.from_numpy(fb.embeddings), None if fb.scores is None else torch.from_numpy(fb.scores).float(),
            None if fb.pairs is None else torch.from_numpy(fb.pairs), snapshot)
