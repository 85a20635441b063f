"""Accounts: password hashes, sign-in, who is asking, local mode, and `python -m app users`."""

from __future__ import annotations

import functools
import io
import itertools
import json
import random
import unicodedata
from pathlib import Path

import pytest

from app import auth
from app.__main__ import main as app_main
from db import comparisons, repo
from db import quality as db_quality
from db.engine import make_engine, read_session, session_factory, write_session

PASSWORD = "correct horse battery"
UI_PASSWORD = "correct horse battery"  # tests/app/conftest.py gives every ui_world account this password


def test_hash_is_salted_and_verifies():
    a, b = auth.hash_password(PASSWORD), auth.hash_password(PASSWORD)
    assert a != b  # a fresh salt each time
    assert a.startswith("scrypt$") and PASSWORD not in a
    assert auth.verify_password(PASSWORD, a) and auth.verify_password(PASSWORD, b)
    assert not auth.verify_password(PASSWORD + "!", a)
    assert not auth.verify_password("", a)


def test_new_hashes_cost_at_least_owasps_scrypt_minimum_and_older_ones_still_verify():
    """OWASP's Password Storage Cheat Sheet lists scrypt's minimum as N=2^17, r=8, p=1 or one of its equal-cost
    settings; a new hash records one of them (it was N=2^14, p=1: found by a security review). A hash stored with the
    older parameters verifies all the same (each hash carries its own), computed here with hashlib directly."""
    import base64
    import hashlib

    owasp = {(2**17, 8, 1), (2**16, 8, 2), (2**15, 8, 3), (2**14, 8, 5), (2**13, 8, 10)}
    _, n, r, p, salt, key = auth.hash_password(PASSWORD).split("$")
    assert (int(n), int(r), int(p)) in owasp
    assert hashlib.scrypt(PASSWORD.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p), dklen=32,
                          maxmem=64 * 1024 * 1024) == base64.b64decode(key)
    old_salt = b"s" * 16
    old = hashlib.scrypt(PASSWORD.encode(), salt=old_salt, n=2**14, r=8, p=1, dklen=32)
    stored = f"scrypt${2**14}$8$1${base64.b64encode(old_salt).decode()}${base64.b64encode(old).decode()}"
    assert auth.verify_password(PASSWORD, stored) and not auth.verify_password(PASSWORD + "!", stored)


@pytest.mark.parametrize("stored", ["", "x$hash", "plain-text-password", auth.LOCAL_ADMIN_HASH, "bcrypt$1$2$3$4$5"])
def test_foreign_or_marker_hashes_never_match(stored):
    assert not auth.verify_password(stored, stored)
    assert not auth.verify_password(PASSWORD, stored)


@pytest.mark.parametrize("bad", ["short", "", "  padded password  "])
def test_weak_passwords_are_refused(bad):
    with pytest.raises(ValueError, match="password"):
        auth.hash_password(bad)


@pytest.mark.parametrize("password", ["\ud800 my garden gate", "my garden gate \udfff", "my \udc00\ud800 garden"])
def test_a_password_with_half_a_character_pair_is_one_sentence_everywhere(db_factory, password):
    """A lone surrogate (a JSON escape such as \\ud800 carries one into a Gradio event) cannot be written as UTF-8,
    scrypt's input: it passed every rule, then hashing raised UnicodeEncodeError (found by the twelfth review). Setting
    it is refused in one sentence, nothing is stored, and signing in or confirming with it is a plain mismatch."""
    with pytest.raises(UnicodeEncodeError):
        password.encode("utf-8")  # the premise, from the codec itself
    with pytest.raises(ValueError, match="half of a character pair"):
        auth.hash_password(password)
    auth.add_user(db_factory, name="erin", role="rater", password=PASSWORD)
    with pytest.raises(ValueError, match="half of a character pair"):
        auth.check_new_password(db_factory, name="erin", password=password)
    assert auth.check_login(db_factory, "erin", PASSWORD).refusal is None  # still the old password
    assert auth.verify_password(password, auth.hash_password(PASSWORD)) is False
    assert auth.check_login(db_factory, "erin", password).refusal is not None


def test_a_password_sign_in_would_refuse_cannot_be_set(db_factory):
    """Sign-in refuses passwords over 1,024 characters before hashing; such a password could be set, and the account
    then never signed in (each try counting towards its lock-out)."""
    longest = ("pass phrase " * 100)[: auth.MAX_PASSWORD_LENGTH - 1] + "!"  # one character repeated is refused
    auth.hash_password(longest)  # the longest that can sign in can be set
    with pytest.raises(ValueError, match="a password may have at most 1024 characters"):
        auth.hash_password(longest + "!")
    auth.add_user(db_factory, name="erin", role="rater", password=longest)
    assert auth.check_login(db_factory, "erin", longest).refusal is None


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


