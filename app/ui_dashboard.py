"""The dashboard: per-round metrics (table and plots), the eval grid, and the worker's state.

Everything here reads; nothing writes. The metric names read from ``Round.metrics`` (written by the
worker) are listed in ``METRIC_KEYS``: the first key present wins, dotted keys look into nested dicts.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import logging
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from PIL import Image as PILImage
from sqlalchemy.orm import Session

from app import alarms, pairwise, storage, ui_images
from app.ui_rate import pick_experiment
from db import jobs as job_queue
from db import repo
from db.checks import check_now
from db.engine import read_session
from db.models import Experiment, Job

log = logging.getLogger(__name__)

METRIC_KEYS: dict[str, tuple[str, ...]] = {
    # Round k's metrics as app.worker writes them: "eval" when it renders round k's eval grid (the reward model
    # of round k and the trajectory KL to round k-1), "train" when it publishes round k (trained on rounds < k).
    # mean predicted reward of round k's eval images under the ensemble round k was trained against
    "pred_mean": ("eval.pred_reward", "train.train_pred_mean"),
    # ensemble spread: mean across-head standard deviation of those predictions
    "pred_spread": ("eval.head_spread", "train.train_head_spread"),
    # KL of round k's model to round k-1's (the fine-tuning constraint)
    "kl": ("eval.kl_to_prev", "train.finetune.kl_last"),
    # labels the reward model behind round k was trained on
    "labels": ("train.labels",),
}
STALE_HEARTBEAT_S = 120
THUMB_MAX = 192  # eval-grid images larger than this are shrunk (smaller ones are shown pixelated)
# Images and ratings in separate columns, never mixed: a round of N images wants N x overlap ratings.
# Pair votes likewise ("–" for an experiment that asks for scores only; its ratings "–" when it asks for pairs only).
HEADERS = ["Round", "Status", "Images", "Images rated", "Ratings", "Ratings wanted", "Comparisons", "Comparisons wanted",
           "Human mean", "Predicted", "Spread (sd)", "KL to prev", "Labels used"]
# rounds whose ratings are still coming in: a rater who may see the dashboard sees their human figures once the round
# closes, so the running mean of the round they are rating cannot anchor their next score
LIVE_STATUSES = ("generating", "labeling")
LIVE_HIDDEN = ("<div id='dashboard-live-hidden' style='color:var(--seiko-muted)'>The open round's ratings are shown here once it "
               "closes, so that they cannot sway the scores still to come.</div>")
NOT_FOR_RATERS = ("<div id='dashboard-hidden'>This experiment's dashboard is for admins: its plots could bias your "
                  "ratings. An admin can let raters see it on the Admin tab.</div>")


def metric(metrics: dict[str, Any] | None, name: str) -> float | None:
    """The first of ``METRIC_KEYS[name]`` present in ``metrics`` as a float, else None."""
    return metric_source(metrics, name)[0]


def metric_source(metrics: dict[str, Any] | None, name: str) -> tuple[float | None, bool]:
    """(value, from_fallback): the first of ``METRIC_KEYS[name]`` present in ``metrics`` as a float (None if none),
    and whether it came from a fallback key rather than the first. A fallback measures something else: the KL's is the
    last optimiser step's batch KL over the attached steps only (a sixth review found it shown as the KL to the previous
    round without a word), the predicted reward's is on the training data, not the eval images."""
    value, i = _metric_lookup(metrics, name)
    if value is None or not math.isfinite(value):
        return None, False
    return value, i > 0


def metric_not_a_number(metrics: dict[str, Any] | None, name: str) -> bool:
    """Whether the figure ``metric_source`` would read for ``name`` is NaN or infinite (a training run that diverged):
    ``metric_source`` gives None for it, and the table shows NOT_A_NUMBER instead of "nan" or "inf" (tenth review).
    The fallback key is not read then: it measures something else, and would be shown as if nothing had gone wrong."""
    value, _ = _metric_lookup(metrics, name)
    return value is not None and not math.isfinite(value)


def _metric_lookup(metrics: dict[str, Any] | None, name: str) -> tuple[float | None, int]:
    """(the first of ``METRIC_KEYS[name]`` present in ``metrics`` as a number, finite or not, its key's place)."""
    for i, key in enumerate(METRIC_KEYS[name]):
        value: Any = metrics or {}
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value), i
    return None, 0


