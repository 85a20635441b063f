"""Load a Stable-Diffusion-shaped model (the embedded shapes model, a local directory, or a hub id).

One function, one code path: :func:`load_model` takes a spec and returns the pipeline parts plus the
image encoder whose embeddings are the reward model's features (the pipeline's own ``image_encoder``
for the shapes model; ``openai/clip-vit-large-patch14`` by default for real SD, as in the paper).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import sha256_file

DEFAULT_IMAGE_ENCODER = "openai/clip-vit-large-patch14"
log = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """A model spec that cannot be loaded; the message says why in one sentence."""


@dataclass
class ModelParts:
    spec: str
    pipeline: object  # diffusers.StableDiffusionPipeline (the base model: adapters are attached to its unet)
    image_encoder: torch.nn.Module  # CLIPVisionModelWithProjection, frozen
    image_size: int  # encoder input side in pixels
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    device: torch.device
    dtype: torch.dtype

    @property
    def unet(self):
        return self.pipeline.unet

    @property
    def vae(self):
        return self.pipeline.vae

    @property
    def text_encoder(self):
        return self.pipeline.text_encoder

    @property
    def tokenizer(self):
        return self.pipeline.tokenizer

    @property
    def scheduler(self):
        return self.pipeline.scheduler

    @property
    def sample_size(self) -> int:
        """Latent side length the UNet was trained at."""
        return int(self.pipeline.unet.config.sample_size)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _looks_like_path(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~")) or spec.count("/") != 1 or os.sep != "/" and os.sep in spec


def is_local_spec(spec: str | Path) -> bool:
    """Whether ``spec`` names a path on this machine (an existing one, or one that reads as a path) and not a hub id."""
    text = str(spec)
    return Path(text).expanduser().exists() or _looks_like_path(text)


def public_name(spec: str | Path) -> str:
    """How an export names the base model ``spec`` to whoever downloads it: a hub id as given; a local directory by
    its own name only, since its path is the server's (found by review: exports carried the server's full path)."""
    text = str(spec)
    if not is_local_spec(text):
        return text
    path = Path(text).expanduser()
    return (path.resolve().name if path.exists() else path.name) or "BASE_MODEL"


def resolve_spec(spec: str, *, what: str = "Model", marker: str = "model_index.json",
                 kind: str = "a diffusers model directory") -> tuple[str, bool]:
    """(what to pass to from_pretrained, whether it is a local directory), or a clear ModelLoadError. ``what``,
    ``marker`` and ``kind`` name the thing asked for: a diffusers pipeline by default, or an image encoder (a
    transformers directory, whose marker is config.json)."""
    if not spec or not spec.strip():
        raise ModelLoadError("No model given: pass a local diffusers directory or a hub id such as stable-diffusion-v1-5/stable-diffusion-v1-5.")
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{what} path {spec!r} is a file, not {kind}.")
        if not (path / marker).is_file():
            raise ModelLoadError(f"{what} path {spec!r} is not {kind} (it has no {marker}).")
        return str(path), True
    if _looks_like_path(spec):
        raise ModelLoadError(f"{what} path {spec!r} does not exist.")
    return spec, False


def resolve_image_encoder(spec: str) -> tuple[str, bool]:
    """``resolve_spec`` for an image encoder: a transformers CLIP vision directory (config.json) or a hub id. A local
    encoder was refused as "not a diffusers model directory" (found by review)."""
    name, local = resolve_spec(spec, what="Image encoder", marker="config.json", kind="a transformers model directory")
    if local and not (Path(name) / "preprocessor_config.json").is_file():
        # the processor is read from the same directory; a pipeline's image_encoder/ folder has none (its pipeline's
        # feature_extractor/ holds it), which failed only after the whole pipeline had loaded (found by review)
        raise ModelLoadError(f"Image encoder path {spec!r} has no preprocessor_config.json: copy the one of its "
                             "pipeline's feature_extractor folder (or its model's) next to its config.json.")
    return name, local


def _check_local_configs(path: Path) -> None:
    """Every JSON config of a local model directory (model_index.json and each component's) must be a JSON object:
    diffusers and transformers met a list or a broken file with a TypeError or an AttributeError deep inside, or
    went to look for the model on the hub (found by review)."""
    for config in [path / "model_index.json", *sorted(path.glob("*config*.json")), *sorted(path.glob("*/*config*.json"))]:
        if not config.is_file():
            continue
        try:
            value = json.loads(config.read_text(encoding="utf-8"))
        except RecursionError as exc:  # json's C parser gives up on 200,000 nested '[' (found by the fifth review)
            raise ModelLoadError(f"Model file {str(config)!r} is not a config this loader reads (its JSON is nested "
                                 "too deeply).") from exc
        except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
            raise ModelLoadError(f"Model file {str(config)!r} is not valid JSON ({exc}).".splitlines()[0]) from exc
        if not isinstance(value, dict):
            raise ModelLoadError(f"Model file {str(config)!r} must hold a JSON object, not a {type(value).__name__}.")
    # a sharded component's index names its shards: one named *.bin was loaded with torch.load (an unpickler),
    # use_safetensors or not (found by review)
    # the root's too: an image encoder given as its own directory or hub id keeps its index there (review)
    # only the indexes a loader reads with use_safetensors (a pytorch_model.bin.index.json beside model.safetensors
    # is never read: refusing it refused valid repositories that ship both formats; found by review)
    for index in sorted([*path.glob("*.safetensors.index.json"), *path.glob("*/*.safetensors.index.json")]):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        except (json.JSONDecodeError, UnicodeDecodeError, OSError, AttributeError, RecursionError) as exc:
            raise ModelLoadError(f"Model file {str(index)!r} is not a JSON object with a weight_map.") from exc
        if not isinstance(weight_map, dict):
            raise ModelLoadError(f"Model file {str(index)!r} has no weight_map object.")
        for shard in weight_map.values():
            if not isinstance(shard, str) or not shard.endswith(".safetensors") or "/" in shard or "\\" in shard:
                raise ModelLoadError(f"Model file {str(index)!r} names the shard {shard!r}; only .safetensors shards "
                                     "are loaded.")


_CONFIGS = ["*.json", "*/*.json"]
_SHA256 = re.compile(r"[0-9a-f]{64}")
_BLOB_SHA256: dict[tuple[str, int, int, int], str] = {}  # (blob's real path, size, mtime_ns, ctime_ns) -> sha256


def _check_hub_blobs(snapshot: Path) -> None:
    """Every weights file of a hub cache snapshot that the loaders read whose blob is named by a sha256, as
    huggingface_hub names an LFS file's (snapshots/<commit>/<file> links to blobs/<etag>), must hash
    to that name: huggingface_hub checks a download by its size only, so a weights file with bytes changed but its
    size kept (tampering, a failing disk) loaded with no error (found by review). A git file's blob (named by a git
    sha1) and a cache without links (files copied into the snapshot) are not checked. The link is followed one step
    only: blobs/<etag> may itself link to a store entry named by another hash. Each blob is hashed once per process
    while its size and times are unchanged, so a worker that loads the model again does not hash gigabytes again."""
    # the weights the loaders read (safetensors only): a pipeline's in its components' folders, an encoder's at the
    # root; a full download's other files (a pipeline's root checkpoints, .bin, .ckpt, .onnx) are not read, so not hashed
    pipeline = (snapshot / "model_index.json").exists()
    weights = [*snapshot.glob("*/*.safetensors"), *([] if pipeline else snapshot.glob("*.safetensors"))]
    for file in sorted(weights):
        if not file.is_symlink():
            continue
        blob = file.parent / os.readlink(file)
        if not _SHA256.fullmatch(blob.name) or not blob.is_file():
            continue
        try:
            stat = blob.stat()
            key = (os.path.realpath(blob), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
            if key not in _BLOB_SHA256:
                _BLOB_SHA256[key] = sha256_file(blob)
        except OSError as exc:  # not "the hub is offline", which the loader's handler would say of an OSError
            raise ModelLoadError(f"Model file {str(file)!r} could not be read to check it ({exc.strerror or exc}).") from exc
        if _BLOB_SHA256[key] != blob.name:
            raise ModelLoadError(f"Model file {str(file)!r} does not hash to the sha256 the hub cache names it by "
                                 f"({blob.name[:12]}...): it is damaged or was altered; delete it from the hub cache "
                                 "and download it again.")


def check_hub_files(name: str) -> None:
    """:func:`_check_local_configs` and :func:`_check_hub_blobs` for the cached snapshot of hub id ``name``; nothing
    if it is not in the cache (the loader then downloads it, or says that it cannot)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name, allow_patterns=_CONFIGS, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError (not cached), HFValidationError (not a hub id)
        return
    _check_local_configs(snapshot)
    _check_hub_blobs(snapshot)