def password_file(password: str) -> str:
    """A file holding ``password`` on its first line: the command line takes no password itself (ps shows it)."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="seiko-test-pw-")
    with open(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
    return path


def test_users_cli_add_list_passwd(db_url, monkeypatch, capsys):
    base = ["--db-url", db_url]
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", password_file(PASSWORD), *base]) == 0
    assert "first account" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("another good password\n"))
    assert app_main(["users", "add", "alice", "--role", "rater", *base]) == 0
    assert app_main(["users", "add", "alice", "--role", "rater", "--password-file", password_file(PASSWORD), *base]) == 1
    assert "already exists" in capsys.readouterr().err
    assert app_main(["users", "add", "bob", "--role", "rater", "--password-file", password_file("short"), *base]) == 1
    assert "at least 8 characters" in capsys.readouterr().err
    assert app_main(["users", "list", *base]) == 0
    out = capsys.readouterr().out
    assert "root" in out and "alice" in out and "admin" in out and PASSWORD not in out
    assert app_main(["users", "passwd", "alice", "--password-file", password_file("a new pass phrase"), *base]) == 0
    engine = make_engine(db_url)
    try:
        check = auth.authenticator(session_factory(engine))
        assert check("root", PASSWORD) and check("alice", "a new pass phrase") and not check("alice", "another good password")
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------
# account management, sessions ended by it, and the audit log (issue 13, item 3)
# ---------------------------------------------------------------------------------------------


def _session(factory, name: str) -> str:
    """Start a session for ``name`` the way the web app does; returns its token."""
    from app.sessions import SessionStore

    with read_session(factory) as s:
        rater_id = repo.get_rater_by_name(session=s, name=name).id
    return SessionStore(factory, idle_s=600, max_s=3600).start(rater_id, "127.0.0.1")


def _audit(factory) -> list[tuple[str, str, str]]:
    return [(e.actor, e.action, e.target) for e in reversed(auth.list_audit(factory))]


def test_disable_enable_role_and_delete_with_their_refusals(db_factory):
    from app.sessions import SessionStore

    root = auth.add_user(db_factory, name="root", role="admin", password=PASSWORD)
    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    admin = auth.Who(root, "root", "admin", local=False)
    store = SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=0)
    token = _session(db_factory, "alice")
    assert store.check(token) is not None

    auth.set_disabled(db_factory, name="alice", disabled=True, actor=admin)
    assert store.check(token) is None  # the session ended with the account
    assert not auth.authenticator(db_factory)("alice", PASSWORD)
    assert auth.check_login(db_factory, "alice", PASSWORD).refusal == "the account 'alice' is disabled; ask an admin"
    with pytest.raises(auth.AuthError, match="disabled"):
        auth.identify(db_factory, local_mode=False, username="alice", client_host="10.0.0.7")
    assert [u.disabled for u in auth.list_users(db_factory)] == [False, True]
    auth.set_disabled(db_factory, name="alice", disabled=False, actor=admin)
    assert auth.authenticator(db_factory)("alice", PASSWORD)
    assert store.check(token) is None  # enabling does not revive ended sessions

    auth.set_role(db_factory, name="alice", role="admin", actor=admin)
    assert auth.identify(db_factory, local_mode=False, username="alice", client_host="10.0.0.7").is_admin
    auth.set_role(db_factory, name="alice", role="rater", actor=admin)
    with pytest.raises(ValueError, match="unknown role"):
        auth.set_role(db_factory, name="alice", role="owner", actor=admin)

    # the last enabled admin can be neither disabled, nor made a rater, nor deleted
    for change in (lambda: auth.set_disabled(db_factory, name="root", disabled=True),
                   lambda: auth.set_role(db_factory, name="root", role="rater"),
                   lambda: auth.delete_user(db_factory, name="root")):
        with pytest.raises(ValueError, match="last enabled admin"):
            change()
    # an account with ratings cannot be deleted (its ratings would go with it); one without can
    with write_session(db_factory) as s:
        exp = repo.create_experiment(session=s, name="e", model_spec="m", method="greedy", config={}, budgets=[1],
                                     prompts=["p"])
        rnd = repo.create_round(session=s, experiment_id=exp.id)
        image = repo.add_image(session=s, round_id=rnd.id, prompt="p", seed=0, file_path="a.png", sha256="0" * 64,
                               embedding=bytes(4), embedding_dim=1)
        repo.open_round(session=s, round_id=rnd.id)
        alice_id = repo.get_rater_by_name(session=s, name="alice").id
        repo.add_rating(session=s, image_id=image.id, rater_id=alice_id, score=5)
    with pytest.raises(ValueError, match="has 1 rating.*disable the account instead"):
        auth.delete_user(db_factory, name="alice", actor=admin)
    with write_session(db_factory) as s:  # a second score of an image shown again is named too
        db_quality.add_repeat_offer(session=s, image_id=image.id, rater_id=alice_id)
        db_quality.set_repeat_score(session=s, image_id=image.id, rater_id=alice_id, score=6)
    with pytest.raises(ValueError, match="'alice' has 1 rating and 1 repeat rating, which deleting"):
        auth.delete_user(db_factory, name="alice", actor=admin)
    # nor one whose only feedback is a comparison vote (the database's cascade deleted the votes with the account)
    auth.add_user(db_factory, name="dave", role="rater", password=PASSWORD, actor=admin)
    with write_session(db_factory) as s:
        other = repo.add_image(session=s, round_id=rnd.id, prompt="p", seed=1, file_path="b.png", sha256="1" * 64,
                               embedding=bytes(4), embedding_dim=1)
        (pair,) = comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=rnd.id, kind="preference",
                                           pairs=[(image.id, other.id)])
        comparisons.record_vote(session=s, pair_id=pair.id, rater_id=repo.get_rater_by_name(session=s, name="dave").id,
                                choice="a")
    with pytest.raises(ValueError, match="'dave' has 1 comparison vote, which deleting.*disable the account instead"):
        auth.delete_user(db_factory, name="dave", actor=admin)
    with read_session(db_factory) as s:
        assert len(comparisons.votes(session=s, experiment_id=exp.id, kind="preference")) == 1
    auth.add_user(db_factory, name="carol", role="rater", password=PASSWORD, actor=admin)
    auth.delete_user(db_factory, name="carol", actor=admin)
    assert [u.name for u in auth.list_users(db_factory)] == ["root", "alice", "dave"]
    for change in (lambda: auth.set_disabled(db_factory, name="nobody", disabled=True),
                   lambda: auth.delete_user(db_factory, name="nobody")):
        with pytest.raises(ValueError, match="no rater named 'nobody'"):
            change()
    auth.local_admin(db_factory)
    with pytest.raises(ValueError, match="not an account"):
        auth.set_disabled(db_factory, name=auth.LOCAL_ADMIN_NAME, disabled=True)

    cli = auth._actor(None)[1]
    assert cli.startswith("command line (")
    assert _audit(db_factory) == [
        (cli, "user.add", "root"), (cli, "user.add", "alice"), ("root", "user.disable", "alice"), ("root", "user.enable", "alice"), ("root", "user.role", "alice"),
        ("root", "user.role", "alice"), ("root", "user.add", "dave"), ("root", "user.add", "carol"),
        ("root", "user.delete", "carol"),
    ]  # refused changes leave no entry


def test_password_change_ends_that_users_sessions_only(db_factory):
    from app.sessions import SessionStore

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    auth.add_user(db_factory, name="bob", role="rater", password=PASSWORD)
    store = SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=60)
    a1, a2, b = _session(db_factory, "alice"), _session(db_factory, "alice"), _session(db_factory, "bob")
    assert all(store.check(t) is not None for t in (a1, a2, b))  # now cached for a minute
    auth.set_password(db_factory, name="alice", password="a new pass phrase")
    assert store.check(a1) is None and store.check(a2) is None  # in this process: at once, cache or not
    assert store.check(b) is not None
    assert auth.list_audit(db_factory)[0].action == "user.password"
    assert auth.list_audit(db_factory)[0].actor.startswith("command line (")


def test_a_flood_of_random_cookies_leaves_the_real_sessions_cached(db_factory, monkeypatch):
    """Found by the thirteenth review (6 Dec 2026): the session cache emptied itself whenever it was full, so a flood
    of random cookies (each one a miss, each one cached as "not a session") pushed every real user's checks to the
    database. Now the tokens that are not sessions evict only each other, least recently used first: after ten times
    the cache's size in random cookies, the real sessions are still answered without a database lookup, and a
    repeated unknown cookie is still answered from memory. Database lookups are counted, not timed."""
    import secrets

    from app import sessions as sessions_mod

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    auth.add_user(db_factory, name="bob", role="rater", password=PASSWORD)
    real = [_session(db_factory, "alice"), _session(db_factory, "bob")]
    lookups: list[str] = []
    find_session = repo.find_session

    def counted(*, session, token_sha256):
        lookups.append(token_sha256)
        return find_session(session=session, token_sha256=token_sha256)

    monkeypatch.setattr(sessions_mod.repo, "find_session", counted)
    clock = [0.0]  # a still clock: every answer stays fresh, so a lookup means the answer was no longer cached
    store = sessions_mod.SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=60, monotonic=lambda: clock[0],
                                      max_cached=50, max_refused_cached=50)
    assert all(store.check(t) is not None for t in real) and len(lookups) == 2
    flood = [secrets.token_urlsafe(32) for _ in range(500)]
    assert all(store.check(t) is None for t in flood) and len(lookups) == 2 + 500  # each a miss, as it must be
    assert all(store.check(t) is not None for t in real) and len(lookups) == 502  # both from memory
    assert all(store.cached(t) == (True, store.check(t)) for t in real) and len(lookups) == 502
    assert store.check(flood[-1]) is None and store.cached(flood[-1]) == (True, None) and len(lookups) == 502
    assert store.check(flood[0]) is None and len(lookups) == 503  # the oldest unknown cookie was let go: bounded


def test_users_cli_disable_enable_role_delete_audit(db_url, capsys):
    base = ["--db-url", db_url]
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", password_file(PASSWORD), *base]) == 0
    assert app_main(["users", "add", "alice", "--role", "rater", "--password-file", password_file(PASSWORD), *base]) == 0
    capsys.readouterr()
    assert app_main(["users", "disable", "alice", *base]) == 0
    assert "disabled" in capsys.readouterr().out
    assert app_main(["users", "list", *base]) == 0
    listing = capsys.readouterr().out
    assert [line.endswith("DISABLED") for line in listing.strip().splitlines()] == [False, True], listing
    engine = make_engine(db_url)
    try:
        factory = session_factory(engine)
        assert not auth.authenticator(factory)("alice", PASSWORD)
        assert app_main(["users", "enable", "alice", *base]) == 0
        assert auth.authenticator(factory)("alice", PASSWORD)
        assert app_main(["users", "role", "alice", "admin", *base]) == 0
        assert auth.identify(factory, local_mode=False, username="alice", client_host=None).is_admin
        assert app_main(["users", "role", "alice", "rater", *base]) == 0
        assert app_main(["users", "role", "root", "rater", *base]) == 1
        assert "last enabled admin" in capsys.readouterr().err
        assert app_main(["users", "disable", "nobody", *base]) == 1
        assert "no rater named 'nobody'" in capsys.readouterr().err
        assert app_main(["users", "delete", "alice", *base]) == 0
        assert [u.name for u in auth.list_users(factory)] == ["root"]
    finally:
        engine.dispose()
    capsys.readouterr()
    assert app_main(["users", "audit", *base]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("  ")[2] for line in lines] == ["user.delete", "user.role", "user.role", "user.enable",
                                                        "user.disable", "user.add", "user.add"]
    assert all("command line (" in line for line in lines)
    assert app_main(["users", "audit", "--limit", "0", *base]) == 1


def test_admin_tab_account_functions_check_the_role_and_fill_the_audit_log(ui_world):
    from app import ui_admin

    root = auth.identify(ui_world.factory, local_mode=False, username="root", client_host="10.0.0.7")
    alice = auth.identify(ui_world.factory, local_mode=False, username="alice", client_host="10.0.0.7")
    for change in (lambda w: ui_admin.disable_user(ui_world.factory, w, "bob"),
                   lambda w: ui_admin.set_user_role(ui_world.factory, w, "alice", "admin"),
                   lambda w: ui_admin.set_user_password(ui_world.factory, w, "bob", "long enough password"),
                   lambda w: ui_admin.delete_user(ui_world.factory, w, "bob"),
                   lambda w: ui_admin.audit_table(ui_world.factory, w)):
        with pytest.raises(auth.AuthError, match="only an admin"):
            change(alice)
    assert "signed out everywhere" in ui_admin.disable_user(ui_world.factory, root, "bob")
    assert ui_admin.users_table(ui_world.factory, root)[1][1:] == ["bob", "rater", ui_admin.users_table(ui_world.factory, root)[1][3],
                                                                    "disabled"]
    assert "enabled" in ui_admin.enable_user(ui_world.factory, root, " bob ")
    assert "an admin" in ui_admin.set_user_role(ui_world.factory, root, "alice", "admin")
    assert "new password" in ui_admin.set_user_password(ui_world.factory, root, "bob", "long enough password", UI_PASSWORD)
    with pytest.raises(ValueError, match="at least 8 characters"):
        ui_admin.set_user_password(ui_world.factory, root, "bob", None)
    with pytest.raises(ValueError, match="choose an account first"):
        ui_admin.disable_user(ui_world.factory, root, None)
    assert "Deleted" in ui_admin.delete_user(ui_world.factory, root, "bob")
    rows = ui_admin.audit_table(ui_world.factory, root)
    assert [(r[1], r[2], r[3]) for r in rows[:5]] == [("root", "user.delete", "bob"), ("root", "user.password", "bob"),
                                                      ("root", "user.role", "alice"), ("root", "user.enable", "bob"),
                                                      ("root", "user.disable", "bob")]
    assert rows[2][4] == '{"after": "admin", "before": "rater"}' and len(rows[0][0]) == 19  # when: to the second, UTC


def test_a_password_change_disable_or_delete_forgets_the_accounts_sign_in_exemptions(db_factory):
    """Found in review: a browser or address that signed in with a password stayed exempt from the account's and the
    address's sign-in locks after the password changed, so whoever knew the old one kept guessing at the device's own
    limit. A change of password, a disable or a delete forgets them; other accounts keep theirs."""
    from app.sessions import LoginThrottle, ThrottleRule

    for name in ("alice", "bob", "carol", "admin2"):
        auth.add_user(db_factory, name=name, role="admin" if name == "admin2" else "rater", password=PASSWORD)
    rule = ThrottleRule(free=1, base_s=10, max_s=100)
    t = LoginThrottle(per_ip=rule, per_account=rule, per_device=rule, monotonic=lambda: 0.0)
    for name in ("alice", "bob", "carol"):
        t.succeeded("10.0.0.1", name, f"{name}s-browser")
    for _ in range(3):
        t.failed("10.0.0.9", None)  # another address locks itself, and the unknown account's lock is not alice's
        t.failed("10.0.0.1", "mallory")  # the shared address gets locked by someone without a device
    locked = t.wait_s("10.0.0.1", "dave")
    assert locked > 0
    for name in ("alice", "bob", "carol"):
        assert t.wait_s("10.0.0.1", name, f"{name}s-browser") == 0  # each browser gets past the address's lock
    auth.set_password(db_factory, name="alice", password="a new pass phrase")
    auth.set_disabled(db_factory, name="bob", disabled=True)
    assert t.wait_s("10.0.0.1", "alice", "alices-browser") == locked  # now under the address's lock again
    assert t.wait_s("10.0.0.1", "bob", "bobs-browser") == locked
    assert t.wait_s("10.0.0.1", "carol", "carols-browser") == 0  # untouched
    auth.set_disabled(db_factory, name="bob", disabled=False)  # enabling earns nothing back
    assert t.wait_s("10.0.0.1", "bob", "bobs-browser") == locked
    auth.delete_user(db_factory, name="carol")
    assert t.wait_s("10.0.0.1", "carol", "carols-browser") == locked


def test_an_exemption_holds_only_under_the_credentials_it_was_earned_with(db_factory):
    """The stamp is the throttle's link to the database: a password change or disable made by another process (which
    cannot call credentials_changed here) changes the stamp read at the next attempt, and the exemption ends."""
    from app.sessions import LoginThrottle, ThrottleRule

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    auth.add_user(db_factory, name="admin2", role="admin", password=PASSWORD)
    rule = ThrottleRule(free=1, base_s=10, max_s=100)
    t = LoginThrottle(per_ip=rule, per_account=rule, per_device=rule, monotonic=lambda: 0.0)
    earned = auth.current_credentials_stamp(db_factory, "alice")
    assert earned and auth.current_credentials_stamp(db_factory, "nobody") == ""
    assert not t.remembers("10.0.0.1", "alice", "alices-browser")
    t.succeeded("10.0.0.1", "alice", "alices-browser", credentials=earned)
    assert t.remembers("10.0.0.1", "alice", "alices-browser") and not t.remembers("10.0.0.1", "alice")  # no address
    for _ in range(3):
        t.failed("10.0.0.1", "mallory")  # the shared address is locked
    locked = t.wait_s("10.0.0.1", "dave")
    assert locked > 0 and t.wait_s("10.0.0.1", "alice", "alices-browser", credentials=earned) == 0
    assert t.wait_s("10.0.0.1", "alice", "alices-browser", credentials="") == locked  # no stamp, no exemption
    with write_session(db_factory) as s:  # another process changes the password
        rater = repo.get_rater_by_name(session=s, name="alice")
        repo.set_rater_password_hash(session=s, rater_id=rater.id, password_hash=auth.hash_password("a new pass phrase"))
    now = auth.current_credentials_stamp(db_factory, "alice")
    assert now != earned and t.wait_s("10.0.0.1", "alice", "alices-browser", credentials=now) == locked
    t.succeeded("10.0.0.1", "alice", "alices-browser", credentials=now)  # the owner signs in with the new one
    assert t.wait_s("10.0.0.1", "alice", "alices-browser", credentials=now) == 0
    with write_session(db_factory) as s:  # and another process disables the account
        repo.set_rater_disabled(session=s, rater_id=rater.id, disabled=True)
    assert auth.current_credentials_stamp(db_factory, "alice") == ""
    with write_session(db_factory) as s:  # then enables it again, the password unchanged
        repo.set_rater_disabled(session=s, rater_id=rater.id, disabled=False)
    again = auth.current_credentials_stamp(db_factory, "alice")
    assert again not in ("", now)  # the exemption earned before the disable does not come back
    assert t.wait_s("10.0.0.1", "alice", "alices-browser", credentials=again) == locked
    with write_session(db_factory) as s:  # enabling an enabled account changes nothing
        repo.set_rater_disabled(session=s, rater_id=rater.id, disabled=False)
    assert auth.current_credentials_stamp(db_factory, "alice") == again
    checked = auth.check_login(db_factory, "alice", "a new pass phrase")
    assert checked.rater_id == rater.id and checked.credentials == again  # what a sign-in remembers


def test_forgetting_an_account_leaves_an_account_whose_name_ends_with_it():
    from app.sessions import LoginThrottle, ThrottleRule

    rule = ThrottleRule(free=0, base_s=10, max_s=100)
    t = LoginThrottle(per_device=rule, monotonic=lambda: 0.0)
    for name in ("bob", "x\0bob"):
        t.succeeded("10.0.0.1", name, "browser")
        t.failed("10.0.0.1", name, "browser")  # the device's own count for that account
    t.forget_account("bob")
    assert t.wait_s("10.0.0.1", "x\0bob", "browser") == 10  # its device count kept, and the device still known


def test_a_password_change_during_the_sign_in_check_starts_no_session(db_factory):
    """Found in review: the scrypt check reads the stored hash and then takes a while; a password changed (or the
    account disabled) in that window still got a session from the old password. The session now starts only if the
    hash the password matched is still the stored one, in the transaction that writes it."""
    from app.sessions import SessionStore, StaleSignIn
    from db.models import UserSession

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    auth.add_user(db_factory, name="admin2", role="admin", password=PASSWORD)
    store = SessionStore(db_factory, idle_s=600, max_s=3600)
    checked = auth.check_login(db_factory, "alice", PASSWORD)
    assert checked.refusal is None and checked.password_hash
    auth.set_password(db_factory, name="alice", password="a new pass phrase")  # lands during the check
    with pytest.raises(StaleSignIn) as stale:
        store.start(checked.rater_id, "10.0.0.1", password_hash=checked.password_hash)
    assert stale.value.password_changed  # the web answers it with its own sentence (sixteenth review)
    checked = auth.check_login(db_factory, "alice", "a new pass phrase")
    auth.set_disabled(db_factory, name="alice", disabled=True)
    with pytest.raises(StaleSignIn) as stale:
        store.start(checked.rater_id, "10.0.0.1", password_hash=checked.password_hash)
    assert not stale.value.password_changed  # disabled: answered as a disabled account's right password is
    with read_session(db_factory) as s:
        assert s.query(UserSession).count() == 0
    fresh = auth.check_login(db_factory, "admin2", PASSWORD)
    assert store.check(store.start(fresh.rater_id, "10.0.0.1", password_hash=fresh.password_hash)) is not None


def test_the_local_admin_name_takes_a_whole_hash_to_refuse(db_factory, monkeypatch):
    """Found in review: the local admin's row has no password hash, so a sign-in as 'local admin' was refused without
    hashing, in 2 ms against 57 ms for any other name: its time told that the app once ran without accounts."""
    auth.local_admin(db_factory)
    calls = []
    real = auth._scrypt
    monkeypatch.setattr(auth, "_scrypt", lambda *a: calls.append(1) or real(*a))
    for name in (auth.LOCAL_ADMIN_NAME, "nobody at all"):
        calls.clear()
        result = auth.check_login(db_factory, name, "some password")
        assert result.wrong_credentials and result.rater_id is None and len(calls) == 1, name


def test_two_admins_disabled_at_once_leave_one_enabled(db_factory, db_url, monkeypatch):
    """The last-admin rule read the enabled admins without a lock: on PostgreSQL, disabling the last two admins at
    once let each transaction see the other and both commit, leaving nobody to run the app. Found by review."""
    import threading
    import time

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite serialises write transactions (BEGIN IMMEDIATE); the race needs PostgreSQL")
    auth.add_user(db_factory, name="admin1", role="admin", password=PASSWORD)
    auth.add_user(db_factory, name="admin2", role="admin", password=PASSWORD)
    checked, may_commit = threading.Event(), threading.Event()
    real = repo.set_rater_disabled

    def slow_first(*, session, rater_id, disabled, now=None):
        out = real(session=session, rater_id=rater_id, disabled=disabled, now=now)
        if threading.current_thread().name == "first":
            checked.set()
            may_commit.wait(30)
        return out

    monkeypatch.setattr(repo, "set_rater_disabled", slow_first)
    got: dict = {}

    def disable(name: str) -> None:
        try:
            auth.set_disabled(db_factory, name=name, disabled=True)
            got[name] = "disabled"
        except Exception as exc:  # the refusal is the outcome under test
            got[name] = str(exc)

    first = threading.Thread(target=disable, args=("admin1",), name="first")
    first.start()
    assert checked.wait(30)
    second = threading.Thread(target=disable, args=("admin2",), name="second")
    second.start()
    time.sleep(0.5)
    may_commit.set()
    first.join(30)
    second.join(30)
    assert got["admin1"] == "disabled" and "is the last enabled admin" in got["admin2"], got
    with read_session(db_factory) as s:
        assert [r.name for r in repo.list_raters(session=s) if r.role == "admin" and r.disabled_at is None] == ["admin2"]


def test_a_sign_in_name_with_a_nul_character_is_wrong_credentials_on_every_database(db_factory):
    """On PostgreSQL the look-up of a name holding NUL was a DataError: the sign-in form answered 500 to anyone.
    Found by review."""
    checked = auth.check_login(db_factory, "alice\x00", "whatever it is")
    assert checked.rater_id is None and checked.wrong_credentials and checked.refusal == auth.WRONG_CREDENTIALS


def test_a_password_change_during_a_sign_in_ends_the_session_it_made(db_factory):
    """On PostgreSQL a sign-in read the account, then inserted its session: a password change committed in between
    could not see the session to end it, so a session made with the old password outlived the change. Found by
    review. The account is read locked now; the change waits, then ends the session."""
    import threading

    from app import sessions as sessions_mod

    auth.add_user(db_factory, name="bob", role="rater", password="old pass phrase 1")
    checked = auth.check_login(db_factory, "bob", "old pass phrase 1")
    store = sessions_mod.SessionStore(db_factory, idle_s=3600, max_s=86400)
    real, changes = sessions_mod.repo.create_session, []

    def create_while_the_password_changes(**kwargs):
        change = threading.Thread(target=auth.set_password, args=(db_factory,),
                                  kwargs={"name": "bob", "password": "new pass phrase 2"})
        change.start()
        change.join(1.5)  # with the lock it waits for this sign-in to commit
        changes.append(change)
        return real(**kwargs)

    sessions_mod.repo.create_session = create_while_the_password_changes
    try:
        token = store.start(checked.rater_id, "192.0.2.1", password_hash=checked.password_hash)
    finally:
        sessions_mod.repo.create_session = real
    changes[0].join(30)
    store.forget_all()
    assert auth.check_login(db_factory, "bob", "new pass phrase 2").refusal is None
    assert store.check(token) is None


def test_account_names_are_latin_letters_digits_and_a_few_marks(db_factory):
    """Look-alikes from other scripts kept turning up (reviews found Armenian, Cyrillic, Greek and small-capital
    letters that read as Latin ones): an account's name, which people read in lists and the audit log, takes Latin
    letters (accented ones too), digits, spaces and . _ - ' @ only."""
    for name in ("alice", "José Núñez", "o'brien", "a.b-c_d@lab", "Zoë 2", "O\u2019Neill", "Nguyễn Văn", "Ștefan",
                 "Lǚ Xiǎo", "Əli"):  # found by review: a typed apostrophe, Vietnamese, Romanian, pinyin were refused
        auth.add_user(db_factory, name=name, role="admin", password=PASSWORD)
    # a name typed decomposed (an e and a combining accent, as some keyboards send it) is stored composed and signs in
    # either way
    auth.add_user(db_factory, name="Rene\u0301 B", role="rater", password=PASSWORD)
    assert any(u.name == "Ren\u00e9 B" for u in auth.list_users(db_factory))
    for typed in ("Rene\u0301 B", "Ren\u00e9 B"):
        assert auth.check_login(db_factory, typed, PASSWORD).rater_id is not None, typed
    for name in ("\u0570ello", "p\u0430ul", "\u03b1dmin", "w\u1d0f\u1d0fd", "\u0251bc", "tab\tname", "a\u00a0b", "名前",
                 "semi;colon", "\u01c0ee", "\u0196an"):  # a click letter and a Latin iota that read as l
        with pytest.raises(ValueError, match="Latin letters") as refused:
            auth.add_user(db_factory, name=name, role="rater", password=PASSWORD)
        assert "\n" not in str(refused.value)


def test_a_name_that_reads_as_the_local_admin_is_reserved(db_factory):
    """'Local Admin' was accepted as an account, and then local mode found 'local admin' taken (found by review)."""
    for name in ("Local Admin", "LOCAL ADMIN", "local  admin", "IocaI admin"):
        with pytest.raises(ValueError, match="reserved"):
            auth.add_user(db_factory, name=name, role="admin", password=PASSWORD)


