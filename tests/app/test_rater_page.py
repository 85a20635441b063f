"""A rater's page config has nothing of the Admin tab (``app.rater_page``; fourteenth review, 6 Dec 2026).

Gradio's ``GET /config`` and the page's ``window.gradio_config`` listed the Admin tab's layout and every event's
function name (``on_user_delete``, ``on_create``, ...) to any signed-in rater. The app served (with the guard, as
``python -m app serve`` does) now gives a rater both without the Admin tab's components and events, and an admin
both whole; the page built from a rater's config still works in Chromium, and the admin's still shows the tab."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import re
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest

from app import gradio_routes, rater_page, ui_admin_tab, ui_assets, web_guard
from db import repo
from db.engine import read_session
from tests.app.e2e_support import MARKS, close_toasts, sign_in, watch_errors
from tests.app.test_admin_switch import second_experiment
from tests.app.test_web_guard import LOCAL, UI_PASSWORD, launch, signed_in

# elem_ids laid out on the Admin tab (app.ui_admin_tab), and the tab's own
ADMIN_ELEM_IDS = ("tab-admin", "dashboard-access", "user-delete", "user-password", "build-export", "audit-log")
PAGE_CONFIG = re.compile(r"<script>window\.gradio_config = (.*?);</script>", re.S)


def _admin_event_names(demo) -> set[str]:
    """The api names of the events whose handler refuses anyone but an admin (``admin_only``)."""
    return {bf.api_name for bf in demo.fns.values() if bf.fn is not None and gradio_routes.is_admin_only(bf.fn)}


def _configs(http: httpx.Client) -> tuple[dict, dict, str, str]:
    """(/config's JSON, the page's config, /config's text, the page's text) as ``http``'s account gets them."""
    config, page = http.get("/config"), http.get("/")
    assert config.status_code == 200 and page.status_code == 200, (config.text[:300], page.text[:300])
    for r in (config, page):
        assert int(r.headers["content-length"]) == len(r.content)
    (embedded,) = PAGE_CONFIG.findall(page.text)
    return config.json(), json.loads(embedded), config.text, page.text


def _elem_ids(config: dict) -> set[str]:
    return {c["props"].get("elem_id") for c in config["components"]} - {None}


def _consistent(config: dict) -> None:
    """Every event and the layout name only components the config has, and its page entry agrees with it (what
    Gradio's own one-page configs hold, ``gradio.routes.get_page_config``)."""
    ids = {c["id"] for c in config["components"]}
    events = {d["id"] for d in config["dependencies"]}

    def laid_out(node: dict) -> set[int]:
        return {node["id"], *(i for child in node.get("children", []) for i in laid_out(child))} - {None}

    root = config["layout"]["id"]  # the Blocks itself (the page load's target), not a component
    assert laid_out(config["layout"]) <= ids | {root}
    for dep in config["dependencies"]:
        named = {t[0] for t in dep["targets"]} | set(dep["inputs"]) | set(dep["outputs"])
        assert named - {None} <= ids | {root}, dep["api_name"]
        assert dep["trigger_after"] in events | {None} and set(dep["cancels"]) <= events, dep["api_name"]
    for page in config.get("page", {}).values():
        assert set(page["components"]) <= ids and set(page["dependencies"]) <= events
        assert laid_out(page["layout"]) <= ids | {root}


def test_a_raters_config_and_page_have_nothing_of_the_admin_tab_and_an_admins_have_it_all(served_app):
    world, demo, url = served_app
    admin_events = _admin_event_names(demo)
    assert {"on_user_delete", "on_create", "on_admin_tab"} <= admin_events  # the names looked for are real
    with signed_in(url, "alice") as http:
        config, embedded, config_text, page_text = _configs(http)
        info = http.get("/gradio_api/info", params={"all_endpoints": "true"}).text
    for seen in (config, embedded):
        _consistent(seen)
        assert not _elem_ids(seen) & set(ADMIN_ELEM_IDS)
        names = {d["api_name"] for d in seen["dependencies"]}
        assert not names & admin_events
        # what a rater's page runs is still there: its load, the selector, rating, the public API
        assert {"on_load", "on_experiment_1", "on_rate", "submit_rating", "next_batch"} <= names, names
        assert not any(c["props"].get("label") == "Admin" and c["type"] == "tabitem" for c in seen["components"])
    for text in (config_text, page_text, info):
        assert not [name for name in (*admin_events, "tab-admin") if f'"{name}"' in text]
    with signed_in(url, "root") as http:
        config, embedded, _, _ = _configs(http)
    for seen in (config, embedded):
        assert set(ADMIN_ELEM_IDS) <= _elem_ids(seen)
        assert admin_events <= {d["api_name"] for d in seen["dependencies"]}
        # each output of an admin's event has an id the page finds its block by (gradio_routes.name_admin_outputs);
        # a gr.State has no block (nor an elem_id in the config)
        elem_id = {c["id"]: c["props"].get("elem_id") for c in seen["components"] if c["type"] != "state"}
        outputs = {o for d in seen["dependencies"] if d["api_name"] in admin_events for o in d["outputs"] if o in elem_id}
        assert len(outputs) > 10 and all(elem_id[o] for o in outputs), [o for o in outputs if not elem_id[o]]
        # the admin's is Gradio's own, whole
        assert [d["id"] for d in seen["dependencies"]] == [d["id"] for d in demo.config["dependencies"]]
        assert [c["id"] for c in seen["components"]] == [c["id"] for c in demo.config["components"]]


def test_an_event_left_out_of_a_raters_page_is_still_refused_when_sent_by_hand(served_app):
    """The config is trimmed, not the server: an admin's event sent by a rater is refused as before (403)."""
    _, demo, url = served_app
    fn_index = next(i for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_user_delete")
    with signed_in(url, "alice") as http:
        r = http.post("/gradio_api/queue/join", json={"data": ["bob"], "fn_index": fn_index, "session_hash": "abcdefgh12",
                                                      "event_data": None, "trigger_id": None})
    assert r.status_code == 403, r.text


# the Admin tab's quiet events: an admin's page runs them unasked (the tab's timer, a pick of an experiment)
QUIET_ADMIN_EVENTS = {"app.ui_admin_tab:on_admin_experiment", "app.ui_admin_tab:on_admin_timer",
                      "app.ui_admin_tab:on_show_raters", "app.ui_pairs:show_feedback", "app.ui_options:on_experiment"}


def _name(fn) -> str:
    return f"{fn.__module__}:{fn.__name__}"


def _recording(monkeypatch, demo, fn_ids, ran: list[str]) -> None:
    """Each of ``fn_ids``' handlers notes its name in ``ran`` when Gradio runs it (its marks and signature kept)."""
    for fn_id in fn_ids:
        block_fn = demo.fns[fn_id]

        def noting(handler):
            @functools.wraps(handler)
            def noted(*args, **kwargs):
                ran.append(_name(handler))
                return handler(*args, **kwargs)
            return noted

        monkeypatch.setattr(block_fn, "fn", noting(block_fn.fn))


def _join(http: httpx.Client, demo, fn_id: int, session: str, **headers) -> httpx.Response:
    return http.post("/gradio_api/queue/join", headers=headers,
                     json={"data": [None] * len(demo.fns[fn_id].inputs), "fn_index": fn_id, "session_hash": session,
                           "event_data": None, "trigger_id": None})


def _completed(http: httpx.Client, session: str, **headers) -> list[dict]:
    """The session's finished events' messages, read up to the stream's close."""
    done = []
    with http.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}, headers=headers) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data:"):
                message = json.loads(line[5:])
                done += [message] if message.get("msg") == "process_completed" else []
                if message.get("msg") == "close_stream":
                    break
    return done


