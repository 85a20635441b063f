"""The background worker: claim a job, run SEIKO outside any transaction, publish the result in one short one.

    generate (round k):  sample round k's query batch with adapter k -> PNGs + embeddings
                         -> one transaction: Image rows, round k 'labeling', round k's eval job queued, job done
    eval (round k):      the fixed-seed eval grid with adapter k, in chunks (each stored in its own short transaction)
                         -> one transaction: eval metrics, blind A/B pairs (round k's, and those of the rounds
                            paired with round k's grid whose eval jobs finished first), job done
    train (round k):     ratings snapshot up to the job's watermark -> reward ensemble -> adapter k+1,
                         both written atomically under the data dir
                         -> one transaction: round k+1 + checkpoint, round k 'done', generate job k+1, job done

Priority: a person waits for generate and train jobs, nobody for an eval job (the dashboard's grid). ``claim_job``
takes generate and train jobs first, and a running eval job, between its chunks, gives way when one is claimable:
it is handed back to the queue without using up an attempt (``db.jobs.yield_job``; the log says "YIELDS") and
carries on from its stored chunks when nothing else waits.

Leases: a job is claimed for ``lease_s`` seconds and a heartbeat thread extends the lease every
``min(lease_s / 3, 2)`` seconds, writing the latest progress (phase, step, total, eta_s) that the core's
``on_progress`` callback left. If the worker dies, the lease runs out and another worker re-runs the
job; a worker whose job was taken over cannot publish (``complete_job`` raises LeaseLost in the
publishing transaction, which is then rolled back). A re-run publishes exactly once: images are
content-addressed and their rows unique per (round, kind, prompt, seed), an adapter directory that
verifies and was trained on the same snapshot is reused, and ``repo.publish_round`` does nothing
when the round already exists.

Seeds are derived from (experiment id, round index, purpose), so a re-run makes the same prompts,
the same images and (on the same hardware) the same adapter.

Fault injection (tests and ``python -m app.tools.fault_matrix`` only; off unless the variable is set):
``SEIKO_FAULT_PHASE=name[,name...]`` makes the worker SIGKILL itself at that point of a job's FIRST
attempt, so the re-run (attempt 2) goes through. Points: ``claim`` (just claimed), ``snapshot`` (ratings
read), ``reward_fit`` / ``finetune`` / ``sample_query`` / ``sample_eval`` (first progress report of that
phase), ``save`` (reward model written, adapter not yet), ``publish_query`` (inside the generate job's
transaction that opens the round with its query images and queues the eval job), ``eval_chunk`` (inside the
transaction that stores a chunk of the eval grid), ``publish`` (inside the publishing transaction, before its
commit). See RELIABILITY.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from sqlalchemy.exc import OperationalError

from app import (
    ab,  # issue 14 item 3: blind A/B pairs and rollback
    alarms,
    experiment_options,
    pairwise,  # issue 14 item 1: pairwise preferences
    quality,
    selection,
    storage,
)
from app.services import experiment_config, round_budget, stored_config_warning
from app.settings import Settings, shown_url
from db import comparisons, migrate, repo
from db import jobs as job_queue
from db import quality as db_quality
from db.checks import check_name
from db.engine import (
    bound_refusal,
    idle_refusal,
    is_outage,
    lock_not_granted,
    lock_outlasts_statement,
    lock_waited_s,
    make_engine,
    read_session,
    session_factory,
    statement_cancelled,
    statement_timeout_ran_out_s,
    write_session,
)
from db.errors import Conflict, InvalidInput, LeaseLost
from db.presence import Presence
from seiko_core import lora
from seiko_core.checkpoint import MANIFEST, CheckpointError, atomic_directory, sha256_file, verify
from seiko_core.config import SeikoConfig, to_dict
from seiko_core.finetune import trajectory_kl
from seiko_core.loop import generate_batch, predicted_reward_of_embeddings, round_prompts, train_round
from seiko_core.models import ModelLoadError, ModelParts, load_model
from seiko_core.reward import RewardEnsemble
from seiko_core.sampling import to_uint8
from seiko_core.scratch import PIXELS_IN_MEMORY_MAX_BYTES, PixelSpill, check_max_bytes

log = logging.getLogger("seiko.worker")
_T = TypeVar("_T")

ERROR_MAX_CHARS = 2000  # a job's error message is one sentence; a runaway message is cut here


FAULT_ENV = "SEIKO_FAULT_PHASE"  # fault injection: see the module docstring


def fault_point(name: str, attempt: int) -> None:
    """SIGKILL this process at fault point ``name`` on a job's first attempt when SEIKO_FAULT_PHASE names it."""
    wanted = os.environ.get(FAULT_ENV, "")
    if wanted and attempt == 1 and name in wanted.split(","):
        log.warning("fault injection (%s=%s): killing this worker at %r", FAULT_ENV, wanted, name)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class WorkerRefused(RuntimeError):
    """The worker cannot start in this environment; the message says what to do instead."""


class ClaimsCancelled(WorkerRefused):
    """``Worker.run_once_outlasting_outages``: the database cancelled CLAIM_CANCELS_MAX claims of a job in a row
    (57014: the operator's statement_timeout, or an operator's cancel); the message names the bound and what to
    change (where one is known). The worker stops (``app.cli_worker``: status 1)."""


class JobYield(Exception):
    """An eval job gives way to ``waiting`` ({"id", "kind", "experiment_id"}), a job a person waits for: the worker
    hands it back to the queue (``db.jobs.yield_job``, no attempt used, no error) with ``payload``, then claims again."""

    def __init__(self, waiting: dict[str, Any], *, round_index: int, images: int, grid: int, payload: dict[str, Any]) -> None:
        super().__init__(f"gives way to job {waiting['id']} ({waiting['kind']})")
        self.waiting, self.round_index, self.images, self.grid, self.payload = waiting, round_index, images, grid, payload


class JobCancelled(Exception):
    """An eval job found its experiment finished when it stored a chunk: the worker stops it (``Worker._cancel``:
    the job failed with ``reason``, as finishing the experiment cancels its queued jobs); its stored chunks stay."""

    def __init__(self, reason: str, *, round_index: int, images: int, grid: int) -> None:
        super().__init__(reason)
        self.reason, self.round_index, self.images, self.grid = reason, round_index, images, grid


# ---------------------------------------------------------------------------------------------
# seeds
# ---------------------------------------------------------------------------------------------


def _transient(exc: BaseException) -> bool:
    """Whether a model or adapter that could not be loaded may load on another attempt: the error was caused by a
    connection or a timeout (a hub download), or by running out of memory (another worker, or this one later, may
    have it: torch's OutOfMemoryError is a RuntimeError, which load_model reports as a ModelLoadError), not by the
    files."""
    seen = set()
    cause = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        # requests' and urllib3's are not the built-in ones: told by their names (ConnectionError, ReadTimeout ...)
        if isinstance(cause, ConnectionError | TimeoutError | MemoryError) or type(cause).__name__.endswith(
                ("ConnectionError", "ConnectError", "Timeout", "TimeoutError", "OutOfMemoryError")):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _cancel_reason(exc: BaseException) -> str:
    """Why PostgreSQL cancelled a statement of the worker (``statement_cancelled``): its statement_timeout, named (the
    operator's: the worker's engine sets none), and whether a lock wait ends there too; or an operator's cancel."""
    if (bound := statement_timeout_ran_out_s(exc)) is not None:
        ran = "it ran, or waited for a lock another transaction held, that long" if lock_outlasts_statement(exc) \
            else "it ran that long"
        return f"the database's statement_timeout of {bound:g} s ran out: {ran}"
    return "an operator's cancel, or the database's statement_timeout"


def _waited_out(exc: OperationalError) -> bool:
    """Whether a job's write that failed with ``exc`` is tried again within its attempt (``Worker._through_outages``),
    and a publish whose last try failed so is read back as one whose answer was lost (``Worker._publish``): the
    database out of reach for a moment (``db.engine.is_outage``: a dropped connection, a restart, a lock not granted).
    Not a statement cancelled (57014: its statement bound ran out, or an operator cancelled it), though class 57 is an
    outage to a claim, unless it is a lock wait cut at the statement bound (``lock_outlasts_statement``: the operator's
    lock bound is none or not below it), which is a lock not granted (55P03) by another bound (a read-only review of
    the sixteenth review's fixes); and not a session the server ended for a transaction left idle (25P03: raised as a
    drop is, but no transaction of the worker idles that long, so it is a fault to report). Both the loop and the
    read-back ask this one test: the publish read either back as a lost answer after failing at once (the same review)."""
    if statement_cancelled(exc) and not lock_outlasts_statement(exc):
        return False
    return is_outage(exc) and idle_refusal(exc) is None


def _bound_error(exc: BaseException) -> str | None:
    """The job's error for a statement the database ended at one of its bounds or at an operator's request
    (``db.engine.bound_refusal``: the page's sentence, less its "try again"), or None for any other error."""
    if not isinstance(exc, OperationalError) or (said := bound_refusal(exc)) is None:
        return None
    return f"{said.removesuffix('; try again in a moment')}; this attempt of the job failed"


