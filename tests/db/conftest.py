"""Builders for the repository tests: a small experiment with one round, images and raters."""

import hashlib
import struct
import threading
from dataclasses import dataclass

import pytest

from db import repo
from db.engine import write_session
from db.errors import Conflict


def fake_image_fields(i: int, dim: int = 4) -> dict:
    content = f"image {i}".encode()
    return {
        "prompt": f"a shape {i % 2}",
        "seed": i,
        "file_path": f"images/{hashlib.sha256(content).hexdigest()}.png",
        "sha256": hashlib.sha256(content).hexdigest(),
        "embedding": struct.pack(f"<{dim}f", *[float(i + k) for k in range(dim)]),
        "embedding_dim": dim,
    }


@pytest.fixture
def image_fields():
    """``image_fields(i)``: keyword arguments for repo.add_image describing a distinct fake image."""
    return fake_image_fields


@dataclass
class World:
    experiment_id: int
    round_id: int
    image_ids: list[int]
    rater_ids: list[int]


@pytest.fixture
def make_world(db_factory):
    def build(*, n_images: int = 3, n_raters: int = 3, overlap: int = 1, open_round: bool = True, name: str = "exp") -> World:
        with write_session(db_factory) as s:
            exp = repo.create_experiment(
                session=s,
                name=name,
                model_spec="models/shapes-sd",
                method="seiko-ucb",
                config={"lr": 1e-4, "kl_weight": 0.01},
                budgets=[10, 20],
                prompts=["a shape 0", "a shape 1"],
                overlap=overlap,
            )
            rnd = repo.create_round(session=s, experiment_id=exp.id)
            images = [repo.add_image(session=s, round_id=rnd.id, **fake_image_fields(i)) for i in range(n_images)]
            raters = [repo.create_rater(session=s, name=f"{name}-rater{i}", password_hash="x$hash") for i in range(n_raters)]
            if open_round:
                repo.open_round(session=s, round_id=rnd.id)
            return World(exp.id, rnd.id, [im.id for im in images], [r.id for r in raters])

    return build


def race_with_open_transaction(db_factory, hold, act, *, wait_s: float = 1.5) -> str:
    """PostgreSQL races: ``hold(session)`` runs in a transaction left open while ``act(session)`` runs in a write
    transaction of another thread; the held one commits after ``wait_s`` seconds (or once ``act`` finished). Returns
    "done", or the sentence of the Conflict ``act`` raised."""
    held, out = db_factory(), {}
    try:
        hold(held)  # not yet committed

        def other():
            try:
                with write_session(db_factory) as s:
                    act(s)
                out["result"] = "done"
            except Conflict as exc:
                out["result"] = str(exc)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(wait_s)
        held.commit()
    finally:
        held.close()
    thread.join(30)
    return out["result"]
