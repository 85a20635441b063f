"""seiko_core.memory: the saved-tensor counter against hand-computed sums, the autocast/attention emulation, the
truncation statistics against the product's own sampler of attached steps, and checkpointing on a tiny UNet."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seiko_core import memory
from seiko_core.memory import AutocastEmulation, SavedBytes, saved_bytes

F32 = 4


def _mlp(trainable: bool = True) -> torch.nn.Sequential:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    net.requires_grad_(trainable)
    return net


def test_counter_matches_hand_sum_on_an_mlp():
    # Linear(8,16) saves its input x (for W1's gradient) and W1 (for x's); Tanh saves its output h; Linear(16,4)
    # saves h again (same storage: counted once) and W2. Parameters are excluded when asked.
    net = _mlp()
    x = torch.randn(5, 8, requires_grad=True)
    x_bytes, h_bytes = 5 * 8 * F32, 5 * 16 * F32
    w_bytes = (16 * 8 + 4 * 16) * F32
    assert saved_bytes(lambda: net(x), exclude=[net]) == x_bytes + h_bytes
    assert saved_bytes(lambda: net(x)) == x_bytes + h_bytes + w_bytes
    # frozen weights, input without grad: nothing to differentiate, nothing saved
    frozen = _mlp(trainable=False)
    assert saved_bytes(lambda: frozen(torch.randn(5, 8)), exclude=[frozen]) == 0
    # frozen weights, input with grad: Linear 1 saves only W1 (excluded), Tanh its output, Linear 2 only W2
    assert saved_bytes(lambda: frozen(x), exclude=[frozen]) == h_bytes


def test_counter_counts_a_storage_once_and_by_phase():
    x = torch.randn(3, 7, requires_grad=True)
    with SavedBytes() as c:
        with c.phase("a"):
            y = x * x  # saves x twice: one storage
        with c.phase("b"):
            z = (x[:, :2] * y[:, :2]).sum()  # views: of x (already counted) and of y (its whole storage, new)
    assert c.by_phase["a"] == 3 * 7 * F32
    assert c.by_phase["b"] == 3 * 7 * F32  # y; x's view adds nothing
    assert c.total == 2 * 3 * 7 * F32
    z.backward()  # the hooks hand the tensors back unchanged
    torch.testing.assert_close(x.grad[:, 2:], torch.zeros(3, 5))


def test_meta_device_counts_like_a_real_device():
    net = _mlp()
    cpu = saved_bytes(lambda: net(torch.randn(5, 8, requires_grad=True)), exclude=[net])
    meta_net = _mlp().to("meta")
    meta = saved_bytes(lambda: meta_net(torch.randn(5, 8, device="meta", requires_grad=True)), exclude=[meta_net])
    assert meta == cpu > 0


def test_fused_attention_saves_no_attention_matrix():
    b, h, n, d = 1, 2, 256, 8
    q, k, v = (torch.randn(b, h, n, d, device="meta", requires_grad=True) for _ in range(3))
    qkv_out = 4 * b * h * n * d * F32
    matrix = b * h * n * n * F32
    math_path = saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    assert math_path >= matrix  # the meta device's fallback keeps the softmax
    with AutocastEmulation(None):
        fused = saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v))
    # q, k, v, the output, the log-sum-exp (b*h*n floats) and two int64 RNG scalars
    assert fused == qkv_out + b * h * n * F32 + 2 * 8
    with AutocastEmulation(None):
        out = F.scaled_dot_product_attention(q, k, v)
    assert out.shape == (b, h, n, d)


def test_autocast_emulation_follows_cuda_policy_and_counts_weight_casts():
    lin = torch.nn.Linear(8, 16).requires_grad_(False)
    x = torch.randn(5, 8, requires_grad=True)
    with AutocastEmulation(torch.bfloat16):
        y = lin(x)
        n = F.group_norm(y.view(5, 16, 1), 4)
        cast = saved_bytes(lambda: lin(x), exclude=[lin])
    assert y.dtype == torch.bfloat16 and n.dtype == torch.float32
    # the frozen fp32 weight is cast afresh and its bf16 copy is saved for x's gradient: 16*8*2 bytes
    assert cast == 16 * 8 * 2
    assert saved_bytes(lambda: lin(x), exclude=[lin]) == 0  # fp32: the saved weight is the parameter itself
    with pytest.raises(ValueError):
        AutocastEmulation(torch.float64)


def test_attached_step_statistics_match_the_product_sampler():
    from seiko_core.finetune import attached_steps

    steps = 50
    probs = memory.attached_probabilities(steps)
    assert sum(probs) == pytest.approx(25.0)  # sum (i+1)/51 = (50*51/2)/51
    dist = memory.attached_distribution(steps)
    assert sum(dist) == pytest.approx(1.0)
    assert sum(n * p for n, p in enumerate(dist)) == pytest.approx(25.0)
    assert 25 <= memory.attached_quantile(steps, 0.5) <= memory.attached_quantile(steps, 0.999) <= steps
    gen = torch.Generator().manual_seed(0)
    masks = torch.stack([attached_steps(steps, "per_step", 10, gen) for _ in range(4000)]).float()
    freq = masks.mean(0)
    assert torch.allclose(freq, torch.tensor(probs), atol=0.03)
    assert masks.sum(1).mean().item() == pytest.approx(25.0, abs=0.3)


def _tiny_modules():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
                            down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                            layers_per_block=1, norm_num_groups=8)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                            num_hidden_layers=1, vocab_size=100, projection_dim=32))
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                                               num_hidden_layers=2, image_size=16, patch_size=4,
                                                               projection_dim=16))
    return unet, vae, text, image


def test_checkpointing_reduces_the_unet_graph():
    unet, *_ = _tiny_modules()
    unet.train()
    x = torch.randn(4, 4, 8, 8, device="meta", requires_grad=True) * 1.0
    cond = torch.randn(4, 77, 32, device="meta")
    t = torch.tensor(10, device="meta")
    counts, units = {}, []
    for ckpt in (False, True):
        with memory.checkpoint_probe(unet, ckpt, units), AutocastEmulation(None):
            counts[ckpt] = saved_bytes(lambda: unet(x, t, encoder_hidden_states=cond).sample, exclude=[unet])
    assert 0 < counts[True] < counts[False]
    assert {u["unit"] for u in units} == {"ResnetBlock2D", "BasicTransformerBlock"}
    # no single unit's recompute exceeds the whole un-checkpointed graph
    assert max(u["recompute_bytes"] for u in units) < counts[False]
    assert not unet.is_gradient_checkpointing  # the probe leaves the model as it found it


def test_estimate_end_to_end_on_tiny_modules():
    modules = _tiny_modules()
    runs = {(p, c): memory.estimate(size=16, batch=2, precision=p, checkpointing=c, modules=modules)
            for p in ("fp32", "bf16") for c in (True, False)}
    r = runs[("fp32", True)]
    assert r["latent"] == 8 and r["unet_batch"] == 4 and r["expected_attached"] == pytest.approx(25.0)
    assert r["per_attached_step"]["unet_new"] > 0 and r["per_attached_step"]["unet_prev"] > 0
    assert r["vae_decode"] > 0 and r["image_encoder"] > 0
    expected_peak = (r["weights_total"] + r["optimizer_total"] + r["vae_decode"] + r["image_encoder"]
                     + r["backward_allowance"] + 25.0 * r["per_attached_step_total"] + 25.0 * r["per_detached_step"])
    assert r["peak_expected"] == pytest.approx(expected_peak)
    assert r["peak_expected"] <= r["peak_quantile"] <= r["peak_all_steps"]
    pt = memory.combine(r, truncation="per_trajectory", k=10)  # exactly K attached steps
    assert pt["expected_attached"] == pt["attached_at_quantile"] == 10
    assert pt["peak_expected"] == pytest.approx(expected_peak - 15 * r["per_attached_step_total"]
                                                + 15 * r["per_detached_step"])
    assert runs[("fp32", True)]["per_attached_step_total"] < runs[("fp32", False)]["per_attached_step_total"]
    assert r["lora_params"] > 0 and r["weights"]["lora_adapters_2"] == 2 * r["lora_params"] * F32
    assert "BasicTransformerBlock" in r["checkpointed_units"]
    assert "| **peak of one micro-batch** |" in memory.table(r)
    assert memory.grid_table(list(runs.values())).count("\n") == 1 + len(runs)
    # what-if: frozen weights held in bf16 (no per-op weight casts), the LoRA adapters kept in float32
    half = memory.estimate(size=16, batch=2, precision="bf16", checkpointing=False, weights="half", modules=modules)
    assert half["weights_dtype"] == "bfloat16" and half["weights"]["unet"] * 2 == r["weights"]["unet"]
    assert half["weights"]["lora_adapters_2"] == r["weights"]["lora_adapters_2"]
    assert half["per_attached_step_total"] < runs[("bf16", False)]["per_attached_step_total"]
    assert next(modules[0].parameters()).dtype == torch.float32  # the modules are handed back in float32
    with pytest.raises(ValueError):
        memory.estimate(size=16, precision="fp32", weights="half", modules=modules)


def test_verdict_thresholds():
    assert memory.verdict(10e9, 24) == "fits"
    assert memory.verdict(23e9, 24) == "tight"
    assert memory.verdict(25e9, 24) == "no"


def _estimate_on_meta(parts, *, checkpointing: bool) -> dict:
    """memory.measure on meta copies of ``parts``' modules (built from their configs), at their sizes, batch 2, fp32."""
    modules = (parts.unet, parts.pipeline.vae, parts.pipeline.text_encoder, parts.image_encoder)
    with torch.device("meta"):
        meta = [type(m).from_config(m.config) if hasattr(type(m), "from_config") else type(m)(m.config) for m in modules]
    return memory.measure(*meta, size=int(parts.unet.config.sample_size) * memory.vae_factor(parts.pipeline.vae),
                          batch=2, precision="fp32", checkpointing=checkpointing, image_size=parts.image_size,
                          text_tokens=parts.pipeline.tokenizer.model_max_length)


