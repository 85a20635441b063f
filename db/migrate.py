"""Schema migrations from code: the schema is created and changed only by ``migrations/``.

``upgrade(url)`` brings a database to the newest revision; ``check_at_head(url)`` is what the
server and the worker call at start-up so that old code never runs against a newer or older schema.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.script.revision import ResolutionError, RevisionError
from alembic.util import CommandError
from sqlalchemy import make_url

from db.engine import (
    lock_not_granted,
    lock_outlasts_statement,
    lock_waited_s,
    make_engine,
    reading,
    sqlite_code,
    sqlstate,
    statement_cancelled,
    statement_timeout_ran_out_s,
    unusable_refusal,
)
from db.errors import InvalidInput, SchemaOutOfDate

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
log = logging.getLogger(__name__)


def _config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.attributes["url"] = url  # not set_main_option: URLs may contain '%' (configparser interpolation)
    return config


def render_item(type_: str, obj, autogen_context):
    """For migrations/env.py: autogenerate writes our column types as the plain types they store, so revisions stay
    frozen (a RowId written as db.models.RowId() would also be a NameError in the revision: found by review)."""
    from db.models import JSONText, RowId, UTCDateTime

    if type_ == "type" and isinstance(obj, JSONText):
        return "sa.Text()"
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and isinstance(obj, RowId):
        return "sa.Integer()"
    return False


def _sqlite_file(url: str) -> Path | None:
    """The file a SQLite URL names (a ``file:`` URI too, with ``?uri=true``), or None: not SQLite, or in memory."""
    from urllib.parse import unquote, urlsplit

    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and parsed.database.startswith("file:"):
        if parsed.query.get("mode") == "memory":
            return None
        return Path(unquote(urlsplit(parsed.database).path))
    return Path(parsed.database)


LOCK_TIMEOUT_S = 10.0  # PostgreSQL: how long a migration waits for a table's lock before it gives up (migrations/env.py)
# PostgreSQL: the advisory lock that lets one migration run at a time (migrations/env.py); any fixed 64-bit number
MIGRATION_LOCK_KEY = 0x5E1C0_0016


# PostgreSQL's SQLSTATEs of a transaction it rolled back to let another go on, which running it again can mend: a
# deadlock (0002's downgrade beside a live server), and a serialization failure (a database or role whose
# default_transaction_isolation is repeatable read or serializable)
_ROLLED_BACK = {"40P01": "a deadlock with another transaction", "40001": "a conflict with another transaction's changes"}


# config.attributes key: a callable(connection) that migrations/env.py calls inside the migration's transaction, once
# it holds the lock (SQLite: the write lock of its BEGIN IMMEDIATE), before the revision is read and any step runs
IN_TRANSACTION = "seiko_in_transaction"


def _run(step, url: str, rev: str, in_transaction=None) -> None:
    """``step`` (alembic's command.upgrade or downgrade) to ``rev``; a lock not granted is one sentence.
    ``in_transaction``: see ``IN_TRANSACTION``."""
    from sqlalchemy.exc import OperationalError

    config = _config(url)
    began: list[str | None] = []  # the revision the migration's transaction found, once it began
    target: list[str | None] = []  # the revision ``rev`` names, counted from that one

    def first_in_transaction(connection) -> None:
        began.append(MigrationContext.configure(connection).get_current_revision())
        with suppress(CommandError, RevisionError):  # one alembic refuses: its own sentence follows, from the step
            target.append(_destination(step, rev, began[0]))
        if in_transaction is not None:
            in_transaction(connection)
    config.attributes[IN_TRANSACTION] = first_in_transaction
    try:
        step(config, rev)
    except CommandError as exc:
        # alembic's own refusal (a target it cannot find, or one the database has moved past since it was checked: two
        # downgrades at once) reached the command line bare, saying neither where the database was nor whether anything
        # had changed (eighth review). The migration is one transaction on both backends: nothing was
        with _before_migration():  # the revision read after the refusal, as those before the migration
            current = current_revision(url)
        raise InvalidInput(_step_refused(exc, current)) from exc
    except OperationalError as exc:
        if (sentence := _migration_refusal(exc)) is not None:
            raise InvalidInput(sentence) from exc
        if not _connection_dropped(exc):
            raise  # a read-only file, a full disk, an I/O error: the database's own words (app.__main__'s refusal)
        _after_lost(url, target[0] if target else rev, exc, began[0] if began else _NOT_BEGUN)


def _step_refused(exc: CommandError, current: str | None) -> str:
    """The sentence for alembic's own refusal ``exc`` of a migration of a database at ``current`` (None: base)."""
    return (f"the schema migration was refused: {str(exc).rstrip('.')} (the database is at {current or 'base'}); "
            "nothing was changed")


def _destination(step, rev: str, current: str | None) -> str | None:
    """The revision ``step`` (command.upgrade or downgrade) to ``rev`` leaves a database at ``current`` at, as alembic
    counts it: "head" the scripts' newest, a relative "-1" or "+1" from ``current``, "base" None. The history is one
    line, so it is the newest revision the upgrade applies, or the one below the last the downgrade removes."""
    revision_map = ScriptDirectory.from_config(_config()).revision_map
    if step is command.downgrade:
        steps = list(revision_map.iterate_revisions(current, rev, select_for_downgrade=True))
        return steps[-1].down_revision if steps else current
    steps = list(revision_map.iterate_revisions(rev, current, implicit_base=True))
    return steps[0].revision if steps else current


# PostgreSQL's SQLSTATEs of a connection dropped by the server (an administrator's pg_terminate_backend, a shutdown, a
# crash's restart, a fail-over); class 08 is a connection exception
_DROPPED_STATES = ("57P01", "57P02", "57P03")


def _connection_dropped(exc: BaseException) -> bool:
    """Whether a database error says the connection dropped (SQLAlchemy invalidated it, or PostgreSQL's SQLSTATE says
    so), not that the database refused a statement on a live one: SQLite's read-only file, full disk and I/O error,
    PostgreSQL's disk full (53100) are OperationalErrors too, and were said as a lost connection ("run it again"; a
    read-only review of the fifteenth review's fix)."""
    if getattr(exc, "connection_invalidated", False):
        return True
    state = sqlstate(exc)
    return state is not None and (state.startswith("08") or state in _DROPPED_STATES)


_NOT_BEGUN = object()  # ``_after_lost``: the migration's transaction had not begun


def _after_lost(url: str, rev: str | None, exc: BaseException, before) -> None:
    """A migration to ``rev`` that ended in ``exc``, no bound's (the connection dropped: the server terminated its
    backend, restarted, failed over; the answer to its COMMIT lost), where its transaction found the database at
    ``before`` (``_NOT_BEGUN``: it had not begun). It said only that the database "could not be used", not whether
    anything had changed (fifteenth review). The migration is one transaction (migrations/env.py), so the revision
    read back on a fresh connection says which: the same as before, it was not applied (InvalidInput); ``rev``, it
    was (a warning: the command succeeds, as `db upgrade` whose read back fails does); unread, it cannot be known
    (InvalidInput naming `db current`). ``rev`` is the revision the step went to (``_destination``; None: base), not
    the target as typed ("-1"). Any other revision was said "applied" too, but the dropped connection let go of the
    advisory lock, so another migration may have moved it first (a read-only review of the fifteenth review's fix):
    that is InvalidInput naming both."""
    from sqlalchemy.exc import DatabaseError, OperationalError

    said = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    lost = (f"the connection to the database was lost during the migration to {rev or 'base'} "
            f"({said[0] if said else type(exc).__name__})")
    try:
        now = current_revision(url)
    except RevisionUnread as unread:
        reason = unread.reason
    except DatabaseError as unread:
        if not isinstance(unread, OperationalError) and type(unread) is not DatabaseError:
            raise  # a broken query keeps its traceback, as _before_migration's
        reason = unusable_refusal(unread)
    else:
        if before is _NOT_BEGUN or now == before:
            raise InvalidInput(f"{lost}, and read back on a new connection the database is still at {now or 'base'}: "
                               "the migration was not applied, so nothing was changed; run it again") from exc
        if now != rev:
            raise InvalidInput(f"{lost}, and read back on a new connection the database is at {now or 'base'}, neither "
                               f"where it was ({before or 'base'}) nor the target ({rev or 'base'}): another migration "
                               "moved it; check with `python -m app db current`") from exc
        log.warning("%s, but read back on a new connection the database is at %s: the migration was applied", lost,
                    now or "base (no schema)")
        return
    if before is _NOT_BEGUN:
        raise InvalidInput(f"{lost} before it began, so nothing was changed; run it again") from exc
    raise InvalidInput(f"{lost}, and whether it was applied could not be known (the revision could not be read back: "
                       f"{reason}); `python -m app db current` shows where the schema is once the database answers") from exc


# Who holds off a read (one that waits for no write lock: a revision read, a migration command's checks): only an
# exclusive lock does, another migration's, an admin's LOCK TABLE, SQLite's exclusive locking mode (RevisionUnread's
# clause and the reads before a migration, ``_migration_refusal``'s ``read``)
READ_HOLDERS = "a migration, or another open transaction"


def _read_bound(exc: BaseException) -> str | None:
    """The statement bound a cancelled read (``exc``) ran into, as the two read sentences name it (a read before a
    migration, the revision read): "statement_timeout of N s (set for ...; the read ran ...)"; None where none is
    known (an operator's cancel)."""
    if (bound := statement_timeout_ran_out_s(exc)) is None:
        return None
    ran = "ran, or waited for a lock, that long" if lock_outlasts_statement(exc) else "ran that long"
    return (f"statement_timeout of {bound:g} s (set for this role, database or URL, or in the server's configuration; "
            f"the read {ran})")


def _migration_refusal(exc: BaseException, *, read: bool = False) -> str | None:
    """The one sentence for a migration the database ended (``_run``), naming the bound in force, or None for any
    other error. The whole migration is one transaction on both backends (migrations/env.py): nothing was changed.
    ``read``: the error came from a read before the migration (``_before_migration``), which takes no write lock: a
    lock not granted there is said as a read held off. A SQLite read held off by another connection's exclusive lock
    was said as "its write lock was not granted" (fourteenth review).

    The bounds are those of the migration's own connection, as migrations/env.py set them
    (``db.engine.set_session_bounds``): SQLite's busy timeout (BUSY_TIMEOUT_MS); on PostgreSQL lock_timeout
    LOCK_TIMEOUT_S and the statement_timeout the operator set (the role's, the database's, the URL's, the server's
    configuration; none by default). A lock refused at once (SQLite's SQLITE_LOCKED, PostgreSQL's NOWAIT) names no
    bound, and a statement cut by the operator's statement_timeout (57014, a bare QueryCanceled before) names that
    one: the sentence said a bound that was not the one in force (thirteenth review)."""
    held = "(a server, a worker or an open transaction holds it); stop them and run it again; nothing was changed"
    if lock_not_granted(exc):
        waited = lock_waited_s(exc)
        if read:
            # held off only by an exclusive lock (another migration, an admin's LOCK TABLE, SQLite's exclusive locking
            # mode), not by a server or a worker: it said so, and "stop them" (fourteenth review)
            by = f"({READ_HOLDERS}); run it again once that is done; nothing was changed"
            if waited is None:
                return f"the database is in use: a read before the migration needed a lock that was held and is not waited for {by}"
            return f"the database is in use: a read before the migration was held off by a lock for more than {waited:g} s {by}"
        if waited is None:
            return f"the database is in use: a lock the migration needed was held and is not waited for {held}"
        if sqlite_code(exc) is not None:  # SQLite's busy: its busy_timeout ran out (the migration begins IMMEDIATE)
            return f"the database is in use: its write lock was not granted in {waited:g} s {held}"
        return f"the database is in use: a table's lock was not granted in {waited:g} s {held}"
    state = sqlstate(exc)
    if state in _ROLLED_BACK:
        # PostgreSQL ended the migration's transaction to let another go on: 0002's downgrade holds the raters (LOCK
        # TABLE ... IN SHARE MODE) and then drops sessions and audit_log, so a server's transaction holding one of
        # those and waiting for the raters deadlocks with it. It ended with psycopg's bare DeadlockDetected (ninth
        # review)
        return (f"the database ended the migration to resolve {_ROLLED_BACK[state]} (a server or a worker using the "
                "same tables): its transaction was rolled back, so nothing was changed; run it again")
    # the bound's setting is named as an option to add, not as "?options=..." (wrong for a URL with a query already:
    # a second "?"), as the worker's ClaimsCancelled names it (a read-only review of the fourteenth review's fixes)
    if statement_cancelled(exc) and read:
        # it said "the database cancelled a statement of the migration" for a read before it (fourteenth review)
        if (bound := _read_bound(exc)) is not None:
            return (f"a read before the migration was cancelled at the database's {bound}, so nothing "
                    "was changed; run it again with a longer bound for the migration (in the database URL, SEIKO_DB_URL "
                    "or --db-url, add `-c statement_timeout=0` to its options)")
        return ("a read before the migration was cancelled (an operator's cancel, or the database's statement_timeout), "
                "so nothing was changed; run it again")
    if statement_cancelled(exc):
        if (bound := statement_timeout_ran_out_s(exc)) is not None:
            # which it was follows the lock bound in force, as db.engine.statement_refusal's: where it is below the
            # statement bound a lock wait ended there (55P03, above), so this statement ran that long (thirteenth
            # review: it always said it may have waited for a table's lock, and named no server configuration)
            waited = lock_outlasts_statement(exc)
            ran = "the statement ran, or waited for a table's lock, that long" if waited else "the statement ran that long"
            stopped = " or once the server and the workers are stopped" if waited else ""
            return (f"the database cancelled a statement of the migration at its statement_timeout of {bound:g} s (set "
                    f"for this role, database or URL, or in the server's configuration; {ran}), so nothing was "
                    "changed; run it again with a longer bound for the migration (in the database URL, SEIKO_DB_URL or "
                    f"--db-url, add `-c statement_timeout=0` to its options){stopped}")
        return ("the database cancelled a statement of the migration (an operator's cancel, or its statement_timeout), "
                "so nothing was changed; run it again")
    return None


@contextmanager
def _before_migration() -> Iterator[None]:
    """The database's errors in a migration command's steps before (and beside) its one transaction, ``_run``'s: the
    revision read (``current_revision``), ``check_upgrade``'s table read, ``check_downgrade``'s look for disabled
    accounts (``refuse_disabled_accounts``). Each is a read, so nothing was changed: a bound that ran out is
    ``_migration_refusal``'s sentence, naming the bound in force, and any other (a refused connection, a file that is
    not a database) ``db.engine.unusable_refusal``'s, each as InvalidInput. They ran outside ``_run``: a lock or a
    statement cut there was the page's sentence (the change "was not saved"), a refused connection the driver's error,
    and to a caller of this module (db.testing, app.tools) a bare OperationalError (thirteenth review). SQLite's "file
    is not a database" is a plain DatabaseError (SQLITE_NOTADB), not an OperationalError: it went on bare (thirteenth
    review); the DatabaseError subclasses a broken query raises (a ProgrammingError, an IntegrityError) keep their
    traceback, as app.__main__'s ``refusal`` does. A lock not granted here is a read held off, not a write lock
    refused (``_migration_refusal``'s ``read``); the revision read says its own (``current_revision``)."""
    from sqlalchemy.exc import DatabaseError, OperationalError

    try:
        yield
    except DatabaseError as exc:
        if not isinstance(exc, OperationalError) and type(exc) is not DatabaseError:
            raise
        raise InvalidInput(_migration_refusal(exc, read=True) or f"{unusable_refusal(exc)}; nothing was changed") from exc


@_before_migration()
def check_upgrade(url: str, rev: str) -> None:
    """Refuse (InvalidInput, one sentence, nothing changed) an upgrade that cannot do what it says: a database with
    the app's tables but no recorded revision (the upgrade failed with 'table already exists', on PostgreSQL a
    traceback: found by review), a target below the database's revision (it did nothing and said nothing), or a
    revision this code does not know (``_refuse_unknown``)."""
    current = current_revision(url)
    if current is None:
        from db.models import Base

        engine = make_engine(url)
        try:
            from sqlalchemy import inspect

            with reading(engine) as connection:
                tables = set(inspect(connection).get_table_names()) & set(Base.metadata.tables)  # another app's: not ours
        finally:
            engine.dispose()
        # another process may have migrated it between the two reads (two upgrades at once: the second was told the
        # database had tables but no revision; found by the seventh review): its revision is committed with its tables
        current = current_revision(url) if tables else None
        if tables and current is None:
            raise InvalidInput(f"the database has the app's tables ({', '.join(sorted(tables)[:3])}, ...) but no "
                               "schema revision recorded (alembic_version is empty or missing): restore it from a "
                               "backup, or record the revision its tables are at (`alembic stamp <revision>`); "
                               "nothing was changed")
        if current is None:
            _refuse_unresolvable(rev, None)
            return
    _refuse_unknown(current)
    _refuse_unresolvable(rev, current)
    script = ScriptDirectory.from_config(_config())
    try:
        below = rev not in ("head", "heads") and rev != current and current in {
            r.revision for r in script.iterate_revisions(current, rev)}
    except (CommandError, RevisionError):
        below = False  # not an ancestor: alembic's own sentence, or a target above current
    if below:
        raise InvalidInput(f"the database is at {current}, above {rev}: an upgrade does not go down; use "
                           f"`db downgrade {rev}`; nothing was changed")


def _not_a_revision(rev: str) -> str:
    """What alembic's revision lookup means where it fails an assertion of its own: ``rev`` names nothing it has."""
    return f"{rev!r} is not a revision this schema has"


def _refuse_unresolvable(rev: str, current: str | None) -> None:
    """Refuse (InvalidInput) an upgrade to ``rev`` that alembic's revision lookup fails with a bare AssertionError of
    its own ("" on any database, "head+1"), which reached the command line as a traceback that named neither the
    revision nor whether anything had changed (a read-only review); worded as alembic's refusal of an unknown one
    (``_run``). Alembic's own refusals (CommandError, RevisionError) are left to the step, which says them."""
    try:
        _destination(command.upgrade, rev, current)
    except (CommandError, RevisionError):
        pass
    except AssertionError as exc:
        raise InvalidInput(f"the schema migration was refused: {_not_a_revision(rev)} (the database is at "
                           f"{current or 'base'}); nothing was changed") from exc


def _refuse_before_made(rev: str) -> None:
    """Refuse (InvalidInput) an upgrade to ``rev`` of a SQLite file not made yet (a database at base) that alembic would
    refuse, before the file and its directory are made, in the words the step refuses it in on a file that exists
    (``_run``, ``_refuse_unresolvable``): only "" and "head+1" were refused first, so "9999" left an empty file made (a
    read-only review of the sixteenth review's fixes). The target is resolved as command.upgrade resolves it: a range
    refused outright, then the steps up from base (``_destination``: alembic's public revision lookup), a lookup error
    worded as command.upgrade words it (``_upgrade_refused``). It called alembic's private
    ``ScriptDirectory._upgrade_revs`` for those words, which a newer alembic may rename or change without notice
    (eighteenth review)."""
    _refuse_unresolvable(rev, None)
    try:
        if ":" in rev:
            raise CommandError("Range revision not allowed")  # command.upgrade's own refusal, before any lookup
        try:
            _destination(command.upgrade, rev, None)
        except RevisionError as exc:
            raise _upgrade_refused(exc) from exc
    except CommandError as exc:
        raise InvalidInput(_step_refused(exc, None)) from exc


def _upgrade_refused(exc: RevisionError) -> CommandError:
    """Alembic's revision lookup error ``exc`` (an upgrade's target from base) as the CommandError command.upgrade
    raises for it: a revision not found is "Can't locate revision identified by '<it>'", any other keeps its own
    words ("Relative revision +18 didn't produce 18 migrations"). A target not above base, or one of several heads,
    cannot be met from base in this one-line history."""
    if isinstance(exc, ResolutionError):
        return CommandError(f"Can't locate revision identified by '{exc.argument}'")
    return CommandError(exc.args[0] if exc.args else type(exc).__name__)


def upgrade(url: str, rev: str = "head") -> None:
    """Migrate the database at ``url`` up to ``rev`` (default: the newest revision), after ``check_upgrade``.

    A SQLite file (and its directory) is created if missing, once the target resolves (``_refuse_before_made``):
    `db upgrade ""` on a new file was refused in one sentence but left an empty database file made (sixteenth review).
    """
    path = _sqlite_file(url)
    if path is not None and not path.exists():
        _refuse_before_made(rev)
    if path is not None:
        # the database holds password hashes, session tokens and every rating: a new file is its owner's alone (0600,
        # in a new directory of 0700); SQLite gives its WAL and shared-memory files the database file's mode
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if not path.exists():
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass  # another process made it first
        except OSError as exc:
            raise InvalidInput(f"the database's directory {str(path.parent)!r} could not be made ({exc.strerror or exc})") from exc
        _owner_only(path)
    check_upgrade(url, rev)
    _run(command.upgrade, url, rev)


def _owner_only(path: Path) -> None:
    """Take group and other access from a SQLite database of ours and its WAL and shared-memory files: one made
    before new databases were created 0600 stayed 0644 through every upgrade (found by review)."""
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            info = file.stat()
        except FileNotFoundError:
            continue
        if info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) & 0o077:
            os.chmod(file, stat.S_IMODE(info.st_mode) & ~0o077)
            log.info("took group and other access from %s (it holds password hashes and session tokens)", file)


