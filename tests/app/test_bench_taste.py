"""The product benchmark's measurements and its refusals (app.bench_taste, python -m app bench-taste)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from app import bench_taste

REPO = Path(__file__).resolve().parents[2]


def test_pixel_variety_is_the_mean_rms_difference_over_pairs():
    black, white, grey = np.zeros((2, 2, 3)), np.ones((2, 2, 3)), np.full((2, 2, 3), 0.5)
    # pairs: black-white 1, black-grey 0.5, white-grey 0.5 -> mean 2/3
    assert bench_taste.mean_pairwise_pixel_distance([black, white, grey]) == pytest.approx(2 / 3)
    assert bench_taste.mean_pairwise_pixel_distance([black]) is None


def test_embedding_variety_is_the_mean_euclidean_distance_over_pairs():
    v = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])
    assert bench_taste.mean_pairwise_distance(v) == pytest.approx((5 + 4 + 3) / 3)


def test_round_record_and_summary():
    pix = [np.zeros((2, 2, 3)), np.ones((2, 2, 3))]
    emb = np.array([[0.0, 0.0], [0.0, 2.0]])
    r0 = bench_taste.round_record(0, [2, 6, 7, 3], [2, 6, 7, 3], pix, emb, wait_s=None, labels_trained=0, base=None,
                                  mode="random")
    assert r0["share_ge6"] == 0.5 and r0["mean_rating"] == 4.5 and r0["variety_pixels_pct_round0"] == 100.0
    r1 = bench_taste.round_record(1, [6, 6, 8, 9], [6], [pix[0], pix[0] * 0 + 0.5], emb / 4, wait_s=12.5, labels_trained=4,
                                  base=r0, mode="uncertainty")
    assert r1["variety_pixels_pct_round0"] == pytest.approx(50.0) and r1["variety_embedding_pct_round0"] == pytest.approx(25.0)
    assert r1["honest_share_ge6"] == 1.0 and r1["honest_ratings"] == 1
    summary = bench_taste.summarise({"0": {"rounds": [r0, r1]}, "1": {"rounds": [r0]}})
    assert summary[0]["share_ge6"] == {"mean": 0.5, "min": 0.5, "max": 0.5, "n": 2}
    assert summary[1]["wait_s"] == {"mean": 12.5, "min": 12.5, "max": 12.5, "n": 1}
    assert summary[0]["wait_s"] is None
    assert "wait 12.5 s" in bench_taste.round_line(r1) and "wait -" in bench_taste.round_line(r0)
    assert not math.isnan(r1["mean_rating_ci95"][0])


def test_the_liked_images_variety_is_theirs_over_round_0s_variety_of_all():
    rng = np.random.default_rng(3)
    pix = [rng.random((3, 3, 3)) for _ in range(5)]
    emb = rng.normal(size=(5, 4))

    def brute_pixels(ims):  # RMS over all values, mean over unordered pairs
        return np.mean([np.sqrt(np.mean((ims[i] - ims[j]) ** 2)) for i in range(len(ims)) for j in range(i + 1, len(ims))])

    def brute_emb(e):
        return np.mean([np.sqrt(np.sum((e[i] - e[j]) ** 2)) for i in range(len(e)) for j in range(i + 1, len(e))])

    r0 = bench_taste.round_record(0, [1, 1, 1, 1, 1], [1] * 5, pix, emb, wait_s=None, labels_trained=0, base=None,
                                  mode="random", liked=[False] * 5)
    assert r0["liked_images"] == 0 and r0["variety_liked_pixels_pct_round0"] is None
    later = [pix[0], pix[1] * 0.5, pix[2], pix[3], pix[4] * 0.1]
    r1 = bench_taste.round_record(1, [7, 2, 6, 9, 1], [7, 2, 6, 9, 1], later, emb * 2, wait_s=1.0, labels_trained=5,
                                  base=r0, mode="random", liked=[True, False, True, True, False])
    liked = [later[0], later[2], later[3]]
    assert r1["liked_images"] == 3
    assert r1["variety_liked_pixels_pct_round0"] == pytest.approx(100 * brute_pixels(liked) / brute_pixels(pix))
    assert r1["variety_liked_embedding_pct_round0"] == pytest.approx(100 * brute_emb(2 * emb[[0, 2, 3]]) / brute_emb(emb))
    one = bench_taste.round_record(1, [7, 2, 2, 2, 2], [7], later, emb, wait_s=1.0, labels_trained=5, base=r0,
                                   mode="random", liked=[True, False, False, False, False])
    assert one["liked_images"] == 1 and one["variety_liked_embedding_pct_round0"] is None
    with pytest.raises(ValueError, match="liked has 2 flags for 5 images"):
        bench_taste.liked_variety(pix, emb, [True, True], r0)
    from app import bench_taste_report as report

    other = dict(r1, variety_liked_pixels_pct_round0=10.0, variety_liked_embedding_pct_round0=20.0)
    table = report.run_table(
        {"config": {"person": "p", "options": {"selection": "random", "candidate_factor": 1}},
         "seeds": {"0": {"complete": True, "rounds": [r0, r1]}, "1": {"complete": True, "rounds": [r0, one]},
                   "2": {"complete": True, "rounds": [r0, other]}}}, "t")
    px = (r1["variety_liked_pixels_pct_round0"] + 10.0) / 2  # the mean of the two seeds that have one; seed 1 has none
    em = (r1["variety_liked_embedding_pct_round0"] + 20.0) / 2
    assert f"| {px:.0f} (2/3) / {em:.0f} (2/3) |" in table


@pytest.mark.parametrize("person, expected", [
    ("nobody", "error: unknown person 'nobody'"),
    ("{tmp}/nope.py:rate", "error: person file"),
    ("{tmp}/p.py:eleven", "error: on two grey 32x32 test images, person '{tmp}/p.py:eleven' rated image 0 11; ratings must be "
                          "whole numbers from 1 to 10."),
])
def test_the_command_refuses_a_bad_person_in_one_sentence_before_any_work(tmp_path, person, expected):
    (tmp_path / "p.py").write_text("def eleven(images, prompts):\n    return [11] * len(prompts)\n")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "bench-taste", "--person", person.format(tmp=tmp_path),
                           "--rounds", "1", "--budget", "8", "--seeds", "0", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), proc.stderr
    assert not out.exists()  # nothing was created


@pytest.mark.parametrize("flags, expected", [
    (["--feedback", "ranks"], "error: --feedback must be scores, pairs or both, got 'ranks'"),
    (["--temperature", "1"], "error: --temperature and --tie-eps are how the person compares two images; give them "
                             "with --feedback pairs or both"),
    (["--feedback", "pairs", "--tie-eps", "-1"], "error: --tie-eps must be a finite number >= 0, got -1.0"),
    (["--set", "finetune.epoch=2"], "error: --set 'finetune.epoch=2': unknown field 'epoch'; choose from "),
    (["--set", "finetune.truncation=bogus"], "error: unknown truncation 'bogus'; choose from ['per_step', 'per_trajectory', 'stratified']"),
])
def test_the_command_refuses_bad_feedback_flags_in_one_sentence_before_any_work(tmp_path, flags, expected):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "bench-taste", "--person", "purple", "--rounds", "1", "--budget", "8",
                           "--seeds", "0", "--out", str(out), *flags], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
    assert not out.exists()


def test_the_pair_choice_follows_the_logistic_rule_with_ties_on_equal_ratings():
    import torch

    choice = bench_taste.PairChoice()
    assert choice.temperature == pytest.approx(math.sqrt(6) / math.pi * 0.5) and choice.tie_eps == 0
    assert {choice.choose(4, 4, seed=0, index=0, pair_id=i) for i in range(50)} == {"tie"}
    strict = bench_taste.PairChoice(temperature=0.0)
    assert {strict.choose(6, 5, seed=0, index=0, pair_id=i) for i in range(50)} == {"left"}
    assert {strict.choose(2, 9, seed=0, index=0, pair_id=i) for i in range(50)} == {"right"}
    assert {bench_taste.PairChoice(tie_eps=1.0).choose(6, 5, seed=0, index=0, pair_id=i) for i in range(50)} == {"tie"}
    # a one-point difference: left with probability sigmoid(1 / T) = 0.929 at the default T; 4000 draws, sd 0.004
    picks = [choice.choose(6, 5, seed=1, index=2, pair_id=i) for i in range(4000)]
    assert picks.count("left") / 4000 == pytest.approx(float(torch.sigmoid(torch.tensor(1 / choice.temperature))), abs=0.02)
    assert picks == [choice.choose(6, 5, seed=1, index=2, pair_id=i) for i in range(4000)]  # the same on a re-run
    with pytest.raises(bench_taste.BenchError, match="temperature must be a finite number >= 0"):
        bench_taste.PairChoice(temperature=float("nan"))


def test_compare_round_gives_the_person_each_images_own_prompt(tmp_path):
    """A preference pair can hold images of two prompts; compare_round handed the person the API's joined text
    ("a red circle / a blue square") for both images, so a prompt-aware person judged each image against a prompt
    it was not made for (found by review). Each image now goes with its own prompt."""
    import io

    from PIL import Image as PILImage

    from app import pairwise, people, storage
    from app.auth import Who
    from db import migrate, repo
    from db import testing as dbt
    from db.engine import make_engine, session_factory, write_session

    data = tmp_path / "data"
    data.mkdir()
    url = dbt.sqlite_url(tmp_path / "s.db")
    migrate.upgrade(url)
    factory = session_factory(make_engine(url))
    prompts = ["a red circle", "a blue square", "a green triangle"]
    with write_session(factory) as s:
        exp = repo.create_experiment(session=s, name=bench_taste.EXPERIMENT, model_spec="m", method="bootstrap",
                                     config={"app": {"feedback": "pairs"}}, budgets=[3], prompts=["p"], overlap=1).id
        round0 = repo.create_round(session=s, experiment_id=exp).id
        for k, prompt in enumerate(prompts):
            buf = io.BytesIO()
            PILImage.new("RGB", (8, 8), (40 * k, 0, 0)).save(buf, format="PNG")
            stored = storage.write_image(data, buf.getvalue())
            repo.add_image(session=s, round_id=round0, prompt=prompt, seed=k, file_path=stored.path,
                           sha256=stored.sha256, embedding=np.zeros(4, "<f4").tobytes(), embedding_dim=4, kind="query")
        repo.open_round(session=s, round_id=round0)
        pairwise.create_round_pairs(session=s, experiment_id=exp, round_id=round0)
        rater = repo.create_rater(session=s, name="sim", password_hash="x").id
    asked: list[tuple[list[int], list[str]]] = []

    def person_fn(images, image_prompts):
        # which image: image k is filled with red 40 * k (of 255)
        ks = [round(float(images[i, 0, 0, 0]) * 255 / 40) for i in range(images.shape[0])]
        asked.append((ks, list(image_prompts)))
        return [5] * len(image_prompts)

    given, _, _ = bench_taste.compare_round(factory, data, Who(rater, "sim", "rater", False),
                                            people.Person("probe", person_fn), bench_taste.PairChoice(), seed=0, index=0)
    assert given == len(asked) > 0
    for ks, image_prompts in asked:
        assert image_prompts == [prompts[k] for k in ks], (ks, image_prompts)


def test_seed_s_is_the_experiment_id_s_plus_1_and_the_placeholders_are_gone(tmp_path, worker_model_dir):
    from app.experiment_options import ExperimentOptions
    from app.settings import Settings
    from db import migrate, repo
    from db.engine import make_engine, read_session, session_factory

    settings = Settings.from_env({"data_dir": str(tmp_path / "data"), "model": str(worker_model_dir)}, environ={})
    (tmp_path / "data").mkdir()
    migrate.upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        factory = session_factory(engine)
        cfg = bench_taste.BenchConfig(person="purple", rounds=2, budget=4, seeds=(3,), out=tmp_path, model=str(worker_model_dir),
                                      options=ExperimentOptions(selection="optimistic", candidate_factor=2))
        assert bench_taste._create_experiment(factory, settings, cfg, 3) == 4
        with read_session(factory) as s:
            (exp,) = repo.list_experiments(session=s)
            assert (exp.id, exp.name, exp.budgets) == (4, "demo", [4, 4, 4])
            assert exp.config["app"]["selection"] == "optimistic" and exp.config["app"]["candidate_factor"] == 2
            assert [r.index for r in repo.list_rounds(session=s, experiment_id=4)] == [0]
    finally:
        engine.dispose()


def test_set_overrides_the_experiments_seiko_config_and_is_recorded(tmp_path, worker_model_dir):
    """``--set finetune.epochs=2`` reaches the experiment's stored config (the one the worker trains with), keeps the
    app options, and is part of the run's recorded config; the preset's value without it."""
    from app import services
    from app.experiment_options import ExperimentOptions
    from app.settings import Settings
    from db import migrate, repo
    from db.engine import make_engine, read_session, session_factory

    epochs = {}
    for name, overrides in (("plain", ()), ("set", ("finetune.epochs=2", "sampling.steps=8"))):
        settings = Settings.from_env({"data_dir": str(tmp_path / name), "model": str(worker_model_dir)}, environ={})
        (tmp_path / name).mkdir()
        migrate.upgrade(settings.db_url)
        engine = make_engine(settings.db_url)
        try:
            cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=tmp_path, model=str(worker_model_dir),
                                          options=ExperimentOptions(auto_close=True), overrides=overrides)
            factory = session_factory(engine)
            experiment_id = bench_taste._create_experiment(factory, settings, cfg, 0)
            with read_session(factory) as s:
                exp = repo.get_experiment(session=s, experiment_id=experiment_id)
                seiko = services.experiment_config(exp)
                epochs[name] = (seiko.finetune.epochs, seiko.sampling.steps)
                assert exp.config["app"]["auto_close"] is True
            assert cfg.as_dict().get("overrides", []) == list(overrides)
        finally:
            engine.dispose()
    assert epochs["set"] == (2, 8) and epochs["plain"] != (2, 8), epochs


def test_correlations_match_hand_computed_values():
    # Pearson by hand: x = (1, 2, 3, 4), y = (1, 3, 2, 4): centred (-1.5, -.5, .5, 1.5) and (-1.5, .5, -.5, 1.5),
    # sum of products 2.25 - .25 - .25 + 2.25 = 4, both sums of squares 5: r = 0.8 (no ties: rho = r here)
    got = bench_taste.correlations(np.array([1.0, 2, 3, 4]), np.array([1, 3, 2, 4]))
    assert got["pearson"] == pytest.approx(0.8) and got["spearman"] == pytest.approx(0.8)
    # a monotone but non-linear relation: Spearman 1, Pearson below 1
    x = np.array([0.0, 1, 2, 3, 4])
    got = bench_taste.correlations(np.exp(3 * x), x)
    assert got["spearman"] == pytest.approx(1.0) and got["pearson"] < 0.9
    # ties take their average rank: y = (1, 1, 2) has ranks (0.5, 0.5, 2) -> rho of x=(1,2,3) with them, by hand:
    # centred ranks (-1, 0, 1) and (-0.5, -0.5, 1): products .5 + 0 + 1 = 1.5; sqrt(2 * 1.5) = 1.732 -> 0.866
    got = bench_taste.correlations(np.array([1.0, 2, 3]), np.array([1, 1, 2]))
    assert got["spearman"] == pytest.approx(1.5 / math.sqrt(3.0))
    assert bench_taste.correlations(np.array([1.0, 2, 3]), np.array([5, 5, 5])) == {"pearson": None, "spearman": None}


def test_wait_breakdown_reads_what_the_worker_recorded():
    metrics = {"train": {"finetune": {"wall_s": 12.5}, "finetune_steps": 8, "reward_fit_s": 1.75},
               "generate": {"query_wall_s": 3.25, "wall_s": 9.0}}
    assert bench_taste.wait_breakdown(metrics) == {"reward_fit_s": 1.75, "finetune_s": 12.5, "finetune_steps": 8,
                                                   "query_images_s": 3.25, "generate_s": 9.0}
    assert bench_taste.wait_breakdown(None) == {"reward_fit_s": None, "finetune_s": None, "finetune_steps": None,
                                                "query_images_s": None, "generate_s": None}


def test_a_tiny_run_drives_the_real_worker_and_records_every_round(tmp_path, worker_model_dir):
    """The plumbing end to end on the tiny random model (its figures mean nothing about learning): 2 trainings, 3
    rated rounds, the worker subprocess, the admin's close, the reward model's held-out correlation and the wait's parts."""
    import json

    out = tmp_path / "bench"
    # a person who likes every other image: 2 liked images a round, so the liked images' variety is never empty
    (tmp_path / "alternate.py").write_text("def rate(images, prompts):\n    return [9 if i % 2 == 0 else 2 for i in range(len(prompts))]\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "app", "bench-taste", "--person", f"{tmp_path / 'alternate.py'}:rate",
                           "--rounds", "2", "--budget", "4",
                           "--seeds", "0", "--out", str(out), "--model", str(worker_model_dir), "--tiny"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    rounds = doc["seeds"]["0"]["rounds"]
    assert doc["seeds"]["0"]["complete"] and [r["round"] for r in rounds] == [0, 1, 2]
    assert all(r["ratings"] == 4 for r in rounds)
    # scores only: no pairs, the figures are the ratings given, and the config has no pair choice (earlier runs resume)
    assert all(r["comparisons"] == 0 and r["pairs_offered"] is None and r["labels"] == 4 and r["measured_by"] == "ratings"
               for r in rounds)
    assert doc["config"]["options"]["feedback"] == "scores" and "pair_choice" not in doc["config"]
    assert all(r["trained_on"]["feedback"] == "scores" and r["trained_on"]["ratings"] == 4 * r["round"] for r in rounds[1:])
    assert rounds[0]["wait_s"] is None and rounds[0]["reward_model"] is None and rounds[0]["wait_parts"] is None
    for r in rounds[1:]:
        assert r["wait_s"] > 0 and r["labels_trained"] == 4 * r["round"]
        parts = r["wait_parts"]
        assert parts["finetune_s"] > 0 and parts["finetune_steps"] >= 1 and parts["query_images_s"] > 0
        # the whole generate job's time is there once its eval grid is done (the rater may be quicker than that)
        assert parts["generate_s"] is None or parts["generate_s"] >= parts["query_images_s"]
        m = r["reward_model"]  # fitted on the earlier rounds, scored on this round's 4 ratings
        assert m["n"] == 4 and m["labels"] == r["round"]
        assert m["spearman"] is None or -1 <= m["spearman"] <= 1
    assert (out / "bench_taste.png").stat().st_size > 0
    for r in rounds:  # the liked images are the ratings >= 6 of the round's 4 images: 2 of them
        assert r["liked_images"] == round(4 * r["share_ge6"]) == 2
        assert r["variety_liked_pixels_pct_round0"] > 0 and r["variety_liked_embedding_pct_round0"] > 0
    # --rescore recomputes the liked images' variety of older records from the data dir: the same figures as recorded
    from app import bench_taste_report as report

    keys = ("liked_images", "variety_liked_pixels_pct_round0", "variety_liked_embedding_pct_round0")
    rounds = json.loads(json.dumps(rounds))  # what the live run recorded, kept apart from the doc stripped below
    for r in doc["seeds"]["0"]["rounds"]:
        for key in keys:
            r.pop(key)
    (out / "results.json").write_text(json.dumps(doc))
    assert report.rescore(out) == 3
    again = json.loads((out / "results.json").read_text())["seeds"]["0"]["rounds"]
    for old, new in zip(rounds, again):
        assert new["liked_images"] == old["liked_images"]
        for key in keys[1:]:
            assert new[key] == (None if old[key] is None else pytest.approx(old[key]))


def test_with_auto_close_a_round_is_measured_after_the_next_rounds_images_came(tmp_path, worker_model_dir, monkeypatch):
    """With --auto-close a round closes at its last rating and the worker starts training at once; the bench's own
    work on that round (pixels, embeddings, the reward model's correlation) waited until the next round's images came,
    so it neither took CPU from the time-limited fine-tuning nor delayed noticing the images (counted in the wait).
    Before, the round was measured between its last rating and the wait. Found by review."""
    from app import people
    from app.experiment_options import ExperimentOptions

    events = []
    real_wait, real_record = bench_taste._wait_for_batch, bench_taste.round_record

    def wait(factory, data_dir, who, worker, experiment_id, index, *rest):
        answer = real_wait(factory, data_dir, who, worker, experiment_id, index, *rest)
        events.append(("images came", index))
        return answer

    def record(index, *args, **kwargs):
        events.append(("measured", index))
        return real_record(index, *args, **kwargs)

    monkeypatch.setattr(bench_taste, "_wait_for_batch", wait)
    monkeypatch.setattr(bench_taste, "round_record", record)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = bench_taste.BenchConfig(person="purple", rounds=2, budget=4, seeds=(0,), out=tmp_path, model=str(worker_model_dir),
                                  options=ExperimentOptions(auto_close=True), tiny=True)
    rounds = bench_taste.run_seed(cfg, 0, people.load_person("purple"), on_round=lambda so_far: None)
    assert events == [("images came", 0), ("images came", 1), ("measured", 0), ("images came", 2), ("measured", 1),
                      ("measured", 2)]
    assert [r["round"] for r in rounds] == [0, 1, 2] and all(r["ratings"] == 4 for r in rounds)
    assert rounds[0]["wait_s"] is None and all(r["wait_s"] > 0 for r in rounds[1:])
    assert [r["labels_trained"] for r in rounds] == [0, 4, 8]


def test_a_tiny_pairs_run_compares_through_the_pair_api_and_the_worker_fits_on_the_comparisons(tmp_path, worker_model_dir):
    """--feedback pairs end to end on the tiny model: the person answers every pair a round offers (next_pair,
    submit_comparison), rates nothing, and each train job fitted on the comparisons so far. Seed 0 at budget 4 offers
    3, 2 and 4 pairs in rounds 0-2 (at most the budget; the labels actually given are recorded). Before images alone
    with their prompt were paired across prompts (3 Dec 2026) it was 3, 1 and 1."""
    import json
    import sqlite3

    out = tmp_path / "bench"
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "app", "bench-taste", "--person", "purple", "--rounds", "2", "--budget", "4",
                           "--seeds", "0", "--out", str(out), "--model", str(worker_model_dir), "--tiny", "--feedback", "pairs"],
                          capture_output=True, text=True, timeout=900, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "results.json").read_text())
    assert doc["config"]["options"]["feedback"] == "pairs"
    assert doc["config"]["pair_choice"]["temperature"] == pytest.approx(bench_taste.DEFAULT_PAIR_TEMPERATURE)
    assert doc["config"]["pair_choice"]["tie_eps"] == 0.0 and "sigmoid" in doc["pair_choice_rule"]
    assert "never submitted" in doc["measure"] and "at most B pairs" in doc["budget_rule"]
    rounds = doc["seeds"]["0"]["rounds"]
    assert doc["seeds"]["0"]["complete"] and [r["round"] for r in rounds] == [0, 1, 2]
    assert [r["pairs_offered"] for r in rounds] == [3, 2, 4]
    given = 0
    for r in rounds:
        assert r["ratings"] == 0 and r["comparisons"] == r["pairs_offered"] > 0 and r["labels"] == r["comparisons"]
        assert 0 <= r["comparison_ties"] <= r["comparisons"]
        assert r["labels_trained"] == given
        # the honest measure: the person's ratings of all 4 query images, not submitted
        assert r["measured_by"] == "person" and r["measured_images"] == 4 and 1 <= r["mean_rating"] <= 10
        if r["round"]:
            assert r["trained_on"] == {"feedback": "pairs", "ratings": 0, "votes": given, "labels": given,
                                       "images": r["trained_on"]["images"]}
            assert r["reward_model"]["n"] == 4
        given += r["labels"]
    assert "3 of 3 pairs compared" in proc.stdout
    with sqlite3.connect(out / "seed_0" / "data" / "seiko.db") as db:
        assert db.execute("select count(*) from ratings").fetchone() == (0,)
        assert db.execute("select count(*) from comparison_votes").fetchone() == (given,)


