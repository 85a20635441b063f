"""Administration: experiments, rounds, pausing, users. Every function checks the admin role itself."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

from app import auth, services
from app.auth import Who, require_admin
from app.ui_rate import pick_experiment
from db import repo
from db.engine import read_session
from db.errors import InvalidInput
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


def preset_defaults(name: str) -> dict[str, Any]:
    """What the form shows for a preset: method, budgets, prompts, aggregation, KL weight."""
    if name not in PRESETS:
        raise InvalidInput(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    cfg = preset(name)
    return {"method": cfg.method, "budgets": ", ".join(str(b) for b in cfg.budgets), "prompts": "\n".join(cfg.prompts),
            "aggregation": cfg.optimism.aggregation, "kl_weight": cfg.finetune.kl_weight}


def _budgets(text: str) -> tuple[int, ...] | None:
    text = (text or "").strip()
    if not text:
        return None
    out = []
    for part in text.replace(";", ",").replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit() or int(part) < 1:
            raise InvalidInput(f"budgets must be positive whole numbers separated by commas, e.g. '32, 32, 64'; got {part!r}")
        out.append(int(part))
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
    return services.ExperimentSpec(
        name=name, preset=form.preset, model_spec=(form.model or "").strip() or None, method=form.method or None,
        budgets=_budgets(form.budgets), prompts=prompts, overlap=_whole("overlap", form.overlap if form.overlap is not None else 1, 1),
        kl_weight=kl, aggregation=aggregation,
    )


def create_experiment(factory, who: Who, form: ExperimentForm, *, default_model: str) -> str:
    require_admin(who)
    experiment_id = services.create_experiment(factory=factory, spec=spec_from_form(form), default_model=default_model)
    return f"Created experiment {form.name.strip()!r} (id {experiment_id}); the worker now generates round 0."


def close_round(factory, who: Who, experiment_id: int | None) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    job_id = services.close_round(factory=factory, experiment_id=exp_id)
    return f"Round closed; training job {job_id} is queued for the worker."


def set_paused(factory, who: Who, experiment_id: int | None, paused: bool) -> str:
    require_admin(who)
    exp_id = _experiment_id(factory, experiment_id)
    services.set_paused(factory=factory, experiment_id=exp_id, paused=paused)
    return "Experiment paused: the worker takes no new training until you resume." if paused else "Experiment resumed."


def _experiment_id(factory, experiment_id: int | None) -> int:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            raise InvalidInput("there is no experiment yet; create one first")
        return exp.id


def add_user(factory, who: Who, name: str, role: str, password: str) -> str:
    require_admin(who)
    name = (name or "").strip()
    auth.add_user(factory, name=name, role=role, password=password or "")
    note = ""
    if who.local:
        note = (" Accounts now exist, so local mode has ended: restart the app (python -m app serve, or make demo)"
                " and sign in.")
    return f"Added {role} {name!r}.{note}"


def users_table(factory, who: Who) -> list[list[str]]:
    require_admin(who)
    return [[str(u.id), u.name, u.role, u.created_at] for u in auth.list_users(factory)]


def experiment_choices(factory) -> list[tuple[str, int]]:
    """(label, id) for the experiment selector, newest first."""
    with read_session(factory) as s:
        return [(f"{e.name} ({e.status})", e.id) for e in reversed(repo.list_experiments(session=s))]


def round_status_html(factory, experiment_id: int | None) -> str:
    with read_session(factory) as s:
        exp = pick_experiment(s, experiment_id)
        if exp is None:
            return "<div>No experiment yet: create one below.</div>"
        rounds = repo.list_rounds(session=s, experiment_id=exp.id)
        last = rounds[-1] if rounds else None
        where = f"round {last.index} is <b>{last.status}</b>" if last else "no round yet"
        return f"<div><b>{html.escape(exp.name)}</b> is {exp.status}; {where}.</div>"
