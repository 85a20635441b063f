"""The web app's front door: an ASGI layer outside everything Gradio builds (its CORS handling included).

For every HTTP and websocket request, before Gradio sees it:

- **Host** (local mode, no accounts): only ``localhost``, ``127.x.x.x`` or ``[::1]`` (any port) are answered. A
  page on another name that resolves to 127.0.0.1 (DNS rebinding) gets 403, so it cannot act as the local admin.
  With accounts: IP addresses, ``localhost``, this machine's name, the public URL's and ``--host``'s names and
  ``SEIKO_ALLOWED_HOSTS`` (``answered_names``); any other name gets 403, so a page whose name an attacker points at
  a server on an inside network cannot reach it through a visitor's browser (nor guess passwords from there).
- **Framing**: every response says ``X-Frame-Options: SAMEORIGIN`` and ``Content-Security-Policy:
  frame-ancestors 'self'``, so no page of another origin can show the app in a frame and steer clicks on it. With an
  https public URL every response says ``Strict-Transport-Security`` too (``HSTS_HEADER``).
- **Origin**: a request that carries an ``Origin`` header is refused (403, no CORS headers) unless that origin is
  the request's own (scheme aside: the same host and port as ``Host``) or the configured public URL
  (``SEIKO_PUBLIC_URL``). Browsers send ``Origin`` on every cross-origin request and preflight, and on every
  POST, so a foreign page can neither preflight, nor post to the queue, nor read ``/gradio_api/token``. An
  ``http://`` origin is refused for a request known to come over HTTPS: TLS ending here, a trusted proxy's
  ``X-Forwarded-Proto``, an https public URL of that name, or the always-Secure session cookie on a Host that is not
  this machine (``WebGuard._scheme``: a session established over HTTPS).
- **Proxies** (local mode): a request that carries a header a reverse proxy adds (``X-Forwarded-For``, ``Via``, ...)
  gets 403: without accounts only this machine may use the app. With accounts no forwarding header is passed on to
  Gradio (``FORWARDING_HEADERS``), whose page root believed ``X-Forwarded-Host`` from anyone.
- **Local token** (local mode): every request shows the secret drawn when the app started (``AppServices.local_token``):
  a cookie set when the browser opened the address the app printed (``/?token=...``, answered with a redirect to the
  same address without it), or the ``X-Seiko-Token`` header (scripts, gradio_client). Otherwise 401. Without it,
  anything that reaches the port from this machine would be the local admin: another user of the machine, or a
  reverse proxy on it that adds no forwarding header (nginx's plain ``proxy_pass``). Gradio's own start-up call
  (``GET /gradio_api/startup-events``) is the one request answered without it.
- **Size**: a request body over ``MAX_REQUEST_BODY`` gets 413 before anything reads it (FastAPI would parse it before
  checking the sign-in), and Gradio's upload routes are not answered (404): the app takes no files. With accounts, an
  event's body (``gradio_routes.is_event_post``) is read only from someone signed in (nobody gets Gradio's own 401
  first), is refused past ``MAX_EVENT_BODY`` bytes (16 KiB; an admin's event on ``/queue/join``, whose forms carry
  free text, past ``MAX_REQUEST_BODY``) before it is parsed, and past ``gradio_routes.MAX_VALUES`` values, the walk
  over it stopping there.
- **Gradio's own routes** (``app.gradio_routes``): deep links are not answered (404) nor opened (400), nor are the
  routes the app does not use, its file routes (``/gradio_api/file=...``) among them; an event's inputs that carry a file object are refused (400) before Gradio fetches
  it; a Gradio session hash is bound to the account that first used it (403 for any other, 401 signed out) and
  must be the short token Gradio's clients make (400), and an event's results (``GET /gradio_api/call/{api}/{event
  id}``) are read only by the account that made it, under the api it made it by, and only while they wait to be
  read; a session's stream (``/queue/data``) only where Gradio holds messages for it (else 404, one sentence:
  Gradio raised inside the event stream it had started, a traceback per request). A refusal is its sentence as plain
  text, except on ``/queue/join``, the page's own route, where every refusal (an event's, a session hash's, a
  body's, the sign-in's or local token's) is ``{"detail": sentence}`` (JSON), which the page's Gradio client shows in
  its error toast (plain text showed there as a JSON parse error); and on ``/queue/data``, the page's stream of
  results, an account's one stream too many, which is answered as a failed event (``_page_stream_error``): a 429
  there made the page say the connection was lost and reload, in a loop. The page itself (``GET /``, Gradio's HTML)
  carries ``PAGE_SCRIPT`` first in its head (``ui_assets.STREAMS_JS``), which handles every other refusal of its
  streams, the connection caps' included (app.net_limits answers before a request is read): retried with a wait it
  states, or said in one sentence, never a reload; then ``ui_assets.LOGIN_JS``, which makes the login page (the same
  page, signed out) say a refused sign-in's sentence, where Gradio's showed its own "Incorrect Credentials".
- **A rater's page config**: a signed-in account that is not an admin gets the page (``GET /``) and ``GET /config``
  without the Admin tab's components and events (``app.rater_page``, ``_rater_page_send``); Gradio's config listed
  the tab's layout and every event's function name to every rater. An answer that cannot be trimmed is a 500.
- **Cookies**: every ``Set-Cookie`` the app sends is ``SameSite=Lax`` (Gradio's own say ``SameSite=None``), and
  ``Secure`` when the request shows HTTPS (``WebGuard._https_shown``: an https public URL, TLS, the session cookie
  above, or the browser's own ``Origin: https://...``, as the sign-in's POST carries), so that a page making the
  browser ask for ``http://`` the same name gets no cookie sent in clear. Over plain http they are not (local use on
  http://127.0.0.1, a LAN without TLS), since a browser would not keep them. Over HTTPS the session and device
  cookies are named ``__Host-...`` (one session cookie, not Gradio's two), which a browser keeps only from this host
  over HTTPS, so a sibling subdomain or a plain-http man in the middle can neither plant nor shadow them; Gradio's
  names are not read there (a browser signed in before signs in again), and the app behind the guard sees only the
  session the guard decided on, under Gradio's name (``WebGuard._inner_cookies``).
- **Sign-in** (with accounts): ``POST /login`` is answered here. Throttled per client address and per account
  (``app.sessions.LoginThrottle``: 429 while locked, without hashing), the scrypt check runs in a thread pool of
  its own (``hash_workers`` threads at nice 10 on Linux, at most ``max_pending`` sign-ins waiting, else 503), so a
  flood of guesses neither blocks the event loop nor takes the threads, or the CPU, that serve ratings. An account
  has one sign-in checked at a time and at most ``SIGN_INS_PER_ACCOUNT`` successes a minute (the 429 past that is
  given to a right password only, so it tells nothing about which names are accounts), so one account cannot
  take every sign-in slot with its own password. Success starts a server-side session
  (``app.sessions.SessionStore``) whose token becomes Gradio's session cookie.
- **Sessions**: on every request the session cookie is checked against the database (idle and absolute expiry,
  log out, password change, disabled account); a token that is no longer valid is withdrawn from Gradio, which
  then treats the request as signed out. An event is checked again when its turn in Gradio's queue comes
  (``session_ended``, called by every handler through ``app.ui.who_from_request``): one whose session ended while
  it waited is not carried out.
- **Log out**: ``POST /logout`` ends the session in the database and clears the cookies. ``GET /logout`` ends
  nothing (a link on another site could otherwise sign people out): it shows a page with the log-out button.

Installed by a lifespan hook (``lifespan``) that ``app.ui.launch_kwargs`` passes to Gradio: when the server starts,
the hook wraps the app's finished middleware stack, so this layer is the outermost. ``installed(app)`` tells
whether it is in place; ``python -m app serve`` refuses to run without it.
"""

from __future__ import annotations

import asyncio
import functools
import html
import ipaddress
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit

from starlette._utils import get_route_path  # the path Starlette's router matches (root path removed)
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request, cookie_parser
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response

from app import auth, gradio_routes, rater_page, ui_assets, ui_export
from app.sessions import LoginThrottle, SessionInfo, SessionStore, StaleSignIn

log = logging.getLogger("seiko.web")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

LOGIN_PATHS = ("/login", "/login/")
# Successful sign-ins are limited too (found by review): a rater looping on their own correct password (each time
# without the cookie) held every sign-in slot, so an admin's sign-in got 503, and each success added a session row
# and a token in Gradio's memory. An account signs in at most SIGN_INS_PER_ACCOUNT times per SIGN_IN_WINDOW_S (429
# after that, to the right password only: answered before the check, it told whoever asked that the name was an
# account's, tenth review), has one sign-in checked at a time (another waits for it), and Gradio's token
# table keeps at most GRADIO_TOKENS_MAX entries (the oldest dropped: a valid session's token is put back by its next
# request, which checks it against the session store).
SIGN_INS_PER_ACCOUNT = 10
SIGN_IN_WINDOW_S = 60.0
SIGN_IN_WAIT_S = 10.0  # how long a sign-in waits for another of the same account being checked
SIGN_IN_WAITERS = 4  # at most this many wait per account; more get 503 at once
GRADIO_TOKENS_MAX = 10_000
LOGOUT_PATHS = ("/logout", "/logout/")
# a signed-out event on the page's own route (/queue/join): the page's Gradio client shows ``detail`` in its error
# toast, and Gradio's own 401 there had an object as ``detail`` (fourth review, 5 Dec 2026)
SIGNED_OUT = "You are signed out (your session has ended); reload the page to sign in again."
MAX_LOGIN_BODY = 16 * 1024
LOGIN_FORM_FIELDS = 8  # a sign-in sends a name and a password; a few more are let be (and not read)
LOGIN_FORM_TOO_MANY = f"the sign-in form had more than {LOGIN_FORM_FIELDS} fields; a sign-in sends the name and the password"
LOGIN_FORM_FILE = "the sign-in form carried a file; a sign-in sends the name and the password as text"
# Every request body is refused above this size before anything reads it. FastAPI parses a JSON body before it runs a
# route's sign-in dependency, so without a cap anyone could make the server buffer and parse gigabytes; the app's
# largest legitimate bodies (an event's inputs: a score, a few options) are well under a kilobyte.
MAX_REQUEST_BODY = 256 * 1024
# An event's body is parsed (json.loads) before it is checked: up to 256 KiB cost ~14 ms of the event loop per request
# (small numbers; fourth review, 5 Dec 2026). Only an admin's forms on the page's own route carry free text (the New
# experiment form's prompts, one per line, have no bound); every other event body (a rating, a vote, a choice of
# experiment, the public APIs' calls, /cancel, /reset) is well under a kilobyte
# (test_every_event_a_rater_sends_is_far_below_the_event_body_limit). Those are refused past MAX_EVENT_BODY, by
# Content-Length before anything is read, or by the bytes streamed in, before anything is parsed (_event_body_limit).
MAX_EVENT_BODY = 16 * 1024
# Gradio's routes that take files exist whatever the page holds; this app has no upload or recording component, and
# a file sent to them is left in a temporary folder that nothing cleans (a signed-in rater could fill the disk). They
# are not answered. Compared with the path the router sees (an ASGI root path taken off;
# GRADIO_ROOT_PATH itself is refused at start, app.cli_serve.root_path_refusal).
UPLOAD_PATHS = frozenset(f"/gradio_api/{name}{slash}" for name in ("upload", "upload_progress", "process_recording")
                         for slash in ("", "/"))
LOCAL_TOKEN_HEADER = "x-seiko-token"
LOCAL_TOKEN_BYTES = 24
# answered without the local token: Gradio's launch() calls it on its own server before anyone could hold the token
LOCAL_OPEN_PATHS = frozenset({"/gradio_api/startup-events"})


# A path a redirect may send back as its Location: one '/' and then only RFC 3986's path characters, no percent-escape.
SAME_SITE_PATH = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-][A-Za-z0-9._~!$&'()*+,;=:@/-]*)?")


def same_site_path(path: str) -> str:
    """``path`` when it can only mean a page of this site, else "/". Found by the twelfth review (6 Dec 2026): the local
    token's redirect sent the request's path back as its Location with leading slashes collapsed, but browsers read
    ``/\\host`` as ``//host`` (another site), drop tabs and line ends before reading, and a later hop may decode a
    percent-escape; so a path with a second leading slash, a backslash, a control character or a '%' is "/"."""
    return path if SAME_SITE_PATH.fullmatch(path) else "/"


def new_local_token() -> str:
    return secrets.token_urlsafe(LOCAL_TOKEN_BYTES)


# Headers a reverse proxy adds. Without accounts the app trusts the machine it runs on; a request a proxy passed on
# comes from somewhere else, so local mode refuses it (behind a proxy, run with accounts).
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "via")
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
# Headers Gradio reads for its page root (``root`` in /config, the address the page's client calls; found by the
# fourth review of 5 Dec 2026: ``X-Forwarded-Host: evil.example`` from anyone made it ``https://evil.example``).
# The server (uvicorn) has already taken the scheme and client address from a trusted proxy's X-Forwarded-Proto and
# -For (``trust_proxies``) when the guard runs, so none of them is passed on: the root is the request's own Host and
# scheme. X-Forwarded-Host is believed from nobody (a proxy passes the name in Host, as the guard's Host and Origin
# checks read it); X-Gradio-Server is Gradio's server-side rendering's, which this app does not use.
FORWARDING_HEADERS = frozenset((b"forwarded", b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-for",
                                b"x-real-ip", b"x-gradio-server"))


