"""Each method against Greedy, pooled over several oracles' runs: ``python -m seiko_core.pooled DIR [DIR ...]``.

Every DIR is a ``seiko_core.simulate --out`` directory (its results.json). For each method and each (oracle, seed)
that the method shares with Greedy, the paired difference of the final true reward is divided by that oracle's
spread: the standard deviation of the pretrained model's true reward over the eval images (results.json's
``pretrained.true_reward_std``), so one unit means one pretrained-image standard deviation on every oracle. The
table gives the mean of those standardised differences with a 95% Student t interval over all the pairs, the wins,
and the pairs per oracle. The rule was written down before the second oracle's runs were looked at (BENCHMARKS.md,
issue 11).

``--at-equal-kl`` asks whether each method's lead over Greedy goes with how far it moved the model: over the same
pairs it fits dR = a + b * dKL by least squares, dKL the difference of the final model's trajectory KL to the
pretrained model (``kl_base`` of the last round), and gives a (the lead at equal distance) and b with 95% t intervals.

``--against DIR [DIR ...]`` pairs each method with the SAME method in the other directories instead (one per oracle,
same seeds): a setting against the same method without it, e.g. ``--set optimism.bonus_balance=1`` runs against
plain ones. The spread is the control's. With ``--baseline METHOD`` as well, each treated method is paired with
METHOD's runs in the control directories instead (e.g. SEIKO-Bootstrap with a prior against plain Greedy).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from seiko_core.simulate import LABELS, METHODS, RESULTS, final_rewards, finished_runs
from seiko_core.stats import interval_text, mean_ci95, pearson, t975, wins, wins_text


def pretrained_spread(results: dict) -> float:
    """The pretrained model's standard deviation of the true reward over the eval images; refused if absent."""
    spread = float((results.get("pretrained") or {}).get("true_reward_std") or 0.0)
    if not spread > 0:
        raise ValueError(f"oracle {results['settings']['oracle']!r}: results.json has no pretrained spread to standardise by")
    return spread


def standardised_differences(results: dict, method: str, baseline: str = "greedy", control: dict | None = None
                             ) -> dict[str, float]:
    """{seed: (final true reward of ``method`` - that of ``baseline``) / the pretrained spread} on shared seeds.

    ``control``: another results.json of the same oracle that holds the baseline runs (and gives the spread)."""
    control = results if control is None else control
    spread = pretrained_spread(control)
    base = final_rewards(control, baseline)
    return {seed: (v - base[seed]) / spread for seed, v in final_rewards(results, method).items() if seed in base}


def final_kls(results: dict, method: str) -> dict[str, float]:
    """{seed (as text): the final round's KL to the pretrained model (``kl_base``)} over the method's finished runs."""
    out = {}
    for r in finished_runs(results, method):
        kl = r["rounds"][-1].get("kl_base")
        if kl is None:
            raise ValueError(f"{method} seed {r['seed']}: the last round has no kl_base (run with --kl-n above 0)")
        out[str(r["seed"])] = float(kl)
    return out


def kl_differences(results: dict, method: str, baseline: str = "greedy") -> dict[str, float]:
    """{seed: final KL to the pretrained model of ``method`` minus that of ``baseline``} on shared finished seeds."""
    base = final_kls(results, baseline)
    return {seed: v - base[seed] for seed, v in final_kls(results, method).items() if seed in base}


