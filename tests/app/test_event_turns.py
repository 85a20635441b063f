"""Whose turn an event's call waits for (the sixth review of 5 Dec 2026).

The page's handlers set no concurrency limit, so each ran under Gradio's default of one call at a time for all users
together, and an account could have EVENTS_IN_FLIGHT (32) events waiting: a rater keeping 24 page loads in flight
made another user's page load take 4-7 s instead of 0.22 s. Now the page's events run ``ui.PAGE_CONCURRENCY`` at a
time (those that change state still one at a time, the rating group four), and the guard lets an account have
``gradio_routes.EVENTS_PER_HANDLER`` of one event waiting or running.

The served tests block a handler on a ``threading.Event`` for one account and watch another's call get through: no
timing is measured, only whether the call ran while the first was held.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from app import gradio_routes, ui, ui_assets, ui_rate
from tests.app.test_web_guard import finished, launch, queue_join, signed_in

WAIT_S = 30  # how long a test waits for something that happens at once when the app is right


@pytest.fixture
def app_served(ui_world):
    demo, url = launch(ui_world)
    yield ui_world, demo, url
    demo.close()


def effective_limits(demo) -> dict[int, int | None]:
    """Each server-side event's concurrency limit as Gradio's queue resolves it (its own ``create_event_queue_for_fn``:
    an event's ``"default"`` read from ``queue(default_concurrency_limit=...)``, a group of events sharing a
    ``concurrency_id`` held to the lowest limit any member sets), by fn index."""
    queue = demo._queue
    fns = {i: fn for i, fn in demo.fns.items() if fn.fn is not None}
    for fn in fns.values():
        queue.create_event_queue_for_fn(fn)
    return {i: queue.event_queue_per_concurrency_id[fn.concurrency_id].concurrency_limit for i, fn in fns.items()}


def test_page_events_run_several_at_once_and_state_changing_ones_one_at_a_time(ui_world):
    """The page load, the tabs' shows and the timers' refreshes ran one call at a time for everyone (Gradio's default);
    they run several at once now. The admin's buttons that change state stay at one; the rating group ("rating":
    ratings, skips, pair and A/B votes, the API's submits) is four, as its members say: the Compare tab's vote set no
    limit and, Gradio keeping a group's lowest, put the whole group at the default of one once anyone voted there."""
    demo = ui.build_demo(ui_world.services())
    limits = effective_limits(demo)
    by_name: dict[str, set] = {}
    for i, limit in limits.items():
        by_name.setdefault(demo.fns[i].name, set()).add(limit)
    reads = ["on_load", "on_dashboard", "on_taste", "on_refresh", "on_show", "on_poll", "on_admin_timer",
             "on_rate_poll", "on_admin_tab", "on_admin_accounts", "on_quality", "on_show_raters", "on_new_batch"]
    for name in reads:
        assert by_name[name] and all(limit is not None and limit > 1 for limit in by_name[name]), (name, by_name[name])
    writes = ["on_confirm", "on_create", "on_add_user", "on_user_delete", "on_user_role", "on_user_password",
              "on_set_raters", "on_retry", "on_reopen", "on_pause", "on_resume", "on_dash_access", "on_standardize",
              "on_gold", "on_save", "on_set", "on_rollback", "on_build_export", "on_own_password"]
    for name in writes:
        assert by_name[name] == {1}, (name, by_name[name])
    rating = {limits[i] for i, fn in demo.fns.items() if fn.fn is not None and fn.concurrency_id == "rating"}
    assert rating == {4}, rating
    assert len([fn for fn in demo.fns.values() if fn.concurrency_id == "rating"]) >= 6  # rate, skip, undo, 2 votes, API


def _hold(monkeypatch, module, name: str, account: str):
    """Make ``module.name`` (a handler's helper whose third positional argument is the caller's ``Who``) wait on a gate
    for ``account``'s calls; returns (gate, entered: account -> Event set when a call of that account entered)."""
    real = getattr(module, name)
    gate = threading.Event()
    entered: dict[str, threading.Event] = {}
    lock = threading.Lock()

    def held(*args, **kwargs):
        who = args[2] if len(args) > 2 else kwargs.get("who")
        with lock:
            entered.setdefault(who.name, threading.Event()).set()
        if who.name == account:
            assert gate.wait(120), "the test never opened the gate"
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, held)
    return gate, entered


def _entered(entered: dict[str, threading.Event], name: str) -> bool:
    """Whether a call of ``name`` enters the held helper within WAIT_S."""
    for _ in range(WAIT_S * 20):
        if name in entered:
            return entered[name].wait(WAIT_S)
        time.sleep(0.05)
    return False


def test_another_accounts_page_load_is_not_queued_behind_a_held_one(app_served, monkeypatch):
    """Alice's page load is held in its handler; Bob's page load runs meanwhile (under a limit of one it waited
    until Alice's ended: the review's 4-7 s)."""
    _, demo, url = app_served
    gate, entered = _hold(monkeypatch, ui_rate, "load_batch", "alice")
    with signed_in(url, "alice") as alice, signed_in(url, "bob") as bob:
        try:
            r = queue_join(alice, demo, "on_load", [], "alicepage1")
            assert r.status_code == 200, r.text
            held = r.json()["event_id"]
            assert _entered(entered, "alice"), "alice's page load never ran"
            r = queue_join(bob, demo, "on_load", [], "bobpage1")
            assert r.status_code == 200, r.text
            assert _entered(entered, "bob"), "bob's page load waited behind alice's held one"
            finished(demo, r.json()["event_id"])
            assert held in demo._queue.event_ids_to_events  # alice's is still held: bob's did not wait for it
        finally:
            gate.set()
        finished(demo, held)


