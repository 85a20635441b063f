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
