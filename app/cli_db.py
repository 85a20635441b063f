"""``python -m app db upgrade [REV] | downgrade REV | current``."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DatabaseError, OperationalError

from app.settings import Settings, shown_url
from app.settings import add_arguments as add_settings_arguments
from db import migrate
from db.engine import unusable_refusal
from db.presence import HEARTBEAT_S, STALE_AFTER_S

DOWNGRADE_HELP = (
    "Migrate the schema down to REV ('base' drops every table); asks for --yes. A SQLite file is copied first, under "
    "the write lock the downgrade then takes, so the copy holds everything the downgrade drops; a PostgreSQL database "
    "is not copied (pg_dump it first, with the server and the workers stopped). Refused while a server or a worker is "
    "live (with --processes N, its supervisor too): each keeps a row in the database's live processes while it runs, its heartbeat refreshed every "
    f"{HEARTBEAT_S:g} s and counted as gone {STALE_AFTER_S:g} s after the last one (a process killed with no clean "
    "exit), and a worker's running job keeps a lease; the look is made inside the downgrade's own transaction, so a "
    "process starting meanwhile waits for it and then refuses the older schema (--ignore-live-processes overrides: "
    "their writes to what the downgrade drops then fail). Code older than revision 0016 keeps no such row.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("upgrade", help="migrate the schema up (default: to the newest revision)")
    up.add_argument("rev", nargs="?", default="head", help="target revision (default: head)")
    down = actions.add_parser("downgrade", help="migrate the schema down to REV ('base' drops every table)",
                              description=DOWNGRADE_HELP)
    down.add_argument("rev", help="target revision, e.g. -1 or base")
    down.add_argument("--yes", action="store_true", help="do it: a downgrade drops tables or columns and their data")
    down.add_argument("--ignore-live-processes", "--ignore-live-worker", dest="ignore_live_processes",
                      action="store_true", help="downgrade even while a server or a worker is live (their writes to "
                      "what it drops then fail); --ignore-live-worker is its old name")
    actions.add_parser("current", help="show the database's revision and the revision this code needs")
    for sub in (up, down, actions.choices["current"]):
        add_settings_arguments(sub)


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    if args.action == "upgrade":
        migrate.upgrade(settings.db_url, args.rev)
        if (current := _read_back(settings.db_url, f"the upgrade to {args.rev!r}")) is not None:
            print(f"database at {current} (head is {migrate.head_revision()})")
        return 0
    if args.action == "downgrade":
        # found by review: one command dropped every table, ratings included, without a word
        if not args.yes:
            print(f"error: a downgrade to {args.rev} drops tables or columns and the data in them ('base': every "
                  "rating); run it again with --yes to do it (a SQLite file is copied first)", file=sys.stderr)
            return 2
        # say which database: $SEIKO_DB_URL wins over --data-dir, so the flags alone may not show it (review)
        shown = shown_url(settings.db_url)
        migrate.check_downgrade(settings.db_url, args.rev)  # before the copy: an unknown revision left one (review)
        # a downgrade beside a live worker was neither refused nor warned (ninth review); a server, or a worker
        # between jobs, left no mark, and the look came before the migration's lock (tenth review): live processes
        # are now refused inside the migration's transaction (migrate.refuse_live_processes)
        print(f"downgrading the database {shown!r} to {args.rev}", flush=True)
        if make_url(settings.db_url).get_backend_name() != "sqlite":
            # a copy taken beside a live server misses what it writes before the downgrade takes its locks
            print("no copy is made of a PostgreSQL database; take one with pg_dump first, with the server and the "
                  "workers stopped, if you need it", flush=True)
        migrate.downgrade(settings.db_url, args.rev, refuse_live=not args.ignore_live_processes,
                          copied=lambda backup: print(f"copied the database to {backup}", flush=True))
        if (current := _read_back(settings.db_url, f"the downgrade to {args.rev!r}")) is not None:
            print(f"database at {current}")
        return 0
    current, head = migrate.current_revision(settings.db_url), migrate.head_revision()
    print(f"current: {current or 'base (no schema)'}\nhead:    {head}")
    return 0 if current == head else 1


def _read_back(url: str, done: str) -> str | None:
    """The revision a migration that was ``done`` left (``base (no schema)`` for none), read back to be shown; None,
    with a warning on stderr, where that read was refused (``migrate.RevisionUnread``: a lock held past its bound, a
    statement cut) or the database out of reach or not one (``db.engine.unusable_refusal``). The migration stands,
    so the command still succeeds: the refusal said "the change ... was not saved", or "could not be used" with
    status 1 (fourteenth review), and a `db downgrade -1` run again on it would go down a second step."""
    try:
        return migrate.current_revision(url) or "base (no schema)"
    except migrate.RevisionUnread as exc:
        reason = exc.reason
    except DatabaseError as exc:
        # the database out of reach for the read back (PostgreSQL's 53300 too many clients, a fail-over): it went on
        # bare, so the committed migration ended with "could not be used" and status 1 (fourteenth review). A broken
        # query (a ProgrammingError, an IntegrityError) keeps its traceback, as db.migrate._before_migration's does
        if not isinstance(exc, OperationalError) and type(exc) is not DatabaseError:
            raise
        reason = unusable_refusal(exc)
    print(f"warning: {done} was done, but the schema revision could not be read back afterwards: {reason}; "
          "`python -m app db current` shows it", file=sys.stderr)
    return None