def test_an_account_may_have_three_of_one_event_waiting_or_running(app_served, monkeypatch):
    """Alice's next_batch calls are held in their handler: her fourth is refused (429, one sentence; JSON on the page's
    own route), while her other events and Bob's next_batch are admitted and run; once hers end she may call again.
    Before, she could have EVENTS_IN_FLIGHT (32) of one event waiting, each holding other accounts' calls of it back."""
    _, demo, url = app_served
    assert gradio_routes.EVENTS_PER_HANDLER == 3
    sentence = gradio_routes.too_many_of_one_event()
    assert sentence.count(".") == 1 and sentence.endswith(".")
    gate, entered = _hold(monkeypatch, ui_rate, "api_batch", "alice")
    with signed_in(url, "alice") as alice, signed_in(url, "bob") as bob:
        held = []
        try:
            for _ in range(gradio_routes.EVENTS_PER_HANDLER):
                r = alice.post("/gradio_api/call/next_batch", json={"data": [1, ""]})
                assert r.status_code == 200, r.text
                held.append(r.json()["event_id"])
            r = alice.post("/gradio_api/call/next_batch", json={"data": [1, ""]})
            assert (r.status_code, r.text) == (429, sentence)
            # refused before it reached the app: the answer says nothing was run, so the page sends it again (ninth
            # review of 6 Dec 2026: the event was lost)
            assert r.headers.get(ui_assets.NOT_RUN_HEADER) == "1"
            r = queue_join(alice, demo, "next_batch", [1, ""], "alicepage2")
            assert (r.status_code, json.loads(r.text)) == (429, {"detail": sentence})
            assert r.headers.get(ui_assets.NOT_RUN_HEADER) == "1"
            r = queue_join(alice, demo, "on_load", [], "alicepage2")  # another event of hers is admitted
            assert r.status_code == 200 and ui_assets.NOT_RUN_HEADER not in r.headers, r.text
            finished(demo, r.json()["event_id"])
            r = bob.post("/gradio_api/call/next_batch", json={"data": [1, ""]})  # another account is not held back
            assert r.status_code == 200, r.text
            assert _entered(entered, "bob")
            finished(demo, r.json()["event_id"])
            assert all(e in demo._queue.event_ids_to_events for e in held)  # hers were held all along
        finally:
            gate.set()
        for event in held:
            finished(demo, event)
        r = alice.post("/gradio_api/call/next_batch", json={"data": [1, ""]})  # ended (unread): not counted here
        assert r.status_code == 200, r.text
        finished(demo, r.json()["event_id"])


def test_an_event_gradios_full_or_stopped_queue_refused_says_it_was_not_run(app_served, monkeypatch):
    """Found by the tenth review of 6 Dec 2026: Gradio answers an event 503 when its queue is full (``max_size``) or
    stopped, before the event is queued, so nothing was done; the answer did not say so (``NOT_RUN_HEADER``), so the
    page did not send it again and the rating was lost. The page's route now says so on such a 503 (the page then
    sends it again, tests/app/test_streams_js.py); the event did not run, and sent again it runs once."""
    _, demo, url = app_served
    queue = demo._queue
    ran: list[str] = []
    real = ui_rate.api_batch
    monkeypatch.setattr(ui_rate, "api_batch", lambda *a, **k: ran.append(a[2].name) or real(*a, **k))
    with signed_in(url, "alice") as alice:
        monkeypatch.setattr(queue, "max_size", 0)  # Gradio's own check: len(queue) >= max_size
        r = queue_join(alice, demo, "next_batch", [1, ""], "alicefull")
        assert r.status_code == 503 and r.json()["detail"].startswith("Queue is full."), r.text
        assert r.headers.get(ui_assets.NOT_RUN_HEADER) == "1"
        assert ran == [] and not queue.event_ids_to_events
        monkeypatch.setattr(queue, "max_size", None)
        r = queue_join(alice, demo, "next_batch", [1, ""], "alicefull")  # sent again: runs, once
        assert r.status_code == 200 and ui_assets.NOT_RUN_HEADER not in r.headers, r.text
        finished(demo, r.json()["event_id"])
        assert ran == ["alice"]
        r = alice.post("/gradio_api/call/next_batch", json={"data": [1, ""]})  # a script's route: as Gradio answers
        assert r.status_code == 200, r.text
        finished(demo, r.json()["event_id"])
        queue.stopped = True  # the server shutting down (last: the queue's loop ends; the fixture closes the demo)
        r = queue_join(alice, demo, "next_batch", [1, ""], "alicefull")
        assert (r.status_code, r.json()) == (503, {"detail": "Queue is stopped."})
        assert r.headers.get(ui_assets.NOT_RUN_HEADER) == "1" and ran == ["alice", "alice"]
