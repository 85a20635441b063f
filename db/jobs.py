"""The worker's job queue: jobs with leases.

A worker claims a job for ``lease_s`` seconds (``claim_job``) and extends the lease with heartbeats while it works
(``heartbeat``, outside any transaction). If it dies, the lease runs out and another worker reclaims the job
(attempts + 1); after ``max_attempts`` the job fails. A worker whose job was reclaimed cannot complete or fail it
(``LeaseLost``), so its late result is rolled back with its transaction. Ownership is the worker id and, when the
caller gives it, the claim number its claim returned (``claim=``, the job's ``claims``: every claim adds one and
nothing takes one back): two workers with the same id (a container's fixed host name and PID 1, or one
``--worker-id`` given twice) are told apart by their claims, so the one whose lease ran out, or whose job an admin
stopped, cannot finish its twin's job. An admin can queue a failed job again (``retry_job``). The attempt number
fenced the writes before (migration 0012), but it repeats: a retry sets it back to 0 and a yield takes one back, so
a worker whose claim an admin had stopped stored its result under its twin's claim of the retried job (found by
review).

Priority: a person waits for "generate" and "train" jobs (the next images); an "eval" job (the dashboard's eval grid)
waits for nobody. ``claim_job`` takes the person's work first, and a running eval job looks for it between chunks of
its work (``waiting_job``) and hands itself back (``yield_job``) without using up an attempt.

Same conventions as ``db.repo``: keyword-only functions taking the session they work in; they flush, never commit;
bad input raises a ``db.errors`` exception with one clear sentence before anything is written. ``db.repo`` uses
``enqueue_job``, ``live_job`` and ``cancel_jobs`` for the rounds and experiments whose state queues or cancels jobs
(closing a round, publishing one, finishing an experiment); this module imports nothing from ``db.repo``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from db.checks import check_choice, check_int, check_json, check_lease, check_name, check_now, findable_id
from db.errors import Conflict, InvalidInput, LeaseLost, NotFound
from db.models import JOB_KINDS, JOB_STATUSES, Experiment, Job, Round, utcnow


def no_experiment_with_id(experiment_id: Any) -> str:
    """The sentence for an experiment id that names none; a rater an experiment does not list gets it too
    (``app.members.check``'s ``unknown``), so a refusal does not tell them the experiment exists (fifth review)."""
    return f"there is no experiment with id {experiment_id}"


def _experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id) if findable_id(experiment_id) else None
    if experiment is None:
        raise NotFound(no_experiment_with_id(experiment_id))
    return experiment


def _round(session: Session, round_id: int) -> Round:
    round_ = session.get(Round, round_id) if findable_id(round_id) else None
    if round_ is None:
        raise NotFound(f"there is no round with id {round_id}")
    return round_


# the kinds a person waits for (the next round's images); the others ("eval") run when none of these is claimable
PERSON_KINDS = ("generate", "train")


def live_job(session: Session, now: datetime, *, kinds: Iterable[str] | None = None, lock: bool = False,
             **where: Any) -> Job | None:
    """A running job with a live lease matching ``where`` (e.g. experiment_id=, round_id=, kind=), of one of
    ``kinds`` when given, or None.

    With ``lock`` (a write transaction that acts on the answer), the queued and running jobs matching are first
    locked (FOR UPDATE NOWAIT, until the transaction ends; nothing on SQLite, whose write transactions are
    serialised already). On PostgreSQL a plain read saw a job a worker was claiming (not yet committed) as queued;
    ``cancel_jobs`` then found it running and cancelled nothing, and a reopen or finish went through while the
    worker trained. Now a claim that comes after skips the locked rows (``claim_job``: SKIP LOCKED), and a claim,
    or a publish, in flight makes this a Conflict at once (NOWAIT: waiting could deadlock with a publish, which
    locks the job before the round)."""
    clauses = [*(getattr(Job, k) == v for k, v in where.items())]
    if kinds is not None:
        clauses.append(Job.kind.in_([check_choice("job kind", k, JOB_KINDS) for k in kinds]))
    if lock:
        try:
            session.scalars(select(Job.id).where(Job.status.in_(("queued", "running")), *clauses).order_by(Job.id)
                            .with_for_update(nowait=True)).all()
        except OperationalError as exc:
            code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)  # psycopg 3 / psycopg2
            if code != "55P03":  # lock_not_available; anything else is not ours to word
                raise
            raise Conflict("a worker is taking or finishing one of these jobs at this moment; try again in a few "
                           "seconds") from exc
    return session.scalar(select(Job).where(Job.status == "running", Job.lease_expires_at >= now, *clauses)
                          .order_by(Job.id), execution_options={"populate_existing": True})


