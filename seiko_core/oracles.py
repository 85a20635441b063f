"""Simulated raters: oracle functions r(x) that stand in for a person when the loop runs unattended.

An oracle is any callable ``(images, prompts) -> scores``: ``images`` a float tensor (B, 3, H, W) in
[0, 1], ``prompts`` the B prompts the images were sampled with, ``scores`` a float tensor (B,), higher
is better. Feedback is ``r(x) + N(0, sigma^2)`` (:func:`noisy_feedback`); the default sigma is
``DEFAULT_NOISE_FRACTION * spread``, where ``spread`` is the typical std of the oracle's scores under
the pretrained model (SEIKO's simulations use sigma 0.1 on the aesthetic score).

Built-in oracles for the shapes domain (:data:`ORACLES`) reward attributes the training data makes
rare (see :mod:`seiko_core.toy.dataset`), so the high-reward region has low probability under the
pretrained model. They are smooth in pixel colours (partial credit for near-misses and for size), fully
vectorised, differentiable, and ignore the prompts:

- ``purple``: 10 * (1 - exp(-P / 0.15)), P = mean over pixels of exp(-||p - purple||^2 / (2 * 0.12^2));
- ``gold_on_black``: 10 * (1 - exp(-G / 0.15)) * (1 - exp(-K / 0.3)), G = mean over pixels of the
  similarity to the nearer of yellow and orange (same kernel), K = mean over pixels of darkness
  exp(-luma^2 / (2 * 0.15^2)); a gold shape and a dark surround are both needed, so neither an all-gold
  nor an all-black image scores.

``laion_aesthetic`` (:func:`make_laion_oracle`) is the LAION aesthetic predictor the SEIKO paper uses,
loaded from a local safetensors file. User oracles load with :func:`load_oracle` from
``path/to/file.py:function`` or ``package.module:function``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .scratch import Terminated
from .toy.dataset import COLORS

Oracle = Callable[[torch.Tensor, list[str]], torch.Tensor]

DEFAULT_NOISE_FRACTION = 0.1  # default feedback noise sigma, as a fraction of the oracle's spread
DEFAULT_USER_SPREAD = 1.0  # spread assumed for a user oracle that does not declare one (a `spread` attribute)
RANGE_TOLERANCE = 1e-3  # how far outside [0, 1] image values may stray (decoder round-off) before it is an error


class OracleError(ValueError):
    """An oracle that cannot be loaded or called as given; the message says why in one sentence."""


def _why(exc: BaseException) -> str:
    """``Type: message (at file.py:line)`` on one line, the place the innermost frame, so an oracle's bug is found."""
    message = " ".join(str(exc).split()).rstrip(".")
    frames = traceback.extract_tb(exc.__traceback__)
    at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}{': ' + message if message else ''}{at}"


def check_images(images: torch.Tensor, prompts: Sequence[str]) -> None:
    """Raise OracleError unless ``images`` is float (B, 3, H, W) in [0, 1] with B prompts."""
    if not isinstance(images, torch.Tensor):
        raise OracleError(f"oracle images must be a torch.Tensor of shape (B, 3, H, W), got {type(images).__name__}.")
    if images.ndim != 4 or images.shape[1] != 3:
        raise OracleError(f"oracle images must have shape (B, 3, H, W), got {tuple(images.shape)}.")
    if not images.is_floating_point():
        raise OracleError(f"oracle images must be floating point in [0, 1], got dtype {images.dtype}.")
    if images.numel():
        lo, hi = float(images.detach().min()), float(images.detach().max())
        if lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE:
            raise OracleError(f"oracle images must lie in [0, 1], got values in [{lo:.3g}, {hi:.3g}].")
    if isinstance(prompts, str) or len(prompts) != images.shape[0]:
        n = "a single string" if isinstance(prompts, str) else f"{len(prompts)} prompts"
        raise OracleError(f"an oracle needs one prompt per image: got {n} for {images.shape[0]} images.")


