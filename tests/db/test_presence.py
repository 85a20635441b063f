"""Live processes (db.presence, migration 0016): a server or a worker keeps a row while it runs, so that `db
downgrade` can see it (a server, or a worker between jobs, left no mark before: tenth review of 6 Dec 2026)."""

import logging
import os
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from db import migrate, presence
from db.engine import make_engine, read_session, reading, session_factory, write_session
from db.errors import SchemaOutOfDate
from db.models import LiveProcess, utcnow


def _rows(factory):
    with read_session(factory) as s:
        return s.execute(select(LiveProcess.id, LiveProcess.kind, LiveProcess.host, LiveProcess.pid,
                                LiveProcess.heartbeat_at).order_by(LiveProcess.id)).all()


def _age_all(factory, seconds):
    """Every row's heartbeat set ``seconds`` into the past, directly (no sleeps)."""
    when = utcnow() - timedelta(seconds=seconds)
    with write_session(factory) as s:
        s.execute(update(LiveProcess).values(heartbeat_at=when))
    return when


def _live(factory):
    with read_session(factory) as s:
        return presence.live(s.connection())


def test_a_process_registers_refreshes_and_removes_its_row(db_factory):
    """start() registers kind, this host's name and this process's pid; a heartbeat refreshes heartbeat_at (a row gone
    meanwhile, deleted as stale after a long stall, is registered again); close() removes the row and ends the
    thread."""
    proc = presence.Presence(db_factory, "server", migrate.head_revision(), interval_s=3600)
    proc.start()
    try:
        ((row_id, kind, host, pid, _),) = _rows(db_factory)
        assert (row_id, kind, host, pid) == (proc.row_id, "server", socket.gethostname(), os.getpid())
        assert [(p.kind, p.pid) for p in _live(db_factory)] == [("server", os.getpid())]
        old = _age_all(db_factory, 3600)
        assert _live(db_factory) == []  # stale: as if the process had died
        proc.beat_once()
        ((_, _, _, _, beat_at),) = _rows(db_factory)
        assert beat_at > old + timedelta(seconds=3000) and [p.pid for p in _live(db_factory)] == [os.getpid()]
        with write_session(db_factory) as s:
            s.execute(LiveProcess.__table__.delete())
        proc.beat_once()
        assert [(r.id, r.kind) for r in _rows(db_factory)] == [(proc.row_id, "server")]
    finally:
        proc.close()
    assert _rows(db_factory) == [] and not proc._thread.is_alive()
    proc.beat_once()  # after close: writes nothing
    assert _rows(db_factory) == []


def test_a_stale_row_is_ignored_and_deleted_by_the_next_registration(db_factory):
    """A process killed with no clean exit leaves its row: once its heartbeat is STALE_AFTER_S old it is not live,
    and the next registration deletes it; a row just younger than that is live and kept."""
    head = migrate.head_revision()
    with write_session(db_factory) as s:
        dead = presence.register(s, kind="worker", head=head, host="gone", pid=11,
                                 now=utcnow() - timedelta(seconds=presence.STALE_AFTER_S + 1))
        slow = presence.register(s, kind="worker", head=head, host="slow", pid=12,
                                 now=utcnow() - timedelta(seconds=presence.STALE_AFTER_S - 10))
    assert [p.host for p in _live(db_factory)] == ["slow"]
    with write_session(db_factory) as s:
        fresh = presence.register(s, kind="server", head=head, host="new", pid=13)
    assert [r.id for r in _rows(db_factory)] == [slow, fresh] and dead not in (slow, fresh)
    assert [(p.kind, p.host, p.pid) for p in _live(db_factory)] == [("worker", "slow", 12), ("server", "new", 13)]


