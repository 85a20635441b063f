"""Repeated items (issue 14 item 2, app.repeats): with the experiment option ``repeat_share`` a rater is now and then
handed, blind, an image of the round they rated before; the second score lands in ``repeat_ratings`` and fills the
Admin tab's self-consistency columns, and changes nothing else. No model, no worker: the fixtures' open round of
small PNGs, rated through the public API (the functions ``ui.build_demo`` registers) and the page's functions."""

from __future__ import annotations

import json

import gradio as gr
import pytest
from sqlalchemy import select

from app import experiment_options, quality, repeats, ui, ui_options, ui_quality, ui_rate
from app.auth import AuthError, Who
from app.experiment_options import ExperimentOptions
from db import quality as db_quality
from db import repo
from db.engine import read_session, write_session
from db.errors import InvalidInput
from db.models import Rating, RepeatOffer, RepeatRating


def who(world, name: str) -> Who:
    return Who(world.accounts[name], name, "admin" if name == "root" else "rater", False)


def request(username: str) -> gr.Request:
    return gr.Request(username=username, client={"host": "127.0.0.1", "port": 5000})


def set_share(world, share: float) -> None:
    experiment_options.set_options(world.factory, who(world, "root"), world.experiment_id, repeat_share=share)


def first_ratings(world, rater_id: int) -> dict[int, tuple[int, object]]:
    """image -> (score, updated_at) of the rater's ratings: an edit would show in either."""
    with read_session(world.factory) as s:
        return {r.image_id: (r.score, r.updated_at) for r in s.scalars(select(Rating).where(Rating.rater_id == rater_id))}


def offers(world) -> list[tuple[int, int, bool]]:
    with read_session(world.factory) as s:
        return [(o.image_id, o.rater_id, o.skipped) for o in s.scalars(select(RepeatOffer).order_by(RepeatOffer.id))]


def rate_through_api(world, name: str, score_first, score_again, *, limit: int = 2, stop_after_repeats: int | None = None):
    """``name`` takes batches from /next_batch and rates every item with /submit_rating until nothing is left.
    Returns the log: (image id, score, was it handed before, the response, the images rated before the batch)."""
    demo = ui.build_demo(world.services())
    fns = {fn.api_name: fn.fn for fn in demo.fns.values() if fn.api_name}
    rated: list[int] = []
    log = []
    while True:
        batch = fns["next_batch"](limit, "", request=request(name))
        if not batch["items"]:
            return log
        before = list(rated)
        for item in batch["items"]:
            assert set(item) == {"image_id", "prompt", "seed", "png_base64"}  # nothing says "repeat"
            image_id = item["image_id"]
            again = image_id in rated
            score = score_again(image_id) if again else score_first(image_id)
            response = fns["submit_rating"](image_id, score, request=request(name))
            log.append((image_id, score, again, response, before))
            rated.append(image_id)
            if stop_after_repeats is not None and sum(e[2] for e in log) >= stop_after_repeats:
                return log


def test_repeats_through_the_api_measure_self_consistency_and_change_nothing_else(ui_world_factory):
    world = ui_world_factory(n_images=10)
    alice = world.accounts["alice"]
    set_share(world, 0.5)
    log = rate_through_api(world, "alice", lambda i: 1 + i % 10, lambda i: 1 + (i + 1) % 10)
    again = [e for e in log if e[2]]
    ordinary = [e for e in log if not e[2]]
    assert len(ordinary) == 10 and sorted(e[0] for e in ordinary) == sorted(world.image_ids)
    assert again, "share 0.5 gave no repeat"
    assert len({e[0] for e in again}) == len(again)  # never repeated twice
    assert len(again) <= len(ordinary)  # at most half of what was handed out
    for image_id, _, _, response, before in again:
        assert len(before) >= repeats.MIN_RATED  # only after a few ratings
        assert image_id != before[-1]  # never the image just rated
        # the response reads as a new rating; the round's counts are those before it
        assert response["previous_score"] is None and response["edited"] is False
    for (_, _, was_again, response, _), (_, _, _, previous, _) in zip(log[1:], log[:-1]):
        if was_again:
            assert response["progress"] == previous["progress"]
    # the second scores are in repeat_ratings; the first ratings are as given, once per image
    assert first_ratings(world, alice).keys() == set(world.image_ids)
    assert {i: s for i, (s, _) in first_ratings(world, alice).items()} == {i: 1 + i % 10 for i in world.image_ids}
    with read_session(world.factory) as s:
        rows = db_quality.repeat_rows(session=s, experiment_id=world.experiment_id)
        assert rows == [(alice, 1 + i % 10, 1 + (i + 1) % 10) for i, *_ in again]
        # the reward fit's input and the round's counts hold only the ordinary ratings
        assert [(r.image_id, r.n_ratings, r.mean_score) for r in repo.ratings_snapshot(session=s, experiment_id=world.experiment_id)] == [
            (i, 1, 1 + i % 10) for i in sorted(world.image_ids)]
        p = repo.round_progress(session=s, round_id=world.round_id, rater_id=alice, kind="query")
        assert (p.ratings, p.labels, p.rater_rated, p.rater_remaining) == (10, 10, 10, 0)
    assert log[-1][3]["progress"]["labels"] == 10 and log[-1][3]["progress"]["you_rated"] == 10


