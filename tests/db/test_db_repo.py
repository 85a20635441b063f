import struct
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from db import checks, repo
from db import jobs as job_queue
from db import members as db_members
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Rater, Rating, Skip, utcnow
from tests.db.conftest import race_with_open_transaction


def _n_ratings(factory) -> int:
    with read_session(factory) as s:
        return s.scalar(select(func.count(Rating.id)))


# --- experiments, rounds, images, raters ---------------------------------------------------


def test_experiment_round_trip_and_unique_name(db_factory, make_world):
    world = make_world()
    with read_session(db_factory) as s:
        exp = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        assert (exp.config, exp.budgets, exp.prompts, exp.status, exp.overlap) == (
            {"lr": 1e-4, "kl_weight": 0.01},
            [10, 20],
            ["a shape 0", "a shape 1"],
            "active",
            1,
        )
        assert repo.get_experiment_by_name(session=s, name="exp").id == exp.id
        assert [e.id for e in repo.list_experiments(session=s, status="active")] == [exp.id]
    with pytest.raises(Conflict, match="an experiment named 'exp' already exists"), write_session(db_factory) as s:
        repo.create_experiment(session=s, name="exp", model_spec="m", method="x", config={}, budgets=[1], prompts=["p"])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("name", "", "experiment name must be a non-empty string"),
        ("budgets", [5, 0], "budget of round 1 must be at least 1, got 0"),
        ("budgets", [], "budgets must be a non-empty list"),
        ("prompts", "a shape", "prompts must be a non-empty list of strings"),
        ("overlap", 0, r"overlap \(ratings wanted per image\) must be from 1 to 1000"),
        ("config", {"x": float("nan")}, "config cannot be stored as JSON"),
        # found by review: each passed the check and failed at the flush (or on PostgreSQL only), or read back changed
        ("config", {1: "a", "b": 2}, "config cannot be stored as JSON"),
        ("config", {"app": {7: "x"}}, "config cannot be stored as JSON as given: its key 7 is not a string"),
        ("method", "m" * 65, "method is 65 characters long; the limit is 64"),
        ("prompts", ["a cat\x00"], r"contains a NUL character \(\\x00\)"),
        ("model_spec", "models/x\x00", r"model_spec contains a NUL character"),
        ("name", "exp\x00", r"experiment name contains a NUL character"),
        # found by the fourth review: a lone surrogate reached the driver, which raised Python's own codec error
        ("name", "exp\ud800", r"experiment name contains a character that is not valid Unicode"),
        ("prompts", ["a cat\udfff"], r"contains a character that is not valid Unicode"),
        ("name", "two\nlines", r"contains the control or format character U\+000A"),
        ("name", "\u202etxt.exe", r"contains the control or format character U\+202E"),
        ("name", "red \x1b[31m", r"contains the control or format character U\+001B"),
    ],
)
def test_create_experiment_validates(db_factory, field, value, message):
    args = {"name": "e", "model_spec": "m", "method": "x", "config": {}, "budgets": [1], "prompts": ["p"], field: value}
    with pytest.raises(InvalidInput, match=message), write_session(db_factory) as s:
        repo.create_experiment(session=s, **args)


def test_unknown_ids_are_not_found(db_factory):
    with read_session(db_factory) as s:
        for call, message in [
            (lambda: repo.get_experiment(session=s, experiment_id=42), "there is no experiment with id 42"),
            (lambda: repo.get_round(session=s, round_id=42), "there is no round with id 42"),
            (lambda: repo.get_image(session=s, image_id=42), "there is no image with id 42"),
            (lambda: repo.get_rater_by_name(session=s, name="nobody"), "there is no rater named 'nobody'"),
            (lambda: job_queue.get_job(session=s, job_id=42), "there is no job with id 42"),
            # past PostgreSQL's 32-bit integer ids: not found, as on SQLite (it was a DataError there; found by review)
            (lambda: repo.get_image(session=s, image_id=2**31), "there is no image with id 2147483648"),
            (lambda: repo.get_experiment(session=s, experiment_id=2**40), "there is no experiment with id"),
            (lambda: repo.get_export(session=s, export_id=2**63), "there is no export with id"),
            (lambda: job_queue.get_job(session=s, job_id=2**31), "there is no job with id"),
            (lambda: repo.get_round_by_index(session=s, experiment_id=1, index=10**20), "experiment 1 has no round"),
        ]:
            with pytest.raises(NotFound, match=message):
                call()


def test_a_rater_name_that_is_not_found_is_not_repeated_at_any_length(db_factory):
    """A look-up by a 100,000-character name repeated all of it in the refusal (an admin's account chooser takes a
    name of its own); the other refusals cut what they repeat to 40 characters."""
    with read_session(db_factory) as s:
        with pytest.raises(NotFound) as refused:
            repo.get_rater_by_name(session=s, name="x" * 100_000)
        assert str(refused.value) == "there is no rater named 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx..."
        with pytest.raises(NotFound, match="^there is no rater named 'nobody'$"):  # a short one whole
            repo.get_rater_by_name(session=s, name="nobody")


def test_text_with_a_nul_character_gets_a_sentence_on_every_database(db_factory, make_world):
    """PostgreSQL cannot hold or compare text with a NUL character: a look-up by such a name, a new account or a job
    error holding one was a DataError there (a server error) while SQLite answered. Found by review."""
    world = make_world()
    with read_session(db_factory) as s, pytest.raises(InvalidInput, match=r"contains a NUL character \(\\x00\)"):
        repo.get_experiment_by_name(session=s, name="exp\x00")
    with pytest.raises(InvalidInput, match="rater name contains a NUL character"), write_session(db_factory) as s:
        repo.create_rater(session=s, name="a\x00b", password_hash="x$hash")
    with write_session(db_factory) as s:
        job = job_queue.enqueue_job(session=s, kind="eval", experiment_id=world.experiment_id)
    with write_session(db_factory) as s:
        claimed = job_queue.claim_job(session=s, worker_id="w1", lease_s=60)
        job_queue.fail_job(session=s, job_id=claimed.id, worker_id="w1", error="boom \x00 in a file name")
    with read_session(db_factory) as s:
        assert job_queue.get_job(session=s, job_id=job.id).error == "boom \\x00 in a file name"


