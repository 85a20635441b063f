"""The trajectory KL term near the previous round's adapter, in fp32 and under bf16 / fp16 autocast
(docs/sd15-memory.md, "The KL term's rounding under bf16"):

    python -m app.tools.kl_bf16                                         # tiny random model, CPU, fp32 and bf16
    python -m app.tools.kl_bf16 --model sd15-arch --device cuda --precisions fp32 bf16 fp16 --per-value

``--model tiny`` is the tiny random pipeline the tests use (``seiko_core.toy.build.random_model``, built in a
temporary directory) with the shapes preset's sampling (10 DDIM steps, all attached by default). ``--model sd15-arch``
is SD 1.5's architecture from configs/sd15 with random weights (``seiko_core.bench.build_sd15_arch``, no hub) with
the ``sd15`` preset's sampling and fine-tuning settings: 50 DDIM steps, CFG 7.5, eta 1, the last 10 steps attached,
2 trajectories, the preset's LoRA start and per-block gradient checkpointing as ``finetune`` sets it.

An adapter ``previous`` is drawn at random and frozen, and an adapter ``new`` is set to ``previous + delta * u`` for
a fixed random unit direction ``u`` over all of its LoRA tensors (``--per-value``: delta times the square root of
the number of LoRA values, so that each value moves by about delta, as one optimiser step of size delta does). For
each delta the KL term is computed by ``seiko_core.finetune.trajectory_loss`` (a zero reward, ``kl_weight`` 1, so
the loss IS the batch's mean KL) in each precision: fp32 without autocast, bf16 and fp16 under the Accelerator's
autocast (``shared_accelerator(...).autocast``, what ``finetune`` passes; fp16 needs a GPU, and its backward runs at
GradScaler's starting scale 2**16, or ``--fp16-scale``, and is divided back, as the scaler does). The cosine between each precision's KL
gradient (with respect to ``new``'s LoRA tensors) and fp32's is printed ("-" if one is zero, "nan" if not finite).
Then, per precision, the seconds of one loss + gradient (median over the deltas after the first, which warms up)
and on CUDA its peak memory over the loaded model.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time

import torch

SEEDS = "model seed 0, torch.manual_seed(0) before loading, previous adapter: the preset's LoRA start under seed 0 " \
        "then + PREV_NOISE * N(0,1) (generator seed 1), direction u: N(0,1) (generator seed 2) normalised, sampling seeds 0..B-1"
FP16_SCALE = 2.0 ** 16  # torch.amp.GradScaler's default starting scale


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float().cpu() for t in tensors])


def _cosine(a: torch.Tensor, b: torch.Tensor) -> str:
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return "nan"
    na, nb = a.norm(), b.norm()
    return "-" if na == 0 or nb == 0 else f"{float(a @ b / (na * nb)):.3f}"


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, epilog=f"Fixed seeds: {SEEDS}.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", choices=["tiny", "sd15-arch"])
    p.add_argument("--device", default="cpu", help="cpu | cuda (default cpu)")
    p.add_argument("--size", type=int, default=None, help="sd15-arch only: latent side (default 64 = 512 px)")
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"],
                   help="fp32 is always computed first: the others are compared with it (default: fp32 bf16)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: 10 tiny, 50 sd15-arch)")
    p.add_argument("--attached", type=int, default=None,
                   help="last steps that keep their graph and a KL term (default: all 10 tiny, 10 sd15-arch)")
    p.add_argument("--batch", type=int, default=None, help="trajectories (default: 4 tiny, 2 sd15-arch)")
    p.add_argument("--deltas", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4])
    p.add_argument("--per-value", action="store_true", help="delta is the size of each value's move, not the step's")
    p.add_argument("--prev-noise", type=float, default=None,
                   help="std of the N(0,1) noise added to the previous adapter's values (default: 0.2 tiny; 0.02 "
                        "sd15-arch, as seiko_core.bench's adapters, since SD 1.5's wide layers amplify it)")
    p.add_argument("--no-tf32", action="store_true",
                   help="CUDA: fp32 convolutions and matmuls in full fp32 (PyTorch's default lets cuDNN's convolutions "
                        "use TF32, whose 10-bit mantissa is fp16's)")
    p.add_argument("--fp16-scale", type=_positive, default=FP16_SCALE,
                   help="the scale of fp16's backward (default 2**16, GradScaler's start); the product's KL gradient "
                        "runs at about start x kl_weight / grad_accum (about 20 for the sd15 preset)")
    p.add_argument("--threads", type=int, default=2)
    return p


def _load(args):
    """(parts, cfg) for ``args.model``."""
    from seiko_core.models import load_model
    from seiko_core.presets import sd15, shapes

    if args.model == "sd15-arch":
        from seiko_core.bench import build_sd15_arch

        with tempfile.TemporaryDirectory() as tmp:
            return build_sd15_arch(args.device, sample_size=args.size, seed=0, workdir=tmp), sd15()
    if args.size is not None:
        raise SystemExit("--size applies to --model sd15-arch only")
    from seiko_core.toy.build import random_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model(tmp, seed=0)
        torch.manual_seed(0)
        return load_model(str(model_dir), device=args.device), shapes()


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if "fp16" in args.precisions and device.type != "cuda":
        raise SystemExit("fp16 autocast needs a GPU (--device cuda); on the CPU compare fp32 and bf16")
    precisions = ["fp32"] + [p for p in dict.fromkeys(args.precisions) if p != "fp32"]

    from seiko_core import lora
    from seiko_core.accel import shared_accelerator
    from seiko_core.finetune import attached_steps, trajectory_loss
    from seiko_core.presets import SHAPES_PROMPTS
    from seiko_core.sampling import DDIMSchedule

    torch.set_num_threads(args.threads)
    if args.no_tf32:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    tf32 = "off" if args.no_tf32 else f"convolutions {'on' if torch.backends.cudnn.allow_tf32 else 'off'}, " \
        f"matmuls {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}"
    start = time.time()
    parts, cfg = _load(args)
    sd15 = args.model == "sd15-arch"
    steps = args.steps or (cfg.sampling.steps if sd15 else 10)
    attached_k = args.attached or (cfg.finetune.truncation_k if sd15 else steps)
    batch = args.batch or (cfg.finetune.batch_size if sd15 else 4)
    ft = dataclasses.replace(cfg.finetune, kl_weight=1.0, truncation="per_trajectory", truncation_k=attached_k,
                             diversity_weight=0.0, diversity_balance=0.0)
    prev_noise = args.prev_noise if args.prev_noise is not None else (0.02 if sd15 else 0.2)
    unet = parts.unet
    prev = lora.add_adapter(unet, "previous", ft, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for t in prev:
            t.add_(prev_noise * torch.randn(t.shape, generator=g).to(t))
            t.requires_grad_(False)
    new = lora.add_adapter(unet, "new", ft, init_from="previous", seed=0)
    g = torch.Generator().manual_seed(2)
    u = [torch.randn(t.shape, generator=g).to(t) for t in new]
    norm = _flat(u).norm()
    u = [d / norm for d in u]
    n_values = _flat(new).numel()
    lora.activate(unet, "new")
    for t in new:
        t.requires_grad_(True)
    unet.train()  # as finetune does
    if ft.gradient_checkpointing:
        unet.enable_gradient_checkpointing()

    schedule = DDIMSchedule.from_scheduler(parts.scheduler, steps)
    attached = attached_steps(steps, ft.truncation, ft.truncation_k, torch.Generator().manual_seed(0))
    prompts = [SHAPES_PROMPTS[j % len(SHAPES_PROMPTS)] for j in range(batch)]
    seeds = list(range(batch))

    def zero_reward(images, _prompts):
        return images.flatten(1).sum(1) * 0.0

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    cost: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}

    def kl_and_grad(precision: str):
        autocast = None if precision == "fp32" else shared_accelerator(precision, cpu=device.type == "cpu").autocast
        scale = args.fp16_scale if precision == "fp16" else 1.0
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base_mem = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        loss, _, traj = trajectory_loss(parts, zero_reward, prompts, seeds, ft, schedule=schedule,
                                        eta=cfg.sampling.eta, guidance=cfg.sampling.guidance, attached=attached,
                                        adapter="new", reference="previous", trainable=new, autocast=autocast)
        grads = torch.autograd.grad(loss * scale, new, allow_unused=True)
        grads = [torch.zeros_like(t) if gr is None else gr / scale for t, gr in zip(new, grads)]
        sync()
        seconds = time.perf_counter() - t0
        peak = (torch.cuda.max_memory_allocated(device) - base_mem) / 2**30 if device.type == "cuda" else float("nan")
        cost[precision].append((seconds, peak))
        return float(traj.kl.detach().mean()), _flat(grads)

    where = "SD 1.5 architecture (random weights)" if sd15 else "tiny random model"
    side = 8 * int(unet.config.sample_size)
    print(f"{where} on {device}, {side}x{side}, {steps} DDIM steps, last {attached_k} attached, {batch} trajectories, "
          f"guidance {cfg.sampling.guidance}, eta {cfg.sampling.eta}, gradient checkpointing "
          f"{'on' if ft.gradient_checkpointing else 'off'}, TF32 {tf32 if device.type == 'cuda' else 'n/a'}, {len(new)} LoRA tensors ({n_values} values)")
    print(f"seeds: {SEEDS.replace('PREV_NOISE', f'{prev_noise:g}')}\n")
    scale = n_values ** 0.5 if args.per_value else 1.0
    head = "| delta per value |" if args.per_value else "| delta |"
    others = precisions[1:]
    print(head + "".join(f" KL, {p} |" for p in precisions) + "".join(f" cosine {p} vs fp32 |" for p in others))
    print("|---:|" + "---:|" * (len(precisions) + len(others)))
    base = [t.detach().clone() for t in new]
    for delta in args.deltas:
        with torch.no_grad():
            for t, b, d in zip(new, base, u):
                t.copy_(b + delta * scale * d)
        results = {p: kl_and_grad(p) for p in precisions}
        g32 = results["fp32"][1]
        row = f"| {delta:g} |" + "".join(f" {results[p][0]:.3g} |" for p in precisions)
        print(row + "".join(f" {_cosine(results[p][1], g32)} |" for p in others), flush=True)

    print("\n| precision | seconds per loss + gradient (median; all) | peak GiB over the loaded model |\n|---|---|---|")
    for p in precisions:
        timed = cost[p][1:] or cost[p]
        secs = [s for s, _ in timed]
        peak = max(m for _, m in cost[p])
        print(f"| {p} | {statistics.median(secs):.2f} ({', '.join(f'{s:.2f}' for s in secs)}) | "
              f"{'-' if peak != peak else f'{peak:.2f}'} |")
    print(f"{time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
