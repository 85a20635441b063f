"""What a model export's card says about its experiment, read from the database (seiko_core.model_card writes it).

Base model, method and SEIKO config from the experiment row. The rounds are the exported round's **lineage**
(``db.comparisons.lineage``: the round it was trained from, that round's, ... back to round 0; root first), so the
rounds a rollback abandoned are not in the table. Per lineage round: the round it was trained from, its ratings
and raters, the ratings that trained it (ratings on every round before it: the worker fits the reward model on all
the experiment's ratings, an abandoned branch's included), the KL to the round it was trained from measured on the
eval grid (``metrics.eval.kl_to_prev``, written by the worker's generate job) and the fine-tuning KL at the last
optimiser step (``metrics.train.finetune.kl_last``); "KL spent" sums the lineage's per-round KLs. The labels and
raters that trained the exported adapter are the ratings on rounds before it, with those on rounds outside the
lineage counted apart. Per round, how its shown images were chosen (``metrics.selection``: the mode, the candidates
generated and the images shown), and the experiment's options at export time. The blind A/B win rates of the
lineage's rounds come from ``db.comparisons.ab_win_rates`` ("not measured" without votes). Raters are counted, never named: a card travels with the model wherever it is
shared.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from app import experiment_options
from app.pairwise import KIND as PREFERENCE
from app.services import experiment_config
from app.settings import Settings
from db import comparisons, repo
from db.engine import make_engine, read_snapshot, session_factory
from db.models import ComparisonPair, ComparisonVote, Image, Rating
from seiko_core.config import to_dict
from seiko_core.model_card import NOT_MEASURED, SCHEMA
from seiko_core.models import public_name


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _rating_counts(s, round_ids: list[int]) -> tuple[int, int, int]:
    """(ratings, distinct rated images, distinct people who rated or compared) on the images of these rounds."""
    if not round_ids:
        return 0, 0, 0
    n, images = s.execute(
        select(func.count(Rating.id), func.count(func.distinct(Rating.image_id)))
        .join(Image, Image.id == Rating.image_id).where(Image.round_id.in_(round_ids))).one()
    return int(n), int(images), len(_people(s, round_ids))


def _people(s, round_ids: list[int]) -> set[int]:
    """The accounts that rated these rounds' images or voted on their preference pairs."""
    raters = set(s.scalars(select(Rating.rater_id).join(Image, Image.id == Rating.image_id)
                           .where(Image.round_id.in_(round_ids)).distinct()))
    voters = set(s.scalars(select(ComparisonVote.rater_id).join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
                           .where(ComparisonPair.round_id.in_(round_ids), ComparisonPair.kind == PREFERENCE).distinct()))
    return raters | voters


def _vote_counts(s, round_ids: list[int]) -> tuple[int, int]:
    """(comparison votes, distinct compared pairs) on these rounds' preference pairs: with comparisons as feedback
    they train the reward model too (the card said "0 ratings, 0 raters" of a pairs-only experiment; found by
    review)."""
    if not round_ids:
        return 0, 0
    n, pairs = s.execute(
        select(func.count(ComparisonVote.id), func.count(func.distinct(ComparisonVote.pair_id)))
        .join(ComparisonPair, ComparisonPair.id == ComparisonVote.pair_id)
        .where(ComparisonPair.round_id.in_(round_ids), ComparisonPair.kind == PREFERENCE)).one()
    return int(n), int(pairs)


def _selection(metrics: Any) -> dict[str, Any] | None:
    """How the round's shown images were chosen (``app.selection.record``): mode, candidates generated, images shown;
    None for a round from before selection existed (every generated image was shown)."""
    sel = _get(metrics, "selection")
    if not isinstance(sel, dict):
        return None
    # the share of random images actually shown (at least one, rounded half up: 1 of 4 for a 10% setting), not the
    # setting (found by review); a round recorded before that was stored gives its setting
    shown_share = sel.get("honest_share_shown")
    return {"mode": sel.get("selection"), "candidates": sel.get("candidates"), "shown": sel.get("shown"),
            "honest_share": shown_share if shown_share is not None else sel.get("honest_share")}


