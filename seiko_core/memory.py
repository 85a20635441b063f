"""Computed peak-memory estimate of one SD 1.5 fine-tuning micro-batch (SEIKO step 5), on the meta device.

    python -m seiko_core.memory --size 512 --batch 2 [--precision fp32|fp16|bf16] [--no-checkpointing] [--out FILE.json]
                                [--truncation per_step|per_trajectory|stratified --k 10] [--steps 50]
                                [--vae-checkpointing] [--weights fp32|half]          # what-ifs the product does not do
    python -m seiko_core.memory --size 512 --grid [--out FILE.json]     # fp32/fp16 x checkpointing x batch 2/4 (+ half weights)

The figures and the assumptions behind them: docs/sd15-memory.md (BENCHMARKS.md, "SD 1.5 memory").

No GPU and no weights: the SD 1.5 modules are built from configs/sd15 on the ``meta`` device
(:func:`seiko_core.bench.sd15_modules`), where every op only propagates shapes, and one attached denoising step
of :func:`seiko_core.finetune.rollout` (the trained UNet and the previous round's UNet, each one classifier-free
guided call on the same graph-carrying latent, the previous one through the product's own
:func:`seiko_core.finetune.previous_eps`, then the DDIM mean and the KL), the VAE decode and the image
encoder's reward path are run forward. :class:`SavedBytes` counts what autograd keeps for backward
(``torch.autograd.graph.saved_tensors_hooks``): each tensor's whole storage once (views and re-saves of the same
storage count once), parameters and buffers excluded (they are counted once as weights). Under gradient
checkpointing a checkpointed call keeps only its inputs, which ``torch.utils.checkpoint`` saves through the same
hooks, so they are counted too.

What a GPU run does differently and how it is modelled:

- attention: on the meta device ``scaled_dot_product_attention`` falls back to the math kernel, which saves the
  (tokens x tokens) attention matrix; CUDA runs a fused kernel (flash / memory-efficient) that saves q, k, v, the
  output and the log-sum-exp only. :class:`AutocastEmulation` routes it to
  ``aten._scaled_dot_product_efficient_attention``, whose autograd saves exactly those;
- mixed precision: CUDA autocast does not act on meta tensors. :class:`AutocastEmulation` applies its casting
  policy (``torch.autocast`` on CUDA: matmuls, linear, convolutions and attention in the half type; group/layer
  norm, softmax, exp, pow, sums and norms in float32) with a ``TorchFunctionMode``, above autograd, as autocast
  does, so the casts and what is saved after them are what autocast would save. The frozen fp32 weights are
  cast afresh at every op (autocast caches casts of leaves that require grad only), and those half copies are
  saved for the input's gradient: they are counted, as they would be allocated.

The estimate is of allocated tensor bytes (``torch.cuda.max_memory_allocated``); the CUDA context and the
caching allocator's fragmentation come on top (see ``CONTEXT_BYTES``, ``FRAGMENTATION`` and :func:`verdict`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from .atomic import check_can_write, write_text
from .config import TRUNCATIONS

GIB = 2**30
GPUS_GB = (24, 40, 80)  # GPU memory sizes judged, in GB as sold (1 GB = 1e9 bytes)
# Beyond the allocated tensors: the CUDA context (~0.5 GB) and the caching allocator's fragmentation; a GPU is
# judged "fits" when total * (1 + FRAGMENTATION) + CONTEXT_BYTES <= its size, "tight" when only the bare total fits.
CONTEXT_BYTES = int(0.75 * 1e9)
FRAGMENTATION = 0.10
TEXT_TOKENS = 77


# ----------------------------------------------------------------------------------------------- counting
def storage_key(t: torch.Tensor) -> int:
    """An identity for ``t``'s storage, shared by all its views (the C++ StorageImpl's address; meta tensors
    have no data pointer to compare)."""
    return t.untyped_storage()._cdata


def tensor_bytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _tensors_of(items: Iterable[torch.Tensor | torch.nn.Module]) -> list[torch.Tensor]:
    out = []
    for item in items:
        if isinstance(item, torch.nn.Module):
            out.extend(item.parameters())
            out.extend(item.buffers())
        else:
            out.append(item)
    return out


def parameter_bytes(module: torch.nn.Module, *, only: Iterable[torch.Tensor] | None = None,
                    skip: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of ``module``'s parameters and buffers (each storage once), or of ``only`` those, less ``skip``."""
    skip_keys = {storage_key(t) for t in skip}
    seen: dict[int, int] = {}
    for t in (list(only) if only is not None else _tensors_of([module])):
        key = storage_key(t)
        if key not in skip_keys:
            seen[key] = tensor_bytes(t)
    return sum(seen.values())


