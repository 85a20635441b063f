"""The page's CSS and its JavaScript (the rating grid, keyboard first; its refused streams), as strings.

The rating grid is a ``gr.HTML`` whose ``js_on_load`` (GRID_JS) listens for keys and clicks and
sends custom events with ``trigger('rate' | 'skip' | 'undo', data)``; the Python listeners
``grid.rate(...)`` etc. receive the data as ``gr.EventData``. Actions go to the server one at a
time, in the order given: the next is sent when the server has answered the previous one (the
"marks" component's value changes, MARKS_JS), so a fast typist's ratings are never reordered.
A card shows a score as saved only once the server has written it.

STREAMS_JS (``streams_head``), which ``app.web_guard`` puts first in the page's head, handles the page's streams (its
stream of results and its heartbeat) refused by the server: retried a bounded number of times where that can help,
and said in one sentence, where Gradio's client reloaded the page or said nothing (eighth review, 5 Dec 2026). It
keeps the heartbeat open (one the server ends is opened again), and sends again an event the server refused before
it reached the app (``NOT_RUN_HEADER``) (ninth review, 6 Dec 2026). It ends a stream of results that has said nothing
for ACTION_SILENT_S, and one the network broke, with a sentence in place of Gradio's reload when the same server
answers again; a page action waits for its answer from the stream's last message (tenth review, 6 Dec 2026). Once
the server has started on an action it is waited for ACTION_RUN_S at most (a hung handler), and while the server cannot
be reached the actions not yet sent wait in the page's queue, said, and go in order once it answers; the silent bound
follows Gradio's heartbeat interval (eleventh review, 6 Dec 2026). An action whose queue has not moved for
ACTION_RUN_S is given up as a hung one is; the actions kept while the server cannot be reached are said lost if it
comes back restarted (the page reloads), and counted after the reload (read-only review of the eleventh's change).
They are now noted for the tab (sessionStorage) and sent again after the reload, in order, once, with the action in
flight where sending it again is safe; no undo is sent again (twelfth review, 6 Dec 2026: ACTION_KEPT_SENT).
"""

from __future__ import annotations

import json
import math

from gradio import utils as gradio_utils

from db.engine import BUSY_TIMEOUT_MS
from db.models import SCORE_MAX, SCORE_MIN

CSS = """
:root { --seiko-accent: #2563eb; --seiko-ok: #15803d; --seiko-muted: #6b7280; }
.seiko-header { display: flex; align-items: baseline; gap: 1rem; flex-wrap: wrap; }
.seiko-header h1 { margin: 0; font-size: 1.4rem; }
.seiko-banner { border-radius: 8px; padding: .6rem .9rem; margin: .25rem 0; font-size: .95rem; }
.seiko-banner.local { background: #fef3c7; border: 1px solid #f59e0b; color: #78350f; }
.seiko-banner.user { background: #eef2ff; border: 1px solid #c7d2fe; color: #1e3a8a; }
.seiko-banner a { margin-left: .6rem; }
.seiko-banner .seiko-logout { margin-left: .6rem; background: none; border: none; padding: 0; color: inherit;
  text-decoration: underline; cursor: pointer; font: inherit; }
.seiko-progress { font-size: 1rem; }
.seiko-progress .bar { height: 8px; background: #e5e7eb; border-radius: 4px; overflow: hidden; margin: .3rem 0 .2rem; }
.seiko-progress .bar > div { height: 100%; background: var(--seiko-ok); }
.seiko-progress .you { color: var(--seiko-muted); }
#rating-marks { display: none !important; }
/* STREAMS_JS: the page's one sentence about a refused stream (retrying, or what to do) */
#seiko-connection { position: fixed; top: .5rem; left: 50%; transform: translateX(-50%); z-index: 1100;
  max-width: min(44rem, 92vw); background: #fef3c7; border: 1px solid #f59e0b; color: #78350f; border-radius: 8px;
  padding: .5rem .9rem; font-size: .95rem; box-shadow: 0 2px 8px rgba(0,0,0,.15); }

.rg-help { color: var(--seiko-muted); font-size: .9rem; margin: .2rem 0 .6rem; }
.rg-help kbd, .seiko-kbd { border: 1px solid #cbd5e1; border-bottom-width: 2px; border-radius: 4px; padding: 0 .35em;
  font-family: ui-monospace, monospace; font-size: .85em; background: #f8fafc; color: #0f172a; }
.rg { display: grid; grid-template-columns: repeat(auto-fill, minmax(230px, 1fr)); gap: 14px; }
.rg-card { border: 2px solid #e5e7eb; border-radius: 10px; padding: 8px; background: #fff; outline: none;
  display: flex; flex-direction: column; gap: 6px; transition: border-color .1s, box-shadow .1s; cursor: pointer; }
.rg-card:focus, .rg-card.focused { border-color: var(--seiko-accent); box-shadow: 0 0 0 3px rgba(37,99,235,.25); }
.rg-img { background: #111827; border-radius: 6px; overflow: hidden; aspect-ratio: 1 / 1;
  display: flex; align-items: center; justify-content: center; }
.rg-img img { width: 100%; height: 100%; object-fit: contain; image-rendering: auto; }
.rg-img img.px { image-rendering: crisp-edges; image-rendering: pixelated; }  /* small images only (app.ui_images) */
.rg-missing { color: #fca5a5; font-size: .85rem; padding: 1rem; text-align: center; }
.rg-prompt { font-size: .95rem; font-weight: 600; color: #111827; min-height: 1.3em; overflow-wrap: anywhere; }
.rg-meta { font-size: .75rem; color: var(--seiko-muted); display: flex; justify-content: space-between; }
.rg-scores { display: grid; grid-template-columns: repeat(10, 1fr); gap: 2px; }
.rg-scores button { font: inherit; font-size: .78rem; padding: 3px 0; border: 1px solid #d1d5db; border-radius: 4px;
  background: #f9fafb; color: #111827; cursor: pointer; }
.rg-scores button:hover { background: #e0e7ff; }
.rg-scores button[aria-pressed="true"] { background: var(--seiko-ok); border-color: var(--seiko-ok); color: #fff; font-weight: 700; }
.rg-status { font-size: .8rem; min-height: 1.2em; color: var(--seiko-muted); }
.rg-card[data-state="rated"] { border-color: #86efac; }
.rg-card[data-state="rated"]:focus { border-color: var(--seiko-accent); }
.rg-card[data-state="rated"] .rg-status { color: var(--seiko-ok); font-weight: 600; }
.rg-card[data-state="pending"] .rg-status { color: var(--seiko-accent); }
.rg-card[data-state="skipped"], .rg-card[data-state="taken"] { opacity: .45; }
.rg-empty { padding: 2rem; text-align: center; color: var(--seiko-muted); border: 2px dashed #e5e7eb; border-radius: 10px; }

.seiko-worker { border: 1px solid #e5e7eb; border-radius: 8px; padding: .7rem .9rem; }
.seiko-worker .bar { height: 10px; background: #e5e7eb; border-radius: 5px; overflow: hidden; margin: .4rem 0; }
.seiko-worker .bar > div { height: 100%; background: var(--seiko-accent); }
.seiko-worker .err { color: #b91c1c; }
.seiko-evalgrid { overflow-x: auto; }
.seiko-evalgrid table { border-collapse: separate; border-spacing: 4px; width: auto; border: none !important; }
.seiko-evalgrid th, .seiko-evalgrid td { padding: 0; border: none !important; background: none !important;
  text-align: center; font-size: .8rem; }
.seiko-evalgrid th { padding: 2px 6px; color: #374151; }
.seiko-evalgrid th.rowhead { text-align: right; white-space: nowrap; color: #374151; font-weight: 500; }
.seiko-evalgrid img { width: 96px; height: 96px; image-rendering: auto; border-radius: 4px; display: block; cursor: zoom-in; }
.seiko-evalgrid img.px { image-rendering: crisp-edges; image-rendering: pixelated; }  /* small images only (app.ui_images) */
/* click an eval image to see it large (it takes the focus); click anywhere else to close it */
.seiko-evalgrid img:focus { position: fixed; top: 50%; left: 50%; transform: translate(-50%, -50%); z-index: 1000;
  width: min(80vw, 80vh); height: min(80vw, 80vh); object-fit: contain; outline: none; cursor: zoom-out;
  box-shadow: 0 0 0 100vmax rgba(15, 23, 42, .7); border-radius: 6px; }
.seiko-evalgrid .cap { display: none; }  /* under the enlarged image: which round, prompt and seed it is */
.seiko-evalgrid img:focus + .cap { display: block; position: fixed; left: 50%; top: calc(50% + min(40vw, 40vh) + 8px);
  transform: translateX(-50%); z-index: 1001; color: #f9fafb; font-size: 1rem; max-width: 90vw; text-align: center;
  pointer-events: none; }
.seiko-evalgrid .none { width: 96px; height: 96px; background: #f3f4f6; border-radius: 4px; }
"""

# A page action waits this long for its answer (GRID_JS), counted from the last thing the server said: the action's
# sending, or any message on the page's stream of results (Gradio's server sends one at least every heartbeat while an
# event waits: its heartbeat message, gradio.utils.get_heartbeat_rate). A stream of results silent this long is ended with
# STREAM_SILENT (STREAMS_JS). It was 30 s from the action's sending whatever the stream said: an action waiting its turn
# in a busy queue was given up while the server still answered, and the next went beside it (tenth review, 6 Dec 2026).
# The bound is twice the heartbeat and at least ACTION_SILENT_MIN_S: it was 30 s on the note that the heartbeat is 15 s,
# while GRADIO_HEARTBEAT_INTERVAL sets it (40 s there cut every waiting stream at 30 s; eleventh review, 6 Dec 2026)
ACTION_SILENT_MIN_S = 30
# ... and at most ACTION_SILENT_MAX_S (10 days): Gradio takes any positive GRADIO_HEARTBEAT_INTERVAL, inf included (no
# heartbeat), and twice inf or 1e308 was an OverflowError at this module's import (the app did not start), while from
# about 1.07e6 s the page's waits passed a browser timer's largest delay (2^31 - 1 ms), past which it fires at once
# (twelfth review, 6 Dec 2026). A heartbeat more than 5 days apart gets less than twice its interval
ACTION_SILENT_MAX_S = 10 * 24 * 3600


def _filled(js: str, values: dict) -> str:
    """``js`` with each placeholder name of ``values`` replaced by its value as JSON."""
    for name, value in values.items():
        js = js.replace(name, json.dumps(value))
    return js


def action_silent_s() -> int:
    """ACTION_SILENT_S for the heartbeat Gradio's server sends now (its GRADIO_HEARTBEAT_INTERVAL)."""
    return max(ACTION_SILENT_MIN_S, math.ceil(min(ACTION_SILENT_MAX_S, 2 * gradio_utils.get_heartbeat_rate())))


ACTION_SILENT_S = action_silent_s()

# Once the server has started on a page action (its stream's process_starts for the action's event), the page waits
# at most ACTION_RUN_S for the answer, heartbeats or not (GRID_JS). The rule: no server-side limit bounds a handler (app/
# sets none); what bounds one is the database's: a write transaction waits at most db.engine.BUSY_TIMEOUT_MS for SQLite's
# write lock, and one page action opens at most ACTION_WRITES of them (a rating or skip that ends the batch: its own
# write, auto-close's, the next batch's leases; an undo one), the work itself taking milliseconds; ACTION_SILENT_S more
# is the margin for the answer to reach the page. A handler past that is hung: heartbeats kept its stream alive, so the
# page waited for good and the card stayed pending (found by the tenth review, fixed by the eleventh, 6 Dec 2026). On
# PostgreSQL lock_timeout bounds each lock wait at the same BUSY_TIMEOUT_MS (db.engine), not each transaction, so an
# action that waits on several locks can outlast the bound while still working: the page's sentence then says that it
# may or may not be saved, and a score sent again is stored once. There the server's statements are bounded too
# (statement_timeout, db.engine.WEB_STATEMENT_TIMEOUT_MS, 30 s: under this deadline; twelfth review). An operator's own
# lock_timeout or statement_timeout is kept there only within the server's (db.engine._bound_waits: a statement bound
# of theirs longer than 30 s, or none, is cut to it, and a lock bound not below the statement bound is a third of it),
# so no bound of theirs outlasts this deadline (thirteenth review)
ACTION_WRITES = 3


