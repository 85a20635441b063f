"""The page's handling of its refused streams (app.ui_assets.STREAMS_JS, which web_guard puts first in the page), run
in node against a stub server: the page's own JavaScript, not a copy of its logic. The browser tests of the same
(tests/app/test_e2e_guard.py) show it in Chromium with Gradio's client; these pin down its bounds and sentences."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from app import net_limits, ui_assets, web_guard

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the page's JavaScript is run with node")

# answers: what the stub server answers, in order ([status, content type, body]); then ``call`` (a JS expression
# giving a promise: the page's fetch of something) runs, every timer firing at once unless HOLD_TIMERS. The page's
# clock (Date.now) is the harness's: a timer that fires moves it on to the time it was due, so the page sees the time
# its waits took (the requests take none)
HARNESS = r"""
const fs = require('fs'), vm = require('vm');
const [pageJs, answersJson, call, hold] = [fs.readFileSync(process.argv[2], 'utf8'), process.argv[3], process.argv[4],
                                           process.argv[5] === 'hold'];
const answers = JSON.parse(answersJson), fetched = [], waits = [], elements = {};
let clock = 0;
async function server(input, init) {
  const request = input instanceof Request ? input : new Request(input, init);
  fetched.push([request.method, new URL(request.url).pathname]);
  const [status, type, body, headers] = answers.length > 1 ? answers.shift() : answers[0];
  if (status === 0) throw new TypeError('Failed to fetch');  // no answer: the server is gone
  return new Response(body, { status, headers: { 'content-type': type, ...(headers || {}) } });
}
const document = {
  getElementById: (id) => elements[id] || null,
  createElement: () => {
    const el = { said: [], setAttribute() {}, hidden: false };
    Object.defineProperty(el, 'textContent', { get: () => el.said[el.said.length - 1], set: (v) => el.said.push(v) });
    return el;
  },
  body: { appendChild: (el) => { elements[el.id] = el; } },
};
const window = { fetch: server, location: { href: 'http://app.test/' } };
const context = vm.createContext({ window, document, console, Request, Response, URL, Headers, AbortController, setImmediate,
  ReadableStream, TextDecoder,
  setTimeout: (fn, ms) => {
    waits.push(ms);
    const due = clock + ms;
    if (!hold) setImmediate(() => { clock = Math.max(clock, due); fn(); });
    return waits.length;
  }, clearTimeout() {} });
vm.runInContext('Date.now = () => __now();', Object.assign(context, { __now: () => clock }));
vm.runInContext(pageJs, context);
context.controller = new AbortController();
context.fetched = fetched;
const ticks = async (check) => {  // the page's work goes on (its timers fire at once) until check() holds
  for (let i = 0; i < 100000 && !check(); i++) await new Promise((resolve) => setImmediate(resolve));
  if (!check()) throw new Error('the page never got there');
};
// the page's heartbeat as Gradio's client reads it (the page's timers firing) until ``first`` (given what came so far)
// holds; then, with an ``action`` (the page's next action, say), that runs and the reading goes on until ``second``
// holds; then it is aborted, as Gradio's client closes it. Answered as a Response of what was read.
context.heartbeat = async (first, action, second) => {
  const response = await window.fetch(new Request('http://app.test/gradio_api/heartbeat/abc', { signal: context.controller.signal }));
  const reader = response.body.getReader(), decoder = new TextDecoder();
  let text = '', ended = '';
  (async () => {
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { ended = 'done'; return; }
        text += decoder.decode(value);
      }
    } catch (e) {
      ended = e.name;
    }
  })();
  await ticks(() => first(text) || ended);
  if (action) {
    await action();
    await ticks(() => second(text) || ended);
  }
  context.controller.abort();
  await ticks(() => ended);
  return new Response(text + (ended === 'AbortError' ? '' : `[${ended}]`), { status: response.status, headers: response.headers });
};
context.ticks = ticks;
context.stopped = () => {  // the heartbeat's sentence says it has stopped trying (no wait left, or none would help)
  const text = window.__seikoStreams.said.heartbeat;
  return Boolean(text) && !text.includes('tries again by itself');
};
(async () => {
  let result;
  try {
    const response = await vm.runInContext(call, context);
    result = { status: response.status, type: response.headers.get('content-type'), body: await response.text() };
  } catch (e) {
    result = { error: e.name };
  }
  const notice = elements['seiko-connection'];
  console.log(JSON.stringify({ result, fetched, waits, said: notice ? notice.said : [] }));
})();
"""

DATA = "window.fetch('http://app.test/gradio_api/queue/data?session_hash=abc', { headers: { Accept: 'text/event-stream' } })"
HEARTBEAT_READ = "heartbeat((text) => text.length > 0)"  # the heartbeat, read until something came
HEARTBEAT_STOPPED = "heartbeat(stopped)"  # read until the page has stopped trying
ALIVE = [200, "text/event-stream", "data: ALIVE\n\n"]  # a heartbeat the server ends after its first message
JOIN = "window.fetch('http://app.test/gradio_api/queue/join', { method: 'POST', body: '{}' })"
CAPS = net_limits.TOO_MANY_FROM_ADDRESS.format(n=64)
CAPS_ANSWER = [429, "application/json", json.dumps({"detail": CAPS})]
RETRYING = [f"{CAPS} {ui_assets.STREAM_RETRYING.format(s=s)}" for s in ui_assets.STREAM_WAITS_S]


def run_page(tmp_path, answers: list, call: str, *, hold_timers: bool = False) -> dict:
    script = ui_assets.streams_head().removeprefix("<script>").removesuffix("</script>")
    (tmp_path / "page.js").write_text(script)
    (tmp_path / "harness.js").write_text(HARNESS)
    out = subprocess.run([NODE, str(tmp_path / "harness.js"), str(tmp_path / "page.js"), json.dumps(answers), call,
                          "hold" if hold_timers else "run"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def messages(body: str) -> list:
    return [json.loads(line[len("data: "):]) for line in body.split("\n") if line.startswith("data: ")]


def server_failed_events(sentence: str) -> list:
    """The failed event web_guard answers a refused stream of results with (its own form, which a browser test showed
    the page displays)."""
    return messages(web_guard._page_stream_error(sentence).body.decode())


def test_a_stream_of_results_the_caps_keep_refusing_is_tried_a_bounded_number_of_times_then_ends_its_events(tmp_path):
    """Eighth review of 5 Dec 2026: a refused stream of results made Gradio's client reload the page (more
    connections, in a loop). Retried after each of STREAM_WAITS_S, the wait said; then the waiting events end with the
    refusal's sentence and what to do, in the failed event web_guard itself answers with; no more tries."""
    out = run_page(tmp_path, [CAPS_ANSWER], DATA)
    assert out["fetched"] == [["GET", "/gradio_api/queue/data"]] * (len(ui_assets.STREAM_WAITS_S) + 1)
    assert out["waits"] == [1000 * s for s in ui_assets.STREAM_WAITS_S]
    assert out["result"]["status"] == 200 and out["result"]["type"] == "text/event-stream"
    assert messages(out["result"]["body"]) == server_failed_events(f"{CAPS} {ui_assets.STREAM_GAVE_UP}")
    # each wait said; the end in the events' error toast and kept on the page once the toast is gone (the toast
    # alone vanished after a few seconds: review)
    assert out["said"] == RETRYING + [f"{CAPS} {ui_assets.STREAM_GAVE_UP}"]


def test_a_refused_heartbeat_is_retried_until_answered_and_the_notice_goes(tmp_path):
    out = run_page(tmp_path, [[503, "application/json", json.dumps({"detail": "Busy."})], CAPS_ANSWER, ALIVE],
                   HEARTBEAT_READ)
    assert out["fetched"][:3] == [["GET", "/gradio_api/heartbeat/abc"]] * 3 and out["waits"][:2] == [1000, 2000]
    assert out["result"] == {"status": 200, "type": "text/event-stream", "body": "data: ALIVE\n\n"}
    assert out["said"][:3] == [f"Busy. {ui_assets.STREAM_RETRYING.format(s=1)}", RETRYING[1], ""]
    assert set(out["said"][3:]) <= {""}


def test_a_heartbeat_the_server_ends_is_opened_again_with_the_waits(tmp_path):
    """Found by the ninth review of 6 Dec 2026: Gradio's client opens the heartbeat once (its open_heartbeat does
    nothing once it has one, ended or not), so a heartbeat the server ended was never opened again: the server dropped
    the page's session, and the page never noticed the server gone or back. Each heartbeat the server ends is opened
    again after the next of STREAM_WAITS_S, and Gradio's client reads one stream throughout."""
    out = run_page(tmp_path, [ALIVE], "heartbeat((text) => text.split('ALIVE').length > 4)")
    assert out["result"]["status"] == 200 and out["result"]["body"].startswith("data: ALIVE\n\n" * 4)
    assert out["fetched"][:4] == [["GET", "/gradio_api/heartbeat/abc"]] * 4
    assert out["waits"][:3] == [1000, 2000, 4000]
    assert out["said"] == []  # an ended heartbeat opened again is nothing to say


def test_a_heartbeat_the_server_keeps_ending_stops_after_the_last_wait_and_the_next_action_opens_it(tmp_path):
    """Past the last of STREAM_WAITS_S (every heartbeat ended soon after it opened) the page says so and stops trying;
    the page's next action (an event) opens it again, the waits counted from the first."""
    n = len(ui_assets.STREAM_WAITS_S)
    out = run_page(tmp_path, [ALIVE], "heartbeat(stopped, () => window.fetch('http://app.test/gradio_api/queue/join', "
                   f"{{ method: 'POST', body: '{{}}' }}), () => fetched.length > {n + 3})")
    beats = [f for f in out["fetched"] if f[1] == "/gradio_api/heartbeat/abc"]
    assert out["fetched"][:n + 2] == [["GET", "/gradio_api/heartbeat/abc"]] * (n + 1) + [["POST", "/gradio_api/queue/join"]]
    assert len(beats) >= n + 2
    assert out["waits"][:n + 1] == [1000 * s for s in ui_assets.STREAM_WAITS_S] + [1000]
    assert out["said"][0] == f"{ui_assets.STREAM_ENDED} {ui_assets.STREAM_GAVE_UP}" and "" in out["said"]  # then opened


