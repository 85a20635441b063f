"""Accounts: salted password hashes, sign-in, and who is asking (with which role).

Passwords are hashed with scrypt (``hashlib.scrypt``, a fresh 16-byte salt each) and stored as
``scrypt$N$r$p$salt$hash`` (base64); checks use a constant-time compare. This module never stores
or logs a plain password. A sign-in whose password matches a hash made with older parameters stores it hashed with
today's (``check_login``); that is not a password change, so no session ends.

Two modes, fixed when the server starts:

- accounts: the database holds users; Gradio's login page asks for a name and password
  (``launch(auth=authenticator(factory))``) and ``request.username`` names the rater.
- local: the database holds no users; the server listens on localhost only and everyone who
  reaches it is the single local admin (a rater row named ``LOCAL_ADMIN_NAME`` made on demand,
  whose password hash can never match, so nobody can sign in as it).

Every UI and API handler calls ``identify`` and, for admin work, ``require_admin``: the role is
checked on the server, not merely by hiding buttons.

Accounts can be disabled (no sign-in; their sessions end), enabled, deleted (only without ratings) and
given another role; a password change ends the account's sessions. Each such change, and every other
admin action, is written to the audit log (``audit``) in the database: who, what, on what, when. The
last enabled admin account cannot be disabled, deleted or made a rater.
"""

from __future__ import annotations

import base64
import bisect
import functools
import getpass
import hashlib
import hmac
import ipaddress
import itertools
import logging
import math
import os
import re
import string
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app import sessions as app_sessions
from db import repo
from db.checks import shown
from db.engine import read_session, write_session
from db.errors import Conflict, NotFound
from db.models import Rater

log = logging.getLogger("seiko.auth")

# OWASP's Password Storage Cheat Sheet: scrypt N=2**17, r=8, p=1, or an equal-cost setting such as N=2**14, r=8, p=5,
# which this is: 16 MiB per hash (so concurrent sign-ins stay light) and 5 passes (it was p=1, a fifth of the
# minimum; found by a security review). Stored hashes carry their own parameters: older ones still verify, and are
# made again with these at their account's next sign-in (``needs_rehash``)
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 5
SALT_BYTES, KEY_BYTES = 16, 32
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # sign-in refuses longer ones before hashing, so none may be set
LOCAL_ADMIN_NAME = "local admin"
LOCAL_ADMIN_HASH = repo.LOCAL_ADMIN_HASH
ROLES = ("admin", "rater")


class AuthError(PermissionError):
    """The request may not be carried out by whoever sent it; the message says why in one sentence."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


UNENCODABLE_REFUSAL = "a password may hold only characters that can be written as text (it held half of a character pair)"


def _encodable(password: str) -> bool:
    """Whether ``password`` can be written as UTF-8 (a lone surrogate, which a JSON escape such as \\ud800 can carry
    into an event, cannot: scrypt's input is the UTF-8 bytes)."""
    try:
        password.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=64 * 1024 * 1024)


