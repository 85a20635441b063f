import threading
from datetime import UTC, datetime, timedelta

import pytest

from db import jobs as job_queue
from db import repo
from db.engine import read_session, write_session
from db.errors import InvalidInput, LeaseLost
from tests.db.conftest import race_with_open_transaction

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _enqueue(factory, experiment_id, n=1, **kwargs):
    with write_session(factory) as s:
        return [job_queue.enqueue_job(session=s, kind="train", experiment_id=experiment_id, **kwargs).id for _ in range(n)]


def _claim(factory, worker, now, lease_s=10, kinds=None):
    with write_session(factory) as s:
        job = job_queue.claim_job(session=s, worker_id=worker, lease_s=lease_s, now=now, kinds=kinds)
        return None if job is None else (job.id, job.attempts, job.status, job.lease_owner)


def test_claim_takes_the_oldest_queued_job_of_the_wanted_kinds(db_factory, make_world):
    world = make_world()
    (train_id,) = _enqueue(db_factory, world.experiment_id)
    with write_session(db_factory) as s:
        gen_id = job_queue.enqueue_job(session=s, kind="generate", round_id=world.round_id, payload={"n": 8}).id
    assert _claim(db_factory, "w1", T0, kinds=["generate"]) == (gen_id, 1, "running", "w1")
    assert _claim(db_factory, "w1", T0, kinds=["generate"]) is None
    assert _claim(db_factory, "w2", T0) == (train_id, 1, "running", "w2")
    assert _claim(db_factory, "w3", T0) is None
    with pytest.raises(InvalidInput, match="unknown job kind 'cook'"), write_session(db_factory) as s:
        job_queue.claim_job(session=s, worker_id="w", lease_s=10, kinds=["cook"])
    for bad in (0, 1e12, 30 * 86_400 + 1):  # a huge lease raised OverflowError (found by review)
        with pytest.raises(InvalidInput, match=r"lease_s must be a number of seconds above 0 and at most 2592000 "
                                               r"\(30 days\)"), write_session(db_factory) as s:
            job_queue.claim_job(session=s, worker_id="w", lease_s=bad)


def test_a_paused_experiments_jobs_wait_until_it_is_resumed(db_factory, make_world):
    """The admin tab promises "the worker takes no new training until you resume"; claim_job used to ignore pausing."""
    paused, other = make_world(name="paused"), make_world(name="other")
    (paused_job,) = _enqueue(db_factory, paused.experiment_id)
    with write_session(db_factory) as s:
        repo.set_experiment_status(session=s, experiment_id=paused.experiment_id, status="paused")
    assert _claim(db_factory, "w1", T0) is None
    (other_job,) = _enqueue(db_factory, other.experiment_id)
    assert _claim(db_factory, "w1", T0) == (other_job, 1, "running", "w1")  # the others' jobs still run
    with write_session(db_factory) as s:
        repo.set_experiment_status(session=s, experiment_id=paused.experiment_id, status="active")
    assert _claim(db_factory, "w1", T0) == (paused_job, 1, "running", "w1")


def test_two_concurrent_claims_cannot_get_the_same_job(db_factory, make_world):
    world = make_world()
    (job_id,) = _enqueue(db_factory, world.experiment_id)
    first_claimed = threading.Event()
    results = {}

    def first():
        with write_session(db_factory) as s:
            results["first"] = job_queue.claim_job(session=s, worker_id="a", lease_s=60).id
            first_claimed.set()
            threading.Event().wait(0.3)  # hold the transaction open while the second claim runs

    thread = threading.Thread(target=first)
    thread.start()
    assert first_claimed.wait(30)
    with write_session(db_factory) as s:
        results["second"] = job_queue.claim_job(session=s, worker_id="b", lease_s=60)
    thread.join(30)
    assert results == {"first": job_id, "second": None}


