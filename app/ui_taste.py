"""The dashboard's first plot (issue 12 item 5): mean rating and share >= 6 per round with 95% bands
(app.taste_stats), redrawn only when the ratings behind it change."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

from app import taste_stats
from app.ui_rate import pick_experiment
from db.engine import read_session


def rows(factory, experiment_id: int | None) -> list[taste_stats.RoundTaste]:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        return [] if exp is None else taste_stats.experiment_taste(s, exp.id)


def plot_update(factory, experiment_id: int | None, seen_key: str | None):
    """(a new figure, or gr.skip() when the per-round numbers are unchanged since ``seen_key``; the new key)."""
    import gradio as gr

    data = rows(factory, experiment_id)
    key = hashlib.sha256(json.dumps([asdict(r) for r in data]).encode()).hexdigest()
    if key == seen_key:
        return gr.skip(), key
    return taste_stats.figure(data), key
