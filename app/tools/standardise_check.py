"""Does per-rater standardisation (``app.quality.standardize``) bring per-item mean ratings closer to the truth?

    python -m app.tools.standardise_check

Simulated raters who use different parts of the 1-10 scale: ``--items`` items have a true quality q ~ N(0, 1);
each of ``--raters`` raters has an offset ~ N(offset_mean, offset_sd) and a scale ~ U(scale_lo, scale_hi) and
scores an item ``clip(round(offset + scale * q + N(0, noise_sd)), 1, 10)``. Each rater rates n items drawn at
random without replacement (n = 3, 10, 40). Over the items rated at least once, the Pearson correlation with q
of the per-item mean raw score and of the per-item mean standardised score (``standardize`` on the
``(item, rater, score)`` ratings) is computed; both, and their paired difference, are averaged over ``--seeds``
seeds (numpy ``default_rng(seed)``, seeds 0..S-1) with a 95% interval (mean +- 1.96 standard errors).
The parameters were fixed before the first run.
"""

from __future__ import annotations

import argparse

import numpy as np

from app.quality import standardize


def one(rng: np.random.Generator, n: int, a) -> tuple[float, float, int]:
    q = rng.standard_normal(a.items)
    offset = rng.normal(a.offset_mean, a.offset_sd, a.raters)
    scale = rng.uniform(a.scale_lo, a.scale_hi, a.raters)
    ratings = []
    for r in range(a.raters):
        for i in rng.choice(a.items, size=n, replace=False):
            s = np.clip(np.rint(offset[r] + scale[r] * q[i] + rng.normal(0, a.noise_sd)), 1, 10)
            ratings.append((int(i), r, float(s)))
    std = standardize(ratings)
    raw_by, std_by = {}, {}
    for item, rater, score in ratings:
        raw_by.setdefault(item, []).append(score)
        std_by.setdefault(item, []).append(std[(item, rater)])
    items = sorted(raw_by)
    truth = q[items]
    raw = [np.mean(raw_by[i]) for i in items]
    z = [np.mean(std_by[i]) for i in items]
    return float(np.corrcoef(raw, truth)[0, 1]), float(np.corrcoef(z, truth)[0, 1]), len(items)


def ci(x: np.ndarray) -> str:
    h = 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    return f"{x.mean():.3f} [{x.mean() - h:.3f}, {x.mean() + h:.3f}]"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=200)
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--raters", type=int, default=10)
    p.add_argument("--per-rater", type=int, nargs="+", default=[3, 10, 40], help="ratings per rater (n)")
    p.add_argument("--offset-mean", type=float, default=5.5)
    p.add_argument("--offset-sd", type=float, default=1.5)
    p.add_argument("--scale-lo", type=float, default=0.5)
    p.add_argument("--scale-hi", type=float, default=2.0)
    p.add_argument("--noise-sd", type=float, default=1.0)
    a = p.parse_args(argv)
    print(f"items {a.items} (q ~ N(0,1)), raters {a.raters}, offset ~ N({a.offset_mean}, {a.offset_sd}), "
          f"scale ~ U({a.scale_lo}, {a.scale_hi}), noise ~ N(0, {a.noise_sd}), 1-10 clipped and rounded, "
          f"seeds 0..{a.seeds - 1}\n")
    print("| ratings a rater | items rated (mean) | corr, raw means | corr, standardised means | difference |")
    print("|---:|---:|---:|---:|---:|")
    for n in a.per_rater:
        res = np.array([one(np.random.default_rng(s), n, a) for s in range(a.seeds)])
        print(f"| {n} | {res[:, 2].mean():.1f} | {ci(res[:, 0])} | {ci(res[:, 1])} | {ci(res[:, 1] - res[:, 0])} |")


if __name__ == "__main__":
    main()
