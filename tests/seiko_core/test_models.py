import pytest
import torch

from seiko_core.models import ModelLoadError, load_model, resolve_spec


def test_missing_path_is_one_clear_sentence(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_spec("./models/missing")


def test_directory_without_model_index(tmp_path):
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        resolve_spec(str(tmp_path))
    f = tmp_path / "file.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_spec(str(f))


def test_hub_id_while_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert resolve_spec("someone/some-model") == ("someone/some-model", False)
    with pytest.raises(ModelLoadError, match="hub is offline"):
        load_model("someone/some-model", device="cpu")


def test_corrupt_weights_file(random_model_dir, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    weights = next((bad / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="Could not load"):
        load_model(str(bad), device="cpu")


@pytest.mark.parametrize("file", ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                                  "text_encoder/model.safetensors"])
@pytest.mark.parametrize("keep", [0.5, 20], ids=["half", "into-the-header"])
def test_a_truncated_weights_file_is_named_with_safetensors_own_reason(random_model_dir, tmp_path, file, keep):
    """Found by the twentieth review: a weights file cut short (a copy or a download stopped half-way) was "Could not
    load Model ...: Unable to load weights from checkpoint file for '...'" (diffusers), without why, or safetensors'
    reason without the file (transformers). One sentence now names the file and gives safetensors' own reason, the
    one the stock safe_open gives for that file."""
    import shutil

    from safetensors import SafetensorError, safe_open

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    data = (bad / file).read_bytes()
    (bad / file).write_bytes(data[:int(len(data) * keep) if keep < 1 else keep])
    with pytest.raises(SafetensorError) as stock:
        safe_open(str(bad / file), framework="pt")
    with pytest.raises(ModelLoadError) as refused:
        load_model(str(bad), device="cpu")
    assert str(refused.value) == (f"Could not load Model {str(bad)!r}: its file {str(bad / file)!r} is not a readable "
                                  f"safetensors file ({str(stock.value).splitlines()[0]}).")


def test_random_model_loads_with_its_image_encoder(random_parts):
    assert random_parts.image_encoder is not None
    assert random_parts.image_size == 32
    assert random_parts.tokenizer.model_max_length == 16
    assert all(not p.requires_grad for p in random_parts.unet.parameters())


def test_pickled_weights_are_refused_not_unpickled(random_model_dir, tmp_path):
    """Found in review: diffusers and transformers fall back to a component's pickled .bin when no safetensors file is
    there (torch.load with weights_only, still an unpickler); the app now loads safetensors only."""
    import shutil

    import torch
    from safetensors.torch import load_file

    pickled = tmp_path / "pickled"
    shutil.copytree(random_model_dir, pickled)
    weights = next((pickled / "unet").glob("*.safetensors"))
    torch.save(load_file(str(weights)), pickled / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(ModelLoadError, match="Could not load"):
        load_model(str(pickled), device="cpu")


@pytest.mark.parametrize(("file", "content", "message"), [
    ("model_index.json", b"[1]", "must hold a JSON object, not a list"),
    ("unet/config.json", b"[]", "must hold a JSON object, not a list"),
    ("feature_extractor/preprocessor_config.json", b"[]", "must hold a JSON object, not a list"),
    ("unet/config.json", b"{not json", "is not valid JSON"),
    ("image_encoder/model.safetensors", b"\x00" * 100, "Could not load"),
])
def test_a_forged_model_file_is_one_sentence(random_model_dir, tmp_path, file, content, message):
    """Found by review: each of these escaped as a TypeError, an AttributeError, a SafetensorError, or a message
    about connecting to huggingface.co."""
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    assert (bad / file).is_file()
    (bad / file).write_bytes(content)
    with pytest.raises(ModelLoadError, match=message):
        load_model(str(bad), device="cpu")


def _copy_with(random_model_dir, tmp_path, component: str, change) -> str:
    """A copy of the tiny model whose ``component`` weights went through ``change(tensors) -> tensors``."""
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    weights = next((bad / component).glob("*.safetensors"))
    save_file(change(load_file(str(weights))), str(weights))
    return str(bad)


def test_a_base_model_with_non_finite_or_missing_weights_is_refused(random_model_dir, tmp_path):
    """A NaN in the UNet loaded and drew a round of black images, rated before anything failed; a tensor missing
    from the UNet failed in the worker as 'NotImplementedError: Cannot copy out of meta tensor' (found by review)."""
    def nan_one(tensors):
        name = sorted(tensors)[0]
        tensors[name] = torch.full_like(tensors[name], float("nan"))
        return tensors

    with pytest.raises(ModelLoadError, match=r"^Model .* has non-finite weights in unet \(1 tensor, e\.g\. "):
        load_model(_copy_with(random_model_dir, tmp_path, "unet", nan_one), device="cpu")
    dropped = _copy_with(random_model_dir, tmp_path / "b", "vae", lambda t: {k: v for k, v in sorted(t.items())[1:]})
    with pytest.raises(ModelLoadError) as refused:
        load_model(dropped, device="cpu")
    assert "\n" not in str(refused.value) and "vae" in str(refused.value), str(refused.value)


@pytest.mark.parametrize("component", ["unet", "vae", "text_encoder", "image_encoder"])
def test_a_model_weight_stored_as_integers_is_refused(random_model_dir, tmp_path, component):
    """A UNet tensor rewritten as int32 loaded, cast back to floats by the loader without a word (found by the sixth
    review). A parameter stored as anything but floating-point numbers is refused, naming it; an integer buffer (CLIP's
    position_ids, which older checkpoints store) is not a weight and still loads."""
    def as_int32(tensors):
        name = next(k for k in sorted(tensors) if k.endswith(".weight"))
        tensors[name] = (tensors[name] * 100).to(torch.int32)
        return tensors

    with pytest.raises(ModelLoadError, match=rf"^Model .* stores {component}'s weight \S+\.weight as int32, not as "
                                             r"floating-point numbers; its files are damaged\.$"):
        load_model(_copy_with(random_model_dir, tmp_path, component, as_int32), device="cpu")
    if component == "text_encoder":
        def with_position_ids(tensors):
            tensors["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
            return tensors

        load_model(_copy_with(random_model_dir, tmp_path / "ids", component, with_position_ids), device="cpu")


@pytest.mark.parametrize("sample_size", [-5, 0])
def test_a_unet_config_with_a_sample_size_below_one_is_refused(random_model_dir, tmp_path, sample_size):
    """sample_size -5 in unet/config.json loaded (found by the sixth review)."""
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    config = json.loads((bad / "unet" / "config.json").read_text())
    (bad / "unet" / "config.json").write_text(json.dumps({**config, "sample_size": sample_size}))
    with pytest.raises(ModelLoadError, match=rf"^Model .* has sample_size={sample_size} in its unet config\.json; it "
                                             r"must be a positive whole number \(the latent's side\)\.$"):
        load_model(str(bad), device="cpu")


def test_a_sharded_index_that_names_a_pickle_is_refused(random_model_dir, tmp_path):
    """A diffusion_pytorch_model.safetensors.index.json whose weight_map names a .bin shard made diffusers load that
    pickle with torch.load, use_safetensors or not (found by review)."""
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    (bad / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"conv_in.weight": "shard.bin"}}))
    with pytest.raises(ModelLoadError, match=r"names the shard 'shard\.bin'; only \.safetensors shards are loaded"):
        load_model(str(bad), device="cpu")


def test_the_export_loaders_refuse_a_sharded_index_that_names_a_pickle(random_model_dir, tmp_path, monkeypatch):
    """The merged export's base pipeline (load_base_pipeline) and the export check's child (_stock_pipeline) called
    from_pretrained without load_model's checks: a UNet index naming a real .bin shard was loaded with torch.load
    (found by review). Each now refuses it in one sentence before anything is unpickled."""
    import json
    import shutil

    from safetensors.torch import load_file

    from seiko_core.export import ExportError, load_base_pipeline
    from seiko_core.export_verify import CheckSettings, VerificationError, _stock_pipeline, render_stock

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    torch.save(state, bad / "unet" / "shard-00001.bin")  # every weight, so a loader that reads it loads the model
    weights.unlink()
    (bad / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: "shard-00001.bin" for k in state}}))

    def unpickled(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", unpickled)
    refusal = r"names the shard 'shard-00001\.bin'; only \.safetensors shards are loaded\."
    with pytest.raises(ExportError, match=r"^Model file '.*/unet/diffusion_pytorch_model\.safetensors\.index\.json' "
                                          + refusal + "$") as refused:
        load_base_pipeline(str(bad))
    assert "\n" not in str(refused.value)
    with pytest.raises(ModelLoadError, match=refusal + "$") as refused:
        _stock_pipeline(str(bad), "cpu")
    assert "\n" not in str(refused.value)
    # the check says it of the base model before its child starts, not as the export's failure to load
    with pytest.raises(VerificationError, match=r"^The export check could not load the base model .*" + refusal[:-2]
                                                + r"\); the export itself was not checked") as refused:
        render_stock("merged", tmp_path, CheckSettings(base_model=str(bad), prompt="a red circle"))
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(("key", "value"), [("hidden_size", "64"), ("vocab_size", 2**31)])
def test_a_config_value_of_the_wrong_kind_is_one_sentence(random_model_dir, tmp_path, key, value):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(random_model_dir, bad)
    config = bad / "text_encoder" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), key: value}))
    with pytest.raises(ModelLoadError) as refused:
        load_model(str(bad), device="cpu")
    assert "\n" not in str(refused.value)


