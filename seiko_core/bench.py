"""Performance harness: our fine-tuning step and sampler against a reference-style BASELINE, in the same run.

    python -m seiko_core.bench --model shapes|sd15-arch|random|PATH [--device cpu|cuda] [--out FILE.json]
                               [--steps 50] [--batch 2] [--k 1,10,25] [--reps N] [--sample-batches 8,16]
                               [--peak-tflops 800] [--parts finetune,sampling,round]

Three measurements (see BENCHMARKS.md, "Performance", for the figures and the reasoning behind each change):

(a) one fine-tuning step: ``--batch`` trajectories of ``--steps`` DDIM steps with classifier-free guidance
    (``--guidance``, 7.5), the KL to the previous round's model, reward backpropagation through the last K
    steps (per-trajectory truncation, K in ``--k``), gradient clipping and an AdamW step: wall time, peak
    memory and FLOPs (``torch.utils.flop_counter.FlopCounterMode`` on one step), hence achieved TFLOP/s and,
    on a GPU, the fraction of ``--peak-tflops``;
(b) sampling throughput (images/s) at the batch sizes of ``--sample-batches``;
(c) one full SEIKO round of the ``shapes`` preset: reward refit on 32 labels, one fine-tuning epoch, and the
    next batch of 32 images (target: 60 s on 2 CPU cores).

(a) and (b) run OURS (``seiko_core.finetune.trajectory_loss`` / ``seiko_core.sampling.sample``, the code the
product runs) and the BASELINE (:func:`baseline_loss` / :func:`baseline_sample`, written here after the
SEIKO reference code) alternately, repetition by repetition (ours, baseline, baseline, ours, ...), so any
background load on the machine falls on both alike. The BASELINE:

- keeps the previous round's model as a separate deep copy of the UNet (fp32, frozen), as the reference
  keeps one UNet per round;
- makes four UNet calls per denoising step (cond and uncond separately, for the new and the previous
  model) at every step, and sums the KL over every step;
- wraps each whole UNet call of the trained model at an attached step in ``torch.utils.checkpoint``;
- copies the schedule scalars and the step's noise to the device inside the loop.

It is deliberately not weaker than the reference: at attached steps its previous-model calls run on the same
graph-carrying x_t, checkpointed, as the reference does (so the x_t terms cancel in the KL's gradient); at
detached steps both models run under ``no_grad`` (the reference runs the new one with a graph, then detaches).

Same seeds and weights give both paths the same images and the same loss: the harness records the
differences (``check`` fields) and ``tests/seiko_core/test_bench.py`` asserts them. The baseline sums the
KL over all steps, ours over the attached steps only; with per-trajectory truncation the KL of the earlier
steps has no gradient (nothing before the attached window is on the graph), so the gradients are the same
and the objectives differ by a constant: ``loss_matched`` is the baseline's loss with its KL summed over
the attached steps only, which must equal ours.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU, the peak
resident set size (``VmHWM`` in /proc/self/status, reset through /proc/self/clear_refs) of a fresh child
process per (path, K), so the allocator's cached pages of one configuration cannot hide another's. Both are
reported over the memory held once the shared model is loaded: the baseline's extra UNet copy counts.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from . import lora
from .atomic import TMP_PREFIX, atomic_write, check_can_write
from .config import FinetuneConfig, OptimismConfig, RewardConfig, SeikoConfig
from .finetune import at_least_fp32, gaussian_kl, reward_loss, trajectory_loss
from .presets import SHAPES_PROMPTS
from .sampling import DDIMSchedule, SeedNoise, ddim_mean, ddim_sigma, decode, encode_prompts, initial_latents, sample
from .scratch import PixelSpill, add_max_mib_argument, exit_on_sigterm, float_pixels, own_scratch_folder

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs" / "sd15"
SHAPES_DIR = REPO / "models" / "shapes-sd"
SD15_TOKEN_LENGTH = 77
PATHS = ("ours", "baseline")
SCRATCH_COMMAND = "bench"  # a run's own folder in its work dir, for its scratch files: .tmp-bench-*
SCRATCH_FOLDER_PREFIX = f"{TMP_PREFIX}{SCRATCH_COMMAND}-"


# ------------------------------------------------------------------------------------------------- FLOPs
def _register_cpu_attention_flops() -> None:
    """FlopCounterMode counts the CUDA SDPA kernels but not the CPU flash-attention ones torch 2 uses on CPU;
    count them with the same formulas, so CPU and GPU figures count the same work."""
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    registry = fc.flop_registry
    if fwd is not None and fwd not in registry:
        @fc.register_flop_formula(fwd)
        def _cpu_sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_flop_count(query_shape, key_shape, value_shape)
    if bwd is not None and bwd not in registry:
        @fc.register_flop_formula(bwd)
        def _cpu_sdpa_bwd(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return fc.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs (matmuls, convolutions, attention; forward and backward) that ``fn`` runs."""
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_attention_flops()
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ models
def _config(name: str) -> dict:
    """configs/sd15/<name>.json without its private ("_"-prefixed) keys."""
    data = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    return {k: v for k, v in data.items() if not k.startswith("_")}


