"""Batched DDIM sampling with classifier-free guidance and fixed per-image seeds.

The DDIM step is written out (Song et al. 2021, eq. 12) rather than taken from the scheduler so that
fine-tuning can use the same posterior mean and sigma for its KL term; a test checks it against
``diffusers.DDIMScheduler.step``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ProgressFn = Callable[[int, int, dict], None]


PREDICTION_TYPES = ("epsilon", "v_prediction")


class SchedulerConfigError(ValueError):
    """A scheduler configuration this sampler cannot follow exactly; the message says which setting and why."""


@dataclass(frozen=True)
class DDIMSchedule:
    """The timesteps and alpha-bar values of one DDIM run, and what the UNet predicts."""

    timesteps: torch.Tensor  # (S,) descending integer timesteps
    alpha: torch.Tensor  # (S,) alpha-bar at each timestep
    alpha_prev: torch.Tensor  # (S,) alpha-bar at the previous (smaller) timestep
    prediction_type: str = "epsilon"  # "epsilon" or "v_prediction" (SD 2.x-768)

    @classmethod
    def from_scheduler(cls, scheduler, steps: int) -> DDIMSchedule:
        """The schedule of diffusers' ``DDIMScheduler`` built from ``scheduler``'s config.

        The timesteps come from the stock scheduler's own ``set_timesteps`` (so ``timestep_spacing`` and
        ``steps_offset`` are honoured exactly as diffusers does), and alpha-bar at the previous timestep follows
        ``DDIMScheduler.step``: ``alphas_cumprod[t - T // steps]``, or the final value (1 with
        ``set_alpha_to_one``, else ``alphas_cumprod[0]``) past the first timestep. Settings that the written-out
        DDIM step does not follow are refused with a sentence instead of sampling wrongly.
        """
        from diffusers import DDIMScheduler

        cfg = scheduler.config
        pred = cfg.get("prediction_type", "epsilon")
        if pred not in PREDICTION_TYPES:
            raise SchedulerConfigError(f"the scheduler's prediction_type is {pred!r}; this sampler supports "
                                       f"{list(PREDICTION_TYPES)}")
        if steps < 1:
            raise SchedulerConfigError(f"steps must be at least 1, got {steps}")
        ddim = DDIMScheduler.from_config(dict(cfg))  # the stock scheduler's defaults for anything the config omits
        _check_steps(ddim, steps)  # diffusers' own sentence, or an index past the schedule, before (twentieth review)
        for flag in ("thresholding", "clip_sample"):
            if ddim.config.get(flag, False):
                raise SchedulerConfigError(f"the scheduler config sets {flag}=true (or leaves it to DDIM's default, true), "
                                           f"which this sampler does not apply; set {flag} to false in scheduler_config.json")
        ddim.set_timesteps(steps)
        acp = ddim.alphas_cumprod.to(torch.float64)
        ts = ddim.timesteps.long()
        if float(acp[ts].min()) <= 0.0:  # rescale_betas_zero_snr: x0 = (x - sqrt(1-a) eps) / sqrt(a) divides by 0
            raise SchedulerConfigError("the scheduler's schedule reaches zero signal (rescale_betas_zero_snr=true), where "
                                       "this sampler's DDIM step divides by zero; set rescale_betas_zero_snr to false "
                                       "in scheduler_config.json")
        final = acp.new_tensor(float(ddim.final_alpha_cumprod))
        prev = ts - ddim.config.num_train_timesteps // steps
        alpha_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], final)
        return cls(timesteps=ts, alpha=acp[ts].float(), alpha_prev=alpha_prev.float(), prediction_type=pred)

    def __len__(self) -> int:
        return len(self.timesteps)


def _steps_fit(ddim, steps: int) -> bool:
    """Whether diffusers' DDIM schedule of ``steps`` steps takes only timesteps the model was trained on."""
    total = int(ddim.config.num_train_timesteps)
    try:
        ddim.set_timesteps(steps)
    except ValueError:  # more steps than num_train_timesteps: diffusers refuses them
        return False
    return 0 <= int(ddim.timesteps.min()) and int(ddim.timesteps.max()) < total