def backup_sqlite(url: str) -> Path | None:
    """Copy a SQLite database file (with its WAL folded in) beside it as ``<name>.bak-<UTC time>``; returns the copy,
    or None when ``url`` is not a SQLite file that exists."""
    from datetime import UTC, datetime

    path = _sqlite_file(url)
    if path is None or not path.is_file():
        return None
    target = path.with_name(f"{path.name}.bak-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%fZ')}")
    try:
        # made with the database's own mode, before SQLite writes to it: a 0600 database's copy is not left readable
        os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, stat.S_IMODE(path.stat().st_mode) | stat.S_IWUSR))
    except OSError as exc:
        raise InvalidInput(f"could not copy the database to {str(target)!r} ({exc.strerror or exc}); nothing was "
                           "changed") from exc
    try:
        _copy_sqlite(path, target)
    except (OSError, sqlite3.Error) as exc:
        target.unlink(missing_ok=True)  # no empty or partial copy left to be taken for a backup
        raise InvalidInput(f"could not copy the database to {str(target)!r} ({exc}); nothing was changed") from exc
    return target


def _copy_sqlite(path: Path, target: Path) -> None:
    source, copy = sqlite3.connect(path), sqlite3.connect(target)
    try:
        source.backup(copy)  # SQLite's online backup: a consistent copy even while a worker writes
    finally:
        copy.close()
        source.close()


