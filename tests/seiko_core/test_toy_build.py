"""The shapes model's build: its loss weighting against a closed form, and the architecture it saves."""

import json
import re

import pytest
import torch

from seiko_core.toy.build import BuildConfig, ema_update, make_unet, min_snr_weighted_mse, random_model


def test_min_snr_weight_matches_the_closed_form():
    """Weight = min(SNR, gamma) / SNR, SNR = a / (1 - a): 1 for noisy samples, gamma / SNR for nearly clean ones."""
    gen = torch.Generator().manual_seed(0)
    pred, noise = torch.randn(3, 4, 2, 2, generator=gen), torch.randn(3, 4, 2, 2, generator=gen)
    alpha_bar = torch.tensor([0.5, 0.9, 0.99])  # SNR 1, 9, 99
    mse = [float(((pred[i] - noise[i]) ** 2).mean()) for i in range(3)]
    expected = (mse[0] * 1.0 + mse[1] * 5 / 9 + mse[2] * 5 / 99) / 3
    assert float(min_snr_weighted_mse(pred, noise, alpha_bar, 5.0)) == pytest.approx(expected, rel=1e-6)
    assert float(min_snr_weighted_mse(pred, noise, alpha_bar, 0.0)) == pytest.approx(sum(mse) / 3, rel=1e-6)


def test_the_unet_gets_the_pooled_caption_and_the_stated_heads(tmp_path):
    cfg = BuildConfig.quick()
    unet = make_unet(cfg)
    assert unet.config.addition_embed_type == "text" and unet.config.attention_head_dim == cfg.unet_heads
    # the pooled-caption path reaches the output: shifting its projection changes the prediction
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    states = torch.randn(1, 16, cfg.text_width)
    with torch.no_grad():
        a = unet(x, t, encoder_hidden_states=states).sample
        # a random shift (a uniform one would vanish in the LayerNorm that follows the projection)
        unet.add_embedding.proj.bias.add_(torch.randn(unet.add_embedding.proj.bias.shape))
        b = unet(x, t, encoder_hidden_states=states).sample
    assert not torch.allclose(a, b, atol=1e-4)
    saved = json.loads((random_model(tmp_path / "m") / "unet" / "config.json").read_text())
    assert saved["addition_embed_type"] == "text" and saved["attention_head_dim"] == cfg.unet_heads
    assert BuildConfig(unet_text_pool=False).unet_text_pool is False and make_unet(BuildConfig(unet_text_pool=False)).config.addition_embed_type is None


def _bytes(d, part):
    from pathlib import Path

    return {p.name: p.read_bytes() for p in sorted((Path(d) / part).glob("*.safetensors"))}


def test_encoder_refinement_moves_only_the_image_encoder_and_reruns_on_a_finished_build(tmp_path):
    """A full build equals a build without the last stage plus ``refine-encoder``; the other parts never move."""
    from safetensors.torch import load_file

    from seiko_core.toy.build import build, refine_existing

    refine = BuildConfig.quick()
    plain = BuildConfig.quick()
    plain.clip_refine_steps = 0
    build(tmp_path / "full", refine)
    build(tmp_path / "plain", plain)
    for part in ("unet", "vae", "text_encoder"):  # the forked RNG: the stage changes nothing else in the build
        assert _bytes(tmp_path / "full", part) == _bytes(tmp_path / "plain", part), part
    assert _bytes(tmp_path / "full", "image_encoder") != _bytes(tmp_path / "plain", "image_encoder")

    refine_existing(tmp_path / "plain", steps=refine.clip_refine_steps)
    for part in ("image_encoder",):
        a = load_file(str(tmp_path / "full" / part / "model.safetensors"))
        b = load_file(str(tmp_path / "plain" / part / "model.safetensors"))
        assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a), part
    pa = load_file(str(tmp_path / "full" / "text_projection.safetensors"))
    pb = load_file(str(tmp_path / "plain" / "text_projection.safetensors"))
    assert all(torch.allclose(pa[k], pb[k], atol=1e-6) for k in pa)
    saved = json.loads((tmp_path / "plain" / "build_config.json").read_text())
    assert saved["clip_refine_steps"] == refine.clip_refine_steps


