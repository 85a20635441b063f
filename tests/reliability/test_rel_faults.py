"""Faults, short versions of app.tools.fault_matrix (the full matrix: ``-m slow`` or ``python -m app.tools.fault_matrix``).

- The worker SIGKILLs itself (SEIKO_FAULT_PHASE) inside the publishing transaction of a generate job (the write
  lock held, rows written, no commit); restarted, it re-runs the job to exactly one published result.
- The web server is SIGKILLed in the middle of a burst of ratings sent through gradio_client; every rating the
  clients got an answer for is in the database, nothing twice.
- The disk fills up while the round-2 adapter is saved: the job fails cleanly, round 1 still verifies and loads,
  and with space again the round is published once.
"""

from __future__ import annotations

import json
import os

import pytest

from app.tools import fault_matrix


def test_worker_killed_inside_the_publishing_transaction_publishes_exactly_once(lab, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    result = fault_matrix.run_phase(lab, "publish", kills=1, log_dir=logs)
    print(result)
    assert result.kills == 1 and result.kills_by_job == {"generate@publish": 1}, result


def test_server_killed_during_a_burst_of_ratings_loses_nothing_acknowledged(lab, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    result = fault_matrix.run_server_kills(lab, trials=1, log_dir=logs, n_raters=3, n_images=60, seed=1)
    print(result)
    assert result.trials == 1 and result.acknowledged > 0
    assert result.interrupted_calls >= 0 and result.stored_not_acknowledged <= 3  # at most one call in flight per rater


def test_full_disk_during_adapter_save_fails_cleanly(rel_model_dir, tmp_path, _sqlite_at_head):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; run python -m app.tools.fault_matrix --disk-trials N as root")
    try:
        result = fault_matrix.run_disk_full(tmp_path / "disk", rel_model_dir, trials=1, db_template=_sqlite_at_head)
    except fault_matrix.CannotMount as exc:
        pytest.skip(str(exc))
    print(result)
    assert result.trials == result.failed_cleanly == 1


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_full_fault_matrix(tmp_path):
    """Every fault point x SEIKO_MATRIX_KILLS (default 10) kills, 10 server kills, 3 full disks: what RELIABILITY.md reports."""
    kills = os.environ.get("SEIKO_MATRIX_KILLS", "10")
    out = tmp_path / "matrix.json"
    rc = fault_matrix.main(["--kills", kills, "--server-trials", kills, "--disk-trials", "3" if os.geteuid() == 0 else "0",
                            "--workdir", str(tmp_path / "w"), "--json", str(out)])
    results = json.loads(out.read_text())
    assert rc == 0 and results["ok"], json.dumps(results, indent=2)
    assert all(p["kills"] == int(kills) for p in results["phases"])
