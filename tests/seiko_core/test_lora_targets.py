"""The shapes preset's adapter reaches the pooled-caption path of the UNet, and an older adapter without it carries on."""

import dataclasses

import torch

from seiko_core import lora
from seiko_core.presets import preset


def _predict(unet, x, t, states):
    with torch.no_grad():
        return unet(x, t, encoder_hidden_states=states).sample


def test_the_shapes_adapter_reaches_the_pooled_caption_projection(random_parts):
    unet = random_parts.unet
    ft = preset("shapes").finetune
    lora.add_adapter(unet, "round_1", ft, seed=0)
    lora.activate(unet, "round_1")
    names = [n for n, _ in unet.named_parameters() if "add_embedding.proj.lora_B.round_1" in n]
    assert names, "no LoRA on add_embedding.proj"
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)), torch.tensor([500])
    states = torch.randn(1, 16, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))
    before = _predict(unet, x, t, states)
    with torch.no_grad():  # only this layer's B moves: the prediction must change through the pooled path
        b = dict(unet.named_parameters())[names[0]]  # (a uniform shift would vanish in the LayerNorm after proj)
        b.add_(0.5 * torch.randn(b.shape, generator=torch.Generator().manual_seed(7)))
    assert not torch.allclose(before, _predict(unet, x, t, states), atol=1e-6)


def test_a_round_started_from_an_adapter_without_that_target_equals_it(random_parts):
    """An experiment trained before the new target: round k+1 starts as round k's model exactly."""
    unet = random_parts.unet
    new = preset("shapes").finetune
    old = dataclasses.replace(new, target_modules=("to_q", "to_k", "to_v", "to_out.0"))
    params = lora.add_adapter(unet, "round_1", old, seed=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    lora.add_adapter(unet, "round_2", new, init_from="round_1", seed=1)
    x, t = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3)), torch.tensor([300, 700])
    states = torch.randn(2, 16, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(4))
    lora.activate(unet, lora.BASE)
    base = _predict(unet, x, t, states)
    lora.activate(unet, "round_1")
    one = _predict(unet, x, t, states)
    lora.activate(unet, "round_2")
    two = _predict(unet, x, t, states)
    assert not torch.allclose(base, one, atol=1e-5)  # the older adapter does something
    torch.testing.assert_close(two, one, atol=1e-6, rtol=1e-5)


def test_an_adapter_with_the_pooled_caption_target_saves_and_loads_whole(random_parts, random_model_dir, tmp_path):
    """Every tensor lands again through diffusers' loader (before the fix: 2 of 114), and the model is the same."""
    from seiko_core.models import load_model

    unet = random_parts.unet
    params = lora.add_adapter(unet, "round_1", preset("shapes").finetune, seed=0)
    with torch.no_grad():
        for p in params:
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    lora.activate(unet, "round_1")
    x, t = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(5)), torch.tensor([400])
    states = torch.randn(1, 16, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(6))
    want = _predict(unet, x, t, states)
    lora.save_adapter(unet, "round_1", tmp_path / "a")
    fresh = load_model(str(random_model_dir), device="cpu")
    lora.load_adapter(fresh, tmp_path / "a", "loaded")
    assert any("add_embedding.proj.lora_B.loaded" in n for n, _ in fresh.unet.named_parameters())
    torch.testing.assert_close(_predict(fresh.unet, x, t, states), want, atol=1e-6, rtol=1e-5)


def test_the_sd15_adapter_starts_as_the_references_and_the_shapes_one_as_before(random_parts):
    """The reference's LoRA layers (diffusers' LoRALinearLayer, which SEIKO's code uses) draw A from N(0, 1/r^2); peft's
    default draws it uniform with std 1/sqrt(3 fan_in), 8-15x smaller at SD 1.5's widths, so each Adam step at the
    reference's lr moved the model far less than the reference's (found by review). The sd15 preset starts as the
    reference (finetune.lora_init="gaussian"); the shapes preset keeps peft's start, to which its lr was tuned. B is
    zero either way: a fresh adapter changes nothing. Checked against the two closed forms."""
    import math

    unet = random_parts.unet
    for name, preset_name in (("round_1", "sd15"), ("round_2", "shapes")):
        ft = dataclasses.replace(preset("shapes").finetune, lora_init=preset(preset_name).finetune.lora_init)
        lora.add_adapter(unet, name, ft, seed=0)
        a = {n: p for n, p in unet.named_parameters() if f"lora_A.{name}." in n}
        b = [p for n, p in unet.named_parameters() if f"lora_B.{name}." in n]
        assert a and b and all(float(p.abs().max()) == 0.0 for p in b)
        for n, p in a.items():
            fan_in = p.shape[1]
            expected = 1 / ft.lora_rank if preset_name == "sd15" else 1 / math.sqrt(3 * fan_in)
            if p.numel() >= 256:  # enough draws for the spread to be read to 15%
                assert abs(float(p.std()) / expected - 1) < 0.15, (n, float(p.std()), expected)
    assert preset("sd15").finetune.lora_init == "gaussian" and preset("shapes").finetune.lora_init == "kaiming"
