"""Bad input and bad surroundings at the command line: one sentence on stderr, no traceback, nothing lost.

Each case was found in review on the code before these tests: it printed a traceback (a setting, a database that
cannot be used, a schema revision, a port in use, a model directory without model_index.json, a results file that is
not one), accepted a value it cannot use (``--set finetune.epochs=2.5``), or built over the shipped model in place."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = str(REPO / "models" / "shapes-sd")


def run_cli(*argv: str, env: dict[str, str] | None = None, module: str = "app") -> subprocess.CompletedProcess:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**base, "HF_HUB_OFFLINE": "1", **(env or {})})


def one_sentence(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("env, expected", [
    ({"SEIKO_SESSION_IDLE_MINUTES": "-1"}, "error: the session idle limit (minutes) must be a number from one second to ten "
                                           "years, got '-1'"),
    # found by review: a limit of 1e-300 hours ended every sign-in at once; 1e300 is past what a date holds
    ({"SEIKO_SESSION_MAX_HOURS": "1e-300"}, "error: the session limit (hours) must be a number from one second to ten years, "
                                           "got '1e-300'"),
    ({"SEIKO_SESSION_MAX_HOURS": "1e300"}, "error: the session limit (hours) must be a number from one second to ten years, "
                                          "got '1e300'"),
    ({"SEIKO_TRUSTED_PROXIES": "10.0.0.1,0.0.0.0/0"}, "error: SEIKO_TRUSTED_PROXIES covers 0.0.0.0/0, every address: any "
                                                     "client could then set its own address in X-Forwarded-For; name the "
                                                     "proxy's address or network"),
    # found by review: two halves made every address, one entry at a time passing the check
    ({"SEIKO_TRUSTED_PROXIES": "0.0.0.0/1,128.0.0.0/1"}, "error: SEIKO_TRUSTED_PROXIES covers 0.0.0.0/0, every address: "
                                                        "any client could then set its own address in X-Forwarded-For; "
                                                        "name the proxy's address or network"),
    ({"SEIKO_TRUSTED_PROXIES": "10.0.0.1,64.0.0.0/2"}, "error: SEIKO_TRUSTED_PROXIES covers 64.0.0.0/2, wider than a /8 "
                                                      "(IPv4) or /7 (IPv6): name the proxy's address or network"),
    ({"SEIKO_TRUSTED_PROXIES": "::ffff:0.0.0.0/95"}, "error: SEIKO_TRUSTED_PROXIES covers ::fffe:0:0/95, every IPv4 "
                                                    "address as IPv6 sees it: name the proxy's address or network"),
    ({"SEIKO_TRUSTED_PROXIES": "::ffff:0.0.0.0/96"}, "error: SEIKO_TRUSTED_PROXIES covers ::ffff:0:0/96, wider than a /8 "
                                                    "(IPv4) or /7 (IPv6)"),
    ({"SEIKO_TRUSTED_PROXIES": "2000::/7"}, "error: SEIKO_TRUSTED_PROXIES covers 2000::/7, public IPv6 addresses wider "
                                           "than a /32"),
    ({"SEIKO_PUBLIC_URL": "seiko.example.org/app"}, "error: the public URL must look like https://seiko.example.org"),
])
def test_a_bad_setting_is_one_sentence_in_every_command(tmp_path, env, expected):
    for argv in (["db", "current"], ["users", "list"]):
        proc = run_cli(*argv, "--data-dir", str(tmp_path / "d"), env=env)
        assert proc.returncode == 2 and one_sentence(proc).startswith(expected), (argv, proc.stderr)


def test_a_bad_listen_address_or_port_refuses_only_the_commands_that_serve(tmp_path):
    """SEIKO_PORT=abc refused `db current` and `users list`, which listen on nothing (found by review); it still
    refuses `serve` at the start, in one sentence."""
    for env, expected in (({"SEIKO_PORT": "abc"}, "error: the port must be a whole number from 1 to 65535, got 'abc'"),
                          ({"SEIKO_HOST": "a b"}, "error: the listen address (--host) must be an IP address or a host "
                                                  "name, got 'a b'"),
                          ({"SEIKO_HOST": "[::1"}, "error: the listen address (--host) '[::1' must be an IPv6 address "
                                                  "in brackets, such as [::1], or an address or host name without "
                                                  "brackets")):
        for argv in (["db", "upgrade"], ["db", "current"], ["users", "list"]):
            proc = run_cli(*argv, "--data-dir", str(tmp_path / "d"), env=env)
            assert proc.returncode == 0 and "Traceback" not in proc.stderr, (argv, proc.stderr)
        proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), env=env)
        assert proc.returncode == 2 and one_sentence(proc) == expected, proc.stderr


@pytest.mark.parametrize("port", ["-1", "abc", "70000"])
def test_a_bad_port_flag_is_refused_with_the_sentence(tmp_path, port):
    """argparse answered --port -1 with "invalid _port value: '-1'" (found by review)."""
    proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", port)
    shown = port if port != "abc" else "'abc'"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"error: argument --port: the port must be a whole number from 1 to 65535, got {shown}" in proc.stderr
    assert "invalid" not in proc.stderr


def test_long_session_limits_that_were_accepted_before_still_are():
    """The one-second-to-a-year bound refused SEIKO_SESSION_MAX_HOURS=10000, accepted before it (found by review)."""
    from app.settings import Settings

    assert Settings.from_env({"session_max_hours": "10000"}, environ={}).session_max_hours == 10000.0
    assert Settings.from_env({"trusted_proxies": "10.0.0.0/8,fc00::/7,192.168.0.0/16"}, environ={}).trusted_proxies == (
        "10.0.0.0/8", "fc00::/7", "192.168.0.0/16")
    assert Settings.from_env({"trusted_proxies": "2001:db8::/32,fe80::/10"}, environ={}).trusted_proxies == (
        "2001:db8::/32", "fe80::/10")


def test_a_database_that_cannot_be_used_and_a_bad_revision_are_one_sentence(tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    (data / "seiko.db").write_bytes(b"this is not a database, only text that a mistaken copy left here" * 100)
    before = (data / "seiko.db").read_bytes()
    # a migration's own check says so of itself (db.migrate._before_migration, thirteenth review)
    for argv, after in ((["users", "list"], ""), (["db", "current"], ""), (["db", "upgrade"], "; nothing was changed")):
        proc = run_cli(*argv, "--data-dir", str(data))
        assert proc.returncode == 1, proc.stderr
        assert one_sentence(proc) == "error: the database could not be used (file is not a database)" + after, argv
    assert (data / "seiko.db").read_bytes() == before  # untouched
    good = tmp_path / "good"
    assert run_cli("db", "upgrade", "--data-dir", str(good)).returncode == 0
    proc = run_cli("db", "upgrade", "bogus", "--data-dir", str(good))
    assert proc.returncode == 1
    assert one_sentence(proc).startswith("error: the schema migration was refused: Can't locate revision identified by 'bogus'")


def test_demo_with_a_directory_that_is_not_a_model_is_one_sentence(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = run_cli("demo", "--model", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "d"), "--no-worker")
    assert proc.returncode == 1
    line = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert "Traceback" not in proc.stderr and len(line) == 1, proc.stderr
    assert "is not a diffusers model directory (it has no model_index.json) (--model or $SEIKO_MODEL" in line[0]


def test_serve_on_a_port_in_use_is_one_sentence(tmp_path):
    assert run_cli("db", "upgrade", "--data-dir", str(tmp_path / "d")).returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", str(port))
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: could not listen on 127.0.0.1:{port} (") and "give another with --port" in lines[0]


def test_serve_refuses_a_bad_alarm_threshold_at_the_start(tmp_path):
    """A bad SEIKO_ALARM_* value was read on every dashboard load and broke the dashboard, not the start (found by
    review)."""
    assert run_cli("db", "upgrade", "--data-dir", str(tmp_path / "d")).returncode == 0
    proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), env={"SEIKO_ALARM_KL_MAX": "lots"})
    assert proc.returncode == 1
    assert one_sentence(proc) == ("error: SEIKO_ALARM_KL_MAX must be a number, got 'lots' (a threshold of the "
                                  "dashboard's reward-hacking alarms)")


@pytest.mark.parametrize("override, expected", [
    ("finetune.lr=-1", "lr, lora_alpha and grad_clip must be positive"),
    ("finetune.grad_clip=-5", "lr, lora_alpha and grad_clip must be positive"),
    ("finetune.epochs=2.5", "epochs must be a whole number, got 2.5"),
    ('finetune.epochs="abc"', "epochs must be a whole number, got 'abc'"),
    ("sampling.steps=2.5", "steps must be a whole number, got 2.5"),
    ("finetune.kl_weight=Infinity", "kl_weight must be a finite number, got inf"),
    ("sampling.guidance=NaN", "guidance must be non-negative"),  # nan fails the range check first
    ("sampling.guidance=Infinity", "guidance must be a finite number, got inf"),
    ("reward.lr=Infinity", "lr must be a finite number, got inf"),
    ("finetune.trajectories_per_epoch=0", "trajectories_per_epoch must be at least 1, got 0"),
    ("reward.num_heads=true", "num_heads must be a whole number, got True"),
    ("reward.dropout=[0.2, 1.5]", "dropout must be rates in [0, 1)"),
    ("finetune.target_modules=[]", "target_modules must be module names"),
    ("budgets=[32, 2.5]", "budgets must be whole numbers"),
])
def test_set_refuses_a_value_of_the_wrong_kind_or_out_of_range(override, expected):
    from seiko_core.presets import preset
    from seiko_core.simulate import apply_overrides

    with pytest.raises(ValueError, match=expected.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(preset("shapes"), [override])
    for fine in ("finetune.epochs=3", "finetune.max_seconds=null", "optimism.bonus_alpha=0.5", "sampling.guidance=0"):
        apply_overrides(preset("shapes"), [fine])  # still accepted
    for name in ("shapes", "sd15"):
        preset(name)


def test_simulate_refuses_a_bad_preset_or_set_value_in_one_sentence(tmp_path):
    out = tmp_path / "sim"
    proc = run_cli("--oracle", "purple", "--method", "greedy", "--budgets", "4", "--seeds", "0", "--out", str(out),
                   "--set", "finetune.truncation=bogus", module="seiko_core.simulate")
    assert proc.returncode == 2
    assert [x for x in proc.stderr.splitlines() if x.startswith("error:")] == [
        "error: unknown truncation 'bogus'; choose from ['per_step', 'per_trajectory', 'stratified']"], proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("--oracle", "purple", "--method", "greedy", "--budgets", "4", "--seeds", "0", "--out", str(out),
                   "--set", "prompts=[]", module="seiko_core.simulate")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: prompts must hold at least one prompt to sample from, got []" in proc.stderr, proc.stderr


def test_simulate_and_bench_taste_refuse_a_results_file_that_is_not_one(tmp_path):
    from app import bench_taste
    from app.experiment_options import ExperimentOptions
    from seiko_core import simulate

    bad = tmp_path / "results.json"
    for text in ("{not json", "[1]"):
        bad.write_text(text)
        with pytest.raises(simulate.SimulationError, match="results"):
            simulate.load_results(bad, {})
    out = tmp_path / "bench"
    (out / "seed_0").mkdir(parents=True)
    (out / "seed_0" / "keep.txt").write_text("an unfinished seed's data")
    for text in ("{not json", "[1]", '{"seeds": [1]}'):
        (out / "results.json").write_text(text)
        cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=8, seeds=(0,), out=out, model=MODEL,
                                      options=ExperimentOptions())
        with pytest.raises(bench_taste.BenchError, match="is not a bench-taste results file; give another --out"):
            bench_taste.run(cfg, ["test"], log=lambda line: None)
        assert (out / "seed_0" / "keep.txt").exists()  # refused, not started afresh over the old data
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=8, seeds=(0,), out=a_file, model=MODEL,
                                  options=ExperimentOptions())
    with pytest.raises(bench_taste.BenchError, match="cannot be made"):
        bench_taste.run(cfg, ["test"], log=lambda line: None)


def test_bench_taste_refuses_an_out_folder_that_takes_no_new_file_in_one_sentence(tmp_path, monkeypatch):
    """An existing --out that takes no new file (/sys refuses even root) passed the mkdir check and was a
    PermissionError traceback at results.json's first write, after the model had been hashed (seventh review).
    One BenchError sentence now, before the hash."""
    from app import bench_taste
    from app.experiment_options import ExperimentOptions

    hashed = []
    monkeypatch.setattr(bench_taste, "model_sha256", lambda model: hashed.append(model) or "0" * 64)
    cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=8, seeds=(0,), out=Path("/sys"), model=MODEL,
                                  options=ExperimentOptions())
    with pytest.raises(bench_taste.BenchError) as refused:
        bench_taste.run(cfg, ["test"], log=lambda line: None)
    assert str(refused.value).startswith("the output directory /sys cannot be written (")
    assert str(refused.value).endswith("); give another --out") and hashed == []


def test_bench_taste_plot_whose_write_fails_half_way_leaves_the_earlier_plot(tmp_path, monkeypatch):
    """bench_taste.png was saved straight into its place: a write that failed half-way (a full disk; here the figure
    writes part of the file, then the disk is full) left a truncated PNG instead of the earlier plot (seventh review)."""
    import errno

    import matplotlib.figure

    from app import bench_taste
    from app.experiment_options import ExperimentOptions

    cfg = bench_taste.BenchConfig(person="purple", rounds=1, budget=8, seeds=(0,), out=tmp_path, model=MODEL,
                                  options=ExperimentOptions())
    path = tmp_path / "bench_taste.png"
    path.write_bytes(b"the earlier plot")

    def full_disk(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        bench_taste.plot(path, cfg, bench_taste.summarise({}))
    assert path.read_bytes() == b"the earlier plot" and sorted(p.name for p in tmp_path.iterdir()) == ["bench_taste.png"]


def test_bench_taste_refuses_a_missing_model_and_a_bad_timeout_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("bench-taste", "--person", "purple", "--rounds", "1", "--budget", "8", "--seeds", "0", "--out", str(out),
                   "--model", str(tmp_path / "no-such-model"))
    assert proc.returncode == 1 and "does not exist" in one_sentence(proc)
    assert not (out / "seed_0").exists()
    for bad in ("-1", "nan"):
        proc = run_cli("bench-taste", "--person", "purple", "--rounds", "1", "--budget", "8", "--seeds", "0",
                       "--out", str(out), "--round-timeout", bad)
        assert proc.returncode == 1
        assert one_sentence(proc).startswith("error: --round-timeout must be a positive number of seconds")


def test_a_person_may_answer_numpy_numbers_and_may_not_exit_the_process(tmp_path):
    from app.people import PersonError, check_ratings, load_person

    assert check_ratings("p", [np.int64(5), np.float32(7.0), 3], 3) == [5, 7, 3]
    with pytest.raises(PersonError, match=r"rated image 0 .*5\.5\)?; ratings must be whole numbers"):
        check_ratings("p", [np.float64(5.5)], 1)
    (tmp_path / "exits.py").write_text("import sys\nsys.exit(3)\n")
    with pytest.raises(PersonError, match="failed to import: SystemExit: 3"):
        load_person(f"{tmp_path}/exits.py:rate")
    (tmp_path / "quits.py").write_text("import sys\ndef rate(images, prompts):\n    sys.exit(4)\n")
    with pytest.raises(PersonError, match="raised SystemExit: 4"):
        load_person(f"{tmp_path}/quits.py:rate").rate(np.zeros((1, 3, 2, 2)), ["p"])


def test_the_shapes_build_replaces_a_model_only_once_it_has_finished(tmp_path, monkeypatch):
    from seiko_core.toy import __main__ as toy_main

    out = tmp_path / "models" / "shapes-sd"
    out.mkdir(parents=True)
    (out / "model_index.json").write_text("{}")

    def failing_build(where, cfg):
        Path(where).mkdir(parents=True)
        (Path(where) / "model_index.json").write_text('{"half": true}')
        raise KeyboardInterrupt  # Ctrl-C half-way

    monkeypatch.setattr(toy_main, "build", failing_build)
    with pytest.raises(KeyboardInterrupt):
        toy_main.build_in_place_of(out, toy_main.BuildConfig.quick())
    assert (out / "model_index.json").read_text() == "{}"  # the old model, untouched
    assert sorted(p.name for p in out.parent.iterdir()) == ["shapes-sd"]  # no partial build left beside it

    def good_build(where, cfg):
        Path(where).mkdir(parents=True)
        (Path(where) / "model_index.json").write_text('{"new": true}')
        return {"ok": True}

    monkeypatch.setattr(toy_main, "build", good_build)
    assert toy_main.build_in_place_of(out, toy_main.BuildConfig.quick()) == {"ok": True}
    assert json.loads((out / "model_index.json").read_text()) == {"new": True}
    (aside,) = [p for p in out.parent.iterdir() if p.name.startswith("shapes-sd.replaced-")]
    assert (aside / "model_index.json").read_text() == "{}"  # moved aside, not deleted
    proc = run_cli("quality", "--model", str(tmp_path / "nowhere"), module="seiko_core.toy")
    assert proc.returncode == 2 and "is not a model written by `build`" in proc.stderr and "Traceback" not in proc.stderr


def test_a_broken_adapter_reaches_the_admin_as_its_sentence():
    import gradio as gr

    from app.ui import _shown
    from seiko_core.checkpoint import CheckpointError

    def broken():
        raise CheckpointError("Checkpoint 'adapters/exp1/round_2' has no manifest.json; it is incomplete or not a checkpoint.")

    with pytest.raises(gr.Error, match="has no manifest.json"):
        _shown(broken)


def test_demo_refuses_a_stop_timeout_that_would_kill_the_worker_at_once(tmp_path):
    """A negative --stop-timeout was accepted, and stopping the demo then killed the worker before it could hand its
    job back (Popen.wait with a negative timeout returns at once). Found by review."""
    proc = run_cli("demo", "--stop-timeout", "-5", "--data-dir", str(tmp_path / "d"), "--no-worker")
    assert proc.returncode == 2 and "expected a positive number of seconds, at most a day (86400), got '-5'" in proc.stderr
    assert not (tmp_path / "d").exists()


def test_serve_on_a_host_name_that_does_not_resolve_says_so(tmp_path):
    """It was reported as a busy port ("could not listen on bad_host!!:7860 (Cannot find empty port ...)") (found by
    review)."""
    assert run_cli("db", "upgrade", "--data-dir", str(tmp_path / "d")).returncode == 0
    (tmp_path / "pw").write_text("correct horse battery\n")
    assert run_cli("users", "add", "root", "--role", "admin", "--password-file", str(tmp_path / "pw"),
                   "--data-dir", str(tmp_path / "d")).returncode == 0
    proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--host", "bad_host!!")
    assert proc.returncode == 1
    assert one_sentence(proc) == ("error: the listen address 'bad_host!!' (--host) is neither an IP address nor a name "
                                  "this machine can resolve")


def test_a_person_answering_a_bfloat16_tensor_or_with_a_broken_module_is_one_sentence(tmp_path):
    """A bfloat16 tensor of ratings escaped as 'TypeError: Got unsupported ScalarType BFloat16', and a module whose
    __getattr__ raised escaped from load_person: both were tracebacks (found by review)."""
    import torch

    from app.people import PersonError, check_ratings, load_person

    assert check_ratings("p", torch.tensor([7.0, 3.0], dtype=torch.bfloat16), 2) == [7, 3]
    assert check_ratings("p", torch.tensor([7, 3], dtype=torch.int16), 2) == [7, 3]
    with pytest.raises(PersonError, match=r"^person 'p' returned a complex tensor; ratings must be whole numbers"):
        check_ratings("p", torch.tensor([7 + 1j]), 1)
    (tmp_path / "lazy.py").write_text("def __getattr__(name):\n    raise RuntimeError('not ready')\n")
    with pytest.raises(PersonError, match=r"^person file .*lazy\.py' has no usable 'rate': RuntimeError: not ready \(at lazy\.py:2\)\.$"):
        load_person(f"{tmp_path}/lazy.py:rate")


def test_demo_on_a_port_in_use_is_one_sentence(tmp_path, worker_model_dir):
    """`serve` said so in one sentence; `demo` printed a traceback ending in ServeError (found by review)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli("demo", "--no-worker", "--model", str(worker_model_dir), "--data-dir", str(tmp_path / "d"),
                       "--port", str(port))
    assert proc.returncode == 1
    lines = [x for x in proc.stderr.strip().splitlines() if x.startswith("error:")]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: could not listen on 127.0.0.1:{port} (")


@pytest.mark.parametrize("root_path", ["/seiko", "   ", "\t"])
def test_a_root_path_is_refused_before_the_demo_or_serve_does_any_work(tmp_path, root_path):
    """Found by the thirteenth review (6 Dec 2026): GRADIO_ROOT_PATH was refused only as the web server started, after
    `demo` had migrated the database and started its worker, and a value of white space alone was not refused at all
    (Gradio puts it in front of its page's addresses). Now both commands refuse it first, in one sentence: no data
    folder, no database, no worker. (The port is taken so that the code before this fix stopped, not served.)"""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for argv in (["demo", "--stop-timeout", "20"], ["serve"]):
            data = tmp_path / argv[0]
            proc = run_cli(*argv, "--data-dir", str(data), "--port", port, env={"GRADIO_ROOT_PATH": root_path})
            assert proc.returncode == 1, (argv, proc.stdout, proc.stderr)
            said = one_sentence(proc)
            assert said.startswith(f"error: GRADIO_ROOT_PATH is set ({root_path!r}), but this app "
                                   "must be served at the root of its address"), (argv, said)
            assert not data.exists() and "worker started" not in proc.stdout, (argv, proc.stdout)


def test_the_demo_hands_its_worker_the_database_url_in_the_environment_not_on_its_command_line():
    """The worker the demo starts got --db-url with the PostgreSQL password in it: readable by every local user in
    ps for the worker's whole life, though the operator kept it out of argv with SEIKO_DB_URL (found by review)."""
    from app.cli_demo import worker_command, worker_env
    from app.settings import Settings

    settings = Settings.from_env({"data_dir": "/tmp/x"},
                                 environ={"SEIKO_DB_URL": "postgresql://seiko:Pg-S3cret@db.internal/seiko"})
    assert not any("S3cret" in part for part in worker_command(settings))
    env = worker_env(settings, environ={"SEIKO_DB_URL": "sqlite:////elsewhere.db"})
    assert Settings.from_env({"data_dir": "/tmp/x"}, environ=env).db_url == settings.db_url
    assert env["PYTHONUNBUFFERED"] == "1"


@pytest.mark.parametrize("flag", ["--lease-s", "--poll-s"])
def test_a_worker_time_past_a_day_is_refused_at_the_start(tmp_path, flag):
    """1e12 passed the check and crashed the worker: 'OverflowError: date value out of range' for the lease's end,
    'timestamp out of range' for the poll's wait (found by review)."""
    proc = run_cli("worker", "--once", flag, "1e12", "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "expected a positive number of seconds, at most a day (86400), got '1e12'" in proc.stderr


@pytest.mark.parametrize("many", [257, 10**6], ids=["one-past-the-bound", "a-million"])
def test_a_worker_with_more_processes_than_its_bound_is_refused_at_the_start(tmp_path, many):
    """Found by the twentieth review: `--processes 1000000` was accepted (and would have started a million ranks). The
    bound is 256 ranks of one machine, whatever its CPU count (its first form, the CPU count, refused 2 on a one-core
    runner); one more is one sentence, status 2, before anything starts."""
    import argparse

    from app import cli_worker

    parser = argparse.ArgumentParser()
    cli_worker.add_arguments(parser)
    assert parser.parse_args(["--processes", "256"]).processes == 256
    proc = run_cli("worker", "--once", "--processes", str(many), "--data-dir", str(tmp_path / "d"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        f"argument --processes: expected a whole number of processes from 1 to 256, got '{many}'")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("worker_id, processes, expected", [
    (" gpu-box", 1, "error: the worker id (--worker-id) ' gpu-box' has leading or trailing spaces"),
    ("x" * 201, 1, "error: the worker id (--worker-id) is 201 characters long; the limit is 200"),
    ("gpu\x1bbox", 1, "error: the worker id (--worker-id) 'gpu\\x1bbox' contains the control or format character U+001B; "
                      "use letters, digits, punctuation and spaces"),
    # its followers are named ID/rank1 ...: refused by the supervisor before any rank starts
    ("x" * 195, 2, "error: the worker id (--worker-id) with its last process's suffix /rank1 is 201 characters long; "
                   "the limit is 200"),
], ids=["spaces", "too-long", "control-character", "too-long-for-its-ranks"])
def test_a_worker_id_the_job_table_refuses_is_one_sentence_at_the_start(tmp_path, _sqlite_at_head, worker_id, processes,
                                                                         expected):
    """A --worker-id that claim_job refuses (spaces around it, over 200 characters, a control character) was accepted
    at the start; the worker then failed at its first claim, after its model imports and log lines (found by
    review). It is refused first, in one sentence, and the Worker refuses it too."""
    import shutil

    from app.settings import Settings
    from app.worker import Worker
    from db.errors import InvalidInput

    data = tmp_path / "d"
    data.mkdir()
    shutil.copy(_sqlite_at_head, data / "seiko.db")
    proc = run_cli("worker", "--once", "--worker-id", worker_id, "--processes", str(processes), "--data-dir", str(data))
    assert proc.returncode == 1 and one_sentence(proc) == expected
    if processes == 1:
        settings = Settings.from_env({"data_dir": str(data), "db_url": f"sqlite:///{data / 'seiko.db'}"}, environ={})
        with pytest.raises(InvalidInput, match="worker_id"):
            Worker(settings, worker_id)


def test_the_demos_default_stop_timeout_outlasts_the_workers_grace_and_its_hand_back():
    """The demo killed the worker 30 s after its SIGTERM: exactly the worker's --stop-grace-s, so a job stuck after the
    stop was killed before the watchdog could hand it back (5 s more), and used an attempt (found by the fourth
    review). The default now leaves the grace, the hand-back and time to exit."""
    import argparse

    from app import cli_demo, cli_worker
    from app.worker import Watchdog

    parser = argparse.ArgumentParser()
    cli_demo.add_arguments(parser)
    default = parser.parse_args([]).stop_timeout
    assert default >= cli_worker.STOP_GRACE_S + Watchdog.HAND_BACK_S + 5.0, default


def _users_add(data: Path, *argv: str, stdin=None) -> subprocess.CompletedProcess:
    """``users add`` in a child whose address space is capped at 3 GiB and whose run at 60 s: reading a whole endless
    input grows past the cap (a MemoryError, not the sentence) instead of filling the machine."""
    import os
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    base = {k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}
    return subprocess.run([sys.executable, "-m", "app", "users", "add", "e5", "--role", "admin", *argv,
                           "--data-dir", str(data)], cwd=REPO, capture_output=True, text=True, timeout=60,
                          stdin=stdin, preexec_fn=cap, env={**base, "HF_HUB_OFFLINE": "1"})


def test_a_password_line_without_an_end_is_refused_after_a_passwords_length_not_read_whole(tmp_path, _sqlite_at_head):
    """``users add --password-file /dev/zero`` (and ``< /dev/zero``, and a 10 MB file without a line end) read the
    whole "first line": 6 GB and never an answer (found by the sixth review). The first line is read up to a longest
    password and its line end; a longer one is refused with the password-length sentence and no account is added."""
    import os
    import shutil

    data = tmp_path / "d"
    data.mkdir()
    shutil.copy(_sqlite_at_head, data / "seiko.db")
    big = tmp_path / "big.txt"
    big.write_bytes(b"p" * 10_000_000)
    expected = "error: a password may have at most 1024 characters"
    for argv, stdin in ((["--password-file", str(big)], None), (["--password-file", "/dev/zero"], None),
                        ([], "/dev/zero"), ([], str(big))):
        with open(stdin or os.devnull, "rb") as source:
            proc = _users_add(data, *argv, stdin=source)
        assert proc.returncode == 1 and one_sentence(proc) == expected, (argv, stdin, proc.stderr[-2000:])
    over = tmp_path / "over.txt"
    over.write_text("p" * 1025 + "\n")
    proc = _users_add(data, "--password-file", str(over))
    assert proc.returncode == 1 and one_sentence(proc) == expected
    proc = run_cli("users", "list", "--data-dir", str(data))
    assert "e5" not in proc.stdout, proc.stdout
    # the longest password a sign-in accepts, with a Windows line end, is still read whole and set
    longest = ("correct horse battery " * 47)[:1024]  # not one character repeated: the password rules refuse that
    (tmp_path / "longest.txt").write_bytes(longest.encode() + b"\r\nignored\n")
    proc = _users_add(data, "--password-file", str(tmp_path / "longest.txt"))
    assert proc.returncode == 0 and "added admin 'e5'" in proc.stdout, proc.stderr
    from app import auth
    from db.engine import make_engine, session_factory

    engine = make_engine(f"sqlite:///{data / 'seiko.db'}")
    try:
        factory = session_factory(engine)
        assert auth.check_login(factory, "e5", longest).refusal is None
        assert auth.check_login(factory, "e5", longest[:-1]).refusal is not None
    finally:
        engine.dispose()


def _copy_with_nan(tmp_path: Path, component: str) -> Path:
    """A copy of the shipped model whose ``component`` holds a NaN in its first floating-point tensor."""
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "nan-model"
    shutil.copytree(MODEL, model)
    file = model / component / ("diffusion_pytorch_model.safetensors" if component in ("unet", "vae") else "model.safetensors")
    tensors = load_file(str(file))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(file), metadata={"format": "pt"})
    return model


def test_the_toy_commands_refuse_a_broken_model_bad_numbers_and_a_bad_quality_file_in_one_sentence(tmp_path):
    """`python -m seiko_core.toy quality` on a model with a NaN text encoder (ModelLoadError), with --steps 0 or -3
    (ValueError), on a QUALITY.json that is a list (TypeError), and `refine-unet --threads 0` (RuntimeError) printed
    tracebacks (found by the sixth review). Each is one sentence now, and the model's QUALITY.json is untouched."""
    model = _copy_with_nan(tmp_path, "text_encoder")
    before = (model / "QUALITY.json").read_bytes()
    proc = run_cli("quality", "--model", str(model), "--samples", "1", module="seiko_core.toy")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert "non-finite weights in text_encoder" in line, proc.stderr
    assert (model / "QUALITY.json").read_bytes() == before
    for argv, expected in ((["quality", "--steps", "0"], "--steps must be at least 1, got 0"),
                           (["quality", "--steps", "-3"], "--steps must be at least 1, got -3"),
                           (["quality", "--guidance", "nan"], "--guidance must be a finite number of at least 0, got nan"),
                           (["refine-encoder", "--steps", "0"], "--steps must be at least 1, got 0"),
                           (["refine-unet", "--threads", "0"], "--threads must be at least 1, got 0"),
                           (["refine-unet", "--steps", "-1"], "--steps must be at least 1, got -1")):
        proc = run_cli(*argv, "--model", MODEL, module="seiko_core.toy")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and expected in proc.stderr, (argv, proc.stderr)
    for text in ("[1, 2]", '{"build_config": [1]}', '"x"'):
        (model / "QUALITY.json").write_text(text)
        for command in ("quality", "refine-encoder", "refine-unet"):
            proc = run_cli(command, "--model", str(model), module="seiko_core.toy")
            assert proc.returncode == 1 and one_sentence(proc) == (
                f"error: {str(model / 'QUALITY.json')!r} is not a QUALITY.json written by `build` (it must be a JSON "
                "object holding a build_config object)"), (command, text, proc.stderr[-3000:])
            assert (model / "QUALITY.json").read_text() == text
    # found by the nineteenth review: bytes that are not UTF-8 and JSON nested too deeply were a UnicodeDecodeError and
    # a RecursionError traceback, and a file that is not JSON was json's sentence naming no file
    for data, why in ((b"\xff\xfe\x00binary", "not UTF-8 text"), (b"[" * 200_000, "JSON nested too deeply"),
                      (b'{"build_config": {', "not JSON: Expecting property name enclosed in double quotes: line 1 "
                                              "column 19 (char 18)")):
        (model / "QUALITY.json").write_bytes(data)
        for command in ("quality", "refine-encoder", "refine-unet"):
            proc = run_cli(command, "--model", str(model), module="seiko_core.toy")
            assert proc.returncode == 1 and one_sentence(proc) == (
                f"error: {str(model / 'QUALITY.json')!r} is not a QUALITY.json written by `build` ({why})"), (
                command, proc.stderr[-3000:])
            assert (model / "QUALITY.json").read_bytes() == data


def test_sample_refuses_bad_values_before_loading_and_a_bad_adapter_or_output_in_one_sentence(tmp_path):
    """`python -m seiko_core.sample` (found by the sixth review): an unknown --preset was refused only after the model
    had loaded, --steps -3, an adapter directory without weights and --out under a file were tracebacks, and wrong
    values were used silently: --steps 0 ran the preset's steps, --guidance 0 sampled with the preset's guidance,
    --guidance nan made a PNG. Each bad value is refused before the model is loaded; 0 guidance is 0."""
    from PIL import Image

    nowhere = str(tmp_path / "no-model")  # a refusal naming the value, not the model, shows it came first
    for argv, expected in ((["--preset", "nosuch"], "unknown preset 'nosuch'; choose from sd15, shapes"),
                           (["--steps", "0"], "--steps must be at least 1, got 0"),
                           (["--steps", "-3"], "--steps must be at least 1, got -3"),
                           (["--guidance", "nan"], "--guidance must be a finite number of at least 0, got nan"),
                           (["--guidance", "-1"], "--guidance must be a finite number of at least 0, got -1.0"),
                           (["--eta", "1.5"], "--eta must be a number from 0 to 1, got 1.5"),
                           (["--cols", "0"], "--cols must be at least 1, got 0")):
        out = tmp_path / "refused.png"
        proc = run_cli("--model", nowhere, "--prompt", "a red circle", "--n", "1", "--out", str(out), *argv,
                       module="seiko_core.sample")
        assert proc.returncode == 2 and "Traceback" not in proc.stderr and expected in proc.stderr, (argv, proc.stderr)
        assert not out.exists()
    (tmp_path / "a-file").write_text("x")
    proc = run_cli("--model", MODEL, "--prompt", "p", "--n", "1", "--out", str(tmp_path / "a-file" / "s.png"),
                   module="seiko_core.sample")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert one_sentence(proc) == (f"error: cannot write {str(tmp_path / 'a-file' / 's.png')!r}: "
                                  f"{str(tmp_path / 'a-file')!r} is not a directory")
    proc = run_cli("--model", MODEL, "--prompt", "p", "--n", "1", "--out", str(tmp_path / "a-file" / "deeper" / "s.png"),
                   module="seiko_core.sample")
    assert proc.returncode == 1 and one_sentence(proc).startswith("error: cannot write "), proc.stderr
    (tmp_path / "empty-adapter").mkdir()
    proc = run_cli("--model", MODEL, "--prompt", "p", "--n", "1", "--adapter", str(tmp_path / "empty-adapter"),
                   "--out", str(tmp_path / "a.png"), module="seiko_core.sample")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert f"Adapter directory {str(tmp_path / 'empty-adapter')!r} has no pytorch_lora_weights.safetensors" in proc.stderr
    assert not (tmp_path / "a.png").exists()
    # --guidance 0 is the unconditional model: the image does not depend on the prompt, unlike the preset's guidance
    pixels = {}
    for guidance in ("0", None):
        for prompt in ("a red circle", "a blue square on a white background"):
            out = tmp_path / f"g{guidance}-{len(prompt)}.png"
            proc = run_cli("--model", MODEL, "--prompt", prompt, "--n", "1", "--steps", "3", "--out", str(out),
                           *(["--guidance", guidance] if guidance else []), module="seiko_core.sample")
            assert proc.returncode == 0, proc.stderr[-3000:]
            pixels[guidance, prompt] = np.asarray(Image.open(out))
    assert np.array_equal(pixels["0", "a red circle"], pixels["0", "a blue square on a white background"])
    assert not np.array_equal(pixels[None, "a red circle"], pixels[None, "a blue square on a white background"])


@pytest.mark.parametrize("name, ending", [("g.xyz", "the extension '.xyz'"), ("grid", "a name without an extension")])
def test_sample_refuses_an_out_file_pil_cannot_write_before_loading_the_model(tmp_path, name, ending):
    """`python -m seiko_core.sample --out g.xyz` sampled the whole grid and then printed PIL's ValueError ("unknown file
    extension") as a traceback (sixth review). The extension is checked against the formats PIL saves, before the model
    (here one that does not exist) is loaded."""
    from PIL import Image

    Image.init()
    assert ".xyz" not in Image.registered_extensions()  # the stock library does not know it
    out = tmp_path / name
    proc = run_cli("--model", str(tmp_path / "no-model"), "--prompt", "p", "--n", "1", "--out", str(out),
                   module="seiko_core.sample")
    assert proc.returncode == 1, proc.stderr
    assert one_sentence(proc) == f"error: cannot write {str(out)!r}: PIL writes no image format for {ending}; use .png"
    assert not out.exists()


@pytest.mark.parametrize("name", ["g.xbm", "g.msp", "g.h5"])
def test_sample_refuses_a_format_that_cannot_hold_an_rgb_grid_before_loading_the_model(tmp_path, name):
    """`python -m seiko_core.sample --out g.xbm` passed the extension check (PIL registers a writer for it) and failed
    only when the grid was saved, after the model was loaded and every image sampled (seventh review): XBM's and MSP's
    writers take only black-and-white images, HDF5's is a stub. Each is refused before the model (one that does not
    exist) is loaded, with the stock library's own refusal of an RGB image in that format."""
    import io

    from PIL import Image

    Image.init()
    image_format = Image.registered_extensions()[Path(name).suffix]
    with pytest.raises((OSError, ValueError)) as refused:  # the stock library refuses an RGB image in this format
        Image.new("RGB", (1, 1)).save(io.BytesIO(), format=image_format)
    out = tmp_path / name
    proc = run_cli("--model", str(tmp_path / "no-model"), "--prompt", "p", "--n", "1", "--out", str(out),
                   module="seiko_core.sample")
    assert proc.returncode == 1, proc.stderr
    assert one_sentence(proc) == (f"error: cannot write {str(out)!r}: PIL cannot write an RGB image as {image_format} "
                                  f"({refused.value}); use .png")
    assert list(tmp_path.iterdir()) == []


def test_sample_refuses_a_folder_that_takes_no_new_file_before_loading_the_model(tmp_path):
    """A folder that refuses new files (/sys refuses even root) was found only when the grid was saved, after all the
    sampling (seventh review). A new file is tried there before the model (one that does not exist) is loaded."""
    import errno
    import os

    with pytest.raises(OSError) as refused:  # the operating system's own answer to a new file there
        os.close(os.open("/sys/seiko-probe.png", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    proc = run_cli("--model", str(tmp_path / "no-model"), "--prompt", "p", "--n", "1", "--out", "/sys/g.png",
                   module="seiko_core.sample")
    assert refused.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT)
    assert proc.returncode == 1, proc.stderr
    assert one_sentence(proc) == f"error: cannot write '/sys/g.png': {refused.value.strerror}"


def test_sample_leaves_no_half_grid_and_keeps_the_old_one_when_the_write_fails(tmp_path):
    """The grid was saved straight into --out: a write that failed half-way (a full disk; here the process's file-size
    limit, 4 KiB, below the grid's PNG) left a truncated PNG in place of the earlier grid (seventh review). It is
    written to a temporary name and renamed: the earlier file is untouched and nothing else is left in the folder."""
    import resource

    folder = tmp_path / "out"
    folder.mkdir()
    out = folder / "g.png"
    out.write_bytes(b"the earlier grid")
    # -B and HOME: the limit holds for every file the process writes, and CPython writes a cached .pyc with one
    # unchecked write (a truncated one, here, would break the next import of that module)
    argv = [sys.executable, "-B", "-m", "seiko_core.sample", "--model", MODEL, "--prompt", "a red circle", "--n", "4",
            "--steps", "1", "--scale", "8", "--out", str(out)]
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path / "home")}
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {str(out)!r}: File too large"), proc.stderr[-3000:]
    assert out.read_bytes() == b"the earlier grid"
    assert sorted(p.name for p in folder.iterdir()) == ["g.png"]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)  # no limit
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(p.name for p in folder.iterdir()) == ["g.png"]


