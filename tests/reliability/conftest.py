"""Fixtures for the reliability tests: a tiny model, a lab (database at head + data dir; app.tools.harness), a world
of accounts with an open round, and a launched server.

The fault and load tools (app.tools.fault_matrix, app.tools.loadtest) are the single implementation; the tests here
run short versions of them.
tests/app/conftest.py is loaded by path (not edited) for its UI world builder.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from app.tools import harness
from db.engine import make_engine, session_factory

REPO = Path(__file__).resolve().parents[2]


def load_module(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def app_fixtures() -> ModuleType:
    """tests/app/conftest.py as a plain module (its builders, not its pytest fixtures)."""
    return load_module("seiko_tests_app_conftest", REPO / "tests" / "app" / "conftest.py")


@pytest.fixture(scope="session")
def rel_model_dir(tmp_path_factory) -> Path:
    """The tiny random-weight shapes pipeline (seconds to build; never a hub)."""
    return harness.build_model(tmp_path_factory.mktemp("rel-random-sd"))


@pytest.fixture
def lab(tmp_path, rel_model_dir, _sqlite_at_head) -> Iterator[harness.Lab]:
    lab = harness.make_lab(tmp_path / "lab", rel_model_dir, db_template=_sqlite_at_head)
    yield lab
    lab.close()


@pytest.fixture
def plain_lab(tmp_path, _sqlite_at_head) -> Iterator[harness.Lab]:
    """A lab without a model (for tests that only rate)."""
    lab = harness.make_lab(tmp_path / "lab", tmp_path / "no-model", db_template=_sqlite_at_head)
    yield lab
    lab.close()


@pytest.fixture(scope="session")
def ui_world_builder():
    """``_make_ui_world(db_url, tmp, n_images=, overlap=, accounts=)`` of tests/app/conftest.py."""
    return app_fixtures()._make_ui_world


def _ui_world(tmp: Path, template: Path):
    from db import testing as dbt

    tmp.mkdir(parents=True, exist_ok=True)
    url = dbt.copy_sqlite(template, tmp / "seiko.db")
    return app_fixtures()._make_ui_world(url, tmp / "ui", n_images=6, overlap=1, accounts=True)


@pytest.fixture
def rel_world(tmp_path, _sqlite_at_head):
    """An open round of 6 small query PNGs (+2 eval), accounts alice and bob (raters) and root (admin), SQLite."""
    world = _ui_world(tmp_path, _sqlite_at_head)
    yield world
    world._engine.dispose()


@pytest.fixture(scope="module")
def rel_server(tmp_path_factory, _sqlite_at_head) -> Iterator[tuple]:
    """A world like ``rel_world`` and the app built by ui.build_demo, launched in this process on 127.0.0.1
    (sign-in required); one per test module, so its tests must leave the database as they found it or say so."""
    from app import ui

    world = _ui_world(tmp_path_factory.mktemp("rel-server"), _sqlite_at_head)
    services = world.services(batch_size=4)
    demo = ui.build_demo(services)
    demo.launch(prevent_thread_lock=True, **{**ui.launch_kwargs(services), "server_port": harness.free_port(), "quiet": True})
    yield world, demo, demo.local_url.rstrip("/")
    demo.close()
    world._engine.dispose()


# the prompt and held-out tests (test_rel_prompts, test_rel_held_out): a session factory on ``db_url`` and a model
# directory that experiment creation accepts
@pytest.fixture
def factory(db_url):
    engine = make_engine(db_url)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def model_dir(tmp_path) -> str:
    """A directory creation accepts as a model (its configs are JSON objects); nothing here loads it."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model_index.json").write_text("{}")
    return str(tmp_path / "model")