def test_text_that_is_not_valid_unicode_gets_a_sentence_on_every_database(db_factory, make_world):
    """Text that will not encode as UTF-8 (a lone surrogate, which JSON's \\u escapes can carry) reached the drivers,
    which raised Python's "'utf-8' codec can't encode character ..." (a ValueError the app showed as it stood; found
    by the fourth review). It is refused before the statement is sent, as a NUL is, with one sentence."""
    make_world()
    sentence = "A text value contains a character that is not valid Unicode."
    with read_session(db_factory) as s:
        for name in ("\ud800", "exp\udc00x"):
            with pytest.raises(InvalidInput) as refused:
                repo.get_experiment_by_name(session=s, name=name)
            assert str(refused.value) == sentence
        with pytest.raises(NotFound, match="no experiment named 'caf"):  # valid text beyond ASCII is looked up as before
            repo.get_experiment_by_name(session=s, name="café ✓ 𝄞")
    with pytest.raises(InvalidInput, match="rater name contains a character that is not valid Unicode"), \
            write_session(db_factory) as s:
        repo.create_rater(session=s, name="a\ud800b", password_hash="x$hash")


def test_a_clock_in_another_zone_is_stored_as_utc(db_factory, make_world):
    """``now`` passed in another zone was bound without the column's type in one place (a lease's grant time) and
    stored with its wall-clock digits as if UTC: 14:00 UTC given as 16:00+02:00 became 16:00 UTC on SQLite."""
    from datetime import UTC, datetime, timedelta, timezone

    from db.models import ImageLease

    world = make_world()
    at = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
    with write_session(db_factory) as s:
        repo.lease_images(session=s, round_id=world.round_id, rater_id=world.rater_ids[0], image_ids=world.image_ids[:1],
                          lease_s=60, now=at.astimezone(timezone(timedelta(hours=2))))
        repo.lease_images(session=s, round_id=world.round_id, rater_id=world.rater_ids[0], image_ids=world.image_ids[:1],
                          lease_s=60, now=(at + timedelta(hours=1)).astimezone(timezone(timedelta(hours=2))))
    with read_session(db_factory) as s:
        lease = s.scalars(select(ImageLease)).one()
        assert lease.created_at == at + timedelta(hours=1) and lease.expires_at == at + timedelta(hours=1, seconds=60)


def test_rounds_number_themselves_and_only_one_is_open(db_factory, make_world):
    world = make_world()
    with write_session(db_factory) as s:
        assert repo.get_open_round(session=s, experiment_id=world.experiment_id).id == world.round_id
        with pytest.raises(InvalidInput, match="adapter_path of round 1"):
            repo.create_round(session=s, experiment_id=world.experiment_id)
        r1 = repo.create_round(session=s, experiment_id=world.experiment_id, adapter_path="adapters/round-1")
        assert r1.index == 1 and r1.status == "generating"
        with pytest.raises(Conflict, match="round 0 of this experiment is still open for labeling"):
            repo.open_round(session=s, round_id=r1.id)
        with pytest.raises(Conflict, match="cannot go from 'generating' to 'done'"):
            repo.set_round_status(session=s, round_id=r1.id, status="done")
        with pytest.raises(InvalidInput, match="unknown round status 'closed'"):
            repo.set_round_status(session=s, round_id=r1.id, status="closed")
        repo.set_round_status(session=s, round_id=world.round_id, status="training")
        repo.open_round(session=s, round_id=r1.id)
        assert repo.get_open_round(session=s, experiment_id=world.experiment_id).id == r1.id
        repo.update_round_metrics(session=s, round_id=r1.id, metrics={"reward_mean": 0.5})
        repo.update_round_metrics(session=s, round_id=r1.id, metrics={"kl": 0.1})
    with read_session(db_factory) as s:
        assert repo.get_round(session=s, round_id=r1.id).metrics == {"reward_mean": 0.5, "kl": 0.1}
        assert [r.index for r in repo.list_rounds(session=s, experiment_id=world.experiment_id)] == [0, 1]


def test_add_image_validates_and_refuses_duplicates(db_factory, make_world, image_fields):
    world = make_world(n_images=1)
    with write_session(db_factory) as s:
        image = repo.get_image(session=s, image_id=world.image_ids[0])
        assert struct.unpack("<4f", image.embedding) == (0.0, 1.0, 2.0, 3.0)
        with pytest.raises(Conflict, match="already has a query image for prompt 'a shape 0' and seed 0"):
            repo.add_image(session=s, round_id=world.round_id, **image_fields(0))
        repo.add_image(session=s, round_id=world.round_id, kind="eval", **image_fields(0))  # same prompt+seed, other kind
        with pytest.raises(InvalidInput, match="embedding has 16 bytes but 3 float32 values need 12"):
            repo.add_image(session=s, round_id=world.round_id, **{**image_fields(5), "embedding_dim": 3})
        with pytest.raises(InvalidInput, match="must be a relative path inside the data dir"):
            repo.add_image(session=s, round_id=world.round_id, **{**image_fields(6), "file_path": "../etc/passwd"})
        with pytest.raises(InvalidInput, match="unknown image kind 'train'"):
            repo.add_image(session=s, round_id=world.round_id, kind="train", **image_fields(7))
        assert len(repo.list_images(session=s, round_id=world.round_id)) == 2
        assert len(repo.list_images(session=s, round_id=world.round_id, kind="eval")) == 1


