"""The Pairs tab (pairwise preferences, issue 14 item 1): two images of one prompt (or two images each alone with its
prompt, both prompts shown) side by side, keyboard first.

``←`` or ``1``: the left image is better; ``→`` or ``2``: the right one; ``↓`` or ``0``: about the same (a tie);
``↑`` or ``s``: skip (can't judge; not offered to this rater again, counted nowhere).
Clicking an image or a button does the same. One vote is sent at a time: keys pressed while a vote is on its way
are ignored until the server has answered (the page then shows the next pair), so a vote can never land on the
wrong pair. The rules (open round, overlap, the experiment's feedback setting) are checked on the server by
``app.pairwise``; a refusal is shown as one sentence and changes nothing.

Also the admin's feedback setting (``build_admin``): scores, pairs or both, for the selected experiment.
The handlers are plain functions (``pair_view_html``, ``vote``) that ``app.ui``'s Gradio builders call, and the
public API's (``api_pair`` for ``next_pair``, ``api_vote`` for ``submit_comparison``; registered in ``app.ui``).
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Callable
from typing import Any

import gradio as gr  # at module level: the handlers' ``request: gr.Request`` annotations are resolved from here

from app import pairwise
from app.auth import Who
from app.gradio_routes import admin_only
from app.ui_assets import QUIET_ADMIN_JS
from db import checks, repo
from db.engine import read_session
from db.errors import InvalidInput

PAIRS_CSS = """
.pp-help { color: #6b7280; font-size: .9rem; margin: .2rem 0 .6rem; }
.pp-help kbd { border: 1px solid #cbd5e1; border-bottom-width: 2px; border-radius: 4px; padding: 0 .35em;
  font-family: ui-monospace, monospace; font-size: .85em; background: #f8fafc; color: #0f172a; }
.pp-prompt { font-weight: 600; margin: .2rem 0 .5rem; overflow-wrap: anywhere; }
.pp-pair { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; max-width: 900px; }
.pp-side { border: 2px solid #e5e7eb; border-radius: 10px; padding: 8px; background: #fff; cursor: pointer; }
.pp-side:hover, .pp-side[data-picked="1"] { border-color: #2563eb; box-shadow: 0 0 0 3px rgba(37,99,235,.25); }
.pp-side img { width: 100%; aspect-ratio: 1 / 1; object-fit: contain; background: #111827; border-radius: 6px;
  image-rendering: pixelated; display: block; }
.pp-buttons { display: flex; gap: 10px; margin: .6rem 0; max-width: 900px; justify-content: space-between; }
.pp-buttons button { font: inherit; padding: .4rem .9rem; border: 1px solid #d1d5db; border-radius: 6px;
  background: #f9fafb; color: #111827; cursor: pointer; }
.pp-root[data-busy="1"] .pp-pair { opacity: .6; }
.pp-empty { padding: 2rem; text-align: center; color: #6b7280; border: 2px dashed #e5e7eb; border-radius: 10px; }
"""

PAIRS_JS = r"""
const root = element;
const api = (window.__seikoPairs = window.__seikoPairs || {});
api.busy = false; api.sent = api.sent || 0;
function box() { return root.querySelector('.pp-root'); }
function pairId() { const p = root.querySelector('.pp-pair[data-pair-id]'); return p ? Number(p.dataset.pairId) : null; }
function vote(choice) {
  const id = pairId();
  if (id === null || api.busy) return;
  api.busy = true; api.sent += 1;
  const b = box(); if (b) b.dataset.busy = '1';
  const side = root.querySelector('.pp-side[data-choice="' + choice + '"]'); if (side) side.dataset.picked = '1';
  clearTimeout(api.timer);
  api.timer = setTimeout(() => { api.busy = false; const bb = box(); if (bb) bb.dataset.busy = '0'; }, 8000);
  trigger('vote', { pair_id: id, choice: choice });
}
function onKey(e) {
  if (!root.isConnected) { document.removeEventListener('keydown', onKey); return; }
  if (root.offsetParent === null) return;  // the Pairs tab is not shown
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && t.closest && t.closest('input, textarea, select, [contenteditable="true"], [role="listbox"]')) return;
  const choice = { ArrowLeft: 'a', '1': 'a', ArrowRight: 'b', '2': 'b', ArrowDown: 'tie', '0': 'tie',
                   ArrowUp: 'skip', s: 'skip' }[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
}
if (window.__seikoPairsKey) document.removeEventListener('keydown', window.__seikoPairsKey);
window.__seikoPairsKey = onKey;
document.addEventListener('keydown', onKey);
root.addEventListener('click', (e) => {
  const el = e.target.closest('[data-choice]');
  if (el) vote(el.dataset.choice);
});
watch('value', () => { clearTimeout(api.timer); api.busy = false; const b = box(); if (b) b.dataset.busy = '0'; });
"""

HELP = ("<div class='pp-help'>Which image do you prefer (each for its prompt)? <kbd>←</kbd> or <kbd>1</kbd> left · "
        "<kbd>→</kbd> or <kbd>2</kbd> right · <kbd>↓</kbd> or <kbd>0</kbd> about the same (tie) · <kbd>↑</kbd> or "
        "<kbd>s</kbd> skip (can't judge: not shown to you again, counted nowhere) · or click. "
        "Each choice is saved at once.</div>")


def view_html(view: pairwise.PairView, nonce: int = 0) -> str:
    """The tab's HTML for a PairView; ``nonce`` makes each answer a new value (so the page always sees it)."""
    if view.pair_id is None:
        body = f"<div class='pp-empty' id='pp-empty'>{html.escape(view.message)}</div>" if view.message else ""
    else:
        sides = []
        for choice, src, word in (("a", view.left, "left"), ("b", view.right, "right")):
            img = (f"<img src='{src}' alt='{word} image'>" if src else "<div class='pp-empty'>image file missing</div>")
            sides.append(f"<div class='pp-side' data-choice='{choice}' role='button' aria-label='{word} is better'>"
                         f"{img}</div>")
        body = (f"{HELP}<div class='pp-prompt'>{html.escape(view.prompt or '')}</div>"
                f"<div class='pp-pair' data-pair-id='{view.pair_id}'>{''.join(sides)}</div>"
                "<div class='pp-buttons'><button type='button' data-choice='a'>← Left is better</button>"
                "<button type='button' data-choice='tie'>↓ About the same</button>"
                "<button type='button' data-choice='skip'>↑ Skip</button>"
                "<button type='button' data-choice='b'>Right is better →</button></div>")
    return f"<div class='pp-root' data-nonce='{nonce}'>{view.progress}{body}</div>"


def pair_view_html(factory, data_dir, who: Who, experiment_id: int | None, nonce: int = 0) -> str:
    return view_html(pairwise.next_pair(factory, data_dir, who, experiment_id), nonce)


def vote(factory, data_dir, who: Who, experiment_id: int | None, payload: dict[str, Any] | None,
         nonce: int = 0) -> tuple[str, str | None]:
    """The page's vote: saves it (or refuses with one sentence, saving nothing); returns (the next pair's HTML,
    the refusal or None)."""
    from db.errors import Conflict, InvalidInput, NotFound

    payload = payload or {}
    message = None
    try:
        pairwise.submit_vote(factory, who, payload.get("pair_id"), payload.get("choice"))
    except (Conflict, InvalidInput, NotFound) as e:
        message = str(e)
    return pair_view_html(factory, data_dir, who, experiment_id, nonce), message


# ---------------------------------------------------------------------------------------------
# the public API's pairs (app.ui registers them: next_pair, submit_comparison)
# ---------------------------------------------------------------------------------------------

SIDES = {"a": "left", "b": "right", "tie": "tie", "skip": "skip"}  # a stored choice -> what the API calls it


def api_pair(factory, data_dir, who: Who, *, experiment: str = "") -> dict[str, Any]:
    """The next pair for the rater, with both PNG files (base64), for the public ``next_pair`` endpoint.

    The same pair the Pairs tab would show (``pairwise.offered_pair``): left is the pair's image ``a``, right its
    image ``b``, as the server drew and stored them. Reads only; a pair is not reserved (with overlap 1, two raters
    may get the same pair and the later vote is refused as not offered)."""
    from app import ui_rate

    if experiment is not None and not isinstance(experiment, str):
        raise InvalidInput(f"the experiment name must be text (empty for the experiment being labeled), got {checks.shown(experiment)}")
    with read_session(factory) as s:
        exp = ui_rate.experiment_by_name(s, experiment, who)  # one the rater may rate (app.members), or refused
        if exp is None:
            return {"experiment": None, "round": None, "pair": None,
                    "progress": pairwise.PairProgress(None, None, None).as_dict(), "message": "there is no experiment yet"}
        p, pair, why = pairwise.offered_pair(s, exp, who)
        out: dict[str, Any] = {"experiment": exp.name, "round": p.round_index if p.round_status == "labeling" else None,
                               "pair": None, "progress": p.as_dict()}
        if pair is not None:
            sides = {}
            for side, image_id in (("left", pair.image_a_id), ("right", pair.image_b_id)):
                image = repo.get_image(session=s, image_id=image_id)
                sides[side] = {"image_id": image.id, "seed": image.seed, "prompt": image.prompt,
                               "png_base64": ui_rate.png_base64(data_dir, image)}
            # the pair's prompt; "left / right" for two images each alone with its prompt (app.pairwise.plan_pairs)
            prompt = " / ".join(dict.fromkeys([sides["left"]["prompt"], sides["right"]["prompt"]]))
            out["pair"] = {"pair_id": pair.id, "prompt": prompt, **sides}
            out["message"] = "a pair to compare with submit_comparison: left, right or tie"
        elif not pairwise.wants_pairs(p.feedback):
            out["message"] = (f"experiment {exp.name!r} asks for 1-10 ratings, not comparisons: rate its images with "
                              "next_batch and submit_rating")
        elif p.round_status != "labeling":
            out["message"] = ("No round is open for labeling right now. New pairs appear by themselves when the next round "
                              "opens.")
        else:
            out["message"] = why
        return out


def api_vote(factory, who: Who, pair_id: Any, choice: Any) -> dict[str, Any]:
    """Vote on one pair in its own transaction (the public ``submit_comparison``): ``pairwise.submit_vote``, whose
    checks refuse bad input with one sentence and save nothing, plus the choice spelled as a side."""
    out = pairwise.submit_vote(factory, who, pair_id, choice)
    previous = out["previous_choice"]
    return {**out, "side": SIDES[out["choice"]], "previous_side": SIDES[previous] if previous is not None else None}


# ---------------------------------------------------------------------------------------------
# Gradio builders (called by app.ui)
# ---------------------------------------------------------------------------------------------


def _payload(evt: Any) -> dict[str, Any]:
    raw = vars(evt).get("_data") if evt is not None else None
    return raw if isinstance(raw, dict) else {}


def build_tab(services, exp_state, who_of: Callable, shown: Callable, warn: Callable[[str], None],
              private: dict[str, Any] | None = None, picks: Any = None):
    """The Pairs tab; call inside ``gr.Tabs()``. ``who_of(request)`` finds the signed-in rater (gr.Error when
    refused), ``shown(fn)`` turns a refusal into a gr.Error, ``warn(sentence)`` shows a refusal as a warning.
    ``picks``: the experiment each browser session last picked (``app.ui_rate_tab.Picks``), so that a late poll
    does not draw the experiment the rater left."""
    private = private or {"api_visibility": "private"}
    factory, data_dir = services.factory, services.settings.data_dir
    with gr.Tab("Pairs", id="pairs", elem_id="tab-pairs") as tab:
        gr.HTML(f"<style>{PAIRS_CSS}</style>", padding=False)
        view = gr.HTML(value="", elem_id="pair-view", js_on_load=PAIRS_JS, apply_default_css=False)
        nonce = gr.State(0)
        # what the page was last sent (kept on the server): whether it shows a pair, and a digest of its HTML. The
        # poll reads this, not the page's HTML: sent back with every poll, that HTML (two base64 images, about 1 MB
        # for 512 px Stable Diffusion) crossed the network each time and went over the request size limit
        sent = gr.State({"pair": False, "digest": ""})
        timer = gr.Timer(services.rate_poll_s)

    def mark(page: str) -> dict[str, Any]:
        return {"pair": "data-pair-id=" in page, "digest": hashlib.sha256(page.encode()).hexdigest()}

    def on_show(exp_id, n, request: gr.Request):
        who = who_of(request)
        page = shown(lambda: pair_view_html(factory, data_dir, who, exp_id, n + 1))
        return page, n + 1, mark(page)

    def on_vote(exp_id, n, evt: gr.EventData, request: gr.Request):
        who = who_of(request)
        page, message = vote(factory, data_dir, who, exp_id, _payload(evt), n + 1)
        if message:
            warn(message)
        return page, n + 1, mark(page)

    def on_poll(exp_id, n, last, request: gr.Request):
        """An empty tab looks for new pairs; a tab showing a pair is left alone."""
        who = who_of(request)
        last = last if isinstance(last, dict) else {}
        # nothing written when nothing changes: writing ``n`` back would roll the nonce back when a pick moved it on
        # while this tick ran (found by review)
        if last.get("pair"):
            return gr.skip()
        if stale(exp_id, request):
            return gr.skip()
        page = pair_view_html(factory, data_dir, who, exp_id, n)
        done = mark(page)
        if stale(exp_id, request):
            return gr.skip()
        return gr.skip() if done["digest"] == last.get("digest") else (page, n, done)

    def stale(exp_id, request) -> bool:
        # a tick that read the experiment before the rater picked another one (Gradio reads a listener's inputs
        # when it starts it, and the selector's handler runs beside the timer's): its page, of the experiment the
        # rater left, and its old nonce would be written over the new experiment's (found by review)
        return picks is not None and picks.stale(request, "shown", exp_id)

    tab.select(on_show, [exp_state, nonce], [view, nonce, sent], **private)
    exp_state.change(on_show, [exp_state, nonce], [view, nonce, sent], **private)
    view.vote(on_vote, [exp_state, nonce], [view, nonce, sent], show_progress="hidden", concurrency_id="rating",
              concurrency_limit=4, **private)
    timer.tick(on_poll, [exp_state, nonce, sent], [view, nonce, sent], show_progress="hidden", **private)
    return tab


def feedback_value(factory, experiment_id: int | None) -> str:
    """The experiment's stored feedback setting, for the admin's radio ('scores', a new experiment's, when none is
    selected)."""
    if experiment_id is None:
        return "scores"
    with read_session(factory) as s:
        return pairwise.feedback_of(repo.get_experiment(session=s, experiment_id=int(experiment_id)))


def build_admin(services, exp_state, admin_of: Callable, shown: Callable, private: dict[str, Any] | None = None):
    """The admin's feedback setting (call inside the Admin tab): the radio shows the selected experiment's."""
    private = private or {"api_visibility": "private"}
    with gr.Accordion("Feedback: scores or pairwise comparisons", open=False):
        gr.Markdown("What raters give on this experiment: **scores** (1-10 on the Rate tab), **pairs** (which of two "
                    "images of the same prompt, or of two prompts each drawn once, is better, on the Pairs tab; a round's budget then counts comparisons) "
                    "or **both**. Applies at once to the open round (its pairs are made now) and to every later round; "
                    "the reward model is fitted on what was given (Bradley-Terry on pairs, regression on scores).")
        with gr.Row():
            choice = gr.Radio(label="Raters give", choices=list(pairwise.FEEDBACKS), value="scores", scale=0,
                              min_width=320, elem_id="feedback-choice")
            button = gr.Button("Set feedback", scale=0, min_width=160, elem_id="set-feedback")
        result = gr.Markdown(elem_id="feedback-result")
        choice_for = gr.State(None)  # the experiment the radio was filled for (show_feedback)

    @admin_only
    def on_set(exp_id, value, shown_for, request: gr.Request):
        """``shown_for``: the experiment the radio was filled for (``show_feedback``); a choice made while another
        one was selected is not set on this one."""
        who = admin_of(request)  # refuses a rater; pairwise.set_feedback checks the role again
        if exp_id is None:
            raise gr.Error("Select an experiment first.", print_exception=False)
        if shown_for != exp_id:
            # the radio still showed (or was chosen on) another experiment's setting, its refill not sent or not yet
            # answered: "Set feedback" set that choice on this one (seventeenth review, 7 Dec 2026)
            message = "The choice showed another experiment's feedback; it shows this one's now: check it and set again."
            gr.Warning(message)
            return message, *filled(exp_id)
        message = shown(lambda: pairwise.set_feedback(services.factory, who, int(exp_id), value))
        gr.Info(message)
        return message, *filled(exp_id)

    def filled(exp_id) -> tuple:
        """The radio's value as stored now, and the experiment it is for (``on_set``'s ``shown_for``)."""
        return shown(lambda: feedback_value(services.factory, exp_id)), exp_id

    @admin_only
    def show_feedback(exp_id, request: gr.Request):
        """The page loaded or another experiment was selected: the radio shows that experiment's setting (it always
        showed 'scores'; found by review). To an admin only (a rater's page has no Admin tab, and the event sent by
        hand is refused)."""
        admin_of(request)
        return filled(exp_id)

    button.click(on_set, [exp_state, choice, choice_for], [result, choice, choice_for], concurrency_limit=1, **private)
    exp_state.change(show_feedback, [exp_state], [choice, choice_for], js=QUIET_ADMIN_JS,
                     **private)  # see ui_admin_tab.build
    return button