def test_an_expired_lease_is_reclaimed_and_the_stale_worker_cannot_finish(db_factory, make_world):
    world = make_world()
    (job_id,) = _enqueue(db_factory, world.experiment_id)
    assert _claim(db_factory, "old", T0, lease_s=10) == (job_id, 1, "running", "old")
    with write_session(db_factory) as s:  # heartbeats extend the lease
        assert job_queue.heartbeat(
            session=s,
            job_id=job_id,
            worker_id="old",
            lease_s=10,
            now=T0 + timedelta(seconds=8),
            progress={"phase": "train", "step": 3, "total": 10, "eta_s": 20.0},
        )
    assert _claim(db_factory, "new", T0 + timedelta(seconds=15)) is None  # lease runs to T0+18s
    assert _claim(db_factory, "new", T0 + timedelta(seconds=19)) == (job_id, 2, "running", "new")
    with write_session(db_factory) as s:
        assert not job_queue.heartbeat(session=s, job_id=job_id, worker_id="old", lease_s=10, now=T0 + timedelta(seconds=20))
    with pytest.raises(LeaseLost) as info, write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=job_id, worker_id="old", result={"adapter": "late"})
    assert str(info.value) == (
        f"worker 'old' no longer holds job {job_id} (it is 'running', held by 'new'); its lease expired and the job was reclaimed"
    )
    with pytest.raises(LeaseLost), write_session(db_factory) as s:
        job_queue.fail_job(session=s, job_id=job_id, worker_id="old", error="late failure")
    with write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=job_id, worker_id="new", result={"adapter": "adapters/round-1"})
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.result, job.attempts, job.progress["step"]) == ("done", {"adapter": "adapters/round-1"}, 2, 3)
    with pytest.raises(LeaseLost, match="it is 'done'"), write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=job_id, worker_id="new")


def _claim_1s_writes_are_refused(factory, job_id, stale):
    """Every write worker 'vm-1' may make under claim 1 (hold, complete, fail, save the payload, yield) raises
    LeaseLost with the sentence ``stale`` and writes nothing."""
    for act in (lambda s: job_queue.held_job(session=s, job_id=job_id, worker_id="vm-1", claim=1),
                lambda s: job_queue.complete_job(session=s, job_id=job_id, worker_id="vm-1", claim=1,
                                                 result={"by": "the stale claim"}),
                lambda s: job_queue.fail_job(session=s, job_id=job_id, worker_id="vm-1", claim=1, error="late"),
                lambda s: job_queue.save_payload(session=s, job_id=job_id, worker_id="vm-1", claim=1, payload={}),
                lambda s: job_queue.yield_job(session=s, job_id=job_id, worker_id="vm-1", claim=1)):
        with pytest.raises(LeaseLost) as info, write_session(factory) as s:
            act(s)
        assert str(info.value) == stale


def test_a_stale_worker_cannot_finish_the_job_its_twin_with_the_same_id_took_over(db_factory, make_world):
    """Two workers with one id (the old default HOST-PID repeats in containers: a fixed host name, PID 1): the one
    whose lease ran out kept heartbeating and completed the job its twin had claimed again, throwing the real
    holder's work away. Found by review. Ownership is now the id and the claim number the claim returned."""
    world = make_world()
    (job_id,) = _enqueue(db_factory, world.experiment_id)
    assert _claim(db_factory, "vm-1", T0, lease_s=10) == (job_id, 1, "running", "vm-1")  # the one that stalls
    assert _claim(db_factory, "vm-1", T0 + timedelta(seconds=11), lease_s=10) == (job_id, 2, "running", "vm-1")
    stale = f"worker 'vm-1' no longer holds job {job_id}: its claim 1 ended (its lease expired, or an admin stopped " \
            "the job) and the job was claimed again as claim 2, attempt 2 (by a worker with the same id)"
    with write_session(db_factory) as s:
        assert not job_queue.heartbeat(session=s, job_id=job_id, worker_id="vm-1", lease_s=10, claim=1,
                                       now=T0 + timedelta(seconds=12))
    _claim_1s_writes_are_refused(db_factory, job_id, stale)
    for bad in (0, "2", True, 2.0):
        with pytest.raises(InvalidInput, match="claim must be"), write_session(db_factory) as s:
            job_queue.complete_job(session=s, job_id=job_id, worker_id="vm-1", claim=bad)
    with write_session(db_factory) as s:  # the real holder carries on and publishes
        assert job_queue.heartbeat(session=s, job_id=job_id, worker_id="vm-1", lease_s=10, claim=2,
                                   now=T0 + timedelta(seconds=13))
        job_queue.held_job(session=s, job_id=job_id, worker_id="vm-1", claim=2)
        job_queue.complete_job(session=s, job_id=job_id, worker_id="vm-1", claim=2, result={"by": "the holder"})
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.attempts, job.result) == ("done", 2, {"by": "the holder"})