def sd15_tokenizer(out_dir: str | Path):
    """The shapes model's CLIP BPE tokenizer with SD's 77-token padding: a stand-in for CLIP ViT-L/14's (whose
    vocabulary we do not ship). Its ids are all below 49408, so they index the SD text encoder's embedding."""
    from transformers import CLIPTokenizer

    from .toy.tokenizer import save_tokenizer

    return CLIPTokenizer.from_pretrained(save_tokenizer(Path(out_dir) / "tokenizer"), local_files_only=True,
                                         model_max_length=SD15_TOKEN_LENGTH)


def sd15_modules(device: str | torch.device = "meta", *, sample_size: int | None = None, image_size: int | None = None):
    """(unet, vae, text_encoder, image_encoder) of the SD 1.5 architecture from configs/sd15, random weights.

    ``device="meta"`` builds them without memory (for parameter counts and FLOP estimates). ``sample_size``
    (latent side, 64 for 512 px) and ``image_size`` (image-encoder input, 224) may be shrunk for CPU smoke runs.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    ucfg = _config("unet")
    if sample_size is not None:
        ucfg["sample_size"] = int(sample_size)
    vcfg = _config("image_encoder")
    if image_size is not None:
        vcfg["image_size"] = int(image_size)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(ucfg)
        vae = AutoencoderKL.from_config(_config("vae"))
        text = CLIPTextModel(CLIPTextConfig(**_config("text_encoder")))
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(**vcfg))
    return unet, vae, text, image


def build_sd15_arch(device: str | torch.device = "cpu", *, sample_size: int | None = None, image_size: int | None = None,
                    seed: int = 0, workdir: str | Path | None = None):
    """ModelParts of a random-weight SD 1.5 (UNet, VAE, CLIP ViT-L/14 text and vision towers) built from
    configs/sd15: no hub, no weights. The tokenizer is :func:`sd15_tokenizer`'s stand-in."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    from .models import ModelParts

    device = torch.device(device)
    torch.manual_seed(seed)
    unet, vae, text, image = sd15_modules(device, sample_size=sample_size, image_size=image_size)
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="sd15-arch-"))
    tokenizer = sd15_tokenizer(workdir)
    scheduler = DDIMScheduler.from_config(_config("scheduler"))
    proc = _config("image_processor")
    side = int(image.config.image_size)
    processor = CLIPImageProcessor(do_resize=True, size={"shortest_edge": side}, do_center_crop=True,
                                   crop_size={"height": side, "width": side}, do_normalize=True,
                                   image_mean=proc["image_mean"], image_std=proc["image_std"], resample=proc["resample"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=processor, image_encoder=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for module in (unet, vae, text, image):
        module.requires_grad_(False)
        module.eval()
    return ModelParts(spec="sd15-arch", pipeline=pipe, image_encoder=image, image_size=side,
                      image_mean=tuple(proc["image_mean"]), image_std=tuple(proc["image_std"]), device=device,
                      dtype=torch.float32)


def load_bench_model(name: str, device: str | torch.device, *, sample_size: int | None = None,
                     image_size: int | None = None, workdir: str | Path | None = None):
    """``shapes`` (models/shapes-sd), ``sd15-arch`` (configs/sd15, random weights), ``random`` (a tiny random
    model of the shapes architecture, made in ``workdir``) or a diffusers directory."""
    from .models import ModelLoadError, load_model

    device = torch.device(device)
    if name == "sd15-arch":
        return build_sd15_arch(device, sample_size=sample_size, image_size=image_size, workdir=workdir)
    if sample_size is not None or image_size is not None:
        raise ValueError("--size and --image-size apply to --model sd15-arch only")
    if name == "shapes":
        if not (SHAPES_DIR / "model_index.json").is_file():
            raise ModelLoadError(f"the shapes model is not built at {SHAPES_DIR}; run `make build-model`")
        return load_model(str(SHAPES_DIR), device=device)
    if name == "random":
        from .toy.build import random_model

        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="random-sd-"))
        target = workdir / "random-sd"
        if not (target / "model_index.json").is_file():
            random_model(target, seed=0)
        return load_model(str(target), device=device)
    return load_model(name, device=device)


# ------------------------------------------------------------------------------------------------- setup
@dataclass
class BenchSetup:
    """Everything one fine-tuning step needs, shared by both paths (same weights, same reward, same seeds)."""

    parts: object
    ft: FinetuneConfig
    steps: int
    eta: float
    guidance: float
    adapter: str  # the adapter being trained (round 2)
    reference: str  # the previous round's adapter (round 1): the KL's reference model
    params: list[torch.nn.Parameter]
    reward_fn: Callable
    autocast: Callable[[], object]  # a context-manager factory: bf16 autocast on CUDA, nothing on CPU
    precision: str
    checkpointing: str  # ours: "none" or "blocks" (diffusers' per-block gradient checkpointing)
    prompts: tuple[str, ...] = SHAPES_PROMPTS
    prev_unet: torch.nn.Module | None = None  # the baseline's deep copy, made on first use
    compiled: object | None = None  # parts with a torch.compile'd UNet (sampling's "ours+compile" path), made on first use
    optimizers: dict = field(default_factory=dict)

    @property
    def schedule(self) -> DDIMSchedule:
        return DDIMSchedule.from_scheduler(self.parts.scheduler, self.steps)

    def batch(self, n: int, offset: int = 0) -> tuple[list[str], list[int]]:
        return [self.prompts[(offset + j) % len(self.prompts)] for j in range(n)], [1000 + offset + j for j in range(n)]

    def optimizer(self, path: str) -> torch.optim.Optimizer:
        # lr 0: AdamW does all its work but leaves the weights as they were, so every repetition of either
        # path sees the same model (and the paths stay comparable); weight decay is a no-op at lr 0 too.
        if path not in self.optimizers:
            self.optimizers[path] = torch.optim.AdamW(self.params, lr=0.0, weight_decay=self.ft.weight_decay)
        return self.optimizers[path]

    def baseline_prev(self) -> torch.nn.Module:
        if self.prev_unet is None:
            prev = copy.deepcopy(self.parts.unet)  # fp32, as loaded
            lora.activate(prev, self.reference)
            prev.requires_grad_(False)
            prev.eval()
            self.prev_unet = prev
            lora.activate(self.parts.unet, self.adapter)
        return self.prev_unet


