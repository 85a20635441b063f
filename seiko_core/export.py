"""Export a round's adapter and the collected ratings in formats other tools read (paths in, paths out).

Formats:

- ``diffusers``: ``pytorch_lora_weights.safetensors`` (``unet.`` keys) with the peft ``LoraConfig`` in the
  safetensors metadata (``lora_adapter_metadata``), written by diffusers' own ``save_lora_weights``
  (``lora.write_weights``, as the round's adapter is), so stock ``pipe.load_lora_weights(dir)`` applies the
  right ``lora_alpha / r`` scale (without the metadata diffusers assumes ``lora_alpha == r``);
- ``kohya``: one A1111 / ComfyUI / kohya-ss style file, ``lora_unet_<module>.lora_down.weight``,
  ``.lora_up.weight`` and ``.alpha`` (a scalar: kohya scales by ``alpha / rank``);
- ``merged``: the base pipeline with the LoRA fused into its weights and the LoRA layers removed,
  saved as safetensors (no ``base_layer`` or ``lora_`` keys: it loads as a plain model);
- ratings: ``metadata.jsonl`` (one row per rating), ``comparisons.jsonl``, ``repeat_ratings.jsonl``, ``skips.jsonl``,
  ``gold.jsonl`` and ``pair_shows.jsonl`` (each only when it has rows) + the PNGs they name under ``images/``.

Every model export is checked against the base model it extends before anything is written (``check_on_base``:
the adapter is loaded onto the base's UNet by ``lora.inject``, the loader of the worker, whose checks include the size
of each layer's delta against its base weight); it is refused in one sentence otherwise.

Every directory is written atomically (``checkpoint.atomic_directory``: temp dir, fsync, rename) with a
``manifest.json`` of sha256 hashes; the single kohya file and the ratings zip by ``seiko_core.atomic.atomic_write``. No
pickles: weights are safetensors, everything else JSON or text.

The model exports take ``finalize(tmp_dir)``: called with the temporary directory once every file is in it,
before the manifest and the rename. ``app.export`` passes one that re-loads the export with stock diffusers in a
fresh process (``seiko_core.export_verify``) and writes the model card (``seiko_core.model_card``); if it raises,
nothing is published and the temporary directory is removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from .atomic import DestinationTaken, atomic_write, check_can_write
from .checkpoint import MANIFEST, CheckpointError, atomic_directory, sha256_file, verify
from .lora import WEIGHT_NAME, _load_error_sentence, inject, write_weights
from .models import is_local_spec, public_name

FORMATS = ("diffusers", "kohya", "merged")
DATASET_FILE = "metadata.jsonl"  # the name Hugging Face `imagefolder` datasets read, with a `file_name` column
IMAGES_DIR = "images"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RATING_FIELDS = ("file_path", "prompt", "seed", "round", "rater", "score", "rated_at")
COMPARISONS_FILE = "comparisons.jsonl"  # one row per comparison vote: two images and the rater's choice
COMPARISON_FIELDS = ("file_path_a", "file_path_b", "choice", "round", "kind", "rater", "voted_at")
REPEATS_FILE = "repeat_ratings.jsonl"  # one row per repeat rating: a rater's second score for an image (self-consistency)
REPEAT_FIELDS = ("file_path", "round", "rater", "score", "rated_at")
SKIPS_FILE = "skips.jsonl"  # one row per skip: an image (kind 'image') or a comparison pair (kind 'pair') set aside
SKIP_FIELDS = {"image": ("file_path", "round", "rater", "skipped_at"),
               "pair": ("file_path_a", "file_path_b", "round", "pair_kind", "rater", "skipped_at")}
GOLD_FILE = "gold.jsonl"  # one row per gold item: an image with a known score set by an admin
GOLD_FIELDS = ("file_path", "round", "score", "set_at")
PAIR_SHOWS_FILE = "pair_shows.jsonl"  # one row per comparison pair put on a rater's screen, and whether they answered it
PAIR_SHOW_FIELDS = ("file_path_a", "file_path_b", "round", "kind", "rater", "shown_at", "answered")
PAIR_SHOW_ANSWERS = ("vote", "skip", None)
SCORE_MIN, SCORE_MAX = 1, 10  # db.models' score range (a CHECK on ratings, repeat_ratings and gold_scores): fixed
VOTE_CHOICES = ("a", "b", "tie")  # db.models.VOTE_CHOICES
_FILE_NAME = re.compile(rf"{IMAGES_DIR}/([0-9a-f]{{64}})\.png")
_KOHYA_KEY = re.compile(r"lora_unet_[A-Za-z0-9_]+\.(lora_down\.weight|lora_up\.weight|alpha)")


class ExportError(ValueError):
    """An export that cannot be made as asked; the message says why in one sentence."""


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the directory (or, for a bare kohya file, the file) written
    format: str  # diffusers, kohya, merged, ratings
    sha256: str  # of the directory's manifest.json (or of the bare file)
    card: dict | None = None  # the model card finalize returned (its verification included), if any


Finalize = Callable[[Path], dict | None]  # (the export's temporary directory) -> the model card written, or None


# --------------------------------------------------------------------------------------------- helpers
def _fresh_destination(path: str | Path) -> Path:
    path = Path(path)
    if os.path.lexists(path):  # a dangling link too: the export would be written where it points
        if _empty(path):  # an export killed between its claim and its rename leaves the claim (atomic.claim_new)
            raise ExportError(f"Export destination {str(path)!r} already exists and is empty (an export killed as it "
                              "finished leaves one); remove it or choose a new path.")
        raise ExportError(f"Export destination {str(path)!r} already exists; choose a new path or remove it first.")
    try:  # before the export's work (a merged pipeline loads and fuses the base first): it was found only after it
        check_can_write(path)
    except OSError as exc:
        raise ExportError(f"Export destination {str(path)!r} cannot be written ({exc.strerror or exc}); choose "
                          "another path.") from exc
    return path


def _empty(path: Path) -> bool:
    """An empty regular file or an empty directory (not a link)."""
    try:
        if path.is_symlink():
            return False
        if path.is_dir():
            with os.scandir(path) as entries:
                return next(entries, None) is None
        return path.is_file() and path.stat().st_size == 0
    except OSError:  # unreadable: reported as existing, which it does
        return False


def _publish(writer, path: Path, write, **kwargs):
    """``writer`` (atomic_write or atomic_directory) onto ``path``, which must still be new when it is published: the
    destination is checked before an export that may take minutes, and one made meanwhile (another export to the same
    place) was replaced when empty, or kept and reported as this export when complete (found by review)."""
    try:
        return writer(path, write, new=True, **kwargs)
    except DestinationTaken as exc:
        raise ExportError(f"Export destination {str(path)!r} was created while the export was written; it is left as "
                          "it is and nothing was written there.") from exc


def read_adapter(adapter_dir: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict]:
    """(diffusers-format UNet state dict, peft LoraConfig dict, manifest) of a verified adapter directory."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    if not adapter_dir.is_dir():
        raise ExportError(f"Adapter directory {str(adapter_dir)!r} does not exist.")
    manifest = verify(adapter_dir)  # CheckpointError unless every file matches its recorded sha256
    for name in (WEIGHT_NAME, "adapter_config.json"):
        if name not in manifest.get("files", {}):
            raise CheckpointError(f"Adapter {str(adapter_dir)!r} has no {name} in its manifest; it is not a SEIKO adapter.")
    try:
        state = load_file(str(adapter_dir / WEIGHT_NAME))
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
    except (SafetensorError, json.JSONDecodeError, OSError) as exc:
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} could not be read ({exc}).") from exc
    if not state:
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} holds no weights.")
    if not isinstance(config, dict):
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} has an adapter_config.json that is not a JSON object.")
    foreign = [k for k in state if not k.startswith("unet.") or not k.endswith((".lora.down.weight", ".lora.up.weight"))]
    if foreign:
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} has keys outside the diffusers UNet LoRA format, e.g. {foreign[0]!r}.")
    # an adapter rewritten as int16 (its manifest written again to match) was exported (sixth review)
    integral = next((k for k, t in state.items() if not t.is_floating_point()), None)
    if integral is not None:
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} holds weights that are not floating-point numbers "
                              f"({integral!r} is {str(state[integral].dtype).removeprefix('torch.')}).")
    # found by review: an adapter of NaN weights was exported and its check passed (both renderers drew the same
    # broken image)
    broken = next((k for k, t in state.items() if not bool(torch.isfinite(t).all())), None)
    if broken is not None:
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} holds weights that are not finite numbers (in {broken!r}); "
                              "the training that wrote it diverged.")
    if config.get("use_dora"):
        raise ExportError(f"Adapter {str(adapter_dir)!r} is a DoRA adapter; only plain LoRA adapters can be exported.")
    for field in ("r", "lora_alpha", "target_modules"):
        if field not in config:
            raise CheckpointError(f"Adapter {str(adapter_dir)!r} has no {field!r} in adapter_config.json.")
    for field in ("r", "lora_alpha"):
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise CheckpointError(f"Adapter {str(adapter_dir)!r} has {field}={value!r} in adapter_config.json; "
                                  "it must be a positive number.")
    _check_header_config(adapter_dir, config)
    for name in _ADAPTER_JSON:  # copied into the diffusers and merged exports as they are
        _check_json_object(adapter_dir, name)
    return state, config, manifest


