"""A generate job's candidate pixels beyond Worker(pixels_in_memory_max_bytes=...) live in a scratch file of the data
dir, not in memory (fifth review): at sd15's round 3 the 16,384 candidates' uint8 pixels were 12 GiB in memory, the
shown half copied out of them another 6 GiB. The tests force the file with a threshold of 0 bytes."""

from __future__ import annotations

import errno
import gc
import hashlib
import os
import time

import numpy as np
import pytest

from app import experiment_options, storage
from app.experiment_options import ExperimentOptions
from app.settings import Settings
from db import jobs as job_queue
from db import repo
from db.engine import read_session, write_session


def _scratch_entries(data_dir) -> list[str]:
    folder = data_dir / storage.SCRATCH
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _mapped_scratch_files(data_dir) -> list[tuple[str, int]]:
    """This process's memory maps of files in the data dir's scratch folder: (path, bytes mapped); a removed file
    shows as '<path> (deleted)'."""
    maps = "/proc/self/maps"
    if not os.path.exists(maps):
        pytest.skip("no /proc/self/maps here to see the process's memory maps")
    folder = str((data_dir / storage.SCRATCH).resolve()) + "/"
    found = []
    with open(maps) as f:
        for line in f:
            if folder in line:
                start, end = (int(a, 16) for a in line.split()[0].split("-"))
                found.append((line.split(None, 5)[-1].strip(), end - start))
    return found


def _query(world, experiment_id, index):
    with read_session(world.factory) as s:
        r = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=index)
        images = [(im.prompt, im.seed, im.sha256, im.file_path, bytes(im.embedding))
                  for im in repo.list_images(session=s, round_id=r.id, kind="query")]
        return r.adapter_path, r.metrics or {}, images


def test_candidates_in_a_scratch_file_give_the_same_pngs_and_the_file_goes(worker_world, monkeypatch):
    """Round 1 of uncertainty x2 (8 candidates, 4 shown) with every candidate's pixels in the scratch file: each
    shown image's PNG is byte for byte the PNG of that (prompt, seed) drawn by generate_batch in memory (the path
    before), its embedding the same; while the PNGs are written the pixels are in a file of 8 x 3 x H x W bytes
    under <data>/scratch, and after the job it is gone and no longer mapped."""
    import torch

    from app.worker import query_seeds
    from seiko_core import lora
    from seiko_core.loop import generate_batch, round_prompts
    from seiko_core.models import load_model
    from seiko_core.sampling import to_uint8

    world = worker_world
    data_dir = world.settings.data_dir
    exp_id = world.create_experiment("scratch", budgets=(4, 4))
    with write_session(world.factory) as s:
        e = repo.get_experiment(session=s, experiment_id=exp_id)
        e.config = experiment_options.with_options(dict(e.config), ExperimentOptions(selection="uncertainty",
                                                                                      candidate_factor=2, honest_share=0.25))
        cfg_dict = dict(e.config)
    worker = world.worker(pixels_in_memory_max_bytes=0)
    rater = world.raters(1)[0]
    assert worker.run_once() and worker.last_error is None  # generate round 0 (4 candidates, in the file too)
    assert _scratch_entries(data_dir) == []
    world.rate_open_round(exp_id, [rater], lambda image_id, r: 1 + image_id % 10)
    with write_session(world.factory) as s:
        repo.close_round(session=s, experiment_id=exp_id)
    assert worker.run_once() and worker.last_error is None  # train round 1

    seen = []  # (the scratch folder's names, this process's maps of its files) as each PNG is written
    real_write = storage.write_image

    def spy(data_dir_, png):
        seen.append((_scratch_entries(data_dir), _mapped_scratch_files(data_dir)))
        return real_write(data_dir_, png)

    monkeypatch.setattr(storage, "write_image", spy)
    assert worker.run_once() and worker.last_error is None  # generate round 1: 8 candidates, 4 shown
    monkeypatch.undo()
    adapter_path, metrics, shown = _query(world, exp_id, 1)
    assert len(shown) == 4 and metrics["selection"]["candidates"] == 8

    # the reference: today's in-memory path on a freshly loaded model with round 1's adapter
    from seiko_core.config import from_dict

    cfg = from_dict(experiment_options.seiko_part(cfg_dict))
    from app.worker import derive_seed

    seeds = query_seeds(exp_id, 1, 8)
    prompts = round_prompts(cfg, 8, derive_seed(exp_id, 1, "prompts"))
    parts = load_model(str(world.model_dir), device="cpu")
    lora.load_adapter(parts, storage.resolve(data_dir, adapter_path), lora.round_adapter_name(1))
    pixels, emb = generate_batch(parts, lora.round_adapter_name(1), prompts, seeds, cfg, as_uint8=True)
    assert pixels.dtype == torch.uint8
    arr = to_uint8(pixels)
    want = {(p, s): (hashlib.sha256(storage.encode_png(arr[i])).hexdigest(), emb[i].float().numpy().astype("<f4").tobytes())
            for i, (p, s) in enumerate(zip(prompts, seeds))}
    for prompt, seed, sha, path, embedding in shown:
        assert (sha, embedding) == want[(prompt, seed)], (prompt, seed)
        assert hashlib.sha256(storage.resolve(data_dir, path).read_bytes()).hexdigest() == sha

    # while the PNGs were written the 8 candidates' pixels were one map of a removed scratch file (page-rounded)
    size = 8 * 3 * pixels.shape[2] * pixels.shape[3]
    assert len(seen) == 4 and all(names == [] and len(maps) == 1 for names, maps in seen), seen
    (path, mapped), = seen[0][1]
    assert os.path.basename(path).startswith(".tmp-job") and path.endswith(" (deleted)")
    assert size <= mapped < size + 4096 * 4, (mapped, size)
    assert _scratch_entries(data_dir) == []
    gc.collect()
    assert _mapped_scratch_files(data_dir) == []