class SavedBytes:
    """Context manager counting the bytes autograd saves for backward inside it.

    Every saved tensor's storage counts once, in the phase (:meth:`phase`) in which it is first saved; storages of
    ``exclude`` (tensors, or modules: their parameters and buffers) are not counted. ``largest`` holds the biggest
    single storage per phase (the size of the gradients that flow through it in backward).
    """

    def __init__(self, exclude: Iterable[torch.Tensor | torch.nn.Module] = ()):
        self._exclude = {storage_key(t) for t in _tensors_of(exclude)}
        self._keep: dict[int, torch.Tensor] = {}  # keeps counted storages alive, so that no key is reused
        self.by_phase: dict[str, int] = defaultdict(int)
        self.largest: dict[str, int] = defaultdict(int)
        self.current = "all"
        self._hooks = None

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        key = storage_key(t)
        if key not in self._exclude and key not in self._keep:
            self._keep[key] = t
            n = tensor_bytes(t)
            self.by_phase[self.current] += n
            self.largest[self.current] = max(self.largest[self.current], n)
        return t

    @staticmethod
    def _unpack(t: torch.Tensor) -> torch.Tensor:
        return t

    @property
    def total(self) -> int:
        return sum(self.by_phase.values())

    @contextmanager
    def phase(self, name: str):
        before, self.current = self.current, name
        try:
            yield self
        finally:
            self.current = before

    def __enter__(self) -> SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        self._hooks.__exit__(*exc)
        return False


def saved_bytes(fn, *, exclude: Iterable[torch.Tensor | torch.nn.Module] = ()) -> int:
    """Bytes autograd saves while ``fn()`` runs (parameters of ``exclude`` not counted)."""
    with SavedBytes(exclude) as counter:
        fn()
    return counter.total


# ------------------------------------------------------------------------------------- autocast + attention
_T = torch.Tensor
LOWER_PRECISION_FUNCS = frozenset({
    F.linear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.bilinear,
    torch.matmul, torch.mm, torch.bmm, torch.baddbmm, torch.addmm, torch.addbmm, torch.addmv, torch.mv,
    _T.matmul, _T.__matmul__, _T.__rmatmul__, _T.mm, _T.bmm, _T.baddbmm, _T.addmm, _T.mv,
    F.scaled_dot_product_attention,
})
FP32_FUNCS = frozenset({
    F.group_norm, F.layer_norm, F.softmax, F.log_softmax, F.softmin, F.softplus, F.normalize, F.mse_loss, F.l1_loss,
    F.kl_div, F.cosine_similarity, torch.softmax, torch.log_softmax, _T.softmax, _T.log_softmax,
    torch.exp, _T.exp, torch.expm1, torch.log, _T.log, torch.log1p, torch.log2, torch.log10, torch.pow, _T.pow,
    _T.__pow__, _T.__rpow__, torch.rsqrt, _T.rsqrt, torch.reciprocal, _T.reciprocal, torch.norm, _T.norm,
    torch.sum, _T.sum, torch.prod, _T.prod, torch.cumsum, _T.cumsum, torch.cumprod, torch.logsumexp,
    torch.cdist, torch.dist, torch.renorm, torch.acos, torch.asin, torch.cosh, torch.sinh, torch.tan, torch.erfinv,
})
HALF_TYPES = (torch.float16, torch.bfloat16)