def autocast_factory(device: torch.device, precision: str) -> Callable[[], object]:
    if precision == "bf16":
        return lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp32":
        return nullcontext
    raise ValueError(f"unknown precision {precision!r}; choose from ['bf16', 'fp32']")


def make_setup(parts, *, steps: int = 50, guidance: float = 7.5, eta: float = 1.0, seed: int = 0, precision: str = "fp32",
               checkpointing: str = "none") -> BenchSetup:
    """Adapters round_1 (the previous model) and round_2 (trained, started from round_1), both moved off zero so
    the KL is not trivially 0, and a random (untrained) reward ensemble on the image encoder's embeddings."""
    from .loop import make_reward_fn
    from .reward import RewardEnsemble

    if checkpointing not in ("none", "blocks"):
        raise ValueError(f"unknown checkpointing {checkpointing!r}; choose from ['blocks', 'none']")
    ft = FinetuneConfig(truncation="per_trajectory")  # reference values: lr 1e-3, clip 5, kl 0.01, |r - 10| * 0.01
    unet = parts.unet
    gen = torch.Generator().manual_seed(seed)
    for name, init in (("round_1", None), ("round_2", "round_1")):
        if lora.has_adapter(unet, name):
            unet.delete_adapters(name)
        params = lora.add_adapter(unet, name, ft, init_from=init)
        with torch.no_grad():
            for p in params:
                p.add_(0.02 * torch.randn(p.shape, generator=gen).to(p))
    unet.requires_grad_(False)
    params = lora.lora_parameters(unet, "round_2")
    lora.activate(unet, "round_2")
    for p in params:
        p.requires_grad_(True)
    unet.train()
    dim = int(parts.image_encoder.config.projection_dim)
    ensemble = RewardEnsemble(dim, RewardConfig(), generator=torch.Generator().manual_seed(seed + 1)).eval()
    ensemble.requires_grad_(False)
    cfg = SeikoConfig(optimism=OptimismConfig(aggregation="max"), finetune=ft)
    reward_fn = make_reward_fn(parts, ensemble, None, cfg)
    return BenchSetup(parts=parts, ft=ft, steps=steps, eta=eta, guidance=guidance, adapter="round_2", reference="round_1",
                      params=params, reward_fn=reward_fn, autocast=autocast_factory(parts.device, precision),
                      precision=precision, checkpointing=checkpointing)


def attached_last(steps: int, k: int) -> torch.Tensor:
    """Per-trajectory truncation: gradients through the last ``k`` steps only."""
    return torch.arange(steps) >= steps - min(k, steps)


# ---------------------------------------------------------------------------------------------- baseline
def _unet_eps(unet, x, t, states):
    return unet(x, t, encoder_hidden_states=states).sample


def baseline_loss(setup: BenchSetup, prompts: list[str], seeds: list[int], attached: torch.Tensor) -> dict:
    """BASELINE (reference-style) loss of one batch; the math of SEIKO, the reference's way of computing it.

    Returns {"loss": the reference objective (KL over every step), "loss_matched": the same with the KL over
    the attached steps only (ours' objective; equal gradients), "kl_all", "kl_attached", "reward"}.
    """
    from torch.utils.checkpoint import checkpoint

    parts, ft = setup.parts, setup.ft
    unet, prev = parts.unet, setup.baseline_prev()
    device = parts.device
    schedule = setup.schedule
    cond, uncond = encode_prompts(parts, prompts)
    noise = SeedNoise(seeds, device, parts.dtype)
    x = initial_latents(parts, noise)
    kl_all = torch.zeros(len(prompts), device=device)
    kl_att = torch.zeros(len(prompts), device=device)
    g = setup.guidance
    for i, t in enumerate(schedule.timesteps):
        a, ap = schedule.alpha[i].to(device), schedule.alpha_prev[i].to(device)  # per-step copies, as the reference
        sigma = ddim_sigma(a, ap, setup.eta)
        t_dev = t.to(device)
        keep = bool(attached[i])
        with setup.autocast():
            if keep:  # the whole UNet call under one checkpoint: only its inputs are kept, all of it is recomputed
                e_u = checkpoint(_unet_eps, unet, x, t_dev, uncond, use_reentrant=False)
                e_c = checkpoint(_unet_eps, unet, x, t_dev, cond, use_reentrant=False)
            else:
                with torch.no_grad():
                    e_u, e_c = _unet_eps(unet, x, t_dev, uncond), _unet_eps(unet, x, t_dev, cond)
            # the previous model: the separate frozen copy, at every step, on the same x_t as the new model (the
            # reference runs the old UNet on the latent that carries the gradient, checkpointed, where the step is kept)
            if keep:
                p_u = checkpoint(_unet_eps, prev, x, t_dev, uncond, use_reentrant=False)
                p_c = checkpoint(_unet_eps, prev, x, t_dev, cond, use_reentrant=False)
            else:
                with torch.no_grad():
                    p_u, p_c = _unet_eps(prev, x, t_dev, uncond), _unet_eps(prev, x, t_dev, cond)
            eps = at_least_fp32(e_u + g * (e_c - e_u))
            eps_prev = at_least_fp32(p_u + g * (p_c - p_u))
        mean = ddim_mean(x, eps, a, ap, sigma)
        mean_prev = ddim_mean(x, eps_prev, a, ap, sigma)
        # a sigma = 0 step is deterministic for both models: no KL term (as ours)
        kl_t = gaussian_kl(mean, mean_prev, sigma) if float(sigma) > 0 else torch.zeros(len(prompts), device=device)
        kl_all = kl_all + kl_t
        if keep:
            kl_att = kl_att + kl_t.detach()
        x = mean + sigma * noise.next(tuple(x.shape[1:])).to(x.dtype) if setup.eta > 0 else mean
    with setup.autocast():
        images = at_least_fp32(decode(parts, x.to(parts.dtype)))
    r = setup.reward_fn(images, prompts)
    r_loss = reward_loss(r, ft.loss_coeff, ft.reward_target)
    return {"loss": r_loss + ft.kl_weight * kl_all.mean(), "loss_matched": r_loss.detach() + ft.kl_weight * kl_att.mean(),
            "kl_all": kl_all.detach(), "kl_attached": kl_att, "reward": r.detach(), "images": images.detach()}