def test_raters(db_factory):
    with write_session(db_factory) as s:
        assert repo.count_raters(session=s) == 0
        admin = repo.create_rater(session=s, name="ada", password_hash="scrypt$abc", role="admin")
        repo.create_rater(session=s, name="bob", password_hash="scrypt$def")
        with pytest.raises(Conflict, match="a rater named 'ada' already exists"):
            repo.create_rater(session=s, name="ada", password_hash="h")
        with pytest.raises(InvalidInput, match="unknown role 'root'"):
            repo.create_rater(session=s, name="eve", password_hash="h", role="root")
    with read_session(db_factory) as s:
        assert repo.get_rater_by_name(session=s, name="ada").id == admin.id
        assert (repo.count_raters(session=s), repo.count_raters(session=s, role="admin")) == (2, 1)


# --- ratings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "score", [0, 11, -3, "x", "7", 7.5, True, None], ids=["0", "11", "-3", "x", "str7", "7.5", "True", "None"]
)
def test_out_of_range_or_non_integer_scores_are_refused(db_factory, make_world, score):
    world = make_world()
    with pytest.raises(InvalidInput) as info, write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=score)
    assert str(info.value) == f"a rating must be a whole number from 1 to 10, got {score!r}"
    assert _n_ratings(db_factory) == 0


def test_rating_an_unknown_image_or_by_an_unknown_rater_is_refused(db_factory, make_world):
    world = make_world()
    with pytest.raises(NotFound, match="there is no image with id 999"), write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=999, rater_id=world.rater_ids[0], score=5)
    with pytest.raises(NotFound, match="there is no rater with id 999"), write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=999, score=5)
    assert _n_ratings(db_factory) == 0


def test_an_unknown_actor_is_one_sentence_and_the_transactions_other_writes_are_kept(db_factory, make_world):
    """The audit log, the undo history, an export's and a gold score's author took any id and left it to the foreign
    key: an unknown one was a raw IntegrityError at the flush, and the session could no longer commit what the
    transaction had written before it (found by review). The id is looked up first: NotFound, nothing written."""
    from sqlalchemy.exc import IntegrityError

    from db import quality as db_quality

    world = make_world(n_raters=1)
    rater, image = world.rater_ids[0], world.image_ids[0]
    calls = [
        (lambda s: repo.add_audit(session=s, actor_id=999, actor_name="ghost", action="user.disable"),
         "there is no rater with id 999"),
        (lambda s: repo.add_undo_step(session=s, rater_id=999, image_id=image, action="rate"),
         "there is no rater with id 999"),
        (lambda s: repo.add_undo_step(session=s, rater_id=rater, image_id=999, action="rate"),
         "there is no image with id 999"),
        (lambda s: repo.add_export(session=s, experiment_id=world.experiment_id, round_index=None, fmt="ratings",
                                   file_path="exports/r.jsonl", sha256="0" * 64, size_bytes=1, created_by=999),
         "there is no rater with id 999"),
        (lambda s: db_quality.set_gold_score(session=s, image_id=image, score=5, created_by=999),
         "there is no rater with id 999"),
    ]
    for n, (call, message) in enumerate(calls, start=1):
        with write_session(db_factory) as s:
            repo.add_rating(session=s, image_id=image, rater_id=rater, score=n)  # written first, in one transaction
            try:
                call(s)
            except IntegrityError as exc:
                pytest.fail(f"call {n}: a raw {type(exc).__name__}, not a sentence: {exc}")
            except NotFound as exc:
                assert str(exc) == message, n
            else:
                pytest.fail(f"call {n} accepted an unknown id")
        with read_session(db_factory) as s:
            assert repo.find_rating(session=s, image_id=image, rater_id=rater).score == n  # the rating was kept
    with read_session(db_factory) as s:  # and none of the refused rows was written
        assert repo.list_audit(session=s) == [] and repo.list_exports(session=s) == []
        assert db_quality.gold_scores(session=s, experiment_id=world.experiment_id) == {}


def test_an_undo_step_without_a_rater_is_refused_in_one_sentence(db_factory, make_world):
    """A step always has its rater: None is refused before the insert (the author check lets None through, which
    left it to the NOT NULL constraint's raw IntegrityError; found by review)."""
    world = make_world(n_raters=1)
    with pytest.raises(InvalidInput, match="rater id"), write_session(db_factory) as s:
        repo.add_undo_step(session=s, rater_id=None, image_id=world.image_ids[0], action="rate")


def test_rating_an_image_of_a_closed_round_is_refused(db_factory, make_world):
    world = make_world()
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=4)
        repo.set_round_status(session=s, round_id=world.round_id, status="training")
    with pytest.raises(Conflict) as info, write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[1], rater_id=world.rater_ids[0], score=5)
    assert str(info.value) == f"round 0 is not open for labeling (it is 'training'); image {world.image_ids[1]} cannot be changed"
    for call in (repo.delete_rating, repo.add_skip):
        with pytest.raises(Conflict, match="not open for labeling"), write_session(db_factory) as s:
            call(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0])
    assert _n_ratings(db_factory) == 1


def test_a_generating_round_cannot_be_rated(db_factory, make_world):
    world = make_world(open_round=False)
    with pytest.raises(Conflict, match="it is 'generating'"), write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=5)