def _cast(tree, from_types: tuple[torch.dtype, ...], to: torch.dtype):
    return tree_map(lambda t: t.to(to) if isinstance(t, torch.Tensor) and t.dtype in from_types else t, tree)


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    """What CUDA's fused attention saves: q, k, v, the output and the log-sum-exp, never the attention matrix.

    With a graph, ``aten._scaled_dot_product_efficient_attention`` (its autograd saves exactly those); without one,
    or with an input it does not take, the stock function (nothing is saved then)."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if not needs_grad or query.dim() != 4 or enable_gqa or query.shape[1] != key.shape[1]:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask, -math.inf)
    if attn_mask is not None:
        attn_mask = attn_mask.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
    out = torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p, is_causal,
                                                                  scale=scale)
    return out[0]


class AutocastEmulation(TorchFunctionMode):
    """CUDA autocast's casting policy (``dtype`` float16 or bfloat16; None: no autocast) and fused attention, for
    tensors on any device, the meta device included (real autocast only acts on CPU/CUDA/... tensors).

    Ops of :data:`LOWER_PRECISION_FUNCS` get their float32 inputs cast to ``dtype``; ops of :data:`FP32_FUNCS` get
    their half inputs cast to float32; the rest run in their inputs' types (type promotion as usual). The casts
    happen above autograd, as autocast's do, so autograd saves the cast copies, as it does under autocast."""

    def __init__(self, dtype: torch.dtype | None = None):
        super().__init__()
        if dtype is not None and dtype not in HALF_TYPES:
            raise ValueError(f"autocast dtype must be float16 or bfloat16, got {dtype}")
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.dtype is not None:
            if func in LOWER_PRECISION_FUNCS:
                args, kwargs = _cast((args, kwargs), (torch.float32,), self.dtype)
            elif func in FP32_FUNCS:
                args, kwargs = _cast((args, kwargs), HALF_TYPES, torch.float32)
        if func is F.scaled_dot_product_attention:
            return fused_attention(*args, **kwargs)
        return func(*args, **kwargs)


# --------------------------------------------------------------------------------- truncation statistics
def attached_probabilities(steps: int) -> list[float]:
    """per_step truncation (seiko_core.finetune.attached_steps): step i keeps its graph when k_i <= i for a fresh
    k_i ~ U{0..steps}, with probability (i + 1) / (steps + 1)."""
    return [(i + 1) / (steps + 1) for i in range(steps)]


def attached_distribution(steps: int) -> list[float]:
    """P(exactly n steps attached), n = 0..steps: the Poisson-binomial law of :func:`attached_probabilities`."""
    dist = [1.0]
    for p in attached_probabilities(steps):
        nxt = [0.0] * (len(dist) + 1)
        for n, q in enumerate(dist):
            nxt[n] += q * (1 - p)
            nxt[n + 1] += q * p
        dist = nxt
    return dist


def attached_quantile(steps: int, q: float) -> int:
    """The smallest n with P(attached <= n) >= q."""
    acc = 0.0
    for n, p in enumerate(attached_distribution(steps)):
        acc += p
        if acc >= q - 1e-12:
            return n
    return steps


# ---------------------------------------------------------------------------------------- the modules
def sd15_meta_modules():
    """(unet, vae, text_encoder, image_encoder) of SD 1.5 on the meta device, configs/sd15, no weights."""
    from .bench import sd15_modules

    return sd15_modules(device="meta")


def add_adapters(unet, ft=None) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    """The trained adapter ("new") and the previous round's ("prev") on ``unet``, as the product holds them;
    returns their parameters. On the meta device the values are irrelevant (prev is not copied from new)."""
    import warnings

    from . import lora
    from .config import FinetuneConfig

    ft = ft or FinetuneConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that a second adapter is being added: that is the point
        for name in ("new", "prev"):
            if not lora.has_adapter(unet, name):
                lora.add_adapter(unet, name, ft)
    new, prev = lora.lora_parameters(unet, "new"), lora.lora_parameters(unet, "prev")
    for p in prev:
        p.requires_grad_(False)
    lora.activate(unet, "new")
    for p in new:
        p.requires_grad_(True)
    return new, prev


@contextmanager
def checkpoint_probe(model, enabled: bool, record: list[dict]):
    """Gradient checkpointing of a diffusers ``model`` as diffusers' default applies it
    (``torch.utils.checkpoint.checkpoint(module.__call__, *args, use_reentrant=False)`` on the units the model's
    blocks choose: in the UNet of diffusers 0.42, every ResnetBlock2D and every BasicTransformerBlock; in the VAE
    decoder, the mid block and each up block), recording for every checkpointed call the unit's class and what it
    would save without checkpointing: the recompute in backward rebuilds that graph, one unit at a time."""
    from torch.utils.checkpoint import checkpoint

    exclude = list(model.parameters()) + list(model.buffers())

    def probe(module, *args):
        if torch.is_grad_enabled():
            with SavedBytes(exclude) as inner:
                module(*args)
            record.append({"unit": type(module).__name__, "recompute_bytes": inner.total,
                           "largest_bytes": max(inner.largest.values(), default=0)})
        return checkpoint(module.__call__, *args, use_reentrant=False)

    if enabled:
        model.enable_gradient_checkpointing(gradient_checkpointing_func=probe)
    else:
        model.disable_gradient_checkpointing()
    try:
        yield
    finally:
        model.disable_gradient_checkpointing()


