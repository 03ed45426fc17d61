"""Files written so that a kill leaves the old version or the new one: temp names, fsync, rename; output locks;
full disks named in one line; HDF5 errors that h5py can only print kept off stderr."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py

from ..runtime.errors import ArtifactError, ConfigError


def create_h5(path: Path) -> h5py.File:
    """A new HDF5 file (h5py's defaults) without the sieve buffer and the chunk cache: every write reaches the disk
    when it is made, so a full disk fails that write, in Python. With them a failed write surfaces only when HDF5
    flushes while closing an object, which h5py can only print, and the object left open crashes HDF5 at exit."""
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_EARLIEST, h5py.h5f.LIBVER_LATEST)
    fapl.set_sieve_buf_size(0)
    cache = list(fapl.get_cache())
    cache[2] = 0  # rdcc_nbytes
    fapl.set_cache(*cache)
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)
    fcpl.set_obj_track_times(False)
    return h5py.File(h5py.h5f.create(os.fsencode(path), h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl))


def close_quietly(fh: h5py.File) -> None:
    """Close a file whose writes failed (HDF5 retries each failed flush while closing: more of the same error)."""
    with dealloc_errors([]), contextlib.suppress(Exception):
        fh.close()


@contextlib.contextmanager
def dealloc_errors(errors: list[BaseException]) -> Iterator[None]:
    """Collect the errors h5py meets while it releases objects (a write that fails when HDF5 flushes a closing
    dataset, e.g. on a full disk). h5py can only print those, as a traceback on stderr per object, and carry on; here
    they are kept from stderr and added to `errors`, so the writer can fail in one line instead."""
    hook, excepthook = sys.unraisablehook, sys.excepthook

    def unraisable(u) -> None:
        if "h5py" in str(u.object):
            errors.append(u.exc_value)
        else:
            hook(u)

    def printed(kind, value, tb) -> None:  # Cython prints the traceback of an error in __dealloc__ this way first
        if any("h5py" in f.filename for f in _frames(tb)):
            return
        excepthook(kind, value, tb)

    sys.unraisablehook, sys.excepthook = unraisable, printed
    try:
        yield
    finally:
        sys.unraisablehook, sys.excepthook = hook, excepthook


def _frames(tb) -> list:
    import traceback

    return traceback.extract_tb(tb) if tb is not None else []


def disk_full(exc: BaseException) -> str | None:
    """'No space left on device' / 'File too large' / quota: the reason when `exc` is such a write failure."""
    if not isinstance(exc, (OSError, RuntimeError)):  # h5py reports some failed writes as RuntimeError
        return None
    codes = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
    found = [exc.errno] if getattr(exc, "errno", None) in codes else [int(c) for c in re.findall(r"errno = (\d+)", str(exc))]
    code = next((c for c in found if c in codes), None)
    return None if code is None else os.strerror(code)


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Copy a file (an artifact, its metrics) to `dst` as `atomic_write` writes: a temp name beside it, synced, then
    renamed, so a kill leaves `dst` whole or untouched; a failed copy removes its temp file."""
    _replace_atomic(dst, lambda tmp: shutil.copyfile(src, tmp))


def write_text_atomic(dst: str | os.PathLike, text: str) -> None:
    """`copy_atomic` for a small text record (a JSON file of wall times)."""
    _replace_atomic(dst, lambda tmp: tmp.write_text(text))


def write_atomic(dst: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`copy_atomic` for a file another library writes: `write(tmp)` writes it under a temp name beside `dst`."""
    check_writable(Path(dst))
    _replace_atomic(dst, write)


def _replace_atomic(dst: str | os.PathLike, write) -> None:
    dst = Path(dst)
    remove_stale_temps(dst)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(dst.parent)


def remove_stale_temps(path: Path, prefix: str | None = None) -> None:
    """Delete the temp files `<prefix><pid>...` (default `.<name>.tmp-<pid>`) beside `path` left by writers that
    were killed (kill -9, out of memory): their pid is gone."""
    prefix = f".{path.name}.tmp-" if prefix is None else prefix
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*"):
        pid = re.match(r"\d*", tmp.name[len(prefix):]).group()
        if not pid or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                if tmp.is_dir():  # a folder output (a Minari dataset) written under a temp name
                    shutil.rmtree(tmp)
                else:
                    tmp.unlink()
        except PermissionError:  # alive, another user's
            pass


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Held while a command writes `path`: a second command with the same output fails in one line instead of
    both running and one's work being lost. An flock on `.<name>.lock` beside it, released when the process
    ends however it ends, and the file removed on a normal release; a folder that cannot take the lock file is
    left to the stage to report."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fh = open(lock, "a")  # noqa: SIM115 - closed on release
        except OSError:
            yield
            return
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ConfigError(f"{path}: another wm command is writing it; wait for it or choose another --out") from None
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()  # its last holder removed this file as we locked it: lock the one at the path now
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()  # still holding the lock, so no other command has it
        fh.close()


def check_writable(path: Path) -> None:
    """Refuse early, with a one-line reason, an output whose folder is missing or read-only."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ArtifactError(f"{path}: output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ArtifactError(f"{path}: output folder {parent} is not writable")
    if path.is_dir():
        raise ArtifactError(f"{path}: is a folder, expected a file path")


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fsync(path if str(path) else Path("."))
