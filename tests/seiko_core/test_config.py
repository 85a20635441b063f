"""SeikoConfig rules that the benchmark's fairness rests on: equal optimiser steps, held-out eval prompts."""

from __future__ import annotations

import json
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


def test_sd15_trains_in_a_memory_budget_that_fits_a_40_gb_gpu():
    """The settings docs/sd15-memory.md estimates at 29.6 GiB (seiko_core.memory) and an H200 measured at about 24 GiB:
    checkpointing, half-precision (fp16) autocast, the last 10 steps attached, 2 trajectories per pass; 64 trajectories per optimiser
    step as the reference."""
    ft = preset("sd15").finetune
    assert ft.gradient_checkpointing and ft.mixed_precision == "fp16"  # fp16, not bf16: the KL's rounding (presets.py)
    assert ft.truncation == "per_trajectory" and ft.truncation_k == 10
    assert ft.batch_size == 2 and ft.batch_size * ft.grad_accum == 64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_no_preset_pulls_an_optimistic_reward_above_the_rating_scale_back_down(name):
    """A person rates 1-10 and the optimistic reward (the max of the heads, or a bonus on top) can exceed 10; the
    reference's loss_coeff * |r - 10| then pushes such an image's reward down, toward 10: the images the model is most
    optimistic about are trained away from (derived from the loss's form; found by review). Below 10 the preset's
    slope must stay the reference's: d loss / d r = -loss_coeff (the closed form of |r - 10| there)."""
    import torch

    from seiko_core.finetune import reward_loss

    ft = preset(name).finetune
    r = torch.tensor([3.0, 9.5, 10.5, 14.0], requires_grad=True)  # two within the scale, two over it
    reward_loss(r, ft.loss_coeff, ft.reward_target).backward()
    slope = r.grad * r.numel()  # the loss is a mean over the batch
    torch.testing.assert_close(slope, torch.full_like(slope, -ft.loss_coeff))


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


@pytest.mark.parametrize("override, expected", [
    ("optimism.aggregation=foo", "unknown aggregation 'foo'; choose from ['max', 'mean', 'softmax', 'thompson', 'ucb_heads']"),
    ("sampling=3", "sampling must be a JSON object, got 3"),
    ("finetune=[1]", "finetune must be a JSON object, got [1]"),
    ("reward.hidden=5", "hidden must be a list, got 5"),
    ("budgets=32", "budgets must be a list, got 32"),
    ("eval_seeds=[\"a\"]", "eval_seeds must be whole numbers, got ['a']"),
    ("eval_seeds=[1.7]", "eval_seeds must be whole numbers, got [1.7]"),
    ("eval_seeds=[true]", "eval_seeds must be whole numbers, got [True]"),
    ("prompts=abc", "prompts must be a list, got 'abc'"),
    ("finetune.target_modules=to_q", "target_modules must be a list, got 'to_q'"),
    ("prompts=[1,2]", "prompts must be non-empty texts, got [1, 2]"),
    ("prompts=[\"a circle\", \" \"]", "prompts must be non-empty texts, got ['a circle', ' ']"),
    ("eval_prompts=[null]", "eval_prompts must be non-empty texts, got [None]"),
])
def test_set_names_the_field_of_a_value_of_the_wrong_shape(override, expected):
    """Each of these reached the worker (an unknown aggregation failed only inside its train job), failed with
    "'int' object is not iterable", or was silently changed (1.7 truncated to 1, 'abc' split into characters)."""
    from seiko_core.simulate import apply_overrides

    with pytest.raises(ValueError) as err:
        apply_overrides(preset("shapes"), [override])
    assert str(err.value) == expected


def test_a_config_must_be_an_object_with_object_sections():
    from seiko_core.config import SamplingConfig, from_dict

    with pytest.raises(ValueError, match=r"^a SEIKO config must be a JSON object, got list$"):
        from_dict([])
    with pytest.raises(ValueError, match=r"^reward must be a RewardConfig section, got 5$"):
        SeikoConfig(reward=5)
    assert SeikoConfig(sampling=SamplingConfig(steps=3)).sampling.steps == 3


def test_the_aggregations_are_those_the_optimism_module_registers():
    from seiko_core.config import AGGREGATIONS, METHOD_OPTIMISM, OptimismConfig
    from seiko_core.optimism import OPTIMISM

    assert sorted(AGGREGATIONS) == sorted(OPTIMISM)
    assert {agg for agg, _ in METHOD_OPTIMISM.values()} <= set(AGGREGATIONS)
    for name in AGGREGATIONS:
        assert OptimismConfig(aggregation=name).aggregation == name


def test_the_runnable_check_wants_sampling_and_eval_prompts():
    from seiko_core.config import check_runnable

    check_runnable(preset("shapes"))
    with pytest.raises(ValueError, match=r"^prompts must hold at least one prompt to sample from, got \[\]$"):
        check_runnable(SeikoConfig(eval_prompts=("a star",)))
    with pytest.raises(ValueError, match=r"^eval_prompts must hold at least one held-out prompt, got \[\]$"):
        check_runnable(SeikoConfig(prompts=("a circle",)))


@pytest.mark.parametrize("name", sorted(PRESETS))
@pytest.mark.parametrize("method", [None, *METHODS])
def test_every_preset_survives_the_dict_round_trip(name, method):
    from seiko_core.config import from_dict, to_dict

    cfg = preset(name) if method is None else preset(name).for_method(method)
    again = from_dict(to_dict(cfg))
    assert again == cfg and to_dict(again) == to_dict(cfg)
    assert from_dict(json.loads(json.dumps(to_dict(cfg)))) == cfg  # as stored with an experiment
    assert from_dict(to_dict(SeikoConfig())) == SeikoConfig()  # the bare default (no prompts) stays valid as a config


def test_a_round_that_would_reach_a_million_trajectories_is_refused_in_one_sentence():
    """A round's trajectory seeds are a block of a million (seiko_core.finetune): the new-experiment form (and the
    CLI and API, through build_config) took Non-adaptive with 8 rounds at 1,000 epochs: 8,000 epochs of 128
    trajectories, 1,024,000 in its one round, into the next train seed's block (found by review). The same per-round
    settings for Greedy (128,000 a round) are taken."""
    from app import services

    spec = services.ExperimentSpec(name="x", preset="sd15", method="nonadaptive", budgets=(8,) * 8, finetune_epochs=1000)
    with pytest.raises(services.InvalidInput) as refused:
        services.build_config(spec)
    assert str(refused.value) == (
        "Non-adaptive's one round (8,000 epochs: K times the epochs per round) would fine-tune on 1,024,000 "
        "trajectories, but a round's trajectory seeds have room for fewer than 1,000,000 before the next round's "
        "(seiko_core.finetune); lower finetune.epochs or finetune.trajectories_per_epoch")
    greedy = services.build_config(services.ExperimentSpec(**{**spec.__dict__, "method": "greedy"}))
    assert greedy.finetune.epochs == 1000 and greedy.finetune.trajectories_per_epoch == 128
