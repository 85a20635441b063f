"""Atomic files: a file appears under its final name only when it is complete and on disk.

``atomic_write(final, write)`` runs ``write(tmp)`` on a temporary sibling named ``.tmp-<name>-<random>``, fsyncs
it, renames it over ``final`` (``os.replace``: the old file, if any, stays whole until that instant) and fsyncs
the directory so the rename survives a power cut. If ``write`` raises, the temporary file is removed and the old
file is untouched. If the process is killed, the ``.tmp-*`` file stays behind; ``app.storage.clean_partials`` and
``seiko_core.checkpoint.clean_partials`` remove such leftovers. Directories use the same prefix and the same steps
in ``seiko_core.checkpoint.atomic_directory``.

Every file the project writes for later reading goes through here: images, reward models, exported adapters and
archives, benchmark results.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(final: str | Path) -> Path:
    """A fresh temporary name next to ``final``, with the prefix the clean-up functions look for."""
    final = Path(final)
    return final.parent / f"{TMP_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}"


def check_can_write(final: str | Path) -> None:
    """Check, before long work, that ``atomic_write(final, ...)`` can make its file, leaving nothing behind: a new
    file is made and removed in ``final``'s folder, or, where that folder does not exist yet, in the nearest one
    that does (where ``atomic_write`` will make the missing ones). OSError naming the fault otherwise: a directory in
    ``final``'s place (EISDIR), a path under a file (ENOTDIR), a folder that takes no new file (EACCES, EROFS)."""
    final = Path(final)
    if final.is_dir():
        raise IsADirectoryError(errno.EISDIR, "it is a directory", str(final))
    folder = final.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():  # mkdir would say "File exists"
        raise NotADirectoryError(errno.ENOTDIR, f"{str(folder)!r} is not a directory", str(folder))
    probe = temp_sibling(folder / final.name)
    os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    probe.unlink()


def atomic_write(final: str | Path, write: Callable[[Path], None], *, new: bool = False) -> Path:
    """``write(tmp)`` into a temporary sibling of ``final``, fsync it, rename it to ``final``; returns ``final``.

    The parent directory is created if needed. An exception from ``write`` (or from the fsync or rename) removes the
    temporary file and propagates; ``final`` then still holds what it held before, or does not exist. With
    ``new=True`` (a destination a person named, checked to be new before a long write) ``final`` must still not exist
    when the file is published: it is claimed with an exclusive create and replaced by the file in one rename, and
    DestinationTaken (a FileExistsError) leaves anything made there meanwhile as it is.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(final)
    claim = None
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        if new:
            claim = claim_new(final, directory=False)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        release_claim(final, claim)
        raise
    fsync_dir(final.parent)
    return final


class DestinationTaken(FileExistsError):
    """A ``new=True`` destination exists at the moment of publishing."""


def claim_new(final: Path, *, directory: bool) -> os.stat_result:
    """Create ``final`` exclusively, empty (a directory or a file), so that a rename replaces only this claim;
    DestinationTaken if anything (a link too) is there. Returns the claim's stat, for ``release_claim``."""
    try:
        if directory:
            os.mkdir(final, 0o700)
        else:
            os.close(os.open(final, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError as exc:
        raise DestinationTaken(exc.errno, exc.strerror, str(final)) from exc
    return os.lstat(final)


def release_claim(final: Path, claim: os.stat_result | None) -> None:
    """Remove ``claim_new``'s claim after a failure, if it is still that same empty entry."""
    if claim is None:
        return
    try:
        now = os.lstat(final)
    except FileNotFoundError:
        return
    if (now.st_ino, now.st_dev) != (claim.st_ino, claim.st_dev):
        return
    if os.path.isdir(final) and not os.path.islink(final):
        if not any(os.scandir(final)):
            os.rmdir(final)
    elif now.st_size == 0:
        os.unlink(final)


def write_bytes(final: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``final`` atomically (see ``atomic_write``)."""
    return atomic_write(final, lambda tmp: tmp.write_bytes(data))


def write_text(final: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``final`` atomically (see ``atomic_write``)."""
    return atomic_write(final, lambda tmp: tmp.write_text(text, encoding=encoding))
