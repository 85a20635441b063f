"""The process's Accelerator (made once, another mixed precision in the same process), fp16-style loss scaling through
accelerator.backward, the one flat gradient collective, and data parallelism as one process with the global batch."""

from __future__ import annotations

import threading

import pytest
import torch

from seiko_core import lora
from seiko_core.accel import reduce_gradients, shared_accelerator
from seiko_core.finetune import finetune
from seiko_core.models import load_model
from seiko_core.presets import shapes


def redness(images, prompts):
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def tiny_cfg(batch_size: int = 2, trajectories: int = 4):
    cfg = shapes()
    cfg.sampling.steps = 4
    cfg.finetune.batch_size = batch_size
    cfg.finetune.grad_accum = 1
    cfg.finetune.trajectories_per_epoch = trajectories
    cfg.finetune.truncation = "per_step"  # random masks: the ranks must draw the same one
    cfg.finetune.epochs = 1
    cfg.finetune.lr = 1e-2
    cfg.finetune.max_seconds = None  # the preset's time limit would make the step count depend on the machine's pace
    # a denoising anchor (lever R, off in the preset) adds a second backward and its own draws to every micro-batch; these
    # tests are about the trajectories' mechanics, and the anchor has its own (test_finetune_anchor.py)
    cfg.finetune.anchor_balance = 0.0
    return cfg


def lora_state(unet, adapter: str) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_" in n and f".{adapter}." in n}


PROMPTS = ["a red shape", "a blue shape", "a shape"]


def train(parts, cfg, accelerator=None, seed=3, add=True):
    if add:  # peft draws the A matrices from the global RNG: add adapters before any thread starts
        lora.add_adapter(parts.unet, "round_1", cfg.finetune, seed=1)
    res = finetune(parts, redness, PROMPTS, cfg, adapter="round_1", reference=None, seed=seed, accelerator=accelerator)
    return res, lora_state(parts.unet, "round_1")


def test_another_mixed_precision_in_the_same_process(random_parts):
    from accelerate import Accelerator

    cfg = tiny_cfg(trajectories=2)
    first = shared_accelerator("no", cpu=True)
    assert shared_accelerator("no", cpu=True) is first  # made once while the precision stays
    # what the worker hit: stock accelerate refuses a second Accelerator with another mixed precision in one process
    with pytest.raises(ValueError, match="already been initialized"):
        Accelerator(mixed_precision="bf16", cpu=True)
    lora.add_adapter(random_parts.unet, "round_1", cfg.finetune, seed=1)
    finetune(random_parts, redness, ["a shape"], cfg, adapter="round_1", reference=None, seed=0)
    cfg.finetune.mixed_precision = "bf16"
    lora.add_adapter(random_parts.unet, "round_2", cfg.finetune, init_from="round_1")
    res = finetune(random_parts, redness, ["a shape"], cfg, adapter="round_2", reference="round_1", seed=0)
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in res.history)
    bf16 = shared_accelerator("bf16", cpu=True)
    assert bf16 is not first and bf16.mixed_precision == "bf16"
    with bf16.autocast():  # the second job really ran under bf16 autocast
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert shared_accelerator("no", cpu=True).mixed_precision == "no"
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        shared_accelerator("fp8", cpu=True)


def test_fp16_on_the_cpu_runs_in_fp32_and_says_so(random_parts, caplog):
    """The sd15 preset's fp16 is a GPU setting. Stock accelerate accepts it on the CPU but runs without autocast while
    reporting "fp16"; the fine-tuning's own record must say what ran."""
    from accelerate import Accelerator

    from seiko_core.accel import MIXED_PRECISION

    assert "fp16" in MIXED_PRECISION
    cfg = tiny_cfg(trajectories=2)
    cfg.finetune.mixed_precision = "fp16"
    lora.add_adapter(random_parts.unet, "round_1", cfg.finetune, seed=1)
    with caplog.at_level("WARNING", logger="seiko_core.accel"):
        res = finetune(random_parts, redness, ["a shape"], cfg, adapter="round_1", reference=None, seed=0)
    assert res.metrics["mixed_precision"] == "no"
    assert "'fp16' needs a GPU: on the CPU this fine-tuning runs in fp32" in caplog.text
    acc = shared_accelerator("fp16", cpu=True)
    assert acc.mixed_precision == "no" and acc is shared_accelerator("no", cpu=True)
    with acc.autocast():
        assert not torch.is_autocast_enabled("cpu")
    # what the stock Accelerator would have reported for the same run
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    try:
        assert Accelerator(mixed_precision="fp16", cpu=True).mixed_precision == "fp16"
    finally:
        AcceleratorState._reset_state(reset_partial_state=False)
        import seiko_core.accel as accel

        accel._current, accel._current_key = None, None