def action_run_s() -> int:
    return ACTION_WRITES * math.ceil(BUSY_TIMEOUT_MS / 1000) + action_silent_s()


ACTION_RUN_S = action_run_s()
# What the page says then (#seiko-connection) and does: the card is free again, nothing is sent again by itself (the
# server keeps no id of a page's request to recognise one sent twice; a rating sent again with the same score is stored
# once, one undo step, ui_rate._rate, but an undo sent twice takes back two ratings)
ACTION_OVERDUE_RATE = ("The server started on your rating ({score}) {s} s ago and has not confirmed it, so this page "
                       "stopped waiting: it may or may not be saved. The card can be scored again; the same score is "
                       "stored only once.")
ACTION_OVERDUE = ("The server started on your last action {s} s ago and has not confirmed it, so this page stopped "
                  "waiting: it may or may not have been done, and your next action shows what was.")
# While the server cannot be reached (a request of the page waits for it, STREAMS_JS), the actions not yet sent wait in
# the page's queue, in order, and go once it answers (eleventh review: each was given up after 30 s, its rating lost)
# An action that waits its turn in the server's queue (not started: Gradio's estimation messages give its rank, the
# number of events of its concurrency group waiting ahead of it) is waited for while that queue moves, however long.
# The rule (found by a read-only review of the eleventh review's change, 6 Dec 2026: an action queued behind handlers
# that hung was waited on for good, heartbeats keeping its stream alive, the card pending, nothing said): a rank that
# has not moved for ACTION_RUN_S means no event ahead of it finished or started in that time, so every handler the
# server runs for that group has run ACTION_RUN_S at least, hung by the rule above. The page then treats the action as
# it treats one whose own handler hung: it says so in one sentence (how many wait ahead of it, from its rank), frees
# the card and sends the next; nothing is sent again. The event stays in the server's queue and may still run once the
# queue moves: for a rating that is safe (the same score is stored once; a new score is a new rating), and the
# sentence says what may still happen; an undo is refused there once a later action of the page has started (app.
# ui_rate_tab.Answered; twelfth review, 6 Dec 2026). {ahead} is one of ACTION_AHEAD (rank 0, 1, more).
ACTION_QUEUED_RATE = ("Your rating ({score}) is still waiting its turn on the server, behind {ahead}, and that queue "
                      "has not moved for {s} s, so this page stopped waiting: it may still be saved once the queue "
                      "moves. The card can be scored again; the same score is stored only once.")
ACTION_QUEUED = ("Your last action is still waiting its turn on the server, behind {ahead}, and that queue has not "
                 "moved for {s} s, so this page stopped waiting: it may still be done once the queue moves, and your "
                 "next action shows what was.")
ACTION_AHEAD = ("only the actions the server is running", "1 other action and those the server is running",
                "{n} other actions and those the server is running")
# It said the page "sends each, in order, once it answers again", but a server that answers again as another one (a
# restart: STREAMS_JS's sameServer) is Gradio's to handle, by a reload, and what the page kept was lost with it (found by
# a read-only review, 6 Dec 2026); then the reloaded page only said how many. Twelfth review (6 Dec 2026): what the page
# keeps is noted for this tab (sessionStorage: who is signed in, the experiment and round shown, each action's kind,
# image and score, at most ACTION_KEPT_MAX; nothing else) and sent again after the reload, in order, once (the note is
# dropped before the first goes), to that rater only, each rating and skip with the round it was kept for (thirteenth
# review: they were sent only where the reloaded page showed the same experiment and round) and each rating with the
# score the page knew for its image before it (done only if that still stands). The action in flight when the connection broke (it may or may not have arrived) is sent again too where that
# is safe: a rating or a skip sent again is stored once (ui_rate._rate, ui_rate.skip). An undo is never sent after the
# reload (it is not: each takes back one more step, and the server has no id to know one sent twice): one kept right
# after a kept rating or skip takes it back on the page, neither sent; any other is not sent and said, and one in flight
# is said to be unknown. One sentence then says what was sent and what was refused (ACTION_KEPT_SENT).
ACTION_KEPT_MAX = 100
ACTION_HELD = ("The server cannot be reached: this page keeps {n} waiting and sends each, in order, once it answers "
               "again; keep this page open. If the server restarts meanwhile, the page reloads and sends them then.")
# While a probe found the server restarted and the page waits for its reload, ACTION_HELD (the server "cannot be
# reached", the kept actions sent "once it answers") was false: it answers, and they are not sent (found by a read-only
# review, 6 Dec 2026). This is said instead until the reload.
ACTION_HELD_RESTARTED = "The server restarted: this page reloads now and sends the {n} it kept waiting after that."
# Where the tab's sessionStorage refused the note (full, disabled) or who is signed in is not known yet, ACTION_HELD's
# and ACTION_HELD_RESTARTED's promise (sent after the reload) was false: the page only warned in the console (found by
# a read-only review, 6 Dec 2026). These are said instead.
ACTION_HELD_UNNOTED = ("The server cannot be reached: this page keeps {n} waiting and sends each, in order, once it "
                       "answers again; keep this page open. They could not be noted for this tab, so a reload (the "
                       "page's own, if the server restarts meanwhile) loses them.")
ACTION_HELD_RESTARTED_UNNOTED = ("The server restarted: this page reloads now, and the {n} it kept waiting could not "
                                 "be noted for this tab, so they cannot be kept across the reload: do them again "
                                 "after it.")
# After the reload: "{parts}" is ACTION_KEPT_PARTS' parts that have a count, joined with "; "
ACTION_KEPT_SENT = "The page reloaded after the server restarted, with {n} kept: {parts}."
ACTION_KEPT_PARTS = {
    "saved": "{k} sent again and done",
    "refused": "{k} sent again and refused (its warning says why)",
    # an answer marked failed (the server could not handle it) or stale (another experiment picked meanwhile) was
    # counted as refused "(its warning says why)": neither has such a warning (found by a read-only review, 6 Dec 2026)
    "failed": "{k} sent again and not done, as the server could not handle it (its error says so)",
    # "not done" was untrue: the server judges it stale after the action committed (ui_rate_tab answer_action), and
    # only the page's answer is dropped (thirteenth review, 6 Dec 2026)
    "stale": "{k} sent again, answered only after another experiment was picked (the cards of its round show what was "
             "saved)",
    # a kept rating carries the score the page knew for its image, and is done only where that is still the score
    # (app.ui_rate ChangedElsewhere; thirteenth review, 6 Dec 2026)
    "changed": "{k} sent again and not done, as the image's score had changed since this page kept it (its warning "
               "says so)",
    # the reload may show another experiment or round than a kept action's, whose cards say nothing of it (found by
    # the thirteenth review's page fixes, 6 Dec 2026): the cards of its own round are named
    # a rating of a note of a page from before the thirteenth review (v 2) carries no score the page knew: it is done
    # only where the image has no score or already the score sent (app.ui_rate UNNOTED; fourteenth review, 6 Dec 2026)
    "unnotedRefused": "{k} sent again and not done, as its image had a score and the page that kept it, from before "
                      "the server's upgrade, had not noted the score it knew (its warning says so)",
    "unconfirmed": "{k} sent again and not confirmed (the cards of its round show what was saved)",
    "cancelled": "{k} not sent, as an undo kept after a rating or skip takes it back",
    "undo": "{k} not sent, as an undo sent now could take back another rating or skip than meant (press u again if "
            "you still want it)",
    "unsure": "the undo sent as the connection broke may or may not have been done",
    "over": "{k} not kept (over this page's limit), so not sent",
}
# A note older than ACTION_KEPT_AGE_S is not sent (found by a read-only review, 6 Dec 2026: the note had no age, and a
# tab reopened or duplicated (both copy sessionStorage) sent rate(A, 3) minutes after the rater rated A 5 on another
# page). The page notes afresh each time it says what it keeps, so also when it finds the server restarted, just
# before its reload (seconds): 120 s leaves room for a slow reload and no more. The note is dropped at log out too.
ACTION_KEPT_AGE_S = 120
ACTION_KEPT_OLD = ("This page found {n} kept by this tab more than {s} s ago, so none was sent (a newer rating, on "
                   "another page, may have replaced them): the cards show what was saved; do the rest again.")
ACTION_KEPT_ELSEWHERE = ("The page reloaded after the server restarted, with {n} kept for another experiment or round "
                         "than it shows now, so none was sent: the cards show what was saved; do the rest again.")
# The reloaded page shows the default experiment (or the round moved on): what was kept for another was said not sent
# (ACTION_KEPT_ELSEWHERE). Each kept rating and skip now goes with the round it was kept for, and the server checks it
# there (the image of that round, the rater one who may rate it, the round open: app.ui_rate parse_kept_round);
# ACTION_KEPT_ELSEWHERE is left for a note that names no round (thirteenth review, 6 Dec 2026). It said "they were
# sent for their own" of all {n}, though an undo is never sent (its part says so), and then "each rating and skip was
# sent", though one an undo kept after it takes back is not, nor one over the note's limit (read-only reviews): only
# those sent are said sent
ACTION_KEPT_SENT_ELSEWHERE = ("The page reloaded after the server restarted and shows another experiment or round than "
                              "the {n} it kept were for; those sent went to their own round: {parts}.")
ACTION_KEPT_UNREADABLE = ("This page found actions noted by an earlier page in a form it cannot read, so it sent none "
                          "of them: the cards show what was saved.")

