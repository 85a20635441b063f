"""The feedback-efficiency benchmark with pairwise feedback: a simulated person compares two images of a prompt.

    python -m seiko_core.pairwise_sim --model models/shapes-sd --method greedy,bootstrap --budgets 32,32,32,32 \\
        --oracle purple --seeds 0,1,2 --out runs/purple-pairs

The same outer loop as ``python -m seiko_core.simulate`` (same arguments, same fixed eval set, same
``results.json``/``table.md``/``curve.png`` structure, same per-(seed, round) prompts and image seeds), with one
change: a round's budget of B labels is B comparisons instead of B ratings. Per round, the B prompts of
``round_prompts`` are each sampled twice (2B images, seeds ``gen_seeds(seed, round, 2B)``), the two images of a
prompt form a pair, and the simulated person chooses (``seiko_core.preference.simulate_pair_choices``): a tie when
the oracle's true scores differ by at most ``--tie-eps``, otherwise the first image with probability
sigmoid((s_1 - s_2) / T). The default T is the logistic equivalent of the rating noise sigma
(``logistic_temperature``: sqrt(6) / pi * sigma), so the pairs come from the same person as ``simulate``'s ratings
with ``--noise-sigma``. The reward ensemble is fitted on all comparisons so far with
``fit_preference_reward`` (Bradley-Terry, rewards in BT logits anchored to mean zero over the images), then the
round fine-tunes exactly as ``seiko_core.loop.train_round`` does (UCB bonus, TS draw, KL to the previous round).

Labels are equal to ``simulate``'s at the same ``--budgets``; images generated per round are twice as many. Compare
the two ``table.md`` files (the eval set, pretrained row and seeds are identical). ``pred_reward`` in
``results.json`` is in BT logits here, not in the oracle's units; the true reward is the oracle's, as in simulate.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from . import simulate as sim
from .config import SeikoConfig
from .preference import logistic_temperature, simulate_pair_choices
from .scratch import PixelSpill, exit_on_sigterm

FEEDBACK = "pairs"
SCRATCH_COMMAND = "pairwise_sim"  # its runs' own folders: OUT/.tmp-pairwise_sim-* (simulate's name before the tenth review)


def pair_prompts(cfg: SeikoConfig, n_pairs: int, seed: int) -> list[str]:
    """The round's ``n_pairs`` prompts (``round_prompts``), each twice in a row: images 2k and 2k+1 form pair k."""
    from .loop import round_prompts

    return [p for p in round_prompts(cfg, n_pairs, seed=seed) for _ in range(2)]


def train_pair_round(parts, embeddings: torch.Tensor, pairs: torch.Tensor, cfg: SeikoConfig, *, new_index: int,
                     prev_adapter: str | None, seed: int, scores: torch.Tensor | None = None, on_progress=None,
                     accelerator=None):
    """``loop.train_round`` with the reward fitted by ``fit_preference_reward`` on comparisons (and scores, if any)."""
    from .loop import train_round

    return train_round(parts, embeddings, scores, cfg, new_index=new_index, prev_adapter=prev_adapter, seed=seed,
                       on_progress=on_progress, accelerator=accelerator, pairs=pairs)


