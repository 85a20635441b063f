"""Accounts: password hashes, sign-in, who is asking, local mode, and `python -m app users`."""

from __future__ import annotations

import io

import pytest

from app import auth
from app.__main__ import main as app_main
from db import repo
from db.engine import make_engine, read_session, session_factory

PASSWORD = "correct horse battery"


def test_hash_is_salted_and_verifies():
    a, b = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert a != b  # a fresh salt each time
    assert a.startswith("scrypt$") and PASSWORD not in a
    assert auth.verify_password(PASSWORD, a) and auth.verify_password(PASSWORD, b)
    assert not auth.verify_password(PASSWORD + "!", a)
    assert not auth.verify_password("", a)


@pytest.mark.parametrize("stored", ["", "x$hash", "plain-text-password", auth.LOCAL_ADMIN_HASH, "bcrypt$1$2$3$4$5"])
def test_foreign_or_marker_hashes_never_match(stored):
    assert not auth.verify_password(stored, stored)
    assert not auth.verify_password(PASSWORD, stored)


@pytest.mark.parametrize("bad", ["short", "", "  padded password  "])
def test_weak_passwords_are_refused(bad):
    with pytest.raises(ValueError, match="password"):
        auth.hash_password(bad)


def test_authenticator_checks_name_and_password(db_factory):
    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    check = auth.authenticator(db_factory)
    assert check("alice", PASSWORD)
    assert not check("alice", "wrong password")
    assert not check("mallory", PASSWORD)


def test_add_user_refuses_duplicates_roles_and_the_reserved_name(db_factory):
    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    with pytest.raises(ValueError, match="already exists"):
        auth.add_user(db_factory, name="alice", role="admin", password=PASSWORD)
    with pytest.raises(ValueError, match="unknown role"):
        auth.add_user(db_factory, name="carol", role="owner", password=PASSWORD)
    with pytest.raises(ValueError, match="reserved"):
        auth.add_user(db_factory, name=auth.LOCAL_ADMIN_NAME, role="admin", password=PASSWORD)


def test_identify_with_accounts(db_factory):
    alice = auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    who = auth.identify(db_factory, local_mode=False, username="alice", client_host="10.0.0.7")
    assert (who.rater_id, who.role, who.local, who.is_admin) == (alice, "rater", False, False)
    with pytest.raises(auth.AuthError, match="sign in"):
        auth.identify(db_factory, local_mode=False, username=None, client_host="127.0.0.1")
    with pytest.raises(auth.AuthError, match="no longer exists"):
        auth.identify(db_factory, local_mode=False, username="mallory", client_host="127.0.0.1")
    with pytest.raises(auth.AuthError, match="only an admin"):
        auth.require_admin(who)


def test_local_mode_is_one_admin_on_localhost_only(db_factory):
    first = auth.identify(db_factory, local_mode=True, username=None, client_host="127.0.0.1")
    again = auth.identify(db_factory, local_mode=True, username=None, client_host="::1")
    assert first == again and first.is_admin and first.local and first.name == auth.LOCAL_ADMIN_NAME
    assert not auth.users_exist(db_factory)  # the local admin is not an account
    with read_session(db_factory) as s:
        assert repo.count_raters(session=s) == 1
    with pytest.raises(auth.AuthError, match="only requests from this computer"):
        auth.identify(db_factory, local_mode=True, username=None, client_host="192.168.1.20")
    with pytest.raises(auth.AuthError, match="only requests from this computer"):
        auth.identify(db_factory, local_mode=True, username=None, client_host=None)
    # Nobody can sign in as the local admin once accounts exist.
    auth.add_user(db_factory, name="root", role="admin", password=PASSWORD)
    assert not auth.authenticator(db_factory)(auth.LOCAL_ADMIN_NAME, auth.LOCAL_ADMIN_HASH)
    with pytest.raises(auth.AuthError, match="local mode has ended"):
        auth.identify(db_factory, local_mode=True, username=None, client_host="127.0.0.1")
    with pytest.raises(auth.AuthError, match="only in local mode"):
        auth.identify(db_factory, local_mode=False, username=auth.LOCAL_ADMIN_NAME, client_host="127.0.0.1")


@pytest.mark.parametrize("host,expected", [("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
                                           ("0.0.0.0", False), ("10.0.0.1", False), ("example.org", False), ("", False)])
def test_is_loopback(host, expected):
    assert auth.is_loopback(host) is expected


def test_users_cli_add_list_passwd(db_url, monkeypatch, capsys):
    base = ["--db-url", db_url]
    assert app_main(["users", "add", "root", "--role", "admin", "--password", PASSWORD, *base]) == 0
    assert "first account" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("another good password\n"))
    assert app_main(["users", "add", "alice", "--role", "rater", *base]) == 0
    assert app_main(["users", "add", "alice", "--role", "rater", "--password", PASSWORD, *base]) == 1
    assert "already exists" in capsys.readouterr().err
    assert app_main(["users", "add", "bob", "--role", "rater", "--password", "short", *base]) == 1
    assert "at least 8 characters" in capsys.readouterr().err
    assert app_main(["users", "list", *base]) == 0
    out = capsys.readouterr().out
    assert "root" in out and "alice" in out and "admin" in out and PASSWORD not in out
    assert app_main(["users", "passwd", "alice", "--password", "a new password", *base]) == 0
    engine = make_engine(db_url)
    try:
        check = auth.authenticator(session_factory(engine))
        assert check("root", PASSWORD) and check("alice", "a new password") and not check("alice", "another good password")
    finally:
        engine.dispose()
