"""LoRA adapters, one per round, on one UNet (peft), saved in the diffusers LoRA format.

Round k's model is the base UNet plus adapter ``round_k``; round k+1's adapter starts as a copy of
round k's, so the previous round's model for the KL term is the same UNet with the adapter switched:
no deep copies. Adapters are saved on their own (``pytorch_lora_weights.safetensors`` with ``unet.``
keys, which stock ``StableDiffusionPipeline.load_lora_weights`` reads); the base model is never
saved with adapters injected.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_directory, verify

WEIGHT_NAME = "pytorch_lora_weights.safetensors"
BASE = None  # the adapter name that means "the pretrained model, no adapter"


def round_adapter_name(index: int) -> str:
    return f"round_{index}"


def lora_config(cfg):
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.target_modules),
                      init_lora_weights=True)  # B = 0: a fresh adapter starts equal to the model it extends


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
                p.copy_(src[n])
    for p in params:
        p.requires_grad_(True)
    return params


def _named(unet, name: str):
    return [(n, p) for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n]


def activate(unet, name: str | None) -> None:
    """Make ``name`` the active adapter (``None``: the base model, every adapter disabled)."""
    if name is BASE:
        if getattr(unet, "peft_config", None):
            unet.disable_adapters()
        return
    if not has_adapter(unet, name):
        raise ValueError(f"unknown adapter {name!r}; choose from {sorted(getattr(unet, 'peft_config', {}))}")
    unet.enable_adapters()
    unet.set_adapter(name)


@contextmanager
def using(unet, name: str | None, restore: str | None, trainable: list[torch.nn.Parameter] | None = None):
    """Run a block with adapter ``name`` active, then restore ``restore`` (and re-enable ``trainable``'s grads)."""
    activate(unet, name)
    try:
        yield
    finally:
        activate(unet, restore)
        for p in trainable or ():
            p.requires_grad_(True)


def adapter_state_dict(unet, name: str) -> dict[str, torch.Tensor]:
    """Adapter ``name`` in the diffusers LoRA key format (``unet.`` prefix), as saved by save_lora_weights."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=name)
    return {f"unet.{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}


def lora_metadata(config: dict) -> dict:
    """The adapter's LoraConfig as diffusers stores it in a safetensors header (keys prefixed ``unet.``).

    Without it, stock ``load_lora_weights`` assumes ``lora_alpha == r`` and applies the wrong scale.
    """
    from peft import LoraConfig

    return {f"unet.{k}": (sorted(v) if isinstance(v, set | tuple) else v) for k, v in config.items()
            if k in LoraConfig.__dataclass_fields__}


def save_adapter(unet, name: str, out_dir: str | Path, *, config: dict | None = None, metrics: dict | None = None) -> str:
    """Write adapter ``name`` atomically to ``out_dir``: weights, lora config, the SEIKO config and metrics
    as JSON, and a manifest with every file's sha256. Returns the manifest's sha256."""
    from safetensors.torch import save_file

    state = adapter_state_dict(unet, name)
    lcfg = unet.peft_config[name].to_dict()
    lcfg = {k: (sorted(v) if isinstance(v, set) else v) for k, v in lcfg.items()}

    def write(tmp: Path) -> None:
        header = {"format": "pt", "lora_adapter_metadata": json.dumps(lora_metadata(lcfg), sort_keys=True, default=str)}
        save_file(state, str(tmp / WEIGHT_NAME), metadata=header)
        (tmp / "adapter_config.json").write_text(json.dumps(lcfg, indent=2, sort_keys=True, default=str))
        (tmp / "seiko_config.json").write_text(json.dumps(config or {}, indent=2, default=str))
        (tmp / "metrics.json").write_text(json.dumps(metrics or {}, indent=2, default=str))

    return atomic_directory(out_dir, write, extra={"adapter": name, "format": "diffusers-lora"})


def load_adapter(parts, path: str | Path, name: str, *, check_manifest: bool = True) -> None:
    """Load an adapter directory written by :func:`save_adapter` onto ``parts``' UNet under ``name`` and activate it."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / WEIGHT_NAME).is_file():
        raise CheckpointError(f"Adapter directory {str(path)!r} has no {WEIGHT_NAME}.")
    if check_manifest and (path / "manifest.json").exists():
        verify(path)
    try:
        state = load_file(str(path / WEIGHT_NAME))
        lcfg = json.loads((path / "adapter_config.json").read_text())
    except (SafetensorError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"Adapter {str(path)!r} could not be read ({exc}).") from exc
    unet = parts.unet
    if has_adapter(unet, name):
        unet.delete_adapters(name)
    keep = {k: v for k, v in lcfg.items() if k in LoraConfig.__dataclass_fields__}
    unet.add_adapter(LoraConfig(**keep), adapter_name=name)
    peft_state = _from_diffusers_keys(state)
    result = set_peft_model_state_dict(unet, peft_state, adapter_name=name)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise CheckpointError(f"Adapter {str(path)!r} has keys this UNet does not: {missing[:3]}...")
    unet.to(parts.device)
    for p in lora_parameters(unet, name):
        p.requires_grad_(False)
    activate(unet, name)


def _from_diffusers_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``unet.x.lora.down.weight`` (diffusers) -> ``x.lora_A.weight`` (peft)."""
    out = {}
    for k, v in state.items():
        if not k.startswith("unet."):
            continue
        k = k[len("unet."):].replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
        out[k] = v
    return out