def test_every_event_left_out_of_a_raters_page_is_refused_to_a_rater_before_it_runs(served_app, monkeypatch):
    """The Admin tab's quiet events (its timer, the experiment's change, the raters field, the feedback and round
    options shown) were not marked ``admin_only``: sent by hand to the queue by a rater, they ran and answered a skip
    (fifteenth review). Every event a rater's page config leaves out (``rater_page.admin_parts``) that runs a handler
    is now refused to a rater with 403 and one sentence, the handler never called; an admin's same requests run."""
    _, demo, url = served_app
    _, left_out = rater_page.admin_parts(demo)
    handled = sorted(i for i in left_out if demo.fns[i].fn is not None)
    quiet = sorted(i for i in handled if _name(demo.fns[i].fn) in QUIET_ADMIN_EVENTS)
    expected = sorted(_name(demo.fns[i].fn) for i in quiet)  # on_show_raters is two events (the tab, the change)
    assert set(expected) == QUIET_ADMIN_EVENTS  # the names looked for are real
    ran: list[str] = []
    _recording(monkeypatch, demo, handled, ran)
    with signed_in(url, "alice") as http:
        for fn_id in handled:
            r = _join(http, demo, fn_id, "alices-page")
            assert r.status_code == 403, (_name(demo.fns[fn_id].fn), r.status_code, r.text)
            assert r.json()["detail"] == "'alice' is a rater; only an admin can do this; reload the page.", r.text
    with signed_in(url, "root") as http:
        for fn_id in quiet:  # the quiet ones only: the others change things
            r = _join(http, demo, fn_id, "roots-page")
            assert r.status_code == 200, (_name(demo.fns[fn_id].fn), r.text)
            (done,) = _completed(http, "roots-page")
            assert done["success"], done
    # the admin's ran, each once (read to their end); none of the rater's, sent before them, ever did
    assert sorted(ran) == expected, ran


def test_the_admin_tabs_quiet_events_run_as_before_in_local_mode(ui_world_factory, monkeypatch):
    """Local mode's one user is the admin: the tab's timer and the experiment's change run for them."""
    world = ui_world_factory(accounts=False)
    demo, url = launch(world, local_mode=True)
    try:
        quiet = sorted(i for i, bf in demo.fns.items() if bf.fn is not None and _name(bf.fn) in QUIET_ADMIN_EVENTS)
        expected = sorted(_name(demo.fns[i].fn) for i in quiet)
        assert set(expected) == QUIET_ADMIN_EVENTS
        ran: list[str] = []
        _recording(monkeypatch, demo, quiet, ran)
        with httpx.Client(base_url=url, timeout=30) as http:
            for fn_id in quiet:
                r = _join(http, demo, fn_id, "local-page", **LOCAL)
                assert r.status_code == 200, (_name(demo.fns[fn_id].fn), r.text)
                (done,) = _completed(http, "local-page", **LOCAL)
                assert done["success"], done
        assert sorted(ran) == expected, ran
    finally:
        demo.close()


