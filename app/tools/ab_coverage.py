"""How often the blind A/B win rate's 95% interval holds the true win rate, simulated (issue 14; BENCHMARKS.md):

    python -m app.tools.ab_coverage                       # defaults: --trials 2000 --seed 0 --resamples 1000
    python -m app.tools.ab_coverage --trials 20000 --seed 1 --json coverage.json
    python -m app.tools.ab_coverage --only raters --trials 4000     # one table: independent, clustered or raters

The intervals are the project's own: the dashboard's, ``db.comparisons.win_stats`` given each pair's votes
(``by_pair``, as ``ab_win_rates`` gives them), which is ``clustered_win_interval`` (Wilson's interval on
``(wins + ties / 2) / votes`` at the effective number of votes, at Student's t with pairs - 1 degrees of freedom
wherever a pair has several votes and they differ, the design effect never below 1; exactly Wilson's interval over
the votes when every pair has one vote);
for comparison, ``win_stats`` without ``by_pair`` (Wilson over the votes as independent trials, what the dashboard
showed before 6 Dec 2026) and ``db.comparisons.pair_bootstrap_interval`` (a percentile bootstrap over whole
pairs). Only the votes are simulated here, with numpy.

(a) Independent votes: each vote is a win with probability ``p - t/2``, a tie with ``t``, a loss with the rest, so
the estimand ``P(win) + P(tie)/2`` is ``p``; p in {0.5, 0.6, 0.7, 0.9}, votes n in {10, 20, 50, 100, 400},
tie probability t in {0, 0.2}. Each vote is on a pair of its own (one rater per pair), as the dashboard is then
given them.

(b) Clustered votes, as the app collects them: 16 pairs (the shapes preset's eval grid per opponent), each rater
votes once on every pair, so n in {16, 64, 256} is 1, 4 or 16 votes per pair. Pair j has its own win probability
``q_j ~ Beta(p * k, (1 - p) * k)`` (no ties), drawn afresh in every trial: the 16 pairs are a sample of the
prompts and seeds the round could be asked about. The estimand for "this round is better in general" is the mean
over that population, ``p``. Two votes on one pair are correlated by ``1 / (k + 1)`` (the intra-class
correlation), so the independent-vote Wilson interval's variance is too small by about
``1 + (votes per pair - 1) / (k + 1)``. Reported: the dashboard's (clustered) interval's coverage of ``p``; the
independent-vote Wilson interval's coverage of ``p`` and of the 16 drawn pairs' own mean (what it does estimate);
the pair bootstrap's coverage of ``p``; p in {0.5, 0.7}, concentration k in {2, 8, 32}.

(c) Raters (fourteenth review): 16 pairs, R raters each voting once on every pair (no ties), vote on pair j by
rater r a win with probability ``sigmoid(logit(p) + a_j + b_r)``, ``a_j ~ N(0, 0.5^2)`` (pair effect), ``b_r ~
N(0, s^2)`` (rater effect: one rater's taste across pairs), both drawn afresh in every trial. Two estimands: the
mean over pairs and raters, ``E sigmoid(logit(p) + a + b)`` (Gauss-Hermite, 80 nodes; "over raters like these"),
and these raters' own mean over pairs, ``mean_r E_a sigmoid(logit(p) + a + b_r)`` for the trial's drawn raters
("about these raters", the same quadrature per rater). Reported, each against both: the dashboard's interval
(``win_stats`` with ``by_pair`` and ``by_rater``: pairs only below ``RATERS_TO_GENERALISE`` raters, two-way from
it), the two-way interval at any rater count (``clustered_win_interval(..., generalise_from=2)``, the dashboard's
for a while on 6 Dec 2026) and the interval over pairs alone (``by_pair`` only); p in {0.5, 0.7}, R in {2, 4, 14,
15, 16}, s in {0, 0.5, 1}. The dashboard's coverage of its own estimand is the second below 15 raters, the first
from 15.

Coverage is the share of trials whose interval holds the estimand (ends included); its Monte-Carlo standard
error is ``sqrt(c (1 - c) / trials)``. Each table cell draws from its own generator, seeded by ``--seed`` and the
cell, so a cell's number does not depend on which other cells are run. Output: markdown tables on stdout, and the
same numbers as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from db.comparisons import RATERS_TO_GENERALISE, clustered_win_interval, pair_bootstrap_interval, win_stats
from seiko_core.atomic import write_text

WIN_RATES = (0.5, 0.6, 0.7, 0.9)
VOTES = (10, 20, 50, 100, 400)
TIE_PROBS = (0.0, 0.2)
PAIRS = 16
CLUSTERED_VOTES = (16, 64, 256)
CLUSTERED_WIN_RATES = (0.5, 0.7)
CONCENTRATIONS = (2.0, 8.0, 32.0)
RATER_COUNTS = (2, 4, RATERS_TO_GENERALISE - 1, RATERS_TO_GENERALISE, 16)
RATER_SDS = (0.0, 0.5, 1.0)
PAIR_SD = 0.5


def _rng(seed: int, *cell: float) -> np.random.Generator:
    """A generator for one cell: the seed and the cell's parameters (in thousandths) as the entropy."""
    return np.random.default_rng([seed, *(round(v * 1000) for v in cell)])


