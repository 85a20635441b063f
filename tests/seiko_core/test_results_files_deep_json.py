"""A results file nested too deeply for Python's JSON parser (200,000 '[') raised RecursionError, which the readers'
except clauses (OSError, ValueError) did not catch: a traceback where a corrupt file gets one sentence (fifth review).
The readers: the simulator's resume, the pooled report, the KL-matching source."""

from __future__ import annotations

import pytest

from seiko_core import klmatch, pooled, simulate

DEEP = "[" * 200_000


def test_the_simulators_resume_refuses_a_deep_results_file_in_one_sentence(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(DEEP)
    with pytest.raises(simulate.SimulationError, match=r"cannot be read as a results file \(") as refused:
        simulate.load_results(path, {"oracle": "purple"})
    assert "\n" not in str(refused.value)


def test_the_pooled_report_refuses_a_deep_results_file_in_one_sentence(tmp_path, capsys):
    (tmp_path / simulate.RESULTS).write_text(DEEP)
    assert pooled.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot read {tmp_path / simulate.RESULTS}:")


def test_the_kl_match_refuses_a_deep_results_file_in_one_sentence(tmp_path):
    (tmp_path / simulate.RESULTS).write_text(DEEP)
    with pytest.raises(klmatch.KLMatchError, match="could not be read as simulator results") as refused:
        klmatch._source(tmp_path, "greedy", "bootstrap")
    assert "\n" not in str(refused.value)