def test_the_command_lines_first_account_must_be_an_admin(db_url, capsys):
    """The web page refused a rater as the first account (nobody could run the app after local mode ends); the command
    line did not (found by review)."""
    base = ["--db-url", db_url]
    assert app_main(["users", "add", "alice", "--role", "rater", "--password-file", password_file(PASSWORD), *base]) == 1
    assert "must be an admin" in capsys.readouterr().err
    assert app_main(["users", "add", "alice", "--role", "rater", *base]) == 1  # refused before a password is asked
    assert "must be an admin" in capsys.readouterr().err
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", password_file(PASSWORD), *base]) == 0
    assert app_main(["users", "add", "alice", "--role", "rater", "--password-file", password_file(PASSWORD), *base]) == 0


def test_the_command_line_takes_no_password_and_a_closed_prompt_is_one_sentence(db_url, monkeypatch, capsys, tmp_path):
    """`users add --password P` put the password where every local user sees it (ps, /proc/PID/cmdline) and in the
    shell's history; Ctrl-D at the prompt was an EOFError traceback (found by review)."""
    base = ["--db-url", db_url]
    with pytest.raises(SystemExit):  # argparse: no such option
        app_main(["users", "add", "root", "--role", "admin", "--password", PASSWORD, *base])
    (tmp_path / "empty").write_text("")
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", str(tmp_path / "empty"), *base]) == 1
    assert "is empty" in capsys.readouterr().err
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", str(tmp_path / "nope"), *base]) == 1
    assert "could not read a password from" in capsys.readouterr().err

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def closed(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr("sys.stdin", Terminal(""))
    monkeypatch.setattr("getpass.getpass", closed)
    assert app_main(["users", "add", "root", "--role", "admin", *base]) == 1
    assert capsys.readouterr().err.strip() == "error: no password given (the prompt was closed); nothing was changed"


def test_an_admin_deleting_their_own_account_is_refused_in_one_sentence(db_factory):
    """Its audit line named the actor just deleted, and the database refused it with a raw IntegrityError, shown as a
    bare 'Error' (found by review). Refused with a sentence; another admin can delete the account."""
    ann = auth.add_user(db_factory, name="ann", role="admin", password=PASSWORD)
    bob = auth.add_user(db_factory, name="bob", role="admin", password=PASSWORD)
    with pytest.raises(ValueError, match="you cannot delete your own account 'ann'; another admin can"):
        auth.delete_user(db_factory, name="ann", actor=auth.Who(ann, "ann", "admin", local=False))
    assert [u.name for u in auth.list_users(db_factory)] == ["ann", "bob"]
    auth.delete_user(db_factory, name="ann", actor=auth.Who(bob, "bob", "admin", local=False))
    assert [u.name for u in auth.list_users(db_factory)] == ["bob"]


# ---------------------------------------------------------------------------------------------
# older hashes made again at sign-in (5 Dec 2026, second review)
# ---------------------------------------------------------------------------------------------

TODAY = (2**14, 8, 5)  # the parameters a new hash gets (auth.SCRYPT_N, _R, _P), written out


def _old_hash(password: str, n: int = 2**14, r: int = 8, p: int = 1) -> str:
    """A hash as the app stored it before its cost was raised (p=1), made with hashlib directly."""
    import base64
    import hashlib
    import os

    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 * 1024 * 1024)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def _matches(password: str, stored: str) -> tuple[int, int, int] | None:
    """The (N, r, p) of ``stored`` when ``password`` matches it, computed with hashlib directly; None otherwise."""
    import base64
    import hashlib

    _, n, r, p, salt, key = stored.split("$")
    n, r, p = int(n), int(r), int(p)
    made = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=n, r=r, p=p, dklen=32,
                          maxmem=64 * 1024 * 1024)
    return (n, r, p) if made == base64.b64decode(key) else None


def _stored_as(factory, name: str, stored: str) -> int:
    """Put ``stored`` in place of ``name``'s hash (as an older version of the app left it); the rater id."""
    from db.models import Rater

    with write_session(factory) as s:
        rater = repo.get_rater_by_name(session=s, name=name)
        s.query(Rater).filter(Rater.id == rater.id).update({"password_hash": stored})
        return rater.id


def _row(factory, name: str) -> tuple:
    with read_session(factory) as s:
        rater = repo.get_rater_by_name(session=s, name=name)
        return rater.password_hash, rater.credentials_changed_at, rater.disabled_at


def test_a_sign_in_makes_an_older_hash_again_with_todays_parameters_and_keeps_the_sessions(db_factory):
    """Found in the second review of 5 Dec 2026: hashes made before the cost was raised (p=1) verified but were never
    made again, so an account that signs in kept the weak hash for ever. A sign-in that matches one now stores the
    password hashed with today's parameters. That is not a password change: the session the sign-in starts (bound to
    the hash it matched) starts, the account's other sessions stay, and so do its browsers' sign-in exemptions. A
    refused sign-in (a wrong password; the right one of a disabled account) changes nothing."""
    from app.sessions import LoginThrottle, SessionStore, ThrottleRule
    from db.models import UserSession

    assert (auth.SCRYPT_N, auth.SCRYPT_R, auth.SCRYPT_P) == TODAY
    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    auth.add_user(db_factory, name="bob", role="rater", password=PASSWORD)
    auth.add_user(db_factory, name="admin2", role="admin", password=PASSWORD)
    old = _old_hash(PASSWORD)
    alice_id = _stored_as(db_factory, "alice", old)
    _stored_as(db_factory, "bob", _old_hash(PASSWORD))
    assert _matches(PASSWORD, old) == (2**14, 8, 1)
    other = _session(db_factory, "alice")  # a session of alice's in another browser
    before = _row(db_factory, "alice")
    old_stamp = auth.current_credentials_stamp(db_factory, "alice")
    rule = ThrottleRule(free=1, base_s=10, max_s=100)
    t = LoginThrottle(per_ip=rule, per_account=rule, per_device=rule, monotonic=lambda: 0.0)
    t.succeeded("10.0.0.1", "alice", "alices-other-browser", credentials=old_stamp)
    for _ in range(3):
        t.failed("10.0.0.1", "mallory")  # the shared address is locked
    locked = t.wait_s("10.0.0.1", "dave")
    assert locked > 0

    for wrong in ("", PASSWORD + "!", "correct horse batter"):
        assert auth.check_login(db_factory, "alice", wrong).wrong_credentials
    assert _row(db_factory, "alice") == before  # a wrong password: nothing changed
    auth.set_disabled(db_factory, name="bob", disabled=True)
    bob_before = _row(db_factory, "bob")
    assert auth.check_login(db_factory, "bob", PASSWORD).disabled
    assert _row(db_factory, "bob") == bob_before and _matches(PASSWORD, bob_before[0]) == (2**14, 8, 1)

    checked = auth.check_login(db_factory, "alice", PASSWORD)
    stored, changed_at, _ = _row(db_factory, "alice")
    assert checked.refusal is None and checked.rater_id == alice_id
    assert _matches(PASSWORD, stored) == TODAY and stored != old  # made again, the same password
    assert changed_at == before[1]  # not a password change
    assert checked.password_hash == stored  # the hash this sign-in's session is bound to
    assert checked.credentials == auth.current_credentials_stamp(db_factory, "alice") != old_stamp
    store = SessionStore(db_factory, idle_s=600, max_s=3600)
    new = store.start(checked.rater_id, "10.0.0.1", password_hash=checked.password_hash)  # no StaleSignIn
    assert store.check(new) is not None and store.check(other) is not None
    with read_session(db_factory) as s:
        assert s.query(UserSession).filter(UserSession.ended_at.isnot(None)).count() == 0
    # the other browser's exemption was earned with this password, which still holds: it stays
    assert t.wait_s("10.0.0.1", "alice", "alices-other-browser", credentials=checked.credentials) == 0
    assert t.wait_s("10.0.0.1", "alice", "alices-other-browser", credentials="") == locked  # (the lock is real)
    again = auth.check_login(db_factory, "alice", PASSWORD)  # today's hash is kept as it is
    assert again.refusal is None and _row(db_factory, "alice")[0] == stored
    assert not auth.check_login(db_factory, "alice", PASSWORD + "!").rater_id


def test_an_older_password_that_todays_rules_refuse_is_made_again_all_the_same(db_factory):
    """A password set under older rules (here 5 characters, and one ending in a space) may be shorter than a new one
    may be: its owner knows no other, so the sign-in still succeeds and the hash is made again as it is."""
    auth.add_user(db_factory, name="carol", role="rater", password=PASSWORD)
    for legacy in ("short", "ends in a space ", "abcdefgh1"):  # "abcdefgh1": refused since the twelfth review
        with pytest.raises(ValueError):
            auth.check_password_strength(legacy)
        _stored_as(db_factory, "carol", _old_hash(legacy, p=2))
        checked = auth.check_login(db_factory, "carol", legacy)
        assert checked.refusal is None, checked
        assert _matches(legacy, _row(db_factory, "carol")[0]) == TODAY


def test_two_sign_ins_at_once_make_an_older_hash_again_once_and_both_start(db_factory, monkeypatch):
    """Two sign-ins of one account that both read the older hash: the first to write stores its new hash; the other
    finds the stored hash changed, writes nothing and decides on what is stored now (the same password), so both
    succeed and both sessions start. Run deterministically: the second sign-in runs whole inside the first, after the
    first matched the old hash and before it writes."""
    from app.sessions import SessionStore

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    _stored_as(db_factory, "alice", _old_hash(PASSWORD))
    real, started, inner = auth._new_hash, [], []

    def another_sign_in_meanwhile(password):
        if not started:  # the first sign-in's hash: the second runs now (its own hash is made as usual)
            started.append(1)
            inner.append(auth.check_login(db_factory, "alice", PASSWORD))
        return real(password)

    monkeypatch.setattr(auth, "_new_hash", another_sign_in_meanwhile)
    outer = auth.check_login(db_factory, "alice", PASSWORD)
    stored = _row(db_factory, "alice")[0]
    assert inner[0].refusal is None and outer.refusal is None
    assert inner[0].password_hash == outer.password_hash == stored and _matches(PASSWORD, stored) == TODAY
    assert inner[0].credentials == outer.credentials == auth.current_credentials_stamp(db_factory, "alice")
    store = SessionStore(db_factory, idle_s=600, max_s=3600)
    tokens = [store.start(c.rater_id, "10.0.0.1", password_hash=c.password_hash) for c in (inner[0], outer)]
    assert all(store.check(tok) is not None for tok in tokens)


