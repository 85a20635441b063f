"""End to end in a real browser (Debian's chromium through playwright): a rater compares pairs with the keyboard.

An experiment of comparisons only ('pairs'): alice signs in, the Rate tab sends her to the Pairs tab, and she
answers three pairs with ←, 2 and ↓ (left, right, tie). The votes in the database are checked against the keys.
Needs /usr/bin/chromium and the playwright package (skipped otherwise), like tests/app/test_e2e_browser.py.
Saves pairs.png into $SEIKO_SCREENSHOT_DIR (a temporary folder when unset).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from app import pairwise, ui
from app.auth import Who
from db.engine import read_session
from db.models import ComparisonVote, PairSkip
from tests.app.e2e_support import CHROMIUM, CHROMIUM_ARGS, PASSWORD, free_port

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (bash scripts/install_browser.sh)"),
]

CURRENT = "document.querySelector('#pair-view .pp-pair') ? document.querySelector('#pair-view .pp-pair').dataset.pairId : null"


def test_compare_pairs_with_the_keyboard(ui_world_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs the playwright package (pyproject.toml's dev extra: make setup)")
    world = ui_world_factory(n_images=7)  # 3 prompts with 3, 2 and 2 images: a cycle of 3 pairs and 2 pairs
    root = Who(world.accounts["root"], "root", "admin", False)
    assert "5 pairs were made" in pairwise.set_feedback(world.factory, root, world.experiment_id, "pairs")
    services = world.services(batch_size=4)
    demo = ui.build_demo(services)
    demo.launch(prevent_thread_lock=True, quiet=True, **{**ui.launch_kwargs(services), "server_port": free_port()})
    shots = Path(os.environ.get("SEIKO_SCREENSHOT_DIR") or tempfile.mkdtemp(prefix="seiko-shots-"))
    shots.mkdir(parents=True, exist_ok=True)
    try:
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(demo.local_url)
            page.wait_for_selector("input[type=password]", timeout=60_000)
            page.locator("input:not([type=password])").first.fill("alice")
            page.locator("input[type=password]").fill(PASSWORD)
            page.keyboard.press("Enter")

            # the Rate tab has nothing to rate and says where to go
            page.wait_for_selector("#rg-empty", timeout=60_000)
            assert "compare them on the Pairs tab" in page.locator("#rg-empty").inner_text()

            page.get_by_role("tab", name="Pairs").click()
            page.wait_for_selector("#pair-view .pp-pair[data-pair-id]", timeout=60_000)
            assert "0 of 5" in page.locator("#pair-round-progress").inner_text()
            page.screenshot(path=str(shots / "pairs.png"), full_page=True)

            shown = []
            for key in ["ArrowLeft", "2", "ArrowUp", "ArrowDown", "s"]:  # left, right, skip, tie, skip
                before = page.evaluate(CURRENT)
                shown.append(int(before))
                page.keyboard.press(key)
                page.wait_for_function(f"({CURRENT}) !== {before!r} && !(window.__seikoPairs && window.__seikoPairs.busy)",
                                       timeout=30_000)
            page.wait_for_selector("#pp-empty", timeout=30_000)
            assert "You have compared (or skipped) every pair" in page.locator("#pp-empty").inner_text()
            assert "3 of 5" in page.locator("#pair-round-progress").inner_text()  # the skips count nowhere
            assert "You: 3 compared" in page.locator("#pair-you").inner_text()
            assert not errors, errors
            browser.close()
    finally:
        demo.close()

    with read_session(world.factory) as s:
        votes = {v.pair_id: (v.rater_id, v.choice) for v in s.query(ComparisonVote).all()}
    alice = world.accounts["alice"]
    assert len(set(shown)) == 5
    assert votes == {shown[0]: (alice, "a"), shown[1]: (alice, "b"), shown[3]: (alice, "tie")}
    with read_session(world.factory) as s:
        assert sorted(k.pair_id for k in s.query(PairSkip).filter_by(rater_id=alice)) == sorted([shown[2], shown[4]])
