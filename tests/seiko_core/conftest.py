"""Fixtures for seiko_core tests: tiny random-weight models built from configs, never a hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
SHAPES_MODEL = REPO / "models" / "shapes-sd"


@pytest.fixture(scope="session")
def random_model_dir(tmp_path_factory) -> Path:
    from seiko_core.toy.build import random_model

    return random_model(tmp_path_factory.mktemp("random-sd"), seed=0)


@pytest.fixture()
def random_parts(random_model_dir):
    """A freshly loaded tiny random pipeline (each test may attach adapters freely)."""
    from seiko_core.models import load_model

    torch.manual_seed(0)
    return load_model(str(random_model_dir), device="cpu")


@pytest.fixture(scope="session")
def shapes_parts():
    """The committed embedded shapes model, loaded once."""
    from seiko_core.models import load_model

    if not (SHAPES_MODEL / "model_index.json").exists():
        pytest.fail(f"the embedded model is missing at {SHAPES_MODEL}; run `make build-model`")
    return load_model(str(SHAPES_MODEL), device="cpu")
