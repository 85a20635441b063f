"""`python -m app export` and the UI export functions: sources chosen by ids and resolved from the database."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from app.__main__ import main as app_main
from app.export import export_ratings, export_round, export_round_to, resolve_round
from app.settings import Settings
from db import migrate, repo
from db.engine import make_engine, read_session, session_factory, write_session
from db.errors import NotFound
from seiko_core.checkpoint import verify
from seiko_core.export import ExportError, read_ratings_dataset


@dataclass(frozen=True)
class World:
    settings: Settings
    experiment_id: int
    shas: list[str]


def png(color) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """A data dir and migrated SQLite DB: round 0 (no adapter, 2 images rated by 2 raters), round 1 with an adapter,
    round 2 with a no-op adapter (lora_B = 0: the base model exactly). The experiment samples with 8 DDIM steps."""
    from seiko_core import lora
    from seiko_core.config import FinetuneConfig
    from seiko_core.models import load_model
    from seiko_core.toy.build import random_model

    root = tmp_path_factory.mktemp("app-export")
    model_dir = random_model(root / "model")
    data = root / "data"
    settings = Settings.from_env({"data_dir": str(data), "db_url": f"sqlite:///{data / 'seiko.db'}", "model": str(model_dir)},
                                 environ={})
    migrate.upgrade(settings.db_url)

    parts = load_model(str(model_dir), device="cpu")
    params = lora.add_adapter(parts.unet, "round_1", FinetuneConfig(lora_rank=2, lora_alpha=2.0))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in params:
            p.normal_(0, 0.05, generator=g)
    lora.save_adapter(parts.unet, "round_1", data / "adapters" / "exp1" / "round_1")
    lora.add_adapter(parts.unet, "round_2", FinetuneConfig(lora_rank=2, lora_alpha=2.0))  # peft's init: B = 0
    lora.save_adapter(parts.unet, "round_2", data / "adapters" / "exp1" / "round_2")

    shas = []
    engine = make_engine(settings.db_url)
    with write_session(session_factory(engine)) as s:
        exp = repo.create_experiment(session=s, name="shapes run", model_spec=str(model_dir), method="ucb",
                                     config={"method": "ucb", "sampling": {"steps": 8, "guidance": 4.0}},
                                     budgets=[2], prompts=["a red circle", "a star"])
        r0 = repo.create_round(session=s, experiment_id=exp.id)
        images = []
        for i, (prompt, color) in enumerate([("a red circle", "red"), ("a star", "blue")]):
            content = png(color)
            sha = hashlib.sha256(content).hexdigest()
            (data / "images").mkdir(parents=True, exist_ok=True)
            (data / "images" / f"{sha}.png").write_bytes(content)
            images.append(repo.add_image(session=s, round_id=r0.id, prompt=prompt, seed=i, file_path=f"images/{sha}.png",
                                         sha256=sha, embedding=b"\0" * 8, embedding_dim=2))
            shas.append(sha)
        repo.open_round(session=s, round_id=r0.id)
        ann = repo.create_rater(session=s, name="ann", password_hash="x$h")
        bob = repo.create_rater(session=s, name="bob", password_hash="x$h")
        repo.add_rating(session=s, image_id=images[0].id, rater_id=ann.id, score=8)
        repo.add_rating(session=s, image_id=images[0].id, rater_id=bob.id, score=4)
        repo.add_rating(session=s, image_id=images[1].id, rater_id=ann.id, score=2)
        repo.create_round(session=s, experiment_id=exp.id, adapter_path="adapters/exp1/round_1")
        repo.create_round(session=s, experiment_id=exp.id, adapter_path="adapters/exp1/round_2")
        exp_id = exp.id
    engine.dispose()
    return World(settings, exp_id, shas)


def signed_in_admin(factory):
    """The admin "root" (created once per world), as app.auth sees a signed-in request from localhost."""
    from app import auth

    with write_session(factory) as s:
        if not any(r.name == "root" for r in repo.list_raters(session=s)):
            repo.create_rater(session=s, name="root", role="admin", password_hash="x$h")
    return auth.identify(factory, local_mode=False, username="root", client_host="127.0.0.1")


def cli(world: World, *args: str) -> int:
    s = world.settings
    return app_main(["export", *args, "--data-dir", str(s.data_dir), "--db-url", s.db_url, "--model", s.model])


def test_cli_exports_a_round_as_diffusers_and_kohya_checked_by_stock_diffusers_with_a_model_card(world, tmp_path, capsys):
    from seiko_core import model_card
    from seiko_core.export_verify import MAX_APP_MEAN_ABS, MIN_BASE_MEAN_ABS

    e = str(world.experiment_id)
    assert cli(world, "lora", "--experiment", e, "--round", "1", "--format", "diffusers", "--out", str(tmp_path / "d")) == 0
    out = capsys.readouterr().out
    assert "wrote diffusers export" in out and "Checked: stock diffusers" in out
    assert verify(tmp_path / "d")["format"] == "diffusers-lora"
    card = model_card.read(tmp_path / "d")
    v = card["verification"]
    assert v["passed"] and v["vs_base"]["mean_abs"] > MIN_BASE_MEAN_ABS and v["vs_app"]["mean_abs"] <= MAX_APP_MEAN_ABS
    # the experiment's sampler settings and its first prompt (the config has no eval prompts)
    assert (v["settings"]["steps"], v["settings"]["guidance"], v["settings"]["prompt"]) == (8, 4.0, "a red circle")
    # hand count of the fixture: round 0 has 3 ratings of 2 images by 2 raters; round 1 has none
    assert card["labels"] == {"count": 3, "images": 2} and card["raters"] == {"count": 2}
    assert [(r["index"], r["labels"], r["raters"]) for r in card["rounds"]] == [(0, 3, 2), (1, 0, 0)]
    assert card["round"] == 1 and card["rounds_total"] == 3 and card["format"] == "diffusers"
    assert card["method"] == "ucb" and card["base_model"] == Path(world.settings.model).name  # not the server path
    assert card["seiko_config"]["sampling"]["steps"] == 8 and card["kl_total"] is None  # no eval KL was recorded
    assert card["win_rates"] is None and card["win_rates_status"] == "not measured"
    assert "ann" not in json.dumps(card) and "bob" not in json.dumps(card)  # raters counted, never named
    text = (tmp_path / "d" / model_card.CARD_MD).read_text()
    assert "**Labels**: 3 ratings of 2 images" in text and "## Win rates\n\nNot measured" in text
    assert {model_card.CARD_MD, model_card.CARD_JSON} <= set(verify(tmp_path / "d")["files"])
    assert cli(world, "lora", "--experiment", e, "--round", "1", "--format", "kohya", "--out", str(tmp_path / "k")) == 0
    assert [p.name for p in (tmp_path / "k").glob("*.safetensors")] == ["seiko_shapes_run_round1.safetensors"]


def test_no_export_names_the_servers_directories(world):
    """A merged export's README and manifest, the LoRA READMEs and the model card named the base model as the server
    gave it: its full path on the server's disk (found by review), handed to whoever downloads the export. Every
    format now names a local base by its directory's name, and a hub id as given."""
    from safetensors import safe_open

    s, e = world.settings, world.experiment_id
    server = str(Path(s.model).parent)  # the directory that holds the model and the data dir
    name = Path(s.model).name
    texts = {}
    for fmt in ("diffusers", "kohya", "merged"):
        file = export_round(s, e, 1, fmt)
        if fmt == "kohya":
            with safe_open(str(file), "pt") as f:
                texts[f"{fmt}:header"] = json.dumps(f.metadata())
            for p in file.parent.iterdir():
                if p.suffix != ".safetensors":
                    texts[f"{fmt}:{p.name}"] = p.read_text()
            continue
        with zipfile.ZipFile(file) as z:
            for n in z.namelist():
                if not n.endswith(".safetensors"):
                    texts[f"{fmt}:{n}"] = z.read(n).decode()
    assert any(k.endswith("README.md") for k in texts) and any(k.endswith("manifest.json") for k in texts)
    leaks = sorted(k for k, text in texts.items() if server in text)
    assert not leaks, leaks
    for fmt in ("diffusers", "kohya", "merged"):  # each still says which base model it goes with
        readme = next(t for k, t in texts.items() if k.startswith(f"{fmt}:") and k.endswith("README.md"))
        assert name in readme, fmt
    merged_manifest = json.loads(next(t for k, t in texts.items() if k.startswith("merged:") and k.endswith("/manifest.json")))
    assert merged_manifest["base_model"] == name


