"""The admin's round options (issue 12 items 3 and 5): which candidates a round shows, and auto-close; and the
share of repeated images (issue 14 item 2, app.repeats) (app.experiment_options; call ``build_admin`` inside the
Admin tab).

No ``from __future__ import annotations`` here: Gradio must see ``request: gr.Request`` as the class itself to pass
the request in."""

from collections.abc import Callable
from typing import Any

from app import experiment_options
from app.experiment_options import MAX_CANDIDATE_FACTOR, MAX_REPEAT_SHARE, SELECTIONS, ExperimentOptions
from app.gradio_routes import admin_only
from app.ui_assets import QUIET_ADMIN_JS


def describe(options: experiment_options.ExperimentOptions) -> str:
    return (f"Selection **{options.selection}**, {options.candidate_factor} candidate(s) per shown image, "
            f"honest share {options.honest_share:g}, auto-close **{'on' if options.auto_close else 'off'}**"
            + (f", repeats **{options.repeat_share:g}** of the images a rater gets." if options.repeat_share else "."))


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


def form_values(factory, experiment_id: int | None) -> tuple[str, int, float, bool, float]:
    """(selection, candidate factor, honest share, auto-close, repeat share) as the experiment stores them, for the
    admin's form: so that saving one option leaves the others as they are (an older experiment stays random x1). A
    new experiment's defaults when none is selected."""
    from db import repo
    from db.engine import read_session

    if experiment_id is None:
        options = ExperimentOptions()
    else:
        with read_session(factory) as s:
            options = experiment_options.of(repo.get_experiment(session=s, experiment_id=int(experiment_id)))
    return options.selection, options.candidate_factor, options.honest_share, options.auto_close, options.repeat_share


# the form's five, in form_values' order
FIELDS = ("selection", "candidate_factor", "honest_share", "auto_close", "repeat_share")


def save(factory, who, experiment_id: int | None, selection: Any, candidate_factor: Any, honest_share: Any,
         auto_close: Any, repeat_share: Any = None, *, loaded: Any = None) -> str:
    """Store the form's options; ``repeat_share`` None (the field left empty) leaves that option as it is.
    ``loaded``: the five values as the form was filled (``form_values``); only those the admin changed since are
    stored, so a form filled before another admin's change does not undo it (it stored all four as it had them;
    found by review), and a repeat share typed once is not sent again with every later save, onto whichever
    experiment is selected then (found by review)."""
    if experiment_id is None:
        raise ValueError("select an experiment first")
    factor = candidate_factor
    if isinstance(factor, float) and factor.is_integer():
        factor = int(factor)
    changes = {"selection": selection, "candidate_factor": factor, "honest_share": _number(honest_share),
               "auto_close": bool(auto_close)}
    if repeat_share is not None:
        changes["repeat_share"] = _number(repeat_share)
    if isinstance(loaded, list | tuple) and len(loaded) == len(FIELDS):
        before = dict(zip(FIELDS, loaded, strict=True))
        changes = {k: v for k, v in changes.items() if v != before[k]}
    saved = experiment_options.save_options(factory, who, int(experiment_id), **changes)
    message = "Saved. " + describe(saved.options)
    if saved.closed is not None:
        index, job_id = saved.closed
        message += (f" Round {index} had every rating it wants, so auto-close closed it (training job {job_id}).")
    return message


