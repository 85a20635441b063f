"""The measuring tools' result files are renamed into place whole (ninth review): ``holdout_check``, ``idle_cpu`` and
``login_flood`` wrote theirs in place, so a run stopped while writing (SIGTERM, a full disk) left half a JSON file
that a later reader took for a result, or, for ``login_flood``, instead of the earlier mode's figures. Each write
here is made to fail half-way (the first half of the text written, then the disk is full): the earlier file is
whole and nothing else is left beside it."""

from __future__ import annotations

import errno
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy import text

REAL_WRITE_TEXT = Path.write_text


def _full_disk_on(monkeypatch, name: str, *, at: int = 1) -> list[Path]:
    """``Path.write_text`` of a file named ``name`` (or a temporary sibling of it, ``.tmp-<name>-...``) writes the
    first half of its text and raises ENOSPC on the ``at``-th such write; other writes are untouched. Returns the
    paths written."""
    seen: list[Path] = []

    def write_text(self, data, *args, **kwargs):
        if self.name != name and not self.name.startswith(f".tmp-{name}-"):
            return REAL_WRITE_TEXT(self, data, *args, **kwargs)
        seen.append(self)
        if len(seen) < at:
            return REAL_WRITE_TEXT(self, data, *args, **kwargs)
        REAL_WRITE_TEXT(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", write_text)
    return seen


EARLIER = {"an earlier": "run"}


def _a_failed_write_keeps_the_earlier_file(monkeypatch, out: Path, run, *, raises=OSError,
                                           match="No space left on device", beside=()) -> None:
    """``out`` holds an earlier result; ``run()``'s one write of it fails half-way (``_full_disk_on``) and raises
    ``raises``; the earlier file is then whole, and nothing is left beside it but ``beside``."""
    out.write_text(json.dumps(EARLIER))
    seen = _full_disk_on(monkeypatch, out.name)
    with pytest.raises(raises, match=match):
        run()
    assert len(seen) == 1
    assert json.loads(out.read_text()) == EARLIER
    assert sorted(p.name for p in out.parent.iterdir()) == sorted([out.name, *beside])


def test_holdout_check_leaves_no_half_results_file(tmp_path, monkeypatch, capsys):
    """16 drawn images (stand-ins: random embeddings, two people's ratings), one fit of 8 labels: the results file's
    write fails half-way; --out does not exist after (the tool refuses an existing --out, so a half file there
    would also block the rerun) and the folder holds nothing else."""
    from app.tools import holdout_check

    gen = torch.Generator().manual_seed(0)
    monkeypatch.setattr(holdout_check, "draw", lambda model, n: (torch.zeros(n, 3, 4, 4), torch.randn(n, 16, generator=gen),
                                                                   [f"p{i}" for i in range(n)]))
    monkeypatch.setattr(holdout_check, "ratings_of", lambda images, prompts: {
        "a": np.arange(len(prompts), dtype=float) % 10 + 1, "b": (np.arange(len(prompts), dtype=float) * 7) % 10 + 1})
    out = tmp_path / "res" / "holdout.json"
    seen = _full_disk_on(monkeypatch, out.name)
    with pytest.raises(OSError, match="No space left on device"):
        holdout_check.main(["--images", "16", "--sizes", "8", "--seeds", "1", "--variants", "min1", "none",
                            "--out", str(out)])
    assert len(seen) == 1
    assert not out.exists()
    assert list(out.parent.iterdir()) == []
    capsys.readouterr()


def test_idle_cpu_keeps_the_earlier_results_whole(tmp_path, monkeypatch, capsys):
    from app.tools import idle_cpu

    out = tmp_path / "idle.json"
    argv = ["--seconds", "0.1", "--blocks", "1", "--json", str(out)]
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: idle_cpu.main(argv))
    capsys.readouterr()