_ADAPTER_JSON = ("seiko_config.json", "metrics.json")  # the JSON objects save_adapter writes beside the weights


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON value")


def _check_json_object(adapter_dir: Path, name: str) -> None:
    """``adapter_dir / name``, when there is one, must be a JSON object (NaN and Infinity are not JSON): the exports
    copied seiko_config.json and metrics.json unread, so one that was not JSON, or a list, was published as the
    export's (found by review, ninth)."""
    path = adapter_dir / name
    if not path.is_file():
        return
    try:
        value = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc).splitlines()[0]
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} has a {name} that is not valid JSON ({reason}); it was "
                              "damaged or edited after the adapter was written.") from exc
    if not isinstance(value, dict):
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} has a {name} that is a JSON {type(value).__name__}, not "
                              "an object; it was damaged or edited after the adapter was written.")


# the LoraConfig fields that set what an adapter computes, with peft's defaults (a field a config leaves out)
_SCALE_FIELDS = {"r": None, "lora_alpha": None, "use_rslora": False, "use_dora": False, "rank_pattern": {},
                 "alpha_pattern": {}, "target_modules": None}


def _check_header_config(adapter_dir: Path, config: Mapping[str, Any]) -> None:
    """``adapter_config.json`` must say what the LoraConfig in the weights' safetensors header says: the app (and the
    merged export) load an adapter by the header (diffusers' ``load_lora_adapter``), the diffusers and kohya exports
    took r and lora_alpha from adapter_config.json, so one edited (its manifest written again) was exported at
    another scale than the model the app renders (found by review, ninth). ``save_adapter`` writes both alike."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(adapter_dir / WEIGHT_NAME), "pt") as f:
            text = (f.metadata() or {}).get(LORA_ADAPTER_METADATA_KEY)
        header = json.loads(text) if text is not None else None
    except (SafetensorError, OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} has a weights header that could not be read ({exc}).") from exc
    if not isinstance(header, dict):
        raise CheckpointError(f"Adapter {str(adapter_dir)!r} has no LoraConfig in its weights' header, which the "
                              "loaders read; it is not a SEIKO adapter.")
    loaded = {k.removeprefix("unet."): v for k, v in header.items() if k.startswith("unet.")}

    def norm(value: Any) -> Any:
        return sorted(value) if isinstance(value, list | tuple) else value

    for name, default in _SCALE_FIELDS.items():
        said, read = norm(config.get(name, default)), norm(loaded.get(name, default))
        if said != read:
            raise CheckpointError(f"Adapter {str(adapter_dir)!r} has {name}={said!r} in adapter_config.json but {read!r} "
                                  "in the LoraConfig of its weights' header, which the loaders read; it was edited "
                                  "after it was written.")


def _copy_json_files(src: Path, dst: Path, names: Iterable[str]) -> None:
    for name in names:
        if (src / name).is_file():
            shutil.copyfile(src / name, dst / name)


# ------------------------------------------------------------------------------------------- diffusers
_DIFFUSERS_README = """# SEIKO LoRA adapter (diffusers format)

`{weights}` holds the UNet LoRA (rank {r}, alpha {alpha}) with its LoraConfig in the safetensors metadata.

```python
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{base}")
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # SEIKO samples with DDIM (eta needs it)
pipe.load_lora_weights("path/to/this/directory")  # reads {weights}
{sampling}"""

# how SEIKO samples, in both model READMEs: the merged one gave only eta=1.0, which Stable Diffusion 1.5's default
# scheduler (PNDM) ignores, so its images were not SEIKO's (found by review)
_SAMPLING = """STEPS, GUIDANCE = 50, 7.5  # the experiment's: model_card.json, "verification" -> "settings" ("steps", "guidance")
images = pipe(["a prompt"], num_inference_steps=STEPS, guidance_scale=GUIDANCE, eta=1.0,
              generator=[torch.Generator().manual_seed(s) for s in [0]]).images
```

