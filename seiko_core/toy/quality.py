"""Measured quality of a built shapes model: fidelity of fresh samples and the encoder's zero-shot accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..stats import wilson_ci95
from . import dataset as ds
from .pixels import read_batch

FIDELITY_ATTRS = ("shape", "color", "background", "size")


def fidelity_prompts(n: int, seed: int) -> tuple[list[str], list[ds.ShapeSpec]]:
    """Prompts naming shape, colour, background and size (position left free), drawn from the training frequencies."""
    specs = ds.sample_specs(n, seed)
    keep = {a: a in FIDELITY_ATTRS for a in ds.ATTRIBUTES}
    return [ds.caption(s, keep) for s in specs], specs


def fidelity(images_u8: np.ndarray, specs: list[ds.ShapeSpec]) -> dict[str, float]:
    """Fractions of images whose pixel reading matches the named colour, background and shape."""
    readings = read_batch(images_u8)
    return {
        "color_fidelity": float(np.mean([r.color == s.color for r, s in zip(readings, specs)])),
        "background_fidelity": float(np.mean([r.background == s.background for r, s in zip(readings, specs)])),
        "shape_fidelity": float(np.mean([r.shape == s.shape for r, s in zip(readings, specs)])),
    }


@torch.no_grad()
def fidelity_ci95(generated: dict[str, float], n: int) -> dict[str, list[float]]:
    """The 95% Wilson interval of each fidelity measured on ``n`` samples: 96 samples leave about +-0.08 around a
    shape fidelity of 0.8, so a figure near its target is reported with the interval that says whether it is met."""
    return {key: [round(v, 3) for v in wilson_ci95(round(share * n), n)] for key, share in generated.items()}


def zero_shot_accuracy(model_dir: Path, parts, n: int = 1000, seed: int = 424242) -> dict[str, float]:
    """The image encoder's zero-shot accuracy per attribute on held-out drawn images.

    Each attribute value becomes a prompt ("a red shape", "a circle", "a shape on a gray background",
    "a small shape", "a shape at the left"); an image is classified by its most similar prompt.
    """
    from safetensors.torch import load_file

    proj = load_file(str(model_dir / "text_projection.safetensors"))["text_projection.weight"]
    data = ds.generate(n, seed=seed)
    pix = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(parts.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(parts.image_std).view(1, 3, 1, 1)
    img = F.normalize(parts.image_encoder(pixel_values=((pix - mean) / std).to(parts.device)).image_embeds, dim=-1).cpu()
    codes = data.attribute_codes()
    templates = {
        "shape": "a {}", "color": "a {} shape", "background": "a shape on a {} background",
        "size": "a {} shape", "position": "a shape at the {}",
    }
    out = {}
    tok = parts.tokenizer
    for attr, tmpl in templates.items():
        prompts = [tmpl.format(v) for v in ds.VOCAB[attr]]
        ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        pooled = parts.text_encoder(ids.to(parts.device)).pooler_output.cpu()
        txt = F.normalize(pooled @ proj.T, dim=-1)
        pred = (img @ txt.T).argmax(1).numpy()
        out[attr] = float((pred == codes[attr]).mean())
    return out


def measure_quality(model_dir: str | Path, cfg) -> dict:
    """Sample fresh images from the saved model (through the production loader) and measure them."""
    from ..models import load_model
    from ..sampling import grid, sample, to_uint8

    model_dir = Path(model_dir)
    parts = load_model(str(model_dir), device="cpu")
    prompts, specs = fidelity_prompts(cfg.quality_samples, seed=cfg.seed + 1000)
    seeds = list(range(10_000, 10_000 + len(prompts)))
    images = sample(parts, prompts, seeds, steps=cfg.quality_steps, guidance=cfg.quality_guidance, eta=1.0, batch_size=32)
    u8 = to_uint8(images)
    drawn = np.stack([ds.render(s) for s in specs])
    grid(images[:32], cols=8).save(model_dir / "samples.png")
    zs = zero_shot_accuracy(model_dir, parts)
    return {
        "samples": len(prompts),
        "sampler": {"ddim_steps": cfg.quality_steps, "guidance": cfg.quality_guidance, "eta": 1.0},
        "generated": (generated := fidelity(u8, specs)),
        "generated_ci95": fidelity_ci95(generated, len(prompts)),
        "pixel_check_on_drawn_images": fidelity(drawn, specs),
        "encoder_zero_shot_accuracy": zs,
        "encoder_zero_shot_mean": float(np.mean([zs[a] for a in ("shape", "color", "background", "size")])),
        "targets": {"color_fidelity": 0.85, "background_fidelity": 0.9, "encoder_attribute_accuracy": 0.9},
    }


def _ci(quality: dict, key: str) -> str:
    """" (95% CI lo-hi)" for the card where QUALITY.json has the interval (files written before 5 Dec 2026 have none)."""
    lo_hi = quality.get("generated_ci95", {}).get(key)
    return "" if lo_hi is None else f" (95% CI {lo_hi[0]:.2f}-{lo_hi[1]:.2f})"


def write_model_card(model_dir: str | Path, quality: dict) -> None:
    model_dir = Path(model_dir)
    g, zs = quality["generated"], quality["encoder_zero_shot_accuracy"]
    cfg = quality["build_config"]
    t = quality.get("timings_s", {})
    unet_refine = encoder_refine = ""
    if cfg.get("unet_refine_steps", 0) > 0:
        unet_refine = (f"\n- UNet refinement: {cfg['unet_refine_steps']} more steps at learning rate {cfg['unet_refine_lr']}, "
                       f"captions drawn so that every named shape is drawn as often ({t.get('unet_refine_s', '?')} s);")
    if cfg.get("clip_refine_steps", 0) > 0:
        encoder_refine = (f"\n- image encoder refinement: {cfg['clip_refine_steps']} contrastive steps with the text tower "
                          f"frozen ({t.get('refine_s', '?')} s);")
    card = f"""# shapes-sd: the embedded Stable-Diffusion-shaped model

