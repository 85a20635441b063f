"""Sessions in a real browser (Debian's chromium through playwright): sign in through app.web_guard, log out with
the page's button (a POST that ends the session on the server), and an admin disabling an account on the admin tab
and setting its password (with the admin's own).

Skipped without /usr/bin/chromium (``bash scripts/install_browser.sh``) or the ``playwright`` package (the ``e2e``
fixture, tests/app/e2e_support.py).
"""

from __future__ import annotations

import re
import time

import httpx

from app import auth
from db import repo
from db.engine import read_session
from tests.app.e2e_support import MARKS, PASSWORD, sign_in, watch_errors

pytestmark = MARKS


def stored_hash(world, name: str) -> str:
    with read_session(world.factory) as s:
        return repo.get_rater_by_name(session=s, name=name).password_hash


def test_log_out_ends_the_session_and_an_admin_disables_an_account(ui_world, e2e):
    demo, browser = e2e(ui_world.services(batch_size=4))
    url = demo.local_url.replace("localhost", "127.0.0.1")
    # alice signs in, then logs out with the banner's button
    alice = browser.new_context()
    page = alice.new_page()
    errors = watch_errors(page)
    sign_in(page, url, "alice")
    cookies = {c["name"]: c["value"] for c in alice.cookies()}
    assert all("samesite" not in c or c["sameSite"] == "Lax" for c in alice.cookies())
    page.locator("#logout-button").click()
    page.wait_for_selector("input[type=password]", timeout=60_000)  # back on the login page
    page.reload()
    page.wait_for_selector("input[type=password]", timeout=60_000)
    # the cookie the browser held is dead on the server too
    assert httpx.get(url.rstrip("/") + "/config", cookies=cookies).status_code in (401, 403)

    # bob signs in; root disables him on the admin tab; his page loses its session
    bob = browser.new_context().new_page()
    sign_in(bob, url, "bob")
    bob_cookies = {c["name"]: c["value"] for c in bob.context.cookies()}
    assert httpx.get(url.rstrip("/") + "/config", cookies=bob_cookies).status_code == 200
    root = browser.new_context().new_page()
    root_errors = watch_errors(root)
    sign_in(root, url, "root")
    root.get_by_role("tab", name="Admin").click()
    root.get_by_text("Users", exact=True).click()
    chooser = root.locator("#manage-account input")
    chooser.click()
    chooser.fill("bob")
    root.keyboard.press("Enter")
    root.locator("#user-disable").click()
    root.wait_for_function("document.querySelector('#users-table') && "
                           "document.querySelector('#users-table').innerText.includes('disabled')", timeout=60_000)
    assert httpx.get(url.rstrip("/") + "/config", cookies=bob_cookies).status_code in (401, 403)
    assert [u.disabled for u in auth.list_users(ui_world.factory) if u.name == "bob"] == [True]
    root.get_by_text("Audit log", exact=True).click()
    root.wait_for_function("document.querySelector('#audit-log') && "
                           "document.querySelector('#audit-log').innerText.includes('user.disable')", timeout=60_000)

    # setting bob's password asks for root's own (eleventh review): a wrong one is refused and nothing changes; root's
    # own sets it, and both password boxes are emptied
    root.locator("#new-password input").fill("a fresh secret phrase")
    root.locator("#repeat-password input").fill("a fresh secret phrase")
    root.locator("#your-password input").fill("not my password")
    root.locator("#user-password").click()
    root.get_by_text("is not yours, so nothing was changed").first.wait_for(timeout=60_000)
    assert auth.verify_password(PASSWORD, stored_hash(ui_world, "bob"))  # bob is disabled: his hash, not a sign-in
    assert [e.action for e in auth.list_audit(ui_world.factory)][0] == "user.password.refused"
    root.locator("#your-password input").fill(PASSWORD)
    root.locator("#user-password").click()
    root.get_by_text("'bob' has a new password").first.wait_for(timeout=60_000)
    assert auth.verify_password("a fresh secret phrase", stored_hash(ui_world, "bob"))
    assert root.locator("#your-password input").input_value() == root.locator("#new-password input").input_value() == ""
    assert not errors + root_errors, errors + root_errors