def derive_seed(*parts: Any, bits: int = 31) -> int:
    """A ``bits``-bit seed from the sha256 of ``parts`` (e.g. experiment id, round index, purpose); stable across runs."""
    digest = hashlib.sha256(":".join(map(str, ("seiko", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> (64 - bits)


def query_seeds(experiment_id: int, round_index: int, n: int) -> list[int]:
    """Seeds of round ``round_index``'s query images: consecutive from a derived 48-bit base, so distinct within the round."""
    base = derive_seed(experiment_id, round_index, "images", bits=48)
    return [base + i for i in range(n)]


def finite_json(value: Any) -> Any:
    """``value`` with numpy scalars made plain and NaN/inf replaced by None (the database stores strict JSON)."""
    if isinstance(value, dict):
        return {str(k): finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_json(v) for v in value]
    if isinstance(value, np.generic | torch.Tensor):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------------------------------
# progress and heartbeats
# ---------------------------------------------------------------------------------------------


class JobProgress:
    """The latest progress of the running job, shared by the model code's callback and the heartbeat thread.

    The callback only stores a dict under a lock; the heartbeat thread reads it and writes it to the job row.
    When the heartbeat finds the job taken over, ``lost`` is set and the next callback raises LeaseLost,
    which stops the model work early.
    """

    def __init__(self, job_id: int, worker_id: str, attempt: int = 0) -> None:
        self.job_id, self.worker_id, self.attempt = job_id, worker_id, attempt
        self.lost = threading.Event()
        self.lost_reason: str | None = None  # set (before ``lost``) by the heartbeat: what became of the job
        self._lock = threading.Lock()
        self._latest: dict[str, Any] | None = None
        self._phase: str | None = None
        self._phase_start = time.monotonic()

    def set(self, phase: str, step: int = 0, total: int = 0) -> None:
        now = time.monotonic()
        with self._lock:
            if phase != self._phase:
                self._phase, self._phase_start = phase, now
            eta = None
            if step > 0 and total >= step:
                eta = round((now - self._phase_start) / step * (total - step), 1)
            self._latest = {"phase": phase, "step": int(step), "total": int(total), "eta_s": eta}

    def latest(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._latest is None else dict(self._latest)

    def callback(self, phase: str | None = None) -> Callable[[int, int, dict], None]:
        """An ``on_progress(step, total, metrics)`` for seiko_core; ``phase`` overrides the core's own phase name."""

        def on_progress(step: int, total: int, metrics: dict) -> None:
            if self.lost.is_set():
                raise LeaseLost(self.lost_reason or f"worker {self.worker_id!r} lost the lease of job {self.job_id}; stopping it")
            name = phase or str(metrics.get("phase") or "work")
            fault_point(name, self.attempt)
            self.set(name, int(step), int(total))

        return on_progress


PROGRESS_EVERY_S = 2.0


class _StoppedAsItClaimed(Exception):
    """``Worker.run_once``: a stop was asked while the job was being claimed."""


DB_RETRY_MAX_S = 30.0  # run_forever's longest wait between tries while the database cannot be reached
# Claims of a job the database cancelled in a row (57014) after which the worker stops (ClaimsCancelled). With the
# waits between them (1, 2, 4 ... DB_RETRY_MAX_S s) the 10th comes at least 151 s after the first: a cancel behind a
# lock held for a while (an admin's transaction) is waited out, one at every claim (a statement_timeout shorter than
# the claim itself takes) is said once and ends the worker, where it was one warning every 30 s without end
CLAIM_CANCELS_MAX = 10
# An eval job stores its grid (and checks for a job a person waits for) every EVAL_CHUNK images: a person's next round
# waits at most one chunk for it (one sampling batch of this size; with eta > 0 the KL works in chunks alike).
EVAL_CHUNK = 4


class Heartbeat:
    """A thread that extends the job's lease every ``min(lease_s / 3, PROGRESS_EVERY_S)`` seconds and writes the latest progress."""

    def __init__(self, factory, job_id: int, worker_id: str, lease_s: float, progress: JobProgress,
                 claim: int | None = None) -> None:
        self.factory, self.job_id, self.worker_id, self.lease_s = factory, job_id, worker_id, lease_s
        self.claim = claim  # the claim's number: a twin with the same worker id that took the job over is not us
        self.progress = progress
        # progress is written at least every PROGRESS_EVERY_S: the rating page shows it while a rater waits
        self.interval = min(lease_s / 3, PROGRESS_EVERY_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-job-{job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """No more heartbeats; with ``wait``, return once the thread has ended (not when it may be stuck itself)."""
        self._stop.set()
        if wait and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with write_session(self.factory) as s:
                    held = job_queue.heartbeat(session=s, job_id=self.job_id, worker_id=self.worker_id, lease_s=self.lease_s,
                                               progress=self.progress.latest(), claim=self.claim)
            except Exception:
                # The lease keeps running; if heartbeats keep failing the job is taken over and this worker's
                # publish fails with LeaseLost. Log every failure with its traceback and keep trying.
                log.exception("heartbeat of job %d failed; trying again in %.1f s", self.job_id, self.interval)
                continue
            if not held:
                # worded by what became of the job: an admin's stop or cancel was told as a lease that expired and a
                # job that was reclaimed (found by review)
                try:
                    with read_session(self.factory) as s:
                        why = job_queue.lost_lease(session=s, job_id=self.job_id, worker_id=self.worker_id,
                                                   claim=self.claim)
                except Exception:
                    log.exception("job %d: what became of it could not be read", self.job_id)
                    why = None
                self.progress.lost_reason = why
                log.warning("job %d: %s; stopping it", self.job_id,
                            why or f"worker {self.worker_id!r} no longer holds it")
                self.progress.lost.set()
                return


EX_TEMPFAIL = 75  # the status a worker its Watchdog ends exits with (sysexits.h): restart it, the job is retried


class Watchdog:
    """Ends the process (after one log sentence) when a stop was seen and the worker has not ended within ``grace_s``
    seconds: with ``status`` (EX_TEMPFAIL) when a job is held, with a normal stop's status when none is.

    A stop reaches a job only through the job's own code: a stop signal's handler raises at the main thread's next
    bytecode, a lost lease (an admin's stop) at the next progress report. A call that never returns (a query waiting
    on a lock, a collective whose peer is gone, a driver that hangs) sees neither, and the worker hung for ever, its
    heartbeat keeping the lease (found by the third review). The watchdog sees a stop signal on the wakeup fd that
    CPython's C-level handler writes to (``signal.set_wakeup_fd``), which works while the Python handler never gets
    to run, and a lost lease on the running job's ``JobProgress.lost``.

    - A stop signal while a job is held: the job is handed back as the worker's own hand-back of a stopped job does
      (``db.jobs.yield_job`` under its claim: queued again, no attempt used), within HAND_BACK_S seconds from this
      thread; the operator stopped the worker, the job did not fail. It cost an attempt, as a killed worker's lease
      that runs out does, so a job stopped three times while in a long call failed for good (found by the fourth
      review). If the database does not take the hand-back in time (it may be what the job is stuck on), the job is
      left as ``kill -9`` leaves it: taken again once its lease runs out, an attempt used.
    - A lost lease: nothing is written; an admin's stop stands.
    - A stop signal while no job is held (the worker starting up, loading its model, or claiming): the process ends
      as a stop of an idle worker does, status 0 for SIGTERM and 130 for Ctrl-C. It exited 75 ("a job was stuck,
      restart me"), so ``python -m app demo`` started a fresh worker that the operator had stopped (found by the
      fourth review).

    ``python -m app worker`` (one process, or rank 0 of ``--processes N``; ``grace_s`` is its ``--stop-grace-s``,
    default 30) makes one in its main thread, after its signal handlers are installed, and closes it when the worker
    has ended; a Worker used in-process (the tests) has none. Rank 0 passes its own ``status``
    (``app.train_dist.WATCHDOG_EXIT``), which its supervisor tells apart from a rank that failed."""

    TICK_S = 0.5
    HAND_BACK_S = 5.0  # the longest the watchdog waits for its hand-back of a stopped job before the process ends

    def __init__(self, worker: Worker, grace_s: float, *, status: int = EX_TEMPFAIL) -> None:
        self.worker, self.grace_s, self.status = worker, float(grace_s), status
        self._signal: int | None = None  # the first stop signal seen (SIGINT or SIGTERM)
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._write_fd, False)  # the C-level handler must never block on it
        self._old_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stop-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop watching (the worker has ended) and give the wakeup fd back; from the main thread."""
        self._closed.set()
        self._thread.join()
        signal.set_wakeup_fd(self._old_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _run(self) -> None:
        deadline: float | None = None
        watched: _Run | None = None  # the job whose lease was lost; None once a stop signal came (the whole process)
        why = ""
        while not self._closed.is_set():
            ready, _, _ = select.select([self._read_fd], [], [], self.TICK_S)
            signals = os.read(self._read_fd, 512) if ready else b""
            stops = [signum for signum in signals if signum in (signal.SIGINT, signal.SIGTERM)]
            if stops and self._signal is None:
                self._signal = stops[0]  # in the order they came: the first decides, as in interrupt_for_signal
            now, run = time.monotonic(), self.worker.current_run
            if stops or self.worker._stopping.is_set():
                if deadline is None or watched is not None:
                    deadline, watched, why = deadline or now + self.grace_s, None, "the stop signal"
            elif deadline is None and run is not None and run.progress.lost.is_set():
                deadline, watched, why = now + self.grace_s, run, "its lease was lost"
            if watched is not None and run is not watched:  # the job returned (LeaseLost at its next report)
                deadline = watched = None
            if deadline is not None and now >= deadline and not self._closed.is_set():
                self._end(run, why)
                return

    def _end(self, run: _Run | None, why: str) -> None:
        if run is None:
            ctrl_c = self._signal == signal.SIGINT
            status = 128 + signal.SIGINT if ctrl_c else 0
            by = {signal.SIGINT: "by Ctrl-C (SIGINT)", signal.SIGTERM: "by SIGTERM"}.get(self._signal, "")
            log.warning("worker %r was stopped%s while it held no job and has not ended %.0f s later (still starting "
                        "up, or waiting on the database); the process ends now with status %d, as a stopped idle "
                        "worker's", self.worker.worker_id, f" {by}" if by else "", self.grace_s, status)
        else:
            status = self.status
            if run.progress.lost.is_set():
                then = "its row is left as it is"
            else:
                then = self._hand_back(run)
            log.critical("worker %r: job %d (%s) has not returned %.0f s after %s (stuck in a call that does not "
                         "return); the process ends now with status %d and %s", self.worker.worker_id, run.job.id,
                         run.job.kind, self.grace_s, why, status, then)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(status)

    def _hand_back(self, run: _Run) -> str:
        """Queue the stopped job again without using an attempt (``yield_job`` under its claim: a twin's later claim
        is not touched), from a thread given HAND_BACK_S seconds; what became of the job, for the log sentence."""
        job, said = run.job, []
        run.heartbeat.stop(wait=False)  # it may be stuck too; a heartbeat after the hand-back is refused by the claim

        def write() -> None:
            try:
                with write_session(self.worker.factory) as s:
                    job_queue.yield_job(session=s, job_id=job.id, worker_id=self.worker.worker_id, claim=job.claim)
                said.append(f"it is queued again, attempt {job.attempts} of {job.max_attempts} not counted")
            except LeaseLost as exc:  # the worker's own hand-back came first, or the lease ran out meanwhile
                said.append(f"it was not handed back: {exc}")
            except Exception as exc:  # said in the one sentence: its type and first line
                first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                said.append(f"it could not be handed back ({type(exc).__name__}: {first[0][:200] if first else ''}); it "
                            "is taken again once its lease runs out, as a killed worker's (an attempt used)")

        writer = threading.Thread(target=write, name="stop-watchdog-hand-back", daemon=True)
        writer.start()
        writer.join(self.HAND_BACK_S)
        return said[0] if said else (f"its hand-back did not finish within {self.HAND_BACK_S:g} s; it is taken again "
                                     "once its lease runs out, as a killed worker's (an attempt used)")


# ---------------------------------------------------------------------------------------------
# the worker
# ---------------------------------------------------------------------------------------------


def _import_model_libraries() -> None:
    """Import what the first job would (seconds of work), so that job's time is the model's, not the imports'."""
    import accelerate  # noqa: F401  (seiko_core.finetune)
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401  (lazy in diffusers: the slow part)
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection  # noqa: F401


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    kind: str
    experiment_id: int | None
    round_id: int | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    claim: int  # the job's claim count this claim set (db.jobs): what the worker's writes to the job are checked by


@dataclass
class _Run:
    job: ClaimedJob
    progress: JobProgress
    heartbeat: Heartbeat


def _flag_stored_config(job, name: str, cfg) -> None:
    """Log, as a warning, that the job's experiment was stored with prompts creation now refuses
    (``services.stored_config_warning``); the job runs as before (sixth review)."""
    flagged = stored_config_warning(name, cfg)
    if flagged is not None:
        log.warning("job %d (%s): %s", job.id, job.kind, flagged)


def _training_digest(*tensors: torch.Tensor | None) -> str:
    """A sha256 over what a train job fits on (embeddings, scores, pairs: dtype, shape and bytes; None marked)."""
    h = hashlib.sha256()
    for t in tensors:
        if t is None:
            h.update(b"none;")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class _RoundInfo:
    id: int
    index: int
    status: str
    adapter_path: str | None
    manifest_sha256: str | None  # of the newest checkpoint recorded for the round


def _round_info(session, round_) -> _RoundInfo:
    checkpoints = repo.list_checkpoints(session=session, round_id=round_.id)
    return _RoundInfo(round_.id, round_.index, round_.status, round_.adapter_path,
                      checkpoints[-1].manifest_sha256 if checkpoints else None)


def _from_round(job: ClaimedJob, from_round: Any, round_index: int) -> int:
    """The round a rolled-back train job starts from (``payload["from_round"]``), checked: 0 to ``round_index``."""
    if isinstance(from_round, bool) or not isinstance(from_round, int) or not 0 <= from_round <= round_index:
        raise InvalidInput(f"job {job.id} asks to train from round {from_round!r}; it can start from round 0 to {round_index}")
    return from_round


def _eval_grid(cfg: SeikoConfig) -> list[tuple[str, int]]:
    """The fixed eval grid: every eval prompt with every eval seed (duplicates dropped), in that order."""
    return [(p, s) for p in dict.fromkeys(cfg.eval_prompts) for s in dict.fromkeys(cfg.eval_seeds)]


def _png_pixels(path: Path) -> np.ndarray:
    """A stored PNG as (H, W, 3) uint8: exactly the pixels ``storage.encode_png`` was given."""
    from PIL import Image as PILImage

    with PILImage.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _payload_round_index(job: ClaimedJob, round_index: int) -> int:
    k = job.payload.get("round_index")
    if k != round_index:
        raise InvalidInput(f"job {job.id} names round {k!r} in its payload but belongs to round {round_index}")
    return k


class Worker:
    """``Worker(settings, worker_id).run_forever()``; ``run_once()`` processes at most one job (tests, ``--once``)."""

    def __init__(self, settings: Settings, worker_id: str, lease_s: float = 60, poll_s: float = 1.0, *,
                 device: str | torch.device | None = None, eval_chunk: int = EVAL_CHUNK,
                 pixels_in_memory_max_bytes: int = PIXELS_IN_MEMORY_MAX_BYTES) -> None:
        if isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not math.isfinite(lease_s) or lease_s <= 0:
            raise ValueError(f"lease_s must be a positive number of seconds, got {lease_s!r}")
        if isinstance(poll_s, bool) or not isinstance(poll_s, int | float) or not math.isfinite(poll_s) or poll_s < 0:
            raise ValueError(f"poll_s must be a non-negative number of seconds, got {poll_s!r}")
        # what claim_job takes as a lease's owner: a name it refuses crashed the worker at every claim (found by review)
        check_name("worker_id", worker_id)
        if isinstance(eval_chunk, bool) or not isinstance(eval_chunk, int) or eval_chunk < 1:
            raise ValueError(f"eval_chunk must be a whole number of images from 1, got {eval_chunk!r}")
        check_max_bytes(pixels_in_memory_max_bytes)
        self.settings, self.worker_id = settings, worker_id
        # a generate job's candidate pixels above this size are kept in a scratch file of the data dir, not in memory
        self.pixels_in_memory_max_bytes = pixels_in_memory_max_bytes
        self.lease_s, self.poll_s, self.device = float(lease_s), float(poll_s), device
        self.engine = make_engine(settings.db_url)
        self.factory = session_factory(self.engine)
        self.handlers: dict[str, Callable[[_Run], dict[str, Any]]] = {"generate": self._generate, "train": self._train,
                                                                      "eval": self._eval}
        self.eval_chunk = eval_chunk  # eval grid cells per chunk: between chunks an eval job may give way
        self.last_error: str | None = None  # the error of the last job this worker ran, None if it succeeded
        self.current_job: int | None = None  # the id of the job being processed, None while idle
        self.current_run: _Run | None = None  # that job's run (its progress), for the Watchdog
        self._interrupted = False  # interrupt_for_signal raised for the current job: its hand-back is under way
        # run_once is claiming (from before the claim's transaction until current_job is set): a stop signal then is
        # held in _held_signal, not raised, and run_once acts on it once it knows whether it holds a job
        self._claiming = False
        self._held_signal: int | None = None
        self._model: ModelParts | None = None  # one loaded base model, for the spec of the last job
        self._adapters: dict[str, Path] = {}  # adapter name on the cached UNet -> the directory it was loaded from
        self._started = False
        self._presence: Presence | None = None  # this worker's row in live_processes, from start() to close()
        self._stopping = threading.Event()
        self._db_wait = 0.0  # run_once_outlasting_outages' current wait while the database cannot be reached
        # claims in a row the database cancelled (57014), and when the first of them ended (time.monotonic)
        self._claim_cancels, self._claim_cancels_since = 0, 0.0
        self.group = None  # app.train_dist.Group when this worker is rank 0 of `python -m app worker --processes N`

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Refuse a database that is not at the newest schema, and remove partial files left by killed writers."""
        if self._started:
            return
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world > 1 and self.group is None:
            raise WorkerRefused(
                f"the worker runs as one process per device, not under a {world}-process launcher; "
                "for data-parallel training start `python -m app worker --processes N` (see docs/worker.md)"
            )
        migrate.check_at_head(self.settings.db_url)
        # checked again at every claim (migrate.check_unchanged): this code's revisions, as they were at its start
        self._schema_head, self._schema_known = migrate.head_revision(), migrate.known_revisions()
        _import_model_libraries()
        # 0700 when new, wherever the database is; no access for others when it exists (found by review)
        if tightened := storage.make_data_dir(self.settings.data_dir):
            log.info("%s", tightened)
        # before any job is claimed and any model loaded: a data dir it cannot write failed only after a round was
        # generated, and each retry generated it again (sixth review)
        storage.check_writable(self.settings.data_dir)
        # A live worker's temporary entries are seconds old; anything untouched for a whole lease is from a dead one.
        removed = storage.clean_partials(self.settings.data_dir, min_age_s=self.lease_s)
        for path in removed:
            log.info("removed partial %s left by a killed writer", path)
        # a row in the database's live processes until close(), so that `db downgrade` refuses while this worker runs,
        # between jobs too: only a running job's lease showed one before (tenth review). Registered in a transaction
        # that checks the schema once more (SchemaOutOfDate: a downgrade ran since the check above)
        if self._presence is None:
            presence = Presence(self.factory, "worker", self._schema_head)
            presence.start()
            self._presence = presence
        self._started = True
        log.info("worker %r ready (database %s, data dir %s, lease %.1f s)", self.worker_id,
                 shown_url(self.engine.url), self.settings.data_dir, self.lease_s)

    def run_forever(self) -> None:
        """Process jobs until :meth:`stop` is called, sleeping ``poll_s`` when the queue is empty.

        A database that cannot be reached (a PostgreSQL restart or fail-over) is waited out, each failure logged,
        trying again after 1, 2, 4 ... up to DB_RETRY_MAX_S seconds: it used to end the worker (found by review). A
        job held meanwhile is taken again by a worker once its lease runs out."""
        self.start()
        while not self._stopping.is_set():
            if self.run_once_outlasting_outages() is False:
                self._stopping.wait(self.poll_s)

    def run_once_outlasting_outages(self) -> bool | None:
        """:meth:`run_once`; or, when the database cannot be reached, log it, wait (1, 2, 4 ... DB_RETRY_MAX_S seconds
        as the outage goes on) and return None. An OperationalError that is not an outage (``db.engine.is_outage``:
        a missing table, a wrong password) is raised. A claim the database cancelled (57014: the operator's
        statement_timeout, or an operator's cancel) is waited out as well, but the CLAIM_CANCELS_MAX-th in a row
        raises ClaimsCancelled (one sentence naming the bound and the setting to change) instead."""
        try:
            had_job = self.run_once()
        except OperationalError as exc:
            if not is_outage(exc):  # a missing table, a wrong password: waiting never mends those
                log.error("worker %r: the database refused the worker for good (%s)", self.worker_id, exc.orig or exc)
                raise
            self._db_wait = min(DB_RETRY_MAX_S, max(1.0, 2 * self._db_wait))
            cancelled = statement_cancelled(exc)
            self._claim_cancels = self._claim_cancels + 1 if cancelled else 0  # only those in a row count
            if self._claim_cancels == 1:
                self._claim_cancels_since = time.monotonic()
            if cancelled and self._claim_cancels >= CLAIM_CANCELS_MAX:
                raise ClaimsCancelled(self._claims_cancelled(exc)) from exc
            if lock_not_granted(exc):  # the database answered: a lock held past the bound (a migration, an admin's
                # transaction), not an outage; said as such, without a traceback (it read "could not be reached")
                # the bound it waited, the operator's own lock_timeout where they set one (twelfth review)
                waited = lock_waited_s(exc)
                log.warning("worker %r: a database lock was not granted %s (another transaction holds it); trying again "
                            "in %.0f s", self.worker_id, "at once (not waited for)" if waited is None
                            else f"within {waited:g} s", self._db_wait)
            elif statement_cancelled(exc):
                # the operator's statement_timeout (the worker's engine sets none) or an operator's cancel ended the
                # claim: the database answered, as for a lock held past its bound. It was said as "could not be
                # reached" with a traceback (thirteenth review). No job is held (the claim was rolled back), so no
                # attempt is spent: it is tried again, as a claim behind a lock is, up to CLAIM_CANCELS_MAX in a row
                log.warning("worker %r: the database cancelled its claim of a job (%s); nothing was claimed; trying "
                            "again in %.0f s (%d of %d such claims in a row before the worker stops)", self.worker_id,
                            _cancel_reason(exc), self._db_wait, self._claim_cancels, CLAIM_CANCELS_MAX)
            else:
                log.exception("worker %r: the database could not be reached; trying again in %.0f s", self.worker_id,
                              self._db_wait)
            self._stopping.wait(self._db_wait)
            return None
        self._db_wait, self._claim_cancels = 0.0, 0
        return had_job

    def _claims_cancelled(self, exc: BaseException) -> str:
        """The sentence of ``ClaimsCancelled`` for the last cancelled claim ``exc``: how many in a row, over how long,
        the bound that ran out, and the setting to change."""
        stopped = (f"worker {self.worker_id!r} stopped: the database cancelled its claim of a job {self._claim_cancels} "
                   f"times in a row over {time.monotonic() - self._claim_cancels_since:.0f} s ({_cancel_reason(exc)})")
        if statement_timeout_ran_out_s(exc) is None:
            # no bound known (an operator's pg_cancel_backend, or a server that words it in another language): it
            # advised a longer statement_timeout and said "it would never take a job" there too (fourteenth review)
            return f"{stopped}; nothing was claimed; find what cancels its claims, then start it again"
        lock = (", or a lock_timeout below it, so that a wait for a lock ends as a lock not granted, which the worker "
                "waits out") if lock_outlasts_statement(exc) else ""
        # the URL is SEIKO_DB_URL's or --db-url's, and may have a query already: it said "its SEIKO_DB_URL's
        # ?options=..." (fourteenth review)
        return (f"{stopped}, so it would never take a job; nothing was claimed; give the worker a longer "
                f"statement_timeout{lock}, then start it again: in the worker's database URL (SEIKO_DB_URL or "
                "--db-url), add `-c statement_timeout=0` to its options (or raise the role's, database's or server's "
                "setting)")

    def stop(self) -> None:
        """Ask :meth:`run_forever` to return after the current job."""
        self._stopping.set()

    def interrupt_for_signal(self, signum: int, frame: Any = None) -> None:
        """The SIGTERM and SIGINT handler of ``python -m app worker`` (one process, or rank 0 of ``--processes N``).

        It asks :meth:`stop`. While a job is held, the first signal raises (SystemExit(128 + signum) for SIGTERM,
        KeyboardInterrupt for SIGINT), so that :meth:`run_once` hands the job back without using an attempt and the
        worker ends. Any later signal during that job only logs that the stop is under way: a second one (Ctrl-C and
        the supervisor's forwarded SIGTERM, or two SIGTERMs) raised again inside the hand-back, which left the job
        running under a dead lease, to cost an attempt later (found by review). Idle, SIGINT raises KeyboardInterrupt
        as Python's own handler does, and SIGTERM only stops.

        While :meth:`run_once` claims a job (``_claiming``: from before the claim's transaction until ``current_job``
        is set) nothing is raised: the signal is held, and run_once hands a claimed job back at once, then raises
        KeyboardInterrupt for a held SIGINT (a claim that took nothing raises it as an idle worker would). A
        KeyboardInterrupt raised there, after the claim's commit, left the job 'running' under this worker's lease
        until it ran out, and the next claim cost it an attempt (found by the second review).

        Idle and stopping already (an earlier signal, or the job's hand-back done), a signal only logs: the second of
        Ctrl-C and the forwarded SIGTERM raised in rank 0 of ``--processes N`` after its job was handed back, as it
        told its followers to stop (found by the second review)."""
        stopping = self._stopping.is_set()
        self.stop()
        if self.current_job is None:
            if self._claiming:
                if self._held_signal is None:
                    self._held_signal = signum
                    self._interrupted = True  # a later signal only logs: it must not interrupt the hand-back either
                else:
                    log.warning("worker %r: signal %d while it claims a job; the stop is under way", self.worker_id,
                                signum)
                return
            if stopping:
                log.warning("worker %r: signal %d while it stops; the stop is under way", self.worker_id, signum)
                return
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        if self._interrupted:
            log.warning("worker %r: signal %d while job %d is being handed back; the stop is under way", self.worker_id,
                        signum, self.current_job)
            return
        self._interrupted = True  # before raising: a pending second signal runs its handler inside the hand-back
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    def close(self) -> None:
        if self._presence is not None:
            self._presence.close()  # its row removed: a clean exit
            self._presence = None
        self.engine.dispose()

    # -- one job ------------------------------------------------------------------------------

    def run_once(self) -> bool:
        """Claim and process one job; False when there was none. A failed job is recorded on its row (and retried)."""
        self.start()
        # from here until current_job is set below, a stop signal is held (interrupt_for_signal), not raised: raised
        # after the claim's commit it would leave the claimed job running under this worker's lease
        self._claiming, self._held_signal, job = True, None, None
        try:
            with write_session(self.factory) as s:
                row = job_queue.claim_job(session=s, worker_id=self.worker_id, lease_s=self.lease_s,
                                          kinds=sorted(self.handlers))
                if row is not None:  # a claim (none: nothing to take, no query added to an idle poll) is rolled back
                    migrate.check_unchanged(s, self._schema_head, self._schema_known)
                job = None if row is None else ClaimedJob(row.id, row.kind, row.experiment_id, row.round_id,
                                                          dict(row.payload or {}), row.attempts, row.max_attempts,
                                                          row.claims)
        except Exception as exc:
            if self._held_signal == signal.SIGINT:
                # Ctrl-C as the claim failed (a database outage): run_forever waited the outage out, found the worker
                # stopping and returned, so Ctrl-C ended it with status 0 (found by the third review). Ctrl-C wins;
                # the claim's error is said in the same sentence, and it stays the KeyboardInterrupt's cause
                self._held_signal = None
                cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                log.warning("worker %r: stopped by Ctrl-C (SIGINT) while its claim failed (%s: %s); nothing was claimed",
                            self.worker_id, type(exc).__name__, cause[0][:200] if cause else "no message")
                raise KeyboardInterrupt from exc
            raise
        finally:
            if job is None:  # nothing claimed, or the claim failed and was rolled back: idle again
                self._claiming = self._interrupted = False
        if job is None:
            held, self._held_signal = self._held_signal, None
            if held == signal.SIGINT:  # Ctrl-C while it claimed nothing: as an idle worker's
                raise KeyboardInterrupt
            return False
        log.info("job %d (%s, attempt %d of %d) claimed by %r", job.id, job.kind, job.attempts, job.max_attempts, self.worker_id)
        fault_point("claim", job.attempts)
        progress = JobProgress(job.id, self.worker_id, job.attempts)
        heartbeat = Heartbeat(self.factory, job.id, self.worker_id, self.lease_s, progress, job.claim)
        run = _Run(job, progress, heartbeat)
        start = time.monotonic()
        try:
            # from here a SIGTERM or SIGINT raises (interrupt_for_signal: a job is held), handed back below; one that
            # came while it claimed was held, and set _stopping
            self.current_job, self.current_run = job.id, run
            self._claiming = False
            if self._stopping.is_set():
                self._interrupted = True  # a signal during the hand-back below only logs
                raise _StoppedAsItClaimed
            heartbeat.start()
            result = self.handlers[job.kind](run)
        except _StoppedAsItClaimed:
            # stopped (SIGTERM) while it claimed, when app.cli_worker saw no job to hand back: handed back at once, no
            # attempt used; it ran the whole job before, so a service manager's stop ended in SIGKILL (found by review)
            self.last_error = None
            if self._release(job, "handed back", lambda s: job_queue.yield_job(
                    session=s, job_id=job.id, worker_id=self.worker_id, claim=job.claim)):
                log.info("job %d (%s) handed back: worker %r was stopped as it claimed it", job.id, job.kind,
                         self.worker_id)
            if self._held_signal == signal.SIGINT:  # Ctrl-C as it claimed: it ends as a Ctrl-C during the job does
                raise KeyboardInterrupt from None
        except JobYield as gave_way:
            heartbeat.stop()  # no heartbeat may extend the lease once it is handed back
            self.last_error = None
            self._hand_back(job, gave_way, time.monotonic() - start)
        except JobCancelled as cancelled:
            heartbeat.stop()  # as for a yield: the lease is released in _cancel's transaction
            self.last_error = None
            self._cancel(job, cancelled)
        except LeaseLost as exc:
            self.last_error = str(exc)
            log.warning("job %d: %s; this worker's result is discarded", job.id, exc)
        except Exception as exc:
            heartbeat.stop()
            if isinstance(exc, ModelLoadError | CheckpointError) and not _transient(exc):
                # the job's input is at fault (a model directory removed or damaged, an adapter that does not verify):
                # another attempt meets the same, so the job fails now, with the sentence and no traceback (it logged
                # 15 lines and was queued twice more; sixth review)
                self.last_error = str(exc)[:ERROR_MAX_CHARS]
                log.error("job %d (%s) failed after %.1f s: %s", job.id, job.kind, time.monotonic() - start,
                          self.last_error)
                self._fail(job, self.last_error, retry=False)
            elif (bound := _bound_error(exc)) is not None:
                # a statement of the job the database ended at one of its bounds (a lock not granted in time, the
                # operator's statement_timeout) or an operator's cancel: one attempt of the job, as any failure, said in
                # one sentence. It was the driver's words and a traceback (thirteenth review)
                self.last_error = bound[:ERROR_MAX_CHARS]
                log.warning("job %d (%s) failed after %.1f s: %s", job.id, job.kind, time.monotonic() - start,
                            self.last_error)
                self._fail(job, self.last_error)
            else:
                self.last_error = f"{type(exc).__name__}: {exc}"[:ERROR_MAX_CHARS]
                log.exception("job %d (%s) failed after %.1f s", job.id, job.kind, time.monotonic() - start)
                self._fail(job, self.last_error)
        except BaseException as exc:  # KeyboardInterrupt, SystemExit: hand the job back before stopping
            heartbeat.stop()
            if isinstance(exc, KeyboardInterrupt) or self._stopping.is_set():
                # Ctrl-C, or SIGTERM (app.cli_worker asks stop() first): the job did nothing wrong, so it is queued
                # again without using up an attempt; three restarts during a training no longer fail it for good
                if self._release(job, "handed back", lambda s: job_queue.yield_job(
                        session=s, job_id=job.id, worker_id=self.worker_id, claim=job.claim)):
                    log.info("job %d (%s) handed back: worker %r was stopped (%s); attempt %d of %d not counted",
                             job.id, job.kind, self.worker_id, type(exc).__name__, job.attempts, job.max_attempts)
            else:  # a SystemExit from inside the job's own code: an attempt, as any failure
                self._fail(job, f"worker {self.worker_id!r} was stopped ({type(exc).__name__}) during the job")
            raise
        else:
            self.last_error = None
            log.info("job %d (%s) done in %.1f s: %s", job.id, job.kind, time.monotonic() - start, result)
        finally:
            heartbeat.stop()
            self.current_job = self.current_run = None
            self._claiming = self._interrupted = False
            self._held_signal = None
        return True

    def _fail(self, job: ClaimedJob, error: str, *, retry: bool = True) -> None:
        status = []
        if self._release(job, "recorded as failed", lambda s: status.append(job_queue.fail_job(
                session=s, job_id=job.id, worker_id=self.worker_id, error=error, retry=retry, claim=job.claim).status)):
            log.info("job %d is now %s (attempt %d of %d)", job.id, status[0], job.attempts, job.max_attempts)

    def _release(self, job: ClaimedJob, doing: str, write: Callable[[Any], Any]) -> bool:
        """``write(session)`` in one transaction that releases the job's lease, only if this worker still holds it.
        False when it was not recorded (the lease was lost, or the database refused: the worker carries on and the
        job's lease runs out)."""
        try:
            with write_session(self.factory) as s:
                write(s)
        except LeaseLost as exc:
            log.warning("job %d: it was not %s: %s", job.id, doing, exc)
            return False
        except Exception:  # e.g. the database is unreachable
            log.exception("job %d could not be %s; it stays claimed until its lease expires (within %.0f s), then a "
                          "worker takes it again", job.id, doing, self.lease_s)
            return False
        return True

    def _hand_back(self, job: ClaimedJob, gave_way: JobYield, seconds: float) -> None:
        """Queue the job again as it was before this claim (no attempt used, no error)."""
        if not self._release(job, "handed back", lambda s: job_queue.yield_job(
                session=s, job_id=job.id, worker_id=self.worker_id, payload=gave_way.payload, claim=job.claim)):
            return
        w = gave_way.waiting
        log.info("job %d (%s, round %d) YIELDS to job %d (%s, experiment %s), which a person waits for, after %.1f s: "
                 "%d of %d eval images stored; queued again, attempt %d of %d not counted", job.id, job.kind,
                 gave_way.round_index, w["id"], w["kind"], w["experiment_id"], seconds, gave_way.images, gave_way.grid,
                 job.attempts, job.max_attempts)

    def _cancel(self, job: ClaimedJob, cancelled: JobCancelled) -> None:
        """Fail the job for good with the reason its experiment's other jobs were cancelled with."""
        if not self._release(job, "cancelled", lambda s: job_queue.fail_job(
                session=s, job_id=job.id, worker_id=self.worker_id, error=cancelled.reason, claim=job.claim)):
            return
        log.info("job %d (%s, round %d) stopped: %s; %d of %d eval images stored stay", job.id, job.kind,
                 cancelled.round_index, cancelled.reason, cancelled.images, cancelled.grid)

    def _publish(self, run: _Run, write: Callable[[Any], dict[str, Any] | None], result: dict[str, Any]) -> None:
        """Stop heartbeats, then in ONE transaction: write the final progress, complete the job and ``write(session)``
        (a dict it returns is added to the job's result).

        ``complete_job`` raises LeaseLost when another worker has taken the job over; nothing is written then.

        A database out of reach for a moment (``db.engine.is_outage``: a restart, a lock held too long) is tried again
        after 0.5, 1, 2 ... seconds for half a lease from the first try (``_through_outages``): it used to fail the job,
        an attempt used up for nothing, and for good on its last attempt (found by review). The transaction rolled
        back, so ``write`` runs again from the start. A statement cancelled (57014) and a session ended for a
        transaction left idle (25P03) are not tried again, nor read back as below (``_waited_out``): the attempt fails
        at once in the bound's sentence, as the eval chunk's store does (they were waited out as outages for half a
        lease; sixteenth review). A lock wait cut at the statement bound (57014 where the operator's lock bound is none
        or not below it) is tried again, as a lock not granted is.

        A try whose commit reached the database but whose answer was lost (a dropped connection) leaves the job done
        under this worker's lease: a try after it finds that (LeaseLost), and when it was the last try, the job is read
        back on a fresh connection. Either way it is published, not failed: the last try's was logged as the job's
        failure and recorded as none (fifteenth review)."""
        run.heartbeat.stop()
        run.progress.set("done", 1, 1)
        tries = 0

        def publish() -> None:
            nonlocal tries
            tries += 1
            try:
                with write_session(self.factory) as s:
                    job_queue.heartbeat(session=s, job_id=run.job.id, worker_id=self.worker_id, lease_s=self.lease_s,
                                        progress=run.progress.latest(), claim=run.job.claim)
                    done = job_queue.complete_job(session=s, job_id=run.job.id, worker_id=self.worker_id,
                                                  result=finite_json(result), claim=run.job.claim)
                    more = write(s)
                    if more:
                        done.result = finite_json({**result, **more})
                    s.flush()
                    fault_point("publish", run.job.attempts)
            except LeaseLost:
                # a try whose commit reached the database but whose answer did not (a dropped connection) left the job
                # done under this worker's lease: the result is this worker's, not "discarded" (found by review)
                if tries > 1 and self._done_by_me(run.job):
                    log.info("job %d: its result was stored by the try whose answer was lost", run.job.id)
                    return
                raise

        try:
            self._through_outages(run.job, "its result", publish)
        except OperationalError as exc:
            if _waited_out(exc) and self._stored_all_the_same(run.job, exc):  # the last try's answer was lost
                return
            raise

    def _through_outages(self, claimed: ClaimedJob, what: str, attempt: Callable[[], _T]) -> _T:
        """``attempt()`` (one transaction), tried again after 0.5, 1, 2 ... seconds, for half the lease from the first
        try, while it fails on the database being out of reach for a moment (``db.engine.is_outage``: a dropped
        connection, a restart, a lock not granted: ``_waited_out``); the last try's error, or any other, is raised,
        the attempt's failure in its bound's sentence. ``what`` is what the database could not take, for the log.
        ``_publish`` and ``_save_eval_chunk`` both try this way: each had its own copy of the loop (a read-only review
        of the fifteenth review's fixes), and only the chunk's refused a statement cancelled and a session ended for
        idling (sixteenth review)."""
        give_up_at, wait = time.monotonic() + self.lease_s / 2, 0.5
        while True:
            try:
                return attempt()
            except OperationalError as exc:
                if not _waited_out(exc) or time.monotonic() + wait > give_up_at:
                    raise
                log.warning("job %d: the database could not take %s (%s); trying again in %.1f s", claimed.id, what,
                            exc.orig or exc, wait)
                time.sleep(wait)
                wait *= 2

    def _stored_all_the_same(self, claimed: ClaimedJob, exc: OperationalError) -> bool:
        """Whether the publish whose last try failed with the outage ``exc`` was stored all the same (its commit landed,
        its answer lost): read back on a fresh connection (``_done_by_me``). A read that fails too is logged, and the
        job's failure is ``exc``, as before."""
        try:
            stored = self._done_by_me(claimed)
        except Exception:
            log.exception("job %d: whether its result was stored by the last try (%s) could not be read back",
                          claimed.id, exc.orig or exc)
            return False
        if stored:
            log.info("job %d: its result was stored by the last try, whose answer was lost (%s)", claimed.id,
                     exc.orig or exc)
        return stored

    def _done_by_me(self, claimed: ClaimedJob) -> bool:
        """Whether the job is done under this worker's lease of this claim (complete_job keeps the lease's owner
        and the claim count)."""
        with read_session(self.factory) as s:
            job = job_queue.get_job(session=s, job_id=claimed.id)
            return job.status == "done" and job.lease_owner == self.worker_id and job.claims == claimed.claim

    # -- models -------------------------------------------------------------------------------

    def _parts(self, spec: str) -> ModelParts:
        """The base model ``spec``, loaded once and kept while jobs use the same spec."""
        if self._model is None or self._model.spec != spec:
            self._model = None
            self._adapters.clear()
            log.info("loading model %s", spec)
            self._model = load_model(spec, device=self.device)
        return self._model

    def _use_adapter(self, parts: ModelParts, round_: _RoundInfo) -> str | None:
        """Load round ``round_``'s adapter onto the cached UNet (once) and return its name; None for round 0 (the base)."""
        if round_.index == 0:
            return None
        if round_.adapter_path is None:
            raise CheckpointError(f"round {round_.index} has no adapter_path; it was not published by a train job")
        name = lora.round_adapter_name(round_.index)
        path = storage.resolve(self.settings.data_dir, round_.adapter_path)
        if self._adapters.get(name) != path:
            self._adapters.pop(name, None)
            if round_.manifest_sha256 is not None and sha256_file(path / MANIFEST) != round_.manifest_sha256:
                raise CheckpointError(f"the adapter manifest in {str(path)!r} does not match the checkpoint recorded for round {round_.index}")
            lora.load_adapter(parts, path, name)  # verifies every file against the manifest
            self._adapters[name] = path
        return name

    # -- generate -----------------------------------------------------------------------------

    def _generate(self, run: _Run) -> dict[str, Any]:
        """Round k's query images, published in ONE transaction with round k 'labeling', the job done and round k's
        eval job queued (once: a re-run finds it). The eval grid is that job's work, so it never delays training."""
        job, progress = run.job, run.progress
        with read_session(self.factory) as s:
            round_row = repo.get_round(session=s, round_id=job.round_id)
            experiment = repo.get_experiment(session=s, experiment_id=round_row.experiment_id)
            k = _payload_round_index(job, round_row.index)
            this = _round_info(s, round_row)
            existing = {(im.kind, im.prompt, im.seed) for im in repo.list_images(session=s, round_id=this.id)}
            experiment_id, model_spec, cfg = experiment.id, experiment.model_spec, experiment_config(experiment)
            _flag_stored_config(job, experiment.name, cfg)
            options = experiment_options.of(experiment)
        query_done = any(kind == "query" for kind, _, _ in existing)
        # a re-run after the query images were published may find the round closed already: it only makes sure that
        # the round's eval job exists
        if this.status not in ("generating", "labeling") and not query_done:
            raise Conflict(f"round {k} is {this.status!r}; only a 'generating' round gets images")

        n = round_budget(cfg, k)
        # issue 12 item 3: candidate_factor x n candidates, of which n are shown (app.selection); none when some exist
        mode, n_candidates = experiment_options.candidate_plan(options, k, n)
        query = list(zip(round_prompts(cfg, n_candidates, derive_seed(experiment_id, k, "prompts")),
                         query_seeds(experiment_id, k, n_candidates)))
        if query_done:  # published in one transaction (below): all of the round's shown images exist, and the
            query = []  # shown ones need not be the first n candidates (app.selection), so none is generated again
        n_grid = len(_eval_grid(cfg))
        started = time.monotonic()

        rows: list[dict[str, Any]] = []
        selection_record: dict[str, Any] | None = None
        query_wall_s = sample_wall_s = 0.0
        if query:
            progress.set("load_model")
            parts = self._parts(model_spec)
            adapter = self._use_adapter(parts, this)
            images = None
            try:
                sample_started = time.monotonic()
                # uint8 (what the PNGs store): a quarter of float32's host memory for sd15's thousands of
                # candidates; beyond pixels_in_memory_max_bytes in a scratch file, not in memory (fifth review)
                images, emb = generate_batch(parts, adapter, [p for p, _ in query], [s for _, s in query], cfg,
                                             on_progress=progress.callback("sample_query"), as_uint8=True,
                                             pixels_out=self._candidate_pixels(job.id, k))
                sample_wall_s = round(time.monotonic() - sample_started, 3)
                keep = None
                if not query_done:
                    reward_dir = storage.resolve(self.settings.data_dir, storage.reward_path(experiment_id, k)) if k else None
                    if reward_dir is not None and mode != "random":
                        verify(reward_dir)  # its files as the train job wrote them: a flipped bit would choose what people see
                    keep, query, chosen = selection.select_query(
                        emb, query, options=options, mode=mode, n_show=n, seed=derive_seed(experiment_id, k, "select"),
                        reward_dir=reward_dir, device=parts.device)
                    selection_record = chosen
                query_wall_s = round(time.monotonic() - started, 3)
                rows = self._store_images(images, emb, query, "query", keep)
            finally:
                # the scratch file's memory map (its disk space) ends with the last reference to the pixels, and a
                # traceback keeps this frame: none is left here, also on error
                images = None
        # the job's own time: the query part only (the eval grid is the eval job's, with its own wall_s)
        generate_metrics = {"query_images": n, "eval_images": n_grid, "query_wall_s": query_wall_s,
                            "sample_wall_s": sample_wall_s,  # generating the candidates alone (the UI's wait estimate)
                            "wall_s": round(time.monotonic() - started, 3)}
        outcome: dict[str, Any] = {}

        def write(s) -> dict[str, Any]:
            # the experiment's row locked before its feedback is read (after the job's, before the round's: the lock
            # order in repo.lock_experiment). pairwise.set_feedback locks it too and then makes the open round's
            # pairs, and cannot see this round open before this commits; read without the lock, a change to "pairs"
            # committed in between left a pairs-only round with no pairs on PostgreSQL (found by review). Now the
            # change either commits first and is read here, or waits and then finds this round open
            experiment_row = repo.lock_experiment(session=s, experiment_id=experiment_id)
            outcome["added"] = self._add_missing_images(s, this.id, rows)
            round_ = repo.get_round(session=s, round_id=this.id)
            if round_.status == "generating":  # also when no query images were due: the round opens all the same
                repo.set_round_status(session=s, round_id=this.id, status="labeling")
            if query or "generate" not in (round_.metrics or {}):  # a re-run with nothing left keeps the first figures
                published = {"generate": generate_metrics,
                             **({} if selection_record is None else {"selection": selection_record})}
                repo.update_round_metrics(session=s, round_id=this.id, metrics=finite_json(published))
            # issue 14 item 1: pairs of query images of one prompt, when the experiment asks for comparisons
            if rows and pairwise.wants_pairs(pairwise.feedback_of(experiment_row)):
                pairwise.create_round_pairs(session=s, experiment_id=experiment_id, round_id=this.id)
            # the dashboard's eval grid: its own job, queued in this transaction (a crash cannot lose it) and only once
            eval_job, created = job_queue.ensure_job(session=s, kind="eval", experiment_id=experiment_id, round_id=this.id,
                                                     payload={"round_index": k})
            outcome["eval_job"] = eval_job.id
            if not created:
                log.info("job %d: round %d's eval job %d exists already (%s); none queued", run.job.id, k, eval_job.id,
                         eval_job.status)
            s.flush()
            fault_point("publish_query", run.job.attempts)
            return {"new_images": outcome["added"], "eval_job": eval_job.id}

        self._publish(run, write, {"round_index": k, "query_images": n})
        log.info("job %d: round %d open for labeling with %d new query images in %.1f s; eval grid: job %s",
                 job.id, k, outcome.get("added", 0), generate_metrics["wall_s"], outcome.get("eval_job"))
        return {"round_index": k, "new_images": outcome.get("added", 0), "eval_job": outcome.get("eval_job")}

    @staticmethod
    def _add_missing_images(s, round_id: int, rows: list[dict[str, Any]]) -> int:
        present = {(im.kind, im.prompt, im.seed) for im in repo.list_images(session=s, round_id=round_id)}
        missing = [r for r in rows if (r["kind"], r["prompt"], r["seed"]) not in present]
        for r in missing:
            repo.add_image(session=s, round_id=round_id, **r)
        return len(missing)

    def _candidate_pixels(self, job_id: int, round_index: int):
        """generate_batch's ``pixels_out``: None (in memory) up to ``pixels_in_memory_max_bytes``, else the memory
        map of a scratch file of the data dir (``seiko_core.scratch.scratch_array``: its disk space is freed when the
        map ends; a data dir on a tmpfs is named once in the log, since the file saves no memory there)."""
        spill = PixelSpill(Path(self.settings.data_dir), self.pixels_in_memory_max_bytes)
        return spill.pixels_out(f"job{job_id}-candidates",
                                lambda shape: f"round {round_index}'s {shape[0]} candidate images", np.uint8)

    def _store_images(self, images: torch.Tensor, emb: torch.Tensor, pairs: list[tuple[str, int]], kind: str,
                      keep: list[int] | None = None) -> list[dict[str, Any]]:
        """Image rows of ``pairs`` (PNG files written), the i-th being ``images[keep[i]]`` (``images[i]`` without
        ``keep``). One image's pixels at a time: ``images`` may be a scratch file's memory map (fifth review)."""
        index = range(len(pairs)) if keep is None else keep
        if len(index) != len(pairs):
            raise ValueError(f"{len(index)} image indices for {len(pairs)} (prompt, seed) pairs")
        emb = emb.detach().to("cpu", torch.float32).numpy().astype("<f4")
        rows = []
        try:
            for j, (prompt, seed) in zip(index, pairs):
                pixels = to_uint8(images[j:j + 1])[0].copy()  # one image's, apart from the map (PIL copies it anyway)
                stored = storage.write_image(self.settings.data_dir, storage.encode_png(pixels))
                rows.append({"prompt": prompt, "seed": int(seed), "file_path": stored.path, "sha256": stored.sha256,
                             "embedding": emb[j].tobytes(), "embedding_dim": int(emb.shape[1]), "kind": kind})
        finally:
            images = None  # a traceback keeps this frame: not the pixels (a scratch file's memory map, see _generate)
        return rows

    # -- eval ---------------------------------------------------------------------------------

    def _eval(self, run: _Run) -> dict[str, Any]:
        """Round k's eval grid (``eval_prompts x eval_seeds`` with adapter k) and its metrics, in chunks of
        ``eval_chunk`` grid cells.

        Each chunk's images (and, from round 1 on, its trajectory KL to the previous round) are stored in one short
        transaction while the job holds its lease; the KL values go to the job's payload (``partial``), so a re-run
        renders only what is missing. After a chunk, if a job a person waits for is claimable (a generate or train job
        of any experiment), the job gives way (JobYield): the worker hands it back to the queue without using up an
        attempt and claims that job; the eval job carries on from its stored chunks once nothing else is waiting.
        Every claim finishes at least one chunk, so it cannot go round in circles. If the experiment has been
        finished meanwhile, the job stops after storing the chunk (JobCancelled: failed, like the experiment's queued
        jobs). The metrics are computed at the end from the stored grid (PNG pixels and embeddings) and published in
        one transaction with the job done."""
        job, progress = run.job, run.progress
        started = time.monotonic()
        with read_session(self.factory) as s:
            round_row = repo.get_round(session=s, round_id=job.round_id)
            experiment = repo.get_experiment(session=s, experiment_id=round_row.experiment_id)
            k = _payload_round_index(job, round_row.index)
            this = _round_info(s, round_row)
            parent = comparisons.parent_of(session=s, round_id=this.id)  # index k - 1, or the round rolled back to
            prev = None if parent is None else _round_info(s, parent)
            stored = {(im.prompt, int(im.seed)) for im in repo.list_images(session=s, round_id=this.id, kind="eval")}
            experiment_id, model_spec, cfg = experiment.id, experiment.model_spec, experiment_config(experiment)
            _flag_stored_config(job, experiment.name, cfg)
        if this.status in ("generating", "failed"):
            raise Conflict(f"round {k} is {this.status!r}; its eval grid is rendered once its query images are published")
        grid = _eval_grid(cfg)
        partial = dict(job.payload.get("partial") or {})
        # a KL that was not finite (a diverged adapter) is stored as null in the payload (strict JSON) and read as nan
        kl_done: dict[tuple[str, int], float] = {(str(p), int(sd)): math.nan if v is None else float(v)
                                                 for p, sd, v in partial.get("kl") or []}
        want_kl = k > 0 and prev is not None and cfg.sampling.eta > 0
        to_render = {c for c in grid if c not in stored}
        to_kl = {c for c in grid if want_kl and c not in kl_done}
        todo = [c for c in grid if c in to_render or c in to_kl]
        before_s = float(partial.get("wall_s") or 0.0)  # the earlier claims' time on this job (it may have given way)

        def state() -> dict[str, Any]:
            return {**partial, "kl": [[p, sd, finite_json(v)] for (p, sd), v in kl_done.items()],
                    "wall_s": round(before_s + time.monotonic() - started, 3)}

        if todo:
            progress.set("load_model")
            parts = self._parts(model_spec)
            adapter = self._use_adapter(parts, this)
            reference = self._use_adapter(parts, prev) if to_kl and prev is not None else None
            steps, chunk = cfg.sampling.steps, self.eval_chunk
            # the images first (the dashboard shows them as they come), then the KL; chunks of at most `chunk` cells
            render, measure = [c for c in grid if c in to_render], [c for c in grid if c in to_kl]
            work = ([("render", render[i:i + chunk]) for i in range(0, len(render), chunk)]
                    + [("kl", measure[i:i + chunk]) for i in range(0, len(measure), chunk)])
            report = progress.callback("sample_eval")
            rendered = measured = 0
            for i, (what, cells) in enumerate(work):
                rows: list[dict[str, Any]] = []
                if what == "render":
                    def on_progress(step: int, total: int, metrics: dict, offset: int = rendered * steps) -> None:
                        report(offset + step, len(render) * steps, metrics)  # this claim's whole rendering

                    images, emb = generate_batch(parts, adapter, [p for p, _ in cells], [sd for _, sd in cells], cfg,
                                                 on_progress=on_progress, as_uint8=True)
                    rows = self._store_images(images, emb, cells, "eval")
                    rendered += len(cells)
                else:
                    progress.set("eval_kl", measured, len(measure))
                    kl = trajectory_kl(parts, [p for p, _ in cells], [sd for _, sd in cells], adapter=adapter,
                                       reference=reference, steps=steps, eta=cfg.sampling.eta,
                                       guidance=cfg.sampling.guidance, batch_size=cfg.sampling.batch_size)
                    kl_done.update(zip(cells, (float(v) for v in kl)))
                    measured += len(cells)
                    progress.set("eval_kl", measured, len(measure))
                last = i == len(work) - 1
                waiting, finished = self._save_eval_chunk(run, this.id, rows, state(), look=not last)
                if finished is not None:
                    raise JobCancelled(finished, round_index=k, images=len(grid) - len(to_render) + rendered,
                                       grid=len(grid))
                if waiting is not None:
                    gave_way = {**state(), "yields": int(partial.get("yields") or 0) + 1}
                    raise JobYield(waiting, round_index=k, images=len(grid) - len(to_render) + rendered, grid=len(grid),
                                   payload={**job.payload, "partial": gave_way})

        eval_metrics = self._eval_metrics(cfg, experiment_id, k, this.id, prev, grid, kl_done if want_kl else None,
                                          progress)
        eval_metrics["wall_s"] = state()["wall_s"]  # the eval job's own time, over all its claims
        eval_metrics["yields"] = int(partial.get("yields") or 0)  # how often it gave way to work a person waited for

        def write(s) -> None:
            repo.update_round_metrics(session=s, round_id=this.id, metrics={"eval": finite_json(eval_metrics)})
            # issue 14 item 3: the eval grid just stored is the blind A/B material (app.ab); no extra rendering
            ab_pairs = ab.create_round_pairs(session=s, round_id=this.id)  # sides from the round's secret seed
            if ab_pairs:
                repo.update_round_metrics(session=s, round_id=this.id, metrics={"ab": ab_pairs})
            # eval jobs finish out of order (two workers; one that gave way; a failed one retried later): the rounds
            # paired with this grid that published first get the pairs they lacked (rounds locked in index order)
            completed = ab.add_dependent_pairs(session=s, round_id=this.id)
            if completed:
                log.info("job %d: round %d's grid completed the A/B pairs of round(s) %s", run.job.id, k,
                         ", ".join(map(str, sorted(completed))))

        self._publish(run, write, {"round_index": k, "eval_images": len(grid), "rendered": len(to_render)})
        return {"round_index": k, "eval_images": len(grid), "rendered": len(to_render), "yields": eval_metrics["yields"]}

    def _save_eval_chunk(self, run: _Run, round_id: int, rows: list[dict[str, Any]], partial: dict[str, Any], *,
                         look: bool) -> tuple[dict[str, Any] | None, str | None]:
        """``_store_eval_chunk``, tried again (``_through_outages``) when the database is out of reach for a moment
        (a dropped connection, a restart), within the same attempt: it failed the attempt (fifteenth review). A lock not
        granted is tried again too: the drop this is for leaves the dead try's transaction on the server, holding the
        job's row, until the server notices (a read-only review of the fifteenth review's fixes: it failed the attempt).
        A statement cancelled (its statement bound ran out, or an operator cancelled it) stays the job's failure, and so
        does a session the server ended for a transaction left idle (25P03: a fault to report; ``_waited_out``; a
        read-only review of the fifteenth review's fixes), but not a lock wait cut at the statement bound; a claim
        another worker took raises LeaseLost, not tried again. Storing a chunk is idempotent (the payload is replaced by
        the same one, only the missing image rows are added, the rest reads), so a try whose commit landed but whose
        answer was lost is tried again safely."""
        return self._through_outages(run.job, "a chunk of the eval grid",
                                     lambda: self._store_eval_chunk(run, round_id, rows, partial, look=look))

    def _store_eval_chunk(self, run: _Run, round_id: int, rows: list[dict[str, Any]], partial: dict[str, Any], *,
                          look: bool) -> tuple[dict[str, Any] | None, str | None]:
        """In ONE transaction, while this worker still holds the job (LeaseLost otherwise): the chunk's eval image rows
        (only the missing ones) and the job's progress so far (its payload's ``partial``). Returns (waiting, finished):
        with ``look``, the job a person waits for that is claimable now ({"id", "kind", "experiment_id"}), else None;
        when the job's experiment has been finished (``repo.finish_experiment`` does not wait for an eval job), the
        reason to stop it, else None. The chunk is stored either way."""
        with write_session(self.factory) as s:
            job_queue.save_payload(session=s, job_id=run.job.id, worker_id=self.worker_id,
                                   payload={**run.job.payload, "partial": partial}, claim=run.job.claim)
            self._add_missing_images(s, round_id, rows)
            s.flush()
            fault_point("eval_chunk", run.job.attempts)
            round_ = repo.get_round(session=s, round_id=round_id)
            experiment = repo.get_experiment(session=s, experiment_id=round_.experiment_id)
            if experiment.status == "finished":
                return None, repo.finished_reason(experiment.name)
            waiting = job_queue.waiting_job(session=s, kinds=job_queue.PERSON_KINDS) if look else None
            if waiting is None:
                return None, None
            return {"id": waiting.id, "kind": waiting.kind, "experiment_id": waiting.experiment_id}, None

    def _eval_metrics(self, cfg: SeikoConfig, experiment_id: int, k: int, round_id: int, prev: _RoundInfo | None,
                      grid: list[tuple[str, int]], kl: dict[tuple[str, int], float] | None,
                      progress: JobProgress) -> dict[str, Any]:
        """The grid's metrics from what is stored: its size; image statistics (app.alarms) of the PNGs and embeddings;
        from round 1 on the predicted reward and head spread under round k's reward model, and the trajectory KL to
        the previous round (``kl``, per grid cell)."""
        out: dict[str, Any] = {"n": len(grid), "prompts": len(dict.fromkeys(cfg.eval_prompts)),
                               "seeds": list(dict.fromkeys(cfg.eval_seeds))}
        if not grid:
            return out
        with read_session(self.factory) as s:
            by_cell = {(im.prompt, int(im.seed)): (im.file_path, im.embedding)
                       for im in repo.list_images(session=s, round_id=round_id, kind="eval")}
        missing = [c for c in grid if c not in by_cell]
        if missing:
            raise RuntimeError(f"round {k}'s eval grid lacks {len(missing)} of its {len(grid)} images after rendering")
        emb = np.stack([np.frombuffer(by_cell[c][1], dtype="<f4") for c in grid]).astype(np.float32)
        pixels = np.stack([_png_pixels(storage.resolve(self.settings.data_dir, by_cell[c][0])) for c in grid])
        if k > 0 and prev is not None:
            progress.set("eval_reward")
            out.update(_reward_metrics(self.settings.data_dir, storage.reward_path(experiment_id, k), k, emb))
            if kl is not None:
                values = np.array([kl[c] for c in grid], dtype=np.float64)
                out["kl_to_prev"] = float(values.mean())
                out["kl_to_prev_max"] = float(values.max())
        # issue 14 item 4: image statistics of the eval grid, read by the dashboard's reward-hacking alarms
        out["image_stats"] = alarms.image_stats(pixels, emb.astype(np.float64))
        return out

    # -- train --------------------------------------------------------------------------------

    def _train(self, run: _Run) -> dict[str, Any]:
        job, progress = run.job, run.progress
        with read_session(self.factory) as s:
            round_row = repo.get_round(session=s, round_id=job.round_id)
            experiment = repo.get_experiment(session=s, experiment_id=round_row.experiment_id)
            k = _payload_round_index(job, round_row.index)
            this = _round_info(s, round_row)
            # rollback (app.ab.train_next_from): train from round from_round's adapter instead of round k's
            from_round = job.payload.get("from_round")
            source = this if from_round in (None, k) else _round_info(
                s, repo.get_round_by_index(session=s, experiment_id=experiment.id, index=_from_round(job, from_round, k)))
            published = any(r.index == k + 1 for r in repo.list_rounds(session=s, experiment_id=experiment.id))
            watermark = job.payload.get("watermark")
            rows = [] if published else repo.ratings_snapshot(session=s, experiment_id=experiment.id, up_to_rating_id=watermark)
            # issue 14 item 2: z-score each rater's scores first when the experiment asks (app.quality.standardize)
            standardize = bool(experiment.standardize_scores) and not published
            per_rating = (db_quality.rating_rows(session=s, experiment_id=experiment.id, up_to_rating_id=watermark)
                          if standardize else [])
            experiment_id, model_spec, cfg = experiment.id, experiment.model_spec, experiment_config(experiment)
            _flag_stored_config(job, experiment.name, cfg)
            # issue 14 item 1: pairwise comparisons, alone or with the ratings (app.pairwise)
            feedback = pairwise.feedback_of(experiment)
            pair_data = (None if published or feedback == "scores" else pairwise.worker_training_data(
                s, experiment_id=experiment_id, round_index=k, feedback=feedback, rated=rows, watermark=watermark,
                standardize=standardize, per_rating=per_rating))
        new_index = k + 1
        fault_point("snapshot", job.attempts)
        if published:  # an earlier attempt published and this one is a re-run: nothing more to do
            self._publish(run, lambda s: None, {"round_index": new_index, "published": False})
            return {"round_index": new_index, "published": False}
        if this.status != "training":
            raise Conflict(f"round {k} is {this.status!r}, not 'training'; close the round before training on it")
        pairs = None
        if pair_data is not None:  # comparisons (and scores with "both", standardised there when asked)
            embeddings, scores, pairs, snapshot = pair_data
            standardize = False
        elif not rows:
            raise Conflict(f"experiment {experiment_id} has no ratings up to rating {watermark}; there is nothing to train on")
        else:
            dims = {r.embedding_dim for r in rows}
            if len(dims) != 1:
                raise InvalidInput(f"the rated images' embeddings have different sizes {sorted(dims)}; they come from different encoders")
            embeddings = torch.from_numpy(np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows]).astype(np.float32))
            scores = torch.tensor([r.mean_score for r in rows], dtype=torch.float32)
            snapshot = {"watermark": watermark, "images": len(rows), "ratings": int(sum(r.n_ratings for r in rows))}
        if source is not this:
            snapshot["from_round"] = source.index  # an adapter trained from another round is not reused
        if standardize:
            scores = torch.tensor(quality.training_scores([r.image_id for r in rows],
                                                          [(q.image_id, q.rater_id, q.score) for q in per_rating],
                                                          standardized=True), dtype=torch.float32)
            snapshot["standardized"] = True
        # the counts above can repeat on other data (a round reopened and its scores edited keeps its rating ids; a
        # fresh database over an old data dir); an unpublished adapter is reused only on the very same training data
        snapshot["data_sha256"] = _training_digest(embeddings, scores, pairs)

        adapter_rel = storage.adapter_path(experiment_id, new_index)
        adapter_dir = storage.resolve(self.settings.data_dir, adapter_rel)
        reward_dir = storage.resolve(self.settings.data_dir, storage.reward_path(experiment_id, new_index))
        metrics = self._reusable(run, adapter_dir, reward_dir, snapshot)
        if metrics is not None:
            log.info("job %d: reusing %s, written by an earlier attempt on the same ratings", job.id, adapter_dir)
            progress.set("reuse")
        else:
            progress.set("load_model")
            parts = self._parts(model_spec)
            prev_adapter = self._use_adapter(parts, source)  # also the KL term's previous model
            # training replaces the adapter of this name on the one UNet every experiment shares, so the cache
            # forgets it first: should the training fail midway, the next job that wants round_{new_index} (of this
            # experiment or another) loads its published weights instead of running on half-trained ones
            self._adapters.pop(lora.round_adapter_name(new_index), None)
            seed = derive_seed(experiment_id, k, "train")
            if self.group is not None:  # data parallel over this worker's processes (app.train_dist)
                outcome = self.group.train(self, parts, model_spec, source, embeddings, scores, cfg, new_index=new_index,
                                           prev_adapter=prev_adapter, seed=seed, on_progress=progress.callback(),
                                           attempt=job.attempts, pairs=pairs)
            else:
                outcome = train_round(parts, embeddings, scores, cfg, new_index=new_index, prev_adapter=prev_adapter,
                                      seed=seed, on_progress=progress.callback(), pairs=pairs)
            self._adapters.pop(outcome.adapter, None)  # the next use reloads what was published, not what is in memory
            metrics = finite_json({**outcome.metrics, "snapshot": snapshot, "seed": seed})
            progress.set("save")

            def write_reward(tmp: Path) -> None:
                outcome.ensemble.save(tmp)
                if outcome.ucb is not None:
                    outcome.ucb.save(tmp)

            def save() -> None:
                atomic_directory(reward_dir, write_reward, extra={"kind": "seiko-reward", "round": new_index,
                                                                  "data_sha256": snapshot["data_sha256"]})
                fault_point("save", job.attempts)
                lora.save_adapter(parts.unet, outcome.adapter, adapter_dir, config=to_dict(cfg), metrics=metrics)

            save()
            # a copy already on disk is kept (a retried job publishes one result); but one that a worker which had
            # lost this job wrote there first, on other ratings, would be published under this job's metrics (found
            # by review): set it aside (holding the job) and write again
            if not self._written_on(adapter_dir, reward_dir, snapshot):
                log.warning("job %d: %s holds a copy trained on other ratings; it is set aside and written again",
                            job.id, adapter_dir)
                self._set_aside(run, adapter_dir, reward_dir)
                save()
                if not self._written_on(adapter_dir, reward_dir, snapshot):
                    raise Conflict(f"another worker keeps writing {adapter_rel} on other ratings; this job is tried again")
        manifest_sha = sha256_file(adapter_dir / MANIFEST)  # the copy on disk (an earlier writer's if it got there first)

        def write(s) -> None:
            new_round, created = repo.publish_round(session=s, experiment_id=experiment_id, index=new_index,
                                                    adapter_path=adapter_rel, manifest_sha256=manifest_sha,
                                                    metrics={"train": metrics})
            if created and source is not this:
                comparisons.set_round_parent(session=s, round_id=new_round.id, parent_round_id=source.id)

        self._publish(run, write, {"round_index": new_index, "published": True, "adapter_path": adapter_rel,
                                   "manifest_sha256": manifest_sha})
        return {"round_index": new_index, "adapter_path": adapter_rel}

    def _reusable(self, run: _Run, adapter_dir: Path, reward_dir: Path, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """The metrics of an unpublished adapter an earlier attempt wrote on the same ratings snapshot, or None.

        An unpublished adapter (or reward model) that does not verify or was trained on other ratings (the round
        was reopened and closed again) is renamed out of the way (``_set_aside``), so this attempt writes a fresh one.
        """
        if adapter_dir.exists():
            metrics = self._written_on(adapter_dir, reward_dir, snapshot)
            if metrics:
                return metrics
        self._set_aside(run, adapter_dir, reward_dir)
        return None

    @staticmethod
    def _written_on(adapter_dir: Path, reward_dir: Path, snapshot: dict[str, Any]) -> dict[str, Any] | None:
        """The adapter's metrics if it and the reward model verify and were trained on ``snapshot``'s data, else None."""
        try:
            verify(adapter_dir)
            reward = verify(reward_dir)
            metrics = json.loads((adapter_dir / "metrics.json").read_text(encoding="utf-8"))
        except (CheckpointError, json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            log.warning("%s cannot be used (%s)", adapter_dir, exc)
            return None
        if not isinstance(metrics, dict) or metrics.get("snapshot") != snapshot:
            return None
        return metrics if reward.get("data_sha256") == snapshot["data_sha256"] else None

    def _set_aside(self, run: _Run, *dirs: Path) -> None:
        """Rename those of ``dirs`` that exist out of the way (``storage.retire``), only while this worker holds the
        job (its row locked; LeaseLost otherwise): a worker that stalled past its lease would otherwise rename what
        the worker that took the job over has just written."""
        stale = [d for d in dirs if d.exists()]
        if stale:
            with write_session(self.factory) as s:
                job_queue.held_job(session=s, job_id=run.job.id, worker_id=self.worker_id, claim=run.job.claim)
                for d in stale:
                    storage.retire(d)


def _reward_metrics(data_dir: Path, reward_rel: str, k: int, emb: np.ndarray) -> dict[str, Any]:
    """The eval grid's predicted reward and head spread under round ``k``'s reward model (``reward_rel`` under
    ``data_dir``). A model that is not there (the train job that wrote it ran on a machine whose data directory this
    one does not see) is logged and named in the metrics, where the predicted reward was left out without a word
    (found by review)."""
    reward_dir = storage.resolve(data_dir, reward_rel)
    if not reward_dir.exists():
        log.warning("round %d's reward model is not at %s: its eval metrics have no predicted reward (is the data "
                    "directory shared with the machine that trained it?)", k, reward_dir)
        return {"reward_model_missing": reward_rel}
    verify(reward_dir)
    ensemble = RewardEnsemble.load(reward_dir, device="cpu")
    pred, spread = predicted_reward_of_embeddings(ensemble, torch.from_numpy(emb))
    return {"pred_reward": pred, "head_spread": spread, "reward_model_round": k}
