"""The Rate tab: ``build(...)`` lays it out (a keyboard-first grid of the open round's images) and wires its events;
its handlers are the methods of ``RateHandlers``.

Each handler finds who is asking (``who_of(request)``: gr.Error when refused) and calls ``app.ui_rate``, which checks
every rating on the server. ``RateHandlers.view_outputs`` turns a ``ui_rate.View`` into the tab's outputs; the page
load and the experiment selector (app.ui) use it too. Handler names are looked up in tests (``demo.fns``): keep them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import ui_rate
from app.auth import Who
from app.ui_assets import MARKS_JS, grid_js
from db.engine import bound_refusal

log = logging.getLogger(__name__)


def event_payload(evt: gr.EventData | None) -> dict[str, Any]:
    """The data a custom event sent with ``trigger(name, data)`` (an empty dict when it sent none)."""
    raw = vars(evt).get("_data") if evt is not None else None
    return raw if isinstance(raw, dict) else {}


def action_number(payload: dict[str, Any] | None) -> int | None:
    """The page action's number (``seq``, 1 to 2**53 - 1; anything else is no number)."""
    seq = (payload or {}).get("seq")
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and 0 < seq < 2**53 else None


class Picks:
    """The experiment each browser session (``request.session_hash``) last picked, for the page's timers.

    A timer's tick reads its inputs (the Rate tab's state, the selected experiment) when Gradio starts it, and runs
    beside the experiment selector's handler: a tick in flight when the rater picked B answered for the old
    experiment A and wrote A's page over B's (found by review). The selector records the pick here first; a tick
    whose experiment is not the one recorded writes nothing. Two kinds: ``rate`` (the Rate tab's state, moved only by
    the page load and the selector) and ``shown`` (the selected experiment, which an admin's new experiment moves
    too). A session without a pick (or without a session: tests, the API) is never held back. An entry is dropped
    when its page closes (the demo's unload); at most ``MAX`` are kept, the oldest dropped first."""

    MAX = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: OrderedDict[str, dict[str, int | None]] = OrderedDict()

    @staticmethod
    def _key(request) -> str | None:
        key = getattr(request, "session_hash", None)
        return key if isinstance(key, str) and key else None

    def pick(self, request, **experiments: int | None) -> dict[str, int | None] | None:
        """Record the session's pick (``rate=``, ``shown=``); returns what was recorded before (for ``restore``)."""
        key = self._key(request)
        if key is None:
            return None
        with self._lock:
            before = self._by.pop(key, None)
            self._by[key] = {**(before or {}), **experiments}
            while len(self._by) > self.MAX:
                self._by.popitem(last=False)
            return dict(before) if before is not None else None

    def restore(self, request, before: dict[str, int | None] | None, **experiments: int | None) -> None:
        """Put back what ``pick(request, **experiments)`` replaced (the pick failed), unless a later pick came."""
        key = self._key(request)
        if key is None:
            return
        with self._lock:
            now = self._by.get(key)
            if now is None or any(now.get(kind) != exp for kind, exp in experiments.items()):
                return
            if before is None:
                del self._by[key]
            else:
                self._by[key] = dict(before)

    def stale(self, request, kind: str, experiment_id: Any) -> bool:
        """Whether a timer's input ``experiment_id`` is not the session's last pick of ``kind``."""
        key = self._key(request)
        if key is None:
            return False
        with self._lock:
            picked = (self._by.get(key) or {}).get(kind)
        return picked is not None and experiment_id != picked

    def forget(self, request) -> None:
        key = self._key(request)
        if key is not None:
            with self._lock:
                self._by.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by)


