"""``python -m app db upgrade [REV] | downgrade REV | current``."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.engine import make_url

from app.settings import Settings, shown_url
from app.settings import add_arguments as add_settings_arguments
from db import migrate

DOWNGRADE_HELP = (
    "Migrate the schema down to REV ('base' drops every table); asks for --yes. A SQLite file is copied first, under "
    "the write lock the downgrade then takes, so the copy holds everything the downgrade drops; a PostgreSQL database "
    "is not copied (pg_dump it first, with the server and the workers stopped). Refused while a worker holds a live "
    "lease on a running job (--ignore-live-worker overrides). Stop the server and every worker first: a server, or a "
    "worker between jobs, leaves no mark this command can see, and their writes to what the downgrade drops fail once "
    "it is done.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    up = actions.add_parser("upgrade", help="migrate the schema up (default: to the newest revision)")
    up.add_argument("rev", nargs="?", default="head", help="target revision (default: head)")
    down = actions.add_parser("downgrade", help="migrate the schema down to REV ('base' drops every table)",
                              description=DOWNGRADE_HELP)
    down.add_argument("rev", help="target revision, e.g. -1 or base")
    down.add_argument("--yes", action="store_true", help="do it: a downgrade drops tables or columns and their data")
    down.add_argument("--ignore-live-worker", action="store_true",
                      help="downgrade even while a worker holds a live lease on a running job (its writes then fail)")
    actions.add_parser("current", help="show the database's revision and the revision this code needs")
    for sub in (up, down, actions.choices["current"]):
        add_settings_arguments(sub)


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    if args.action == "upgrade":
        migrate.upgrade(settings.db_url, args.rev)
        print(f"database at {migrate.current_revision(settings.db_url)} (head is {migrate.head_revision()})")
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
        # a downgrade beside a live worker was neither refused nor warned (ninth review): a running job's live lease
        # is the one mark of a live process the database keeps
        if (leases := migrate.live_job_leases(settings.db_url)) and not args.ignore_live_worker:
            job_id, owner, until = leases[0]
            print(f"error: worker {owner!r} is working on job {job_id} (its lease runs to {until:%H:%M:%S} UTC"
                  f"{f', and {len(leases) - 1} more job(s) are running' if len(leases) > 1 else ''}): stop the "
                  "workers and the server first, or run it again with --ignore-live-worker; nothing was changed",
                  file=sys.stderr)
            return 1
        print("warning: a running server, or a worker between jobs, leaves no mark this command can see: stop them "
              "first, since their writes to what the downgrade drops fail once it is done", file=sys.stderr)
        print(f"downgrading the database {shown!r} to {args.rev}", flush=True)
        if make_url(settings.db_url).get_backend_name() != "sqlite":
            # a copy taken beside a live server misses what it writes before the downgrade takes its locks
            print("no copy is made of a PostgreSQL database; take one with pg_dump first, with the server and the "
                  "workers stopped, if you need it", flush=True)
        migrate.downgrade(settings.db_url, args.rev,
                          copied=lambda backup: print(f"copied the database to {backup}", flush=True))
        print(f"database at {migrate.current_revision(settings.db_url) or 'base (no schema)'}")
        return 0
    current, head = migrate.current_revision(settings.db_url), migrate.head_revision()
    print(f"current: {current or 'base (no schema)'}\nhead:    {head}")
    return 0 if current == head else 1