def test_a_role_change_applies_to_the_next_request_of_an_account_already_signed_in(served_app):
    """A role changed on the Admin tab shows in the page only at its next reload, but the front door's check is of
    the role now: an admin made a rater while signed in has their next admin request refused (403, one sentence),
    and a rater made an admin has theirs run, both without signing in again. Each answer that says the role says the
    account's role version too: how many times its role changed (nineteenth review, 7 Dec 2026)."""
    from app import auth

    world, demo, url = served_app
    auth.add_user(world.factory, name="carol", role="admin", password=UI_PASSWORD)
    (timer,) = [i for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_admin_timer"]
    (role,) = [i for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_user_role"]

    def timer_answer(http: httpx.Client, session: str, changes: int) -> int:
        r = _join(http, demo, timer, session)
        assert r.headers.get(ui_assets.ROLE_VERSION_HEADER) == str(changes), r.headers
        if r.status_code == 200:
            (done,) = _completed(http, session)
            assert done["success"], done
        # an event joined for an admin says so (the page's not-an-admin flag cleared: seventeenth review); a refused
        # one says the account is no admin's
        assert r.headers.get(ui_assets.NOT_ADMIN_HEADER) == {200: "0", 403: "1"}[r.status_code], r.headers
        return r.status_code

    def set_role(name: str, new: str) -> None:
        with signed_in(url, "root") as http:
            r = http.post("/gradio_api/queue/join", json={"data": [name, new], "fn_index": role,
                                                          "session_hash": "roots-page", "event_data": None,
                                                          "trigger_id": None})
            assert r.status_code == 200, r.text
            (done,) = _completed(http, "roots-page")
            assert done["success"], done
        with read_session(world.factory) as s:  # done (the database says so), not merely answered
            assert repo.get_rater_by_name(session=s, name=name).role == new

    with signed_in(url, "carol") as carol, signed_in(url, "alice") as alice:
        # the guard remembers a session's account for recheck_s (2 s); long here, so that what is checked is the
        # change itself taking effect, not the memory running out while the change is made (a slow machine)
        web_guard.installed(demo.server_app).sessions.recheck_s = 600
        assert (timer_answer(carol, "carols-page", 0), timer_answer(alice, "alices-page", 0)) == (200, 403)
        (pick,) = [i for i, bf in demo.fns.items()
                   if bf.fn is not None and (bf.fn.__module__, bf.fn.__name__) == ("app.ui", "on_experiment")]
        r = _join(alice, demo, pick, "alices-page")  # a rater's event, joined: nothing said about admins
        assert r.status_code == 200 and not {ui_assets.NOT_ADMIN_HEADER, ui_assets.ROLE_VERSION_HEADER} & set(r.headers), \
            (r.text, r.headers)
        (done,) = _completed(alice, "alices-page")
        assert done["success"], done
        set_role("carol", "rater")
        set_role("alice", "admin")
        set_role("alice", "admin")  # no change: not counted
        r = _join(carol, demo, timer, "carols-page")
        assert r.status_code == 403, r.text
        assert r.json()["detail"] == "'carol' is a rater; only an admin can do this; reload the page.", r.text
        # said to the page, which then sends the Admin tab's events it fires by itself no more (sixteenth review)
        assert r.headers.get(ui_assets.NOT_ADMIN_HEADER) == "1", r.headers
        assert r.headers.get(ui_assets.ROLE_VERSION_HEADER) == "1", r.headers
        assert timer_answer(alice, "alices-page", 1) == 200
        other = carol.post("/gradio_api/queue/join", json={"data": [], "fn_index": 10**6, "session_hash": "carols-page"})
        assert other.status_code == 404 and ui_assets.NOT_ADMIN_HEADER not in other.headers, other.headers
        # another 403, not about the account's role, is not said so: the session of another account
        theirs = alice.post("/gradio_api/queue/join", json={"data": [world.experiment_id], "fn_index": timer,
                                                            "session_hash": "carols-page", "event_data": None,
                                                            "trigger_id": None})
        assert theirs.status_code == 403 and ui_assets.NOT_ADMIN_HEADER not in theirs.headers, theirs.headers
        assert theirs.json()["detail"] == "This session of the app belongs to another account.", theirs.text


def test_an_answer_that_cannot_be_trimmed_is_not_passed_on_to_a_rater(caplog):
    """A compressed page, or one whose config is not where Gradio's template writes it, gets a 500 with one sentence
    (and the reason in the log), never the untrimmed config."""
    html = b"<html><head></head><body><script>window.gradio_config = {\"components\": []};</script></body></html>"
    cases = {"compressed": ([(b"content-type", b"text/html"), (b"content-encoding", b"gzip")], b"\x1f\x8b..."),
             "no config": ([(b"content-type", b"text/html")], b"<html><head></head><body>nothing</body></html>"),
             "not gradio's shape": ([(b"content-type", b"text/html")], html),
             # a config of another shape inside (a component that is no object): it raised AttributeError, a traceback
             "another shape inside": ([(b"content-type", b"text/html")], html.replace(
                 b'{"components": []}', b'{"components": [1], "dependencies": [], "layout": {}}'))}
    for why, (headers, body) in cases.items():
        sent: list[dict] = []

        async def send(message, sent=sent):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/", "root_path": "", "headers": []}
        wrapped = web_guard._rater_page_send(scope, receive, send, lambda: (frozenset({1}), frozenset({2})))

        async def answer(wrapped=wrapped, headers=headers, body=body):
            await wrapped({"type": "http.response.start", "status": 200, "headers": headers})
            await wrapped({"type": "http.response.body", "body": body, "more_body": False})

        with caplog.at_level("ERROR", logger="seiko.web"):
            asyncio.run(answer())
        assert sent[0]["status"] == 500, why
        assert b"".join(m.get("body", b"") for m in sent[1:]).decode() == web_guard.RATER_PAGE_FAILED, why
        assert "was not served" in caplog.text


def test_the_parts_of_a_config_of_another_shape_are_one_sentence_not_a_traceback(caplog):
    """``admin_parts`` read Gradio's config with ``node["id"]`` and ``dep["id"]``: a config of another shape (after a
    Gradio upgrade) raised KeyError on every rater's page load, a traceback where the guard promises one sentence
    (found by a read-only review of the fourteenth review's fixes). Now it is PageConfigError, and the guard's 500."""

    class Blocks:  # what admin_parts reads of gr.Blocks: its config, blocks and fns
        config = {"layout": {"id": 0, "children": [{"children": []}]}, "dependencies": [{"targets": []}]}
        blocks: dict = {}
        fns: dict = {}

    with pytest.raises(rater_page.PageConfigError, match="not shaped as this app reads it"):
        rater_page.admin_parts(Blocks())

    class EmptyTarget(Blocks):  # an event whose target is empty: t[0] raised IndexError (the same review)
        config = {"layout": {"id": 0, "children": []}, "dependencies": [{"id": 1, "targets": [[]]}]}

    with pytest.raises(rater_page.PageConfigError, match="not shaped as this app reads it"):
        rater_page.admin_parts(EmptyTarget())
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/config", "root_path": "", "headers": []}
    wrapped = web_guard._rater_page_send(scope, receive, send, lambda: rater_page.admin_parts(Blocks()))

    async def answer():
        await wrapped({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await wrapped({"type": "http.response.body", "body": b"{}", "more_body": False})

    with caplog.at_level("ERROR", logger="seiko.web"):
        asyncio.run(answer())
    assert sent[0]["status"] == 500
    assert b"".join(m.get("body", b"") for m in sent[1:]).decode() == web_guard.RATER_PAGE_FAILED


def test_every_way_to_ask_for_the_config_gives_a_rater_the_trimmed_one(served_app):
    """A HEAD of the page, /config with a trailing slash, and /config and the page with Gradio's ``page`` parameter
    all answer a rater without the Admin tab's names (the guard matches the route path and the method, so a narrowed
    match would leak the whole config; these pin it), and the HEAD says the trimmed GET's length."""
    _, demo, url = served_app
    admin_events = _admin_event_names(demo)
    with signed_in(url, "alice") as http:
        page = http.get("/")
        head = http.head("/")
        assert head.status_code == 200 and int(head.headers["content-length"]) == len(page.content)
        for path in ("/config/", "/config?page=", "/?page="):
            r = http.get(path)
            assert r.status_code == 200, (path, r.text[:200])
            assert not [name for name in (*admin_events, "tab-admin") if f'"{name}"' in r.text], path


@pytest.fixture
def served_app(ui_world):
    demo, url = launch(ui_world)
    yield ui_world, demo, url
    demo.close()


@MARKS[0]
@MARKS[1]
def test_a_raters_page_built_from_the_trimmed_config_works_and_an_admins_shows_the_tab(ui_world, e2e):
    """In Chromium: alice's page (the trimmed config) loads her images, rates one with the keyboard and has no Admin
    tab; root's page shows the tab and its contents; no page has a JavaScript error."""
    from db import repo
    from db.engine import read_session

    demo, browser = e2e(ui_world.services(batch_size=4))
    url = demo.local_url.replace("localhost", "127.0.0.1")
    alice, root = browser.new_context().new_page(), browser.new_context().new_page()
    errors = {"alice": watch_errors(alice), "root": watch_errors(root)}
    sign_in(alice, url, "alice", wait_for="#rating-grid .rg-card")
    assert alice.get_by_role("tab", name="Rate").count() == 1
    assert alice.get_by_role("tab", name="Admin").count() == 0 and alice.locator("#tab-admin").count() == 0
    first = int(alice.locator(".rg-card").first.get_attribute("data-image-id"))
    alice.wait_for_function("document.activeElement && document.activeElement.classList.contains('rg-card')")
    alice.keyboard.press("7")
    alice.wait_for_function("window.__seiko && !window.__seiko.busy && window.__seiko.queue.length === 0"
                            " && !document.querySelector('.rg-card[data-state=pending]')", timeout=30_000)
    with read_session(ui_world.factory) as s:
        rating = repo.find_rating(session=s, image_id=first, rater_id=ui_world.accounts["alice"])
        assert rating is not None and rating.score == 7
    sign_in(root, url, "root")
    root.get_by_role("tab", name="Admin").click()
    root.locator("#dashboard-access").wait_for(timeout=60_000)
    assert root.get_by_role("button", name="Close round and train").count() == 1
    assert errors == {"alice": [], "root": []}


def test_the_admin_timer_runs_only_while_the_admin_tab_is_selected(served_app):
    """A read-only review of the fifteenth review's fixes: the Admin tab's timer ran on every admin's page from the
    load, so an admin made a rater got a refusal every dashboard_refresh_s until reloading. In root's config the timer
    starts inactive; the Admin tab's select sets it active and every other tab's select inactive, both in the browser
    with no handler (started by the answer to the tab's handler, a later read-only review found, it ran on when
    another tab was clicked before that answer); the tab's handler (run as root over HTTP) still answers, without the
    timer; a rater's config has none of it. A failed tick stops the timer, in the browser, once the page was told that
    its account is no longer an admin (sixteenth review, 7 Dec 2026), and the tick is then not sent."""
    world, demo, url = served_app
    (tab_event,) = [i for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_admin_tab"]
    (tick,) = [i for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_admin_timer"]
    (refill,) = [i for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_admin_experiment"]
    with signed_in(url, "root") as http:
        config, *_ = _configs(http)
        components = {c["id"]: c for c in config["components"]}
        ((timer_id, _),) = next(dep for dep in config["dependencies"] if dep["id"] == tick)["targets"]
        timer = components[timer_id]
        assert timer["props"]["active"] is False
        tabs = {c["id"]: c["props"].get("elem_id") for c in config["components"] if c["type"] == "tabitem"}
        sets, after_tick, clicks, after_refill = {}, [], [], []
        admin_components, _ = rater_page.admin_parts(demo)
        for dep in config["dependencies"]:
            if timer["id"] in dep["outputs"] and dep["trigger_after"] == tick:  # a failed tick (sixteenth review)
                assert not dep["backend_fn"] and dep["trigger_only_on_failure"] and dep["outputs"] == [timer["id"]], dep
                after_tick.append(dep["js"])
            elif timer["id"] in dep["outputs"] and dep["trigger_after"] == refill:  # a pick's refill (eighteenth review)
                assert not dep["backend_fn"] and dep["trigger_only_on_success"] and dep["outputs"] == [timer["id"]], dep
                after_refill.append(dep["js"])
            elif timer["id"] in dep["outputs"] and {trigger for _, trigger in dep["targets"]} == {"click", "input"}:
                # the tab's buttons start it too (a failed tick stopped it; seventeenth review): all of them, only them,
                # and its two switches, each saved when switched (nineteenth review)
                assert not dep["backend_fn"] and dep["outputs"] == [timer["id"]], dep
                buttons = {i for i in admin_components if components[i]["type"] == "button"}
                switches = {i for i in admin_components if components[i]["props"].get("elem_id")
                            in ("dashboard-access", "standardize-scores")}
                assert sorted(map(tuple, dep["targets"])) == sorted([*((i, "click") for i in buttons),
                                                                   *((i, "input") for i in switches)]), dep["targets"]
                assert len(buttons) >= 10 and len(switches) == 2, (buttons, switches)
                clicks.append(dep["js"])
            elif timer["id"] in dep["outputs"]:
                assert not dep["backend_fn"], dep  # only the browser sets it
                ((target, trigger),) = dep["targets"]
                assert trigger == "select" and components[target]["type"] == "tabitem" and dep["outputs"] == [timer["id"]]
                sets[tabs[target]] = dep["js"]
        assert set(sets) == set(tabs.values()) and len(sets) >= 5, sets
        (stop,) = after_tick
        (click,) = clicks
        (refilled,) = after_refill
        if shutil.which("node"):  # what the browser sets: Gradio's update of the timer's active prop
            for tab, js in {**sets, "a button of tab-admin": click}.items():
                ran = subprocess.run(["node", "-e", f"console.log(JSON.stringify(({js})()))"], capture_output=True,
                                     text=True, timeout=60, check=True)
                assert json.loads(ran.stdout) == {"__type__": "update", "active": "tab-admin" in tab}, tab
            # a failed tick stops the timer once the page was told its account is no admin's (STREAMS_JS's flag),
            # and only then; the tick itself (and the quiet events) are then not sent: QUIET_ADMIN_JS throws
            for told in (False, True):
                flag = f"globalThis.__seikoStreams = {{notAdmin: {json.dumps(told)}}};"
                ran = subprocess.run(["node", "-e", f"{flag} console.log(JSON.stringify(({stop})()))"],
                                     capture_output=True, text=True, timeout=60, check=True)
                assert json.loads(ran.stdout) == {"__type__": "update", **({"active": False} if told else {})}, told
                (tick_js,) = [dep["js"] for dep in config["dependencies"] if dep["id"] == tick]
                ran = subprocess.run(["node", "-e", f"{flag} console.log(JSON.stringify(({tick_js})(7, null)))"],
                                     capture_output=True, text=True, timeout=60)
                assert (ran.returncode != 0, ran.stdout.strip()) == ((True, "") if told else (False, "[7,null]")), ran
            # a pick's refill answered for an admin starts the timer where the Admin tab is shown (a hidden element
            # has no offsetParent), and nothing where it is not or is not there
            for tab in ({"offsetParent": {}}, {"offsetParent": None}, None):
                doc = f"globalThis.document = {{getElementById: (id) => id === 'tab-admin' ? {json.dumps(tab)} : null}};"
                ran = subprocess.run(["node", "-e", f"{doc} console.log(JSON.stringify(({refilled})()))"],
                                     capture_output=True, text=True, timeout=60, check=True)
                shown = bool(tab and tab["offsetParent"] is not None)
                assert json.loads(ran.stdout) == {"__type__": "update", **({"active": True} if shown else {})}, tab
        r = http.post("/gradio_api/queue/join", json={"data": [world.experiment_id], "fn_index": tab_event,
                                                      "session_hash": "roots-page", "event_data": None,
                                                      "trigger_id": None})
        assert r.status_code == 200, r.text
        (done,) = _completed(http, "roots-page")
        assert done["success"], done
        assert {"__type__": "update", "active": True} not in done["output"]["data"]
    with signed_in(url, "alice") as http:
        config, *_ = _configs(http)
        assert timer_id not in {c["id"] for c in config["components"]}
        assert not [dep for dep in config["dependencies"] if timer_id in dep["outputs"]]


class DemotedPage:
    """carol's page (an admin, ``tick_s`` the Admin timer's period) in Chromium, beside ui_world's experiment and
    b-exp (their raters fields differ: 'admins', 'everyone'), for the tests of an admin made a rater and back while
    the page stays open. ``joins``: the status of every event the page sent, as the server answered it;
    ``refusals``: the sentence of each one refused 403; ``errors``: the page's JavaScript errors."""

    SENTENCE = "'carol' is a rater; only an admin can do this; reload the page."

    def __init__(self, ui_world, e2e, tick_s: float):
        from app import auth
        from db import members as db_members
        from db.engine import write_session

        second_experiment(ui_world)
        with write_session(ui_world.factory) as s:
            db_members.set_raters(session=s, experiment_id=ui_world.experiment_id, rater_ids=[])
        auth.add_user(ui_world.factory, name="carol", role="admin", password=UI_PASSWORD)
        self.world, self.auth = ui_world, auth
        self.demo, browser = e2e(dataclasses.replace(ui_world.services(batch_size=4), dashboard_refresh_s=tick_s))
        # the role is read at each request (the guard remembers a session's account for recheck_s otherwise)
        web_guard.installed(self.demo.server_app).sessions.recheck_s = 0
        (self.tick_fn,) = [i for i, bf in self.demo.fns.items()
                           if bf.fn is not None and bf.fn.__name__ == "on_admin_timer"]
        (self.pick_fn,) = [i for i, bf in self.demo.fns.items()
                           if bf.fn is not None and (bf.fn.__module__, bf.fn.__name__) == ("app.ui", "on_experiment")]
        self.page = page = browser.new_context().new_page()
        # the fn_index of each event the page's Gradio client joined (answered 200): its bodies are streamed through
        # STREAMS_JS's fetch, which Playwright's request does not show, so read before STREAMS_JS wraps fetch. The
        # answers to the events whose fn_index is in window.__holdFns are held (window.__held counts them) until
        # window.__release() hands them on, as a slow network would. window.__sentFns: the fn_index of each event the
        # page sent, in the order it sent them; while window.__holdSends, each one whose fn_index is not in
        # window.__passFns waits before it leaves for the server (its place in __sentFns listed in window.__unsent)
        # until window.__send(place) sends it, as a slow connection would
        page.add_init_script("""(() => {
          const real = window.fetch, releases = [], sends = new Map();
          window.__joinedFns = [];
          window.__holdFns = [];
          window.__held = 0;
          window.__release = () => { for (const release of releases.splice(0)) release(); };
          window.__sentFns = [];
          window.__holdSends = false;
          window.__passFns = [];
          window.__unsent = [];
          window.__stripVersion = false;
          window.__send = (place) => {
            window.__unsent = window.__unsent.filter((p) => p !== place);
            sends.get(place)();
          };
          window.fetch = async function (input, init) {
            const request = new Request(input, init);
            if (!new URL(request.url).pathname.endsWith('/gradio_api/queue/join')) return real.call(this, request);
            const place = window.__sentFns.push(null) - 1, hold = window.__holdSends;
            const body = JSON.parse(await request.clone().text());
            window.__sentFns[place] = body.fn_index;
            if (hold && !window.__passFns.includes(body.fn_index)) {
              await new Promise((send) => { sends.set(place, send); window.__unsent.push(place); });
            }
            let response = await real.call(this, request);
            if (window.__stripVersion) {  // a server or proxy that does not send the role version
              const headers = new Headers(response.headers);
              headers.delete('x-seiko-role-version');
              response = new Response(response.body, { status: response.status, statusText: response.statusText, headers });
            }
            if (window.__holdFns.includes(body.fn_index)) {
              window.__held++;
              await new Promise((release) => releases.push(release));
            }
            if (response.ok) window.__joinedFns.push(body.fn_index);
            return response;
          };
        })();""")
        self.errors = watch_errors(page)
        self.joins: list[int] = []
        self.refusals: list[str] = []
        page.on("response", self._answered)
        sign_in(page, self.demo.local_url.replace("localhost", "127.0.0.1"), "carol")

    def _answered(self, r) -> None:
        if r.url.split("?")[0].endswith("/gradio_api/queue/join"):
            self.joins.append(r.status)
            if r.status == 403:
                self.refusals.append(r.json()["detail"])

    def set_role(self, role: str) -> None:
        self.auth.set_role(self.world.factory, name="carol", role=role)

    def made_a_rater_on_the_admin_tab(self, settled: bool = False) -> None:
        """Select the Admin tab, make carol a rater, and wait for the first refusal's toast (a tick of the tab's
        timer). ``settled``: once the timer ticks, the page's events are held back before they leave while every one
        that left is answered, and carol is made a rater only then (no event joined for an admin is answered after the
        demotion's refusal)."""
        page = self.page
        page.get_by_role("tab", name="Admin").click()
        page.locator("#dashboard-access").wait_for(timeout=60_000)
        if settled:
            self.ticking(0)  # the tab's events are answered and its timer runs
            page.evaluate("window.__holdSends = true")
            deadline = time.monotonic() + 30
            while page.evaluate("window.__sentFns.length - window.__unsent.length") != len(self.joins):
                assert time.monotonic() < deadline, (page.evaluate("window.__sentFns"), self.joins)
                page.wait_for_timeout(100)
        self.set_role("rater")
        if settled:
            page.evaluate("window.__holdSends = false; for (const place of [...window.__unsent]) window.__send(place)")
        page.get_by_text(self.SENTENCE).first.wait_for(timeout=60_000)

    def joined(self) -> list[int]:
        """The fn_index of each event the page joined so far, in order."""
        return self.page.evaluate("window.__joinedFns")

    def pick(self, name: str) -> None:
        """Pick the experiment ``name`` and wait for the pick's own event to be joined (the Admin tab's follow it)."""
        page = self.page
        close_toasts(page)  # a toast lies over the selector
        page.get_by_role("combobox", name="Experiment").click()  # the Admin tab has labels with the word too
        before = len(self.joined())
        page.get_by_role("option", name=re.compile(f"^{name}")).click()
        deadline = time.monotonic() + 60
        while self.pick_fn not in self.joined()[before:]:
            assert time.monotonic() < deadline, self.joins
            page.wait_for_timeout(100)

    def ticking(self, before: int) -> None:
        """Wait until the page has joined two ticks of the Admin timer since it had joined ``before`` events."""
        deadline = time.monotonic() + 30
        while self.joined()[before:].count(self.tick_fn) < 2:
            assert time.monotonic() < deadline, (self.joined()[before:], self.joins)
            self.page.wait_for_timeout(100)

    def follows_picks(self) -> None:
        """Each pick fills the Admin tab's raters field with the picked experiment's raters."""
        field = self.page.locator("#experiment-raters").get_by_role("textbox")
        for name, raters in (("ui-exp", "admins"), ("b-exp", "everyone"), ("ui-exp", "admins")):
            self.pick(name)
            deadline = time.monotonic() + 30
            while field.input_value() != raters:  # the field follows the pick
                assert time.monotonic() < deadline, (name, field.input_value(), self.joins)
                self.page.wait_for_timeout(100)

    def toasts(self) -> Any:
        """The messages of the page's toasts that show the sentence (Gradio's error toast lists one per refusal)."""
        return self.page.locator("[data-testid=toast-text]", has_text=self.SENTENCE)

    def shown_refusals(self) -> int:
        return self.toasts().count()


@MARKS[0]
@MARKS[1]
def test_an_admin_made_a_rater_is_refused_once_not_at_every_tick_and_pick(ui_world, e2e):
    """Sixteenth review, 7 Dec 2026: an admin made a rater keeps the Admin tab until the page reloads, and the page went
    on sending the tab's events by itself, each refused (403, "reload the page") with its own toast: the tab's timer
    every dashboard_refresh_s while the tab was selected, and four events at each pick of an experiment. In Chromium:
    carol's page has the Admin tab selected when she is made a rater; over several timer periods and picks of two
    experiments the page is refused once, with the sentence; selecting the tab again asks once more (one refusal), and
    the timer that select starts sends nothing. Made an admin again without a reload, selecting the tab is answered
    and the page sends those events again: a pick fills the raters field with the picked experiment's raters (it kept
    the list of the one shown before, which a save then put on the picked one; read-only review, 7 Dec 2026)."""
    tick_s = 1.0
    carol = DemotedPage(ui_world, e2e, tick_s)
    page, sentence = carol.page, carol.SENTENCE
    carol.made_a_rater_on_the_admin_tab()
    page.wait_for_timeout(4_000 * tick_s)  # four more periods of the timer
    for name in ("b-exp", "ui-exp", "b-exp"):  # each pick changes the experiment: the Admin tab's events would follow
        carol.pick(name)
        page.wait_for_timeout(1_500 * tick_s)
    assert carol.refusals == [sentence], carol.refusals
    page.get_by_role("tab", name="Rate").click()
    page.get_by_role("tab", name="Admin").click()  # asked for: told once more, and its timer sends nothing
    page.get_by_text(sentence).first.wait_for(timeout=30_000)
    page.wait_for_timeout(4_000 * tick_s)
    assert carol.refusals == [sentence, sentence], carol.refusals

    carol.set_role("admin")  # an admin again, the page not reloaded
    close_toasts(page)
    page.get_by_role("tab", name="Rate").click()
    page.get_by_role("tab", name="Admin").click()
    page.locator("#dashboard-access").wait_for(timeout=60_000)
    carol.follows_picks()
    assert carol.refusals == [sentence, sentence], carol.refusals
    assert not carol.errors, carol.errors


@MARKS[0]
@MARKS[1]
def test_the_events_a_pick_sends_together_after_a_demotion_show_one_refusal(ui_world, e2e):
    """Seventeenth review, 7 Dec 2026: the first pick of an experiment after an admin was made a rater sends the
    Admin tab's events that follow a pick together, each before any answer came back, and each refusal showed its own
    toast. In Chromium: carol's page, the Rate tab selected (no Admin timer), and then she is made a rater; at her pick
    the server refuses every one of those events (403, the sentence), and the page shows the sentence once."""
    carol = DemotedPage(ui_world, e2e, 60.0)
    page = carol.page
    carol.pick("ui-exp")  # as an admin (only admins rate it): its events answered
    page.wait_for_timeout(2_000)
    assert not carol.refusals, carol.refusals
    carol.set_role("rater")
    carol.pick("b-exp")  # everyone rates it
    deadline = time.monotonic() + 30
    while not carol.refusals:
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    carol.toasts().first.wait_for(timeout=30_000)  # the first refusal shown
    page.wait_for_timeout(3_000)  # the others of the pick's events, and any toast they bring
    assert len(carol.refusals) >= 2 and set(carol.refusals) == {carol.SENTENCE}, carol.refusals
    assert carol.shown_refusals() == 1, (carol.shown_refusals(), carol.refusals)
    assert not carol.errors, carol.errors


@MARKS[0]
@MARKS[1]
def test_an_admin_made_one_again_with_the_admin_tab_selected_gets_its_events_and_timer_back(ui_world, e2e):
    """Seventeenth review, 7 Dec 2026: only the Admin tab's select cleared the page's not-an-admin flag, so an admin
    made one again whose tab was already selected had to click away and back: its picks left the tab as it was and
    its timer stayed stopped. Eighteenth review: the picks then filled the tab again, but only a click of one of its
    buttons started the timer. In Chromium: carol's page has the Admin tab selected when she is made a rater (a tick
    is refused; the timer stops) and then an admin again; without leaving the tab, her picks fill the raters field
    again (her pick's own event is answered as an admin's) and start the timer, whose ticks are sent and answered. A
    pick made on the Rate tab starts no timer. Made a rater and an admin again on the Admin tab (a tick refused, the
    timer stopped), a click of one of the tab's buttons starts the timer."""
    tick_s = 1.0
    carol = DemotedPage(ui_world, e2e, tick_s)
    page, sentence = carol.page, carol.SENTENCE
    carol.made_a_rater_on_the_admin_tab()  # a tick refused: the timer stops
    page.wait_for_timeout(2_000 * tick_s)
    assert carol.refusals == [sentence], carol.refusals
    carol.set_role("admin")
    before = len(carol.joined())
    carol.follows_picks()
    carol.ticking(before)  # the picks started it
    page.get_by_role("tab", name="Rate").click()  # stops it
    page.wait_for_timeout(1_500 * tick_s)  # a tick sent before, answered
    before = len(carol.joined())
    carol.pick("b-exp")
    page.wait_for_timeout(3_000 * tick_s)
    assert carol.tick_fn not in carol.joined()[before:], carol.joined()[before:]

    page.get_by_role("tab", name="Admin").click()
    page.locator("#dashboard-access").wait_for(timeout=60_000)
    carol.set_role("rater")
    deadline = time.monotonic() + 30
    while len(carol.refusals) < 2:  # a tick refused, told (sent after the first refusal): the timer stops
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    carol.set_role("admin")
    page.wait_for_timeout(2_000 * tick_s)  # no tick sent, none refused
    before = len(carol.joined())
    page.locator("#set-experiment-raters").click()  # saves the field as shown (the picked experiment's raters)
    carol.ticking(before)
    assert carol.refusals == [sentence, sentence], carol.refusals
    assert not carol.errors, carol.errors


@MARKS[0]
@MARKS[1]
def test_answers_without_a_role_version_still_set_and_clear_the_flag_as_they_arrive(ui_world, e2e):
    """Nineteenth review, after a read-only review of the role version: a role answer without the version header (a
    page loaded before the server was rolled back to a build without it, a proxy that drops it) counted as version 0
    (Number(null)), so the first refusal set the flag and no later answer, all "version 0", could clear it. In
    Chromium, every answer stripped of the header: carol is made a rater on the Admin tab (a tick refused, the flag
    set) and an admin again; her picks' answers, joined for an admin, clear the flag and start the timer."""
    tick_s = 1.0
    carol = DemotedPage(ui_world, e2e, tick_s)
    carol.page.evaluate("window.__stripVersion = true")
    # without the version an answer applies as it arrives, so a tick joined for an admin before the demotion and
    # answered after its refusal clears the flag, as it should; the whole suite saw that once (a tick then took over
    # a second to answer): the demotion is made between the page's events
    carol.made_a_rater_on_the_admin_tab(settled=True)
    assert carol.page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    carol.set_role("admin")
    before = len(carol.joined())
    carol.follows_picks()
    carol.ticking(before)  # the flag cleared: the picks started the timer
    assert carol.page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is False
    assert not carol.errors, carol.errors


@MARKS[0]
@MARKS[1]
def test_a_switch_of_the_admin_tab_starts_the_timer_a_failed_tick_stopped_as_its_buttons_do(ui_world, e2e):
    """Nineteenth review, 7 Dec 2026: a click of one of the Admin tab's buttons starts its timer again (a failed tick
    stopped it while the account was no admin), but its two switches (the dashboard access and the standardised
    scores, each saved when switched) did not. In Chromium: carol's page has the Admin tab selected when she is made a
    rater (a tick refused, the timer stopped) and then an admin again; no tick is sent until she switches the
    dashboard access, and then the timer ticks and its ticks are answered. Made a rater and an admin again (a tick
    refused, the timer stopped), switching the standardised scores starts it too."""
    tick_s = 1.0
    carol = DemotedPage(ui_world, e2e, tick_s)
    page, sentence = carol.page, carol.SENTENCE
    quality = {i for i, bf in carol.demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_quality"}
    page.get_by_role("tab", name="Admin").click()
    page.get_by_role("button", name="Rater quality").click()  # the accordion of the second switch, opened
    deadline = time.monotonic() + 60
    while not quality & set(carol.joined()):  # the tab's select's events, answered as an admin's before the demotion
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    for switch in ("#dashboard-access", "#standardize-scores"):  # their outputs shown (their refusal left "Error")
        page.locator(f"{switch} > [data-testid=status-tracker].hide").wait_for(state="attached", timeout=60_000)
    carol.set_role("rater")
    carol.toasts().first.wait_for(timeout=60_000)  # a tick refused: the timer stops
    for told, switch in enumerate(("#dashboard-access", "#standardize-scores"), start=1):
        if told > 1:
            carol.set_role("rater")
            deadline = time.monotonic() + 30
            while len(carol.refusals) < told:  # a tick refused, told (sent after the last refusal): the timer stops
                assert time.monotonic() < deadline, carol.joins
                page.wait_for_timeout(100)
        carol.set_role("admin")
        before = len(carol.joined())
        page.wait_for_timeout(2_000 * tick_s)
        assert carol.tick_fn not in carol.joined()[before:], carol.joined()[before:]  # stopped
        close_toasts(page)
        box = page.locator(switch).get_by_role("checkbox")
        box.scroll_into_view_if_needed()
        box.click()
        carol.ticking(before)
        assert carol.refusals == [sentence] * told, carol.refusals
    assert not carol.errors, carol.errors


@MARKS[0]
@MARKS[1]
def test_an_event_joined_before_a_demotion_answered_after_a_refusal_leaves_the_page_told(ui_world, e2e):
    """Eighteenth review, 7 Dec 2026: the page's not-an-admin flag took the role of the answer that arrived last, not
    of the newest request: an event joined for an admin just before a demotion, its answer slow, cleared the flag
    after a newer refusal had set it, and the Admin tab's events were sent again, refused with a toast each burst. In
    Chromium: carol's page (the Rate tab selected) picks an experiment as an admin, the answer to the pick's event
    held back in the browser; she is made a rater and selects the Admin tab, whose events are refused with the
    sentence; then the held answer (joined for an admin, the server's header says) comes. The page still knows that
    its account is no admin, as the server's newest answer said: the Admin tab's events that follow the pick are
    not sent, and nothing more is refused."""
    carol = DemotedPage(ui_world, e2e, 60.0)
    page = carol.page
    page.evaluate(f"window.__holdFns = [{carol.pick_fn}]")
    close_toasts(page)
    page.get_by_role("combobox", name="Experiment").click()
    page.get_by_role("option", name=re.compile("^b-exp")).click()
    deadline = time.monotonic() + 30
    while page.evaluate("window.__held") < 1:
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    assert not carol.refusals, carol.joins  # joined, for an admin
    carol.set_role("rater")
    page.get_by_role("tab", name="Admin").click()
    carol.toasts().first.wait_for(timeout=60_000)
    assert page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    refused = list(carol.refusals)
    assert refused and set(refused) == {carol.SENTENCE}, refused
    page.evaluate("window.__release()")
    deadline = time.monotonic() + 30
    while carol.pick_fn not in carol.joined():
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    page.wait_for_timeout(3_000)  # the pick's result read, and the Admin tab's events that follow a pick
    assert page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    assert carol.refusals == refused, carol.refusals
    assert carol.shown_refusals() == 1, carol.shown_refusals()
    assert not carol.errors, carol.errors


@MARKS[0]
@MARKS[1]
def test_an_event_read_as_an_admins_before_a_demotion_but_sent_after_a_refused_one_leaves_the_page_told(ui_world,
                                                                                                        e2e):
    """Nineteenth review, 7 Dec 2026: the page took the role of the answer to its newest POST, but the events of one
    pick leave together and the server reads each one's role on its own, so one sent later may be read before a
    demotion and one sent earlier after it; the later one's answer (joined for an admin) then cleared the flag that
    the earlier one's refusal had set. In Chromium: carol (an admin, the Rate tab selected) picks an experiment; the
    events that follow the pick are held in the browser before they leave. The last one sent goes first and is
    answered for an admin (its answer held back); carol is made a rater; an Admin tab's event sent before it then
    goes, and is refused as the server refuses it now; then the held answer comes, and the other events go. The page
    still knows that its account is no admin, as the server's newest reading of the role said."""
    carol = DemotedPage(ui_world, e2e, 60.0)
    page = carol.page
    admin_only = {i for i, bf in carol.demo.fns.items() if bf.fn is not None and gradio_routes.is_admin_only(bf.fn)}
    page.evaluate(f"window.__holdSends = true; window.__passFns = [{carol.pick_fn}]")
    carol.pick("ui-exp")
    deadline = time.monotonic() + 30
    unsent: list[int] = []
    while len(unsent) < 2 or page.evaluate("window.__unsent.length") != len(unsent):  # the pick's events, all held
        assert time.monotonic() < deadline, (unsent, carol.joins)
        unsent = page.evaluate("window.__unsent")
        page.wait_for_timeout(1_000)
    sent = page.evaluate("window.__sentFns")
    last = max(unsent)
    earlier = [place for place in sorted(unsent) if place < last and sent[place] in admin_only]
    assert earlier, ([sent[p] for p in unsent], admin_only)  # an Admin tab's event left before the last one
    page.evaluate(f"window.__holdFns = [{sent[last]}]; window.__send({last})")
    deadline = time.monotonic() + 30
    while page.evaluate("window.__held") < 1:  # answered, for an admin
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    assert not carol.refusals, carol.refusals
    carol.set_role("rater")
    page.evaluate(f"window.__send({earlier[0]})")
    carol.toasts().first.wait_for(timeout=60_000)  # refused, told
    deadline = time.monotonic() + 30
    while not carol.refusals:  # the response listener reads the refusal's body after the page has shown it
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    assert carol.refusals == [carol.SENTENCE], carol.refusals
    assert page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    page.evaluate("window.__holdSends = false; window.__release()")
    deadline = time.monotonic() + 30
    while sent[last] not in carol.joined():  # its answer handed on
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    page.wait_for_timeout(500)
    assert page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    for place in page.evaluate("window.__unsent"):  # the others, refused or answered as a rater's
        page.evaluate(f"window.__send({place})")
    page.wait_for_timeout(3_000)  # every answer read, and whatever the page sends after them
    assert page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    assert set(carol.refusals) == {carol.SENTENCE} and carol.shown_refusals() == 1, carol.refusals
    assert not carol.errors, carol.errors


# Gradio's cover of an output of a failed event: its status tracker in the error state ("Error", its clear button)
ERROR_COVER = "[data-testid=status-tracker]:not(.hide) span.error"


@MARKS[0]
@MARKS[1]
def test_the_admin_tabs_events_refused_or_not_sent_after_a_demotion_leave_its_outputs_uncovered(ui_world, e2e):
    """Twentieth review, 7 Dec 2026: Gradio ends a failed event with its toast and an "Error" laid over each of its
    outputs (the output's status tracker) until an answer of a later event with that output. Once carol was no longer
    an admin, the Admin tab's events were refused with the sentence (those in flight at the demotion, a click of the
    tab's buttons) and none answered, so their outputs stayed covered, the raters field among them, until the page
    was reloaded. In Chromium: carol's page has the Admin tab selected when she is made a
    rater (a tick refused, told); she picks an experiment and clicks "Set raters" (refused, told again): the sentence
    is shown, no output of the page is covered, and the raters field still says what it said and takes a click."""
    carol = DemotedPage(ui_world, e2e, 1.0)
    page, sentence = carol.page, carol.SENTENCE
    carol.made_a_rater_on_the_admin_tab()
    field = page.locator("#experiment-raters").get_by_role("textbox")
    shown = field.input_value()
    carol.pick("b-exp")  # its Admin tab's events are not sent
    page.wait_for_timeout(2_000)
    close_toasts(page)
    page.locator("#set-experiment-raters").click()
    carol.toasts().first.wait_for(timeout=30_000)  # refused, told
    deadline = time.monotonic() + 30
    while len(carol.refusals) < 2:  # the response listener reads the refusal after the page has shown it
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    page.wait_for_timeout(2_000)  # Gradio has ended the refused event
    assert page.locator(ERROR_COVER).count() == 0, page.locator(ERROR_COVER).count()
    assert field.input_value() == shown, field.input_value()
    field.click(timeout=5_000)  # nothing lies over it
    assert set(carol.refusals) == {sentence}, carol.refusals  # the first refusals of the demotion, and the click's
    # "Create experiment" has the header's Experiment dropdown among its outputs, outside the Admin tab (found by
    # review): refused, told, and nothing covered there either
    refused = len(carol.refusals)
    close_toasts(page)
    page.locator(f"#{ui_admin_tab.ADMIN_TAB_ID}").get_by_text("New experiment", exact=True).click()  # its accordion
    page.get_by_role("button", name="Create experiment").click()
    carol.toasts().first.wait_for(timeout=30_000)
    deadline = time.monotonic() + 30
    while len(carol.refusals) <= refused:
        assert time.monotonic() < deadline, carol.joins
        page.wait_for_timeout(100)
    page.wait_for_timeout(2_000)  # Gradio has ended the refused event
    assert page.locator(ERROR_COVER).count() == 0, page.locator(ERROR_COVER).count()
    page.locator(".seiko-header input").first.click(timeout=5_000)  # nothing lies over it
    assert set(carol.refusals) == {sentence}, carol.refusals
    assert page.evaluate(ui_assets.NOT_ADMIN_KNOWN) is True
    assert not carol.errors, carol.errors
