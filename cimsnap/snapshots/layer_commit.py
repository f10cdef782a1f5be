"""Making the layer of an active snapshot exist and be durable before Commit's metadata.

See the "Commit" part of :mod:`cimsnap.snapshots.snapshotter`'s docstring for the rules.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from cimsnap.errdefs import FailedPrecondition, NotFound
from cimsnap.snapshots.rootdir import DIR_MODE, RootDirs, entry_mode, open_subdir
from cimsnap.store import SnapshotRef
from cimsnap.wclayer import destroy_cim_layer
from cimsnap.wclayer.layer_files import cim_layer_problem
from cimsnap.wclayer.scratch import build_scratch_layer

__all__ = ["SCRATCH_DIR", "materialise_layer"]

#: The writable directory inside ``snapshots/<id>/`` that commit turns into a layer.
SCRATCH_DIR = "scratch"


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


def _build_from(snapshot_fd: int, source: Path, cim_path: Path, parent: Path | None) -> None:
    """Build ``cim_path`` from ``<snapshot_fd>/scratch`` (made empty if absent)."""
    made_source = False
    try:
        source_fd = open_subdir(snapshot_fd, SCRATCH_DIR)
    except FileNotFoundError:
        os.mkdir(SCRATCH_DIR, DIR_MODE, dir_fd=snapshot_fd)
        made_source = True
        source_fd = open_subdir(snapshot_fd, SCRATCH_DIR)
    except NotADirectoryError:
        raise FailedPrecondition(
            f"scratch {source} is not a directory: failed precondition"
        ) from None
    try:
        build_scratch_layer(source, cim_path, parent=parent, source_fd=source_fd)
    except BaseException:
        if made_source:  # leave the snapshot as it was
            os.rmdir(SCRATCH_DIR, dir_fd=snapshot_fd)
        raise
    finally:
        os.close(source_fd)