GRID_JS = r"""
const grid = element;
const SILENT_MS = __SILENT_MS__, RUN_MS = __RUN_MS__;
const OVERDUE_RATE = __OVERDUE_RATE__, OVERDUE = __OVERDUE__, HELD = __HELD__;
const QUEUED_RATE = __QUEUED_RATE__, QUEUED = __QUEUED__, AHEAD = __AHEAD__;
const HELD_RESTARTED = __HELD_RESTARTED__, KEPT_MAX = __KEPT_MAX__, SCORES = __SCORES__;
const KEPT_SENT = __KEPT_SENT__, KEPT_PARTS = __KEPT_PARTS__, KEPT_ELSEWHERE = __KEPT_ELSEWHERE__;
const KEPT_UNREADABLE = __KEPT_UNREADABLE__;
const HELD_UNNOTED = __HELD_UNNOTED__, HELD_RESTARTED_UNNOTED = __HELD_RESTARTED_UNNOTED__;
const KEPT_AGE_MS = __KEPT_AGE_MS__, KEPT_OLD = __KEPT_OLD__, KEPT_SENT_ELSEWHERE = __KEPT_SENT_ELSEWHERE__;
const api = (window.__seiko = window.__seiko || {});
api.queue = []; api.busy = false; api.inflight = null; api.pending = api.pending || {};

function cards() { return Array.from(grid.querySelectorAll('.rg-card')); }
function byId(id) { return grid.querySelector('.rg-card[data-image-id="' + id + '"]'); }
function focusedCard() {
  const a = document.activeElement;
  return a && a.classList && a.classList.contains('rg-card') && grid.contains(a) ? a : null;
}
function firstOpen() { return grid.querySelector('.rg-card[data-state="open"]'); }
function current() {
  return focusedCard() || (api.focusId && byId(api.focusId)) || firstOpen() || cards()[0] || null;
}
function focusCard(card) {
  if (!card) return;
  api.focusId = card.dataset.imageId;
  card.focus({ preventScroll: true });
  card.scrollIntoView({ block: 'nearest', behavior: 'smooth' });
}
function nextOpen(from) {
  const cs = cards(); const i = cs.indexOf(from);
  for (let k = 1; k <= cs.length; k++) { const c = cs[(i + k) % cs.length]; if (c.dataset.state === 'open') return c; }
  return null;
}
function columns() {
  const cs = cards(); if (!cs.length) return 1;
  const top = cs[0].offsetTop; let n = 0;
  for (const c of cs) { if (c.offsetTop !== top) break; n++; }
  return Math.max(1, n);
}
function setStatus(card, text) { const s = card.querySelector('.rg-status'); if (s) s.textContent = text; }
function markPending(card, text) {
  const id = card.dataset.imageId;
  api.pending[id] = (api.pending[id] || 0) + 1;
  card.dataset.state = 'pending';
  setStatus(card, text);
}
// no answer (the connection dropped; a handler's error is answered, app.ui_rate_tab): go on with the next action.
// Only the answer that echoes this action's number releases the next (MARKS_JS), so a late answer releases nothing.
// The wait runs from the last thing the server said (the action's sending, or any message on the stream of results,
// which STREAMS_JS notes): an action waiting its turn in a busy queue, its stream answering, is waited for.
// Eleventh review (6 Dec 2026): (1) once the server has started on the action (STREAMS_JS notes its event's
// process_starts) it is waited for RUN_MS at most, heartbeats or not: a hung handler was waited on for good, the card
// pending. Then the page says so in one sentence and frees the card; nothing is sent again by itself (the server has no
// id to know a request sent twice). (2) While the server cannot be reached (a request of the page waits for it in
// STREAMS_JS) the action is not given up and the next are not sent: they wait here, their number said, and go in order
// once it answers; each was given up after 30 s, its rating lost. An action whose event the page ended (no answer to
// its POST, or its stream lost or silent: STREAMS_JS says so) is let go at once.
function streams() { return window.__seikoStreams; }
// the server cannot be reached (a request waits for it), or came back as another one (restarted: the page reloads)
function unreachable() { const s = streams(); return !!s && (s.waiting > 0 || !!s.restarted); }
function say(text) { const s = streams(); if (s && s.notice) s.notice('action', text); }
function actions(n) { return n === 1 ? '1 action' : n + ' actions'; }
// what the page keeps while the server cannot be reached, noted for this tab (sessionStorage): a reload (Gradio's, for
// a server that came back restarted) loses the page's memory, and the page it loads sends them again (resumeKept;
// app.ui_assets ACTION_KEPT_SENT, twelfth review of 6 Dec 2026). Noted with who is signed in (the tab is not the
// person: a reload may land on the sign-in page, another person signing in then; found by a read-only review, 6 Dec
// 2026) and the experiment and round shown, and sent only for that rater, there; dropped for anyone else.
const HELD_KEY = 'seiko-held-actions';
// who is signed in on this page (app.ui banner_html, which the page's load fills): the name, '' in local mode (one
// person, no accounts), undefined while not yet known
function rater() {
  const banner = document.getElementById('signed-in'), name = banner && banner.querySelector('b');
  if (name) return name.textContent;
  return document.getElementById('local-mode') ? '' : undefined;
}
// this tab's sessionStorage, or null where the browser refuses it (said, with what could not be done: ``what``)
function tabStore(what) {
  try {
    return window.sessionStorage || null;
  } catch (e) {
    console.warn(`this page cannot ${what} (sessionStorage)`, e);
    return null;
  }
}
function idOf(x) { return Number.isSafeInteger(x) && x > 0 ? x : null; }
// an action as noted: its kind and only what the server needs to do it again (no number: the page sending it numbers it)
function notedAction(a) {
  const d = a[1] || {};
  return a[0] === 'rate' ? ['rate', { image_id: d.image_id, score: d.score }]
    : a[0] === 'skip' ? ['skip', { image_id: d.image_id }] : ['undo', {}];
}
const isScore = (x) => Number.isInteger(x) && x >= SCORES[0] && x <= SCORES[1];
// an action of a note of version v: from 3 on a rating carries the score the page knew before it (prior, 'none': no
// score); a note of 2 (a page before it, across the restart that is the upgrade) is read, its ratings sent with the
// prior 'unknown' (resumeKept)
function validAction(a, v) {
  if (!Array.isArray(a) || a.length !== 2 || !a[1] || typeof a[1] !== 'object' || Array.isArray(a[1])) return false;
  const [kind, d] = a, keys = Object.keys(d).sort().join(','), image = idOf(d.image_id) !== null;
  if (kind === 'rate') {
    const prior = v === 2 ? keys === 'image_id,score' : keys === 'image_id,prior,score' && (d.prior === 'none' || isScore(d.prior));
    return prior && image && isScore(d.score);
  }
  if (kind === 'skip') return keys === 'image_id' && image;
  return kind === 'undo' && keys === '';
}
// what a page before this one noted: the note, 'unreadable' (not JSON, or not the form noteHeld writes: an older page's,
// another script's, edited), or null (nothing)
function notedBefore(store) {
  let raw = null, note = null;
  try {
    raw = store.getItem(HELD_KEY);
  } catch (e) {
    console.warn('this page cannot read the actions it kept (sessionStorage)', e);
    return null;
  }
  if (raw === null) return null;
  try {
    note = JSON.parse(raw);
  } catch (e) {
    console.warn('the actions this page kept were noted in a form it cannot read (sessionStorage)', e);
    return 'unreadable';
  }
  const idOrNull = (x) => x === null || idOf(x) !== null;
  const v = note && note.v, valid = (a) => validAction(a, v);
  const ok = !!note && typeof note === 'object' && (v === 2 || v === 3) && typeof note.who === 'string'
    && note.who.length <= 200 && idOrNull(note.experiment) && idOrNull(note.round) && (note.sent === null || valid(note.sent))
    && Array.isArray(note.actions) && note.actions.length <= KEPT_MAX && note.actions.every(valid)
    && Number.isSafeInteger(note.over) && note.over >= 0 && Number.isSafeInteger(note.at);
  if (!ok) console.warn('the actions this page kept were noted in a form it cannot read (sessionStorage)', raw.slice(0, 200));
  return ok ? note : 'unreadable';
}
function dropNote(store) {
  try {
    store.removeItem(HELD_KEY);
  } catch (e) {
    console.warn('this page cannot drop the note of the actions it kept (sessionStorage)', e);
  }
}
// the action in flight (it may or may not have arrived) and those waiting, the first KEPT_MAX of them, with when they
// were noted (at: a note older than KEPT_AGE_MS is not sent); nothing kept, or who is signed in not known: no note.
// Whether they are noted (false: the storage refused, or who is signed in not known; said by held)
function noteHeld() {
  const store = tabStore('note the actions it keeps');
  if (!store) return false;
  const who = rater(), marks = api.marks || {}, kept = api.queue.slice(0, KEPT_MAX).map(notedAction);
  if (!(api.inflight || kept.length) || who === undefined) { dropNote(store); return false; }
  api.noted = true;  // dropped once the server answers again (unheld)
  const sent = api.inflight ? notedAction(api.inflight) : null, cards = marks.cards || {};
  withPriors(sent, kept, (id) => { const m = cards[String(id)]; return m && isScore(m.score) ? m.score : 'none'; });
  try {
    store.setItem(HELD_KEY, JSON.stringify({ v: 3, who, experiment: idOf(marks.experiment), round: idOf(marks.round),
      sent, actions: kept, over: api.queue.length - kept.length, at: Date.now() }));
    return true;
  } catch (e) {  // full, or refused: no note rather than an older one (sent again after a reload)
    console.warn('this page cannot note the actions it keeps (sessionStorage)', e);
    dropNote(store);
    return false;
  }
}
// Each kept rating gets the score the page knew for its image before it (prior; 'none': no score): the page's marks
// (what the server last said), then the kept ratings before it in the order the reloaded page would do them
// (resendPlan: a rating an undo right after it takes back leaves the score as it was). The server does a kept rating
// only if that is still the image's score, so a note sent again by a duplicated or reopened tab does not overwrite a
// newer score given elsewhere (app.ui_rate ChangedElsewhere; thirteenth review, 6 Dec 2026). known(id): the score
// the page knew for an image no kept rating before it scores
function withPriors(sent, kept, known) {
  const chain = new Map();
  for (const e of resendPlan(sent, kept).entries) {
    if (e.a[0] !== 'rate') continue;
    const id = e.a[1].image_id;
    e.a[1].prior = chain.has(id) ? chain.get(id) : known(id);
    if (!e.gone) chain.set(id, e.a[1].score);
  }
}
function held() {  // the actions not yet sent while the server cannot be reached, said with their number
  const n = api.queue.length;
  api.holding = n > 0;
  const noted = noteHeld();
  const s = streams();  // another server answered: the page reloads now and sends them after (resumeKept)
  const restarted = !!(s && s.restarted);
  const text = noted ? (restarted ? HELD_RESTARTED : HELD) : (restarted ? HELD_RESTARTED_UNNOTED : HELD_UNNOTED);
  say(n ? text.replace('{n}', actions(n)) : '');
}
function unheld() {  // the server answers again: what was kept goes now, its note dropped
  if (api.noted) {
    api.noted = false;
    const store = tabStore('drop the note of the actions it kept');
    if (store) dropNote(store);
  }
  if (api.holding) say('');
  api.holding = false;
}
function overdue(action) {
  const s = String(RUN_MS / 1000);
  return action[0] === 'rate' ? OVERDUE_RATE.replace('{score}', action[1].score).replace('{s}', s)
    : OVERDUE.replace('{s}', s);
}
// (3) An action waiting its turn in the server's queue (not started) is waited for while its rank moves; a rank that
// has not moved for RUN_MS means every handler ahead of it has run that long, hung by the rule of (1): the page says
// so (how many wait ahead, from the rank), frees the card and sends the next, as in (1) (app.ui_assets ACTION_QUEUED)
function stuck(action, rank) {
  const ahead = AHEAD[Math.min(rank, 2)].replace('{n}', rank), s = String(RUN_MS / 1000);
  return (action[0] === 'rate' ? QUEUED_RATE.replace('{score}', action[1].score) : QUEUED)
    .replace('{ahead}', ahead).replace('{s}', s);
}
function waited() {
  const s = streams();
  const seq = api.inflight ? api.inflight[1].seq : undefined;
  if (s && s.ended && s.ended(seq)) { api.ack(); return; }  // its event ended by the page, said there
  if (unreachable()) { held(); api.timer = setTimeout(waited, SILENT_MS); return; }  // kept until it answers
  const since = Math.max(api.sentAt || 0, (s && s.answeredAt) || 0, (s && s.backAt) || 0);
  const started = s && s.startedAt ? s.startedAt(seq) : undefined;
  const queued = started === undefined && s && s.queuedAt ? s.queuedAt(seq) : undefined;  // {rank, since}
  const deadline = started !== undefined ? started + RUN_MS : queued ? queued.since + RUN_MS : Infinity;
  const left = Math.min(since + SILENT_MS, deadline) - Date.now();
  if (left > 0) { api.timer = setTimeout(waited, left); return; }
  if (Date.now() >= deadline && api.inflight) {
    say(started !== undefined ? overdue(api.inflight) : stuck(api.inflight, queued.rank));
  }
  api.ack();
}
function pump() {
  if (api.busy || !api.queue.length) return;
  if (unreachable()) { held(); return; }  // sent once the server answers again (s.onChange)
  if (api.holding || api.noted) unheld();
  api.busy = true;
  api.inflight = api.queue.shift();
  clearTimeout(api.timer);
  api.sentAt = Date.now();
  api.timer = setTimeout(waited, SILENT_MS);
  trigger(api.inflight[0], api.inflight[1]);
}
// STREAMS_JS calls this when the server could not be reached or answers again, or an event's state changed
if (streams()) {
  streams().onChange = () => {
    if (api.busy) { clearTimeout(api.timer); waited(); } else { pump(); }
    if ((api.holding || api.noted) && !unreachable()) unheld();
  };
}
// answered: the server's answer came (marks: MARKS_JS's, refused, failed or stale where it did not do the action)
api.ack = function (answered, marks) {
  clearTimeout(api.timer);
  const done = api.inflight; api.inflight = null; api.busy = false;
  if (done && done[1] && done[1].image_id !== undefined) {
    const id = String(done[1].image_id);
    api.pending[id] = Math.max(0, (api.pending[id] || 1) - 1);
  }
  if (answered && !api.holding) say('');  // an answer: a sentence about an earlier action is done with
  if (done && api.resent && api.resent.seqs.delete(done[1].seq)) {  // one sent again after the reload
    const r = api.resent;
    if (!answered) r.unconfirmed++;
    else if (marks && marks.failed) r.failed++;
    else if (marks && marks.stale) r.stale++;
    else if (marks && marks.changed) r[r.unnoted.has(done[1].seq) ? 'unnotedRefused' : 'changed']++;
    else if (marks && marks.refused) r.refused++;
    else r.saved++;
    if (!r.seqs.size) sayResent();
  }
  if (api.marks) api.applyMarks(api.marks);
  pump();
};
function send(name, data) {
  api.seq = (api.seq || 0) + 1;  // the server echoes it as marks.done with its answer (app.ui_rate_tab)
  api.queue.push([name, Object.assign({}, data, { seq: api.seq })]);
  pump();
  if (unreachable()) held();  // one more waiting, said
}
// the page's Undo button queues its undo here too, behind the ratings still on their way (app.ui_rate_tab): sent
// straight to the server, a click overtook them and took back an older rating (found by review, 3 Dec 2026)
api.send = send;

function rate(card, score) {
  if (!card || card.dataset.state === 'taken') return;
  markPending(card, 'saving ' + score + '…');
  send('rate', { image_id: Number(card.dataset.imageId), score: score });
  const next = nextOpen(card);
  focusCard(next || card);
}
function skip(card) {
  if (!card || card.dataset.state !== 'open') return;
  markPending(card, 'skipping…');
  send('skip', { image_id: Number(card.dataset.imageId) });
  focusCard(nextOpen(card) || card);
}

api.applyMarks = function (marks) {
  resumeKept();  // the page's first marks: the experiment and round it shows
  const info = (marks && marks.cards) || {};
  for (const card of cards()) {
    const id = card.dataset.imageId;
    if (api.pending[id]) continue;
    const m = info[id] || {};
    const state = m.state || 'open';
    card.dataset.state = state;
    card.dataset.score = m.score || '';
    for (const b of card.querySelectorAll('button[data-score]')) {
      b.setAttribute('aria-pressed', String(m.score !== undefined && Number(b.dataset.score) === m.score));
    }
    setStatus(card, m.status || '');
  }
};

function onKey(e) {
  if (!grid.isConnected) { document.removeEventListener('keydown', onKey); return; }
  if (grid.offsetParent === null) return;  // the Rate tab is not shown
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const t = e.target;
  if (t && t.closest && t.closest('input, textarea, select, [contenteditable="true"], [role="listbox"]')) return;
  const k = e.key;
  // a held key repeats: a rating, skip or undo key acts once per press, not once per repeat (a held digit rated
  // card after card, the focus moving on each time)
  if (e.repeat && (/^[0-9]$/.test(k) || 'sSuU'.includes(k))) { e.preventDefault(); return; }
  if (/^[0-9]$/.test(k)) { e.preventDefault(); rate(current(), k === '0' ? 10 : Number(k)); return; }
  if (k === 's' || k === 'S') { e.preventDefault(); skip(current()); return; }
  if (k === 'u' || k === 'U') { e.preventDefault(); send('undo', {}); return; }
  const step = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -columns(), ArrowDown: columns() }[k];
  if (step !== undefined) {
    const cs = cards(); if (!cs.length) return;
    e.preventDefault();
    const i = cs.indexOf(current());
    focusCard(cs[Math.min(cs.length - 1, Math.max(0, (i < 0 ? 0 : i) + step))]);
  }
}
if (window.__seikoKeyHandler) document.removeEventListener('keydown', window.__seikoKeyHandler);
window.__seikoKeyHandler = onKey;
document.addEventListener('keydown', onKey);

grid.addEventListener('click', (e) => {
  const card = e.target.closest('.rg-card'); if (!card) return;
  const b = e.target.closest('button[data-score]');
  if (b) { rate(card, Number(b.dataset.score)); } else { focusCard(card); }
});
grid.addEventListener('focusin', (e) => {
  const card = e.target.closest && e.target.closest('.rg-card'); if (card) api.focusId = card.dataset.imageId;
});

// what a page before the reload kept (noteHeld), sent again once, in order, to the rater who kept it (once who is
// signed in is known: the page's load fills the banner with the grid's value), once the page has its marks, each for
// the round it was kept for (thirteenth review, 6 Dec 2026): the note is dropped before the first goes, so a further
// reload sends nothing again; dropped for anyone else, nothing said. Twelfth review, 6 Dec 2026 (the page only said how many were lost).
let keptChecked = false, kept = null;  // the rater's note, waiting for the page's marks
function resumeKept() {
  if (!keptChecked) {
    const who = rater(), store = tabStore('read the actions it kept');
    if (who === undefined) return;
    keptChecked = true;
    if (!store) return;
    const note = notedBefore(store);
    if (note !== null) dropNote(store);
    if (note === 'unreadable') say(KEPT_UNREADABLE);
    else if (note && note.who === who) kept = note;
  }
  if (!kept || !api.marks) return;
  const note = kept, n = note.actions.length + (note.sent ? 1 : 0) + note.over;
  kept = null;
  if (!n) return;
  if (Date.now() - note.at > KEPT_AGE_MS) {  // a tab reopened or duplicated later: a newer rating may stand since
    say(KEPT_OLD.replace('{n}', actions(n)).replace('{s}', String(KEPT_AGE_MS / 1000)));
    return;
  }
  // another experiment or round shown (the reload shows the default): each rating and skip goes with the round it
  // was kept for, which the server checks (thirteenth review, 6 Dec 2026: they were said not sent); a note with no
  // round (none was shown) has nowhere to send them
  const elsewhere = note.experiment !== idOf(api.marks.experiment) || note.round !== idOf(api.marks.round);
  // a note of 2 (a page from before the thirteenth review, across the restart that is the upgrade) did not note the
  // score its page knew: its ratings go with prior 'unknown' (a kept rating before them in the note: that one's
  // score), which the server does only where the image has no score or already has the score sent, so they never
  // overwrite a score given elsewhere (fourteenth review, 6 Dec 2026: they were sent with no prior, done over any)
  if (note.v === 2) withPriors(note.sent, note.actions, () => 'unknown');
  const plan = resendPlan(note.sent, note.actions);
  if (elsewhere && note.round === null) {
    say(KEPT_ELSEWHERE.replace('{n}', actions(n)));
    return;
  }
  api.resent = { n, elsewhere, saved: 0, changed: 0, unnotedRefused: 0, refused: 0, failed: 0, stale: 0,
                 unconfirmed: 0, cancelled: plan.cancelled, undo: plan.undo, over: note.over, unsure: plan.unsure,
                 seqs: new Set(), unnoted: new Set() };
  for (const [kind, data] of plan.send) {
    send(kind, note.round === null ? data : Object.assign({}, data, { round: note.round }));
    api.resent.seqs.add(api.seq);
    if (data.prior === 'unknown') api.resent.unnoted.add(api.seq);
  }
  if (!plan.send.length) sayResent();
}
// what to send again: the action in flight (sent: a rating or skip sent again is stored once), then those kept, in
// order; an undo is not sent (each takes back one more step): one right after a kept rating or skip takes it back here,
// neither sent (the same as both sent, done in order), any other is left to the rater (what it would take back is not
// known: an action of the server's past, one the restart may have lost, or the one in flight), and an undo in flight
// (sent: unsure) may or may not have been done
function resendPlan(sent, kept) {
  const entries = [], stack = [];
  let cancelled = 0, undo = 0;
  const unsure = !!sent && sent[0] === 'undo';
  if (sent && !unsure) { entries.push({ a: sent, kept: false }); stack.push(entries[0]); }
  for (const a of kept) {
    if (a[0] !== 'undo') {
      const e = { a, kept: true };
      entries.push(e);
      stack.push(e);
      continue;
    }
    const top = stack.pop();
    if (top && top.kept) {
      top.gone = true;
      cancelled += 2;
    } else {
      undo += 1;
    }
  }
  return { entries, send: entries.filter((e) => !e.gone).map((e) => e.a), cancelled, undo, unsure };
}
function sayResent() {  // one sentence: what was sent again and what came of it, what was not sent and why
  const r = api.resent, parts = [];
  api.resent = null;
  if (r.unsure) parts.push(KEPT_PARTS.unsure);
  for (const key of ['saved', 'changed', 'unnotedRefused', 'refused', 'failed', 'stale', 'unconfirmed', 'cancelled',
                     'undo', 'over']) {
    if (r[key]) parts.push(KEPT_PARTS[key].replace('{k}', r[key]));
  }
  say((r.elsewhere ? KEPT_SENT_ELSEWHERE : KEPT_SENT).replace('{n}', actions(r.n)).replace('{parts}', parts.join('; ')));
}
function settle() {
  resumeKept();
  api.pending = {};
  if (api.marks) api.applyMarks(api.marks);
  const keep = api.focusId && byId(api.focusId);
  const target = (keep && keep.dataset.state === 'open') ? keep : (firstOpen() || keep || cards()[0]);
  if (target && !document.querySelector('input:focus, textarea:focus')) focusCard(target);
}
// log out (app.ui banner_html's form, posted to /logout) drops the note: the same rater signing in again on this tab
// is not sent what was kept before (found by a read-only review, 6 Dec 2026)
function onLogout(e) {
  const form = e.target;
  if (!form || !form.getAttribute || !/\/logout\/?$/.test(form.getAttribute('action') || '')) return;
  const store = tabStore('drop the note of the actions it kept');
  if (store) dropNote(store);
}
if (window.__seikoLogoutHandler) document.removeEventListener('submit', window.__seikoLogoutHandler, true);
window.__seikoLogoutHandler = onLogout;
document.addEventListener('submit', onLogout, true);
watch('value', settle);
settle();
"""