def check_model_configs(name: str, local: bool) -> None:
    """The configs the loader would read for model ``name`` (as ``resolve_spec`` gives it) are JSON objects it can
    read, or ModelLoadError with one sentence: a local directory's, or a hub id's cached snapshot's (nothing when it
    is not cached; no weights are hashed). For a check before anything is written (experiment creation)."""
    if local:
        _check_local_configs(Path(name))
        return
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name, allow_patterns=_CONFIGS, local_files_only=True))
    except (OSError, ValueError):  # LocalEntryNotFoundError (not cached), HFValidationError (not a hub id)
        return
    _check_local_configs(snapshot)


def scheduler_config(spec: str) -> dict | None:
    """The scheduler config of model ``spec`` (a local diffusers directory or a hub id in the local cache), for a check
    before the model loads (``seiko_core.sampling.check_steps``); None where it cannot be read here (a spec that does
    not resolve, a hub id not cached, a missing or broken file): the model's load then says what is wrong."""
    try:
        name, local = resolve_spec(spec)
    except ModelLoadError:
        return None
    if local:
        path = Path(name) / "scheduler" / "scheduler_config.json"
    else:
        from huggingface_hub import try_to_load_from_cache

        try:
            found = try_to_load_from_cache(name, "scheduler/scheduler_config.json")
        except ValueError:  # HFValidationError: not a hub id ("my org/my model"); the load says so in its sentence
            return None
        if not isinstance(found, str):
            return None
        path = Path(found)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _unreadable_weights(directory: Path | None, exc: BaseException) -> str | None:
    """Which safetensors file of ``directory`` (a model's, or its cached hub snapshot's) a failed load could not read,
    and safetensors' own reason, when the load failed on one (a SafetensorError in ``exc``'s chain); None otherwise.
    diffusers said only "Unable to load weights from checkpoint file for ..." of a truncated file, without why, and
    transformers safetensors' reason without the file (twentieth review). A file the error names comes first."""
    from safetensors import SafetensorError, safe_open

    cause, seen = exc, set()
    while cause is not None and not isinstance(cause, SafetensorError) and id(cause) not in seen:
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    if not isinstance(cause, SafetensorError):
        return None
    reason = _first_line(cause)
    broken = []
    for file in sorted([*directory.glob("*.safetensors"), *directory.glob("*/*.safetensors")]) if directory else []:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            broken.append((str(file) not in str(exc), file, _first_line(err)))
    if not broken:
        return f"{_first_line(exc).rstrip('. ')} (safetensors: {reason})"
    _, file, reason = min(broken)
    return f"its file {str(file)!r} is not a readable safetensors file ({reason})"


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)


