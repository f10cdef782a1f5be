"""Disk usage of a snapshot directory, the way containerd's ``fs.DiskUsage`` counts it.

Size is the bytes of *allocated blocks* (``st_blocks * 512``), and each inode is counted
once per ``(st_dev, st_ino)`` so hard links are not double-counted. The walk includes the
root directory itself and never follows a symbolic link: every directory is opened
through its parent's descriptor with ``O_NOFOLLOW`` (:mod:`cimsnap.snapshots.rootdir`'s
rule), so a link swapped in for a directory while the walk runs (a container writes
there) is neither descended nor able to send the walk outside the snapshot.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from cimsnap.store import Usage

__all__ = ["disk_usage"]

_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Counter:
    def __init__(self) -> None:
        self.seen: set[tuple[int, int]] = set()
        self.size = 0

    def add(self, st: os.stat_result) -> None:
        ident = (st.st_dev, st.st_ino)
        if ident not in self.seen:
            self.seen.add(ident)
            self.size += st.st_blocks * 512

    def directory(self, fd: int, exclude: frozenset[str]) -> Iterator[str]:
        """Count the entries of directory ``fd``; return the names of its subdirectories."""
        subdirectories: list[str] = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.name in exclude:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                self.add(st)
                if stat.S_ISDIR(st.st_mode):
                    subdirectories.append(entry.name)
        return iter(subdirectories)


def disk_usage(root: Path, *, exclude: frozenset[str] = frozenset()) -> Usage:
    """Return the usage of the tree at ``root``; a missing ``root`` counts as empty.

    ``exclude`` names top-level entries of ``root`` to skip. Entries that vanish during
    the walk, or stop being directories, are ignored (the snapshot may be written to
    concurrently). A link at ``root`` itself counts as one inode and is not followed.
    """
    counter = _Counter()
    try:
        st = os.lstat(root)
    except FileNotFoundError:
        return Usage(size=0, inodes=0)
    counter.add(st)
    if not stat.S_ISDIR(st.st_mode):
        return Usage(size=counter.size, inodes=len(counter.seen))
    try:
        top = os.open(root, _DIR_FLAGS)
    except OSError:  # replaced meanwhile (by a link, a file) or removed
        return Usage(size=counter.size, inodes=len(counter.seen))
    stack: list[tuple[int, Iterator[str]]] = [(top, iter(()))]
    try:
        stack[-1] = (top, counter.directory(top, exclude))
        while stack:
            fd, pending = stack[-1]
            name = next(pending, None)
            if name is None:
                stack.pop()
                os.close(fd)
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:  # vanished or replaced by a link: not followed
                continue
            stack.append((child, iter(())))  # registered first: the finally closes it
            stack[-1] = (child, counter.directory(child, frozenset()))
    finally:
        for fd, _ in stack:
            os.close(fd)
    return Usage(size=counter.size, inodes=len(counter.seen))
