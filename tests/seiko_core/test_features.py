import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from seiko_core.features import embed_images, embed_images_batched, from_uint8, preprocess, resized_shape
from seiko_core.models import ModelParts

SIDE = 16
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture(scope="module")
def parts() -> ModelParts:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(image_size=SIDE, patch_size=4, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, projection_dim=16)
    encoder = CLIPVisionModelWithProjection(cfg).eval().requires_grad_(False)
    return ModelParts(spec="tiny", pipeline=None, image_encoder=encoder, image_size=SIDE, image_mean=MEAN, image_std=STD,
                      device=torch.device("cpu"), dtype=torch.float32)


def processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": SIDE}, crop_size={"height": SIDE, "width": SIDE},
                              image_mean=list(MEAN), image_std=list(STD))


def smooth_uint8(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    """Low-frequency images (few 8-bit clipping artefacts in PIL's two-pass resize)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    big = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    return (big * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_resized_shape_truncates_like_clip():
    assert resized_shape(16, 16, 16) == (16, 16)
    assert resized_shape(24, 20, 16) == (19, 16)
    assert resized_shape(20, 33, 16) == (16, 26)


def test_preprocess_equals_processor_at_equal_size():
    u8 = np.random.default_rng(0).integers(0, 256, size=(3, SIDE, SIDE, 3), dtype=np.uint8)
    ref = processor()(images=list(u8), return_tensors="pt")["pixel_values"]
    ours = preprocess(from_uint8(u8), SIDE, MEAN, STD)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w", [(24, 20), (20, 37), (12, 10)])
def test_preprocess_close_to_processor_when_resizing(h, w):
    u8 = smooth_uint8(2, h, w)
    ref = processor()(images=list(u8), return_tensors="pt")["pixel_values"]
    ours = preprocess(from_uint8(u8), SIDE, MEAN, STD)
    assert ours.shape == ref.shape == (2, 3, SIDE, SIDE)
    diff_px = ((ours - ref) * torch.tensor(STD).view(1, 3, 1, 1) * 255).abs()
    assert diff_px.mean() < 1.0 and diff_px.max() < 4.0


def test_embed_matches_transformers_pipeline(parts):
    u8 = np.random.default_rng(1).integers(0, 256, size=(4, SIDE, SIDE, 3), dtype=np.uint8)
    pixels = processor()(images=list(u8), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = torch.nn.functional.normalize(parts.image_encoder(pixel_values=pixels).image_embeds, dim=-1)
    ours = embed_images(parts, from_uint8(u8))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)


def test_embed_unit_norm_and_gradients_reach_images(parts):
    images = torch.rand(3, 3, 24, 20, requires_grad=True)
    emb = embed_images(parts, images)
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    (emb * torch.randn_like(emb)).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_batched_equals_unbatched_without_grad(parts):
    images = torch.rand(5, 3, SIDE, SIDE, requires_grad=True)
    batched = embed_images_batched(parts, images, batch_size=2)
    assert not batched.requires_grad
    torch.testing.assert_close(batched, embed_images(parts, images).detach(), atol=1e-5, rtol=1e-5)
    assert embed_images_batched(parts, images[:0]).shape == (0, 16)


def test_bad_inputs_have_clear_errors(parts):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        embed_images(parts, torch.rand(3, SIDE, SIDE))
    with pytest.raises(ValueError, match="floating point"):
        preprocess(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), 8, MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        from_uint8(np.zeros((1, 8, 8, 3), np.float32))
