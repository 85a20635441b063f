"""The data directory: where generated images, adapters and reward models live on disk.

    <data_dir>/images/ab/abcdef....png        content-addressed by the sha256 of the PNG bytes (identical images dedup)
    <data_dir>/adapters/exp{E}/round_{k}/     round k's LoRA adapter (seiko_core.lora.save_adapter: atomic, manifest)
    <data_dir>/reward/exp{E}/round_{k}/       the reward ensemble (+ UCB bonus) that adapter k was trained against
    <data_dir>/scratch/                       a job's working files too large for memory (:func:`scratch_array`)

The database stores paths relative to the data dir (forward slashes); :func:`resolve` turns one back into
a path and refuses anything that could point outside (absolute paths, ``..``, backslashes).

Every file and directory appears under its final name only when complete: it is written under a
``.tmp-*`` name, fsynced and renamed (``seiko_core.atomic`` for files, ``seiko_core.checkpoint`` for directories). A killed writer leaves ``.tmp-*`` entries behind, which
:func:`clean_partials` removes.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from app.settings import SettingsError
from seiko_core.atomic import TMP_PREFIX, fsync_dir, temp_sibling, write_bytes
from seiko_core.checkpoint import sha256_file
from seiko_core.scratch import SCRATCH, scratch_array  # noqa: F401  (the worker's, and the tests', storage.scratch_array)

IMAGES = "images"
ADAPTERS = "adapters"
REWARD = "reward"


class UnsafePath(ValueError):
    """A path from the database that is not a plain relative path inside the data dir."""


@dataclass(frozen=True)
class StoredFile:
    path: str  # relative to the data dir, forward slashes (what the database stores)
    sha256: str


def make_data_dir(data_dir: str | Path) -> str | None:
    """Make a missing data directory its owner's alone (0700): it holds every rating (the exports), the images and
    the adapters. An existing one of this user's that others may enter loses the others' access (its group's is
    kept: a deployment may share it by group); returns a sentence saying so, else None. A path that cannot be made
    a directory raises SettingsError."""
    import stat

    path = Path(data_dir)
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = path.stat()
        if info.st_uid != os.getuid() or not info.st_mode & 0o007:
            return None
        mode = stat.S_IMODE(info.st_mode)
        path.chmod(mode & ~0o007)
    except OSError as exc:  # a file in the way (FileExistsError too), no permission, a read-only disk
        raise SettingsError(f"the data directory {str(path)!r} could not be made ({exc.strerror or exc})") from exc
    # found by review: directories made before new ones were 0700 stayed readable by every local user
    return (f"the data directory {str(path)!r} was open to every user of this machine (mode {mode:04o}); it is now "
            f"{mode & ~0o007:04o}")


def check_writable(data_dir: str | Path) -> None:
    """Write and remove a probe file in the data directory and in each of its folders the worker writes (images,
    adapters, reward models, scratch) that exists; SettingsError naming the folder if one cannot be written (or is a
    file). A worker run by a user who cannot write there loaded its model, generated a whole round, failed writing
    the images and was given the job again twice, regenerating each time (found by the sixth review)."""
    root = Path(data_dir)
    for folder in [root] + [root / top for top in (IMAGES, ADAPTERS, REWARD, SCRATCH) if os.path.lexists(root / top)]:
        probe = temp_sibling(folder / "write-probe")  # the prefix a clean-up removes, should this process die here
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"probe")
            finally:
                os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            raise SettingsError(f"cannot write in {str(folder)!r} ({exc.strerror or exc}), where the worker keeps "
                                "images, adapters and reward models: give this user write access to the data "
                                "directory or choose another one") from exc


def _check_relative(rel: str) -> PurePosixPath:
    if not isinstance(rel, str) or not rel:
        raise UnsafePath(f"a data-dir path must be a non-empty string, got {rel!r}")
    posix = PurePosixPath(rel)
    if posix.is_absolute() or PureWindowsPath(rel).is_absolute() or "\\" in rel or ".." in posix.parts:
        raise UnsafePath(f"path {rel!r} must be relative to the data dir (forward slashes, no '..', not absolute)")
    return posix


def resolve(data_dir: str | Path, rel: str) -> Path:
    """The absolute path of ``rel`` (as stored in the database) inside ``data_dir``; UnsafePath if it would escape."""
    root = Path(data_dir).resolve()
    path = (root / _check_relative(rel)).resolve()
    if path != root and root not in path.parents:
        raise UnsafePath(f"path {rel!r} points outside the data dir {str(root)!r} (through a symbolic link)")
    return path


def relative(data_dir: str | Path, path: str | Path) -> str:
    """Inverse of :func:`resolve`: ``path`` (inside ``data_dir``) as the relative string the database stores."""
    root = Path(data_dir).resolve()
    try:
        return Path(path).resolve().relative_to(root).as_posix()
    except ValueError as exc:
        raise UnsafePath(f"path {str(path)!r} is not inside the data dir {str(root)!r}") from exc


def image_path(sha256: str) -> str:
    """``images/ab/abcdef....png`` for the PNG whose bytes hash to ``sha256``."""
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    return f"{IMAGES}/{sha256[:2]}/{sha256}.png"


def adapter_path(experiment_id: int, index: int) -> str:
    """Where round ``index``'s adapter of experiment ``experiment_id`` is stored (relative)."""
    return f"{ADAPTERS}/exp{int(experiment_id)}/round_{int(index)}"


