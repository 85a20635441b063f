"""Exports chosen by ids: the adapter of a round, or an experiment's ratings.

The source is always resolved from the database (``Round.adapter_path``, ``Image.file_path``, both relative
to the data dir and checked to stay inside it); a client never supplies a source path. The CLI writes
to a directory it names; the UI functions write under ``<data_dir>/exports/`` with a generated name and
return one file a browser can download.

Every model export is checked before it is published (``seiko_core.export_verify``): stock diffusers re-loads it
in a fresh process and renders the experiment's first held-out prompt at a fixed seed; the export is refused,
with one sentence, if that image equals the base model's (check a) or differs from the app's own image for the
same seed (check b). It carries a model card (``MODEL_CARD.md``, ``model_card.json``; for the bare kohya file, also
in its safetensors header) with the verification result.
"""

from __future__ import annotations

import gc
import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select

from app import export_card
from app.services import experiment_config
from app.settings import Settings
from db import repo
from db.engine import make_engine, read_session, read_snapshot, session_factory
from db.models import Image, Rater, Rating, Round
from seiko_core import export as core
from seiko_core import model_card
from seiko_core.checkpoint import MANIFEST, sha256_file, verify
from seiko_core.export import FORMATS, WEIGHT_NAME, ExportError, ExportResult
from seiko_core.export_verify import CheckSettings, load_check_model, render_app, verify_export

log = logging.getLogger("seiko.export")
EXPORTS_DIR = "exports"
EXPORT_CHECK_DEVICE = "cpu"  # the check's two renderers run on one device so that they agree to float rounding


@dataclass(frozen=True)
class RoundSource:
    experiment_id: int
    experiment_name: str
    round_index: int
    adapter_dir: Path
    base_model: str
    check: CheckSettings  # what the export check renders: the experiment's sampler settings, one prompt and seed
    manifest_sha256: str | None = None  # of the newest checkpoint the database records for the round


def _inside_data_dir(settings: Settings, relative: str, what: str) -> Path:
    root = settings.data_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ExportError(f"The {what} path {relative!r} recorded in the database points outside the data dir.")
    return path


def _factory(settings: Settings):
    engine = make_engine(settings.db_url)
    return engine, session_factory(engine)


def resolve_round(settings: Settings, experiment_id: int, round_index: int) -> RoundSource:
    """The adapter directory of round ``round_index`` of experiment ``experiment_id``, from the database."""
    engine, factory = _factory(settings)
    try:
        with read_session(factory) as s:
            exp = repo.get_experiment(session=s, experiment_id=experiment_id)  # NotFound: one sentence
            round_ = repo.get_round_by_index(session=s, experiment_id=experiment_id, index=round_index)
            name, base, rel = exp.name, exp.model_spec, round_.adapter_path
            checkpoints = repo.list_checkpoints(session=s, round_id=round_.id)
            recorded = checkpoints[-1].manifest_sha256 if checkpoints else None
            cfg = experiment_config(exp)
            prompt = next(iter([*cfg.eval_prompts, *cfg.prompts, *(exp.prompts or [])]), None)
    finally:
        engine.dispose()
    if rel is None:
        raise ExportError(f"Round {round_index} of experiment {experiment_id} has no adapter (round 0 samples from the "
                          "base model); export a later round.")
    adapter_dir = _inside_data_dir(settings, rel, "adapter")
    if not adapter_dir.is_dir():
        raise ExportError(f"The adapter of round {round_index} of experiment {experiment_id} is missing from {str(adapter_dir)!r}.")
    check = CheckSettings.for_config(base, cfg, prompt=prompt, device=EXPORT_CHECK_DEVICE)
    return RoundSource(experiment_id, name, round_index, adapter_dir, base, check, recorded)


