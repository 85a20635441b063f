"""End to end in a real browser: the blind Compare tab voted with the keyboard (→ right, ↓ tie, ← left).

Needs /usr/bin/chromium and playwright, like tests/app/test_e2e_browser.py (skipped otherwise). Saves compare.png
into $SEIKO_SCREENSHOT_DIR (a temporary folder when unset).
"""

from __future__ import annotations

from sqlalchemy import select

from app import ab
from db import repo
from db.engine import read_session, write_session
from db.models import ComparisonVote
from tests.app.e2e_support import MARKS, screenshot_dir, sign_in, watch_errors

pytestmark = MARKS


def test_compare_tab_votes_with_the_keyboard(ui_world_factory, e2e):
    world = ui_world_factory(n_images=4)
    with write_session(world.factory) as s:
        round1 = repo.create_round(session=s, experiment_id=world.experiment_id, index=1, adapter_path="adapters/x/round_1").id
    world.add_round_images(round1, 2, kind="eval", prompts=("a shape",))
    world.add_round_images(world.round_id, 1, kind="eval", start=2, prompts=("a shape",))  # round 0: seed 2 too
    world.add_round_images(round1, 1, kind="eval", start=2, prompts=("a shape",))
    with write_session(world.factory) as s:
        assert ab.create_round_pairs(session=s, round_id=round1, seed=5)["vs_previous"] == 3
    demo, browser = e2e(world.services())
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = watch_errors(page)
    sign_in(page, demo.local_url, "alice", wait_for="#rating-grid")
    page.get_by_role("tab", name="Compare").click()
    page.wait_for_selector("#compare-ab [data-pair-id]", timeout=30_000)
    page.screenshot(path=str(screenshot_dir() / "compare.png"))
    text = page.locator("#compare-ab").inner_text()
    assert "3 pairs left" in text and "round" not in text.lower() and "seed" not in text.lower()

    shown = []
    for key, left in (("ArrowRight", "2 pairs left"), ("ArrowDown", "1 pair left"), ("ArrowLeft", "No pairs to compare")):
        shown.append(int(page.locator("#compare-ab [data-pair-id]").get_attribute("data-pair-id")))
        page.keyboard.press(key)
        page.wait_for_function(f"document.querySelector('#compare-ab').innerText.includes({left!r})", timeout=30_000)
    with read_session(world.factory) as s:
        votes = {v.pair_id: (v.rater_id, v.choice) for v in s.scalars(select(ComparisonVote))}
    alice = world.accounts["alice"]
    assert votes == {shown[0]: (alice, "b"), shown[1]: (alice, "tie"), shown[2]: (alice, "a")}
    assert errors == []
