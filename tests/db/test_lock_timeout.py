"""Lock waits on PostgreSQL have SQLite's bound (db.engine.BUSY_TIMEOUT_MS as ``lock_timeout``), and the paths that
mean to wait longer still do (eleventh review)."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from db import engine as db_engine
from db import migrate, presence
from db.engine import is_outage, lock_refusal, make_engine, session_factory, write_session
from db.models import LiveProcess, Rater
from tests.db.lock_support import ended_behind

BOUND_MS = 300  # BUSY_TIMEOUT_MS for these tests
OUTLASTED_S = 4 * BOUND_MS / 1000  # a wait still going on this long after it began has outlasted the bound


@pytest.fixture
def short_bound(monkeypatch):
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", BOUND_MS)


def _holder(factory, *, pg: str):
    """An open transaction holding a lock: PostgreSQL runs ``pg``; SQLite takes its write lock (BEGIN IMMEDIATE)."""
    held = factory()
    held.execute(text(pg) if held.get_bind().dialect.name == "postgresql" else text("SELECT 1"))
    return held


def test_a_write_behind_a_held_row_lock_fails_after_the_bound_as_a_lock_not_granted(db_url, short_bound):
    """A write transaction behind another's row lock (SQLite: its write lock) fails once the bound runs out, with an
    error that ``lock_refusal`` words and ``is_outage`` counts as passing (the worker tries again, as it does for
    SQLite's "database is locked"). On PostgreSQL the wait had no bound, and its lock_not_available (55P03, class 55)
    was counted a refusal for good, which ended the worker."""
    engine = make_engine(db_url)
    factory = session_factory(engine)
    try:
        with write_session(factory) as s:
            s.add(Rater(name="held", role="rater", password_hash="x$hash"))
        held = _holder(factory, pg="SELECT id FROM raters WHERE name = 'held' FOR UPDATE")
        out: dict = {}

        def write():
            try:
                with write_session(factory) as s:
                    s.execute(select(Rater.id).where(Rater.name == "held").with_for_update()).all()
                    s.execute(text("UPDATE raters SET role = 'admin' WHERE name = 'held'"))
                out["result"] = "written"
            except OperationalError as exc:
                out["result"] = exc

        ended = ended_behind(held, write)
        assert ended, "the write still waited for the lock long after the bound"
        exc = out["result"]
        assert isinstance(exc, OperationalError), exc
        assert is_outage(exc)
        assert lock_refusal(exc) == (f"the database is busy: another transaction held a lock this needed for more "
                                     f"than {BOUND_MS / 1000:g} s, so the change that waited for it was not saved; "
                                     "try again in a moment")
        with write_session(factory) as s:
            assert s.scalar(select(Rater.role).where(Rater.name == "held")) == "rater"  # rolled back whole
    finally:
        engine.dispose()


def test_a_start_still_waits_past_the_bound_for_a_downgrades_lock(db_url, short_bound, caplog):
    """Presence.start() waits up to START_WAIT_S for a downgrade holding live_processes (PostgreSQL: LOCK TABLE ...
    IN SHARE MODE; SQLite: the write lock), past the bound: each try gives up at the bound and is tried again, then
    the process registers once the lock is let go."""
    engine = make_engine(db_url)
    factory = session_factory(engine)
    proc = presence.Presence(factory, "server", migrate.head_revision(), interval_s=3600)
    try:
        held = _holder(factory, pg=f"LOCK TABLE {presence.TABLE} IN SHARE MODE")
        thread = threading.Thread(target=proc.start, daemon=True)
        try:
            with caplog.at_level(logging.INFO, logger="db.presence"):
                thread.start()
                thread.join(OUTLASTED_S)
                waited = thread.is_alive()
        finally:
            held.commit()
            held.close()
            thread.join(60)
        assert waited, "the registration gave up within the bound"
        assert not thread.is_alive()
        assert any("waits for a database write lock" in r.getMessage() for r in caplog.records), caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        with write_session(factory) as s:  # registered once, and nothing else: a 'worker' row here once was the
            # heartbeat of a Worker an earlier test left running (tests/conftest.py's _no_heartbeat_left_running)
            assert s.execute(select(LiveProcess.id, LiveProcess.kind)).all() == [(proc.row_id, "server")]
    finally:
        proc.close()
        engine.dispose()


def _pg_only(url: str) -> None:
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL's advisory and table locks")


def _downgrade_behind(url: str, hold, release) -> tuple[bool, dict]:
    """``hold()``, then `db downgrade 0015` in a thread; whether it still waited OUTLASTED_S later, and its outcome
    once ``release()`` let the lock go."""
    out: dict = {}

    def run():
        try:
            migrate.downgrade(url, "0015")
            out["result"] = "done"
        except Exception as exc:  # said in the assertion below
            out["result"] = exc

    hold()
    thread = threading.Thread(target=run, daemon=True)
    try:
        thread.start()
        thread.join(OUTLASTED_S)
        waited = thread.is_alive()
    finally:
        release()
        thread.join(120)
    assert not thread.is_alive()
    return waited, out


def test_a_downgrade_still_waits_past_the_bound_for_the_migration_lock(empty_db_url, short_bound):
    """The migration lock (pg_advisory_lock: lock_timeout bounds it too) is waited for without a bound
    (migrations/env.py sets its own lock_timeout 0), not given up at BUSY_TIMEOUT_MS."""
    _pg_only(empty_db_url)
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    holder = engine.connect()
    key = {"key": migrate.MIGRATION_LOCK_KEY}
    try:
        waited, out = _downgrade_behind(
            empty_db_url,
            lambda: holder.execute(text("SELECT pg_advisory_lock(:key)"), key),
            lambda: holder.execute(text("SELECT pg_advisory_unlock(:key)"), key))
    finally:
        holder.close()
        engine.dispose()
    assert waited, "the downgrade gave up waiting for the migration lock within the bound"
    assert out["result"] == "done", out
    assert migrate.current_revision(empty_db_url) == "0015"


def test_a_downgrade_still_waits_past_the_bound_for_live_processes(empty_db_url, short_bound):
    """The downgrade's LOCK TABLE live_processes IN SHARE MODE, behind a registration's open transaction, waits for
    the migration's own bound (db.migrate.LOCK_TIMEOUT_S), not BUSY_TIMEOUT_MS."""
    _pg_only(empty_db_url)
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    held = session_factory(engine)()
    try:
        waited, out = _downgrade_behind(
            empty_db_url,
            lambda: held.execute(text(f"LOCK TABLE {presence.TABLE} IN ROW EXCLUSIVE MODE")),
            held.rollback)
    finally:
        held.close()
        engine.dispose()
    assert waited, "the downgrade gave up waiting for live_processes within the bound"
    assert out["result"] == "done", out
    assert migrate.current_revision(empty_db_url) == "0015"


# -- statement_timeout, the operator's own bounds, and the sentence of each refusal (twelfth review) ------------------


def _settings_of(engine) -> dict[str, str]:
    with engine.connect() as c:
        return {name: c.execute(text(f"SHOW {name}")).scalar_one() for name in ("lock_timeout", "statement_timeout")}


def test_the_web_servers_statements_are_bounded_and_a_cancelled_one_is_one_sentence(db_url, monkeypatch, tmp_path):
    """On PostgreSQL nothing bounded how long a statement of the web server ran. The server's engine (app.cli_serve.
    build_services) now sets statement_timeout (db.engine.WEB_STATEMENT_TIMEOUT_MS): a statement past it is cancelled
    by PostgreSQL (query_canceled, 57014), its transaction rolled back whole, and the page and the commands say one
    sentence naming the bound. The other engines (the worker's, the migrations', the exports', the commands') get no
    statement bound."""
    from app.__main__ import refusal
    from app.cli_serve import build_services
    from app.settings import Settings

    _pg_only(db_url)
    monkeypatch.setattr(db_engine, "WEB_STATEMENT_TIMEOUT_MS", BOUND_MS)
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", BOUND_MS // 3)  # below the statement bound, as ours are
    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": db_url,
                                  "model": str(tmp_path / "model")}, environ={})
    engine, services = build_services(settings)
    plain = make_engine(db_url)
    try:
        assert _settings_of(engine) == {"lock_timeout": f"{BOUND_MS // 3}ms",
                                        "statement_timeout": f"{BOUND_MS}ms"}
        assert _settings_of(plain)["statement_timeout"] == "0"  # the worker's, migrations', exports' engines
        with pytest.raises(OperationalError) as cancelled:
            with write_session(services.factory) as s:
                s.add(Rater(name="cut", role="rater", password_hash="x$hash"))
                s.flush()
                s.execute(text("SELECT pg_sleep(5)"))  # without a bound it ends after 5 s, and the rater is saved
        exc = cancelled.value
        assert exc.orig.sqlstate == "57014" and "statement timeout" in str(exc.orig)  # PostgreSQL's own words
        expected = (f"the database is busy: a statement of this ran for more than {BOUND_MS / 1000:g} s, its bound, "
                    "and was cancelled, so the change it belonged to was not saved; try again in a moment")
        assert db_engine.bound_refusal(exc) == expected and refusal(exc) == expected
        assert lock_refusal(exc) is None
        assert is_outage(exc)  # a worker meeting an operator's bound waits and tries again, as for a lock
        with write_session(services.factory) as s:
            assert s.scalar(select(Rater.id).where(Rater.name == "cut")) is None  # rolled back whole
    finally:
        plain.dispose()
        engine.dispose()


