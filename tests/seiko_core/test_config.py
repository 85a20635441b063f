"""SeikoConfig rules that the benchmark's fairness rests on: equal optimiser steps, held-out eval prompts."""

from __future__ import annotations

import math

import pytest

from seiko_core.config import METHODS, SeikoConfig
from seiko_core.presets import PRESETS, preset


def optimiser_steps(cfg: SeikoConfig) -> int:
    """Steps over the whole run, counted as finetune() counts them (one process)."""
    ft = cfg.finetune
    per_round = math.ceil(ft.trajectories_per_epoch / (ft.batch_size * ft.grad_accum)) * ft.epochs
    return per_round * len(cfg.budgets)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_method_gets_the_same_optimiser_steps_and_labels(name):
    base = preset(name)
    steps = {m: optimiser_steps(base.for_method(m)) for m in METHODS}
    labels = {m: sum(base.for_method(m).budgets) for m in METHODS}
    assert len(set(steps.values())) == 1, steps
    assert len(set(labels.values())) == 1, labels
    na = base.for_method("nonadaptive")
    assert na.budgets == (sum(base.budgets),) and na.finetune.epochs == base.finetune.epochs * len(base.budgets)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_holds_its_eval_prompts_out(name):
    cfg = preset(name)
    assert cfg.eval_prompts and cfg.prompts
    assert not set(cfg.eval_prompts) & set(cfg.prompts)


def test_an_overlap_of_eval_and_sampling_prompts_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match=r"eval prompts must be held out from the sampling prompts, but \['a circle'\]"):
        SeikoConfig(prompts=("a circle", "a square"), eval_prompts=("a circle", "a star"))


def test_sd15_trains_in_a_memory_budget_that_fits_an_80_gb_gpu():
    """The settings docs/sd15-memory.md estimates at 36 GB (seiko_core.memory): checkpointing, bf16 autocast, the last
    10 steps attached, 2 trajectories per pass; 64 trajectories per optimiser step as the reference."""
    ft = preset("sd15").finetune
    assert ft.gradient_checkpointing and ft.mixed_precision == "bf16"
    assert ft.truncation == "per_trajectory" and ft.truncation_k == 10
    assert ft.batch_size == 2 and ft.batch_size * ft.grad_accum == 64


def test_nonadaptive_from_the_admin_form_keeps_k_times_the_steps_and_the_time_limit():
    """The form sends its per-round epochs (the preset's 5) and time limit; build_config set them after
    for_method, so a Non-adaptive experiment made on the Admin tab got 1/K of the optimiser steps. Found by review."""
    from app import services
    from app.ui_admin import ExperimentForm, preset_defaults, spec_from_form

    d = preset_defaults("shapes")
    form = ExperimentForm(name="na", preset="shapes", method="nonadaptive", budgets=d["budgets"], prompts=d["prompts"],
                          aggregation="mean", kl_weight=d["kl_weight"], epochs=d["epochs"], max_seconds=d["max_seconds"])
    cfg = services.build_config(spec_from_form(form))
    k = len(preset("shapes").budgets)
    assert cfg.budgets == (sum(preset("shapes").budgets),)
    assert cfg.finetune.epochs == d["epochs"] * k and cfg.finetune.max_seconds == d["max_seconds"] * k
    greedy = services.build_config(spec_from_form(ExperimentForm(**{**form.__dict__, "method": "greedy"})))
    assert optimiser_steps(cfg) == optimiser_steps(greedy)