class Answered:
    """The newest page action (its ``seq``) each browser session (``request.session_hash``: one page load) has sent
    that the server did, so that an undo sent before it is not done after it.

    The page gives an action up when its handler overran its deadline or its queue stood still (app.ui_assets
    ACTION_OVERDUE, ACTION_QUEUED) and sends the next; the given-up event stays on the server and may still run. For
    a rating or skip that is safe (stored once; a new score is a new rating), but an undo that ran after a rating sent
    since took that rating back instead of the one meant (twelfth review, 6 Dec 2026). Each action's number is noted
    once it has written what it did (``note``: called in its transaction, under its round's lock, before the commit);
    an undo is done only if, under its round's lock, no action of its page with a higher number has been noted
    (``fresh``). Every rating, skip and undo of the round takes that lock, so a later action that did something is
    either noted already or waits behind the undo and lands after it, as sent. An action that did nothing (refused,
    failed, a skip of an image skipped already) is not noted: it was counted from its start, so a later rating that
    was refused still had the given-up undo refused, though taking it back was what was meant (thirteenth review,
    6 Dec 2026). Numbers are kept by session and round: an undo takes back a step of its own round only
    (``repo.undo_last``), so only a later action of that round can be what it would take back; one of another round
    (a kept action sent again for the round it was kept for) refused a given-up undo whose step was still the one
    meant (fourteenth review, 6 Dec 2026). At most ``MAX`` (session, round) pairs are kept, the oldest dropped first;
    a page closed is not forgotten (Gradio
    runs the demo's unload when the page's heartbeat ends, while an undo it gave up may still be running: forgotten,
    it took back a later rating; twelfth review, 6 Dec 2026); a restart forgets all (no event of the old server runs
    after it). A session without a hash (tests, the API) or an action without a number is never held back."""

    MAX = 10_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by: OrderedDict[tuple[str, int], int] = OrderedDict()

    def note(self, request, seq: int | None, round_id: int) -> None:
        """Note that the session's action ``seq`` wrote something in round ``round_id``."""
        key = Picks._key(request)
        if key is None or seq is None:
            return
        with self._lock:
            newest = max(seq, self._by.pop((key, round_id), seq))
            self._by[(key, round_id)] = newest
            while len(self._by) > self.MAX:
                self._by.popitem(last=False)

    def noter(self, request, payload: dict[str, Any] | None) -> Callable[[int], None]:
        """``note`` for the page action ``payload``, for its handler to call with the round it wrote in, once it
        has written what it did."""
        seq = action_number(payload)
        return lambda round_id: self.note(request, seq, round_id)

    def fresh(self, request, seq: int | None, round_id: int) -> bool:
        """Whether no action of the session numbered above ``seq`` has been noted in round ``round_id``."""
        key = Picks._key(request)
        if key is None or seq is None:
            return True
        with self._lock:
            return self._by.get((key, round_id), seq) <= seq


class RateHandlers:
    """The Rate tab's event handlers; ``warn(message)`` shows a refusal as a warning."""

    def __init__(self, services, who_of: Callable[[Any], Who], warn: Callable[[Any], None]):
        self.factory, self.data_dir, self.size = services.factory, services.settings.data_dir, services.batch_size
        self.who_of, self.warn = who_of, warn
        self.picks = Picks()  # the experiment each browser session last picked (app.ui's selector records it)
        self.answered = Answered()  # the newest action each browser session sent that the server took up

    def view_outputs(self, view: ui_rate.View, answers: dict[str, Any] | None = None) -> tuple:
        """(grid, marks, progress, state) for a view; its message, if any, shown as a warning. ``answers``: the page
        action's payload; its ``seq`` goes back in the marks as ``done``, which alone releases the page's next queued
        action (app.ui_assets)."""
        if view.message:
            self.warn(view.message)
        marks = view.marks
        seq = action_number(answers)
        if seq is not None:
            # an action refused (its message, nothing changed) says so: the page counts what it sent again after a
            # restart as done or refused (app.ui_assets ACTION_KEPT_SENT; twelfth review, 6 Dec 2026)
            # a kept rating not done as its image's score changed since says so too (thirteenth review, 6 Dec 2026)
            marks = json.dumps({**json.loads(marks), "done": seq, **({"refused": True} if view.message else {}),
                                **({"changed": True} if view.changed else {})})
        if view.keep_state:
            return (gr.skip() if view.grid is None else view.grid, gr.skip(), view.progress, gr.skip())
        return (gr.skip() if view.grid is None else view.grid, marks, view.progress, view.state)

    def answer_action(self, payload: dict[str, Any], act: Callable[[Who], ui_rate.View], request) -> tuple:
        """The outputs for a page action (a rating, a skip, an undo). An action that raised (the sign-in refused, the
        database locked or away, a bug) is still answered: its ``seq`` goes back as ``done`` with ``failed``, so the
        page sends its next queued action at once (it waited 30 s per action) and shows the card as it was. The
        error is shown in one sentence, and anything but a refusal is logged with its traceback."""
        try:
            who = self.who_of(request)
            view = act(who)
            if self.picks.stale(request, "rate", view.state.get("experiment_id")):
                # answered after the rater picked another experiment: what it did is kept (the rating, the skip),
                # but its page and state are the experiment left, which would go over the one picked (found by
                # review); only its number goes back, so that the page sends its next action
                if not view.keep_state:
                    ui_rate.release_batch(self.factory, who, view.state)
                seq = action_number(payload)
                return (gr.skip(), json.dumps({"stale": True, **({"done": seq} if seq is not None else {})}),
                        gr.skip(), gr.skip())
            return self.view_outputs(view, payload)
        except gr.Error as exc:  # a refusal (signed out, account removed): its sentence is for the rater
            self.warn(exc.message)
        except Exception as exc:
            if (busy := bound_refusal(exc)) is not None:
                # a lock held past the bound (SQLite's busy timeout, PostgreSQL's lock_timeout), or a statement cancelled
                # at PostgreSQL's statement_timeout: the transaction was rolled back, so the rater may send it again (not
                # by itself: a statement that ran that long may run as long again); no fault of the server's, no traceback
                log.warning("a Rate tab action ran past a database bound: %s", getattr(exc, "orig", None) or exc)
                self.warn(busy)
            else:
                log.exception("a Rate tab action failed")
                self.warn("the server could not handle this action (its log has the error); reload the page to see "
                          "what was saved")
        failed: dict[str, Any] = {"failed": True}
        seq = action_number(payload)
        if seq is not None:
            failed["done"] = seq
        return (gr.skip(), json.dumps(failed), gr.skip(), gr.skip())

    def on_rate(self, state, evt: gr.EventData, request: gr.Request):
        payload = event_payload(evt)
        return self.answer_action(payload, lambda who: ui_rate.rate(self.factory, self.data_dir, who, state, payload,
                                                                    batch_size=self.size,
                                                                    noted=self.answered.noter(request, payload)), request)

    def on_skip(self, state, evt: gr.EventData, request: gr.Request):
        payload = event_payload(evt)
        return self.answer_action(payload, lambda who: ui_rate.skip(self.factory, self.data_dir, who, state, payload,
                                                                    batch_size=self.size,
                                                                    noted=self.answered.noter(request, payload)), request)

    def on_undo(self, state, evt: gr.EventData, request: gr.Request):
        payload = event_payload(evt)
        seq = action_number(payload)
        return self.answer_action(payload, lambda who: ui_rate.undo(
            self.factory, self.data_dir, who, state, batch_size=self.size,
            fresh=lambda round_id: self.answered.fresh(request, seq, round_id), noted=self.answered.noter(request, payload)), request)

    def on_new_batch(self, state, request: gr.Request):
        who = self.who_of(request)
        return self.view_outputs(ui_rate.load_batch(self.factory, self.data_dir, who, state, batch_size=self.size))

    def on_rate_poll(self, state, request: gr.Request):
        """The timer. A tick whose state is of another experiment than the one the rater last picked (it read the
        state before the pick) writes nothing and leases nothing; one overtaken by a pick while it worked gives
        back the batch it leased."""
        who = self.who_of(request)
        if self.picks.stale(request, "rate", state.get("experiment_id") if isinstance(state, dict) else None):
            return gr.skip()
        view = ui_rate.poll(self.factory, self.data_dir, who, state, batch_size=self.size)
        if view is None:
            return gr.skip()
        if self.picks.stale(request, "rate", view.state.get("experiment_id")):
            if not view.keep_state:
                ui_rate.release_batch(self.factory, who, view.state)
            return gr.skip()
        return self.view_outputs(view)