def grid_js() -> str:
    """GRID_JS with its waits (for the heartbeat Gradio's server sends now) and sentences."""
    values = {"__SILENT_MS__": 1000 * action_silent_s(), "__RUN_MS__": 1000 * action_run_s(),
              "__OVERDUE_RATE__": ACTION_OVERDUE_RATE, "__OVERDUE__": ACTION_OVERDUE, "__HELD__": ACTION_HELD,
              "__QUEUED_RATE__": ACTION_QUEUED_RATE, "__QUEUED__": ACTION_QUEUED, "__AHEAD__": list(ACTION_AHEAD),
              "__HELD_RESTARTED__": ACTION_HELD_RESTARTED, "__KEPT_MAX__": ACTION_KEPT_MAX,
              "__SCORES__": [SCORE_MIN, SCORE_MAX], "__KEPT_SENT__": ACTION_KEPT_SENT, "__KEPT_PARTS__": ACTION_KEPT_PARTS,
              "__KEPT_ELSEWHERE__": ACTION_KEPT_ELSEWHERE, "__KEPT_UNREADABLE__": ACTION_KEPT_UNREADABLE,
              "__HELD_UNNOTED__": ACTION_HELD_UNNOTED, "__HELD_RESTARTED_UNNOTED__": ACTION_HELD_RESTARTED_UNNOTED,
              "__KEPT_AGE_MS__": 1000 * ACTION_KEPT_AGE_S, "__KEPT_OLD__": ACTION_KEPT_OLD,
              "__KEPT_SENT_ELSEWHERE__": ACTION_KEPT_SENT_ELSEWHERE}
    return _filled(GRID_JS, values)

MARKS_JS = r"""
const api = (window.__seiko = window.__seiko || {});
function apply() {
  const raw = props.value || '';
  if (!raw) return;
  const marks = JSON.parse(raw);
  // only the answer to the action in flight releases the next one: any new marks did, so a late answer (after the
  // time-out) or a render that answered nothing (a new batch, the poll) let 'u' run beside the rating it was to
  // take back, which then took back the one before (found by review, 4 Dec 2026)
  const answered = api.inflight && api.ack && marks.done !== undefined && marks.done === api.inflight[1].seq;
  // an action the server could not handle (app.ui_rate_tab answer_action) is answered with 'failed' and no cards:
  // the cards keep the last marks (the failed card shows its state before the action) and the next action goes
  // 'stale' (the same for the cards): an action answered after the rater picked another experiment, whose page is shown
  if (marks.failed || marks.stale) { if (answered) api.ack(true, marks); return; }
  api.marks = marks;
  if (answered) { api.ack(true, marks); return; }
  if (api.applyMarks) api.applyMarks(marks);
}
watch('value', apply);
apply();
"""