def test_a_rater_changes_their_own_password_on_the_account_tab(ui_world, e2e):
    """Twelfth review: a rater had no way to change their password on the web. In a browser, alice (a rater) opens the
    Account tab: a wrong current password is refused in one sentence and nothing changes; her own changes it, the
    boxes are emptied, and her session is signed out (every session of hers ends, as the Admin tab's change does); after a
    moment the page goes to the sign-in page by itself, where she signs in with the new password. A "Repeat
    new password" that differs is refused first, nothing audited."""
    demo, browser = e2e(ui_world.services(batch_size=4))
    url = demo.local_url.replace("localhost", "127.0.0.1")
    context = browser.new_context()
    page = context.new_page()
    errors = watch_errors(page)
    sign_in(page, url, "alice")
    page.get_by_role("tab", name="Account").click()
    page.locator("#current-password input").fill("not my password")
    page.locator("#own-new-password input").fill("a fresh secret phrase")
    page.locator("#own-repeat-password input").fill("a fresh secret phrsae")  # a typing slip: refused first
    page.locator("#change-own-password").click()
    page.get_by_text("differ (a typing slip?), so nothing was changed").first.wait_for(timeout=60_000)
    assert not [e for e in auth.list_audit(ui_world.factory) if e.action.startswith("user.password")]
    page.locator("#own-repeat-password input").fill("a fresh secret phrase")
    page.locator("#change-own-password").click()
    page.get_by_text("is not your current one, so nothing was changed").first.wait_for(timeout=60_000)
    assert auth.verify_password(PASSWORD, stored_hash(ui_world, "alice"))
    assert [e.action for e in auth.list_audit(ui_world.factory)][0] == "user.password.refused"
    page.locator("#current-password input").fill(PASSWORD)
    page.locator("#change-own-password").click()
    page.get_by_text("Your password is changed").first.wait_for(timeout=60_000)
    assert auth.verify_password("a fresh secret phrase", stored_hash(ui_world, "alice"))
    assert page.locator("#current-password input").input_value() == page.locator("#own-new-password input").input_value() == ""
    assert page.locator("#own-repeat-password input").input_value() == ""
    cookies = {c["name"]: c["value"] for c in context.cookies()}
    assert httpx.get(url.rstrip("/") + "/config", cookies=cookies).status_code in (401, 403)
    assert not errors, errors
    page.wait_for_selector("#signed-in", state="detached", timeout=60_000)  # the page goes to the sign-in page
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.locator("input:not([type=password])").first.fill("alice")
    page.locator("input[type=password]").fill("a fresh secret phrase")
    page.keyboard.press("Enter")
    page.wait_for_selector("#signed-in", timeout=60_000)
    assert "alice" in page.locator("#signed-in").inner_text()


