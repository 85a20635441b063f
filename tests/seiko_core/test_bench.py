"""The performance harness (seiko_core.bench): it runs, it writes its JSON, and OURS and the BASELINE compute
the same thing on the same inputs, so the speed-ups it reports are not bought with different math."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seiko_core import bench, lora
from seiko_core.models import load_model
from seiko_core.presets import shapes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core machine a descheduled OpenMP worker stalls every parallel region of
    these tiny ops (minutes instead of seconds under load); the checks here are about values, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _setup(model_dir, dtype=torch.float32, steps=4, **kw):
    parts = load_model(str(model_dir), device="cpu", dtype=dtype)
    return bench.make_setup(parts, steps=steps, guidance=7.5, **kw)


def _step(setup, path, k, batch=2):
    grads = []
    out = bench.train_step(setup, path, k, batch, grads=grads)
    return out, torch.cat([g.flatten() for g in grads])


@pytest.mark.parametrize("k", [1, 3])
def test_ours_and_baseline_compute_the_same_loss_and_gradients_in_float64(random_model_dir, k):
    # float64 removes rounding: any difference left would be a difference in the math
    setup = _setup(random_model_dir, torch.float64)
    ours, g_ours = _step(setup, "ours", k)
    base, g_base = _step(setup, "baseline", k)
    assert float(base["kl_attached"].abs().sum()) > 0  # the adapters differ, so the KL is not trivially zero
    torch.testing.assert_close(ours["loss"], base["loss_matched"], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours["images"], base["images"], rtol=1e-10, atol=1e-12)
    assert g_ours.norm() > 0
    assert float((g_ours - g_base).norm() / g_base.norm()) < 1e-9
    # ours with the KL at every step is exactly the baseline's (the reference's) objective
    prompts, seeds = setup.batch(2)
    every = bench.ours_loss(setup, prompts, seeds, bench.attached_last(setup.steps, k), kl_every_step=True)
    torch.testing.assert_close(every["loss"].detach(), base["loss"], rtol=1e-10, atol=1e-12)


def test_ours_and_baseline_agree_in_float32_and_steps_leave_weights_alone(random_model_dir):
    setup = _setup(random_model_dir)
    before = [p.detach().clone() for p in setup.params]
    ours, g_ours = _step(setup, "ours", 2)
    base, g_base = _step(setup, "baseline", 2)
    torch.testing.assert_close(ours["loss"], base["loss_matched"], rtol=1e-5, atol=1e-7)
    assert float((g_ours - g_base).norm() / g_base.norm()) < 1e-3
    # AdamW at lr 0: every repetition sees the same model
    assert all(torch.equal(a, p) for a, p in zip(before, setup.params))
    # the baseline's previous model is a separate copy holding the reference adapter; ours switches adapters
    prev = setup.baseline_prev()
    assert prev is not setup.parts.unet
    assert all(not p.requires_grad for p in prev.parameters())


def test_block_checkpointing_and_bf16_autocast_paths_run_on_cpu(random_model_dir):
    """The CUDA configuration's code paths (per-block checkpointing, bf16 autocast), exercised on CPU."""
    plain = _setup(random_model_dir)
    ours, g_plain = _step(plain, "ours", 2)
    plain.checkpointing = "blocks"  # recomputes activations in backward: same values, same gradients
    ckpt, g_ckpt = _step(plain, "ours", 2)
    torch.testing.assert_close(ckpt["loss"], ours["loss"], rtol=1e-6, atol=1e-8)
    assert float((g_ckpt - g_plain).norm() / g_plain.norm()) < 1e-5
    assert not any(getattr(m, "gradient_checkpointing", False) for m in plain.parts.unet.modules())  # switched off after
    bf16 = _setup(random_model_dir, precision="bf16", checkpointing="blocks")
    b_ours, g_ours = _step(bf16, "ours", 2)
    b_base, g_base = _step(bf16, "baseline", 2)
    assert torch.isfinite(b_ours["loss"]) and g_ours.norm() > 0
    torch.testing.assert_close(b_ours["loss"], ours["loss"], rtol=2e-2, atol=1e-3)  # bf16 rounding only
    torch.testing.assert_close(b_ours["loss"], b_base["loss_matched"], rtol=2e-2, atol=1e-3)


