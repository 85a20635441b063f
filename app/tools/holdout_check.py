"""How well the reward ensemble ranks unseen images at a person's budget, with and without held-out early stopping.

    python -m app.tools.holdout_check --out runs/holdout-check.json

``--images`` images are drawn once from the embedded model (the ``shapes`` preset's sampling prompts, steps and
guidance; prompts ``round_prompts(cfg, N, 12345)``, seeds 0..N-1) and embedded with its image encoder. Six people rate
them: the built-in ``purple`` and ``gold_on_black`` and the four of ``docs/people/more_people.py``. For each person,
each fit size n (``--sizes``) and each seed s (0..``--seeds``-1), n images are drawn at random (numpy
``default_rng(s)``) to fit on, and the rest are the test set. The preset's reward ensemble is fitted (``fit_reward``,
seed s) under each variant of ``--variants`` on the same n labels, and Spearman's rank correlation between the
ensemble's mean prediction and the person's ratings on the test set is recorded (None when the test ratings are
constant). Variants: ``min1`` (the code's behaviour before 4 Dec 2026: once n >= 8, 5% of the labels, at least one,
are held out and pick the epoch), ``min8`` (a split only when at least 8 labels would be held out, so none below
n = 150), ``none`` (no split at all: the training loss is the criterion) and ``cv4`` (lever N: below 150 labels the
number of epochs is chosen by 4-fold cross-validation, then every label is trained on for that many epochs).

The paired differences (each variant minus ``min1``, on the same person, n and seed) are reported per person and
pooled with a 95% t-interval (``seiko_core.stats.mean_ci95``), twice: over the cells as if each were independent
(``ci95``), and over the seeds (``by_seed``: each seed's mean difference, then the t-interval of those on seeds - 1
degrees of freedom). Only the seeds are independent: seed s fixes one split of the images, shared by every person
and size, the training sets of the sizes are nested (the 32 images lie inside the 64), and the fits share seed s;
so the cells of one seed move together and the cell interval is too narrow (found by review, 4 Dec 2026). Read
``by_seed``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from seiko_core.atomic import write_text

VARIANTS = {"min1": {"min_holdout": 1}, "min8": {"min_holdout": 8}, "none": {"holdout": 0.0}, "cv4": {"cv_folds": 4}}


def draw(model: str, n: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images, embeddings, prompts) of ``n`` images from the base model under the shapes preset."""
    from seiko_core.loop import generate_batch, round_prompts
    from seiko_core.models import load_model
    from seiko_core.presets import preset

    cfg = preset("shapes")
    parts = load_model(model, device="cpu")
    prompts = round_prompts(cfg, n, 12345)
    images, embeddings = [], []
    for start in range(0, n, 64):
        im, emb = generate_batch(parts, None, prompts[start:start + 64], list(range(start, min(n, start + 64))), cfg)
        images.append(im)
        embeddings.append(emb)
    return torch.cat(images), torch.cat(embeddings), prompts


def ratings_of(images: torch.Tensor, prompts: list[str]) -> dict[str, np.ndarray]:
    from app.people import load_person

    people = ["purple", "gold_on_black"] + [f"docs/people/more_people.py:{name}" for name in
                                            ("triangles", "cyan_or_pink", "brown_background", "big_on_white")]
    out = {}
    for spec in people:
        person = load_person(spec)
        out[spec.rsplit(":", 1)[-1]] = np.array(person.rate(images, prompts), dtype=float)
    return out