# ------------------------------------------------------------------------------------------ measurement
DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def measure(unet, vae, text_encoder, image_encoder, *, size: int = 512, batch: int = 2, precision: str = "fp32",
            checkpointing: bool = True, vae_checkpointing: bool = False, weights: str = "fp32", guidance: float = 7.5,
            image_size: int | None = None, text_tokens: int = TEXT_TOKENS,
            image_mean=(0.48145466, 0.4578275, 0.40821073), image_std=(0.26862954, 0.26130258, 0.27577711)) -> dict:
    """Bytes of one fine-tuning micro-batch's pieces (see the module docstring), for meta (or real) modules.

    The product loads the weights in float32 and, with ``mixed_precision``, runs under autocast: ``precision``
    fp16/bf16 emulates that. What-ifs the product does not do: ``vae_checkpointing`` checkpoints the VAE decoder's
    blocks too; ``weights="half"`` holds the frozen weights in the precision's half type, as ``load_model(dtype=...)``
    would, the LoRA adapters in float32 (as diffusers' training scripts do): no per-op weight casts, and latents and
    the image encoder run in that type."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose from {sorted(DTYPES)}")
    if size % 8:
        raise ValueError(f"size must be a multiple of 8 (the VAE's factor), got {size}")
    if weights not in ("fp32", "half") or (weights == "half" and DTYPES[precision] is None):
        raise ValueError(f"weights must be 'fp32', or 'half' with precision fp16/bf16; got {weights!r} with {precision!r}")
    autocast = AutocastEmulation(DTYPES[precision])
    plain = AutocastEmulation(None)  # fused attention only: the reward path runs outside autocast (finetune.py)
    new, prev = add_adapters(unet)
    if weights == "half":
        for m in (unet, vae, text_encoder, image_encoder):
            _quiet_to(m, DTYPES[precision])
        for p in new + prev:
            p.data = p.data.float()
    try:
        return _measure(unet, vae, text_encoder, image_encoder, new, prev, autocast=autocast, plain=plain, size=size,
                        batch=batch, precision=precision, checkpointing=checkpointing,
                        vae_checkpointing=vae_checkpointing, weights=weights, guidance=guidance, image_size=image_size,
                        image_mean=image_mean, image_std=image_std, text_tokens=text_tokens)
    finally:
        if weights == "half":
            for m in (unet, vae, text_encoder, image_encoder):
                _quiet_to(m, torch.float32)


def _quiet_to(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """``module.to(dtype)`` without diffusers' advice to use ``from_pretrained(torch_dtype=...)`` (no weights here)."""
    import logging

    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        module.to(dtype)
    finally:
        log.setLevel(level)


