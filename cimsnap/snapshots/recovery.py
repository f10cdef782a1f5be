"""What the snapshotter checks and repairs when it opens a root (restart after a crash)."""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping, Set

from cimsnap.snapshots.rootdir import DIR_MODE, REMOVAL_PREFIX, RootDirs, entry_mode, retire_entry
from cimsnap.store import Kind
from cimsnap.wclayer.layer_files import cim_layer_problem

__all__ = ["recover_snapshot_files"]

_log = logging.getLogger(__name__)


def recover_snapshot_files(
    dirs: RootDirs, kinds: Mapping[int, Kind], *, pending: Set[int] = frozenset()
) -> frozenset[int]:
    """Restore the directory of every snapshot in ``kinds``; return damaged committed IDs.

    * Every row gets its ``snapshots/<id>`` back (the metastore is the source of truth):
      renamed from ``rm-<id>`` if a Remove crashed after its rename but before its commit
      (the row survived, so the directory is still in use and cleanup must not reap it),
      else recreated empty (``0700``). Something other than a directory at
      ``snapshots/<id>`` (a file, a symbolic link) is retired, never followed, and
      replaced by an empty directory; Cleanup reclaims what was retired.
    * A committed row whose CIM is missing or broken (e.g.
      a power loss on a filesystem that lost unsynced data) is logged as an error and its
      ID returned; the snapshotter then refuses it as a parent (FailedPrecondition) until
      it is removed and pulled again. [choice] Opening does not fail: that would also
      block the Remove needed to repair it (the peers' top complaint, §8.4).
    * Committed IDs in ``pending`` (empty layers whose CIM Commit deferred) are not checked:
      their CIM is rebuilt from the parent (:mod:`cimsnap.snapshots.pending`).

    Raises OSError if a directory cannot be created or renamed.
    """
    damaged: set[int] = set()
    fd = dirs.snapshots_fd
    for snapshot_id, kind in kinds.items():
        name = str(snapshot_id)
        removing = f"{REMOVAL_PREFIX}{snapshot_id}"
        mode = entry_mode(fd, name)
        if mode is not None and not stat.S_ISDIR(mode):
            _log.error("snapshots/%s is not a directory: retired, never followed", name)
            retire_entry(fd, name, name)
            mode = None
        if mode is None:
            removing_mode = entry_mode(fd, removing)
            if removing_mode is not None and stat.S_ISDIR(removing_mode):
                _log.warning("restoring snapshots/%s of a remove that did not commit", removing)
                os.rename(removing, name, src_dir_fd=fd, dst_dir_fd=fd)
            else:
                os.mkdir(name, DIR_MODE, dir_fd=fd)
        if kind != Kind.COMMITTED or snapshot_id in pending:
            continue
        problem = cim_layer_problem(dirs.cim_layers / f"{snapshot_id}.cim")
        if problem is not None:
            _log.error("committed snapshot %d is damaged: %s", snapshot_id, problem)
            damaged.add(snapshot_id)
    return frozenset(damaged)
