"""Issue 13, items 4-5 at the repository level: recovery (retry a failed job, reopen a round, finish and archive an
experiment, close a round without a rating slipping past the watermark) and several raters (leases, labels against
images x overlap, skip undone, undo history in the database)."""

import threading
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest

from app import services
from db import jobs as job_queue
from db import repo
from db.engine import read_session, write_session
from db.errors import Conflict, NotFound
from db.models import utcnow


def _job(factory, job_id):
    with read_session(factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        return SimpleNamespace(status=job.status, attempts=job.attempts, lease_owner=job.lease_owner, error=job.error,
                               payload=job.payload)


def _round(factory, round_id):
    with read_session(factory) as s:
        return SimpleNamespace(status=repo.get_round(session=s, round_id=round_id).status)


def _fail_for_good(factory, job_id):
    """Claim and fail the job until it has used every attempt (what the worker does with a broken model)."""
    for _ in range(3):
        with write_session(factory) as s:
            claimed = job_queue.claim_job(session=s, worker_id="w", lease_s=30)
            assert claimed is not None and claimed.id == job_id
            job_queue.fail_job(session=s, job_id=job_id, worker_id="w", error="ModelLoadError: no such model", retry=True)
    assert _job(factory, job_id).status == "failed"


def _rate(factory, image_id, rater_id, score=5):
    with write_session(factory) as s:
        return repo.add_rating(session=s, image_id=image_id, rater_id=rater_id, score=score).id


# ---------------------------------------------------------------------------------------------
# recovery
# ---------------------------------------------------------------------------------------------


def test_a_failed_generate_job_is_retried_with_all_its_attempts(db_factory, make_world):
    world = make_world(open_round=False)
    with write_session(db_factory) as s:
        job_id = job_queue.enqueue_job(session=s, kind="generate", experiment_id=world.experiment_id, round_id=world.round_id).id
    with pytest.raises(Conflict, match="only a failed job can be retried"), write_session(db_factory) as s:
        job_queue.retry_job(session=s, job_id=job_id)
    _fail_for_good(db_factory, job_id)
    with write_session(db_factory) as s:
        assert job_queue.claim_job(session=s, worker_id="w", lease_s=30) is None  # stuck for good before the retry
        job_queue.retry_job(session=s, job_id=job_id)
    job = _job(db_factory, job_id)
    assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None)
    with write_session(db_factory) as s:
        assert job_queue.claim_job(session=s, worker_id="w2", lease_s=30).id == job_id
        job_queue.complete_job(session=s, job_id=job_id, worker_id="w2")
        repo.open_round(session=s, round_id=world.round_id)
    with pytest.raises(NotFound, match="no job with id 999"), write_session(db_factory) as s:
        job_queue.retry_job(session=s, job_id=999)


def test_retry_is_refused_when_the_round_moved_on_or_another_job_does_the_work(db_factory, make_world):
    world = make_world(open_round=False)
    with write_session(db_factory) as s:
        first = job_queue.enqueue_job(session=s, kind="generate", experiment_id=world.experiment_id, round_id=world.round_id).id
    _fail_for_good(db_factory, first)
    with write_session(db_factory) as s:
        second = job_queue.enqueue_job(session=s, kind="generate", experiment_id=world.experiment_id, round_id=world.round_id).id
    with pytest.raises(Conflict, match=f"job {second} already does the generate work"), write_session(db_factory) as s:
        job_queue.retry_job(session=s, job_id=first)
    with write_session(db_factory) as s:
        job_queue.get_job(session=s, job_id=second).status = "done"
        repo.open_round(session=s, round_id=world.round_id)
    with pytest.raises(Conflict, match="is 'labeling' now"), write_session(db_factory) as s:
        job_queue.retry_job(session=s, job_id=first)
    assert _job(db_factory, first).status == "failed"  # nothing written


