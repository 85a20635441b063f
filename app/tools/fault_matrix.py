"""The fault matrix: kill -9 the worker at every phase of its jobs, kill -9 the web server in the middle of a
burst of ratings, and fill the disk during an adapter save; after every fault, check that nothing was lost,
nothing was published twice and nothing is stuck.

    python -m app.tools.fault_matrix --json matrix.json            # the full matrix (RELIABILITY.md)
    python -m app.tools.fault_matrix --phases claim,publish --kills 1 --server-trials 1 --disk-trials 0

Worker faults use the worker's fault-injection hook (``SEIKO_FAULT_PHASE``, see app/worker.py): the worker
SIGKILLs itself at the named point of each job's first attempt, is restarted, and the re-run (attempt 2)
must publish exactly once. One experiment per phase is driven round after round (rate every image,
close the round) until the phase has been killed ``--kills`` times, while a second process writes ratings to
another experiment the whole time. After every kill, and again after the restarted worker has re-run the
job, the checks in :func:`check_worker_invariants` run.

Server faults: ``python -m app serve`` with accounts; several raters, each with its own gradio_client
Client, submit ratings as fast as they can; the server gets SIGKILL mid-burst and is restarted. Every
rating a client got an answer for must be in the database with its score; no (image, rater) pair twice.

Disk full: the data dir is a small tmpfs (root only), filled so that the reward model fits but the adapter
does not. The train job must fail cleanly (error recorded, nothing under a final name, no temporary files
left), the previous round's adapter must still verify and load, and once space is freed the job publishes once.

tests/reliability/test_rel_faults.py runs a short version of this same code in the default suite.
Exit status 0 when every check held, 1 otherwise (each failure is printed with its traceback).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from app import auth, services, storage
from app.tools.harness import (
    PASSWORD,
    Lab,
    ServerProc,
    WorkerProc,
    build_model,
    check_fresh_workdir,
    create_experiment,
    fake_open_round,
    job_rows,
    log,
    make_lab,
    make_raters,
    rate_and_close,
    wait_for,
)
from db import jobs as job_queue
from db import repo
from db.engine import read_session
from db.models import Checkpoint, Image, Job, Rating, Round, utcnow
from seiko_core.atomic import write_text
from seiko_core.checkpoint import MANIFEST, sha256_file, verify

PHASES = ("claim", "snapshot", "reward_fit", "finetune", "save", "publish", "sample_query", "publish_query", "sample_eval",
          "eval_chunk")
TRAIN_ONLY = {"snapshot", "reward_fit", "finetune", "save"}
GENERATE_ONLY = {"sample_query", "publish_query"}
EVAL_ONLY = {"sample_eval", "eval_chunk"}  # the eval job's (the dashboard's eval grid, queued by the generate job)


# ---------------------------------------------------------------------------------------------
# the invariants after a worker fault
# ---------------------------------------------------------------------------------------------


def check_worker_invariants(lab: Lab, eid: int, rated: dict[tuple[int, int], int], *, live_worker: str | None = None,
                            errors_allowed: bool = False) -> int:
    """Everything that must hold whatever a kill interrupted; returns the number of rounds.

    Rounds contiguous; one generate job per round, at most one train job, one eval job once the round is past
    'generating' (none before); every round after 0 published exactly once (one checkpoint) with an adapter that
    verifies against the recorded manifest hash; a round's query images all there or none, its eval grid complete
    once its eval job is done (filled chunk by chunk before), all whole and content-addressed; the ratings exactly
    those acknowledged; no job
    failed (nor recorded an error, unless ``errors_allowed``: a queued retry after a clean failure); with
    ``live_worker``, every running job is held by it within its lease (none stuck past a lease);
    nothing partial under a final adapter or reward-model name.
    """
    from app.services import experiment_config, round_budget

    data_dir = lab.data_dir
    with read_session(lab.factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=eid)
        cfg = experiment_config(experiment)
        n_eval = len(dict.fromkeys(cfg.eval_prompts)) * len(dict.fromkeys(cfg.eval_seeds))
        rounds = s.query(Round).filter_by(experiment_id=eid).order_by(Round.index).all()
        assert [r.index for r in rounds] == list(range(len(rounds))), "rounds are not contiguous"
        jobs = s.query(Job).filter_by(experiment_id=eid).all()
        for r in rounds:
            n_gen = sum(1 for j in jobs if j.kind == "generate" and j.round_id == r.id)
            n_train = sum(1 for j in jobs if j.kind == "train" and j.round_id == r.id)
            n_evaljobs = sum(1 for j in jobs if j.kind == "eval" and j.round_id == r.id)
            assert n_gen == 1, f"round {r.index} has {n_gen} generate jobs"
            assert n_train <= 1, f"round {r.index} has {n_train} train jobs"
            # the generate job queues the eval job in the transaction that opens the round, exactly once
            assert n_evaljobs == (0 if r.status == "generating" else 1), f"round {r.index} ({r.status}) has {n_evaljobs} eval jobs"
            checkpoints = s.query(Checkpoint).filter_by(round_id=r.id).all()
            if r.index == 0:
                assert not checkpoints and r.adapter_path is None
            else:
                assert len(checkpoints) == 1, f"round {r.index} was published {len(checkpoints)} times"
                adapter_dir = storage.resolve(data_dir, r.adapter_path)
                verify(adapter_dir)
                assert sha256_file(adapter_dir / MANIFEST) == checkpoints[0].manifest_sha256, f"round {r.index}: manifest hash"
            images = s.query(Image).filter_by(round_id=r.id).all()
            if r.status == "generating":
                assert not images, f"round {r.index} is generating but has {len(images)} image rows"
            else:
                # the query images open the round; the eval job adds the eval grid chunk by chunk afterwards
                kinds = Counter(im.kind for im in images)
                eval_done = s.query(Job).filter_by(round_id=r.id, kind="eval", status="done").count() > 0
                allowed = [n_eval] if eval_done else list(range(n_eval + 1))
                assert kinds["query"] == round_budget(cfg, r.index) and kinds["eval"] in allowed \
                    and set(kinds) <= {"query", "eval"}, (r.index, kinds)
            for im in images:
                path = storage.resolve(data_dir, im.file_path)
                assert hashlib.sha256(path.read_bytes()).hexdigest() == im.sha256 == path.stem, f"image {im.id} damaged"
        stored = {(r.image_id, r.rater_id): r.score for r in s.query(Rating).join(Image).join(Round)
                  .filter(Round.experiment_id == eid)}
        assert stored == rated, "ratings were lost or changed"
        now = utcnow()
        for j in jobs:
            assert j.status != "failed", f"job {j.id} ({j.kind}) failed: {j.error}"
            assert errors_allowed or j.error is None, f"job {j.id} ({j.kind}) recorded an error: {j.error}"
            if j.status == "running" and live_worker is not None:
                assert j.lease_owner == live_worker and j.lease_expires_at > now, \
                    f"job {j.id} is stuck: running, held by {j.lease_owner!r} until {j.lease_expires_at}"
    for top in (storage.ADAPTERS, storage.REWARD):
        for final in (data_dir / top).glob(f"exp{eid}/round_*"):
            verify(final)
    return len(rounds)


# ---------------------------------------------------------------------------------------------
# processes: the worker, the rating writer, the web server
# ---------------------------------------------------------------------------------------------


class RatingWriter:
    """A separate process writing ratings to another experiment while the faults happen."""

    def __init__(self, lab: Lab, tag: str) -> None:
        self.lab = lab
        _, self.round_id, _ = fake_open_round(lab, f"writer-{tag}", 30)
        raters = make_raters(lab, 10, prefix=f"writer-{tag}")
        self.stop_file = lab.root / f"writer-{tag}.stop"
        self.proc = subprocess.Popen([sys.executable, "-m", "app.testing", "write-ratings", lab.db_url, str(self.round_id),
                                      ",".join(map(str, raters)), str(self.stop_file), "0.02"],
                                     cwd=lab.root, env=lab.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def finish(self) -> int:
        """Stop the writer; check it never failed and every rating it acknowledged is stored; returns how many."""
        self.stop_file.touch()
        out, err = self.proc.communicate(timeout=120)
        assert self.proc.returncode == 0 and "database is locked" not in err, f"the rating writer failed:\n{err[-3000:]}"
        acknowledged = {}
        for line in out.splitlines():
            image_id, rater_id, score = map(int, line.split())
            acknowledged[(image_id, rater_id)] = score
        with read_session(self.lab.factory) as s:
            stored = {(r.image_id, r.rater_id): r.score for r in s.query(Rating).join(Image).filter(Image.round_id == self.round_id)}
        assert stored == acknowledged, "the concurrent writer's acknowledged ratings were lost or changed"
        return len(out.splitlines())



# ---------------------------------------------------------------------------------------------
# 1. kill -9 the worker at one phase, again and again
# ---------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    phase: str
    kills: int = 0
    kills_by_job: dict[str, int] = field(default_factory=dict)
    rounds_published: int = 0
    ratings_checked: int = 0
    seconds: float = 0.0
    error: str | None = None


def run_phase(lab: Lab, phase: str, kills: int, log_dir: Path, *, timeout: float = 600) -> PhaseResult:
    """Drive a fresh experiment round after round with a worker that dies at ``phase`` (one fault point, or several
    joined by commas), until it died ``kills`` times; the worker started after the last kill runs without faults."""
    points = phase.split(",")
    unknown = [p for p in points if p not in PHASES]
    if unknown:
        raise ValueError(f"unknown fault point(s) {unknown}; choose from {list(PHASES)}")
    tag = phase.replace(",", "+")
    result = PhaseResult(phase)
    t0 = time.monotonic()
    eid = create_experiment(lab, f"faults-{tag}")
    rater_ids = make_raters(lab, 2, prefix=f"{tag}-rater")
    rated: dict[tuple[int, int], int] = {}
    by_job: Counter[str] = Counter()
    n_workers = 0

    def start() -> WorkerProc:
        nonlocal n_workers
        n_workers += 1
        return WorkerProc(lab, f"{tag}-w{n_workers}", log_dir, fault=phase if result.kills < kills else None)

    def record_kill(w: WorkerProc) -> int:
        """The worker ``w`` died at the fault point: one kill, of its one running job (its first attempt); returns its id."""
        rc, text = w.proc.returncode, w.tail()
        point = re.findall(r"killing this worker at '(\w+)'", text)
        assert rc == -signal.SIGKILL and point, f"worker {w.worker_id} exited with {rc}, not by the injected SIGKILL:\n{text}"
        interrupted = [j for j in job_rows(lab, eid) if j["status"] == "running" and j["owner"] == w.worker_id]
        assert len(interrupted) == 1, f"expected one interrupted job, found {interrupted}"
        job = interrupted[0]
        assert job["attempts"] == 1, job
        result.kills += 1
        by_job[f"{job['kind']}@{point[-1]}"] += 1
        check_worker_invariants(lab, eid, rated)
        return job["id"]

    worker = start()
    finished = False
    try:
        while result.kills < kills:
            rate_and_close(lab, eid, rater_ids, rated)

            def died_or_idle(w: WorkerProc = worker) -> str | None:
                if not w.alive():
                    return "died"
                return "idle" if all(j["status"] == "done" for j in job_rows(lab, eid)) else None

            try:
                outcome = wait_for(f"{phase}: the worker to die or go idle", died_or_idle, timeout)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{worker.tail()}") from None
            if outcome == "idle":
                continue  # this job type never reaches the point (e.g. finetune in a generate job): next round
            pending = [record_kill(worker)]
            worker = start()
            # Every interrupted job is re-run to done. The restarted worker still injects faults until the last kill, and
            # it may claim another job first (a generate or train job goes before an eval job whose lease expired) and die
            # at the same point: that is one more kill, its job re-run too.
            while True:
                def rerun_or_died(w: WorkerProc = worker, ids: tuple[int, ...] = tuple(pending)) -> str | None:
                    if set(ids) <= {j["id"] for j in job_rows(lab, eid) if j["status"] == "done"}:
                        return "re-run"
                    return None if w.alive() else "died"

                try:
                    outcome = wait_for(f"{phase}: job(s) {pending} re-run to done", rerun_or_died, timeout)
                except AssertionError as exc:
                    raise AssertionError(f"{exc}\n{worker.tail()}") from None
                if outcome == "re-run":
                    break
                pending.append(record_kill(worker))
                worker = start()
            check_worker_invariants(lab, eid, rated, live_worker=worker.worker_id)
        try:
            wait_for(f"{phase}: an idle queue", lambda: all(j["status"] == "done" for j in job_rows(lab, eid)), timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{worker.tail()}") from None
        rc = worker.stop()
        assert rc == 0, f"SIGTERM while idle should exit 0, got {rc}:\n{worker.tail()}"
        n_rounds = check_worker_invariants(lab, eid, rated)
        with read_session(lab.factory) as s:  # every final adapter directory belongs to a published round
            paths = {r.adapter_path for r in s.query(Round).filter_by(experiment_id=eid) if r.adapter_path}
        on_disk = {storage.relative(lab.data_dir, p) for p in (lab.data_dir / storage.ADAPTERS).glob(f"exp{eid}/round_*")}
        assert on_disk == paths, f"adapter directories {sorted(on_disk - paths)} were never published"
        result.rounds_published = n_rounds - 1
        result.ratings_checked = len(rated)
        finished = True
    finally:
        if worker.alive():
            worker.kill()
        if not finished:
            # a failed phase leaves jobs behind, some at their first attempt: paused, so that the next phase's worker
            # does not claim them, die at its fault point in this experiment's job and find none of its own interrupted
            services.set_paused(factory=lab.factory, experiment_id=eid, paused=True)
        result.kills_by_job = dict(by_job)
        result.seconds = round(time.monotonic() - t0, 1)
    for path in log_dir.glob(f"{tag}-w*.log"):
        text = path.read_text(errors="replace")
        assert "database is locked" not in text and "Traceback" not in text, f"{path.name}:\n{text[-3000:]}"
    return result


# ---------------------------------------------------------------------------------------------
# 2. kill -9 the web server during a burst of ratings
# ---------------------------------------------------------------------------------------------


def expected_score(image_id: int, rater_id: int) -> int:
    return 1 + (image_id * 7 + rater_id * 3) % 10


@dataclass
class BurstRater:
    """One rater with its own gradio_client Client, rating its images in order until told to stop or the server dies."""

    name: str
    rater_id: int
    images: list[int]
    acked: dict[int, int] = field(default_factory=dict)  # image id -> the score the server acknowledged
    attempted: set[int] = field(default_factory=set)
    position: int = 0
    failure: str | None = None

    def run(self, url: str, stop: threading.Event, timeout: float = 60) -> None:
        from app.tools import rater

        try:
            # the rater tool's sign-in: a 503 of the guard's sign-in cap (4 checked at once) is tried again after its
            # Retry-After; gradio_client's own sign-in gave up at once ("Could not login"), failing the server trials
            # against a healthy server (nineteenth review)
            client, _ = rater.connect(url, self.name, PASSWORD, "gradio_client")
        except Exception as exc:  # the server died before this rater signed in: nothing was attempted
            self.failure = f"sign-in: {type(exc).__name__}: {exc}"
            return
        try:
            while not stop.is_set() and self.position < len(self.images):
                image_id = self.images[self.position]
                score = expected_score(image_id, self.rater_id)
                self.attempted.add(image_id)
                try:
                    out = client.submit(image_id=image_id, score=score, api_name="/submit_rating").result(timeout=timeout)
                except Exception as exc:  # the server was killed under this call: unacknowledged, stop here
                    self.failure = f"{type(exc).__name__}: {exc}"
                    return
                assert out["image_id"] == image_id and out["score"] == score, out
                self.acked[image_id] = score
                self.position += 1
        finally:
            client.close()


def check_burst(lab: Lab, round_id: int, raters: list[BurstRater]) -> dict[str, int]:
    """Every acknowledged rating stored with its score; nothing stored that was not attempted; no pair twice."""
    from sqlalchemy import func, select

    by_id = {r.rater_id: r for r in raters}
    with read_session(lab.factory) as s:
        rows = s.execute(select(Rating.image_id, Rating.rater_id, Rating.score).join(Image)
                         .where(Image.round_id == round_id)).all()
        dupes = s.execute(select(Rating.image_id, Rating.rater_id, func.count()).join(Image).where(Image.round_id == round_id)
                          .group_by(Rating.image_id, Rating.rater_id).having(func.count() > 1)).all()
    assert not dupes, f"duplicated ratings: {dupes[:5]}"
    stored = {(image_id, rater_id): score for image_id, rater_id, score in rows}
    acked = {(image_id, r.rater_id): score for r in raters for image_id, score in r.acked.items()}
    missing = {k: v for k, v in acked.items() if stored.get(k) != v}
    assert not missing, f"{len(missing)} acknowledged ratings are missing or changed: {sorted(missing.items())[:5]}"
    for (image_id, rater_id), score in stored.items():
        rater = by_id[rater_id]
        assert image_id in rater.attempted, f"rating ({image_id}, {rater_id}) was stored but never sent"
        assert score == expected_score(image_id, rater_id), (image_id, rater_id, score)
    return {"acknowledged": len(acked), "stored": len(stored), "stored_not_acknowledged": len(stored) - len(acked)}


@dataclass
class ServerResult:
    trials: int = 0
    acknowledged: int = 0
    stored_not_acknowledged: int = 0
    interrupted_calls: int = 0
    seconds: float = 0.0
    error: str | None = None


def run_server_kills(lab: Lab, trials: int, log_dir: Path, *, n_raters: int = 6, n_images: int = 300,
                     seed: int = 0) -> ServerResult:
    """``trials`` times: start the server, let ``n_raters`` clients rate, SIGKILL the server mid-burst, check the database."""
    rng = random.Random(seed)
    result = ServerResult()
    t0 = time.monotonic()
    _, round_id, image_ids = fake_open_round(lab, "burst", n_images, overlap=n_raters, real_pngs=True)
    names = [f"burst-{i}" for i in range(n_raters)]
    raters = [BurstRater(name, auth.add_user(lab.factory, name=name, role="rater", password=PASSWORD), [])
              for name in names]
    for i, r in enumerate(raters):  # each rater its own order of the images
        r.images = image_ids[i * 37 % n_images:] + image_ids[:i * 37 % n_images]
    try:
        for trial in range(trials):
            server = ServerProc(lab, log_dir, f"server-{trial}")
            try:
                server.wait_ready()
                stop = threading.Event()
                for r in raters:
                    r.failure = None
                threads = [threading.Thread(target=r.run, args=(server.url, stop), daemon=True) for r in raters]
                before = sum(len(r.acked) for r in raters)
                for t in threads:
                    t.start()
                target = before + rng.randint(10, 40) * n_raters // 2  # kill after a random number of acknowledged ratings
                wait_for("the burst to get going", lambda target=target, threads=threads: sum(len(r.acked) for r in raters)
                         >= target or all(not t.is_alive() for t in threads), 180, poll=0.01)
                time.sleep(rng.uniform(0, 0.2))
                server.kill()
                for t in threads:
                    t.join(timeout=120)
                    assert not t.is_alive(), "a rater hung after the server was killed"
                result.interrupted_calls += sum(1 for r in raters if r.failure and not r.failure.startswith("sign-in"))
                counts = check_burst(lab, round_id, raters)
                log(f"server trial {trial}: killed after {counts['acknowledged'] - before} acknowledged ratings this trial; "
                    f"{counts}")
                # A call cut off by the kill stays unacknowledged (it may or may not have committed); the rater sends it
                # again after the restart, where it must come back as a new rating or an edit, never a second row.
            finally:
                server.kill()
            result.trials += 1
        # after the last kill: restart once more and let every rater finish a few more ratings
        server = ServerProc(lab, log_dir, "server-final")
        try:
            server.wait_ready()
            stop = threading.Event()
            for r in raters:
                r.images = r.images[:r.position + 5]
                r.failure = None
            threads = [threading.Thread(target=r.run, args=(server.url, stop), daemon=True) for r in raters]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
            failures = [r.failure for r in raters if r.failure]
            assert not failures, f"raters failed against a healthy server: {failures}"
            counts = check_burst(lab, round_id, raters)
            assert server.stop() == 0
        finally:
            server.kill()
        result.acknowledged = counts["acknowledged"]
        result.stored_not_acknowledged = counts["stored_not_acknowledged"]
        for path in log_dir.glob("server-*.log"):
            text = path.read_text(errors="replace")
            assert "database is locked" not in text, f"{path.name}:\n{text[-3000:]}"
    finally:
        result.seconds = round(time.monotonic() - t0, 1)
    return result


# ---------------------------------------------------------------------------------------------
# 3. a full disk during an adapter save
# ---------------------------------------------------------------------------------------------


class CannotMount(RuntimeError):
    """tmpfs could not be mounted (not root, or no mount permission in this container)."""


@contextlib.contextmanager
def small_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CannotMount(f"cannot mount a tmpfs at {path} (needs root): {proc.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fill_to(path: Path, leave_free: int) -> Path:
    """Write a filler file so that only about ``leave_free`` bytes stay free on ``path``'s filesystem."""
    st = os.statvfs(path)
    avail = st.f_bavail * st.f_frsize
    filler = path / "filler.bin"
    size = max(0, avail - leave_free)
    with open(filler, "wb") as f:
        block = b"\0" * (1 << 20)
        while size > 0:
            n = f.write(block[:min(size, len(block))])
            size -= n
    return filler