def facts(settings: Settings, experiment_id: int, round_index: int) -> dict[str, Any]:
    """Everything the card says except the export's format, files and verification (added by the exporter)."""
    engine = make_engine(settings.db_url)
    try:
        with read_snapshot(session_factory(engine)) as s:  # its counts from one snapshot, while people keep rating
            exp = repo.get_experiment(session=s, experiment_id=experiment_id)
            cfg = experiment_config(exp)
            every = repo.list_rounds(session=s, experiment_id=experiment_id)
            exported = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=round_index)
            chain = comparisons.lineage(session=s, round_id=exported.id)
            in_lineage = {r.id for r in chain}
            rounds = []
            for r, parent in zip(chain, [None, *chain[:-1]], strict=True):
                labels, _, raters = _rating_counts(s, [r.id])
                earlier = [e.id for e in every if e.index < r.index]
                trained_on = None if parent is None else _rating_counts(s, earlier)[0]
                rounds.append({"index": r.index, "status": r.status, "parent": None if parent is None else parent.index,
                               "labels": labels, "comparisons": _vote_counts(s, [r.id])[0], "raters": raters,
                               "trained_on_labels": trained_on,
                               "trained_on_comparisons": None if parent is None else _vote_counts(s, earlier)[0],
                               "kl_to_prev": _float(_get(r.metrics, "eval", "kl_to_prev")),
                               "kl_to_prev_max": _float(_get(r.metrics, "eval", "kl_to_prev_max")),
                               "train_kl_last": _float(_get(r.metrics, "train", "finetune", "kl_last")),
                               "train_labels": _get(r.metrics, "train", "labels"),
                               "selection": _selection(r.metrics)})
            # what trained the exported adapter: the ratings on every round before it (a rolled-back train job's
            # reward model is fitted on all the experiment's ratings, the abandoned branch's too)
            before = [r for r in every if r.index < round_index]
            n_labels, n_images, n_raters = _rating_counts(s, [r.id for r in before])
            n_votes, n_pairs = _vote_counts(s, [r.id for r in before])
            outside = [r for r in before if r.id not in in_lineage]
            o_labels, o_images, _ = _rating_counts(s, [r.id for r in outside])
            outside_indices = [r.index for r in outside]
            not_in_lineage = sorted(r.index for r in every if r.id not in in_lineage)
            n_rounds = len(every)
            lineage_indices = {r.index for r in chain}
            all_rates = comparisons.ab_win_rates(session=s, experiment_id=experiment_id) or {}
            rates = {str(k): v for k, v in sorted(all_rates.items()) if int(k) in lineage_indices} or None
            name, base, method, created = exp.name, exp.model_spec, exp.method, exp.created_at
            options = experiment_options.of(exp).as_dict()
    finally:
        engine.dispose()
    kls = [r["kl_to_prev"] for r in rounds if r["parent"] is not None]
    return {
        "schema": SCHEMA,
        "experiment": {"id": experiment_id, "name": name, "created_at": created.isoformat() if created else None},
        "base_model": public_name(base),  # a local directory by its name: its path is the server's (review)
        "method": method if method == cfg.method else f"{method} (config: {cfg.method})",
        "round": round_index,
        "lineage": [r["index"] for r in rounds],
        "rounds_total": n_rounds,
        "rounds_not_in_lineage": not_in_lineage,
        "rounds": rounds,
        "labels": {"count": n_labels, "images": n_images},
        "comparisons": {"count": n_votes, "pairs": n_pairs},
        "labels_outside_lineage": {"count": o_labels, "images": o_images, "rounds": outside_indices},
        "raters": {"count": n_raters},
        "kl_total": sum(kls) if kls and all(k is not None for k in kls) else None,
        "win_rates": rates,
        "win_rates_note": None if rates else "no A/B votes on this lineage's rounds yet",
        "win_rates_status": "measured" if rates else NOT_MEASURED,
        "seiko_config": to_dict(cfg),
        "experiment_options": options,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
