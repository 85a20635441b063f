"""The trajectory KL term near the previous round's adapter, in fp32 and under bf16 autocast (docs/sd15-memory.md,
"Not measured: the KL term's rounding under bf16"):

    python -m app.tools.kl_bf16

On the tiny random pipeline the tests use (``seiko_core.toy.build.random_model``, built in a temporary directory,
nothing downloaded) an adapter ``previous`` is drawn at random and frozen, and an adapter ``new`` is set to
``previous + delta * u`` for a fixed random unit direction ``u`` over all of its LoRA tensors. For each delta the
KL term is computed by ``seiko_core.finetune.trajectory_loss`` (a zero reward, ``kl_weight`` 1, so the loss IS the
batch's mean KL; the preset's guidance and eta; the last ``--attached`` steps keep their graph, per_trajectory as
in the sd15 preset, whose truncation_k of 10 attaches all 10 steps here) once in fp32 and once under the
Accelerator's bf16 autocast (``shared_accelerator("bf16", cpu=True).autocast``, what ``finetune`` passes), and the
cosine between the two KL gradients with respect to ``new``'s LoRA tensors is printed ("-" if one is zero).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import torch

SEEDS = "model seed 0 (random_model), torch.manual_seed(0) before loading, previous adapter: peft init under seed 0 " \
        "then + 0.2 * N(0,1) (generator seed 1), direction u: N(0,1) (generator seed 2) normalised, sampling seeds 0..B-1"


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1).float() for t in tensors])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, epilog=f"Fixed seeds: {SEEDS}.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="DDIM steps (default 10)")
    p.add_argument("--attached", type=int, default=10, help="last steps that keep their graph and a KL term (default 10)")
    p.add_argument("--batch", type=int, default=4, help="trajectories (the first B shapes prompts, seeds 0..B-1; default 4)")
    p.add_argument("--deltas", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3, 1e-4])
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    from seiko_core import lora
    from seiko_core.accel import shared_accelerator
    from seiko_core.finetune import attached_steps, trajectory_loss
    from seiko_core.models import load_model
    from seiko_core.presets import SHAPES_PROMPTS, shapes
    from seiko_core.sampling import DDIMSchedule
    from seiko_core.toy.build import random_model

    torch.set_num_threads(args.threads)
    start = time.time()
    cfg = shapes()
    ft = dataclasses.replace(cfg.finetune, kl_weight=1.0, truncation="per_trajectory", truncation_k=args.attached,
                             diversity_weight=0.0, diversity_balance=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model(tmp, seed=0)
        torch.manual_seed(0)
        parts = load_model(str(model_dir), device="cpu")
    unet = parts.unet
    prev = lora.add_adapter(unet, "previous", ft, seed=0)
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        for t in prev:
            t.add_(0.2 * torch.randn(t.shape, generator=g))
            t.requires_grad_(False)
    new = lora.add_adapter(unet, "new", ft, init_from="previous", seed=0)
    g = torch.Generator().manual_seed(2)
    u = [torch.randn(t.shape, generator=g) for t in new]
    norm = _flat(u).norm()
    u = [d / norm for d in u]
    lora.activate(unet, "new")
    for t in new:
        t.requires_grad_(True)
    unet.train()  # as finetune does

    schedule = DDIMSchedule.from_scheduler(parts.scheduler, args.steps)
    attached = attached_steps(args.steps, ft.truncation, ft.truncation_k, torch.Generator().manual_seed(0))
    prompts = list(SHAPES_PROMPTS[:args.batch])
    seeds = list(range(args.batch))
    bf16 = shared_accelerator("bf16", cpu=True).autocast

    def zero_reward(images, _prompts):
        return images.flatten(1).sum(1) * 0.0

    def kl_and_grad(autocast):
        loss, _, traj = trajectory_loss(parts, zero_reward, prompts, seeds, ft, schedule=schedule, eta=cfg.sampling.eta,
                                        guidance=cfg.sampling.guidance, attached=attached, adapter="new",
                                        reference="previous", trainable=new, autocast=autocast)
        grads = torch.autograd.grad(loss, new, allow_unused=True)
        grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip(new, grads)]
        return float(traj.kl.detach().mean()), _flat(grads)

    print(f"tiny random model, {args.steps} DDIM steps, last {args.attached} attached, {args.batch} trajectories, "
          f"guidance {cfg.sampling.guidance}, eta {cfg.sampling.eta}, {len(new)} LoRA tensors ({_flat(new).numel()} values)")
    print(f"seeds: {SEEDS}\n")
    print("| delta | KL, fp32 | KL, bf16 | cosine of the two KL gradients |\n|---:|---:|---:|---:|")
    base = [t.detach().clone() for t in new]
    for delta in args.deltas:
        with torch.no_grad():
            for t, b, d in zip(new, base, u):
                t.copy_(b + delta * d)
        kl32, g32 = kl_and_grad(None)
        kl16, g16 = kl_and_grad(bf16)
        n32, n16 = g32.norm(), g16.norm()
        cos = "-" if n32 == 0 or n16 == 0 else f"{float(g32 @ g16 / (n32 * n16)):.3f}"
        print(f"| {delta:g} | {kl32:.3g} | {kl16:.3g} | {cos} |", flush=True)
    print(f"{time.time() - start:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