def _load_pretrained(loader, name: str, local: bool, what: str, **kwargs):
    from safetensors import SafetensorError

    offline = local or _hub_offline()
    if local:
        _check_local_configs(Path(name))
    from huggingface_hub.errors import StrictDataclassError

    snapshot = Path(name) if local else None  # the files loaded: a hub id's cached snapshot, once it is found
    try:
        if not local:
            # a hub id's files are checked like a local directory's before diffusers reads them: its configs (and
            # shard indexes) are fetched first, or found in the cache when offline (found by review: a cached
            # snapshot's index naming a .bin shard was unpickled)
            from huggingface_hub import snapshot_download

            snapshot = Path(snapshot_download(name, allow_patterns=_CONFIGS, local_files_only=offline))
            _check_local_configs(snapshot)
            _check_hub_blobs(snapshot)  # the cached weights, before they are loaded
        loaded = loader(name, local_files_only=offline, **kwargs)
        if not offline:
            _check_hub_blobs(snapshot)  # and those the loader has just downloaded (the others are not hashed again)
        return loaded
    except ModelLoadError:
        raise
    # RuntimeError: a tensor of the wrong size, a config that asks for more memory than there is;
    # NotImplementedError: a tensor missing from a component; StrictDataclassError: a config value of the wrong type
    except (OSError, ValueError, TypeError, KeyError, AttributeError, SafetensorError, RuntimeError,
            NotImplementedError, StrictDataclassError) as exc:
        unreadable = _unreadable_weights(snapshot, exc)  # a cached hub file cut short is there, not "not in the cache"
        if unreadable is not None:
            raise ModelLoadError(f"Could not load {what} {name!r}: {unreadable}.") from exc
        if not local and offline:
            raise ModelLoadError(
                f"{what} {name!r} is a hub id, but the hub is offline (HF_HUB_OFFLINE=1) and it is not in the "
                "local cache: download it on a connected machine or pass a local directory."
            ) from exc
        raise ModelLoadError(f"Could not load {what} {name!r}: {exc}".splitlines()[0]) from exc