With DDIM, the experiment's steps and guidance, eta=1 and one CPU generator per image seeded this way, the images
are SEIKO's (the export was checked this way: model_card.json, "verification"). diffusers' default scheduler of
Stable Diffusion 1.5 (PNDM) ignores eta and draws other images.
"""


def _loadable_base(base_model: str | Path) -> str:
    """The base model as a README's ``from_pretrained(...)`` names it: a hub id as given, a local directory as
    ``path/to/<its name>`` (the server's path is not the reader's), the placeholder BASE_MODEL as it is."""
    text = str(base_model)
    if text == "BASE_MODEL" or not is_local_spec(text):
        return text
    return f"path/to/{public_name(text)}"


def export_diffusers_lora(adapter_dir: str | Path, out_dir: str | Path, *, base_model: str | Path,
                          finalize: Finalize | None = None, base_unet: Callable[[], Any] | None = None) -> ExportResult:
    """The adapter as a diffusers LoRA directory that stock ``pipe.load_lora_weights(out_dir)`` reads, after
    ``check_on_base`` against ``base_model``, the model it was trained on (on ``base_unet``'s UNet, if given)."""
    out_dir = _fresh_destination(out_dir)
    adapter_dir = Path(adapter_dir)
    state, config, manifest = read_adapter(adapter_dir)
    check_on_base(base_model, adapter_dir, base_unet)
    layers = {k.removeprefix("unet."): v for k, v in state.items()}

    def write(tmp: Path) -> None:
        write_weights(tmp, layers, config)
        _copy_json_files(adapter_dir, tmp, ("adapter_config.json", *_ADAPTER_JSON))
        (tmp / "README.md").write_text(_DIFFUSERS_README.format(weights=WEIGHT_NAME, r=config["r"], alpha=config["lora_alpha"],
                                                                base=_loadable_base(base_model), sampling=_SAMPLING))
        card.append(finalize(tmp) if finalize else None)

    card: list = []
    digest = _publish(atomic_directory, out_dir, write, extra=_provenance("diffusers-lora", adapter_dir, manifest))
    return ExportResult(out_dir, "diffusers", digest, card[-1] if card else None)


def load_base_unet(base_model: str | Path):
    """The UNet of ``base_model`` alone, by the app's own loader and with its checks (``load_base_pipeline``'s, for
    the one component ``check_on_base`` needs); a base that cannot be loaded is refused as the export check's own
    (``export_verify.base_model_loads``: a VerificationError, one sentence)."""
    from diffusers import UNet2DConditionModel

    from .export_verify import base_model_loads
    from .models import _check_weights, _load_pretrained, resolve_spec

    with base_model_loads(base_model):
        name, local = resolve_spec(str(base_model))
        unet = _load_pretrained(UNet2DConditionModel.from_pretrained, name, local, "Model", subfolder="unet",
                                use_safetensors=True)
        _check_weights(str(base_model), {"unet": unet})
    return unet


def _inject_checked(unet, adapter_dir: str | Path, name: str) -> None:
    """``lora.inject`` (the worker's loader, with every check it makes: each tensor lands in this UNet, r and
    lora_alpha are positive finite numbers, each layer's merged weight is finite and its delta at most
    ``lora.DELTA_RATIO_MAX`` times its base weight), its refusal as an ExportError."""
    try:
        inject(unet, adapter_dir, name)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from exc


CHECK_ADAPTER = "seiko_export_check"  # the adapter's name on the base's UNet while check_on_base checks it


def check_on_base(base_model: str | Path, adapter_dir: str | Path, base_unet: Callable[[], Any] | None = None) -> None:
    """Refuse (ExportError, one sentence) an adapter that the app would refuse to load onto ``base_model``: the one
    check of every model export, made before anything is written. The merged export loaded the adapter by
    ``lora.inject``, whose checks refuse an adapter whose delta dwarfs the weight it adjusts (tenth review); the
    diffusers and kohya exports read its files only, so without the app's finalize (whose check loads it in the app)
    such an adapter, lora_alpha 1e30 on ordinary weights, was exported, and every image drawn with it was NaN (found
    by review, eleventh).

    ``base_unet``: returns the UNet of ``base_model`` that the caller loaded (by ``models.load_model``, whose checks
    include ``load_base_unet``'s) and goes on using: the same check is made on it, and the adapter it passed stays on
    it as ``CHECK_ADAPTER`` (a refused one does not: ``lora.inject``), for the app's image of the export check to be
    drawn with (``export_verify.render_app``'s ``loaded``). That check loaded the base a second time: what it saves is
    one base load's time (fifteenth review). A UNet that carries an adapter already is refused, nothing taken off it:
    diffusers refused the same name as "already in use", and ``lora.inject`` then deleted the adapter that was there
    (a read-only review of the fifteenth review's fix). None: the check loads the UNet alone (``load_base_unet``)."""
    unet = load_base_unet(base_model) if base_unet is None else base_unet()
    if carried := list(getattr(unet, "peft_config", None) or ()):
        raise ExportError(f"The base model's UNet given for the check already carries an adapter "
                          f"({', '.join(map(repr, carried))}); the check needs the base model alone, so nothing was "
                          "checked or written.")
    _inject_checked(unet, adapter_dir, CHECK_ADAPTER)


def _provenance(fmt: str, adapter_dir: Path, manifest: dict) -> dict:
    return {"format": fmt, "source_adapter": manifest.get("adapter"),
            "source_manifest_sha256": sha256_file(adapter_dir / MANIFEST)}


# ----------------------------------------------------------------------------------------------- kohya
# UNet modules outside kohya's naming (the SD 1.x attention and resnet blocks): their kohya keys are not read back
_KOHYA_UNNAMED = ("add_embedding",)
def kohya_state_dict(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet LoRA keys -> kohya keys, with ``.alpha`` set so kohya's ``alpha / rank`` equals peft's scale.

    Keys are mapped by diffusers' own ``convert_state_dict_to_kohya``; its ``.alpha`` is the rank (right only
    when ``lora_alpha == r``), so each alpha is recomputed from the adapter config:
    peft scale s = lora_alpha / r (rsLoRA: lora_alpha / sqrt(r)), and kohya alpha = s * rank of that module.
    """
    from diffusers.utils import convert_state_dict_to_kohya, convert_unet_state_dict_to_peft

    if config.get("alpha_pattern"):
        raise ExportError("The adapter has a per-module alpha_pattern, which the kohya export does not map; export it as diffusers.")
    unnamed = sorted({k.split(".lora")[0].removeprefix("unet.") for k in state if any(f"{m}." in k for m in _KOHYA_UNNAMED)})
    if unnamed:  # e.g. the shapes preset's add_embedding.proj: written as lora_unet_add_embedding_proj, read back as
        # add.embedding.proj by diffusers' kohya loader, which then drops it (a review measured the result off by 1 level)
        raise ExportError(f"The adapter trains {', '.join(unnamed)}, which kohya/A1111 LoRA files have no name for "
                          "(their loaders drop it); export it as a diffusers LoRA or a merged pipeline.")
    peft_state = convert_unet_state_dict_to_peft(dict(state))  # unet.x.lora.down.weight -> unet.x.lora_A.weight
    out = {}
    for key, value in convert_state_dict_to_kohya(peft_state).items():
        if not _KOHYA_KEY.fullmatch(key):
            raise ExportError(f"diffusers' kohya converter produced an unexpected key {key!r}; this adapter cannot be exported as kohya.")
        if key.endswith(".alpha"):
            continue
        out[key] = value.detach().to("cpu", torch.float32).contiguous()
    alpha = float(config["lora_alpha"])
    for key in [k for k in out if k.endswith(".lora_down.weight")]:
        rank = out[key].shape[0]
        scale = alpha / rank**0.5 if config.get("use_rslora") else alpha / rank
        out[key.split(".")[0] + ".alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
    n_down = sum(k.endswith(".lora_down.weight") for k in out)
    if n_down * 2 != len(state) or sum(k.endswith(".lora_up.weight") for k in out) != n_down:
        raise ExportError("The kohya conversion lost or duplicated LoRA weights; this adapter cannot be exported as kohya.")
    return out


def export_kohya_lora(adapter_dir: str | Path, out_file: str | Path, *, base_model: str | Path,
                      base_unet: Callable[[], Any] | None = None) -> ExportResult:
    """One kohya/A1111-style LoRA ``.safetensors`` file, written atomically (temp file, fsync, rename), after
    ``check_on_base`` against ``base_model``, the model the adapter was trained on (on ``base_unet``'s UNet, if
    given)."""
    out_file = _fresh_destination(out_file)
    if out_file.suffix != ".safetensors":
        raise ExportError(f"A kohya LoRA file must end in .safetensors, got {out_file.name!r}.")
    adapter_dir = Path(adapter_dir)
    state, config, _ = read_adapter(adapter_dir)
    write = _kohya_writer(adapter_dir, state, config)
    check_on_base(base_model, adapter_dir, base_unet)
    _publish(atomic_write, out_file, write)
    return ExportResult(out_file, "kohya", sha256_file(out_file))


def _kohya_writer(adapter_dir: Path, state: dict[str, torch.Tensor], config: Mapping[str, Any]) -> Callable[[Path], None]:
    """What writes the kohya file of the adapter ``read_adapter`` read from ``adapter_dir`` (``state``, ``config``)
    to the path it is given; a conversion it cannot make is refused here, before anything is written."""
    from safetensors.torch import save_file

    weights = kohya_state_dict(state, config)
    ranks = sorted({w.shape[0] for k, w in weights.items() if k.endswith(".lora_down.weight")})
    alphas = sorted({float(w) for k, w in weights.items() if k.endswith(".alpha")})
    header = {  # kohya-ss training metadata that A1111 and ComfyUI show; all values are strings
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(ranks[0] if len(ranks) == 1 else ranks),
        # the alpha the per-key ``.alpha`` tensors hold (kohya scales by alpha / rank): lora_alpha * sqrt(rank) for
        # rsLoRA, which scales by lora_alpha / sqrt(rank) (found by review: the header said lora_alpha)
        "ss_network_alpha": str(alphas[0] if len(alphas) == 1 else alphas),
        "ss_base_model_version": "sd_v1",
        "seiko_source_manifest_sha256": sha256_file(adapter_dir / MANIFEST),
        "format": "pt",
    }
    return lambda path: save_file(weights, str(path), metadata=header)


_KOHYA_README = """# SEIKO LoRA adapter (kohya / A1111 format)

`{file}`: UNet LoRA with kohya keys (`lora_unet_...lora_down.weight`, `.lora_up.weight`, `.alpha`).

- AUTOMATIC1111 / Forge: copy it to `models/Lora/` and add `<lora:{stem}:1>` to the prompt.
- ComfyUI: copy it to `models/loras/` and use a "Load LoRA" node.
- diffusers:

```python
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{base}")
pipe.load_lora_weights("path/to/{file}")
```
"""


def export_kohya_lora_dir(adapter_dir: str | Path, out_dir: str | Path, *, base_model: str | Path,
                          name: str = "seiko_lora", finalize: Finalize | None = None,
                          base_unet: Callable[[], Any] | None = None) -> ExportResult:
    """A directory holding the kohya file ``<name>.safetensors``, a README and a manifest (atomic), after
    ``check_on_base`` against ``base_model``, the model the adapter was trained on (on ``base_unet``'s UNet, if
    given)."""
    # a name is a file's name in the export, nothing more: '../x' was written beside the export's directory, and the
    # export published without its weights as a success ('sub/x' under a folder of its own, '.x' hidden; found by
    # review, ninth)
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise ExportError(f"A kohya LoRA's name must be a plain file name (no '/', '\\', or leading '.'), got {name!r}.")
    out_dir = _fresh_destination(out_dir)
    adapter_dir = Path(adapter_dir)
    state, config, manifest = read_adapter(adapter_dir)
    write_file = _kohya_writer(adapter_dir, state, config)
    check_on_base(base_model, adapter_dir, base_unet)
    file = f"{name}.safetensors"

    def write(tmp: Path) -> None:
        write_file(tmp / file)
        (tmp / "README.md").write_text(_KOHYA_README.format(file=file, stem=name, base=_loadable_base(base_model)))
        card.append(finalize(tmp) if finalize else None)

    card: list = []
    digest = _publish(atomic_directory, out_dir, write, extra=_provenance("kohya-lora", adapter_dir, manifest))
    return ExportResult(out_dir, "kohya", digest, card[-1] if card else None)


# ---------------------------------------------------------------------------------------------- merged
def lora_keys(module: torch.nn.Module) -> list[str]:
    """State-dict keys that belong to injected LoRA layers (empty for a clean model)."""
    return [k for k in module.state_dict() if "lora_" in k or ".base_layer." in k]


def load_base_pipeline(base_model: str | Path, *, device: str | torch.device = "cpu"):
    """The stock diffusers pipeline of ``base_model`` (a local directory, or a hub id in the local cache), loaded by
    the app's own loader (``models._load_pretrained``): the configs and shard indexes of a local directory or a hub
    snapshot are checked first, and a hub id's weights are hashed before and after (found by review: a
    diffusion_pytorch_model.safetensors.index.json naming a .bin shard, which load_model refuses, was unpickled here)."""
    from diffusers import StableDiffusionPipeline

    from .models import ModelLoadError, _check_weights, _load_pretrained, resolve_spec

    try:
        name, local = resolve_spec(str(base_model))
        # no safety checker, as load_model and the export check load it: the worker's hub download skips that folder,
        # so asking for it here fetched 1.2 GB more (and shipped it in the merged model) or, offline, failed
        pipe = _load_pretrained(StableDiffusionPipeline.from_pretrained, name, local, "Model", safety_checker=None,
                                requires_safety_checker=False, use_safetensors=True)
        # load_model's check: a base damaged after the experiment was created (a NaN, an integer weight) went into a
        # merged export unchecked (sixth review)
        _check_weights(str(base_model), {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder})
    except ModelLoadError as exc:
        raise ExportError(str(exc)) from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def merge_lora(pipe, adapter_dir: str | Path) -> None:
    """Fuse the adapter into ``pipe.unet``'s weights and remove the LoRA layers (in place)."""
    read_adapter(adapter_dir)  # verified, and a plain LoRA
    adapter = "seiko_export"
    # 1. inject the LoRA with its own config (r, lora_alpha, target_modules) from its safetensors header, by the
    #    loader the worker uses (diffusers' load_lora_adapter); every tensor must match a layer of this base UNet
    _inject_checked(pipe.unet, adapter_dir, adapter)
    # 2. W <- W + scale * B @ A in every targeted layer (safe_fusing refuses NaN weights). Its refusal, a ValueError,
    #    reached the CLI as a traceback (found by review, ninth): one sentence now, and nothing is published
    try:
        pipe.fuse_lora(components=["unet"], lora_scale=1.0, safe_fusing=True, adapter_names=[adapter])
    except ValueError as exc:
        raise ExportError(f"The adapter in {str(adapter_dir)!r} could not be fused into the base model "
                          f"({_load_error_sentence(exc)}); nothing was exported.") from exc
    # 3. drop the LoRA layers: plain Linear modules again, so nothing reloads as random attention weights
    pipe.unload_lora_weights()
    left = lora_keys(pipe.unet)
    if left:
        raise ExportError(f"The merged UNet still has LoRA keys after unloading, e.g. {left[0]!r}; refusing to save it.")


