"""The measuring tools that serve the app refuse GRADIO_ROOT_PATH before any work, as `serve` and `demo` do (fourteenth
review, 6 Dec 2026): ``app.tools.idle_cpu`` and ``app.tools.login_flood`` launched the app under it (Gradio reads it
itself), so they measured an app the commands refuse to serve, or waited minutes for a page that was not at the root.
Each tool is run with the variable set and every step of its work replaced by one that fails the test: the tool says
the commands' own sentence (``cli_serve.root_path_refusal``) on stderr, exits 1, and none of its work began."""

from __future__ import annotations

import pytest

from app import cli_serve


def _no_work(*args, **kwargs):
    raise AssertionError("the tool began its work under a root path")


@pytest.mark.parametrize("root_path", ["/seiko", "  "])
def test_idle_cpu_refuses_a_root_path_before_it_makes_its_database(tmp_path, monkeypatch, capsys, root_path):
    from app.tools import idle_cpu
    from db import migrate

    monkeypatch.setenv("GRADIO_ROOT_PATH", root_path)
    monkeypatch.setattr(migrate, "upgrade", _no_work)  # its first step: the temporary database at head
    out = tmp_path / "idle.json"
    assert idle_cpu.main(["--seconds", "0.1", "--blocks", "1", "--json", str(out)]) == 1
    said = capsys.readouterr().err.strip()
    assert said == f"error: {cli_serve.root_path_refusal(root_path.strip() or root_path)}"
    assert not out.exists()


@pytest.mark.parametrize("serving", [False, True])
def test_login_flood_refuses_a_root_path_before_it_makes_a_lab_or_serves(tmp_path, monkeypatch, capsys, serving):
    from app import ui
    from app.tools import login_flood
    from db import engine

    argv = (["serve", f"sqlite:///{tmp_path / 'seiko.db'}", str(tmp_path), "7860", "guard"] if serving
            else ["--mode", "guard", "--ratings", "20"])

    monkeypatch.setenv("GRADIO_ROOT_PATH", "/seiko")
    monkeypatch.setattr(login_flood, "run_mode", _no_work)  # the measuring path: a lab and a server process per mode
    monkeypatch.setattr(engine, "make_engine", _no_work)  # the server process: its database, then its app
    monkeypatch.setattr(ui, "build_demo", _no_work)
    assert login_flood.main(argv) == 1
    said = capsys.readouterr().err.strip()
    assert said == f"error: {cli_serve.root_path_refusal('/seiko')}"


def test_the_tools_run_on_when_no_root_path_is_set(monkeypatch, capsys):
    """"" and "/" are the root itself: the tool goes on to its work (here the stand-in, which says so)."""
    from app.tools import login_flood

    for root_path in ("", "/"):
        monkeypatch.setenv("GRADIO_ROOT_PATH", root_path)
        monkeypatch.setattr(login_flood, "run_mode", _no_work)
        with pytest.raises(AssertionError, match="began its work"):
            login_flood.main(["--mode", "guard", "--ratings", "20"])
    assert capsys.readouterr().err == ""
