"""A page action waits for a database lock at most db.engine.BUSY_TIMEOUT_MS, on SQLite and on PostgreSQL, and a wait
that runs out is one sentence (eleventh review)."""

from __future__ import annotations

import json
import re
import time

import gradio as gr
import pytest
from sqlalchemy import func, select

from db import engine as db_engine
from db.engine import lock_refusal, write_session
from db.models import Image, Rating
from tests.db.lock_support import ended_behind

BOUND_MS = 500  # BUSY_TIMEOUT_MS for these tests: short, so a wait that ends ends soon


def _who(world):
    from app import auth

    return auth.identify(world.factory, local_mode=False, username="alice", client_host="127.0.0.1")


def _hold_image(factory, image_id: int):
    """An open write transaction holding what a rating of ``image_id`` needs: SQLite's write lock (BEGIN IMMEDIATE),
    PostgreSQL's row lock on the image (FOR UPDATE), as another rater's rating of it would."""
    held = factory()
    held.execute(select(Image.id).where(Image.id == image_id).with_for_update())  # SQLite: begins IMMEDIATE
    return held


def _ratings(factory, image_id: int) -> int:
    with write_session(factory) as s:
        return s.scalar(select(func.count()).select_from(Rating).where(Rating.image_id == image_id))


def test_a_rating_behind_a_held_lock_gives_up_after_the_busy_timeout_with_one_sentence(ui_world, monkeypatch):
    """On PostgreSQL nothing bounded a lock wait (no lock_timeout): a rating behind another transaction's row lock on
    its image waited for good, while the page gave the action up ACTION_RUN_S after the server started it, a bound
    counted from SQLite's busy timeout (app.ui_assets). Now every connection's lock_timeout is BUSY_TIMEOUT_MS
    (db.engine), and a lock not granted in it, on either backend, answers the action ``failed`` with one sentence
    (db.engine.lock_refusal; it was "the server could not handle this action" and a traceback on SQLite). Nothing of
    it was saved, and the same rating sent again once the lock is gone is saved once."""
    from app import ui_rate
    from app.ui_rate_tab import RateHandlers

    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", BOUND_MS)
    ui_world._engine.dispose()  # the pool's connections were set up with the old bound; new ones get this one
    alice = _who(ui_world)
    warnings: list = []
    handlers = RateHandlers(ui_world.services(), lambda request: alice, warnings.append)
    state = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, alice, None, batch_size=4).state
    image = state["batch"][0]
    request = gr.Request(username="alice", client={"host": "127.0.0.1", "port": 1})
    payload = {"image_id": image, "score": 7, "seq": 3}
    out: dict = {}

    def act():
        started = time.monotonic()
        out["outputs"] = handlers.on_rate(state, gr.EventData(None, payload), request)
        out["took"] = time.monotonic() - started

    ended = ended_behind(_hold_image(ui_world.factory, image), act)
    assert ended, "the rating still waited for the lock long after the busy timeout"
    assert out["took"] >= 0.5 * BOUND_MS / 1000, out  # it waited for the lock, not refused at once
    assert json.loads(out["outputs"][1]) == {"failed": True, "done": 3}
    expected = lock_refusal(_lock_error())
    assert warnings == [expected] and "was not saved" in expected and f"{BOUND_MS / 1000:g} s" in expected
    assert _ratings(ui_world.factory, image) == 0
    outputs = handlers.on_rate(state, gr.EventData(None, payload), request)  # sent again, the lock gone
    assert json.loads(outputs[1])["done"] == 3 and _ratings(ui_world.factory, image) == 1


def _lock_error():
    """PostgreSQL's lock_not_available as SQLAlchemy raises it (the sentence is the same for SQLite's busy)."""
    from sqlalchemy.exc import OperationalError

    class LockNotAvailable(Exception):
        sqlstate = "55P03"

    return OperationalError("SELECT", {}, LockNotAvailable("canceling statement due to lock timeout"))


