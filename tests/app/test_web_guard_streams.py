"""The guard's handling of result streams and forwarding headers: findings of the fourth review of 5 Dec 2026, each
reproduced against a real server on 127.0.0.1 (the helpers and the ``served`` fixture are test_web_guard's)."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from app import gradio_routes, web_guard
from app.settings import Settings
from tests.app.test_web_guard import UI_PASSWORD, _no_traceback, joined, launch, queue_join, signed_in


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


def test_a_second_stream_of_one_session_is_refused_and_leaves_no_traceback(served, capfd, caplog):
    """Found by the fourth review of 5 Dec 2026: a rater opened two ``GET /gradio_api/queue/data`` streams of one
    session and dropped one; Gradio then deleted the session's messages and the other stream, already answering 200,
    raised a 404 inside itself: 78 lines of traceback in the log, repeatable by any rater. A session has one stream
    at a time now (a second gets 409, one sentence), and the page's own sequence, each stream opened as the last one
    closed, is answered as before."""
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
            second_status, second_answer = _status(second)
            waited = time.monotonic() - started
            first.close()  # the client drops it: Gradio deletes the session's messages
            time.sleep(11)  # a stream Gradio still runs finds that within 10 s (its wait for a message)
        finally:
            first.close()
            if second is not None:
                second.close()
        again = http.get("/gradio_api/queue/data", params={"session_hash": session})
    _no_traceback(capfd, caplog)
    assert second_status == 409 and second_answer == web_guard.ONE_STREAM.encode(), second_answer
    assert waited >= web_guard.STREAM_WAIT_S * 0.9  # it waited for the first to end
    # the dropped stream took the session's messages with it: one sentence, before Gradio
    assert (again.status_code, again.text) == (404, "No event of yours is waiting for its results in that session.")


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