def test_non_finite_images_are_not_published(random_parts, monkeypatch):
    """Images drawn by damaged weights were stored and offered for rating (black PNGs, NaN embeddings): generate_batch
    refuses them (found by review)."""
    from seiko_core import loop
    from seiko_core.config import SeikoConfig

    monkeypatch.setattr(loop, "sample_batches", lambda parts, prompts, seeds, **kw: iter([torch.full(
        (len(prompts), 3, 32, 32), float("nan"))]))
    with pytest.raises(ValueError, match=r"^2 of the 2 images drawn with the base model are not finite numbers"):
        loop.generate_batch(random_parts, None, ["a", "b"], [0, 1], SeikoConfig())


@pytest.mark.parametrize("component", ["text_encoder", "image_encoder"])
def test_an_encoder_with_a_missing_tensor_is_refused(random_model_dir, tmp_path, component):
    """transformers fills a tensor missing from an encoder's file with fresh random values and only logs it: the
    text encoder then conditioned every image on noise and the image encoder fed the reward model noise, with no
    error (found by review)."""
    dropped = _copy_with(random_model_dir, tmp_path, component,
                         lambda t: {k: v for k, v in t.items() if not k.endswith("final_layer_norm.weight")
                                    and not k.endswith("post_layernorm.weight")})
    with pytest.raises(ModelLoadError, match=rf"^Model .* lacks weights in {component} \(1 tensor, e\.g\. .*"
                                              r"layer_?norm\.weight\); its files are incomplete\.$"):
        load_model(dropped, device="cpu")


