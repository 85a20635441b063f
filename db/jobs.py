"""The worker's job queue: jobs with leases.

A worker claims a job for ``lease_s`` seconds (``claim_job``) and extends the lease with heartbeats while it works
(``heartbeat``, outside any transaction). If it dies, the lease runs out and another worker reclaims the job
(attempts + 1); after ``max_attempts`` the job fails. A worker whose job was reclaimed cannot complete or fail it
(``LeaseLost``), so its late result is rolled back with its transaction. An admin can queue a failed job again
(``retry_job``).

Same conventions as ``db.repo``: keyword-only functions taking the session they work in; they flush, never commit;
bad input raises a ``db.errors`` exception with one clear sentence before anything is written. ``db.repo`` uses
``enqueue_job``, ``live_job`` and ``cancel_jobs`` for the rounds and experiments whose state queues or cancels jobs
(closing a round, publishing one, finishing an experiment); this module imports nothing from ``db.repo``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from db.checks import check_choice, check_int, check_json, check_lease, check_name, check_now
from db.errors import Conflict, InvalidInput, LeaseLost, NotFound
from db.models import JOB_KINDS, JOB_STATUSES, Experiment, Job, Round, utcnow


def _experiment(session: Session, experiment_id: int) -> Experiment:
    experiment = session.get(Experiment, experiment_id)
    if experiment is None:
        raise NotFound(f"there is no experiment with id {experiment_id}")
    return experiment


def _round(session: Session, round_id: int) -> Round:
    round_ = session.get(Round, round_id)
    if round_ is None:
        raise NotFound(f"there is no round with id {round_id}")
    return round_


def live_job(session: Session, now: datetime, **where: Any) -> Job | None:
    """A running job with a live lease matching ``where`` (e.g. experiment_id=, round_id=), or None."""
    clauses = [Job.status == "running", Job.lease_expires_at >= now, *(getattr(Job, k) == v for k, v in where.items())]
    return session.scalar(select(Job).where(*clauses).order_by(Job.id))


def cancel_jobs(session: Session, reason: str, **where: Any) -> int:
    """Mark the queued jobs (and running ones whose lease expired) matching ``where`` failed with ``reason``."""
    now = utcnow()
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


def get_job(*, session: Session, job_id: int) -> Job:
    job = session.get(Job, job_id)
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


def claim_job(
    *,
    session: Session,
    worker_id: str,
    lease_s: float,
    kinds: Iterable[str] | None = None,
    now: datetime | None = None,
) -> Job | None:
    """Atomically take the oldest claimable job for ``worker_id``, or None if there is none.

    Claimable: queued, or running with an expired lease (its worker stopped heartbeating), and not of a paused
    experiment (its jobs wait until it is resumed; a job already running when it was paused finishes).
    One ``UPDATE ... WHERE id = (SELECT ... LIMIT 1) RETURNING``: on SQLite the write lock taken
    by BEGIN IMMEDIATE serializes claims; on PostgreSQL ``FOR UPDATE SKIP LOCKED`` in the
    subquery, and the claimability test repeated on the updated row, keep two workers apart.
    Expired jobs that have used all their attempts are marked failed first.
    """
    check_name("worker_id", worker_id)
    lease = check_lease(lease_s)
    now = check_now(now)
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
    paused = select(Experiment.id).where(Experiment.status == "paused")
    claimable = and_(
        or_(Job.status == "queued", expired),
        Job.attempts < Job.max_attempts,
        or_(Job.experiment_id.is_(None), Job.experiment_id.not_in(paused)),  # a paused experiment's jobs wait
    )
    if kinds is not None:
        claimable = and_(claimable, Job.kind.in_(kinds))
    oldest = select(Job.id).where(claimable).order_by(Job.id).limit(1).with_for_update(skip_locked=True).scalar_subquery()
    stmt = (
        update(Job)
        .where(Job.id == oldest, claimable)
        .values(
            status="running",
            lease_owner=worker_id,
            lease_expires_at=now + lease,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            updated_at=now,
        )
        .returning(Job)
    )
    return session.scalars(stmt, execution_options={"synchronize_session": False, "populate_existing": True}).one_or_none()


def heartbeat(
    *,
    session: Session,
    job_id: int,
    worker_id: str,
    lease_s: float,
    progress: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> bool:
    """Extend the lease (and record ``progress``: phase, step, total, eta_s) if ``worker_id`` still owns the job.

    Returns False when it does not (the job was reclaimed, finished or failed): stop working on it.
    """
    lease = check_lease(lease_s)
    now = check_now(now)
    values: dict[str, Any] = {"lease_expires_at": now + lease, "heartbeat_at": now, "updated_at": now}
    if progress is not None:
        if not isinstance(progress, dict):
            raise InvalidInput(f"progress must be a dict (phase, step, total, eta_s), got {type(progress).__name__}")
        values["progress"] = check_json("progress", progress)
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.lease_owner == worker_id, Job.status == "running").values(**values),
        execution_options={"synchronize_session": False},
    )
    return result.rowcount == 1


def _owned_running_job(session: Session, job_id: int, worker_id: str) -> Job:
    job = session.scalars(
        select(Job).where(Job.id == job_id).with_for_update(), execution_options={"populate_existing": True}
    ).one_or_none()
    if job is None:
        raise NotFound(f"there is no job with id {job_id}")
    if job.status != "running" or job.lease_owner != worker_id:
        raise LeaseLost(
            f"worker {worker_id!r} no longer holds job {job_id} (it is {job.status!r}, held by {job.lease_owner!r}); "
            "its lease expired and the job was reclaimed"
        )
    return job


def complete_job(*, session: Session, job_id: int, worker_id: str, result: dict[str, Any] | None = None) -> Job:
    """Mark a running job done. Raises LeaseLost if ``worker_id`` no longer owns it."""
    if result is not None:
        if not isinstance(result, dict):
            raise InvalidInput(f"result must be a dict, got {type(result).__name__}")
        check_json("result", result)
    job = _owned_running_job(session, job_id, worker_id)
    job.status = "done"
    job.result = result
    job.lease_expires_at = None
    session.flush()
    return job


def fail_job(*, session: Session, job_id: int, worker_id: str, error: str, retry: bool = False) -> Job:
    """Record an error. With ``retry`` and attempts left the job is queued again, else it fails.

    Raises LeaseLost if ``worker_id`` no longer owns it.
    """
    if not isinstance(error, str) or not error.strip():
        raise InvalidInput(f"error must be a non-empty message, got {error!r}")
    job = _owned_running_job(session, job_id, worker_id)
    job.error = error
    job.lease_expires_at = None
    if retry and job.attempts < job.max_attempts:
        job.status = "queued"
        job.lease_owner = None
    else:
        job.status = "failed"
    session.flush()
    return job


# the round status each job kind works on: retrying a job whose round has moved on would do nothing useful
_JOB_ROUND_STATUS = {"generate": "generating", "train": "training"}


def retry_job(*, session: Session, job_id: int) -> Job:
    """Queue a failed job again with all its attempts (an admin's retry after fixing the cause).

    Refused unless the job failed, its experiment is not finished, its round still waits for it (a generate job's
    round is 'generating', a train job's 'training') and no other job of that kind is waiting or running for it."""
    job = session.scalars(
        select(Job).where(Job.id == check_int("job id", job_id)).with_for_update(), execution_options={"populate_existing": True}
    ).one_or_none()
    if job is None:
        raise NotFound(f"there is no job with id {job_id}")
    if job.status != "failed":
        raise Conflict(f"job {job_id} is {job.status!r}; only a failed job can be retried")
    if job.experiment_id is not None:
        experiment = _experiment(session, job.experiment_id)
        if experiment.status == "finished":
            raise Conflict(f"experiment {experiment.name!r} is finished; its jobs cannot be retried")
    if job.round_id is not None:
        round_ = _round(session, job.round_id)
        wanted = _JOB_ROUND_STATUS.get(job.kind)
        if wanted is not None and round_.status != wanted:
            raise Conflict(f"round {round_.index} is {round_.status!r} now, so {job.kind} job {job_id} has nothing left to do")
        other = session.scalar(select(Job.id).where(Job.round_id == job.round_id, Job.kind == job.kind, Job.id != job.id,
                                                    Job.status.in_(("queued", "running"))))
        if other is not None:
            raise Conflict(f"job {other} already does the {job.kind} work of round {round_.index}; job {job_id} was not retried")
    job.status = "queued"
    job.attempts = 0
    job.lease_owner = None
    job.lease_expires_at = None
    job.heartbeat_at = None
    job.progress = None
    job.updated_at = utcnow()
    session.flush()
    return job