def _measure(unet, vae, text_encoder, image_encoder, new, prev, *, autocast, plain, size, batch, precision, checkpointing,
             vae_checkpointing, weights, guidance, image_size, image_mean, image_std, text_tokens) -> dict:
    from types import SimpleNamespace

    from .features import embed_images
    from .finetune import at_least_fp32, gaussian_kl, previous_eps
    from .lora import using
    from .sampling import ddim_mean, model_eps

    device = next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    unet.train()  # as finetune() leaves it; the other modules stay in eval, frozen
    for m in (vae, text_encoder, image_encoder):
        m.requires_grad_(False)
        m.eval()
    latent = size // vae_factor(vae)
    channels = int(unet.config.in_channels)
    ctx_dim = int(unet.config.cross_attention_dim)
    scalar = lambda v: torch.tensor(v, device=device)  # noqa: E731
    a, ap, sigma, t = scalar(0.5), scalar(0.6), scalar(0.1), torch.tensor(500, device=device)
    cond = torch.randn(batch, text_tokens, ctx_dim, device=device, dtype=dtype)
    uncond = torch.randn(1, text_tokens, ctx_dim, device=device, dtype=dtype).expand(batch, -1, -1)
    units: list[dict] = []

    # 1. one attached step: trained UNet, previous UNet (same latent), DDIM means, KL, next latent
    x = torch.randn(batch, channels, latent, latent, device=device, dtype=dtype, requires_grad=True)
    x = x * 1.0  # a non-leaf, as a latent carrying the graph of the earlier steps is
    z = torch.randn(batch, channels, latent, latent, device=device, dtype=dtype)
    with checkpoint_probe(unet, checkpointing, units), SavedBytes([unet]) as step:
        with step.phase("unet_new"), autocast:
            eps = at_least_fp32(model_eps(unet, x, t, cond, uncond, guidance, a, "epsilon"))
        n_new_units = len(units)
        with step.phase("step_ops"):
            mean = ddim_mean(x, eps, a, ap, sigma)
        def prev_eps(x_in):
            with using(unet, "prev", restore="new", trainable=new), autocast:
                return at_least_fp32(model_eps(unet, x_in, t, cond, uncond, guidance, a, "epsilon"))

        with step.phase("unet_prev"):  # as rollout runs it: with checkpointing, one whole-call checkpoint
            eps_prev = previous_eps(unet, prev_eps, x, graph=True)
        with step.phase("step_ops"):
            kl = gaussian_kl(mean, ddim_mean(x, eps_prev, a, ap, sigma), sigma)
            x_next = mean + sigma * z
    del kl, x_next
    # backward recomputes that whole-call checkpoint with a full graph: block checkpointing off inside, as
    # finetune._without_block_checkpointing runs it (stated here, not left to checkpoint_probe's exit)
    prev_recompute = None
    if checkpointing:
        unet.disable_gradient_checkpointing()
        with SavedBytes([unet]) as rec:
            prev_eps(x)
        prev_recompute = {"recompute_bytes": rec.total, "largest_bytes": max(rec.largest.values(), default=0)}

    # 2. a detached step: the UNet without a graph, the DDIM mean still on the graph through x_t
    with SavedBytes([unet]) as detached:
        with torch.no_grad(), autocast:
            eps = at_least_fp32(model_eps(unet, x, t, cond, uncond, guidance, a, "epsilon"))
        x_next = ddim_mean(x, eps, a, ap, sigma) + sigma * z
    del x_next

    # 3. the VAE decode of the final latent (inside autocast, as rollout runs it)
    x0 = torch.randn(batch, channels, latent, latent, device=device, dtype=dtype, requires_grad=True) * 1.0
    vae_units: list[dict] = []
    with checkpoint_probe(vae, vae_checkpointing, vae_units), SavedBytes([vae]) as dec, autocast:
        img = vae.decode(x0 / vae.config.scaling_factor).sample
        images = at_least_fp32((img / 2 + 0.5).clamp(0, 1))

    # 4. the reward path: differentiable CLIP preprocessing and the image encoder (outside autocast, float32)
    image_size = int(image_size or image_encoder.config.image_size)
    parts = SimpleNamespace(image_encoder=image_encoder, image_size=image_size, image_mean=tuple(image_mean),
                            image_std=tuple(image_std), device=device, dtype=dtype)
    images = images.detach().requires_grad_(True) * 1.0
    with SavedBytes([image_encoder]) as enc, plain:
        emb = embed_images(parts, images)
    del emb

    lora_bytes = parameter_bytes(unet, only=new)
    unet_units = units[:n_new_units]
    largest_unit = max(unet_units, key=lambda u: u["recompute_bytes"], default=None)
    unit_counts: dict[str, int] = defaultdict(int)
    for u in unet_units:
        unit_counts[u["unit"]] += 1
    return {
        "size": size, "latent": latent, "image_size": image_size, "batch": batch, "unet_batch": batch * (2 if guidance != 1.0 else 1),
        "precision": precision, "weights_dtype": str(dtype).removeprefix("torch."), "checkpointing": checkpointing,
        "vae_checkpointing": vae_checkpointing,
        "weights": {
            "unet": parameter_bytes(unet, skip=list(new) + list(prev)),
            "lora_adapters_2": lora_bytes + parameter_bytes(unet, only=prev),
            "vae": parameter_bytes(vae),
            "text_encoder": parameter_bytes(text_encoder),
            "image_encoder": parameter_bytes(image_encoder),
        },
        "lora_params": sum(p.numel() for p in new),
        "optimizer": {"lora_grads": lora_bytes, "adamw_moments": 2 * lora_bytes},
        "per_attached_step": {k: int(step.by_phase.get(k, 0)) for k in ("unet_new", "unet_prev", "step_ops")},
        "per_detached_step": detached.total,
        "vae_decode": dec.total,
        "image_encoder": enc.total,
        "largest_tensor": {"unet": max(step.largest.values(), default=0), "vae_decode": max(dec.largest.values(), default=0),
                           "image_encoder": max(enc.largest.values(), default=0)},
        "checkpointed_units": dict(unit_counts),
        "largest_unit": largest_unit,
        "prev_call_recompute": prev_recompute,
        "vae_largest_unit": max(vae_units, key=lambda u: u["recompute_bytes"], default=None),
    }