def _cached_hub_model(random_model_dir, tmp_path, monkeypatch, repo: str = "someone/tiny-sd"):
    """The tiny model placed in a hub cache as ``repo``'s snapshot, the way huggingface_hub lays one out: each file
    of snapshots/<commit>/ is a relative link to blobs/<etag>, an LFS file's etag being its sha256 (the weights
    here) and a git file's its git sha1 (a sha1 of its bytes here: 40 hex digits either way)."""
    import hashlib
    import os

    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read at import from the environment
    folder = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    snapshot = folder / "snapshots" / commit
    (folder / "blobs").mkdir(parents=True)
    for file in sorted(p for p in random_model_dir.rglob("*") if p.is_file()):
        data = file.read_bytes()
        digest = hashlib.sha256 if file.suffix == ".safetensors" else hashlib.sha1
        blob = folder / "blobs" / digest(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(random_model_dir)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)
    return snapshot


def _alter_keeping_size(file) -> None:
    """Change the last float of a weights file's blob to another finite float: same size, still a valid file."""
    import struct

    blob = file.resolve()
    raw = bytearray(blob.read_bytes())
    raw[-4:] = struct.pack("<f", 0.125 if raw[-4:] != struct.pack("<f", 0.125) else 0.375)
    blob.write_bytes(bytes(raw))


_ALTERED = (r"^Model file '.*/unet/diffusion_pytorch_model\.safetensors' does not hash to the sha256 the hub cache "
            r"names it by \([0-9a-f]{12}\.\.\.\): it is damaged or was altered; delete it from the hub cache and "
            r"download it again\.$")


def test_a_cached_hub_models_weights_must_hash_to_their_blob_names(random_model_dir, tmp_path, monkeypatch):
    """huggingface_hub checks a download by its size only, and nothing hashed a hub model's cached weights: a blob
    with bytes changed but its size kept (tampering, a failing disk) loaded with no error (found by review). An LFS
    file's blob is named by its sha256, which is checked before the weights are loaded."""
    from seiko_core.export import ExportError, load_base_pipeline
    from seiko_core.export_verify import CheckSettings, VerificationError, render_stock

    snapshot = _cached_hub_model(random_model_dir, tmp_path, monkeypatch)
    assert load_model("someone/tiny-sd", device="cpu").spec == "someone/tiny-sd"
    load_base_pipeline("someone/tiny-sd")
    _alter_keeping_size(snapshot / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match=_ALTERED):
        load_model("someone/tiny-sd", device="cpu")
    with pytest.raises(ExportError, match=_ALTERED):
        load_base_pipeline("someone/tiny-sd")
    # before the export check's child loads it; said of the base model as the export's refusal, not a traceback
    with pytest.raises(VerificationError, match=r"^The export check could not load the base model 'someone/tiny-sd' \("
                                                + _ALTERED[1:-3] + r"\); the export itself was not checked"):
        render_stock("lora", tmp_path, CheckSettings(base_model="someone/tiny-sd", prompt="a red circle"))