@dataclass(frozen=True)
class OracleSpec:
    """An oracle with its name and ``spread``: the typical std of its scores under the pretrained model."""

    name: str
    fn: Oracle
    spread: float

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise OracleError(f"oracle {self.name!r} is not callable (got {type(self.fn).__name__}).")
        if not (math.isfinite(self.spread) and self.spread > 0):
            raise OracleError(f"oracle {self.name!r} needs a positive finite spread, got {self.spread!r}.")

    @property
    def default_sigma(self) -> float:
        """The default feedback noise: ``DEFAULT_NOISE_FRACTION * spread``."""
        return DEFAULT_NOISE_FRACTION * self.spread

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Scores (B,) of ``fn`` with the inputs and output checked."""
        check_images(images, prompts)
        try:
            scores = self.fn(images, list(prompts))
        except Exception as exc:  # a user's oracle that fails: the commands said OracleError only, this a traceback
            raise OracleError(f"oracle {self.name!r} raised {_why(exc)}.") from exc  # (nineteenth review)
        if not isinstance(scores, torch.Tensor):
            raise OracleError(f"oracle {self.name!r} returned {type(scores).__name__}, not a torch.Tensor of scores.")
        # a complex tensor's imaginary part was dropped without a word (.float()), and a sparse or meta tensor, which
        # has no values to check, was a NotImplementedError or RuntimeError traceback (nineteenth review)
        if scores.is_complex():
            raise OracleError(f"oracle {self.name!r} returned complex scores; scores must be real numbers.")
        if scores.layout != torch.strided or scores.is_meta:
            raise OracleError(f"oracle {self.name!r} returned a {scores.layout} tensor on {scores.device}, which holds no "
                              "values to check; scores must be a dense tensor.")
        if scores.shape != (images.shape[0],):
            raise OracleError(f"oracle {self.name!r} returned shape {tuple(scores.shape)}, expected ({images.shape[0]},).")
        if not scores.is_floating_point():
            scores = scores.float()
        if not bool(torch.isfinite(scores.detach()).all()):
            raise OracleError(f"oracle {self.name!r} returned non-finite scores.")
        return scores


# --------------------------------------------------------------------------------------------------
# Built-in pixel oracles for the shapes domain
# --------------------------------------------------------------------------------------------------

COLOR_SIGMA = 0.12  # width of the per-pixel colour kernel, in [0, 1] RGB units
DARK_SIGMA = 0.15  # width of the darkness kernel, in luma units
COVER_SCALE = 0.15  # coverage at which the saturating score reaches 1 - 1/e of its maximum
DARK_SCALE = 0.3  # the same for the dark-surround coverage of gold_on_black
LUMA = (0.299, 0.587, 0.114)  # Rec. 601 luma weights


def _rgb(name: str) -> tuple[float, float, float]:
    return tuple(c / 255.0 for c in COLORS[name][1])


def color_similarity(images: torch.Tensor, rgb: Sequence[float], sigma: float = COLOR_SIGMA) -> torch.Tensor:
    """Per-pixel exp(-||p - rgb||^2 / (2 sigma^2)), (B, H, W), 1 on the colour itself."""
    c = torch.as_tensor(rgb, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.exp(-((images - c) ** 2).sum(1) / (2 * sigma**2))


def darkness(images: torch.Tensor, sigma: float = DARK_SIGMA) -> torch.Tensor:
    """Per-pixel exp(-luma^2 / (2 sigma^2)), (B, H, W): ~0.93 on the black background, ~0 on white or gray."""
    w = torch.as_tensor(LUMA, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    luma = (images * w).sum(1)
    return torch.exp(-(luma**2) / (2 * sigma**2))


def saturate(coverage: torch.Tensor, scale: float) -> torch.Tensor:
    """1 - exp(-coverage / scale): smooth, increasing, 0 at 0 and approaching 1."""
    return 1.0 - torch.exp(-coverage / scale)


def purple(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """0..10, growing with the fraction of the image that is purple (a 5%-frequency colour in training)."""
    coverage = color_similarity(images, _rgb("purple")).mean(dim=(1, 2))
    return 10.0 * saturate(coverage, COVER_SCALE)


def gold_on_black(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """0..10: a yellow or orange shape on a dark background (25% x 30% of the training images)."""
    gold = torch.maximum(color_similarity(images, _rgb("yellow")), color_similarity(images, _rgb("orange")))
    gold_cover = gold.mean(dim=(1, 2))
    dark_cover = darkness(images).mean(dim=(1, 2))
    return 10.0 * saturate(gold_cover, COVER_SCALE) * saturate(dark_cover, DARK_SCALE)


# Spreads: std of the scores over 2,000 training-distribution images (seiko_core.toy.dataset.generate(2000, 0)),
# rounded; tests check them against a fresh estimate.
ORACLES: dict[str, OracleSpec] = {
    "purple": OracleSpec("purple", purple, spread=1.3),
    "gold_on_black": OracleSpec("gold_on_black", gold_on_black, spread=1.4),
}


# --------------------------------------------------------------------------------------------------
# LAION aesthetic predictor
# --------------------------------------------------------------------------------------------------

# Linear layers of the public improved-aesthetic-predictor MLP (nn.Sequential: Linear, Dropout, Linear,
# Dropout, Linear, Dropout, Linear, Linear): 768 -> 1024 -> 128 -> 64 -> 16 -> 1, no non-linearities.
LAION_LINEAR_INDICES = (0, 2, 4, 6, 7)
LAION_DROPOUT = {1: 0.2, 3: 0.2, 5: 0.1}
LAION_KEYS = tuple(f"layers.{i}.{p}" for i in LAION_LINEAR_INDICES for p in ("weight", "bias"))
LAION_SPREAD = 1.0  # with the default noise fraction, gives SEIKO's sigma 0.1 on the aesthetic score


class AestheticMLP(nn.Module):
    """The LAION aesthetic head; layer widths are read from the weights (768 -> ... -> 1 for the public ones)."""

    def __init__(self, widths: Sequence[int]):
        super().__init__()
        if len(widths) != len(LAION_LINEAR_INDICES) + 1:
            raise OracleError(f"the aesthetic MLP has {len(LAION_LINEAR_INDICES)} linear layers, got widths {list(widths)}.")
        modules: list[nn.Module] = []
        k = 0
        for i in range(LAION_LINEAR_INDICES[-1] + 1):
            if i in LAION_LINEAR_INDICES:
                modules.append(nn.Linear(widths[k], widths[k + 1]))
                k += 1
            else:
                modules.append(nn.Dropout(LAION_DROPOUT[i]))
        self.layers = nn.Sequential(*modules)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


def load_aesthetic_mlp(weights_path: str | Path) -> AestheticMLP:
    """The aesthetic MLP from a safetensors file with keys ``layers.{0,2,4,6,7}.{weight,bias}``.

    Convert the public ``sac+logos+ava1-l14-linearMSE.pth`` once, on a trusted machine, with
    ``safetensors.torch.save_file(torch.load(pth), "aesthetic.safetensors")``; this project never
    unpickles a file itself.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise OracleError(f"aesthetic predictor weights {str(path)!r} do not exist (expected a .safetensors file).")
    try:
        state = load_file(str(path))
    except SafetensorError as exc:
        raise OracleError(f"aesthetic predictor weights {str(path)!r} are not a readable safetensors file: {exc}") from exc
    missing = [k for k in LAION_KEYS if k not in state]
    extra = sorted(set(state) - set(LAION_KEYS))
    if missing or extra:
        raise OracleError(f"aesthetic predictor weights {str(path)!r} have the wrong keys (missing {missing}, unexpected "
                          f"{extra}); expected {list(LAION_KEYS)}.")
    widths = [int(state["layers.0.weight"].shape[1])] + [int(state[f"layers.{i}.weight"].shape[0]) for i in LAION_LINEAR_INDICES]
    if widths[-1] != 1:
        raise OracleError(f"aesthetic predictor weights {str(path)!r} end in {widths[-1]} outputs, not 1 score.")
    mlp = AestheticMLP(widths)
    try:
        mlp.load_state_dict(state)
    except RuntimeError as exc:
        raise OracleError(f"aesthetic predictor weights {str(path)!r} have inconsistent layer shapes: "
                          f"{str(exc).splitlines()[-1].strip()}") from exc
    mlp.requires_grad_(False)
    return mlp.eval()