@torch.no_grad()
def baseline_sample(parts, prompts: list[str], seeds: list[int], *, steps: int, guidance: float, eta: float,
                    autocast: Callable[[], object] = nullcontext) -> torch.Tensor:
    """BASELINE (reference-style) sampler: cond and uncond in two UNet calls per step, per-step host copies."""
    schedule = DDIMSchedule.from_scheduler(parts.scheduler, steps)
    cond, uncond = encode_prompts(parts, prompts)
    noise = SeedNoise(seeds, parts.device, parts.dtype)
    x = initial_latents(parts, noise)
    for i, t in enumerate(schedule.timesteps):
        a, ap = schedule.alpha[i].to(parts.device), schedule.alpha_prev[i].to(parts.device)
        sigma = ddim_sigma(a, ap, eta)
        t_dev = t.to(parts.device)
        with autocast():
            e_u, e_c = _unet_eps(parts.unet, x, t_dev, uncond), _unet_eps(parts.unet, x, t_dev, cond)
            eps = e_u + guidance * (e_c - e_u)
        mean = ddim_mean(x, eps.to(x.dtype), a, ap, sigma)
        x = mean + sigma * noise.next(tuple(x.shape[1:])) if eta > 0 else mean
    with autocast():
        return decode(parts, x).float().cpu()


# ------------------------------------------------------------------------------------------- the two steps
@contextmanager
def _checkpointing(unet, on: bool):
    if on:
        unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        if on:
            unet.disable_gradient_checkpointing()


def ours_loss(setup: BenchSetup, prompts: list[str], seeds: list[int], attached: torch.Tensor,
              kl_every_step: bool = False) -> dict:
    """OURS: exactly what :func:`seiko_core.finetune.finetune` computes for one micro-batch."""
    loss, r, traj = trajectory_loss(setup.parts, setup.reward_fn, prompts, seeds, setup.ft, schedule=setup.schedule,
                                    eta=setup.eta, guidance=setup.guidance, attached=attached, adapter=setup.adapter,
                                    reference=setup.reference, trainable=setup.params, autocast=setup.autocast,
                                    kl_every_step=kl_every_step)
    return {"loss": loss, "kl": traj.kl.detach(), "reward": r.detach(), "images": traj.images.detach()}


def train_step(setup: BenchSetup, path: str, k: int, batch: int, *, grads: list | None = None) -> dict:
    """One optimiser step of ``path`` ("ours" or "baseline"): loss, backward, clip, AdamW (lr 0)."""
    prompts, seeds = setup.batch(batch)
    attached = attached_last(setup.steps, k)
    unet = setup.parts.unet
    lora.activate(unet, setup.adapter)
    for p in setup.params:
        p.requires_grad_(True)
    opt = setup.optimizer(path)
    opt.zero_grad(set_to_none=True)
    if path == "ours":
        with _checkpointing(unet, setup.checkpointing == "blocks"):
            out = ours_loss(setup, prompts, seeds, attached)
            out["loss"].backward()
    elif path == "baseline":
        out = baseline_loss(setup, prompts, seeds, attached)
        out["loss"].backward()
    else:
        raise ValueError(f"unknown path {path!r}; choose from {list(PATHS)}")
    if grads is not None:
        grads.extend(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in setup.params)
    torch.nn.utils.clip_grad_norm_(setup.params, setup.ft.grad_clip)
    opt.step()
    out["loss"] = out["loss"].detach()
    return out


class _PipelineWithUNet:
    """A pipeline seen through a different ``unet`` (a ``torch.compile``d one); everything else is the original's."""

    def __init__(self, pipeline, unet):
        self._pipeline, self.unet = pipeline, unet

    def __getattr__(self, name):
        return getattr(self._pipeline, name)