def test_a_workers_claim_behind_a_held_lock_is_waited_out_not_the_end_of_the_worker(worker_world_any_db, monkeypatch,
                                                                                    caplog):
    """A claim behind a lock on the jobs (a migration's, an admin's transaction) waited for good on PostgreSQL; with
    lock_timeout it fails after BUSY_TIMEOUT_MS with lock_not_available (55P03), which is_outage took for a refusal
    for good (class 55, not an outage): the worker would have ended. It is waited out, as SQLite's "database is
    locked" is, and the next claim, the lock gone, takes the job."""
    from sqlalchemy import text

    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", BOUND_MS)
    caplog.set_level("WARNING", logger="seiko.worker")
    world = worker_world_any_db
    world.create_experiment("behind-a-lock")  # queues its first generate job
    worker = world.worker()
    worker.start()
    claimed: list = []
    worker.handlers = {kind: claimed.append for kind in worker.handlers}  # the job is only claimed, not run
    worker.stop()  # no wait (1 s) after the failed claim; a job claimed now is handed straight back
    held = world.factory()
    held.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE" if held.get_bind().dialect.name == "postgresql"
                      else "SELECT 1"))  # SQLite: its write lock
    out: dict = {}
    ended = ended_behind(held, lambda: out.update(result=worker.run_once_outlasting_outages()))
    try:
        assert ended, "the claim still waited for the lock long after the busy timeout"
        assert out == {"result": None}  # waited out (an outage), not raised
        said = [r for r in caplog.records if r.name == "seiko.worker" and "trying again" in r.getMessage()]
        # said as a lock held, not as "the database could not be reached" with a traceback (second read-only review)
        assert len(said) == 1 and "lock was not granted" in said[0].getMessage(), [r.getMessage() for r in said]
        assert said[0].levelname == "WARNING" and said[0].exc_info is None
        assert worker.run_once_outlasting_outages() is True  # the lock gone: claimed (and handed back, stopping)
    finally:
        worker.close()


def test_the_pages_other_actions_say_a_lock_not_granted_in_the_same_sentence():
    """app.ui._shown (the admin's and the dashboard's actions): a lock not granted in time was Gradio's bare "Error";
    it is the sentence the Rate tab gives. Any other OperationalError (the database away) is raised as it was."""
    from sqlalchemy.exc import OperationalError

    from app.ui import _shown

    def locked():
        raise _lock_error()

    with pytest.raises(gr.Error) as shown:
        _shown(locked)
    sentence = lock_refusal(_lock_error())
    assert shown.value.message == sentence[0].upper() + sentence[1:] + "."

    def away():
        raise OperationalError("SELECT", {}, Exception("server closed the connection unexpectedly"))

    with pytest.raises(OperationalError):
        _shown(away)


def test_a_command_says_a_lock_not_granted_in_the_same_sentence():
    """A command (`users add`, `export`) that met a lock not granted in time said "the database could not be used
    (canceling statement due to lock timeout)", as if the database were away; it says the same sentence as the page."""
    from app.__main__ import refusal

    assert refusal(_lock_error()) == lock_refusal(_lock_error())


def test_a_rating_behind_a_lock_on_the_web_server_is_said_as_a_lock_wait_and_saved_once_sent_again(ui_world,
                                                                                                   monkeypatch):
    """On PostgreSQL the web server's engine (app.cli_serve.build_services) bounds its statements (statement_timeout,
    twelfth review). A rating behind another transaction's row lock, the lock bound (here ours, 10 s) not below the
    statement bound (here 0.5 s), was cancelled at the statement bound (57014) and said as a statement that "ran for
    more than 0.5 s". The web engine's lock bound is below its statement bound now (a third of it: thirteenth review),
    so the wait ends as a lock not granted and is said as one; nothing of it is saved, and the same rating sent again
    is saved once."""
    from app import ui_rate
    from app.cli_serve import build_services
    from app.ui_rate_tab import RateHandlers

    if not ui_world.settings.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's statement_timeout")
    monkeypatch.setattr(db_engine, "WEB_STATEMENT_TIMEOUT_MS", BOUND_MS)  # BUSY_TIMEOUT_MS stays 10 s
    engine, services = build_services(ui_world.settings, batch_size=4)
    try:
        alice = _who(ui_world)
        warnings: list = []
        handlers = RateHandlers(services, lambda request: alice, warnings.append)
        state = ui_rate.load_batch(services.factory, ui_world.settings.data_dir, alice, None, batch_size=4).state
        image = state["batch"][0]
        request = gr.Request(username="alice", client={"host": "127.0.0.1", "port": 1})
        payload = {"image_id": image, "score": 6, "seq": 5}
        out: dict = {}
        ended = ended_behind(_hold_image(ui_world.factory, image),
                             lambda: out.update(outputs=handlers.on_rate(state, gr.EventData(None, payload), request)))
        assert ended, "the rating still waited long after its statement's bound"
        assert json.loads(out["outputs"][1]) == {"failed": True, "done": 5}
        assert warnings == [f"the database is busy: another transaction held a lock this needed for more than "
                            f"{BOUND_MS // 3 / 1000:g} s, so the change that waited for it was not saved; try again "
                            "in a moment"]
        assert _ratings(ui_world.factory, image) == 0
        outputs = handlers.on_rate(state, gr.EventData(None, payload), request)  # sent again, the lock gone
        assert json.loads(outputs[1])["done"] == 5 and _ratings(ui_world.factory, image) == 1
    finally:
        engine.dispose()