# What the page says when the server refuses one of its two streams (STREAMS_JS): Gradio's stream of results
# (GET .../queue/data) and its heartbeat (GET .../heartbeat/H), or an event (POST .../queue/join) that was not run.
# Each refusal's own sentence comes first.
# A refusal worth retrying is retried after these waits, then no more. Together (27 s) under the 30 s a rated card
# waits for its answer (GRID_JS's pump): waits of 1-30 s (61 s) outlasted it, the card showed as open again before the
# late answer came, and a person who scored it again sent a second rating (review of the eighth review's script).
# The 27 s are one action's, counted from its event's first POST: the stream of results that serves the event has
# what is left of them (each wait cut to the time left; none left, no more tries), so an event retried for 27 s and
# then its refused stream retried for another 27 s no longer outlast the card's 30 s (ninth review, 6 Dec 2026)
STREAM_WAITS_S = (1, 2, 4, 8, 12)
STREAM_RETRIED = (409, 429, 503)  # the connection caps (429, 503: app.net_limits), one stream at a time (409: web_guard)
STREAM_SAID = (400, 401, 403, 404)  # web_guard's other refusals of a stream: said at once (retrying cannot cure them)
STREAM_RETRYING = "This page tries again by itself in {s} s."
STREAM_GAVE_UP = ("This page has stopped trying for now: your next action tries again; if that fails too, wait a few "
                  "minutes, then reload the page.")  # Gradio's client opens the stream again at the next event
STREAM_RELOAD = "If your next action fails too, reload this page."  # the next event opens a stream of its own
STREAM_SIGNED_OUT = "Your sign-in session has ended; reload this page to sign in again."
STREAM_NO_SENTENCE = "The server refused this page's connection ({status})."
STREAM_UNREACHABLE = "The server cannot be reached."  # the heartbeat's request failed: no answer at all
STREAM_ENDED = "The server keeps ending this page's connection."  # heartbeats ended by the server, each soon after opening
# An event refused before it reached the app (NOT_RUN_HEADER) is sent again after STREAM_WAITS_S; after the last:
EVENT_NOT_DONE = "Your last action was not carried out (the server refused it {n} times); do it again in a minute."
# The answer's header that says a refusal (429, 503) came before the request reached the app, so nothing it asked was
# done: app.net_limits' connection caps (written before the request is read) and web_guard's caps on an account's
# events. Only such an event is sent again: a rating sent twice is two undo steps (and an undo sent twice takes back
# two ratings), so one the app may have run is not.
NOT_RUN_HEADER = "x-seiko-not-run"
# The answer's header that says a refusal (403) is of an admin's event (``gradio_routes.admin_only``) to an account
# that is no longer an admin (an admin made a rater keeps the Admin tab until the page reloads). STREAMS_JS then notes
# it (``__seikoStreams.notAdmin``), and the Admin tab's events that the page fires by itself are sent no more
# (QUIET_ADMIN_JS): the tab's timer sent one every dashboard_refresh_s, each refused with its own toast, and a pick
# of an experiment four more (sixteenth review, 7 Dec 2026). The first refusal's toast says to reload the page; the
# others of the events that left with it (a pick's four, sent before any answer came) are refused without one, and an
# event the page sends after it was told (an explicit action) is told again. An event joined for an account that is
# an admin is answered with the header "0" (web_guard), which clears the flag: an admin made one again gets those
# events back at their page's next event, the Admin tab already selected or not (seventeenth review, 7 Dec 2026).
# The flag follows the answer whose role the server read newest, not the one that arrives last (an event joined for
# an admin just before a demotion, answered after a newer refusal, cleared it: eighteenth review, 7 Dec 2026) nor the
# one to the POST the page sent last (the events of one pick leave together and the server reads each one's role on
# its own, so one sent later may be read before the demotion: nineteenth review, 7 Dec 2026): each answer with the
# header says the account's role version (ROLE_VERSION_HEADER: ``Rater.role_version``, which each role change counts,
# read with the role), and the page keeps the role of the highest version it was told.
NOT_ADMIN_HEADER = "x-seiko-not-admin"
ROLE_VERSION_HEADER = "x-seiko-role-version"
# a JavaScript expression: whether this page was told so (false where STREAMS_JS is not in the page)
NOT_ADMIN_KNOWN = "Boolean(globalThis.__seikoStreams && globalThis.__seikoStreams.notAdmin)"
# ``js=`` of an Admin-tab event the page fires by itself (a pick of an experiment, the tab's select, its timer): run
# in the browser before the event is sent, it passes the inputs on, or, once NOT_ADMIN_KNOWN, throws: Gradio's client
# then sends nothing and shows nothing (the event's failure listeners run)
# Gradio lays its "Error" cover over the outputs of an event whose js= throws, as of one refused: STREAMS_JS lifts the
# covers of the outputs of every event whose js= says QUIET_NOT_SENT (found in the page's config), for COVER_WATCH_MS
QUIET_NOT_SENT = "this account is no longer an admin: not sent"
QUIET_ADMIN_JS = ("(...inputs) => { if (" + NOT_ADMIN_KNOWN + ") { globalThis.__seikoStreams.liftQuietCovers(); "
                  f"throw new Error('{QUIET_NOT_SENT}'); }} return inputs; }}")
# The stream of results said nothing for ACTION_SILENT_S (STREAMS_JS ends it; tenth review, 6 Dec 2026):
STREAM_SILENT = ("The server has not answered this page for {s} s, so the page stopped waiting: your last action may or "
                 "may not have been saved, and your next action shows what was.")
# The network dropped under the stream of results or an event's POST, and the same server answers again (STREAMS_JS):
STREAM_LOST = ("The connection to the server was lost: your last action may or may not have been saved, and your next "
               "action shows what was.")

# how long STREAMS_JS watches for Gradio's "Error" covers of a refused admin event's outputs, to lift them
COVER_WATCH_MS = 10_000

