"""An adapter whose delta (lora_alpha / r * B @ A) is finite but dwarfs the weight it adjusts is refused on load.

lora_alpha 1e30 with ordinary weights, or ordinary alpha with huge weights, passed every check (the merged weights are
finite numbers), loaded, and drew NaN images (found by review, tenth). The sizes here are computed in float64 from the
raw safetensors files, not by the loader's code."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from seiko_core import lora
from seiko_core.checkpoint import CheckpointError, write_manifest
from seiko_core.config import FinetuneConfig
from seiko_core.export import (
    ExportError,
    export_diffusers_lora,
    export_kohya_lora,
    export_kohya_lora_dir,
    export_merged_pipeline,
)
from seiko_core.models import load_model
from seiko_core.presets import shapes
from seiko_core.sampling import sample
from tests.seiko_core.test_export import _rescaled

SHAPES_MODEL = Path(__file__).resolve().parents[2] / "models" / "shapes-sd"
BOUND = 100  # the documented bound: a delta's Frobenius norm at most 100 times its base weight's, layer by layer
REFUSED = (r"The adapter in '.*' changes '[\w.]+' by [0-9.e+]+ times that layer's own weight \(the Frobenius norm of "
           r"lora_alpha / r \* B @ A against the base weight's\), where a fine-tune stays within 100 times; its "
           r"lora_alpha or its weights are damaged\.")


def _rescaled_copy(src: Path, dst: Path, *, alpha: float, factor: float = 1.0) -> Path:
    """A copy of adapter ``src`` with every weight times ``factor`` and lora_alpha ``alpha`` in both its weights'
    header and adapter_config.json (they agree, as save_adapter writes them), its manifest written again to match."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "manifest.json":
            (dst / f.name).write_bytes(f.read_bytes())
    _rescaled(dst, alpha, factor)
    write_manifest(dst, {"adapter": "round_1", "format": "diffusers-lora"})
    return dst


def _sizes(model_dir: Path, adapter: Path) -> tuple[float, float]:
    """(largest |W + delta| entry, largest ||delta||_F / ||W||_F) over the adapter's layers, in float64 from the files."""
    base = load_file(str(Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors"))
    state = load_file(str(adapter / lora.WEIGHT_NAME))
    with safe_open(adapter / lora.WEIGHT_NAME, "pt") as f:
        header = json.loads(f.metadata()["lora_adapter_metadata"])
    scale = header["unet.lora_alpha"] / header["unet.r"]
    largest, ratio = 0.0, 0.0
    for key in (k for k in state if k.endswith(".lora.down.weight")):
        weight = base[key.removeprefix("unet.").removesuffix(".lora.down.weight") + ".weight"].double()
        delta = scale * (state[key.replace(".down.", ".up.")].double() @ state[key].double()).reshape(weight.shape)
        largest = max(largest, (weight + delta).abs().max().item())
        ratio = max(ratio, (delta.norm() / weight.norm()).item())
    return largest, ratio


def _pixels(parts) -> torch.Tensor:
    return sample(parts, ["a large red circle on a white background"], [7], steps=2, guidance=7.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Adapters the project's own fine-tuning trains on the embedded model (the shapes preset's layers and rank 4),
    with lora_alpha = r and = 2r, at ten times the preset's learning rate: {alpha / r: adapter directory}."""
    from seiko_core.finetune import finetune

    def redness(images, prompts):
        return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))

    out = {}
    for per_rank in (1, 2):
        cfg = shapes()
        cfg.sampling.steps = 4
        cfg.finetune.lora_alpha = float(cfg.finetune.lora_rank * per_rank)
        cfg.finetune.lr *= 10
        cfg.finetune.batch_size, cfg.finetune.grad_accum, cfg.finetune.trajectories_per_epoch = 2, 1, 4
        cfg.finetune.truncation_k, cfg.finetune.epochs, cfg.finetune.max_seconds = 2, 2, None
        parts = load_model(str(SHAPES_MODEL), device="cpu")
        lora.add_adapter(parts.unet, "round_1", cfg.finetune, seed=0)
        finetune(parts, redness, ["a large red circle on a white background", "a small blue star"], cfg,
                 adapter="round_1", reference=None, seed=0)
        out[per_rank] = tmp_path_factory.mktemp("trained") / f"alpha{per_rank}r"
        lora.save_adapter(parts.unet, "round_1", out[per_rank])
    return out


