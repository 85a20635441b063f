"""Live processes (migration 0016): each server and worker keeps a row in ``live_processes`` while it runs, and so
does the supervisor of `python -m app worker --processes N` (kind 'supervisor', migration 0017), which starts the
ranks and restarts them.

``Presence(factory, kind, head).start()`` registers the process (kind, host name, pid) in the same transaction that
checks the schema is still at ``head``, and a background thread refreshes its ``heartbeat_at`` every ``HEARTBEAT_S``
seconds; ``close()`` removes the row. A process killed (kill -9, a lost machine) leaves its row behind: once its
heartbeat is older than ``STALE_AFTER_S`` it counts for nothing, and the next registration deletes it. `db downgrade`
refuses while a fresh row is there (``live``, called inside the migration's transaction: ``db.migrate``).

A heartbeat that cannot be written (the database restarting, a downgrade forced past a live process) is a warning in
the log each time, never the end of the server or the worker.

Times are each process's own clock, as the job leases' are: hosts whose clocks differ by more than ``STALE_AFTER_S``
see each other's rows as stale or fresh for that much longer.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from time import monotonic

from sqlalchemy import delete, inspect, select, text, update

from db.engine import lock_not_granted, read_session, statement_cancelled, write_session
from db.errors import SchemaOutOfDate
from db.models import HOST_MAX, PROCESS_KINDS, LiveProcess, utcnow

HEARTBEAT_S = 15.0  # how often a live process refreshes its row
# A row not refreshed for this long is a process that died: four heartbeat periods. A live process may miss one beat
# (its write held past the database's lock bound, db.engine.BUSY_TIMEOUT_MS, 10 s, beside a long write; a GC pause; a
# machine under load), and its next write may wait that bound again before it lands: 2 * 15 + 2 * 10 = 50 s between
# two refreshes, which three periods (45 s) did not cover, so `db downgrade` took such a process for gone (fifteenth
# review). A process killed with kill -9 holds off a downgrade that much longer (or --ignore-live-processes).
STALE_AFTER_S = 4 * HEARTBEAT_S
CLOSE_WAIT_S = 5.0  # how long close() waits for a heartbeat under way before it leaves the row to go stale
START_WAIT_S = 600.0  # how long start() waits for a database write lock held by another (a long downgrade)
TABLE = LiveProcess.__tablename__

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Seen:
    """A live process's row: what `db downgrade` names."""

    kind: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime


def described(kind: str) -> str:
    """A kind as the messages name it: 'supervisor' is the supervisor of `python -m app worker --processes N`."""
    return "worker supervisor" if kind == "supervisor" else kind


def this_host() -> str:
    return socket.gethostname()[:HOST_MAX] or "?"


def register(session, *, kind: str, head: str, host: str | None = None, pid: int | None = None,
             now: datetime | None = None) -> int:
    """Insert a row for this process and return its id, then raise SchemaOutOfDate (the caller's transaction rolls
    the row back) unless the database is still at ``head``; rows stale for ``STALE_AFTER_S`` are deleted on the way.

    The row is written before the revision is read: on PostgreSQL the insert waits while a downgrade holds the table
    (``lock_live_processes``), and the revision read after it sees what that downgrade committed; on SQLite the
    write transaction waits for the downgrade's write lock before either. So a process starts either before a
    downgrade looks (which then sees it) or after it is done (and is refused here)."""
    if kind not in PROCESS_KINDS:
        raise ValueError(f"kind must be one of {PROCESS_KINDS}, got {kind!r}")
    now = now or utcnow()
    row = LiveProcess(kind=kind, host=(host or this_host())[:HOST_MAX], pid=os.getpid() if pid is None else pid,
                      started_at=now, heartbeat_at=now)
    session.add(row)
    session.flush()
    found = session.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if found != [head]:
        raise SchemaOutOfDate(_moved(kind, head, found))
    session.execute(delete(LiveProcess).where(LiveProcess.heartbeat_at < now - timedelta(seconds=STALE_AFTER_S)))
    return row.id


