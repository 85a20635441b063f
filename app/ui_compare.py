"""The Compare tab: two images side by side, the rater picks the better one or a tie (keyboard first).

One widget for every pair kind (``db.comparisons``): ``'ab'`` (the blind A/B between rounds, app.ab) and
``'preference'`` (pairwise preferences); ``build_tab(kind=...)`` makes one tab per kind. The page shows the
images and the prompt they share, never which round or model drew them: the pair's left/right order was
randomised when it was created, and the image ids are not on the page. Each vote is its own transaction.

Also here, as builders ``app.ui`` calls inside its tabs: the dashboard's A/B table (``build_dashboard``) and the
admin's rollback control (``build_rollback``). Every handler checks who is asking on the server.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from typing import Any

import gradio as gr
from sqlalchemy import select

from app import ab, members, ui_images
from app.auth import Who
from app.gradio_routes import admin_only
from app.ui_rate import pick_experiment, png_data_uri, resolved_experiment_id
from db import comparisons, repo
from db.checks import MAX_ID, shown
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Rater, Round
from seiko_core import model_card

CHOICES = {"a": "left", "b": "right", "tie": "tie"}

COMPARE_CSS = """
.cmp-help { color: #6b7280; font-size: .9rem; margin: .2rem 0 .6rem; }
.cmp-help kbd { border: 1px solid #cbd5e1; border-bottom-width: 2px; border-radius: 4px; padding: 0 .35em;
  font-family: ui-monospace, monospace; font-size: .85em; background: #f8fafc; color: #0f172a; }
.cmp-prompt { font-weight: 600; margin: .2rem 0 .5rem; }
.cmp-pair { display: grid; grid-template-columns: 1fr 1fr; gap: 14px; max-width: 900px; }
.cmp-side { border: 2px solid #e5e7eb; border-radius: 10px; padding: 8px; background: #fff; cursor: pointer; }
.cmp-side:hover { border-color: #2563eb; }
.cmp-side img { width: 100%; aspect-ratio: 1 / 1; object-fit: contain; background: #111827; border-radius: 6px;
  image-rendering: auto; display: block; }
.cmp-side img.px { image-rendering: crisp-edges; image-rendering: pixelated; }  /* small images only (app.ui_images) */
.cmp-buttons { display: flex; gap: 10px; margin: .6rem 0; max-width: 900px; justify-content: space-between; }
.cmp-buttons button { font: inherit; padding: .4rem .9rem; border: 1px solid #d1d5db; border-radius: 6px;
  background: #f9fafb; color: #111827; cursor: pointer; }
.cmp-root[data-busy="1"] { opacity: .6; pointer-events: none; }
.cmp-empty { padding: 2rem; text-align: center; color: #6b7280; border: 2px dashed #e5e7eb; border-radius: 10px; }
.cmp-left { color: #6b7280; font-size: .85rem; }
"""

COMPARE_JS = r"""
const root = element;
function pairId() { const p = root.querySelector('[data-pair-id]'); return p ? Number(p.dataset.pairId) : null; }
function vote(choice) {
  const id = pairId();
  if (id === null || root.dataset.busy === '1') return;
  root.dataset.busy = '1';
  trigger('vote', { pair_id: id, choice: choice });
  setTimeout(() => { root.dataset.busy = '0'; }, 8000);  // the server raised an error: allow another try
}
function onKey(e) {
  if (!root.isConnected) { document.removeEventListener('keydown', onKey); return; }
  if (root.offsetParent === null) return;  // this tab is not shown
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && t.closest && t.closest('input, textarea, select, [contenteditable="true"], [role="listbox"]')) return;
  const choice = { ArrowLeft: 'a', ArrowRight: 'b', ArrowDown: 'tie', ArrowUp: 'skip', s: 'skip' }[e.key];
  if (choice) { e.preventDefault(); vote(choice); }
}
document.addEventListener('keydown', onKey);
root.addEventListener('click', (e) => {
  const el = e.target.closest('[data-choice]');
  if (el) vote(el.dataset.choice);
});
watch('value', () => { root.dataset.busy = '0'; });
"""

HELP = ("<div class='cmp-help'>Which image is better for the prompt? <kbd>←</kbd> left · <kbd>→</kbd> right · "
        "<kbd>↓</kbd> about the same (tie) · <kbd>↑</kbd> or <kbd>s</kbd> skip (can't judge: not shown to you again) · "
        "or click. Each choice is saved at once.</div>")


def _payload(evt: Any) -> dict[str, Any]:
    raw = vars(evt).get("_data") if evt is not None else None
    return raw if isinstance(raw, dict) else {}


def pair_html(factory, data_dir, who: Who, experiment_id: int | None, kind: str) -> str:
    """The next pair of ``kind`` for this rater in the experiment (or a sentence saying there is none), recorded as
    shown to them (``comparisons.serve_pair``): a reload shows it again until they answer it."""
    with write_session(factory) as s:
        try:
            # one the rater may rate (app.members); the id is the page's state (app.ui's exp_state)
            experiment = pick_experiment(s, experiment_id, who, from_state=True)
        except NotFound as e:  # members.PAGE_EXPERIMENT_GONE, and nothing recorded as shown
            return f"<div class='cmp-root'><div class='cmp-empty' id='cmp-no-experiment'>{html.escape(str(e))}</div></div>"
        if experiment is None:
            return "<div class='cmp-root'><div class='cmp-empty'>There is no experiment yet.</div></div>"
        if experiment.status == "finished":
            return (f"<div class='cmp-root'><div class='cmp-empty'>Experiment {html.escape(experiment.name)} is finished; "
                    "its comparisons are closed.</div></div>")
        pair = comparisons.serve_pair(session=s, experiment_id=experiment.id, rater_id=who.rater_id, kind=kind)
        if pair is None:
            return ("<div class='cmp-root'><div class='cmp-empty' id='cmp-empty'>No pairs to compare right now; new ones "
                    "appear after the next round is trained.</div></div>")
        left = repo.get_image(session=s, image_id=pair.image_a_id)
        right = repo.get_image(session=s, image_id=pair.image_b_id)
        pair_id = pair.id
        remaining = comparisons.count_unvoted(session=s, experiment_id=experiment.id, rater_id=who.rater_id, kind=kind)
        prompts = dict.fromkeys([left.prompt, right.prompt])
        sides = []
        for choice, image in (("a", left), ("b", right)):
            src = png_data_uri(data_dir, image)
            px = ui_images.img_class(base64.b64decode(src.split(",", 1)[1][:64])) if src else ""
            img = f"<img src='{src}'{px} alt='{CHOICES[choice]} image'>" if src else "<div class='cmp-empty'>image file missing</div>"
            sides.append(f"<div class='cmp-side' data-choice='{choice}' role='button' aria-label='{CHOICES[choice]} is better'>"
                         f"{img}</div>")
    return (
        f"<div class='cmp-root'>{HELP}<div class='cmp-prompt'>{html.escape(' / '.join(prompts))}</div>"
        f"<div class='cmp-pair' data-pair-id='{pair_id}'>{''.join(sides)}</div>"
        "<div class='cmp-buttons'><button type='button' data-choice='a'>← Left is better</button>"
        "<button type='button' data-choice='tie'>↓ Tie</button>"
        "<button type='button' data-choice='skip'>↑ Skip</button>"
        "<button type='button' data-choice='b'>Right is better →</button></div>"
        f"<div class='cmp-left'>{remaining} pair{'s' if remaining != 1 else ''} left for you</div></div>"
    )


def vote(factory, who: Who, experiment_id: int | None, kind: str, payload: dict[str, Any]) -> str:
    """Store the rater's vote from the page (``{"pair_id", "choice"}``); returns a short confirmation."""
    pair_id, choice = payload.get("pair_id"), payload.get("choice")
    if isinstance(pair_id, bool) or not isinstance(pair_id, int) or not 1 <= pair_id <= MAX_ID:
        raise InvalidInput(f"a vote needs the pair's id, got {shown(pair_id)}")
    with write_session(factory) as s:
        # the experiment the page shows pairs of (pair_html's rule: the page's state)
        experiment = pick_experiment(s, experiment_id, who, from_state=True)
        pair = comparisons.get_pair(session=s, pair_id=pair_id)
        # a pair of an experiment that does not list the rater: refused as a pair that does not exist (its kind and
        # experiment told them it exists; fifth review); checked again below under the experiment's lock
        members.check(s, who, pair.experiment_id, unknown=comparisons.no_pair_with_id(pair_id))
        if experiment is None or pair.kind != kind or pair.experiment_id != experiment.id:
            raise InvalidInput(f"pair {pair_id} is not a {kind} pair of this experiment")
        # the experiment shared (repo.share_experiment), then the pair's round FOR SHARE, as a rating holds them: a
        # change of who may rate it waits for the vote, or the vote for it, and the check is made again under the lock
        # (fifth review); finish_experiment locks every round first, so on PostgreSQL a vote that read 'active' could
        # commit after the finish and change final win rates (found by review); the status is read again once the
        # lock is held
        members.share(s, who, experiment.id, unknown=members.PAGE_EXPERIMENT_GONE)  # pick_experiment's answer
        s.scalars(select(Round.id).where(Round.id == pair.round_id).with_for_update(read=True)).all()
        s.refresh(experiment)
        if experiment.status == "finished":  # its win rates are final: a vote now would change them after the fact
            raise Conflict(f"experiment {experiment.name!r} is finished; its comparisons are closed and nothing was saved")
        # one rater's votes one at a time: two votes sent at once on two pairs sharing an image both passed the
        # blind rule's check before either committed (PostgreSQL; found by review)
        s.scalars(select(Rater.id).where(Rater.id == who.rater_id).with_for_update()).all()
        if choice == "skip" and pair.id in comparisons.skipped_pairs(session=s, rater_id=who.rater_id, pair_ids=[pair.id]):
            return "skipped: this pair is not shown to you again"  # skipping twice is one skip, as before
        if not comparisons.may_answer(session=s, pair_id=pair.id, rater_id=who.rater_id):
            raise Conflict(f"pair {pair_id} is not one you are offered (a pair you skipped, or one that shares an image "
                           "with a pair you have answered); nothing was saved")
        if choice == "skip":  # can't judge (or an image that does not load): set aside for this rater, counted nowhere
            comparisons.record_skip(session=s, pair_id=pair_id, rater_id=who.rater_id)
            return "skipped: this pair is not shown to you again"
        comparisons.record_vote(session=s, pair_id=pair_id, rater_id=who.rater_id, choice=choice)
    return f"saved: {CHOICES[choice]}"


# ---------------------------------------------------------------------------------------------
# the dashboard's A/B table
# ---------------------------------------------------------------------------------------------

AB_HEADERS = ["Round", "Trained from", "Win rate vs previous [95% CI] (votes, pairs; whose preference)",
              "Win rate vs base [95% CI] (votes, pairs; whose preference)"]


def _reading(stats: dict[str, Any]) -> str:
    """Whose preference the interval is about (fourteenth review): these raters (fewer than
    ``comparisons.RATERS_TO_GENERALISE``: clustered by pair only) or raters like these (that many or more: by pair
    and rater); nothing where the raters are not known. The words are ``model_card.rater_reading``'s, which the
    exported model card uses too."""
    reading = model_card.rater_reading(stats)
    return f"; {reading}" if reading else ""


def _rate(stats: dict[str, Any] | None) -> str:
    if not stats or not stats["n"]:
        return "–"
    lo, hi = stats["ci95"]
    return f"{stats['rate']:.2f} [{lo:.2f}, {hi:.2f}] ({stats['n']}, {stats['pairs']}{_reading(stats)})"


def ab_rows(factory, experiment_id: int | None) -> list[list[str]]:
    """One row per trained round: the round it was trained from (both branches of a rollback are listed) and its
    A/B win rates (ties count half; 95% Wilson interval, widened by the design effect, at Student's t over the pairs,
    when several raters voted on one pair, and over the raters too from ``comparisons.RATERS_TO_GENERALISE`` raters:
    ``comparisons.clustered_win_interval``), each saying whose preference its interval is about."""
    with read_session(factory) as s:
        experiment = pick_experiment(s, experiment_id)
        if experiment is None:
            return []
        rates = comparisons.ab_win_rates(session=s, experiment_id=experiment.id)
        rows = []
        for r in repo.list_rounds(session=s, experiment_id=experiment.id):
            if r.index == 0:
                continue
            parent = comparisons.parent_of(session=s, round_id=r.id)
            rolled_back = " (rollback)" if r.parent_round_id is not None else ""
            got = rates.get(r.index, {})
            rows.append([str(r.index), f"{'base' if parent.index == 0 else parent.index}{rolled_back}",
                         _rate(got.get("vs_previous")), _rate(got.get("vs_base"))])
        return rows


# ---------------------------------------------------------------------------------------------
# Gradio builders (called by app.ui inside its Tabs / tabs)
# ---------------------------------------------------------------------------------------------


def build_tab(services, exp_state, who_of: Callable, shown: Callable, *, kind: str = "ab", label: str = "Compare",
              private: dict[str, Any] | None = None):
    """A tab comparing pairs of ``kind``; call inside ``gr.Tabs()``. ``who_of(request)`` finds the signed-in rater
    (raising gr.Error when refused), ``shown(fn)`` turns a refusal into a gr.Error."""
    private = private or {"api_visibility": "private"}
    factory, data_dir = services.factory, services.settings.data_dir
    with gr.Tab(label, id=f"compare-{kind}", elem_id=f"tab-compare-{kind}") as tab:
        gr.HTML(f"<style>{COMPARE_CSS}</style>", padding=False)
        view = gr.HTML(value="", elem_id=f"compare-{kind}", js_on_load=COMPARE_JS, apply_default_css=False)

    def on_show(exp_id, request: gr.Request):
        who = who_of(request)
        return shown(lambda: pair_html(factory, data_dir, who, exp_id, kind))

    def on_vote(exp_id, evt: gr.EventData, request: gr.Request):
        who = who_of(request)
        shown(lambda: vote(factory, who, exp_id, kind, _payload(evt)))
        return pair_html(factory, data_dir, who, exp_id, kind)

    tab.select(on_show, [exp_state], [view], **private)
    # redrawn when another experiment is picked: the old experiment's pair stayed and every vote was refused (review)
    exp_state.change(on_show, [exp_state], [view], **private)
    # the rating group's limit (4, as the Rate and Pairs tabs'): Gradio keeps the lowest any member sets, and this one
    # set none, so a first vote here put the group at the default
    view.vote(on_vote, [exp_state], [view], show_progress="hidden", concurrency_id="rating", concurrency_limit=4,
              **private)
    return tab


def build_dashboard(services, exp_state, dash_tab, dash_timer, who_of: Callable, can_see: Callable[[Who, Any], bool],
                    private: dict[str, Any] | None = None):
    """The A/B table inside the Dashboard tab (call inside it); refreshed with the dashboard, checked like it."""
    private = private or {"api_visibility": "private"}
    gr.Markdown("### Blind A/B: each round against the round it was trained from and against the base model\n"
                "Share of votes preferring the round's image (a tie counts half), with a 95% Wilson interval, "
                "widened where several raters voted on one pair (their votes count as fewer independent ones). "
                f"With fewer than {comparisons.RATERS_TO_GENERALISE} raters the interval is about these raters: "
                "which round they prefer, over prompts like these (\"about these N raters\"). From "
                f"{comparisons.RATERS_TO_GENERALISE} raters on it generalises over raters like these, widened "
                "where one rater's taste moves all their votes (\"over raters like these N\").")
    table = gr.Dataframe(headers=AB_HEADERS, value=[], interactive=False, wrap=False, elem_id="ab-table")

    def on_refresh(exp_id, request: gr.Request):
        who = who_of(request)
        exp_id = resolved_experiment_id(services.factory, exp_id)  # one experiment for the check and the rows
        if not can_see(who, exp_id):  # the same rule as the rest of the dashboard, checked here
            return []
        return ab_rows(services.factory, exp_id)

    dash_tab.select(on_refresh, [exp_state], [table], **private)
    dash_timer.tick(on_refresh, [exp_state], [table], show_progress="hidden", **private)
    return table


def build_rollback(services, exp_state, admin_of: Callable, shown: Callable, private: dict[str, Any] | None = None):
    """The admin's rollback control (call inside the Admin tab): train the next round from an earlier round."""
    private = private or {"api_visibility": "private"}
    with gr.Accordion("Rollback", open=False):
        gr.Markdown("Train the next round from an earlier round's adapter (0 = the base model) instead of the newest. "
                    "Closes the open round for training (or changes its queued training job). Every round stays in the "
                    "history; the dashboard shows which round each was trained from.")
        with gr.Row():
            source = gr.Number(label="Train the next round from round", value=0, precision=0, minimum=0, scale=0,
                               min_width=240, elem_id="rollback-round")
            button = gr.Button("Train next round from it", variant="stop", scale=0, min_width=220, elem_id="rollback")
        # asked first, as "Close round" is: the question names the round it closes, and the answer carries it, so a
        # round that opened meanwhile (auto-close, another admin) is not closed by a click meant for another
        with gr.Row(visible=False, elem_id="rollback-confirm-row") as confirm_row:
            question = gr.Markdown(elem_id="rollback-question")
            yes = gr.Button("Yes, train from it", variant="stop", scale=0, min_width=200, elem_id="rollback-yes")
        pending = gr.State(None)
        result = gr.Markdown(elem_id="rollback-result")

    @admin_only
    def on_rollback_ask(exp_id, from_index, request: gr.Request):
        who = admin_of(request)  # refuses a rater; ab.rollback_question and train_next_from check the role again
        text, index = shown(lambda: ab.rollback_question(services.factory, who, exp_id, from_index))
        return gr.update(visible=True), text, {"experiment": exp_id, "from": from_index, "round": index}

    @admin_only
    def on_rollback(pending_value, exp_id, request: gr.Request):
        who = admin_of(request)
        if not isinstance(pending_value, dict) or pending_value.get("experiment") != exp_id:
            raise gr.Error("There is nothing to confirm for this experiment; press the button again.", print_exception=False)
        message = shown(lambda: ab.train_next_from(services.factory, who, exp_id, pending_value["from"],
                                                   expected_index=pending_value["round"]))
        gr.Info(message)
        return message, gr.update(visible=False), None

    button.click(on_rollback_ask, [exp_state, source], [confirm_row, question, pending], concurrency_limit=1, **private)
    yes.click(on_rollback, [pending, exp_state], [result, confirm_row, pending], concurrency_limit=1, **private)
    return button
