"""Input checks shared by the repository modules (``db.repo``, ``db.jobs``).

Each check returns the value it was given (or, for ``check_lease`` and ``check_now``, the value in the form the
caller needs) and raises ``db.errors.InvalidInput`` with one sentence naming ``what`` was wrong. They run before
anything is written. This module imports only ``db.models`` and ``db.errors``, so every repository module can use
it without import cycles.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from db.errors import InvalidInput
from db.models import NAME_MAX, PROMPT_MAX_BYTES, utcnow

_SHA256 = re.compile(r"[0-9a-f]{64}")
# ids are Integer columns: 64-bit in SQLite but 32-bit on PostgreSQL, where a larger value in a query is a DataError
# ("integer out of range"); one id range on both, so a larger one is refused (or not found), the same on each
MAX_ID = 2**31 - 1
NUL = "\x00"  # PostgreSQL text cannot hold it (SQLite can): refused on both
# a lone surrogate ("\ud800", which JSON's \u escapes can carry) will not encode as UTF-8: the drivers raised Python's
# own "'utf-8' codec can't encode ..." and the API passed it on (found by the fourth review); refused on both
UNICODE_REFUSAL = "A text value contains a character that is not valid Unicode."
_MAX_DIGITS = 20  # longer digit strings are refused as they stand (int() of 4,301 digits or more raises its own error)


def whole_number(value: Any) -> Any:
    """A form or JSON value that writes a whole number another way (``5.0``, ``" 7 "``) as that int; anything else
    unchanged, for the caller's own check to refuse with its sentence."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if text.isdecimal() and len(text) <= _MAX_DIGITS:  # isdigit() would also pass '²', which int() refuses
            return int(text)
    return value


def shown(value: Any, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters, for a refusal's sentence (a 5,000-digit id makes no sentence)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_int(what: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{what} must be a whole number, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"at least {minimum}"
        raise InvalidInput(f"{what} must be {bounds}, got {value}")
    return value


def findable_id(value: Any) -> bool:
    """Whether ``value`` could be a row's id (a whole number from 1 to MAX_ID): look it up only then, else it is not
    found (a larger one would be a DataError on PostgreSQL, not the "there is no ..." SQLite gives)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def check_choice(what: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InvalidInput(f"unknown {what} {value!r}; choose from {list(choices)}")
    return value


def check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{what} must be a non-empty string, got {value!r}")
    if value != value.strip():
        raise InvalidInput(f"{what} {value!r} has leading or trailing spaces")
    if len(value) > NAME_MAX:
        raise InvalidInput(f"{what} is {len(value)} characters long; the limit is {NAME_MAX}")
    check_text(what, value)
    # a line break, a terminal escape or a right-to-left override in a name printed in a list makes that list lie
    # (found by review: 'a\nb' listed as two lines); names take letters, marks, digits, punctuation, symbols, spaces
    if bad := [c for c in value if unicodedata.category(c)[0] == "C" or unicodedata.category(c) in ("Zl", "Zp")]:
        raise InvalidInput(f"{what} {shown(value)} contains the control or format character U+{ord(bad[0]):04X}; "
                           "use letters, digits, punctuation and spaces")
    return value


def check_text(what: str, value: str) -> str:
    if NUL in value:
        raise InvalidInput(f"{what} contains a NUL character (\\x00), which the database cannot hold")
    if not encodable(value):
        raise InvalidInput(f"{what} contains a character that is not valid Unicode (a lone surrogate)")
    return value


def check_prompt(what: str, value: str, limit: int = PROMPT_MAX_BYTES) -> str:
    """A prompt of at most ``limit`` bytes in UTF-8 (``db.models.PROMPT_MAX_BYTES``: the images table indexes the whole
    prompt, and PostgreSQL refuses an index row over 2,704 bytes), after ``check_text``."""
    check_text(what, value)
    size = len(value.encode("utf-8"))
    if size > limit:
        raise InvalidInput(f"{what} is {size:,} bytes in UTF-8; the limit is {limit:,} bytes (CLIP reads only a "
                           "prompt's first 77 tokens, and the database indexes the whole prompt)")
    return value


def encodable(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8 (it does unless it holds a lone surrogate, U+D800 to U+DFFF)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json(what: str, value: Any) -> Any:
    """A value the database can store as JSON: encoded as ``db.models.JSONText`` does (sorted keys, no NaN), so what
    that encoding refuses is refused here with a sentence, not at the flush; and with string keys only (JSON turns
    another key into a string, so the value would read back changed). Tuples read back as lists."""
    try:
        json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} cannot be stored as JSON: {e}") from e
    except RecursionError as e:  # a list nested thousands deep
        raise InvalidInput(f"{what} cannot be stored as JSON: it is nested too deeply") from e
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            bad = [k for k in item if not isinstance(k, str)]
            if bad:
                raise InvalidInput(f"{what} cannot be stored as JSON as given: its key {shown(bad[0])} is not a string")
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return value


def check_sha256(what: str, value: Any) -> str:
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise InvalidInput(f"{what} must be 64 lowercase hex digits, got {value!r}")
    return value


def check_relative_path(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"{what} must be a non-empty path string, got {value!r}")
    posix = PurePosixPath(value)
    if posix.is_absolute() or PureWindowsPath(value).is_absolute() or ".." in posix.parts or "\\" in value:
        raise InvalidInput(f"{what} {value!r} must be a relative path inside the data dir (forward slashes, no '..')")
    return value


MAX_LEASE_S = 30 * 86_400.0  # a job's lease; the worker's own is at most a day (app.settings)


def check_lease(lease_s: Any) -> timedelta:
    """A lease length in seconds as a timedelta: more than 0, at most MAX_LEASE_S (1e12 raised OverflowError: review)."""
    if (isinstance(lease_s, bool) or not isinstance(lease_s, int | float) or not math.isfinite(lease_s) or lease_s <= 0
            or lease_s > MAX_LEASE_S):
        raise InvalidInput(f"lease_s must be a number of seconds above 0 and at most {MAX_LEASE_S:.0f} (30 days), "
                           f"got {lease_s!r}")
    return timedelta(seconds=lease_s)


def check_now(now: datetime | None, session: Any = None) -> datetime:
    """The caller's clock (tests pass one); when None, the current UTC time by ``db_clock(session)``: the database's
    clock on PostgreSQL, this machine's without a session."""
    if now is None:
        return utcnow() if session is None else db_clock(session)
    if now.tzinfo is None:
        raise InvalidInput(f"now must be a timezone-aware datetime, got naive {now!r}")
    return now.astimezone(UTC)  # UTC, as stored: a value bound without the column's type keeps its wall-clock digits


def db_clock(session: Any) -> datetime:
    """The current UTC time by the database server's clock on PostgreSQL (``clock_timestamp()``), by this machine's
    on SQLite (one file: every process that opens it runs on this machine).

    Leases (a worker's on a job, a rater's on an image) are written by one machine and judged expired by another: on
    PostgreSQL several machines share the database, and each used its own clock. A worker whose clock ran 90 s
    behind wrote leases that every other worker saw as expired at once and took over (its job was run twice, and
    its attempts used up), one running ahead took every live job over (found by the seventh review); now the one
    clock they all read is the database's."""
    from sqlalchemy import func, select

    if session.get_bind().dialect.name != "postgresql":
        return utcnow()
    return session.scalar(select(func.clock_timestamp())).astimezone(UTC)
