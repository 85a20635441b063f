"""The Rate tab's ordered action queue (app.ui_assets GRID_JS and MARKS_JS), run in node against stub DOM objects:
the page's own JavaScript, not a copy of its logic."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from app.ui_assets import MARKS_JS, grid_js

NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the page's JavaScript is run with node")

HARNESS = r"""
const fs = require('fs'), vm = require('vm');
const [gridJs, marksJs, script] = process.argv.slice(2).map((p) => fs.readFileSync(p, 'utf8'));
const timers = [], log = [];
// the page's clock: a timer fired by timeout() has waited its whole time (the action's wait runs from Date.now() since
// the tenth review, so a timer fired without moving the clock on found time left and waited again)
let clock = 1e12;
const base = {
  console,
  Date: { now: () => clock },
  setTimeout: (fn, ms) => { timers.push({ fn, ms }); return timers.length; },
  clearTimeout: (id) => { if (id) timers[id - 1].fn = null; },
  document: { addEventListener() {}, removeEventListener() {}, activeElement: null, querySelector: () => null,
              getElementById: () => null },
};
const element = { querySelectorAll: () => [], querySelector: () => null, contains: () => false,
                  addEventListener() {}, isConnected: true, offsetParent: {} };
const watchers = {};
const win = {};
const gridCtx = vm.createContext({ ...base, window: win, element,
  trigger: (name, data) => log.push(['sent', name, data]), watch: (p, f) => { watchers.grid = f; } });
