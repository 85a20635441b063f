"""The background worker in-process, on the tiny random-weight model: generate, train, publish, leases, progress."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest

from app import services, storage
from app.settings import Settings
from db import jobs as job_queue
from db import repo
from db.engine import read_session, write_session
from db.errors import Conflict, LeaseLost, SchemaOutOfDate
from db.models import Checkpoint, utcnow
from seiko_core.checkpoint import MANIFEST, sha256_file, verify
from seiko_core.presets import SHAPES_EVAL_PROMPTS

REPO = Path(__file__).resolve().parents[2]


def _detached(session, value):
    session.expunge_all()  # the rows stay readable after read_session's rollback
    return value


def _jobs(world, experiment_id, kind=None):
    with read_session(world.factory) as s:
        jobs = job_queue.list_jobs(session=s, experiment_id=experiment_id)
        return _detached(s, [j for j in jobs if kind is None or j.kind == kind])


def _round(world, experiment_id, index):
    with read_session(world.factory) as s:
        return _detached(s, repo.get_round_by_index(session=s, experiment_id=experiment_id, index=index))


def _images(world, round_id, kind):
    with read_session(world.factory) as s:
        return _detached(s, repo.list_images(session=s, round_id=round_id, kind=kind))


# ---------------------------------------------------------------------------------------------
# storage
# ---------------------------------------------------------------------------------------------


def test_resolve_refuses_paths_outside_the_data_dir(tmp_path):
    assert storage.resolve(tmp_path, "images/ab/x.png") == tmp_path.resolve() / "images" / "ab" / "x.png"
    for bad in ("/etc/passwd", "../x.png", "images/../../x", "images\\x.png", "C:/x.png", ""):
        with pytest.raises(storage.UnsafePath, match="data dir|non-empty"):
            storage.resolve(tmp_path, bad)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "link").symlink_to("/etc")
    with pytest.raises(storage.UnsafePath, match="outside the data dir"):
        storage.resolve(tmp_path, "images/link/passwd")


def test_images_are_content_addressed_and_deduplicated(tmp_path):
    png = storage.encode_png(np.full((4, 4, 3), 7, dtype=np.uint8))
    first = storage.write_image(tmp_path, png)
    digest = hashlib.sha256(png).hexdigest()
    assert first == storage.StoredFile(f"images/{digest[:2]}/{digest}.png", digest)
    assert storage.write_image(tmp_path, png) == first  # identical content: the same file
    assert storage.encode_png(np.full((4, 4, 3), 7, dtype=np.uint8)) == png  # PNG encoding is deterministic
    assert [p.name for p in (tmp_path / "images").rglob("*") if p.is_file()] == [f"{digest}.png"]


def test_clean_partials_removes_only_old_temporary_entries(tmp_path):
    old = tmp_path / "adapters" / "exp1" / ".tmp-round_1-deadbeef"
    old.mkdir(parents=True)
    (old / "weights").write_bytes(b"half")
    final = tmp_path / "adapters" / "exp1" / "round_1"
    final.mkdir()
    stale_png = tmp_path / "images" / "ab" / ".tmp-abc-1234.png"
    stale_png.parent.mkdir(parents=True)
    stale_png.write_bytes(b"x")
    past = time.time() - 100
    for p in (old, old / "weights", stale_png):
        os.utime(p, (past, past))
    fresh = tmp_path / "reward" / "exp1" / ".tmp-round_1-cafe"
    fresh.mkdir(parents=True)
    assert sorted(storage.clean_partials(tmp_path, min_age_s=50)) == sorted([old, stale_png])
    assert final.exists() and fresh.exists()
    assert storage.clean_partials(tmp_path) == [fresh]


# ---------------------------------------------------------------------------------------------
# the worker
# ---------------------------------------------------------------------------------------------


def test_worker_refuses_an_unmigrated_database(tmp_path, worker_model_dir):
    from app.worker import Worker

    url = f"sqlite:///{tmp_path / 'never-migrated.db'}"
    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": url}, environ={})
    worker = Worker(settings, "w", lease_s=5)
    with pytest.raises(SchemaOutOfDate, match=r"never migrated.*run `python -m app db upgrade`") as refused:
        worker.run_once()
    worker.close()
    env = {**os.environ, "SEIKO_DB_URL": url, "SEIKO_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "app", "worker", "--once"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [str(refused.value)]  # that one sentence, no traceback


def test_a_worker_makes_a_missing_data_directory_the_owners_alone(worker_world):
    """The worker wrote the first image into a data directory it made with the default mode (0755 under the usual
    umask) when the database was not in it, as on PostgreSQL (found by review): it is made 0700 at the start."""
    import stat

    data = worker_world.settings.data_dir
    assert not data.exists()
    worker = worker_world.worker()
    worker.start()
    worker.close()
    assert stat.S_IMODE(data.stat().st_mode) == 0o700


def test_a_worker_claims_nothing_once_the_schema_changed_under_it(worker_world_any_db, monkeypatch):
    """`db upgrade` (or `db downgrade`) while a worker runs: the worker checked the schema at its start only, so it
    went on claiming jobs and writing with the old code's idea of the tables (found by review). Each claim now checks
    the revision in its transaction, after the claim (on PostgreSQL a claim that waited for a migration's lock sees
    the migration's revision only in a later statement): a changed schema is refused in one sentence that says what
    to do, and the claim is rolled back."""
    from sqlalchemy import text

    from app import worker as worker_module

    world = worker_world_any_db
    world.create_experiment("schema")
    worker = world.worker()
    worker.start()
    with read_session(world.factory) as s:
        head = s.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    cases = [("0999_newer", r"changed from \w+ to 0999_newer while the worker ran, so it took no job; newer code "
                            r"migrated it: restart the worker on that code"),
             ("0008", r"changed from \w+ to 0008 .*run `python -m app db upgrade` \(back to \w+\) or the code of 0008")]
    try:
        for revision, message in cases:
            with write_session(world.factory) as s:
                s.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": revision})
            with pytest.raises(SchemaOutOfDate, match=message):
                worker.run_once()
            with read_session(world.factory) as s:
                assert [j.status for j in job_queue.list_jobs(session=s)] == ["queued"]  # nothing claimed
            with write_session(world.factory) as s:
                s.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        # a migration that commits while the claim waits: its revision is seen after the claim, which is rolled back
        real_claim = worker_module.job_queue.claim_job

        def claim_under_a_migration(*, session, **kwargs):
            row = real_claim(session=session, **kwargs)
            session.execute(text("UPDATE alembic_version SET version_num = '0999_newer'"))
            return row

        monkeypatch.setattr(worker_module.job_queue, "claim_job", claim_under_a_migration)
        with pytest.raises(SchemaOutOfDate, match="0999_newer"):
            worker.run_once()
        monkeypatch.undo()
        with read_session(world.factory) as s:
            assert [j.status for j in job_queue.list_jobs(session=s)] == ["queued"]
            assert s.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
    finally:
        with write_session(world.factory) as s:
            s.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
    assert worker.run_once() is True  # back at the code's revision: it works again


def test_generate_then_train_publishes_the_next_round(worker_world_any_db):
    world = worker_world_any_db
    data_dir = world.settings.data_dir
    eid = world.create_experiment("e2e")
    worker = world.worker()

    # 1. generate round 0: query images, round 'labeling', round 0's eval job queued
    assert worker.run_once() is True
    assert worker.last_error is None
    round0 = _round(world, eid, 0)
    assert round0.status == "labeling" and not _images(world, round0.id, "eval")
    (gen0,) = _jobs(world, eid, "generate")
    assert gen0.status == "done" and gen0.progress["phase"] == "done" and gen0.result["new_images"] == 4
    (eval0,) = _jobs(world, eid, "eval")
    assert (eval0.status, eval0.round_id, eval0.payload, gen0.result["eval_job"]) == ("queued", round0.id, {"round_index": 0}, eval0.id)
    # then the eval job: the eval grid and its metrics
    assert worker.run_once() is True
    assert worker.last_error is None
    round0 = _round(world, eid, 0)
    query, evals = _images(world, round0.id, "query"), _images(world, round0.id, "eval")
    assert len(query) == 4 and len(evals) == 2 * 2
    held_out = SHAPES_EVAL_PROMPTS[:2]  # the preset's held-out prompts (never sampled), cut to 2 by tiny_worker_config
    assert {(im.prompt, im.seed) for im in evals} == {(p, s) for p in held_out for s in (0, 1)}
    for im in query + evals:
        path = storage.resolve(data_dir, im.file_path)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == im.sha256 and path.name == f"{im.sha256}.png"
        assert im.embedding_dim == 64 and len(im.embedding) == 4 * 64
    assert len({im.seed for im in query}) == 4
    (eval0,) = _jobs(world, eid, "eval")
    assert eval0.status == "done" and eval0.attempts == 1 and eval0.result["rendered"] == 4
    assert round0.metrics["eval"]["n"] == 4 and "kl_to_prev" not in round0.metrics["eval"]  # round 0 has no previous model
    assert round0.metrics["eval"]["wall_s"] > 0 and round0.metrics["eval"]["yields"] == 0
    assert set(round0.metrics["eval"]["image_stats"]) >= {"n", "saturation", "diversity_embedding", "diversity_pixels"}
    # the generate job's own time is the query part: it ended before the eval job started
    gen = round0.metrics["generate"]
    assert gen["wall_s"] >= gen["query_wall_s"] >= gen["sample_wall_s"] > 0 and gen["eval_images"] == 4 and gen["query_images"] == 4
    assert worker.run_once() is False  # the queue is empty

    # 2. two raters rate every query image; their scores are averaged per image; close the round
    raters = world.raters(2)
    assert world.rate_open_round(eid, raters, lambda image_id, rater_id: 1 + (image_id * 3 + rater_id) % 10) == 8
    services.close_round(factory=world.factory, experiment_id=eid)

    # 3. train: round 1 published with a verifying adapter, round 0 done, round 1's generate job queued
    assert worker.run_once() is True
    assert worker.last_error is None
    assert _round(world, eid, 0).status == "done"
    round1 = _round(world, eid, 1)
    assert round1.status == "generating" and round1.adapter_path == f"adapters/exp{eid}/round_1"
    manifest = verify(storage.resolve(data_dir, round1.adapter_path))
    assert manifest["adapter"] == "round_1"
    with read_session(world.factory) as s:
        (checkpoint,) = s.query(Checkpoint).filter_by(round_id=round1.id).all()
        s.expunge_all()
    assert checkpoint.manifest_sha256 == sha256_file(storage.resolve(data_dir, round1.adapter_path) / MANIFEST)
    verify(storage.resolve(data_dir, storage.reward_path(eid, 1)))
    train = round1.metrics["train"]
    assert train["snapshot"]["images"] == 4 and train["snapshot"]["ratings"] == 8 and train["labels"] == 4
    assert round1.published_at is not None
    gen1 = [j for j in _jobs(world, eid, "generate") if j.round_id == round1.id]
    assert len(gen1) == 1 and gen1[0].status == "queued" and gen1[0].payload == {"round_index": 1}

    # 4. generate round 1 with adapter 1, then its eval job: metrics from the round-1 reward model and the KL to round 0
    assert worker.run_once() is True
    assert worker.last_error is None
    round1 = _round(world, eid, 1)
    assert round1.status == "labeling" and "eval" not in round1.metrics
    assert worker.run_once() is True
    assert worker.last_error is None
    assert worker.run_once() is False  # the queue is empty
    round1 = _round(world, eid, 1)
    ev = round1.metrics["eval"]
    assert ev["reward_model_round"] == 1 and np.isfinite(ev["pred_reward"]) and ev["head_spread"] >= 0
    assert ev["kl_to_prev"] >= 0 and "train" in round1.metrics  # generate merged its metrics into the train metrics
    assert len(_images(world, round1.id, "query")) == 4
    worker.close()


def test_a_requeued_generate_job_reuses_the_existing_images(worker_world):
    world = worker_world
    eid = world.create_experiment("requeue")
    worker = world.worker()
    assert worker.run_once() and worker.run_once()  # generate, then its eval job
    round0 = _round(world, eid, 0)
    before = {(im.kind, im.prompt, im.seed, im.sha256) for im in _images(world, round0.id, None)}
    assert {kind for kind, *_ in before} == {"query", "eval"}
    files_before = sorted(p for p in (world.settings.data_dir / "images").rglob("*.png"))
    with write_session(world.factory) as s:  # an operator queues the round's generation again
        job_queue.enqueue_job(session=s, kind="generate", experiment_id=eid, round_id=round0.id, payload={"round_index": 0})
    assert worker.run_once() and worker.last_error is None
    after = {(im.kind, im.prompt, im.seed, im.sha256) for im in _images(world, round0.id, None)}
    assert after == before  # same rows, same pixels (deterministic seeds), nothing duplicated
    assert sorted(p for p in (world.settings.data_dir / "images").rglob("*.png")) == files_before
    assert _jobs(world, eid, "generate")[0].result["new_images"] == 0
    assert [j.status for j in _jobs(world, eid, "eval")] == ["done"]  # the round's eval job was not queued again
    assert worker.run_once() is False
    worker.close()


def test_a_generate_job_queues_exactly_one_eval_job_even_when_it_runs_again(worker_world, monkeypatch):
    """The eval job is queued in the transaction that publishes the query images: a generate job that fails inside
    that transaction queues nothing (rolled back) and its retry queues one; a generate job queued again for the round
    finds the eval job (queued, then done) and queues none."""
    world = worker_world
    eid = world.create_experiment("one-eval")
    real = job_queue.ensure_job
    calls = []

    def ensure_then_fail(**kwargs):
        job = real(**kwargs)
        calls.append(job[0].id)
        if len(calls) == 1:
            raise RuntimeError("the worker fails just after queuing the eval job, before the commit")
        return job

    monkeypatch.setattr(job_queue, "ensure_job", ensure_then_fail)
    worker = world.worker()
    assert worker.run_once() and "fails just after queuing" in worker.last_error
    round0 = _round(world, eid, 0)
    (gen,) = _jobs(world, eid, "generate")
    assert (gen.status, gen.attempts) == ("queued", 1)
    assert round0.status == "generating" and not _images(world, round0.id, None) and not _jobs(world, eid, "eval")
    assert worker.run_once() and worker.last_error is None  # the retry publishes once, with one eval job
    (eval0,) = _jobs(world, eid, "eval")
    assert eval0.status == "queued" and eval0.round_id == round0.id and _jobs(world, eid, "generate")[0].status == "done"
    for _ in range(2):  # queued again while the eval job waits, and again once it is done
        with write_session(world.factory) as s:
            job_queue.enqueue_job(session=s, kind="generate", experiment_id=eid, round_id=round0.id, payload={"round_index": 0})
        assert worker.run_once() and worker.last_error is None  # a generate job goes before the eval job
        assert [j.id for j in _jobs(world, eid, "eval")] == [eval0.id]
        assert _jobs(world, eid, "generate")[0].result["eval_job"] == eval0.id
        if _jobs(world, eid, "eval")[0].status == "queued":
            assert worker.run_once() and worker.last_error is None  # the eval job
    assert [(j.id, j.status) for j in _jobs(world, eid, "eval")] == [(eval0.id, "done")]
    assert len(_images(world, round0.id, "eval")) == 4
    assert worker.run_once() is False
    worker.close()


def test_a_failing_job_records_its_error_and_is_retried(worker_world, tmp_path):
    """A fault that another attempt may not meet (here a read error of the disk) is recorded and retried up to the
    job's attempts; a model that is gone fails at once since the sixth review (the test after the next ones)."""
    world = worker_world
    eid = world.create_experiment("broken")
    worker = world.worker()

    def disk_error(run):
        raise OSError(5, "Input/output error")

    worker.handlers["generate"] = disk_error
    for attempt in (1, 2, 3):
        assert worker.run_once() is True
        (job,) = _jobs(world, eid)
        assert job.attempts == attempt and "Input/output error" in job.error
        assert job.status == ("failed" if attempt == 3 else "queued")
        assert worker.last_error == "OSError: [Errno 5] Input/output error"
    assert worker.run_once() is False
    worker.close()


def test_heartbeats_write_progress_while_the_model_works(worker_world, monkeypatch):
    world = worker_world
    eid = world.create_experiment("progress")
    written = []
    real = job_queue.heartbeat

    def recording(**kwargs):
        written.append(kwargs.get("progress"))
        return real(**kwargs)

    monkeypatch.setattr(job_queue, "heartbeat", recording)
    import app.worker as worker_module

    real_callback = worker_module.JobProgress.callback

    def lasting_callback(self, phase=None):  # each progress report's step lasts longer than a heartbeat's interval,
        report = real_callback(self, phase)  # so a heartbeat lands in every phase even on a fast machine

        def slow(step, total, metrics):
            report(step, total, metrics)
            time.sleep(0.2)

        return slow

    monkeypatch.setattr(worker_module.JobProgress, "callback", lasting_callback)
    worker = world.worker(lease_s=0.45)  # a heartbeat every 0.15 s
    assert worker.run_once() and worker.last_error is None
    world.rate_open_round(eid, world.raters(1), lambda image_id, rater_id: 1 + image_id % 10)
    services.close_round(factory=world.factory, experiment_id=eid)
    assert worker.run_once() and worker.last_error is None
    phases = {p["phase"] for p in written if p}
    assert phases & {"sample_query", "sample_eval"} and phases & {"reward_fit", "finetune"}, phases
    for p in written:
        if p and p["phase"] in ("sample_query", "sample_eval", "reward_fit", "finetune"):
            assert set(p) == {"phase", "step", "total", "eta_s"} and 0 < p["step"] <= p["total"]
    done = [j.progress for j in _jobs(world, eid) if j.status == "done"]
    assert done == [{"phase": "done", "step": 1, "total": 1, "eta_s": 0.0}] * 2
    worker.close()


def test_a_stale_worker_cannot_publish(worker_world, monkeypatch):
    """Worker A trains, but meanwhile its lease ran out and B took the job: A's result is discarded, B publishes once."""
    import app.worker as worker_module

    world = worker_world
    eid = world.create_experiment("stale")
    a = world.worker("worker-A")
    assert a.run_once()
    world.rate_open_round(eid, world.raters(1), lambda image_id, rater_id: 1 + image_id % 10)
    job_id = services.close_round(factory=world.factory, experiment_id=eid)
    real_train_round = worker_module.train_round

    def train_then_lose_the_lease(*args, **kwargs):
        outcome = real_train_round(*args, **kwargs)
        with write_session(world.factory) as s:  # B claims the job once A's lease has run out (an hour from now)
            taken = job_queue.claim_job(session=s, worker_id="worker-B", lease_s=5, now=utcnow() + timedelta(hours=1))
            assert taken is not None and taken.id == job_id
        return outcome

    monkeypatch.setattr(worker_module, "train_round", train_then_lose_the_lease)
    assert a.run_once() is True
    assert "no longer holds" in a.last_error
    with read_session(world.factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert job.status == "running" and job.lease_owner == "worker-B"
        assert [r.index for r in repo.list_rounds(session=s, experiment_id=eid)] == [0]  # A published nothing
        assert repo.get_round_by_index(session=s, experiment_id=eid, index=0).status == "training"
    with write_session(world.factory) as s:  # B stops heartbeating too (its lease is in the past); C takes over
        assert job_queue.heartbeat(session=s, job_id=job_id, worker_id="worker-B", lease_s=1, now=utcnow() - timedelta(hours=2))
    monkeypatch.setattr(worker_module, "train_round", real_train_round)
    c = world.worker("worker-C")
    assert c.run_once() and c.last_error is None
    with read_session(world.factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert job.status == "done" and job.lease_owner == "worker-C"
        round1 = repo.get_round_by_index(session=s, experiment_id=eid, index=1)
        assert len(repo.list_checkpoints(session=s, round_id=round1.id)) == 1
        s.expunge_all()
    verify(storage.resolve(world.settings.data_dir, round1.adapter_path))  # A's adapter on the same ratings, reused
    a.close()
    c.close()


def test_a_stale_worker_cannot_publish_over_its_twin_with_the_same_id(worker_world, monkeypatch):
    """Two workers with one id (HOST-PID repeats in containers): A's lease ran out and its twin claimed the job again
    (attempt 2). A went on to heartbeat and publish, as the id was all a lease was checked by. Found by review."""
    import app.worker as worker_module

    world = worker_world
    eid = world.create_experiment("twins")
    a = world.worker("vm-1")
    assert a.run_once()
    world.rate_open_round(eid, world.raters(1), lambda image_id, rater_id: 1 + image_id % 10)
    job_id = services.close_round(factory=world.factory, experiment_id=eid)
    real_train_round = worker_module.train_round

    def train_then_lose_the_lease_to_a_twin(*args, **kwargs):
        outcome = real_train_round(*args, **kwargs)
        with write_session(world.factory) as s:  # the twin claims the job once A's lease has run out
            taken = job_queue.claim_job(session=s, worker_id="vm-1", lease_s=5, now=utcnow() + timedelta(hours=1))
            assert (taken.id, taken.attempts) == (job_id, 2)
        return outcome

    monkeypatch.setattr(worker_module, "train_round", train_then_lose_the_lease_to_a_twin)
    assert a.run_once() is True
    assert a.last_error == (f"worker 'vm-1' no longer holds job {job_id}: its claim 1 ended (its lease expired, or "
                            "an admin stopped the job) and the job was claimed again as claim 2, attempt 2 (by a "
                            "worker with the same id)")
    with read_session(world.factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.lease_owner, job.attempts, job.result) == ("running", "vm-1", 2, None)
        assert [r.index for r in repo.list_rounds(session=s, experiment_id=eid)] == [0]  # A published nothing
    with write_session(world.factory) as s:  # the twin, the real holder, publishes
        job_queue.complete_job(session=s, job_id=job_id, worker_id="vm-1", claim=2, result={"by": "the twin"})
    a.close()


def test_a_worker_whose_job_an_admin_stopped_and_retried_cannot_publish_over_its_twins_claim(worker_world, caplog):
    """Two workers started with the same explicit --worker-id. An admin stops A's job and retries it, and B claims it
    again: the retry had set the attempts back to 0, so B's claim was attempt 1 as A's had been, and A, which went on
    working, stored its result as B's (its writes were checked by worker id and attempt number). Found by the third
    review. Every claim raises the job's claim count, which nothing lowers: A's result is refused, in one sentence
    that the log says too, and B's claim is left as it was."""
    import logging

    world = worker_world
    eid = world.create_experiment("stopped-and-retried")
    a = world.worker("vm-1")
    taken = []

    def job(run):
        with write_session(world.factory) as s:  # the admin: stop, then retry
            job_queue.stop_job(session=s, job_id=run.job.id, reason="stopped by root", expected_owner="vm-1")
        with write_session(world.factory) as s:
            job_queue.retry_job(session=s, job_id=run.job.id)
        with write_session(world.factory) as s:  # the twin, started with the same --worker-id
            twin = job_queue.claim_job(session=s, worker_id="vm-1", lease_s=60)
            taken.append((twin.id, twin.attempts, twin.lease_owner))
        a._publish(run, lambda s: None, {"by": "A"})  # A, still working, publishes as any handler does
        return {"by": "A"}

    a.handlers["generate"] = job
    with caplog.at_level(logging.WARNING, logger="seiko.worker"):
        assert a.run_once()
    (row,) = _jobs(world, eid)
    assert taken == [(row.id, 1, "vm-1")]  # the same attempt number as A's claim
    refused = (f"worker 'vm-1' no longer holds job {row.id}: its claim 1 ended (its lease expired, or an admin stopped "
               "the job) and the job was claimed again as claim 2, attempt 1 (by a worker with the same id)")
    assert a.last_error == refused and f"job {row.id}: {refused}; this worker's result is discarded" in caplog.text
    assert (row.status, row.lease_owner, row.attempts, row.result) == ("running", "vm-1", 1, None)
    with write_session(world.factory) as s:  # the twin, the real holder, publishes
        job_queue.complete_job(session=s, job_id=row.id, worker_id="vm-1", claim=2, result={"by": "the twin"})
    (row,) = _jobs(world, eid)
    assert (row.status, row.result) == ("done", {"by": "the twin"})
    a.close()


def test_the_default_worker_id_is_unique_per_process_start():
    """HOST-PID alone repeats in containers (a fixed host name, the worker PID 1); a random tail tells them apart."""
    from app.cli_worker import default_worker_id

    first, second = default_worker_id(), default_worker_id()
    prefix = f"{socket.gethostname()}-{os.getpid()}-"
    assert first.startswith(prefix) and second.startswith(prefix) and first != second
    assert len(first) == len(prefix) + 8


def test_publish_round_happens_once_and_only_from_training(worker_world):
    world = worker_world
    digest = "a" * 64
    with write_session(world.factory) as s:
        exp = repo.create_experiment(session=s, name="pub", model_spec="m", method="greedy", config={}, budgets=[2],
                                     prompts=["a shape"])
        round0 = repo.create_round(session=s, experiment_id=exp.id)
        with pytest.raises(Conflict, match="round 0 is 'generating', not 'training'"):
            repo.publish_round(session=s, experiment_id=exp.id, index=1, adapter_path="adapters/x/round_1",
                               manifest_sha256=digest, metrics={})
        round0.status = "training"
        first, created = repo.publish_round(session=s, experiment_id=exp.id, index=1, adapter_path="adapters/x/round_1",
                                            manifest_sha256=digest, metrics={"train": {"labels": 2}})
        assert created and first.metrics == {"train": {"labels": 2}} and first.published_at is not None
        again, created = repo.publish_round(session=s, experiment_id=exp.id, index=1, adapter_path="adapters/x/round_1",
                                            manifest_sha256=digest, metrics={})
        assert not created and again.id == first.id
        assert round0.status == "done"
        assert len(repo.list_checkpoints(session=s, round_id=first.id)) == 1
        assert [(j.kind, j.round_id) for j in job_queue.list_jobs(session=s, experiment_id=exp.id)] == [("generate", first.id)]


def test_a_worker_that_lost_its_lease_stops_at_the_next_progress_report():
    from app.worker import JobProgress

    progress = JobProgress(job_id=7, worker_id="w")
    report = progress.callback("sample_query")
    report(1, 4, {})
    assert progress.latest()["phase"] == "sample_query" and progress.latest()["step"] == 1
    progress.lost.set()  # what the heartbeat thread does when the job was reclaimed
    with pytest.raises(LeaseLost, match="lost the lease of job 7"):
        report(2, 4, {})


def test_a_worker_whose_job_an_admin_stopped_is_told_so_not_that_it_was_reclaimed(worker_world, caplog):
    """An admin's stop (db.jobs.stop_job: the job failed, no owner) reached the worker as "lost the lease ... to
    another worker" at its next progress report and "its lease expired and the job was reclaimed" at its publish:
    the operator went looking for a worker that did not exist (found by review). Both now say what happened."""
    import logging

    world = worker_world
    eid = world.create_experiment("stopped-by-an-admin")
    worker = world.worker(lease_s=0.9)  # a heartbeat every 0.3 s

    def job(run):
        with write_session(world.factory) as s:
            job_queue.stop_job(session=s, job_id=run.job.id, reason="stopped by root while worker 'worker-1' ran it",
                               expected_owner="worker-1")
        deadline = time.monotonic() + 30
        while not run.progress.lost.wait(0.1):  # the heartbeat finds the job no longer this worker's
            assert time.monotonic() < deadline, "the heartbeat never noticed"
        run.progress.callback("sample_query")(1, 4, {})  # raises LeaseLost
        pytest.fail("the progress report after the stop must raise")

    worker.handlers["generate"] = job
    with caplog.at_level(logging.WARNING, logger="seiko.worker"):
        assert worker.run_once()
    (row,) = _jobs(world, eid)
    told = (f"worker 'worker-1' no longer holds job {row.id} (it is 'failed', held by None); an admin stopped or "
            "cancelled it (stopped by root while worker 'worker-1' ran it)")
    assert worker.last_error == told
    assert told in caplog.text and "reclaimed" not in caplog.text and "another worker" not in caplog.text
    with pytest.raises(LeaseLost) as publish, write_session(world.factory) as s:  # its publish is told the same
        job_queue.complete_job(session=s, job_id=row.id, worker_id="worker-1", result={}, claim=1)
    assert str(publish.value) == told
    worker.close()


def test_worker_lowers_its_cpu_priority_and_refuses_a_bad_niceness(tmp_path, _sqlite_at_head):
    """`python -m app worker` runs at nice +10 by default (the web app answers ratings first: RELIABILITY.md)."""
    import shutil
    import time

    db = tmp_path / "seiko.db"
    shutil.copy(_sqlite_at_head, db)
    env = {**os.environ, "SEIKO_DB_URL": f"sqlite:///{db}", "SEIKO_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    base = os.getpriority(os.PRIO_PROCESS, 0)
    proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "--poll-s", "0.2"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while os.getpriority(os.PRIO_PROCESS, proc.pid) != min(base + 10, 19):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the worker never lowered its priority"
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    bad = subprocess.run([sys.executable, "-m", "app", "worker", "--nice", "20"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "expected a whole number from 0 to 19, got '20'" in bad.stderr


@pytest.mark.parametrize("signum, status", [(2, 130), (15, 0)], ids=["sigint", "sigterm"])
def test_an_idle_worker_ends_on_one_stop_signal_as_before(tmp_path, _sqlite_at_head, signum, status):
    """`python -m app worker` installs Worker.interrupt_for_signal for SIGINT and SIGTERM: idle, Ctrl-C still exits
    130 and SIGTERM 0, with no traceback."""
    import shutil
    import signal

    db = tmp_path / "seiko.db"
    shutil.copy(_sqlite_at_head, db)
    env = {**os.environ, "SEIKO_DB_URL": f"sqlite:///{db}", "SEIKO_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "--poll-s", "0.2", "--nice", "0"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        seen = []
        while not any(" ready (" in line for line in seen):  # the handlers are installed before the worker starts
            line = proc.stderr.readline()
            assert line, "".join(seen)
            seen.append(line)
        proc.send_signal(signal.Signals(signum))
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status and "Traceback" not in err, err


# `python -m app worker` whose generate step never returns, run by `python -c HUNG_WORKER MODE worker ...`:
# - "hang": the step waits on an Event for ever (a stop signal would still interrupt it; an admin's stop does not);
# - "deaf": it blocks SIGINT and SIGTERM in the main thread first, so a stop signal lands on another thread and the
#   Python handler never runs: a call that never gets back to the interpreter (libpq waiting on a lock retries
#   after EINTR, a collective whose peer is gone, a hung driver);
# - "outage": no job runs; the claim takes a Ctrl-C (held: the worker is claiming), then fails as the database
#   goes away;
# - "slowstart": the worker's start-up (its model libraries' import) takes a minute, in Python (a stop signal's
#   handler runs, and start-up carries on: only SIGINT would raise);
# - "deafstart": the same start-up with SIGINT and SIGTERM blocked in the main thread (a loader stuck in C).
HUNG_WORKER = """
import signal, sys, threading, time
from sqlalchemy.exc import OperationalError
from app import worker

def hang(self, run):
    if sys.argv[1] == "deaf":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print(f"job {run.job.id} hangs", file=sys.stderr, flush=True)
    threading.Event().wait()

def claim(**kwargs):
    signal.raise_signal(signal.SIGINT)
    raise OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection unexpectedly"))

def slow_start():
    if sys.argv[1] == "deafstart":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print("start-up is slow", file=sys.stderr, flush=True)
    time.sleep(60)

worker.Worker._generate = hang
if sys.argv[1] == "outage":
    worker.job_queue.claim_job = claim
if sys.argv[1].endswith("start"):
    worker._import_model_libraries = slow_start
from app.__main__ import main
sys.exit(main(sys.argv[2:]))
"""
STOP_GRACE_S, HUNG_LEASE_S = 3.0, 3.0


def _hung_worker(world, tmp_path, mode: str) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / f"worker-{mode}.log"
    env = {**os.environ, "SEIKO_DB_URL": world.settings.db_url, "SEIKO_DATA_DIR": str(world.settings.data_dir),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", HUNG_WORKER, mode, "worker", "--worker-id", "hung", "--nice", "0",
                                 "--lease-s", str(HUNG_LEASE_S), "--poll-s", "0.2", "--stop-grace-s", str(STOP_GRACE_S)],
                                cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {text!r} in the worker's log:\n{log.read_text()[-3000:]}"
        time.sleep(0.1)


def _seconds_to_end(proc: subprocess.Popen, log: Path, stopped: float) -> float:
    try:
        proc.wait(timeout=STOP_GRACE_S + 30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"the worker never ended after the stop:\n{log.read_text()[-3000:]}")
    return time.monotonic() - stopped


def _stopped_after(proc: subprocess.Popen, log: Path, line: str, stop) -> float:
    """Wait for ``line`` in the hung worker's log, then ``stop()`` it: the seconds from the stop to its end (the
    worker is killed before this returns or raises, if it lives on)."""
    try:
        _wait_for_line(proc, log, line)
        stopped = time.monotonic()
        stop()
        return _seconds_to_end(proc, log, stopped)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_job_stuck_where_a_stop_signal_cannot_reach_ends_the_worker_with_status_75(worker_world, tmp_path):
    """A stop signal reaches a job only at its next Python bytecode: a job stuck in a call that never returns kept the
    worker alive for ever after SIGTERM, its heartbeat keeping the lease (found by the third review). The watchdog sees
    the signal all the same and, the job not returned --stop-grace-s later, ends the process with status 75 in one
    sentence. The job is handed back as a stopped worker's job is, queued again with no attempt used: it was left as
    kill -9 leaves it, taken again once its lease ran out with an attempt used (found by the fourth review)."""
    import signal

    world = worker_world
    eid = world.create_experiment("stuck-deaf")
    (job,) = _jobs(world, eid)  # queued with the experiment, before a worker starts
    proc, log = _hung_worker(world, tmp_path, "deaf")
    took = _stopped_after(proc, log, f"job {job.id} hangs", lambda: proc.send_signal(signal.SIGTERM))
    text = log.read_text()
    assert proc.returncode == 75, text[-3000:]
    assert STOP_GRACE_S <= took < STOP_GRACE_S + 5, (took, text[-3000:])
    told = [line for line in text.splitlines() if "has not returned" in line]
    assert len(told) == 1 and "Traceback" not in text, text[-3000:]
    assert (f"job {job.id} (generate) has not returned 3 s after the stop signal" in told[0]
            and "status 75" in told[0] and "it is queued again, attempt 1 of 3 not counted" in told[0]), told
    (row,) = _jobs(world, eid)
    assert (row.status, row.lease_owner, row.attempts, row.error) == ("queued", None, 0, None)  # as a hand-back leaves it
    with write_session(world.factory) as s:  # claimable at once, not after its lease: the next claim is attempt 1
        claimed = job_queue.claim_job(session=s, worker_id="next", lease_s=30)
        assert (claimed.id, claimed.attempts, claimed.lease_owner) == (job.id, 1, "next")


def test_a_job_stuck_after_an_admin_stopped_it_ends_the_worker_with_status_75(worker_world, tmp_path):
    """An admin's stop (the job failed, no owner) reaches a job at its next progress report: a job stuck in a call
    that never returns kept the worker hung for ever (the Admin tab says "restart it too"; found by the third review).
    The heartbeat sees the lease lost and, the job not returned --stop-grace-s later, the watchdog ends the process
    with status 75 in one sentence; the admin's stop stands."""
    world = worker_world
    eid = world.create_experiment("stuck-stopped")
    reason = "stopped by root while worker 'hung' ran it"
    (job,) = _jobs(world, eid)  # queued with the experiment, before a worker starts

    def stop() -> None:
        with write_session(world.factory) as s:
            job_queue.stop_job(session=s, job_id=job.id, reason=reason, expected_owner="hung")

    proc, log = _hung_worker(world, tmp_path, "hang")
    took = _stopped_after(proc, log, f"job {job.id} hangs", stop)
    text = log.read_text()
    assert proc.returncode == 75, text[-3000:]
    # the heartbeat notices within a third of the lease, then the grace
    assert STOP_GRACE_S <= took < STOP_GRACE_S + HUNG_LEASE_S / 3 + 5, (took, text[-3000:])
    told = [line for line in text.splitlines() if "has not returned" in line]
    assert len(told) == 1 and "Traceback" not in text, text[-3000:]
    assert (f"job {job.id} (generate) has not returned 3 s after its lease was lost" in told[0]
            and "status 75" in told[0] and "its row is left as it is" in told[0]), told
    (row,) = _jobs(world, eid)
    assert (row.status, row.lease_owner, row.error) == ("failed", None, reason)


@pytest.mark.parametrize("mode, signum, status", [
    pytest.param("slowstart", 15, 0, id="sigterm"),
    pytest.param("deafstart", 2, 130, id="sigint-deaf"),
])
def test_a_stop_during_a_slow_start_up_ends_the_worker_as_a_stop_not_as_a_stuck_job(worker_world, tmp_path, mode, signum,
                                                                                     status):
    """A stop signal while the worker starts up (its imports, a model loading) slower than --stop-grace-s: the
    watchdog ended it with status 75, "a job was stuck, restart me", though no job was held and the operator had asked
    it to stop, so `python -m app demo` started a fresh one (found by the fourth review). It ends as a stopped idle
    worker does (0 for SIGTERM, 130 for Ctrl-C), in one sentence, --stop-grace-s after the signal; the demo restarts a
    worker only on 75 (`app.cli_demo.WORKER_RESTART_STATUS`). The queue's job is not touched."""
    import signal

    from app import cli_demo

    world = worker_world
    eid = world.create_experiment("slow-start")
    proc, log = _hung_worker(world, tmp_path, mode)
    took = _stopped_after(proc, log, "start-up is slow", lambda: proc.send_signal(signal.Signals(signum)))
    text = log.read_text()
    assert proc.returncode == status != cli_demo.WORKER_RESTART_STATUS, text[-3000:]
    assert STOP_GRACE_S <= took < STOP_GRACE_S + 5, (took, text[-3000:])  # the start-up alone would take 60 s
    told = [line for line in text.splitlines() if "held no job" in line]
    assert len(told) == 1 and "Traceback" not in text and "has not returned" not in text, text[-3000:]
    by = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert (f"worker 'hung' was stopped by {by} while it held no job and has not ended 3 s later" in told[0]
            and f"ends now with status {status}" in told[0]), told
    (row,) = _jobs(world, eid)
    assert (row.status, row.lease_owner, row.attempts) == ("queued", None, 0)


def test_a_job_stopped_three_times_in_a_stuck_call_is_taken_a_fourth_time(worker_world, monkeypatch):
    """Each time the watchdog ended a worker whose job was stuck after a stop signal, the job used an attempt (left
    as kill -9 leaves it), so a job in a long call stopped three times by an operator failed for good, where a stop
    otherwise hands the job back without using one (found by the fourth review). Three workers stopped that way
    (the real Watchdog, its os._exit recorded in place of ending pytest) leave the job queued with no attempt used,
    and a fourth takes it as its first attempt; a job that really fails three times still fails for good."""
    from app.worker import EX_TEMPFAIL, Watchdog

    world = worker_world
    eid = world.create_experiment("stopped-thrice")
    (job,) = _jobs(world, eid)
    exits: list[int] = []
    exited = threading.Event()
    monkeypatch.setattr(os, "_exit", lambda status: (exits.append(status), exited.set()))
    for n in range(3):
        worker = world.worker(f"stopped-{n}")
        entered, release = threading.Event(), threading.Event()

        def stuck(run, entered=entered, release=release):
            entered.set()
            release.wait(60)  # a call that never returns, until the test lets it go (the process would be gone)
            raise LeaseLost("the test let the stuck call return")

        worker.handlers["generate"] = stuck
        exits.clear()
        exited.clear()
        watchdog = Watchdog(worker, 0.2)  # in pytest's main thread, as python -m app worker makes it
        runner = threading.Thread(target=worker.run_once, daemon=True)
        try:
            runner.start()
            assert entered.wait(60), "the job never started"
            worker.stop()  # what the stop signal's handler does first; the stuck call never sees the signal
            assert exited.wait(30), "the watchdog never ended the worker"
            time.sleep(3 * Watchdog.TICK_S)  # it ends the process once: no second exit
        finally:
            release.set()
            runner.join(60)
            watchdog.close()
            worker.close()
        (row,) = _jobs(world, eid)
        assert (row.status, row.lease_owner, row.attempts, row.error) == ("queued", None, 0, None), n
        assert row.claims == n + 1  # every claim still counted: the fencing is intact
        assert exits == [EX_TEMPFAIL], exits
    with write_session(world.factory) as s:
        claimed = job_queue.claim_job(session=s, worker_id="fourth", lease_s=30)
        assert (claimed.id, claimed.attempts, claimed.claims) == (job.id, 1, 4)

    failing = world.create_experiment("fails-thrice")
    (bad,) = _jobs(world, failing)

    def fails(run):
        raise RuntimeError("the job's own failure")

    for n in range(3):
        worker = world.worker(f"failing-{n}")
        worker.handlers["generate"] = fails
        try:
            assert worker.run_once() and worker.last_error == "RuntimeError: the job's own failure"
        finally:
            worker.close()
    (row,) = _jobs(world, failing)
    assert (row.id, row.status, row.attempts) == (bad.id, "failed", 3)
    with write_session(world.factory) as s:
        assert job_queue.claim_job(session=s, worker_id="fifth", lease_s=30) is None  # failed for good


def test_ctrl_c_as_the_claim_meets_a_database_outage_exits_130_in_one_sentence(worker_world, tmp_path):
    """Ctrl-C held while the worker claims, then a claim that fails on a database outage: run_forever waited the outage
    out, found the worker stopping and returned, so `python -m app worker` exited 0 (found by the third review)."""
    proc, log = _hung_worker(worker_world, tmp_path, "outage")
    try:
        proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 130 and "Traceback" not in text, text[-3000:]
    told = [line for line in text.splitlines() if "Ctrl-C" in line]
    assert len(told) == 1 and "while its claim failed (OperationalError: server closed the connection unexpectedly)" \
        in told[0], text[-3000:]


@pytest.mark.parametrize("signum", [2, 15], ids=["sigint", "sigterm"])
def test_a_stop_signal_held_as_the_claim_meets_a_database_outage_stops_the_worker_as_that_signal(worker_world, monkeypatch,
                                                                                                caplog, signum):
    """The in-process side of the above: a held Ctrl-C and a claim that fails on an outage end run_forever in
    KeyboardInterrupt (the outage its cause, said in the one sentence); a held SIGTERM still just stops it. Nothing is
    claimed either way."""
    import logging
    import signal

    from sqlalchemy.exc import OperationalError

    from app import worker as worker_mod

    world = worker_world
    eid = world.create_experiment("stopped-in-an-outage")  # a job to claim: the outage, not an empty queue, is why
    worker = world.worker()
    worker.start()

    def claim(**kwargs):
        worker.interrupt_for_signal(signum)  # held: the worker is claiming
        raise OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection unexpectedly"))

    monkeypatch.setattr(worker_mod.job_queue, "claim_job", claim)
    with caplog.at_level(logging.WARNING, logger="seiko.worker"):
        if signum == signal.SIGINT:
            with pytest.raises(KeyboardInterrupt) as raised:
                worker.run_forever()
            assert isinstance(raised.value.__cause__, OperationalError)
            told = [r.getMessage() for r in caplog.records if "Ctrl-C" in r.getMessage()]
            assert told == ["worker 'worker-1': stopped by Ctrl-C (SIGINT) while its claim failed (OperationalError: "
                            "server closed the connection unexpectedly); nothing was claimed"]
        else:
            worker.run_forever()  # returns: `python -m app worker` exits 0, as for a SIGTERM at any idle moment
    assert worker._stopping.is_set() and worker.current_job is None and not worker._claiming
    (job,) = _jobs(world, eid)
    assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
    worker.close()


def test_query_images_are_published_before_the_eval_grid_and_a_retry_finishes_the_grid(worker_world, monkeypatch):
    """Issue 12: the rater's images are open for labeling while the eval grid is still to come (its own job). An eval
    job that fails is retried; the round's train job goes first, and the retry adds only the grid, even when the round
    was closed (or trained on) in the meantime."""
    import app.worker as worker_module

    world = worker_world
    eid = world.create_experiment("query-first")
    real = worker_module.generate_batch
    seen = {}

    def fail_at_the_grid(parts, adapter, prompts, seeds, cfg, **kwargs):
        if set(prompts) <= set(SHAPES_EVAL_PROMPTS) and "state" not in seen:
            round0 = _round(world, eid, 0)
            seen["state"] = (round0.status, len(_images(world, round0.id, "query")), len(_images(world, round0.id, "eval")))
            raise RuntimeError("the worker fails while rendering the eval grid")
        return real(parts, adapter, prompts, seeds, cfg, **kwargs)

    monkeypatch.setattr(worker_module, "generate_batch", fail_at_the_grid)
    worker = world.worker()
    assert worker.run_once() and worker.last_error is None  # generate: the query images, round 0 open
    assert worker.run_once() and "fails while rendering" in worker.last_error  # its eval job
    round0 = _round(world, eid, 0)
    assert seen["state"] == ("labeling", round0_budget := len(_images(world, round0.id, "query")), 0) and round0_budget > 0
    (job,) = _jobs(world, eid, "eval")
    assert job.status == "queued" and job.attempts == 1
    world.rate_open_round(eid, world.raters(1), lambda image_id, rater_id: 1 + image_id % 10)
    services.close_round(factory=world.factory, experiment_id=eid)  # closed before the grid exists
    assert _round(world, eid, 0).status == "training"
    query_before = {(im.prompt, im.seed, im.sha256) for im in _images(world, round0.id, "query")}
    assert worker.run_once() and worker.last_error is None  # the train job first: round 1 published
    assert _round(world, eid, 1).adapter_path is not None and _jobs(world, eid, "eval")[-1].status == "queued"
    assert worker.run_once() and worker.last_error is None  # round 1's generate job
    assert worker.run_once() and worker.last_error is None  # the retry of round 0's eval job: the grid only
    job = _jobs(world, eid, "eval")[-1]
    assert (job.round_id, job.status, job.attempts) == (round0.id, "done", 2)
    assert job.result["rendered"] == len(_images(world, round0.id, "eval")) == 4
    assert {(im.prompt, im.seed, im.sha256) for im in _images(world, round0.id, "query")} == query_before
    assert _round(world, eid, 0).status == "done" and _round(world, eid, 0).metrics["eval"]["n"] == 4
    worker.close()


def test_an_eval_job_gives_way_to_a_train_job_and_finishes_its_grid_afterwards(worker_world, monkeypatch, caplog):
    """The rater closes round 0 while its eval grid renders: after the chunk in progress the eval job hands itself
    back to the queue (attempt not counted, no error, the chunks done stay), the worker trains and draws round 1,
    and then the eval job renders only the rest of round 0's grid."""
    import logging

    import app.worker as worker_module

    world = worker_world
    eid = world.create_experiment("gives-way")
    worker = world.worker(eval_chunk=1)  # the 2 x 2 grid in 4 chunks
    assert worker.run_once() and worker.last_error is None  # generate round 0
    world.rate_open_round(eid, world.raters(1), lambda image_id, rater_id: 1 + image_id % 10)
    real = worker_module.generate_batch
    eval_calls = []

    def close_during_the_grid(parts, adapter, prompts, seeds, cfg, **kwargs):
        if set(prompts) <= set(SHAPES_EVAL_PROMPTS):
            eval_calls.append(list(zip(prompts, seeds)))
            if len(eval_calls) == 1:  # the rater closes the round while the first chunk renders
                services.close_round(factory=world.factory, experiment_id=eid)
        return real(parts, adapter, prompts, seeds, cfg, **kwargs)

    monkeypatch.setattr(worker_module, "generate_batch", close_during_the_grid)
    (eval0,) = _jobs(world, eid, "eval")
    with caplog.at_level(logging.INFO, logger="seiko.worker"):
        assert worker.run_once() and worker.last_error is None
    (train,) = _jobs(world, eid, "train")
    assert len(eval_calls) == 1 and train.status == "queued"
    (job,) = _jobs(world, eid, "eval")
    assert (job.status, job.attempts, job.error, job.lease_owner, job.lease_expires_at) == ("queued", 0, None, None, None)
    assert job.payload["round_index"] == 0 and job.payload["partial"]["yields"] == 1
    first = _images(world, _round(world, eid, 0).id, "eval")
    assert [(im.prompt, im.seed) for im in first] == eval_calls[0]  # the chunk done stays
    assert f"job {eval0.id} (eval, round 0) YIELDS to job {train.id} (train, experiment {eid})" in caplog.text
    assert "1 of 4 eval images stored; queued again, attempt 1 of 3 not counted" in caplog.text

    assert worker.run_once() and worker.last_error is None  # the train job runs next
    assert _jobs(world, eid, "train")[0].status == "done" and _round(world, eid, 1).status == "generating"
    assert worker.run_once() and worker.last_error is None  # round 1's images, still before the eval grid
    assert _round(world, eid, 1).status == "labeling"
    assert [j.status for j in _jobs(world, eid, "eval")] == ["queued", "queued"] and len(eval_calls) == 1
    assert worker.run_once() and worker.last_error is None  # round 0's eval job (the older one): the 3 missing cells
    job = _jobs(world, eid, "eval")[-1]
    assert (job.round_id, job.status, job.attempts, job.error) == (_round(world, eid, 0).id, "done", 1, None)
    assert job.result["rendered"] == 3 and len(eval_calls) == 4
    grid = _images(world, _round(world, eid, 0).id, "eval")
    assert len(grid) == 4 and {(im.id, im.sha256) for im in first} <= {(im.id, im.sha256) for im in grid}
    ev = _round(world, eid, 0).metrics["eval"]
    assert ev["n"] == 4 and ev["yields"] == 1 and ev["wall_s"] > 0 and ev["image_stats"]["n"] == 4
    assert worker.run_once() and worker.last_error is None  # round 1's eval job: grid, reward model, KL to round 0
    ev1 = _round(world, eid, 1).metrics["eval"]
    assert ev1["yields"] == 0 and ev1["kl_to_prev"] >= 0 and ev1["reward_model_round"] == 1
    assert worker.run_once() is False
    worker.close()


def test_a_failed_training_does_not_leave_its_weights_under_another_experiments_adapter(worker_world, monkeypatch):
    """Adapter names are round_k for every experiment on the worker's one UNet. A training of A's round 1 that failed
    midway (an out-of-memory error) left its half-trained round_1 on the UNet while the cache still said round_1 was
    B's published adapter, so B's next jobs ran on (and trained from) A's weights. Found by review."""
    import torch
    from safetensors.torch import load_file

    from app import worker as worker_mod
    from seiko_core import lora

    world = worker_world
    a, b = world.create_experiment("A"), world.create_experiment("B")
    worker = world.worker()
    while worker.run_once():
        assert worker.last_error is None  # round 0 of both, with their eval grids
    (rater,) = world.raters(1)
    world.rate_open_round(b, [rater], lambda image_id, rater_id: 1 + image_id % 10)
    services.close_round(factory=world.factory, experiment_id=b)
    while worker.run_once():
        assert worker.last_error is None  # B: train, then round 1's images with B's round_1 (cached), its eval grid
    world.rate_open_round(a, [rater], lambda image_id, rater_id: 10)
    services.close_round(factory=world.factory, experiment_id=a)
    real = worker_mod.train_round

    def out_of_memory(*args, on_progress, **kwargs):
        def report(step, total, metrics):
            if metrics.get("phase") == "finetune" and step >= 1:
                raise RuntimeError("CUDA out of memory (simulated)")
            on_progress(step, total, metrics)
        return real(*args, on_progress=report, **kwargs)

    monkeypatch.setattr(worker_mod, "train_round", out_of_memory)
    assert worker.run_once() and "out of memory" in worker.last_error  # A's training fails after a step
    with read_session(world.factory) as s:
        b1 = worker_mod._round_info(s, repo.get_round_by_index(session=s, experiment_id=b, index=1))
    name = worker._use_adapter(worker._parts(world.settings.model), b1)  # what B's next job would run on
    published = load_file(str(storage.resolve(world.settings.data_dir, b1.adapter_path) / lora.WEIGHT_NAME))
    in_memory = lora.unet_lora_layers(worker._model.unet, name)
    assert in_memory and all(torch.equal(in_memory[k], published["unet." + k]) for k in in_memory)
    worker.close()


def _round0_rated_and_closed(world, name: str, score):
    """A new experiment whose round 0 (images and eval grid) one rater rated with ``score`` and an admin closed;
    returns (experiment id, the worker that ran its jobs, the rater's id)."""
    eid = world.create_experiment(name)
    worker = world.worker()
    while worker.run_once():
        assert worker.last_error is None
    (rater,) = world.raters(1)
    world.rate_open_round(eid, [rater], score)
    services.close_round(factory=world.factory, experiment_id=eid)
    return eid, worker, rater


def test_an_unpublished_adapter_is_not_reused_after_the_scores_it_was_trained_on_changed(worker_world, monkeypatch, caplog):
    """A train job wrote its adapter and failed to publish; the admin reopened the round, corrected every score (the
    rating rows keep their ids, so the counts and the watermark are unchanged) and closed it again. The next train
    job reused the adapter trained on the old scores: the snapshot it was matched on held only counts. Found by
    review."""
    import logging

    from app import worker as worker_mod

    world = worker_world
    eid, worker, rater = _round0_rated_and_closed(world, "reopened", lambda image_id, rater_id: 1)
    real = worker_mod.Worker._publish

    def fails_once(self, run, write, result):
        if run.job.kind == "train":
            monkeypatch.setattr(worker_mod.Worker, "_publish", real)
            raise RuntimeError("the database went away while publishing (simulated)")
        return real(self, run, write, result)

    monkeypatch.setattr(worker_mod.Worker, "_publish", fails_once)
    assert worker.run_once() and "went away" in worker.last_error
    adapter = storage.resolve(world.settings.data_dir, storage.adapter_path(eid, 1))
    first = sha256_file(adapter / MANIFEST)  # written, not published
    with write_session(world.factory) as s:
        services_round = repo.get_round_by_index(session=s, experiment_id=eid, index=0)
        repo.reopen_round(session=s, round_id=services_round.id)
    world.rate_open_round(eid, [rater], lambda image_id, rater_id: 10)  # every score corrected, same rating ids
    services.close_round(factory=world.factory, experiment_id=eid)
    with caplog.at_level(logging.INFO, logger="seiko.worker"):
        while worker.run_once():
            if _round(world, eid, 0).status == "done":
                break
    assert not [r for r in caplog.records if "reusing" in r.getMessage()]
    round1 = _round(world, eid, 1)
    assert round1.adapter_path is not None and sha256_file(adapter / MANIFEST) != first
    worker.close()


@pytest.mark.parametrize("how", ["sigterm", "ctrl-c", "exit-inside-the-job"])
def test_a_stopped_worker_hands_its_job_back_without_using_an_attempt(worker_world, how):
    """SIGTERM (app.cli_worker calls stop() and raises SystemExit) or Ctrl-C during a job counted as a failed
    attempt, so three restarts during a training failed the job for good and left the round in training. Found by
    review. A SystemExit raised by the job's own code, with no stop asked, still counts."""
    world = worker_world
    eid = world.create_experiment("stopped")
    worker = world.worker()

    def stopped(run):
        if how == "sigterm":
            worker.stop()
            raise SystemExit(143)
        if how == "ctrl-c":
            raise KeyboardInterrupt
        raise SystemExit(3)

    worker.handlers["generate"] = stopped
    for _ in range(4 if how != "exit-inside-the-job" else 1):
        with pytest.raises((SystemExit, KeyboardInterrupt)):
            worker.run_once()
        worker._stopping.clear()
    (job,) = _jobs(world, eid)
    if how == "exit-inside-the-job":
        assert (job.status, job.attempts) == ("queued", 1) and "was stopped (SystemExit)" in job.error
    else:
        assert (job.status, job.attempts, job.error, job.lease_owner) == ("queued", 0, None, None)
    worker.close()


@pytest.mark.parametrize("how", ["ctrl-c-and-sigterm-pending-together", "sigterm-again-during-the-hand-back"])
def test_a_second_stop_signal_does_not_interrupt_the_hand_back(worker_world, monkeypatch, how):
    """Ctrl-C reaches rank 0 of `worker --processes N` with the SIGTERM its supervisor forwards (or a service manager
    sends SIGTERM twice): the second signal raised SystemExit again inside run_once's hand-back, so the job stayed
    'running' under a dead lease and later cost an attempt. Found by review. One signal interrupts a job, once."""
    import signal

    from app import worker as worker_mod

    world = worker_world
    eid = world.create_experiment("stopped-twice")
    worker = world.worker()
    if how == "ctrl-c-and-sigterm-pending-together":
        def job(run):  # both pending at once: CPython runs SIGINT's handler, then SIGTERM's inside the except branch
            # sent to this thread, not the process: a process-directed signal is delivered to any thread that does
            # not block it (the heartbeat's), so the handler ran before the unblock and left this thread's mask
            # blocked for the rest of the session, and every later subprocess inherited it
            me = threading.get_ident()
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            try:
                signal.pthread_kill(me, signal.SIGINT)
                signal.pthread_kill(me, signal.SIGTERM)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            for _ in range(10**6):
                pass
            pytest.fail("the signals were not handled")

        raised = KeyboardInterrupt
    else:
        real_yield_job = job_queue.yield_job

        def yield_job(**kwargs):
            worker.interrupt_for_signal(signal.SIGTERM)  # the second SIGTERM arrives as the job is handed back
            return real_yield_job(**kwargs)

        monkeypatch.setattr(worker_mod.job_queue, "yield_job", yield_job)

        def job(run):
            worker.interrupt_for_signal(signal.SIGTERM)
            pytest.fail("a SIGTERM during a job must interrupt it")

        raised = SystemExit
    worker.handlers["generate"] = job
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for sig in before:
            signal.signal(sig, worker.interrupt_for_signal)
        with pytest.raises(raised):
            worker.run_once()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    (job_row,) = _jobs(world, eid)
    assert (job_row.status, job_row.attempts, job_row.error, job_row.lease_owner) == ("queued", 0, None, None)
    assert worker.current_job is None and worker._stopping.is_set()
    worker.close()


def test_one_stop_signal_keeps_its_behaviour_busy_and_idle(worker_world):
    """interrupt_for_signal, the handler of both entry points: one SIGTERM in a job raises SystemExit(143) and the job
    is handed back; the next job's first signal interrupts it again (the mark is per job); idle, SIGTERM only stops
    the worker and SIGINT raises KeyboardInterrupt as Python's own handler does."""
    import signal

    world = worker_world
    eid = world.create_experiment("stopped-once")
    worker = world.worker()
    worker.handlers["generate"] = lambda run: worker.interrupt_for_signal(signal.SIGTERM)
    for _ in range(2):
        with pytest.raises(SystemExit) as exited:
            worker.run_once()
        assert exited.value.code == 143
        (job,) = _jobs(world, eid)
        assert (job.status, job.attempts, job.error, job.lease_owner) == ("queued", 0, None, None)
        worker._stopping.clear()
    assert worker.interrupt_for_signal(signal.SIGTERM) is None and worker._stopping.is_set()
    worker._stopping.clear()
    with pytest.raises(KeyboardInterrupt):
        worker.interrupt_for_signal(signal.SIGINT)
    assert worker._stopping.is_set()
    worker.close()


def test_a_worker_stopped_while_it_claims_hands_the_job_back_without_running_it(worker_world, monkeypatch):
    """SIGTERM during the claim's transaction (current_job still None, so app.cli_worker raised nothing) was ignored
    for the whole job, which then ran to its end (found by review). The claimed job is handed back at once."""
    from app import worker as worker_mod

    world = worker_world
    eid = world.create_experiment("stopped-claiming")
    worker = world.worker()
    real_claim, ran = job_queue.claim_job, []

    def claim(**kwargs):
        row = real_claim(**kwargs)
        worker.stop()  # the signal arrives while the claim's transaction is open
        return row

    worker.handlers["generate"] = lambda run: ran.append(run.job.id) or "ran"
    monkeypatch.setattr(worker_mod.job_queue, "claim_job", claim)
    assert worker.run_once() and ran == []
    (job,) = _jobs(world, eid)
    assert (job.status, job.attempts, job.error, job.lease_owner) == ("queued", 0, None, None)
    worker.close()


@pytest.mark.parametrize("signum", [2, 15], ids=["sigint", "sigterm"])
@pytest.mark.parametrize("where", ["as-the-claim-commits", "at-the-claim-fault-point", "building-the-heartbeat"])
def test_a_stop_signal_right_after_the_claim_commits_hands_the_job_back_at_once(worker_world, monkeypatch, where, signum):
    """A Ctrl-C between the claim's commit and run_once marking the job as its own (``current_job``) found the worker
    "idle": interrupt_for_signal raised KeyboardInterrupt there, outside the try that hands a job back, so the job
    stayed 'running' under this worker's lease until it ran out, and the next claim cost it an attempt (found by the
    second review). A stop signal anywhere in the claim is now held until the job is the worker's, then hands it back
    at once with its attempt unused; Ctrl-C still ends in KeyboardInterrupt (exit 130), SIGTERM in a clean return."""
    import signal

    from app import worker as worker_mod

    world = worker_world
    eid = world.create_experiment("stopped-after-the-claim")
    worker = world.worker()  # a 30 s lease: a job still 'running' after run_once would wait that long
    worker.start()
    ran, fired = [], []

    def signal_once():
        if not fired:
            fired.append(signum)
            worker.interrupt_for_signal(signum)  # what the installed handler does when the signal lands here

    if where == "as-the-claim-commits":  # the first write session is the claim's: the signal once it has committed
        real_factory = worker.factory

        def factory():
            session = real_factory()
            real_close = session.close

            def close():
                real_close()
                signal_once()

            session.close = close
            return session

        worker.factory = factory
    elif where == "at-the-claim-fault-point":
        real_fault_point = worker_mod.fault_point
        monkeypatch.setattr(worker_mod, "fault_point",
                            lambda name, attempt: (signal_once() if name == "claim" else None, real_fault_point(name, attempt)))
    else:
        real_heartbeat = worker_mod.Heartbeat

        def heartbeat(*args, **kwargs):
            signal_once()
            return real_heartbeat(*args, **kwargs)

        monkeypatch.setattr(worker_mod, "Heartbeat", heartbeat)
    worker.handlers["generate"] = lambda run: ran.append(run.job.id) or {}
    if signum == signal.SIGINT:
        with pytest.raises(KeyboardInterrupt):
            worker.run_once()
    else:
        assert worker.run_once() is True
    assert fired == [signum] and ran == []
    (job,) = _jobs(world, eid)
    assert (job.status, job.attempts, job.error, job.lease_owner, job.lease_expires_at) == ("queued", 0, None, None, None)
    assert worker.current_job is None and worker._stopping.is_set()
    # the worker's own state is back to idle: the next signal behaves as an idle one does
    worker._stopping.clear()
    assert worker.interrupt_for_signal(signal.SIGTERM) is None
    worker._stopping.clear()
    with pytest.raises(KeyboardInterrupt):
        worker.interrupt_for_signal(signal.SIGINT)
    worker.close()


@pytest.mark.parametrize("signum", [2, 15], ids=["sigint", "sigterm"])
def test_a_stop_signal_during_a_claim_that_finds_nothing_stops_as_an_idle_one(worker_world, monkeypatch, signum):
    """The other side of the held signal: a claim that takes nothing (the queue empty) leaves the worker as an idle
    signal would, Ctrl-C raising KeyboardInterrupt and SIGTERM only stopping it, with nothing claimed."""
    import signal

    from app import worker as worker_mod

    world = worker_world
    worker = world.worker()
    real_claim = job_queue.claim_job

    def claim(**kwargs):
        row = real_claim(**kwargs)
        worker.interrupt_for_signal(signum)
        return row

    monkeypatch.setattr(worker_mod.job_queue, "claim_job", claim)
    if signum == signal.SIGINT:
        with pytest.raises(KeyboardInterrupt):
            worker.run_once()
    else:
        assert worker.run_once() is False
    assert worker._stopping.is_set() and worker.current_job is None
    monkeypatch.setattr(worker_mod.job_queue, "claim_job", real_claim)
    worker._stopping.clear()
    with pytest.raises(KeyboardInterrupt):  # idle again
        worker.interrupt_for_signal(signal.SIGINT)
    worker.close()


def test_an_eval_job_with_a_kl_that_is_not_finite_finishes_and_stores_it_as_null(worker_world, monkeypatch):
    """The eval job saves its KL values in its payload after each chunk; a NaN (a diverged adapter) was refused by
    the payload's strict-JSON check, rolling the chunk back, so the job failed on every retry. Found by review."""
    from app import worker as worker_mod

    world = worker_world
    eid, worker, _ = _round0_rated_and_closed(world, "diverged", lambda image_id, rater_id: 1 + image_id % 10)
    monkeypatch.setattr(worker_mod, "trajectory_kl", lambda parts, prompts, *a, **k: [float("nan")] * len(prompts))
    while worker.run_once():
        assert worker.last_error is None  # train, round 1's images, its eval grid and KL
    (eval1,) = [j for j in _jobs(world, eid, "eval") if j.payload.get("round_index") == 1]
    assert eval1.status == "done" and eval1.attempts == 1
    assert all(v is None for _, _, v in eval1.payload["partial"]["kl"])
    ev = _round(world, eid, 1).metrics["eval"]
    assert ev["kl_to_prev"] is None and ev["n"] == 4


def test_a_worker_that_lost_its_train_job_does_not_set_aside_the_adapter_on_disk(worker_world, monkeypatch):
    """A worker that stalled past its lease, after reading the round but before looking at the adapter directory,
    found there the adapter of the worker that had taken the job over (trained on data it did not match, or not
    yet verifiable to it) and renamed it out of the way: a published round then had no adapter. Found by review.
    It now renames only while it holds the job, and stops with LeaseLost otherwise."""
    from app import worker as worker_mod

    world = worker_world
    eid, worker, _ = _round0_rated_and_closed(world, "stalled", lambda image_id, rater_id: 1 + image_id % 10)
    adapter = storage.resolve(world.settings.data_dir, storage.adapter_path(eid, 1))
    real = worker_mod.fault_point

    def taken_over_meanwhile(name, attempt):
        if name == "snapshot":  # the stall: another worker claims the job and writes round 1's adapter
            adapter.mkdir(parents=True)
            (adapter / "written-by-the-other-worker").write_text("its adapter", encoding="utf-8")
            with write_session(world.factory) as s:
                (job,) = [j for j in job_queue.list_jobs(session=s, experiment_id=eid) if j.kind == "train"]
                job.lease_owner = "the-other-worker"
        real(name, attempt)

    monkeypatch.setattr(worker_mod, "fault_point", taken_over_meanwhile)
    assert worker.run_once()
    assert "no longer holds job" in worker.last_error
    assert (adapter / "written-by-the-other-worker").read_text(encoding="utf-8") == "its adapter"
    worker.close()


def test_a_database_outage_is_waited_out_not_the_end_of_the_worker(worker_world, monkeypatch):
    """One OperationalError from the database while polling (a PostgreSQL restart or fail-over) ended run_forever and
    with it the worker process; so did one while recording a job's failure. Found by review."""
    from sqlalchemy.exc import OperationalError

    from app import worker as worker_mod

    world = worker_world
    worker = world.worker()
    worker.start()
    real_claim, calls = job_queue.claim_job, []

    def claim(**kwargs):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OperationalError("SELECT ...", {}, Exception("server closed the connection unexpectedly"))
        worker.stop()
        return real_claim(**kwargs)

    monkeypatch.setattr(worker_mod.job_queue, "claim_job", claim)
    worker.run_forever()  # returned: it was stopped, not ended by the outage
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.9  # waited (1 s) before trying again
    monkeypatch.setattr(worker_mod.job_queue, "claim_job", real_claim)
    worker._stopping.clear()  # used again: a stopped worker hands a job it claims straight back

    eid = world.create_experiment("outage")

    def broken(run):
        raise RuntimeError("the job failed")

    def fail_job(**kwargs):
        raise OperationalError("UPDATE jobs ...", {}, Exception("server closed the connection unexpectedly"))

    worker.handlers["generate"] = broken
    monkeypatch.setattr(worker_mod.job_queue, "fail_job", fail_job)
    assert worker.run_once() and "the job failed" in worker.last_error  # the failure could not be recorded: no crash
    (job,) = _jobs(world, eid)
    assert job.status == "running"  # its lease runs out, then a worker takes it again
    worker.close()


def test_a_moment_of_outage_while_a_job_publishes_is_tried_again_not_an_attempt(worker_world, monkeypatch):
    """'database is locked' (an outage) while a job on its last attempt published its result failed the job for good:
    the round stayed in training with nothing left to claim (found by review). The publish is tried again while
    half the lease is left; an error that is no outage is still the job's failure."""
    from sqlalchemy.exc import OperationalError

    from app import worker as worker_mod
    from db.models import Job

    world = worker_world
    eid = world.create_experiment("publish-outage")
    with write_session(world.factory) as s:
        (job,) = job_queue.list_jobs(session=s, experiment_id=eid)
        s.get(Job, job.id).max_attempts = 1  # its one attempt is the last
    worker = world.worker(lease_s=10)
    real_complete, calls = job_queue.complete_job, []

    def complete(**kwargs):
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise OperationalError("UPDATE jobs ...", {}, Exception("database is locked"))
        return real_complete(**kwargs)

    def publishes(run):
        worker._publish(run, lambda s: None, {"published": True})
        return "published"

    worker.handlers["generate"] = publishes
    monkeypatch.setattr(worker_mod.job_queue, "complete_job", complete)
    assert worker.run_once() and worker.last_error is None
    (job,) = _jobs(world, eid)
    assert job.status == "done" and job.result == {"published": True} and len(calls) == 2
    assert calls[1] - calls[0] >= 0.45  # waited before trying again

    eid = world.create_experiment("publish-refused")
    calls.clear()

    def refused(**kwargs):
        calls.append(time.monotonic())
        raise OperationalError("UPDATE jobs ...", {}, Exception("no such table: jobs"))

    monkeypatch.setattr(worker_mod.job_queue, "complete_job", refused)
    assert worker.run_once() and "no such table" in worker.last_error and len(calls) == 1  # not waited out
    worker.close()


def _publish_failing_once(world, worker, monkeypatch, error: BaseException) -> tuple[list[str], list[int]]:
    """Make ``worker``'s "generate" jobs publish their result, the first try's complete_job raising ``error``; returns
    (the tries, the jobs read back as "was it stored all the same")."""
    from app import worker as worker_mod

    real_complete, real_read_back, tries, read_back = job_queue.complete_job, worker._done_by_me, [], []

    def complete(**kwargs):
        tries.append(kwargs["job_id"])
        if len(tries) == 1:
            raise error
        return real_complete(**kwargs)

    def done_by_me(claimed):
        read_back.append(claimed.id)
        return real_read_back(claimed)

    def publishes(run):
        worker._publish(run, lambda s: None, {"published": True})
        return "published"

    worker.handlers["generate"] = publishes
    monkeypatch.setattr(worker_mod.job_queue, "complete_job", complete)
    monkeypatch.setattr(worker, "_done_by_me", done_by_me)
    return tries, read_back


class _Cancelled(Exception):
    """A driver error of PostgreSQL's 57014 or 25P03, with the bounds db.engine notes on one of its connections."""

    def __init__(self, state: str, message: str, bounds: dict[str, int] | None) -> None:
        super().__init__(message)
        self.sqlstate = state
        if bounds is not None:
            self.seiko_bounds = bounds


@pytest.mark.parametrize("state, message, bounds, said", [
    ("57014", "canceling statement due to user request", None,
     "the database cancelled a statement of this at an operator's request"),
    # its statement_timeout, where a lock wait ends first at the lock bound below it: the statement ran that long
    ("57014", "canceling statement due to statement timeout", {"lock_timeout": 100, "statement_timeout": 250},
     "a statement of this ran for more than 0.25 s, its bound, and was cancelled"),
    ("25P03", "terminating connection due to idle-in-transaction timeout", None,
     "this is a fault in it: please report it"),
])
def test_a_statement_cancelled_or_a_session_ended_for_idling_while_a_job_publishes_fails_the_attempt(
        worker_world_any_db, monkeypatch, state, message, bounds, said):
    """A statement the database cancelled (57014) and a session it ended for a transaction left idle (25P03; raised as
    an OperationalError whose connection is invalidated, as a drop's is) while a job published its result were waited
    out as outages for half a lease, a warning each try (sixteenth review), though the eval chunk's store fails the
    attempt at once on both. The publish fails the attempt at once now, in the bound's sentence, though the next try
    would have published; and it does not read the job back as a last try whose answer was lost (it did: a read-only
    review of that fix)."""
    from sqlalchemy.exc import OperationalError

    world = worker_world_any_db
    eid = world.create_experiment(f"publish-{state}")
    worker = world.worker(lease_s=10)
    tries, read_back = _publish_failing_once(world, worker, monkeypatch, OperationalError(
        "UPDATE jobs ...", {}, _Cancelled(state, message, bounds), connection_invalidated=state == "25P03"))
    assert worker.run_once()
    (job,) = _jobs(world, eid)
    assert tries == [job.id] and read_back == []  # not tried again, nor read back
    assert said in (worker.last_error or "") and "this attempt of the job failed" in (worker.last_error or "")
    assert (job.status, job.attempts, job.result) == ("queued", 1, None) and said in (job.error or "")
    worker.close()


def test_a_lock_wait_cut_at_the_statement_bound_while_a_job_publishes_is_tried_again(worker_world_any_db,
                                                                                     monkeypatch):
    """Where the operator's lock_timeout is none (0) or not below their statement_timeout, a lock wait ends as a
    statement cancelled (57014) at the statement bound, not as a lock not granted (55P03), which the publish tries
    again (``db.engine.lock_outlasts_statement``). Since the publish failed every 57014 at once (sixteenth review), it
    failed the attempt on such a wait too (a read-only review of that fix): the lock the drop before it left held is
    waited out as a lock not granted is, and the job published on its first attempt."""
    from sqlalchemy.exc import OperationalError

    world = worker_world_any_db
    eid = world.create_experiment("publish-lock-wait")
    worker = world.worker(lease_s=10)
    tries, _ = _publish_failing_once(world, worker, monkeypatch, OperationalError("UPDATE jobs ...", {}, _Cancelled(
        "57014", "canceling statement due to statement timeout", {"lock_timeout": 0, "statement_timeout": 250})))
    assert worker.run_once() and worker.last_error is None
    (job,) = _jobs(world, eid)
    assert tries == [job.id, job.id]
    assert (job.status, job.attempts, job.result, job.error) == ("done", 1, {"published": True}, None)
    worker.close()


def test_a_publish_whose_commit_answer_was_lost_is_not_called_discarded(worker_world, monkeypatch, caplog):
    """The commit of a job's result reached the database but its answer did not (the connection dropped): the try
    again found the job done and said "this worker's result is discarded", set last_error (so `worker --once` exited
    1) for a job whose result was stored (found by review). A job done under this worker's lease is its own result;
    one another worker took over is still refused."""
    import logging
    from contextlib import contextmanager

    from sqlalchemy.exc import OperationalError

    from app import worker as worker_mod

    world = worker_world
    eid = world.create_experiment("lost-answer")
    worker = world.worker(lease_s=10)
    real_write_session, publishing, lost = worker_mod.write_session, [], []

    @contextmanager
    def answer_lost_once(factory):
        with real_write_session(factory) as s:
            yield s
        if publishing and not lost:  # committed; the answer is lost on the way back
            lost.append(True)
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    def publishes(run):
        publishing.append(True)
        worker._publish(run, lambda s: None, {"published": True})
        return "published"

    worker.handlers["generate"] = publishes
    monkeypatch.setattr(worker_mod, "write_session", answer_lost_once)
    caplog.set_level(logging.INFO, logger="seiko.worker")
    assert worker.run_once() and lost and worker.last_error is None
    (job,) = _jobs(world, eid)
    assert job.status == "done" and job.result == {"published": True}
    assert not [r for r in caplog.records if "discarded" in r.getMessage()]
    assert any("stored by the try whose answer was lost" in r.getMessage() for r in caplog.records)

    # an outage, then the try again finds the job finished by another worker (its lease ran out): not its own result
    from sqlalchemy import select

    from db.models import Job

    eid = world.create_experiment("taken-over")
    real_complete = job_queue.complete_job

    def complete_after_an_outage(**kwargs):
        if not lost:
            lost.append(True)
            raise OperationalError("UPDATE jobs ...", {}, Exception("database is locked"))
        return real_complete(**kwargs)

    @contextmanager
    def taken_over_meanwhile(factory):
        try:
            with real_write_session(factory) as s:
                yield s
        except OperationalError:
            with real_write_session(factory) as s:
                row = s.get(Job, s.scalars(select(Job.id).where(Job.experiment_id == eid)).one())
                row.status, row.lease_owner, row.result = "done", "another-worker", {"by": "another"}
            raise

    lost.clear()
    worker.handlers["generate"] = publishes
    monkeypatch.setattr(worker_mod, "write_session", taken_over_meanwhile)
    monkeypatch.setattr(worker_mod.job_queue, "complete_job", complete_after_an_outage)
    assert worker.run_once() and lost and "no longer holds job" in (worker.last_error or "")
    (job,) = _jobs(world, eid)
    assert job.result == {"by": "another"}
    assert any("discarded" in r.getMessage() for r in caplog.records)
    worker.close()


def test_a_publish_whose_last_try_committed_but_lost_its_answer_is_published(worker_world, monkeypatch, caplog):
    """The last try of a job's publish (lease_s 0.9: half of it is left for tries, under the first wait of 0.5 s) whose
    commit landed but whose answer was lost (the connection dropped) was raised: the job logged as failed, last_error
    set (`worker --once` exited 1) and its failure not recorded (the job was done). It is read back on a fresh
    connection now: done under this worker's claim, it is published. A last try that did not commit is still the
    job's failure."""
    import logging
    from contextlib import contextmanager

    from sqlalchemy import update
    from sqlalchemy.exc import OperationalError

    from app import worker as worker_mod
    from db.models import Job

    world = worker_world
    eid = world.create_experiment("last-answer-lost")
    worker = world.worker(lease_s=0.9)
    real_write_session, publishing, faults = worker_mod.write_session, {"fault": None}, []

    def dropped(statement):
        return OperationalError(statement, {}, Exception("server closed the connection unexpectedly"),
                                connection_invalidated=True)

    @contextmanager
    def answer_lost(factory):
        if publishing["fault"] == "before":  # dropped before anything was written
            faults.append("before")
            raise dropped("BEGIN")
        with real_write_session(factory) as s:
            yield s
        if publishing["fault"] == "after":  # committed; the answer is lost on the way back
            faults.append("after")
            raise dropped("COMMIT")
        if publishing["fault"] == "another's":  # committed, and by the read-back the job is done under another lease
            faults.append("another's")
            with real_write_session(world.factory) as other:
                other.execute(update(Job).where(Job.experiment_id == eid).values(lease_owner="another-worker"))
            raise dropped("COMMIT")

    def publishes(run):
        publishing["fault"] = when  # only the publish's tries meet the fault
        try:
            worker._publish(run, lambda s: None, {"published": True})
        finally:
            publishing["fault"] = None
        return "published"

    worker.handlers["generate"] = publishes
    monkeypatch.setattr(worker_mod, "write_session", answer_lost)
    caplog.set_level(logging.INFO, logger="seiko.worker")
    when = "after"
    assert worker.run_once() and faults == ["after"]
    assert worker.last_error is None
    (job,) = _jobs(world, eid)
    assert job.status == "done" and job.result == {"published": True} and job.error is None
    assert not [r for r in caplog.records if "failed" in r.getMessage()]
    assert any("stored by the last try, whose answer was lost" in r.getMessage() for r in caplog.records)

    eid = world.create_experiment("last-try-dropped")
    when, faults[:] = "before", []
    assert worker.run_once() and faults == ["before"]
    assert "server closed the connection unexpectedly" in (worker.last_error or "")
    (job,) = _jobs(world, eid)
    assert job.status == "queued" and "server closed the connection unexpectedly" in job.error  # an attempt, as before

    # the same job's next attempt: done, but under another worker's lease by the time it is read back, is not this
    # worker's to count published (a read-back that took any done job for this one's would; a read-only review of the
    # fifteenth review's fixes)
    when, faults[:] = "another's", []
    caplog.clear()
    assert worker.run_once() and faults == ["another's"]
    assert "server closed the connection unexpectedly" in (worker.last_error or "")
    (job,) = _jobs(world, eid)
    assert (job.status, job.lease_owner) == ("done", "another-worker")
    assert not any("stored by the last try" in r.getMessage() for r in caplog.records)
    worker.close()


def test_a_database_that_refuses_for_good_ends_the_worker_at_once(worker_world, monkeypatch):
    """Every OperationalError was waited out as an outage, a missing table or a wrong password too: the worker retried
    forever, logging a traceback every 30 s (found by review). Only the database being out of reach is waited out."""
    from sqlalchemy.exc import OperationalError

    from app import worker as worker_mod
    from db.engine import is_outage

    class PgError(Exception):
        def __init__(self, message, sqlstate):
            super().__init__(message)
            self.sqlstate = sqlstate

    def operational(orig):
        return OperationalError("SELECT ...", {}, orig)

    assert is_outage(operational(Exception("server closed the connection unexpectedly")))
    assert is_outage(operational(Exception("database is locked")))
    assert is_outage(operational(PgError("terminating connection due to administrator command", "57P01")))
    assert is_outage(operational(PgError("connection failure", "08006")))
    assert not is_outage(operational(Exception("no such table: jobs")))
    assert not is_outage(operational(PgError('password authentication failed for user "seiko"', "28P01")))
    assert not is_outage(operational(PgError('database "seiko" does not exist', "3D000")))

    # real errors of the real drivers (the review found SQLite's programming errors taken for outages, and psycopg's
    # refusals at connection time, which carry no SQLSTATE, decided by a word list that missed some)
    import sqlite3

    import sqlalchemy as sa

    def raised(url, sql, **kw):
        engine = sa.create_engine(url, **kw)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        except sa.exc.OperationalError as exc:
            return exc
        finally:
            engine.dispose()
        raise AssertionError(f"{sql!r} on {url} raised no OperationalError")

    assert not is_outage(raised("sqlite://", "SELEC 1"))  # a syntax error
    assert not is_outage(raised("sqlite://", "SELECT * FROM no_table"))
    assert not is_outage(raised("sqlite://", "SELECT no_function(1)"))
    busy = OperationalError("BEGIN IMMEDIATE", {}, sqlite3.OperationalError("database is locked"))
    busy.orig.sqlite_errorcode, busy.orig.sqlite_errorname = sqlite3.SQLITE_BUSY, "SQLITE_BUSY"
    assert is_outage(busy)
    assert is_outage(raised("sqlite:////nonexistent-dir/x.db", "SELECT 1"))  # cannot open: the disk may come back
    for message in ("connection to server failed: FATAL:  no pg_hba.conf entry for host", "fe_sendauth: no password "
                    "supplied", 'FATAL:  role "x" is not permitted to log in', "server does not support SSL, but SSL "
                    "was required", 'FATAL:  Peer authentication failed for user "x"'):
        assert not is_outage(operational(Exception(message))), message
    pg = os.environ.get("SEIKO_TEST_PG_URL")
    if pg:  # psycopg's own errors, when the suite has its PostgreSQL
        url = sa.make_url(pg)
        assert not is_outage(raised(url.set(database="no_such_database_here").render_as_string(False), "SELECT 1"))
        assert not is_outage(raised(url.set(username="no_such_role_here").render_as_string(False), "SELECT 1"))
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        closed.close()
        assert is_outage(raised(url.set(host="127.0.0.1", port=port).render_as_string(False), "SELECT 1"))

    worker = worker_world.worker()
    worker.start()
    calls = []

    def claim(**kwargs):
        calls.append(1)
        raise operational(Exception("no such table: jobs"))

    monkeypatch.setattr(worker_mod.job_queue, "claim_job", claim)
    started = time.monotonic()
    with pytest.raises(OperationalError, match="no such table"):
        worker.run_forever()
    assert calls == [1] and time.monotonic() - started < 0.9  # not waited, not retried
    worker.close()


def test_an_adapter_another_worker_wrote_first_on_other_ratings_is_not_published_as_this_jobs(worker_world, monkeypatch):
    """Writing the adapter keeps a verified copy already under its name (a retried job publishes one result): a
    worker that had lost the job and trained on other ratings (the round reopened and closed meanwhile) could put its
    copy there first, and this job then published it with its own metrics. Found by review. Such a copy is now set
    aside and this job's own written."""
    import json

    from app import worker as worker_mod
    from seiko_core.checkpoint import atomic_directory

    world = worker_world
    eid, worker, _ = _round0_rated_and_closed(world, "raced", lambda image_id, rater_id: 1 + image_id % 10)
    adapter = storage.resolve(world.settings.data_dir, storage.adapter_path(eid, 1))
    real, written = worker_mod.fault_point, []

    def the_other_writer_first(name, attempt):
        if name == "save" and not written:
            written.append(adapter)
            def write(tmp):
                (tmp / "metrics.json").write_text(json.dumps({"snapshot": {"watermark": 1, "images": 1}}), encoding="utf-8")
            atomic_directory(adapter, write, extra={"adapter": "round_1", "format": "diffusers-lora"})
        real(name, attempt)

    monkeypatch.setattr(worker_mod, "fault_point", the_other_writer_first)
    while worker.run_once():
        assert worker.last_error is None
        if _round(world, eid, 0).status == "done":
            break
    metrics = json.loads((adapter / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["snapshot"]["images"] > 1 and (adapter / "pytorch_lora_weights.safetensors").is_file()
    assert verify(adapter) and _round(world, eid, 1).adapter_path is not None
    assert any(p.name.startswith(".tmp-retired-round_1") for p in adapter.parent.iterdir())
    worker.close()


def test_an_eval_whose_reward_model_is_not_there_says_so(tmp_path, caplog):
    """A reward model the eval's machine could not see left the predicted reward out of the round's metrics without
    a word (found by review): it is logged and named in the metrics."""
    import logging

    from app.worker import _reward_metrics

    caplog.set_level(logging.WARNING, logger="seiko.worker")
    out = _reward_metrics(tmp_path, "rewards/exp1/round_2", 2, np.zeros((3, 8), dtype=np.float32))
    assert out == {"reward_model_missing": "rewards/exp1/round_2"}
    assert any("round 2's reward model is not at" in r.getMessage() for r in caplog.records)


def _queued_jobs(world) -> list[tuple[str, str, int]]:
    from sqlalchemy import select

    from db.engine import read_session
    from db.models import Job

    with read_session(world.factory) as s:
        return [(j.kind, j.status, j.attempts) for j in s.scalars(select(Job).order_by(Job.id))]


def test_a_worker_refuses_a_data_dir_it_cannot_write_before_claiming_a_job(worker_world, monkeypatch):
    """A worker run by a user who could not write the data dir loaded the model, generated the round, failed with a
    PermissionError traceback writing the images, and the job was queued again for attempts 2 and 3, each generating
    the round again (found by the sixth review). The worker now writes a probe file at its start and refuses there,
    in one sentence naming the folder; no job is claimed and the probe leaves nothing behind."""
    import re
    import stat

    from app.settings import SettingsError

    world = worker_world
    world.create_experiment()
    before = _queued_jobs(world)
    data = world.settings.data_dir
    # a folder the worker writes that is a file: a real failure whoever runs the test (root passes any chmod)
    Path(data).mkdir(parents=True)
    (Path(data) / "images").write_text("not a folder")
    worker = world.worker()
    try:
        with pytest.raises(SettingsError, match=rf"^cannot write in '{re.escape(str(Path(data) / 'images'))}' "
                                                r"\(Not a directory\), where the worker keeps images"):
            worker.start()
        assert not worker._started
    finally:
        worker.close()
    assert _queued_jobs(world) == before  # nothing claimed, no attempt used
    (Path(data) / "images").unlink()
    # no write permission on the data dir: a real one for a user, the probe's own refusal for root
    os.chmod(data, stat.S_IRUSR | stat.S_IXUSR)
    try:
        if os.geteuid() == 0:
            real_open = os.open

            def refusing_open(path, flags, *args, **kwargs):
                if flags & os.O_CREAT and Path(path).parent == Path(data):
                    raise PermissionError(13, "Permission denied", str(path))
                return real_open(path, flags, *args, **kwargs)

            monkeypatch.setattr(storage.os, "open", refusing_open)
        worker = world.worker()
        try:
            with pytest.raises(SettingsError, match=rf"^cannot write in '{re.escape(str(data))}' \(Permission denied\)"):
                worker.start()
        finally:
            worker.close()
        monkeypatch.undo()
    finally:
        os.chmod(data, stat.S_IRWXU)
    assert _queued_jobs(world) == before
    worker = world.worker()  # and with the folder writable again it starts, leaving no probe behind
    try:
        worker.start()
    finally:
        worker.close()
    assert not [p for p in Path(data).rglob("*") if "probe" in p.name]


def test_the_worker_command_refuses_a_data_dir_it_cannot_write_in_one_sentence(tmp_path, _sqlite_at_head):
    import shutil

    data = tmp_path / "d"
    data.mkdir()
    shutil.copy(_sqlite_at_head, data / "seiko.db")
    (data / "adapters").write_text("not a folder")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}
    proc = subprocess.run([sys.executable, "-m", "app", "worker", "--once", "--data-dir", str(data)], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**env, "HF_HUB_OFFLINE": "1"})
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "torchvision" not in ln]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1] == (f"error: cannot write in {str(data / 'adapters')!r} (Not a directory), where the worker keeps "
                         "images, adapters and reward models: give this user write access to the data directory or "
                         "choose another one"), proc.stderr


def test_a_job_whose_model_is_gone_fails_at_once_with_its_sentence_and_no_traceback(worker_world, tmp_path, caplog):
    """The model directory removed after the experiment was created: the worker logged a 15-line traceback ending
    in ModelLoadError "Model path ... does not exist." and queued the job again for two more attempts, which met the
    same (found by the sixth review). A model or adapter that cannot be loaded is the input's fault: the job fails
    at once, the log has the sentence and no traceback, and the Admin tab shows the sentence as its last error."""
    import html
    import logging
    import shutil

    from app import ui_admin
    from app.auth import local_admin
    from db.models import Job

    world = worker_world
    model = tmp_path / "model-copy"
    shutil.copytree(world.model_dir, model)
    experiment_id = world.create_experiment(model_spec=str(model))
    shutil.rmtree(model)
    worker = world.worker()
    try:
        with caplog.at_level(logging.INFO, logger="seiko"):
            assert worker.run_once() is True
        assert worker.run_once() is False  # nothing queued again
    finally:
        worker.close()
    sentence = f"Model path {str(model)!r} does not exist."
    with read_session(world.factory) as s:
        (job,) = s.query(Job).filter(Job.experiment_id == experiment_id).all()
        assert (job.status, job.attempts, job.error) == ("failed", 1, sentence)
        job_id, max_attempts = job.id, job.max_attempts
    assert worker.last_error == sentence
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage().endswith(sentence) for r in failures] == [True], [r.getMessage() for r in failures]
    assert not any(r.exc_info for r in caplog.records) and "Traceback" not in caplog.text
    rows = ui_admin.jobs_table(world.factory, local_admin(world.factory), experiment_id)
    assert [row[3:] for row in rows] == [["failed", f"1 of {max_attempts}", sentence]]
    assert (f"Job {job_id} (generate) failed after 1 attempt: {html.escape(sentence)}. Fix the cause"
            in ui_admin.round_status_html(world.factory, experiment_id))


def _job_after_a_failed_model_load(world, cause: BaseException, message: str):
    """One generate job whose model load fails with ModelLoadError(``message``) raised from ``cause``; its job row."""
    from seiko_core.models import ModelLoadError

    eid = world.create_experiment()

    def load_fails(run):
        try:
            raise cause
        except BaseException as exc:
            raise ModelLoadError(f"Could not load Model 'org/model': {message}") from exc

    worker = world.worker()
    worker.handlers["generate"] = load_fails
    try:
        assert worker.run_once() is True
    finally:
        worker.close()
    (job,) = _jobs(world, eid)
    return job


def test_a_model_that_could_not_be_downloaded_is_still_retried(worker_world):
    """The input faults fail at once (the test above); a model load that failed on a connection or a timeout (a hub
    download) may work on another attempt, and is queued again as before."""
    job = _job_after_a_failed_model_load(worker_world, ConnectionError("connection reset by peer"),
                                         "connection reset by peer")
    assert (job.status, job.attempts) == ("queued", 1) and "connection reset" in job.error


@pytest.mark.parametrize("cause", ["torch", "host"])
def test_a_model_load_that_ran_out_of_memory_is_retried(worker_world, cause):
    """Input faults fail at once (sixth review), but load_model reports a RuntimeError such as torch's
    OutOfMemoryError as a ModelLoadError too: a GPU too small on one worker failed the job for every worker. Out of
    memory (torch's or the host's MemoryError) is queued again, as a connection error is."""
    import torch

    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB") if cause == "torch" else MemoryError()
    job = _job_after_a_failed_model_load(worker_world, error, "out of memory")
    assert (job.status, job.attempts) == ("queued", 1) and "out of memory" in job.error


class _PgError(Exception):
    """A driver error carrying PostgreSQL's SQLSTATE, as psycopg's do (``sqlstate``)."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def test_claims_cancelled_in_a_row_are_counted_reset_and_the_tenth_stops_the_worker(tmp_path, monkeypatch, caplog):
    """The in-a-row count of claims PostgreSQL cancelled (57014), without a PostgreSQL (the PG test needs one, and CI
    has none): run_once raises the SQLAlchemy errors a claim would. Only cancels in a row count: a lock not granted
    (55P03), an outage (08006) or a claim that went through in between starts the count again, and the tenth cancel
    in a row (not the tenth in all) raises ClaimsCancelled from it; each one before is waited out (the wait stubbed:
    nothing sleeps) with a warning counting it."""
    from sqlalchemy.exc import OperationalError

    from app.worker import ClaimsCancelled, Worker, WorkerRefused

    def failure(state: str, message: str) -> OperationalError:
        return OperationalError("UPDATE jobs SET ...", {}, _PgError(message, state))

    cancel = lambda: failure("57014", "canceling statement due to user request")  # noqa: E731
    lock = lambda: failure("55P03", "canceling statement due to lock timeout")  # noqa: E731
    outage = lambda: failure("08006", "server closed the connection unexpectedly")  # noqa: E731
    # 4 cancels, a lock, 9 cancels, an outage, 9 cancels, a claim with no job, then the 10 in a row that stop it
    script = [cancel] * 4 + [lock] + [cancel] * 9 + [outage] + [cancel] * 9 + [None] + [cancel] * 10 + [cancel]
    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": f"sqlite:///{tmp_path / 'w.db'}"},
                                 environ={})
    worker = Worker(settings, "w", lease_s=5)
    steps = iter(script)

    def run_once() -> bool:
        make = next(steps)
        if make is None:
            return False
        raise make()

    waits: list[float] = []
    monkeypatch.setattr(worker, "run_once", run_once)
    monkeypatch.setattr(worker._stopping, "wait", lambda timeout=None: waits.append(timeout) or False)
    caplog.set_level("WARNING", logger="seiko.worker")
    results = []
    try:
        with pytest.raises(ClaimsCancelled) as stopped:
            while True:
                results.append(worker.run_once_outlasting_outages())
    finally:
        worker.close()
    # where the raise came: the 10th cancel in a row of the script, counted here from the script itself
    in_a_row, stop_at = 0, None
    for index, make in enumerate(script):
        in_a_row = in_a_row + 1 if make is cancel else 0
        if in_a_row == 10:
            stop_at = index
            break
    assert stop_at == len(script) - 2 and len(results) == stop_at  # the 33 before it returned; the last never ran
    assert results == [False if make is None else None for make in script[:stop_at]]
    assert isinstance(stopped.value, WorkerRefused) and stopped.value.__cause__.orig.sqlstate == "57014"
    assert str(stopped.value).startswith("worker 'w' stopped: the database cancelled its claim of a job 10 times in a "
                                         "row over ")
    counted = [int(r.getMessage().rsplit("(", 1)[1].split(" of ")[0]) for r in caplog.records
               if "cancelled its claim" in r.getMessage()]
    assert counted == [1, 2, 3, 4, *range(1, 10), *range(1, 10), *range(1, 10)]
    # each failure before it waited (stubbed: none slept); the claim that found no job left the wait to run_forever
    assert len(waits) == sum(make is not None for make in script[:stop_at]) and all(wait > 0 for wait in waits)


@pytest.mark.parametrize("cut", ["statement_timeout", "cancel"])
def test_the_claims_cancelled_sentence_names_the_database_url_and_no_bound_it_does_not_know(tmp_path, monkeypatch,
                                                                                             cut):
    """ClaimsCancelled's sentence said "its SEIKO_DB_URL's ?options=...", wrong for a URL given with --db-url or one
    that already has a query, and said "give the worker a longer statement_timeout" and "so it would never take a
    job" where no bound was known (an operator's pg_cancel_backend). Found by the fourteenth review. It names the
    worker's database URL (either setting) and the option to add, and where no bound is known, no statement_timeout
    advice."""
    from sqlalchemy.exc import OperationalError

    from app.worker import CLAIM_CANCELS_MAX, ClaimsCancelled, Worker

    timed_out = cut == "statement_timeout"
    orig = _PgError("canceling statement due to statement timeout" if timed_out
                    else "canceling statement due to user request", "57014")
    if timed_out:  # the bounds db.engine notes on the error of its connection: no lock_timeout, 0.25 s per statement
        orig.seiko_bounds = {"lock_timeout": 0, "statement_timeout": 250}
    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": f"sqlite:///{tmp_path / 'w.db'}"},
                                 environ={})
    worker = Worker(settings, "w", lease_s=5)

    def run_once() -> bool:
        raise OperationalError("UPDATE jobs SET ...", {}, orig)

    monkeypatch.setattr(worker, "run_once", run_once)
    monkeypatch.setattr(worker._stopping, "wait", lambda timeout=None: False)
    try:
        for _ in range(CLAIM_CANCELS_MAX - 1):
            assert worker.run_once_outlasting_outages() is None
        with pytest.raises(ClaimsCancelled) as stopped:
            worker.run_once_outlasting_outages()
    finally:
        worker.close()
    said = str(stopped.value)
    head = "worker 'w' stopped: the database cancelled its claim of a job 10 times in a row over "
    assert said.startswith(head), said
    seconds, rest = said.removeprefix(head).split(" s (", 1)
    assert seconds.isdigit(), said
    if timed_out:
        assert rest == ("the database's statement_timeout of 0.25 s ran out: it ran, or waited for a lock another "
                        "transaction held, that long), so it would never take a job; nothing was claimed; give the "
                        "worker a longer statement_timeout, or a lock_timeout below it, so that a wait for a lock ends "
                        "as a lock not granted, which the worker waits out, then start it again: in the worker's "
                        "database URL (SEIKO_DB_URL or --db-url), add `-c statement_timeout=0` to its options (or raise "
                        "the role's, database's or server's setting)"), said
    else:
        assert rest == ("an operator's cancel, or the database's statement_timeout); nothing was claimed; find what "
                        "cancels its claims, then start it again"), said