def line_fit(x, y) -> dict:
    """Least squares y = a + b x with 95% t half-widths for a and b (n - 2 degrees of freedom); needs 3 points and
    x not all equal."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(x)
    sxx = float(((x - x.mean()) ** 2).sum())
    if n < 3 or not sxx > 0:
        raise ValueError(f"a line needs at least 3 pairs with different x, got {n} pairs"
                         + ("" if n < 3 else " whose x are all equal"))
    b = float(((x - x.mean()) * (y - y.mean())).sum() / sxx)
    a = float(y.mean() - b * x.mean())
    s = math.sqrt(float(((y - a - b * x) ** 2).sum()) / (n - 2))
    t = t975(n - 2)
    return {"n": n, "a": a, "a_ci95": t * s * math.sqrt(1 / n + x.mean() ** 2 / sxx), "b": b,
            "b_ci95": t * s / math.sqrt(sxx)}


def equal_kl_rows(all_results: list[dict], baseline: str = "greedy") -> list[dict]:
    """Per method (but the baseline): :func:`line_fit` of the standardised reward differences on the KL differences,
    pooled over oracles, with the within-method correlation of final reward and KL per oracle."""
    rows = []
    for method in METHODS:
        if method == baseline:
            continue
        xs, ys = [], []
        for res in all_results:
            dr = standardised_differences(res, method, baseline)
            dkl = kl_differences(res, method, baseline)
            for seed in sorted(dr.keys() & dkl.keys(), key=int):
                xs.append(dkl[seed])
                ys.append(dr[seed])
        if not xs:
            continue
        try:
            rows.append({"method": method, **line_fit(xs, ys), "mean_dkl": float(np.mean(xs))})
        except ValueError as exc:  # too few pairs for this method: the row says so, the others are still fitted
            rows.append({"method": method, "n": len(xs), "mean_dkl": float(np.mean(xs)), "error": str(exc)})
    return rows


def equal_kl_table(all_results: list[dict], baseline: str = "greedy") -> str:
    lines = [f"Paired fit dR = a + b * dKL against {LABELS.get(baseline, baseline)} (dR in pretrained standard deviations, "
             "dKL the final model's KL to the pretrained model, nats), pooled over oracles and seeds:", "",
             "| method | pairs | mean dKL | a: lead at equal KL [95% CI] | b: per nat [95% CI] |", "|---|---|---|---|---|"]
    for r in equal_kl_rows(all_results, baseline):
        if "error" in r:
            lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['n']} | {r['mean_dkl']:+.2f} | not fitted: "
                         f"{r['error']} | |")
            continue
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {r['n']} | {r['mean_dkl']:+.2f} | **{r['a']:+.2f}** "
                     f"[{r['a'] - r['a_ci95']:+.2f}, {r['a'] + r['a_ci95']:+.2f}] | {r['b']:+.3f} "
                     f"[{r['b'] - r['b_ci95']:+.3f}, {r['b'] + r['b_ci95']:+.3f}] |")
    lines += ["", "Within each method, correlation of final true reward and final KL to the pretrained model over seeds:", ""]
    for res in all_results:
        for method in METHODS:
            kls, rewards = final_kls(res, method), final_rewards(res, method)
            if len(kls) < 3:
                continue
            kl = np.array(list(kls.values()))
            reward = np.array([rewards[seed] for seed in kls], dtype=float)
            label = f"- {res['settings']['oracle']}, {LABELS.get(method, method)}:"
            r = pearson(kl, reward)
            if r is not None:
                lines.append(f"{label} r = {r:+.2f} ({len(kls)} seeds)")
            else:
                lines.append(f"{label} r undefined, the KL or the reward is the same on all {len(kls)} seeds")
    return "\n".join(lines) + "\n"


def _pooled_row(method: str, per_oracle: dict[str, dict[str, float]]) -> dict | None:
    """One table row from {oracle: {seed: standardised difference}}; None when there is no pair at all."""
    diffs = [d for by_seed in per_oracle.values() for d in by_seed.values()]
    if not diffs:
        return None
    mean, ci = mean_ci95(diffs)
    return {"method": method, "n": len(diffs), "mean": mean, "ci95": ci, "wins": wins(diffs),
            "per_oracle": {o: len(v) for o, v in per_oracle.items()}}


def pooled_rows(all_results: list[dict], baseline: str = "greedy") -> list[dict]:
    """Per method (but the baseline): the standardised paired differences over every oracle and shared seed."""
    oracles = [res["settings"]["oracle"] for res in all_results]
    if len(set(oracles)) != len(oracles):
        raise ValueError(f"each directory must hold a different oracle's runs, got {oracles}")
    rows = []
    for method in METHODS:
        if method == baseline:
            continue
        per_oracle = {res["settings"]["oracle"]: standardised_differences(res, method, baseline) for res in all_results}
        row = _pooled_row(method, per_oracle)
        if row is not None:
            rows.append(row)
    return rows


def setting_rows(treated: list[dict], control: list[dict], baseline: str | None = None) -> list[dict]:
    """Per method found in both: (treated - control) final true reward / the control's pretrained spread, paired by
    oracle and seed, pooled as in :func:`pooled_rows`; the control is the same method, or ``baseline``'s runs there."""
    by_oracle = {res["settings"]["oracle"]: res for res in control}
    if len(by_oracle) != len(control):
        raise ValueError(f"each control directory must hold a different oracle's runs, got {[r['settings']['oracle'] for r in control]}")
    treated_oracles = [res["settings"]["oracle"] for res in treated]
    if len(set(treated_oracles)) != len(treated_oracles):  # the last one of an oracle silently replaced the others
        raise ValueError(f"each treated directory must hold a different oracle's runs, got {treated_oracles}")
    rows = []
    for method in METHODS:
        per_oracle = {}
        for res in treated:
            oracle = res["settings"]["oracle"]
            if oracle not in by_oracle:
                raise ValueError(f"no control directory holds oracle {oracle!r}")
            diffs = standardised_differences(res, method, baseline or method, control=by_oracle[oracle])
            if diffs:
                per_oracle[oracle] = diffs
        row = _pooled_row(method, per_oracle)
        if row is not None:
            rows.append(row)
    return rows


