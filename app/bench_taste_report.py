"""Markdown tables from bench-taste runs, for BENCHMARKS.md.

    python -m app.bench_taste_report runs/bench-taste/before-gold runs/bench-taste/after-gold ...

Per run directory (its ``results.json``): one row per round with the mean over seeds and the per-seed values of the
share rated >= 6, the mean rating, variety (pixels / embeddings, % of round 0), the wait and the reward model's
held-out Spearman correlation. With ``--paired A B``: per seed, B's minus A's share >= 6 and mean rating in the last
round (the runs share seeds: the same experiment ids, so the same round-0 images), with the mean difference.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


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
    common = sorted(set(a["seeds"]) & set(b["seeds"]), key=int)
    rows, diffs_share, diffs_mean = [], [], []
    for seed in common:
        ra, rb = a["seeds"][seed]["rounds"], b["seeds"][seed]["rounds"]
        k = min(len(ra), len(rb)) - 1
        ds = 100 * (rb[k]["share_ge6"] - ra[k]["share_ge6"])
        dm = rb[k]["mean_rating"] - ra[k]["mean_rating"]
        diffs_share.append(ds)
        diffs_mean.append(dm)
        rows.append(f"| {seed} | {k} | {100 * ra[k]['share_ge6']:.0f} -> {100 * rb[k]['share_ge6']:.0f} | {ds:+.0f} "
                    f"| {ra[k]['mean_rating']:.2f} -> {rb[k]['mean_rating']:.2f} | {dm:+.2f} |")
    head = [f"Paired by seed, last round: {name_a} -> {name_b}", "",
            "| seed | round | share >= 6, % | difference | mean rating | difference |", "|---|---|---|---|---|---|"]
    tail = [f"| mean | | | {np.mean(diffs_share):+.1f} | | {np.mean(diffs_mean):+.2f} |"] if common else []
    return "\n".join(head + rows + tail)


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
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
