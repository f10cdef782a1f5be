"""The file edge of the hive merge: copy the base, merge in place, publish atomically.

:func:`merge_files` is what ``cimsnap hive merge`` and the layer importer call. It owns
file names, the copy, fsync and cleanup; the merge itself is
:func:`cimsnap.hive.incremental.merge_into`, on memory maps, so the base is never read
whole.
"""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cimsnap.errdefs import AlreadyExists, NotFound
from cimsnap.hive.errors import HiveFormatError
from cimsnap.hive.gcpause import gc_paused
from cimsnap.hive.incremental import MergeStats, merge_into
from cimsnap.hive.reader import read_hive
from cimsnap.hive.tree import Hive

__all__ = ["merge_files"]

# copy_file_range cannot serve these (another filesystem, an old kernel, special files):
# fall back to a plain read/write copy.
_NO_COPY_RANGE = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})


def merge_files(
    base_path: str | os.PathLike[str],
    delta_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> MergeStats:
    """Merge the hive files ``base_path`` and ``delta_path`` into a new file ``out_path``.

    The output starts as a copy of the base (``copy_file_range``: a reflink where the
    filesystem shares extents, an in-kernel copy elsewhere) and is edited in place; only
    the cells the delta touches are read or written, so time and memory follow the
    delta, not the base. Returns what was done.

    Raises :class:`NotFound` if an input is missing, :class:`AlreadyExists` if ``out_path``
    exists (checked again atomically at the end),
    :class:`~cimsnap.hive.errors.HiveFormatError` for a malformed input (with a note naming
    the file), :class:`~cimsnap.hive.rules.HiveMergeError` and
    :class:`~cimsnap.hive.errors.HiveModelError` as the merge rules do, and ``OSError``
    for I/O failures. On any failure ``out_path`` is not created and no temporary file is
    left behind. The temporary file lives beside ``out_path`` and is published with a hard
    link (the filesystem must support them, as every Linux one under a containerd root
    does), then the directory is fsynced.
    """
    out = os.fspath(out_path)
    if os.path.lexists(out):
        raise AlreadyExists(f"merged hive {out!r}: already exists; remove it or pick a new path")
    directory = os.path.dirname(os.path.abspath(out))
    with gc_paused():
        delta = _read_delta(delta_path)
        base_fd = _open_base(base_path)
        try:
            base_size = os.fstat(base_fd).st_size
            fd, tmp = tempfile.mkstemp(prefix=".hive-merge-", dir=directory)
            try:
                _copy(base_fd, fd, base_size)
                try:
                    with _writable_map(fd, base_size) as target:
                        stats = merge_into(_reader(base_fd), base_size, delta, target)
                        target.flush()
                except HiveFormatError as e:
                    e.add_note(f"in the base hive {os.fspath(base_path)!r}")
                    raise
                os.fsync(fd)
                try:
                    os.link(tmp, out)  # no-clobber publish: fails if out appeared meanwhile
                except FileExistsError as e:
                    raise AlreadyExists(f"merged hive {out!r}: created meanwhile by another") from e
            finally:
                os.close(fd)
                os.unlink(tmp)
        finally:
            os.close(base_fd)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return stats


def _read_delta(path: str | os.PathLike[str]) -> Hive:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as e:
        raise NotFound(f"delta hive {os.fspath(path)!r}: not found") from e
    try:
        return read_hive(data)
    except HiveFormatError as e:
        e.add_note(f"in the delta hive {os.fspath(path)!r}")
        raise


def _reader(fd: int) -> Callable[[int, int], bytes]:
    """``read_at(offset, size)`` over the file descriptor ``fd``."""

    def read_at(offset: int, size: int) -> bytes:
        return os.pread(fd, size, offset)

    return read_at


def _open_base(path: str | os.PathLike[str]) -> int:
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError as e:
        raise NotFound(f"base hive {os.fspath(path)!r}: not found") from e


@contextmanager
def _writable_map(fd: int, size: int) -> Iterator[mmap.mmap]:
    """Map the output file (``size`` bytes) shared and writable."""
    if size == 0:
        os.ftruncate(fd, 1)  # mmap cannot map nothing; the merge fails on the base anyway
        size = 1
    with mmap.mmap(fd, size) as data:
        yield data


def _copy(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from the start of ``src`` to ``dst`` (reflink where possible)."""
    done = 0
    try:
        while done < size:
            n = os.copy_file_range(src, dst, size - done, done, done)
            if n == 0:
                raise OSError(errno.EIO, "base hive shrank while being copied")
            done += n
        return
    except OSError as e:
        if e.errno not in _NO_COPY_RANGE or done:
            raise
    while done < size:
        chunk = os.pread(src, min(1 << 20, size - done), done)
        if not chunk:
            raise OSError(errno.EIO, "base hive shrank while being copied")
        done += os.pwrite(dst, chunk, done)