def cancel_jobs(session: Session, reason: str, *, now: datetime | None = None, **where: Any) -> int:
    """Mark the queued jobs (and running ones whose lease expired at ``now``) matching ``where`` failed with
    ``reason``. A caller that asked ``live_job`` first passes the same ``now``: a lease that was expired for that
    check must be expired for this one, or the job stays running and its worker can still complete it."""
    now = check_now(now, session)
    clauses = [or_(Job.status == "queued", and_(Job.status == "running", Job.lease_expires_at < now)),
               *(getattr(Job, k) == v for k, v in where.items())]
    result = session.execute(
        update(Job).where(*clauses).values(status="failed", error=reason, lease_owner=None, lease_expires_at=None,
                                           updated_at=now),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount


def enqueue_job(
    *,
    session: Session,
    kind: str,
    experiment_id: int | None = None,
    round_id: int | None = None,
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> Job:
    check_choice("job kind", kind, JOB_KINDS)
    check_int("max_attempts", max_attempts, minimum=1)
    payload = {} if payload is None else payload
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a dict, got {type(payload).__name__}")
    check_json("payload", payload)
    if experiment_id is not None:
        _experiment(session, experiment_id)
    if round_id is not None:
        _round(session, round_id)
    job = Job(
        kind=kind,
        experiment_id=experiment_id,
        round_id=round_id,
        status="queued",
        payload=payload,
        attempts=0,
        max_attempts=max_attempts,
    )
    session.add(job)
    session.flush()
    return job


def ensure_job(
    *,
    session: Session,
    kind: str,
    experiment_id: int,
    round_id: int,
    payload: dict[str, Any] | None = None,
    max_attempts: int = 3,
) -> tuple[Job, bool]:
    """The round's job of ``kind`` that is queued, running or done, else a new one queued; returns (job, created).

    For work queued by another job's publishing transaction: a re-run of that job (after a crash, or queued again by
    an operator) finds the first one instead of queuing the work twice. A failed one is no obstacle."""
    check_choice("job kind", kind, JOB_KINDS)
    # Read, then insert: no unique index stops a second row, and none is needed. The caller is the publishing
    # transaction of the round's generate job, which holds that job's row lock (complete_job: SELECT ... FOR UPDATE,
    # and only the lease owner gets past it) from before this read until its commit; a second transaction for the
    # same round (a re-run of that job, or another worker that took it over) waits for that lock, or fails with
    # LeaseLost, and only then reads, so it finds this job. A round has one generate job at a time (retry_job refuses
    # a second), and on SQLite BEGIN IMMEDIATE serializes all writers anyway.
    existing = session.scalar(select(Job).where(Job.round_id == round_id, Job.kind == kind,
                                                Job.status.in_(("queued", "running", "done"))).order_by(Job.id))
    if existing is not None:
        return existing, False
    return enqueue_job(session=session, kind=kind, experiment_id=experiment_id, round_id=round_id, payload=payload,
                       max_attempts=max_attempts), True


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id) if findable_id(job_id) else None
    if job is None:
        raise NotFound(f"there is no job with id {job_id}")
    return job


def list_jobs(*, session: Session, status: str | None = None, experiment_id: int | None = None, limit: int = 100) -> list[Job]:
    """Jobs, newest first."""
    stmt = select(Job).order_by(Job.id.desc()).limit(check_int("limit", limit, minimum=1))
    if status is not None:
        stmt = stmt.where(Job.status == check_choice("job status", status, JOB_STATUSES))
    if experiment_id is not None:
        stmt = stmt.where(Job.experiment_id == experiment_id)
    return list(session.scalars(stmt))


def held_job_claims(*, session: Session, worker_id: str) -> list[tuple[int, int]]:
    """(id, claim) of every running job whose lease ``worker_id`` holds, oldest first (however many jobs the queue
    has): the claim number fences what the caller then does to the job, as a claim's does (``_owned_running_job``)."""
    stmt = select(Job.id, Job.claims).where(Job.status == "running", Job.lease_owner == worker_id).order_by(Job.id)
    return [(job_id, claims) for job_id, claims in session.execute(stmt)]


def _claimable(now: datetime) -> Any:
    """Queued, or running with an expired lease (its worker stopped heartbeating); attempts left; not of a paused
    experiment (its jobs wait until it is resumed; a job already running when it was paused finishes)."""
    expired = and_(Job.status == "running", Job.lease_expires_at < now)
    paused = select(Experiment.id).where(Experiment.status == "paused")
    return and_(
        or_(Job.status == "queued", expired),
        Job.attempts < Job.max_attempts,
        or_(Job.experiment_id.is_(None), Job.experiment_id.not_in(paused)),  # a paused experiment's jobs wait
    )


# claim order: the kinds a person waits for first, then the oldest (works alike on SQLite and PostgreSQL)
_PRIORITY = case((Job.kind.in_(PERSON_KINDS), 0), else_=1)


def waiting_job(*, session: Session, kinds: Iterable[str] = PERSON_KINDS, now: datetime | None = None) -> Job | None:
    """The job of ``kinds`` that ``claim_job`` would take next (of any experiment), or None; reads, locks nothing.

    A running eval job asks this between chunks of its work: it gives way when a person's job is claimable (one of a
    paused experiment is not, so it is no reason to give way)."""
    now = check_now(now, session)
    kinds = [check_choice("job kind", k, JOB_KINDS) for k in kinds]
    return session.scalar(select(Job).where(_claimable(now), Job.kind.in_(kinds)).order_by(Job.id).limit(1))


def claim_job(
    *,
    session: Session,
    worker_id: str,
    lease_s: float,
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
) -> Job | None:
    """Atomically take the next claimable job for ``worker_id``, or None if there is none: a job a person waits for
    ("generate", "train") before an "eval" job, then the oldest.

    Claimable: queued, or running with an expired lease (its worker stopped heartbeating), and not of a paused
    experiment (its jobs wait until it is resumed; a job already running when it was paused finishes).
    One ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``: on SQLite the write lock taken
    by BEGIN IMMEDIATE serializes claims; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` in the
    subquery, and the claimability test repeated on the updated row, keep two workers apart.
    Expired jobs that have used all their attempts are marked failed first. The job's ``claims`` goes up by one:
    the caller passes it as ``claim=`` to what it then does to the job.
    """
    check_name("worker_id", worker_id)
    lease = check_lease(lease_s)
    now = check_now(now, session)
    kinds = None if kinds is None else [check_choice("job kind", k, JOB_KINDS) for k in kinds]
    expired = and_(Job.status == "running", Job.lease_expires_at < now)
    session.execute(
        update(Job)
        .where(expired, Job.attempts >= Job.max_attempts)
        .values(
            status="failed",
            lease_expires_at=None,
            updated_at=now,
            error="the lease expired on the last allowed attempt (the worker stopped sending heartbeats)",
        ),
        execution_options={"synchronize_session": False},
    )
    claimable = _claimable(now)
    if kinds is not None:
        claimable = and_(claimable, Job.kind.in_(kinds))
    first = (select(Job.id).where(claimable).order_by(_PRIORITY, Job.id).limit(1).with_for_update(skip_locked=True)
             .scalar_subquery())
    stmt = (
        update(Job)
        .where(Job.id == first, claimable)
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=now + lease,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            claims=Job.claims + 1,
            updated_at=now,
        )
        .returning(Job)
    )
    return session.scalars(stmt, execution_options={"synchronize_session": False, "populate_existing": True}).one_or_none()


