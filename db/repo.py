"""Repository functions: small, keyword-only, each taking the session it works in.

The caller owns the transaction (``db.engine.write_session``); these functions flush but never
commit. Bad input raises a ``db.errors`` exception (all ``ValueError``s) with one clear sentence,
before anything is written.

Sections: experiments, rounds, images, raters, ratings and skips, progress and snapshots, checkpoints,
exports, publishing a round, accounts. Add new functions to the matching section. The worker's job queue is
``db.jobs``; the input checks are ``db.checks``.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, delete, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from db import jobs as job_queue
from db.checks import MAX_ID, findable_id, shown
from db.checks import check_choice as _choice
from db.checks import check_int as _int
from db.checks import check_json as _json
from db.checks import check_lease as _lease
from db.checks import check_name as _name
from db.checks import check_now as _now
from db.checks import check_prompt as _prompt
from db.checks import check_relative_path as _relative_path
from db.checks import check_sha256 as _sha256
from db.checks import check_text as _text
from db.errors import Conflict, InvalidInput, NotFound
from db.models import (
    EXPERIMENT_STATUSES,
    EXPORT_FORMATS,
    IMAGE_KINDS,
    IMAGE_PROMPT_MAX_BYTES,
    METHOD_MAX,
    RATER_ROLES,
    ROUND_STATUSES,
    SCORE_MAX,
    SCORE_MIN,
    SESSION_END_REASONS,
    UNDO_ACTIONS,
    AuditEntry,
    Checkpoint,
    ComparisonPair,
    ComparisonVote,
    Experiment,
    Export,
    Image,
    ImageLease,
    Job,
    PairSkip,
    Rater,
    Rating,
    RepeatRating,
    Round,
    Skip,
    UndoStep,
    UserSession,
    utcnow,
)

# Allowed round status changes. "failed" -> "generating" retries a round; extend here when needed.
ROUND_TRANSITIONS: dict[str, tuple[str, ...]] = {
    "generating": ("labeling", "failed"),
    "labeling": ("training", "done", "failed"),
    "training": ("done", "failed", "labeling"),
    "failed": ("generating",),
    "done": (),
}

# ---------------------------------------------------------------------------------------------
# experiments
# ---------------------------------------------------------------------------------------------


MAX_OVERLAP = 1000  # ratings wanted per image: more raters than any team has, and what an INTEGER holds


def round_budget(budgets: Sequence[int], index: int) -> int | None:
    """The budget of round ``index`` (images generated, ratings wanted): ``budgets[index]``, and the last budget again
    for every round past the end of the list (as the worker generates them). None only for an empty list. The one
    rule for the worker (app.services.round_budget) and every count that shows a round's budget: progress read None
    past the list while the worker generated the last budget again (found by review)."""
    budgets = list(budgets or ())
    if not budgets:
        return None
    return budgets[min(max(index, 0), len(budgets) - 1)]


def create_experiment(
    *,
    session: Session,
    name: str,
    model_spec: str,
    method: str,
    config: dict[str, Any],
    budgets: Sequence[int],
    prompts: Sequence[str],
    overlap: int = 1,
) -> Experiment:
    """A new active experiment. ``budgets[k]`` is the number of ratings wanted in round k."""
    _name("experiment name", name)
    if not isinstance(model_spec, str) or not model_spec.strip():
        raise InvalidInput(f"model_spec must be a non-empty string, got {model_spec!r}")
    _text("model_spec", model_spec)
    _name("method", method)
    if len(method) > METHOD_MAX:
        raise InvalidInput(f"method is {len(method)} characters long; the limit is {METHOD_MAX}")
    if not isinstance(config, dict):
        raise InvalidInput(f"config must be a dict, got {type(config).__name__}")
    _json("config", config)
    if isinstance(budgets, str | bytes) or not isinstance(budgets, Sequence) or not budgets:
        raise InvalidInput(f"budgets must be a non-empty list of positive whole numbers, got {budgets!r}")
    for k, b in enumerate(budgets):
        _int(f"budget of round {k}", b, minimum=1)
    if isinstance(prompts, str | bytes) or not isinstance(prompts, Sequence) or not prompts:
        raise InvalidInput(f"prompts must be a non-empty list of strings, got {prompts!r}")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise InvalidInput(f"each prompt must be a non-empty string, got {p!r}")
        _prompt(f"prompt {shown(p)}", p)
    _int("overlap (ratings wanted per image)", overlap, minimum=1, maximum=MAX_OVERLAP)
    if session.scalar(select(Experiment.id).where(Experiment.name == name)) is not None:
        raise Conflict(f"an experiment named {name!r} already exists")
    experiment = Experiment(
        name=name,
        model_spec=model_spec,
        method=method,
        config=config,
        budgets=list(budgets),
        prompts=list(prompts),
        overlap=overlap,
        status="active",
    )
    session.add(experiment)
    try:
        session.flush()
    except IntegrityError as exc:  # another transaction created the name first (PostgreSQL; found by review)
        raise Conflict(f"an experiment named {name!r} already exists") from exc
    return experiment


no_experiment_with_id = job_queue.no_experiment_with_id  # one sentence for both modules


def no_experiment_named(name: Any) -> str:
    """The sentence for a name that names no experiment (and, as ``no_experiment_with_id``, for one hidden)."""
    return f"there is no experiment named {shown(name)}"


def no_image_with_id(image_id: Any) -> str:
    """The sentence for an image id that names none (and, as ``no_experiment_with_id``, for one hidden)."""
    return f"there is no image with id {image_id}"


def get_experiment(*, session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id) if findable_id(experiment_id) else None
    if experiment is None:
        raise NotFound(no_experiment_with_id(experiment_id))
    return experiment


def lock_experiment(*, session: Session, experiment_id: int) -> Experiment:
    """The experiment, its row locked for the rest of the transaction and read afresh (``get_experiment`` reads it
    without a lock). For a change decided on what it reads: on PostgreSQL, a Pause that read 'active' while Finish
    ran then wrote 'paused' over 'finished', and two settings changes each rewrote the whole config from their own
    copy, the second undoing the first (found by review).

    Lock order, in every transaction that takes more than one of these on PostgreSQL: a job's row (a worker's
    publish, which updates its job first; a rollback's queued train job), then the experiment, then its rounds, then
    their images and pairs. Finish locks the jobs last but with NOWAIT (``db.jobs.live_job``): a publish holding its
    job and waiting here makes Finish a Conflict at once, not a deadlock."""
    # FOR NO KEY UPDATE (key_share), not FOR UPDATE: inserting a row that references the experiment (a round's
    # train job, a pair) takes a key-share lock on it, which FOR UPDATE blocks; Finish (this lock, then the rounds)
    # against Close (a round, then its job's insert) then deadlocked on PostgreSQL (found by review)
    experiment = session.get(Experiment, experiment_id, with_for_update={"key_share": True},
                             populate_existing=True) if findable_id(experiment_id) else None
    if experiment is None:
        raise NotFound(no_experiment_with_id(experiment_id))
    return experiment


def share_experiment(*, session: Session, experiment_id: int,
                     check: Callable[[int], None] | None = None) -> Experiment:
    """The experiment, its row locked FOR SHARE for the rest of the transaction and read afresh: a rater's write
    (``lock_image_for_rating``, undo) holds it while it checks who may rate (``app.members``) and writes. Every change
    of that list locks the row (``lock_experiment``, FOR NO KEY UPDATE, which FOR SHARE blocks and is blocked by), so
    on PostgreSQL a rating in flight is waited for and one sent while the change is in flight waits for it and reads
    the list as it committed; read without the lock, a rating checked before a change that took its rater off was
    inserted after the change committed (found by the fifth review). Many raters share the lock at once. Taken
    before the experiment's rounds and images (``lock_experiment``'s order); SQLite leaves the clause out.

    ``check``: who may write (the app's rule, ``app.members``; raises to refuse), called with the experiment's id
    first, without the lock, and again once the lock is held. Checked only under the lock, a request for an
    experiment hidden from its rater waited for an admin's change of it in flight where one that does not exist was
    answered at once, so the wait told that it exists (found by the sixth review); refused before the lock, it never
    touches it, and one allowed then is checked again against the list as it stands under the lock."""
    if check is not None:
        check(experiment_id)
    experiment = session.get(Experiment, experiment_id, with_for_update={"read": True},
                             populate_existing=True) if findable_id(experiment_id) else None
    if experiment is None:
        raise NotFound(no_experiment_with_id(experiment_id))
    if check is not None:
        check(experiment_id)
    return experiment


def get_experiment_by_name(*, session: Session, name: str) -> Experiment:
    experiment = session.scalar(select(Experiment).where(Experiment.name == name))
    if experiment is None:
        raise NotFound(no_experiment_named(name))
    return experiment


def list_experiments(*, session: Session, status: str | None = None, archived: bool | None = None) -> list[Experiment]:
    """Experiments, oldest first; only those with ``status`` when given; ``archived`` False/True: not archived/archived."""
    stmt = select(Experiment).order_by(Experiment.id)
    if status is not None:
        stmt = stmt.where(Experiment.status == _choice("experiment status", status, EXPERIMENT_STATUSES))
    if archived is not None:
        stmt = stmt.where(Experiment.archived_at.is_not(None) if archived else Experiment.archived_at.is_(None))
    return list(session.scalars(stmt))


def set_experiment_status(*, session: Session, experiment_id: int, status: str) -> Experiment:
    """Pause or resume (or finish, see ``finish_experiment``). A finished experiment stays finished."""
    _choice("experiment status", status, EXPERIMENT_STATUSES)
    experiment = lock_experiment(session=session, experiment_id=experiment_id)
    if experiment.status == "finished" and status != "finished":
        raise Conflict(f"experiment {experiment.name!r} is finished; it cannot be {'paused' if status == 'paused' else 'resumed'}")
    experiment.status = status
    session.flush()
    return experiment


def set_raters_see_dashboard(*, session: Session, experiment_id: int, allowed: bool) -> Experiment:
    """Whether raters (not only admins) may see the experiment's dashboard; its plots can bias their ratings."""
    if not isinstance(allowed, bool):
        raise InvalidInput(f"allowed must be True or False, got {allowed!r}")
    experiment = get_experiment(session=session, experiment_id=experiment_id)
    experiment.raters_see_dashboard = allowed
    session.flush()
    return experiment


def finished_reason(name: str) -> str:
    """The error recorded on the jobs of experiment ``name`` that finishing it cancelled."""
    return f"cancelled: experiment {name!r} was finished"


def finish_experiment(*, session: Session, experiment_id: int, now: datetime | None = None) -> Experiment:
    """End an experiment for good: its queued jobs are cancelled (eval jobs too: a round's eval grid stays as far
    as it got), a round open for labeling or waiting for training is marked done, a round still waiting for its
    images failed. Ratings, images and adapters stay.

    Refused while the worker is running one of its generate or train jobs (wait for it to finish). A running eval
    job is no obstacle: it sees the experiment finished when it stores its next chunk and stops there, its job
    failed with the same "cancelled" message and its grid kept as far as it got (if it had stored its last chunk
    already, it publishes its metrics onto the rounds that are done now)."""
    now = _now(now, session)
    experiment = lock_experiment(session=session, experiment_id=experiment_id)
    if experiment.status == "finished":
        return experiment
    # then the rounds: a close_round in flight (its round locked, its train job not yet committed) is waited
    # for, so its job is seen and cancelled below; on PostgreSQL it was left queued (found by review)
    session.scalars(select(Round).where(Round.experiment_id == experiment_id).order_by(Round.index).with_for_update(),
                    execution_options={"populate_existing": True}).all()
    running = job_queue.live_job(session, now, kinds=job_queue.PERSON_KINDS, lock=True, experiment_id=experiment_id)
    if running is not None:
        raise Conflict(f"the worker is running job {running.id} ({running.kind}) of experiment {experiment.name!r}; "
                       "finish the experiment when that job is done")
    job_queue.cancel_jobs(session, finished_reason(experiment.name), now=now, experiment_id=experiment_id)
    for round_ in list_rounds(session=session, experiment_id=experiment_id):
        if round_.status in ("labeling", "training"):
            set_round_status(session=session, round_id=round_.id, status="done")
        elif round_.status == "generating":
            set_round_status(session=session, round_id=round_.id, status="failed")
    experiment.status = "finished"
    session.flush()
    return experiment


def archive_experiment(*, session: Session, experiment_id: int, now: datetime | None = None) -> Experiment:
    """Finish the experiment (see ``finish_experiment``) and hide it from the experiment selector. Idempotent."""
    now = _now(now, session)
    experiment = finish_experiment(session=session, experiment_id=experiment_id, now=now)
    if experiment.archived_at is None:
        experiment.archived_at = now
    session.flush()
    return experiment


# ---------------------------------------------------------------------------------------------
# rounds
# ---------------------------------------------------------------------------------------------


def create_round(*, session: Session, experiment_id: int, adapter_path: str | None = None, index: int | None = None) -> Round:
    """Round ``index`` (default: the next one) in status 'generating'.

    Round 0 samples from the base model and has no adapter; every later round needs one.
    """
    get_experiment(session=session, experiment_id=experiment_id)
    last = session.scalar(select(func.max(Round.index)).where(Round.experiment_id == experiment_id))
    if index is None:
        index = 0 if last is None else last + 1
    _int("round index", index, minimum=0)
    if index == 0 and adapter_path is not None:
        raise InvalidInput("round 0 samples from the base model and takes no adapter_path")
    if index > 0:
        _relative_path(f"adapter_path of round {index}", adapter_path)
    if session.scalar(select(Round.id).where(Round.experiment_id == experiment_id, Round.index == index)) is not None:
        raise Conflict(f"experiment {experiment_id} already has a round {index}")
    round_ = Round(experiment_id=experiment_id, index=index, status="generating", adapter_path=adapter_path, metrics={})
    session.add(round_)
    session.flush()
    return round_


def get_round(*, session: Session, round_id: int) -> Round:
    round_ = session.get(Round, round_id) if findable_id(round_id) else None
    if round_ is None:
        raise NotFound(f"there is no round with id {round_id}")
    return round_


def get_round_by_index(*, session: Session, experiment_id: int, index: int) -> Round:
    # an index or id past the integer columns' range is not found (it was an OverflowError on SQLite, a DataError on
    # PostgreSQL: found by review)
    findable = findable_id(experiment_id) and isinstance(index, int) and not isinstance(index, bool) and 0 <= index <= MAX_ID
    round_ = session.scalar(select(Round).where(Round.experiment_id == experiment_id, Round.index == index)) if findable else None
    if round_ is None:
        raise NotFound(f"experiment {experiment_id} has no round {index}")
    return round_


def list_rounds(*, session: Session, experiment_id: int) -> list[Round]:
    return list(session.scalars(select(Round).where(Round.experiment_id == experiment_id).order_by(Round.index)))


def set_round_status(*, session: Session, round_id: int, status: str) -> Round:
    """Move a round along ``ROUND_TRANSITIONS``; at most one round per experiment is 'labeling'. A round leaving
    labeling records what it wanted then (``wanted_at_close``)."""
    _choice("round status", status, ROUND_STATUSES)
    round_ = get_round(session=session, round_id=round_id)
    if status == round_.status:
        return round_
    if status not in ROUND_TRANSITIONS[round_.status]:
        raise Conflict(
            f"round {round_.index} cannot go from {round_.status!r} to {status!r}; "
            f"allowed: {list(ROUND_TRANSITIONS[round_.status]) or 'none'}"
        )
    if status == "labeling":
        other = get_open_round(session=session, experiment_id=round_.experiment_id)
        if other is not None and other.id != round_.id:
            raise Conflict(f"round {other.index} of this experiment is still open for labeling; close it first")
        round_.wanted_at_close = None  # open (again): counted live
    elif round_.status == "labeling":
        # what it wanted is fixed from here: counted later, it followed the accounts enabled since (found by review)
        round_.wanted_at_close = wanted_now(session, round_)
    round_.status = status
    session.flush()
    return round_


def open_round(*, session: Session, round_id: int) -> Round:
    """Open a generated round for labeling."""
    return set_round_status(session=session, round_id=round_id, status="labeling")


def get_open_round(*, session: Session, experiment_id: int) -> Round | None:
    """The round now being labeled, or None."""
    return session.scalar(
        select(Round).where(Round.experiment_id == experiment_id, Round.status == "labeling").order_by(Round.index.desc())
    )


def lock_round(*, session: Session, round_id: int) -> Round:
    """The round, row-locked FOR UPDATE until the transaction ends (re-read from the database).

    A rating holds its round FOR SHARE (``lock_image_for_rating``), so on PostgreSQL this waits for every rating
    transaction in flight to commit, and keeps new ones out until this transaction ends. SQLite serialises write
    transactions already (BEGIN IMMEDIATE) and SQLAlchemy leaves the clause out there."""
    round_ = session.scalar(
        select(Round).where(Round.id == _int("round id", round_id)).with_for_update(),
        execution_options={"populate_existing": True},
    )
    if round_ is None:
        raise NotFound(f"there is no round with id {round_id}")
    return round_


def close_round(*, session: Session, experiment_id: int, expected_index: int | None = None) -> Job:
    """Close the experiment's open round for labeling and queue its train job with the rating watermark.

    The round is locked before the watermark is read, so no rating of the round commits after the watermark
    (a late rating waits for the lock and then finds the round closed). With ``expected_index`` (what the admin
    confirmed), a different open round is refused.

    The experiment's row is locked (and read afresh) before the round, as Pause, Finish and the settings changes lock
    it: a Pause or Finish in flight is waited for and then refuses the close (it read a copy without the lock and
    closed the round of an experiment paused meanwhile; found by review)."""
    experiment = lock_experiment(session=session, experiment_id=experiment_id)
    if experiment.status != "active":
        raise Conflict(f"experiment {experiment.name!r} is finished; it cannot be trained again"
                       if experiment.status == "finished" else
                       f"experiment {experiment.name!r} is {experiment.status}; resume it before training")
    open_ = get_open_round(session=session, experiment_id=experiment_id)
    if open_ is None:
        raise Conflict(f"experiment {experiment.name!r} has no round open for labeling")
    round_ = lock_round(session=session, round_id=open_.id)
    if round_.status != "labeling":
        raise Conflict(f"round {round_.index} of {experiment.name!r} was closed meanwhile (it is {round_.status!r})")
    if expected_index is not None and round_.index != _int("expected round index", expected_index, minimum=0):
        raise Conflict(f"round {round_.index} is the open round now, not round {expected_index}; nothing was closed")
    rated = session.scalar(
        select(func.count(Rating.id)).join(Image, Image.id == Rating.image_id).where(Image.round_id == round_.id)
    )
    if not rated:  # issue 14 item 1: an experiment of pairwise comparisons has votes instead (app.pairwise)
        rated = session.scalar(
            select(func.count(ComparisonVote.id)).join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
            .where(ComparisonPair.round_id == round_.id, ComparisonPair.kind == "preference")
        )
    if not rated:
        raise Conflict(f"round {round_.index} has no ratings yet (and no comparisons); rate or compare some images "
                       "before training")
    watermark = latest_rating_id(session=session, experiment_id=experiment_id)
    set_round_status(session=session, round_id=round_.id, status="training")
    session.execute(delete(ImageLease).where(ImageLease.image_id.in_(select(Image.id).where(Image.round_id == round_.id))))
    return job_queue.enqueue_job(session=session, kind="train", experiment_id=experiment_id, round_id=round_.id,
                                 payload={"round_index": round_.index, "watermark": watermark})


def reopen_round(*, session: Session, round_id: int, now: datetime | None = None) -> Round:
    """Open a round that was closed for training for labeling again; its waiting or failed train job is cancelled
    (its eval job, if any, is left alone: the round's model and so its eval grid do not change).

    Refused while the worker is training on it, once its training result is published (the next round exists),
    and for a finished experiment."""
    now = _now(now, session)
    round_ = lock_round(session=session, round_id=round_id)
    experiment = get_experiment(session=session, experiment_id=round_.experiment_id)
    if experiment.status == "finished":
        raise Conflict(f"experiment {experiment.name!r} is finished; its rounds cannot be reopened")
    if round_.status == "labeling":
        return round_
    if round_.status != "training":
        raise Conflict(f"round {round_.index} is {round_.status!r}; only a round closed for training can be reopened")
    # only its training stands in the way: the round's eval grid (an "eval" job, queued or running) stays valid
    running = job_queue.live_job(session, now, lock=True, round_id=round_.id, kind="train")
    if running is not None:
        raise Conflict(f"the worker is training on round {round_.index} now (job {running.id}); wait until it finishes "
                       "or fails")
    job_queue.cancel_jobs(session, f"cancelled: round {round_.index} was reopened for labeling", now=now,
                          round_id=round_.id, kind="train")
    # app.auto_close leaves a reopened round to the admin: it is fully rated already, so it would close again at the
    # first correction
    round_.metrics = {**(round_.metrics or {}), "reopened_at": now.isoformat()}
    return set_round_status(session=session, round_id=round_.id, status="labeling")


def update_round_metrics(*, session: Session, round_id: int, metrics: dict[str, Any]) -> Round:
    """Merge ``metrics`` into the round's metrics (new keys win), into the row as committed: it is re-read under a
    FOR UPDATE lock (``lock_round``), so a copy loaded earlier in the transaction, stale since another transaction
    committed its metrics, is never written back over them (found by review: PostgreSQL lost an eval job's metrics)."""
    if not isinstance(metrics, dict):
        raise InvalidInput(f"metrics must be a dict, got {type(metrics).__name__}")
    _json("metrics", metrics)
    round_ = lock_round(session=session, round_id=round_id)
    round_.metrics = {**(round_.metrics or {}), **metrics}
    session.flush()
    return round_


# ---------------------------------------------------------------------------------------------
# images
# ---------------------------------------------------------------------------------------------


def add_image(
    *,
    session: Session,
    round_id: int,
    prompt: str,
    seed: int,
    file_path: str,
    sha256: str,
    embedding: bytes,
    embedding_dim: int,
    kind: str = "query",
) -> Image:
    """Record a generated image. ``embedding`` is ``embedding_dim`` float32 values as bytes."""
    _choice("image kind", kind, IMAGE_KINDS)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidInput(f"prompt must be a non-empty string, got {prompt!r}")
    _prompt(f"the image's prompt {shown(prompt)}", prompt, IMAGE_PROMPT_MAX_BYTES)  # not the raw SQL error (review)
    _int("seed", seed, minimum=0, maximum=2**63 - 1)
    _relative_path("file_path", file_path)
    _sha256("sha256", sha256)
    _int("embedding_dim", embedding_dim, minimum=1)
    if not isinstance(embedding, bytes | bytearray | memoryview):
        raise InvalidInput(f"embedding must be bytes (float32 values), got {type(embedding).__name__}")
    embedding = bytes(embedding)
    if len(embedding) != 4 * embedding_dim:
        raise InvalidInput(f"embedding has {len(embedding)} bytes but {embedding_dim} float32 values need {4 * embedding_dim}")
    round_ = get_round(session=session, round_id=round_id)
    duplicate = select(Image.id).where(Image.round_id == round_id, Image.kind == kind, Image.prompt == prompt, Image.seed == seed)
    if session.scalar(duplicate) is not None:
        raise Conflict(f"round {round_.index} already has a {kind} image for prompt {prompt!r} and seed {seed}")
    image = Image(
        round_id=round_id,
        prompt=prompt,
        seed=seed,
        file_path=file_path,
        sha256=sha256,
        embedding=embedding,
        embedding_dim=embedding_dim,
        kind=kind,
    )
    session.add(image)
    session.flush()
    return image


def get_image(*, session: Session, image_id: int) -> Image:
    image = session.get(Image, image_id) if findable_id(image_id) else None
    if image is None:
        raise NotFound(no_image_with_id(image_id))
    return image


def list_images(*, session: Session, round_id: int, kind: str | None = None) -> list[Image]:
    stmt = select(Image).where(Image.round_id == round_id).order_by(Image.id)
    if kind is not None:
        stmt = stmt.where(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    return list(session.scalars(stmt))


def count_images(*, session: Session, round_id: int, kind: str | None = None) -> int:
    """How many images the round has (of ``kind``), counted in SQL."""
    stmt = select(func.count(Image.id)).where(Image.round_id == round_id)
    if kind is not None:
        stmt = stmt.where(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    return session.scalar(stmt) or 0


# ---------------------------------------------------------------------------------------------
# raters
# ---------------------------------------------------------------------------------------------


_CREATE_RATER_LOCK = 0x5E1C0_0001  # PostgreSQL advisory lock key taken while a rater is created


def create_rater(*, session: Session, name: str, password_hash: str, role: str = "rater") -> Rater:
    """A new rater. ``password_hash`` is already hashed by the app; this layer never sees passwords."""
    _name("rater name", name)
    _choice("role", role, RATER_ROLES)
    if not isinstance(password_hash, str) or not password_hash:
        raise InvalidInput("password_hash must be a non-empty string (hash the password in the app)")
    if session.get_bind().dialect.name == "postgresql":  # one creation at a time: two look-alikes at once both passed
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _CREATE_RATER_LOCK})
    if session.scalar(select(Rater.id).where(Rater.name == name)) is not None:
        raise Conflict(f"a rater named {name!r} already exists")
    # a name that reads the same as another's ('Root', a Cyrillic 'rооt', a fullwidth 'ｒｏｏｔ' beside 'root') would
    # pass for that person in the user list, the audit log and the banner (found by review)
    key = name_key(name)
    same = next((other for other in session.scalars(select(Rater.name)) if name_key(other) == key), None)
    if same is not None:
        raise Conflict(f"the name {name!r} reads the same as the existing account {same!r}; choose another name")
    rater = Rater(name=name, role=role, password_hash=password_hash)
    session.add(rater)
    try:
        session.flush()
    except IntegrityError as exc:  # another transaction created the name first (PostgreSQL): a refusal, not a crash
        raise Conflict(f"a rater named {name!r} already exists") from exc
    return rater


# letters that look alike across scripts, folded to Latin for name_key (NFKC folds width and compatibility forms);
# applied before and after case folding, so capitals that fold to a listed small letter are caught too
_CONFUSABLES = str.maketrans(
    "аеорсухіјѕԁɡӏһԝѵАВЕКМНОРСТУХІЈЅΑΒΕΖΗΙΚΜΝΟΡΤΥΧαονρκιɑɩᴏᴄᴜᴠᴡᴢօսհոցզðđÐĐ’ɖ",
    "aeopcyxijsdglhwvABEKMHOPCTYXIJSABEZHIKMNOPTYXaovpkiaiocuvwzouhngqddDD'd")
# after case folding: what reads the same in a sans-serif font (an I, an i, a 1 or a dotless i as an l; a 0 as an
# o; a kra as a k); a refusal this causes between two real names costs one more try at choosing a name
_ALIKE = str.maketrans("i1ı0ĸ", "lllok")


# Latin letters drawn with a stroke, a bar or a middle dot through them (ŧ ħ ł ŀ ø đ, ƀ ɨ ƶ ǥ ...), folded to the
# letter: NFKD leaves them whole (ŀ it makes 'l·'), so 'ŧom' and 'ałice' passed beside 'tom' and 'alice' (found by the
# sixth review of 5 Dec 2026). Read from the Unicode names of the Latin blocks rather than listed by hand; applied
# before NFKC (for ŀ) and with _CONFUSABLES after it.
_STRUCK_NAME = re.compile(r"LATIN (SMALL|CAPITAL) LETTER (BARRED )?(?:DOTLESS )?([A-Z])(?: WITH (.+))?")
_LATIN_BLOCKS = ((0x0080, 0x02AF), (0x1D00, 0x1DBF), (0x1E00, 0x1EFF), (0x2C60, 0x2C7F), (0xA720, 0xA7FF),
                 (0xAB30, 0xAB6F))


def _struck_letters() -> dict[int, int]:
    table = {}
    for low, high in _LATIN_BLOCKS:
        for code in range(low, high + 1):
            match = _STRUCK_NAME.fullmatch(unicodedata.name(chr(code), ""))
            if match is None:
                continue
            case, barred, letter, marks = match.groups()
            if barred or (marks and re.search(r"\b(STROKE|BAR|MIDDLE DOT)\b", marks)):
                table[code] = ord(letter if case == "CAPITAL" else letter.lower())
    return table


_STRUCK = _struck_letters()
_CONFUSABLES = {**_STRUCK, **_CONFUSABLES}


def name_key(name: str) -> str:
    """What a name reads as, for telling look-alike account names apart: NFKC (width, compatibility forms), accents and
    other marks dropped (an invisible one too), letters with a stroke or bar read as the letter, common Cyrillic,
    Greek, Armenian and small-capital look-alikes folded to Latin, case-folded, I/i/1/l and 0/o merged, 'rn' read as
    'm' and 'vv' as 'w', spaces of every kind made one. Computed when an account is made, never stored."""
    folded = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", name.translate(_STRUCK)).translate(_CONFUSABLES))
    folded = "".join(c for c in folded if not unicodedata.category(c).startswith("M")).casefold()
    folded = folded.translate(_CONFUSABLES).translate(_ALIKE).replace("rn", "m").replace("vv", "w")
    return " ".join(folded.split())


def get_rater(*, session: Session, rater_id: int) -> Rater:
    rater = session.get(Rater, rater_id) if findable_id(rater_id) else None
    if rater is None:
        raise NotFound(f"there is no rater with id {rater_id}")
    return rater


def check_author(session: Session, what: str, rater_id: int | None) -> None:
    """NotFound unless ``rater_id`` (an audit entry's actor, a row's author; None: nobody) names an account. Looked up
    before the insert: the foreign key's raw IntegrityError at the flush was no sentence, and it left the session
    unable to commit what the transaction had written before (found by review)."""
    if rater_id is not None:
        get_rater(session=session, rater_id=_int(what, rater_id))


def get_rater_by_name(*, session: Session, name: str) -> Rater:
    rater = session.scalar(select(Rater).where(Rater.name == name))
    if rater is None:
        raise NotFound(f"there is no rater named {shown(name)}")
    return rater


def list_raters(*, session: Session) -> list[Rater]:
    return list(session.scalars(select(Rater).order_by(Rater.id)))


def count_raters(*, session: Session, role: str | None = None) -> int:
    stmt = select(func.count(Rater.id))
    if role is not None:
        stmt = stmt.where(Rater.role == _choice("role", role, RATER_ROLES))
    return session.scalar(stmt) or 0


# ---------------------------------------------------------------------------------------------
# ratings and skips
# ---------------------------------------------------------------------------------------------


def lock_image_for_rating(*, session: Session, image_id: int,
                          check: Callable[[int], None] | None = None) -> tuple[Image, Round]:
    """The image's experiment (locked FOR SHARE, ``share_experiment``), its round (locked FOR SHARE), then the image
    (row-locked FOR UPDATE), until the transaction ends.

    On PostgreSQL this serialises raters racing for the last rating an image needs (the overlap check, then the
    insert), holds off a concurrent close of the round and a change of who may rate the experiment (the check in
    ``app.members``, then the insert); SQLite's write transactions are serialised already (BEGIN IMMEDIATE) and
    SQLAlchemy leaves the clauses out there. The experiment is locked before its round, as Close and Finish lock
    them, and the round first of the rest, as in every write that locks a round (``lock_round``: closing, leasing,
    undoing): a lease's insert takes a key-share lock on its image, so locking the image first here could deadlock
    with a batch being handed out. ``check``: ``share_experiment``'s (before any lock, and again under the
    experiment's)."""
    _int("image id", image_id)
    row = session.execute(select(Image.round_id, Round.experiment_id).join(Round, Round.id == Image.round_id)
                          .where(Image.id == image_id)).first()
    if row is None:
        raise NotFound(no_image_with_id(image_id))
    round_id, experiment_id = row
    share_experiment(session=session, experiment_id=experiment_id, check=check)
    round_ = session.scalar(
        select(Round).where(Round.id == round_id).with_for_update(read=True),
        execution_options={"populate_existing": True},
    )
    image = session.scalar(
        select(Image).where(Image.id == image_id).with_for_update(), execution_options={"populate_existing": True}
    )
    return image, round_


def _labeling_image(session: Session, image_id: int) -> tuple[Image, Round]:
    """The image and its round, refusing unless the round is open for labeling."""
    _int("image id", image_id)
    image = get_image(session=session, image_id=image_id)
    round_ = get_round(session=session, round_id=image.round_id)
    if round_.status != "labeling":
        raise Conflict(
            f"round {round_.index} is not open for labeling (it is {round_.status!r}); image {image_id} cannot be changed"
        )
    return image, round_


def _dialect_insert(session: Session) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise NotImplementedError(f"upserts are written for sqlite and postgresql, not {dialect}")
    return insert


def add_rating(*, session: Session, image_id: int, rater_id: int, score: int) -> Rating:
    """Rate an image of the open round from 1 to 10. Rating it again edits the score (one row per image and rater).

    Rating an image removes the rater's skip of it, if any.
    """
    if isinstance(score, bool) or not isinstance(score, int) or not SCORE_MIN <= score <= SCORE_MAX:
        raise InvalidInput(f"a rating must be a whole number from {SCORE_MIN} to {SCORE_MAX}, got {score!r}")
    _labeling_image(session, image_id)
    get_rater(session=session, rater_id=_int("rater id", rater_id))
    now = _now(None, session)  # the clock the rater's leases were written by (db.checks.db_clock)
    insert = _dialect_insert(session)
    stmt = (
        insert(Rating)
        .values(image_id=image_id, rater_id=rater_id, score=score, created_at=now, updated_at=now)
        .on_conflict_do_update(index_elements=[Rating.image_id, Rating.rater_id], set_={"score": score, "updated_at": now})
        .returning(Rating)
    )
    rating = session.scalars(stmt, execution_options={"populate_existing": True}).one()
    session.execute(delete(Skip).where(Skip.image_id == image_id, Skip.rater_id == rater_id))
    _end_leases(session, ImageLease.image_id == image_id, ImageLease.rater_id == rater_id, now=now)
    return rating


def find_rating(*, session: Session, image_id: int, rater_id: int) -> Rating | None:
    """The rater's rating of the image, or None if they have not rated it."""
    return session.scalar(select(Rating).where(Rating.image_id == image_id, Rating.rater_id == rater_id))


def find_skip(*, session: Session, image_id: int, rater_id: int) -> Skip | None:
    """The rater's skip of the image, or None."""
    return session.scalar(select(Skip).where(Skip.image_id == image_id, Skip.rater_id == rater_id))


def delete_rating(*, session: Session, image_id: int, rater_id: int) -> None:
    """Undo a rating while its round is still open for labeling."""
    _labeling_image(session, image_id)
    rating = find_rating(session=session, image_id=image_id, rater_id=rater_id)
    if rating is None:
        raise NotFound(f"rater {rater_id} has not rated image {image_id}; there is nothing to undo")
    session.delete(rating)
    session.flush()


def add_skip(*, session: Session, image_id: int, rater_id: int) -> Skip:
    """The rater passes on an image of the open round; it is not offered to them again. Idempotent."""
    _labeling_image(session, image_id)
    get_rater(session=session, rater_id=_int("rater id", rater_id))
    if find_rating(session=session, image_id=image_id, rater_id=rater_id) is not None:
        raise Conflict(f"rater {rater_id} has already rated image {image_id}; undo the rating before skipping it")
    skip = session.scalar(select(Skip).where(Skip.image_id == image_id, Skip.rater_id == rater_id))
    if skip is None:
        skip = Skip(image_id=image_id, rater_id=rater_id)
        session.add(skip)
        session.flush()
    _end_leases(session, ImageLease.image_id == image_id, ImageLease.rater_id == rater_id)
    return skip


def delete_skip(*, session: Session, image_id: int, rater_id: int) -> None:
    """Undo a skip while the round is still open for labeling: the image can be offered to the rater again."""
    _labeling_image(session, image_id)
    result = session.execute(delete(Skip).where(Skip.image_id == image_id, Skip.rater_id == _int("rater id", rater_id)))
    if result.rowcount == 0:
        raise NotFound(f"rater {rater_id} has not skipped image {image_id}; there is nothing to undo")


def _ratings_count(image_id_column: Any) -> Any:
    return select(func.count(Rating.id)).where(Rating.image_id == image_id_column).correlate(Image).scalar_subquery()


RESERVE_S = 1800.0  # a rater's lease holds an image's place against other raters for this long after its first grant


def _others_leases(rater_id: int, now: datetime, *, reserving_only: bool = True) -> Any:
    """How many other raters hold a live lease on the image (correlated to ``Image``); with ``reserving_only``, only
    leases still inside their ``RESERVE_S`` window from their first grant (those hold the image's place)."""
    clauses = [ImageLease.image_id == Image.id, ImageLease.rater_id != rater_id, ImageLease.expires_at > now]
    if reserving_only:
        clauses.append(ImageLease.created_at > now - timedelta(seconds=RESERVE_S))
    return select(func.count(ImageLease.id)).where(*clauses).correlate(Image).scalar_subquery()


def _unseen_by(rater_id: int, *, include_skipped: bool = False) -> Any:
    rated = select(Rating.id).where(Rating.image_id == Image.id, Rating.rater_id == rater_id).exists()
    if include_skipped:
        return ~rated
    skipped = select(Skip.id).where(Skip.image_id == Image.id, Skip.rater_id == rater_id).exists()
    return and_(~rated, ~skipped)


def _offered_to_rater(session: Session, round_id: int, rater_id: int, kind: str | None, *, now: datetime | None = None,
                      include_skipped: bool = False) -> list[Any]:
    """The WHERE clauses of the images the open round offers to a rater (see ``next_images_for_rater``)."""
    round_ = get_round(session=session, round_id=round_id)
    if round_.status != "labeling":
        raise Conflict(f"round {round_.index} is not open for labeling (it is {round_.status!r})")
    get_rater(session=session, rater_id=rater_id)
    overlap = get_experiment(session=session, experiment_id=round_.experiment_id).overlap
    clauses = [
        Image.round_id == round_id,
        _unseen_by(rater_id, include_skipped=include_skipped),
        _ratings_count(Image.id) + _others_leases(rater_id, _now(now, session)) < overlap,
    ]
    if kind is not None:
        clauses.append(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    return clauses


def next_images_for_rater(
    *, session: Session, round_id: int, rater_id: int, limit: int = 1, kind: str | None = None, now: datetime | None = None
) -> list[Image]:
    """Images of the open round to show this rater next.

    Those the rater has neither rated nor skipped and whose ratings plus the leases other raters hold on them that
    still reserve a place (``lease_images``) are fewer than the experiment's ``overlap``; least-rated first (a live
    lease counting as a rating, however old, so an image another rater holds comes after the free ones), then oldest.
    """
    _int("limit", limit, minimum=1)
    # the clock read once: which leases reserve a place and which count towards the order are judged by one "now".
    # Read for each (two round trips to the database's clock on PostgreSQL), a lease could be live for one and run
    # out for the other (found by the eighth review)
    now = _now(now, session)
    clauses = _offered_to_rater(session, round_id, rater_id, kind, now=now)
    taken = _ratings_count(Image.id) + _others_leases(rater_id, now, reserving_only=False)
    stmt = select(Image).where(*clauses).order_by(taken, Image.id).limit(limit)
    return list(session.scalars(stmt))


def count_images_for_rater(
    *, session: Session, round_id: int, rater_id: int, kind: str | None = None, image_id: int | None = None,
    include_skipped: bool = False, now: datetime | None = None,
) -> int:
    """How many images ``next_images_for_rater`` would offer the rater with no limit, counted in SQL (no rows loaded);
    with ``image_id``, 1 if that image is among them, else 0. ``include_skipped`` counts the rater's skipped images
    too (a skip can be taken back by rating the image)."""
    clauses = _offered_to_rater(session, round_id, rater_id, kind, now=now, include_skipped=include_skipped)
    stmt = select(func.count(Image.id)).where(*clauses)
    if image_id is not None:
        stmt = stmt.where(Image.id == _int("image id", image_id))
    return session.scalar(stmt) or 0


def count_reserved_by_others(*, session: Session, round_id: int, rater_id: int, kind: str | None = None,
                             now: datetime | None = None) -> int:
    """How many images of the open round the rater has neither rated nor skipped that still want ratings (fewer than
    the overlap) but are not offered to them now only because other raters' leases hold the places left
    (``lease_images``): the images someone else is rating right now."""
    now = _now(now, session)
    round_ = get_round(session=session, round_id=round_id)
    if round_.status != "labeling":
        raise Conflict(f"round {round_.index} is not open for labeling (it is {round_.status!r})")
    get_rater(session=session, rater_id=rater_id)
    overlap = get_experiment(session=session, experiment_id=round_.experiment_id).overlap
    clauses = [Image.round_id == round_id, _unseen_by(rater_id), _ratings_count(Image.id) < overlap,
               _ratings_count(Image.id) + _others_leases(rater_id, now) >= overlap]  # _offered_to_rater's, turned
    if kind is not None:
        clauses.append(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    return session.scalar(select(func.count(Image.id)).where(*clauses)) or 0


def count_ratings_by(*, session: Session, round_id: int, rater_id: int, kind: str | None = None) -> int:
    """How many images of the round the rater has rated (their first ratings; a repeat's second score is apart)."""
    clauses = [Image.round_id == _int("round id", round_id), Rating.rater_id == _int("rater id", rater_id)]
    if kind is not None:
        clauses.append(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    return session.scalar(select(func.count(Rating.id)).join(Image, Image.id == Rating.image_id).where(*clauses)) or 0


# ---------------------------------------------------------------------------------------------
# image leases: images handed out to a rater are reserved to them for a while
# ---------------------------------------------------------------------------------------------


def lease_images(
    *, session: Session, round_id: int, rater_id: int, image_ids: Sequence[int], lease_s: float, now: datetime | None = None
) -> list[int]:
    """Lease the given images of the open round to the rater until ``now + lease_s``; returns the ids leased.

    An image is leased only while it is still offered to the rater (another rater's reserving lease counts as a
    rating towards the overlap), so two raters never hold the last place of an image. The round row is locked first,
    which on PostgreSQL serialises raters drawing batches at the same moment. Renewing a lease extends it.

    A lease reserves the image's place against other raters for ``RESERVE_S`` from its grant, however often it is
    renewed, runs out, is released (rating, skipping, a new batch) and taken again (undo, a later batch): a lease row
    is never deleted while the round is open, only ended (``_end_leases``), and keeps the time of its grant. Only a
    lease that has not been held for ``RESERVE_S`` starts a new window when taken again. So a rater can hold an
    image's place at most half the time however they go about it, and the other raters get it in between. Past the
    window the holder still has the image on their page and may rate it, and other raters may be offered it too (so
    an image can end with more ratings than the overlap). The row's ``first_handed_at`` is set when it is written and
    never changed (``lease_grants``)."""
    lease = _lease(lease_s)
    now = _now(now, session)
    ids = [_int("image id", i) for i in image_ids]
    lock_round(session=session, round_id=round_id)
    if not ids:
        return []
    offered = set(session.scalars(select(Image.id).where(*_offered_to_rater(session, round_id, rater_id, None, now=now),
                                                         Image.id.in_(ids))))
    insert = _dialect_insert(session)
    # a lease not held for RESERVE_S (ended that long ago) starts a new window: the rater was away as long as a
    # window lasts, and the others had the image meanwhile
    fresh_grant = case((ImageLease.expires_at <= now - timedelta(seconds=RESERVE_S), now), else_=ImageLease.created_at)
    granted = []
    for image_id in ids:
        if image_id not in offered or image_id in granted:
            continue
        session.execute(
            insert(ImageLease)
            .values(image_id=image_id, rater_id=rater_id, expires_at=now + lease, created_at=now, first_handed_at=now)
            .on_conflict_do_update(index_elements=[ImageLease.image_id, ImageLease.rater_id],
                                   set_={"expires_at": now + lease, "created_at": fresh_grant})
        )
        granted.append(image_id)
    return granted


def held_image_ids(*, session: Session, round_id: int, rater_id: int, now: datetime | None = None) -> list[int]:
    """The images of the round the rater holds a live lease on and has neither rated nor skipped, oldest lease first."""
    now = _now(now, session)
    stmt = (
        select(ImageLease.image_id)
        .join(Image, Image.id == ImageLease.image_id)
        .where(Image.round_id == round_id, ImageLease.rater_id == rater_id, ImageLease.expires_at > now,
               _unseen_by(rater_id))
        .order_by(ImageLease.id)
    )
    return list(session.scalars(stmt))


def unanswered_image_ids(*, session: Session, round_id: int, rater_id: int, kind: str | None = None,
                         now: datetime | None = None) -> list[int]:
    """The rater's unanswered cards of the open round: the images leased to them (live, run out or given back) that
    they have neither rated nor skipped and that are still offered to them (``next_images_for_rater``'s rule); those
    they hold a live lease on first, then oldest lease first. The rater has seen them, so they are not new to them
    whether their lease is live or not (a batch serves them first, and ``app.repeats`` counts them as the rater's)."""
    now = _now(now, session)
    stmt = (
        select(Image.id)
        .join(ImageLease, and_(ImageLease.image_id == Image.id, ImageLease.rater_id == rater_id))
        .where(*_offered_to_rater(session, round_id, rater_id, kind, now=now))
        .order_by(case((ImageLease.expires_at > now, 0), else_=1), ImageLease.id)
    )
    return list(session.scalars(stmt))


def lease_grants(*, session: Session, rater_id: int, image_ids: Iterable[int]) -> dict[int, datetime]:
    """image id -> when the image was first handed to the rater (``ImageLease.first_handed_at``: kept however often
    the lease is renewed, ended or granted anew; see ``lease_images``), for those of ``image_ids`` they have a lease
    on. Not the grant (``created_at``): a lease that ran out ``RESERVE_S`` before it is taken again is granted anew,
    so a card left open that long came back behind the repeats handed out with it (found by the third review)."""
    ids = [_int("image id", i) for i in image_ids]
    if not ids:
        return {}
    stmt = select(ImageLease.image_id, ImageLease.first_handed_at).where(ImageLease.rater_id == _int("rater id", rater_id),
                                                                         ImageLease.image_id.in_(ids))
    return {image_id: created_at for image_id, created_at in session.execute(stmt)}


def held_by_others(*, session: Session, image_ids: Iterable[int], rater_id: int, now: datetime | None = None) -> set[int]:
    """Those of the images on which another rater holds a live lease, in its reserving window or not."""
    ids = [_int("image id", i) for i in image_ids]
    if not ids:
        return set()
    stmt = select(ImageLease.image_id).where(ImageLease.image_id.in_(ids), ImageLease.rater_id != _int("rater id", rater_id),
                                             ImageLease.expires_at > _now(now, session))
    return set(session.scalars(stmt))


def holds_lease(*, session: Session, image_id: int, rater_id: int, now: datetime | None = None) -> bool:
    """Whether the rater holds a live lease on the image (it is on their page: they may rate it, see ``lease_images``)."""
    stmt = select(ImageLease.id).where(ImageLease.image_id == _int("image id", image_id),
                                       ImageLease.rater_id == _int("rater id", rater_id), ImageLease.expires_at > _now(now, session))
    return session.scalar(stmt) is not None


def release_leases(*, session: Session, round_id: int, rater_id: int, keep: Iterable[int] = ()) -> int:
    """Give back the rater's live leases in the round, except on the images in ``keep``; returns how many."""
    keep = [_int("image id", i) for i in keep]
    clauses = [ImageLease.rater_id == rater_id, ImageLease.image_id.in_(select(Image.id).where(Image.round_id == round_id))]
    if keep:
        clauses.append(ImageLease.image_id.not_in(keep))
    return _end_leases(session, *clauses)


def release_leases_of_others(*, session: Session, experiment_id: int) -> int:
    """End the live leases on the experiment's images held by accounts that may not rate it
    (``may_rate_experiment``); returns how many. Called where the list of who may rate it changes, in that
    transaction: a rater taken off held their batch until its leases ran out (10 minutes), holding those images
    back from the others (found by the fifth review)."""
    images = select(Image.id).join(Round, Round.id == Image.round_id).where(Round.experiment_id == experiment_id)
    allowed = select(Rater.id).where(Rater.id == ImageLease.rater_id, may_rate_experiment(experiment_id))
    return _end_leases(session, ImageLease.image_id.in_(images), ~allowed.exists())


def release_leases_of(*, session: Session, rater_id: int, image_ids: Iterable[int]) -> int:
    """Give back the rater's live leases on ``image_ids`` (the rows stay, see ``_end_leases``); returns how many."""
    ids = [_int("image id", i) for i in image_ids]
    if not ids:
        return 0
    return _end_leases(session, ImageLease.rater_id == _int("rater id", rater_id), ImageLease.image_id.in_(ids))


def _end_leases(session: Session, *clauses: Any, now: datetime | None = None) -> int:
    """End the live leases matching ``clauses`` now; the rows stay, with the time of their first grant
    (``lease_images``). Returns how many were live."""
    now = _now(now, session)
    stmt = update(ImageLease).where(*clauses, ImageLease.expires_at > now).values(expires_at=now)
    return session.execute(stmt, execution_options={"synchronize_session": False}).rowcount


# ---------------------------------------------------------------------------------------------
# undo history (server side: it survives a reload and follows the rater from browser to browser)
# ---------------------------------------------------------------------------------------------


UNDO_KEEP = 200  # steps kept per rater; older ones are dropped


def add_undo_step(*, session: Session, rater_id: int, image_id: int, action: str, previous_score: int | None = None,
                  skipped_at: datetime | None = None) -> UndoStep:
    """Record a rating (with the score it replaced, None for a new one), a skip, or a repeat's second score or skip
    (app.repeats), for ``undo_last``. ``skipped_at``: a new score took back a skip of the image made then (a repeat's
    skip keeps no time: pass the score's); undoing the score puts the skip back, whether or not the skip's own step
    is still kept."""
    _choice("undo action", action, UNDO_ACTIONS)
    if previous_score is not None:
        _int("previous score", previous_score, minimum=SCORE_MIN, maximum=SCORE_MAX)
    if skipped_at is not None:
        if action not in ("rate", "repeat") or previous_score is not None:
            raise InvalidInput(f"only a new score takes back a skip; a {action!r} step with previous score "
                               f"{previous_score!r} cannot have skipped_at")
        skipped_at = _now(skipped_at, session)
    check_author(session, "rater id", _int("rater id", rater_id))  # None is refused too: a step has its rater
    get_image(session=session, image_id=_int("image id", image_id))
    step = UndoStep(rater_id=rater_id, image_id=image_id, action=action, previous_score=previous_score,
                    skipped_at=skipped_at)
    session.add(step)
    session.flush()
    oldest_kept = select(UndoStep.id).where(UndoStep.rater_id == rater_id).order_by(UndoStep.id.desc()).offset(UNDO_KEEP).limit(1)
    cutoff = session.scalar(oldest_kept)
    if cutoff is not None:
        session.execute(delete(UndoStep).where(UndoStep.rater_id == rater_id, UndoStep.id <= cutoff))
    return step


@dataclass(frozen=True)
class Undone:
    image_id: int
    action: str  # "rate", "skip", or a repeat's "repeat" (its second score) or "repeat_skip"
    restored_score: int | None  # the score the rating went back to; None when the rating was removed (or a skip)
    skipped: bool = False  # the undone score had taken back a skip of the image: it is skipped again


def _replaced_skip(session: Session, step_id: int, rater_id: int, image_id: int, skip_action: str) -> UndoStep | None:
    """The skip step (``skip_action``: "skip" or "repeat_skip") that the score recorded by step ``step_id`` took back,
    or None: the rater's newest step for the image below it, if it is such a skip. It is still on the stack, as the
    skip was not undone (an undo deletes its step), and nothing but a score of the image takes a skip back (a rating
    cannot be skipped): so a skip step right below a new score, for the same image, is the skip that score replaced.
    Only a step from before migration 0014 needs it: a newer one records the skip (``UndoStep.skipped_at``), which
    holds when the skip's step has been dropped from the history (``UNDO_KEEP``)."""
    below = session.scalar(
        select(UndoStep)
        .where(UndoStep.rater_id == rater_id, UndoStep.image_id == image_id, UndoStep.id < step_id)
        .order_by(UndoStep.id.desc())
        .limit(1)
    )
    return below if below is not None and below.action == skip_action else None


def undo_last(*, session: Session, rater_id: int, round_id: int) -> Undone | None:
    """Take back the rater's newest rating or skip in the round (which must be open); None when there is none.

    Each undo takes back one action, newest first, and leaves what was there before it: a new rating is removed, an
    edit gets its previous score back, a skip is lifted, and a new score that had taken back a skip of the image (a
    key pressed on a skipped card) is removed and the skip is back (``_replaced_skip``); the skip's own step stays
    on the stack, so the next undo lifts it. That rating used to be removed with the skip lost, and the next undo
    went on to the action before (found by review). A step whose effect is gone (a rating removed since, a repeat
    dropped) is dropped and the next one taken: such a step used to be undone as nothing, without a word."""
    round_ = get_round(session=session, round_id=round_id)
    if round_.status != "labeling":
        raise Conflict(f"round {round_.index} is closed for labeling (it is {round_.status!r}); nothing can be undone")
    while True:
        step = session.scalar(
            select(UndoStep)
            .join(Image, Image.id == UndoStep.image_id)
            .where(UndoStep.rater_id == rater_id, Image.round_id == round_id)
            .order_by(UndoStep.id.desc())
            .limit(1)
        )
        if step is None:
            return None
        image_id, action, previous, step_id, skipped_at = (step.image_id, step.action, step.previous_score, step.id,
                                                           step.skipped_at)
        session.delete(step)
        session.flush()
        if action == "skip":
            if find_skip(session=session, image_id=image_id, rater_id=rater_id) is None:
                continue
            delete_skip(session=session, image_id=image_id, rater_id=rater_id)
            return Undone(image_id, action, None)
        if action in ("repeat", "repeat_skip"):  # an image handed to the rater again (app.repeats)
            if (undone := _undo_repeat(session, image_id, rater_id, action, previous, step_id, skipped_at)) is None:
                continue
            return undone
        if find_rating(session=session, image_id=image_id, rater_id=rater_id) is None:
            continue
        if previous is None:
            delete_rating(session=session, image_id=image_id, rater_id=rater_id)
            if skipped_at is None and (skip_step := _replaced_skip(session, step_id, rater_id, image_id, "skip")):
                skipped_at = skip_step.created_at  # a step from before migration 0014
            if skipped_at is None:
                return Undone(image_id, action, None)
            skip = add_skip(session=session, image_id=image_id, rater_id=rater_id)  # as it was: no lease either
            skip.created_at = skipped_at  # when it was skipped (exports show it)
            session.flush()
            return Undone(image_id, action, None, skipped=True)
        add_rating(session=session, image_id=image_id, rater_id=rater_id, score=previous)
        return Undone(image_id, action, previous)


def _undo_repeat(session: Session, image_id: int, rater_id: int, action: str, previous: int | None,
                 step_id: int, skipped_at: datetime | None) -> Undone | None:
    """Take back a repeat's score (back to the one it replaced, or none: the image is pending as a repeat again, or
    skipped again when that score had taken back a skip of it, ``_replaced_skip``) or a repeat's skip; None when its
    effect is gone (the repeat dropped, or scored since the skip). Repeats were not on the undo stack, so 'u' after
    scoring one took back the rating before it (found by review)."""
    from db.models import RepeatOffer, RepeatRating

    offer = session.scalar(select(RepeatOffer).where(RepeatOffer.image_id == image_id, RepeatOffer.rater_id == rater_id))
    second = session.scalar(select(RepeatRating).where(RepeatRating.image_id == image_id,
                                                       RepeatRating.rater_id == rater_id))
    if offer is None:
        return None
    if action == "repeat_skip":
        if not offer.skipped or second is not None:
            return None
        offer.skipped = False
        session.flush()
        return Undone(image_id, action, None)
    if second is None:
        return None
    skipped = False
    if previous is None:
        session.delete(second)
        skipped = offer.skipped = (skipped_at is not None
                                   or _replaced_skip(session, step_id, rater_id, image_id, "repeat_skip") is not None)
    else:
        second.score = previous
    session.flush()
    return Undone(image_id, action, previous, skipped=skipped)


# ---------------------------------------------------------------------------------------------
# progress, snapshots and dashboard metrics
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoundProgress:
    round_id: int
    index: int
    status: str
    total_images: int
    rated_images: int  # with at least one rating
    complete_images: int  # with at least ``overlap`` ratings
    ratings: int  # all ratings of the round's images
    budget: int | None  # ratings wanted this round (``round_budget``: the last budget again past the list)
    rater_rated: int | None = None  # the given rater's ratings in this round
    rater_skipped: int | None = None
    rater_remaining: int | None = None  # images still to offer the rater (see next_images_for_rater)
    labels: int = 0  # ratings that count towards the round: at most ``overlap`` per image
    labels_wanted: int = 0  # total_images x overlap, less skips (``_labels_wanted``); a closed round's as it closed


def _labels_wanted(session: Session, round_id: int, kind: str | None, overlap: int, counts: dict[int, int]) -> int:
    """The ratings a round's images want: per image ``overlap``, or fewer when fewer accounts can still give them
    (enabled accounts less those who skipped it and did not rate it after), never fewer than it has. An image every
    rater skipped (one skip, for a single person) no longer keeps the round from being complete: auto-close, the
    progress bar and the close question all read this (found by review, 3 Dec 2026; pairs: ``app.pairwise._wanted``)."""
    experiment_id = get_round(session=session, round_id=round_id).experiment_id
    stmt = (select(Skip.image_id, func.count(Skip.id)).join(Rater, Rater.id == Skip.rater_id)
            .join(Image, Image.id == Skip.image_id)
            .where(Image.round_id == round_id, can_still_rate(experiment_id),
                   ~select(Rating.id).where(Rating.image_id == Skip.image_id, Rating.rater_id == Skip.rater_id).exists())
            .group_by(Skip.image_id))
    if kind is not None:
        stmt = stmt.where(Image.kind == kind)
    return wanted_after_skips(session, counts, dict(session.execute(stmt).all()), overlap,
                              enabled=enabled_accounts(session, experiment_id))


LOCAL_ADMIN_HASH = "!local-admin: no password; exists only while the app runs without accounts on localhost"
"""The password hash of the app's local-mode admin (``app.auth.local_admin``): it never matches, and the row can act
only while no account exists."""


def can_still_rate(experiment_id: Any = None) -> Any:
    """A where-clause on ``Rater``: the rater can still give labels. An enabled account; the local-mode admin only
    while no other account exists (once one does, local mode has ended and nobody can act as it; its row stays).
    Counting the leftover local admin kept a round short of ratings nobody could give, so it never completed
    and auto-close never fired (found by review). With ``experiment_id``: and the rater may rate that experiment
    (``may_rate_experiment``): a round of an experiment limited to two accounts wanted ratings from every account,
    so it never completed either (found with migration 0015)."""
    if experiment_id is None:
        return _can_still_rate_any()
    if type(experiment_id) is int:  # every caller's case: the same clause object again (a clause is never changed)
        return _can_still_rate_of(experiment_id)
    return and_(_can_still_rate_any(), may_rate_experiment(experiment_id))


# Building these clauses (an aliased Rater and four subqueries) took about 2 ms a call, twice in every rating's answer
# (its progress), more than the database's work on them: the load test of 7 Dec 2026 (RELIABILITY.md section 2). A
# SQLAlchemy clause is immutable and may be used in any number of statements, so each is built once.
@functools.cache
def _can_still_rate_any() -> Any:
    other = aliased(Rater)
    return and_(Rater.disabled_at.is_(None),
                or_(Rater.password_hash != LOCAL_ADMIN_HASH,
                    ~select(other.id).where(other.password_hash != LOCAL_ADMIN_HASH).exists()))


@functools.lru_cache(maxsize=1024)
def _can_still_rate_of(experiment_id: int) -> Any:
    return and_(_can_still_rate_any(), may_rate_experiment(experiment_id))


def may_rate_experiment(experiment_id: Any) -> Any:
    """A where-clause on ``Rater``: the rater may rate the experiment (migration 0015, ``app.members``): an admin,
    any rater of an experiment open to every rater, or one listed for it."""
    from db.models import ExperimentRater

    limited = select(Experiment.id).where(Experiment.id == experiment_id, Experiment.raters_limited.is_(True))
    listed = select(ExperimentRater.rater_id).where(ExperimentRater.experiment_id == experiment_id,
                                                    ExperimentRater.rater_id == Rater.id)
    return or_(Rater.role == "admin", ~limited.exists(), listed.exists())


def enabled_accounts(session: Session, experiment_id: Any = None) -> int:
    """How many raters can still give labels (``can_still_rate``; of experiment ``experiment_id``, when given)."""
    return session.scalar(select(func.count(Rater.id)).where(can_still_rate(experiment_id))) or 0


def wanted_after_skips(session: Session, counts: dict[int, int], skipped: dict[int, int], overlap: int, *,
                       enabled: int | None = None) -> int:
    """Labels wanted over items (images, or comparison pairs) with ``counts`` labels each, of which ``skipped`` (item
    -> enabled accounts that skipped it and did not label it after): per item ``overlap``, or as many as the enabled
    accounts that have not skipped it can give, never fewer than it has. ``enabled``: that count, if the caller has
    it (read here otherwise)."""
    if enabled is None:
        enabled = enabled_accounts(session)
    return sum(min(overlap, max(int(n), enabled - skipped.get(item, 0))) for item, n in counts.items())


def pair_votes_wanted(session: Session, round_: Round, counts: dict[int, int], overlap: int) -> int:
    """The votes a round's preference pairs with ``counts`` votes each want (``wanted_after_skips``: an account that
    skipped a pair and did not vote on it after gives it none)."""
    skipped = dict(session.execute(
        select(PairSkip.pair_id, func.count(PairSkip.id)).join(Rater, Rater.id == PairSkip.rater_id)
        .join(ComparisonPair, ComparisonPair.id == PairSkip.pair_id)
        .where(ComparisonPair.round_id == round_.id, ComparisonPair.kind == "preference",
               can_still_rate(round_.experiment_id),
               ~select(ComparisonVote.id).where(ComparisonVote.pair_id == PairSkip.pair_id,
                                                ComparisonVote.rater_id == PairSkip.rater_id).exists())
        .group_by(PairSkip.pair_id)).all())
    return wanted_after_skips(session, counts, skipped, overlap, enabled=enabled_accounts(session, round_.experiment_id))


def wanted_now(session: Session, round_: Round) -> dict[str, int]:
    """What the round wants now, counted live: ratings of its images per kind, and votes on its preference pairs
    (``"preference"``). What ``Round.wanted_at_close`` records when the round leaves labeling."""
    overlap = get_experiment(session=session, experiment_id=round_.experiment_id).overlap
    images = session.execute(
        select(Image.id, Image.kind, func.count(Rating.id)).outerjoin(Rating, Rating.image_id == Image.id)
        .where(Image.round_id == round_.id).group_by(Image.id, Image.kind)).all()
    pairs = dict(session.execute(
        select(ComparisonPair.id, func.count(ComparisonVote.id))
        .outerjoin(ComparisonVote, ComparisonVote.pair_id == ComparisonPair.id)
        .where(ComparisonPair.round_id == round_.id, ComparisonPair.kind == "preference")
        .group_by(ComparisonPair.id)).all())
    wanted = {kind: _labels_wanted(session, round_.id, kind, overlap, {i: n for i, k, n in images if k == kind})
              for kind in IMAGE_KINDS}
    wanted["preference"] = pair_votes_wanted(session, round_, pairs, overlap)
    return wanted


def recorded_wanted(round_: Round, kind: str | None) -> int | None:
    """What a round recorded it wanted when it left labeling (``wanted_at_close``): ratings of its images of ``kind``
    (None: of every kind), or ``"preference"`` pair votes. None while it is open, or for a round closed before
    migration 0010 recorded it: the caller counts those live."""
    wanted = round_.wanted_at_close
    if round_.status == "labeling" or not isinstance(wanted, dict):
        return None
    values = [wanted.get(k) for k in (IMAGE_KINDS if kind is None else (kind,))]
    return sum(values) if all(isinstance(v, int) and not isinstance(v, bool) for v in values) else None


def round_progress(*, session: Session, round_id: int, rater_id: int | None = None, kind: str | None = None) -> RoundProgress:
    """How far the labeling of a round has got, overall and (with ``rater_id``) for one rater; ``kind`` filters images."""
    round_ = get_round(session=session, round_id=round_id)
    experiment = get_experiment(session=session, experiment_id=round_.experiment_id)
    overlap = experiment.overlap
    per_image = (
        select(Image.id.label("image_id"), func.count(Rating.id).label("n"))
        .outerjoin(Rating, Rating.image_id == Image.id)
        .where(Image.round_id == round_id, *([] if kind is None else [Image.kind == _choice("image kind", kind, IMAGE_KINDS)]))
        .group_by(Image.id)
        .subquery()
    )
    # one query for the image's counts, summed here: the sums were a second query over the same subquery, run as well
    # whenever the wanted labels are counted (every open round's progress; each rating's answer reads one)
    counts = {image: int(n) for image, n in session.execute(select(per_image.c.image_id, per_image.c.n)).all()}
    total, ratings = len(counts), sum(counts.values())
    rated = sum(1 for n in counts.values() if n > 0)
    complete = sum(1 for n in counts.values() if n >= overlap)
    labels = sum(min(n, overlap) for n in counts.values())  # each image's ratings up to the overlap
    budget = round_budget(experiment.budgets, round_.index)
    wanted = recorded_wanted(round_, kind)  # a closed round: what it wanted when it closed
    if wanted is None:
        wanted = _labels_wanted(session, round_id, kind, overlap, counts)
    progress = RoundProgress(
        round_id=round_.id,
        index=round_.index,
        status=round_.status,
        total_images=total,
        rated_images=rated,
        complete_images=complete,
        ratings=int(ratings),
        budget=budget,
        labels=int(labels),
        labels_wanted=wanted,
    )
    if rater_id is None:
        return progress
    get_rater(session=session, rater_id=rater_id)
    in_round = select(Image.id).where(Image.round_id == round_id)
    if kind is not None:
        in_round = in_round.where(Image.kind == kind)
    rater_rated = session.scalar(select(func.count(Rating.id)).where(Rating.rater_id == rater_id, Rating.image_id.in_(in_round)))
    rater_skipped = session.scalar(select(func.count(Skip.id)).where(Skip.rater_id == rater_id, Skip.image_id.in_(in_round)))
    remaining = 0
    if round_.status == "labeling":
        remaining = count_images_for_rater(session=session, round_id=round_id, rater_id=rater_id, kind=kind)
    return RoundProgress(
        **{**progress.__dict__, "rater_rated": rater_rated, "rater_skipped": rater_skipped, "rater_remaining": remaining}
    )


def latest_rating_id(*, session: Session, experiment_id: int) -> int | None:
    """The highest rating id in the experiment: the watermark to pass to ``ratings_snapshot``."""
    return session.scalar(
        select(func.max(Rating.id))
        .join(Image, Image.id == Rating.image_id)
        .join(Round, Round.id == Image.round_id)
        .where(Round.experiment_id == experiment_id)
    )


@dataclass(frozen=True)
class SnapshotRow:
    image_id: int
    round_index: int
    prompt: str
    embedding: bytes  # float32 values; numpy.frombuffer(embedding, dtype="<f4")
    embedding_dim: int
    mean_score: float
    n_ratings: int


def ratings_snapshot(
    *, session: Session, experiment_id: int, up_to_rating_id: int | None = None, kind: str | None = "query"
) -> list[SnapshotRow]:
    """Every rated image of the experiment with its mean score, ordered by image id.

    Only ratings with ``id <= up_to_rating_id`` count (all when None), so a training job sees a
    fixed set of rows however many ratings arrive meanwhile. A rating edited after the snapshot
    keeps its id, so re-reading may show the newer score. ``kind=None`` takes query and eval images.
    """
    get_experiment(session=session, experiment_id=experiment_id)
    ratings = select(
        Rating.image_id.label("image_id"),
        func.avg(Rating.score).label("mean"),
        func.count(Rating.id).label("n"),
    ).group_by(Rating.image_id)
    if up_to_rating_id is not None:
        # clamped: a RowId past what the column holds binds as -1 (db.models.RowId), which would turn "<=" around
        ratings = ratings.where(Rating.id <= min(_int("up_to_rating_id", up_to_rating_id, minimum=0), MAX_ID))
    agg = ratings.subquery()
    stmt = (
        select(Image.id, Round.index, Image.prompt, Image.embedding, Image.embedding_dim, agg.c.mean, agg.c.n)
        .join(agg, agg.c.image_id == Image.id)
        .join(Round, Round.id == Image.round_id)
        .where(Round.experiment_id == experiment_id)
        .order_by(Image.id)
    )
    if kind is not None:
        stmt = stmt.where(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    return [
        SnapshotRow(
            image_id=r[0],
            round_index=r[1],
            prompt=r[2],
            embedding=bytes(r[3]),
            embedding_dim=r[4],
            mean_score=float(r[5]),
            n_ratings=r[6],
        )
        for r in session.execute(stmt)
    ]


@dataclass(frozen=True)
class RoundStats:
    round_id: int
    index: int
    status: str
    n_images: int
    n_rated_images: int
    n_ratings: int
    mean_score: float | None  # mean over all ratings of the round's images; None when unrated
    n_labels: int = 0  # ratings that count: at most the experiment's overlap per image
    labels_wanted: int = 0  # n_images x overlap, fewer where every rater skipped an image; a closed round's as it closed


def round_rating_stats(*, session: Session, experiment_id: int, kind: str | None = None) -> list[RoundStats]:
    """Per-round human-rating summary for a dashboard, oldest round first (``kind`` filters images)."""
    get_experiment(session=session, experiment_id=experiment_id)
    image_filter = [Round.experiment_id == experiment_id]
    if kind is not None:
        image_filter.append(Image.kind == _choice("image kind", kind, IMAGE_KINDS))
    counts = dict(
        session.execute(select(Image.round_id, func.count(Image.id)).join(Round).where(*image_filter).group_by(Image.round_id))
        .tuples()
        .all()
    )
    aggregates = {
        row[0]: row[1:]
        for row in session.execute(
            select(Image.round_id, func.count(func.distinct(Rating.image_id)), func.count(Rating.id), func.avg(Rating.score))
            .join(Image, Image.id == Rating.image_id)
            .join(Round, Round.id == Image.round_id)
            .where(*image_filter)
            .group_by(Image.round_id)
        )
    }
    overlap = get_experiment(session=session, experiment_id=experiment_id).overlap
    per_image = (
        select(Image.round_id.label("round_id"), func.count(Rating.id).label("n"))
        .join(Rating, Rating.image_id == Image.id)
        .join(Round, Round.id == Image.round_id)
        .where(*image_filter)
        .group_by(Image.id, Image.round_id)
        .subquery()
    )
    labels = dict(
        session.execute(
            select(per_image.c.round_id, func.sum(case((per_image.c.n > overlap, overlap), else_=per_image.c.n)))
            .group_by(per_image.c.round_id)
        ).tuples().all()
    )
    # the ratings each round wants, skips counted whatever its status (a closed round went back to images x overlap,
    # so a complete one read as short of ratings; found by review): the per-image counts and the skips of every round
    # in two queries, not three per round on every dashboard refresh
    image_counts: dict[int, dict[int, int]] = {}
    for round_id, image_id, n in session.execute(
            select(Image.round_id, Image.id, func.count(Rating.id)).outerjoin(Rating, Rating.image_id == Image.id)
            .join(Round, Round.id == Image.round_id).where(*image_filter).group_by(Image.id, Image.round_id)).tuples():
        image_counts.setdefault(round_id, {})[image_id] = n
    skipped = dict(session.execute(
        select(Skip.image_id, func.count(Skip.id)).join(Rater, Rater.id == Skip.rater_id)
        .join(Image, Image.id == Skip.image_id).join(Round, Round.id == Image.round_id)
        .where(*image_filter, can_still_rate(experiment_id),
               ~select(Rating.id).where(Rating.image_id == Skip.image_id, Rating.rater_id == Skip.rater_id).exists())
        .group_by(Skip.image_id)).tuples().all())
    enabled = enabled_accounts(session, experiment_id)
    stats = []
    for round_ in list_rounds(session=session, experiment_id=experiment_id):
        n_rated, n_ratings, mean = aggregates.get(round_.id, (0, 0, None))
        wanted = recorded_wanted(round_, kind)  # a closed round: what it wanted when it closed
        if wanted is None:
            wanted = wanted_after_skips(session, image_counts[round_.id], skipped, overlap, enabled=enabled) \
                if round_.id in image_counts else 0
        stats.append(
            RoundStats(
                round_id=round_.id,
                index=round_.index,
                status=round_.status,
                n_images=counts.get(round_.id, 0),
                n_rated_images=n_rated,
                n_ratings=n_ratings,
                mean_score=None if mean is None else float(mean),
                n_labels=int(labels.get(round_.id) or 0),
                labels_wanted=wanted,
            )
        )
    return stats


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def add_checkpoint(*, session: Session, round_id: int, path: str, manifest_sha256: str) -> Checkpoint:
    """Record an adapter directory (relative to the data dir) and its manifest's hash."""
    _relative_path("checkpoint path", path)
    _sha256("manifest_sha256", manifest_sha256)
    get_round(session=session, round_id=round_id)
    checkpoint = Checkpoint(round_id=round_id, path=path, manifest_sha256=manifest_sha256)
    session.add(checkpoint)
    session.flush()
    return checkpoint


def list_checkpoints(*, session: Session, round_id: int) -> list[Checkpoint]:
    return list(session.scalars(select(Checkpoint).where(Checkpoint.round_id == round_id).order_by(Checkpoint.id)))


# ---------------------------------------------------------------------------------------------
# exports built in the browser (the download route serves only the file recorded here)
# ---------------------------------------------------------------------------------------------


def add_export(
    *, session: Session, experiment_id: int, round_index: int | None, fmt: str, file_path: str, sha256: str,
    size_bytes: int, created_by: int | None,
) -> Export:
    """Record an export file (relative to the data dir, under ``exports/``) an admin built."""
    _choice("export format", fmt, EXPORT_FORMATS)
    _relative_path("export file path", file_path)
    if not file_path.startswith("exports/"):
        raise InvalidInput(f"export file path {file_path!r} must be under exports/")
    _sha256("sha256", sha256)
    _int("size_bytes", size_bytes, minimum=0)
    if round_index is not None:
        _int("round index", round_index, minimum=0)
    get_experiment(session=session, experiment_id=experiment_id)
    check_author(session, "created_by", created_by)
    export = Export(experiment_id=experiment_id, round_index=round_index, format=fmt, file_path=file_path, sha256=sha256,
                    size_bytes=size_bytes, created_by=created_by)
    session.add(export)
    session.flush()
    return export


def get_export(*, session: Session, export_id: int) -> Export:
    export = session.get(Export, export_id) if findable_id(_int("export id", export_id)) else None
    if export is None:
        raise NotFound(f"there is no export with id {export_id}")
    return export


def list_exports(*, session: Session, experiment_id: int | None = None, limit: int = 50) -> list[Export]:
    """Exports, newest first."""
    stmt = select(Export).order_by(Export.id.desc()).limit(_int("limit", limit, minimum=1))
    if experiment_id is not None:
        stmt = stmt.where(Export.experiment_id == experiment_id)
    return list(session.scalars(stmt))


# ---------------------------------------------------------------------------------------------
# publishing a trained round (the worker's train job)
# ---------------------------------------------------------------------------------------------


def publish_round(
    *,
    session: Session,
    experiment_id: int,
    index: int,
    adapter_path: str,
    manifest_sha256: str,
    metrics: dict[str, Any],
) -> tuple[Round, bool]:
    """Publish round ``index`` trained from round ``index - 1``; returns (the round, whether this call created it).

    Creates the round with its adapter and metrics, records the adapter's checkpoint, marks round
    ``index - 1`` done and queues the generate job of the new round. Exactly once: if round ``index``
    already exists, nothing is written and (that round, False) is returned. Round ``index - 1`` must be
    'training' (the state close_round left it in).
    """
    _int("round index", index, minimum=1)
    _relative_path(f"adapter_path of round {index}", adapter_path)
    _sha256("manifest_sha256", manifest_sha256)
    if not isinstance(metrics, dict):
        raise InvalidInput(f"metrics must be a dict, got {type(metrics).__name__}")
    _json("metrics", metrics)
    existing = session.scalar(select(Round).where(Round.experiment_id == experiment_id, Round.index == index))
    if existing is not None:
        return existing, False
    previous = get_round_by_index(session=session, experiment_id=experiment_id, index=index - 1)
    if previous.status != "training":
        raise Conflict(
            f"round {previous.index} is {previous.status!r}, not 'training'; its training result cannot be published"
        )
    round_ = create_round(session=session, experiment_id=experiment_id, adapter_path=adapter_path, index=index)
    round_.metrics = metrics
    round_.published_at = utcnow()
    add_checkpoint(session=session, round_id=round_.id, path=adapter_path, manifest_sha256=manifest_sha256)
    set_round_status(session=session, round_id=previous.id, status="done")
    job_queue.enqueue_job(session=session, kind="generate", experiment_id=experiment_id, round_id=round_.id,
                          payload={"round_index": index})
    session.flush()
    return round_, True


# ---------------------------------------------------------------------------------------------
# accounts, sign-in sessions and the audit log (the app decides who may do what; these only write)
# ---------------------------------------------------------------------------------------------


def end_sessions(*, session: Session, rater_id: int, reason: str, now: datetime | None = None) -> int:
    """End every live session of the rater (``reason`` from SESSION_END_REASONS); returns how many."""
    _choice("session end reason", reason, SESSION_END_REASONS)
    result = session.execute(
        update(UserSession).where(UserSession.rater_id == rater_id, UserSession.ended_at.is_(None))
        .values(ended_at=_now(now, session), end_reason=reason),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount


def set_rater_password_hash(*, session: Session, rater_id: int, password_hash: str, now: datetime | None = None) -> Rater:
    """Store a new password hash and end the rater's sessions (whoever signed in with the old password is out)."""
    if not isinstance(password_hash, str) or not password_hash:
        raise InvalidInput("password_hash must be a non-empty string (hash the password in the app)")
    now = _now(now, session)
    rater = get_rater(session=session, rater_id=rater_id)
    rater.password_hash = password_hash
    rater.credentials_changed_at = now
    end_sessions(session=session, rater_id=rater_id, reason="password", now=now)
    session.flush()
    return rater


def upgrade_rater_password_hash(*, session: Session, rater_id: int, checked_hash: str, password_hash: str) -> bool:
    """Store ``password_hash`` (the same password hashed again with stronger parameters) only where the stored hash is
    still ``checked_hash``, the one a sign-in's password just matched; whether it was stored. One conditional UPDATE:
    a password changed meanwhile, or an upgrade by a sign-in at the same time, is never overwritten.

    Not a password change, unlike ``set_rater_password_hash``: the password is the same, so the rater's sessions stay
    and ``credentials_changed_at`` is left as it is."""
    for what, value in (("checked_hash", checked_hash), ("password_hash", password_hash)):
        if not isinstance(value, str) or not value:
            raise InvalidInput(f"{what} must be a non-empty string (hash the password in the app)")
    result = session.execute(
        update(Rater).where(Rater.id == rater_id, Rater.password_hash == checked_hash)
        .values(password_hash=password_hash),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount == 1


def set_rater_disabled(*, session: Session, rater_id: int, disabled: bool, now: datetime | None = None) -> Rater:
    """Disable (the rater cannot sign in; their sessions and image leases end) or enable an account. Ratings stay
    either way. A change of state stamps ``credentials_changed_at``: whatever the sign-in throttle exempted before
    ends with it, so an account disabled and enabled again (by any process) does not get back the exemptions it had.
    The leases end with the sessions: they held the images of the batch on the rater's page for ``LEASE_S``, which
    nobody else was offered meanwhile (found by review)."""
    if not isinstance(disabled, bool):
        raise InvalidInput(f"disabled must be True or False, got {disabled!r}")
    now = _now(now, session)
    rater = get_rater(session=session, rater_id=rater_id)
    if disabled:
        if rater.disabled_at is None:
            rater.disabled_at = rater.credentials_changed_at = now
        end_sessions(session=session, rater_id=rater_id, reason="disabled", now=now)
        _end_leases(session, ImageLease.rater_id == rater_id, now=now)
    elif rater.disabled_at is not None:
        rater.disabled_at, rater.credentials_changed_at = None, now
    session.flush()
    return rater


def set_rater_role(*, session: Session, rater_id: int, role: str) -> Rater:
    """Give the account ``role``; a change counts in its ``role_version`` (added in the database's own UPDATE, so two
    changes at once count two)."""
    _choice("role", role, RATER_ROLES)
    rater = get_rater(session=session, rater_id=rater_id)
    if rater.role != role:
        rater.role = role
        rater.role_version = Rater.role_version + 1
        session.flush()
        session.refresh(rater, ["role_version"])  # the count the UPDATE wrote, readable once the session is closed
    return rater


def delete_rater(*, session: Session, rater_id: int) -> None:
    """Delete an account that has given no feedback (its sessions, skips and leases go with it). One with ratings,
    comparison votes (preference pairs or blind A/B) or repeat ratings is refused: the database deletes those with
    the account, and they are training data or measurements; disable it instead.

    The account's row is locked first: on PostgreSQL a rating committed between the count and the delete was
    deleted with the account (found by review); now it either waits and is counted, or comes after and is refused
    (its rater no longer exists)."""
    get_rater(session=session, rater_id=rater_id)
    rater = session.scalars(select(Rater).where(Rater.id == rater_id).with_for_update(),
                            execution_options={"populate_existing": True}).one()
    kept = []
    for model, one, many in ((Rating, "rating", "ratings"), (ComparisonVote, "comparison vote", "comparison votes"),
                             (RepeatRating, "repeat rating", "repeat ratings")):
        n = session.scalar(select(func.count(model.id)).where(model.rater_id == rater_id)) or 0
        if n:
            kept.append(f"{n} {one if n == 1 else many}")
    if kept:
        raise Conflict(f"{rater.name!r} has {' and '.join(kept)}, which deleting the account would delete too; "
                       "disable the account instead (it keeps them)")
    session.delete(rater)
    session.flush()


def create_session(
    *, session: Session, rater_id: int, token_sha256: str, expires_at: datetime, client: str | None = None,
    now: datetime | None = None,
) -> UserSession:
    """A new sign-in session; the caller keeps the token and gives only its sha256."""
    _sha256("token_sha256", token_sha256)
    now = _now(now, session)
    if expires_at.tzinfo is None or expires_at <= now:
        raise InvalidInput(f"expires_at must be a timezone-aware time after now, got {expires_at!r}")
    get_rater(session=session, rater_id=rater_id)
    row = UserSession(rater_id=rater_id, token_sha256=token_sha256, client=(client or None) and str(client)[:64],
                      created_at=now, last_seen_at=now, expires_at=expires_at)
    session.add(row)
    session.flush()
    return row


def find_session(*, session: Session, token_sha256: str) -> UserSession | None:
    return session.scalar(select(UserSession).where(UserSession.token_sha256 == token_sha256))


def touch_session(*, session: Session, session_id: int, now: datetime | None = None) -> None:
    """Record activity on a session (the idle limit counts from here)."""
    session.execute(update(UserSession).where(UserSession.id == session_id).values(last_seen_at=_now(now, session)),
                    execution_options={"synchronize_session": False})


def end_session(*, session: Session, token_sha256: str, reason: str, now: datetime | None = None) -> UserSession | None:
    """End one session (idempotent); None when no session has this token."""
    _choice("session end reason", reason, SESSION_END_REASONS)
    row = find_session(session=session, token_sha256=token_sha256)
    if row is not None and row.ended_at is None:
        row.ended_at, row.end_reason = _now(now, session), reason
        session.flush()
    return row


def delete_stale_sessions(*, session: Session, before: datetime) -> int:
    """Delete sessions that ended, expired or were last seen before ``before``; returns how many."""
    result = session.execute(
        delete(UserSession).where(or_(UserSession.ended_at < before, UserSession.expires_at < before,
                                      UserSession.last_seen_at < before)),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount


def add_audit(
    *, session: Session, actor_id: int | None, actor_name: str, action: str, target: str | None = None,
    detail: dict[str, Any] | None = None,
) -> AuditEntry:
    """Record an admin action: who (id and name), what (``action``, e.g. 'user.disable'), on what, when (now)."""
    _name("actor name", actor_name)
    _name("action", action)
    if len(action) > 64:
        raise InvalidInput(f"action is {len(action)} characters long; the limit is 64")
    if detail is not None:
        _json("detail", detail)
    check_author(session, "actor id", actor_id)
    entry = AuditEntry(actor_id=actor_id, actor_name=actor_name, action=action, target=target, detail=detail)
    session.add(entry)
    session.flush()
    return entry


def list_audit(*, session: Session, limit: int = 100) -> list[AuditEntry]:
    """The newest ``limit`` audit entries, newest first."""
    _int("limit", limit, minimum=1, maximum=10_000)
    return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))
