"""python -m app.tools.idle_cpu: the idle web app's CPU, as shipped and at Gradio's own poll intervals."""

from __future__ import annotations

import json

from app.tools import idle_cpu


def test_it_serves_the_app_and_writes_both_settings(tmp_path, capsys):
    out = tmp_path / "idle.json"
    assert idle_cpu.main(["--seconds", "0.3", "--blocks", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert set(data["means"]) == {"shipped", "gradio defaults"}
    for mean in data["means"].values():
        assert mean["cpu_percent_of_a_core"] >= 0 and mean["context_switches_per_s"] >= 0
    assert "idle poll 20 ms" in capsys.readouterr().out  # the shipped setting is ui.QUEUE_IDLE_POLL_S


def test_bad_arguments_get_one_sentence(capsys):
    assert idle_cpu.main(["--seconds", "0", "--blocks", "1"]) == 2
    assert "--seconds must be above 0" in capsys.readouterr().err
