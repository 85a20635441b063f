"""The committed embedded model: loads offline through the production loader and draws what it is asked."""

import json
from pathlib import Path

import numpy as np
import pytest
from diffusers import StableDiffusionPipeline

from seiko_core.sampling import sample, to_uint8
from seiko_core.toy import dataset as ds
from seiko_core.toy.pixels import read
from seiko_core.toy.quality import fidelity, fidelity_prompts

SHAPES_MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes-sd"


def test_stock_diffusers_loads_it_offline():
    pipe = StableDiffusionPipeline.from_pretrained(SHAPES_MODEL, local_files_only=True)
    assert pipe.image_encoder is not None and pipe.tokenizer.model_max_length == 16
    sizes = sum(p.stat().st_size for p in SHAPES_MODEL.rglob("*") if p.is_file())
    assert sizes < 40 * 2**20
    assert not list(SHAPES_MODEL.rglob("*.bin")) and not list(SHAPES_MODEL.rglob("*.pt"))


def test_quality_file_records_the_targets():
    q = json.loads((SHAPES_MODEL / "QUALITY.json").read_text())
    for key in ("color_fidelity", "background_fidelity", "shape_fidelity"):
        assert 0.0 <= q["generated"][key] <= 1.0
    assert set(q["encoder_zero_shot_accuracy"]) >= {"shape", "color", "background", "size"}


def test_samples_the_named_shape_and_colours(shapes_parts):
    """A fresh sample meets stated regression thresholds.

    The build measures the full figures on 96 samples (QUALITY.json: colour 1.00, background 1.00, shape 0.81 (0.76
    before the refinement stage) at guidance 7.5, 0.71 with the reader before its 5 Dec 2026 correction; the first build had 0.67 / 0.61 / 0.74). These thresholds sit below them to allow for the
    sampling noise of 32 images, and far above chance (1/8 colours, 1/4 backgrounds, 1/5 shapes).
    """
    prompts, specs = fidelity_prompts(32, seed=777)
    images = sample(shapes_parts, prompts, list(range(500, 532)), steps=20, guidance=7.5)
    f = fidelity(to_uint8(images), specs)
    assert f["color_fidelity"] >= 0.8, f
    assert f["background_fidelity"] >= 0.8, f
    assert f["shape_fidelity"] >= 0.5, f


def test_same_seed_gives_an_identical_image(shapes_parts):
    a = sample(shapes_parts, ["a large red circle on a white background"], [42], steps=10, guidance=7.5)
    b = sample(shapes_parts, ["a large red circle on a white background"], [42], steps=10, guidance=7.5)
    assert np.array_equal(to_uint8(a), to_uint8(b))


@pytest.mark.parametrize("color", ["red", "blue"])
def test_a_short_prompt_follows_the_training_frequencies(shapes_parts, color):
    """'a circle' leaves colour to the prior: common colours appear, and the named colour wins when named."""
    named = sample(shapes_parts, [f"a {color} circle"] * 8, list(range(8)), steps=20, guidance=7.5)
    hits = [read(im).color == color for im in to_uint8(named)]
    assert np.mean(hits) >= 0.5, hits
    assert color in ds.COLORS