def test_cli_exports_the_ratings(world, tmp_path):
    assert cli(world, "ratings", "--experiment", str(world.experiment_id), "--out", str(tmp_path / "r")) == 0
    rows = read_ratings_dataset(tmp_path / "r")
    # raters by pseudonym, in the order of their accounts (ann's first): a data set is made to be shared (review)
    assert [(r["rater"], r["score"], r["round"], r["seed"]) for r in rows] == [
        ("rater-1", 8, 0, 0), ("rater-2", 4, 0, 0), ("rater-1", 2, 0, 1)]
    assert "ann" not in (tmp_path / "r" / "metadata.jsonl").read_text()
    assert cli(world, "ratings", "--experiment", str(world.experiment_id), "--out", str(tmp_path / "n"),
               "--rater-names") == 0
    assert [r["rater"] for r in read_ratings_dataset(tmp_path / "n")] == ["ann", "bob", "ann"]
    assert rows[0]["file_name"] == f"images/{world.shas[0]}.png" and rows[2]["prompt"] == "a star"
    assert rows[0]["rated_at"].endswith("+00:00")
    assert sorted(p.name for p in (tmp_path / "r" / "images").iterdir()) == sorted(f"{s}.png" for s in world.shas)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lora", "--experiment", "99", "--round", "1", "--format", "kohya"], "there is no experiment with id 99"),
        (["lora", "--experiment", "{e}", "--round", "7", "--format", "kohya"], "has no round 7"),
        (["lora", "--experiment", "{e}", "--round", "0", "--format", "diffusers"], "Round 0 of experiment {e} has no adapter"),
        (["ratings", "--experiment", "99"], "there is no experiment with id 99"),
        # round 2's adapter is a no-op: stock diffusers renders exactly the base model's image
        (["lora", "--experiment", "{e}", "--round", "2", "--format", "diffusers"],
         "Export check (a) failed: the LoRA did not load, or does nothing: re-loaded by stock diffusers, the export's image "
         "differs from the base model's by 0.000 levels on average (largest 0), not more than 0.1; the export was not published."),
    ],
)
def test_cli_refuses_unknown_ids_with_one_sentence(world, tmp_path, capsys, args, message):
    e = str(world.experiment_id)
    out = tmp_path / "out"
    assert cli(world, *[a.replace("{e}", e) for a in args], "--out", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message.replace("{e}", e) in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_refuses_an_existing_out_dir_and_an_unknown_format(world, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert cli(world, "lora", "--experiment", str(world.experiment_id), "--round", "1", "--format", "diffusers",
               "--out", str(tmp_path / "taken")) == 1
    assert "already exists" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli(world, "lora", "--experiment", "1", "--round", "1", "--format", "ckpt", "--out", str(tmp_path / "x"))
    assert exc.value.code == 2 and "invalid choice: 'ckpt'" in capsys.readouterr().err


def test_ui_functions_write_downloads_under_data_dir_exports(world):
    s, e = world.settings, world.experiment_id
    kohya = export_round(s, e, 1, "kohya")
    assert kohya.suffix == ".safetensors" and kohya.parent.parent == s.data_dir / "exports"
    verify(kohya.parent)
    merged = export_round(s, e, 1, "merged")
    assert merged.suffix == ".zip" and merged.parent == s.data_dir / "exports"
    names = zipfile.ZipFile(merged).namelist()
    assert f"{merged.stem}/model_index.json" in names and f"{merged.stem}/manifest.json" in names
    assert not [n for n in names if "lora" in n.lower() or n.endswith((".bin", ".pkl"))]
    ratings = export_ratings(s, e)
    with zipfile.ZipFile(ratings) as z:
        manifest = json.loads(z.read(f"{ratings.stem}/manifest.json"))
    assert manifest["rows"] == 3 and len([f for f in manifest["files"] if f.startswith("images/")]) == 2
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        export_round(s, e, 1, "onnx")
    # found in review: the unpacked directory stayed beside each zip (a merged pipeline kept twice)
    assert not merged.with_suffix("").exists() and not ratings.with_suffix("").exists()


def test_an_exports_leftovers_are_removed_at_start_once_a_day_old(tmp_path):
    """Found in review: a killed export left exports/.tmp-... (gigabytes for a merged pipeline) that nothing removed."""
    import os
    import time

    from app import storage

    exports = tmp_path / "exports"
    (exports / ".tmp-old-merged").mkdir(parents=True)
    (exports / ".tmp-old-merged" / "unet.safetensors").write_bytes(b"x" * 100)
    (exports / ".tmp-writing-now").mkdir()
    (exports / "exp1-round1-merged.zip").write_bytes(b"PK")  # a finished export: never touched
    day_ago = time.time() - 25 * 3600
    for p in (exports / ".tmp-old-merged", exports / ".tmp-old-merged" / "unet.safetensors"):
        os.utime(p, (day_ago, day_ago))
    assert storage.clean_export_partials(tmp_path) == [exports / ".tmp-old-merged"]
    assert sorted(p.name for p in exports.iterdir()) == [".tmp-writing-now", "exp1-round1-merged.zip"]
    assert storage.clean_export_partials(tmp_path / "no-such-dir") == []


def test_the_source_path_comes_from_the_database_and_stays_inside_the_data_dir(world, tmp_path):
    src = resolve_round(world.settings, world.experiment_id, 1)
    assert src.adapter_dir == world.settings.data_dir / "adapters" / "exp1" / "round_1"
    with pytest.raises(NotFound, match="has no round 3"):
        export_round_to(world.settings, world.experiment_id, 3, "diffusers", tmp_path / "x")
    elsewhere = Settings.from_env({"data_dir": str(tmp_path / "other"), "db_url": world.settings.db_url}, environ={})
    with pytest.raises(ExportError, match="is missing from"):  # the DB path is resolved in this data dir, not anywhere else
        resolve_round(elsewhere, world.experiment_id, 1)
    assert not Path(tmp_path / "x").exists()


def test_the_browser_builds_every_format_by_id_and_the_route_serves_exactly_that_file(world):
    """The admin tab's export (app.ui_export): the formats of `python -m app export`, recorded by id, downloaded
    through GET /seiko/export/<id> (called here as a plain function with a request carrying a session cookie)."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from app import ui_export

    engine = make_engine(world.settings.db_url)
    factory = session_factory(engine)
    try:
        admin = signed_in_admin(factory)
        services = SimpleNamespace(factory=factory, settings=world.settings, local_mode=False)
        app = SimpleNamespace(tokens={"admin-token": "root", "rater-token": "ann"}, cookie_id="t")  # Gradio's token table
        built = {fmt: ui_export.build(factory, world.settings, admin, world.experiment_id, 1 if fmt != "ratings" else None, fmt)
                 for fmt in ("diffusers", "kohya", "merged", "ratings")}
        assert built["kohya"].file_name == "seiko_shapes_run_round1.safetensors"
        assert all(b.file_name.endswith(".zip") for fmt, b in built.items() if fmt != "kohya")
        assert len({b.export_id for b in built.values()}) == 4

        def get(export_id: str, token: str = "admin-token"):
            scope = {"type": "http", "method": "GET", "path": f"/seiko/export/{export_id}", "query_string": b"",
                     "headers": [(b"cookie", f"access-token-t={token}".encode())], "client": ("127.0.0.1", 5000),
                     "path_params": {"export_id": export_id}, "app": app}
            return ui_export.serve(services, Request(scope))

        for fmt, b in built.items():
            response = get(str(b.export_id))
            assert response.status_code == 200, fmt
            with read_session(factory) as s:
                row = repo.get_export(session=s, export_id=b.export_id)
                assert Path(response.path) == (world.settings.data_dir / row.file_path).resolve()
                assert (row.format, row.round_index) == (fmt, None if fmt == "ratings" else 1)
        with zipfile.ZipFile(get(str(built["diffusers"].export_id)).path) as zf:
            assert any(n.endswith("pytorch_lora_weights.safetensors") for n in zf.namelist())
            assert any(n.endswith("/MODEL_CARD.md") for n in zf.namelist())
        with zipfile.ZipFile(get(str(built["merged"].export_id)).path) as zf:
            (card_name,) = [n for n in zf.namelist() if n.endswith("/model_card.json")]
            assert json.loads(zf.read(card_name))["verification"]["loader"] == "StableDiffusionPipeline.from_pretrained(export)"
        from safetensors import safe_open

        with safe_open(get(str(built["kohya"].export_id)).path, "pt") as f:  # the bare kohya file carries its card
            card = json.loads(f.metadata()["seiko_model_card"])
        assert card["format"] == "kohya" and card["verification"]["passed"] and card["round"] == 1
        assert all(b.checked == (fmt != "ratings") for fmt, b in built.items())
        assert get("12345").status_code == 404 and b"There is no export with id 12345." == get("12345").body
        assert get(str(built["kohya"].export_id), token="rater-token").status_code == 403  # ann is a rater
        assert get(str(built["kohya"].export_id), token="forged").status_code == 401
        # a file changed on disk since it was built is not served as that export (found by review)
        with open(get(str(built["ratings"].export_id)).path, "ab") as f:
            f.write(b"tampered")
        refused = get(str(built["ratings"].export_id))
        assert refused.status_code == 409 and b"has changed since it was built" in refused.body
        # ...and one changed in place, its size the same: only the size was compared (found by review)
        kohya = get(str(built["kohya"].export_id)).path
        data = bytearray(kohya.read_bytes())
        data[-1] ^= 0xFF
        kohya.write_bytes(bytes(data))
        refused = get(str(built["kohya"].export_id))
        assert refused.status_code == 409 and b"its sha256 differs" in refused.body
    finally:
        engine.dispose()


def test_an_export_is_not_served_to_another_sites_page_and_a_head_writes_no_audit_row(ui_world):
    """GET /seiko/export/<id> hashed the file and wrote an export.download audit row on every call, HEAD too, and
    refused only a foreign Origin, which an image or a frame never sends: a page on another port of the same host or
    on a sibling name (SameSite=Lax cookies reach it) could make an admin's browser call it at will (a review). Such a
    request is refused now unless it opens the download as a page; the app's own link, a typed address and clients
    without Fetch Metadata headers (curl) are served; a HEAD is answered and audited as nothing downloaded."""
    from types import SimpleNamespace

    from starlette.requests import Request

    from app import auth, ui_export

    data = b"rating,image\n5,1\n"
    exports = ui_world.settings.data_dir / "exports"
    exports.mkdir(parents=True, exist_ok=True)
    (exports / "ratings.zip").write_bytes(data)
    with write_session(ui_world.factory) as s:
        export_id = repo.add_export(session=s, experiment_id=ui_world.experiment_id, round_index=None, fmt="ratings",
                                    file_path="exports/ratings.zip", sha256=hashlib.sha256(data).hexdigest(),
                                    size_bytes=len(data), created_by=ui_world.accounts["root"]).id
    services = SimpleNamespace(factory=ui_world.factory, settings=ui_world.settings, local_mode=False)
    app = SimpleNamespace(tokens={"admin-token": "root"}, cookie_id="t")  # Gradio's token table

    def call(method: str = "GET", site: str | None = None, mode: str | None = None, dest: str | None = None):
        headers = [(b"cookie", b"access-token-t=admin-token")]
        for name, value in (("sec-fetch-site", site), ("sec-fetch-mode", mode), ("sec-fetch-dest", dest)):
            if value is not None:
                headers.append((name.encode(), value.encode()))
        scope = {"type": "http", "method": method, "path": f"/seiko/export/{export_id}", "query_string": b"",
                 "headers": headers, "client": ("127.0.0.1", 5000), "path_params": {"export_id": str(export_id)},
                 "app": app}
        return ui_export.serve(services, Request(scope))

    def downloads() -> int:
        return sum(1 for row in auth.list_audit(ui_world.factory) if row.action == "export.download")

    served = [(None, None, None),  # curl, a script
              ("same-origin", "navigate", "document"), ("same-origin", "no-cors", "empty"),  # the app's own page
              ("none", "navigate", "document"),  # the address typed or bookmarked
              ("cross-site", "navigate", "document"), ("same-site", "navigate", "document")]  # opened as a page
    for n, headers in enumerate(served, start=1):
        response = call("GET", *headers)
        assert response.status_code == 200 and Path(response.path).read_bytes() == data, headers
        assert downloads() == n, headers
    for headers in (("cross-site", "no-cors", "image"), ("same-site", "no-cors", "image"),
                    ("same-site", "navigate", "iframe"), ("cross-site", "cors", "empty"), ("same-site", "no-cors", "script"),
                    ("Cross-Site", "no-cors", "image"), ("cross-site", None, None)):
        for method in ("GET", "HEAD"):
            response = call(method, *headers)
            assert response.status_code == 403 and response.body == (b"An export is downloaded from the app's own page "
                                                                      b"or by opening its address, not by another "
                                                                      b"site's page."), (method, headers)
    assert downloads() == len(served)  # none of those was recorded
    head = call("HEAD")
    assert head.status_code == 200 and Path(head.path).read_bytes() == data  # answered as the GET would be
    assert call("HEAD", "same-origin", "no-cors", "empty").status_code == 200
    assert downloads() == len(served)  # a HEAD downloads nothing


def test_an_export_of_a_no_op_lora_fails_and_is_not_published(world):
    """Round 2's adapter is a no-op: the browser's build refuses it with one sentence, records no export, writes no
    file and logs the refusal (the CLI's refusal: test_cli_refuses_unknown_ids_with_one_sentence)."""
    from app import ui_export

    engine = make_engine(world.settings.db_url)
    factory = session_factory(engine)
    try:
        admin = signed_in_admin(factory)
        with read_session(factory) as s:
            before = len(repo.list_exports(session=s, experiment_id=world.experiment_id))
        exports = world.settings.data_dir / "exports"
        files_before = sorted(exports.iterdir()) if exports.exists() else []
        with pytest.raises(ValueError, match=r"^Export check \(a\) failed: the LoRA did not load, or does nothing: .* by "
                                             r"0\.000 levels on average \(largest 0\)"):
            ui_export.build(factory, world.settings, admin, world.experiment_id, 2, "kohya")
        with read_session(factory) as s:
            assert len(repo.list_exports(session=s, experiment_id=world.experiment_id)) == before
            audit = [a.detail for a in repo.list_audit(session=s) if a.action == "export.refused"]
        assert audit and audit[0]["round"] == 2 and audit[0]["reason"].startswith("Export check (a) failed")
        assert (sorted(exports.iterdir()) if exports.exists() else []) == files_before
    finally:
        engine.dispose()


@pytest.mark.parametrize("fmt", ["ratings", "kohya"])
def test_an_export_that_cannot_be_recorded_leaves_no_file_behind(world, monkeypatch, fmt):
    """The browser's build wrote the download (a zip; kohya: a directory holding the file) and then failed to record
    it: the file stayed in exports/ with no row, never offered and never cleaned up (found by review). It is removed,
    and the failure is still the caller's."""
    from app import ui_export

    class Gone(RuntimeError):
        pass

    def failing(**kwargs):
        raise Gone("the database went away")

    engine = make_engine(world.settings.db_url)
    factory = session_factory(engine)
    try:
        admin = signed_in_admin(factory)
        exports = world.settings.data_dir / "exports"
        before = set(exports.iterdir()) if exports.exists() else set()
        with read_session(factory) as s:
            rows = len(repo.list_exports(session=s, experiment_id=world.experiment_id))
        monkeypatch.setattr(repo, "add_export", failing)
        with pytest.raises(Gone, match="the database went away"):
            ui_export.build(factory, world.settings, admin, world.experiment_id, None if fmt == "ratings" else 1, fmt)
        assert set(exports.iterdir()) == before
        with read_session(factory) as s:
            assert len(repo.list_exports(session=s, experiment_id=world.experiment_id)) == rows
    finally:
        engine.dispose()


def test_an_adapter_that_is_not_the_recorded_checkpoint_is_not_exported(world, tmp_path):
    """Found in review: the export checked the adapter against its own manifest only, so a complete adapter of another
    experiment restored over round 1 was exported with a card describing round 1's ratings."""
    from db.models import Checkpoint

    engine = make_engine(world.settings.db_url)
    factory = session_factory(engine)
    with write_session(factory) as s:
        round_1 = repo.get_round_by_index(session=s, experiment_id=world.experiment_id, index=1)
        row = repo.add_checkpoint(session=s, round_id=round_1.id, path="adapters/exp1/round_1", manifest_sha256="0" * 64)
        row_id = row.id
    try:
        with pytest.raises(ExportError, match="is not the one round 1 of experiment .* trained"):
            export_round_to(world.settings, world.experiment_id, 1, "diffusers", tmp_path / "x")
        assert not (tmp_path / "x").exists()
    finally:
        with write_session(factory) as s:
            s.delete(s.get(Checkpoint, row_id))
        engine.dispose()


def test_cli_an_out_it_cannot_write_is_one_sentence(world, tmp_path, capsys):
    """Found in review: an OSError (a full disk, no permission, a file where a folder must be) was a traceback."""
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "export"
    assert cli(world, "ratings", "--experiment", str(world.experiment_id), "--out", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"error: Export destination {str(out)!r} cannot be written ({str(tmp_path / 'a-file')!r} is not a "
                   "directory); choose another path."), err


@pytest.mark.parametrize("where", ["under-a-file", "sys"])
def test_cli_a_merged_export_to_a_place_it_cannot_write_is_refused_before_the_base_loads(world, tmp_path, capsys,
                                                                                        monkeypatch, where):
    """A merged export loaded the base pipeline and fused the adapter into it (a minute and 4 GiB at sd15's size)
    before its --out was first written: one under a file, or in a folder that takes no new file (/sys refuses even
    root), was found only then (seventh review). Refused before the base loads now, in one sentence; nothing made."""
    from seiko_core import export as core

    loads = []
    real = core.load_base_pipeline
    monkeypatch.setattr(core, "load_base_pipeline", lambda *a, **k: loads.append(a) or real(*a, **k))
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "merged" if where == "under-a-file" else Path("/sys/seiko-merged")
    assert cli(world, "lora", "--experiment", str(world.experiment_id), "--round", "1", "--format", "merged",
               "--out", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"error: Export destination {str(out)!r} cannot be written ("), err
    assert loads == [] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@contextlib.contextmanager
def _dataset_world(tmp_path: Path, name: str, colors: tuple[str, ...], prompts: str):
    """A fresh data dir and database with an experiment whose round 0 holds one PNG per colour (prompt ``prompts[i]``,
    seed i), opened for rating: yields (settings, write session, experiment, round 0, image ids, image file paths)
    for the caller to add its labels in the same transaction."""
    data = tmp_path / "data"
    settings = Settings.from_env({"data_dir": str(data), "db_url": f"sqlite:///{data / 'seiko.db'}", "model": "m"},
                                 environ={})
    migrate.upgrade(settings.db_url)
    engine = make_engine(settings.db_url)
    try:
        with write_session(session_factory(engine)) as s:
            exp = repo.create_experiment(session=s, name=name, model_spec="m", method="greedy", config={},
                                         budgets=[len(colors)], prompts=list(prompts))
            r0 = repo.create_round(session=s, experiment_id=exp.id)
            ids, paths = [], []
            for i, color in enumerate(colors):
                content = png(color)
                sha = hashlib.sha256(content).hexdigest()
                (data / "images").mkdir(parents=True, exist_ok=True)
                (data / "images" / f"{sha}.png").write_bytes(content)
                ids.append(repo.add_image(session=s, round_id=r0.id, prompt=prompts[i], seed=i,
                                          file_path=f"images/{sha}.png", sha256=sha, embedding=b"\0" * 8,
                                          embedding_dim=2).id)
                paths.append(f"images/{sha}.png")
            repo.open_round(session=s, round_id=r0.id)
            yield settings, s, exp, r0, ids, paths
    finally:
        engine.dispose()


def test_the_ratings_dataset_holds_the_comparison_votes_too(tmp_path):
    """The dataset held 1-10 ratings only: an experiment that learnt from comparisons exported nothing of them, and
    one with comparisons only was refused as having 'no ratings to export' (found by review). Votes go to
    comparisons.jsonl, their images with the rest."""
    from app import export
    from db import comparisons
    from seiko_core.export import read_comparisons

    with _dataset_world(tmp_path, "pairs only", ("red", "blue"), "ab") as (settings, s, exp, r0, ids, paths):
        shas = [Path(p).stem for p in paths]
        ann = repo.create_rater(session=s, name="ann", password_hash="x$h")
        (pair,) = comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=r0.id, kind="preference",
                                           pairs=[(ids[0], ids[1])])
        comparisons.record_vote(session=s, pair_id=pair.id, rater_id=ann.id, choice="b")
        exp_id = exp.id
    result = export.export_ratings_to(settings, exp_id, tmp_path / "r")
    assert read_ratings_dataset(result.path) == []
    (vote,) = read_comparisons(result.path)
    assert (vote["file_name_a"], vote["file_name_b"]) == (f"images/{shas[0]}.png", f"images/{shas[1]}.png")
    assert (vote["choice"], vote["rater"], vote["round"], vote["kind"]) == ("b", "rater-1", 0, "preference")
    assert vote["voted_at"].endswith("+00:00")
    assert sorted(p.name for p in (result.path / "images").iterdir()) == sorted(f"{s}.png" for s in shas)


def test_a_zip_that_fails_leaves_no_export_behind(world, monkeypatch):
    """A zip that failed (a full disk) left the export's directory under its final name, where nothing cleans it up:
    for a merged pipeline, gigabytes on a disk already full (found by review)."""
    import errno

    from app import export

    def full(src, out):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export.core, "zip_directory", full)
    before = set((world.settings.data_dir / "exports").iterdir()) if (world.settings.data_dir / "exports").exists() else set()
    with pytest.raises(OSError, match="No space left"):
        export_ratings(world.settings, world.experiment_id)
    assert set((world.settings.data_dir / "exports").iterdir()) == before


def test_the_ratings_dataset_holds_repeat_ratings_skips_gold_scores_and_pair_skips(tmp_path):
    """The dataset held the ratings and the votes only, though the CLI and the docs promise every rating: the repeat
    ratings (real 1-10 scores, the raters' self-consistency), the image and pair skips and the gold scores were left
    out (found by review). Each is in its own file now, its images named as in metadata.jsonl, its raters by the same
    pseudonyms, counted in the manifest, and nothing private with them."""
    from app import export
    from db import comparisons, quality
    from seiko_core.export import read_comparisons, read_gold, read_repeat_ratings, read_skips

    with _dataset_world(tmp_path, "all of it", ("red", "blue", "green"), "abc") as (settings, s, exp, r0, ids, names):
        admin = repo.create_rater(session=s, name="root@example.com", password_hash="scrypt$ADMINHASH")
        ann = repo.create_rater(session=s, name="ann@example.com", password_hash="scrypt$SECRETHASH")
        bob = repo.create_rater(session=s, name="bob@example.com", password_hash="scrypt$SECRETHASH")
        repo.add_rating(session=s, image_id=ids[0], rater_id=ann.id, score=8)
        quality.add_repeat_rating(session=s, image_id=ids[0], rater_id=ann.id, score=3)
        repo.add_skip(session=s, image_id=ids[1], rater_id=bob.id)
        quality.set_gold_score(session=s, image_id=ids[2], score=9, created_by=admin.id)
        (pair,) = comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=r0.id, kind="preference",
                                           pairs=[(ids[0], ids[2])])
        comparisons.record_skip(session=s, pair_id=pair.id, rater_id=bob.id)
        exp_id = exp.id

    result = export.export_ratings_to(settings, exp_id, tmp_path / "r")
    manifest = verify(result.path)
    assert (manifest["rows"], manifest["comparisons"], manifest["repeat_ratings"], manifest["gold"]) == (1, 0, 1, 1)
    assert manifest["skips"] == {"image": 1, "pair": 1}
    assert (manifest["repeat_ratings_file"], manifest["skips_file"], manifest["gold_file"]) == (
        "repeat_ratings.jsonl", "skips.jsonl", "gold.jsonl")
    (rating,) = read_ratings_dataset(result.path)
    assert (rating["file_name"], rating["rater"], rating["score"]) == (names[0], "rater-1", 8)
    assert read_comparisons(result.path) == []
    (repeat,) = read_repeat_ratings(result.path)
    assert (repeat["file_name"], repeat["rater"], repeat["score"], repeat["round"]) == (names[0], "rater-1", 3, 0)
    assert repeat["rated_at"].endswith("+00:00")
    image_skip, pair_skip = read_skips(result.path)
    assert (image_skip["kind"], image_skip["file_name"], image_skip["rater"], image_skip["prompt"]) == (
        "image", names[1], "rater-2", "b")
    assert (pair_skip["kind"], pair_skip["pair_kind"], pair_skip["rater"], pair_skip["pair_id"]) == (
        "pair", "preference", "rater-2", pair.id)
    assert (pair_skip["file_name_a"], pair_skip["file_name_b"]) == (names[0], names[2])
    assert image_skip["skipped_at"].endswith("+00:00") and pair_skip["skipped_at"].endswith("+00:00")
    (gold,) = read_gold(result.path)
    assert (gold["file_name"], gold["score"], gold["round"]) == (names[2], 9, 0) and "rater" not in gold
    assert sorted(f"images/{p.name}" for p in (result.path / "images").iterdir()) == sorted(names)
    text = "".join(p.read_text() for p in result.path.iterdir() if p.is_file())
    for private in ("example.com", "HASH", "scrypt", "file_path", str(settings.data_dir)):
        assert private not in text, private