def test_a_heartbeat_that_cannot_reach_the_server_says_so_and_goes_on_when_it_is_back(tmp_path):
    gone = [0, "", ""]  # the request failed: no answer at all (the server stopped, the network dropped)
    out = run_page(tmp_path, [ALIVE, gone, gone, ALIVE], "heartbeat((text) => text.split('ALIVE').length > 2)")
    assert out["result"]["body"].startswith("data: ALIVE\n\n" * 2)
    assert out["fetched"][:4] == [["GET", "/gradio_api/heartbeat/abc"]] * 4
    assert out["waits"][:3] == [1000, 2000, 4000]  # ended; then two failures, each said
    unreachable = [f"{ui_assets.STREAM_UNREACHABLE} {ui_assets.STREAM_RETRYING.format(s=s)}" for s in (2, 4)]
    assert out["said"][:3] == [*unreachable, ""] and set(out["said"][3:]) <= {""}


def test_refusals_that_retrying_cannot_cure_are_said_at_once(tmp_path):
    """A 404 (nothing waits in the session) or a 401 (signed out) is not retried: the stream of results ends its
    events with the sentence and what to do; a heartbeat's sentence stays on the page (Gradio's client says nothing)."""
    out = run_page(tmp_path, [[404, "text/plain; charset=utf-8", "No event of yours is waiting."]], DATA)
    assert len(out["fetched"]) == 1 and out["waits"] == []
    assert messages(out["result"]["body"]) == server_failed_events(
        f"No event of yours is waiting. {ui_assets.STREAM_RELOAD}")
    out = run_page(tmp_path, [[401, "text/plain; charset=utf-8", "Sign in first."]], DATA)
    assert len(out["fetched"]) == 1 and messages(out["result"]["body"]) == server_failed_events(
        ui_assets.STREAM_SIGNED_OUT)
    out = run_page(tmp_path, [[401, "application/json", json.dumps({"detail": "Sign in first."})]], HEARTBEAT_STOPPED)
    assert len(out["fetched"]) == 1 and out["waits"] == [] and out["result"]["body"] == ""
    assert out["said"] == [ui_assets.STREAM_SIGNED_OUT]
    out = run_page(tmp_path, [[404, "application/json", ""]], HEARTBEAT_STOPPED)  # no sentence of its own
    assert out["said"] == [f"{ui_assets.STREAM_NO_SENTENCE.format(status=404)} {ui_assets.STREAM_RELOAD}"]


def test_other_requests_and_answers_pass_untouched_and_an_abort_ends_the_wait(tmp_path):
    # an event's 429 or 503 that does not say it was not run (Gradio's own, a proxy's): the app may have run it, so it
    # is not sent again; Gradio's own toast shows its detail
    for status in (429, 503):
        out = run_page(tmp_path, [[status, *CAPS_ANSWER[1:]]], JOIN)
        assert out["fetched"] == [["POST", "/gradio_api/queue/join"]] and out["result"]["status"] == status
        assert out["waits"] == [] and out["said"] == []
    # an answer that is not the app's (a proxy's 502 while the app restarts) is Gradio's to handle, as before
    out = run_page(tmp_path, [CAPS_ANSWER, [502, "text/html", "<html>Bad Gateway</html>"]], DATA)
    assert len(out["fetched"]) == 2 and out["result"]["status"] == 502 and out["said"] == [RETRYING[0], ""]
    # aborted (Gradio closes the stream; the page goes) while it waits to try again: it tries no more
    out = run_page(tmp_path, [CAPS_ANSWER], "(() => { const answer = window.fetch("
                   "'http://app.test/gradio_api/queue/data?session_hash=abc', { signal: controller.signal }); "
                   "setImmediate(() => setImmediate(() => controller.abort())); return answer; })()", hold_timers=True)
    assert out["result"] == {"error": "AbortError"} and len(out["fetched"]) <= 1


NOT_RUN = {ui_assets.NOT_RUN_HEADER: "1"}


def test_an_event_refused_before_it_reached_the_app_is_sent_again_with_the_waits(tmp_path):
    """Found by the ninth review of 6 Dec 2026: an event (a rating, a skip) the caps refused (429, 503) showed its
    sentence and was lost unless the person did it again. One whose refusal says it was not run (NOT_RUN_HEADER: the
    connection caps and the guard's caps on events) is sent again after each of STREAM_WAITS_S, the wait said, and the
    answer that comes is Gradio's; one every try of which is refused says in the box that it was not carried out, and
    Gradio's client gets the last refusal as it was (its toast shows the detail)."""
    refused = [429, "application/json", json.dumps({"detail": CAPS}), NOT_RUN]
    out = run_page(tmp_path, [refused, [503, *refused[1:]], [200, "application/json", '{"event_id": "e1"}']], JOIN)
    assert out["fetched"] == [["POST", "/gradio_api/queue/join"]] * 3 and out["waits"] == [1000, 2000]
    assert out["result"] == {"status": 200, "type": "application/json", "body": '{"event_id": "e1"}'}
    assert out["said"] == RETRYING[:2] + [""]
    out = run_page(tmp_path, [refused], JOIN)
    tries = len(ui_assets.STREAM_WAITS_S) + 1
    assert out["fetched"] == [["POST", "/gradio_api/queue/join"]] * tries
    assert out["waits"] == [1000 * s for s in ui_assets.STREAM_WAITS_S]
    assert out["result"] == {"status": 429, "type": "application/json", "body": json.dumps({"detail": CAPS})}
    assert out["said"] == RETRYING + [f"{CAPS} {ui_assets.EVENT_NOT_DONE.format(n=tries)}"]


def test_the_caps_answers_say_nothing_was_run():
    """The connection caps answer before reading the request: their 429 and 503 carry NOT_RUN_HEADER (a 408 for a
    slow head does not: the page sends no event again for it)."""
    for status in (429, 503):
        head = net_limits._answer(status, "x", as_json=True).split(b"\r\n\r\n")[0].decode().lower()
        assert f"\r\n{ui_assets.NOT_RUN_HEADER}: 1\r\n" in head, head
    assert ui_assets.NOT_RUN_HEADER not in net_limits._answer(408, "x").decode().lower()


def test_the_retries_end_before_a_rated_card_stops_waiting_for_its_answer():
    """The rating grid waits ACTION_SILENT_S (30 s) for an action's answer, then shows the card as open again
    (GRID_JS's pump): retries lasting longer (1-30 s, 61 s in all) let a person score a card again whose first score
    was still on its way."""
    import re

    waited_ms = int(re.search(r"const SILENT_MS = (\d+),", ui_assets.grid_js()).group(1))
    assert waited_ms == 1000 * ui_assets.ACTION_SILENT_S and 1000 * sum(ui_assets.STREAM_WAITS_S) < waited_ms


def test_an_event_and_the_stream_serving_it_share_one_deadline_under_a_rated_cards_wait(tmp_path):
    """Found by the ninth review of 6 Dec 2026: the 27 s of retries (STREAM_WAITS_S together) were each request's, so
    an event retried for 27 s and then its refused stream of results retried for 27 s more (54 s) went past the 30 s a
    rated card waits for its answer (GRID_JS), and the card showed as open again while its rating was on its way. The
    event's POST and the stream opened for it now share one deadline, 27 s after the POST: the stream has what is left
    (each wait cut to the time left), then ends its events saying the page stopped trying."""
    budget_ms = 1000 * sum(ui_assets.STREAM_WAITS_S)
    refused = [429, "application/json", json.dumps({"detail": CAPS}), NOT_RUN]
    joined = [200, "application/json", '{"event_id": "e1"}']
    then_data = f"{JOIN}.then(() => {DATA})"
    gave_up = f"{CAPS} {ui_assets.STREAM_GAVE_UP}"
    # refused three times (1 + 2 + 4 s), then joined; its stream refused every time: 20 s left for the stream
    out = run_page(tmp_path, [refused] * 3 + [joined, CAPS_ANSWER], then_data)
    assert out["fetched"][:4] == [["POST", "/gradio_api/queue/join"]] * 4
    assert set(map(tuple, out["fetched"][4:])) == {("GET", "/gradio_api/queue/data")}
    assert out["waits"][:3] == [1000, 2000, 4000] and sum(out["waits"]) == budget_ms
    assert out["waits"][3:] == [1000, 2000, 4000, 8000, budget_ms - 7000 - 15000]  # the last wait cut to the time left
    assert messages(out["result"]["body"]) == server_failed_events(gave_up)
    assert out["said"][-2:] == [f"{CAPS} {ui_assets.STREAM_RETRYING.format(s=5)}", gave_up]  # the cut wait, said
    # the event's tries used the whole deadline (joined at the last try): its refused stream is not tried again
    n = len(ui_assets.STREAM_WAITS_S)
    out = run_page(tmp_path, [refused] * n + [joined, CAPS_ANSWER], then_data)
    assert out["fetched"] == [["POST", "/gradio_api/queue/join"]] * (n + 1) + [["GET", "/gradio_api/queue/data"]]
    assert out["waits"] == [1000 * s for s in ui_assets.STREAM_WAITS_S]
    assert messages(out["result"]["body"]) == server_failed_events(gave_up) and out["said"][-1] == gave_up
    # a later action (its event answered at once) has a whole deadline of its own for its stream
    out = run_page(tmp_path, [refused] * n + [joined, joined, CAPS_ANSWER],
                   f"{JOIN}.then(() => {JOIN}).then(() => {DATA})")
    assert out["waits"] == [1000 * s for s in ui_assets.STREAM_WAITS_S] * 2


