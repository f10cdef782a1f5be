"""Disk usage of a snapshot directory, the way containerd's ``fs.DiskUsage`` counts it.

Size is the bytes of *allocated blocks* (``st_blocks * 512``), and each inode is counted
once per ``(st_dev, st_ino)`` so hard links are not double-counted. The walk does not
follow symlinks and includes the root directory itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from cimsnap.store import Usage

__all__ = ["disk_usage"]


def disk_usage(root: Path, *, exclude: frozenset[str] = frozenset()) -> Usage:
    """Return the usage of the tree at ``root``; a missing ``root`` counts as empty.

    ``exclude`` names top-level entries of ``root`` to skip. Entries that vanish during
    the walk are ignored (the snapshot may be written to concurrently).
    """
    seen: set[tuple[int, int]] = set()
    size = 0
    stack = [root]
    first = True
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        ident = (st.st_dev, st.st_ino)
        if ident not in seen:
            seen.add(ident)
            size += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        if first and entry.name in exclude:
                            continue
                        stack.append(Path(entry.path))
            except (FileNotFoundError, NotADirectoryError):
                pass
        first = False
    return Usage(size=size, inodes=len(seen))
