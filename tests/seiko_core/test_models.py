import pytest

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