def vae_factor(vae) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


# ------------------------------------------------------------------------------------------ the estimate
def combine(m: dict, *, steps: int = 50, quantile: float = 0.999, truncation: str = "per_step", k: int = 10) -> dict:
    """Per-component bytes and the peak of one micro-batch, at the expected, a high-quantile and the maximal number
    of attached steps: random under per_step truncation (the reference's), exactly ``k`` under per_trajectory
    and stratified.

    Peak = weights + LoRA/AdamW state + saved graph (attached steps, detached steps' latent chain, VAE decode,
    image encoder) + a backward allowance: the larger of (a) the VAE backward's gradients at the start of backward
    and (b) with checkpointing, the larger of the recompute of the largest checkpointed UNet unit and that of the
    previous model's whole-call checkpoint (``prev_call_recompute``), each plus two of its largest tensors as
    gradients; without checkpointing two of the UNet's largest saved tensors. Counting (b) on top of the full graph is
    conservative: by the time backward reaches the UNet, the VAE and image encoder graphs and the later steps'
    graphs are freed (a GPU measurement of the sd15 preset is within 5% of the estimate without (b))."""
    if truncation == "per_step":
        expected, high = sum(attached_probabilities(steps)), attached_quantile(steps, quantile)
    elif truncation in ("per_trajectory", "stratified"):
        expected = high = min(k, steps)
    else:
        raise ValueError(f"unknown truncation {truncation!r}; choose from {list(TRUNCATIONS)}")
    per_step = sum(m["per_attached_step"].values())
    weights = sum(m["weights"].values())
    optimizer = sum(m["optimizer"].values())
    if m.get("vae_checkpointing") and m.get("vae_largest_unit"):
        vae_bwd = m["vae_largest_unit"]["recompute_bytes"] + 2 * m["vae_largest_unit"]["largest_bytes"]
    else:
        vae_bwd = 2 * m["largest_tensor"]["vae_decode"]
    if m["checkpointing"] and m["largest_unit"]:
        unet_bwd = m["largest_unit"]["recompute_bytes"] + 2 * m["largest_unit"]["largest_bytes"]
        if m.get("prev_call_recompute"):  # the previous model's whole-call checkpoint, recomputed in backward
            rec = m["prev_call_recompute"]
            unet_bwd = max(unet_bwd, rec["recompute_bytes"] + 2 * rec["largest_bytes"])
    else:
        unet_bwd = 2 * m["largest_tensor"]["unet"]
    allowance = max(vae_bwd, unet_bwd)
    fixed = weights + optimizer + m["vae_decode"] + m["image_encoder"] + allowance

    def total(n_attached: float) -> float:
        return fixed + n_attached * per_step + (steps - n_attached) * m["per_detached_step"]

    return {
        "steps": steps, "truncation": truncation, "expected_attached": expected, "quantile": quantile, "attached_at_quantile": high,
        "weights_total": weights, "optimizer_total": optimizer, "per_attached_step_total": per_step,
        "backward_allowance": allowance, "backward_allowance_parts": {"vae_backward": vae_bwd, "unet_backward": unet_bwd},
        "peak_expected": total(expected), "peak_quantile": total(high), "peak_all_steps": total(steps),
    }


def verdict(total_bytes: float, gpu_gb: float) -> str:
    cap = gpu_gb * 1e9
    if total_bytes * (1 + FRAGMENTATION) + CONTEXT_BYTES <= cap:
        return "fits"
    if total_bytes <= cap:
        return "tight"
    return "no"