def without_forwarding(scope: Scope) -> Scope:
    """``scope`` without FORWARDING_HEADERS (itself when it has none)."""
    headers = scope.get("headers") or []
    if not any(k.lower() in FORWARDING_HEADERS for k, _ in headers):
        return scope
    return {**scope, "headers": [(k, v) for k, v in headers if k.lower() not in FORWARDING_HEADERS]}


def _sentence(text: str) -> str:
    text = text.strip()
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def split_host(value: str | None) -> tuple[str, int | None] | None:
    """A ``Host`` header as (lower-case host name, port or None); None when it is missing or malformed."""
    if not value or any(c in value for c in "/?#@ \t\\"):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    return (parts.hostname, port) if parts.hostname else None


def split_origin(value: str | None) -> tuple[str, str, int] | None:
    """An ``Origin`` header as (scheme, lower-case host, port with defaults filled in); None for 'null' or junk."""
    if not value:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path or parts.query or parts.fragment \
            or "@" in parts.netloc or value != value.strip():
        return None  # an origin is exactly scheme://host[:port]
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


@dataclass(frozen=True)
class GuardPolicy:
    """Which Host and Origin values are answered."""

    local_mode: bool  # no accounts: only localhost Host values
    public_origin: str | None = None  # Settings.public_url: the one other origin allowed
    # with accounts: the host names answered (IP addresses always are); None: any. A page on a DNS name the attacker
    # points at this server (DNS rebinding) sends its own name as Host and is refused, so it cannot reach the app
    # from a visitor's browser on the inside, nor guess passwords from there
    host_names: frozenset[str] | None = None

    def refusal(self, headers: Headers, scheme: str = "http") -> str | None:
        """Why a request with these headers is refused (one sentence), or None when it may pass. ``scheme``: the
        request's as the server saw it (``https`` when TLS ends here or a trusted proxy says so)."""
        host_header = headers.get("host")
        host = split_host(host_header)
        if self.local_mode and (host is None or not auth.is_loopback(host[0])):
            return (f"this app runs without user accounts and answers only when opened as localhost or 127.0.0.1, "
                    f"not as {host_header!r}")
        if not self.local_mode and self.host_names is not None and not self.host_answered(host):
            return (f"this app answers only at its own addresses, not as {str(host_header)[:200]!r}: open it by IP "
                    f"address, localhost or this machine's name, or add the name to SEIKO_ALLOWED_HOSTS")
        if self.local_mode and (proxied := next((h for h in PROXY_HEADERS if h in headers), None)):
            return (f"this app runs without user accounts and answers only direct connections from this machine, not "
                    f"a request passed on by a proxy (it carries {proxied!r}); behind a proxy, run it with accounts")
        origin = headers.get("origin")
        if origin is None or self.origin_allowed(origin, host, scheme):
            return None
        return f"requests from the origin {origin[:200]!r} are refused: open the app at its own address"

    def host_answered(self, host: tuple[str, int | None] | None) -> bool:
        if host is None:
            return False
        name = host[0].rstrip(".")
        try:
            ipaddress.ip_address(name.strip("[]"))
            return True  # an address literal: no name for anyone to point elsewhere
        except ValueError:
            return self.host_names is None or name in self.host_names

    def origin_allowed(self, origin: str, host: tuple[str, int | None] | None, request_scheme: str = "http") -> bool:
        parsed = split_origin(origin)
        if parsed is None:
            return False
        scheme, name, port = parsed
        public = split_origin(self.public_origin.rstrip("/")) if self.public_origin else None
        if public is not None and public == parsed:
            return True
        if scheme == "http" and (request_scheme in ("https", "wss") or (public and public[0] == "https" and public[1] == name)):
            return False  # a page served over plain HTTP (anyone on the path can write it) calling the app over TLS
        if host is None or host[0] != name:
            return False
        return host[1] == port or (host[1] is None and port == DEFAULT_PORTS[scheme])


FRAMING_HEADERS = ((b"x-frame-options", b"SAMEORIGIN"), (b"content-security-policy", b"frame-ancestors 'self'"))
# and on every answer (found by review): no guessing a type other than the one sent (an image or a text answered as
# a script), and no page address (an experiment's, an export's) sent to another site in a Referer
SAFETY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"same-origin"))
REPLACED_HEADERS = frozenset(k for k, _ in FRAMING_HEADERS[:1] + SAFETY_HEADERS)
# headers only a request carries: Gradio's file route (no longer answered) answered a Range request with the request's
# own headers, so its answer repeated the Cookie (the HttpOnly session token, readable by the page's script) and the
# local token (found by review); no answer of this app carries them
REQUEST_ONLY_HEADERS = frozenset((b"cookie", b"authorization", LOCAL_TOKEN_HEADER.encode(), b"x-forwarded-for",
                                  b"x-forwarded-host", b"x-forwarded-proto", b"x-real-ip", b"forwarded", b"range",
                                  b"if-range", b"if-none-match", b"if-modified-since"))


# the app's own code and styles, the same for everyone: cacheable; every other answer (the page, its config, event
# results, sign-in, images of the rounds) is one account's and is not kept by a browser or a proxy cache
CACHEABLE_PREFIXES = ("/assets/", "/static/", "/favicon", "/gradio_api/assets/", "/theme.css")


# sent when the configured public URL is https (``WebGuard.hsts``): a browser that opened the app over TLS once goes
# there over TLS for a year, even when a page or a typed address says http (a browser ignores it over plain http)
HSTS_HEADER = (b"strict-transport-security", b"max-age=31536000")


def _framing_send(send: Send, path: str = "", hsts: bool = False) -> Send:
    """``send`` with the framing and safety headers added to the response's start (an X-Frame-Options, a
    X-Content-Type-Options or a Referrer-Policy already there is replaced; a Content-Security-Policy already there is
    kept: a browser enforces every policy it is given), and ``Cache-Control: no-store`` unless ``path`` is the app's
    static code (the page, its config and the sign-in's answer had no cache header: a shared proxy could keep one
    account's page; found by review). A Cache-Control already there is replaced by it: Gradio's file route answers a
    Range request with the request's own headers, so a client's Cache-Control made a proxy keep that answer
    (found by review)."""
    cacheable = path.startswith(CACHEABLE_PREFIXES)

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            replaced = REPLACED_HEADERS | REQUEST_ONLY_HEADERS | (set() if cacheable else {b"cache-control"}) \
                | ({HSTS_HEADER[0]} if hsts else set())
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in replaced]
            extra = ([] if cacheable else [(b"cache-control", b"no-store")]) + ([HSTS_HEADER] if hsts else [])
            message = {**message, "headers": [*kept, *FRAMING_HEADERS, *SAFETY_HEADERS, *extra]}
        await send(message)

    return wrapped


# ui_assets.STREAMS_JS, first in the page's head: Gradio's client opens the page's heartbeat as it starts, before the
# scripts ``launch(head=...)`` gives run, so only a script in the page's own HTML sees it refused. Then LOGIN_JS: the
# login page (the same page, signed out) says a refused sign-in's sentence (eighteenth review, 7 Dec 2026)
PAGE_SCRIPT = (ui_assets.streams_head() + ui_assets.login_head()).encode()


def _queue_refusal_send(send: Send) -> Send:
    """``send`` for the page's event route (``/queue/join``) with ``ui_assets.NOT_RUN_HEADER`` added to a 503.

    Found by the tenth review of 6 Dec 2026: Gradio answers an event 503 when its queue is full (``queue(max_size=)``)
    or stopped (the server shutting down), both before the event is put in the queue, so nothing it asked was done;
    the page sent only events whose refusal said so again, and lost these (its toast, the rating gone). Gradio raises
    no other 503 there, nor does the guard (its refusals of an event are 400-429), so a 503 on this route, answered in
    this process and not by a proxy, is one that did not run: the page sends it again (STREAMS_JS)."""

    return _status_header_send(send, 503, {ui_assets.NOT_RUN_HEADER: b"1"})


def _status_header_send(send: Send, status: int, said: dict[str, bytes]) -> Send:
    """``send`` with each ``header: value`` of ``said`` on an answer of ``status`` (in place of any of that name); any
    other answer passes as it is."""
    added = [(header.lower().encode(), value) for header, value in said.items()]
    names = {name for name, _ in added}

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message.get("status") == status:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
            message = {**message, "headers": [*headers, *added]}
        await send(message)

    return wrapped


def _whole_body_send(send: Send, holds: Callable[[dict[str, Any]], bool],
                     finish: Callable[[dict[str, Any], bytes], Awaitable[tuple[dict[str, Any], bytes] | None]]) -> Send:
    """``send`` that holds an answer whose start message ``holds`` accepts until its whole body is in, then sends
    ``finish(start, body)``'s start and body (``_with_length`` gives a start the new body's Content-Length), or
    nothing where ``finish`` gives None (it answered itself). Any other answer passes as it is. The two answers rewritten whole,
    the page (``_page_script_send``) and a rater's config (``_rater_page_send``), are each one small body."""
    held: dict[str, Any] = {}

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if holds(message):
                held["start"], held["body"] = message, b""
                return
        elif message["type"] == "http.response.body" and "start" in held:
            held["body"] += message.get("body", b"")
            if message.get("more_body", False):
                return
            done = await finish(held.pop("start"), held.pop("body"))
            if done is None:
                return
            start, body = done
            await send(start)
            message = {**message, "body": body, "more_body": False}
        await send(message)

    return wrapped