@dataclass(frozen=True)
class RoundRow:
    index: int
    status: str
    images: int
    rated_images: int
    ratings: int
    budget: int | None  # images the experiment generates for the round
    ratings_wanted: int | None  # images x overlap (the budget x overlap before the images exist); None for pairs only
    comparisons: int | None  # pair votes that count (at most overlap a pair); None when the experiment wants no pairs
    comparisons_wanted: int | None  # pairs x overlap, less what skips leave nobody to give (app.pairwise)
    human_mean: float | None
    pred_mean: float | None
    pred_spread: float | None
    kl: float | None
    labels: float | None
    # True where the figure is the training fallback (METRIC_KEYS' second key): the eval grid has not been drawn
    pred_from_training: bool = False
    kl_from_training: bool = False
    # the figures ("pred_mean", "pred_spread", "kl", "labels") recorded as NaN or infinite: None above, NOT_A_NUMBER shown
    not_a_number: tuple[str, ...] = ()


def round_rows(session: Session, experiment: Experiment) -> list[RoundRow]:
    stats = {st.round_id: st for st in repo.round_rating_stats(session=session, experiment_id=experiment.id, kind="query")}
    feedback = pairwise.feedback_of(experiment)
    rows = []
    for r in repo.list_rounds(session=session, experiment_id=experiment.id):
        st = stats[r.id]
        budget = repo.round_budget(experiment.budgets, r.index)  # the worker's rule: the last budget past the list
        wanted = st.labels_wanted if st.n_images else (None if budget is None else budget * experiment.overlap)
        votes = pairwise.round_vote_labels(session, r.id, experiment.overlap) if pairwise.wants_pairs(feedback) else None
        pred_mean, pred_fallback = metric_source(r.metrics, "pred_mean")
        pred_spread, spread_fallback = metric_source(r.metrics, "pred_spread")
        kl, kl_fallback = metric_source(r.metrics, "kl")
        rows.append(RoundRow(
            index=r.index, status=r.status, images=st.n_images, rated_images=st.n_rated_images, ratings=st.n_ratings,
            budget=budget, ratings_wanted=wanted if pairwise.wants_scores(feedback) else None,
            comparisons=None if votes is None else votes[0], comparisons_wanted=None if votes is None else votes[1],
            human_mean=st.mean_score, pred_mean=pred_mean, pred_spread=pred_spread,
            kl=kl, labels=metric(r.metrics, "labels"),
            pred_from_training=pred_fallback or spread_fallback, kl_from_training=kl_fallback,
            not_a_number=tuple(n for n in ("pred_mean", "pred_spread", "kl", "labels") if metric_not_a_number(r.metrics, n)),
        ))
    return rows


def _fmt(value: float | int | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}"


# appended to a figure that is the training fallback, explained under the table (TRAINING_NOTE)
TRAINING_MARK = " (train)"
TRAINING_NOTE = ("A figure marked (train) is not yet the eval grid's: Predicted and Spread are then on the round's training "
                 "images, and KL to prev is the last optimiser step's batch KL over the attached sampler steps only. "
                 "They are replaced once the eval grid is drawn. A figure recorded as NaN or infinite (a training run "
                 "that diverged) is shown as – (not a number) and left out of the plot.")
# a round's figure recorded as NaN or infinite: the table printed "nan" or "inf" (tenth review)
NOT_A_NUMBER = "– (not a number)"


def _fmt_src(value: float | None, digits: int, from_training: bool) -> str:
    return _fmt(value, digits) + (TRAINING_MARK if from_training and value is not None else "")


def table(rows: list[RoundRow]) -> list[list[str]]:
    def cell(r: RoundRow, name: str, text: str) -> str:
        return NOT_A_NUMBER if name in r.not_a_number else text

    return [[str(r.index), r.status, _fmt(r.images), _fmt(r.rated_images), _fmt(r.ratings), _fmt(r.ratings_wanted),
             _fmt(r.comparisons), _fmt(r.comparisons_wanted), _fmt(r.human_mean, 2),
             cell(r, "pred_mean", _fmt_src(r.pred_mean, 2, r.pred_from_training)),
             cell(r, "pred_spread", _fmt_src(r.pred_spread, 3, r.pred_from_training)),
             cell(r, "kl", _fmt_src(r.kl, 4, r.kl_from_training)), cell(r, "labels", _fmt(r.labels))] for r in rows]