def _weights_dir(module: torch.nn.Module) -> Path | None:
    """The directory a transformers model was loaded from: its own path, or a hub id's cached snapshot."""
    name = str(getattr(getattr(module, "config", None), "_name_or_path", "") or "")
    if not name:
        return None
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (HFValidationError, LocalEntryNotFoundError, OSError) as exc:
        log.warning("Cannot find the files of %r to check that they hold every weight: %s", name, exc)
        return None


def _absent_from_files(module: torch.nn.Module) -> list[str]:
    """Names of a transformers model's parameters that none of its safetensors files holds. transformers fills such
    a tensor with fresh random values and only logs a report, so a text encoder with a tensor missing conditioned
    every image on noise, with no error (found by review); diffusers leaves such a tensor on the meta device instead,
    which the caller checks. A name is matched with or without a leading module prefix (a CLIPModel file loads into
    CLIPTextModel); tied parameters count once, under any of their names."""
    from safetensors import SafetensorError, safe_open
    from transformers import PreTrainedModel

    if not isinstance(module, PreTrainedModel):
        return []
    directory = _weights_dir(module)
    if directory is None:
        return []
    # the file transformers reads (no variant is asked for): model.safetensors, or the shards of its index; another
    # file beside it (an fp16 variant, a git-LFS pointer) is not read (found by review: one failed the load, one hid
    # a missing tensor)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted({directory / name for name in json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()})
    elif (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    else:
        return []
    keys: set[str] = set()
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                keys.update(handle.keys())
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"Model file {str(file)!r} is not a readable safetensors file ({exc}).".splitlines()[0]) from exc
    suffixes = {key.split(".", i)[-1] for key in keys for i in range(key.count(".") + 1)}
    names: dict[int, list[str]] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return [group[0] for group in names.values()
            if not any(n in suffixes or any(n.endswith("." + k) for k in keys) for n in group)]


_FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})  # safetensors' names of the floating-point dtypes
_DTYPE_NAMES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8", "BOOL": "bool"}


def _integral_weight(module: torch.nn.Module) -> tuple[str, str] | None:
    """(name, dtype) of a parameter that the module's safetensors files store as something other than floating-point
    numbers, else None. The loaders cast such a tensor to the model's dtype without a word: a UNet tensor stored as
    int32 loaded (found by the sixth review). Buffers (CLIP's int64 position_ids) are not parameters and may be
    integers."""
    from safetensors import SafetensorError, safe_open

    directory = _weights_dir(module)
    if directory is None:
        return None
    files: list[Path] = []
    for stem in ("diffusion_pytorch_model", "model"):
        index = directory / f"{stem}.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                files = sorted({directory / name for name in weight_map.values()})
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                return None  # the loader has read it already; a broken index is not this check's to report
            break
        if (directory / f"{stem}.safetensors").is_file():
            files = [directory / f"{stem}.safetensors"]
            break
    params = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    if not {key.split(".", i)[-1] for i in range(key.count(".") + 1)} & params:
                        continue
                    dtype = handle.get_slice(key).get_dtype()
                    if dtype not in _FLOAT_DTYPES:
                        return key, _DTYPE_NAMES.get(dtype, dtype)
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"Model file {str(file)!r} is not a readable safetensors file ({exc}).".splitlines()[0]) from exc
    return None


