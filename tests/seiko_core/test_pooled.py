"""seiko_core.pooled: paired differences to Greedy in pretrained standard deviations, pooled over oracles."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from seiko_core import pooled


def _results(oracle: str, spread: float, finals: dict[str, dict[int, float]]) -> dict:
    runs = {m: {str(s): {"seed": s, "status": "done", "rounds": [{"true_reward_mean": 0.0}, {"true_reward_mean": v}]}
                for s, v in by_seed.items()} for m, by_seed in finals.items()}
    return {"settings": {"oracle": oracle}, "pretrained": {"true_reward_std": spread}, "runs": runs}


def test_pooled_difference_against_a_hand_computation():
    a = _results("a", 2.0, {"greedy": {0: 1.0, 1: 3.0}, "ucb": {0: 3.0, 1: 2.0}})  # diffs +2, -1 -> +1.0, -0.5
    b = _results("b", 0.5, {"greedy": {0: 0.0, 1: 1.0, 7: 5.0}, "ucb": {0: 1.0, 1: 2.0}})  # +1, +1 -> +2.0, +2.0; seed 7 unshared
    (row,) = pooled.pooled_rows([a, b])
    diffs = [1.0, -0.5, 2.0, 2.0]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert row["method"] == "ucb" and row["n"] == 4 and row["wins"] == 3
    assert row["mean"] == pytest.approx(mean)
    assert row["ci95"] == pytest.approx(3.182 * sd / 2, rel=1e-3)  # Student t, 3 degrees of freedom, from a table
    assert row["per_oracle"] == {"a": 2, "b": 2}
    assert "| SEIKO-UCB (textbook) | 2 a + 2 b | **+1.12**" in pooled.pooled_table([a, b])


def test_the_same_oracle_twice_or_no_spread_is_refused_with_a_sentence():
    a = _results("a", 1.0, {"greedy": {0: 1.0}, "ucb": {0: 2.0}})
    with pytest.raises(ValueError, match="different oracle"):
        pooled.pooled_rows([a, a])
    with pytest.raises(ValueError, match="no pretrained spread"):
        pooled.pooled_rows([_results("z", 0.0, {"greedy": {0: 1.0}, "ucb": {0: 2.0}})])


def test_the_command_reads_directories_and_says_what_is_wrong(tmp_path, capsys):
    good = tmp_path / "a"
    good.mkdir()
    (good / "results.json").write_text(json.dumps(_results("a", 1.0, {"greedy": {0: 1.0, 1: 1.0}, "ts": {0: 2.0, 1: 0.0}})))
    assert pooled.main([str(good)]) == 0
    assert "| SEIKO-TS | 2 a | **+0.00**" in capsys.readouterr().out
    assert pooled.main([str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"runs": {}}))
    assert pooled.main([str(other)]) == 1
    assert "is not a results.json of seiko_core.simulate" in capsys.readouterr().err


def _broken(doc: dict, path: list, value) -> dict:
    """``doc`` (a copy) with the value at ``path`` replaced."""
    doc = json.loads(json.dumps(doc))
    inner = doc
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = value
    return doc


@pytest.mark.parametrize("path, value, why", [
    (["runs"], [], "its runs must be an object of methods, each an object of seeds"),
    (["runs", "greedy"], 5, "its runs must be an object of methods, each an object of seeds"),
    (["runs", "greedy", "0"], "done", "run 'greedy' seed '0' is not an object"),
    (["runs", "greedy", "0", "rounds"], 3, "run 'greedy' seed '0' is done but has no seed or no list of rounds"),
    (["runs", "ts", "1", "rounds", 1, "true_reward_mean"], "high",
     "run 'ts' seed '1': the last round's true_reward_mean is \"high\", not a number"),
    (["runs", "ts", "1", "rounds", 1, "true_reward_mean"], None,
     "run 'ts' seed '1': the last round's true_reward_mean is null, not a number"),
    (["runs", "ts", "1", "rounds", 1, "true_reward_mean"], 10 ** 400,  # past float's range: OverflowError
     "run 'ts' seed '1': the last round's true_reward_mean is 1%s, not a number" % ("0" * 39)),
    (["settings"], [], "its settings must be an object naming the oracle, with a list of overrides if any"),
    (["settings", "overrides"], [{"a": 1}], "its settings must be an object naming the oracle, with a list of overrides if any"),
    (["pretrained"], "x", "its pretrained row must be an object whose true_reward_std is a number"),
    (["pretrained", "true_reward_std"], "x", "its pretrained row must be an object whose true_reward_std is a number"),
])
def test_the_command_refuses_a_results_file_of_another_shape_in_one_sentence(tmp_path, capsys, path, value, why):
    """Found by the nineteenth review: only the top three keys were checked, so each of these ended in an
    AttributeError, TypeError or OverflowError traceback, or in Python's words ("could not convert string to float")."""
    good = _results("a", 1.0, {"greedy": {0: 1.0, 1: 1.0}, "ts": {0: 2.0, 1: 0.0}})
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_broken(good, path, value)))
    for flags in ([], ["--at-equal-kl"], ["--against", str(run)]):
        assert pooled.main([str(run), *flags]) == 1
        assert capsys.readouterr().err.splitlines() == [
            f"error: {run / 'results.json'} is not a results.json of seiko_core.simulate ({why})"]