_MERGED_README = """# SEIKO merged model

The base model `{base}` with the SEIKO LoRA adapter fused into its UNet weights (a plain
diffusers `StableDiffusionPipeline`; no LoRA layers, no pickles).

```python
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("path/to/this/directory")
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)  # SEIKO samples with DDIM (eta needs it)
{sampling}"""


# the files beside a model's components that the embedded shapes model (seiko_core.toy.build) is loaded with and
# save_pretrained does not write: the text projection of its CLIP (the quality measures and the toy commands read
# it) and the build's record (the toy commands need QUALITY.json; build_config.json is the build's settings)
QUALITY_FILE = "QUALITY.json"
MODEL_EXTRAS = ("text_projection.safetensors", QUALITY_FILE, "build_config.json")

# what QUALITY.json says in a merged export in place of the base's figures, which it keeps under BASE_QUALITY_KEY
BASE_QUALITY_KEY = "base_model_quality"
_MERGED_QUALITY_README = """
`QUALITY.json` holds the figures measured on the base model `{base}` (under `base_model_quality`), not on this model:
the adapter changes what it draws. `python -m seiko_core.toy quality --model path/to/a/copy` measures this model on a
copy of this directory (it writes the copy's own `QUALITY.json`, `README.md` and `samples.png`).
"""


