"""What a model export's card says about its experiment, read from the database (seiko_core.model_card writes it).

Base model, method and SEIKO config from the experiment row; per round up to the exported one: ratings, raters,
the KL to the previous round measured on the eval grid (``metrics.eval.kl_to_prev``, written by the worker's
generate job) and the fine-tuning KL at the last optimiser step (``metrics.train.finetune.kl_last``); the labels
and raters that trained the adapter (ratings on rounds before it); the blind A/B win rates from
``db.comparisons.ab_win_rates`` where that module exists and has votes, else "not measured". Raters are counted,
never named: a card travels with the model wherever it is shared.
"""

from __future__ import annotations

import importlib
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from app.services import experiment_config
from app.settings import Settings
from db import repo
from db.engine import make_engine, read_session, session_factory
from db.models import Image, Rating, Round
from seiko_core.config import to_dict
from seiko_core.model_card import NOT_MEASURED, SCHEMA


def _win_rates_module():
    """``db.comparisons`` if this installation has it, else None (written by another part of the project)."""
    try:
        return importlib.import_module("db.comparisons")
    except ModuleNotFoundError as exc:
        if exc.name != "db.comparisons":
            raise
        return None


def _get(d: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def facts(settings: Settings, experiment_id: int, round_index: int) -> dict[str, Any]:
    """Everything the card says except the export's format, files and verification (added by the exporter)."""
    engine = make_engine(settings.db_url)
    try:
        with read_session(session_factory(engine)) as s:
            exp = repo.get_experiment(session=s, experiment_id=experiment_id)
            cfg = experiment_config(exp)
            rounds = [r for r in repo.list_rounds(session=s, experiment_id=experiment_id) if r.index <= round_index]
            per_round = {}
            for r in rounds:
                labels, raters = s.execute(
                    select(func.count(Rating.id), func.count(func.distinct(Rating.rater_id)))
                    .join(Image, Image.id == Rating.image_id).where(Image.round_id == r.id)).one()
                per_round[r.index] = {"index": r.index, "status": r.status, "labels": int(labels), "raters": int(raters),
                                      "kl_to_prev": _float(_get(r.metrics, "eval", "kl_to_prev")),
                                      "kl_to_prev_max": _float(_get(r.metrics, "eval", "kl_to_prev_max")),
                                      "train_kl_last": _float(_get(r.metrics, "train", "finetune", "kl_last")),
                                      "train_labels": _get(r.metrics, "train", "labels")}
            trained_on = [r.id for r in rounds if r.index < round_index]
            n_labels, n_images, n_raters = s.execute(
                select(func.count(Rating.id), func.count(func.distinct(Rating.image_id)), func.count(func.distinct(Rating.rater_id)))
                .join(Image, Image.id == Rating.image_id).where(Image.round_id.in_(trained_on))).one()
            n_rounds_total = s.scalar(select(func.count(Round.id)).where(Round.experiment_id == experiment_id))
            module = _win_rates_module()
            if module is None or not hasattr(module, "ab_win_rates"):
                rates, note = None, "this installation records no A/B comparisons"
            else:
                all_rates = module.ab_win_rates(session=s, experiment_id=experiment_id) or {}
                rates = {str(k): v for k, v in sorted(all_rates.items()) if int(k) <= round_index} or None
                note = None if rates else "no A/B votes on these rounds yet"
            name, base, method, created = exp.name, exp.model_spec, exp.method, exp.created_at
    finally:
        engine.dispose()
    kls = [v["kl_to_prev"] for k, v in per_round.items() if k >= 1]
    return {
        "schema": SCHEMA,
        "experiment": {"id": experiment_id, "name": name, "created_at": created.isoformat() if created else None},
        "base_model": base,
        "method": method if method == cfg.method else f"{method} (config: {cfg.method})",
        "round": round_index,
        "rounds_total": int(n_rounds_total or 0),
        "rounds": [per_round[k] for k in sorted(per_round)],
        "labels": {"count": int(n_labels), "images": int(n_images)},
        "raters": {"count": int(n_raters)},
        "kl_total": sum(kls) if kls and all(k is not None for k in kls) else None,
        "win_rates": rates,
        "win_rates_note": note if rates is None else None,
        "win_rates_status": "measured" if rates else NOT_MEASURED,
        "seiko_config": to_dict(cfg),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