def _se(coverage: float, trials: int) -> float:
    return math.sqrt(coverage * (1 - coverage) / trials)


def _one_vote_per_pair(wins: int, losses: int, ties: int) -> list[tuple[int, int, int]]:
    return [(1, 0, 0)] * wins + [(0, 1, 0)] * losses + [(0, 0, 1)] * ties


def independent_coverage(p: float, n: int, tie: float, *, trials: int, seed: int = 0) -> dict[str, Any]:
    """Coverage of the dashboard's interval (``win_stats`` given each vote as a pair's one vote) over ``trials`` draws
    of ``n`` independent votes (see (a) above)."""
    win, loss = p - tie / 2, 1 - p - tie / 2
    if win < 0 or loss < -1e-12:
        raise ValueError(f"a win rate of {p} cannot hold ties with probability {tie}")
    counts = _rng(seed, 1, p, n, tie).multinomial(n, [win, tie, max(loss, 0.0)], size=trials)  # wins, ties, losses
    outcomes, which = np.unique(counts, axis=0, return_inverse=True)  # the interval once per distinct outcome
    covered, width = np.empty(len(outcomes), dtype=bool), np.empty(len(outcomes))
    for k, (w, t, los) in enumerate(outcomes.tolist()):
        lo, hi = win_stats(w, los, t, n, _one_vote_per_pair(w, los, t))["ci95"]
        covered[k], width[k] = lo <= p <= hi, hi - lo
    which = which.reshape(-1)
    coverage = float(covered[which].mean())
    return {"p": p, "n": n, "tie": tie, "trials": trials, "coverage": coverage, "se": _se(coverage, trials),
            "mean_width": float(width[which].mean())}