class _FakeTwoRanks:
    """num_processes 2; reduce('mean') averages with a fixed tensor of the 'other rank' and counts its calls."""

    num_processes = 2

    def __init__(self, other: torch.Tensor) -> None:
        self.other, self.calls = other, 0

    def reduce(self, tensor, reduction="sum"):
        assert reduction == "mean"
        self.calls += 1
        return (tensor + self.other) / 2


def test_gradients_are_reduced_in_one_flat_collective():
    a = torch.nn.Parameter(torch.zeros(2, 3))
    b = torch.nn.Parameter(torch.zeros(4))
    c = torch.nn.Parameter(torch.zeros(1, 2))
    a.grad = torch.arange(6.0).view(2, 3)
    b.grad = None  # this rank's graph did not reach b: zeros
    c.grad = torch.tensor([[10.0, 20.0]])
    other = torch.arange(12.0) * 2  # the other rank's flat gradient, in the same order
    acc = _FakeTwoRanks(other)
    reduce_gradients(acc, [a, b, c])
    assert acc.calls == 1
    # by hand: (mine + other) / 2 element by element
    assert torch.equal(a.grad, torch.tensor([[0.0, 1.5, 3.0], [4.5, 6.0, 7.5]]))
    assert torch.equal(b.grad, torch.tensor([6.0, 7.0, 8.0, 9.0]))
    assert torch.equal(c.grad, torch.tensor([[15.0, 21.0]]))  # (10 + 20) / 2, (20 + 22) / 2


def test_loss_scaling_goes_through_accelerator_backward_and_is_undone_before_clipping(random_model_dir):
    cfg = tiny_cfg()
    cfg.finetune.grad_clip = 1e-4  # clipping active: clipping the scaled gradients would give another update
    torch.manual_seed(0)
    plain, want = train(load_model(str(random_model_dir), device="cpu"), cfg)
    acc = shared_accelerator("no", cpu=True)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)  # what accelerate makes for fp16 on a GPU
    scaled_losses = []
    original_scale = scaler.scale

    def spy(loss):
        scaled_losses.append(float(loss.detach()))
        return original_scale(loss)

    scaler.scale = spy
    acc.scaler = scaler
    try:
        torch.manual_seed(0)
        res, got = train(load_model(str(random_model_dir), device="cpu"), cfg, accelerator=acc)
    finally:
        acc.scaler = None
        vars(acc).pop("_seiko_scaler_start", None)
    assert len(scaled_losses) == res.steps * cfg.finetune.grad_accum == 2
    assert res.history[-1]["loss_scale"] == 2.0**12  # no overflow in two steps, no growth before 2000
    assert plain.history[0]["grad_norm"] > cfg.finetune.grad_clip * 10  # the clip was really cutting
    for name, tensor in want.items():  # scaling by a power of two is exact: the same update
        torch.testing.assert_close(got[name], tensor, rtol=1e-5, atol=1e-7, msg=name)
    assert any(not torch.equal(t, torch.zeros_like(t)) for n, t in got.items() if "lora_B" in n)


