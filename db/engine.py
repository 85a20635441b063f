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

On PostgreSQL every connection gets ``lock_timeout`` = ``BUSY_TIMEOUT_MS`` (``_bound_waits``), the bound of
SQLite's busy timeout, though not the same one: SQLite waits once per transaction (for its write lock, at BEGIN
IMMEDIATE), PostgreSQL bounds each lock wait, so a transaction that waits on several locks may wait several times that
(second read-only review). A statement waiting for a row or table lock gives up with LockNotAvailable (SQLSTATE 55P03), which
``lock_not_granted`` and ``lock_refusal`` treat as SQLite's "database is locked". Nothing bounded a lock wait there, so a
page action could wait on a lock for good while the rating page (app.ui_assets.ACTION_RUN_S, counted from this bound) had
given up on it (eleventh review). A path that means to wait longer says so for its own transaction (migrations/env.py:
``SET lock_timeout``; db.presence's registration tries again up to its own START_WAIT_S).

The web server's connections (``make_engine(..., bound_statements=True)``, app.cli_serve) also get ``statement_timeout``
= ``WEB_STATEMENT_TIMEOUT_MS``: nothing bounded how long a statement ran there, so a page action whose query ran for
minutes held a server thread and its snapshot while the page had given up on it (twelfth review). The other engines
(the worker, migrations, exports, the commands) set none: a worker's training reads and an export's reads may
legitimately run long, and an operator at a terminal stops a command with Ctrl-C. Where the operator set a value of
their own (a role's or a database's ``ALTER ... SET``, the URL's ``options=-c lock_timeout=...``, the server's
configuration: pg_settings' ``source`` is not ``default``, nor ``session``, which at connect is a value a pooler's
earlier client left: thirteenth review), it is kept, not overridden (twelfth review); on the web server's engine only
within its own bounds, and our lock bound is below a statement bound in effect (``_bound_waits``: a lock wait gives up
as a lock not granted, not as a statement cancelled; thirteenth review). All of it is one
statement at connect, one round trip (``_BOUNDS_SQL``). The values in effect are kept with the connection (and a path
that sets its own says so through ``set_session_bounds``), so ``bound_refusal`` names the bound that ran out, not ours.

A PostgreSQL connection whose client went away without a word (a half-open connection: a worker's host lost, a
network cut) inside a transaction kept its locks (a job's row, which other workers then skip) until the server noticed,
about 2 hours at the default TCP keepalives (fifteenth review). Every PostgreSQL connection now has TCP keepalives on
both ends: libpq's ``keepalives`` (``KEEPALIVES``: an idle connection's dead peer is noticed within about a minute) and
the server's ``tcp_keepalives_idle``/``_interval``/``_count`` at the same values; and libpq's and the server's
``tcp_user_timeout`` (a minute): keepalives probe only a connection with nothing in flight, and one whose sent data
went unacknowledged was ended only after the system's retransmissions, about 15 minutes (a read-only review of the
fifteenth review's fixes). The server ends a transaction left idle for
``IDLE_IN_TRANSACTION_MS`` (``idle_in_transaction_session_timeout``; ``idle_refusal`` says so). No transaction of
the project is left idle across long work: the worker runs a model, writes files and waits outside its transactions,
the web server and the commands between a person's actions; each reads or writes, then ends, so the longest idle
spell is Python's work on a read's rows between two statements (an export's snapshot), seconds, far below the bound.
The URL's own wins: a libpq keepalive parameter or ``tcp_user_timeout`` in its query is used as given (and its value
for the server's; one in a pg_service.conf service the URL names, ``?service=``, is not: ours are passed to libpq,
which takes them over the service file's),
and a server setting the operator set (``options=-c ...``, a role's or database's, the server's configuration) is
kept, as for the bounds above.

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
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.checks import UNICODE_REFUSAL, encodable
from db.errors import InvalidInput

BUSY_TIMEOUT_MS = 10_000
# PostgreSQL's statement_timeout on the web server's connections: three times the lock bound, so a statement that waits
# for a lock gives up on the lock first (lock_timeout, 55P03) and one that only runs long (a dashboard's aggregate on a
# large database) has ample time; below the page's own deadline (app.ui_assets.ACTION_RUN_S, 60 s), so the server
# ends such a statement before the page stops waiting for its answer. Read at each connect, so a test may shorten it
WEB_STATEMENT_TIMEOUT_MS = 3 * BUSY_TIMEOUT_MS
# libpq's TCP keepalives of each PostgreSQL connection, where its URL sets none of its own: the first probe after 30 s
# without traffic, then every 10 s, 3 unanswered end the connection; and its tcp_user_timeout (ms): data sent and not
# acknowledged for a minute ends it (keepalives probe only a connection with nothing in flight: with data in flight the
# system retransmits for about 15 minutes, tcp_retries2, before it gives up). The server's own (tcp_keepalives_*,
# tcp_user_timeout) are set to the same, so a peer gone without a word is noticed within about a minute or two on either
# end, idle or not (it was about 2 hours idle, about 15 minutes with data in flight)
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3,
              "tcp_user_timeout": 60_000}
# PostgreSQL's idle_in_transaction_session_timeout of each connection: the server ends a session whose transaction
# was left idle this long (its locks let go). No transaction of the project waits on long work (the module docstring);
# read at each connect, so a test may shorten it
IDLE_IN_TRANSACTION_MS = 5 * 60_000
_IDLE_KEY = "seiko_pg_idle_ms"  # a PostgreSQL connection's info: its idle_in_transaction_session_timeout in effect, ms
_BOUNDS_KEY = "seiko_pg_bounds"  # a PostgreSQL connection's info: {"lock_timeout": ms, "statement_timeout": ms} in effect
_BOUNDS_ATTR = "seiko_bounds"  # set on a driver error of a bound that ran out: the bounds of its connection
SQLITE_BEGIN_OPTION = "seiko_sqlite_begin"  # execution option: "IMMEDIATE" (default) or "DEFERRED"
_BEGIN_MODES = ("IMMEDIATE", "DEFERRED")


def make_engine(url: str, *, sqlite_foreign_keys: bool = True, echo: bool = False,
                bound_statements: bool = False) -> Engine:
    """An engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    ``sqlite_foreign_keys=False`` is for migrations only: SQLite's batch mode copies and drops
    tables, which enforced foreign keys would cascade or refuse.

    ``bound_statements=True`` (the web server's engine) bounds each statement's run time on PostgreSQL at
    ``WEB_STATEMENT_TIMEOUT_MS`` (``statement_timeout``); SQLite has no such bound (its statements are local reads and
    writes of one file, and a lock wait is bounded by its busy timeout).
    """
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        keepalives = {name: value for name, value in KEEPALIVES.items() if name not in parsed.query}  # the URL's win
        engine = create_engine(url, echo=echo, pool_pre_ping=True, connect_args=keepalives)
        event.listen(engine, "before_cursor_execute", _refuse_nul_text)
        server_keepalives = _server_keepalives({**KEEPALIVES, **parsed.query})

        @event.listens_for(engine, "connect")
        def _on_pg_connect(dbapi_connection: Any, record: Any) -> None:
            _bound_waits(dbapi_connection, record, bound_statements=bound_statements, keepalives=server_keepalives)

        event.listen(engine, "handle_error", _note_bounds)
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


# One statement at each PostgreSQL connect, one round trip (thirteenth review: a read of pg_settings, then a SET for each
# bound left at its default, was two or three). It reads both bounds and their source, works out the bounds wanted
# (``_bound_waits``), and calls set_config only for a bound that is to change; it answers the bounds then in effect.
# %(busy)s: BUSY_TIMEOUT_MS; %(web)s: WEB_STATEMENT_TIMEOUT_MS on the web server's engine, else 0 (no statement bound
# of ours). pg_settings gives both bounds in ms; set_config takes a whole number of ms.
# A bound whose source is "session" at connect was set by a SET or set_config of an earlier client of the same server
# connection (a pooler's transaction or statement pooling hands one server session to many clients): it is not the
# operator's, and is taken as the default is (ours where we set one, else none: a statement bound is set back to 0). It
# was kept as the operator's (thirteenth review). Such pooling is not supported (README: use session pooling).
_BOUNDS_SQL = """
WITH found AS (
    SELECT (SELECT setting::bigint FROM pg_settings WHERE name = 'lock_timeout') AS lock_ms,
           (SELECT source NOT IN ('default', 'session') FROM pg_settings WHERE name = 'lock_timeout') AS lock_own,
           (SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout') AS stmt_ms,
           (SELECT source NOT IN ('default', 'session') FROM pg_settings WHERE name = 'statement_timeout') AS stmt_own,
           %(busy)s::bigint AS busy, %(web)s::bigint AS web
), statement_wanted AS (
    SELECT *, CASE WHEN web = 0 AND stmt_own THEN stmt_ms
                   WHEN web = 0 THEN 0
                   WHEN stmt_own AND stmt_ms > 0 AND stmt_ms <= web THEN stmt_ms
                   ELSE web END AS stmt_want,
              CASE WHEN lock_own THEN lock_ms ELSE busy END AS lock_base
    FROM found
), wanted AS (
    SELECT *, CASE WHEN (web > 0 OR NOT lock_own) AND stmt_want > 0 AND NOT (lock_base > 0 AND lock_base < stmt_want)
                   THEN greatest(1, stmt_want / 3)
                   ELSE lock_base END AS lock_want
    FROM statement_wanted
), others AS (
    -- the idle transaction bound, the server's TCP keepalives and tcp_user_timeout (a server before 12 has none: no
    -- row of pg_settings, so nothing is asked of it): ours (a NULL: none of ours) where the operator set
    -- none (source default, or session as above); the idle bound in effect (ms) is answered
    SELECT max(CASE WHEN name = 'idle_in_transaction_session_timeout'
                    THEN (CASE WHEN own OR value IS NULL THEN setting ELSE value END)::bigint END) AS idle_ms,
           count(CASE WHEN NOT own AND value IS NOT NULL THEN set_config(name, value, false) END) AS others_set
    FROM (SELECT w.name, w.value, s.setting, s.source NOT IN ('default', 'session') AS own
          FROM (VALUES ('idle_in_transaction_session_timeout', %(idle)s::text),
                       ('tcp_keepalives_idle', %(ka_idle)s::text), ('tcp_keepalives_interval', %(ka_interval)s::text),
                       ('tcp_keepalives_count', %(ka_count)s::text), ('tcp_user_timeout', %(user_timeout)s::text))
                AS w(name, value)
          JOIN pg_settings s ON s.name = w.name) AS asked
)
SELECT lock_want, stmt_want,
       CASE WHEN lock_want <> lock_ms OR NOT lock_own
            THEN set_config('lock_timeout', lock_want::text, false) END,
       CASE WHEN stmt_want <> stmt_ms OR (web > 0 AND NOT stmt_own)
            THEN set_config('statement_timeout', stmt_want::text, false) END,
       idle_ms, others_set
FROM wanted, others
"""


def _server_keepalives(libpq: dict[str, Any]) -> dict[str, int | None]:
    """The server's tcp_keepalives_idle, _interval and _count and its tcp_user_timeout for a connection whose libpq
    keepalive parameters and tcp_user_timeout are ``libpq`` (ours, the URL's over them): the same values; none (None)
    where a value is not a whole number (libpq refuses that URL at connect), and no keepalives where they are off
    (tcp_user_timeout does not depend on them)."""
    off = _whole(libpq["keepalives"]) == 0
    return {"user_timeout": _whole(libpq["tcp_user_timeout"]),
            **{f"ka_{name}": None if off else _whole(libpq[f"keepalives_{name}"]) for name in ("idle", "interval", "count")}}


def _whole(value: Any) -> int | None:
    """``value`` as a whole number, or None where it is not one."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _bound_waits(dbapi_connection: Any, record: Any, *, bound_statements: bool,
                 keepalives: dict[str, int | None] | None = None) -> None:
    """PostgreSQL's ``connect``: the session's ``lock_timeout`` is BUSY_TIMEOUT_MS and, with ``bound_statements`` (the
    web server's engine), its ``statement_timeout`` WEB_STATEMENT_TIMEOUT_MS, each only where the operator set none
    of their own: a setting whose pg_settings ``source`` is not ``default`` (a role's or a database's ``ALTER ...
    SET``: "user", "database", "database user"; the URL's ``options`` or PGOPTIONS: "client"; the server's
    configuration file) is kept (twelfth review). A setting whose source is "session" is not: at connect it can only be
    a SET left by an earlier client of the same server session (a pooler's transaction pooling), and it is taken as the
    default is (thirteenth review). Set in autocommit, so the first transaction's rollback does not undo
    them.

    On the web server's engine the operator's own bounds are kept only within the web's (thirteenth review): the
    page stops waiting for an action at app.ui_assets.ACTION_RUN_S (60 s), so a statement bound of theirs that is
    none (0) or longer than WEB_STATEMENT_TIMEOUT_MS is cut to it, and a lock bound that is none or not below the
    statement bound in effect is a third of it (a lock wait gives up first, as a lock not granted, 55P03: with the
    operator's longer lock_timeout it ended at the statement bound, 57014, said as a statement that ran long). A
    shorter bound of theirs is kept. The other engines keep the operator's as they are; on every engine our own lock
    bound (where the operator set none) is a third of a statement bound of theirs that is not above it, for the same
    reason.

    One statement, one round trip (``_BOUNDS_SQL``). The values in effect go in the connection's ``info`` for
    ``_note_bounds``. Read at each connect, so a test may shorten them.

    In the same statement: the session's ``idle_in_transaction_session_timeout`` (IDLE_IN_TRANSACTION_MS) and the
    server's TCP keepalives and tcp_user_timeout (``keepalives``: ``_server_keepalives``), each only where the operator
    set none of their own, as above (fifteenth review); the idle bound in effect is noted with the connection for
    ``idle_refusal``."""
    web = int(WEB_STATEMENT_TIMEOUT_MS) if bound_statements else 0
    asked = {"busy": int(BUSY_TIMEOUT_MS), "web": web, "idle": int(IDLE_IN_TRANSACTION_MS),
             **(keepalives or _server_keepalives(KEEPALIVES))}
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        with dbapi_connection.cursor() as cursor:
            cursor.execute(_BOUNDS_SQL, asked)
            lock_ms, statement_ms, _lock_set, _statement_set, idle_ms, _others_set = cursor.fetchone()
    finally:
        dbapi_connection.autocommit = autocommit
    record.info[_BOUNDS_KEY] = {"lock_timeout": int(lock_ms), "statement_timeout": int(statement_ms)}
    record.info[_IDLE_KEY] = int(idle_ms)


def set_session_bounds(connection: Connection, **bounds_ms: int) -> None:
    """``SET`` PostgreSQL's ``lock_timeout`` and/or ``statement_timeout`` (whole ms, 0 for none) for the session of
    ``connection`` (a SQLAlchemy connection of ``make_engine``), and note them with the connection, so that a refusal
    names the bound in force (``bound_refusal``, db.migrate's sentences): a path that sets its own (migrations/env.py)
    had its errors worded with the bounds of the connect (thirteenth review).

    The SETs run in autocommit, as ``_bound_waits``' do, so a rollback does not undo them: they were sent in the
    connection's transaction and noted at once, and a rollback undid the SETs but not the note, which then named a
    bound not in force (thirteenth review). So ``connection`` must not be in a transaction (ValueError: commit or roll
    back first)."""
    names = sorted(bounds_ms)
    if unknown := [name for name in names if name not in ("lock_timeout", "statement_timeout")]:
        raise ValueError(f"unknown bound {unknown[0]!r}; choose from lock_timeout, statement_timeout")
    if connection.in_transaction():
        raise ValueError("set_session_bounds runs its SET in autocommit, outside a transaction: commit or roll back "
                         "the connection's transaction first")
    noted = dict(connection.info.get(_BOUNDS_KEY) or {})
    dbapi_connection = connection.connection.dbapi_connection
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        for name in names:
            # through SQLAlchemy, not the driver's cursor: a connection dropped here raised psycopg's own error (the
            # connection not invalidated, its pool's reset failing after it), which no refusal words (fourteenth
            # review); it is SQLAlchemy's OperationalError now, the connection invalidated, as for any statement
            connection.exec_driver_sql(f"SET {name} = {int(bounds_ms[name])}")  # one of the two names, whole ms
            noted[name] = int(bounds_ms[name])
        connection.commit()  # the transaction SQLAlchemy began for them: in the driver's autocommit, no BEGIN was sent
    finally:
        if not connection.invalidated:  # a dropped connection is gone: nothing to set back, nothing to note
            dbapi_connection.autocommit = autocommit
            connection.info[_BOUNDS_KEY] = noted


def session_bounds(connection: Connection) -> dict[str, int]:
    """The bounds noted for ``connection``'s session (``_bound_waits``, ``set_session_bounds``), in ms; empty off
    PostgreSQL."""
    return dict(connection.info.get(_BOUNDS_KEY) or {})


def _note_bounds(context: Any) -> OperationalError | None:
    """``handle_error``: a lock not granted (55P03), a statement cancelled (57014) or a session ended for a
    transaction left idle (25P03) on PostgreSQL carries the bounds of its connection (``_bound_waits``), so that
    ``bound_refusal`` says the bound that ran out: the operator's own, where they set one, is not BUSY_TIMEOUT_MS.

    The last is raised as an OperationalError (the driver's class for it is an InternalError): the server ended the
    session, as a restart does, and the worker, the page and the commands take an OperationalError as the database's
    state and say ``bound_refusal``'s sentence for it; the connection is invalidated (fifteenth review)."""
    state = sqlstate(context.original_exception)
    if state not in ("55P03", "57014", "25P03"):
        return None
    if context.connection is not None and (bounds := context.connection.info.get(_BOUNDS_KEY)) is not None:
        idle = context.connection.info.get(_IDLE_KEY)
        setattr(context.original_exception, _BOUNDS_ATTR,
                {**bounds, **({} if idle is None else {"idle_in_transaction_session_timeout": idle})})
    if state != "25P03" or isinstance(context.sqlalchemy_exception, OperationalError):
        return None
    context.is_disconnect = True  # the server ended the session: this connection is gone
    return OperationalError(context.statement, context.parameters, context.original_exception,
                            connection_invalidated=True)


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


def statement_cancelled(exc: BaseException) -> bool:
    """Whether a database error says PostgreSQL cancelled a statement (query_canceled, 57014: its statement_timeout ran
    out, or an operator's pg_cancel_backend). The transaction is rolled back; trying it again later can succeed."""
    return sqlstate(exc) == "57014"


def _driver_error(exc: BaseException) -> BaseException:
    return getattr(exc, "orig", None) or exc


def _bound_s(exc: BaseException, name: str, default_ms: int | None) -> float | None:
    """The bound ``name`` (lock_timeout, statement_timeout) in seconds in effect on the PostgreSQL connection that
    raised ``exc`` (``_note_bounds``); ``default_ms`` for an error that carries none (one raised outside make_engine's
    engines); None for a bound of 0 (none)."""
    ms = getattr(_driver_error(exc), _BOUNDS_ATTR, {}).get(name, default_ms)
    return ms / 1000 if ms else None


def session_bound_s(exc: BaseException, name: str) -> float | None:
    """The bound ``name`` (lock_timeout, statement_timeout) in seconds of the PostgreSQL session that raised ``exc``
    (as noted at connect or by ``set_session_bounds``); None for none (0) or an error that carries none."""
    return _bound_s(exc, name, None)


def _waited_for_lock(exc: BaseException) -> bool:
    """Whether a lock not granted (``lock_not_granted``) was waited for up to a bound, not refused at once. SQLite
    waits out its busy timeout for a plain SQLITE_BUSY (result code 5, no extended bits) only: SQLITE_LOCKED (6, a
    table locked by another statement on the same connection) and the extended busy codes (BUSY_SNAPSHOT, 517: a
    snapshot too old to write from) are answered at once. PostgreSQL ends a wait that ran out from ProcessInterrupts
    (lock_timeout); NOWAIT refuses from where the lock was asked for (heap_lock_tuple for a row). An error without
    that detail (raised by hand, or by a driver that gives none) counts as waited, as all did before."""
    orig = _driver_error(exc)
    if sqlite_code(exc) is not None:
        return getattr(orig, "sqlite_errorcode", None) == 5
    source = getattr(getattr(orig, "diag", None), "source_function", None)
    return source is None or source == "ProcessInterrupts"


def lock_waited_s(exc: BaseException) -> float | None:
    """For a lock not granted (``lock_not_granted``): the seconds it was waited for before it was given up (SQLite's
    busy timeout; the lock_timeout of the PostgreSQL connection, the operator's own where they set one), or None for
    a lock refused at once (``_waited_for_lock``)."""
    if not _waited_for_lock(exc):
        return None
    return _bound_s(exc, "lock_timeout", BUSY_TIMEOUT_MS) if sqlite_code(exc) is None else BUSY_TIMEOUT_MS / 1000


def lock_refusal(exc: BaseException) -> str | None:
    """The one sentence for a lock not granted (``lock_not_granted``), on either backend; None for any other error.
    The transaction that waited was rolled back whole; one an action committed before it stands (a rating saved, the
    next batch's leases not), so the sentence says only the change that waited was not saved. It names the bound that
    ran out (SQLite's busy timeout; PostgreSQL's lock_timeout of that connection, the operator's own where they set
    one), and no bound for a lock refused at once (NOWAIT, SQLITE_LOCKED): it said "for more than 10 s" for those too
    (twelfth review)."""
    if not lock_not_granted(exc):
        return None
    if (bound := lock_waited_s(exc)) is None:
        return ("the database is busy: another transaction or statement held a lock this needed, which is not waited "
                "for here, so the change that needed it was not saved; try again in a moment")
    return (f"the database is busy: another transaction held a lock this needed for more than {bound:g} s, so the "
            f"change that waited for it was not saved; try again in a moment")


def statement_refusal(exc: BaseException) -> str | None:
    """The one sentence for a statement PostgreSQL cancelled (``statement_cancelled``); None for any other error. Its
    transaction was rolled back whole, as for a lock not granted. The bound named is the connection's statement_timeout
    (the web server's WEB_STATEMENT_TIMEOUT_MS, or the operator's own); an operator's cancel is said as one. The server
    words the reason in its own language (lc_messages): one it does not say in English is said as either."""
    if not statement_cancelled(exc):
        return None
    if (cut := statement_timeout_ran_out_s(exc)) is not None:
        if lock_outlasts_statement(exc):
            # a lock wait ends here, not at lock_timeout: it was said as a statement that ran long (thirteenth review)
            return (f"the database is busy: a statement of this ran, or waited for a lock another transaction held, "
                    f"for more than {cut:g} s, its bound, and was cancelled, so the change it belonged to was not "
                    "saved; try again in a moment")
        return (f"the database is busy: a statement of this ran for more than {cut:g} s, its bound, and was "
                "cancelled, so the change it belonged to was not saved; try again in a moment")
    bound = session_bound_s(exc, "statement_timeout")
    if "user request" in str(_driver_error(exc)).lower():
        return ("the database cancelled a statement of this at an operator's request, so the change it belonged to "
                "was not saved; try again in a moment")
    within = f" of {bound:g} s" if bound is not None else ""
    return (f"the database cancelled a statement of this (it ran past its time bound{within}, or an operator cancelled "
            "it), so the change it belonged to was not saved; try again in a moment")


def statement_timeout_ran_out_s(exc: BaseException) -> float | None:
    """For a statement PostgreSQL cancelled (``statement_cancelled``): the statement_timeout in seconds of its session
    (as noted at connect or by ``set_session_bounds``) where that is what ran out, as the server says it ("canceling
    statement due to statement timeout"); None for any other error, an operator's cancel, an error that carries no
    bounds, or a server that words it in another language (lc_messages). The one test of ``statement_refusal``, the
    worker's cancel reason (app.worker) and the migration's sentence (db.migrate): it was a copy in each (thirteenth
    review)."""
    if not statement_cancelled(exc):
        return None
    bound = session_bound_s(exc, "statement_timeout")
    return bound if bound is not None and "statement timeout" in str(_driver_error(exc)).lower() else None


def lock_outlasts_statement(exc: BaseException) -> bool:
    """For a statement cancelled at its statement_timeout (``statement_cancelled``): whether a lock wait of its
    connection ends there too, not at lock_timeout: the connection's lock_timeout (the operator's own, kept where they
    set one) is none (0) or not below its statement_timeout. Then the statement may have waited for a lock, not run,
    all that time. The web server's engine never has such bounds (``_bound_waits``); the worker and the commands keep
    the operator's as they are. An error that carries no bounds (raised outside make_engine's engines) counts as not."""
    bounds = getattr(_driver_error(exc), _BOUNDS_ATTR, None)
    if not bounds:
        return False
    lock_ms, statement_ms = bounds.get("lock_timeout", 0), bounds.get("statement_timeout", 0)
    return statement_ms > 0 and (lock_ms == 0 or lock_ms >= statement_ms)


def idle_refusal(exc: BaseException) -> str | None:
    """The one sentence for a transaction PostgreSQL ended because it was left idle past the session's
    idle_in_transaction_session_timeout (25P03: the server ends the whole session; IDLE_IN_TRANSACTION_MS, or the
    operator's own, named where noted); None for any other error. The transaction was rolled back whole. Trying again
    at once is no advice for it (it said so): no transaction of the project idles for long (the module docstring), so
    one that did is a fault to report (a read-only review of the fifteenth review's fixes)."""
    if sqlstate(exc) != "25P03":
        return None
    bound = session_bound_s(exc, "idle_in_transaction_session_timeout")
    past = f"longer than {bound:g} s" if bound is not None else "longer than its bound"
    return (f"the database ended this change's transaction because it sat idle {past} "
            "(idle_in_transaction_session_timeout); nothing of the change was saved; no transaction of this program "
            "should sit idle that long, so this is a fault in it: please report it")


def bound_refusal(exc: BaseException) -> str | None:
    """The one sentence for a database bound that ran out: a lock not granted (``lock_refusal``), a statement
    cancelled (``statement_refusal``) or a transaction left idle too long (``idle_refusal``); None for any other error.
    The web page, the Rate tab and the commands all say this one (app.ui, app.ui_rate_tab, app.__main__,
    app.cli_export)."""
    return lock_refusal(exc) or statement_refusal(exc) or idle_refusal(exc)


def unusable_refusal(exc: BaseException) -> str:
    """The one sentence for a database error that is no bound's (``bound_refusal``): the database out of reach (a
    refused connection) or the file not a database, in the driver's first line. The commands say it (app.__main__,
    db.migrate's steps before a migration)."""
    cause = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"the database could not be used ({cause[0] if cause else type(exc).__name__})"


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
