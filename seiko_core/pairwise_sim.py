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
import os
import platform
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

import torch
from tqdm import tqdm

from . import simulate as sim
from .config import SeikoConfig, to_dict
from .preference import logistic_temperature, simulate_pair_choices

FEEDBACK = "pairs"


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
              pretrained: dict, *, on_round=None, bars: sim.Bars | None = None, grid_path: Path | None = None) -> dict:
    """``simulate.run_one`` with B comparisons per round of budget B; returns the run record (same keys, plus pairs')."""
    from .loop import generate_batch

    sim.reset_adapters(parts)
    start = time.time()
    rounds = [{"round": 0, "labels": 0, "budget": 0, **pretrained, "wall_s": 0.0, "elapsed_s": 0.0}]
    run = {"method": cfg.method, "seed": run_seed, "status": "running", "budgets": list(cfg.budgets), "rounds": rounds,
           "feedback": FEEDBACK}
    emb_d, pairs_d = [], []
    n_images = 0
    prev = None
    images = None
    for i, budget in enumerate(cfg.budgets, start=1):
        t0 = time.time()
        # 1. sample two images of each of the round's `budget` prompts from the current model
        prompts = pair_prompts(cfg, budget, seed=sim.train_seed(run_seed, i))
        imgs, emb = generate_batch(parts, prev, prompts, sim.gen_seeds(run_seed, i, 2 * budget), cfg,
                                   on_progress=bars(f"{cfg.method}/s{run_seed}/r{i}") if bars else None)
        # 2. feedback: the simulated person compares images 2k and 2k+1
        true = sim._score(oracle, imgs, prompts)
        local = torch.arange(2 * budget).view(budget, 2)
        gen = torch.Generator().manual_seed(sim.train_seed(run_seed, i) + 7)
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
        m, images = sim.evaluate(parts, cfg, oracle, ev, adapter=outcome.adapter, prev_adapter=prev, outcome=outcome,
                                 bars=bars)
        ft = outcome.metrics["finetune"]
        fit = outcome.metrics["reward_fit"]
        o = choices[:, 2]
        decided = o != 0.5
        d = true[local[:, 0]] - true[local[:, 1]]
        agree = ((d[decided] > 0) == (o[decided] == 1)).float().mean() if bool(decided.any()) else None
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
                grid_path: Path) -> dict:
    def on_round(run):
        print(sim.round_line(cfg.method, seed, run["rounds"][-1]), file=sys.stderr, flush=True)

    return run_pairs(sim._WORKER["parts"], cfg, sim._WORKER["oracle"], temperature, tie_eps, ev, seed, pretrained,
                     on_round=on_round, grid_path=grid_path)


def summarise(results: dict, out: Path) -> str:
    """simulate's curve and table, the table headed by the pairwise feedback's settings."""
    sim.write_curve(results, out / sim.CURVE)
    text = sim.write_table(results, out / sim.TABLE)
    fb = results["settings"]["feedback"]
    head = (f"**Pairwise feedback**: each label is one comparison of two images of a prompt (2 images per label); "
            f"choice temperature {fb['temperature']:.3g}, ties when the true scores differ by at most "
            f"{fb['tie_eps']:.3g}; the noise sigma below is the rating noise the temperature is equivalent to.\n\n")
    (out / sim.TABLE).write_text(head + text)
    return head + text