def estimate(size: int = 512, batch: int = 2, precision: str = "fp32", checkpointing: bool = True, *, steps: int = 50,
             vae_checkpointing: bool = False, weights: str = "fp32", truncation: str = "per_step", k: int = 10,
             modules=None) -> dict:
    """:func:`measure` then :func:`combine` for SD 1.5 on the meta device (or ``modules``), with verdicts."""
    unet, vae, text, image = modules if modules is not None else sd15_meta_modules()
    m = measure(unet, vae, text, image, size=size, batch=batch, precision=precision, checkpointing=checkpointing,
                vae_checkpointing=vae_checkpointing, weights=weights)
    c = combine(m, steps=steps, truncation=truncation, k=k)
    c["verdicts"] = {key: {f"{gb}GB": verdict(c[key], gb) for gb in GPUS_GB}
                     for key in ("peak_expected", "peak_quantile", "peak_all_steps")}
    return {**m, **c}


# -------------------------------------------------------------------------------------------------- report
def _gib(n: float) -> str:
    return f"{n / GIB:.2f}"


def table(r: dict) -> str:
    """A Markdown per-component table of one :func:`estimate` result."""
    e, q = r["expected_attached"], r["attached_at_quantile"]
    ps = r["per_attached_step_total"]
    rows = [
        (f"UNet weights ({r['weights_dtype']})", r["weights"]["unet"], "", ""),
        ("LoRA adapters (trained + previous round)", r["weights"]["lora_adapters_2"], "", ""),
        ("VAE weights", r["weights"]["vae"], "", ""),
        ("text encoder weights (CLIP ViT-L/14 text)", r["weights"]["text_encoder"], "", ""),
        ("image encoder weights (CLIP ViT-L/14 vision)", r["weights"]["image_encoder"], "", ""),
        ("LoRA gradients + AdamW moments", r["optimizer_total"], "", ""),
        ("saved graph, trained UNet call (per attached step)", r["per_attached_step"]["unet_new"], "", ""),
        ("saved graph, previous-round UNet call (per attached step)", r["per_attached_step"]["unet_prev"], "", ""),
        ("saved graph, DDIM mean + KL (per attached step)", r["per_attached_step"]["step_ops"], "", ""),
        (f"all attached steps (x {e:g} expected / x {q} at p{r['quantile'] * 100:g})" if r["truncation"] == "per_step"
         else f"all attached steps (x {q}: {r['truncation']} truncation, K = {q})", None,
         e * ps, q * ps),
        ("latent chain through detached steps (all of them)", None, (r["steps"] - e) * r["per_detached_step"],
         (r["steps"] - q) * r["per_detached_step"]),
        (f"VAE decode graph ({r['size']}x{r['size']})", r["vae_decode"], "", ""),
        (f"image encoder graph ({r['image_size']}x{r['image_size']}, preprocessing included)", r["image_encoder"], "", ""),
        ("backward allowance (recompute / gradients, see notes)", r["backward_allowance"], "", ""),
    ]
    high = f"p{r['quantile'] * 100:g} steps" if r["truncation"] == "per_step" else "same"
    lines = [f"| component | GiB | GiB, expected steps | GiB, {high} |", "|---|---:|---:|---:|"]
    for name, once, exp, hi in rows:
        cells = [_gib(once) if once is not None else "", _gib(exp) if exp != "" else "", _gib(hi) if hi != "" else ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"| **peak of one micro-batch** | | **{_gib(r['peak_expected'])}** | **{_gib(r['peak_quantile'])}** |")
    lines.append(f"| peak in GB (1e9 bytes, as GPUs are sold) | | {r['peak_expected'] / 1e9:.1f} | {r['peak_quantile'] / 1e9:.1f} |")
    v_e, v_q = r["verdicts"]["peak_expected"], r["verdicts"]["peak_quantile"]
    for gb in GPUS_GB:
        lines.append(f"| {gb} GB GPU | | {v_e[f'{gb}GB']} | {v_q[f'{gb}GB']} |")
    return "\n".join(lines)


