"""The durability order of the snapshotter: the one place it is written down.

Rule: **data, then directory, then metadata.** File content is fsynced before the name
that makes it visible, the name (the directory entry) is fsynced before the metastore row
that points at it commits, and the row is the only thing that makes a snapshot exist for
containerd. The metastore runs WAL with
``synchronous=FULL`` (:mod:`cimsnap.store.db`), so an acknowledged call survives a power
loss. Whatever a crash leaves without a row is garbage by construction and is reclaimed by
Cleanup, which runs at every start (:mod:`cimsnap.snapshots.reclaim`).

Per operation (the steps in order; a crash between any two is safe):

* **Prepare / View**: in one ``BEGIN IMMEDIATE`` transaction: insert the row, retire
  whatever holds ``snapshots/<id>`` (a crash leftover or a stray), ``mkdir`` it (and
  ``scratch/``), then COMMIT. A crash before COMMIT rolls the row (and the ID) back and
  leaves a directory nobody references: the next Prepare of that ID retires it, Cleanup
  reclaims it. The directory is not fsynced: if it is lost in a power cut, recovery at
  start re-creates the directory of every row.
* **Commit**: (1) the CIM writer (:mod:`cimsnap.cim.image_files`) writes region and
  objectid files under a fresh GUID and fsyncs each; (2) fsyncs ``cim-layers/``; (3)
  writes the ``.cim`` under a temporary name and fsyncs it; (4) renames it to
  ``<id>.cim`` and fsyncs ``cim-layers/`` again; (5) only then the transaction turning
  the active row into the committed one commits. A crash before (4) leaves files no image
  references (the region sweep reclaims them); between (4) and (5) an active row with a
  ``.cim`` (the next Commit destroys and rebuilds it); after (5), the scratch tree is
  deleted (a crash leaves it for Cleanup). An ``extract`` snapshot whose ``.cim`` the
  differ wrote with the same protocol commits metadata only.
* **Commit of an empty layer** (:mod:`cimsnap.snapshots.pending`): (1) one transaction
  commits the row with ``layer_pending = 1``, nothing else; the call returns. (2) Later,
  under the build lock, a build re-reads the row, destroys any ``<id>.cim`` an earlier
  crashed build left, writes the empty fork of the parent's CIM with the CIM writer's
  steps (1)-(4) above, and (3) only then a transaction clears ``layer_pending``. A crash
  anywhere leaves a pending row, and the next start builds it again. Nothing forks from a
  pending layer (whoever needs its CIM waits for step 3), so rebuilding it is safe.
* **Remove**: one transaction deletes the row and renames ``snapshots/<id>`` to
  ``rm-<id>``, then COMMIT (a failed COMMIT renames it back; a crash before COMMIT leaves
  ``rm-<id>`` with a live row, which recovery at start renames back). After the
  acknowledgement, the reaper thread destroys ``<id>.cim`` (the ``.cim`` first, then its
  own region files: no image ever points at missing regions) and deletes ``rm-<id>``.
  A crash there leaves entries without a row: Cleanup at the next start finishes them.
* **Cleanup**: under the write lock, entries without a row are renamed to ``rm-…`` (the
  only metadata read is the set of live IDs; nothing is written); then, outside it,
  retired images are unlinked, unreferenced region files swept (the CIM writer lock is
  held and its deletions fsynced), retired trees deleted. Every step is idempotent.

The crash suite (:mod:`cimsnap.devtools.crashpoints`, run by
``tests/unit/snapshots/test_crash_suite.py``) kills the process with SIGKILL before every
call in :data:`DURABLE_CALLS` and around every metastore COMMIT, restarts, and checks with
:func:`cimsnap.snapshots.fsck.check_root` that no acknowledged snapshot was lost.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DURABLE_CALLS"]

#: The ``os`` functions whose effect on the root survives a crash: the points between
#: which the order above must hold (and where the crash suite injects SIGKILL).
DURABLE_CALLS: Final = ("rename", "replace", "unlink", "rmdir", "mkdir", "fsync")