def test_a_setting_against_the_same_method_without_it_by_hand():
    plain_a = _results("a", 2.0, {"greedy": {0: 1.0}, "ucb": {0: 1.0, 1: 3.0}, "ucb_cov": {0: 0.0}})
    plain_b = _results("b", 0.5, {"ucb": {0: 2.0, 1: 2.0}})
    bal_a = _results("a", 9.0, {"ucb": {0: 2.0, 1: 2.0}, "ucb_cov": {3: 1.0}})  # +1, -1 over 2.0 (the control's spread)
    bal_b = _results("b", 9.0, {"ucb": {0: 3.0, 1: 2.5}})  # +1, +0.5 over 0.5
    for res in (bal_a, bal_b):
        res["settings"]["overrides"] = ["optimism.bonus_balance=1"]
    (row,) = pooled.setting_rows([bal_a, bal_b], [plain_b, plain_a])  # ucb_cov shares no seed; greedy only one side
    diffs = [0.5, -0.5, 2.0, 1.0]
    mean = sum(diffs) / 4
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 3)
    assert row["method"] == "ucb" and row["n"] == 4 and row["wins"] == 3 and row["per_oracle"] == {"a": 2, "b": 2}
    assert row["mean"] == pytest.approx(mean) and row["ci95"] == pytest.approx(3.182 * sd / 2, rel=1e-3)
    table = pooled.setting_table([bal_a, bal_b], [plain_a, plain_b])
    assert "with optimism.bonus_balance=1 to the same method without" in table and "**+0.75**" in table
    with pytest.raises(ValueError, match="no control directory holds oracle 'b'"):
        pooled.setting_rows([bal_b], [plain_a])