def test_liked_variety_is_the_liked_images_variety_over_all_images(tmp_path):
    from app import taste_variety

    person = tmp_path / "bright.py"
    person.write_text("def rate(images, prompts):\n    return [10 if float(im.mean()) > 0.5 else 1 for im in images]\n")
    rng = np.random.default_rng(0)
    images = np.concatenate([rng.integers(140, 256, (5, 4, 4, 3)), rng.integers(0, 100, (7, 4, 4, 3))]).astype(np.uint8)
    emb = rng.normal(size=(12, 3))
    got = taste_variety.liked_variety(f"{person}:rate", images, emb)
    assert (got["n"], got["liked"]) == (12, 5)

    def brute_pixels(ims):  # RMS over all pixel values, mean over unordered pairs
        x = ims.reshape(len(ims), -1).astype(np.float64) / 255.0
        return np.mean([np.sqrt(np.mean((x[i] - x[j]) ** 2)) for i in range(len(x)) for j in range(i + 1, len(x))])

    def brute_emb(e):
        return np.mean([np.linalg.norm(e[i] - e[j]) for i in range(len(e)) for j in range(i + 1, len(e))])

    assert got["variety_pixels_liked_pct"] == pytest.approx(100 * brute_pixels(images[:5]) / brute_pixels(images))
    assert got["variety_embedding_liked_pct"] == pytest.approx(100 * brute_emb(emb[:5]) / brute_emb(emb))