def make_laion_oracle(weights_path: str | Path, parts) -> OracleSpec:
    """The LAION aesthetic score of :func:`seiko_core.features.embed_images` (differentiable w.r.t. images).

    ``parts`` (a ModelParts) must have the encoder the weights expect: CLIP ViT-L/14, 768-d, for the
    public predictor.
    """
    from .features import embed_images

    if parts is None:
        raise OracleError("the laion_aesthetic oracle needs the model parts (its CLIP image encoder) to embed images.")
    mlp = load_aesthetic_mlp(weights_path).to(device=parts.device, dtype=parts.dtype)
    in_dim = mlp.layers[0].in_features
    enc_dim = getattr(getattr(parts.image_encoder, "config", None), "projection_dim", None)
    if enc_dim is not None and int(enc_dim) != in_dim:
        raise OracleError(f"aesthetic predictor expects {in_dim}-d embeddings but the image encoder gives {enc_dim}-d "
                          "(the public predictor needs CLIP ViT-L/14).")

    def laion_aesthetic(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return mlp(embed_images(parts, images)).squeeze(-1).to(images.dtype)

    return OracleSpec("laion_aesthetic", laion_aesthetic, spread=LAION_SPREAD)


# --------------------------------------------------------------------------------------------------
# Loading by name
# --------------------------------------------------------------------------------------------------

LAION_PREFIX = "laion_aesthetic:"


def _choices() -> str:
    return (f"choose from {sorted(ORACLES)}, {LAION_PREFIX}path/to/weights.safetensors, path/to/file.py:function "
            "or package.module:function")


def _import_file(path_text: str):
    path = Path(path_text).expanduser()
    if path.is_dir():  # said "does not exist" of a folder that does (found by the nineteenth review)
        raise OracleError(f"oracle file {path_text!r} is a folder; give the Python file that defines the oracle.")
    if not path.is_file():
        raise OracleError(f"oracle file {path_text!r} does not exist.")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    module_name = f"seiko_user_oracle_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise OracleError(f"oracle file {path_text!r} cannot be imported as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling-free introspection look modules up here
    try:
        spec.loader.exec_module(module)
    except Terminated:  # SIGTERM during the import (scratch.exit_on_sigterm): the command ends as asked, status 143
        del sys.modules[module_name]
        raise
    except (Exception, SystemExit) as exc:  # a file that calls sys.exit() on import is refused, not obeyed
        del sys.modules[module_name]
        raise OracleError(f"oracle file {path_text!r} failed to import: {type(exc).__name__}: "
                          f"{str(exc).rstrip('.')}.".replace("\n", " ")) from exc
    except BaseException:  # Ctrl-C
        del sys.modules[module_name]
        raise
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise OracleError(f"oracle module {name!r} cannot be found.") from exc
        raise


def load_oracle(spec: str, parts=None) -> OracleSpec:
    """Resolve an oracle spec: a built-in name (:data:`ORACLES`), ``laion_aesthetic:weights.safetensors``
    (needs ``parts``), ``path/to/file.py:function`` or ``package.module:function``.

    A user object may be an :class:`OracleSpec` or a callable ``(images, prompts) -> scores``; a callable's
    spread is its ``spread`` attribute if it has one, else ``DEFAULT_USER_SPREAD``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise OracleError(f"no oracle given; {_choices()}.")
    spec = spec.strip()
    if spec in ORACLES:
        return ORACLES[spec]
    if spec.startswith(LAION_PREFIX):
        return make_laion_oracle(spec[len(LAION_PREFIX):], parts)
    if ":" not in spec:
        raise OracleError(f"unknown oracle {spec!r}; {_choices()}.")
    where, attr = spec.rsplit(":", 1)
    if not where or not attr:
        raise OracleError(f"oracle spec {spec!r} needs both a file or module and a function name, as in file.py:function.")
    if where.endswith(".py") or "/" in where or "\\" in where:
        module = _import_file(where)
    else:
        module = _import_module(where)
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise OracleError(f"oracle {spec!r}: {where!r} has no attribute {attr!r}.") from None
    except Exception as exc:  # a module __getattr__ that raises (found by review)
        raise OracleError(f"oracle {spec!r}: {where!r} has no usable {attr!r}: {type(exc).__name__}: "
                          f"{str(exc).rstrip('.')}.") from exc
    if isinstance(obj, OracleSpec):
        return obj
    if not callable(obj):
        raise OracleError(f"oracle {spec!r} is not callable (got {type(obj).__name__}); it must be a function (images, prompts) -> scores.")
    for builtin in ORACLES.values():
        if builtin.fn is obj:
            return builtin
    given = getattr(obj, "spread", DEFAULT_USER_SPREAD)
    try:  # a number, or one held in a 0-d tensor or array (fn.spread = scores.std())
        spread = None if isinstance(given, bool | str) else float(given)
    except (TypeError, ValueError, RuntimeError):
        spread = None
    if spread is None or not (math.isfinite(spread) and spread > 0):
        raise OracleError(f"oracle {spec!r}: its spread must be a positive finite number (the scores' typical "
                          f"spread), got {given!r}.")
    return OracleSpec(name=spec, fn=obj, spread=spread)


# --------------------------------------------------------------------------------------------------
# Noise and spread
# --------------------------------------------------------------------------------------------------


def noisy_feedback(scores: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``scores + N(0, sigma^2)`` element-wise; the noise is drawn with ``generator`` on the scores' device."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise OracleError(f"feedback noise sigma must be a finite number >= 0, got {sigma!r}.")
    noise = torch.randn(scores.shape, generator=generator, device=scores.device, dtype=scores.dtype)
    return scores + sigma * noise


def feedback(oracle: OracleSpec, images: torch.Tensor, prompts: Sequence[str], *, sigma: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Simulated ratings: the oracle's scores plus noise of ``sigma`` (default ``oracle.default_sigma``), no grad."""
    with torch.no_grad():
        scores = oracle(images, prompts)
    return noisy_feedback(scores, oracle.default_sigma if sigma is None else sigma, generator)


def estimate_spread(oracle: Oracle | OracleSpec, images: torch.Tensor, prompts: Sequence[str],
                    batch_size: int = 256) -> float:
    """The std (unbiased) of the oracle's scores on ``images`` (e.g. samples of the pretrained model)."""
    check_images(images, prompts)
    if images.shape[0] < 2:
        raise OracleError(f"estimating a spread needs at least 2 images, got {images.shape[0]}.")
    call = oracle if isinstance(oracle, OracleSpec) else OracleSpec("oracle", oracle, spread=1.0)
    prompts = list(prompts)
    with torch.no_grad():
        scores = torch.cat([call(images[i:i + batch_size], prompts[i:i + batch_size]).float()
                            for i in range(0, images.shape[0], batch_size)])
    return float(scores.std())
