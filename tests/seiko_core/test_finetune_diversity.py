"""The fine-tuning's diversity term (``finetune.diversity_weight``): checked against numpy and finite differences."""

import itertools

import numpy as np
import pytest
import torch

from seiko_core import lora
from seiko_core.config import FinetuneConfig
from seiko_core.features import embed_images_batched
from seiko_core.finetune import attached_steps, batch_variety, trajectory_loss
from seiko_core.presets import shapes
from seiko_core.sampling import DDIMSchedule


def _numpy_variety(e: np.ndarray) -> float:
    return float(np.mean([np.linalg.norm(e[i] - e[j]) for i, j in itertools.combinations(range(len(e)), 2)]))


def test_batch_variety_is_the_mean_pairwise_distance():
    e = np.random.default_rng(0).normal(size=(5, 7))
    got = batch_variety(torch.from_numpy(e)).item()
    assert got == pytest.approx(_numpy_variety(e), rel=1e-9)


def test_batch_variety_gradient_matches_central_differences():
    rng = np.random.default_rng(1)
    e = torch.from_numpy(rng.normal(size=(6, 4))).requires_grad_(True)
    batch_variety(e).backward()
    direction = torch.from_numpy(rng.normal(size=(6, 4)))
    h = 1e-6
    with torch.no_grad():
        fd = (batch_variety(e + h * direction) - batch_variety(e - h * direction)).item() / (2 * h)
    assert float((e.grad * direction).sum()) == pytest.approx(fd, rel=1e-6)


def test_identical_rows_give_a_zero_gradient_not_nan_and_one_row_gives_zero():
    e = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    v = batch_variety(e)
    v.backward()
    assert v.item() == pytest.approx(0.0, abs=1e-5)
    assert torch.isfinite(e.grad).all() and e.grad.abs().max() == 0
    one = torch.randn(1, 4, requires_grad=True)
    v1 = batch_variety(one)
    v1.backward()
    assert v1.item() == 0.0 and one.grad.abs().max() == 0


def _loss(parts, weight, prompts, seeds, trainable):
    cfg = shapes()
    ft = cfg.finetune
    ft.diversity_weight = weight
    sched = DDIMSchedule.from_scheduler(parts.scheduler, 3)
    attached = attached_steps(3, "per_trajectory", 2, torch.Generator().manual_seed(0))
    for p in trainable:
        p.grad = None
    loss, r, traj = trajectory_loss(parts, lambda im, pr: im[:, 0].mean((1, 2)), prompts, seeds, ft, schedule=sched, eta=1.0,
                                    guidance=3.0, attached=attached, adapter="round_1", reference=None, trainable=trainable)
    loss.backward()
    return loss.item(), traj.images.detach(), [p.grad.clone() for p in trainable], ft.loss_coeff


def test_the_term_in_the_loss_is_the_batch_variety_of_the_encoders_embeddings(random_parts):
    """loss(w) - loss(0) = -loss_coeff * w * V, with V computed by numpy from the encoder's no-grad embeddings of the
    same images; and the term's gradient reaches the adapter (the two gradients differ)."""
    unet = random_parts.unet
    params = lora.add_adapter(unet, "round_1", shapes().finetune)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    lora.activate(unet, "round_1")
    unet.train()
    prompts, seeds = ["a red circle", "a blue square", "a shape"], [1, 2, 3]
    try:
        base, images, grad0, coeff = _loss(random_parts, 0.0, prompts, seeds, params)
        with_term, images_w, grad_w, _ = _loss(random_parts, 5.0, prompts, seeds, params)
    finally:
        unet.eval()
    torch.testing.assert_close(images, images_w)  # the same trajectories (same seeds, same weights)
    v = _numpy_variety(embed_images_batched(random_parts, images).double().numpy())
    assert v > 0
    assert with_term - base == pytest.approx(-coeff * 5.0 * v, rel=1e-4, abs=1e-6)
    assert any(not torch.allclose(a, b) for a, b in zip(grad0, grad_w))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_diversity_weight_is_refused_in_one_sentence(bad):
    with pytest.raises(ValueError, match="diversity_weight must be a non-negative number"):
        FinetuneConfig(diversity_weight=bad)
