"""The feedback-efficiency simulator end to end on a tiny random model (seconds), and its error paths."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from seiko_core import simulate
from seiko_core.presets import preset

TINY = ["--budgets", "4,4", "--seeds", "0", "--eval-n", "2", "--kl-n", "1", "--no-progress", "--threads", "1",
        "--set", "sampling.steps=2", "--set", "sampling.batch_size=8",
        "--set", "finetune.trajectories_per_epoch=2", "--set", "finetune.batch_size=2",
        "--set", "reward.max_epochs=3", "--set", "reward.hidden=[16, 8]", "--set", "reward.dropout=[0.1]"]


def run_simulate(argv):
    threads = torch.get_num_threads()
    try:
        assert simulate.main(argv) == 0
    finally:
        torch.set_num_threads(threads)  # process-wide: leave it as the other tests expect


@pytest.fixture(scope="module")
def tiny_run(random_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    argv = ["--model", str(random_model_dir), "--method", "nonadaptive,bootstrap", "--oracle", "purple",
            "--out", str(out), *TINY]
    run_simulate(argv)  # --threads 1: far faster than 2 on a shared 2-core machine
    return out, argv


def test_results_structure(tiny_run):
    out, _ = tiny_run
    res = json.loads((out / "results.json").read_text())
    assert res["format"] == simulate.FORMAT
    s = res["settings"]
    assert s["oracle"] == "purple" and s["budgets"] == [4, 4] and s["noise_sigma"] == pytest.approx(0.13)
    assert len(s["eval"]["seeds"]) == 2 and s["config"]["sampling"]["steps"] == 2
    # the shapes preset's 23 s limit is the product's wait; the simulator counts steps, so every run takes them all
    assert s["config"]["finetune"]["max_seconds"] is None and s["config"]["finetune"]["epochs"] == 5
    assert set(res["runs"]) == {"nonadaptive", "bootstrap"}
    pre = res["pretrained"]
    for method, rounds_expected in (("nonadaptive", 1), ("bootstrap", 2)):
        run = res["runs"][method]["0"]
        assert run["status"] == "done" and run["seed"] == 0 and run["wall_s"] > 0
        rounds = run["rounds"]
        assert len(rounds) == rounds_expected + 1
        assert rounds[0]["round"] == 0 and rounds[0]["labels"] == 0
        assert rounds[0]["true_reward_mean"] == pytest.approx(pre["true_reward_mean"])  # round 0 is the shared pretrained eval
        for rd in rounds[1:]:
            for key in ("true_reward_mean", "true_reward_std", "pred_reward", "ensemble_spread", "kl_prev", "kl_base",
                        "wall_s", "optimism_gap"):
                assert isinstance(rd[key], float), (method, key, rd[key])
            assert rd["kl_prev"] >= 0 and rd["ensemble_spread"] >= 0
            # two eval images: a correlation is +-1, or None where a side is constant (Non-adaptive's mean has no bonus)
            assert rd["spread_abs_error_corr"] == pytest.approx(1.0) or rd["spread_abs_error_corr"] == pytest.approx(-1.0)
            if method == "nonadaptive":
                assert rd["bonus_error_corr"] is None
            else:
                assert abs(rd["bonus_error_corr"]) == pytest.approx(1.0), rd["bonus_error_corr"]
        assert rounds[-1]["labels"] == 8
    # Non-adaptive: one round holding the whole budget; the others one round per budget
    assert [r["budget"] for r in res["runs"]["nonadaptive"]["0"]["rounds"][1:]] == [8]
    assert [r["budget"] for r in res["runs"]["bootstrap"]["0"]["rounds"][1:]] == [4, 4]
    # optimism: the max over heads that disagree is above their mean (">= 0" held by construction, so it could not
    # fail: a review's point); none for non-adaptive
    assert res["runs"]["bootstrap"]["0"]["rounds"][1]["optimism_gap"] > 1e-6
    assert res["runs"]["nonadaptive"]["0"]["rounds"][1]["optimism_gap"] == 0


def test_curve_and_table(tiny_run):
    out, _ = tiny_run
    png = (out / "curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    table = (out / "table.md").read_text()
    assert "| Non-adaptive | 1 | 8 |" in table and "| SEIKO-Bootstrap | 2 | 8 |" in table
    assert (out / "grids" / "pretrained.png").exists() and (out / "grids" / "bootstrap_seed0.png").exists()


def test_resume_skips_finished_runs_and_refuses_other_settings(tiny_run, capsys):
    out, argv = tiny_run
    before = json.loads((out / "results.json").read_text())
    run_simulate(argv)
    after = json.loads((out / "results.json").read_text())
    assert after["runs"] == before["runs"] and len(after["invocations"]) == len(before["invocations"]) + 1
    changed = [a if a != "4,4" else "4,8" for a in argv]
    assert simulate.main(changed) == 2
    assert "different settings" in capsys.readouterr().err


def test_each_invocation_keeps_its_code_version(monkeypatch):
    """A resume replaced machine["code"], so results.json named only the last commit that worked on it (found by
    review): each invocation now records its own, and machine["code"] stays the first one's."""
    versions = iter([{"commit": "a"}, {"commit": "b"}])
    monkeypatch.setattr(simulate, "code_version", lambda: next(versions))
    results: dict = {}
    simulate.record_invocation(results, ["first"], jobs=1, device="cpu")
    simulate.record_invocation(results, ["resumed"], jobs=2, device="cpu")
    assert results["machine"]["code"] == {"commit": "a"} and results["machine"]["jobs"] == 2
    assert [(i["argv"], i["code"]) for i in results["invocations"]] == [(["first"], {"commit": "a"}),
                                                                        (["resumed"], {"commit": "b"})]


