"""Finding and removing snapshot files that no metastore row references (``Cleanup``), and
the background worker that finishes Removes.

Two phases, so the metastore's write lock is held only for cheap renames (§8.3, §8.4):

1. :func:`retire_orphans`, called while no snapshot can be created, removed or committed:
   every ``snapshots/<id>`` whose ID has no row is renamed to ``rm-<id>``, every
   ``cim-layers/<id>.cim`` likewise to ``rm-<id>.cim``. Entries named like a snapshot that
   are not what they should be (a file or symbolic link at ``<id>``, a link at
   ``<id>.cim``) are retired the same way whether or not the ID is live, and a live ID
   gets a fresh empty directory (its old one is gone: the layout, :mod:`rootdir`, is never
   followed). Links and special files in ``cim-layers`` are unlinked at once (cheap, and
   never followed). Directories in ``cim-layers`` named like images (``*.cim``) or
   retired (``rm-*``) are retired and deleted too. Existing ``rm-*`` entries
   (interrupted removals, Remove's pending work) and ``.cim`` files with foreign names are
   collected too. A snapshot created
   afterwards may get the same fresh ID (after a crash rolled the sequence back), and
   then finds the name free.
2. :func:`destroy_retired`, outside the metastore lock: unlink the retired images, then
   sweep region/objectid files and temporary images no remaining ``.cim`` references
   (postponed only while a CIM writer is active, see :func:`cimsnap.wclayer.sweep_regions`),
   and delete the retired entries.

Both phases are idempotent, and an entry that vanished meanwhile (a concurrent Remove or
the :class:`Reaper` got there first) counts as reclaimed. Other directories in
``cim-layers`` and names in ``snapshots/`` that look like nothing of ours are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import stat
import threading
from collections.abc import Callable, Set
from dataclasses import dataclass

from cimsnap.snapshots.rootdir import (
    DIR_MODE,
    REMOVAL_PREFIX,
    RootDirs,
    remove_entry,
    retire_entry,
)
from cimsnap.wclayer import sweep_regions
from cimsnap.wclayer.layer_files import CIM_LAYERS_DIR

__all__ = [
    "REMOVAL_PREFIX",
    "CleanupReport",
    "Reaper",
    "Retired",
    "destroy_retired",
    "retire_orphans",
    "snapshot_id",
]

_log = logging.getLogger(__name__)

_CIM_SUFFIX = ".cim"


@dataclass(frozen=True, slots=True)
class Retired:
    """Entries set aside by :func:`retire_orphans`: names in ``snapshots/`` to delete,
    names in ``cim-layers/`` to unlink, how many strays were unlinked at once, and
    directories in ``cim-layers/`` named like images (or retired) to delete."""

    directories: tuple[str, ...]
    images: tuple[str, ...]
    unlinked: int = 0
    layer_directories: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What one cleanup did: entries reclaimed, whether the region sweep ran, region and
    objectid files it deleted."""

    reclaimed: int
    swept: bool
    regions_removed: int


def snapshot_id(name: str) -> int | None:
    """The snapshot ID a directory entry is named after (``"12"`` -> 12), else None."""
    return int(name) if name.isascii() and name.isdigit() else None


