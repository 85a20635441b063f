"""Administration: experiments, rounds, pausing, recovery, users. Every function checks the admin role itself.

Recovery (issue 13): closing a round is asked first (``close_question``, then ``close_round`` with the round the
admin confirmed); a failed job can be retried, a round closed for training reopened for labeling, an experiment
finished or archived. Each of these writes an entry in the audit log, in the same transaction as the change.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from app import auth, auto_close, services
from app.auth import Who, require_admin
from app.sessions import LoginThrottle
from app.ui_rate import pick_experiment
from db import jobs as job_queue
from db import repo
from db.checks import MAX_ID, shown, whole_number
from db.engine import read_session, write_session
from db.errors import Conflict, InvalidInput
from seiko_core.config import METHODS
from seiko_core.presets import PRESETS, preset

AGGREGATIONS = ("mean", "max", "softmax", "ucb_heads", "thompson")
METHOD_DEFAULT = "(the method's default)"


@dataclass(frozen=True)
class ExperimentForm:
    """The create-experiment form's raw values (strings and numbers from the page)."""

    name: str
    preset: str = "shapes"
    model: str = ""
    method: str = ""
    budgets: str = ""
    prompts: str = ""
    aggregation: str = METHOD_DEFAULT
    kl_weight: float | str | None = None
    overlap: float | int | None = 1
    epochs: float | int | None = None  # fine-tuning epochs per round; None: the preset's
    max_seconds: float | int | None = None  # fine-tuning time limit per round in seconds; 0: none; None: the preset's


def preset_defaults(name: str) -> dict[str, Any]:
    """What the form shows for a preset: method, budgets, prompts, aggregation, KL weight, the fine-tuning's epochs
    per round, its time limit per round (0: none) and what one epoch is in optimiser steps."""
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    cfg = preset(name)
    ft = cfg.finetune
    return {"method": cfg.method, "budgets": ", ".join(str(b) for b in cfg.budgets), "prompts": "\n".join(cfg.prompts),
            "aggregation": cfg.optimism.aggregation, "kl_weight": ft.kl_weight, "epochs": ft.epochs,
            "max_seconds": ft.max_seconds or 0,
            "steps_per_epoch": ft.steps_per_epoch()}


def _budgets(text: str) -> tuple[int, ...] | None:
    text = (text or "").strip()
    if not text:
        return None
    out = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        if not part:
            continue
        budget = whole_number(part)
        if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_ID:
            raise InvalidInput(f"budgets must be positive whole numbers separated by commas, e.g. '32, 32, 64'; "
                               f"got {shown(part)}")
        out.append(budget)
    return tuple(out)


def _whole(what: str, value: Any, minimum: int) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInput(f"{what} must be a whole number of at least {minimum}, got {value!r}")
    return value


def spec_from_form(form: ExperimentForm) -> services.ExperimentSpec:
    name = (form.name or "").strip()
    if not name:
        raise InvalidInput("give the experiment a name")
    if form.method and form.method not in METHODS:
        raise InvalidInput(f"unknown method {form.method!r}; choose from {sorted(METHODS)}")
    aggregation = None if form.aggregation in (None, "", METHOD_DEFAULT) else form.aggregation
    if aggregation is not None and aggregation not in AGGREGATIONS:
        raise InvalidInput(f"unknown aggregation {aggregation!r}; choose from {list(AGGREGATIONS)}")
    kl = form.kl_weight
    if isinstance(kl, str):
        kl = float(kl) if kl.strip() else None
    if kl is not None and (kl < 0 or kl != kl):
        raise InvalidInput(f"the KL weight must be zero or positive, got {kl}")
    prompts = tuple(p.strip() for p in (form.prompts or "").splitlines() if p.strip()) or None
    epochs = None if form.epochs is None else _whole("fine-tuning epochs per round", form.epochs, 1)
    max_seconds = form.max_seconds
    if max_seconds is not None and (isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float))
                                    or not math.isfinite(max_seconds) or max_seconds < 0):
        raise InvalidInput(f"the fine-tuning time limit must be zero (none) or a positive number of seconds, got {max_seconds!r}")
    return services.ExperimentSpec(
        name=name, preset=form.preset, model_spec=(form.model or "").strip() or None, method=form.method or None,
        budgets=_budgets(form.budgets), prompts=prompts, overlap=_whole("overlap", form.overlap if form.overlap is not None else 1, 1),
        kl_weight=kl, aggregation=aggregation, finetune_epochs=epochs,
        finetune_max_seconds=None if max_seconds is None else float(max_seconds),
    )