def test_rerating_edits_the_same_row(db_factory, make_world):
    world = make_world()
    image, rater = world.image_ids[0], world.rater_ids[0]
    with write_session(db_factory) as s:
        first = repo.add_rating(session=s, image_id=image, rater_id=rater, score=3)
        first_id, created = first.id, first.created_at
    with write_session(db_factory) as s:
        second = repo.add_rating(session=s, image_id=image, rater_id=rater, score=9)
        assert (second.id, second.score, second.created_at) == (first_id, 9, created)
        assert second.updated_at >= created
    with read_session(db_factory) as s:
        stored = repo.find_rating(session=s, image_id=image, rater_id=rater)
        assert (stored.id, stored.score) == (first_id, 9)
    assert _n_ratings(db_factory) == 1


def test_undo_deletes_the_rating(db_factory, make_world):
    world = make_world()
    image, rater = world.image_ids[0], world.rater_ids[0]
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=image, rater_id=rater, score=6)
    with write_session(db_factory) as s:
        repo.delete_rating(session=s, image_id=image, rater_id=rater)
    assert _n_ratings(db_factory) == 0
    with pytest.raises(NotFound, match="has not rated image"), write_session(db_factory) as s:
        repo.delete_rating(session=s, image_id=image, rater_id=rater)


def test_next_images_respect_ratings_skips_and_overlap(db_factory, make_world):
    world = make_world(n_images=3, n_raters=3, overlap=2)
    (i1, i2, i3), (r1, r2, r3) = world.image_ids, world.rater_ids

    def next_for(rater, limit=10):
        with read_session(db_factory) as s:
            return [im.id for im in repo.next_images_for_rater(session=s, round_id=world.round_id, rater_id=rater, limit=limit)]

    assert next_for(r1) == [i1, i2, i3]
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=i1, rater_id=r1, score=7)
    assert next_for(r1) == [i2, i3]  # rated by r1
    assert next_for(r2) == [i2, i3, i1]  # least-rated first
    assert next_for(r2, limit=1) == [i2]
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=i1, rater_id=r2, score=5)
        repo.add_skip(session=s, image_id=i2, rater_id=r3)
        repo.add_skip(session=s, image_id=i2, rater_id=r3)  # idempotent
    assert next_for(r3) == [i3]  # i1 has its 2 ratings, i2 skipped
    assert next_for(r1) == [i2, i3]
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=i2, rater_id=r3, score=2)  # rating after a skip removes the skip
        assert s.scalar(select(func.count(Skip.id))) == 0
        with pytest.raises(Conflict, match="undo the rating before skipping"):
            repo.add_skip(session=s, image_id=i2, rater_id=r3)
        progress = repo.round_progress(session=s, round_id=world.round_id, rater_id=r3)
    assert (progress.total_images, progress.rated_images, progress.complete_images, progress.ratings, progress.budget) == (
        3,
        2,
        1,
        3,
        10,
    )
    assert (progress.rater_rated, progress.rater_skipped, progress.rater_remaining) == (1, 0, 1)


def test_next_images_judge_leases_by_one_reading_of_the_clock(db_factory, make_world, monkeypatch):
    """``next_images_for_rater`` read the clock twice (two round trips to the database's on PostgreSQL): once for the
    leases that reserve a place, once for the live leases that put an image last. A lease live at the first reading
    and run out at the second put the image another rater held first (eighth review). Now one reading: the order is
    the one the same call gives with that reading passed as ``now``."""
    world = make_world(n_images=2, n_raters=2, overlap=2)
    (i1, i2), (r1, r2) = world.image_ids, world.rater_ids
    t0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    with write_session(db_factory) as s:  # r2's lease on i1: past its reserving window, live until t0 + 10 s
        granted_at = t0 - timedelta(seconds=repo.RESERVE_S + 100)
        assert repo.lease_images(session=s, round_id=world.round_id, rater_id=r2, image_ids=[i1],
                                 lease_s=repo.RESERVE_S + 110, now=granted_at) == [i1]
    with read_session(db_factory) as s:  # the oracle: the clock given, no reading at all
        expected = [im.id for im in repo.next_images_for_rater(session=s, round_id=world.round_id, rater_id=r1, limit=5,
                                                                now=t0)]
    assert expected == [i2, i1]  # i1 is on r2's page: last
    readings = []

    def ticking_clock(session):  # a minute later at each reading
        readings.append(t0 + timedelta(minutes=len(readings)))
        return readings[-1]

    monkeypatch.setattr(checks, "db_clock", ticking_clock)
    with read_session(db_factory) as s:
        got = [im.id for im in repo.next_images_for_rater(session=s, round_id=world.round_id, rater_id=r1, limit=5)]
    assert (got, readings) == (expected, [t0])


def test_next_images_of_a_closed_round_is_refused(db_factory, make_world):
    world = make_world(open_round=False)
    with pytest.raises(Conflict, match="round 0 is not open for labeling"), read_session(db_factory) as s:
        repo.next_images_for_rater(session=s, round_id=world.round_id, rater_id=world.rater_ids[0])


