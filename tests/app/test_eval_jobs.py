"""The worker's eval job without a model (the ui_world's small PNGs stand in for the grid; rendering, where a test
needs it, is a stub): eval jobs that finish out of order still complete the A/B pairs, a running eval job stops when
its experiment is finished, and a hand-back the database refuses does not stop the worker."""

from __future__ import annotations

import logging
from contextlib import contextmanager
from types import SimpleNamespace

import torch
from sqlalchemy.exc import OperationalError

from app import ab
from app import worker as worker_module
from db import comparisons, repo
from db import jobs as job_queue
from db.engine import read_session, write_session


def _grid_config(world, seeds=(0, 1)) -> None:
    """The experiment's eval grid: "a shape" x ``seeds`` (the ui_world's eval images of round 0 are seeds 0 and 1)."""
    with write_session(world.factory) as s:
        repo.get_experiment(session=s, experiment_id=world.experiment_id).config = {
            "eval_prompts": ["a shape"], "eval_seeds": list(seeds), "sampling": {"eta": 0.0, "batch_size": 4}}


def _round(world, index: int, status: str = "done") -> int:
    with write_session(world.factory) as s:
        round_ = repo.create_round(session=s, experiment_id=world.experiment_id, index=index,
                                   adapter_path=f"adapters/x/round_{index}")
        round_.status = status
        return round_.id


def _eval_job(world, round_id: int, index: int) -> int:
    with write_session(world.factory) as s:
        return job_queue.enqueue_job(session=s, kind="eval", experiment_id=world.experiment_id, round_id=round_id,
                                     payload={"round_index": index}).id


def _worker(world, **kwargs):
    return worker_module.Worker(world.settings, "w1", lease_s=30, poll_s=0.05, device="cpu", **kwargs)


def _job(world, job_id: int):
    with read_session(world.factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        return SimpleNamespace(status=job.status, error=job.error, lease_owner=job.lease_owner, attempts=job.attempts)


def test_eval_jobs_that_finish_out_of_order_complete_the_ab_pairs(ui_world):
    """Round 2's eval job publishes while round 1's grid has 1 of its 2 images (round 1's eval job gave way, or
    failed and waits for a retry): round 2 is paired with what there is. When round 1's eval job publishes, round 2
    gets the pair it lacked, with the side the rule gives it."""
    _grid_config(ui_world)
    round1, round2 = _round(ui_world, 1), _round(ui_world, 2)
    ui_world.add_round_images(round1, 1, kind="eval", prompts=("a shape",))
    ui_world.add_round_images(round2, 2, kind="eval", prompts=("a shape",))
    worker = _worker(ui_world)
    e2 = _eval_job(ui_world, round2, 2)
    assert worker.run_once() and worker.last_error is None and _job(ui_world, e2).status == "done"
    with read_session(ui_world.factory) as s:
        assert repo.get_round(session=s, round_id=round2).metrics["ab"]["vs_previous"] == 1
        assert len(comparisons.list_pairs(session=s, experiment_id=ui_world.experiment_id, kind="ab", round_id=round2)) == 3
    ui_world.add_round_images(round1, 1, kind="eval", start=1, prompts=("a shape",))  # the rest of round 1's grid
    e1 = _eval_job(ui_world, round1, 1)
    assert worker.run_once() and worker.last_error is None and _job(ui_world, e1).status == "done"
    with read_session(ui_world.factory) as s:
        metrics = repo.get_round(session=s, round_id=round2).metrics
        pairs = [(p.image_a_id, p.image_b_id)
                 for p in comparisons.list_pairs(session=s, experiment_id=ui_world.experiment_id, kind="ab", round_id=round2)]
        mine = {im.id: im.seed for im in repo.list_images(session=s, round_id=round2, kind="eval")}
        theirs = {im.id: im.seed for im in repo.list_images(session=s, round_id=round1, kind="eval")}
        assert len(repo.list_images(session=s, round_id=round1, kind="eval")) == 2
    seed2 = metrics["ab"]["side_seed"]
    assert metrics["ab"] == {"side_seed": seed2, "previous_index": 1, "vs_previous": 2, "vs_base": 2}
    # the round's secret seed (drawn when first paired, kept for the late pair), not the documented derive_seed formula
    assert seed2 != worker_module.derive_seed(ui_world.experiment_id, 2, "ab-sides")
    vs_round1 = [(a, b) for a, b in pairs if a in theirs or b in theirs]
    assert len(pairs) == 4 and len(vs_round1) == 2
    for a, b in vs_round1:  # every pair against round 1, the late one too, has its side by the rule
        new_left = a in mine
        cell_seed = mine[a] if new_left else mine[b]
        assert new_left == ab.new_image_left(seed2, 1, "a shape", cell_seed)
        assert theirs[b if new_left else a] == cell_seed
    worker.close()


def test_a_running_eval_job_stops_cleanly_when_its_experiment_is_finished(ui_world, monkeypatch, caplog):
    """Finishing the experiment does not wait for its running eval job; the job stores the chunk it was rendering,
    sees the experiment finished and stops: failed with the experiment's "cancelled" reason, no error, no retry."""
    _grid_config(ui_world, seeds=(0, 1, 2, 3))  # seeds 2 and 3 are still to render: two chunks of one image
    job_id = _eval_job(ui_world, ui_world.round_id, 0)
    worker = _worker(ui_world, eval_chunk=1)
    monkeypatch.setattr(worker, "_parts", lambda spec: SimpleNamespace(device="cpu"))
    monkeypatch.setattr(worker, "_use_adapter", lambda parts, round_: None)
    calls = []

    def render(parts, adapter, prompts, seeds, cfg, on_progress=None, as_uint8=False):
        calls.append(list(seeds))
        with write_session(ui_world.factory) as s:  # the admin finishes the experiment while the chunk renders
            repo.finish_experiment(session=s, experiment_id=ui_world.experiment_id)
        return torch.rand(len(seeds), 3, 16, 16), torch.rand(len(seeds), 4)

    monkeypatch.setattr(worker_module, "generate_batch", render)
    with caplog.at_level(logging.INFO, logger="seiko.worker"):
        assert worker.run_once()
    assert worker.last_error is None and calls == [[2]]  # the second chunk was never rendered
    job = _job(ui_world, job_id)
    assert (job.status, job.error, job.lease_owner) == ("failed", repo.finished_reason("ui-exp"), "w1")
    assert f"job {job_id} (eval, round 0) stopped" in caplog.text and "3 of 4 eval images stored" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("seiko") and r.levelno >= logging.WARNING]
    with read_session(ui_world.factory) as s:  # the chunk rendered before the stop is kept
        assert sorted(im.seed for im in repo.list_images(session=s, round_id=ui_world.round_id, kind="eval")) == [0, 1, 2]
        assert repo.get_round(session=s, round_id=ui_world.round_id).status == "done"
    assert not worker.run_once()  # nothing left to claim: the job is not retried
    worker.close()


