"""The admin's round options (issue 12 items 3 and 5): which candidates a round shows, and auto-close
(app.experiment_options; call ``build_admin`` inside the Admin tab).

No ``from __future__ import annotations`` here: Gradio must see ``request: gr.Request`` as the class itself to pass
the request in."""

from collections.abc import Callable
from typing import Any

from app import experiment_options
from app.experiment_options import MAX_CANDIDATE_FACTOR, SELECTIONS


def describe(options: experiment_options.ExperimentOptions) -> str:
    return (f"Selection **{options.selection}**, {options.candidate_factor} candidate(s) per shown image, "
            f"honest share {options.honest_share:g}, auto-close **{'on' if options.auto_close else 'off'}**.")


def save(factory, who, experiment_id: int | None, selection: Any, candidate_factor: Any, honest_share: Any,
         auto_close: Any) -> str:
    if experiment_id is None:
        raise ValueError("select an experiment first")
    factor = candidate_factor
    if isinstance(factor, float) and factor.is_integer():
        factor = int(factor)
    share = float(honest_share) if isinstance(honest_share, int | float) and not isinstance(honest_share, bool) else honest_share
    new = experiment_options.set_options(factory, who, int(experiment_id), selection=selection, candidate_factor=factor,
                                         honest_share=share, auto_close=bool(auto_close))
    return "Saved. " + describe(new)


def build_admin(services, exp_state, admin_of: Callable, shown: Callable, private: dict[str, Any] | None = None):
    import gradio as gr

    private = private or {"api_visibility": "private"}
    with gr.Accordion("Round options: which images to ask about, auto-close", open=False):
        gr.Markdown("**Selection**: from round 1 on, the worker generates *candidate factor* × budget images and shows "
                    "the budget: at random, those the reward ensemble is most **uncertain** about (largest spread "
                    "across its heads) or most **optimistic** about (best head). A share of each selected round stays a "
                    "uniform random sample so the round's average rating stays honest. More candidates mean a longer "
                    "wait between rounds. **Auto-close** closes the round (and starts training) at its last wanted "
                    "rating, exactly as the Close button does; that last rating can then no longer be undone.")
        with gr.Row():
            selection = gr.Dropdown(label="Selection", choices=list(SELECTIONS), value="random", scale=0, min_width=180,
                                    elem_id="opt-selection")
            factor = gr.Number(label="Candidate factor", value=1, precision=0, minimum=1, maximum=MAX_CANDIDATE_FACTOR,
                               scale=0, min_width=150, elem_id="opt-candidate-factor")
            share = gr.Number(label="Honest share", value=0.25, minimum=0, maximum=1, scale=0, min_width=150,
                              elem_id="opt-honest-share")
            auto = gr.Checkbox(label="Auto-close the round when its budget is rated", value=False, elem_id="opt-auto-close")
            button = gr.Button("Save round options", scale=0, min_width=180, elem_id="save-round-options")
        result = gr.Markdown(elem_id="round-options-result")

    def on_save(exp_id, sel, fac, sh, ac, request: gr.Request):
        who = admin_of(request)  # refuses a rater; set_options checks the role again
        message = shown(lambda: save(services.factory, who, exp_id, sel, fac, sh, ac))
        gr.Info(message)
        return message

    button.click(on_save, [exp_state, selection, factor, share, auto], [result], **private)
    return button
