"""Sign-in sessions and login throttling (no web framework here; ``app.web_guard`` serves them over HTTP).

Sessions: a successful sign-in makes a random token (the cookie's value); the database keeps only its
sha256, the rater, when it began, when it was last used and when it ends for good. A session is valid
while it has not been ended (log out, password change, account disabled), is younger than the absolute
limit (``Settings.session_max_hours``) and was used within the idle limit (``session_idle_minutes``).
``SessionStore.check`` answers from a short in-memory cache (``recheck_s``, 2 s by default) and reads the
database otherwise, so an end made by another process (``python -m app users disable``) takes effect
within ``recheck_s``; one made in this process (the admin tab, log out) takes effect at once.

Throttling: ``LoginThrottle`` counts failed sign-ins per client address and per account name. After
``free`` failures each further failure locks that key for ``base_s * 2**k`` seconds (k = 0, 1, 2, ...,
capped at ``max_s``); while locked, sign-ins are refused at once, without hashing (and not counted).
A key is forgotten ``forget_s`` after its last failure; a successful sign-in clears the account's key.
The state lives in the server process's memory: a restart forgets it.
"""

from __future__ import annotations

import hashlib
import heapq
import ipaddress
import secrets
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session, sessionmaker

from db import repo
from db.checks import db_clock
from db.engine import read_session, write_session
from db.models import Rater, utcnow

TOKEN_BYTES = 32
STALE_SESSIONS_KEPT = timedelta(days=7)  # ended or expired sessions are deleted this long after they ended