def _check_claim(claim: int | None) -> int | None:
    return None if claim is None else check_int("claim", claim, minimum=1)


def heartbeat(
    *,
    session: Session,
    job_id: int,
    worker_id: str,
    lease_s: float,
    progress: dict[str, Any] | None = None,
    now: datetime | None = None,
    claim: int | None = None,
) -> bool:
    """Extend the lease (and record ``progress``: phase, step, total, eta_s) if ``worker_id`` still owns the job
    (and, with ``claim``, still under the claim that returned that claim number).

    Returns False when it does not (the job was reclaimed, finished or failed): stop working on it.
    """
    claim = _check_claim(claim)
    lease = check_lease(lease_s)
    now = check_now(now, session)
    values: dict[str, Any] = {"lease_expires_at": now + lease, "heartbeat_at": now, "updated_at": now}
    if progress is not None:
        if not isinstance(progress, dict):
            raise InvalidInput(f"progress must be a dict (phase, step, total, eta_s), got {type(progress).__name__}")
        values["progress"] = check_json("progress", progress)
    owned = [Job.id == job_id, Job.lease_owner == worker_id, Job.status == "running"]
    if claim is not None:
        owned.append(Job.claims == claim)
    result = session.execute(update(Job).where(*owned).values(**values), execution_options={"synchronize_session": False})
    return result.rowcount == 1