def _merged_quality(data: bytes, base: str) -> bytes:
    """The base's QUALITY.json as a merged export carries it. Its figures were measured on the base model, not on the
    base with the adapter fused in; the export carried them unchanged, so they read as the merged model's (found by
    review, tenth). They move under ``base_model_quality``, and ``figures_of`` says whose they are; ``build_config``
    stays at the top, where the toy commands read it (``python -m seiko_core.toy quality --model <a copy>`` measures
    the merged model and writes its own figures in its place). A base that is itself a merged export keeps its file
    as it is: its figures are already marked as its own base's."""
    quality = json.loads(data)  # a JSON object: _base_extras checked it
    if quality.get("figures_of") == "base_model":
        return data
    marked = {"figures_of": "base_model", "base_model": base,
              "note": f"The figures under {BASE_QUALITY_KEY} were measured on the base model {base}, before a SEIKO "
                      "adapter was merged into it; this model has not been measured (python -m seiko_core.toy quality "
                      "--model <a copy of this directory> measures it).",
              BASE_QUALITY_KEY: {k: v for k, v in quality.items() if k != "build_config"}}
    if "build_config" in quality:
        marked["build_config"] = quality["build_config"]
    return (json.dumps(marked, indent=2) + "\n").encode("utf-8")


def _base_root(base_model: str | Path) -> Path:
    """The base model's directory, local or its snapshot in the hub cache (tokenizers and MODEL_EXTRAS only)."""
    from .models import ModelLoadError, _hub_offline, resolve_spec

    try:
        name, local = resolve_spec(str(base_model))
        if local:
            return Path(name)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=["tokenizer*/*", *MODEL_EXTRAS],
                                      local_files_only=_hub_offline()))
    except (ModelLoadError, OSError, ValueError) as exc:
        raise ExportError(f"Could not find base model {str(base_model)!r}'s tokenizer files: {exc}".splitlines()[0]) from exc


def _base_tokenizer_dirs(root: Path) -> dict[str, Path]:
    """The base model's tokenizer directories (``tokenizer``, ``tokenizer_2``) by name."""
    return {p.name: p for p in sorted(root.glob("tokenizer*")) if p.is_dir()}


def _base_extras(root: Path) -> dict[str, bytes]:
    """The MODEL_EXTRAS the base has, by name, each checked to be what its name says (a safetensors file, a JSON
    object): a merged export of the shapes model left them out, so it could not be the base of a shapes experiment
    (found by review, ninth)."""
    from safetensors import SafetensorError, safe_open

    extras = {}
    for name in MODEL_EXTRAS:
        path = root / name
        if not path.is_file():
            continue
        try:
            if name.endswith(".safetensors"):
                with safe_open(str(path), "pt") as f:
                    list(f.keys())
            elif not isinstance(json.loads(path.read_text(encoding="utf-8")), dict):
                raise ValueError("not a JSON object")
            extras[name] = path.read_bytes()
        except (SafetensorError, OSError, ValueError, RecursionError) as exc:
            raise ExportError(f"Base model file {str(path)!r} could not be read as {Path(name).suffix[1:]} ("
                              f"{_load_error_sentence(exc)}); nothing was exported.") from exc
    return extras


def _complete_tokenizers(tmp: Path, base_tokenizers: dict[str, Path]) -> None:
    """Copy the base's tokenizer files that ``save_pretrained`` did not write (transformers 5 writes tokenizer.json
    only, so ``vocab.json`` and ``merges.txt`` were missing and transformers 4 could not load the merged model's
    CLIPTokenizer; found by review). JSON and text files only; a file save_pretrained wrote is kept."""
    for name, source in base_tokenizers.items():
        if not (tmp / name).is_dir():
            continue
        for f in sorted(source.iterdir()):
            target = tmp / name / f.name
            if f.is_file() and f.suffix in (".json", ".txt") and not target.exists():
                target.write_bytes(f.read_bytes())


def _drop_load_paths(tmp: Path) -> None:
    """Remove ``_name_or_path`` from the saved configs: diffusers records where the base was loaded from (a path on
    the server), which a shared model should not carry (found by review); loading does not need it."""
    for f in sorted(tmp.rglob("*.json")):
        data = json.loads(f.read_text(encoding="utf-8"))
        if isinstance(data, dict) and "_name_or_path" in data:
            del data["_name_or_path"]
            f.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


_MERGED_KINDS = (".safetensors", ".json", ".txt", ".md")  # weights, configs, a tokenizer's vocabulary and merges