# The page's two scripts together (STREAMS_JS first, then the rating grid's GRID_JS with stubs for Gradio's element,
# trigger and watch) against a stub server, on a clock of their own: each timer fires at its due time, in due order
# (the page's and the stub server's alike), the clock moving to it. ``scenario`` is a JS function body, awaited; what
# it returns is printed. It sees: window (gradio_config.app_id = 7), api (window.__seiko), runUntil(ms), now(),
# serve(handler) (handler(method, path, request) answers each request the page sends; it may throw, a request that got
# no answer), sse(steps) (a stream of results: [at ms, message | 'error' | 'end'], open and silent after the last),
# fetched (every request as [method, path]), notices() (what #seiko-connection said), and gradio, the stub of Gradio's
# client: trigger(name, data) POSTs the event and reads the stream of results it opens (gradio.read: its text, how it
# ended and when; gradio.controller.abort() lets it go, as Gradio's client does once it waits on no event), and
# reload(), the page loaded again in the tab (both scripts anew, the grid's api returned; sessionStorage kept),
# signIn(name) (the banner app.ui banner_html fills: who is signed in, null for not yet known) and loaded() (the page's
# load setting the grid's value: its watch('value') callbacks run)
CLOCKED = r"""
const fs = require('fs'), vm = require('vm');
const [streamsJs, gridJs, scenario] = [fs.readFileSync(process.argv[2], 'utf8'), fs.readFileSync(process.argv[3], 'utf8'),
                                       fs.readFileSync(process.argv[4], 'utf8')];
let clock = 0, ids = 0, handler = null;
const timers = [], fetched = [], elements = {}, encoder = new TextEncoder();
const setT = (fn, ms) => { timers.push({ id: ++ids, due: clock + Math.max(0, ms || 0), fn }); return ids; };
const clearT = (id) => { const i = timers.findIndex((t) => t.id === id); if (i >= 0) timers.splice(i, 1); };
const settle = async () => { for (let i = 0; i < 40; i++) await new Promise((resolve) => setImmediate(resolve)); };
async function runUntil(t) {
  await settle();
  for (;;) {
    timers.sort((a, b) => a.due - b.due || a.id - b.id);
    if (!timers.length || timers[0].due > t) break;
    const next = timers.shift();
    clock = next.due;
    next.fn();
    await settle();
  }
  clock = t;
}
function sse(steps) {
  let ctl;
  const body = new ReadableStream({ start(c) { ctl = c; } });
  for (const [at, m] of steps) {
    setT(() => {
      if (m === 'error') ctl.error(new TypeError('network error'));
      else if (m === 'end') ctl.close();
      else ctl.enqueue(encoder.encode(`data: ${JSON.stringify(m)}\n\n`));
    }, at - clock);
  }
  return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
}
async function server(input, init) {
  const request = input instanceof Request ? input : new Request(input, init);
  const path = new URL(request.url).pathname;
  fetched.push([request.method, path]);
  return handler(request.method, path, request);
}
const listeners = [];  // the document's, as [type, fn]: submit(action) posts a form there
const document = {
  activeElement: null, querySelector: () => null,
  addEventListener: (type, fn) => { listeners.push([type, fn]); },
  removeEventListener: (type, fn) => { const i = listeners.findIndex((l) => l[0] === type && l[1] === fn); if (i >= 0) listeners.splice(i, 1); },
  getElementById: (id) => elements[id] || null,
  createElement: () => {
    const el = { said: [], setAttribute() {}, hidden: false };
    Object.defineProperty(el, 'textContent', { get: () => el.said[el.said.length - 1], set: (v) => el.said.push(v) });
    return el;
  },
  body: { appendChild: (el) => { elements[el.id] = el; } },
};
const stored = new Map();  // the tab's sessionStorage, kept over reload()
// window.storageFull: setItem throws as a browser's full (or refused) storage does
const sessionStorage = { getItem: (k) => (stored.has(k) ? stored.get(k) : null),
                         setItem: (k, v) => { if (window.storageFull) throw new Error('QuotaExceededError'); stored.set(k, String(v)); },
                         removeItem: (k) => stored.delete(k) };
const window = { fetch: server, location: { href: 'http://app.test/' }, gradio_config: { app_id: 7 }, sessionStorage };
const context = vm.createContext({ window, document, console, Request, Response, URL, Headers, AbortController,
  ReadableStream, TextDecoder, TextEncoder, setTimeout: setT, clearTimeout: clearT });
vm.runInContext('Date.now = () => __now();', Object.assign(context, { __now: () => clock }));
vm.runInContext(streamsJs, context);
const gradio = { read: null, join: null };
gradio.trigger = (name, data) => {
  (async () => {
    // the body as Gradio's client sends it (its bundle: {data, event_data, fn_index, trigger_id} and the session;
    // event_data is trigger's data: test_e2e_guard's test_a_ratings_event_carries_its_number_as_gradios_client_sends_it)
    const body = JSON.stringify({ data: [null], event_data: data, fn_index: 3, trigger_id: 9, session_hash: 'abc' });
    const joined = await window.fetch('http://app.test/gradio_api/queue/join', { method: 'POST', body });
    gradio.join = { status: joined.status, body: await joined.text() };
    if (!joined.ok) return;
    const read = (gradio.read = { text: '', ended: '', at: null });
    gradio.controller = new AbortController();  // Gradio's client aborts its stream of results (abort())
    const response = await window.fetch('http://app.test/gradio_api/queue/data?session_hash=abc',
                                        { signal: gradio.controller.signal });
    const reader = response.body.getReader(), decoder = new TextDecoder();
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) { read.ended = 'done'; break; }
        read.text += decoder.decode(value);
      }
    } catch (e) {
      read.ended = e.name;
    }
    read.at = clock;
  })().catch((e) => { gradio.join = { error: e.name }; });
};
const grid = { querySelectorAll: () => [], querySelector: () => null, addEventListener() {}, contains: () => false,
               isConnected: true };
let watchers = [];
const startGrid = () => vm.runInContext(`(function (element, trigger, watch, props) {\n${gridJs}\n})`, context)(
  grid, gradio.trigger, (prop, fn) => { if (prop === 'value') watchers.push(fn); }, {});
const loaded = () => { for (const fn of watchers) fn(); };
const signIn = (name) => {
  if (name === null) delete elements['signed-in'];
  else elements['signed-in'] = { querySelector: (sel) => (sel === 'b' ? { textContent: name } : null) };
};
startGrid();
const api = window.__seiko;
// the page loaded again in the same tab (Gradio's reload): the page's scripts anew (the grid's api returned),
// sessionStorage kept
const reload = () => {
  delete window.__seiko; delete window.__seikoStreams; window.fetch = server; watchers = [];
  vm.runInContext(streamsJs, context);
  startGrid();
  return window.__seiko;
};
const submit = (action) => {  // a form of the page posted (the banner's log out: action '/logout')
  const form = { getAttribute: (name) => (name === 'action' ? action : null) };
  for (const [type, fn] of listeners.slice()) if (type === 'submit') fn({ target: form });
};
const notices = () => (elements['seiko-connection'] ? elements['seiko-connection'].said : []);
const run = new Function('window', 'api', 'runUntil', 'now', 'serve', 'sse', 'fetched', 'notices', 'gradio', 'reload',
                         'signIn', 'loaded', 'submit', `return (async () => {\n${scenario}\n})();`);
run(window, api, runUntil, () => clock, (h) => { handler = h; }, sse, fetched, notices, gradio, reload, signIn, loaded, submit)
  .then((result) => console.log(JSON.stringify(result)));
"""


