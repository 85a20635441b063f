"""Markdown tables from bench-taste runs, for BENCHMARKS.md.

    python -m app.bench_taste_report runs/bench-taste/before-gold runs/bench-taste/after-gold ...

Per run directory (its ``results.json``): one row per round with the mean over seeds and the per-seed values of the
share rated >= 6, the mean rating, variety (pixels / embeddings, % of round 0), the variety of the images the
person liked (the same measures, % of round 0's variety of all its images; mean over the seeds with at least two
liked images, and how many), the wait and the reward model's held-out Spearman correlation, on all the round's
images and on its honest (randomly chosen) images ("-" where a run did not record it: older runs; ``--rescore`` fills
it in). With ``--paired A B``: per seed, B's minus A's share >= 6 and mean rating in the last
round (the runs share seeds: the same experiment ids, so the same round-0 images), and the variety in embeddings of
all the round's images and of the liked ones, with the mean differences. With
``--pooled``: one more table that pools every ``--paired`` pair's seeds (e.g. two people x 6 seeds = 12 pairs): the
mean difference of the last round's share >= 6 with its 95% t-interval, the wins (a tie counts half), the mean
difference of variety in embeddings and the longest wait of the B runs; then each variety (pixels, embeddings, and the
liked images' both) paired by seed with its 95% t-interval. With ``--goals``: over every round after
round 0 of the runs given, how many met issue 12's share goal, its variety goal, and both, and the correlation of the
share with the variety in embeddings.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from app.cli_bench_taste import MAX_SEED
from seiko_core.stats import NO_SPREAD, mean_ci95, number_or_none, pearson, wins, wins_text

REPORTED = ("share_ge6", "mean_rating", "variety_pixels_pct_round0", "variety_embedding_pct_round0",
            "variety_liked_pixels_pct_round0", "variety_liked_embedding_pct_round0", "wait_s", "reward_corr",
            "reward_corr_honest")
# every round bench-taste records has these two (round_record: each query image is measured); --paired, --pooled and
# --goals subtract them, so a round without them was a KeyError or TypeError traceback there (nineteenth review)
MEASURED = ("share_ge6", "mean_rating")


def _doc_problem(doc: Any) -> str | None:
    """Why ``doc`` is not a bench-taste results document this report can read, or None."""
    if not isinstance(doc, dict):
        return f"a JSON {type(doc).__name__}, not an object"
    config, seeds = doc.get("config"), doc.get("seeds")
    if not isinstance(config, dict) or not isinstance(config.get("options"), dict):
        return "no config with its options"
    if not isinstance(seeds, dict) or not seeds:
        return "no seeds" if isinstance(seeds, dict) or seeds is None else f"seeds is {json.dumps(seeds)[:40]}, not an object"
    for seed, entry in seeds.items():
        if not (seed.isascii() and seed.isdigit()):
            return f"seed {seed[:40]!r} is not a whole number"
        if len(seed) > len(str(MAX_SEED)) or int(seed) > MAX_SEED or seed != str(int(seed)):
            # 5,000 digits: int() raised Python's "Exceeds the limit (4300 digits)" sentence, naming no file; "0" and
            # "00" were two seeds (nineteenth review)
            return f"seed {seed[:40]!r} is not one bench-taste writes (a whole number from 0 to {MAX_SEED:,}, as written)"
        rounds = entry.get("rounds") if isinstance(entry, dict) else None
        if not isinstance(rounds, list) or not all(isinstance(r, dict) for r in rounds):
            return f"seed {seed} has no list of rounds"
        for k, r in enumerate(rounds):
            bad = ([key for key in REPORTED if not number_or_none(r.get(key))]
                   or [key for key in MEASURED if r.get(key) is None])
            if bad:
                return f"seed {seed}, round {k}: {bad[0]} is {json.dumps(r.get(bad[0]))[:40]}, not a number"
    if not any(entry["rounds"] for entry in seeds.values()):
        return "no seed has a round yet"
    return None


def load(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s results.json; FileNotFoundError when there is none, ValueError (one sentence naming the file)
    when it is not one bench-taste wrote."""
    path = run_dir / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; is {run_dir} a bench-taste --out directory?")
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:  # a directory, say
        raise ValueError(f"{path} is not a bench-taste results file ({(exc.strerror or str(exc)).lower()})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a bench-taste results file (not UTF-8 text)") from exc
    except ValueError as exc:
        raise ValueError(f"{path} is not a bench-taste results file (not JSON)") from exc
    except RecursionError as exc:
        raise ValueError(f"{path} is not a bench-taste results file (JSON nested too deeply)") from exc
    problem = _doc_problem(doc)
    if problem:
        raise ValueError(f"{path} is not a bench-taste results file ({problem})")
    return doc


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


