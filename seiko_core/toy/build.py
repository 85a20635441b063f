"""Train the embedded "shapes" Stable Diffusion from scratch, on CPU, deterministically.

Stages (each logs its progress):
  1. data: captioned shapes images (``dataset.generate``);
  2. CLIP: text and vision towers trained contrastively; targets are soft, because a partial
     caption ("a red shape") truly matches every red image in the batch;
  3. VAE: ``AutoencoderKL`` 32x32x3 <-> 16x16x4, latent scaling factor = 1 / std of the latents;
  4. UNet: ``UNet2DConditionModel`` on latents, epsilon prediction, the SD 1.x noise schedule,
     10% caption dropout (the empty prompt) so classifier-free guidance works, EMA weights;
  5. save as a diffusers ``StableDiffusionPipeline`` directory (safetensors only; the frozen CLIP
     vision tower is the pipeline's ``image_encoder``, the reward features' encoder);
  6. quality: measured colour / background / shape fidelity of fresh samples and zero-shot
     attribute accuracy of the image encoder, written to ``QUALITY.json`` and the model card.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import atomic
from . import dataset as ds
from .tokenizer import MODEL_MAX_LENGTH, save_tokenizer

log = logging.getLogger("seiko.toy")


@dataclass
class BuildConfig:
    seed: int = 0
    n_images: int = 40000  # training images (about 6 s to draw)
    clip_steps: int = 1200  # contrastive steps at clip_batch (about 0.3 s each on 2 cores)
    clip_batch: int = 192
    clip_lr: float = 2e-3
    # Encoder refinement, the build's last stage: the text tower frozen (so the UNet's conditioning does not move),
    # the vision tower, both projections and the logit scale trained on with the same contrastive loss. The joint
    # stage above spends most of its steps on colour and background (its loss sits near 2.8 until half-way); with
    # 40k images it ended with shape zero-shot accuracy 0.45 (BENCHMARKS.md, "A better embedded model").
    clip_refine_steps: int = 4000  # about 0.26 s each on 2 cores
    clip_refine_lr: float = 2e-3  # the joint stage's
    vae_steps: int = 1200  # about 0.35 s each on 2 cores
    vae_batch: int = 32
    vae_lr: float = 1e-3
    unet_steps: int = 8000  # about 0.45 s each on 2 cores
    unet_batch: int = 32
    unet_lr: float = 1e-3
    # UNet refinement (after the UNet stage): the EMA UNet trained on with captions that name the shape drawn so that
    # every shape gets the same share of them (``caption_weights``); the empty prompt keeps uniform draws. 0 = off.
    # 2,000 steps (about 17 minutes on 2 cores) raised shape fidelity 0.760 -> 0.813 on QUALITY.json's samples and
    # 0.797 -> 0.854 on 192 fresh ones at the app's 10 steps (BENCHMARKS.md, lever P).
    unet_refine_steps: int = 2000
    unet_refine_lr: float = 3e-4
    # The refinement's loss weighting: None = the UNet stage's ``min_snr_gamma``; 0 = plain MSE, whose weight on the
    # nearly noise-free timesteps (where fine detail such as a small square's corners is decided) is not capped.
    unet_refine_min_snr_gamma: float | None = None
    caption_dropout: float = 0.1  # probability of the empty prompt, for classifier-free guidance
    ema_decay: float = 0.999
    text_width: int = 64
    vision_width: int = 64
    unet_channels: tuple[int, int] = (32, 64)
    # Attention heads per transformer block (diffusers' ``attention_head_dim`` argument is the head count). The first
    # build had 8 (head widths 4 and 8); 2 heads (widths 16 and 32) made a training step 1.7x faster on 2 cores
    # (0.77 -> 0.45 s at batch 32): CPU attention kernels are inefficient at tiny head widths.
    unet_heads: int = 2
    # The caption, attention-pooled, is added to the timestep embedding (diffusers' ``addition_embed_type="text"``):
    # every ResNet block then gets the prompt as a per-channel shift, the path global attributes (the background,
    # the shape's colour) need; cross-attention alone bound them poorly (QUALITY.json of the first build).
    unet_text_pool: bool = True
    # Min-SNR-gamma loss weighting (Hang et al. 2023) for epsilon prediction: min(SNR, gamma) / SNR; 0 = plain MSE.
    min_snr_gamma: float = 5.0
    quality_samples: int = 480  # fresh samples for the fidelity figures: a 95% half-width of about 0.035 near 0.85
    quality_steps: int = 30  # DDIM steps when measuring quality
    quality_guidance: float = 7.5  # the reference CFG scale; measured better than 4.0 on this model
    threads: int = 2

    @classmethod
    def quick(cls) -> BuildConfig:
        """A few steps per stage: exercises the whole build in seconds (tests), makes a useless model."""
        return cls(n_images=512, clip_steps=4, clip_batch=64, clip_refine_steps=4, vae_steps=4, vae_batch=16, unet_steps=4,
                   unet_batch=16, unet_refine_steps=4, quality_samples=8, quality_steps=4)


def _log_every(step: int, total: int, start: float, what: str, **metrics: float) -> None:
    if step == 1 or step == total or step % max(1, total // 20) == 0:
        el = time.time() - start
        eta = el / step * (total - step)
        vals = " ".join(f"{k}={v:.4f}" for k, v in metrics.items())
        log.info("%s step %d/%d %s (%.0fs elapsed, eta %.0fs)", what, step, total, vals, el, eta)


def _lr(step: int, total: int, base: float, warmup: int = 100) -> float:
    warm = min(1.0, step / max(1, min(warmup, total // 10 + 1)))
    return base * warm * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))


def to_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# --------------------------------------------------------------------------------------------- CLIP
def make_clip(cfg: BuildConfig, vocab_size: int, bos: int, eos: int):
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig

    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=cfg.text_width, intermediate_size=cfg.text_width * 2,
                          num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MODEL_MAX_LENGTH,
                          projection_dim=64, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    vision = CLIPVisionConfig(image_size=ds.IMAGE_SIZE, patch_size=4, hidden_size=cfg.vision_width,
                              intermediate_size=cfg.vision_width * 2, num_hidden_layers=3, num_attention_heads=4,
                              projection_dim=64, num_channels=3)
    return CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=64))


def consistency(keeps: list[dict[str, bool]], specs: list[ds.ShapeSpec], idx: np.ndarray) -> torch.Tensor:
    """M[i, j] = 1 when caption i (of sample idx[i]) is true of image j (of sample idx[j])."""
    n = len(idx)
    m = torch.ones(n, n)
    for a in ds.ATTRIBUTES:
        vals = np.asarray([ds.VOCAB[a].index(specs[k].attribute(a)) for k in idx])
        named = torch.tensor([keeps[k][a] for k in idx])
        same = torch.from_numpy(vals[:, None] == vals[None, :])
        m *= torch.where(named[:, None], same.float(), torch.ones(n, n))
    return m


def contrastive_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of ``logits`` (text, image) against the normalised consistency matrix ``target``."""
    loss_t = -(F.log_softmax(logits, 1) * target / target.sum(1, keepdim=True)).sum(1).mean()
    loss_i = -(F.log_softmax(logits.T, 1) * target.T / target.T.sum(1, keepdim=True)).sum(1).mean()
    return 0.5 * (loss_t + loss_i)


