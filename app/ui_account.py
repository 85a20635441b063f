"""The Account tab: anyone signed in (a rater or an admin) changes their own password there.

Raters could not change their password on the web (only an admin could, on the Admin tab; found by the twelfth review
of 6 Dec 2026). The change goes through ``auth.change_password``, the Admin tab's own path: the new password meets the
same rules (``auth.check_password_strength``), the current one is checked and counted as a sign-in by the web guard's
throttle (a wrong one is a failed sign-in of the account and the address, so this form guesses no faster than the
sign-in page), and on success every session of the account ends, this one too, as when an admin sets a password. The
account is the signed-in one, read on the server: the form takes no name, so nobody changes another's password here.
In local mode (no accounts) the tab is hidden; the handler refuses there too.

The new password is typed twice ("New password", "Repeat new password"): a typing slip in it left the user signed out
of every session with a password they did not know (twelfth review). The two are compared on the server before
anything else is checked, so a mismatch costs no guess and changes nothing. On success the sentence links to the
sign-in page ("/", as after a log out): the page's own session has ended, and its next action would only be refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from app import auth, ui_admin, web_guard
from app.auth import Who
from app.sessions import LoginThrottle
from db.errors import InvalidInput

LOCAL_MODE_REFUSAL = ("in local mode there are no accounts, so there is no password to change; accounts are added "
                      "with python -m app users add")
REPEAT_DIFFERS = ("the new password and \"Repeat new password\" differ (a typing slip?), so nothing was changed: type "
                  "the same new password in both")
CHANGED = ("Your password is changed. Every session of yours has ended, this one too: sign in again with the new "
           "password.")
# the form's result (Markdown): the same sentence, its "sign in again" a link to the sign-in page (a signed-out "/",
# where a log out lands too)
CHANGED_SIGN_IN = ("Your password is changed. Every session of yours has ended, this one too: [sign in again](/) with "
                   "the new password.")

# the page's step after a change (``build``): a full load of "/", the sign-in page once the session has ended
SIGN_IN_AGAIN_JS = "() => { setTimeout(() => window.location.assign('/'), 3000); }"


def check_repeated(new: Any, repeat: Any) -> None:
    """Refuse (one sentence) a new password whose "Repeat new password" differs: both forms check it first."""
    if (new if isinstance(new, str) else "") != (repeat if isinstance(repeat, str) else ""):
        raise InvalidInput(REPEAT_DIFFERS)


def change_own_password(factory, who: Who, current: Any, new: Any, repeat: Any, *,
                        throttle: LoginThrottle | None = None, ip: str | None = None, session: str | None = None) -> str:
    """Change the signed-in ``who``'s own password to ``new``, once ``current`` proved to be it (``auth.change_password``
    with the account ``who.name``: the rules, the sign-in ``throttle`` from ``ip``, every session of the account ended).
    ``repeat`` (the "Repeat new password" box) must be ``new`` again, checked before anything else: a mismatch is
    refused and costs no guess. Without a guard in front (a handler called as a function) the Admin tab's stand-in
    throttle counts. ``session``: the signed-in session the request runs as (``auth.confirm_own_password``)."""
    check_repeated(new, repeat)
    if who.local:
        raise InvalidInput(LOCAL_MODE_REFUSAL)
    auth.change_password(factory, who, name=who.name, password=new if isinstance(new, str) else "", current=current,
                         throttle=throttle or ui_admin.THROTTLE_WITHOUT_GUARD, ip=ip, own_form=True, session=session)
    return CHANGED


class AccountHandlers:
    """The Account tab's event handler. ``who_of(request)`` finds the signed-in rater (gr.Error when refused),
    ``shown(fn)`` turns a refusal into a gr.Error. Looked up by name in tests (``demo.fns``): keep the name."""

    def __init__(self, services, who_of: Callable[[Any], Who], shown: Callable[[Callable[[], Any]], Any]):
        self.factory, self.who_of, self.shown = services.factory, who_of, shown

    def on_own_password(self, current, new, repeat, request: gr.Request = None):
        """Change the caller's own password (not admin-only: every account has one). The boxes are emptied once it
        is changed, and the result links to the sign-in page; a refusal (gr.Error, one sentence) leaves them as typed
        and changes nothing."""
        who = self.who_of(request)
        self.shown(lambda: change_own_password(
            self.factory, who, current, new, repeat, throttle=web_guard.sign_in_throttle(request),
            ip=web_guard.client_address(request), session=web_guard.signed_in_session(request)))
        gr.Info(CHANGED)  # a toast shows no link
        return CHANGED_SIGN_IN, "", "", ""


@dataclass(frozen=True)
class AccountTab:
    tab: Any  # gr.Tab: hidden until the page load shows it (with accounts)


def build(services, who_of: Callable, shown: Callable, private: dict[str, Any]) -> AccountTab:
    """The Account tab (call inside ``gr.Tabs()``), its event wired to an ``AccountHandlers``."""
    h = AccountHandlers(services, who_of, shown)
    with gr.Tab("Account", id="account", elem_id="tab-account", visible=False) as tab:
        gr.Markdown("Change your password: type your current password and the new one, twice. The new one needs "
                    f"{auth.MIN_PASSWORD_LENGTH}+ characters, and may not be your name, a run such as 12345678 or "
                    "mostly one, or a common password. Once it is changed, every session of yours ends, this one "
                    "too, and you sign in again with it. A wrong current password counts as a failed sign-in.")
        current = gr.Textbox(label="Current password", type="password", elem_id="current-password")
        new = gr.Textbox(label=f"New password ({auth.MIN_PASSWORD_LENGTH}+ characters)", type="password",
                         elem_id="own-new-password")
        repeat = gr.Textbox(label="Repeat new password", type="password", elem_id="own-repeat-password")
        change_btn = gr.Button("Change my password", scale=0, min_width=200, elem_id="change-own-password")
        result = gr.Markdown(elem_id="own-password-result")
    # one at a time, as the Admin tab's "Set password": each runs a scrypt hash or two
    changed = change_btn.click(h.on_own_password, [current, new, repeat], [result, current, new, repeat], **private,
                               concurrency_limit=1)
    # changed: this page's session has ended (its next action would only be refused), so after a moment to read the
    # sentence the page goes to the sign-in page, as a log out does (the sentence's link goes there too)
    changed.success(None, js=SIGN_IN_AGAIN_JS, **private)
    return AccountTab(tab=tab)