def _with_length(start: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The answer's start message ``start`` with the Content-Length of ``body``."""
    headers = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    return {**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}


def _admin_said_send(send: Send, role_version: int) -> Send:
    """``send`` with ``ui_assets.NOT_ADMIN_HEADER: 0`` on a 200 answer: the page's event, joined for an account that
    is an admin now. STREAMS_JS then clears the page's not-an-admin flag, so an admin made one again gets the Admin
    tab's own events (its timer, a pick's refills) back at their page's next event, not only at the tab's select
    (the tab already selected, they had to click away and back; seventeenth review, 7 Dec 2026). With it
    ``ui_assets.ROLE_VERSION_HEADER``: ``role_version``, read with the role (the page keeps the newest one's role)."""
    return _status_header_send(send, 200, {ui_assets.ROLE_VERSION_HEADER: str(role_version).encode(),
                                           ui_assets.NOT_ADMIN_HEADER: b"0"})


def _page_script_send(send: Send) -> Send:
    """``send`` with PAGE_SCRIPT put right after the ``<head>`` of a 200 HTML answer (the page, Gradio's template, is
    one small body; its Content-Length follows). Any other answer passes as it is.

    Found by the eighth review of 5 Dec 2026: a heartbeat the connection caps (app.net_limits) refused showed nothing
    and was never opened again, and a refused stream of results made the page say its connection was lost and reload;
    Gradio's client reads both with the page's ``fetch``, which STREAMS_JS wraps before that client starts."""

    def holds(start: dict[str, Any]) -> bool:
        headers = Headers(raw=start.get("headers", []))
        return start.get("status") == 200 and headers.get("content-type", "").startswith("text/html") \
            and "content-encoding" not in headers

    async def finish(start: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes]:
        if b"<head>" not in body:
            return start, body
        # a HEAD's body too: its Content-Length must be the GET's (RFC 9110, 8.6)
        body = body.replace(b"<head>", b"<head>" + PAGE_SCRIPT, 1)
        return _with_length(start, body), body

    return _whole_body_send(send, holds, finish)


RATER_PAGE_FAILED = ("The page could not be prepared for your account (the server's log says why); an admin has "
                     "to look at it.")
# the routes whose answer is Gradio's page config (rater_page): the page itself and GET /config
CONFIG_PATHS = frozenset({"/", "/config", "/config/"})


def _rater_page_send(scope: Scope, receive: Receive, send: Send,
                     parts: Callable[[], tuple[frozenset[int], frozenset[int]]]) -> Send:
    """``send`` with a 200 answer of the request ``scope`` (a path of ``CONFIG_PATHS``: the page's HTML, or /config's
    JSON) trimmed to a rater's (``rater_page``: without ``parts()``, the Admin tab's components and events, found
    inside the refusal below, so that an odd config there is the same 500). Held whole (``_whole_body_send``). An
    answer that cannot be trimmed (compressed, or not shaped as Gradio's) is not passed on: a 500 with one sentence,
    and the reason in the log. Any other answer passes as it is."""
    path = get_route_path(scope)

    async def finish(start: dict[str, Any], body: bytes) -> tuple[dict[str, Any], bytes] | None:
        try:
            if "content-encoding" in Headers(raw=start.get("headers", [])):
                raise rater_page.PageConfigError("the answer was compressed")
            # in Starlette's thread pool, as Gradio renders the page: the JSON of a 180 KB config (25 ms on a
            # busy core, measured), which a rater reloading in a loop would otherwise take from the event loop
            trim = rater_page.rater_page if path == "/" else rater_page.rater_config_json
            body = await run_in_threadpool(trim, body, *parts())
            return _with_length(start, body), body
        except rater_page.PageConfigError as exc:
            log.error("a rater's page config (%s) was not served: %s", path, exc)
            await PlainTextResponse(RATER_PAGE_FAILED, status_code=500)(scope, receive, send)
            return None

    return _whole_body_send(send, lambda start: start.get("status") == 200, finish)


def lax_cookie(value: bytes, secure: bool = False) -> bytes:
    """A Set-Cookie value with SameSite=Lax (Strict is kept; None or no SameSite becomes Lax), and Secure when
    ``secure`` (the request showed HTTPS: ``WebGuard._https_shown``)."""
    parts = [p for p in value.decode("latin-1").split(";")]
    attrs = [p.strip().lower() for p in parts[1:]]
    strict = "samesite=strict" in attrs
    kept = [parts[0]] + [p for p, a in zip(parts[1:], attrs, strict=True) if not a.startswith("samesite")]
    flag = ["Secure"] if secure and "secure" not in attrs else []
    return "; ".join([kept[0].strip(), *(p.strip() for p in kept[1:]), *flag,
                      "SameSite=Strict" if strict else "SameSite=Lax"]).encode("latin-1")


class _EveryMinute:
    """Whether a log line about ``key`` is due (the first, then at most one a minute), counting the ones held back;
    remembers the newest 1024 keys."""

    def __init__(self, every_s: float = 60.0, keys: int = 1024) -> None:
        self.every_s, self.keys = every_s, keys
        self._last: OrderedDict[Any, tuple[float, int]] = OrderedDict()

    def due(self, key: Any) -> bool:
        now = time.monotonic()
        last, held = self._last.pop(key, (None, 0))
        if last is not None and now - last < self.every_s:
            self._last[key] = (last, held + 1)
            return False
        self._last[key] = (now, held + 1)
        while len(self._last) > self.keys:
            self._last.popitem(last=False)
        return True

    def count(self, key: Any) -> int:
        """How many calls of ``due(key)`` the due line stands for (itself and those held back); then starts again."""
        last, held = self._last.get(key, (None, 0))
        if last is not None:
            self._last[key] = (last, 0)
        return held


@dataclass
class GuardStats:
    """What the guard did, for tests and the login-flood measurement."""

    refused: int = 0
    logins: dict[str, int] = field(default_factory=lambda: {"ok": 0, "wrong": 0, "refused": 0, "throttled": 0, "busy": 0})


class WebGuard:
    """The ASGI layer described in the module docstring, wrapped around ``inner`` (the Gradio app's middleware stack)."""

    def __init__(
        self,
        inner: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        gradio_app: Any,
        policy: GuardPolicy,
        factory: Any = None,
        sessions: SessionStore | None = None,
        throttle: LoginThrottle | None = None,
        secure_cookies: bool = False,
        hash_workers: int = 1,
        max_pending: int = 4,
        local_token: str | None = None,
        proxies_trusted: bool = True,
    ) -> None:
        if (sessions is None) != policy.local_mode:
            raise ValueError("a session store is needed with accounts, and only then")
        if (local_token is None) == policy.local_mode:
            raise ValueError("a local token is needed in local mode, and only then")
        self.local_token = local_token
        self._admin_parts_found: tuple[frozenset[int], frozenset[int]] | None = None  # _admin_parts
        # with no proxy trusted (the default), the first X-Forwarded-For is logged once: a set-up behind a reverse proxy
        # that never named it sees every person as the proxy, one sign-in limit for all (found by review)
        self._proxy_unheard = not proxies_trusted
        self.inner, self.gradio_app, self.policy = inner, gradio_app, policy
        self.factory, self.sessions, self.throttle = factory, sessions, throttle or LoginThrottle()
        self.secure_cookies, self.max_pending = secure_cookies, max_pending
        # HTTPS known from the configuration (SEIKO_PUBLIC_URL https): every answer says Strict-Transport-Security
        self.hsts = bool(policy.public_origin and policy.public_origin.lower().startswith("https://"))
        self.hash_pool = ThreadPoolExecutor(max_workers=hash_workers, thread_name_prefix="seiko-login",
                                            initializer=_lower_thread_priority)
        self.db_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="seiko-session")
        self.pending = 0  # sign-ins hashing or waiting to (touched only on the event loop)
        self._checking: dict[str, asyncio.Event] = {}  # account -> its sign-in being checked, set when it ends
        self._waiting: dict[str, int] = {}  # account -> its sign-ins waiting for that one (event loop only)
        self._signed_in: dict[str, list[float]] = {}  # account -> its successful sign-ins' times in the window
        self.stats = GuardStats()
        self._throttle_log = _EveryMinute()
        # Gradio session hash -> the account that first used it; a queued event's id -> the account whose request made
        # it (a curl-style call's session is named by its event id). Gradio's state of a forgotten one is dropped.
        # A page's session is pinned while its heartbeat is open, an event while it waits or runs (found by review: a
        # script's sessions pushed out the page of the same account, whose next rating was lost).
        self.heartbeats: dict[str, int] = {}  # session hash -> open heartbeat streams (touched only on the event loop)
        self.open_streams: dict[str, int] = {}  # account -> its open heartbeats and result streams (event loop only)
        # session -> its open stream of results (``_one_stream``; event loop only)
        self.streams: dict[str, _Stream] = {}
        self._admitting: dict[str, int] = {}  # account -> its event-making requests not yet answered (event loop only)
        self._admitting_fn: dict[tuple[str, int | None], int] = {}  # (account, fn id) -> the same, of that function
        self.session_owners = gradio_routes.Owners(gradio_routes.SESSIONS_PER_ACCOUNT, on_forget=self._drop_state,
                                                   pinned=self.heartbeats.__contains__)
        self.event_owners = gradio_routes.Owners(gradio_routes.EVENTS_PER_ACCOUNT, on_forget=self._forget_event,
                                                 pinned=self._event_running)
        # an event made by ``POST /gradio_api/call/{api}`` -> that api: its results are read under that name only
        # (an entry goes when its account forgets the event)
        self.event_apis: dict[str, str] = {}
        self._swept_at = time.monotonic()

    def _blocks(self) -> Any:
        return self.gradio_app.get_blocks() if hasattr(self.gradio_app, "get_blocks") else None

    def _fns(self) -> dict[int, Any] | None:
        """The Blocks' event functions by id (``gradio_routes.event_target_refusal``), None before it is built."""
        fns = getattr(self._blocks(), "fns", None)
        return fns if isinstance(fns, dict) else None

    def _queue(self) -> Any:
        return getattr(self._blocks(), "_queue", None)

    def _event_running(self, event: str) -> bool:
        queue = self._queue()
        return queue is not None and event in queue.event_ids_to_events

    def _forget_event(self, event: str) -> None:
        self.event_apis.pop(event, None)
        self._drop_state(event)  # a curl-style call's session is named by its event id

    def _results_waiting(self, session: str | None) -> bool:
        """Whether ``session`` has a stream of results Gradio would serve (``gradio_routes.has_results_stream``; True
        before the queue exists). Not whether an event is unread: the page opens its stream as it joins an event, so
        the stream can arrive before the join is queued, and refusing it then left the page waiting for ever (a
        browser test failed 1 run in 7 so)."""
        queue = self._queue()
        return queue is None or gradio_routes.has_results_stream(queue, session)

    def _event_waiting(self, event: str) -> bool:
        """Whether the results of event ``event`` are waiting to be read (its session's, as Gradio finds it)."""
        queue = self._queue()
        return queue is None or gradio_routes.waiting(queue, gradio_routes.session_of_event(queue, event))

    def _drop_state(self, key: str) -> None:
        holder = getattr(self.gradio_app, "state_holder", None)
        if holder is not None:
            # a session whose stream is open keeps its messages: Gradio's stream raised a 404 inside itself when they
            # went, a traceback in the log (found while fixing the two streams of one session, 5 Dec 2026)
            gradio_routes.drop_session_state(holder, key, None if key in self.streams else self._queue())

    def _sweep(self) -> None:
        """At most every SWEEP_EVERY_S: drop the state of sessions no account holds (``gradio_routes.sweep_unowned``)."""
        holder = getattr(self.gradio_app, "state_holder", None)
        if holder is None or time.monotonic() - self._swept_at < gradio_routes.SWEEP_EVERY_S:
            return
        self._swept_at = time.monotonic()
        dropped = gradio_routes.sweep_unowned(
            holder, lambda k: k in self.streams or self.session_owners.owner(k) is not None
            or self.event_owners.owner(k) is not None,
            queue=self._queue())
        if dropped:
            log.info("dropped the in-memory state of %d session(s) no account holds", dropped)

    def close(self) -> None:
        self.hash_pool.shutdown(wait=False, cancel_futures=True)
        self.db_pool.shutdown(wait=False, cancel_futures=True)

    # -- the request ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.inner(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self._proxy_unheard and not self.policy.local_mode and "x-forwarded-for" in headers:
            self._proxy_unheard = False
            client = scope.get("client")
            log.warning("a request from %s carried X-Forwarded-For, which is not believed: no proxy is trusted "
                        "(SEIKO_TRUSTED_PROXIES). Behind a reverse proxy, set it to the proxy's address, or every person "
                        "seems to come from the proxy and they share its sign-in limit (logged once)",
                        client[0] if client else "an unknown address")
        if scope["type"] == "http":
            send = _framing_send(send, get_route_path(scope), self.hsts)
        scheme = self._scheme(scope, headers)
        refusal = self.policy.refusal(headers, scheme)
        if refusal is not None:
            await self._refuse(scope, receive, send, _sentence(refusal), 403)
            return
        scope = without_forwarding(scope)
        path, method = get_route_path(scope), scope.get("method")
        if scope["type"] == "http" and method == "POST" and gradio_routes.is_page_join(path):
            send = _queue_refusal_send(send)
        # every cookie this answer sets is Secure when the request shows HTTPS, whoever set it (Gradio or the guard)
        secure = self._https_shown(headers, scheme)
        if self.local_token is not None and (gate := self._local_gate(scope, headers, path, method)) is not None:
            if isinstance(gate, str):
                await self._refuse(scope, receive, send, gate, 401)
            else:
                await self._lax(gate, secure)(scope, receive, send)
            return
        if scope["type"] == "http":
            if path in UPLOAD_PATHS or gradio_routes.unused(path):
                self.stats.refused += 1
                text = "This app takes no file uploads." if path in UPLOAD_PATHS else "Not found."
                await PlainTextResponse(text, status_code=404)(scope, receive, send)
                return
            checked = await self._bounded_body(headers, receive)
            if isinstance(checked, tuple):
                await self._refuse(scope, receive, send, *checked)
                return
            receive = checked
        if (why := gradio_routes.query_refusal(scope.get("query_string", b""))) is not None:
            await self._refuse(scope, receive, send, why, 400)
            return
        if (why := gradio_routes.page_refusal(path, method, scope.get("query_string", b""),
                                              (getattr(self._blocks(), "config", None) or {}).get("page"))) is not None:
            await self._refuse(scope, receive, send, why, 404)
            return
        parsed: Any = None
        signed_in: SessionInfo | None = None
        session_checked = False  # signed_in found already (an event post, with accounts)
        if scope["type"] == "http" and gradio_routes.is_event_post(path, method):
            if self.sessions is not None:
                # the sign-in before the body (found by review): an event body from nobody was read, parsed and walked
                # first, ~220 ms of the event loop per 256 KiB of small values, and 8 such clients slowed a signed-in
                # rater's next batch from 0.36 s to 9 s; Gradio answers nobody's event 401 whatever it carries
                signed_in, session_checked = await self._check_session(headers, secure), True
                if signed_in is None:
                    if gradio_routes.is_page_join(path):  # the page's route: its one-sentence detail (_refuse)
                        await self._refuse(scope, receive, send, SIGNED_OUT, 401)
                    else:
                        self.stats.refused += 1
                        await self._not_authenticated()(scope, receive, send)
                    return
            read = await self._event_body(headers, receive, self._event_body_limit(path, signed_in))
            if isinstance(read, tuple):
                await self._refuse(scope, receive, send, *read)
                return
            why, parsed = gradio_routes.body_refusal(read)
            if why is not None:
                await self._refuse(scope, receive, send, why, 400)
                return
            receive = self._replay(read, receive)
        if scope["type"] == "http" and path in LOGIN_PATHS and method == "POST" and not self.policy.local_mode:
            response = await self._login(scope, receive, secure, headers)
            await self._lax(response, secure)(scope, receive, send)
            return
        if scope["type"] == "http" and path in LOGOUT_PATHS:
            response = await self._logout(scope, headers)
            await self._lax(response, secure)(scope, receive, send)
            return
        if self.sessions is not None:  # Gradio (and the export route) see the session the guard decided on, only it
            scope = self._inner_cookies(scope, self._tokens(headers, secure))
        try:  # one hash (a query naming two is refused), of the shape Gradio's clients make
            named = gradio_routes.session_hash_of(path, scope.get("query_string", b""), parsed)
        except ValueError as exc:
            await self._refuse(scope, receive, send, str(exc), 400)
            return
        read = gradio_routes.call_read_of(path, method)  # (api, event id) of GET /gradio_api/call/{api}/{event id}
        # a heartbeat or a stream of results opened by another site's page (an <img> there sends the Lax cookie) is
        # refused before its session hash is claimed, as the export download is (ui_export.other_site): it let any
        # site a signed-in person visits claim session hashes for them and hold streams open (sixth review)
        if self._stream_route(path, method, named, read) and ui_export.other_site(headers):
            await self._refuse(scope, receive, send, OTHER_SITE_STREAM, 403)
            return
        if self.sessions is not None:
            if not session_checked:
                signed_in = await self._check_session(headers, secure)
            user = signed_in.name if signed_in is not None else None
            # a curl-style call's session is named by its event id: another account may not name it (found by review)
            if named is not None and user is not None and self.event_owners.owner(named) not in (None, user):
                await self._refuse(scope, receive, send, "This session of the app belongs to another account.", 403)
                return
            # a session's stream only where the account owns it and Gradio holds messages for it (Gradio raised a 404
            # inside the stream it had started: a traceback in the log per request; found by review); not claimed here
            if named is not None and user is not None and gradio_routes.reads_session(path, method) \
                    and self.session_owners.owner(named) in (None, user) and not (
                        user in (self.session_owners.owner(named), self.event_owners.owner(named))
                        and self._results_waiting(named)):
                await self._refuse(scope, receive, send, gradio_routes.NOT_WAITING, 404)
                return
            if named is not None and (why := self.session_owners.refusal(named, user)) is not None:
                await self._refuse(scope, receive, send, why, 401 if user is None else 403)
                return
            # /cancel removes the event its body names from Gradio's queue whatever its owner, and asks for no
            # sign-in: only one's own, signed in (a review)
            if path.rstrip("/") == f"{gradio_routes.API}/cancel" and method == "POST" and (
                    user is None or not isinstance(parsed, dict) or not isinstance(parsed.get("event_id"), str)
                    or self.event_owners.owner(parsed["event_id"]) != user):
                await self._refuse(scope, receive, send, "There is no event of yours with that id to cancel.",
                                   401 if user is None else 404)
                return
            # an event that is not the app's, signed in (signed out, Gradio's own sign-in check answers 401 first)
            if signed_in is not None and (refused := self._event_refusal(path, method, parsed, signed_in)) is not None:
                why, status, not_admin = refused  # said to the page when the account is not an admin (NOT_ADMIN_HEADER)
                await self._refuse(scope, receive, send, why, status,
                                   not_admin_version=signed_in.role_version if not_admin else None)
                return
            event = gradio_routes.event_of(path, method)
            if event is not None and user is None:
                await self._refuse(scope, receive, send, "Sign in first: this request names an event of the app.", 401)
                return
            if event is not None and self.event_owners.owner(event) != user:
                await self._refuse(scope, receive, send, "There is no event of yours with that id.", 404)
                return
            if read is not None and self.event_apis.get(read[1]) != read[0]:
                await self._refuse(scope, receive, send, "That event was not made by that API; read it under the name "
                                   "it was made with.", 404)
                return
            if read is not None and not self._event_waiting(read[1]):
                await self._refuse(scope, receive, send, gradio_routes.NOT_WAITING, 404)
                return
            if user is not None and (named is not None or gradio_routes.makes_event(path, method)):
                self._sweep()
            if user is not None and named is not None and path.startswith(gradio_routes.HEARTBEAT) and method == "GET":
                await self._while_beating(named, user, scope, receive, self._lax_send(send, secure),
                                          headers=headers, secure=secure)
                return
            if user is not None and gradio_routes.makes_event(path, method):
                block_fn = gradio_routes.event_function(path, parsed, self._fns())
                send = self._lax_send(send, secure)
                if signed_in.role == "admin" and gradio_routes.is_page_join(path):
                    # the page's flag cleared: an admin again (NOT_ADMIN_HEADER)
                    send = _admin_said_send(send, signed_in.role_version)
                await self._make_event(user, scope, receive, send, getattr(block_fn, "_id", None))
                return
        else:  # local mode: past its token
            if (refused := self._event_refusal(path, method, parsed)) is not None:
                await self._refuse(scope, receive, send, *refused[:2])
                return
            if (named is not None and gradio_routes.reads_session(path, method) and not self._results_waiting(named)) \
                    or (read is not None and not self._event_waiting(read[1])):
                await self._refuse(scope, receive, send, gradio_routes.NOT_WAITING, 404)
                return
        if (stream := self._streamed_session(path, method, named, read)) is not None:
            await self._one_stream(stream, signed_in.name if signed_in is not None else None, scope, receive,
                                   self._lax_send(send, secure))
            return
        send = self._lax_send(send, secure)
        # the page: its streams' refusals (STREAMS_JS); a HEAD of it too, so that its Content-Length is the GET's
        if scope["type"] == "http" and path == "/" and method in ("GET", "HEAD"):
            send = _page_script_send(send)
        # a rater's page and /config: Gradio's config without the Admin tab's components and events (rater_page)
        if scope["type"] == "http" and path in CONFIG_PATHS and method in ("GET", "HEAD") and signed_in is not None \
                and signed_in.role != "admin":
            send = _rater_page_send(scope, receive, send, self._admin_parts)
        await self.inner(scope, receive, send)

    def _admin_parts(self) -> tuple[frozenset[int], frozenset[int]]:
        """What a rater's page config leaves out (``rater_page.admin_parts``), found once: the Blocks do not change
        while they are served."""
        if self._admin_parts_found is None:
            self._admin_parts_found = rater_page.admin_parts(self._blocks())
        return self._admin_parts_found

    def _event_refusal(self, path: str, method: str | None, parsed: Any,
                       signed_in: SessionInfo | None = None) -> tuple[str, int, bool] | None:
        """(sentence, status, whether the account is not an admin) refusing an event post, or None: an fn_index or API name the app does not have (404:
        it raised in Gradio, a 500 and a traceback per request, and a private handler was callable by name), an
        admin's event (``gradio_routes.admin_only``) for ``signed_in`` when they are not an admin (403, the handlers'
        own sentence; local mode's one user is the admin), or inputs its function cannot take (400:
        ``gradio_routes.event_inputs_refusal``, against the session's components as its events changed them)."""
        if not gradio_routes.is_event_post(path, method):  # a POST of an event's body
            return None
        fns = self._fns()
        if (why := gradio_routes.event_target_refusal(path, parsed, fns)) is not None:
            return why, 404, False
        block_fn = gradio_routes.event_function(path, parsed, fns)
        if signed_in is not None and block_fn is not None and gradio_routes.is_admin_only(block_fn.fn):
            try:
                auth.require_admin(auth.Who(signed_in.rater_id, signed_in.name, signed_in.role, local=False))
            except auth.AuthError as e:
                return _sentence(str(e)), 403, True  # only this refusal sets the page's flag (QUIET_ADMIN_JS)
        session = parsed.get("session_hash") if isinstance(parsed, dict) else None
        blocks = gradio_routes.session_blocks(getattr(self.gradio_app, "state_holder", None), session)
        if (why := gradio_routes.event_inputs_refusal(path, parsed, fns, blocks)) is not None:
            return why, 400, False
        return None

    async def _make_event(self, user: str, scope: Scope, receive: Receive, send: Send, fn_id: int | None = None) -> None:
        """Pass on a request that makes an event (``gradio_routes.makes_event``): refused (429) when the account has
        EVENTS_IN_FLIGHT events waiting, running or unread, those admitted and not yet answered counted too (requests
        sent at once all saw a low count: found by review), or EVENTS_PER_HANDLER events of the Blocks function
        ``fn_id`` waiting or running (admitted ones counted too: one account's page loads in flight held every other
        account's behind them; the sixth review of 5 Dec 2026); else the answer's event id is bound to ``user``. The
        refusal is JSON on the page's own route, as every refusal there (``_refuse``): it was plain text, which the
        page's Gradio client showed as a JSON parse error (found by review, 5 Dec 2026)."""
        queue = self._queue()
        waiting = self._admitting.get(user, 0) + (
            0 if queue is None else gradio_routes.outstanding(user, queue, self.session_owners, self.event_owners))
        if waiting >= gradio_routes.EVENTS_IN_FLIGHT:
            await self._refuse(scope, receive, send, f"You have {gradio_routes.EVENTS_IN_FLIGHT} requests waiting for "
                               "an answer or unread; read their answers before sending more.", 429, not_run=True)
            return
        mine = (user, fn_id)
        if fn_id is not None and self._admitting_fn.get(mine, 0) + (0 if queue is None else gradio_routes.running_of(
                user, queue, fn_id, self.session_owners, self.event_owners)) >= gradio_routes.EVENTS_PER_HANDLER:
            await self._refuse(scope, receive, send, gradio_routes.too_many_of_one_event(), 429, not_run=True)
            return
        self._admitting[user] = self._admitting.get(user, 0) + 1  # no await since the count: one request at a time
        self._admitting_fn[mine] = self._admitting_fn.get(mine, 0) + 1
        try:
            # asked for uncompressed, so the answer's event id can be read as it passes
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]}
            api = gradio_routes.call_api_of(get_route_path(scope), scope.get("method"))
            await self.inner(scope, receive, self._event_recording_send(send, user, api))
        finally:
            self._admitting[user] -= 1
            if not self._admitting[user]:
                del self._admitting[user]
            self._admitting_fn[mine] -= 1
            if not self._admitting_fn[mine]:
                del self._admitting_fn[mine]

    async def _while_beating(self, session: str, user: str, scope: Scope, receive: Receive, send: Send, *,
                             headers: Headers, secure: bool) -> None:
        """Pass a page's heartbeat on, the session pinned (``Owners``) while the stream is open; refused (429) when
        ``user`` has STREAMS_PER_ACCOUNT streams open.

        The stream ends (as if the page had gone) within HEARTBEAT_RECHECK_S of the sign-in session it was opened with
        ending: a heartbeat opened before a log out (or a password change, or the account being disabled) kept
        answering for as long as the page stayed open, the Gradio session pinned and one of the account's streams
        held, though every new request with that cookie was refused (found by the seventh review)."""
        if self._streams_full(user):
            await self._refuse(scope, receive, send, TOO_MANY_STREAMS.format(n=STREAMS_PER_ACCOUNT), 429)
            return
        self.heartbeats[session] = self.heartbeats.get(session, 0) + 1
        self._stream_opened(user)
        answer = {"started": False, "complete": False, "ended": False, "unchecked": False}

        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer["started"] = True
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                answer["complete"] = True
            await send(message)

        async def while_signed_in() -> Message:
            """The client's next message, or a disconnect once the session the stream was opened with has ended."""
            pending = asyncio.ensure_future(receive())
            try:
                while True:
                    done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_RECHECK_S)
                    if done:
                        return pending.result()
                    try:  # an answer up to one interval old will do: the page's other stream checked it meanwhile
                        info = await self._check_session(headers, secure, max_age_s=HEARTBEAT_RECHECK_S)
                    except Exception as e:  # logged; the stream stays open and is checked next time
                        # the database out for a moment (a restart, a fail-over) ended every open page's heartbeat,
                        # and Gradio then dropped the page's queued events (found by review): only a definite
                        # answer (no such session, or another account's) ends the stream
                        if not answer["unchecked"]:
                            log.warning("could not check the sign-in session of an open heartbeat (%s: %s); it stays "
                                        "open and is checked again in %g s", type(e).__name__, e, HEARTBEAT_RECHECK_S)
                        answer["unchecked"] = True
                        continue
                    answer["unchecked"] = False
                    if info is None or info.name != user:
                        answer["ended"] = True
                        return {"type": "http.disconnect"}
            finally:
                if not pending.done():
                    pending.cancel()

        try:
            await self.inner(scope, while_signed_in, noting)
            if answer["ended"] and answer["started"] and not answer["complete"]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})  # ended, not broken off
        finally:
            self._stream_closed(user)
            self.heartbeats[session] -= 1
            if not self.heartbeats[session]:
                del self.heartbeats[session]

    @staticmethod
    def _stream_route(path: str, method: str | None, named: str | None, read: tuple[str, str] | None) -> bool:
        """Whether the request opens a heartbeat or a stream of results (``GET /heartbeat/H``, ``/queue/data``,
        ``/call/{api}/{event id}``)."""
        return method == "GET" and (path.startswith(gradio_routes.HEARTBEAT) or read is not None
                                    or (named is not None and gradio_routes.reads_session(path, method)))

    def _streams_full(self, user: str | None) -> bool:
        return user is not None and self.open_streams.get(user, 0) >= STREAMS_PER_ACCOUNT

    def _stream_opened(self, user: str | None) -> None:
        if user is not None:
            self.open_streams[user] = self.open_streams.get(user, 0) + 1

    def _stream_closed(self, user: str | None) -> None:
        if user is not None:
            left = self.open_streams.get(user, 0) - 1
            if left > 0:
                self.open_streams[user] = left
            else:
                self.open_streams.pop(user, None)

    def _streamed_session(self, path: str, method: str | None, named: str | None,
                          read: tuple[str, str] | None) -> str | None:
        """The session whose results the request streams (``GET /queue/data`` names it; ``GET /call/{api}/{event}``
        reads its event's session, as Gradio finds it), or None."""
        if named is not None and gradio_routes.reads_session(path, method):
            return named
        if read is None:
            return None
        queue = self._queue()
        return (gradio_routes.session_of_event(queue, read[1]) if queue is not None else None) or read[1]

    async def _one_stream(self, session: str, user: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass on a stream of ``session``'s results, one at a time per session (found by the fourth review of 5 Dec
        2026): with two open, the one a client dropped made Gradio delete the session's messages, and the other,
        already answering 200, raised a 404 inside itself, a 78-line traceback each time.

        A second request for the stream the session has open (the same route, the same account) takes it over (found
        by the fifth review of 5 Dec 2026): a connection that died unnoticed (a laptop that slept, a dropped Wi-Fi)
        held the stream, so the page's own new stream got 409 until it was reloaded. Gradio's stream goes on, one per
        session, and is passed on to the newest connection (``_Stream``); the older one's answer is ended, and it gets
        nothing more. Gradio sees no disconnect, so the session keeps its messages and its events (Gradio drops both
        when a stream's client leaves). Any other request for an open stream (one that has not answered yet, or is
        ending) waits up to STREAM_WAIT_S for it to end (a page opens its next stream as the last one closes), then
        gets 409 with one sentence; one whose session lost its messages meanwhile gets the 404 sentence before
        Gradio. An account holds at most STREAMS_PER_ACCOUNT streams and heartbeats open (429 past it; a take-over
        passes)."""
        path, method = get_route_path(scope), scope.get("method")
        live = self.streams.get(session)
        # an account past STREAMS_PER_ACCOUNT open is refused (429), but for a take-over: the stream it takes ends
        if (live is None or not live.movable(path, method, user)) and self._streams_full(user):
            if gradio_routes.reads_session(path, method):  # the page's own stream: an error it shows (_page_stream_error)
                self.stats.refused += 1
                await _page_stream_error(TOO_MANY_STREAMS.format(n=STREAMS_PER_ACCOUNT))(scope, receive, send)
            else:
                await self._refuse(scope, receive, send, TOO_MANY_STREAMS.format(n=STREAMS_PER_ACCOUNT), 429)
            return
        self._stream_opened(user)
        try:
            await self._one_stream_opened(session, user, scope, receive, send)
        finally:
            self._stream_closed(user)

    async def _one_stream_opened(self, session: str, user: str | None, scope: Scope, receive: Receive,
                                 send: Send) -> None:
        path, method = get_route_path(scope), scope.get("method")
        deadline = time.monotonic() + STREAM_WAIT_S
        while (live := self.streams.get(session)) is not None:
            if live.movable(path, method, user):
                await live.take_over(_Reader(send), receive)
                return
            if time.monotonic() >= deadline:
                await self._refuse(scope, receive, send, ONE_STREAM, 409)
                return
            await asyncio.sleep(STREAM_POLL_S)
        if not self._results_waiting(session):
            await self._refuse(scope, receive, send, gradio_routes.NOT_WAITING, 404)
            return
        stream, reader = _Stream(path, method, user), _Reader(send)
        self.streams[session] = stream
        stream.begin(self.inner, scope, reader)

        def ended(_: Any) -> None:  # the session's stream is open until Gradio's ends, whichever connection holds it
            if self.streams.get(session) is stream:
                del self.streams[session]

        assert stream.task is not None
        stream.task.add_done_callback(ended)
        await stream.follow(reader, receive)

    def _event_recording_send(self, send: Send, user: str, api: str | None = None) -> Send:
        """A ``send`` that binds the event id in a successful answer (``{"event_id": ...}``) to ``user``, so that only
        they may read its results (``GET /gradio_api/call/{api}/{event id}``), and records ``api`` (the name of a
        ``POST /gradio_api/call/{api}``), the one its results are read under."""
        state: dict[str, Any] = {"status": 0, "body": b""}

        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message.get("status", 0)
            elif message["type"] == "http.response.body" and state["status"] == 200 and len(state["body"]) < 4096:
                state["body"] += message.get("body", b"")
                if not message.get("more_body", False) and (event := gradio_routes.event_id_in(state["body"])):
                    if self.event_owners.claim(event, user) and api:
                        self.event_apis[event] = api
            await send(message)

        return wrapped

    def _not_authenticated(self) -> Response:
        """Gradio's own answer to a request of a route that needs a sign-in, made by nobody (its ``login_check``)."""
        message = getattr(self._blocks(), "auth_message", None)
        return JSONResponse({"detail": {"error": "Not authenticated", "auth_message": message}}, status_code=401)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, why: str, status: int, *,
                      not_run: bool = False, not_admin_version: int | None = None) -> None:
        """Answer with ``why`` (one sentence): as the body with ``status`` over HTTP, as the close reason (1008) of a
        websocket. On the page's own event route (``gradio_routes.is_page_join``), whatever refused the request, the
        body is ``{"detail": why}`` (JSON): the page's Gradio client reads every answer there as JSON and shows
        ``detail`` in its error toast; a plain sentence showed as "Could not parse server response: SyntaxError ..."
        (found by the second review of 5 Dec 2026 for a refused event, and by the third for the 403 of a session hash
        another account holds, a tab left open after signing in as someone else, an unreadable body and a bad session
        hash: the route now decides, not each refusal). Elsewhere (``POST /call/{api}``, curl's and scripts' route)
        the sentence is plain text. ``not_run``: the request was refused before it reached the app, so nothing it asked
        was done: the answer says so (``ui_assets.NOT_RUN_HEADER``), and the page sends the event again later.
        ``not_admin_version``: an admin's event refused to an account that is not an admin, its role version (read
        with the role) given; the answer says so (``ui_assets.NOT_ADMIN_HEADER``, and the version as
        ``ui_assets.ROLE_VERSION_HEADER``), and the page sends the Admin tab's events it fires by itself no more."""
        self.stats.refused += 1
        headers = {name: "1" for name, said in ((ui_assets.NOT_RUN_HEADER, not_run),
                                                  (ui_assets.NOT_ADMIN_HEADER, not_admin_version is not None)) if said}
        if not_admin_version is not None:
            headers[ui_assets.ROLE_VERSION_HEADER] = str(not_admin_version)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": why[:120]})
        elif gradio_routes.is_page_join(get_route_path(scope)):
            await JSONResponse({"detail": why}, status_code=status, headers=headers)(scope, receive, send)
        else:
            await PlainTextResponse(why, status_code=status, headers=headers)(scope, receive, send)

    # -- local mode's token -----------------------------------------------------------------------

    def _local_cookie(self) -> str:
        return f"seiko-local-{self.gradio_app.cookie_id}"

    def _is_local_token(self, value: str | None) -> bool:
        assert self.local_token is not None
        return bool(value) and secrets.compare_digest(value.encode("utf-8", "surrogatepass"), self.local_token.encode())

    def _local_gate(self, scope: Scope, headers: Headers, path: str, method: str | None) -> Response | str | None:
        """None: the request shows local mode's token (or needs none); a response to send instead (the redirect that
        sets the cookie); or why it is refused (one sentence)."""
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        offered = query.get("token", [])
        # the printed address is always answered with the redirect, cookie or not: the secret leaves the address bar
        if scope["type"] == "http" and method in ("GET", "HEAD") and len(offered) == 1 and self._is_local_token(offered[0]):
            rest = urlencode([(k, v) for k, values in query.items() if k != "token" for v in values])
            # the same address without the token (out of the address bar and the history), on this site whatever
            # the path (same_site_path)
            location = same_site_path(scope.get("path", "/")) + (f"?{rest}" if rest else "")
            response = RedirectResponse(location, status_code=303)
            response.set_cookie(self._local_cookie(), offered[0], httponly=True, samesite="lax", path="/",
                                secure=scope.get("scheme") == "https")
            return response
        if self._is_local_token(headers.get(LOCAL_TOKEN_HEADER)) \
                or self._is_local_token(cookie_parser(headers.get("cookie", "")).get(self._local_cookie())):
            return None
        if scope["type"] == "http" and method == "GET" and path in LOCAL_OPEN_PATHS:
            return None
        return ("This app runs without user accounts, so it answers only the browser that opened the address it "
                "printed when it started (ending in /?token=...); open that address, or send the token in the "
                "X-Seiko-Token header.")

    # -- cookies -------------------------------------------------------------------------------

    # Over HTTPS the session and device cookies are named ``__Host-...`` (fourth review, 5 Dec 2026): a browser keeps
    # such a cookie only when it is Secure, has Path=/ and no Domain, and was set over HTTPS by this very host, so
    # neither a sibling subdomain (a Domain=.example.org cookie) nor anyone on a plain-http path can set or shadow it.
    # Without that prefix a page on another subdomain could plant its own account's session under the name Gradio
    # reads, signing the visitor in as that account (their ratings going to it). Over plain http the names stay as
    # they were (a browser refuses a __Host- cookie without Secure, and keeps no Secure one from http but localhost).
    # An old name presented over HTTPS is not read: a browser signed in before the change signs in again (the sign-in
    # page's sentence), as it would after a restart's lost device or an expired session; reading it meanwhile would
    # keep open the very way in the prefix closes, for as long as any old name is honoured.

    def _device_cookie(self, secure: bool = False) -> str:
        return f"{HOST_PREFIX if secure else ''}seiko-device-{self.gradio_app.cookie_id}"

    def _cookie_names(self) -> tuple[str, str]:
        """Gradio's own session cookie names (Gradio reads them): the one always Secure, the plain one; used over plain
        http only, and always inside (``_inner_cookies``)."""
        cookie_id = self.gradio_app.cookie_id
        return f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"

    def _host_cookie(self) -> str:
        """The session cookie's name over HTTPS."""
        return f"{HOST_PREFIX}access-token-{self.gradio_app.cookie_id}"

    def _tokens(self, headers: Headers, secure: bool) -> list[str]:
        """The session tokens this request presents, the one Gradio's handlers run as first: the ``__Host-`` cookie's
        alone where it has one (a browser sends it only to the host that set it over HTTPS); else none when the request
        shows HTTPS (``secure``: an old or planted name is not read there); else Gradio's two names, as over http."""
        cookies = cookie_parser(headers.get("cookie", ""))
        if token := cookies.get(self._host_cookie()):
            return [token]
        if secure:
            return []
        return list(dict.fromkeys(t for name in self._cookie_names() if (t := cookies.get(name))))

    def _presented(self, headers: Headers) -> list[str]:
        """Every session token the request carries, under any name: what a log out or a new sign-in in this browser
        ends."""
        cookies = cookie_parser(headers.get("cookie", ""))
        names = (self._host_cookie(), *self._cookie_names())
        return list(dict.fromkeys(t for name in names if (t := cookies.get(name))))

    def _device(self, headers: Headers, secure: bool) -> str | None:
        """The browser's device token (``sessions.LoginThrottle``), read as ``_tokens`` reads the session's."""
        cookies = cookie_parser(headers.get("cookie", ""))
        device = cookies.get(self._device_cookie(True)) or (None if secure else cookies.get(self._device_cookie()))
        return device if device and DEVICE_TOKEN.fullmatch(device) else None  # anything else: no device

    def _inner_cookies(self, scope: Scope, tokens: list[str]) -> Scope:
        """``scope`` with its Cookie header as the app behind the guard should see it: every session cookie the
        browser sent (any name, any number of Cookie headers) taken out, and Gradio's own name set to the token the
        guard decided on (``_tokens``' first), if any. Gradio reads its names itself, so a cookie the guard does not
        read (an old name over HTTPS, one a sibling subdomain planted) must not reach it either."""
        names = {self._host_cookie(), *self._cookie_names()}
        kept = [part.strip() for k, v in scope["headers"] if k.lower() == b"cookie"
                for part in v.decode("latin-1").split(";")
                if part.strip() and part.split("=", 1)[0].strip() not in names]
        if tokens:
            kept.insert(0, f"{self._cookie_names()[0]}={tokens[0]}")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"cookie"]
        return {**scope, "headers": headers + ([(b"cookie", "; ".join(kept).encode("latin-1"))] if kept else [])}

    @staticmethod
    def _lax_send(send: Send, secure: bool = False) -> Send:
        """``send`` with every Set-Cookie SameSite=Lax, and Secure when ``secure``."""
        async def wrapped(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message.get("headers"):
                message = {**message, "headers": [(k, lax_cookie(v, secure) if k.lower() == b"set-cookie" else v)
                                                  for k, v in message["headers"]]}
            await send(message)

        return wrapped

    def _lax(self, response: Response, secure: bool = False) -> Response:
        response.raw_headers = [(k, lax_cookie(v, secure) if k.lower() == b"set-cookie" else v)
                                for k, v in response.raw_headers]
        return response

    def _scheme(self, scope: Scope, headers: Headers) -> str:
        """The request's scheme as the browser used it: the server's (``https`` when TLS ends here or a trusted proxy
        says so), or ``https`` (``wss``) when the request carries a session cookie that is always Secure
        (``__Host-access-token-...``, or Gradio's ``access-token-...``) and its Host is not this machine: a browser
        keeps and sends a Secure cookie only over HTTPS (and to localhost, which is why that is left out), so the
        session was established, and the request sent, over HTTPS behind a proxy that does not say so. An ``http://`` Origin is then refused (GuardPolicy):
        a page on plain http of the same name (which anyone on the path can write) cannot use an HTTPS session.
        Likewise when the request carries Fetch Metadata (``Sec-Fetch-Site``): a browser sends it only to an origin it
        trusts, HTTPS (or localhost, left out too). Without that, a page load (a GET, no Origin) carrying no
        ``__Host-`` cookie but a Gradio-named one a sibling subdomain planted read as plain http, and the planted
        session was read (fourth review, 5 Dec 2026)."""
        scheme = scope.get("scheme", "http")
        if scheme not in ("http", "ws") or self.policy.local_mode:
            return scheme
        host = split_host(headers.get("host"))
        if host is None or auth.is_loopback(host[0]) or host[0].rstrip(".").endswith(".localhost"):
            return scheme
        cookies = cookie_parser(headers.get("cookie", ""))
        if cookies.get(self._cookie_names()[0]) or cookies.get(self._host_cookie()) or "sec-fetch-site" in headers:
            return "https" if scheme == "http" else "wss"
        return scheme

    def _https_shown(self, headers: Headers, scheme: str) -> bool:
        """Whether the browser reaches the app over HTTPS, as far as this request shows: the configured public URL is
        https, the request's scheme (``_scheme``) is, or its Origin is ``https://`` (one the policy let through: the
        request's own host or the public URL). Then every cookie its answer sets is Secure, so that a request a page
        makes the browser send to ``http://`` the same name (an <img> on any plain page) carries none in clear."""
        if self.secure_cookies or scheme in ("https", "wss"):
            return True
        origin = split_origin(headers.get("origin"))
        return origin is not None and origin[0] == "https"

    async def _in_thread(self, pool: ThreadPoolExecutor, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    async def _check_session(self, headers: Headers, secure: bool, max_age_s: float | None = None) -> SessionInfo | None:
        """Withdraw from Gradio every session token of this request that is no longer valid; re-admit valid ones.
        Returns the session Gradio's handlers will run as (None: nobody is signed in). ``max_age_s``: how old an
        answer the session store remembers may be (``SessionStore.cached``)."""
        assert self.sessions is not None
        runs_as = None
        for position, token in enumerate(self._tokens(headers, secure)):
            known, info = self.sessions.cached(token, max_age_s)
            if not known:  # the database, in a thread: a read (and at most once a minute a write) per session
                info = await self._in_thread(self.db_pool, self.sessions.check, token)
            if info is None:
                self.gradio_app.tokens.pop(token, None)
            else:
                self._admit_token(token, info.name)
                if position == 0:
                    # the account Gradio's handlers will run as: the first cookie present (the secure one, then the
                    # other), whether or not valid; the last valid one was taken before, so with two cookies of two
                    # accounts the session bindings went to one account and the handlers ran as the other (review)
                    runs_as = info
        return runs_as

    # -- request bodies ------------------------------------------------------------------------

    async def _bounded_body(self, headers: Headers, receive: Receive) -> Receive | tuple[str, int]:
        """``receive`` for a request whose body is at most MAX_REQUEST_BODY bytes, else the refusal to send (sentence,
        status: ``_refuse``).

        A chunked body (``Transfer-Encoding``, which the server's parser obeys over a ``Content-Length`` sent beside
        it) is read here, up to the limit, and replayed to the app. Otherwise the declared length is checked as it
        stands: the server holds the client to it."""
        limit = MAX_REQUEST_BODY
        too_large = f"The request body is larger than the {limit // 1024} KiB this app accepts.", 413
        if "transfer-encoding" not in headers:
            length = headers.get("content-length")
            if length is None:
                return receive  # no body
            length = length.strip()
            if not (length.isascii() and length.isdecimal()):
                return "The Content-Length header is not a whole number of bytes.", 400
            return too_large if len(length) > 12 or int(length) > limit else receive
        body = await self._read_body(receive, limit)
        if body is None:
            return too_large  # over the limit (or the client left: then nobody reads the answer)
        return self._replay(body, receive)

    def _event_body_limit(self, path: str, signed_in: SessionInfo | None) -> int:
        """The most bytes an event post's body may have: MAX_REQUEST_BODY for an admin's event on the page's own route
        (its forms carry free text; local mode's one user is the admin), MAX_EVENT_BODY for every other."""
        admin = self.sessions is None or (signed_in is not None and signed_in.role == "admin")
        return MAX_REQUEST_BODY if admin and gradio_routes.is_page_join(path) else MAX_EVENT_BODY

    async def _event_body(self, headers: Headers, receive: Receive, limit: int) -> bytes | tuple[str, int]:
        """An event post's body, at most ``limit`` bytes, or the refusal to send (sentence, status): a declared
        Content-Length over the limit is refused before anything is read, a streamed body as soon as its bytes pass
        it (``_bounded_body`` checked the length's form and MAX_REQUEST_BODY already)."""
        too_large = f"The request body is larger than the {limit // 1024} KiB this app accepts for this event.", 413
        length = headers.get("content-length", "").strip()
        if "transfer-encoding" not in headers and length.isascii() and length.isdecimal() and int(length) > limit:
            return too_large
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return "The request ended early.", 400
            body += message.get("body", b"")
            if len(body) > limit:
                return too_large
            if not message.get("more_body", False):
                return body

    @staticmethod
    def _replay(body: bytes, receive: Receive) -> Receive:
        """A ``receive`` that hands the app ``body`` (read here already) in one message, then defers to ``receive``."""
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return await receive()  # after the body: the server's disconnect message, when it comes
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    # -- sign-in -------------------------------------------------------------------------------

    @staticmethod
    async def _read_body(receive: Receive, limit: int) -> bytes | None:
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                return None
            if not message.get("more_body", False):
                return body

    async def _form(self, scope: Scope, receive: Receive) -> dict[str, str] | str:
        """The sign-in form's fields, or one sentence saying why it cannot be read. The fields and files are counted
        here, not by the parsers (``parse_qs``'s max_num_fields, Starlette's max_fields and max_files), whose refusals
        came out in their own words ("Too many fields. Maximum number of fields is 8.", "Max number of fields
        exceeded"; found by the thirteenth review, 6 Dec 2026); MAX_LOGIN_BODY, checked first, bounds the parts."""
        body = await self._read_body(receive, MAX_LOGIN_BODY)
        if body is None:
            return f"the sign-in form is larger than {MAX_LOGIN_BODY // 1024} KiB or was not sent whole"
        content_type = Headers(scope=scope).get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/x-www-form-urlencoded":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:  # its own message is Python's ("'utf-8' codec can't decode byte 0xff ...")
                return "the sign-in form could not be read: it was not UTF-8 text"
            pairs = parse_qsl(text, keep_blank_values=True)
            if len(pairs) > LOGIN_FORM_FIELDS:
                return LOGIN_FORM_TOO_MANY
            fields: dict[str, str] = {}
            for key, value in pairs:
                fields.setdefault(key, value)  # the first of a repeated name, as parse_qs(...)[key][0] gave
            return fields
        if content_type == "multipart/form-data":
            sent = False

            async def replay() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    return {"type": "http.disconnect"}
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            try:  # no part can be larger than the body, nor more parts than its bytes
                form = await Request(scope, replay).form(max_files=MAX_LOGIN_BODY, max_fields=MAX_LOGIN_BODY,
                                                         max_part_size=MAX_LOGIN_BODY)
            except (HTTPException, MultiPartException):  # Starlette's answer to a malformed multipart body
                return "the sign-in form could not be read: it was not a well-formed multipart form"
            try:
                items = form.multi_items()
                if any(not isinstance(value, str) for _, value in items):
                    return LOGIN_FORM_FILE
                if len(items) > LOGIN_FORM_FIELDS:
                    return LOGIN_FORM_TOO_MANY
                return {k: v for k, v in form.items() if isinstance(v, str)}
            finally:
                await form.close()  # a file part's spooled buffer
        return "send the sign-in form as application/x-www-form-urlencoded or multipart/form-data"

    async def _login(self, scope: Scope, receive: Receive, secure: bool, headers: Headers) -> Response:
        client = scope.get("client")
        ip = client[0] if client else None
        form = await self._form(scope, receive)
        if isinstance(form, str):
            return JSONResponse({"detail": _sentence(form)}, status_code=400)
        # the name as stored (composed, NFC): the throttle counts an account's guesses under it, however it was typed
        # (a decomposed accent, a Kelvin sign for K each counted as another account; found by review)
        username, password = unicodedata.normalize("NFC", form.get("username", "").strip()), form.get("password", "")
        device = self._device(headers, secure)
        # a browser exempt from some locks stays so only while the account's credentials are those it
        # signed in with; read here, so a password changed by another process (the users CLI) ends it too
        credentials = ""
        if username and self.throttle.remembers(ip, username, device):
            credentials = await self._in_thread(self.db_pool, auth.current_credentials_stamp, self.factory, username)
        wait, ticket = self.throttle.admit(ip, username, device, credentials=credentials)
        if ticket is None:
            self.stats.logins["throttled"] += 1
            seconds = max(1, math.ceil(wait))
            if self._throttle_log.due(ip):  # a flood of throttled tries is one line a minute per address
                log.warning("sign-ins from %s throttled for %d s (too many failed sign-ins; %d tries throttled from there "
                            "since the last such line, this one included)", ip, seconds, self._throttle_log.count(ip))
            return JSONResponse({"detail": f"Too many failed sign-ins; try again in {seconds} second{'s' if seconds != 1 else ''}."},
                                status_code=429, headers={"Retry-After": str(seconds)})
        try:
            return await self._checked_login(scope, ip, username, password, device, credentials, secure, headers)
        finally:
            self.throttle.release(ticket)  # after the outcome is counted, so the next guess sees it

    def _admit_token(self, token: str, name: str) -> None:
        """Put ``token`` in Gradio's token table (as its newest entry), keeping the table at GRADIO_TOKENS_MAX."""
        tokens = self.gradio_app.tokens
        tokens.pop(token, None)
        tokens[token] = name
        while len(tokens) > GRADIO_TOKENS_MAX:
            tokens.pop(next(iter(tokens)))

    def _sign_in_wait(self, username: str) -> float:
        """Seconds until ``username`` may sign in again (0: now), by its successful sign-ins in the window."""
        now = time.monotonic()
        recent = [t for t in self._signed_in.get(username, ()) if now - t < SIGN_IN_WINDOW_S]
        if recent:
            self._signed_in[username] = recent
        else:
            self._signed_in.pop(username, None)
        return SIGN_IN_WINDOW_S - (now - recent[0]) if len(recent) >= SIGN_INS_PER_ACCOUNT else 0.0

    async def _checked_login(self, scope: Scope, ip: str | None, username: str, password: str, device: str | None,
                             credentials: str, secure: bool, headers: Headers) -> Response:
        """The sign-in's limits, then its check (``_check_and_start``, which answers 429 to a right password past
        SIGN_INS_PER_ACCOUNT successes in the window): one sign-in of an account checked at a time (another waits for its end, up to
        SIGN_IN_WAIT_S, as a script signing in from several threads does), at most ``max_pending`` hashing (503)."""
        deadline = time.monotonic() + SIGN_IN_WAIT_S  # one wait in all, however many turns it loses
        while True:
            checking = self._checking.get(username)
            if checking is None:
                break
            if self._waiting.get(username, 0) >= SIGN_IN_WAITERS or not await self._wait_for(username, checking,
                                                                                             deadline):
                self.stats.logins["busy"] += 1
                return JSONResponse({"detail": "A sign-in to this account is being checked; try again in a few "
                                               "seconds."}, status_code=503, headers={"Retry-After": "2"})
        if self.pending >= self.max_pending:
            self.stats.logins["busy"] += 1
            return JSONResponse({"detail": "The server is checking many sign-ins at once; try again in a few seconds."},
                                status_code=503, headers={"Retry-After": "2"})
        # held until the outcome is recorded (the success counted), so that the next sign-in sees it (found by review)
        done = self._checking[username] = asyncio.Event()
        try:
            return await self._check_and_start(scope, ip, username, password, device, credentials, secure, headers)
        finally:
            del self._checking[username]
            done.set()

    async def _wait_for(self, username: str, checking: asyncio.Event, deadline: float) -> bool:
        """Wait (until ``deadline``, a time.monotonic()) for the sign-in of ``username`` being checked; whether it
        ended in time."""
        self._waiting[username] = self._waiting.get(username, 0) + 1
        try:
            await asyncio.wait_for(checking.wait(), max(0.0, deadline - time.monotonic()))
            return True
        except TimeoutError:
            return False
        finally:
            self._waiting[username] -= 1
            if not self._waiting[username]:
                del self._waiting[username]

    async def _check_and_start(self, scope: Scope, ip: str | None, username: str, password: str, device: str | None,
                               credentials: str, secure: bool, headers: Headers) -> Response:
        self.pending += 1
        try:
            result = await self._in_thread(self.hash_pool, auth.check_login, self.factory, username, password)
        finally:
            self.pending -= 1
        if result.refusal is not None:
            # sign-ins leave a trace in the server's log (they were only counted in memory; found by review): the
            # name (cut, repr-escaped) and the address, never the password
            if result.disabled:  # answered and counted as a wrong guess: "disabled" confirmed the password was right
                self.throttle.failed(ip, username, device, credentials=credentials)  # (found by review)
                self.stats.logins["refused"] += 1
                log.warning("sign-in as %r from %s refused: the account is disabled", username[:64], ip)
                return JSONResponse({"detail": auth.WRONG_CREDENTIALS}, status_code=400)
            if result.wrong_credentials:
                self.throttle.failed(ip, username, device, credentials=credentials)
                self.stats.logins["wrong"] += 1
                if result.known_name:
                    log.warning("sign-in as %r from %s refused: wrong name or password", username[:64], ip)
                else:  # the name may be a password typed into the wrong field (found by review): not written down
                    log.warning("sign-in with a name that is no account's from %s refused", ip)
                return JSONResponse({"detail": auth.WRONG_CREDENTIALS}, status_code=400)
            log.warning("sign-in as %r from %s refused: %s", username[:64], ip, result.refusal)
            self.stats.logins["refused"] += 1
            return JSONResponse({"detail": _sentence(result.refusal)}, status_code=403)
        # the success limit is applied once the password proved right (tenth review, 6 Dec 2026): answered before the
        # check, its 429 told anyone that the name was an account's whose owner had just signed in many times, where
        # a name that is no account's got 400; now whoever lacks the password gets the same answer for both
        if wait := self._sign_in_wait(username):
            # and is a failure of the address's: past the limit, each try cost a hash and was counted nowhere, so a
            # password holder looping from one address kept the hashing thread busy and, from a few accounts, every
            # sign-in slot (found by a read-only review); the address's backoff now refuses such a loop before hashing,
            # alike for every name (the account's own counter is left: it would tell the account apart); a browser the
            # account remembers is held to its own counter, as its failures are
            self.throttle.over_limit(ip, username, device, credentials=credentials)
            self.stats.logins["throttled"] += 1
            seconds = max(1, math.ceil(wait))
            return JSONResponse({"detail": f"Too many sign-ins to this account in a short time; try again in "
                                           f"{seconds} second{'s' if seconds != 1 else ''}."},
                                status_code=429, headers={"Retry-After": str(seconds)})
        # a fresh device token at every sign-in, never the one the browser brought (fifteenth review, 6 Dec 2026): one
        # planted before it (over plain http, or by another port of this host: cookies do not separate ports) was
        # kept and remembered for the account, so whoever planted it got past the account's and the address's locks.
        # Once the session started, what the old token earned for the browser's other accounts is copied to the new
        # one, and the old one keeps it (``LoginThrottle.replaced``: moved, a thief's sign-in to their own account
        # with the owner's stolen token took the owner's exemption; a read-only review of that fix)
        brought, device = device, secrets.token_urlsafe(DEVICE_BYTES)
        # remembered before the session starts: a password change that lands meanwhile either makes start refuse or
        # forgets this device after it was remembered (auth.set_password -> sessions.credentials_changed)
        self.throttle.succeeded(ip, username, device, credentials=result.credentials)
        assert self.sessions is not None
        # the cookies set below replace this browser's old session, if it had one (as another user, or the same): it
        # ends in the same transaction, as a log out would (it stayed valid until it expired; found by review)
        replaced = self._presented(headers)
        try:
            token = await self._in_thread(self.db_pool, functools.partial(
                self.sessions.start, result.rater_id, ip, password_hash=result.password_hash, replaces=replaced))
        except StaleSignIn as stale:
            # no session, no cookie; counted as a failed guess (the password it matched is no longer the account's)
            self.throttle.forget_account(username)
            self.throttle.failed(ip, username, None)
            if not stale.password_changed:  # disabled meanwhile: answered as a disabled account's right password is
                self.stats.logins["refused"] += 1
                log.warning("sign-in as %r from %s refused: the account was disabled while it was checked",
                            username[:64], ip)
                return JSONResponse({"detail": auth.WRONG_CREDENTIALS}, status_code=400)
            # the password was changed (by an admin, or by the account's owner elsewhere) while scrypt ran: answered
            # "Incorrect credentials." before, as if the password typed had been wrong (sixteenth review). Still 400;
            # the login page says the sentence (ui_assets.LOGIN_JS), as it does every refusal's
            self.stats.logins["refused"] += 1
            log.warning("sign-in as %r from %s refused: the password was changed while it was checked", username[:64],
                        ip)
            return JSONResponse({"detail": PASSWORD_CHANGED_DURING_SIGN_IN}, status_code=400)
        # only now: a sign-in that failed above leaves the browser its old token as it was (it had no new cookie, and
        # lost every exemption the old one held: a read-only review)
        self.throttle.replaced(username, brought, device)
        for old in replaced:
            self.gradio_app.tokens.pop(old, None)
        self._admit_token(token, username)
        self._signed_in.setdefault(username, []).append(time.monotonic())
        self.stats.logins["ok"] += 1
        log.info("%r signed in from %s", username[:64], ip)
        response = JSONResponse({"success": True})
        secure_name, plain_name = self._cookie_names()
        if secure:  # the sign-in showed HTTPS (``_https_shown``): one __Host- cookie (see "cookies" below)
            response.set_cookie(self._host_cookie(), token, httponly=True, samesite="lax", secure=True, path="/")
            cookies = cookie_parser(headers.get("cookie", ""))
            for old in (secure_name, plain_name, self._device_cookie()):
                if old in cookies:  # names from before, no longer read over HTTPS: gone from the browser
                    response.delete_cookie(old, path="/", secure=True, httponly=True, samesite="lax")
        else:
            response.set_cookie(secure_name, token, httponly=True, samesite="lax", secure=True, path="/")
            response.set_cookie(plain_name, token, httponly=True, samesite="lax", secure=False, path="/")
        # this browser signed in to this account: the address's and the account's sign-in locks are not for it
        # (sessions.LoginThrottle)
        response.set_cookie(self._device_cookie(secure), device, max_age=int(self.throttle.known_s), httponly=True,
                            samesite="lax", secure=secure, path="/")
        return response

    # -- log out -------------------------------------------------------------------------------

    async def _logout(self, scope: Scope, headers: Headers) -> Response:
        method = scope.get("method")
        if method in ("GET", "HEAD"):
            return HTMLResponse(LOGOUT_PAGE)
        if method != "POST":
            return PlainTextResponse("Log out with POST /logout.", status_code=405, headers={"Allow": "GET, POST"})
        for token in self._presented(headers):
            if self.sessions is not None:
                await self._in_thread(self.db_pool, self.sessions.end, token, "logout")
            self.gradio_app.tokens.pop(token, None)
        response = RedirectResponse("/", status_code=303)
        for name in self._cookie_names():
            response.delete_cookie(name, path="/", httponly=True, samesite="lax")
        if self._host_cookie() in cookie_parser(headers.get("cookie", "")):  # a browser keeps it only if Secure
            response.delete_cookie(self._host_cookie(), path="/", secure=True, httponly=True, samesite="lax")
        return response


# one stream of a session's results at a time (``WebGuard._one_stream``): a second that may not take the first over
# waits this long for it to end, checking every STREAM_POLL_S, then is refused; one that takes it over waits at most
# this long for the first's answer to end
# heartbeats and result streams an account may hold open at once (a page holds two, a heartbeat and its results);
# one past it gets 429 (found by the sixth review of 5 Dec 2026: one rater held 150 heartbeats, each a connection and a
# task of the server's, and more at will); read at each request
STREAMS_PER_ACCOUNT = 16
HEARTBEAT_RECHECK_S = 5.0  # an open heartbeat's sign-in session is checked again this often (``_while_beating``)
TOO_MANY_STREAMS = ("Your account has {n} of the app's streams open (each open page holds two); close some of its "
                    "pages and try again.")
# a stream or heartbeat another site's page made the browser open (an <img>, a link: the Lax cookie goes with a GET)
OTHER_SITE_STREAM = ("The app's heartbeat and result streams are opened by its own page, not by another site's; this "
                     "request came from another site.")
STREAM_WAIT_S = 2.0


def _page_stream_error(sentence: str) -> Response:
    """A refused stream of the page's results (``GET /queue/data``) as the page's Gradio client shows it: 200 and a
    stream of two messages, the error of a failed event (``process_completed`` with ``output.error``, no event id, so
    every event the page waits on gets it: an error toast with ``sentence``, the event ended) and ``close_stream`` (the
    page opens a new stream for its next event).

    Found by the seventh review of 5 Dec 2026: refused with 429, the page's client (gradio's JS client, which reads
    a stream's answer only when it is 2xx) took the refusal for a lost connection: "Connection to the server was lost.
    Attempting reconnection..." and a reload 2 s later, whose next event was refused again; the sentence never
    showed."""
    failed = {"msg": "process_completed", "success": False,
              "output": {"error": sentence, "title": "Error", "visible": True}}
    body = "".join(f"data: {json.dumps(m)}\n\n" for m in (failed, {"msg": "close_stream"}))
    return Response(body, media_type="text/event-stream", headers={"Cache-Control": "no-store"})
STREAM_POLL_S = 0.05
ONE_STREAM = "Another stream is already reading this session's results; a session has one open at a time."
LAST_BODY = {"type": "http.response.body", "body": b"", "more_body": False}


class _Reader:
    """A connection that reads a session's stream of results (``_Stream``)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.lock = asyncio.Lock()  # one message at a time on this connection
        self.ready = asyncio.Event()  # it may be sent to: set once an older connection's answer ended (``take_over``)
        self.started = False  # the answer's start was sent
        self.finished = False  # the answer's last body was sent
        self.left = asyncio.Event()  # a newer connection took the stream over
        self.ended = asyncio.Event()  # this connection is done with the stream (``_Stream.follow`` returned)

    async def pass_on(self, message: dict[str, Any], start: dict[str, Any]) -> None:
        """Send ``message`` on this connection, the answer's ``start`` first where it had none."""
        await self.ready.wait()
        async with self.lock:
            if not self.started:
                await self.send(start)
                self.started = True
            if message is not start:
                await self.send(message)
                self.finished = message["type"] == "http.response.body" and not message.get("more_body", False)

    async def end(self, start: dict[str, Any]) -> None:
        """End this connection's answer (a newer one took its stream over): the last body, the start first where it
        had none, so the client reads a stream that ended."""
        async with self.lock:
            if self.finished:
                return
            if not self.started:
                await self.send(start)
                self.started = True
            await self.send(LAST_BODY)
            self.finished = True


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class _Stream:
    """One session's stream of results as Gradio writes it (a task of its own), passed on to the newest connection
    that asked for it (``WebGuard._one_stream``). Gradio's ``send`` is ``write``: each message goes to the connection
    that holds the stream when it is written (waiting for it, as Gradio waited for the server), and one a connection
    was sending when it was taken over goes to the newer one. Gradio's ``receive`` is ``receive``: the request, then
    a disconnect when the connection holding the stream leaves (then Gradio ends it, dropping the session's messages
    and events, as it does for any client that leaves); a connection taken over leaves Gradio's stream alone."""

    def __init__(self, path: str, method: str | None, user: str | None) -> None:
        self.path, self.method, self.user = path, method, user
        self.reader: _Reader | None = None  # the connection that holds the stream (None: it left)
        self.start: dict[str, Any] | None = None  # Gradio's start of the answer, once sent
        self.over = False  # Gradio sent the answer's last body
        self.gone = asyncio.Event()  # the connection holding the stream left
        self.task: asyncio.Task[Any] | None = None  # Gradio's stream
        self._asked = False

    def movable(self, path: str, method: str | None, user: str | None) -> bool:
        """Whether a request for ``path`` by ``user`` may take this stream over: the same route and account, and the
        stream answering 200, not ending."""
        return ((self.path, self.method, self.user) == (path, method, user) and self.start is not None
                and self.start.get("status") == 200 and not self.over and not self.gone.is_set()
                and self.task is not None and not self.task.done())

    async def receive(self) -> dict[str, Any]:
        if not self._asked:
            self._asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def write(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.start = message
        elif not message.get("more_body", False):
            self.over = True
        while (reader := self.reader) is not None:
            passing = asyncio.ensure_future(reader.pass_on(message, self.start or message))
            left = asyncio.ensure_future(reader.left.wait())
            try:
                await asyncio.wait({passing, left}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                left.cancel()
                if not passing.done():
                    passing.cancel()
            if passing.done():
                passing.result()  # what the connection's send raised is Gradio's, as before
                return
        # the connection holding the stream left: the message goes nowhere, as the server drops a send to a client that
        # left (Gradio learns it from ``receive``)

    def begin(self, inner: Callable[[Scope, Receive, Send], Awaitable[None]], scope: Scope, reader: _Reader) -> None:
        """Start Gradio's stream (``self.task``) for ``reader``, the connection that asked first."""
        self.reader = reader
        reader.ready.set()
        self.task = asyncio.ensure_future(inner(scope, self.receive, self.write))

    async def take_over(self, reader: _Reader, receive: Receive) -> None:
        """``reader``, a newer connection, takes the stream over (``follow``)."""
        old, self.reader = self.reader, reader
        if old is not None:
            old.left.set()
        await self.follow(reader, receive, old)

    async def follow(self, reader: _Reader, receive: Receive, old: _Reader | None = None) -> None:
        """Until ``reader``'s part ends: Gradio's stream ended (what it raised is raised here), a newer connection took
        it over (this answer ends), or this client left (Gradio is told and its stream waited for). Taken over from
        ``old``: its answer ends first (waited for up to STREAM_WAIT_S: a dead connection whose buffers are full may
        never take it), then this one's starts at once, not at Gradio's next message."""
        assert self.task is not None
        task = self.task
        waiters: list[asyncio.Future[Any]] = []
        try:
            if old is not None:
                waiters.append(asyncio.ensure_future(old.ended.wait()))
                await asyncio.wait(waiters, timeout=STREAM_WAIT_S)
                reader.ready.set()
                if not reader.left.is_set() and self.start is not None:
                    await reader.pass_on(self.start, self.start)
            waiters += [asyncio.ensure_future(_until_disconnect(receive)), asyncio.ensure_future(reader.left.wait())]
            await asyncio.wait([*waiters[-2:], task], return_when=asyncio.FIRST_COMPLETED)
            if reader.left.is_set():  # read the event, not its waiter, which may not have run yet
                await reader.end(self.start or {"type": "http.response.start", "status": 200, "headers": []})
                return
            if not task.done():  # this client left while it held the stream
                self.reader = None
                self.gone.set()
                await asyncio.wait({task})
            task.result()
        finally:
            for waiter in waiters:
                waiter.cancel()
            reader.ended.set()
            if self.reader is reader and not task.done():  # this request was cancelled (the server stopping)
                self.reader = None
                self.gone.set()
                task.cancel()


HASH_THREAD_NICE = 10
PASSWORD_CHANGED_DURING_SIGN_IN = ("The account's password was changed while you were signing in, so you were not "
                                   "signed in; sign in with the new password.")
DEVICE_BYTES = 24
HOST_PREFIX = "__Host-"  # a cookie only this host sets, over HTTPS (WebGuard's "cookies")
DEVICE_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")  # secrets.token_urlsafe(24)


def _lower_thread_priority() -> None:
    """On Linux (where nice is per thread) the sign-in hashing thread yields the CPU to the threads serving ratings."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICE)


LOGOUT_PAGE = f"""<!doctype html><html><head><meta charset="utf-8"><title>Log out</title></head>
<body style="font-family: sans-serif; margin: 3em">
<form method="post" action="/logout"><p>{html.escape("Log out of SEIKO studio?")}</p>
<button type="submit" id="logout-button">Log out</button> <a href="/">Back to the app</a></form></body></html>"""


# ---------------------------------------------------------------------------------------------
# installing it
# ---------------------------------------------------------------------------------------------


def trust_proxies(settings: Any) -> None:
    """Tell uvicorn (read when Gradio starts its server, from FORWARDED_ALLOW_IPS) whose X-Forwarded-For and
    X-Forwarded-Proto to believe: ``Settings.trusted_proxies``. A client address taken from a header anyone may send
    would let one client pose as many addresses to the sign-in throttle."""
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(settings.trusted_proxies)  # "" trusts nobody


def answered_names(settings: Any) -> frozenset[str]:
    """The host names an app with accounts answers to: localhost, this machine's name (and name.local), the public
    URL's, --host's when it is a name, and SEIKO_ALLOWED_HOSTS."""
    machine = socket.gethostname().lower().rstrip(".")
    names = {"localhost", machine, machine.split(".")[0], machine.split(".")[0] + ".local", *settings.allowed_hosts}
    if settings.public_url:
        names.add((urlsplit(settings.public_url).hostname or "").lower().rstrip("."))
    host = (settings.host or "").lower().rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        names.add(host)
    return frozenset(n for n in names if n)


def install(gradio_app: Any, services: Any, *, throttle: LoginThrottle | None = None, hash_workers: int = 1,
            max_pending: int = 4) -> WebGuard:
    """Wrap ``gradio_app``'s middleware stack (built here if it is not yet) in a WebGuard; returns the guard."""
    current = gradio_app.middleware_stack
    if isinstance(current, WebGuard):
        return current
    if current is None:
        current = gradio_app.build_middleware_stack()
    settings = services.settings
    sessions = None if services.local_mode else SessionStore.from_settings(services.factory, settings)
    public = settings.public_url
    policy = GuardPolicy(services.local_mode, public, host_names=None if services.local_mode else answered_names(settings))
    guard = WebGuard(current, gradio_app=gradio_app, policy=policy,
                     factory=services.factory, sessions=sessions, throttle=throttle,
                     secure_cookies=bool(public and public.startswith("https://")),
                     hash_workers=hash_workers, max_pending=max_pending,
                     local_token=services.local_token,  # None with accounts (AppServices)
                     proxies_trusted=bool(settings.trusted_proxies))
    gradio_app.middleware_stack = guard
    return guard


def installed(gradio_app: Any) -> WebGuard | None:
    """The guard in front of ``gradio_app``, or None."""
    stack = getattr(gradio_app, "middleware_stack", None)
    return stack if isinstance(stack, WebGuard) else None


# an event whose turn came after its session ended (seventh review, 5 Dec 2026)
SESSION_ENDED = ("your session ended (you signed out, or the account's password changed) before this request's turn "
                 "came, so nothing was done; reload the page to sign in again")


def session_ended(request: Any) -> str | None:
    """Why an event may not run now although its request was let in (one sentence), or None.

    The guard checks the session of every HTTP request, but Gradio runs an event when its turn in the queue comes, as
    the user name it read at the join: a session that ended in between (a log out, a password change, its idle or
    absolute limit) still ran the event as its account (found by the seventh review: a rating sent before a log out,
    or an admin's action sent before the password of a stolen account was changed, was carried out afterwards).
    ``request``: the handler's ``gr.Request``; it holds the join's HTTP request, whose cookie is the session the guard
    let in (``WebGuard._inner_cookies``), checked again here against the session store (its cache, or the database).
    None for a request with no HTTP request behind it (a handler called as a function), in local mode (no sessions),
    and where no guard is installed (then nobody is signed in: ``auth.refuse_direct_sign_in``)."""
    guarded, info = _request_session(request)
    return SESSION_ENDED if guarded and info is None else None


def _request_session(request: Any) -> tuple[bool, SessionInfo | None]:
    """(whether a guard with sessions stands in front of ``request``'s HTTP request, the session it let in if that is
    valid now and of the account Gradio runs the handler as, else None): what ``session_ended`` and
    ``signed_in_session`` both read, once."""
    http = getattr(request, "request", None)  # gr.Request keeps the fastapi Request it was made from, or None
    scope = getattr(http, "scope", None)
    if not isinstance(scope, dict):
        return False, None
    guard = installed(scope.get("app"))
    if guard is None or guard.sessions is None:
        return False, None
    token = http.cookies.get(guard._cookie_names()[0])  # the one session the guard let in, under Gradio's name
    info = guard.sessions.check(token) if token else None
    if info is None or info.name != getattr(request, "username", None):
        return True, None
    return True, info


def signed_in_session(request: Any) -> str | None:
    """The id (as text) of the signed-in session that ``request`` (a handler's ``gr.Request``) runs as, checked valid
    now against the session store and of the account Gradio runs the handler as, or None (no such session, a handler
    called as a function, local mode, no guard). The sign-in throttle holds a password typed again inside the app to
    this session's own counter (``sessions.LoginThrottle._keys_for``): the session, read on the server from the cookie
    the guard let in, is the proof that its browser signed in with the password, so nothing a request sends names
    another."""
    _, info = _request_session(request)
    return str(info.session_id) if info is not None else None


def sign_in_throttle(request: Any) -> LoginThrottle | None:
    """The sign-in throttle of the guard in front of the app that ``request`` (a handler's ``gr.Request``) came to, or
    None (a handler called as a function, or no guard installed). A check of the admin's own password on the Admin tab
    (``auth.confirm_own_password``) counts with it, so that its failures are the sign-in page's."""
    http = getattr(request, "request", None)
    scope = getattr(http, "scope", None)
    guard = installed(scope.get("app")) if isinstance(scope, dict) else None
    return guard.throttle if guard is not None else None


def client_address(request: Any) -> str | None:
    """The address ``request`` (a handler's ``gr.Request``) came from, as the guard's sign-in counts it (the
    connection's, or a trusted proxy's client), or None."""
    client = getattr(request, "client", None) if request is not None else None
    return getattr(client, "host", None) if client is not None else None


def lifespan(services: Any, **options: Any) -> Callable[[Any], Any]:
    """A lifespan for ``launch(app_kwargs={"lifespan": ...})`` that installs the guard when the server starts."""

    @asynccontextmanager
    async def _lifespan(gradio_app: Any):
        guard = install(gradio_app, services, **options)
        try:
            yield
        finally:
            guard.close()

    return _lifespan
