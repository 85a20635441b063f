"""The page's waits (app.ui_assets.action_silent_s, action_run_s) for any heartbeat Gradio accepts from
GRADIO_HEARTBEAT_INTERVAL: a number of seconds the page's timers can hold (twelfth review, 6 Dec 2026)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from app import ui_assets

# a browser's setTimeout holds a delay of at most 2^31 - 1 ms (HTML's timer initialisation steps: a larger one is taken
# as 0 and fires at once)
SET_TIMEOUT_MAX_MS = 2**31 - 1


def _waits_ms(js: str) -> list[int]:
    return [int(v) for v in re.findall(r"\b(?:SILENT_MS|RUN_MS) = (\d+)", js)]


@pytest.mark.parametrize("interval", ["inf", "1e308", "2e6", "1100000"])
def test_a_heartbeat_interval_gradio_accepts_gives_waits_a_browser_timer_can_hold(monkeypatch, interval):
    """Gradio takes any positive float (inf: no heartbeat). ``ceil(2 * rate)`` of inf or 1e308 raised OverflowError
    when app.ui_assets was imported, so the app could not start; from about 1.07e6 s the waits passed a browser
    timer's largest delay, so every timer of the page fired at once (each stream of results cut as silent, the grid's
    wait re-armed without pause). Now the silent bound is at most ACTION_SILENT_MAX_S, and every wait of both scripts
    fits a timer."""
    from gradio import utils

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", interval)
    assert utils.get_heartbeat_rate() == float(interval)  # Gradio's own reading takes it
    waits = _waits_ms(ui_assets.grid_js()) + _waits_ms(ui_assets.streams_head())
    assert len(waits) == 3 and all(0 < w <= SET_TIMEOUT_MAX_MS for w in waits), waits
    assert ui_assets.ACTION_SILENT_MIN_S <= ui_assets.action_silent_s() <= ui_assets.ACTION_SILENT_MAX_S
    assert ui_assets.ACTION_SILENT_MAX_S >= 5 * 24 * 3600  # any heartbeat up to days apart still gets twice its own


def test_the_app_imports_with_a_heartbeat_of_inf():
    """The module's import itself (ACTION_SILENT_S, ACTION_RUN_S are computed there): it was a traceback."""
    env = {**os.environ, "GRADIO_HEARTBEAT_INTERVAL": "inf", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", "import app.ui_assets as u; print(u.ACTION_SILENT_S)"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout) == ui_assets.ACTION_SILENT_MAX_S