def beat(session, row_id: int, *, now: datetime | None = None) -> bool:
    """Refresh the heartbeat of row ``row_id``; False when the row is gone (deleted as stale after a long stall)."""
    result = session.execute(update(LiveProcess).where(LiveProcess.id == row_id)
                             .values(heartbeat_at=now or utcnow()).execution_options(synchronize_session=False))
    return result.rowcount == 1


def unregister(session, row_id: int) -> None:
    session.execute(delete(LiveProcess).where(LiveProcess.id == row_id).execution_options(synchronize_session=False))


def live(connection, *, now: datetime | None = None) -> list[Seen]:
    """The processes whose heartbeat is fresh (newer than ``STALE_AFTER_S``), oldest first; empty where the table
    does not exist (a database below 0016: the code of those revisions keeps no rows)."""
    if not inspect(connection).has_table(TABLE):
        return []
    cutoff = (now or utcnow()) - timedelta(seconds=STALE_AFTER_S)
    rows = connection.execute(select(LiveProcess.kind, LiveProcess.host, LiveProcess.pid, LiveProcess.started_at,
                                     LiveProcess.heartbeat_at)
                              .where(LiveProcess.heartbeat_at > cutoff)
                              .order_by(LiveProcess.started_at, LiveProcess.id)).all()
    return [Seen(*row) for row in rows]


def lock_live_processes(connection) -> None:
    """PostgreSQL: hold ``live_processes`` in SHARE mode until the transaction ends, so a registration under way
    commits before ``live`` reads and none begins after it (each waits, then finds the downgrade's revision). SQLite's
    write lock does this already; a database without the table has nothing to hold."""
    if connection.dialect.name == "postgresql" and inspect(connection).has_table(TABLE):
        connection.execute(text(f"LOCK TABLE {TABLE} IN SHARE MODE"))