def held_job(*, session: Session, job_id: int, worker_id: str, claim: int | None = None) -> Job:
    """The job, its row locked for the rest of the transaction, if ``worker_id`` still holds it (under ``claim``,
    when given); LeaseLost otherwise.

    While the lock is held no other worker can claim the job or finish it (on SQLite the write transaction alone
    does this): for work outside the database that only the holder may do, such as renaming its files."""
    return _owned_running_job(session, job_id, worker_id, claim)


def _owned_running_job(session: Session, job_id: int, worker_id: str, claim: int | None) -> Job:
    """The job, row-locked, if ``worker_id`` holds it and (with ``claim``) its claim count is still the one that
    worker's claim set; LeaseLost otherwise."""
    claim = _check_claim(claim)
    job = session.scalars(
        select(Job).where(Job.id == job_id).with_for_update(), execution_options={"populate_existing": True}
    ).one_or_none()
    if job is None:
        raise NotFound(f"there is no job with id {job_id}")
    if (why := _not_held(job, worker_id, claim)) is not None:
        raise LeaseLost(why)
    return job


def _not_held(job: Job, worker_id: str, claim: int | None) -> str | None:
    """Why ``worker_id`` (under ``claim``, when given) no longer holds ``job``, worded by what became of the job, or
    None if it does. An admin's stop or cancel was told as "its lease expired and the job was reclaimed" (found by
    review), which sent the operator looking for another worker."""
    if job.status == "running" and job.lease_owner == worker_id:
        if claim is None or job.claims == claim:
            return None
        return (f"worker {worker_id!r} no longer holds job {job.id}: its claim {claim} ended (its lease expired, or an "
                f"admin stopped the job) and the job was claimed again as claim {job.claims}, attempt {job.attempts} "
                "(by a worker with the same id)")
    head = f"worker {worker_id!r} no longer holds job {job.id} (it is {job.status!r}, held by {job.lease_owner!r})"
    if job.status == "running":
        return f"{head}; its lease expired and the job was reclaimed"
    if job.status == "failed" and job.lease_owner is None:  # stop_job, cancel_jobs: an admin's stop, reopen or finish
        return f"{head}; an admin stopped or cancelled it ({job.error})"
    if job.status == "failed":
        return f"{head}; it failed ({job.error})"
    if job.status == "done" and job.lease_owner == worker_id:
        return f"{head}; it was finished under this worker id (by an earlier try, or a worker with the same id)"
    if job.status == "done":
        return f"{head}; its lease expired and the job was reclaimed and finished by that worker"
    return f"{head}; it was handed back to the queue (or retried by an admin) and waits for a worker"


