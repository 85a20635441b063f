"""``python -m app export lora --experiment E --round K --format diffusers|kohya|merged --out DIR``
and ``python -m app export ratings --experiment E --out DIR``.

The source is chosen by ids and resolved from the database; ``--out`` must be a new directory.
"""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings
from app.settings import add_arguments as add_settings_arguments
from db import migrate
from db.errors import DbError, SchemaOutOfDate
from seiko_core.checkpoint import CheckpointError
from seiko_core.export import FORMATS, ExportError
from seiko_core.models import ModelLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    lora = what.add_parser("lora", help="a round's adapter as a diffusers LoRA, a kohya/A1111 LoRA or a merged pipeline")
    lora.add_argument("--experiment", type=int, required=True, metavar="E", help="experiment id")
    lora.add_argument("--round", type=int, required=True, metavar="K", help="round index (1 or later: round 0 has no adapter)")
    lora.add_argument("--format", choices=FORMATS, required=True, help="diffusers, kohya or merged")
    lora.add_argument("--out", required=True, metavar="DIR", help="new directory to write")
    ratings = what.add_parser("ratings", help="every rating, comparison vote, repeat rating, skip, gold score and pair "
                                              "shown of an experiment as JSONL plus the PNGs they name")
    ratings.add_argument("--experiment", type=int, required=True, metavar="E", help="experiment id")
    ratings.add_argument("--out", required=True, metavar="DIR", help="new directory to write")
    ratings.add_argument("--rater-names", action="store_true",
                         help="name raters by their account names (default: rater-1, rater-2, ..., for sharing)")
    for sub in (lora, ratings):
        add_settings_arguments(sub)


def _audit(settings: Settings, action: str, experiment_id: int, **detail) -> None:
    """The export in the audit log as the admin page's exports are ("export.build", "export.refused"), by
    "command line (USER)": who took a model or the ratings away, and when. The command wrote none (found by review)."""
    from app import auth
    from db.engine import make_engine, session_factory

    engine = make_engine(settings.db_url)
    try:
        auth.record(session_factory(engine), None, action, f"experiment {experiment_id}", **detail)
    finally:
        engine.dispose()


def _reason(exc: Exception) -> str:
    """Why the audit entry could not be written: a database bound that ran out in the sentence the web page and the
    other commands give (db.engine.bound_refusal; it was the driver's "database is locked" or "canceling statement due
    to lock timeout", twelfth review), else the error's own first line (SQLAlchemy's text adds the statement and a link
    on lines of their own)."""
    from db.engine import bound_refusal

    if (busy := bound_refusal(exc)) is not None:
        return busy
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def main(args: argparse.Namespace) -> int:
    from app import export
    from seiko_core.export_verify import VerificationError

    settings = Settings.from_args(args)
    fmt, index = (args.format, args.round) if args.what == "lora" else ("ratings", None)
    try:
        migrate.check_at_head(settings.db_url)
        if args.what == "lora":
            try:
                result = export.export_round_to(settings, args.experiment, args.round, args.format, args.out)
            except VerificationError as exc:  # not published: recorded, as the admin page records it
                try:
                    _audit(settings, "export.refused", args.experiment, format=fmt, round=index, reason=str(exc))
                except (DbError, SQLAlchemyError) as failed:  # the refusal is what the user must read
                    print(f"warning: the refused export could not be recorded in the audit log: {_reason(failed)}",
                          file=sys.stderr)
                raise
        else:
            result = export.export_ratings_to(settings, args.experiment, args.out, rater_names=args.rater_names)
    except (DbError, ExportError, CheckpointError, SchemaOutOfDate, ModelLoadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a folder without write permission: the writes are atomic, nothing is lost
        print(f"error: could not write the export ({exc.strerror or exc}: {exc.filename or args.out})", file=sys.stderr)
        return 1
    try:
        _audit(settings, "export.build", args.experiment, format=fmt, round=index, path=str(result.path),
               sha256=result.sha256)
    except (DbError, SQLAlchemyError) as exc:  # e.g. "database is locked": the export stands, unrecorded
        print(f"error: wrote the export to {result.path}, but could not record it in the audit log: {_reason(exc)}",
              file=sys.stderr)
        return 1
    print(f"wrote {result.format} export to {result.path} (manifest sha256 {result.sha256})")
    if result.card and result.card.get("verification"):
        from seiko_core.export_verify import Verification

        print(Verification.from_dict(result.card["verification"]).sentence())
    return 0