def run_clocked(tmp_path, scenario: str) -> dict:
    streams = ui_assets.streams_head().removeprefix("<script>").removesuffix("</script>")
    for name, text in (("streams.js", streams), ("grid.js", ui_assets.grid_js()), ("scenario.js", scenario),
                       ("clocked.js", CLOCKED)):
        (tmp_path / name).write_text(text)
    out = subprocess.run([NODE, str(tmp_path / "clocked.js"), *(str(tmp_path / n) for n in
                                                                ("streams.js", "grid.js", "scenario.js"))],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


SILENT_MS = 1000 * ui_assets.ACTION_SILENT_S
SILENT = ui_assets.STREAM_SILENT.format(s=ui_assets.ACTION_SILENT_S)
# the stub server: an event joins; its stream of results is ``steps``; the app_id answers are ``ids`` in turn (None: no
# answer at all), the last kept
SERVER = """
const ids = %s;
serve((method, path) => {
  if (path.endsWith('/queue/join')) {
    if (%s) throw new TypeError('Failed to fetch');
    return new Response('{"event_id": "e1"}', { status: 200, headers: { 'content-type': 'application/json' } });
  }
  if (path.endsWith('/queue/data')) return sse(%s);
  const id = ids.length > 1 ? ids.shift() : ids[0];
  if (id === null) throw new TypeError('Failed to fetch');
  return new Response(JSON.stringify({ app_id: id }), { status: 200, headers: { 'content-type': 'application/json' } });
});
"""


def server(steps: list, ids: list, *, join_fails: bool = False) -> str:
    return SERVER % (json.dumps(ids), "true" if join_fails else "false", json.dumps(steps))


def test_an_action_is_waited_for_while_its_stream_answers_and_a_silent_stream_is_ended(tmp_path):
    """Found by the tenth review of 6 Dec 2026: a rated card waited 30 s from its sending, whatever the stream of results
    said: an action waiting its turn in a busy queue (the stream answering: the queue's estimates, Gradio's heartbeat
    message every 15 s) was given up at 30 s, its card shown as before, and the next action sent beside it (an undo
    then ran before the rating it was to take back). And a stream of results gone silent (a half-open connection)
    stayed open for good: Gradio's client waited on it, and every later action with it. Now the wait runs from the
    stream's last message, and a stream silent for ACTION_SILENT_S ends its events with one sentence, no reload."""
    beats = [[t, {"msg": "heartbeat"}] for t in range(10_000, 100_001, 10_000)]
    # the queue moves (a rank that stays put for ACTION_RUN_S is a stuck queue: the eleventh review's rule)
    ranks = [[t, {"msg": "estimation", "event_id": "e1", "rank": 40 - t // 20_000}] for t in range(0, 100_001, 20_000)]
    steps = sorted([*ranks, *beats], key=lambda step: step[0])
    out = run_clocked(tmp_path, server(steps, [7]) + """
const acks = [], ack = api.ack;
api.ack = () => { acks.push(now()); ack(); };
api.send('undo', {});
await runUntil(99000);
const waiting = api.inflight !== null;  // 99 s: still waited for, its stream answering every 10 s
await runUntil(400000);
return { waiting, acks, read: gradio.read, notices: notices(), fetched };
""")
    assert out["waiting"] is True
    assert out["acks"] == [100_000 + SILENT_MS]  # let go ACTION_SILENT_S after the stream's last message, once
    read = out["read"]
    assert read["ended"] == "done" and read["at"] == 100_000 + SILENT_MS
    assert messages(read["text"])[-2:] == server_failed_events(SILENT)  # the events end with the sentence
    assert out["notices"] == [SILENT]
    assert out["fetched"].count(["GET", "/gradio_api/app_id"]) == 1  # the same server: no reload


def test_a_stream_lost_to_the_network_ends_its_events_once_the_same_server_answers_and_not_for_another(tmp_path):
    """Found by the tenth review of 6 Dec 2026: a stream of results the network broke made Gradio's client say the
    connection was lost and reload the page once the server answered, losing the ratings typed but not yet sent, the
    experiment picked (the reload shows the default one) and the open tab. Now the page waits for the server (the wait
    said), and if it is the one the page came from (its app_id) ends the events with one sentence and goes on; a
    different server (restarted: the page's session is gone) is Gradio's to handle, by its reload, as before."""
    steps = [[0, {"msg": "estimation", "event_id": "e1", "rank": 1}], [5000, "error"]]
    scenario = """
api.send('rate', { image_id: 3, score: 7 });
await runUntil(100000);
return { read: gradio.read, notices: notices(), fetched };
"""
    out = run_clocked(tmp_path, server(steps, [None, None, 7]) + scenario)
    read = out["read"]
    assert read["ended"] == "done" and read["at"] == 5000 + 1000 + 2000  # the server answered after 1 s and 2 s
    assert messages(read["text"])[-2:] == server_failed_events(ui_assets.STREAM_LOST)
    waits = [f"{ui_assets.STREAM_UNREACHABLE} {ui_assets.STREAM_RETRYING.format(s=s)}" for s in (1, 2)]
    assert out["notices"] == [*waits, "", ui_assets.STREAM_LOST]
    assert out["fetched"].count(["GET", "/gradio_api/app_id"]) == 3
    out = run_clocked(tmp_path, server(steps, [8]) + scenario)  # another server now
    assert out["read"]["ended"] == "TypeError" and out["notices"] in ([], [""])


def test_an_event_whose_post_got_no_answer_is_said_and_not_sent_again(tmp_path):
    """Tenth review of 6 Dec 2026: an event's POST that got no answer (the network dropped) made Gradio's client reload
    the page. It may have reached the app, so it is not sent again (an undo sent twice takes back two ratings); once
    the same server answers, the event ends with one sentence (Gradio's toast) and the page goes on."""
    scenario = """
api.send('undo', {});
await runUntil(100000);
return { join: gradio.join, notices: notices(), fetched };
"""
    out = run_clocked(tmp_path, server([], [7], join_fails=True) + scenario)
    assert out["join"]["status"] == 502 and json.loads(out["join"]["body"]) == {"detail": ui_assets.STREAM_LOST}
    assert out["fetched"].count(["POST", "/gradio_api/queue/join"]) == 1
    assert out["notices"][-1] == ui_assets.STREAM_LOST
    out = run_clocked(tmp_path, server([], [8], join_fails=True) + scenario)  # another server: Gradio's way
    assert out["join"] == {"error": "TypeError"}


def test_gradios_client_shows_the_detail_of_the_lost_events_status_not_its_own_busy_sentence():
    """The installed Gradio client's answer to an event's POST (its bundle, read as shipped): a 503 shows its own
    "This application is currently busy. Please try again." and drops the detail, which told a person whose rating
    may have been saved to send it again (found by a read-only review, tenth review: the lost event was answered
    503); a 502 falls to the branch that shows ``detail``."""
    import re
    from pathlib import Path

    import gradio

    bundles = [p.read_text(errors="replace") for p in
               (Path(gradio.__file__).parent / "templates" / "frontend" / "assets").glob("index-*.js")]
    client = next(text for text in bundles if "queue/join" in text and "currently busy" in text)
    busy = re.search(r"(\w+)=`This application is currently busy\. Please try again\. `", client).group(1)
    # the status chain of the join's answer: 503 -> the busy sentence; 422 -> detail; any other non-200 -> detail
    assert re.search(r"\w+===503\)\w+\(\{type:`status`,stage:`error`,message:" + busy + ",", client)
    assert re.search(r"else if\((\w+)!==200\)\{let \1=\w+\?\.error===\w+;\w+\(\{type:`status`,stage:`error`,"
                     r"broken:\1,message:\1\?\w+:\w+\.detail\|\|\w+\.error", client)
    assert "===502" not in client
    assert "status: 502," in ui_assets.STREAMS_JS and "status: 503," not in ui_assets.STREAMS_JS


def test_a_silent_stream_waits_longer_than_twice_gradios_heartbeat():
    """The server sends a message on an open stream of results at least every heartbeat (gradio.utils' rate, 15 s
    unless GRADIO_HEARTBEAT_INTERVAL says otherwise): ACTION_SILENT_S must not cut a stream that is only between two."""
    import os

    from gradio import utils

    rate = utils.get_heartbeat_rate()
    if "GRADIO_HEARTBEAT_INTERVAL" not in os.environ:
        assert rate == 15
    assert ui_assets.ACTION_SILENT_S >= 2 * rate


def action_sentence(template: str, **values) -> str:
    return template.format(s=ui_assets.ACTION_RUN_S, **values)


# the stub server of the eleventh review's tests: each join gets the next event id (e1, e2, ...) and is recorded with the
# action's number its body carries and the time; each stream of results is ``steps(id)`` (times from its opening); the
# app_id answers 7. ``up`` (a JS expression) says whether the server answers at all
EVENTS = """
let n = 0;
const joins = [];
serve((method, path, request) => {
  if (!(%s)) throw new TypeError('Failed to fetch');
  if (path.endsWith('/queue/join')) {
    n += 1;
    return request.clone().text().then((text) => {
      joins.push([JSON.parse(text).event_data.seq, now()]);
      return new Response(JSON.stringify({ event_id: 'e' + n }), { status: 200,
                                                                   headers: { 'content-type': 'application/json' } });
    });
  }
  if (path.endsWith('/queue/data')) {
    const id = 'e' + n, steps = %s;
    return sse(steps.map(([at, m]) => [now() + at, m]));
  }
  return new Response(JSON.stringify({ app_id: 7 }), { status: 200, headers: { 'content-type': 'application/json' } });
});
"""


def test_a_handler_that_started_and_never_answers_is_given_up_after_its_deadline_and_said(tmp_path):
    """Found by the tenth review of 6 Dec 2026, fixed by the eleventh: a handler that hangs (the server took the event,
    said process_starts, then never answered) was waited on for good: Gradio's heartbeats kept its stream alive, so
    the silent-stream rule never fired and the card stayed pending. Once the server has started on an action the page
    waits ACTION_RUN_S at most (the most the handler can legitimately take, app.ui_assets), then says in one sentence
    that the rating was not confirmed, frees the card and sends the next action; the rating is not sent again."""
    beats = [[t, {"msg": "heartbeat"}] for t in range(10_000, 400_001, 10_000)]
    steps = "[[1000, { msg: 'process_starts', event_id: id }], ..." + json.dumps(beats) + "]"
    out = run_clocked(tmp_path, EVENTS % ("true", steps) + """
const acks = [], ack = api.ack;
api.ack = (answered) => { acks.push(now()); ack(answered); };
api.send('rate', { image_id: 3, score: 7 });
api.send('rate', { image_id: 4, score: 5 });
await runUntil(1000 + RUN_MS - 1);
const before = { acks: acks.slice(), inflight: api.inflight[1].seq };
await runUntil(1000 + RUN_MS);
return { before, acks, joins, inflight: api.inflight[1].seq, notices: notices() };
""".replace("RUN_MS", str(1000 * ui_assets.ACTION_RUN_S)))
    run_ms = 1000 * ui_assets.ACTION_RUN_S
    assert out["before"] == {"acks": [], "inflight": 1}  # waited for while the handler may still legitimately run
    assert out["acks"] == [1000 + run_ms] and out["inflight"] == 2  # then given up (its card freed: GRID_JS's ack)
    assert out["joins"] == [[1, 0], [2, 1000 + run_ms]]  # the next went; the rating was not sent again
    assert out["notices"][-1] == action_sentence(ui_assets.ACTION_OVERDUE_RATE, score=7)


def test_an_action_waiting_its_turn_is_not_cut_by_the_handlers_deadline(tmp_path):
    """The deadline runs from the server's start on the action (process_starts), not from its sending: an action
    waiting its turn in a queue that moves (estimations, their rank going down, and heartbeats) longer than
    ACTION_RUN_S is still waited for, and an answer that comes is taken as before."""
    beats = [[t, {"msg": "heartbeat"}] for t in range(10_000, 400_001, 10_000)]
    ranks = [[t, {"msg": "estimation", "rank": 50 - t // 20_000}] for t in range(0, 400_001, 20_000)]
    steps = ("[..." + json.dumps(ranks) + ".map(([t, m]) => [t, Object.assign({ event_id: id }, m)]), ..."
             + json.dumps(beats) + "]")
    out = run_clocked(tmp_path, EVENTS % ("true", steps) + """
api.send('undo', {});
await runUntil(390000);
return { busy: api.busy, notices: notices() };
""")
    assert out["busy"] is True and out["notices"] == []


def test_an_action_whose_queue_does_not_move_is_given_up_after_the_handlers_deadline_and_said(tmp_path):
    """Found by a read-only review of the eleventh review's change (6 Dec 2026): the deadline counted only from
    process_starts, so an action queued behind handlers that hung (the "rating" group's 4 places taken) waited for
    good, heartbeats keeping its stream alive, its card pending and nothing said. Now a rank that has not moved for
    ACTION_RUN_S (every handler ahead has run that long: hung) is treated as a hung handler of its own: one sentence
    (how many wait ahead, from the rank), the card freed, the next action sent; nothing is sent again."""
    run_ms = 1000 * ui_assets.ACTION_RUN_S
    beats = [[t, {"msg": "heartbeat"}] for t in range(10_000, 400_001, 10_000)]
    # rank 50, then 49 at 30 s; from then on only heartbeats and the same rank again (others joined behind it)
    ranks = [[0, 50], [30_000, 49], [45_000, 49], [50_000, 49]]
    estimations = [[t, {"msg": "estimation", "rank": r}] for t, r in ranks]
    steps = ("[..." + json.dumps(estimations) + ".map(([t, m]) => [t, Object.assign({ event_id: id }, m)]), ..."
             + json.dumps(beats) + "]")
    scenario = """
const acks = [];
const ack = api.ack;
api.ack = (answered) => { acks.push(now()); ack(answered); };
api.send(FIRST);
api.send('rate', { image_id: 4, score: 5 });
await runUntil(30000 + RUN_MS - 1);
const before = { acks: acks.slice(), inflight: api.inflight[1].seq, notices: notices().slice() };
await runUntil(30000 + RUN_MS);
return { before, acks, joins, inflight: api.inflight[1].seq, notices: notices() };
""".replace("RUN_MS", str(run_ms))
    out = run_clocked(tmp_path, EVENTS % ("true", steps) + scenario.replace("FIRST", "'rate', { image_id: 3, score: 7 }"))
    assert out["before"] == {"acks": [], "inflight": 1, "notices": []}  # the queue moved at 30 s: waited for
    assert out["acks"] == [30_000 + run_ms] and out["inflight"] == 2  # ACTION_RUN_S after its rank last moved
    assert out["joins"] == [[1, 0], [2, 30_000 + run_ms]]  # the next went; the rating was not sent again
    ahead = ui_assets.ACTION_AHEAD[2].format(n=49)
    assert out["notices"][-1] == action_sentence(ui_assets.ACTION_QUEUED_RATE, score=7, ahead=ahead)
    assert "49 other actions" in out["notices"][-1]
    # an undo next in line (rank 0: only the actions the server runs ahead of it), from its first rank on
    steps = ("[[0, { msg: 'estimation', event_id: id, rank: 0 }], ..." + json.dumps(beats) + "]")
    out = run_clocked(tmp_path, EVENTS % ("true", steps) + scenario.replace("FIRST", "'undo', {}")
                      .replace("30000 + ", "0 + "))
    assert out["acks"] == [run_ms] and out["joins"] == [[1, 0], [2, run_ms]]
    assert out["notices"][-1] == action_sentence(ui_assets.ACTION_QUEUED, ahead=ui_assets.ACTION_AHEAD[0])


def test_actions_made_while_the_server_cannot_be_reached_wait_and_go_in_order_once_it_answers(tmp_path):
    """Found by the tenth review of 6 Dec 2026, fixed by the eleventh: while the server could not be reached, each
    action was given up 30 s after its sending (no message came), its card shown as before and the next sent, to fail
    the same way: every rating made then was lost. Now, while a request of the page waits for the server, the action
    sent is not given up and the next are not sent: they wait in the page's queue, their number said, and go in order
    once the server answers again. The one whose POST got no answer may have reached the app: it is not sent again
    (said by STREAM_LOST), and the next's answer shows what was saved."""
    steps = "[[100, { msg: 'process_starts', event_id: id }], [200, { msg: 'process_completed', event_id: id }]]"
    out = run_clocked(tmp_path, "signIn('alice');" + EVENTS % ("window.up", steps) + """
window.up = false;
api.send('rate', { image_id: 1, score: 7 });
await runUntil(5000);
api.send('rate', { image_id: 2, score: 6 });
api.send('skip', { image_id: 3 });
await runUntil(200000);  // 200 s without the server
const during = { posts: fetched.filter(([m]) => m === 'POST').length, inflight: api.inflight[1].seq,
                 queued: api.queue.map((a) => a[1].seq), notices: notices().slice() };
window.up = true;
await runUntil(400000);
return { during, joins, busy: api.busy, queued: api.queue.length, notices: notices() };
""")
    during = out["during"]
    assert during["posts"] == 1 and during["inflight"] == 1 and during["queued"] == [2, 3]  # nothing given up
    held = [ui_assets.ACTION_HELD.format(n=n) for n in ("1 action", "2 actions")]
    said = [text for text in during["notices"] if text in held]
    assert [t for i, t in enumerate(said) if i == 0 or said[i - 1] != t] == held  # the number waiting, said
    assert during["notices"][-1] == held[1]
    assert [seq for seq, _ in out["joins"]] == [2, 3]  # in order, once it answered (seq 1's POST got no answer)
    assert all(at >= 200_000 for _, at in out["joins"])
    assert out["busy"] is False and out["queued"] == 0
    assert ui_assets.STREAM_LOST in out["notices"] and held[1] not in out["notices"][-3:]


# The page's stream of results breaks at 5 s (its first action answered at 200 ms), the server gone with it
# (window.up false): a rating and a skip made then are held while the probe for the server gets no answer
HELD_AFTER_A_BREAK = EVENTS % ("window.up", "id === 'e1' ? [[100, { msg: 'process_starts', event_id: id }], "
                               "[200, { msg: 'process_completed', event_id: id }], [5000, 'error']] : "
                               "[[100, { msg: 'process_starts', event_id: id }], "
                               "[200, { msg: 'process_completed', event_id: id }]]") + """
window.up = true;
api.send('rate', { image_id: 1, score: 7 });
await runUntil(300);
api.ack(true);  // its answer (MARKS_JS): nothing in flight now
window.up = false;
await runUntil(5500);  // the stream broke at 5 s; the probe for the server gets no answer
api.send('rate', { image_id: 2, score: 6 });
api.send('skip', { image_id: 3 });
"""


def test_actions_held_while_a_probe_waits_are_sent_when_gradios_client_aborts_the_probed_stream(tmp_path):
    """Found by a read-only review of the eleventh review's change (6 Dec 2026): the probe for the server (sameServer)
    took itself out of streams.waiting without telling the grid, so when Gradio's client aborted the stream being
    probed for (it lets a stream go once it waits on no event) nobody sent the actions held meanwhile: they stayed held,
    the sentence on the page, until the rater acted again. Now the grid hears of it and sends them, in order."""
    out = run_clocked(tmp_path, "signIn('alice');" + HELD_AFTER_A_BREAK + """
await runUntil(6500);
const during = { queued: api.queue.map((a) => a[1].seq), busy: api.busy, notice: notices().slice(-1)[0] };
window.up = true;
await runUntil(7000);
gradio.controller.abort();  // Gradio's client lets the stream go during the probe
await runUntil(200000);
return { during, joins, queued: api.queue.length, busy: api.busy, read: gradio.read, notices: notices() };
""")
    assert out["during"] == {"queued": [2, 3], "busy": False, "notice": ui_assets.ACTION_HELD.format(n="2 actions")}
    assert [seq for seq, _ in out["joins"]] == [1, 2, 3] and out["joins"][1][1] == 7000  # sent at once, in order
    assert out["queued"] == 0 and out["busy"] is False
    assert ui_assets.ACTION_HELD.format(n="2 actions") not in out["notices"][-2:]


def test_actions_held_while_a_probe_waits_stay_held_when_its_stream_is_aborted_until_the_server_answers(tmp_path):
    """Found by a read-only review of the eleventh review's change (6 Dec 2026): when Gradio's client aborted the
    stream being probed for, the probe took itself out of streams.waiting and told the grid though the server had not
    answered: the grid sent its first held action at once into a server still down, whose POST got no answer and was
    ended as lost, never sent again. Now the page probes on its own (the same waits, one probe however many were
    aborted) and the held actions go, in order, only once the server answers."""
    out = run_clocked(tmp_path, "signIn('alice');" + HELD_AFTER_A_BREAK + """
const s = window.__seikoStreams;
const probes = () => fetched.filter(([m, p]) => p.endsWith('/app_id')).length;
// a second stream of the page's probing for the server, aborted too (Gradio's client lets it go)
const other = new AbortController();
const second = window.fetch('http://app.test/gradio_api/queue/data?session_hash=abc', { signal: other.signal })
  .catch((e) => e.name);
await runUntil(6500);
const before = s.waiting;
gradio.controller.abort();  // Gradio's client lets the probed streams go while the server is still down
other.abort();
await runUntil(60000);
const during = { waiting: s.waiting, posts: fetched.filter(([m]) => m === 'POST').length, queued: api.queue.length,
                 notice: notices().slice(-1)[0], second: await second };
const probesDown = probes();
window.up = true;
await runUntil(200000);
return { before, during, probesDown, probesAfter: probes(), joins, waiting: s.waiting, queued: api.queue.length,
         busy: api.busy, notices: notices() };
""")
    assert out["before"] == 2  # both probes counted while they waited
    held = ui_assets.ACTION_HELD.format(n="2 actions")
    assert out["during"] == {"waiting": 1, "posts": 1, "queued": 2, "notice": held, "second": "AbortError"}
    # before the aborts: the broken stream's probe tried at 5 s and 6 s (waiting 2 s more), the second's at 5.5 s and
    # 6.5 s; then one probe of the page's own, from 6.5 s on with the broken stream's next wait, until it is answered
    waits = ui_assets.STREAM_WAITS_S
    t, attempt, own = 6500, 2, [6500]
    while t <= 60_000:
        t += 1000 * waits[min(attempt, len(waits) - 1)]
        attempt += 1
        own.append(t)
    answered_at = own.pop()  # the first try after the server came back at 60 s
    assert out["probesDown"] == 4 + len(own)
    assert out["probesAfter"] > out["probesDown"]
    assert [seq for seq, _ in out["joins"]] == [1, 2, 3] and out["joins"][1][1] == answered_at  # in order, then
    assert out["waiting"] == 0 and out["queued"] == 0 and out["busy"] is False
    assert held not in out["notices"][-2:]


# kept while the server cannot be reached, then the server restarted (another app_id), found by Gradio's probe: the
# page shows experiment 4, round 9 (its marks); ``first`` is sent (its POST gets no answer: in flight when the page
# reloads), then ``kept`` are held
def held_then_restarted(first: str = "'rate', { image_id: 1, score: 7 }",
                        kept: tuple[str, ...] = ("'rate', { image_id: 2, score: 6 }", "'skip', { image_id: 3 }"),
                        cards: str = "{}") -> str:
    return """
api.marks = { ack: 1, cards: CARDS, experiment: 4, round: 9 };
let appId = null, joins = 0;  // null: no answer at all
serve((method, path) => {
  if (appId === null) throw new TypeError('Failed to fetch');
  if (path.endsWith('/queue/join')) { joins += 1; return new Response('{"event_id": "x"}', { status: 200 }); }
  if (path.endsWith('/queue/data')) return sse([]);
  return new Response(JSON.stringify({ app_id: appId }), { status: 200, headers: { 'content-type': 'application/json' } });
});
api.send(FIRST);  // its POST gets no answer: the page waits for the server
await runUntil(2000);
KEPT
await runUntil(5000);
const during = notices().slice(-1)[0];  // kept, the server away
appId = 8;  // back, restarted
await runUntil(60000);
""".replace("FIRST", first).replace("KEPT", "\n".join(f"api.send({k});" for k in kept)).replace("CARDS", cards)


HELD_THEN_RESTARTED = held_then_restarted()
# the reloaded page (``page``, its grid's api) and the same server again: each join is recorded (the action's data)
# and its stream of results says nothing; ``answer(marks)`` answers the action in flight as MARKS_JS does
RELOADED = """
const sent = [];
appId = 7;
serve((method, path, request) => {
  if (path.endsWith('/queue/join')) {
    return request.clone().text().then((text) => {
      sent.push(JSON.parse(text).event_data);
      return new Response('{"event_id": "y"}', { status: 200, headers: { 'content-type': 'application/json' } });
    });
  }
  if (path.endsWith('/queue/data')) return sse([]);
  return new Response(JSON.stringify({ app_id: 7 }), { status: 200, headers: { 'content-type': 'application/json' } });
});
let clockAt = 60000;
const step = async () => { clockAt += 100; await runUntil(clockAt); };
const answer = async (extra) => { await step(); page.ack(true, Object.assign({ cards: {} }, extra)); await step(); };
"""


def kept_sent(n: str, *, elsewhere: bool = False, **parts) -> str:
    """ACTION_KEPT_SENT (ACTION_KEPT_SENT_ELSEWHERE) with its parts (ACTION_KEPT_PARTS' keys: their counts, in the
    page's order)."""
    said = [ui_assets.ACTION_KEPT_PARTS["unsure"]] if parts.pop("unsure", False) else []
    said += [ui_assets.ACTION_KEPT_PARTS[key].format(k=parts[key])
             for key in ("saved", "changed", "unnotedRefused", "refused", "failed", "stale", "unconfirmed", "cancelled",
                         "undo", "over")
             if parts.get(key)]
    sentence = ui_assets.ACTION_KEPT_SENT_ELSEWHERE if elsewhere else ui_assets.ACTION_KEPT_SENT
    return sentence.format(n=n, parts="; ".join(said))


def test_actions_held_when_the_server_comes_back_restarted_are_sent_again_once_after_the_reload(tmp_path):
    """Found by a read-only review of the eleventh review's change (6 Dec 2026): a server that comes back restarted
    (another app_id) is Gradio's to handle, by a reload, and the kept actions (the page's memory) were lost; then the
    reloaded page only said how many (twelfth review's brief, item 1). And the rating in flight when the connection
    broke was not counted at all (item 2). Now the page notes what it keeps for the tab (sessionStorage) and the
    reloaded page sends it again, in order, once: the rating in flight (stored once if it had arrived), then the kept
    rating and skip; one sentence says what was done and what was refused; a further reload sends nothing."""
    out = run_clocked(tmp_path, "signIn('alice');" + HELD_THEN_RESTARTED + """
const before = { joins, join: gradio.join, said: notices().slice(-1)[0] };
const stored = JSON.parse(window.sessionStorage.getItem('seiko-held-actions'));
const page = reload();
""" + RELOADED + """
await step();
const waiting = { sent: sent.length, notice: notices().slice(-1)[0] };  // nothing before the page's marks
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await step();
const first = sent.length;
await answer({ done: 1 });
await answer({ done: 2, refused: true });
await answer({ done: 3 });
const after = { notice: notices().slice(-1)[0], stored: window.sessionStorage.getItem('seiko-held-actions') };
const again = reload();
again.marks = page.marks;
loaded();
await step();
return { during, before, stored, waiting, first, sent, after, notices: notices(), joins, later: sent.length };
""")
    assert out["during"] == ui_assets.ACTION_HELD.format(n="2 actions")
    assert out["before"]["joins"] == 0 and out["before"]["join"] == {"error": "TypeError"}  # Gradio's way: a reload
    assert out["before"]["said"] == ui_assets.ACTION_HELD_RESTARTED.format(n="2 actions")  # until it reloads
    # only what the server needs, no action numbers, the experiment and round shown
    assert out["stored"].pop("at") >= 5000  # noted afresh when the page found the server restarted
    assert out["stored"] == {"v": 3, "who": "alice", "experiment": 4, "round": 9, "over": 0,
                             "sent": ["rate", {"image_id": 1, "score": 7, "prior": "none"}],
                             "actions": [["rate", {"image_id": 2, "score": 6, "prior": "none"}], ["skip", {"image_id": 3}]]}
    assert out["waiting"]["sent"] == 0
    assert out["first"] == 1  # one at a time: the next once the first is answered
    assert out["sent"] == [{"image_id": 1, "score": 7, "prior": "none", "round": 9, "seq": 1},
                           {"image_id": 2, "score": 6, "prior": "none", "round": 9, "seq": 2},
                           {"image_id": 3, "round": 9, "seq": 3}]
    said = kept_sent("3 actions", saved=2, refused=1)
    assert out["after"] == {"notice": said, "stored": None}
    assert out["notices"].count(said) == 1 and out["later"] == 3  # said once; nothing sent again by a further reload


def test_undos_kept_for_a_restarted_server_are_never_sent_again(tmp_path):
    """Twelfth review (6 Dec 2026): an undo is not idempotent (each takes back one more step, and the server has no id
    to know one sent twice), and what it would take back after the restart is not known (an action of the server's
    past, one the restart lost, the one in flight). So no undo is sent after the reload: one kept right after a kept
    rating or skip takes it back on the page (neither is sent: the same as both sent in order), any other is left to
    the rater, said, and an undo in flight when the connection broke is said to be unknown. Checked against the
    effect of the kept actions done in order by hand: only the rating of image 5 is left."""
    kept = ("'undo', {}", "'rate', { image_id: 2, score: 6 }", "'undo', {}", "'rate', { image_id: 3, score: 4 }",
            "'skip', { image_id: 4 }", "'undo', {}", "'undo', {}", "'rate', { image_id: 5, score: 9 }")
    out = run_clocked(tmp_path, "signIn('alice');" + held_then_restarted("'undo', {}", kept) + """
const page = reload();
""" + RELOADED + """
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await answer({ done: 1 });
await step();
return { sent, notice: notices().slice(-1)[0] };
""")
    assert out["sent"] == [{"image_id": 5, "score": 9, "prior": "none", "round": 9, "seq": 1}]
    assert out["notice"] == kept_sent("9 actions", unsure=True, saved=1, cancelled=6, undo=1)


def test_actions_kept_for_another_experiment_or_round_are_sent_for_their_own_and_said(tmp_path):
    """Found by a read-only review (6 Dec 2026): the reloaded page shows the default experiment (or the round moved
    on), and what was kept for the one before was said "not sent" (ACTION_KEPT_ELSEWHERE), lost. Each kept rating and
    skip now goes with the round it was kept for (the server checks it there: tests/app/test_ui_recovery.py), and
    one sentence says they were sent for their own experiment or round, and what came of them. A note that names no
    round (none was shown) still says none was sent."""
    for shown in ("experiment: 5, round: 12", "experiment: 4, round: 10"):
        out = run_clocked(tmp_path, "signIn('alice');" + HELD_THEN_RESTARTED + """
const page = reload();
""" + RELOADED + """
page.marks = { ack: 1, cards: {}, SHOWN };
loaded();
await answer({ done: 1 });
await answer({ done: 2, refused: true });
await answer({ done: 3 });
return { sent, notice: notices().slice(-1)[0], stored: window.sessionStorage.getItem('seiko-held-actions') };
""".replace("SHOWN", shown))
        assert out == {"sent": [{"image_id": 1, "score": 7, "prior": "none", "round": 9, "seq": 1},
                                {"image_id": 2, "score": 6, "prior": "none", "round": 9, "seq": 2},
                                {"image_id": 3, "round": 9, "seq": 3}],
                       "notice": kept_sent("3 actions", elsewhere=True, saved=2, refused=1), "stored": None}
        assert out["notice"] == ("The page reloaded after the server restarted and shows another experiment or round "
                                 "than the 3 actions it kept were for; those sent went to their own round: "
                                 "2 sent again and done; 1 sent again and refused (its warning says why).")
    note = {"v": 3, "who": "alice", "experiment": None, "round": None, "sent": None, "over": 0, "at": 0,
            "actions": [["rate", {"image_id": 2, "score": 3, "prior": "none"}]]}
    out = _reloaded_with_note(tmp_path, json.dumps(note), """
return { sent, notice: notices().slice(-1)[0] };
""")
    assert out == {"sent": [], "notice": ui_assets.ACTION_KEPT_ELSEWHERE.format(n="1 action")}


def test_a_kept_rating_carries_the_score_the_page_knew_for_its_image(tmp_path):
    """Found by a read-only review (6 Dec 2026): a rating sent again after the reload did not carry the score the page
    knew for its image, so one sent within ACTION_KEPT_AGE_S by a duplicated or reopened tab overwrote a newer score
    given elsewhere. Each kept rating now carries it (``prior``: the page's marks, then the kept ratings before it in
    the order they are done, a rating an undo takes back leaving it as it was; "none" for no score), and the server
    does it only where that still stands (tests/app/test_ui_recovery.py); one not done for that is said."""
    kept = ("'rate', { image_id: 1, score: 6 }", "'rate', { image_id: 2, score: 5 }", "'rate', { image_id: 3, score: 2 }",
            "'undo', {}", "'rate', { image_id: 3, score: 9 }", "'rate', { image_id: 1, score: 8 }")
    out = run_clocked(tmp_path, "signIn('alice');" + held_then_restarted(
        kept=kept, cards="{ 1: { state: 'rated', score: 4 }, 2: { state: 'open' }, 3: { state: 'rated', score: 10 } }") + """
const stored = JSON.parse(window.sessionStorage.getItem('seiko-held-actions'));
const page = reload();
""" + RELOADED + """
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await answer({ done: 1 });
await answer({ done: 2, refused: true, changed: true });
await answer({ done: 3 });
await answer({ done: 4 });
await answer({ done: 5 });
return { stored, sent, notice: notices().slice(-1)[0] };
""")
    # by hand: image 1 was 4, then 7 (in flight), 6, 8; image 2 had none; image 3 was 10, 2 taken back by the undo, 9
    assert out["stored"]["sent"] == ["rate", {"image_id": 1, "score": 7, "prior": 4}]
    assert [a[1].get("prior") for a in out["stored"]["actions"]] == [7, "none", 10, None, 10, 6]
    assert [(d["image_id"], d["score"], d["prior"]) for d in out["sent"]] == [(1, 7, 4), (1, 6, 7), (2, 5, "none"),
                                                                             (3, 9, 10), (1, 8, 6)]
    assert out["notice"] == kept_sent("7 actions", saved=4, changed=1, cancelled=2)


def _reloaded_with_note(tmp_path, noted: str, then: str):
    """alice's page reloads (a restarted server) with ``noted`` as the tab's note of kept actions, shows experiment 4's
    round 9 and loads; then the script ``then`` runs and its value is returned."""
    return run_clocked(tmp_path, "signIn('alice'); let appId = 7;" + """
window.sessionStorage.setItem('seiko-held-actions', NOTED);
const page = reload();
""".replace("NOTED", json.dumps(noted)) + RELOADED + """
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await step();""" + then)


@pytest.mark.parametrize("noted", [
    "not json {", "null", "[1, 2]", '{"n": 2, "who": "alice"}',  # an older page's count
    '{"v": 2, "who": "alice", "experiment": 4, "round": 9, "sent": null, "over": 0, "actions": [["undo", {"x": 1}]]}',
    '{"v": 2, "who": "alice", "experiment": 4, "round": 9, "sent": null, "over": 0, '
    '"actions": [["rate", {"image_id": 2, "score": 11}]]}',
    '{"v": 2, "who": "alice", "experiment": 4, "round": 9, "sent": ["drop", {}], "over": 0, "actions": []}',
    '{"v": 2, "who": "alice", "experiment": "4", "round": 9, "sent": null, "over": 0, "actions": []}',
    '{"v": 2, "who": "alice", "experiment": 4, "round": 9, "sent": null, "over": 0, "actions": ACTIONS}',
])
def test_a_note_of_kept_actions_the_page_cannot_read_is_dropped_with_a_sentence(tmp_path, noted):
    """Twelfth review (6 Dec 2026): the tab's sessionStorage is the page's only by convention (an older page's count,
    another script, an edit): what is not the form the page writes (or holds more than ACTION_KEPT_MAX actions) is
    dropped, nothing sent, one sentence said, and the page goes on."""
    noted = noted.replace("ACTIONS", json.dumps([["skip", {"image_id": 1}]] * (ui_assets.ACTION_KEPT_MAX + 1)))
    out = _reloaded_with_note(tmp_path, noted, """
page.send('rate', { image_id: 8, score: 2 });  // the page goes on
await step();
return { sent, notice: notices().slice(-1)[0], stored: window.sessionStorage.getItem('seiko-held-actions') };
""")
    assert out == {"sent": [{"image_id": 8, "score": 2, "seq": 1}], "notice": ui_assets.ACTION_KEPT_UNREADABLE,
                   "stored": None}


def test_the_note_of_kept_actions_is_bounded(tmp_path):
    """At most ACTION_KEPT_MAX actions are noted (the first, in order); the rest are counted, and said not sent."""
    over = 3
    kept = tuple(f"'rate', {{ image_id: {i}, score: 5 }}" for i in range(2, ui_assets.ACTION_KEPT_MAX + over + 2))
    out = run_clocked(tmp_path, "signIn('alice');" + held_then_restarted(kept=kept) + """
return JSON.parse(window.sessionStorage.getItem('seiko-held-actions'));
""")
    assert out["over"] == over and len(out["actions"]) == ui_assets.ACTION_KEPT_MAX
    assert [a[1]["image_id"] for a in out["actions"]] == list(range(2, ui_assets.ACTION_KEPT_MAX + 2))


def test_actions_kept_before_a_reload_are_sent_only_for_the_rater_who_kept_them(tmp_path):
    """Found by a read-only review of the eleventh review's change (6 Dec 2026): the count of actions kept before a
    reload was the tab's, not the person's: a reload that landed on the sign-in page, someone else signing in, told
    them "The page reloaded while it kept 2 actions waiting…" about the previous rater's. Now what is kept is noted
    with who is signed in and sent (twelfth review) only for that rater, once the page knows who is (its load fills
    the banner), and dropped for anyone else, nothing said."""
    out = run_clocked(tmp_path, "signIn('alice');" + HELD_THEN_RESTARTED + """
signIn(null);  // the reload lands on the sign-in page; then bob signs in and the page loads
let page = reload();
""" + RELOADED + """
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
const unknown = notices().slice(-1)[0];
signIn('bob');
loaded();
await step();
const bob = { said: notices().slice(-1)[0], stored: window.sessionStorage.getItem('seiko-held-actions'), sent: sent.length };
signIn('alice');
page = reload();
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await step();
return { unknown, bob, alice: notices().slice(-1)[0], sent: sent.length };
""")
    assert out["bob"] == {"said": out["unknown"], "stored": None, "sent": 0}  # dropped for bob, nothing said
    assert out["alice"] == out["unknown"] and out["sent"] == 0  # and not kept for later

    out = run_clocked(tmp_path, "signIn('alice');" + HELD_THEN_RESTARTED + """
signIn(null);
const page = reload();
""" + RELOADED + """
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await step();
const unknown = sent.length;
signIn('alice');  // the same rater signs in again: the page's load fills the banner and the grid's value
loaded();
await step();
return { unknown, sent };
""")
    assert out["unknown"] == 0 and out["sent"] == [{"image_id": 1, "score": 7, "prior": "none", "round": 9, "seq": 1}]


def test_the_pages_own_probe_that_finds_the_server_restarted_reloads_the_page(tmp_path):
    """Found by a read-only review of the eleventh review's change (6 Dec 2026): when the page's own probe (taken over
    from a probe whose stream Gradio's client aborted) found another server, it only set streams.restarted; Gradio's
    client, its request aborted, saw no broken connection and reloaded nothing, so the grid held every action for good,
    saying the server cannot be reached while it answered. Now the page reloads itself, after saying what it kept was
    not sent (ACTION_HELD_RESTARTED), and the reloaded page sends them (twelfth review)."""
    out = run_clocked(tmp_path, """
signIn('alice');
const reloads = [];
window.location.reload = () => reloads.push(now());
let appId = 7, joins = 0;  // null: no answer at all
serve((method, path) => {
  if (appId === null) throw new TypeError('Failed to fetch');
  if (path.endsWith('/queue/join')) { joins += 1; return new Response('{"event_id": "e1"}', { status: 200 }); }
  if (path.endsWith('/queue/data')) {
    return sse([[100, { msg: 'process_starts', event_id: 'e1' }], [200, { msg: 'process_completed', event_id: 'e1' }],
                [5000, 'error']]);
  }
  return new Response(JSON.stringify({ app_id: appId }), { status: 200, headers: { 'content-type': 'application/json' } });
});
api.send('rate', { image_id: 1, score: 7 });
await runUntil(300);
api.ack(true);  // its answer (MARKS_JS): nothing in flight now
appId = null;
await runUntil(5500);  // the stream broke at 5 s; the probe for the server gets no answer
api.send('rate', { image_id: 2, score: 6 });
api.send('skip', { image_id: 3 });
await runUntil(6000);
gradio.controller.abort();  // Gradio's client lets the probed stream go: the page probes on its own
await runUntil(20000);
const during = { reloads: reloads.length, said: notices().slice(-1)[0] };
appId = 8;  // back, restarted
await runUntil(120000);
const before = { reloads, said: notices().slice(-1)[0], joins }, read = gradio.read.ended;
appId = 7;  // the reloaded page's server
const page = reload();
page.marks = { ack: 1, cards: {} };  // no experiment known on either page
loaded();
await runUntil(121000);
return { during, before, after: joins, read };
""")
    assert out["read"] == "AbortError"
    assert out["during"] == {"reloads": 0, "said": ui_assets.ACTION_HELD.format(n="2 actions")}
    assert len(out["before"]["reloads"]) == 1 and out["before"]["joins"] == 1  # reloaded once, nothing more sent
    assert out["before"]["said"] == ui_assets.ACTION_HELD_RESTARTED.format(n="2 actions")
    assert out["after"] == 2  # the reloaded page sends the first it kept (and the next once that is answered)


def test_the_silent_bound_follows_gradios_heartbeat_interval(monkeypatch):
    """The page's silent-stream bound (30 s) assumed Gradio's 15 s heartbeat, but GRADIO_HEARTBEAT_INTERVAL sets it:
    at 40 s every waiting action's stream was cut at 30 s between two heartbeats (eleventh review). The bound is twice
    the heartbeat the server sends (gradio.utils' own reading of the variable), at least 30 s, in both scripts."""
    import re

    from gradio import utils

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "40")
    rate = utils.get_heartbeat_rate()
    assert rate == 40
    assert int(re.search(r"const SILENT_MS = (\d+),", ui_assets.streams_head()).group(1)) == 2 * 1000 * rate
    assert int(re.search(r"const SILENT_MS = (\d+),", ui_assets.grid_js()).group(1)) == 2 * 1000 * rate
    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "5")
    assert int(re.search(r"const SILENT_MS = (\d+),", ui_assets.streams_head()).group(1)) == 30_000


def test_a_kept_action_not_done_for_failing_or_a_stale_pick_is_not_counted_as_refused(tmp_path):
    """Found by a read-only review (6 Dec 2026): an action sent again after the reload whose answer was marked failed
    (the server could not handle it) or stale (another experiment picked meanwhile) was counted "refused (its warning
    says why)", and neither has such a warning. Each is now counted as what it was."""
    out = run_clocked(tmp_path, "signIn('alice');" + HELD_THEN_RESTARTED + """
const page = reload();
""" + RELOADED + """
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await answer({ done: 1, failed: true });
await answer({ done: 2, stale: true });
await answer({ done: 3, refused: true });
return { sent: sent.length, notice: notices().slice(-1)[0] };
""")
    assert out == {"sent": 3, "notice": kept_sent("3 actions", refused=1, failed=1, stale=1)}
    # a stale answer is judged after the action committed: not said "not done" (thirteenth review, 6 Dec 2026)
    assert out["notice"].endswith("; 1 sent again, answered only after another experiment was picked (the cards of "
                                  "its round show what was saved).")


def test_actions_kept_where_the_tab_cannot_note_them_are_not_promised_after_the_reload(tmp_path):
    """Found by a read-only review (6 Dec 2026): where the tab's sessionStorage refuses the note (full, disabled) the
    page only warned in the console and still said it "sends the 2 actions it kept waiting after that" (the reload).
    It now says they cannot be kept across a reload."""
    out = run_clocked(tmp_path, "signIn('alice'); window.storageFull = true;" + HELD_THEN_RESTARTED + """
return { during, restarted: notices().slice(-1)[0], stored: window.sessionStorage.getItem('seiko-held-actions') };
""")
    assert out == {"during": ui_assets.ACTION_HELD_UNNOTED.format(n="2 actions"),
                   "restarted": ui_assets.ACTION_HELD_RESTARTED_UNNOTED.format(n="2 actions"), "stored": None}


@pytest.mark.parametrize("age_s", [ui_assets.ACTION_KEPT_AGE_S - 1, ui_assets.ACTION_KEPT_AGE_S + 1])
def test_a_note_of_kept_actions_older_than_its_bound_is_not_sent(tmp_path, age_s):
    """Found by a read-only review (6 Dec 2026): the note had no age, so a tab reopened (or duplicated: both copy
    sessionStorage) minutes later sent rate(A, 3) after the rater had rated A 5 on another page. The note now says
    when it was made; one older than ACTION_KEPT_AGE_S is not sent and said, one younger is sent as before."""
    note = {"v": 2, "who": "alice", "experiment": 4, "round": 9, "sent": None, "over": 0,
            "actions": [["rate", {"image_id": 2, "score": 3}]], "at": -1000 * age_s}  # the page loads at 0
    out = _reloaded_with_note(tmp_path, json.dumps(note), """
return { sent, notice: notices().slice(-1)[0], stored: window.sessionStorage.getItem('seiko-held-actions') };
""")
    if age_s > ui_assets.ACTION_KEPT_AGE_S:
        assert out == {"sent": [], "stored": None,
                       "notice": ui_assets.ACTION_KEPT_OLD.format(n="1 action", s=ui_assets.ACTION_KEPT_AGE_S)}
    else:
        # a note of a page before the thirteenth review (v 2: no prior) is sent, with its round and the prior
        # 'unknown' (fourteenth review)
        assert out["sent"] == [{"image_id": 2, "score": 3, "prior": "unknown", "round": 9, "seq": 1}]
        assert out["stored"] is None


def test_logging_out_drops_the_note_of_kept_actions(tmp_path):
    """Found by a read-only review (6 Dec 2026): the note survived log out, so the same rater signing in again on the
    tab was sent what was kept before. The banner's log out form (posted to /logout) drops it; another form does not."""
    out = run_clocked(tmp_path, "signIn('alice');" + HELD_THEN_RESTARTED + """
const key = 'seiko-held-actions';
submit('/search');
const other = window.sessionStorage.getItem(key) !== null;
submit('/logout');
return { other, stored: window.sessionStorage.getItem(key) };
""")
    assert out == {"other": True, "stored": None}


@pytest.mark.parametrize("broken", ["stream", "post"])
def test_a_restart_seen_on_the_probes_first_try_notes_what_was_in_flight(tmp_path, broken):
    """Found by the fourteenth review (6 Dec 2026): a probe whose first try was answered (the server already back,
    restarted: another app_id) never counted itself in streams.waiting, so nothing told the grid; streams.restarted
    was set, but the rating in flight (and those queued behind it) was noted only when the grid's own timer next
    looked, ACTION_SILENT_S later, long after Gradio's client had reloaded the page: the reloaded page had nothing to
    send. Now a probe that finds the server restarted tells the grid at once, counted or not, and the note is written
    before the reload. ``broken``: the stream of results breaks under the rating, or its event's POST gets no answer."""
    out = run_clocked(tmp_path, "signIn('alice');" + """
api.marks = { ack: 1, cards: { 1: { state: 'rated', score: 4 } }, experiment: 4, round: 9 };
let appId = 7;
serve((method, path) => {
  if (path.endsWith('/queue/join')) {
    if (BROKEN === 'post') { appId = 8; throw new TypeError('Failed to fetch'); }  // restarted under the POST
    return new Response('{"event_id": "e1"}', { status: 200, headers: { 'content-type': 'application/json' } });
  }
  if (path.endsWith('/queue/data')) { appId = 8; return sse([[1000, 'error']]); }  // restarted under the stream
  return new Response(JSON.stringify({ app_id: appId }), { status: 200, headers: { 'content-type': 'application/json' } });
});
api.send('rate', { image_id: 1, score: 7 });
api.send('skip', { image_id: 2 });
await runUntil(1100);  // the probe's first try was answered by the restarted server
const probes = fetched.filter(([m, p]) => p.endsWith('/app_id')).length;
return { probes, restarted: window.__seikoStreams.restarted, said: notices().slice(-1)[0] || null,
         stored: JSON.parse(window.sessionStorage.getItem('seiko-held-actions')) };
""".replace("BROKEN", json.dumps(broken)))
    assert out["probes"] == 1 and out["restarted"] is True
    assert out["said"] == ui_assets.ACTION_HELD_RESTARTED.format(n="1 action")
    stored = out["stored"]
    assert stored is not None, "nothing noted before the reload"
    assert stored["sent"] == ["rate", {"image_id": 1, "score": 7, "prior": 4}]
    assert stored["actions"] == [["skip", {"image_id": 2}]] and stored["round"] == 9 and stored["v"] == 3


def test_the_ratings_of_a_note_that_did_not_note_the_score_the_page_knew_go_with_an_unknown_prior(tmp_path):
    """Found by the fourteenth review (6 Dec 2026): a note of version 2 (a page from before the thirteenth review,
    across the restart that is the upgrade) holds no score its page knew, and its ratings were sent without one, done
    by the server over any score, one given elsewhere included. They now go with the prior 'unknown' (the server does
    such a rating only where the image has no score or already the score sent: tests/app/test_ui_recovery.py), or,
    after a kept rating of the same image in the note, that rating's score; one refused for a score it did not know
    is said apart from one whose known score changed."""
    note = {"v": 2, "who": "alice", "experiment": 4, "round": 9, "over": 0, "at": 0,
            "sent": ["rate", {"image_id": 1, "score": 7}],
            "actions": [["rate", {"image_id": 2, "score": 5}], ["rate", {"image_id": 1, "score": 8}],
                        ["skip", {"image_id": 3}], ["rate", {"image_id": 4, "score": 2}], ["undo", {}]]}
    out = run_clocked(tmp_path, "signIn('alice'); let appId = 7;" + """
window.sessionStorage.setItem('seiko-held-actions', NOTED);
const page = reload();
""".replace("NOTED", json.dumps(json.dumps(note))) + RELOADED + """
clockAt = 0;  // the page loads at 0, the note made then
page.marks = { ack: 1, cards: {}, experiment: 4, round: 9 };
loaded();
await answer({ done: 1, refused: true, changed: true });
await answer({ done: 2 });
await answer({ done: 3, refused: true, changed: true });
await answer({ done: 4 });
return { sent, notice: notices().slice(-1)[0] };
""")
    # by hand: 1 and 2 first scored in the note: unknown; 1's second rating follows its first (7); 4's is taken back
    assert [(d["image_id"], d.get("prior")) for d in out["sent"]] == [(1, "unknown"), (2, "unknown"), (1, 7), (3, None)]
    assert all(d["round"] == 9 for d in out["sent"])
    assert out["notice"] == kept_sent("6 actions", saved=2, changed=1, unnotedRefused=1, cancelled=2)
    assert ui_assets.ACTION_KEPT_PARTS["unnotedRefused"].format(k=1) == (
        "1 sent again and not done, as its image had a score and the page that kept it, from before the server's "
        "upgrade, had not noted the score it knew (its warning says so)")