def _fake_hub_cache(world: World, hub: Path) -> None:
    """A hub cache holding ``fake/sd``: the world's model_index.json and unet config, and its unet weights in a blob
    named by a sha256 its bytes do not have (a damaged or altered cache file)."""
    import os
    import shutil

    model = Path(world.settings.model)
    repo_dir = hub / "models--fake--sd"
    snapshot = repo_dir / "snapshots" / ("a" * 40)
    (snapshot / "unet").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "blobs").mkdir()
    (repo_dir / "refs" / "main").write_text("a" * 40)
    shutil.copy(model / "model_index.json", snapshot / "model_index.json")
    shutil.copy(model / "unet" / "config.json", snapshot / "unet" / "config.json")
    blob = "0" * 64
    shutil.copy(model / "unet" / "diffusion_pytorch_model.safetensors", repo_dir / "blobs" / blob)
    os.symlink(f"../../../blobs/{blob}", snapshot / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("base", ["damaged hub cache", "missing local directory"])
def test_cli_a_base_model_it_cannot_load_is_one_sentence_about_the_base_model(world, tmp_path, capsys, monkeypatch,
                                                                               base):
    """The export check hashes a hub id's cached weights before it renders; a damaged file raised ModelLoadError (a
    RuntimeError), which the CLI printed as a traceback, and a local base directory that is gone was reported as
    stock diffusers failing to re-load the export (found by review). Both are one sentence about the base model."""
    import shutil

    import huggingface_hub.constants

    if base == "damaged hub cache":
        _fake_hub_cache(world, tmp_path / "hub")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
        spec = "fake/sd"
    else:
        spec = str(tmp_path / "gone-model")
    data = tmp_path / "data"
    settings = Settings.from_env({"data_dir": str(data), "db_url": f"sqlite:///{data / 'seiko.db'}",
                                  "model": world.settings.model}, environ={})
    migrate.upgrade(settings.db_url)
    shutil.copytree(world.settings.data_dir / "adapters" / "exp1" / "round_1", data / "adapters" / "round_1")
    engine = make_engine(settings.db_url)
    with write_session(session_factory(engine)) as s:
        exp = repo.create_experiment(session=s, name="base gone", model_spec=spec, method="ucb",
                                     config={"method": "ucb", "sampling": {"steps": 2, "guidance": 4.0}},
                                     budgets=[2], prompts=["a red circle"])
        repo.create_round(session=s, experiment_id=exp.id)
        repo.create_round(session=s, experiment_id=exp.id, adapter_path="adapters/round_1")
        exp_id = exp.id
    engine.dispose()
    out = tmp_path / "out"
    assert app_main(["export", "lora", "--experiment", str(exp_id), "--round", "1", "--format", "diffusers",
                     "--out", str(out), "--data-dir", str(data), "--db-url", settings.db_url,
                     "--model", settings.model]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: The export check could not load the base model {spec!r} ("), err
    assert err.endswith("the export itself was not checked, and it was not published."), err
    assert ("does not hash to the sha256" if base == "damaged hub cache" else "does not exist") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"data", *(["hub"] if spec == "fake/sd" else [])})


def test_cli_any_model_load_error_is_one_sentence(world, tmp_path, capsys, monkeypatch):
    """A ModelLoadError is a RuntimeError, not an ExportError: wherever in the export it comes from, the CLI says it in
    one sentence instead of a traceback (found by review)."""
    from app import export
    from seiko_core.models import ModelLoadError

    def unloadable(*args, **kwargs):
        raise ModelLoadError("Model path '/nowhere' does not exist.")

    monkeypatch.setattr(export, "export_round_to", unloadable)
    assert cli(world, "lora", "--experiment", str(world.experiment_id), "--round", "1", "--format", "diffusers",
               "--out", str(tmp_path / "x")) == 1
    assert capsys.readouterr().err == "error: Model path '/nowhere' does not exist.\n"


def _audit_rows(world: World) -> list[tuple[str, str, str | None, dict | None]]:
    engine = make_engine(world.settings.db_url)
    try:
        with read_session(session_factory(engine)) as s:
            return [(a.actor_name, a.action, a.target, a.detail)
                    for a in reversed(repo.list_audit(session=s, limit=10_000))]
    finally:
        engine.dispose()


def test_cli_exports_are_in_the_audit_log_as_the_admin_pages_are(world, tmp_path):
    """The admin page records who built an export (and a refused one); `python -m app export` recorded nothing, so a
    model or the ratings could leave without a trace (found by review). It records them as "command line (USER)"."""
    e = world.experiment_id
    before = len(_audit_rows(world))  # the world is shared by this module's tests
    assert cli(world, "ratings", "--experiment", str(e), "--out", str(tmp_path / "r")) == 0
    assert cli(world, "lora", "--experiment", str(e), "--round", "2", "--format", "diffusers",
               "--out", str(tmp_path / "noop")) == 1  # round 2's adapter does nothing: refused by the check
    assert cli(world, "lora", "--experiment", str(e), "--round", "1", "--format", "kohya", "--out", str(tmp_path / "k")) == 0
    rows = _audit_rows(world)[before:]
    assert [(action, target) for _, action, target, _ in rows] == [
        ("export.build", f"experiment {e}"), ("export.refused", f"experiment {e}"), ("export.build", f"experiment {e}")]
    assert all(actor.startswith("command line (") for actor, _, _, _ in rows)
    ratings, refused, kohya = (detail for _, _, _, detail in rows)
    manifest = tmp_path / "r" / "manifest.json"
    assert ratings == {"format": "ratings", "round": None, "path": str(tmp_path / "r"),
                       "sha256": hashlib.sha256(manifest.read_bytes()).hexdigest()}
    assert (refused["format"], refused["round"]) == ("diffusers", 2) and "was not published" in refused["reason"]
    assert (kohya["format"], kohya["round"]) == ("kohya", 1) and kohya["path"].startswith(str(tmp_path / "k"))


def test_cli_an_audit_log_it_cannot_write_hides_neither_the_export_nor_the_refusal(world, tmp_path, capsys, monkeypatch):
    """The database may refuse the audit entry ("database is locked": an OperationalError, not a DbError): a written
    export is still named, and a refused one still says why, in one sentence each (found by review)."""
    from sqlalchemy.exc import OperationalError

    from app import auth

    def locked(*args, **kwargs):
        raise OperationalError("INSERT INTO audit_log", {}, Exception("database is locked"))

    monkeypatch.setattr(auth, "record", locked)
    e = str(world.experiment_id)
    assert cli(world, "ratings", "--experiment", e, "--out", str(tmp_path / "r")) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: wrote the export to {tmp_path / 'r'}, but could not record it in the audit log: ")
    assert "database is locked" in err and len(err.strip().splitlines()) == 1 and (tmp_path / "r" / "manifest.json").is_file()
    assert cli(world, "lora", "--experiment", e, "--round", "2", "--format", "diffusers", "--out", str(tmp_path / "x")) == 1
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("warning: the refused export could not be recorded in the audit log: ")
    assert error.startswith("error: Export check (a) failed") and not (tmp_path / "x").exists()


def test_the_ratings_dataset_holds_the_pairs_shown_to_each_rater_and_whether_they_answered(tmp_path):
    """The pairs put on a rater's screen (table pair_shows, migration 0011) were not exported: a data set could not
    tell which pairs each rater was shown, nor which they left unanswered (found by review). They are in
    pair_shows.jsonl now, in the manifest, under the same pseudonyms as the other files. Checked against the
    database's own rows, read with plain SQL."""
    from datetime import UTC, datetime

    from sqlalchemy import text

    from app import export
    from db import comparisons
    from seiko_core.checkpoint import CheckpointError
    from seiko_core.export import read_comparisons, read_pair_shows, read_skips

    colors = ("red", "blue", "green", "white")
    with _dataset_world(tmp_path, "shown", colors, "abcd") as (settings, s, exp, r0, ids, names):
        ann = repo.create_rater(session=s, name="ann@example.com", password_hash="scrypt$SECRETHASH")
        bob = repo.create_rater(session=s, name="bob@example.com", password_hash="scrypt$SECRETHASH")
        cat = repo.create_rater(session=s, name="cat@example.com", password_hash="scrypt$SECRETHASH")
        comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=r0.id, kind="preference",
                                 pairs=[(ids[0], ids[1]), (ids[2], ids[3])])
        # a blind A/B pair: round 1's image of a cell against round 0's
        content = png("black")
        sha = hashlib.sha256(content).hexdigest()
        (settings.data_dir / "images" / f"{sha}.png").write_bytes(content)
        r1 = repo.create_round(session=s, experiment_id=exp.id, index=1, adapter_path="adapters/x/round_1")
        new = repo.add_image(session=s, round_id=r1.id, prompt="a", seed=0, file_path=f"images/{sha}.png", sha256=sha,
                             embedding=b"\0" * 8, embedding_dim=2, kind="eval").id
        (ab,) = comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=r1.id, kind="ab",
                                         pairs=[(new, ids[0])])
        served = {}
        for who in (ann, bob, cat):
            served[who.name] = comparisons.serve_pair(session=s, experiment_id=exp.id, rater_id=who.id,
                                                      kind="preference").id
        comparisons.record_vote(session=s, pair_id=served[ann.name], rater_id=ann.id, choice="a")
        comparisons.record_skip(session=s, pair_id=served[bob.name], rater_id=bob.id)  # cat's is left unanswered
        assert comparisons.serve_pair(session=s, experiment_id=exp.id, rater_id=cat.id, kind="ab").id == ab.id
        exp_id, accounts = exp.id, {ann.id: ann.name, bob.id: bob.name, cat.id: cat.name}

    # the database's own rows, read with plain SQL: (pair, rater's account, pair kind, left and right sha256,
    # shown at, answered by a vote / a skip / not)
    engine = make_engine(settings.db_url)
    try:
        with engine.connect() as c:
            db_rows = c.execute(text(
                "SELECT ps.pair_id, ps.rater_id, cp.kind, a.sha256, b.sha256, ps.created_at,"
                " EXISTS (SELECT 1 FROM comparison_votes v WHERE v.pair_id = ps.pair_id AND v.rater_id = ps.rater_id),"
                " EXISTS (SELECT 1 FROM pair_skips k WHERE k.pair_id = ps.pair_id AND k.rater_id = ps.rater_id)"
                " FROM pair_shows ps JOIN comparison_pairs cp ON cp.id = ps.pair_id"
                " JOIN images a ON a.id = cp.image_a_id JOIN images b ON b.id = cp.image_b_id")).all()
    finally:
        engine.dispose()
    assert len(db_rows) == 4

    def shown_at(value) -> datetime:
        value = value if isinstance(value, datetime) else datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    expected = sorted((pair, accounts[rater], kind, f"images/{a}.png", f"images/{b}.png", shown_at(at),
                       "vote" if voted else "skip" if skipped else None)
                      for pair, rater, kind, a, b, at, voted, skipped in db_rows)

    def exported(rows, rename=lambda name: name):
        return sorted((r["pair_id"], rename(r["rater"]), r["kind"], r["file_name_a"], r["file_name_b"],
                       datetime.fromisoformat(r["shown_at"]), r["answered"]) for r in rows)

    named = export.export_ratings_to(settings, exp_id, tmp_path / "named", rater_names=True)
    assert exported(read_pair_shows(named.path)) == expected
    # by hand: ann voted on hers, bob skipped his, cat left hers and the A/B pair unanswered
    assert sorted((row[1], row[2], row[6]) for row in expected) == [
        ("ann@example.com", "preference", "vote"), ("bob@example.com", "preference", "skip"),
        ("cat@example.com", "ab", None), ("cat@example.com", "preference", None)]

    result = export.export_ratings_to(settings, exp_id, tmp_path / "r")
    shows = read_pair_shows(result.path)
    pseudonyms = {"rater-1": "ann@example.com", "rater-2": "bob@example.com", "rater-3": "cat@example.com"}
    assert exported(shows, pseudonyms.__getitem__) == expected
    # the same rater under the same name as in the other files
    (vote,) = read_comparisons(result.path)
    (skip,) = read_skips(result.path)
    assert (vote["rater"], vote["pair_id"]) == ("rater-1", served["ann@example.com"])
    assert (skip["rater"], skip["pair_id"]) == ("rater-2", served["bob@example.com"])
    ab_row = next(r for r in shows if r["kind"] == "ab")
    assert (ab_row["round"], ab_row["image_id_a"], ab_row["image_id_b"], ab_row["prompt_a"], ab_row["seed_b"]) == (
        1, new, ids[0], "a", 0)
    assert all(r["shown_at"].endswith("+00:00") for r in shows)
    # the manifest counts the file and covers it: an edited row is refused on reading
    manifest = verify(result.path)
    assert (manifest["pair_shows"], manifest["pair_shows_file"]) == (4, "pair_shows.jsonl")
    assert "pair_shows.jsonl" in manifest["files"]
    text_all = "".join(p.read_text() for p in result.path.iterdir() if p.is_file())
    for private in ("example.com", "HASH", "scrypt", "file_path", str(settings.data_dir)):
        assert private not in text_all, private
    path = result.path / "pair_shows.jsonl"
    path.chmod(0o644)
    path.write_text(path.read_text().replace('"answered": null', '"answered": "vote"'))
    with pytest.raises(CheckpointError, match="does not match its manifest"):
        read_pair_shows(result.path)


