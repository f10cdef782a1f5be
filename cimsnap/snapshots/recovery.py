"""What the snapshotter checks and repairs when it opens a root (restart after a crash)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from cimsnap.snapshots.reclaim import REMOVAL_PREFIX
from cimsnap.store import Kind
from cimsnap.wclayer.layer_files import cim_layer_problem

__all__ = ["recover_snapshot_files"]

_log = logging.getLogger(__name__)


def recover_snapshot_files(
    snapshots_dir: Path, cim_dir: Path, kinds: Mapping[int, Kind]
) -> frozenset[int]:
    """Restore the directory of every snapshot in ``kinds``; return damaged committed IDs.

    * Every row gets its ``snapshots/<id>`` back (the metastore is the source of truth):
      renamed from ``rm-<id>`` if a Remove crashed after its rename but before its commit
      (the row survived, so the directory is still in use and cleanup must not reap it),
      else recreated empty.
    * containerd-integration.md §8.2: a committed row whose CIM is missing or broken (e.g.
      a power loss on a filesystem that lost unsynced data) is logged as an error and its
      ID returned; the snapshotter then refuses it as a parent (FailedPrecondition) until
      it is removed and pulled again. [choice] Opening does not fail: that would also
      block the Remove needed to repair it (the peers' top complaint, §8.4).

    Raises OSError if a directory cannot be created or renamed.
    """
    damaged: set[int] = set()
    for snapshot_id, kind in kinds.items():
        path = snapshots_dir / str(snapshot_id)
        removing = snapshots_dir / f"{REMOVAL_PREFIX}{snapshot_id}"
        if not path.exists() and removing.is_dir():
            _log.warning("restoring %s of a remove that did not commit", removing)
            os.rename(removing, path)
        path.mkdir(exist_ok=True)
        if kind != Kind.COMMITTED:
            continue
        problem = cim_layer_problem(cim_dir / f"{snapshot_id}.cim")
        if problem is not None:
            _log.error("committed snapshot %d is damaged: %s", snapshot_id, problem)
            damaged.add(snapshot_id)
    return frozenset(damaged)