def test_ema_update_matches_the_closed_form_and_the_per_tensor_loop():
    """Against a target held fixed, n updates with decays d_i leave shadow = p + prod(d_i) (s0 - p) (closed form);
    and against a moving target the fused update equals, bit for bit, the per-tensor loop the build used before."""
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), (2, 3, 3)]
    s0 = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    p = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    shadow = [t.clone() for t in s0]
    decays = [min(0.999, (1 + k) / (10 + k)) for k in range(1, 41)]
    for d in decays:
        ema_update(shadow, p, d)
    kept = torch.tensor(decays, dtype=torch.float64).prod()
    for got, a, b in zip(shadow, s0, p):
        torch.testing.assert_close(got, b + kept * (a - b), rtol=1e-12, atol=1e-12)

    live = [torch.randn(s, generator=g) for s in shapes]
    fused, looped = [t.clone() for t in live], [t.clone() for t in live]
    for d in decays:
        for t in live:
            t.add_(0.01 * torch.randn(t.shape, generator=g))
        ema_update(fused, live, d)
        for e, v in zip(looped, live):
            e.mul_(d).add_(v, alpha=1 - d)
    assert all(torch.equal(a, b) for a, b in zip(fused, looped))
    assert not torch.equal(fused[0], live[0])  # the shadow lags the moving target: the check is not vacuous


def test_caption_weights_give_each_named_shape_an_equal_share_and_leave_unnamed_captions_alone():
    """Brute force: the weights summed per named shape are equal, the named captions keep their total, and the
    weight is a function of the caption (equal captions, equal weights)."""
    import collections

    from seiko_core.toy import dataset as ds
    from seiko_core.toy.build import caption_weights

    data = ds.generate(3000, seed=3)
    w = caption_weights(data).tolist()
    named = [i for i, k in enumerate(data.keeps) if k["shape"]]
    unnamed = [i for i, k in enumerate(data.keeps) if not k["shape"]]
    assert unnamed and all(w[i] == 1.0 for i in unnamed)
    per_shape = collections.defaultdict(float)
    for i in named:
        per_shape[data.specs[i].shape] += w[i]
    assert set(per_shape) == set(ds.SHAPES)
    for total in per_shape.values():
        assert total == pytest.approx(len(named) / len(ds.SHAPES), rel=1e-9)
    by_caption = collections.defaultdict(set)
    for i, c in enumerate(data.captions):
        by_caption[c].add(w[i])
    assert all(len(v) == 1 for v in by_caption.values())
    counts = collections.Counter(data.specs[i].shape for i in named)  # the rare shapes are up-weighted
    assert w[next(i for i in named if data.specs[i].shape == "cross")] > w[next(i for i in named if data.specs[i].shape == "circle")]
    assert counts["cross"] < counts["circle"]