def train_clip(cfg: BuildConfig, data: ds.ShapesData, tokenizer, gen: torch.Generator):
    model = make_clip(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    ids = tokenizer(data.captions, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True,
                    return_tensors="pt").input_ids
    pixels = to_pixels(data.images)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.01)
    start = time.time()
    for step in range(1, cfg.clip_steps + 1):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.clip_steps, cfg.clip_lr)
        idx = torch.randint(0, len(ids), (cfg.clip_batch,), generator=gen).numpy()
        out = model(input_ids=ids[idx], pixel_values=pixels[idx])
        loss = contrastive_loss(out.logits_per_text, consistency(data.keeps, data.specs, idx))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _log_every(step, cfg.clip_steps, start, "clip", loss=loss.item())
    model.eval()
    return model


@torch.no_grad()
def _pooled_captions(text_encoder, tokenizer, captions: list[str], batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled output per distinct caption, index of each caption's row)."""
    ids, where = _distinct_ids(tokenizer, captions)
    pooled = torch.cat([text_encoder(ids[i:i + batch]).pooler_output for i in range(0, len(ids), batch)])
    return pooled, torch.tensor([where[c] for c in captions])


def refine_encoder(cfg: BuildConfig, data: ds.ShapesData, tokenizer, text_encoder, image_encoder, text_proj: dict) -> dict:
    """Train ``image_encoder`` (tower and projection) and ``text_proj`` on, ``text_encoder`` frozen; in place.

    Runs on its own generator (seed + 1) inside a forked global RNG, so adding or re-running this stage leaves every
    other stage of a build bit-for-bit as it was: ``refine-encoder`` on a finished build gives the model a full build
    gives. Returns the new ``text_proj``.
    """
    if cfg.clip_refine_steps <= 0:
        return text_proj
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        text_encoder.eval().requires_grad_(False)
        pooled, cap_row = _pooled_captions(text_encoder, tokenizer, data.captions)
        proj = torch.nn.Parameter(text_proj["text_projection.weight"].clone())
        scale = torch.nn.Parameter(text_proj["logit_scale"].clone().reshape(()))
        image_encoder.train().requires_grad_(True)
        params = [*image_encoder.parameters(), proj, scale]
        opt = torch.optim.AdamW(params, lr=cfg.clip_refine_lr, weight_decay=0.01)
        pixels = to_pixels(data.images)
        start = time.time()
        for step in range(1, cfg.clip_refine_steps + 1):
            for g in opt.param_groups:
                g["lr"] = _lr(step, cfg.clip_refine_steps, cfg.clip_refine_lr)
            idx = torch.randint(0, len(cap_row), (cfg.clip_batch,), generator=gen).numpy()
            img = F.normalize(image_encoder(pixel_values=pixels[idx]).image_embeds, dim=-1)
            txt = F.normalize(pooled[cap_row[idx]] @ proj.T, dim=-1)
            logits = scale.clamp(max=math.log(100.0)).exp() * txt @ img.T  # (text, image); scale capped at 100 as in CLIP
            loss = contrastive_loss(logits, consistency(data.keeps, data.specs, idx))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _log_every(step, cfg.clip_refine_steps, start, "encoder refine", loss=loss.item())
        image_encoder.eval().requires_grad_(False)
    return {"text_projection.weight": proj.detach().clone(), "logit_scale": scale.detach().clone().reshape(1)}


def split_clip(model):
    """The pipeline's text encoder, image encoder and the text projection (for zero-shot checks)."""
    from transformers import CLIPTextModel, CLIPVisionModelWithProjection

    text = CLIPTextModel(model.config.text_config)
    text.load_state_dict(model.text_model.state_dict())
    vision = CLIPVisionModelWithProjection(model.config.vision_config)
    vision.vision_model.load_state_dict(model.vision_model.state_dict())
    vision.visual_projection.load_state_dict(model.visual_projection.state_dict())
    proj = {"text_projection.weight": model.text_projection.weight.detach().clone(),
            "logit_scale": model.logit_scale.detach().clone().reshape(1)}
    return text.eval(), vision.eval(), proj


# ---------------------------------------------------------------------------------------------- VAE
def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
                         latent_channels=4, norm_num_groups=16, sample_size=ds.IMAGE_SIZE)