def reward_path(experiment_id: int, index: int) -> str:
    """Where the reward ensemble that round ``index``'s adapter was trained against is stored (relative)."""
    return f"{REWARD}/exp{int(experiment_id)}/round_{int(index)}"


def write_image(data_dir: str | Path, png: bytes) -> StoredFile:
    """Store PNG bytes under their sha256 (temp file, fsync, rename); an identical file already there is reused."""
    digest = hashlib.sha256(png).hexdigest()
    rel = image_path(digest)
    final = resolve(data_dir, rel)
    if final.is_file() and sha256_file(final) == digest:
        return StoredFile(rel, digest)
    write_bytes(final, png)  # also replaces a corrupt file of the same name
    return StoredFile(rel, digest)


def encode_png(pixels) -> bytes:
    """PNG bytes of one uint8 (H, W, 3) array (deterministic: the same pixels give the same bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _newest_mtime(path: Path) -> float:
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for p in path.rglob("*"):
            newest = max(newest, p.lstat().st_mtime)
    return newest


def clean_partials(data_dir: str | Path, *, min_age_s: float = 0.0) -> list[Path]:
    """Remove ``.tmp-*`` files and directories left in the data dir by killed writers; returns what was removed.

    Only entries untouched for ``min_age_s`` seconds go, so a worker starting next to a live one
    (sharing the data dir) does not delete a directory the other is still writing.
    """
    root = Path(data_dir)
    parents = [p for top in (IMAGES, ADAPTERS, REWARD) for p in (root / top).glob("*") if p.is_dir()]
    # a scratch file's name, left by a process killed between making and mapping it (scratch_array)
    parents += [root / SCRATCH] if (root / SCRATCH).is_dir() else []
    return _remove_stale(parents, min_age_s)


EXPORT_PARTIALS_AGE_S = 24 * 3600.0  # an export being written is never this old (a merged SD pipeline takes minutes)


def clean_export_partials(data_dir: str | Path, *, min_age_s: float = EXPORT_PARTIALS_AGE_S) -> list[Path]:
    """Remove ``.tmp-*`` leftovers of killed exports in ``<data_dir>/exports`` (a merged pipeline's is gigabytes);
    only those untouched for ``min_age_s``, since an export writes nothing while its check renders. The web server
    calls it when it starts."""
    parent = Path(data_dir) / "exports"
    return _remove_stale([parent] if parent.is_dir() else [], min_age_s)


def _remove_stale(parents: list[Path], min_age_s: float) -> list[Path]:
    """The ``.tmp-*`` entries of ``parents`` untouched for ``min_age_s`` seconds, removed; returns them."""
    now = time.time()
    removed = []
    for parent in parents:
        for p in parent.glob(f"{TMP_PREFIX}*"):
            try:
                if now - _newest_mtime(p) < min_age_s:
                    continue
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink()
            except FileNotFoundError:  # another process (a worker starting beside this one) removed it first
                continue
            removed.append(p)
    return removed


def retire(path: Path) -> Path:
    """Rename a directory that must not be used (e.g. an unpublished adapter trained on other data) to a ``.tmp-`` name.

    It then no longer sits under its final name, and :func:`clean_partials` removes it later.
    """
    target = path.parent / f"{TMP_PREFIX}retired-{path.name}-{uuid.uuid4().hex[:8]}"
    os.rename(path, target)
    fsync_dir(path.parent)
    return target