def test_snapshot_with_watermark_and_round_stats(db_factory, make_world):
    world = make_world(n_images=3, n_raters=2, overlap=2)
    (i1, i2, i3), (r1, r2) = world.image_ids, world.rater_ids
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=i1, rater_id=r1, score=4)
        repo.add_rating(session=s, image_id=i1, rater_id=r2, score=7)
        repo.add_rating(session=s, image_id=i2, rater_id=r1, score=10)
        watermark = repo.latest_rating_id(session=s, experiment_id=world.experiment_id)
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=i3, rater_id=r1, score=1)  # after the watermark
    with read_session(db_factory) as s:
        rows = repo.ratings_snapshot(session=s, experiment_id=world.experiment_id, up_to_rating_id=watermark)
        assert [(r.image_id, r.round_index, r.mean_score, r.n_ratings) for r in rows] == [(i1, 0, 5.5, 2), (i2, 0, 10.0, 1)]
        assert struct.unpack("<4f", rows[0].embedding) == (0.0, 1.0, 2.0, 3.0)
        assert len(repo.ratings_snapshot(session=s, experiment_id=world.experiment_id)) == 3
        assert repo.ratings_snapshot(session=s, experiment_id=world.experiment_id, kind="eval") == []
        (stats,) = repo.round_rating_stats(session=s, experiment_id=world.experiment_id)
    assert (stats.index, stats.n_images, stats.n_rated_images, stats.n_ratings, stats.mean_score) == (0, 3, 3, 4, 5.5)


def _wanted(factory, world) -> tuple[int, int, int]:
    """(round_rating_stats, round_progress with kind "query", round_progress for every kind): the round's wanted."""
    with read_session(factory) as s:
        (stats,) = repo.round_rating_stats(session=s, experiment_id=world.experiment_id, kind="query")
        return (stats.labels_wanted, repo.round_progress(session=s, round_id=world.round_id, kind="query").labels_wanted,
                repo.round_progress(session=s, round_id=world.round_id).labels_wanted)


def test_a_closed_rounds_ratings_wanted_stay_what_they_were_when_it_closed(db_factory, make_world):
    """A closed round's "ratings wanted" were computed from today's enabled accounts (and their skips): disabling or
    adding an account after the round closed rewrote what the history said it had wanted (found by review). The
    figures are recorded when the round leaves labeling and read from there; reopening it counts live again."""
    world = make_world(n_images=3, n_raters=2, overlap=2)
    (i1, i2, i3), (r1, r2) = world.image_ids, world.rater_ids

    def disabled(rater_id, flag):
        with write_session(db_factory) as s:
            repo.set_rater_disabled(session=s, rater_id=rater_id, disabled=flag)

    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=i1, rater_id=r1, score=4)
        repo.add_rating(session=s, image_id=i1, rater_id=r2, score=7)
        repo.add_rating(session=s, image_id=i2, rater_id=r1, score=9)
        repo.add_skip(session=s, image_id=i3, rater_id=r2)
    assert _wanted(db_factory, world) == (5, 5, 5)  # 2 + 2 + 1 (r2 skipped i3: only r1 is left to rate it)
    with write_session(db_factory) as s:
        repo.close_round(session=s, experiment_id=world.experiment_id)
    assert _wanted(db_factory, world) == (5, 5, 5)
    disabled(r2, True)  # live: 2 + 1 + 1, and r2's skip no longer counts
    assert _wanted(db_factory, world) == (5, 5, 5)
    with write_session(db_factory) as s:
        r3 = repo.create_rater(session=s, name="late", password_hash="x$hash").id  # live: 2 + 2 + 2
    assert _wanted(db_factory, world) == (5, 5, 5)
    with write_session(db_factory) as s:
        repo.reopen_round(session=s, round_id=world.round_id)
    assert _wanted(db_factory, world) == (6, 6, 6)  # open again: what the accounts can give now
    with write_session(db_factory) as s:
        repo.close_round(session=s, experiment_id=world.experiment_id)
    disabled(r3, True)
    disabled(r2, False)
    assert _wanted(db_factory, world) == (6, 6, 6)


def test_a_round_a_finish_ends_keeps_what_it_wanted_then(db_factory, make_world):
    world = make_world(n_images=2, n_raters=2, overlap=2)
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=4)
        repo.finish_experiment(session=s, experiment_id=world.experiment_id)
    with write_session(db_factory) as s:
        repo.set_rater_disabled(session=s, rater_id=world.rater_ids[1], disabled=True)  # live: 1 + 1
    with read_session(db_factory) as s:
        assert repo.get_round(session=s, round_id=world.round_id).status == "done"
    assert _wanted(db_factory, world) == (4, 4, 4)


def test_checkpoints(db_factory, make_world):
    world = make_world()
    with write_session(db_factory) as s:
        repo.add_checkpoint(session=s, round_id=world.round_id, path="adapters/round-1", manifest_sha256="ab" * 32)
        with pytest.raises(InvalidInput, match="manifest_sha256 must be 64 lowercase hex digits"):
            repo.add_checkpoint(session=s, round_id=world.round_id, path="adapters/x", manifest_sha256="nope")
    with read_session(db_factory) as s:
        assert [c.path for c in repo.list_checkpoints(session=s, round_id=world.round_id)] == ["adapters/round-1"]


def test_deleting_an_account_waits_for_its_rating_in_flight_and_refuses(db_factory, db_url, make_world):
    """On PostgreSQL delete_rater counted the account's ratings, then deleted it: a rating in flight (not yet
    committed when counted) was deleted with the account by the cascade. Found by review. The account's row is
    locked first now, so the rating is counted and the delete refused."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world(n_raters=1)
    rater_id = world.rater_ids[0]
    result = race_with_open_transaction(
        db_factory, lambda s: repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=rater_id, score=7),
        lambda s: repo.delete_rater(session=s, rater_id=rater_id), wait_s=2)
    assert "has 1 rating" in result, result
    with read_session(db_factory) as s:
        assert s.scalar(select(func.count(Rating.id))) == 1


def test_pausing_an_experiment_being_finished_waits_and_is_refused(db_factory, db_url, make_world):
    """On PostgreSQL a Pause that read the experiment as 'active' while Finish ran then wrote 'paused' over
    'finished': the finished experiment came back (found by review). The experiment's row is locked and read afresh
    first, so the Pause waits for the Finish and is refused."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world()
    result = race_with_open_transaction(
        db_factory, lambda s: repo.finish_experiment(session=s, experiment_id=world.experiment_id),
        lambda s: repo.set_experiment_status(session=s, experiment_id=world.experiment_id, status="paused"), wait_s=2)
    assert "is finished; it cannot be paused" in result, result
    with read_session(db_factory) as s:
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).status == "finished"