def compiled_parts(parts):
    """``parts`` whose UNet is ``torch.compile(parts.unet)`` (same weights, same adapters)."""
    import dataclasses

    return dataclasses.replace(parts, pipeline=_PipelineWithUNet(parts.pipeline, torch.compile(parts.unet)))


def sample_images(setup: BenchSetup, path: str, batch: int) -> torch.Tensor:
    prompts, seeds = setup.batch(batch, offset=100)
    parts = setup.parts
    lora.activate(parts.unet, setup.adapter)
    parts.unet.eval()
    try:
        if path in ("ours", "ours+compile"):
            if path == "ours+compile":
                if setup.compiled is None:
                    setup.compiled = compiled_parts(parts)
                parts = setup.compiled
            with setup.autocast():
                return sample(parts, prompts, seeds, steps=setup.steps, guidance=setup.guidance, eta=setup.eta,
                              batch_size=batch)
        if path == "baseline":
            return baseline_sample(parts, prompts, seeds, steps=setup.steps, guidance=setup.guidance, eta=setup.eta,
                                   autocast=setup.autocast)
        raise ValueError(f"unknown path {path!r}; choose from {list(PATHS)}")
    finally:
        parts.unet.train()


# ------------------------------------------------------------------------------------------------ timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn: Callable[[], object]) -> tuple[float, object]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - t0, out


def _order(rep: int, paths: tuple[str, ...] = PATHS) -> tuple[str, ...]:
    """ours, baseline | baseline, ours | ...: alternate which path goes first, so drifts in load cancel."""
    return tuple(paths) if rep % 2 == 0 else tuple(paths)[::-1]


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "times_s": times}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def _interleaved_times(device: torch.device, paths: tuple[str, ...], reps: int, run: Callable[[str], object],
                       label: str, log) -> dict[str, list[float]]:
    """``reps`` timed calls of ``run(path)`` per path, alternating which path goes first."""
    times: dict[str, list[float]] = {p: [] for p in paths}
    for rep in range(reps):
        for path in _order(rep, paths):
            dt, _ = _timed(device, partial(run, path))
            times[path].append(dt)
            log(f"  {label} rep {rep + 1}/{reps} {path:<8s} {dt:8.3f} s")
    return times


def _add_flops(st: dict, fn: Callable[[], object], device: torch.device, peak_tflops: float | None) -> None:
    """FLOPs of one call of ``fn``, the achieved TFLOP/s at ``st``'s median time and, on CUDA, the fraction of peak."""
    st["flops"] = count_flops(fn)
    st["tflops_per_s"] = st["flops"] / st["median_s"] / 1e12
    if peak_tflops and device.type == "cuda":
        st["fraction_of_peak"] = st["tflops_per_s"] / peak_tflops


def bench_finetune(setup: BenchSetup, ks: list[int], batch: int, reps: int, *, peak_tflops: float | None = None,
                   flops: bool = True, log=print) -> list[dict]:
    """(a): per K, both paths' step times (interleaved), FLOPs, TFLOP/s and the ours-vs-baseline checks."""
    device = setup.parts.device
    rows = []
    for k in ks:
        # warm-up, one step each, which also gives the correctness check: same loss, same gradients
        grads: dict[str, list] = {p: [] for p in PATHS}
        first = {p: train_step(setup, p, k, batch, grads=grads[p]) for p in PATHS}
        g_o, g_b = torch.cat([g.flatten() for g in grads["ours"]]), torch.cat([g.flatten() for g in grads["baseline"]])
        check = {
            "loss_ours": float(first["ours"]["loss"]),
            "loss_baseline": float(first["baseline"]["loss"]),
            "loss_baseline_matched": float(first["baseline"]["loss_matched"]),
            "loss_abs_diff": abs(float(first["ours"]["loss"]) - float(first["baseline"]["loss_matched"])),
            "grad_rel_diff": _rel(g_o, g_b),
            "images_max_abs_diff": float((first["ours"]["images"] - first["baseline"]["images"]).abs().max()),
        }
        step = partial(train_step, setup, k=k, batch=batch)
        times = _interleaved_times(device, PATHS, reps, step, f"finetune K={k:<3d}", log)
        row = {"k": k, "batch": batch, "steps": setup.steps, "check": check}
        for path in PATHS:
            st = _stats(times[path])
            if flops:
                _add_flops(st, partial(step, path), device, peak_tflops)
            row[path] = st
        row["speedup"] = row["baseline"]["median_s"] / row["ours"]["median_s"]
        rows.append(row)
    return rows


def bench_sampling(setup: BenchSetup, batches: list[int], reps: int, *, peak_tflops: float | None = None,
                   flops: bool = True, compile: bool = False, log=print) -> list[dict]:
    """(b): images/s of both samplers per batch size (interleaved), FLOPs and the image difference.

    ``compile`` adds a third path, ours with ``torch.compile(unet)``; its compilation (the first call per
    batch size) is timed apart, as ``compile_s``."""
    device = setup.parts.device
    paths = PATHS + (("ours+compile",) if compile else ())
    rows = []
    for b in batches:
        sample = partial(sample_images, setup, batch=b)
        first, warm_s = {}, {}
        for p in paths:  # warm-up and check
            warm_s[p], first[p] = _timed(device, partial(sample, p))
        times = _interleaved_times(device, paths, reps, sample, f"sampling batch {b:<3d}", log)
        row = {"batch": b, "steps": setup.steps,
               "check": {"images_max_abs_diff": float((first["ours"] - first["baseline"]).abs().max())}}
        for path in paths:
            st = _stats(times[path])
            st["images_per_s"] = b / st["median_s"]
            if path == "ours+compile":
                st["compile_s"] = warm_s[path] - st["median_s"]
                row["check"]["compiled_images_max_abs_diff"] = float((first[path] - first["ours"]).abs().max())
            elif flops:
                _add_flops(st, partial(sample, path), device, peak_tflops)
            row[path] = st
        row["speedup"] = row["ours"]["images_per_s"] / row["baseline"]["images_per_s"]
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ memory
def _proc_status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key} line")


