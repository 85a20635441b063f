"""app.gradio_routes' pure checks, against hand-written cases (the HTTP behaviour is in test_web_guard.py)."""

import json

from app import gradio_routes as gr_routes


def test_unused_routes_and_the_ones_the_page_needs():
    for path in ("/gradio_api/deep_link", "/gradio_api/deep_link/", "/gradio_api/proxy=http://x", "/monitoring",
                 "/monitoring/k/dashboard", "/gradio_api/stream/a/b/1/x.ts", "/gradio_api/vibe-edit/",
                 "/gradio_api/runs", "/gradio_api/dev/reload", "/gradio_api/profiling/traces",
                 "/gradio_api/run/next_batch", "/gradio_api/api/next_batch",  # these two run a handler outside the queue
                 "/gradio_api/file=/tmp/gradio/abc/x.png", "/file=/x.png", "/gradio_api/file/x.png", "/file/x.png"):
        assert gr_routes.unused(path), path
    for path in ("/", "/config", "/gradio_api/info", "/gradio_api/queue/join", "/gradio_api/queue/data",
                 "/gradio_api/heartbeat/abc", "/gradio_api/call/submit_rating",
                 "/gradio_api/startup-events", "/theme.css", "/assets/index.js"):
        assert not gr_routes.unused(path), path


def test_deep_link_parameters_are_refused_however_written():
    assert gr_routes.query_refusal(b"") is None and gr_routes.query_refusal(b"page=x&__theme=dark") is None
    for query in (b"deep_link=abc", b"deep_link=", b"a=1&deep_link=x", b"deep%5Flink=x"):
        assert gr_routes.query_refusal(query) is not None, query


def test_bodies_with_a_file_object_anywhere_are_refused():
    fd = {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}}
    for data in ([fd], [1, {"a": [fd]}], [[[[fd]]]], {"data": [{"x": {"meta": {"_type": "anything"}, "path": "p"}}]}):
        why, _ = gr_routes.body_refusal(json.dumps({"data": data}).encode())
        assert why is not None and "takes no files" in why, data
    why, parsed = gr_routes.body_refusal(json.dumps({"data": [1, "meta", {"meta": "text"}], "session_hash": "h"}).encode())
    assert why is None and parsed["session_hash"] == "h"
    assert gr_routes.body_refusal(b"")[0] is None
    assert gr_routes.body_refusal(b"\xff")[0] == "The request body is not JSON."
    deep = b"[" * 70 + b"]" * 70
    assert "nested deeper" in gr_routes.body_refusal(deep)[0]
    assert gr_routes.body_refusal(b"[" * 100_000 + b"]" * 100_000)[0] is not None  # refused, not a crash


def _values(value) -> int:
    """How many JSON values ``value`` is: itself and, recursively, every item and member value."""
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return 1 + sum(_values(v) for v in children)