def create_experiment(factory, who: Who, form: ExperimentForm, *, default_model: str) -> str:
    return create_experiment_with_id(factory, who, form, default_model=default_model)[0]


def create_experiment_with_id(factory, who: Who, form: ExperimentForm, *, default_model: str) -> tuple[str, int]:
    """(the sentence for the admin, the new experiment's id)."""
    require_admin(who)
    experiment_id = services.create_experiment(
        factory=factory, spec=spec_from_form(form), default_model=default_model,
        audit=lambda s, new_id: auth.audit(s, who, "experiment.create", f"experiment {new_id}", name=form.name.strip()))
    return f"Created experiment {form.name.strip()!r} (id {experiment_id}); the worker now generates round 0.", experiment_id


def _audit(session, who: Who, action: str, target: str, **detail: Any) -> None:
    repo.add_audit(session=session, actor_id=who.rater_id, actor_name=who.name, action=action, target=target,
                   detail=detail or None)


def close_question(factory, who: Who, experiment_id: int | None) -> tuple[str, int]:
    """What the admin is asked before a round is closed, and the index of the round the question is about."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with read_session(factory) as s:
        exp = repo.get_experiment(session=s, experiment_id=exp_id)
        round_ = repo.get_open_round(session=s, experiment_id=exp_id)
        if round_ is None:
            raise Conflict(f"experiment {exp.name!r} has no round open for labeling")
        from app import pairwise  # issue 14 item 1: with comparisons only, the labels are pair votes

        labels, wanted, what = pairwise.round_labels(s, exp, round_)
        return (f"Close round {round_.index} of {exp.name!r} and start training? It has {labels} of {wanted} "
                f"{what} wanted; raters can no longer rate it (you can reopen it until training starts).", round_.index)


def close_round(factory, who: Who, experiment_id: int | None, expected_index: int | None = None) -> str:
    """Close the open round and queue its training; with ``expected_index`` (the round the admin confirmed), another
    open round is refused."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with write_session(factory) as s:
        job = repo.close_round(session=s, experiment_id=exp_id, expected_index=expected_index)
        job_id, index = job.id, job.payload["round_index"]
        _audit(s, who, "round.close", f"experiment {exp_id}", round=index, job_id=job_id)
    return f"Round {index} closed; training job {job_id} is queued for the worker."


def set_paused(factory, who: Who, experiment_id: int | None, paused: bool) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with write_session(factory) as s:
        repo.set_experiment_status(session=s, experiment_id=exp_id, status="paused" if paused else "active")
        _audit(s, who, "experiment.pause" if paused else "experiment.resume", f"experiment {exp_id}")
    if paused:
        return "Experiment paused: the worker takes no new training until you resume."
    # a round whose budget was rated while paused has no later rating to close it by itself (auto-close runs after
    # a rating): look now
    with read_session(factory) as s:
        open_ = repo.get_open_round(session=s, experiment_id=exp_id)
        index = None if open_ is None else open_.index
    if index is not None and (job_id := auto_close.maybe_close(factory, exp_id, index)) is not None:
        return f"Experiment resumed. Round {index} had every rating it wants, so it was closed (training job {job_id})."
    return "Experiment resumed."


