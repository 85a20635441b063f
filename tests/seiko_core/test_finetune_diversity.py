"""The fine-tuning's diversity term (``finetune.diversity_weight``): checked against numpy and finite differences."""

import itertools

import numpy as np
import pytest
import torch

from seiko_core import lora
from seiko_core.config import FinetuneConfig
from seiko_core.features import embed_images_batched
from seiko_core.finetune import attached_steps, balanced_diversity_weight, batch_variety, trajectory_loss
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


def _moved_adapter(parts) -> list[torch.nn.Parameter]:
    """Adapter "round_1" added, moved off zero (so the images depend on it), active, and the UNet in training mode."""
    params = lora.add_adapter(parts.unet, "round_1", shapes().finetune)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    lora.activate(parts.unet, "round_1")
    parts.unet.train()
    return params


def test_the_term_in_the_loss_is_the_batch_variety_of_the_encoders_embeddings(random_parts):
    """loss(w) - loss(0) = -loss_coeff * w * V, with V computed by numpy from the encoder's no-grad embeddings of the
    same images; and the term's gradient reaches the adapter (the two gradients differ)."""
    unet = random_parts.unet
    params = _moved_adapter(random_parts)
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


def _numpy_variety_gradient(x: np.ndarray) -> np.ndarray:
    """d/dx of the mean pairwise distance, in closed form: (1/P) sum over j != i of (x_i - x_j) / |x_i - x_j|."""
    pairs = list(itertools.combinations(range(len(x)), 2))
    g = np.zeros_like(x)
    for i, j in pairs:
        u = (x[i] - x[j]) / np.linalg.norm(x[i] - x[j])
        g[i] += u
        g[j] -= u
    return g / len(pairs)


@pytest.mark.parametrize("balance", [0.5, 2.0])
def test_the_balanced_weight_gives_the_stated_ratio_of_image_gradients(balance):
    """Against closed forms: a linear reward term a.x has gradient a; the variety's gradient is the numpy sum of unit
    vectors. The weight must make |w * grad(variety term)| = balance * |a|."""
    rng = np.random.default_rng(4)
    x_np, a_np = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
    x = torch.from_numpy(x_np).requires_grad_(True)
    coeff = 0.01
    reward_term = (torch.from_numpy(a_np) * x).sum()
    variety_term = -coeff * batch_variety(x)
    w = balanced_diversity_weight(reward_term, variety_term, x, balance)
    expected = balance * np.linalg.norm(a_np) / (coeff * np.linalg.norm(_numpy_variety_gradient(x_np)))
    assert float(w) == pytest.approx(expected, rel=1e-5)
    assert not w.requires_grad
    # the graph is kept for the loss's own backward, and w enters it as a constant
    (reward_term + w * variety_term).backward()
    np.testing.assert_allclose(x.grad.numpy(), a_np - coeff * float(w) * _numpy_variety_gradient(x_np), rtol=1e-6)


def test_the_balanced_weight_is_zero_without_a_graph_a_variety_gradient_or_a_reward_gradient():
    same = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    assert float(balanced_diversity_weight((2 * same).sum(), -batch_variety(same), same, 0.5)) == 0.0
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    flat = x.sum() * 0.0
    assert float(balanced_diversity_weight(flat, -batch_variety(x), x, 0.5)) == 0.0
    constant = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)  # a reward term that does not read x
    assert float(balanced_diversity_weight(constant * 2, -batch_variety(x), x, 0.5)) == 0.0
    detached_reward = torch.tensor(3.0)  # a reward model that returns a detached tensor
    assert float(balanced_diversity_weight(detached_reward, -batch_variety(x), x, 0.5)) == 0.0
    detached = torch.randn(3, 4)
    assert float(balanced_diversity_weight(detached.sum(), -batch_variety(detached), detached, 0.5)) == 0.0


def test_the_balance_sets_the_loss_term_from_the_encoders_embeddings(random_parts):
    """With diversity_balance on, loss - loss(off) = -loss_coeff * w * V, V from numpy on the encoder's no-grad
    embeddings, w the weight left in the trajectory (positive and finite)."""
    unet = random_parts.unet
    params = _moved_adapter(random_parts)
    prompts, seeds = ["a red circle", "a blue square", "a shape"], [1, 2, 3]
    sched = DDIMSchedule.from_scheduler(random_parts.scheduler, 3)
    out = {}
    try:
        for balance in (0.0, 0.5):
            ft = shapes().finetune
            ft.diversity_balance = balance
            attached = attached_steps(3, "per_trajectory", 2, torch.Generator().manual_seed(0))
            loss, r, traj = trajectory_loss(random_parts, lambda im, pr: im[:, 0].mean((1, 2)), prompts, seeds, ft,
                                            schedule=sched, eta=1.0, guidance=3.0, attached=attached, adapter="round_1",
                                            reference=None, trainable=params)
            out[balance] = (loss.item(), traj.images.detach(), float(traj.diversity_weight), ft.loss_coeff)
    finally:
        unet.eval()
    (base, images, w0, coeff), (with_term, images_b, w, _) = out[0.0], out[0.5]
    torch.testing.assert_close(images, images_b)
    assert w0 == 0.0 and np.isfinite(w) and w > 0
    v = _numpy_variety(embed_images_batched(random_parts, images).double().numpy())
    assert with_term - base == pytest.approx(-coeff * w * v, rel=1e-4, abs=1e-7)


def test_finetune_records_the_balanced_weight_per_step(random_parts):
    from seiko_core.finetune import finetune
    cfg = shapes()
    ft = cfg.finetune
    ft.diversity_balance, ft.epochs, ft.trajectories_per_epoch, ft.batch_size, ft.grad_accum = 0.5, 1, 4, 2, 1
    ft.max_seconds = None
    cfg.sampling.steps = 3
    lora.add_adapter(random_parts.unet, "round_1", ft)
    res = finetune(random_parts, lambda im, pr: im[:, 0].mean((1, 2)), ["a shape", "a red circle"], cfg,
                   adapter="round_1", reference=None, seed=0)
    assert res.steps == 2
    weights = [h["diversity_weight"] for h in res.history]
    assert all(np.isfinite(weights)) and all(wt >= 0 for wt in weights) and max(weights) > 0
    assert res.metrics["diversity_weight_mean"] == pytest.approx(sum(weights) / 2)


def test_a_weight_and_a_balance_together_are_refused_in_one_sentence():
    with pytest.raises(ValueError, match="not both"):
        FinetuneConfig(diversity_weight=1.0, diversity_balance=0.5)
    with pytest.raises(ValueError, match="diversity_balance must be a non-negative number"):
        FinetuneConfig(diversity_balance=float("nan"))
