"""Feedback-efficiency benchmark: SEIKO's methods against an oracle rater, as in the paper's experiments.

    python -m seiko_core.simulate --model models/shapes-sd --method all --budgets 32,64,96,128 \\
        --oracle purple --seeds 0,1,2 --out runs/purple

For every method and seed the model starts from the pretrained weights (one model per process; every
LoRA adapter is deleted between runs) and runs SEIKO's outer loop: per round, sample the
round's budget of images from the current model (``round_prompts`` and per-(seed, round) image seeds),
rate them with the oracle plus Gaussian noise (default sigma: the oracle's ``default_sigma``), grow the
feedback set D, fit the reward ensemble and fine-tune a new LoRA adapter (``train_round``). Non-adaptive
gets the sum of the budgets in one round (``SeikoConfig.for_method``).

After every round the new model is evaluated on a FIXED held-out set (the preset's eval prompts, cycled,
with seeds that no training round uses; identical for every method, seed and round): the TRUE oracle
reward (mean, std), the reward ensemble's prediction and across-head spread on those images, the
optimism (r_opt - r_hat) and UCB bonus there, the full trajectory KL to the previous round's model and to
the pretrained model (on the first ``--kl-n`` eval images), and wall times. Round 0 is the pretrained
model, evaluated once and shared by all runs.

Outputs in ``--out``: ``results.json`` (rewritten after every round, so a killed run resumes: finished
runs are skipped, an unfinished one restarts), ``curve.png`` (true reward vs labels used, mean over
seeds and a +-1 std band), ``table.md`` (per method the final true reward, mean [95% CI] over seeds, and its paired difference to
Greedy on the seeds they share) and
``grids/`` (the eval images of the pretrained model and of each run's final model).

Hyper-parameters come from ``--preset`` (default: shapes for a small model, else sd15); ``--set
SECTION.FIELD=VALUE`` overrides any config field for every method (e.g. ``--set finetune.lr=1e-2``),
``--bonus-alpha``/``--ucb-form`` the UCB method's bonus. The overrides are recorded in results.json, and
resuming with different settings is refused.

``--jobs N`` runs N (method, seed) runs at once, each in its own process with its own copy of the model and
``--threads`` torch threads (default: the CPUs shared out); results.json is then rewritten after every finished
run. A run's result does not depend on how many run beside it: every run starts from the pretrained weights with
its own seeds. A SIGTERM, a Ctrl-C or a failed run ends the worker processes' runs in flight at once (an unfinished
run is redone on a resume; the finished ones are in results.json).

A batch of generated images beyond ``--pixels-in-memory-max-mib`` (default 512 MiB of float32) is kept in a scratch
file of a folder of the run's own, ``OUT/.tmp-simulate-*/scratch``, rather than in the process's memory
(``seiko_core.scratch``; its disk space reserved first, the file gone when the images are, the folder when the
campaign ends; ``OUT/scratch``, a live data dir's worker's maybe, is never touched); the figures are the same bit
for bit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .atomic import TMP_PREFIX, atomic_write, check_can_write, write_text
from .config import (
    METHODS,
    SeikoConfig,
    check_prompts,
    check_round_limits,
    check_round_trajectories,
    check_runnable,
    from_dict,
    to_dict,
)
from .scratch import PixelSpill, add_max_mib_argument, exit_on_sigterm, float_pixels, own_scratch_folder
from .stats import interval_text, mean_ci95, pearson, t975, wins, wins_text  # noqa: F401  (re-exported: reports import them from here)

RESULTS = "results.json"
CURVE = "curve.png"
TABLE = "table.md"
ADAPTERS = "adapters"
SCRATCH_COMMAND = "simulate"  # the run's own folder for its scratch files: OUT/.tmp-simulate-* (pairwise_sim: its own)
FORMAT = "seiko-simulate"
VERSION = 1
DEFAULT_EVAL_SEEDS_PER_PROMPT = 16
# Image seeds, disjoint by construction: training round r of run seed s draws from GEN_SEED_BASE + s * 10^7 + r * 10^5;
# fine-tuning trajectories use (train seed + 1) * 10^6 + n (seiko_core.finetune) with train seed = s * 100 + r, which
# stays below GEN_SEED_BASE only for s < 100: from s = 100 on a run's fine-tuning noise was another run's query noise
# (s = 100, round 1 is seed 0's round 20; found by review), so run seeds lie in [0, MAX_RUN_SEED). Every published
# run used seeds below 100, so none changes.
#
# The seed families of one run (run seed s, rounds r = 1..R, train seed T = train_seed(s, r) = s * 100 + r), each a
# range no other family reaches:
#   T: the round's prompt draw (loop.round_prompts), reward fit (reward.fit_reward) and LoRA initialisation;
#      T * 7919 + a constant below 5 * 10^7 (fine-tuning's batch draw; the fit's cross-validation, SGLD and prior) and
#      T * 1_000_003 + 17 (SEIKO-TS's posterior draw): all below 10^10
#   fine-tuning trajectories: (T + 1) * 10^6 + n, n < config.MAX_ROUND_TRAJECTORIES = 10^6 (checked): below 10^10
#   query images: GEN_SEED_BASE + s * 10^7 + r * 10^5 + j, j < MAX_ROUND_BUDGET; eval images: EVAL_SEED_BASE + k
#   feedback noise (noise_seed): T + 7 in a run of at most SHORT_RUN_ROUNDS rounds, as every published run (so they
#      reproduce), else NOISE_SEED_BASE + T. T + 7 is round r + 7's train seed: in a run of 8 or more rounds, round r's
#      rating noise and round r + 7's reward fit and LoRA initialisation drew one random stream (found by review)
GEN_SEED_BASE = 10**10
MAX_RUN_SEED = 100
# rounds 1..98: train seed s * 100 + r <= 9,998, so a round's trajectory seeds ((T + 1) * 10^6 + n, n < 10^6) stay below
# GEN_SEED_BASE. It was 99 (the comment said round indices 0..98, but rounds count from 1): run seed 99's round 99
# (T = 9,999) drew trajectories from 10^10 + n, run seed 0's query image seeds from its 100,000th on (found by review)
MAX_ROUNDS = 98
EVAL_SEED_BASE = 9 * 10**10
MAX_ROUND_BUDGET = 10**5
SHORT_RUN_ROUNDS = 7
NOISE_SEED_BASE = 5 * 10**10  # above every query image seed (< 1.1 * 10^10), below every eval seed


class SimulationError(ValueError):
    """Settings that cannot be simulated as given; the message says why."""


# ---------------------------------------------------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------------------------------------------------


def parse_int_list(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise SimulationError(f"{what} must be comma-separated integers, got {text!r}") from exc
    if not values:
        raise SimulationError(f"{what} needs at least one value, got {text!r}")
    return values


def parse_methods(text: str) -> tuple[str, ...]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    if names == ["all"]:
        return METHODS
    bad = [m for m in names if m not in METHODS]
    if bad or not names:
        raise SimulationError(f"unknown method {', '.join(bad) or repr(text)}; choose from {list(METHODS)} or all")
    return tuple(dict.fromkeys(names))


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # a bare string such as per_step
    except RecursionError as exc:  # 200,000 nested '[' (found by the fifth review)
        raise SimulationError(f"--set value {text[:20]!r}... is JSON nested too deeply to read") from exc


def apply_overrides(cfg: SeikoConfig, overrides: Sequence[str]) -> SeikoConfig:
    """``SECTION.FIELD=VALUE`` (or ``FIELD=VALUE`` for top-level fields) applied to ``cfg``; VALUE is JSON or a bare string."""
    data = to_dict(cfg)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SimulationError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
        path = key.strip().split(".")
        node = data
        for part in path[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise SimulationError(f"--set {item!r}: {part!r} is not a config section; choose from "
                                      f"{sorted(k for k, v in data.items() if isinstance(v, dict))}")
            node = node[part]
        if path[-1] not in node:
            raise SimulationError(f"--set {item!r}: unknown field {path[-1]!r}; choose from {sorted(node)}")
        node[path[-1]] = _parse_value(value.strip())
    return from_dict(data)


@dataclass
class EvalSet:
    prompts: list[str]
    seeds: list[int]
    kl_n: int

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "seeds": self.seeds, "kl_n": self.kl_n}


def make_eval_set(cfg: SeikoConfig, n: int | None, kl_n: int) -> EvalSet:
    """The fixed held-out set: the config's eval prompts cycled over ``n`` images (default 16 per prompt)."""
    prompts = list(cfg.eval_prompts)
    if not prompts:
        raise SimulationError("the config has no eval prompts; give held-out prompts (--set eval_prompts='[...]') "
                              "that no training round samples")
    n = n if n is not None else DEFAULT_EVAL_SEEDS_PER_PROMPT * len(prompts)
    if n < 2:
        raise SimulationError(f"--eval-n must be at least 2 (a std needs two images), got {n}")
    if kl_n < 1:
        raise SimulationError(f"--kl-n must be at least 1, got {kl_n}")
    return EvalSet(prompts=[prompts[k % len(prompts)] for k in range(n)], seeds=[EVAL_SEED_BASE + k for k in range(n)],
                   kl_n=min(kl_n, n))