@_before_migration()
def check_downgrade(url: str, rev: str) -> None:
    """Refuse (InvalidInput, one sentence, nothing changed) a downgrade to ``rev`` that cannot or should not run: no
    database there, none recorded (to any target but 'base'), one this code does not know, a revision that does not
    exist or is not below the database's, or one that would drop the mark of a disabled account (0002's downgrade
    drops ``raters.disabled_at``: after an upgrade the account could sign in again; found by review). Run before
    anything is copied or changed (a backup was made before an unknown revision was refused)."""
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        raise InvalidInput(f"there is no database at {str(path)!r} to downgrade; nothing was changed")
    script = ScriptDirectory.from_config(_config())
    current = current_revision(url)
    if current is None and rev != "base":
        # alembic's own words came after the copy, and said nothing of whether anything changed (eighth review)
        raise InvalidInput("the database has no schema revision recorded (never migrated, or taken down to base), so "
                           f"there is nothing to downgrade to {rev!r}; nothing was changed")
    if current is not None:
        _refuse_unknown(current)
    try:
        # alembic's own downgrade path, which counts a relative target ("-1") from the database's revision (the
        # upgrade path counted it from the newest one: at 0008, "-7" was checked as 0003 and went to 0001; review)
        steps = [r.revision for r in script.revision_map.iterate_revisions(current, rev, select_for_downgrade=True)
                 if r is not None] if current is not None else []
    except (CommandError, RevisionError, AssertionError) as exc:  # an unknown revision, one above the database's
        # (an AssertionError: one alembic's lookup fails bare, "", a read-only review): one sentence
        reason = _not_a_revision(rev) if isinstance(exc, AssertionError) else str(exc).rstrip(".")
        raise InvalidInput(f"cannot downgrade from {current} to {rev!r} ({reason}); the revisions are "
                           f"{[r.revision for r in script.walk_revisions()][::-1]} or 'base'; nothing was changed") from exc
    if "0002" in steps:
        engine = make_engine(url)
        try:
            # a read (DEFERRED on SQLite): it waited for the write lock, and beside a server's long write it failed
            # with "database is locked", not the sentence the downgrade itself gives (eighth review)
            with reading(engine) as connection:
                refuse_disabled_accounts(connection)
        finally:
            engine.dispose()


