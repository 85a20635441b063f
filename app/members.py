"""Who rates which experiment: an experiment is open to every rater (the default) or limited to the accounts an admin
lists (``db.members``, migration 0015). Admins may rate every experiment.

Checked on the server wherever a rater reads or writes an experiment's items (``check``): the rating page's batch
and the API's ``next_batch``, rating, skipping, undoing, pair votes (the Pairs and Compare tabs and the API's
``next_pair`` / ``submit_comparison``) and the dashboard. A rater who is not listed gets one sentence (``NotARater``,
or where they would learn of the experiment that way the sentence for one that does not exist: ``check``'s
``unknown``, ``PAGE_EXPERIMENT_GONE``) and nothing is written; the experiment selector shows a rater only the
experiments they may rate. A write checks before the experiment's share lock and again under it (``share``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from app import auth
from app.auth import Who, require_admin
from db import members as db_members
from db import repo
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput, NotFound
from db.models import Experiment

EVERYONE = "everyone"
ADMINS = "admins"  # the admin's field and the command line: only admins may rate the experiment
NONE_FOR_YOU = "There is no experiment you may rate yet; an admin can add you."


# what the Pairs and Compare tabs answer when the experiment the page holds (its server-side state) names none the
# rater may rate: one that does not exist, and one an admin took them off (or made admins-only) while the page was
# open. One sentence for both, with no name and no id: it said "You are not a rater of experiment N" where one that
# does not exist got "There is no experiment with id N", so a rater not listed learned it exists (sixth review)
PAGE_EXPERIMENT_GONE = "This page's experiment does not exist (any more); pick one in the Experiment list."


class NotARater(Conflict):
    """The rater is not listed for an experiment whose raters are limited."""


def refusal(experiment_id: int) -> str:
    return f"You are not a rater of experiment {experiment_id}; an admin can add you."


def may_rate(session: Session, who: Who, experiment_id: int) -> bool:
    """Whether ``who`` may rate experiment ``experiment_id``: an admin, or a rater the experiment allows."""
    return who.is_admin or db_members.listed(session=session, experiment_id=experiment_id, rater_id=who.rater_id)


def check(session: Session, who: Who, experiment_id: int, *, unknown: str | None = None) -> None:
    """Raise ``NotARater`` (one sentence) unless ``who`` may rate experiment ``experiment_id``. With ``unknown`` (the
    sentence for a target that does not exist, as the rater named it: ``repo.no_image_with_id`` ...) a rater the
    experiment does not list gets that as a ``NotFound`` instead: where they named the experiment, an image or a pair
    themselves, the refusal told them it exists, its experiment's id and which image ids are its (found by the fifth
    review). Admins may rate every experiment, so they keep every full sentence."""
    if not may_rate(session, who, experiment_id):
        if unknown is not None:
            raise NotFound(unknown)
        raise NotARater(refusal(experiment_id))


def share(session: Session, who: Who, experiment_id: int, *, unknown: str | None = None) -> Experiment:
    """The experiment's row shared for a write of ``who``'s (``repo.share_experiment``), ``check``-ed (with
    ``unknown``) before the lock and again under it: a rater not listed is refused at once, never waiting on an
    admin's change in flight (the wait told an experiment hidden from them from one that does not exist; sixth
    review), and one listed is checked again once the change has committed."""
    return repo.share_experiment(session=session, experiment_id=experiment_id,
                                 check=lambda exp_id: check(session, who, exp_id, unknown=unknown))


def may_rate_id(factory, who: Who, experiment_id: int | None) -> bool:
    """``may_rate`` in a read transaction of its own; an experiment id of None (no experiment) is allowed."""
    if experiment_id is None or who.is_admin:
        return True
    with read_session(factory) as s:
        return may_rate(s, who, experiment_id)


def parse_names(text: Any) -> list[str] | None:
    """The admin's field (and the command line's words, joined by commas): empty or ``everyone`` -> None (every
    rater); ``admins`` -> [] (only admins may rate it); else account names separated by commas or new lines. Either
    word (in any case) mixed with names is refused: ``admins, alice`` could mean alice and the admins, or a slip
    (found by the fifth review, when 'admins only' could not be set at all)."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidInput(f"raters are account names separated by commas, 'everyone' or 'admins', got {text!r}")
    names = [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]
    words = [n for n in names if n.lower() in (EVERYONE, ADMINS)]
    if words and len(names) > 1:
        raise InvalidInput(f"{words[0]!r} stands alone: give 'everyone', 'admins' (only admins may rate), or the "
                           "accounts' names, not a mix; nothing was changed")
    if not names or names[0].lower() == EVERYONE:
        return None
    if names[0].lower() == ADMINS:
        return []
    return list(dict.fromkeys(names))


def set_raters(factory, who: Who | None, experiment_id: int, names: list[str] | None) -> str:
    """An admin (``who``; None: the command line, ``python -m app users raters``) opens experiment ``experiment_id``
    to every rater (``names`` None), limits it to the named accounts, or to admins only (``names`` empty); recorded
    in the audit log ("experiment.raters": ``everyone``, ``admins`` or the names) in the same transaction. Unknown
    names are refused, changing nothing."""
    if who is not None:
        require_admin(who)
    with write_session(factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=experiment_id)
        ids = None
        if names is not None:
            ids = []
            for name in names:
                try:
                    ids.append(repo.get_rater_by_name(session=s, name=name).id)
                except NotFound as e:
                    raise NotFound(f"there is no account named {name!r}; nothing was changed") from e
        db_members.set_raters(session=s, experiment_id=experiment_id, rater_ids=ids)
        auth.audit(s, who, "experiment.raters", f"experiment {experiment_id}",
                   raters=EVERYONE if names is None else names or ADMINS)
        exp_name = experiment.name
    # fewer accounts that may rate it want fewer ratings (db.repo.can_still_rate): its round may be complete now
    from app import auto_close

    auto_close.after_raters_changed(factory)
    if names is None:
        return f"Every rater may now rate experiment {exp_name!r}."
    if not names:
        return f"Only admins may now rate experiment {exp_name!r}."
    return f"Only {', '.join(names)} (and admins) may now rate experiment {exp_name!r}."


def raters_text(factory, experiment_id: int | None) -> str:
    """The admin field's value for an experiment: ``everyone``, ``admins`` (no account listed: only admins may rate
    it), or its accounts' names separated by commas. It is read back by ``parse_names`` as the same setting: an
    admins-only experiment showed an empty field, which set it back to every rater (fifth review)."""
    if experiment_id is None:
        return EVERYONE
    with read_session(factory) as s:
        ids = db_members.rater_ids(session=s, experiment_id=experiment_id)
        if ids is None:
            return EVERYONE
        if not ids:
            return ADMINS
        return ", ".join(repo.get_rater(session=s, rater_id=i).name for i in ids)