def test_a_hand_back_the_database_refuses_is_logged_and_the_worker_carries_on(ui_world, monkeypatch, caplog):
    """The yield's transaction fails (the database is away): run_once logs it with the job's id and returns; the job
    stays claimed until its lease runs out, then a worker takes it again."""
    job_id = _eval_job(ui_world, ui_world.round_id, 0)
    worker = _worker(ui_world)

    def gives_way(run):
        raise worker_module.JobYield({"id": 99, "kind": "train", "experiment_id": ui_world.experiment_id},
                                     round_index=0, images=0, grid=2, payload=dict(run.job.payload))

    def unreachable(**kwargs):
        raise OperationalError("UPDATE jobs ...", {}, Exception("could not connect to server"))

    monkeypatch.setitem(worker.handlers, "eval", gives_way)
    monkeypatch.setattr(job_queue, "yield_job", unreachable)
    with caplog.at_level(logging.INFO, logger="seiko.worker"):
        assert worker.run_once()
    assert worker.last_error is None
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failed) == 1 and f"job {job_id} could not be handed back" in failed[0].getMessage()
    assert failed[0].exc_info is not None  # with the traceback
    job = _job(ui_world, job_id)
    assert (job.status, job.lease_owner, job.attempts) == ("running", "w1", 1)  # the lease runs out by itself
    worker.close()