def test_a_hub_models_weights_are_hashed_once_per_process(random_model_dir, tmp_path, monkeypatch):
    """A worker that loads the same model again does not hash its gigabytes again; a blob changed since is."""
    from seiko_core import models
    from seiko_core.checkpoint import sha256_file

    snapshot = _cached_hub_model(random_model_dir, tmp_path, monkeypatch)
    hashed = []
    monkeypatch.setattr(models, "sha256_file", lambda path: hashed.append(path) or sha256_file(path))
    load_model("someone/tiny-sd", device="cpu")
    first = len(hashed)
    assert first >= 4  # unet, vae, text encoder, image encoder
    load_model("someone/tiny-sd", device="cpu")
    assert len(hashed) == first
    _alter_keeping_size(snapshot / "unet" / "diffusion_pytorch_model.safetensors")
    with pytest.raises(ModelLoadError, match=_ALTERED):
        load_model("someone/tiny-sd", device="cpu")
    assert len(hashed) == first + 1


def test_only_the_weights_a_loader_reads_are_hashed(random_model_dir, tmp_path, monkeypatch):
    """A full download of a pipeline also holds root checkpoints (SD 1.5's repository: two of 4 GB and more) that
    from_pretrained never reads: they are not hashed, so a damaged one does not stop the model. An image encoder's
    weights are at its repository's root: those are read, so they are checked."""
    import hashlib
    import os
    import shutil

    from seiko_core import models

    snapshot = _cached_hub_model(random_model_dir, tmp_path, monkeypatch)
    blobs = snapshot.parents[1] / "blobs"
    damaged = b"not the bytes of this name"
    blob = blobs / hashlib.sha256(b"the real checkpoint").hexdigest()
    blob.write_bytes(damaged)
    os.symlink(os.path.relpath(blob, snapshot), snapshot / "v1-5-pruned.safetensors")
    load_model("someone/tiny-sd", device="cpu")  # the pipeline loads

    encoder = _cached_hub_model(random_model_dir, tmp_path / "enc", monkeypatch, repo="someone/enc")
    for item in encoder.iterdir():
        shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    source = random_model_dir / "image_encoder"
    for name in ("config.json", "model.safetensors"):
        data = (source / name).read_bytes()
        digest = (hashlib.sha256 if name.endswith(".safetensors") else hashlib.sha1)(data).hexdigest()
        (encoder.parents[1] / "blobs" / digest).write_bytes(data)
        os.symlink(os.path.relpath(encoder.parents[1] / "blobs" / digest, encoder), encoder / name)
    models._check_hub_blobs(encoder)  # intact
    _alter_keeping_size(encoder / "model.safetensors")
    with pytest.raises(ModelLoadError, match=r"^Model file '.*/model\.safetensors' does not hash to the sha256"):
        models._check_hub_blobs(encoder)


def test_a_cached_hub_model_is_checked_like_a_local_one(random_model_dir, tmp_path, monkeypatch):
    """A hub id's cached snapshot went to diffusers unchecked: an index naming a .bin shard in it was unpickled
    (found by review; a local directory was already checked)."""
    import json

    snapshot = _cached_hub_model(random_model_dir, tmp_path, monkeypatch)
    assert load_model("someone/tiny-sd", device="cpu").spec == "someone/tiny-sd"
    (snapshot / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"conv_in.weight": "shard.bin"}}))
    with pytest.raises(ModelLoadError, match=r"names the shard 'shard\.bin'; only \.safetensors shards are loaded"):
        load_model("someone/tiny-sd", device="cpu")