def test_reopen_a_round_closed_for_training_cancels_its_train_job(db_factory, make_world):
    world = make_world()
    _rate(db_factory, world.image_ids[0], world.rater_ids[0])
    with write_session(db_factory) as s:
        job_id = repo.close_round(session=s, experiment_id=world.experiment_id).id
    with write_session(db_factory) as s:
        claimed = job_queue.claim_job(session=s, worker_id="w", lease_s=300)
        assert claimed.id == job_id
    with pytest.raises(Conflict, match="the worker is training on round 0 now"), write_session(db_factory) as s:
        repo.reopen_round(session=s, round_id=world.round_id)
    assert _round(db_factory, world.round_id).status == "training"
    with write_session(db_factory) as s:
        job_queue.fail_job(session=s, job_id=job_id, worker_id="w", error="boom", retry=True)  # queued again
        repo.reopen_round(session=s, round_id=world.round_id)
    assert _round(db_factory, world.round_id).status == "labeling"
    job = _job(db_factory, job_id)
    assert job.status == "failed" and "reopened for labeling" in job.error
    with write_session(db_factory) as s:
        assert job_queue.claim_job(session=s, worker_id="w", lease_s=30) is None
    _rate(db_factory, world.image_ids[1], world.rater_ids[0])  # labeling goes on
    with write_session(db_factory) as s:
        repo.set_round_status(session=s, round_id=world.round_id, status="done")
    with pytest.raises(Conflict, match="only a round closed for training can be reopened"), write_session(db_factory) as s:
        repo.reopen_round(session=s, round_id=world.round_id)


def test_finish_and_archive_an_experiment(db_factory, make_world):
    world = make_world()
    keep = make_world(name="other")
    for kind in ("generate", "train"):  # the work a person waits for holds finishing up
        with write_session(db_factory) as s:
            job_id = job_queue.enqueue_job(session=s, kind=kind, experiment_id=world.experiment_id, round_id=world.round_id).id
            job_queue.claim_job(session=s, worker_id="w", lease_s=300)
        with pytest.raises(Conflict, match=f"running job {job_id} \\({kind}\\)"), write_session(db_factory) as s:
            repo.finish_experiment(session=s, experiment_id=world.experiment_id)
        if kind == "generate":
            with write_session(db_factory) as s:
                job_queue.complete_job(session=s, job_id=job_id, worker_id="w")
    with write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=job_id, worker_id="w")
        queued = job_queue.enqueue_job(session=s, kind="train", experiment_id=world.experiment_id, round_id=world.round_id).id
        repo.finish_experiment(session=s, experiment_id=world.experiment_id)
    with read_session(db_factory) as s:
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).status == "finished"
        assert repo.get_round(session=s, round_id=world.round_id).status == "done"
        assert job_queue.get_job(session=s, job_id=queued).status == "failed"
        assert repo.get_open_round(session=s, experiment_id=world.experiment_id) is None
    for status in ("active", "paused"):
        with pytest.raises(Conflict, match="is finished"), write_session(db_factory) as s:
            repo.set_experiment_status(session=s, experiment_id=world.experiment_id, status=status)
    with write_session(db_factory) as s:
        repo.archive_experiment(session=s, experiment_id=world.experiment_id)
    with read_session(db_factory) as s:
        assert [e.id for e in repo.list_experiments(session=s, archived=False)] == [keep.experiment_id]
        assert [e.id for e in repo.list_experiments(session=s, archived=True)] == [world.experiment_id]
        assert len(repo.list_experiments(session=s)) == 2


def test_close_round_checks_what_the_admin_confirmed(db_factory, make_world):
    world = make_world()
    with pytest.raises(Conflict, match="no ratings yet"), write_session(db_factory) as s:
        repo.close_round(session=s, experiment_id=world.experiment_id)
    rating = _rate(db_factory, world.image_ids[0], world.rater_ids[0])
    with pytest.raises(Conflict, match="round 0 is the open round now, not round 3"), write_session(db_factory) as s:
        repo.close_round(session=s, experiment_id=world.experiment_id, expected_index=3)
    assert _round(db_factory, world.round_id).status == "labeling"
    with write_session(db_factory) as s:
        job = repo.close_round(session=s, experiment_id=world.experiment_id, expected_index=0)
        assert job.payload == {"round_index": 0, "watermark": rating}
    assert _round(db_factory, world.round_id).status == "training"


