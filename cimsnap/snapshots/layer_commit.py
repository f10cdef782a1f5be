"""Making the layer of an active snapshot exist and be durable before Commit's metadata.

See the "Commit" part of :mod:`cimsnap.snapshots.snapshotter`'s docstring for the rules.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cimsnap.errdefs import FailedPrecondition, NotFound
from cimsnap.snapshots.rootdir import (
    DIR_MODE,
    RootDirs,
    entry_mode,
    open_subdir,
    remove_entry,
)
from cimsnap.store import SnapshotRef
from cimsnap.wclayer import destroy_cim_layer
from cimsnap.wclayer.layer_files import cim_layer_problem
from cimsnap.wclayer.scratch import build_scratch_layer

__all__ = [
    "EMPTY_SOURCE_DIR",
    "SCRATCH_DIR",
    "build_empty_layer",
    "can_defer_layer",
    "materialise_layer",
]

#: The writable directory inside ``snapshots/<id>/`` that commit turns into a layer.
SCRATCH_DIR = "scratch"

#: The private, always empty directory under the root that deferred empty layers are
#: built from (:func:`build_empty_layer`).
EMPTY_SOURCE_DIR = "empty"


def materialise_layer(
    dirs: RootDirs,
    build_lock: threading.Lock,
    ref: SnapshotRef,
    *,
    extract: bool,
) -> bool:
    """Ensure ``cim-layers/<id>.cim`` exists and is durable; return True if built here.

    ``ref`` is the snapshot being committed (its future parent chain). An ``extract``
    snapshot whose ``.cim`` exists (the differ wrote it) is only checked: FailedPrecondition
    if its header is invalid or one of its own files is missing, empty or not a regular file.
    Otherwise a leftover ``.cim`` of an interrupted commit is destroyed and the scratch
    directory (created empty if absent) is built into a CIM forked from the immediate
    parent's, under ``build_lock``. ``snapshots/<id>`` and its ``scratch`` are opened
    without following links (:mod:`cimsnap.snapshots.rootdir`): a link or file in their
    place fails with FailedPrecondition and nothing outside the root is read. NotFound if
    the directory is gone (removed meanwhile). Errors as
    :func:`cimsnap.wclayer.scratch.build_scratch_layer`; then no new ``.cim`` remains.
    """
    cim_path = dirs.cim_layers / f"{ref.id}.cim"
    if extract and entry_mode(dirs.cim_fd, cim_path.name) is not None:
        # Durability: the CIM writer (cimsnap.cim.image_files) fsyncs every region and
        # objectid file and the directory *before* renaming the .cim into place, and
        # fsyncs the directory after. A visible .cim therefore implies durable data, so
        # only its integrity is checked here (re-fsyncing clean files cost ~4 fsyncs).
        problem = cim_layer_problem(cim_path)
        if problem is not None:
            raise FailedPrecondition(
                f"layer of snapshot {ref.id} is damaged: {problem}: failed precondition"
            )
        return False
    parent = dirs.cim_layers / f"{ref.parent_ids[0]}.cim" if ref.parent_ids else None
    snapshot_dir = dirs.snapshots / str(ref.id)
    source = snapshot_dir / SCRATCH_DIR
    with build_lock:
        dirs.check()
        # A leftover .cim of this still-active snapshot: nothing forks from an active.
        destroy_cim_layer(cim_path, referenced_elsewhere=frozenset())
        try:
            snapshot_fd = open_subdir(dirs.snapshots_fd, str(ref.id))
        except FileNotFoundError:  # snapshots/<id> is gone: removed meanwhile
            raise NotFound(f"snapshot {ref.id} was removed: not found") from None
        except NotADirectoryError:
            raise FailedPrecondition(
                f"{snapshot_dir} is not a directory (a symbolic link or file in its place is "
                "never followed; cleanup retires it): failed precondition"
            ) from None
        try:
            _build_from(snapshot_fd, source, cim_path, parent)
        finally:
            os.close(snapshot_fd)
    return True


def can_defer_layer(dirs: RootDirs, snapshot_id: int, *, extract: bool) -> bool:
    """True if committing active ``snapshot_id`` gives an empty layer (its CIM may wait).

    That is an ``extract`` snapshot whose ``.cim`` was never written, or any other active
    whose ``scratch/`` is absent or empty. Anything unexpected (a link or file in place of
    the directories) answers False, so the synchronous path reports it as it always did.
    """
    if extract:
        return entry_mode(dirs.cim_fd, f"{snapshot_id}.cim") is None
    try:
        snapshot_fd = open_subdir(dirs.snapshots_fd, str(snapshot_id))
    except OSError:
        return False
    try:
        try:
            scratch_fd = open_subdir(snapshot_fd, SCRATCH_DIR)
        except FileNotFoundError:
            return True
        except OSError:
            return False
        try:
            with os.scandir(scratch_fd) as entries:
                return next(entries, None) is None
        finally:
            os.close(scratch_fd)
    finally:
        os.close(snapshot_fd)


def build_empty_layer(dirs: RootDirs, snapshot_id: int, parent_id: int | None) -> None:
    """Build ``cim-layers/<snapshot_id>.cim`` as an empty layer forked from ``parent_id``'s.

    For a committed layer that Commit left pending (:mod:`cimsnap.snapshots.pending`); the
    caller holds the build lock and has checked that the row is still pending, so no image
    forks from this one yet. Whatever a crashed earlier build left at ``<id>.cim`` is
    destroyed first. The source is ``<root>/``:data:`EMPTY_SOURCE_DIR`, a private directory
    kept empty for this purpose (made on first use, re-made if anything is found in it: a
    layer is never built from content), so a build costs no directory creation or removal.
    The committed snapshot's own empty ``scratch/`` is left for the caller to reclaim.
    Same durability as a Commit's build (the CIM writer fsyncs everything before the
    ``.cim`` appears). Errors as :func:`cimsnap.wclayer.scratch.build_scratch_layer`
    (FailedPrecondition if the parent's CIM is missing or damaged).
    """
    cim_path = dirs.cim_layers / f"{snapshot_id}.cim"
    parent = None if parent_id is None else dirs.cim_layers / f"{parent_id}.cim"
    dirs.check()
    destroy_cim_layer(cim_path, referenced_elsewhere=frozenset())
    source_fd = _empty_source(dirs)
    try:
        build_scratch_layer(
            dirs.root / EMPTY_SOURCE_DIR, cim_path, parent=parent, source_fd=source_fd
        )
    finally:
        os.close(source_fd)


def _empty_source(dirs: RootDirs) -> int:
    """Open ``<root>/empty`` (never through a link), made or re-made empty as needed."""
    for attempt in range(2):
        try:
            fd = open_subdir(dirs.root_fd, EMPTY_SOURCE_DIR)
        except FileNotFoundError:
            os.mkdir(EMPTY_SOURCE_DIR, DIR_MODE, dir_fd=dirs.root_fd)
            fd = open_subdir(dirs.root_fd, EMPTY_SOURCE_DIR)
        except NotADirectoryError:  # a link or file in its place: removed, never followed
            remove_entry(dirs.root_fd, EMPTY_SOURCE_DIR)
            continue
        with os.scandir(fd) as entries:  # reads through a duplicate of fd
            empty = next(entries, None) is None
        if empty:
            os.lseek(fd, 0, os.SEEK_SET)  # the duplicate shared the directory position
            return fd
        os.close(fd)
        if attempt == 0:
            remove_entry(dirs.root_fd, EMPTY_SOURCE_DIR)
    raise FailedPrecondition(
        f"{dirs.root / EMPTY_SOURCE_DIR} cannot be made empty to build an empty layer: "
        "failed precondition"
    )


def _build_from(snapshot_fd: int, source: Path, cim_path: Path, parent: Path | None) -> None:
    """Build ``cim_path`` from ``<snapshot_fd>/scratch`` (made empty if absent)."""
    name = SCRATCH_DIR
    made_source = False
    try:
        source_fd = open_subdir(snapshot_fd, name)
    except FileNotFoundError:
        os.mkdir(name, DIR_MODE, dir_fd=snapshot_fd)
        made_source = True
        source_fd = open_subdir(snapshot_fd, name)
    except NotADirectoryError:
        raise FailedPrecondition(
            f"scratch {source} is not a directory: failed precondition"
        ) from None
    try:
        build_scratch_layer(source, cim_path, parent=parent, source_fd=source_fd)
    except BaseException:
        if made_source:  # leave the snapshot as it was
            os.rmdir(name, dir_fd=snapshot_fd)
        raise
    finally:
        os.close(source_fd)