def test_unknown_method_is_an_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        simulate.main(["--model", "unused", "--method", "ppo", "--oracle", "purple", "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown method ppo" in capsys.readouterr().err


def test_unknown_oracle_is_an_error(tmp_path, capsys):
    assert simulate.main(["--model", "unused", "--method", "greedy", "--oracle", "blue", "--out", str(tmp_path)]) == 2
    assert "unknown oracle 'blue'" in capsys.readouterr().err


def test_overrides_and_eval_set():
    cfg = simulate.apply_overrides(preset("shapes"), ["finetune.lr=0.01", "finetune.truncation=per_step", "budgets=[1,2]"])
    assert cfg.finetune.lr == 0.01 and cfg.finetune.truncation == "per_step" and cfg.budgets == (1, 2)
    with pytest.raises(simulate.SimulationError, match="unknown field 'nope'"):
        simulate.apply_overrides(cfg, ["finetune.nope=1"])
    with pytest.raises(ValueError, match="unknown truncation"):
        simulate.apply_overrides(cfg, ["finetune.truncation=sometimes"])
    ev = simulate.make_eval_set(cfg, None, kl_n=8)
    assert len(ev.seeds) == 16 * len(cfg.eval_prompts) and ev.prompts[:len(cfg.eval_prompts)] == list(cfg.eval_prompts)
    assert min(ev.seeds) > max(simulate.gen_seeds(999, len(cfg.budgets), simulate.MAX_ROUND_BUDGET - 1))
    assert simulate.parse_methods("all") == simulate.METHODS


def test_set_overrides_share_the_forms_per_round_limits():
    """--set is held to the limits of the new-experiment form (seiko_core.config.check_round_limits), per round: at
    the limit is taken, Non-adaptive's one round then holding K times the epochs; over it is one sentence."""
    from types import SimpleNamespace

    def setup(*overrides):
        args = SimpleNamespace(preset="shapes", set=list(overrides), ucb_form=None, bonus_alpha=None, eval_n=None, kl_n=8,
                               noise_sigma=0.5, model="unused", oracle="purple")
        oracle = SimpleNamespace(default_sigma=0.5, spread=1.0)
        parts = SimpleNamespace(scheduler=SimpleNamespace(config={}))  # DDIM's defaults: 1,000 steps at most
        return simulate.campaign_setup(args, parts, oracle, ("greedy", "nonadaptive"), (8, 8))

    _, cfgs, *_ = setup("finetune.epochs=1000", "finetune.max_seconds=604800", "finetune.kl_weight=1000")
    assert (cfgs["greedy"].finetune.epochs, cfgs["nonadaptive"].finetune.epochs) == (1000, 2000)
    for override, match in (("finetune.epochs=1001", r"finetune\.epochs .* must be at most 1,000, got 1001$"),
                            ("finetune.max_seconds=1e300", r"finetune\.max_seconds .* must be at most 604,800 s"),
                            ("finetune.kl_weight=1e308", r"finetune\.kl_weight .* must be at most 1000, got 1e\+308$")):
        with pytest.raises(simulate.SimulationError, match=match):
            setup(override)


def test_a_round_that_would_reach_a_million_trajectories_is_refused():
    """Round r's trajectory seeds are (train seed + 1) * 10^6 + n: `--set finetune.epochs=1000
    finetune.trajectories_per_epoch=2000` (2,048,000 trajectories a round) passed, and round r's seeds ran into round
    r + 1's. Found by review. Refused in one sentence, for Non-adaptive's one round (K x the epochs) too."""
    from types import SimpleNamespace

    def setup(methods, *overrides):
        args = SimpleNamespace(preset="sd15", set=list(overrides), ucb_form=None, bonus_alpha=None, eval_n=None, kl_n=8,
                               noise_sigma=0.5, model="unused", oracle="purple")
        oracle = SimpleNamespace(default_sigma=0.5, spread=1.0)
        parts = SimpleNamespace(scheduler=SimpleNamespace(config={}))  # DDIM's defaults: 1,000 steps at most
        return simulate.campaign_setup(args, parts, oracle, methods, (8,) * 8)

    with pytest.raises(simulate.SimulationError) as refused:
        setup(("greedy",), "finetune.epochs=1000", "finetune.trajectories_per_epoch=2000")
    assert str(refused.value).startswith("each round (1,000 epochs) would fine-tune on 2,048,000 trajectories, but a "
                                         "round's trajectory seeds have room for fewer than 1,000,000")
    assert "\n" not in str(refused.value)
    # sd15: 128 trajectories an epoch; 1,000 epochs a round is 128,000, and Non-adaptive's one round of 8 is 1,024,000
    _, cfgs, *_ = setup(("greedy", "ucb"), "finetune.epochs=1000")
    assert cfgs["greedy"].finetune.epochs == 1000
    with pytest.raises(simulate.SimulationError, match=r"^Non-adaptive's one round \(8,000 epochs: K times the epochs "
                                                        r"per round\) would fine-tune on 1,024,000 trajectories"):
        setup(("greedy", "nonadaptive"), "finetune.epochs=1000")
    _, cfgs, *_ = setup(("nonadaptive",), "finetune.epochs=976", "finetune.trajectories_per_epoch=128")
    assert cfgs["nonadaptive"].finetune.epochs == 7808  # 999,424 trajectories: taken


def test_parallel_jobs_give_the_sequential_results(tiny_run, tmp_path):
    """--jobs 2: the two runs in their own processes; each run's figures equal the sequential run's."""
    out, argv = tiny_run
    par = tmp_path / "par"
    argv = [a if a != str(out) else str(par) for a in argv] + ["--jobs", "2"]
    run_simulate(argv)
    seq = json.loads((out / "results.json").read_text())
    res = json.loads((par / "results.json").read_text())
    assert res["machine"]["jobs"] == 2
    for method in ("nonadaptive", "bootstrap"):
        a, b = seq["runs"][method]["0"]["rounds"], res["runs"][method]["0"]["rounds"]
        assert [r["labels"] for r in a] == [r["labels"] for r in b]
        for ra, rb in zip(a, b):
            for key in ("true_reward_mean", "pred_reward", "kl_base"):
                expected = pytest.approx(ra[key], rel=1e-4, abs=1e-6) if ra[key] is not None else None
                assert rb[key] == expected, (method, ra["round"], key)
    assert (par / "grids" / "bootstrap_seed0.png").exists() and "| SEIKO-Bootstrap | 2 | 8 |" in (par / "table.md").read_text()


def test_the_runs_finished_in_one_wait_are_saved_before_a_failed_ones_error_is_raised():
    """--jobs: a wait that returned a failed run and others finished beside it read the failed one first in half the
    orders (a set), and its error left the others unsaved (nineteenth review, read-only review). Every order of two
    finished and one failed future gives the failed one last."""
    from concurrent.futures import Future
    from itertools import permutations

    def future(result=None, error=None):
        f = Future()
        f.set_exception(error) if error else f.set_result(result)
        return f

    runs = [future("a"), future(error=RuntimeError("the oracle failed")), future("b")]
    for order in permutations(runs):
        got = simulate.saved_first(list(order))
        assert got[-1] is runs[1] and {f.result() for f in got[:2]} == {"a", "b"}


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(SystemExit):
        simulate.main(["--model", "unused", "--method", "greedy", "--oracle", "purple", "--out", str(tmp_path), "--jobs", "0"])


def test_confidence_interval_and_paired_difference_by_hand():
    """95% t interval of [1, 2, 3, 4, 5]: mean 3, s = sqrt(2.5), t_4 = 2.776445, half-width 2.776445 * 1.5811 /
    sqrt(5). The quantile is exact since the eleventh review (it was a table's 2.776, the next tabulated df below:
    2.086 at 22 df, 1.980 at 1000); the printed tables' values to 6 decimals, so the half-width to 1e-6."""
    mean, half = simulate.mean_ci95([1, 2, 3, 4, 5])
    assert mean == 3.0 and abs(half - 2.776445 * (2.5 ** 0.5) / 5 ** 0.5) < 1e-6
    assert simulate.t975(4) == pytest.approx(2.776445, abs=1e-6)
    assert simulate.t975(22) == pytest.approx(2.073873, abs=1e-6) and simulate.t975(1000) == pytest.approx(1.962339, abs=1e-6)
    run = lambda m, s, v: {"method": m, "seed": s, "status": "done", "wall_s": 1.0,  # noqa: E731
                           "rounds": [{"labels": 0, "kl_base": 0.0}, {"labels": 8, "kl_base": 0.1, "true_reward_mean": v,
                                                                        "finetune_steps": 3}]}
    results = {"runs": {"greedy": {str(s): run("greedy", s, v) for s, v in enumerate([1.0, 2.0, 3.0])},
                        "ucb": {str(s): run("ucb", s, v) for s, v in enumerate([1.5, 2.0, 4.0])}}}
    row = {r["method"]: r for r in simulate.table_rows(results)}["ucb"]
    assert row["paired_per_seed"] == {"0": 0.5, "1": 0.0, "2": 1.0} and row["wins"] == 2.5  # the tie counts half
    assert abs(row["paired_diff"] - 0.5) < 1e-12
    assert abs(row["paired_ci95"] - 0.95 / math.sqrt(2 * 0.975 * 0.025) * 0.5 / 3 ** 0.5) < 1e-9  # t(2): closed form


def test_reward_quality_rows_by_hand(tmp_path):
    """Round-by-round correlation summary: mean, min, max and the negative seeds, computed by hand; a constant
    round (None) is left out of n."""
    def run(seed, corrs):
        rounds = [{"labels": 0, "kl_base": 0.0}] + [{"labels": 8 * (i + 1), "kl_base": 0.1, "true_reward_mean": 1.0,
                                                     "pred_true_corr": c, "finetune_steps": 1} for i, c in enumerate(corrs)]
        return {"method": "greedy", "seed": seed, "status": "done", "wall_s": 1.0, "rounds": rounds}
    results = {"runs": {"greedy": {"0": run(0, [0.5, 0.9]), "1": run(1, [-0.1, None]), "2": run(2, [0.2, 0.7])}},
               "settings": {"oracle": "x", "budgets": [8, 8], "noise_sigma": 0.1, "eval": {"seeds": [1, 2]}},
               "pretrained": {"true_reward_mean": 0.0, "true_reward_std": 1.0}}
    rows = simulate.reward_quality_rows(results)
    assert [(r["round"], r["labels"], r["n"]) for r in rows] == [(1, 8, 3), (2, 16, 2)]
    assert abs(rows[0]["mean"] - 0.2) < 1e-12 and rows[0]["min"] == -0.1 and rows[0]["max"] == 0.5
    assert rows[0]["negative_seeds"] == [1] and rows[1]["negative_seeds"] == []
    assert abs(rows[1]["mean"] - 0.8) < 1e-12
    text = simulate.write_table(results, tmp_path / "table.md")
    assert "| Greedy | 1 | 8 | 0.20 [-0.10, 0.50] (n=3) | 1 | - | - |" in text  # runs without the calibration keys
    # the calibration columns: mean and t-interval over the seeds that have a value (0.2 and 0.4: 0.3 +- 12.706 * 0.1)
    results["runs"]["greedy"]["0"]["rounds"][1]["bonus_error_corr"] = 0.2
    results["runs"]["greedy"]["2"]["rounds"][1]["bonus_error_corr"] = 0.4
    results["runs"]["greedy"]["1"]["rounds"][1]["bonus_error_corr"] = None
    m, h, n = simulate.reward_quality_rows(results)[0]["bonus_error_corr"]
    assert n == 2 and abs(m - 0.3) < 1e-12 and abs(h - 12.706 * 0.1) < 1e-3
    assert "| - | +0.30 [-0.97, +1.00] (n=2) |" in simulate.write_table(results, tmp_path / "table.md")  # clipped at 1
    # seeds whose calibration is the same: the project's words for no interval, not "[+0.20, +0.20]" (tenth review)
    results["runs"]["greedy"]["2"]["rounds"][1]["bonus_error_corr"] = 0.2
    assert "| - | +0.20 [no interval: every value the same] (n=2) |" in simulate.write_table(results, tmp_path / "t.md")
    # one that is not a number (an old results file): said so, not "+nan [+nan, +nan]"
    results["runs"]["greedy"]["2"]["rounds"][1]["bonus_error_corr"] = float("nan")
    assert "| - | [no interval: a value is not a number] (n=2) |" in simulate.write_table(results, tmp_path / "t.md")


def _summary_results(value: float, *, pairs: bool = False) -> dict:
    """A finished one-method, one-seed results dict: enough for the table and the curve."""
    rounds = [{"labels": 0, "kl_base": 0.0, "true_reward_mean": 0.0},
              {"labels": 8, "kl_base": 0.1, "true_reward_mean": value, "finetune_steps": 1}]
    settings = {"oracle": "x", "budgets": [8], "noise_sigma": 0.1, "eval": {"seeds": [1, 2]}}
    if pairs:
        settings["feedback"] = {"kind": "pairs", "temperature": 0.2, "tie_eps": 0.0, "images_per_label": 2}
    return {"runs": {"greedy": {"0": {"method": "greedy", "seed": 0, "status": "done", "wall_s": 1.0, "rounds": rounds}}},
            "settings": settings, "pretrained": {"true_reward_mean": 0.0, "true_reward_std": 1.0}}


def _full_disk_text(monkeypatch):
    """Path.write_text as on a full disk: the first half of the text reaches the file, then ENOSPC."""
    import errno
    from pathlib import Path

    def full_disk(self, data, encoding=None, errors=None, newline=None):
        with open(self, "w", encoding=encoding) as f:
            f.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full_disk)


@pytest.mark.parametrize("tool", ["simulate", "pairwise_sim"])
def test_a_table_whose_write_fails_half_way_leaves_the_earlier_one(tmp_path, monkeypatch, tool):
    """``table.md`` (simulate's ``write_table``, the pairwise simulation's ``summarise``) was written in place: a disk
    full half-way left a cut-off table under the final name, read as a result (eighth review). It is written under a
    temporary name and renamed, as results.json is: the earlier table is whole and nothing else is left."""
    from seiko_core import pairwise_sim

    path = tmp_path / simulate.TABLE
    if tool == "simulate":
        write = lambda value: simulate.write_table(_summary_results(value), path)  # noqa: E731
    else:
        monkeypatch.setattr(simulate, "write_curve", lambda results, p: None)  # the curve has its own test
        write = lambda value: pairwise_sim.summarise(_summary_results(value, pairs=True), tmp_path)  # noqa: E731
    earlier = write(0.25)
    assert path.read_text() == earlier and "**0.250**" in earlier
    _full_disk_text(monkeypatch)
    with pytest.raises(OSError, match="No space left on device"):
        write(0.75)
    assert path.read_text() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == [simulate.TABLE]


def test_a_curve_whose_write_fails_half_way_leaves_the_earlier_one(tmp_path, monkeypatch):
    """``curve.png`` was saved in place: a disk full half-way left a truncated PNG under the final name (eighth
    review). It is saved under a temporary name and renamed: the earlier curve is whole, nothing else is left."""
    import errno

    from matplotlib.figure import Figure

    path = tmp_path / simulate.CURVE
    simulate.write_curve(_summary_results(0.25), path)
    earlier = path.read_bytes()
    assert earlier[:8] == b"\x89PNG\r\n\x1a\n"
    saved = Figure.savefig

    def full_disk(self, fname, **kwargs):  # the whole PNG made in memory, half of it reaches the file
        import io

        buf = io.BytesIO()
        saved(self, buf, **{**kwargs, "format": "png"})
        with open(fname, "wb") as f:
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        simulate.write_curve(_summary_results(0.75), path)
    assert path.read_bytes() == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == [simulate.CURVE]


def test_uncertainty_calibration_against_numpy():
    """The two diagnostics are plain Pearson correlations, checked against numpy on random heads."""
    import numpy as np

    g = torch.Generator().manual_seed(3)
    preds = torch.randn(50, 4, generator=g)
    true = torch.randn(50, generator=g)
    r_opt = preds.max(1).values
    got = simulate.uncertainty_calibration(preds, r_opt, true)
    p, t = preds.double().numpy(), true.double().numpy()
    r_hat = p.mean(1)
    want_spread = np.corrcoef(p.std(1), np.abs(t - r_hat))[0, 1]
    want_bonus = np.corrcoef(p.max(1) - r_hat, t - r_hat)[0, 1]
    assert got["spread_abs_error_corr"] == pytest.approx(want_spread, abs=1e-6)  # the heads are float32
    assert got["bonus_error_corr"] == pytest.approx(want_bonus, abs=1e-6)


def test_uncertainty_calibration_reads_the_direction_of_optimism():
    """Optimism exactly where the model under-predicts gives +1, exactly where it over-predicts -1;
    one head (no spread, no bonus) gives None, not a number."""
    r_hat = torch.tensor([0.0, 1.0, 2.0, 3.0])
    bonus = torch.tensor([0.1, 0.4, 0.2, 0.3])
    preds = torch.stack([r_hat - bonus, r_hat + bonus], 1)  # mean r_hat, max r_hat + bonus, std = bonus
    up = simulate.uncertainty_calibration(preds, r_hat + bonus, r_hat + 2 * bonus)
    down = simulate.uncertainty_calibration(preds, r_hat + bonus, r_hat - 2 * bonus)
    assert up["bonus_error_corr"] == pytest.approx(1.0) and down["bonus_error_corr"] == pytest.approx(-1.0)
    assert up["spread_abs_error_corr"] == pytest.approx(1.0)  # |err| = 2 * bonus = 2 * spread
    one = simulate.uncertainty_calibration(r_hat[:, None], r_hat, r_hat + bonus)
    assert one == {"spread_abs_error_corr": None, "bonus_error_corr": None}


def test_run_seeds_keep_their_image_seeds_apart():
    """From run seed 100 on, a run's fine-tuning seeds ((s * 100 + r + 1) * 10^6 + n) were another run's query image
    seeds (s = 100, round 1 is seed 0's round 20): 'independent' seeds shared noise. Found by review. Brute force over
    the allowed seeds and a round's worth of trajectories: every fine-tuning seed lies below every image seed."""
    lowest_image = min(simulate.gen_seeds(0, 0, 1)[0], simulate.EVAL_SEED_BASE)
    highest_finetune = (simulate.train_seed(simulate.MAX_RUN_SEED - 1, simulate.MAX_ROUNDS) + 1) * 10**6 + 10**6 - 1
    assert highest_finetune < lowest_image
    assert (simulate.train_seed(100, 1) + 1) * 10**6 == simulate.gen_seeds(0, 20, 1)[0]  # the overlap past the bound
    args = simulate.build_parser().parse_args(["--oracle", "purple", "--method", "greedy", "--budgets", "4",
                                               "--seeds", "100", "--out", "/nonexistent"])
    with pytest.raises(simulate.SimulationError, match=r"seeds must lie in \[0, 100\)"):
        simulate.check_common_args(args)



def test_the_last_rounds_trajectory_seeds_stay_below_every_image_seed():
    """--budgets took 99 rounds (the bound's comment counted round indices from 0; rounds count from 1): run seed 99's
    round 99 has train seed 9,999 and drew its trajectories from 10^10 + n, run seed 0's query image seeds from its
    100,000th trajectory on. Found by review. Brute force over what check_common_args takes: the most rounds, the
    highest run seed, a round's most trajectories (config.MAX_ROUND_TRAJECTORIES, refused from there on)."""
    from seiko_core.config import MAX_ROUND_TRAJECTORIES

    def taken(n_rounds: int) -> bool:
        args = simulate.build_parser().parse_args(["--oracle", "purple", "--method", "greedy", "--budgets",
                                                   ",".join(["1"] * n_rounds), "--seeds", "0,99", "--out", "/nonexistent"])
        try:
            simulate.check_common_args(args)
            return True
        except simulate.SimulationError:
            return False

    most = max(n for n in range(1, 120) if taken(n))
    assert not any(taken(n) for n in range(most + 1, 120))
    last_train_seed = max(simulate.train_seed(s, r) for s in (0, simulate.MAX_RUN_SEED - 1) for r in range(1, most + 1))
    highest_trajectory = (last_train_seed + 1) * 10**6 + MAX_ROUND_TRAJECTORIES - 1
    lowest_image = min(simulate.gen_seeds(s, r, 1)[0] for s in (0, simulate.MAX_RUN_SEED - 1) for r in range(1, most + 1))
    assert highest_trajectory < lowest_image, (most, last_train_seed)


def _run_recording_seeds(monkeypatch, model_dir, out, budgets: str, *, pairs: bool = False) -> tuple[list[int], Counter, dict]:
    """One Greedy run of seed 3 with ``budgets`` on the tiny model (``pairs``: seiko_core.pairwise_sim's), every seed
    it gives a random generator recorded (torch generators, torch's global seed, numpy's generators): (the feedback
    noise generators' seeds in round order, every other seed the run used with its count, the run's record)."""
    from seiko_core import oracles, pairwise_sim

    seen: Counter = Counter()
    noise: list[int] = []

    class Recording(torch.Generator):
        def manual_seed(self, seed):
            seen[int(seed)] += 1
            return super().manual_seed(seed)

    real_manual_seed, real_rng = torch.manual_seed, np.random.default_rng
    real_noisy, real_choices = oracles.noisy_feedback, pairwise_sim.simulate_pair_choices

    def manual_seed(seed):
        seen[int(seed)] += 1
        return real_manual_seed(seed)

    def default_rng(seed=None):
        seen[int(seed)] += 1
        return real_rng(seed)

    def noisy_feedback(scores, sigma, generator=None):
        noise.append(generator.initial_seed())
        return real_noisy(scores, sigma, generator)

    def simulate_pair_choices(*args, generator=None, **kwargs):
        noise.append(generator.initial_seed())
        return real_choices(*args, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "Generator", Recording)
    monkeypatch.setattr(torch, "manual_seed", manual_seed)
    monkeypatch.setattr(np.random, "default_rng", default_rng)
    monkeypatch.setattr(oracles, "noisy_feedback", noisy_feedback)
    monkeypatch.setattr(pairwise_sim, "simulate_pair_choices", simulate_pair_choices)
    argv = ["--model", str(model_dir), "--method", "greedy", "--oracle", "purple", "--out", str(out), *TINY,
            "--budgets", budgets, "--seeds", "3", "--set", "finetune.epochs=1"]
    threads = torch.get_num_threads()
    try:
        assert (pairwise_sim if pairs else simulate).main(argv) == 0
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    seen.subtract(Counter(noise))  # each noise generator's own manual_seed
    return noise, +seen, json.loads((out / "results.json").read_text())["runs"]["greedy"]["3"]


@pytest.mark.parametrize("pairs", [False, True], ids=["ratings", "pairs"])
def test_feedback_noise_seeds_share_no_stream_with_the_runs_other_seeds(random_model_dir, tmp_path, monkeypatch, pairs):
    """Round r's feedback noise (ratings, or pairwise_sim's choices) was seeded train_seed + 7, the train seed of round
    r + 7 (its reward fit, LoRA initialisation and prompt draw): in a run of 8 rounds or more, round r's noise and
    round r + 7's fit drew one random stream. Found by review. Brute force: every seed an 8-round run hands a random
    generator is recorded, and no noise seed is among the others (query and eval images, trajectories, fits, ...)."""
    noise, others, run = _run_recording_seeds(monkeypatch, random_model_dir, tmp_path / "long", "4,4,4,4,4,4,4,4",
                                              pairs=pairs)
    assert len(noise) == len(set(noise)) == 8
    assert set(noise).isdisjoint(others), sorted(set(noise) & set(others))
    # the recording saw the run's other seeds: 4 (ratings) or 8 (pairs) query images a round, eval images, fits, ...
    assert sum(1 for s in others if s >= simulate.GEN_SEED_BASE) >= 8 * 4 and len(others) > 8 * 5
    assert run["noise_seed_family"] == "50000000000 + train_seed"


def test_published_runs_keep_their_feedback_noise_seeds(random_model_dir, tmp_path, monkeypatch):
    """Every published run had at most 4 rounds: a run of up to 7 keeps today's noise seeds (the train seed + 7, i.e.
    run seed * 100 + round + 7), seen in what a 4-round run hands its noise generator, and over the whole short-run
    domain."""
    noise, others, run = _run_recording_seeds(monkeypatch, random_model_dir, tmp_path / "short", "4,4,4,4")
    assert noise == [308, 309, 310, 311] and run["noise_seed_family"] == "train_seed + 7"
    assert set(noise).isdisjoint(others)
    for s in range(simulate.MAX_RUN_SEED):
        for n_rounds in range(1, 8):
            assert [simulate.noise_seed(s, r, n_rounds) for r in range(1, n_rounds + 1)] == \
                [s * 100 + r + 7 for r in range(1, n_rounds + 1)]


def test_set_refuses_more_steps_than_the_models_scheduler_allows(random_model_dir, tmp_path, capsys):
    """Found by the twentieth review: `--set sampling.steps=2000` was accepted, and the first sampling failed in
    diffusers' own words. The model's scheduler (the toy build's: 1,000 timesteps, leading spacing, steps_offset 1)
    allows 999 (seiko_core.sampling.max_steps, checked against the stock scheduler in test_sampling); refused in one
    sentence before anything is written."""
    out = tmp_path / "o"
    assert simulate.main(["--model", str(random_model_dir), "--method", "greedy", "--oracle", "purple", "--out", str(out),
                          *TINY, "--set", "sampling.steps=2000"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [x for x in err.splitlines() if x.startswith("error")] == [
        "error: sampling.steps must be from 1 to 999 for this model (its scheduler was trained on 1000 timesteps, and its "
        "leading timestep spacing with steps_offset 1 would start a finer schedule past the last), got 2000"]
    assert not (out / "results.json").exists()