def test_login_flood_keeps_the_earlier_modes_figures_whole(tmp_path, monkeypatch, capsys):
    """The file is rewritten after each mode so that a later failure keeps the earlier figures: a failure while the
    second mode's figures were written left half a file instead (the measurement itself stands in here)."""
    from app.tools import login_flood

    def run_mode(mode, **kwargs):
        ms = {"n": 20, "p50": 1.0, "p95": 2.0}
        return {"mode": mode, "baseline_ms": ms, "flood_ms": ms, "p95_ratio": 1.0, "rating_timeouts": 0,
                "flood": {"rate": 50.0, "answers": {"401": 10}}, "server_login_stats": None}

    monkeypatch.setattr(login_flood, "run_mode", run_mode)
    out = tmp_path / "flood.json"
    seen = _full_disk_on(monkeypatch, out.name, at=2)
    with pytest.raises(OSError, match="No space left on device"):
        login_flood.main(["--mode", "all", "--ratings", "20", "--json", str(out)])
    assert len(seen) == 2
    assert [run["mode"] for run in json.loads(out.read_text())["runs"]] == ["guard"]
    assert [p.name for p in tmp_path.iterdir()] == ["flood.json"]
    capsys.readouterr()


def test_login_flood_flooders_answer_file_is_whole_or_absent(tmp_path, monkeypatch):
    """The flood process writes how its sign-ins were answered when told to stop; the measuring process reads it."""
    from app.tools import login_flood

    out = tmp_path / "guard-flood.json"
    Path(f"{out}.stop").touch()  # stop at once: nothing is sent
    _full_disk_on(monkeypatch, out.name)
    with pytest.raises(OSError, match="No space left on device"):
        login_flood.flood("http://127.0.0.1:9", 10.0, str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["guard-flood.json.ready", "guard-flood.json.stop"]


def test_login_flood_servers_sign_in_figures_are_whole_while_it_runs(tmp_path, monkeypatch):
    """The server process rewrites data_dir/guard-stats.json every half second while the measuring process may read
    it (after the flood, the server still running). Here the server's app is a stand-in and its loop is stepped: the
    second write (the figures changed) fails half-way, and the file holds the first figures, whole."""
    from app import ui, web_guard
    from app.tools import login_flood

    stats = types.SimpleNamespace(refused={"429": 1}, logins=3)
    closed = []

    class Demo:
        server_app, local_url = object(), "http://127.0.0.1:1/"

        def launch(self, **kwargs):
            pass

        def close(self):
            closed.append(True)

    ticks = []

    def sleep(seconds):
        ticks.append(seconds)
        if len(ticks) == 2:
            stats.logins = 4  # new figures: written again
        if len(ticks) > 3:
            raise AssertionError("the second write did not fail")

    monkeypatch.setattr(ui, "build_demo", lambda services: Demo())
    monkeypatch.setattr(ui, "launch_kwargs", lambda services: {"app_kwargs": {}})
    monkeypatch.setattr(web_guard, "installed", lambda app: types.SimpleNamespace(stats=stats))
    monkeypatch.setattr(login_flood, "time", types.SimpleNamespace(sleep=sleep))
    data = tmp_path / "data"
    data.mkdir()
    _full_disk_on(monkeypatch, "guard-stats.json", at=2)
    with pytest.raises(OSError, match="No space left on device"):
        login_flood.serve(f"sqlite:///{tmp_path / 'unused.db'}", str(data), 1, "guard")
    assert closed == [True]
    assert json.loads((data / "guard-stats.json").read_text()) == {"refused": {"429": 1}, "logins": 3}
    assert [p.name for p in data.iterdir()] == ["guard-stats.json"]


# ----------------------------------------------------------------------- the other measuring tools (ninth review)
# ab_coverage, fault_matrix, loadtest, quality_speed, raters_check and walkthrough wrote their JSON in place too: each
# is run here with its measurement stood in (or tiny), the results file's write failing half-way.
def test_ab_coverage_keeps_the_earlier_results_whole(tmp_path, monkeypatch, capsys):
    """Its one sentence for a file it cannot write stands; the earlier file is whole, nothing is left beside it."""
    from app.tools import ab_coverage

    out = tmp_path / "ab.json"
    argv = ["--trials", "1", "--resamples", "100", "--json", str(out)]
    sentence = f"ab_coverage: cannot write {out}: No space left on device"  # its one sentence for it stands
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: ab_coverage.main(argv), raises=SystemExit,
                                           match=sentence)
    capsys.readouterr()