STREAMS_JS = r"""
(() => {
  // The page's streams refused by the server: app.net_limits' connection caps answer 429 or 503 before reading a
  // request (so whatever it is), app.web_guard may answer 409 (another stream reads the session), 404 (nothing waits
  // in the session), 401 (signed out). Gradio's client takes any refused stream of results for a lost connection
  // (its toast, then a reload 2 s later, in a loop while the refusals last), and a refused heartbeat for nothing
  // (never opened again). Found by the eighth review of 5 Dec 2026. Now (this script wraps the fetch Gradio's client
  // reads both with; web_guard puts it first in the page, before that client starts): a refusal worth retrying is
  // retried after WAITS_S, the wait said in #seiko-connection; one that is not (or the last) ends the events the page
  // waits on with its sentence (Gradio's error toast, as web_guard's _page_stream_error does), and a refused
  // heartbeat's sentence stays in #seiko-connection. Nothing reloads the page. Any other answer of a stream of results
  // (a proxy's 502 while the app restarts) is Gradio's to handle, as before.
  // Ninth review of 6 Dec 2026: (1) Gradio's client opens the heartbeat once (open_heartbeat: never again once it has
  // one, ended or not), so a heartbeat the server ended (a restart, a log out, a cap) or that could not be opened stayed
  // gone: the server dropped the page's session and the page never learnt that the server was gone or back. The
  // heartbeat Gradio gets is now this script's (keptHeartbeat): each one the server ends is opened again, and its
  // refusals and failures are retried after WAITS_S, said in #seiko-connection, until Gradio closes it. (2) An event
  // (POST .../queue/join) the caps refused was lost (Gradio's toast, the rating gone); one refused before it reached the
  // app (NOT_RUN header) is sent again after WAITS_S, and if every try is refused #seiko-connection says so.
  // (3) The retries' 27 s (WAITS_S together) were each request's: an event retried for 27 s, then its refused stream of
  // results retried for 27 s more, went past the 30 s a rated card waits before it shows as open again (GRID_JS), so a
  // second score could be sent. They are now the action's: an event's tries end 27 s after its first POST (its
  // deadline), and the stream of results opened for it (Gradio's client opens it once the event's POST is answered)
  // has only what is left of that deadline; each wait is cut to the time left, and none left ends the tries.
  if (window.__seikoStreams) return;
  const WAITS_S = __WAITS_S__, RETRIED = __RETRIED__, SAID = __SAID__;
  const RETRYING = __RETRYING__, GAVE_UP = __GAVE_UP__, RELOAD = __RELOAD__, SIGNED_OUT = __SIGNED_OUT__;
  const NO_SENTENCE = __NO_SENTENCE__, UNREACHABLE = __UNREACHABLE__, ENDED = __ENDED__;
  const NOT_DONE = __NOT_DONE__, NOT_RUN = __NOT_RUN__, NOT_ADMIN = __NOT_ADMIN__, ROLE_VERSION = __ROLE_VERSION__;
  const SILENT_MS = __SILENT_MS__, SILENT = __SILENT__, LOST = __LOST__, COVER_WATCH_MS = __COVER_WATCH_MS__;
  const QUIET = __QUIET__;
  const BUDGET_MS = 1000 * WAITS_S.reduce((a, b) => a + b, 0);  // one action's retries, its event's and its stream's
  const realFetch = window.fetch.bind(window);
  const said = { action: '', event: '', data: '', heartbeat: '' };  // action: GRID_JS's
  let resumeHeartbeat = null;  // set while a heartbeat that stopped trying waits for the page's next action
  let lastDeadline = null;  // the deadline of the action whose event's POST was answered last (the stream serves it)
  // eventsSent: the page's events' POSTs so far, each try of each (numbered in the order they leave); toldNotAdmin:
  // how many had been sent when a refusal last told the person that the account is no longer an admin (a NOT_ADMIN
  // refusal of an event first sent no later is not told again); roleVersion: the account's role version (ROLE_VERSION,
  // read by the server with the role) of the answer that last set notAdmin: an answer of a lower one says an older
  // role, whenever it was sent or arrives, and is not applied
  let eventsSent = 0, toldNotAdmin = 0, roleVersion = -1;
  // answeredAt: when the stream of results last said anything (Date.now()); GRID_JS waits for an action from then.
  // Eleventh review of 6 Dec 2026, for GRID_JS: waiting, how many of the page's requests wait for a server that gave no
  // answer (sameServer), and backAt, when it last answered again; startedAt(seq), when the server started on the page
  // action numbered seq (its event's process_starts), and ended(seq), whether this script ended its event (its POST
  // got no answer, or the stream serving it was lost or went silent); onChange, GRID_JS's, called when these change
  // restarted: a probe found another server than the page's (Gradio's client reloads the page)
  // notAdmin: an admin's event of this page was refused because its account is no longer an admin (NOT_ADMIN); the
  // Admin tab's events the page fires by itself are then not sent (QUIET_ADMIN_JS), until an event of the page is
  // joined for an admin again (NOT_ADMIN: 0)
  const streams = (window.__seikoStreams = { said, answeredAt: 0, waiting: 0, backAt: 0, onChange: null,
                                             restarted: false, notAdmin: false, sentenceOf,
                                             targetOf });
  const eventOf = new Map(), seqOf = new Map();  // a page action's seq <-> its event's id (the join's answer)
  const startedAt = new Map(), endedSeqs = new Set(), open = new Set();  // by event id; seqs; event ids not completed
  streams.startedAt = (seq) => startedAt.get(eventOf.get(seq));
  // queuedAt(seq): {rank, since} of the page action numbered seq while it waits its turn (its event's estimation
  // messages: rank, the events waiting ahead of it; since, when the rank was first heard or last moved)
  const ranked = new Map();  // by event id
  streams.queuedAt = (seq) => ranked.get(eventOf.get(seq));
  streams.ended = (seq) => seq !== undefined && endedSeqs.has(seq);
  streams.notice = (stream, text) => notice(stream, text);
  function changed() { if (typeof streams.onChange === 'function') streams.onChange(); }
  function forget(id) {  // an event answered: nothing more to know of it
    const seq = seqOf.get(id);
    seqOf.delete(id); open.delete(id); startedAt.delete(id); ranked.delete(id);
    if (seq !== undefined) eventOf.delete(seq);
  }
  function endOpen() {  // the events the stream of results served, ended by this script's sentence
    for (const id of open) {
      const seq = seqOf.get(id);
      if (seq !== undefined) endedSeqs.add(seq);
      forget(id);
    }
  }
  async function eventBody(request) {  // an event's POST body (Gradio's join), read beside the sending
    try {
      return JSON.parse(await request.clone().text());
    } catch (e) {
      console.warn('an event whose body is not JSON', e);
      return undefined;
    }
  }
  function actionSeq(body) {  // the page action's number an event carries (Gradio's join: event_data.seq)
    const seq = body && body.event_data && body.event_data.seq;
    return Number.isInteger(seq) ? seq : undefined;
  }
  async function joined(seq, response) {  // a page action's event joined the queue: its id, from the answer
    let id;
    try {
      id = (await response.clone().json()).event_id;
    } catch (e) {
      console.warn('a joined event whose answer is not JSON', e);
    }
    if (typeof id !== 'string') return;
    open.add(id);
    if (seq !== undefined) { eventOf.set(seq, id); seqOf.set(id, seq); }
  }
  function heard(message) {  // a message of the stream of results about an event
    if (!message || typeof message.event_id !== 'string') return;
    if (message.msg === 'estimation' && Number.isInteger(message.rank)) {
      const was = ranked.get(message.event_id);
      if (!was || was.rank !== message.rank) ranked.set(message.event_id, { rank: message.rank, since: Date.now() });
    }
    if (message.msg === 'process_starts') { startedAt.set(message.event_id, Date.now()); changed(); }
    if (message.msg === 'process_completed') forget(message.event_id);
  }

  function notice(stream, text) {  // the page's one sentence about its streams, '' for none
    said[stream] = text;
    const shown = said.action || said.event || said.data || said.heartbeat;
    let el = document.getElementById('seiko-connection');
    if (!el && !shown) return;
    if (!el) {
      el = document.createElement('div');
      el.id = 'seiko-connection';
      el.setAttribute('role', 'alert');
      document.body.appendChild(el);
    }
    el.textContent = shown;
    el.hidden = !shown;
  }

  // the refusal's sentence: {"detail": sentence} or plain text; else noSentence with the status (LOGIN_JS's too)
  function sentenceOf(response, text, noSentence = NO_SENTENCE) {
    const type = response.headers.get('content-type') || '';
    text = text.trim();
    if (type.includes('json')) {
      try {
        const detail = JSON.parse(text).detail;
        if (typeof detail === 'string') return detail;
        if (detail && typeof detail.error === 'string') return detail.error;
      } catch (e) {
        console.warn('a refused stream answered JSON that does not parse', e);
      }
    }
    return (type.startsWith('text/plain') && text.slice(0, 400)) || noSentence.replace('{status}', response.status);
  }

  function wait(ms, signal) {
    return new Promise((resolve, reject) => {
      if (signal && signal.aborted) { reject(signal.reason); return; }
      const id = setTimeout(resolve, ms);
      if (signal) signal.addEventListener('abort', () => { clearTimeout(id); reject(signal.reason); }, { once: true });
    });
  }

  // {response, text}: the answer, and (unless it is 2xx) what to tell the person, after the retries WAITS_S allows
  // before deadline (Date.now() time: the action's, shared by its event and the stream serving it); an event's retry
  // counts in eventsSent
  async function answered(stream, request, deadline) {
    for (let attempt = 0; ; attempt++, eventsSent += stream === 'event' ? 1 : 0) {
      const response = await realFetch(request.clone());
      if (response.ok) { notice(stream, ''); return { response, text: '' }; }
      // an event is sent again only when the refusal shows it was not run (NOT_RUN); any other refusal is Gradio's
      const retried = RETRIED.includes(response.status) && (stream !== 'event' || response.headers.get(NOT_RUN) === '1');
      if (!retried && (stream === 'event' || !SAID.includes(response.status))) {  // not the app's: Gradio's way
        notice(stream, '');
        return { response, text: '' };
      }
      if (response.status === 401) return { response, text: SIGNED_OUT };
      const body = await response.text();
      const sentence = sentenceOf(response, body);
      const kept = new Response(body, { status: response.status, statusText: response.statusText,
                                        headers: response.headers });  // read again by Gradio's client
      if (!retried) return { response: kept, text: `${sentence} ${RELOAD}` };
      // the next wait, cut to the action's time left; shorter than the first wait (or none left): no more tries
      const ms = attempt < WAITS_S.length ? Math.min(1000 * WAITS_S[attempt], deadline - Date.now()) : 0;
      if (ms < 1000 * WAITS_S[0]) {
        const last = stream === 'event' ? NOT_DONE.replace('{n}', attempt + 1) : GAVE_UP;
        return { response: kept, text: `${sentence} ${last}` };
      }
      notice(stream, `${sentence} ${RETRYING.replace('{s}', Math.ceil(ms / 1000))}`);
      await wait(ms, request.signal);
    }
  }

  function failedBody(text) {  // as web_guard._page_stream_error: every waiting event ends with text, the stream too
    const failed = { msg: 'process_completed', success: false, output: { error: text, title: 'Error', visible: true } };
    return [failed, { msg: 'close_stream' }].map((m) => `data: ${JSON.stringify(m)}\n\n`).join('');
  }

  function failedEvents(text) {
    return new Response(failedBody(text), { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  }

  // Tenth review of 6 Dec 2026: a request of the page's that got no answer at all (the network dropped) made Gradio's
  // client say the connection was lost and reload the page once the server answered again, the same server or not:
  // the ratings typed but not yet sent (GRID_JS's queue), the experiment picked (the reload shows the default one) and
  // the open tab were lost. Now this waits until the server answers (its app_id, as Gradio's client asks, the wait said
  // in #seiko-connection) and answers whether it is the server this page came from (window.gradio_config.app_id):
  // then the page goes on, its events ended with a sentence; another server (restarted: its events and the page's
  // session are new) is Gradio's to handle, by a reload as before.
  // Eleventh review of 6 Dec 2026: when Gradio's client aborted the request probed for, the probe ended without an
  // answer from the server, yet took itself out of streams.waiting and told the grid, which sent its first held action
  // at once into a server still down: that POST got no answer and was ended as lost, never sent again. Now an aborted
  // probe that counted hands its count to the page's own probe (probeOnOwn: not tied to any request, one at a time),
  // and the grid hears of it only once the server answers.
  async function sameServer(stream, request) {
    const url = new URL(request.url);
    url.pathname = url.pathname.replace(/\/queue\/(join|data)$/, '/app_id');
    url.search = '';
    const probe = { attempt: 0, counted: false };
    let response;
    try {
      response = await untilAnswered(stream, url.href, request.signal, probe);
    } catch (e) {  // Gradio's client aborted the request: no answer yet, the count (if any) goes on without it
      if (probe.counted) probeOnOwn(stream, url.href, probe);
      throw e;
    }
    try {
      return await answeredSame(response, probe.counted);
    } finally {  // out of the count, the grid told (it sends what it held when nothing else waits). No recursion:
      // the grid's onChange only sets timers and starts events, whose requests come back here asynchronously
      if (probe.counted) { streams.waiting--; changed(); }
    }
  }

  // The server's answer to a probe (its app_id): whether it is the server this page came from
  async function answeredSame(response, counted) {
    if (counted) streams.backAt = Date.now();
    const mine = window.gradio_config ? window.gradio_config.app_id : undefined;
    let theirs;
    try {
      theirs = (await response.json()).app_id;
    } catch (e) {
      console.warn('the server answered its app_id with something that is not JSON', e);
    }
    // another server (restarted): Gradio's client reloads the page (the page's own probe does: probeOnOwn); until
    // then the grid sends nothing more
    // (streams.restarted): what it keeps is noted and sent after the reload (GRID_JS resumeKept), none before. The
    // grid is told at once, counted or not: a probe answered at its first try (the server already back, restarted)
    // never counted, so the grid heard nothing and noted nothing before Gradio's reload, and the reloaded page had
    // nothing to send (fourteenth review, 6 Dec 2026); a counted probe's caller tells it again, which notes the same
    if (mine !== undefined && theirs !== undefined && theirs !== mine) {
      const was = streams.restarted;
      streams.restarted = true;
      if (!was && !counted) changed();
    }
    return mine !== undefined && theirs === mine;
  }

  // The probe's loop: asks href until the server answers (its 2xx response), WAITS_S between tries (said as stream's
  // notice), in streams.waiting from the first try that got no answer (probe.counted; the caller takes it out) and the
  // grid told; probe.attempt, the tries so far. Throws when signal (if any) aborts, the count left to the caller.
  async function untilAnswered(stream, href, signal, probe) {
    for (;; probe.attempt++) {
      let response = null;
      try {
        response = await realFetch(href, signal ? { signal } : {});
      } catch (e) {
        if (signal && signal.aborted) throw e;
      }
      if (response && response.ok) { notice(stream, ''); return response; }
      if (!probe.counted) {
        probe.counted = true;
        streams.waiting++;
        changed();
      }
      const s = WAITS_S[Math.min(probe.attempt, WAITS_S.length - 1)];
      notice(stream, `${UNREACHABLE} ${RETRYING.replace('{s}', s)}`);
      await wait(1000 * s, signal);
    }
  }

  // The page's own probe, one at a time: it takes over the count of a probe whose request was aborted (probe: counted,
  // its tries so far) and goes on from its next try, now, until the server answers; then out of the count, the grid
  // told. A further aborted probe meanwhile gives its count up (the one counted already holds the grid), its notice
  // cleared with the own probe's once the server answers: waiting is counted once and released once.
  let ownProbe = null;  // the streams whose notice the running own probe clears, null when none runs
  function probeOnOwn(stream, href, probe) {
    if (ownProbe) {
      ownProbe.add(stream);
      streams.waiting--;
      return;
    }
    const noticed = (ownProbe = new Set([stream]));
    probe.attempt++;  // its next try (the aborted probe's wait, cut short, is over)
    (async () => {
      let same = true;
      try {
        same = await answeredSame(await untilAnswered(stream, href, null, probe), true);
      } finally {
        ownProbe = null;
        for (const s of noticed) notice(s, '');
        streams.waiting--;
        changed();  // the grid notes what it keeps (restarted: said lost) before the reload below
      }
      // another server: Gradio's client, its request aborted, saw no broken connection and reloads nothing, so the
      // grid held every action for good while the server answered (found by a read-only review, 6 Dec 2026). The
      // page reloads itself, as Gradio's client would; the reloaded page says how many were not sent.
      if (!same && streams.restarted) window.location.reload();
    })().catch((e) => console.error("the page's own probe for the server failed", e));
  }

  // The stream of results as Gradio's client reads it (tenth review of 6 Dec 2026): each message it brings is noted
  // (streams.answeredAt: GRID_JS waits for an action from the last one), and one that says nothing for SILENT_MS
  // (Gradio's server sends a message at least every heartbeat while an event waits) is let go and its events ended with
  // SILENT, as one the network broke is with LOST; Gradio's client then opens a new one for the next event. A silent
  // stream stayed open for good: Gradio's client waited on it, and every later action's answer with it.
  function watchedResults(request, response) {
    const reader = response.body.getReader(), encoder = new TextEncoder(), decoder = new TextDecoder();
    let ended = false, lost = false, last = Date.now(), timer = null, buffer = '';
    const scan = (bytes) => {  // the messages read so far (Gradio's: "data: {json}" each, a blank line after)
      buffer += decoder.decode(bytes, { stream: true });
      const parts = buffer.split('\n\n');
      buffer = parts.pop();
      for (const part of parts) {
        for (const line of part.split('\n')) {
          if (!line.startsWith('data:')) continue;
          let message;
          try {
            message = JSON.parse(line.slice(5));
          } catch (e) {
            console.warn('a message of the stream of results is not JSON', e);
            continue;
          }
          heard(message);
        }
      }
    };
    streams.answeredAt = last;
    const body = new ReadableStream({
      start(controller) {
        const end = (how) => { if (!ended) { ended = true; clearTimeout(timer); how(); } };
        const failed = async (text, error) => {  // the stream let go: its events end with text (the same server)
          lost = true;
          clearTimeout(timer);
          let same;
          try {
            same = await sameServer('data', request);
          } catch (e) {  // Gradio's client aborted it meanwhile
            end(() => controller.error(e));
            return;
          }
          end(() => {
            if (!same) { controller.error(error); return; }  // another server: Gradio's way (a reload)
            notice('data', text);
            controller.enqueue(encoder.encode(failedBody(text)));
            controller.close();
          });
          if (same) { endOpen(); changed(); }
        };
        const check = () => {
          if (ended || lost) return;
          const left = last + SILENT_MS - Date.now();
          if (left > 0) { timer = setTimeout(check, left); return; }
          failed(SILENT.replace('{s}', SILENT_MS / 1000), new TypeError('the stream of results went silent'));
          reader.cancel();  // let go of the request
        };
        timer = setTimeout(check, SILENT_MS);
        (async () => {
          for (;;) {
            let chunk;
            try {
              chunk = await reader.read();
            } catch (e) {
              if (ended || lost) return;
              if (request.signal.aborted) { end(() => controller.error(e)); return; }  // Gradio's client let it go
              failed(LOST, e);  // broken off: the network dropped
              return;
            }
            if (ended || lost) return;
            if (chunk.done) { end(() => controller.close()); return; }
            last = streams.answeredAt = Date.now();
            controller.enqueue(chunk.value);
            scan(chunk.value);
          }
        })();
      },
      cancel(reason) {
        ended = true;
        clearTimeout(timer);
        return reader.cancel(reason);
      },
    });
    return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  }

  // The page's heartbeat as Gradio's client gets it: one stream, open until that client aborts it, made of the
  // heartbeats this script opens one after another. One the server ends is opened again after the next of WAITS_S (the
  // count starts again once one has stayed open the longest wait); a refusal or failure of the opening is retried
  // after the next of WAITS_S, said in #seiko-connection. Past the last wait (or at a refusal retrying cannot cure)
  // the sentence stays and the heartbeat waits for the page's next action, which starts the count again.
  function keptHeartbeat(request) {
    const signal = request.signal, longest = 1000 * WAITS_S[WAITS_S.length - 1];
    let attempt = 0, reader = null, openedAt = 0, cancelled = false;

    async function stopped(text) {  // the sentence stays until the page's next action (or Gradio's abort)
      notice('heartbeat', text);
      await new Promise((resolve, reject) => {
        resumeHeartbeat = resolve;
        signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        if (signal.aborted) reject(signal.reason);
      });
      attempt = 0;
    }

    async function afterWait(sentence) {  // the next wait, said when there is a sentence; false: none left
      if (attempt >= WAITS_S.length) return false;
      if (sentence) notice('heartbeat', `${sentence} ${RETRYING.replace('{s}', WAITS_S[attempt])}`);
      await wait(WAITS_S[attempt++] * 1000, signal);
      return true;
    }

    async function open() {  // an open heartbeat's reader, the refusals and failures retried
      for (;;) {
        if (cancelled) return null;
        let response;
        try {
          response = await realFetch(request.clone());
        } catch (e) {
          if (signal.aborted || cancelled) throw e;
          if (!(await afterWait(UNREACHABLE))) await stopped(`${UNREACHABLE} ${GAVE_UP}`);
          continue;
        }
        if (response.ok && response.body) {
          notice('heartbeat', '');
          openedAt = Date.now();
          return response.body.getReader();
        }
        const sentence = response.status === 401 ? SIGNED_OUT : sentenceOf(response, await response.text());
        if (SAID.includes(response.status)) {
          await stopped(response.status === 401 ? sentence : `${sentence} ${RELOAD}`);
        } else if (!(await afterWait(sentence))) {
          await stopped(`${sentence} ${GAVE_UP}`);
        }
      }
    }

    const body = new ReadableStream({
      async pull(controller) {
        for (;;) {
          if (!reader) reader = await open();
          if (cancelled) {  // Gradio's client let it go meanwhile
            if (reader) reader.cancel();
            return;
          }
          let chunk;
          try {
            chunk = await reader.read();
          } catch (e) {  // broken off (the server went): opened again as an ended one is
            if (signal.aborted || cancelled) throw e;
            chunk = { done: true };
          }
          if (!chunk.done) { controller.enqueue(chunk.value); return; }
          reader = null;  // ended by the server
          if (Date.now() - openedAt >= longest) attempt = 0;
          if (!(await afterWait(''))) await stopped(`${ENDED} ${GAVE_UP}`);
        }
      },
      cancel(reason) {
        cancelled = true;
        if (reader) return reader.cancel(reason);
      },
    });
    return new Response(body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  }

  // Found by the twentieth review, 7 Dec 2026 (fixed in the twenty-first): Gradio ends a failed event with its toast and an "Error" laid over each of the
  // event's outputs (the output's status tracker), kept until a later event with that output is answered or the
  // cover's own clear button is pressed. An admin's event refused because the account is no admin's (NOT_ADMIN) is
  // never answered again, so its outputs (the Admin tab's raters field and result text, the header's Experiment
  // dropdown for Create experiment) stayed covered, neither readable nor clickable, until a reload. The covers of
  // exactly the refused event's outputs (its fn_index's outputs in the page's own config) are lifted by their clear
  // buttons as they appear, for COVER_WATCH_MS: the outputs keep what they showed and the sentence is the toast's.
  // Nothing here names a component: a rater's page (app.rater_page) holds nothing of the Admin tab.
  // Gradio 6 puts no id of its own on a block: the server gives each output of an admin's event an elem_id
  // (gradio_routes.name_admin_outputs). Events that QUIET_ADMIN_JS did not send (it throws once the page knows) cover
  // their outputs as well; they are found by their js= (QUIET).
  function outputsOf(which) {  // the DOM ids (elem_id) of the outputs of the page's events for which which(d)
    const config = window.gradio_config;
    if (!config || !Array.isArray(config.dependencies)) return [];
    const components = new Map((config.components || []).map((c) => [c.id, c]));
    const ids = new Set();
    for (const dependency of config.dependencies) {
      if (!dependency || !which(dependency)) continue;
      for (const id of dependency.outputs || []) {
        const props = (components.get(id) || {}).props || {};
        if (typeof props.elem_id === 'string' && props.elem_id) ids.add(props.elem_id);
      }
    }
    return [...ids];
  }
  function liftCovers(body) {  // of a refused event (its POST body: fn_index)
    const fn = body && body.fn_index;
    if (Number.isInteger(fn)) liftCoversOf(outputsOf((d) => d.id === fn));
  }
  streams.liftQuietCovers = () => liftCoversOf(outputsOf((d) => typeof d.js === 'string' && d.js.includes(QUIET)));
  function liftCoversOf(ids) {
    if (!ids.length) return;
    const lift = () => {
      for (const id of ids) {
        const block = document.getElementById(id);
        if (!block) continue;
        for (const clear of block.querySelectorAll('[data-testid=status-tracker] .clear-status button')) clear.click();
      }
    };
    const watch = new MutationObserver(lift);
    watch.observe(document.body, { childList: true, subtree: true, attributes: true, attributeFilter: ['class'] });
    setTimeout(() => watch.disconnect(), COVER_WATCH_MS);
    lift();
  }

  // a fetch's {url, method} (LOGIN_JS's too)
  function targetOf(input, init) {
    return { url: new URL(input instanceof Request ? input.url : String(input), window.location.href),
             method: ((init && init.method) || (input instanceof Request ? input.method : 'GET')).toUpperCase() };
  }

  window.fetch = async function (input, init) {
    const { url, method } = targetOf(input, init);
    const stream = method === 'POST' ? (url.pathname.endsWith('/gradio_api/queue/join') ? 'event' : null)
      : method !== 'GET' ? null : url.pathname.endsWith('/gradio_api/queue/data') ? 'data'
      : url.pathname.includes('/gradio_api/heartbeat/') ? 'heartbeat' : null;
    if (!stream) return realFetch(input, init);
    const request = new Request(input instanceof Request ? input : url.href, init);
    if (stream === 'heartbeat') return keptHeartbeat(request);
    if (stream === 'event' && resumeHeartbeat) {  // the page's next action: a heartbeat that stopped tries again
      const resume = resumeHeartbeat;
      resumeHeartbeat = null;
      resume();
    }
    // an event starts an action (its deadline); a stream of results has the deadline of the event answered last, the
    // one Gradio's client opened it for (a stream with no event answered before it has a whole one of its own)
    const deadline = stream === 'event' || lastDeadline === null ? Date.now() + BUDGET_MS : lastDeadline;
    const body = stream === 'event' ? eventBody(request) : undefined;  // read beside the sending
    const action = body && body.then(actionSeq);
    const sent = stream === 'event' ? ++eventsSent : 0;
    let answer;
    try {
      answer = await answered(stream, request, deadline);
    } catch (e) {  // no answer at all (the network dropped): Gradio's client reloaded the page (sameServer)
      if (request.signal.aborted || !(await sameServer(stream, request))) throw e;
      const seq = await action;
      notice(stream, LOST);
      if (seq !== undefined) endedSeqs.add(seq);  // the page action it was: GRID_JS lets it go and sends the next
      if (stream === 'data') endOpen();
      changed();
      // an event that may have reached the app is not sent again (an undo sent twice takes back two ratings); 502,
      // not 503: Gradio's client shows its own "currently busy. Please try again." for a 503, the detail unread,
      // inviting the very repeat this avoids, and a 502's detail as it is (found by a read-only review)
      return stream === 'event' ? new Response(JSON.stringify({ detail: LOST }), {
        status: 502, headers: { 'Content-Type': 'application/json' } }) : failedEvents(LOST);
    }
    const { response, text } = answer;
    const role = stream === 'event' ? response.headers.get(NOT_ADMIN) : null;
    // a version that is missing or not a whole number (a page loaded before the server was rolled back to a build
    // without the header, or a proxy that drops it) applies its role as it arrives, as before the version existed;
    // Number(null) is 0, so a missing header froze the flag at the first answer (found by a read-only review)
    const said = role === null ? null : response.headers.get(ROLE_VERSION);
    const version = said !== null && /^[0-9]{1,15}$/.test(said) ? Number(said) : NaN;
    // the role the server read newest (its role version): an event joined just before a demotion, answered after a
    // newer refusal, cleared the flag again (eighteenth review, 7 Dec 2026), and so did one sent after a refused one
    // but read before the demotion (a pick's events leave together; nineteenth review). Set before Gradio's client
    // reads the answer: its failure listeners see it (QUIET_ADMIN_JS)
    if (((role === '1' && response.status === 403) || (role === '0' && response.ok))
        && (Number.isNaN(version) || version > roleVersion)) {
      if (!Number.isNaN(version)) roleVersion = version;
      streams.notAdmin = role === '1';  // '0': joined for an admin (web_guard): the Admin tab's own events sent again
    }
    if (role === '1' && response.status === 403) {
      liftCovers(await body);
      // an event that left before the page was told (a pick's four events leave together): refused as the server
      // refused it, but without a sentence, which Gradio's client ends with no toast (an empty list of its inputs'
      // messages); one sent since (the Admin tab selected again, a button) is told with its sentence
      if (sent <= toldNotAdmin) {
        await response.text();  // read to its end, as Gradio's client reads the one it gets
        return new Response(JSON.stringify({ detail: [] }), {
          status: 403, headers: { 'Content-Type': 'application/json' } });
      }
      toldNotAdmin = eventsSent;
    }
    if (stream === 'event' && response.ok) {
      lastDeadline = deadline;
      await joined(await action, response);
    }
    if (stream === 'data' && response.ok && response.body) return watchedResults(request, response);
    if (!text) return response;
    notice(stream, text);  // kept on the page once Gradio's toast is gone, until this kind of request is answered
    // an event's refusal is Gradio's to show as well (its toast); the stream's events end with the sentence
    return stream === 'event' ? response : failedEvents(text);
  };
})();
"""