@pytest.mark.postgres
def test_no_rating_slips_in_between_the_watermark_and_closing(db_factory, db_url, make_world):
    """A rating in flight when the admin closes the round is either in the training snapshot or refused.

    Before the fix, close_round read the watermark without locking the round: on PostgreSQL a rating whose
    transaction was open committed after the watermark was read, into a round then marked 'training'."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world()
    _rate(db_factory, world.image_ids[0], world.rater_ids[0])
    rating_started, may_commit = threading.Event(), threading.Event()
    result: dict = {}

    def rater():
        with write_session(db_factory) as s:
            repo.lock_image_for_rating(session=s, image_id=world.image_ids[1])
            result["rating"] = repo.add_rating(session=s, image_id=world.image_ids[1], rater_id=world.rater_ids[1], score=9).id
            rating_started.set()
            may_commit.wait(30)

    def admin():
        result["job"] = services.close_round(factory=db_factory, experiment_id=world.experiment_id)

    t_rater = threading.Thread(target=rater)
    t_rater.start()
    assert rating_started.wait(30)
    t_admin = threading.Thread(target=admin)
    t_admin.start()
    time.sleep(0.5)  # the admin's close is now waiting for the rater's transaction (or, before the fix, past the read)
    may_commit.set()
    t_rater.join(30)
    t_admin.join(30)
    assert _job(db_factory, result["job"]).payload["watermark"] >= result["rating"]


# ---------------------------------------------------------------------------------------------
# several raters
# ---------------------------------------------------------------------------------------------


def _offered(factory, world, rater_id, now=None):
    with read_session(factory) as s:
        return [im.id for im in repo.next_images_for_rater(session=s, round_id=world.round_id, rater_id=rater_id, limit=50,
                                                           now=now)]


def _lease(factory, world, rater_id, ids, lease_s=60, now=None):
    with write_session(factory) as s:
        return repo.lease_images(session=s, round_id=world.round_id, rater_id=rater_id, image_ids=ids, lease_s=lease_s, now=now)


def test_an_image_handed_out_is_reserved_to_its_rater_until_rated_or_expired(db_factory, make_world):
    world = make_world(n_images=2, overlap=1)
    ann, bob, cid = world.rater_ids
    first, second = world.image_ids
    assert _lease(db_factory, world, ann, [first]) == [first]
    assert _offered(db_factory, world, bob) == [second]  # before leases both raters got image `first`
    assert _lease(db_factory, world, bob, [first, second]) == [second]
    with read_session(db_factory) as s:
        assert repo.count_images_for_rater(session=s, round_id=world.round_id, rater_id=bob, image_id=first) == 0
        assert repo.held_image_ids(session=s, round_id=world.round_id, rater_id=ann) == [first]
    later = utcnow() + timedelta(seconds=61)
    assert _offered(db_factory, world, cid, now=later) == [first, second]  # both leases ran out
    assert _offered(db_factory, world, cid) == []
    _rate(db_factory, second, bob)  # rating releases the lease
    with read_session(db_factory) as s:
        assert repo.held_image_ids(session=s, round_id=world.round_id, rater_id=bob) == []
    with write_session(db_factory) as s:
        repo.add_skip(session=s, image_id=first, rater_id=ann)  # so does skipping
    assert _offered(db_factory, world, cid) == [first]
    with write_session(db_factory) as s:
        assert repo.release_leases(session=s, round_id=world.round_id, rater_id=ann) == 0


def test_leases_count_towards_the_overlap(db_factory, make_world):
    world = make_world(n_images=1, n_raters=4, overlap=2)
    (image,) = world.image_ids
    a, b, c, d = world.rater_ids
    assert _lease(db_factory, world, a, [image]) == [image]
    assert _lease(db_factory, world, b, [image]) == [image]
    assert _lease(db_factory, world, c, [image]) == []  # two places, both reserved
    _rate(db_factory, image, a)
    assert _offered(db_factory, world, d) == []  # one rating + b's lease
    with write_session(db_factory) as s:
        repo.release_leases(session=s, round_id=world.round_id, rater_id=b)
    assert _offered(db_factory, world, d) == [image]


def test_a_rater_renewing_leases_cannot_keep_an_image_from_others_for_ever(db_factory, make_world):
    """Before: renewing a lease extended it with no end, so a rater (or a script) calling for a batch every few minutes
    kept images from every other rater for as long as it liked. Now a lease holds its place for repo.RESERVE_S from the
    first grant; the holder keeps it on their page; the others are offered it again, after the images nobody holds."""
    world = make_world(n_images=2, overlap=1)
    ann, bob, _ = world.rater_ids
    first, second = world.image_ids
    t0 = utcnow()
    window = timedelta(minutes=30)  # repo.RESERVE_S
    for minutes in range(0, 60, 5):  # ann renews every 5 minutes for an hour; each lease lasts 10
        now = t0 + timedelta(minutes=minutes)
        assert _lease(db_factory, world, ann, [first], lease_s=600, now=now) == [first]
        seen = now + timedelta(seconds=1)
        expected = [second] if seen < t0 + window else [second, first]  # first comes last though its id is lower
        assert _offered(db_factory, world, bob, now=seen) == expected, minutes
    with read_session(db_factory) as s:
        assert repo.holds_lease(session=s, image_id=first, rater_id=ann, now=t0 + timedelta(minutes=56))
    assert _lease(db_factory, world, bob, [first], now=t0 + timedelta(minutes=56)) == [first]


def test_a_lease_that_lapses_and_is_taken_again_keeps_its_first_grant(db_factory, make_world):
    """Letting a lease run out and taking the image again does not restart the reserving window."""
    world = make_world(n_images=1, overlap=1)
    (image,) = world.image_ids
    ann, bob, _ = world.rater_ids
    t0 = utcnow()
    at = lambda minutes: t0 + timedelta(minutes=minutes)  # noqa: E731
    assert _lease(db_factory, world, ann, [image], lease_s=600, now=at(0)) == [image]
    assert _offered(db_factory, world, bob, now=at(5)) == []
    assert _offered(db_factory, world, bob, now=at(11)) == [image]  # ran out: free for anyone
    assert _lease(db_factory, world, ann, [image], lease_s=600, now=at(12)) == [image]  # ann takes it again
    assert _offered(db_factory, world, bob, now=at(20)) == []  # reserved again, but in the first grant's window
    assert _lease(db_factory, world, ann, [image], lease_s=600, now=at(25)) == [image]  # renewed to minute 35
    assert _offered(db_factory, world, bob, now=at(29)) == []
    assert _offered(db_factory, world, bob, now=at(31)) == [image]  # 30 minutes after ann's first lease
    # ann lets it go for as long as a window lasts (her lease ran out at minute 35): taken again, it holds a place anew
    assert _offered(db_factory, world, bob, now=at(64)) == [image]
    assert _lease(db_factory, world, ann, [image], lease_s=600, now=at(66)) == [image]
    assert _offered(db_factory, world, bob, now=at(67)) == []


def test_a_released_lease_taken_again_keeps_its_first_grant(db_factory, make_world):
    """A new batch on the page releases the old batch's leases; drawing the same image again must not restart the
    window either (before, the row was deleted and a fresh one reserved the image for another full lease)."""
    world = make_world(n_images=1, overlap=1)
    (image,) = world.image_ids
    ann, bob, _ = world.rater_ids
    t0 = utcnow()
    at = lambda minutes: t0 + timedelta(minutes=minutes)  # noqa: E731
    assert _lease(db_factory, world, ann, [image], lease_s=3600, now=at(-29)) == [image]
    with write_session(db_factory) as s:
        assert repo.release_leases(session=s, round_id=world.round_id, rater_id=ann) == 1
        assert repo.release_leases(session=s, round_id=world.round_id, rater_id=ann) == 0  # nothing live is left
        assert not repo.holds_lease(session=s, image_id=image, rater_id=ann)
    assert _offered(db_factory, world, bob) == [image]
    assert _lease(db_factory, world, ann, [image], lease_s=600) == [image]
    assert _offered(db_factory, world, bob) == []  # inside the first grant's 30 minutes
    assert _offered(db_factory, world, bob, now=at(2)) == [image]  # past them


@pytest.mark.postgres
def test_two_raters_drawing_at_once_do_not_both_reserve_the_last_place(db_factory, db_url, make_world):
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world(n_images=1, overlap=1)
    (image,) = world.image_ids
    a, b, _ = world.rater_ids
    leased, may_commit = threading.Event(), threading.Event()
    got: dict = {}

    def first():
        with write_session(db_factory) as s:
            got["a"] = repo.lease_images(session=s, round_id=world.round_id, rater_id=a, image_ids=[image], lease_s=60)
            leased.set()
            may_commit.wait(30)

    t = threading.Thread(target=first)
    t.start()
    assert leased.wait(30)
    t2 = threading.Thread(target=lambda: got.__setitem__("b", _lease(db_factory, world, b, [image])))
    t2.start()
    time.sleep(0.5)
    may_commit.set()
    t.join(30)
    t2.join(30)
    assert got == {"a": [image], "b": []}


def test_progress_counts_labels_against_images_times_overlap(db_factory, make_world):
    """With overlap 3, 2 images are done at 6 ratings; a 4th rating of an image is not a 4th label."""
    world = make_world(n_images=2, n_raters=4, overlap=3)
    for rater in world.rater_ids[:3]:
        _rate(db_factory, world.image_ids[0], rater)
    _rate(db_factory, world.image_ids[0], world.rater_ids[3])  # more than the overlap (the repo layer allows it)
    _rate(db_factory, world.image_ids[1], world.rater_ids[0])
    with read_session(db_factory) as s:
        p = repo.round_progress(session=s, round_id=world.round_id)
        (stats,) = repo.round_rating_stats(session=s, experiment_id=world.experiment_id)
    assert (p.ratings, p.labels, p.labels_wanted, p.rated_images, p.total_images) == (5, 4, 6, 2, 2)
    assert (stats.n_ratings, stats.n_labels, stats.labels_wanted) == (5, 4, 6)


def test_undo_history_is_kept_in_the_database(db_factory, make_world):
    world = make_world(n_images=3)
    ann = world.rater_ids[0]
    a, b, c = world.image_ids
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=a, rater_id=ann, score=4)
        repo.add_undo_step(session=s, rater_id=ann, image_id=a, action="rate", previous_score=None)
        repo.add_rating(session=s, image_id=a, rater_id=ann, score=8)
        repo.add_undo_step(session=s, rater_id=ann, image_id=a, action="rate", previous_score=4)
        repo.add_skip(session=s, image_id=b, rater_id=ann)
        repo.add_undo_step(session=s, rater_id=ann, image_id=b, action="skip")
    steps = []
    for _ in range(4):  # a fresh session each time: nothing lives in memory
        with write_session(db_factory) as s:
            steps.append(repo.undo_last(session=s, rater_id=ann, round_id=world.round_id))
    assert steps == [repo.Undone(b, "skip", None), repo.Undone(a, "rate", 4), repo.Undone(a, "rate", None), None]
    with read_session(db_factory) as s:
        assert repo.find_rating(session=s, image_id=a, rater_id=ann) is None
        assert repo.find_skip(session=s, image_id=b, rater_id=ann) is None
        assert sorted(im.id for im in repo.next_images_for_rater(session=s, round_id=world.round_id, rater_id=ann, limit=9)) == [a, b, c]
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=c, rater_id=ann, score=2)
        repo.add_undo_step(session=s, rater_id=ann, image_id=c, action="rate")
        repo.close_round(session=s, experiment_id=world.experiment_id)
    with pytest.raises(Conflict, match="closed for labeling"), write_session(db_factory) as s:
        repo.undo_last(session=s, rater_id=ann, round_id=world.round_id)
    with read_session(db_factory) as s:
        assert repo.find_rating(session=s, image_id=c, rater_id=ann).score == 2



def test_undo_puts_back_a_skip_that_a_rating_and_its_edit_took_back(db_factory, make_world):
    """Skip a, rate b, rate a (the skip taken back), edit a: four undos take back the four actions, newest first, each
    leaving what was there before it (a rating of a skipped image used to be undone with the skip lost, and the next
    undo went on to the action before: found by review). Read from a fresh session each time."""
    world = make_world(n_images=3)
    ann = world.rater_ids[0]
    a, b, _ = world.image_ids

    def state():
        with read_session(db_factory) as s:
            return tuple((getattr(repo.find_rating(session=s, image_id=i, rater_id=ann), "score", None),
                          repo.find_skip(session=s, image_id=i, rater_id=ann) is not None) for i in (a, b))

    seen = [state()]
    with write_session(db_factory) as s:
        repo.add_skip(session=s, image_id=a, rater_id=ann)
        repo.add_undo_step(session=s, rater_id=ann, image_id=a, action="skip")
    seen.append(state())
    for image_id, score, previous in ((b, 5, None), (a, 7, None), (a, 2, 7)):
        with write_session(db_factory) as s:
            repo.add_rating(session=s, image_id=image_id, rater_id=ann, score=score)
            repo.add_undo_step(session=s, rater_id=ann, image_id=image_id, action="rate", previous_score=previous)
        seen.append(state())
    assert seen == [((None, False), (None, False)), ((None, True), (None, False)), ((None, True), (5, False)),
                    ((7, False), (5, False)), ((2, False), (5, False))]
    undone = []
    for expected in reversed(seen[:-1]):
        with write_session(db_factory) as s:
            undone.append(repo.undo_last(session=s, rater_id=ann, round_id=world.round_id))
        assert state() == expected
    assert undone == [repo.Undone(a, "rate", 7), repo.Undone(a, "rate", None, skipped=True), repo.Undone(b, "rate", None),
                      repo.Undone(a, "skip", None)]
    with write_session(db_factory) as s:
        assert repo.undo_last(session=s, rater_id=ann, round_id=world.round_id) is None

def test_raters_see_the_dashboard_only_when_allowed(db_factory, make_world):
    world = make_world()
    with read_session(db_factory) as s:
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).raters_see_dashboard is False
    with write_session(db_factory) as s:
        repo.set_raters_see_dashboard(session=s, experiment_id=world.experiment_id, allowed=True)
    with read_session(db_factory) as s:
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).raters_see_dashboard is True


def test_reopening_a_round_leaves_its_eval_job_alone(db_factory, make_world):
    """The round's eval grid (an eval job, running or queued) does not stand in the way of reopening the round, and is
    not cancelled: the round's model does not change. Finishing the experiment cancels a queued one like any job."""
    world = make_world()
    _rate(db_factory, world.image_ids[0], world.rater_ids[0])
    with write_session(db_factory) as s:
        eval_id = job_queue.enqueue_job(session=s, kind="eval", experiment_id=world.experiment_id, round_id=world.round_id,
                                        payload={"round_index": 0}).id
        assert job_queue.claim_job(session=s, worker_id="w", lease_s=300).id == eval_id
        train_id = repo.close_round(session=s, experiment_id=world.experiment_id).id
    with write_session(db_factory) as s:
        repo.reopen_round(session=s, round_id=world.round_id)
    assert _round(db_factory, world.round_id).status == "labeling"
    assert _job(db_factory, train_id).status == "failed" and _job(db_factory, eval_id).status == "running"
    with write_session(db_factory) as s:  # the eval job gives way (to nothing here) and waits in the queue
        job_queue.yield_job(session=s, job_id=eval_id, worker_id="w")
        train_id = repo.close_round(session=s, experiment_id=world.experiment_id).id
        repo.reopen_round(session=s, round_id=world.round_id)
    assert _job(db_factory, eval_id).status == "queued"
    with write_session(db_factory) as s:
        repo.finish_experiment(session=s, experiment_id=world.experiment_id)
    job = _job(db_factory, eval_id)
    assert job.status == "failed" and "was finished" in job.error