def test_two_sign_ins_at_once_in_threads_all_succeed(db_factory):
    """The same with real threads: whichever writes first, every sign-in succeeds, starts its session, and the stored
    hash is today's and matches the password."""
    import threading

    from app.sessions import SessionStore

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    _stored_as(db_factory, "alice", _old_hash(PASSWORD))
    store = SessionStore(db_factory, idle_s=600, max_s=3600)
    barrier, got = threading.Barrier(3), []

    def sign_in():
        barrier.wait(30)
        checked = auth.check_login(db_factory, "alice", PASSWORD)
        got.append((checked, store.start(checked.rater_id, "10.0.0.1", password_hash=checked.password_hash)))

    threads = [threading.Thread(target=sign_in) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert len(got) == 3 and all(c.refusal is None for c, _ in got), got
    assert all(store.check(tok) is not None for _, tok in got)
    assert _matches(PASSWORD, _row(db_factory, "alice")[0]) == TODAY


def test_a_password_changed_while_a_sign_in_makes_the_old_hash_again_is_kept(db_factory, monkeypatch):
    """A password change that lands after a sign-in matched the older hash and before it writes the new one: the
    sign-in writes nothing (the stored hash is no longer the one it checked), so the new password stays, and the
    sign-in with the old password is refused, as it would be a moment later."""
    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    _stored_as(db_factory, "alice", _old_hash(PASSWORD))
    real, changed = auth._new_hash, []

    def a_password_change_meanwhile(password):
        if not changed:  # the sign-in's hash: the change lands now (its own hash is made as usual)
            changed.append(1)
            auth.set_password(db_factory, name="alice", password="a new pass phrase")
        return real(password)

    monkeypatch.setattr(auth, "_new_hash", a_password_change_meanwhile)
    checked = auth.check_login(db_factory, "alice", PASSWORD)
    assert changed and checked.refusal == auth.WRONG_CREDENTIALS and checked.rater_id is None
    stored = _row(db_factory, "alice")[0]
    assert _matches("a new pass phrase", stored) == TODAY and _matches(PASSWORD, stored) is None
    assert auth.check_login(db_factory, "alice", "a new pass phrase").refusal is None


def _scrypt_work(monkeypatch) -> list[int]:
    """Every ``hashlib.scrypt`` call from now on, as its work N * r * p (scrypt's cost: p mixes of 128 * r * N bytes,
    one after the other), recorded while the stock function runs."""
    import hashlib

    work: list[int] = []
    real = hashlib.scrypt

    def counted(password, *, salt, n, r, p, **kwargs):
        work.append(n * r * p)
        return real(password, salt=salt, n=n, r=r, p=p, **kwargs)

    monkeypatch.setattr(hashlib, "scrypt", counted)
    return work


def test_every_refused_sign_in_costs_what_an_unknown_names_does(db_factory, monkeypatch):
    """A refusal's time must not tell whether the name is an account's. The second attack of 5 Dec 2026 found an
    account still holding a p=1 hash refused a wrong password about 5x faster than an unknown name; its fix ran
    today's whole hash on top of the p=1 check, so such a refusal then cost 6/5 of an unknown name's (the tenth review,
    6 Dec 2026, measured p=1 then p=5 at 507 ms against 430 ms for p=5 alone on this machine: an account that had not
    signed in since the cost was raised was told apart from no account in a few guesses). And the right password of a
    disabled account holding a p=1 hash, answered as a wrong one on purpose, cost a fifth of a wrong guess, so the
    clock said the password was right. Each refusal is counted here in scrypt's work, N * r * p, by the calls the stock
    hashlib makes, against the unknown name's."""
    auth.add_user(db_factory, name="carol", role="rater", password=PASSWORD)  # today's hash
    for name, stored in (("dave", _old_hash(PASSWORD)), ("erin", _old_hash(PASSWORD, p=2)),
                         ("fay", _old_hash(PASSWORD, n=2**13)), ("gus", _old_hash(PASSWORD)), ("hal", None)):
        auth.add_user(db_factory, name=name, role="rater", password=PASSWORD)
        if stored is not None:
            _stored_as(db_factory, name, stored)
    for name in ("gus", "hal"):
        auth.set_disabled(db_factory, name=name, disabled=True)
    work = _scrypt_work(monkeypatch)

    def cost(name: str, password: str) -> int:
        work.clear()
        result = auth.check_login(db_factory, name, password)
        assert result.refusal is not None and result.rater_id is None
        return sum(work)

    unknown = cost("nobody-by-that-name", "a wrong guess!")
    assert unknown > 0
    costs = {what: cost(name, password) for what, name, password in (
        ("today's hash, wrong password", "carol", "a wrong guess!"),
        ("p=1 hash, wrong password", "dave", "a wrong guess!"),
        ("p=2 hash, wrong password", "erin", "a wrong guess!"),
        ("N=2^13 hash, wrong password", "fay", "a wrong guess!"),
        ("disabled, p=1 hash, right password", "gus", PASSWORD),
        ("disabled, p=1 hash, wrong password", "gus", "a wrong guess!"),
        ("disabled, today's hash, right password", "hal", PASSWORD),
        ("the local admin's name", auth.LOCAL_ADMIN_NAME, "a wrong guess!"),
    )}
    assert costs == dict.fromkeys(costs, unknown), (unknown, costs)
    for name, params in (("dave", (2**14, 8, 1)), ("erin", (2**14, 8, 2)), ("fay", (2**13, 8, 1))):
        assert _matches(PASSWORD, _row(db_factory, name)[0]) == params  # a refusal stores nothing


def test_a_refused_account_name_is_not_repeated_at_any_length():
    with pytest.raises(ValueError) as err:
        auth.check_account_name("x" * 100_000 + "\n")
    assert len(str(err.value)) < 300 and "U+000A" in str(err.value)


def test_an_account_cannot_be_named_after_a_word_of_the_raters_list(db_factory):
    """An account named 'admins' or 'everyone' (any case) could not be listed alone as an experiment's rater: the
    raters field reads the word, not the name (fifth review). Such names are refused when the account is made."""
    from app import members

    for typed in ("admins", "Everyone", " ADMINS "):
        assert members.parse_names(typed) in (None, [])  # what the field makes of it: a word, not that account
        with pytest.raises(ValueError, match="is not an account name: in an experiment's list of raters") as refused:
            auth.add_user(db_factory, name=typed, role="rater", password=PASSWORD)
        assert "\n" not in str(refused.value)
    assert not any(u.name.strip().lower() in ("admins", "everyone") for u in auth.list_users(db_factory))
    auth.add_user(db_factory, name="admins team", role="rater", password=PASSWORD)  # a name that only contains one
    assert members.parse_names("admins team") == ["admins team"]


def test_names_with_a_struck_letter_read_as_the_name_they_copy_and_punctuation_alone_is_no_name(db_factory):
    """The sixth review (5 Dec 2026) made 'ŧom' beside 'tom' and 'ałice' beside 'alice': a letter with a stroke, a bar
    or a middle dot (ŧ ħ ł ŀ ø đ) reads as the letter, but NFKD leaves it whole, so the look-alike check let it pass.
    And names of punctuation only ("'", '-', '..') were accepted: nobody could tell such accounts apart in a list."""
    for name in ("tom", "alice", "helen", "bjorn", "lola", "dora"):
        auth.add_user(db_factory, name=name, role="rater", password=PASSWORD)
    for copy, of in (("\u0167om", "tom"), ("\u0166OM", "tom"), ("a\u0142ice", "alice"), ("a\u0140ice", "alice"),
                     ("\u0127elen", "helen"), ("bj\u00f8rn", "bjorn"), ("BJ\u00d8RN", "bjorn"), ("\u0141ola", "lola"),
                     ("\u0111ora", "dora")):
        with pytest.raises(ValueError, match=f"reads the same as the existing account '{of}'") as refused:
            auth.add_user(db_factory, name=copy, role="rater", password=PASSWORD)
        assert "\n" not in str(refused.value)
    for name in ("'", "-", "..", "'-'", "@", " . "):
        with pytest.raises(ValueError, match="needs at least one letter or digit") as refused:
            auth.add_user(db_factory, name=name, role="rater", password=PASSWORD)
        assert "\n" not in str(refused.value)
    for name in ("o'brien", "-7-", "x.", "Ø"):  # a letter or a digit among the marks is a name
        auth.add_user(db_factory, name=name, role="rater", password=PASSWORD)
    assert sorted(u.name for u in auth.list_users(db_factory)) == sorted(
        ["tom", "alice", "helen", "bjorn", "lola", "dora", "o'brien", "-7-", "x.", "Ø"])


def test_every_letter_a_name_takes_reads_as_a_basic_latin_letter_unless_it_is_a_letter_of_its_own():
    """Brute force over the name alphabet's Latin-1 and Latin Extended-A letters (``auth._name_char``): each one's key
    is made of basic Latin letters, except the few that are letters of their own (æ œ þ ŋ, and ŉ, an apostrophe and
    n), so a name cannot copy another with a letter the look-alike check leaves as it is (ŧ ħ ł ŀ ø did, sixth review)."""
    own = {"\u00e6", "\u00fe", "\u014b", "\u0153", "\u02bcn"}
    for c in map(chr, range(0x00C0, 0x0180)):
        if not auth._name_char(c) or not c.isalpha():
            continue
        key = repo.name_key(c)
        assert (key.isascii() and key.isalpha()) or key in own, (c, f"U+{ord(c):04X}", key)


def test_accounts_made_before_the_name_check_knew_them_are_kept_and_listed_with_a_note(db_url, db_factory, capsys):
    """Accounts that the check now refuses may exist ('ŧom' beside 'tom', a name "'"): the key is computed when an
    account is made, never stored, so nothing needs migrating and both keep signing in by their exact names; ``users
    list`` says which read the same or have no letter or digit, so an admin can disable one they do not know."""
    from db.models import Rater

    base = ["--db-url", db_url]
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", password_file(PASSWORD), *base]) == 0
    auth.add_user(db_factory, name="tom", role="rater", password=PASSWORD)
    with write_session(db_factory) as s:  # as the earlier check let them in
        hashed = auth.hash_password(PASSWORD)
        s.add_all([Rater(name="\u0167om", role="rater", password_hash=hashed),
                   Rater(name="'", role="rater", password_hash=hashed)])
    capsys.readouterr()
    assert app_main(["users", "list", *base]) == 0
    out = capsys.readouterr().out
    assert "note: the accounts 'tom', '\u0167om' have names that read the same; each is kept" in out, out
    assert "note: the account \"'\" has no letter or digit in its name; it is kept" in out, out
    assert out.count("note:") == 2, out
    with read_session(db_factory) as s:
        ids = {r.name: r.id for r in s.query(Rater)}
    for name in ("tom", "\u0167om", "'"):
        assert auth.check_login(db_factory, name, PASSWORD).rater_id == ids[name], name


@pytest.mark.parametrize("skew_s", [-7200, 7200])
def test_a_session_is_timed_by_the_databases_clock_whichever_app_server_is_off(db_factory, db_url, monkeypatch,
                                                                               skew_s):
    """Found (seventh review): on PostgreSQL several app servers share the sessions table, and each wrote and judged a
    session by its own clock: one running 2 h ahead saw every session started elsewhere as expired and signed its
    people out; one running 2 h behind started sessions that the others saw as expired at once. Now sessions are
    written and judged by the database's clock (SQLite: one file, one machine, one clock)."""
    from datetime import timedelta

    from sqlalchemy import text

    import app.sessions as sessions_mod
    import db.checks

    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite is one file on one machine: every process that opens it shares its clock")
    real = db.checks.utcnow
    off = {"on": False}  # while on, "this machine" is the app server whose clock is skew_s off

    def clock():
        return real() + timedelta(seconds=skew_s) if off["on"] else real()

    # this machine's clock, wherever the store reads it (its module, and the clock its constructor defaults to)
    monkeypatch.setattr(sessions_mod, "utcnow", clock)
    monkeypatch.setattr(db.checks, "utcnow", clock)
    defaults = dict(sessions_mod.SessionStore.__init__.__kwdefaults__ or {})
    if callable(defaults.get("now")):
        monkeypatch.setitem(sessions_mod.SessionStore.__init__.__kwdefaults__, "now", clock)
    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    with read_session(db_factory) as s:
        alice = repo.get_rater_by_name(session=s, name="alice").id
    right = sessions_mod.SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=0)
    skewed = sessions_mod.SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=0)

    token = right.start(alice, "127.0.0.1")  # started on the right server, checked on the skewed one
    off["on"] = True
    assert skewed.check(token) is not None, "a live session was judged expired by a server whose clock is off"
    off["on"] = False
    assert right.check(token) is not None

    off["on"] = True
    other = skewed.start(alice, "127.0.0.1")  # started on the skewed server, checked on the right one
    off["on"] = False
    assert right.check(other) is not None, "a session started by a server whose clock is off is judged expired"
    with read_session(db_factory) as s:
        expires, db_now = s.execute(text("SELECT expires_at, clock_timestamp() FROM sessions ORDER BY id DESC LIMIT 1")).one()
    assert timedelta(seconds=3590) <= expires - db_now <= timedelta(seconds=3600)


# ---------------------------------------------------------------------------------------------
# eleventh review (6 Dec 2026): the acting admin's own password for a password change on the web, and common passwords
# ---------------------------------------------------------------------------------------------


def _refusals(factory) -> list[tuple[str, str, str]]:
    return [(e.actor, e.target, e.detail) for e in auth.list_audit(factory) if e.action == "user.password.refused"]


def test_setting_a_password_on_the_admin_tab_needs_the_acting_admins_own_password(ui_world):
    """Eleventh review: an admin's session (stolen, or left open) set any account's password, another admin's too,
    with nothing more asked, and so could take over every account. Now the admin's own current password is asked for
    ("Your password"): missing or wrong, the change is refused in one sentence, nothing changes and the refusal is in
    the audit log; another admin's password does not do; the admin's own password does, for another account's
    password and for their own."""
    from app import sessions, ui_admin

    f = ui_world.factory
    auth.set_role(f, name="alice", role="admin")
    root = auth.identify(f, local_mode=False, username="root", client_host="10.0.0.7")
    alice = auth.identify(f, local_mode=False, username="alice", client_host="10.0.0.7")
    throttle = sessions.LoginThrottle(monotonic=lambda: 0.0)
    change = "a fresh secret phrase"
    tries = [(root, "bob", None, auth.YOUR_PASSWORD_MISSING), (root, "bob", "", auth.YOUR_PASSWORD_MISSING),
             (root, "bob", UI_PASSWORD + "!", auth.YOUR_PASSWORD_WRONG),
             (root, "alice", "not my password", auth.YOUR_PASSWORD_WRONG),  # another admin's account
             (alice, "root", "not my password", auth.YOUR_PASSWORD_WRONG),
             (root, "root", "not my password", auth.YOUR_PASSWORD_WRONG)]  # its own
    for actor, target, given, sentence in tries:
        with pytest.raises(auth.AuthError) as refused:
            ui_admin.set_user_password(f, actor, target, change, given, throttle=throttle, ip="10.0.0.7")
        assert str(refused.value) == sentence
        assert "nothing was changed" in sentence
    for name in ("root", "alice", "bob"):  # nothing changed: the old password signs in, the new one does not
        assert auth.check_login(f, name, UI_PASSWORD).refusal is None
        assert auth.check_login(f, name, change).refusal is not None
    assert [(actor, target) for actor, target, _ in _refusals(f)][::-1] == [  # the guesses: a missing one is none
        ("root", "bob"), ("root", "alice"), ("alice", "root"), ("root", "root")]
    assert [json.loads(d)["reason"] for _, _, d in _refusals(f)][::-1] == ["wrong password of the acting admin"] * 4
    with pytest.raises(auth.AuthError):  # the password is the acting admin's own, not any admin's
        ui_admin.set_user_password(f, alice, "bob", change, UI_PASSWORD.replace("battery", "batteries"),
                                   throttle=throttle, ip="10.0.0.7")
    assert "new password" in ui_admin.set_user_password(f, root, "bob", change, UI_PASSWORD, throttle=throttle,
                                                        ip="10.0.0.7")
    assert auth.check_login(f, "bob", change).refusal is None and auth.check_login(f, "bob", UI_PASSWORD).refusal
    assert "new password" in ui_admin.set_user_password(f, alice, "alice", change, UI_PASSWORD, throttle=throttle,
                                                        ip="10.0.0.7")  # one's own: one's current password
    assert auth.check_login(f, "alice", change).refusal is None
    assert [(e.actor, e.action, e.target) for e in auth.list_audit(f)[:2]] == [("alice", "user.password", "alice"),
                                                                                ("root", "user.password", "bob")]


def test_a_wrong_own_password_on_the_admin_tab_counts_as_a_failed_sign_in(ui_world):
    """The "Your password" box is checked with the sign-in's throttle: each wrong password is a failed sign-in of the
    admin's account and of the address, so past the account's free failures the account is locked for sign-in too (read
    with the throttle's own ``wait_s``, as the sign-in page reads it), and while locked even the right password is
    refused before it is checked, and the refusal audited. A missing password is no guess and is not counted."""
    from app import sessions, ui_admin

    f = ui_world.factory
    root = auth.identify(f, local_mode=False, username="root", client_host="10.0.0.7")
    rule = sessions.ThrottleRule(free=3, base_s=60, max_s=600)
    throttle = sessions.LoginThrottle(per_ip=sessions.ThrottleRule(free=1000, base_s=1, max_s=1), per_account=rule,
                                      monotonic=lambda: 0.0)
    for _ in range(5):
        with pytest.raises(auth.AuthError):
            ui_admin.set_user_password(f, root, "bob", "a fresh secret phrase", None, throttle=throttle, ip="10.0.0.7")
    assert throttle.wait_s("10.0.0.7", "root") == 0  # missing: not counted
    for _ in range(3):
        with pytest.raises(auth.AuthError, match="is not yours"):
            ui_admin.set_user_password(f, root, "bob", "a fresh secret phrase", "a guess", throttle=throttle,
                                       ip="10.0.0.7")
    assert throttle.wait_s("10.0.0.7", "root") == 0  # three free failures, as a sign-in's
    with pytest.raises(auth.AuthError, match="is not yours"):
        ui_admin.set_user_password(f, root, "bob", "a fresh secret phrase", "a guess", throttle=throttle, ip="10.0.0.7")
    assert throttle.wait_s("10.0.0.7", "root") == 60  # the fourth locks the account for sign-in, from any address
    assert throttle.wait_s("10.9.9.9", "root") == 60 and throttle.wait_s("10.9.9.9", "alice") == 0
    with pytest.raises(auth.AuthError, match=r"too many failed sign-ins; try again in 60 seconds \(nothing was changed\)"):
        ui_admin.set_user_password(f, root, "bob", "a fresh secret phrase", UI_PASSWORD, throttle=throttle,
                                   ip="10.0.0.7")
    assert auth.check_login(f, "bob", UI_PASSWORD).refusal is None  # nothing changed
    # the four guesses audited; the missing ones and the throttled one are no guess and not audited (a flood of them
    # pushed the Admin tab's newest 100 entries out of view: twelfth review)
    assert [json.loads(d)["reason"] for _, _, d in _refusals(f)] == ["wrong password of the acting admin"] * 4


def test_the_users_cli_sets_a_password_without_the_current_one(db_url, capsys):
    """The command line is the machine's owner's (a shell on the server): it sets any account's password with no
    current password asked for, as before; its new password is held to the same rules as the web page's."""
    base = ["--db-url", db_url]
    assert app_main(["users", "add", "root", "--role", "admin", "--password-file", password_file(PASSWORD), *base]) == 0
    assert app_main(["users", "passwd", "root", "--password-file", password_file("Rooted in the garden"), *base]) == 1
    assert "error: a password may not be or contain the account's name" in capsys.readouterr().err
    assert app_main(["users", "passwd", "root", "--password-file", password_file("letmein2026!"), *base]) == 1
    assert "most commonly used" in capsys.readouterr().err
    assert app_main(["users", "passwd", "root", "--password-file", password_file("a fresh secret phrase"), *base]) == 0
    engine = make_engine(db_url)
    try:
        assert auth.check_login(session_factory(engine), "root", "a fresh secret phrase").refusal is None
    finally:
        engine.dispose()


NAME_RULE = "a password may not be or contain the account's name"
REPEAT_RULE = "a password may not be one character repeated"
RUN_RULE = "a password may not be a run of consecutive letters, digits or keys, such as 12345678, abcdefgh or qwertyui"
COMMON_RULE = "that password is one of the most commonly used ones, which are tried first; choose another"