def build_admin(services, exp_state, admin_of: Callable, shown: Callable, private: dict[str, Any] | None = None):
    import gradio as gr

    private = private or {"api_visibility": "private"}
    with gr.Accordion("Round options: which images to ask about, auto-close, repeats", open=False):
        gr.Markdown("**Selection**: from round 1 on, the worker generates *candidate factor* × budget images and shows "
                    "the budget: at random, those the reward ensemble is most **uncertain** about (largest spread "
                    "across its heads), most **optimistic** about (best head), or **spread**: optimistic and unlike the images "
                    "already chosen, in equal measure. A share of each selected round stays a "
                    "uniform random sample so the round's average rating stays honest. More candidates mean a longer "
                    "wait between rounds. **Auto-close** closes the round (and starts training) at its last wanted "
                    "rating, exactly as the Close button does; that last rating can then no longer be undone. "
                    f"**Repeat share** (0 to {MAX_REPEAT_SHARE:g}; 0: off; left empty: kept as it is): about this "
                    "share of the images a rater gets are, unannounced, images of the round they already rated (each "
                    "at most once, after their first few ratings); the second score fills the self-consistency columns "
                    "of *Rater quality* and changes neither their first rating, nor the round's progress, nor training.")
        with gr.Row():
            new = ExperimentOptions()  # until an experiment is selected (then form_values)
            selection = gr.Dropdown(label="Selection", choices=list(SELECTIONS), value=new.selection, scale=0,
                                    min_width=180, elem_id="opt-selection")
            factor = gr.Number(label="Candidate factor", value=new.candidate_factor, precision=0, minimum=1,
                               maximum=MAX_CANDIDATE_FACTOR, scale=0, min_width=150, elem_id="opt-candidate-factor")
            share = gr.Number(label="Honest share", value=0.25, minimum=0, maximum=1, scale=0, min_width=150,
                              elem_id="opt-honest-share")
            auto = gr.Checkbox(label="Auto-close the round when its budget is rated", value=False, elem_id="opt-auto-close")
            # filled from the stored options like the four above (form_values); empty means "leave as is": it starts
            # empty, so a save before the form is filled does not turn repeats off
            repeat = gr.Number(label="Repeat share (empty: as is)", value=None, minimum=0, maximum=MAX_REPEAT_SHARE,
                               step=0.05, scale=0, min_width=150, elem_id="opt-repeat-share")
            button = gr.Button("Save round options", scale=0, min_width=180, elem_id="save-round-options")
        result = gr.Markdown(elem_id="round-options-result")
        loaded = gr.State(None)  # the five values as the form was filled: a save stores only those changed since

    def filled(exp_id) -> tuple:
        """The form's five values as stored now (others' changes included), and ``loaded`` for them."""
        values = shown(lambda: form_values(services.factory, exp_id))
        return *values, {"experiment_id": exp_id, "values": list(values)}

    @admin_only
    def on_save(exp_id, sel, fac, sh, ac, rep, before, request: gr.Request):
        who = admin_of(request)  # refuses a rater; set_options checks the role again
        if (before.get("experiment_id") if isinstance(before, dict) else None) != exp_id:
            # filled for another experiment (a save's answer that came after the admin picked this one): nothing is
            # stored from it; the form shows this experiment's options now (found by review). Nor from a form not
            # filled yet (its first fill not answered, or failed): its new experiment's defaults were stored over
            # every option of the selected one (seventeenth review, 7 Dec 2026)
            message = "The form showed another experiment's options; it shows this one's now: check them and save again."
            gr.Warning(message)
            return message, *filled(exp_id)
        values_before = before.get("values") if isinstance(before, dict) else None
        message = shown(lambda: save(services.factory, who, exp_id, sel, fac, sh, ac, rep, loaded=values_before))
        gr.Info(message)
        return message, *filled(exp_id)

    @admin_only
    def on_experiment(exp_id, request: gr.Request):
        """The form shows the selected experiment's stored options (to an admin; a rater's page has no Admin tab, and
        the event sent by hand is refused)."""
        admin_of(request)
        return filled(exp_id)

    button.click(on_save, [exp_state, selection, factor, share, auto, repeat, loaded],
                 [result, selection, factor, share, auto, repeat, loaded], concurrency_limit=1, **private)
    exp_state.change(on_experiment, [exp_state], [selection, factor, share, auto, repeat, loaded],
                     js=QUIET_ADMIN_JS, **private)  # not sent once the page knows it is no admin's (ui_admin_tab.build)
    return button