def test_the_command_with_against(tmp_path, capsys):
    for name, finals in (("t", {"ts": {0: 2.0, 1: 1.0}}), ("c", {"ts": {0: 1.0, 1: 1.0}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(_results("a", 1.0, finals)))
    assert pooled.main([str(tmp_path / "t"), "--against", str(tmp_path / "c")]) == 0
    assert "| SEIKO-TS | 2 a | **+0.50**" in capsys.readouterr().out
    assert pooled.main([str(tmp_path / "t"), "--against", str(tmp_path / "nowhere")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_a_setting_against_another_method_of_the_control_by_hand(tmp_path, capsys):
    plain = _results("a", 2.0, {"greedy": {0: 1.0, 1: 2.0}, "bootstrap": {0: 9.0, 1: 9.0}})
    prior = _results("a", 5.0, {"bootstrap": {0: 2.0, 1: 4.0}})  # against Greedy: +1, +2 over 2.0 -> +0.5, +1.0
    prior["settings"]["overrides"] = ["reward.prior_scale=1.0"]
    (row,) = pooled.setting_rows([prior], [plain], baseline="greedy")
    assert row["method"] == "bootstrap" and row["n"] == 2 and row["wins"] == 2 and row["mean"] == pytest.approx(0.75)
    (row,) = pooled.setting_rows([prior], [plain])  # against the same method: -7, -5 over 2.0
    assert row["mean"] == pytest.approx(-3.0) and row["wins"] == 0
    for name, res in (("t", prior), ("c", plain)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    assert pooled.main([str(tmp_path / "t"), "--against", str(tmp_path / "c"), "--baseline", "greedy"]) == 0
    out = capsys.readouterr().out
    assert "with reward.prior_scale=1.0 to Greedy without" in out and "| SEIKO-Bootstrap | 2 a | **+0.75**" in out
    with pytest.raises(SystemExit):
        pooled.main([str(tmp_path / "t"), "--baseline", "greedy"])
    assert "--baseline needs --against" in capsys.readouterr().err


def _results_kl(oracle: str, spread: float, finals: dict[str, dict[int, tuple[float, float]]]) -> dict:
    """finals: {method: {seed: (final true reward, final kl_base)}}."""
    runs = {m: {str(s): {"seed": s, "status": "done", "rounds": [{"true_reward_mean": 0.0, "kl_base": 0.0},
                                                                 {"true_reward_mean": v, "kl_base": kl}]}
                for s, (v, kl) in by_seed.items()} for m, by_seed in finals.items()}
    return {"settings": {"oracle": oracle}, "pretrained": {"true_reward_std": spread}, "runs": runs}


def test_the_line_fit_matches_numpys_least_squares_and_its_covariance():
    """Against numpy: lstsq for (a, b) and s^2 (X^T X)^-1 for the standard errors, times t(0.975, 5) = 2.571."""
    import numpy as np
    rng = np.random.default_rng(2)
    x = rng.normal(size=7)
    y = 0.4 + 1.3 * x + rng.normal(scale=0.5, size=7)
    fit = pooled.line_fit(x, y)
    X = np.column_stack([np.ones(7), x])
    coef, res, *_ = np.linalg.lstsq(X, y, rcond=None)
    cov = res[0] / 5 * np.linalg.inv(X.T @ X)
    assert fit["a"] == pytest.approx(coef[0]) and fit["b"] == pytest.approx(coef[1])
    assert fit["a_ci95"] == pytest.approx(2.571 * math.sqrt(cov[0, 0]), rel=1e-3)
    assert fit["b_ci95"] == pytest.approx(2.571 * math.sqrt(cov[1, 1]), rel=1e-3)
    with pytest.raises(ValueError, match="at least 3 pairs with different x"):
        pooled.line_fit([1.0, 1.0, 1.0], [0.0, 1.0, 2.0])


def test_the_lead_at_equal_kl_by_hand_and_through_the_command(tmp_path, capsys):
    # dR (spread 1) = 2 * dKL exactly on oracle a, and on b (spread 2): the lead is all distance (a = 0, b = 2)
    a = _results_kl("a", 1.0, {"greedy": {0: (1.0, 5.0), 1: (1.0, 5.0)}, "bootstrap": {0: (3.0, 6.0), 1: (5.0, 7.0)}})
    b = _results_kl("b", 2.0, {"greedy": {0: (0.0, 1.0), 1: (0.0, 1.0), 2: (0.0, 1.0)},
                               "bootstrap": {0: (-4.0, 0.0), 1: (0.0, 1.0), 2: (4.0, 2.0)}})
    (row,) = pooled.equal_kl_rows([a, b])
    assert row["method"] == "bootstrap" and row["n"] == 5
    assert row["a"] == pytest.approx(0.0, abs=1e-12) and row["b"] == pytest.approx(2.0)
    assert row["mean_dkl"] == pytest.approx((1 + 2 - 1 + 0 + 1) / 5)
    for name, res in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(res))
    assert pooled.main([str(tmp_path / "a"), str(tmp_path / "b"), "--at-equal-kl"]) == 0
    out = capsys.readouterr().out
    assert "| SEIKO-Bootstrap | 5 | +0.60 | **+0.00**" in out and "b, SEIKO-Bootstrap: r = +1.00 (3 seeds)" in out
    assert "b, Greedy: r undefined, the KL or the reward is the same on all 3 seeds" in out
    with pytest.raises(SystemExit):
        pooled.main([str(tmp_path / "a"), "--at-equal-kl", "--against", str(tmp_path / "b")])


def test_a_method_with_too_few_pairs_gets_a_row_that_says_so():
    res = _results_kl("a", 1.0, {"greedy": {0: (1.0, 1.0), 1: (1.0, 1.0), 2: (1.0, 1.0)},
                                 "bootstrap": {0: (2.0, 2.0), 1: (3.0, 3.0), 2: (2.0, 4.0)}, "ucb": {0: (2.0, 2.0)}})
    rows = {r["method"]: r for r in pooled.equal_kl_rows([res])}
    assert "error" not in rows["bootstrap"] and "got 1 pairs" in rows["ucb"]["error"]
    assert "| SEIKO-UCB (textbook) | 1 | +1.00 | not fitted: a line needs at least 3 pairs" in pooled.equal_kl_table([res])


def test_a_run_without_its_kl_is_refused_in_one_sentence():
    res = _results("a", 1.0, {"greedy": {0: 1.0, 1: 2.0, 2: 3.0}, "bootstrap": {0: 2.0, 1: 2.0, 2: 2.0}})
    with pytest.raises(ValueError, match="has no kl_base"):
        pooled.equal_kl_rows([res])


def test_two_treated_directories_of_one_oracle_are_refused_not_one_dropped():
    """setting_rows kept the last treated directory of an oracle and dropped the other without a word (a glob that
    matched two gold runs pooled one; found by review); pooled_rows already refused this."""
    control = _results("a", 1.0, {"ucb": {0: 1.0, 1: 1.0}})
    up, down = (_results("a", 1.0, {"ucb": {0: 1.0 + d, 1: 1.0 + d}}) for d in (1.0, -1.0))
    with pytest.raises(ValueError, match="each treated directory must hold a different oracle's runs"):
        pooled.setting_rows([up, down], [control])


def test_a_tie_counts_as_half_a_win_in_every_table():
    """A paired difference of exactly zero was a loss in the simulator's and the pooled tables and half a win in
    bench-taste's (found by review): a setting that leaves a method unchanged got 0 wins of n."""
    from seiko_core import simulate
    from seiko_core.stats import wins

    assert wins([1.0, 0.0, -2.0, 0.0, 3.0]) == 3.0  # 2 wins, 2 ties, 1 loss
    same = _results("a", 1.0, {"greedy": {0: 1.0, 1: 2.0}, "ucb": {0: 1.0, 1: 2.0}})
    (row,) = pooled.setting_rows([same], [same])[-1:]
    assert row["wins"] == row["n"] / 2
    (row,) = pooled.pooled_rows([same])
    assert row["wins"] == 1.0 and "| 1/2 |" in pooled.pooled_table([same])
    runs = {m: [{"seed": s, "status": "done", "wall_s": 1.0,
                 "rounds": [{"true_reward_mean": 0.0, "kl_base": 0.0, "labels": 0},
                            {"true_reward_mean": v, "kl_base": 0.1, "labels": 4}]} for s, v in ((0, 1.0), (1, 2.0))]
            for m in ("greedy", "ucb")}
    rows = simulate.table_rows({"runs": {m: {str(r["seed"]): r for r in rs} for m, rs in runs.items()}})
    assert [r["wins"] for r in rows if r["method"] == "ucb"] == [1.0]


def test_a_difference_that_is_not_a_number_is_no_loss():
    """Tenth review: a paired difference that is NaN (a run whose reward went NaN) counted as a loss, so a table said
    "1/2" where one of the two pairs has no outcome at all. Now the count is undefined, as the row's mean is, and the
    tables say so instead of printing "nan/2"."""
    from seiko_core.stats import wins

    assert math.isnan(wins([1.0, float("nan")])) and math.isnan(wins(np.array([float("nan"), -1.0])))
    assert wins([1.0, 0.0, -1.0]) == 1.5  # still 1 win, 1 tie, 1 loss without one
    broken = _results("a", 1.0, {"greedy": {0: 1.0, 1: 2.0}, "ucb": {0: 2.0, 1: float("nan")}})
    table = pooled.pooled_table([broken])
    assert "| [no count: a value is not a number] |" in table and "1/2" not in table and "nan/" not in table


@pytest.mark.parametrize("k, n", [(78, 96), (96, 96), (0, 96), (1, 10), (5, 7)])
def test_wilson_interval_is_the_set_of_proportions_the_share_is_within_two_errors_of(k, n):
    """By brute force from the interval's definition: the p on a fine grid for which the observed share lies within
    1.96 standard errors sqrt(p (1 - p) / n) of p, against the closed form."""
    from seiko_core.stats import wilson_ci95

    grid = np.linspace(0.0, 1.0, 200_001)
    inside = grid[np.abs(k / n - grid) <= 1.959964 * np.sqrt(grid * (1 - grid) / n) + 1e-15]
    lo, hi = wilson_ci95(k, n)
    assert lo == pytest.approx(inside.min(), abs=1e-5) and hi == pytest.approx(inside.max(), abs=1e-5)
    assert 0.0 <= lo <= k / n <= hi <= 1.0
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_ci95(n + 1, n)


def test_the_shipped_models_quality_file_carries_each_fidelitys_interval():
    """QUALITY.json's fidelities are shares of 96 samples: each carries its 95% interval, and the model card shows it,
    so a figure near its target (shape 0.81 against 0.85) is read with its uncertainty."""
    import json
    from pathlib import Path

    from seiko_core.stats import wilson_ci95

    model = Path(__file__).resolve().parents[2] / "models" / "shapes-sd"
    q = json.loads((model / "QUALITY.json").read_text())
    for key, share in q["generated"].items():
        k = round(share * q["samples"])
        assert k / q["samples"] == pytest.approx(share)
        assert q["generated_ci95"][key] == pytest.approx(list(wilson_ci95(k, q["samples"])), abs=5e-4)
    lo, hi = q["generated_ci95"]["shape_fidelity"]
    assert f"| shape fidelity | {q['generated']['shape_fidelity']:.3f} (95% CI {lo:.2f}-{hi:.2f}) | 0.85 |" in (model / "README.md").read_text()