def _format_rows(rows: list[dict]) -> list[str]:
    lines = ["| method | pairs | mean difference [95% CI] | wins |", "|---|---|---|---|"]
    for r in rows:
        pairs = " + ".join(f"{n} {o}" for o, n in r["per_oracle"].items())
        lines.append(f"| {LABELS.get(r['method'], r['method'])} | {pairs} | **{r['mean']:+.2f}** "
                     f"{interval_text(r['mean'], r['ci95'], '+.2f')} | {wins_text(r['wins'], r['n'])} |")
    return lines


def setting_table(treated: list[dict], control: list[dict], baseline: str | None = None) -> str:
    overrides = sorted({o for res in treated for o in res["settings"].get("overrides", [])})
    what = ", ".join(overrides) or "the treated runs' settings"
    spreads = ", ".join(f"{res['settings']['oracle']} {pretrained_spread(res):.3f}" for res in control)
    against = "the same method without" if baseline is None else f"{LABELS.get(baseline, baseline)} without"
    lines = [f"Paired difference of each method with {what} to {against}, in pretrained standard "
             f"deviations ({spreads}), pooled over oracles and seeds:", "",
             *_format_rows(setting_rows(treated, control, baseline))]
    return "\n".join(lines) + "\n"


def pooled_table(all_results: list[dict], baseline: str = "greedy") -> str:
    spreads = ", ".join(f"{res['settings']['oracle']} {pretrained_spread(res):.3f}" for res in all_results)
    lines = [f"Paired difference to {LABELS.get(baseline, baseline)} in pretrained standard deviations ({spreads}), "
             "pooled over oracles and seeds:", "", *_format_rows(pooled_rows(all_results, baseline))]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m seiko_core.pooled", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dirs", nargs="+", type=Path, help="seiko_core.simulate --out directories, one per oracle")
    p.add_argument("--against", nargs="+", type=Path, default=None, metavar="DIR",
                   help="control directories (one per oracle): pair each method with itself there instead of with Greedy")
    p.add_argument("--baseline", choices=METHODS, default=None,
                   help="with --against: pair each method with this method's runs in the control directories")
    p.add_argument("--at-equal-kl", action="store_true",
                   help="fit each method's paired lead over Greedy against its paired difference in KL to the pretrained model")
    args = p.parse_args(argv)
    if args.at_equal_kl and args.against:
        p.error("--at-equal-kl pairs methods within the same directories; it does not take --against")
    if args.baseline and not args.against:
        p.error("--baseline needs --against (without it, every method is paired with Greedy in the same directory)")
    loaded = _load(args.dirs)
    if loaded is None:  # one sentence: the control directories are not read too
        return 1
    control = _load(args.against) if args.against else None
    if args.against and control is None:
        return 1
    try:
        if args.at_equal_kl:
            print(equal_kl_table(loaded), end="")
        else:
            print(pooled_table(loaded) if control is None else setting_table(loaded, control, args.baseline), end="")
    except (ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _load(dirs: list[Path]) -> list[dict] | None:
    """Each directory's results.json, or None after printing one sentence about the first that is not one."""
    loaded = []
    for d in dirs:
        path = d / RESULTS
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as exc:  # not UTF-8 or not JSON; RecursionError: nested too deeply
            print(f"error: cannot read {path}: {exc}", file=sys.stderr)
            return None
        problem = _problem(results)
        if problem:
            print(f"error: {path} is not a results.json of seiko_core.simulate ({problem})", file=sys.stderr)
            return None
        loaded.append(results)
    return loaded


def _number(value) -> bool:
    """Whether ``value`` is a number a difference can be taken of (NaN too: ``stats.wins`` says it; not an int past
    float's range, whose float() raises OverflowError)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _problem(results) -> str | None:
    """Why ``results`` is not a simulator results.json in the parts these tables read, or None. Only the top three
    keys were checked: `"runs": []`, a run that is a number, settings that are a list, a final reward that is text
    ended in an AttributeError or TypeError traceback, or in Python's words ("error: 'seed'") (nineteenth review)."""
    if not isinstance(results, dict) or not {"settings", "pretrained", "runs"} <= results.keys():
        return "it needs settings, pretrained and runs"
    settings, pretrained, runs = results["settings"], results["pretrained"], results["runs"]
    overrides = settings.get("overrides", []) if isinstance(settings, dict) else None
    if not isinstance(settings, dict) or not isinstance(settings.get("oracle"), str) or not isinstance(overrides, list) \
            or not all(isinstance(o, str) for o in overrides):
        return "its settings must be an object naming the oracle, with a list of overrides if any"
    if pretrained is not None and not (isinstance(pretrained, dict)
                                       and (pretrained.get("true_reward_std") is None
                                            or _number(pretrained["true_reward_std"]))):
        return "its pretrained row must be an object whose true_reward_std is a number"
    if not isinstance(runs, dict) or not all(isinstance(by_seed, dict) for by_seed in runs.values()):
        return "its runs must be an object of methods, each an object of seeds"
    for method, by_seed in runs.items():
        for seed, run in by_seed.items():
            where = f"run {str(method)[:40]!r} seed {str(seed)[:40]!r}"
            if not isinstance(run, dict):
                return f"{where} is not an object"
            if run.get("status") != "done":
                continue  # not read
            rounds = run.get("rounds")
            if "seed" not in run or not isinstance(rounds, list) or not rounds or not all(isinstance(r, dict) for r in rounds):
                return f"{where} is done but has no seed or no list of rounds"
            last = rounds[-1]
            if not _number(last.get("true_reward_mean")) or not (last.get("kl_base") is None or _number(last["kl_base"])):
                key = "true_reward_mean" if not _number(last.get("true_reward_mean")) else "kl_base"
                return f"{where}: the last round's {key} is {json.dumps(last.get(key))[:40]}, not a number"
    return None


if __name__ == "__main__":
    raise SystemExit(main())
