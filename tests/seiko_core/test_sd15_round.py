"""One whole SEIKO round on the Stable Diffusion 1.5 architecture (random weights from configs/sd15), on CPU.

Slow (a few minutes on 2 cores): the real-SD path, not the shapes model, through the code the worker runs for a
round: ``loop.generate_batch`` (sampling + image-encoder embeddings), then ``loop.train_round`` (reward ensemble,
UCB bonus, KL-constrained LoRA fine-tuning with gradient checkpointing), at 64x64 pixels (8x8 latents) and a few
steps, for an epsilon and a v-prediction scheduler (SD 2.x-768's), with timestep spacings "leading" and "trailing".
"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.mark.parametrize("scheduler", [{}, {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}],
                         ids=["epsilon", "v_prediction"])
def test_one_worker_round_on_the_sd15_architecture(tmp_path, scheduler):
    # the preset's fp16 autocast is a GPU setting: on the CPU it runs in fp32, and the round's metrics say so
    assert one_round(tmp_path, "cpu", scheduler) == "no"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (the preset's fp16 autocast and loss scaler)")
def test_one_worker_round_on_the_sd15_architecture_on_cuda_in_fp16(tmp_path):
    assert one_round(tmp_path, "cuda", {}) == "fp16"


def one_round(tmp_path, device: str, scheduler: dict) -> str:
    """Two rounds through generate_batch and train_round; returns the fine-tuning's mixed precision as run."""
    from diffusers import DDIMScheduler

    from seiko_core import lora
    from seiko_core.bench import build_sd15_arch
    from seiko_core.loop import generate_batch, round_prompts, train_round
    from seiko_core.presets import sd15
    from seiko_core.sampling import DDIMSchedule

    parts = build_sd15_arch(device, sample_size=8, image_size=32, workdir=tmp_path)
    if scheduler:
        parts.pipeline.scheduler = DDIMScheduler.from_config({**parts.scheduler.config, **scheduler})
    assert DDIMSchedule.from_scheduler(parts.scheduler, 3).prediction_type == scheduler.get("prediction_type", "epsilon")
    cfg = sd15().for_method("ucb")
    cfg.sampling.steps, cfg.sampling.batch_size = 3, 4
    cfg.reward.max_epochs = 20
    ft = cfg.finetune
    ft.batch_size, ft.grad_accum, ft.trajectories_per_epoch, ft.epochs = 1, 2, 2, 1
    ft.truncation_k = 2  # of 3 steps
    assert ft.mixed_precision == "fp16"  # the preset's
    assert ft.gradient_checkpointing  # the preset's memory setting, exercised here
    # round 0 -> 1: generate from the base model, "rate", train
    prompts = round_prompts(cfg, 6, seed=0)
    images, emb = generate_batch(parts, None, prompts, list(range(6)), cfg)
    assert images.shape == (6, 3, 64, 64) and torch.isfinite(images).all()
    assert emb.shape == (6, parts.image_encoder.config.projection_dim)
    scores = torch.arange(6, dtype=torch.float32) % 10 + 1
    out1 = train_round(parts, emb, scores, cfg, new_index=1, prev_adapter=None, seed=0)
    assert out1.metrics["finetune_steps"] == 1 and out1.ucb is not None and out1.metrics["ucb_alpha"] == 1.0
    before = {k: v.clone() for k, v in lora.adapter_state_dict(parts.unet, out1.adapter).items()}
    assert any(v.abs().sum() > 0 for k, v in before.items() if "lora_B" in k or "lora.up" in k)  # it moved from zero
    # round 1 -> 2: the KL is now to round 1's adapter, a real reference
    images2, emb2 = generate_batch(parts, out1.adapter, prompts, list(range(100, 106)), cfg)
    out2 = train_round(parts, torch.cat([emb, emb2]), torch.cat([scores, scores.flip(0)]), cfg, new_index=2,
                       prev_adapter=out1.adapter, seed=1)
    kl = out2.metrics["finetune"]["kl_last"]
    assert kl is not None and kl >= 0 and torch.isfinite(torch.tensor(kl))
    assert not lora.adapter_state_dict(parts.unet, out1.adapter).keys() - before.keys()
    for k, v in lora.adapter_state_dict(parts.unet, out1.adapter).items():  # the reference stayed frozen
        torch.testing.assert_close(v, before[k])
    assert out1.metrics["finetune"]["mixed_precision"] == out2.metrics["finetune"]["mixed_precision"]
    return out2.metrics["finetune"]["mixed_precision"]