def clustered_coverage(p: float, n: int, concentration: float, *, trials: int, seed: int = 0,
                       resamples: int = 1000, pairs: int = PAIRS) -> dict[str, Any]:
    """Coverage of the dashboard's interval (``win_stats`` with ``by_pair``: "clustered"), ``win_stats`` over the votes
    as independent ("wilson", "wilson_these_pairs") and ``pair_bootstrap_interval`` ("bootstrap") when ``n`` votes
    fall evenly on ``pairs`` pairs whose win probabilities are drawn from Beta(p k, (1 - p) k) (see (b) above)."""
    if n % pairs:
        raise ValueError(f"{n} votes cannot be spread evenly over {pairs} pairs")
    per_pair = n // pairs
    rng = _rng(seed, 2, p, n, concentration, pairs)
    q = rng.beta(p * concentration, (1 - p) * concentration, size=(trials, pairs))
    wins = rng.binomial(per_pair, q)
    boot_seeds = rng.integers(0, 2**63, size=trials)
    wilson_pop = wilson_grid = boot_pop = clustered_pop = 0
    wilson_width = boot_width = clustered_width = 0.0
    for t in range(trials):
        row = wins[t].tolist()
        total = sum(row)
        by_pair = [(w, per_pair - w, 0) for w in row]
        lo, hi = win_stats(total, n - total, 0, pairs, by_pair)["ci95"]  # the dashboard's (ab_win_rates)
        clustered_pop += lo <= p <= hi
        clustered_width += hi - lo
        lo, hi = win_stats(total, n - total, 0, pairs)["ci95"]
        wilson_pop += lo <= p <= hi
        wilson_grid += lo <= float(q[t].mean()) <= hi
        wilson_width += hi - lo
        blo, bhi = pair_bootstrap_interval(by_pair, resamples=resamples, seed=int(boot_seeds[t]))
        boot_pop += blo <= p <= bhi
        boot_width += bhi - blo
    out: dict[str, Any] = {"p": p, "n": n, "pairs": pairs, "votes_per_pair": per_pair, "concentration": concentration,
                           "icc": 1 / (concentration + 1), "trials": trials, "resamples": resamples}
    for name, hits in (("clustered", clustered_pop), ("wilson", wilson_pop), ("wilson_these_pairs", wilson_grid),
                       ("bootstrap", boot_pop)):
        coverage = hits / trials
        out[name] = {"coverage": coverage, "se": _se(coverage, trials)}
    out["clustered"]["mean_width"] = clustered_width / trials
    out["wilson"]["mean_width"] = wilson_width / trials
    out["bootstrap"]["mean_width"] = boot_width / trials
    return out