def test_pairs_shown_and_never_answered_are_a_dataset_of_their_own(tmp_path):
    """An experiment whose pairs were shown and not yet answered was refused as having nothing to export."""
    from app import export
    from db import comparisons
    from seiko_core.export import read_comparisons, read_pair_shows

    with _dataset_world(tmp_path, "shown only", ("red", "blue"), "ab") as (settings, s, exp, r0, ids, names):
        ann = repo.create_rater(session=s, name="ann", password_hash="x$h")
        (pair,) = comparisons.create_pairs(session=s, experiment_id=exp.id, round_id=r0.id, kind="preference",
                                           pairs=[(ids[1], ids[0])])
        comparisons.serve_pair(session=s, experiment_id=exp.id, rater_id=ann.id, kind="preference")
        exp_id = exp.id
    result = export.export_ratings_to(settings, exp_id, tmp_path / "r")
    assert read_ratings_dataset(result.path) == [] and read_comparisons(result.path) == []
    (show,) = read_pair_shows(result.path)
    assert (show["pair_id"], show["rater"], show["answered"], show["file_name_a"], show["file_name_b"]) == (
        pair.id, "rater-1", None, names[1], names[0])
    assert sorted(f"images/{p.name}" for p in (result.path / "images").iterdir()) == sorted(names)