def test_samplers_agree(random_model_dir):
    setup = _setup(random_model_dir)
    ours = bench.sample_images(setup, "ours", 3)
    base = bench.sample_images(setup, "baseline", 3)
    assert ours.shape == (3, 3, 32, 32)
    torch.testing.assert_close(ours, base, rtol=0, atol=1e-4)


def test_flop_counter_counts_cpu_attention(random_model_dir):
    from torch.utils.flop_counter import FlopCounterMode

    bench._register_cpu_attention_flops()
    bench._register_cpu_attention_flops()  # idempotent
    q = torch.randn(2, 4, 16, 8)
    with FlopCounterMode(display=False) as fc:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    assert fc.get_total_flops() == 2 * (2 * 2 * 4 * 16 * 16 * 8)
    setup = _setup(random_model_dir, steps=2)
    ours = bench.count_flops(lambda: bench.train_step(setup, "ours", 1, 2))
    base = bench.count_flops(lambda: bench.train_step(setup, "baseline", 1, 2))
    assert 0 < ours < base  # the baseline runs the previous model at every step and recomputes the checkpointed call


def test_harness_writes_json(random_model_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--model", str(random_model_dir), "--device", "cpu", "--steps", "2", "--batch", "2", "--k", "2,1",
                       "--reps", "1", "--sample-batches", "1", "--parts", "finetune,sampling", "--threads", "1",
                       "--workdir", str(tmp_path / "wd"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(a) one fine-tuning step" in printed and "(b) sampling" in printed
    res = json.loads(out.read_text())
    assert res["config"]["precision"] == "fp32" and res["machine"]["torch"] == torch.__version__
    assert len(res["machine"]["loadavg_start"]) == 3
    assert [row["k"] for row in res["finetune"]] == [2, 1]
    for row in res["finetune"]:
        for path in ("ours", "baseline"):
            st = row[path]
            assert st["median_s"] > 0 and len(st["times_s"]) == 1 and st["flops"] > 0 and st["tflops_per_s"] > 0
            assert "fraction_of_peak" not in st  # CPU: no fraction of a GPU's peak
        assert row["baseline"]["flops"] > row["ours"]["flops"] and row["speedup"] > 0
        assert row["check"]["loss_abs_diff"] < 1e-5 and row["check"]["grad_rel_diff"] < 1e-3
    (srow,) = res["sampling"]
    assert srow["batch"] == 1 and srow["ours"]["images_per_s"] > 0 and srow["baseline"]["images_per_s"] > 0
    assert srow["check"]["images_max_abs_diff"] < 1e-4


def test_memory_is_measured_in_fresh_processes(random_model_dir, tmp_path):
    out = tmp_path / "mem.json"
    assert bench.main(["--model", str(random_model_dir), "--device", "cpu", "--steps", "2", "--k", "1", "--parts", "memory",
                       "--threads", "1", "--workdir", str(tmp_path / "wd"), "--out", str(out)]) == 0
    mem = json.loads(out.read_text())["memory"]
    assert {(m["path"], m["k"]) for m in mem} == {("ours", 1), ("baseline", 1)}
    assert all(m["peak_over_loaded_mb"] > 0 and m["method"].startswith("VmHWM") for m in mem)


def test_cli_rejects_bad_arguments(tmp_path):
    r = subprocess.run([sys.executable, "-m", "seiko_core.bench", "--model", str(tmp_path / "none"), "--k", "0"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and "positive integers" in r.stderr
    with pytest.raises(ValueError, match="sd15-arch only"):
        bench.load_bench_model("random", "cpu", sample_size=8)


def test_round_runs_and_reports_its_parts(random_parts):
    cfg = shapes()
    cfg.budgets = (4,)
    cfg.sampling.steps = 2
    cfg.reward.max_epochs = 5
    cfg.finetune.trajectories_per_epoch = 2
    cfg.finetune.batch_size = 2
    cfg.finetune.truncation_k = 1
    cfg.finetune.epochs = 1
    rec = bench.bench_round(random_parts, cfg=cfg, log=lambda m: None)
    assert rec["labels"] == 4 and rec["images"] == (4, 3, 32, 32)
    assert rec["total_s"] >= rec["finetune_s"] > 0 and rec["next_batch_s"] > 0
    assert lora.has_adapter(random_parts.unet, "round_1")


def test_sd15_arch_configs_are_stable_diffusion_15():
    unet, vae, text, image = bench.sd15_modules("meta")

    def count(m):
        return sum(p.numel() for p in m.parameters())

    # the public parameter counts of SD 1.5's UNet and VAE and of CLIP ViT-L/14's towers
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
    assert count(image) == 303_966_208
    assert unet.config.cross_attention_dim == text.config.hidden_size == 768
    assert image.config.projection_dim == 768 and unet.config.sample_size == 64
    proc = type(unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor).__name__
    assert proc == "AttnProcessor2_0"  # torch's scaled_dot_product_attention


def test_sd15_tokenizer_pads_to_77(tmp_path):
    tok = bench.sd15_tokenizer(tmp_path)
    ids = tok(["a red circle", ""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    assert ids.shape == (2, 77) and int(ids.max()) < 49408


@pytest.mark.slow
def test_sd15_arch_harness_runs_tiny(tmp_path):
    """The SD 1.5 architecture end to end on CPU at a tiny latent and encoder size (minutes, 10 GB of memory)."""
    out = tmp_path / "sd15.json"
    r = subprocess.run([sys.executable, "-m", "seiko_core.bench", "--model", "sd15-arch", "--device", "cpu", "--size", "8",
                        "--image-size", "28", "--steps", "2", "--k", "1", "--reps", "1", "--sample-batches", "1",
                        "--parts", "finetune,sampling", "--no-flops", "--threads", "1", "--workdir", str(tmp_path / "wd"), "--out", str(out)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["finetune"][0]["check"]["loss_abs_diff"] < 1e-4


def test_an_out_that_cannot_be_written_is_refused_before_the_benchmark(tmp_path, monkeypatch, capsys):
    """`--out` was first written after every measurement (an hour on a GPU): one under a file, or in a folder that
    takes no new file (/sys refuses even root), was a traceback at the end (seventh review). Both are refused, in one
    sentence, before anything runs."""
    ran = []
    monkeypatch.setattr(bench, "run", lambda args, log=print: ran.append(args))
    (tmp_path / "a-file").write_text("x")
    for out, reason in ((tmp_path / "a-file" / "b.json", f"{str(tmp_path / 'a-file')!r} is not a directory"),
                        (Path("/sys/seiko-bench.json"), None)):
        assert bench.main(["--model", str(tmp_path / "none"), "--device", "cpu", "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: cannot write --out {str(out)!r}: "), err
        assert reason is None or err[0].endswith(reason), err
    assert ran == [] and not Path("/sys/seiko-bench.json").exists()


@pytest.mark.parametrize("ending", ["normal", "ctrl-c"])
def test_the_work_dir_it_made_goes_and_a_given_one_loses_only_the_runs_scratch(ending, random_model_dir, tmp_path,
                                                                               monkeypatch, capsys):
    """Without --workdir the bench made a temporary folder (the tokenizer, a random model, the round's scratch files)
    and left it behind on every run (seventh review). It goes when the run ends, normally or by Ctrl-C; a --workdir
    that was given stays, only the run's own scratch folder in it goes (with a name a killed scratch file left in
    it), and what else is there stays (ninth review)."""
    made = []
    real_mkdtemp = bench.tempfile.mkdtemp
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    real_run = bench.run
    given = tmp_path / "wd"
    (given / "notes").mkdir(parents=True)
    (given / "notes" / ".tmp-mine").write_text("not the bench's")

    def run(args, log=print):
        own = Path(args.scratch_folder)
        assert own.parent == Path(args.workdir) and own.name.startswith(".tmp-bench-")
        (own / "scratch").mkdir()
        (own / "scratch" / ".tmp-round0-images-0badf00d").write_bytes(bytes(100))
        if ending == "ctrl-c":
            raise KeyboardInterrupt
        return real_run(args, log=log)

    monkeypatch.setattr(bench, "run", run)
    argv = ["--model", str(random_model_dir), "--device", "cpu", "--steps", "2", "--reps", "1", "--sample-batches", "1",
            "--parts", "sampling", "--no-flops", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        for extra in ([], ["--workdir", str(given)]):
            if ending == "ctrl-c":
                with pytest.raises(KeyboardInterrupt):
                    bench.main([*argv, *extra])
            else:
                assert bench.main([*argv, *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    assert [Path(m).name.startswith("seiko-bench-") for m in made] == [True, False, False]  # the work dir, 2 own folders
    assert not any(Path(m).exists() for m in made)
    assert sorted(p.relative_to(given).as_posix() for p in given.rglob("*")) == ["notes", "notes/.tmp-mine"]


def test_a_work_dir_that_is_a_live_data_dir_keeps_its_workers_scratch_file(random_model_dir, tmp_path, monkeypatch,
                                                                            capsys):
    """A --workdir that is a live app's data dir: its worker makes a scratch file as DATA_DIR/scratch/.tmp-job7-...
    and maps it by that name a moment later (``scratch.scratch_array``). The bench removed every ``.tmp-`` name in
    WORKDIR/scratch, and that folder, when a run started and when it ended, so the worker's name (its job then
    failed) or the folder it had just made could go (ninth review). A real run of (b) and a round (a stand-in that
    spills its images into a scratch file): the worker's file and folder are as they were, the round's scratch
    file was in a folder of the run's own, and nothing of the run is left."""
    from seiko_core import scratch

    data = tmp_path / "data"
    workers = data / scratch.SCRATCH / ".tmp-job7-candidates-0badf00d"
    workers.parent.mkdir(parents=True)
    workers.write_bytes(b"a worker's candidates")
    before = sorted(data.rglob("*"))
    seen = []

    def bench_round(parts, *, seed, log, spill):
        images = spill.pixels_out("round0-images", "round 0's images", np.float32)((2, 3))
        seen.append((spill.folder, [p.relative_to(data) for p in sorted(data.rglob("*"))], isinstance(images, np.memmap)))
        return {}

    monkeypatch.setattr(bench, "bench_round", bench_round)
    threads = torch.get_num_threads()
    try:
        assert bench.main(["--model", str(random_model_dir), "--device", "cpu", "--steps", "2", "--reps", "1",
                           "--sample-batches", "1", "--parts", "sampling,round", "--no-flops", "--threads", "1",
                           "--workdir", str(data), "--pixels-in-memory-max-mib", "0"]) == 0
    finally:
        torch.set_num_threads(threads)
    ((folder, during, spilled),) = seen
    assert Path(scratch.SCRATCH) / workers.name in during  # the worker's name, while the run went on
    assert workers.read_bytes() == b"a worker's candidates" and sorted(data.rglob("*")) == before
    assert spilled and folder.parent == data and folder.name.startswith(".tmp-bench-")
    own = folder.relative_to(data)
    assert during == [own, own / scratch.SCRATCH, Path(scratch.SCRATCH), Path(scratch.SCRATCH) / workers.name]


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--reps", "0"], ["--threads", "-1"], ["--threads", "0"]])
def test_a_refused_argument_leaves_no_temporary_work_dir(bad, tmp_path, monkeypatch):
    """Found by review: the temporary work dir was made before --steps/--batch/--reps were checked (and --threads -1
    was a torch RuntimeError after it), so a refused run left its folder behind. Refused in one sentence, nothing
    made."""
    made = []
    real_mkdtemp = bench.tempfile.mkdtemp
    monkeypatch.setattr(bench.tempfile, "mkdtemp", lambda **kw: made.append(real_mkdtemp(**kw)) or made[-1])
    threads = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as refused:
            bench.main(["--model", str(tmp_path / "none"), "--device", "cpu", *bad])
    finally:
        torch.set_num_threads(threads)
    assert isinstance(refused.value.code, str) and "\n" not in refused.value.code, refused.value.code
    assert refused.value.code.startswith(f"{bad[0]} must be at least 1"), refused.value.code
    assert made == []