@pytest.mark.parametrize("between", ["an admin's stop and retry", "a yield"])
def test_a_claim_that_ended_cannot_write_under_a_later_claim_with_the_same_attempt_number(db_factory, make_world,
                                                                                          between):
    """Writes were checked against the worker id and the attempt number, and attempt numbers repeat: an admin's retry
    sets them back to 0, a yield takes one back. Two workers given the same --worker-id: the first one's claim ended
    (an admin stopped its job and retried it, or it gave way), the second claimed the job as attempt 1 again, and the
    first one's heartbeat, result or failure went through as the second's. Found by the third review. Every claim
    now raises the job's claim count, which nothing lowers, and the writes are checked against it."""
    world = make_world()
    (job_id,) = _enqueue(db_factory, world.experiment_id)
    with write_session(db_factory) as s:
        first = job_queue.claim_job(session=s, worker_id="vm-1", lease_s=60, now=T0)
        first_claim = (first.attempts, first.claims)
    assert first_claim == (1, 1)
    with write_session(db_factory) as s:
        if between == "a yield":
            job_queue.yield_job(session=s, job_id=job_id, worker_id="vm-1", claim=1)
        else:
            job_queue.stop_job(session=s, job_id=job_id, reason="stopped by root", expected_owner="vm-1")
            job_queue.retry_job(session=s, job_id=job_id)
    with write_session(db_factory) as s:
        second = job_queue.claim_job(session=s, worker_id="vm-1", lease_s=60, now=T0 + timedelta(seconds=1))
        assert (second.id, second.attempts, second.claims, second.lease_owner) == (job_id, 1, 2, "vm-1")
    stale = (f"worker 'vm-1' no longer holds job {job_id}: its claim 1 ended (its lease expired, or an admin stopped "
             "the job) and the job was claimed again as claim 2, attempt 1 (by a worker with the same id)")
    with write_session(db_factory) as s:
        assert not job_queue.heartbeat(session=s, job_id=job_id, worker_id="vm-1", lease_s=600, claim=1,
                                       progress={"phase": "stale"}, now=T0 + timedelta(seconds=2))
    with read_session(db_factory) as s:
        assert job_queue.lost_lease(session=s, job_id=job_id, worker_id="vm-1", claim=1) == stale
    _claim_1s_writes_are_refused(db_factory, job_id, stale)
    with read_session(db_factory) as s:  # the second claim's job, untouched by the first
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.lease_owner, job.result, job.progress) == ("running", "vm-1", None, None)
        assert job.lease_expires_at == T0 + timedelta(seconds=61)
    with write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=job_id, worker_id="vm-1", claim=2, result={"by": "the second claim"})
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.attempts, job.claims, job.result) == ("done", 1, 2, {"by": "the second claim"})


@pytest.mark.parametrize("action", ["reopen", "finish"])
def test_reopen_and_finish_cancel_a_job_whose_lease_expired_by_the_callers_clock(db_factory, make_world, action):
    """finish_experiment and reopen_round asked live_job at the caller's ``now`` but cancel_jobs used the real
    clock: a job whose lease had expired by ``now`` (but not by the real clock) was neither a refusal nor
    cancelled, and stayed running and completable after the experiment finished. Found by review."""
    world = make_world()
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=7)
        job_id = repo.close_round(session=s, experiment_id=world.experiment_id).id  # round 0 training
    assert _claim(db_factory, "w1", T0, lease_s=60) == (job_id, 1, "running", "w1")
    with write_session(db_factory) as s:
        if action == "reopen":
            repo.reopen_round(session=s, round_id=world.round_id, now=T0 + timedelta(seconds=120))
        else:
            repo.finish_experiment(session=s, experiment_id=world.experiment_id, now=T0 + timedelta(seconds=120))
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.lease_owner, job.lease_expires_at) == ("failed", None, None)
        assert job.error.startswith("cancelled: ")
    # told as a cancel, not as "its lease expired and the job was reclaimed" (found by review)
    cancelled = r"it is 'failed', held by None\); an admin stopped or cancelled it \(cancelled: "
    with pytest.raises(LeaseLost, match=cancelled), write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=job_id, worker_id="w1", claim=1)


def test_a_job_that_used_all_attempts_fails(db_factory, make_world):
    world = make_world()
    (job_id,) = _enqueue(db_factory, world.experiment_id, max_attempts=2)
    assert _claim(db_factory, "a", T0)[1] == 1
    assert _claim(db_factory, "b", T0 + timedelta(seconds=11))[1] == 2
    assert _claim(db_factory, "c", T0 + timedelta(seconds=30)) is None
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=job_id)
        assert (job.status, job.attempts) == ("failed", 2)
        assert "lease expired on the last allowed attempt" in job.error
        assert [j.id for j in job_queue.list_jobs(session=s, status="failed")] == [job_id]


