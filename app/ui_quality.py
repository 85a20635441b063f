"""Rater quality on the admin tab (issue 14, item 2): agreement, per-rater statistics, gold items, standardising.

Every function checks the admin role itself. The numbers come from ``app.quality`` on the ratings that
``db.quality`` reads; changes (gold items, the standardise setting) land in the audit log.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from app import quality
from app.auth import Who, require_admin
from app.ui_rate import pick_experiment
from db import quality as db_quality
from db import repo
from db.checks import MAX_ID, shown, whole_number
from db.engine import read_session, write_session
from db.errors import InvalidInput

RATER_HEADERS = ["rater", "ratings", "mean", "sd", "range used", "scores used", "shared with others",
                 "|diff| vs others", "corr. vs others", "repeats", "|diff| on repeats", "gold", "gold error", "gold bias"]


def _experiment_id(factory, experiment_id: int | None) -> int:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            raise InvalidInput("there is no experiment yet; create one first")
        return exp.id


def _f(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _alpha_text(a: quality.Alpha) -> str:
    if a.alpha is None:
        return f"undefined ({a.reason})"
    return f"<b>{a.alpha:.3f}</b> over {a.units} items with 2+ ratings ({a.values} ratings)"


def report(factory, who: Who, experiment_id: int | None) -> tuple[str, list[list[str]]]:
    """An HTML summary of agreement (Krippendorff's alpha, ordinal; per experiment and per round) and per-rater rows."""
    require_admin(who)
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            return "<div id='rater-agreement'>No experiment yet.</div>", []
        exp_id = exp.id
        rows = db_quality.rating_rows(session=s, experiment_id=exp_id)
        repeats = db_quality.repeat_rows(session=s, experiment_id=exp_id)
        gold = db_quality.gold_scores(session=s, experiment_id=exp_id)
        names = {r.id: r.name for r in repo.list_raters(session=s)}
        standardized = bool(repo.get_experiment(session=s, experiment_id=exp_id).standardize_scores)
    triples = quality.coded([(r.image_id, r.rater_id, r.score) for r in rows])  # checked and coded once, for every figure
    overall = quality.krippendorff_alpha(triples, "ordinal")
    interval = quality.krippendorff_alpha(triples, "interval")
    round_of = np.asarray([r.round_index for r in rows], dtype=np.int64)
    per_round = {k: quality.krippendorff_alpha(triples.subset(round_of == k), "ordinal") for k in set(round_of.tolist())}
    rounds = "".join(f"<li>round {k}: {_alpha_text(a)}</li>" for k, a in sorted(per_round.items()))
    summary = (
        "<div id='rater-agreement'><div>Agreement between raters, Krippendorff's alpha for ordinal scores "
        f"(1 = perfect, 0 = chance): {_alpha_text(overall)}; interval alpha {_f(interval.alpha, 3)}.</div>"
        f"<ul>{rounds}</ul>"
        f"<div>{len(gold)} gold items, {len(repeats)} repeated ratings. Scores are "
        f"{'standardised per rater' if standardized else 'used as given'} in the reward fit.</div></div>"
    )
    stats = quality.rater_stats(triples)
    consistency = quality.self_consistency(repeats)
    errors = quality.gold_errors(triples, gold)
    table = []
    for rater_id, st in sorted(stats.items(), key=lambda kv: names.get(kv[0], str(kv[0]))):
        c, g = consistency.get(rater_id), errors.get(rater_id)
        table.append([
            html.escape(names.get(rater_id, f"rater {rater_id}")), str(st.n), _f(st.mean), _f(st.std),
            f"{st.low:g}–{st.high:g}", str(st.distinct), str(st.shared), _f(st.mad_vs_others), _f(st.corr_vs_others),
            str(c.n) if c else "0", _f(c.mean_abs_diff) if c else "–",
            str(g.n) if g else "0", _f(g.mean_abs_error) if g else "–", _f(g.bias) if g else "–",
        ])
    return summary, table


def standardize_enabled(factory, experiment_id: int | None) -> bool:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        return bool(exp is not None and exp.standardize_scores)


def _audit(session, who: Who, action: str, target: str, **detail: Any) -> None:
    repo.add_audit(session=session, actor_id=who.rater_id, actor_name=who.name, action=action, target=target,
                   detail=detail or None)


def set_standardize(factory, who: Who, experiment_id: int | None, enabled: bool) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with write_session(factory) as s:
        db_quality.set_standardize_scores(session=s, experiment_id=exp_id, enabled=bool(enabled))
        _audit(s, who, "experiment.standardize_scores", f"experiment {exp_id}", enabled=bool(enabled))
    return ("From the next training on, each rater's scores are standardised (z-scored) before the reward fit."
            if enabled else "From the next training on, scores are used as given in the reward fit.")


def _whole(what: str, value: Any, *, empty_ok: bool = False) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if empty_ok:
            return None
        raise InvalidInput(f"give the {what}")
    value = whole_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not -MAX_ID <= value <= MAX_ID:
        raise InvalidInput(f"the {what} must be a whole number, got {shown(value)}")
    return value


def set_gold(factory, who: Who, experiment_id: int | None, image_id: Any, score: Any) -> str:
    """Make an image of the experiment a gold item with a known score (an empty score makes it ordinary again)."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    image = _whole("image id", image_id)
    known = _whole("known score", score, empty_ok=True)
    with write_session(factory) as s:
        round_ = repo.get_round(session=s, round_id=repo.get_image(session=s, image_id=image).round_id)
        if round_.experiment_id != exp_id:
            raise InvalidInput(f"image {image} belongs to another experiment; choose that experiment first")
        db_quality.set_gold_score(session=s, image_id=image, score=known, created_by=who.rater_id)
        _audit(s, who, "image.gold", f"image {image}", experiment_id=exp_id, score=known)
    if known is None:
        return f"Image {image} is an ordinary item again."
    return f"Image {image} is a gold item: its known score is {known}."
