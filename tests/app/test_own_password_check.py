"""The Admin tab's "Your password" (``auth.confirm_own_password``, through ``ui_admin.set_user_password``) is the acting
admin's own password, not any account's: checked with accounts whose passwords differ (twelfth review)."""

from __future__ import annotations

import pytest

from app import auth, sessions, ui_admin

PASSWORDS = {"root": "first long phrase", "alice": "second long phrase", "bob": "third long phrase"}
NEW = "a fresh secret phrase"


def test_your_password_must_be_the_acting_admins_own_not_the_targets_nor_another_accounts(ui_world):
    """Every ui_world account has the same password, so the tests of the eleventh review could not tell the acting
    admin's password from the target's or another account's: checking the target account's password, or any
    account's, passed them all. Here each account has its own: root (admin) giving bob's password (the target's, a
    rater's) or alice's (another admin's) is refused and nothing changes; alice giving root's is refused; each admin's
    own sets it."""
    f = ui_world.factory
    auth.set_role(f, name="alice", role="admin")
    for name, password in PASSWORDS.items():
        auth.set_password(f, name=name, password=password)
    root = auth.identify(f, local_mode=False, username="root", client_host="10.0.0.7")
    alice = auth.identify(f, local_mode=False, username="alice", client_host="10.0.0.7")
    throttle = sessions.LoginThrottle(monotonic=lambda: 0.0)
    for actor, target, given in ((root, "bob", PASSWORDS["bob"]), (root, "bob", PASSWORDS["alice"]),
                                 (root, "alice", PASSWORDS["alice"]), (alice, "root", PASSWORDS["root"]),
                                 (alice, "bob", PASSWORDS["bob"])):
        with pytest.raises(auth.AuthError) as refused:
            ui_admin.set_user_password(f, actor, target, NEW, given, throttle=throttle, ip="10.0.0.7")
        assert str(refused.value) == auth.YOUR_PASSWORD_WRONG, (actor.name, target, given)
    for name, password in PASSWORDS.items():  # nothing changed
        assert auth.check_login(f, name, password).refusal is None, name
    assert "new password" in ui_admin.set_user_password(f, root, "bob", NEW, PASSWORDS["root"], throttle=throttle,
                                                        ip="10.0.0.7")
    assert "new password" in ui_admin.set_user_password(f, alice, "root", NEW, PASSWORDS["alice"], throttle=throttle,
                                                        ip="10.0.0.7")
    assert auth.check_login(f, "bob", NEW).refusal is None and auth.check_login(f, "root", NEW).refusal is None


def test_a_slip_in_the_account_or_the_new_password_is_refused_before_your_password_costs_a_guess(ui_world):
    """``set_user_password`` checks the account and the new password (``auth.check_new_password``) before "Your
    password" (eleventh review: "a typing slip there costs no guess"), but no test could fail without that check
    (``set_password`` refuses both later anyway): taken away, a too-short new password or a mistyped account with a
    wrong own password was a failed sign-in of the admin, and with the right one a sign-in success. Here the admin's
    account locks at its first counted failure: neither slip is counted nor audited as a refused own password, and the
    admin can still sign in."""
    f = ui_world.factory
    root = auth.identify(f, local_mode=False, username="root", client_host="10.0.0.7")
    throttle = sessions.LoginThrottle(per_ip=sessions.ThrottleRule(free=1000, base_s=1, max_s=1),
                                      per_account=sessions.ThrottleRule(free=0, base_s=60, max_s=600),
                                      monotonic=lambda: 0.0)
    for target, new, said in (("bob", "short", "at least 8"), ("nobody-here", NEW, "nobody-here")):
        for given in ("a wrong guess", None):
            with pytest.raises((ValueError, auth.AuthError), match=said):
                ui_admin.set_user_password(f, root, target, new, given, throttle=throttle, ip="10.0.0.7")
    assert throttle.wait_s("10.0.0.7", "root") == 0  # nothing counted
    assert [e for e in auth.list_audit(f) if e.action == "user.password.refused"] == []
    with pytest.raises(auth.AuthError, match="is not yours"):  # a real wrong guess is counted, and locks at once
        ui_admin.set_user_password(f, root, "bob", NEW, "a wrong guess", throttle=throttle, ip="10.0.0.7")
    assert throttle.wait_s("10.0.0.7", "root") == 60
