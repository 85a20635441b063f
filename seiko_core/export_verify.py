"""Exports you can trust: every model export is re-loaded by stock diffusers in a fresh process and checked.

The check renders one fixed prompt and seed three times, with the experiment's sampler settings (guidance, eta; DDIM
steps up to :data:`CHECK_MAX_STEPS`), at the model's own image size up to :data:`CHECK_MAX_SIDE` pixels:

- **base**: the base model in stock diffusers (``StableDiffusionPipeline.from_pretrained``), in the child process;
- **export**: the export in stock diffusers, in the same child process: the base pipeline plus
  ``load_lora_weights`` for a LoRA (diffusers or kohya format), ``from_pretrained`` of the directory for a
  merged pipeline;
- **app**: the app's own rendering of the round's adapter (``seiko_core.models.load_model`` +
  ``lora.load_adapter`` + ``sampling.sample``), in this process.

and compares 8-bit pixels (0-255 levels):

(a) *the export changes the model*: the mean absolute difference between **export** and **base** must exceed
    :data:`MIN_BASE_MEAN_ABS` levels, else the LoRA did not load (or does nothing);
(b) *the export is the app's model*: the mean absolute difference between **export** and **app** must be at most
    :data:`MAX_APP_MEAN_ABS` levels and the largest at most :data:`MAX_APP_MAX_ABS` levels, else the export is not
    the model the app rendered (wrong scale, a corrupted tensor, a loader that read it differently).

The child is ``python -m seiko_core.export_verify``: its job is JSON on stdin, its results are two PNG files
and one line of JSON on stdout; no pickles cross the process boundary. Both renderers use the same device
(CPU by default) so that they agree to float rounding; the child swaps the base model's scheduler for
``DDIMScheduler.from_config`` (what a user needs too: SEIKO samples with DDIM) and loads no safety checker (the
app renders without one). The thresholds were measured on the embedded shapes model (docs/export.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .export import ExportError

# (a) an export whose image differs from the base model's by at most this mean |difference| (0-255 levels) did not
#     change the model. Measured on the shapes model (docs/export.md, "Verification"): a no-op LoRA gives exactly 0
#     (the base and the export are rendered by the same stock code), rank-4 adapters with lora_B ~ N(0, 0.01^2) and
#     N(0, 0.03^2) move the image by 1.63 and 4.99 levels on average, the tiny test model's adapter by 0.58. An export
#     that did not load gives exactly 0 whatever the adapter, so the threshold can sit low: 0.1 refuses only adapters
#     whose whole effect on the image is a tenth of a level.
MIN_BASE_MEAN_ABS = 0.1
# (b) stock diffusers with the export vs the app's own sampler with the adapter: at most this mean |difference| and
#     this largest |difference| (0-255 levels). Measured on the CPU: 0 and 0 (identical images) for the diffusers and
#     the kohya exports on the shapes model, and for the diffusers export on the tiny test model; the margin is for rounding that other BLAS builds or thread counts may add.
#     A LoRA at 1.5x its scale fails (tests/seiko_core/test_export_verify.py).
MAX_APP_MEAN_ABS = 0.5
MAX_APP_MAX_ABS = 16

# What the check renders, at most. Neither of its two claims (the export changes the model; the export is the app's
# model) depends on the image size or the step count: the same weights act at every position of every step. So a
# large model is checked on a smaller image and fewer steps. SD 1.5 (512 px, the sd15 preset's 50 steps) then renders
# 128 px in 10 steps: a UNet pass with guidance measured 20 s at 512 px and 2.3 s at 128 px on one CPU thread, so
# the three renders went from about 50 minutes, inside the web server, to about 70 s (BENCHMARKS.md, "The export
# check on SD 1.5"). The shapes model (32 px, 10 steps), on which the thresholds above were measured, is checked
# exactly as before.
CHECK_MAX_SIDE = 128
CHECK_MAX_STEPS = 10

KINDS = ("lora", "merged")  # how the child loads the export: base + load_lora_weights, or from_pretrained
DEFAULT_SEED = 20240  # the one fixed seed of the check
CHILD_TIMEOUT_S = 3600.0


class VerificationError(ExportError):
    """An export that failed its check; ``str()`` is one sentence saying which check and by how much.

    An ExportError (a ValueError), so the CLI and the UI show it as a refusal."""

    def __init__(self, message: str, result: Verification | None = None):
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class CheckSettings:
    """What the check renders: the base model, one prompt and seed, the experiment's sampler settings."""

    base_model: str
    prompt: str
    seed: int = DEFAULT_SEED
    steps: int = 50
    guidance: float = 7.5
    eta: float = 1.0
    device: str = "cpu"
    timeout_s: float = CHILD_TIMEOUT_S
    max_side: int = CHECK_MAX_SIDE  # image side in pixels, at most (see check_latent_side)

    @classmethod
    def for_config(cls, base_model: str, cfg, *, prompt: str | None = None, seed: int = DEFAULT_SEED,
                   device: str = "cpu") -> CheckSettings:
        """Settings from a SeikoConfig: its sampler settings, and (unless given) its first held-out eval prompt,
        else its first sampling prompt."""
        chosen = prompt or next(iter([*cfg.eval_prompts, *cfg.prompts]), None)
        if not chosen:
            raise ExportError("The experiment has no prompts, so there is nothing to render to check the export; "
                              "give the check a prompt.")
        s = cfg.sampling
        # below 1 stock diffusers turns guidance off (conditional only) where the app's sampler mixes in the
        # unconditional prediction, so the two could never agree and every export was refused (found by review):
        # the check then renders both at 1, which still tells whether the export carries the trained weights
        guidance = float(s.guidance) if float(s.guidance) >= 1.0 else 1.0
        return cls(base_model=str(base_model), prompt=chosen, seed=int(seed), steps=min(int(s.steps), CHECK_MAX_STEPS),
                   guidance=guidance, eta=float(s.eta), device=device)