def run_pairs(parts, cfg: SeikoConfig, oracle, temperature: float, tie_eps: float, ev: sim.EvalSet, run_seed: int,
              pretrained: dict, *, on_round=None, bars: sim.Bars | None = None, grid_path: Path | None = None,
              spill: PixelSpill | None = None) -> dict:
    """``simulate.run_one`` with B comparisons per round of budget B; returns the run record (same keys, plus pairs').
    ``spill``: generated images beyond its limit are kept in a scratch file, not in memory (the same values)."""
    from .loop import generate_batch

    sim.reset_adapters(parts)
    start = time.time()
    rounds = [{"round": 0, "labels": 0, "budget": 0, **pretrained, "wall_s": 0.0, "elapsed_s": 0.0}]
    run = {"method": cfg.method, "seed": run_seed, "status": "running", "budgets": list(cfg.budgets), "rounds": rounds,
           "feedback": FEEDBACK, "noise_seed_family": sim.noise_seed_family(len(cfg.budgets))}
    emb_d, pairs_d = [], []
    n_images = 0
    prev = None
    images = None
    for i, budget in enumerate(cfg.budgets, start=1):
        t0 = time.time()
        # 1. sample two images of each of the round's `budget` prompts from the current model
        prompts = pair_prompts(cfg, budget, seed=sim.train_seed(run_seed, i))
        imgs, emb = generate_batch(parts, prev, prompts, sim.gen_seeds(run_seed, i, 2 * budget), cfg,
                                   on_progress=bars(f"{cfg.method}/s{run_seed}/r{i}") if bars else None,
                                   pixels_out=sim.float_pixels(spill, f"{cfg.method}-seed{run_seed}-round{i}",
                                                               f"round {i}'s {2 * budget} images"))
        # 2. feedback: the simulated person compares images 2k and 2k+1
        true = sim._score(oracle, imgs, prompts)
        local = torch.arange(2 * budget).view(budget, 2)
        gen = torch.Generator().manual_seed(sim.noise_seed(run_seed, i, len(cfg.budgets)))
        choices = simulate_pair_choices(true, local, temperature=temperature, tie_eps=tie_eps, generator=gen)
        # 3. grow D: the images' embeddings and the comparisons, indexed into all images so far
        emb_d.append(emb.cpu())
        pairs_d.append(choices + torch.tensor([n_images, n_images, 0.0], dtype=choices.dtype))
        n_images += 2 * budget
        sample_s = time.time() - t0
        # 4-5. fit the reward model on the comparisons, fine-tune the next adapter
        t1 = time.time()
        outcome = train_pair_round(parts, torch.cat(emb_d), torch.cat(pairs_d), cfg, new_index=i, prev_adapter=prev,
                                   seed=sim.train_seed(run_seed, i),
                                   on_progress=bars(f"{cfg.method}/s{run_seed}/r{i}") if bars else None)
        train_s = time.time() - t1
        # 6. evaluate on the fixed held-out set
        imgs = None  # rated: its memory (or scratch file) goes before the eval images are drawn
        m, images = sim.evaluate(parts, cfg, oracle, ev, adapter=outcome.adapter, prev_adapter=prev, outcome=outcome,
                                 bars=bars, spill=spill)
        ft = outcome.metrics["finetune"]
        fit = outcome.metrics["reward_fit"]
        o = choices[:, 2]
        decided = o != 0.5
        d = true[local[:, 0]] - true[local[:, 1]]
        agree = ((d[decided] > 0) == (o[decided] > 0.5)).float().mean() if bool(decided.any()) else None
        rounds.append({
            "round": i, "labels": sum(len(p) for p in pairs_d), "budget": budget, **m,
            "batch_true_reward": float(true.mean()), "batch_feedback_mean": None,  # no ratings: see the pair keys
            "finetune_reward_first": ft.get("reward_first"), "finetune_reward_last": ft.get("reward_last"),
            "finetune_kl_last": ft.get("kl_last"), "finetune_steps": ft.get("steps"),
            "ts_draw": outcome.metrics.get("ts_draw"), "ucb_alpha": outcome.metrics.get("ucb_alpha"),
            "reward_fit_holdout_mse": fit.get("holdout_mse"), "reward_fit_epochs": fit.get("epochs_run"),
            "sample_s": sample_s, "train_s": train_s, "finetune_s": ft.get("wall_s"), "wall_s": time.time() - t0,
            "elapsed_s": time.time() - start,
            # pairs only
            "images": n_images, "batch_tie_fraction": float((~decided).float().mean()),
            "batch_choice_agreement": None if agree is None else float(agree),  # decided choices for the higher true score
            "reward_fit_holdout_pair_accuracy": fit.get("holdout_pair_accuracy"),
            "reward_fit_holdout_pair_nll": fit.get("holdout_pair_nll"), "reward_unit": fit.get("unit"),
        })
        if prev is not None:
            parts.unet.delete_adapters(prev)
        prev = outcome.adapter
        if on_round is not None:
            on_round(run)
    if grid_path is not None and images is not None:
        sim.save_grid(images, grid_path)
    run["status"] = "done"
    run["wall_s"] = time.time() - start
    sim.reset_adapters(parts)
    return run


