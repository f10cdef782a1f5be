"""Finding and removing snapshot files that no metastore row references (``Cleanup``).

Two phases, so the metastore's write lock is held only for cheap renames (§8.3, §8.4):

1. :func:`retire_orphans`, called while no snapshot can be created, removed or committed:
   every ``snapshots/<id>`` whose ID has no row is renamed to ``rm-<id>``, every
   ``cim-layers/<id>.cim`` likewise to ``rm-<id>.cim``. A snapshot created afterwards may
   get the same fresh ID (after a crash rolled the sequence back), and then finds the name
   free. Existing ``rm-*`` entries (interrupted removals) and ``.cim`` files with foreign
   names are collected too.
2. :func:`destroy_retired`, outside the metastore lock: unlink the retired images, then
   sweep region/objectid files and temporary images no remaining ``.cim`` references (only
   while no CIM writer is active, else at the next cleanup), and delete the retired
   directories.

Both phases are idempotent. Entries that are not directories or ``.cim`` files, and names
this module does not recognise, are left alone.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Set
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cimsnap.wclayer import sweep_unreferenced_regions

__all__ = ["REMOVAL_PREFIX", "Retired", "destroy_retired", "remove_tree", "retire_orphans"]

_log = logging.getLogger(__name__)

#: Prefix of entries set aside for deletion: ``rm-<id>`` by Remove, ``rm-<id>[.n][.cim]`` here.
REMOVAL_PREFIX: Final = "rm-"


@dataclass(frozen=True, slots=True)
class Retired:
    """Entries set aside by :func:`retire_orphans`: directories and images to destroy."""

    directories: tuple[Path, ...]
    images: tuple[Path, ...]


def _snapshot_id(name: str) -> int | None:
    return int(name) if name.isascii() and name.isdigit() else None


def _retire(path: Path, stem: str, suffix: str) -> Path:
    target = path.with_name(f"{REMOVAL_PREFIX}{stem}{suffix}")
    n = 0
    while target.exists():
        n += 1
        target = path.with_name(f"{REMOVAL_PREFIX}{stem}.{n}{suffix}")
    os.rename(path, target)
    return target


def retire_orphans(snapshots_dir: Path, cim_dir: Path, live_ids: Set[int]) -> Retired:
    """Phase 1: rename unreferenced entries out of the way; see the module docstring.

    The caller must hold the metastore write lock and the build lock. Raises OSError
    if a directory cannot be listed or an entry cannot be renamed.
    """
    directories: list[Path] = []
    for entry in os.scandir(snapshots_dir):
        path = Path(entry.path)
        if path == cim_dir or not entry.is_dir(follow_symlinks=False):
            continue
        if entry.name.startswith(REMOVAL_PREFIX):
            directories.append(path)
            continue
        snapshot_id = _snapshot_id(entry.name)
        if snapshot_id is not None and snapshot_id not in live_ids:
            directories.append(_retire(path, entry.name, ""))
    images: list[Path] = []
    for entry in os.scandir(cim_dir):
        if not entry.name.endswith(".cim") or not entry.is_file(follow_symlinks=False):
            continue
        stem = entry.name[: -len(".cim")]
        snapshot_id = _snapshot_id(stem)
        if snapshot_id is None:
            images.append(Path(entry.path))
        elif snapshot_id not in live_ids:
            images.append(_retire(Path(entry.path), stem, ".cim"))
    return Retired(tuple(sorted(directories)), tuple(sorted(images)))


def destroy_retired(cim_dir: Path, retired: Retired) -> None:
    """Phase 2: destroy what phase 1 retired; failures are logged and retried next time."""
    # Unlink the retired images first, then sweep every region set no remaining image
    # references, once (destroying them one by one would re-read all headers each time).
    for image in retired.images:
        try:
            image.unlink(missing_ok=True)
        except OSError as e:
            _log.warning("cleanup: cannot remove %s: %s", image, e)
    try:
        for path in sweep_unreferenced_regions(cim_dir):
            _log.info("cleanup: removed unreferenced %s", path.name)
    except OSError as e:
        _log.warning("cleanup: cannot sweep %s: %s", cim_dir, e)
    for directory in retired.directories:
        remove_tree(directory)


def remove_tree(path: Path) -> None:
    """Delete the tree at ``path`` as far as possible; never raises for a failed entry.

    Entries that vanish meanwhile are fine (a concurrent removal or cleanup got there
    first); any other failure is logged and the entry left for the next cleanup.
    """
    shutil.rmtree(path, onerror=_log_error)


def _log_error(function: object, path: str, exc_info: tuple[type, BaseException, object]) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        _log.warning("cannot remove %s, left for cleanup: %s", path, exc_info[1])
