"""Atomic checkpoint directories: written in a temporary sibling, fsynced, renamed, with a sha256 manifest.
(Single files: ``seiko_core.atomic``, whose temporary names and fsync this module shares.)

A reader never sees a partial directory under its final name, and ``verify`` proves the files are the
ones written (in a model's directory, that there are no others: ``LOADED_WHOLE``). The manifest is JSON; weights
are safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from seiko_core.atomic import TMP_PREFIX, claim_new, fsync_dir, release_claim, temp_sibling

MANIFEST = "manifest.json"
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# the manifest formats of the directories a stock loader reads whole, finding the weights by what the directory holds
# (an adapter and the diffusers and kohya LoRA exports: ``load_lora_weights(dir)``; a merged pipeline:
# ``from_pretrained(dir)``): ``verify`` refuses a file there that the manifest does not list. Those were ignored,
# so a file dropped into an export verified; the ratings dataset's readers refuse one by the names they read
# (``seiko_core.export``), and a reward model reads its own files by name (found by review, 5 Dec 2026).
LOADED_WHOLE = ("diffusers-lora", "kohya-lora", "diffusers-pipeline-merged")


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing, incomplete or does not match its manifest."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def directory_sha256(directory: str | Path) -> str:
    """One sha256 of every file below ``directory``: of the sorted lines ``<path relative to it> <its sha256>`` (links
    followed). Any file added, removed, renamed or changed changes it; the files' times do not."""
    directory = Path(directory)
    lines = sorted(f"{p.relative_to(directory).as_posix()} {sha256_file(p)}\n" for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256("".join(lines).encode("utf-8", "surrogateescape")).hexdigest()


def write_manifest(directory: Path, extra: dict | None = None) -> str:
    """Hash every file below ``directory`` into manifest.json; returns the manifest's own sha256."""
    files = {}
    for p in sorted(directory.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(directory).as_posix()] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    manifest = {"files": files, **(extra or {})}
    path = directory / MANIFEST
    path.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return sha256_file(path)


def atomic_directory(final: str | Path, write: Callable[[Path], None], extra: dict | None = None, *,
                     new: bool = False) -> str:
    """Run ``write(tmp_dir)``, add the manifest, fsync, and rename to ``final``; returns the manifest sha256.

    If ``final`` already exists and verifies, it is kept (a retried job publishes one result). With ``new=True`` (a
    destination a person named) ``final`` must still not exist when the directory is published: it is claimed with
    an exclusive mkdir that the rename replaces, and DestinationTaken leaves anything made there meanwhile as it is.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    tmp.mkdir()
    claim = None
    try:
        write(tmp)
        digest = write_manifest(tmp, extra)
        # every file, then every directory below tmp deepest first, then tmp: a subdirectory's entries (images/,
        # unet/) are on disk before the rename publishes them (found by review: only tmp itself was synced)
        entries = list(tmp.rglob("*"))
        for p in entries:
            if p.is_file() and not p.is_symlink():
                with open(p, "rb") as f:
                    os.fsync(f.fileno())
        for p in sorted((p for p in entries if p.is_dir() and not p.is_symlink()), key=lambda p: len(p.parts),
                        reverse=True):
            fsync_dir(p)
        fsync_dir(tmp)
        if new:
            claim = claim_new(final, directory=True)
        elif final.exists():
            verify(final)  # an earlier attempt already published a complete copy: keep it
            shutil.rmtree(tmp)
            return sha256_file(final / MANIFEST)
        os.rename(tmp, final)
        fsync_dir(final.parent)
        return digest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        release_claim(final, claim)
        raise


def verify(directory: str | Path) -> dict:
    """The manifest of ``directory`` after checking every file's hash, and in a directory a stock loader reads whole
    (``LOADED_WHOLE``) that it holds no file the manifest does not list; CheckpointError otherwise."""
    directory = Path(directory)
    path = directory / MANIFEST
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {str(directory)!r} has no {MANIFEST}; it is incomplete or not a checkpoint.")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # Recursion: 200,000 nested '[' (review)
        raise CheckpointError(f"Checkpoint manifest {str(path)!r} is not valid JSON.") from exc
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"Checkpoint manifest {str(path)!r} lists no files; it is not a checkpoint's manifest.")
    for name, info in files.items():
        sha = info.get("sha256") if isinstance(info, dict) else None
        if not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha):
            raise CheckpointError(f"Checkpoint manifest {str(path)!r} has no sha256 for {name!r}.")
        parts = Path(name).parts
        if not parts or Path(name).is_absolute() or ".." in parts:
            raise CheckpointError(f"Checkpoint manifest {str(path)!r} names {name!r}, which is not inside the checkpoint.")
        f = directory / name
        if f.is_symlink() or not f.is_file():
            raise CheckpointError(f"Checkpoint {str(directory)!r} is missing {name} (or it is a link).")
        if sha256_file(f) != sha:
            raise CheckpointError(f"Checkpoint file {str(f)!r} does not match its manifest hash (corrupt or altered).")
    if manifest.get("format") in LOADED_WHOLE:
        for p in sorted(directory.rglob("*")):
            name = p.relative_to(directory).as_posix()
            if (p.is_symlink() or p.is_file()) and name != MANIFEST and name not in files:
                raise CheckpointError(f"The manifest of checkpoint {str(directory)!r} does not list {name}, which the "
                                      "directory holds: it was added after the checkpoint was written; remove it to "
                                      "use the checkpoint.")
    return manifest


def clean_partials(parent: str | Path) -> list[Path]:
    """Remove the temporary directories and files (``.tmp-*``) a killed writer left in ``parent``; returns them."""
    parent = Path(parent)
    removed = []
    if parent.is_dir():
        for p in parent.glob(f"{TMP_PREFIX}*"):
            try:
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:  # another process removed it first: it is gone either way
                continue
            removed.append(p)
    return removed
