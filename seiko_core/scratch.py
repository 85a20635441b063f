"""Scratch files: generated pixels too many for the host's memory, held in a file's memory map instead.

``scratch_array`` makes the array (a map of a file under ``<dir>/scratch`` whose name is removed once mapped, its
disk space reserved first); ``PixelSpill`` gives ``seiko_core.loop.generate_batch`` its ``pixels_out`` for a
batch of pixels beyond a limit (``PIXELS_IN_MEMORY_MAX_BYTES`` by default, ``--pixels-in-memory-max-mib`` on the
command lines). The app's worker keeps a generate job's uint8 candidates there (fifth review), the simulators
(``seiko_core.simulate``, ``seiko_core.pairwise_sim``) and ``seiko_core.bench``'s round their float32 images
(sixth review), ``seiko_core.klmatch`` its eval images (seventh review); those commands keep them in a folder of
the run's own (:func:`own_scratch_folder`), removed when the run ends, also on SIGTERM (:func:`exit_on_sigterm`). A scratch folder on a tmpfs saves nothing (its pages are memory): :func:`note_if_tmpfs` says so
once in the log.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import math
import os
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import TMP_PREFIX, temp_sibling

log = logging.getLogger("seiko.scratch")

SCRATCH = "scratch"
# generated pixels up to this size are held in memory, larger ones in a scratch file: sd15's round 3 has 16,384
# candidates of 512x512x3, 12 GiB as uint8 (fifth review), 48 GiB as the simulators' float32 (sixth review)
PIXELS_IN_MEMORY_MAX_BYTES = 512 << 20
MIB = 1 << 20
MEMORY_FS_TYPES = frozenset({"tmpfs", "ramfs"})  # file systems whose files are pages of memory
MOUNTS = "/proc/mounts"  # Linux's mount table; absent elsewhere (then nothing is said)


def _allocate(fd: int, size: int) -> None:
    """Give the file ``fd`` ``size`` bytes of disk blocks now (ENOSPC here, not when a page of its memory map is
    written: that is a SIGBUS, which kills the process)."""
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # a file system without it: written below
                raise
    zeros = bytes(16 << 20)
    for start in range(0, size, len(zeros)):
        os.pwrite(fd, zeros[: min(len(zeros), size - start)], start)


def _amount(n: int) -> str:
    """``n`` bytes for a person: 12.0 KiB, 12.0 GiB."""
    if n < 1024:
        return f"{n} bytes"
    power = min(3, int(math.log(n, 1024)))
    return f"{n / 1024**power:.1f} {('KiB', 'MiB', 'GiB')[power - 1]}"


def scratch_array(data_dir: str | Path, label: str, shape: tuple[int, ...], *, what: str,
                  dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """A zeroed ``dtype`` (default uint8) array of ``shape`` held in a file rather than in memory: a numpy memory
    map of a file made as ``<data_dir>/scratch/.tmp-<label>-<random>``, for data too large for the host's memory (a
    round's candidate pixels: 12 GiB at sd15's scale). Its pages are the kernel's file cache, written back and
    dropped as memory is needed, so the process's own memory does not grow with it.

    The file's disk space is allocated first: a full disk is one OSError (ENOSPC) saying how much room ``what``
    needs, before anything is written (a page of a memory map with no disk block behind it is a SIGBUS when
    written, which kills the process). The file's name is removed as soon as it is mapped: its disk space is in
    use until the mapping ends, with the last reference to the array, also on error, and a killed process's goes
    with the process; no other process (a worker starting beside this one) can remove it meanwhile. A name left
    by a process killed in between is removed by ``app.storage.clean_partials``."""
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    if size < 1:
        raise ValueError(f"a scratch array needs at least one byte, got shape {shape}")
    folder = Path(data_dir) / SCRATCH
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = temp_sibling(folder / label)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            _allocate(fd, size)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise OSError(exc.errno, f"No space left on device for {what}: they need {_amount(size)} in "
                                     f"{str(folder)!r} while the job runs, so free that much space there") from exc
        return np.memmap(path, dtype=dtype, mode="r+", shape=shape)
    finally:
        os.close(fd)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def own_scratch_folder(parent: str | Path, command: str) -> Iterator[Path]:
    """A folder of this run's own in ``parent``, ``<parent>/.tmp-<command>-<random>``, for a ``PixelSpill``'s scratch
    files (its ``scratch`` folder inside), removed with everything in it when the block ends, normally, by an
    exception, by Ctrl-C or SIGTERM (:func:`exit_on_sigterm`). Never ``<parent>/scratch``: ``parent`` (bench's
    --workdir, a simulator's or klmatch's OUT) may be a live data dir, whose worker makes and maps its scratch files
    in DATA_DIR/scratch; cleaning that folder took a name from under the worker (its job failed) and removed the
    folder it had just made (ninth review)."""
    _say_leftovers(Path(parent), command)
    folder = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{command}-", dir=parent))
    try:
        yield folder
    finally:
        # every name in it is this run's; one that cannot be removed (a file a stopped process holds open on NFS, say)
        # is said, not raised: raised here, it took the place of how the run ended (an error, Ctrl-C, SIGTERM's 143)
        shutil.rmtree(folder, onerror=lambda function, path, exc_info: log.warning(NOT_REMOVED.format(
            folder=folder, path=path, error=exc_info[1])))


NOT_REMOVED = "{path} could not be removed ({error}); remove {folder} once no process is using it."
LEFTOVERS = ("{parent} holds {n} folder(s) of earlier {command} runs ({names}): a run stopped by SIGKILL or a crash of the "
             "machine leaves its own (scratch files, maybe a whole batch's images); remove them if no {command} run is "
             "using them now.")


def _say_leftovers(parent: Path, command: str) -> None:
    """A warning naming the folders of ``command``'s earlier runs in ``parent``. Not removed here: one may be a run's
    going on now (two runs into one OUT, or a run on another machine sharing the disk), and whose is not known; the
    commands cleaned their scratch folder by name at start before the ninth review, which took a live worker's."""
    names = sorted(path.name for path in parent.glob(f"{TMP_PREFIX}{command}-*") if path.is_dir())
    if names:
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        log.warning(LEFTOVERS.format(parent=parent, n=len(names), command=command, names=shown))