def test_a_body_of_more_values_than_any_event_takes_is_refused_and_the_walk_stops_early():
    """A review's 256 KiB body of ~131,000 zeros was walked value by value (~220 ms of the event loop); a body now
    carries at most MAX_VALUES values (counted here by plain recursion), and the walk stops at that count."""
    limit = gr_routes.MAX_VALUES
    sentence = f"The request body carries more than {limit} values; no event of this app takes that many."
    assert gr_routes.body_refusal(("[" + ",".join(["0"] * 131_000) + "]").encode()) == (sentence, None)
    for data in ([0] * (limit - 2), [[0] * 10 for _ in range((limit - 2) // 11)], [{"a": [1, 2]}] * ((limit - 2) // 4)):
        body = {"data": data}
        assert _values(body) <= limit, _values(body)
        why, parsed = gr_routes.body_refusal(json.dumps(body).encode())
        assert why is None and parsed == body
        body["data"].extend([0] * (limit + 1 - _values(body)))  # one value over
        assert _values(body) == limit + 1 and gr_routes.body_refusal(json.dumps(body).encode()) == (sentence, None)
    walked = []

    class Counted(list):  # a list that tells when the walk goes through it
        def __iter__(self):
            walked.append(len(self))
            return super().__iter__()

    # 100,000 lists in one list: the walk looked into every one of them
    assert gr_routes.parsed_refusal({"data": Counted(Counted([0]) for _ in range(100_000))}) == sentence
    assert len(walked) <= 1, len(walked)
    wide = {"data": Counted(Counted([0] * 3) for _ in range(limit // 5))}  # under the limit: each list walked once
    assert _values(wide) <= limit
    walked.clear()
    assert gr_routes.parsed_refusal(wide) is None and len(walked) == limit // 5 + 1


def test_a_number_too_large_for_a_float_is_refused_in_one_sentence():
    """A JSON integer over ~1.8e308 in a Number input raised OverflowError in the guard's check (math.isfinite): a 500
    and a traceback. It is no number Gradio can take (float() of it overflows), so it is the usual sentence."""
    import gradio as gr

    for value in (10**309, -(10**400), int(1.7e308) * 2):
        try:
            float(value)
        except OverflowError:
            pass
        else:
            raise AssertionError(f"{value} fits a float")
        assert gr_routes.value_refusal(gr.Number(label="Round"), value, 0) == \
            f"The input 'Round' takes a number, got {gr_routes._shown(value)}."
        custom = gr.Dropdown(label="Account", choices=[], allow_custom_value=True)
        assert "takes a value of its own" in gr_routes.value_refusal(custom, value, 0)
    for value in (10**308, int(1.7e308), -5, 0):  # as large as a float goes, and ordinary ones
        assert gr_routes.value_refusal(gr.Number(label="Round"), value, 0) is None, value
        assert gr_routes.value_refusal(gr.Dropdown(label="Account", choices=[], allow_custom_value=True), value, 0) is None


def test_the_session_hash_a_request_names():
    assert gr_routes.session_hash_of("/gradio_api/heartbeat/abc", b"", None) == "abc"
    assert gr_routes.session_hash_of("/gradio_api/queue/data", b"session_hash=xyz", None) == "xyz"
    assert gr_routes.session_hash_of("/gradio_api/queue/data", b"", None) is None
    assert gr_routes.session_hash_of("/gradio_api/queue/join", b"", {"session_hash": "q"}) == "q"
    assert gr_routes.session_hash_of("/gradio_api/queue/join", b"", {"session_hash": None}) is None
    assert gr_routes.session_hash_of("/config", b"", None) is None


def test_a_session_hash_is_a_short_token_as_gradios_clients_make_it():
    import pytest

    for good in ("k3j9x0a2bq1", "0b6f0a52-43a5-4b4c-9a53-1d2e4b7f9c11", "a", "A_-9" * 16):
        assert gr_routes.session_hash_of(f"/gradio_api/heartbeat/{good}", b"", None) == good
        assert gr_routes.session_hash_of("/gradio_api/queue/data", f"session_hash={good}".encode(), None) == good
        assert gr_routes.session_hash_of("/gradio_api/queue/join", b"", {"session_hash": good}) == good
    for bad in ("", "a b", "x" * 65, "\x00", "\u00e9", "a.b", "a%00"):
        with pytest.raises(ValueError, match="1 to 64 letters"):
            gr_routes.session_hash_of("/gradio_api/queue/data", f"session_hash={bad}".encode(), None)
        with pytest.raises(ValueError, match="1 to 64 letters"):
            gr_routes.session_hash_of("/gradio_api/call/next_batch", b"", {"session_hash": bad})
        if bad:
            with pytest.raises(ValueError, match="1 to 64 letters"):
                gr_routes.session_hash_of(f"/gradio_api/heartbeat/{bad}", b"", None)
    for bad in (5, True, ["a"], {"a": 1}):
        with pytest.raises(ValueError, match="1 to 64 letters"):
            gr_routes.session_hash_of("/gradio_api/queue/join", b"", {"session_hash": bad})


def test_results_wait_only_while_an_event_of_the_session_is_unread():
    from types import SimpleNamespace

    queue = SimpleNamespace(pending_messages_per_session={"s": [], "read": [], "c1": []},
                            pending_event_ids_session={"s": {"e1"}, "read": set(), "c1": {"c1"}},
                            event_ids_to_events={"e1": SimpleNamespace(session_hash="s")})
    assert gr_routes.waiting(queue, "s") and gr_routes.waiting(queue, "c1")
    assert not gr_routes.waiting(queue, "read") and not gr_routes.waiting(queue, "new") and not gr_routes.waiting(queue, None)
    assert gr_routes.has_results_stream(queue, "s") and gr_routes.has_results_stream(queue, "read")  # Gradio serves both
    assert not gr_routes.has_results_stream(queue, "new") and not gr_routes.has_results_stream(queue, None)
    assert gr_routes.session_of_event(queue, "e1") == "s" and gr_routes.session_of_event(queue, "c1") == "c1"
    assert gr_routes.session_of_event(queue, "gone") is None
    assert gr_routes.call_read_of("/gradio_api/call/next_batch/e1", "GET") == ("next_batch", "e1")
    assert gr_routes.call_read_of("/gradio_api/call/v2/next_batch/e1", "GET") == ("next_batch", "e1")
    assert gr_routes.call_read_of("/gradio_api/call/v2/e1", "GET") == ("v2", "e1")
    assert gr_routes.call_api_of("/gradio_api/call/next_batch", "POST") == "next_batch"
    assert gr_routes.call_api_of("/gradio_api/call/v2/next_batch", "POST") == "next_batch"
    assert gr_routes.call_api_of("/gradio_api/queue/join", "POST") is None
    assert gr_routes.reads_session("/gradio_api/queue/data", "GET") and not gr_routes.reads_session("/gradio_api/queue/join", "POST")


def test_owners_first_account_wins_and_an_account_forgets_only_its_own_oldest():
    owners = gr_routes.Owners(per_account=2)
    assert owners.refusal("h1", "alice") is None and owners.refusal("h1", "alice") is None
    assert owners.refusal("h1", "bob") == "This session of the app belongs to another account."
    assert owners.refusal("h1", None).startswith("Sign in first")
    for k in range(1000):  # bob uses many hashes: he forgets his own, never alice's
        assert owners.refusal(f"bob-{k}", "bob") is None
    assert owners.owner("h1") == "alice" and owners.refusal("h1", "bob") is not None
    assert owners.owner("bob-0") is None and owners.owner("bob-999") == "bob"
    owners.refusal("h2", "alice")
    owners.refusal("h3", "alice")  # alice's third: her oldest (h1) is forgotten
    assert owners.owner("h1") is None and owners.owner("h3") == "alice"
    owners.refusal("h2", "alice")  # h2 used again: now h3 is her oldest
    owners.refusal("h4", "alice")
    assert owners.owner("h2") == "alice" and owners.owner("h3") is None


def test_a_query_naming_two_session_hashes_is_refused():
    import pytest

    with pytest.raises(ValueError, match="more than one session_hash"):
        gr_routes.session_hash_of("/gradio_api/queue/data", b"session_hash=mine&session_hash=theirs", None)
    with pytest.raises(ValueError):
        gr_routes.session_hash_of("/gradio_api/queue/data", b"session_hash=&session_hash=theirs", None)


def test_the_event_a_call_reads_and_the_requests_that_make_one():
    assert gr_routes.event_of("/gradio_api/call/next_batch/abc", "GET") == "abc"
    assert gr_routes.event_of("/gradio_api/call/v2/next_batch/abc", "GET") == "abc"
    assert gr_routes.event_of("/gradio_api/call/v2/abc", "GET") == "abc"  # Gradio reads it as api "v2", event abc
    assert gr_routes.event_of("/gradio_api/call/next_batch", "GET") is None
    assert gr_routes.event_of("/gradio_api/call/next_batch/abc", "POST") is None
    assert gr_routes.makes_event("/gradio_api/queue/join", "POST") and gr_routes.makes_event("/gradio_api/call/x", "POST")
    assert not gr_routes.makes_event("/gradio_api/queue/data", "GET")
    assert gr_routes.event_id_in(b'{"event_id": "e1"}') == "e1" and gr_routes.event_id_in(b"[1]") is None
    assert gr_routes.unused("/gradio_api/file=http://1.1.1.1/x.png") and gr_routes.unused("/gradio_api/file/https://x/y")


def test_owners_tell_what_an_account_forgets_and_the_sweep_drops_only_unowned_old_sessions():
    import datetime
    import threading
    from types import SimpleNamespace

    forgotten = []
    owners = gr_routes.Owners(per_account=2, on_forget=forgotten.append)
    for key in ("a1", "a2", "a3"):
        owners.claim(key, "alice")
    owners.claim("b1", "bob")
    assert forgotten == ["a1"] and owners.owner("a1") is None

    deleted = []
    now = datetime.datetime.now()
    old, fresh = now - datetime.timedelta(seconds=60), now - datetime.timedelta(seconds=1)
    holder = SimpleNamespace(session_data={"a1": 1, "a2": 2, "b1": 3, "new": 4, "stray": 5}, lock=threading.Lock(),
                             time_last_used={"a1": old, "a2": old, "b1": old, "new": fresh, "stray": old},
                             delete_state=deleted.append)
    dropped = gr_routes.sweep_unowned(holder, lambda k: owners.owner(k) is not None, grace_s=30)
    assert dropped == 2 and sorted(deleted) == ["a1", "stray"]
    assert sorted(holder.session_data) == ["a2", "b1", "new"] and sorted(holder.time_last_used) == ["a2", "b1", "new"]
    assert gr_routes.drop_session_state(holder, "a2") and not gr_routes.drop_session_state(holder, "a2")


def test_owners_keep_pinned_keys_up_to_a_hard_limit():
    """A page's session (its heartbeat open) or an event still running is pinned: the account forgets its oldest
    unpinned key instead, and pinned ones only past ``hard_max`` (found by review: a script's 32 sessions pushed out
    the page of the same account, whose next rating was lost)."""
    forgotten, live = [], {"page"}
    owners = gr_routes.Owners(per_account=2, on_forget=forgotten.append, pinned=live.__contains__, hard_max=3)
    for key in ("page", "s1", "s2", "s3"):
        owners.claim(key, "alice")
    assert forgotten == ["s1"] and owners.owner("page") == "alice"
    assert owners.keys_of("alice") == ["page", "s2", "s3"] and owners.keys_of("bob") == []
    live.update({"s2", "s3"})
    owners.claim("s4", "alice")  # all three pinned and a fourth: past hard_max the oldest goes, pinned or not
    assert forgotten == ["s1", "page"] and owners.keys_of("alice") == ["s2", "s3", "s4"]


def test_dropping_a_session_drops_its_unread_results_unless_an_event_of_it_is_still_running():
    import threading
    from types import SimpleNamespace

    holder = SimpleNamespace(session_data={"done": 1}, lock=threading.Lock(), time_last_used={"done": None},
                             delete_state=lambda key: None)
    queue = SimpleNamespace(pending_messages_per_session={"done": ["result"], "running": ["progress"], "orphan": ["r"]},
                            pending_event_ids_session={"done": {"e1"}, "running": {"e2"}},
                            event_ids_to_events={"e2": object()})
    assert gr_routes.drop_session_state(holder, "done", queue)
    assert "done" not in queue.pending_messages_per_session and "done" not in queue.pending_event_ids_session
    assert not gr_routes.drop_session_state(holder, "running", queue)
    assert queue.pending_messages_per_session["running"] == ["progress"]  # its event would write to it
    assert gr_routes.drop_session_state(holder, "orphan", queue)  # results with no state of their own
    assert gr_routes.sweep_unowned(holder, lambda k: False, grace_s=0, queue=queue) == 0
    queue.pending_messages_per_session["stray"] = ["r"]
    assert gr_routes.sweep_unowned(holder, lambda k: False, grace_s=0, queue=queue) == 1
    assert list(queue.pending_messages_per_session) == ["running"]


def test_events_waiting_running_or_unread_are_counted_per_account():
    from types import SimpleNamespace

    sessions, events = gr_routes.Owners(per_account=8), gr_routes.Owners(per_account=8)
    sessions.claim("page", "alice")
    events.claim("call-1", "alice")  # a curl-style call's session is named by its event id
    events.claim("e-page", "alice")  # a page's event: its id names no session
    sessions.claim("bobs", "bob")
    queue = SimpleNamespace(pending_event_ids_session={"page": {"e-page", "e2"}, "call-1": {"call-1"}, "bobs": {"x"}})
    assert gr_routes.outstanding("alice", queue, sessions, events) == 3
    assert gr_routes.outstanding("carol", queue, sessions, events) == 0


def test_an_input_value_is_checked_against_its_components_kind():
    import gradio as gr

    number, box, text = gr.Number(label="Round"), gr.Checkbox(label="Allowed"), gr.Textbox(label="Name")
    pick = gr.Dropdown(label="Experiment", choices=[("a", 1), ("b", 2)])
    several = gr.Dropdown(label="Tags", choices=["x", "y"], multiselect=True)
    custom = gr.Dropdown(label="Account", choices=[], allow_custom_value=True)
    role = gr.Radio(label="Role", choices=["rater", "admin"])
    for block, value in ((number, 3), (number, 2.5), (number, 10**30), (box, False), (text, ""), (pick, 2), (pick, 2.0),
                         (several, ["y", "x"]), (several, []), (custom, "bob"), (role, "admin"), (gr.State(), "x")):
        assert gr_routes.value_refusal(block, value, 0) is None, (block, value)
    for block in (number, box, text, pick, several, custom, role):
        assert gr_routes.value_refusal(block, None, 0) is None  # every component's empty value
    assert gr_routes.value_refusal(number, "abc", 1) == "The input 'Round' takes a number, got 'abc'."
    for value in (float("nan"), float("inf"), True, [1]):
        assert "takes a number" in gr_routes.value_refusal(number, value, 1), value
    assert gr_routes.value_refusal(box, 1, 0) == "The input 'Allowed' takes true or false, got 1."
    assert gr_routes.value_refusal(text, 5, 0) == "The input 'Name' takes text, got 5."
    assert gr_routes.value_refusal(pick, "nope", 0) == "The input 'Experiment' takes one of its choices (1, 2), got 'nope'."
    for value in (True, "1", [1], {"a": 1}, 3):  # true is not 1 here, nor "1"
        assert "takes one of its choices" in gr_routes.value_refusal(pick, value, 0), value
    assert gr_routes.value_refusal(several, "x", 0) == ("The input 'Tags' takes a list of values, each one of its "
                                                        "choices ('x', 'y'), got 'x'.")
    assert "a list of values, each one of its choices" in gr_routes.value_refusal(several, ["x", "z"], 0)
    assert gr_routes.value_refusal(custom, ["bob"], 0) == ("The input 'Account' takes a value of its own (text or a "
                                                          "number), got ['bob'].")
    assert gr_routes.value_refusal(gr.Dropdown(label="A", choices=["x"], allow_custom_value=True), True, 0) == \
        "The input 'A' takes one of its choices ('x') or a value of its own, got True."
    assert gr_routes.value_refusal(role, "god", 0) == "The input 'Role' takes one of its choices ('rater', 'admin'), got 'god'."
    assert "no choices to pick from" in gr_routes.value_refusal(gr.Dropdown(label="Experiment", choices=[]), 1, 0)
    assert gr_routes.value_refusal(gr.Number(), "x", 2) == "The input number 3 takes a number, got 'x'."
    long = gr_routes.value_refusal(gr.Textbox(label="x" * 100), 1, 0)
    assert long == f"The input '{'x' * 57}...' takes text, got 1."


def test_a_number_outside_its_components_range_is_refused_exactly_where_gradio_would_raise():
    """Second review of 5 Dec 2026: Gradio's own range check (``Number.preprocess``) raised with a traceback in the log
    for a number outside a component's minimum or maximum. The guard refuses such a number first, naming the range,
    and exactly those Gradio would refuse (checked against Gradio itself): an edge passes."""
    import gradio as gr
    from gradio.exceptions import Error

    blocks = (gr.Number(label="Share", minimum=0, maximum=0.5), gr.Number(label="Epochs", minimum=1, precision=0),
              gr.Number(label="Cap", maximum=8), gr.Number(label="Free"), gr.Number(label="Floats", minimum=-1.5,
                                                                                     maximum=2.0))
    for block in blocks:
        for value in (-10**9, -2, -1.5, -1, -0.05, 0, 0.25, 0.5, 0.51, 0.9, 1, 2, 2.0000001, 8, 8.5, 10**30):
            try:
                block.preprocess(value)
                gradio_refuses = False
            except Error:
                gradio_refuses = True
            refusal = gr_routes.value_refusal(block, value, 0)
            assert (refusal is not None) == gradio_refuses, (block.label, value, refusal)
    share, epochs, cap, _, floats = blocks
    assert gr_routes.value_refusal(share, 0.9, 0) == "The input 'Share' takes a number from 0 to 0.5, got 0.9."
    assert gr_routes.value_refusal(epochs, 0, 0) == "The input 'Epochs' takes a number of at least 1, got 0."
    assert gr_routes.value_refusal(cap, 9, 0) == "The input 'Cap' takes a number of at most 8, got 9."
    assert gr_routes.value_refusal(floats, 3, 0) == "The input 'Floats' takes a number from -1.5 to 2, got 3."


def test_admin_only_marks_a_handler_and_its_bound_methods():
    @gr_routes.admin_only
    def handler(request=None):
        return request

    class Handlers:
        @gr_routes.admin_only
        def on_admin(self, request=None):
            return request

        def on_rate(self, request=None):
            return request

    h = Handlers()
    assert gr_routes.is_admin_only(handler) and gr_routes.is_admin_only(h.on_admin) and handler(5) == 5
    assert not gr_routes.is_admin_only(h.on_rate) and not gr_routes.is_admin_only(None)
