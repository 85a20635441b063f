"""JSON nested deeper than Python's json parser goes (200,000 '['): it raised RecursionError, which the readers of
model configs, checkpoint manifests and reward artifacts did not catch, so a traceback came out instead of their one
sentence, and such a model was accepted at creation (found by the fifth review, 5 Dec 2026)."""

from __future__ import annotations

import json

import pytest

from db.errors import InvalidInput

DEEP = "[" * 200_000


def test_the_stock_json_parser_gives_up_on_this_nesting():
    """The premise, from the stock library: json.loads raises RecursionError here (not a JSONDecodeError)."""
    with pytest.raises(RecursionError):
        json.loads(DEEP)


@pytest.mark.parametrize(("file", "message"), [
    ("model_index.json", "is not a config this loader reads (its JSON is nested too deeply)"),
    ("unet/config.json", "is not a config this loader reads (its JSON is nested too deeply)"),
    ("unet/diffusion_pytorch_model.safetensors.index.json", "is not a JSON object with a weight_map"),
])
def test_a_model_config_nested_too_deeply_is_one_sentence(tmp_path, file, message):
    from seiko_core.models import ModelLoadError, load_model

    model = tmp_path / "deep"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / file).write_text(DEEP)
    with pytest.raises(ModelLoadError, match=r"^Model file .*" + message.replace("(", r"\(").replace(")", r"\)")):
        load_model(str(model), device="cpu")


def test_a_model_nested_too_deeply_is_refused_at_creation_and_nothing_is_written(plain_lab):
    from app import services
    from db import repo
    from db.engine import read_session

    model = plain_lab.root / "deep-model"
    model.mkdir()
    (model / "model_index.json").write_text(DEEP)
    with pytest.raises(InvalidInput, match=r"nested too deeply\); nothing was created$"):
        services.check_model_spec(str(model))
    with pytest.raises(InvalidInput, match=r"nested too deeply\); nothing was created$"):
        services.create_experiment(factory=plain_lab.factory, spec=services.ExperimentSpec(name="deep"),
                                   default_model=str(model))
    with read_session(plain_lab.factory) as s:
        assert "deep" not in [e.name for e in repo.list_experiments(session=s)]
    (model / "model_index.json").write_text("{}")  # the same directory with a readable config is taken
    assert services.check_model_spec(str(model)) == str(model.resolve())


def test_a_checkpoint_manifest_nested_too_deeply_is_one_sentence(tmp_path):
    from seiko_core.checkpoint import MANIFEST, CheckpointError, verify

    (tmp_path / MANIFEST).write_text(DEEP)
    with pytest.raises(CheckpointError, match=r"^Checkpoint manifest .* is not valid JSON\.$"):
        verify(tmp_path)


def test_a_reward_artifact_nested_too_deeply_is_a_value_error(tmp_path):
    from seiko_core.reward import read_artifact

    (tmp_path / "w.safetensors").write_bytes(b"")
    (tmp_path / "m.json").write_text(DEEP)
    with pytest.raises(ValueError, match="is not valid JSON \\(it is nested too deeply\\)"):
        read_artifact(tmp_path, "w.safetensors", "m.json", "x")


def test_a_set_value_nested_too_deeply_is_one_sentence():
    from seiko_core.presets import preset
    from seiko_core.simulate import SimulationError, apply_overrides

    with pytest.raises(SimulationError, match=r"^--set value '\[{20}'\.\.\. is JSON nested too deeply to read$"):
        apply_overrides(preset("shapes"), [f"prompts={DEEP}"])


def test_a_model_config_nested_too_deeply_gives_the_default_image_size(tmp_path):
    from app.people import model_image_size

    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "unet" / "config.json").write_text(DEEP)
    assert model_image_size(str(tmp_path), default=32) == 32


def test_a_value_nested_too_deeply_for_json_is_refused_before_the_database():
    from db.checks import check_json

    value: list = []
    for _ in range(200_000):
        value = [value]
    with pytest.raises(InvalidInput, match="^config cannot be stored as JSON: it is nested too deeply$"):
        check_json("config", value)


BALANCED = "[" * 100_000 + "]" * 100_000  # well-formed JSON, just too deep for the parser


@pytest.mark.parametrize("text", [DEEP, BALANCED], ids=["unclosed", "balanced"])
def test_a_model_card_nested_too_deeply_is_one_sentence(tmp_path, text):
    """``seiko_core.model_card.read`` (the card programs read from an export) let json's RecursionError out: a
    traceback where the other readers got one sentence in the fifth review (found by the sixth review). Now a
    ValueError naming the file; a card that is JSON but not an object is one too, and a good card still reads."""
    from seiko_core import model_card

    path = tmp_path / model_card.CARD_JSON
    path.write_text(text)
    with pytest.raises(RecursionError):  # the premise, from the stock library
        json.loads(text)
    with pytest.raises(ValueError, match=r"^the model card '.*model_card\.json' is not one this code reads \(its JSON "
                                         r"is nested too deeply\)$") as refused:
        model_card.read(tmp_path)
    assert "\n" not in str(refused.value)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"is not one this code reads \(a list, not a JSON object\)$"):
        model_card.read(tmp_path)
    path.write_text(json.dumps({"schema": model_card.SCHEMA}))
    assert model_card.read(tmp_path) == {"schema": model_card.SCHEMA}


def test_a_safetensors_header_nested_too_deeply_is_one_sentence_and_the_file_is_kept(tmp_path):
    """The card's other reader, the safetensors header that ``stamp_safetensors`` rewrites: a header nested too deeply
    raised RecursionError (sixth review). Now one sentence naming the file, which is left as it was."""
    import struct

    from seiko_core import model_card

    blob = BALANCED.encode()
    path = tmp_path / "lora.safetensors"
    raw = struct.pack("<Q", len(blob)) + blob
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=r"^the safetensors header of 'lora\.safetensors' is not one this code reads "
                                         r"\(its JSON is nested too deeply\)$"):
        model_card.stamp_safetensors(path, {model_card.HEADER_KEY: "{}"})
    assert path.read_bytes() == raw