def refuse_disabled_accounts(connection) -> None:
    """Refuse (InvalidInput) a downgrade below 0002 while an account is disabled: 0002's downgrade drops that mark.
    ``check_downgrade`` looks before anything is copied; 0002's downgrade looks again inside the migration's one
    transaction, since an account disabled after the first look (a live server's admin, while a large database was
    copied), or a relative downgrade another at once had moved below, lost its mark (eighth review)."""
    from sqlalchemy import text

    disabled = connection.execute(text("SELECT name FROM raters WHERE disabled_at IS NOT NULL")).scalars().all()
    if disabled:
        raise InvalidInput(f"{len(disabled)} account(s) are disabled ({', '.join(map(repr, disabled[:5]))}); a "
                           "downgrade below 0002 drops that mark, so they could sign in again after an upgrade: "
                           "delete them first, or downgrade to 0002 or later; nothing was changed")


def _refuse_unknown(current: str) -> None:
    """Refuse (InvalidInput) a migration of a database at a revision this code does not know: newer code migrated it
    (old code's `db upgrade` at a rolled-back deployment's start). The upgrade was refused in alembic's words ("Can't
    locate revision identified by '0999'"), the downgrade as a revision not found, neither saying what to run (eighth
    review)."""
    if not _known(current):
        raise InvalidInput(f"{_advice(current, head_revision())}; nothing was changed")