def token_digest(token: str) -> str:
    """The sha256 (hex) of a session token: what the database stores instead of the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class SessionInfo:
    session_id: int
    rater_id: int
    name: str
    role: str = "rater"  # as read with the session (a role change in this process forgets it: rater_changed)
    role_version: int = 0  # the account's role version (``Rater.role_version``), read with ``role``


@dataclass
class _Cached:
    info: SessionInfo | None  # None: the token is not a valid session
    checked: float  # monotonic time of the database read
    expires_at: datetime | None = None
    last_seen_at: datetime | None = None


_STORES: weakref.WeakSet[SessionStore] = weakref.WeakSet()


def rater_changed(rater_id: int) -> None:
    """A rater's sessions were ended or their account changed in the database: every store in this process
    forgets what it cached about them, so the change takes effect on their next request."""
    for store in list(_STORES):
        store.forget_rater(rater_id)


class StaleSignIn(Exception):
    """The account's password changed, or it was disabled, while its sign-in was being checked; ``password_changed``
    says which (False: disabled, or no longer there)."""

    def __init__(self, message: str, *, password_changed: bool) -> None:
        super().__init__(message)
        self.password_changed = password_changed


class SessionStore:
    """Start, check and end sessions. Thread-safe; ``check`` is cheap within ``recheck_s`` of the last read."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        idle_s: float,
        max_s: float,
        recheck_s: float = 2.0,
        now: Callable[[], datetime] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_cached: int = 50_000,
        max_refused_cached: int = 10_000,
    ) -> None:
        if not (idle_s > 0 and max_s > 0 and recheck_s >= 0):
            raise ValueError(f"session limits must be positive, got idle {idle_s!r} s and absolute {max_s!r} s")
        self.factory, self.idle, self.max = factory, timedelta(seconds=idle_s), timedelta(seconds=max_s)
        self.recheck_s, self._monotonic, self.max_cached = recheck_s, monotonic, max_cached
        self.max_refused_cached = max_refused_cached
        # None: the database's clock (``db_clock``; a test passes its own). Sessions are written by one app server and
        # judged by another on PostgreSQL, each with its own clock: an app server running 2 h ahead saw every session
        # started elsewhere as idle and signed its people out at once (found by the seventh review). The database is
        # read inside each transaction; between reads, this machine's clock plus the offset last measured.
        self._given_now, self._offset = now, timedelta(0)
        self.touch_every = min(timedelta(seconds=60), self.idle / 10)  # last_seen_at is written at most this often
        # two caches, each least-recently-used first: the valid sessions (only a sign-in makes one), and the tokens that
        # are not one (anyone can send any cookie). One cache emptied itself when full, so a flood of random cookies
        # sent every real session's checks to the database (found by the thirteenth review, 6 Dec 2026); now unknown
        # tokens evict only each other
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._refused: OrderedDict[str, _Cached] = OrderedDict()
        self._lock = threading.Lock()
        # the checks reading the database now (``_read``), each marked stale under the lock by a forgetting that may
        # concern it (its own token's end or replacement; any rater's sessions; all), so it does not cache what it read.
        # One counter for every forgetting let anyone stop all caching with POST /logout and random cookies (each end
        # forgets; found by a read-only review, 6 Dec 2026); bounded by the checks running at once
        self._reads: set[_Read] = set()
        self._last_purge = float("-inf")
        _STORES.add(self)

    @classmethod
    def from_settings(cls, factory: sessionmaker[Session], settings) -> SessionStore:
        return cls(factory, idle_s=settings.session_idle_minutes * 60, max_s=settings.session_max_hours * 3600)

    # -- start and end -------------------------------------------------------------------------

    def start(self, rater_id: int, client: str | None = None, *, password_hash: str | None = None,
              replaces: Sequence[str] = ()) -> str:
        """A new session for the rater; returns its token (the only copy: the database keeps its sha256).

        ``replaces``: the tokens of the sessions this one replaces in its browser (the cookies it presented), ended
        (as a log out) in the same transaction: both happen or neither.

        ``password_hash``: the stored hash the sign-in's password matched. The scrypt check takes a while, so the
        password may have changed (or the account been disabled) since it was read: then no session starts
        (StaleSignIn), checked in the same transaction that would write it."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        with write_session(self.factory) as s:
            now = self._now(s)
            if password_hash is not None:
                # read locked (FOR SHARE): a password change or a disable committing between this check and the
                # insert below could not see the new session to end it, which then outlived it on PostgreSQL (found
                # by review); now such a change waits for this transaction, then ends the session
                rater = s.get(Rater, rater_id, with_for_update={"read": True}, populate_existing=True)
                if rater is None or rater.disabled_at is not None:
                    raise StaleSignIn("the account was disabled while the sign-in was checked", password_changed=False)
                if rater.password_hash != password_hash:
                    raise StaleSignIn("the account's password changed while the sign-in was checked",
                                      password_changed=True)
            for old in replaces:
                repo.end_session(session=s, token_sha256=token_digest(old), reason="logout", now=now)
            repo.create_session(session=s, rater_id=rater_id, token_sha256=token_digest(token),
                                expires_at=now + self.max, client=client, now=now)
            if self._monotonic() - self._last_purge > 3600:
                self._last_purge = self._monotonic()
                repo.delete_stale_sessions(session=s, before=now - max(STALE_SESSIONS_KEPT, self.max, self.idle))
        with self._lock:
            for old in replaces:
                self._forget(token_digest(old))
        return token

    def end(self, token: str, reason: str = "logout") -> bool:
        """End the session of ``token`` (idempotent); whether such a session exists."""
        digest = token_digest(token)
        with write_session(self.factory) as s:
            row = repo.end_session(session=s, token_sha256=digest, reason=reason, now=self._now(s))
        with self._lock:
            self._forget(digest)
        return row is not None

    def forget_rater(self, rater_id: int) -> None:
        """Drop the cached answers for a rater's sessions (call after ending them in the database)."""
        with self._lock:
            for read in self._reads:  # the rater of a read under way is not known yet
                read.stale = True
            for digest in [d for d, c in self._cache.items() if c.info is not None and c.info.rater_id == rater_id]:
                del self._cache[digest]

    def forget_all(self) -> None:
        with self._lock:
            for read in self._reads:
                read.stale = True
            self._cache.clear()
            self._refused.clear()

    def _forget(self, digest: str) -> None:  # under self._lock
        for read in self._reads:
            if read.digest == digest:
                read.stale = True
        self._cache.pop(digest, None)
        self._refused.pop(digest, None)

    def _remembered(self, digest: str) -> _Cached | None:
        """The cached answer for ``digest`` (marked as used just now), or None."""
        with self._lock:
            for cache in (self._cache, self._refused):
                if (cached := cache.get(digest)) is not None:
                    cache.move_to_end(digest)
                    return cached
        return None

    # -- check ---------------------------------------------------------------------------------

    def _now(self, s: Session | None = None) -> datetime:
        """The time sessions are written and judged by: the test's clock if one was given, else the database's
        (read in ``s``; without a session, this machine's clock plus the offset measured at the last read)."""
        if self._given_now is not None:
            return self._given_now()
        if s is None:
            return utcnow() + self._offset
        now = db_clock(s)
        self._offset = now - utcnow()
        return now

    def _alive(self, expires_at: datetime, last_seen_at: datetime, now: datetime) -> bool:
        return now < expires_at and now - last_seen_at < self.idle

    def cached(self, token: str, max_age_s: float | None = None) -> tuple[bool, SessionInfo | None]:
        """(True, the answer) when ``check`` can answer from memory without the database; else (False, None).
        Cheap enough for the event loop. ``max_age_s``: how old a remembered answer may be (default ``recheck_s``;
        an open heartbeat, checked every few seconds, takes one as old as its own interval)."""
        if not isinstance(token, str) or not token or len(token) > 256:
            return True, None
        cached = self._remembered(token_digest(token))
        if cached is None or self._monotonic() - cached.checked >= (self.recheck_s if max_age_s is None else max_age_s):
            return False, None
        if cached.info is None:
            return True, None
        now = self._now()
        if self._alive(cached.expires_at, cached.last_seen_at, now) and now - cached.last_seen_at < self.touch_every:
            return True, cached.info
        return False, None

    def check(self, token: str) -> SessionInfo | None:
        """The session behind ``token`` if it is valid now, else None."""
        if not isinstance(token, str) or not token or len(token) > 256:
            return None
        digest = token_digest(token)
        now = self._now()
        cached = self._remembered(digest)
        if cached is not None and self._monotonic() - cached.checked < self.recheck_s:
            if cached.info is None:
                return None
            if self._alive(cached.expires_at, cached.last_seen_at, now) and now - cached.last_seen_at < self.touch_every:
                return cached.info
        return self._read(digest)

    def _read(self, digest: str) -> SessionInfo | None:
        """The session of ``digest`` as the database has it now, cached unless something was forgotten meanwhile: an
        end, a log out or a disable committed between this read and the cache's write was overwritten by what was
        read, so an ended session or a disabled account's was served as valid for up to ``recheck_s`` (found by a
        read-only review, 6 Dec 2026)."""
        read = _Read(digest)
        with self._lock:
            self._reads.add(read)
        try:
            return self._read_and_cache(read)
        finally:
            with self._lock:
                self._reads.discard(read)

    def _read_and_cache(self, read: _Read) -> SessionInfo | None:
        digest = read.digest
        with read_session(self.factory) as s:
            now = self._now(s)
            row = repo.find_session(session=s, token_sha256=digest)
            rater = s.get(Rater, row.rater_id) if row is not None else None
            valid = (row is not None and rater is not None and row.ended_at is None and rater.disabled_at is None
                     and self._alive(row.expires_at, row.last_seen_at, now))
            info = SessionInfo(row.id, rater.id, rater.name, rater.role, rater.role_version) if valid else None
            expires_at = row.expires_at if valid else None
            last_seen_at = row.last_seen_at if valid else None
        if info is not None and now - last_seen_at >= self.touch_every:
            with write_session(self.factory) as s:
                repo.touch_session(session=s, session_id=info.session_id, now=now)
            last_seen_at = now
        with self._lock:
            if read.stale:
                return info  # this one answer as read; the next check reads again
            self._cache.pop(digest, None)  # this answer's own place, cleared: no forgetting (``_forget`` counts)
            self._refused.pop(digest, None)
            cache, most = (self._cache, self.max_cached) if info is not None else (self._refused, self.max_refused_cached)
            while cache and len(cache) >= most:  # bounded: the least recently used answer goes
                cache.popitem(last=False)
            if most > 0:
                cache[digest] = _Cached(info, self._monotonic(), expires_at, last_seen_at)
        return info