def test_a_workers_log_names_the_operators_own_lock_bound(worker_world_any_db, monkeypatch, caplog):
    """The worker's line for a claim behind a held lock said "not granted within 10 s" (BUSY_TIMEOUT_MS) whatever the
    connection's lock_timeout; with the operator's own kept (twelfth review: here the URL's options, 0.7 s) it names
    that one."""
    import dataclasses

    from sqlalchemy import text

    from app.worker import Worker

    world = worker_world_any_db
    if not world.settings.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's lock_timeout set in the URL")
    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", BOUND_MS)
    caplog.set_level("WARNING", logger="seiko.worker")
    world.create_experiment("behind-a-lock")  # queues its first generate job
    settings = dataclasses.replace(world.settings, db_url=f"{world.settings.db_url}?options=-c%20lock_timeout%3D700")
    worker = Worker(settings, "worker-1", lease_s=30.0, poll_s=0.05, device="cpu")
    worker.start()
    worker.stop()
    held = world.factory()
    held.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))
    out: dict = {}
    ended = ended_behind(held, lambda: out.update(result=worker.run_once_outlasting_outages()))
    try:
        assert ended and out == {"result": None}
        said = [r.getMessage() for r in caplog.records if r.name == "seiko.worker" and "trying again" in r.getMessage()]
        assert len(said) == 1 and "a database lock was not granted within 0.7 s" in said[0], said
    finally:
        worker.close()


def _cut_worker(world, options: str):
    """A started worker of ``world`` whose URL carries the operator's own bounds ``options`` (libpq's -c settings)."""
    import dataclasses

    from app.worker import Worker

    settings = dataclasses.replace(world.settings, db_url=f"{world.settings.db_url}?options={options}")
    worker = Worker(settings, "worker-1", lease_s=30.0, poll_s=0.05, device="cpu")
    worker.start()
    return worker


def test_a_workers_claim_cancelled_at_the_operators_statement_bound_is_said_and_costs_nothing(worker_world_any_db,
                                                                                              caplog):
    """A claim behind a lock on the jobs where the operator's lock_timeout is none (0) and their statement_timeout is
    set (kept on the worker's engine): PostgreSQL cancels it at the statement bound (57014). It was logged as "the
    database could not be reached" with a traceback. No job is held (the claim rolled back), so no attempt is spent:
    it is said in one warning naming the bound, and tried again as a claim behind a lock is; once the lock is gone
    the job is claimed."""
    from sqlalchemy import text

    world = worker_world_any_db
    if not world.settings.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's statement_timeout set in the URL")
    caplog.set_level("WARNING", logger="seiko.worker")
    world.create_experiment("behind-a-lock")  # queues its first generate job
    worker = _cut_worker(world, "-c%20lock_timeout%3D0%20-c%20statement_timeout%3D500")
    claimed: list = []
    worker.handlers = {kind: claimed.append for kind in worker.handlers}  # the job is only claimed, not run
    worker.stop()  # no wait after the failed claim; a job claimed now is handed straight back
    held = world.factory()
    held.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))
    out: dict = {}
    ended = ended_behind(held, lambda: out.update(result=worker.run_once_outlasting_outages()))
    try:
        assert ended and out == {"result": None}
        said = [r for r in caplog.records if r.name == "seiko.worker" and "trying again" in r.getMessage()]
        assert len(said) == 1 and said[0].levelname == "WARNING" and said[0].exc_info is None, \
            [(r.levelname, r.getMessage()) for r in said]
        assert ("the database cancelled its claim of a job (the database's statement_timeout of 0.5 s ran out: it ran, "
                "or waited for a lock another transaction held, that long); nothing was claimed") in said[0].getMessage()
        assert worker.run_once_outlasting_outages() is True  # the lock gone: claimed (and handed back, stopping)
    finally:
        worker.close()


CLAIMS_CANCELLED_MAX = 10  # the rule (docs/worker.md): the 10th claim in a row the database cancels ends the worker
TINY_CUT = "-c%20lock_timeout%3D0%20-c%20statement_timeout%3D100"  # a claim behind a lock is cancelled after 0.1 s


