"""Helpers for tests that need a real database (used by tests/conftest.py; not used by the app).

PostgreSQL helpers are destructive: point them only at a throwaway test server
(``scripts/postgres.sh start``).
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, make_url, text
from sqlalchemy.exc import DBAPIError

from db import migrate
from db.models import Base


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def copy_sqlite(src: Path, dst: Path) -> str:
    """Copy a closed SQLite database (and its WAL file, if any) and return the copy's URL."""
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + "-wal"))
    return sqlite_url(dst)


def _autocommit(url: str, *statements: str) -> None:
    """Run ``statements`` in order on the database of ``url``, each committed as it runs (CREATE and DROP DATABASE
    run outside a transaction)."""
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            for statement in statements:
                connection.execute(text(statement))
    finally:
        engine.dispose()


def reset_postgres_to_head(url: str) -> None:
    """Drop everything in the database's public schema, then migrate it to head."""
    _autocommit(url, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    migrate.upgrade(url)


def truncate_all(engine: Engine) -> None:
    """Empty every application table (keeping the schema and its revision) and restart the ids."""
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                connection.execute(table.delete())


def worker_postgres_database(url: str, worker: str) -> str:
    """An empty database named after ``url``'s and ``worker`` (a pytest-xdist worker's id, "gw0") on the server of
    ``url``, made anew (one a run stopped before its end left is dropped first); returns its URL. Drop it with
    ``drop_worker_postgres_database(url, worker)``."""
    name = _worker_database_name(url, worker)
    _autocommit(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"')
    return make_url(url).set(database=name).render_as_string(hide_password=False)


def drop_worker_postgres_database(url: str, worker: str) -> None:
    """Drop the database ``worker_postgres_database(url, worker)`` made, connected to ``url``'s own."""
    _autocommit(url, f'DROP DATABASE IF EXISTS "{_worker_database_name(url, worker)}" WITH (FORCE)')


def _worker_database_name(url: str, worker: str) -> str:
    if not worker.isalnum():
        raise ValueError(f"a worker id is letters and digits, not {worker!r}")
    return f"{make_url(url).database}_{worker}"


class DatabaseLeft(RuntimeError):
    """A temporary database could not be dropped; the message (one sentence) names it."""


@contextmanager
def temporary_postgres_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url``, dropped afterwards; yields its URL."""
    name = f"seiko_tmp_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(url).set(database=name).render_as_string(hide_password=False)
        finally:
            try:
                with admin.connect() as connection:
                    connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            except DBAPIError as exc:
                raise DatabaseLeft(f"the temporary database {name} could not be dropped ("
                                   f"{str(exc.orig or exc).strip().splitlines()[0]}); drop it with "
                                   f'DROP DATABASE "{name}"') from exc
    finally:
        admin.dispose()
