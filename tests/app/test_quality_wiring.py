"""Rater quality and reward-hacking alarms in the app: the repository reads, the admin tab, the dashboard, the worker."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select

from app import alarms, auth, quality, services, ui_dashboard, ui_quality, ui_rate
from app.auth import AuthError
from db import quality as db_quality
from db import repo
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput
from db.models import Rating


def who(world, name: str) -> auth.Who:
    return auth.identify(world.factory, local_mode=False, username=name, client_host="127.0.0.1")


ALICE = [2, 4, 6, 8, 9, 10]
BOB = [1, 3, 5, 7, 9, 10]


@pytest.fixture
def rated(ui_world_factory):
    world = ui_world_factory(n_images=6, overlap=2)
    for image, a, b in zip(world.image_ids, ALICE, BOB):
        ui_rate.submit(world.factory, who(world, "alice"), image, a)
        ui_rate.submit(world.factory, who(world, "bob"), image, b)
    return world


def test_rating_rows_follow_the_watermark_and_the_kind(rated):
    world = rated
    with read_session(world.factory) as s:
        rows = db_quality.rating_rows(session=s, experiment_id=world.experiment_id)
        assert len(rows) == 12 and {r.round_index for r in rows} == {0}
        first = s.scalar(select(func.min(Rating.id)))
        assert len(db_quality.rating_rows(session=s, experiment_id=world.experiment_id, up_to_rating_id=first)) == 1
        assert db_quality.rating_rows(session=s, experiment_id=world.experiment_id, kind="eval") == []
        assert sorted(r.score for r in rows if r.rater_id == world.accounts["alice"]) == ALICE
        with pytest.raises(InvalidInput, match="unknown image kind"):
            db_quality.rating_rows(session=s, experiment_id=world.experiment_id, kind="gold")


def test_repeats_need_a_first_rating_and_happen_once(rated):
    world = rated
    alice, image = world.accounts["alice"], world.image_ids[0]
    with write_session(world.factory) as s:
        with pytest.raises(Conflict, match="has not rated image"):
            db_quality.add_repeat_rating(session=s, image_id=world.eval_image_ids[0], rater_id=alice, score=3)
        with pytest.raises(InvalidInput, match="from 1 to 10"):
            db_quality.add_repeat_rating(session=s, image_id=image, rater_id=alice, score=11)
        db_quality.add_repeat_rating(session=s, image_id=image, rater_id=alice, score=5)
    with write_session(world.factory) as s:
        with pytest.raises(Conflict, match="already rated image"):
            db_quality.add_repeat_rating(session=s, image_id=image, rater_id=alice, score=5)
    with read_session(world.factory) as s:
        assert db_quality.repeat_rows(session=s, experiment_id=world.experiment_id) == [(alice, ALICE[0], 5)]
        # the repeat neither edits the first rating nor adds one for training
        assert repo.find_rating(session=s, image_id=image, rater_id=alice).score == ALICE[0]
        assert len(db_quality.rating_rows(session=s, experiment_id=world.experiment_id)) == 12


def test_the_admin_report_shows_alpha_per_experiment_and_round_and_each_rater(rated):
    world = rated
    root = who(world, "root")
    with write_session(world.factory) as s:
        db_quality.add_repeat_rating(session=s, image_id=world.image_ids[2], rater_id=world.accounts["alice"], score=8)
    ui_quality.set_gold(world.factory, root, world.experiment_id, str(world.image_ids[1]), "5")
    summary, table = ui_quality.report(world.factory, root, world.experiment_id)
    triples = [(i, r, s) for i, a, b in zip(world.image_ids, ALICE, BOB) for r, s in (("a", a), ("b", b))]
    expected = quality.krippendorff_alpha(triples, "ordinal").alpha
    assert f"<b>{expected:.3f}</b> over 6 items with 2+ ratings (12 ratings)" in summary
    assert "round 0:" in summary and "1 gold items, 1 repeated ratings" in summary and "used as given" in summary
    rows = {r[0]: dict(zip(ui_quality.RATER_HEADERS, r)) for r in table}
    assert set(rows) == {"alice", "bob"}
    assert rows["alice"]["ratings"] == "6" and rows["alice"]["range used"] == "2–10" and rows["bob"]["range used"] == "1–10"
    assert rows["alice"]["|diff| vs others"] == f"{np.mean([1, 1, 1, 1, 0, 0]):.2f}"
    assert rows["alice"]["repeats"] == "1" and rows["alice"]["|diff| on repeats"] == "2.00"  # 6 then 8
    assert rows["alice"]["gold"] == "1" and rows["alice"]["gold error"] == "1.00" and rows["alice"]["gold bias"] == "-1.00"
    assert rows["bob"]["gold error"] == "2.00" and rows["bob"]["repeats"] == "0"
    with pytest.raises(AuthError):
        ui_quality.report(world.factory, who(world, "alice"), world.experiment_id)


def test_gold_items_and_the_standardise_setting_are_audited_and_checked(rated):
    world = rated
    root = who(world, "root")
    assert "known score is 7" in ui_quality.set_gold(world.factory, root, world.experiment_id, world.image_ids[0], 7)
    assert "ordinary item again" in ui_quality.set_gold(world.factory, root, world.experiment_id, world.image_ids[0], "")
    with pytest.raises(InvalidInput, match="from 1 to 10"):
        ui_quality.set_gold(world.factory, root, world.experiment_id, world.image_ids[0], 12)
    for bad_id in ("first", 2**64, "1" * 5000):  # 2**64 was an OverflowError on SQLite ("Error", no sentence)
        with pytest.raises(InvalidInput, match="the image id must be a whole number"):
            ui_quality.set_gold(world.factory, root, world.experiment_id, bad_id, 3)
    with write_session(world.factory) as s:
        other = repo.create_experiment(session=s, name="other", model_spec="m", method="greedy", config={}, budgets=[2],
                                       prompts=["p"]).id
    with pytest.raises(InvalidInput, match="belongs to another experiment"):
        ui_quality.set_gold(world.factory, root, other, world.image_ids[0], 3)
    assert not ui_quality.standardize_enabled(world.factory, world.experiment_id)
    assert "standardised" in ui_quality.set_standardize(world.factory, root, world.experiment_id, True)
    assert ui_quality.standardize_enabled(world.factory, world.experiment_id)
    with pytest.raises(AuthError):
        ui_quality.set_standardize(world.factory, who(world, "bob"), world.experiment_id, False)
    actions = [e.action for e in auth.list_audit(world.factory, limit=20)]
    assert actions.count("image.gold") == 2 and "experiment.standardize_scores" in actions


def _stats(seed: int, collapsed: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    emb = rng.normal(size=(6, 16))
    if collapsed:
        images[:], emb[:] = images[0], emb[0]
    return alarms.image_stats(images, emb)


def test_the_dashboard_warns_about_a_collapsed_round_naming_the_statistic(ui_world):
    world = ui_world
    with write_session(world.factory) as s:
        repo.update_round_metrics(session=s, round_id=world.round_id, metrics={"eval": {"image_stats": _stats(0)}})
        r1 = repo.create_round(session=s, experiment_id=world.experiment_id, adapter_path="adapters/1")
        repo.update_round_metrics(session=s, round_id=r1.id, metrics={"eval": {"image_stats": _stats(1), "kl_to_prev": 0.1}})
    assert "reward-alarms" not in ui_dashboard.load(world.factory, world.experiment_id).summary
    with write_session(world.factory) as s:
        r2 = repo.create_round(session=s, experiment_id=world.experiment_id, adapter_path="adapters/2")
        repo.update_round_metrics(session=s, round_id=r2.id,
                                  metrics={"eval": {"image_stats": _stats(2, collapsed=True), "kl_to_prev": 5.0}})
    summary = ui_dashboard.load(world.factory, world.experiment_id).summary
    assert "Possible reward hacking: round 2: diversity (image-encoder embeddings) fell 100% vs round 0" in summary
    assert "data-statistic='diversity_pixels'" in summary and "KL to the round it was trained from is 5" in summary
    assert "round 1:" not in summary


def test_a_warning_says_what_the_people_rated_the_two_rounds_it_compares(ui_world):
    """A look the raters rate up (here: darker images rated 8 after lighter ones rated 2) is still warned about, with
    both rounds' mean ratings beside it; a rater does not see the mean of a round still being rated."""
    world = ui_world
    rng = np.random.default_rng(0)
    light = alarms.image_stats(rng.integers(128, 256, size=(6, 8, 8, 3), dtype=np.uint8))
    dark = alarms.image_stats(rng.integers(0, 20, size=(6, 8, 8, 3), dtype=np.uint8))
    alice = world.accounts["alice"]
    with write_session(world.factory) as s:
        for image_id in world.image_ids:
            repo.add_rating(session=s, image_id=image_id, rater_id=alice, score=2)
        repo.update_round_metrics(session=s, round_id=world.round_id, metrics={"eval": {"image_stats": light}})
        repo.set_round_status(session=s, round_id=world.round_id, status="done")
        r1 = repo.create_round(session=s, experiment_id=world.experiment_id, adapter_path="adapters/1")
        repo.update_round_metrics(session=s, round_id=r1.id, metrics={"eval": {"image_stats": dark}})
    later = world.add_round_images(r1.id, 4)
    with write_session(world.factory) as s:
        repo.open_round(session=s, round_id=r1.id)
        for image_id, score in zip(later, (8, 8, 9, 7), strict=True):
            repo.add_rating(session=s, image_id=image_id, rater_id=alice, score=score)
    summary = ui_dashboard.load(world.factory, world.experiment_id, admin=True).summary
    line = next(x for x in summary.split("</div>") if "data-statistic='dark_fraction'" in x)
    assert "round 1: dark-pixel fraction rose by 1 vs round 0" in line
    assert ("the people&#x27;s mean rating: 2.00 (6 ratings) in round 0, 8.00 (4 ratings) in round 1: a look they rate "
            "higher may be their taste rather than hacking (see the grid)") in line
    rater_view = ui_dashboard.load(world.factory, world.experiment_id, admin=False).summary
    assert "round 1: dark-pixel fraction rose" in rater_view and "mean rating" not in rater_view
    with write_session(world.factory) as s:  # the same look, rated down: the figures alone
        for image_id in later:
            repo.add_rating(session=s, image_id=image_id, rater_id=alice, score=1)
    summary = ui_dashboard.load(world.factory, world.experiment_id, admin=True).summary
    line = next(x for x in summary.split("</div>") if "data-statistic='dark_fraction'" in x)
    assert line.endswith("2.00 (6 ratings) in round 0, 1.00 (4 ratings) in round 1")  # the figures, no taste said
    # a fall in diversity rated higher is still the collapse: the figures, no taste said
    fell = alarms.Flag(1, "diversity_embedding", 1.0, 2.0, 0, -0.5, 0.25)
    assert ui_dashboard._ratings_beside(fell, {0: (2.0, 6), 1: (8.0, 4)}) == (
        "; the people's mean rating: 2.00 (6 ratings) in round 0, 8.00 (4 ratings) in round 1")


