"""Limits on the server's connections, below the web guard: a deadline for a request's head, and caps on the
connections open per client address and in all.

``app.web_guard`` sees a request only once its line and headers are complete, and the server Gradio starts (uvicorn,
h11) gave a request's head no deadline and held any number of connections. A review (5 Dec 2026, sixth) showed what
that allowed anyone, signed in or not: 1,500 connections that each sent ``GET / HTTP/1.1``, a Host and the start of
one more header, then nothing, all stayed open; with the open-file limit at 600, 700 of them made the login page time
out, and every connection the server then failed to accept logged a traceback (Python 3.11's accept loop retries
each waiting connection: 38,905 tracebacks, 18 MB of log in 13 s).

``before_listening`` (a lifespan around the app's own, given to ``launch``) puts, into the server a Blocks starts (a
``uvicorn.Server``), before it listens, and ``install`` finds in place once ``launch`` returns (or puts in then):

- ``LimitedH11Protocol`` (uvicorn's h11 protocol) for every new connection: a connection whose request line and
  headers are not complete within ``Limits.head_deadline_s`` of it opening (or of the previous answer ending, on a kept
  alive connection) is closed, with a 408 and one sentence when it sent part of a head; a request whose body has not
  all arrived within ``Limits.body_deadline_s`` of its head's end is closed too, with a 408 and one sentence unless it
  was answered already (the web guard's 413, say); an answer the client leaves unread (the server's write buffer
  full, writing paused) for ``Limits.body_deadline_s`` is dropped and the connection closed; one its network
  (an IPv4 address, an IPv6 address's /64, ``counting_key``: one client holds a whole /64; and a public address's
  /24, or the /64's /56 and /48, ``wider_keys``, which one network or site may hold whole) may not open now (``Gate``:
  a network's share shrinks as the total fills, down to ``FAIR_SHARE``; ``Limits.per_address`` when set) gets 429
  and one sentence (as ``{"detail": sentence}``, which the page's Gradio client shows for an event,
  and the page's ``ui_assets.STREAMS_JS`` for its heartbeat or stream of results, retrying them) and is closed at
  once, one past ``Limits.total`` 503. An address of a trusted proxy
  (SEIKO_TRUSTED_PROXIES) counts towards the total only, since every person behind it comes from it; the requests it
  passes on are shared out per client by ``share_behind_proxy`` instead (429 past a client's share, as above). A
  request whose head has a folded line or a line that ends in a bare LF, or whose chunked body's trailer has such a
  line end, is answered 400 with one sentence and its connection closed, before h11 reads it (``CheckedConnection``).
- an exception handler on the server's event loop that logs a failed accept (no file descriptor left) at most once
  every ``ACCEPT_LOG_EVERY_S``, with the count held back and no traceback; anything else goes to asyncio's own handler.
- a filter on uvicorn's error log (``QuietRepeats``) that lets its one-line warning for each malformed request or
  websocket upgrade through at most once every ``ACCEPT_LOG_EVERY_S``, with the count.

The limits come from the environment (``Limits.from_env``): SEIKO_HEAD_TIMEOUT_S (default 10),
SEIKO_BODY_TIMEOUT_S (default 30; the app's bodies are at most 256 KiB, ``web_guard.MAX_REQUEST_BODY``),
SEIKO_CONNECTIONS_PER_ADDRESS and SEIKO_CONNECTIONS_PER_NETWORK (a /24's, /56's or /48's; default none for both:
``Gate``'s shares only) and SEIKO_MAX_CONNECTIONS (default 512, and
never more than half the process's open-file limit, so that the limit is not reached by connections alone).
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import json
import logging
import os
import re
import resource
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
from h11._readers import ChunkedReader
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.h11_impl import DEFAULT_MAX_INCOMPLETE_EVENT_SIZE, H11Protocol

from app.ui_assets import NOT_RUN_HEADER

log = logging.getLogger(__name__)

ENV_HEAD_TIMEOUT = "SEIKO_HEAD_TIMEOUT_S"
ENV_BODY_TIMEOUT = "SEIKO_BODY_TIMEOUT_S"
ENV_PER_ADDRESS = "SEIKO_CONNECTIONS_PER_ADDRESS"
ENV_TOTAL = "SEIKO_MAX_CONNECTIONS"
ENV_PER_NETWORK = "SEIKO_CONNECTIONS_PER_NETWORK"
DEFAULT_HEAD_DEADLINE_S = 10.0
DEFAULT_BODY_DEADLINE_S = 30.0
DEFAULT_PER_ADDRESS = None  # no fixed cap per network, only ``Gate``'s shares
DEFAULT_TOTAL = 512
DEFAULT_PER_NETWORK = None  # no fixed cap per /24, /56 or /48, only their shares (``Gate``)
FAIR_SHARE = 8  # what each network may always hold while the total has room (a browser opens at most 6 per host)
ACCEPT_LOG_EVERY_S = 10.0

SLOW_HEAD = "The request's line and headers did not arrive within {s:g} seconds; the connection is closed."
SLOW_BODY = "The request's body did not arrive within {s:g} seconds of its headers; the connection is closed."
TOO_MANY_FROM_ADDRESS = ("Your address has {n} connections open to this server, the most it may have; close some and "
                         "try again.")
TOO_MANY_WHILE_BUSY = ("The server is busy and your address has {n} connections open to it, the most one address may "
                       "have while it is this busy; close some or try again in a moment.")
TOO_MANY_FROM_NETWORK = ("Your network ({net}) has {n} connections open to this server, the most it may have; close "
                         "some and try again.")
NETWORK_WHILE_BUSY = ("The server is busy and your network ({net}) has {n} connections open to it, the most such a "
                      "network may have while it is this busy; close some or try again in a moment.")
FOLDED_HEADER = ("The request has a header line folded onto the one before it (a line that starts with a space or a "
                 "tab), which this server does not accept; send each header on one line.")
BARE_LF = ("The request has a line in its head that ends in a bare LF, not CR LF, which this server does not "
           "accept; end each line of the request line and headers with CR LF.")
BARE_LF_TRAILER = ("The request's chunked body ends with a trailer line that ends in a bare LF, not CR LF, which this "
                   "server does not accept; end each line of the trailer with CR LF.")
FOLDED_TRAILER = ("The request's chunked body ends with a trailer line folded onto the one before it (a line that "
                  "starts with a space or a tab), which this server does not accept; send each trailer field on one "
                  "line.")
TOO_MANY_IN_ALL = "The server has {n} connections open, the most it takes; try again in a moment."


class LimitsError(ValueError):
    """A limit in the environment is not a number the server can use; the message says which."""


def _fd_limit() -> int | None:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


@dataclass(frozen=True)
class Limits:
    head_deadline_s: float = DEFAULT_HEAD_DEADLINE_S
    per_address: int | None = DEFAULT_PER_ADDRESS  # None: no fixed cap per network (``Gate`` has its own)
    total: int = DEFAULT_TOTAL
    body_deadline_s: float = DEFAULT_BODY_DEADLINE_S
    per_network: int | None = DEFAULT_PER_NETWORK  # None: a /24's, /56's, /48's cap is its shares (``Gate``)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, fd_limit: int | None = -1) -> Limits:
        """The limits SEIKO_HEAD_TIMEOUT_S, SEIKO_BODY_TIMEOUT_S, SEIKO_CONNECTIONS_PER_ADDRESS,
        SEIKO_CONNECTIONS_PER_NETWORK and SEIKO_MAX_CONNECTIONS ask for (LimitsError
        for one that is not a positive number); the total is at most half ``fd_limit`` (the process's soft open-file
        limit unless given; None for none)."""
        env = os.environ if environ is None else environ
        fd_limit = _fd_limit() if fd_limit == -1 else fd_limit

        def number(name: str, default: Any, kind: Callable[[str], float], low: float, high: float) -> Any:
            raw = env.get(name, "").strip()
            if not raw:
                return default
            try:
                value = kind(raw)
            except ValueError:
                value = float("nan")
            if not low <= value <= high:  # nan too
                raise LimitsError(f"{name} must be a {'whole ' if kind is int else ''}number from {low:g} to {high:g}, "
                                  f"not {raw[:40]!r}")
            return value

        head = number(ENV_HEAD_TIMEOUT, DEFAULT_HEAD_DEADLINE_S, float, 1, 600)
        body = number(ENV_BODY_TIMEOUT, DEFAULT_BODY_DEADLINE_S, float, 1, 600)
        per_address = number(ENV_PER_ADDRESS, DEFAULT_PER_ADDRESS, int, 1, 100_000)  # None unless set
        per_network = number(ENV_PER_NETWORK, DEFAULT_PER_NETWORK, int, 1, 1_000_000)  # None unless set
        total = int(number(ENV_TOTAL, DEFAULT_TOTAL, int, 1, 1_000_000))
        if fd_limit is not None:
            total = max(1, min(total, fd_limit // 2))
        return cls(head_deadline_s=head, per_address=per_address, total=total, body_deadline_s=body,
                   per_network=per_network)


IPV6_PREFIX = 64  # an IPv6 client is counted by its /64: one subscriber, site or host holds a whole /64
# the wider IPv6 prefixes a /64 is counted under too, and how many networks' shares each may hold (``Gate``): an ISP
# delegates a /56 or a /48 to one home or site, 256 or 65,536 /64s, so counted per /64 alone one such customer (64 of
# its /64s, a /58) filled the total (tenth review of 6 Dec 2026)
IPV6_WIDER = ((56, 2), (48, 4))
# the same for IPv4: an address is counted under its /24 too, the smallest block routed on the internet, which one
# hosting customer or site holds whole (as a /48), with four networks' shares (fifteenth review of 6 Dec 2026: counted
# per address alone, one holder of a /24 had 256 addresses' shares)
IPV4_WIDER = ((24, 4),)
# addresses that are never counted under a wider network, only alone (an IPv6 one per /64): a LAN's, this machine's
# and a carrier's shared pool's, whose /24 (or /48) is no one holder's (a lab of 50 behind one switch, on this
# server's own network); counted under their /24, 47 of 99 such hosts were refused their first connection with 307
# of 512 free (a read-only review of the fifteenth review's change). Listed, not ``not is_global``: the documentation
# blocks stand in for public addresses in the tests, and ``is_global`` changed between Python versions.
NOT_GROUPED = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10",
    "fc00::/7", "fe80::/10", "::1/128"))
# IPv6 addresses counted each alone, not per /64 (as a private IPv4 address is): a LAN's hosts share one /64 (every
# link-local address is in fe80::/64, a unique-local segment is one /64), so counted per /64 they all shared one
# network's share (a read-only review of the fifteenth review's change: 8 connections for a whole lab)
LAN_IPV6 = tuple(ipaddress.ip_network(n) for n in ("fc00::/7", "fe80::/10"))


def counting_key(host: str | None) -> str:
    """The key the connections from ``host`` (a peer's address as the socket gives it) are counted under: an IPv4
    address as itself, an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, an IPv4 client of a dual-stack socket) as that
    IPv4 address, a unique-local or link-local IPv6 address (``LAN_IPV6``) as itself (a link-local one with its zone:
    one LAN's hosts share one /64), any other IPv6 address as its /64 (``2001:db8:1:2::/64``), anything else (no
    address, a Unix socket) as itself or ``?``.

    Found by the seventh review of 5 Dec 2026: counted per exact address, one IPv6 client, which controls at least a
    /64 (2^64 addresses, picked per connection with no more than a socket option), was not held by the per-address
    cap at all. (``sessions.address_key``, the sign-in throttle's key, counts IPv6 per /64 too, but puts every
    loopback address under one key; here each loopback IPv4 address counts alone, as before, with no /24 around it:
    ``wider_keys`` groups no loopback, private or link-local address, ``NOT_GROUPED``.)"""
    if not host:
        return "?"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if any(address in network for network in LAN_IPV6):
            return str(address)  # with its zone, a link-local one's (``fe80::7%eth0``)
        network = ipaddress.IPv6Network((int(address), IPV6_PREFIX), strict=False)
        return f"{network}%{address.scope_id}" if address.scope_id else str(network)
    return str(address)


def wider_keys(host: str | None) -> list[tuple[str, int]]:
    """The wider networks the connections from ``host`` are counted under besides ``counting_key``'s, each with how
    many networks' shares it may hold: an IPv6 address's /56 and /48 (``IPV6_WIDER``; ``2001:db8:1::/48``), an IPv4
    address's /24 (``IPV4_WIDER``; ``192.0.2.0/24``, an IPv4-mapped one's too); none for a private, shared
    (100.64/10), loopback or link-local address (``NOT_GROUPED``: one LAN's hosts are not one holder's) or anything
    else."""
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return []
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in NOT_GROUPED):
        return []
    if isinstance(address, ipaddress.IPv4Address):
        return [(str(ipaddress.IPv4Network((int(address), prefix), strict=False)), shares)
                for prefix, shares in IPV4_WIDER]
    keys = []
    for prefix, shares in IPV6_WIDER:
        network = ipaddress.IPv6Network((int(address), prefix), strict=False)
        keys.append((f"{network}%{address.scope_id}" if address.scope_id else str(network), shares))
    return keys


class Gate:
    """The connections open, per client network (``counting_key``: an IPv4 address, an IPv6 /64) and in all (touched
    only on the server's event loop), and whether a network may open one more. A network holding ``h`` while ``n``
    are open in all may, while ``n`` is below ``Limits.total`` (503 once it is not), if ``h`` is below the larger of

    - ``FAIR_SHARE`` (8, about four open pages): every network's own first connections, and
    - what is left of the first half of the total once its own are counted again: ``h < total / 2 - n``, so that
      its cap shrinks as the total fills and is ``FAIR_SHARE`` from a little under half the total on;

    429 otherwise. ``Limits.per_address``, when set (SEIKO_CONNECTIONS_PER_ADDRESS; by default it is not), is each
    network's cap instead of these shares, higher or lower: an operator who set it for an office behind one address
    asked for that many (set above the shares, it had raised nothing without a word: found by the review of this
    change), and a few networks can then fill the total again. One busy network alone
    (a LAN whose people share one IPv6 /64 or one NAT address) holds up to a quarter of the total (128 of the
    default 512, about 64 open pages); with one other network holding all it may, half that; and so on down.

    So a few networks cannot fill the total: a network opens its 9th connection or later only while fewer than
    half the total are open, so at most half the total is ever held that way, and the rest takes networks of at most
    8 each: filling the total takes more than total / 16 networks (over 32 of the default 512; 38 opening all they
    may one after another), where 8 networks holding the old per-address cap of 64 each filled it; until then every
    other network still gets its first 8. Found by the ninth review of 6 Dec 2026: those 8 networks locked everybody
    else out, and all the people of a LAN that shares one IPv6 /64 shared that cap of 64.

    An IPv6 /64 is counted under its /56 and its /48 too, and an IPv4 address under its /24 (``wider_keys``), each
    with a cap of its own that is a fixed multiple of a network's at every moment (``IPV6_WIDER``, ``IPV4_WIDER``):
    ``shares`` (2 for a /56, 4 for a /48 and a /24) times the network's, so it may hold ``h`` while ``h`` is below
    ``shares * max(FAIR_SHARE, total / 2 - n)``, or ``shares * Limits.per_address`` when that is set, or
    ``Limits.per_network`` (SEIKO_CONNECTIONS_PER_NETWORK) when that is set, whatever ``per_address`` is. A connection
    is let in only when its network and each wider one may open one more. Found by the tenth review of 6 Dec 2026:
    counted per /64 alone, one home or site, which an ISP delegates a /56 or a /48 (256 or 65,536 /64s), held 8 per
    /64 however busy the server was, so 64 of its /64s (a /58) filled the total and locked every other client out;
    and by the fifteenth: an IPv4 address was counted alone, so one holder of a /24 had 256 shares, and a /48's cap
    was a multiple of a /64's only while the server was busy (32 against 8): on a quiet server both were a quarter of
    the total, so one /64 of a site took the whole site's and its other /64s got nothing. Now a /48 or a /24 alone
    holds ``2 * total / 5`` (205 of 512) and a /56 ``total / 3`` (171), from however many /64s or addresses; one of
    their networks alone a quarter (128), leaving the rest of its site 77; and once half the total is open a /48 or a
    /24 opens more only while it holds fewer than 32 (a /56 16). Filling the total takes 11 /48s or /24s opening all
    they may one after another. Two networks of different /48s (/24s) count apart as before. Unrelated people who
    share a public /48 or /24 (a campus, a mobile carrier's pool) share its cap as the people behind one NAT address
    share one address's (an operator raises them with ``Limits.per_network``); a private, shared (100.64/10),
    loopback or link-local address counts alone, under no wider network (``NOT_GROUPED``): a LAN's hosts on this
    server's network are not one holder's (a read-only review of that change: 47 of 99 hosts of one private /24
    were refused their first connection with 307 of 512 free); wider than these nothing is counted, since one IPv6
    /32 or IPv4 /16 is a whole ISP's customers.

    Signed-in users are not told apart from anonymous connections: the caps answer as a connection opens, before
    any request (so before any session cookie) is read, which is what bounds what an anonymous client can hold; a
    signed-in account's own long-lived requests (heartbeats, streams of results) are capped by ``app.web_guard``."""

    def __init__(self, limits: Limits, exempt: Iterable[str] = (), *, outer: Gate | None = None) -> None:
        self.limits = limits
        self.exempt = [ipaddress.ip_network(n, strict=False) for n in exempt]
        self.open: dict[str, int] = {}  # per ``counting_key``
        self.open_wider: dict[str, int] = {}  # per ``wider_keys``: an IPv4 /24, an IPv6 /56 and /48
        # the requests in progress that trusted proxies passed on, by the client each names (``share_behind_proxy``)
        self.behind_proxy: Gate | None = Gate(limits, outer=self) if self.exempt else None
        self.outer = outer  # behind_proxy's: the connections' gate, whose direct clients load the server too
        self.total = 0
        self.proxies_open = 0  # of ``total``: trusted proxies' connections
        self.refused = 0
        self.closed_slow = 0
        self._refusal_log = _Every(ACCEPT_LOG_EVERY_S)

    def _exempt(self, host: str | None) -> bool:
        """Whether ``host`` is a trusted proxy's address (an IPv4-mapped IPv6 address matches as its IPv4 address too:
        a dual-stack server sees an IPv4 proxy as ::ffff:a.b.c.d)."""
        try:
            address = ipaddress.ip_address(host or "")
        except ValueError:
            return False
        forms = [address] + ([address.ipv4_mapped] if getattr(address, "ipv4_mapped", None) is not None else [])
        return any(form in net for form in forms for net in self.exempt)

    def admit(self, host: str | None) -> tuple[int, str] | None:
        """None, the connection from ``host`` counted (``release`` it when it closes), or (status, sentence): 503 with
        the total open, 429 for a network at ``Limits.per_address`` (when set) or else at its share now (the class)."""
        if self.total >= self.limits.total:
            return self._refuse(503, TOO_MANY_IN_ALL.format(n=self.limits.total), "in all")
        if self._exempt(host):  # a trusted proxy counts towards the total only: not towards its /64 neighbours'
            self.total += 1
            self.proxies_open += 1
            return None
        counted = self._counted(host)
        for key, shares, counts in counted:  # the network, then its /24 (IPv4) or /56 and /48: each may open one more
            held = counts.get(key, 0)
            if shares > 1 and self.limits.per_network is not None:  # the operator's fixed cap for a wider network
                if held >= (cap := self.limits.per_network):
                    return self._refuse(429, TOO_MANY_FROM_NETWORK.format(n=cap, net=key), f"from {key}")
            elif self.limits.per_address is not None:  # the operator's fixed cap, in place of the shares
                if held >= (cap := shares * self.limits.per_address):
                    sentence = TOO_MANY_FROM_ADDRESS if shares == 1 else TOO_MANY_FROM_NETWORK
                    return self._refuse(429, sentence.format(n=cap, net=key), f"from {key}")
            elif held >= shares * FAIR_SHARE and 2 * held >= shares * (self.limits.total - 2 * self._load()):
                # h >= shares * max(8, total / 2 - n): a wider network's cap is its shares times a network's
                sentence = TOO_MANY_WHILE_BUSY if shares == 1 else NETWORK_WHILE_BUSY
                return self._refuse(429, sentence.format(n=held, net=key), f"from {key}, its share now")
        for key, _shares, counts in counted:
            counts[key] = counts.get(key, 0) + 1
        self.total += 1
        return None

    def _load(self) -> int:
        """What the busy rule counts as open: this gate's own, and for ``behind_proxy`` (requests in progress through
        the proxies) the direct clients' connections beside them too; not the proxies' connections themselves, idle
        kept-alive ones included, which would shrink every proxied client's share (a direct client's rule counts them:
        they are connections). Without the direct ones, a client behind the proxy was held to the proxied requests'
        load alone: with 400 direct connections open and 50 proxied, one proxied client could open about 200 more
        while a direct one was held to 8 (found by a read-only review, tenth review)."""
        if self.outer is None:
            return self.total
        return self.total + self.outer.total - self.outer.proxies_open

    def _counted(self, host: str | None) -> list[tuple[str, int, dict[str, int]]]:
        """The keys a connection from ``host`` counts under, each with its networks' shares and its counts."""
        return [(counting_key(host), 1, self.open)] + [(k, n, self.open_wider) for k, n in wider_keys(host)]

    def release(self, host: str | None) -> None:
        if self._exempt(host):
            self.total -= 1
            self.proxies_open -= 1
            return
        for key, _shares, counts in self._counted(host):
            left = counts.get(key, 0) - 1
            if left > 0:
                counts[key] = left
            else:
                counts.pop(key, None)
        self.total -= 1

    def _refuse(self, status: int, sentence: str, where: str) -> tuple[int, str]:
        self.refused += 1
        if (held := self._refusal_log.due()) is not None:
            log.warning("refused a connection: too many open %s (%d refused since the last such line)", where, held)
        return status, sentence


class _Every:
    """Whether a log line is due: the first, then at most one every ``every_s``; ``due`` returns the count of calls
    since the last line (itself included), or None when the line is not due."""

    def __init__(self, every_s: float) -> None:
        self.every_s, self._last, self._held = every_s, None, 0

    def due(self) -> int | None:
        now = time.monotonic()
        self._held += 1
        if self._last is not None and now - self._last < self.every_s:
            return None
        self._last, held, self._held = now, self._held, 0
        return held


def _answer(status: int, sentence: str, *, as_json: bool = False) -> bytes:
    """A whole HTTP/1.1 answer with ``sentence`` as its body (as ``{"detail": sentence}`` with ``as_json``), closing
    the connection (written before any request, so built here: h11 sends an answer only to a request it has read)."""
    reason = {400: b"Bad Request", 408: b"Request Timeout", 429: b"Too Many Requests", 503: b"Service Unavailable"}[status]
    body = json.dumps({"detail": sentence}).encode() if as_json else sentence.encode()
    kind = b"application/json" if as_json else b"text/plain; charset=utf-8"
    # a cap's refusal (429, 503) is written before the request is read: whatever it asked was not done, which the page
    # says with NOT_RUN_HEADER, so that it may send an event (a rating) again (ui_assets.STREAMS_JS; ninth review)
    not_run = b"%s: 1\r\n" % NOT_RUN_HEADER.encode() if status in (429, 503) else b""
    return (b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s"
            b"connection: close\r\ncache-control: no-store\r\n\r\n%s" % (status, reason, kind, len(body), not_run,
                                                                          body))


_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a request's head (h11._receivebuffer.blank_line_regex)
_FOLDED_LINE = re.compile(rb"\n[ \t]")  # a line that starts with a space or a tab: h11 joins it to the one before


def folded_head(buffered: bytes, start: int = 0) -> bool:
    """Whether the request head at the start of ``buffered`` (what h11 holds unread, the next request first) is
    complete and has a folded header line (obs-fold, RFC 9112 5.2: a line that starts with a space or a tab, which
    h11 joins to the header before it with a space). ``start``: where to look for the head's end, for a caller that
    knows the head did not end before ``start + 2`` (the end, ``\n\r\n``, is 3 bytes): a head sent a byte at a time
    was searched whole at each byte (a review of this change), now each byte once.

    Found by the ninth review of 6 Dec 2026: a proxy that passes such a line on as it came, with a header of its own
    put before the client's, had its header's value extended by the client: ``X-Forwarded-For: <client>`` followed by
    the client's `` , 203.0.113.7`` reached uvicorn as ``<client> , 203.0.113.7``, and uvicorn takes the client's
    address from a trusted proxy's X-Forwarded-For as its last entry that is not a trusted proxy, so the sign-in
    throttle counted an address the client chose. RFC 9112 lets a server refuse a request with one (400) instead of
    joining it. (A chunked body's trailer may be folded too: ``folded_trailer``.)"""
    end = _HEAD_END.search(buffered, start)
    return end is not None and _FOLDED_LINE.search(buffered, 0, end.start() + 1) is not None


_BARE_LF = re.compile(rb"(?<!\r)\n")  # a line end that is not CR LF


def bare_lf_head(buffered: bytes, start: int = 0) -> bool:
    """Whether the request head at the start of ``buffered`` (as for ``folded_head``; ``start`` the same too) is
    complete and has a line that ends in a bare LF (``\n`` with no ``\r`` before it), its end included.

    Found by the tenth review of 6 Dec 2026: h11 ends a head's lines at a bare LF as at CR LF, and its head at
    ``\n\n`` (RFC 9112 2.2 lets a recipient do so), while a proxy may not: one that takes a bare LF for part of a
    header's value, and passes it on as it came, sends ``X-A: 1\nContent-Length: 40`` as one header that h11 reads
    as two, or ``...\r\n\nGET /other ...`` as one head that h11 reads as two requests: a request the proxy never
    saw (request smuggling: the proxy's checks, and X-Forwarded-For, skipped). No browser or HTTP client library sends
    a bare LF in a head, and RFC 9112 lets a server refuse a malformed request with 400, so this server does, before
    h11 reads it (Node's parser has refused them since 2023 for the same reason). A chunked body's chunk lines need
    CR LF in h11 already; its trailer may end in bare LFs, which only a proxy that passes a chunked body on as it came
    would see (nginx, which sends the body on with a Content-Length, does not)."""
    end = _HEAD_END.search(buffered, start)
    return end is not None and _BARE_LF.search(buffered, 0, end.end()) is not None


_LAST_CHUNK = re.compile(rb"0{1,20}(?![0-9A-Fa-f])")  # a chunk-size line of size 0 (h11: 1 to 20 hex digits)


def trailer_end(buffered: bytes | bytearray, start: int = 0, searched: int = 0) -> int | None:
    """Where the trailer of a chunked body that starts at ``start`` of ``buffered`` (after the last chunk's size line,
    ``0\r\n``) ends, just after its last line end, once it is complete; None while it is not: h11 ends a trailer as
    it ends a head (``_HEAD_END``; a bare ``\n`` alone as an empty one). ``searched``: how far from ``start`` it was
    searched before without an end (as ``folded_head``'s ``start``)."""
    if buffered[start:start + 2] == b"\r\n":  # no trailer
        return start + 2
    if buffered[start:start + 1] == b"\n":
        return start + 1
    end = _HEAD_END.search(buffered, start + max(0, searched - 2))
    return None if end is None else end.end()


def bare_lf_trailer(buffered: bytes | bytearray, start: int, end: int) -> bool:
    """Whether the complete trailer from ``start`` to ``end`` (``trailer_end``) of ``buffered`` has a line that ends in
    a bare LF, its end included."""
    return _BARE_LF.search(buffered, start, end) is not None


def folded_trailer(buffered: bytes | bytearray, start: int, end: int) -> bool:
    """Whether the complete trailer from ``start`` to ``end`` (``trailer_end``) of ``buffered`` has a folded line (a
    line that starts with a space or a tab: h11 joins it to the field before it, or refuses it as the first line).

    Found by the sixteenth review of 7 Dec 2026: after the bare LF trailer check, a trailer folded this way (obs-fold,
    which RFC 9112 5.2 says a server must refuse or replace) was still read; a proxy that passes a chunked body on as
    it came and reads such a line otherwise than h11 (as a field of its own, or as the trailer's end) disagrees with
    this server about the request, as with a folded head (``folded_head``)."""
    return buffered[start:start + 1] in (b" ", b"\t") or _FOLDED_LINE.search(buffered, start, end) is not None


class Refused(Exception):
    """Raised by ``CheckedConnection.next_event`` for a request this server does not read: (warning, sentence)."""


class CheckedConnection(h11.Connection):
    """h11's connection, whose ``next_event`` first refuses (raises ``Refused``), before h11 reads it, a request head
    with a folded header line (``folded_head``) or a line that ends in a bare LF (``bare_lf_head``), and a chunked
    body's trailer, once complete, with a line that ends in a bare LF (``bare_lf_trailer``) or a folded line
    (``folded_trailer``, sixteenth review).

    The checks are here, where h11 makes each event, because uvicorn hands h11 what arrives and reads every event h11
    can make of it in one loop: a chunked body's last chunk and its trailer in one call, and, when the app answered
    before the body's end, the body, its trailer and the next request's head (a check of the head before that loop
    missed that one). Found by the fifteenth review of 6 Dec 2026: h11 ends a trailer's lines (and the trailer) at a
    bare LF, as it did a head's, so a proxy that passes a chunked body on as it came, and takes a bare LF in the
    trailer for part of a line, disagrees with this server about where the request ends: the bytes after h11's end
    are read here as the next request, one the proxy never saw. h11's chunked reader says where in its buffer the
    body is (h11's own attributes: no public call tells), and the buffer is read in place, not copied: each head
    searched once (``folded_head``'s ``start``), a trailer too, the last chunk's size line too (it was searched from
    its start at each piece that arrived: one sent a byte at a time, ``0;`` and a 16 KiB extension, cost its length
    squared, found by a read-only review of this change), a chunk's size line once per chunk."""

    _head_searched = 0  # how much of a head still arriving was searched without finding its end
    _trailer_searched = 0  # the same for a trailer
    _size_line_searched = 0  # the same for a last chunk's size line (``0;`` and an extension), from its start
    _size_line_reader: Any = None  # the chunked reader whose size line that is, while it is still arriving

    def next_event(self) -> Any:
        buffered = self._receive_buffer._data
        if self.their_state is h11.IDLE:
            searched = self._head_searched if len(buffered) >= self._head_searched else 0  # taken from: anew
            searched = max(0, searched - 2)  # the head's end (3 bytes) may start in its last 2
            if folded_head(buffered, searched):
                raise Refused(FOLDED_WARNING, FOLDED_HEADER)
            if bare_lf_head(buffered, searched):
                raise Refused(BARE_LF_WARNING, BARE_LF)
            self._head_searched = len(buffered)
        else:
            self._head_searched = 0  # the next head starts where this request ends
        reader = self._reader
        start = None
        left_off, self._size_line_reader = self._size_line_reader, None  # kept only while its line is still arriving
        if isinstance(reader, ChunkedReader):
            skip = len(reader._bytes_to_discard)  # a chunk's CR LF still to come, then the next chunk's size line
            if reader._reading_trailer:
                start = 0
            elif reader._bytes_in_chunk == 0 and _LAST_CHUNK.match(buffered, skip):
                # a size line arriving slowly (``0;`` and an extension) is searched on from where it was left (less
                # 1: its CR LF may start there), counted from the line's start, since h11 drops the discarded bytes
                searched = self._size_line_searched if left_off is reader else 0
                if (line := buffered.find(b"\r\n", skip + max(0, searched - 1))) >= 0:
                    start = line + 2
                else:
                    self._size_line_reader, self._size_line_searched = reader, len(buffered) - skip
        if start is None:
            self._trailer_searched = 0
        else:
            end = trailer_end(buffered, start, self._trailer_searched if start == 0 else 0)
            if end is not None and bare_lf_trailer(buffered, start, end):
                raise Refused(BARE_LF_WARNING, BARE_LF_TRAILER)
            if end is not None and folded_trailer(buffered, start, end):
                raise Refused(FOLDED_WARNING, FOLDED_TRAILER)
            self._trailer_searched = len(buffered) if start == 0 else 0
        return super().next_event()


async def share_behind_proxy(app: Any, proxy: ProxyHeadersMiddleware, gate: Gate, scope: Any, receive: Any,
                             send: Any) -> None:
    """``app`` (the server's whole app, ``proxy`` its outermost part) for a connection from a trusted proxy: each request
    is counted, while it is in progress, under the client its X-Forwarded-For names as uvicorn reads it (``proxy``'s
    own ``trusted_hosts``: the last entry that is not a trusted proxy, the client address the app then sees), and is
    refused with 429 and ``{"detail": sentence}`` when that client (its network, its /24 or /56 and /48: ``Gate``) may not have
    one more in progress now; the connection, the proxy's, stays open.

    Found by the tenth review of 6 Dec 2026: behind a proxy every connection comes from the proxy's address, so the
    per-network shares held nobody behind it (a trusted proxy counts towards the total only), and one client of the
    proxy could hold every connection the server takes. What can be done at the connection layer is not more: a
    connection is let in or refused before its request's head, where X-Forwarded-For is, arrives, and a proxy that
    keeps its connections to the app alive (nginx's ``keepalive``) sends one client's request and then another's on
    the same one. But an HTTP/1.1 connection carries one request at a time, so a request in progress holds one of the
    proxy's connections for its client: counting those per client gives each client behind the proxy its share of
    them, by the same rule as a direct client's connections. What is not shared out per client: a head still arriving
    (its client is not known yet; a proxy that reads whole heads before passing them on, as nginx does, sends none
    slowly) and the proxy's idle kept-alive connections (nobody's: the proxy, not a client, keeps one open and picks
    whose request it carries next, so the client of its last request no longer holds it; the proxy's own settings
    bound them, and each is closed ``Limits.head_deadline_s`` after its last answer without a new head). A request
    that names no client (no X-Forwarded-For) is not counted: it is the proxy's own, or the proxy is set up to send
    no client address, and then every person behind it is one client (README)."""
    if scope["type"] != "http":
        return await app(scope, receive, send)
    forwarded = b", ".join(value for name, value in scope["headers"] if name == b"x-forwarded-for")
    client = proxy.trusted_hosts.get_trusted_client_address(forwarded.decode("latin1"))[0] if forwarded else ""
    if not client:
        return await app(scope, receive, send)
    refused = gate.admit(client)
    if refused is not None:
        body = json.dumps({"detail": refused[1]}).encode()
        await send({"type": "http.response.start", "status": refused[0],
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                (b"cache-control", b"no-store"), (NOT_RUN_HEADER.encode(), b"1")]})
        await send({"type": "http.response.body", "body": body})
        return None
    try:
        return await app(scope, receive, send)
    finally:
        gate.release(client)


class LimitedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head and body, and the connection caps of a ``Gate``."""

    def __init__(self, *args: Any, gate: Gate, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # as uvicorn makes it, with the checks of a request's line ends (CheckedConnection)
        size = self.config.h11_max_incomplete_event_size
        self.conn = CheckedConnection(h11.SERVER, DEFAULT_MAX_INCOMPLETE_EVENT_SIZE if size is None else size)
        self.gate = gate
        self._admitted = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = False  # part of a head arrived since the deadline was set
        self._body_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        host = self.client[0] if self.client else None
        refused = self.gate.admit(host)
        if refused is not None:
            # {"detail": sentence}: written before the request is read, so whatever it is; the page's Gradio client
            # reads its event's answer (POST /queue/join) as JSON and shows ``detail`` (a 503 as its own "busy"
            # sentence), where plain text showed "Could not parse server response: SyntaxError ..." (seventh review)
            transport.write(_answer(*refused, as_json=True))
            transport.close()
            return
        self._admitted = True
        # a trusted proxy's connection: its requests are shared out per client (``share_behind_proxy``); uvicorn takes
        # the client from X-Forwarded-For only in its ProxyHeadersMiddleware, the app's outermost part when it does
        behind = self.gate.behind_proxy
        if (behind is not None and isinstance(self.app, ProxyHeadersMiddleware) and self.gate._exempt(host)
                and host in self.app.trusted_hosts):  # and uvicorn believes its X-Forwarded-For
            self.app = functools.partial(share_behind_proxy, self.app, self.app, behind)
        self._set_head_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_deadline()
        self._cancel_body_deadline()
        self._cancel_send_deadline()
        if self._admitted:
            self._admitted = False
            self.gate.release(self.client[0] if self.client else None)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            self._head_bytes = True
        super().data_received(data)
        if self._head_timer is not None and self.conn.their_state is not h11.IDLE:
            self._cancel_head_deadline()  # the head is complete (or refused, 400)
        # a body's deadline runs from its head's end until it has all arrived, answered meanwhile or not: a body sent a
        # byte every few seconds held the connection for ever (sixth review; each byte put off uvicorn's keep-alive
        # timeout after an early answer such as the web guard's 413)
        if self.conn.their_state is h11.SEND_BODY:
            if self._body_timer is None and not self.transport.is_closing():
                self._body_timer = self.loop.call_later(self.gate.limits.body_deadline_s, self._body_too_slow)
        else:
            self._cancel_body_deadline()

    def handle_events(self) -> None:
        """uvicorn's, but a request refused by ``CheckedConnection`` (a head with a folded header line or a line that
        ends in a bare LF, a chunked body's trailer with a bare LF or a folded line) is answered 400 with one sentence,
        unless an answer was begun, and its connection closed, nothing after it read (``_refuse``)."""
        try:
            super().handle_events()
        except Refused as refused:
            self._refuse(*refused.args)

    def _refuse(self, warning: str, sentence: str) -> None:
        """Log ``warning``; answer 400 with ``sentence`` where nothing was answered yet (a request in progress: its
        app's receive() gets http.disconnect, and what it answers is dropped, as for ``_body_too_slow``); close."""
        self.logger.warning(warning)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if not self.transport.is_closing():
            if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):  # nothing answered yet
                self.transport.write(_answer(400, sentence))
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # kept alive: the next request's head has its own deadline
            self._set_head_deadline()

    def _set_head_deadline(self) -> None:
        self._cancel_head_deadline()
        self._head_bytes = False
        self._head_timer = self.loop.call_later(self.gate.limits.head_deadline_s, self._head_too_slow)

    def _cancel_head_deadline(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_too_slow(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.gate.closed_slow += 1
        if self._head_bytes:  # a connection that sent nothing (a browser's spare one) is closed without an answer
            self.transport.write(_answer(408, SLOW_HEAD.format(s=self.gate.limits.head_deadline_s)))
        self.transport.close()


    # An answer the client does not read: the transport's buffer fills and it pauses writing (the app's send waits);
    # a client that never reads held the connection, its task and buffers for ever (seventh review of 5 Dec 2026:
    # 5 connections that asked for a 4.5 MB asset and read nothing were all still open, and counted, 25 s later).
    # Writing paused for ``Limits.body_deadline_s`` without a pause's end (the buffer drained to its low mark) closes
    # the connection, its buffer dropped.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._send_timer is None and not self.transport.is_closing():
            self._send_timer = self.loop.call_later(self.gate.limits.body_deadline_s, self._send_too_slow)

    def resume_writing(self) -> None:
        self._cancel_send_deadline()
        super().resume_writing()

    def _cancel_send_deadline(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_too_slow(self) -> None:
        self._send_timer = None
        self.gate.closed_slow += 1
        if self.cycle is not None and not self.cycle.response_complete:  # the app's send sees the client gone
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.abort()  # close() would wait for the buffer to be read; connection_lost follows

    def _cancel_body_deadline(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_too_slow(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.SEND_BODY:
            return
        self.gate.closed_slow += 1
        if self.cycle is not None and not self.cycle.response_complete:
            # as uvicorn does when the client goes: the app's receive() gets http.disconnect, its answer is dropped
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        if self.conn.our_state is h11.SEND_RESPONSE:  # nothing answered yet
            self.transport.write(_answer(408, SLOW_BODY.format(s=self.gate.limits.body_deadline_s)))
        self.transport.close()


class AcceptLog:
    """An event loop exception handler: a failed accept for want of file descriptors (or memory) is logged at most
    once every ``every_s`` with the count held back and no traceback; anything else goes to the loop's default."""

    RESOURCE_ERRNOS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

    def __init__(self, every_s: float = ACCEPT_LOG_EVERY_S) -> None:
        self._every = _Every(every_s)
        self.failed = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in self.RESOURCE_ERRNOS and "accept" in str(context.get("message")):
            self.failed += 1
            if (held := self._every.due()) is not None:
                log.error("could not accept %d connection(s) (%s): the process's open-file limit is reached; "
                          "connections are refused until some close (logged at most every %g s)",
                          held, exc.strerror or exc, self._every.every_s)
            return
        loop.default_exception_handler(context)


# uvicorn's warnings for a request it cannot serve, one line each time (its h11 protocol): anyone can send such
# requests as fast as connections open, a line each (seventh review of 5 Dec 2026: 992 bad requests in 3 s, 996 lines)
FOLDED_WARNING = "Refused a request with a folded field line (obs-fold)."  # a header's or a trailer's (LimitedH11Protocol)
BARE_LF_WARNING = "Refused a request with a line that ends in a bare LF."  # logged by LimitedH11Protocol
REPEATED_WARNINGS = ("Invalid HTTP request received.", "Unsupported upgrade request.",
                     "No supported WebSocket library detected.", FOLDED_WARNING, BARE_LF_WARNING)


class QuietRepeats(logging.Filter):
    """A filter for uvicorn's error log: each of ``REPEATED_WARNINGS`` passes at most once every ``every_s``, saying
    how many there were since its last line; every other record passes."""

    def __init__(self, every_s: float = ACCEPT_LOG_EVERY_S) -> None:
        super().__init__()
        self.every_s = every_s
        self._every = {text: _Every(every_s) for text in REPEATED_WARNINGS}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        text = next((t for t in REPEATED_WARNINGS if message.startswith(t)), None)
        if text is None:
            return True
        held = self._every[text].due()
        if held is None:
            return False
        if held > 1:
            record.msg, record.args = f"{message} ({held} since the last such line; at most one every {self.every_s:g} s)", ()
        return True


def _quiet_uvicorn_repeats() -> None:
    """Put a ``QuietRepeats`` on uvicorn's error log, once per process."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, QuietRepeats) for f in logger.filters):
        logger.addFilter(QuietRepeats())


@dataclass
class Installed:
    gate: Gate
    accept_log: AcceptLog


def _installed_on(config: Any) -> Gate | None:
    """The gate of the limits already in ``config`` (a uvicorn Config), or None."""
    made = getattr(config, "http_protocol_class", None)
    if isinstance(made, functools.partial) and made.func is LimitedH11Protocol:
        return made.keywords.get("gate")
    return None


def starting_server_config() -> Any | None:
    """The uvicorn Config of the server whose start-up is running this code: uvicorn runs an app's lifespan in a task
    of its own, ``LifespanOn.main``, whose ``config`` it then listens with. None anywhere else."""
    from uvicorn.config import Config
    from uvicorn.lifespan.on import LifespanOn

    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task is not None else None
    owner = frame.f_locals.get("self") if frame is not None else None
    config = owner.config if isinstance(owner, LifespanOn) else None
    return config if isinstance(config, Config) else None


def before_listening(lifespan: Callable[[Any], Any] | None, limits: Limits, *,
                     trusted_proxies: Iterable[str] = ()) -> Callable[[Any], Any]:
    """``lifespan`` (an app's, for ``gr.Blocks.launch(app_kwargs={"lifespan": ...})``; None for none) that first puts
    the limits into the uvicorn server starting it, as ``install`` does: uvicorn runs the lifespan's start-up before
    it listens, and makes each connection with the protocol class its config names when the connection comes, so
    that no connection is made without the limits.

    Found by the seventh review of 5 Dec 2026: installed once ``launch`` had returned, the limits missed every
    connection made meanwhile (about 0.4 s after the port opened, Gradio's own start-up calls included); such a
    connection had no head deadline for its whole life. ``install`` after ``launch`` finds them in place."""

    def limit(config: Any) -> None:
        if _installed_on(config) is None:
            config.http_protocol_class = functools.partial(LimitedH11Protocol, gate=Gate(limits, exempt=trusted_proxies))
            asyncio.get_running_loop().set_exception_handler(AcceptLog())
            _quiet_uvicorn_repeats()

    return before_start(lifespan, limit)


def before_start(lifespan: Callable[[Any], Any] | None, change: Callable[[Any], None]) -> Callable[[Any], Any]:
    """``lifespan`` (an app's; None for none) that first calls ``change`` with the uvicorn Config of the server
    starting it (``starting_server_config``; not called where there is none): uvicorn listens, and makes each
    connection, with what that config says once the lifespan's start-up has run."""

    @asynccontextmanager
    async def _lifespan(app: Any):
        config = starting_server_config()
        if config is not None:
            change(config)
        if lifespan is None:
            yield
        else:
            async with lifespan(app):
                yield

    return _lifespan


def install(demo: Any, limits: Limits, *, trusted_proxies: Iterable[str] = ()) -> Installed | None:
    """Put the limits into the uvicorn server ``demo`` (a launched gr.Blocks) runs: every connection made from now on
    is a ``LimitedH11Protocol`` (uvicorn makes each with ``config.http_protocol_class``), and the server's event loop
    logs failed accepts through ``AcceptLog``. Where ``before_listening`` put them in already, those are kept (and
    returned). None when ``demo`` runs no uvicorn server this can reach."""
    server = getattr(demo, "server", None)
    config = getattr(server, "config", None)
    servers = getattr(server, "servers", None)
    if config is None or not getattr(config, "loaded", False) or not servers:
        return None
    loop = servers[0].get_loop()
    if (gate := _installed_on(config)) is not None:
        handler = loop.get_exception_handler()
        if isinstance(handler, AcceptLog):
            return Installed(gate=gate, accept_log=handler)
    log.warning("the connection limits were put in after the server started listening; connections made before "
                "then have none")
    _quiet_uvicorn_repeats()
    gate = Gate(limits, exempt=trusted_proxies)
    accept_log = AcceptLog()
    config.http_protocol_class = functools.partial(LimitedH11Protocol, gate=gate)
    loop.call_soon_threadsafe(loop.set_exception_handler, accept_log)
    return Installed(gate=gate, accept_log=accept_log)
