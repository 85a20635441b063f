"""What the browser tests (tests/app/test_e2e_*.py) share: the app served on a free port, Debian's chromium through
playwright, and signing in on the login page.

The tests take the ``e2e`` fixture of tests/app/conftest.py: ``demo, browser = e2e(services)`` serves the app (with
the web guard, as ``python -m app serve`` does) and then starts a headless Chromium; both are closed after the test,
the browser first. The fixture skips the test, before anything is built, when /usr/bin/chromium
(``bash scripts/install_browser.sh``) or the ``playwright`` package (pyproject.toml's dev extra: make setup) is
missing. Mark the test module with ``pytestmark = MARKS``.
"""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "correct horse battery"  # tests/app/conftest.py gives every ui_world account this password
NO_CHROMIUM = "needs Debian's chromium at /usr/bin/chromium (bash scripts/install_browser.sh)"
NO_PLAYWRIGHT = "needs the playwright package (pyproject.toml's dev extra: make setup)"

MARKS = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason=NO_CHROMIUM)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_browser() -> Any:
    """playwright's sync API; skips the calling test without chromium or playwright."""
    if not CHROMIUM.exists():
        pytest.skip(NO_CHROMIUM)
    return pytest.importorskip("playwright.sync_api", reason=NO_PLAYWRIGHT)


@contextmanager
def served(services) -> Iterator[Any]:
    """The Gradio demo of ``services`` served on a free port through ``ui.launch_kwargs`` (the web guard included)."""
    from app import ui

    demo = ui.build_demo(services)
    demo.launch(prevent_thread_lock=True, quiet=True, **{**ui.launch_kwargs(services), "server_port": free_port()})
    try:
        yield demo
    finally:
        demo.close()


@contextmanager
def chromium(sync_api) -> Iterator[Any]:
    """A headless Chromium browser, closed on exit."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class E2E:
    """The ``e2e`` fixture's value: call it with AppServices to get (demo, browser)."""

    def __init__(self, stack: ExitStack):
        self._stack = stack
        self._sync_api = require_browser()

    def __call__(self, services) -> tuple[Any, Any]:
        demo = self._stack.enter_context(served(services))  # served first, as a user would find it
        browser = self._stack.enter_context(chromium(self._sync_api))
        return demo, browser


def watch_errors(page) -> list[str]:
    """The page's uncaught JavaScript errors, collected as they happen (a test asserts the list stays empty)."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def sign_in(page, url: str, name: str, *, password: str = PASSWORD, wait_for: str = "#signed-in") -> None:
    """Sign ``name`` in on the login page at ``url`` and wait for ``wait_for`` to appear."""
    page.goto(url)
    page.wait_for_selector("input[type=password]", timeout=60_000)
    page.locator("input:not([type=password])").first.fill(name)
    page.locator("input[type=password]").fill(password)
    page.keyboard.press("Enter")
    page.wait_for_selector(wait_for, timeout=60_000)


def close_toasts(page) -> None:
    """Close every toast on the page and wait until none is left: a toast lies over the experiment menu, and one that
    slides in while another is closed intercepts the next click (the whole suite under load, CI of 6 Dec 2026)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout  # here: the module imports without playwright

    toasts = page.locator(".toast-close")
    deadline = time.monotonic() + 30
    while toasts.count():
        assert time.monotonic() < deadline, "a toast would not close"
        for close in toasts.all():
            try:
                close.click(timeout=2_000)
            except PlaywrightTimeout:  # it went by itself (a toast's own timer) between the look and the click:
                pass  # the loop looks again, and fails at its deadline if one stays
        page.wait_for_timeout(200)


def screenshot_dir() -> Path:
    """$SEIKO_SCREENSHOT_DIR (e.g. docs/images), else a fresh temporary folder."""
    shots = Path(os.environ.get("SEIKO_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="seiko-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    return shots
