"""LoRA adapters, one per round, on one UNet (peft), saved and loaded through diffusers' own LoRA API.

Round k's model is the base UNet plus adapter ``round_k``; round k+1's adapter starts as a copy of
round k's, so the previous round's model for the KL term is the same UNet with the adapter switched:
no deep copies. Adapters are saved on their own, by diffusers' writer (``save_lora_weights``:
``pytorch_lora_weights.safetensors`` with ``unet.`` keys and the adapter's LoraConfig in the safetensors
header, which stock ``StableDiffusionPipeline.load_lora_weights`` reads), inside an atomic directory with
a manifest; they are loaded by diffusers' loader (``unet.load_lora_adapter``), the one load path of the
worker, the export and the tests (:func:`load_adapter`, :func:`inject`). The base model is never saved
with adapters injected.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_directory, verify

log = logging.getLogger(__name__)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
BASE = None  # the adapter name that means "the pretrained model, no adapter"


def round_adapter_name(index: int) -> str:
    return f"round_{index}"


def lora_config(cfg):
    from peft import LoraConfig

    # B = 0 either way: a fresh adapter starts equal to the model it extends. A: peft's default (True) or, for
    # "gaussian", N(0, 1/r^2) as the reference's LoRA layers (cfg.lora_init; an older config has none: peft's)
    init = "gaussian" if getattr(cfg, "lora_init", "kaiming") == "gaussian" else True
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                      init_lora_weights=init)


def has_adapter(unet, name: str) -> bool:
    return name in getattr(unet, "peft_config", {})


def lora_parameters(unet, name: str) -> list[torch.nn.Parameter]:
    """The trainable tensors of adapter ``name`` (lora_A / lora_B of every targeted layer)."""
    return [p for n, p in unet.named_parameters() if (f".{name}." in n or n.endswith(f".{name}")) and "lora_" in n]


def add_adapter(unet, name: str, cfg, init_from: str | None = None, *, seed: int = 0) -> list[torch.nn.Parameter]:
    """Add adapter ``name`` (a copy of ``init_from`` if given, else zero-effect) and return its parameters.

    peft draws the fresh adapter's A matrices from the global RNG; they are drawn under ``seed`` here (the global
    RNG itself is left as it was), so that a round's result does not depend on what the process ran before."""
    if has_adapter(unet, name):
        raise ValueError(f"adapter {name!r} already exists on this UNet")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        unet.add_adapter(lora_config(cfg), adapter_name=name)
    params = lora_parameters(unet, name)
    if init_from is not None:
        src = dict(zip([n.replace(f".{init_from}.", f".{name}.") for n, _ in _named(unet, init_from)],
                       [p for _, p in _named(unet, init_from)]))
        with torch.no_grad():
            for n, p in _named(unet, name):
                if n in src:  # a layer the older adapter did not target keeps its zero-effect start (B = 0)
                    p.copy_(src[n])
    for p in params:
        p.requires_grad_(True)
    return params


def _named(unet, name: str):
    return [(n, p) for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n]


def _check_known(unet, name: str) -> None:
    if not has_adapter(unet, name):
        raise ValueError(f"unknown adapter {name!r}; choose from {sorted(getattr(unet, 'peft_config', {}))}")


def activate(unet, name: str | None) -> None:
    """Make ``name`` the active adapter (``None``: the base model, every adapter disabled)."""
    if name is BASE:
        if getattr(unet, "peft_config", None):
            unet.disable_adapters()
        return
    _check_known(unet, name)
    unet.enable_adapters()
    unet.set_adapter(name)


def _tuner_layers(unet) -> list:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]


def _switch(layers: list, name: str | None) -> None:
    """Make ``name`` the active adapter of every LoRA layer (``None``: the base model), every adapter frozen.

    What :func:`activate` does through diffusers (``enable_adapters`` + ``set_adapter``, two walks of the whole UNet
    and the activated adapter made trainable), in one pass over the LoRA layers with peft's own per-layer calls."""
    for m in layers:
        if name is BASE:
            m.enable_adapters(False)  # peft: every adapter of the layer frozen, the layer runs its base weights only
        else:
            m.enable_adapters(True)
            m.set_adapter(name, inference_mode=True)  # active and frozen


