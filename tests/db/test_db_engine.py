import sqlite3
import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import select, text

from db import jobs as job_queue
from db import repo
from db.engine import make_engine, read_session, session_factory, write_session
from db.models import Experiment


def test_sqlite_pragmas_are_wal_full_with_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    engine.dispose()


def test_in_memory_sqlite_is_refused():
    with pytest.raises(ValueError, match="names no file"):
        make_engine("sqlite://")


def test_write_session_holds_the_write_lock_from_its_start(tmp_path):
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    with write_session(session_factory(engine)) as session:
        session.execute(text("SELECT 1"))  # no write yet, but BEGIN IMMEDIATE already took the lock
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
    engine.dispose()


def test_read_session_takes_no_write_lock(tmp_path):
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}")
    with read_session(session_factory(engine)) as session:
        session.execute(text("SELECT 1"))
        other = sqlite3.connect(path, timeout=0, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        other.close()
    engine.dispose()


def test_foreign_keys_are_enforced(db_factory):
    from sqlalchemy.exc import IntegrityError

    from db.models import Round

    with pytest.raises(IntegrityError), write_session(db_factory) as s:
        s.add(Round(experiment_id=999, index=0, status="generating", metrics={}))
        s.flush()


def test_write_session_rolls_back_and_reraises(db_factory, make_world):
    with pytest.raises(RuntimeError, match="boom"), write_session(db_factory) as s:
        s.add(
            Experiment(
                name="doomed", model_spec="m", method="x", config={}, budgets=[1], prompts=["p"], overlap=1, status="active"
            )
        )
        s.flush()
        raise RuntimeError("boom")
    with read_session(db_factory) as s:
        assert s.scalar(select(Experiment).where(Experiment.name == "doomed")) is None


def test_datetimes_come_back_as_aware_utc(db_factory, make_world):
    world = make_world()
    later = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    with write_session(db_factory) as s:
        job = job_queue.enqueue_job(session=s, kind="generate", experiment_id=world.experiment_id)
        job_queue.claim_job(session=s, worker_id="w", lease_s=60, now=later)
    with read_session(db_factory) as s:
        exp = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        assert exp.created_at.tzinfo == UTC
        assert abs(datetime.now(UTC) - exp.created_at) < timedelta(minutes=5)
        stored = job_queue.get_job(session=s, job_id=job.id)
        assert stored.heartbeat_at == later and stored.heartbeat_at.tzinfo == UTC
        assert stored.lease_expires_at == later + timedelta(seconds=60)


def test_naive_datetimes_are_refused(db_factory, make_world):
    world = make_world()
    with pytest.raises(Exception, match="naive datetime"), write_session(db_factory) as s:
        exp = repo.get_experiment(session=s, experiment_id=world.experiment_id)
        exp.created_at = datetime(2030, 1, 1)
        s.flush()


def test_concurrent_claims_in_threads_never_share_a_job(db_factory, make_world):
    world = make_world()
    with write_session(db_factory) as s:
        for _ in range(12):
            job_queue.enqueue_job(session=s, kind="generate", experiment_id=world.experiment_id)
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name):
        while True:
            with write_session(db_factory) as s:
                job = job_queue.claim_job(session=s, worker_id=name, lease_s=60)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12