def exit_on_sigterm() -> None:
    """For a command line's ``if __name__ == "__main__"`` only (never on import, never in the app's server or worker,
    which handle SIGTERM themselves): SIGTERM raises SystemExit(143, 128 + SIGTERM as a shell reports it) in the main
    thread, so the command ends as on Ctrl-C, its ``finally`` blocks run: its scratch folder goes
    (:func:`own_scratch_folder`), and a work dir it made. SIGTERM's default action ended the process where it stood and
    left them, a whole batch's images maybe (eighth review: ``timeout``, ``docker stop``, a batch system's time
    limit). A later SIGTERM is ignored: the first asked for the end already, and must not cut its clean-up short."""
    signal.signal(signal.SIGTERM, _exit_for_sigterm)


class Terminated(SystemExit):
    """The SystemExit that SIGTERM raises (:func:`exit_on_sigterm`): code that turns a SystemExit into an error of
    its own (a user's oracle file that calls sys.exit() on import is refused) lets this one through."""


def _exit_for_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(128 + signum)


def _unescape_mount_point(field: str) -> str:
    """A /proc/mounts path field: spaces, tabs, newlines and backslashes are written as octal escapes (\\040)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mount_fstype(path: str | Path, mounts: str | Path | None = None) -> str | None:
    """The file system type of the mount that holds ``path`` (or would hold it: its nearest existing folder), from
    the mount table ``mounts`` (Linux's /proc/mounts); None where there is no such table (another system) or no
    mount in it holds the path."""
    try:
        text = Path(MOUNTS if mounts is None else mounts).read_text(errors="replace")
    except OSError:
        return None
    target = Path(os.path.abspath(path))
    try:
        target = target.resolve()
    except (OSError, RuntimeError):  # a symlink loop: the path as written
        pass
    best: tuple[int, str] | None = None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = Path(_unescape_mount_point(fields[1]))
        if (target == point or point in target.parents) and (best is None or len(point.parts) >= best[0]):
            best = (len(point.parts), fields[2])  # the last of equal depth: the mount on top
    return None if best is None else best[1]


_noted: set[str] = set()


def note_if_tmpfs(folder: str | Path, mounts: str | Path | None = None) -> bool:
    """Say once in the log (per folder, per process) that ``folder`` is on a file system held in memory (tmpfs,
    ramfs), where a scratch file saves no memory; True if it is. Not an error: the job runs all the same."""
    fstype = mount_fstype(folder, mounts)
    if fstype not in MEMORY_FS_TYPES:
        return False
    key = str(Path(os.path.abspath(folder)))
    if key not in _noted:
        _noted.add(key)
        log.warning("The scratch folder %s is on a %s, which is memory, so the pixels kept there beyond "
                    "--pixels-in-memory-max-mib save no memory; give a data or output directory on disk.", key, fstype)
    return True


@dataclass(frozen=True)
class PixelSpill:
    """Where generated pixels beyond ``max_bytes`` go: a scratch file of ``<folder>/scratch`` (``scratch_array``).
    Picklable, for a simulator's worker processes."""

    folder: Path
    max_bytes: int = PIXELS_IN_MEMORY_MAX_BYTES

    def __post_init__(self) -> None:
        check_max_bytes(self.max_bytes)

    def pixels_out(self, label: str, what: str | Callable[[tuple[int, ...]], str], dtype: np.dtype | type = np.uint8
                   ) -> Callable[[tuple[int, ...]], np.ndarray | None]:
        """``generate_batch``'s ``pixels_out`` for pixels of ``dtype``: None (in memory) up to ``max_bytes``, else
        a scratch array; ``what`` (or ``what(shape)``) names them in a full disk's sentence."""
        dtype = np.dtype(dtype)

        def allocate(shape: tuple[int, ...]) -> np.ndarray | None:
            if math.prod(shape) * dtype.itemsize <= self.max_bytes:
                return None
            array = scratch_array(self.folder, label, shape, dtype=dtype,
                                  what=what(shape) if callable(what) else what)
            note_if_tmpfs(Path(self.folder) / SCRATCH)
            return array

        return allocate


def float_pixels(spill: PixelSpill | None, label: str, what: str | Callable[[tuple[int, ...]], str]
                 ) -> Callable[[tuple[int, ...]], np.ndarray | None] | None:
    """``generate_batch``'s ``pixels_out`` for the float32 images a simulator's oracle rates: in memory up to
    ``spill``'s limit, else in a scratch file of its folder (the same values either way); None without ``spill``."""
    return None if spill is None else spill.pixels_out(label, what, np.float32)


def check_max_bytes(value: object) -> int:
    """``value`` if it is a whole number of bytes from 0, else ValueError with one sentence."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"pixels_in_memory_max_bytes must be a whole number of bytes from 0, got {value!r}")
    return value


def max_mib_argument(text: str) -> int:
    """argparse type of ``--pixels-in-memory-max-mib``: a number of MiB from 0 (fractions allowed), as bytes."""
    try:
        mib = float(text)
    except ValueError:
        mib = math.nan
    if not (math.isfinite(mib) and 0 <= mib <= 1 << 40):
        raise argparse.ArgumentTypeError(f"expected a number of MiB from 0 (the generated pixels held in memory "
                                         f"before the rest go to a scratch file), got {text!r}")
    return int(mib * MIB)


def add_max_mib_argument(parser: argparse.ArgumentParser, where: str) -> None:
    """``--pixels-in-memory-max-mib`` on ``parser`` (its value in bytes, as ``pixels_in_memory_max_bytes``);
    ``where`` names the scratch folder in the help."""
    parser.add_argument("--pixels-in-memory-max-mib", dest="pixels_in_memory_max_bytes", type=max_mib_argument,
                        default=PIXELS_IN_MEMORY_MAX_BYTES, metavar="MIB",
                        help=f"generated pixels held in memory up to this many MiB; a batch beyond it is kept in a "
                             f"scratch file of {where}/scratch instead, its disk space reserved first (default "
                             f"{PIXELS_IN_MEMORY_MAX_BYTES // MIB}; 0: always the file)")