def test_off_by_default_every_image_is_handed_out_once(ui_world_factory):
    world = ui_world_factory(n_images=8)
    log = rate_through_api(world, "alice", lambda i: 4, lambda i: 9)
    assert [e[2] for e in log] == [False] * 8
    assert offers(world) == []
    with read_session(world.factory) as s:
        assert db_quality.repeat_rows(session=s, experiment_id=world.experiment_id) == []
        assert s.scalars(select(RepeatRating)).all() == []
    # the stored options stay as they were before the option existed
    with read_session(world.factory) as s:
        assert "repeat_share" not in experiment_options.with_options({}, experiment_options.of(
            repo.get_experiment(session=s, experiment_id=world.experiment_id)))["app"]


def test_a_pending_repeat_comes_back_and_its_score_stays_apart(ui_world_factory):
    world = ui_world_factory(n_images=8)
    alice, me = world.accounts["alice"], who(world, "alice")
    set_share(world, 0.5)
    order = [im["image_id"] for im in ui_rate.api_batch(world.factory, world.settings.data_dir, me, limit=3)["items"]]
    for image_id in order:
        ui_rate.submit(world.factory, me, image_id, 6)
    batch = [im["image_id"] for im in ui_rate.api_batch(world.factory, world.settings.data_dir, me, limit=1)["items"]]
    assert len(batch) == 1 and batch[0] in order[:-1]  # a repeat, not the image just rated
    repeated = batch[0]
    # asked again before answering: the same repeat again, and still only one offer
    again = [im["image_id"] for im in ui_rate.api_batch(world.factory, world.settings.data_dir, me, limit=1)["items"]]
    assert again == [repeated] and offers(world) == [(repeated, alice, False)]
    before = first_ratings(world, alice)
    assert ui_rate.submit(world.factory, me, repeated, 9)["previous_score"] is None
    assert ui_rate.submit(world.factory, me, repeated, 8)["previous_score"] == 9  # changes the second score
    assert first_ratings(world, alice) == before  # the first rating is untouched (score and time)
    with read_session(world.factory) as s:
        assert db_quality.repeat_rows(session=s, experiment_id=world.experiment_id) == [(alice, 6, 8)]
    # no new repeat right away: an ordinary image comes first
    nxt = ui_rate.api_batch(world.factory, world.settings.data_dir, me, limit=1)["items"]
    assert nxt and nxt[0]["image_id"] not in order


def test_a_pending_repeat_takes_no_place_from_the_other_raters(ui_world_factory):
    world = ui_world_factory(n_images=6, overlap=2)
    me = who(world, "alice")
    set_share(world, 0.5)
    for image_id in world.image_ids[:4]:
        ui_rate.submit(world.factory, me, image_id, 5)
    repeated = ui_rate.api_batch(world.factory, world.settings.data_dir, me, limit=1)["items"][0]["image_id"]
    assert repeated in world.image_ids[:3]
    with read_session(world.factory) as s:
        offered = [im.id for im in repo.next_images_for_rater(session=s, round_id=world.round_id,
                                                              rater_id=world.accounts["bob"], limit=10)]
    assert repeated in offered


def test_the_page_shows_a_repeat_blind_and_undo_leaves_it(ui_world_factory):
    world = ui_world_factory(n_images=8)
    alice, me, data = world.accounts["alice"], who(world, "alice"), world.settings.data_dir
    set_share(world, 0.5)
    view = ui_rate.load_batch(world.factory, data, me, None, batch_size=4)
    first = list(view.state["batch"])
    state = view.state
    for image_id in first:
        view = ui_rate.rate(world.factory, data, me, state, {"image_id": image_id, "score": 3}, batch_size=4)
        state = view.state
    batch = state["batch"]  # the next batch: two of the first four again, among two new ones
    again = [i for i in batch if i in first]
    assert len(again) == 2 and first[-1] not in again and len(set(batch)) == 4
    marks = json.loads(view.marks)["cards"]
    assert all(marks[str(i)]["state"] == "open" and "score" not in marks[str(i)] for i in batch)  # no first score shown
    assert f"data-image-id='{again[0]}' data-state='open' data-score=''" in view.grid
    view = ui_rate.rate(world.factory, data, me, state, {"image_id": again[0], "score": 10}, batch_size=4)
    state = view.state
    assert json.loads(view.marks)["cards"][str(again[0])] == {"state": "rated", "status": "✓ saved: 10", "score": 10}
    view = ui_rate.skip(world.factory, data, me, state, {"image_id": again[1]}, batch_size=4)
    state = view.state
    assert (again[1], alice, True) in offers(world)
    # undo passes over the repeat's score: it takes back the newest ordinary rating, of the first batch
    view = ui_rate.undo(world.factory, data, me, state, batch_size=4)
    assert view.message is None and first[-1] not in first_ratings(world, alice)
    with read_session(world.factory) as s:
        assert db_quality.repeat_rows(session=s, experiment_id=world.experiment_id) == [(alice, 3, 10)]
    # the skipped repeat is not handed out again; undoing a repeated image's first rating drops its repeat
    with write_session(world.factory) as s:
        assert again[1] not in db_quality.pending_repeats(session=s, round_id=world.round_id, rater_id=alice)
    for _ in range(3):
        ui_rate.undo(world.factory, data, me, view.state, batch_size=4)
    assert first_ratings(world, alice) == {}
    assert offers(world) == []
    with read_session(world.factory) as s:
        assert db_quality.repeat_rows(session=s, experiment_id=world.experiment_id) == []


