"""Who rates which experiment: an experiment is open to every rater (the default) or limited to the accounts an admin
lists (``db.members``, migration 0015). Admins may rate every experiment.

Checked on the server wherever a rater reads or writes an experiment's items (``check``): the rating page's batch
and the API's ``next_batch``, rating, skipping, undoing, pair votes (the Pairs and Compare tabs and the API's
``next_pair`` / ``submit_comparison``) and the dashboard. A rater who is not listed gets one sentence
(``NotARater``) and nothing is written; the experiment selector shows a rater only the experiments they may rate.
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

EVERYONE = "everyone"
NONE_FOR_YOU = "There is no experiment you may rate yet; an admin can add you."


class NotARater(Conflict):
    """The rater is not listed for an experiment whose raters are limited."""


def refusal(experiment_id: int) -> str:
    return f"You are not a rater of experiment {experiment_id}; an admin can add you."


def may_rate(session: Session, who: Who, experiment_id: int) -> bool:
    """Whether ``who`` may rate experiment ``experiment_id``: an admin, or a rater the experiment allows."""
    return who.is_admin or db_members.listed(session=session, experiment_id=experiment_id, rater_id=who.rater_id)


def check(session: Session, who: Who, experiment_id: int) -> None:
    """Raise ``NotARater`` (one sentence) unless ``who`` may rate experiment ``experiment_id``."""
    if not may_rate(session, who, experiment_id):
        raise NotARater(refusal(experiment_id))


def may_rate_id(factory, who: Who, experiment_id: int | None) -> bool:
    """``may_rate`` in a read transaction of its own; an experiment id of None (no experiment) is allowed."""
    if experiment_id is None or who.is_admin:
        return True
    with read_session(factory) as s:
        return may_rate(s, who, experiment_id)


def parse_names(text: Any) -> list[str] | None:
    """The admin's field: empty or ``everyone`` -> None (every rater); else account names separated by commas or new
    lines."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise InvalidInput(f"raters are account names separated by commas, or 'everyone', got {text!r}")
    names = [n.strip() for n in text.replace("\n", ",").split(",") if n.strip()]
    if not names or (len(names) == 1 and names[0].lower() == EVERYONE):
        return None
    return list(dict.fromkeys(names))


def set_raters(factory, who: Who | None, experiment_id: int, names: list[str] | None) -> str:
    """An admin (``who``; None: the command line, ``python -m app users raters``) opens experiment ``experiment_id``
    to every rater (``names`` None) or limits it to the named accounts; recorded in the audit log
    ("experiment.raters") in the same transaction. Unknown names are refused, changing nothing."""
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
                   raters=EVERYONE if names is None else names)
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
    """The admin field's value for an experiment: ``everyone``, or its accounts' names separated by commas."""
    if experiment_id is None:
        return EVERYONE
    with read_session(factory) as s:
        ids = db_members.rater_ids(session=s, experiment_id=experiment_id)
        if ids is None:
            return EVERYONE
        return ", ".join(repo.get_rater(session=s, rater_id=i).name for i in ids)