def downgrade(url: str, rev: str, *, copied: Callable[[Path], None] | None = None, refuse_live: bool = True) -> None:
    """Migrate down to ``rev`` ("base" removes every table), after ``check_downgrade``. A SQLite file that does not
    exist is not created: there is nothing to downgrade (one was made with the default mode, 0644, and kept by the
    next upgrade: review).

    ``refuse_live``: refuse (LiveProcesses, nothing changed) while a server or worker is live (``refuse_live_processes``),
    checked inside the migration's transaction, before anything is copied or dropped.

    ``copied``: copy a SQLite database first (``backup_sqlite``) and call ``copied`` with the copy's path. The copy is
    made inside the migration's transaction, once it holds the write lock the downgrade then uses, so it holds every
    write the downgrade removes: copied before the lock, what a live server wrote in between to a table or column the
    downgrade drops was in neither the copy nor the result (ninth review); a write after the copy now waits for the
    downgrade (for the busy timeout). A copy that fails stops the downgrade (InvalidInput), nothing changed.
    PostgreSQL gets no copy here (see `db downgrade`)."""
    check_downgrade(url, rev)
    copy = copied is not None and _sqlite_file(url) is not None

    def in_transaction(connection) -> None:
        if refuse_live:
            refuse_live_processes(connection)
        if copy:
            backup = backup_sqlite(url)
            if backup is not None:
                copied(backup)
    _run(command.downgrade, url, rev, in_transaction)