def test_finishing_an_experiment_while_its_round_closes_does_not_deadlock(db_factory, db_url, make_world, monkeypatch):
    """Finish locked the experiment FOR UPDATE, then its rounds; Close holds its round and then inserts the train job,
    whose foreign key takes a key-share lock on the experiment, which FOR UPDATE blocks: each waited for the other
    and PostgreSQL aborted one (found by review). The experiment is locked FOR NO KEY UPDATE: Close finishes, then
    Finish, which cancels the job Close queued."""
    import threading

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the deadlock needs PostgreSQL")
    world = make_world(n_raters=1)
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=5)
    real_enqueue, at_insert, go, out = job_queue.enqueue_job, threading.Event(), threading.Event(), {}

    def enqueue_when_told(**kwargs):  # Close holds its round here, its job not yet inserted
        if threading.current_thread().name == "close":
            at_insert.set()
            go.wait(30)
        return real_enqueue(**kwargs)

    monkeypatch.setattr(job_queue, "enqueue_job", enqueue_when_told)

    def run(name, fn):
        try:
            with write_session(db_factory) as s:
                fn(s)
            out[name] = "done"
        except Exception as exc:  # a deadlock aborts one of the two
            out[name] = f"{type(exc).__name__}: {exc}"

    close = threading.Thread(name="close", target=run, args=(
        "close", lambda s: repo.close_round(session=s, experiment_id=world.experiment_id)))
    finish = threading.Thread(name="finish", target=run, args=(
        "finish", lambda s: repo.finish_experiment(session=s, experiment_id=world.experiment_id)))
    close.start()
    assert at_insert.wait(30)
    finish.start()
    finish.join(1.0)  # it has locked the experiment and waits for the round
    go.set()
    close.join(30)
    finish.join(30)
    assert out == {"close": "done", "finish": "done"}, out
    with read_session(db_factory) as s:
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).status == "finished"
        (job,) = job_queue.list_jobs(session=s, experiment_id=world.experiment_id)
        assert (job.kind, job.status) == ("train", "failed") and "was finished" in job.error  # cancelled by Finish


def test_closing_a_round_reads_the_experiment_afresh_not_a_copy_from_before_it_was_paused(db_factory, make_world):
    """close_round read the experiment with a plain get: a copy the session loaded before (objects outlive a commit
    here) passed for the row, so a round of an experiment another session had paused meanwhile was closed and its
    training queued (found by review). It locks and re-reads the row, as Pause, Finish and the settings do."""
    world = make_world(n_raters=1)
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=5)
    s = db_factory()
    try:
        copy = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        assert copy.status == "active"
        s.commit()  # the copy stays in the session (held here, as a caller holds what it read)
        with write_session(db_factory) as other:
            repo.set_experiment_status(session=other, experiment_id=world.experiment_id, status="paused")
        with pytest.raises(Conflict, match="is paused; resume it before training"):
            repo.close_round(session=s, experiment_id=world.experiment_id)
        s.rollback()
    finally:
        s.close()
    with read_session(db_factory) as s:
        assert repo.get_round(session=s, round_id=world.round_id).status == "labeling"
        assert job_queue.list_jobs(session=s, experiment_id=world.experiment_id) == []


def test_closing_a_round_while_its_experiment_is_being_paused_waits_and_is_refused(db_factory, db_url, make_world):
    """PostgreSQL: close_round read the experiment as 'active' without the lock Pause holds, so it closed the round
    of an experiment paused at the same moment (found by review). It takes the experiment's lock first now, waits
    for the Pause to commit, and is refused."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world(n_raters=1)
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=5)
    result = race_with_open_transaction(
        db_factory, lambda s: repo.set_experiment_status(session=s, experiment_id=world.experiment_id, status="paused"),
        lambda s: repo.close_round(session=s, experiment_id=world.experiment_id), wait_s=2)
    assert "is paused; resume it before training" in result, result
    with read_session(db_factory) as s:
        assert repo.get_round(session=s, round_id=world.round_id).status == "labeling"


def test_an_account_name_that_reads_as_another_is_refused(db_factory):
    """'Root', a Cyrillic 'rооt' and a fullwidth 'ｒｏｏｔ' beside 'root' passed for that person in the user list, the
    audit log and the banner (found by review)."""
    with write_session(db_factory) as s:
        repo.create_rater(session=s, name="root", password_hash="x$hash")
        repo.create_rater(session=s, name="root x", password_hash="x$hash")
    for name in ("Root", "r\u043e\u043et", "\uff52\uff4f\uff4f\uff54", "ROOT", "root\u00a0x"):
        with pytest.raises(Conflict, match="reads the same as the existing account"), write_session(db_factory) as s:
            repo.create_rater(session=s, name=name, password_hash="x$hash")
    with write_session(db_factory) as s:
        repo.create_rater(session=s, name="rooted", password_hash="x$hash")  # another name is fine


def test_two_accounts_of_one_name_at_once_are_a_refusal_not_a_crash(db_factory, db_url):
    """On PostgreSQL the second of two concurrent creations of one name hit the unique constraint: an IntegrityError
    (a bare "Error" on the page) instead of the Conflict's sentence. Found by review."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    def create(s):
        repo.create_rater(session=s, name="local admin 2", password_hash="x$hash")

    result = race_with_open_transaction(db_factory, create, create)
    assert result == "a rater named 'local admin 2' already exists"