@pytest.mark.parametrize("name, password, sentence", [
    ("Margaret", "margaret", NAME_RULE), ("margaret", "MARGARET", NAME_RULE), ("Kåre", "kare's own password", NAME_RULE),
    ("bob", "my name is Bob!", NAME_RULE), ("Jo-Anne Smith", "jo-anne smith", NAME_RULE),
    ("zed", "aaaaaaaa", REPEAT_RULE), ("zed", "7777777777", REPEAT_RULE), ("zed", "xXxXxXxXxX", REPEAT_RULE),
    ("zed", "12345678", RUN_RULE), ("zed", "0123456789", RUN_RULE), ("zed", "87654321", RUN_RULE),
    ("zed", "abcdefgh", RUN_RULE), ("zed", "ABCDEFGHIJK", RUN_RULE), ("zed", "qwertyui", RUN_RULE),
    ("zed", "poiuytrewq", RUN_RULE), ("zed", "asdfghjkl", RUN_RULE), ("zed", "zyxwvutsrq", RUN_RULE),
    ("zed", "password", COMMON_RULE), ("zed", "Password1", COMMON_RULE), ("zed", "P@ssw0rd!", COMMON_RULE),
    ("zed", "letmein!", COMMON_RULE), ("zed", "iloveyou", COMMON_RULE), ("zed", "welcome1", COMMON_RULE),
    ("zed", "admin123", COMMON_RULE), ("zed", "qwerty123", COMMON_RULE), ("zed", "Sunshine2026!", COMMON_RULE),
    ("zed", "trustno1", COMMON_RULE), ("zed", "trustno7!", COMMON_RULE), ("zed", "abc12345", COMMON_RULE),
])
def test_a_password_that_is_the_name_a_repeat_a_run_or_a_common_one_cannot_be_set(db_factory, name, password, sentence):
    """Eleventh review: no password was refused but for its length, so 'password', '12345678', 'aaaaaaaa' or the account's
    own name could be set. Each is refused now with its one sentence, when an account is made and when its password is
    set (the web page's and the command line's path), and nothing is stored."""
    with pytest.raises(ValueError) as refused:
        auth.add_user(db_factory, name=name, role="admin", password=password)
    assert str(refused.value) == sentence
    assert auth.list_users(db_factory) == []
    auth.add_user(db_factory, name=name, role="admin", password=PASSWORD)
    with pytest.raises(ValueError) as refused:
        auth.set_password(db_factory, name=name, password=password)
    assert str(refused.value) == sentence
    assert auth.check_login(db_factory, name, PASSWORD).refusal is None


@pytest.mark.parametrize("name, password", [
    ("alice", "correct horse battery"), ("al", "al's garden gate"), ("zed", "hello there world"), ("zed", "123abc45"),
    ("zed", "aaab1aaab"), ("zed", "my 1234 garden"), ("zed", "abcdefgh 12 mile"), ("zed", "1111 is my lucky #"),
    ("zed", "passwords are long sentences"),
])
def test_passwords_near_the_refused_ones_can_be_set(db_factory, name, password):
    """The rules refuse what they say and no more: a short name (under 3 characters) only as the whole password, a
    run of 3 anywhere, a run of 4 or more with 8 characters besides it ("abcdefgh 12 mile": exactly 8), a common
    password only alone or with digits and punctuation after it."""
    auth.add_user(db_factory, name=name, role="admin", password=password)
    assert auth.check_login(db_factory, name, password).refusal is None


# ---------------------------------------------------------------------------------------------
# twelfth review (6 Dec 2026): a run that makes up most of a password, not only all of it
# ---------------------------------------------------------------------------------------------

RUNS_RULE = ("a password needs at least 8 characters besides its runs and the most common passwords (common ones, "
             "also spelled with spaces or as p4ssw0rd, count 2 for each stretch of them, touching ones together, that "
             "holds one not counted before: written again or put together again, they count no more): runs are 4 or "
             "more characters that repeat "
             "one character or a group of up to 4 (aaaa, abab, abcabc) or read along letters, digits or keys (1234, "
             "dcba, qwer); accents and invisible characters do not count")
LINES = ("abcdefghijklmnopqrstuvwxyz", "01234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")  # as README.md names them
TRAILING = "0123456789" + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"  # what may follow a common password and still be it


def _common_entries() -> set[str]:
    """app/common_passwords.txt as written, lower case, without the digits and marks each ends with."""
    path = Path(auth.__file__).with_name("common_passwords.txt")
    lines = path.read_text(encoding="utf-8").splitlines()
    entries = {line.strip().lower().rstrip(TRAILING) for line in lines if line.strip() and not line.startswith("#")}
    return entries - {""}


# the leet substitutes the thirteenth review names, as the letter each reads as; 1 reads as i or as l (``ONE_READS``),
# but i and l are not one letter (fourteenth review)
LEET_READS = {"4": "a", "@": "a", "3": "e", "0": "o", "5": "s", "$": "s", "7": "t"}


def _skeleton(text: str) -> str:
    """``text`` with each leet substitute read as its letter and every character not a letter or digit left out."""
    return "".join(c for c in (LEET_READS.get(c, c) for c in text) if c.isalnum())


ONE_READS = {"i": "i1", "l": "l1", "1": "il1"}  # what may stand where a listed skeleton has an i, an l or a 1


@functools.cache
def _spellings() -> dict[str, str]:
    """Every skeleton that reads as a listed entry's, with that entry's skeleton: each i, l and 1 of it written in
    every way ONE_READS allows, all enumerated."""
    spellings = {}
    for entry in filter(None, map(_skeleton, _common_entries())):
        for spelled in itertools.product(*(ONE_READS.get(c, c) for c in entry)):
            spellings["".join(spelled)] = entry
    return spellings


def _is_common_by_skeleton(password: str) -> bool:
    """Whether ``password`` (lower case, not digits and marks alone) starts with a letter or digit once leet is read
    and, cut somewhere in the digits and marks it ends with, reads as a listed entry before the cut: every cut tried
    ("footbal1" is "football" cut after its 1)."""
    core = password.rstrip(TRAILING)
    return bool(core) and LEET_READS.get(core[:1], core[:1]).isalnum() and any(
        _skeleton(password[:cut]) in _spellings() for cut in range(len(core), len(password) + 1))


