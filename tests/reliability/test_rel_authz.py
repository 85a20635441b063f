"""Authorization at the time a request is carried out (seventh review, 5 Dec 2026).

The front door (``app.web_guard``) checks the session of every HTTP request, but Gradio runs an event later, when its
turn in the queue comes, with the user name it read at the join. A session that ended between the two (log out, a
password change) let the event run as its account all the same. These tests hold the queue's turn with events of
other accounts, end the session while the event waits, and look at the database afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from app import auth, ui, ui_rate
from app.tools import harness
from db import repo
from db.engine import read_session

PASSWORD = "correct horse battery"  # tests/app/conftest.py gives every account this password
RATING_GROUP = 4  # the concurrency limit of the "rating" group (app.ui: gr.api(submit_rating, concurrency_limit=4))


@pytest.fixture
def served(rel_world) -> Iterator[tuple]:
    """``rel_world`` (accounts alice and bob, raters; root, admin; an open round of 6 images) served on 127.0.0.1."""
    services = rel_world.services(batch_size=4)
    demo = ui.build_demo(services)
    demo.launch(prevent_thread_lock=True, **{**ui.launch_kwargs(services), "server_port": harness.free_port(),
                                             "quiet": True})
    try:
        yield rel_world, demo, demo.local_url.rstrip("/")
    finally:
        demo.close()


def sign_in(url: str, name: str) -> httpx.Client:
    http = httpx.Client(base_url=url, timeout=30)
    r = http.post("/login", data={"username": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return http


class HeldTurns:
    """``ui_rate.submit`` (the API's submit_rating) made to wait for ``release`` when bob or root call it, so that
    their calls hold every turn of the rating group and the next call waits in Gradio's queue."""

    def __init__(self, monkeypatch) -> None:
        self.gate, self.running, self._lock = threading.Event(), 0, threading.Lock()
        original = ui_rate.submit

        def held(factory, who, image_id, score):
            if who.name in ("bob", "root"):
                with self._lock:
                    self.running += 1
                self.gate.wait(30)
            return original(factory, who, image_id, score)

        monkeypatch.setattr(ui_rate, "submit", held)

    def wait_until_full(self, n: int) -> None:
        deadline = time.monotonic() + 30
        while self.running < n:
            assert time.monotonic() < deadline, f"only {self.running} of {n} held calls started"
            time.sleep(0.02)


def submit(http: httpx.Client, image_id: int, score: int) -> str:
    r = http.post("/gradio_api/call/submit_rating", json={"data": [image_id, score]})
    assert r.status_code == 200, r.text
    return r.json()["event_id"]


def wait_until_run(demo, event_id: str) -> None:
    deadline = time.monotonic() + 30
    while event_id in demo._queue.event_ids_to_events:
        assert time.monotonic() < deadline, "the queued event never ran"
        time.sleep(0.02)


def rating_of(world, name: str, image_id: int) -> int | None:
    with read_session(world.factory) as s:
        found = repo.find_rating(session=s, image_id=image_id, rater_id=world.accounts[name])
        return None if found is None else found.score


@pytest.mark.parametrize("ended_by", ["logout", "password change"])
def test_an_event_waiting_in_the_queue_does_not_run_after_its_session_ended(served, monkeypatch, ended_by):
    """alice's rating waits in the queue behind four held ones; her session ends (she logs out, or an admin changes
    her password: what ends a stolen session); then the queue moves. Before the fix the rating was saved (the event
    ran as 'alice', the name Gradio read when it joined); now the handler finds the request's session ended and
    saves nothing. The held ratings of bob and root, whose sessions live, are saved."""
    world, demo, url = served
    held = HeldTurns(monkeypatch)
    bob, root, alice = sign_in(url, "bob"), sign_in(url, "root"), sign_in(url, "alice")
    images = world.image_ids
    try:
        made = [(http, submit(http, image, 5)) for http, image in
                ((bob, images[0]), (bob, images[1]), (bob, images[2]), (root, images[3]))]
        held.wait_until_full(RATING_GROUP)
        waiting = submit(alice, images[4], 9)
        assert waiting in demo._queue.event_ids_to_events  # joined, its turn not come
        if ended_by == "logout":
            r = alice.post("/logout", headers={"Origin": url}, follow_redirects=False)
            assert r.status_code == 303
            assert alice.get("/config").status_code == 401  # the cookie is dead for every new request
        else:
            auth.set_password(world.factory, name="alice", password="another long password",
                              actor=auth.Who(world.accounts["root"], "root", "admin", local=False))
        held.gate.set()
        wait_until_run(demo, waiting)
        for http, event in made:  # each held rating answered (read, so that its transaction has committed)
            assert http.get(f"/gradio_api/call/submit_rating/{event}").text.startswith("event: complete")
        assert rating_of(world, "alice", images[4]) is None
        assert [rating_of(world, "bob", i) for i in images[:3]] + [rating_of(world, "root", images[3])] == [5] * 4
    finally:
        held.gate.set()
        for http in (bob, root, alice):
            http.close()