def test_a_dropped_connection_while_a_chunk_is_stored_is_tried_again_not_an_attempt(ui_world, monkeypatch, caplog):
    """A dropped connection while an eval job stored a chunk of its grid failed the attempt (the job queued again, its
    chunk rendered again by the next). Storing a chunk is idempotent, so it is tried again within the attempt: the
    first chunk's answer is lost after its commit landed, the second's connection drops before anything is written;
    the job is done on its first attempt, each grid image stored once."""
    _grid_config(ui_world, seeds=(0, 1, 2, 3))  # seeds 2 and 3 are still to render: two chunks of one image
    job_id = _eval_job(ui_world, ui_world.round_id, 0)
    worker = _worker(ui_world, eval_chunk=1)
    monkeypatch.setattr(worker, "_parts", lambda spec: SimpleNamespace(device="cpu"))
    monkeypatch.setattr(worker, "_use_adapter", lambda parts, round_: None)
    monkeypatch.setattr(worker_module, "generate_batch", lambda parts, adapter, prompts, seeds, cfg, on_progress=None,
                        as_uint8=False: (torch.randint(0, 256, (len(seeds), 3, 16, 16), dtype=torch.uint8),
                                         torch.rand(len(seeds), 4)))
    real_add, real_write_session, tries = worker_module.Worker._add_missing_images, worker_module.write_session, []

    def dropped(statement):
        return OperationalError(statement, {}, Exception("server closed the connection unexpectedly"),
                                connection_invalidated=True)

    def add(s, round_id, rows):  # inside the chunk's transaction
        tries.append([r["seed"] for r in rows])
        if len(tries) == 3:  # the second chunk: the connection drops before its rows are written
            raise dropped("INSERT INTO images ...")
        if len(tries) == 1:  # the first chunk: its answer is lost once its commit landed
            s.info["lose the answer"] = True  # this session's only: the heartbeat thread's sessions go on as they are
        return real_add(s, round_id, rows)

    @contextmanager
    def answer_lost(factory):
        with real_write_session(factory) as s:
            yield s
        if s.info.pop("lose the answer", False):
            raise dropped("COMMIT")

    monkeypatch.setattr(worker_module.Worker, "_add_missing_images", staticmethod(add))
    monkeypatch.setattr(worker_module, "write_session", answer_lost)
    with caplog.at_level(logging.INFO, logger="seiko.worker"):
        assert worker.run_once()
    assert worker.last_error is None and tries == [[2], [2], [3], [3]]
    job = _job(ui_world, job_id)
    assert (job.status, job.error, job.attempts) == ("done", None, 1)
    assert caplog.text.count("could not take a chunk of the eval grid") == 2
    with read_session(ui_world.factory) as s:
        assert sorted(im.seed for im in repo.list_images(session=s, round_id=ui_world.round_id, kind="eval")) == [0, 1, 2, 3]
    worker.close()


def test_a_lock_the_dropped_try_still_holds_is_waited_out_not_an_attempt(ui_world, monkeypatch, caplog):
    """The drop the chunk's retry exists for leaves the dead try's transaction on the server until it notices, holding
    the job's row (FOR UPDATE): the next try's lock wait ran out (a lock not granted: PostgreSQL's 55P03, SQLite's
    "database is locked"), and that failed the attempt, the chunk rendered again by the next claim (a read-only review
    of the fifteenth review's fixes). It is tried again as the drop is: another transaction holds the job's row (on
    SQLite, the write lock) through the first chunk's first try, the lock bound cut to 0.2 s; the job is done on its
    first attempt."""
    from sqlalchemy import select

    from db import engine as db_engine
    from db.models import Job

    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 200)  # read at connect: the worker's engine connects after this
    _grid_config(ui_world, seeds=(0, 1, 2, 3))
    job_id = _eval_job(ui_world, ui_world.round_id, 0)
    worker = _worker(ui_world, eval_chunk=1)
    monkeypatch.setattr(worker, "_parts", lambda spec: SimpleNamespace(device="cpu"))
    monkeypatch.setattr(worker, "_use_adapter", lambda parts, round_: None)
    monkeypatch.setattr(worker_module, "generate_batch", lambda parts, adapter, prompts, seeds, cfg, on_progress=None,
                        as_uint8=False: (torch.randint(0, 256, (len(seeds), 3, 16, 16), dtype=torch.uint8),
                                         torch.rand(len(seeds), 4)))
    real_store, tries = worker_module.Worker._store_eval_chunk, []

    def store(self, run, round_id, rows, partial, *, look):
        tries.append([r["seed"] for r in rows])
        if len(tries) > 1:
            return real_store(self, run, round_id, rows, partial, look=look)
        holder = ui_world.factory()  # the dead try's transaction, as the server still has it
        try:
            holder.execute(select(Job.id).where(Job.id == job_id).with_for_update()).all()
            return real_store(self, run, round_id, rows, partial, look=look)
        finally:
            holder.rollback()
            holder.close()

    monkeypatch.setattr(worker_module.Worker, "_store_eval_chunk", store)
    with caplog.at_level(logging.INFO, logger="seiko.worker"):
        assert worker.run_once()
    assert worker.last_error is None and tries == [[2], [2], [3]]
    job = _job(ui_world, job_id)
    assert (job.status, job.error, job.attempts) == ("done", None, 1)
    assert caplog.text.count("could not take a chunk of the eval grid") == 1
    with read_session(ui_world.factory) as s:
        assert sorted(im.seed for im in repo.list_images(session=s, round_id=ui_world.round_id, kind="eval")) == [0, 1, 2, 3]
    worker.close()


