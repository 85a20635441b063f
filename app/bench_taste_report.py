"""Markdown tables from bench-taste runs, for BENCHMARKS.md.

    python -m app.bench_taste_report runs/bench-taste/before-gold runs/bench-taste/after-gold ...

Per run directory (its ``results.json``): one row per round with the mean over seeds and the per-seed values of the
share rated >= 6, the mean rating, variety (pixels / embeddings, % of round 0), the wait and the reward model's
held-out Spearman correlation. With ``--paired A B``: per seed, B's minus A's share >= 6 and mean rating in the last
round (the runs share seeds: the same experiment ids, so the same round-0 images), with the mean difference. With
``--pooled``: one more table that pools every ``--paired`` pair's seeds (e.g. two people x 6 seeds = 12 pairs): the
mean difference of the last round's share >= 6 with its 95% t-interval, the wins (a tie counts half), the mean
difference of variety in embeddings and the longest wait of the B runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from seiko_core.stats import mean_ci95


def load(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a bench-taste --out directory?")
    return json.loads(path.read_text())


def _seed_values(doc: dict[str, Any], k: int, key: str) -> list[float | None]:
    out = []
    for seed in sorted(doc["seeds"], key=int):
        rounds = doc["seeds"][seed]["rounds"]
        out.append(rounds[k].get(key) if len(rounds) > k else None)
    return out


def _fmt(values: list[float | None], scale: float = 1.0, digits: int = 0, unit: str = "") -> str:
    known = [v * scale for v in values if v is not None]
    if not known:
        return "-"
    each = " / ".join("-" if v is None else f"{v * scale:.{digits}f}" for v in values)
    return f"**{np.mean(known):.{digits}f}{unit}** ({each})"


def run_table(doc: dict[str, Any], name: str) -> str:
    seeds = sorted(doc["seeds"], key=int)
    complete = [s for s in seeds if doc["seeds"][s].get("complete")]
    n_rounds = max(len(doc["seeds"][s]["rounds"]) for s in seeds)
    opts = doc["config"]["options"]
    lines = [f"**{name}**: person `{doc['config']['person']}`, selection `{opts['selection']}` x{opts['candidate_factor']}, "
             f"seeds {', '.join(seeds)} ({len(complete)} complete); mean (per seed)", "",
             "| round | share >= 6, % | mean rating | variety px, % | variety emb, % | wait, s | reward model rho |",
             "|---|---|---|---|---|---|---|"]
    for k in range(n_rounds):
        lines.append(f"| {k} | {_fmt(_seed_values(doc, k, 'share_ge6'), 100)} | {_fmt(_seed_values(doc, k, 'mean_rating'), 1, 2)} "
                     f"| {_fmt(_seed_values(doc, k, 'variety_pixels_pct_round0'))} "
                     f"| {_fmt(_seed_values(doc, k, 'variety_embedding_pct_round0'))} "
                     f"| {_fmt(_seed_values(doc, k, 'wait_s'))} | {_fmt(_seed_values(doc, k, 'reward_corr'), 1, 2)} |")
    return "\n".join(lines)


def paired(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    rows, diffs_share, diffs_mean = [], [], []
    for seed, k, last_a, last_b, _ in _last_round_pairs(a, b):
        ds = 100 * (last_b["share_ge6"] - last_a["share_ge6"])
        dm = last_b["mean_rating"] - last_a["mean_rating"]
        diffs_share.append(ds)
        diffs_mean.append(dm)
        rows.append(f"| {seed} | {k} | {100 * last_a['share_ge6']:.0f} -> {100 * last_b['share_ge6']:.0f} | {ds:+.0f} "
                    f"| {last_a['mean_rating']:.2f} -> {last_b['mean_rating']:.2f} | {dm:+.2f} |")
    head = [f"Paired by seed, last round: {name_a} -> {name_b}", "",
            "| seed | round | share >= 6, % | difference | mean rating | difference |", "|---|---|---|---|---|---|"]
    tail = [f"| mean | | | {np.mean(diffs_share):+.1f} | | {np.mean(diffs_mean):+.2f} |"] if rows else []
    return "\n".join(head + rows + tail)


def _last_round_pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, int, dict[str, Any], dict[str, Any], list]]:
    """Per seed both runs have: (seed, k, A's round k, B's round k, all of B's rounds), k the last round both reached."""
    out = []
    for seed in sorted(set(a["seeds"]) & set(b["seeds"]), key=int):
        ra, rb = a["seeds"][seed]["rounds"], b["seeds"][seed]["rounds"]
        k = min(len(ra), len(rb)) - 1
        out.append((seed, k, ra[k], rb[k], rb))
    return out


def pooled_pairs(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """B minus A over the seeds of every (A, B) pair, pooled: share >= 6 in points (mean, 95% t half-width, wins with
    ties as half, n), variety in embeddings in points of round 0, and the longest wait of any B round."""
    share, variety, waits = [], [], []
    for a, b in pairs:
        for _, _, last_a, last_b, rounds_b in _last_round_pairs(a, b):
            share.append(100 * (last_b["share_ge6"] - last_a["share_ge6"]))
            variety.append(last_b["variety_embedding_pct_round0"] - last_a["variety_embedding_pct_round0"])
            waits += [r["wait_s"] for r in rounds_b if r.get("wait_s") is not None]
    if not share:
        raise ValueError("the paired runs share no seed; nothing to pool")
    mean, half = mean_ci95(share)
    wins = sum(1.0 if d > 0 else 0.5 if d == 0 else 0.0 for d in share)
    return {"n": len(share), "share_diff": mean, "share_ci95": half, "wins": wins,
            "variety_emb_diff": float(np.mean(variety)), "max_wait_s": max(waits) if waits else None}


def pooled_table(pairs: list[tuple[dict[str, Any], dict[str, Any]]], names: list[tuple[str, str]]) -> str:
    p = pooled_pairs(pairs)
    ci = "-" if np.isnan(p["share_ci95"]) else f"[{p['share_diff'] - p['share_ci95']:+.1f}, {p['share_diff'] + p['share_ci95']:+.1f}]"
    wait = "-" if p["max_wait_s"] is None else f"{p['max_wait_s']:.1f}"
    label = "; ".join(f"{a} -> {b}" for a, b in names)
    return "\n".join([f"Pooled over {len(pairs)} paired runs ({label})", "",
                      "| pairs | share >= 6, mean difference, points [95% CI] | wins | variety emb., difference, points | longest wait, s |",
                      "|---|---|---|---|---|",
                      f"| {p['n']} | {p['share_diff']:+.1f} {ci} | {p['wins']:g}/{p['n']} | {p['variety_emb_diff']:+.1f} | {wait} |"])


def rescore(run_dir: Path) -> int:
    """Fill in the reward model's held-out correlation for rounds of ``run_dir`` that lack it (runs made before
    bench-taste recorded it), from each seed's data dir with the same function bench-taste uses; returns how many
    rounds were filled. results.json is rewritten atomically."""
    from app import bench_taste
    from db import repo
    from db.engine import make_engine, read_session, session_factory
    from seiko_core import atomic

    doc = load(run_dir)
    filled = 0
    for seed, entry in doc["seeds"].items():
        data = run_dir / f"seed_{seed}" / "data"
        todo = [r for r in entry["rounds"] if "reward_model" not in r]
        if not todo or not (data / "seiko.db").exists():
            continue
        engine = make_engine(f"sqlite:///{data / 'seiko.db'}")
        try:
            with read_session(session_factory(engine)) as s:
                experiment_id = int(seed) + 1
                for r in todo:
                    round_ = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=r["round"])
                    query = repo.list_images(session=s, round_id=round_.id, kind="query")
                    r["reward_model"] = bench_taste.round_reward_quality(s, data, experiment_id, r["round"], query)
                    r["reward_corr"] = None if r["reward_model"] is None else r["reward_model"]["spearman"]
                    filled += 1
        finally:
            engine.dispose()
    doc["rescored"] = "reward_model filled in afterwards by python -m app.bench_taste_report --rescore"
    atomic.write_text(run_dir / "results.json", json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return filled


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.bench_taste_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="bench-taste --out directories")
    ap.add_argument("--paired", nargs=2, action="append", type=Path, default=[], metavar=("A", "B"),
                    help="per-seed differences of run B against run A (repeatable)")
    ap.add_argument("--pooled", action="store_true", help="also pool the seeds of every --paired pair in one table")
    ap.add_argument("--rescore", action="store_true",
                    help="first fill in the reward model's held-out correlation where a run lacks it (older runs)")
    args = ap.parse_args(argv)
    try:
        if args.rescore:
            for run_dir in args.runs:
                print(f"{run_dir}: {rescore(run_dir)} rounds filled in", file=sys.stderr)
        for run_dir in args.runs:
            print(run_table(load(run_dir), run_dir.name) + "\n")
        for a, b in args.paired:
            print(paired(load(a), load(b), a.name, b.name) + "\n")
        if args.pooled:
            if not args.paired:
                print("error: --pooled pools the --paired pairs; give at least one --paired A B", file=sys.stderr)
                return 1
            print(pooled_table([(load(a), load(b)) for a, b in args.paired], [(a.name, b.name) for a, b in args.paired]))
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
