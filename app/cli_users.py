"""``python -m app users add NAME --role admin|rater [--password-file F] | list | passwd NAME [--password-file F]
| disable NAME | enable NAME | delete NAME | role NAME admin|rater | audit [--limit N]
| raters EXPERIMENT [everyone | admins | NAME ...]``.

The password is never an argument (``ps`` would show it): it is read from the first line of ``--password-file``,
asked for twice on a terminal, or read as the first line of standard input (``python -m app users add alice --role
rater < pw.txt``). Once any account
exists the web app asks everyone to sign in (restart it after adding the first one).

A password change and ``disable`` end the account's sessions (a running web app notices within seconds). ``passwd``
asks for nobody's current password, where the web page asks for the acting admin's (``auth.confirm_own_password``):
whoever runs this has a shell on the server, with the database in reach, and is trusted already. A new password is
held to the same rules as on the web page (``auth.check_password_strength``).
``delete`` refuses an account that has ratings (disable it instead, which keeps them); the last enabled admin
cannot be disabled, deleted or made a rater. ``list`` ends with a note on accounts whose names read the same, or have
no letter or digit, made before new accounts were refused both (they are kept). Every change is written to the audit
log ("command line (USER)"); ``audit`` prints the newest entries. ``raters`` prints who may rate an experiment (by id or name), or sets it:
``everyone``, ``admins`` (only admins may rate it), or only the accounts named (``app.members``; admins always may;
either word mixed with names is refused).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path

from app import auth
from app.settings import Settings
from app.settings import add_arguments as add_settings_arguments
from db import migrate
from db.engine import make_engine, session_factory
from db.errors import SchemaOutOfDate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    # no abbreviations: '--password P' would be read as --password-file P, and a refusal would print P
    add = actions.add_parser("add", help="create an account", allow_abbrev=False)
    add.add_argument("name", help="the name to sign in with")
    add.add_argument("--role", choices=auth.ROLES, required=True, help="admin (runs experiments) or rater")
    # no --password: a command line is readable by every local user in ps, and stays in the shell's history (review)
    add.add_argument("--password-file", metavar="FILE", type=Path,
                     help="read the password from the first line of FILE (default: asked for, or read from standard input)")
    passwd = actions.add_parser("passwd", help="set an account's password", allow_abbrev=False)
    passwd.add_argument("name")
    passwd.add_argument("--password-file", metavar="FILE", type=Path,
                        help="read the new password from the first line of FILE (default: asked for, or read from "
                             "standard input)")
    listing = actions.add_parser("list", help="list the accounts")
    disable = actions.add_parser("disable", help="disable an account: it cannot sign in and its sessions end; ratings stay")
    disable.add_argument("name")
    enable = actions.add_parser("enable", help="enable a disabled account")
    enable.add_argument("name")
    delete = actions.add_parser("delete", help="delete an account that has no ratings, comparison votes or repeat ratings (otherwise disable it)")
    delete.add_argument("name")
    role = actions.add_parser("role", help="make an account an admin or a rater")
    role.add_argument("name")
    role.add_argument("role", choices=auth.ROLES)
    audit = actions.add_parser("audit", help="print the newest entries of the audit log (admin actions)")
    audit.add_argument("--limit", type=int, default=50, help="how many entries (default 50)")
    raters = actions.add_parser("raters", help="who may rate an experiment: print it, or set it to 'everyone', to "
                                               "'admins' (only admins), or to the accounts named (admins always may)")
    raters.add_argument("experiment", help="the experiment's id or name")
    raters.add_argument("names", nargs="*", metavar="NAME",
                        help="'everyone', 'admins' (only admins may rate it), or the accounts that may rate it (not "
                             "a mix of a word and names)")
    for sub in (add, passwd, listing, disable, enable, delete, role, audit, raters):
        add_settings_arguments(sub)


# a first line is read up to this many characters: a longest password and its line end ('\r\n'). A file or pipe without
# a line end (/dev/zero) was read whole before (6 GB and still reading, found by review)
_LINE_LIMIT = auth.MAX_PASSWORD_LENGTH + 2


def _first_line(f) -> str:
    """The first line of ``f`` without its line end, read up to ``_LINE_LIMIT`` characters; a longer one is refused."""
    line = f.readline(_LINE_LIMIT).rstrip("\r\n")
    if len(line) > auth.MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password may have at most {auth.MAX_PASSWORD_LENGTH} characters")
    return line


def read_password(given: Path | None) -> str:
    """The password from the first line of the file ``given``, a terminal prompt (twice), or the first line of
    standard input (a first line longer than a password may be is refused before the rest is read)."""
    if given is not None:
        try:
            with open(given, encoding="utf-8") as f:
                line = _first_line(f)
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"could not read a password from {str(given)!r} ({getattr(exc, 'strerror', None) or exc})") from exc
        if not line:
            raise ValueError(f"the password file {str(given)!r} is empty")
        return line
    if sys.stdin.isatty():
        try:
            first = getpass.getpass("password: ")
            again = getpass.getpass("again: ")
        except EOFError:  # Ctrl-D at the prompt: a traceback (found by review)
            raise ValueError("no password given (the prompt was closed); nothing was changed") from None
        if again != first:
            raise ValueError("the two passwords differ")
        return first
    raw = sys.stdin.readline(_LINE_LIMIT)
    if not raw:
        raise ValueError("no password given: type it on a terminal, pipe it on standard input, or use --password-file")
    line = raw.rstrip("\r\n")
    if len(line) > auth.MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password may have at most {auth.MAX_PASSWORD_LENGTH} characters")
    return line


def _raters(factory, experiment: str, names: list[str]) -> int:
    """``users raters EXPERIMENT [everyone | admins | NAME ...]`` (``app.members``; audit-logged as the command
    line)."""
    from app import members
    from db import repo
    from db.engine import read_session

    with read_session(factory) as s:
        exp = (repo.get_experiment(session=s, experiment_id=int(experiment)) if experiment.strip().isdigit()
               else repo.get_experiment_by_name(session=s, name=experiment))
        exp_id, exp_name = exp.id, exp.name
    if names:
        print(members.set_raters(factory, None, exp_id, members.parse_names(",".join(names))))
    else:
        print(f"experiment {exp_id} ({exp_name!r}): {members.raters_text(factory, exp_id)}")
    return 0


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
                print(f"{u.id:>4}  {u.role:<5}  {u.name}  (since {u.created_at}){'  DISABLED' if u.disabled else ''}")
            for warning in auth.name_warnings(factory):  # accounts made before the name check refused them
                print(f"note: {warning}")
            return 0
        try:
            if args.action == "audit":
                if not 1 <= args.limit <= 10_000:
                    raise ValueError(f"--limit must be from 1 to 10000, got {args.limit}")
                entries = auth.list_audit(factory, limit=args.limit)
                if not entries:
                    print("the audit log is empty")
                for e in entries:
                    print(f"{e.at}  {e.actor}  {e.action}  {e.target}  {e.detail}".rstrip())
                return 0
            if args.action == "raters":
                return _raters(factory, args.experiment, args.names)
            if args.action in ("disable", "enable"):
                auth.set_disabled(factory, name=args.name, disabled=args.action == "disable")
                print(f"{args.name!r} is {args.action}d" + (": its sessions ended" if args.action == "disable" else ""))
                return 0
            if args.action == "delete":
                auth.delete_user(factory, name=args.name)
                print(f"deleted the account {args.name!r}")
                return 0
            if args.action == "role":
                auth.set_role(factory, name=args.name, role=args.role)
                print(f"{args.name!r} is now {'an admin' if args.role == 'admin' else 'a rater'}")
                return 0
            if args.action == "add" and args.role != "admin" and not any(
                    u.role == "admin" and not u.disabled for u in auth.list_users(factory)):
                # as on the web page: with no admin account, nobody could run the app once accounts exist; asked before
                # the password is
                raise ValueError(f"with no admin account yet, the next account must be an admin (a {args.role} "
                                 "alone would leave nobody to run the app); add an admin first")
            password = read_password(args.password_file)
            if args.action == "add":
                first = not auth.users_exist(factory)
                auth.add_user(factory, name=args.name, role=args.role, password=password)
                print(f"added {args.role} {args.name!r}")
                if first:
                    print("this is the first account: restart the web app so that everyone signs in")
            else:
                auth.set_password(factory, name=args.name, password=password)
                print(f"password of {args.name!r} changed; its sessions ended")
        except ValueError as exc:  # db errors and password checks: one sentence for the operator
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    finally:
        engine.dispose()