def gen_seeds(run_seed: int, round_index: int, n: int) -> list[int]:
    base = GEN_SEED_BASE + run_seed * 10**7 + round_index * MAX_ROUND_BUDGET
    return [base + j for j in range(n)]


def train_seed(run_seed: int, round_index: int) -> int:
    return run_seed * 100 + round_index


def noise_seed(run_seed: int, round_index: int, n_rounds: int) -> int:
    """The seed of round ``round_index``'s feedback noise in a run of ``n_rounds`` rounds (see the seed families above)."""
    t = train_seed(run_seed, round_index)
    return t + 7 if n_rounds <= SHORT_RUN_ROUNDS else NOISE_SEED_BASE + t


def noise_seed_family(n_rounds: int) -> str:
    """How a run of ``n_rounds`` rounds seeds its feedback noise, as its record in results.json says it."""
    return "train_seed + 7" if n_rounds <= SHORT_RUN_ROUNDS else f"{NOISE_SEED_BASE} + train_seed"


# ---------------------------------------------------------------------------------------------------------------------
# Results file
# ---------------------------------------------------------------------------------------------------------------------


def write_json_atomic(path: Path, data: dict) -> None:
    """The results as JSON (numpy values as plain numbers), written atomically: a killed run leaves the last whole file.

    A NaN or an infinity is refused (ValueError naming where it is, nothing written): Python's json wrote it as the
    bare word NaN, which is not JSON (other readers reject the whole file, and Python's own reads it back as a float
    that every mean and table then carries). A figure that can be undefined is recorded as None where it is made."""
    try:
        text = json.dumps(data, indent=1, default=_json_default, allow_nan=False)
    except ValueError as exc:
        found = _non_finite(data)
        if found is None:
            raise
        raise ValueError(f"{path} was not written: {found[0]} is {found[1]}, not a finite number") from exc
    write_text(path, text)


def _non_finite(obj, where: str = "results") -> tuple[str, float] | None:
    """The first NaN or infinity in ``obj`` and where it is (``results["runs"]["greedy"]["0"]...``), or None."""
    if isinstance(obj, torch.Tensor):
        obj = obj.tolist()
    if isinstance(obj, (float, np.floating)):
        return None if math.isfinite(float(obj)) else (where, float(obj))
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for key, value in items:
        found = _non_finite(value, f"{where}[{json.dumps(key) if isinstance(key, str) else key}]")
        if found is not None:
            return found
    return None


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def load_results(path: Path, settings: dict) -> dict:
    """The results so far, or a fresh skeleton; refuses a file written with different settings."""
    if not path.exists():
        return {"format": FORMAT, "version": VERSION, "settings": settings, "pretrained": None, "runs": {}}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested too deeply
        raise SimulationError(f"{path} cannot be read as a results file ({exc}); choose another --out or delete it") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SimulationError(f"{path} is not a {FORMAT} results file")
    old = json.loads(json.dumps(data.get("settings"), default=_json_default))
    new = json.loads(json.dumps(settings, default=_json_default))
    if old != new:
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise SimulationError(f"{path} was written with different settings (differing: {diff}); "
                              "choose another --out or delete it to start again")
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


