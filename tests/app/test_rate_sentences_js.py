"""The rating page's sentence about an earlier action (app.ui_assets GRID_JS's ACTION_OVERDUE_RATE, said in
#seiko-connection) and the answer that ends it (MARKS_JS's ``api.ack(true)``), run in node with the page's own
JavaScript (``tests/app/test_rate_queue_js.py``'s harness; STREAMS_JS stood in by a stub that records what is said)."""

from __future__ import annotations

import pytest

from app import ui_assets
from tests.app.test_rate_queue_js import NODE, run_page

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the page's JavaScript is run with node")

# STREAMS_JS's part the grid uses here: what it says (notice), and when the server started on the page's action number
# 1 (at the script's start); the stream of results has always just said something (answeredAt: a heartbeat now), so
# only the handler's deadline ends the wait
OVERDUE = """
const said = [], t0 = clock;
win.__seikoStreams = { waiting: 0, restarted: false, backAt: 0, get answeredAt() { return clock; },
                       notice: (stream, text) => said.push([stream, text]),
                       startedAt: (seq) => (seq === 1 ? t0 : undefined) };
answer();
api.send('rate', { image_id: 11, score: 7 });
api.send('rate', { image_id: 12, score: 3 });
for (let i = 0; i < 50 && api.inflight && api.inflight[1].seq === 1; i++) timeout();
log.push(['given up after', clock - t0]);
log.push(['said', said.slice()]);
ANSWER
log.push(['said', said.slice()]);
"""


@pytest.mark.parametrize("answer", ["answer(2);", "props.value = JSON.stringify({ failed: true, done: 2 }); watchers.marks();",
                                    "props.value = JSON.stringify({ stale: true, done: 2 }); watchers.marks();"],
                         ids=["answered", "failed", "stale"])
def test_the_sentence_about_an_overdue_action_goes_once_a_later_action_is_answered(tmp_path, answer):
    """Twelfth review: GRID_JS's ``api.ack(answered)`` clears the sentence about an earlier action once the server
    answers a later one (eleventh review), but no test could fail without it: removing that line, or MARKS_JS calling
    ``api.ack()`` without ``true``, left every test passing, and the page would have said "The server started on your
    rating (7) ... it may or may not be saved" for good while the next ratings were confirmed. Here the first rating's
    handler hangs: its sentence is said, the next rating goes, and its answer (saved, failed or stale alike) ends the
    sentence."""
    log = run_page(tmp_path, OVERDUE.replace("ANSWER", answer))
    sent = [entry[2]["seq"] for entry in log if entry[0] == "sent"]
    before, after = (entry[1] for entry in log if entry[0] == "said")
    overdue = ui_assets.ACTION_OVERDUE_RATE.format(score=7, s=ui_assets.ACTION_RUN_S)
    assert sent == [1, 2]  # the hung one given up at its deadline, the next sent
    assert next(entry[1] for entry in log if entry[0] == "given up after") == 1000 * ui_assets.ACTION_RUN_S
    assert before == [["action", overdue]]
    assert after == [["action", overdue], ["action", ""]]