def test_fail_job_with_retry_requeues_until_attempts_run_out(db_factory, make_world):
    world = make_world()
    (job_id,) = _enqueue(db_factory, world.experiment_id, max_attempts=2)
    _claim(db_factory, "a", T0)
    with write_session(db_factory) as s:
        assert job_queue.fail_job(session=s, job_id=job_id, worker_id="a", error="CUDA out of memory", retry=True).status == "queued"
    _claim(db_factory, "b", T0)
    with write_session(db_factory) as s:
        job = job_queue.fail_job(session=s, job_id=job_id, worker_id="b", error="CUDA out of memory", retry=True)
        assert (job.status, job.attempts, job.error) == ("failed", 2, "CUDA out of memory")
    assert _claim(db_factory, "c", T0) is None


# ---------------------------------------------------------------------------------------------
# priority: the work a person waits for (generate, train) before the dashboard's eval grid
# ---------------------------------------------------------------------------------------------


def _enqueue_kind(factory, kind, world, **kwargs):
    with write_session(factory) as s:
        return job_queue.enqueue_job(session=s, kind=kind, experiment_id=world.experiment_id, round_id=world.round_id,
                                     **kwargs).id


def test_claim_prefers_train_and_generate_over_an_older_eval_job(db_factory, make_world):
    world = make_world()
    eval_id = _enqueue_kind(db_factory, "eval", world)
    train_id = _enqueue_kind(db_factory, "train", world)
    gen_id = _enqueue_kind(db_factory, "generate", world)
    assert eval_id < train_id < gen_id
    assert _claim(db_factory, "w1", T0) == (train_id, 1, "running", "w1")  # not the older eval job
    assert _claim(db_factory, "w2", T0) == (gen_id, 1, "running", "w2")
    assert _claim(db_factory, "w3", T0) == (eval_id, 1, "running", "w3")  # once nothing else is claimable
    assert _claim(db_factory, "w4", T0) is None


def test_claim_prefers_a_train_job_over_an_eval_job_whose_lease_expired(db_factory, make_world):
    """An eval job whose worker died is claimable again, but still after the work a person waits for."""
    world = make_world()
    eval_id = _enqueue_kind(db_factory, "eval", world)
    assert _claim(db_factory, "dead", T0, lease_s=10) == (eval_id, 1, "running", "dead")
    train_id = _enqueue_kind(db_factory, "train", world)
    later = T0 + timedelta(seconds=30)
    assert _claim(db_factory, "w1", later) == (train_id, 1, "running", "w1")
    assert _claim(db_factory, "w2", later) == (eval_id, 2, "running", "w2")
    eval2 = _enqueue_kind(db_factory, "eval", world)
    assert _claim(db_factory, "w3", later, kinds=["eval"]) == (eval2, 1, "running", "w3")


def test_waiting_job_is_what_claim_would_take_of_the_person_kinds(db_factory, make_world):
    world, paused = make_world(name="active"), make_world(name="paused")

    def waiting(now=T0):
        with read_session(db_factory) as s:
            job = job_queue.waiting_job(session=s, now=now)
            return None if job is None else job.id

    eval_id = _enqueue_kind(db_factory, "eval", world)
    assert waiting() is None  # an eval job is nobody's wait
    with write_session(db_factory) as s:
        repo.set_experiment_status(session=s, experiment_id=paused.experiment_id, status="paused")
    _enqueue_kind(db_factory, "train", paused)
    assert waiting() is None  # a paused experiment's train job is not claimable: no reason to give way (or to loop)
    assert _claim(db_factory, "w1", T0) == (eval_id, 1, "running", "w1")
    train_id = _enqueue_kind(db_factory, "train", world)
    assert waiting() == train_id
    assert _claim(db_factory, "w2", T0, lease_s=10) == (train_id, 1, "running", "w2")
    assert waiting() is None  # claimed by another worker
    assert waiting(T0 + timedelta(seconds=11)) == train_id  # its worker stopped heartbeating: claimable again