class Bars:
    """An inner tqdm bar per phase, reused through the ``on_progress(done, total, metrics)`` callbacks."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.key = None

    def __call__(self, desc: str):
        def update(done, total, metrics):
            if not self.enabled:
                return
            key = (desc, metrics.get("phase"), total)
            if self.key != key:
                self.close()
                self.bar = tqdm(total=total, desc=f"  {desc}:{metrics.get('phase', '')}", leave=False, dynamic_ncols=True)
                self.key = key
            self.bar.update(done - self.bar.n)
            post = {k: round(v, 3) for k, v in metrics.items() if k in ("reward", "kl", "criterion") and isinstance(v, float)}
            if post:
                self.bar.set_postfix(post, refresh=False)
        return update

    def close(self):
        if self.bar is not None:
            self.bar.close()
        self.bar, self.key = None, None


def _score(oracle, images: torch.Tensor, prompts: list[str], batch: int = 256) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([oracle(images[i:i + batch], prompts[i:i + batch]).float().cpu()
                          for i in range(0, images.shape[0], batch)])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float | None:
    """Pearson correlation of two 1-d tensors; None when either is constant (or has fewer than 2 values)."""
    c = pearson(a.detach().double().cpu().numpy(), b.detach().double().cpu().numpy())
    return c if c is not None and math.isfinite(c) else None


def uncertainty_calibration(preds: torch.Tensor, r_opt: torch.Tensor, true: torch.Tensor) -> dict:
    """Does the ensemble's uncertainty point at its errors? (issue 11: why optimism does or does not pay)

    ``preds`` (B, H) are the heads' predictions, ``r_opt`` (B,) the optimistic reward, ``true`` (B,) the oracle's, on the
    same images. With ``r_hat`` the heads' mean and ``err = true - r_hat`` (positive where the model under-predicts):

    - ``spread_abs_error_corr``: Pearson r of the heads' per-image std with ``|err|``: is it unsure where it is wrong?
    - ``bonus_error_corr``: Pearson r of the optimism ``r_opt - r_hat`` with ``err``: does optimism add reward where
      the model under-predicts (what exploration needs), or where it does not (noise)?

    None where a side is constant (one head; Greedy's zero bonus).
    """
    r_hat = preds.mean(1)
    err = true - r_hat
    spread = preds.std(1, correction=0)
    return {"spread_abs_error_corr": _pearson(spread, err.abs()),
            "bonus_error_corr": _pearson(r_opt - r_hat, err)}


def evaluate(parts, cfg: SeikoConfig, oracle, ev: EvalSet, *, adapter: str | None, prev_adapter: str | None,
             outcome=None, bars: Bars | None = None, spill: PixelSpill | None = None) -> tuple[dict, torch.Tensor]:
    """Eval metrics of ``adapter``'s model (None: pretrained) on the fixed set, and the eval images (beyond
    ``spill``'s limit a scratch file's memory map)."""
    from .finetune import trajectory_kl
    from .loop import generate_batch
    from .optimism import optimistic_reward

    t0 = time.time()
    images, emb = generate_batch(parts, adapter, ev.prompts, ev.seeds, cfg, on_progress=bars("eval") if bars else None,
                                 pixels_out=float_pixels(spill, "eval-images", f"the {len(ev.seeds)} eval images"))
    true = _score(oracle, images, ev.prompts)
    m = {"true_reward_mean": float(true.mean()), "true_reward_std": float(true.std()),
         "true_reward_median": float(true.median()), "true_reward_max": float(true.max())}
    if outcome is not None:
        ens = outcome.ensemble
        dev = next(ens.parameters()).device
        with torch.no_grad():
            preds, feats = ens.heads_and_features(emb.to(dev))
            r_opt = optimistic_reward(ens, emb.to(dev), cfg.optimism, ucb=outcome.ucb, draw=outcome.draw)
        preds, r_opt = preds.cpu(), r_opt.cpu()
        m["pred_reward"] = float(preds.mean())
        m["ensemble_spread"] = float(preds.std(1, correction=0).mean()) if preds.shape[1] > 1 else 0.0
        m["pred_true_corr"] = _pearson(preds.mean(1), true)  # None when either side is constant
        m["optimism_gap"] = float((r_opt - preds.mean(1)).mean())  # r_opt - r_hat on the eval images
        m.update(uncertainty_calibration(preds, r_opt, true))
        m["pred_reward_std"] = float(preds.mean(1).std()) if len(preds) > 1 else None  # what the bonus is weighed against
        bonus = outcome.ucb.bonus(feats) if outcome.ucb is not None else None
        m["ucb_bonus"] = float(bonus.mean()) if bonus is not None else None
        m["ucb_bonus_std"] = float(bonus.std()) if bonus is not None and len(bonus) > 1 else None
    else:
        m.update(pred_reward=None, pred_reward_std=None, ensemble_spread=None, pred_true_corr=None, optimism_gap=None,
                 ucb_bonus=None, ucb_bonus_std=None, spread_abs_error_corr=None, bonus_error_corr=None)
    m["eval_s"] = time.time() - t0
    if adapter is not None:
        t1 = time.time()
        sc = cfg.sampling
        kw = dict(steps=sc.steps, eta=sc.eta, guidance=sc.guidance, batch_size=sc.batch_size)
        p, s = ev.prompts[:ev.kl_n], ev.seeds[:ev.kl_n]
        m["kl_prev"] = float(trajectory_kl(parts, p, s, adapter=adapter, reference=prev_adapter, **kw).mean())
        m["kl_base"] = (m["kl_prev"] if prev_adapter is None else
                        float(trajectory_kl(parts, p, s, adapter=adapter, reference=None, **kw).mean()))
        m["kl_s"] = time.time() - t1
    else:
        m.update(kl_prev=0.0, kl_base=0.0, kl_s=0.0)
    return m, images


def save_grid(images: torch.Tensor, path: Path) -> None:
    from .sampling import grid

    picture = grid(images, cols=16, scale=3 if images.shape[-1] <= 64 else 1)
    # a temporary name renamed into place: a write that fails half-way (a full disk, a kill) leaves the earlier grid
    # whole, not a truncated PNG in its place (seventh review)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------------------------------------------
# One run: a method and a seed from the pretrained model
# ---------------------------------------------------------------------------------------------------------------------


def reset_adapters(parts) -> None:
    """Back to the pretrained model: every adapter deleted."""
    names = list(getattr(parts.unet, "peft_config", {}) or {})
    if names:
        parts.unet.delete_adapters(names)
    from . import lora

    lora.activate(parts.unet, None)


def run_one(parts, cfg: SeikoConfig, oracle, sigma: float, ev: EvalSet, run_seed: int, pretrained: dict, *,
            on_round=None, bars: Bars | None = None, grid_path: Path | None = None,
            adapter_dir: Path | None = None, spill: PixelSpill | None = None) -> dict:
    """One method (``cfg.method``, budgets already per method) from the pretrained model; returns the run record.
    ``adapter_dir``: where the final round's adapter is saved (``--keep-adapters``; :mod:`seiko_core.klmatch` reads it).
    ``spill``: generated images beyond its limit are kept in a scratch file, not in memory (the same values)."""
    from .loop import generate_batch, round_prompts, train_round
    from .oracles import noisy_feedback

    reset_adapters(parts)
    start = time.time()
    rounds = [{"round": 0, "labels": 0, "budget": 0, **pretrained, "wall_s": 0.0, "elapsed_s": 0.0}]
    run = {"method": cfg.method, "seed": run_seed, "status": "running", "budgets": list(cfg.budgets), "rounds": rounds,
           "noise_seed_family": noise_seed_family(len(cfg.budgets))}
    emb_d, y_d = [], []
    prev = None
    images = None
    for i, budget in enumerate(cfg.budgets, start=1):
        t0 = time.time()
        # 1. sample the round's budget from the current model
        prompts = round_prompts(cfg, budget, seed=train_seed(run_seed, i))
        imgs, emb = generate_batch(parts, prev, prompts, gen_seeds(run_seed, i, budget), cfg,
                                   on_progress=bars(f"{cfg.method}/s{run_seed}/r{i}") if bars else None,
                                   pixels_out=float_pixels(spill, f"{cfg.method}-seed{run_seed}-round{i}",
                                                           f"round {i}'s {budget} images"))
        # 2. feedback: oracle + noise
        true = _score(oracle, imgs, prompts)
        gen = torch.Generator().manual_seed(noise_seed(run_seed, i, len(cfg.budgets)))
        y = noisy_feedback(true, sigma, gen)
        # 3. grow D
        emb_d.append(emb.cpu())
        y_d.append(y.cpu())
        sample_s = time.time() - t0
        # 4-5. fit the reward model, fine-tune the next adapter
        t1 = time.time()
        outcome = train_round(parts, torch.cat(emb_d), torch.cat(y_d), cfg, new_index=i, prev_adapter=prev,
                              seed=train_seed(run_seed, i), on_progress=bars(f"{cfg.method}/s{run_seed}/r{i}") if bars else None)
        train_s = time.time() - t1
        # 6. evaluate on the fixed held-out set
        imgs = None  # rated: its memory (or scratch file) goes before the eval images are drawn
        m, images = evaluate(parts, cfg, oracle, ev, adapter=outcome.adapter, prev_adapter=prev, outcome=outcome, bars=bars,
                             spill=spill)
        ft = outcome.metrics["finetune"]
        fit = outcome.metrics["reward_fit"]
        rounds.append({
            "round": i, "labels": int(sum(len(v) for v in y_d)), "budget": budget, **m,
            "batch_true_reward": float(true.mean()), "batch_feedback_mean": float(y.mean()),
            "finetune_reward_first": ft.get("reward_first"), "finetune_reward_last": ft.get("reward_last"),
            "finetune_kl_last": ft.get("kl_last"), "finetune_steps": ft.get("steps"),
            "ts_draw": outcome.metrics.get("ts_draw"), "ucb_alpha": outcome.metrics.get("ucb_alpha"),
            "ucb_balance": outcome.metrics.get("ucb_balance"),
            "reward_fit_holdout_mse": fit.get("holdout_mse"), "reward_fit_epochs": fit.get("epochs_run"),
            "sample_s": sample_s, "train_s": train_s, "finetune_s": ft.get("wall_s"), "wall_s": time.time() - t0, "elapsed_s": time.time() - start,
        })
        if prev is not None:  # the older adapter is no longer needed: the next round's KL is to this one
            parts.unet.delete_adapters(prev)
        prev = outcome.adapter
        if on_round is not None:
            on_round(run)
    if grid_path is not None and images is not None:
        save_grid(images, grid_path)
    if adapter_dir is not None and prev is not None:
        import shutil

        from . import lora

        if Path(adapter_dir).exists():  # left by an earlier attempt at this run, which is being redone: not this model
            shutil.rmtree(adapter_dir)
        lora.save_adapter(parts.unet, prev, adapter_dir, config=to_dict(cfg),
                          metrics={"method": cfg.method, "seed": run_seed, "final_round": rounds[-1]})
    run["status"] = "done"
    run["wall_s"] = time.time() - start
    reset_adapters(parts)
    return run


def round_line(method: str, seed: int, rd: dict) -> str:
    return (f"{method} seed {seed} round {rd['round']}: labels {rd['labels']} true {rd['true_reward_mean']:.3f} "
            f"pred {rd['pred_reward']:.3f} spread {rd['ensemble_spread']:.3f} opt {rd['optimism_gap']:.3g} "
            f"kl_prev {rd['kl_prev']:.3g} kl_base {rd['kl_base']:.3g} ({rd['wall_s']:.0f}s)")


# --jobs: one model and oracle per worker process, loaded once by the pool's initializer
_WORKER: dict = {}


def _worker_init(model: str, oracle_spec: str, device: str | None, threads: int) -> None:
    from .models import load_model
    from .oracles import load_oracle

    torch.set_num_threads(threads)
    _WORKER["parts"] = parts = load_model(model, device=device)
    _WORKER["oracle"] = load_oracle(oracle_spec, parts)


def _worker_run(cfg: SeikoConfig, sigma: float, ev: EvalSet, seed: int, pretrained: dict, grid_path: Path,
                adapter_dir: Path | None = None, spill: PixelSpill | None = None) -> dict:
    def on_round(run):
        print(round_line(cfg.method, seed, run["rounds"][-1]), file=sys.stderr, flush=True)

    return run_one(_WORKER["parts"], cfg, _WORKER["oracle"], sigma, ev, seed, pretrained, on_round=on_round,
                   grid_path=grid_path, adapter_dir=adapter_dir, spill=spill)


# ---------------------------------------------------------------------------------------------------------------------
# Summaries: the curve and the table
# ---------------------------------------------------------------------------------------------------------------------

LABELS = {"nonadaptive": "Non-adaptive", "greedy": "Greedy", "ucb": "SEIKO-UCB (textbook)", "ucb_cov": "SEIKO-UCB (covariance)",
          "bootstrap": "SEIKO-Bootstrap", "ts": "SEIKO-TS"}
COLOURS = {"nonadaptive": "tab:gray", "greedy": "tab:blue", "ucb": "tab:red", "ucb_cov": "tab:orange", "bootstrap": "tab:green",
           "ts": "tab:purple"}


def finished_runs(results: dict, method: str) -> list[dict]:
    return [r for r in results["runs"].get(method, {}).values() if r.get("status") == "done"]


def final_rewards(results: dict, method: str) -> dict[str, float]:
    """{seed (as text): the final round's true reward} over the method's finished runs."""
    return {str(r["seed"]): r["rounds"][-1]["true_reward_mean"] for r in finished_runs(results, method)}


def method_curve(runs: list[dict], key: str = "true_reward_mean") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, mean over seeds, std over seeds) per round; every run of a method has the same rounds."""
    labels = np.array([r["labels"] for r in runs[0]["rounds"]], dtype=float)
    vals = np.array([[rd[key] for rd in run["rounds"]] for run in runs], dtype=float)
    return labels, vals.mean(0), vals.std(0, ddof=1) if len(runs) > 1 else np.zeros(vals.shape[1])


def write_curve(results: dict, path: Path) -> None:
    """The curve figure, written atomically (``atomic_write``): a run killed or a disk full while it is saved leaves
    the file as it was, or none, never a cut-off image under the final name (eighth review)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["settings"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    for method in METHODS:
        runs = finished_runs(results, method)
        if not runs:
            continue
        x, mean, std = method_curve(runs)
        c = COLOURS.get(method)
        style = "--" if method == "nonadaptive" else "-"
        ax.plot(x, mean, style, marker="o", color=c, label=f"{LABELS.get(method, method)} (n={len(runs)})")
        ax.fill_between(x, mean - std, mean + std, color=c, alpha=0.15)
        xk, kl, _ = method_curve(runs, "kl_base")
        ax2.plot(xk, kl, style, marker="o", color=c, label=LABELS.get(method, method))
    ax.set_xlabel("labels used (oracle queries)")
    ax.set_ylabel(f"true reward on the eval set ({s['oracle']})")
    ax.set_title(f"{s['oracle']}: budgets {s['budgets']}, sigma {s['noise_sigma']:.3g}; mean +- 1 std over seeds",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.set_xlabel("labels used")
    ax2.set_ylabel("trajectory KL to the pretrained model")
    ax2.set_yscale("symlog", linthresh=1e-2)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    try:  # the temporary name has no suffix of its own: the format is the final name's
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png"))
    finally:
        plt.close(fig)


def table_rows(results: dict, baseline: str = "greedy") -> list[dict]:
    """Per method: final true reward over seeds (mean, std, 95% CI) and, on the seeds it shares with ``baseline``,
    the paired difference to it (mean, 95% CI, per-seed differences, wins)."""
    base_final = final_rewards(results, baseline)
    rows = []
    for method in METHODS:
        runs = finished_runs(results, method)
        if not runs:
            continue
        final = np.array([r["rounds"][-1]["true_reward_mean"] for r in runs])
        kl = np.array([r["rounds"][-1]["kl_base"] for r in runs])
        mean, ci = mean_ci95(final)
        diffs = {seed: v - base_final[seed] for seed, v in final_rewards(results, method).items() if seed in base_final}
        d_mean, d_ci = mean_ci95(diffs.values()) if diffs else (float("nan"), float("nan"))
        rows.append({"method": method, "n": len(runs), "labels": runs[0]["rounds"][-1]["labels"],
                     "rounds": len(runs[0]["rounds"]) - 1, "mean": mean, "ci95": ci,
                     "std": float(final.std(ddof=1)) if len(runs) > 1 else 0.0,
                     "per_seed": {r["seed"]: r["rounds"][-1]["true_reward_mean"] for r in runs},
                     "paired_vs": baseline, "paired_diff": d_mean, "paired_ci95": d_ci, "paired_per_seed": diffs,
                     "wins": wins(diffs.values()), "paired_n": len(diffs),
                     "finetune_steps": int(sum(rd.get("finetune_steps") or 0 for rd in runs[0]["rounds"][1:])),
                     "kl_base": float(kl.mean()), "wall_s": float(np.mean([r["wall_s"] for r in runs]))})
    return rows


def reward_quality_rows(results: dict) -> list[dict]:
    """Per method and round: the Pearson correlation between the reward ensemble's mean prediction and the true
    reward on that round's eval images (the reward fitted on the labels so far), over the finished seeds: mean,
    min, max, the seeds whose correlation was negative, and n (rounds where either side was constant are left out)."""
    rows = []
    for method in METHODS:
        runs = finished_runs(results, method)
        if not runs:
            continue
        for k in range(1, max(len(r["rounds"]) for r in runs)):
            got = {r["seed"]: r["rounds"][k].get("pred_true_corr") for r in runs if len(r["rounds"]) > k}
            vals = {s: v for s, v in got.items() if v is not None}
            if not vals:
                continue
            v = np.array(list(vals.values()), dtype=float)
            row = {"method": method, "round": k, "labels": runs[0]["rounds"][k]["labels"], "n": len(v),
                   "mean": float(v.mean()), "min": float(v.min()), "max": float(v.max()),
                   "negative_seeds": sorted(s for s, c in vals.items() if c < 0)}
            for key in ("spread_abs_error_corr", "bonus_error_corr"):  # uncertainty_calibration; absent in old runs
                cal = [r["rounds"][k].get(key) for r in runs if len(r["rounds"]) > k]
                cal = [c for c in cal if c is not None]
                row[key] = (*mean_ci95(cal), len(cal)) if cal else None
            rows.append(row)
    return rows


def write_table(results: dict, path: Path, head: str = "") -> str:
    """``head`` and ``table_text(results)`` written atomically to ``path`` (``write_text``): written in place, a run
    killed or a disk full mid-write left a cut-off table under the final name, read as a result (eighth review).
    Returns the text written."""
    text = head + table_text(results)
    write_text(path, text)
    return text


def table_text(results: dict) -> str:
    """The results table as Markdown (see ``write_table``)."""
    s = results["settings"]
    pre = results.get("pretrained") or {}
    lines = [f"Oracle `{s['oracle']}`, budgets {s['budgets']} (Non-adaptive: {sum(s['budgets'])} in one round), "
             f"feedback noise sigma {s['noise_sigma']:.3g}, eval set {len(s['eval']['seeds'])} images.",
             f"Pretrained model: true reward {pre.get('true_reward_mean', float('nan')):.3f} "
             f"(std over eval images {pre.get('true_reward_std', float('nan')):.3f}).", "",
             "| method | rounds | labels | optimiser steps | final true reward, mean [95% CI] | "
             "paired diff. vs Greedy [95% CI] | wins | per seed | KL to pretrained | wall time per run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table_rows(results):
        per = ", ".join(f"{v:.2f}" for _, v in sorted(r["per_seed"].items(), key=lambda kv: int(kv[0])))
        paired = ("-" if r["method"] == "greedy" or not r["paired_n"] else
                  f"{r['paired_diff']:+.3f} {interval_text(r['paired_diff'], r['paired_ci95'], '+.3f')}")
        wins = "-" if r["method"] == "greedy" or not r["paired_n"] else wins_text(r['wins'], r['paired_n'])
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['rounds']} | {r['labels']} | {r['finetune_steps']} | "
                     f"**{r['mean']:.3f}** {interval_text(r['mean'], r['ci95'], '.3f')} | {paired} | {wins} | "
                     f"{per} | {r['kl_base']:.3g} | {r['wall_s'] / 60:.1f} min |")
    quality = reward_quality_rows(results)
    if quality:
        lines += ["", "Reward ensemble against the true reward on the eval images after each round (Pearson r of the "
                      "mean prediction; mean over seeds [min, max]; seeds with r < 0):", "",
                  "| method | round | labels | r, mean [min, max] | seeds with r < 0 | "
                  "r(heads' spread, abs. error) [95% CI, clipped to +-1] | r(optimism, error) [95% CI, clipped to +-1] |",
                  "|---|---|---|---|---|---|---|"]

        def cal(c):
            if c is None:
                return "-"
            m, h, n = c  # a t-interval of correlations, shown within the range a correlation can take
            if n < 2 and not math.isnan(m):
                return f"{m:+.2f} (n=1)"
            if math.isnan(m) or h == 0:  # interval_text's words: equal values printed "[m, m]" (tenth review)
                return f"{'' if math.isnan(m) else f'{m:+.2f} '}{interval_text(m, h, '+.2f')} (n={n})"
            return f"{m:+.2f} [{max(-1.0, m - h):+.2f}, {min(1.0, m + h):+.2f}] (n={n})"

        for q in quality:
            neg = ", ".join(str(x) for x in q["negative_seeds"]) or "-"
            lines.append(f"| {LABELS.get(q['method'], q['method'])} | {q['round']} | {q['labels']} | "
                         f"{q['mean']:.2f} [{q['min']:.2f}, {q['max']:.2f}] (n={q['n']}) | {neg} | "
                         f"{cal(q.get('spread_abs_error_corr'))} | {cal(q.get('bonus_error_corr'))} |")
    return "\n".join(lines) + "\n"


def summarise(results: dict, out: Path) -> str:
    write_curve(results, out / CURVE)
    return write_table(results, out / TABLE)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def code_version() -> dict:
    """The git commit of this checkout and whether seiko_core has uncommitted changes (read-only git calls)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str | None:
        try:
            done = subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable: {exc}"
        return done.stdout.strip() if done.returncode == 0 else f"unavailable: {done.stderr.strip()}"

    status = git("status", "--porcelain", "--", "seiko_core")
    return {"commit": git("rev-parse", "HEAD"), "seiko_core_changes": status.splitlines() if status else []}


def build_parser(scratch_command: str = SCRATCH_COMMAND) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m seiko_core.simulate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/shapes-sd", help="local diffusers directory or hub id")
    p.add_argument("--method", default="all", help=f"one of {list(METHODS)}, a comma-separated list, or all")
    p.add_argument("--budgets", default="64,128,256,512", help="labels per round, comma-separated")
    p.add_argument("--oracle", required=True, help="built-in name (purple, gold_on_black), laion_aesthetic:weights."
                                                   "safetensors, path/to/file.py:function or package.module:function")
    p.add_argument("--seeds", default="0,1,2", help="run seeds, comma-separated")
    p.add_argument("--out", required=True, help="output directory (results.json, curve.png, table.md)")
    p.add_argument("--preset", default=None, help="hyper-parameters (shapes, sd15); default by model size")
    p.add_argument("--eval-n", type=int, default=None,
                   help=f"held-out eval images (default {DEFAULT_EVAL_SEEDS_PER_PROMPT} per eval prompt)")
    p.add_argument("--kl-n", type=int, default=8, help="eval images on which the trajectory KL is measured")
    p.add_argument("--noise-sigma", type=float, default=None, help="feedback noise std (default: the oracle's default_sigma)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a config field for every method, e.g. finetune.lr=1e-2 (repeatable)")
    p.add_argument("--bonus-alpha", type=float, default=None,
                   help="SEIKO-UCB's bonus scale alpha in rating stds (default: the form's, config.UCB_DEFAULT_ALPHA)")
    p.add_argument("--ucb-form", choices=("textbook", "covariance"), default=None,
                   help="SEIKO-UCB's matrix A: textbook (lambda I + sum f f^T, default) or covariance (reference code)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: torch's; with --jobs, the CPUs shared out)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (default 1)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no inner progress bars (per-round lines still print)")
    p.add_argument("--keep-adapters", action="store_true",
                   help="save each run's final adapter under OUT/adapters/METHOD_seedSEED (for seiko_core.klmatch)")
    add_max_mib_argument(p, f"OUT/{TMP_PREFIX}{scratch_command}-*")
    return p


def method_config(base: SeikoConfig, method: str, args) -> SeikoConfig:
    cfg = base.for_method(method)
    if method in ("ucb", "ucb_cov"):
        if args.ucb_form is not None and method == "ucb":
            cfg.optimism.bonus = args.ucb_form
        if args.bonus_alpha is not None:
            cfg.optimism.bonus_alpha = args.bonus_alpha
        cfg.optimism.bonus_alpha = cfg.optimism.alpha()  # recorded as used: the form's calibrated default if not given
    return cfg


def _spawn():
    import multiprocessing

    return multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads


def check_common_args(args, *, images_per_label: int = 1) -> tuple[tuple[str, ...], tuple[int, ...], tuple[int, ...]]:
    """(methods, budgets, seeds) from the arguments ``simulate`` and ``pairwise_sim`` share; SimulationError with one
    sentence when one is bad. ``images_per_label``: images sampled per label (2 for a comparison)."""
    methods = parse_methods(args.method)
    budgets = parse_int_list(args.budgets, "--budgets")
    seeds = parse_int_list(args.seeds, "--seeds")
    cap = MAX_ROUND_BUDGET // images_per_label
    if any(b < 1 or b >= cap for b in budgets) or sum(budgets) >= cap:
        per = "" if images_per_label == 1 else f" ({images_per_label} images per label)"
        raise SimulationError(f"budgets must be positive and sum to less than {cap}{per}, got {budgets}")
    if len(budgets) > MAX_ROUNDS:
        raise SimulationError(f"--budgets may list at most {MAX_ROUNDS} rounds (so that image seeds stay apart), "
                              f"got {len(budgets)}")
    if any(s < 0 or s >= MAX_RUN_SEED for s in seeds):
        raise SimulationError(f"seeds must lie in [0, {MAX_RUN_SEED}) (the image seeds of different runs stay apart "
                              f"only there), got {seeds}")
    if args.noise_sigma is not None and not (math.isfinite(args.noise_sigma) and args.noise_sigma >= 0):
        raise SimulationError(f"--noise-sigma must be a finite number >= 0, got {args.noise_sigma}")
    if args.bonus_alpha is not None and not args.bonus_alpha >= 0:
        raise SimulationError(f"--bonus-alpha must be >= 0, got {args.bonus_alpha}")
    if not 1 <= args.jobs <= 64:
        raise SimulationError(f"--jobs must lie in [1, 64], got {args.jobs}")
    if args.threads is not None and args.threads < 1:
        raise SimulationError(f"--threads must be >= 1, got {args.threads}")
    try:  # before the model loads: --out was made only after it, a traceback there if it could not be (seventh review)
        check_can_write(Path(args.out) / RESULTS)
    except OSError as exc:
        raise SimulationError(f"the output directory {args.out} cannot be written ({exc.strerror or exc}); "
                              "give another --out") from exc
    return methods, budgets, seeds


def load_parts_and_oracle(args):
    """(model parts, oracle) for the arguments, with torch's thread count set; None after printing the error."""
    from .models import ModelLoadError, load_model
    from .oracles import LAION_PREFIX, OracleError, load_oracle

    try:
        oracle = None if args.oracle.strip().startswith(LAION_PREFIX) else load_oracle(args.oracle)
    except OracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    if args.threads is None and args.jobs > 1:
        args.threads = max(1, (os.cpu_count() or 1) // args.jobs)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        parts = load_model(args.model, device=args.device)
        if oracle is None:
            oracle = load_oracle(args.oracle, parts)
    except (ModelLoadError, OracleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    return parts, oracle


def record_invocation(results: dict, argv: list[str], *, jobs: int, device: str) -> None:
    """This invocation in ``results``: ``machine`` (this machine and process) and one more ``invocations`` entry with
    its argv, start time and code version. ``machine["code"]`` stays the first invocation's: a resume replaced it,
    so a file whose runs were made by two commits named only the last (found by review); each invocation's is in its
    entry."""
    code = code_version()
    earlier = results.get("machine") if isinstance(results.get("machine"), dict) else {}
    results["machine"] = {"torch": torch.__version__, "code": earlier.get("code", code), "threads": torch.get_num_threads(),
                          "jobs": jobs, "device": device, "cpus": os.cpu_count(), "platform": platform.platform()}
    results.setdefault("invocations", []).append({"argv": argv, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                                                  "code": code})


def stop_workers(pool: ProcessPoolExecutor, out: Path, runs: Iterable[tuple[str, int]], *,
                 grace_s: float = 30.0) -> None:
    """End ``pool``'s worker processes now, runs in flight included, and wait for them: SIGTERM (a worker installs no
    handler: it ends where it stands), SIGKILL for one still there after ``grace_s``. Then the ``.tmp-`` entries of
    ``runs`` (the (method, seed) pairs not finished) a worker stopped while writing left in OUT's grids and adapters
    folders are removed, theirs only: another campaign into the same OUT may be writing its own (a scratch file's
    name goes with the run's own folder, ``own_scratch_folder``)."""
    table = getattr(pool, "_processes", None)  # CPython's table of the pool's workers (no public way to reach them)
    if table is None:  # a Python without it: said, not passed over as if there were no workers (tenth review)
        print(f"warning: this Python's {type(pool).__name__} does not show its worker processes; the runs in flight "
              "are not stopped and the campaign ends when they end", file=sys.stderr)
    processes = list((table or {}).values())
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(grace_s)
        if process.is_alive():
            process.kill()
            process.join()
    for method, seed in runs:
        for partial in [*(out / "grids").glob(f"{TMP_PREFIX}{method}_seed{seed}.png-*"),
                        *(out / ADAPTERS).glob(f"{TMP_PREFIX}{method}_seed{seed}-*")]:
            if partial.is_dir() and not partial.is_symlink():
                shutil.rmtree(partial)
            else:
                partial.unlink()


def run_campaign(args, argv, *, parts, oracle, base: SeikoConfig, ev: EvalSet, settings: dict,
                 methods: Sequence[str], seeds: Sequence[int], pool_task, serial_run, summarise_fn,
                 pretrained_note: str, scratch_command: str = SCRATCH_COMMAND) -> int:
    """Everything after the settings, shared by ``simulate`` and ``pairwise_sim``: results.json loaded (a resume;
    other settings are refused), the pretrained row once, then every (method, seed) run not done yet, seed-major, in
    a process pool (``--jobs``) or in this process; results.json is rewritten after every run.

    ``pool_task(method, seed, pretrained, grid_path)`` gives ``(function, *arguments)`` for the pool (a module-level
    function); ``serial_run(method, seed, pretrained, on_round, bars, grid_path)`` runs one in this process and
    returns its record; ``summarise_fn(results, out)`` writes the curve and the table and returns the table."""
    from .oracles import OracleError

    try:
        out = Path(args.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SimulationError(f"the output directory {out} cannot be made ({exc.strerror or exc}); "
                                  "give another --out") from exc
        results = load_results(out / RESULTS, settings)
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:  # an oracle that fails or answers wrongly (in this process or a worker's): its sentence, not a traceback; the
        # runs finished before it stay in results.json (nineteenth review)
        return _campaign(args, argv, out, parts=parts, oracle=oracle, base=base, ev=ev, results=results,
                         methods=methods, seeds=seeds, pool_task=pool_task, serial_run=serial_run,
                         summarise_fn=summarise_fn, pretrained_note=pretrained_note, scratch_command=scratch_command)
    except OracleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _campaign(args, argv, out: Path, *, parts, oracle, base: SeikoConfig, ev: EvalSet, results: dict,
              methods: Sequence[str], seeds: Sequence[int], pool_task, serial_run, summarise_fn, pretrained_note: str,
              scratch_command: str) -> int:
    """:func:`run_campaign` once results.json is loaded."""
    # generated images beyond --pixels-in-memory-max-mib go in a folder of the run's own, OUT/.tmp-<command>-*/scratch
    # (pairwise_sim's its own name since the tenth review: its leftovers were named as simulate's),
    # removed when the campaign ends, however it ends; never OUT/scratch, a live data dir's worker's (ninth review)
    with own_scratch_folder(out, scratch_command) as args.scratch_folder:
        record_invocation(results, list(sys.argv if argv is None else argv), jobs=args.jobs, device=str(parts.device))
        results_path = out / RESULTS
        bars = Bars(enabled=not args.no_progress)
        t_all = time.time()

        # round 0: the pretrained model on the eval set, once for every run
        if results.get("pretrained") is None:
            m, images = evaluate(parts, base, oracle, ev, adapter=None, prev_adapter=None, bars=bars, spill=spill_of(args))
            bars.close()
            results["pretrained"] = m
            save_grid(images, out / "grids" / "pretrained.png")
            write_json_atomic(results_path, results)
        pretrained = {k: v for k, v in results["pretrained"].items()}
        tqdm.write(f"pretrained: true reward {pretrained['true_reward_mean']:.3f} +- {pretrained['true_reward_std']:.3f} "
                   f"on {len(ev.seeds)} eval images; {pretrained_note}")

        # seed-major, so that a partial result compares every method on the same seeds
        todo = [(m, s) for s in seeds for m in methods if results["runs"].get(m, {}).get(str(s), {}).get("status") != "done"]
        def finished(method: str, seed: int, run: dict) -> None:
            results["runs"].setdefault(method, {})[str(seed)] = run
            write_json_atomic(results_path, results)
            summarise_fn(results, out)

        with tqdm(total=len(methods) * len(seeds), initial=len(methods) * len(seeds) - len(todo), desc="runs",
                  dynamic_ncols=True) as outer:
            if args.jobs > 1 and len(todo) > 1:
                bars.close()
                with ProcessPoolExecutor(max_workers=min(args.jobs, len(todo)), mp_context=_spawn(),
                                         initializer=_worker_init,
                                         initargs=(args.model, args.oracle, args.device, args.threads)) as pool:
                    pending = {pool.submit(*pool_task(m, s, pretrained, out / "grids" / f"{m}_seed{s}.png")): (m, s)
                               for m, s in todo}
                    try:
                        while pending:
                            done, _ = wait(pending, return_when=FIRST_COMPLETED)
                            for fut in saved_first(done):
                                method, seed = pending.pop(fut)
                                finished(method, seed, fut.result())
                                outer.set_postfix(method=method, seed=seed)
                                outer.update(1)
                    except BaseException:
                        for fut in pending:  # a failed run stops the others that have not started; finished ones are saved
                            fut.cancel()
                        # and those in flight, whose records would not be saved: the pool's exit waited for them, so a
                        # SIGTERM or Ctrl-C ended the campaign only when they ended (ninth review)
                        stop_workers(pool, out, pending.values())
                        raise
            else:
                for method, seed in todo:
                    outer.set_postfix(method=method, seed=seed)

                    def on_round(run, method=method, seed=seed):
                        bars.close()
                        results["runs"].setdefault(method, {})[str(seed)] = run
                        write_json_atomic(results_path, results)
                        tqdm.write(round_line(method, seed, run["rounds"][-1]))

                    run = serial_run(method, seed, pretrained, on_round, bars, out / "grids" / f"{method}_seed{seed}.png")
                    finished(method, seed, run)
                    outer.update(1)
        results["invocations"][-1]["wall_s"] = time.time() - t_all
        write_json_atomic(results_path, results)
        tqdm.write(summarise_fn(results, out))
        tqdm.write(f"wrote {results_path}, {out / CURVE}, {out / TABLE} ({(time.time() - t_all) / 60:.1f} min)")
        return 0


def campaign_setup(args, parts, oracle, methods, budgets):
    """The base config (preset by model size, the budgets, ``--set`` overrides), each method's config, the eval set,
    the feedback noise sigma and the settings that results.json records and resumes on; SimulationError when bad."""
    from .presets import preset
    from .sampling import check_steps

    try:
        base = preset(args.preset or ("shapes" if parts.sample_size <= 32 else "sd15"))
        base.budgets = budgets
        # The simulator measures learning per label: every run takes the configured steps, whatever the machine's load
        # (two runs at --jobs 2 share the cores), so that methods and seeds compare at equal steps. A preset's time
        # limit is the product's (the wait between rounds); `--set finetune.max_seconds=23` opts back in.
        base.finetune.max_seconds = None
        base = apply_overrides(base, args.set)
        check_runnable(base)  # e.g. --set prompts=[]: a valid config with nothing to sample
        check_round_limits(base)  # e.g. --set finetune.epochs=1e9: per round, before method_config scales Non-adaptive
        check_prompts(base)
        check_steps(base.sampling.steps, parts.scheduler.config)  # e.g. --set sampling.steps=2000 (twentieth review)
        cfgs = {m: method_config(base, m, args) for m in methods}
        for cfg in cfgs.values():  # as each trains: Non-adaptive's one round has K times the epochs
            check_round_trajectories(cfg)
    except SimulationError:
        raise
    except (ValueError, TypeError) as exc:  # a preset name or a --set value the config refuses: its sentence
        raise SimulationError(str(exc)) from exc
    ev = make_eval_set(base, args.eval_n, args.kl_n)
    sigma = oracle.default_sigma if args.noise_sigma is None else float(args.noise_sigma)
    settings = {"model": args.model, "oracle": args.oracle, "oracle_spread": oracle.spread, "noise_sigma": sigma,
                "budgets": list(budgets), "preset": args.preset, "overrides": list(args.set),
                "bonus_alpha": args.bonus_alpha, "ucb_form": args.ucb_form, "eval": ev.to_dict(),
                "config": to_dict(base)}
    return base, cfgs, ev, sigma, settings


def spill_of(args) -> PixelSpill:
    """Where a campaign's generated images beyond ``--pixels-in-memory-max-mib`` go: the ``scratch`` folder of the
    run's own folder (``args.scratch_folder``, made by ``run_campaign``: OUT/.tmp-simulate-*)."""
    return PixelSpill(Path(args.scratch_folder), args.pixels_in_memory_max_bytes)


def saved_first(done) -> list:
    """The futures of ``done`` (all finished), those that returned first: a failed run's error, raised as its future
    was read, left the other runs finished in the same wait unsaved (not in results.json, run again by a resume;
    found by a read-only review, nineteenth review)."""
    return sorted(done, key=lambda fut: fut.exception() is not None)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        methods, budgets, seeds = check_common_args(args)
    except SimulationError as exc:
        parser.error(str(exc))

    loaded = load_parts_and_oracle(args)
    if loaded is None:
        return 2
    parts, oracle = loaded
    try:
        base, cfgs, ev, sigma, settings = campaign_setup(args, parts, oracle, methods, budgets)
    except SimulationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def adapter_dir(method, seed):
        return Path(args.out) / ADAPTERS / f"{method}_seed{seed}" if args.keep_adapters else None

    # spill_of(args) when a run starts: its folder is made by run_campaign
    def pool_task(method, seed, pretrained, grid_path):
        return (_worker_run, cfgs[method], sigma, ev, seed, pretrained, grid_path, adapter_dir(method, seed),
                spill_of(args))

    def serial_run(method, seed, pretrained, on_round, bars, grid_path):
        return run_one(parts, cfgs[method], oracle, sigma, ev, seed, pretrained, on_round=on_round, bars=bars,
                       grid_path=grid_path, adapter_dir=adapter_dir(method, seed), spill=spill_of(args))

    return run_campaign(args, argv, parts=parts, oracle=oracle, base=base, ev=ev, settings=settings, methods=methods,
                        seeds=seeds, pool_task=pool_task, serial_run=serial_run, summarise_fn=summarise,
                        pretrained_note=f"feedback sigma {sigma:.3g}")

if __name__ == "__main__":
    exit_on_sigterm()  # SIGTERM ends it as Ctrl-C does: its scratch folder goes
    raise SystemExit(main())
