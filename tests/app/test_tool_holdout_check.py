"""app.tools.holdout_check's summary: paired differences against a hand computation, and no NaN in its JSON."""

import json
import math

import pytest

from app.tools.holdout_check import summarise


def _row(person, seed, min1, cv4, seconds=1.0):
    return {"person": person, "n": 32, "seed": seed, "min1": min1, "cv4": cv4, "min1_seconds": seconds,
            "cv4_seconds": 2 * seconds}


def test_the_summary_pairs_each_variant_with_min1_and_leaves_what_it_cannot_compute_as_none():
    rows = [_row("a", 0, 0.2, 0.5), _row("a", 1, 0.4, 0.5), _row("a", 2, 0.1, 0.4), _row("b", 0, 0.3, 0.1),
            _row("b", 1, None, 0.2)]
    summary, means = summarise(rows, ["min1", "cv4"], ["a", "b"])
    diffs = [0.3, 0.1, 0.3]  # person a: cv4 - min1, by hand
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    a = summary["cv4 - min1, a"]
    assert a["n"] == 3 and a["mean"] == pytest.approx(mean)
    assert a["ci95"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-3)  # t(0.975, 2 df); the table has 4.303
    b = summary["cv4 - min1, b"]  # one difference: no interval; the pair with a None is left out
    assert {k: b[k] for k in ("n", "mean", "ci95")} == {"n": 1, "mean": pytest.approx(-0.2), "ci95": None}
    assert summary["cv4 - min1, pooled"]["n"] == 4
    assert means["cv4"]["b"] == pytest.approx(0.15) and means["min1"]["b"] == pytest.approx(0.3)
    assert means["seconds per fit"] == {"min1": 1.0, "cv4": 2.0}
    json.dumps({"summary": summary, "means": means}, allow_nan=False)  # valid JSON: no NaN anywhere

    summary, means = summarise([_row("a", 0, None, None)], ["min1", "cv4"], ["a"])
    assert summary["cv4 - min1, a"] == {"n": 0, "mean": None, "ci95": None,
                                        "by_seed": {"n": 0, "mean": None, "ci95": None}} and means["cv4"]["a"] is None
    json.dumps({"summary": summary, "means": means}, allow_nan=False)


def test_the_interval_over_seeds_treats_a_seeds_cells_as_one_draw():
    """A seed fixes one split shared by every person and size, so a seed's cells move together; the cell interval
    counted them as independent (found by review). ``by_seed`` averages each seed's differences first and takes the
    t-interval of those means: here each seed's two cells are equal, so the cell interval is narrower than it should
    be and the seed interval is the plain t-interval of the two seeds' values, by hand."""
    rows = [_row(p, seed, 0.0, d) for seed, d in ((0, 0.1), (1, 0.3), (2, 0.8)) for p in ("a", "b")]
    summary, _ = summarise(rows, ["min1", "cv4"], ["a", "b"])
    pooled = summary["cv4 - min1, pooled"]
    values = [0.1, 0.3, 0.8]
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    assert pooled["by_seed"]["n"] == 3 and pooled["by_seed"]["mean"] == pytest.approx(mean)
    assert pooled["by_seed"]["ci95"] == pytest.approx(4.302653 * sd / math.sqrt(3), rel=1e-3)  # t(0.975, 2 df)
    assert pooled["n"] == 6 and pooled["ci95"] < pooled["by_seed"]["ci95"] / 2  # 6 cells counted as independent
    assert summary["cv4 - min1, a"]["by_seed"]["n"] == 3  # per person: one cell a seed here
