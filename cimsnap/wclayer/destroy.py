"""Destroying one layer's CIM without breaking its relatives (hcsshim ``DestroyCimLayer``).

Contract [choice]: callers pass the ``.cim`` path itself, ``destroy_cim_layer(cim_path)``.
containerd's cimfs snapshotter keeps ``<root>/snapshots/cim-layers/<id>.cim`` for snapshot
``<id>`` and passes that path down (its ``Remove`` calls ``DestroyCim(<id>.cim)``); naming
the file explicitly avoids parsing IDs out of ``rm-<id>`` directory names.

Forked images share region files: a fork's header lists its
parents' region sets, and several ``.cim`` files in one directory may reference the same
set. So a layer's own region and objectid files are deleted only when no *other* ``.cim``
in the directory references their set, and never files of its parents' sets.
"""

from __future__ import annotations

import logging
import os
import stat
import uuid
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path

from cimsnap.cim import (
    CimFormatError,
    CimSharingViolationError,
    read_image_header,
    reclaim_unreferenced,
    region_set_files,
)

__all__ = [
    "Sweep",
    "destroy_cim_layer",
    "referenced_region_sets",
    "sweep_regions",
    "sweep_unreferenced_regions",
]

_log = logging.getLogger(__name__)


def referenced_region_sets(directory: Path, *, excluding: Path | None = None) -> set[uuid.UUID]:
    """Return the GUIDs of every region set that some ``*.cim`` in ``directory`` references.

    Both the images' own sets and their parent sets count. ``excluding`` names one image to
    ignore. Raises CimFormatError or OSError if any image header cannot be read: callers
    must then delete no region file, since an unreadable image may reference any of them.
    """
    referenced: set[uuid.UUID] = set()
    for cim in sorted(directory.glob("*.cim")):
        if excluding is not None and cim.name == excluding.name:
            continue
        if not _is_regular(cim):
            continue  # a link or stray entry is never read as an image (cleanup retires it)
        try:
            header = read_image_header(cim)
        except FileNotFoundError:
            continue  # removed concurrently: it references nothing any more
        referenced.update(rs.guid for rs in header.region_sets)
    return referenced


def destroy_cim_layer(
    cim_path: Path, *, referenced_elsewhere: AbstractSet[uuid.UUID] | None = None
) -> None:
    """Remove the image ``cim_path`` and the region/objectid files only it uses.

    * No ``.cim`` at ``cim_path``: nothing to do (hcsshim's safety check); returns. A
      ``cim_path`` that is not a regular file (a symbolic link, ...) is unlinked as itself,
      never read: nothing else is removed; a directory there is left alone (logged).
    * The ``.cim`` is unlinked first, so a crash never leaves an image whose regions are
      gone; its own region set's files follow unless another image references that set.
      Parents' files are never touched.
    * ``referenced_elsewhere``: the region-set GUIDs other images use, when the caller
      knows them; ``None`` (the default) reads every other ``.cim`` header in the
      directory, which costs O(images) file reads.
    * If the image's own header is unreadable, or (when scanning) another image's header
      is, only the ``.cim`` is removed and the region files are left for the sweep
      (:func:`sweep_unreferenced_regions`, run by ``Snapshotter.cleanup``); this is logged.

    Raises OSError if the ``.cim`` cannot be unlinked (then nothing was removed), or if a
    region file cannot be unlinked (the ``.cim`` is already gone; the sweep finishes it).
    """
    directory = cim_path.parent
    try:
        mode = os.lstat(cim_path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        _log.warning("%s is a directory, not an image; left for cleanup", cim_path)
        return
    if not stat.S_ISREG(mode):
        # Never read through a link: its target could name any region set. The entry
        # itself is removed (unlink never follows).
        _log.warning("removing %s, which is not a regular file", cim_path)
        cim_path.unlink(missing_ok=True)
        return
    try:
        header = read_image_header(cim_path)
    except FileNotFoundError:
        return
    except CimFormatError as e:
        _log.warning("destroying unreadable image %s; its region files are left: %s", cim_path, e)
        cim_path.unlink(missing_ok=True)
        return
    if referenced_elsewhere is None:
        try:
            referenced_elsewhere = referenced_region_sets(directory, excluding=cim_path)
        except (CimFormatError, OSError) as e:
            _log.warning(
                "cannot read every image in %s (%s); keeping %s's regions", directory, e, cim_path
            )
            cim_path.unlink(missing_ok=True)
            return
    cim_path.unlink(missing_ok=True)
    if header.own.guid in referenced_elsewhere:
        return
    # No directory fsync: an unlink lost in a crash only resurrects a file that no image
    # references, which the sweep removes.
    for path in region_set_files(directory, header.own):
        path.unlink(missing_ok=True)


@dataclass(frozen=True, slots=True)
class Sweep:
    """Outcome of one region sweep: whether it ran, and the files it deleted."""

    ran: bool
    removed: tuple[Path, ...]


def sweep_regions(directory: Path) -> Sweep:
    """Delete region/objectid files no image in ``directory`` references, and temp images.

    ``cimsnap.cim.reclaim_unreferenced`` does the work under the CIM writers' directory
    lock. Images removed while it reads (a concurrent Remove) reference nothing and do not
    stop it. It does not run (``ran`` False, logged) only when a CIM writer is active (its
    files are referenced by no ``.cim`` yet: left for the next sweep) or some image header,
    or the directory, cannot be read (nothing is deleted then).
    """
    try:
        return Sweep(True, tuple(reclaim_unreferenced(directory)))
    except CimSharingViolationError:
        _log.info("a CIM writer is active in %s; region sweep postponed", directory)
    except (CimFormatError, OSError) as e:
        _log.warning("cannot read every image in %s (%s); region sweep skipped", directory, e)
    return Sweep(False, ())


def sweep_unreferenced_regions(directory: Path) -> list[Path]:
    """:func:`sweep_regions`, returning only the paths deleted (empty if it did not run)."""
    return list(sweep_regions(directory).removed)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False