def _mean(values: list[float | None]) -> str:
    """The mean of the known values and how many seeds had one (the liked images' variety needs two liked images)."""
    known = [v for v in values if v is not None]
    return "-" if not known else f"{np.mean(known):.0f} ({len(known)}/{len(values)})"


def run_table(doc: dict[str, Any], name: str) -> str:
    seeds = sorted(doc["seeds"], key=int)
    complete = [s for s in seeds if doc["seeds"][s].get("complete")]
    n_rounds = max(len(doc["seeds"][s]["rounds"]) for s in seeds)
    opts = doc["config"]["options"]
    lines = [f"**{name}**: person `{doc['config'].get('person')}`, selection `{opts.get('selection')}` "
             f"x{opts.get('candidate_factor')}, "
             f"seeds {', '.join(seeds)} ({len(complete)} complete); mean (per seed)", "",
             "| round | share >= 6, % | mean rating | variety px, % | variety emb, % | liked images' variety px / emb, % "
             "| wait, s | reward model rho | reward model rho, honest images |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k in range(n_rounds):
        lines.append(f"| {k} | {_fmt(_seed_values(doc, k, 'share_ge6'), 100)} | {_fmt(_seed_values(doc, k, 'mean_rating'), 1, 2)} "
                     f"| {_fmt(_seed_values(doc, k, 'variety_pixels_pct_round0'))} "
                     f"| {_fmt(_seed_values(doc, k, 'variety_embedding_pct_round0'))} "
                     f"| {_mean(_seed_values(doc, k, 'variety_liked_pixels_pct_round0'))} / "
                     f"{_mean(_seed_values(doc, k, 'variety_liked_embedding_pct_round0'))} "
                     f"| {_fmt(_seed_values(doc, k, 'wait_s'))} | {_fmt(_seed_values(doc, k, 'reward_corr'), 1, 2)} "
                     f"| {_fmt(_seed_values(doc, k, 'reward_corr_honest'), 1, 2)} |")
    return "\n".join(lines)


VARIETIES = (("variety px", "variety_pixels_pct_round0"), ("variety emb", "variety_embedding_pct_round0"),
             ("liked images' variety px", "variety_liked_pixels_pct_round0"),
             ("liked images' variety emb", "variety_liked_embedding_pct_round0"))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _diff(a: float | None, b: float | None) -> float | None:
    """B minus A where both runs measured it (a round with fewer than two images, or two liked images, has none)."""
    return None if a is None or b is None else b - a


def paired(a: dict[str, Any], b: dict[str, Any], name_a: str, name_b: str) -> str:
    """Per seed, B minus A at the last round both reached; the mean is over the seeds both runs finished (a seed a run
    did not finish is shown, marked, at the round it reached, and left out of the mean). The variety in embeddings of
    all the round's images and of the images the person liked is paired by seed too, so a difference in variety
    between two arms is read seed by seed, as the share is (they were compared as unpaired means: found by review)."""
    rows, diffs_share, diffs_mean = [], [], []
    diffs_var: dict[str, list[float]] = {"variety_embedding_pct_round0": [], "variety_liked_embedding_pct_round0": []}
    for seed, k, last_a, last_b, _, finished in _last_round_pairs(a, b):
        ds = 100 * (last_b["share_ge6"] - last_a["share_ge6"])
        dm = last_b["mean_rating"] - last_a["mean_rating"]
        cells = []
        for key, diffs in diffs_var.items():
            va, vb = last_a.get(key), last_b.get(key)
            d = _diff(va, vb)
            if finished and d is not None:
                diffs.append(d)
            cells.append(f"{_pct(va)} -> {_pct(vb)} | {'-' if d is None else f'{d:+.0f}'}")
        if finished:
            diffs_share.append(ds)
            diffs_mean.append(dm)
        rows.append(f"| {seed} | {k}{'' if finished else ' (unfinished)'} | {100 * last_a['share_ge6']:.0f} -> "
                    f"{100 * last_b['share_ge6']:.0f} | {ds:+.0f} "
                    f"| {last_a['mean_rating']:.2f} -> {last_b['mean_rating']:.2f} | {dm:+.2f} | {' | '.join(cells)} |")
    head = [f"Paired by seed, last round: {name_a} -> {name_b}", "",
            "| seed | round | share >= 6, % | difference | mean rating | difference | variety emb, % | difference "
            "| liked images' variety emb, % | difference |", "|---|---|---|---|---|---|---|---|---|---|"]
    var_means = "".join(f" | | {np.mean(d):+.1f} ({len(d)})" if d else " | | -" for d in diffs_var.values())
    tail = [f"| mean | | | {np.mean(diffs_share):+.1f} | | {np.mean(diffs_mean):+.2f}{var_means} |"] if diffs_share else []
    return "\n".join(head + rows + tail)


def _last_round_pairs(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, int, dict[str, Any], dict[str, Any], list, bool]]:
    """Per seed both runs have: (seed, k, A's round k, B's round k, all of B's rounds, finished), k the last round
    both reached; finished: both runs completed the seed (a stopped run's round k is not the round the other seeds
    are compared at, and pooling it with them mixed rounds: found by review). Two finished runs of different
    --rounds are compared at the last round both have."""
    out = []
    for seed in sorted(set(a["seeds"]) & set(b["seeds"]), key=int):
        ra, rb = a["seeds"][seed]["rounds"], b["seeds"][seed]["rounds"]
        k = min(len(ra), len(rb)) - 1
        finished = bool(a["seeds"][seed].get("complete") and b["seeds"][seed].get("complete"))
        if k >= 0:  # a seed that a stopped run had just started has no round yet
            out.append((seed, k, ra[k], rb[k], rb, finished))
    return out