def test_mixture_variety_matches_the_closed_form_of_two_clusters():
    """Liked images all white (embedding 0), the others all black (embedding 1): only cross pairs differ, by exactly 1.

    A round of m with k liked has mean pairwise distance k(m-k)/C(m,2); a random round of m drawn from N images with
    L liked has, in expectation, the chance that a random pair of distinct images is a cross pair, 2L(N-L)/(N(N-1))."""
    from app import taste_variety

    n, n_liked, size = 60, 20, 10
    liked = np.zeros(n, dtype=bool)
    liked[:n_liked] = True
    images = np.where(liked[:, None, None, None], 255, 0).astype(np.uint8) * np.ones((1, 4, 4, 3), dtype=np.uint8)
    emb = np.where(liked, 0.0, 1.0)[:, None]
    got = taste_variety.mixture_variety(images, emb, liked, 0.6, size=size, rounds=3000, seed=1)
    k = 6
    mixed = k * (size - k) / (size * (size - 1) / 2)
    every = 2 * n_liked * (n - n_liked) / (n * (n - 1))
    assert got["liked_per_round"] == k
    for name in ("pixels", "embedding"):
        assert got[f"variety_{name}_mixture_pct"] == pytest.approx(100 * mixed / every, rel=0.03)
    # a round of one cluster has no variety at all
    assert taste_variety.mixture_variety(images, emb, liked, 1.0, size=size, rounds=50)["variety_embedding_mixture_pct"] == 0.0


@pytest.mark.parametrize("flags, expected", [
    (["--n", "0"], "--n must be from 2 to 20,000 images, got 0"),  # printed a liked share of 0.0 of no image
    (["--n", "1"], "--n must be from 2 to 20,000 images, got 1"),
    (["--n", "-1"], "--n must be from 2 to 20,000 images, got -1"),  # numpy's "negative dimensions are not allowed"
    (["--n", "100000000000"], "--n must be from 2 to 20,000 images, got 100000000000"),  # a MemoryError traceback
    (["--seed", "-1"], "--seed must be a whole number of at least 0, got -1"),  # numpy's "expected non-negative integer"
])
def test_taste_variety_refuses_an_image_count_or_seed_it_cannot_use_before_any_work(flags, expected, capsys, monkeypatch):
    """Found by the nineteenth review; refused before a model loads or an image is drawn."""
    from app import taste_variety
    from seiko_core.toy import dataset

    monkeypatch.setattr(dataset, "generate", lambda *a, **k: pytest.fail("images were drawn"))
    with pytest.raises(SystemExit) as info:
        taste_variety.main(["--person", "purple", *flags])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"python -m app.taste_variety: error: {expected}"