def max_steps(scheduler_config) -> int:
    """The most DDIM steps the scheduler config of a model allows: at most its ``num_train_timesteps`` (diffusers
    refuses more), fewer where its timestep spacing and ``steps_offset`` would start a finer schedule at a timestep
    the model was not trained on ("leading" spacing with steps_offset 1, Stable Diffusion's: num_train_timesteps - 1,
    whose first timestep is num_train_timesteps itself at that many steps)."""
    from diffusers import DDIMScheduler

    return _max_steps(DDIMScheduler.from_config(dict(scheduler_config)))


def _max_steps(ddim) -> int:
    return next((n for n in range(int(ddim.config.num_train_timesteps), 0, -1) if _steps_fit(ddim, n)), 0)


def check_steps(steps: int, scheduler_config) -> None:
    """``steps`` DDIM steps are ones the scheduler config of a model allows, or SchedulerConfigError with one sentence
    naming the range (``--set sampling.steps=2000`` was accepted, and round 0 failed in diffusers' own words)."""
    from diffusers import DDIMScheduler

    _check_steps(DDIMScheduler.from_config(dict(scheduler_config)), steps)


def _check_steps(ddim, steps: int) -> None:
    """``check_steps`` on a DDIM scheduler already built from the config (``from_scheduler`` builds one anyway)."""
    if steps >= 1 and _steps_fit(ddim, steps):
        return
    total, most = int(ddim.config.num_train_timesteps), _max_steps(ddim)
    why = "" if most == total else (f", and its {ddim.config.timestep_spacing} timestep spacing with steps_offset "
                                    f"{ddim.config.steps_offset} would start a finer schedule past the last")
    raise SchedulerConfigError(f"sampling.steps must be from 1 to {most} for this model (its scheduler was trained on "
                               f"{total} timesteps{why}), got {steps}")


def to_eps(model_out: torch.Tensor, x_t: torch.Tensor, alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The noise prediction implied by the UNet's output: itself for epsilon models; for v-prediction
    (v = sqrt(a) eps - sqrt(1 - a) x_0), eps = sqrt(a) v + sqrt(1 - a) x_t."""
    if prediction_type == "epsilon":
        return model_out
    if prediction_type == "v_prediction":
        return alpha.sqrt() * model_out + (1 - alpha).sqrt() * x_t
    raise SchedulerConfigError(f"unknown prediction_type {prediction_type!r}; choose from {list(PREDICTION_TYPES)}")


def ddim_sigma(alpha: torch.Tensor, alpha_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """sigma_t = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)   (DDIM eq. 16)."""
    return eta * ((1 - alpha_prev) / (1 - alpha)).sqrt() * (1 - alpha / alpha_prev).sqrt()


def ddim_mean(x_t: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, alpha_prev: torch.Tensor,
              sigma: torch.Tensor) -> torch.Tensor:
    """Posterior mean of x_{t-1} given x_t and the predicted noise (DDIM eq. 12 without the noise term)."""
    # 3. predicted x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t)
    x0 = (x_t - (1 - alpha).sqrt() * eps) / alpha.sqrt()
    # 4. direction pointing to x_t: sqrt(1 - a_prev - sigma^2) eps
    direction = (1 - alpha_prev - sigma**2).clamp(min=0).sqrt() * eps
    # 5. mean = sqrt(a_prev) x_0 + direction
    return alpha_prev.sqrt() * x0 + direction


def guided_eps(unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               guidance: float) -> torch.Tensor:
    """Classifier-free guidance with cond and uncond in one batched UNet call."""
    if guidance == 1.0:
        return unet(x_t, t, encoder_hidden_states=cond).sample
    both = unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = both.chunk(2)
    return e_u + guidance * (e_c - e_u)


def model_eps(unet, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, guidance: float,
              alpha: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The guided noise prediction at x_t, whatever the UNet predicts (guidance is linear, so guiding v then
    converting equals converting each branch then guiding)."""
    return to_eps(guided_eps(unet, x_t, t, cond, uncond, guidance), x_t, alpha, prediction_type)


