"""The worker and issue 14 item 3 on the tiny random-weight model: A/B pairs from the eval grid after each round's
eval job, and a rollback whose next round starts from the chosen round's adapter (compared tensor by tensor)."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from app import ab, auth, services, storage
from db import comparisons, repo
from db.engine import read_session, write_session
from seiko_core import loop, lora


def _round(world, eid, index):
    with read_session(world.factory) as s:
        r = repo.get_round_by_index(session=s, experiment_id=eid, index=index)
        s.expunge_all()
        return r


def _ab_pairs(world, eid, round_id):
    """[(left image's round index, right image's round index, prompt, seed)] of the round's A/B pairs."""
    with read_session(world.factory) as s:
        out = []
        for p in comparisons.list_pairs(session=s, experiment_id=eid, kind="ab", round_id=round_id):
            a, b = repo.get_image(session=s, image_id=p.image_a_id), repo.get_image(session=s, image_id=p.image_b_id)
            assert (a.kind, b.kind, a.prompt, a.seed) == ("eval", "eval", b.prompt, b.seed)  # same prompt and seed
            out.append((repo.get_round(session=s, round_id=a.round_id).index,
                        repo.get_round(session=s, round_id=b.round_id).index, a.prompt, a.seed))
        return out


def _train(world, worker, eid, raters):
    world.rate_open_round(eid, raters, lambda image_id, rater_id: 1 + (image_id * 7 + rater_id) % 10)
    services.close_round(factory=world.factory, experiment_id=eid)
    assert worker.run_once() and worker.last_error is None  # train
    assert worker.run_once() and worker.last_error is None  # generate the new round
    _eval_grids(worker)  # the eval jobs waiting: their grids and the new round's A/B pairs


def _eval_grids(worker):
    """Run the queued eval jobs (oldest first: a round's grid is there before the next round pairs with it)."""
    while worker.run_once():
        assert worker.last_error is None


def test_ab_pairs_each_round_and_rollback_trains_from_the_chosen_adapter(worker_world, monkeypatch):
    world = worker_world
    eid = world.create_experiment("ab", budgets=(4, 4, 4, 4))
    worker = world.worker()
    raters = world.raters(2)
    with write_session(world.factory) as s:
        admin = auth.Who(repo.create_rater(session=s, name="boss", password_hash="x", role="admin").id, "boss", "admin", False)
    assert worker.run_once() and worker.last_error is None  # generate round 0

    # rounds 1 and 2 in the normal chain: round 1 is paired with the base only, round 2 with round 1 and the base
    _train(world, worker, eid, raters)
    round1 = _round(world, eid, 1)
    pairs1 = _ab_pairs(world, eid, round1.id)
    assert len(pairs1) == 4 and all(sorted((a, b)) == [0, 1] for a, b, _, _ in pairs1)  # the 2 x 2 eval grid
    assert round1.metrics["ab"] == {"side_seed": round1.metrics["ab"]["side_seed"], "previous_index": 0,
                                    "vs_previous": 4, "vs_base": 4}
    assert round1.parent_round_id is None
    _train(world, worker, eid, raters)
    round2 = _round(world, eid, 2)
    pairs2 = _ab_pairs(world, eid, round2.id)
    assert sorted(sorted((a, b)) for a, b, _, _ in pairs2) == [[0, 2]] * 4 + [[1, 2]] * 4
    assert round2.metrics["ab"]["vs_previous"] == 4 and round2.metrics["ab"]["vs_base"] == 4

    # rollback: round 3 is trained from round 1's adapter, not round 2's
    world.rate_open_round(eid, raters, lambda image_id, rater_id: 1 + (image_id * 3 + rater_id) % 10)
    assert "train round 3 from round 1's adapter" in ab.train_next_from(world.factory, admin, eid, 1)
    seen = {}
    real_finetune = loop.finetune

    def spy(parts, reward_fn, prompts, cfg, *, adapter, reference, **kwargs):
        seen["reference"] = reference
        # the new adapter before its first step (cloned: the state dict's tensors share the live parameters' memory)
        seen["start"] = {k: v.clone() for k, v in lora.adapter_state_dict(parts.unet, adapter).items()}
        return real_finetune(parts, reward_fn, prompts, cfg, adapter=adapter, reference=reference, **kwargs)

    monkeypatch.setattr(loop, "finetune", spy)
    assert worker.run_once() and worker.last_error is None  # train round 3
    weights = {k: storage.resolve(world.settings.data_dir, _round(world, eid, k).adapter_path) / lora.WEIGHT_NAME
               for k in (1, 2, 3)}
    chosen, newest = load_file(weights[1]), load_file(weights[2])
    assert seen["reference"] == lora.round_adapter_name(1)  # the KL term's previous model is round 1's adapter
    assert seen["start"].keys() == chosen.keys() and len(chosen) > 0
    for key, value in chosen.items():
        assert torch.equal(seen["start"][key], value), key  # started exactly from round 1's saved weights
    assert any(not torch.equal(newest[key], chosen[key]) for key in chosen)  # ... which differ from round 2's
    assert any(not torch.equal(load_file(weights[3])[key], chosen[key]) for key in chosen)  # and it was trained

    round3 = _round(world, eid, 3)
    assert round3.parent_round_id == round1.id and round3.metrics["train"]["snapshot"]["from_round"] == 1
    assert _round(world, eid, 2).status == "done"  # the other branch stays in the history
    assert worker.run_once() and worker.last_error is None  # generate round 3
    _eval_grids(worker)  # its eval job: pairs against round 1 and the base
    pairs3 = _ab_pairs(world, eid, round3.id)
    assert sorted(sorted((a, b)) for a, b, _, _ in pairs3) == [[0, 3]] * 4 + [[1, 3]] * 4
    assert _round(world, eid, 3).metrics["ab"]["previous_index"] == 1
    with read_session(world.factory) as s:
        rates = comparisons.ab_win_rates(session=s, experiment_id=eid)
    assert {k: v["parent_index"] for k, v in rates.items()} == {1: 0, 2: 1, 3: 1}
    assert all(v["vs_previous"]["n"] == 0 for v in rates.values())  # nobody voted yet
    worker.close()