def test_mixture_variety_refuses_a_round_it_cannot_draw_in_one_sentence():
    from app import taste_variety

    liked = np.array([True, True] + [False] * 30)
    images = np.zeros((32, 2, 2, 3), dtype=np.uint8)
    emb = np.zeros((32, 2))
    with pytest.raises(ValueError, match=r"needs 19 liked and 13 other images; there are 2 and 30"):
        taste_variety.mixture_variety(images, emb, liked, 0.6)
    with pytest.raises(ValueError, match="share must be between 0 and 1, got 1.5"):
        taste_variety.mixture_variety(images, emb, liked, 1.5)


def _doc(shares, means):
    rounds = lambda s, m: [{"round": k, "share_ge6": s[k], "mean_rating": m[k], "variety_pixels_pct_round0": 100.0,  # noqa: E731
                            "variety_embedding_pct_round0": 100.0, "wait_s": None if k == 0 else 30.0,
                            "reward_corr": None if k == 0 else 0.5} for k in range(len(s))]
    return {"config": {"person": "purple", "options": {"selection": "random", "candidate_factor": 1}},
            "seeds": {str(i): {"complete": True, "rounds": rounds(shares[i], means[i])} for i in range(len(shares))}}


def test_the_report_pairs_runs_by_seed_on_the_last_round():
    from app import bench_taste_report as report

    before = _doc([[0.0, 0.25], [0.0, 0.5]], [[1.0, 2.0], [1.0, 3.0]])
    after = _doc([[0.0, 0.75], [0.0, 0.5]], [[1.0, 4.0], [1.0, 2.5]])
    text = report.paired(before, after, "before", "after")
    assert "| 0 | 1 | 25 -> 75 | +50 | 2.00 -> 4.00 | +2.00 |" in text
    assert "| 1 | 1 | 50 -> 50 | +0 | 3.00 -> 2.50 | -0.50 |" in text
    assert "| mean | | | +25.0 | | +0.75 |" in text  # (50 + 0) / 2 and (2.0 - 0.5) / 2
    table = report.run_table(after, "after")
    assert "| 1 | **62** (75 / 50) | **3.25** (4.00 / 2.50) | **100** (100 / 100) |" in table


def test_the_report_pools_the_seeds_of_several_pairs():
    from app import bench_taste_report as report

    before_1 = _doc([[0.0, 0.25], [0.0, 0.5]], [[1.0, 2.0], [1.0, 3.0]])
    after_1 = _doc([[0.0, 0.75], [0.0, 0.5]], [[1.0, 4.0], [1.0, 2.5]])
    before_2 = _doc([[0.0, 0.5], [0.0, 0.25]], [[1.0, 2.0], [1.0, 3.0]])
    after_2 = _doc([[0.0, 0.25], [0.0, 0.5]], [[1.0, 4.0], [1.0, 2.5]])
    after_2["seeds"]["1"]["rounds"][1]["variety_embedding_pct_round0"] = 80.0
    after_2["seeds"]["0"]["rounds"][1]["wait_s"] = 41.5
    got = report.pooled_pairs([(before_1, after_1), (before_2, after_2)])
    # differences +50, 0, -25, +25 points: mean 12.5, sample sd sqrt((37.5^2 + 12.5^2) * 2 / 3), t(3) = 3.182446
    # (printed tables to 6 decimals: the quantile is exact since the eleventh review, the table's 3.182 before)
    sd = math.sqrt((37.5 ** 2 + 12.5 ** 2) * 2 / 3)
    assert got["n"] == 4 and got["share_diff"] == pytest.approx(12.5)
    assert got["share_ci95"] == pytest.approx(3.182446 * sd / 2)
    assert got["wins"] == 2.5  # two wins and a tie
    assert got["variety_emb_diff"] == pytest.approx(-20 / 4)
    assert got["max_wait_s"] == 41.5
    table = report.pooled_table([(before_1, after_1), (before_2, after_2)], [("b1", "a1"), ("b2", "a2")])
    assert "| 4 | +12.5 [-38.9, +63.9] | 2.5/4 | -5.0 | 41.5 |" in table  # 12.5 -+ 51.357 (the table's t: 51.349)


def test_the_goals_count_rounds_after_round_0_and_correlate_share_with_variety():
    from app import bench_taste_report as report

    doc = _doc([[0.0, 0.6, 0.9], [0.0, 0.2, 0.4]], [[1.0, 5.0, 7.0], [1.0, 2.0, 3.0]])
    emb = {("0", 1): 85.0, ("0", 2): 60.0, ("1", 1): 95.0, ("1", 2): 90.0}
    for (seed, k), v in emb.items():
        doc["seeds"][seed]["rounds"][k]["variety_embedding_pct_round0"] = v
    doc["seeds"]["1"]["rounds"][2]["variety_pixels_pct_round0"] = 79.0  # pixels below the goal: not a variety round
    got = report.goals_across([doc])
    shares, varieties = [0.6, 0.9, 0.2, 0.4], [85.0, 60.0, 95.0, 90.0]
    assert got["rounds"] == 4 and got["share_goal"] == 2 and got["variety_goal"] == 2 and got["both"] == 1
    ms, mv = sum(shares) / 4, sum(varieties) / 4  # Pearson's r by its definition
    cov = sum((a - ms) * (b - mv) for a, b in zip(shares, varieties))
    r = cov / math.sqrt(sum((a - ms) ** 2 for a in shares) * sum((b - mv) ** 2 for b in varieties))
    assert got["r_share_variety_emb"] == pytest.approx(r)
    with pytest.raises(ValueError, match="no round after round 0"):
        report.goals_across([_doc([[0.0]], [[1.0]])])


@pytest.mark.parametrize("pairs, named", [
    (lambda a, b, c: [(a, b), (a, c)], "a"),  # one baseline against two runs
    (lambda a, b, c: [(a, b), (c, b)], "b"),
    (lambda a, b, c: [(a, b), (b, c)], "b"),  # a run on the B side of one pair and the A side of another
    (lambda a, b, c: [(a, a)], "a"),  # both sides of one pair
    (lambda a, b, c: [(a, b), (__import__("copy").deepcopy(a), c)], "a"),  # one directory given twice: loaded twice
])
def test_the_report_refuses_to_pool_a_runs_seed_twice(pairs, named):
    """--paired A B --paired A C pooled A's seeds twice: 4 'pairs' from 2 seeds of A, with a t-interval that took
    them for independent (found by review)."""
    from app import bench_taste_report as report

    runs = {"a": _doc([[0.0, 0.25], [0.0, 0.5]], [[1.0, 2.0], [1.0, 3.0]]),
            "b": _doc([[0.0, 0.75], [0.0, 0.5]], [[1.0, 4.0], [1.0, 2.5]]),
            "c": _doc([[0.0, 0.5], [0.0, 0.25]], [[1.0, 3.0], [1.0, 2.0]])}
    given = pairs(runs["a"], runs["b"], runs["c"])
    names = [(next(k for k, v in runs.items() if v == a), next(k for k, v in runs.items() if v == b)) for a, b in given]
    with pytest.raises(ValueError) as err:
        report.pooled_pairs(given, names)
    assert str(err.value) == (f"seed 0 of {named} would be pooled twice (the run is in more than one --paired pair, or "
                              "on both sides of one); give each run in one pair only")
    # three different runs in two pairs, each once: pooled
    assert report.pooled_pairs([(runs["a"], runs["b"]), (runs["c"], _doc([[0.0, 0.5]] * 2, [[1.0, 2.0]] * 2))])["n"] == 4


def _seed_data(data: Path, monkeypatch, rounds: list[tuple]) -> None:
    """A bench-taste seed 0's data dir (experiment 1): per round k, ``(scores, preds)`` or ``(scores, preds, modes)``:
    its query images rated ``scores`` by one rater, each image's embedding (p, p) for its ``preds`` value p, the
    selection mode that showed each image as the worker records it (``modes``: "random" is the honest sample), and
    from round 1 on a reward model on disk that predicts p for that embedding (its heads read the embedding's
    coordinates; RewardEnsemble.load gives that stand-in)."""
    from app import storage
    from db import migrate, repo
    from db import testing as dbt
    from db.engine import make_engine, session_factory, write_session
    from seiko_core import checkpoint
    from seiko_core.reward import RewardEnsemble

    data.mkdir(parents=True)
    url = dbt.sqlite_url(data / "seiko.db")
    migrate.upgrade(url)
    engine = make_engine(url)
    try:
        with write_session(session_factory(engine)) as s:
            exp = repo.create_experiment(session=s, name=bench_taste.EXPERIMENT, model_spec="m", method="bootstrap",
                                         config={}, budgets=[len(r[0]) for r in rounds], prompts=["p"]).id
            assert exp == 1  # seed 0
            rater = repo.create_rater(session=s, name="sim", password_hash="x").id
            for k, (scores, preds, *modes) in enumerate(rounds):
                round_ = repo.create_round(session=s, experiment_id=exp,
                                           adapter_path=f"adapters/exp{exp}/round_{k}" if k else None)
                round_id = round_.id
                if modes:  # app.selection.record's shape, as far as honest_ids reads it
                    round_.metrics = {"selection": {"selection": "optimistic",
                                                    "images": {str(j): {"mode": m} for j, m in enumerate(modes[0])}}}
                ids = [repo.add_image(session=s, round_id=round_id, prompt="p", seed=j, file_path=f"images/{k}_{j}.png",
                                      sha256=f"{k:032x}{j:032x}", embedding=np.array([p, p], "<f4").tobytes(),
                                      embedding_dim=2, kind="query").id for j, p in enumerate(preds)]
                repo.open_round(session=s, round_id=round_id)
                for image_id, score in zip(ids, scores):
                    repo.add_rating(session=s, image_id=image_id, rater_id=rater, score=score)
                repo.set_round_status(session=s, round_id=round_id, status="done")
                if k:
                    checkpoint.atomic_directory(storage.resolve(data, storage.reward_path(exp, k)),
                                                lambda d: (d / "reward.json").write_text("{}"))
    finally:
        engine.dispose()
    monkeypatch.setattr(RewardEnsemble, "load", classmethod(lambda cls, path, device="cpu": (lambda x: x)))