def encode_prompts(parts, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) text-encoder hidden states, each (B, L, D)."""
    tok = parts.tokenizer
    ids = tok(list(prompts) + [""], padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids.to(parts.device)
    with torch.no_grad():
        states = parts.text_encoder(ids)[0].to(parts.dtype)
    return states[:-1], states[-1:].expand(len(prompts), -1, -1)


class SeedNoise:
    """Per-image noise streams: image k draws from its own ``torch.Generator`` seeded with ``seeds[k]``.

    The initial latents come first, then one draw per DDIM step, exactly the order in which stock
    ``StableDiffusionPipeline(..., generator=[torch.Generator().manual_seed(s) for s in seeds])`` draws,
    so an exported adapter in plain diffusers reproduces the app's images for the same seeds.
    """

    def __init__(self, seeds: list[int], device, dtype):
        self.gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.device, self.dtype = device, dtype

    def next(self, shape: tuple[int, ...]) -> torch.Tensor:
        draws = [torch.randn((1, *shape), generator=g) for g in self.gens]
        return torch.cat(draws).to(device=self.device, dtype=self.dtype)

    def draws(self, shape: tuple[int, ...], count: int) -> torch.Tensor:
        """``count`` successive :meth:`next` draws at once, (count, B, *shape), with the same values.

        All the noise of a trajectory is drawn up front and sent to the device in one copy (pinned and
        asynchronous on CUDA), so the denoising loop does no host-to-device copy per step: a copy from
        pageable memory waits for the GPU's queue to drain, which would stall the host every step.
        """
        per_image = [torch.stack([torch.randn(shape, generator=g) for _ in range(count)]) for g in self.gens]
        z = torch.stack(per_image, dim=1).to(self.dtype)  # (count, B, *shape)
        if self.device.type == "cuda":
            return z.pin_memory().to(self.device, non_blocking=True)
        return z.to(self.device)


def initial_latents(parts, noise: SeedNoise) -> torch.Tensor:
    c = parts.unet.config.in_channels
    s = parts.sample_size
    return noise.next((c, s, s))


def trajectory_noise(parts, noise: SeedNoise, steps: int, eta: float, latent_side: int | None = None) -> torch.Tensor:
    """(1 + steps, B, C, S, S) when ``eta > 0`` (the initial latents, then one draw per step), else (1, B, C, S, S):
    the same values, in the same order, as :func:`initial_latents` followed by one ``noise.next`` per step.
    ``latent_side``: S, when not the model's own ``sample_size`` (the export check renders smaller images)."""
    c = parts.unet.config.in_channels
    s = parts.sample_size if latent_side is None else int(latent_side)
    return noise.draws((c, s, s), 1 + (steps if eta > 0 else 0))


@dataclass(frozen=True)
class DeviceSchedule:
    """A :class:`DDIMSchedule` and its sigmas moved to the device once, so the loop indexes device tensors
    (no per-step host-to-device copy of a scalar)."""

    timesteps: torch.Tensor
    alpha: torch.Tensor
    alpha_prev: torch.Tensor
    sigma: torch.Tensor

    @classmethod
    def of(cls, schedule: DDIMSchedule, eta: float, device) -> DeviceSchedule:
        a, ap = schedule.alpha.to(device), schedule.alpha_prev.to(device)
        return cls(timesteps=schedule.timesteps.to(device), alpha=a, alpha_prev=ap, sigma=ddim_sigma(a, ap, eta))

    def __len__(self) -> int:
        return len(self.timesteps)