A tiny model of the same architecture family as Stable Diffusion 1.x (CLIP text encoder, `AutoencoderKL`,
`UNet2DConditionModel` with cross-attention, DDIM scheduler), trained from scratch by
`python -m seiko_core.toy build --out models/shapes-sd` on procedurally drawn, captioned shapes
(32x32 pixels, 16x16x4 latents). It is the project's default model: it loads offline, through the same
code path as real SD, and samples a batch in seconds on two CPU cores. It also holds a CLIP vision tower
(`image_encoder`), trained contrastively with the text tower, whose embeddings are the reward model's
features (the role CLIP ViT-L/14 plays for real SD).

Load it with plain diffusers:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("models/shapes-sd", local_files_only=True)
image = pipe("a large red circle on a white background", num_inference_steps=30, guidance_scale=4).images[0]
```

![samples](samples.png)

## Training (seed {cfg['seed']}, deterministic, CPU)
- data: {cfg['n_images']} drawn images; captions name a random subset of the attributes;
- CLIP: {cfg['clip_steps']} contrastive steps at batch {cfg['clip_batch']} with soft targets (a partial caption matches every image it is true of) ({t.get('clip_s', '?')} s);
- VAE: {cfg['vae_steps']} steps at batch {cfg['vae_batch']}, MSE + L1 + small KL ({t.get('vae_s', '?')} s);
- UNet: {cfg['unet_steps']} steps at batch {cfg['unet_batch']}, epsilon prediction, SD 1.x scaled-linear betas,
  {cfg['caption_dropout']:.0%} caption dropout for classifier-free guidance, EMA {cfg['ema_decay']} ({t.get('unet_s', '?')} s);{unet_refine}{encoder_refine}

## Measured quality (`QUALITY.json`, written by the build)
On {quality['samples']} fresh samples ({quality['sampler']['ddim_steps']} DDIM steps, guidance {quality['sampler']['guidance']}) from prompts naming shape,
colour, background and size, read back by a pixel-level check (nearest palette colour; best-IoU shape template):

| figure | measured | target |
|---|---|---|
| colour fidelity | {g['color_fidelity']:.3f}{_ci(quality, 'color_fidelity')} | 0.85 |
| background fidelity | {g['background_fidelity']:.3f}{_ci(quality, 'background_fidelity')} | 0.90 |
| shape fidelity | {g['shape_fidelity']:.3f}{_ci(quality, 'shape_fidelity')} | 0.85 |
| image encoder zero-shot accuracy (shape / colour / background / size, mean) | {quality['encoder_zero_shot_mean']:.3f} | 0.90 |

Zero-shot accuracy per attribute on 1,000 held-out drawn images: {json.dumps({k: round(v, 3) for k, v in zs.items()})}.
The same pixel check on the drawn (ground-truth) images scores {json.dumps({k: round(v, 3) for k, v in quality['pixel_check_on_drawn_images'].items()})},
which bounds what it can confirm.

## Vocabulary and training frequencies
Frequencies are deliberately uneven: purple, pink and cyan shapes, stars and crosses, and the brown
background are rare, so a rater's preference can lie where the pretrained model seldom goes.

{ds.vocabulary_table()}
"""
    card = card.replace(";\n\n## Measured quality", ".\n\n## Measured quality")  # the training list's last item
    (model_dir / "README.md").write_text(card)