def test_the_worker_records_eval_image_stats_and_trains_on_standardised_scores(worker_world, monkeypatch):
    world = worker_world
    eid = world.create_experiment("quality")
    worker = world.worker()
    assert worker.run_once() and worker.last_error is None  # generate round 0
    assert worker.run_once() and worker.last_error is None  # its eval job
    with read_session(world.factory) as s:
        round0 = repo.get_round_by_index(session=s, experiment_id=eid, index=0)
        stats = round0.metrics["eval"]["image_stats"]
        n_eval = len(repo.list_images(session=s, round_id=round0.id, kind="eval"))
    assert stats["n"] == n_eval and set(alarms.STATS) <= set(stats)
    assert 0 <= stats["saturation"] <= 1 and 0 <= stats["dark_fraction"] <= 1 and 0 < stats["colour_entropy"] <= 6

    narrow, wide = world.raters(2)
    world.rate_open_round(eid, [narrow, wide], lambda image_id, rater_id: (4 + image_id % 3) if rater_id == narrow
                          else 1 + (image_id * 7) % 10)
    with write_session(world.factory) as s:
        db_quality.set_standardize_scores(session=s, experiment_id=eid, enabled=True)
    services.close_round(factory=world.factory, experiment_id=eid)

    captured = {}

    def fake_train_round(parts, embeddings, scores, cfg, **kwargs):
        captured["scores"] = scores.tolist()
        raise RuntimeError("stopped after the training set was built")

    monkeypatch.setattr("app.worker.train_round", fake_train_round)
    assert worker.run_once()
    assert "stopped after the training set was built" in worker.last_error
    with read_session(world.factory) as s:
        snapshot = repo.ratings_snapshot(session=s, experiment_id=eid)
        rows = db_quality.rating_rows(session=s, experiment_id=eid)
    triples = [(r.image_id, r.rater_id, r.score) for r in rows]
    want = quality.training_scores([r.image_id for r in snapshot], triples, standardized=True)
    raw = [r.mean_score for r in snapshot]
    assert captured["scores"] == pytest.approx(want, abs=1e-5)
    assert captured["scores"] != pytest.approx(raw, abs=1e-3)
    worker.close()


def test_the_admin_tab_wires_the_quality_handlers_privately(rated):
    from types import SimpleNamespace

    from app import ui

    world = rated
    demo = ui.build_demo(world.services())
    named = {fn.fn.__name__: fn for fn in demo.fns.values() if fn.fn is not None}
    for name in ("on_quality", "on_standardize", "on_gold"):
        assert named[name].api_visibility == "private"
    root = SimpleNamespace(username="root", client=SimpleNamespace(host="127.0.0.1"))
    summary, rows, standardized = named["on_quality"].fn(world.experiment_id, root)
    assert "Krippendorff" in summary and {r[0] for r in rows} == {"alice", "bob"} and standardized is False
    named["on_standardize"].fn(world.experiment_id, True, root)
    assert named["on_quality"].fn(world.experiment_id, root)[2] is True
    message, summary, _ = named["on_gold"].fn(world.experiment_id, str(world.image_ids[0]), "3", root)
    assert "known score is 3" in message and "1 gold items" in summary
    bob = SimpleNamespace(username="bob", client=SimpleNamespace(host="127.0.0.1"))
    with pytest.raises(Exception, match="admin"):
        named["on_quality"].fn(world.experiment_id, bob)