def test_an_operators_own_bounds_are_kept_and_named(empty_db_url, short_bound):
    """A role's, a database's or the URL's own lock_timeout or statement_timeout was overridden by the session's SET
    (BUSY_TIMEOUT_MS). They are kept now (pg_settings' source is not "default"), and a lock wait that outlasts the
    operator's lock_timeout names that bound, not BUSY_TIMEOUT_MS. Where the operator set none, ours applies."""
    from sqlalchemy import make_url

    _pg_only(empty_db_url)
    name = make_url(empty_db_url).database
    _with_held_table(empty_db_url)
    # the URL's own options: source "client"
    url_engine = make_engine(f"{empty_db_url}?options=-c%20lock_timeout%3D700")
    ours = make_engine(empty_db_url)
    try:
        assert _settings_of(url_engine) == {"lock_timeout": "700ms", "statement_timeout": "0"}
        assert _settings_of(ours)["lock_timeout"] == f"{BOUND_MS}ms"
        holder = ours.connect()
        try:
            holder.execute(text("SELECT x FROM held FOR UPDATE"))
            with pytest.raises(OperationalError) as refused, url_engine.connect() as c:
                c.execute(text("SELECT x FROM held FOR UPDATE"))
        finally:
            holder.rollback()
            holder.close()
        assert refused.value.orig.sqlstate == "55P03"
        assert lock_refusal(refused.value) == ("the database is busy: another transaction held a lock this needed for "
                                               "more than 0.7 s, so the change that waited for it was not saved; try "
                                               "again in a moment")
    finally:
        url_engine.dispose()
        ours.dispose()
    # a role's (in this database: source "database user") and a database's ("database")
    setter = make_engine(empty_db_url)
    with setter.connect() as c:
        c.execute(text(f'ALTER ROLE CURRENT_USER IN DATABASE "{name}" SET lock_timeout = 800'))
        c.execute(text(f'ALTER DATABASE "{name}" SET statement_timeout = 9000'))
        c.commit()
    setter.dispose()
    kept = make_engine(empty_db_url, bound_statements=True)
    try:
        assert _settings_of(kept) == {"lock_timeout": "800ms", "statement_timeout": "9s"}
    finally:
        kept.dispose()