def test_rescore_writes_the_summary_of_the_rounds_it_filled_in(tmp_path, monkeypatch):
    """--rescore filled the rounds' reward_corr and wrote the old summary back, which had none: results.json
    contradicted itself (found by review). The summary is now summarise() of the rounds as written."""
    import json

    from app import bench_taste_report as report

    run_dir = tmp_path / "run"
    _seed_data(run_dir / "seed_0" / "data", monkeypatch, [([3, 4, 5, 6], [0.0] * 4), ([2, 9, 5, 7], [0.1, 0.4, 0.2, 0.3])])
    old = _doc([[0.0, 0.5]], [[4.5, 5.75]])  # as an older bench-taste wrote it: no reward model figures
    for r in old["seeds"]["0"]["rounds"]:
        r.pop("reward_corr")
        r["liked_images"] = 2
    old["summary"] = bench_taste.summarise(old["seeds"])
    assert old["summary"][1]["reward_corr"] is None
    (run_dir / "results.json").write_text(json.dumps(old))
    assert report.rescore(run_dir) == 2
    doc = json.loads((run_dir / "results.json").read_text())
    # round 1: predictions (0.1, 0.4, 0.2, 0.3) rank the ratings (2, 9, 5, 7) in their order: rho 1
    assert doc["seeds"]["0"]["rounds"][1]["reward_corr"] == pytest.approx(1.0)
    assert doc["summary"] == bench_taste.summarise(doc["seeds"])
    assert doc["summary"][1]["reward_corr"] == {"mean": pytest.approx(1.0), "min": pytest.approx(1.0),
                                                "max": pytest.approx(1.0), "n": 1}


def test_the_reward_models_correlation_on_the_honest_images_by_hand():
    """Under a selection mode the reward model's correlation was only measured on every shown image, most of which that
    model chose, which biases it down (found by review); it is now also measured on the honest images alone."""
    pred, scores = np.array([1.0, 2, 3, 4, 5, 6]), [2, 1, 3, 6, 5, 4]
    got = bench_taste.reward_figures(2, pred, scores, [True, True, True, False, False, False])
    # all six (no ties, so Pearson = Spearman): ranks (0..5) and (1, 0, 2, 5, 4, 3), d = (-1, 1, 0, -2, 0, 2),
    # sum d^2 = 10: rho = 1 - 6 * 10 / (6 * 35) = 5/7
    assert got["spearman"] == pytest.approx(5 / 7) and got["pearson"] == pytest.approx(5 / 7) and got["n"] == 6
    # the honest three: (1, 2, 3) against (2, 1, 3): centred (-1, 0, 1) and (0, -1, 1), products 1, squares 2 and 2: 1/2
    assert got["honest"] == {"pearson": pytest.approx(0.5), "spearman": pytest.approx(0.5), "n": 3}
    # random selection: every image honest, the same figure
    same = bench_taste.reward_figures(2, pred, scores, [True] * 6)
    assert same["honest"]["spearman"] == same["spearman"] == pytest.approx(5 / 7)
    # fewer honest images than a correlation needs: None
    assert bench_taste.reward_figures(2, pred, scores, [True, True] + [False] * 4)["honest"] is None
    # in the round's record and the summary over seeds
    pix, emb = [np.zeros((2, 2, 3)), np.ones((2, 2, 3))], np.array([[0.0, 0.0], [0.0, 2.0]])
    r1 = bench_taste.round_record(1, scores, scores[:3], pix, emb, wait_s=1.0, labels_trained=6, base=None,
                                  mode="optimistic", reward_model=got)
    assert r1["reward_corr"] == pytest.approx(5 / 7) and r1["reward_corr_honest"] == pytest.approx(0.5)
    r2 = bench_taste.round_record(1, scores, scores[:3], pix, emb, wait_s=1.0, labels_trained=6, base=None,
                                  mode="optimistic", reward_model=None)
    assert r2["reward_corr_honest"] is None
    summary = bench_taste.summarise({"0": {"rounds": [r1]}, "1": {"rounds": [r2]}})
    assert summary[0]["reward_corr_honest"] == {"mean": pytest.approx(0.5), "min": pytest.approx(0.5),
                                                "max": pytest.approx(0.5), "n": 1}


def test_the_honest_correlation_is_measured_on_the_rounds_random_images(tmp_path, monkeypatch):
    """From the data dir: the round's honest images are those the worker recorded as drawn at random (honest_ids),
    as the live run and --rescore take them; --rescore fills the figure in for a run that predates it."""
    import json

    from app import bench_taste_report as report
    from db import repo
    from db.engine import make_engine, read_session, session_factory

    run_dir = tmp_path / "run"
    data = run_dir / "seed_0" / "data"
    modes = ["optimistic", "random", "optimistic", "random", "optimistic", "random"]
    _seed_data(data, monkeypatch, [([3, 4, 5, 6, 7, 8], [0.0] * 6),
                                   ([2, 6, 1, 3, 5, 4], [4.0, 1.0, 5.0, 2.0, 6.0, 3.0], modes)])
    engine = make_engine(f"sqlite:///{data / 'seiko.db'}")
    try:
        with read_session(session_factory(engine)) as s:
            query = repo.list_images(session=s, round_id=repo.get_round_by_index(session=s, experiment_id=1, index=1).id)
            honest = [im.id for im, m in zip(query, modes) if m == "random"]
            got = bench_taste.round_reward_quality(s, data, 1, 1, query, honest=honest)
    finally:
        engine.dispose()
    # the honest images (predictions 1, 2, 3) are rated (6, 3, 4): ranks (0, 1, 2) and (2, 0, 1), centred (-1, 0, 1)
    # and (1, -1, 0): products -1, squares 2 and 2: rho -1/2. All six: predictions rank the images (3, 0, 4, 1, 5, 2)
    # by position, the ratings (1, 5, 0, 2, 4, 3): d = (2, -5, 4, -1, 1, -1), sum d^2 = 48, rho = 1 - 288 / 210
    assert got["honest"]["spearman"] == pytest.approx(-0.5) and got["honest"]["n"] == 3
    assert got["spearman"] == pytest.approx(1 - 6 * 48 / 210)
    old = _doc([[0.0, 0.5]], [[5.5, 3.5]])  # as an older bench-taste wrote it: no honest correlation
    old["seeds"]["0"]["rounds"][1]["reward_model"] = {k: v for k, v in got.items() if k != "honest"}
    for r in old["seeds"]["0"]["rounds"]:
        r["liked_images"] = 2
    (run_dir / "results.json").write_text(json.dumps(old))
    report.rescore(run_dir)
    doc = json.loads((run_dir / "results.json").read_text())
    r1 = doc["seeds"]["0"]["rounds"][1]
    assert r1["reward_corr_honest"] == pytest.approx(-0.5) and r1["reward_model"]["honest"]["n"] == 3
    assert doc["seeds"]["0"]["rounds"][0]["reward_corr_honest"] is None
    assert doc["summary"][1]["reward_corr_honest"]["mean"] == pytest.approx(-0.5)


def test_the_report_refuses_to_pool_runs_without_a_common_seed():
    from app import bench_taste_report as report

    a = _doc([[0.0, 0.25]], [[1.0, 2.0]])
    b = _doc([[0.0, 0.25]], [[1.0, 2.0]])
    b["seeds"] = {"7": b["seeds"]["0"]}
    with pytest.raises(ValueError, match="share no seed"):
        report.pooled_pairs([(a, b)])


# ---------------------------------------------------------------------------------------------
# refusals of what it is given: --set, --seeds, an --out it did not make, a results.json it did not write
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, expected", [
    ("prompts=[]", "prompts must hold at least one prompt to sample from, got []"),
    ("eval_prompts=[]", "eval_prompts must hold at least one held-out prompt, got []"),
    ("optimism.aggregation=foo", "unknown aggregation 'foo'; choose from ['max', 'mean', 'softmax', 'thompson', 'ucb_heads']"),
    ("sampling=3", "sampling must be a JSON object, got 3"),
    ("reward.hidden=5", "hidden must be a list, got 5"),
    ('eval_seeds=["a"]', "eval_seeds must be whole numbers, got ['a']"),
    ("eval_seeds=[1.7]", "eval_seeds must be whole numbers, got [1.7]"),
    ("prompts=abc", "prompts must be a list, got 'abc'"),
    ("finetune.target_modules=to_q", "target_modules must be a list, got 'to_q'"),
    ("prompts=[1,2]", "prompts must be non-empty texts, got [1, 2]"),
    ("finetune.kl_weight=1e308", "finetune.kl_weight (the KL weight) must be at most 1000, got 1e+308"),
    ("finetune.max_seconds=1e300", "finetune.max_seconds (the fine-tuning time limit per round) must be at most 604,800 s "
                                   "(7 days), got 1e+300"),
])
def test_check_overrides_refuses_a_bad_set_in_one_sentence_naming_the_field(tmp_path, override, expected):
    from app.experiment_options import ExperimentOptions

    cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=tmp_path, model="m",
                                  options=ExperimentOptions(), overrides=("finetune.epochs=2", override))
    with pytest.raises(bench_taste.BenchError) as err:
        cfg.check_overrides()
    assert str(err.value) == expected
    bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=tmp_path, model="m",
                            options=ExperimentOptions(), overrides=('prompts=["a star"]',)).check_overrides()