class LiveProcesses(InvalidInput):
    """`db downgrade` refused: a server or a worker is live (``refuse_live_processes``)."""


def refuse_live_processes(connection, *, now: datetime | None = None) -> None:
    """Raise LiveProcesses (one sentence naming each process: kind, host and pid) while a server or a worker has a
    fresh heartbeat in ``live_processes`` (migration 0016, ``db.presence``), or a worker holds a running job's lease
    that has not run out. Called by ``downgrade`` inside the migration's transaction, once it holds the lock
    (SQLite's write lock; PostgreSQL's advisory lock and ``live_processes`` in SHARE mode), so no process can register
    between this look and the drop: one starting meanwhile waits, then finds the downgraded schema and refuses to
    start. It was a separate read before the migration, and a server, or a worker between jobs, left no mark at all
    (tenth review)."""
    from sqlalchemy import inspect, select

    from db import presence
    from db.models import Job, utcnow

    now = now or utcnow()
    presence.lock_live_processes(connection)
    shown = [f"a {presence.described(p.kind)} on host {p.host!r} with pid {p.pid}, last heard from {max(0, (now - p.heartbeat_at).total_seconds()):.0f} s ago"
             for p in presence.live(connection, now=now)]
    if inspect(connection).has_table(Job.__tablename__):
        shown += [f"worker {owner or '?'!r} working on job {job_id} under a lease that runs to {until:%H:%M:%S} UTC"
                  for job_id, owner, until in connection.execute(
                      select(Job.id, Job.lease_owner, Job.lease_expires_at)
                      .where(Job.status == "running", Job.lease_expires_at > now).order_by(Job.id))]
    if shown:
        more = f"; and {len(shown) - 5} more" if len(shown) > 5 else ""
        raise LiveProcesses(f"the database is in use by {len(shown)} live process(es) ({'; '.join(shown[:5])}{more}): "
                            "stop them first, or run it again with --ignore-live-processes; nothing was changed")


