"""The Admin tab when the admin picks another experiment in the header, through the built demo's listeners fired as a
browser page fires them (``Page``): a save of the round options changes only what this admin changed on this
experiment, and the tab's per-experiment settings show the experiment now selected."""

from __future__ import annotations

import copy
import inspect
from typing import Any

import gradio as gr

from app import experiment_options, rater_page, ui
from app.auth import Who
from db import repo
from db.engine import read_session, write_session


class Page:
    """One browser page of ``demo``: the components' values as the page holds them. ``fire`` runs the listeners of
    one event as the page has them run: each reads its inputs from the page and writes its outputs back (``gr.skip()``
    and updates without a value write nothing); an output whose value changed fires that component's ``change``
    listeners next (a State's too, as Gradio does). ``written`` lists, in order, (component, value) of every write.
    ``left_out``: the events the page was not sent (a rater's page: ``rater_page.admin_parts``), which it never fires."""

    def __init__(self, demo: gr.Blocks, request: gr.Request, left_out: frozenset[int] = frozenset()):
        self.demo, self.request, self.left_out = demo, request, left_out
        self.values: dict[int, Any] = {i: copy.deepcopy(b.value) for i, b in demo.blocks.items() if hasattr(b, "value")}
        self.written: list[tuple[Any, Any]] = []

    def block(self, elem_id: str | None = None, *, label: str | None = None) -> Any:
        (found,) = [b for b in self.demo.blocks.values()
                    if (elem_id is not None and getattr(b, "elem_id", None) == elem_id)
                    or (label is not None and getattr(b, "label", None) == label)]
        return found

    def __getitem__(self, elem_id: str) -> Any:
        return self.values[self.block(elem_id)._id]

    def set(self, elem_id: str, value: Any) -> None:
        """The user changes a field (its ``input``/``change`` listeners are not fired: the tests here use none)."""
        self.values[self.block(elem_id)._id] = value

    def fire(self, block: Any, event: str, depth: int = 0) -> None:
        assert depth < 5, "change listeners keep firing each other"
        for fn_id, bf in list(self.demo.fns.items()):
            if fn_id not in self.left_out and bf.fn is not None and (block._id, event) in bf.targets:
                self._run(bf, depth)

    def pick_experiment(self, experiment_id: int) -> None:
        """The header's experiment selector: the user picks ``experiment_id``."""
        dropdown = self.block(label="Experiment")
        self.values[dropdown._id] = experiment_id
        self.fire(dropdown, "input")

    def _run(self, bf, depth: int) -> None:
        args = [self.values[c._id] for c in bf.inputs]
        kwargs = {"request": self.request} if "request" in inspect.signature(bf.fn).parameters else {}
        result = bf.fn(*args, **kwargs)
        if len(bf.outputs) == 1 or (isinstance(result, dict) and result.get("__type__") == "update"):
            result = [result] * len(bf.outputs)
        changed = []
        for component, value in zip(bf.outputs, result, strict=True):
            if isinstance(value, gr.blocks.Block):  # a component as an update: what it was given
                value = {**value.constructor_args, "__type__": "update"}
            if isinstance(value, dict) and value.get("__type__") == "update":
                if "value" not in value:
                    continue
                value = value["value"]
            self.written.append((component, value))
            if self.values.get(component._id) != value:
                changed.append(component)
            self.values[component._id] = value
        for component in changed:
            self.fire(component, "change", depth + 1)


def in_session(username: str, session_hash: str) -> gr.Request:
    return gr.Request(username=username, client={"host": "127.0.0.1", "port": 5000}, session_hash=session_hash)


def root(world) -> Who:
    return Who(world.accounts["root"], "root", "admin", local=False)


def second_experiment(world) -> int:
    """Experiment B beside ui_world's A, with an open round of 4 images; its id."""
    with write_session(world.factory) as s:
        b = repo.create_experiment(session=s, name="b-exp", model_spec="m", method="bootstrap", config={},
                                   budgets=[4], prompts=["x"], overlap=1)
        rb = repo.create_round(session=s, experiment_id=b.id)
    world.add_round_images(rb.id, 4, start=50)
    with write_session(world.factory) as s:
        repo.open_round(session=s, round_id=rb.id)
    return b.id


def stored(world, experiment_id: int) -> experiment_options.ExperimentOptions:
    with read_session(world.factory) as s:
        return experiment_options.of(repo.get_experiment(session=s, experiment_id=experiment_id))