def export_round_to(settings: Settings, experiment_id: int, round_index: int, fmt: str, out_dir: str | Path) -> ExportResult:
    """Export round ``round_index``'s adapter as ``fmt`` into the new directory ``out_dir``."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {list(FORMATS)}")
    src = resolve_round(settings, experiment_id, round_index)
    facts = export_card.facts(settings, experiment_id, round_index)
    verify(src.adapter_dir)  # an adapter without its manifest, or whose files changed: CheckpointError, one sentence
    facts["source_adapter_manifest_sha256"] = sha256_file(src.adapter_dir / MANIFEST)
    if src.manifest_sha256 is not None and facts["source_adapter_manifest_sha256"] != src.manifest_sha256:
        # a complete adapter, but not the one this round trained (a backup of another experiment restored over it):
        # its card would describe this round's ratings
        raise ExportError(f"The adapter in {str(src.adapter_dir)!r} is not the one round {round_index} of experiment "
                          f"{experiment_id} trained (its manifest differs from the checkpoint the database records).")
    stem = _stem(src)
    base = _CheckModel(src.check)
    if fmt == "diffusers":
        return core.export_diffusers_lora(src.adapter_dir, out_dir, base_model=src.base_model, base_unet=base.unet,
                                          finalize=_finalize(src, facts, fmt, "lora", [WEIGHT_NAME], base=base))
    if fmt == "kohya":
        file = f"{stem}.safetensors"
        return core.export_kohya_lora_dir(src.adapter_dir, out_dir, name=stem, base_model=src.base_model,
                                          base_unet=base.unet,
                                          finalize=_finalize(src, facts, fmt, "lora", [file], weight_name=file, base=base))
    return core.export_merged_pipeline(src.base_model, src.adapter_dir, out_dir,
                                       finalize=_finalize(src, facts, fmt, "merged", []))


class _CheckModel:
    """The base model of a LoRA export's checks, loaded once, when first asked for: the check on the base
    (``core.check_on_base``) loads the adapter onto its UNet, then the app's image of the stock check
    (``export_verify.render_app``) is drawn with it and that adapter, and ``parts`` let go of before the stock check
    starts. Each loaded the base on its own, the time of one load more (fifteenth review)."""

    def __init__(self, check: CheckSettings) -> None:
        self.check = check
        self.parts = None

    def unet(self):
        if self.parts is None:
            self.parts = load_check_model(self.check)
        return self.parts.unet


def _finalize(src: RoundSource, facts: dict, fmt: str, kind: str, files: list[str], *,
              weight_name: str | None = None, base: _CheckModel | None = None) -> core.Finalize:
    """The step run in the export's temporary directory before it is published: check it with stock diffusers in a
    fresh process (VerificationError, one sentence, if it fails: nothing is published), then write the model card.
    A kohya file also gets the card in its safetensors header (its tensor bytes unchanged), as it is downloaded alone.
    ``base``: the base model the export loaded already, which the app's image is drawn with."""

    def finalize(tmp: Path) -> dict:
        app_image = None
        if base is not None and base.parts is not None:  # None: the check on the base loaded its own UNet
            # the app's image first, then the model is let go of: a whole pipeline (5.5 GB in fp32 at SD 1.5) was held
            # through the stock check's fresh process, which loads the base once more (a read-only review of the
            # fifteenth review's fix); collected at once, as a reference cycle in it (a hook that refers back to the
            # model) would otherwise keep it until the next full collection, perhaps after the check has loaded the
            # base once more (a later read-only review)
            app_image = render_app(src.check, src.adapter_dir, base.parts, core.CHECK_ADAPTER)
            base.parts = None
            gc.collect()
        result = verify_export(kind, tmp, src.adapter_dir, src.check, weight_name=weight_name, app_image=app_image)
        card = {**facts, "format": fmt, "files": files or sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*.safetensors")),
                "verification": result.to_dict()}
        model_card.write(tmp, card)
        if weight_name is not None:
            model_card.stamp_safetensors(tmp / weight_name, {model_card.HEADER_KEY: model_card.to_json(card)})
        return card

    return finalize


STEM_NAME_BYTES = 60  # of the experiment's name in a kohya file's name, in UTF-8


def _stem(src: RoundSource) -> str:
    """``seiko_<name>_round<k>``, the name's letters and digits kept (anything else as ``_``) up to STEM_NAME_BYTES
    bytes of UTF-8. It was cut at 60 characters: a name of 60 letters of 4 bytes each (mathematical bold letters,
    CJK extension B) made a file name of 265 bytes, over the 255 a file system allows, and every kohya export of
    that experiment was refused as 'File name too long; choose another path', which no path could change (found by
    review, ninth)."""
    safe, size = [], 0
    for c in src.experiment_name:
        c = c if c.isalnum() or c in "-_" else "_"
        size += len(c.encode("utf-8"))
        if size > STEM_NAME_BYTES:
            break
        safe.append(c)
    return f"seiko_{''.join(safe)}_round{src.round_index}"