class RevisionUnread(InvalidInput):
    """The schema revision could not be read (``current_revision``): a lock held past its bound, or the read cancelled
    at a statement bound. ``reason`` says which, as a clause; the message is the whole sentence."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"the schema revision could not be read: {reason}; nothing was changed; try again in a moment")


def _read_refusal(exc: BaseException) -> str | None:
    """What ended a read (a clause, for ``RevisionUnread``) where a bound ran out: a lock not granted (SQLite's busy
    timeout, PostgreSQL's lock_timeout; a lock refused at once names none) or a statement cancelled (the statement
    bound in force, as ``_migration_refusal`` names it); None for any other error."""
    if lock_not_granted(exc):
        waited = lock_waited_s(exc)
        within = ", which is not waited for here" if waited is None else f" for more than {waited:g} s"
        return f"another transaction held a lock the read needed{within} ({READ_HOLDERS})"
    if statement_cancelled(exc):
        if (bound := _read_bound(exc)) is not None:
            return f"the database cancelled the read at its {bound}"
        return "the database cancelled the read (an operator's cancel, or its statement_timeout)"
    return None


def current_revision(url: str) -> str | None:
    """The revision the database is at, or None for a database that was never migrated. A bound that ran out while
    it was read (a lock held, a statement cut) is RevisionUnread: it was the database's bare error, which `db
    current`, `serve` and `worker` said as the rating page's "the change ... was not saved" (fourteenth review).

    Does not create a missing SQLite file.
    """
    from sqlalchemy.exc import OperationalError

    path = _sqlite_file(url)
    if path is not None and not path.exists():
        return None
    engine = make_engine(url)
    try:
        # a read (DEFERRED on SQLite): it waited for the write lock, and beside a server's long write it failed with
        # "database is locked" before the upgrade got to say the database is in use
        with reading(engine) as connection:
            return MigrationContext.configure(connection).get_current_revision()
    except OperationalError as exc:
        if (reason := _read_refusal(exc)) is None:
            raise  # the database out of reach, or not one: app.__main__ and _before_migration word those
        raise RevisionUnread(reason) from exc
    finally:
        engine.dispose()


def head_revision() -> str:
    """The newest revision in ``migrations/versions``."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


def check_at_head(url: str) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest revision; RevisionUnread where it could not be read
    (``current_revision``)."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaOutOfDate(_advice(current, head))


def known_revisions() -> frozenset[str]:
    """Every revision in ``migrations/versions`` (read once at a worker's start: the files may change under it)."""
    return frozenset(rev.revision for rev in ScriptDirectory.from_config(_config()).walk_revisions())


def check_unchanged(session, head: str, known: frozenset[str]) -> None:
    """Raise SchemaOutOfDate unless ``session``'s database is still at ``head``: one small query, for a worker that
    checked the schema at its start (``head`` and ``known``, this code's revisions, were read then) while `db upgrade`
    or `db downgrade` may run later. Call it after the claim in the same transaction: on PostgreSQL a claim that waited
    for a migration's lock then sees the migration's revision, and the raise rolls the claim back."""
    from sqlalchemy import text

    found = session.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    if found == [head]:
        return
    shown = ", ".join(found) or "no revision"
    if len(found) == 1 and found[0] in known:
        advice = f"run `python -m app db upgrade` (back to {head}) or the code of {found[0]}, then restart the worker"
    else:
        advice = "newer code migrated it: restart the worker on that code"
    raise SchemaOutOfDate(f"the database schema changed from {head} to {shown} while the worker ran, so it took no "
                          f"job; {advice}")


def _known(revision: str) -> bool:
    """Whether ``revision`` is one of this code's migrations."""
    from alembic.util.exc import CommandError

    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except CommandError:
        return False


def _advice(current: str | None, head: str) -> str:
    """What to do about a schema at ``current`` when this code needs ``head``."""
    if current is not None and not _known(current):
        # a schema newer than this code: `db upgrade` failed with "Can't locate revision" (found by review)
        return (f"the database schema is at {current}, which this code does not know: it was migrated by newer code; "
                f"run that code (its own `db downgrade` can take the schema back to {head} for this one)")
    shown = "empty (never migrated)" if current is None else current
    return f"the database schema is at {shown} but this code needs {head}; run `python -m app db upgrade`"
