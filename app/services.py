"""The experiment lifecycle: the only place that joins db rows and SEIKO configs.

    create_experiment -> round 0 'generating' + a 'generate' job
    worker generate   -> images written, round 'labeling'
    close_round       -> round 'training' + a 'train' job with the rating watermark
    worker train      -> adapter k+1 published, round k 'done', round k+1 'generating' + its 'generate' job

The UI, the CLI and the worker call these; each runs in one short write transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from app import experiment_options
from app.experiment_options import ExperimentOptions
from db import jobs as job_queue
from db import repo
from db.engine import write_session
from db.errors import InvalidInput
from seiko_core.config import (
    METHODS,
    SeikoConfig,
    check_prompts,
    check_round_limits,
    check_round_trajectories,
    from_dict,
    prompt_key,
    to_dict,
)
from seiko_core.presets import PRESETS, preset


@dataclass(frozen=True)
class ExperimentSpec:
    """What an admin chooses when creating an experiment; unset fields come from the preset."""

    name: str
    preset: str = "shapes"
    model_spec: str | None = None  # default: the settings' model
    method: str | None = None  # nonadaptive, greedy, ucb, bootstrap, ts
    budgets: tuple[int, ...] | None = None  # images (= ratings wanted) per round
    prompts: tuple[str, ...] | None = None
    eval_prompts: tuple[str, ...] | None = None  # held-out prompts of the fixed-seed grid; default: the preset's not sampled
    overlap: int = 1  # ratings wanted per image (several raters)
    kl_weight: float | None = None
    aggregation: str | None = None  # override the method's optimism (mean, max, softmax, ucb_heads, thompson)
    finetune_epochs: int | None = None  # fine-tuning epochs per round (steps = epochs x steps per epoch)
    finetune_max_seconds: float | None = None  # a time limit on each round's fine-tuning; 0 lifts the preset's limit


def build_config(spec: ExperimentSpec) -> SeikoConfig:
    """The SeikoConfig an ExperimentSpec stands for (validated; errors are one sentence)."""
    if spec.preset not in PRESETS:
        raise InvalidInput(f"unknown preset {spec.preset!r}; choose from {sorted(PRESETS)}")
    cfg = preset(spec.preset)
    if spec.budgets is not None:
        cfg.budgets = tuple(int(b) for b in spec.budgets)
    if spec.prompts is not None:
        cfg.prompts = tuple(p.strip() for p in spec.prompts if p.strip())
    if spec.eval_prompts is not None:
        cfg.eval_prompts = tuple(p.strip() for p in spec.eval_prompts if p.strip())
    else:  # the preset's held-out prompts, less any the experiment samples as CLIP reads them ('A small square' is
        # 'a small square': exact strings were compared, and that one stayed "held out"; found by the fifth review)
        sampled = {prompt_key(p) for p in cfg.prompts}
        cfg.eval_prompts = tuple(p for p in cfg.eval_prompts if prompt_key(p) not in sampled)
    if not cfg.prompts:
        raise InvalidInput("an experiment needs at least one sampling prompt")
    if not cfg.eval_prompts:
        raise InvalidInput("an experiment needs at least one evaluation prompt that is not also a sampling prompt")
    if spec.kl_weight is not None:
        cfg.finetune.kl_weight = float(spec.kl_weight)
    # per round, as the form says them; for_method then gives Non-adaptive's one round K times as much (equal
    # compute). Set after it, as before 3 Dec 2026, the form's epochs undid that: 1/K of the steps (found by review)
    if spec.finetune_epochs is not None:
        cfg.finetune.epochs = int(spec.finetune_epochs)
    if spec.finetune_max_seconds is not None:
        cfg.finetune.max_seconds = float(spec.finetune_max_seconds) or None
    try:  # per round, before for_method scales Non-adaptive's one round (the form, the CLI and the API all come here)
        check_round_limits(cfg)
        check_prompts(cfg)  # at most PROMPT_MAX_BYTES each: the images table indexes the whole prompt (fifth review)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    if spec.method is not None:
        if spec.method not in METHODS:
            raise InvalidInput(f"unknown method {spec.method!r}; choose from {sorted(METHODS)}")
        try:
            cfg = cfg.for_method(spec.method)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
    if spec.aggregation is not None:
        cfg.optimism.aggregation = spec.aggregation
    try:
        cfg = from_dict(to_dict(cfg))  # re-validate every field
        check_round_trajectories(cfg)  # as a round trains: after for_method, Non-adaptive's one round has K x the epochs
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    return cfg


def experiment_config(experiment) -> SeikoConfig:
    """The SeikoConfig stored with an experiment row."""
    raw = experiment.config if isinstance(experiment.config, dict) else json.loads(experiment.config)
    return from_dict({k: v for k, v in raw.items() if k != "app"})  # "app": app.experiment_options, not SEIKO's


def stored_config_warning(name: str, cfg: SeikoConfig) -> str | None:
    """One sentence flagging an experiment stored before creation refused what its prompts are (``check_prompts``: a
    prompt, eval prompt or quality template over PROMPT_MAX_BYTES in UTF-8, or an eval prompt that is a sampling
    prompt as CLIP reads it, ``prompt_key``), or None. Such an experiment loaded and ran unflagged (found by the sixth
    review); it still loads and runs, and nothing of it changes: the Admin tab's status and the worker's log of each
    of its jobs say this, so the admin knows why its eval grid is not held out or its prompts are cut."""
    try:
        check_prompts(cfg)
    except ValueError as exc:
        return (f"Experiment {name!r} was stored before its prompts were checked as a new experiment's are, and would "
                f"be refused now: {exc}; it still runs, and its rounds, images and ratings stay readable and "
                "exportable, but a new experiment with corrected prompts is needed to go on without this problem.")
    return None


def check_model_spec(model_spec: str) -> str:
    """``model_spec`` as the experiment stores it, if the worker can load it: a local diffusers directory (with
    model_index.json), made absolute (a relative one was read as a hub id by a worker started from another
    directory), or a hub id (owner/name) that is in the local cache when the hub is offline; else InvalidInput with
    one sentence."""
    from huggingface_hub import try_to_load_from_cache

    from seiko_core.models import ModelLoadError, _hub_offline, check_model_configs, resolve_spec

    try:
        name, local = resolve_spec(model_spec)
        # its configs parsed as the loader will: a model_index.json nested 200,000 deep was accepted here and failed
        # every generate job with a RecursionError (found by the fifth review)
        check_model_configs(name, local)
    except ModelLoadError as exc:
        raise InvalidInput(f"{str(exc).rstrip('.')}; nothing was created") from exc
    if not local and _hub_offline() and not isinstance(try_to_load_from_cache(name, "model_index.json"), str):
        raise InvalidInput(f"the model {name!r} is not a local diffusers directory, and as a hub id it is not in the "
                           "local cache while the hub is offline (HF_HUB_OFFLINE=1); nothing was created")
    return str(Path(name).resolve()) if local else model_spec


def create_experiment(*, factory, spec: ExperimentSpec, default_model: str, audit=None) -> int:
    """Create the experiment, its round 0 and the job that generates round 0's batch; returns the experiment id.

    The model is checked first (``check_model_spec``): a mistyped one is refused and nothing is written.
    ``audit(session, experiment_id)``, if given, writes the action's audit entry in the same transaction (it was a
    second one: a failure between the two left an experiment nobody was recorded to have made; found by review)."""
    cfg = build_config(spec)
    model_spec = check_model_spec(spec.model_spec or default_model)
    with write_session(factory) as s:
        exp = repo.create_experiment(session=s, name=spec.name, model_spec=model_spec,
                                     method=cfg.method, config=experiment_options.with_options(to_dict(cfg), ExperimentOptions()),
                                     budgets=list(cfg.budgets),
                                     prompts=list(cfg.prompts), overlap=spec.overlap)
        round0 = repo.create_round(session=s, experiment_id=exp.id)
        job_queue.enqueue_job(session=s, kind="generate", experiment_id=exp.id, round_id=round0.id, payload={"round_index": 0})
        if audit is not None:
            audit(s, exp.id)
        return exp.id


def close_round(*, factory, experiment_id: int, expected_index: int | None = None) -> int:
    """Close the open labeling round and queue its training job; returns the job id.

    ``repo.close_round`` locks the round before it reads the rating watermark (no rating slips in between)."""
    with write_session(factory) as s:
        return repo.close_round(session=s, experiment_id=experiment_id, expected_index=expected_index).id


def set_paused(*, factory, experiment_id: int, paused: bool) -> None:
    with write_session(factory) as s:
        repo.set_experiment_status(session=s, experiment_id=experiment_id, status="paused" if paused else "active")


def round_budget(cfg: SeikoConfig, index: int) -> int:
    """Images to generate for round ``index`` (the last budget repeats once the list runs out): ``repo.round_budget``,
    the rule the progress counts use too."""
    return repo.round_budget(cfg.budgets, index)
