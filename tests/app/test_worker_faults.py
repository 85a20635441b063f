"""Fault injection: `python -m app worker` is killed with SIGKILL at random points of its jobs and restarted.

Meanwhile a second process writes ratings to another experiment. After every trial and at the end:
each round is published exactly once (one checkpoint, one generate job), every adapter directory under
its final name verifies against its manifest and the recorded hash, images are whole and content-addressed,
no rating is lost, no job is stuck running past its lease, and the rating writer never saw
'database is locked'.

The default suite runs 3 trials (about a minute); ``-m slow`` runs 20.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app import services, storage
from db import repo
from db.engine import read_session, write_session
from db.models import Checkpoint, Image, Job, Rating, Round, utcnow
from seiko_core.checkpoint import MANIFEST, sha256_file, verify

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 3.0
JOB_SECONDS = {"generate": 1.5, "train": 1.5, "eval": 1.5}  # first guesses of job lengths; then the lengths the workers log
RATER_IMAGES, RATER_PEOPLE = 30, 10

def _env(world) -> dict[str, str]:
    return {**os.environ, "SEIKO_DB_URL": world.settings.db_url, "SEIKO_DATA_DIR": str(world.settings.data_dir),
            "SEIKO_MODEL": str(world.model_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false"}


class WorkerProcess:
    def __init__(self, world, worker_id: str, log_dir: Path) -> None:
        self.worker_id = worker_id
        self.log = log_dir / f"{worker_id}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "--worker-id", worker_id, "--lease-s", str(LEASE_S), "--poll-s", "0.2"],
                cwd=REPO, env=_env(world), stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        # a SIGTERM before the worker installed its handler (still importing) ends it with -15, not a clean exit:
        # wait for its 'ready' line first (a freshly restarted worker may find the queue already idle)
        _wait(f"worker {self.worker_id} ready", lambda: f"worker {self.worker_id!r} ready" in self.log.read_text(), 120, self)
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc.poll() is None


def _wait(what: str, predicate, timeout: float, worker: WorkerProcess | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if worker is not None and not worker.alive():
            raise AssertionError(f"worker {worker.worker_id} exited with {worker.proc.returncode} while waiting for {what}:\n"
                                 + worker.log.read_text()[-3000:])
        time.sleep(0.02)
    log = worker.log.read_text()[-3000:] if worker is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{log}")


def _job_seconds(logs: Path, kind: str) -> float:
    """How long a job of ``kind`` takes here: the longest the workers logged so far, else a first guess."""
    seen = [float(m.group(1)) for log in logs.iterdir()
            for m in re.finditer(rf"job \d+ \({kind}\) done in ([0-9.]+) s", log.read_text())]
    return max(seen, default=JOB_SECONDS[kind])


def _jobs(world, experiment_id) -> list[tuple]:
    with read_session(world.factory) as s:
        return [(j.id, j.kind, j.status, j.lease_owner, j.round_id, j.attempts, j.error, j.lease_expires_at)
                for j in s.query(Job).filter_by(experiment_id=experiment_id).order_by(Job.id)]


def _advance(world, experiment_id, rater_ids, rated: dict[tuple[int, int], int]) -> None:
    """If a round is open for labeling, rate all its query images and close it (queues the train job)."""
    with write_session(world.factory) as s:
        round_ = repo.get_open_round(session=s, experiment_id=experiment_id)
        if round_ is None:
            return
        for image in repo.list_images(session=s, round_id=round_.id, kind="query"):
            for rater_id in rater_ids:
                score = 1 + (image.id + rater_id) % 10
                repo.add_rating(session=s, image_id=image.id, rater_id=rater_id, score=score)
                rated[(image.id, rater_id)] = score
    services.close_round(factory=world.factory, experiment_id=experiment_id)


def _check_invariants(world, experiment_id, rated: dict[tuple[int, int], int], live_worker: str | None = None) -> int:
    """Everything that must hold whatever the kill interrupted; returns the number of published rounds."""
    data_dir = world.settings.data_dir
    with read_session(world.factory) as s:
        rounds = s.query(Round).filter_by(experiment_id=experiment_id).order_by(Round.index).all()
        assert [r.index for r in rounds] == list(range(len(rounds)))
        jobs = s.query(Job).filter_by(experiment_id=experiment_id).all()
        for r in rounds:
            assert sum(1 for j in jobs if j.kind == "generate" and j.round_id == r.id) == 1, f"round {r.index}: generate jobs"
            assert sum(1 for j in jobs if j.kind == "train" and j.round_id == r.id) <= 1, f"round {r.index}: train jobs"
            checkpoints = s.query(Checkpoint).filter_by(round_id=r.id).all()
            if r.index == 0:
                assert not checkpoints
            else:  # published exactly once, and its adapter verifies against the recorded manifest hash
                assert len(checkpoints) == 1, f"round {r.index} has {len(checkpoints)} checkpoints"
                adapter_dir = storage.resolve(data_dir, r.adapter_path)
                verify(adapter_dir)
                assert sha256_file(adapter_dir / MANIFEST) == checkpoints[0].manifest_sha256
            images = s.query(Image).filter_by(round_id=r.id).all()
            eval_jobs = [j for j in jobs if j.kind == "eval" and j.round_id == r.id]
            if r.status != "generating":  # the query images open the round and queue its eval job (exactly one)
                assert len(eval_jobs) == 1, f"round {r.index}: {len(eval_jobs)} eval jobs"
                n_eval = sum(1 for im in images if im.kind == "eval")  # the eval job stores its grid chunk by chunk
                assert sorted(im.kind for im in images).count("query") == 4
                assert n_eval == 4 if eval_jobs[0].status == "done" else 0 <= n_eval <= 4, (r.index, n_eval)
            else:
                assert not images and not eval_jobs  # images appear together with the 'labeling' status, or not at all
            for im in images:
                path = storage.resolve(data_dir, im.file_path)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == im.sha256 == path.stem
        stored = {(r.image_id, r.rater_id): r.score for r in s.query(Rating).join(Image).join(Round)
                  .filter(Round.experiment_id == experiment_id)}
        assert stored == rated, "ratings were lost or changed"
        now = utcnow()
        for j in jobs:
            assert j.status != "failed" and j.error is None, f"job {j.id} ({j.kind}) failed: {j.error}"
            if j.status == "running" and live_worker is not None:  # only the live worker holds jobs, within their lease
                assert j.lease_owner == live_worker and j.lease_expires_at > now, (j.id, j.lease_owner, j.lease_expires_at)
    for top in (storage.ADAPTERS, storage.REWARD):
        for final in (data_dir / top).glob(f"exp{experiment_id}/round_*"):
            verify(final)  # nothing partial ever sits under a final name
    return len(rounds)


def _fake_open_round(world, name: str, rater_ids: list[int]) -> int:
    """Another experiment with an open round of fake images for the rating writer (no job queued for the worker)."""
    with write_session(world.factory) as s:
        exp = repo.create_experiment(session=s, name=name, model_spec=str(world.model_dir), method="greedy", config={},
                                     budgets=[RATER_IMAGES], prompts=["a shape"])
        round_ = repo.create_round(session=s, experiment_id=exp.id)
        for i in range(RATER_IMAGES):
            digest = hashlib.sha256(f"fake {i}".encode()).hexdigest()
            repo.add_image(session=s, round_id=round_.id, prompt="a shape", seed=i, file_path=storage.image_path(digest),
                           sha256=digest, embedding=b"\0" * 16, embedding_dim=4)
        repo.open_round(session=s, round_id=round_.id)
        return round_.id


def _run_trials(world, tmp_path: Path, trials: int, seed: int) -> None:
    rng = random.Random(seed)
    eid = world.create_experiment("faults")
    rater_ids = world.raters(2)
    writer_raters = world.raters(RATER_PEOPLE, prefix="writer")
    writer_round = _fake_open_round(world, "ratings-elsewhere", writer_raters)
    stop_file = tmp_path / "stop-writer"
    # pause 5 ms: a busy crowd of raters, not a benchmark; leave the CPU to the worker
    writer = subprocess.Popen([sys.executable, "-m", "app.testing", "write-ratings", world.settings.db_url, str(writer_round),
                               ",".join(map(str, writer_raters)), str(stop_file), "0.005"],
                              cwd=REPO, env=_env(world), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    rated: dict[tuple[int, int], int] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = WorkerProcess(world, "w0", logs)
    mid_job = 0
    t0 = time.monotonic()
    try:
        for trial in range(trials):
            _advance(world, eid, rater_ids, rated)
            job_id, kind = _wait(f"trial {trial}: a running job",
                                 lambda w=worker: next(((j[0], j[1]) for j in _jobs(world, eid)
                                                        if j[2] == "running" and j[3] == w.worker_id), None), 120, worker)
            rng_delay = rng.uniform(0, 1.1 * _job_seconds(logs, kind))  # anywhere in the job, now and then just after
            time.sleep(rng_delay)
            worker.kill()
            interrupted = [j[0] for j in _jobs(world, eid) if j[2] == "running" and j[3] == worker.worker_id]
            mid_job += job_id in interrupted
            print(f"trial {trial} at {time.monotonic() - t0:.1f} s: killed {worker.worker_id} {rng_delay:.2f} s into "
                  f"{kind} job {job_id}; jobs interrupted: {interrupted}")
            _check_invariants(world, eid, rated)
            worker = WorkerProcess(world, f"w{trial + 1}", logs)
            for jid in {job_id, *interrupted}:  # the restarted worker takes the job over once its lease runs out
                _wait(f"job {jid} re-run", lambda jid=jid: any(j[0] == jid and j[2] == "done" for j in _jobs(world, eid)),
                      120, worker)
            _check_invariants(world, eid, rated, live_worker=worker.worker_id)
        # let the worker finish what is queued, then check the quiet state
        _wait("an idle queue", lambda: all(j[2] == "done" for j in _jobs(world, eid)), 120, worker)
        assert worker.stop() == 0  # SIGTERM while idle: a clean exit
        published = _check_invariants(world, eid, rated)
        assert published >= 2 and mid_job >= 1, (published, mid_job)
        with read_session(world.factory) as s:  # every final adapter directory belongs to a published round
            paths = {r.adapter_path for r in s.query(Round).filter_by(experiment_id=eid) if r.adapter_path}
        assert {storage.relative(world.settings.data_dir, p) for p in
                (world.settings.data_dir / storage.ADAPTERS).glob(f"exp{eid}/round_*")} == paths
    finally:
        if worker.alive():
            worker.kill()
        stop_file.touch()
        out, err = writer.communicate(timeout=60)
    # the concurrent rating writer: no error (in particular no 'database is locked'), every acknowledged rating kept
    assert writer.returncode == 0 and "database is locked" not in err, err[-3000:]
    acknowledged = {}
    for line in out.splitlines():
        image_id, rater_id, score = map(int, line.split())
        acknowledged[(image_id, rater_id)] = score
    assert len(out.splitlines()) > 20, "the rating writer hardly ran"
    with read_session(world.factory) as s:
        stored = {(r.image_id, r.rater_id): r.score for r in s.query(Rating).join(Image).filter(Image.round_id == writer_round)}
    assert stored == acknowledged
    for log in logs.iterdir():
        text = log.read_text()
        assert "database is locked" not in text and "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"
    print(f"{trials} trials, {mid_job} kills mid-job, {len(out.splitlines())} concurrent ratings acknowledged")


def test_worker_survives_kill_9_while_another_process_rates(worker_world, tmp_path):
    _run_trials(worker_world, tmp_path, trials=3, seed=int(os.environ.get("SEIKO_FAULT_SEED", "1")))


@pytest.mark.slow
def test_worker_survives_many_kill_9(worker_world, tmp_path):
    _run_trials(worker_world, tmp_path, trials=20, seed=int(os.environ.get("SEIKO_FAULT_SEED", "2")))