def test_yield_job_hands_the_job_back_without_using_an_attempt(db_factory, make_world):
    world = make_world()
    eval_id = _enqueue_kind(db_factory, "eval", world, payload={"round_index": 0})
    assert _claim(db_factory, "w1", T0, lease_s=10) == (eval_id, 1, "running", "w1")
    with pytest.raises(LeaseLost, match="worker 'w2' no longer holds"), write_session(db_factory) as s:
        job_queue.yield_job(session=s, job_id=eval_id, worker_id="w2")
    with write_session(db_factory) as s:
        job_queue.yield_job(session=s, job_id=eval_id, worker_id="w1", now=T0,
                            payload={"round_index": 0, "partial": {"yields": 1}})
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=eval_id)
        assert (job.status, job.attempts, job.lease_owner, job.lease_expires_at, job.error) == ("queued", 0, None, None, None)
        assert job.payload == {"round_index": 0, "partial": {"yields": 1}}
    with write_session(db_factory) as s:  # the worker that gave it back holds nothing any more
        assert not job_queue.heartbeat(session=s, job_id=eval_id, worker_id="w1", lease_s=10, now=T0)
    with pytest.raises(LeaseLost), write_session(db_factory) as s:
        job_queue.complete_job(session=s, job_id=eval_id, worker_id="w1")
    # many yields never use up the attempts; a real failure still does
    for i in range(5):
        assert _claim(db_factory, f"w{i}", T0) == (eval_id, 1, "running", f"w{i}")
        with write_session(db_factory) as s:
            job_queue.yield_job(session=s, job_id=eval_id, worker_id=f"w{i}")
    assert _claim(db_factory, "w9", T0, lease_s=10) == (eval_id, 1, "running", "w9")
    # a worker whose lease ran out and was taken over cannot hand the job back
    assert _claim(db_factory, "w10", T0 + timedelta(seconds=11)) == (eval_id, 2, "running", "w10")
    with pytest.raises(LeaseLost, match="held by 'w10'"), write_session(db_factory) as s:
        job_queue.yield_job(session=s, job_id=eval_id, worker_id="w9")
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=eval_id)
        assert (job.status, job.attempts, job.lease_owner) == ("running", 2, "w10")


def test_ensure_job_queues_a_rounds_job_once(db_factory, make_world):
    world = make_world()

    def ensure():
        with write_session(db_factory) as s:
            job, created = job_queue.ensure_job(session=s, kind="eval", experiment_id=world.experiment_id,
                                                round_id=world.round_id, payload={"round_index": 0})
            return job.id, created

    first, created = ensure()
    assert created and ensure() == (first, False)
    with write_session(db_factory) as s:
        job_queue.get_job(session=s, job_id=first).status = "done"
    assert ensure() == (first, False)
    with write_session(db_factory) as s:
        job_queue.get_job(session=s, job_id=first).status = "failed"
    second, created = ensure()  # a failed one is no obstacle
    assert created and second != first


@pytest.mark.parametrize("action", ["reopen", "finish"])
def test_reopen_and_finish_are_refused_while_a_worker_is_claiming_the_job(db_factory, db_url, make_world, action):
    """On PostgreSQL the liveness check was a plain read: it saw the job a worker was claiming (not yet committed)
    as queued, cancel_jobs then found it running and cancelled nothing, and the reopen (or finish) went through
    while the worker trained. Found by review."""
    from db.errors import Conflict

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world()
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=7)
        repo.close_round(session=s, experiment_id=world.experiment_id)  # round 0 training, its train job queued
    claim = db_factory()
    try:
        claimed = job_queue.claim_job(session=claim, worker_id="w1", lease_s=60)  # the UPDATE, not yet committed
        assert claimed is not None and claimed.kind == "train"
        out = {}

        def admin():
            try:
                with write_session(db_factory) as s:
                    if action == "reopen":
                        repo.reopen_round(session=s, round_id=world.round_id)
                    else:
                        repo.finish_experiment(session=s, experiment_id=world.experiment_id)
                out["result"] = "accepted"
            except Conflict as exc:
                out["result"] = str(exc)

        thread = threading.Thread(target=admin)
        thread.start()
        thread.join(5)
        claim.commit()
    finally:
        claim.close()
    thread.join(30)
    assert "a worker is taking or finishing one of these jobs" in out["result"], out
    with read_session(db_factory) as s:
        assert repo.get_round(session=s, round_id=world.round_id).status == "training"
        assert repo.get_experiment(session=s, experiment_id=world.experiment_id).status == "active"
    with write_session(db_factory) as s:  # once the claim is in, the refusal names the running job
        with pytest.raises(Conflict, match="the worker is"):
            if action == "reopen":
                repo.reopen_round(session=s, round_id=world.round_id)
            else:
                repo.finish_experiment(session=s, experiment_id=world.experiment_id)


