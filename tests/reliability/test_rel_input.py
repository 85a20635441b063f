"""Bad input against the public API: Hypothesis throws arbitrary JSON-like values at ``submit_rating`` and
``next_batch`` (the very functions ``ui.build_demo`` registers with ``gr.api``; Gradio passes them the request's
JSON unprocessed), and at the launched server over raw HTTP.

Each request must either succeed (and then change exactly what it says) or be refused with ``gr.Error`` carrying
one of the documented sentences, with the database unchanged. Any other exception is a server error and fails.
The default run makes 600 + 400 handler calls and 60 HTTP calls; ``-m slow`` makes 5,000 + 2,000 and 500.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from pathlib import Path

import gradio as gr
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app import ui
from db import repo
from db.engine import write_session

PASSWORD = "correct horse battery"
REFUSALS = re.compile(
    r"(whole number from 1 to 10|image id must be a positive whole number|no image with id|is not offered to you|"
    r"closed for labeling|evaluation image|limit must be a whole number from 1 to 64|no experiment named|"
    r"experiment name must be text|contains a NUL character)", re.I)
INTERNALS = re.compile(r"(Traceback|invalid literal|int\(\)|NoneType|object has no attribute|sqlalchemy|sqlite3|Errno)", re.I)
FAST = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)


@pytest.fixture(scope="module")
def api(tmp_path_factory, _sqlite_at_head, ui_world_builder):
    """An open round (6 query + 2 eval images, overlap 2), a closed round of another experiment, accounts,
    and the two API handlers as plain functions."""
    from db import testing as dbt

    tmp = tmp_path_factory.mktemp("api-fuzz")
    url = dbt.copy_sqlite(_sqlite_at_head, tmp / "seiko.db")
    world = ui_world_builder(url, tmp / "ui", n_images=6, overlap=2, accounts=True)
    with write_session(world.factory) as s:  # a second experiment whose round is closed (training)
        exp = repo.create_experiment(session=s, name="closed-exp", model_spec="m", method="greedy", config={}, budgets=[2],
                                     prompts=["a shape"])
        closed = repo.create_round(session=s, experiment_id=exp.id)
    closed_ids = world.add_round_images(closed.id, 2, start=100)
    with write_session(world.factory) as s:
        repo.open_round(session=s, round_id=closed.id)
        repo.set_round_status(session=s, round_id=closed.id, status="training")
    demo = ui.build_demo(world.services(batch_size=4))
    fns = {bf.fn.__name__: bf.fn for bf in demo.fns.values() if bf.fn is not None}
    world.closed_ids = closed_ids
    world.db_path = Path(url.removeprefix("sqlite:///"))
    yield world, fns["submit_rating"], fns["next_batch"]
    world._engine.dispose()


def fingerprint(db_path: Path) -> tuple:
    """Every row that a rating request could touch, read with a plain sqlite3 connection (a few cheap queries):
    ({(image_id, rater_id): (score, updated_at)}, skips, counts of the other tables)."""
    c = sqlite3.connect(db_path)
    try:
        ratings = {(i, r): (score, at) for i, r, score, at in c.execute("SELECT image_id, rater_id, score, updated_at FROM ratings")}
        skips = sorted(c.execute("SELECT image_id, rater_id FROM skips"))
        other = c.execute("SELECT (SELECT count(*) FROM raters), (SELECT count(*) FROM images), (SELECT group_concat(status) FROM rounds),"
                          " (SELECT count(*) FROM jobs), (SELECT count(*) FROM experiments)").fetchone()
    finally:
        c.close()
    return ratings, skips, other


def request_of(name: str) -> gr.Request:
    return gr.Request(username=name, client={"host": "127.0.0.1"})


json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30),
    st.sampled_from(["7", " 10 ", "10\n", "²", "٣", "1e1", "0x5", "+5", "-3", "", " ", "5.0", "NaN", "\x00", "१०"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                           max_leaves=6)
# What an HTTP client can send: JSON has no NaN or infinity (httpx refuses to encode them before any request).
http_json_values = st.recursive(
    json_scalars.filter(lambda v: not (isinstance(v, float) and not math.isfinite(v))),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def image_ids(world) -> st.SearchStrategy:
    """Real ids (as numbers, floats and strings), ids of eval images and of a closed round, and anything else."""
    real = world.image_ids + world.eval_image_ids + world.closed_ids
    return st.one_of(st.sampled_from(real), st.sampled_from(real).map(float), st.sampled_from(real).map(lambda i: f" {i} "),
                     st.integers(min_value=-3, max_value=max(real) + 3), json_values)


scores = st.one_of(st.integers(min_value=-2, max_value=12), st.integers(min_value=1, max_value=10).map(str), json_values)


def check_refusal(e: gr.Error) -> None:
    message = str(e.message if hasattr(e, "message") else e)
    assert REFUSALS.search(message), f"undocumented refusal: {message!r}"
    assert not INTERNALS.search(message), f"a refusal that shows internals: {message!r}"
    assert len(message) < 400 and message.count("\n") == 0, message


def submit_property(world, submit, image_id, score, rater: str = "alice") -> None:
    before = fingerprint(world.db_path)
    try:
        out = submit(image_id, score, request=request_of(rater))
    except gr.Error as e:
        check_refusal(e)
        assert fingerprint(world.db_path) == before, f"a refused request changed the database: {image_id!r}, {score!r}"
        return
    # accepted: only a real query image of the open round and a whole score from 1 to 10, and exactly that rating changed
    assert out["image_id"] in world.image_ids and isinstance(out["score"], int) and 1 <= out["score"] <= 10, out
    assert not isinstance(score, bool) and not isinstance(image_id, bool | list | dict)
    if isinstance(score, float):
        assert math.isfinite(score) and score == out["score"]
    after = fingerprint(world.db_path)
    assert after[1:] == before[1:], "a rating request changed skips or other tables"
    key = (out["image_id"], world.accounts[rater])
    assert after[0][key][0] == out["score"] and (out["previous_score"] is None) == (key not in before[0]), out
    assert {k: v for k, v in after[0].items() if k != key} == {k: v for k, v in before[0].items() if k != key}, \
        "a rating request changed another rating"


def batch_property(world, next_batch, limit, experiment) -> None:
    before = fingerprint(world.db_path)
    try:
        out = next_batch(limit, experiment, request=request_of("bob"))
    except gr.Error as e:
        check_refusal(e)
    else:
        assert isinstance(limit, int) and not isinstance(limit, bool) and 1 <= limit <= 64
        assert len(out["items"]) <= limit and set(out) >= {"experiment", "round", "items", "progress", "message"}
        json.dumps(out)  # what the API sends must be JSON
    assert fingerprint(world.db_path) == before, "next_batch changed the database"


N_SUBMIT = int(os.environ.get("SEIKO_FUZZ_SUBMIT", "600"))
N_BATCH = int(os.environ.get("SEIKO_FUZZ_BATCH", "400"))


def test_submit_rating_handler_survives_arbitrary_input(api):
    world, submit, _ = api

    @settings(FAST, max_examples=N_SUBMIT)
    @given(data=st.data())
    def run(data):
        image_id = data.draw(image_ids(world), "image_id")
        score = data.draw(scores, "score")
        submit_property(world, submit, image_id, score, rater=data.draw(st.sampled_from(["alice", "bob"]), "rater"))

    run()


def test_next_batch_handler_survives_arbitrary_input(api):
    world, _, next_batch = api

    @settings(FAST, max_examples=N_BATCH)
    @given(limit=st.one_of(st.integers(min_value=-2, max_value=70), json_values),
           experiment=st.one_of(st.sampled_from(["", "ui-exp", "closed-exp", "no such", " ui-exp "]), json_values))
    def run(limit, experiment):
        batch_property(world, next_batch, limit, experiment)

    run()


def test_found_by_fuzzing_examples_are_refused_cleanly(api):
    """The cases Hypothesis found (kept as plain examples): an image id beyond SQLite's 64-bit integers was an
    OverflowError (a server error, no sentence), a non-decimal digit such as '²' leaked "invalid literal for int()",
    and a non-text experiment name was an AttributeError."""
    world, submit, next_batch = api
    for image_id, score in ((2**63, 5), (2**70, 5), (1e300, 5), (world.image_ids[0], "²"), ("²", 5), (-(2**70), 5)):
        submit_property(world, submit, image_id, score)
    # found by review (3 Dec 2026): int() of a digit string over 4,300 digits raises its own ValueError, whose
    # text ("Exceeds the limit (4300 digits) ... sys.set_int_max_str_digits()") reached the rater
    for image_id, score in (("1" * 5000, 5), (world.image_ids[0], "7" * 5000), (str(2**63), 5), ("0" * 30 + "1", 5)):
        submit_property(world, submit, image_id, score)
        try:
            submit(image_id, score, request=request_of("alice"))
        except gr.Error as e:
            assert "4300" not in str(e.message) and "int_max_str_digits" not in str(e.message), e.message
        else:
            raise AssertionError(f"accepted {str(image_id)[:20]!r}, {str(score)[:20]!r}")
    for experiment in (5, ["ui-exp"], {"name": "ui-exp"}, 1.5, True):
        batch_property(world, next_batch, 4, experiment)
    # found by the fuzzing above in a review's worktree (6 Dec 2026, tenth review): an experiment name holding a NUL
    # is refused by the database layer's one sentence ("... contains a NUL character (\x00), which the database
    # cannot hold"), a documented refusal the list above lacked; derandomized, the run drew it there and not on main
    for experiment in ("\x00", "ui-exp\x00", "\x00ui-exp"):
        batch_property(world, next_batch, 4, experiment)


# ---------------------------------------------------------------------------------------------
# the same over HTTP, against the launched server
# ---------------------------------------------------------------------------------------------


def call_api(http: httpx.Client, api_name: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/<api_name>, then read its event stream: ("complete", value) or ("error", message)."""
    r = http.post(f"/gradio_api/call/{api_name}", json={"data": data})
    if r.status_code != 200:
        return f"http {r.status_code}", r.text[:200]
    event_id = r.json()["event_id"]
    event = None
    deadline = time.monotonic() + 60
    with http.stream("GET", f"/gradio_api/call/{api_name}/{event_id}") as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.split(":", 1)[1].strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                return event, json.loads(line[5:])
            assert time.monotonic() < deadline
    raise AssertionError("the event stream ended without a result")