# ---------------------------------------------------------------------------------------------
# the round options' repeat share (review: a value typed once was sent again with every later save)
# ---------------------------------------------------------------------------------------------


def test_a_repeat_share_saved_on_one_experiment_is_not_saved_onto_the_next_one(ui_world):
    """The admin saves repeat share 0.3 on A, picks B in the header and saves auto-close only: B got 0.3 too (the
    field was never written by any event, so it kept 0.3 and every save sent it). The field shows the selected
    experiment's stored share, and a save stores only what the admin changed."""
    w = ui_world
    a, b = w.experiment_id, second_experiment(w)
    page = Page(ui.build_demo(w.services()), in_session("root", "s1"))
    save = page.block("save-round-options")
    page.pick_experiment(a)
    page.set("opt-repeat-share", 0.3)
    page.fire(save, "click")
    assert stored(w, a).repeat_share == 0.3
    page.pick_experiment(b)
    page.set("opt-auto-close", True)
    page.fire(save, "click")
    assert (stored(w, b).auto_close, stored(w, b).repeat_share) == (True, 0)
    assert page["opt-repeat-share"] == 0  # B's, as stored
    page.pick_experiment(a)
    assert (page["opt-repeat-share"], page["opt-auto-close"]) == (0.3, False)  # A's, as stored
    assert stored(w, a).repeat_share == 0.3 and stored(w, a).auto_close is False


def test_a_repeat_share_left_in_the_form_does_not_undo_another_admins_change(ui_world):
    """Admin X saves repeat share 0.3; admin Y turns repeats off; X, whose form still shows 0.3, turns auto-close on
    and saves: repeats were on again. Only what X changed since the form was filled is stored."""
    w = ui_world
    page = Page(ui.build_demo(w.services()), in_session("root", "x"))
    page.pick_experiment(w.experiment_id)
    page.set("opt-repeat-share", 0.3)
    page.fire(page.block("save-round-options"), "click")
    experiment_options.set_options(w.factory, root(w), w.experiment_id, repeat_share=0)  # admin Y, elsewhere
    page.set("opt-auto-close", True)
    page.fire(page.block("save-round-options"), "click")
    assert (stored(w, w.experiment_id).auto_close, stored(w, w.experiment_id).repeat_share) == (True, 0)
    assert page["opt-repeat-share"] == 0  # the form shows what is stored now
    # X types a share again: that one is stored (the field cleared, as before, leaves the share as it is)
    page.set("opt-repeat-share", 0.2)
    page.fire(page.block("save-round-options"), "click")
    assert stored(w, w.experiment_id).repeat_share == 0.2
    page.set("opt-repeat-share", None)
    page.set("opt-auto-close", False)
    page.fire(page.block("save-round-options"), "click")
    assert (stored(w, w.experiment_id).auto_close, stored(w, w.experiment_id).repeat_share) == (False, 0.2)


# ---------------------------------------------------------------------------------------------
# the Admin tab's settings of the experiment (review: they stayed the previous experiment's)
# ---------------------------------------------------------------------------------------------

# the Admin tab's components that show a setting or a table of the selected experiment
ADMIN_SHOWN = ("dashboard-access", "jobs-table", "exports-table", "export-link", "rater-quality", "rater-quality-table",
               "standardize-scores", "feedback-choice", "opt-selection", "opt-candidate-factor", "opt-honest-share",
               "opt-auto-close", "opt-repeat-share")


def b_set_apart(world) -> int:
    """Experiment B, set up unlike ui_world's A (raters may not see A's dashboard, A's scores are used as given, A
    asks for scores, has no export and no ratings): raters may see B's dashboard, its scores are standardised, it
    asks for scores and pairs, alice rated it, one image is a gold item, and a ratings export was built. B's id."""
    from app import pairwise, ui_admin, ui_export, ui_quality, ui_rate

    b = second_experiment(world)
    admin = root(world)
    alice = Who(world.accounts["alice"], "alice", "rater", local=False)
    ui_admin.set_dashboard_access(world.factory, admin, b, True)
    ui_quality.set_standardize(world.factory, admin, b, True)
    pairwise.set_feedback(world.factory, admin, b, "both")
    view = ui_rate.load_batch(world.factory, world.settings.data_dir, alice, None, batch_size=4, experiment_id=b)
    for image_id in view.state["batch"]:  # the page's batch: image ids
        ui_rate.submit(world.factory, alice, image_id, 6)
    ui_quality.set_gold(world.factory, admin, b, view.state["batch"][0], 6)
    ui_export.build(world.factory, world.settings, admin, b, None, "ratings")
    return b


