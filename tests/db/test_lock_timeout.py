"""Lock waits on PostgreSQL have SQLite's bound (db.engine.BUSY_TIMEOUT_MS as ``lock_timeout``), and the paths that
mean to wait longer still do (eleventh review)."""

from __future__ import annotations

import logging
import threading

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
        with write_session(factory) as s:
            assert s.scalars(select(LiveProcess.kind)).all() == ["server"]
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
