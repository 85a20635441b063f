"""The dashboard's first plot (issue 12 item 5): mean rating and share >= 6 per round with 95% bands
(app.taste_stats), redrawn only when the ratings behind it change."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from sqlalchemy import select

from app import taste_stats
from app.ui_dashboard import LIVE_STATUSES
from app.ui_rate import pick_experiment
from db.engine import read_session
from db.models import Round


def rows(factory, experiment_id: int | None, *, admin: bool = True) -> list[taste_stats.RoundTaste]:
    """Per round, its ratings' figures; for a rater (``admin=False``) without the rounds still being rated
    (``app.ui_dashboard.LIVE_STATUSES``), which they see once the round closes."""
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            return []
        data = taste_stats.experiment_taste(s, exp.id)
        if admin:
            return data
        live = set(s.scalars(select(Round.index).where(Round.experiment_id == exp.id,
                                                       Round.status.in_(LIVE_STATUSES))))
        return [r for r in data if r.index not in live]


def plot_update(factory, experiment_id: int | None, seen_key: str | None, *, admin: bool = True):
    """(a new figure, or gr.skip() when the per-round numbers are unchanged since ``seen_key``; the new key)."""
    import gradio as gr

    data = rows(factory, experiment_id, admin=admin)
    key = hashlib.sha256(json.dumps([asdict(r) for r in data]).encode()).hexdigest()
    if key == seen_key:
        return gr.skip(), key
    return taste_stats.figure(data), key
