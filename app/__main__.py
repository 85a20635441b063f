"""``python -m app <command> ...``: one entry point, one module per command.

A command module defines ``add_arguments(parser)`` and ``main(args) -> int``. It is imported only
when its command runs, so ``python -m app db current`` does not load torch or gradio.
To add a command, add a line to COMMANDS.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS: dict[str, tuple[str, str]] = {
    # name: (module, one-line help)
    "db": ("app.cli_db", "database schema migrations: upgrade, downgrade REV, current"),
    "worker": ("app.cli_worker", "background worker: generate images and train rounds from the job queue"),
    "export": ("app.cli_export", "export a round's LoRA (diffusers, kohya, merged) or an experiment's ratings"),
    "serve": ("app.cli_serve", "the web app: rate images, dashboard, administration (sign-in once accounts exist)"),
    "users": ("app.cli_users", "accounts: add, list, passwd, disable, enable, delete, role NAME admin|rater, audit"),
    "demo": ("app.cli_demo", "migrate, create the 'demo' experiment, start the worker and the web app on 127.0.0.1:7860"),
    "bench-taste": ("app.cli_bench_taste", "the product benchmark: a simulated person rates rounds of the real app (docs/bench-taste.md)"),
}


def _top_parser() -> argparse.ArgumentParser:
    width = max(map(len, COMMANDS))
    listing = "\n".join(f"  {name:<{width}}  {help_}" for name, (_, help_) in sorted(COMMANDS.items()))
    parser = argparse.ArgumentParser(
        prog="python -m app",
        description="SEIKO studio: rate diffusion-model images and fine-tune the model on the ratings.",
        epilog=f"commands:\n{listing}\n\nRun `python -m app COMMAND --help` for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", metavar="COMMAND", nargs="?", help=f"one of: {', '.join(sorted(COMMANDS))}")
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    top = _top_parser()
    ns = top.parse_args(argv)
    if ns.command is None:
        top.print_help(sys.stderr)
        return 2
    if ns.command not in COMMANDS:
        top.error(f"unknown command {ns.command!r}; choose from {sorted(COMMANDS)}")
    module_name, help_ = COMMANDS[ns.command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"python -m app {ns.command}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(ns.rest)
    try:
        return int(module.main(args) or 0)
    except Exception as exc:
        sentence = refusal(exc)
        if sentence is None:
            raise  # not a known fault of the input or the surroundings: the traceback is for a bug report
        print(f"error: {sentence}", file=sys.stderr)
        return 2 if _is_settings_error(exc) else 1


def _is_settings_error(exc: BaseException) -> bool:
    from app.settings import SettingsError

    return isinstance(exc, SettingsError)


def refusal(exc: BaseException) -> str | None:
    """One sentence for an error that bad input or the surroundings cause (a setting, the database, a schema
    revision, an input the database layer refuses), whichever command meets it; None for anything else."""
    from db.errors import DbError, SchemaOutOfDate

    if _is_settings_error(exc) or isinstance(exc, DbError | SchemaOutOfDate):
        return str(exc)
    if "sqlalchemy" in sys.modules:
        from sqlalchemy.exc import DatabaseError, OperationalError

        # the database unreachable or the file not a database; not IntegrityError, ProgrammingError and the other
        # DatabaseError subclasses, which a broken query raises: those keep their traceback
        from db.engine import bound_refusal, unusable_refusal

        if isinstance(exc, OperationalError) and (busy := bound_refusal(exc)) is not None:
            return busy  # a lock held past the bound: the same sentence as the web page's
        if isinstance(exc, OperationalError) or type(exc) is DatabaseError:
            return unusable_refusal(exc)
    if "alembic" in sys.modules:
        from alembic.util.exc import CommandError

        if isinstance(exc, CommandError):
            return f"the schema migration was refused: {exc}"
    return None


if __name__ == "__main__":
    sys.exit(main())