def _jobs_locked(world):
    """A session of ``world`` holding PostgreSQL's EXCLUSIVE lock on the jobs, as a migration's or an admin's
    transaction would: a claim waits behind it."""
    from sqlalchemy import text

    held = world.factory()
    held.execute(text("LOCK TABLE jobs IN EXCLUSIVE MODE"))
    return held


def _claims_behind_a_lock(world, worker, tries: int) -> dict:
    """``tries`` claims of ``worker`` (run_once_outlasting_outages) behind ``_jobs_locked``, the lock let go after:
    {"results": what each returned, "stopped": the WorkerRefused that ended them, if one did}."""
    from app.worker import WorkerRefused

    out: dict = {"results": []}

    def claim() -> None:
        try:
            for _ in range(tries):
                out["results"].append(worker.run_once_outlasting_outages())
        except WorkerRefused as exc:
            out["stopped"] = exc

    assert ended_behind(_jobs_locked(world), claim), "the claims still waited for the lock long after their bound"
    return out


def _queued_untouched(world) -> None:
    from db import jobs as job_queue
    from db.engine import read_session

    with read_session(world.factory) as s:
        [job] = job_queue.list_jobs(session=s)
        assert (job.status, job.attempts, job.error) == ("queued", 0, None)


def _skip_on_sqlite(world) -> None:
    if not world.settings.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's statement_timeout set in the URL")


def test_a_worker_whose_claims_are_cancelled_ten_times_in_a_row_stops_in_one_sentence(worker_world_any_db, caplog):
    """A statement_timeout of the operator's that cancels every claim of a job (here 0.1 s, with lock_timeout 0, the
    jobs locked) was one warning per try, every 30 s at most, without end: a worker that could never take a job ran
    on, quiet but for those lines. The first nine cancels in a row are still waited out, one warning each counting
    them; the tenth ends the worker (ClaimsCancelled, a WorkerRefused) in one sentence naming statement_timeout, the
    bound in force and how to change it. No job was claimed, so none spent an attempt."""
    world = worker_world_any_db
    _skip_on_sqlite(world)
    caplog.set_level("WARNING", logger="seiko.worker")
    world.create_experiment("behind-a-lock")  # queues its first generate job
    worker = _cut_worker(world, TINY_CUT)
    worker.stop()  # no wait between the tries
    try:
        out = _claims_behind_a_lock(world, worker, CLAIMS_CANCELLED_MAX + 2)  # more than enough: the old code ran on
    finally:
        worker.close()
    assert out["results"] == [None] * (CLAIMS_CANCELLED_MAX - 1), out
    stopped = out.get("stopped")
    assert type(stopped).__name__ == "ClaimsCancelled", out
    assert stopped.__cause__.orig.sqlstate == "57014"
    pattern = (r"worker 'worker-1' stopped: the database cancelled its claim of a job 10 times in a row over \d+ s "
               r"\(the database's statement_timeout of 0\.1 s ran out: it ran, or waited for a lock another transaction "
               r"held, that long\), so it would never take a job; nothing was claimed; give the worker a longer "
               r"statement_timeout, or a lock_timeout below it, so that a wait for a lock ends as a lock not granted, "
               r"which the worker waits out, then start it again: in the worker's database URL \(SEIKO_DB_URL or "
               r"--db-url\), add `-c statement_timeout=0` to its options \(or raise the role's, database's or "
               r"server's setting\)")
    assert re.fullmatch(pattern, str(stopped)), str(stopped)
    said = [r for r in caplog.records if r.name == "seiko.worker" and "cancelled its claim" in r.getMessage()]
    assert [r.getMessage().rsplit("(", 1)[1] for r in said] == [
        f"{n} of 10 such claims in a row before the worker stops)" for n in range(1, CLAIMS_CANCELLED_MAX)]
    assert all(r.levelname == "WARNING" and r.exc_info is None for r in said)
    _queued_untouched(world)


