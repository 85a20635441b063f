"""Lever R's denoising anchor (``finetune.anchor_balance``): checked against diffusers' stock scheduler, the stock
sampler and closed forms."""

import math

import pytest
import torch
from diffusers import DDPMScheduler

from seiko_core import lora
from seiko_core.accel import shared_accelerator
from seiko_core.config import FinetuneConfig
from seiko_core.finetune import (
    _backward_with_anchor,
    attached_steps,
    balanced_anchor_weight,
    denoising_loss,
    finetune,
    reward_ranked_anchors,
    trajectory_loss,
)
from seiko_core.presets import shapes
from seiko_core.sampling import DDIMSchedule, decode, sample
from tests.seiko_core.test_finetune_diversity import _moved_adapter


def _red(images, prompts):
    return images[:, 0].mean((1, 2))


def _trainable_adapter(parts):
    """test_finetune_diversity's moved adapter "round_1", its parameters trainable."""
    params = _moved_adapter(parts)
    for p in params:
        p.requires_grad_(True)
    return params


def _gradient_alone(params, loss) -> list[torch.Tensor]:
    """The adapter's gradient of ``loss`` by itself (copies), the parameters' gradients left cleared."""
    for p in params:
        p.grad = None
    loss.backward()
    grads = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    return grads


def _anchor_setup(parts, candidates: int, keep: float, batch_size: int, grad_accum: int, prompts: list[str]):
    """(cfg, 3-step schedule, anchors drawn from ``prompts`` with seed 1) for an anchor balance of 0.5."""
    cfg = shapes()
    ft = cfg.finetune
    ft.anchor_balance, ft.anchor_candidates, ft.anchor_keep, ft.batch_size, ft.grad_accum = (0.5, candidates, keep,
                                                                                             batch_size, grad_accum)
    cfg.sampling.eta, cfg.sampling.guidance = 1.0, 3.0
    sched = DDIMSchedule.from_scheduler(parts.scheduler, 3)
    anchors = reward_ranked_anchors(parts, _red, prompts, cfg, schedule=sched, adapter="round_1",
                                    generator=torch.Generator().manual_seed(1))
    return cfg, sched, anchors


