"""seiko_core.atomic: a file is replaced whole or not at all, and every writer of the project goes through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from seiko_core import atomic, checkpoint

OLD = b"old content, complete\n"


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_write_creates_the_parent_and_leaves_nothing_else(tmp_path):
    final = tmp_path / "a" / "b" / "results.json"
    atomic.write_text(final, '{"x": 1}')
    assert final.read_text() == '{"x": 1}'
    assert _entries(final.parent) == ["results.json"]
    atomic.write_bytes(final, b"\x00\x01")
    assert final.read_bytes() == b"\x00\x01"
    assert _entries(final.parent) == ["results.json"]


def test_a_writer_that_raises_half_way_leaves_the_old_file_whole(tmp_path):
    final = tmp_path / "model.safetensors"
    final.write_bytes(OLD)

    def half_then_crash(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(b"new but only ha")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic.atomic_write(final, half_then_crash)
    assert final.read_bytes() == OLD
    assert _entries(tmp_path) == ["model.safetensors"]  # the temporary file is gone too


def test_a_failed_rename_removes_the_temporary_file(tmp_path):
    final = tmp_path / "taken"
    final.mkdir()
    (final / "inside").write_bytes(OLD)  # os.replace cannot put a file over a non-empty directory
    with pytest.raises(OSError):
        atomic.write_bytes(final, b"new")
    assert (final / "inside").read_bytes() == OLD
    assert _entries(tmp_path) == ["taken"]


def test_a_writer_killed_mid_write_leaves_the_old_file_and_a_leftover_that_clean_up_removes(tmp_path):
    final = tmp_path / "results.json"
    final.write_bytes(OLD)
    script = textwrap.dedent(f"""
        import sys, time
        from seiko_core import atomic

        def slow(tmp):
            with open(tmp, "wb") as f:
                f.write(b"new but only ha")
                f.flush()
                print("written", flush=True)
                time.sleep(120)
                f.write(b"lf of it")

        atomic.atomic_write({str(final)!r}, slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert final.read_bytes() == OLD
    leftovers = [p for p in tmp_path.iterdir() if p != final]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(atomic.TMP_PREFIX)
    assert leftovers[0].read_bytes() == b"new but only ha"
    assert checkpoint.clean_partials(tmp_path) == leftovers
    assert _entries(tmp_path) == ["results.json"]


def _reward_artifact(directory: Path) -> Path:
    from seiko_core.reward import write_artifact

    write_artifact(directory, "w.safetensors", "m.json", {"t": torch.arange(3.0)}, {"new": True})
    return directory / "m.json"


def _storage_image(directory: Path) -> Path:
    from app import storage  # the image store (app depends on seiko_core, never the reverse)

    png = b"\x89PNG\r\n\x1a\n" + b"fake"
    stored = storage.write_image(directory, png)
    return directory / stored.path


def _simulate_results(directory: Path) -> Path:
    from seiko_core.simulate import write_json_atomic

    write_json_atomic(directory / "results.json", {"new": True})
    return directory / "results.json"


def _export_kohya(directory: Path) -> Path:
    from seiko_core.export import atomic_write as used  # the name the kohya and zip writers call

    assert used is atomic.atomic_write
    used(directory / "x.zip", lambda tmp: tmp.write_bytes(b"new"))
    return directory / "x.zip"


@pytest.mark.parametrize("writer", [_reward_artifact, _storage_image, _simulate_results, _export_kohya])
def test_the_projects_writers_keep_the_old_file_when_the_rename_fails(tmp_path, monkeypatch, writer):
    """Each writer, run once for real to learn its file, then again with the rename failing: the file is unchanged."""
    first = writer(tmp_path)
    first.write_bytes(OLD)  # stands for the previous, complete version
    before = sorted(p for p in tmp_path.rglob("*"))

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"):
        writer(tmp_path)
    assert first.read_bytes() == OLD
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(atomic.TMP_PREFIX)]
    monkeypatch.undo()
    after = sorted(p for p in tmp_path.rglob("*"))
    assert after == before