@pytest.mark.parametrize("per_rank", [1, 2])
def test_an_adapter_trained_on_the_embedded_model_loads_and_the_same_at_lora_alpha_1e30_draws_nan_and_is_refused(
        trained, tmp_path, per_rank):
    """The adapters the project trains (alpha = r and 2r) load; the same adapter with lora_alpha 1e30 has finite merged
    weights (so the earlier non-finite check passed it), and stock diffusers, which loads it, draws NaN images with it.
    SEIKO's loader refuses it in one sentence and leaves the model as it was."""
    good = trained[per_rank]
    _, trained_ratio = _sizes(SHAPES_MODEL, good)
    assert 0 < trained_ratio < BOUND / 10  # a fine-tune, even at ten times the learning rate (a round of it: 6.5)
    parts = load_model(str(SHAPES_MODEL), device="cpu")
    before = _pixels(parts)
    lora.load_adapter(parts, good, "trained")  # accepted
    with_trained = _pixels(parts)
    assert torch.isfinite(with_trained).all()

    huge = _rescaled_copy(good, tmp_path / "huge", alpha=1e30)
    largest, ratio = _sizes(SHAPES_MODEL, huge)
    assert largest < torch.finfo(torch.float32).max and ratio > 1e20  # finite once merged, yet no fine-tune
    stock = load_model(str(SHAPES_MODEL), device="cpu")
    stock.unet.load_lora_adapter(str(huge), weight_name=lora.WEIGHT_NAME, prefix="unet", adapter_name="stock",
                                 use_safetensors=True, local_files_only=True)  # diffusers' loader, without SEIKO's checks
    assert not torch.isfinite(_pixels(stock)).all()

    with pytest.raises(CheckpointError) as refused:
        lora.load_adapter(parts, huge, "huge")
    assert re.fullmatch(REFUSED, str(refused.value)), str(refused.value)
    assert not lora.has_adapter(parts.unet, "huge")
    for name, pixels in (("trained", with_trained), (lora.BASE, before)):  # nothing lost: both models as they were
        lora.activate(parts.unet, name)
        torch.testing.assert_close(_pixels(parts), pixels, rtol=0, atol=0)


def _tiny_adapter(model_dir: Path, out: Path) -> Path:
    parts = load_model(str(model_dir), device="cpu")
    params = lora.add_adapter(parts.unet, "round_1", FinetuneConfig(lora_rank=2, lora_alpha=4.0))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    lora.save_adapter(parts.unet, "round_1", out)
    return out


@pytest.mark.parametrize("alpha,factor", [(1e30, 1.0), (4.0, 1e6)], ids=["alpha-1e30", "weights-x1e6"])
def test_a_huge_alpha_or_huge_weights_with_finite_merged_weights_is_refused_and_no_merged_export_is_made(
        random_model_dir, tmp_path, alpha, factor):
    """Both load in diffusers (finite merged weights, as the earlier check required); both are refused now, and the
    merged export, which loads the adapter the same way, publishes nothing."""
    huge = _rescaled_copy(_tiny_adapter(random_model_dir, tmp_path / "a"), tmp_path / "huge", alpha=alpha, factor=factor)
    largest, ratio = _sizes(random_model_dir, huge)
    assert largest < torch.finfo(torch.float32).max and ratio > 1e6
    parts = load_model(str(random_model_dir), device="cpu")
    with pytest.raises(CheckpointError, match=REFUSED):
        lora.load_adapter(parts, huge, "x")
    assert not lora.has_adapter(parts.unet, "x")
    with pytest.raises(ExportError, match=REFUSED):
        export_merged_pipeline(random_model_dir, huge, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "huge"]  # no export, no temporary sibling