def test_the_scratch_file_goes_when_the_job_fails_after_sampling(worker_world, monkeypatch):
    """An error while the shown images are stored (after sampling, the pixels in the file): the job fails with that
    error, nothing is published, and neither the file nor its memory map is left."""
    world = worker_world
    data_dir = world.settings.data_dir
    exp_id = world.create_experiment("fails")
    worker = world.worker(pixels_in_memory_max_bytes=0)
    real_write = storage.write_image
    calls = []

    def fail_on_the_second(data_dir_, png):
        calls.append(_mapped_scratch_files(data_dir))
        if len(calls) == 2:
            raise RuntimeError("injected after sampling")
        return real_write(data_dir_, png)

    monkeypatch.setattr(storage, "write_image", fail_on_the_second)
    assert worker.run_once() is True
    assert worker.last_error == "RuntimeError: injected after sampling"
    assert len(calls) == 2 and len(calls[0]) == 1 and "/.tmp-job" in calls[0][0][0]  # it was in use
    assert _scratch_entries(data_dir) == []
    gc.collect()
    assert _mapped_scratch_files(data_dir) == []
    _, _, shown = _query(world, exp_id, 0)
    assert shown == []
    monkeypatch.undo()
    assert worker.run_once() is True and worker.last_error is None  # the retry publishes the round
    assert len(_query(world, exp_id, 0)[2]) == 4 and _scratch_entries(data_dir) == []


