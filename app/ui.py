"""The web app: ``build_demo(services) -> gr.Blocks`` and what ``launch`` needs (``launch_kwargs``).

Three tabs: Rate (a keyboard-first grid of the open round's images), Dashboard (per-round metrics,
the eval grid, the worker's state; refreshes itself) and Admin (experiments, rounds, users; shown
to admins only, and every admin handler checks the role on the server).

The handlers live in ``app.ui_rate``, ``app.ui_dashboard`` and ``app.ui_admin`` as plain functions;
the functions here only find who is asking (``gr.Request``), call them and turn their results and
refusals into Gradio outputs, ``gr.Warning`` or ``gr.Error``. Per-browser state is in ``gr.State``.

Public API (documented, for ``gradio_client``): ``/next_batch`` and ``/submit_rating``. Every other
event is private. Images reach the browser as ``data:`` URIs, so no file route ever serves the data
dir; the data dir, the SQLite database files and the model directory are also in ``blocked_paths``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
from sqlalchemy import make_url
from sqlalchemy.orm import Session, sessionmaker

from app import auth, ui_admin, ui_dashboard, ui_export, ui_quality, ui_rate, ui_taste, web_guard
from app import ui_compare  # issue 14 item 3: the Compare tab (blind A/B), its dashboard table, rollback
from app import ui_pairs  # issue 14 item 1: the Pairs tab (pairwise preferences) and the feedback setting
from app import ui_options  # issue 12 items 3 and 5: the round options (app.experiment_options)
from app.auth import AuthError, Who
from app.settings import Settings
from app.ui_assets import CSS, GRID_JS, MARKS_JS
from db.models import EXPORT_FORMATS
from seiko_core.config import METHODS
from seiko_core.presets import PRESETS

TITLE = "SEIKO studio"


@dataclass(frozen=True)
class AppServices:
    """What the app needs: the database, the settings, and whether it runs without accounts."""

    factory: sessionmaker[Session]
    settings: Settings
    local_mode: bool  # no accounts: localhost only, everyone is the local admin
    batch_size: int = 8  # images per rating batch
    dashboard_refresh_s: float = 5.0
    rate_poll_s: float = 10.0  # how often an empty rating page looks for new images


# ---------------------------------------------------------------------------------------------
# who is asking; errors for the user
# ---------------------------------------------------------------------------------------------


def who_from_request(services: AppServices, request: gr.Request | None) -> Who:
    """The rater behind ``request`` (AuthError if refused)."""
    username = getattr(request, "username", None) if request is not None else None
    client = getattr(request, "client", None) if request is not None else None
    host = getattr(client, "host", None) if client is not None else None
    return auth.identify(services.factory, local_mode=services.local_mode, username=username, client_host=host)


def _sentence(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text[0].upper() + text[1:] + ("" if text.endswith((".", "!", "?")) else ".")


def _who(services: AppServices, request: gr.Request | None) -> Who:
    try:
        return who_from_request(services, request)
    except AuthError as e:
        raise gr.Error(_sentence(e), title="Not allowed") from e


def _admin(services: AppServices, request: gr.Request | None) -> Who:
    who = _who(services, request)
    try:
        return auth.require_admin(who)
    except AuthError as e:
        raise gr.Error(_sentence(e), title="Admins only") from e


def _shown(fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a refusal (a ValueError from the db layer or a form check, or AuthError) becomes a gr.Error."""
    try:
        return fn()
    except (AuthError, ValueError) as e:
        raise gr.Error(_sentence(e)) from e


def event_payload(evt: gr.EventData | None) -> dict[str, Any]:
    """The data a custom event sent with ``trigger(name, data)`` (an empty dict when it sent none)."""
    raw = vars(evt).get("_data") if evt is not None else None
    return raw if isinstance(raw, dict) else {}


def banner_html(services: AppServices, who: Who) -> str:
    import html

    if who.local:
        return (
            "<div class='seiko-banner local' id='local-mode'><b>Local mode:</b> no user accounts exist, so this app "
            "answers only on this computer (127.0.0.1) and you act as the single local admin. To let other people rate, "
            "add accounts with <code>python -m app users add NAME --role admin|rater</code> and restart the app; "
            "then everyone signs in.</div>"
        )
    # Log out is a POST (app.web_guard): a GET /logout ends nothing, so a link on another site cannot sign anyone out.
    return (f"<div class='seiko-banner user' id='signed-in'>Signed in as <b>{html.escape(who.name)}</b> ({who.role})"
            "<form method='post' action='/logout' style='display:inline'>"
            "<button type='submit' id='logout-button' class='seiko-logout'>Log out</button></form></div>")