@pytest.mark.parametrize("key, value, must_be", [
    ("threads", "x", "a whole number"), ("threads", [2], "a whole number"), ("threads", 2.5, "a whole number"),
    ("clip_lr", "fast", "a finite number"), ("unet_text_pool", 1, "true or false"),
    ("unet_channels", [32, 64, 128], "a list of 2 whole numbers"), ("seed", True, "a whole number")])
def test_the_toy_commands_refuse_a_build_config_value_of_the_wrong_type_naming_the_key(tmp_path, key, value, must_be):
    """A QUALITY.json whose build_config held "threads": "x" (or a list, or a number where a whole number belongs) ended
    in a TypeError traceback deep in `quality` / `refine-encoder` / `refine-unet` (sixth review). Each value is checked
    against BuildConfig's field types when the file is read: one sentence naming the key, nothing changed or copied."""
    import shutil

    model = tmp_path / "m"
    model.mkdir()
    shutil.copy(Path(MODEL) / "model_index.json", model)
    quality = json.loads((Path(MODEL) / "QUALITY.json").read_text())
    quality["build_config"][key] = value
    text = json.dumps(quality)
    (model / "QUALITY.json").write_text(text)
    for command in ("quality", "refine-encoder", "refine-unet"):
        proc = run_cli(command, "--model", str(model), module="seiko_core.toy")
        assert proc.returncode == 1, (command, proc.stderr[-3000:])
        assert one_sentence(proc) == (
            f"error: {str(model / 'QUALITY.json')!r} is not a QUALITY.json written by `build` (its build_config "
            f"{key!r} must be {must_be}, got {json.dumps(value)})"), (command, proc.stderr[-3000:])
        assert (model / "QUALITY.json").read_text() == text
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no copy left beside it