def test_steps_the_fp16_loss_scaler_skips_are_counted_and_logged(random_model_dir, caplog):
    """fp16's loss scaler skips a step whose gradients overflow. Nothing recorded it: a round whose every step was
    skipped counted them all in "steps" and published its start unchanged (found by review). A scale of 1e38 makes
    the first step's scaled gradients overflow, as an fp16 overflow would; at half that scale the second's do not."""
    cfg = tiny_cfg()
    acc = shared_accelerator("no", cpu=True)
    acc.scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    try:
        torch.manual_seed(0)
        with caplog.at_level("WARNING", logger="seiko_core.finetune"):
            res, _ = train(load_model(str(random_model_dir), device="cpu"), cfg, accelerator=acc)
    finally:
        acc.scaler = None
        vars(acc).pop("_seiko_scaler_start", None)
    assert res.steps == 2 and res.metrics["skipped_steps"] == 1
    assert res.metrics["loss_scale_last"] == pytest.approx(1e38 * 0.5, rel=1e-6)  # the backoff, once (a float32 scale)
    assert [h["grad_norm"] != h["grad_norm"] for h in res.history] == [True, False]  # NaN: the one that overflowed
    assert caplog.text.count("was skipped: its fp16 gradients overflowed") == 1
    assert "fine-tuning step 1 was skipped" in caplog.text
    # without a scaler (fp32, bf16) there is nothing to skip and no such count
    torch.manual_seed(0)
    plain, _ = train(load_model(str(random_model_dir), device="cpu"), cfg)
    assert "skipped_steps" not in plain.metrics


class _ThreadRank:
    """An accelerator stand-in for one of two ranks run as threads: reduce('mean') averages through a barrier."""

    num_processes = 2
    scaler = None

    def __init__(self, rank: int, box: dict, barrier: threading.Barrier) -> None:
        self.process_index, self.box, self.barrier = rank, box, barrier

    def backward(self, loss):
        loss.backward()

    def autocast(self):
        return torch.autocast("cpu", enabled=False)

    def reduce(self, tensor, reduction="sum"):
        self.box[self.process_index] = tensor.clone()
        self.barrier.wait()
        out = (self.box[0] + self.box[1]) / 2
        self.barrier.wait()
        return out


def test_two_ranks_train_like_one_process_with_the_global_batch(random_model_dir):
    """Rank r renders slice r of each global batch: 2 ranks x batch 1 == 1 process x batch 2 (same prompts, seeds, masks)."""
    torch.manual_seed(0)
    one, want = train(load_model(str(random_model_dir), device="cpu"), tiny_cfg(batch_size=2))
    box, barrier, out = {}, threading.Barrier(2, timeout=300), {}

    parts = [load_model(str(random_model_dir), device="cpu") for _ in (0, 1)]
    for p in parts:
        lora.add_adapter(p.unet, "round_1", tiny_cfg().finetune, seed=1)

    def rank(r: int) -> None:
        try:
            out[r] = train(parts[r], tiny_cfg(batch_size=1), accelerator=_ThreadRank(r, box, barrier), add=False)
        except BaseException as exc:  # reported below: a thread's exception would be lost otherwise
            out[r] = exc
            barrier.abort()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in (0, 1):
        assert not isinstance(out[r], BaseException), out[r]
    (res0, got0), (res1, got1) = out[0], out[1]
    assert res0.steps == res1.steps == one.steps == 2
    assert res0.metrics["trajectories"] == one.metrics["trajectories"] == 4
    assert res0.history[0]["rank_reward"] != res1.history[0]["rank_reward"]  # the ranks rendered different trajectories
    # the global batch's mean reward is the mean of the ranks' (batch halves of equal size)
    assert abs((res0.history[0]["rank_reward"] + res1.history[0]["rank_reward"]) / 2 - one.history[0]["reward"]) < 1e-5
    # and that is what every rank logs: the one process's figures, not its own share (found by review)
    for h0, h1, h in zip(res0.history, res1.history, one.history):
        for key in ("reward", "kl", "loss"):
            assert h0[key] == h1[key] and abs(h0[key] - h[key]) < 1e-5 * max(1.0, abs(h[key])), (key, h0, h)
    for h0, h1, h in zip(res0.history, res1.history, one.history):  # the same averaged gradient, step by step
        assert h0["grad_norm"] == h1["grad_norm"] and abs(h0["grad_norm"] - h["grad_norm"]) < 1e-5 * h["grad_norm"]
    lr = tiny_cfg().finetune.lr
    for name, tensor in want.items():
        assert torch.equal(got0[name], got1[name]), name  # identical ranks
        # Adam divides by sqrt(v): float noise in a near-zero gradient moves that weight by up to ~lr; measured 8.5e-5
        torch.testing.assert_close(got0[name], tensor, rtol=0, atol=0.03 * lr, msg=name)