def lost_lease(*, session: Session, job_id: int, worker_id: str, claim: int | None = None) -> str | None:
    """What ``held_job`` would raise as LeaseLost, read without locking: one sentence, or None while ``worker_id``
    still holds the job (or there is no such job). For a worker whose heartbeat found the job no longer its own."""
    claim = _check_claim(claim)
    job = session.get(Job, job_id, populate_existing=True) if findable_id(job_id) else None
    return None if job is None else _not_held(job, worker_id, claim)


def complete_job(*, session: Session, job_id: int, worker_id: str, result: dict[str, Any] | None = None,
                 claim: int | None = None) -> Job:
    """Mark a running job done. Raises LeaseLost if ``worker_id`` no longer owns it (under ``claim``, when given)."""
    if result is not None:
        if not isinstance(result, dict):
            raise InvalidInput(f"result must be a dict, got {type(result).__name__}")
        check_json("result", result)
    job = _owned_running_job(session, job_id, worker_id, claim)
    job.status = "done"
    job.result = result
    job.lease_expires_at = None
    session.flush()
    return job


def fail_job(*, session: Session, job_id: int, worker_id: str, error: str, retry: bool = False,
             claim: int | None = None) -> Job:
    """Record an error. With ``retry`` and attempts left the job is queued again, else it fails.

    Raises LeaseLost if ``worker_id`` no longer owns it (under ``claim``, when given).
    """
    if not isinstance(error, str) or not error.strip():
        raise InvalidInput(f"error must be a non-empty message, got {error!r}")
    job = _owned_running_job(session, job_id, worker_id, claim)
    job.error = error.replace("\x00", "\\x00")  # an exception's text may hold one; the database cannot
    job.lease_expires_at = None
    if retry and job.attempts < job.max_attempts:
        job.status = "queued"
        job.lease_owner = None
    else:
        job.status = "failed"
    session.flush()
    return job


def save_payload(*, session: Session, job_id: int, worker_id: str, payload: dict[str, Any],
                 claim: int | None = None) -> Job:
    """Replace a running job's payload (what a re-run needs to carry on where this one stopped), if ``worker_id``
    still owns it (under ``claim``, when given); raises LeaseLost otherwise."""
    if not isinstance(payload, dict):
        raise InvalidInput(f"payload must be a dict, got {type(payload).__name__}")
    check_json("payload", payload)
    job = _owned_running_job(session, job_id, worker_id, claim)
    job.payload = dict(payload)
    job.updated_at = utcnow()
    session.flush()
    return job


def yield_job(*, session: Session, job_id: int, worker_id: str, payload: dict[str, Any] | None = None,
              now: datetime | None = None, claim: int | None = None) -> Job:
    """Hand a running job back to the queue without using up an attempt (it gave way to work a person waits for).

    Only while ``worker_id`` owns it, under ``claim`` when given (LeaseLost otherwise, and nothing changes): queued
    again with the attempt count it had before this claim (its claim count stays), no lease, no error recorded;
    ``payload`` (if given) replaces its payload. The caller stops its heartbeats first, so the lease is released in
    this one transaction."""
    now = check_now(now, session)
    if payload is not None:
        if not isinstance(payload, dict):
            raise InvalidInput(f"payload must be a dict, got {type(payload).__name__}")
        check_json("payload", payload)
    job = _owned_running_job(session, job_id, worker_id, claim)
    job.status = "queued"
    job.attempts = max(0, job.attempts - 1)  # the claim counted an attempt; a job that gave way did not use it
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = now
    if payload is not None:
        job.payload = dict(payload)
    session.flush()
    return job