def test_an_admin_who_sets_their_own_password_on_the_admin_tab_is_sent_to_the_sign_in_page(ui_world, e2e):
    """Thirteenth review: the Admin tab's "Set password" on the admin's own account ended every session of theirs, this
    page's too, but left the page where it was (each next action refused), where the Account tab goes to the sign-in
    page. In a browser, root sets root's password on the Admin tab: the sentence says so, the page goes to the sign-in
    page by itself, and root signs in with the new password."""
    demo, browser = e2e(ui_world.services(batch_size=4))
    url = demo.local_url.replace("localhost", "127.0.0.1")
    page = browser.new_context().new_page()
    errors = watch_errors(page)
    sign_in(page, url, "root")
    page.get_by_role("tab", name="Admin").click()
    page.get_by_text("Users", exact=True).click()
    chooser = page.locator("#manage-account input")
    chooser.click()
    chooser.fill("root")
    page.keyboard.press("Enter")
    page.locator("#new-password input").fill("a fresh secret phrase")
    page.locator("#repeat-password input").fill("a fresh secret phrase")
    page.locator("#your-password input").fill(PASSWORD)
    page.locator("#user-password").click()
    page.get_by_text("Your password is changed").first.wait_for(timeout=60_000)
    assert auth.verify_password("a fresh secret phrase", stored_hash(ui_world, "root"))
    assert not errors, errors
    page.wait_for_selector("#signed-in", state="detached", timeout=60_000)  # the page goes to the sign-in page
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.locator("input:not([type=password])").first.fill("root")
    page.locator("input[type=password]").fill("a fresh secret phrase")
    page.keyboard.press("Enter")
    page.wait_for_selector("#signed-in", timeout=60_000)
    assert "root" in page.locator("#signed-in").inner_text()


def sign_ins_in_flight(page) -> list[int]:
    """How many sign-ins (POST /login) of ``page`` were in flight as each one left (1: one at a time), as the browser
    saw them go and end."""
    counts: list[int] = []
    sending: set = set()

    def is_sign_in(request) -> bool:
        return request.method == "POST" and re.search(r"/login/?$", request.url.split("?")[0]) is not None

    def went(request) -> None:
        if is_sign_in(request):
            sending.add(request)
            counts.append(len(sending))

    def ended(request) -> None:
        sending.discard(request)

    page.on("request", went)
    page.on("requestfinished", ended)
    page.on("requestfailed", ended)
    return counts