def figure(rows: list[RoundRow]) -> Figure:
    """Ratings and predicted reward per round (with the ensemble spread), KL to the previous round, labels."""
    fig = Figure(figsize=(11, 3.2), dpi=100, layout="constrained")
    ax1, ax2, ax3 = fig.subplots(1, 3)
    x = [r.index for r in rows]

    def series(attr: str) -> tuple[list[int], list[float]]:
        pts = [(r.index, getattr(r, attr)) for r in rows if getattr(r, attr) is not None]
        return [p[0] for p in pts], [p[1] for p in pts]

    hx, hy = series("human_mean")
    ax1.plot(hx, hy, "o-", color="#15803d", label="mean human rating")
    pts = [(r.index, r.pred_mean, r.pred_spread or 0.0) for r in rows if r.pred_mean is not None]
    if pts:
        px, py, ps = zip(*pts)
        ax1.plot(px, py, "s--", color="#2563eb", label="mean predicted reward")
        ax1.fill_between(px, [m - s for m, s in zip(py, ps)], [m + s for m, s in zip(py, ps)], color="#2563eb",
                         alpha=0.18, label="ensemble spread (±1 sd)")
    ax1.set_title("Rating and predicted reward")
    ax1.set_xlabel("round")
    ax1.legend(fontsize=8, loc="best")
    kx, ky = series("kl")
    ax2.plot(kx, ky, "-", color="#9333ea")
    ex = [(r.index, r.kl) for r in rows if r.kl is not None and not r.kl_from_training]
    tx = [(r.index, r.kl) for r in rows if r.kl is not None and r.kl_from_training]
    if ex:
        ax2.plot(*zip(*ex), "o", color="#9333ea", label="on the eval grid")
    if tx:  # hollow: another quantity (TRAINING_NOTE), drawn apart so that it is not read as the eval grid's
        ax2.plot(*zip(*tx), "o", mfc="none", color="#9333ea", label="last training step (no eval grid yet)")
    if tx:
        ax2.legend(fontsize=8, loc="best")
    ax2.set_title("KL to previous round")
    ax2.set_xlabel("round")
    ax3.bar(x, [r.ratings for r in rows], color="#94a3b8", label="ratings given")
    lx, ly = series("labels")
    if lx:
        ax3.plot(lx, ly, "o-", color="#0f172a", label="labels used in training")
    ax3.set_title("Labels")
    ax3.set_xlabel("round")
    ax3.legend(fontsize=8, loc="best")
    for ax in (ax1, ax2, ax3):
        ax.grid(alpha=0.3)
        if x:
            ax.set_xticks(x)
    return fig


# ---------------------------------------------------------------------------------------------
# eval grid: the same prompts and seeds rendered by each round's model
# ---------------------------------------------------------------------------------------------


def _thumb_uri(path) -> str:
    data = path.read_bytes()
    return _thumb_uri_of(data)