# ---------------------------------------------------------------------------------------------
# launching
# ---------------------------------------------------------------------------------------------


def blocked_paths(settings: Settings) -> list[str]:
    """Absolute paths Gradio's file routes must never serve: the data dir, the SQLite files, the model dir."""
    paths = [settings.data_dir.resolve()]
    url = make_url(settings.db_url)
    if url.get_backend_name() == "sqlite" and url.database:
        db_file = Path(url.database).resolve()
        paths += [db_file.with_name(db_file.name + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    model = Path(settings.model).expanduser()
    if model.exists():
        paths.append(model.resolve())
    out: list[str] = []
    for p in paths:
        if str(p) not in out:
            out.append(str(p))
    return out


def launch_kwargs(services: AppServices) -> dict[str, Any]:
    """Keyword arguments for ``build_demo(services).launch(...)``: CSS, file-route blocks, and sign-in with accounts."""
    kwargs: dict[str, Any] = {
        "css": CSS,
        "blocked_paths": blocked_paths(services.settings),
        "run_history": False,
        # FastAPI's default /openapi.json answers without sign-in (Gradio turns off /docs and /redoc, not the schema);
        # the API is documented at /gradio_api/info, behind sign-in. Found by tests/reliability/test_rel_access.py.
        # app.web_guard goes in front of everything Gradio builds when the server starts: Host and Origin checks,
        # SameSite=Lax cookies, throttled sign-in off the event loop, server-side sessions, log out by POST.
        # routes: GET /seiko/export/<id>, the one download route of exports built on the admin tab (app.ui_export).
        "app_kwargs": {"openapi_url": None, "lifespan": web_guard.lifespan(services), "routes": ui_export.routes(services)},
        "footer_links": ["api", "gradio"],
        "server_name": services.settings.host,
        "server_port": services.settings.port,
    }
    if not services.local_mode:
        kwargs["auth"] = auth.refuse_direct_sign_in  # shows Gradio's login page; app.web_guard answers POST /login
        kwargs["auth_message"] = f"{TITLE}: sign in with the account an admin made for you."
    return kwargs


# ---------------------------------------------------------------------------------------------
# the app
# ---------------------------------------------------------------------------------------------


def build_demo(services: AppServices) -> gr.Blocks:
    """The whole app as a gr.Blocks; launch it with ``demo.launch(**launch_kwargs(services))``."""
    factory, data_dir, size = services.factory, services.settings.data_dir, services.batch_size
    private: dict[str, Any] = {"api_visibility": "private"}

    def view_outputs(view: ui_rate.View) -> tuple:
        if view.message:
            gr.Warning(_sentence(view.message))
        return (gr.skip() if view.grid is None else view.grid, view.marks, view.progress, view.state)

    with gr.Blocks(title=TITLE, analytics_enabled=False) as demo:
        rate_state = gr.State(None)
        exp_state = gr.State(None)
        dash_state = gr.State({})

        with gr.Row(elem_classes="seiko-header", equal_height=True):
            gr.HTML(f"<h1>{TITLE}</h1>", padding=False)
            experiment_dd = gr.Dropdown(label="Experiment", choices=[], value=None, interactive=True, scale=0, min_width=260)
        banner = gr.HTML(elem_id="banner")

        with gr.Tabs():
            with gr.Tab("Rate", id="rate", elem_id="tab-rate"):
                progress = gr.HTML(elem_id="rate-progress")
                grid = gr.HTML(value="", elem_id="rating-grid", js_on_load=GRID_JS, apply_default_css=False)
                marks = gr.HTML(value="", elem_id="rating-marks", html_template="", js_on_load=MARKS_JS)
                with gr.Row():
                    new_batch_btn = gr.Button("New batch", size="sm", variant="secondary", scale=0)
                    undo_btn = gr.Button("Undo last rating or skip (u)", size="sm", variant="secondary", scale=0)
                rate_timer = gr.Timer(services.rate_poll_s)

            # issue 14 item 1: pairwise preferences, left / right / tie with the keyboard (app.ui_pairs)
            ui_pairs.build_tab(services, exp_state, lambda request: _who(services, request), _shown,
                               lambda message: gr.Warning(_sentence(message)), private=private)

            # shown to admins, and to raters only where the experiment allows it (its plots can bias ratings)
            with gr.Tab("Dashboard", id="dashboard", elem_id="tab-dashboard", visible=False) as dash_tab:
                summary = gr.HTML()
                worker = gr.HTML(elem_id="worker")
                # issue 12 item 5: the first plot is what the person cares about (app.ui_taste)
                taste_plot = gr.Plot(label="What you rated, per round (95% confidence bands)", elem_id="taste-plot")
                taste_state = gr.State("")
                gr.Markdown("### Rounds")
                rounds_table = gr.Dataframe(headers=ui_dashboard.HEADERS, value=[], interactive=False, wrap=False,
                                            elem_id="rounds-table")
                plot = gr.Plot(label="Per round", elem_id="rounds-plot")
                gr.Markdown("### The same eval prompts and seeds, one column per round's model")
                eval_grid = gr.HTML(elem_id="eval-grid")
                dash_timer = gr.Timer(services.dashboard_refresh_s)
                ui_compare.build_dashboard(services, exp_state, dash_tab, dash_timer, lambda request: _who(services, request),
                                           lambda who, exp_id: dashboard_visible(who, exp_id), private=private)

            ui_compare.build_tab(services, exp_state, lambda request: _who(services, request), _shown, kind="ab",
                                 label="Compare", private=private)

            with gr.Tab("Admin", id="admin", elem_id="tab-admin", visible=False) as admin_tab:
                admin_status = gr.HTML()
                with gr.Row():
                    close_btn = gr.Button("Close round and train", variant="primary", scale=0, min_width=220)
                    pause_btn = gr.Button("Pause", scale=0, min_width=120)
                    resume_btn = gr.Button("Resume", scale=0, min_width=120)
                admin_result = gr.Markdown()
                # closing a round, finishing and archiving are asked first: the buttons above only show this row
                with gr.Row(visible=False, elem_id="confirm-row") as confirm_row:
                    confirm_text = gr.Markdown(elem_id="confirm-text")
                    confirm_btn = gr.Button("Yes, do it", variant="stop", scale=0, min_width=200, elem_id="confirm-yes")
                    cancel_btn = gr.Button("Cancel", scale=0, min_width=120, elem_id="confirm-cancel")
                pending_state = gr.State(None)
                with gr.Accordion("Recovery", open=True):
                    jobs_df = gr.Dataframe(headers=["job", "kind", "round", "status", "attempts", "error"], value=[],
                                           interactive=False, wrap=True, elem_id="jobs-table")
                    with gr.Row():
                        retry_id = gr.Textbox(label="Job id (empty: the newest failed job)", value="", scale=0,
                                              min_width=220, elem_id="retry-job-id")
                        retry_btn = gr.Button("Retry failed job", scale=0, min_width=180, elem_id="retry-job")
                        reopen_btn = gr.Button("Reopen round for labeling", scale=0, min_width=220, elem_id="reopen-round")
                        finish_btn = gr.Button("Finish experiment", variant="stop", scale=0, min_width=180,
                                               elem_id="finish-experiment")
                        archive_btn = gr.Button("Archive experiment", variant="stop", scale=0, min_width=180,
                                                elem_id="archive-experiment")
                    dash_access = gr.Checkbox(label="Raters may see this experiment's dashboard (its plots can bias their "
                                                    "ratings)", value=False, elem_id="dashboard-access")
                ui_compare.build_rollback(services, exp_state, lambda request: _admin(services, request), _shown,
                                          private=private)
                with gr.Accordion("Export", open=False):
                    with gr.Row():
                        x_round = gr.Number(label="Round (for a LoRA)", value=1, precision=0, minimum=0, scale=0, min_width=160)
                        x_format = gr.Dropdown(label="Format", choices=list(EXPORT_FORMATS), value="diffusers", scale=0,
                                               min_width=200)
                        x_build = gr.Button("Build export", variant="primary", scale=0, min_width=160, elem_id="build-export")
                    x_link = gr.HTML(elem_id="export-link")
                    exports_df = gr.Dataframe(headers=["id", "format", "round", "file", "size", "built", "download"], value=[],
                                              interactive=False, elem_id="exports-table")
                ui_pairs.build_admin(services, exp_state, lambda request: _admin(services, request), _shown,
                                     private=private)  # issue 14 item 1: scores, pairs or both
                ui_options.build_admin(services, exp_state, lambda request: _admin(services, request), _shown,
                                       private=private)  # issue 12 items 3 and 5: selection, auto-close
                with gr.Accordion("Rater quality", open=False):  # issue 14, item 2 (app.ui_quality)
                    q_summary = gr.HTML(elem_id="rater-quality")
                    q_table = gr.Dataframe(headers=ui_quality.RATER_HEADERS, value=[], interactive=False,
                                           elem_id="rater-quality-table")
                    q_standardize = gr.Checkbox(label="Standardise each rater's scores (z-score per rater) before the "
                                                      "reward fit", value=False, elem_id="standardize-scores")
                    with gr.Row():
                        q_gold_image = gr.Textbox(label="Gold item: image id", scale=0, min_width=160, elem_id="gold-image")
                        q_gold_score = gr.Textbox(label="Known score 1-10 (empty: not gold)", scale=0, min_width=220,
                                                  elem_id="gold-score")
                        q_gold_btn = gr.Button("Set gold item", scale=0, min_width=160, elem_id="set-gold")
                        q_refresh = gr.Button("Refresh", scale=0, min_width=120, elem_id="quality-refresh")
                admin_timer = gr.Timer(services.dashboard_refresh_s)
                defaults = ui_admin.preset_defaults("shapes")
                with gr.Accordion("New experiment", open=False):
                    with gr.Row():
                        f_name = gr.Textbox(label="Name", placeholder="e.g. shapes-ucb-1")
                        f_preset = gr.Dropdown(label="Preset", choices=sorted(PRESETS), value="shapes")
                        f_model = gr.Textbox(label="Model (local diffusers dir or hub id)", placeholder=services.settings.model)
                    with gr.Row():
                        f_method = gr.Dropdown(label="Method", choices=list(METHODS), value=defaults["method"])
                        f_aggregation = gr.Dropdown(label="Optimism aggregation",
                                                    choices=[ui_admin.METHOD_DEFAULT, *ui_admin.AGGREGATIONS],
                                                    value=ui_admin.METHOD_DEFAULT)
                        f_kl = gr.Number(label="KL weight", value=defaults["kl_weight"], minimum=0)
                        f_overlap = gr.Number(label="Ratings per image (overlap)", value=1, minimum=1, precision=0)
                    f_budgets = gr.Textbox(label="Labels per round (budgets)", value=defaults["budgets"])
                    f_prompts = gr.Textbox(label="Prompts (one per line)", lines=6, value=defaults["prompts"])
                    create_btn = gr.Button("Create experiment", variant="primary")
                with gr.Accordion("Users", open=False):
                    users_df = gr.Dataframe(headers=ui_admin.USERS_HEADERS, value=[], interactive=False, elem_id="users-table")
                    with gr.Row():
                        u_name = gr.Textbox(label="Name")
                        u_role = gr.Radio(label="Role", choices=["rater", "admin"], value="rater")
                        u_password = gr.Textbox(label="Password (8+ characters)", type="password")
                    add_user_btn = gr.Button("Add user")
                    gr.Markdown("Manage an account: disabling signs it out everywhere (its ratings stay); a new password "
                                "ends its sessions; an account with ratings cannot be deleted (disable it instead).")
                    with gr.Row():
                        m_name = gr.Dropdown(label="Account", choices=[], value=None, allow_custom_value=True,
                                             elem_id="manage-account")
                        m_role = gr.Radio(label="New role", choices=["rater", "admin"], value="rater")
                        m_password = gr.Textbox(label="New password (8+ characters)", type="password")
                    with gr.Row():
                        m_disable_btn = gr.Button("Disable", scale=0, min_width=120, elem_id="user-disable")
                        m_enable_btn = gr.Button("Enable", scale=0, min_width=120, elem_id="user-enable")
                        m_role_btn = gr.Button("Set role", scale=0, min_width=120, elem_id="user-role")
                        m_password_btn = gr.Button("Set password", scale=0, min_width=140, elem_id="user-password")
                        m_delete_btn = gr.Button("Delete", variant="stop", scale=0, min_width=120, elem_id="user-delete")
                with gr.Accordion("Audit log", open=False):
                    audit_df = gr.Dataframe(headers=ui_admin.AUDIT_HEADERS, value=[], interactive=False, wrap=True,
                                            elem_id="audit-log")

        # ---- page load ---------------------------------------------------------------------

        def on_load(state, request: gr.Request):
            who = _who(services, request)
            choices = ui_admin.experiment_choices(factory)
            view = ui_rate.load_batch(factory, data_dir, who, state, batch_size=size)
            exp_id = view.state["experiment_id"]
            return (banner_html(services, who), gr.Dropdown(choices=choices, value=exp_id), gr.Tab(visible=who.is_admin),
                    *view_outputs(view), exp_id, gr.Tab(visible=dashboard_visible(who, exp_id)))

        def dashboard_visible(who: Who, exp_id: int | None) -> bool:
            return who.is_admin or ui_admin.raters_see_dashboard(factory, exp_id)

        load_outputs = [banner, experiment_dd, admin_tab, grid, marks, progress, rate_state, exp_state, dash_tab]
        demo.load(on_load, [rate_state], load_outputs, **private)

        # ---- rating -------------------------------------------------------------------------

        def on_rate(state, evt: gr.EventData, request: gr.Request):
            who = _who(services, request)
            return view_outputs(ui_rate.rate(factory, data_dir, who, state, event_payload(evt), batch_size=size))

        def on_skip(state, evt: gr.EventData, request: gr.Request):
            who = _who(services, request)
            return view_outputs(ui_rate.skip(factory, data_dir, who, state, event_payload(evt), batch_size=size))

        def on_undo(state, request: gr.Request):
            who = _who(services, request)
            return view_outputs(ui_rate.undo(factory, data_dir, who, state, batch_size=size))

        def on_new_batch(state, request: gr.Request):
            who = _who(services, request)
            return view_outputs(ui_rate.load_batch(factory, data_dir, who, state, batch_size=size))

        def on_rate_poll(state, request: gr.Request):
            who = _who(services, request)
            view = ui_rate.poll(factory, data_dir, who, state, batch_size=size)
            return gr.skip() if view is None else view_outputs(view)

        rate_outputs = [grid, marks, progress, rate_state]
        quick = {**private, "show_progress": "hidden", "trigger_mode": "multiple", "concurrency_id": "rating",
                 "concurrency_limit": 4}
        grid.rate(on_rate, [rate_state], rate_outputs, **quick)
        grid.skip(on_skip, [rate_state], rate_outputs, **quick)
        grid.undo(on_undo, [rate_state], rate_outputs, **quick)
        undo_btn.click(on_undo, [rate_state], rate_outputs, **quick)
        new_batch_btn.click(on_new_batch, [rate_state], rate_outputs, **private)
        rate_timer.tick(on_rate_poll, [rate_state], rate_outputs, show_progress="hidden", **private)

        # ---- experiment selector ------------------------------------------------------------

        def on_experiment(exp_id, state, request: gr.Request):
            who = _who(services, request)
            if exp_id is None:
                return gr.skip()
            view = _shown(lambda: ui_rate.load_batch(factory, data_dir, who, state, batch_size=size,
                                                     experiment_id=int(exp_id)))
            return (*view_outputs(view), int(exp_id), {}, ui_admin.round_status_html(factory, int(exp_id)),
                    gr.Tab(visible=dashboard_visible(who, int(exp_id))))

        experiment_dd.input(on_experiment, [experiment_dd, rate_state],
                            [*rate_outputs, exp_state, dash_state, admin_status, dash_tab], **private)

        # ---- dashboard ----------------------------------------------------------------------

        def on_dashboard(exp_id, seen, request: gr.Request):
            who = _who(services, request)
            if not dashboard_visible(who, exp_id):  # checked here, not only by hiding the tab
                return (ui_dashboard.NOT_FOR_RATERS, "", [], gr.skip(), "", {})
            d = ui_dashboard.load(factory, exp_id)
            seen = dict(seen or {})
            fig = gr.skip()
            if d.rows_key != seen.get("rows"):
                fig = ui_dashboard.figure(d.rows)
                seen["rows"] = d.rows_key
            grid_html = gr.skip()
            if d.experiment_id is not None and d.grid_key != seen.get("grid"):
                grid_html = ui_dashboard.grid(factory, d.experiment_id, data_dir)
                seen["grid"] = d.grid_key
            return d.summary, d.worker, d.table, fig, grid_html, seen

        dash_outputs = [summary, worker, rounds_table, plot, eval_grid, dash_state]

        def on_taste(exp_id, seen_key, request: gr.Request):
            who = _who(services, request)
            if not dashboard_visible(who, exp_id):  # checked here, not only by hiding the tab
                return gr.skip(), ""
            return ui_taste.plot_update(factory, exp_id, seen_key)

        dash_timer.tick(on_taste, [exp_state, taste_state], [taste_plot, taste_state], show_progress="hidden", **private)
        dash_tab.select(on_taste, [exp_state, taste_state], [taste_plot, taste_state], **private)
        dash_timer.tick(on_dashboard, [exp_state, dash_state], dash_outputs, show_progress="hidden", **private)
        dash_tab.select(on_dashboard, [exp_state, dash_state], dash_outputs, **private)

        # ---- admin --------------------------------------------------------------------------

        def on_admin_tab(exp_id, request: gr.Request):
            who = _admin(services, request)
            return (ui_admin.round_status_html(factory, exp_id), _shown(lambda: ui_admin.users_table(factory, who)),
                    ui_admin.jobs_table(factory, who, exp_id), ui_admin.raters_see_dashboard(factory, exp_id),
                    ui_export.exports_table(factory, who, exp_id))

        admin_tab.select(on_admin_tab, [exp_state], [admin_status, users_df, jobs_df, dash_access, exports_df], **private)

        def on_admin_timer(exp_id, request: gr.Request):
            who = _who(services, request)
            if not who.is_admin:
                return gr.skip(), gr.skip()
            return ui_admin.round_status_html(factory, exp_id), ui_admin.jobs_table(factory, who, exp_id)

        admin_timer.tick(on_admin_timer, [exp_state], [admin_status, jobs_df], show_progress="hidden", **private)

        def after_change(message: str, exp_id: int | None):
            gr.Info(message)
            return message, ui_admin.round_status_html(factory, exp_id)

        # asking first: the first click only shows the question with a "Yes" button for exactly that action
        def ask(question: str, pending: dict, yes: str):
            return gr.Row(visible=True), f"**{question}**", pending, gr.Button(yes)

        def on_close(exp_id, request: gr.Request):
            who = _admin(services, request)
            question, index = _shown(lambda: ui_admin.close_question(factory, who, exp_id))
            return ask(question, {"action": "close", "experiment_id": exp_id, "round": index},
                       f"Yes, close round {index} and train")

        def on_finish_ask(exp_id, request: gr.Request):
            who = _admin(services, request)
            return ask(_shown(lambda: ui_admin.finish_question(factory, who, exp_id)),
                       {"action": "finish", "experiment_id": exp_id}, "Yes, finish it")

        def on_archive_ask(exp_id, request: gr.Request):
            who = _admin(services, request)
            return ask(_shown(lambda: ui_admin.finish_question(factory, who, exp_id, archive=True)),
                       {"action": "archive", "experiment_id": exp_id}, "Yes, finish and archive it")

        def on_confirm(pending, exp_id, request: gr.Request):
            who = _admin(services, request)
            if not pending or pending.get("experiment_id") != exp_id:
                raise gr.Error("There is nothing to confirm for this experiment; press the button again.")
            action = pending["action"]
            if action == "close":
                message = _shown(lambda: ui_admin.close_round(factory, who, exp_id, expected_index=pending["round"]))
            else:
                message = _shown(lambda: ui_admin.finish_experiment(factory, who, exp_id, archive=action == "archive"))
            gr.Info(message)
            choices = ui_admin.experiment_choices(factory)
            return (message, ui_admin.round_status_html(factory, exp_id), ui_admin.jobs_table(factory, who, exp_id),
                    gr.Row(visible=False), None, gr.Dropdown(choices=choices))

        def on_cancel(request: gr.Request):
            _admin(services, request)
            return gr.Row(visible=False), None

        def on_retry(exp_id, job_id, request: gr.Request):
            who = _admin(services, request)
            message, status = after_change(_shown(lambda: ui_admin.retry_job(factory, who, exp_id, job_id)), exp_id)
            return message, status, ui_admin.jobs_table(factory, who, exp_id), ""

        def on_reopen(exp_id, request: gr.Request):
            who = _admin(services, request)
            message, status = after_change(_shown(lambda: ui_admin.reopen_round(factory, who, exp_id)), exp_id)
            return message, status, ui_admin.jobs_table(factory, who, exp_id)

        def on_dash_access(exp_id, allowed, request: gr.Request):
            who = _admin(services, request)
            message = _shown(lambda: ui_admin.set_dashboard_access(factory, who, exp_id, bool(allowed)))
            gr.Info(message)
            return message

        def on_build_export(exp_id, round_index, fmt, request: gr.Request):
            who = _admin(services, request)
            built = _shown(lambda: ui_export.build(factory, services.settings, who, exp_id, round_index, fmt))
            gr.Info(built.message())
            return built.message(), built.link_html(), ui_export.exports_table(factory, who, exp_id)

        close_btn.click(on_close, [exp_state], [confirm_row, confirm_text, pending_state, confirm_btn], **private)
        finish_btn.click(on_finish_ask, [exp_state], [confirm_row, confirm_text, pending_state, confirm_btn], **private)
        archive_btn.click(on_archive_ask, [exp_state], [confirm_row, confirm_text, pending_state, confirm_btn], **private)
        confirm_btn.click(on_confirm, [pending_state, exp_state],
                          [admin_result, admin_status, jobs_df, confirm_row, pending_state, experiment_dd], **private)
        cancel_btn.click(on_cancel, None, [confirm_row, pending_state], **private)
        retry_btn.click(on_retry, [exp_state, retry_id], [admin_result, admin_status, jobs_df, retry_id], **private)
        reopen_btn.click(on_reopen, [exp_state], [admin_result, admin_status, jobs_df], **private)
        dash_access.input(on_dash_access, [exp_state, dash_access], [admin_result], **private)
        x_build.click(on_build_export, [exp_state, x_round, x_format], [admin_result, x_link, exports_df],
                      concurrency_limit=1, concurrency_id="export", **private)

        def on_pause(exp_id, request: gr.Request):
            who = _admin(services, request)
            return after_change(_shown(lambda: ui_admin.set_paused(factory, who, exp_id, True)), exp_id)

        def on_resume(exp_id, request: gr.Request):
            who = _admin(services, request)
            return after_change(_shown(lambda: ui_admin.set_paused(factory, who, exp_id, False)), exp_id)

        pause_btn.click(on_pause, [exp_state], [admin_result, admin_status], **private)
        resume_btn.click(on_resume, [exp_state], [admin_result, admin_status], **private)

        def on_preset(name, request: gr.Request):
            _admin(services, request)
            d = _shown(lambda: ui_admin.preset_defaults(name))
            return d["method"], d["budgets"], d["prompts"], ui_admin.METHOD_DEFAULT, d["kl_weight"]

        f_preset.change(on_preset, [f_preset], [f_method, f_budgets, f_prompts, f_aggregation, f_kl], **private)

        def on_create(name, preset_name, model, method, aggregation, kl, overlap, budgets, prompts, request: gr.Request):
            who = _admin(services, request)
            form = ui_admin.ExperimentForm(name=name, preset=preset_name, model=model, method=method, budgets=budgets,
                                           prompts=prompts, aggregation=aggregation, kl_weight=kl, overlap=overlap)
            message = _shown(lambda: ui_admin.create_experiment(factory, who, form, default_model=services.settings.model))
            gr.Info(message)
            choices = ui_admin.experiment_choices(factory)
            new_id = choices[0][1]
            return message, gr.Dropdown(choices=choices, value=new_id), new_id, ui_admin.round_status_html(factory, new_id)

        create_btn.click(on_create, [f_name, f_preset, f_model, f_method, f_aggregation, f_kl, f_overlap, f_budgets, f_prompts],
                         [admin_result, experiment_dd, exp_state, admin_status], **private)

        def on_add_user(name, role, password, request: gr.Request):
            who = _admin(services, request)
            message = _shown(lambda: ui_admin.add_user(factory, who, name, role, password))
            gr.Info(message)
            return message, ui_admin.users_table(factory, who), ""

        add_user_event = add_user_btn.click(on_add_user, [u_name, u_role, u_password], [admin_result, users_df, u_password],
                                            **private)

        # ---- accounts and the audit log -----------------------------------------------------

        def accounts_view(who: Who) -> tuple:
            names = ui_admin.user_names(factory, who)
            return ui_admin.users_table(factory, who), gr.Dropdown(choices=names), ui_admin.audit_table(factory, who)

        def on_admin_accounts(request: gr.Request):
            return accounts_view(_admin(services, request))

        admin_tab.select(on_admin_accounts, None, [users_df, m_name, audit_df], **private)
        add_user_event.then(on_admin_accounts, None, [users_df, m_name, audit_df], **private)

        def account_change(request: gr.Request, change: Callable[[Who], str]) -> tuple:
            who = _admin(services, request)
            message = _shown(lambda: change(who))
            gr.Info(message)
            return (message, *accounts_view(who), "")

        account_outputs = [admin_result, users_df, m_name, audit_df, m_password]

        def on_user_disable(name, request: gr.Request):
            return account_change(request, lambda who: ui_admin.disable_user(factory, who, name))

        def on_user_enable(name, request: gr.Request):
            return account_change(request, lambda who: ui_admin.enable_user(factory, who, name))

        def on_user_delete(name, request: gr.Request):
            return account_change(request, lambda who: ui_admin.delete_user(factory, who, name))

        def on_user_role(name, role, request: gr.Request):
            return account_change(request, lambda who: ui_admin.set_user_role(factory, who, name, role))

        def on_user_password(name, password, request: gr.Request):
            return account_change(request, lambda who: ui_admin.set_user_password(factory, who, name, password))

        m_disable_btn.click(on_user_disable, [m_name], account_outputs, **private)
        m_enable_btn.click(on_user_enable, [m_name], account_outputs, **private)
        m_delete_btn.click(on_user_delete, [m_name], account_outputs, **private)
        m_role_btn.click(on_user_role, [m_name, m_role], account_outputs, **private)
        m_password_btn.click(on_user_password, [m_name, m_password], account_outputs, **private)

        # ---- rater quality (issue 14, item 2) ------------------------------------------------

        def on_quality(exp_id, request: gr.Request):
            who = _admin(services, request)
            summary_html, rows = _shown(lambda: ui_quality.report(factory, who, exp_id))
            return summary_html, rows, ui_quality.standardize_enabled(factory, exp_id)

        def on_standardize(exp_id, enabled, request: gr.Request):
            who = _admin(services, request)
            message = _shown(lambda: ui_quality.set_standardize(factory, who, exp_id, bool(enabled)))
            gr.Info(message)
            return message

        def on_gold(exp_id, image_id, score, request: gr.Request):
            who = _admin(services, request)
            message = _shown(lambda: ui_quality.set_gold(factory, who, exp_id, image_id, score))
            gr.Info(message)
            return (message, *_shown(lambda: ui_quality.report(factory, who, exp_id)))

        quality_outputs = [q_summary, q_table, q_standardize]
        admin_tab.select(on_quality, [exp_state], quality_outputs, **private)
        q_refresh.click(on_quality, [exp_state], quality_outputs, **private)
        q_standardize.input(on_standardize, [exp_state, q_standardize], [admin_result], **private)
        q_gold_btn.click(on_gold, [exp_state, q_gold_image, q_gold_score], [admin_result, q_summary, q_table], **private)

        # ---- the public API -----------------------------------------------------------------

        def next_batch(limit: int = 8, experiment: str = "", request: gr.Request = None) -> dict:
            """Get the next images for you to rate (the open round of an experiment).

            An image is offered to you until you rate it (or skip it on the web page); images other
            raters have already rated as often as the experiment wants (its overlap) are not offered.

            Parameters:
                limit: how many images to return, from 1 to 64.
                experiment: the experiment's name; empty for the experiment now being labeled.
            Returns:
                A dict with "experiment", "round", "message", "progress" (round and personal counts) and
                "items": a list of {"image_id", "prompt", "seed", "png_base64"} (the PNG file, base64).
            """
            who = _who(services, request)
            return _shown(lambda: ui_rate.api_batch(factory, data_dir, who, limit=limit, experiment=experiment))

        def submit_rating(image_id: int, score: int, request: gr.Request = None) -> dict:
            """Rate one image from 1 (worst) to 10 (best); saved at once, durable when this call returns.

            Rating an image you rated before changes your score (an edit). Refused, changing nothing:
            a score outside 1-10, an unknown image, an image of a round closed for labeling, and an
            image not offered to you (other raters already gave it the ratings it needs, or you skipped it).

            Parameters:
                image_id: the "image_id" of an item from next_batch.
                score: a whole number from 1 to 10.
            Returns:
                A dict with "image_id", "score", "previous_score" (None for a new rating), "edited" and "progress".
            """
            who = _who(services, request)
            return _shown(lambda: ui_rate.submit(factory, who, image_id, score))

        gr.api(next_batch, api_name="next_batch", concurrency_limit=4, concurrency_id="api_read")
        gr.api(submit_rating, api_name="submit_rating", concurrency_limit=4, concurrency_id="rating")

    return demo