def test_simulate_results_round_trip_numpy_values(tmp_path):
    import numpy as np

    from seiko_core.simulate import write_json_atomic

    write_json_atomic(tmp_path / "r.json", {"a": np.float32(0.5), "b": [np.int64(3)]})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 0.5, "b": [3]}


@pytest.mark.parametrize("bad, shown", [(float("nan"), "nan"), (np.float32("inf"), "inf"), (float("-inf"), "-inf")])
def test_simulate_results_refuse_a_non_finite_number_naming_where(tmp_path, bad, shown):
    """json.dumps' default allow_nan wrote NaN and Infinity, which are not JSON: a results.json that other readers
    reject and that Python reads back as floats every mean then carries (found by review). The old file is kept."""
    from seiko_core.simulate import write_json_atomic

    path = tmp_path / "r.json"
    path.write_bytes(OLD)
    data = {"runs": {"greedy": {"0": {"rounds": [{"kl": 0.5}, {"kl": bad}]}}}}
    with pytest.raises(ValueError) as err:
        write_json_atomic(path, data)
    assert str(err.value) == (f'{path} was not written: results["runs"]["greedy"]["0"]["rounds"][1]["kl"] is {shown}, '
                              "not a finite number")
    assert path.read_bytes() == OLD and sorted(tmp_path.iterdir()) == [path]


def test_a_directorys_hash_follows_its_files_not_their_times(tmp_path):
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "w.bin").write_bytes(b"weights")
    (tmp_path / "config.json").write_text("{}")
    first = checkpoint.directory_sha256(tmp_path)
    os.utime(tmp_path / "config.json", (1, 1))
    assert checkpoint.directory_sha256(tmp_path) == first
    changed = []
    for change in (lambda: (tmp_path / "unet" / "w.bin").write_bytes(b"weightz"),
                   lambda: (tmp_path / "unet" / "w.bin").rename(tmp_path / "unet" / "v.bin"),
                   lambda: (tmp_path / "extra").write_text("")):
        change()
        changed.append(checkpoint.directory_sha256(tmp_path))
    assert len({first, *changed}) == 4


def test_a_new_only_write_leaves_a_file_created_meanwhile_alone(tmp_path):
    """``new=True``: the destination must still not exist when the file is published (a command's --out)."""
    final = tmp_path / "out.bin"

    def write(tmp):
        final.write_bytes(b"theirs")
        tmp.write_bytes(b"ours")

    with pytest.raises(atomic.DestinationTaken):
        atomic.atomic_write(final, write, new=True)
    assert final.read_bytes() == b"theirs" and not list(tmp_path.glob(".tmp-*"))
    assert atomic.atomic_write(tmp_path / "fresh.bin", lambda tmp: tmp.write_bytes(b"ours"), new=True).read_bytes() == b"ours"


def test_a_published_directory_syncs_every_subdirectory_before_the_rename(tmp_path, monkeypatch):
    """A directory's files were fsynced, and the directory itself, but not the directories below it (images/, unet/):
    after a power cut their entries could be missing from a published export (found by review). Every directory of
    the tree is synced, deeper ones first, before the rename."""
    synced: list[str] = []
    real = checkpoint.fsync_dir
    monkeypatch.setattr(checkpoint, "fsync_dir", lambda p: (synced.append(str(p)), real(p)))

    def write(tmp: Path) -> None:
        (tmp / "images" / "deep").mkdir(parents=True)
        (tmp / "images" / "deep" / "a.png").write_bytes(b"x")
        (tmp / "unet").mkdir()
        (tmp / "unet" / "w.safetensors").write_bytes(b"y")

    checkpoint.atomic_directory(tmp_path / "out", write)
    names = [Path(p).name for p in synced]
    assert {"deep", "images", "unet"} <= set(names)
    assert names.index("deep") < names.index("images") < names.index(names[-2])  # deepest first, then the tree's top
    assert Path(synced[-1]) == tmp_path  # last: the parent, after the rename