def _thumb_uri_of(data: bytes) -> str:
    from PIL import Image as PILImage

    with PILImage.open(io.BytesIO(data)) as im:
        if max(im.size) > THUMB_MAX:
            im = im.convert("RGB")
            im.thumbnail((THUMB_MAX, THUMB_MAX), PILImage.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def eval_grid_key(session: Session, experiment: Experiment) -> str:
    ids = [(r.index, [im.id for im in repo.list_images(session=session, round_id=r.id, kind="eval")])
           for r in repo.list_rounds(session=session, experiment_id=experiment.id)]
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()


def eval_grid_html(session: Session, experiment: Experiment, data_dir) -> str:
    rounds = repo.list_rounds(session=session, experiment_id=experiment.id)
    cells: dict[tuple[str, int], dict[int, Any]] = {}
    for r in rounds:
        for im in repo.list_images(session=session, round_id=r.id, kind="eval"):
            cells.setdefault((im.prompt, im.seed), {})[r.index] = im
    if not cells:
        return ("<div class='rg-empty'>No evaluation images yet. The worker renders the same prompts and seeds "
                "with every round's model; they appear here side by side.</div>")
    cols = [r.index for r in rounds if any(r.index in row for row in cells.values())]
    head = "".join(f"<th>round {k}</th>" for k in cols)
    body = []
    for (prompt, seed), row in sorted(cells.items()):
        tds = []
        for k in cols:
            im = row.get(k)
            path = storage.resolve(data_dir, im.file_path) if im is not None else None
            if path is not None and path.is_file():
                try:  # tabindex below: a click focuses the image, which the CSS shows large
                    data = path.read_bytes()
                    uri = _thumb_uri_of(data)
                except (OSError, ValueError, PILImage.DecompressionBombError) as exc:  # UnidentifiedImageError: OSError
                    # one damaged file is its own cell: it failed the whole refresh, every few seconds (review)
                    log.warning("eval image %s of round %d is not readable: %s", path, k, exc)
                    tds.append("<td><div class='none' title='image file not readable'>not readable</div></td>")
                    continue
                tds.append(f"<td><img src='{uri}'{ui_images.img_class(data)} tabindex='0' "
                           f"title='click to enlarge' alt='round {k}: {html.escape(prompt, quote=True)}, seed {seed}'>"
                           f"<div class='cap'>round {k} · {html.escape(prompt)} · seed {seed} · click anywhere to close"
                           "</div></td>")
            else:
                tds.append("<td><div class='none' title='not rendered'></div></td>")
        body.append(f"<tr><th class='rowhead'>{html.escape(prompt)}<br><small>seed {seed}</small></th>{''.join(tds)}</tr>")
    return f"<div class='seiko-evalgrid'><table><tr><th></th>{head}</tr>{''.join(body)}</table></div>"


# ---------------------------------------------------------------------------------------------
# the worker's state
# ---------------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def _ago(when: datetime | None, now: datetime) -> float | None:
    return None if when is None else (now - when).total_seconds()


def worker_html(session: Session, experiment: Experiment, *, errors: bool = True) -> str:
    """The worker's state for the experiment; a failed job's error text (paths, tracebacks) only with ``errors``
    (admins: raters who may see the dashboard are told a job failed, not why)."""
    jobs = job_queue.list_jobs(session=session, experiment_id=experiment.id, limit=50)
    now = check_now(None, session)  # the database's clock, which the workers' heartbeats are stamped by
    # generate and train jobs before eval jobs (db.jobs.claim_job), then the oldest: the running job shown is the one
    # a person waits for (an eval job running beside it on another worker comes second), the queued one the next taken
    def order(j: Job) -> tuple[bool, int]:
        return (j.kind not in job_queue.PERSON_KINDS, j.id)

    running = sorted((j for j in jobs if j.status == "running"), key=order)
    queued = sorted((j for j in jobs if j.status == "queued"), key=order)
    job: Job | None = running[0] if running else (queued[0] if queued else None)
    parts = []
    paused = " · <b>experiment paused</b>" if experiment.status == "paused" else ""
    if job is None:
        parts.append(f"<div><b>Worker:</b> idle, no job waiting{paused}</div>")
    elif job.status == "queued":
        kind = "eval grid" if job.kind == "eval" else job.kind
        parts.append(f"<div><b>Worker:</b> job {job.id} ({kind}) is waiting for the worker{paused}</div>")
    else:
        p = job.progress or {}
        step, total = p.get("step"), p.get("total")
        pct = 100.0 * step / total if isinstance(step, int | float) and isinstance(total, int | float) and total else None
        beat = _ago(job.heartbeat_at, now)
        round_ = repo.get_round(session=session, round_id=job.round_id) if job.round_id is not None else None
        what = {"generate": "generating images", "train": "training", "eval": "rendering the eval grid"}.get(job.kind, job.kind)
        where = f" for round {round_.index}" if round_ is not None else ""
        line = (f"<div><b>Worker:</b> {what}{where} (job {job.id}, attempt {job.attempts} of {job.max_attempts}){paused}</div>"
                f"<div>phase <b>{html.escape(str(p.get('phase', 'starting')))}</b>"
                + (f" · step {step} of {total} ({pct:.0f}%)" if pct is not None else "")
                + f" · ETA {_duration(p.get('eta_s')) if p.get('eta_s') is not None else 'unknown'}"
                + f" · last heartbeat {_duration(beat)} ago</div>")
        parts.append(line)
        parts.append(f"<div class='bar' id='worker-bar'><div style='width:{pct or 0:.1f}%'></div></div>")
        if beat is not None and beat > STALE_HEARTBEAT_S:
            parts.append("<div class='err'>No heartbeat for a while: is the worker running? (python -m app worker)</div>")
    failed = [j for j in jobs if j.status == "failed"]
    if failed and (job is None or failed[0].id > job.id):
        f = failed[0]
        why = html.escape(f.error or "no error recorded") if errors else "an admin can see why on the Admin tab"
        parts.append(f"<div class='err'>Job {f.id} ({f.kind}) failed: {why}</div>")
    return "<div class='seiko-worker' id='worker-state'>" + "".join(parts) + "</div>"


# ---------------------------------------------------------------------------------------------
# one refresh
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dashboard:
    summary: str
    worker: str
    table: list[list[str]]
    rows_key: str
    rows: list[RoundRow]
    grid_key: str
    experiment_id: int | None


def summary_html(experiment: Experiment, *, admin: bool = True) -> str:
    """The experiment's line; raters see a local model's directory name, not its path on the server (job errors are
    kept from them for the same reason: found by review)."""
    model = experiment.model_spec
    if not admin and (Path(model).expanduser().is_absolute() or model.startswith(".")):
        model = Path(model).name
    return (f"<div><b>{html.escape(experiment.name)}</b> · method {html.escape(experiment.method)} · "
            f"model <code>{html.escape(model)}</code> · {experiment.status} · overlap {experiment.overlap}</div>")


def _ratings_beside(flag: alarms.Flag, rated: dict[int, tuple[float, int]]) -> str:
    """What the people rated the two compared rounds' images on average (and how many ratings), after a statistic's
    warning; "" where either mean is not known (no ratings, or a live round's hidden from a rater). An alarm reads the
    model's eval images only, so a look the people rate up (a rater who likes dark backgrounds: the dark-pixel fraction
    rises) was warned about as hacking with nothing beside it to tell the two apart (found opening the dashboard, 7 Dec
    2026). Only the figures: raw means of few ratings, or of other raters, are no verdict; a higher one adds that the
    look may be their taste, except after a fall in diversity, which is the collapse whatever the people think of it."""
    if flag.reference_round is None or flag.reference_round not in rated or flag.round not in rated:
        return ""
    (before, n_before), (after, n_after) = rated[flag.reference_round], rated[flag.round]
    said = (f"; the people's mean rating: {before:.2f} ({n_before} ratings) in round {flag.reference_round}, "
            f"{after:.2f} ({n_after} ratings) in round {flag.round}")
    if after > before and not flag.statistic.startswith("diversity"):
        said += ": a look they rate higher may be their taste rather than hacking (see the grid)"
    return said


def alarms_html(session: Session, experiment: Experiment, thresholds: alarms.Thresholds | None = None,
                rows: list[RoundRow] | None = None) -> str:
    """One warning line per flagged round and statistic (app.alarms: eval-image statistics and KL); empty when none.
    ``rows`` (``round_rows``, live rounds' means blanked for a rater): the people's mean rating of both compared rounds
    is said beside a statistic's warning."""
    rounds = repo.list_rounds(session=session, experiment_id=experiment.id)
    metrics = {r.index: r.metrics for r in rounds}
    index_of = {r.id: r.index for r in rounds}
    # each round against the round it was trained from (a rollback's recorded parent), not merely the one before it
    parents = {r.index: index_of[r.parent_round_id] for r in rounds if r.parent_round_id in index_of}
    found = alarms.flags_from_metrics(metrics, thresholds or alarms.Thresholds.from_env(), parents)
    if not found:
        return ""
    rated = {r.index: (r.human_mean, r.ratings) for r in rows or () if r.human_mean is not None}
    lines = "".join(f"<div class='warn alarm' data-round='{f.round}' data-statistic='{f.statistic}' style='color:#b45309'>"
                    f"⚠ Possible reward hacking: {html.escape(f.message() + _ratings_beside(f, rated))}</div>" for f in found)
    return f"<div id='reward-alarms'>{lines}</div>"


def _hide_live(rows: list[RoundRow]) -> str:
    """Blanks the human mean of every round still being rated (in place, for a rater's view); the note saying so,
    or "" when no round is live. Counts stay: the rating page shows the round's progress anyway."""
    live = [i for i, r in enumerate(rows) if r.status in LIVE_STATUSES and r.human_mean is not None]
    for i in live:
        rows[i] = dataclasses.replace(rows[i], human_mean=None)
    return LIVE_HIDDEN if any(r.status in LIVE_STATUSES for r in rows) else ""


def load(factory, experiment_id: int | None, *, admin: bool = False) -> Dashboard:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            return Dashboard("<div>No experiment yet.</div>", "<div class='seiko-worker'>Worker: no experiment yet</div>",
                             [], "", [], "", None)
        rows = round_rows(s, exp)
        live = "" if admin else _hide_live(rows)
        rows_key = hashlib.sha256(json.dumps([r.__dict__ for r in rows]).encode()).hexdigest()
        return Dashboard(summary_html(exp, admin=admin) + live + alarms_html(s, exp, rows=rows), worker_html(s, exp, errors=admin), table(rows), rows_key, rows,
                         eval_grid_key(s, exp), exp.id)


def grid(factory, experiment_id: int, data_dir) -> str:
    with read_session(factory) as s:
        return eval_grid_html(s, repo.get_experiment(session=s, experiment_id=experiment_id), data_dir)
