"""A method's final model moved to another method's distance: ``python -m seiko_core.klmatch SRC --scale greedy --to
bootstrap --out DIR``.

Issue 11's distance reading asks whether SEIKO-Bootstrap leads Greedy only because its final model ends further from
the pretrained one. The distance is an outcome of a run, so this sets it: for every seed of ``SRC`` (a
``seiko_core.simulate --keep-adapters`` directory), the ``--scale`` method's final LoRA is scaled, delta W = s * B A
with B multiplied by s (s = 1: the model as trained, s = 0: the pretrained model), until the final model's trajectory
KL to the pretrained model on the run's KL eval images equals the ``--to`` method's final ``kl_base`` on the same seed,
within ``--rel-tol``. The scaled model is then evaluated on the run's eval set with the run's oracle, as the
simulator evaluates every round. Nothing is trained: the direction is the method's own, only the distance is set.

The search works on g(s) = sqrt(KL(s)), which is close to linear in s for small moves (KL grows with the square of a
small parameter change): a secant from (0, 0) and (1, sqrt(KL(1))), then regula falsi inside the bracket once the
target is passed. A seed whose target is not reached within ``--max-evals`` KL evaluations is recorded as unmatched,
with the nearest scale tried.

``DIR/results.json`` has the source's settings and pretrained row, and one run per seed under the scaled method's
name whose final round is the scaled model's (with ``kl_scale``, ``kl_target``, ``kl_matched`` and the unscaled
figures beside it), so ``seiko_core.pooled`` reads it as any simulator directory, e.g. ``python -m seiko_core.pooled
SRC --against DIR --baseline greedy`` for the ``--to`` method against the scaled one.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .atomic import check_can_write
from .config import METHODS, from_dict
from .scratch import PixelSpill, add_max_mib_argument, exit_on_sigterm, own_scratch_folder

MATCHED_ADAPTER = "kl_matched"


class KLMatchError(ValueError):
    """One sentence for the person: a source without adapters, a seed missing, a target that is not positive."""


@dataclass
class ScaleSearch:
    scale: float
    kl: float
    matched: bool
    evals: list[tuple[float, float]] = field(default_factory=list)  # (s, KL(s)) in the order tried


def find_scale(kl_of: Callable[[float], float], target: float, *, kl_at_one: float, rel_tol: float = 0.02,
               max_evals: int = 8, max_scale: float = 4.0) -> ScaleSearch:
    """The s in [0, max_scale] with |kl_of(s) / target - 1| <= rel_tol, KL(0) = 0 and KL(1) = ``kl_at_one`` known.

    On g(s) = sqrt(KL(s)): until the target is bracketed, a secant through the two largest scales tried (at most
    doubling s); then the Illinois variant of regula falsi (the end kept twice in a row has its value halved, so a
    curved g cannot stall one end), bisecting while the upper end's KL is not finite (a non-finite KL counts as above
    the target). At most ``max_evals`` calls of ``kl_of``; unmatched after them (or when even ``max_scale`` stays
    below the target): the nearest s evaluated (relative error), ``matched`` False."""
    if not (math.isfinite(target) and target > 0):
        raise KLMatchError(f"the target KL must be a positive number of nats, got {target!r}")
    if not (math.isfinite(kl_at_one) and kl_at_one > 0):
        raise KLMatchError(f"the model to scale has KL {kl_at_one!r} to the pretrained one at s = 1; "
                           "it has not moved, so no scale sets its distance")
    goal = math.sqrt(target)
    evals: list[tuple[float, float]] = [(1.0, kl_at_one)]

    def done(kl: float) -> bool:
        return math.isfinite(kl) and abs(kl / target - 1.0) <= rel_tol

    if done(kl_at_one):
        return ScaleSearch(1.0, kl_at_one, True, evals)
    below = [(0.0, -goal), (1.0, math.sqrt(kl_at_one) - goal)] if kl_at_one < target else [(0.0, -goal)]
    lo = below[-1]  # (s, g(s) - goal) with g below the goal
    hi = None if kl_at_one < target else (1.0, math.sqrt(kl_at_one) - goal)
    kept: str | None = None  # the end of the bracket that the last step kept ("lo" or "hi")
    for _ in range(max_evals):
        if hi is None:
            if lo[0] >= max_scale:
                break  # even the largest scale allowed stays below the target
            (s0, f0), (s1, f1) = below[-2:]
            slope = (f1 - f0) / (s1 - s0)
            s = 2.0 * s1 if slope <= 0 else min(2.0 * s1, s1 - f1 / slope)
            s = min(s, max_scale)
        elif not math.isfinite(hi[1]):
            s = 0.5 * (lo[0] + hi[0])
        else:
            s = lo[0] - lo[1] * (hi[0] - lo[0]) / (hi[1] - lo[1])
        kl = float(kl_of(s))
        evals.append((s, kl))
        if done(kl):
            return ScaleSearch(s, kl, True, evals)
        f = math.sqrt(max(kl, 0.0)) - goal if math.isfinite(kl) else math.inf
        if f < 0:  # a new lower end
            if hi is None:
                below.append((s, f))
            elif kept == "hi" and math.isfinite(hi[1]):
                hi = (hi[0], 0.5 * hi[1])  # the upper end stays a second time in a row: halve its value
            lo, kept = (s, f), (None if hi is None else "hi")
        else:  # a new upper end
            if hi is not None and kept == "lo":
                lo = (lo[0], 0.5 * lo[1])  # the lower end stays a second time in a row: halve its value
            hi, kept = (s, f), "lo"
    finite = [e for e in evals if math.isfinite(e[1])]
    s, kl = min(finite or evals, key=lambda e: abs(e[1] / target - 1.0) if math.isfinite(e[1]) else math.inf)
    return ScaleSearch(s, kl, False, evals)


class ScaledAdapter:
    """Adapter ``name`` on ``unet`` with its LoRA delta scaled: every ``lora_B`` set to s times its value at creation."""

    def __init__(self, unet, name: str):
        self.unet, self.name = unet, name
        cfg = unet.peft_config.get(name)
        params = [(n, p) for n, p in unet.named_parameters() if f".{name}." in n or n.endswith(f".{name}")]
        other = sorted({part for n, _ in params for part in n.split(".")
                        if part.startswith("lora_") and part not in ("lora_A", "lora_B")})
        if getattr(cfg, "use_dora", False) or other:
            raise KLMatchError(f"adapter {name!r} is not a plain LoRA (DoRA or {other or 'other'} tensors): "
                               "scaling its B matrices would not scale its change to the model")
        self._b = [(p, p.detach().clone()) for n, p in params if ".lora_B." in n]
        if not self._b:
            raise KLMatchError(f"adapter {name!r} has no LoRA B matrices to scale")

    @torch.no_grad()
    def set(self, s: float) -> None:
        for p, b0 in self._b:
            p.copy_(b0 * s)


def evals_record(evals: list[tuple[float, float]]) -> list[list[float | None]]:
    """A search's ``(s, KL(s))`` for results.json: ``[s, KL]``, the KL None where it was not finite (the search takes a
    non-finite KL as one above the target; JSON has no NaN or infinity, and results.json refuses them)."""
    return [[float(s), float(kl) if math.isfinite(kl) else None] for s, kl in evals]


def _final(run: dict) -> dict:
    return run["rounds"][-1]


def match_seed(parts, cfg, oracle, ev, adapter_path: Path, target: float, *, rel_tol: float,
               max_evals: int, spill=None) -> tuple[ScaleSearch, dict]:
    """The search for one seed, then the scaled model's eval metrics (``simulate.evaluate``, no reward model).
    KL(1) is measured on the reloaded adapter (``m["reload_kl_at_one"]``), not taken from the run's record.
    ``spill`` (a ``scratch.PixelSpill``): the eval images beyond its limit are kept in a scratch file, as the
    simulator keeps the same eval set's (seventh review: they were all held in memory here)."""
    from . import lora
    from .finetune import trajectory_kl
    from .simulate import evaluate, reset_adapters

    reset_adapters(parts)
    lora.load_adapter(parts, adapter_path, MATCHED_ADAPTER)
    scaled = ScaledAdapter(parts.unet, MATCHED_ADAPTER)
    sc = cfg.sampling
    kw = dict(steps=sc.steps, eta=sc.eta, guidance=sc.guidance, batch_size=sc.batch_size)
    p, s = ev.prompts[:ev.kl_n], ev.seeds[:ev.kl_n]

    def kl_of(scale: float) -> float:
        scaled.set(scale)
        return float(trajectory_kl(parts, p, s, adapter=MATCHED_ADAPTER, reference=None, **kw).mean())

    try:
        kl_at_one = kl_of(1.0)
        search = find_scale(kl_of, target, kl_at_one=kl_at_one, rel_tol=rel_tol, max_evals=max_evals)
        scaled.set(search.scale)
        m, _ = evaluate(parts, cfg, oracle, ev, adapter=MATCHED_ADAPTER, prev_adapter=None, spill=spill)
    finally:
        reset_adapters(parts)
    m["reload_kl_at_one"] = kl_at_one
    return search, m


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m seiko_core.klmatch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, help="a seiko_core.simulate --keep-adapters output directory")
    p.add_argument("--scale", required=True, choices=METHODS, help="the method whose final models are scaled")
    p.add_argument("--to", required=True, choices=METHODS, help="the method whose final KL (same seed) is the target")
    p.add_argument("--out", required=True, type=Path, help="output directory (results.json)")
    p.add_argument("--rel-tol", type=float, default=0.02, help="matched when |KL / target - 1| <= this (default 0.02)")
    p.add_argument("--max-evals", type=int, default=8,
                   help="KL evaluations of the search per seed at most, after the one at s = 1 (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_max_mib_argument(p, "OUT/.tmp-klmatch-*")
    return p


def _source(src: Path, scale: str, to: str) -> tuple[dict, list[str]]:
    import json

    from .pooled import _number as pooled_number
    from .pooled import _problem
    from .simulate import ADAPTERS, RESULTS

    path = src / RESULTS
    if not path.is_file():
        raise KLMatchError(f"{str(src)!r} has no {RESULTS}; give a seiko_core.simulate --out directory")
    try:
        results = json.loads(path.read_text())
    except (ValueError, RecursionError) as exc:  # RecursionError: nested JSON
        raise KLMatchError(f"{str(path)!r} could not be read as simulator results ({exc})") from exc
    # `"runs": []` ended in an AttributeError traceback, a seed key that is not a whole number in int()'s ValueError
    # (twentieth review): the shape pooled checks, then each finished run's key its own seed, a whole number
    problem = _problem(results)
    if problem is not None:
        raise KLMatchError(f"{str(path)!r} is not simulator results: {problem}")
    done = {}
    for method in (scale, to):
        done[method] = set()
        for key, run in results["runs"].get(method, {}).items():
            if run.get("status") != "done":
                continue
            if not (key.isdecimal() and key.isascii() and str(run["seed"]) == key):
                raise KLMatchError(f"{str(path)!r} is not simulator results: run {method!r} seed {key[:40]!r} is not "
                                   "keyed by its own seed, a whole number")
            done[method].add(key)
    seeds = sorted(done[scale] & done[to], key=int)
    if not seeds:
        raise KLMatchError(f"{str(src)!r} has no seed finished by both {scale!r} and {to!r}")
    for method in (scale, to):  # only the seeds read: a seed one method alone finished is left out, its KL too (review)
        for key in seeds:
            if not pooled_number(results["runs"][method][key]["rounds"][-1].get("kl_base")):
                raise KLMatchError(f"{str(path)!r} has no kl_base for {method} seed {key}; klmatch needs each final "
                                   "model's KL to the pretrained one")
    missing = [s for s in seeds if not (src / ADAPTERS / f"{scale}_seed{s}").is_dir()]
    if missing:
        raise KLMatchError(f"{str(src)!r} has no saved adapter for {scale} seed(s) {', '.join(missing)}; "
                           "rerun those with seiko_core.simulate --keep-adapters")
    return results, seeds


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .models import ModelLoadError, load_model
    from .oracles import OracleError, load_oracle
    from .simulate import ADAPTERS, EvalSet, write_json_atomic

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.scale == args.to:
        parser.error("--scale and --to must be different methods")
    if not (0 < args.rel_tol < 1) or args.max_evals < 1:
        parser.error("--rel-tol must lie in (0, 1) and --max-evals be at least 1")
    if args.threads is not None and args.threads < 1:  # torch's RuntimeError traceback, once the source was read
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.out.resolve() == args.src.resolve():
        parser.error("--out must be another directory than the source: the source's results.json would be replaced")
    try:  # before the model loads: an --out that cannot be written was found only then (seventh review)
        check_can_write(args.out / "results.json")
    except OSError as exc:
        print(f"error: cannot write --out {str(args.out)!r}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    try:
        results, seeds = _source(args.src, args.scale, args.to)
        try:
            settings = results["settings"]
            cfg = from_dict(settings["config"])
            ev = EvalSet(**settings["eval"])
            model_spec, oracle_spec = settings["model"], settings["oracle"]
        except (KeyError, TypeError, ValueError) as exc:
            raise KLMatchError(f"{str(args.src / 'results.json')!r} has no usable settings ({exc!r})") from exc
        if args.threads:
            torch.set_num_threads(args.threads)
        parts = load_model(model_spec, device=args.device)
        oracle = load_oracle(oracle_spec, parts)
    except (KLMatchError, ModelLoadError, OracleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_scale = {str(k): v for k, v in results["runs"][args.scale].items()}
    runs_to = {str(k): v for k, v in results["runs"][args.to].items()}
    out = {"settings": settings, "pretrained": results["pretrained"], "machine": results.get("machine"),
           "klmatch": {"src": str(args.src), "scale": args.scale, "to": args.to, "rel_tol": args.rel_tol,
                       "max_evals": args.max_evals, "argv": list(sys.argv if argv is None else argv),
                       "started": time.strftime("%Y-%m-%d %H:%M:%S")},
           "runs": {args.scale: {}}}
    args.out.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    # the eval images beyond the limit go in a folder of the run's own, OUT/.tmp-klmatch-*/scratch, removed when the
    # command ends, however it ends; never OUT/scratch, a live data dir's worker's (ninth review)
    with own_scratch_folder(args.out, "klmatch") as own:
        spill = PixelSpill(own, args.pixels_in_memory_max_bytes)
        for seed in seeds:
            t0 = time.time()
            src_run = runs_scale[seed]
            before = _final(src_run)
            target = float(_final(runs_to[seed])["kl_base"])
            try:
                search, m = match_seed(parts, cfg, oracle, ev, args.src / ADAPTERS / f"{args.scale}_seed{seed}", target,
                                       rel_tol=args.rel_tol, max_evals=args.max_evals,
                                       spill=spill)
            except (KLMatchError, CheckpointError, OracleError) as exc:  # OracleError: a traceback (nineteenth review)
                print(f"error: {args.scale} seed {seed}: {exc}", file=sys.stderr)
                return 2
            if abs(m["reload_kl_at_one"] - before["kl_base"]) > 1e-3 * max(1.0, abs(before["kl_base"])):
                print(f"warning: {args.scale} seed {seed}: the reloaded adapter's KL {m['reload_kl_at_one']:.4g} differs from "
                      f"the run's {before['kl_base']:.4g}", file=sys.stderr)
            # the scaled model's own figures only (no reward model, no training figures: nothing was trained); the
            # trained model's beside them under unscaled_*
            final = {"round": before["round"], "labels": before["labels"], "budget": before.get("budget"), **m,
                     "kl_prev": None, "kl_scale": search.scale, "kl_target": target, "kl_matched": search.matched,
                     "kl_evals": evals_record(search.evals), "unscaled_true_reward_mean": before["true_reward_mean"],
                     "unscaled_kl_base": before["kl_base"], "match_s": time.time() - t0}
            out["runs"][args.scale][seed] = {**src_run, "rounds": [*src_run["rounds"][:-1], final]}
            write_json_atomic(args.out / "results.json", out)
            print(f"{args.scale} seed {seed}: s {search.scale:.3f} KL {search.kl:.3g} (target {target:.3g}, "
                  f"{'matched' if search.matched else 'NOT matched'}, {len(search.evals)} KLs) true reward "
                  f"{before['true_reward_mean']:.3f} -> {m['true_reward_mean']:.3f} ({time.time() - t0:.0f}s)", flush=True)
    out["klmatch"]["wall_s"] = time.time() - t_all
    write_json_atomic(args.out / "results.json", out)
    n_ok = sum(r["rounds"][-1]["kl_matched"] for r in out["runs"][args.scale].values())
    print(f"wrote {args.out / 'results.json'}: {n_ok} of {len(seeds)} seeds matched ({(time.time() - t_all) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    exit_on_sigterm()  # SIGTERM ends it as Ctrl-C does: its scratch folder goes
    raise SystemExit(main())