def test_the_command_refuses_an_unknown_aggregation_before_any_work(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "app", "bench-taste", "--person", "purple", "--rounds", "1", "--budget", "8",
                           "--seeds", "0", "--out", str(out), "--set", "optimism.aggregation=foo"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: unknown aggregation 'foo'; choose from ['max', 'mean', 'softmax', "
                                                "'thompson', 'ucb_heads']"], proc.stderr
    assert not out.exists()


def test_seeds_are_bounded_in_one_sentence():
    import argparse

    from app.cli_bench_taste import _seeds

    assert _seeds("0,10000") == (0, 10000)
    assert _seeds(",".join(map(str, range(64)))) == tuple(range(64))
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--seeds must be at most 64 seeds, each from 0 to 10000, "
                                                         r"got 2 seed\(s\) up to 10001$"):
        _seeds("0,10001")
    with pytest.raises(argparse.ArgumentTypeError, match=r"got 65 seed\(s\) up to 64$"):
        _seeds(",".join(map(str, range(65))))
    with pytest.raises(argparse.ArgumentTypeError, match=r"^--seeds must be whole numbers separated by commas, "
                                                         r"got '1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,1\.\.\.'$"):
        _seeds(",".join(map(str, range(1, 40))) + ",x")


class _Started(Exception):
    """Raised where a seed's fresh data dir is migrated: the seed got that far."""


@pytest.fixture
def bench_run(tmp_path, monkeypatch):
    """``run(cfg)`` up to the point where a seed migrates its fresh database (no model, no worker): the person and
    the model are not loaded, and ``started`` lists the seeds that got there."""
    from app import services
    from app.experiment_options import ExperimentOptions
    from db import migrate

    started = []

    def upgrade(url):
        started.append(url)
        raise _Started(url)

    monkeypatch.setattr(bench_taste.people, "load_person", lambda spec: object())
    monkeypatch.setattr(bench_taste.people, "check_person", lambda person, size=32: None)
    monkeypatch.setattr(services, "check_model_spec", lambda spec: spec)
    monkeypatch.setattr(migrate, "upgrade", upgrade)
    out = tmp_path / "out"
    cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0, 1), out=out, model="m",
                                  options=ExperimentOptions())

    def go(**changes):
        from dataclasses import replace

        bench_taste.run(replace(cfg, **changes), ["test"], log=go.logged.append)

    go.cfg, go.out, go.started, go.logged = cfg, out, started, []
    return go


def _results(cfg, seeds) -> str:
    import json

    return json.dumps({"benchmark": "bench-taste", "config": cfg.as_dict(), "seeds": seeds})


def _finished(rounds: int) -> dict:
    return {"complete": True, "wall_s": 1.0,
            "rounds": [{"round": k, "mean_rating": 5.0, "share_ge6": 0.5, "wait_s": None if k == 0 else 2.0}
                       for k in range(rounds + 1)]}


def test_a_seed_directory_it_did_not_make_is_refused_and_kept(bench_run):
    """``mkdir -p out/seed_0; echo x > out/seed_0/important.txt`` and a run with seed 0 removed important.txt (run_seed
    deleted any seed_<s>/ there). Found by review."""
    keep = bench_run.out / "seed_0" / "important.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("x")
    with pytest.raises(bench_taste.BenchError, match=r"seed_0 exists but results.json there does not list seed 0 as "
                                                     r"unfinished, so it is not this benchmark's to start again; give "
                                                     r"another --out$"):
        bench_run()
    assert keep.read_text() == "x" and not bench_run.started
    assert sorted(p.name for p in bench_run.out.iterdir()) == ["seed_0"]  # no results.json written either
    # a finished seed 0 kept in results.json: its directory is kept and not refused; seed 1's is not listed: refused
    (bench_run.out / "results.json").write_text(_results(bench_run.cfg, {"0": _finished(1)}))
    (bench_run.out / "seed_1").mkdir()
    (bench_run.out / "seed_1" / "notes.txt").write_text("mine")
    before = (bench_run.out / "results.json").read_text()
    with pytest.raises(bench_taste.BenchError, match="seed_1 exists but results.json there does not list seed 1"):
        bench_run()
    assert (bench_run.out / "seed_1" / "notes.txt").read_text() == "mine" and keep.read_text() == "x"
    assert (bench_run.out / "results.json").read_text() == before and not bench_run.started


def test_an_unfinished_seed_listed_in_results_json_starts_again_on_a_fresh_directory(bench_run):
    import json

    stale = bench_run.out / "seed_1" / "data" / "old.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("from the stopped run")
    (bench_run.out / "results.json").write_text(_results(bench_run.cfg, {"0": _finished(1), "1": {
        "complete": False, "wall_s": 3.0, "rounds": _finished(1)["rounds"][:1]}}))
    with pytest.raises(_Started):
        bench_run()
    assert len(bench_run.started) == 1 and not stale.exists() and (bench_run.out / "seed_1" / "data").is_dir()
    doc = json.loads((bench_run.out / "results.json").read_text())
    assert doc["seeds"]["0"] == _finished(1)  # kept
    assert doc["seeds"]["1"] == {"complete": False, "rounds": [], "wall_s": 0.0}  # listed before its directory was made


def test_a_run_stopped_in_its_first_round_resumes_and_is_not_refused(bench_run):
    """A seed is listed as unfinished in results.json before its directory is made: stopped before its first round
    ended, the same command starts it again rather than refusing its directory."""
    for _ in range(2):
        with pytest.raises(_Started):
            bench_run()
        assert (bench_run.out / "seed_0" / "data").is_dir()
    assert len(bench_run.started) == 2


def test_a_resume_is_refused_when_the_model_files_or_the_person_file_changed(bench_run, tmp_path):
    """A resume was accepted whenever the settings' strings matched: a rebuilt model directory or an edited person
    file under the same --model and --person mixed two models or two people in one run's seeds (found by review)."""
    import hashlib
    import json

    from seiko_core.checkpoint import directory_sha256

    model, person = tmp_path / "model", tmp_path / "person.py"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "weights.safetensors").write_bytes(b"weights")
    person.write_text("def rate(images, prompts):\n    return [5] * len(prompts)\n")
    spec = f"{person}:rate"
    results = bench_run.out / "results.json"
    for _ in range(2):  # the same files: recorded, then resumed (seed 0, unfinished, starts again)
        with pytest.raises(_Started):
            bench_run(model=str(model), person=spec)
    doc = json.loads(results.read_text())
    assert doc["config"]["model_sha256"] == directory_sha256(model)
    assert doc["config"]["person_sha256"] == hashlib.sha256(person.read_bytes()).hexdigest()
    # each invocation with its commit, kept across the resume
    assert [i["command"] for i in doc["invocations"]] == [["test"], ["test"]]
    assert all(i["commit"] == bench_taste.git_commit() for i in doc["invocations"]) and not bench_run.logged
    before = results.read_text()

    (model / "unet" / "weights.safetensors").write_bytes(b"rebuilt")
    with pytest.raises(bench_taste.BenchError) as err:
        bench_run(model=str(model), person=spec)
    assert str(err.value) == (f"{results} was run with other model files under the same --model {model} (sha256 "
                              f"{doc['config']['model_sha256'][:12]} then, {directory_sha256(model)[:12]} now), and its "
                              "seeds would mix the two; restore them to resume it, or give another --out")
    (model / "unet" / "weights.safetensors").write_bytes(b"weights")
    person.write_text("def rate(images, prompts):\n    return [6] * len(prompts)\n")
    with pytest.raises(bench_taste.BenchError, match=rf"^{results} was run with other person file under the same "
                                                     rf"--person {spec} \(sha256 .* then, .* now\), and its seeds would"):
        bench_run(model=str(model), person=spec)
    assert results.read_text() == before and len(bench_run.started) == 2


def test_a_results_file_from_before_the_hashes_is_resumed_with_a_warning(bench_run):
    """Runs written before the model's and the person's hashes were recorded still resume (their settings match),
    with one line saying that the files could not be checked; the file then records them."""
    import json

    results = bench_run.out / "results.json"
    results.parent.mkdir()
    results.write_text(_results(bench_run.cfg, {"0": _finished(1)}))  # the config without the hashes
    with pytest.raises(_Started):
        bench_run()
    assert bench_run.logged[0] == (f"warning: {results} was written before runs recorded their model's and person's "
                                   "hashes, so they are not checked; resuming it")
    assert len([line for line in bench_run.logged if line.startswith("warning")]) == 1
    doc = json.loads(results.read_text())
    assert doc["config"]["model_sha256"] is None  # --model m is not a directory (a hub id): no hash
    assert doc["config"]["person_sha256"] == "purple"  # a built-in person: its name
    assert doc["seeds"]["0"] == _finished(1) and len(doc["invocations"]) == 1