def test_a_kohya_export_of_an_experiment_named_in_four_byte_letters_is_written(world, tmp_path, capsys):
    """The kohya file is named after the experiment, cut at 60 characters: 60 mathematical bold letters (4 bytes each
    in UTF-8) made a name over the 255 bytes a file system takes, and the export was refused as 'File name too long;
    choose another path' (found by review, ninth). Stock diffusers reads the file written."""
    from diffusers import StableDiffusionPipeline

    name = "\U0001d412\U0001d404\U0001d408\U0001d40a\U0001d40e" * 14  # 'SEIKO' in bold letters: 70 characters
    engine = make_engine(world.settings.db_url)
    with write_session(session_factory(engine)) as s:
        exp = repo.create_experiment(session=s, name=name, model_spec=world.settings.model, method="ucb",
                                     config={"method": "ucb", "sampling": {"steps": 8, "guidance": 4.0}},
                                     budgets=[2], prompts=["a red circle"])
        repo.create_round(session=s, experiment_id=exp.id)
        repo.create_round(session=s, experiment_id=exp.id, adapter_path="adapters/exp1/round_1")
        exp_id = exp.id
    engine.dispose()
    out = tmp_path / "k"
    assert cli(world, "lora", "--experiment", str(exp_id), "--round", "1", "--format", "kohya", "--out", str(out)) == 0, \
        capsys.readouterr().err
    (file,) = out.glob("*.safetensors")
    limit = 255 - len(".tmp-") - len("-12345678")  # the atomic write's temporary name must fit too
    assert file.name.startswith("seiko_\U0001d412") and len(file.name.encode()) <= limit
    pipe = StableDiffusionPipeline.from_pretrained(world.settings.model, local_files_only=True)
    pipe.load_lora_weights(str(out), weight_name=file.name)
    assert pipe.unet.peft_config  # the LoRA loaded


