"""The harness shared by the fault matrix, the load test and the walk-through (``python -m app.tools.<tool>``).

A *lab* is a migrated SQLite database, a data dir and a model directory; the processes are the real commands
(``python -m app worker`` / ``serve``) started with the lab's environment, so what is tested is what ships. They
run in the lab's directory: they import the installed package (``pip install -e .``), never the current directory.
Also used by tests/reliability. Not imported by the app itself.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import services, storage
from app.settings import Settings
from app.testing import tiny_worker_config
from db import migrate, repo
from db.engine import make_engine, read_session, session_factory, write_session
from db.models import Job

LEASE_S = 3.0
PASSWORD = "correct horse battery"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# a lab: a migrated SQLite database, a data dir and the tiny random-weight model
# ---------------------------------------------------------------------------------------------


@dataclass
class Lab:
    root: Path
    settings: Settings
    factory: Any
    engine: Any
    model_dir: Path

    @property
    def db_url(self) -> str:
        return self.settings.db_url

    @property
    def data_dir(self) -> Path:
        return self.settings.data_dir

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "SEIKO_FAULT_PHASE"}
        return {**env, "SEIKO_DB_URL": self.db_url, "SEIKO_DATA_DIR": str(self.data_dir), "SEIKO_MODEL": str(self.model_dir),
                "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                **extra}

    def close(self) -> None:
        self.engine.dispose()


def check_fresh_workdir(parser: argparse.ArgumentParser, path: Path | None) -> None:
    """``--workdir`` must be a new or empty folder, as the walkthrough's --data-dir is: one a previous run left its
    lab, logs and raters' files in was reused silently, this run's results mixed with that run's (twentieth review).
    Otherwise the parser's one sentence, status 2, before anything is written."""
    if path is None or not (path.exists() or path.is_symlink()):
        return
    if not path.is_dir():
        parser.error(f"{path} is not a folder; give a fresh --workdir")
    try:
        used = any(path.iterdir())
    except OSError as exc:
        parser.error(f"{path} cannot be read ({exc.strerror or exc}); give a fresh --workdir")
    if used:
        parser.error(f"{path} is not empty; give a fresh --workdir")


def build_model(out: Path) -> Path:
    from seiko_core.toy.build import random_model

    return random_model(out, seed=0)


def make_lab(root: Path, model_dir: Path, *, data_dir: Path | None = None, db_template: Path | None = None) -> Lab:
    """A fresh database at head under ``root`` (copied from ``db_template`` when given) and a data dir."""
    root.mkdir(parents=True, exist_ok=True)
    db_path = root / "seiko.db"
    if db_template is not None:
        from db import testing as dbt

        url = dbt.copy_sqlite(db_template, db_path)
    else:
        url = f"sqlite:///{db_path}"
        migrate.upgrade(url)
    settings = Settings.from_env({"data_dir": str(data_dir or root / "data"), "db_url": url, "model": str(model_dir)}, environ={})
    engine = make_engine(url)
    return Lab(root, settings, session_factory(engine), engine, model_dir)


def create_experiment(lab: Lab, name: str, **spec: Any) -> int:
    spec = {"preset": "shapes", "budgets": (4, 4), **spec}
    eid = services.create_experiment(factory=lab.factory, spec=services.ExperimentSpec(name=name, **spec),
                                     default_model=str(lab.model_dir))
    with write_session(lab.factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=eid)
        experiment.config = tiny_worker_config(experiment.config)
    return eid


def make_raters(lab: Lab, n: int, prefix: str) -> list[int]:
    with write_session(lab.factory) as s:
        return [repo.create_rater(session=s, name=f"{prefix}-{i}", password_hash="not-a-real-hash").id for i in range(n)]


def rate_and_close(lab: Lab, eid: int, rater_ids: list[int], rated: dict[tuple[int, int], int]) -> bool:
    """If a round of ``eid`` is open, every rater rates all its query images and the round is closed (train job queued)."""
    with write_session(lab.factory) as s:
        round_ = repo.get_open_round(session=s, experiment_id=eid)
        if round_ is None:
            return False
        for image in repo.list_images(session=s, round_id=round_.id, kind="query"):
            for rater_id in rater_ids:
                score = 1 + (image.id + rater_id) % 10
                repo.add_rating(session=s, image_id=image.id, rater_id=rater_id, score=score)
                rated[(image.id, rater_id)] = score
    services.close_round(factory=lab.factory, experiment_id=eid)
    return True


def job_rows(lab: Lab, eid: int) -> list[dict[str, Any]]:
    with read_session(lab.factory) as s:
        return [{"id": j.id, "kind": j.kind, "status": j.status, "owner": j.lease_owner, "round_id": j.round_id,
                 "attempts": j.attempts, "error": j.error, "expires": j.lease_expires_at}
                for j in s.query(Job).filter_by(experiment_id=eid).order_by(Job.id)]


def wait_for(what: str, predicate: Callable[[], Any], timeout: float, poll: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class WorkerProc:
    """``python -m app worker`` with a short lease, optionally with the fault-injection hook set."""

    def __init__(self, lab: Lab, worker_id: str, log_dir: Path, fault: str | None = None) -> None:
        self.worker_id = worker_id
        self.log = log_dir / f"{worker_id}.log"
        extra = {"SEIKO_FAULT_PHASE": fault} if fault else {}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "--worker-id", worker_id, "--lease-s", str(LEASE_S), "--poll-s", "0.2"],
                cwd=lab.root, env=lab.env(**extra), stdout=out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]


def fake_open_round(lab: Lab, name: str, n_images: int, *, overlap: int = 1, real_pngs: bool = False) -> tuple[int, int, list[int]]:
    """An experiment with an open round of ``n_images`` query images (no job for the worker); (experiment, round, image ids)."""
    with write_session(lab.factory) as s:
        exp = repo.create_experiment(session=s, name=name, model_spec=str(lab.model_dir), method="greedy", config={},
                                     budgets=[n_images], prompts=["a shape"], overlap=overlap)
        round_ = repo.create_round(session=s, experiment_id=exp.id)
        ids = []
        for i in range(n_images):
            if real_pngs:
                stored = storage.write_image(lab.data_dir, small_png(i))
                path, digest = stored.path, stored.sha256
            else:
                digest = hashlib.sha256(f"{name} {i}".encode()).hexdigest()
                path = storage.image_path(digest)
            ids.append(repo.add_image(session=s, round_id=round_.id, prompt="a shape", seed=i, file_path=path,
                                      sha256=digest, embedding=b"\0" * 16, embedding_dim=4).id)
        repo.open_round(session=s, round_id=round_.id)
        return exp.id, round_.id, ids


def small_png(i: int) -> bytes:
    import numpy as np

    pixels = np.zeros((8, 8, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = i % 256, (i // 256) % 256, 77
    return storage.encode_png(pixels)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProc:
    """``python -m app serve`` on 127.0.0.1 and a free port (sign-in, since the lab has accounts)."""

    def __init__(self, lab: Lab, log_dir: Path, name: str, *, batch_size: int = 8, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        lab.model_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--batch-size", str(batch_size)],
                cwd=lab.root, env={**lab.env(), **(env or {})}, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        def up() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return httpx.get(self.url + "/", timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the web server to answer", up, timeout, poll=0.2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=60)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:]