def test_look_alike_names_a_review_found_read_as_the_name_they_copy(db_factory):
    """A review passed these beside 'paul', 'yes', 'admin', 'hello' and 'wood': an invisible combining mark, Armenian
    and small-capital letters, Cyrillic 'һ ԝ ѵ', Greek 'ν ρ κ', Latin alpha, a capital I for an l, and capitals
    ('Уes', 'αdmin') that the table missed because it was applied before case folding only."""
    key = repo.name_key
    assert key("pau\u0301l") == key("paul") and key("pa\u034ful") == key("paul")  # marks, the invisible one too
    assert key("pauI") == key("paul") and key("pau1") == key("paul") and key("w00d") == key("wood")
    assert key("\u0570ello") == key("hello") and key("\u04bbello") == key("hello")  # Armenian and Cyrillic h
    assert key("w\u1d0f\u1d0fd") == key("wood") and key("\u051dood") == key("wood")
    assert key("\u0423es") == key("yes") and key("\u03b1dmin") == key("admin") and key("\u0251dmin") == key("admin")
    assert key("\u03bd\u03c1\u03ba") == key("vpk") and key("\u0475") == key("v")
    assert key("rnary") == key("mary") and key("vvood") == key("wood")
    assert key("\u00d0or\u0111e") == key("\u0110or\u0111e") == key("dorde")  # Ð and Đ read the same
    assert key("o\u2019neill") == key("o'neill")
    assert key("alice") != key("alicia") and key("anna") != key("hanna")  # different names stay different


def test_two_look_alike_names_at_once_are_refused_on_postgresql(db_factory, db_url):
    """Two transactions creating 'peter' and 'Peter' at once each saw no look-alike and both committed (found by
    review); creating an account now waits for any other creation to end."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    result = race_with_open_transaction(
        db_factory, lambda s: repo.create_rater(session=s, name="peter", password_hash="x$hash"),
        lambda s: repo.create_rater(session=s, name="Peter", password_hash="x$hash"))
    assert "reads the same as the existing account 'peter'" in result, result


@pytest.mark.parametrize("big", [2**31, 2**40, 2**70, -(2**31) - 1])
def test_no_database_function_fails_on_an_id_no_row_can_have(db_factory, big):
    """On PostgreSQL about thirty functions of the database layer raised DataError ("integer out of range") for an id
    past 2**31 - 1, and SQLite's driver an OverflowError past 2**63 (found by review): each now answers as for any id
    that names no row. Every public function that takes ``*_id`` arguments is called with them all set to ``big``."""
    import inspect

    from sqlalchemy.exc import DBAPIError

    from db import comparisons
    from db import quality as db_quality

    others = {"score": 5, "worker_id": "worker", "name": "x", "kind": "generate", "winner": "a", "role": "rater",
              "image_ids": [big], "pair_ids": [big], "rater_ids": [big]}
    called = 0
    for module in (repo, job_queue, comparisons, db_quality):
        for name, fn in inspect.getmembers(module, inspect.isfunction):
            params = inspect.signature(fn).parameters
            if fn.__module__ != module.__name__ or name.startswith("_") or "session" not in params:
                continue
            ids = [p for p in params if p.endswith("_id") and p != "worker_id"]
            if not ids:
                continue
            kwargs = {p: big for p in ids}
            for p, par in params.items():
                if p not in kwargs and p != "session" and par.default is inspect.Parameter.empty:
                    kwargs[p] = others.get(p, 1)
            try:
                with write_session(db_factory) as s:
                    fn(session=s, **kwargs)
            except (DBAPIError, OverflowError) as exc:
                pytest.fail(f"{module.__name__}.{name}({big}) raised {type(exc).__name__}: {exc}")
            except (ValueError, TypeError, LookupError):  # the function's own refusal (NotFound, InvalidInput ...)
                pass
            called += 1
    assert called >= 40


def test_an_overlap_past_what_any_team_has_raters_for_is_refused(db_factory):
    """The overlap (ratings wanted per image) had no upper bound: 2**31 was a DataError on PostgreSQL, and 10**6 a
    round nobody could ever finish (found by review)."""
    for overlap in (repo.MAX_OVERLAP + 1, 2**31, 10**30):
        with pytest.raises(InvalidInput, match=f"from 1 to {repo.MAX_OVERLAP}"), write_session(db_factory) as s:
            repo.create_experiment(session=s, name=f"o{overlap}", model_spec="m", method="greedy", config={},
                                   budgets=[4], prompts=["p"], overlap=overlap)
    with write_session(db_factory) as s:
        repo.create_experiment(session=s, name="most", model_spec="m", method="greedy", config={}, budgets=[4],
                               prompts=["p"], overlap=repo.MAX_OVERLAP)


def test_a_read_snapshot_sees_one_moment_while_others_write(db_factory, make_world):
    """An export's ratings and votes, and a model card's counts, are several statements: on PostgreSQL's READ
    COMMITTED each saw its own moment, so a rating that landed between them made the two disagree (found by review).
    ``read_snapshot`` reads them all from one."""
    from db.engine import read_snapshot
    from db.models import Rating

    world = make_world(n_raters=2)
    with read_snapshot(db_factory) as s:
        before = s.scalar(select(func.count(Rating.id)))
        with write_session(db_factory) as w:
            repo.add_rating(session=w, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=5)
        assert s.scalar(select(func.count(Rating.id))) == before
    with read_session(db_factory) as s:
        assert s.scalar(select(func.count(Rating.id))) == before + 1


def test_a_watermark_past_every_id_counts_every_rating(db_factory, make_world):
    """An id past what the column holds binds as -1 (db.models.RowId), which turned 'id <= watermark' around: a
    watermark of 2**31 counted no rating at all (found by review). Watermarks are clamped."""
    from db import quality as db_quality

    world = make_world(n_raters=2)
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=5)
    with read_session(db_factory) as s:
        for big in (2**31, 2**40, 2**70):
            assert len(repo.ratings_snapshot(session=s, experiment_id=world.experiment_id, up_to_rating_id=big)) == 1
            assert len(db_quality.rating_rows(session=s, experiment_id=world.experiment_id, up_to_rating_id=big)) == 1


def test_autogenerate_writes_row_ids_as_plain_integers():
    """The next autogenerated revision would have written db.models.RowId() (a NameError in the revision, and code
    of the app in a frozen file): ids render as sa.Integer() (found by review)."""
    from alembic.autogenerate import produce_migrations, render_python_code
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from db.migrate import render_item
    from db.models import Base

    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"render_item": render_item, "target_metadata": Base.metadata})
        code = render_python_code(produce_migrations(context, Base.metadata).upgrade_ops, render_item=render_item)
    assert "sa.Column('id', sa.Integer()" in code and "RowId" not in code and "db.models" not in code


def test_a_metrics_merge_reads_the_committed_row_not_a_stale_copy(db_factory, db_url, make_world):
    """PostgreSQL: an eval job's publish loaded a later round (list_rounds), then merged into that copy's metrics
    after another job had committed new metrics to it, and wrote the stale copy back: the other job's eval metrics
    were lost (found by review, with two eval jobs finishing out of order). The merge re-reads the row under its
    lock. SQLite serialises write transactions, so the stale copy cannot arise there."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE): no stale copy to merge into")
    world = make_world()
    s = db_factory()
    try:
        stale = repo.get_round(session=s, round_id=world.round_id)  # loaded before the other job commits
        assert stale.metrics in (None, {})
        with write_session(db_factory) as other:
            repo.update_round_metrics(session=other, round_id=world.round_id, metrics={"eval": {"kl": 0.5}})
        repo.update_round_metrics(session=s, round_id=world.round_id, metrics={"ab": {"side_seed": 7}})
        s.commit()
    finally:
        s.close()
    with read_session(db_factory) as s:
        assert repo.get_round(session=s, round_id=world.round_id).metrics == {"eval": {"kl": 0.5},
                                                                              "ab": {"side_seed": 7}}


