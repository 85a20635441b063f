"""Accounts: salted password hashes, sign-in, and who is asking (with which role).

Passwords are hashed with scrypt (``hashlib.scrypt``, a fresh 16-byte salt each) and stored as
``scrypt$N$r$p$salt$hash`` (base64); checks use a constant-time compare. This module never stores
or logs a plain password.

Two modes, fixed when the server starts:

- accounts: the database holds users; Gradio's login page asks for a name and password
  (``launch(auth=authenticator(factory))``) and ``request.username`` names the rater.
- local: the database holds no users; the server listens on localhost only and everyone who
  reaches it is the single local admin (a rater row named ``LOCAL_ADMIN_NAME`` made on demand,
  whose password hash can never match, so nobody can sign in as it).

Every UI and API handler calls ``identify`` and, for admin work, ``require_admin``: the role is
checked on the server, not merely by hiding buttons.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from db import repo
from db.engine import read_session, write_session
from db.errors import Conflict, NotFound

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # 16 MiB and about 50 ms per hash (OWASP's scrypt minimum is N=2**13)
SALT_BYTES, KEY_BYTES = 16, 32
MIN_PASSWORD_LENGTH = 8
LOCAL_ADMIN_NAME = "local admin"
LOCAL_ADMIN_HASH = "!local-admin: no password; exists only while the app runs without accounts on localhost"
ROLES = ("admin", "rater")


class AuthError(PermissionError):
    """The request may not be carried out by whoever sent it; the message says why in one sentence."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=64 * 1024 * 1024)


def check_password_strength(password: str) -> None:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if password != password.strip():
        raise ValueError("a password may not start or end with spaces")


def hash_password(password: str) -> str:
    """A salted scrypt hash of ``password`` as ``scrypt$N$r$p$salt$hash``."""
    check_password_strength(password)
    salt = os.urandom(SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def verify_password(password: str, stored: str) -> bool:
    """Whether ``password`` matches ``stored`` (constant-time). A hash not in our format never matches."""
    parts = stored.split("$") if isinstance(stored, str) else []
    if len(parts) != 6 or parts[0] != "scrypt" or not isinstance(password, str):
        return False
    n, r, p = (int(x) for x in parts[1:4])
    salt, expected = base64.b64decode(parts[4]), base64.b64decode(parts[5])
    return hmac.compare_digest(_scrypt(password, salt, n, r, p), expected)


# ---------------------------------------------------------------------------------------------
# users
# ---------------------------------------------------------------------------------------------


def _accounts(session: Session) -> list:
    return [r for r in repo.list_raters(session=session) if r.password_hash != LOCAL_ADMIN_HASH]


def users_exist(factory: sessionmaker[Session]) -> bool:
    """Whether any account (a rater who can sign in) exists; the local admin does not count."""
    with read_session(factory) as s:
        return bool(_accounts(s))


def add_user(factory: sessionmaker[Session], *, name: str, role: str, password: str) -> int:
    """Create an account; returns the rater id. Raises ValueError (db.errors) with one sentence."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; choose from {list(ROLES)}")
    if name == LOCAL_ADMIN_NAME:
        raise ValueError(f"the name {LOCAL_ADMIN_NAME!r} is reserved for the app's local mode; choose another")
    hashed = hash_password(password)
    with write_session(factory) as s:
        return repo.create_rater(session=s, name=name, role=role, password_hash=hashed).id


def set_password(factory: sessionmaker[Session], *, name: str, password: str) -> None:
    hashed = hash_password(password)
    with write_session(factory) as s:
        rater = repo.get_rater_by_name(session=s, name=name)
        if rater.password_hash == LOCAL_ADMIN_HASH:
            raise ValueError(f"{LOCAL_ADMIN_NAME!r} is the local-mode admin and cannot get a password")
        rater.password_hash = hashed


@dataclass(frozen=True)
class UserRow:
    id: int
    name: str
    role: str
    created_at: str


def list_users(factory: sessionmaker[Session]) -> list[UserRow]:
    """Accounts (not the local admin), oldest first."""
    with read_session(factory) as s:
        return [UserRow(r.id, r.name, r.role, r.created_at.strftime("%Y-%m-%d %H:%M")) for r in _accounts(s)]


def authenticator(factory: sessionmaker[Session]) -> Callable[[str, str], bool]:
    """The ``auth`` callable for ``gr.Blocks.launch``: True when the name and password match an account."""

    def check(username: str, password: str) -> bool:
        with read_session(factory) as s:
            try:
                rater = repo.get_rater_by_name(session=s, name=username)
            except NotFound:
                verify_password(password, _DUMMY_HASH)  # spend the same time, so timing does not reveal names
                return False
            return verify_password(password, rater.password_hash)

    return check


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
        return Who(r.id, r.name, r.role, local=False)


def require_admin(who: Who) -> Who:
    if not who.is_admin:
        raise AuthError(f"{who.name!r} is a rater; only an admin can do this")
    return who