def train_vae(cfg: BuildConfig, pixels: torch.Tensor, gen: torch.Generator):
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    start = time.time()
    for step in range(1, cfg.vae_steps + 1):
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg.vae_steps, cfg.vae_lr)
        x = pixels[torch.randint(0, len(pixels), (cfg.vae_batch,), generator=gen)]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _log_every(step, cfg.vae_steps, start, "vae", mse=mse.item(), kl=kl.item())
    vae.eval()
    return vae


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([vae.encode(pixels[i:i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)])


# --------------------------------------------------------------------------------------------- UNet
def make_unet(cfg: BuildConfig):
    from diffusers import UNet2DConditionModel

    c0, c1 = cfg.unet_channels
    return UNet2DConditionModel(
        sample_size=ds.IMAGE_SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(c0, c1), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads, norm_num_groups=16,
        **({"addition_embed_type": "text", "addition_embed_type_num_heads": 4} if cfg.unet_text_pool else {}),
    )


def make_schedulers():
    from diffusers import DDIMScheduler, DDPMScheduler

    common = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    ddim = DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")
    return DDPMScheduler(**common, prediction_type="epsilon"), ddim


@torch.no_grad()
def caption_states(text_encoder, tokenizer, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique captions' hidden states (U, L, D) and each caption's index into them (the frozen encoder runs once)."""
    ids, where = _distinct_ids(tokenizer, captions, extra=("",))
    states = torch.cat([text_encoder(ids[i:i + 512])[0] for i in range(0, len(ids), 512)])
    return states, torch.tensor([where[c] for c in captions]), where[""]


def _distinct_ids(tokenizer, captions: list[str], extra: tuple[str, ...] = ()) -> tuple[torch.Tensor, dict[str, int]]:
    """Token ids of the distinct captions (and ``extra``), sorted, and each caption's row."""
    uniq = sorted(set(captions) | set(extra))
    ids = tokenizer(uniq, padding="max_length", max_length=MODEL_MAX_LENGTH, truncation=True, return_tensors="pt").input_ids
    return ids, {c: i for i, c in enumerate(uniq)}


def min_snr_weighted_mse(pred: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Epsilon-prediction MSE with each sample weighted by min(SNR, gamma) / SNR, SNR = alpha_bar / (1 - alpha_bar).

    gamma = 0 gives the plain MSE. The weight caps the share of the nearly noise-free timesteps (high SNR), whose
    loss is about fine detail, and leaves the noisy ones (where colours and layout are decided) at full weight.
    """
    per_sample = (pred - noise).pow(2).flatten(1).mean(1)
    if gamma <= 0:
        return per_sample.mean()
    snr = alpha_bar / (1 - alpha_bar)
    return (per_sample * torch.clamp(snr, max=gamma) / snr).mean()


@torch.no_grad()
def ema_update(shadow: list[torch.Tensor], live: list[torch.Tensor], decay: float) -> None:
    """shadow <- decay * shadow + (1 - decay) * live, in place, as two fused multi-tensor ops.

    The same arithmetic, element by element, as a loop of ``mul_(decay).add_(v, alpha=1 - decay)`` over the tensors
    (bit-identical, checked in the tests), at a fifth of its cost: 1.0 against 5.4 ms a step for the shapes UNet's
    299 tensors on 2 cores, about 35 s of an 8,000-step build.
    """
    torch._foreach_mul_(shadow, decay)
    torch._foreach_add_(shadow, live, alpha=1 - decay)


def train_unet(cfg: BuildConfig, latents: torch.Tensor, states: torch.Tensor, cap_idx: torch.Tensor, empty_idx: int,
               gen: torch.Generator):
    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(0, len(latents), (n,), generator=gen)
        return idx, torch.rand(n, generator=gen) < cfg.caption_dropout

    unet = make_unet(cfg)
    _fit_unet(cfg, unet, latents, states, cap_idx, empty_idx, gen, draw, steps=cfg.unet_steps, lr=cfg.unet_lr,
              warmup=200, what="unet", gamma=cfg.min_snr_gamma)
    return unet


def caption_weights(data: ds.ShapesData) -> torch.Tensor:
    """Per training image, a sampling weight that is a function of its caption alone.

    A caption that names the shape gets ``n_named / (n_shapes * n_named_with_that_shape)``, so every named shape gets
    the same share of the named captions' draws (which together keep their share); a caption that does not name the
    shape gets 1. Because the weight depends on the caption only, each caption's images are still drawn uniformly:
    what the UNet learns to draw for a caption (p(image | caption)) is unchanged, only how often each caption is
    trained. The rare shapes (star 7%, cross 5% of the images) thereby get as many named examples as the common ones.
    """
    named = np.array([k["shape"] for k in data.keeps])
    shapes = np.array([s.shape for s in data.specs])
    w = np.ones(len(shapes))
    kinds = sorted(set(shapes[named]))
    for shape in kinds:
        rows = named & (shapes == shape)
        w[rows] = named.sum() / (len(kinds) * rows.sum())
    return torch.from_numpy(w)


def refine_unet(cfg: BuildConfig, unet, latents: torch.Tensor, states: torch.Tensor, cap_idx: torch.Tensor,
                empty_idx: int, weights: torch.Tensor) -> None:
    """Train the finished (EMA) UNet on with captions drawn by ``weights`` (``caption_weights``); in place.

    The empty prompt (classifier-free guidance's unconditional branch) keeps drawing images uniformly, so the
    unconditional distribution does not move either. Runs on its own generator (seed + 2) inside a forked global
    RNG: the stage leaves every other stage of a build bit-for-bit as it was, and ``refine-unet`` on a finished
    build gives the model a full build gives.
    """
    if cfg.unet_refine_steps <= 0:
        return
    with torch.random.fork_rng(devices=[]):
        gen = torch.Generator().manual_seed(cfg.seed + 2)

        def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
            drop = torch.rand(n, generator=gen) < cfg.caption_dropout
            weighted = torch.multinomial(weights, n, replacement=True, generator=gen)
            uniform = torch.randint(0, len(latents), (n,), generator=gen)
            return torch.where(drop, uniform, weighted), drop

        unet.train()
        gamma = cfg.min_snr_gamma if cfg.unet_refine_min_snr_gamma is None else cfg.unet_refine_min_snr_gamma
        _fit_unet(cfg, unet, latents, states, cap_idx, empty_idx, gen, draw, steps=cfg.unet_refine_steps,
                  lr=cfg.unet_refine_lr, warmup=100, what="unet refine", gamma=gamma)


def _fit_unet(cfg: BuildConfig, unet, latents: torch.Tensor, states: torch.Tensor, cap_idx: torch.Tensor,
              empty_idx: int, gen: torch.Generator, draw, *, steps: int, lr: float, warmup: int, what: str,
              gamma: float) -> None:
    """``steps`` denoising steps on batches ``draw(batch) -> (image rows, caption dropped)``, the loss weighted by
    min-SNR ``gamma`` (0: plain MSE); the UNet ends holding the EMA of its weights over the run (a fresh average that
    starts from the weights it came with)."""
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    state = unet.state_dict()  # detached views of the parameters: they see every optimiser step
    floats = [k for k, v in state.items() if v.dtype.is_floating_point]
    live, shadow = [state[k] for k in floats], [ema[k] for k in floats]
    ddpm, _ = make_schedulers()
    acp = ddpm.alphas_cumprod
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=0.01)
    start = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = _lr(step, steps, lr, warmup=warmup)
        idx, drop = draw(cfg.unet_batch)
        x0 = latents[idx]
        ci = cap_idx[idx].clone()
        ci[drop] = empty_idx
        t = torch.randint(0, ddpm.config.num_train_timesteps, (len(idx),), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise  # q(x_t | x_0), DDPM eq. 4
        pred = unet(xt, t, encoder_hidden_states=states[ci]).sample
        loss = min_snr_weighted_mse(pred, noise, acp[t], gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema_update(shadow, live, min(cfg.ema_decay, (1 + step) / (10 + step)))
        _log_every(step, steps, start, what, loss=loss.item())
    for k, v in state.items():  # entries that are not averaged (this UNet has none) keep their last value
        if not v.dtype.is_floating_point:
            ema[k].copy_(v)
    unet.load_state_dict(ema)
    unet.eval()


# -------------------------------------------------------------------------------------------- build
def save_pipeline(out: Path, *, tokenizer, text_encoder, image_encoder, text_proj: dict, vae, unet) -> None:
    """Save the parts as a diffusers StableDiffusionPipeline directory (safetensors only).

    The base model is saved before any adapter is ever attached (adapters are saved on their own).
    """
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    _, ddim = make_schedulers()
    feature_extractor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": ds.IMAGE_SIZE}, do_center_crop=True,
        crop_size={"height": ds.IMAGE_SIZE, "width": ds.IMAGE_SIZE}, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_convert_rgb=True, resample=0,
    )
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=ddim,
                                   safety_checker=None, feature_extractor=feature_extractor, image_encoder=image_encoder,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)
    save_file(text_proj, str(Path(out) / "text_projection.safetensors"))


def random_model(out: str | Path, seed: int = 0) -> Path:
    """A tiny random-weight pipeline of the shapes architecture (for tests): no training, seconds to make."""
    from transformers import CLIPTokenizer

    torch.manual_seed(seed)
    cfg = BuildConfig.quick()
    out = Path(out)
    tokenizer = CLIPTokenizer.from_pretrained(save_tokenizer(out / "tokenizer"), local_files_only=True)
    clip = make_clip(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id).eval()
    text_encoder, image_encoder, text_proj = split_clip(clip)
    save_pipeline(out, tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder, text_proj=text_proj,
                  vae=make_vae().eval(), unet=make_unet(cfg).eval())
    return out


def build(out: str | Path, cfg: BuildConfig) -> dict:
    """Train every part, save the pipeline to ``out`` and return the quality figures."""
    from transformers import CLIPTokenizer

    from .quality import measure_quality, write_model_card

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    t0 = time.time()
    data = ds.generate(cfg.n_images, seed=cfg.seed)
    timings["data_s"] = time.time() - t0
    log.info("data: %d images, %d distinct captions (%.1fs)", len(data.captions), len(set(data.captions)), timings["data_s"])

    tok_dir = save_tokenizer(out / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)

    t0 = time.time()
    clip = train_clip(cfg, data, tokenizer, gen)
    text_encoder, image_encoder, text_proj = split_clip(clip)
    timings["clip_s"] = time.time() - t0

    t0 = time.time()
    pixels = to_pixels(data.images)
    vae = train_vae(cfg, pixels, gen)
    raw = encode_latents(vae, pixels)
    scaling = float(1.0 / raw.std())
    vae.register_to_config(scaling_factor=scaling)
    latents = raw * scaling
    timings["vae_s"] = time.time() - t0
    log.info("vae: latent scaling factor %.4f", scaling)

    t0 = time.time()
    states, cap_idx, empty_idx = caption_states(text_encoder, tokenizer, data.captions)
    unet = train_unet(cfg, latents, states, cap_idx, empty_idx, gen)
    timings["unet_s"] = time.time() - t0

    t0 = time.time()
    refine_unet(cfg, unet, latents, states, cap_idx, empty_idx, caption_weights(data))
    timings["unet_refine_s"] = time.time() - t0

    t0 = time.time()
    text_proj = refine_encoder(cfg, data, tokenizer, text_encoder, image_encoder, text_proj)
    timings["refine_s"] = time.time() - t0

    save_pipeline(out, tokenizer=tokenizer, text_encoder=text_encoder, image_encoder=image_encoder,
                  text_proj=text_proj, vae=vae, unet=unet)
    atomic.write_text(out / "build_config.json", json.dumps(asdict(cfg), indent=2))

    t0 = time.time()
    quality = measure_quality(out, cfg)
    timings["quality_s"] = time.time() - t0
    quality["timings_s"] = {k: round(v, 1) for k, v in timings.items()}
    quality["build_config"] = asdict(cfg)
    atomic.write_text(out / "QUALITY.json", json.dumps(quality, indent=2))
    write_model_card(out, quality)
    log.info("quality: %s", json.dumps({k: v for k, v in quality.items() if k not in ("build_config",)}))
    return quality


class QualityFileError(ValueError):
    """A model's QUALITY.json that is not what ``build`` writes (one sentence)."""


def _read_quality(model_dir: Path) -> dict:
    """A build's QUALITY.json: a JSON object holding its ``build_config`` object (a list there, or a config that is
    not an object, raised TypeError deep in the commands that re-measure; found by the sixth review)."""
    path = model_dir / "QUALITY.json"
    try:  # a file that is not UTF-8 or nested too deeply was a traceback, and one that is not JSON named no file
        quality = json.loads(path.read_text(encoding="utf-8"))  # (found by the nineteenth review)
    except UnicodeDecodeError as exc:
        raise QualityFileError(f"{str(path)!r} is not a QUALITY.json written by `build` (not UTF-8 text)") from exc
    except json.JSONDecodeError as exc:
        raise QualityFileError(f"{str(path)!r} is not a QUALITY.json written by `build` (not JSON: {exc})") from exc
    except RecursionError as exc:
        raise QualityFileError(f"{str(path)!r} is not a QUALITY.json written by `build` (JSON nested too deeply)") from exc
    if not isinstance(quality, dict) or not isinstance(quality.get("build_config"), dict):
        raise QualityFileError(f"{str(path)!r} is not a QUALITY.json written by `build` (it must be a JSON object "
                               "holding a build_config object)")
    for key, value in quality["build_config"].items():
        # a value of the wrong type ("threads": "x", a list) was a TypeError deep in the command (sixth review)
        if key in _CONFIG_KINDS and not _CONFIG_KINDS[key][0](value):
            raise QualityFileError(f"{str(path)!r} is not a QUALITY.json written by `build` (its build_config "
                                   f"{key!r} must be {_CONFIG_KINDS[key][1]}, got {json.dumps(value)[:40]})")
    sampler = quality.get("remeasured_with")
    if sampler is not None:  # the settings a stage re-run measures with (``_measure_refined``)
        known = ("quality_guidance", "quality_steps", "quality_samples")
        if not isinstance(sampler, dict) or any(k not in known or not _CONFIG_KINDS[k][0](v) for k, v in sampler.items()) \
                or any(sampler.get(k, 1) < 1 for k in ("quality_steps", "quality_samples")) or sampler.get("quality_guidance", 0) < 0:
            raise QualityFileError(f"{str(path)!r} is not a QUALITY.json written by `build` (its remeasured_with must be "
                                   f"an object of {', '.join(known)}: a guidance of at least 0, whole numbers of at "
                                   f"least 1; got {json.dumps(sampler)[:60]})")
    return quality


def _build_timings(quality: dict) -> dict:
    """The build's stage timings (``timings_s``) a QUALITY.json records, to keep when a stage is re-run or the model
    measured again. A merged export's QUALITY.json (``seiko_core.export._merged_quality``) keeps the base's under
    ``base_model_quality`` with the base's figures, and its ``build_config`` (the base's build) at the top: the refines
    and ``quality`` on a copy of it read ``timings_s`` at the top only, so the copy's QUALITY.json and card lost every
    stage's time but the one just run ("? s"; found by review, eleventh). They are the build's, whichever of the two
    holds them."""
    from ..export import BASE_QUALITY_KEY

    timings = quality.get("timings_s")
    if timings is None and quality.get("figures_of") == "base_model":
        timings = (quality.get(BASE_QUALITY_KEY) or {}).get("timings_s")
    return dict(timings) if isinstance(timings, dict) else {}


def _whole(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _real(v: object) -> bool:
    return (_whole(v) or isinstance(v, float)) and math.isfinite(v)


def _config_kinds() -> dict[str, tuple[Callable[[object], bool], str]]:
    """Per BuildConfig field, a check of a JSON value for it and what it must be (from the field's type)."""
    import typing

    kinds: dict[str, tuple[Callable[[object], bool], str]] = {}
    for name, hint in typing.get_type_hints(BuildConfig).items():
        if hint is bool:
            kinds[name] = (lambda v: isinstance(v, bool), "true or false")
        elif hint is int:
            kinds[name] = (_whole, "a whole number")
        elif hint is float:
            kinds[name] = (_real, "a finite number")
        elif hint == (float | None):
            kinds[name] = (lambda v: v is None or _real(v), "a finite number or null")
        elif hint is str:
            kinds[name] = (lambda v: isinstance(v, str), "a string")
        elif typing.get_origin(hint) is tuple and all(a is int for a in typing.get_args(hint)):
            n = len(typing.get_args(hint))
            kinds[name] = (lambda v, n=n: isinstance(v, list) and len(v) == n and all(map(_whole, v)),
                           f"a list of {n} whole numbers")
        else:
            raise TypeError(f"BuildConfig.{name} has a type ({hint}) that QUALITY.json's check does not know")
    return kinds


_CONFIG_KINDS = _config_kinds()


def _saved_config(quality: dict) -> BuildConfig:
    """The BuildConfig a QUALITY.json records (fields added since that build take their defaults)."""
    fields = set(BuildConfig.__dataclass_fields__)
    return BuildConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in quality["build_config"].items() if k in fields})


def refine_existing(model_dir: str | Path, steps: int | None = None) -> dict:
    """Run the encoder-refinement stage on a finished build (one built before the stage existed) and re-measure.

    The training data is drawn again from the build's own config (same images and captions); only
    ``image_encoder/`` and ``text_projection.safetensors`` change. The refine runs on a copy (``_refine_in_copy``):
    the model at ``model_dir`` is moved aside, not overwritten.
    """
    return _refine_in_copy(model_dir, lambda copy: _refine_encoder_at(copy, steps))


def _refine_encoder_at(model_dir: Path, steps: int | None) -> dict:
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

    model_dir = Path(model_dir)
    old = _read_quality(model_dir)
    cfg = _saved_config(old)
    cfg.clip_refine_steps = BuildConfig.clip_refine_steps if steps is None else steps
    torch.set_num_threads(cfg.threads)
    data = ds.generate(cfg.n_images, seed=cfg.seed)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", local_files_only=True, use_safetensors=True)
    image_encoder = CLIPVisionModelWithProjection.from_pretrained(model_dir / "image_encoder", local_files_only=True,
                                                                  use_safetensors=True)
    text_proj = load_file(str(model_dir / "text_projection.safetensors"))
    t0 = time.time()
    text_proj = refine_encoder(cfg, data, tokenizer, text_encoder, image_encoder, text_proj)
    refine_s = time.time() - t0
    image_encoder.save_pretrained(model_dir / "image_encoder", safe_serialization=True)
    save_file(text_proj, str(model_dir / "text_projection.safetensors"))
    return _measure_refined(model_dir, cfg, old, "refine_s", refine_s)


class RefineError(RuntimeError):
    """A refine of a finished build that failed; the build is as it was (the message says so, in one sentence)."""


def replace_model(out: Path, new: Path) -> Path | None:
    """Move ``new`` (a finished model beside ``out``) to ``out``; a model already at ``out`` is moved aside to
    ``out.replaced-<UTC time>``, not deleted (its adapters depend on it), and that path returned."""
    aside = None
    if out.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        aside, n = out.with_name(f"{out.name}.replaced-{stamp}"), 1
        while os.path.lexists(aside):  # two in one second: a rename onto an empty directory would replace it
            aside, n = out.with_name(f"{out.name}.replaced-{stamp}-{n}"), n + 1
        out.rename(aside)
        print(f"the model that was at {out} is now at {aside}", file=sys.stderr)
    new.rename(out)
    return aside


def _refine_in_copy(model_dir: str | Path, refine: Callable[[Path], dict]) -> dict:
    """``refine(copy)`` on a copy of the finished build at ``model_dir`` (a temporary sibling: twice its size on
    disk for the while), then the copy moved into its place and the build moved aside (``replace_model``). The
    refines saved over the build's own files: a kill or a full disk in the middle left a model of mixed or truncated
    weights, and even a refine that finished lost the UNet the round adapters had been trained on (sixth review). A
    failure now removes the copy and leaves the build as it was."""
    model_dir = Path(model_dir).expanduser().absolute()
    _read_quality(model_dir)  # a QUALITY.json that is no build's is refused naming the build's own file, before any copy
    copy = atomic.temp_sibling(model_dir)
    try:
        shutil.copytree(model_dir, copy, symlinks=True)
        quality = refine(copy)
    except BaseException as exc:
        shutil.rmtree(copy, ignore_errors=True)  # the copy only; the build was never written to
        if not isinstance(exc, Exception):  # Ctrl-C, SystemExit: as they were
            raise
        raise RefineError(f"Refining {str(model_dir)!r} failed ({type(exc).__name__}: {exc}); the model there is as "
                          "it was.") from exc
    replace_model(model_dir, copy)
    return quality


def _measure_refined(model_dir: Path, cfg: BuildConfig, old: dict, timing: str, seconds: float) -> dict:
    """After a stage re-run on a finished build: its config saved, QUALITY.json and the model card measured again,
    the build's timings kept with the stage's ``seconds`` as ``timing``.

    A model last measured by ``quality`` with other settings (``remeasured_with``: e.g. 480 samples where its build
    took 96) is measured again with those, and says so, so the figures before and after the stage are comparable; it
    was measured with the build's settings (its 96 samples against the 480 of the figures it replaced)."""
    from .quality import measure_quality, write_model_card

    atomic.write_text(model_dir / "build_config.json", json.dumps(asdict(cfg), indent=2))
    sampler = dict(old.get("remeasured_with") or {})
    quality = measure_quality(model_dir, replace(cfg, **sampler))
    if sampler:
        quality["remeasured_with"] = sampler
    quality["timings_s"] = {**_build_timings(old), timing: round(seconds, 1)}
    quality["build_config"] = asdict(cfg)
    atomic.write_text(model_dir / "QUALITY.json", json.dumps(quality, indent=2))
    write_model_card(model_dir, quality)
    return quality


def refine_unet_existing(model_dir: str | Path, steps: int | None = None, threads: int | None = None,
                         min_snr_gamma: float | None = None) -> dict:
    """Run the UNet-refinement stage on a finished build and re-measure; only ``unet/`` is rewritten.

    The training data is drawn again from the build's own config and encoded by the model's own VAE (same images,
    captions and latents, up to floating-point order). The refine runs on a copy (``_refine_in_copy``): the model at
    ``model_dir``, whose UNet the round adapters were trained on, is moved aside, not overwritten.
    """
    return _refine_in_copy(model_dir, lambda copy: _refine_unet_at(copy, steps, threads, min_snr_gamma))


def _refine_unet_at(model_dir: Path, steps: int | None, threads: int | None, min_snr_gamma: float | None = None) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model_dir = Path(model_dir)
    old = _read_quality(model_dir)
    cfg = _saved_config(old)
    cfg.unet_refine_steps = BuildConfig.unet_refine_steps if steps is None else steps
    if min_snr_gamma is not None:
        cfg.unet_refine_min_snr_gamma = min_snr_gamma
    torch.set_num_threads(cfg.threads if threads is None else threads)
    data = ds.generate(cfg.n_images, seed=cfg.seed)
    tokenizer = CLIPTokenizer.from_pretrained(model_dir / "tokenizer", local_files_only=True)
    text_encoder = CLIPTextModel.from_pretrained(model_dir / "text_encoder", local_files_only=True, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(model_dir / "vae", local_files_only=True, use_safetensors=True).eval()
    unet = UNet2DConditionModel.from_pretrained(model_dir / "unet", local_files_only=True, use_safetensors=True)
    t0 = time.time()
    latents = encode_latents(vae, to_pixels(data.images)) * vae.config.scaling_factor
    states, cap_idx, empty_idx = caption_states(text_encoder.eval(), tokenizer, data.captions)
    refine_unet(cfg, unet, latents, states, cap_idx, empty_idx, caption_weights(data))
    refine_s = time.time() - t0
    unet.save_pretrained(model_dir / "unet", safe_serialization=True)
    # diffusers records where a loaded model came from; a build's config names no path on the builder's machine
    unet_config = json.loads((model_dir / "unet" / "config.json").read_text())
    unet_config.pop("_name_or_path", None)
    atomic.write_text(model_dir / "unet" / "config.json", json.dumps(unet_config, indent=2, sort_keys=True) + "\n")
    return _measure_refined(model_dir, cfg, old, "unet_refine_s", refine_s)


def remeasure(model_dir: str | Path, *, guidance: float | None = None, steps: int | None = None,
              samples: int | None = None) -> dict:
    """Measure a built model again (e.g. with other sampler settings) and rewrite QUALITY.json and the card.

    Training timings and the build config are kept from the original build; the sampler used is recorded.
    """
    from .quality import measure_quality, write_model_card

    model_dir = Path(model_dir)
    old = _read_quality(model_dir)
    cfg = _saved_config(old)
    if guidance is not None:
        cfg.quality_guidance = guidance
    if steps is not None:
        cfg.quality_steps = steps
    if samples is not None:
        if samples < 1:
            raise ValueError(f"the fidelity figures need at least 1 sample, got {samples}")
        cfg.quality_samples = samples
    torch.set_num_threads(cfg.threads)
    quality = measure_quality(model_dir, cfg)
    quality["timings_s"] = _build_timings(old)
    quality["build_config"] = old["build_config"]
    quality["remeasured_with"] = {"quality_guidance": cfg.quality_guidance, "quality_steps": cfg.quality_steps,
                                  "quality_samples": cfg.quality_samples}
    atomic.write_text(model_dir / "QUALITY.json", json.dumps(quality, indent=2))
    write_model_card(model_dir, quality)
    return quality