def test_a_nowait_refusal_is_not_said_as_a_wait(db_url, short_bound):
    """A lock refused at once, not waited for: PostgreSQL's FOR UPDATE NOWAIT (55P03, as a lock_timeout that ran out)
    was said as "another transaction held a lock this needed for more than 10 s", a wait that never happened."""
    _pg_only(db_url)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    try:
        with write_session(factory) as s:
            s.add(Rater(name="held", role="rater", password_hash="x$hash"))
        held = _holder(factory, pg="SELECT id FROM raters WHERE name = 'held' FOR UPDATE")
        try:
            with pytest.raises(OperationalError) as refused, write_session(factory) as s:
                s.execute(select(Rater.id).where(Rater.name == "held").with_for_update(nowait=True)).all()
        finally:
            held.rollback()
            held.close()
        assert refused.value.orig.sqlstate == "55P03"
        sentence = lock_refusal(refused.value)
        assert sentence == ("the database is busy: another transaction or statement held a lock this needed, which is "
                            "not waited for here, so the change that needed it was not saved; try again in a moment")
    finally:
        engine.dispose()


def test_sqlites_table_locked_is_not_said_as_a_wait(tmp_path):
    """SQLite's "database table is locked" (SQLITE_LOCKED, 6: a table another statement of the same connection is
    reading) is answered at once, without the busy timeout, and was said as a wait of more than 10 s."""
    import sqlite3

    connection = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
        reading = connection.execute("SELECT x FROM t")
        reading.fetchone()  # a statement still reading t
        with pytest.raises(sqlite3.OperationalError) as locked:
            connection.execute("DROP TABLE t")
        reading.close()
    finally:
        connection.close()
    assert locked.value.sqlite_errorcode == sqlite3.SQLITE_LOCKED
    assert lock_refusal(locked.value) == ("the database is busy: another transaction or statement held a lock this "
                                          "needed, which is not waited for here, so the change that needed it was not "
                                          "saved; try again in a moment")


def test_an_operators_cancel_is_said_as_one(db_url):
    """A statement an operator cancelled (pg_cancel_backend: 57014, as a statement_timeout) is said as such."""
    _pg_only(db_url)
    engine = make_engine(db_url)
    try:
        victim, canceller = engine.connect(), engine.connect()
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar_one()
        victim.commit()

        def cancel():  # once the victim's statement runs
            query = text("SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = :p AND state = 'active' "
                         "AND query LIKE '%pg_sleep%'")
            while not canceller.execute(query, {"p": pid}).scalar():
                canceller.rollback()  # a new snapshot of pg_stat_activity
                time.sleep(0.01)

        thread = threading.Thread(target=cancel, daemon=True)
        thread.start()
        try:
            with pytest.raises(OperationalError) as cancelled:
                victim.execute(text("SELECT pg_sleep(30)"))
        finally:
            thread.join(60)
            victim.close()
            canceller.close()
        assert cancelled.value.orig.sqlstate == "57014"
        assert db_engine.statement_timeout_ran_out_s(cancelled.value) is None
        assert db_engine.bound_refusal(cancelled.value) == (
            "the database cancelled a statement of this at an operator's request, so the change it belonged to was not "
            "saved; try again in a moment")
    finally:
        engine.dispose()


