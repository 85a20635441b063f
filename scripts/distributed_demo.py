"""Data-parallel SEIKO training of one round on N processes; every rank must end with the same adapter.

    accelerate launch --multi_gpu --num_processes 2 scripts/distributed_demo.py --cpu --expect-processes 2   # 2 CPU processes (gloo)
    accelerate launch --multi_gpu --num_processes 4 scripts/distributed_demo.py --model models/shapes-sd --out /tmp/round_1  # 4 GPUs

``--multi_gpu`` is what makes accelerate start N processes (through torchrun), also on a machine without
GPUs; ``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple launcher), which
``--expect-processes 2`` turns into an error instead of a silently undistributed run.

Every rank loads the same base model (``--model``, or a tiny random-weight one built with the same seed),
samples the same labelled batch, fits the same reward ensemble (same seed) and then runs
``seiko_core.loop.train_round`` with the accelerator: each rank samples its OWN fine-tuning trajectories
(the seeds differ per rank) and ``seiko_core.finetune`` averages the LoRA gradients across ranks before
every optimiser step, so the ranks stay identical. Rank 0 gathers a checksum of every rank's adapter and
fails unless they are all equal; with ``--out`` it saves the adapter (``seiko_core.lora.save_adapter``).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from seiko_core import lora
from seiko_core.loop import generate_batch, round_prompts, train_round
from seiko_core.models import load_model
from seiko_core.presets import shapes


def digest(tensors: list[torch.Tensor]) -> int:
    """A signed 64-bit number from the sha256 of the tensors' bytes (gatherable as one int64)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return int.from_bytes(h.digest()[:8], "big", signed=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model directory (default: build a tiny random-weight one)")
    parser.add_argument("--steps", type=int, default=2, help="optimiser steps of the fine-tuning (default 2)")
    parser.add_argument("--labels", type=int, default=8, help="size of the synthetic labelled batch (default 8)")
    parser.add_argument("--sampling-steps", type=int, default=3, help="DDIM steps (default 3: a smoke test)")
    parser.add_argument("--out", help="directory to save the trained adapter to (rank 0)")
    parser.add_argument("--cpu", action="store_true", help="run on CPU even if a GPU is present")
    parser.add_argument("--expect-processes", type=int, help="fail unless the launcher started this many processes")
    args = parser.parse_args(argv)

    if args.model:
        model_dir = Path(args.model)
    else:  # built before the process group forms: transformers then writes weights on rank 0 only (found by review)
        from seiko_core.toy.build import random_model

        rank_env = os.environ.get("RANK", "0")
        model_dir = random_model(tempfile.mkdtemp(prefix=f"seiko-demo-rank{rank_env}-"), seed=0)
    acc = Accelerator(cpu=args.cpu or not torch.cuda.is_available())
    world = acc.num_processes
    if args.expect_processes is not None and world != args.expect_processes:
        print(f"FAILED: expected {args.expect_processes} processes but the launcher started {world} "
              "(accelerate launch needs --multi_gpu to start several, also on CPU)", file=sys.stderr)
        return 1
    set_seed(0)  # the same LoRA initialisation on every rank
    parts = load_model(str(model_dir), device=acc.device)
    base = digest([p for _, p in sorted(parts.unet.named_parameters())])

    cfg = shapes()
    cfg.sampling.steps = args.sampling_steps
    cfg.finetune.batch_size, cfg.finetune.grad_accum, cfg.finetune.epochs = 2, 1, 1
    cfg.finetune.trajectories_per_epoch = args.steps * cfg.finetune.batch_size * world
    cfg.finetune.truncation_k = 1
    cfg.reward.max_epochs = 20

    # The labelled data every rank shares: the same prompts and seeds give the same images; "redness" is the label.
    prompts = round_prompts(cfg, args.labels, seed=0)
    images, embeddings = generate_batch(parts, None, prompts, list(range(args.labels)), cfg)
    scores = 1 + 9 * (images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3)) + 1) / 2

    outcome = train_round(parts, embeddings, scores, cfg, new_index=1, prev_adapter=None, seed=0, accelerator=acc)
    params = lora.lora_parameters(parts.unet, outcome.adapter)
    mine = torch.tensor([base, digest(params)], dtype=torch.int64, device=acc.device)
    first = outcome.finetune.history[0]
    first_reward = torch.tensor([first.get("rank_reward", first["reward"]), first["reward"]], dtype=torch.float64,
                                device=acc.device)  # this rank's own share, and the global batch's (all ranks')
    trained = torch.tensor([max(float(p.detach().abs().max()) for n, p in parts.unet.named_parameters()
                                if "lora_B" in n and f".{outcome.adapter}." in n)], device=acc.device)
    everyone = acc.gather(mine).view(world, 2).cpu()
    rewards_both = acc.gather(first_reward).view(world, 2).cpu()
    rewards, logged = rewards_both[:, 0], rewards_both[:, 1]
    moved = acc.gather(trained).cpu()

    status = 0
    if acc.is_main_process:
        problems = []
        if len(set(everyone[:, 0].tolist())) != 1:
            problems.append("the ranks loaded different base weights")
        if len(set(everyone[:, 1].tolist())) != 1:
            problems.append(f"the ranks ended with different adapters (checksums {everyone[:, 1].tolist()})")
        if not bool((moved > 0).all()):
            problems.append("the adapter did not change (lora_B is still zero)")
        if world > 1 and len(set(rewards.tolist())) == 1:
            problems.append("every rank sampled the same trajectories (expected per-rank seeds)")
        # the logged metrics are the global batch's: the same on every rank, the mean of the ranks' own shares
        if len(set(logged.tolist())) != 1 or abs(float(logged[0]) - float(rewards.mean())) > 1e-5 * max(1.0, abs(float(logged[0]))):
            problems.append(f"the logged first-step reward {logged.tolist()} is not the mean of the ranks' own "
                            f"{rewards.tolist()}")
        if problems:
            print(f"FAILED on {world} processes: " + "; ".join(problems), file=sys.stderr)
            status = 1
        else:
            print(f"OK: {world} processes ({acc.device.type}), {outcome.finetune.steps} steps; first-step rewards per rank "
                  f"{[round(r, 4) for r in rewards.tolist()]}; identical adapter checksum {everyone[0, 1].item():#x}")
            if args.out:
                sha = lora.save_adapter(parts.unet, outcome.adapter, args.out, config={"demo": True},
                                        metrics=outcome.metrics)
                print(f"saved the adapter to {args.out} (manifest sha256 {sha})")
    acc.wait_for_everyone()
    acc.end_training()
    return status


if __name__ == "__main__":
    sys.exit(main())
