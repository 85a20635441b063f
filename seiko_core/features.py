"""Image features phi(x) for the reward model: the frozen image encoder's L2-normalised embeddings.

The preprocessing mirrors ``CLIPImageProcessor`` (resize the shortest side to ``size`` with bicubic
interpolation, centre-crop to ``size`` x ``size``, normalise) but is written with torch ops only, so
it is differentiable and runs on the images' device: fine-tuning backpropagates a reward through it
into the sampler. Nothing here wraps the encoder in ``no_grad``; the caller decides, except in
:func:`embed_images_batched`, which is for embedding large sets of finished images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def _check_images(images: torch.Tensor, what: str = "images") -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} must have shape (B, 3, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise ValueError(f"{what} must be floating point in [0, 1], got dtype {images.dtype} (convert uint8 with from_uint8).")


def from_uint8(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W, 3), as :func:`seiko_core.toy.dataset.render` makes them, as float (N, 3, H, W) in [0, 1]."""
    arr = torch.as_tensor(np.asarray(images))
    if arr.dtype != torch.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got dtype {arr.dtype} and shape {tuple(arr.shape)}.")
    return arr.permute(0, 3, 1, 2).float().div(255.0)


def resized_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H', W') with the shorter side equal to ``size``; the longer side truncated as CLIPImageProcessor does."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def preprocess(images: torch.Tensor, size: int, mean: Sequence[float], std: Sequence[float], *,
               mode: str = "bicubic") -> torch.Tensor:
    """Differentiable CLIP-style preprocessing of float images (B, 3, H, W) in [0, 1].

    1. resize the shortest side to ``size``; skipped when the size already matches. Bicubic with torch's
       antialiased kernel (PIL's: a = -0.5, widened when downscaling), also when upscaling, where it
       matches PIL far better than torch's plain bicubic (a = -0.75); values clamped to [0, 1] after,
       as an 8-bit resize would;
    2. centre-crop to ``size`` x ``size`` (top/left offset = floor of half the excess);
    3. normalise: (x - mean) / std per channel.
    """
    _check_images(images)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}.")
    # 1. resize the shortest side
    h, w = images.shape[-2:]
    new_h, new_w = resized_shape(h, w, size)
    x = images
    if (new_h, new_w) != (h, w):
        antialias = mode in {"bilinear", "bicubic"}
        extra = {"align_corners": False} if mode in {"bilinear", "bicubic"} else {}
        x = F.interpolate(x, size=(new_h, new_w), mode=mode, antialias=antialias, **extra).clamp(0.0, 1.0)
    # 2. centre crop
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[:, :, top:top + size, left:left + size]
    # 3. normalise
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def embed_images(parts, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised ``image_embeds`` (B, D) of ``parts.image_encoder``; differentiable w.r.t. ``images``.

    ``parts`` needs ``image_encoder``, ``image_size``, ``image_mean``, ``image_std``, ``device`` and
    ``dtype`` (a :class:`seiko_core.models.ModelParts`). Images are moved to the encoder's device and dtype.
    """
    _check_images(images)
    pixels = preprocess(images.to(device=parts.device, dtype=parts.dtype), parts.image_size, parts.image_mean,
                        parts.image_std)
    embeds = parts.image_encoder(pixel_values=pixels).image_embeds
    return F.normalize(embeds, dim=-1)


EMBED_BATCH = 64  # images embedded at a time (one chunk on the device)


def embed_images_batched(parts, images: torch.Tensor, batch_size: int = EMBED_BATCH) -> torch.Tensor:
    """:func:`embed_images` in chunks of ``batch_size`` under ``no_grad``; float32 (N, D) on ``images``' device."""
    _check_images(images)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    out = []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            chunk = embed_images(parts, images[start:start + batch_size])
            out.append(chunk.to(device=images.device, dtype=torch.float32))
    if not out:
        dim = int(parts.image_encoder.config.projection_dim)
        return torch.zeros(0, dim, device=images.device)
    return torch.cat(out)
