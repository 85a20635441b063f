"""Engines and sessions that behave the same on SQLite and PostgreSQL.

SQLite is set up for a web app and a worker writing at the same time (one file, several processes):

- ``journal_mode=WAL``: readers never block the writer and the writer never blocks readers.
- ``synchronous=FULL``: a committed transaction survives a power cut (a rating is durable once acknowledged).
- ``foreign_keys=ON``: SQLite ignores foreign keys unless asked.
- ``busy_timeout``: a writer waits for the write lock instead of failing with "database is locked".
- ``BEGIN IMMEDIATE``: a write transaction takes the write lock when it starts. With the default
  deferred BEGIN, a transaction that reads and then writes can fail at once with "database is locked"
  (SQLite cannot wait there without risking deadlock). This uses SQLAlchemy's documented pysqlite
  recipe: the driver's own BEGIN is switched off (``isolation_level = None``) and we emit BEGIN on
  the engine's ``begin`` event.

On PostgreSQL every connection gets ``lock_timeout`` = ``BUSY_TIMEOUT_MS`` (``_bound_lock_waits``), the bound of
SQLite's busy timeout, though not the same one: SQLite waits once per transaction (for its write lock, at BEGIN
IMMEDIATE), PostgreSQL bounds each lock wait, so a transaction that waits on several locks may wait several times that
(second read-only review). A statement waiting for a row or table lock gives up with LockNotAvailable (SQLSTATE 55P03), which
``lock_not_granted`` and ``lock_refusal`` treat as SQLite's "database is locked". Nothing bounded a lock wait there, so a
page action could wait on a lock for good while the rating page (app.ui_assets.ACTION_RUN_S, counted from this bound) had
given up on it (eleventh review). A path that means to wait longer says so for its own transaction (migrations/env.py:
``SET lock_timeout``; db.presence's registration tries again up to its own START_WAIT_S).

Sessions made by ``session_factory`` begin IMMEDIATE; ``read_session`` begins DEFERRED (a snapshot
that takes no lock) and never commits.

On both, a statement whose parameters hold text with a NUL character is refused (``db.errors.InvalidInput``)
before it is sent: PostgreSQL cannot store or compare such text (a DataError, where SQLite would answer), so a
sign-in name or an experiment name with one got a server error on PostgreSQL only. Text that will not encode as
UTF-8 (a lone surrogate, "\\ud800") is refused the same way, with ``db.checks.UNICODE_REFUSAL``: both drivers raised
Python's own "'utf-8' codec can't encode ..." for it.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.orm import Session, sessionmaker

from db.checks import UNICODE_REFUSAL, encodable
from db.errors import InvalidInput

BUSY_TIMEOUT_MS = 10_000
SQLITE_BEGIN_OPTION = "seiko_sqlite_begin"  # execution option: "IMMEDIATE" (default) or "DEFERRED"
_BEGIN_MODES = ("IMMEDIATE", "DEFERRED")


def make_engine(url: str, *, sqlite_foreign_keys: bool = True, echo: bool = False) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    ``sqlite_foreign_keys=False`` is for migrations only: SQLite's batch mode copies and drops
    tables, which enforced foreign keys would cascade or refuse.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_engine(url, echo=echo, pool_pre_ping=True)
        event.listen(engine, "before_cursor_execute", _refuse_nul_text)
        event.listen(engine, "connect", _bound_lock_waits)
        return engine
    if parsed.database in (None, "", ":memory:"):
        raise ValueError(
            f"SQLite URL {url!r} names no file; use sqlite:///path/to/seiko.db (an in-memory database is not shared)"
        )
    engine = create_engine(url, echo=echo)
    event.listen(engine, "before_cursor_execute", _refuse_nul_text)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (see _on_begin)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            _set_wal(cursor)
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if sqlite_foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        mode = conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "IMMEDIATE")
        if mode not in _BEGIN_MODES:
            raise ValueError(f"unknown {SQLITE_BEGIN_OPTION} {mode!r}; choose from {list(_BEGIN_MODES)}")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _bound_lock_waits(dbapi_connection: Any, _record: Any) -> None:
    """PostgreSQL's ``connect``: ``SET lock_timeout`` to BUSY_TIMEOUT_MS for the session (in autocommit, so the first
    transaction's rollback does not undo it), over a role's, a database's or the URL's own ``options`` one: the page's
    deadline counts this bound. Read at each connect, so a test may shorten it."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(f"SET lock_timeout = {int(BUSY_TIMEOUT_MS)}")
    finally:
        dbapi_connection.autocommit = autocommit


