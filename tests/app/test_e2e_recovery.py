"""End to end in a real browser: an admin recovers from a failed job and closes a round only after confirming.

A generate job is failed on purpose (the experiment's model is pointed at a missing directory and the real worker
runs the job until it has used its 3 attempts); the admin tab shows the failure; the admin fixes the cause and
presses "Retry failed job"; the worker runs the job again and round 0 opens for labeling, which the admin tab and
the rating page show. Then "Close round and train" only asks; the round closes on "Yes". A rater sees neither the
admin tab nor (by default) the dashboard.

Needs /usr/bin/chromium (``bash scripts/install_browser.sh``) and the ``playwright`` package; skipped otherwise (the
``e2e`` fixture, tests/app/e2e_support.py).
"""

from __future__ import annotations

import time

from app import auth
from app.ui import AppServices
from db import jobs as job_queue
from db import repo
from db.engine import read_session, write_session
from tests.app.e2e_support import MARKS, PASSWORD, sign_in, watch_errors

pytestmark = MARKS


def round0(world, experiment_id):
    with read_session(world.factory) as s:
        r = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=0)
        jobs = [(j.id, j.kind, j.status, j.attempts) for j in job_queue.list_jobs(session=s, experiment_id=experiment_id)]
        return r.status, jobs


def signed_in_page(browser, url: str, name: str):
    """A new page with ``name`` signed in, and the list its JavaScript errors go to."""
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = watch_errors(page)
    sign_in(page, url, name)
    return page, errors


def test_admin_retries_a_failed_job_and_confirms_closing_the_round(worker_world, tmp_path, e2e):
    world = worker_world
    auth.add_user(world.factory, name="root", role="admin", password=PASSWORD)
    auth.add_user(world.factory, name="alice", role="rater", password=PASSWORD)
    eid = world.create_experiment("recover")
    with write_session(world.factory) as s:  # fail the job on purpose: the model directory is gone
        repo.get_experiment(session=s, experiment_id=eid).model_spec = str(tmp_path / "moved-away")
    worker = world.worker()
    assert worker.run_once() is True  # a model that is gone fails at once (sixth review), not after 3 attempts
    status, jobs = round0(world, eid)
    ((job_id, _, job_status, attempts),) = jobs
    assert (status, job_status, attempts) == ("generating", "failed", 1)
    assert worker.run_once() is False  # stuck for good without the admin

    services = AppServices(factory=world.factory, settings=world.settings, local_mode=False, batch_size=4,
                           dashboard_refresh_s=1.0, rate_poll_s=1.0)
    demo, browser = e2e(services)
    try:
        page, errors = signed_in_page(browser, demo.local_url, "root")
        page.get_by_role("tab", name="Admin").click()
        page.wait_for_selector("#failed-job", timeout=30_000)
        assert f"Job {job_id} (generate) failed after 1 attempt:" in page.locator("#failed-job").inner_text()
        assert "does not exist" in page.locator("#failed-job").inner_text()

        with write_session(world.factory) as s:  # the admin fixes the cause (puts the model back)
            repo.get_experiment(session=s, experiment_id=eid).model_spec = str(world.model_dir)
        page.locator("#retry-job").click()
        page.wait_for_function("document.body.innerText.includes('is queued again')", timeout=30_000)
        status, jobs = round0(world, eid)
        assert jobs == [(job_id, "generate", "queued", 0)]

        assert worker.run_once() is True  # the worker runs the retried job: round 0 opens
        assert round0(world, eid)[0] == "labeling"
        page.wait_for_function("document.querySelector('#admin-round-status')"
                               " && document.querySelector('#admin-round-status').innerText.includes('labeling')",
                               timeout=30_000)
        assert page.locator("#failed-job").count() == 0

        # the rating page shows the new images; rate one with the keyboard
        page.get_by_role("tab", name="Rate").click()
        page.wait_for_selector("#rating-grid .rg-card", timeout=30_000)
        page.locator(".rg-card").first.focus()
        page.keyboard.press("7")
        page.wait_for_function("document.querySelector('.rg-card[data-state=rated]')", timeout=30_000)

        # closing asks first: one click changes nothing
        page.get_by_role("tab", name="Admin").click()
        page.get_by_role("button", name="Close round and train").click()
        page.wait_for_selector("#confirm-row", state="visible", timeout=30_000)
        assert "Close round 0 of 'recover'" in page.locator("#confirm-text").inner_text()
        time.sleep(1.0)
        assert round0(world, eid)[0] == "labeling"
        page.get_by_role("button", name="Yes, close round 0 and train").click()
        page.wait_for_function("document.body.innerText.includes('Round 0 closed')", timeout=30_000)
        assert round0(world, eid)[0] == "training"
        page.wait_for_selector("#confirm-row", state="hidden", timeout=30_000)
        assert not errors, errors

        # a rater sees neither the admin tab nor, unless the experiment allows it, the dashboard
        rater, rater_errors = signed_in_page(browser, demo.local_url, "alice")
        rater.wait_for_selector("#rate-progress", timeout=30_000)
        assert rater.get_by_role("tab", name="Admin").count() == 0
        assert rater.get_by_role("tab", name="Dashboard").count() == 0
        assert not rater_errors, rater_errors
    finally:
        worker.close()
    with read_session(world.factory) as s:
        actions = [e.action for e in repo.list_audit(session=s) if not e.action.startswith("user.")]
    assert actions[:2] == ["round.close", "job.retry"]  # newest first