# Gradio's login page (its Login component) reads only the status of its sign-in (POST /login): a 400 shows its own
# "Incorrect Credentials" and empties the boxes, a 200 reloads the page, and any other status shows nothing. The
# guard's refusals say why in the answer's JSON ``detail`` (a password changed while it was checked, the throttle's
# seconds to wait, a server busy with sign-ins), which no one saw (eighteenth review, 7 Dec 2026). LOGIN_JS
# (``login_head``, put in the page's head after STREAMS_JS) hands the Login component a 400 for every refusal, so it
# shows its paragraph, and makes that paragraph say the answer's sentence; an answer without one says
# LOGIN_NO_SENTENCE, and a sign-in that got no answer LOGIN_UNREACHABLE. The component empties the boxes on that 400:
# what was typed is put back, unless the real answer was a 400 (the stock page empties them only then: a wrong name
# or password), so after a busy server's 503 or the throttle's 429 the person presses the button again (nineteenth
# review, 7 Dec 2026). The sentence is STREAMS_JS's
# ``sentenceOf``: JSON's ``detail``, or a plain-text refusal (the guard's origin, body-size and header checks answer
# in plain text, before the sign-in is read). The server's sentences are shown as they are, so a wrong name and a
# wrong password still read the same. Gradio's paragraph is found by its class (``p.creds``;
# tests/app/test_e2e_sessions.py checks it).
LOGIN_NO_SENTENCE = "The server refused the sign-in ({status})."
LOGIN_UNREACHABLE = "The server cannot be reached; try again in a moment."
# Twentieth review (7 Dec 2026): a classroom signing in at once (20 people behind one address pressing the button in
# the same second) found the guard's room for sign-ins full (RELIABILITY.md section 10: at most 4 checked at a time,
# the rest 503 with Retry-After); the page said the server's sentence and about 16 of the 20 pressed again, some
# several times. Now a 503 of this server (the guard's, with Retry-After; app.net_limits' cap on connections in all,
# with NOT_RUN_HEADER and LOGIN_BUSY_DEFAULT_S) is tried again by the page itself: the same POST /login, the same form
# body, after the answer's Retry-After kept within LOGIN_BUSY_WAIT_S and stretched by a random part of itself (up to
# twice it), so that the pages refused together come back spread out, not in the same instant. The paragraph says the
# server's sentence and the seconds left (LOGIN_RETRYING); after LOGIN_BUSY_TRIES more tries, or once the next wait
# would end past LOGIN_BUSY_TOTAL_S from the first, it says the server's sentence with LOGIN_GAVE_UP and the button is
# the person's, as before. Not tried again: a 429 (an address or account locked after failed passwords, or an account
# signed in too often: waiting out minutes of lock behind the person's back, and the person may rather fix the name),
# a 400 or 403 (what was sent, or where from: sending it again cannot change the answer), a 503 with neither header
# (a proxy's page for a server that is down: the server says nothing of when), and a sign-in that got no answer (it
# may have arrived and signed in; a server that is down for a restart takes longer than a few tries, and a page may
# lose its answer as the person goes away): those are said as before. One sign-in at a time from a page: pressing the
# button (or Enter) while the page's sign-in is sent or waits to be tried again sends nothing of its own; what it sent
# is what the page's next try sends (the boxes as the person pressed them last), and the press is answered as the
# sign-in under way is (a wait: its sentence at once; one sent: its answer).
LOGIN_BUSY_TRIES = 6
LOGIN_BUSY_WAIT_S = (1, 15)  # the Retry-After used: at least, at most (then up to twice it, at random)
LOGIN_BUSY_DEFAULT_S = 2  # a 503 of net_limits (no Retry-After): as the guard's own Retry-After
LOGIN_BUSY_TOTAL_S = 60
LOGIN_RETRYING = "This page tries again by itself in {s} s."
LOGIN_RETRYING_NOW = "This page is trying again now."
LOGIN_GAVE_UP = "This page tried {n} times; press Login to try again."