def _check_weights(spec: str, components: dict[str, torch.nn.Module]) -> None:
    """Refuse a model with a component that lacks weights (left on the meta device: a tensor missing from its file)
    or holds non-finite ones: a NaN in the UNet drew a round of black images that people rated before anything
    failed, and a missing tensor failed later as 'Cannot copy out of meta tensor' (found by review)."""
    for what, module in components.items():
        params = list(module.named_parameters())
        missing = [n for n, p in params if p.is_meta] or _absent_from_files(module)
        if missing:
            raise ModelLoadError(f"Model {spec!r} lacks weights in {what} ({len(missing)} tensor"
                                 f"{'s' if len(missing) != 1 else ''}, e.g. {missing[0]}); its files are incomplete.")
        bad = [n for n, p in params if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise ModelLoadError(f"Model {spec!r} has non-finite weights in {what} ({len(bad)} tensor"
                                 f"{'s' if len(bad) != 1 else ''}, e.g. {bad[0]}); its files are damaged.")
        if integral := _integral_weight(module):
            raise ModelLoadError(f"Model {spec!r} stores {what}'s weight {integral[0]} as {integral[1]}, not as "
                                 "floating-point numbers; its files are damaged.")
    sample_size = components["unet"].config.sample_size
    # -5 loaded, and the sampler then asked for latents of a negative size (found by the sixth review)
    if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 1:
        raise ModelLoadError(f"Model {spec!r} has sample_size={sample_size!r} in its unet config.json; it must be a "
                             "positive whole number (the latent's side).")


def load_model(spec: str, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               image_encoder: str | None = None) -> ModelParts:
    """Load ``spec`` (a local diffusers directory or a hub id) with its reward-feature image encoder.

    ``image_encoder`` (a hub id or a local transformers CLIP vision directory) overrides where the encoder comes
    from; by default the pipeline's own ``image_encoder`` if it has one, else ``openai/clip-vit-large-patch14``.
    """
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    name, local = resolve_spec(spec)
    # an encoder given by the caller is checked before the pipeline is loaded (a typo was found after that load)
    chosen_encoder = resolve_image_encoder(image_encoder) if image_encoder else None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or torch.float32
    # safetensors only: a model with pickled weights alone (.bin) is refused, not unpickled
    pipe = _load_pretrained(StableDiffusionPipeline.from_pretrained, name, local, "Model", safety_checker=None,
                            requires_safety_checker=False, dtype=dtype, use_safetensors=True)
    if getattr(pipe, "image_encoder", None) is not None and chosen_encoder is None:
        encoder = pipe.image_encoder
        processor = pipe.feature_extractor
    else:
        enc_name, enc_local = chosen_encoder or resolve_image_encoder(DEFAULT_IMAGE_ENCODER)
        encoder = _load_pretrained(CLIPVisionModelWithProjection.from_pretrained, enc_name, enc_local, "Image encoder",
                                   dtype=dtype, use_safetensors=True)
        processor = _load_pretrained(CLIPImageProcessor.from_pretrained, enc_name, enc_local, "Image processor")
    if processor is None:
        raise ModelLoadError(f"Model {spec!r} has an image encoder but no feature_extractor config to preprocess for it.")
    crop = processor.crop_size
    side = int(crop if isinstance(crop, int) else crop["height"])
    _check_weights(spec, {"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "image_encoder": encoder})
    pipe.to(device)
    encoder.to(device=device, dtype=dtype)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, encoder):
        module.requires_grad_(False)
        module.eval()
    pipe.set_progress_bar_config(disable=True)
    return ModelParts(spec=spec, pipeline=pipe, image_encoder=encoder, image_size=side,
                      image_mean=tuple(processor.image_mean), image_std=tuple(processor.image_std),
                      device=device, dtype=dtype)