vm.runInContext(gridJs, gridCtx);
const api = win.__seiko;
const props = { value: '' };
const marksCtx = vm.createContext({ ...base, window: win, props, watch: (p, f) => { watchers.marks = f; } });
vm.runInContext(marksJs, marksCtx);
let ack = 0;
function answer(done) {  // the server's marks after a render; done: the seq of the page action it answers, if any
  ack += 1;
  props.value = JSON.stringify(done === undefined ? { ack, cards: {} } : { ack, done, cards: {} });
  watchers.marks();
}
function timeout() { const t = timers.filter((t) => t.fn).pop(); const f = t.fn; t.fn = null; clock += t.ms; f(); }
eval(script);
console.log(JSON.stringify(log));
"""


def run_page(tmp_path, script: str) -> list:
    files = []
    for name, text in (("grid.js", grid_js()), ("marks.js", MARKS_JS), ("script.js", script)):
        (tmp_path / name).write_text(text)
        files.append(str(tmp_path / name))
    (tmp_path / "harness.js").write_text(HARNESS)
    out = subprocess.run([NODE, str(tmp_path / "harness.js"), *files], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_only_the_answer_to_the_action_in_flight_releases_the_next(tmp_path):
    """Any new marks released the next queued action: after a slow answer's time-out, its late answer released the
    one after the action then in flight, so 'u' ran beside the rating it was meant to take back and took back the one
    before it (found by review: rate 11, rate 12, u left 11 unrated and 12 rated). A render that answers no action
    (a new batch, the poll, another experiment) released one too. Each action now carries a number the server echoes
    as ``done``, and only that answer releases the next."""
    log = run_page(tmp_path, """
        answer();                                     // the page's first render
        api.send('rate', { image_id: 11, score: 7 });
        api.send('rate', { image_id: 12, score: 3 });
        api.send('undo', {});
        log.push(['mark', 'queued']);
        timeout();                                    // the first answer is slow: the page goes on without it
        log.push(['mark', 'timed out']);
        answer(1);                                    // ...and arrives late
        answer();                                     // the poll's render
        log.push(['mark', 'late answer and a poll']);
        answer(2);                                    // the answer to rate 12
    """)
    sent = [entry for entry in log if entry[0] == "sent"]
    assert [(name, data.get("image_id")) for _, name, data in sent] == [("rate", 11), ("rate", 12), ("undo", None)]
    assert [data["seq"] for _, _, data in sent] == [1, 2, 3]
    order = [entry[1] if entry[0] == "mark" else entry[1] + str(entry[2].get("image_id", "")) for entry in log]
    assert order == ["rate11", "queued", "rate12", "timed out", "late answer and a poll", "undo"], order


def test_the_server_echoes_the_actions_number_in_its_marks(ui_world):
    """The other half of the rule above: the Rate tab's handlers put the page action's ``seq`` into the marks they
    return, for a rating, a skip, an undo and a refusal alike; a payload without a number (or a forged one) adds
    nothing."""
    import gradio as gr

    from app import ui_rate
    from app.ui_rate_tab import RateHandlers

    warnings: list = []
    handlers = RateHandlers(ui_world.services(), lambda request: ui_rate_who(ui_world), warnings.append)
    state = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, ui_rate_who(ui_world), None,
                               batch_size=4).state
    image = state["batch"][0]

    def done(outputs) -> object:
        return json.loads(outputs[1]).get("done")

    request = gr.Request(username="alice", client={"host": "127.0.0.1", "port": 1})
    assert done(handlers.on_rate(state, gr.EventData(None, {"image_id": image, "score": 7, "seq": 5}), request)) == 5
    assert done(handlers.on_undo(state, gr.EventData(None, {"seq": 6}), request)) == 6
    assert done(handlers.on_skip(state, gr.EventData(None, {"image_id": image, "seq": 7}), request)) == 7
    assert done(handlers.on_rate(state, gr.EventData(None, {"image_id": image, "score": 11, "seq": 8}), request)) == 8
    assert warnings and "11" in str(warnings[-1])  # refused, and answered
    for seq in (None, True, "9", -1, 2**60):
        assert done(handlers.on_undo(state, gr.EventData(None, {"seq": seq}), request)) is None


def ui_rate_who(world):
    from app import auth

    return auth.identify(world.factory, local_mode=False, username="alice", client_host="127.0.0.1")


def test_the_poll_of_a_waiting_page_does_not_write_the_pages_state_back(ui_world):
    """The poll redraws a waiting page (its message and the worker's progress) but leaves its state alone: a tick in
    flight when the rater picked another experiment put the old experiment's state back (found by review)."""
    import gradio as gr

    from app import ui_admin, ui_rate
    from app.ui_rate_tab import RateHandlers

    alice = ui_rate_who(ui_world)
    for image in ui_world.image_ids:
        ui_rate.submit(ui_world.factory, alice, image, 5)
    from app import auth

    root = auth.identify(ui_world.factory, local_mode=False, username="root", client_host="127.0.0.1")
    ui_admin.close_round(ui_world.factory, root, ui_world.experiment_id, expected_index=0)
    handlers = RateHandlers(ui_world.services(), lambda request: alice, lambda message: None)
    state = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, alice, None, batch_size=4).state
    request = gr.Request(username="alice", client={"host": "127.0.0.1", "port": 1})
    grid, marks, progress, new_state = handlers.on_rate_poll(state, request)
    assert "no round is open" in progress and grid == marks == new_state == gr.skip()  # a late tick overwrote cards


@pytest.mark.parametrize("answer", ["failed", "stale"])
def test_an_action_the_server_could_not_handle_releases_the_next_at_once(tmp_path, answer):
    """A handler that raised (the sign-in ran out, the database locked) sent no answer, so each queued action waited
    the 30 s time-out before the next was sent. The server now answers it with ``failed`` and its number: the next
    action goes at once, and the cards keep the last marks (the failed card's state before the action)."""
    log = run_page(tmp_path, """
        props.value = JSON.stringify({ cards: { 11: { state: 'rated', score: 4, status: 'rated 4' } } });
        watchers.marks();
        api.send('rate', { image_id: 11, score: 7 });
        api.send('rate', { image_id: 12, score: 3 });
        props.value = JSON.stringify({ ANSWER: true, done: 1 });
        watchers.marks();
        log.push(['mark', 'failed answered']);
        log.push(['marks', api.marks]);
        log.push(['timers', timers.filter((t) => t.fn).length]);
    """.replace("ANSWER", answer))  # 'stale': answered after the rater picked another experiment (app.ui_rate_tab)
    order = [entry[1] if entry[0] == "mark" else entry[1] + str(entry[2].get("image_id", ""))
             for entry in log if entry[0] in ("sent", "mark")]
    assert order == ["rate11", "rate12", "failed answered"], order  # rate 12 went without a time-out
    marks = next(entry[1] for entry in log if entry[0] == "marks")
    assert marks["cards"]["11"]["score"] == 4 and answer not in marks
    assert next(entry[1] for entry in log if entry[0] == "timers") == 1  # only rate 12's own time-out is pending