# the most common passwords, written for this project (one a line, # for notes): refused alone or followed only by
# digits and punctuation, and taken out wherever they stand when the characters left are counted (``check_password_strength``)
COMMON_PASSWORDS_FILE = Path(__file__).with_name("common_passwords.txt")
# runs of consecutive letters, digits or keys: a password that reads along one of these (either way) is refused
SEQUENCES = ("abcdefghijklmnopqrstuvwxyz", "01234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
NAME_IN_PASSWORD_MIN = 3  # a shorter account name ("al") is refused as the whole password only, not as a part of one
# a stretch of this many characters or more that is one character or a group of up to REPEATED_GROUP_MAX characters
# written again and again, or reads along one of SEQUENCES (either way), is a run; a password needs MIN_PASSWORD_LENGTH
# characters outside its runs and common passwords (``_characters_left``)
RUN_MIN = 4
REPEATED_GROUP_MAX = 4  # "abab", "abcabc", "abcdabcd"; a longer group is a run only when it is a common password
COMMON_INSIDE_MIN = 5  # a common password this long or longer is taken out wherever it stands ("1password")
# what a common password taken out of a longer one still counts for: whoever guesses must pick it from the list (under
# 100 entries, in their spellings of case, spaces and leet: about as many guesses as two letters, 26**2 = 676), so a
# phrase of unrelated words ("hotel guest") is not read as its other words alone; counted for a stretch of common
# passwords (touching ones, "summerwinter", count once) that is not all a run (a common password written again) and
# holds a listed one no stretch counted before it held, read in the order that counts fewest (``_fewest_stretches``):
# each listed one is picked once, so written again, or put together again with others ("password dragon
# passworddragon"), it counts no more
COMMON_WORD_WORTH = 2
# a group of stretches linked by the listed ones they share is counted exactly (every combination of its stretches
# tried) up to this many different stretches, none inside another (2**12 combinations at most); a larger one counts a
# stated bound never above the exact count (``_fewest_stretches``)
PHRASE_EXACT_MAX = 12
# the common leet substitutions, read as the letters they stand for when passwords are compared with the list
# (``_skeleton``); 1 stands for i or l (``LEET_ONE``)
# (a | is read as a 1: "he||o" is "hello", as "he11o" is; it was dropped as a mark, and "|etme|n!" passed: found by a
# read-only review of the fourteenth review's fixes)
LEET = str.maketrans({"4": "a", "@": "a", "3": "e", "0": "o", "5": "s", "$": "s", "7": "t", "|": "1"})
# 1 is kept in a skeleton and reads as i or as l, either way ("l3tm31n" is "letmein", "he11o" is "hello"); i and l do
# not read as each other: when 1, i and l were all read as i, "helio" was "hello" and "heliotrope" counted 7 (found by
# a brute force over the listed words' i/l/1 spellings, fourteenth review)
LEET_ONE = {"1": "[il1]", "i": "[i1]", "l": "[l1]"}
# letters that show nothing (Hangul fillers; U+3164 and U+FFA0 read as U+1160), set aside like format characters
_BLANK_LETTERS = frozenset("\u115f\u1160")


def _dropped(c: str) -> bool:
    """Whether ``_folded`` drops the character ``c``: a combining mark, a format or control character, a blank letter."""
    return (unicodedata.category(c) in ("Mn", "Me", "Cf", "Cc") or unicodedata.combining(c) != 0
            or c in _BLANK_LETTERS)


def _capital_i_as_one(text: str) -> str:
    """``text`` with each capital I written as a 1, so that it reads as an i or an l (``LEET_ONE``), where ``text`` has
    a lower-case letter: in a password of mixed case ("FootbaII", "heIIo", "footba II 2026", "FootBAII") an I may
    stand for an l, as it looks like one there. In a password of capitals only ("HELIOTROPE") an I stays an i: an I
    read as i or l there made "HELIO" read as "hello"; the price, "FOOTBAII" in capitals is no "football". A rule on
    the whole password, not on the letters beside each I: that one let an I after a space or a mark through ("footba
    II"), as the comparison joins across them (both found by reviews of the fourteenth review's fixes, 6 Dec 2026).
    One character for one, so positions in ``_folded`` stay where they were (``_capital_i_read_as_one``)."""
    return text.replace("I", "1") if any(c.islower() for c in text) else text


def _folded(text: str, capital_i_as_one: bool = False) -> str:
    """``text`` as the password rules compare it: compatibility forms and case aside (NFKD, case-folded, NFKD again: the
    Unicode compatibility caseless match), accents and other combining marks, format characters (zero-width spaces,
    soft hyphens, byte-order marks) and control characters dropped, every space (no-break, line separator) a space.
    With ``capital_i_as_one``, the capital I's that ``_capital_i_as_one`` reads as a 1 are a 1 (once compatibility
    forms are read, so a full-width I is one): each stands where its i stands otherwise, as an I and a 1 are each one
    character through case folding and NFKD (``_capital_i_read_as_one``)."""
    # what is dropped is dropped before case folding too: U+0345, a combining mark, folds to the letter iota, so
    # "Pass\u0345word" folded to "pass\u03b9word" and passed (found by a read-only review of the fourteenth review's
    # fixes)
    decomposed = "".join(c for c in unicodedata.normalize("NFKD", text) if not _dropped(c))
    if capital_i_as_one:
        decomposed = _capital_i_as_one(decomposed)
    kept = []
    for c in unicodedata.normalize("NFKD", decomposed.casefold()):
        if not _dropped(c):
            kept.append(" " if unicodedata.category(c).startswith("Z") else c)
    return "".join(kept)


def _capital_i_read_as_one(password: str, folded: str) -> frozenset[int]:
    """The positions in ``folded`` (``_folded(password)``) of the capital I's of ``password`` that read as a 1
    (``_capital_i_as_one``). Only the comparison with common passwords reads them so (``_skeleton``); the name, run and
    sequence rules read them as the i's they fold to."""
    marked = _folded(password, capital_i_as_one=True)
    return frozenset(k for k, (a, b) in enumerate(zip(folded, marked, strict=True)) if a != b)


RUNS_REFUSAL = (f"a password needs at least {MIN_PASSWORD_LENGTH} characters besides its runs and the most common "
                f"passwords (common ones, also spelled with spaces or as p4ssw0rd, count {COMMON_WORD_WORTH} for each "
                f"stretch of them, touching ones together, that holds one not counted before: written again or put "
                f"together again, they count no more): "
                f"runs are {RUN_MIN} or more characters that repeat one character or a group of up to "
                f"{REPEATED_GROUP_MAX} (aaaa, abab, abcabc) or read along letters, digits or keys (1234, dcba, qwer); "
                "accents and invisible characters do not count")
_TRAILING = string.digits + string.punctuation  # what may follow a common password and still be it ("Password1!")


def _skeleton(folded: str, ones: frozenset[int] = frozenset()) -> tuple[str, list[int]]:
    """``folded`` as it is compared with the list of common passwords: leet substitutes read as their letters
    (``LEET``), then every character that is not a letter or a digit (spaces, punctuation) dropped, so "pass word",
    "p4ssword" and "p@ssw0rd" read "password" (thirteenth review); a 1 stays, read as i or l where skeletons are
    compared (``_skeleton_pattern``), as does the character at each of the positions ``ones`` (a capital I read as a 1,
    ``_capital_i_read_as_one``). Returns the skeleton and, for each of its characters, its position in ``folded``."""
    mapped = "".join("1" if k in ones else c for k, c in enumerate(folded.translate(LEET)))
    kept = [i for i, c in enumerate(mapped) if c.isalnum()]
    return "".join(mapped[i] for i in kept), kept


@functools.cache
def _common_skeletons() -> frozenset[str]:
    """The skeletons (``_skeleton``) of ``common_passwords``."""
    return frozenset(filter(None, (_skeleton(entry)[0] for entry in common_passwords())))


def _skeleton_pattern(skeleton: str) -> str:
    """A regular expression for the skeletons that read as ``skeleton``: each character itself, but a 1 for an i or
    an l and an i or an l for a 1 (``LEET_ONE``)."""
    return "".join(LEET_ONE.get(c, re.escape(c)) for c in skeleton)


@functools.cache
def _common_pattern() -> re.Pattern[str]:
    """The skeletons that read as one of ``_common_skeletons`` (``_skeleton_pattern``), for a whole match."""
    return re.compile("|".join(_skeleton_pattern(entry) for entry in sorted(_common_skeletons())))


@functools.cache
def _inside_patterns() -> tuple[tuple[str, re.Pattern[str]], ...]:
    """Each of ``_common_skeletons`` of COMMON_INSIDE_MIN characters or more, with a pattern that finds every place a
    skeleton reads as it, overlapping ones too."""
    return tuple((entry, re.compile(f"(?=({_skeleton_pattern(entry)}))")) for entry in sorted(_common_skeletons())
                 if len(entry) >= COMMON_INSIDE_MIN)


def _is_common(folded: str, ones: frozenset[int] = frozenset()) -> bool:
    """Whether ``folded`` is a common password, alone or followed only by digits and punctuation: it starts with a
    letter or digit (leet read as letters: "$unshine" does) and, cut anywhere in the digits and punctuation it ends
    with, its skeleton (``_skeleton``) reads as a listed one's (``_skeleton_pattern``: "P@ss w0rd 1!" is "password",
    "he11o" is "hello"). Marks before the word are no spelling of it ("!password" is a common password with a character
    before it, ``_characters_left``'s case). The characters at ``ones`` read as a 1 (``_skeleton``): being i's in
    ``folded``, they are not digits at its end ("FootbaII" is "football"). Only the cut after all of them was read, so a
    word's own last letter written as a digit or mark went with them ("footbal1", "hell0", "princes$": found by the
    fifteenth review, 6 Dec 2026)."""
    stripped = len(folded.rstrip(_TRAILING))
    if not stripped or not folded.translate(LEET)[:1].isalnum():  # digits and punctuation alone are no word
        return False
    skeleton, at = _skeleton(folded, ones)
    word = bisect.bisect_left(at, stripped)  # the skeleton's characters before the digits and punctuation at the end
    # each cut's skeleton is a start of the whole one, at least ``word`` long; none longer than a listed one matches
    longest = max(word, min(len(skeleton), max(map(len, _common_skeletons()))))
    return any(_common_pattern().fullmatch(skeleton[:cut]) for cut in range(word, longest + 1))


@functools.cache
def common_passwords() -> frozenset[str]:
    """The entries of COMMON_PASSWORDS_FILE, folded, without the digits and punctuation they end with (the rule reads a
    password so: "abc123" and "abc2026!" are the same entry, "abc")."""
    lines = COMMON_PASSWORDS_FILE.read_text(encoding="utf-8").splitlines()
    entries = (_folded(line.strip()).rstrip(_TRAILING) for line in lines if line.strip() and not line.startswith("#"))
    return frozenset(e for e in entries if e)


def _characters_left(folded: str, ones: frozenset[int] = frozenset()) -> int:
    """How many characters ``folded`` counts for once its common passwords and runs are taken out: the characters
    outside them all, and COMMON_WORD_WORTH for each stretch of common passwords that is not all run and holds a
    listed one (by skeleton) that no stretch counted before it held, read in the order that counts fewest
    (``_fewest_stretches``), so that the order they are written in changes nothing.
    So each listed one counts once: a stretch of touching ones counts once ("summerwinter": 2), and a stretch made only
    of listed ones counted already, the same one written again apart or counted ones put together again, counts
    nothing ("password dragon passworddragon dragonpassword", or its stretches in any order: 2 + 2 and the 3 spaces,
    7). Taken out: every place a common password
    (``common_passwords``) of COMMON_INSIDE_MIN characters or more stands, compared by skeleton (``_skeleton``: leet
    read as letters, the characters at ``ones`` as a 1, spaces and punctuation skipped, so "p4ss word" stands where its
    first and last letters do), and every run, a stretch of RUN_MIN characters or more that

    - is one group of 1 to REPEATED_GROUP_MAX characters written twice or more in a row ("aaaa", "abab", "abcabc"),
    - or any group written twice or more in a row that is a common password, alone or with digits and punctuation
      after it ("test1test1", "abc123abc123"),
    - or reads along one of SEQUENCES, either way ("1234", "dcba", "qwer", "7890").

    Runs and common passwords may overlap or touch ("abcd1234" is all runs). Each run found is extended as far as it
    goes, so this takes a few steps a character: measured on the build machine's one core, about 7 ms for the longest
    password (1024 characters, a run all along) and 2 ms for 1024 random ones; the change form counts its refusals
    (``RefusedNewPasswords``)."""
    n = len(folded)
    covered = [False] * n  # by runs (a common password written again is one)
    common = [False] * n  # by common passwords standing anywhere

    def cover(i: int, j: int) -> None:
        covered[i:j] = [True] * (j - i)

    for p in range(1, REPEATED_GROUP_MAX + 1):  # the stretches where each character is the one p before it
        start = 0
        for k in range(p, n + 1):
            if k < n and folded[k] == folded[k - p]:
                continue
            if k - start >= max(RUN_MIN, 2 * p):  # [start, k): one group of p written twice or more
                cover(start, k)
            start = k - p + 1
    lines = SEQUENCES + tuple(line[::-1] for line in SEQUENCES)
    for i in range(n - RUN_MIN + 1):
        end = i + RUN_MIN
        if not any(folded[i:end] in line for line in lines):
            continue
        while end < n and any(folded[i:end + 1] in line for line in lines):
            end += 1
        cover(i, end)
    skeleton, at = _skeleton(folded, ones)
    words: list[tuple[int, int, str]] = []  # where each listed one stands in folded: [begin, end), its skeleton
    for entry, pattern in _inside_patterns():
        for match in pattern.finditer(skeleton):
            begin, end = at[match.start()], at[match.start() + len(entry) - 1] + 1
            common[begin:end] = [True] * (end - begin)
            words.append((begin, end, entry))
    for entry in common_passwords():
        i = folded.find(entry)
        while i >= 0:
            after = i + len(entry)  # the entry with each count of the digits and punctuation after it, written again
            while True:
                group = folded[i:after]
                if len(group) > REPEATED_GROUP_MAX and folded[after:after + len(group)] == group:
                    j = after + len(group)
                    while folded[j:j + len(group)] == group:
                        j += len(group)
                    cover(i, j)
                if after >= n or folded[after] not in _TRAILING:
                    break
                after += 1
            i = folded.find(entry, i + 1)
    # the stretches of common passwords not all run, each counted when it holds a listed one not
    # counted before: a stretch written again apart ("password password password", spaces between) counted again, so
    # three copies of a listed password passed (found by a read-only review of the thirteenth review's rule, 6 Dec
    # 2026); and a stretch that was the same listed ones put together again ("passworddragon" after "password
    # dragon") was a different stretch, so "password dragon passworddragon dragonpassword" counted 11 (fourteenth
    # review); compared by skeleton ("dr4gon" is "dragon"). Taken from the left, the count hung on the order
    # ("passworddragon password dragon" 4, "password dragon passworddragon" 6: fifteenth review, 6 Dec 2026); taken
    # fewest listed ones first, ties by their spelling, it hung on the spelling and could count more than reading from
    # the left ("dragonpassword monkeyshadow dragonmonkey" 8, "... passwordshadow" 6: a read-only review of that fix):
    # the least over every order now (``_fewest_stretches``)
    words.sort()
    held_by: list[tuple[str, ...]] = []  # the listed ones each stretch that is not all run holds
    w, begin, counts = 0, -1, False
    for k in range(n + 1):
        if k < n and common[k]:
            begin, counts = (k if begin < 0 else begin), counts or not covered[k]
            continue
        if begin >= 0:
            held = set()
            while w < len(words) and words[w][0] < k:  # each listed one stands inside one stretch
                held.add(words[w][2])
                w += 1
            if counts:
                held_by.append(tuple(sorted(held)))
        begin, counts = -1, False
    left = sum(1 for k in range(n) if not covered[k] and not common[k])
    return left + COMMON_WORD_WORTH * _fewest_stretches(held_by)


def _fewest_stretches(held_by: list[tuple[str, ...]]) -> int:
    """How many of the stretches (``held_by``: the listed ones each holds) count, read in the order that counts fewest
    (a stretch counts when it holds a listed one no stretch read before it held): the fewest stretches that together
    hold every listed one, as those read first each count and then no other does. Stretches that share no listed one
    are apart, so each group linked by shared ones is counted alone, its stretches held inside another (or the same as
    another) left out. A group of up to PHRASE_EXACT_MAX stretches is counted exactly: every combination of them tried,
    fewest first. A larger one (a long password of many linked stretches) counts a bound never above the exact count,
    so never more lenient than any order: the stretches that alone hold some listed one (each is needed), and the rest
    of its listed ones divided by the most of them any other stretch holds, rounded up. Quadratic in the stretches at
    most, beside the 2**PHRASE_EXACT_MAX combinations of a small group."""
    distinct = {frozenset(held) for held in held_by if held}
    kept = [held for held in distinct if not any(held < other for other in distinct)]
    groups: list[list[frozenset[str]]] = []
    for held in kept:
        linked: list[frozenset[str]] = [held]
        apart: list[list[frozenset[str]]] = []
        for group in groups:
            if any(held & other for other in group):
                linked.extend(group)
            else:
                apart.append(group)
        groups = [*apart, linked]
    total = 0
    for group in groups:
        words = frozenset().union(*group)
        if len(group) <= PHRASE_EXACT_MAX:
            total += next(size for size in range(1, len(group) + 1)
                          if any(frozenset().union(*chosen) == words for chosen in itertools.combinations(group, size)))
            continue
        alone = [held for held in group if any(all(word not in other for other in group if other is not held)
                                               for word in held)]
        rest = words.difference(*alone)
        most = max((len(held & rest) for held in group if held not in alone), default=0)
        total += len(alone) + (-(-len(rest) // most) if rest else 0)
    return total


def check_password_strength(password: str, name: str | None = None) -> None:
    """Refuse (ValueError, one sentence) a password a new one may not be: under MIN_PASSWORD_LENGTH or over
    MAX_PASSWORD_LENGTH characters, starting or ending with spaces, the account's ``name`` (compared as the rules
    compare, ``_folded``) or holding it (a name of NAME_IN_PASSWORD_MIN characters or more), one character repeated, a
    run along one of SEQUENCES (12345678, abcdefgh, qwertyui, backwards too), one of the most common passwords
    (``common_passwords``) alone or followed only by digits and punctuation, compared by skeleton (``_is_common``: leet
    read as letters, spaces and punctuation skipped, so "pass word" and "p4ssw0rd!" are "password"); and, the rule
    that covers the rest, one that counts for fewer than MIN_PASSWORD_LENGTH characters once it is read as the rules
    read it (``_folded``: case, compatibility forms, accents, format and control characters aside) and its common
    passwords of COMMON_INSIDE_MIN characters or more (by skeleton) and its runs are taken out (``_characters_left``:
    RUN_MIN or more characters repeating one character or a group of up to REPEATED_GROUP_MAX, or a common password
    written again, or reading along one of SEQUENCES either way), each stretch of common passwords that holds a listed
    one not counted before counting COMMON_WORD_WORTH, in the order that counts fewest (``_fewest_stretches``). So
    "abcdefgh1", "1234567a", "abababab", "11112222", "1password", "my p4ss word", "passwordpassword", "password dragon
    passworddragon" (2 + 2, 2 spaces), eight accents alone and "password" with a zero-width space are refused; "my
    1234 garden" (10), "hotel guest" (6 + 2), "my password is long" (11 + 2), "heliotrope" and "HELIOTROPE" (10: an i
    is no l, a capital I among capitals an i, while "FootbaII" is "football", ``_capital_i_as_one``) and "purple horse
    battery staple" are not. Passwords set under older rules still sign in (``_new_hash``)."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"a password may have at most {MAX_PASSWORD_LENGTH} characters")
    if password != password.strip():
        raise ValueError("a password may not start or end with spaces")
    if not _encodable(password):  # a lone surrogate passed every rule, then hashing raised UnicodeEncodeError
        raise ValueError(UNENCODABLE_REFUSAL)
    folded = _folded(password)
    account = _folded(name.strip()) if isinstance(name, str) else ""
    if account and (folded == account or (len(account) >= NAME_IN_PASSWORD_MIN and account in folded)):
        raise ValueError("a password may not be or contain the account's name")
    if len(set(folded)) == 1:
        raise ValueError("a password may not be one character repeated")
    if folded and any(folded in run or folded in run[::-1] for run in SEQUENCES):
        raise ValueError("a password may not be a run of consecutive letters, digits or keys, such as 12345678, "
                         "abcdefgh or qwertyui")
    # "pass word", "p4ssword", "Pa55 w0rd!" passed: the list was compared as written (thirteenth review)
    # a capital I written for an l ("FootbaII", "heIIo123") read as an i once i and l were no longer one letter, and
    # passed (a review of the fourteenth review's fixes): only the comparison with common passwords reads it as a 1
    ones = _capital_i_read_as_one(password, folded)
    if _is_common(folded, ones):
        raise ValueError("that password is one of the most commonly used ones, which are tried first; choose another")
    # "abcdefgh1" passed the run rule above, which looked at the whole password only; "1password", "abababab" and
    # "password" with a zero-width space passed every rule (the twelfth review, 6 Dec 2026)
    if _characters_left(folded, ones) < MIN_PASSWORD_LENGTH:
        raise ValueError(RUNS_REFUSAL)


def hash_password(password: str, name: str | None = None) -> str:
    """A salted scrypt hash of ``password`` as ``scrypt$N$r$p$salt$hash``, once ``check_password_strength`` (for the
    account ``name``, if given) passed it."""
    check_password_strength(password, name)
    return _new_hash(password)


def _new_hash(password: str) -> str:
    """``hash_password`` without the strength rules: a password set under older rules is hashed again at sign-in as
    it is (its owner knows no other)."""
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time). A hash not in our format (the local admin's marker)
    never matches, after a hash all the same: the answer's time does not tell such a row exists."""
    if not isinstance(password, str):
        return False
    if not _encodable(password):  # no stored password is one: it was refused when set (check_password_strength)
        verify_password("", _DUMMY_HASH)
        return False
    parts = stored.split("$") if isinstance(stored, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        verify_password(password, _DUMMY_HASH)
        return False
    n, r, p = (int(x) for x in parts[1:4])
    salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


def _parameters(stored: str) -> tuple[int, int, int] | None:
    """The (N, r, p) of a hash in our format, else None."""
    parts = stored.split("$") if isinstance(stored, str) else []
    if len(parts) != 6 or parts[0] != "scrypt":
        return None
    n, r, p = (int(x) for x in parts[1:4])
    return n, r, p


def _spend_the_rest_of_todays_cost(password: str, stored: str) -> None:
    """Hash ``password`` (salt and result thrown away) for the scrypt work that checking it against ``stored`` fell
    short of a check with today's parameters. scrypt's work is N * r * p (p mixes over N blocks of 128 * r bytes, one
    after the other); the shortfall is spent in today's r, as one call of today's N for its whole multiples and one
    call per power of two of the rest. A refusal then costs what an unknown name's does (one hash with today's
    parameters, ``_DUMMY_HASH``), whatever parameters the account's hash was made with: a hash made with p=1 cost a
    fifth of it, then (with today's whole hash on top) six fifths, each telling the name is an account's (found by the
    tenth review, 6 Dec 2026). A hash costing more than today's (none is made) is left as it is."""
    params = _parameters(stored)
    if params is None:
        return
    n, r, p = params
    blocks = (SCRYPT_N * SCRYPT_R * SCRYPT_P - n * r * p) // SCRYPT_R  # in blocks of 128 * SCRYPT_R bytes
    if blocks <= 0:
        return
    if blocks // SCRYPT_N:
        _scrypt(password, _PAD_SALT, SCRYPT_N, SCRYPT_R, blocks // SCRYPT_N)
    rest = blocks % SCRYPT_N
    for bit in range(1, SCRYPT_N.bit_length()):  # scrypt takes N = 2, 4, 8, ...: a rest of one block is left out
        if rest & (1 << bit):
            _scrypt(password, _PAD_SALT, 1 << bit, SCRYPT_R, 1)


def needs_rehash(stored: str) -> bool:
    """Whether ``stored`` (a hash in our format) was made with other scrypt parameters (N, r, p) than a new hash gets:
    a sign-in that matched it stores the password hashed anew (``check_login``)."""
    params = _parameters(stored)
    return params is not None and params != (SCRYPT_N, SCRYPT_R, SCRYPT_P)


# ---------------------------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------------------------


def _accounts(session: Session) -> list:
    return [r for r in repo.list_raters(session=session) if r.password_hash != LOCAL_ADMIN_HASH]


def users_exist(factory: sessionmaker[Session]) -> bool:
    """Whether any account (a rater who can sign in) exists; the local admin does not count."""
    with read_session(factory) as s:
        return bool(_accounts(s))


def _actor(who: Who | None) -> tuple[int | None, str]:
    """(rater id, name) for the audit log: the admin behind a request, or the command line's operating-system user."""
    if who is not None:
        return who.rater_id, who.name
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container): say so rather than guess
        user = f"uid {os.getuid()}"
    return None, f"command line ({user})"


def audit(session: Session, who: Who | None, action: str, target: str | None = None, **detail: Any) -> None:
    """Write one audit entry in ``session`` (the caller's transaction): ``who`` did ``action`` to ``target``."""
    actor_id, actor_name = _actor(who)
    repo.add_audit(session=session, actor_id=actor_id, actor_name=actor_name, action=action, target=target,
                   detail=detail or None)


def record(factory: sessionmaker[Session], who: Who | None, action: str, target: str | None = None, **detail: Any) -> None:
    """``audit`` in a transaction of its own (for actions whose own transaction lives elsewhere, e.g. app.services)."""
    with write_session(factory) as s:
        audit(s, who, action, target, **detail)


# what an account's name may hold: people read names in lists and the audit log, and reviews kept finding letters of
# other scripts that read as Latin ones, so names take Latin letters (accented ones too: any letter that decomposes to a
# basic Latin letter and accents, and those of Latin-1 and Latin Extended-A), digits, spaces and a few marks
NAME_PUNCTUATION = " ._-'\u2019@"
_OTHER_LATIN = "\u018f\u0259"  # Ə ə (Azerbaijani), which decompose to nothing


def _name_char(c: str) -> bool:
    if (c.isascii() and c.isalnum()) or c in NAME_PUNCTUATION or c in _OTHER_LATIN:
        return True
    if "\u00c0" <= c <= "\u017f":
        return c not in "\u00d7\u00f7"
    base, *marks = unicodedata.normalize("NFKD", c)
    return base.isascii() and base.isalpha() and bool(marks) and all(unicodedata.combining(m) for m in marks)


RESERVED_NAMES = {"everyone": "every rater", "admins": "admins only"}


def check_account_name(name: Any) -> str:
    """Refuse (ValueError, one sentence) an account name with a character other than those ``_name_char`` takes; the
    name is read composed (NFC), as it is stored."""
    if isinstance(name, str):
        name = unicodedata.normalize("NFC", name)
        if (bad := next((c for c in name if not _name_char(c)), None)) is not None:
            raise ValueError(f"an account name takes Latin letters (accented ones too), digits, spaces and . _ - ' @ "
                             f"only; {shown(name)} has {bad!r} (U+{ord(bad):04X})")
        # "'", "-" or ".." named nobody anyone could tell apart in a list or the audit log (the sixth review)
        if name and not any(c.isalnum() for c in name):
            raise ValueError(f"an account name needs at least one letter or digit; {shown(name)} has none")
        # the words of an experiment's rater list (app.members, in any case): an account so named could not be listed
        # alone there, the word would win (found by the fifth review)
        if name.strip().casefold() in RESERVED_NAMES:
            raise ValueError(f"{name.strip()!r} is not an account name: in an experiment's list of raters it means "
                             f"{RESERVED_NAMES[name.strip().casefold()]}; choose another name")
    return name


def add_user(factory: sessionmaker[Session], *, name: str, role: str, password: str, actor: Who | None = None) -> int:
    """Create an account; returns the rater id. Raises ValueError (db.errors) with one sentence."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose from {list(ROLES)}")
    name = check_account_name(name)  # stored composed: an accent typed as a separate mark signs in either way
    if repo.name_key(name) == repo.name_key(LOCAL_ADMIN_NAME):
        raise ValueError(f"the name {LOCAL_ADMIN_NAME!r} is reserved for the app's local mode; choose another")
    hashed = hash_password(password, name)
    with write_session(factory) as s:
        rater_id = repo.create_rater(session=s, name=name, role=role, password_hash=hashed).id
        audit(s, actor, "user.add", name, role=role)
        return rater_id


def _account(session: Session, name: str):
    rater = repo.get_rater_by_name(session=session, name=name)
    if rater.password_hash == LOCAL_ADMIN_HASH:
        raise ValueError(f"{LOCAL_ADMIN_NAME!r} is the local-mode admin, not an account")
    return rater


def _keep_an_admin(session: Session, rater, what: str) -> None:
    """Refuse ``what`` when ``rater`` is the last enabled admin account (nobody could run the app afterwards)."""
    if rater.role != "admin" or rater.disabled_at is not None:
        return
    # the enabled admins locked (FOR UPDATE; nothing on SQLite, whose writers are serialised): on PostgreSQL two
    # disables of the last two admins at once would otherwise each see the other and both commit
    locked = session.scalars(select(Rater).where(Rater.role == "admin", Rater.disabled_at.is_(None)).with_for_update(),
                             execution_options={"populate_existing": True}).all()
    admins = [r for r in locked if r.password_hash != LOCAL_ADMIN_HASH]
    if len(admins) <= 1:
        raise Conflict(f"{rater.name!r} is the last enabled admin, so {what} would leave nobody to run the app; "
                       "add or enable another admin first")


def set_password(factory: sessionmaker[Session], *, name: str, password: str, actor: Who | None = None) -> None:
    """Change an account's password; its sessions end (whoever signed in with the old one is signed out).

    Nothing here asks for anyone's current password: the command line (``python -m app users passwd``) calls this for
    the machine's owner, who has a shell on the server and is trusted already. The web page's changes go through
    ``change_password`` (``confirm_own_password`` first)."""
    hashed = hash_password(password, name)
    with write_session(factory) as s:
        rater = _account(s, name)
        repo.set_rater_password_hash(session=s, rater_id=rater.id, password_hash=hashed)
        audit(s, actor, "user.password", name)
    app_sessions.rater_changed(rater.id)
    app_sessions.credentials_changed(name)


def check_account_to_set(factory: sessionmaker[Session], name: str) -> None:
    """Refuse (one sentence) a password change of ``name`` that ``set_password`` would refuse for its account: no
    account of that name, or the local-mode admin's (``_account``)."""
    with read_session(factory) as s:
        _account(s, name)


def check_new_password(factory: sessionmaker[Session], *, name: str, password: Any) -> None:
    """Refuse (one sentence) a password change that ``set_password`` would refuse, before anything is hashed: the
    account (``check_account_to_set``), then a ``password`` that ``check_password_strength`` refuses for it.
    ``change_password`` runs the two apart, as only the second's refusals are counted."""
    check_account_to_set(factory, name)
    check_password_strength(password, name)


class RefusedNewPasswords:
    """The new passwords ``change_password`` refused by the rules, per key (a signed-in session, or an acting account
    where there is none: ``change_password``), in the last ``window_s``: past
    ``free`` of them, the next change is refused at once (one sentence, no rule run) until the oldest leaves the window.

    The rules run before the current password is checked (a typing slip costs no guess, so they are not counted as
    failed sign-ins), and a refusal of a long password cost up to ~40 ms of CPU (thirteenth review; measured here:
    under 8 ms for a 1024-character run, ~2 ms for 1024 random characters, on one core of the build machine), which a
    rater's page could ask for as fast as events go. Now each key gets ``free`` refusals a window. Thread-safe;
    in memory (a restart forgets it); one entry per key refused lately: past ``PRUNE_AT`` entries, those refused
    only before the window are dropped (a session's key outlives its session otherwise)."""

    def __init__(self, *, free: int = 10, window_s: float = 60.0, monotonic: Callable[[], float] = time.monotonic):
        self.free, self.window_s, self._monotonic = free, window_s, monotonic
        self._refused: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, account: str, now: float) -> list[float]:
        recent = [t for t in self._refused.get(account, ()) if now - t < self.window_s]
        if recent:
            self._refused[account] = recent
        else:
            self._refused.pop(account, None)
        return recent

    def wait_s(self, account: str) -> float:
        """Seconds until ``account`` (a key: ``change_password``) may have a new password checked again (0: now)."""
        now = self._monotonic()
        with self._lock:
            recent = self._recent(account, now)
            return self.window_s - (now - recent[-self.free]) if len(recent) >= self.free else 0.0

    PRUNE_AT = 1024

    def refused(self, account: str) -> None:
        now = self._monotonic()
        with self._lock:
            if len(self._refused) >= self.PRUNE_AT:
                for key in list(self._refused):
                    self._recent(key, now)
            self._recent(account, now)
            self._refused.setdefault(account, []).append(now)


NEW_PASSWORD_REFUSALS = RefusedNewPasswords()


def change_password(factory: sessionmaker[Session], who: Who, *, name: str, password: Any, current: Any,
                    throttle: app_sessions.LoginThrottle, ip: str | None, own_form: bool = False,
                    session: str | None = None) -> None:
    """The web page's password change, the one path of both forms: the Admin tab's **Set password** (an admin, any
    account: ``app.ui_admin.set_user_password``) and the Account tab's (anyone signed in, their own account:
    ``app.ui_account.change_own_password``, ``own_form``, whose sentences name its box "Current password").

    ``who`` sets the password of the account ``name`` to ``password``: anyone but an admin may name only their own
    account (AuthError, before anything is read). The account (``check_account_to_set``) and the new password
    (``check_password_strength``) are checked first, so a typing slip there costs no guess; then ``current`` must be ``who``'s own current
    password (``confirm_own_password``: checked and throttled as a sign-in from ``ip`` with ``throttle``, a refusal
    audited), except for the local-mode admin, who has none; then ``set_password``, which ends every session of the
    account, the one that asked included, and is audited. A refusal is one sentence and changes nothing.
    ``session``: the signed-in session the request runs as (``confirm_own_password``). The new passwords the rules
    refuse are counted per signed-in ``session`` (per acting account where none is given; a name that is no
    account's, or the local-mode admin's, is not counted: no rule ran) (``NEW_PASSWORD_REFUSALS``): past its limit, a
    change is refused before the rules run."""
    if not who.is_admin and name != who.name:
        raise AuthError(f"{who.name!r} is a rater; a rater may change only their own password")
    # counted per signed-in session where there is one: keyed by the account, any session of it (a stolen one) could
    # use up the owner's refusals and so bar the owner's own password change, the way to end that session (found by a
    # read-only review of the thirteenth review's fixes, 6 Dec 2026)
    refusals_key = f"session\0{session}" if session else f"account\0{who.name}"
    if wait := NEW_PASSWORD_REFUSALS.wait_s(refusals_key):
        seconds = max(1, math.ceil(wait))
        raise AuthError(f"too many refused new passwords in a short time; try again in {seconds} second"
                        f"{'s' if seconds != 1 else ''} (nothing was changed)")
    # the account first, outside the count: no account of that name (same review), or the local-mode admin's (its
    # ValueError was counted: fourteenth review), ran no rule, so it is no refused new password
    check_account_to_set(factory, name)
    try:
        check_password_strength(password, name)
    except ValueError:
        NEW_PASSWORD_REFUSALS.refused(refusals_key)
        raise
    if not who.local:
        confirm_own_password(factory, who, current, throttle=throttle, ip=ip, target=name, own_form=own_form,
                             session=session)
    set_password(factory, name=name, password=password, actor=who)


YOUR_PASSWORD_MISSING = ("type your own password in \"Your password\" to set an account's password (a session left open "
                         "must not be enough to take over accounts); nothing was changed")
YOUR_PASSWORD_WRONG = "the password in \"Your password\" is not yours, so nothing was changed"
# the Account tab's form (a password of one's own, ``change_password(own_form=True)``)
CURRENT_PASSWORD_MISSING = ("type your current password in \"Current password\" to change it (a session left open must "
                            "not be enough to take over your account); nothing was changed")
CURRENT_PASSWORD_WRONG = "the password in \"Current password\" is not your current one, so nothing was changed"


def confirm_own_password(factory: sessionmaker[Session], who: Who, password: Any, *, throttle: app_sessions.LoginThrottle,
                         ip: str | None, target: str, own_form: bool = False, session: str | None = None) -> None:
    """Check that ``password`` is the signed-in ``who``'s own current one, before the web page sets the password of the
    account ``target`` (``who``'s own or another's): otherwise AuthError (one sentence), nothing changed, and for a
    wrong password an audit entry "user.password.refused".

    A stolen or left-open admin session could set every account's password, and so take them all over (found by the
    eleventh review). The check is a sign-in's: the same scrypt verification (``check_login``'s, without re-hashing an
    older hash), and the same sign-in ``throttle`` with ``who``'s name and the request's address ``ip``: a locked
    account or address is refused before hashing, and a wrong password counts as a failed sign-in of both, so this box
    cannot guess the admin's password faster than the sign-in page can. No device token counts here (whoever holds
    the session holds that browser); the signed-in ``session`` itself does (``app.web_guard.signed_in_session``, read
    on the server): given, the check is barred only by that session's own counter, under a remembered browser's rule,
    not by the address's or the account's locks (``sessions.LoginThrottle._keys_for``; a wrong password still counts
    on all three), so guesses at the sign-in page under
    the account's name no longer lock these boxes for the real, signed-in user (thirteenth review); without it (a
    handler called as a function) the address's and the account's count, as before. A missing password costs no guess and is not counted; it and a
    refusal by the throttle are not audited (only a wrong password, which the throttle bounds, is). The refusals'
    sentences name the Admin tab's box ("Your password"), or with ``own_form`` the Account tab's ("Current password")."""
    missing, wrong = (CURRENT_PASSWORD_MISSING, CURRENT_PASSWORD_WRONG) if own_form else (YOUR_PASSWORD_MISSING,
                                                                                         YOUR_PASSWORD_WRONG)
    # a missing password and one refused by the throttle are not audited (nor logged): neither is a guess, and the
    # Account tab lets any rater send them as fast as events go, so each an audit row pushed the Admin tab's newest
    # 100 entries out of view in seconds (found by a read-only review, twelfth review); the guesses are (below)
    if not isinstance(password, str) or not password:
        raise AuthError(missing)
    wait, ticket = throttle.admit(ip, who.name, session=session)
    if ticket is None:
        seconds = max(1, math.ceil(wait))
        raise AuthError(f"too many failed sign-ins; try again in {seconds} second{'s' if seconds != 1 else ''} "
                        "(nothing was changed)")
    try:
        checked = _check_login(factory, who.name, password, upgrade=False)
        if checked.refusal is None and checked.rater_id == who.rater_id:
            throttle.succeeded(ip, who.name, session=session)
            return
        throttle.failed(ip, who.name, session=session)
    finally:
        throttle.release(ticket)  # after the outcome is counted, as a sign-in's
    _refuse_password_change(factory, who, target, f"wrong password of the acting {who.role}", ip)
    raise AuthError(wrong)


def _refuse_password_change(factory: sessionmaker[Session], who: Who, target: str, reason: str, ip: str | None) -> None:
    log.warning("setting the password of %r by %r from %s refused: %s", target[:64], who.name[:64], ip, reason)
    record(factory, who, "user.password.refused", target, reason=reason)


def set_disabled(factory: sessionmaker[Session], *, name: str, disabled: bool, actor: Who | None = None) -> None:
    """Disable an account (it cannot sign in and its sessions end; its ratings stay) or enable it again."""
    with write_session(factory) as s:
        rater = _account(s, name)
        if disabled:
            _keep_an_admin(s, rater, "disabling it")
        repo.set_rater_disabled(session=s, rater_id=rater.id, disabled=disabled)
        audit(s, actor, "user.disable" if disabled else "user.enable", name)
    app_sessions.rater_changed(rater.id)
    if disabled:
        app_sessions.credentials_changed(name)
        _after_raters_changed(factory)


def set_role(factory: sessionmaker[Session], *, name: str, role: str, actor: Who | None = None) -> None:
    """Make an account an admin or a rater (takes effect on its next request)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose from {list(ROLES)}")
    with write_session(factory) as s:
        rater = _account(s, name)
        if role != "admin":
            _keep_an_admin(s, rater, "making it a rater")
        before = rater.role
        repo.set_rater_role(session=s, rater_id=rater.id, role=role)
        audit(s, actor, "user.role", name, before=before, after=role)
    app_sessions.rater_changed(rater.id)  # its sessions stay; the role the front door read with them is forgotten


def delete_user(factory: sessionmaker[Session], *, name: str, actor: Who | None = None) -> None:
    """Delete an account that has given no feedback (one with ratings, comparison votes or repeat ratings is refused:
    disable it instead)."""
    with write_session(factory) as s:
        rater = _account(s, name)
        if actor is not None and actor.rater_id == rater.id:  # its audit line would name an actor just deleted: the
            # database refused it with a raw IntegrityError (found by review)
            raise ValueError(f"you cannot delete your own account {name!r}; another admin can")
        _keep_an_admin(s, rater, "deleting it")
        rater_id = rater.id
        repo.delete_rater(session=s, rater_id=rater_id)
        audit(s, actor, "user.delete", name)
    app_sessions.rater_changed(rater_id)
    app_sessions.credentials_changed(name)  # a new account of the same name inherits nothing
    _after_raters_changed(factory)


def _after_raters_changed(factory: sessionmaker[Session]) -> None:
    """Fewer enabled raters want fewer ratings: a round may be complete now (app.auto_close, when asked for)."""
    from app import auto_close

    auto_close.after_raters_changed(factory)


@dataclass(frozen=True)
class UserRow:
    id: int
    name: str
    role: str
    created_at: str
    disabled: bool = False


def list_users(factory: sessionmaker[Session]) -> list[UserRow]:
    """Accounts (not the local admin), oldest first."""
    with read_session(factory) as s:
        return [UserRow(r.id, r.name, r.role, r.created_at.strftime("%Y-%m-%d %H:%M"), r.disabled_at is not None)
                for r in _accounts(s)]


def name_warnings(factory: sessionmaker[Session]) -> list[str]:
    """One sentence for each group of accounts whose names read the same (``repo.name_key``) and each account whose
    name has no letter or digit. New accounts are refused both; these are accounts made before the check knew of them
    (ŧ ħ ł ŀ ø read as t h l l o, and names of punctuation only, since the sixth review of 5 Dec 2026). They are kept
    as they are (each signs in by its exact name, its ratings its own); an admin who does not know one of them can
    disable or delete it."""
    with read_session(factory) as s:
        names = [r.name for r in _accounts(s)]
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(repo.name_key(name), []).append(name)
    out = [f"the accounts {', '.join(repr(n) for n in same)} have names that read the same; each is kept, and signs in "
           "by its exact name" for same in groups.values() if len(same) > 1]
    out += [f"the account {name!r} has no letter or digit in its name; it is kept, and signs in by that name"
            for name in names if not any(c.isalnum() for c in name)]
    return out


@dataclass(frozen=True)
class AuditRow:
    at: str  # UTC, to the second
    actor: str
    action: str
    target: str
    detail: str


def list_audit(factory: sessionmaker[Session], *, limit: int = 100) -> list[AuditRow]:
    """The newest audit entries, newest first."""
    import json

    with read_session(factory) as s:
        return [AuditRow(e.at.strftime("%Y-%m-%d %H:%M:%S"), e.actor_name, e.action, e.target or "",
                         json.dumps(e.detail, sort_keys=True) if e.detail else "")
                for e in repo.list_audit(session=s, limit=limit)]


@dataclass(frozen=True)
class LoginCheck:
    """The outcome of a name and password: the account on success, else a refusal (one sentence)."""

    rater_id: int | None
    refusal: str | None  # None on success
    wrong_credentials: bool = False  # the refusal counts as a failed guess
    password_hash: str | None = None  # on success: the stored hash the password matched (SessionStore.start checks it)
    credentials: str = ""  # on success: the account's credentials_stamp as read with that hash
    known_name: bool = False  # the name is an account's (a refused sign-in logs the name only then)
    disabled: bool = False  # the right password of a disabled account (the web answers it as a wrong one)


WRONG_CREDENTIALS = "Incorrect credentials."


def check_login(factory: sessionmaker[Session], username: str, password: str) -> LoginCheck:
    """Check a sign-in (slow on purpose: one scrypt hash, also for unknown names, so timing does not reveal them).

    Run it off the event loop (``app.web_guard`` runs it in a thread pool of its own).

    A password that matched a hash made with older scrypt parameters (``needs_rehash``: p=1 before a security review
    raised it) is hashed again with today's and stored (``_upgrade_hash``); a refused sign-in changes nothing."""
    return _check_login(factory, username, password, upgrade=True)


def _check_login(factory: sessionmaker[Session], username: str, password: str, *, upgrade: bool) -> LoginCheck:
    if not isinstance(username, str) or not isinstance(password, str) or not username or len(password) > MAX_PASSWORD_LENGTH:
        return LoginCheck(None, WRONG_CREDENTIALS, wrong_credentials=True)
    if "\x00" in username:  # no account has one (names are checked), and PostgreSQL cannot look it up
        return LoginCheck(None, WRONG_CREDENTIALS, wrong_credentials=True)
    with read_session(factory) as s:
        try:
            rater = repo.get_rater_by_name(session=s, name=username)
        except NotFound:  # a name typed decomposed (an e and a combining accent) names the composed one stored
            composed = unicodedata.normalize("NFC", username)
            rater = None if composed == username else s.scalar(select(Rater).where(Rater.name == composed))
        stored = rater.password_hash if rater is not None else _DUMMY_HASH
        rater_id, disabled = (rater.id, rater.disabled_at is not None) if rater is not None else (None, False)
        stamp = credentials_stamp(rater) if rater is not None else ""
        account = rater.name if rater is not None else ""
    matched = verify_password(password, stored)
    if not matched or rater_id is None or disabled:
        # every refusal costs what an unknown name's does (one hash with today's parameters): a hash made with cheaper
        # ones (p=1) answered a wrong guess about 5x faster (the second attack, 5 Dec 2026), and then, with today's
        # whole hash on top, 6/5 as slow (the tenth review), either way telling the account exists; and the right
        # password of such a disabled account (answered as a wrong one) was told by the clock
        _spend_the_rest_of_todays_cost(password, stored)
    if not matched or rater_id is None:
        return LoginCheck(None, WRONG_CREDENTIALS, wrong_credentials=True, known_name=rater_id is not None)
    if disabled:
        return LoginCheck(None, f"the account {username!r} is disabled; ask an admin", known_name=True, disabled=True)
    if upgrade and needs_rehash(stored):
        upgraded = _upgrade_hash(factory, rater_id, account, password, stored, stamp)
        if upgraded is None:
            # the stored hash changed after it was read: a sign-in at the same time upgraded it (the same password,
            # hashed with today's parameters), or the password was changed or the account disabled. Decided again on
            # what is stored now (one more hash, only in that race): the first passes, the others are refused as
            # they would be had they come a moment later
            return _check_login(factory, username, password, upgrade=False)
        stored, stamp = upgraded
    return LoginCheck(rater_id, None, password_hash=stored, credentials=stamp)


def _upgrade_hash(factory: sessionmaker[Session], rater_id: int, account: str, password: str, checked: str,
                  stamp: str) -> tuple[str, str] | None:
    """Store ``password`` hashed with today's parameters in place of ``checked``, the older hash it just matched;
    (the new hash, the account's credentials stamp with it), or None when the stored hash is no longer ``checked``
    (then nothing is written: a newer password is never overwritten with this one's hash).

    A re-hash is not a password change: the account's sessions are not ended (``SessionStore`` binds a session to the
    hash only while it starts, in ``start``, and the sign-in starts its session with the new hash), nor is
    ``credentials_changed_at`` stamped. The credentials stamp does change (it digests the hash), so this process's
    sign-in throttles carry the browsers and addresses exempt under the old stamp over to the new one
    (``sessions.credentials_restamped``)."""
    hashed = _new_hash(password)
    with write_session(factory) as s:
        if not repo.upgrade_rater_password_hash(session=s, rater_id=rater_id, checked_hash=checked,
                                                password_hash=hashed):
            return None
        new_stamp = credentials_stamp(s.get(Rater, rater_id, populate_existing=True))
    app_sessions.credentials_restamped(account, stamp, new_stamp)
    log.info("the password hash of %r was made again with today's scrypt parameters (N=%d, r=%d, p=%d) at its sign-in",
             account[:64], SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return hashed, new_stamp


def credentials_stamp(rater: Rater) -> str:
    """A short digest of an account's credentials: it changes when the password does and when the account is disabled
    or enabled (``credentials_changed_at``), and differs between an account and a new one of the same name. The
    sign-in throttle keeps it with each browser and address it exempts."""
    changed = rater.credentials_changed_at.isoformat() if rater.credentials_changed_at is not None else "-"
    return hashlib.sha256(f"{rater.id}\0{rater.password_hash}\0{changed}".encode()).hexdigest()[:32]


def current_credentials_stamp(factory: sessionmaker[Session], username: str) -> str:
    """The stamp of ``username``'s stored credentials now; "" for no such account or a disabled one (nothing is
    exempt then). Read from the database, so a change made by another process counts."""
    with read_session(factory) as s:
        try:
            rater = repo.get_rater_by_name(session=s, name=username)
        except NotFound:
            return ""
        return "" if rater.disabled_at is not None else credentials_stamp(rater)


def authenticator(factory: sessionmaker[Session]) -> Callable[[str, str], bool]:
    """A plain (name, password) -> bool check: True when they match an enabled account. Blocking (one scrypt hash).

    The web app does not hand this to Gradio: sign-in goes through ``app.web_guard`` (off the event loop, throttled,
    with server-side sessions); see ``refuse_direct_sign_in``."""

    def check(username: str, password: str) -> bool:
        return check_login(factory, username, password).refusal is None

    return check


def refuse_direct_sign_in(username: str, password: str) -> bool:
    """The ``auth`` given to Gradio: always False. Gradio's own /login is never reached while ``app.web_guard``
    is installed (it answers /login itself); if it ever were, nobody signs in (fail closed)."""
    return False


_PAD_SALT = b"\0" * SALT_BYTES  # the salt of ``_spend_the_rest_of_todays_cost``'s hashes, which nothing compares
_DUMMY_HASH = f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(b'0' * SALT_BYTES)}${_b64(b'0' * KEY_BYTES)}"


# ---------------------------------------------------------------------------------------------
# who is asking
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Who:
    """The rater behind a request."""

    rater_id: int
    name: str
    role: str
    local: bool  # the local-mode admin (no accounts)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or 'localhost') is this computer."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_admin(factory: sessionmaker[Session]) -> Who:
    """The local-mode admin, its rater row created on first use."""

    def find(session: Session) -> Who | None:
        rows = [r for r in repo.list_raters(session=session) if r.name == LOCAL_ADMIN_NAME]
        return Who(rows[0].id, rows[0].name, rows[0].role, local=True) if rows else None

    with read_session(factory) as s:
        found = find(s)
    if found is not None:
        return found
    try:
        with write_session(factory) as s:
            r = repo.create_rater(session=s, name=LOCAL_ADMIN_NAME, role="admin", password_hash=LOCAL_ADMIN_HASH)
            return Who(r.id, r.name, r.role, local=True)
    except Conflict:  # a concurrent request created it first: read that row
        with read_session(factory) as s:
            found = find(s)
        if found is None:
            raise
        return found


def identify(factory: sessionmaker[Session], *, local_mode: bool, username: str | None, client_host: str | None) -> Who:
    """The rater behind a request, or AuthError saying why the request is refused."""
    if local_mode:
        if not is_loopback(client_host):
            raise AuthError("this app runs without user accounts and answers only requests from this computer")
        if users_exist(factory):
            raise AuthError(
                "user accounts exist now, so local mode has ended; restart the app (python -m app serve) and sign in"
            )
        return local_admin(factory)
    if not username:
        raise AuthError("sign in first")
    with read_session(factory) as s:
        try:
            r = repo.get_rater_by_name(session=s, name=username)
        except NotFound as e:
            raise AuthError(f"the account {username!r} no longer exists; ask an admin") from e
        if r.password_hash == LOCAL_ADMIN_HASH:
            raise AuthError(f"{LOCAL_ADMIN_NAME!r} exists only in local mode")
        if r.disabled_at is not None:
            raise AuthError(f"the account {username!r} is disabled; ask an admin")
        return Who(r.id, r.name, r.role, local=False)


def require_admin(who: Who) -> Who:
    if not who.is_admin:
        # "reload the page": an admin made a rater keeps the Admin tab in an open page until it reloads, and its
        # events are refused in this sentence (a read-only review of the fifteenth review's fixes)
        raise AuthError(f"{who.name!r} is a rater; only an admin can do this; reload the page")
    return who