def test_only_the_encoder_file_transformers_reads_is_checked(random_model_dir, tmp_path):
    """The check read every *.safetensors of an encoder's folder: a git-LFS pointer left as model.fp16.safetensors
    (a clone without its fp16 files) failed the load with a SafetensorError traceback, and a complete fp16 file
    beside an incomplete model.safetensors hid the missing tensor (found by review). Only the file transformers
    loads (model.safetensors, or the shards its index names) is read now."""
    import shutil

    from safetensors.torch import load_file, save_file

    spare = tmp_path / "spare"
    shutil.copytree(random_model_dir, spare)
    (spare / "text_encoder" / "model.fp16.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 12\n")
    load_model(str(spare), device="cpu")
    hidden = tmp_path / "hidden"
    shutil.copytree(random_model_dir, hidden)
    full = hidden / "text_encoder" / "model.safetensors"
    shutil.copy(full, hidden / "text_encoder" / "model.fp16.safetensors")
    save_file({k: v for k, v in load_file(str(full)).items() if not k.endswith("final_layer_norm.weight")}, str(full))
    with pytest.raises(ModelLoadError, match=r"lacks weights in text_encoder \(1 tensor"):
        load_model(str(hidden), device="cpu")


def test_a_hub_image_encoders_root_index_is_checked(random_model_dir, tmp_path, monkeypatch):
    """An image encoder given as a hub id keeps its shard index at the repository's root, which the check of
    */*.index.json did not see: an index naming a .bin shard was loaded with torch.load (found by review)."""
    import json
    import shutil

    snapshot = _cached_hub_model(random_model_dir, tmp_path, monkeypatch, repo="someone/enc")
    encoder = tmp_path / "encoder"
    shutil.copytree(snapshot / "image_encoder", encoder)
    for item in snapshot.iterdir():
        shutil.rmtree(item) if item.is_dir() else item.unlink()
    for item in encoder.iterdir():
        shutil.copy(item, snapshot / item.name)
    shutil.copy(random_model_dir / "feature_extractor" / "preprocessor_config.json", snapshot)
    (snapshot / "model.safetensors").unlink()  # sharded: the index names the files
    (snapshot / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {"vision_model.post_layernorm.weight": "shard.bin"}}))
    with pytest.raises(ModelLoadError, match=r"names the shard 'shard\.bin'; only \.safetensors shards are loaded"):
        load_model(str(random_model_dir), device="cpu", image_encoder="someone/enc")


def test_an_image_encoder_given_as_a_local_directory_loads_and_a_bad_one_is_named(random_model_dir, tmp_path):
    """A local image encoder (a transformers CLIP vision directory: config.json, no model_index.json) was refused as
    "not a diffusers model directory", so none could be given by path, and a missing one was called "Model path"
    (found by review). It loads, its weights are the files', and a bad one is named as the image encoder."""
    import shutil

    from safetensors.torch import load_file, save_file

    encoder = tmp_path / "clip-vision"
    shutil.copytree(random_model_dir / "image_encoder", encoder)
    # a pipeline's image_encoder/ folder as it is: its processor config is in the pipeline's feature_extractor/
    with pytest.raises(ModelLoadError, match=r"^Image encoder path '.*clip-vision' has no preprocessor_config\.json: "
                                             r"copy the one of its pipeline's feature_extractor folder"):
        load_model(str(random_model_dir), device="cpu", image_encoder=str(encoder))
    shutil.copy(random_model_dir / "feature_extractor" / "preprocessor_config.json", encoder)
    weights = load_file(str(encoder / "model.safetensors"))
    first = sorted(k for k, v in weights.items() if v.is_floating_point())[0]
    weights[first] = weights[first] + 0.5  # not the pipeline's own encoder, which would load as well without it
    save_file(weights, str(encoder / "model.safetensors"))
    parts = load_model(str(random_model_dir), device="cpu", image_encoder=str(encoder))
    loaded = parts.image_encoder.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in weights.items())

    with pytest.raises(ModelLoadError, match=r"^Image encoder path '.*nowhere' does not exist\.$"):
        load_model(str(random_model_dir), device="cpu", image_encoder=str(tmp_path / "nowhere"))
    (encoder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"^Image encoder path '.*clip-vision' is not a transformers model "
                                             r"directory \(it has no config\.json\)\.$"):
        load_model(str(random_model_dir), device="cpu", image_encoder=str(encoder))


def test_a_pickle_index_beside_safetensors_weights_is_not_read_and_not_refused(random_model_dir, tmp_path):
    """Repositories that ship both formats keep a pytorch_model.bin.index.json beside model.safetensors; loaders never
    read it with use_safetensors, and refusing it refused valid models (found by review)."""
    import json
    import shutil

    both = tmp_path / "both"
    shutil.copytree(random_model_dir, both)
    for folder, name in (("unet", "diffusion_pytorch_model.bin.index.json"), ("text_encoder", "pytorch_model.bin.index.json")):
        (both / folder / name).write_text(json.dumps({"metadata": {}, "weight_map": {"x": "shard-00001.bin"}}))
    load_model(str(both), device="cpu")