def test_a_statement_cancelled_while_a_chunk_is_stored_stays_the_attempts_failure(ui_world, monkeypatch):
    """A statement the database cancelled (57014: its statement bound ran out, or an operator's cancel) while a chunk
    was stored is not tried again, though class 57 is an outage to a claim: the attempt fails at once, in the bound's
    sentence (a pin beside the lock not granted, which is tried again)."""
    _grid_config(ui_world, seeds=(0, 1, 2))
    job_id = _eval_job(ui_world, ui_world.round_id, 0)
    worker = _worker(ui_world, eval_chunk=1)
    monkeypatch.setattr(worker, "_parts", lambda spec: SimpleNamespace(device="cpu"))
    monkeypatch.setattr(worker, "_use_adapter", lambda parts, round_: None)
    monkeypatch.setattr(worker_module, "generate_batch", lambda parts, adapter, prompts, seeds, cfg, on_progress=None,
                        as_uint8=False: (torch.randint(0, 256, (len(seeds), 3, 16, 16), dtype=torch.uint8),
                                         torch.rand(len(seeds), 4)))
    tries = []

    class QueryCanceled(Exception):
        sqlstate = "57014"

    def cancelled(self, run, round_id, rows, partial, *, look):
        tries.append([r["seed"] for r in rows])
        raise OperationalError("UPDATE jobs ...", {}, QueryCanceled("canceling statement due to user request"))

    monkeypatch.setattr(worker_module.Worker, "_store_eval_chunk", cancelled)
    assert worker.run_once()
    assert tries == [[2]] and "this attempt of the job failed" in (worker.last_error or "")
    job = _job(ui_world, job_id)
    assert (job.status, job.attempts) == ("queued", 1)
    worker.close()


def test_a_session_ended_for_idling_while_a_chunk_is_stored_is_a_fault_not_an_outage(ui_world, monkeypatch):
    """A transaction PostgreSQL ended for sitting idle (25P03; raised as an OperationalError whose connection is
    invalidated, as a drop's is) while a chunk was stored was tried again as a drop, with a warning only (a read-only
    review of the fifteenth review's fixes): no transaction of the worker idles that long, so it is a fault to report.
    The attempt fails at once, in the idle bound's sentence, though the next try would have stored the chunk."""
    _grid_config(ui_world, seeds=(0, 1, 2))
    job_id = _eval_job(ui_world, ui_world.round_id, 0)
    worker = _worker(ui_world, eval_chunk=1)
    monkeypatch.setattr(worker, "_parts", lambda spec: SimpleNamespace(device="cpu"))
    monkeypatch.setattr(worker, "_use_adapter", lambda parts, round_: None)
    monkeypatch.setattr(worker_module, "generate_batch", lambda parts, adapter, prompts, seeds, cfg, on_progress=None,
                        as_uint8=False: (torch.randint(0, 256, (len(seeds), 3, 16, 16), dtype=torch.uint8),
                                         torch.rand(len(seeds), 4)))
    real_store, tries = worker_module.Worker._store_eval_chunk, []

    class IdleInTransactionSessionTimeout(Exception):
        sqlstate = "25P03"

    def idle_once(self, run, round_id, rows, partial, *, look):
        tries.append([r["seed"] for r in rows])
        if len(tries) == 1:
            raise OperationalError("UPDATE jobs ...", {}, IdleInTransactionSessionTimeout(
                "terminating connection due to idle-in-transaction timeout"), connection_invalidated=True)
        return real_store(self, run, round_id, rows, partial, look=look)

    monkeypatch.setattr(worker_module.Worker, "_store_eval_chunk", idle_once)
    assert worker.run_once()
    assert tries == [[2]], tries
    assert "this attempt of the job failed" in (worker.last_error or "")
    assert "idle_in_transaction_session_timeout" in (worker.last_error or "")
    job = _job(ui_world, job_id)
    assert (job.status, job.attempts) == ("queued", 1)
    assert "please report it" in (job.error or "")
    worker.close()
