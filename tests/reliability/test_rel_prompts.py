"""Prompt length (fifth review, 5 Dec 2026): images(round_id, kind, prompt, seed) is a unique btree index, and
PostgreSQL refuses an index row over 2,704 bytes, so a 950-character CJK prompt was accepted at creation and round 0
never opened (its images could not be inserted). A prompt is now at most PROMPT_MAX_BYTES (1,000) bytes in UTF-8,
refused in one sentence before anything is written; an image's prompt (the quality template, a space, the prompt) at
most 2,001."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import func, select

from app import services
from app.bench_taste import BenchConfig, BenchError
from app.experiment_options import ExperimentOptions
from db import repo
from db.engine import read_session, write_session
from db.errors import InvalidInput
from db.models import IMAGE_PROMPT_MAX_BYTES, PROMPT_MAX_BYTES, Experiment, Image, Job
from seiko_core import config as seiko_config
from seiko_core.config import SeikoConfig, check_prompts


def random_cjk(n_chars: int, seed: int = 0) -> str:
    """Incompressible text (the worst case for PostgreSQL, which compresses a long index key first): random
    characters of the CJK block, 3 bytes each in UTF-8."""
    rng = random.Random(seed)
    return "".join(chr(rng.randrange(0x4E00, 0xA000)) for _ in range(n_chars))


def _create(factory, model_dir, **spec) -> int:
    return services.create_experiment(factory=factory, spec=services.ExperimentSpec(name="p", **spec),
                                      default_model=model_dir)


def _add_image(session, round_id: int, prompt: str, kind: str = "query"):
    return repo.add_image(session=session, round_id=round_id, prompt=prompt, seed=0, file_path=f"{kind}.png",
                          sha256="0" * 64, embedding=b"\0" * 8, embedding_dim=2, kind=kind)


def test_the_limits_agree_and_fit_postgres():
    assert seiko_config.PROMPT_MAX_BYTES == PROMPT_MAX_BYTES == 1000
    assert IMAGE_PROMPT_MAX_BYTES == 2 * PROMPT_MAX_BYTES + 1 < 2704  # PostgreSQL's btree row limit (version 4)


@pytest.mark.parametrize("prompt", [random_cjk(1000), "漢" * 1000, "".join(random.Random(1).choices("abcdefghij", k=3000))],
                         ids=["1000-random-cjk", "1000-same-cjk", "3000-random-letters"])
def test_a_prompt_over_the_byte_limit_is_refused_at_creation_and_nothing_is_written(factory, model_dir, prompt):
    size = len(prompt.encode("utf-8"))
    sentence = (rf"^prompt '{prompt[:37]}'\.\.\. is {size:,} bytes in UTF-8; the limit is 1,000 bytes per prompt "
                r"\(CLIP reads only a prompt's first 77 tokens, and the database indexes the whole prompt\)$")
    with pytest.raises(InvalidInput, match=sentence):
        _create(factory, model_dir, prompts=("a circle", prompt))
    with pytest.raises(InvalidInput, match=sentence.replace("^prompt", "^eval prompt")):
        _create(factory, model_dir, eval_prompts=("a medium shape", prompt))
    with pytest.raises(InvalidInput, match=rf"^prompt '{prompt[:36]}\.\.\. is {size:,} bytes in UTF-8; the limit "):
        with write_session(factory) as s:  # the database layer's own check, for callers past the config
            repo.create_experiment(session=s, name="direct", model_spec=model_dir, method="greedy", config={},
                                   budgets=[1], prompts=[prompt])
    with read_session(factory) as s:
        assert s.scalar(select(func.count()).select_from(Experiment)) == 0
        assert s.scalar(select(func.count()).select_from(Job)) == 0
    # the quality template is prefixed to sampled prompts: it has the same limit (the simulator's and bench-taste's
    # --set are checked by check_prompts too)
    long_template = SeikoConfig(prompts=("a",), eval_prompts=("b",), quality_template=prompt)  # a stored one loads
    with pytest.raises(ValueError, match=r"^quality_template '.*'\.\.\. is [\d,]+ bytes in UTF-8; the limit is 1,000 bytes"):
        check_prompts(long_template)
    bench = BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=Path("unused"), model="unused",
                        options=ExperimentOptions(), overrides=(f"prompts={json.dumps(['a', prompt])}",))
    with pytest.raises(BenchError, match=r"^prompt '.*'\.\.\. is [\d,]+ bytes in UTF-8; the limit is 1,000 bytes"):
        bench.check_overrides()


def test_prompts_just_under_the_limit_create_and_their_image_rows_insert(factory, model_dir):
    """On PostgreSQL too: the index takes the longest prompts the checks let through, incompressible ones included."""
    longest = random_cjk(333, seed=2) + "x"  # 1,000 bytes
    assert len(longest.encode("utf-8")) == PROMPT_MAX_BYTES
    eid = _create(factory, model_dir, prompts=("a circle", longest), eval_prompts=(random_cjk(333, seed=3) + "y",))
    composed = random_cjk(667, seed=4)  # a 1,000-byte template, a space and a 1,000-byte prompt: 2,001 bytes
    assert len(composed.encode("utf-8")) == IMAGE_PROMPT_MAX_BYTES
    with read_session(factory) as s:
        exp = s.get(Experiment, eid)
        assert list(exp.prompts) == ["a circle", longest]
        round_id = exp.rounds[0].id
    with write_session(factory) as s:
        _add_image(s, round_id, longest)
        _add_image(s, round_id, composed, kind="eval")
    with read_session(factory) as s:
        assert sorted(s.scalars(select(Image.prompt))) == sorted([longest, composed])
    over = composed + "z"
    with pytest.raises(InvalidInput, match=r"^the image's prompt '.*\.\.\. is 2,002 bytes in UTF-8; the limit is 2,001 bytes"):
        with write_session(factory) as s:
            _add_image(s, round_id, over)


def test_postgres_refuses_the_index_row_of_a_950_character_cjk_prompt(factory, db_url, model_dir):
    """The premise, from PostgreSQL itself: past the checks (a raw row), such a prompt's image cannot be stored."""
    if not db_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's btree row limit; SQLite has none")
    from sqlalchemy.exc import DBAPIError

    eid = _create(factory, model_dir)
    with read_session(factory) as s:
        round_id = s.get(Experiment, eid).rounds[0].id
    with pytest.raises(DBAPIError, match="index row size .* exceeds btree version 4 maximum 2704"):
        with write_session(factory) as s:
            s.add(Image(round_id=round_id, prompt=random_cjk(950, seed=5), seed=0, file_path="a.png",
                        sha256="0" * 64, embedding=b"\0" * 8, embedding_dim=2, kind="query"))
