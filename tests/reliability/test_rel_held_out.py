"""Held-out eval prompts (fifth review, 5 Dec 2026): the check that eval prompts are not sampled compared exact
strings, but CLIP's tokenizer lowercases and collapses whitespace, so 'A small square' was sampled and trained on while
the shapes preset's 'a small square' was scored as held out. Prompts are now compared by ``prompt_key``."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import services
from db.engine import read_session
from db.errors import InvalidInput
from db.models import Experiment
from seiko_core.config import SeikoConfig, check_prompts, prompt_key
from seiko_core.presets import preset

REPO = Path(__file__).resolve().parents[2]


def _create(factory, model_dir, **spec) -> int:
    return services.create_experiment(factory=factory, spec=services.ExperimentSpec(name="p", **spec),
                                      default_model=model_dir)


PAIRS = [
    ("A small square", "a small square"),
    ("a  large triangle", "a large triangle"),
    ("  a small\tsquare\n", "a small square"),
    ("A LARGE Triangle", "a large triangle"),
    ("a small square", "a small circle"),
    ("a smallsquare", "a small square"),
    ("a large triangle", "a large triangles"),
]


@pytest.mark.parametrize("fast", [False, True], ids=["CLIPTokenizer", "CLIPTokenizerFast"])
def test_the_normalised_key_matches_the_shapes_models_own_tokenizer(fast):
    """The independent reference: two prompts have one key exactly when the shapes model's CLIP tokenizer gives
    them the same token ids."""
    from transformers import CLIPTokenizer, CLIPTokenizerFast

    tok = (CLIPTokenizerFast if fast else CLIPTokenizer).from_pretrained(REPO / "models" / "shapes-sd" / "tokenizer")
    for a, b in PAIRS:
        same_ids = tok(a, truncation=False).input_ids == tok(b, truncation=False).input_ids
        assert same_ids == (prompt_key(a) == prompt_key(b)), (a, b)
    assert sum(prompt_key(a) == prompt_key(b) for a, b in PAIRS) == 4  # both kinds of pair are tried


@pytest.mark.parametrize("sampled", ["A small square", "a  large triangle", " a small square ", "A LARGE TRIANGLE"])
def test_an_eval_prompt_that_only_differs_in_case_or_spacing_is_not_held_out(factory, model_dir, sampled):
    """The shapes preset's held-out prompts are 'a small square' and 'a large triangle'."""
    held_out = preset("shapes").eval_prompts
    stored = SeikoConfig(prompts=("a circle", sampled), eval_prompts=held_out)  # one stored before still loads
    with pytest.raises(ValueError, match=r"eval prompts must be held out from the sampling prompts, but \['a "):
        check_prompts(stored)
    # the New-experiment form, eval prompts given: refused as an exact overlap is
    with pytest.raises(InvalidInput, match=r"eval prompts must be held out from the sampling prompts, but"):
        _create(factory, model_dir, prompts=("a circle", sampled), eval_prompts=held_out)
    # eval prompts not given: the preset's held-out ones less the sampled, as for an exact overlap
    cfg = services.build_config(services.ExperimentSpec(name="p", prompts=("a circle", sampled)))
    assert [prompt_key(p) for p in cfg.eval_prompts if prompt_key(p) == prompt_key(sampled)] == []
    assert len(cfg.eval_prompts) == len(held_out) - 1
    eid = _create(factory, model_dir, prompts=("a circle", sampled))
    with read_session(factory) as s:
        kept = services.experiment_config(s.get(Experiment, eid))
    assert prompt_key(sampled) not in {prompt_key(p) for p in kept.eval_prompts}