def _generated(settings: Settings, label: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return settings.data_dir / EXPORTS_DIR / f"{label}-{stamp}-{uuid.uuid4().hex[:6]}"


def export_round(settings: Settings, experiment_id: int, round_index: int, fmt: str) -> Path:
    """For the UI: export under ``<data_dir>/exports/`` and return one downloadable file.

    kohya: the ``.safetensors`` file itself (its directory also holds a README and a manifest);
    diffusers and merged: a ``.zip`` of the export directory.
    """
    out = _generated(settings, f"exp{experiment_id}-round{round_index}-{fmt}")
    result = export_round_to(settings, experiment_id, round_index, fmt, out)
    if fmt == "kohya":
        (file,) = result.path.glob("*.safetensors")
        return file
    return _zipped(result.path)


def _zipped(directory: Path) -> Path:
    """The verified export ``directory`` as one ``.zip`` beside it (the browser's download), the directory then
    removed: a merged pipeline kept twice would take twice the disk."""
    try:
        out = core.zip_directory(directory, directory.with_suffix(".zip"))
    except BaseException:  # a full disk: nothing refers to the directory, and nothing else would remove it (review)
        try:
            shutil.rmtree(directory)
        except OSError:
            log.exception("could not remove the export %s after its zip failed", directory)
        raise
    shutil.rmtree(directory)
    return out


@dataclass(frozen=True)
class DatasetRows:
    """What a ratings dataset holds, as plain dicts for ``core.export_ratings_dataset``, all read from one snapshot."""

    ratings: list[dict[str, Any]]
    votes: list[dict[str, Any]]
    repeat_ratings: list[dict[str, Any]]
    skips: list[dict[str, Any]]  # image skips (kind 'image') and comparison pair skips (kind 'pair')
    gold: list[dict[str, Any]]
    pair_shows: list[dict[str, Any]]  # comparison pairs put on a rater's screen (``db.comparisons.serve_pair``)

    def empty(self) -> bool:
        return not (self.ratings or self.votes or self.repeat_ratings or self.skips or self.gold or self.pair_shows)


def _image_fields(image: Image, index: int) -> dict[str, Any]:
    return {"image_id": image.id, "file_path": image.file_path, "image_sha256": image.sha256, "kind": image.kind,
            "prompt": image.prompt, "seed": image.seed, "round": index}


def dataset_rows(settings: Settings, experiment_id: int, *, rater_names: bool = False) -> DatasetRows:
    """The experiment's ratings (oldest first), comparison votes (oldest pair first), repeat ratings, image and pair
    skips, gold scores, and the comparison pairs shown to raters (each with whether it was answered: by a vote, a
    skip, or not yet), read in one transaction. Raters are named ``rater-1``, ``rater-2``, ... (in the order of
    their accounts), the same rater the same name in every file; ``rater_names`` gives their account names instead. A
    data set is made to be shared, and the account names, the names people sign in with, went into it (found by
    review). A gold score does not name the admin who set it.

    The export held the ratings and the votes only, though it promises every rating: the repeat ratings (the raters'
    self-consistency), the skips and the gold scores were left out (found by review). So were the pairs shown
    (``pair_shows``): which pairs each rater saw, and which they left unanswered (found by review, 5 Dec 2026)."""
    from sqlalchemy.orm import aliased

    from db.models import ComparisonPair, ComparisonVote, GoldScore, PairShow, PairSkip, RepeatRating, Skip

    engine, factory = _factory(settings)
    try:
        with read_snapshot(factory) as s:  # every file from one snapshot
            repo.get_experiment(session=s, experiment_id=experiment_id)

            def image_rows(table):  # (row, its image, its round's index) of a table keyed by image_id, oldest first
                return s.execute(select(table, Image, Round.index)
                                 .join(Image, Image.id == table.image_id)
                                 .join(Round, Round.id == Image.round_id)
                                 .where(Round.experiment_id == experiment_id)
                                 .order_by(table.id))

            ratings = [
                {"rating_id": rating.id, **_image_fields(image, index), "rater": rating.rater_id,
                 "score": rating.score, "rated_at": rating.updated_at}
                for rating, image, index in image_rows(Rating)
            ]
            repeats = [
                {"repeat_id": repeat.id, **_image_fields(image, index), "rater": repeat.rater_id,
                 "score": repeat.score, "rated_at": repeat.created_at}
                for repeat, image, index in image_rows(RepeatRating)
            ]
            image_skips = [
                {**_image_fields(image, index), "kind": "image", "image_kind": image.kind, "rater": skip.rater_id,
                 "skipped_at": skip.created_at}
                for skip, image, index in image_rows(Skip)
            ]
            gold = [
                {**_image_fields(image, index), "score": row.score, "set_at": row.created_at}
                for row, image, index in image_rows(GoldScore)
            ]
            left, right = aliased(Image), aliased(Image)
            pair_cols = (ComparisonPair, left, right, Round.index)

            def pair_stmt(table):
                return (
                    select(table, *pair_cols)
                    .join(ComparisonPair, ComparisonPair.id == table.pair_id)
                    .join(left, left.id == ComparisonPair.image_a_id)
                    .join(right, right.id == ComparisonPair.image_b_id)
                    .join(Round, Round.id == ComparisonPair.round_id)
                    .where(ComparisonPair.experiment_id == experiment_id)
                    .order_by(ComparisonPair.id, table.id)
                )

            def pair_fields(pair, a: Image, b: Image, index: int) -> dict[str, Any]:
                return {"pair_id": pair.id, "round": index, "file_path_a": a.file_path, "image_sha256_a": a.sha256,
                        "image_id_a": a.id, "prompt_a": a.prompt, "seed_a": a.seed, "file_path_b": b.file_path,
                        "image_sha256_b": b.sha256, "image_id_b": b.id, "prompt_b": b.prompt, "seed_b": b.seed}

            votes = [
                {**pair_fields(pair, a, b, index), "kind": pair.kind, "rater": vote.rater_id, "choice": vote.choice,
                 "voted_at": vote.updated_at}
                for vote, pair, a, b, index in s.execute(pair_stmt(ComparisonVote))
            ]
            pair_skips = [
                {**pair_fields(pair, a, b, index), "kind": "pair", "pair_kind": pair.kind, "rater": skip.rater_id,
                 "skipped_at": skip.created_at}
                for skip, pair, a, b, index in s.execute(pair_stmt(PairSkip))
            ]
            voted = select(ComparisonVote.id).where(ComparisonVote.pair_id == PairShow.pair_id,
                                                    ComparisonVote.rater_id == PairShow.rater_id).exists()
            skipped = select(PairSkip.id).where(PairSkip.pair_id == PairShow.pair_id,
                                                PairSkip.rater_id == PairShow.rater_id).exists()
            shows = [
                {**pair_fields(pair, a, b, index), "kind": pair.kind, "rater": show.rater_id,
                 "shown_at": show.created_at, "answered": "vote" if was_voted else "skip" if was_skipped else None}
                for show, pair, a, b, index, was_voted, was_skipped
                in s.execute(pair_stmt(PairShow).add_columns(voted, skipped))
            ]
            skips = [*image_skips, *pair_skips]
            named = (*ratings, *votes, *repeats, *skips, *shows)
            ids = sorted({row["rater"] for row in named})
            if rater_names:
                names = dict(s.execute(select(Rater.id, Rater.name).where(Rater.id.in_(ids))).all()) if ids else {}
            else:
                names = {rater_id: f"rater-{k}" for k, rater_id in enumerate(ids, start=1)}
            for row in named:
                row["rater"] = names[row["rater"]]
            return DatasetRows(ratings, votes, repeats, skips, gold, shows)
    finally:
        engine.dispose()


def export_ratings_to(settings: Settings, experiment_id: int, out_dir: str | Path, *,
                      rater_names: bool = False) -> ExportResult:
    """Export every rating, comparison vote, repeat rating, skip, gold score and pair shown of the experiment, with the
    images they name, into the new directory ``out_dir``; raters as ``rater-N`` unless ``rater_names``
    (``dataset_rows``)."""
    rows = dataset_rows(settings, experiment_id, rater_names=rater_names)
    if rows.empty():
        raise ExportError(f"Experiment {experiment_id} has no ratings, comparisons, skips, gold scores or pairs shown "
                          "to export yet.")

    def read_image(file_path: str) -> bytes:
        path = _inside_data_dir(settings, file_path, "image")
        if not path.is_file():
            raise ExportError(f"Image file {str(path)!r} recorded in the database is missing.")
        return path.read_bytes()

    return core.export_ratings_dataset(rows.ratings, out_dir, read_image, rows.votes, repeat_ratings=rows.repeat_ratings,
                                       skips=rows.skips, gold=rows.gold, pair_shows=rows.pair_shows)


def export_ratings(settings: Settings, experiment_id: int) -> Path:
    """For the UI: export the ratings under ``<data_dir>/exports/`` and return the path of a ``.zip`` of them."""
    result = export_ratings_to(settings, experiment_id, _generated(settings, f"exp{experiment_id}-ratings"))
    return _zipped(result.path)