def check_latent_side(native: int, vae_factor: int, down_blocks: int, max_side: int) -> int:
    """The latent side the check renders at: the model's own (``native``), halved while the image (latent x
    ``vae_factor``) is wider than ``max_side`` pixels and the half still suits the UNet (a multiple of
    2^(down_blocks - 1), what its down-sampling needs). Both renderers compute it from their own pipeline's config."""
    multiple = 2 ** max(0, int(down_blocks) - 1)
    side = int(native)
    while side * vae_factor > max_side and side % 2 == 0 and (side // 2) % multiple == 0:
        side //= 2
    return side


@dataclass(frozen=True)
class Pixels:
    """How two 8-bit images differ: mean and largest |difference| in 0-255 levels, fraction of values that differ."""

    mean_abs: float
    max_abs: int
    changed_fraction: float

    @classmethod
    def between(cls, a: np.ndarray, b: np.ndarray) -> Pixels:
        if a.shape != b.shape:
            raise VerificationError(f"The export renders {a.shape[1]}x{a.shape[0]} images but the reference is "
                                    f"{b.shape[1]}x{b.shape[0]}; it is not the same model.")
        d = np.abs(a.astype(np.int16) - b.astype(np.int16))
        return cls(mean_abs=round(float(d.mean()), 4), max_abs=int(d.max()), changed_fraction=round(float((d > 0).mean()), 6))


@dataclass(frozen=True)
class Verification:
    """The outcome of one check, as the model card records it."""

    passed: bool
    kind: str
    vs_base: Pixels  # (a) export vs base model
    vs_app: Pixels  # (b) export vs the app's rendering
    settings: dict
    failure: str | None = None
    thresholds: dict = field(default_factory=lambda: {"min_base_mean_abs": MIN_BASE_MEAN_ABS,
                                                      "max_app_mean_abs": MAX_APP_MEAN_ABS,
                                                      "max_app_max_abs": MAX_APP_MAX_ABS})
    loader: str = ""
    diffusers_version: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Verification:
        return cls(**{**data, "vs_base": Pixels(**data["vs_base"]), "vs_app": Pixels(**data["vs_app"])})

    def sentence(self) -> str:
        if self.failure:
            return self.failure
        return (f"Checked: stock diffusers {self.diffusers_version} re-loaded the export in a fresh process ({self.loader}); "
                f"its image differs from the base model's by {self.vs_base.mean_abs:.2f} levels on average (more than "
                f"{MIN_BASE_MEAN_ABS}) and from the app's by {self.vs_app.mean_abs:.3f} on average, {self.vs_app.max_abs} "
                f"at most (within {MAX_APP_MEAN_ABS} and {MAX_APP_MAX_ABS}).")


def judge(kind: str, base: np.ndarray, exported: np.ndarray, app: np.ndarray, settings: CheckSettings, *,
          loader: str = "", diffusers_version: str = "", seconds: float = 0.0) -> Verification:
    """Apply checks (a) and (b) to three 8-bit images (H, W, 3)."""
    vs_base, vs_app = Pixels.between(exported, base), Pixels.between(exported, app)
    failure = None
    if vs_base.mean_abs <= MIN_BASE_MEAN_ABS:
        failure = (f"Export check (a) failed: the LoRA did not load, or does nothing: re-loaded by stock diffusers, the "
                   f"export's image differs from the base model's by {vs_base.mean_abs:.3f} levels on average (largest "
                   f"{vs_base.max_abs}), not more than {MIN_BASE_MEAN_ABS}; the export was not published.")
    elif vs_app.mean_abs > MAX_APP_MEAN_ABS or vs_app.max_abs > MAX_APP_MAX_ABS:
        failure = (f"Export check (b) failed: re-loaded by stock diffusers, the export's image differs from the app's own "
                   f"image for the same seed by {vs_app.mean_abs:.3f} levels on average and {vs_app.max_abs} at most "
                   f"(allowed {MAX_APP_MEAN_ABS} and {MAX_APP_MAX_ABS}), so it is not the model the app trained; the "
                   "export was not published.")
    return Verification(passed=failure is None, kind=kind, vs_base=vs_base, vs_app=vs_app,
                        settings=_public_settings(settings), failure=failure,
                        loader=loader, diffusers_version=diffusers_version, seconds=round(seconds, 2))


def _public_settings(settings: CheckSettings) -> dict:
    """The check's settings as the model card states them: without the time limit, and the base model by its name
    (a local directory's path is the server's; found by review)."""
    from .models import public_name

    shown = {k: v for k, v in asdict(settings).items() if k != "timeout_s"}
    shown["base_model"] = public_name(settings.base_model)
    return shown


# ------------------------------------------------------------------------------------------------ parent
@contextlib.contextmanager
def _quiet_loading():
    """diffusers' and transformers' loading progress bars off for the block, each restored to what it was."""
    from diffusers.utils import logging as d_log
    from transformers.utils import logging as t_log

    was = (d_log.is_progress_bar_enabled(), t_log.is_progress_bar_enabled())
    d_log.disable_progress_bar()
    t_log.disable_progress_bar()
    try:
        yield
    finally:
        if was[0]:
            d_log.enable_progress_bar()
        if was[1]:
            t_log.enable_progress_bar()


@contextlib.contextmanager
def base_model_loads(base_model: str | Path):
    """A base model that cannot be loaded (a local directory gone, a hub cache file damaged: ModelLoadError, a
    RuntimeError) as a VerificationError that says so: it was a traceback from the CLI (found by review), and the
    export itself is not at fault. The check on the base every model export makes first (``export.check_on_base``)
    says it the same way."""
    from .models import ModelLoadError

    try:
        yield
    except ModelLoadError as exc:
        reason = str(exc).strip().rstrip(".")
        raise VerificationError(f"The export check could not load the base model {str(base_model)!r} ({reason}); "
                                "the export itself was not checked, and it was not published.") from exc


def load_check_model(settings: CheckSettings):
    """The base model ``render_app`` draws the app's image with (``models.load_model`` on the check's device)."""
    from .models import load_model

    with _quiet_loading(), base_model_loads(settings.base_model):  # the check answers in one sentence; loading bars would bury it
        return load_model(settings.base_model, device=settings.device)


def render_app(settings: CheckSettings, adapter_dir: str | Path, parts=None, loaded: str | None = None) -> np.ndarray:
    """The app's own image of the check's prompt and seed with the round's adapter: (H, W, 3) uint8. ``parts``: the
    base model the caller loaded already (``load_check_model``), or None to load it here; ``loaded``: the name under
    which its UNet carries ``adapter_dir``'s adapter already, loaded by ``lora.inject`` (``export.check_on_base``),
    or None to load it."""
    from . import lora
    from .sampling import sample, to_uint8

    if parts is None:
        parts = load_check_model(settings)
    if loaded is None:
        lora.load_adapter(parts, adapter_dir, "export_check")
    else:
        lora.use_loaded(parts, loaded)
    side = check_latent_side(parts.sample_size, parts.pipeline.vae_scale_factor,
                             len(parts.unet.config.down_block_types), settings.max_side)
    images = sample(parts, [settings.prompt], [settings.seed], steps=settings.steps, guidance=settings.guidance,
                    eta=settings.eta, batch_size=1, latent_side=side)
    return to_uint8(images)[0]


def render_stock(kind: str, export_path: str | Path, settings: CheckSettings, *,
                 weight_name: str | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(base image, export image, the child's report) rendered by stock diffusers in a fresh Python process."""
    from PIL import Image

    from .models import _check_local_configs, check_hub_files, is_local_spec, resolve_spec

    if kind not in KINDS:
        raise ValueError(f"unknown export kind {kind!r}; choose from {list(KINDS)}")
    with base_model_loads(settings.base_model):
        if is_local_spec(settings.base_model):
            # a local base directory gone, not a pipeline, or with files the child's loader refuses (a shard index
            # naming a .bin): said of the base model, not as the child's failure to re-load the export
            _check_local_configs(Path(resolve_spec(settings.base_model)[0]))
        else:
            # the child loads a hub id's cached weights as they are: they are hashed here first (if one was altered;
            # found by review), once per process, which render_app's load_model shares
            check_hub_files(settings.base_model)
    with tempfile.TemporaryDirectory(prefix="seiko-export-check-") as out:
        job = {"kind": kind, "export": str(Path(export_path).resolve()), "weight_name": weight_name,
               "base_model": settings.base_model, "prompt": settings.prompt, "seed": settings.seed,
               "steps": settings.steps, "guidance": settings.guidance, "eta": settings.eta, "device": settings.device,
               "max_side": settings.max_side,
               "out_dir": out}
        try:
            proc = subprocess.run([sys.executable, "-m", "seiko_core.export_verify"], input=json.dumps(job),
                                  capture_output=True, text=True, timeout=settings.timeout_s, env=dict(os.environ))
        except subprocess.TimeoutExpired as exc:
            raise VerificationError(f"The export check did not finish: stock diffusers took longer than "
                                    f"{settings.timeout_s:.0f} s to re-load and render the export; it was not published.") from exc
        if proc.returncode != 0:
            lines = [ln for ln in (proc.stderr or "").strip().splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else f"exit status {proc.returncode}"
            raise VerificationError(f"Stock diffusers could not re-load the export in a fresh process ({last}); "
                                    "it was not published.")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        base = np.asarray(Image.open(Path(out) / "base.png").convert("RGB"))
        exported = np.asarray(Image.open(Path(out) / "export.png").convert("RGB"))
    return base, exported, report


def verify_export(kind: str, export_path: str | Path, adapter_dir: str | Path, settings: CheckSettings, *,
                  weight_name: str | None = None, app_image: np.ndarray | None = None) -> Verification:
    """Check ``export_path`` against the base model and the app's rendering of ``adapter_dir``.

    Returns the Verification when it passes; raises VerificationError (one sentence, the result attached) when not.
    ``app_image`` may be given when the caller has already rendered it (several exports of one round, or an export
    that loaded the base model for its check on the base: ``app.export``)."""
    start = time.monotonic()
    base, exported, report = render_stock(kind, export_path, settings, weight_name=weight_name)
    app = render_app(settings, adapter_dir) if app_image is None else app_image
    result = judge(kind, base, exported, app, settings, loader=report.get("loader", ""),
                   diffusers_version=report.get("diffusers", ""), seconds=time.monotonic() - start)
    if not result.passed:
        raise VerificationError(result.failure, result)
    return result


# ------------------------------------------------------------------------------------------------- child
def _stock_pipeline(name_or_dir: str, device: str):
    import torch  # noqa: F401  (diffusers needs it; imported here so the parent's import stays light)
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from .models import _load_pretrained, resolve_spec

    # stock diffusers' from_pretrained, through the app's loader: the files are checked as the app checks them first
    # (found by review: a shard index naming a .bin, which the app refuses, was unpickled here)
    name, local = resolve_spec(name_or_dir)
    pipe = _load_pretrained(StableDiffusionPipeline.from_pretrained, name, local, "Model", safety_checker=None,
                            requires_safety_checker=False, use_safetensors=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # SEIKO samples with DDIM
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _render(pipe, job: dict, path: Path) -> None:
    import torch

    latent = check_latent_side(int(pipe.unet.config.sample_size), pipe.vae_scale_factor,
                               len(pipe.unet.config.down_block_types), int(job["max_side"]))
    side = latent * pipe.vae_scale_factor
    image = pipe([job["prompt"]], height=side, width=side, num_inference_steps=int(job["steps"]),
                 guidance_scale=float(job["guidance"]),
                 eta=float(job["eta"]), generator=[torch.Generator().manual_seed(int(job["seed"]))],
                 output_type="pil").images[0]
    image.save(path, format="PNG")


def child(job: dict) -> dict:
    """Render the base model and the export with stock diffusers; write base.png and export.png to ``out_dir``."""
    import diffusers

    out = Path(job["out_dir"])
    pipe = _stock_pipeline(job["base_model"], job["device"])
    _render(pipe, job, out / "base.png")
    if job["kind"] == "lora":
        kwargs = {"weight_name": job["weight_name"]} if job.get("weight_name") else {}
        pipe.load_lora_weights(job["export"], use_safetensors=True, **kwargs)
        loader = "StableDiffusionPipeline.from_pretrained(base) + load_lora_weights(export" + (
            f", weight_name={job['weight_name']!r})" if job.get("weight_name") else ")")
    else:
        del pipe
        pipe = _stock_pipeline(job["export"], job["device"])
        loader = "StableDiffusionPipeline.from_pretrained(export)"
    _render(pipe, job, out / "export.png")
    return {"loader": loader, "diffusers": diffusers.__version__}


def main() -> int:
    job = json.loads(sys.stdin.read())
    needed = ("kind", "export", "base_model", "prompt", "seed", "steps", "guidance", "eta", "device", "max_side", "out_dir")
    missing = [k for k in needed if k not in job]
    if missing or job["kind"] not in KINDS:
        print(f"error: the check's job lacks {missing} or has an unknown kind {job.get('kind')!r}", file=sys.stderr)
        return 2
    print(json.dumps(child(job)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