def test_fault_matrix_keeps_the_earlier_results_whole(tmp_path, monkeypatch, capsys):
    """No phase, no server or disk trial: the model, the lab and the concurrent writer stand in."""
    from app.tools import fault_matrix

    class Writer:
        def __init__(self, lab, name):
            pass

        def finish(self):
            return 0

    monkeypatch.setattr(fault_matrix, "build_model", lambda out: out)
    monkeypatch.setattr(fault_matrix, "make_lab", lambda root, model_dir: types.SimpleNamespace(close=lambda: None))
    monkeypatch.setattr(fault_matrix, "RatingWriter", Writer)
    out = tmp_path / "res" / "matrix.json"
    out.parent.mkdir()
    argv = ["--phases", "", "--server-trials", "0", "--disk-trials", "0", "--workdir", str(tmp_path / "work"),
            "--json", str(out)]
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: fault_matrix.main(argv))
    capsys.readouterr()


def test_loadtest_keeps_the_earlier_results_whole(tmp_path, monkeypatch, capsys):
    """No rater, no training: the lab, its round and its server stand in (the file is written in the clean-up)."""
    import contextlib

    from app.tools import harness, loadtest

    class Server:
        url = "http://127.0.0.1:9/"

        def __init__(self, lab, logs, name, batch_size):
            self.log = logs / f"{name}.log"
            self.log.write_text("")

        def wait_ready(self):
            pass

        def stop(self):
            pass

    class NoRows:
        def query(self, *entities):
            return self

        def join(self, *args):
            return self

        def filter(self, *args):
            return []

    monkeypatch.setattr(loadtest, "top_processes", lambda: [])
    monkeypatch.setattr(harness, "make_lab", lambda root, model_dir: types.SimpleNamespace(factory=None,
                                                                                           close=lambda: None))
    monkeypatch.setattr(harness, "fake_open_round", lambda lab, name, n, **kwargs: (1, 1, []))
    monkeypatch.setattr(harness, "ServerProc", Server)
    monkeypatch.setattr(loadtest, "read_session", lambda factory: contextlib.nullcontext(NoRows()))
    out = tmp_path / "load.json"
    argv = ["--raters", "0", "--ratings", "1", "--no-train", "--workdir", str(tmp_path / "work"), "--json", str(out)]
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: loadtest.main(argv), beside=("work",))
    capsys.readouterr()


def test_quality_speed_keeps_the_earlier_results_whole(tmp_path, monkeypatch, capsys):
    """One size of 10 ratings, the database's filling and the report stood in."""
    from app.tools import quality_speed

    monkeypatch.setattr(quality_speed.migrate, "upgrade", lambda url: None)
    monkeypatch.setattr(quality_speed, "build", lambda url, **kwargs: None)
    monkeypatch.setattr(quality_speed.ui_quality, "report", lambda factory, who, experiment: (None, [1, 2]))
    out = tmp_path / "speed.json"
    argv = ["--ratings", "10", "--repeats", "1", "--json", str(out)]
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: quality_speed.main(argv))
    capsys.readouterr()


def test_raters_check_keeps_the_earlier_results_whole(tmp_path, monkeypatch, capsys):
    """The close race and the collisions stand in."""
    from app.tools import raters_check

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(raters_check.tempfile, "mkdtemp", lambda prefix: str(work))
    monkeypatch.setattr(raters_check.migrate, "upgrade", lambda url: None)
    monkeypatch.setattr(raters_check, "close_race", lambda factory, data_dir, trials: {"trials": trials})
    monkeypatch.setattr(raters_check, "collisions", lambda factory, data_dir, *args: {"errors": []})
    out = tmp_path / "raters.json"
    argv = ["--trials", "1", "--repeat", "1", "--json", str(out)]
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: raters_check.main(argv))  # "work" went too
    capsys.readouterr()


def test_raters_check_removes_its_scratch_database_however_it_ends(tmp_path, monkeypatch, capsys):
    """Its SQLite file and data dir are scratch (tenth review: they were left in the temporary folder, one per run):
    gone after a run that ends well and after one whose check raises, the exception going on unchanged."""
    from app.tools import raters_check

    made = []

    def mkdtemp(prefix):
        made.append(tmp_path / f"work{len(made)}")
        made[-1].mkdir()
        return str(made[-1])

    monkeypatch.setattr(raters_check.tempfile, "mkdtemp", mkdtemp)
    monkeypatch.setattr(raters_check, "collisions", lambda factory, data_dir, *args: {"errors": []})
    monkeypatch.setattr(raters_check, "close_race", lambda factory, data_dir, trials: {"trials": trials})
    assert raters_check.main(["--trials", "1", "--repeat", "1"]) == 0
    assert made[0].name == "work0" and (not made[0].exists())

    def broken(factory, data_dir, trials):
        raise RuntimeError("the close race broke")

    monkeypatch.setattr(raters_check, "close_race", broken)
    with pytest.raises(RuntimeError, match="the close race broke"):
        raters_check.main(["--trials", "1", "--repeat", "1"])
    assert len(made) == 2 and not made[1].exists()
    capsys.readouterr()