def test_cli_an_audit_log_held_by_a_lock_is_said_in_the_pages_sentence(db_url, tmp_path, capsys, monkeypatch):
    """The audit entry behind another transaction's lock (SQLite's write lock; PostgreSQL's lock on audit_log) waits
    out the bound and is not written. `python -m app export` worded that itself, as the driver's "database is locked" or
    "canceling statement due to lock timeout"; it says the sentence the web page and the other commands say
    (db.engine.bound_refusal, twelfth review). The export it wrote stands and is named."""
    from sqlalchemy import text

    from db import engine as db_engine

    monkeypatch.setattr(db_engine, "BUSY_TIMEOUT_MS", 300)
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    engine = make_engine(db_url)
    factory = session_factory(engine)
    content = png("red")
    sha = hashlib.sha256(content).hexdigest()
    (data / "images" / f"{sha}.png").write_bytes(content)
    with write_session(factory) as s:
        exp = repo.create_experiment(session=s, name="held", model_spec="m", method="greedy", config={}, budgets=[1],
                                     prompts=["a"])
        r0 = repo.create_round(session=s, experiment_id=exp.id)
        image = repo.add_image(session=s, round_id=r0.id, prompt="a", seed=0, file_path=f"images/{sha}.png",
                               sha256=sha, embedding=b"\0" * 8, embedding_dim=2)
        repo.open_round(session=s, round_id=r0.id)
        ann = repo.create_rater(session=s, name="ann", password_hash="x$h")
        repo.add_rating(session=s, image_id=image.id, rater_id=ann.id, score=7)
        e = str(exp.id)
    held = factory()
    try:
        held.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE" if held.get_bind().dialect.name == "postgresql"
                          else "SELECT 1"))  # SQLite: its write lock (BEGIN IMMEDIATE)
        status = app_main(["export", "ratings", "--experiment", e, "--out", str(tmp_path / "r"), "--data-dir",
                           str(data), "--db-url", db_url, "--model", "m"])
    finally:
        held.rollback()
        held.close()
        engine.dispose()
    err = capsys.readouterr().err
    assert status == 1 and (tmp_path / "r" / "manifest.json").is_file()
    assert err == (f"error: wrote the export to {tmp_path / 'r'}, but could not record it in the audit log: the "
                   "database is busy: another transaction held a lock this needed for more than 0.3 s, so the change "
                   "that waited for it was not saved; try again in a moment\n")