def test_a_heartbeat_that_cannot_be_written_is_a_warning_not_a_crash(db_factory, monkeypatch, caplog):
    """A heartbeat or the removal at exit that fails (the database restarting) is logged as a warning and the
    process goes on; it is tried again at the next heartbeat."""
    proc = presence.Presence(db_factory, "server", migrate.head_revision(), interval_s=3600)
    proc.start()
    real_beat = presence.beat

    def down(*args, **kwargs):
        raise OperationalError("UPDATE live_processes", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(presence, "beat", down)
    monkeypatch.setattr(presence, "unregister", down)
    old = _age_all(db_factory, 10)
    with caplog.at_level(logging.WARNING, logger="db.presence"):
        proc.beat_once()
        proc.close()
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 2 and "the server's heartbeat could not be written to the database (OperationalError: server " \
        "closed the connection unexpectedly)" in said[0] and "could not be removed" in said[1], said
    ((*_, beat_at),) = _rows(db_factory)
    assert beat_at == old  # nothing written; the row goes stale
    monkeypatch.setattr(presence, "beat", real_beat)


def test_a_registration_against_a_schema_that_moved_is_refused(empty_db_url):
    """A process registers in the transaction that reads the revision once more: a database not at this code's
    revision (a downgrade that ran after the process's own check, whose lock the registration waited for) refuses the
    start with SchemaOutOfDate and leaves no row; a database below 0016 has no table, and says so the same way."""
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    factory = session_factory(engine)
    try:
        with pytest.raises(SchemaOutOfDate, match=rf"changed from 0099 to {migrate.head_revision()} as the worker started"):
            with write_session(factory) as s:
                presence.register(s, kind="worker", head="0099")
        assert _rows(factory) == []
        migrate.downgrade(empty_db_url, "0015")
        with pytest.raises(SchemaOutOfDate, match=r"changed from 0016 to 0015 as the server started"):
            presence.Presence(factory, "server", "0016").start()
        with reading(engine) as connection:
            assert presence.live(connection) == []  # no table: nothing live, no error
    finally:
        engine.dispose()


def test_a_downgrade_is_refused_while_a_fresh_row_is_there_and_drops_the_table(empty_db_url):
    """migrate.downgrade refuses (LiveProcesses, one sentence naming kind, host and pid; nothing changed) while a row's
    heartbeat is fresh; a stale row, or refuse_live=False, lets it go on, and below 0016 the table is gone."""
    migrate.upgrade(empty_db_url)
    engine = make_engine(empty_db_url)
    factory = session_factory(engine)
    try:
        with write_session(factory) as s:
            presence.register(s, kind="worker", head=migrate.head_revision(), host="gpu1", pid=4242)
        with pytest.raises(migrate.LiveProcesses) as refused:
            migrate.downgrade(empty_db_url, "0015")
        assert str(refused.value).startswith("the database is in use by 1 live process(es) (a worker on host 'gpu1' "
                                             "with pid 4242, last heard from "), refused.value
        assert migrate.current_revision(empty_db_url) == migrate.head_revision() and len(_rows(factory)) == 1
        _age_all(factory, presence.STALE_AFTER_S + 1)
        migrate.downgrade(empty_db_url, "0015")
        assert migrate.current_revision(empty_db_url) == "0015"
        migrate.upgrade(empty_db_url)
        with write_session(factory) as s:
            presence.register(s, kind="server", head=migrate.head_revision(), host="web1", pid=1)
        migrate.downgrade(empty_db_url, "0015", refuse_live=False)
        assert migrate.current_revision(empty_db_url) == "0015"
        with reading(engine) as connection:
            migrate.refuse_live_processes(connection)  # below 0016: nothing to see, nothing refused
    finally:
        engine.dispose()


def test_close_does_not_wait_for_a_heartbeat_stuck_in_the_database(db_factory, monkeypatch, caplog):
    """A heartbeat stuck in a database call (a lock never granted) held the lock close() takes, so the server's exit
    would have waited for it without end: close() now gives up after CLOSE_WAIT_S with a warning, leaving the row to
    go stale."""
    import threading

    proc = presence.Presence(db_factory, "server", migrate.head_revision(), interval_s=3600)
    proc.start()
    entered, release = threading.Event(), threading.Event()

    def stuck(*args, **kwargs):
        entered.set()
        release.wait(30)
        return True

    monkeypatch.setattr(presence, "beat", stuck)
    monkeypatch.setattr(presence, "CLOSE_WAIT_S", 0.05)
    beating = threading.Thread(target=proc.beat_once)
    beating.start()
    try:
        assert entered.wait(30)
        with caplog.at_level(logging.WARNING, logger="db.presence"):
            proc.close()
        assert any("heartbeat is stuck in a database call" in r.getMessage() for r in caplog.records), caplog.text
        assert len(_rows(db_factory)) == 1  # left, to go stale
    finally:
        release.set()
        beating.join(30)


def _locked_error():
    """SQLite's "database is locked" (SQLITE_BUSY, 5) as SQLAlchemy raises it once the busy timeout runs out."""
    import sqlite3

    orig = sqlite3.OperationalError("database is locked")
    orig.sqlite_errorcode = 5
    return OperationalError("INSERT INTO live_processes", {}, orig)


def test_a_start_waits_for_a_write_lock_held_past_the_busy_timeout(db_factory, monkeypatch, caplog):
    """A write lock held longer than the busy timeout (a downgrade copying a large SQLite database) made the start
    give up registering with a warning, after a read of the schema that still saw the head (the downgrade not
    committed): the process went on unregistered and then served the older schema (found by a read-only review,
    tenth review). The registration is tried again while the lock is not granted, up to START_WAIT_S; past that, the
    warning as before."""
    real, calls = presence.register, []

    def busy_twice(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise _locked_error()
        return real(*args, **kwargs)

    monkeypatch.setattr(presence, "register", busy_twice)
    proc = presence.Presence(db_factory, "server", migrate.head_revision(), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="db.presence"):
        proc.start()
    try:
        assert len(calls) == 3 and [r.kind for r in _rows(db_factory)] == ["server"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    finally:
        proc.close()
    calls.clear()
    monkeypatch.setattr(presence, "START_WAIT_S", 0.0)  # never granted within the wait: said, as before
    late = presence.Presence(db_factory, "worker", migrate.head_revision(), interval_s=3600)
    with caplog.at_level(logging.WARNING, logger="db.presence"):
        late.start()
    late.close()
    assert len(calls) == 1 and any("could not register itself as live" in r.getMessage() for r in caplog.records)


def test_a_start_waits_through_a_statement_bound_as_through_a_lock_bound(db_url, caplog):
    """PostgreSQL, twelfth review (read-only): where an operator's own lock_timeout is kept (here 0: wait for good) and
    the web server's statement bound is shorter, a registration behind a held lock on the table (a `db downgrade`) was
    cancelled by the statement bound (57014), which was not waited through: a warning, and the server served
    unregistered. Both bounds are the operator's own here (the URL's options, kept by db.engine), 0.7 s for statements;
    the lock is held 2.5 s."""
    if not db_url.startswith("postgresql"):
        pytest.skip("a statement bound and a table lock are PostgreSQL's (SQLite's wait is the busy timeout's)")
    import threading

    from sqlalchemy import text

    engine = make_engine(f"{db_url}?options=-c%20lock_timeout%3D0%20-c%20statement_timeout%3D700",
                         bound_statements=True)
    holder_engine = make_engine(db_url)
    holder = holder_engine.connect()
    holder.execute(text("LOCK TABLE live_processes IN ACCESS EXCLUSIVE MODE"))
    release = threading.Timer(2.5, lambda: (holder.rollback(), holder.close()))
    proc = presence.Presence(session_factory(engine), "server", migrate.head_revision(), interval_s=3600)
    try:
        release.start()
        with caplog.at_level(logging.INFO, logger="db.presence"):
            proc.start()
        assert proc.row_id is not None  # registered, not given up
        assert [r.kind for r in _rows(session_factory(engine))] == ["server"]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert any("waits for a database write lock" in r.getMessage() for r in caplog.records)  # it did wait
    finally:
        release.join()
        proc.close()
        engine.dispose()
        holder_engine.dispose()


def test_a_close_while_the_start_waits_for_a_lock_leaves_no_row_and_no_heartbeat(db_factory, monkeypatch, caplog):
    """close() during a start that waits for a write lock (a worker stopped while a downgrade holds the database)
    cannot take the start's lock: it warned and returned, and the start then registered a row that stayed in the live
    processes until it went stale (found by a read-only review, nineteenth review). The start now removes it."""
    import threading

    real, waiting, release = presence.register, threading.Event(), threading.Event()

    def locked_until_released(*args, **kwargs):
        if not release.is_set():
            waiting.set()
            release.wait(30)
            raise _locked_error()
        return real(*args, **kwargs)

    monkeypatch.setattr(presence, "register", locked_until_released)
    monkeypatch.setattr(presence, "CLOSE_WAIT_S", 0.05)
    proc = presence.Presence(db_factory, "worker", migrate.head_revision(), interval_s=0.05)
    starting = threading.Thread(target=proc.start)
    starting.start()
    try:
        assert waiting.wait(30)
        with caplog.at_level(logging.WARNING, logger="db.presence"):
            proc.close()  # the start holds the lock: close gives up, as before
        assert any("heartbeat is stuck in a database call" in r.getMessage() for r in caplog.records), caplog.text
    finally:
        release.set()
        starting.join(30)
    assert not starting.is_alive()
    assert _rows(db_factory) == []  # registered after the close, then removed by the start itself
    assert not proc._thread.is_alive()


def test_close_waits_at_most_close_wait_s_in_all(db_factory, monkeypatch, caplog):
    """close() waited CLOSE_WAIT_S for the heartbeat thread and then CLOSE_WAIT_S more for the lock, twice what it
    says (found by a read-only review, tenth review): one deadline now, on a clock that the thread's join moves on by
    its whole wait (nothing sleeps)."""
    clock = [1000.0]
    monkeypatch.setattr(presence, "monotonic", lambda: clock[0])
    proc = presence.Presence(db_factory, "server", migrate.head_revision(), interval_s=3600)
    proc.start()

    class StuckThread:
        def is_alive(self):
            return True

        def join(self, timeout):
            clock[0] += timeout

    class StuckLock:
        waited: list = []

        def acquire(self, timeout):
            self.waited.append(timeout)
            return False

    real_thread = proc._thread
    proc._thread, proc._lock = StuckThread(), StuckLock()
    with caplog.at_level(logging.WARNING, logger="db.presence"):
        proc.close()
    real_thread.join(30)
    assert StuckLock.waited == [0.0], StuckLock.waited
    assert any("heartbeat is stuck in a database call" in r.getMessage() for r in caplog.records), caplog.text


def test_a_process_that_misses_one_heartbeat_behind_a_held_lock_still_holds_off_a_downgrade(db_factory, monkeypatch):
    """On a clock of the test's own, moved only by the heartbeat loop's own waits: a live server whose first heartbeat
    waited the whole lock bound for a write lock held elsewhere and failed, and whose next one waits the bound again,
    is 2 * 15 + 2 * 10 = 50 s past its last refresh while that write waits. A downgrade looking then took it for gone
    (the bound was three periods, 45 s: fifteenth review); it is refused now, and the late heartbeat lands."""
    import sqlite3
    from contextlib import contextmanager
    from datetime import UTC, datetime

    from db.engine import BUSY_TIMEOUT_MS

    clock = [datetime(2026, 12, 6, 12, 0, tzinfo=UTC)]
    start, bound = clock[0], BUSY_TIMEOUT_MS / 1000

    def advance(seconds):
        clock[0] += timedelta(seconds=seconds)

    monkeypatch.setattr(presence, "utcnow", lambda: clock[0])
    head = migrate.head_revision()
    proc = presence.Presence(db_factory, "server", head)  # the default period; its thread is never started
    with write_session(db_factory) as s:
        proc.row_id = presence.register(s, kind="server", head=head, host="web1", pid=4321, now=start)

    class Waits:
        """The loop's stop event: each wait moves the clock by the period asked; the third ends the loop."""
        count = 0

        def wait(self, seconds):
            advance(seconds)
            self.count += 1
            return self.count == 3

    looks, real_write = [], presence.write_session

    @contextmanager
    def behind_a_held_lock(factory):
        advance(bound)  # the write lock held elsewhere for the whole bound
        if not looks:
            looks.append(None)
            raise OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
        with read_session(factory) as s:  # a downgrade's look, made while this heartbeat still waits
            try:
                migrate.refuse_live_processes(s.connection(), now=clock[0])
                looks.append("went on")
            except migrate.LiveProcesses as exc:
                looks.append(str(exc))
        with real_write(factory) as s:
            yield s

    monkeypatch.setattr(presence, "write_session", behind_a_held_lock)
    proc._stop = Waits()
    proc._run()
    assert (clock[0] - start).total_seconds() == 3 * presence.HEARTBEAT_S + 2 * bound  # the loop's own waits, summed
    assert len(looks) == 2 and "a server on host 'web1' with pid 4321, last heard from 50 s ago" in looks[1], looks
    ((*_, beat_at),) = _rows(db_factory)
    assert beat_at == start + timedelta(seconds=2 * presence.HEARTBEAT_S + 2 * bound)  # the late heartbeat landed


# A test session of its own (tests/conftest.py's fixtures loaded as a plugin): its first test leaves a worker's
# heartbeat running, as a test that did not close its Worker did; the second empties live_processes, as the next test's
# db_url does, and looks for that heartbeat's row forty heartbeats later.
LEAKING_SESSION = """
import os
import threading
import time

from sqlalchemy import delete, select

from db import migrate, presence
from db.engine import make_engine, read_session, session_factory, write_session
from db.models import LiveProcess

URL, INTERVAL_S = os.environ["SEIKO_LEAKED_HEARTBEAT_URL"], 0.05


def test_leaves_a_worker_heartbeat_running():
    presence.Presence(session_factory(make_engine(URL)), "worker", migrate.head_revision(), interval_s=INTERVAL_S).start()


def test_next():
    factory = session_factory(make_engine(URL))
    with write_session(factory) as s:
        s.execute(delete(LiveProcess))
    time.sleep(40 * INTERVAL_S)
    with read_session(factory) as s:
        rows = s.scalars(select(LiveProcess.kind)).all()
    assert (rows, [t.name for t in threading.enumerate() if t.name.startswith("presence-")]) == ([], [])
"""


# The same, its first test leaving the worker's start under way on a thread of its own (held, as by a write lock, until
# a moment after the test ended); the second waits for that start to return before it looks.
LEFT_STARTING_SESSION = """
import os
import threading
import time

from sqlalchemy import delete, select

from db import migrate, presence
from db.engine import make_engine, read_session, session_factory, write_session
from db.models import LiveProcess

URL, INTERVAL_S = os.environ["SEIKO_LEAKED_HEARTBEAT_URL"], 0.05
factory = session_factory(make_engine(URL))
asked, let_go = threading.Event(), threading.Event()


def held_factory():
    asked.set()
    let_go.wait()
    return factory()


proc = presence.Presence(held_factory, "worker", migrate.head_revision(), interval_s=INTERVAL_S)
starter = threading.Thread(target=lambda: proc.start(), daemon=True)  # the start looked up as the test runs


def test_leaves_a_worker_start_under_way():
    starter.start()
    assert asked.wait(60)  # the start is under way, waiting for its session
    threading.Timer(1.0, let_go.set).start()


def test_next():
    starter.join(60)
    assert not starter.is_alive()
    with write_session(factory) as s:
        s.execute(delete(LiveProcess))
    time.sleep(40 * INTERVAL_S)
    with read_session(factory) as s:
        rows = s.scalars(select(LiveProcess.kind)).all()
    assert (rows, [t.name for t in threading.enumerate() if t.name.startswith("presence-")]) == ([], [])
"""


def _session_output(session: str, db_url: str, tmp_path: Path) -> str:
    """The output of ``session`` run as a pytest session of its own with tests/conftest.py's fixtures."""
    (tmp_path / "test_leaking.py").write_text(session)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_leaking.py")],
                          cwd=Path(__file__).resolve().parents[2], env={**os.environ, "SEIKO_LEAKED_HEARTBEAT_URL": db_url},
                          capture_output=True, text=True, timeout=300)
    return done.stdout + done.stderr


def test_a_heartbeat_a_test_leaves_running_is_stopped_and_fails_that_test(db_url, tmp_path):
    """A Worker a test did not close kept its heartbeat thread for the rest of the run: every HEARTBEAT_S it wrote
    its row, registering it again in a live_processes a later test had emptied (a 'worker' row found by
    test_lock_timeout's downgrade test in a whole run on PostgreSQL, eighteenth review). The test that leaves one
    running now fails, the heartbeat stopped and its row removed, and the next test finds no row and no thread."""
    out = _session_output(LEAKING_SESSION, db_url, tmp_path)
    assert "2 passed, 1 error" in out, out  # the first test passed, then failed at its teardown
    assert "ERROR at teardown of test_leaves_a_worker_heartbeat_running" in out, out
    assert ("the test left 1 live-process heartbeat(s) running (worker): close the Worker or Presence it started"
            in out), out


def test_a_start_a_test_leaves_under_way_is_waited_for_and_fails_that_test(db_url, tmp_path):
    """Nineteenth review (7 Dec 2026): the watch counted only starts that had returned, so a Presence.start a test
    left under way on a thread of its own (waiting for a write lock) began its heartbeat after the watch had looked,
    unseen, and the next test found its row. The watch now waits for it: the test that left it fails, the heartbeat
    stopped and its row removed, and the next test finds no row and no thread."""
    out = _session_output(LEFT_STARTING_SESSION, db_url, tmp_path)
    assert "2 passed, 1 error" in out, out  # the first test passed, then failed at its teardown
    assert "ERROR at teardown of test_leaves_a_worker_start_under_way" in out, out
    assert ("the test left 1 live-process heartbeat(s) running (worker): close the Worker or Presence it started"
            in out), out