def spearman(pred: np.ndarray, truth: np.ndarray) -> float | None:
    from app.bench_taste import correlations

    return correlations(pred, truth)["spearman"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/shapes-sd")
    p.add_argument("--images", type=int, default=600)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, required=True, help="results JSON to write")
    a = p.parse_args(argv)
    if a.out.exists():
        print(f"error: {a.out} exists; give another --out", file=sys.stderr)
        return 1
    from seiko_core.presets import preset
    from seiko_core.reward import fit_reward

    torch.manual_seed(0)
    images, embeddings, prompts = draw(a.model, a.images)
    rated = ratings_of(images, prompts)
    base = preset("shapes").reward
    rows = []
    for person, y in rated.items():
        for n in a.sizes:
            for seed in range(a.seeds):
                order = np.random.default_rng(seed).permutation(a.images)
                train, test = order[:n], order[n:]
                row = {"person": person, "n": n, "seed": seed, "liked_train": int((y[train] >= 6).sum())}
                for name in a.variants:
                    cfg = dataclasses.replace(base, **VARIANTS[name])
                    start = time.perf_counter()
                    fit = fit_reward(embeddings[train], torch.tensor(y[train]), cfg, seed=seed)
                    row[f"{name}_seconds"] = round(time.perf_counter() - start, 3)
                    with torch.no_grad():
                        pred = fit.ensemble(embeddings[test]).mean(dim=1).double().numpy()
                    row[name] = spearman(pred, y[test])
                    row[f"{name}_epochs"] = fit.metrics["best_epoch"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary, means = summarise(rows, a.variants, rated)
    for key, v in summary.items():
        print(f"{key}: {_interval(v)} over {v['n']} cells; by seed {_interval(v['by_seed'])} over "
              f"{v['by_seed']['n']} seeds")
    print(json.dumps(means, indent=1))
    # a temporary name renamed into place: a run stopped while writing leaves no half file under --out
    write_text(a.out, json.dumps({"args": {k: str(v) for k, v in vars(a).items()}, "rows": rows, "summary": summary,
                                  "means": means}, indent=1, allow_nan=False))
    return 0


def _interval(v: dict) -> str:
    """"mean [low, high]" of a summary entry ("-" without a mean)."""
    if v["mean"] is None:
        return "-"
    return f"{v['mean']:+.3f}" + ("" if v["ci95"] is None else f" [{v['mean'] - v['ci95']:+.3f}, "
                                                                 f"{v['mean'] + v['ci95']:+.3f}]")


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None


def summarise(rows: list[dict], variants, rated) -> tuple[dict, dict]:
    """(paired differences of each variant minus ``min1`` per person and pooled, as n / mean / 95% half-width; the
    mean correlation per variant and person, and the mean seconds per fit). A figure that has too few values is None,
    not NaN: the file is JSON (NaN is not; a half-width of one difference was written as NaN, found by review)."""
    from seiko_core.stats import mean_ci95

    summary = {}
    for name in variants:
        if name == "min1":
            continue
        for person in [*rated, "pooled"]:
            diffs = [r[name] - r["min1"] for r in rows if (person == "pooled" or r["person"] == person)
                     and r[name] is not None and r["min1"] is not None]
            mean, half = mean_ci95(diffs)
            per_seed: dict[int, list[float]] = {}
            for r in rows:
                if (person == "pooled" or r["person"] == person) and r[name] is not None and r["min1"] is not None:
                    per_seed.setdefault(r["seed"], []).append(r[name] - r["min1"])
            seed_means = [float(np.mean(v)) for _, v in sorted(per_seed.items())]
            s_mean, s_half = mean_ci95(seed_means)
            summary[f"{name} - min1, {person}"] = {
                "n": len(diffs), "mean": _finite(mean), "ci95": _finite(half),
                "by_seed": {"n": len(seed_means), "mean": _finite(s_mean), "ci95": _finite(s_half)}}
    means = {name: {person: _finite(float(np.mean(v))) if (v := [r[name] for r in rows
                                                                 if r["person"] == person and r[name] is not None])
                    else None for person in rated} for name in variants}
    means["seconds per fit"] = {name: _finite(float(np.mean([r[f"{name}_seconds"] for r in rows]))) if rows else None
                                for name in variants}
    return summary, means


if __name__ == "__main__":
    raise SystemExit(main())
