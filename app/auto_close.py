"""Close a round by itself once its budget is rated (the experiment option ``auto_close``, app.experiment_options).

After every rating and skip (the page's and the API's ``submit_rating``) ``after_rating`` checks the rated image's round:
when the experiment asks for it, is active, and the round has every rating it wants (images x overlap), the round
is closed through ``repo.close_round``, the code the admin's "Close round and train" button runs, with an audit
entry (actor ``auto-close``) in the same transaction.

Exactly once: ``repo.close_round`` locks the round before it checks that it is still open for labeling, so when
several raters give the last ratings at the same moment, one transaction closes it and the others find it closed
(their Conflict is recognised as that and nothing more happens). Off (the default), nothing is ever closed here.

A round the admin reopened (``repo.reopen_round`` records ``reopened_at`` in its metrics) is never closed here: one
reopened to correct ratings is fully rated already, so the first correction would close it again and the next one
be refused. The admin closes a reopened round, whatever it was reopened for.
"""

from __future__ import annotations

import logging

from app import experiment_options
from db import repo
from db.engine import read_session, write_session
from db.errors import Conflict

log = logging.getLogger("seiko.auto_close")

ACTOR = "auto-close"


def round_complete(session, round_) -> bool:
    from app import pairwise  # issue 14 item 1: with comparisons only, a round's labels are pair votes

    experiment = repo.get_experiment(session=session, experiment_id=round_.experiment_id)
    if pairwise.feedback_of(experiment) == "pairs":
        labels, wanted = pairwise.round_vote_labels(session, round_.id, experiment.overlap)
        return wanted > 0 and labels >= wanted
    p = repo.round_progress(session=session, round_id=round_.id, kind="query")
    return p.labels_wanted > 0 and p.labels >= p.labels_wanted


def maybe_close(factory, experiment_id: int, round_index: int) -> int | None:
    """Close round ``round_index`` if the experiment auto-closes and the round is fully rated; returns the train
    job's id, or None when nothing was closed (off, not complete, paused, or another request closed it first)."""
    with read_session(factory) as s:
        experiment = repo.get_experiment(session=s, experiment_id=experiment_id)
        if not experiment_options.of(experiment).auto_close or experiment.status != "active":
            return None
        round_ = repo.get_open_round(session=s, experiment_id=experiment_id)
        if round_ is None or round_.index != round_index or (round_.metrics or {}).get("reopened_at") \
                or not round_complete(s, round_):
            return None
        round_id = round_.id
    try:
        with write_session(factory) as s:
            # checked again under the round's lock: an admin may have paused the experiment, or closed and reopened
            # this round, since the read above (a reopened round is the admin's to close; found by review)
            # the experiment before its round, as close_round and Finish lock them (the other order could deadlock
            # with a Finish on PostgreSQL)
            experiment = repo.lock_experiment(session=s, experiment_id=experiment_id)
            round_ = repo.lock_round(session=s, round_id=round_id)
            if not experiment_options.of(experiment).auto_close or experiment.status != "active" \
                    or round_.status != "labeling" or (round_.metrics or {}).get("reopened_at") or not round_complete(s, round_):
                return None  # the option too: an admin may have turned auto-close off since the read (found by review)
            job = repo.close_round(session=s, experiment_id=experiment_id, expected_index=round_index)
            job_id = job.id
            repo.add_audit(session=s, actor_id=None, actor_name=ACTOR, action="round.close",
                           target=f"experiment {experiment_id}", detail={"round": round_index, "job_id": job_id,
                                                                         "reason": "budget rated"})
    except Conflict:
        with read_session(factory) as s:
            round_ = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=round_index)
            if round_.status == "labeling":
                raise  # not the race with another closer: a real refusal
        return None  # another rating's request (or an admin) closed it first
    log.info("round %d of experiment %d had every rating it wants; closed it (train job %d)", round_index, experiment_id, job_id)
    return job_id


def after_rating(factory, image_id: int) -> int | None:
    """``maybe_close`` for the round of the image just rated. A failure is logged with its traceback and does not
    undo the rating (it is already committed); the admin can still close the round by hand."""
    try:
        with read_session(factory) as s:
            image = repo.get_image(session=s, image_id=image_id)
            round_ = repo.get_round(session=s, round_id=image.round_id)
            experiment_id, index = round_.experiment_id, round_.index
        return maybe_close(factory, experiment_id, index)
    except Exception:
        log.exception("auto-close after the rating of image %d failed; the rating is saved, close the round by hand", image_id)
        return None


def after_raters_changed(factory) -> list[int]:
    """``maybe_close`` for every active experiment's open round, after an account was disabled or deleted: fewer
    enabled raters lower the ratings a round wants, so the round may be complete now with nobody rating (found by
    review). Returns the train jobs' ids; a failure is logged and the admin can close the round by hand."""
    closed = []
    try:
        with read_session(factory) as s:
            open_rounds = [(e.id, r.index) for e in repo.list_experiments(session=s, status="active")
                           if (r := repo.get_open_round(session=s, experiment_id=e.id)) is not None]
    except Exception:  # the account change has committed: it is not reported as failed for this (found by review)
        log.exception("auto-close after an account change could not read the open rounds; close them by hand")
        return closed
    for experiment_id, index in open_rounds:
        try:
            if (job_id := maybe_close(factory, experiment_id, index)) is not None:
                closed.append(job_id)
        except Exception:
            log.exception("auto-close of round %d of experiment %d after an account change failed; close it by hand",
                          index, experiment_id)
    return closed
