"""``python -m app users add NAME --role admin|rater [--password P] | list | passwd NAME [--password P]``.

Without ``--password`` the password is asked for twice on a terminal, or read as the first line of
standard input (``echo "$PW" | python -m app users add alice --role rater``). Once any account
exists the web app asks everyone to sign in (restart it after adding the first one).
"""

from __future__ import annotations

import argparse
import getpass
import sys

from app import auth
from app.settings import Settings
from app.settings import add_arguments as add_settings_arguments
from db import migrate
from db.engine import make_engine, session_factory
from db.errors import SchemaOutOfDate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = actions.add_parser("add", help="create an account")
    add.add_argument("name", help="the name to sign in with")
    add.add_argument("--role", choices=auth.ROLES, required=True, help="admin (runs experiments) or rater")
    add.add_argument("--password", help="the password (default: asked for, or read from standard input)")
    passwd = actions.add_parser("passwd", help="set an account's password")
    passwd.add_argument("name")
    passwd.add_argument("--password", help="the new password (default: asked for, or read from standard input)")
    listing = actions.add_parser("list", help="list the accounts")
    for sub in (add, passwd, listing):
        add_settings_arguments(sub)


def read_password(given: str | None) -> str:
    """The password from the flag, a terminal prompt (twice), or the first line of standard input."""
    if given is not None:
        return given
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if getpass.getpass("again: ") != first:
            raise ValueError("the two passwords differ")
        return first
    line = sys.stdin.readline()
    if not line:
        raise ValueError("no password given: use --password, type it on a terminal, or pipe it on standard input")
    return line.rstrip("\r\n")


def main(args: argparse.Namespace) -> int:
    settings = Settings.from_args(args)
    try:
        migrate.check_at_head(settings.db_url)
    except SchemaOutOfDate as exc:
        print(exc, file=sys.stderr)
        return 1
    engine = make_engine(settings.db_url)
    factory = session_factory(engine)
    try:
        if args.action == "list":
            users = auth.list_users(factory)
            if not users:
                print("no accounts (the web app runs in local mode: localhost only, one local admin)")
            for u in users:
                print(f"{u.id:>4}  {u.role:<5}  {u.name}  (since {u.created_at})")
            return 0
        try:
            password = read_password(args.password)
            if args.action == "add":
                first = not auth.users_exist(factory)
                auth.add_user(factory, name=args.name, role=args.role, password=password)
                print(f"added {args.role} {args.name!r}")
                if first:
                    print("this is the first account: restart the web app so that everyone signs in")
            else:
                auth.set_password(factory, name=args.name, password=password)
                print(f"password of {args.name!r} changed")
        except ValueError as exc:  # db errors and password checks: one sentence for the operator
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        engine.dispose()