N_HTTP = int(os.environ.get("SEIKO_FUZZ_HTTP", "60"))


def test_api_over_http_survives_arbitrary_json(rel_server):
    world, _, url = rel_server
    db_path = Path(world.settings.db_url.removeprefix("sqlite:///"))
    with httpx.Client(base_url=url, timeout=60) as http:
        assert http.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 200
        # a refusal and a success, to see that the harness tells them apart
        assert call_api(http, "submit_rating", [world.image_ids[0], 11])[0] == "error"
        assert call_api(http, "submit_rating", [world.image_ids[0], 4])[0] == "complete"

        @settings(FAST, max_examples=N_HTTP)
        @given(api_name=st.sampled_from(["submit_rating", "next_batch"]),
               data=st.one_of(st.lists(http_json_values, max_size=4),
                              st.tuples(st.sampled_from(world.image_ids), http_json_values).map(list),
                              st.tuples(http_json_values, st.integers(min_value=0, max_value=11)).map(list)))
        def run(api_name, data):
            before = fingerprint(db_path)
            outcome, value = call_api(http, api_name, data)
            assert not outcome.startswith("http 5"), (api_name, data, outcome, value)
            if len(data) != 2:
                # Gradio itself refuses a wrong number of inputs before the app runs (an error event with a null
                # message; see RELIABILITY.md): nothing may change
                assert fingerprint(db_path) == before, f"{api_name}{data!r} changed the database"
                return
            if outcome == "error":
                # gr.Error sends its sentence; an unexpected exception sends {"error": null} (Gradio hides the message)
                message = value.get("error") if isinstance(value, dict) else value
                assert isinstance(message, str) and message, f"server error for {api_name}{data!r}: {value!r}"
                assert REFUSALS.search(message), f"undocumented refusal: {message!r}"
                assert fingerprint(db_path) == before, f"a refused {api_name}{data!r} changed the database"
            elif outcome == "complete" and api_name == "next_batch":
                assert fingerprint(db_path) == before

        run()


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_many_more_bad_inputs(api):
    world, submit, next_batch = api

    @settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, max_examples=5000)
    @given(data=st.data())
    def run_submit(data):
        submit_property(world, submit, data.draw(image_ids(world)), data.draw(scores), data.draw(st.sampled_from(["alice", "bob"])))

    @settings(deadline=None, suppress_health_check=list(HealthCheck), database=None, max_examples=2000)
    @given(limit=st.one_of(st.integers(min_value=-2, max_value=70), json_values), experiment=st.one_of(st.text(), json_values))
    def run_batch(limit, experiment):
        batch_property(world, next_batch, limit, experiment)

    run_submit()
    run_batch()
