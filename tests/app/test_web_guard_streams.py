"""The guard's handling of result streams and forwarding headers: findings of the fourth review of 5 Dec 2026, each
reproduced against a real server on 127.0.0.1 (the helpers and the ``served`` fixture are test_web_guard's)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.responses import StreamingResponse

from app import gradio_routes, sessions, web_guard
from app.settings import Settings
from db import repo
from db.engine import write_session
from tests.app.test_web_guard import UI_PASSWORD, _drive_async, _no_traceback, joined, launch, queue_join, signed_in


@pytest.fixture
def served(ui_world):
    demo, url = launch(ui_world)
    yield ui_world, demo, url
    demo.close()


def _raw_stream(url: str, http: httpx.Client, session: str) -> socket.socket:
    """``GET /gradio_api/queue/data`` for ``session`` on a connection of its own, with ``http``'s cookies, left open."""
    parts = urlsplit(url)
    cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    sock.sendall(f"GET /gradio_api/queue/data?session_hash={session} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                 f"Cookie: {cookie}\r\n\r\n".encode())
    return sock


def _status(sock: socket.socket) -> tuple[int, bytes]:
    """The status of the answer on ``sock`` and its body: whole when it has a Content-Length, else what came so far."""
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    head, body = got.split(b"\r\n\r\n", 1)
    length = [int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
    while length and len(body) < length[0]:
        chunk = sock.recv(4096)
        assert chunk, got
        body += chunk
    return int(head.split(b" ", 2)[1]), body


def _streamed(http: httpx.Client, session: str) -> None:
    """Read ``session``'s stream as the page does, to its end (Gradio closes it when the session's events are read)."""
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        assert stream.status_code == 200, stream.read()
        assert any("process_completed" in line for line in stream.iter_lines())


def _read_until(sock: socket.socket, marker: bytes, got: bytes = b"") -> bytes:
    """What comes on ``sock`` (after ``got``) until ``marker`` has come."""
    while marker not in got:
        chunk = sock.recv(4096)
        assert chunk, got
        got += chunk
    return got


def test_a_second_stream_of_one_session_takes_the_first_over_and_leaves_no_traceback(served, capfd, caplog):
    """Found by the fourth review of 5 Dec 2026: a rater opened two ``GET /gradio_api/queue/data`` streams of one
    session and dropped one; Gradio then deleted the session's messages and the other stream, already answering 200,
    raised a 404 inside itself: 78 lines of traceback in the log, repeatable by any rater. A second stream got 409
    then, which a connection that died unnoticed also caused: the page's own next stream was refused until it was
    reloaded (fifth review, 5 Dec 2026). A second stream now takes the first over, against a real server: it is
    answered at once, the first's answer ends (its last chunk), dropping the first leaves the session's messages, the
    session's next results come on the second, and nothing is logged. The page's own sequence, each stream opened as
    the last one closed, is answered as before."""
    _, demo, url = served
    capfd.readouterr()
    session = "two-streams"
    with signed_in(url, "alice") as http:
        joined(http, demo, session)
        _streamed(http, session)
        r = queue_join(http, demo, "next_batch", [1, ""], session)  # the page's next event, its stream opened at once
        assert r.status_code == 200, r.text
        _streamed(http, session)
        # every result read: the session keeps its stream (Gradio's rule), which waits for the next event
        first = _raw_stream(url, http, session)
        second = None
        try:
            assert _status(first)[0] == 200
            second = _raw_stream(url, http, session)
            started = time.monotonic()
            second_status, second_body = _status(second)
            took = time.monotonic() - started
            assert second_status == 200, second_body
            assert took < web_guard.STREAM_WAIT_S  # no wait for the first to end
            assert _read_until(first, b"0\r\n\r\n").endswith(b"0\r\n\r\n")  # the first's answer ended
            first.close()  # the client drops it: nothing of the session goes now
            time.sleep(0.5)
            kept = session in demo._queue.pending_messages_per_session
            r = queue_join(http, demo, "next_batch", [1, ""], session)
            assert r.status_code == 200, r.text
            results = _read_until(second, b"close_stream", second_body)
        finally:
            first.close()
            if second is not None:
                second.close()
    _no_traceback(capfd, caplog)
    assert kept
    assert b"process_completed" in results, results[-500:]


def _gradio_like_streams():
    """A stand-in for Gradio's ``GET /queue/data``: each session's messages wait in a queue, and a stream passes them
    on as Gradio's does (a StreamingResponse, which ends when its client leaves) and, when its client leaves, drops
    the session's messages (Gradio deletes them and the session's events). (inner app, the queues by session, the
    streams running now by session, the most ever running at once by session)."""
    queues: dict[str, asyncio.Queue] = {}
    running, most = Counter(), Counter()

    async def inner(scope, receive, send):
        session = parse_qs(scope["query_string"].decode())["session_hash"][0]
        messages = queues.setdefault(session, asyncio.Queue())
        running[session] += 1
        most[session] = max(most[session], running[session])

        async def events():
            try:
                while True:
                    yield f"data: {await messages.get()}\n\n"
            except asyncio.CancelledError:
                queues.pop(session, None)
                raise

        try:
            await StreamingResponse(events(), media_type="text/event-stream")(scope, receive, send)
        finally:
            running[session] -= 1

    return inner, queues, running, most


def _answered(sent: list) -> bytes:
    return b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def _streams_guard(db_factory):
    """A WebGuard with accounts (alice and bob, signed in) around ``_gradio_like_streams``, alice's page
    "alices-page" and bob's "bobs-page" held by their accounts as a page's first event does: (guard, session token
    by name, the queues, the streams running, the most at once)."""
    with write_session(db_factory) as s:
        ids = {name: repo.create_rater(session=s, name=name, password_hash="not-a-real-hash").id
               for name in ("alice", "bob")}
    inner, queues, running, most = _gradio_like_streams()
    gradio_app = SimpleNamespace(cookie_id="t", tokens={}, get_blocks=lambda: None)  # no queue: every session waits
    store = sessions.SessionStore(db_factory, idle_s=600, max_s=3600)
    guard = web_guard.WebGuard(inner, gradio_app=gradio_app, policy=web_guard.GuardPolicy(False), sessions=store)
    tokens = {name: store.start(rater_id, "127.0.0.1") for name, rater_id in ids.items()}
    guard.session_owners.claim("alices-page", "alice")
    guard.session_owners.claim("bobs-page", "bob")
    return guard, tokens, queues, running, most


def _open_stream(guard, token: str, session: str, sent: list, sending=None) -> tuple[asyncio.Task, list, asyncio.Event]:
    """``GET /gradio_api/queue/data`` of ``session`` with ``token``'s cookie, in-process and left open: (its task,
    what the guard sent on it, set it for the client to leave)."""
    leaves = asyncio.Event()
    headers = [(b"host", b"127.0.0.1:7860"), (b"cookie", f"access-token-unsecure-t={token}".encode())]
    task = asyncio.ensure_future(_drive_async(guard, "/gradio_api/queue/data", headers, method="GET",
                                              query=f"session_hash={session}".encode(), client=True, sent=sent,
                                              leaves=leaves, sending=sending))
    return task, sent, leaves


async def _until(check, what: str, within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def test_a_new_stream_of_a_session_takes_over_its_open_one_and_other_sessions_are_untouched(db_factory):
    """Found by the fifth review of 5 Dec 2026: a session's stream on a connection that died unnoticed (a laptop that
    slept, a dropped Wi-Fi) still counted as open, so the page's own new stream got 409 and the rater saw a broken
    page until reloading. A new stream of the same session, by the same account, takes over now: it is answered 200
    and gets the session's messages from then on; the older one's answer is ended (its last body) and gets nothing
    more. Still one stream per session: Gradio runs one (never two at once) and one connection is answered at a time
    (the older one's answer ends before the newer one's starts). Another session's stream, and another account's
    request for the taken session (403), change nothing."""
    guard, tokens, queues, running, most = _streams_guard(db_factory)
    log: list[tuple[str, str, dict]] = []  # (session, connection, message) in the order the guard sent them

    def open_stream(name: str, session: str, connection: str) -> tuple[asyncio.Task, list, asyncio.Event]:
        class Logged(list):
            def append(self, message):
                log.append((session, connection, message))
                super().append(message)

        return _open_stream(guard, tokens[name], session, Logged())

    async def scenario() -> dict:
        first, first_sent, _ = open_stream("alice", "alices-page", "first")  # its client never leaves: it slept
        bobs, bobs_sent, bob_leaves = open_stream("bob", "bobs-page", "bob")
        await _until(lambda: first_sent and bobs_sent and "alices-page" in queues and "bobs-page" in queues, "opened")
        queues["alices-page"].put_nowait("one")
        await _until(lambda: b"data: one" in _answered(first_sent), "the first stream reads its session's messages")
        second, second_sent, second_leaves = open_stream("alice", "alices-page", "second")  # the page, awake again
        await _until(lambda: second_sent, "the second stream answered")
        status = second_sent[0]["status"]
        assert status == 200, (status, _answered(second_sent))
        await _until(first.done, "the first stream's answer ended")
        queues["alices-page"].put_nowait("two")
        queues["bobs-page"].put_nowait("for bob")
        await _until(lambda: b"data: two" in _answered(second_sent) and b"data: for bob" in _answered(bobs_sent),
                    "each stream reads its own session's messages")
        refused = await _drive_async(guard, "/gradio_api/queue/data", [
            (b"host", b"127.0.0.1:7860"), (b"cookie", f"access-token-unsecure-t={tokens['bob']}".encode())],
            method="GET", query=b"session_hash=alices-page", client=True)
        queues["alices-page"].put_nowait("three")
        await _until(lambda: b"data: three" in _answered(second_sent), "the second stream still reads")
        seen = {"first": _answered(first_sent), "first_last": first_sent[-1], "refused": refused[:2],
                "running": dict(running), "bob_done": bobs.done()}
        second_leaves.set()  # the page goes: Gradio's stream learns it and ends, as for any client that leaves
        await second
        await _until(lambda: "alices-page" not in guard.streams, "the guard forgets the stream")
        seen["alices_messages_kept"] = "alices-page" in queues
        bob_leaves.set()
        await bobs
        return seen

    try:
        seen = asyncio.run(scenario())
    finally:
        guard.close()
    assert seen["first"] == b"data: one\n\n"  # nothing after the take-over
    assert seen["first_last"] == {"type": "http.response.body", "body": b"", "more_body": False}  # a stream that ended
    assert seen["refused"] == (403, b"This session of the app belongs to another account.")
    assert seen["running"] == {"alices-page": 1, "bobs-page": 1} and not seen["bob_done"]
    assert not seen["alices_messages_kept"]  # Gradio's own rule once the stream's client left
    assert dict(most) == {"alices-page": 1, "bobs-page": 1}  # Gradio never ran two streams of a session
    answered: Counter = Counter()  # connections of a session whose answer started and has not ended
    for session, _, message in log:
        if message["type"] == "http.response.start":
            answered[session] += 1
            assert answered[session] == 1, (session, log)
        elif not message.get("more_body", False):
            answered[session] -= 1
    assert [c for s, c, m in log if s == "alices-page" and m["type"] == "http.response.start"] == ["first", "second"]


def test_a_message_a_dead_connection_held_up_goes_to_the_stream_that_took_it_over(db_factory):
    """The fifth review's take-over where the dead connection's buffers are full, so the server's send on it waits
    (for the peer that never reads): the message it was sending when a newer stream took over goes to the newer one,
    once, and the newer one's answer starts after waiting STREAM_WAIT_S at most for the older one's to end; the older
    one gets nothing more."""
    guard, tokens, queues, running, most = _streams_guard(db_factory)
    wakes = None  # set: the dead connection's send goes on (its peer came back, or the server gave it up)

    async def held_up(message):  # the dead connection: its start and first message went, then the buffers were full
        if message["type"] == "http.response.body" and b"one" not in message.get("body", b""):
            await wakes.wait()

    async def scenario() -> dict:
        nonlocal wakes
        wakes = asyncio.Event()
        first, first_sent, _ = _open_stream(guard, tokens["alice"], "alices-page", [], held_up)
        await _until(lambda: "alices-page" in queues and first_sent, "opened")
        queues["alices-page"].put_nowait("one")
        queues["alices-page"].put_nowait("two")  # Gradio's send of it waits on the dead connection
        await _until(lambda: b"data: one" in _answered(first_sent), "the first message went")
        await asyncio.sleep(0.1)
        second, second_sent, second_leaves = _open_stream(guard, tokens["alice"], "alices-page", [])
        asked = time.monotonic()
        await _until(lambda: b"data: two" in _answered(second_sent), "the held-up message goes to the new stream",
                     within_s=web_guard.STREAM_WAIT_S + 3)
        waited = time.monotonic() - asked
        queues["alices-page"].put_nowait("three")
        await _until(lambda: b"data: three" in _answered(second_sent), "and the next")
        wakes.set()  # the dead connection's send returns at last: its answer ends, with nothing more on it
        await first
        second_leaves.set()
        await second
        return {"first": (first_sent[0]["status"], _answered(first_sent), first_sent[-1].get("more_body")),
                "second": (second_sent[0]["status"], _answered(second_sent)), "waited": waited}

    try:
        seen = asyncio.run(scenario())
    finally:
        guard.close()
    assert seen["first"] == (200, b"data: one\n\n", False)
    assert seen["second"] == (200, b"data: two\n\ndata: three\n\n")
    assert web_guard.STREAM_WAIT_S * 0.9 <= seen["waited"] < web_guard.STREAM_WAIT_S + 2, seen["waited"]
    assert dict(most) == {"alices-page": 1}


def _root(http: httpx.Client, **headers: str) -> str:
    r = http.get("/config", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["root"]


FORGED = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https",
          "Forwarded": "host=evil.example;proto=https", "X-Gradio-Server": "https://evil.example"}


def test_gradios_page_root_believes_no_forwarding_header_from_a_peer_that_is_not_a_trusted_proxy(ui_world, monkeypatch):
    """Found by the fourth review of 5 Dec 2026: ``GET /config`` with ``X-Forwarded-Host: evil.example`` and
    ``X-Forwarded-Proto: https`` from any client gave ``"root": "https://evil.example"`` (the address the page's
    client calls), though forwarding headers are believed only from SEIKO_TRUSTED_PROXIES. The root is the request's
    own Host and scheme now."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "127.0.0.1")  # restored after the test; set below as `serve` would
    web_guard.trust_proxies(Settings.from_env({"data_dir": "/tmp/x"}, environ={}))  # no proxy trusted (the default)
    demo, url = launch(ui_world)
    try:
        with signed_in(url) as http:
            assert _root(http) == url
            for name, value in FORGED.items():
                assert _root(http, **{name: value}) == url, name
            assert _root(http, **FORGED) == url
    finally:
        demo.close()


def test_gradios_page_root_takes_a_trusted_proxys_scheme_and_the_host_it_passes_on(ui_world, monkeypatch):
    """From a trusted proxy (SEIKO_TRUSTED_PROXIES=127.0.0.1) the root takes its ``X-Forwarded-Proto: https`` (the
    server's scheme, as the cookies and the Origin check do), and its host from Host (the README's proxy passes it
    on: ``proxy_set_header Host $host``); an X-Forwarded-Host, which a proxy passes on from the client unless told
    otherwise, is not believed."""
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "")  # restored after the test; set below as `serve` would
    web_guard.trust_proxies(Settings.from_env({"data_dir": "/tmp/x", "trusted_proxies": "127.0.0.1"}, environ={}))
    demo, url = launch(ui_world)
    try:
        with signed_in(url) as http:
            # over HTTPS only the __Host- session cookie is read (the same review's cookie fix): sign in over it too
            tls = httpx.post(url + "/login", data={"username": "alice", "password": UI_PASSWORD},
                             headers={"X-Forwarded-Proto": "https"})
            assert tls.status_code == 200, tls.text
            session = "; ".join(c.split(";")[0] for c in tls.headers.get_list("set-cookie")
                                if c.startswith("__Host-access-token"))
            assert session, tls.headers.get_list("set-cookie")
            over_tls, port = url.replace("http://", "https://"), urlsplit(url).port
            tls_headers = {"X-Forwarded-Proto": "https", "Cookie": session}
            assert _root(http, **tls_headers, **{"X-Forwarded-For": "203.0.113.5"}) == over_tls
            assert _root(http, **tls_headers, **{"Host": f"localhost:{port}"}) == f"https://localhost:{port}"
            assert _root(http, **{**FORGED, "Cookie": session}) == over_tls
            assert _root(http) == url
    finally:
        demo.close()


def test_a_session_pushed_out_while_its_stream_is_open_keeps_its_messages_and_leaves_no_traceback(ui_world, capfd,
                                                                                                  caplog, monkeypatch):
    """Found while fixing the two streams: the guard itself took an open stream's session away the same way. An
    account's sessions past SESSIONS_PER_ACCOUNT (2 * that, pinned ones too) are forgotten, and a forgotten one lost
    its messages, so its open stream raised Gradio's 404 inside itself (the same traceback), as did the sweep of
    sessions no account holds. A session keeps its messages while its stream is open, forgotten or not."""
    monkeypatch.setattr(gradio_routes, "SESSIONS_PER_ACCOUNT", 1)  # read when the guard starts: at most 2 sessions
    monkeypatch.setattr(gradio_routes, "SWEEP_EVERY_S", 0.0)  # and a forgotten one swept at the next request
    monkeypatch.setattr(gradio_routes, "UNOWNED_GRACE_S", 0.0)
    demo, url = launch(ui_world)
    capfd.readouterr()
    session = "kept-open"
    try:
        with signed_in(url, "alice") as http:
            joined(http, demo, session)
            _streamed(http, session)
            stream = _raw_stream(url, http, session)
            try:
                assert _status(stream)[0] == 200
                for i in range(4):  # other tabs: each claims a session, its heartbeat opened and closed
                    with http.stream("GET", f"/gradio_api/heartbeat/tab-{i}") as beat:
                        assert beat.status_code == 200
                kept = session in demo._queue.pending_messages_per_session
                time.sleep(11)  # a stream whose messages went raises within 10 s (its wait for a message)
            finally:
                stream.close()
    finally:
        demo.close()
    _no_traceback(capfd, caplog)
    assert kept  # its messages were kept while it was open


def _raw_get(url: str, http: httpx.Client, target: str, **headers: str) -> socket.socket:
    """``GET target`` on a connection of its own, with ``http``'s cookies and ``headers``, left open."""
    parts = urlsplit(url)
    cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    sock = socket.create_connection((parts.hostname, parts.port), timeout=15)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nCookie: {cookie}\r\n{extra}\r\n".encode())
    return sock


def _answer(http: httpx.Client, target: str, headers: dict[str, str]) -> tuple[int, str]:
    """The status of ``GET target`` and, unless it is a 200 (a stream that may never end), its body."""
    with http.stream("GET", target, headers=headers) as r:
        return r.status_code, "" if r.status_code == 200 else r.read().decode()


def test_another_sites_page_cannot_open_a_heartbeat_or_a_stream_for_a_signed_in_person(served):
    """Found by the sixth review of 5 Dec 2026: ``GET /gradio_api/heartbeat/H`` answered a request another site's page
    made the browser send (an <img>: the Lax cookie goes with it, ``Sec-Fetch-Site: cross-site``, or same-site from a
    sibling subdomain), so any site a signed-in person visited could claim session hashes for them and hold streams
    open; ``/queue/data`` and ``/call/{api}/{event}`` likewise reached the session checks. Each is refused (403, one
    sentence) before the hash is claimed; the app's own page (same-origin) and clients without the header still work."""
    world, demo, url = served
    with signed_in(url, "alice") as alice, signed_in(url, "bob") as bob:
        for site in ("cross-site", "same-site", "Cross-Site"):
            for target in ("/gradio_api/heartbeat/xsite-claimed", "/gradio_api/queue/data?session_hash=xsite-claimed",
                           "/gradio_api/call/next_batch/some-event"):
                status, text = _answer(alice, target, {"Sec-Fetch-Site": site, "Sec-Fetch-Mode": "no-cors",
                                                       "Sec-Fetch-Dest": "image"})
                assert status == 403 and text == web_guard.OTHER_SITE_STREAM, (site, target, status, text)
            # a top-level navigation from another site (a link) is refused as well: no page opens these as a page
            assert _answer(alice, "/gradio_api/heartbeat/xsite-claimed", {
                "Sec-Fetch-Site": site, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"})[0] == 403
        # the hash was not claimed for alice: bob's own page may use it
        with bob.stream("GET", "/gradio_api/heartbeat/xsite-claimed", headers={"Sec-Fetch-Site": "same-origin"}) as beat:
            assert beat.status_code == 200
        for site in ("same-origin", "none", None):
            headers = {"Sec-Fetch-Site": site} if site else {}
            with alice.stream("GET", "/gradio_api/heartbeat/alice-own", headers=headers) as beat:
                assert beat.status_code == 200, site


def test_an_account_holds_at_most_its_share_of_streams_open(ui_world, monkeypatch, capfd, caplog):
    """Found by the sixth review of 5 Dec 2026: one signed-in rater held 150 heartbeats open (each a connection and a
    task of the server's), and more at will. An account holds at most STREAMS_PER_ACCOUNT heartbeats and result
    streams open; one more gets 429 and one sentence, another account is untouched, and closing one lets one in."""
    monkeypatch.setattr(web_guard, "STREAMS_PER_ACCOUNT", 3)
    demo, url = launch(ui_world)
    capfd.readouterr()
    held: list[socket.socket] = []
    try:
        with signed_in(url, "alice") as alice, signed_in(url, "bob") as bob:
            for i in range(3):
                held.append(_raw_get(url, alice, f"/gradio_api/heartbeat/beat-{i}"))
                assert _status(held[-1])[0] == 200
            over = _raw_get(url, alice, "/gradio_api/heartbeat/beat-3")
            status, body = _status(over)
            over.close()
            assert status == 429 and body.decode() == web_guard.TOO_MANY_STREAMS.format(n=3), body
            joined(alice, demo, "results-over")  # a stream of results counts too
            over = _raw_stream(url, alice, "results-over")
            status, body = _status(over)
            over.close()
            # the page's stream is refused in the form its Gradio client shows (seventh review): 200, the error of a
            # failed event, then close_stream (a 429 read as a lost connection: the page reloaded, in a loop)
            assert status == 200, body
            messages = [json.loads(line[len(b"data: "):]) for line in body.split(b"\n") if line.startswith(b"data: ")]
            assert [m["msg"] for m in messages] == ["process_completed", "close_stream"], body
            assert messages[0]["success"] is False and "event_id" not in messages[0], messages
            assert messages[0]["output"]["error"] == web_guard.TOO_MANY_STREAMS.format(n=3), messages
            assert messages[0]["output"]["visible"] is True, messages
            assert demo.server_app.middleware_stack.stats.refused >= 2
            with bob.stream("GET", "/gradio_api/heartbeat/bob-beat") as beat:
                assert beat.status_code == 200
            held.pop().close()
            deadline = time.monotonic() + 5
            while True:  # the server sees the close (its disconnect) at once; a moment for it to reach the count
                with alice.stream("GET", "/gradio_api/heartbeat/beat-4") as beat:
                    if beat.status_code == 200:
                        break
                assert time.monotonic() < deadline, "the closed heartbeat still counted"
                time.sleep(0.1)
            while True:  # with a heartbeat closed (beat-4 too, as the server sees its close), the results are read
                with alice.stream("GET", "/gradio_api/queue/data", params={"session_hash": "results-over"}) as stream:
                    if stream.status_code == 200:
                        assert any("process_completed" in line for line in stream.iter_lines())
                        break
                assert time.monotonic() < deadline + 5, "the closed heartbeat still counted"
                time.sleep(0.1)
    finally:
        for s in held:
            s.close()
        demo.close()
    _no_traceback(capfd, caplog)


def _to_last_chunk(sock: socket.socket) -> bytes:
    """What comes on ``sock`` up to a chunked answer's terminating chunk, which must come within 5 s."""
    sock.settimeout(5)
    got = b""
    while not got.endswith(b"0\r\n\r\n"):
        chunk = sock.recv(4096)
        assert chunk, got  # the connection closed before the answer's end
        got += chunk
    return got


def test_a_heartbeat_opened_before_a_log_out_ends_with_its_session(ui_world, monkeypatch, capfd, caplog):
    """Found by the seventh review of 5 Dec 2026: a heartbeat opened before a log out kept answering "ALIVE" every
    15 s for as long as its connection stayed open (the Gradio session pinned, one of the account's streams held),
    though every new request with that cookie was refused. Now it ends within HEARTBEAT_RECHECK_S of the session
    ending, properly (the chunked answer's last chunk, no traceback), and the account's slots are free again."""
    monkeypatch.setattr(web_guard, "STREAMS_PER_ACCOUNT", 2)
    monkeypatch.setattr(web_guard, "HEARTBEAT_RECHECK_S", 0.3)
    demo, url = launch(ui_world)
    capfd.readouterr()
    held: list[socket.socket] = []
    try:
        with signed_in(url, "alice") as old, signed_in(url, "alice") as new:
            for i in range(2):
                held.append(_raw_get(url, old, f"/gradio_api/heartbeat/old-beat-{i}"))
                status, _ = _status(held[-1])
                assert status == 200
            time.sleep(1.0)  # several checks of a live session: its heartbeats stay open
            with new.stream("GET", "/gradio_api/heartbeat/new-beat") as beat:
                assert beat.status_code == 429  # the account's two streams are the old page's
            assert old.post("/logout", follow_redirects=False).status_code == 303
            for sock in held:  # each ends: the chunked answer's terminating chunk
                _to_last_chunk(sock)
            deadline = time.monotonic() + 5
            while True:  # the slots are free: the new session's page opens its heartbeat
                with new.stream("GET", "/gradio_api/heartbeat/new-beat") as beat:
                    if beat.status_code == 200:
                        break
                assert time.monotonic() < deadline, "the ended session's heartbeats still counted"
                time.sleep(0.1)
        _no_traceback(capfd, caplog)
    finally:
        for s in held:
            s.close()
        demo.close()


def test_a_heartbeat_outlives_a_moment_without_the_database(ui_world, monkeypatch, capfd, caplog):
    """Found by review: the heartbeat's session check (every HEARTBEAT_RECHECK_S) raised out of the stream when the
    database was out for a moment (a restart, a fail-over), which ended every open page's heartbeat (Gradio then drops
    the page's queued events) with a traceback each. Now the stream stays open, one warning is logged, and it is
    checked again: a log out afterwards still ends it."""
    from sqlalchemy.exc import OperationalError

    monkeypatch.setattr(web_guard, "HEARTBEAT_RECHECK_S", 0.3)
    demo, url = launch(ui_world)
    guard = demo.server_app.middleware_stack
    real_check = sessions.SessionStore.check
    down = {"on": False}

    def check(self, token):
        if down["on"]:
            raise OperationalError("SELECT sessions", {}, Exception("server closed the connection unexpectedly"))
        return real_check(self, token)

    monkeypatch.setattr(sessions.SessionStore, "check", check)
    capfd.readouterr()
    sock = None
    try:
        with signed_in(url, "alice") as alice:
            sock = _raw_get(url, alice, "/gradio_api/heartbeat/through-outage")
            assert _status(sock)[0] == 200
            down["on"] = True
            time.sleep(1.5)  # several checks, each failing
            down["on"] = False
            assert "through-outage" in guard.heartbeats, "the heartbeat ended when its check could not reach the database"
            warned = [r.getMessage() for r in caplog.records if "open heartbeat" in r.getMessage()]
            assert len(warned) == 1 and "OperationalError" in warned[0], warned
            caplog.clear()
            assert alice.post("/logout", follow_redirects=False).status_code == 303
            _to_last_chunk(sock)
        _no_traceback(capfd, caplog)
    finally:
        if sock is not None:
            sock.close()
        demo.close()


def test_the_page_carries_its_streams_script_before_gradios_client(served):
    """Eighth review of 5 Dec 2026: the page's handling of its refused streams (ui_assets.STREAMS_JS) must run before
    Gradio's client opens the heartbeat, as that client starts; a script given to ``launch(head=...)`` runs after.
    The guard puts it first in the page's head, signed in or not (the login page is the same page), the answer's
    length following; nothing else is changed."""
    _, _, url = served
    with httpx.Client(base_url=url) as anonymous, signed_in(url, "alice") as http:
        for client in (anonymous, http):
            page = client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert int(page.headers["content-length"]) == len(page.content)
            head = page.content.index(b"<head>") + len(b"<head>")
            assert page.content[head:head + len(web_guard.PAGE_SCRIPT)] == web_guard.PAGE_SCRIPT
            assert page.content.count(web_guard.PAGE_SCRIPT) == 1
            assert page.content.index(web_guard.PAGE_SCRIPT) < page.content.index(b'<script type="module"')
            config = http.get("/config")  # any other answer as Gradio gave it
            assert config.status_code == 200 and web_guard.PAGE_SCRIPT not in config.content



def test_a_head_of_the_page_says_the_length_its_get_has(served):
    """Found by the eighth review of 5 Dec 2026 (its second reader): the guard put PAGE_SCRIPT in the page's GET only,
    so ``HEAD /`` said the template's own Content-Length (13,341 bytes where the GET's was 18,895): a server must not
    send a HEAD a Content-Length other than the GET's (RFC 9110, 8.6). Now both say the length of the page sent."""
    _, _, url = served
    with httpx.Client(base_url=url) as anonymous, signed_in(url, "alice") as http:
        for client in (anonymous, http):
            page, head = client.get("/"), client.head("/")
            assert head.status_code == 200 and head.content == b""
            assert int(head.headers["content-length"]) == len(page.content) == int(page.headers["content-length"])