# ---------------------------------------------------------------------------------------------
# throttling
# ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Read:
    """A check reading the database for ``digest`` now (``SessionStore._read``); ``stale`` once something it read may
    have been forgotten since."""
    digest: str
    stale: bool = False


@dataclass
class _Failures:
    count: int = 0
    last: float = float("-inf")
    locked_until: float = float("-inf")


@dataclass(frozen=True)
class ThrottleRule:
    free: int  # failures allowed before the first lock
    base_s: float  # the first lock; each further failure doubles it
    max_s: float  # the longest lock


DEVICES_PER_ACCOUNT = 5  # browsers remembered per account for the sign-in throttle
PRUNE_TO = 0.75  # a full sign-in throttle table is cut to this share of its max_keys (LoginThrottle._prune)
_THROTTLES: weakref.WeakSet[LoginThrottle] = weakref.WeakSet()


def credentials_changed(account: str) -> None:
    """An account's password changed, or the account was disabled or deleted: every sign-in throttle in this process
    forgets the browsers that signed in to it, so whoever knew the old password loses the exemptions
    that knowledge earned (they start again under the address's and the account's limits)."""
    for throttle in list(_THROTTLES):
        throttle.forget_account(account)


def credentials_restamped(account: str, old: str, new: str) -> None:
    """An account's password was hashed again, the password unchanged (``app.auth``: an upgrade of an older hash's
    parameters at sign-in): its credentials stamp is ``new`` now. Every sign-in throttle in this process carries the
    browsers that signed in under ``old`` over to ``new``: what they earned was knowing this password,
    which still holds. (A throttle in another process sees the stamp change and drops theirs, as for a password
    change: the safe side.)"""
    for throttle in list(_THROTTLES):
        throttle.restamp(account, old, new)


