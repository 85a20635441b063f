"""Experiments stored before creation refused what their prompts are (sixth review, 5 Dec 2026): a prompt over
PROMPT_MAX_BYTES (1,000) bytes in UTF-8, or an eval prompt that is a sampling prompt as CLIP reads it (case, runs of
whitespace: ``prompt_key``). Creation refuses both now (fifth review), but such an experiment already in a database
loaded and ran unflagged. It still loads and runs, and nothing of it changes; the Admin tab's status and the worker's
log of its round say why in one sentence."""

from __future__ import annotations

import html
import logging
from pathlib import Path

import pytest
from transformers import CLIPTokenizer

from app import export, ui_admin
from db import repo
from db.engine import read_session, write_session
from db.models import Job
from seiko_core.export import read_ratings_dataset

REPO = Path(__file__).resolve().parents[2]

LONG = "a circle " + "with many dots " * 70  # 1,059 bytes: over the limit
assert len(LONG.encode("utf-8")) > 1000

CASES = {
    # (sampling prompts, eval prompts, what the sentence names)
    "long-prompt": ((LONG, "a red square"), ("a small square", "a large triangle"),
                    f"prompt {LONG[:37]!r}... is {len(LONG.encode('utf-8')):,} bytes in UTF-8; the limit is 1,000 bytes"),
    "eval-by-case": (("a circle", "A Small  Square"), ("a small square", "a large triangle"),
                     "eval prompts must be held out from the sampling prompts, but ['a small square'] appear in both"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_an_old_experiment_with_prompts_creation_now_refuses_is_flagged_and_keeps_its_data(worker_world, caplog,
                                                                                          tmp_path, case):
    prompts, eval_prompts, names = CASES[case]
    if case == "eval-by-case":  # the premise, from the model's own tokenizer: CLIP reads the two as one prompt
        tok = CLIPTokenizer.from_pretrained(REPO / "models" / "shapes-sd" / "tokenizer")
        assert tok(prompts[1]).input_ids == tok(eval_prompts[0]).input_ids
    w = worker_world
    eid = w.create_experiment("old")
    good = w.create_experiment("new")
    with write_session(w.factory) as s:  # stored as before the checks: straight into the row, past creation
        experiment = repo.get_experiment(session=s, experiment_id=eid)
        experiment.config = {**experiment.config, "prompts": list(prompts), "eval_prompts": list(eval_prompts)}
    sentence = (f"Experiment 'old' was stored before its prompts were checked as a new experiment's are, and would be "
                f"refused now: {names}")
    ending = ("; it still runs, and its rounds, images and ratings stay readable and exportable, but a new experiment "
              "with corrected prompts is needed to go on without this problem.")

    status = ui_admin.round_status_html(w.factory, eid)
    assert html.escape(sentence) in status and status.count(html.escape(ending)) == 1, status
    assert "would be refused now" not in ui_admin.round_status_html(w.factory, good)  # a checked one is not flagged

    worker = w.worker()
    try:
        with caplog.at_level(logging.WARNING, logger="seiko.worker"):
            assert worker.run_once() and worker.last_error is None  # round 0 of "old" (created first) runs as before
    finally:
        worker.close()
    flagged = [r.getMessage() for r in caplog.records if "would be refused now" in r.getMessage()]
    assert len(flagged) == 1 and sentence in flagged[0] and flagged[0].endswith(ending), flagged
    with read_session(w.factory) as s:
        (job,) = s.query(Job).filter_by(experiment_id=eid, kind="generate").all()
        assert job.status == "done" and f"job {job.id} (generate): " in flagged[0]
        assert repo.get_open_round(session=s, experiment_id=eid) is not None
    # its ratings stay readable and exportable, and the flag is still there (nothing was changed to lift it)
    n = w.rate_open_round(eid, w.raters(2), lambda image_id, rater_id: 1 + (image_id + rater_id) % 10)
    result = export.export_ratings_to(w.settings, eid, tmp_path / "ratings")
    rows = read_ratings_dataset(result.path)
    assert len(rows) == n == 2 * 4  # round 0's budget of 4 images, each rated by both
    assert html.escape(sentence) in ui_admin.round_status_html(w.factory, eid)
