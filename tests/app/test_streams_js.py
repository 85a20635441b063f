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
# giving a promise: the page's fetch of something) runs, every timer firing at once unless HOLD_TIMERS
HARNESS = r"""
const fs = require('fs'), vm = require('vm');
const [pageJs, answersJson, call, hold] = [fs.readFileSync(process.argv[2], 'utf8'), process.argv[3], process.argv[4],
                                           process.argv[5] === 'hold'];
const answers = JSON.parse(answersJson), fetched = [], waits = [], elements = {};
async function server(input, init) {
  const request = input instanceof Request ? input : new Request(input, init);
  fetched.push([request.method, new URL(request.url).pathname]);
  const [status, type, body] = answers.length > 1 ? answers.shift() : answers[0];
  return new Response(body, { status, headers: { 'content-type': type } });
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
  setTimeout: (fn, ms) => { waits.push(ms); if (!hold) setImmediate(fn); return waits.length; }, clearTimeout() {} });
vm.runInContext(pageJs, context);
context.controller = new AbortController();
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
HEARTBEAT = "window.fetch(new Request('http://app.test/gradio_api/heartbeat/abc'))"
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
    out = run_page(tmp_path, [[503, "application/json", json.dumps({"detail": "Busy."})], CAPS_ANSWER,
                              [200, "text/event-stream", "data: ALIVE\n\n"]], HEARTBEAT)
    assert out["fetched"] == [["GET", "/gradio_api/heartbeat/abc"]] * 3 and out["waits"] == [1000, 2000]
    assert out["result"] == {"status": 200, "type": "text/event-stream", "body": "data: ALIVE\n\n"}
    assert out["said"] == [f"Busy. {ui_assets.STREAM_RETRYING.format(s=1)}", RETRYING[1], ""]


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
    out = run_page(tmp_path, [[401, "application/json", json.dumps({"detail": "Sign in first."})]], HEARTBEAT)
    assert len(out["fetched"]) == 1 and out["result"]["status"] == 401
    assert out["said"] == [ui_assets.STREAM_SIGNED_OUT]
    out = run_page(tmp_path, [[404, "application/json", ""]], HEARTBEAT)  # no sentence of its own
    assert out["said"] == [f"{ui_assets.STREAM_NO_SENTENCE.format(status=404)} {ui_assets.STREAM_RELOAD}"]


def test_other_requests_and_answers_pass_untouched_and_an_abort_ends_the_wait(tmp_path):
    out = run_page(tmp_path, [CAPS_ANSWER], "window.fetch('http://app.test/gradio_api/queue/join', { method: 'POST', body: '{}' })")
    assert out["fetched"] == [["POST", "/gradio_api/queue/join"]] and out["result"]["status"] == 429
    assert out["waits"] == [] and out["said"] == []  # the join's refusal: Gradio's own toast shows its detail
    # an answer that is not the app's (a proxy's 502 while the app restarts) is Gradio's to handle, as before
    out = run_page(tmp_path, [CAPS_ANSWER, [502, "text/html", "<html>Bad Gateway</html>"]], DATA)
    assert len(out["fetched"]) == 2 and out["result"]["status"] == 502 and out["said"] == [RETRYING[0], ""]
    # aborted (Gradio closes the stream; the page goes) while it waits to try again: it tries no more
    out = run_page(tmp_path, [CAPS_ANSWER], "(() => { const answer = window.fetch("
                   "'http://app.test/gradio_api/queue/data?session_hash=abc', { signal: controller.signal }); "
                   "setImmediate(() => setImmediate(() => controller.abort())); return answer; })()", hold_timers=True)
    assert out["result"] == {"error": "AbortError"} and len(out["fetched"]) <= 1


def test_the_retries_end_before_a_rated_card_stops_waiting_for_its_answer():
    """The rating grid waits 30 s for an action's answer, then shows the card as open again (GRID_JS's pump): retries
    lasting longer (1-30 s, 61 s in all) let a person score a card again whose first score was still on its way."""
    import re

    waited_ms = int(re.search(r"setTimeout\(\(\) => api\.ack\(\), (\d+)\)", ui_assets.GRID_JS).group(1))
    assert 1000 * sum(ui_assets.STREAM_WAITS_S) < waited_ms