def _worker_run(cfg: SeikoConfig, temperature: float, tie_eps: float, ev: sim.EvalSet, seed: int, pretrained: dict,
                grid_path: Path, spill: PixelSpill | None = None) -> dict:
    def on_round(run):
        print(sim.round_line(cfg.method, seed, run["rounds"][-1]), file=sys.stderr, flush=True)

    return run_pairs(sim._WORKER["parts"], cfg, sim._WORKER["oracle"], temperature, tie_eps, ev, seed, pretrained,
                     on_round=on_round, grid_path=grid_path, spill=spill)


def summarise(results: dict, out: Path) -> str:
    """simulate's curve and table, the table headed by the pairwise feedback's settings."""
    sim.write_curve(results, out / sim.CURVE)
    fb = results["settings"]["feedback"]
    head = (f"**Pairwise feedback**: each label is one comparison of two images of a prompt (2 images per label); "
            f"choice temperature {fb['temperature']:.3g}, ties when the true scores differ by at most "
            f"{fb['tie_eps']:.3g}; the noise sigma below is the rating noise the temperature is equivalent to.\n\n")
    # one atomic write of the whole file (sim.write_table): it was written in place twice, without its head first
    return sim.write_table(results, out / sim.TABLE, head=head)


def build_parser():
    p = sim.build_parser(SCRATCH_COMMAND)
    p.prog = "python -m seiko_core.pairwise_sim"
    p.description = __doc__
    p.add_argument("--temperature", type=float, default=None,
                   help="the person's choice temperature T in oracle units: P(first) = sigmoid((s1 - s2) / T) "
                        "(default: sqrt(6)/pi * the noise sigma, the logistic equivalent of the rating noise)")
    p.add_argument("--tie-eps", type=float, default=0.0,
                   help="a tie when the two true scores differ by at most this (default 0: exactly equal scores)")
    return p


def main(argv: list[str] | None = None) -> int:
    """``simulate.main`` with pairwise feedback: the same argument checks, model and oracle loading and campaign
    driver (``simulate.run_campaign``: resume, pretrained row, process pool or serial runs), around ``run_pairs``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        methods, budgets, seeds = sim.check_common_args(args, images_per_label=2)
        for name, v in (("--temperature", args.temperature), ("--tie-eps", args.tie_eps)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise sim.SimulationError(f"{name} must be a finite number >= 0, got {v}")
        if args.keep_adapters:
            raise sim.SimulationError("--keep-adapters is not supported by pairwise_sim (only seiko_core.simulate saves adapters)")
    except sim.SimulationError as exc:
        parser.error(str(exc))

    loaded = sim.load_parts_and_oracle(args)
    if loaded is None:
        return 2
    parts, oracle = loaded
    try:
        base, cfgs, ev, sigma, settings = sim.campaign_setup(args, parts, oracle, methods, budgets)
        temperature = logistic_temperature(sigma) if args.temperature is None else float(args.temperature)
        tie_eps = float(args.tie_eps)
        settings["feedback"] = {"kind": FEEDBACK, "temperature": temperature, "tie_eps": tie_eps, "images_per_label": 2}
    except sim.SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    # sim.spill_of(args) when a run starts: its folder is made by run_campaign
    def pool_task(method, seed, pretrained, grid_path):
        return _worker_run, cfgs[method], temperature, tie_eps, ev, seed, pretrained, grid_path, sim.spill_of(args)

    def serial_run(method, seed, pretrained, on_round, bars, grid_path):
        return run_pairs(parts, cfgs[method], oracle, temperature, tie_eps, ev, seed, pretrained, on_round=on_round,
                         bars=bars, grid_path=grid_path, spill=sim.spill_of(args))

    return sim.run_campaign(args, argv, parts=parts, oracle=oracle, base=base, ev=ev, settings=settings,
                            methods=methods, seeds=seeds, pool_task=pool_task, serial_run=serial_run,
                            summarise_fn=summarise,
                            pretrained_note=f"pairwise feedback, temperature {temperature:.3g}, ties within {tie_eps:.3g}",
                            scratch_command=SCRATCH_COMMAND)

if __name__ == "__main__":
    exit_on_sigterm()  # SIGTERM ends it as Ctrl-C does: its scratch folder goes
    raise SystemExit(main())
