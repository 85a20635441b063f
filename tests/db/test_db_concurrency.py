"""The web app and the worker write at once from two processes: nothing may fail or get lost."""

import multiprocessing
import time
import traceback

from sqlalchemy import func, select

from db import jobs as job_queue
from db import repo
from db.engine import make_engine, read_session, session_factory, write_session
from db.models import Rating

N_RATINGS = 200


def _rate_everything(url, image_ids, rater_ids, start, report):
    factory = session_factory(make_engine(url))
    errors = []
    start.wait(60)
    began = time.monotonic()
    for rater in rater_ids:
        for image in image_ids:
            try:
                with write_session(factory) as s:
                    repo.add_rating(session=s, image_id=image, rater_id=rater, score=1 + (image + rater) % 10)
            except Exception:
                errors.append(traceback.format_exc())
    report.put(("ratings", len(errors), errors[:3], began, time.monotonic()))


def _run_jobs(url, experiment_id, start, report):
    factory = session_factory(make_engine(url))
    errors = []
    start.wait(60)
    began = time.monotonic()
    for i in range(40):
        try:
            with write_session(factory) as s:
                job_queue.enqueue_job(session=s, kind="generate", experiment_id=experiment_id)
            with write_session(factory) as s:
                job = job_queue.claim_job(session=s, worker_id="worker", lease_s=30)
            for step in range(3):
                with write_session(factory) as s:
                    assert job_queue.heartbeat(
                        session=s,
                        job_id=job.id,
                        worker_id="worker",
                        lease_s=30,
                        progress={"phase": "sample", "step": step, "total": 3, "eta_s": 1.0},
                    )
            with write_session(factory) as s:
                job_queue.complete_job(session=s, job_id=job.id, worker_id="worker", result={"i": i})
        except Exception:
            errors.append(traceback.format_exc())
    report.put(("jobs", len(errors), errors[:3], began, time.monotonic()))


def test_ratings_and_job_writes_from_two_processes(db_factory, db_url, make_world):
    world = make_world(n_images=20, n_raters=10)
    assert len(world.image_ids) * len(world.rater_ids) == N_RATINGS
    context = multiprocessing.get_context("spawn")
    # a barrier, not an event: each writer starts once BOTH have imported and connected (on a loaded machine one
    # process can take seconds longer to start than the other)
    start, report = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_rate_everything, args=(db_url, world.image_ids, world.rater_ids, start, report)),
        context.Process(target=_run_jobs, args=(db_url, world.experiment_id, start, report)),
    ]
    for p in processes:
        p.start()
    reports = sorted(report.get(timeout=240) for _ in processes)  # before join: a full pipe would block the child
    for p in processes:
        p.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    assert [(name, n) for name, n, *_ in reports] == [("jobs", 0), ("ratings", 0)], "\n".join(e for r in reports for e in r[2])
    (_, _, _, jobs_began, jobs_ended), (_, _, _, ratings_began, ratings_ended) = reports
    assert jobs_began < ratings_ended and ratings_began < jobs_ended, "the two writers did not overlap in time"
    with read_session(db_factory) as s:
        assert s.scalar(select(func.count(Rating.id))) == N_RATINGS
        assert len(job_queue.list_jobs(session=s, status="done")) == 40


def test_two_raters_racing_for_the_last_rating_an_image_needs_leave_one_rating(db_factory, make_world):
    """overlap 1: rater A rates inside an open transaction; rater B's rating of the same image must wait for A and
    then be refused. On PostgreSQL (READ COMMITTED) B used to see no rating yet and insert a second one."""
    import threading

    from app.auth import Who
    from app.ui_rate import NotOffered, rate_in_session

    world = make_world(n_images=1, n_raters=2, overlap=1)
    image = world.image_ids[0]
    a, b = (Who(r, f"rater{r}", "rater", local=False) for r in world.rater_ids)
    outcome = {}

    def rate_b():
        try:
            with write_session(db_factory) as s:
                outcome["b"] = rate_in_session(s, b, image, 7)
        except Exception as exc:  # noqa: BLE001 - the test inspects it below
            outcome["b"] = exc

    with write_session(db_factory) as s:
        assert rate_in_session(s, a, image, 5) is None
        t = threading.Thread(target=rate_b)
        t.start()
        t.join(1.5)
        assert t.is_alive(), f"B did not wait for A's open transaction: {outcome.get('b')!r}"
    t.join(60)
    assert isinstance(outcome["b"], NotOffered), outcome["b"]
    with read_session(db_factory) as s:
        scores = s.scalars(select(Rating.score).where(Rating.image_id == image)).all()
    assert scores == [5]
