"""Load: the cost of one rating must not grow with the round (found while profiling the load test), and the load
test itself (app.tools.loadtest) as a slow test: 20 raters x 200 ratings through gradio_client against the launched
server while the worker trains; zero lost, zero duplicated. Latency is printed, not asserted (it depends on the
machine and its other load; RELIABILITY.md records ours)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import event

from app import ui_rate
from app.auth import Who
from app.tools import harness, loadtest
from db import repo
from db.engine import read_session
from db.models import Image


def test_a_rating_loads_only_its_own_image_however_large_the_round(plain_lab):
    """submit_rating used to load every image still offered to the rater (embeddings included) twice per call, once
    to check the rated one was offered and once to count "left for you": O(round size) per rating. It now asks SQL."""
    lab = plain_lab
    _, round_id, ids = harness.fake_open_round(lab, "big", 300, overlap=2)
    rater = harness.make_raters(lab, 1, prefix="big")[0]
    who = Who(rater, "big-0", "rater", local=False)
    loaded: list[int] = []

    def on_load(target, context):
        loaded.append(target.id)

    event.listen(Image, "load", on_load)
    try:
        out = ui_rate.submit(lab.factory, who, ids[150], 7)
    finally:
        event.remove(Image, "load", on_load)
    assert out["progress"]["you_left"] == 299 and out["previous_score"] is None
    assert len(loaded) <= 3, f"one rating loaded {len(loaded)} image rows"
    with read_session(lab.factory) as s:  # the SQL count and check agree with the list they replace
        offered = repo.next_images_for_rater(session=s, round_id=round_id, rater_id=rater, limit=1000, kind="query")
        assert repo.count_images_for_rater(session=s, round_id=round_id, rater_id=rater, kind="query") == len(offered) == 299
        assert repo.count_images_for_rater(session=s, round_id=round_id, rater_id=rater, image_id=ids[150]) == 0
        assert repo.count_images_for_rater(session=s, round_id=round_id, rater_id=rater, image_id=ids[0]) == 1


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_twenty_raters_two_hundred_ratings_each_lose_nothing(tmp_path):
    out = tmp_path / "load.json"
    rc = loadtest.main(["--raters", "20", "--ratings", "200", "--workdir", str(tmp_path / "w"), "--json", str(out)])
    results = json.loads(out.read_text())
    print(json.dumps({k: results[k] for k in ("submit_rating_ms", "ratings_per_s", "worker_busy_fraction")}, indent=2))
    assert rc == 0 and results["ok"], json.dumps(results, indent=2)
    assert results["acknowledged"] == results["stored"] == 4000 and results["lost"] == results["duplicated"] == 0