@pytest.mark.parametrize("record, problem", [
    ({"complete": True, "rounds": 5}, "rounds must be a list of 2 round records, got 5"),
    ({"complete": True, "rounds": [{}, {}, {}]}, "rounds must be a list of 2 round records, got [{}, {}, {}]"),
    ({"complete": True, "rounds": [{}, {"share_ge6": "high"}]}, "round 1's share_ge6 is \"high\", not a number"),
    # past float's range: an OverflowError traceback from math.isfinite (nineteenth review)
    ({"complete": True, "rounds": [{}, {"share_ge6": 10 ** 400}]}, "round 1's share_ge6 is 1%s, not a number" % ("0" * 39)),
    ({"complete": "yes", "rounds": []}, "its record is not an object with complete true or false"),
    ([1], "its record is not an object with complete true or false"),
])
def test_a_kept_seed_record_that_is_not_one_is_refused_naming_the_file(bench_run, record, problem):
    """``{"0": {"complete": true, "rounds": 5}}`` in results.json: a TypeError traceback in summarise. Found by review."""
    path = bench_run.out / "results.json"
    path.parent.mkdir()
    path.write_text(_results(bench_run.cfg, {"0": record}))
    with pytest.raises(bench_taste.BenchError) as err:
        bench_run()
    assert str(err.value) == f"{path} is not a bench-taste results file (seed 0: {problem}); give another --out"
    assert not bench_run.started


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]", "{path} is not a bench-taste results file; give another --out"),
    ("[" * 200_000, "{path} is not a bench-taste results file; give another --out"),  # RecursionError (fifth review)
    ("{}", "{path} holds a run with other settings; give those settings again to resume it, or another --out"),
])
def test_the_results_file_refusals_never_suggest_removing_it(bench_run, text, expected):
    """"give another --out or remove it": removing results.json alone would have let the seed directories be wiped."""
    path = bench_run.out / "results.json"
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(bench_taste.BenchError) as err:
        bench_run()
    assert str(err.value) == expected.format(path=path) and "remove" not in str(err.value)