def test_claims_cancelled_count_only_in_a_row_and_one_cancel_is_still_retried(worker_world_any_db, caplog):
    """The rule counts cancelled claims in a row: nine cancels (one short of the end), then a claim that goes through
    (the lock gone), then one more cancel: that one is waited out as the first of a new run, said "1 of 10", and the
    worker claims the job once the lock is gone again. A count of every cancel ever would have ended it there."""
    world = worker_world_any_db
    _skip_on_sqlite(world)
    caplog.set_level("WARNING", logger="seiko.worker")
    world.create_experiment("behind-a-lock")  # queues its first generate job
    worker = _cut_worker(world, TINY_CUT)
    claimed: list = []
    worker.handlers = {kind: claimed.append for kind in worker.handlers}  # the job is only claimed, not run
    worker.stop()  # no wait between the tries; a job claimed now is handed straight back, no attempt used
    try:
        first = _claims_behind_a_lock(world, worker, CLAIMS_CANCELLED_MAX - 1)
        assert first == {"results": [None] * (CLAIMS_CANCELLED_MAX - 1)}, first
        assert worker.run_once_outlasting_outages() is True  # the lock gone: claimed (and handed back, stopping)
        caplog.clear()
        again = _claims_behind_a_lock(world, worker, 1)
        assert again == {"results": [None]}, again  # a transient cancel: tried again, not the end of the worker
        said = [r.getMessage() for r in caplog.records if "cancelled its claim" in r.getMessage()]
        assert len(said) == 1 and said[0].endswith("(1 of 10 such claims in a row before the worker stops)"), said
        assert worker.run_once_outlasting_outages() is True  # and once the lock is gone the job is claimed
    finally:
        worker.close()
    assert claimed == []  # handed back at each claim (the worker is stopping), never run
    _queued_untouched(world)


def test_the_worker_command_ends_with_status_1_and_the_sentence_when_its_claims_keep_being_cancelled(
        worker_world_any_db, monkeypatch, capsys):
    """`python -m app worker` (app.cli_worker.main) behind a statement_timeout that cancels every claim: it ran on
    for good; it ends with status 1 and the one sentence on stderr (the waits between the tries are cut to none
    here: DB_RETRY_MAX_S 0)."""
    import argparse
    import os
    import signal
    import threading

    from app import cli_worker
    from app import worker as worker_mod

    world = worker_world_any_db
    _skip_on_sqlite(world)
    world.create_experiment("behind-a-lock")
    monkeypatch.setattr(worker_mod, "DB_RETRY_MAX_S", 0.0)
    parser = argparse.ArgumentParser()
    cli_worker.add_arguments(parser)
    args = parser.parse_args(["--data-dir", world.settings.data_dir.as_posix(), "--db-url",
                              f"{world.settings.db_url}?options={TINY_CUT}", "--worker-id", "w1", "--nice", "0"])
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    # a worker that never stops by itself (the old code) is stopped as a service manager would, to fail, not hang
    guard = threading.Timer(60, os.kill, (os.getpid(), signal.SIGTERM))
    held = _jobs_locked(world)
    try:
        guard.start()
        status = cli_worker.main(args)
    finally:
        guard.cancel()
        guard.join()
        held.rollback()
        held.close()
        for signum, handler in handlers.items():  # main installs the worker's
            signal.signal(signum, handler)
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("worker 'w1' stopped: the database cancelled its claim of a job 10 times in a row over ")
    assert err.endswith(", add `-c statement_timeout=0` to its options (or raise the role's, database's or server's "
                        "setting)\n") and err.count("\n") == 1, err
    _queued_untouched(world)


def test_a_jobs_statement_cancelled_at_the_operators_statement_bound_fails_one_attempt_in_one_sentence(
        worker_world_any_db, caplog):
    """A statement of a job cancelled at the operator's statement_timeout (57014) failed the attempt with the driver's
    words ("OperationalError: (psycopg.errors.QueryCanceled) ...") as the job's error and a traceback. It is one
    attempt still (bounded by the job's max_attempts, as any failure), said in one sentence naming the bound."""
    from sqlalchemy import text

    from db import jobs as job_queue
    from db.engine import read_session

    world = worker_world_any_db
    if not world.settings.db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's statement_timeout set in the URL")
    caplog.set_level("INFO", logger="seiko.worker")
    world.create_experiment("a-long-read")  # queues its first generate job
    worker = _cut_worker(world, "-c%20statement_timeout%3D300")

    def long_read(run):
        with write_session(worker.factory) as s:
            s.execute(text("SELECT pg_sleep(5)"))  # without the bound it ends after 5 s, and the job is done
        return {}

    worker.handlers = {kind: long_read for kind in worker.handlers}
    try:
        assert worker.run_once() is True
        expected = ("the database is busy: a statement of this ran for more than 0.3 s, its bound, and was cancelled, "
                    "so the change it belonged to was not saved; this attempt of the job failed")
        failed = [r for r in caplog.records if "failed after" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelname == "WARNING" and failed[0].exc_info is None
        assert failed[0].getMessage().endswith(expected)
    finally:
        worker.close()
    with read_session(world.factory) as s:
        [job] = job_queue.list_jobs(session=s)
        assert (job.status, job.attempts, job.error) == ("queued", 1, expected)