def test_picking_another_experiment_shows_its_settings_on_the_admin_tab(ui_world):
    """The admin opens the Admin tab on A and picks B in the header: the dashboard-access and standardise checkboxes,
    the exports, jobs and rater-quality tables stayed A's until the tab was selected again (and a checkbox clicked
    then wrote A's shown value onto B), and the feedback radio always showed 'scores'. They show B's now."""
    w = ui_world
    a, b = w.experiment_id, b_set_apart(w)
    page = Page(ui.build_demo(w.services()), in_session("root", "s1"))
    page.pick_experiment(a)
    page.fire(page.block("tab-admin"), "select")
    assert (page["dashboard-access"], page["standardize-scores"], page["feedback-choice"]) == (False, False, "scores")
    assert page["exports-table"] == [] and page["rater-quality-table"] == []
    assert "0 gold items" in page["rater-quality"]

    page.pick_experiment(b)
    assert (page["dashboard-access"], page["standardize-scores"], page["feedback-choice"]) == (True, True, "both")
    (export,) = page["exports-table"]
    assert export[1] == "ratings"
    assert [row[0] for row in page["rater-quality-table"]] == ["alice"]
    assert "1 gold items" in page["rater-quality"] and "standardised per rater" in page["rater-quality"]

    page.pick_experiment(a)  # and back: A's again
    assert (page["dashboard-access"], page["standardize-scores"], page["feedback-choice"]) == (False, False, "scores")
    assert page["exports-table"] == [] and page["rater-quality-table"] == []


def test_the_feedback_radio_shows_the_stored_setting_when_the_page_loads(ui_world):
    w = ui_world
    b = b_set_apart(w)  # the newest experiment with an open round: the one a page shows first
    page = Page(ui.build_demo(w.services()), in_session("root", "s1"))
    page.fire(page.demo, "load")
    assert page.values[page.block(label="Experiment")._id] == b
    assert (page["feedback-choice"], page["dashboard-access"], page["standardize-scores"]) == ("both", True, True)


def test_a_rater_picking_another_experiment_gets_none_of_the_admin_tabs_settings(ui_world):
    """A rater's page, as the server sends it (``rater_page`` leaves out the Admin tab and its events, which are
    admin-only and refused to a rater), moves to the experiment picked, is sent nothing for the Admin tab, and no
    error."""
    w = ui_world
    a, b = w.experiment_id, b_set_apart(w)
    demo = ui.build_demo(w.services())
    page = Page(demo, in_session("bob", "s2"), left_out=rater_page.admin_parts(demo)[1])
    page.fire(page.demo, "load")
    page.pick_experiment(a)
    page.pick_experiment(b)
    admin_tab = [page.block(elem_id) for elem_id in ADMIN_SHOWN]
    assert [component.elem_id for component, _ in page.written if component in admin_tab] == []
    assert page.values[page.block(label="Experiment")._id] == b  # the rater's page did move to B


def test_the_admin_tab_says_next_to_the_dashboard_access_that_a_blind_ab_needs_it_off(ui_world):
    """Found by the fifth review of 5 Dec 2026: with raters allowed to see the dashboard the Compare tab's A/B is not
    blind (the dashboard's eval grid shows which round's images are which), and the Admin tab said nothing of it. The
    checkbox that lets raters see the dashboard says so now, in the page's own config (what the browser renders),
    inside the Admin tab."""
    config = ui.build_demo(ui_world.services()).get_config_file()
    by_id = {c["id"]: c for c in config["components"]}

    def inside(node: dict) -> list[int]:
        return [node["id"], *(i for child in node.get("children", []) for i in inside(child))]

    def find(node: dict, elem_id: str) -> dict | None:
        if by_id.get(node["id"], {}).get("props", {}).get("elem_id") == elem_id:
            return node
        return next((found for child in node.get("children", []) if (found := find(child, elem_id))), None)

    admin_tab = find(config["layout"], "tab-admin")
    assert admin_tab is not None
    (checkbox,) = [by_id[i] for i in inside(admin_tab) if by_id[i]["props"].get("elem_id") == "dashboard-access"]
    assert checkbox["type"] == "checkbox"
    assert checkbox["props"]["info"] == ("Keep this off for a blind A/B: the dashboard shows which round's images are "
                                         "which, so a rater who sees it can tell the Compare tab's sides apart.")


