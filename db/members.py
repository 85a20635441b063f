"""Who may rate an experiment (migration 0015): every rater (``Experiment.raters_limited`` False, the default and
every experiment made before 0015), or only the accounts listed in ``experiment_raters``. Admins may rate every
experiment; that rule is the app's (``app.members``), these functions read and write the list only."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from db import repo
from db.checks import findable_id
from db.errors import InvalidInput, NotFound
from db.models import Experiment, ExperimentRater, Rater


def listed(*, session: Session, experiment_id: int, rater_id: int) -> bool:
    """Whether rater ``rater_id`` may rate experiment ``experiment_id`` by the list: the experiment is open to every
    rater, or the rater is listed. False for an unknown experiment."""
    experiment = session.get(Experiment, experiment_id) if findable_id(experiment_id) else None
    if experiment is None:
        return False
    if not experiment.raters_limited:
        return True
    return session.scalar(select(ExperimentRater.rater_id).where(ExperimentRater.experiment_id == experiment_id,
                                                                 ExperimentRater.rater_id == rater_id)) is not None


def rater_ids(*, session: Session, experiment_id: int) -> list[int] | None:
    """The ids of the accounts listed for the experiment, oldest account first; None when every rater may rate it."""
    experiment = repo.get_experiment(session=session, experiment_id=experiment_id)
    if not experiment.raters_limited:
        return None
    return list(session.scalars(select(ExperimentRater.rater_id).where(ExperimentRater.experiment_id == experiment_id)
                                .order_by(ExperimentRater.rater_id)))


def set_raters(*, session: Session, experiment_id: int, rater_ids: Sequence[int] | None) -> Experiment:
    """Open the experiment to every rater (``rater_ids`` None: the list is emptied) or limit it to ``rater_ids``
    (each an existing account; an empty list leaves it to admins). Replaces the list as a whole."""
    experiment = repo.lock_experiment(session=session, experiment_id=experiment_id)
    ids: list[int] = []
    if rater_ids is not None:
        for rater_id in rater_ids:
            if isinstance(rater_id, bool) or not isinstance(rater_id, int):
                raise InvalidInput(f"a rater is named by the id of an account, got {rater_id!r}")
            if (session.get(Rater, rater_id) if findable_id(rater_id) else None) is None:
                raise NotFound(f"there is no account with id {rater_id}")
            if rater_id not in ids:
                ids.append(rater_id)
    session.execute(delete(ExperimentRater).where(ExperimentRater.experiment_id == experiment_id))
    experiment.raters_limited = rater_ids is not None
    session.add_all(ExperimentRater(experiment_id=experiment_id, rater_id=rater_id) for rater_id in ids)
    session.flush()
    # an account taken off gives its live leases back now, in this transaction (the experiment's row is held, so no
    # batch is handed out meanwhile: app.ui_rate.draw_batch shares it): its images go to the others at once
    repo.release_leases_of_others(session=session, experiment_id=experiment_id)
    return experiment
