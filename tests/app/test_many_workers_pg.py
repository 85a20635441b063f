"""Three live ``python -m app worker`` processes on one real PostgreSQL database and one shared data dir, two
experiments driven to round 2 while raters rate and close rounds; one worker is killed with SIGKILL in the middle
of a train job. Checked: every job is done and finished exactly once (one "done" line in all the workers' logs),
the killed job was taken over by another worker, every round is published once (one checkpoint, contiguous
indices), every adapter verifies, no rating is lost.

Needs SEIKO_TEST_PG_URL (scripts/test.sh starts a server); it runs in a database of its own, dropped afterwards.
"""

from __future__ import annotations

import collections
import os
import re
import time

import pytest

from app import storage
from app.settings import Settings
from app.tools import harness
from db import jobs as job_queue
from db import migrate, repo
from db import testing as dbt
from db.engine import make_engine, read_session, session_factory
from db.models import Rating
from seiko_core.checkpoint import verify

PG_URL = os.environ.get("SEIKO_TEST_PG_URL")
LAST_ROUND = 2

pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not PG_URL, reason="SEIKO_TEST_PG_URL is not set (scripts/postgres.sh start)")]


@pytest.fixture
def pg_lab(tmp_path, worker_model_dir):
    with dbt.temporary_postgres_database(PG_URL) as url:
        migrate.upgrade(url)
        settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": url, "model": str(worker_model_dir)},
                                     environ={})
        engine = make_engine(url)
        lab = harness.Lab(tmp_path, settings, session_factory(engine), engine, worker_model_dir)
        try:
            yield lab
        finally:
            lab.close()


def test_three_workers_on_postgresql_two_experiments_one_killed(pg_lab, tmp_path):
    lab = pg_lab
    experiments = [harness.create_experiment(lab, name) for name in ("exp-a", "exp-b")]
    raters = harness.make_raters(lab, 2, "r")
    rated: dict[tuple[int, int], int] = {}
    logs = tmp_path / "logs"
    logs.mkdir()
    workers = {f"w{i}": harness.WorkerProc(lab, f"w{i}", logs) for i in range(3)}
    killed: dict[str, int] = {}  # worker id -> the job it held
    try:
        deadline = time.monotonic() + 900
        while True:
            assert time.monotonic() < deadline, "timed out: " + str([harness.job_rows(lab, e) for e in experiments])
            for wid, proc in workers.items():
                assert proc.alive() or wid in killed, f"worker {wid} exited:\n{proc.tail()}"
            rows = [r for e in experiments for r in harness.job_rows(lab, e)]
            if not killed:  # kill -9 the owner of the first train job seen running
                running = [r for r in rows if r["kind"] == "train" and r["status"] == "running" and r["owner"] in workers]
                if running:
                    workers[running[0]["owner"]].kill()
                    killed[running[0]["owner"]] = running[0]["id"]
                    harness.log(f"killed {running[0]['owner']} holding job {running[0]['id']}")
            for e in experiments:
                with read_session(lab.factory) as s:
                    open_round = repo.get_open_round(session=s, experiment_id=e)
                    open_index = None if open_round is None else open_round.index
                if open_index is not None and open_index < LAST_ROUND:
                    harness.rate_and_close(lab, e, raters, rated)
            with read_session(lab.factory) as s:
                top = [max(r.index for r in repo.list_rounds(session=s, experiment_id=e)) for e in experiments]
            if top == [LAST_ROUND] * 2 and rows and all(r["status"] == "done" for r in rows) and killed:
                break
            time.sleep(0.1)
    finally:
        for proc in workers.values():
            if proc.alive():
                proc.stop()
    texts = {wid: proc.log.read_text(errors="replace") for wid, proc in workers.items()}

    # every job finished exactly once, by exactly one worker
    with read_session(lab.factory) as s:
        jobs = [collections.namedtuple("J", "id kind round_id status attempts lease_owner")(
            j.id, j.kind, j.round_id, j.status, j.attempts, j.lease_owner)
            for e in experiments for j in job_queue.list_jobs(session=s, experiment_id=e, limit=1000)]
    assert len(jobs) == 2 * (3 * LAST_ROUND + 2)  # per experiment: generate 0..2, eval 0..2, train 0..1
    done_lines = collections.Counter(int(m) for t in texts.values() for m in re.findall(r"job (\d+) \(\w+\) done in", t))
    assert {j.id: done_lines[j.id] for j in jobs} == {j.id: 1 for j in jobs}, done_lines
    per_round_kind = collections.Counter((j.round_id, j.kind) for j in jobs)
    assert set(per_round_kind.values()) == {1}

    # the killed worker's job was recovered by another one
    (dead, job_id), = killed.items()
    recovered = next(j for j in jobs if j.id == job_id)
    assert recovered.status == "done" and recovered.attempts == 2 and recovered.lease_owner != dead
    assert f"job {job_id} (train) done in" in texts[recovered.lease_owner]
    assert sum(1 for t in texts.values() if re.search(rf"job {job_id} \(train, attempt 1 of", t)) == 1

    # every round published once; adapters verify; no rating lost
    with read_session(lab.factory) as s:
        for e in experiments:
            rounds = repo.list_rounds(session=s, experiment_id=e)
            assert [r.index for r in rounds] == list(range(LAST_ROUND + 1))
            for r in rounds[1:]:
                checkpoints = repo.list_checkpoints(session=s, round_id=r.id)
                assert len(checkpoints) == 1, (e, r.index, len(checkpoints))
                assert verify(storage.resolve(lab.data_dir, r.adapter_path))
        stored = {(x.image_id, x.rater_id): x.score for x in s.query(Rating)}
    assert stored == rated
    assert len({wid for wid, t in texts.items() if " done in " in t}) >= 2  # the work was shared