@pytest.mark.parametrize("content, why", [
    ("[]", "a JSON list, not an object"),
    ("{}", "no config with its options"),
    ('{"config": {"options": {}}, "seeds": {}}', "no seeds"),
    ('{"config": {"options": {}}, "seeds": "x"}', 'seeds is "x", not an object'),
    ('{"config": {"options": {}}, "seeds": {"a": {"rounds": []}}}', "seed 'a' is not a whole number"),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": 3}}}', "seed 0 has no list of rounds"),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": []}}}', "no seed has a round yet"),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": [{"wait_s": "1 s"}]}}}',
     'seed 0, round 0: wait_s is "1 s", not a number'),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": [{"share_ge6": NaN}]}}}',  # Python's json reads NaN
     "seed 0, round 0: share_ge6 is NaN, not a number"),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": [{"wait_s": Infinity}]}}}',
     "seed 0, round 0: wait_s is Infinity, not a number"),
    # nineteenth review: a number past float's range was an OverflowError traceback (math.isfinite); a round without
    # its share or mean passed, then --paired, --pooled and --goals ended in a KeyError or TypeError traceback; a seed
    # of 5,000 digits was Python's "Exceeds the limit (4300 digits)" naming no file, and "00" beside "0" a seed more
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": [{"share_ge6": 1%s}]}}}' % ("0" * 400),
     "seed 0, round 0: share_ge6 is 1%s, not a number" % ("0" * 39)),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": [{"share_ge6": 0.5}]}}}',
     "seed 0, round 0: mean_rating is null, not a number"),
    ('{"config": {"options": {}}, "seeds": {"0": {"rounds": [{"share_ge6": null, "mean_rating": 5}]}}}',
     "seed 0, round 0: share_ge6 is null, not a number"),
    ('{"config": {"options": {}}, "seeds": {"%s": {"rounds": []}}}' % ("9" * 5000),
     "seed '%s' is not one bench-taste writes (a whole number from 0 to 10,000, as written)" % ("9" * 40)),
    ('{"config": {"options": {}}, "seeds": {"00": {"rounds": []}}}',
     "seed '00' is not one bench-taste writes (a whole number from 0 to 10,000, as written)"),
    ('{"config": {"options": {}}, "seeds": {"10001": {"rounds": []}}}',
     "seed '10001' is not one bench-taste writes (a whole number from 0 to 10,000, as written)"),
    ("{not json", "not JSON"),
    ("[" * 200_000, "JSON nested too deeply"),  # was a RecursionError (fifth review)
    (b"\xff\xfe\x00binary", "not UTF-8 text"),
    (None, "is a directory"),
])
def test_the_report_refuses_a_results_file_it_cannot_read_in_one_sentence(tmp_path, capsys, content, why):
    """``[]``, ``{"seeds": {}}`` and the like gave tracebacks (KeyError, "max() arg is an empty sequence"). Found by
    review."""
    from app import bench_taste_report as report

    run_dir = tmp_path / "run"
    path = run_dir / "results.json"
    if content is None:
        path.mkdir(parents=True)
    else:
        run_dir.mkdir()
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    expected = f"{path} is not a bench-taste results file ({why})"
    with pytest.raises(ValueError) as err:
        report.load(run_dir)
    assert str(err.value) == expected
    assert report.main([str(run_dir)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {expected}"]


def test_the_report_command_prints_the_sentence_and_fails(tmp_path):
    (tmp_path / "results.json").write_text('{"seeds": {}}')
    proc = subprocess.run([sys.executable, "-m", "app.bench_taste_report", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [f"error: {tmp_path / 'results.json'} is not a bench-taste results file "
                                                "(no config with its options)"], proc.stderr


def test_the_report_reads_a_run_stopped_while_a_seed_had_no_round_yet(tmp_path):
    from app import bench_taste_report as report

    doc = _doc([[0.0, 0.25], [0.0, 0.5]], [[1.0, 2.0], [1.0, 3.0]])
    doc["seeds"]["2"] = {"complete": False, "rounds": []}
    (tmp_path / "results.json").write_text(__import__("json").dumps(doc))
    loaded = report.load(tmp_path)
    assert "| 1 | **38** (25 / 50 / -) |" in report.run_table(loaded, "t")
    assert "| 2 |" not in report.paired(loaded, loaded, "a", "b")


def test_a_seed_a_run_did_not_finish_is_left_out_of_the_pooled_and_paired_means_and_named():
    """A stopped run's seed was paired at the last round both runs reached (round 1 of 2) and pooled with the other
    seeds' final rounds, with nothing in the pooled table to show it (found by review: +5.0 where the finished pairs
    give +10.0). It is now left out of the means and the pooled figures, and named."""
    from app import bench_taste_report as report

    before = _doc([[0.0, 0.2, 0.3]] * 3, [[1.0, 2.0, 3.0]] * 3)
    after = _doc([[0.0, 0.2, 0.4], [0.0, 0.2, 0.4], [0.0, 0.15, 0.4]], [[1.0, 2.0, 3.0]] * 3)
    after["seeds"]["2"] = {"complete": False, "rounds": after["seeds"]["2"]["rounds"][:2]}
    got = report.pooled_pairs([(before, after)], [("before", "after")])
    assert got["n"] == 2 and got["share_diff"] == pytest.approx(10.0) and got["wins"] == 2.0
    assert got["left_out"] == ["seed 2 of before -> after"]
    table = report.pooled_table([(before, after)], [("before", "after")])
    assert "| 2 | +10.0 " in table and "Left out (a run did not finish them): seed 2 of before -> after." in table
    text = report.paired(before, after, "before", "after")
    assert "| 2 | 1 (unfinished) | 20 -> 15 | -5 |" in text
    assert "| mean | | | +10.0 | | +0.00 |" in text


def test_a_round_without_a_variety_is_pooled_without_one():
    """A null variety (a round of fewer than two images), which the file check accepts, crashed the pooled table
    with a TypeError (found by review)."""
    from app import bench_taste_report as report

    before, after = _doc([[0.0, 0.2]], [[1.0, 2.0]]), _doc([[0.0, 0.4]], [[1.0, 3.0]])
    after["seeds"]["0"]["rounds"][1]["variety_embedding_pct_round0"] = None
    assert report.pooled_pairs([(before, after)])["variety_emb_diff"] is None
    assert "| 1 | +20.0 - | 1/1 | - | 30.0 |" in report.pooled_table([(before, after)], [("b", "a")])


def test_finished_runs_of_different_lengths_are_compared_at_their_common_last_round():
    """Requiring equal round counts marked every seed of a finished 2-round run against a finished 4-round run as
    unfinished and pooled nothing (found by review of the fix above)."""
    from app import bench_taste_report as report

    short = _doc([[0.0, 0.2, 0.3]] * 2, [[1.0, 2.0, 3.0]] * 2)
    long = _doc([[0.0, 0.2, 0.5, 0.6, 0.7]] * 2, [[1.0, 2.0, 4.0, 5.0, 6.0]] * 2)
    got = report.pooled_pairs([(short, long)])
    assert got["n"] == 2 and got["share_diff"] == pytest.approx(20.0) and got["left_out"] == []
    assert "| 0 | 2 | 30 -> 50 | +20 |" in report.paired(short, long, "short", "long")


def _table_cells(text: str, name: str) -> dict[int, dict[str, str]]:
    """Round -> {column header: cell} of the run table headed ``**name**`` in the report's output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"**{name}**"))
    header = next(i for i in range(start, len(lines)) if lines[i].startswith("| round |"))
    columns = [c.strip() for c in lines[header].strip("|").split("|")]
    rows = {}
    for line in lines[header + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == len(columns), line
        rows[int(cells[0])] = dict(zip(columns, cells, strict=True))
    return rows


def test_the_report_shows_the_reward_models_correlation_on_the_honest_images(tmp_path, capsys):
    """The run table showed the reward model's held-out rho on every image of a round (``reward_corr``), which a
    selection mode biases down, but not its rho on the round's honest, randomly chosen images
    (``reward_corr_honest``), which bench-taste records (found by review). A seed or a run that lacks it (older
    results) shows "-"."""
    from app import bench_taste_report as report

    def round_(k, rho=None, honest="absent"):
        r = {"round": k, "share_ge6": 0.5, "mean_rating": 5.0, "variety_pixels_pct_round0": 100.0,
             "variety_embedding_pct_round0": 100.0, "wait_s": None if k == 0 else 30.0, "reward_corr": rho}
        if honest != "absent":
            r["reward_corr_honest"] = honest
        return r

    new = {"config": {"person": "purple", "options": {"selection": "spread", "candidate_factor": 2}},
           "seeds": {"0": {"complete": True, "rounds": [round_(0, None, None), round_(1, 0.50, 0.25),
                                                        round_(2, 0.60, 0.75)]},
                     "1": {"complete": True, "rounds": [round_(0), round_(1, 0.40),  # recorded before the honest rho
                                                        round_(2, 0.70, 0.45)]}}}
    old = {"config": {"person": "purple", "options": {"selection": "random", "candidate_factor": 1}},
           "seeds": {"0": {"complete": True, "rounds": [round_(0), round_(1, 0.30)]}}}
    for name, doc in (("new", new), ("old", old)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(__import__("json").dumps(doc))
    assert report.main([str(tmp_path / "new"), str(tmp_path / "old")]) == 0
    out = capsys.readouterr().out

    rows = _table_cells(out, "new")
    honest = "reward model rho, honest images"
    # the mean of the seeds that have one, then each seed's value in seed order: by hand
    assert [rows[k][honest] for k in (0, 1, 2)] == ["-", "**0.25** (0.25 / -)", "**0.60** (0.75 / 0.45)"]
    assert [rows[k]["reward model rho"] for k in (0, 1, 2)] == ["-", "**0.45** (0.50 / 0.40)", "**0.65** (0.60 / 0.70)"]
    old_rows = _table_cells(out, "old")
    assert [old_rows[k][honest] for k in (0, 1)] == ["-", "-"]
    assert old_rows[1]["reward model rho"] == "**0.30** (0.30)"

    new["seeds"]["0"]["rounds"][1]["reward_corr_honest"] = "0.25"
    (tmp_path / "new" / "results.json").write_text(__import__("json").dumps(new))
    with pytest.raises(ValueError, match=r"seed 0, round 1: reward_corr_honest is \"0.25\", not a number\)$"):
        report.load(tmp_path / "new")
def test_check_overrides_refuses_a_round_of_a_million_trajectories(tmp_path):
    """The worker seeds a round's trajectories (train seed + 1) * 10^6 + n, as the simulator does: bench-taste's --set
    took 1,000 epochs of 2,000 trajectories (2,000,000 a round, into the next train seed's block). Found by review."""
    from app.experiment_options import ExperimentOptions

    cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=tmp_path, model="m",
                                  options=ExperimentOptions(),
                                  overrides=("finetune.epochs=1000", "finetune.trajectories_per_epoch=2000"))
    with pytest.raises(bench_taste.BenchError) as err:
        cfg.check_overrides()
    assert str(err.value).startswith("each round (1,000 epochs) would fine-tune on 2,000,000 trajectories, but a "
                                     "round's trajectory seeds have room for fewer than 1,000,000")


def test_check_overrides_refuses_more_steps_than_the_models_scheduler_allows(tmp_path):
    """Found by the twentieth review: `--set sampling.steps=2000` was taken, and round 0 failed in diffusers' own
    words. The shapes model's scheduler (1,000 timesteps, leading spacing, steps_offset 1) allows 999: at the most is
    taken, one more is one sentence naming the range, before anything starts."""
    from app.experiment_options import ExperimentOptions

    model = str(Path(__file__).resolve().parents[2] / "models" / "shapes-sd")

    def cfg(steps):
        return bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=tmp_path, model=model,
                                       options=ExperimentOptions(), overrides=(f"sampling.steps={steps}",))

    cfg(999).check_overrides()
    for steps in (1000, 2000):
        with pytest.raises(bench_taste.BenchError, match=rf"^sampling\.steps must be from 1 to 999 for this model "
                                                         rf"\(its scheduler was trained on 1000 timesteps, .*\), got {steps}$"):
            cfg(steps).check_overrides()


def test_check_overrides_with_a_model_whose_scheduler_config_ddim_cannot_build_is_one_sentence(tmp_path):
    """Found by review of the step check: a scheduler config with a beta_schedule diffusers does not know made the check
    raise diffusers' NotImplementedError past bench-taste's refusals (a traceback); a model named by a string that is
    no hub id was refused by huggingface_hub's validation before the project's own sentence. Now the first is a
    BenchError with diffusers' sentence, and for the second the check is skipped (the model's load names it)."""
    import shutil

    from diffusers import DDIMScheduler

    from app.experiment_options import ExperimentOptions
    from seiko_core.models import scheduler_config

    model = tmp_path / "model"
    shutil.copytree(Path(__file__).resolve().parents[2] / "models" / "shapes-sd", model)
    path = model / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    config["beta_schedule"] = "wobbly"
    path.write_text(json.dumps(config))
    with pytest.raises(NotImplementedError) as theirs:
        DDIMScheduler.from_config(config)
    bench = bench_taste.BenchConfig(person="purple", rounds=1, budget=4, seeds=(0,), out=tmp_path / "out",
                                    model=str(model), options=ExperimentOptions(), overrides=("sampling.steps=10",))
    with pytest.raises(bench_taste.BenchError) as ours:
        bench.check_overrides()
    assert str(ours.value) == str(theirs.value)
    assert scheduler_config("my org/my model") is None


def test_the_report_pairs_the_variety_by_seed_and_leaves_out_a_seed_without_two_liked_images():
    """The variety of two arms, and of the images the person liked, was read as two unpaired means over seeds (found
    by review): the seed-to-seed spread of variety hides in them what pairing shows. Checked against differences
    worked out by hand: embeddings 80 -> 60 and 90 -> 100 (-20, +10), liked 50 -> 30 and 70 -> none."""
    from app import bench_taste_report as report

    before = _doc([[0.0, 0.25], [0.0, 0.5], [0.0, 0.5]], [[1.0, 2.0], [1.0, 3.0], [1.0, 3.0]])
    after = _doc([[0.0, 0.75], [0.0, 0.5], [0.0, 0.5]], [[1.0, 4.0], [1.0, 2.5], [1.0, 3.0]])
    for doc, emb, liked, px in ((before, (80.0, 90.0, 70.0), (50.0, 70.0, 40.0), (100.0, 90.0, 80.0)),
                                (after, (60.0, 100.0, 70.0), (30.0, None, 45.0), (70.0, 95.0, 80.0))):
        for seed in range(3):
            last = doc["seeds"][str(seed)]["rounds"][1]
            last["variety_embedding_pct_round0"], last["variety_liked_embedding_pct_round0"] = emb[seed], liked[seed]
            last["variety_pixels_pct_round0"] = px[seed]
    text = report.paired(before, after, "before", "after")
    assert "| 0 | 1 | 25 -> 75 | +50 | 2.00 -> 4.00 | +2.00 | 80 -> 60 | -20 | 50 -> 30 | -20 |" in text
    assert "| 1 | 1 | 50 -> 50 | +0 | 3.00 -> 2.50 | -0.50 | 90 -> 100 | +10 | 70 -> - | - |" in text
    assert text.endswith("| mean | | | +16.7 | | +0.50 | | -3.3 (3) | | -7.5 (2) |")  # (-20 + 10 + 0) / 3; (-20 + 5) / 2
    got = report.pooled_pairs([(before, after)])["varieties"]
    # embeddings: differences -20, +10, 0; the t interval from its definition, t(2) = 4.302653 (closed form, 0.95 / sqrt(2 * 0.975 * 0.025))
    d = [-20.0, 10.0, 0.0]
    m = sum(d) / 3
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / 2)
    assert got["variety_embedding_pct_round0"]["n"] == 3
    assert got["variety_embedding_pct_round0"]["diff"] == pytest.approx(m)
    assert got["variety_embedding_pct_round0"]["ci95"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-3)
    assert got["variety_embedding_pct_round0"]["wins"] == 1.5  # one gain, one tie
    assert got["variety_liked_embedding_pct_round0"]["n"] == 2  # seed 1's arm B liked fewer than two images
    assert got["variety_liked_embedding_pct_round0"]["diff"] == pytest.approx(-7.5)
    assert got["variety_pixels_pct_round0"]["diff"] == pytest.approx((-30 + 5 + 0) / 3)
    assert "variety_liked_pixels_pct_round0" not in got  # no run measured it
    table = report.pooled_table([(before, after)], [("before", "after")])
    assert f"| variety emb | 3 | {m:+.1f} [{m - 4.302653 * sd / math.sqrt(3):+.1f}, {m + 4.302653 * sd / math.sqrt(3):+.1f}] | 1.5/3 |" in table
    assert "| liked images' variety emb | 2 | -7.5 " in table and "liked images' variety px" not in table