def retire_orphans(dirs: RootDirs, live_ids: Set[int]) -> Retired:
    """Phase 1: rename unreferenced entries out of the way; see the module docstring.

    The caller must hold the metastore write lock and the build lock. Raises OSError
    if a directory cannot be listed or an entry cannot be renamed.
    """
    directories: list[str] = []
    with os.scandir(dirs.snapshots_fd) as entries:
        for entry in entries:
            name = entry.name
            if name == CIM_LAYERS_DIR:
                continue
            if name.startswith(REMOVAL_PREFIX):
                directories.append(name)
                continue
            sid = snapshot_id(name)
            if sid is None:
                continue
            real = entry.is_dir(follow_symlinks=False)
            if real and sid in live_ids:
                continue
            retired = retire_entry(dirs.snapshots_fd, name, name)
            if retired is not None:
                directories.append(retired)
            if not real and sid in live_ids:
                _log.error(
                    "snapshots/%s was not a directory (retired, never followed); "
                    "snapshot %d gets an empty one",
                    name,
                    sid,
                )
                os.mkdir(name, DIR_MODE, dir_fd=dirs.snapshots_fd)
    images: list[str] = []
    layer_directories: list[str] = []
    unlinked = 0
    with os.scandir(dirs.cim_fd) as entries:
        for entry in entries:
            name = entry.name
            if not entry.is_file(follow_symlinks=False):
                if entry.is_dir(follow_symlinks=False):
                    if name.startswith(REMOVAL_PREFIX):
                        layer_directories.append(name)
                    elif name.endswith(_CIM_SUFFIX):
                        retired = retire_entry(dirs.cim_fd, name, name[: -len(_CIM_SUFFIX)])
                        if retired is not None:
                            layer_directories.append(retired)
                    continue
                _log.warning("cleanup: unlinking cim-layers/%s: not a regular file", name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dirs.cim_fd)
                unlinked += 1
                continue
            if not name.endswith(_CIM_SUFFIX):
                continue
            stem = name[: -len(_CIM_SUFFIX)]
            sid = snapshot_id(stem)
            if sid is None:
                images.append(name)
            elif sid not in live_ids:
                retired = retire_entry(dirs.cim_fd, name, stem, _CIM_SUFFIX)
                if retired is not None:
                    images.append(retired)
    return Retired(
        tuple(sorted(directories)),
        tuple(sorted(images)),
        unlinked,
        tuple(sorted(layer_directories)),
    )


def destroy_retired(dirs: RootDirs, retired: Retired) -> CleanupReport:
    """Phase 2: destroy what phase 1 retired; failures are logged and retried next time.

    The caller holds the build lock (no CIM writer of this process is active).
    """
    # Unlink the retired images first, then sweep every region set no remaining image
    # references, once (destroying them one by one would re-read all headers each time).
    for image in retired.images:
        try:
            os.unlink(image, dir_fd=dirs.cim_fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            _log.warning("cleanup: cannot remove %s: %s", image, e)
    sweep = sweep_regions(dirs.cim_layers)
    for path in sweep.removed:
        _log.info("cleanup: removed unreferenced %s", path.name)
    for name in retired.directories:
        remove_entry(dirs.snapshots_fd, name)
    for name in retired.layer_directories:
        remove_entry(dirs.cim_fd, name)
    return CleanupReport(
        reclaimed=len(retired.directories)
        + len(retired.images)
        + retired.unlinked
        + len(retired.layer_directories),
        swept=sweep.ran,
        regions_removed=len(sweep.removed),
    )


def remove_scratch(dirs: RootDirs, sid: int, scratch: str) -> None:
    """Delete ``snapshots/<sid>/<scratch>`` if it is there, never through a link."""
    try:  # the common case, nothing there, in one syscall (Cleanup asks for every layer)
        os.stat(f"{sid}/{scratch}", dir_fd=dirs.snapshots_fd, follow_symlinks=False)
    except OSError:
        return  # nothing (or no directory) there; a link at <sid> is never deleted through
    try:
        fd = os.open(
            str(sid),
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
            dir_fd=dirs.snapshots_fd,
        )
    except OSError:
        return  # missing, or not a directory: cleanup's phase 1 deals with it
    try:
        mode = os.stat(scratch, dir_fd=fd, follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            remove_entry(fd, scratch)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


class Reaper:
    """One background thread doing reclaim work handed over by Remove and Prepare.

    Remove answers under containerd's GC lock (§8.4), so it only deletes the row and
    renames the directory; the file work (destroying the CIM, deleting ``rm-<id>``) is
    :meth:`submit`-ted here. It is crash-safe because every item only reclaims what no row
    references: if the process dies first, the next Cleanup (run once at every start)
    finds the same entries and finishes them. Items run in submission order; a failing
    item is logged and left for Cleanup. ``close()`` finishes the running item, drops the
    rest (Cleanup reclaims them) and joins the thread; it is idempotent.
    """

    def __init__(self, name: str = "cimsnap-reaper") -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._idle = threading.Condition()
        self._pending = 0
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        """Queue ``work`` (it must raise only OSError or CimsnapError); no-op once closed."""
        with self._idle:
            if self._closed:
                return
            self._pending += 1
        self._queue.put(work)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted item has run; False if ``timeout`` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        """Stop after the running item and join the thread (idempotent)."""
        with self._idle:
            if self._closed:
                return
            self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                with self._idle:
                    closed = self._closed
                if not closed:
                    work()
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