def test_a_lora_export_loads_the_base_model_once_for_its_checks(world, tmp_path, monkeypatch):
    """A diffusers or kohya export checks the adapter on the base (``check_on_base``) and draws the app's image of the
    stock check (``render_app``): each loaded the base's UNet in this process, one load's time more (fifteenth
    review). The base is loaded here once per export now (stock diffusers' own load is in the check's fresh process,
    as before), counted at the app's loader, which every load of a model goes through."""
    import warnings

    from seiko_core import models

    real, loads = models._load_pretrained, []

    def counted(loader, name, local, what, **kwargs):
        owner = getattr(getattr(loader, "__self__", None), "__name__", "")
        if owner in ("UNet2DConditionModel", "StableDiffusionPipeline"):
            loads.append(owner)
        return real(loader, name, local, what, **kwargs)

    monkeypatch.setattr(models, "_load_pretrained", counted)
    e = str(world.experiment_id)
    for fmt in ("diffusers", "kohya"):
        loads.clear()
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            assert cli(world, "lora", "--experiment", e, "--round", "1", "--format", fmt, "--out", str(tmp_path / fmt)) == 0
        assert loads == ["StableDiffusionPipeline"], (fmt, loads)
        assert not [w for w in said if "multiple adapters" in str(w.message)]  # the check's adapter is the one drawn
        assert model_card_passed(tmp_path / fmt)