def test_two_experiments_of_one_name_created_at_once_are_a_conflict(db_factory, db_url):
    """PostgreSQL: both transactions passed the name check and the second insert raised a raw IntegrityError (a bare
    'Error' in the admin tab; found by review). The second is a Conflict with a sentence. SQLite serialises them."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE): the name check sees the first")

    def create(s):
        repo.create_experiment(session=s, name="dup", model_spec="m", method="x", config={}, budgets=[1], prompts=["p"])

    result = race_with_open_transaction(db_factory, create, create)
    assert result == "an experiment named 'dup' already exists"


def test_round_progress_counts_match_a_count_of_the_rating_rows(db_factory, make_world):
    """round_progress sums each image's ratings in Python from one query (7 Dec 2026: the sums were a second query):
    every figure is checked against a count of the Rating rows written here, with overlap 2 and images rated 0-3 times."""
    world = make_world(n_images=6, n_raters=4, overlap=2)
    plan = {0: [], 1: [0], 2: [0, 1], 3: [0, 1, 2], 4: [3], 5: [1, 2, 3]}  # image index -> raters (indexes) who rate it
    with write_session(db_factory) as s:
        for image, raters in plan.items():
            for r in raters:
                repo.add_rating(session=s, image_id=world.image_ids[image], rater_id=world.rater_ids[r], score=3 + r)
    with read_session(db_factory) as s:
        per_image = dict.fromkeys(world.image_ids, 0)
        for (image_id,) in s.execute(select(Rating.image_id)):
            per_image[image_id] += 1
        progress = repo.round_progress(session=s, round_id=world.round_id)
    assert progress.total_images == len(per_image) == 6
    assert progress.rated_images == sum(1 for n in per_image.values() if n > 0) == 5
    assert progress.complete_images == sum(1 for n in per_image.values() if n >= 2) == 3
    assert progress.ratings == sum(per_image.values()) == 10
    assert progress.labels == sum(min(n, 2) for n in per_image.values()) == 8
    assert progress.labels_wanted == 12  # 6 images x overlap 2, nobody skipped, 4 accounts can rate


def test_accounts_that_can_rate_an_experiment_are_read_when_asked(db_factory, make_world):
    """can_still_rate's clause is built once per experiment id and kept (7 Dec 2026): it must still read who may rate
    at each query, as the experiment is limited, opened again and an account disabled, and give another experiment
    with its own raters its own count."""
    world = make_world(n_images=1, n_raters=3)
    other = make_world(n_images=1, n_raters=2, name="other")

    def enabled(experiment_id):
        with read_session(db_factory) as s:
            return repo.enabled_accounts(s, experiment_id)

    everyone = enabled(world.experiment_id)
    assert everyone == 5  # the two worlds' five accounts, none limited
    with write_session(db_factory) as s:
        db_members.set_raters(session=s, experiment_id=world.experiment_id, rater_ids=world.rater_ids[:1])
    assert enabled(world.experiment_id) == 1
    assert enabled(other.experiment_id) == 5
    with write_session(db_factory) as s:
        db_members.set_raters(session=s, experiment_id=world.experiment_id, rater_ids=None)
        s.get(Rater, world.rater_ids[2]).disabled_at = utcnow()
    assert enabled(world.experiment_id) == 4
    assert enabled(other.experiment_id) == 4
