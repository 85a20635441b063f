"""The load test (scripts/loadtest.py) as a slow test: 20 raters x 200 ratings through gradio_client against the
launched server while the worker trains; zero lost, zero duplicated. Latency is printed, not asserted (it depends
on the machine and its other load; RELIABILITY.md records ours)."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_twenty_raters_two_hundred_ratings_each_lose_nothing(tmp_path, loadtest):
    out = tmp_path / "load.json"
    rc = loadtest.main(["--raters", "20", "--ratings", "200", "--workdir", str(tmp_path / "w"), "--json", str(out)])
    results = json.loads(out.read_text())
    print(json.dumps({k: results[k] for k in ("submit_rating_ms", "ratings_per_s", "worker_busy_fraction")}, indent=2))
    assert rc == 0 and results["ok"], json.dumps(results, indent=2)
    assert results["acknowledged"] == results["stored"] == 4000 and results["lost"] == results["duplicated"] == 0