# -- one round trip at connect; the web server's bounds within its own; a lock wait cut by a statement bound (thirteenth
# review) -------------------------------------------------------------------------------------------------------------


def _round_trips_at_connect(engine) -> int:
    """How many round trips a new connection of ``engine`` makes in its ``connect`` hooks (db.engine's): read from
    libpq's own trace of the wire (psycopg's ``PGconn.trace``), each round trip ending in the server's ReadyForQuery.
    The engine's first connection also runs SQLAlchemy's one-time dialect set-up, so a second one, opened while the
    first is held, is counted."""
    import os
    import tempfile

    import psycopg
    from sqlalchemy import event

    traces: list[str] = []

    @event.listens_for(engine, "do_connect")
    def _traced(dialect, _record, cargs, cparams):
        connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
        handle, path = tempfile.mkstemp(prefix="seiko-pg-trace-")
        connection.pgconn.trace(handle)
        connection.pgconn.set_trace_flags(psycopg.pq.Trace.SUPPRESS_TIMESTAMPS)
        connection.seiko_trace = (handle, path)
        return connection

    @event.listens_for(engine, "connect")  # after make_engine's own hook: it ran first
    def _untraced(dbapi_connection, _record):
        handle, path = dbapi_connection.seiko_trace
        dbapi_connection.pgconn.untrace()
        os.close(handle)
        with open(path) as f:
            traces.append(f.read())
        os.unlink(path)

    with engine.connect() as first, engine.connect() as second:
        first.execute(text("SELECT 1"))
        second.execute(text("SELECT 1"))
    return sum(line.split("\t")[2] == "ReadyForQuery" for line in traces[1].splitlines() if line.startswith("B\t"))


def test_a_connection_sets_its_bounds_in_one_round_trip(db_url, short_bound):
    """Each new PostgreSQL connection read pg_settings, then sent a SET for each bound left at its default: two round
    trips on the worker's and the commands' engines, three on the web server's, before its first statement. It is one
    statement now, and the bounds are still ours where none is set."""
    _pg_only(db_url)
    for bound_statements, expected in ((False, {"lock_timeout": f"{BOUND_MS}ms", "statement_timeout": "0"}),
                                       (True, {"lock_timeout": f"{BOUND_MS}ms",
                                               "statement_timeout": f"{db_engine.WEB_STATEMENT_TIMEOUT_MS // 1000}s"})):
        engine = make_engine(db_url, bound_statements=bound_statements)
        try:
            assert _round_trips_at_connect(engine) == 1
            assert _settings_of(engine) == expected
        finally:
            engine.dispose()


def _held_row(engine):
    """A connection of ``engine`` holding a row lock (FOR UPDATE) on the table ``held``."""
    holder = engine.connect()
    holder.execute(text("SELECT x FROM held FOR UPDATE"))
    return holder


def _refused_behind_a_held_row(engine, plain) -> OperationalError:
    """What ``engine`` raises for a SELECT ... FOR UPDATE of the row ``plain`` holds (``_held_row``), the holder let
    go afterwards."""
    holder = _held_row(plain)
    try:
        with pytest.raises(OperationalError) as refused, engine.connect() as c:
            c.execute(text("SELECT x FROM held FOR UPDATE"))
    finally:
        holder.rollback()
        holder.close()
    return refused.value


def _with_held_table(url: str) -> None:
    admin = make_engine(url)
    with admin.connect() as c:
        c.execute(text("CREATE TABLE held (x integer)"))
        c.execute(text("INSERT INTO held VALUES (1)"))
        c.commit()
    admin.dispose()


def test_the_web_servers_bounds_stay_within_its_own(empty_db_url, monkeypatch):
    """The web server's engine kept an operator's lock_timeout and statement_timeout whatever they were: with their
    lock_timeout 0 (none) or above its statement bound, a page action behind a lock waited until the statement bound
    and was said as a statement that ran long; with their statement_timeout longer than the page's 60 s (here 2 min),
    an action could outlast the page. Its statement bound is at most its own now, and its lock bound below that (a
    third of it where the operator's is none or not below it): a lock wait ends as a lock not granted, in the lock
    sentence naming that bound. A shorter bound of the operator's is kept (test_an_operators_own_bounds_are_kept_and_
    named)."""
    _pg_only(empty_db_url)
    monkeypatch.setattr(db_engine, "WEB_STATEMENT_TIMEOUT_MS", 600)
    _with_held_table(empty_db_url)
    web = make_engine(f"{empty_db_url}?options=-c%20lock_timeout%3D0%20-c%20statement_timeout%3D120000",
                      bound_statements=True)
    plain = make_engine(empty_db_url)
    try:
        assert _settings_of(web) == {"lock_timeout": "200ms", "statement_timeout": "600ms"}
        refused = _refused_behind_a_held_row(web, plain)
        assert refused.orig.sqlstate == "55P03"
        assert db_engine.bound_refusal(refused) == (
            "the database is busy: another transaction held a lock this needed for more than 0.2 s, so the change that "
            "waited for it was not saved; try again in a moment")
    finally:
        web.dispose()
        plain.dispose()