def build_parser():
    p = sim.build_parser()
    p.prog = "python -m seiko_core.pairwise_sim"
    p.description = __doc__
    p.add_argument("--temperature", type=float, default=None,
                   help="the person's choice temperature T in oracle units: P(first) = sigmoid((s1 - s2) / T) "
                        "(default: sqrt(6)/pi * the noise sigma, the logistic equivalent of the rating noise)")
    p.add_argument("--tie-eps", type=float, default=0.0,
                   help="a tie when the two true scores differ by at most this (default 0: exactly equal scores)")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        methods = sim.parse_methods(args.method)
        budgets = sim.parse_int_list(args.budgets, "--budgets")
        seeds = sim.parse_int_list(args.seeds, "--seeds")
        if any(b < 1 for b in budgets) or 2 * sum(budgets) >= sim.MAX_ROUND_BUDGET:
            raise sim.SimulationError(f"budgets must be positive and sum to less than {sim.MAX_ROUND_BUDGET // 2} "
                                      f"(two images per comparison), got {budgets}")
        if any(s < 0 or s >= 1000 for s in seeds):
            raise sim.SimulationError(f"seeds must lie in [0, 1000), got {seeds}")
        for name, v in (("--noise-sigma", args.noise_sigma), ("--temperature", args.temperature),
                        ("--tie-eps", args.tie_eps)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise sim.SimulationError(f"{name} must be a finite number >= 0, got {v}")
        if args.bonus_alpha is not None and not args.bonus_alpha >= 0:
            raise sim.SimulationError(f"--bonus-alpha must be >= 0, got {args.bonus_alpha}")
        if not 1 <= args.jobs <= 64:
            raise sim.SimulationError(f"--jobs must lie in [1, 64], got {args.jobs}")
        if args.threads is not None and args.threads < 1:
            raise sim.SimulationError(f"--threads must be >= 1, got {args.threads}")
    except sim.SimulationError as exc:
        parser.error(str(exc))

    from .models import ModelLoadError, load_model
    from .oracles import LAION_PREFIX, OracleError, load_oracle
    from .presets import preset

    if args.threads is None and args.jobs > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        oracle = None if args.oracle.strip().startswith(LAION_PREFIX) else load_oracle(args.oracle)
        parts = load_model(args.model, device=args.device)
        if oracle is None:
            oracle = load_oracle(args.oracle, parts)
    except (ModelLoadError, OracleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    try:
        base = preset(args.preset or ("shapes" if parts.sample_size <= 32 else "sd15"))
        base.budgets = budgets
        base = sim.apply_overrides(base, args.set)
        cfgs = {m: sim.method_config(base, m, args) for m in methods}
        ev = sim.make_eval_set(base, args.eval_n, args.kl_n)
        sigma = oracle.default_sigma if args.noise_sigma is None else float(args.noise_sigma)
        temperature = logistic_temperature(sigma) if args.temperature is None else float(args.temperature)
        settings = {"model": args.model, "oracle": args.oracle, "oracle_spread": oracle.spread, "noise_sigma": sigma,
                    "budgets": list(budgets), "preset": args.preset, "overrides": list(args.set),
                    "bonus_alpha": args.bonus_alpha, "ucb_form": args.ucb_form, "eval": ev.to_dict(),
                    "config": to_dict(base),
                    "feedback": {"kind": FEEDBACK, "temperature": temperature, "tie_eps": float(args.tie_eps),
                                 "images_per_label": 2}}
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        results = sim.load_results(out / sim.RESULTS, settings)
    except sim.SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    results["machine"] = {"torch": torch.__version__, "code": sim.code_version(), "threads": torch.get_num_threads(),
                          "jobs": args.jobs, "device": str(parts.device), "cpus": os.cpu_count(),
                          "platform": platform.platform()}
    results.setdefault("invocations", []).append({"argv": list(sys.argv if argv is None else argv),
                                                  "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    results_path = out / sim.RESULTS
    bars = sim.Bars(enabled=not args.no_progress)
    t_all = time.time()

    if results.get("pretrained") is None:
        m, images = sim.evaluate(parts, base, oracle, ev, adapter=None, prev_adapter=None, bars=bars)
        bars.close()
        results["pretrained"] = m
        sim.save_grid(images, out / "grids" / "pretrained.png")
        sim.write_json_atomic(results_path, results)
    pretrained = dict(results["pretrained"])
    tqdm.write(f"pretrained: true reward {pretrained['true_reward_mean']:.3f} +- {pretrained['true_reward_std']:.3f} "
               f"on {len(ev.seeds)} eval images; pairwise feedback, temperature {temperature:.3g}, "
               f"ties within {args.tie_eps:.3g}")

    todo = [(m, s) for s in seeds for m in methods if results["runs"].get(m, {}).get(str(s), {}).get("status") != "done"]

    def finished(method: str, seed: int, run: dict) -> None:
        results["runs"].setdefault(method, {})[str(seed)] = run
        sim.write_json_atomic(results_path, results)
        summarise(results, out)

    with tqdm(total=len(methods) * len(seeds), initial=len(methods) * len(seeds) - len(todo), desc="runs",
              dynamic_ncols=True) as outer:
        if args.jobs > 1 and len(todo) > 1:
            bars.close()
            with ProcessPoolExecutor(max_workers=min(args.jobs, len(todo)), mp_context=sim._spawn(),
                                     initializer=sim._worker_init,
                                     initargs=(args.model, args.oracle, args.device, args.threads)) as pool:
                pending = {pool.submit(_worker_run, cfgs[m], temperature, float(args.tie_eps), ev, s, pretrained,
                                       out / "grids" / f"{m}_seed{s}.png"): (m, s) for m, s in todo}
                try:
                    while pending:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            method, seed = pending.pop(fut)
                            finished(method, seed, fut.result())
                            outer.update(1)
                except BaseException:
                    for fut in pending:
                        fut.cancel()
                    raise
        else:
            for method, seed in todo:
                outer.set_postfix(method=method, seed=seed)

                def on_round(run, method=method, seed=seed):
                    bars.close()
                    results["runs"].setdefault(method, {})[str(seed)] = run
                    sim.write_json_atomic(results_path, results)
                    tqdm.write(sim.round_line(method, seed, run["rounds"][-1]))

                run = run_pairs(parts, cfgs[method], oracle, temperature, float(args.tie_eps), ev, seed, pretrained,
                                on_round=on_round, bars=bars, grid_path=out / "grids" / f"{method}_seed{seed}.png")
                finished(method, seed, run)
                outer.update(1)
    results["invocations"][-1]["wall_s"] = time.time() - t_all
    sim.write_json_atomic(results_path, results)
    tqdm.write(summarise(results, out))
    tqdm.write(f"wrote {results_path}, {out / sim.CURVE}, {out / sim.TABLE} ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