def test_raters_check_leaves_the_database_its_url_names_untouched(db_url, db_factory, monkeypatch, capsys):
    """Found by the nineteenth review: the database --db-url names was wiped (DROP SCHEMA public CASCADE), so the app's
    own URL given by mistake lost every experiment, and a SQLite URL was a traceback. The checks now run in a database
    of their own made on that PostgreSQL server (empty: they see no experiment) and dropped afterwards; a URL that is
    not PostgreSQL is one sentence."""
    from app.tools import raters_check
    from db import repo
    from db.engine import read_session, write_session

    with write_session(db_factory) as s:
        repo.create_experiment(session=s, name="precious", model_spec="m", method="greedy", config={}, budgets=[4],
                               prompts=["a shape"], overlap=1)
    seen = []

    def close_race(factory, data_dir, trials):
        with read_session(factory) as s:
            seen.append([e.name for e in repo.list_experiments(session=s)])
        return {"trials": trials}

    monkeypatch.setattr(raters_check, "close_race", close_race)
    monkeypatch.setattr(raters_check, "collisions", lambda factory, data_dir, *args: {"errors": []})
    code = raters_check.main(["--db-url", db_url, "--trials", "1", "--repeat", "1"])
    if db_url.startswith("sqlite"):
        assert code == 2 and seen == []
        assert capsys.readouterr().err.splitlines() == [
            "error: --db-url must name a PostgreSQL server through psycopg (postgresql+psycopg://...), not sqlite; "
            "without it the check uses a SQLite file of its own"]
    else:
        def made_here():
            with read_session(db_factory) as s:
                return s.execute(text("SELECT count(*) FROM pg_database WHERE datname LIKE 'seiko_tmp_%'")).scalar()

        before = made_here()
        assert code == 0 and seen == [[]]  # a database of its own, empty
        capsys.readouterr()
        assert made_here() == before  # and dropped
        # a measuring that fails: its own error, the database dropped all the same (read-only review)
        monkeypatch.setattr(raters_check, "collisions", lambda *args: (_ for _ in ()).throw(RuntimeError("it broke")))
        with pytest.raises(RuntimeError, match="it broke"):
            raters_check.main(["--db-url", db_url, "--trials", "1", "--repeat", "1"])
        assert made_here() == before
    with read_session(db_factory) as s:
        assert [e.name for e in repo.list_experiments(session=s)] == ["precious"]


def test_raters_check_refuses_a_url_it_cannot_use_without_echoing_it_and_says_a_database_it_left(monkeypatch, capsys):
    """Read-only review of the nineteenth review's raters_check: a port that is not a number (ValueError) and a driver
    that is not installed (psycopg2, asyncpg) were tracebacks, and a URL that did not parse was echoed with its
    password; a temporary database that could not be dropped was a traceback in place of the measured result."""
    import contextlib

    from app.tools import raters_check
    from db import testing as dbt

    for url in ("postgresql+psycopg://u:hunter2@h:54x/d", "postgresql+psycopg:/seiko:hunter2@db/seiko"):
        assert raters_check.main(["--db-url", url, "--trials", "1"]) == 2
        assert capsys.readouterr().err.splitlines() == [
            "error: --db-url (scheme 'postgresql+psycopg') is not a database URL"]
    for url in ("postgresql+psycopg2://u@h/d", "postgresql+asyncpg://u@h/d"):
        assert raters_check.main(["--db-url", url, "--trials", "1"]) == 2
        assert "must name a PostgreSQL server through psycopg" in capsys.readouterr().err

    @contextlib.contextmanager
    def undroppable(url):
        yield "postgresql+psycopg://u@h/seiko_tmp_x"
        raise dbt.DatabaseLeft('the temporary database seiko_tmp_x could not be dropped (gone); drop it with '
                               'DROP DATABASE "seiko_tmp_x"')

    monkeypatch.setattr(dbt, "temporary_postgres_database", undroppable)
    monkeypatch.setattr(raters_check, "_measure", lambda args, tmp, url: {"collisions": [{"errors": []}], "url": url})
    assert raters_check.main(["--db-url", "postgresql+psycopg://u@h/d", "--trials", "1"]) == 0
    out = capsys.readouterr()
    assert '"url": "postgresql+psycopg://u@h/seiko_tmp_x"' in out.out  # the result, printed
    assert out.err.splitlines() == ['warning: the temporary database seiko_tmp_x could not be dropped (gone); drop it '
                                    'with DROP DATABASE "seiko_tmp_x"']