def test_a_failed_eval_job_is_retried_while_its_round_is_past_generating(db_factory, make_world):
    world = make_world(open_round=False)
    with write_session(db_factory) as s:
        eval_id = job_queue.enqueue_job(session=s, kind="eval", experiment_id=world.experiment_id,
                                        round_id=world.round_id).id
    _fail_for_good(db_factory, eval_id)
    with pytest.raises(Conflict, match="is 'generating' now"), write_session(db_factory) as s:
        job_queue.retry_job(session=s, job_id=eval_id)
    for status in ("labeling", "training", "done"):
        with write_session(db_factory) as s:
            repo.get_round(session=s, round_id=world.round_id).status = status
            job_queue.get_job(session=s, job_id=eval_id).status = "failed"
            assert job_queue.retry_job(session=s, job_id=eval_id).status == "queued"


def test_a_running_eval_job_does_not_hold_up_finishing_the_experiment(db_factory, make_world):
    """A queue of eval jobs (one running, with a live lease) must not keep an admin from finishing: the running one
    stays running (the worker stops it at its next chunk), the queued ones are cancelled."""
    world = make_world()
    with write_session(db_factory) as s:
        running = job_queue.enqueue_job(session=s, kind="eval", experiment_id=world.experiment_id, round_id=world.round_id,
                                        payload={"round_index": 0}).id
        queued = job_queue.enqueue_job(session=s, kind="eval", experiment_id=world.experiment_id, round_id=world.round_id,
                                       payload={"round_index": 0}).id
        assert job_queue.claim_job(session=s, worker_id="w", lease_s=300).id == running
    with write_session(db_factory) as s:
        repo.finish_experiment(session=s, experiment_id=world.experiment_id)
    with read_session(db_factory) as s:
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).status == "finished"
    assert _job(db_factory, running).status == "running" and _job(db_factory, running).lease_owner == "w"
    job = _job(db_factory, queued)
    assert job.status == "failed" and job.error == repo.finished_reason("exp")
    with write_session(db_factory) as s:  # live_job: only the kinds asked for
        now = utcnow()
        assert job_queue.live_job(session=s, now=now, experiment_id=world.experiment_id).id == running
        assert job_queue.live_job(s, now, kinds=job_queue.PERSON_KINDS, experiment_id=world.experiment_id) is None
        assert job_queue.live_job(s, now, kinds=["eval"]).id == running


