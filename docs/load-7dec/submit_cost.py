"""The rating answer's own cost, in process (no HTTP, no Gradio queue): 20 raters rate the same 220-image round
(overlap 20) through ``app.ui_rate.submit``, interleaved as the load test's raters are, N images each.

    taskset -c 0 python docs/load-7dec/submit_cost.py 40          # 800 calls: mean, p50 and p95 in ms
    taskset -c 0 python docs/load-7dec/submit_cost.py 40 --prof   # and cProfile's top functions of the project

It imports the installed project (``make setup``'s editable install), so it measures the checkout that is installed.
RELIABILITY.md section 2 ("24 Nov's code and today's on one machine") has its figures."""

from __future__ import annotations

import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

from app import auth, ui_rate
from app.auth import Who
from app.tools import harness


def main(argv: list[str]) -> None:
    per_rater = int(argv[0]) if argv and argv[0].isdigit() else 40
    with tempfile.TemporaryDirectory(prefix="submit-cost-") as tmp:
        root = Path(tmp)
        lab = harness.make_lab(root / "lab", harness.build_model(root / "model"))
        try:
            times, profile = _rate_all(lab, per_rater, "--prof" in argv)
        finally:
            lab.close()
    times.sort()
    print(f"n {len(times)} mean {1000 * statistics.fmean(times):.2f} ms p50 {1000 * times[len(times) // 2]:.2f} "
          f"p95 {1000 * times[int(len(times) * 0.95)]:.2f}")
    if profile:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(r"(app|db)/", 40)


def _rate_all(lab, per_rater: int, prof: bool) -> tuple[list[float], cProfile.Profile | None]:
    _, _, ids = harness.fake_open_round(lab, "load", 220, overlap=20, real_pngs=False)
    raters = [Who(auth.add_user(lab.factory, name=f"r{i:02d}", role="rater", password=harness.PASSWORD), f"r{i:02d}",
                  "rater", local=False) for i in range(20)]
    profile = cProfile.Profile() if prof else None
    times = []
    for image_id in ids[:per_rater]:
        for who in raters:
            t0 = time.perf_counter()
            if profile:
                profile.enable()
            ui_rate.submit(lab.factory, who, image_id, 5)
            if profile:
                profile.disable()
            times.append(time.perf_counter() - t0)
    return times, profile


if __name__ == "__main__":
    main(sys.argv[1:])
