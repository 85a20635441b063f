"""A flood of wrong sign-ins must not slow a rater down (issue 13, item 2): a short run of app.tools.login_flood.

The full measurement (RELIABILITY.md, section 6) is ``python -m app.tools.login_flood --json flood.json``.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_rating_p95_stays_within_twice_its_usual_during_50_wrong_sign_ins_a_second(tmp_path):
    from app.tools import login_flood

    run = login_flood.run_mode("guard", ratings=90, rate=50.0, root=tmp_path, blocks=3, max_phase_s=90)
    flood = run["flood"]
    assert flood["rate"] >= 40, flood  # the flood really ran at about 50 a second
    assert run["flood_ms"]["n"] == 90 and run["rating_timeouts"] == 0, run  # every rating of the phase was answered in time
    assert run["server_login_stats"]["logins"]["ok"] == 1  # the rater's own sign-in; no wrong guess got in
    assert run["p95_ratio"] <= 2.0, run