def pooled_pairs(pairs: list[tuple[dict[str, Any], dict[str, Any]]],
                 names: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """B minus A over the seeds of every (A, B) pair, pooled: share >= 6 in points (mean, 95% t half-width, wins with
    ties as half, n), variety in embeddings in points of round 0, and the longest wait of any B round. Only seeds
    both runs finished count; the others are named in ``left_out``. ValueError (one sentence) when a run's seed would
    be pooled twice (a run in two pairs, or on both sides of one): its pairs would not be independent, and it would
    count twice (found by review). A run is the same when its results are equal (one directory given twice)."""
    share, waits, left_out = [], [], []
    variety: dict[str, list[float]] = {key: [] for _, key in VARIETIES}
    pooled: list[tuple[dict[str, Any], str, str]] = []  # (run, its name, seed) of every seed pooled so far
    names = names or [("A", "B")] * len(pairs)
    for (a, b), (name_a, name_b) in zip(pairs, names, strict=True):
        for seed, _, last_a, last_b, rounds_b, finished in _last_round_pairs(a, b):
            if not finished:
                left_out.append(f"seed {seed} of {name_a} -> {name_b}")
                continue
            for run, name in ((a, name_a), (b, name_b)):
                if any(s == seed and (r is run or r == run) for r, _, s in pooled):
                    raise ValueError(f"seed {seed} of {name} would be pooled twice (the run is in more than one "
                                     "--paired pair, or on both sides of one); give each run in one pair only")
                pooled.append((run, name, seed))
            share.append(100 * (last_b["share_ge6"] - last_a["share_ge6"]))
            for key, diffs in variety.items():
                d = _diff(last_a.get(key), last_b.get(key))
                if d is not None:  # null when a round had fewer than two images (found by review), or two liked ones
                    diffs.append(d)
            waits += [r["wait_s"] for r in rounds_b if r.get("wait_s") is not None]
    if not share:
        raise ValueError("the paired runs share no seed that both finished; nothing to pool")
    mean, half = mean_ci95(share)
    won = wins(share)
    varieties = {key: dict(zip(("diff", "ci95"), mean_ci95(d), strict=True), n=len(d), wins=wins(d))
                 for key, d in variety.items() if d}
    emb = varieties.get("variety_embedding_pct_round0")
    return {"n": len(share), "share_diff": mean, "share_ci95": half, "wins": won,
            "variety_emb_diff": emb["diff"] if emb else None, "varieties": varieties,
            "max_wait_s": max(waits) if waits else None, "left_out": left_out}


def _ci(mean: float, half: float) -> str:
    """The 95% interval, "-" for one pair, ``NO_SPREAD`` for pairs whose differences are all the same (s = 0)."""
    return "-" if np.isnan(half) else NO_SPREAD if half == 0 else f"[{mean - half:+.1f}, {mean + half:+.1f}]"


def pooled_table(pairs: list[tuple[dict[str, Any], dict[str, Any]]], names: list[tuple[str, str]]) -> str:
    p = pooled_pairs(pairs, names)
    wait = "-" if p["max_wait_s"] is None else f"{p['max_wait_s']:.1f}"
    variety = "-" if p["variety_emb_diff"] is None else f"{p['variety_emb_diff']:+.1f}"
    label = "; ".join(f"{a} -> {b}" for a, b in names)
    var_rows = [f"| {what} | {v['n']} | {v['diff']:+.1f} {_ci(v['diff'], v['ci95'])} | {wins_text(v['wins'], v['n'])} |"
                for what, key in VARIETIES if (v := p["varieties"].get(key))]
    return "\n".join([f"Pooled over {len(pairs)} paired runs ({label})", "",
                      "| pairs | share >= 6, mean difference, points [95% CI] | wins | variety emb., difference, points | longest wait, s |",
                      "|---|---|---|---|---|",
                      f"| {p['n']} | {p['share_diff']:+.1f} {_ci(p['share_diff'], p['share_ci95'])} | {wins_text(p['wins'], p['n'])} | {variety} | {wait} |"]
                     + ([f"\nLeft out (a run did not finish them): {', '.join(p['left_out'])}."] if p["left_out"] else [])
                     + (["", "Variety paired by seed (B minus A, points of round 0's variety; a seed counts where both "
                         "runs measured it: the liked images' variety needs two liked images in each)", "",
                         "| measure | pairs | mean difference [95% CI] | wins |", "|---|---|---|---|"] + var_rows
                        if var_rows else []))


def rescore(run_dir: Path) -> int:
    """Fill in what rounds of ``run_dir`` lack because bench-taste did not record it yet when they ran: the reward
    model's held-out correlation, the same on the round's honest images (of rounds measured by the ratings given),
    and the variety of the liked images (the same rounds), from each seed's data dir with the functions bench-taste
    uses; returns how many rounds gained something. results.json
    is rewritten atomically, with its summary computed again from the rounds (it kept the old one, which then
    contradicted them: found by review)."""
    from app import bench_taste, selection
    from db import repo
    from db.engine import make_engine, read_session, session_factory
    from seiko_core import atomic

    doc = load(run_dir)
    filled = 0
    for seed, entry in doc["seeds"].items():
        data = run_dir / f"seed_{seed}" / "data"
        todo = [r for r in entry["rounds"] if "reward_model" not in r or _lacks_honest_corr(r) or _lacks_liked_variety(r)]
        if not todo or not (data / "seiko.db").exists():
            continue
        engine = make_engine(f"sqlite:///{data / 'seiko.db'}")
        try:
            with read_session(session_factory(engine)) as s:
                experiment_id = int(seed) + 1
                for r in todo:
                    round_ = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=r["round"])
                    query = repo.list_images(session=s, round_id=round_.id, kind="query")
                    if "reward_model" not in r or _lacks_honest_corr(r):
                        quality = bench_taste.round_reward_quality(s, data, experiment_id, r["round"], query,
                                                                   honest=selection.honest_ids(round_.metrics, query))
                        if "reward_model" not in r:
                            r["reward_model"] = quality
                            r["reward_corr"] = None if quality is None else quality["spearman"]
                        elif r["reward_model"] is not None and quality is not None:
                            r["reward_model"]["honest"] = quality["honest"]
                        r["reward_corr_honest"] = bench_taste.honest_corr(r["reward_model"])
                    if _lacks_liked_variety(r):
                        r.update(_liked_variety_of(s, data, query, entry["rounds"][0]))
                    filled += 1
        finally:
            engine.dispose()
    doc["rescored"] = ("reward_model, reward_corr_honest and the liked images' variety filled in afterwards where "
                       "missing by python -m app.bench_taste_report --rescore")
    doc["summary"] = bench_taste.summarise(doc["seeds"])  # what write_results writes, over the rounds as they are now
    atomic.write_text(run_dir / "results.json", json.dumps(doc, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return filled


GOAL_SHARE, GOAL_VARIETY = 0.60, 80.0  # issue 12's goals: >= 60% rated >= 6 while keeping >= 80% of round 0's variety


def goals_across(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Over every round after round 0 of every seed of ``docs``: how many rounds there are, how many reached the share
    goal, how many kept both varieties at the goal, how many did both, and the Pearson r of the share with the variety
    in embeddings (None when either is constant)."""
    share, emb, both_var = [], [], []
    for doc in docs:
        for entry in doc["seeds"].values():
            for r in entry["rounds"][1:]:
                if r.get("variety_embedding_pct_round0") is None or r.get("variety_pixels_pct_round0") is None:
                    continue
                share.append(r["share_ge6"])
                emb.append(r["variety_embedding_pct_round0"])
                both_var.append(r["variety_embedding_pct_round0"] >= GOAL_VARIETY and r["variety_pixels_pct_round0"] >= GOAL_VARIETY)
    if not share:
        raise ValueError("no round after round 0 with its variety measured in these runs")
    x, y = np.asarray(share, dtype=np.float64), np.asarray(emb, dtype=np.float64)
    r = pearson(x, y)
    hit = x >= GOAL_SHARE - 1e-12
    return {"rounds": len(x), "share_goal": int(hit.sum()), "variety_goal": int(sum(both_var)),
            "both": int(sum(h and v for h, v in zip(hit, both_var))), "r_share_variety_emb": r}


def _lacks_honest_corr(r: dict[str, Any]) -> bool:
    """A round measured by the ratings given whose record predates the reward model's correlation on the honest
    images (a round measured by the person's untold ratings cannot be redone: see :func:`_lacks_liked_variety`)."""
    return "reward_corr_honest" not in r and r.get("measured_by", "ratings") == "ratings"


def _lacks_liked_variety(r: dict[str, Any]) -> bool:
    """A round measured by the ratings given whose record predates the liked images' variety (a round measured by the
    person's untold ratings cannot be redone from the data dir, which holds only what was submitted)."""
    return "liked_images" not in r and r.get("measured_by", "ratings") == "ratings"


def _liked_variety_of(session, data_dir: Path, query, round0: dict[str, Any]) -> dict[str, Any]:
    """:func:`app.bench_taste.liked_variety` of one round from the data dir: its query images' files and stored
    embeddings, the ratings given, round 0's recorded variety as the base."""
    from app import bench_taste

    rated = {r.image_id: r.score for r in bench_taste._ratings(session, [im.id for im in query])}
    return bench_taste.liked_variety(bench_taste.stored_pixels(data_dir, query),
                                     bench_taste.embeddings_of(query).astype(np.float64),
                                     bench_taste.liked_flags(rated, query), round0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.bench_taste_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="*", type=Path, help="bench-taste --out directories")
    ap.add_argument("--paired", nargs=2, action="append", type=Path, default=[], metavar=("A", "B"),
                    help="per-seed differences of run B against run A (repeatable)")
    ap.add_argument("--pooled", action="store_true", help="also pool the seeds of every --paired pair in one table")
    ap.add_argument("--goals", action="store_true",
                    help="also count, over every round after round 0 of the given runs, the rounds that reached issue "
                         "12's share goal, its variety goal and both, and correlate the share with the variety")
    ap.add_argument("--rescore", action="store_true",
                    help="first fill in the reward model's held-out correlation (also on the honest images) and the "
                         "liked images' variety where a run lacks them (older runs)")
    args = ap.parse_args(argv)
    try:
        if args.rescore:
            for run_dir in args.runs:
                print(f"{run_dir}: {rescore(run_dir)} rounds filled in", file=sys.stderr)
        for run_dir in args.runs:
            print(run_table(load(run_dir), run_dir.name) + "\n")
        if args.goals:
            g = goals_across([load(run_dir) for run_dir in args.runs])
            r = "-" if g["r_share_variety_emb"] is None else f"{g['r_share_variety_emb']:+.2f}"
            print(f"Over {g['rounds']} rounds (rounds 1 on, every seed of {len(args.runs)} runs): {g['share_goal']} reached "
                  f">= {100 * GOAL_SHARE:.0f}% rated >= 6, {g['variety_goal']} kept >= {GOAL_VARIETY:.0f}% of round 0's variety "
                  f"in pixels and embeddings, {g['both']} both; r(share, variety in embeddings) = {r}\n")
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