def logit_normal_mean(mu, sd: float):
    """``E sigmoid(mu + sd Z)``, Z standard normal, by 80-node Gauss-Hermite quadrature (the estimands of (c)); ``mu``
    a number (a float back) or an array (an array of the same shape back, one mean per entry)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    out = np.sum(weights / (1 + np.exp(-(np.asarray(mu, dtype=np.float64)[..., None] + sd * nodes))), axis=-1)
    out = out / math.sqrt(2 * math.pi)
    return float(out) if np.ndim(mu) == 0 else out


def rater_coverage(p: float, raters: int, rater_sd: float, *, trials: int, seed: int = 0, pairs: int = PAIRS,
                   pair_sd: float = PAIR_SD) -> dict[str, Any]:
    """Coverage of the dashboard's interval (``win_stats`` with ``by_pair`` and ``by_rater``: "dashboard"), of the
    two-way interval at any rater count ("two_way") and of the interval over pairs alone ("pairs_only") when
    ``raters`` raters each vote once on each of ``pairs`` pairs, pair and rater effects on the logit (see (c) above).
    Each holds "coverage" (of the mean over pairs and raters, "truth") and "coverage_these_raters" (of the drawn
    raters' own mean over pairs, a truth per trial; its mean over trials is "these_raters_truth_mean");
    "dashboard_over_raters" says which of the two the dashboard's interval is about, "dashboard_own" its coverage
    of that one."""
    if raters < 1 or pairs < 1:
        raise ValueError(f"a rater cell needs at least one rater and one pair, got {raters} and {pairs}")
    mu = math.log(p / (1 - p))
    truth = logit_normal_mean(mu, math.hypot(pair_sd, rater_sd))
    rng = _rng(seed, 3, p, raters, rater_sd, pairs, pair_sd)
    a = rng.normal(0.0, pair_sd, size=(trials, pairs, 1))
    b = rng.normal(0.0, rater_sd, size=(trials, 1, raters))
    won = rng.random((trials, pairs, raters)) < 1 / (1 + np.exp(-(mu + a + b)))
    these = logit_normal_mean(mu + b[:, 0, :], pair_sd).mean(axis=1)  # each trial's raters, over the pair population
    n = pairs * raters
    names = ("dashboard", "two_way", "pairs_only")
    hits = dict.fromkeys(names, 0)
    hits_these = dict.fromkeys(names, 0)
    widths = dict.fromkeys(names, 0.0)
    over_raters = None
    for t in range(trials):
        by_pair = [(w, raters - w, 0) for w in won[t].sum(axis=1).tolist()]
        by_rater = [(w, pairs - w, 0) for w in won[t].sum(axis=0).tolist()]
        total = sum(w for w, _, _ in by_pair)
        shown = win_stats(total, n - total, 0, pairs, by_pair, by_rater)
        over_raters = shown["over_raters"]
        for name, (lo, hi) in (("dashboard", shown["ci95"]),
                               ("two_way", clustered_win_interval(by_pair, by_rater, generalise_from=2)),
                               ("pairs_only", win_stats(total, n - total, 0, pairs, by_pair)["ci95"])):
            hits[name] += lo <= truth <= hi
            hits_these[name] += lo <= these[t] <= hi
            widths[name] += hi - lo
    out: dict[str, Any] = {"p": p, "raters": raters, "rater_sd": rater_sd, "pairs": pairs, "pair_sd": pair_sd,
                           "truth": truth, "these_raters_truth_mean": float(these.mean()), "trials": trials,
                           "dashboard_over_raters": over_raters}
    for name in names:
        coverage, these_coverage = hits[name] / trials, hits_these[name] / trials
        out[name] = {"coverage": coverage, "se": _se(coverage, trials), "mean_width": widths[name] / trials,
                     "coverage_these_raters": these_coverage, "se_these_raters": _se(these_coverage, trials)}
    own = "coverage" if over_raters else "coverage_these_raters"
    out["dashboard_own"] = {"coverage": out["dashboard"][own], "se": _se(out["dashboard"][own], trials)}
    return out


TABLES = ("independent", "clustered", "raters")


def run(*, trials: int, seed: int, resamples: int, only: str | None = None) -> dict[str, Any]:
    """Every cell of (a), (b) and (c), or of the one table ``only`` names (the others empty); the result that --json
    writes."""
    if only is not None and only not in TABLES:
        raise ValueError(f"only must be one of {', '.join(TABLES)}, got {only!r}")
    started = time.perf_counter()
    independent = [independent_coverage(p, n, tie, trials=trials, seed=seed)
                   for p in WIN_RATES for tie in TIE_PROBS for n in VOTES] if only in (None, "independent") else []
    clustered = [clustered_coverage(p, n, k, trials=trials, seed=seed, resamples=resamples)
                 for p in CLUSTERED_WIN_RATES for k in CONCENTRATIONS for n in CLUSTERED_VOTES
                 ] if only in (None, "clustered") else []
    by_rater = [rater_coverage(p, r, sd, trials=trials, seed=seed)
                for p in CLUSTERED_WIN_RATES for r in RATER_COUNTS for sd in RATER_SDS] if only in (None, "raters") else []
    return {"settings": {"trials": trials, "seed": seed, "resamples": resamples, "level": 0.95, "pairs": PAIRS,
                         "only": only,
                         "seconds": round(time.perf_counter() - started, 1)},
            "independent": independent, "clustered": clustered, "raters": by_rater}


def _cell(stat: dict[str, Any]) -> str:
    return f"{stat['coverage']:.3f} ± {stat['se']:.3f}"


def _these(stat: dict[str, Any]) -> str:
    return f"{stat['coverage_these_raters']:.3f} ± {stat['se_these_raters']:.3f}"


def markdown(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"Coverage of the 95% interval ({s['trials']} trials per cell, seed {s['seed']}; ± is the Monte-Carlo "
             "standard error)."]
    if result["independent"]:
        lines += ["", "(a) Independent votes, one per pair (the dashboard's interval, db.comparisons.win_stats with "
                  "by_pair: Wilson's):", "",
                  "| true rate p | P(tie) | " + " | ".join(f"n={n}" for n in VOTES) + " |",
                  "|---:|---:|" + "---:|" * len(VOTES)]
        cells = {(r["p"], r["tie"], r["n"]): r for r in result["independent"]}
        for p in WIN_RATES:
            for tie in TIE_PROBS:
                lines.append(f"| {p:.1f} | {tie:.1f} | " + " | ".join(_cell(cells[p, tie, n]) for n in VOTES) + " |")
    if result["clustered"]:
        lines += _clustered_table(result)
    if result["raters"]:
        lines += _raters_table(result)
    lines += ["", f"({s['seconds']} s)"]
    return "\n".join(lines)


def _clustered_table(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = ["", f"(b) Clustered votes: {s['pairs']} pairs, pair win probability ~ Beta(p k, (1 - p) k), estimand p "
              f"(the pair population's mean); pair bootstrap with {s['resamples']} resamples:", "",
              "| p | k (ICC) | votes | per pair | dashboard (clustered) covers p | independent-vote Wilson covers p | "
              "Wilson covers these pairs' mean | pair bootstrap covers p | dashboard width | Wilson width | "
              "bootstrap width |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["clustered"]:
        lines.append(f"| {r['p']:.1f} | {r['concentration']:g} ({r['icc']:.2f}) | {r['n']} | {r['votes_per_pair']} | "
                     f"{_cell(r['clustered'])} | {_cell(r['wilson'])} | {_cell(r['wilson_these_pairs'])} | "
                     f"{_cell(r['bootstrap'])} | {r['clustered']['mean_width']:.3f} | {r['wilson']['mean_width']:.3f} | "
                     f"{r['bootstrap']['mean_width']:.3f} |")
    return lines


def _raters_table(result: dict[str, Any]) -> list[str]:
    s = result["settings"]
    lines = ["", f"(c) Raters: {s['pairs']} pairs, every rater voting once on every pair, win logit = logit(p) + "
             f"pair effect (sd {PAIR_SD:g}) + rater effect (sd s). \"Raters' mean\": over pairs and raters (over raters "
             "like these); \"these raters'\": the drawn raters' own mean over pairs (about these raters; its average "
             f"over draws shown). The dashboard's interval is pairs only below {RATERS_TO_GENERALISE} raters, two-way "
             "from it:", "",
             "| p | raters | rater sd s | raters' mean | these raters' (avg) | dashboard is about | dashboard covers "
             "its own | two-way covers raters' mean | two-way covers these raters' | pairs only covers raters' mean | "
             "pairs only covers these raters' | dashboard width | two-way width | pairs-only width |",
             "|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["raters"]:
        about = "raters like these" if r["dashboard_over_raters"] else "these raters"
        lines.append(f"| {r['p']:.1f} | {r['raters']} | {r['rater_sd']:g} | {r['truth']:.4f} | "
                     f"{r['these_raters_truth_mean']:.4f} | {about} | {_cell(r['dashboard_own'])} | "
                     f"{_cell(r['two_way'])} | {_these(r['two_way'])} | {_cell(r['pairs_only'])} | "
                     f"{_these(r['pairs_only'])} | {r['dashboard']['mean_width']:.3f} | "
                     f"{r['two_way']['mean_width']:.3f} | {r['pairs_only']['mean_width']:.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m app.tools.ab_coverage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=2000, help="simulated rounds per table cell (default 2000)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the simulation (default 0)")
    ap.add_argument("--resamples", type=int, default=1000, help="pair-bootstrap resamples per interval (default 1000)")
    ap.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write the numbers to this JSON file")
    ap.add_argument("--only", choices=TABLES, default=None, help="run only this table (default: all three)")
    args = ap.parse_args(argv)
    if args.trials < 1:
        raise SystemExit(f"ab_coverage: --trials must be at least 1, got {args.trials}")
    if args.seed < 0:
        raise SystemExit(f"ab_coverage: --seed must be 0 or more, got {args.seed}")
    if args.resamples < 100:
        raise SystemExit(f"ab_coverage: --resamples must be at least 100, got {args.resamples}")
    if args.json is not None and not args.json.resolve().parent.is_dir():
        raise SystemExit(f"ab_coverage: cannot write {args.json}: its folder does not exist")
    result = run(trials=args.trials, seed=args.seed, resamples=args.resamples, only=args.only)
    print(markdown(result))
    if args.json is not None:
        try:
            write_text(args.json, json.dumps(result, indent=2) + "\n")
        except OSError as exc:
            raise SystemExit(f"ab_coverage: cannot write {args.json}: {exc.strerror or exc}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
