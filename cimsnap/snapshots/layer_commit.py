"""Making the layer of an active snapshot exist and be durable before Commit's metadata.

See the "Commit" part of :mod:`cimsnap.snapshots.snapshotter`'s docstring for the rules.
"""

from __future__ import annotations

import threading
from pathlib import Path

from cimsnap.errdefs import FailedPrecondition, NotFound
from cimsnap.store import SnapshotRef
from cimsnap.wclayer import destroy_cim_layer
from cimsnap.wclayer.layer_files import cim_layer_problem
from cimsnap.wclayer.scratch import build_scratch_layer

__all__ = ["SCRATCH_DIR", "materialise_layer"]

#: The writable directory inside ``snapshots/<id>/`` that commit turns into a layer.
SCRATCH_DIR = "scratch"


def materialise_layer(
    snapshots_dir: Path,
    cim_dir: Path,
    build_lock: threading.Lock,
    ref: SnapshotRef,
    *,
    extract: bool,
) -> bool:
    """Ensure ``cim_dir/<id>.cim`` exists and is durable; return True if built here.

    ``ref`` is the snapshot being committed (its future parent chain). An ``extract``
    snapshot whose ``.cim`` exists (the differ wrote it) is only checked: FailedPrecondition
    if its header is invalid or one of its own files is missing or empty.
    Otherwise a leftover ``.cim`` of an interrupted commit is destroyed and the scratch
    directory (created empty if absent) is built into a CIM forked from the immediate
    parent's, under ``build_lock``. Errors as
    :func:`cimsnap.wclayer.scratch.build_scratch_layer`; then no new ``.cim`` remains.
    """
    cim_path = cim_dir / f"{ref.id}.cim"
    if extract and cim_path.exists():
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
    parent = cim_dir / f"{ref.parent_ids[0]}.cim" if ref.parent_ids else None
    source = snapshots_dir / str(ref.id) / SCRATCH_DIR
    with build_lock:
        # A leftover .cim of this still-active snapshot: nothing forks from an active.
        destroy_cim_layer(cim_path, referenced_elsewhere=frozenset())
        made_source = not source.exists() and not source.is_symlink()
        if made_source:
            try:
                source.mkdir()
            except FileNotFoundError:  # snapshots/<id> is gone: removed meanwhile
                raise NotFound(f"snapshot {ref.id} was removed: not found") from None
        try:
            build_scratch_layer(source, cim_path, parent=parent)
        except BaseException:
            if made_source:  # leave the snapshot as it was
                source.rmdir()
            raise
    return True