def test_a_lock_wait_cut_by_the_statement_bound_is_not_said_as_a_long_statement(empty_db_url):
    """Where the operator's lock_timeout is none (0) or not below their statement_timeout (kept on the engines other
    than the web server's: a command's, the worker's), a statement behind a lock is cancelled at the statement bound
    (57014), and was said as one that "ran for more than 0.5 s". It says now that it ran or waited for a lock that
    long; one whose lock bound is the shorter keeps the plain sentence."""
    _pg_only(empty_db_url)
    _with_held_table(empty_db_url)
    cut = make_engine(f"{empty_db_url}?options=-c%20lock_timeout%3D0%20-c%20statement_timeout%3D500")
    plain = make_engine(empty_db_url)
    try:
        cancelled = _refused_behind_a_held_row(cut, plain)
        assert cancelled.orig.sqlstate == "57014"
        assert db_engine.bound_refusal(cancelled) == (
            "the database is busy: a statement of this ran, or waited for a lock another transaction held, for more "
            "than 0.5 s, its bound, and was cancelled, so the change it belonged to was not saved; try again in a "
            "moment")
    finally:
        cut.dispose()
        plain.dispose()
    shorter_lock = make_engine(f"{empty_db_url}?options=-c%20lock_timeout%3D200%20-c%20statement_timeout%3D300")
    try:
        with pytest.raises(OperationalError) as cancelled, shorter_lock.connect() as c:
            c.execute(text("SELECT pg_sleep(5)"))
        assert db_engine.bound_refusal(cancelled.value) == (
            "the database is busy: a statement of this ran for more than 0.3 s, its bound, and was cancelled, so the "
            "change it belonged to was not saved; try again in a moment")
    finally:
        shorter_lock.dispose()


# -- thirteenth review, PostgreSQL bounds (second pass) ----------------------------------------------------------------


def _raw_url(url: str) -> str:
    """``url`` as libpq takes it (psycopg's own connect, no SQLAlchemy driver name)."""
    from sqlalchemy import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _shown(raw) -> dict[str, str]:
    return {name: raw.execute(f"SHOW {name}").fetchone()[0] for name in ("lock_timeout", "statement_timeout")}


@pytest.mark.parametrize("bound_statements", [False, True])
def test_a_bound_left_in_the_session_by_an_earlier_client_is_not_taken_as_the_operators(db_url, short_bound,
                                                                                        monkeypatch, bound_statements):
    """Under a pooler's transaction pooling (pgbouncer) one server session serves many clients, and a SET or
    set_config(..., false) of an earlier one is still there at connect, with pg_settings' source "session": it was
    taken as the operator's own bound and kept (here a lock bound of 0.1 s and a statement bound of 0.4 s, neither
    ours). At connect "session" can only be such a leak: the bounds are ours, as where none is set (the lock bound
    BUSY_TIMEOUT_MS; the statement bound WEB_STATEMENT_TIMEOUT_MS on the web server's engine, none on the others)."""
    import types

    import psycopg

    _pg_only(db_url)
    monkeypatch.setattr(db_engine, "WEB_STATEMENT_TIMEOUT_MS", 600)
    with psycopg.connect(_raw_url(db_url), autocommit=True) as raw:
        raw.execute("SELECT set_config('lock_timeout', '100', false), set_config('statement_timeout', '400', false)")
        assert _shown(raw) == {"lock_timeout": "100ms", "statement_timeout": "400ms"}  # the earlier client's
        record = types.SimpleNamespace(info={})
        db_engine._bound_waits(raw, record, bound_statements=bound_statements)  # what make_engine runs at connect
        statement_ms = 600 if bound_statements else 0
        assert _shown(raw) == {"lock_timeout": f"{BOUND_MS}ms",
                               "statement_timeout": f"{statement_ms}ms" if statement_ms else "0"}
        assert record.info[db_engine._BOUNDS_KEY] == {"lock_timeout": BOUND_MS, "statement_timeout": statement_ms}


