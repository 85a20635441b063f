"""Alembic environment: migrations are driven by ``db.models.Base.metadata``.

The database URL comes from, in order: ``config.attributes["url"]`` (set by ``db.migrate``),
``sqlalchemy.url`` in alembic.ini, or the ``SEIKO_DB_URL`` environment variable.
Run migrations with ``python -m app db upgrade``; for a new revision after changing db/models.py:
``SEIKO_DB_URL=sqlite:///scratch.db .venv/bin/alembic revision --autogenerate -m "what changed"``
(on an upgraded scratch database), then review the generated file by hand.
"""

import os

from alembic import context
from sqlalchemy import text

from db import migrate
from db.engine import make_engine, session_bounds, set_session_bounds
from db.errors import InvalidInput
from db.migrate import render_item
from db.models import Base

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url") or os.environ.get("SEIKO_DB_URL")
    if not url:
        raise RuntimeError("no database URL for the migrations; set SEIKO_DB_URL or use `python -m app db upgrade`")
    return url


def _configure(**kwargs) -> None:
    # render_as_batch: SQLite cannot ALTER most things, so Alembic copies the table instead.
    context.configure(
        target_metadata=target_metadata, render_as_batch=True, compare_type=True, render_item=render_item, **kwargs
    )


def run_migrations_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _check_foreign_keys(connection) -> None:
    """SQLite: refuse (InvalidInput, one sentence) a migration that ends with rows whose foreign keys point nowhere,
    before it commits, so the database keeps the revision it had. The check ran after the commit: such a database was
    migrated all the same and the command ended in a RuntimeError traceback that blamed the migration (the rows may
    predate it: the sqlite3 shell does not enforce foreign keys), and the check's own transaction, begun IMMEDIATE,
    could wait past the busy timeout behind a server's write and be reported as "nothing was changed" (eighth
    review)."""
    problems = connection.execute(text("PRAGMA foreign_key_check")).fetchall()
    if problems:
        shown = ", ".join(f"{table} row {rowid} -> {parent}" for table, rowid, parent, _fk in problems[:5])
        more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise InvalidInput(f"the database has rows whose foreign keys point nowhere ({shown}{more}): delete them "
                           "(`PRAGMA foreign_key_check` lists them) or restore a backup, then run it again; nothing "
                           "was changed")


def run_migrations_online() -> None:
    # Foreign keys are off while migrating SQLite (batch mode drops and recreates tables) and
    # checked at the migration's end, inside its transaction (_check_foreign_keys).
    engine = make_engine(_url(), sqlite_foreign_keys=False)
    try:
        with engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # one migration at a time: two processes upgrading at once (each container's start-up) both read the
                # old revision and ran the same steps; the second failed with "duplicate key ... pg_type_typname_nsp_index"
                # or "column ... already exists" (found by the seventh review). The second waits here, then reads the
                # revision the first committed and has nothing left to do. A session lock, taken before lock_timeout
                # is set (a migration may take longer than that); it ends with the connection, which engine.dispose()
                # below closes (and a process that dies drops)
                # It waits without a limit (lock_timeout 0: a role's or database's own lock_timeout made it fail as "a
                # table's lock was not granted", eighth review), and says so first: it waited without a word
                # (and no statement_timeout on it either: a role's, common on managed servers, cut the wait short with
                # a bare QueryCanceled; the role's own comes back for the migration's statements below)
                # each bound is set through db.engine.set_session_bounds, which notes it with the connection: the
                # migration's refusals (db.migrate) name the bound in force, not the connect's (thirteenth review)
                own = session_bounds(connection)  # the operator's statement_timeout, or none
                set_session_bounds(connection, lock_timeout=0, statement_timeout=0)
                key = {"key": migrate.MIGRATION_LOCK_KEY}
                if not connection.execute(text("SELECT pg_try_advisory_lock(:key)"), key).scalar_one():
                    migrate.log.warning("another migration of this database is running (a `db upgrade` or `db "
                                        "downgrade` elsewhere); waiting for it to end")
                    connection.execute(text("SELECT pg_advisory_lock(:key)"), key)
                connection.commit()  # the advisory lock is the session's; set_session_bounds runs outside a transaction
                # (its SETs in autocommit: a rollback undid a SET but not its note; thirteenth review), and the
                # migration's own transaction begins below, not inside one left open here
                # an ALTER waits for every open transaction on its table, and every new query queues behind it: a
                # migration beside a running server froze sign-ins with no limit (found by review). It gives up instead
                # (db.migrate words it), and PostgreSQL's DDL is transactional: nothing is changed then
                set_session_bounds(connection, statement_timeout=own.get("statement_timeout", 0),
                                   lock_timeout=int(migrate.LOCK_TIMEOUT_S * 1000))
            # SQLite: every step in one transaction, begun IMMEDIATE (db.engine) before the revision is read. Alembic
            # counts SQLite's DDL as not transactional and committed each step on its own: a second upgrade at once
            # took the write lock between two of the first's steps, read the revision then, and ran the steps the
            # first went on to run ("duplicate column name: first_handed_at"; CI, 5 Dec 2026). Our engine issues BEGIN
            # itself, so SQLite's DDL is transactional here; a step that fails now leaves the database at the revision
            # it had, as on PostgreSQL, not part-way
            _configure(connection=connection, transactional_ddl=True)
            with context.begin_transaction():
                if (in_transaction := config.attributes.get(migrate.IN_TRANSACTION)) is not None:
                    in_transaction(connection)  # db.migrate.downgrade's copy, made under the lock the steps then use
                context.run_migrations()
                if connection.dialect.name == "sqlite":
                    _check_foreign_keys(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
