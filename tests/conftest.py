"""Shared fixtures. Database: `db_url` is a migrated, empty database, once per backend.

SQLite always runs; PostgreSQL runs when SEIKO_TEST_PG_URL is set
(`export SEIKO_TEST_PG_URL="$(scripts/postgres.sh start)"`). Its database is wiped.
"""

import os
import signal
import threading
import time

import pytest

from db import migrate, presence
from db import testing as dbt
from db.engine import make_engine, session_factory


def _worker_database(url: str | None) -> str | None:
    """The suite runs in two processes (pytest-xdist, scripts/test.sh): each one gets a PostgreSQL database of its own
    on the server of SEIKO_TEST_PG_URL (its name and the worker's, made empty here, dropped at the end), since the
    tests empty and migrate the database they use. SEIKO_TEST_PG_URL is set to it for the tests and their
    subprocesses. One process (no xdist, or -n 0) uses SEIKO_TEST_PG_URL's database itself, as before."""
    if not url or not WORKER:
        return url
    worker_url = dbt.worker_postgres_database(url, WORKER)
    os.environ["SEIKO_TEST_PG_URL"] = worker_url
    return worker_url


WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # pytest-xdist's id of this process ("gw0"), None in a single process
SERVER_PG_URL = os.environ.get("SEIKO_TEST_PG_URL")  # as given: the worker's database is made and dropped through it
PG_URL = _worker_database(SERVER_PG_URL)
STARTS_WAIT_S = 60.0  # how long _no_heartbeat_left_running waits for a Presence.start a test left under way
DB_BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param(
        "postgresql",
        id="postgresql",
        marks=[
            pytest.mark.postgres,
            pytest.mark.skipif(
                not PG_URL, reason="SEIKO_TEST_PG_URL is not set (start PostgreSQL with scripts/postgres.sh start)"
            ),
        ],
    ),
]


def pytest_unconfigure(config):
    if SERVER_PG_URL and WORKER:
        dbt.drop_worker_postgres_database(SERVER_PG_URL, WORKER)


@pytest.fixture(autouse=True)
def _signal_mask_unchanged():
    """Fail a test that leaves this thread's signal mask changed: every later subprocess would inherit the blocked
    signals (a worker test once left SIGINT and SIGTERM blocked, and the Ctrl-C tests after it failed). The mask is
    put back first, so one leak fails one test."""
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.pthread_sigmask(signal.SIG_SETMASK, before)
    if after != before:
        pytest.fail(f"the test left signals {sorted(s.name for s in after - before)} blocked", pytrace=False)


@pytest.fixture(autouse=True)
def _no_heartbeat_left_running():
    """Fail a test that leaves a live process's heartbeat running (db.presence.Presence, started by a Worker, the
    server or the supervisor, and not closed): its thread went on writing its row every HEARTBEAT_S for the rest of
    the run, registering it again in whatever database it pointed at, and a later test that emptied the shared
    PostgreSQL database's live_processes found a 'worker' row there (eighteenth review). The heartbeats are stopped
    first (closed: their rows removed), so one leak fails one test."""
    # each with its heartbeat thread (a test may swap _thread) and whether its start returned
    started: list[tuple[presence.Presence, object, threading.Event]] = []
    real_start = presence.Presence.start

    def start(self) -> None:
        returned = threading.Event()
        started.append((self, self._thread, returned))
        try:
            real_start(self)
        finally:
            returned.set()

    presence.Presence.start = start  # not monkeypatch: a test's monkeypatch.undo() would end the watch early
    try:
        yield
    finally:
        presence.Presence.start = real_start
    # a start still under way on a thread the test left (waiting for a write lock) starts its heartbeat once it
    # returns: waited for (the test's own fixtures, a lock's holder among them, have ended), and one that does not
    # return counts as left (closed: it removes its own row and begins no heartbeat when it returns, Presence.start);
    # it was not counted at all (nineteenth review)
    deadline = time.monotonic() + STARTS_WAIT_S  # one wait in all, not STARTS_WAIT_S for each (read-only review)
    starting = [p for p, _, returned in started if not returned.wait(max(0.0, deadline - time.monotonic()))]
    # a heartbeat closed by the test may still be finishing a database call (close() waits at most CLOSE_WAIT_S): it
    # stops by itself and is waited for; only one never closed is the test's leak
    left = [p for p, thread, _ in started if (thread.is_alive() or p in starting) and not p._stop.is_set()]
    for p, thread, _ in started:
        if p in left:
            p.close()
        elif thread.is_alive():
            thread.join(presence.CLOSE_WAIT_S)
    if left:
        pytest.fail(f"the test left {len(left)} live-process heartbeat(s) running "
                    f"({', '.join(p.kind for p in left)}): close the Worker or Presence it started", pytrace=False)


@pytest.fixture(scope="session")
def _sqlite_at_head(tmp_path_factory):
    path = tmp_path_factory.mktemp("db-template") / "seiko.db"
    migrate.upgrade(dbt.sqlite_url(path))
    return path


@pytest.fixture(scope="session")
def _postgres_at_head():
    dbt.reset_postgres_to_head(PG_URL)
    return PG_URL


@pytest.fixture(params=DB_BACKENDS)
def db_url(request, tmp_path):
    """URL of an empty database migrated to head (a fresh SQLite file, or the wiped test PostgreSQL)."""
    if request.param == "sqlite":
        return dbt.copy_sqlite(request.getfixturevalue("_sqlite_at_head"), tmp_path / "seiko.db")
    url = request.getfixturevalue("_postgres_at_head")
    engine = make_engine(url)
    dbt.truncate_all(engine)
    engine.dispose()
    return url


@pytest.fixture(params=DB_BACKENDS)
def empty_db_url(request, tmp_path):
    """URL of a database with no schema at all (for migration tests)."""
    if request.param == "sqlite":
        yield dbt.sqlite_url(tmp_path / "empty.db")
    else:
        with dbt.temporary_postgres_database(PG_URL) as url:
            yield url


@pytest.fixture
def db_engine(db_url):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def db_factory(db_engine):
    """A sessionmaker for `db_url`; use it with db.engine.write_session / read_session."""
    return session_factory(db_engine)