def test_the_denoising_loss_noises_as_the_stock_scheduler_and_scores_the_noise(random_parts):
    """x_t from diffusers' DDPMScheduler.add_noise, the UNet called directly, the squared error in numpy-free torch."""
    unet = random_parts.unet
    stock = DDPMScheduler.from_config(random_parts.scheduler.config)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, unet.config.in_channels, random_parts.sample_size, random_parts.sample_size, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([999, 500, 20])
    cond = torch.randn(3, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        got = denoising_loss(unet, x0, cond, t, stock.alphas_cumprod[t], noise, "epsilon")
        x_t = stock.add_noise(x0, noise, t)
        expected = ((unet(x_t, t, encoder_hidden_states=cond).sample - noise) ** 2).mean()
        # v-prediction: in noise space the error is sqrt(a) times the v error against the stock get_velocity target
        got_v = denoising_loss(unet, x0, cond, t, stock.alphas_cumprod[t], noise, "v_prediction")
        v_err = unet(x_t, t, encoder_hidden_states=cond).sample - stock.get_velocity(x0, noise, t)
        expected_v = (stock.alphas_cumprod[t].view(-1, 1, 1, 1) * v_err**2).mean()
    assert float(got) == pytest.approx(float(expected), rel=1e-5)
    assert float(got_v) == pytest.approx(float(expected_v), rel=1e-4)


def test_the_anchor_weight_gives_the_stated_ratio_of_gradient_norms():
    rest = [torch.tensor([3.0, 0.0]), None, torch.tensor([[4.0]])]  # norm 5
    anchor = [torch.tensor([0.0, 1.0]), torch.tensor([0.0]), None]  # norm 1
    assert balanced_anchor_weight(rest, anchor, 0.5) == pytest.approx(2.5)
    assert balanced_anchor_weight([None], anchor, 0.5) == 0.0
    assert balanced_anchor_weight(rest, [torch.zeros(2)], 0.5) == 0.0
    assert balanced_anchor_weight([torch.tensor([math.inf])], anchor, 0.5) == 0.0  # an fp16 overflow


def test_the_anchors_are_the_top_quarter_of_the_stock_samplers_images_by_reward(random_parts):
    """The candidates drawn again by the app's sampler (``sample``) from the same prompts and seeds: the kept anchors'
    rewards are the highest of those, and their latents decode to images with those rewards."""
    cfg = shapes()
    ft = cfg.finetune
    ft.anchor_candidates, ft.anchor_keep, ft.batch_size = 8, 0.25, 3
    cfg.sampling.eta, cfg.sampling.guidance = 1.0, 3.0
    prompts = ["a red circle", "a blue square", "a green triangle"]
    sched = DDIMSchedule.from_scheduler(random_parts.scheduler, 3)
    lora.add_adapter(random_parts.unet, "round_1", ft)
    lora.activate(random_parts.unet, "round_1")
    seen = []
    anchors = reward_ranked_anchors(random_parts, _red, prompts, cfg, schedule=sched, adapter="round_1",
                                    generator=torch.Generator().manual_seed(5), on_progress=lambda *a: seen.append(a))
    assert seen == [(3, 8, {"phase": "anchor"}), (6, 8, {"phase": "anchor"}), (8, 8, {"phase": "anchor"})]
    g = torch.Generator().manual_seed(5)
    chosen = [prompts[i] for i in torch.randint(0, 3, (8,), generator=g).tolist()]
    seeds = torch.randint(0, 2**62, (8,), generator=g).tolist()
    rewards = _red(sample(random_parts, chosen, seeds, steps=3, guidance=3.0, eta=1.0), chosen)
    top = torch.topk(rewards, 2)
    assert anchors.candidates == 8 and len(anchors.prompts) == 2
    torch.testing.assert_close(anchors.rewards, top.values, rtol=1e-4, atol=1e-5)
    assert anchors.prompts == [chosen[i] for i in top.indices.tolist()]
    with torch.no_grad():
        torch.testing.assert_close(_red(decode(random_parts, anchors.latents), anchors.prompts), top.values,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("world", [1, 2])
def test_one_micro_batch_adds_its_loss_gradient_and_the_weighted_anchor_gradient(random_parts, world):
    """p.grad after the call = what was there + grad(loss) / accum + w * grad(denoising loss) / accum, each taken
    alone here, with |w * grad(anchor)| = 0.5 |grad(loss)|; with 2 processes, rank 1 takes the second slice of the
    anchors drawn for the global micro-batch."""
    unet = random_parts.unet
    params = _trainable_adapter(random_parts)
    acc = shared_accelerator("no", cpu=True)
    prompts, seeds = ["a red circle", "a shape"], [1, 2]
    attached = attached_steps(3, "per_trajectory", 2, None)
    rank = world - 1
    try:
        cfg, sched, anchors = _anchor_setup(random_parts, 4, 1.0, 2, 2, prompts)
        ft = cfg.finetune
        assert len(anchors.prompts) == 4

        def loss_now():
            return trajectory_loss(random_parts, _red, prompts, seeds, ft, schedule=sched, eta=1.0, guidance=3.0,
                                   attached=attached, adapter="round_1", reference="skip", trainable=params)[0]

        rest = _gradient_alone(params, loss_now())
        g = torch.Generator().manual_seed(9)  # the global micro-batch's draws, in the documented order
        k = min(2 * world, 4)
        pick = torch.randperm(4, generator=g)[:k]
        at = torch.randint(0, 3, (k,), generator=g)
        noise = torch.randn((k, *anchors.latents.shape[1:]), generator=g)
        mine = slice(2 * rank, 2 * rank + 2)
        denoising_loss(unet, anchors.latents[pick[mine]], anchors.cond[pick[mine]], sched.timesteps[at[mine]].long(),
                       sched.alpha[at[mine]], noise[mine], sched.prediction_type).backward()
        anchor = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]
        before = [torch.full_like(p, 0.125) for p in params]
        for p, b in zip(params, before):
            p.grad = b.clone()
        w = _backward_with_anchor(acc, unet, params, loss_now(), anchors, torch.Generator().manual_seed(9), ft, sched,
                                  rank=rank, world=world)
    finally:
        unet.eval()
    norm = lambda gs: math.sqrt(sum(float((x**2).sum()) for x in gs))  # noqa: E731
    assert w > 0 and w * norm(anchor) == pytest.approx(0.5 * norm(rest), rel=1e-4)
    for p, b, r, a in zip(params, before, rest, anchor):
        torch.testing.assert_close(p.grad, b + (r + w * a) / 2, rtol=1e-4, atol=1e-7)


def test_a_rank_with_no_anchor_left_adds_its_loss_gradient_alone(random_parts):
    """One anchor, 2 processes of batch 1: rank 1's slice is empty; its gradient is the loss's alone."""
    unet = random_parts.unet
    params = _trainable_adapter(random_parts)
    try:
        cfg, sched, anchors = _anchor_setup(random_parts, 2, 0.5, 1, 1, ["a shape"])
        ft = cfg.finetune
        assert len(anchors.prompts) == 1

        def loss_now():
            return trajectory_loss(random_parts, _red, ["a shape"], [4], ft, schedule=sched, eta=1.0, guidance=3.0,
                                   attached=attached_steps(3, "per_trajectory", 2, None), adapter="round_1",
                                   reference="skip", trainable=params)[0]

        rest = _gradient_alone(params, loss_now())
        w = _backward_with_anchor(shared_accelerator("no", cpu=True), unet, params, loss_now(), anchors,
                                  torch.Generator().manual_seed(9), ft, sched, rank=1, world=2)
    finally:
        unet.eval()
    assert w == 0.0
    for p, r in zip(params, rest):
        torch.testing.assert_close(p.grad, r, rtol=1e-5, atol=1e-8)


def test_the_anchors_drawing_counts_against_the_rounds_time_limit(random_parts, monkeypatch):
    """A driven clock: the drawing takes 30 of a 40 s limit, each step 4 s: 2 steps fit, not 10 (with spent = 0)."""
    import seiko_core.finetune as finetune_module

    now = [0.0]
    monkeypatch.setattr(finetune_module, "_clock", lambda: now[0])
    real_anchors = finetune_module.reward_ranked_anchors

    def slow_anchors(*args, **kwargs):
        now[0] += 30.0
        return real_anchors(*args, **kwargs)

    monkeypatch.setattr(finetune_module, "reward_ranked_anchors", slow_anchors)
    cfg = shapes()
    ft = cfg.finetune
    ft.anchor_balance, ft.anchor_candidates, ft.epochs, ft.trajectories_per_epoch, ft.batch_size = 0.5, 2, 10, 1, 1
    ft.grad_accum, ft.max_seconds = 1, 40.0
    cfg.sampling.steps = 3

    def reward(images, prompts):
        now[0] += 4.0 if images.requires_grad else 0.0  # a training step's reward call: 4 s
        return _red(images, prompts)

    lora.add_adapter(random_parts.unet, "round_1", ft, seed=0)
    res = finetune(random_parts, reward, ["a shape"], cfg, adapter="round_1", reference=None, seed=0)
    assert res.metrics["anchor"]["seconds"] == pytest.approx(30.0)
    assert res.steps == 2 and res.metrics["stopped_by_time"]


def test_finetune_with_the_anchor_draws_the_same_trajectories_and_records_the_anchor(random_parts):
    """The anchor has its own random stream: step 1's reward (same weights, same trajectories) is the one without it."""
    out = {}
    for balance in (0.0, 0.5):
        cfg = shapes()
        ft = cfg.finetune
        ft.anchor_balance, ft.anchor_candidates, ft.epochs, ft.trajectories_per_epoch, ft.batch_size = balance, 4, 1, 4, 2
        ft.grad_accum, ft.max_seconds = 1, None
        cfg.sampling.steps = 3
        name = f"round_{1 + int(balance * 2)}"
        lora.add_adapter(random_parts.unet, name, ft, seed=0)
        out[balance] = finetune(random_parts, _red, ["a shape", "a red circle"], cfg, adapter=name, reference=None, seed=0)
    off, on = out[0.0], out[0.5]
    assert on.history[0]["reward"] == pytest.approx(off.history[0]["reward"], rel=1e-6)
    assert "anchor" not in off.metrics and "anchor_weight" not in off.history[0]
    anchor = on.metrics["anchor"]
    assert anchor["kept"] == 1 and anchor["candidates"] == 4 and anchor["seconds"] >= 0
    weights = [h["anchor_weight"] for h in on.history]
    assert len(weights) == 2 and all(math.isfinite(w) and w >= 0 for w in weights) and max(weights) > 0
    assert anchor["weight_mean"] == pytest.approx(sum(weights) / 2)


@pytest.mark.parametrize("field,bad,sentence", [
    ("anchor_balance", float("nan"), "anchor_balance must be a non-negative number"),
    ("anchor_balance", -0.5, "anchor_balance must be a non-negative number"),
    ("anchor_candidates", 0, "anchor_candidates must be at least 1"),
    ("anchor_keep", 0.0, "anchor_keep must be a fraction in"),
    ("anchor_keep", 1.5, "anchor_keep must be a fraction in"),
])
def test_a_bad_anchor_setting_is_refused_in_one_sentence(field, bad, sentence):
    with pytest.raises(ValueError, match=sentence):
        FinetuneConfig(**{field: bad})


@pytest.mark.parametrize("with_scaler", [True, False])
def test_an_anchor_gradient_that_overflowed_reaches_the_loss_scaler_or_is_left_out(random_parts, monkeypatch, caplog,
                                                                                   with_scaler):
    """fp16: the overflow must reach the scaler (which then skips the step), not vanish as a weight of 0; without a
    scaler the micro-batch leaves the anchor out, with a warning, and keeps its loss's gradient."""
    import contextlib

    import seiko_core.finetune as finetune_module

    class Acc:
        scaler = object() if with_scaler else None

        def backward(self, loss):
            loss.backward()

        def autocast(self):
            return contextlib.nullcontext()

    real = finetune_module.denoising_loss
    monkeypatch.setattr(finetune_module, "denoising_loss", lambda *a: real(*a) * 1e39)  # inf in float32
    unet = random_parts.unet
    params = _trainable_adapter(random_parts)
    try:
        cfg, sched, anchors = _anchor_setup(random_parts, 2, 1.0, 2, 1, ["a shape"])
        ft = cfg.finetune
        loss = trajectory_loss(random_parts, _red, ["a shape", "a red circle"], [4, 5], ft, schedule=sched, eta=1.0,
                               guidance=3.0, attached=attached_steps(3, "per_trajectory", 2, None), adapter="round_1",
                               reference="skip", trainable=params)[0]
        for p in params:
            p.grad = None
        with caplog.at_level("WARNING", logger="seiko_core.finetune"):
            w = _backward_with_anchor(Acc(), unet, params, loss, anchors, torch.Generator().manual_seed(9), ft, sched)
    finally:
        unet.eval()
    finite = all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None)
    if with_scaler:
        assert w == 1.0 and not finite
    else:
        assert w == 0.0 and finite and "not finite" in caplog.text