def test_a_handler_that_raises_is_answered_with_its_number(ui_world, caplog, monkeypatch):
    """The server half of the rule above: a refusal (gr.Error from who_of) and any other error (a locked database)
    answer the action with ``failed`` and its ``done`` number, show one sentence, and log the error's traceback
    (never swallowed)."""
    import gradio as gr
    from sqlalchemy.exc import OperationalError

    from app import ui_rate
    from app.ui_rate_tab import RateHandlers

    warnings: list = []
    alice = ui_rate_who(ui_world)
    state = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, alice, None, batch_size=4).state
    image = state["batch"][0]
    request = gr.Request(username="alice", client={"host": "127.0.0.1", "port": 1})

    def refused(request):
        raise gr.Error("your sign-in has run out; sign in again")

    handlers = RateHandlers(ui_world.services(), refused, warnings.append)
    outputs = handlers.on_rate(state, gr.EventData(None, {"image_id": image, "score": 7, "seq": 3}), request)
    assert json.loads(outputs[1]) == {"failed": True, "done": 3}
    assert outputs[0] == outputs[2] == outputs[3] == gr.skip()
    assert warnings == ["your sign-in has run out; sign in again"]

    def locked(*args, **kwargs):
        raise OperationalError("UPDATE ratings", {}, Exception("database is locked"))

    handlers = RateHandlers(ui_world.services(), lambda request: alice, warnings.append)
    monkeypatch.setattr(ui_rate, "undo", locked)
    with caplog.at_level("ERROR", logger="app.ui_rate_tab"):
        outputs = handlers.on_undo(state, gr.EventData(None, {"seq": 4}), request)
    assert json.loads(outputs[1]) == {"failed": True, "done": 4}
    assert "reload the page" in warnings[-1]
    assert any("database is locked" in (r.exc_text or "") for r in caplog.records)


def test_a_page_action_opens_no_more_write_transactions_than_its_deadline_counts(ui_world):
    """The page gives up an action ACTION_RUN_S after the server started on it (eleventh review, app.ui_assets): each
    write transaction waits at most the busy timeout for SQLite's write lock, and the deadline counts ACTION_WRITES of
    them. Counted here, by the engine's own begin events, over a rater's whole round with auto-close on (a rating
    that ends a batch and the round: the rating, auto-close's closing, the next batch's leases), skips and undos:
    none opens more, and one opens that many."""
    from sqlalchemy import event

    from app import auth, experiment_options, ui_assets, ui_rate
    from db.engine import SQLITE_BEGIN_OPTION

    root = auth.identify(ui_world.factory, local_mode=False, username="root", client_host="127.0.0.1")
    experiment_options.set_options(ui_world.factory, root, ui_world.experiment_id, auto_close=True)
    alice = ui_rate_who(ui_world)
    engine = ui_world.factory.kw["bind"]
    writes = [0]

    def began(conn) -> None:
        if conn.get_execution_options().get(SQLITE_BEGIN_OPTION) == "IMMEDIATE":
            writes[0] += 1

    def counted(act, *args, **kwargs) -> tuple[int, object]:  # the write transactions act opened, and its result
        writes[0] = 0
        result = act(ui_world.factory, data_dir, alice, *args, batch_size=size, **kwargs)
        return writes[0], result

    data_dir, size = ui_world.settings.data_dir, 4
    state = ui_rate.load_batch(ui_world.factory, data_dir, alice, None, batch_size=size).state
    event.listen(engine, "begin", began)
    try:
        seen = []
        first = state["batch"][0]
        seen.append(counted(ui_rate.skip, state, {"image_id": first})[0])
        seen.append(counted(ui_rate.undo, state)[0])
        rated: set[int] = set()
        for _ in range(3 * len(ui_world.image_ids)):  # every image the round offers alice, batch after batch
            left = [i for i in state["batch"] if i not in rated]
            if not left:
                break
            n, view = counted(ui_rate.rate, state, {"image_id": left[0], "score": 6})
            seen.append(n)
            rated.add(left[0])
            state = view.state
    finally:
        event.remove(engine, "begin", began)
    assert max(seen) == ui_assets.ACTION_WRITES, seen