def decode(parts, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], (B, 3, H, W); differentiable."""
    img = parts.vae.decode(latents / parts.vae.config.scaling_factor).sample
    return (img / 2 + 0.5).clamp(0, 1)


@torch.no_grad()
def sample(parts, prompts: list[str], seeds: list[int], *, steps: int = 50, guidance: float = 7.5, eta: float = 1.0,
           batch_size: int = 16, on_progress: ProgressFn | None = None, latent_side: int | None = None) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for ``prompts`` with one seed each; the same seed gives the same image.
    ``latent_side``: the latent's side when not the model's own (images ``latent_side x`` the VAE's factor wide)."""
    return torch.cat(list(sample_batches(parts, prompts, seeds, steps=steps, guidance=guidance, eta=eta,
                                         batch_size=batch_size, on_progress=on_progress, latent_side=latent_side)))


def sample_batches(parts, prompts: list[str], seeds: list[int], *, steps: int = 50, guidance: float = 7.5,
                   eta: float = 1.0, batch_size: int = 16, on_progress: ProgressFn | None = None,
                   latent_side: int | None = None):
    """:func:`sample`'s images one sampling batch at a time, float32 (b, 3, H, W) on the host, as they are decoded:
    a caller that turns each batch into what it keeps (embeddings, uint8 pixels) never holds the whole set as float."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sched = DDIMSchedule.from_scheduler(parts.scheduler, steps)
    dev = DeviceSchedule.of(sched, eta, parts.device)
    return _sample_batches(parts, prompts, seeds, sched, dev, steps=steps, guidance=guidance, eta=eta,
                           batch_size=batch_size, on_progress=on_progress, latent_side=latent_side)


def _sample_batches(parts, prompts, seeds, sched, dev, *, steps, guidance, eta, batch_size, on_progress,
                    latent_side=None):
    total = len(prompts) * steps
    done = 0
    for lo in range(0, len(prompts), batch_size):
        images = _sample_one_batch(parts, prompts[lo:lo + batch_size], seeds[lo:lo + batch_size], sched, dev,
                                   steps=steps, guidance=guidance, eta=eta, on_progress=on_progress, done=done,
                                   total=total, latent_side=latent_side)
        done += len(images) * len(dev)
        yield images  # outside no_grad: the caller's code between batches runs in its own grad mode


@torch.no_grad()
def _sample_one_batch(parts, p, s, sched, dev, *, steps, guidance, eta, on_progress, done, total, latent_side=None):
    cond, uncond = encode_prompts(parts, p)
    z = trajectory_noise(parts, SeedNoise(s, parts.device, parts.dtype), steps, eta, latent_side)
    x = z[0]
    for i in range(len(dev)):
        a, ap, sigma = dev.alpha[i], dev.alpha_prev[i], dev.sigma[i]
        eps = model_eps(parts.unet, x, dev.timesteps[i], cond, uncond, guidance, a, sched.prediction_type)
        mean = ddim_mean(x, eps, a, ap, sigma)
        x = mean + sigma * z[i + 1] if eta > 0 else mean
        done += len(p)
        if on_progress is not None:
            on_progress(done, total, {"phase": "sample"})
    return decode(parts, x).float().cpu()


def quantize(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> uint8 (B, 3, H, W), the pixels a PNG stores; uint8 input is returned as is."""
    if images.dtype == torch.uint8:
        return images
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def to_uint8(images: torch.Tensor):
    """(B, 3, H, W) float in [0, 1] (or uint8 from :func:`quantize`) -> numpy uint8 (B, H, W, 3)."""
    return quantize(images).permute(0, 2, 3, 1).cpu().numpy()


def grid(images: torch.Tensor, cols: int | None = None, scale: int = 4, pad: int = 2):
    """A PIL image of the batch in a grid, upscaled with nearest-neighbour (no blur)."""
    import math

    from PIL import Image

    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    cols = cols or min(n, 8)
    rows = math.ceil(n / cols)
    canvas = Image.new("RGB", (cols * (w * scale + pad) + pad, rows * (h * scale + pad) + pad), (255, 255, 255))
    for k in range(n):
        tile = Image.fromarray(arr[k]).resize((w * scale, h * scale), Image.NEAREST)
        canvas.paste(tile, (pad + (k % cols) * (w * scale + pad), pad + (k // cols) * (h * scale + pad)))
    return canvas