@contextmanager
def using(unet, name: str | None, restore: str | None, trainable: list[torch.nn.Parameter] | None = None):
    """Run a block with adapter ``name`` active and FROZEN, then restore ``restore`` (and re-enable ``trainable``'s
    grads: nothing else is trainable afterwards). peft's ``set_adapter`` makes the adapter it activates trainable; for
    the KL's fixed previous model that would have autograd compute gradients for weights no optimiser holds
    (backward work and memory for nothing: BENCHMARKS.md, issue 12, measures 14% less peak memory per round). The switch is called twice per attached step, so it
    walks the LoRA layers directly (tests/seiko_core/test_finetune.py checks it against diffusers' ``set_adapter``)."""
    for adapter in (name, restore):
        if adapter is not BASE:
            _check_known(unet, adapter)
    layers = _tuner_layers(unet)
    _switch(layers, name)
    try:
        yield
    finally:
        _switch(layers, restore)
        for p in trainable or ():
            p.requires_grad_(True)


def unet_lora_layers(unet, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name``'s tensors in diffusers' LoRA key format without the ``unet.`` prefix (``x.lora.down.weight``),
    float32 on the CPU: what ``save_lora_weights(unet_lora_layers=...)`` takes, as diffusers' training scripts pass it."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name=name))
    # diffusers' converter renames only attention layers; any other targeted layer (the embedded model's
    # ``add_embedding.proj``) would keep peft's ``lora_A`` name, and diffusers' loader, seeing one peft-style key
    # first, would then skip converting all the others: only that layer would load. Name every layer alike.
    state = {k.replace(".lora_A.", ".lora.down.").replace(".lora_B.", ".lora.up."): v for k, v in state.items()}
    return {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}


def adapter_state_dict(unet, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` in the diffusers LoRA key format (``unet.`` prefix), as saved by save_lora_weights."""
    return {f"unet.{k}": v for k, v in unet_lora_layers(unet, name).items()}


def adapter_metadata(config: dict) -> dict:
    """The adapter's LoraConfig as plain JSON values (sets sorted: the same adapter always has the same metadata).

    diffusers stores it in the safetensors header (keys prefixed ``unet.``); without it, stock ``load_lora_weights``
    assumes ``lora_alpha == r`` and applies the wrong scale.
    """
    from peft import LoraConfig

    fields = {k: (sorted(v) if isinstance(v, set | tuple) else v) for k, v in config.items() if k in LoraConfig.__dataclass_fields__}
    return json.loads(json.dumps(fields, sort_keys=True, default=str))


def write_weights(directory: str | Path, layers: dict[str, torch.Tensor], config: dict) -> None:
    """``layers`` (:func:`unet_lora_layers`' format) and the LoraConfig ``config`` written to ``directory/WEIGHT_NAME`` by
    diffusers' own writer (``StableDiffusionLoraLoaderMixin.save_lora_weights``, safetensors only)."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin

    StableDiffusionLoraLoaderMixin.save_lora_weights(str(directory), unet_lora_layers=layers, weight_name=WEIGHT_NAME,
                                                     safe_serialization=True, unet_lora_adapter_metadata=adapter_metadata(config))


def save_adapter(unet, name: str, out_dir: str | Path, *, config: dict | None = None, metrics: dict | None = None) -> str:
    """Write adapter ``name`` atomically to ``out_dir``: weights (diffusers' writer), lora config, the SEIKO config and
    metrics as JSON, and a manifest with every file's sha256. Returns the manifest's sha256."""
    layers = unet_lora_layers(unet, name)
    broken = next((k for k, t in layers.items() if not bool(torch.isfinite(t).all())), None)
    if broken is not None:  # a diverged training: publishing it would make every next image black or noise
        raise CheckpointError(f"adapter {name!r} holds weights that are not finite numbers (in {broken!r}); the "
                              "training diverged (a lower learning rate or KL weight may help); nothing was written")
    lcfg = unet.peft_config[name].to_dict()
    lcfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in lcfg.items()}

    def write(tmp: Path) -> None:
        write_weights(tmp, layers, lcfg)
        (tmp / "adapter_config.json").write_text(json.dumps(lcfg, indent=2, sort_keys=True, default=str))
        (tmp / "seiko_config.json").write_text(json.dumps(config or {}, indent=2, default=str))
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, default=str))

    return atomic_directory(out_dir, write, extra={"adapter": name, "format": "diffusers-lora"})


def _load_error_sentence(exc: BaseException) -> str:
    """What a failed adapter load says, in one line: torch's 'Error(s) in loading state_dict for ...:' heads one line
    per tensor that does not fit (a hundred for an adapter made for another base model), so its first such line is
    given, with how many more there are; any other error, its first line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1 and lines[0].endswith(":"):
        more = len(lines) - 2
        return lines[1].rstrip(".") + (f"; and {more} more like it" if more else "")
    return lines[0].rstrip(".")


@contextmanager
def _load_errors_at_debug():
    """diffusers logs a failed adapter load at error level with the whole error before it raises it: a hundred lines
    on the terminal above the caller's one sentence (found by review). Those records go to this module's log at
    debug level instead, for the block."""
    source = logging.getLogger("diffusers.loaders.peft")

    def demote(record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        log.debug("diffusers: %s", record.getMessage())
        return False

    source.addFilter(demote)
    try:
        yield
    finally:
        source.removeFilter(demote)


# safetensors' names of the floating-point dtypes a LoRA weight may be stored in
_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})


def inject(unet, path: str | Path, name: str) -> None:
    """Add the adapter saved in directory ``path`` to ``unet`` as ``name``, through diffusers' loader
    (``unet.load_lora_adapter``: its LoraConfig from the file's header). Every tensor of the file must land in the
    UNet; CheckpointError otherwise, or if the file cannot be read (the adapter is then not left half-added)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    weights = path / WEIGHT_NAME
    if not weights.is_file():
        raise CheckpointError(f"Adapter directory {str(path)!r} has no {WEIGHT_NAME}.")
    try:
        with safe_open(str(weights), "pt") as f:
            n_tensors = sum(1 for k in f.keys() if k.startswith("unet."))
            # an adapter rewritten as int16 (its manifest written again) was loaded and cast (sixth review)
            integral = next(((k, d) for k in f.keys() if (d := f.get_slice(k).get_dtype()) not in _FLOAT_DTYPES), None)
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"Adapter {str(path)!r} could not be read ({_load_error_sentence(exc)}).") from exc
    if integral is not None:
        kind = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}
        raise CheckpointError(f"Adapter {str(path)!r} holds weights that are not floating-point numbers "
                              f"({integral[0]!r} is {kind.get(integral[1], integral[1])}).")
    try:
        with _load_errors_at_debug():
            unet.load_lora_adapter(str(path), weight_name=WEIGHT_NAME, prefix="unet", adapter_name=name,
                                   use_safetensors=True, local_files_only=True)
    # json.JSONDecodeError is a ValueError; RuntimeError: a tensor whose shape disagrees with the header's config
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError) as exc:
        if has_adapter(unet, name):  # its layers may be half-added to a UNet the worker keeps (found by review)
            unet.delete_adapters(name)
        # one sentence: the first tensor that does not fit, not 'Error(s) in loading state_dict for ...:' cut at its
        # line break (the whole error stays in the chain and in the debug log)
        raise CheckpointError(f"Adapter {str(path)!r} could not be read ({_load_error_sentence(exc)}).") from exc
    if not all(torch.isfinite(p).all() for _, p in _named(unet, name)):
        unet.delete_adapters(name)
        raise CheckpointError(f"The adapter in {str(path)!r} holds weights that are not finite numbers.")
    # the scale lora_alpha / r comes from the file's header: one saying lora_alpha NaN (JSON as Python reads it) was
    # loaded, and every image after it was NaN; a negative one turned the adapter around (found by review, ninth)
    bad = _bad_scale(unet.peft_config[name])
    if bad is not None:
        unet.delete_adapters(name)
        raise CheckpointError(f"The adapter in {str(path)!r} has {bad} in its LoraConfig; r and lora_alpha must be "
                              "positive finite numbers.")
    # a finite but huge lora_alpha (1e30) passed that check, and its scaled delta overflowed: every output was NaN or
    # inf, and fusing it (the merged export) failed in diffusers with a ValueError traceback (found by review, ninth);
    # one whose delta stayed finite (lora_alpha 1e30 with ordinary weights, or ordinary alpha with huge weights) loaded
    # and drew NaN images (found by review, tenth): the delta's size against the base weight's is checked too
    fault = _unfit_delta(unet, name)
    if fault is not None:
        unet.delete_adapters(name)
        raise CheckpointError(f"The adapter in {str(path)!r} {fault}.")
    loaded = len(_named(unet, name))
    if loaded != n_tensors or not n_tensors:
        if has_adapter(unet, name):
            unet.delete_adapters(name)
        if loaded > n_tensors:  # the config names layers the file has no weights for
            raise CheckpointError(f"The adapter in {str(path)!r} is missing tensors: its config names {loaded} LoRA "
                                  f"layers' weights, its file holds {n_tensors}.")
        raise CheckpointError(f"Only {loaded} of the adapter's {n_tensors} LoRA tensors in {str(path)!r} matched this UNet; "
                              "is it the base model the adapter was trained on?")


# How far an adapter may move one layer: the Frobenius norm of its delta (scale * B @ A, scale = lora_alpha / r, what
# fusing adds) at most DELTA_RATIO_MAX times the Frobenius norm of the base weight it adjusts. A fine-tune adjusts a
# weight; a delta a hundred times the weight drowns it (the layer then computes the adapter alone, scaled up, and the
# activations it feeds grow by as much at every adapted layer after it). Measured on a round the project's fine-tuning
# trains on the embedded model (shapes preset, rank 4, its 20 optimiser steps): the largest ratio of any layer is 0.18
# with the preset's alpha = r and learning rate, and 6.5 with alpha = 2r at ten times that learning rate; 100 is
# fifteen times the latter (RELIABILITY.md, tenth review). lora_alpha 1e30 on a trained adapter's weights is a ratio
# of some 1e28, and every image is NaN. The norms are taken in float64, so a float32 delta whose norm would overflow is
# still measured. A base weight of zeros has no size to compare with: its delta is held to being finite only.
DELTA_RATIO_MAX = 100.0


def _unfit_delta(unet, name: str) -> str | None:
    """What is wrong with adapter ``name`` (the rest of a sentence that starts 'The adapter in ...'): the first layer
    whose merged weight, the base weight plus peft's own scaled delta (``get_delta_weight``: scale * B @ A, what fusing
    adds), is not finite, else the first whose delta's Frobenius norm is over DELTA_RATIO_MAX times the base weight's;
    None when every layer is fit."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    oversized = None
    with torch.no_grad():
        for module_name, m in unet.named_modules():
            if isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {}):
                base, delta = m.get_base_layer().weight, m.get_delta_weight(name)
                if not bool(torch.isfinite(base + delta).all()):
                    return (f"gives weights that are not finite numbers once scaled by its lora_alpha / r and added to "
                            f"the base (in {module_name!r}); its LoraConfig or weights are damaged")
                base_norm = float(torch.linalg.vector_norm(base.double()))
                ratio = float(torch.linalg.vector_norm(delta.double())) / base_norm if base_norm > 0 else 0.0
                if oversized is None and not ratio <= DELTA_RATIO_MAX:
                    oversized = (f"changes {module_name!r} by {ratio:.3g} times that layer's own weight (the Frobenius "
                                 f"norm of lora_alpha / r * B @ A against the base weight's), where a fine-tune stays "
                                 f"within {DELTA_RATIO_MAX:g} times; its lora_alpha or its weights are damaged")
    return oversized


def _bad_scale(config) -> str | None:
    """``field=value`` of the first of ``config``'s r, lora_alpha, rank_pattern and alpha_pattern values that is not a
    positive finite number; None when every one is."""
    import math

    values = [("r", config.r), ("lora_alpha", config.lora_alpha),
              *((f"rank_pattern[{k!r}]", v) for k, v in (config.rank_pattern or {}).items()),
              *((f"alpha_pattern[{k!r}]", v) for k, v in (config.alpha_pattern or {}).items())]
    for field, value in values:
        if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
            return f"{field}={value!r}"
    return None


def load_adapter(parts, path: str | Path, name: str, *, check_manifest: bool = True) -> None:
    """Load an adapter directory written by :func:`save_adapter` onto ``parts``' UNet under ``name`` (frozen) and activate it."""
    path = Path(path)
    if not (path / WEIGHT_NAME).is_file():
        raise CheckpointError(f"Adapter directory {str(path)!r} has no {WEIGHT_NAME}.")
    # a manifest that leaves the weights out let altered weights through (found by review); a directory with no
    # manifest is another tool's diffusers LoRA (save_lora_weights writes none): loaded as it is, nothing to check
    # it against (the worker's adapters are also pinned by the manifest hash the database records)
    if check_manifest and (path / "manifest.json").exists() and WEIGHT_NAME not in verify(path).get("files", {}):
        raise CheckpointError(f"The manifest of adapter {str(path)!r} does not list {WEIGHT_NAME}.")
    unet = parts.unet
    if has_adapter(unet, name):
        unet.delete_adapters(name)
    inject(unet, path, name)
    use_loaded(parts, name)


def use_loaded(parts, name: str) -> None:
    """Make adapter ``name``, which ``inject`` loaded onto ``parts``' UNet, the active one: frozen, on ``parts``'
    device (what :func:`load_adapter` does once it is loaded)."""
    unet = parts.unet
    unet.to(parts.device)
    for p in lora_parameters(unet, name):
        p.requires_grad_(False)
    activate(unet, name)