LOOPBACK_KEY = "loopback"  # every address of this machine's loopback: 127.0.0.0/8, ::1, ::ffff:127.x.x.x


def address_key(ip: str | None) -> str:
    """The per-address counter's key: the address, or for IPv6 its /64 (one host is commonly handed a whole /64, so
    that each of its addresses counting alone would multiply the address limit without end). Every loopback address
    is one key (``LOOPBACK_KEY``): a user of this machine may connect from any of 127.0.0.0/8 (or ::1, or
    ::ffff:127.x.x.x), and each counted alone gave 16 million fresh address limits (found by review)."""
    if not ip:
        return "?"
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:10.0.0.1 is 10.0.0.1
    if address.is_loopback:
        return LOOPBACK_KEY
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class LoginThrottle:
    """Failed sign-ins per client address and per account, with exponential backoff. Thread-safe.

    Anyone could keep any account (an admin's too) locked with a wrong guess each time the lock runs out, its owner
    included; and people behind one address (an office NAT) share that address's limit, so one of them guessing could
    lock the others out. A browser that signed in to an account gets a device token (``app.web_guard``: a random
    cookie); for that account and within ``known_s`` the browser is held only to the device's own limit
    (``per_device``), not to the address's or the account's locks, and its failures count against the device alone.
    Known devices live in memory (a restart forgets them).

    An address alone earns nothing (fourth review, 5 Dec 2026): an address that signed in to the account within
    ``known_s`` was exempt from the account's lock too, so whoever shared it with the owner (an office NAT, a mobile
    carrier's, a proxy) guessed the owner's password at the address's limit, past the account's lock, their guesses
    never counted against the account. The owner's own browser (its device token) is what gets past the lock now; a
    browser of the owner's without the token (a new one, cookies cleared) waits for the lock like anyone.

    Each remembered device keeps the ``credentials`` stamp of the sign-in that earned it (``app.auth.credentials_stamp``:
    the account's id, its password hash and when it was last disabled or enabled). The exemption holds only while the
    caller passes the same stamp, read from the database at the attempt, so a password changed or an account disabled
    (or disabled and enabled again) by another process (``python -m app users ...`` beside the running app) ends it
    too; ``credentials_changed`` is the same thing for this process, at once."""

    def __init__(
        self,
        *,
        per_ip: ThrottleRule = ThrottleRule(free=20, base_s=1.0, max_s=300.0),
        per_account: ThrottleRule = ThrottleRule(free=5, base_s=1.0, max_s=900.0),
        per_device: ThrottleRule = ThrottleRule(free=5, base_s=1.0, max_s=900.0),
        forget_s: float = 3600.0,
        known_s: float = 30 * 86400.0,
        monotonic: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        # a signed-in session's own counter (``_keys_for``) takes a remembered browser's rule
        self.rules = {"ip": per_ip, "account": per_account, "device": per_device, "session": per_device,
                      "in-app": per_device}
        self.forget_s, self.known_s, self._monotonic, self.max_keys = forget_s, known_s, monotonic, max_keys
        self._keys: dict[tuple[str, str], _Failures] = {}
        # account -> {device token: (its last successful sign-in, stamp)}, the newest DEVICES_PER_ACCOUNT per account
        self._devices: dict[str, dict[str, tuple[float, str]]] = {}
        self._accounts_of: dict[str, set[str]] = {}  # device token -> the accounts of ``_devices`` that remember it
        self._lock = threading.Lock()
        self._in_flight: dict[tuple[str, str], int] = {}  # key -> sign-ins admitted and not yet decided
        _THROTTLES.add(self)

    def admit(self, ip: str | None, account: str | None, device: str | None = None, *,
              credentials: str = "", session: str | None = None) -> tuple[float, tuple[tuple[str, str], ...] | None]:
        """(0, a ticket) when a sign-in may be checked now, else (seconds to wait, None). Give the ticket back with
        ``release`` once ``failed`` or ``succeeded`` has recorded the outcome. ``session``: see ``_keys_for``.

        Guesses sent at once would otherwise all pass the check before the first failure is counted: the counts
        allow ``free`` failures and one more that locks, so near a limit at most that many are checked at a time;
        the others wait a second, while the ones admitted are decided."""
        now = self._monotonic()
        with self._lock:
            keys = self._keys_for(ip, account, device, now, credentials, session)
            wait = self._lock_wait(keys, now)
            if wait > 0:
                return wait, None
            for key in self._bars(keys, now):
                pending = self._in_flight.get(key, 0)
                f = self._keys.get(key)
                counted = f.count if f is not None and now - f.last <= self.forget_s else 0
                if pending and counted + pending > self.rules[key[0]].free:
                    return 1.0, None
            for key in keys:
                self._in_flight[key] = self._in_flight.get(key, 0) + 1
            return 0.0, tuple(keys)

    def release(self, ticket: tuple[tuple[str, str], ...] | None) -> None:
        with self._lock:
            for key in ticket or ():
                left = self._in_flight.get(key, 0) - 1
                if left > 0:
                    self._in_flight[key] = left
                else:
                    self._in_flight.pop(key, None)

    def forget_account(self, account: str) -> None:
        """Forget the devices that signed in to ``account`` (see ``credentials_changed``)."""
        name = (account or "")[:200]
        with self._lock:
            for device in self._devices.pop(name, {}):
                self._forget_of(device, name)
            for key in [k for k in self._keys
                        if k[0] in ("device", "session", "in-app") and k[1].partition("\0")[2] == name]:
                del self._keys[key]

    def restamp(self, account: str, old: str, new: str) -> None:
        """The devices that signed in to ``account`` under credentials stamp ``old`` hold ``new`` instead (see
        ``credentials_restamped``); those under another stamp are left as they are."""
        if not old:
            return
        name = (account or "")[:200]
        with self._lock:
            for device, (at, stamp) in list(self._devices.get(name, {}).items()):
                if stamp == old:
                    self._devices[name][device] = (at, new)

    def _exempt(self, remembered: tuple[float, str] | None, now: float, credentials: str) -> bool:
        return remembered is not None and now - remembered[0] <= self.known_s and remembered[1] == credentials

    def _keys_for(self, ip: str | None, account: str | None, device: str | None, now: float,
                  credentials: str, session: str | None = None) -> list[tuple[str, str]]:
        """The counters that bar (and count) a sign-in; call with the lock held.

        ``session``: the id of a signed-in session of ``account``, which the caller read from the request's session
        cookie and checked valid on the server (``app.web_guard.signed_in_session``): a password typed again inside
        the app (the Account tab's "Current password", the Admin tab's "Your password"; ``app.auth.confirm_own_password``)
        is held to that session's own counter, under the device rule, as a remembered browser is at the sign-in page.
        Guesses at the sign-in page under the account's name locked those boxes for the real, signed-in user
        (thirteenth review, 6 Dec 2026). The session is the proof, as strong as a device token: it exists only after
        a right password, ends with a password change, and nobody without the password can make another; nothing a
        request sends chooses the key. Its wrong passwords still count against the address and the account as well
        (``failed``), so a stolen session's guesses there bring the sign-in page's locks nearer, as they did before;
        only those locks no longer bar the session. All the sessions of an account share one more counter there
        ("in-app", under the same rule), so that however many of them leaked, their boxes together get one browser's
        guesses past each one's first, not one browser's each (found by a read-only review of these fixes, 6 Dec
        2026); it bars only a session with a failure of its own (``_bars``); guesses at the sign-in page never count
        on it, and a right password there clears it."""
        name = (account or "")[:200]
        if session:
            return [("session", f"{session}\0{name}"), ("in-app", f"\0{name}")]
        if device and self._exempt(self._devices.get(name, {}).get(device), now, credentials):
            return [("device", f"{device}\0{name}")]  # a browser that signed in to this account: its own limit there
        return [("ip", address_key(ip)), ("account", name)]  # an address that signed in before is no key (class doc)

    def remembers(self, ip: str | None, account: str | None, device: str | None = None) -> bool:
        """Whether the device signed in to ``account`` before, so that the attempt's credentials stamp decides its
        limits (otherwise the stamp changes nothing and need not be read). ``ip``: unused (an address earns nothing)."""
        name = (account or "")[:200]
        with self._lock:
            return bool(device and device in self._devices.get(name, {}))

    def wait_s(self, ip: str | None, account: str | None, device: str | None = None, *, credentials: str = "",
               session: str | None = None) -> float:
        """Seconds until a sign-in from ``ip`` (and the browser's ``device`` token, if any) for ``account`` may be
        tried (0: now). ``credentials``: the account's stamp now (see the class)."""
        now = self._monotonic()
        with self._lock:
            return self._lock_wait(self._keys_for(ip, account, device, now, credentials, session), now)

    def _lock_wait(self, keys: list[tuple[str, str]], now: float) -> float:
        """Seconds until every counter of ``keys`` that bars (``_bars``) is unlocked; call with the lock held."""
        return max([0.0] + [f.locked_until - now for k in self._bars(keys, now) if (f := self._keys.get(k))])

    def _bars(self, keys: list[tuple[str, str]], now: float) -> list[tuple[str, str]]:
        """The counters of ``keys`` that bar an attempt (all count its failure): the sessions' shared counter
        ("in-app", ``_keys_for``) only for a session with a failure of its own, so a leaked session's guesses cannot
        lock the owner's own session out of its password boxes (and so out of changing the password, the way to end
        the leaked one); the sessions that did guess are barred by it (a read-only review, 6 Dec 2026)."""
        own = any(k[0] == "session" and (f := self._keys.get(k)) is not None and f.count > 0
                  and now - f.last <= self.forget_s for k in keys)
        return [k for k in keys if k[0] != "in-app" or own]

    def failed(self, ip: str | None, account: str | None, device: str | None = None, *, credentials: str = "",
               session: str | None = None) -> None:
        now = self._monotonic()
        with self._lock:
            keys = self._keys_for(ip, account, device, now, credentials, session)
            if session:  # counted against the address and the account too (``_keys_for``), though their locks do not
                # bar the session
                keys += [("ip", address_key(ip)), ("account", (account or "")[:200])]
            self._count(keys, now)

    def over_limit(self, ip: str | None, account: str | None, device: str | None = None, *,
                   credentials: str = "") -> None:
        """A right password refused by the success limit (``app.web_guard``): a failure of the counters that bar
        the attempt, the account's own excepted (counting it would set the account apart from a name that is no
        account's, whose guesses never reach the limit): the address's, or the remembered browser's."""
        now = self._monotonic()
        with self._lock:
            self._count([k for k in self._keys_for(ip, account, device, now, credentials) if k[0] != "account"], now)

    def _count(self, keys: list[tuple[str, str]], now: float) -> None:
        """One failure on each of ``keys``; call with the lock held."""
        if len(self._keys) + sum(k not in self._keys for k in keys) > self.max_keys:
            self._prune(now, spare=keys)
        for key in keys:
            rule = self.rules[key[0]]
            f = self._keys.get(key)
            if f is None or now - f.last > self.forget_s:
                f = self._keys[key] = _Failures()
            f.count += 1
            f.last = now
            if f.count > rule.free:
                f.locked_until = now + min(rule.max_s, rule.base_s * 2 ** min(f.count - rule.free - 1, 60))

    def succeeded(self, ip: str | None, account: str | None, device: str | None = None, *,
                  credentials: str = "", session: str | None = None) -> None:
        """A sign-in with ``credentials`` (the stamp of the password it matched) succeeded. Within a signed-in
        ``session`` (``_keys_for``), only that session's counter and the account's sessions' shared one are cleared:
        the account's stays as the sign-in page left it. ``device``: the fresh token the sign-in gives the browser
        (``replaced`` hands it what the token it brought earned elsewhere, once the session started)."""
        now = self._monotonic()
        name = (account or "")[:200]
        with self._lock:
            if session:  # a right password: the sessions' shared counter too (only the password clears it)
                self._keys.pop(("session", f"{session}\0{name}"), None)
                self._keys.pop(("in-app", f"\0{name}"), None)
                return
            self._keys.pop(("account", name), None)
            self._keys.pop(("in-app", f"\0{name}"), None)  # a right password at the sign-in page clears it too
            if device:
                self._keys.pop(("device", f"{device}\0{name}"), None)
                self._remember_device(name, device, (now, credentials))

    def replaced(self, account: str | None, old: str | None, new: str) -> None:
        """A sign-in to ``account`` gave the browser the fresh device token ``new`` (remembered for ``account`` by
        ``succeeded``, as earned now) in the place of ``old``, the token it brought; call once the session started,
        so that a sign-in that fails midway leaves the browser's old token as it was.

        The rule (fifteenth review, 6 Dec 2026, and a read-only review of its fix): ``old`` is never remembered for
        ``account`` (a token planted before the victim's sign-in, cookies not separating ports, must never be
        remembered for the victim's account), and what it earned for the browser's OTHER accounts (and its failures
        there) is copied to ``new``, never moved: ``old`` keeps its own. Moved, a thief holding the owner's stolen
        token who signed in to their own account while sending it took the owner's exemption to their fresh token
        and killed the owner's, and could then lock the owner out. A copy is made only while the other account
        remembers fewer than DEVICES_PER_ACCOUNT browsers, so that a copy never pushes a browser out of that account's
        list itself; copies still take places in it, so the owner's next sign-in elsewhere pushes out the oldest entry,
        which may be a browser the owner still uses (a read-only review; not fixed: a device token per account would
        be the clean design)."""
        name = (account or "")[:200]
        with self._lock:
            accounts = self._accounts_of.get(old or "")
            if not accounts or old == new:  # known nowhere: nothing to scan
                return
            for other in list(accounts):
                tokens = self._devices[other]
                if other == name:
                    del tokens[old]
                    self._forget_of(old, other)
                elif new not in tokens and len(tokens) < DEVICES_PER_ACCOUNT:
                    tokens[new] = tokens[old]
                    self._accounts_of.setdefault(new, set()).add(other)
                    if (failures := self._keys.get(("device", f"{old}\0{other}"))) is not None:
                        self._keys[("device", f"{new}\0{other}")] = _Failures(failures.count, failures.last, failures.locked_until)

    def _forget_of(self, device: str, name: str) -> None:
        """``device`` is no longer remembered for ``name`` (call with the lock held, after it left ``_devices``)."""
        accounts = self._accounts_of.get(device)
        if accounts is not None:
            accounts.discard(name)
            if not accounts:
                del self._accounts_of[device]

    def _remember_device(self, name: str, device: str, entry: tuple[float, str]) -> None:
        """Keep the account's newest devices only: someone who once knew the password cannot mint tokens without end,
        and each sign-in of the owner pushes old ones out."""
        if name not in self._devices and len(self._devices) >= self.max_keys:  # bounded: keep the newest half
            for k, _ in sorted(self._devices.items(), key=lambda kv: max(kv[1].values()))[: len(self._devices) // 2]:
                for token in self._devices.pop(k):
                    self._forget_of(token, k)
        tokens = self._devices.setdefault(name, {})
        tokens.pop(device, None)
        tokens[device] = entry
        self._accounts_of.setdefault(device, set()).add(name)
        while len(tokens) > DEVICES_PER_ACCOUNT:
            oldest = next(iter(tokens))
            del tokens[oldest]
            self._forget_of(oldest, name)

    def _prune(self, now: float, spare: Sequence[tuple[str, str]] = ()) -> None:
        """Make room in a full table (call with the lock held): the counters past ``forget_s`` go, then, if the table
        is still over PRUNE_TO of ``max_keys``, the least telling ones, fewest failures past their rule's ``free``
        first (the oldest of those first), down to that size; ``spare``: the counters about to count a failure.

        It deleted every counter not locked at that moment (tenth review, 6 Dec 2026): a flood of guesses at made-up
        names (one each, from many addresses) filled the table and wiped a targeted account's count between two of
        its locks, so its backoff started over at one second. A counter with more failures now outranks those with
        fewer (a flood's one-guess names). One pass costs O(n log n) and frees a quarter of the table, so it runs
        about once per ``max_keys // 4`` new counters."""
        for k in [k for k, f in self._keys.items() if now - f.last > self.forget_s]:
            del self._keys[k]
        keep = int(self.max_keys * PRUNE_TO)
        if len(self._keys) > keep:
            least = heapq.nsmallest(len(self._keys) - keep, ((k, f) for k, f in self._keys.items() if k not in spare),
                                    key=lambda kv: (kv[1].count - self.rules[kv[0][0]].free, kv[1].last))
            for k, _ in least:
                del self._keys[k]