def test_unet_refinement_moves_only_the_unet_and_reruns_on_a_finished_build(tmp_path):
    """A build with the stage equals a build without it plus ``refine-unet``; no other part moves."""
    from safetensors.torch import load_file

    from seiko_core.toy.__main__ import main
    from seiko_core.toy.build import build

    full, plain = BuildConfig.quick(), BuildConfig.quick()
    full.unet_refine_steps, plain.unet_refine_steps = 4, 0
    build(tmp_path / "full", full)
    build(tmp_path / "plain", plain)
    for part in ("vae", "text_encoder", "image_encoder"):
        assert _bytes(tmp_path / "full", part) == _bytes(tmp_path / "plain", part), part
    assert _bytes(tmp_path / "full", "unet") != _bytes(tmp_path / "plain", "unet")

    assert main(["refine-unet", "--model", str(tmp_path / "plain"), "--steps", "4"]) == 0
    a = load_file(str(tmp_path / "full" / "unet" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "plain" / "unet" / "diffusion_pytorch_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    quality = json.loads((tmp_path / "plain" / "QUALITY.json").read_text())
    assert quality["build_config"]["unet_refine_steps"] == 4 and "unet_refine_s" in quality["timings_s"]
    assert "_name_or_path" not in json.loads((tmp_path / "plain" / "unet" / "config.json").read_text())
    assert "UNet refinement: 4 more steps" in (tmp_path / "plain" / "README.md").read_text()


def test_the_refinement_weights_its_loss_by_its_own_gamma_and_the_cli_records_it(tmp_path, monkeypatch, capsys):
    """``unet_refine_min_snr_gamma`` (None: the UNet stage's) is the gamma the refinement's loss uses, while the UNet
    stage keeps ``min_snr_gamma``; ``refine-unet --min-snr-gamma 0`` records it in QUALITY.json; a negative or
    non-finite value is refused in one sentence."""
    from seiko_core.toy import build as build_module
    from seiko_core.toy.__main__ import main

    seen: list[tuple[str, float]] = []
    real = build_module.min_snr_weighted_mse
    stage = {"name": "unet"}
    real_refine = build_module.refine_unet

    def spy(pred, noise, alpha_bar, gamma):
        seen.append((stage["name"], gamma))
        return real(pred, noise, alpha_bar, gamma)

    def refine(*args, **kwargs):
        stage["name"] = "refine"
        return real_refine(*args, **kwargs)

    monkeypatch.setattr(build_module, "min_snr_weighted_mse", spy)
    monkeypatch.setattr(build_module, "refine_unet", refine)
    for value, expected in ((None, 5.0), (0.0, 0.0), (2.5, 2.5)):
        seen.clear()
        stage["name"] = "unet"
        cfg = BuildConfig.quick()
        cfg.min_snr_gamma, cfg.unet_refine_min_snr_gamma = 5.0, value
        build_module.build(tmp_path / f"m{value}", cfg)
        assert {g for name, g in seen if name == "unet"} == {5.0}
        assert {g for name, g in seen if name == "refine"} == {expected}
        assert len([1 for name, _ in seen if name == "refine"]) == cfg.unet_refine_steps

    monkeypatch.setattr(build_module, "min_snr_weighted_mse", real)
    monkeypatch.setattr(build_module, "refine_unet", real_refine)
    model = tmp_path / "mNone"
    assert main(["refine-unet", "--model", str(model), "--steps", "2", "--min-snr-gamma", "0"]) == 0
    assert json.loads((model / "QUALITY.json").read_text())["build_config"]["unet_refine_min_snr_gamma"] == 0.0
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit):
            main(["refine-unet", "--model", str(model), "--min-snr-gamma", bad])
        assert "--min-snr-gamma must be a finite number of at least 0" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["refine-unet", "refine-encoder"])