def model_card_passed(directory: Path) -> bool:
    from seiko_core import model_card

    return model_card.read(directory)["verification"]["passed"] is True


def test_a_lora_export_lets_go_of_its_check_model_before_the_stock_check_runs(world, tmp_path, monkeypatch):
    """The base model a LoRA export loads for its checks (a whole pipeline: about 5.5 GB in fp32 at SD 1.5) was held
    from the check on the base through the write and the whole stock check in its fresh process, where the old check's
    UNet was let go of once the check on the base returned (a read-only review of the fifteenth review's fix). The
    app's image is drawn first and the model let go of: no reference to it is left when the stock check starts, and
    with a reference cycle in the model (a later review: dropping the reference left it to the next full collection,
    which may come after the stock check's fresh process has loaded the base once more) it is collected then too."""
    import gc
    import weakref

    import app.export as app_export
    from seiko_core import export_verify

    real_load, real_stock = app_export.load_check_model, export_verify.render_stock
    loaded: list = []
    alive_at_stock: list = []

    def load(check):
        parts = real_load(check)
        loaded.append((weakref.ref(parts.pipeline), weakref.ref(parts.unet)))
        # a forward hook that refers back to the model (as an offloading hook does) makes a reference cycle, which
        # dropping the last reference does not free: only a collection does
        parts.unet.register_forward_hook(lambda module, args, output, held=parts: None)
        return parts

    def stock(*args, **kwargs):
        alive_at_stock.append([ref() is not None for pair in loaded for ref in pair])
        return real_stock(*args, **kwargs)

    monkeypatch.setattr(app_export, "load_check_model", load)
    monkeypatch.setattr(export_verify, "render_stock", stock)
    e = str(world.experiment_id)
    # with the collector off, so that the pipeline's reference cycles are freed only if the export collects them
    # itself, not whenever an automatic collection happens to run before the stock check
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for fmt in ("diffusers", "kohya"):
            loaded.clear()
            alive_at_stock.clear()
            out = str(tmp_path / fmt)
            assert cli(world, "lora", "--experiment", e, "--round", "1", "--format", fmt, "--out", out) == 0
            assert len(loaded) == 1 and alive_at_stock == [[False, False]], (fmt, alive_at_stock)
    finally:
        if was_enabled:
            gc.enable()
    for fmt in ("diffusers", "kohya"):
        assert model_card_passed(tmp_path / fmt)