# the round statuses in which each job kind has work left: retrying a job whose round has moved on would do nothing
JOB_ROUND_STATUS = {"generate": ("generating",), "train": ("training",), "eval": ("labeling", "training", "done")}


def retry_refusal(session: Session, job: Job) -> str | None:
    """Why ``job`` cannot be retried now (one sentence), or None: it must have failed, its experiment not be
    finished, its round still wait for it (a generate job's round 'generating', a train job's 'training', an eval
    job's past 'generating'), no other job of that kind be waiting or running for it, and no newer job of that kind
    have replaced it (a train job cancelled by a reopen: the round closed again with a newer rating watermark)."""
    if job.status != "failed":
        return f"job {job.id} is {job.status!r}; only a failed job can be retried"
    if job.experiment_id is not None:
        experiment = _experiment(session, job.experiment_id)
        if experiment.status == "finished":
            return f"experiment {experiment.name!r} is finished; its jobs cannot be retried"
    if job.round_id is not None:
        round_ = _round(session, job.round_id)
        wanted = JOB_ROUND_STATUS.get(job.kind)
        if wanted is not None and round_.status not in wanted:
            return f"round {round_.index} is {round_.status!r} now, so {job.kind} job {job.id} has nothing left to do"
        other = session.scalar(select(Job.id).where(Job.round_id == job.round_id, Job.kind == job.kind, Job.id != job.id,
                                                    Job.status.in_(("queued", "running"))))
        if other is not None:
            return f"job {other} already does the {job.kind} work of round {round_.index}; job {job.id} was not retried"
        newer = session.scalar(select(Job.id).where(Job.round_id == job.round_id, Job.kind == job.kind, Job.id > job.id))
        if newer is not None:
            return (f"job {newer} replaced job {job.id} for the {job.kind} work of round {round_.index}; retry job "
                    f"{newer} instead")
    return None


def _set_unleased(job: Job, status: str, **fields: Any) -> None:
    """Give the job ``status`` with no worker holding it (and ``fields``), stamped now."""
    job.status = status
    job.lease_owner = None
    job.lease_expires_at = None
    job.updated_at = utcnow()
    for name, value in fields.items():
        setattr(job, name, value)


def _locked_job(session: Session, job_id: int) -> Job:
    """The job, row-locked FOR UPDATE and re-read from the database; NotFound if there is none."""
    job = session.scalars(
        select(Job).where(Job.id == check_int("job id", job_id)).with_for_update(), execution_options={"populate_existing": True}
    ).one_or_none()
    if job is None:
        raise NotFound(f"there is no job with id {job_id}")
    return job


def stop_job(*, session: Session, job_id: int, reason: str, expected_owner: str | None) -> Job:
    """Fail a running job now, whoever holds it (an admin's way out of a worker that hangs: its heartbeat thread kept
    the lease for ever, so the round could be neither reopened nor finished; found by review). The worker that held
    it gets LeaseLost at its next heartbeat, progress report or publish, and writes nothing. Refused (Conflict) for a
    job that is not running, or that a worker other than ``expected_owner`` runs now."""
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInput(f"reason must be a non-empty message, got {reason!r}")
    job = _locked_job(session, job_id)
    if job.status != "running":
        raise Conflict(f"job {job.id} is {job.status}, not running; only a running job can be stopped")
    if job.lease_owner != expected_owner:
        raise Conflict(f"job {job.id} was taken again: worker {job.lease_owner!r} runs it now, not {expected_owner!r}; "
                       "ask again")
    _set_unleased(job, "failed", error=reason)
    session.flush()
    return job


def retry_job(*, session: Session, job_id: int) -> Job:
    """Queue a failed job again with all its attempts (an admin's retry after fixing the cause); refused with
    ``retry_refusal``'s sentence. Its claim count stays: a worker whose claim of it was stopped stays fenced off."""
    job = _locked_job(session, job_id)
    if (why := retry_refusal(session, job)) is not None:
        raise Conflict(why)
    _set_unleased(job, "queued", attempts=0, heartbeat_at=None, progress=None)
    session.flush()
    return job