def test_an_actions_marks_say_what_the_page_shows_and_whether_it_was_refused(ui_world):
    """Twelfth review (6 Dec 2026): the page sends again after a restart what it kept, only where it shows the same
    experiment and round, and says how many were done and how many refused: the marks carry the experiment and round
    shown, and an action the server refused (its warning; nothing changed) says ``refused``."""
    import gradio as gr

    from app import ui_rate
    from app.ui_rate_tab import RateHandlers

    warnings: list = []
    handlers = RateHandlers(ui_world.services(), lambda request: ui_rate_who(ui_world), warnings.append)
    state = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, ui_rate_who(ui_world), None,
                               batch_size=4).state
    image = state["batch"][0]
    request = gr.Request(username="alice", client={"host": "127.0.0.1", "port": 1})

    def marks(outputs) -> dict:
        return json.loads(outputs[1])

    done = marks(handlers.on_rate(state, gr.EventData(None, {"image_id": image, "score": 7, "seq": 1}), request))
    assert (done["experiment"], done["round"]) == (ui_world.experiment_id, state["round_id"]) and "refused" not in done
    assert not warnings
    refused = marks(handlers.on_rate(state, gr.EventData(None, {"image_id": image, "score": 11, "seq": 2}), request))
    assert refused["refused"] is True and refused["done"] == 2 and len(warnings) == 1
    undone = marks(handlers.on_undo(state, gr.EventData(None, {"seq": 3}), request))
    assert "refused" not in undone and len(warnings) == 1


def _skipped_then_reloaded(ui_world):
    """alice skips the first image of her batch (of 2) and the page loads again: (alice, data dir, the image, the
    reloaded page's state), the skipped image left out of its batch."""
    from app import ui_rate

    alice = ui_rate_who(ui_world)
    data_dir = ui_world.settings.data_dir
    state = ui_rate.load_batch(ui_world.factory, data_dir, alice, None, batch_size=2).state
    image = state["batch"][0]
    assert ui_rate.skip(ui_world.factory, data_dir, alice, state, {"image_id": image}, batch_size=2).message is None
    reloaded = ui_rate.load_batch(ui_world.factory, data_dir, alice, None, batch_size=2).state
    assert image not in reloaded["batch"]
    return alice, data_dir, image, reloaded


def test_a_skip_sent_again_after_its_image_left_the_batch_is_done_once(ui_world):
    """Twelfth review (6 Dec 2026): the page sends again, after a restart, the skip in flight when the connection broke
    (it may or may not have arrived). One that had arrived was refused ("not in your current batch"): the reloaded
    page's batch leaves skipped images out. A skip of an image the rater has skipped in the page's round is now done
    (nothing more written: one undo step); one of an image neither in the batch nor skipped is refused as before."""
    from sqlalchemy import func, select

    from app import ui_rate
    from db.engine import read_session
    from db.models import UndoStep

    alice, data_dir, image, reloaded = _skipped_then_reloaded(ui_world)
    again = ui_rate.skip(ui_world.factory, data_dir, alice, reloaded, {"image_id": image}, batch_size=2)
    assert again.message is None
    with read_session(ui_world.factory) as s:
        assert s.scalar(select(func.count()).select_from(UndoStep).where(UndoStep.rater_id == alice.rater_id)) == 1
    other = next(i for i in ui_world.image_ids if i not in reloaded["batch"] and i != image)
    refused = ui_rate.skip(ui_world.factory, data_dir, alice, reloaded, {"image_id": other}, batch_size=2)
    assert "not in your current batch" in refused.message


