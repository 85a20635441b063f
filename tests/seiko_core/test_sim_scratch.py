"""The simulators' generated images beyond ``--pixels-in-memory-max-mib`` live in a scratch file, not in memory (sixth
review): ``simulate``, ``pairwise_sim`` and ``bench``'s round kept every round's and every eval set's images as
float32 in the process (48 GiB at sd15's scale). The app's worker already kept its uint8 candidates in a scratch
file past ``pixels_in_memory_max_bytes``; the simulators now reuse that code (``seiko_core.scratch``), with float32.

The figures must not move: the oracles rate the same float values from the file as from memory, so a run forced
into the file (a limit of 0 MiB) gives results.json figures and grids identical, bit for bit, to a run in memory."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from seiko_core import pairwise_sim, scratch, simulate
from tests.app.test_candidate_scratch import _mapped_scratch_files
from tests.seiko_core.test_simulate import TINY


def _own_folders(out: Path) -> list[Path]:
    """The run's own folders in OUT (``scratch.own_scratch_folder``), whose ``scratch`` folder holds its scratch files:
    simulate's or pairwise_sim's."""
    return sorted([*out.glob(".tmp-simulate-*"), *out.glob(".tmp-pairwise_sim-*")])


def _mapped_scratch_bytes(out: Path) -> list[tuple[str, int]]:
    """This process's memory maps of files under the run's own scratch folders in ``out``
    (OUT/.tmp-simulate-*/scratch): (path as the kernel shows it, bytes mapped)."""
    # the worker's test reads a folder's scratch folder the same way (storage.SCRATCH is scratch.SCRATCH)
    return [m for own in _own_folders(out) for m in _mapped_scratch_files(own)]


def _figures(results: dict) -> str:
    """results.json's figures without its times (keys ending in _s) and invocation records, as canonical JSON
    (NaN compares equal as text)."""
    def strip(d: dict) -> dict:
        return {k: v for k, v in d.items() if not k.endswith("_s")}

    runs = {m: {s: {**{k: v for k, v in run.items() if k not in ("rounds", "wall_s")},
                    "rounds": [strip(r) for r in run["rounds"]]} for s, run in seeds.items()}
            for m, seeds in results["runs"].items()}
    return json.dumps({"pretrained": strip(results["pretrained"]), "runs": runs, "settings": results["settings"]},
                      sort_keys=True)


def _spied_run(module, argv, out: Path, monkeypatch) -> tuple[list[dict], list[dict]]:
    """``module.main(argv)`` with its oracle scoring watched: for every batch the oracle rates, how its images are
    held (the process's maps of the run's own scratch files at that moment, the images' bytes); and every scratch array made."""
    scored, made = [], []
    real_score, real_array = simulate._score, scratch.scratch_array

    def score(oracle, images, prompts, *args, **kwargs):
        scored.append({"n": len(images), "nbytes": images.numel() * images.element_size(), "dtype": images.dtype,
                       "maps": _mapped_scratch_bytes(out)})
        return real_score(oracle, images, prompts, *args, **kwargs)

    def array(data_dir, label, shape, *, what, dtype=np.uint8):
        a = real_array(data_dir, label, shape, what=what, dtype=dtype)
        made.append({"label": label, "shape": shape, "dtype": np.dtype(dtype), "what": what, "memmap": isinstance(a, np.memmap)})
        return a

    monkeypatch.setattr(simulate, "_score", score)
    monkeypatch.setattr(scratch, "scratch_array", array)
    threads = torch.get_num_threads()
    try:
        assert module.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
        monkeypatch.undo()
    return scored, made


@pytest.mark.parametrize("module", [simulate, pairwise_sim], ids=["simulate", "pairwise_sim"])
def test_a_run_in_the_scratch_file_gives_the_figures_of_a_run_in_memory(module, random_model_dir, tmp_path,
                                                                         monkeypatch):
    """Bootstrap, 2 rounds of 4 labels (8 images a round for pairs), 2 eval images: once with the default limit
    (512 MiB: all in memory), once with 0 MiB (every batch in a scratch file). Every figure of results.json and
    both grids' PNG bytes are identical; in the second run every batch the oracle rated was, at that moment, a
    memory map of a removed file of the run's own scratch folder (OUT/.tmp-simulate-*/scratch) as large as its
    float32 images, and that folder is gone after; OUT/scratch was never made."""
    base = ["--model", str(random_model_dir), "--method", "bootstrap", "--oracle", "purple", *TINY]
    mem, disk = tmp_path / "memory", tmp_path / "scratch"
    scored_mem, made_mem = _spied_run(module, [*base, "--out", str(mem)], mem, monkeypatch)
    scored_disk, made_disk = _spied_run(module, [*base, "--out", str(disk), "--pixels-in-memory-max-mib", "0"], disk,
                                        monkeypatch)

    a, b = (json.loads((d / "results.json").read_text()) for d in (mem, disk))
    assert _figures(a) == _figures(b)
    assert b["runs"]["bootstrap"]["0"]["rounds"][-1]["true_reward_mean"] == a["runs"]["bootstrap"]["0"]["rounds"][-1]["true_reward_mean"]
    for grid in ("pretrained.png", "bootstrap_seed0.png"):
        assert (mem / "grids" / grid).read_bytes() == (disk / "grids" / grid).read_bytes(), grid

    per_round = 8 if module is pairwise_sim else 4
    # pretrained eval, then per round: the round's images, its eval images
    assert [s["n"] for s in scored_mem] == [s["n"] for s in scored_disk] == [2, per_round, 2, per_round, 2]
    assert made_mem == [] and all(s["maps"] == [] for s in scored_mem)  # 512 MiB: in memory, as before
    assert [(m["label"], m["shape"][0], m["dtype"], m["memmap"]) for m in made_disk] == [
        ("eval-images", 2, np.float32, True), ("bootstrap-seed0-round1", per_round, np.float32, True),
        ("eval-images", 2, np.float32, True), ("bootstrap-seed0-round2", per_round, np.float32, True),
        ("eval-images", 2, np.float32, True)]
    for s in scored_disk:
        assert s["dtype"] == torch.float32
        # the batch being rated is one removed file's map (the previous eval set's may be mapped beside it)
        assert any(path.endswith(" (deleted)") and s["nbytes"] <= size < s["nbytes"] + 4 * 4096
                   for path, size in s["maps"]), s
        # in a folder named for the command that made it (pairwise_sim's were simulate's until the tenth review)
        assert all(f"/.tmp-{module.SCRATCH_COMMAND}-" in path for path, _ in s["maps"]), s
    assert not (disk / scratch.SCRATCH).exists() and _own_folders(disk) == []  # it goes with the command


@pytest.mark.parametrize("ending", ["error", "ctrl-c"])
def test_the_scratch_folder_goes_when_a_run_ends_by_an_error_or_ctrl_c(ending, random_model_dir, tmp_path, monkeypatch):
    """The simulators left their scratch folder behind (seventh review). A run whose oracle fails (or is interrupted by
    Ctrl-C) while rating round 1's images, held in a scratch file at that moment: the failure reaches the caller as it
    was, and the run's own folder (OUT/.tmp-simulate-*) is gone. A ``.tmp-`` name in OUT/scratch is not the run's (an
    OUT that is a live data dir: a worker's scratch file between its making and its mapping) and stays (ninth review:
    it was removed when the run started). (A normal end: the test above.)"""
    out = tmp_path / "out"
    workers = out / scratch.SCRATCH / ".tmp-eval-images-0badf00d"
    workers.parent.mkdir(parents=True)
    workers.write_bytes(bytes(4096))
    raised = {"error": RuntimeError("the oracle failed"), "ctrl-c": KeyboardInterrupt()}[ending]
    seen = []
    real_score = simulate._score

    def score(oracle, images, prompts, *args, **kwargs):
        seen.append(sorted(p.name for own in _own_folders(out) for p in (own / scratch.SCRATCH).iterdir()))
        if len(seen) == 2:  # round 1's images (the first call rates the pretrained eval images)
            seen.append(_mapped_scratch_bytes(out))
            raise raised
        return real_score(oracle, images, prompts, *args, **kwargs)

    monkeypatch.setattr(simulate, "_score", score)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(type(raised)) as caught:
            simulate.main(["--model", str(random_model_dir), "--method", "bootstrap", "--oracle", "purple", *TINY,
                           "--out", str(out), "--pixels-in-memory-max-mib", "0"])
    finally:
        torch.set_num_threads(threads)
    assert caught.value is raised
    assert seen[0] == seen[1] == []  # the run's own files have no name once mapped
    assert any(path.endswith(" (deleted)") for path, _ in seen[2])  # round 1's images were in a scratch file
    assert _own_folders(out) == []
    assert workers.read_bytes() == bytes(4096)
    assert sorted(p.name for p in workers.parent.iterdir()) == [workers.name]
    assert (out / "results.json").is_file()  # the pretrained row, written before: kept


def test_a_user_oracle_that_fails_in_a_run_is_one_sentence_and_the_pretrained_row_is_kept(random_model_dir, tmp_path,
                                                                                          capsys):
    """Found by the nineteenth review: an oracle that raised (or answered wrongly: OracleError) once a campaign had
    started ended `python -m seiko_core.simulate` in a traceback; it is its sentence now, status 2, and what was
    written before it (the pretrained row) is kept."""
    oracle = tmp_path / "tired.py"
    oracle.write_text("CALLS = [0]\n\n\ndef rate(images, prompts):\n    CALLS[0] += 1\n    if CALLS[0] == 2:\n"
                      "        raise ValueError('tired of rating')\n    return images.mean((1, 2, 3))\n")
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:  # the first call rates the pretrained eval images, the second round 0 of the run
        code = simulate.main(["--model", str(random_model_dir), "--method", "greedy", "--oracle", f"{oracle}:rate",
                              *TINY, "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("error", "Traceback"))]
    assert errors == [f"error: oracle '{oracle}:rate' raised ValueError: tired of rating (at tired.py:7)."]
    results = json.loads((out / "results.json").read_text())
    assert results["pretrained"]["true_reward_mean"] is not None and results["runs"] == {}
    assert _own_folders(out) == []


@pytest.mark.parametrize("module", [simulate, pairwise_sim], ids=["simulate", "pairwise_sim"])
def test_a_workers_scratch_file_in_out_scratch_survives_a_run(module, random_model_dir, tmp_path):
    """The simulators emptied and removed OUT/scratch when a campaign started and ended: an --out that is a live data
    dir, whose worker makes its scratch files in DATA_DIR/scratch (a ``.tmp-`` name until mapped), lost the worker's
    file (its job failed) and the folder it had just made. A file placed in OUT/scratch before a whole run past the
    limit (0 MiB: every batch in a scratch file) is there after it, whole, and so is the folder; the run's own
    scratch folder is gone (ninth review)."""
    out = tmp_path / "out"
    workers = out / scratch.SCRATCH / ".tmp-round1-candidates-0badf00d"
    workers.parent.mkdir(parents=True)
    workers.write_bytes(b"a worker's pixels")
    threads = torch.get_num_threads()
    try:
        assert module.main(["--model", str(random_model_dir), "--method", "bootstrap", "--oracle", "purple", *TINY,
                            "--out", str(out), "--pixels-in-memory-max-mib", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert workers.read_bytes() == b"a worker's pixels"
    assert sorted(p.name for p in workers.parent.iterdir()) == [workers.name]
    assert _own_folders(out) == []


def test_bench_round_in_the_scratch_file_gives_the_same_round(random_model_dir, tmp_path, monkeypatch):
    """bench's round (c): the same fine-tuning rewards (they come from the ratings of round 0's images) and the next
    batch of the same shape, with both batches in scratch files of the work dir past a limit of 0 bytes."""
    from seiko_core import bench
    from seiko_core.models import load_model
    from seiko_core.presets import shapes

    def cfg():
        c = shapes()
        c.budgets = (4,)
        c.sampling.steps = 2
        c.finetune.epochs = 1
        c.finetune.trajectories_per_epoch = 2
        c.finetune.batch_size = 2
        c.finetune.max_seconds = None
        c.reward.max_epochs = 3
        return c

    made = []
    real = scratch.scratch_array
    monkeypatch.setattr(scratch, "scratch_array",
                        lambda *a, **k: made.append((a[1], a[2], np.dtype(k["dtype"]))) or real(*a, **k))
    recs = []
    for spill in (None, scratch.PixelSpill(tmp_path, 0)):
        torch.manual_seed(0)
        recs.append(bench.bench_round(load_model(str(random_model_dir), device="cpu"), cfg=cfg(), spill=spill,
                                      log=lambda m: None))
    keys = ("reward_first", "reward_last", "images", "labels", "finetune_trajectories")
    assert [recs[0][k] for k in keys] == [recs[1][k] for k in keys]
    assert [(label, shape[0], dtype) for label, shape, dtype in made] == [("round0-images", 4, np.float32),
                                                                           ("round1-images", 4, np.float32)]


def test_a_killed_runs_own_folder_is_named_in_a_warning_and_kept(tmp_path, caplog):
    """A run stopped by SIGKILL leaves its own folder (nothing of it runs to remove it); the next run of the command
    names it in a warning and leaves it (it may be another run's going on now), and another command's is not named."""
    left = tmp_path / ".tmp-simulate-abc123"
    (left / "scratch").mkdir(parents=True)
    (tmp_path / ".tmp-klmatch-zzz").mkdir()
    (tmp_path / ".tmp-simulate-file").write_bytes(b"")  # a file, not a run's folder
    with caplog.at_level(logging.WARNING, logger="seiko.scratch"):
        with scratch.own_scratch_folder(tmp_path, "simulate") as own:
            assert own.parent == tmp_path and own != left
    said = [r.getMessage() for r in caplog.records if r.name == "seiko.scratch"]
    assert len(said) == 1 and ".tmp-simulate-abc123" in said[0] and "1 folder" in said[0], said
    assert ".tmp-klmatch-zzz" not in said[0] and ".tmp-simulate-file" not in said[0]
    assert left.is_dir() and (left / "scratch").is_dir()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="seiko.scratch"):
        with scratch.own_scratch_folder(tmp_path, "bench"):
            pass
    assert not [r for r in caplog.records if r.name == "seiko.scratch"]


def test_a_scratch_folder_that_cannot_be_removed_is_said_and_the_run_ends_as_it_did(tmp_path, monkeypatch, caplog):
    """A name in the run's own folder that cannot be removed (a file a stopped process holds open on NFS) raised
    from the clean-up and took the place of how the run ended (its error, Ctrl-C, SIGTERM's exit 143); now it is a
    warning naming the folder, and the run's own ending stands."""
    import errno
    import os

    real_rmdir = os.rmdir

    def busy_rmdir(path, *args, **kwargs):
        if str(path).endswith(scratch.SCRATCH):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", busy_rmdir)
    with caplog.at_level(logging.WARNING, logger="seiko.scratch"):
        with pytest.raises(RuntimeError, match="the run's own error"):
            with scratch.own_scratch_folder(tmp_path, "simulate") as own:
                (own / scratch.SCRATCH).mkdir()
                raise RuntimeError("the run's own error")
    said = [r.getMessage() for r in caplog.records if r.name == "seiko.scratch"]
    assert any(str(own) in m and "Device or resource busy" in m for m in said), said
    assert (own / scratch.SCRATCH).is_dir()


def test_stopping_a_campaigns_workers_removes_its_own_partial_files_only(tmp_path):
    """The partial grids and adapters of the runs a stopped campaign had not finished go; another campaign's into
    the same OUT (a run of theirs, or a seed this one was not running) and the finished files stay."""
    import types

    out = tmp_path
    grids, adapters = out / "grids", out / simulate.ADAPTERS
    grids.mkdir()
    adapters.mkdir()
    ours = [grids / ".tmp-greedy_seed0.png-1a2b3c4d", adapters / ".tmp-greedy_seed0-5e6f7a8b"]
    theirs = [grids / ".tmp-greedy_seed1.png-11111111", grids / ".tmp-ucb_seed0.png-22222222",
              adapters / ".tmp-ucb_seed0-33333333", grids / "greedy_seed0.png"]
    for path in ours[:1] + theirs[:2] + theirs[3:]:
        path.write_bytes(b"x")
    for path in (ours[1], theirs[2]):
        (path / "weights").mkdir(parents=True)
    simulate.stop_workers(types.SimpleNamespace(_processes={}), out, [("greedy", 0), ("bootstrap", 0)])
    assert [p.exists() for p in ours] == [False, False]
    assert [p.exists() for p in theirs] == [True] * 4


def test_stop_workers_says_so_when_it_cannot_see_the_workers(tmp_path, capsys):
    """A pool without CPython's private table of its workers: one warning that the runs in flight go on (they were
    passed over as if the pool had none, tenth review); the partial files are still removed."""
    import types

    (tmp_path / "grids").mkdir()
    partial = tmp_path / "grids" / ".tmp-greedy_seed0.png-1a2b3c4d"
    partial.write_bytes(b"x")
    simulate.stop_workers(types.SimpleNamespace(), tmp_path, [("greedy", 0)])
    err = capsys.readouterr().err
    assert "does not show its worker processes; the runs in flight are not stopped" in err, err
    assert not partial.exists()


def test_pixel_spill_keeps_what_fits_in_memory():
    """The limit counts bytes of the dtype: 2 float32 images of 3x4x4 are 384 bytes."""
    spill = scratch.PixelSpill(Path("/nonexistent-never-used"), 384)
    assert spill.pixels_out("x", "y", np.float32)((2, 3, 4, 4)) is None
    assert spill.pixels_out("x", "y", np.uint8)((8, 3, 4, 4)) is None
    for bad in (-1, 1.5, True, "512"):
        with pytest.raises(ValueError, match="pixels_in_memory_max_bytes must be a whole number of bytes from 0"):
            scratch.PixelSpill(Path("."), bad)


# ------------------------------------------------------------------------------------------ the command-line flag
@pytest.mark.parametrize("value", ["-1", "abc", "nan", "inf", ""])
@pytest.mark.parametrize("command", ["simulate", "pairwise_sim", "bench", "worker"])
def test_a_bad_limit_is_one_sentence(command, value, tmp_path, capsys):
    """A negative or non-number --pixels-in-memory-max-mib is refused by the argument parser in one sentence, before
    anything is loaded (an unknown flag before this change)."""
    argv = ["--pixels-in-memory-max-mib", value]
    with pytest.raises(SystemExit) as exit_:
        if command == "worker":
            from app.__main__ import main

            main(["worker", *argv])
        elif command == "bench":
            from seiko_core import bench

            bench.main(argv)
        else:
            {"simulate": simulate, "pairwise_sim": pairwise_sim}[command].main(
                ["--model", "unused", "--oracle", "purple", "--out", str(tmp_path), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"error: argument --pixels-in-memory-max-mib: expected a number of MiB from 0 (the generated "
                        f"pixels held in memory before the rest go to a scratch file), got {value!r}"), err


@pytest.mark.parametrize("value, expected", [("0", 0), ("512", 512 << 20), ("0.5", 1 << 19), ("1e3", 1000 << 20)])
def test_the_limit_in_mib_is_bytes(value, expected):
    args = simulate.build_parser().parse_args(["--oracle", "purple", "--out", "x", "--pixels-in-memory-max-mib", value])
    assert args.pixels_in_memory_max_bytes == expected
    assert simulate.build_parser().parse_args(["--oracle", "purple", "--out", "x"]).pixels_in_memory_max_bytes == 512 << 20


def test_the_flag_is_in_every_help_and_reaches_the_worker(monkeypatch):
    """--help of each command names the flag; the worker's value reaches Worker(pixels_in_memory_max_bytes=) and a
    --processes group's ranks' command line."""
    import argparse

    from app import cli_worker, train_dist
    from seiko_core import bench

    parsers = [simulate.build_parser(), pairwise_sim.build_parser(), bench.build_parser()]
    worker_parser = argparse.ArgumentParser()
    cli_worker.add_arguments(worker_parser)
    for p in [*parsers, worker_parser]:
        text = " ".join(p.format_help().split())
        assert "--pixels-in-memory-max-mib MIB" in text and "scratch file" in text and "(default 512;" in text, p.prog
    args = worker_parser.parse_args(["--pixels-in-memory-max-mib", "3.5"])
    assert args.pixels_in_memory_max_bytes == 3.5 * 2**20
    cmd = train_dist.rank_command(args, "w")
    assert cmd[cmd.index("--pixels-in-memory-max-mib") + 1] == "3.5"
    assert worker_parser.parse_args(cmd[4:]).pixels_in_memory_max_bytes == args.pixels_in_memory_max_bytes


# ------------------------------------------------------------------------------------------------------- tmpfs
def _mount_table(tmp_path: Path) -> Path:
    """A mount table as Linux writes it: the root on ext4, tmp_path/mem on a tmpfs, tmp_path/mem/disk on ext4
    again (a disk mounted inside it), and a tmpfs whose mount point holds a space (written \\040)."""
    table = tmp_path / "mounts"
    spaced = str(tmp_path / "my mem").replace(" ", "\\040")
    table.write_text(f"/dev/sda1 / ext4 rw,relatime 0 0\n"
                     f"tmpfs {tmp_path / 'mem'} tmpfs rw,nosuid 0 0\n"
                     f"/dev/sdb1 {tmp_path / 'mem' / 'disk'} ext4 rw 0 0\n"
                     f"tmpfs {spaced} tmpfs rw 0 0\n")
    return table


def test_the_mount_of_a_path_is_read_from_the_mount_table(tmp_path):
    table = _mount_table(tmp_path)
    assert scratch.mount_fstype(tmp_path / "mem", table) == "tmpfs"
    assert scratch.mount_fstype(tmp_path / "mem" / "out" / "scratch", table) == "tmpfs"  # not made yet: its mount
    assert scratch.mount_fstype(tmp_path / "mem" / "disk" / "out", table) == "ext4"
    assert scratch.mount_fstype(tmp_path / "memory", table) == "ext4"  # a name that starts alike is not inside
    assert scratch.mount_fstype(tmp_path / "my mem" / "x", table) == "tmpfs"
    assert scratch.mount_fstype(tmp_path / "x", tmp_path / "no-such-table") is None  # no /proc: nothing said


def test_a_scratch_folder_on_a_tmpfs_is_said_once_in_the_log(tmp_path, monkeypatch, caplog):
    """A data dir (or OUT) on a tmpfs: the scratch file is memory too, so it saves nothing. The first spill there says
    so in one warning naming the folder and suggesting a directory on disk; later spills say nothing more; a folder on
    disk, nothing at all. The arrays are made all the same (not an error)."""
    monkeypatch.setattr(scratch, "MOUNTS", str(_mount_table(tmp_path)))
    monkeypatch.setattr(scratch, "_noted", set())
    on_tmpfs, on_disk = tmp_path / "mem" / "out", tmp_path / "mem" / "disk" / "out"
    with caplog.at_level(logging.WARNING, logger="seiko.scratch"):
        for folder in (on_tmpfs, on_tmpfs, on_disk):
            a = scratch.PixelSpill(folder, 0).pixels_out("t", "the pixels", np.float32)((2, 3))
            assert isinstance(a, np.memmap) and a.dtype == np.float32 and a.shape == (2, 3)
            del a
    (record,) = caplog.records
    message = record.getMessage()
    assert record.levelno == logging.WARNING
    assert message == (f"The scratch folder {on_tmpfs / 'scratch'} is on a tmpfs, which is memory, so the pixels kept "
                       f"there beyond --pixels-in-memory-max-mib save no memory; give a data or output directory on disk.")
    assert message.count(". ") == 0


# ------------------------------------------------------------------------------------------------------- --out
@pytest.mark.parametrize("module", [simulate, pairwise_sim], ids=["simulate", "pairwise_sim"])
def test_an_out_that_cannot_be_written_is_refused_before_the_model_loads(module, tmp_path, capsys):
    """--out was made only after the model (an hour's load of a large one from a slow disk) and the oracle had loaded:
    one under a file, or in a folder that takes no new file (/sys refuses even root), was refused only then (seventh
    review). It is refused with the argument errors now: the model named here does not exist, and the sentence is
    about --out; nothing is made."""
    (tmp_path / "a-file").write_text("x")
    for out, reason in ((tmp_path / "a-file" / "o", f"{str(tmp_path / 'a-file')!r} is not a directory"),
                        (Path("/sys/seiko-sim"), None)):
        with pytest.raises(SystemExit) as exit_:
            module.main(["--model", str(tmp_path / "no-model"), "--oracle", "purple", "--out", str(out)])
        assert exit_.value.code == 2
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert f"error: the output directory {out} cannot be written ({reason or ''}" in line, line
        assert line.endswith("); give another --out"), line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and not Path("/sys/seiko-sim").exists()


def test_a_grid_whose_write_fails_half_way_leaves_the_earlier_grid(tmp_path, monkeypatch):
    """save_grid wrote the PNG straight into its place: a write that failed half-way (a full disk: here PIL's PNG
    writer writes part of the file, then the disk is full) left a truncated PNG instead of the earlier grid (seventh
    review). It is written under a temporary name and renamed: the earlier grid is whole, nothing else is left."""
    import errno

    from PIL import Image

    path = tmp_path / "grids" / "pretrained.png"
    simulate.save_grid(torch.rand(2, 3, 8, 8), path)
    earlier = path.read_bytes()
    assert earlier[:8] == b"\x89PNG\r\n\x1a\n"

    def full_disk(im, fp, filename):
        fp.write(b"\x89PNG\r\n\x1a\n half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setitem(Image.SAVE, "PNG", full_disk)
    with pytest.raises(OSError, match="No space left on device"):
        simulate.save_grid(torch.rand(2, 3, 8, 8), path)
    assert path.read_bytes() == earlier
    assert sorted(p.name for p in path.parent.iterdir()) == ["pretrained.png"]


BLOCKING_ORACLE = '''
import signal
from pathlib import Path


def blocking(images, prompts):
    Path({marker!r}).write_text("rating")
    signal.pause()  # until a signal comes: the test's SIGTERM
    raise AssertionError("signal.pause returned")
'''


@pytest.mark.parametrize("module", ["seiko_core.simulate", "seiko_core.pairwise_sim"])
def test_the_scratch_folder_goes_when_a_run_is_stopped_by_sigterm(module, random_model_dir, tmp_path):
    """SIGTERM (``timeout``, ``docker stop``, a batch system's limit) ended a simulator where it stood: its clean-up
    did not run and OUT/scratch stayed behind, with it any scratch file's name and the disk space it reserves (eighth
    review). The command line, stopped by SIGTERM while its oracle rates images held in a scratch file (a limit of
    0 MiB), now ends as on Ctrl-C: status 143 (128 + SIGTERM), no traceback, and its scratch folder is gone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, marker = tmp_path / "out", tmp_path / "rating"
    oracle = tmp_path / "blocking_oracle.py"
    oracle.write_text(BLOCKING_ORACLE.format(marker=str(marker)))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}, "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[2]
    with open(tmp_path / "stderr", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, "--model", str(random_model_dir), "--method", "greedy",
                                 "--oracle", f"{oracle}:blocking", *TINY, "--out", str(out),
                                 "--pixels-in-memory-max-mib", "0"],
                                cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300  # a bound on loading the model, not a timing
            while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), "the oracle was never called"
            assert len(_own_folders(out)) == 1  # the images it rates are in a scratch file of the run's own
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read()
    assert not (out / scratch.SCRATCH).exists() and _own_folders(out) == [], stderr
    assert rc == 128 + signal.SIGTERM, stderr
    assert "Traceback" not in stderr, stderr


def test_sigterm_while_a_users_oracle_file_is_imported_ends_the_run_as_asked(random_model_dir, tmp_path):
    """SIGTERM arriving while the simulator imports the user's oracle file (here the file sends it to its own process)
    was taken for the file's own sys.exit(): "failed to import: SystemExit: 143", status 2. It ends the run as any
    SIGTERM does now: status 143, no word about the file (eighth review)."""
    import os
    import signal
    import subprocess
    import sys

    oracle = tmp_path / "stopped_oracle.py"
    oracle.write_text("import os\nimport signal\n\nos.kill(os.getpid(), signal.SIGTERM)\nimport time\n\ntime.sleep(60)\n\n\n"
                      "def score(images, prompts):\n    return [0.0] * len(images)\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SEIKO_")}, "HF_HUB_OFFLINE": "1"}
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "seiko_core.simulate", "--model", str(random_model_dir), "--method",
                           "greedy", "--oracle", f"{oracle}:score", *TINY, "--out", str(tmp_path / "out")],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "failed to import" not in done.stderr and "Traceback" not in done.stderr, done.stderr
