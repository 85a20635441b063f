"""The server and the worker keep a row in live_processes while they run (db.presence, migration 0016), so that `db
downgrade` refuses beside them: a server, or a worker between jobs, left no mark before (tenth review, 6 Dec 2026)."""

import argparse
import os

import pytest
from sqlalchemy import select

from db import migrate
from db.engine import read_session
from db.models import LiveProcess


def _rows(factory):
    with read_session(factory) as s:
        return s.execute(select(LiveProcess.kind, LiveProcess.pid)).all()


def test_serve_registers_the_server_while_it_runs_and_removes_it_at_exit(tmp_path, monkeypatch, capsys):
    """`serve` registers a 'server' row before it listens and removes it when it ends (here: a launch refused, the
    path that returns earliest once it is registered); a downgrade meanwhile is refused naming the server's pid."""
    from app import cli_serve
    from app.settings import Settings

    parser = argparse.ArgumentParser()
    cli_serve.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path / "d")])
    url = Settings.from_args(args).db_url
    migrate.upgrade(url)
    seen = {}

    def launch(services):
        seen["rows"] = _rows(services.factory)
        with pytest.raises(migrate.LiveProcesses, match=rf"a server on host '.+' with pid {os.getpid()}, last heard"):
            migrate.downgrade(url, "0015")
        seen["factory"] = services.factory
        raise cli_serve.ServeError("the port is taken")

    monkeypatch.setattr(cli_serve, "launch", launch)
    assert cli_serve.main(args) == 1
    assert "error: the port is taken" in capsys.readouterr().err
    assert seen["rows"] == [("server", os.getpid())]
    migrate.downgrade(url, "0015")  # the row is gone: nothing refuses
    assert migrate.current_revision(url) == "0015"


def test_serve_refuses_to_start_once_the_schema_moved_under_its_check(tmp_path, monkeypatch, capsys):
    """The server's row is registered in a transaction that reads the revision once more: a downgrade that ran after
    the start-up's check (the registration waited for its lock) refuses the start in one sentence."""
    from app import cli_serve
    from app.settings import Settings

    parser = argparse.ArgumentParser()
    cli_serve.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path / "d")])
    url = Settings.from_args(args).db_url
    migrate.upgrade(url)
    build = cli_serve.build_services

    def built_then_downgraded(*a, **kw):
        result = build(*a, **kw)
        migrate.downgrade(url, "0015")
        return result

    monkeypatch.setattr(cli_serve, "build_services", built_then_downgraded)
    monkeypatch.setattr(cli_serve, "launch", lambda services: pytest.fail("it listened on a downgraded schema"))
    assert cli_serve.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: the database schema changed from {migrate.head_revision()} to 0015 as the server "
                          "started") and err.count("\n") == 1, err


def test_a_worker_registers_at_its_start_and_removes_its_row_at_close(worker_world_any_db):
    """A worker between jobs keeps a 'worker' row from start() to close(), and a downgrade meanwhile is refused."""
    world = worker_world_any_db
    worker = world.worker()
    try:
        assert _rows(world.factory) == []
        worker.start()
        worker.start()  # again (run_once does): still one row
        assert _rows(world.factory) == [("worker", os.getpid())]
        with pytest.raises(migrate.LiveProcesses, match=rf"a worker on host '.+' with pid {os.getpid()}, last heard"):
            migrate.downgrade(world.settings.db_url, "0015")
    finally:
        worker.close()
    assert _rows(world.factory) == []


def test_a_worker_the_test_did_not_close_is_closed_when_its_world_ends(db_url, tmp_path):
    """A worker of worker_world or worker_world_any_db that its test did not close (a failed assertion before the
    close, or none written: the schema-change test of test_worker.py) kept its heartbeat thread for the rest of the run,
    writing its 'worker' row into whatever live_processes a later test had emptied. The world now closes every worker
    it made when the test ends, whether it passed or failed (pytest resumes the fixture either way)."""
    from tests.app.conftest import _world

    world_of = _world(db_url, tmp_path, tmp_path / "model")
    world = next(world_of)
    worker = world.worker()
    worker.start()
    heartbeat = worker._presence._thread
    assert heartbeat.is_alive() and _rows(world.factory) == [("worker", os.getpid())]
    with pytest.raises(StopIteration):
        next(world_of)  # the fixture's teardown
    assert not heartbeat.is_alive()
    assert _rows(world.factory) == []  # its row removed, as a worker's close() does


def _worker_group_args(tmp_path):
    from app import cli_worker
    from app.settings import Settings

    parser = argparse.ArgumentParser()
    cli_worker.add_arguments(parser)
    args = parser.parse_args(["--data-dir", str(tmp_path / "d"), "--processes", "2", "--worker-id", "dp"])
    url = Settings.from_args(args).db_url
    migrate.upgrade(url)
    return args, url


def test_the_supervisor_of_a_worker_group_keeps_its_own_row_while_it_runs_and_removes_it_at_exit(tmp_path, monkeypatch):
    """`worker --processes N`: each rank kept a row, the supervisor that starts and restarts them none, so between two
    groups `db downgrade` saw nothing live and ran while the supervisor was about to start ranks on the old schema
    (found by review, eleventh). The supervisor registers a 'supervisor' row before it starts a rank (here, while the
    loop that starts them runs) and removes it when it returns; a downgrade meanwhile is refused naming it."""
    from app import cli_worker, train_dist
    from db.engine import make_engine, session_factory

    args, url = _worker_group_args(tmp_path)
    engine = make_engine(url)
    factory = session_factory(engine)
    seen = {}

    def supervise(args_, settings, worker_id):  # where the ranks would start
        seen["rows"] = _rows(factory)
        with pytest.raises(migrate.LiveProcesses,
                           match=rf"a worker supervisor on host '.+' with pid {os.getpid()}, last heard"):
            migrate.downgrade(url, "0016")
        seen["worker_id"] = worker_id
        return 0

    monkeypatch.setattr(train_dist, "supervise", supervise)
    try:
        assert cli_worker.main(args) == 0
        assert seen == {"rows": [("supervisor", os.getpid())], "worker_id": "dp"}
        assert _rows(factory) == []
    finally:
        engine.dispose()
    migrate.downgrade(url, "0016")  # the row is gone: nothing refuses
    assert migrate.current_revision(url) == "0016"


def test_the_supervisor_starts_no_rank_once_the_schema_moved_under_its_check(tmp_path, monkeypatch, capsys):
    """The supervisor's row is registered in a transaction that reads the revision once more: a downgrade that ran
    after the command's check refuses the start in one sentence, status 1, and no rank is started."""
    from app import cli_worker, train_dist

    args, url = _worker_group_args(tmp_path)
    check = migrate.check_at_head

    def checked_then_downgraded(db_url):
        check(db_url)
        migrate.downgrade(url, "0016")

    monkeypatch.setattr(migrate, "check_at_head", checked_then_downgraded)
    monkeypatch.setattr(train_dist, "supervise", lambda *a: pytest.fail("it started ranks on a downgraded schema"))
    assert cli_worker.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"the database schema changed from {migrate.head_revision()} to 0016 as the worker "
                          "supervisor started") and err.count("\n") == 1, err