def test_session_bounds_set_are_in_force_after_a_rollback(db_url):
    """set_session_bounds sent its SET in the connection's transaction and noted the bound at once: a rollback undid
    the SET but not the note, so a refusal named a bound that was not in force. The SETs run in autocommit now (a
    rollback leaves them), and a connection inside a transaction is refused, its bounds unchanged."""
    _pg_only(db_url)
    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            db_engine.set_session_bounds(c, lock_timeout=1234, statement_timeout=4321)
            c.rollback()
            shown = {name: c.execute(text(f"SHOW {name}")).scalar_one() for name in ("lock_timeout", "statement_timeout")}
            assert shown == {"lock_timeout": "1234ms", "statement_timeout": "4321ms"}
            assert db_engine.session_bounds(c) == {"lock_timeout": 1234, "statement_timeout": 4321}
            assert c.in_transaction()  # the SHOWs began one
            with pytest.raises(ValueError, match="commit or roll back"):
                db_engine.set_session_bounds(c, lock_timeout=1)
            c.rollback()
            assert c.execute(text("SHOW lock_timeout")).scalar_one() == "1234ms"
            assert db_engine.session_bounds(c)["lock_timeout"] == 1234
            c.rollback()
    finally:
        engine.dispose()


def test_the_workers_lock_bound_is_a_third_of_the_operators_shorter_statement_bound(empty_db_url, tmp_path):
    """The worker's engine keeps the operator's statement_timeout; where that is not above our lock bound
    (BUSY_TIMEOUT_MS, 10 s), our lock bound is a third of it, so a lock wait ends first, as a lock not granted: a
    statement bound of 5 s gives a lock bound of 1666 ms (5000 // 3). One of 20 s leaves ours, 10 s."""
    from app.settings import Settings
    from app.worker import Worker

    _pg_only(empty_db_url)
    for statement_ms, expected in ((5000, {"lock_timeout": "1666ms", "statement_timeout": "5s"}),
                                   (20000, {"lock_timeout": "10s", "statement_timeout": "20s"})):
        settings = Settings.from_env({"data_dir": str(tmp_path / "data"),
                                      "db_url": f"{empty_db_url}?options=-c%20statement_timeout%3D{statement_ms}",
                                      "model": str(tmp_path / "model")}, environ={})
        worker = Worker(settings, "worker-1", device="cpu")
        try:
            assert _settings_of(worker.engine) == expected
        finally:
            worker.engine.dispose()


def test_a_migration_statement_cut_where_the_lock_bound_is_shorter_is_said_as_one_that_ran(empty_db_url):
    """The migration's sentence for a statement cut at the operator's statement_timeout (57014) was fixed text: it
    named the role, the database and the URL but not the server's configuration, and said the statement "ran, or
    waited for a table's lock, that long" where the lock bound in force was below the statement bound (a lock wait
    ends first there, as a lock not granted). It follows the lock bound now, as db.engine.statement_refusal and the
    worker's cancel reason do, through the one test of a statement_timeout that ran out
    (db.engine.statement_timeout_ran_out_s)."""
    from app.worker import _cancel_reason

    _pg_only(empty_db_url)
    _with_held_table(empty_db_url)
    shorter_lock = make_engine(f"{empty_db_url}?options=-c%20lock_timeout%3D200%20-c%20statement_timeout%3D300")
    try:
        with pytest.raises(OperationalError) as cancelled, shorter_lock.connect() as c:
            c.execute(text("SELECT pg_sleep(5)"))
    finally:
        shorter_lock.dispose()
    exc = cancelled.value
    assert exc.orig.sqlstate == "57014" and db_engine.statement_timeout_ran_out_s(exc) == 0.3
    assert migrate._migration_refusal(exc) == (
        "the database cancelled a statement of the migration at its statement_timeout of 0.3 s (set for this role, "
        "database or URL, or in the server's configuration; the statement ran that long), so nothing was changed; run "
        "it again with a longer bound for the migration (in the database URL, SEIKO_DB_URL or --db-url, add `-c statement_timeout=0` to its options)")
    assert _cancel_reason(exc) == "the database's statement_timeout of 0.3 s ran out: it ran that long"
    cut = make_engine(f"{empty_db_url}?options=-c%20lock_timeout%3D0%20-c%20statement_timeout%3D300")
    plain = make_engine(empty_db_url)
    try:
        cancelled = _refused_behind_a_held_row(cut, plain)
    finally:
        cut.dispose()
        plain.dispose()
    assert migrate._migration_refusal(cancelled) == (
        "the database cancelled a statement of the migration at its statement_timeout of 0.3 s (set for this role, "
        "database or URL, or in the server's configuration; the statement ran, or waited for a table's lock, that "
        "long), so nothing was changed; run it again with a longer bound for the migration (in the database URL, SEIKO_DB_URL or --db-url, add "
        "`-c statement_timeout=0` to its options) or once the server and the workers are stopped")
    assert db_engine.statement_timeout_ran_out_s(ValueError("canceling statement due to statement timeout")) is None