def test_finishing_an_experiment_while_its_round_is_being_closed_cancels_the_new_train_job(db_factory, db_url, make_world):
    """On PostgreSQL finish_experiment read the rounds unlocked and cancelled only the jobs it could see: a close
    in flight (its round locked, its train job not yet committed) committed after it, and its train job stayed
    queued for a finished experiment. Found by review. Finishing now waits for the close and cancels its job."""
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    world = make_world()
    with write_session(db_factory) as s:
        repo.add_rating(session=s, image_id=world.image_ids[0], rater_id=world.rater_ids[0], score=7)
    def close(s):
        assert repo.close_round(session=s, experiment_id=world.experiment_id).kind == "train"

    result = race_with_open_transaction(
        db_factory, close, lambda s: repo.finish_experiment(session=s, experiment_id=world.experiment_id), wait_s=2)
    assert result == "done"
    with read_session(db_factory) as s:
        jobs = job_queue.list_jobs(session=s, experiment_id=world.experiment_id)
        assert [(j.kind, j.status) for j in jobs] == [("train", "failed")], [(j.kind, j.status) for j in jobs]
        assert repo.get_round(session=s, round_id=world.round_id).status == "done"


def _database_now(factory):
    """The PostgreSQL server's clock, read on its own (what the test compares the leases with)."""
    from sqlalchemy import text

    with read_session(factory) as s:
        return s.execute(text("SELECT clock_timestamp()")).scalar_one()


@pytest.mark.parametrize("skew_s", [-90, 90])
def test_a_worker_whose_clock_is_off_neither_loses_nor_takes_a_live_job_on_postgresql(db_factory, db_url, make_world,
                                                                                     monkeypatch, skew_s):
    """Several machines share a PostgreSQL database, and each judged a lease by its own clock: a worker whose clock ran
    90 s behind wrote a 60 s lease that every other worker saw as expired at once (its job was taken over, run twice,
    its attempts used up), and one whose clock ran 90 s ahead took over the others' live jobs. Found by the seventh
    review. Now every lease is written and judged by the database's clock."""
    import db.checks

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite is one file on one machine: every process that opens it shares its clock")
    world = make_world()
    with write_session(db_factory) as s:
        first = job_queue.enqueue_job(session=s, kind="train", experiment_id=world.experiment_id).id
        second = job_queue.enqueue_job(session=s, kind="train", experiment_id=world.experiment_id).id
    real = db.checks.utcnow
    skewed = {"worker": None}

    def clock():  # the machine of the worker named in skewed["worker"] is skew_s off; the others' are right
        return real() + timedelta(seconds=skew_s) if skewed["worker"] else real()

    monkeypatch.setattr(db.checks, "utcnow", clock)

    def claim(worker, skewed_machine):
        skewed["worker"] = skewed_machine
        with write_session(db_factory) as s:
            job = job_queue.claim_job(session=s, worker_id=worker, lease_s=60)
            return None if job is None else (job.id, job.lease_owner, job.lease_expires_at)

    before = _database_now(db_factory)
    if skew_s < 0:  # the worker behind claims first; the right one must not take its job over
        job_id, owner, expires = claim("behind", True)
        assert (job_id, owner) == (first, "behind")
        assert claim("right", False)[:2] == (second, "right")
        assert claim("right-2", False) is None, "a live job was taken over"
    else:  # the right worker claims first; the one ahead must not take its job over
        job_id, owner, expires = claim("right", False)
        assert (job_id, owner) == (first, "right")
        assert claim("ahead", True)[:2] == (second, "ahead")
        assert claim("ahead-2", True) is None, "a live job was taken over"
    after = _database_now(db_factory)
    # the lease runs 60 s from the claim by the database's clock, whoever's clock was off
    assert before + timedelta(seconds=60) <= expires <= after + timedelta(seconds=60)
    skewed["worker"] = skew_s < 0
    with write_session(db_factory) as s:  # and the worker that holds it still does
        assert job_queue.heartbeat(session=s, job_id=first, worker_id=owner, lease_s=60, claim=1)
    with read_session(db_factory) as s:
        job = job_queue.get_job(session=s, job_id=first)
        assert (job.status, job.lease_owner, job.attempts) == ("running", owner, 1)