def test_the_bound_is_100_times_the_base_weights_frobenius_norm_layer_by_layer(random_model_dir, tmp_path):
    """Weights scaled so that the largest layer's ||delta||_F / ||W||_F (from the files, in float64) is 0.9 and 1.1
    times the bound: the first loads, the second is refused; neither alpha nor the weights alone decide it."""
    source = _tiny_adapter(random_model_dir, tmp_path / "a")
    _, ratio = _sizes(random_model_dir, source)
    parts = load_model(str(random_model_dir), device="cpu")
    for share, loads in ((0.9, True), (1.1, False)):
        factor = math.sqrt(share * BOUND / ratio)  # the delta is B @ A: both scaled, it grows by factor ** 2
        adapter = _rescaled_copy(source, tmp_path / f"at{share}", alpha=4.0, factor=factor)
        assert _sizes(random_model_dir, adapter)[1] == pytest.approx(share * BOUND, rel=1e-4)
        if loads:
            lora.load_adapter(parts, adapter, "x")
            assert lora.has_adapter(parts.unet, "x")
        else:
            with pytest.raises(CheckpointError, match=REFUSED):
                lora.load_adapter(parts, adapter, "y")
    # a huge alpha with weights small enough to match: the same delta, so it loads (the bound is on the delta)
    small = _rescaled_copy(source, tmp_path / "alpha1e12", alpha=4.0e12, factor=1e-6)
    assert _sizes(random_model_dir, small)[1] == pytest.approx(ratio, rel=1e-4)
    lora.load_adapter(parts, small, "z")
    assert lora.has_adapter(parts.unet, "z")


@pytest.mark.parametrize("alpha,factor", [(1e30, 1.0), (4.0, 1e6)], ids=["alpha-1e30", "weights-x1e6"])
def test_every_export_refuses_such_an_adapter_without_finalize_and_writes_nothing(random_model_dir, tmp_path, alpha,
                                                                                   factor):
    """The merged export loads the adapter by lora.inject, and so refused it; the diffusers and kohya exports only read
    its files, so called without finalize (whose check loads it in the app) they exported it, and stock diffusers
    drew NaN with it (found by review, eleventh). Each export now loads it onto the base's UNet by the same loader
    first: the same sentence, and no file, not even a temporary sibling, is left. The same adapter's weights at their
    trained size export by every path."""
    source = _tiny_adapter(random_model_dir, tmp_path / "a")
    huge = _rescaled_copy(source, tmp_path / "huge", alpha=alpha, factor=factor)
    assert _sizes(random_model_dir, huge)[1] > 1e6 and _sizes(random_model_dir, source)[1] < BOUND  # from the files
    exports = {
        "diffusers": lambda adapter, out: export_diffusers_lora(adapter, out, base_model=random_model_dir),
        "kohya": lambda adapter, out: export_kohya_lora(adapter, out.with_suffix(".safetensors"),
                                                        base_model=random_model_dir),
        "kohya-dir": lambda adapter, out: export_kohya_lora_dir(adapter, out, base_model=random_model_dir),
        "merged": lambda adapter, out: export_merged_pipeline(random_model_dir, adapter, out),
    }
    for name, export in exports.items():
        with pytest.raises(ExportError, match=REFUSED):
            export(huge, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "huge"]  # no export, no temporary sibling
    written = tmp_path / "written"
    written.mkdir()
    for name, export in exports.items():
        export(source, written / name)
    assert sorted(p.name for p in written.iterdir()) == ["diffusers", "kohya-dir", "kohya.safetensors", "merged"]
