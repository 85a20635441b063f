"""SIGTERM (``timeout``, ``docker stop``, a batch system's limit) ends ``seiko_core.klmatch`` and ``seiko_core.bench`` as
Ctrl-C does (``scratch.exit_on_sigterm`` in their ``__main__``, eighth review; tested here, ninth review), and a
campaign of ``--jobs`` worker processes ends its workers' runs in flight instead of waiting for them (ninth review).

Each command runs as a real process, is sent SIGTERM while its images are held in a scratch file (a limit of
0 MiB), and must end with status 143 (128 + SIGTERM, as a shell reports it), no traceback, and nothing of its scratch
or partial outputs left. The waits for a process to reach that point bound the loading of a model; they are not
timings."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from seiko_core import scratch
from tests.seiko_core.test_simulate import TINY, run_simulate

REPO = Path(__file__).resolve().parents[2]
LOAD_BOUND_S = 300  # loading torch and a model in a fresh process on a loaded machine; a bound, not a timing
STOP_BOUND_S = 120  # the clean-up after SIGTERM on a loaded machine; a run waited on instead never ends here

ORACLE = '''
import multiprocessing
import os
import signal
from pathlib import Path

HERE = Path(__file__).parent


def _wait_for_sigterm(marker):
    marker.write_text("rating")
    signal.pause()  # until a signal comes: the test's SIGTERM
    raise AssertionError("signal.pause returned")


def brightness(images, prompts):
    """The fixtures' brightness oracle; it waits for a signal once the file HERE/block exists."""
    if (HERE / "block").exists():
        _wait_for_sigterm(HERE / "rating")
    return 10.0 * images.mean(dim=(1, 2, 3))


def in_workers_waits(images, prompts):
    """Brightness in the campaign's own process; in a --jobs worker process it waits for a signal."""
    if multiprocessing.parent_process() is not None:
        _wait_for_sigterm(HERE / f"rating-{os.getpid()}")
    return 10.0 * images.mean(dim=(1, 2, 3))


brightness.spread = in_workers_waits.spread = 0.5
'''

BENCH = '''
import os
import runpy
import signal
from pathlib import Path

import seiko_core.oracles
import seiko_core.presets

real_shapes = seiko_core.presets.shapes


def shapes():  # a round of 4 labels at 2 sampling steps
    cfg = real_shapes()
    cfg.budgets = (4,)
    cfg.sampling.steps = 2
    return cfg


def feedback(*args, **kwargs):  # round 0's images, in a scratch file, are rated: wait for the test's SIGTERM
    Path(os.environ["SEIKO_BENCH_TEST_MARKER"]).write_text("rating")
    signal.pause()
    raise AssertionError("signal.pause returned")