def _refuse_nul_text(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
    """``before_cursor_execute``: refuse parameters holding text with a NUL character (one set or many, as a dict,
    a tuple or a list of them: the drivers and SQLAlchemy's batched inserts pass each of these)."""
    stack = [parameters]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif isinstance(item, str) and "\x00" in item:
            raise InvalidInput("a text value contains a NUL character (\\x00), which the database cannot hold; "
                               "nothing was saved")
        elif isinstance(item, str) and not encodable(item):
            raise InvalidInput(UNICODE_REFUSAL)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions bound to ``engine``. Objects stay readable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def write_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One short write transaction: commit on success, roll back and re-raise on any error."""
    with factory() as session:
        session.connection(execution_options={SQLITE_BEGIN_OPTION: "IMMEDIATE"})
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


@contextmanager
def read_session(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A read-only snapshot that takes no write lock; anything written is rolled back."""
    with factory() as session:
        session.connection(execution_options={SQLITE_BEGIN_OPTION: "DEFERRED"})
        try:
            yield session
        finally:
            session.rollback()


def _set_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode = WAL``, tried again every 10 ms for up to the busy timeout while SQLite answers it busy:
    it does so at once, without the busy handler, while another process opens or migrates a new database (two
    `db upgrade` at once on a new file: 5 of 50 failed "database is locked" here, eighth review)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if sqlite_code(exc) != 5 or time.monotonic() >= deadline:  # not busy, or busy for too long: said as is
                raise
        time.sleep(0.01)


def reading(engine: Engine) -> Connection:
    """A connection of ``engine`` whose transactions begin DEFERRED on SQLite: a read that takes no write lock, as
    ``read_session``'s, for code that works on a bare connection (db.migrate's revision and table reads)."""
    return engine.connect().execution_options(**{SQLITE_BEGIN_OPTION: "DEFERRED"})


@contextmanager
def read_snapshot(factory: sessionmaker[Session]) -> Iterator[Session]:
    """``read_session`` whose statements all see one snapshot: REPEATABLE READ on PostgreSQL (its default, READ
    COMMITTED, gives each statement its own); a SQLite read transaction is one snapshot already. For readers that
    run several statements whose answers must agree (an export's ratings and votes, a model card's counts)."""
    with read_session(factory) as session:
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))  # before any other statement
        yield session


# PostgreSQL SQLSTATE classes of a database out of reach for now: connection exceptions, insufficient resources, an
# operator's intervention (a restart, a fail-over), and a transaction rolled back for a conflict (serialization,
# deadlock); anything else (a wrong password 28, a missing database 3D, a missing table 42) is a refusal for good
_OUTAGE_STATES = ("08", "53", "57", "40")
# SQLite's primary result codes of a file out of reach for now: busy, locked, an I/O error, a full disk, a file that
# cannot be opened (its disk unmounted), a locking protocol error; any other code (a syntax error, a missing table) is
# a refusal for good
_SQLITE_OUTAGE_CODES = {5, 6, 10, 13, 14, 15}
# what a driver without a SQLSTATE says (psycopg at connection time) when the reach is fine and the answer is no
_REFUSAL_WORDS = ("no such table", "no such column", "not a database", "authentication failed", "does not exist",
                  "permission denied", "readonly database", "pg_hba.conf", "no password supplied",
                  "not permitted to log in", "ssl was required", "does not support ssl")


def sqlite_code(exc: BaseException) -> int | None:
    """SQLite's primary result code of a database error (sqlite3's ``sqlite_errorcode``, extended bits dropped), or
    None."""
    orig = getattr(exc, "orig", None) or exc
    code = getattr(orig, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def sqlstate(exc: BaseException) -> str | None:
    """PostgreSQL's SQLSTATE of a database error (psycopg's ``sqlstate``, psycopg2's ``pgcode``), or None."""
    orig = getattr(exc, "orig", None) or exc
    state = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return state if isinstance(state, str) and state else None


def lock_not_granted(exc: BaseException) -> bool:
    """Whether a database error says a lock was not granted in time: SQLite's busy or locked (its busy timeout ran
    out: "database is locked"), or PostgreSQL's lock_not_available (55P03: lock_timeout ran out, or NOWAIT). The
    transaction is rolled back; trying it again later can succeed."""
    return sqlite_code(exc) in (5, 6) or sqlstate(exc) == "55P03"


def lock_refusal(exc: BaseException) -> str | None:
    """The one sentence for a lock not granted in time (``lock_not_granted``), on either backend; None for any other
    error. The transaction that waited was rolled back whole; one an action committed before it stands (a rating
    saved, the next batch's leases not), so the sentence says only the change that waited was not saved."""
    if not lock_not_granted(exc):
        return None
    return (f"the database is busy: another transaction held a lock this needed for more than "
            f"{BUSY_TIMEOUT_MS / 1000:g} s, so the change that waited for it was not saved; try again in a moment")


def is_outage(exc: BaseException) -> bool:
    """Whether an OperationalError says the database is out of reach for now (wait and try again: a restart, a
    fail-over, a lock held too long) rather than that it refuses for good (a missing table, a wrong password, a
    database that does not exist), which waiting never mends (found by review: a worker retried those forever).
    Decided by SQLite's result code, else PostgreSQL's SQLSTATE, else (psycopg's errors at connection time carry
    none) by what the message says."""
    if getattr(exc, "connection_invalidated", False) or lock_not_granted(exc):
        return True  # a lock held too long: PostgreSQL's 55P03 is class 55 ("object not in prerequisite state")
    if (code := sqlite_code(exc)) is not None:
        return code in _SQLITE_OUTAGE_CODES
    if (state := sqlstate(exc)) is not None:
        return state[:2] in _OUTAGE_STATES
    message = str(getattr(exc, "orig", None) or exc).lower()
    return not any(word in message for word in _REFUSAL_WORDS)
