"""``python -m app worker --processes 2`` (2 CPU processes, gloo) trains a round through the job queue.

A rank is killed with SIGKILL in the middle of the fine-tuning on the job's first attempt; the supervisor hands the
job back and starts a fresh group, which trains it again. Checked: the round is published once (one checkpoint),
both ranks end with the same adapter (their logged sha256) and it is the published one, and it equals (within
Adam's float tolerance) what ONE process trains with the same global batch.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from app import services, storage
from app.services import experiment_config
from app.train_dist import adapter_digest, split_batch
from app.worker import derive_seed
from db import repo
from db.engine import read_session, write_session
from db.models import Job
from seiko_core import lora
from seiko_core.config import from_dict, to_dict
from seiko_core.loop import train_round
from seiko_core.models import load_model
from seiko_core.presets import shapes

REPO = Path(__file__).resolve().parents[2]


def test_batch_split_over_processes():
    cfg = shapes()
    cfg.finetune.batch_size = 4
    assert split_batch(cfg, 2).finetune.batch_size == 2 and cfg.finetune.batch_size == 4  # a copy
    with pytest.raises(ValueError, match="batch_size 4 does not split over 3 processes"):
        split_batch(cfg, 3)


def test_a_plain_worker_refuses_a_launcher_and_names_processes(worker_world, monkeypatch):
    from app.worker import WorkerRefused

    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch --multi_gpu / torchrun set
    worker = worker_world.worker()
    try:
        with pytest.raises(WorkerRefused, match=r"python -m app worker --processes N"):
            worker.start()
    finally:
        worker.close()


def _lora(unet, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n and f".{adapter}." in n}


@pytest.mark.parametrize("fault", [
    pytest.param("rank1:finetune", id="kill-rank-1"),
    pytest.param("finetune", id="kill-rank-0", marks=pytest.mark.slow),
])
def test_two_processes_train_a_round_through_the_queue(worker_world, tmp_path, fault):
    w = worker_world
    eid = w.create_experiment("data-parallel")
    with write_session(w.factory) as s:  # a global batch of 2 (one trajectory per rank), 2 optimiser steps
        experiment = repo.get_experiment(session=s, experiment_id=eid)
        cfg = from_dict({k: v for k, v in experiment.config.items() if k != "app"})
        cfg.finetune.batch_size, cfg.finetune.trajectories_per_epoch, cfg.finetune.truncation = 2, 4, "per_step"
        cfg.finetune.anchor_balance = 0.0  # a denoising anchor weighs each rank's own norms: close to one, not equal
        experiment.config = {**experiment.config, "finetune": to_dict(cfg)["finetune"]}
    worker = w.worker()
    try:
        assert worker.run_once() and worker.last_error is None  # round 0's images, in this process
    finally:
        worker.close()
    w.rate_open_round(eid, w.raters(2), lambda image_id, rater_id: 1 + (image_id * 3 + rater_id) % 10)
    services.close_round(factory=w.factory, experiment_id=eid)

    log_path = tmp_path / "group.log"
    env = {**os.environ, "SEIKO_DB_URL": w.settings.db_url, "SEIKO_DATA_DIR": str(w.settings.data_dir),
           "SEIKO_MODEL": str(w.model_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false", "SEIKO_FAULT_PHASE": fault}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "app", "worker", "--processes", "2", "--worker-id", "dp",
                                 "--lease-s", "5", "--poll-s", "0.2", "--nice", "0"],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            with read_session(w.factory) as s:
                rounds = repo.list_rounds(session=s, experiment_id=eid)
            if len(rounds) == 2 or proc.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert len(rounds) == 2, f"round 1 was not published:\n{log_path.read_text(errors='replace')[-5000:]}"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")

    # the kill, the hand-back and the fresh group
    killed = "rank 1" if fault.startswith("rank1") else "rank 0"
    assert f"{killed} of worker 'dp' was killed by signal 9" in text, text[-5000:]
    if killed == "rank 0":  # the follower, inside a collective, is told why and leaves (fifth review)
        assert "rank 1 of worker 'dp' stops: rank 0 was killed by signal 9" in text, text[-5000:]
    assert "starting a fresh group of 2 processes" in text
    with read_session(w.factory) as s:
        train_job = s.query(Job).filter_by(experiment_id=eid, kind="train").one()
        assert (train_job.status, train_job.attempts) == ("done", 2)
        round_1 = repo.get_round_by_index(session=s, experiment_id=eid, index=1)
        assert len(repo.list_checkpoints(session=s, round_id=round_1.id)) == 1  # published once
        assert round_1.metrics["train"]["finetune"]["processes"] == 2
        experiment = repo.get_experiment(session=s, experiment_id=eid)
        cfg = experiment_config(experiment)
        rows = repo.ratings_snapshot(session=s, experiment_id=eid, up_to_rating_id=train_job.payload.get("watermark"))
        adapter_rel = round_1.adapter_path

    # both ranks ended with the same adapter, and it is the one published
    digests = dict(re.findall(r"\[rank \d\] seiko\.worker\.group: rank (\d): adapter round_1 sha256 ([0-9a-f]{64})", text))
    assert set(digests) == {"0", "1"}, text[-5000:]
    assert digests["0"] == digests["1"]
    parts = load_model(str(w.model_dir), device="cpu")
    lora.load_adapter(parts, storage.resolve(w.settings.data_dir, adapter_rel), "round_1")
    assert adapter_digest(parts.unet, "round_1") == digests["0"]
    published = _lora(parts.unet, "round_1")

    # one process, the same global batch (2), the same inputs and seed
    embeddings = torch.from_numpy(np.stack([np.frombuffer(r.embedding, dtype="<f4") for r in rows]).astype(np.float32))
    scores = torch.tensor([r.mean_score for r in rows], dtype=torch.float32)
    alone = load_model(str(w.model_dir), device="cpu")
    outcome = train_round(alone, embeddings, scores, cfg, new_index=1, prev_adapter=None, seed=derive_seed(eid, 0, "train"))
    assert outcome.finetune.steps == 2 and outcome.finetune.metrics["trajectories"] == 4
    reference = _lora(alone.unet, outcome.adapter)
    assert set(reference) == set(published)
    for name, tensor in reference.items():
        # Adam divides by sqrt(v): float noise in a near-zero gradient moves a weight by up to ~lr
        torch.testing.assert_close(published[name], tensor, rtol=0, atol=0.03 * cfg.finetune.lr, msg=name)
    assert any(float(t.abs().max()) > 0 for n, t in published.items() if "lora_B" in n)  # it did train


def test_hand_back_finds_a_held_job_behind_ten_thousand_newer_ones(worker_world):
    """The supervisor hands back every job its ranks hold, not only those among the newest 10,000."""
    from datetime import timedelta

    from sqlalchemy import insert

    from app.train_dist import hand_back_jobs
    from db import jobs as job_queue
    from db.models import utcnow

    until = utcnow() + timedelta(hours=1)
    with write_session(worker_world.factory) as s:
        old = job_queue.enqueue_job(session=s, kind="eval")
        s.flush()
        old.status, old.lease_owner, old.lease_expires_at, old.attempts, old.claims = "running", "gpu-box", until, 1, 1
        s.execute(insert(Job), [{"kind": "eval", "status": "running", "payload": {}, "lease_owner": "other",
                                 "lease_expires_at": until, "attempts": 1} for _ in range(10_000)])
        old_id = old.id
    assert hand_back_jobs(worker_world.settings, "gpu-box", "rank 1 was killed") == [old_id]
    with read_session(worker_world.factory) as s:
        job = s.get(Job, old_id)
        assert (job.status, job.lease_owner, job.error) == ("queued", None, "rank 1 was killed")


def test_hand_back_does_not_fail_a_newer_claim_of_a_twin_with_the_same_id(worker_world, monkeypatch):
    """The supervisor read its jobs by worker id, then failed each by id: a twin with the same id (an explicit
    --worker-id given twice) that claimed one of them again in between had its claim failed. Found by review."""
    import contextlib
    from datetime import timedelta

    from app.train_dist import hand_back_jobs
    from db import engine as db_engine
    from db import jobs as job_queue
    from db.models import utcnow

    with write_session(worker_world.factory) as s:
        job = job_queue.enqueue_job(session=s, kind="eval")
        s.flush()
        job.status, job.lease_owner, job.lease_expires_at, job.attempts, job.claims = "running", "gpu-box", utcnow(), 1, 1
        job_id = job.id
    real_write_session = db_engine.write_session
    opened = []

    @contextlib.contextmanager
    def write_session_after_the_twins_claim(*args, **kwargs):
        opened.append(1)
        if len(opened) == 2:  # between the supervisor's read and its hand-back the lease ran out and the twin took the
            with real_write_session(*args, **kwargs) as s:  # job (attempt 2), in a transaction of its own
                taken = job_queue.claim_job(session=s, worker_id="gpu-box", lease_s=600,
                                            now=utcnow() + timedelta(minutes=1))
                assert (taken.id, taken.attempts) == (job_id, 2)
        with real_write_session(*args, **kwargs) as s:
            yield s

    monkeypatch.setattr(db_engine, "write_session", write_session_after_the_twins_claim)
    assert hand_back_jobs(worker_world.settings, "gpu-box", "rank 1 was killed") == []
    with read_session(worker_world.factory) as s:
        job = s.get(Job, job_id)
        assert (job.status, job.lease_owner, job.attempts, job.error) == ("running", "gpu-box", 2, None)


@pytest.mark.parametrize("once", [True, False])
def test_a_follower_that_leaves_first_on_rank_0s_stop_is_not_taken_for_a_crash(monkeypatch, tmp_path, once):
    """After rank 0 sends "stop" its followers leave with status 0, often before rank 0 does: the supervisor took the
    first rank it found ended for a crash, killed rank 0, handed the job back and (with --once) started group after
    group, then gave up with status 1. Found by review. Rank 0's status now decides."""
    import argparse
    from types import SimpleNamespace

    from app import train_dist

    script = "import os, time; r = int(os.environ['RANK']); time.sleep(0.8 if r == 0 else 0.1); raise SystemExit(0)"
    monkeypatch.setattr(train_dist, "rank_command", lambda args, worker_id: [sys.executable, "-c", script])
    handed = []
    monkeypatch.setattr(train_dist, "hand_back_jobs", lambda settings, worker_id, reason: handed.append(reason) or [])
    settings = SimpleNamespace(db_url="sqlite:///unused.db", data_dir=tmp_path, model="unused")
    args = argparse.Namespace(processes=2, once=once, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    assert train_dist.supervise(args, settings, "w") == 0
    assert handed == []


def test_a_follower_ignores_the_stop_signals_the_process_group_gets():
    """SIGTERM from a service manager (or Ctrl-C in a terminal) reaches every process of the group: a follower that
    died of it looked like a crash, and rank 0 was killed before it could hand its job back."""
    code = ("import os, signal, time; os.environ['RANK'] = '1'; from app import train_dist; "
            "train_dist._ignore_stop_signals(); os.kill(os.getpid(), signal.SIGTERM); "
            "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2); print('still here')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "still here" in out.stdout, out.stderr[-500:]


def test_a_batch_that_does_not_split_leaves_the_group_usable():
    """split_batch's refusal came after the group was marked broken, so a batch that cannot be split over the
    processes restarted the whole group (model reloads) on every attempt. Found by review."""
    from types import SimpleNamespace

    from app.train_dist import Group

    group = Group.__new__(Group)  # no process group: the refusal comes before anything is sent
    group.world, group.broken = 3, False
    group.send = lambda *a, **k: pytest.fail("nothing may be sent")
    cfg = shapes()
    cfg.finetune.batch_size = 4
    with pytest.raises(ValueError, match="does not split over 3 processes"):
        group.train(SimpleNamespace(), None, "m", None, None, None, cfg, new_index=1, prev_adapter=None, seed=0,
                    on_progress=None, attempt=1)
    assert group.broken is False


def _fake_rank_0(monkeypatch, run_once, handlers: dict | None = None) -> list:
    """run_rank as rank 0 with a stand-in group and a stand-in worker whose run_once_outlasting_outages is
    ``run_once``; returns the list that records each stop_followers call. The signal handlers run_rank installs are
    recorded in ``handlers`` (signal number: handler), not installed in the test process."""
    import signal
    import threading

    from app import train_dist
    from app import worker as worker_mod

    stopped = []

    class FakeGroup:
        rank, broken, device = 0, False, None

        def __init__(self, timeout_s: float) -> None:
            assert timeout_s == 120  # the args' --group-timeout

        def stop_followers(self):
            stopped.append(True)

    class FakeWorker:
        def __init__(self, *args, **kwargs):
            self._stopping, self.last_error, self.poll_s, self.current_job = threading.Event(), None, 0, None
            self.current_run = None  # what app.worker.Watchdog watches

        def start(self):
            pass

        def run_once_outlasting_outages(self):
            return run_once()

        def interrupt_for_signal(self, signum, frame=None):
            pass

        def close(self):
            pass

    installed = {} if handlers is None else handlers
    monkeypatch.setattr(signal, "signal", lambda signum, handler: installed.__setitem__(signum, handler))
    monkeypatch.setattr(train_dist, "_die_with_parent", lambda: None)
    monkeypatch.setattr(train_dist, "Group", FakeGroup)
    monkeypatch.setattr(worker_mod, "Worker", FakeWorker)
    monkeypatch.setenv("RANK", "0")
    return stopped


def test_rank_0_with_once_fails_when_the_database_was_out(monkeypatch, tmp_path):
    """With --once, rank 0 exited 0 when its one try met a database outage (waited for, no job run): a scheduler took
    that for a job done (found by review). An outage under --once is a failure (1); a try with no job is still 0."""
    import argparse

    from app import train_dist

    outcomes = []
    _fake_rank_0(monkeypatch, lambda: outcomes.pop(0))
    args = argparse.Namespace(processes=2, once=True, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    outcomes[:] = [None]
    assert train_dist.run_rank(args, None, "w") == 1
    outcomes[:] = [False]
    assert train_dist.run_rank(args, None, "w") == 0


def test_with_once_a_group_that_ends_badly_is_not_started_again(monkeypatch, tmp_path):
    """Under --once, a rank 0 slower than the grace after its followers left (or any rank that failed) had the
    supervisor start a fresh group, and another, until it gave up (found by review): --once runs one group; its job is
    handed back and the status says it failed."""
    import argparse

    from app import train_dist

    starts, handed, settings = _fake_group(
        monkeypatch, tmp_path, "import time; r = int(os.environ['RANK']); time.sleep(3 if r == 0 else 0.1); raise SystemExit(0)")
    monkeypatch.setattr(train_dist, "FOLLOWER_GRACE_S", 0.2)
    args = argparse.Namespace(processes=2, once=True, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    assert train_dist.supervise(args, settings, "w") == 1
    assert sorted(starts.read_text()) == ["0", "1"] and len(handed) == 1  # one group, its job handed back


def test_rank_0_says_once_that_the_schema_changed_and_the_group_is_not_started_again(monkeypatch, tmp_path):
    """`db upgrade` under a running `worker --processes N`: rank 0's claim is refused (SchemaOutOfDate). It left
    run_rank without telling its followers to stop, and the supervisor took its exit for a crash: a job "handed back"
    that was never held, fresh groups that each refused again, the sentence printed 3N+1 times (found by review). Rank
    0 now stops its followers, says it once and exits SCHEMA_EXIT; the supervisor ends with status 1, no new group."""
    import argparse

    from app import train_dist
    from db.errors import SchemaOutOfDate

    def refused():
        raise SchemaOutOfDate("the database schema changed from 0009 to 0010 while the worker ran")

    stopped = _fake_rank_0(monkeypatch, refused)
    args = argparse.Namespace(processes=2, once=False, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    assert train_dist.run_rank(args, None, "w") == train_dist.SCHEMA_EXIT and stopped == [True]

    starts, handed, settings = _fake_group(monkeypatch, tmp_path, (
        f"import time; r = int(os.environ['RANK']); time.sleep(0.5 if r == 0 else 0.1); "
        f"raise SystemExit({train_dist.SCHEMA_EXIT} if r == 0 else 0)"))
    assert train_dist.supervise(args, settings, "w") == 1
    assert sorted(starts.read_text()) == ["0", "1"] and handed == []  # one group, nothing handed back


def test_rank_0_whose_claims_keep_being_cancelled_stops_its_followers_and_says_it_once(monkeypatch, capsys):
    """Rank 0 of `worker --processes N` whose claims the database cancelled ten times in a row (ClaimsCancelled, the
    operator's statement_timeout; tests/app/test_rate_lock_wait.py provokes it) ends as for a schema changed under it:
    its followers told to stop, the sentence said once on stderr, SCHEMA_EXIT (EX_CONFIG), on which the supervisor
    ends with status 1 and starts no fresh group (the test above). It left run_rank as a crash, a fresh group
    following."""
    import argparse

    from app import train_dist
    from app.worker import ClaimsCancelled

    said = "worker 'w' stopped: the database cancelled its claim of a job 10 times in a row over 151 s (...)"

    def cancelled():
        raise ClaimsCancelled(said)

    stopped = _fake_rank_0(monkeypatch, cancelled)
    args = argparse.Namespace(processes=2, once=False, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    assert train_dist.run_rank(args, None, "w") == train_dist.SCHEMA_EXIT and stopped == [True]
    assert capsys.readouterr().err == said + "\n"


def test_rank_0_stops_on_sigint_and_sigterm_with_the_workers_one_handler(monkeypatch):
    """Ctrl-C reaches rank 0 (started in the terminal's process group) along with the SIGTERM the supervisor
    forwards: rank 0 had Python's default SIGINT and a SIGTERM handler of its own, and the second signal interrupted
    the hand-back of its job (found by review). Both now go to Worker.interrupt_for_signal, which raises once a job."""
    import argparse
    import signal

    handlers: dict = {}
    _fake_rank_0(monkeypatch, lambda: False, handlers)
    args = argparse.Namespace(processes=2, once=True, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    from app import train_dist

    assert train_dist.run_rank(args, None, "w") == 0
    assert set(handlers) == {signal.SIGINT, signal.SIGTERM}
    assert all(getattr(h, "__name__", None) == "interrupt_for_signal" for h in handlers.values()), handlers


# rank 0 of `worker --processes 2` as the supervisor starts it (python -m app worker, in the group's environment), with
# a stand-in for the process group; its generate job is stopped as a terminal's Ctrl-C stops the group: SIGINT, and the
# SIGTERM the supervisor forwards
_RANK_0_SCRIPT = r"""
import os, signal, sys, time
from app import __main__ as entry, train_dist, worker as worker_mod

class StandInGroup:
    rank, world, device, broken = 0, 2, "cpu", False

    def __init__(self, timeout_s):
        pass

    def stop_followers(self):
        print("the followers were told to stop", file=sys.stderr, flush=True)

def ctrl_c(run):
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)
    raise SystemExit("the signals were not handled")

real_init = worker_mod.Worker.__init__

def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    self.handlers["generate"] = ctrl_c

train_dist.Group, train_dist._die_with_parent, worker_mod.Worker.__init__ = StandInGroup, lambda: None, init
sys.exit(entry.main(["worker", "--worker-id", "dp", "--poll-s", "0.2", "--nice", "0"]))
"""


@pytest.mark.parametrize("when", ["during-a-job", "idle"])
def test_ctrl_c_in_rank_0_is_one_sentence_and_the_job_is_handed_back(worker_world, when):
    """Ctrl-C reaches rank 0 of `worker --processes N` (with the SIGTERM its supervisor forwards): run_once handed the
    job back and raised KeyboardInterrupt, which left run_rank and printed a Python traceback; rank 0 died of SIGINT
    without telling its followers to stop, so they printed gloo's "Connection closed by peer" traceback too (found by
    the second review). Rank 0 now says it in one sentence, tells its followers to stop and exits 130, idle or busy."""
    from app import train_dist

    w = worker_world
    eid = w.create_experiment("ctrl-c") if when == "during-a-job" else None
    env = {**os.environ, train_dist.GROUP_ENV: str(os.getpid()), "WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
           "SEIKO_DB_URL": w.settings.db_url, "SEIKO_DATA_DIR": str(w.settings.data_dir), "SEIKO_MODEL": str(w.model_dir),
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-c", _RANK_0_SCRIPT], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        if when == "idle":  # an empty queue: the signals come while it polls
            seen = []
            while not any(" ready (" in line for line in seen):
                line = proc.stderr.readline()
                assert line, "".join(seen)
                seen.append(line)
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=300)
        err = ("".join(seen) if when == "idle" else "") + err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err[-4000:]
    assert err.count("the followers were told to stop") == 1, err[-4000:]
    assert "rank 0 of worker 'dp' was stopped by Ctrl-C (SIGINT)" in err, err[-4000:]
    if eid is not None:
        with read_session(w.factory) as s:
            (job,) = s.query(Job).filter_by(experiment_id=eid).all()
            assert (job.status, job.attempts, job.error, job.lease_owner) == ("queued", 0, None, None)


def test_with_once_a_train_job_that_failed_in_the_group_exits_1(monkeypatch, tmp_path):
    """Rank 0 leaves with RESTART_EXIT (75) when a train job ended abnormally, so that the supervisor starts a fresh
    group; under --once the supervisor returned that 75 as its own status, where --once promises 1 for a job that
    failed (found by review). One group, status 1."""
    import argparse

    from app import train_dist

    starts, handed, settings = _fake_group(monkeypatch, tmp_path, (
        f"import time; r = int(os.environ['RANK']); time.sleep(0.5 if r == 0 else 60); "
        f"raise SystemExit({train_dist.RESTART_EXIT} if r == 0 else 0)"))
    args = argparse.Namespace(processes=2, once=True, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    assert train_dist.supervise(args, settings, "w") == 1
    assert sorted(starts.read_text()) == ["0", "1"] and len(handed) == 1  # one group; the follower was stopped


def _fake_group(monkeypatch, tmp_path, rank_script: str):
    """Ranks that each record their rank in a file, then run ``rank_script`` (``python -c``, ``os`` imported), and
    hand-backs recorded instead of made. Returns (the file of starts, the hand-back reasons, settings for supervise)."""
    from types import SimpleNamespace

    from app import train_dist

    starts = tmp_path / "starts"
    starts.write_text("")
    script = f"import os; open({str(starts)!r}, 'a').write(os.environ['RANK']); " + rank_script
    monkeypatch.setattr(train_dist, "rank_command", lambda args, worker_id: [sys.executable, "-c", script])
    monkeypatch.setattr(train_dist, "FOLLOWERS_STOP_S", 0.5)  # these stand-in followers do not hear a stop: killed
    handed: list[str] = []  # each hand-back's reason; "not counted: reason" for one that uses no attempt
    monkeypatch.setattr(train_dist, "hand_back_jobs", lambda settings, worker_id, reason, counted=True: handed.append(
        reason if counted else f"not counted: {reason}") or [])
    return starts, handed, SimpleNamespace(db_url="sqlite:///unused.db", data_dir=tmp_path, model="unused")


def _supervise_with_a_signal(monkeypatch, tmp_path, rank_script: str, *, at: str) -> tuple[int, str, list, float]:
    """supervise() over ``rank_script`` (each rank: ``python -c``, SIGTERM blocked until the script unblocks it, so
    that a forwarded SIGTERM waits for the script's handler), with a SIGTERM handled by the supervisor when ``at`` is
    called: "first-rank-command" (no group there yet) or "second-port" (the first group ended). Returns its status, the
    ranks started (one digit each), the hand-backs and the seconds it took. The test process's handlers are restored."""
    import argparse
    import signal

    from app import train_dist

    starts, handed, settings = _fake_group(monkeypatch, tmp_path, rank_script)
    calls = {"first-rank-command": 0, "second-port": 0}

    def signal_at(name: str, when: int) -> None:
        calls[name] += 1
        if name == at and calls[name] == when:
            signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # the supervisor's handler, as the signal runs it

    real_store, real_popen, real_command = train_dist.group_store, subprocess.Popen, train_dist.rank_command
    monkeypatch.setattr(train_dist, "rank_command",
                        lambda args, worker_id: signal_at("first-rank-command", 1) or real_command(args, worker_id))
    monkeypatch.setattr(train_dist, "group_store", lambda: signal_at("second-port", 2) or real_store())
    monkeypatch.setattr(subprocess, "Popen", lambda cmd, **kw: real_popen(
        cmd, preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}), **kw))
    args = argparse.Namespace(processes=2, once=False, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    began = time.monotonic()
    try:
        status = train_dist.supervise(args, settings, "w")
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    return status, starts.read_text(), handed, time.monotonic() - began


def test_a_stop_signal_that_comes_while_the_group_starts_reaches_rank_0(monkeypatch, tmp_path):
    """A SIGTERM that came while the supervisor had no live rank 0 (the group starting, or the last one dead) only
    set `stopping`: the group started, the poll loop never looked at `stopping`, and the supervisor ran until SIGKILL
    (found by review). The poll loop now forwards it to rank 0, once."""
    rank_script = ("import signal, sys, time; r = int(os.environ['RANK']); "
                   "signal.signal(signal.SIGTERM, lambda *a: os._exit(0)); "
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}); "
                   "time.sleep(8 if r == 0 else 0.5); sys.exit(3 if r == 0 else 0)")  # rank 0 stops only on SIGTERM
    status, starts, handed, seconds = _supervise_with_a_signal(monkeypatch, tmp_path, rank_script, at="first-rank-command")
    assert (status, sorted(starts), handed) == (0, ["0", "1"], []), (status, starts, handed, seconds)
    assert seconds < 8


def test_a_stop_signal_between_two_groups_starts_no_fresh_group(monkeypatch, tmp_path):
    """The same signal after a group ended abnormally and its job was handed back, before the next one started:
    no fresh group starts, and the status is the failed group's."""
    from app import train_dist

    rank_script = (f"import sys, time; r = int(os.environ['RANK']); time.sleep(0 if r == 0 else 30); "
                   f"sys.exit({train_dist.RESTART_EXIT} if r == 0 else 0)")
    status, starts, handed, _ = _supervise_with_a_signal(monkeypatch, tmp_path, rank_script, at="second-port")
    # one group only: rank 0 started once (rank 1 may be killed before it records its start: its rank 0 ends at once)
    assert (status, starts.count("0"), len(handed)) == (1, 1, 1), (status, starts, handed)


def test_a_rank_0_that_obeyed_the_stop_is_not_reported_as_a_crash(monkeypatch, tmp_path, caplog):
    """Rank 0 stopped by Ctrl-C or SIGTERM during a train job exits 130 or 143 with its job handed back, leaving its
    followers (inside a collective) to the supervisor, which logged a warning that the rank "exited with status 130;
    the group was stopped and the job handed back" (found by the second review). It says the worker was stopped; the
    followers are still stopped, and a job rank 0 could not hand back is still handed back."""
    import logging

    rank_script = ("import signal, sys, time; r = int(os.environ['RANK']); "
                   "signal.signal(signal.SIGTERM, lambda *a: os._exit(143)); "
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}); "
                   "time.sleep(30)")  # rank 0 ends only on the forwarded SIGTERM; rank 1 never ends by itself
    with caplog.at_level(logging.INFO, logger="seiko.worker.group"):
        status, starts, handed, seconds = _supervise_with_a_signal(monkeypatch, tmp_path, rank_script,
                                                                   at="first-rank-command")
    # one group, rank 0 started once (rank 1 may be stopped before it records its start: flaky as first written)
    assert (status, starts.count("0"), len(handed)) == (143, 1, 1) and seconds < 30, (status, starts, handed)
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "worker 'w' was stopped (signal 15): rank 0 ended with status 143; the group is stopped") in said, said
    assert not [m for level, m in said if level == "WARNING"], said


def test_a_second_stop_signal_does_not_interrupt_rank_0_telling_its_followers_to_stop(worker_world, monkeypatch):
    """Idle rank 0 gets the supervisor's SIGTERM first (its loop ends) and the terminal's Ctrl-C while it sends its
    followers "stop": the handler, idle again, raised KeyboardInterrupt in the middle of that broadcast, so a follower
    could be left half-way through a message (found by the second review). Once the worker stops, a signal only
    logs: the message goes out whole and rank 0 ends as the SIGTERM asked (0)."""
    import argparse

    from app import train_dist
    from app import worker as worker_mod

    handlers: dict = {}
    sent: list[str] = []

    class StandInGroup:
        rank, world, device, broken = 0, 2, "cpu", False

        def __init__(self, timeout_s: float) -> None:
            pass

        def stop_followers(self):
            sent.append("begun")
            handlers[signal.SIGINT](signal.SIGINT, None)  # Ctrl-C lands inside the broadcast
            sent.append("whole")

    monkeypatch.setattr(signal, "signal", lambda signum, handler: handlers.__setitem__(signum, handler))
    monkeypatch.setattr(train_dist, "_die_with_parent", lambda: None)
    monkeypatch.setattr(train_dist, "Group", StandInGroup)
    monkeypatch.setattr(worker_mod.Worker, "run_once_outlasting_outages",  # idle; the supervisor's SIGTERM comes
                        lambda self: handlers[signal.SIGTERM](signal.SIGTERM, None) or False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = argparse.Namespace(processes=2, once=False, lease_s=60, poll_s=0.05, stop_grace_s=30, nice=0, group_timeout=120)
    try:
        status = train_dist.run_rank(args, worker_world.settings, "w")
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C left run_rank as KeyboardInterrupt")
    assert (status, sent) == (0, ["begun", "whole"])


def test_rank_0s_watchdog_exit_is_75_from_the_supervisor_when_no_fresh_group_follows(monkeypatch, tmp_path):
    """Rank 0's watchdog (a job stuck after a stop) exited 75, which is also rank 0's "my train job failed, start a
    fresh group" (RESTART_EXIT): the supervisor took it for that and exited 1 under --once or a stop, where one worker
    process exits 75 ("restart me, the job is retried"; found by the fourth review). Rank 0's watchdog now says
    WATCHDOG_EXIT: with --once the supervisor exits 75 (EX_TEMPFAIL); without, it starts a fresh group, not counted
    as a quick failure; a train job's failure (RESTART_EXIT) under --once is still 1."""
    import argparse

    from app import train_dist
    from app.worker import EX_TEMPFAIL

    once = argparse.Namespace(processes=2, once=True, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    starts, handed, settings = _fake_group(monkeypatch, tmp_path, (
        f"import time; r = int(os.environ['RANK']); time.sleep(0.5 if r == 0 else 60); "
        f"raise SystemExit({train_dist.WATCHDOG_EXIT} if r == 0 else 0)"))
    assert train_dist.supervise(once, settings, "w") == EX_TEMPFAIL == 75
    assert sorted(starts.read_text()) == ["0", "1"] and len(handed) == 1  # one group; a job still held is handed back

    # no --once, no stop: fresh groups until rank 0 ends cleanly (the fourth group), none taken for a quick failure
    # (3 in a row would give up with status 1)
    starts, handed, settings = _fake_group(monkeypatch, tmp_path, (
        f"import time; r = int(os.environ['RANK']); "
        f"groups = open({str(tmp_path / 'starts')!r}).read().count(os.environ['RANK']); "
        f"time.sleep(0.3 if r == 0 else 60 if groups < 4 else 0.1); "
        f"raise SystemExit(({train_dist.WATCHDOG_EXIT} if groups < 4 else 0) if r == 0 else 0)"))
    forever = argparse.Namespace(processes=2, once=False, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    assert train_dist.supervise(forever, settings, "w") == 0
    assert starts.read_text().count("0") == 4 and len(handed) == 3


def test_a_stopped_group_whose_rank_0_watchdog_ended_a_stuck_job_exits_75_and_hands_back_free(monkeypatch, tmp_path,
                                                                                             caplog):
    """The same under a stop signal: the supervisor exits 75 (it exited 1), says the group was stopped (not that a
    rank crashed), and a job rank 0 could not hand back is queued again without using an attempt (the group was
    stopped; the job did not fail)."""
    import logging

    from app import train_dist

    rank_script = ("import signal, sys, time; r = int(os.environ['RANK']); "
                   f"signal.signal(signal.SIGTERM, lambda *a: os._exit({train_dist.WATCHDOG_EXIT})); "
                   "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM}); "
                   "time.sleep(30)")  # rank 0 ends on the forwarded SIGTERM, as its watchdog would; rank 1 never
    with caplog.at_level(logging.INFO, logger="seiko.worker.group"):
        status, starts, handed, seconds = _supervise_with_a_signal(monkeypatch, tmp_path, rank_script,
                                                                   at="first-rank-command")
    # one group (rank 1 may be killed before it records its start: rank 0 ends as soon as the signal comes)
    assert (status, starts.count("0"), seconds < 30) == (75, 1, True), (status, starts, handed, seconds)
    assert handed == ["not counted: worker 'w' was stopped (signal 15): rank 0 ended with status 76 (its watchdog "
                      "ended a job stuck after the stop)"], handed
    assert not [r for r in caplog.records if r.levelname == "WARNING"], caplog.records


# `python -m app worker --processes 2` whose ranks run as `python -c _DEAF_RANK worker ...`: rank 0's generate job
# blocks SIGINT and SIGTERM in its main thread and never returns (a call stuck in C, as a collective whose peer is gone)
_DEAF_RANK = r"""
import signal, sys, threading
from app import worker

def deaf(self, run):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    print(f"job {run.job.id} hangs", file=sys.stderr, flush=True)
    threading.Event().wait()

worker.Worker._generate = deaf
from app.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
_DEAF_SUPERVISOR = r"""
import sys
from app import train_dist
real = train_dist.rank_command
train_dist.rank_command = lambda args, worker_id: [sys.executable, "-c", sys.argv[1], *real(args, worker_id)[3:]]
from app.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_a_stopped_group_whose_rank_0_is_stuck_exits_75_with_its_job_queued_again(worker_world, tmp_path):
    """Real processes: SIGTERM to `worker --processes 2` whose rank 0 is stuck where the signal cannot reach it. The
    supervisor forwards it; rank 0's watchdog hands the job back and ends rank 0 --stop-grace-s later; the supervisor
    exits 75 as one worker does (it exited 1, and the job had used an attempt and carried the rank's exit as its
    error; found by the fourth review). The job is queued again with no attempt used."""
    from app import train_dist

    w = worker_world
    eid = w.create_experiment("stuck-group")
    log_path = tmp_path / "group.log"
    env = {**os.environ, "SEIKO_DB_URL": w.settings.db_url, "SEIKO_DATA_DIR": str(w.settings.data_dir),
           "SEIKO_MODEL": str(w.model_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false"}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _DEAF_SUPERVISOR, _DEAF_RANK, "worker", "--processes", "2",
                                 "--worker-id", "dp", "--lease-s", "30", "--poll-s", "0.2", "--stop-grace-s", "3",
                                 "--nice", "0"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with read_session(w.factory) as s:
            (job_id,) = [job.id for job in s.query(Job).filter_by(experiment_id=eid)]
        deadline = time.monotonic() + 180
        while f"job {job_id} hangs" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-5000:]
            time.sleep(0.2)
        stopped = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log_path.read_text(errors="replace")
    assert proc.returncode == 75, text[-5000:]
    assert 3 <= took < 30, (took, text[-5000:])
    told = [line for line in text.splitlines() if "has not returned" in line]
    assert len(told) == 1 and f"status {train_dist.WATCHDOG_EXIT}" in told[0] and "attempt 1 of 3 not counted" in \
        told[0], text[-5000:]
    with read_session(w.factory) as s:
        (row,) = s.query(Job).filter_by(experiment_id=eid).all()
        assert (row.status, row.attempts, row.lease_owner, row.error) == ("queued", 0, None, None)


def _group_run(w, tmp_path, argv: list[str], ready: str, extra_env: dict[str, str],
               rank_0_ends: str) -> tuple[subprocess.Popen, str, float]:
    """`worker --processes 2` (``argv``: the command) in a session of its own, stopped as a service manager stops it:
    SIGTERM to every process of the session once ``ready`` is in its log. Returns (the process, its log, the seconds
    from the log's first line with ``rank_0_ends``, rank 0's last, to the end of the last process); the ranks' pids
    are checked gone."""
    log_path = tmp_path / "group.log"
    env = {**os.environ, "SEIKO_DB_URL": w.settings.db_url, "SEIKO_DATA_DIR": str(w.settings.data_dir),
           "SEIKO_MODEL": str(w.model_dir), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
           "TOKENIZERS_PARALLELISM": "false", **extra_env}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while ready not in log_path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-5000:]
            time.sleep(0.1)
        signalled, rank_0_gone = time.monotonic(), None
        os.killpg(proc.pid, signal.SIGTERM)
        while proc.poll() is None and time.monotonic() < signalled + 180:
            if rank_0_gone is None and rank_0_ends in log_path.read_text(errors="replace"):
                rank_0_gone = time.monotonic()
            time.sleep(0.05)
        ended = time.monotonic()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text(errors="replace")
    pids = [int(pid) for pid in re.findall(r"rank \d of 2 started \(pid (\d+)\)", text)]
    assert len(pids) == 2 and not [pid for pid in pids if Path(f"/proc/{pid}").exists()], (pids, text[-5000:])
    assert rank_0_gone is not None, text[-5000:]
    return proc, text, ended - rank_0_gone


# [ctrl]: inside the formation, the follower waiting to form the control group. Slow, as each starts three processes
# that import torch (10-15 s on an idle core, 35-55 s on a busy one) for the same handling of the stop: [init], the
# follower waiting in init_process_group instead; [start], the signal as the ranks start (held until rank 0 handles it)
@pytest.mark.parametrize("point", [pytest.param("start", marks=pytest.mark.slow),
                                   pytest.param("init", marks=pytest.mark.slow), "ctrl"])
def test_a_stop_while_the_group_forms_stops_rank_0_as_a_stop_and_its_followers_at_once(worker_world, tmp_path, point):
    """A SIGTERM while the group was forming (before init_process_group returned, or before the control group was
    made) came before rank 0 had a handler: rank 0 died of it, the supervisor reported "rank 0 of worker 'dp' was
    killed by signal 15; the group was stopped and the job handed back" and exited 143 (found by the fifth review).
    Now rank 0 ends as a stopped idle worker (one sentence, status 0), and the whole group is gone within seconds:
    the follower, waiting in the formation, is told to stop through the group's store (a rank 0 that ends with 0
    sends no "stop" then, and the supervisor waited 60 s for the follower before it killed it: 67 s measured); the
    queued job is untouched. The signal goes to every process of the group (as a service manager's stop), and the
    supervisor forwards another: the second must not interrupt the first. A signal as the ranks start, before rank 0
    could have a handler, is held (the ranks start with it blocked) and is the same stop."""
    from app import train_dist

    w = worker_world
    eid = w.create_experiment("forming")
    if point == "start":
        ready, env = "worker 'dp': rank 1 of 2 started", {}
    else:
        ready, env = f"test hook {train_dist.TEST_FORMING_PAUSE_ENV}", {train_dist.TEST_FORMING_PAUSE_ENV: f"{point}:60"}
    said = "rank 0 of worker 'dp' was stopped by SIGTERM while its process group was forming"
    proc, text, took = _group_run(
        w, tmp_path, [sys.executable, "-m", "app", "worker", "--processes", "2", "--worker-id", "dp", "--poll-s", "0.2",
                      "--nice", "0"], ready, env, said)
    assert proc.returncode == 0, text[-5000:]
    assert "Traceback" not in text and took < 15, (took, text[-5000:])  # 60 s more without the store's word
    assert text.count(said) == 1, text[-5000:]
    assert "rank 1 of worker 'dp' stops: rank 0 exited with status 0" in text, text[-5000:]
    with read_session(w.factory) as s:
        (row,) = s.query(Job).filter_by(experiment_id=eid).all()
        assert (row.status, row.attempts, row.lease_owner, row.error) == ("queued", 0, None, None)


@pytest.mark.parametrize("how", ["stop", "timeout"])
def test_rank_0_with_a_follower_that_never_joins_stops_at_once_or_names_it_after_the_group_timeout(worker_world,
                                                                                                  tmp_path, how):
    """Rank 0 of a group of 2 whose follower never comes (here: never started). It waited in init_process_group,
    inside torch, for torch's own timeout (30 minutes): a SIGTERM was not even heard until then (found by the sixth
    review). Now every rank says in the group's store that it is there and rank 0 waits for them in Python: a SIGTERM
    stops it within seconds as a stop while the group forms (status 0), and without one it gives up after
    --group-timeout with one sentence naming the missing rank (GROUP_TIMEOUT_EXIT). The queued job is untouched."""
    from types import SimpleNamespace

    from app import train_dist

    w = worker_world
    eid = w.create_experiment("lonely")
    store, port = train_dist.group_store()  # the supervisor's part: the group's store, and no follower
    settings = SimpleNamespace(db_url=w.settings.db_url, data_dir=w.settings.data_dir, model=w.model_dir)
    env = {**train_dist.group_env(dict(os.environ), settings, 2, port), "RANK": "0", "LOCAL_RANK": "0",
           "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TOKENIZERS_PARALLELISM": "false"}
    argv = [sys.executable, "-m", "app", "worker", "--worker-id", "dp", "--poll-s", "0.2", "--nice", "0"]
    if how == "timeout":
        argv += ["--group-timeout", "2"]
    log_path = tmp_path / "rank0.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while "rank 0 waits up to" not in log_path.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text(errors="replace")[-5000:]
            time.sleep(0.1)
        waiting = time.monotonic()
        if how == "stop":
            time.sleep(1.0)  # well inside the formation
            waiting = time.monotonic()
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 0 still waits 30 s later:\n{log_path.read_text(errors='replace')[-5000:]}")
        took = time.monotonic() - waiting
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        del store
    text = log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-5000:]
    if how == "stop":
        assert proc.returncode == 0 and took < 5, (proc.returncode, took, text[-5000:])
        assert text.count("rank 0 of worker 'dp' was stopped by SIGTERM while its process group was forming") == 1, text
    else:
        assert proc.returncode == train_dist.GROUP_TIMEOUT_EXIT and 2 <= took < 10, (proc.returncode, took, text[-5000:])
        said = [line for line in text.splitlines() if "did not join" in line]
        assert len(said) == 1 and said[0].endswith(
            "rank 0 of worker 'dp': rank 1 of 2 did not join the process group within 2 s (--group-timeout); it held "
            "no job, and the supervisor stops the group"), text[-5000:]
    with read_session(w.factory) as s:
        (row,) = s.query(Job).filter_by(experiment_id=eid).all()
        assert (row.status, row.attempts, row.lease_owner, row.error) == ("queued", 0, None, None)


def test_a_group_that_does_not_form_is_given_up_after_three_tries_and_says_1(monkeypatch, tmp_path, caplog):
    """Rank 0's GROUP_TIMEOUT_EXIT is one failed formation: the supervisor reports it as that, counts it as a quick
    failure however long --group-timeout was (three in a row and it gives up with status 1, not wait again and
    again), and under --once exits 1 after the one group."""
    import argparse

    from app import train_dist

    monkeypatch.setattr(train_dist, "QUICK_FAILURE_S", 0.0)  # as if each formation took longer than a quick failure
    starts, handed, settings = _fake_group(monkeypatch, tmp_path, (
        f"import time; r = int(os.environ['RANK']); time.sleep(0.3 if r == 0 else 60); "
        f"raise SystemExit({train_dist.GROUP_TIMEOUT_EXIT} if r == 0 else 0)"))
    args = argparse.Namespace(processes=2, once=False, lease_s=60, poll_s=1, stop_grace_s=30, nice=0, group_timeout=120)
    with caplog.at_level(logging.ERROR, logger="seiko.worker.group"):
        assert train_dist.supervise(args, settings, "w") == 1
    assert sorted(starts.read_text()) == ["0", "0", "0", "1", "1", "1"], starts.read_text()
    assert [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()] == [
        "worker 'w': the group did not form 3 times in a row within --group-timeout (120 s); giving up"]
    assert len(handed) == 3 and all("not every rank joined its process group within --group-timeout" in h
                                    for h in handed), handed
    # it held no job: not said to have handed one back (sixth review)
    assert all(h.endswith("the group is given up; no job was claimed") for h in handed), handed
    starts.write_text("")
    assert train_dist.supervise(argparse.Namespace(**{**vars(args), "once": True}), settings, "w") == 1
    assert sorted(starts.read_text()) == ["0", "1"]


def test_the_group_timeout_is_an_option_that_reaches_every_rank():
    """``--group-timeout`` (default 120 s, a positive number of seconds) is passed on to the ranks the supervisor
    starts."""
    import argparse

    from app import cli_worker, train_dist

    parser = argparse.ArgumentParser()
    cli_worker.add_arguments(parser)
    assert parser.parse_args([]).group_timeout == train_dist.GROUP_TIMEOUT_S == 120
    args = parser.parse_args(["--processes", "2", "--group-timeout", "7.5"])
    command = train_dist.rank_command(args, "w")
    assert command[command.index("--group-timeout") + 1] == "7.5"
    assert command[3] == "worker" and parser.parse_args(command[4:]).group_timeout == 7.5  # what the rank reads
    for bad in ("0", "-1", "soon"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--group-timeout", bad])


def test_rank_0s_watchdog_exit_stops_its_followers_at_once(worker_world, tmp_path):
    """Rank 0's watchdog ends it (status 76) when its job is stuck after a stop: it hands the job back first, but
    nothing told the followers, which died of gloo's "Connection closed by peer" (a traceback each) or were killed,
    whichever came first (found by the fifth review). The supervisor now tells them through the group's store: each
    says why in one sentence and leaves, and every process is gone within seconds of rank 0's end; the job is queued
    again with no attempt used, and the supervisor exits 75."""
    from app import train_dist

    w = worker_world
    eid = w.create_experiment("stuck-group")
    with read_session(w.factory) as s:
        (job_id,) = [job.id for job in s.query(Job).filter_by(experiment_id=eid)]
    proc, text, took = _group_run(
        w, tmp_path, [sys.executable, "-c", _DEAF_SUPERVISOR, _DEAF_RANK, "worker", "--processes", "2", "--worker-id",
                      "dp", "--lease-s", "30", "--poll-s", "0.2", "--stop-grace-s", "1", "--nice", "0"],
        f"job {job_id} hangs", {}, "has not returned")
    assert proc.returncode == 75, text[-5000:]
    assert "has not returned" in text and took < 15, (took, text[-5000:])
    assert "Traceback" not in text, text[-5000:]
    assert (f"rank 1 of worker 'dp' stops: rank 0 exited with status {train_dist.WATCHDOG_EXIT} (its watchdog ended a "
            "job stuck after a stop)") in text, text[-5000:]
    with read_session(w.factory) as s:
        (row,) = s.query(Job).filter_by(experiment_id=eid).all()
        assert (row.status, row.attempts, row.lease_owner, row.error) == ("queued", 0, None, None)


def _listening(pid: int) -> list[str]:
    """The addresses process ``pid`` listens on (TCP), from /proc (sockets by inode, the process's fds)."""
    import ipaddress

    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))  # each 32-bit word is little-endian
            found.append(f"{ipaddress.ip_address(raw)}:{int(hex_port, 16)}")
    return found


def _loopback(address: str) -> bool:
    import ipaddress

    ip = ipaddress.ip_address(address.rsplit(":", 1)[0])
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_the_groups_rendezvous_and_transport_listen_on_loopback_only(tmp_path):
    """``--processes N``: rank 0 hosted the group's rendezvous (torch's TCPStore), which listens on every interface
    whatever MASTER_ADDR says (``*:port``; fourth review, 5 Dec 2026), so anyone who could reach the machine could
    read and write the group's keys. The supervisor hosts it now, bound to 127.0.0.1, and gloo's and NCCL's sockets
    are put on the loopback interface unless the operator named one. Checked from /proc: every socket the
    supervisor's store and two real ranks (gloo, as ``supervise`` starts them) listen on is loopback."""
    from types import SimpleNamespace

    from app import train_dist

    settings = SimpleNamespace(db_url="sqlite:///unused.db", data_dir=tmp_path, model="unused")
    env = train_dist.group_env({"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}, settings, 2, 1234)
    loopback = train_dist.loopback_interface()
    assert loopback is not None  # Linux: "lo"
    assert env["GLOO_SOCKET_IFNAME"] == env["NCCL_SOCKET_IFNAME"] == loopback and env["MASTER_ADDR"] == "127.0.0.1"
    named = train_dist.group_env({"GLOO_SOCKET_IFNAME": "eth1", "NCCL_SOCKET_IFNAME": "ib0"}, settings, 2, 1234)
    assert (named["GLOO_SOCKET_IFNAME"], named["NCCL_SOCKET_IFNAME"]) == ("eth1", "ib0")  # the operator's choice

    store, port = train_dist.group_store()
    mine = [a for a in _listening(os.getpid()) if a.endswith(f":{port}")]
    assert mine and all(_loopback(a) for a in mine), mine
    import inspect

    code = ("import json, os, sys\nfrom pathlib import Path\nfrom app import train_dist\nimport torch.distributed as dist\n"
            + inspect.getsource(_listening) +
            "g = train_dist.Group()\nprint('LISTENING', json.dumps(_listening(os.getpid())), flush=True)\n"
            "dist.barrier()\ndist.destroy_process_group()\n")
    base = train_dist.group_env({k: v for k, v in os.environ.items() if k not in train_dist.TRANSPORT_INTERFACE_ENV},
                                settings, 2, port)
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env={**base, "RANK": str(r), "LOCAL_RANK": str(r),
                                                           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"})
             for r in range(2)]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    del store
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
        (line,) = [x for x in out.splitlines() if x.startswith("LISTENING ")]
        addresses = json.loads(line.split(" ", 1)[1])
        assert addresses and all(_loopback(a) for a in addresses), addresses  # gloo's, on lo