def test_a_train_job_a_reopen_replaced_is_not_retried_on_its_stale_watermark(db_factory, make_world):
    """Close (job A), reopen (A cancelled), rate more, close again (job B, a newer watermark): A passed every retry
    check, so if B failed a retry of A trained without the ratings given after the reopen. Found by review."""
    from app import ui_admin

    world = make_world()
    _rate(db_factory, world.image_ids[0], world.rater_ids[0])
    with write_session(db_factory) as s:
        first = repo.close_round(session=s, experiment_id=world.experiment_id).id
    with write_session(db_factory) as s:
        repo.reopen_round(session=s, round_id=world.round_id)
    _rate(db_factory, world.image_ids[1], world.rater_ids[0])
    with write_session(db_factory) as s:
        second = repo.close_round(session=s, experiment_id=world.experiment_id).id
    assert ui_admin.newest_failed_job(db_factory, world.experiment_id) is None  # B is queued: nothing to retry
    _fail_for_good(db_factory, second)
    with pytest.raises(Conflict, match=f"job {second} replaced job {first}"), write_session(db_factory) as s:
        job_queue.retry_job(session=s, job_id=first)
    assert ui_admin.newest_failed_job(db_factory, world.experiment_id) == second
    with write_session(db_factory) as s:
        assert job_queue.retry_job(session=s, job_id=second).payload["watermark"] > _job(db_factory, first).payload["watermark"]


def test_closing_a_round_of_a_finished_experiment_does_not_say_resume_it(db_factory, make_world):
    """It said "resume it before training", and resuming a finished experiment is refused. Found by review."""
    world = make_world()
    _rate(db_factory, world.image_ids[0], world.rater_ids[0])
    with write_session(db_factory) as s:
        repo.finish_experiment(session=s, experiment_id=world.experiment_id)
    with pytest.raises(Conflict) as info, write_session(db_factory) as s:
        repo.close_round(session=s, experiment_id=world.experiment_id)
    assert str(info.value) == "experiment 'exp' is finished; it cannot be trained again"
