"""Sessions in a real browser (Debian's chromium through playwright): sign in through app.web_guard, log out with
the page's button (a POST that ends the session on the server), and an admin disabling an account on the admin tab.

Skipped without /usr/bin/chromium (``bash scripts/install_browser.sh``) or the ``playwright`` package.
"""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest

from app import auth, ui

CHROMIUM = Path("/usr/bin/chromium")  # as in test_e2e_browser.py
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"  # tests/app/conftest.py gives every ui_world account this password

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (bash scripts/install_browser.sh)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sign_in(page, url: str, name: str) -> None:
    page.goto(url)
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.locator("input:not([type=password])").first.fill(name)
    page.locator("input[type=password]").fill(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector("#signed-in", timeout=60_000)


def test_log_out_ends_the_session_and_an_admin_disables_an_account(ui_world):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pyproject.toml's dev extra)")
    services = ui_world.services(batch_size=4)
    demo = ui.build_demo(services)
    demo.launch(prevent_thread_lock=True, quiet=True, **{**ui.launch_kwargs(services), "server_port": free_port()})
    url = demo.local_url.replace("localhost", "127.0.0.1")
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            errors: list[str] = []

            # alice signs in, then logs out with the banner's button
            alice = browser.new_context()
            page = alice.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
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
            root.on("pageerror", lambda e: errors.append(str(e)))
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
            assert not errors, errors
            browser.close()
    finally:
        demo.close()