def test_attached_step_estimate_matches_the_product_rollout(random_parts):
    """The estimate's bytes per attached step against what the product's own rollout saves (real tensors, CPU): one
    more attached step (the last K of a per_trajectory schedule; the steps before the first attached one save
    nothing) adds the trained call's checkpointed graph, the previous model's call as the product runs it (one
    whole-call checkpoint: its input only) and the step's arithmetic. The estimate counted the previous call like
    the trained one, block by block: twice the graph the GPU measured (BENCHMARKS.md, "GPU figures")."""
    from seiko_core import lora
    from seiko_core.config import FinetuneConfig
    from seiko_core.finetune import rollout
    from seiko_core.sampling import DDIMSchedule

    parts = random_parts
    unet = parts.unet
    ft = FinetuneConfig()
    lora.add_adapter(unet, "prev", ft)
    trainable = lora.add_adapter(unet, "new", ft, init_from="prev")
    unet.requires_grad_(False)
    lora.activate(unet, "new")
    for p in trainable:
        p.requires_grad_(True)
    unet.train()
    unet.enable_gradient_checkpointing()
    schedule = DDIMSchedule.from_scheduler(parts.scheduler, 6)
    frozen = [unet, parts.pipeline.vae, parts.pipeline.text_encoder, parts.image_encoder]
    saved = {}
    for k in (2, 3):
        attached = torch.zeros(6, dtype=torch.bool)
        attached[-k:] = True
        with SavedBytes(frozen) as counter:
            traj = rollout(parts, ["a red circle", "a blue square"], [1, 2], schedule=schedule, eta=1.0, guidance=7.5,
                           attached=attached, adapter="new", reference="prev", trainable=trainable)
        assert traj.kl_steps == k
        saved[k] = counter.total
    product_step = saved[3] - saved[2]

    m = _estimate_on_meta(parts, checkpointing=True)
    estimate_step = sum(m["per_attached_step"].values())
    assert estimate_step == pytest.approx(product_step, rel=1e-3), (m["per_attached_step"], product_step)
    # the previous call keeps its input latent alone: batch x channels x side x side float32 values (a closed form;
    # the trained call's graph is 99.7% of the step, so the sum above would not see this part go wrong)
    side = int(unet.config.sample_size)
    assert m["per_attached_step"]["unet_prev"] == 2 * int(unet.config.in_channels) * side * side * 4
    # its recompute in backward is the whole call's graph: what the same call saves with checkpointing off
    plain = _estimate_on_meta(parts, checkpointing=False)
    assert m["prev_call_recompute"]["recompute_bytes"] == plain["per_attached_step"]["unet_prev"]
    assert plain["prev_call_recompute"] is None
    allowance = memory.combine(m)["backward_allowance_parts"]["unet_backward"]
    assert allowance >= m["prev_call_recompute"]["recompute_bytes"]