def test_the_login_page_shows_the_servers_sentence_for_a_refused_sign_in(ui_world, e2e, monkeypatch):
    """Eighteenth review (7 Dec 2026): Gradio's login page reads only the status of its sign-in: a 400 showed its own
    "Incorrect Credentials" whatever the answer's ``detail`` said (a password changed while it was checked), and any
    other status (the throttle's 429) showed nothing at all. Now the page says the server's sentence, as the real
    answer gives it; a wrong password still sees the one sentence a wrong name sees.
    Nineteenth review (7 Dec 2026): the sentence's 400 made Gradio's component empty the boxes for every refusal, a
    busy server's 503 and the throttle's 429 too, where nothing typed was wrong. Now only a 400 empties them, as the
    stock page does; after any other refusal the boxes keep what was typed, and pressing the button again sends it.
    Twentieth review (7 Dec 2026): a busy server's 503 is tried again by the page itself (a bounded number of times,
    then the sentence and the button are the person's; pressing it during the wait sends nothing of its own); a 429,
    a 400 and a 403 are not tried again."""
    from app import ui_assets, web_guard
    from app.sessions import LoginThrottle, ThrottleRule

    demo, browser = e2e(ui_world.services(batch_size=4))
    url = demo.local_url.replace("localhost", "127.0.0.1")
    guard = web_guard.installed(demo.server_app)
    # the address is locked by its second failed sign-in, for good (a clock that stands still) and with a lock of 1 s,
    # so its 429 says Retry-After: 1 (a page that tried a 429 again would send it again within 2 s)
    guard.throttle = LoginThrottle(per_ip=ThrottleRule(free=1, base_s=1, max_s=1), monotonic=lambda: 0.0)
    page = browser.new_context().new_page()
    errors = watch_errors(page)
    in_flight = sign_ins_in_flight(page)
    answers: list[tuple[int, str]] = []  # the sign-in's real answers (status, detail), passed on to the page as is

    foreign: list[str] = []  # an Origin the sign-in is sent with, as a proxy that rewrites Host but not Origin would

    def passed_on(route) -> None:
        if route.request.method != "POST":
            route.continue_()
            return
        answer = route.fetch(headers={**route.request.headers, "origin": foreign[0]} if foreign else None)
        plain = answer.headers.get("content-type", "").startswith("text/plain")
        answers.append((answer.status, answer.text().strip() if plain else answer.json().get("detail")))
        route.fulfill(response=answer)

    def said(sentence: str, timeout: int = 30_000) -> None:
        """The login page's paragraph (Gradio's, found by its class) says exactly ``sentence``."""
        page.locator("p.creds").filter(has_text=sentence).wait_for(timeout=timeout)
        assert page.locator("p.creds").inner_text().strip() == sentence

    page.route(re.compile(r"/login/?$"), passed_on)
    page.goto(url)
    page.wait_for_selector("input[type=password]", timeout=60_000)

    def refused(name: str, password: str) -> tuple[int, str]:
        """Sign in as ``name`` on the page; the server's real answer (status, detail)."""
        before = len(answers)
        page.locator("input:not([type=password])").first.fill(name)
        page.locator("input[type=password]").fill(password)
        page.get_by_role("button", name="Login").click()
        deadline = time.monotonic() + 60
        while len(answers) == before:
            assert time.monotonic() < deadline, "the sign-in was not answered"
            page.wait_for_timeout(100)
        return answers[before]

    def holds(name: str, password: str) -> None:
        """The login boxes hold ``name`` and ``password`` (waited for: Gradio's component answers a 400 by emptying
        them, and the page may put them back after it)."""
        page.wait_for_function("([name, password]) => document.querySelector('input:not([type=password])').value"
                               " === name && document.querySelector('input[type=password]').value === password",
                               arg=[name, password], timeout=30_000)

    # a server busy with sign-ins: 503 with its sentence; the page says it tries again, and does, by itself (the
    # person pressing the button during the waits sends nothing more), until its tries are spent: then the sentence
    # stays and nothing typed is lost
    guard.max_pending = 0
    before = len(answers)
    status, detail = refused("alice", PASSWORD)
    assert status == 503 and "many sign-ins at once" in detail, (status, detail)
    page.locator("p.creds").filter(has_text="tries again by itself in").wait_for(timeout=30_000)
    for _ in range(2):
        page.get_by_role("button", name="Login").click()
        page.wait_for_timeout(300)
    tries = 1 + ui_assets.LOGIN_BUSY_TRIES
    said(f"{detail} This page tried {tries} times; press Login to try again.", timeout=120_000)
    guard.max_pending = 4
    assert answers[before:] == [(503, detail)] * tries, answers[before:]
    assert max(in_flight) == 1, in_flight
    holds("alice", PASSWORD)

    # a wrong password: the server's one sentence for a wrong name or password, on the page; the boxes emptied, as
    # Gradio's own page empties them for a 400
    status, detail = refused("alice", "not the password")
    assert (status, detail) == (400, auth.WRONG_CREDENTIALS)
    said(auth.WRONG_CREDENTIALS)  # the server's "Incorrect credentials.", not Gradio's "Incorrect Credentials"
    holds("", "")

    # the right password, changed by someone else while it was checked: 400 with its own sentence
    real = auth.check_login

    def check_then_change(factory, username, password):
        result = real(factory, username, password)
        auth.set_password(factory, name=username, password="changed meanwhile")
        return result

    monkeypatch.setattr(auth, "check_login", check_then_change)  # web_guard looks it up on the module at call time
    status, detail = refused("alice", PASSWORD)
    monkeypatch.setattr(auth, "check_login", real)
    assert status == 400 and "with the new password" in detail, (status, detail)
    said(detail)
    assert not page.get_by_text(re.compile("incorrect credentials", re.IGNORECASE)).count()

    # the address now locked: 429 with the seconds to wait (the stock page showed nothing for it)
    status, detail = refused("bob", PASSWORD)
    assert status == 429 and detail.startswith("Too many failed sign-ins"), (status, detail)
    said(detail)
    holds("bob", PASSWORD)
    # not tried again by the page: its Retry-After (1 s) passes, twice over, and the server sees no other sign-in
    sent = len(answers)
    page.wait_for_timeout(4_000)
    assert len(answers) == sent, answers[sent - 1:]
    said(detail)

    # a sign-in from another origin: the guard's plain-text 403, said as it is (not a status, not "try again")
    foreign.append("http://elsewhere.example")
    status, detail = refused("bob", PASSWORD)
    assert status == 403 and "origin" in detail and "elsewhere.example" in detail, (status, detail)
    said(detail)
    holds("bob", PASSWORD)
    assert page.locator("#signed-in").count() == 0 and not errors, errors

    # the wait over (a fresh throttle) and the origin the page's own: the button alone signs bob in with what was kept
    foreign.clear()
    guard.throttle = LoginThrottle(per_ip=ThrottleRule(free=1, base_s=600, max_s=600))
    page.get_by_role("button", name="Login").click()
    page.wait_for_selector("#signed-in", timeout=60_000)
    assert "bob" in page.locator("#signed-in").inner_text()
    assert answers[-1][0] == 200 and not errors, (answers[-1], errors)