@dataclass(frozen=True)
class RateTab:
    """What the rest of the page needs from the Rate tab."""

    handlers: RateHandlers
    outputs: list  # [grid, marks, progress, rate_state]: what view_outputs fills


def build(services, rate_state, who_of: Callable, warn: Callable, private: dict[str, Any]) -> RateTab:
    """The Rate tab (call inside ``gr.Tabs()``), its events wired to a ``RateHandlers``."""
    h = RateHandlers(services, who_of, warn)
    with gr.Tab("Rate", id="rate", elem_id="tab-rate"):
        progress = gr.HTML(elem_id="rate-progress")
        grid = gr.HTML(value="", elem_id="rating-grid", js_on_load=grid_js(), apply_default_css=False)
        marks = gr.HTML(value="", elem_id="rating-marks", html_template="", js_on_load=MARKS_JS)
        with gr.Row():
            new_batch_btn = gr.Button("New batch", size="sm", variant="secondary", scale=0)
            undo_btn = gr.Button("Undo last rating or skip (u)", size="sm", variant="secondary", scale=0)
        rate_timer = gr.Timer(services.rate_poll_s)

    rate_outputs = [grid, marks, progress, rate_state]
    quick = {**private, "show_progress": "hidden", "trigger_mode": "multiple", "concurrency_id": "rating",
             "concurrency_limit": 4}
    grid.rate(h.on_rate, [rate_state], rate_outputs, **quick)
    grid.skip(h.on_skip, [rate_state], rate_outputs, **quick)
    grid.undo(h.on_undo, [rate_state], rate_outputs, **quick)
    # the button goes through the page's ordered queue (as the u key does): it undoes the newest rating even while
    # ratings typed before the click are still on their way
    undo_btn.click(None, js="() => { if (window.__seiko && window.__seiko.send) window.__seiko.send('undo', {}); }",
                   **private)
    new_batch_btn.click(h.on_new_batch, [rate_state], rate_outputs, **private)
    rate_timer.tick(h.on_rate_poll, [rate_state], rate_outputs, show_progress="hidden", **private)
    return RateTab(handlers=h, outputs=rate_outputs)