def test_truncation_help_names_the_sd15_presets_truncation_rightly(capsys):
    """`--truncation`'s help said per_step was "the sd15 preset's", but the preset fine-tunes per_trajectory (K = 10)
    since 4 Dec 2026 (seventh review): whatever truncation the help calls the sd15 preset's must be the preset's own."""
    import re

    from seiko_core.presets import sd15

    with pytest.raises(SystemExit):
        memory.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    named = re.findall(r"(per_step|per_trajectory|stratified)(?: and \w+)?: the sd15 preset's", text)
    assert all(name == sd15().finetune.truncation for name in named), (named, sd15().finetune.truncation)


def test_an_out_that_cannot_be_written_is_refused_before_the_estimate(tmp_path, monkeypatch, capsys):
    """`python -m seiko_core.memory --out F` first wrote F after the estimate (a minute with --grid): one under a file,
    or in a folder that takes no new file (/sys refuses even root), was a traceback then (seventh review). One
    sentence before the estimate now; and a good --out gets the JSON, with no temporary file beside it."""
    import json
    from pathlib import Path

    estimated = []
    monkeypatch.setattr(memory, "sd15_meta_modules", lambda: estimated.append(1))
    (tmp_path / "a-file").write_text("x")
    for out, reason in ((tmp_path / "a-file" / "m.json", f"{str(tmp_path / 'a-file')!r} is not a directory"),
                        (Path("/sys/seiko-memory.json"), None)):
        assert memory.main(["--out", str(out)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: cannot write --out {str(out)!r}: "), err
        assert reason is None or err[0].endswith(reason), err
    assert estimated == []
    monkeypatch.setattr(memory, "sd15_meta_modules", lambda: None)
    monkeypatch.setattr(memory, "estimate", lambda *a, **k: {"x": 1, "unet_batch": 2, "checkpointing": True,
                                                             "vae_checkpointing": False, "weights_dtype": "fp32",
                                                             "largest_unit": None})
    monkeypatch.setattr(memory, "table", lambda r: "")
    out = tmp_path / "new" / "m.json"
    assert memory.main(["--out", str(out)]) == 0
    assert json.loads(out.read_text())["x"] == 1 and [p.name for p in out.parent.iterdir()] == ["m.json"]