def test_a_stage_rerun_measures_as_the_model_was_last_measured(tmp_path, capsys, command):
    """A model last measured with ``quality --samples N --steps S`` is measured again with N samples and S steps after
    a stage re-run (it fell back to the build's own count, so before and after were different draws), and says so;
    a ``remeasured_with`` that is not such settings is refused in one sentence, the model untouched."""
    from seiko_core.toy.__main__ import main
    from seiko_core.toy.build import build

    model = tmp_path / "m"
    build(model, BuildConfig.quick())
    assert BuildConfig.quick().quality_samples != 12
    assert main(["quality", "--model", str(model), "--samples", "12", "--steps", "3"]) == 0
    assert main([command, "--model", str(model), "--steps", "1"]) == 0
    quality = json.loads((model / "QUALITY.json").read_text())
    assert quality["samples"] == 12 and quality["sampler"]["ddim_steps"] == 3
    assert quality["remeasured_with"] == {"quality_guidance": BuildConfig.quick().quality_guidance, "quality_steps": 3,
                                          "quality_samples": 12}
    assert quality["build_config"]["quality_samples"] == BuildConfig.quick().quality_samples  # the build's own, kept

    quality["remeasured_with"]["quality_samples"] = 0
    (model / "QUALITY.json").write_text(json.dumps(quality))
    before = _bytes(model, "unet")
    capsys.readouterr()
    assert main([command, "--model", str(model), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "its remeasured_with must be an object of quality_guidance, quality_steps, quality_samples" in err
    assert err.count("\n") == 1 and _bytes(model, "unet") == before


def test_refine_unet_on_a_directory_that_is_not_a_build_says_so(tmp_path, capsys):
    from seiko_core.toy.__main__ import main

    with pytest.raises(SystemExit):
        main(["refine-unet", "--model", str(tmp_path)])
    assert "is not a model written by `build`" in capsys.readouterr().err


def test_quality_remeasures_on_the_samples_asked_and_records_each_fidelitys_interval(tmp_path, capsys):
    """``quality --samples N`` measures on N fresh samples (the precision a figure near its target needs) and
    records N, the sampler and each fidelity's Wilson interval from the counts; N < 1 is refused in one sentence."""
    from seiko_core.stats import wilson_ci95
    from seiko_core.toy.__main__ import main
    from seiko_core.toy.build import build

    build(tmp_path / "m", BuildConfig.quick())
    before = json.loads((tmp_path / "m" / "QUALITY.json").read_text())
    assert before["samples"] == BuildConfig.quick().quality_samples
    assert main(["quality", "--model", str(tmp_path / "m"), "--samples", "12"]) == 0
    q = json.loads((tmp_path / "m" / "QUALITY.json").read_text())
    assert q["samples"] == 12 and q["remeasured_with"]["quality_samples"] == 12
    for key, share in q["generated"].items():
        assert q["generated_ci95"][key] == pytest.approx(list(wilson_ci95(round(share * 12), 12)), abs=5e-4)
    assert q["timings_s"] == before["timings_s"] and q["build_config"] == before["build_config"]
    with pytest.raises(SystemExit):
        main(["quality", "--model", str(tmp_path / "m"), "--samples", "0"])
    assert "--samples must be at least 1, got 0" in capsys.readouterr().err


def _tree(d):
    from pathlib import Path

    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(Path(d).rglob("*")) if p.is_file()}


@pytest.fixture()
def finished_build(random_model_dir, tmp_path, monkeypatch):
    """The tiny random model as a finished build (a QUALITY.json of 4 images), the refine stages' training replaced
    by a small change of the weights and the quality measure by a stub: what the refines save, not how they train."""
    import shutil
    from dataclasses import asdict

    from seiko_core.toy import build as build_module
    from seiko_core.toy import quality

    model = tmp_path / "models" / "shapes-sd"
    shutil.copytree(random_model_dir, model)
    (model / "QUALITY.json").write_text(json.dumps({"build_config": {**asdict(BuildConfig.quick()), "n_images": 4},
                                                    "timings_s": {"unet_s": 1.0}}))

    def nudge(module):
        with torch.no_grad():
            next(module.parameters()).add_(1.0)

    monkeypatch.setattr(build_module, "refine_unet", lambda cfg, unet, *args: nudge(unet))
    monkeypatch.setattr(build_module, "refine_encoder", lambda cfg, data, tok, text, image, proj: (
        nudge(image), {k: v + 1 for k, v in proj.items()})[1])
    monkeypatch.setattr(quality, "measure_quality", lambda model_dir, cfg: {"measured": True})
    monkeypatch.setattr(quality, "write_model_card", lambda model_dir, q: None)
    return model


def _fail_half_way(*args, **kwargs):
    """A full disk in the middle of a save (``save_pretrained(self, directory)``, ``save_file(tensors, file)``): part
    of a weights file written, then ENOSPC."""
    from pathlib import Path

    target = Path(args[-1])
    if target.suffix != ".safetensors":  # save_pretrained(directory)
        target.mkdir(parents=True, exist_ok=True)
        target = target / "diffusion_pytorch_model.safetensors"
    target.write_bytes(b"half a weights file")
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("stage", ["refine-unet", "refine-encoder"])
def test_a_refine_that_fails_while_saving_leaves_the_build_byte_identical_and_one_that_finishes_keeps_it_aside(
        finished_build, monkeypatch, stage):
    """refine-unet and refine-encoder saved over the finished build's own files (unet/; image_encoder/ then
    text_projection.safetensors): a full disk or a kill in the middle left truncated or mixed weights, and a refine
    that finished lost the UNet the round adapters were trained on (sixth review). Now they refine a copy: a failure
    leaves the build byte for byte as it was and says so in one sentence; a success moves the build aside."""
    import diffusers
    import safetensors.torch

    from seiko_core.toy.build import RefineError, refine_existing, refine_unet_existing

    refine = {"refine-unet": lambda m: refine_unet_existing(m, steps=1, threads=1),
              "refine-encoder": lambda m: refine_existing(m, steps=1)}[stage]
    before = _tree(finished_build)
    with monkeypatch.context() as m:
        if stage == "refine-unet":
            m.setattr(diffusers.UNet2DConditionModel, "save_pretrained", _fail_half_way)
        else:  # image_encoder/ saved, then text_projection.safetensors fails: a mixed model, in place
            m.setattr(safetensors.torch, "save_file", _fail_half_way)
        with pytest.raises(RefineError) as failed:
            refine(finished_build)
    said = str(failed.value)
    assert re.fullmatch(r"Refining '.*shapes-sd' failed \(OSError: \[Errno 28\] No space left on device\); the model "
                        r"there is as it was\.", said), said
    assert _tree(finished_build) == before
    assert [p.name for p in finished_build.parent.iterdir()] == ["shapes-sd"]  # no copy left beside it

    assert refine(finished_build)["measured"] is True  # the stub measured the refined model
    after = _tree(finished_build)
    changed = {name for name in before if after.get(name) != before[name]}
    weights = {"refine-unet": {"unet/diffusion_pytorch_model.safetensors"},
               "refine-encoder": {"image_encoder/model.safetensors", "text_projection.safetensors"}}[stage]
    assert weights <= changed and changed <= weights | {"QUALITY.json", "build_config.json", "unet/config.json"}
    (aside,) = [p for p in finished_build.parent.iterdir() if p.name.startswith("shapes-sd.replaced-")]
    assert _tree(aside) == before  # the old model, every byte, beside the new one


@pytest.mark.parametrize("command", ["refine-unet", "refine-encoder", "quality"])
def test_a_refine_or_remeasure_of_a_merged_exports_copy_keeps_the_builds_timings(finished_build, command):
    """A merged export's QUALITY.json keeps the base build's figures, its timings among them, under base_model_quality
    (seiko_core.export._merged_quality, tenth review). The refines and ``quality`` on a copy of it kept only the
    top-level timings_s, which it has none of: the copy's QUALITY.json held the stage just run and nothing else, and
    its card said '? s' for every other stage (found by review, eleventh). The build's timings (here {'unet_s': 1.0},
    as the fixture's build wrote them) are kept, with the re-run stage's own added."""
    from seiko_core.export import _merged_quality
    from seiko_core.toy.build import refine_existing, refine_unet_existing, remeasure

    built = json.loads((finished_build / "QUALITY.json").read_text())
    (finished_build / "QUALITY.json").write_bytes(_merged_quality(json.dumps(built).encode(), "shapes-sd"))
    assert "timings_s" not in json.loads((finished_build / "QUALITY.json").read_text())  # the merged export's layout
    run, stage = {"refine-unet": (lambda m: refine_unet_existing(m, steps=1, threads=1), "unet_refine_s"),
                  "refine-encoder": (lambda m: refine_existing(m, steps=1), "refine_s"),
                  "quality": (lambda m: remeasure(m, samples=1), None)}[command]
    quality = run(finished_build)
    written = json.loads((finished_build / "QUALITY.json").read_text())
    assert written["timings_s"] == quality["timings_s"]
    kept = {k: v for k, v in written["timings_s"].items() if k != stage}
    assert kept == built["timings_s"] == {"unet_s": 1.0}
    assert stage is None or isinstance(written["timings_s"][stage], float)