def export_merged_pipeline(base_model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *,
                           device: str | torch.device = "cpu", finalize: Finalize | None = None) -> ExportResult:
    """The base pipeline with the adapter fused in, saved (safetensors) to ``out_dir`` atomically."""
    out_dir = _fresh_destination(out_dir)
    adapter_dir = Path(adapter_dir)
    _, _, manifest = read_adapter(adapter_dir)
    pipe = load_base_pipeline(base_model_dir, device=device)
    merge_lora(pipe, adapter_dir)
    base_root = _base_root(base_model_dir)
    base_tokenizers, base_extras = _base_tokenizer_dirs(base_root), _base_extras(base_root)
    base = public_name(base_model_dir)  # the base by its name (a hub id as given, a local directory's own name)

    def write(tmp: Path) -> None:
        pipe.save_pretrained(tmp, safe_serialization=True)
        _complete_tokenizers(tmp, base_tokenizers)
        _drop_load_paths(tmp)
        # an allow-list, not a list of pickle suffixes: whatever else save_pretrained writes is not published
        others = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and p.suffix not in _MERGED_KINDS]
        if others:
            raise ExportError(f"save_pretrained wrote files other than safetensors, JSON and text ({others[:5]}); "
                              "refusing to publish them.")
        for name, data in base_extras.items():
            if not (tmp / name).exists():  # never one save_pretrained wrote
                (tmp / name).write_bytes(_merged_quality(data, base) if name == QUALITY_FILE else data)
        _copy_json_files(adapter_dir, tmp, _ADAPTER_JSON)
        (tmp / "README.md").write_text(_MERGED_README.format(base=base, sampling=_SAMPLING)
                                       + (_MERGED_QUALITY_README.format(base=base) if QUALITY_FILE in base_extras else ""))
        card.append(finalize(tmp) if finalize else None)

    card: list = []
    # the base by its name: its path is the server's
    extra = {**_provenance("diffusers-pipeline-merged", adapter_dir, manifest), "base_model": base}
    digest = _publish(atomic_directory, out_dir, write, extra=extra)
    return ExportResult(out_dir, "merged", digest, card[-1] if card else None)


# --------------------------------------------------------------------------------------------- ratings
def _iso(value: Any, field: str = "rated_at") -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, str):
        return value
    raise ExportError(f"{field} must be a datetime or an ISO string, got {type(value).__name__}.")


def _check_fields(what: str, items: list[Mapping[str, Any]], fields: Iterable[str]) -> None:
    fields = tuple(fields)
    for i, row in enumerate(items):
        missing = [f for f in fields if f not in row]
        if missing:
            raise ExportError(f"{what} row {i} lacks {missing}; every row needs {list(fields)}.")