@contextmanager
def _reads_held_off(url: str, table: str) -> Iterator[None]:
    """While inside, a read of ``table`` is held off: on PostgreSQL by an open transaction holding it in ACCESS
    EXCLUSIVE mode (``_holder``); on SQLite by a connection in exclusive locking mode that has written, which holds off
    every other connection, readers too (a WAL reader waits for no other lock). Let go on the way out."""
    if url.startswith("postgresql"):
        engine = make_engine(url)
        held = _holder(session_factory(engine), pg=f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            held.rollback()
            held.close()
            engine.dispose()
        return
    connection = sqlite3.connect(migrate._sqlite_file(url), isolation_level=None)
    try:
        connection.execute("PRAGMA locking_mode = EXCLUSIVE")
        connection.execute("BEGIN EXCLUSIVE")
        connection.execute(f"DELETE FROM {table} WHERE 0")  # a write: the exclusive lock is taken, and kept
        yield
    finally:
        connection.close()  # its lock with it


UNREAD = (f"another transaction held a lock the read needed for more than {BOUND_MS / 1000:g} s (a migration, or "
          "another open transaction)")


def test_a_revision_read_held_off_by_a_lock_is_said_as_such_by_db_current_serve_worker_and_upgrade(
        db_url, short_bound, tmp_path, capsys):
    """The schema revision's read (db.migrate.current_revision, check_at_head) raised the database's bare error for a
    lock held past its bound: `db current`, `serve` and `worker` said the rating page's "the change that waited for it
    was not saved", and `db upgrade` (its read wrapped as a migration's) "its write lock was not granted" on SQLite,
    though a read takes none. Found by the fourteenth review. They say the revision could not be read, and why."""
    from app.__main__ import main as app_main

    expected = f"the schema revision could not be read: {UNREAD}; nothing was changed; try again in a moment"
    with _reads_held_off(db_url, "alembic_version"):
        with pytest.raises(migrate.RevisionUnread) as unread:
            migrate.check_at_head(db_url)
        assert str(unread.value) == expected
        with pytest.raises(migrate.RevisionUnread) as unread:
            migrate.upgrade(db_url)
        assert str(unread.value) == expected
        for argv in (["db", "current"], ["serve"], ["worker", "--once"]):
            assert app_main([*argv, "--db-url", db_url, "--data-dir", str(tmp_path / "data")]) == 1, argv
            assert capsys.readouterr().err == f"error: {expected}\n", argv
    assert migrate.current_revision(db_url) == migrate.head_revision()


def test_a_read_before_a_migration_held_off_by_a_lock_is_said_as_a_read(db_url, short_bound, monkeypatch):
    """A read of the migration command's checks (here check_downgrade's look for disabled accounts) held off by
    another connection's lock was said as a migration's own lock: on SQLite "its write lock was not granted", though a
    read takes none (held off by an exclusive lock). Found by the fourteenth review. It says a read was held off."""
    from db.errors import InvalidInput

    real = migrate.current_revision
    with ExitStack() as stack:

        def then_held_off(url: str) -> str | None:
            revision = real(url)
            stack.enter_context(_reads_held_off(url, "raters"))  # after the revision's read, before the accounts'
            return revision

        monkeypatch.setattr(migrate, "current_revision", then_held_off)
        with pytest.raises(InvalidInput) as refused:
            migrate.check_downgrade(db_url, "0001")
    # held off only by an exclusive lock (another migration, an admin's LOCK TABLE, SQLite's exclusive locking mode):
    # it said "(a server, a worker or an open transaction holds it); stop them" (fourteenth review)
    assert str(refused.value) == (f"the database is in use: a read before the migration was held off by a lock for "
                                  f"more than {BOUND_MS / 1000:g} s (a migration, or another open transaction); run it "
                                  "again once that is done; nothing was changed")


def test_a_read_before_a_migration_refused_or_cancelled_is_said_as_a_read():
    """The sentences of a read before the migration (``_migration_refusal(read=True)``) for a lock refused at once
    and for a read PostgreSQL cancelled, on errors made here as psycopg raises them (no PostgreSQL needed): the cancel
    said "the database cancelled a statement of the migration", and the lock "(a server, a worker or an open
    transaction holds it); stop them", neither true of a read. Found by the fourteenth review."""
    from types import SimpleNamespace

    from sqlalchemy.exc import OperationalError

    class PgError(Exception):
        def __init__(self, message: str, sqlstate: str) -> None:
            super().__init__(message)
            self.sqlstate = sqlstate

    def error(message: str, state: str, bounds: dict[str, int] | None = None) -> OperationalError:
        orig = PgError(message, state)
        if bounds is not None:  # what db.engine notes on the error of its connection (lock_timeout, statement_timeout)
            orig.seiko_bounds = bounds
        return OperationalError("SELECT ...", {}, orig)

    nowait = error("could not obtain lock on relation \"raters\"", "55P03", {"lock_timeout": 0, "statement_timeout": 0})
    nowait.orig.diag = SimpleNamespace(source_function="LockRelationOid")  # refused where asked for: NOWAIT
    assert migrate._migration_refusal(nowait, read=True) == (
        "the database is in use: a read before the migration needed a lock that was held and is not waited for (a "
        "migration, or another open transaction); run it again once that is done; nothing was changed")
    timed_out = error("canceling statement due to statement timeout", "57014",
                      {"lock_timeout": 200, "statement_timeout": 300})
    assert migrate._migration_refusal(timed_out, read=True) == (
        "a read before the migration was cancelled at the database's statement_timeout of 0.3 s (set for this role, "
        "database or URL, or in the server's configuration; the read ran that long), so nothing was changed; run it "
        "again with a longer bound for the migration (in the database URL, SEIKO_DB_URL or --db-url, add `-c statement_timeout=0` to its options)")
    operator = error("canceling statement due to user request", "57014")
    assert migrate._migration_refusal(operator, read=True) == (
        "a read before the migration was cancelled (an operator's cancel, or the database's statement_timeout), so "
        "nothing was changed; run it again")
    # a statement of the migration itself is still said as one
    assert migrate._migration_refusal(operator) == (
        "the database cancelled a statement of the migration (an operator's cancel, or its statement_timeout), so "
        "nothing was changed; run it again")


def test_a_migration_whose_revision_read_back_is_held_off_says_it_was_done(empty_db_url, short_bound, monkeypatch,
                                                                            tmp_path, capsys):
    """After a successful `db upgrade` or `db downgrade` the command reads the revision back to show it: a lock held
    past its bound there was said "the change that waited for it was not saved", with status 1, though the migration
    had committed (and a `db downgrade -1` run again would go down a second step). Found by the fourteenth review. It
    says the migration was done and only the read back failed, with status 0."""
    from app.__main__ import main as app_main

    migrate.upgrade(empty_db_url)

    def held_off_after(step, stack: ExitStack):
        def run(url: str, *args, **kwargs) -> None:
            step(url, *args, **kwargs)
            stack.enter_context(_reads_held_off(url, "alembic_version"))
        return run

    for name, argv, done in (("downgrade", ["db", "downgrade", "0015", "--yes"], "the downgrade to '0015'"),
                             ("upgrade", ["db", "upgrade"], "the upgrade to 'head'")):
        with ExitStack() as stack:
            monkeypatch.setattr(migrate, name, held_off_after(getattr(migrate, name), stack))
            assert app_main([*argv, "--db-url", empty_db_url, "--data-dir", str(tmp_path / "data")]) == 0, argv
        assert capsys.readouterr().err == (f"warning: {done} was done, but the schema revision could not be read back "
                                           f"afterwards: {UNREAD}; `python -m app db current` shows it\n")
        assert migrate.current_revision(empty_db_url) == ("0015" if name == "downgrade" else migrate.head_revision())


def test_a_connection_dropped_while_a_migration_sets_its_bounds_is_one_sentence(empty_db_url, monkeypatch, tmp_path,
                                                                                 capsys, caplog):
    """set_session_bounds (migrations/env.py's SETs) ran on the driver's own cursor: a connection dropped there (a
    server restart, an operator's pg_terminate_backend) raised psycopg's own error ("the connection is lost", from
    setting its autocommit back), which no refusal words, so `db upgrade` ended in a traceback, and the pool failed to
    reset the dead connection after it. Found by the fourteenth review. It runs through SQLAlchemy now: its
    OperationalError, the connection invalidated, one sentence, and nothing changed."""
    from app.__main__ import main as app_main

    _pg_only(empty_db_url)
    admin = make_engine(empty_db_url)
    real, calls = db_engine.set_session_bounds, []

    def dropped_first(connection, **bounds_ms: int) -> None:
        if not calls:  # the first SET of the migration's connection: its server process ends just before
            with admin.connect() as c:
                pid = connection.connection.dbapi_connection.info.backend_pid
                assert c.execute(text("SELECT pg_terminate_backend(:pid, 10000)"), {"pid": pid}).scalar_one()
        calls.append(bounds_ms)
        real(connection, **bounds_ms)

    monkeypatch.setattr(db_engine, "set_session_bounds", dropped_first)  # migrations/env.py imports it at each run
    try:
        with caplog.at_level(logging.WARNING):
            assert app_main(["db", "upgrade", "--db-url", empty_db_url, "--data-dir", str(tmp_path / "data")]) == 1
    finally:
        admin.dispose()
    assert calls, "the migration set no bounds"
    # the fifteenth review: a connection lost during a migration reads the revision back and says where it stands
    assert capsys.readouterr().err == (
        "error: the connection to the database was lost during the migration to head (terminating connection due to "
        "administrator command), and read back on a new connection the database is still at base: the migration was "
        "not applied, so nothing was changed; run it again\n")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text  # the pool's failed reset
    monkeypatch.undo()
    assert migrate.current_revision(empty_db_url) is None
