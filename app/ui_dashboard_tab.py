"""The Dashboard tab: ``build(...)`` lays it out (per-round metrics, the taste plot, the eval grid, the worker's
state; it refreshes itself) and wires its events; its handlers are the methods of ``DashboardHandlers``.

Shown to admins, and to raters only where the experiment allows it (its plots can bias ratings): ``visible`` is that
rule, and every handler checks it on the server, not only by hiding the tab. Handler names are looked up in tests
(``demo.fns``): keep them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import members, ui_admin, ui_compare, ui_dashboard, ui_rate, ui_taste
from app.auth import Who


def visible(factory, who: Who, exp_id: int | None) -> bool:
    """Whether ``who`` may see the dashboard of experiment ``exp_id``: an admin, or a rater of it (``app.members``)
    where the experiment lets raters see it."""
    return who.is_admin or (ui_admin.raters_see_dashboard(factory, exp_id) and members.may_rate_id(factory, who, exp_id))


class DashboardHandlers:
    def __init__(self, services, who_of: Callable[[Any], Who]):
        self.factory, self.data_dir = services.factory, services.settings.data_dir
        self.who_of = who_of

    def on_dashboard(self, exp_id, seen, request: gr.Request):
        who = self.who_of(request)
        exp_id = ui_rate.resolved_experiment_id(self.factory, exp_id)  # one experiment for check and load
        if not visible(self.factory, who, exp_id):  # checked here, not only by hiding the tab
            # the plots are cleared, not skipped: a rater with the tab open when an admin turned it off kept them (review)
            return (ui_dashboard.NOT_FOR_RATERS, "", [], None, "", {})
        d = ui_dashboard.load(self.factory, exp_id, admin=who.is_admin)
        seen = dict(seen or {})
        fig = gr.skip()
        if d.rows_key != seen.get("rows"):
            fig = ui_dashboard.figure(d.rows)
            seen["rows"] = d.rows_key
        grid_html = gr.skip()
        if d.experiment_id is not None and d.grid_key != seen.get("grid"):
            grid_html = ui_dashboard.grid(self.factory, d.experiment_id, self.data_dir)
            seen["grid"] = d.grid_key
        return d.summary, d.worker, d.table, fig, grid_html, seen

    def on_taste(self, exp_id, seen_key, request: gr.Request):
        who = self.who_of(request)
        exp_id = ui_rate.resolved_experiment_id(self.factory, exp_id)  # one experiment for check and load
        if not visible(self.factory, who, exp_id):  # checked here, not only by hiding the tab
            return None, ""
        return ui_taste.plot_update(self.factory, exp_id, seen_key, admin=who.is_admin)


@dataclass(frozen=True)
class DashboardTab:
    tab: Any  # gr.Tab: its visibility is set on page load and when another experiment is selected


def build(services, exp_state, dash_state, who_of: Callable, private: dict[str, Any]) -> DashboardTab:
    """The Dashboard tab (call inside ``gr.Tabs()``), its events wired to a ``DashboardHandlers``."""
    h = DashboardHandlers(services, who_of)
    with gr.Tab("Dashboard", id="dashboard", elem_id="tab-dashboard", visible=False) as dash_tab:
        summary = gr.HTML()
        worker = gr.HTML(elem_id="worker")
        # issue 12 item 5: the first plot is what the person cares about (app.ui_taste)
        taste_plot = gr.Plot(label="What you rated, per round (95% confidence bands)", elem_id="taste-plot")
        taste_state = gr.State("")
        gr.Markdown("### Rounds")
        rounds_table = gr.Dataframe(headers=ui_dashboard.HEADERS, value=[], interactive=False, wrap=False,
                                    elem_id="rounds-table")
        gr.Markdown(ui_dashboard.TRAINING_NOTE, elem_id="rounds-table-note")
        plot = gr.Plot(label="Per round", elem_id="rounds-plot")
        gr.Markdown("### The same eval prompts and seeds, one column per round's model")
        eval_grid = gr.HTML(elem_id="eval-grid")
        dash_timer = gr.Timer(services.dashboard_refresh_s)
        ui_compare.build_dashboard(services, exp_state, dash_tab, dash_timer, who_of,
                                   lambda who, exp_id: visible(services.factory, who, exp_id), private=private)

    dash_outputs = [summary, worker, rounds_table, plot, eval_grid, dash_state]
    dash_timer.tick(h.on_taste, [exp_state, taste_state], [taste_plot, taste_state], show_progress="hidden", **private)
    dash_tab.select(h.on_taste, [exp_state, taste_state], [taste_plot, taste_state], **private)
    dash_timer.tick(h.on_dashboard, [exp_state, dash_state], dash_outputs, show_progress="hidden", **private)
    dash_tab.select(h.on_dashboard, [exp_state, dash_state], dash_outputs, **private)
    return DashboardTab(tab=dash_tab)
