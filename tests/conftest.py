"""Shared fixtures. Database: `db_url` is a migrated, empty database, once per backend.

SQLite always runs; PostgreSQL runs when SEIKO_TEST_PG_URL is set
(`export SEIKO_TEST_PG_URL="$(scripts/postgres.sh start)"`). Its database is wiped.
"""

import os
import signal

import pytest

from db import migrate
from db import testing as dbt
from db.engine import make_engine, session_factory

PG_URL = os.environ.get("SEIKO_TEST_PG_URL")
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
