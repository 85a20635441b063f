"""The Admin tab: ``build(...)`` lays it out and wires its events; its handlers are the methods of ``AdminHandlers``.

Every handler first finds who is asking and refuses anyone but an admin (``admin_of(request)`` raises gr.Error;
the ``app.ui_admin`` / ``app.ui_export`` / ``app.ui_quality`` functions they call check the role again and write the
audit log). Each such handler is marked ``@admin_only`` (``app.gradio_routes``), so that the front door refuses its
event for a rater before Gradio checks its values. The handlers only turn those functions' results and refusals into
Gradio outputs. They are looked up by name in tests (``demo.fns``), so keep their names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import members, ui_account, ui_admin, ui_compare, ui_export, ui_options, ui_pairs, ui_quality, web_guard
from app.auth import Who
from app.gradio_routes import admin_only
from app.rater_page import admin_only_layout
from app.ui_assets import NOT_ADMIN_KNOWN, QUIET_ADMIN_JS
from db.models import EXPORT_FORMATS
from seiko_core.config import MAX_EPOCHS, MAX_KL_WEIGHT, MAX_SECONDS, METHODS
from seiko_core.models import public_name
from seiko_core.presets import PRESETS

# next to the dashboard-access checkbox: the Compare tab's A/B is blind only while raters cannot see the dashboard, whose
# eval grid shows each round's images under their round (docs/ab-and-rollback.md; fifth review, 5 Dec 2026)
BLIND_AB_NOTE = ("Keep this off for a blind A/B: the dashboard shows which round's images are which, so a rater who "
                 "sees it can tell the Compare tab's sides apart.")


class AdminHandlers:
    """The Admin tab's event handlers. ``who_of(request)`` / ``admin_of(request)`` find the signed-in rater (gr.Error
    when refused; ``admin_of`` also refuses a rater), ``shown(fn)`` turns a refusal into a gr.Error."""

    def __init__(self, services, who_of: Callable[[Any], Who], admin_of: Callable[[Any], Who],
                 shown: Callable[[Callable[[], Any]], Any], picks: Any = None):
        self.services, self.factory = services, services.factory
        self.who_of, self.admin_of, self.shown = who_of, admin_of, shown
        self.picks = picks  # the experiment each browser session last picked (app.ui_rate_tab.Picks), or None

    # ---- the tab and its timer ------------------------------------------------------------

    @admin_only
    def on_admin_tab(self, exp_id, request: gr.Request):
        """The tab selected: its tables, for an admin only (its timer is started in the browser:
        ``timer_while_selected``)."""
        who = self.admin_of(request)
        factory = self.factory
        return (ui_admin.round_status_html(factory, exp_id), self.shown(lambda: ui_admin.users_table(factory, who)),
                ui_admin.jobs_table(factory, who, exp_id), ui_admin.raters_see_dashboard(factory, exp_id),
                ui_export.exports_table(factory, who, exp_id))

    @admin_only
    def on_admin_experiment(self, exp_id, request: gr.Request):
        """Another experiment selected (or the page loaded): the tab's settings of the experiment show that one's
        (dashboard access, jobs, exports, rater quality, standardising, and the round's status); they showed the
        previous one's until the tab was selected again, and a checkbox then wrote the value shown onto the new
        experiment (found by review). To an admin only: a rater's page has no Admin tab (``app.rater_page``), and the
        event sent by hand is refused (it ran and answered a skip; fifteenth review). The round's status was the
        experiment selector's output (``app.ui``), which is every page's event, so a rater's page config listed the
        Admin tab's status (fourteenth review)."""
        who = self.admin_of(request)
        factory = self.factory
        return (ui_admin.raters_see_dashboard(factory, exp_id), ui_admin.jobs_table(factory, who, exp_id),
                ui_export.exports_table(factory, who, exp_id), "", *self._quality(who, exp_id),
                ui_admin.round_status_html(factory, exp_id))

    def _quality(self, who: Who, exp_id):
        """(the rater-quality summary, its rows, whether scores are standardised) of experiment ``exp_id``."""
        summary_html, rows = self.shown(lambda: ui_quality.report(self.factory, who, exp_id))
        return summary_html, rows, ui_quality.standardize_enabled(self.factory, exp_id)

    @admin_only
    def on_admin_timer(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        return ui_admin.round_status_html(self.factory, exp_id), ui_admin.jobs_table(self.factory, who, exp_id)

    def _after_change(self, message: str, exp_id: int | None):
        gr.Info(message)
        return message, ui_admin.round_status_html(self.factory, exp_id)

    # ---- asking first: the first click only shows the question with a "Yes" button for exactly that action

    @staticmethod
    def _ask(question: str, pending: dict, yes: str):
        return gr.Row(visible=True), f"**{question}**", pending, gr.Button(yes)

    # Each question names the experiment it resolved (the selected one, or with none selected the default the page
    # shows), and the confirmation acts on that one: it resolved the default again, so when another experiment had
    # become the default meanwhile, "Finish 'b-exp'?" confirmed finished another (found by review).
    def _target(self, exp_id) -> int:
        return self.shown(lambda: ui_admin.selected_experiment(self.factory, exp_id))

    @admin_only
    def on_close(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        target = self._target(exp_id)
        question, index = self.shown(lambda: ui_admin.close_question(self.factory, who, target))
        return self._ask(question, {"action": "close", "experiment_id": exp_id, "target": target, "round": index},
                         f"Yes, close round {index} and train")

    @admin_only
    def on_finish_ask(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        target = self._target(exp_id)
        return self._ask(self.shown(lambda: ui_admin.finish_question(self.factory, who, target)),
                         {"action": "finish", "experiment_id": exp_id, "target": target}, "Yes, finish it")

    @admin_only
    def on_archive_ask(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        target = self._target(exp_id)
        return self._ask(self.shown(lambda: ui_admin.finish_question(self.factory, who, target, archive=True)),
                         {"action": "archive", "experiment_id": exp_id, "target": target}, "Yes, finish and archive it")

    @admin_only
    def on_stop_ask(self, exp_id, job_id, request: gr.Request):
        who = self.admin_of(request)
        target = self._target(exp_id)
        question, (jid, worker) = self.shown(lambda: ui_admin.stop_question(self.factory, who, target, job_id))
        return self._ask(question, {"action": "stop", "experiment_id": exp_id, "target": target, "job_id": jid,
                                    "worker": worker}, f"Yes, stop job {jid}")

    @admin_only
    def on_confirm(self, pending, exp_id, request: gr.Request):
        who = self.admin_of(request)
        factory = self.factory
        if not pending or pending.get("experiment_id") != exp_id or not isinstance(pending.get("target"), int):
            raise gr.Error("There is nothing to confirm for this experiment; press the button again.", print_exception=False)
        action, target = pending["action"], pending["target"]
        if action == "close":
            message = self.shown(lambda: ui_admin.close_round(factory, who, target, expected_index=pending["round"]))
        elif action == "stop":
            message = self.shown(lambda: ui_admin.stop_job(factory, who, target, pending["job_id"],
                                                           expected_worker=pending.get("worker")))
        else:
            message = self.shown(lambda: ui_admin.finish_experiment(factory, who, target, archive=action == "archive"))
        gr.Info(message)
        choices = ui_admin.experiment_choices(factory)
        return (message, ui_admin.round_status_html(factory, target), ui_admin.jobs_table(factory, who, target),
                gr.Row(visible=False), None, gr.Dropdown(choices=choices))

    @admin_only
    def on_cancel(self, request: gr.Request):
        self.admin_of(request)
        return gr.Row(visible=False), None

    # ---- recovery, dashboard access, export, pause ------------------------------------------

    @admin_only
    def on_retry(self, exp_id, job_id, request: gr.Request):
        who = self.admin_of(request)
        message, status = self._after_change(self.shown(lambda: ui_admin.retry_job(self.factory, who, exp_id, job_id)),
                                             exp_id)
        return message, status, ui_admin.jobs_table(self.factory, who, exp_id), ""

    @admin_only
    def on_reopen(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        message, status = self._after_change(self.shown(lambda: ui_admin.reopen_round(self.factory, who, exp_id)), exp_id)
        return message, status, ui_admin.jobs_table(self.factory, who, exp_id)

    @admin_only
    def on_dash_access(self, exp_id, allowed, request: gr.Request):
        who = self.admin_of(request)
        message = self.shown(lambda: ui_admin.set_dashboard_access(self.factory, who, exp_id, bool(allowed)))
        gr.Info(message)
        return message

    @admin_only
    def on_set_raters(self, exp_id, text, shown_for, request: gr.Request):
        """Who may rate the experiment: ``everyone`` (or empty), ``admins`` (only admins), or account names separated
        by commas (``app.members``; audit-logged). ``shown_for``: the experiment the field was filled for
        (``on_show_raters``); a field filled for another one is not saved onto this one."""
        who = self.admin_of(request)
        target = self._target(exp_id)
        if shown_for != target:
            # the field still showed another experiment's raters (its refill not sent or not yet answered): saving it
            # replaced this experiment's raters with that list (found by a read-only review, 7 Dec 2026)
            message = "The field showed another experiment's raters; it shows this one's now: check them and set again."
            gr.Warning(message)
            return message, members.raters_text(self.factory, target), target
        message = self.shown(lambda: members.set_raters(self.factory, who, target, members.parse_names(text)))
        gr.Info(message)
        return message, members.raters_text(self.factory, target), target

    @admin_only
    def on_show_raters(self, exp_id, request: gr.Request):
        """The raters field of the selected experiment, and that experiment (``on_set_raters``' ``shown_for``); to an
        admin only (a rater's page has no Admin tab, and the event sent by hand is refused)."""
        self.admin_of(request)
        target = self.shown(lambda: ui_admin.resolved_or_none(self.factory, exp_id))
        return self.shown(lambda: members.raters_text(self.factory, target)), target

    @admin_only
    def on_build_export(self, exp_id, round_index, fmt, request: gr.Request):
        who = self.admin_of(request)
        built = self.shown(lambda: ui_export.build(self.factory, self.services.settings, who, exp_id, round_index, fmt))
        gr.Info(built.message())
        return built.message(), built.link_html(), ui_export.exports_table(self.factory, who, exp_id)

    @admin_only
    def on_pause(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        return self._after_change(self.shown(lambda: ui_admin.set_paused(self.factory, who, exp_id, True)), exp_id)

    @admin_only
    def on_resume(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        return self._after_change(self.shown(lambda: ui_admin.set_paused(self.factory, who, exp_id, False)), exp_id)

    # ---- new experiment -------------------------------------------------------------------

    @admin_only
    def on_preset(self, name, request: gr.Request):
        self.admin_of(request)
        d = self.shown(lambda: ui_admin.preset_defaults(name))
        return (d["method"], d["budgets"], d["prompts"], ui_admin.METHOD_DEFAULT, d["kl_weight"], d["epochs"],
                d["max_seconds"])

    @admin_only
    def on_create(self, name, preset_name, model, method, aggregation, kl, overlap, budgets, prompts, epochs=None,
                  max_seconds=None, request: gr.Request = None):
        who = self.admin_of(request)
        form = ui_admin.ExperimentForm(name=name, preset=preset_name, model=model, method=method, budgets=budgets,
                                       prompts=prompts, aggregation=aggregation, kl_weight=kl, overlap=overlap,
                                       epochs=epochs, max_seconds=max_seconds)
        message, new_id = self.shown(lambda: ui_admin.create_experiment_with_id(
            self.factory, who, form, default_model=self.services.settings.model))
        gr.Info(message)
        # the one just made: the newest of the list was another admin's when two created at once (found by review)
        choices = ui_admin.experiment_choices(self.factory)
        if self.picks is not None:  # the selector now shows the new experiment (the Rate tab stays where it was)
            self.picks.pick(request, shown=new_id)
        return message, gr.Dropdown(choices=choices, value=new_id), new_id, ui_admin.round_status_html(self.factory, new_id)

    # ---- accounts and the audit log -------------------------------------------------------

    @admin_only
    def on_add_user(self, name, role, password, request: gr.Request):
        who = self.admin_of(request)
        message = self.shown(lambda: ui_admin.add_user(self.factory, who, name, role, password))
        gr.Info(message)
        return message, ui_admin.users_table(self.factory, who), ""

    def _accounts_view(self, who: Who) -> tuple:
        names = ui_admin.user_names(self.factory, who)
        return ui_admin.users_table(self.factory, who), gr.Dropdown(choices=names), ui_admin.audit_table(self.factory, who)

    @admin_only
    def on_admin_accounts(self, request: gr.Request):
        return self._accounts_view(self.admin_of(request))

    def _account_change(self, request: gr.Request, change: Callable[[Who], str]) -> tuple:
        who = self.admin_of(request)
        message = self.shown(lambda: change(who))
        gr.Info(message)
        return (message, *self._accounts_view(who), "")

    @admin_only
    def on_user_disable(self, name, request: gr.Request):
        return self._account_change(request, lambda who: ui_admin.disable_user(self.factory, who, name))

    @admin_only
    def on_user_enable(self, name, request: gr.Request):
        return self._account_change(request, lambda who: ui_admin.enable_user(self.factory, who, name))

    @admin_only
    def on_user_delete(self, name, request: gr.Request):
        return self._account_change(request, lambda who: ui_admin.delete_user(self.factory, who, name))

    @admin_only
    def on_user_role(self, name, role, request: gr.Request):
        return self._account_change(request, lambda who: ui_admin.set_user_role(self.factory, who, name, role))

    @admin_only
    def on_user_password(self, name, password, your_password=None, repeat=None, request: gr.Request = None):
        """Set an account's password, the acting admin's own password given in "Your password" (checked and counted
        as a sign-in by the web guard's throttle, from the request's address). A "Repeat new password" that differs
        from the new one is refused before anything else (``ui_account.check_repeated``: no guess counted). The
        password boxes are emptied once it is set; a refusal (gr.Error) leaves them as typed.

        The last output says whether the admin set their OWN password: then every session of theirs has ended, this
        page's too, so the sentence is the Account tab's (its "sign in again" a link to the sign-in page) and the page
        goes there (``build``: ``ui_account.SIGN_IN_AGAIN_JS``). The Admin tab left the page signed out where it was,
        each next action refused (thirteenth review, 6 Dec 2026)."""
        who = self.admin_of(request)  # once: the session ends with an own password change
        message = self.shown(lambda: self._set_password(who, name, password, repeat, your_password, request))
        own = isinstance(name, str) and name.strip() == who.name  # the account set_password changed (exact name)
        gr.Info(ui_account.CHANGED if own else message)  # a toast shows no link
        return (ui_account.CHANGED_SIGN_IN if own else message, *self._accounts_view(who), "", "", "", own)

    def _set_password(self, who: Who, name, password, repeat, your_password, request: gr.Request) -> str:
        ui_account.check_repeated(password, repeat)  # first: a typing slip costs no guess
        return ui_admin.set_user_password(self.factory, who, name, password, your_password,
                                          throttle=web_guard.sign_in_throttle(request),
                                          ip=web_guard.client_address(request),
                                          session=web_guard.signed_in_session(request))

    # ---- rater quality (issue 14, item 2) -----------------------------------------------------

    @admin_only
    def on_quality(self, exp_id, request: gr.Request):
        who = self.admin_of(request)
        return self._quality(who, exp_id)

    @admin_only
    def on_standardize(self, exp_id, enabled, request: gr.Request):
        who = self.admin_of(request)
        message = self.shown(lambda: ui_quality.set_standardize(self.factory, who, exp_id, bool(enabled)))
        gr.Info(message)
        return message

    @admin_only
    def on_gold(self, exp_id, image_id, score, request: gr.Request):
        who = self.admin_of(request)
        message = self.shown(lambda: ui_quality.set_gold(self.factory, who, exp_id, image_id, score))
        gr.Info(message)
        return (message, *self.shown(lambda: ui_quality.report(self.factory, who, exp_id)))


# the step after "Set password" (``build``): given whether it was the admin's own, ``ui_account.SIGN_IN_AGAIN_JS`` then
OWN_PASSWORD_SIGN_IN_JS = f"(own) => {{ if (own === true) ({ui_account.SIGN_IN_AGAIN_JS})(); }}"


@dataclass(frozen=True)
class AdminTab:
    """What the rest of the page needs from the Admin tab."""

    tab: Any  # gr.Tab: in admins' pages only (a rater's page config has none of it: app.rater_page)
    timer: Any  # gr.Timer: the tab's refresh, running only while the tab is selected (``timer_while_selected``)


# what another tab's select sets on the Admin timer, in the browser (no handler runs: a demoted admin's page, whose
# Admin events are refused, stops it all the same), and what the Admin tab's select sets
STOP_TIMER_JS = "() => ({__type__: 'update', active: false})"
START_TIMER_JS = "() => ({__type__: 'update', active: true})"
# what a failed tick of the Admin timer sets on it: stopped once the page knows its account is no longer an admin
# (``ui_assets.NOT_ADMIN_KNOWN``), else nothing (a tick that failed otherwise: the timer goes on, as before)
STOP_TIMER_IF_NOT_ADMIN_JS = (f"() => ({NOT_ADMIN_KNOWN} ? {{__type__: 'update', active: false}} "
                              ": {__type__: 'update'})")
ADMIN_TAB_ID = "tab-admin"  # the Admin tab's elem_id
# what a pick's refill of the Admin tab (answered for an admin) sets on the timer: running while the tab is shown
# (a hidden tab's element has no offsetParent; a pick made on another tab starts nothing), else nothing
START_TIMER_IF_SHOWN_JS = (f"() => ((document.getElementById('{ADMIN_TAB_ID}') || {{}}).offsetParent "
                           "? {__type__: 'update', active: true} : {__type__: 'update'})")


def timer_while_selected(tabs: Any, admin: AdminTab, private: dict[str, Any]) -> None:
    """The Admin tab's timer runs only while the tab is selected: the tab's select starts it and every other tab of
    ``tabs`` stops it, both in the browser, in the order they were clicked. It ran on every admin's page from the
    load, and an admin made a rater got a refusal every ``dashboard_refresh_s`` until the page was reloaded (a
    read-only review of the fifteenth review's fixes); started by the answer to ``on_admin_tab`` instead, it kept
    running when another tab was clicked before that answer came (a later read-only review). A rater's page has
    neither the timer nor these events (``app.rater_page``)."""
    for tab in tabs.children:
        if isinstance(tab, gr.Tab):
            tab.select(None, None, [admin.timer], js=START_TIMER_JS if tab is admin.tab else STOP_TIMER_JS, **private)


def build(services, exp_state, experiment_dd, who_of: Callable, admin_of: Callable, shown: Callable,
          private: dict[str, Any], picks: Any = None) -> AdminTab:
    """The Admin tab (call inside ``gr.Tabs()``), its events wired to an ``AdminHandlers``."""
    h = AdminHandlers(services, who_of, admin_of, shown, picks)
    # shown as it is laid out: a rater's page config leaves it out, its events with it (admin_only_layout); it was
    # hidden and shown to admins by the page load, whose outputs then named it in every rater's config
    with admin_only_layout(gr.Tab("Admin", id="admin", elem_id=ADMIN_TAB_ID)) as admin_tab:
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
            jobs_df = gr.Dataframe(headers=ui_admin.JOBS_HEADERS, value=[],
                                   interactive=False, wrap=True, elem_id="jobs-table")
            with gr.Row():
                retry_id = gr.Textbox(label="Job id (empty: the newest failed job, or the running one)", value="",
                                      scale=0, min_width=220, elem_id="retry-job-id")
                retry_btn = gr.Button("Retry failed job", scale=0, min_width=180, elem_id="retry-job")
                stop_btn = gr.Button("Stop running job", variant="stop", scale=0, min_width=180, elem_id="stop-job")
                reopen_btn = gr.Button("Reopen round for labeling", scale=0, min_width=220, elem_id="reopen-round")
                finish_btn = gr.Button("Finish experiment", variant="stop", scale=0, min_width=180,
                                       elem_id="finish-experiment")
                archive_btn = gr.Button("Archive experiment", variant="stop", scale=0, min_width=180,
                                        elem_id="archive-experiment")
            dash_access = gr.Checkbox(label="Raters may see this experiment's dashboard (its plots can bias their "
                                            "ratings)", value=False, elem_id="dashboard-access", info=BLIND_AB_NOTE)
            with gr.Row():  # app.members: who rates this experiment (admins always may)
                raters_box = gr.Textbox(label="Raters of this experiment: 'everyone', 'admins' (only admins), or "
                                              "account names separated by commas (admins always may rate)",
                                        value=members.EVERYONE, placeholder="everyone | admins | alice, bob",
                                        elem_id="experiment-raters")
                raters_btn = gr.Button("Set raters", scale=0, min_width=140, elem_id="set-experiment-raters")
            raters_for = gr.State(None)  # the experiment raters_box was filled for (on_show_raters)
        ui_compare.build_rollback(services, exp_state, h.admin_of, h.shown,
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
        ui_pairs.build_admin(services, exp_state, h.admin_of, h.shown,
                             private=private)  # issue 14 item 1: scores, pairs or both
        ui_options.build_admin(services, exp_state, h.admin_of, h.shown,
                               private=private)  # issue 12 items 3 and 5: selection, auto-close
        with gr.Accordion("Rater quality", open=False):  # issue 14, item 2 (app.ui_quality)
            q_summary = gr.HTML(elem_id="rater-quality")
            q_table = gr.Dataframe(headers=ui_quality.RATER_HEADERS, value=[], interactive=False,
                                   elem_id="rater-quality-table")
            q_standardize = gr.Checkbox(label="Standardise each rater's scores (z-score per rater) before the "
                                              "reward fit", value=False, elem_id="standardize-scores",
                                        info="For raters who rate the same rounds, each with many ratings: it also "
                                             "removes real differences between raters who rated different rounds, "
                                             "and stretches a rater with a few close scores across the scale.")
            with gr.Row():
                q_gold_image = gr.Textbox(label="Gold item: image id", scale=0, min_width=160, elem_id="gold-image")
                q_gold_score = gr.Textbox(label="Known score 1-10 (empty: not gold)", scale=0, min_width=220,
                                          elem_id="gold-score")
                q_gold_btn = gr.Button("Set gold item", scale=0, min_width=160, elem_id="set-gold")
                q_refresh = gr.Button("Refresh", scale=0, min_width=120, elem_id="quality-refresh")
        admin_timer = gr.Timer(services.dashboard_refresh_s, active=False)  # started by the tab's select
        defaults = ui_admin.preset_defaults("shapes")
        with gr.Accordion("New experiment", open=False):
            with gr.Row():
                f_name = gr.Textbox(label="Name", placeholder="e.g. shapes-ucb-1")
                f_preset = gr.Dropdown(label="Preset", choices=sorted(PRESETS), value="shapes")
                # the default by its name: every browser got the hidden tab's config, so a path here was the
                # server's directory sent to every rater (found by review); an admin's page config still has it
                f_model = gr.Textbox(label="Model (local diffusers dir or hub id)",
                                     placeholder=f"empty: the server's default, {public_name(services.settings.model)}")
            with gr.Row():
                f_method = gr.Dropdown(label="Method", choices=list(METHODS), value=defaults["method"])
                f_aggregation = gr.Dropdown(label="Optimism aggregation",
                                            choices=[ui_admin.METHOD_DEFAULT, *ui_admin.AGGREGATIONS],
                                            value=ui_admin.METHOD_DEFAULT)
                f_kl = gr.Number(label="KL weight", value=defaults["kl_weight"], minimum=0,
                                 info=f"0 to {MAX_KL_WEIGHT:g}")
                f_overlap = gr.Number(label="Ratings per image (overlap)", value=1, minimum=1, precision=0)
            with gr.Row():
                f_epochs = gr.Number(label="Fine-tuning epochs per round", value=defaults["epochs"], minimum=1,
                                     precision=0, elem_id="new-epochs",
                                     info=f"one epoch is {defaults['steps_per_epoch']} optimiser steps on the shapes "
                                          "preset; more steps move the model further per round and take longer "
                                          f"(at most {MAX_EPOCHS:,})")
                f_max_s = gr.Number(label="Fine-tuning time limit per round, s (0 = none)", value=defaults["max_seconds"],
                                    minimum=0, elem_id="new-max-seconds",
                                    info="no step starts that would end after the limit: a slower machine then "
                                         "takes fewer steps instead of a longer wait (at most "
                                         f"{MAX_SECONDS:,} s: 7 days)")
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
                        "ends its sessions, and setting one (yours or another's) asks for your own password; an "
                        "account with ratings or votes cannot be deleted (disable it instead).")
            with gr.Row():
                m_name = gr.Dropdown(label="Account", choices=[], value=None, allow_custom_value=True,
                                     elem_id="manage-account")
                m_role = gr.Radio(label="New role", choices=["rater", "admin"], value="rater")
                m_password = gr.Textbox(label="New password (8+ characters)", type="password", elem_id="new-password")
                m_repeat_password = gr.Textbox(label="Repeat new password", type="password",
                                               elem_id="repeat-password")
                m_your_password = gr.Textbox(label="Your password (to set a password)", type="password",
                                             elem_id="your-password")
            with gr.Row():
                m_disable_btn = gr.Button("Disable", scale=0, min_width=120, elem_id="user-disable")
                m_enable_btn = gr.Button("Enable", scale=0, min_width=120, elem_id="user-enable")
                m_role_btn = gr.Button("Set role", scale=0, min_width=120, elem_id="user-role")
                m_password_btn = gr.Button("Set password", scale=0, min_width=140, elem_id="user-password")
                m_delete_btn = gr.Button("Delete", variant="stop", scale=0, min_width=120, elem_id="user-delete")
            # set by "Set password": whether it was the admin's own (then the page goes to the sign-in page)
            m_own_password_set = gr.Checkbox(value=False, visible="hidden", elem_id="own-password-set")
        with gr.Accordion("Audit log", open=False):
            audit_df = gr.Dataframe(headers=ui_admin.AUDIT_HEADERS, value=[], interactive=False, wrap=True,
                                    elem_id="audit-log")

    # the buttons and switches that change state (or ask to) run one at a time, as Gradio's default did; the events
    # that show the tab and its timer run app.ui.PAGE_CONCURRENCY at a time
    serial = {**private, "concurrency_limit": 1}
    # The events the page fires by itself (the timer's, a pick's of an experiment, and the tab's select's but
    # on_admin_tab) are not sent once one of the page's admin events was refused because its account is no longer an
    # admin (QUIET_ADMIN_JS), and a failed tick then stops the timer: an admin made a rater got a refusal every
    # dashboard_refresh_s while the tab was selected, and four more at each pick (sixteenth review, 7 Dec 2026). The
    # first refusal's toast says to reload; on_admin_tab still asks, so selecting the tab again says it once more.
    quiet = {**private, "js": QUIET_ADMIN_JS}
    # Any event of the page joined for an admin clears that flag (web_guard answers it with NOT_ADMIN_HEADER: 0), so
    # an admin made one again gets the tab's refills back at their next pick, the tab selected or not (only
    # on_admin_tab's answer cleared it, and an admin whose tab was selected had to click away and back; seventeenth
    # review, 7 Dec 2026), and a click of a tab's button starts the timer again (below)
    admin_tab.select(h.on_admin_tab, [exp_state], [admin_status, users_df, jobs_df, dash_access, exports_df], **private)
    refilled = exp_state.change(h.on_admin_experiment, [exp_state],
                                [dash_access, jobs_df, exports_df, x_link, q_summary, q_table, q_standardize,
                                 admin_status], **quiet)
    # a pick refilled for an admin starts the timer where the tab is shown: after a failed tick stopped it, an admin
    # made one again got it back only at a click of a button or the tab's select, not at a pick (eighteenth review,
    # 7 Dec 2026)
    refilled.success(None, None, [admin_timer], js=START_TIMER_IF_SHOWN_JS, **private)
    ticked = admin_timer.tick(h.on_admin_timer, [exp_state], [admin_status, jobs_df], show_progress="hidden", **quiet)
    ticked.failure(None, None, [admin_timer], js=STOP_TIMER_IF_NOT_ADMIN_JS, **private)

    confirm_outputs = [confirm_row, confirm_text, pending_state, confirm_btn]
    close_btn.click(h.on_close, [exp_state], confirm_outputs, **serial)
    finish_btn.click(h.on_finish_ask, [exp_state], confirm_outputs, **serial)
    archive_btn.click(h.on_archive_ask, [exp_state], confirm_outputs, **serial)
    stop_btn.click(h.on_stop_ask, [exp_state, retry_id], confirm_outputs, **serial)
    confirm_btn.click(h.on_confirm, [pending_state, exp_state],
                      [admin_result, admin_status, jobs_df, confirm_row, pending_state, experiment_dd], **serial)
    cancel_btn.click(h.on_cancel, None, [confirm_row, pending_state], **serial)
    retry_btn.click(h.on_retry, [exp_state, retry_id], [admin_result, admin_status, jobs_df, retry_id], **serial)
    reopen_btn.click(h.on_reopen, [exp_state], [admin_result, admin_status, jobs_df], **serial)
    dash_access.input(h.on_dash_access, [exp_state, dash_access], [admin_result], **serial)
    raters_btn.click(h.on_set_raters, [exp_state, raters_box, raters_for], [admin_result, raters_box, raters_for],
                     **serial)
    admin_tab.select(h.on_show_raters, [exp_state], [raters_box, raters_for], **quiet)
    exp_state.change(h.on_show_raters, [exp_state], [raters_box, raters_for], **quiet)
    x_build.click(h.on_build_export, [exp_state, x_round, x_format], [admin_result, x_link, exports_df],
                  concurrency_limit=1, concurrency_id="export", **private)
    pause_btn.click(h.on_pause, [exp_state], [admin_result, admin_status], **serial)
    resume_btn.click(h.on_resume, [exp_state], [admin_result, admin_status], **serial)

    f_preset.change(h.on_preset, [f_preset], [f_method, f_budgets, f_prompts, f_aggregation, f_kl, f_epochs, f_max_s],
                    **private)
    create_btn.click(h.on_create, [f_name, f_preset, f_model, f_method, f_aggregation, f_kl, f_overlap, f_budgets, f_prompts,
                                   f_epochs, f_max_s],
                     [admin_result, experiment_dd, exp_state, admin_status], **serial)

    add_user_event = add_user_btn.click(h.on_add_user, [u_name, u_role, u_password], [admin_result, users_df, u_password],
                                        **serial)
    admin_tab.select(h.on_admin_accounts, None, [users_df, m_name, audit_df], **quiet)
    add_user_event.then(h.on_admin_accounts, None, [users_df, m_name, audit_df], **private)
    account_outputs = [admin_result, users_df, m_name, audit_df, m_password]
    m_disable_btn.click(h.on_user_disable, [m_name], account_outputs, **serial)
    m_enable_btn.click(h.on_user_enable, [m_name], account_outputs, **serial)
    m_delete_btn.click(h.on_user_delete, [m_name], account_outputs, **serial)
    m_role_btn.click(h.on_user_role, [m_name, m_role], account_outputs, **serial)
    password_set = m_password_btn.click(h.on_user_password, [m_name, m_password, m_your_password, m_repeat_password],
                                        [*account_outputs, m_your_password, m_repeat_password, m_own_password_set],
                                        **serial)
    # the admin's own password: this page's session has ended, so after a moment to read the sentence the page goes
    # to the sign-in page, as the Account tab's change does
    password_set.success(None, [m_own_password_set], None, js=OWN_PASSWORD_SIGN_IN_JS, **private)

    quality_outputs = [q_summary, q_table, q_standardize]
    admin_tab.select(h.on_quality, [exp_state], quality_outputs, **quiet)
    q_refresh.click(h.on_quality, [exp_state], quality_outputs, **private)
    q_standardize.input(h.on_standardize, [exp_state, q_standardize], [admin_result], **serial)
    q_gold_btn.click(h.on_gold, [exp_state, q_gold_image, q_gold_score], [admin_result, q_summary, q_table], **serial)
    # a click of any of the tab's buttons sets its timer running, as the tab's select does (the tab is selected): only
    # a failed tick had stopped it (STOP_TIMER_IF_NOT_ADMIN_JS), and an admin made one again whose tab was selected
    # had to click away and back (seventeenth review, 7 Dec 2026). The click's own answer says whether the account
    # is an admin (web_guard: NOT_ADMIN_HEADER); if not, the next tick is not sent and stops the timer again. So does
    # a switch of its two checkboxes, each saved when switched (they started nothing: nineteenth review, 7 Dec 2026)
    gr.on([button.click for button in _buttons_in(admin_tab)] + [dash_access.input, q_standardize.input], None, None,
          [admin_timer], js=START_TIMER_JS, **private)
    return AdminTab(tab=admin_tab, timer=admin_timer)


def _buttons_in(block: Any) -> list[Any]:
    """The gr.Button components inside ``block``, at any depth."""
    found = []
    for child in getattr(block, "children", []):
        if isinstance(child, gr.Button):
            found.append(child)
        found.extend(_buttons_in(child))
    return found