LOGIN_JS = r"""
(() => {
  if (window.__seikoLogin) return;
  window.__seikoLogin = true;
  const NO_SENTENCE = __NO_SENTENCE__, UNREACHABLE = __UNREACHABLE__, TRIES = __TRIES__, WAIT_S = __WAIT_S__,
        DEFAULT_S = __DEFAULT_S__, TOTAL_MS = 1000 * __TOTAL_S__, RETRYING = __RETRYING__,
        RETRYING_NOW = __RETRYING_NOW__, GAVE_UP = __GAVE_UP__, NOT_RUN = __NOT_RUN__;
  const pageFetch = window.fetch.bind(window);
  let sentence = '', watching = false;
  let signIn = null;  // the page's sign-in while it is sent or waits to be tried again (one at a time)
  const show = () => {
    for (const p of document.querySelectorAll('p.creds')) if (p.textContent !== sentence) p.textContent = sentence;
  };
  const boxes = () => [...document.querySelectorAll('input')];
  const typedIn = (box, value) => {
    box.value = value;
    box.dispatchEvent(new Event('input', { bubbles: true }));  // the component's own value follows the box
  };
  // the boxes' text, put back once the component has emptied them for the 400 below (its updates run as microtasks)
  const keepBoxes = () => {
    const typed = boxes().filter((box) => box.value).map((box) => [box, box.value]);
    setTimeout(() => {
      for (const [box, value] of typed) if (box.isConnected && !box.value) typedIn(box, value);
    });
  };
  const say = (text) => {
    sentence = text;
    if (!watching) {  // Gradio adds its paragraph (and its text) once the component reads the 400 below
      watching = true;
      new MutationObserver(show).observe(document.body, { childList: true, subtree: true, characterData: true });
    }
    show();
  };
  const refused = (text, keep) => {
    if (keep) keepBoxes();
    say(text);
    return new Response(JSON.stringify({ detail: text }), {
      status: 400, headers: { 'Content-Type': 'application/json' } });
  };
  // ms to wait before a refusal is sent again, or 0: not sent again (a 503 of this server only)
  const busyWait = (response) => {
    if (response.status !== 503) return 0;
    const after = (response.headers.get('retry-after') || '').trim();
    const s = /^[0-9]{1,9}$/.test(after) ? Number(after) : response.headers.get(NOT_RUN) === '1' ? DEFAULT_S : null;
    if (s === null) return 0;
    return 1000 * Math.min(WAIT_S[1], Math.max(WAIT_S[0], s)) * (1 + Math.random());
  };
  // one try of the sign-in: {response} (signed in), {wait, text} (tried again after wait ms) or {text, status}
  const tried = async (at) => {
    let response;
    at.sent += 1;
    try {
      response = await pageFetch(at.request.clone());
    } catch (e) {  // no answer at all: said, where the component showed nothing
      console.warn('sign-in not answered:', e);
      return { text: UNREACHABLE, status: 0 };
    }
    if (response.status < 400) return { response };
    // JSON's detail or a plain-text refusal (the guard's origin, size and header checks answer plain text); an
    // answer with neither (a proxy's error page) says the status
    const text = window.__seikoStreams.sentenceOf(response, await response.text(), NO_SENTENCE);
    const ms = busyWait(response);
    if (ms && at.sent <= TRIES && Date.now() + ms <= at.deadline) return { wait: ms, text };
    return { text: ms && at.sent > 1 ? `${text} ${GAVE_UP.replace('{n}', at.sent)}` : text, status: response.status };
  };
  // the sign-in's next try; a wait it is given starts here, an end lets the next sign-in go
  const next = async (at) => {
    let outcome;
    try {
      at.answer = tried(at);
      outcome = await at.answer;
    } finally {  // an answer that could not be read ends it too: the next press is sent
      at.answer = null;
      if (signIn === at && !(outcome && outcome.wait)) signIn = null;
    }
    if (outcome.wait) waited(at, outcome);
    return outcome;
  };
  // what the component is answered: the sign-in's own 2xx (it reloads the page), else a 400 with the sentence
  const answerOf = (outcome, own) => {
    if (outcome.response) return own ? outcome.response : new Response('{"success": true}', { status: 200 });
    if (outcome.wait) return refused(sentence, true);
    return refused(outcome.text, outcome.status !== 400);  // the stock page empties the boxes for a 400 only
  };
  // the countdown, then the same POST again, the component no longer waiting on it: the page does what it would do
  function waited(at, { wait, text }) {
    const until = Date.now() + wait;
    const tick = () => {
      const left = until - Date.now();
      if (left > 0) {
        say(`${text} ${RETRYING.replace('{s}', Math.ceil(left / 1000))}`);
        setTimeout(tick, Math.min(left, 250));
        return;
      }
      say(`${text} ${RETRYING_NOW}`);
      next(at).then((outcome) => {
        if (outcome.response) { location.reload(); return; }  // signed in: as the component does for its 200
        if (outcome.wait) return;
        say(outcome.text);
        if (outcome.status === 400) for (const box of boxes()) if (box.value) typedIn(box, '');
      }, (e) => { console.warn('sign-in not tried again:', e); say(UNREACHABLE); });
    };
    tick();
  }
  window.fetch = async function (input, init) {
    const { url, method } = window.__seikoStreams.targetOf(input, init);
    if (method !== 'POST' || url.origin !== window.location.origin || !/\/login\/?$/.test(url.pathname)) {
      return pageFetch(input, init);
    }
    const request = new Request(input, init);
    if (signIn) {  // one under way: this press is what it sends next; answered as that one is
      signIn.request = request;
      return answerOf(signIn.answer ? await signIn.answer : { wait: 1 }, false);
    }
    const at = signIn = { request, sent: 0, deadline: Date.now() + TOTAL_MS, answer: null };
    return answerOf(await next(at), true);
  };
})();
"""


def login_head() -> str:
    """LOGIN_JS as a ``<script>`` (web_guard puts it in the page's head after STREAMS_JS)."""
    values = {"__NO_SENTENCE__": LOGIN_NO_SENTENCE, "__UNREACHABLE__": LOGIN_UNREACHABLE,
              "__TRIES__": LOGIN_BUSY_TRIES, "__WAIT_S__": list(LOGIN_BUSY_WAIT_S),
              "__DEFAULT_S__": LOGIN_BUSY_DEFAULT_S, "__TOTAL_S__": LOGIN_BUSY_TOTAL_S,
              "__RETRYING__": LOGIN_RETRYING, "__RETRYING_NOW__": LOGIN_RETRYING_NOW, "__GAVE_UP__": LOGIN_GAVE_UP,
              "__NOT_RUN__": NOT_RUN_HEADER}
    return f"<script>{_filled(LOGIN_JS, values)}</script>"


def streams_head() -> str:
    """STREAMS_JS with its sentences and waits, as a ``<script>`` (web_guard puts it first in the page's head)."""
    values = {"__WAITS_S__": list(STREAM_WAITS_S), "__RETRIED__": list(STREAM_RETRIED), "__SAID__": list(STREAM_SAID),
              "__RETRYING__": STREAM_RETRYING, "__GAVE_UP__": STREAM_GAVE_UP, "__RELOAD__": STREAM_RELOAD,
              "__SIGNED_OUT__": STREAM_SIGNED_OUT, "__NO_SENTENCE__": STREAM_NO_SENTENCE,
              "__UNREACHABLE__": STREAM_UNREACHABLE, "__ENDED__": STREAM_ENDED, "__NOT_DONE__": EVENT_NOT_DONE,
              "__NOT_RUN__": NOT_RUN_HEADER, "__NOT_ADMIN__": NOT_ADMIN_HEADER,
              "__ROLE_VERSION__": ROLE_VERSION_HEADER,
              "__SILENT_MS__": 1000 * action_silent_s(), "__SILENT__": STREAM_SILENT,
              "__LOST__": STREAM_LOST, "__COVER_WATCH_MS__": COVER_WATCH_MS,
              "__QUIET__": QUIET_NOT_SENT}
    return f"<script>{_filled(STREAMS_JS, values)}</script>"