def grid_table(results: list[dict]) -> str:
    """One line per configuration: peaks at the expected / high-quantile / all-50 attached steps and verdicts."""
    q = results[0]["quantile"] * 100 if results else 99.9
    e = results[0]["expected_attached"] if results else 25
    n = results[0]["steps"] if results else 50
    head = ("| precision | frozen weights | UNet checkpointing | trajectories / pass | UNet graph / attached step (new + prev) "
            f"| peak, E = {e:g} attached steps | peak, p{q:g} | peak, all {n} steps | 24 GB | 40 GB | 80 GB |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---|---|---|"]
    for r in results:
        v = r["verdicts"]["peak_expected"]
        vq = r["verdicts"]["peak_quantile"]
        cells = [f"{v[f'{gb}GB']} ({vq[f'{gb}GB']} at p{q:g})" if v[f"{gb}GB"] != vq[f"{gb}GB"] else v[f"{gb}GB"]
                 for gb in GPUS_GB]
        lines.append(f"| {r['precision']} | {r['weights_dtype']} | {'on' if r['checkpointing'] else 'off'} | {r['batch']} | "
                     f"{_gib(r['per_attached_step']['unet_new'] + r['per_attached_step']['unet_prev'])} GiB | "
                     f"{_gib(r['peak_expected'])} GiB | {_gib(r['peak_quantile'])} GiB | {_gib(r['peak_all_steps'])} GiB | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, 4)
    return obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m seiko_core.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="image side in pixels (latent side = size / 8)")
    ap.add_argument("--batch", type=int, default=2, help="trajectories per forward/backward pass")
    ap.add_argument("--precision", choices=sorted(DTYPES), default="fp32",
                    help="fp32, or fp16/bf16 mixed precision (fp32 weights under autocast, as the product runs it)")
    ap.add_argument("--no-checkpointing", action="store_true", help="without the UNet's gradient checkpointing")
    ap.add_argument("--vae-checkpointing", action="store_true",
                    help="what-if: also checkpoint the VAE decoder's blocks (the product does not)")
    ap.add_argument("--weights", choices=("fp32", "half"), default="fp32",
                    help="what-if: 'half' holds the frozen weights in fp16/bf16 (the product loads fp32)")
    ap.add_argument("--truncation", choices=TRUNCATIONS, default="per_step",
                    help="per_step: the reference's (random, 25 of 50 steps attached on average); per_trajectory "
                         "and stratified: exactly --k steps")
    ap.add_argument("--k", type=int, default=10, help="attached steps under per_trajectory and stratified truncation")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (per_step truncation)")
    ap.add_argument("--grid", action="store_true", help="every combination of fp32/fp16, checkpointing on/off, batch 2/4")
    ap.add_argument("--out", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.out:
        try:  # before the estimate: an --out that cannot be written was a traceback after it (seventh review)
            check_can_write(args.out)
        except OSError as exc:
            print(f"error: cannot write --out {str(args.out)!r}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    start = time.time()
    modules = sd15_meta_modules()
    if args.grid:
        configs = [(prec, ckpt, b, "fp32") for prec in ("fp32", "fp16") for ckpt in (True, False) for b in (2, 4)]
        configs += [("fp16", True, b, "half") for b in (2, 4)]  # what-if: frozen weights loaded in half precision
        results = [estimate(args.size, b, prec, ckpt, steps=args.steps, vae_checkpointing=args.vae_checkpointing,
                            weights=w, truncation=args.truncation, k=args.k, modules=modules)
                   for prec, ckpt, b, w in configs]
        print(grid_table(results))
    else:
        results = [estimate(args.size, args.batch, args.precision, not args.no_checkpointing, steps=args.steps,
                            vae_checkpointing=args.vae_checkpointing, weights=args.weights, truncation=args.truncation,
                            k=args.k, modules=modules)]
        r = results[0]
        print(f"SD 1.5 at {args.size}x{args.size}, {args.batch} trajectories per pass (UNet batch {r['unet_batch']}), "
              f"{args.precision}, UNet gradient checkpointing {'on' if r['checkpointing'] else 'off'}, VAE decoder "
              f"checkpointing {'on' if r['vae_checkpointing'] else 'off'}, frozen weights {r['weights_dtype']}; "
              f"estimate computed on the meta device")
        print(table(r))
        if r["largest_unit"]:
            print(f"checkpointed units per UNet call: {r['checkpointed_units']}; largest recompute: "
                  f"{r['largest_unit']['unit']} {_gib(r['largest_unit']['recompute_bytes'])} GiB")
    print(f"({time.time() - start:.1f} s)", file=sys.stderr)
    if args.out:
        write_text(args.out, json.dumps(_jsonable(results if args.grid else results[0]), indent=2) + "\n")  # atomic
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