def export_ratings_dataset(rows: Iterable[Mapping[str, Any]], out_dir: str | Path,
                           image_reader: Callable[[str], bytes],
                           comparisons: Iterable[Mapping[str, Any]] = (), *,
                           repeat_ratings: Iterable[Mapping[str, Any]] = (),
                           skips: Iterable[Mapping[str, Any]] = (),
                           gold: Iterable[Mapping[str, Any]] = (),
                           pair_shows: Iterable[Mapping[str, Any]] = ()) -> ExportResult:
    """Ratings as ``metadata.jsonl`` (one row per rating), comparison votes as ``comparisons.jsonl`` (one row per vote),
    repeat ratings as ``repeat_ratings.jsonl``, image and pair skips as ``skips.jsonl``, gold scores as
    ``gold.jsonl`` and the comparison pairs shown to raters as ``pair_shows.jsonl`` + the images they name under
    ``images/`` + a manifest counting each.

    Each rating row needs ``file_path`` (passed to ``image_reader`` to get the PNG's bytes), ``prompt``, ``seed``,
    ``round``, ``rater``, ``score`` and ``rated_at``; an ``image_sha256`` is checked against the bytes and any
    other keys (``image_id``, ``kind``, ...) are kept. Images are named by their sha256, so an image rated by
    several raters is stored once; a row's ``file_name`` is ``images/<sha256>.png``. Each comparison row needs
    ``file_path_a`` (the left image), ``file_path_b``, ``choice`` ('a', 'b' or 'tie'), ``round``, ``kind``, ``rater``
    and ``voted_at`` (``image_sha256_a``/``_b`` checked when given) and gets ``file_name_a``/``file_name_b``.
    A repeat rating row needs ``REPEAT_FIELDS``, a gold row ``GOLD_FIELDS``; a skip row has ``kind`` 'image' (and
    ``SKIP_FIELDS['image']``, one image) or 'pair' (and ``SKIP_FIELDS['pair']``, two images); a pair shown row needs
    ``PAIR_SHOW_FIELDS``, its ``answered`` one of 'vote', 'skip' or None (not answered). The files other than
    ``metadata.jsonl`` are written only when they have rows.
    """
    out_dir = _fresh_destination(out_dir)
    rows, comparisons = list(rows), list(comparisons)
    repeat_ratings, skips, gold, pair_shows = list(repeat_ratings), list(skips), list(gold), list(pair_shows)
    if not (rows or comparisons or repeat_ratings or skips or gold or pair_shows):
        raise ExportError("There are no ratings or comparisons to export.")
    _check_fields("Rating", rows, RATING_FIELDS)
    _check_fields("Comparison", comparisons, COMPARISON_FIELDS)
    _check_fields("Repeat rating", repeat_ratings, REPEAT_FIELDS)
    _check_fields("Gold", gold, GOLD_FIELDS)
    _check_fields("Pair shown", pair_shows, PAIR_SHOW_FIELDS)
    for i, row in enumerate(pair_shows):
        if row["answered"] not in PAIR_SHOW_ANSWERS:
            raise ExportError(f"Pair shown row {i} has answered {row['answered']!r}; it is one of {list(PAIR_SHOW_ANSWERS)}.")
    for i, row in enumerate(skips):
        if row.get("kind") not in SKIP_FIELDS:
            raise ExportError(f"Skip row {i} has kind {row.get('kind')!r}; a skip's kind is one of {list(SKIP_FIELDS)}.")
        _check_fields("Skip", [row], SKIP_FIELDS[row["kind"]])

    def write(tmp: Path) -> None:
        (tmp / IMAGES_DIR).mkdir()
        written: dict[str, str] = {}  # source file_path -> file_name in the dataset

        def stored(src: str, sha256: str | None) -> str:
            if src not in written:
                data = image_reader(src)
                if not data.startswith(PNG_MAGIC):
                    raise ExportError(f"Image {src!r} is not a PNG file.")
                digest = _sha256_bytes(data)
                if sha256 not in (None, digest):
                    raise ExportError(f"Image {src!r} does not match the sha256 recorded for it (changed since it was generated).")
                name = f"{IMAGES_DIR}/{digest}.png"
                if not (tmp / name).exists():
                    (tmp / name).write_bytes(data)
                written[src] = name
            return written[src]

        def record(row: Mapping[str, Any], time_field: str) -> dict[str, Any]:
            """The row with its image paths replaced by the dataset's file names (``file_path`` -> ``file_name``,
            ``file_path_a``/``_b`` -> ``file_name_a``/``_b``) and its time as an ISO string."""
            names = {}
            for suffix in ("", "_a", "_b"):
                if f"file_path{suffix}" in row:
                    names[f"file_name{suffix}"] = stored(str(row[f"file_path{suffix}"]), row.get(f"image_sha256{suffix}"))
            out = {**names, **{k: v for k, v in row.items() if not k.startswith(("file_path", "file_name"))}}
            out[time_field] = _iso(row[time_field], time_field)
            return out

        def write_lines(name: str, items: list[Mapping[str, Any]], time_field: str) -> None:
            records = [record(row, time_field) for row in items]
            images = {file_name: file_name[len(IMAGES_DIR) + 1:-4] for file_name in written.values()}
            problem = _rows_problem(name, records, images, None)  # what read_* would refuse is not written
            if problem:
                number, why = problem
                raise ExportError(f"{_WHAT[name]} row {number - 1} {why}.")  # counted from 0 as _check_fields does
            with open(tmp / name, "w", encoding="utf-8") as f:
                for out in records:
                    f.write(json.dumps(out, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n")

        write_lines(DATASET_FILE, rows, "rated_at")
        for name, items, time_field in ((COMPARISONS_FILE, comparisons, "voted_at"),
                                        (REPEATS_FILE, repeat_ratings, "rated_at"),
                                        (SKIPS_FILE, skips, "skipped_at"), (GOLD_FILE, gold, "set_at"),
                                        (PAIR_SHOWS_FILE, pair_shows, "shown_at")):
            if items:
                write_lines(name, items, time_field)

    extra = {"format": DATASET_FORMAT, "rows": len(rows), "dataset_file": DATASET_FILE,
             "comparisons": len(comparisons), "comparisons_file": COMPARISONS_FILE if comparisons else None,
             "repeat_ratings": len(repeat_ratings), "repeat_ratings_file": REPEATS_FILE if repeat_ratings else None,
             "skips": {kind: sum(1 for row in skips if row["kind"] == kind) for kind in SKIP_FIELDS},
             "skips_file": SKIPS_FILE if skips else None,
             "gold": len(gold), "gold_file": GOLD_FILE if gold else None,
             "pair_shows": len(pair_shows), "pair_shows_file": PAIR_SHOWS_FILE if pair_shows else None}
    digest = _publish(atomic_directory, out_dir, write, extra=extra)
    return ExportResult(out_dir, "ratings", digest)


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


DATASET_FORMAT = "seiko-ratings-jsonl"  # the manifest's "format" of a ratings dataset


def _dataset_manifest(directory: Path) -> dict:
    """The verified manifest of the ratings dataset ``directory``: of that format, and listing ``metadata.jsonl``
    (which every export writes, empty or not). The readers verified the files a manifest lists and read theirs by name:
    a ``metadata.jsonl`` the manifest does not list (dropped from it, then edited) was read as the export's rows, and a
    directory that is not a ratings dataset (an adapter) was a FileNotFoundError, or no comparisons (found by review,
    ninth)."""
    manifest = verify(directory)
    if manifest.get("format") != DATASET_FORMAT:
        raise CheckpointError(f"{str(directory)!r} is not a ratings dataset (its manifest's format is "
                              f"{manifest.get('format')!r}, not {DATASET_FORMAT!r}).")
    if DATASET_FILE not in manifest["files"]:
        raise CheckpointError(f"The manifest of ratings dataset {str(directory)!r} does not list {DATASET_FILE}, which "
                              "every export writes; it is not an export's manifest.")
    return manifest


def read_ratings_dataset(directory: str | Path) -> list[dict]:
    """The rows of an exported ratings dataset, after verifying its manifest."""
    directory = Path(directory)
    return _checked_lines(directory, _dataset_manifest(directory), DATASET_FILE)


def read_comparisons(directory: str | Path) -> list[dict]:
    """The comparison votes of an exported ratings dataset (none when it has no comparisons file), after verifying
    its manifest."""
    return _optional_lines(Path(directory), COMPARISONS_FILE)


def read_repeat_ratings(directory: str | Path) -> list[dict]:
    """The repeat ratings of an exported ratings dataset (none when it has no such file), after verifying its manifest."""
    return _optional_lines(Path(directory), REPEATS_FILE)


def read_skips(directory: str | Path) -> list[dict]:
    """The image and pair skips of an exported ratings dataset (none when it has no such file), after verifying it."""
    return _optional_lines(Path(directory), SKIPS_FILE)


def read_gold(directory: str | Path) -> list[dict]:
    """The gold scores of an exported ratings dataset (none when it has no such file), after verifying its manifest."""
    return _optional_lines(Path(directory), GOLD_FILE)


def read_pair_shows(directory: str | Path) -> list[dict]:
    """The comparison pairs shown to raters in an exported ratings dataset (none when it has no such file, as in an
    export made before they were exported), after verifying its manifest."""
    return _optional_lines(Path(directory), PAIR_SHOWS_FILE)


def _optional_lines(directory: Path, name: str) -> list[dict]:
    """The rows of ``name``, a file the export writes only when it has rows, after verifying the manifest; none when the
    manifest does not list it. ``verify`` checks the files the manifest lists only: such a file added to the directory
    afterwards (a pair_shows.jsonl dropped into an export made before there was one) was read as the export's own
    (found while adding pair_shows.jsonl, 5 Dec 2026)."""
    manifest = _dataset_manifest(directory)
    path = directory / name
    if name not in manifest["files"]:
        if path.exists() or path.is_symlink():
            raise CheckpointError(f"{str(path)!r} is not in the export's manifest: it was added after the export was "
                                  "made; remove it to read the export.")
        _check_count(path, manifest, name, [])
        return []
    return _checked_lines(directory, manifest, name)


# the fields each file's rows hold, as written (file_path -> file_name); skips by their kind
_ROW_FIELDS = {
    DATASET_FILE: RATING_FIELDS, COMPARISONS_FILE: COMPARISON_FIELDS, REPEATS_FILE: REPEAT_FIELDS,
    GOLD_FILE: GOLD_FIELDS, PAIR_SHOWS_FILE: PAIR_SHOW_FIELDS,
    **{f"{SKIPS_FILE}:{kind}": fields for kind, fields in SKIP_FIELDS.items()}}
_WHAT = {DATASET_FILE: "Rating", COMPARISONS_FILE: "Comparison", REPEATS_FILE: "Repeat rating", SKIPS_FILE: "Skip",
         GOLD_FILE: "Gold", PAIR_SHOWS_FILE: "Pair shown"}
_COUNTED = {DATASET_FILE: "rows", COMPARISONS_FILE: "comparisons", REPEATS_FILE: "repeat_ratings", SKIPS_FILE: "skips",
            GOLD_FILE: "gold", PAIR_SHOWS_FILE: "pair_shows"}  # the manifest's count of each file's rows


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_problem(name: str, row: Mapping[str, Any], images: Mapping[str, str]) -> str | None:
    """Why ``row``, a row of the export's file ``name`` as written, is not one the export writes (None when it is):
    a field missing, a score that is not a whole number from SCORE_MIN to SCORE_MAX, an unknown choice, kind or
    answer, or an image that is not ``images/<sha256>.png`` of a file the export holds (``images``: its file names,
    each to the sha256 of its bytes)."""
    key = name
    if name == SKIPS_FILE:
        if row.get("kind") not in SKIP_FIELDS:
            return f"has kind {row.get('kind')!r}, not one of {list(SKIP_FIELDS)}"
        key = f"{SKIPS_FILE}:{row['kind']}"
    fields = [f.replace("file_path", "file_name") for f in _ROW_FIELDS[key]]
    missing = [f for f in fields if f not in row]
    if missing:
        return f"lacks {missing} (every row has {fields})"
    if "score" in fields and not (_whole(row["score"]) and SCORE_MIN <= row["score"] <= SCORE_MAX):
        return f"has score {row['score']!r}, not a whole number from {SCORE_MIN} to {SCORE_MAX}"
    if "choice" in fields and row["choice"] not in VOTE_CHOICES:
        return f"has choice {row['choice']!r}, not one of {list(VOTE_CHOICES)}"
    if "answered" in fields and row["answered"] not in PAIR_SHOW_ANSWERS:
        return f"has answered {row['answered']!r}, not one of {list(PAIR_SHOW_ANSWERS)}"
    if not (_whole(row["round"]) and row["round"] >= 0):
        return f"has round {row['round']!r}, not a whole number from 0"
    if "rater" in fields and not (isinstance(row["rater"], str) and row["rater"]):
        return f"has rater {row['rater']!r}, not a name"
    if "seed" in fields and not _whole(row["seed"]):
        return f"has seed {row['seed']!r}, not a whole number"
    for field in fields:
        if field.endswith("_at") and not isinstance(row[field], str):
            return f"has {field} {row[field]!r}, not an ISO time"
    for field in (f for f in fields if f.startswith("file_name")):
        file_name = row[field]
        match = _FILE_NAME.fullmatch(file_name) if isinstance(file_name, str) else None
        if match is None:
            return f"has {field} {file_name!r}, not {IMAGES_DIR}/<sha256>.png"
        if images.get(file_name) != match.group(1):
            return f"names {file_name!r}, which is not an image of the export (its manifest does not list it as such)"
        said = row.get(field.replace("file_name", "image_sha256"))
        if said is not None and said != match.group(1):
            return f"has {field.replace('file_name', 'image_sha256')} {said!r}, not the sha256 of {file_name!r}"
    return None


def _identity(name: str, row: Mapping[str, Any]) -> tuple:
    """What the database holds once per row of ``name``: a rater's rating, repeat or skip of an image, their vote,
    skip or showing of a pair, an image's gold score. An image is its ``image_id`` (two images may have the same
    bytes, so the same file_name: a rater may rate both), a pair its ``pair_id``; rows without them (an export made
    in code) by what names them."""
    def image(suffix: str = "") -> tuple:
        if f"image_id{suffix}" in row:
            return ("id", row[f"image_id{suffix}"])
        return (row[f"file_name{suffix}"], row["round"], row.get(f"kind{suffix}"), row.get(f"prompt{suffix}"),
                row.get(f"seed{suffix}"))

    if name == SKIPS_FILE and row["kind"] == "pair" or name in (COMPARISONS_FILE, PAIR_SHOWS_FILE):
        kind = row["pair_kind"] if name == SKIPS_FILE else row["kind"]
        pair = ("id", row["pair_id"]) if "pair_id" in row else (image("_a"), image("_b"), row["round"], kind)
        return ("pair", pair, row["rater"])
    return ("image", image(), row.get("rater"))


def _rows_problem(name: str, rows: list[Mapping[str, Any]], images: Mapping[str, str],
                  numbers: list[int] | None) -> tuple[int | None, str] | None:
    """The first row of ``name`` that is not one the export writes, with its line number from ``numbers`` (else its
    index + 1), and why; None when every row is one."""
    seen: dict[str, int] = {}
    for index, row in enumerate(rows):
        number = numbers[index] if numbers else index + 1
        problem = _row_problem(name, row, images)
        if problem:
            return number, problem
        what, *_ = identity = _identity(name, row)
        key = json.dumps(identity, sort_keys=True, default=str)
        if key in seen:
            earlier = f"line {seen[key]}" if numbers else f"row {seen[key] - 1}"
            return number, f"repeats {earlier} (the same {'rater and ' if 'rater' in row else ''}{what})"
        seen[key] = number
    return None


def _check_count(path: Path, manifest: dict, name: str, rows: list[dict]) -> None:
    """The manifest's count of ``name``'s rows (the skips by kind) must be what the file holds."""
    counted = manifest.get(_COUNTED[name])
    if counted is None:  # an export made before the file was
        return
    held: Any = len(rows)
    if name == SKIPS_FILE:
        held = {kind: sum(1 for row in rows if row.get("kind") == kind) for kind in SKIP_FIELDS}
    if counted != held:
        raise CheckpointError(f"{str(path)!r} holds {held} rows where the export's manifest counts {counted}; it is not "
                              "an export's rows.")


def _checked_lines(directory: Path, manifest: dict, name: str) -> list[dict]:
    """The rows of ``name`` after checking each is one the export writes (``_row_problem``), none twice, and as many
    as the manifest counts. The manifest's hashes say the file is the one the manifest lists, not that the export
    wrote it: a dataset whose rows were edited and its manifest written again to match was read with a score of 11,
    "NaN" or true, a row twice, or an image named '../../../etc/passwd' or not in the export (sixth review)."""
    path = directory / name
    rows, numbers = _json_lines(path, numbered=True)
    images = {file_name: info.get("sha256") for file_name, info in manifest["files"].items()
              if isinstance(info, dict) and _FILE_NAME.fullmatch(file_name)}
    problem = _rows_problem(name, rows, images, numbers)
    if problem:
        number, why = problem
        raise CheckpointError(f"Line {number} of {str(path)!r} {why}; it is not an export's rows.")
    _check_count(path, manifest, name, rows)
    return rows


def _json_lines(path: Path, *, numbered: bool = False):
    """A JSON-lines file's records, split on newlines only: the rows are written with ensure_ascii=False, so a prompt
    may hold U+2028, U+2029 or U+0085, which str.splitlines also splits on (found by review). A line that is not a
    JSON object (a hand-edited dataset whose manifest was written again to match) is refused in one sentence naming
    its line, not a JSONDecodeError or RecursionError (fifth review). ``numbered``: (the rows, their line numbers)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"{str(path)!r} is not UTF-8 text ({exc.reason} at byte {exc.start}); it is not an "
                              "export's rows.") from exc
    rows, numbers = [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line:
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting a RecursionError
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise CheckpointError(f"Line {number} of {str(path)!r} is not JSON ({reason}); it is not an export's "
                                  "rows.") from exc
        if not isinstance(row, dict):
            raise CheckpointError(f"Line {number} of {str(path)!r} is a JSON {type(row).__name__}, not a row (an "
                                  "object); it is not an export's rows.")
        rows.append(row)
        numbers.append(number)
    return (rows, numbers) if numbered else rows


# ------------------------------------------------------------------------------------------------- zip
_STORED = (".safetensors", ".png")  # already dense: compressing them costs time and saves nothing


def zip_directory(src_dir: str | Path, out_zip: str | Path) -> Path:
    """A zip of a verified export directory (one download for a browser), written atomically."""
    src_dir, out_zip = Path(src_dir), _fresh_destination(out_zip)
    listed = sorted(set(verify(src_dir)["files"]) | {MANIFEST})  # what the manifest vouches for, never a stray or a link

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", allowZip64=True) as zf:
            for name in listed:
                method = zipfile.ZIP_STORED if Path(name).suffix in _STORED else zipfile.ZIP_DEFLATED
                zf.write(src_dir / name, f"{src_dir.name}/{name}", compress_type=method)

    _publish(atomic_write, out_zip, write)
    return out_zip