# ---------------------------------------------------------------------------------------------
# a form filled for one experiment, sent with another selected (seventeenth review, 7 Dec 2026)
# ---------------------------------------------------------------------------------------------


def quiet_events(demo: gr.Blocks) -> frozenset[int]:
    """The Admin tab's events the page fires by itself (the refills at a pick, the tab's, the timer's): a page that
    knows its account was refused as no admin does not send them (``ui_assets.QUIET_ADMIN_JS``)."""
    from app.ui_assets import QUIET_ADMIN_JS

    quiet = frozenset(i for i, bf in demo.fns.items() if bf.js == QUIET_ADMIN_JS)
    assert len(quiet) >= 5, quiet  # the admin experiment's refill, the raters field, the feedback, the round options...
    return quiet


def feedback(world, experiment_id: int) -> str:
    with read_session(world.factory) as s:
        config = repo.get_experiment(session=s, experiment_id=experiment_id).config or {}
    return (config.get("app") or {}).get("feedback", "scores")  # where app.pairwise keeps it; 'scores' when unset


def test_a_feedback_chosen_while_another_experiment_was_selected_is_not_set_on_this_one(ui_world):
    """The feedback radio kept what the admin chose on A when its refill for B was not sent (the page of an admin
    made a rater, then an admin again, without a reload) or not yet answered, and "Set feedback" with B selected set
    A's choice on B (and made B's open round's pairs). The radio now comes with the experiment it was filled for: a
    set for another one is refused with one sentence, B's setting unchanged, and the radio then shows B's."""
    w = ui_world
    a, b = w.experiment_id, b_set_apart(w)  # A asks for scores, B for scores and pairs
    demo = ui.build_demo(w.services())
    page = Page(demo, in_session("root", "s1"))
    page.pick_experiment(a)
    assert page["feedback-choice"] == "scores"
    page.set("feedback-choice", "pairs")  # chosen for A, not set yet
    page.left_out = quiet_events(demo)  # the refills of the next pick are not sent
    page.pick_experiment(b)
    assert page["feedback-choice"] == "pairs"
    page.fire(page.block("set-feedback"), "click")
    assert (feedback(w, a), feedback(w, b)) == ("scores", "both")
    assert page["feedback-result"] == ("The choice showed another experiment's feedback; it shows this one's now: "
                                       "check it and set again.")
    assert page["feedback-choice"] == "both"  # B's, as stored
    page.set("feedback-choice", "pairs")  # chosen now, for B: set
    page.fire(page.block("set-feedback"), "click")
    assert (feedback(w, a), feedback(w, b), page["feedback-choice"]) == ("scores", "pairs", "pairs")


def test_round_options_never_filled_for_the_selected_experiment_are_not_saved_onto_it(ui_world):
    """The round-options form compares the experiment it was filled for with the selected one, but a form not filled
    at all (its refills not sent, or its first one not answered) passed: its new experiment's defaults were stored
    over every option of the selected experiment, though the admin changed only auto-close. Refused now, with one
    sentence, nothing stored; the form then shows the experiment's options."""
    w = ui_world
    demo = ui.build_demo(w.services())
    before = stored(w, w.experiment_id)
    page = Page(demo, in_session("root", "s1"), left_out=quiet_events(demo))
    page.pick_experiment(w.experiment_id)
    new = experiment_options.ExperimentOptions()
    assert (page["opt-selection"], page["opt-candidate-factor"]) == (new.selection, new.candidate_factor)
    assert (new.selection, new.candidate_factor) != (before.selection, before.candidate_factor)  # the test can fail
    page.set("opt-auto-close", not before.auto_close)
    page.fire(page.block("save-round-options"), "click")
    assert stored(w, w.experiment_id) == before
    assert page["round-options-result"].startswith("The form showed another experiment's options")
    assert (page["opt-selection"], page["opt-candidate-factor"], page["opt-auto-close"]) == (
        before.selection, before.candidate_factor, before.auto_close)
    page.set("opt-auto-close", not before.auto_close)  # filled now: saved, the auto-close only
    page.fire(page.block("save-round-options"), "click")
    after = stored(w, w.experiment_id)
    assert (after.selection, after.candidate_factor, after.auto_close) == (
        before.selection, before.candidate_factor, not before.auto_close)