def _counted_by_brute_force(password: str) -> int:
    """What ``password`` (lower case, ASCII) counts for: its characters that no stretch covers that is a run or a
    common password, and 2 for each maximal stretch of common passwords that is not all run and holds a listed entry
    (by skeleton) that no stretch counted before it held, the stretches read in the order that counts fewest (every
    order read, ``_fewest_over_every_order``; so one written again, or counted ones put together again, count nothing
    more). A run: 4 or more characters that are a piece of one of LINES (forwards or backwards) or one group written twice or more in a row, a group of 1
    to 4 characters or any group that is a common password with only digits and marks after it. A common password: a
    stretch whose first and last characters are letters or digits once leet is read and whose skeleton
    (``_skeleton``) reads as a listed entry's of 5 or more characters (``_spellings``). Every stretch and every group
    tried."""
    common = _common_entries()
    runs, commons, words = set(), set(), []
    for i in range(len(password)):
        for j in range(i + 1, len(password) + 1):
            piece = password[i:j]
            run = len(piece) >= 4 and (
                any(piece in line or piece[::-1] in line for line in LINES)
                or any(piece == piece[:p] * (len(piece) // p) and (p <= 4 or piece[:p].rstrip(TRAILING) in common)
                       for p in range(1, len(piece) // 2 + 1)))
            if run:
                runs.update(range(i, j))
            ends = LEET_READS.get(piece[0], piece[0]) + LEET_READS.get(piece[-1], piece[-1])
            read = _spellings().get(_skeleton(piece), "")
            if ends.isalnum() and len(read) >= 5:
                commons.update(range(i, j))
                words.append((i, j, read))
    held_by, k = [], 0
    while k < len(password):
        if k in commons:
            j = k
            while j in commons:
                j += 1
            if any(m not in runs for m in range(k, j)):
                held_by.append(sorted({e for i, end, e in words if k <= i and end <= j}))
            k = j
        else:
            k += 1
    return len(password) - len(runs | commons) + 2 * _fewest_over_every_order(held_by)


def _fewest_over_every_order(held_by) -> int:
    """The least, over every order of the stretches (``held_by``: the listed entries each holds), of how many count
    when they are read in that order, one counting when it holds an entry no stretch read before it held: every
    permutation read, left to right."""
    assert len(held_by) <= 8, held_by  # 8! orders at most
    fewest = len(held_by)
    for order in itertools.permutations(held_by):
        counted, stretches = set(), 0
        for held in order:
            if not counted.issuperset(held):
                stretches += 1
                counted.update(held)
        fewest = min(fewest, stretches)
    return fewest


@pytest.mark.parametrize("password", [
    "abcdefgh1", "1234567a", "abcdefgi", "aaaaaaab", "abcdefgh12345678", "Abcdefgh!", "1qwertyui", "87654321x",
    "zyxwvuts7", "my dog!!!!!!!", "7890123456x", "asdf1234qwer", "ab1234567c",
])
def test_a_password_that_is_mostly_a_run_cannot_be_set(db_factory, password):
    """Twelfth review: the run and repeat rules looked at the whole password only, so "abcdefgh1" or "1234567a" could be
    set. A password needs 8 characters besides its runs of 4 or more (repeated, or along a line of letters, digits or
    keys, either way); this is refused with one sentence when an account is made and when a password is set, nothing
    is stored."""
    assert _counted_by_brute_force(password.lower()) < 8
    with pytest.raises(ValueError) as refused:
        auth.add_user(db_factory, name="zed", role="rater", password=password)
    assert str(refused.value) == RUNS_RULE
    assert auth.list_users(db_factory) == []
    auth.add_user(db_factory, name="zed", role="rater", password=PASSWORD)
    with pytest.raises(ValueError, match="besides its runs and the most common passwords"):
        auth.set_password(db_factory, name="zed", password=password)
    assert auth.check_login(db_factory, "zed", PASSWORD).refusal is None


def test_a_run_with_filler_is_refused_exactly_when_the_filler_is_under_8_characters():
    """Constructed cases: a run (a piece of a line, either way, or one character repeated, 4 to 26 long) with filler
    around it of marks that are on no line and never two alike in a row, so the characters besides the run are the
    filler, known by construction. Refused exactly when there are fewer than 8 of them, whatever the run and where the
    filler sits."""
    import random

    rng = random.Random(12)
    marks = "!#%&*+=?~^"
    seen = {True: 0, False: 0}
    for _ in range(3000):
        if rng.random() < 0.25:
            run = rng.choice("abz09q!") * rng.randint(4, 12)
        else:
            line = rng.choice(LINES)
            length = rng.randint(4, len(line))
            start = rng.randint(0, len(line) - length)
            run = line[start:start + length]
            run = run[::-1] if rng.random() < 0.5 else run
            run = run.upper() if rng.random() < 0.2 else run
        filler = rng.randint(max(0, 8 - len(run)), 12)
        chars: list[str] = []
        while len(chars) < filler:  # never a mark of the 4 before it: no group of up to 4 repeats
            chars.append(rng.choice([m for m in marks if m not in chars[-4:]]))
        before = rng.randint(1, filler) if filler else 0  # a mark first: a common word with marks after it is its own rule
        password = "".join(chars[:before]) + run + "".join(chars[before:])
        if run[0] in marks and (chars[before - 1:before] == [run[0]] or chars[before:before + 1] == [run[0]]):
            continue  # a repeated mark next to a filler mark alike: the run is longer than built
        refused = filler < 8
        seen[refused] += 1
        try:
            auth.check_password_strength(password)
        except ValueError as e:
            assert refused, (password, str(e))
        else:
            assert not refused, password
    assert min(seen.values()) > 500, seen


def test_the_runs_rule_agrees_with_trying_every_stretch():
    """Random passwords over a few letters, digits, keys and marks, where runs of every kind and overlapping ones are
    common: refused by the runs rule exactly when trying every stretch of each leaves fewer than 8 characters outside
    all runs (the other rules answer first where they apply: a whole run, a common password)."""
    import random

    rng = random.Random(6)

    def piece() -> str:  # a few characters: random ones, one repeated, or a bit of a line (either way)
        kind = rng.randrange(3)
        if kind == 0:
            return "".join(rng.choice("aeiou2468!#q") for _ in range(rng.randint(1, 4)))
        if kind == 1:
            return rng.choice("ab1!q") * rng.randint(2, 6)
        line = rng.choice(LINES)
        length = rng.randint(2, 7)
        start = rng.randint(0, len(line) - length)
        return line[start:start + length][::rng.choice((1, -1))]

    counts = {True: 0, False: 0}
    for _ in range(4000):
        password = ""
        while len(password) < 8:
            password += piece()
        password += "".join(piece() for _ in range(rng.randrange(3)))
        if _is_common_by_skeleton(password):
            continue
        expected = _counted_by_brute_force(password) < 8
        counts[expected] += 1
        try:
            auth.check_password_strength(password)
        except ValueError as e:
            assert expected, (password, str(e))
            if _counted_by_brute_force(password) > 0:  # not a whole run: this rule's sentence
                assert str(e) == RUNS_RULE, (password, str(e))
        else:
            assert not expected, password
    assert min(counts.values()) > 400, counts


def test_every_listed_common_password_is_refused_alone_and_with_digits_after_it():
    """The list is data (app/common_passwords.txt), read by the rule: each entry, in capitals too and with a year and a
    mark after it, is refused; an entry inside a longer phrase is not."""
    path = Path(auth.__file__).with_name("common_passwords.txt")
    entries = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")]
    assert 40 <= len(entries) <= 100
    for entry in entries:
        for password in (entry.upper().ljust(8, "1"), entry + "2026!"):
            with pytest.raises(ValueError, match="commonly used|run of consecutive|one character repeated"):
                auth.check_password_strength(password)
        auth.check_password_strength(f"my {entry} and a tree")


# ---------------------------------------------------------------------------------------------
# twelfth review (6 Dec 2026): invisible characters, common passwords with a little around them, repeated groups
# ---------------------------------------------------------------------------------------------

# each refused for the reason beside it (worked by hand; _counted_by_brute_force agrees where it applies)
REFUSED_SINCE_THE_TWELFTH_REVIEW = [
    ("\u0301" * 8, RUNS_RULE),  # 8 accents alone: nothing is left once accents are set aside
    ("e\u0301" * 8, REPEAT_RULE),  # é eight times: e repeated
    ("password\u200b", COMMON_RULE),  # a zero-width space (Cf) after "password": "password"
    ("pass\u00adword", COMMON_RULE),  # a soft hyphen (Cf) inside it
    ("\ufeffpassword1", COMMON_RULE),  # a byte-order mark (Cf) before it
    ("password\ufe0f", COMMON_RULE),  # a variation selector (Mn, combining class 0) after it
    ("pass\u0007word!", COMMON_RULE),  # a control character (Cc) inside it
    ("pass\u200dw\u0308ord", COMMON_RULE),  # a zero-width joiner and a diaeresis inside it
    ("passwordpassword", RUNS_RULE),  # "password" twice: nothing left
    ("1password", RUNS_RULE),  # "password" taken out leaves "1"
    ("!password", RUNS_RULE),  # leaves "!"
    ("my password", RUNS_RULE),  # leaves "my " (3)
    ("my\u00a0password", RUNS_RULE),  # a no-break space reads as a space: "my " left (3)
    ("dragondragon!", RUNS_RULE),  # a common password written twice: "!" left
    ("test1test1", RUNS_RULE),  # "test1" (common "test" with a digit after it) written twice: nothing left
    ("abc123abc123", RUNS_RULE),  # "abc123" written twice
    ("sunshine2026x", RUNS_RULE),  # "sunshine" taken out leaves "2026x": 5
    ("abababab", RUNS_RULE),  # "ab" four times
    ("12121212", RUNS_RULE),  # "12" four times
    ("11112222", RUNS_RULE),  # two runs of one digit
    ("abcabcabc", RUNS_RULE),  # "abc" three times
    ("xyz1xyz1xyz1", RUNS_RULE),  # "xyz1" three times
    ("hello world!", COMMON_RULE),  # "helloworld" once the space is skipped (it left " world!", 7; thirteenth review)
    ("ha ha ha ha ha", RUNS_RULE),  # "ha " three characters written again and again: nothing left
]


@pytest.mark.parametrize("password, sentence", REFUSED_SINCE_THE_TWELFTH_REVIEW)
def test_a_common_password_with_a_little_around_it_or_a_repeated_group_cannot_be_set(db_factory, password, sentence):
    """Twelfth review: 8 accents alone, "password" with an invisible character, "1password", "passwordpassword",
    "abababab" and "12121212" could be set. The one rule: at least 8 characters besides the most common passwords (5
    characters or more, anywhere) and runs (one character or a group of up to 4 written again, or a common password
    written again), read with compatibility forms, case, accents, and format and control characters aside. Refused in
    one sentence when an account is made and when a password is set; nothing is stored."""
    plain = "".join(c for c in password if c.isascii() and c.isprintable() or c == "\u2028").replace("\u2028", " ")
    if sentence == RUNS_RULE:
        assert _counted_by_brute_force(plain.lower()) < 8
    with pytest.raises(ValueError) as refused:
        auth.add_user(db_factory, name="zed", role="rater", password=password)
    assert str(refused.value) == sentence
    assert auth.list_users(db_factory) == []
    auth.add_user(db_factory, name="zed", role="rater", password=PASSWORD)
    with pytest.raises(ValueError) as refused:
        auth.set_password(db_factory, name="zed", password=password)
    assert str(refused.value) == sentence
    assert auth.check_login(db_factory, "zed", PASSWORD).refusal is None


@pytest.mark.parametrize("password", [
    "purple horse battery staple",  # four words: no common password, no run (27 left)
    "my 1234 garden",  # the run "1234" leaves 10
    "my password is long",  # "password" taken out leaves "my  is long": 11
    "papa bear's honey",  # "papa" ("pa" twice) leaves 13
    "caf\u00e9 au lait 42",  # accented letters count as their letters: 15
    "abab 12 mile road",  # "abab" leaves 13
    "sunshine in my eyes",  # "sunshine" leaves 11
    "dragon-fly 2 x",  # "dragon" leaves 8, exactly
    "q\u00fcick br\u00f6wn",  # 11 characters once the umlauts are set aside
])
def test_passphrases_around_a_common_word_or_a_repeat_can_be_set(db_factory, password):
    """The rule takes out only what it names: a common password inside a longer phrase, a short repeat or a run leaves
    the phrase's other characters, which count when there are 8 or more of them."""
    plain = password.replace("\u00e9", "e").replace("\u00fc", "u").replace("\u00f6", "o")
    assert _counted_by_brute_force(plain.lower()) >= 8
    auth.add_user(db_factory, name="zed", role="rater", password=password)
    assert auth.check_login(db_factory, "zed", password).refusal is None


INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\u0301", "\u0308", "\ufe0f", "\u0007",
             "\u0000", "\u034f", "\u180e", "\u2063"]  # format (Cf), combining (Mn) and control (Cc) characters


def test_the_rule_agrees_with_trying_every_stretch_and_invisible_characters_change_nothing():
    """Random passwords built of common passwords, groups written again, runs and other characters, with format,
    combining and control characters put anywhere after the first: refused exactly when the visible password, lower
    case, is a common password with digits and marks after it or has fewer than 8 characters outside everything
    ``_counted_by_brute_force`` tries."""
    import random

    rng = random.Random(2026)
    common = sorted(e for e in _common_entries() if e.isascii())  # ASCII: the brute force reads no accents

    def piece() -> str:
        kind = rng.choice((0, 0, 0, 1, 2, 3, 4))
        if kind == 0:
            return "".join(rng.choice("aeiou2468!# q") for _ in range(rng.randint(1, 4)))
        if kind == 1:
            return "".join(rng.choice("ab1!x") for _ in range(rng.randint(1, 4))) * rng.randint(2, 3)
        if kind == 2:
            line = rng.choice(LINES)
            length = rng.randint(2, 6)
            start = rng.randint(0, len(line) - length)
            return line[start:start + length][::rng.choice((1, -1))]
        word = rng.choice(common) + rng.choice(["", "", "1", "!", "12"])
        return word * rng.choice((1, 1, 2))

    counts = {True: 0, False: 0}
    for _ in range(3000):
        plain, length = "", rng.randint(8, 20)
        while len(plain) < length:
            plain += piece()
        if plain != plain.strip():
            continue
        password = plain
        for _ in range(rng.randrange(4)):
            at = rng.randint(1, len(password))
            password = password[:at] + rng.choice(INVISIBLE) + password[at:]
        if _is_common_by_skeleton(plain.lower()):
            expected = True
        else:
            expected = _counted_by_brute_force(plain.lower()) < 8
        counts[expected] += 1
        try:
            auth.check_password_strength(password)
        except ValueError as e:
            assert expected, (password, str(e))
        else:
            assert not expected, password
    assert min(counts.values()) > 600, counts


# ---------------------------------------------------------------------------------------------
# twelfth review (6 Dec 2026): everyone signed in changes their own password on the web (the Account tab)
# ---------------------------------------------------------------------------------------------

CURRENT_MISSING = ("Type your current password in \"Current password\" to change it (a session left open must not be "
                   "enough to take over your account); nothing was changed.")
CURRENT_WRONG = "The password in \"Current password\" is not your current one, so nothing was changed."


def _account_tab(world, monkeypatch):
    """The built page's Account tab handler and a fresh stand-in throttle (the handler, called as a function, has no
    guard in front of it), with a clock that stands still."""
    from app import sessions, ui, ui_admin

    throttle = sessions.LoginThrottle(per_ip=sessions.ThrottleRule(free=1000, base_s=1, max_s=1),
                                      per_account=sessions.ThrottleRule(free=3, base_s=60, max_s=600),
                                      monotonic=lambda: 0.0)
    monkeypatch.setattr(ui_admin, "THROTTLE_WITHOUT_GUARD", throttle)
    demo = ui.build_demo(world.services())
    (fn,) = [bf for bf in demo.fns.values() if bf.fn is not None and bf.fn.__name__ == "on_own_password"]
    return fn, throttle


def _request(name: str):
    import gradio as gr

    return gr.Request(username=name, client={"host": "10.0.0.7", "port": 5000})


def test_a_rater_changes_their_own_password_on_the_account_tab(ui_world, monkeypatch):
    """Twelfth review: a rater could not change their password on the web, only an admin could (the Admin tab). The
    Account tab's form takes the current password and the new one: a missing or wrong current password, or a new one
    the rules refuse, is one sentence and changes nothing; the right one changes it, ends every session of the account
    (this one too, as the Admin tab's change does) and no other account's, and is audited."""
    import gradio as gr

    from app import sessions

    f = ui_world.factory
    fn, _ = _account_tab(ui_world, monkeypatch)
    assert [b.label for b in fn.inputs] == ["Current password", "New password (8+ characters)",
                                            "Repeat new password"]  # no account name
    store = sessions.SessionStore(f, idle_s=3600, max_s=3600, recheck_s=0)
    alices = [store.start(ui_world.accounts["alice"], "10.0.0.7") for _ in range(2)]
    bobs = store.start(ui_world.accounts["bob"], "10.0.0.8")
    new = "a fresh secret phrase"
    tries = [(None, new, CURRENT_MISSING), ("", new, CURRENT_MISSING), ("not my password", new, CURRENT_WRONG),
             (UI_PASSWORD, "abcdefgh1", RUNS_RULE[0].upper() + RUNS_RULE[1:] + "."),
             (UI_PASSWORD, "alice in the garden", "A password may not be or contain the account's name."),
             (UI_PASSWORD, "short", "A password needs at least 8 characters."), (UI_PASSWORD, None,
                                                                                 "A password needs at least 8 characters.")]
    for current, password, sentence in tries:
        with pytest.raises(gr.Error) as refused:
            fn.fn(current, password, password, request=_request("alice"))
        assert refused.value.message == sentence, (current, password)
    assert auth.check_login(f, "alice", UI_PASSWORD).refusal is None  # nothing changed
    assert all(store.check(t) is not None for t in [*alices, bobs])
    assert [json.loads(d)["reason"] for _, _, d in _refusals(f)][::-1] == ["wrong password of the acting rater"]
    message, *boxes = fn.fn(UI_PASSWORD, new, new, request=_request("alice"))
    assert "Your password is changed" in message and "sign in again" in message and boxes == ["", "", ""]
    assert auth.check_login(f, "alice", new).refusal is None and auth.check_login(f, "alice", UI_PASSWORD).refusal
    assert [store.check(t) is None for t in [*alices, bobs]] == [True, True, False]  # alice's sessions only
    assert auth.check_login(f, "bob", UI_PASSWORD).refusal is None and auth.check_login(f, "root", UI_PASSWORD).refusal is None
    audit = auth.list_audit(f)[0]
    assert (audit.actor, audit.action, audit.target) == ("alice", "user.password", "alice")
    message, *_ = fn.fn(UI_PASSWORD, "and yet another phrase", "and yet another phrase", request=_request("root"))  # an admin's own too
    assert "Your password is changed" in message and auth.check_login(f, "root", "and yet another phrase").refusal is None


def test_a_new_password_typed_differently_twice_is_refused_before_anything_else(ui_world, monkeypatch):
    """Twelfth review: the Account tab took the new password once, so a typing slip in it changed the password to one
    the user did not know and signed them out of every session (an admin or ``users passwd`` to get back in). The new
    password is typed twice now; the handler compares the two before anything else: one sentence, no guess counted
    (even with a wrong current password, past the free failures), no audit entry, no session ended, nothing changed.
    Typed the same, the change goes through and the result links to the sign-in page (a signed-out "/")."""
    import gradio as gr
    from markdown_it import MarkdownIt

    from app import sessions

    f = ui_world.factory
    fn, throttle = _account_tab(ui_world, monkeypatch)
    store = sessions.SessionStore(f, idle_s=3600, max_s=3600, recheck_s=0)
    open_ = store.start(ui_world.accounts["alice"], "10.0.0.7")
    slips = [("a fresh secret phrase", "a fresh secret phrsae"), ("a fresh secret phrase", ""),
             ("a fresh secret phrase", None), ("a fresh secret phrase", "a fresh secret phrase "),
             ("", "a fresh secret phrase"), (None, "a fresh secret phrase"), ("abcdefgh1", "abcdefgh2")]
    for current in (UI_PASSWORD, "a guess", None):
        for new, repeat in slips:
            with pytest.raises(gr.Error) as refused:
                fn.fn(current, new, repeat, request=_request("alice"))
            assert refused.value.message == ("The new password and \"Repeat new password\" differ (a typing slip?), "
                                             "so nothing was changed: type the same new password in both."), (new, repeat)
    assert throttle.wait_s("10.0.0.7", "alice") == 0 and _refusals(f) == []
    assert store.check(open_) is not None and auth.check_login(f, "alice", UI_PASSWORD).refusal is None
    assert all(auth.check_login(f, "alice", p).refusal for p in ("a fresh secret phrase", "a fresh secret phrsae"))
    message, *boxes = fn.fn(UI_PASSWORD, "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
    assert auth.check_login(f, "alice", "a fresh secret phrase").refusal is None and store.check(open_) is None
    links = [t for block in MarkdownIt().parseInline(message) for t in block.children or [] if t.type == "link_open"]
    assert [t.attrs["href"] for t in links] == ["/"] and "sign in again" in message and boxes == ["", "", ""]


def test_a_rater_can_change_no_other_accounts_password(ui_world):
    """The form names no account (the signed-in one is read on the server), and the one path behind both forms,
    ``auth.change_password``, refuses a rater any account but their own, before anything is read or counted, even with
    the right current password; the Admin tab's function still refuses a rater outright."""
    from app import sessions, ui_admin

    f = ui_world.factory
    alice = auth.identify(f, local_mode=False, username="alice", client_host="10.0.0.7")
    throttle = sessions.LoginThrottle(monotonic=lambda: 0.0)
    for target in ("bob", "root", "Alice", "nobody"):
        with pytest.raises(auth.AuthError, match="^'alice' is a rater; a rater may change only their own password$"):
            auth.change_password(f, alice, name=target, password="a fresh secret phrase", current=UI_PASSWORD,
                                 throttle=throttle, ip="10.0.0.7", own_form=True)
    with pytest.raises(auth.AuthError, match="only an admin"):
        ui_admin.set_user_password(f, alice, "bob", "a fresh secret phrase", UI_PASSWORD, throttle=throttle)
    for name in ("alice", "bob", "root"):
        assert auth.check_login(f, name, UI_PASSWORD).refusal is None
    assert _refusals(f) == [] and throttle.wait_s("10.0.0.7", "alice") == 0


def test_a_wrong_current_password_on_the_account_tab_counts_as_a_failed_sign_in(ui_world, monkeypatch):
    """The current password is checked with the sign-in's throttle, as the Admin tab's "Your password" is: each wrong
    one is a failed sign-in of the account, so past the free failures the account is locked for sign-in too, and while
    locked even the right current password is refused before it is checked. A new password the rules refuse is checked
    first and costs no guess."""
    import gradio as gr

    fn, throttle = _account_tab(ui_world, monkeypatch)
    for _ in range(4):
        with pytest.raises(gr.Error, match="besides its runs and the most common passwords"):
            fn.fn("a guess", "abcdefgh1", "abcdefgh1", request=_request("alice"))
    assert throttle.wait_s("10.0.0.7", "alice") == 0
    for _ in range(4):
        with pytest.raises(gr.Error, match="is not your current one"):
            fn.fn("a guess", "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
    assert throttle.wait_s("10.0.0.7", "alice") == 60 and throttle.wait_s("10.9.9.9", "alice") == 60
    with pytest.raises(gr.Error) as refused:
        fn.fn(UI_PASSWORD, "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
    assert refused.value.message == "Too many failed sign-ins; try again in 60 seconds (nothing was changed)."
    assert auth.check_login(ui_world.factory, "alice", UI_PASSWORD).refusal is None


def test_a_rater_cannot_flood_the_audit_log_from_the_account_tab(ui_world, monkeypatch):
    """Twelfth review (read-only): every empty "Current password" and every refusal of a locked account wrote a
    "user.password.refused" audit row and a warning, with no guess counted and no brake, so any rater could push the
    Admin tab's newest 100 audit entries (``list_audit``'s page) out of view in seconds. Only the guesses (wrong
    passwords, which the throttle bounds) are audited now; the admin's own entries stay in view."""
    import gradio as gr

    f = ui_world.factory
    root = auth.identify(f, local_mode=False, username="root", client_host="10.0.0.7")
    auth.set_disabled(f, name="bob", disabled=True, actor=root)  # an admin's entry a flood must not push out of view
    before = auth.list_audit(f)
    fn, throttle = _account_tab(ui_world, monkeypatch)
    for _ in range(60):
        with pytest.raises(gr.Error) as refused:
            fn.fn("", "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
        assert refused.value.message == CURRENT_MISSING
    for _ in range(4):  # three free failures, then the account is locked
        with pytest.raises(gr.Error, match="is not your current one"):
            fn.fn("a guess", "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
    for _ in range(60):
        with pytest.raises(gr.Error, match="Too many failed sign-ins"):
            fn.fn("another guess", "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
    audit = auth.list_audit(f)
    assert [(e.action, e.actor) for e in audit].count(("user.password.refused", "alice")) == 4  # the guesses
    assert audit[4:] == before and before[0].action == "user.disable"  # in view, 64 + 60 refusals later
    assert auth.check_login(f, "alice", UI_PASSWORD).refusal is None  # nothing changed


def test_local_mode_has_no_password_to_change(ui_world_factory):
    """In local mode the single local admin has no password: the Account tab is hidden and its function refuses in one
    sentence."""
    from app import sessions, ui_account

    world = ui_world_factory(accounts=False)
    local = auth.local_admin(world.factory)
    with pytest.raises(ValueError, match="^in local mode there are no accounts, so there is no password to change"):
        ui_account.change_own_password(world.factory, local, "", "a fresh secret phrase", "a fresh secret phrase",
                                       throttle=sessions.LoginThrottle())


# ---------------------------------------------------------------------------------------------
# thirteenth review (6 Dec 2026): sign-in and passwords
# ---------------------------------------------------------------------------------------------


def test_new_passwords_the_rules_refuse_are_counted_per_account(ui_world, monkeypatch):
    """Thirteenth review: the rules run before the current password is checked (a slip costs no guess), and each
    refusal of a long password cost up to ~40 ms of CPU, with no limit: a rater's page could ask for them as fast as
    events go. Now an account has RefusedNewPasswords.free refusals a window; past them a change is refused in one
    sentence before the rules run (counted here by wrapping them), another account is not held back, and once the
    window has passed the rules run again."""
    import gradio as gr

    clock = [0.0]
    monkeypatch.setattr(auth, "NEW_PASSWORD_REFUSALS", auth.RefusedNewPasswords(free=10, window_s=60,
                                                                                monotonic=lambda: clock[0]))
    ran = []
    rules = auth.check_password_strength
    monkeypatch.setattr(auth, "check_password_strength", lambda *a, **k: (ran.append(a[0]), rules(*a, **k)))
    fn, _ = _account_tab(ui_world, monkeypatch)
    weak = "abcdefgh1"
    for _ in range(10):
        with pytest.raises(gr.Error, match="besides its runs and the most common passwords"):
            fn.fn(UI_PASSWORD, weak, weak, request=_request("alice"))
        clock[0] += 1.0
    assert len(ran) == 10
    for _ in range(20):
        with pytest.raises(gr.Error) as refused:
            fn.fn(UI_PASSWORD, weak, weak, request=_request("alice"))
        assert refused.value.message == ("Too many refused new passwords in a short time; try again in 50 seconds "
                                         "(nothing was changed).")
    assert len(ran) == 10  # the rules did not run
    with pytest.raises(gr.Error, match="besides its runs and the most common passwords"):
        fn.fn(UI_PASSWORD, weak, weak, request=_request("bob"))  # another account
    assert len(ran) == 11
    clock[0] += 51.0  # the first refusal has left the window
    message, *_ = fn.fn(UI_PASSWORD, "a fresh secret phrase", "a fresh secret phrase", request=_request("alice"))
    assert "Your password is changed" in message and len(ran) == 13  # the change's own check, then set_password's


def test_an_admin_setting_their_own_password_on_the_admin_tab_is_sent_to_the_sign_in_page(ui_world, monkeypatch):
    """Thirteenth review: the Account tab sends a user who changed their password to the sign-in page (every session
    has ended, this page's too), but the Admin tab's "Set password" on the admin's OWN account left the page where it
    was, signed out, each next action refused. Now its result says so, in the Account tab's sentence with a link to
    "/", and its last output (the hidden "own-password-set" box) is True, which the step after a success reads to go
    to "/"; setting another account's password says what it said, the box False, and the page stays."""
    from markdown_it import MarkdownIt

    from app import sessions, ui, ui_admin

    monkeypatch.setattr(ui_admin, "THROTTLE_WITHOUT_GUARD", sessions.LoginThrottle(monotonic=lambda: 0.0))
    demo = ui.build_demo(ui_world.services())
    (fn_index, fn), = [(i, bf) for i, bf in demo.fns.items() if bf.fn is not None and bf.fn.__name__ == "on_user_password"]
    store = sessions.SessionStore(ui_world.factory, idle_s=3600, max_s=3600, recheck_s=0)
    roots = store.start(ui_world.accounts["root"], "10.0.0.7")

    def links(message: str) -> list[str]:
        return [t.attrs["href"] for block in MarkdownIt().parseInline(message) for t in block.children or []
                if t.type == "link_open"]

    message, *rest = fn.fn("bob", "a fresh secret phrase", UI_PASSWORD, "a fresh secret phrase", request=_request("root"))
    assert "'bob' has a new password" in message and links(message) == [] and rest[-1] is False
    assert store.check(roots) is not None
    message, *rest = fn.fn(" root ", "another long phrase", UI_PASSWORD, "another long phrase", request=_request("root"))
    assert auth.check_login(ui_world.factory, "root", "another long phrase").refusal is None
    assert store.check(roots) is None  # this page's session has ended
    assert "Your password is changed" in message and links(message) == ["/"] and rest[-1] is True
    assert rest[-4:-1] == ["", "", ""]  # the password boxes emptied
    own_box = fn.outputs[-1]
    assert own_box.elem_id == "own-password-set" and own_box.visible == "hidden"
    # the step after a success takes that box and runs in the browser (its going to "/" is tests/app/test_e2e_sessions.py's)
    (after,) = [bf for bf in demo.fns.values() if bf.trigger_after == fn_index]
    assert after.fn is None and after.trigger_only_on_success and after.inputs == [own_box]
    assert "window.location.assign('/')" in after.js


@pytest.mark.parametrize("password, sentence", [
    ("pass word", COMMON_RULE), ("p4ssword", COMMON_RULE), ("Pa55 w0rd!", COMMON_RULE), ("l3tm31n!!", COMMON_RULE),
    ("s.u.n.s.h.i.n.e", COMMON_RULE), ("$unsh1ne 2026", COMMON_RULE), ("hello world", COMMON_RULE),
    ("my p4ss word", RUNS_RULE),  # "p4ss word" reads "password": "my " left, 3 + 2
    ("1p4ssw0rd", RUNS_RULE), ("x dr4g0n 26", RUNS_RULE),  # "x " and " 26" left: 5 + 2
    ("dr4g0n 2026", COMMON_RULE),  # "dragon" with a space and digits after it
])
def test_spaced_and_leet_forms_of_common_passwords_cannot_be_set(db_factory, password, sentence):
    """Thirteenth review: the list was compared as written, so "pass word" and "p4ssword" could be set. Passwords are
    compared with it by skeleton now: leet substitutes read as their letters (4 @ a, 3 e, 1 i or l, 0 o, 5 $ s, 7 t)
    and spaces and punctuation skipped, for the whole password and for the common passwords taken out of a longer one.
    Refused in one sentence; the brute force (every stretch tried) agrees."""
    if sentence == RUNS_RULE:
        assert _counted_by_brute_force(password.lower()) < 8 and not _is_common_by_skeleton(password.lower())
    else:
        assert _is_common_by_skeleton(password.lower())
    with pytest.raises(ValueError) as refused:
        auth.add_user(db_factory, name="zed", role="rater", password=password)
    assert str(refused.value) == sentence
    assert auth.list_users(db_factory) == []


@pytest.mark.parametrize("password", [
    "hotel guest",  # "guest" taken out: "hotel " 6, and the common word 2
    "quiet guest room", "a lovely old barn", "summer rain on a hill", "the master plan",
])
def test_phrases_of_unrelated_words_with_a_common_one_can_be_set(db_factory, password):
    """Thirteenth review: "hotel guest" was refused: "guest" (a listed 5-letter word) was taken out and counted as
    nothing, leaving 6. A common password taken out of a longer one counts as 2 now (whoever guesses must still pick
    it from the list: about as many guesses as two letters), once per stretch of common words not all run; the
    brute force agrees."""
    assert _counted_by_brute_force(password) >= 8
    auth.add_user(db_factory, name="zed", role="rater", password=password)
    assert auth.check_login(db_factory, "zed", password).refusal is None


def test_a_password_set_before_the_skeleton_rule_still_signs_in(db_factory):
    """The rules apply when a password is set: a stored "p4ssword" (set before this review) still signs in."""
    auth.add_user(db_factory, name="zed", role="rater", password=PASSWORD)
    with write_session(db_factory) as s:
        rater = repo.get_rater_by_name(session=s, name="zed")
        repo.set_rater_password_hash(session=s, rater_id=rater.id, password_hash=auth._new_hash("p4ssword"))
    assert auth.check_login(db_factory, "zed", "p4ssword").refusal is None


# ---------------------------------------------------------------------------------------------
# a read-only review of the thirteenth review's sign-in fixes (6 Dec 2026)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("password", [
    "password password password", "dragon dragon dragon", "hello hello hello", "letmein letmein letmein",
    "iloveyou iloveyou iloveyou", "p@ssw0rd p@ssw0rd p@ssw0rd", "Password1 Password1 Password1",
    "monkey1 monkey1 monkey1",
])
def test_a_common_password_written_again_apart_counts_once(db_factory, password):
    """A common word taken out of a phrase counted 2 for each stretch, and a stretch written again with spaces between
    was a stretch again, so three spaced copies of a listed password counted 8 and could be set (the rule before
    refused them). The brute force counts each different stretch once; these count under 8 and are refused in one
    sentence, nothing stored."""
    assert _counted_by_brute_force(password.lower()) < 8
    with pytest.raises(ValueError, match="besides its runs and the most common passwords"):
        auth.add_user(db_factory, name="zed", role="rater", password=password)
    assert auth.list_users(db_factory) == []


# ---------------------------------------------------------------------------------------------
# fourteenth review (6 Dec 2026): the phrase rule's stretches, the local-mode admin's name, the leet reading of 1
# ---------------------------------------------------------------------------------------------


def test_each_listed_word_counts_once_however_often_it_is_written_or_put_together_again():
    """A stretch of common passwords counted 2 whenever its skeleton was new, so the same listed words put together
    again were new stretches: "password dragon passworddragon dragonpassword" counted 11 and could be set. Each listed
    word counts once now: a stretch counts 2 when it holds a listed word no counted stretch held, the stretches of one
    read in the order that counts fewest (fifteenth review: from the left, the count hung on the order; single words
    first, on the spelling). Every password of 1 to 3 stretches (one listed word, or two different ones touching)
    joined by spaces: what it counts for is known by construction (the spaces, and 2 for each stretch that brings a
    word not brought before, the least over every order of the stretches),
    and the rule refuses it exactly when that is under 8 or it is one listed word alone."""
    words = ("password", "dragon", "monkey", "shadow")  # four: three stretches of two words may count 4 or 6
    pieces = [(w,) for w in words] + [(a, b) for a in words for b in words if a != b]
    refused = {True: 0, False: 0}
    for count in (1, 2, 3):
        for stretches in itertools.product(pieces, repeat=count):
            password = " ".join("".join(piece) for piece in stretches)
            expected = count - 1 + 2 * _fewest_over_every_order(stretches)  # the spaces, and the stretches
            assert auth._characters_left(auth._folded(password)) == expected, password
            expected_refused = expected < 8 or (count == 1 and len(stretches[0]) == 1)
            refused[expected_refused] += 1
            try:
                auth.check_password_strength(password)
            except ValueError:
                assert expected_refused, password
            else:
                assert not expected_refused, password
    assert min(refused.values()) > 80, refused
    with pytest.raises(ValueError) as refusal:
        auth.check_password_strength("password dragon passworddragon dragonpassword")  # 3 spaces and 2
    assert str(refusal.value) == RUNS_RULE
    assert _counted_by_brute_force("password dragon passworddragon dragonpassword") == 5  # passworddragon read first
    assert _counted_by_brute_force("summer winter summerwinter") == 4


def test_the_local_mode_admins_name_in_set_password_is_refused_but_not_counted(db_factory, monkeypatch):
    """The refused new passwords are counted because each refusal runs the rules (milliseconds of CPU a page could ask
    for as fast as events go); a name that is no account's ran no rule and was not counted, but the local-mode admin's
    own name, typed in the Admin tab's "Set password", was refused by the account check (a ValueError) and counted, so
    a few such slips barred the real changes that followed. It is refused in its sentence and not counted: after six,
    the rules' own refusals still get their three free ones."""
    from app import sessions, ui_admin

    monkeypatch.setattr(auth, "NEW_PASSWORD_REFUSALS", auth.RefusedNewPasswords(free=3, window_s=60,
                                                                                monotonic=lambda: 0.0))
    who = auth.identify(db_factory, local_mode=True, username=None, client_host="127.0.0.1")
    assert who.local and who.name == auth.LOCAL_ADMIN_NAME
    throttle = sessions.LoginThrottle(monotonic=lambda: 0.0)
    for password in ("a fresh secret phrase", "abcdefgh1") * 3:
        with pytest.raises(ValueError) as refused:
            ui_admin.set_user_password(db_factory, who, auth.LOCAL_ADMIN_NAME, password, None, throttle=throttle,
                                       ip="127.0.0.1")
        assert str(refused.value) == "'local admin' is the local-mode admin, not an account"
    auth.add_user(db_factory, name="zed", role="rater", password=PASSWORD)
    for _ in range(3):
        with pytest.raises(ValueError, match="besides its runs"):
            ui_admin.set_user_password(db_factory, who, "zed", "abcdefgh1", None, throttle=throttle, ip="127.0.0.1")
    with pytest.raises(auth.AuthError, match="too many refused new passwords"):
        ui_admin.set_user_password(db_factory, who, "zed", "abcdefgh1", None, throttle=throttle, ip="127.0.0.1")
    assert auth.check_login(db_factory, "zed", PASSWORD).refusal is None


def _refused_as_common_iff(password: str, spelling: bool) -> None:
    """``password`` is refused where ``spelling`` (it spells a listed word), and is no common password where not (it
    may still be refused by another rule)."""
    try:
        auth.check_password_strength(password)
    except ValueError as e:
        assert spelling or str(e) != COMMON_RULE, password
    else:
        assert not spelling, password


def test_one_reads_as_i_or_l_but_i_and_l_are_not_one_letter():
    """The leet reading took i, l and 1 as one letter, so an i written for an l (or an l for an i) read as a listed
    word: "heliotrope" held "hello" ("helio") and counted 7, and 96 of the listed words' i/l/1 spellings that are no
    spelling of them ("heiio", "fiower", "wlnter") were refused as common passwords. Every spelling of every listed
    word with each i, l and 1 in it written as i, l or 1, with a year and a mark after it: one that writes each as
    itself or as a 1 (or a 1 as an i or an l) is refused, as before; one that writes an i for an l or an l for an i is
    not a common password."""
    seen = {True: 0, False: 0}
    for entry in sorted(_common_entries()):
        at = [k for k, c in enumerate(entry) if c in "il1"]
        # a capital I too (a review of the fourteenth review's fixes): in a lower-case word it reads as a 1, an i or
        # an l ("footbaII"), as it looks like an l there; in capitals (the same word upper-cased) it is an i
        for letters in itertools.product("il1I", repeat=len(at)):
            spelled = list(entry)
            for k, c in zip(at, letters):
                spelled[k] = c
            mixed = any(c.islower() for c in spelled)  # a capital I is an i or an l in a password of mixed case
            spelling = all(spelled[k] == entry[k] or "1" in (spelled[k], entry[k])
                           or (spelled[k] == "I" and (entry[k] == "i" or mixed)) for k in at)
            seen[spelling] += 1
            _refused_as_common_iff("".join(spelled) + "2026!", spelling)
        for letters in itertools.product("IL1", repeat=len(at)):  # in capitals: I is an i, L an l, 1 either
            spelled = list(entry.upper())
            for k, c in zip(at, letters):
                spelled[k] = c
            spelling = all(spelled[k].lower() == entry[k] or "1" in (spelled[k], entry[k]) for k in at)
            seen[spelling] += 1
            _refused_as_common_iff("".join(spelled) + "2026!", spelling)
    assert seen[True] > 350 and seen[False] > 230, seen
    for word in ("heliotrope", "heliograph", "heliostat"):  # real words: "helio" is no "hello"
        assert _counted_by_brute_force(word) >= 8
        auth.check_password_strength(word)
        auth.check_password_strength(word.upper())  # "HELIOTROPE": a capital I among capitals is an i
    for password in ("he11o w0r1d", "l3tm31n!!", "1ov3ly 2026"):  # a 1 still reads as an i or an l
        with pytest.raises(ValueError):
            auth.check_password_strength(password)


@pytest.mark.parametrize("password", ["FootbaII", "heIIo123", "HeIIo2026!", "IoveIy2026!", "WeIcome1", "baseba1I", "heIIo w0rld",
                                      # an I after a space or a mark, and capitals in a word of mixed case (found by a
                                      # read-only review: the rule looked only at the letters beside each I)
                                      "footba II 2026", "Foot-Ba-II-2026", "FootBAII2026!"])
def test_a_capital_i_written_for_an_l_reads_as_a_one(password):
    """Once i and l no longer read as each other, a capital I written for an l read as the i it folds to, so these
    were accepted (a review of the fourteenth review's fixes): refused as common passwords, as the same passwords with
    an l for each I are (the premise)."""
    with pytest.raises(ValueError, match="^that password is one of the most commonly used ones"):
        auth.check_password_strength(password.replace("I", "l"))
    with pytest.raises(ValueError) as e:
        auth.check_password_strength(password)
    assert str(e.value) == COMMON_RULE


@pytest.mark.parametrize("password, ones", [
    # positions in the folded text, worked out by hand: ß folds to ss, the ligature ﬁ to fi, Ǆ to dz and a caron, a
    # full-width I to I; marks and zero-width spaces are dropped; every I of a password with a lower-case letter
    ("FootbaII", {6, 7}), ("\u00dfI\u00df", {2}), ("\ufb01Io", {2}), ("\u01c4Io", {2}), ("\uff29ce", {0}),
    ("e\u0301Io", {1}), ("he\u200bIIo", {2, 3}), ("HELIOTROPE", set()), ("I 2026 x", {0}), ("ILoveYou", {0}),
    ("Iceland", {0}), ("ab1Iz", {3}), ("ABIcd", {2}), ("AB-I-cd", {3}), ("Ab1I", {3}), ("AB1I", set()),
    ("footba II 2026", {7, 8}), ("I\u0345", set()), ("\u00c9I", set()), ("\u00e9I", {1}),
])
def test_which_capital_i_reads_as_a_one_and_where(password, ones):
    """A capital I of a password with a lower-case letter reads as a 1, at its place in the folded text, which lengths
    changed by folding before it do not shift; only the common-password comparison reads it so."""
    folded = auth._folded(password)
    assert auth._capital_i_read_as_one(password, folded) == ones
    assert all(folded[k] == "i" for k in ones)


def test_a_capital_i_read_as_a_one_leaves_the_name_and_run_rules_alone():
    """The name and run rules read a capital I as the i it folds to, as before."""
    with pytest.raises(ValueError) as e:
        auth.check_password_strength("AlIce grows roses", "alice")
    assert str(e.value) == NAME_RULE
    with pytest.raises(ValueError) as e:
        auth.check_password_strength("gHIjklmn")
    assert str(e.value) == RUN_RULE
    auth.check_password_strength("Iceland in winter")  # no listed word reads so


@pytest.mark.parametrize("password", ["Pass\u0345word!", "pass\u0345word", "hel\u0345lo2026"])
def test_a_mark_that_case_folding_makes_a_letter_is_still_dropped(password):
    """U+0345, a combining mark (dropped, as accents are), folds to the letter iota (the premise, from unicodedata), so
    it was kept and split the word: "Pass\u0345word!" was accepted (found by a read-only review of the fourteenth
    review's fixes). Now it is refused with the sentence of the same password without the mark."""
    assert unicodedata.category("\u0345") == "Mn" and "\u0345".casefold() == "\u03b9"
    with pytest.raises(ValueError) as plain:
        auth.check_password_strength(password.replace("\u0345", ""))
    with pytest.raises(ValueError) as marked:
        auth.check_password_strength(password)
    assert str(marked.value) == str(plain.value)


@pytest.mark.parametrize("password", ["|etme|n!", "he||o123", "footba||", "|ove|y99", "he||o w0r|d"])
def test_a_bar_reads_as_a_one(password):
    """A | stands for an i or an l as a 1 does ("he||o" is "he11o", a spelling of "hello"); it was dropped as a mark,
    so these counted 8 and were accepted (found by a read-only review of the fourteenth review's fixes). The same
    passwords with a 1 for each | are refused by the rule too (the premise: the rule knows the word)."""
    with pytest.raises(ValueError) as as_ones:
        auth.check_password_strength(password.replace("|", "1"))
    with pytest.raises(ValueError) as as_bars:
        auth.check_password_strength(password)
    assert str(as_bars.value) == str(as_ones.value)


def test_the_password_boxes_of_all_an_accounts_sessions_share_one_more_counter():
    """Each signed-in session's boxes had their own counter only, so N sessions of an account (leaked, say) got N
    browsers' guesses there. Now the sessions of one account share one more counter under the same rule, which bars
    a session with a failure of its own: past its free failures in one session, another session that guessed is
    barred after its first failure, while a session that never failed (the owner's) is not, so a leaked session cannot
    lock the owner out of changing the password; another account is not touched; a right password, in a session or
    at the sign-in page, clears it; guesses at the sign-in page never count on it."""
    from app import sessions

    rule = sessions.ThrottleRule(free=2, base_s=60, max_s=60)

    def throttle():
        return sessions.LoginThrottle(per_ip=sessions.ThrottleRule(free=1000, base_s=1, max_s=1), per_account=rule,
                                      per_device=rule, monotonic=lambda: 0.0)

    t = throttle()
    for _ in range(10):  # the sign-in page: locks the account there, not the boxes
        t.failed("10.0.0.9", "alice")
    assert t.wait_s("10.0.0.9", "alice") > 0 and t.wait_s("10.0.0.7", "alice", session="1") == 0
    for _ in range(3):
        t.failed("10.0.0.7", "alice", session="1")
    assert t.wait_s("10.0.0.7", "alice", session="1") > 0
    assert t.wait_s("10.0.0.8", "alice", session="2") == 0  # the owner's session, no failure of its own: not barred
    t.failed("10.0.0.6", "alice", session="3")  # another leaked session: one guess, under its own free two
    assert t.wait_s("10.0.0.6", "alice", session="3") > 0  # barred by the shared counter
    assert t.wait_s("10.0.0.7", "bob", session="4") == 0
    t.succeeded("10.0.0.8", "alice", session="2")  # the right password, in the owner's session
    assert t.wait_s("10.0.0.6", "alice", session="3") == 0
    t = throttle()
    for _ in range(3):
        t.failed("10.0.0.7", "alice", session="1")
    t.failed("10.0.0.6", "alice", session="3")
    assert t.wait_s("10.0.0.6", "alice", session="3") > 0
    t.succeeded("10.0.0.8", "alice")  # the right password at the sign-in page
    assert t.wait_s("10.0.0.6", "alice", session="3") == 0


def test_refused_new_passwords_are_counted_per_session_and_an_unknown_name_is_no_refusal(ui_world, monkeypatch):
    """The refused new passwords were counted per account, so any session of it (a stolen one) could use them up and
    bar the owner's own change, the way to end that session; and a name that is no account's (an admin's typing slip
    on the Admin tab) counted as a refused new password though no rule ran. Now the count is the signed-in session's,
    and only the rules' refusals count."""
    from app import sessions

    f = ui_world.factory
    monkeypatch.setattr(auth, "NEW_PASSWORD_REFUSALS", auth.RefusedNewPasswords(free=3, window_s=60,
                                                                                monotonic=lambda: 0.0))
    throttle = sessions.LoginThrottle(monotonic=lambda: 0.0)
    alice = auth.identify(f, local_mode=False, username="alice", client_host="10.0.0.7")
    root = auth.identify(f, local_mode=False, username="root", client_host="10.0.0.7")

    def change(who, name, password, session):
        auth.change_password(f, who, name=name, password=password, current=UI_PASSWORD, throttle=throttle,
                             ip="10.0.0.7", session=session)

    for _ in range(3):
        with pytest.raises(ValueError, match="besides its runs"):
            change(alice, "alice", "abcdefgh1", "101")  # the stolen session
    with pytest.raises(auth.AuthError, match="too many refused new passwords"):
        change(alice, "alice", "abcdefgh1", "101")
    change(alice, "alice", "a fresh secret phrase", "102")  # the owner's session is not barred
    assert auth.check_login(f, "alice", "a fresh secret phrase").refusal is None
    for _ in range(5):
        with pytest.raises(ValueError, match="nobody"):
            change(root, "nobody", "a fresh secret phrase", "201")
    change(root, "bob", "another fresh phrase", "201")  # no refusal was counted
    assert auth.check_login(f, "bob", "another fresh phrase").refusal is None


def test_a_session_ended_while_its_check_reads_the_database_is_not_cached_as_valid(db_factory, monkeypatch):
    """A check that read a valid session from the database and then cached it overwrote an end (log out, disable,
    password change) that committed between the read and the cache's write: the ended session was served as valid
    from memory for up to recheck_s. The end is made to land right after the read (inside the lookup); the next
    check must say the session is gone, and a check with nothing ended meanwhile is still cached."""
    from app import sessions as sessions_mod
    from app.sessions import SessionStore

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    store = SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=3600)
    token, other = _session(db_factory, "alice"), _session(db_factory, "alice")
    find = repo.find_session
    lookups = []

    ending = []

    def find_then_end(*, session, token_sha256):
        row = find(session=session, token_sha256=token_sha256)
        if ending:
            return row  # the end's own lookup
        lookups.append(token_sha256)
        if len(lookups) == 1:
            ending.append(True)
            store.end(token)  # committed after the read, before the cache's write
            ending.clear()
        return row

    monkeypatch.setattr(sessions_mod.repo, "find_session", find_then_end)
    assert store.check(token) is not None  # as read: valid at that moment
    assert store.check(token) is None  # not served from memory: read again, ended
    assert len(lookups) == 2
    assert store.check(other) is not None and store.check(other) is not None
    assert len(lookups) == 3  # nothing ended meanwhile: the second check came from memory


def test_log_outs_of_other_tokens_do_not_stop_a_sessions_check_from_being_cached(db_factory, monkeypatch):
    """Every forgetting (each end, even of a token that is no session's, as anyone's POST /logout with a made-up
    cookie makes) stopped every check under way from caching what it read, so a stream of them sent every user's
    checks to the database. Now only a forgetting of the token being read (or of a rater's sessions, or of all) does:
    log outs of other tokens land inside the lookup, and the next check still comes from memory."""
    from app import sessions as sessions_mod
    from app.sessions import SessionStore

    auth.add_user(db_factory, name="alice", role="rater", password=PASSWORD)
    store = SessionStore(db_factory, idle_s=600, max_s=3600, recheck_s=3600)
    token = _session(db_factory, "alice")
    find = repo.find_session
    lookups = []
    ending = []

    def find_then_log_out_others(*, session, token_sha256):
        row = find(session=session, token_sha256=token_sha256)
        if ending:
            return row
        lookups.append(token_sha256)
        ending.append(True)
        for n in range(3):
            store.end(f"made-up-{n}")
        ending.clear()
        return row

    monkeypatch.setattr(sessions_mod.repo, "find_session", find_then_log_out_others)
    assert store.check(token) is not None
    assert store.check(token) is not None
    assert len(lookups) == 1  # the second check came from memory


# ---------------------------------------------------------------------------------------------
# fifteenth review (6 Dec 2026): a listed word's last letter written as a digit, the phrase rule's order
# ---------------------------------------------------------------------------------------------

# a digit or mark that reads as each letter (LEET_READS, and a 1 for an i or an l)
WRITTEN_AS = {letter: [c for c, read in LEET_READS.items() if read == letter] for letter in set(LEET_READS.values())}
WRITTEN_AS.update(i=["1"], l=["1"])


def test_a_listed_word_whose_last_letter_is_written_as_a_digit_is_a_common_password():
    """The digits and marks a password ends with were dropped before it was compared with the list, a word's own last
    letter with them when it was written as a digit or a mark: "footbal1" read "footbal", no common password (the
    phrase rule refused it in its own sentence, but "footbal1 2026" style spellings of other words could pass it).
    Every cut in those digits and marks is read now. By brute force over the shipped list: every listed word ending
    in l, written with a final 1, and every other whose last letter has a leet spelling, written with each, alone
    (when long enough) and with a year and a mark after it, is refused in the common password's sentence."""
    tried = 0
    l_words = [word for word in _common_entries() if word.endswith("l")]
    assert l_words  # football, baseball, ...
    for word in sorted(_common_entries()):
        for digit in WRITTEN_AS.get(word[-1], []):
            for password in (word[:-1] + digit, word[:-1] + digit + "2026!"):
                if len(password) < 8:
                    continue
                with pytest.raises(ValueError) as refused:
                    auth.check_password_strength(password)
                assert str(refused.value) == COMMON_RULE, (password, str(refused.value))
                assert _is_common_by_skeleton(password)
                tried += 1
    assert tried >= 2 * len(l_words) + 10
    with pytest.raises(ValueError, match="most commonly used"):
        auth.check_password_strength("footbal1")


@pytest.mark.parametrize("parts", [
    ("password", "dragon", "passworddragon"),
    ("summer", "winter", "summerwinter", "monkey"),
    ("passworddragon", "dragonmonkey", "monkeypassword"),  # pairs only, each sharing a word with another
    ("p4ssword", "dr4gon", "monkeydragon", "xq"),
    ("soccer", "hockeysoccer", "hockey", "soccerbatman", "zz"),
    ("dragonpassword", "monkeyshadow", "dragonmonkey"),  # the read-only review of that fix: 8 then, 6 from the left
    ("dragonpassword", "monkeyshadow", "passwordshadow"),
])
def test_the_phrase_rule_counts_the_same_whatever_order_its_parts_are_written_in(parts):
    """Fifteenth review: the stretches of listed words were counted from the left, so "passworddragon password dragon"
    counted 4 and "password dragon passworddragon" 6. Every order of each password's parts (joined by spaces) counts
    the same now, and what the brute force (every stretch tried, every order of them read) finds. Counted fewest
    listed words first, ties by their spelling, "dragonpassword monkeyshadow dragonmonkey" counted 8 and could be set,
    where reading from the left counted 6 and refused it, as it refused "... passwordshadow" (a read-only review)."""
    counts = set()
    for order in itertools.permutations(parts):
        password = " ".join(order)
        counts.add(auth._characters_left(auth._folded(password)))
        assert auth._characters_left(auth._folded(password)) == _counted_by_brute_force(password), password
    assert len(counts) == 1, (parts, counts)
    if len(parts) == 3 and "dragonpassword" in parts:
        assert counts == {6}
        with pytest.raises(ValueError) as refused:
            auth.check_password_strength(" ".join(parts))
        assert str(refused.value) == RUNS_RULE


def test_the_phrase_rule_counts_the_least_over_every_order_of_its_stretches():
    """A read-only review of the fifteenth review's order-independent count: taken fewest listed words first, ties by
    their spelling, the count hung on the spelling and could be more than reading from the left gave. The count of
    any family of stretches is now the least over every order in which they can be read: by brute force over every
    order of every family of up to 6 stretches, each holding 1 to 3 of 5 words (all seeded at random)."""
    rng = random.Random(15)
    words = ("password", "dragon", "monkey", "shadow", "soccer")
    for _ in range(300):
        held_by = [tuple(sorted(rng.sample(words, rng.randint(1, 3)))) for _ in range(rng.randint(1, 6))]
        assert auth._fewest_stretches(held_by) == _fewest_over_every_order(held_by), held_by


@pytest.mark.parametrize("links", [13, 16, 60])  # PHRASE_EXACT_MAX is 12
def test_many_linked_stretches_count_no_more_than_any_order_of_them(links):
    """Past PHRASE_EXACT_MAX linked stretches the count is a bound, never more than the least over every order: a
    chain of ``links`` stretches of two listed words each (word i with word i + 1, written backwards in their order
    so each is its own stretch between spaces), whose least over every order is known in closed form (every other
    stretch read first, and the last: ceil((links + 1) / 2)), counts no more than that; 60 such (about 900 characters,
    near MAX_PASSWORD_LENGTH) are answered."""
    words = ["password", "dragon", "monkey", "shadow", "soccer", "hockey", "batman", "summer", "winter", "flower",
             "secret", "master", "access", "freedom", "mustang", "welcome", "charlie", "default", "testing", "pokemon",
             "princess", "michael", "internet", "jennifer", "computer", "football", "baseball", "sunshine",
             "superman", "starwars", "whatever", "trustno", "minecraft", "chocolate", "changeme", "letmein", "lovely"]
    chain = [words[i % len(words)] + words[(i + 1) % len(words)] for i in range(links)]
    password = " ".join(chain)[:auth.MAX_PASSWORD_LENGTH]
    stretches = min(links, len(words))  # past len(words) links the chain closes on itself: a loop, ceil(n / 2)
    least = -(-(stretches + (links < len(words))) // 2)
    counted = auth._characters_left(auth._folded(password))
    assert counted <= password.count(" ") + 2 * least, (links, counted)
    assert counted >= password.count(" ") + 2  # one stretch at least