seiko_core.presets.shapes = shapes
seiko_core.oracles.feedback = feedback
runpy.run_module("seiko_core.bench", run_name="__main__", alter_sys=True)  # the command line, its __main__ block too
'''


def _env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}, "HF_HUB_OFFLINE": "1", **extra}


def _wait_until(what: str, ready, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + LOAD_BOUND_S
    while not ready():
        assert proc.poll() is None, f"the command ended (status {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {LOAD_BOUND_S} s"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen, err) -> tuple[int, str]:
    """SIGTERM to ``proc``; its status (within a bound: a run that waits for work in flight never ends) and stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        rc = proc.wait(timeout=STOP_BOUND_S)
    except subprocess.TimeoutExpired:
        rc = None
    err.seek(0)
    return rc, err.read()


def _terminated_once_ready(proc: subprocess.Popen, err, ready, scratch_folders) -> str:
    """Once ``ready()`` (its oracle is rating), ``proc`` has one scratch folder (``scratch_folders()``) and is sent
    SIGTERM: it ends with status 143 and no traceback (killed if it has not ended). Its stderr."""
    try:
        _wait_until("rating", ready, proc)
        assert len(list(scratch_folders())) == 1
        rc, stderr = _stop(proc, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an ended process whose status nobody has collected)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children, theirs, ...), from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        children = [p for p, parent in parents.items() if parent == pid]
        found += children
        todo += children
    return found


def test_bench_stopped_by_sigterm_ends_143_and_leaves_no_scratch_or_work_dir(random_model_dir, tmp_path):
    """bench's round (4 labels) is stopped while its oracle rates round 0's images, held in a scratch file of the run's
    folder in its temporary work dir (no --workdir): status 143, no traceback, and the work dir is gone with its
    scratch folder. Without ``exit_on_sigterm`` SIGTERM killed it where it stood: both stayed in TMPDIR."""
    tmp, marker = tmp_path / "tmp", tmp_path / "rating"
    tmp.mkdir()
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", BENCH, "--model", str(random_model_dir), "--device", "cpu",
                                 "--parts", "round", "--threads", "1", "--pixels-in-memory-max-mib", "0"],
                                cwd=REPO, env=_env(TMPDIR=str(tmp), SEIKO_BENCH_TEST_MARKER=str(marker)),
                                stdout=subprocess.DEVNULL, stderr=err)
        stderr = _terminated_once_ready(proc, err, marker.exists,  # the images' folder:
                                        lambda: tmp.glob(f"seiko-bench-*/.tmp-bench-*/{scratch.SCRATCH}"))
    assert list(tmp.glob("seiko-bench-*")) == [], stderr


def test_klmatch_stopped_by_sigterm_ends_143_and_leaves_no_scratch(random_model_dir, tmp_path):
    """klmatch stopped while the source's oracle rates a scaled model's eval images, held in a scratch file of the run's own folder: status 143,
    no traceback, and OUT holds nothing (no scratch folder; no results.json, since no seed was finished). Without
    ``exit_on_sigterm`` the scratch folder stayed."""
    (tmp_path / "oracle.py").write_text(ORACLE)
    src, out = tmp_path / "src", tmp_path / "out"
    run_simulate(["--model", str(random_model_dir), "--method", "greedy,bootstrap", "--oracle",
                  f"{tmp_path / 'oracle.py'}:brightness", "--out", str(src), "--keep-adapters", *TINY])
    (tmp_path / "block").touch()  # the oracle waits from now on
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "seiko_core.klmatch", str(src), "--scale", "greedy", "--to",
                                 "bootstrap", "--out", str(out), "--threads", "1", "--max-evals", "1",
                                 "--pixels-in-memory-max-mib", "0"],
                                cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        # the eval images' folder, the run's own:
        stderr = _terminated_once_ready(proc, err, (tmp_path / "rating").exists,
                                        lambda: out.glob(f".tmp-klmatch-*/{scratch.SCRATCH}"))
    assert list(out.iterdir()) == [], stderr


def test_sigterm_to_a_campaign_of_jobs_stops_its_workers_runs_in_flight(random_model_dir, tmp_path):
    """``--jobs 2``, two runs, each worker process rating its first images (held in a scratch file) with an oracle
    that waits for a signal. SIGTERM to the campaign: it waited for the runs in flight before cleaning up, here for
    ever (the pool's exit joins its workers). It stops its workers now: status 143 within the bound, no traceback,
    no process of it left (the workers, multiprocessing's helpers), and OUT has no scratch folder and no ``.tmp-``
    file (a worker stopped while writing a grid or an adapter); results.json keeps the pretrained row. (pairwise_sim
    runs the same ``run_campaign``.)"""
    (tmp_path / "oracle.py").write_text(ORACLE)
    out = tmp_path / "out"
    below: list[int] = []
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "seiko_core.simulate", "--model", str(random_model_dir), "--method",
                                 "greedy,bootstrap", "--oracle", f"{tmp_path / 'oracle.py'}:in_workers_waits", *TINY,
                                 "--jobs", "2", "--out", str(out), "--pixels-in-memory-max-mib", "0"],
                                cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=err)
        try:
            _wait_until("two workers rating", lambda: len(list(tmp_path.glob("rating-*"))) == 2, proc)
            workers = sorted(int(p.name.split("-")[1]) for p in tmp_path.glob("rating-*"))
            below = _descendants(proc.pid)
            assert set(workers) <= set(below), (workers, below)
            assert len(list(out.glob(f".tmp-simulate-*/{scratch.SCRATCH}"))) == 1
            rc, stderr = _stop(proc, err)
        finally:
            if proc.poll() is None:
                stray = _descendants(proc.pid)  # a killed campaign's workers outlive it: end them too
                proc.kill()
                proc.wait()
                for pid in stray:
                    if _alive(pid):
                        os.kill(pid, signal.SIGKILL)
    assert rc == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr
    deadline = time.monotonic() + 30  # multiprocessing's resource tracker ends once the campaign's end closes its pipe
    while any(_alive(pid) for pid in below) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in below if _alive(pid)] == [], stderr
    assert sorted(p.name for p in out.iterdir()) == ["grids", "results.json"], stderr
    assert json.loads((out / "results.json").read_text())["pretrained"]["true_reward_mean"] is not None
    assert [p.name for p in out.rglob(".tmp-*")] == [], stderr
