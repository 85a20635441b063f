"""A PostgreSQL connection whose client went away without a word kept its transaction's locks until the server noticed,
about 2 hours at the default TCP keepalives: every connection now has keepalives on both ends and an idle transaction
bound, the URL's own winning (fifteenth review)."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from db import engine as db_engine
from db.engine import bound_refusal, is_outage, make_engine, session_factory, write_session
from db.models import Rater

SERVER = ("idle_in_transaction_session_timeout", "tcp_keepalives_idle", "tcp_keepalives_interval",
          "tcp_keepalives_count", "tcp_user_timeout")
LIBPQ = ("keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout")


def _pg_only(url: str) -> None:
    if not url.startswith("postgresql"):
        pytest.skip("PostgreSQL's session settings and TCP keepalives")


def _shown(engine) -> tuple[dict[str, str], dict[str, str]]:
    """The server's settings as SHOWn on a connection of ``engine``, and libpq's keepalive and TCP user timeout
    parameters of it."""
    with engine.connect() as c:
        server = {name: c.execute(text(f"SHOW {name}")).scalar_one() for name in SERVER}
        libpq = {k: v for k, v in c.connection.dbapi_connection.info.get_parameters().items() if k in LIBPQ}
    return server, libpq


def _worker(url: str, tmp_path):
    from app.settings import Settings
    from app.worker import Worker

    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "db_url": url, "model": str(tmp_path / "model")},
                                 environ={})
    return Worker(settings, "worker-1", device="cpu")


def test_a_workers_connection_has_keepalives_and_an_idle_transaction_bound(db_url, tmp_path):
    """The worker's connection: the server ends a transaction idle for 5 minutes and probes a silent client after 30 s,
    every 10 s, 3 times; libpq does the same from the client's end. Before, all four were the server's defaults (0:
    none, and the system's 2 hours) and libpq set no keepalive parameter. Data sent and not acknowledged for a minute
    ends the connection on either end (tcp_user_timeout, 60000 ms): keepalives probe only a connection with nothing in
    flight, so a peer gone while data was in flight was noticed after the system's retransmissions, about 15 minutes
    (a read-only review of the fifteenth review's fixes)."""
    _pg_only(db_url)
    worker = _worker(db_url, tmp_path)
    try:
        server, libpq = _shown(worker.engine)
    finally:
        worker.engine.dispose()
    assert server == {"idle_in_transaction_session_timeout": "5min", "tcp_keepalives_idle": "30",
                      "tcp_keepalives_interval": "10", "tcp_keepalives_count": "3", "tcp_user_timeout": "60000"}
    assert libpq == {"keepalives": "1", "keepalives_idle": "30", "keepalives_interval": "10", "keepalives_count": "3",
                     "tcp_user_timeout": "60000"}


def test_the_urls_own_keepalives_and_idle_bound_win(db_url, tmp_path):
    """A keepalive parameter or a tcp_user_timeout in the worker's URL is libpq's as given, and the server's setting of
    the same name takes its value; an idle transaction bound in the URL's options is kept; the rest are ours."""
    _pg_only(db_url)
    url = (f"{db_url}?keepalives_idle=45&keepalives_count=5&tcp_user_timeout=20000"
           "&options=-c%20idle_in_transaction_session_timeout%3D7000")
    worker = _worker(url, tmp_path)
    try:
        server, libpq = _shown(worker.engine)
    finally:
        worker.engine.dispose()
    assert server == {"idle_in_transaction_session_timeout": "7s", "tcp_keepalives_idle": "45",
                      "tcp_keepalives_interval": "10", "tcp_keepalives_count": "5", "tcp_user_timeout": "20000"}
    assert libpq == {"keepalives": "1", "keepalives_idle": "45", "keepalives_interval": "10", "keepalives_count": "5",
                     "tcp_user_timeout": "20000"}


def test_a_transaction_left_idle_past_the_bound_is_ended_and_said_in_one_sentence(db_url, monkeypatch):
    """A transaction left idle past the bound (300 ms here) while it holds a row lock: the server ends its session, so
    another connection takes the lock (NOWAIT), and the idle one's next statement raises an OperationalError (the
    driver's class is an InternalError, which the worker, the page and the commands did not take as the database's
    state) that ``bound_refusal`` says in one sentence; nothing of it was saved."""
    _pg_only(db_url)
    monkeypatch.setattr(db_engine, "IDLE_IN_TRANSACTION_MS", 300)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    try:
        with write_session(factory) as s:
            s.add(Rater(name="held", role="rater", password_hash="x$hash"))
        idle = factory()
        idle.execute(select(Rater.id).where(Rater.name == "held").with_for_update()).all()
        idle.execute(text("UPDATE raters SET role = 'admin' WHERE name = 'held'"))  # left idle, uncommitted
        deadline, taken = time.monotonic() + 30, False
        while not taken and time.monotonic() < deadline:
            try:
                with write_session(factory) as s:
                    s.execute(select(Rater.id).where(Rater.name == "held").with_for_update(nowait=True)).all()
                taken = True
            except OperationalError:  # 55P03: the idle transaction still holds it
                time.sleep(0.1)
        assert taken, "the idle transaction still held its row lock 30 s after its 300 ms bound"
        with pytest.raises(OperationalError) as ended:
            idle.execute(text("SELECT 1"))
        idle.close()
        exc = ended.value
        assert exc.orig.sqlstate == "25P03" and exc.connection_invalidated and is_outage(exc)
        assert bound_refusal(exc) == ("the database ended this change's transaction because it sat idle longer than "
                                      "0.3 s (idle_in_transaction_session_timeout); nothing of the change was saved; "
                                      "no transaction of this program should sit idle that long, so this is a fault in "
                                      "it: please report it")
        with write_session(factory) as s:
            assert s.scalar(select(Rater.role).where(Rater.name == "held")) == "rater"
    finally:
        engine.dispose()