def test_a_classroom_signing_in_at_once_gets_in_without_pressing_again(ui_world, e2e, monkeypatch):
    """Twentieth review (7 Dec 2026): a classroom pressing the button in the same second finds the guard's room for
    sign-ins full; those refused (503, Retry-After) were told to try again and had to press the button again, some
    several times. Now each page tries again by itself, with the same POST (the same form body), one at a time, and
    every page ends signed in with no second press. Here the guard has room for 2, and the first sign-in checked is
    held until every page but those 2 has been refused, so the pages meet a full server whatever the machine's speed."""
    from app import web_guard

    names = ["alice", "bob", "root", "carol", "dave", "erin"]
    for name in names[3:]:
        auth.add_user(ui_world.factory, name=name, role="rater", password=PASSWORD)
    demo, browser = e2e(ui_world.services(batch_size=4))
    url = demo.local_url.replace("localhost", "127.0.0.1")
    guard = web_guard.installed(demo.server_app)
    guard.max_pending = 2
    real = auth.check_login

    def held_check(*args, **kwargs):
        deadline = time.monotonic() + 60
        while guard.stats.logins["busy"] < len(names) - 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return real(*args, **kwargs)

    monkeypatch.setattr(auth, "check_login", held_check)  # web_guard looks it up on the module at call time
    forms: list = []  # each sign-in form the server read
    read_form = guard._form

    async def form_read(*args, **kwargs):
        form = await read_form(*args, **kwargs)
        forms.append(form)
        return form

    guard._form = form_read
    pages, errors, in_flight = [], [], {}
    for name in names:
        page = browser.new_context().new_page()
        errors.append(watch_errors(page))
        in_flight[name] = sign_ins_in_flight(page)
        page.goto(url)
        page.wait_for_selector("input[type=password]", timeout=60_000)
        page.locator("input:not([type=password])").first.fill(name)
        page.locator("input[type=password]").fill(PASSWORD)
        pages.append(page)
    for page in pages:  # one press each, as close together as the browser allows
        page.get_by_role("button", name="Login").click()
    for name, page in zip(names, pages):
        page.wait_for_selector("#signed-in", timeout=120_000)
        assert name in page.locator("#signed-in").inner_text()
    assert guard.stats.logins["busy"] >= len(names) - 2, guard.stats.logins
    assert guard.stats.logins["ok"] == len(names), guard.stats.logins
    # each try is the POST the component sent: the page's own name and password, one at a time from each page
    assert all(dict(form) == {"username": form["username"], "password": PASSWORD} for form in forms), forms
    assert sorted(form["username"] for form in forms) == sorted(name for name in names for _ in in_flight[name])
    assert all(max(in_flight[name]) == 1 for name in names), in_flight
    assert len(forms) > len(names)  # some were tried again
    assert not any(errors), errors