def test_a_full_disk_for_the_scratch_file_is_one_sentence(worker_world, tmp_path):
    """The data dir on a tmpfs with less room than the 4 candidates' pixels: the job fails before sampling with
    one sentence saying what needs how much room where; no file is left, nothing published; with room, the retry
    publishes the round. A memory map of a file without its disk blocks would instead die of SIGBUS mid-write."""
    from app.tools import fault_matrix
    from app.worker import Worker

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (as RELIABILITY.md section 1's full-disk test)")
    world = worker_world
    exp_id = world.create_experiment("full")
    try:
        with fault_matrix.small_tmpfs(tmp_path / "mnt", 1 << 20) as mount:
            data_dir = mount / "data"
            (data_dir / storage.SCRATCH).mkdir(parents=True)
            settings = Settings.from_env({"data_dir": str(data_dir), "db_url": world.settings.db_url,
                                          "model": str(world.model_dir)}, environ={})
            worker = Worker(settings, "full-w", lease_s=30, poll_s=0.05, device="cpu", pixels_in_memory_max_bytes=0)
            try:
                filler = fault_matrix.fill_to(mount, 4096)  # 4 x 3 x 32 x 32 = 12 KiB do not fit
                assert worker.run_once() is True
                error = worker.last_error or ""
                assert error.startswith("OSError: [Errno 28] No space left on device for round 0's 4 candidate images: "
                                        "they need 12.0 KiB in "), error
                assert error.endswith("while the job runs, so free that much space there") and error.count(". ") == 0
                assert _scratch_entries(data_dir) == []
                assert _query(world, exp_id, 0)[2] == []
                with read_session(world.factory) as s:
                    (job,) = [j for j in job_queue.list_jobs(session=s, experiment_id=exp_id) if j.kind == "generate"]
                    assert job.status == "queued" and job.attempts == 1 and job.error == error
                filler.unlink()
                assert worker.run_once() is True and worker.last_error is None
                assert len(_query(world, exp_id, 0)[2]) == 4 and _scratch_entries(data_dir) == []
            finally:
                worker.close()  # its heartbeat too: engine.dispose() alone left it running
    except fault_matrix.CannotMount as exc:
        pytest.skip(str(exc))


def test_scratch_array_on_a_full_disk_raises_one_sentence_and_leaves_nothing(tmp_path, monkeypatch):
    """Without root: the allocation refused with ENOSPC, as a full disk does."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage.os, "posix_fallocate", full, raising=False)
    with pytest.raises(OSError, match=r"^\[Errno 28\] No space left on device for the pixels: they need 1.0 GiB in ") as info:
        storage.scratch_array(tmp_path, "t", (1 << 30,), what="the pixels")
    assert info.value.errno == errno.ENOSPC
    assert _scratch_entries(tmp_path) == []


def test_scratch_array_is_a_map_of_a_removed_file_that_goes_with_the_array(tmp_path):
    """The name goes at once (nothing to clean after a kill, nothing another worker can remove); the file, and its
    disk space, until the last reference to the array goes."""
    a = storage.scratch_array(tmp_path, "t", (3, 5000), what="x")
    assert a.shape == (3, 5000) and a.dtype == np.uint8 and not a.any()
    assert _scratch_entries(tmp_path) == []
    (path, mapped), = _mapped_scratch_files(tmp_path)
    assert os.path.basename(path).startswith(".tmp-t-") and path.endswith(" (deleted)") and mapped == 16384
    a[1] = 200
    view = a[1:2]
    assert int(a.sum()) == 200 * 5000
    del a
    gc.collect()
    assert len(_mapped_scratch_files(tmp_path)) == 1  # a view still holds it
    del view
    gc.collect()
    assert _mapped_scratch_files(tmp_path) == []
    with pytest.raises(ValueError, match="at least one byte"):
        storage.scratch_array(tmp_path, "t", (0, 3), what="x")


def test_clean_partials_removes_a_killed_jobs_scratch_file(tmp_path):
    folder = tmp_path / storage.SCRATCH
    folder.mkdir()
    old, new = folder / ".tmp-job1-candidates-deadbeef", folder / ".tmp-job2-candidates-cafef00d"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert storage.clean_partials(tmp_path, min_age_s=60) == [old]
    assert _scratch_entries(tmp_path) == [new.name]


def test_pixels_in_memory_max_bytes_must_be_a_whole_number_of_bytes(worker_world):
    for bad in (-1, 1.5, True, "512"):
        with pytest.raises(ValueError, match="pixels_in_memory_max_bytes must be a whole number of bytes from 0"):
            worker_world.worker(pixels_in_memory_max_bytes=bad)