def test_a_rating_sent_again_after_its_images_skip_arrived_is_saved(ui_world):
    """Found by a read-only review (6 Dec 2026): the page's skip of A arrived, then the connection broke with its
    rating of A (5) kept; sent again after the reload, the rating was refused ("not in your current batch; reload the
    page"): the reloaded batch leaves skipped images out. Rating an image the rater skipped in the page's round is
    what the rater asked for: it is now saved (and the skip taken back); one neither in the batch, rated nor skipped
    is refused as before."""
    from app import ui_rate
    from db import repo
    from db.engine import read_session

    alice, data_dir, image, reloaded = _skipped_then_reloaded(ui_world)
    resent = ui_rate.rate(ui_world.factory, data_dir, alice, reloaded, {"image_id": image, "score": 5}, batch_size=2)
    assert resent.message is None
    with read_session(ui_world.factory) as s:
        assert repo.find_rating(session=s, image_id=image, rater_id=alice.rater_id).score == 5
        assert repo.find_skip(session=s, image_id=image, rater_id=alice.rater_id) is None
    other = next(i for i in ui_world.image_ids if i not in resent.state["batch"] and i != image)
    refused = ui_rate.rate(ui_world.factory, data_dir, alice, resent.state, {"image_id": other, "score": 5},
                           batch_size=2)
    assert "not in your current batch" in refused.message


def test_an_undo_the_page_gave_up_is_not_done_after_a_later_action_of_the_page(ui_world):
    """Twelfth review (6 Dec 2026): the page gives up an undo whose handler overran or whose queue stood still and
    sends the next action; the undo stayed on the server and, run after a rating sent since, took that rating back
    instead of the one meant. The server now notes each page's newest action number (per browser session) that did
    something (since the thirteenth review: in its transaction, not when its handler starts), and an undo numbered
    below it is refused with one sentence, nothing changed. Another page's
    numbers hold nothing back, and an undo in its turn works as before."""
    import gradio as gr

    from app import ui_rate
    from app.ui_rate_tab import RateHandlers
    from db import repo
    from db.engine import read_session

    alice = ui_rate_who(ui_world)
    warnings: list = []
    handlers = RateHandlers(ui_world.services(), lambda request: alice, warnings.append)
    state = ui_rate.load_batch(ui_world.factory, ui_world.settings.data_dir, alice, None, batch_size=4).state
    a, b, c = state["batch"][:3]
    tab = gr.Request(username="alice", session_hash="tab-1")

    def act(handler, seq, request=tab, **data):
        return handler(state, gr.EventData(None, {**data, "seq": seq}), request)

    def scores() -> list:
        with read_session(ui_world.factory) as s:
            return [getattr(repo.find_rating(session=s, image_id=i, rater_id=alice.rater_id), "score", None)
                    for i in (a, b, c)]

    act(handlers.on_rate, 1, image_id=a, score=7)
    act(handlers.on_rate, 2, image_id=b, score=6)
    # the undo numbered 3 was given up by the page, which sent rating 4; the undo runs only now
    act(handlers.on_rate, 4, image_id=c, score=5)
    late = json.loads(act(handlers.on_undo, 3)[1])
    assert scores() == [7, 6, 5] and late["done"] == 3 and late["refused"] is True
    assert warnings == [f"Cannot undo: {ui_rate.UNDO_OVERTAKEN}"]
    act(handlers.on_undo, 5)  # an undo in its turn takes back the newest: c
    assert scores() == [7, 6, None] and len(warnings) == 1
    act(handlers.on_undo, 1, request=gr.Request(username="alice", session_hash="tab-2"))  # another page: b
    assert scores() == [7, None, None] and len(warnings) == 1
    act(handlers.on_undo, 4)  # the page's undo numbered 4, now the newest noted (5): refused, nothing changed
    assert scores() == [7, None, None] and len(warnings) == 2
