"""The rating page and the public API: which images a rater gets, rating, skipping, undoing, progress.

Plain functions of (services, who, ...) that open their own short transactions; ``app.ui`` wires
them to Gradio events and the API. Rules (checked here, on the server, for the UI and the API alike):

- A rater sees the open round's query images they have neither rated nor skipped and that still
  need ratings (``repo.next_images_for_rater``: overlap respected), so never the same image twice.
- Images handed out (a page's batch, the API's ``next_batch``) are leased to the rater for ``LEASE_S``
  seconds: meanwhile they count as taken towards the overlap for everyone else, so two raters do not
  get the same image when one more rating completes it. Rating or skipping releases the lease; a new
  batch on the page releases the old batch's unrated images; otherwise it runs out. The rater's unanswered cards
  (``repo.unanswered_image_ids``: leased to them, the lease live or not) come first in their next batch while they
  are still offered to them. Renewed or not, a lease holds
  the image's place against the others for at most ``repo.RESERVE_S`` (30 minutes) from the rater's first lease on
  it (a new window only after it was not held for as long); past that the holder may still rate it, and the others
  may be offered it too, after the images nobody holds.
- Rating an image is allowed when the rater already rated it (an edit), holds a live lease on it (it is on
  their page, past its reserving window too) or when it is still offered to them (a skipped image too: rating it
  takes the skip back), whether or not it was ever handed to them: a lease reserves an image, it does not gate its
  rating (the API's ``submit_rating`` takes any such image id, and a rater can always rate blindly anyway);
  anything else (closed round, unknown image, an image other raters have rated or reserved fully, an eval image,
  an experiment that asks for comparisons only, a score outside 1-10) is refused with one sentence and changes
  nothing. The page takes a rating only for a card of its batch (or an edit of one rated in the round).
- Undo takes back the rater's newest rating or skip of the open round. The history is in the database
  (``repo.undo_last``), so it survives a reload and follows the rater to another browser.
- With the experiment option ``repeat_share`` above 0 (off by default), a batch now and then holds, blind, an image
  of the round the rater rated before (``app.repeats``: how many, which, and what counts). The server records it
  (``repeat_offers``); the score given to it goes to ``repeat_ratings`` and never edits the first rating; undo takes
  it back as any score (migration 0009). The page's progress line counts the rater's own repeats in the round's counters
  (``own_repeats``); the API's does not.
- Each rating is its own transaction: once acknowledged it is durable.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import auto_close, experiment_options, members, repeats, storage, ui_images
from app.auth import Who
from db import quality as db_quality
from db import repo
from db.checks import MAX_ID, check_now, findable_id, shown, whole_number
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import SCORE_MAX, SCORE_MIN, Experiment, Image, Round, utcnow

CANDIDATE_FACTOR = 4  # a batch is drawn from the first batch_size * 4 offered images, shuffled per rater
LEASE_S = 600.0  # how long images handed out stay reserved to their rater
MAX_API_BATCH = 64

log = logging.getLogger(__name__)


class NotOffered(Conflict):
    """The image is not (or no longer) offered to this rater: others rated it fully, or the rater skipped it."""


# ---------------------------------------------------------------------------------------------
# choosing the experiment and round
# ---------------------------------------------------------------------------------------------


def pick_experiment(session: Session, experiment_id: int | None = None, who: Who | None = None, *,
                    from_state: bool = False) -> Experiment | None:
    """``experiment_id``'s experiment, else the newest one with a round open for labeling, else the newest active one.
    With ``who``: only an experiment they may rate (``app.members``): one named that they may not is refused as one
    that does not exist (``NotFound``: the refusal does not tell them it exists; fifth review), and the default is
    picked among those they may. ``from_state``: the id is the page's own (server-side state: the Pairs and Compare
    tabs), checked again on every request: one the rater was taken off since, and one that names none, get one
    sentence with no name nor id (``members.PAGE_EXPERIMENT_GONE``, a ``NotFound``); it named the experiment by id
    where one that does not exist got another sentence (sixth review)."""
    if experiment_id is not None:
        unknown = members.PAGE_EXPERIMENT_GONE if from_state else repo.no_experiment_with_id(experiment_id)
        if who is not None:  # before anything about the experiment is read: for a rater not listed, it does not exist
            members.check(session, who, experiment_id, unknown=unknown)
        experiment = session.get(Experiment, experiment_id) if findable_id(experiment_id) else None
        if experiment is None:
            raise NotFound(unknown)
        return experiment
    experiments = [e for e in repo.list_experiments(session=session, archived=False)
                   if who is None or members.may_rate(session, who, e.id)]
    for exp in reversed(experiments):
        if repo.get_open_round(session=session, experiment_id=exp.id) is not None:
            return exp
    active = [e for e in experiments if e.status == "active"]
    return (active or experiments or [None])[-1]


def resolved_experiment_id(factory, experiment_id: int | None) -> int | None:
    """The experiment a request is about, resolved once (``pick_experiment``'s default when none is selected), so
    that a check and a load use one experiment: each picking the default, one that changed between the two showed a
    rater a dashboard hidden from raters (found by review). None when there is no experiment."""
    if experiment_id is not None:
        return experiment_id
    with read_session(factory) as s:
        exp = pick_experiment(s, None)
        return None if exp is None else exp.id


def experiment_by_name(session: Session, name: str, who: Who | None = None) -> Experiment | None:
    """The experiment named ``name`` (empty: ``pick_experiment``'s default); with ``who``, one they may rate only."""
    name = (name or "").strip()
    if not name:
        return pick_experiment(session, who=who)
    experiment = repo.get_experiment_by_name(session=session, name=name)
    if who is not None and experiment is not None:
        members.check(session, who, experiment.id, unknown=repo.no_experiment_named(name))
    return experiment


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    experiment: str | None
    round_index: int | None
    round_status: str | None
    images: int = 0  # query images of the round
    rated_images: int = 0  # with at least one rating
    ratings: int = 0
    budget: int | None = None  # images generated for the round (the experiment's budget)
    overlap: int = 1
    you_rated: int = 0
    you_left: int = 0
    labels: int = 0  # ratings that count: at most ``overlap`` per image
    labels_wanted: int = 0  # images x overlap
    # while no round is open: what the worker is doing toward the next images (see next_round_wait)
    next_round: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def next_round_wait(session: Session, experiment: Experiment) -> dict[str, Any] | None:
    """While the experiment has no open round: the worker's job toward the next images and an estimate of the wait.

    {"job": "train" | "generate", "status", "phase", "step", "total", "eta_s" (the running phase's remaining time,
    from the worker's progress), "estimate_s", "behind"}: for a running train job, its phase's ETA plus the time the
    last round took to draw its query images; for a running generate job, its phase's ETA; None when nothing is under
    way. An eval job (the dashboard's eval grid) is never what the next images wait for: the worker takes train and
    generate jobs first and a running eval job gives way within a chunk; while it does, a queued job has
    "behind": "eval" (else None): only when the experiment is not paused (its jobs wait for an admin, not for the
    eval grid) and no generate or train job is running (the worker is on that one, not on the grid)."""
    from db import jobs as job_queue

    jobs = [j for j in job_queue.list_jobs(session=session, experiment_id=experiment.id, limit=10)
            if j.status in ("running", "queued") and j.kind in job_queue.PERSON_KINDS]
    if not jobs:
        return None
    job = min(jobs, key=lambda j: j.id)  # the oldest unfinished job is the one the next images wait for
    p = job.progress or {}
    eta = p.get("eta_s") if job.status == "running" else None
    behind = None
    now = check_now(None, session)  # the database's clock, which the workers' leases are written by
    if (job.status == "queued" and experiment.status != "paused"
            and job_queue.live_job(session, now, kinds=job_queue.PERSON_KINDS) is None
            and job_queue.live_job(session, now, kind="eval") is not None):
        behind = "eval"  # a worker is on an eval grid (of any experiment): it gives way after its current chunk
    estimate = None
    if eta is not None:
        estimate = float(eta)
        if job.kind == "train" and p.get("phase") in ("reward_fit", "anchor", "finetune", "load_model"):
            estimate += _next_query_images_s(session, experiment, job.round_id)
    return {"job": job.kind, "status": job.status, "phase": p.get("phase"), "step": p.get("step"), "total": p.get("total"),
            "eta_s": eta, "estimate_s": None if estimate is None else round(estimate, 1), "behind": behind}


def _next_query_images_s(session: Session, experiment: Experiment, training_round_id: int | None) -> float:
    """How long the next round's query images should take, from the round being trained (or, without its figures,
    the latest round that drew images): its fixed part (model and reward-model loading, selection) plus its sampling
    time per generated candidate times the candidates the next round generates (a selection mode generates
    ``candidate_factor`` per shown image from round 1 on). Rounds recorded before the sampling time was: all of it
    per candidate. 0 before any round has drawn its images."""
    from app.services import experiment_config, round_budget

    def timed(r: Round | None) -> bool:
        return r is not None and bool(((r.metrics or {}).get("generate") or {}).get("query_wall_s"))

    training = repo.get_round(session=session, round_id=training_round_id) if training_round_id is not None else None
    last = training if timed(training) else next(
        (r for r in reversed(repo.list_rounds(session=session, experiment_id=experiment.id)) if timed(r)), None)
    if last is None:
        return 0.0
    gen, sel = last.metrics["generate"], last.metrics.get("selection")
    total = float(gen["query_wall_s"])
    made = (sel.get("candidates") if isinstance(sel, dict) else None) or gen.get("query_images")
    if not made:
        return total
    sampling = float(gen.get("sample_wall_s", total))
    nxt = (training.index if training is not None else last.index) + 1  # a train job on round k publishes k + 1
    _, planned = experiment_options.candidate_plan(experiment_options.of(experiment), nxt,
                                                   round_budget(experiment_config(experiment), nxt))
    return max(0.0, total - sampling) + sampling * planned / int(made)


def _pairs_only(session: Session, experiment_id: int) -> bool:
    """Whether the experiment asks for comparisons only (app.pairwise): then nothing is offered for 1-10 rating."""
    from app import pairwise

    return pairwise.feedback_of(repo.get_experiment(session=session, experiment_id=experiment_id)) == "pairs"


def _offered(session: Session, round_: Round, who: Who, limit: int, *, now: datetime | None = None) -> list[Image]:
    if _pairs_only(session, round_.experiment_id):  # issue 14 item 1
        return []
    return repo.next_images_for_rater(session=session, round_id=round_.id, rater_id=who.rater_id, limit=max(1, limit),
                                      kind="query", now=now)


def progress(session: Session, experiment: Experiment | None, who: Who) -> Progress:
    return _progress(session, experiment, who)[0]


def _progress(session: Session, experiment: Experiment | None,
              who: Who) -> tuple[Progress, Round | None, tuple[int, int] | None]:
    """``progress``, the open round (None when none is open) and the viewer's repeat counts in it as
    ``db_quality.repeat_counts`` gives them (scored, pending), for ``page_progress_html`` to reuse."""
    if experiment is None:
        return Progress(None, None, None), None, None
    round_ = repo.get_open_round(session=session, experiment_id=experiment.id)
    if round_ is None:
        rounds = repo.list_rounds(session=session, experiment_id=experiment.id)
        last = rounds[-1] if rounds else None
        return Progress(experiment.name, last.index if last else None, last.status if last else None, overlap=experiment.overlap,
                        next_round=next_round_wait(session, experiment)), None, None
    mine = repo.round_progress(session=session, round_id=round_.id, rater_id=who.rater_id, kind="query")
    # the rater's own counters count the repeats handed to them (app.repeats) as images: scored ones as rated, pending
    # ones as left, so scoring a repeat moves them by one as any card does and the open cards never outnumber what is
    # left (they moved with ordinary ratings only, which told a repeat apart: found by review); the round's counts
    # (labels, ratings, rated images) stay ordinary ratings only (the rating page counts the viewer's own repeats in
    # when it shows them: page_progress_html)
    counts = db_quality.repeat_counts(session=session, round_id=round_.id, rater_id=who.rater_id)
    again_scored, again_pending = counts[0], _handed_back(session, round_, counts[1])
    budget = repo.round_budget(experiment.budgets, round_.index)  # the worker's rule: the last budget past the list
    return Progress(
        experiment=experiment.name,
        round_index=round_.index,
        round_status=round_.status,
        images=mine.total_images,
        rated_images=mine.rated_images,
        ratings=mine.ratings,
        budget=budget,
        overlap=experiment.overlap,
        you_rated=(mine.rater_rated or 0) + again_scored,
        you_left=(mine.rater_remaining or 0) + again_pending,
        labels=mine.labels,
        labels_wanted=mine.labels_wanted,
    ), round_, counts


def _handed_back(session: Session, round_: Round, pending: int) -> int:
    """How many of the rater's ``pending`` repeats count as left for them: all, as ``repeats.plan`` hands them back
    with the share 0 too (set to 0 mid-round: dropping them from the counts let a repeat still on the page move the
    counters unlike any other card when scored; found by review), but none while the experiment asks for comparisons
    only (nothing is handed out for 1-10 rating then: ``draw_batch``)."""
    return 0 if pending and _pairs_only(session, round_.experiment_id) else pending


def _wait_html(w: dict[str, Any] | None) -> str:
    """The worker's progress toward the next images: what it does, a bar for the running phase, the expected wait."""
    if not w:
        return ""
    what = {"train": "Learning from your ratings", "generate": "Drawing the next images"}[w["job"]]
    if w["status"] == "queued":
        if w.get("behind") == "eval":
            return (f"<div id='next-round'>{what}: waiting for the worker to start; it is finishing a part of the "
                    "dashboard's eval grid and comes to this next.</div>")
        return f"<div id='next-round'>{what}: waiting for the worker to start.</div>"
    step, total = w.get("step"), w.get("total")
    pct = 100.0 * step / total if isinstance(step, int | float) and isinstance(total, int | float) and total else 0.0
    phase = html.escape(str(w.get("phase") or "starting")).replace("_", " ")
    steps = f", step {step} of {total}" if total else ""
    eta = "" if w.get("estimate_s") is None else f" · next images in about {max(1, round(w['estimate_s']))} s"
    return (f"<div id='next-round'>{what} ({phase}{steps}){eta}"
            f"<div class='bar'><div style='width:{min(100.0, pct):.1f}%'></div></div></div>")


@dataclass(frozen=True)
class OwnRepeats:
    """The viewer's repeats in the open round (``app.repeats``), which the rating page counts in the round's counters
    as the ratings and images they are to the viewer."""

    scored: int = 0
    pending: int = 0  # handed out, not answered (handed back, the share 0 or not; 0 while comparisons only are asked)
    skipped: int = 0
    skipped_unwanted: int = 0  # of the skipped: those whose skip, were they ordinary, would lower what is wanted
    on: bool = False  # repeats on for the round, or the viewer has some (pending, scored or skipped): no count that a
    # repeat cannot move is shown (so the line's format does not change when a repeat is scored with the share at 0)


def own_repeats(session: Session, round_: Round, rater_id: int, *, counts: tuple[int, int] | None = None) -> OwnRepeats:
    """The rater's repeats of ``round_`` as the rating page counts them in the round's progress line.

    The round's counts hold ordinary ratings only, so alone on a round a rater who saw "X of Y" stand still after
    scoring a card knew it for a repeat (found by review). The page counts the viewer's own repeats in as it counts
    them in "You: ..." (a scored one as a rating, a pending one as a rating wanted): every card scored, skipped or
    undone moves the line alike. A skipped repeat lowers what is wanted as a skip of an ordinary image in its place
    would (``repo.wanted_after_skips``: when the accounts that can still rate it, the viewer included, are no more than
    the overlap and more than its ratings by the others). ``counts``: ``db_quality.repeat_counts`` for the rater and
    round when the caller has them (``_progress``)."""
    scored, pending = counts if counts is not None else db_quality.repeat_counts(session=session, round_id=round_.id,
                                                                                 rater_id=rater_id)
    skipped = db_quality.skipped_repeats(session=session, round_id=round_.id, rater_id=rater_id)
    # "on" from the rater's repeats as they are, not from what is counted: the format stays as it is when a pending
    # repeat is scored, whatever the share (computed from a pending count zeroed at share 0, it changed: review)
    on = bool(scored or pending or skipped) or repeats.share_of(session, round_) > 0
    pending = _handed_back(session, round_, pending)  # as "left for you"
    unwanted = 0
    if skipped:
        enabled = repo.enabled_accounts(session, round_.experiment_id)  # those who may rate it (app.members)
        overlap = repo.get_experiment(session=session, experiment_id=round_.experiment_id).overlap
        unwanted = sum(1 for others_rated, others_skipped in skipped.values()
                       if others_rated < enabled - others_skipped <= overlap)
    return OwnRepeats(scored=scored, pending=pending, skipped=len(skipped), skipped_unwanted=unwanted, on=on)


def page_progress_html(session: Session, experiment: Experiment | None, who: Who) -> str:
    """The rating page's progress line for ``who``: ``progress`` with their own repeats counted in (``own_repeats``).
    The API's ``progress``, the Admin tab and the dashboard keep the round's true counts."""
    p, round_, counts = _progress(session, experiment, who)
    return progress_html(p, own_repeats(session, round_, who.rater_id, counts=counts) if round_ is not None else None)


def progress_html(p: Progress, mine: OwnRepeats | None = None) -> str:
    """The progress line; ``mine``: the viewer's repeats, counted in the round's counters (``own_repeats``)."""
    if p.experiment is None:
        return "<div class='seiko-progress'>No experiment yet. An admin creates one on the <b>Admin</b> tab.</div>"
    if p.round_status != "labeling":
        where = f"round {p.round_index} is {p.round_status}" if p.round_index is not None else "it has no round yet"
        return (f"<div class='seiko-progress'><b>{html.escape(p.experiment)}</b>: no round is open for labeling ({where}). "
                f"New images appear here by themselves when the next round opens.{_wait_html(p.next_round)}</div>")
    mine = mine or OwnRepeats()
    # Progress counts labels against images x overlap: with overlap 3, 32 images are done at 96 labels.
    labels = p.labels + mine.scored
    wanted = p.labels_wanted + mine.scored + mine.pending + mine.skipped - mine.skipped_unwanted
    # skips lower what is wanted (an image every enabled rater skipped wants no more): the text counts against the
    # same figure as the bar, which said 100% beside "2 of 3" (found by review)
    unwanted = p.images * p.overlap - p.labels_wanted + mine.skipped_unwanted
    pct = min(100.0, 100.0 * labels / wanted) if wanted else 0.0
    fewer = ", fewer where too few raters can still rate" if unwanted > 0 else ""
    if p.overlap > 1 and mine.on:
        # no image count and no "rated at least once": a repeat is no image of the round and moves neither, an
        # ordinary image moves the second only when nobody rated it before
        counts = f"<span id='round-progress'><b>{labels} of {wanted}</b> ratings</span> ({p.overlap} raters an image{fewer})"
    elif p.overlap > 1:
        counts = (f"<span id='round-progress'><b>{labels} of {wanted}</b> ratings</span> "
                  f"({p.images} images × {p.overlap} raters each{fewer}; "
                  f"{p.rated_images} images rated at least once)")
    else:
        skipped = f" ({unwanted} skipped)" if unwanted > 0 else ""
        counts = f"<span id='round-progress'><b>{labels} of {wanted}</b> images rated</span>{skipped}"
    return (
        f"<div class='seiko-progress'><b>{html.escape(p.experiment)} · round {p.round_index}</b>: {counts}"
        f"<div class='bar'><div style='width:{pct:.1f}%'></div></div>"
        f"<span class='you' id='you-progress'>You: <b>{p.you_rated} rated</b> this round, {p.you_left} left for you</span></div>"
    )


# ---------------------------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------------------------


def _rater_order(rater_id: int, image_id: int) -> str:
    return hashlib.sha256(f"{rater_id}:{image_id}".encode()).hexdigest()


def lease_cap(session: Session, round_: Round, batch_size: int) -> int:
    """How many live leases one rater may hold in ``round_`` at a time (``draw_batch``): their fair share of the
    round's ratings, ceil(query images x overlap / accounts that can still rate it: ``repo.can_still_rate`` of its
    experiment), and never fewer than the rating
    page's ``batch_size``. Alone on a round a rater may so hold all of it; with others, one ``next_batch(64)`` no
    longer reserves a whole round of 32 images for 10 minutes while every other rater is told the images are being
    rated by someone else (found by the fourth review)."""
    images = repo.count_images(session=session, round_id=round_.id, kind="query")
    overlap = repo.get_experiment(session=session, experiment_id=round_.experiment_id).overlap
    raters = max(1, repo.enabled_accounts(session, round_.experiment_id))  # those who may rate this experiment
    return max(batch_size, -(-images * overlap // raters))


def draw_batch(session: Session, round_: Round, who: Who, size: int, *, lease_s: float = LEASE_S,
               now: datetime | None = None, cap: int | None = None, unknown: str | None = None) -> list[Image]:
    """Up to ``size`` images for the rater, leased to them (in a write transaction): first their unanswered cards
    (``repo.unanswered_image_ids``: leased to them before, the lease live or run out), then offered ones drawn from
    the least-rated in a per-rater order. With ``repeat_share`` on, some places go to images the rater rated before
    (``app.repeats``, which counts the same unanswered cards as the rater's; not leased: they need no other rater's
    place): a pending one among the unanswered cards, which come in the order they were first handed out
    (``repeats.left_open``), a new one among the new cards (``repeats.mix``). ``now``: the clock (leases), the time by
    default. ``cap``: the most live leases the rater may hold in the round (``lease_cap``; with ``size`` as the
    page's batch size when None): past it the batch has fewer new cards, or none, but always the cards the rater
    holds a live lease on (up to ``size``). ``unknown``: the answer (``members.check``'s) to a rater not listed, as
    for the experiment the request named not existing; without it they are told they are not its rater."""
    now = check_now(now, session)  # one clock for the batch: its leases' first hand-outs and its repeats' offers tie (repeats.left_open)
    # the experiment shared (repo.share_experiment, before the round that lease_images locks), then who may rate it:
    # checked without the lock, a rater an admin was taking off still got leases after the change committed, holding
    # the images back from the others for 10 minutes (found by the fifth review). The change waits for a hand-out in
    # flight (and gives the leases back, db.members.set_raters), or the hand-out for it (refused, nothing leased);
    # checked before the lock too (members.share: a rater not listed never waits on it; sixth review)
    members.share(session, who, round_.experiment_id, unknown=unknown)
    # comparisons only (issue 14 item 1): no 1-10 rating, so no repeat either, not even a pending one, and of the
    # rater's unanswered cards only those still on their page (a live lease), as before
    pairs = _pairs_only(session, round_.experiment_id)
    if pairs:
        planned = repeats.Planned()
        known = repo.held_image_ids(session=session, round_id=round_.id, rater_id=who.rater_id, now=now)
        block = known[:size]
    else:
        planned = repeats.plan(session, round_, who.rater_id, size, repeats.share_of(session, round_), now=now)
        known = repo.unanswered_image_ids(session=session, round_id=round_.id, rater_id=who.rater_id, kind="query",
                                          now=now)
        # a pending repeat goes among the cards left open, in the order they were handed out, never ahead of or behind
        # them: the ordinary ones came first and repeats anywhere, so a new card ahead of a card left open told that
        # one of the two was a repeat (found by review)
        block = repeats.left_open(session, round_.id, who.rater_id, known, planned.pending)[:size]
    again = set(planned.pending)
    # the lease cap: the rater's live leases in the round stay, and new ones (a card left open whose lease ran out, a
    # fresh image) only as far as the cap allows; a repeat is not leased (it needs no other rater's place)
    held = set(repo.held_image_ids(session=session, round_id=round_.id, rater_id=who.rater_id, now=now))
    allowed = (lease_cap(session, round_, size) if cap is None else cap) - len(held)
    kept = []
    for i in block:
        if i not in again and i not in held:
            if allowed <= 0:
                continue  # still the rater's unanswered card: it comes back in a later batch, once the cap allows
            allowed -= 1
        kept.append(i)
    block = kept
    room = min(size - len(block) - len(planned.new), allowed)
    fresh: list[int] = []
    if room > 0:
        mine = set(known)
        candidates = [im for im in _offered(session, round_, who, size * CANDIDATE_FACTOR + len(known), now=now)
                      if im.id not in mine]
        others = repo.held_by_others(session=session, image_ids=[im.id for im in candidates], rater_id=who.rater_id,
                                     now=now)
        # images another rater still has on their page (past its reserving window, repo.lease_images) come last
        candidates.sort(key=lambda im: (im.id in others, _rater_order(who.rater_id, im.id)))
        fresh = [im.id for im in candidates[:room]]
    granted = set(repo.lease_images(session=session, round_id=round_.id, rater_id=who.rater_id,
                                    image_ids=[i for i in block if i not in again] + fresh, lease_s=lease_s, now=now))
    batch = [i for i in block if i in again or i in granted]
    fresh = [i for i in fresh if i in granted]
    # the new cards in one drawn order whether a batch has new repeats or not: the cards of a batch with none kept
    # another order, and cards left open come back in the order they were shown (repeats.left_open)
    batch += repeats.mix(fresh, planned.new, who.rater_id, round_.id)
    return [repo.get_image(session=session, image_id=i) for i in batch]


def png_bytes(data_dir, image: Image) -> bytes | None:
    """The image's file, or None when it is missing or cannot be read: a link out of the data dir
    (``storage.UnsafePath``), no permission, a disk error. That is the one card's problem, logged here with the path:
    one damaged file failed the rater's whole batch with a message naming the server's data dir (found by the fourth
    review). A missing file is expected after a data dir was cleaned by hand, and logged too."""
    try:
        path = storage.resolve(data_dir, image.file_path)
        if not path.is_file():
            log.warning("image %s: its file %r is missing from the data dir; its card shows it as missing",
                        image.id, image.file_path)
            return None
        return path.read_bytes()
    except (storage.UnsafePath, OSError) as e:
        log.error("image %s: its file %r cannot be read (%s); its card shows it as missing", image.id, image.file_path, e)
        return None


def png_data_uri(data_dir, image: Image) -> str | None:
    """The image file as a ``data:`` URI (the data dir is never exposed to the browser), or None if it is missing or
    cannot be read (``png_bytes``)."""
    data = png_bytes(data_dir, image)
    return None if data is None else "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_base64(data_dir, image: Image) -> str | None:
    """The image file in base64, or None if it is missing or cannot be read (``png_bytes``)."""
    data = png_bytes(data_dir, image)
    return None if data is None else base64.b64encode(data).decode("ascii")


@dataclass
class Card:
    image_id: int
    prompt: str
    seed: int
    src: str | None
    state: str = "open"  # open, rated, skipped, taken
    score: int | None = None
    pixel_art: bool = False  # small image: upscaled with crisp pixels (app.ui_images), else smoothly

    def status(self) -> str:
        return {"rated": f"✓ saved: {self.score}", "skipped": "skipped", "taken": "rated by others"}.get(self.state, "")


def card_html(c: Card) -> str:
    px = " class='px'" if c.pixel_art else ""  # small images upscaled with crisp pixels (app.ui_images)
    img = (f"<img src='{c.src}'{px} alt='{html.escape(c.prompt, quote=True)}'>" if c.src
           else "<div class='rg-missing'>image file missing</div>")
    buttons = "".join(
        f"<button type='button' tabindex='-1' data-score='{s}' aria-pressed='{str(c.score == s).lower()}'"
        f" title='rate {s} (key {s % 10})'>{s}</button>"
        for s in range(SCORE_MIN, SCORE_MAX + 1)
    )
    return (
        # No image id or seed on the card: a repeat (app.repeats) has its first showing's id, and a rater who could
        # read it would know the image as one they rated. The id stays in data-image-id, for the page's script.
        f"<div class='rg-card' tabindex='0' role='group' aria-label='image: {html.escape(c.prompt, quote=True)}'"
        f" data-image-id='{c.image_id}' data-state='{c.state}' data-score='{c.score or ''}'>"
        f"<div class='rg-img'>{img}</div>"
        f"<div class='rg-prompt'>{html.escape(c.prompt)}</div>"
        f"<div class='rg-scores'>{buttons}</div>"
        f"<div class='rg-meta'><span class='rg-status'>{html.escape(c.status())}</span></div>"
        "</div>"
    )


HELP_HTML = (
    "<div class='rg-help'><kbd>1</kbd>–<kbd>9</kbd>, <kbd>0</kbd> = 10 rate the highlighted image · "
    "<kbd>←</kbd><kbd>↑</kbd><kbd>→</kbd><kbd>↓</kbd> / <kbd>Tab</kbd> move · <kbd>s</kbd> skip · "
    "<kbd>u</kbd> undo your last rating or skip · each rating is saved the moment you give it</div>"
)


def grid_html(cards: list[Card], empty_message: str) -> str:
    if not cards:
        return f"{HELP_HTML}<div class='rg-empty' id='rg-empty'>{html.escape(empty_message)}</div>"
    return HELP_HTML + "<div class='rg' id='rg'>" + "".join(card_html(c) for c in cards) + "</div>"


# ---------------------------------------------------------------------------------------------
# the per-session state (kept in gr.State; JSON-ready)
# ---------------------------------------------------------------------------------------------


@dataclass
class RateState:
    experiment_id: int | None = None
    round_id: int | None = None
    batch: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    taken: list[int] = field(default_factory=list)  # refused because other raters rated or reserved them fully
    ack: int = 0  # the undo history is in the database (repo.undo_last), not here

    @classmethod
    def from_value(cls, value: dict[str, Any] | None) -> RateState:
        return cls(**value) if value else cls()

    def to_value(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.__dict__))


def _marks(session: Session, state: RateState, who: Who) -> dict[str, Any]:
    cards = {}
    offers = db_quality.repeat_offers_of(session=session, rater_id=who.rater_id, image_ids=state.batch)  # one query
    for image_id in state.batch:
        rating = repo.find_rating(session=session, image_id=image_id, rater_id=who.rater_id)
        card = Card(image_id, "", 0, None)
        offer = offers.get(image_id) if rating is not None else None
        if offer is not None:  # handed out again (app.repeats): the card shows the second score only, as a new image
            second = db_quality.find_repeat_rating(session=session, image_id=image_id, rater_id=who.rater_id)
            if second is not None:
                card.state, card.score = "rated", second.score
            elif offer.skipped:
                card.state = "skipped"
        elif rating is not None:
            card.state, card.score = "rated", rating.score
        elif image_id in state.skipped:
            card.state = "skipped"
        elif image_id in state.taken:
            card.state = "taken"
        cards[str(image_id)] = {"state": card.state, "status": card.status(), **({"score": card.score} if card.score else {})}
    # the experiment and round shown: the page notes them with the actions it keeps for a restarted server, and sends
    # them after its reload only to the same (app.ui_assets ACTION_KEPT_ELSEWHERE; twelfth review, 6 Dec 2026)
    return {"ack": state.ack, "cards": cards, "experiment": state.experiment_id, "round": state.round_id}


@dataclass(frozen=True)
class View:
    """What the rating page shows after an action: the grid (None: unchanged), marks, progress, state."""

    grid: str | None
    marks: str
    progress: str
    state: dict[str, Any]
    message: str | None = None  # a refusal to show as a warning (nothing was changed)
    keep_state: bool = False  # a redraw only: the page's state and marks are not written back (a waiting page's poll)
    changed: bool = False  # a kept rating not done: its image's score changed since the page kept it (ChangedElsewhere)


def _cards(session: Session, data_dir, state: RateState, who: Who) -> list[Card]:
    out = []
    for image_id in state.batch:
        image = repo.get_image(session=session, image_id=image_id)
        src = png_data_uri(data_dir, image)
        pixel_art = src is not None and ui_images.is_pixel_art(base64.b64decode(src.split(",", 1)[1][:64]))
        out.append(Card(image.id, image.prompt, image.seed, src, pixel_art=pixel_art))
    marks = _marks(session, state, who)["cards"]
    for c in out:
        m = marks[str(c.image_id)]
        c.state, c.score = m["state"], m.get("score")
    return out


def _empty_message(session: Session, experiment: Experiment | None, who: Who) -> str:
    """What the page's empty grid and the API's empty batch say to ``who``: why nothing is handed to them."""
    if experiment is None:
        if repo.list_experiments(session=session, archived=False):  # there are some, none the rater may rate
            return members.NONE_FOR_YOU
        return "There is no experiment yet. An admin creates one on the Admin tab."
    if experiment.status == "finished":
        return (f"Experiment {experiment.name} is finished: it asks for no more ratings. Pick another "
                "experiment above.")
    round_ = repo.get_open_round(session=session, experiment_id=experiment.id)
    if round_ is None:
        return "No round is open for labeling right now. New images appear here by themselves when the next round opens."
    if _pairs_only(session, experiment.id):  # issue 14 item 1
        return "This experiment asks for comparisons of two images, not 1-10 ratings: compare them on the Pairs tab."
    # each wording true to why nothing is left: "you have rated every image that still needs a rating" was said too
    # when the rater had rated none (others filled the round) and while others held the images left (found by review)
    # one clock for the three counts (db.checks.db_clock: a round trip on PostgreSQL each): read for each, a lease
    # counted as live in one and as run out in the next, and the difference below took two "now"s (eighth review)
    now = check_now(None, session)
    if repo.count_reserved_by_others(session=session, round_id=round_.id, rater_id=who.rater_id, kind="query", now=now):
        return (f"Every image of round {round_.index} that still needs a rating and that you have neither rated nor "
                "skipped is being rated by someone else right now; try again in a few minutes.")
    skipped = (repo.count_images_for_rater(session=session, round_id=round_.id, rater_id=who.rater_id, kind="query",
                                           include_skipped=True, now=now)
               - repo.count_images_for_rater(session=session, round_id=round_.id, rater_id=who.rater_id, kind="query",
                                             now=now))
    if skipped or repo.count_ratings_by(session=session, round_id=round_.id, rater_id=who.rater_id, kind="query"):
        done = "rated or skipped" if skipped else "rated"
        return (f"You have {done} every image of round {round_.index} that still needs a rating. Thank you! "
                "The next round's images will appear here.")
    return f"Round {round_.index} has all the ratings it needs. The next round's images will appear here."


def _render(session: Session, data_dir, state: RateState, who: Who, *, new_grid: bool, message: str | None = None) -> View:
    experiment = (repo.get_experiment(session=session, experiment_id=state.experiment_id)
                  if state.experiment_id is not None else None)
    grid = None
    if new_grid:
        cards = _cards(session, data_dir, state, who)
        grid = grid_html(cards, "" if cards else _empty_message(session, experiment, who))
    state.ack += 1
    return View(grid, json.dumps(_marks(session, state, who)), page_progress_html(session, experiment, who),
                state.to_value(), message)


def _batch_done(session: Session, state: RateState, who: Who) -> bool:
    marks = _marks(session, state, who)["cards"]
    return all(m["state"] != "open" for m in marks.values())


def load_batch(factory, data_dir, who: Who, state_value: dict | None, *, batch_size: int,
               experiment_id: int | None = None) -> View:
    """A fresh batch for the rater (of ``experiment_id``, or the experiment now being labeled)."""
    old = RateState.from_value(state_value)
    with write_session(factory) as s:
        wanted = experiment_id if experiment_id is not None else old.experiment_id
        if experiment_id is None and isinstance(wanted, int) and not members.may_rate(s, who, wanted):
            wanted = None  # the page's experiment is no longer one the rater may rate: the default instead
        experiment = pick_experiment(s, wanted, who)  # one they may rate; one picked that they may not is refused
        state = RateState(experiment_id=experiment.id if experiment else None, ack=old.ack)
        round_ = repo.get_open_round(session=s, experiment_id=experiment.id) if experiment else None
        if round_ is not None:
            state.round_id = round_.id
            state.batch = [im.id for im in draw_batch(s, round_, who, batch_size)]
            repo.release_leases(session=s, round_id=round_.id, rater_id=who.rater_id, keep=state.batch)
        if isinstance(old.round_id, int) and old.round_id != state.round_id:
            # the page moved to another experiment (or round): the old batch's unrated images go back to the others
            # at once, not when their leases run out (found by review)
            repo.release_leases(session=s, round_id=old.round_id, rater_id=who.rater_id)
    with read_session(factory) as s:
        return _render(s, data_dir, state, who, new_grid=True)


def release_batch(factory, who: Who, state_value: dict | None) -> int:
    """Give back the rater's leases in the state's round (a page that will not show that batch); returns how many."""
    state = RateState.from_value(state_value)
    if not isinstance(state.round_id, int):
        return 0
    with write_session(factory) as s:
        return repo.release_leases(session=s, round_id=state.round_id, rater_id=who.rater_id)


def poll(factory, data_dir, who: Who, state_value: dict | None, *, batch_size: int) -> View | None:
    """The rating tab's timer: a new batch when the rater has none and images are waiting, else None."""
    state = RateState.from_value(state_value)
    with read_session(factory) as s:
        removed = isinstance(state.experiment_id, int) and not members.may_rate(s, who, state.experiment_id)
    if removed:
        # the rater was taken off the page's experiment: the page moves to one they may rate (load_batch's default),
        # where every tick redrew the old experiment's progress counts (found by the fourth review)
        return load_batch(factory, data_dir, who, state_value, batch_size=batch_size)
    with read_session(factory) as s:
        experiment = pick_experiment(s, state.experiment_id)
        round_ = repo.get_open_round(session=s, experiment_id=experiment.id) if experiment else None
        if state.batch and round_ is not None and round_.id == state.round_id:
            return None
        if not state.batch and round_ is None:
            # a waiting page is redrawn (its message and the worker's progress: the 'step i of n' line drawn when
            # the round closed never moved, and a finished experiment's page kept promising images; found by
            # review); the grid is only a message then, with no image to send again
            # the state is not written back: a tick in flight when the rater picked another experiment would put
            # the old one back, and every later tick would redraw it (found by review)
            # and only the progress is redrawn, and the grid's message when the experiment is finished: a late tick
            # wrote the old experiment's grid and empty marks over the new one's cards (found by review)
            finished = experiment is not None and experiment.status == "finished"
            return replace(_render(s, data_dir, state, who, new_grid=finished), keep_state=True)
        if not state.batch and round_ is not None and not _offered(s, round_, who, 1):
            return None
    return load_batch(factory, data_dir, who, state_value, batch_size=batch_size)


# ---------------------------------------------------------------------------------------------
# rating, skipping and undoing (shared by the page and the API)
# ---------------------------------------------------------------------------------------------


def parse_score(score: Any, *, what: str = "a rating", besides: str = "") -> int:
    """A score from 1 to 10; ``what`` names the value in the refusal's sentence, ``besides`` the other forms the
    caller takes (``parse_prior``'s 'none')."""
    score = whole_number(score)
    if isinstance(score, bool) or not isinstance(score, int) or not SCORE_MIN <= score <= SCORE_MAX:
        raise InvalidInput(f"{what} must be a whole number from {SCORE_MIN} to {SCORE_MAX}{besides}, got {shown(score)}; "
                           "nothing was saved")
    return score


def parse_image_id(image_id: Any, *, what: str = "an image id", then: str = "") -> int:
    """A row's id (an image's, or ``parse_kept_round``'s round); ``what`` names it in the refusal's sentence, ``then``
    ends that sentence."""
    image_id = whole_number(image_id)
    if isinstance(image_id, bool) or not isinstance(image_id, int) or not 1 <= image_id <= MAX_ID:
        raise InvalidInput(f"{what} must be a positive whole number, got {shown(image_id)}{then}")
    return image_id


class ChangedElsewhere(Conflict):
    """A rating the page kept while the server was away, sent again after the reload, whose image's score is no longer
    the one the page knew when it kept it (``expect``): changed on another page (a duplicated or reopened tab sends
    its note within ACTION_KEPT_AGE_S), or by an action the server did before its restart. Not done."""


def changed_elsewhere(image_id: int, before: int | None, now: int | None) -> str:
    # it said "not sent" of a rating sent and refused, and "when its score was {before}" where before may be the score
    # an earlier kept rating of the page would have set, never stored (thirteenth review, 6 Dec 2026); "sent it again"
    # was untrue of a kept rating queued behind the one in flight, sent for the first time after the reload (a read-only
    # review of these fixes)
    expected = " to have no score" if before is None else f"'s score to be {before}"
    found = "it has no score" if now is None else f"it is {now}"
    return (f"not saved: changed elsewhere. This page kept a rating of image {image_id} while the server was away and "
            f"sent it after its reload; this page expected the image{expected}, and {found} now (changed on "
            "another page, or by an action the server did before it restarted), so the kept rating was not saved")


# the prior of a kept rating whose page did not note the score it knew (a note of version 2, from a page before the
# thirteenth review): done only where the image has no score, or already the score sent (fourteenth review, 6 Dec 2026)
UNNOTED = "unknown"


def unnoted_prior(image_id: int, now: int) -> str:
    """``changed_elsewhere`` for a kept rating sent with the prior ``UNNOTED``."""
    return (f"not saved: the image has a score. This page kept a rating of image {image_id} while the server was away "
            "and sent it after its reload, from a note made by a page from before the server's upgrade, which did not "
            "note the score the image had then; such a rating is saved only where the image has no score, and it is "
            f"{now} now (given on another page, by an earlier rating of that page, or by an action the server did "
            "before it restarted), so the kept rating was not saved and the image keeps that score")


def parse_prior(value: Any) -> int | str | None:
    """The score the page knew for the image before a kept action: a score, "none" (no score), or ``UNNOTED``."""
    if value == "none":
        return None
    if value == UNNOTED:
        return UNNOTED
    return parse_score(value, what="the score a kept rating was given over", besides=" or 'none' or 'unknown'")


# a kept rating's round without the score its page knew (fifteenth review, 6 Dec 2026): it was done as the page's own
NO_PRIOR = ("a rating sent again with the round it was kept for must say the score the page knew for the image before "
            "it (prior: a score from 1 to 10, 'none' or 'unknown'); nothing was saved")


def parse_kept_round(payload: dict[str, Any]) -> int | None:
    """The round an action sent again after a reload was kept for (its ``round``), None for an action of the page."""
    if "round" not in payload:
        return None
    return parse_image_id(payload["round"], what="a kept action's round", then="; nothing was done")


def _check_rateable(session: Session, image: Image, experiment_id: int, done: str) -> None:
    """An image is rated or skipped (``done``: "rated", "skipped") only where it is a query image (the page's batch
    never offers an evaluation image) of an experiment that asks for 1-10 scores (``_offered``'s rule)."""
    if image.kind != "query":
        raise Conflict(f"image {image.id} is an evaluation image of the dashboard and is not {done}")
    if _pairs_only(session, experiment_id):  # issue 14 item 1
        raise Conflict(f"this experiment asks for comparisons of two images, not 1-10 ratings; image {image.id} was not "
                       f"{done} (compare on the Pairs tab)")


def _action_target(factory, who: Who, image_id: int, round_id: int, done: str) -> None:
    """The gate of an action sent again for the round it was kept for (the page's reload may show another experiment
    or round), in place of the page's batch (``done``: "rated", "skipped"): first, that ``who`` may rate the image's
    experiment, a rater it does not list (and an image that does not exist) refused with one sentence,
    ``repo.no_image_with_id``'s, whatever the image and round; then that the image is of that round, a query image,
    of an experiment that asks for scores (``_check_rateable``: a kept skip, which passes no batch, got past them).
    Whether the round is open, ``_rate`` and ``skip`` check (thirteenth review, 6 Dec 2026: the round was compared
    first, so a rater outside the image's experiment learnt from the two answers which images exist and which round
    each is in)."""
    unknown = repo.no_image_with_id(image_id)
    with read_session(factory) as s:
        image = s.get(Image, image_id)
        if image is None:
            raise NotFound(unknown)
        experiment_id = s.get(Round, image.round_id).experiment_id
        members.check(s, who, experiment_id, unknown=unknown)
        if image.round_id != round_id:
            raise Conflict(f"image {image_id} is not an image of the round this page kept the action for; nothing "
                           "was done")
        _check_rateable(s, image, experiment_id, done)


def rate_in_session(session: Session, who: Who, image_id: int, score: int) -> int | None:
    """Rate (or re-rate) one image and record the undo step; returns the previous score (None if new).
    Raises a db error, changing nothing. An image handed to the rater again (app.repeats) gets its second score
    instead, apart from the first rating, with an undo step of its own; the previous score is then the second one."""
    return _rate(session, who, image_id, score)[0]


def _may_rate_image(session: Session, who: Who, image_id: int):
    """``repo.lock_image_for_rating``'s check for ``who``: a rater the image's experiment does not list is refused
    as for an image that does not exist (``members.check``'s ``unknown``)."""
    return lambda experiment_id: members.check(session, who, experiment_id, unknown=repo.no_image_with_id(image_id))


def _rate(session: Session, who: Who, image_id: int, score: int, *, kept: bool = False,
          expect: int | str | None = None) -> tuple[int | None, bool]:
    """``rate_in_session``, and whether the score was a repeat's second score. ``kept``: a rating the page kept while
    the server was away, sent again after its reload, done only if the image's score (the repeat's second score for
    a repeat, as the page's card shows it) is still ``expect`` (None: no score; ``UNNOTED``: none, whatever the page
    knew), or already ``score`` (it had arrived: stored once); otherwise ``ChangedElsewhere``, nothing written. Compared under the image's lock, in the
    rating's own transaction (thirteenth review, 6 Dec 2026)."""
    # checks, then insert: no race. A rater the experiment does not list: refused as for an image that does not
    # exist, nothing saved, before any lock (a wait on an admin's change told that it exists; sixth review) and again
    # under the experiment's lock
    image, round_ = repo.lock_image_for_rating(session=session, image_id=image_id, check=_may_rate_image(session, who, image_id))
    if round_.status != "labeling":
        raise Conflict(f"round {round_.index} is closed for labeling (it is {round_.status}); image {image_id} was not rated")
    _check_rateable(session, image, round_.experiment_id, "rated")
    existing = repo.find_rating(session=session, image_id=image_id, rater_id=who.rater_id)
    if existing is not None and (offer := db_quality.find_repeat_offer(session=session, image_id=image_id,
                                                                       rater_id=who.rater_id)) is not None:
        # handed to the rater again (the server's record, never the client's word): their first rating stays as it is
        if kept:
            second = db_quality.find_repeat_rating(session=session, image_id=image_id, rater_id=who.rater_id)
            _compare_kept(image_id, expect, second.score if second is not None else None, score)
        skipped_at = utcnow() if offer.skipped else None  # a repeat's skip keeps no time (repo.add_undo_step)
        previous = db_quality.set_repeat_score(session=session, image_id=image_id, rater_id=who.rater_id, score=score)
        if previous != score:  # on the undo stack as any score: 'u' took back the rating before it (review)
            repo.add_undo_step(session=session, rater_id=who.rater_id, image_id=image_id, action="repeat",
                               previous_score=previous, skipped_at=skipped_at if previous is None else None)
        return previous, True
    if existing is None:
        _check_offered(session, who, image_id, round_.id)
    previous = existing.score if existing is not None else None
    if kept:
        _compare_kept(image_id, expect, previous, score)
    skip = None if existing is not None else repo.find_skip(session=session, image_id=image_id, rater_id=who.rater_id)
    skipped_at = skip.created_at if skip is not None else None  # the rating takes it back; its undo puts it back
    repo.add_rating(session=session, image_id=image_id, rater_id=who.rater_id, score=score)
    if previous != score:
        repo.add_undo_step(session=session, rater_id=who.rater_id, image_id=image_id, action="rate", previous_score=previous,
                           skipped_at=skipped_at)
    return previous, False


def _check_offered(session: Session, who: Who, image_id: int, round_id: int) -> None:
    """The offered-to-you gate, under the image's lock in the action's transaction: ``NotOffered`` unless the rater
    holds a lease on the image or the open round ``round_id`` offers it to them (their skipped images counted: a
    rating takes a skip back). Every rating of an image the rater has not rated passes it, and a kept skip (one the
    page's batch does not vouch for): a forged kept skip skipped an image other raters had reserved or rated fully
    (fourteenth review, 6 Dec 2026)."""
    if repo.holds_lease(session=session, image_id=image_id, rater_id=who.rater_id):
        return
    if not repo.count_images_for_rater(session=session, round_id=round_id, rater_id=who.rater_id, kind="query",
                                       image_id=image_id, include_skipped=True):
        raise NotOffered(f"image {image_id} is not offered to you: other raters have already given or reserved the "
                         "ratings it needs; nothing was saved")


def _compare_kept(image_id: int, expect: int | str | None, now: int | None, score: int) -> None:
    if expect == UNNOTED:  # nothing known of what the page knew: only where no score can be overwritten
        if now is not None and now != score:
            raise ChangedElsewhere(unnoted_prior(image_id, now))
    elif now != expect and now != score:
        raise ChangedElsewhere(changed_elsewhere(image_id, expect, now))


def submit(factory, who: Who, image_id: Any, score: Any) -> dict[str, Any]:
    """Rate one image in its own transaction (the API's submit_rating)."""
    image_id, score = parse_image_id(image_id), parse_score(score)
    with write_session(factory) as s:
        previous, again = _rate(s, who, image_id, score)
        image = repo.get_image(session=s, image_id=image_id)
        round_ = repo.get_round(session=s, round_id=image.round_id)
        experiment = repo.get_experiment(session=s, experiment_id=round_.experiment_id)
    if not again:  # a repeat's score changes no rating: nothing for auto-close to look at
        auto_close.after_rating(factory, image_id)  # the experiment option auto_close (off by default)
    with read_session(factory) as s:
        p = progress(s, experiment, who)
    return {"image_id": image_id, "score": score, "previous_score": previous, "edited": previous is not None,
            "progress": p.as_dict()}


def rate(factory, data_dir, who: Who, state_value: dict | None, payload: dict[str, Any] | None, *, batch_size: int,
         noted: Callable[[int], None] | None = None) -> View:
    """The page's rating: saves, records the undo step, and moves to a new batch when this one is done.

    A rating the page kept while the server was away and sends again after its reload carries the round it was kept
    for (``round``: checked in place of the page's batch, as the reload may show another experiment or round) and the
    score the page knew for the image before it (``prior``: a score or "none"): it is done only if that is still the
    image's score (``_rate``'s ``kept``), else refused as changed elsewhere (thirteenth review, 6 Dec 2026); a page
    from before that review noted no such score, and its ratings come with ``UNNOTED`` (fourteenth review). A
    ``round`` without a ``prior`` is refused (``NO_PRIOR``; it was done as the page's own rating, fifteenth review).
    ``noted``: called with the image's round in the rating's transaction, under its round's lock, once it is written
    (``ui_rate_tab.Answered``)."""
    state = RateState.from_value(state_value)
    payload = payload or {}
    message, changed = None, False
    try:
        image_id, score = parse_image_id(payload.get("image_id")), parse_score(payload.get("score"))
        kept_round = parse_kept_round(payload)
        kept = "prior" in payload
        if kept_round is not None and not kept:  # the page sends none such: a note of version 2 sends 'unknown'
            raise InvalidInput(NO_PRIOR)
        expect = parse_prior(payload["prior"]) if kept else None
        if kept_round is not None:
            _action_target(factory, who, image_id, kept_round, "rated")
        elif (image_id not in state.batch and not _rated_in_round(factory, who, image_id, state.round_id)
                and not _skipped_in_round(factory, who, image_id, state.round_id)):
            # an edit of an image rated in this round is taken even when it left the batch: a correction of a
            # batch's last card, pressed as the next batch came, was refused (found by review); so is the rating of
            # one the rater skipped in this round: a rating sent again after a restart, its skip having arrived, was
            # refused (the reloaded batch leaves skipped images out; twelfth review, 6 Dec 2026)
            raise Conflict(f"image {image_id} is not in your current batch; reload the page")
        with write_session(factory) as s:
            _, again = _rate(s, who, image_id, score, kept=kept, expect=expect)
            if noted is not None:
                noted(s.get(Image, image_id).round_id)
        if not again:  # a repeat's score changes no rating (app.repeats)
            auto_close.after_rating(factory, image_id)  # the experiment option auto_close (off by default)
        if image_id in state.skipped:
            state.skipped.remove(image_id)
    except NotOffered as e:
        message = str(e)
        if image_id not in state.taken:
            state.taken.append(image_id)
    except ChangedElsewhere as e:
        message, changed = str(e), True
    except (Conflict, InvalidInput, NotFound) as e:
        message = str(e)
    view = _after_action(factory, data_dir, who, state, batch_size=batch_size, message=message)
    return replace(view, changed=True) if changed else view


def _rated_in_round(factory, who: Who, image_id: int, round_id: int | None) -> bool:
    """Whether the rater has a rating of ``image_id`` and it is an image of round ``round_id`` (the page's round)."""
    return _marked_in_round(factory, who, image_id, round_id, repo.find_rating)


def _skipped_in_round(factory, who: Who, image_id: int, round_id: int | None) -> bool:
    """Whether the rater has skipped ``image_id`` and it is an image of round ``round_id`` (the page's round)."""
    return _marked_in_round(factory, who, image_id, round_id, repo.find_skip)


def _marked_in_round(factory, who: Who, image_id: int, round_id: int | None, find) -> bool:
    """Whether ``find`` (``repo.find_rating`` or ``repo.find_skip``) has the rater's mark on ``image_id`` and it is an
    image of round ``round_id``."""
    if round_id is None:
        return False
    with read_session(factory) as s:
        image = s.get(Image, image_id)
        return (image is not None and image.round_id == round_id
                and find(session=s, image_id=image_id, rater_id=who.rater_id) is not None)


ALREADY_SCORED = "you have already scored this image; score it again to change that score"  # skipping a scored card


def skip(factory, data_dir, who: Who, state_value: dict | None, payload: dict[str, Any] | None, *, batch_size: int,
         noted: Callable[[int], None] | None = None) -> View:
    """The page's skip. One the page kept while the server was away, sent again after its reload, carries the round
    it was kept for (``round``), checked in place of the page's batch (thirteenth review, 6 Dec 2026), and is done
    only where the image is offered to the rater (``_check_offered``, a rating's gate; fourteenth review). ``noted``: as
    ``rate``'s, called only where something was written."""
    state = RateState.from_value(state_value)
    message, skipped_now = None, False
    try:
        image_id = parse_image_id((payload or {}).get("image_id"))
        kept_round = parse_kept_round(payload or {})
        if kept_round is not None:
            _action_target(factory, who, image_id, kept_round, "skipped")
        round_id = state.round_id if kept_round is None else kept_round
        if image_id not in state.batch and _skipped_in_round(factory, who, image_id, round_id):
            # skipped already (a skip the page sends again after a restart: its first sending may have arrived, and
            # the reloaded page's batch leaves skipped images out): done, as a skip sent again in the batch is
            # (twelfth review, 6 Dec 2026: it was refused as "not in your current batch")
            return _after_action(factory, data_dir, who, state, batch_size=batch_size, message=None)
        if image_id not in state.batch and kept_round is None:
            raise Conflict(f"image {image_id} is not in your current batch; reload the page")
        with write_session(factory) as s:
            # as _rate: no undo or close between, and a rater the experiment does not list refused before any lock
            _, round_ = repo.lock_image_for_rating(session=s, image_id=image_id, check=_may_rate_image(s, who, image_id))
            rated = repo.find_rating(session=s, image_id=image_id, rater_id=who.rater_id) is not None
            again = rated and db_quality.find_repeat_offer(session=s, image_id=image_id, rater_id=who.rater_id) is not None
            if round_.status == "labeling" and (
                    (rated and not again)
                    or (again and db_quality.find_repeat_rating(session=s, image_id=image_id, rater_id=who.rater_id))):
                # a card already scored: one sentence whatever the card is, with no id. The ordinary card's refusal
                # (repo.add_skip's: "rater R has already rated image I; ...") differed from a repeat's, a tell from
                # a stale second tab or a hand-made event (found by review); a closed round is refused below, alike
                raise Conflict(ALREADY_SCORED)
            if kept_round is not None and not again and round_.status == "labeling":
                # the batch vouches for the page's skip; a kept one passes the gate a rating passes (a closed round
                # is refused by add_skip, as for the page's skip)
                _check_offered(s, who, image_id, round_.id)
            if again:
                db_quality.skip_repeat(session=s, image_id=image_id, rater_id=who.rater_id)  # app.repeats
                repo.add_undo_step(session=s, rater_id=who.rater_id, image_id=image_id, action="repeat_skip")
            else:
                skipped_before = repo.find_skip(session=s, image_id=image_id, rater_id=who.rater_id) is not None
                # add_skip, skipped before or not: it refuses a round not open for labeling (a card skipped before the
                # round closed, skipped again after it, was taken without a word: found by the state machine test)
                repo.add_skip(session=s, image_id=image_id, rater_id=who.rater_id)
                if not skipped_before:
                    repo.add_undo_step(session=s, rater_id=who.rater_id, image_id=image_id, action="skip")
                    skipped_now = True
            if noted is not None and (again or skipped_now):
                noted(round_.id)
        if skipped_now:  # a skip lowers what the round wants: it may be complete now (found by review)
            auto_close.after_rating(factory, image_id)
        if image_id not in state.skipped and (kept_round is None or image_id in state.batch):
            state.skipped.append(image_id)
    except (Conflict, InvalidInput, NotFound) as e:
        message = str(e)
    return _after_action(factory, data_dir, who, state, batch_size=batch_size, message=message)


# an undo the page gave up (its handler overran, or its queue stood still) whose page has had a later action taken up
# since: done now, it would take back that later action instead of the one meant (app.ui_rate_tab.Answered)
UNDO_OVERTAKEN = ("this undo was sent before your last action and ran only after it, so it was not done (it would have "
                  "taken back another rating or skip than meant); press u again if you still want it")


def undo(factory, data_dir, who: Who, state_value: dict | None, *, batch_size: int,
         fresh: Callable[[int], bool] | None = None, noted: Callable[[int], None] | None = None) -> View:
    """Undo the rater's newest rating or skip of the open round (the history is in the database, so it survives a
    reload): a new rating is removed, an edit gets its previous score back, a skip is lifted. The image comes back
    to the page, leased to the rater again, to be rated again. The lease cap holds all the same (``lease_cap``: the
    most live leases the rater may hold in the round): where the undone image's lease would take the rater past it,
    the newest of their other leases in the round is given back, and its card leaves the page (it stays the rater's
    unanswered card: a later batch brings it back first, once the cap allows). The undone image is what the rater
    asked for, so it keeps its place. Undoing a rating after the batch moved on otherwise held the cap and one more,
    one more again at each undo (found by the fifth review). A repeat's score or skip (app.repeats) is undone as any
    other: the image is pending as a repeat again (or gets its earlier second score back); undoing the first rating of
    a repeated image drops its repeat (undoing an edit of it keeps the repeat).

    ``fresh``: called with the round under the round's lock (every path that undoes takes it; without a round
    nothing is undone): False refuses the undo (``UNDO_OVERTAKEN``). ``noted``: called with the round under that
    lock, before the commit, once a step was taken back (``ui_rate_tab.Answered``)."""
    state = RateState.from_value(state_value)
    message = None
    new_grid = False
    trimmed: list[int] = []
    try:
        with write_session(factory) as s:
            round_id = state.round_id
            if round_id is None and state.experiment_id is not None:
                open_ = repo.get_open_round(session=s, experiment_id=state.experiment_id)
                round_id = open_.id if open_ is not None else None
            if round_id is not None:
                # the experiment (shared: a change of who may rate it waits, repo.share_experiment; who may rate it
                # checked before the lock and under it, members.share), then the round, as every write that locks them
                experiment_id = repo.get_round(session=s, round_id=round_id).experiment_id
                members.share(s, who, experiment_id)
                repo.lock_round(session=s, round_id=round_id)
                if fresh is not None and not fresh(round_id):  # under the round's lock: nothing of the page's lands between
                    raise Conflict(UNDO_OVERTAKEN)
            undone = None if round_id is None else repo.undo_last(session=s, rater_id=who.rater_id, round_id=round_id)
            done = repo.round_progress(session=s, round_id=round_id, rater_id=who.rater_id) if (
                undone is None and round_id is not None) else None
            if undone is not None and undone.action == "rate" and undone.restored_score is None:
                # the first rating is gone: its repeat (app.repeats) has nothing left to agree with (an undone edit
                # leaves a first rating, and the repeat with it)
                db_quality.drop_repeat(session=s, image_id=undone.image_id, rater_id=who.rater_id)
            if undone is not None and repo.find_rating(session=s, image_id=undone.image_id, rater_id=who.rater_id) is None:
                # back on the page; its lease keeps the time of its first grant (repo.lease_images), so a skip and
                # its undo do not restart the window in which it holds a place against the other raters
                repo.lease_images(session=s, round_id=round_id, rater_id=who.rater_id, image_ids=[undone.image_id],
                                  lease_s=LEASE_S)
                trimmed = _within_cap(s, round_id, who, batch_size, keep=undone.image_id)
            if undone is not None and noted is not None:  # under the round's lock, before the commit
                noted(round_id)
        if undone is None and done is not None and done.rater_rated + done.rater_skipped:
            # their older ratings and skips are past the undo history (repo.UNDO_KEEP): "nothing to undo" said
            # otherwise, beside their ratings (found by review, 5 Dec 2026)
            message = (f"There is nothing more to undo in this round: undo goes back at most {repo.UNDO_KEEP} steps, "
                       "and your earlier ratings and skips stay as they are.")
        elif undone is None:
            message = "There is nothing to undo in this round."
        else:
            image_id = undone.image_id
            if undone.skipped:  # the undone score had taken back a skip: skipped again, as before it (repo.undo_last)
                if image_id not in state.skipped:
                    state.skipped.append(image_id)
            elif image_id in state.skipped:
                state.skipped.remove(image_id)
            if image_id not in state.batch:  # it was in an earlier batch: bring it back to the front
                state.batch.insert(0, image_id)
                new_grid = True
            if set(trimmed) & set(state.batch):  # given back to keep the rater within the cap: off the page
                state.batch = [i for i in state.batch if i not in trimmed]
                new_grid = True
    except (Conflict, NotFound) as e:
        message = str(e) if isinstance(e, members.NotARater) else f"Cannot undo: {e}"
    with read_session(factory) as s:
        return _render(s, data_dir, state, who, new_grid=new_grid, message=message)


def _within_cap(session: Session, round_id: int, who: Who, batch_size: int, *, keep: int) -> list[int]:
    """Give back the rater's newest live leases in the round, other than on ``keep``, past ``lease_cap``; returns
    the images given back (``undo``)."""
    held = repo.held_image_ids(session=session, round_id=round_id, rater_id=who.rater_id)  # oldest lease first
    excess = len(held) - lease_cap(session, repo.get_round(session=session, round_id=round_id), batch_size)
    if excess <= 0:
        return []
    trimmed = [i for i in reversed(held) if i != keep][:excess]
    repo.release_leases_of(session=session, rater_id=who.rater_id, image_ids=trimmed)
    return trimmed


def _after_action(factory, data_dir, who: Who, state: RateState, *, batch_size: int, message: str | None) -> View:
    with read_session(factory) as s:
        if state.batch and _batch_done(s, state, who):
            view = load_batch(factory, data_dir, who, state.to_value(), batch_size=batch_size)
            return View(view.grid, view.marks, view.progress, view.state, message)
        return _render(s, data_dir, state, who, new_grid=False, message=message)


# ---------------------------------------------------------------------------------------------
# the public API's batch
# ---------------------------------------------------------------------------------------------


def api_batch(factory, data_dir, who: Who, *, limit: int, experiment: str = "", batch_size: int = 8) -> dict[str, Any]:
    """The next images for the rater, with their PNG bytes (base64; None for a file the server cannot read), for the
    public ``next_batch`` endpoint. ``batch_size``: the rating page's (``AppServices.batch_size``), the least
    ``lease_cap`` lets a rater hold: past the cap a batch has fewer images than ``limit``, and says why."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_API_BATCH:
        raise InvalidInput(f"limit must be a whole number from 1 to {MAX_API_BATCH}, got {shown(limit)}")
    if experiment is not None and not isinstance(experiment, str):
        raise InvalidInput(f"the experiment name must be text (empty for the experiment being labeled), got {shown(experiment)}")
    with write_session(factory) as s:  # handing images out leases them to the rater
        exp = experiment_by_name(s, experiment, who)  # one the rater may rate (app.members), or refused
        if exp is None:
            none = members.NONE_FOR_YOU if repo.list_experiments(session=s, archived=False) else "there is no experiment yet"
            return {"experiment": None, "round": None, "items": [], "progress": Progress(None, None, None).as_dict(),
                    "message": none}
        round_ = repo.get_open_round(session=s, experiment_id=exp.id)
        cap = lease_cap(s, round_, batch_size) if round_ is not None else None
        # a rater an admin takes off while this waits on the lock: refused as the name not existing, as the same
        # request after the change (it named the experiment's id: sixth review)
        named = (experiment or "").strip()
        unknown = repo.no_experiment_named(named) if named else None
        images = draw_batch(s, round_, who, limit, cap=cap, unknown=unknown) if round_ is not None else []
        items = [{"image_id": im.id, "prompt": im.prompt, "seed": im.seed, "png_base64": png_base64(data_dir, im)}
                 for im in images]
        message = _empty_message(s, exp, who) if not items else f"{len(items)} images to rate with submit_rating"
        if items and len(items) < limit and cap is not None and len(
                repo.held_image_ids(session=s, round_id=round_.id, rater_id=who.rater_id)) >= cap:
            message += (f"; you may hold at most {cap} unrated images of this round at a time (the others' share), "
                        "so rate these to get more")
        return {
            "experiment": exp.name,
            "round": round_.index if round_ is not None else None,
            "items": items,
            "progress": progress(s, exp, who).as_dict(),
            "message": message,
        }