def test_walkthrough_keeps_the_earlier_walkthrough_json_whole(tmp_path, monkeypatch, capsys):
    """One round, nothing rated: the demo process, its web app and the database stand in; walkthrough.json's write
    (before the screenshots) fails half-way, and the demo is still stopped."""
    import contextlib

    from app.tools import walkthrough

    signals = []

    class Demo:
        returncode = None

        def __init__(self, *args, **kwargs):
            pass

        def send_signal(self, sig):
            signals.append(sig)

        def wait(self, timeout=None):
            return 0

        def poll(self):
            return None

    monkeypatch.setattr(walkthrough.subprocess, "Popen", Demo)
    monkeypatch.setattr(walkthrough, "wait_for", lambda *args, **kwargs: object())
    monkeypatch.setattr(walkthrough, "make_engine", lambda url: None)
    monkeypatch.setattr(walkthrough, "session_factory", lambda engine: None)
    monkeypatch.setattr(walkthrough, "read_session", lambda factory: contextlib.nullcontext(None))
    monkeypatch.setattr(walkthrough, "_await_round", lambda client, demo, k, timeout: ({"items": [], "round": k}, 0.0))
    monkeypatch.setattr(walkthrough.repo, "list_experiments", lambda session: [types.SimpleNamespace(id=1)])
    monkeypatch.setattr(walkthrough.services, "close_round", lambda factory, experiment_id: None)
    monkeypatch.setattr(walkthrough, "shoot", lambda *args, **kwargs: pytest.fail("the write did not fail"))
    shots = tmp_path / "shots"
    shots.mkdir()
    out = shots / "walkthrough.json"
    argv = ["--data-dir", str(tmp_path / "data"), "--rounds", "1", "--shots", str(shots), "--model",
            str(tmp_path / "no-model")]
    _a_failed_write_keeps_the_earlier_file(monkeypatch, out, lambda: walkthrough.main(argv))
    assert len(signals) == 1
    capsys.readouterr()


@pytest.mark.parametrize("tool", ["loadtest", "fault_matrix"])
def test_a_work_dir_a_previous_run_left_files_in_is_refused(tmp_path, capsys, monkeypatch, tool):
    """Found by the twentieth review: `--workdir DIR` with a previous run's files in it was reused silently, this run's
    lab, logs and raters' files mixed with that run's. A folder that is not empty, or not a folder, is refused in one
    sentence, status 2 (the walkthrough's --data-dir convention), before anything is written; its files are kept."""
    import importlib

    from app.tools import harness

    module = importlib.import_module(f"app.tools.{tool}")

    def build_model(out):
        raise AssertionError(f"the run went on in {out.parent}")

    monkeypatch.setattr(harness, "build_model", build_model)  # loadtest's
    monkeypatch.setattr(module, "build_model", build_model, raising=False)  # fault_matrix's own name for it
    main = module.main
    used = tmp_path / "used"
    (used / "logs").mkdir(parents=True)
    (used / "logs" / "server.log").write_text("a previous run")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for workdir, said in ((used, "is not empty"), (afile, "is not a folder")):
        with pytest.raises(SystemExit) as ended:
            main(["--workdir", str(workdir), "--json", str(tmp_path / "r.json")])
        err = capsys.readouterr().err
        assert ended.value.code == 2 and err.strip().splitlines()[-1].endswith(
            f"error: {workdir} {said}; give a fresh --workdir")
    assert sorted(p.relative_to(used).as_posix() for p in used.rglob("*")) == ["logs", "logs/server.log"]
    assert afile.read_text() == "x" and not (tmp_path / "r.json").exists()