def test_a_bad_repeat_share_is_refused_in_one_sentence(ui_world):
    root = who(ui_world, "root")
    for bad in (0.6, -0.1, float("nan"), "half", True):
        with pytest.raises(InvalidInput) as info:
            ExperimentOptions(repeat_share=bad)
        assert str(info.value) == ("repeat_share must be a number from 0 to 0.5 (the share of images shown to a rater a "
                                   f"second time; 0 turns repeats off), got {bad!r}")
    with pytest.raises(InvalidInput, match="repeat_share must be a number from 0 to 0.5"):
        experiment_options.set_options(ui_world.factory, root, ui_world.experiment_id, repeat_share=1)
    with pytest.raises(InvalidInput, match="repeat_share must be a number from 0 to 0.5"):
        ui_options.save(ui_world.factory, root, ui_world.experiment_id, "random", 1, 0.25, False, 0.75)
    with pytest.raises(AuthError):
        ui_options.save(ui_world.factory, who(ui_world, "bob"), ui_world.experiment_id, "random", 1, 0.25, False, 0.2)
    with read_session(ui_world.factory) as s:
        assert experiment_options.of(repo.get_experiment(session=s, experiment_id=ui_world.experiment_id)).repeat_share == 0
    message = ui_options.save(ui_world.factory, root, ui_world.experiment_id, "random", 1, 0.25, False, 0.2)
    assert message.endswith("auto-close **off**, repeats **0.2** of the images a rater gets.")
    assert ui_options.save(ui_world.factory, root, ui_world.experiment_id, "random", 1, 0.25, False).endswith(
        "repeats **0.2** of the images a rater gets.")  # left out: left as it is
    assert ui_options.save(ui_world.factory, root, ui_world.experiment_id, "random", 1, 0.25, False, 0).endswith(
        "auto-close **off**.")


def test_the_quality_report_shows_each_raters_self_consistency(ui_world_factory):
    """A tiny case by hand: alice gives every image 5, then scores her two repeats 7 and 5: |diff| 2 and 0, mean 1.00,
    exact 1 of 2, within one point 1 of 2. Bob, without repeats, shows none."""
    world = ui_world_factory(n_images=8, overlap=2)
    alice = world.accounts["alice"]
    set_share(world, 0.5)
    answers = iter([7, 5])
    log = rate_through_api(world, "alice", lambda i: 5, lambda i: next(answers), limit=1, stop_after_repeats=2)
    assert [e[1] for e in log if e[2]] == [7, 5]
    ui_rate.submit(world.factory, who(world, "bob"), world.image_ids[0], 4)
    with read_session(world.factory) as s:
        rows = db_quality.repeat_rows(session=s, experiment_id=world.experiment_id)
    assert sorted(r[1:] for r in rows) == [(5, 5), (5, 7)]
    c = quality.self_consistency(rows)[alice]
    assert (c.n, c.mean_abs_diff, c.exact, c.within_one) == (2, 1.0, 0.5, 0.5)
    summary, table = ui_quality.report(world.factory, who(world, "root"), world.experiment_id)
    assert "2 repeated ratings" in summary
    by_name = {r[0]: dict(zip(ui_quality.RATER_HEADERS, r)) for r in table}
    assert by_name["alice"]["repeats"] == "2" and by_name["alice"]["|diff| on repeats"] == "1.00"
    assert by_name["alice"]["ratings"] == str(len([e for e in log if not e[2]]))  # repeats are not ratings
    assert by_name["bob"]["repeats"] == "0" and by_name["bob"]["|diff| on repeats"] == "–"


def test_migration_0006_adds_repeat_offers_and_downgrades(empty_db_url):
    from sqlalchemy import inspect

    from db import migrate
    from db.engine import make_engine

    def tables() -> set[str]:
        engine = make_engine(empty_db_url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()

    migrate.upgrade(empty_db_url, "0005")
    assert "repeat_offers" not in tables() and "repeat_ratings" in tables()
    migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == "0006" == migrate.head_revision()
    assert "repeat_offers" in tables()
    migrate.downgrade(empty_db_url, "0005")
    assert "repeat_offers" not in tables() and "repeat_ratings" in tables()