def _job_id(value: Any) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    value = whole_number(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise InvalidInput(f"a job id must be a positive whole number, got {shown(value)}")
    return value


def newest_failed_job(factory, experiment_id: int | None) -> int | None:
    """The newest failed job of the experiment that can still be retried (``db.jobs.retry_refusal``), or None.

    None for a finished experiment: ``db.jobs.retry_job`` refuses its jobs (the eval jobs that finishing it
    cancelled would otherwise match, their rounds being 'done')."""
    if experiment_id is None:
        return None
    with read_session(factory) as s:
        if repo.get_experiment(session=s, experiment_id=int(experiment_id)).status == "finished":
            return None
        for job in job_queue.list_jobs(session=s, status="failed", experiment_id=int(experiment_id), limit=20):
            if job_queue.retry_refusal(s, job) is None:  # what retry_job checks (a replaced job is not offered)
                return job.id
    return None


def retry_job(factory, who: Who, experiment_id: int | None, job_id: Any = None) -> str:
    """Queue a failed job of the experiment again (the newest retryable one when ``job_id`` is empty)."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    wanted = _job_id(job_id)
    if wanted is None:
        wanted = newest_failed_job(factory, exp_id)
        if wanted is None:
            raise Conflict("this experiment has no failed job waiting for a retry")
    with write_session(factory) as s:
        job = job_queue.get_job(session=s, job_id=wanted)
        if job.experiment_id != exp_id:
            raise Conflict(f"job {wanted} belongs to another experiment; choose that experiment first")
        job = job_queue.retry_job(session=s, job_id=wanted)
        kind = job.kind
        _audit(s, who, "job.retry", f"job {wanted}", experiment_id=exp_id, kind=kind)
    return f"Job {wanted} ({kind}) is queued again with all its attempts; the worker picks it up next."


def running_job(factory, experiment_id: int, job_id: Any = None) -> tuple[int, str, str | None]:
    """(id, kind, worker) of the experiment's running job: ``job_id``'s, or its only running one when empty."""
    wanted = _job_id(job_id)
    with read_session(factory) as s:
        if wanted is None:
            running = job_queue.list_jobs(session=s, status="running", experiment_id=experiment_id, limit=2)
            if not running:
                raise Conflict("this experiment has no running job")
            if len(running) > 1:
                raise Conflict(f"this experiment has {len(running)} running jobs; give the id of the one to stop")
            job = running[0]
        else:
            job = job_queue.get_job(session=s, job_id=wanted)
            if job.experiment_id != experiment_id:
                raise Conflict(f"job {wanted} belongs to another experiment; choose that experiment first")
            if job.status != "running":
                raise Conflict(f"job {wanted} is {job.status}, not running; only a running job can be stopped")
        return job.id, job.kind, job.lease_owner


def stop_question(factory, who: Who, experiment_id: int | None, job_id: Any = None) -> tuple[str, tuple[int, str | None]]:
    """(the question the Stop button asks, (the job it is about, the worker running it))."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    jid, kind, worker = running_job(factory, exp_id, job_id)
    return (f"Stop job {jid} ({kind}), which worker {worker!r} is running? It is marked failed and its work so far is "
            "lost; retry it, or reopen its round, afterwards. A worker that hangs stays hung: restart it too.",
            (jid, worker))


def stop_job(factory, who: Who, experiment_id: int | None, job_id: Any, *, expected_worker: str | None) -> str:
    """Fail the experiment's running job ``job_id`` now (``db.jobs.stop_job``), for a worker that hangs; only while
    ``expected_worker`` (the one the question named) runs it: a job handed back and taken by another worker since is
    another run, which the admin did not see (found by review)."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    jid, kind, worker = running_job(factory, exp_id, job_id)
    with write_session(factory) as s:
        job_queue.stop_job(session=s, job_id=jid, expected_owner=expected_worker,
                           reason=f"stopped by {who.name} while worker {worker!r} ran it")
        _audit(s, who, "job.stop", f"job {jid}", experiment_id=exp_id, kind=kind, worker=worker)
    return (f"Job {jid} ({kind}) was stopped: it is failed, and worker {worker!r} stops at its next report. Retry it "
            "or reopen its round.")


def reopen_round(factory, who: Who, experiment_id: int | None) -> str:
    """Reopen the experiment's round that is waiting for training (its train job cancelled) for labeling."""
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with write_session(factory) as s:
        waiting = [r for r in repo.list_rounds(session=s, experiment_id=exp_id) if r.status == "training"]
        if not waiting:
            raise Conflict("no round of this experiment is closed for training; there is nothing to reopen")
        # a rollback lives in the queued train job's payload (app.ab.train_next_from), which the reopen cancels
        rolled = [j.payload.get("from_round") for j in job_queue.list_jobs(session=s, experiment_id=exp_id, limit=20)
                  if j.kind == "train" and j.round_id == waiting[-1].id and j.status == "queued"
                  and j.payload.get("from_round") is not None]
        round_ = repo.reopen_round(session=s, round_id=waiting[-1].id)
        index = round_.index
        experiment = repo.get_experiment(session=s, experiment_id=exp_id)
        from app import pairwise  # as in close_round: app.pairwise imports this module's neighbours

        if pairwise.wants_pairs(pairwise.feedback_of(experiment)):
            # the feedback may have become pairs while the round was closed, when set_feedback had no open round to
            # pair up: the reopened round had no pair to compare (found by review); a round with pairs is left alone
            pairwise.create_round_pairs(session=s, experiment_id=exp_id, round_id=round_.id)
        _audit(s, who, "round.reopen", f"experiment {exp_id}", round=index,
               **({"dropped_from_round": rolled[0]} if rolled else {}))
    dropped = (f" It was to train from round {rolled[0]} (a rollback); that choice was dropped with it, so use "
               "Rollback again after closing the round if you still want it.") if rolled else ""
    return f"Round {index} is open for labeling again; its training job was cancelled.{dropped}"


def finish_experiment(factory, who: Who, experiment_id: int | None, *, archive: bool = False) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with write_session(factory) as s:
        if archive:
            exp = repo.archive_experiment(session=s, experiment_id=exp_id)
        else:
            exp = repo.finish_experiment(session=s, experiment_id=exp_id)
        name = exp.name
        _audit(s, who, "experiment.archive" if archive else "experiment.finish", f"experiment {exp_id}")
    if archive:
        return f"Experiment {name!r} is finished and archived: it no longer appears in the experiment list."
    return f"Experiment {name!r} is finished: no more rounds; its ratings, images and adapters stay and can be exported."


def finish_question(factory, who: Who, experiment_id: int | None, *, archive: bool = False) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with read_session(factory) as s:
        name = repo.get_experiment(session=s, experiment_id=exp_id).name
    what = "Finish and archive" if archive else "Finish"
    return (f"{what} experiment {name!r}? Its waiting jobs are cancelled and no round can be rated or trained any more"
            + ("; it disappears from the experiment list." if archive else "."))


def set_dashboard_access(factory, who: Who, experiment_id: int | None, allowed: bool) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    with write_session(factory) as s:
        repo.set_raters_see_dashboard(session=s, experiment_id=exp_id, allowed=bool(allowed))
        _audit(s, who, "experiment.dashboard_access", f"experiment {exp_id}", raters_see_dashboard=bool(allowed))
    return ("Raters can now see this experiment's dashboard." if allowed
            else "Only admins see this experiment's dashboard now (its plots can bias ratings).")


def raters_see_dashboard(factory, experiment_id: int | None) -> bool:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        return bool(exp is not None and exp.raters_see_dashboard)


# "last error": a job keeps the error of its latest failed attempt, also after a later attempt succeeded
JOBS_HEADERS = ["job", "kind", "round", "status", "attempts", "last error"]


def _job_error_cell(job) -> str:
    """The job's last error (cut to 200 characters); on a job that is done, marked as an earlier attempt's."""
    if not job.error:
        return ""
    error = job.error[:200]
    return f"earlier attempt: {error}" if job.status == "done" else error


def jobs_table(factory, who: Who, experiment_id: int | None) -> list[list[str]]:
    """The experiment's newest 20 jobs as rows of ``JOBS_HEADERS``."""
    require_admin(who)
    if experiment_id is None:
        return []
    with read_session(factory) as s:
        rows = []
        for j in job_queue.list_jobs(session=s, experiment_id=int(experiment_id), limit=20):
            round_ = repo.get_round(session=s, round_id=j.round_id) if j.round_id is not None else None
            rows.append([str(j.id), j.kind, "–" if round_ is None else str(round_.index), j.status,
                         f"{j.attempts} of {j.max_attempts}", _job_error_cell(j)])
        return rows


def selected_experiment(factory, experiment_id: int | None) -> int:
    """The id of the experiment an admin action is about: ``experiment_id``, or with none selected the default the
    page shows (``pick_experiment``); InvalidInput when there is none."""
    return _experiment_id(factory, experiment_id)


def resolved_or_none(factory, experiment_id: int | None) -> int | None:
    """``_experiment_id``, or None when there is no experiment yet."""
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        return None if exp is None else exp.id


def _experiment_id(factory, experiment_id: int | None) -> int:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            raise InvalidInput("there is no experiment yet; create one first")
        return exp.id


def add_user(factory, who: Who, name: str, role: str, password: str) -> str:
    require_admin(who)
    name = (name or "").strip()
    if who.local and role != "admin" and not any(u.role == "admin" and not u.disabled for u in auth.list_users(factory)):
        # the first account ends local mode; with no admin account, nobody could run the app from the web after the
        # restart (found by review)
        raise InvalidInput(f"the first account ends local mode, so it must be an admin (a {role} alone would leave "
                           "nobody to run the app from the web); add an admin first")
    auth.add_user(factory, name=name, role=role, password=password or "", actor=who)
    note = ""
    if who.local:
        note = (" Accounts now exist, so local mode has ended: restart the app (python -m app serve, or make demo)"
                " and sign in.")
    return f"Added {role} {name!r}.{note}"


USERS_HEADERS = ["id", "name", "role", "created", "status"]
AUDIT_HEADERS = ["when (UTC)", "who", "what", "on", "detail"]


def users_table(factory, who: Who) -> list[list[str]]:
    require_admin(who)
    return [[str(u.id), u.name, u.role, u.created_at, "disabled" if u.disabled else "active"] for u in auth.list_users(factory)]


def user_names(factory, who: Who) -> list[str]:
    """The accounts' names, for the account chooser."""
    require_admin(who)
    return [u.name for u in auth.list_users(factory)]


def _account_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("choose an account first")
    return name.strip()


def disable_user(factory, who: Who, name: Any) -> str:
    require_admin(who)
    name = _account_name(name)
    auth.set_disabled(factory, name=name, disabled=True, actor=who)
    return f"{name!r} is disabled: signed out everywhere, and cannot sign in until enabled again. Their ratings stay."


def enable_user(factory, who: Who, name: Any) -> str:
    require_admin(who)
    name = _account_name(name)
    auth.set_disabled(factory, name=name, disabled=False, actor=who)
    return f"{name!r} is enabled and can sign in again."


def delete_user(factory, who: Who, name: Any) -> str:
    require_admin(who)
    name = _account_name(name)
    auth.delete_user(factory, name=name, actor=who)
    return f"Deleted the account {name!r}."


def set_user_role(factory, who: Who, name: Any, role: Any) -> str:
    require_admin(who)
    name = _account_name(name)
    auth.set_role(factory, name=name, role=role, actor=who)
    return f"{name!r} is now {'an admin' if role == 'admin' else 'a rater'} (from their next request)."


# the sign-in throttle of a password change made with no web guard in front (a handler called as a function): the
# guard's own otherwise (``app.ui_admin_tab``), so that its failures lock the sign-in page too
THROTTLE_WITHOUT_GUARD = LoginThrottle()


def set_user_password(factory, who: Who, name: Any, password: Any, your_password: Any = None, *,
                      throttle: LoginThrottle | None = None, ip: str | None = None, session: str | None = None) -> str:
    """Set the password of the account ``name`` (the admin's own or another's) to ``password``, once ``your_password``
    proved to be the acting admin's own: ``auth.change_password``, the one path of the web page's password changes
    (the Account tab's too), which checks the account and the new password first, so a typing slip there costs no
    guess, then ``your_password`` as a sign-in from ``ip`` with ``throttle`` (a refusal audited). The local-mode admin
    has no password to give, and in local mode no account exists to set one of."""
    require_admin(who)
    name = _account_name(name)
    password = password if isinstance(password, str) else ""
    auth.change_password(factory, who, name=name, password=password, current=your_password,
                         throttle=throttle or THROTTLE_WITHOUT_GUARD, ip=ip, session=session)
    return f"{name!r} has a new password; their sessions ended, so they sign in again with it."


def audit_table(factory, who: Who, limit: int = 200) -> list[list[str]]:
    """The newest admin actions, newest first: when, who, what, on what, details."""
    require_admin(who)
    return [[e.at, e.actor, e.action, e.target, e.detail] for e in auth.list_audit(factory, limit=limit)]


def experiment_choices(factory, who: Who | None = None) -> list[tuple[str, int]]:
    """(label, id) for the experiment selector, newest first; archived experiments are left out, and for ``who``
    those they may not rate (``app.members``; an admin may rate every one)."""
    from app import members

    with read_session(factory) as s:
        return [(f"{e.name} ({e.status})", e.id) for e in reversed(repo.list_experiments(session=s, archived=False))
                if who is None or members.may_rate(s, who, e.id)]


def round_status_html(factory, experiment_id: int | None) -> str:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            return "<div>No experiment yet: create one below.</div>"
        rounds = repo.list_rounds(session=s, experiment_id=exp.id)
        last = rounds[-1] if rounds else None
        where = f"round {last.index} is <b>{last.status}</b>" if last else "no round yet"
        failed = ""
        job_id = newest_failed_job(factory, exp.id)
        if job_id is not None:
            job = job_queue.get_job(session=s, job_id=job_id)
            failed = (f"<div class='err' id='failed-job'>Job {job.id} ({job.kind}) failed after {job.attempts} "
                      f"attempt{'' if job.attempts == 1 else 's'}: "
                      f"{html.escape((job.error or 'no error recorded')[:300])}. Fix the cause, then press "
                      "<b>Retry failed job</b>.</div>")
        try:
            flagged = services.stored_config_warning(exp.name, services.experiment_config(exp))
        except ValueError as exc:  # a config this code cannot read at all: said here too, as its jobs will say it
            flagged = f"Experiment {exp.name!r}'s stored config cannot be read: {exc}"
        flag = "" if flagged is None else f"<div class='err' id='experiment-flag'>{html.escape(flagged)}</div>"
        return (f"<div id='admin-round-status'><b>{html.escape(exp.name)}</b> is {exp.status}; {where}.</div>{flag}"
                f"{failed}")