class Presence:
    """This process's row, kept fresh by a daemon thread. ``start()`` raises SchemaOutOfDate when the schema is not
    at ``head``; any other failure to write (at the start or later) is a logged warning, tried again at the next
    heartbeat."""

    def __init__(self, factory, kind: str, head: str, *, interval_s: float = HEARTBEAT_S) -> None:
        if kind not in PROCESS_KINDS:
            raise ValueError(f"kind must be one of {PROCESS_KINDS}, got {kind!r}")
        self.factory, self.kind, self.head, self.interval_s = factory, kind, head, interval_s
        self.row_id: int | None = None
        self._lock = threading.Lock()  # one write at a time: the thread's heartbeat, close()'s removal
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"presence-{kind}", daemon=True)

    def start(self) -> None:
        with self._lock:
            deadline = monotonic() + START_WAIT_S
            while True:
                try:
                    with write_session(self.factory) as s:
                        self.row_id = register(s, kind=self.kind, head=self.head)
                    break
                except SchemaOutOfDate:
                    raise
                except Exception as exc:
                    # a write lock held past the busy timeout (a downgrade copying a large SQLite database, or its
                    # table rebuilds; PostgreSQL's lock on this table, each try bounded by the lock_timeout db.engine
                    # sets, the busy timeout's bound): waited for, up to START_WAIT_S, then the
                    # schema is read as it is after it. Not waited for, the process went on with a warning, its
                    # read of the schema seeing the head (the downgrade not committed yet), and served the older
                    # schema unregistered once it committed (found by a read-only review, tenth review)
                    # a wait cut by a statement bound instead (an operator's statement_timeout, where their own
                    # lock_timeout, kept by db.engine on the worker's engine, is longer or 0; the web server's engine
                    # keeps its lock bound below its statement bound since the thirteenth review) is the same wait: it
                    # gave up registering and served unregistered (found by a read-only review, twelfth review)
                    if (lock_not_granted(exc) or statement_cancelled(exc)) and monotonic() < deadline:
                        log.info("the %s waits for a database write lock to register itself as live (%s)",
                                 described(self.kind), _short(exc))
                        continue
                    self._start_failed(exc)
                    break
            if self._stop.is_set():
                # closed while this start waited for a write lock: close() could not take the lock, so it left the
                # row to this start, which registered it afterwards; removed here, not left in the live processes for
                # STALE_AFTER_S (a `db downgrade` refused meanwhile), and no heartbeat begins (nineteenth review)
                self._closed = True
                self._remove_row()
                return
        self._thread.start()

    def _start_failed(self, exc: Exception) -> None:
        """The registration failed for a reason other than the schema (the database down at the start): said, and
        tried again at each heartbeat. One that waited for a downgrade's lock may find the table dropped: the schema
        says so (SchemaOutOfDate)."""
        self._check_schema()
        log.warning("the %s could not register itself as live in the database (%s); `db downgrade` cannot see it "
                    "until a heartbeat does, tried every %g s", described(self.kind), _short(exc), self.interval_s)

    def _check_schema(self) -> None:
        """Raise SchemaOutOfDate unless the database is at ``head``; a read that fails is a warning."""
        try:
            with read_session(self.factory) as s:
                found = s.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
        except Exception as exc:  # the database down: the registration is tried again at each heartbeat
            log.warning("the %s could not read the schema revision either (%s)", described(self.kind), _short(exc))
            return
        if found != [self.head]:
            raise SchemaOutOfDate(_moved(self.kind, self.head, found))

    def beat_once(self) -> None:
        """One heartbeat: refresh the row, or register again when it is gone; a failure is a warning."""
        with self._lock:
            if self._closed:
                return
            try:
                with write_session(self.factory) as s:
                    if self.row_id is None or not beat(s, self.row_id):
                        self.row_id = register(s, kind=self.kind, head=self.head)
            except Exception as exc:  # a heartbeat never ends the server or the worker
                log.warning("the %s's heartbeat could not be written to the database (%s); `db downgrade` may take "
                            "it for gone once it is %g s old; trying again in %g s", described(self.kind), _short(exc),
                            STALE_AFTER_S, self.interval_s)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat_once()

    def close(self) -> None:
        """Stop the heartbeats and remove the row (a failure is a warning: the row goes stale)."""
        self._stop.set()
        deadline = monotonic() + CLOSE_WAIT_S  # one wait in all: it was CLOSE_WAIT_S for each (read-only review)
        if self._thread.is_alive():
            self._thread.join(CLOSE_WAIT_S)
        # a heartbeat stuck in a database call holds the lock: the exit does not wait for it past CLOSE_WAIT_S
        if not self._lock.acquire(timeout=max(0.0, deadline - monotonic())):
            log.warning("the %s's heartbeat is stuck in a database call, so its row in the database's live processes "
                        "is left; it counts as gone %g s after its last heartbeat", described(self.kind), STALE_AFTER_S)
            return
        try:
            self._closed = True
            self._remove_row()
        finally:
            self._lock.release()

    def _remove_row(self) -> None:
        """Remove this process's row, the lock held (a failure is a warning: the row goes stale)."""
        if self.row_id is None:
            return
        try:
            with write_session(self.factory) as s:
                unregister(s, self.row_id)
            self.row_id = None
        except Exception as exc:  # at exit: the row is left to go stale, as a killed process's
            log.warning("the %s's row in the database's live processes could not be removed (%s); it counts as "
                        "gone %g s after its last heartbeat", described(self.kind), _short(exc), STALE_AFTER_S)


def _moved(kind: str, head: str, found: list[str]) -> str:
    shown = ", ".join(found) or "no revision"
    return (f"the database schema changed from {head} to {shown} as the {described(kind)} started (a `db downgrade` or `db "
            "upgrade` ran meanwhile); run `python -m app db upgrade`, or the code of that revision")


def _short(exc: BaseException) -> str:
    """An exception in one line: a database error's driver message, not SQLAlchemy's whole statement."""
    orig = getattr(exc, "orig", None)
    lines = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__