def _reset_rss_peak() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0: writing 5 to /proc/PID/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def memory_child(args) -> dict:
    """Run in a fresh process: load the model, then one step of one path; the peak memory over the loaded model."""
    device = torch.device(args.device)
    parts = load_bench_model(args.model, device, sample_size=args.size, image_size=args.image_size, workdir=args.workdir)
    if args.channels_last:
        parts.unet.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _proc_status_kb("VmRSS") * 1024
        _reset_rss_peak()
    setup = make_setup(parts, steps=args.steps, guidance=args.guidance, precision=args.precision_resolved,
                       checkpointing=args.checkpointing_resolved)
    train_step(setup, args.child_path, args.child_k, args.batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        method = "torch.cuda.max_memory_allocated"
    else:
        peak = _proc_status_kb("VmHWM") * 1024
        method = "VmHWM (peak RSS) of a fresh process, reset after loading"
    return {"path": args.child_path, "k": args.child_k, "loaded_mb": base / 2**20, "peak_mb": peak / 2**20,
            "peak_over_loaded_mb": (peak - base) / 2**20, "method": method}


def bench_memory(args, ks: list[int], log=print) -> list[dict]:
    out = []
    for k in ks:
        for path in PATHS:
            cmd = [sys.executable, "-m", "seiko_core.bench", "--model", args.model, "--device", args.device,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--guidance", str(args.guidance),
                   "--precision", args.precision_resolved, "--checkpointing", args.checkpointing_resolved,
                   "--workdir", str(args.workdir), "--_child", f"{path}:{k}"]
            if args.channels_last:
                cmd += ["--channels-last"]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            if args.size is not None:
                cmd += ["--size", str(args.size)]
            if args.image_size is not None:
                cmd += ["--image-size", str(args.image_size)]
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if res.returncode != 0:
                raise RuntimeError(f"memory child {path} K={k} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
            rec = json.loads(res.stdout.strip().splitlines()[-1])
            log(f"  memory   K={k:<3d} {path:<8s} peak over loaded model {rec['peak_over_loaded_mb']:9.1f} MB")
            out.append(rec)
    return out


# ------------------------------------------------------------------------------------------- full round
def bench_round(parts, *, cfg: SeikoConfig | None = None, seed: int = 0, log=print, spill: PixelSpill | None = None) -> dict:
    """(c): one SEIKO round (default: the shapes preset), timed from the first labels to the next batch of images.
    ``spill``: images beyond its limit are kept in a scratch file, not in memory (the same values)."""
    from .loop import generate_batch, round_prompts, train_round
    from .oracles import ORACLES, feedback
    from .presets import shapes

    if cfg is None:  # the issue's definition of a round: one fine-tuning epoch (the shapes preset runs 5, stopped at 23 s)
        cfg = shapes()
        cfg.finetune.epochs = 1
    n = cfg.budgets[0]
    oracle = ORACLES["purple"]
    gen = torch.Generator().manual_seed(seed)
    # round 0's batch and its (simulated) ratings: the state a round starts from; not timed
    prompts0 = round_prompts(cfg, n, seed)
    images0, emb0 = generate_batch(parts, None, prompts0, list(range(n)), cfg,
                                   pixels_out=float_pixels(spill, "round0-images", f"round 0's {n} images"))
    scores0 = feedback(oracle, images0, prompts0, generator=gen)
    t0 = time.perf_counter()
    outcome = train_round(parts, emb0, scores0, cfg, new_index=1, prev_adapter=None, seed=seed)
    t1 = time.perf_counter()
    prompts1 = round_prompts(cfg, n, seed + 1)
    images0 = None  # rated: its memory (or scratch file) goes before the next batch is drawn
    images1, _ = generate_batch(parts, outcome.adapter, prompts1, list(range(n, 2 * n)), cfg,
                                pixels_out=float_pixels(spill, "round1-images", f"round 1's {n} images"))
    t2 = time.perf_counter()
    ft_s = float(outcome.finetune.metrics["wall_s"])
    rec = {"labels": n, "sampling_steps": cfg.sampling.steps, "finetune_trajectories": outcome.finetune.metrics["trajectories"],
           "total_s": t2 - t0, "reward_fit_and_setup_s": (t1 - t0) - ft_s, "finetune_s": ft_s, "next_batch_s": t2 - t1,
           "target_s": 60.0, "reward_first": outcome.finetune.metrics["reward_first"],
           "reward_last": outcome.finetune.metrics["reward_last"], "images": tuple(images1.shape)}
    rec["meets_target"] = rec["total_s"] <= rec["target_s"]
    log(f"  round    total {rec['total_s']:.1f} s (reward fit {rec['reward_fit_and_setup_s']:.1f} s, fine-tune "
        f"{ft_s:.1f} s, next {n} images {rec['next_batch_s']:.1f} s)")
    return rec


# ------------------------------------------------------------------------------------------------ report
def machine_info(device: torch.device) -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        import diffusers
        import peft

        info["diffusers"], info["peft"] = diffusers.__version__, peft.__version__
    except ImportError as exc:
        info["versions_error"] = str(exc)
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def format_table(result: dict) -> str:
    lines = []
    ft = result.get("finetune") or []
    mem = {(m["path"], m["k"]): m for m in result.get("memory") or []}
    if ft:
        lines.append(f"(a) one fine-tuning step: batch {ft[0]['batch']}, {ft[0]['steps']} DDIM steps, CFG "
                     f"{result['config']['guidance']}, KL, truncation K  [median of {result['config']['reps']} interleaved reps]")
        lines.append(f"{'K':>4} {'path':<9} {'time s':>9} {'peak MB':>9} {'GFLOP':>10} {'TFLOP/s':>8} {'speedup':>8} "
                     f"{'|dloss|':>9} {'grad rel':>9}")
        for row in ft:
            for path in PATHS:
                st = row[path]
                m = mem.get((path, row["k"]))
                lines.append(f"{row['k']:>4} {path:<9} {st['median_s']:9.3f} "
                             f"{(m['peak_over_loaded_mb'] if m else float('nan')):9.1f} "
                             f"{st.get('flops', float('nan')) / 1e9:10.1f} {st.get('tflops_per_s', float('nan')):8.4f} "
                             + (f"{row['speedup']:7.2f}x {row['check']['loss_abs_diff']:9.2e} {row['check']['grad_rel_diff']:9.2e}"
                                if path == "ours" else ""))
    sp = result.get("sampling") or []
    if sp:
        lines.append("")
        lines.append(f"(b) sampling: {sp[0]['steps']} DDIM steps, CFG {result['config']['guidance']}")
        lines.append(f"{'batch':>5} {'path':<12} {'time s':>9} {'img/s':>9} {'TFLOP/s':>8} {'speedup':>8} {'max|dimg|':>10}")
        for row in sp:
            for path in [p for p in (*PATHS, "ours+compile") if p in row]:
                st = row[path]
                extra = ""
                if path == "ours":
                    extra = f"{row['speedup']:7.2f}x {row['check']['images_max_abs_diff']:10.2e}"
                elif path == "ours+compile":
                    extra = (f"{st['images_per_s'] / row['baseline']['images_per_s']:7.2f}x "
                             f"{row['check']['compiled_images_max_abs_diff']:10.2e}  (compile {st['compile_s']:.0f} s)")
                lines.append(f"{row['batch']:>5} {path:<12} {st['median_s']:9.3f} {st['images_per_s']:9.3f} "
                             f"{st.get('tflops_per_s', float('nan')):8.4f} " + extra)
    rd = result.get("round")
    if rd:
        lines.append("")
        lines.append(f"(c) full SEIKO round (shapes preset, {rd['labels']} labels): {rd['total_s']:.1f} s "
                     f"(target {rd['target_s']:.0f} s: {'met' if rd['meets_target'] else 'NOT met'}) = reward fit "
                     f"{rd['reward_fit_and_setup_s']:.1f} s + fine-tune {rd['finetune_s']:.1f} s + next batch "
                     f"{rd['next_batch_s']:.1f} s")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- CLI
def _ints(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from exc
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m seiko_core.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="shapes", help="shapes | sd15-arch | random | a diffusers directory")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (a) and (b) (default 50)")
    ap.add_argument("--batch", type=int, default=2, help="trajectories per fine-tuning step (default 2)")
    ap.add_argument("--k", type=_ints, default=[1, 10, 25], help="truncation lengths K (default 1,10,25)")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per path, after one warm-up (default 3)")
    ap.add_argument("--sample-batches", type=_ints, default=[8, 16], help="sampling batch sizes (default 8,16)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--memory-k", type=_ints, default=None, help="K values for the memory runs (default: --k)")
    ap.add_argument("--peak-tflops", type=float, default=800.0,
                    help="the device's peak for the fraction-of-peak column (default 800: H100 bf16 dense, measured)")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                    help="autocast precision for both paths (auto: bf16 on CUDA, fp32 on CPU)")
    ap.add_argument("--checkpointing", default="auto", choices=["auto", "none", "blocks"],
                    help="ours' gradient checkpointing (auto: per-block on CUDA, none on CPU); the baseline always "
                         "checkpoints whole UNet calls")
    ap.add_argument("--parts", default="finetune,memory,sampling,round",
                    help="which measurements: finetune, memory, sampling, round (default: all; round only for shapes)")
    ap.add_argument("--no-flops", action="store_true", help="skip the FLOP counts")
    ap.add_argument("--channels-last", action="store_true",
                    help="convert the UNet to channels_last memory format (both paths; compare two runs)")
    ap.add_argument("--compile", action="store_true",
                    help="(b) also times ours with torch.compile(unet); compilation time reported apart")
    ap.add_argument("--size", type=int, default=None, help="sd15-arch only: latent side (default 64 = 512 px)")
    ap.add_argument("--image-size", type=int, default=None, help="sd15-arch only: image-encoder input side (default 224)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", default=None,
                    help="where to put generated files (tokenizer, random model); the round's scratch files go in a "
                         f"folder of the run's own in it ({SCRATCH_FOLDER_PREFIX}*), removed when the run ends, and "
                         "nothing else there is removed (default: a temporary folder, removed when the run ends)")
    add_max_mib_argument(ap, f"WORKDIR/{SCRATCH_FOLDER_PREFIX}*")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return ap


def _resolve(args) -> None:
    """The arguments checked (one sentence each), then the work dir made: checked after it, a refused run left its
    temporary folder behind (found by review)."""
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for but torch sees no CUDA device")
    for name in ("steps", "batch", "reps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise SystemExit(f"--threads must be at least 1 (leave it out for torch's default), got {args.threads}")
    cuda = args.device.startswith("cuda")
    args.precision_resolved = args.precision if args.precision != "auto" else ("bf16" if cuda else "fp32")
    args.checkpointing_resolved = args.checkpointing if args.checkpointing != "auto" else ("blocks" if cuda else "none")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="seiko-bench-"))
    args.workdir.mkdir(parents=True, exist_ok=True)


def run(args, log=print) -> dict:
    """All the measurements ``args`` asks for, as one JSON-ready dict."""
    wanted = {p.strip() for p in args.parts.split(",") if p.strip()}
    unknown = wanted - {"finetune", "memory", "sampling", "round"}
    if unknown:
        raise SystemExit(f"unknown --parts {sorted(unknown)}; choose from ['finetune', 'memory', 'round', 'sampling']")
    device = torch.device(args.device)
    result: dict = {
        "config": {"model": args.model, "device": args.device, "steps": args.steps, "batch": args.batch, "k": args.k,
                   "reps": args.reps, "sample_batches": args.sample_batches, "guidance": args.guidance, "eta": 1.0,
                   "precision": args.precision_resolved, "ours_checkpointing": args.checkpointing_resolved,
                   "baseline": "deep-copied fp32 previous UNet; 4 UNet calls per step at every step; whole-UNet "
                               "torch.utils.checkpoint at attached steps; per-step host copies",
                   "peak_tflops": args.peak_tflops, "size": args.size, "image_size": args.image_size,
                   "channels_last": args.channels_last, "compile": args.compile,
                   "interleaved": "each repetition runs both paths, alternating which goes first"},
        "machine": machine_info(device),
    }
    result["machine"]["loadavg_start"] = list(os.getloadavg())
    t0 = time.perf_counter()
    parts = load_bench_model(args.model, device, sample_size=args.size, image_size=args.image_size, workdir=args.workdir)
    result["load_s"] = time.perf_counter() - t0
    if args.channels_last:
        parts.unet.to(memory_format=torch.channels_last)  # both paths (the baseline's copy is made from it)
    log(f"loaded {args.model} on {device} in {result['load_s']:.1f} s")
    setup = make_setup(parts, steps=args.steps, guidance=args.guidance, seed=args.seed, precision=args.precision_resolved,
                       checkpointing=args.checkpointing_resolved)
    peak = args.peak_tflops
    if "finetune" in wanted:
        result["finetune"] = bench_finetune(setup, args.k, args.batch, args.reps, peak_tflops=peak,
                                            flops=not args.no_flops, log=log)
    if "sampling" in wanted:
        result["sampling"] = bench_sampling(setup, args.sample_batches, args.reps, peak_tflops=peak,
                                            flops=not args.no_flops, compile=args.compile, log=log)
    if "memory" in wanted:
        result["memory"] = bench_memory(args, args.memory_k or args.k, log=log)
    if "round" in wanted and args.model not in ("sd15-arch",):
        # a fresh copy of the model: the round adds its own adapters
        setup = None
        parts = load_bench_model(args.model, device, workdir=args.workdir)
        if args.channels_last:
            parts.unet.to(memory_format=torch.channels_last)
        result["round"] = bench_round(parts, seed=args.seed, log=log,
                                      spill=PixelSpill(args.scratch_folder, args.pixels_in_memory_max_bytes))
    result["machine"]["loadavg_end"] = list(os.getloadavg())
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.out and not args._child:
        try:  # before the benchmark: an --out that cannot be written was a traceback after all of it (seventh review)
            check_can_write(args.out)
        except OSError as exc:
            print(f"error: cannot write --out {args.out!r}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    made_workdir = args.workdir is None
    _resolve(args)
    if args._child:
        path, k = args._child.split(":")
        args.child_path, args.child_k = path, int(k)
        print(json.dumps(memory_child(args)))
        return 0
    try:  # the run's scratch folder, and a work dir made here (a temporary folder), go when the run ends
        # The round's scratch files go in a folder of this run's own, never in WORKDIR/scratch: a --workdir may be a
        # live data dir, whose worker makes and maps its scratch files in DATA_DIR/scratch; cleaning that folder took a
        # name from under the worker (its job failed) and removed the folder the worker had just made (ninth review).
        with own_scratch_folder(args.workdir, SCRATCH_COMMAND) as args.scratch_folder:
            result = run(args, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    finally:
        if made_workdir:
            shutil.rmtree(args.workdir)
    print(format_table(result))
    if args.out:  # a temporary name renamed into place: a failed write leaves no half file and an earlier one whole
        atomic_write(args.out, lambda tmp: tmp.write_text(json.dumps(result, indent=2, default=str)))
    return 0


if __name__ == "__main__":
    exit_on_sigterm()  # SIGTERM ends it as Ctrl-C does: its scratch folder goes
    raise SystemExit(main())