@dataclass
class DiskResult:
    trials: int = 0
    failed_cleanly: int = 0
    errors_seen: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None


def run_disk_full(root: Path, model_dir: Path, trials: int, *, db_template: Path | None = None) -> DiskResult:
    """Per trial: a data dir on a 64 MiB tmpfs; rounds 0 and 1 trained normally; then the disk is filled so the round-2
    adapter cannot be saved. The job must fail cleanly and round 1 still verify and load; after freeing space it publishes once."""
    import torch

    from app.worker import Worker
    from seiko_core import lora
    from seiko_core.models import load_model

    result = DiskResult()
    t0 = time.monotonic()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for trial in range(trials):
            mount = root / f"tmpfs-{trial}"
            with small_tmpfs(mount, 64 << 20):
                lab = make_lab(root / f"disk-{trial}", model_dir, data_dir=mount / "data", db_template=db_template)
                worker = Worker(lab.settings, f"disk-w{trial}", lease_s=30, poll_s=0.05, device="cpu")
                try:
                    eid = create_experiment(lab, "disk")
                    raters = make_raters(lab, 2, prefix="disk")
                    rated: dict[tuple[int, int], int] = {}
                    for _ in range(3):  # generate 0, train 0 -> 1, generate 1
                        rate_and_close(lab, eid, raters, rated)
                        assert worker.run_once() and worker.last_error is None, worker.last_error
                    rate_and_close(lab, eid, raters, rated)  # round 1 closed: its train job (-> round 2) is queued
                    adapter1 = lab.data_dir / storage.adapter_path(eid, 1)
                    reward1 = lab.data_dir / storage.reward_path(eid, 1)
                    manifest1 = sha256_file(adapter1 / MANIFEST)
                    # room for the reward model (same size as round 1's) and half the adapter
                    filler = fill_to(mount, dir_bytes(reward1) + 8192 + dir_bytes(adapter1) // 2)
                    assert worker.run_once() is True
                    error = worker.last_error or ""
                    assert "No space left on device" in error or "Errno 28" in error, f"expected ENOSPC, got {error!r}"
                    result.errors_seen.append(error[:200])
                    with read_session(lab.factory) as s:
                        # (rounds 0 and 1's eval jobs wait behind the train job: not run here)
                        (job,) = [j for j in job_queue.list_jobs(session=s, experiment_id=eid)
                                  if j.status != "done" and j.kind != "eval"]
                        assert job.kind == "train" and job.status == "queued" and job.attempts == 1 and job.error == error
                        assert [r.index for r in repo.list_rounds(session=s, experiment_id=eid)] == [0, 1]
                        assert repo.get_round_by_index(session=s, experiment_id=eid, index=1).status == "training"
                    assert not (lab.data_dir / storage.adapter_path(eid, 2)).exists(), "a partial adapter sits under its final name"
                    leftovers = [p for p in (lab.data_dir / storage.ADAPTERS / f"exp{eid}").iterdir() if p.name.startswith(".tmp-")]
                    assert not leftovers, f"temporary files left behind: {leftovers}"
                    verify(adapter1)
                    assert sha256_file(adapter1 / MANIFEST) == manifest1
                    parts = load_model(str(model_dir), device="cpu")  # the previous round still loads, on a fresh model
                    lora.load_adapter(parts, adapter1, lora.round_adapter_name(1))
                    del parts
                    check_worker_invariants(lab, eid, rated, live_worker=worker.worker_id, errors_allowed=True)
                    result.failed_cleanly += 1
                    filler.unlink()  # space again: the retry publishes round 2 exactly once
                    assert worker.run_once() and worker.last_error is None, worker.last_error
                    assert check_worker_invariants(lab, eid, rated, errors_allowed=True) == 3
                finally:
                    worker.close()
                    lab.close()
            result.trials += 1
    finally:
        torch.set_num_threads(threads)
        result.seconds = round(time.monotonic() - t0, 1)
    return result


# ---------------------------------------------------------------------------------------------
# the command
# ---------------------------------------------------------------------------------------------


def attempt(run: Callable[[], Any], failure: Callable[..., Any]) -> tuple[Any, bool]:
    """(run(), True), or, if it raises, the traceback printed and (failure(error=one sentence), False)."""
    try:
        return run(), True
    except Exception as exc:
        traceback.print_exc()
        return failure(error=f"{type(exc).__name__}: {exc}"), False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated worker fault points (default: all of {','.join(PHASES)})")
    parser.add_argument("--kills", type=int, default=10, help="worker kills per phase (default 10)")
    parser.add_argument("--server-trials", type=int, default=10, help="server kills during a rating burst (default 10)")
    parser.add_argument("--disk-trials", type=int, default=3, help="full-disk adapter saves (default 3; needs root for tmpfs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep everything here, a new or empty folder (default: a temporary "
                        "directory, removed)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    check_fresh_workdir(parser, args.workdir)
    phases = [p for p in args.phases.split(",") if p]

    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fault-matrix-")))
        root.mkdir(parents=True, exist_ok=True)
        logs = root / "logs"
        logs.mkdir(exist_ok=True)
        log(f"building the tiny model in {root / 'model'}")
        model_dir = build_model(root / "model")
        results: dict[str, Any] = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "phases": [],
                                   "argv": sys.argv}
        failed = False
        lab = make_lab(root / "lab", model_dir)
        writer = RatingWriter(lab, "matrix")
        try:
            for phase in phases:
                log(f"worker phase {phase}: {args.kills} kills")
                r, ok = attempt(partial(run_phase, lab, phase, args.kills, logs), partial(PhaseResult, phase))
                failed |= not ok
                log(f"  {r}")
                results["phases"].append(r.__dict__)
        finally:
            try:
                results["concurrent_writer_ratings"] = writer.finish()
            except Exception as exc:
                failed = True
                results["concurrent_writer_error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        if args.server_trials:
            log(f"server kills: {args.server_trials}")
            s, ok = attempt(partial(run_server_kills, lab, args.server_trials, logs, seed=args.seed), ServerResult)
            failed |= not ok
            log(f"  {s}")
            results["server"] = s.__dict__
        lab.close()
        if args.disk_trials:
            log(f"full disk: {args.disk_trials} trials")
            d, ok = attempt(partial(run_disk_full, root / "disk", model_dir, args.disk_trials), DiskResult)
            failed |= not ok
            log(f"  {d}")
            results["disk_full"] = d.__dict__
        results["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        results["ok"] = not failed
        if args.json:
            write_text(args.json, json.dumps(results, indent=2, default=str))
        print(json.dumps(results, indent=2, default=str))
    return 1 if failed else 0


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "loadavg_at_start": [round(x, 2) for x in load], "python": sys.version.split()[0],
            "platform": sys.platform}


if __name__ == "__main__":
    sys.exit(main())
