"""Fixtures for the app tests (worker, UI, CLI). Add new fixtures; keep the ones here working for their users."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app import services
from app.settings import Settings
from app.testing import tiny_worker_config
from db import repo
from db import testing as dbt
from db.engine import make_engine, session_factory, write_session

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_new_password_refusals(monkeypatch) -> None:
    """Each test starts with no refused new passwords counted (``auth.NEW_PASSWORD_REFUSALS`` lives in the process:
    refusals of one test would otherwise count in the next)."""
    from app import auth

    monkeypatch.setattr(auth, "NEW_PASSWORD_REFUSALS", auth.RefusedNewPasswords())


# ---------------------------------------------------------------------------------------------
# worker fixtures: a tiny random-weight model, a tiny SEIKO config, a database and a data dir
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def worker_model_dir(tmp_path_factory) -> Path:
    """A tiny random-weight pipeline of the shapes architecture (seconds to build, never a hub)."""
    from seiko_core.toy.build import random_model

    return random_model(tmp_path_factory.mktemp("worker-random-sd"), seed=0)


@pytest.fixture
def worker_db_url(request, tmp_path) -> str:
    """A fresh SQLite database at head (for tests that start worker processes on one file)."""
    return dbt.copy_sqlite(request.getfixturevalue("_sqlite_at_head"), tmp_path / "seiko.db")


@dataclass
class WorkerWorld:
    settings: Settings
    factory: Any  # sessionmaker
    model_dir: Path
    workers: list[Any] = field(default_factory=list)  # made by worker(): closed when the test ends, on every path

    def create_experiment(self, name: str = "exp", **spec: Any) -> int:
        """An experiment on the tiny model with budgets (4, 4) and the tiny config; its round-0 generate job is queued."""
        spec = {"preset": "shapes", "budgets": (4, 4), **spec}
        experiment_id = services.create_experiment(factory=self.factory, spec=services.ExperimentSpec(name=name, **spec),
                                                   default_model=str(self.model_dir))
        with write_session(self.factory) as s:
            experiment = repo.get_experiment(session=s, experiment_id=experiment_id)
            experiment.config = tiny_worker_config(experiment.config)
        return experiment_id

    def worker(self, worker_id: str = "worker-1", lease_s: float = 30.0, **kwargs: Any):
        from app.worker import Worker

        worker = Worker(self.settings, worker_id, lease_s=lease_s, poll_s=0.05, device="cpu", **kwargs)
        self.workers.append(worker)
        return worker

    def raters(self, n: int, prefix: str = "rater") -> list[int]:
        with write_session(self.factory) as s:
            return [repo.create_rater(session=s, name=f"{prefix}-{i}", password_hash="not-a-real-hash").id for i in range(n)]

    def rate_open_round(self, experiment_id: int, rater_ids: list[int], score: Callable[[int, int], int]) -> int:
        """Every rater rates every query image of the open round with ``score(image_id, rater_id)``; returns how many."""
        n = 0
        with write_session(self.factory) as s:
            round_ = repo.get_open_round(session=s, experiment_id=experiment_id)
            assert round_ is not None, "no round is open for labeling"
            for image in repo.list_images(session=s, round_id=round_.id, kind="query"):
                for rater_id in rater_ids:
                    repo.add_rating(session=s, image_id=image.id, rater_id=rater_id, score=score(image.id, rater_id))
                    n += 1
        return n


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread: on a shared 2-core machine, two OpenMP threads fighting other jobs run ~5x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _world(db_url: str, tmp_path: Path, model_dir: Path) -> Iterator[WorkerWorld]:
    engine = make_engine(db_url)
    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": db_url, "model": str(model_dir)}, environ={})
    world = WorkerWorld(settings=settings, factory=session_factory(engine), model_dir=model_dir)
    try:
        with one_torch_thread():
            yield world
    finally:
        # a worker the test did not close (or could not: a failed assertion) kept its heartbeat thread writing its
        # row in live_processes for the rest of the run (tests/conftest.py's _no_heartbeat_left_running)
        for worker in world.workers:
            worker.close()
        engine.dispose()


@pytest.fixture
def worker_world(worker_db_url, tmp_path, worker_model_dir) -> Iterator[WorkerWorld]:
    """A SQLite database at head, an empty data dir and the tiny model, with helpers to drive experiments."""
    yield from _world(worker_db_url, tmp_path, worker_model_dir)


@pytest.fixture
def worker_world_any_db(db_url, tmp_path, worker_model_dir) -> Iterator[WorkerWorld]:
    """Like ``worker_world`` on every database backend (SQLite, and PostgreSQL when SEIKO_TEST_PG_URL is set)."""
    yield from _world(db_url, tmp_path, worker_model_dir)


# ---------------------------------------------------------------------------------------------
# UI fixtures: an experiment with an open round of small PNGs (no model), accounts, and AppServices
# ---------------------------------------------------------------------------------------------

UI_PASSWORD = "correct horse battery"  # every ui_world account's password


def ui_png(i: int, size: int = 16) -> bytes:
    """A small distinct PNG: a coloured square on a checkerboard (pixel art, to see the crisp upscaling)."""
    import io

    from PIL import Image as PILImage

    im = PILImage.new("RGB", (size, size), (240, 240, 240))
    colour = ((53 * i) % 256, (97 * i + 80) % 256, (181 * i + 40) % 256)
    for x in range(size):
        for y in range(size):
            if (x + y) % 2 == 0:
                im.putpixel((x, y), (215, 215, 215))
            if size // 4 <= x < size - size // 4 - (i % 3) and size // 4 <= y < size - size // 4:
                im.putpixel((x, y), colour)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class UiWorld:
    settings: Settings
    factory: Any  # sessionmaker
    experiment_id: int
    round_id: int
    image_ids: list[int]  # query images of the open round
    eval_image_ids: list[int]
    accounts: dict[str, int]  # name -> rater id: "alice" and "bob" (raters), "root" (admin)

    def services(self, *, local_mode: bool = False, batch_size: int = 4):
        from app.ui import AppServices

        return AppServices(factory=self.factory, settings=self.settings, local_mode=local_mode, batch_size=batch_size)

    def add_round_images(self, round_id: int, n: int, *, kind: str = "query", start: int = 0, prompts: tuple[str, ...] = ()) -> list[int]:
        from app import storage

        ids = []
        with write_session(self.factory) as s:
            for i in range(start, start + n):
                stored = storage.write_image(self.settings.data_dir, ui_png(i + 1000 * round_id + (500 if kind == "eval" else 0)))
                prompt = prompts[i % len(prompts)] if prompts else ("a red circle", "a small square", "a large triangle")[i % 3]
                ids.append(repo.add_image(session=s, round_id=round_id, prompt=prompt, seed=i, file_path=stored.path,
                                          sha256=stored.sha256, embedding=bytes(16), embedding_dim=4, kind=kind).id)
        return ids


def _make_ui_world(db_url: str, tmp_path: Path, *, n_images: int, overlap: int, accounts: bool) -> UiWorld:
    from app import auth

    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": db_url, "model": str(tmp_path / "model")}, environ={})
    engine = make_engine(db_url)
    factory = session_factory(engine)
    with write_session(factory) as s:
        exp = repo.create_experiment(session=s, name="ui-exp", model_spec="models/shapes-sd", method="bootstrap",
                                     config={}, budgets=[6, 6], prompts=["a shape"], overlap=overlap)
        rnd = repo.create_round(session=s, experiment_id=exp.id)
    world = UiWorld(settings, factory, exp.id, rnd.id, [], [], {})
    world.image_ids = world.add_round_images(rnd.id, n_images)
    world.eval_image_ids = world.add_round_images(rnd.id, 2, kind="eval", prompts=("a shape",))
    with write_session(factory) as s:
        repo.open_round(session=s, round_id=rnd.id)
    if accounts:
        for name, role in (("alice", "rater"), ("bob", "rater"), ("root", "admin")):
            world.accounts[name] = auth.add_user(factory, name=name, role=role, password=UI_PASSWORD)
    world._engine = engine  # type: ignore[attr-defined]
    return world


@pytest.fixture
def ui_world_factory(db_url, tmp_path) -> Iterator[Callable[..., UiWorld]]:
    """``ui_world_factory(n_images=6, overlap=1, accounts=True)``: an experiment 'ui-exp' whose round 0 is open
    with ``n_images`` small query PNGs (and 2 eval PNGs) in a tmp data dir, plus accounts alice, bob (raters) and
    root (admin), all with password ``UI_PASSWORD``."""
    made: list[UiWorld] = []

    def make(*, n_images: int = 6, overlap: int = 1, accounts: bool = True) -> UiWorld:
        world = _make_ui_world(db_url, tmp_path / f"ui{len(made)}", n_images=n_images, overlap=overlap, accounts=accounts)
        made.append(world)
        return world

    yield make
    for world in made:
        world._engine.dispose()  # type: ignore[attr-defined]


@pytest.fixture
def ui_world(ui_world_factory) -> UiWorld:
    """An open round of 6 query images, overlap 1, accounts alice/bob (raters) and root (admin)."""
    return ui_world_factory()


# ---------------------------------------------------------------------------------------------
# browser tests (tests/app/test_e2e_*.py; see tests/app/e2e_support.py)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def e2e() -> Iterator[Any]:
    """``demo, browser = e2e(services)``: the app served on a free port, then a headless Chromium; both closed after
    the test. Skips the test at once without /usr/bin/chromium or the playwright package."""
    from contextlib import ExitStack

    from tests.app.e2e_support import E2E

    with ExitStack() as stack:
        yield E2E(stack)
