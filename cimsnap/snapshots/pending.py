"""Empty layers whose CIM is built after their Commit returned (deferred materialisation).

A Commit whose layer is empty (an ``extract`` snapshot the differ never wrote, or an
active whose ``scratch/`` is empty) records the committed row with ``layer_pending = 1``
in the same transaction as today, and returns. The layer's CIM is an empty fork of the
parent's CIM, so it is a pure function of the parent and can always be reproduced; it is
built:

* by the background worker of :class:`PendingLayers`, queued by Commit to start
  :data:`DEFAULT_BUILD_DELAY` seconds later (a build is 7 fsyncs and CPU under the GIL:
  run during a burst of calls it would slow them down, and a layer removed meanwhile, as
  containerd does with short-lived snapshots, is never built), and at start, at once, for
  every pending row the metastore holds (a crash before or during a build loses nothing);
* at the latest by whoever needs the file, through :meth:`PendingLayers.ensure`
  (``Snapshotter.ensure_layer_cims``): Prepare and View of any child (the mounts they
  return name the parents' CIMs, which runhcs mounts and any differ, ours or containerd's
  own on Windows, forks from), Mounts, Commit of a scratch child (it forks from the
  parent), Usage of the layer, and our differ before it forks a layer from its parents.

Rules that keep it crash-safe (the durability order is unchanged: data, directory,
metadata):

* A build runs under the snapshotter's build lock (one CIM writer; Cleanup and Remove's
  file work take the same lock, so they never see a half-built layer's files). It first
  re-reads the row: a removed snapshot is not built. Then any ``.cim`` a crashed build left
  is destroyed and rebuilt (the CIM writer fsyncs regions, objectid files and the directory
  before renaming the ``.cim`` into place), and only then is ``layer_pending`` cleared in
  its own transaction. A crash anywhere leaves a pending row; the next start rebuilds it.
* Nothing forks from a pending layer: :meth:`PendingLayers.ensure` returns only after the
  flag is cleared, and builds a chain of pending layers base first. So destroying and
  rebuilding a pending layer's CIM never breaks another image.
* A pending row is not damage: recovery does not refuse it as a parent, and
  ``cimsnap fsck`` reports it as a note.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Final

from cimsnap.errdefs import CimsnapError, NotFound
from cimsnap.snapshots.layer_commit import build_empty_layer
from cimsnap.snapshots.reclaim import Reaper
from cimsnap.snapshots.rootdir import RootDirs
from cimsnap.store import Store, clear_layer_pending, layer_pending

__all__ = ["DEFAULT_BUILD_DELAY", "PendingLayers"]

_log = logging.getLogger(__name__)

#: Seconds between a Commit and the background build of its empty layer [choice: long
#: enough to keep builds out of a burst of snapshot calls, short enough that a layer
#: nobody asks for is on disk about a second later].
DEFAULT_BUILD_DELAY: Final = 1.0


class PendingLayers:
    """The pending layers of one snapshotter root and the worker that builds them.

    ``pending`` maps each pending snapshot ID to its parent's ID (None for a base layer),
    as :func:`cimsnap.store.pending_layers` reads it at start; each is queued for a build
    at once. ``delay``: seconds a Commit's build waits (:data:`DEFAULT_BUILD_DELAY`).
    ``built(id)`` is called after each build (the snapshotter hands the deletion of the
    committed snapshot's empty ``scratch/`` to its reaper).
    Thread-safe. ``close()`` finishes the build running, drops the queue (the rows stay
    pending, so the next start builds them) and is idempotent.
    """

    def __init__(
        self,
        dirs: RootDirs,
        store: Store,
        build_lock: threading.Lock,
        pending: Mapping[int, int | None],
        *,
        delay: float = DEFAULT_BUILD_DELAY,
        built: Callable[[int], None] | None = None,
    ) -> None:
        self._dirs = dirs
        self._store = store
        self._build_lock = build_lock
        self._delay = delay
        self._built = built
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: dict[int, int | None] = dict(pending)
        self._worker = Reaper(name="cimsnap-layers")
        for snapshot_id in sorted(self._pending):
            self.schedule(snapshot_id, delayed=False)

    def __bool__(self) -> bool:
        """True while some layer is pending (a cheap check for the request paths)."""
        return bool(self._pending)

    def ids(self) -> frozenset[int]:
        """The IDs of the layers still pending."""
        with self._lock:
            return frozenset(self._pending)

    def add(self, snapshot_id: int, parent_id: int | None) -> None:
        """Record a pending layer; Commit calls it inside its transaction, before COMMIT,
        so no Prepare that sees the committed row can miss it."""
        with self._lock:
            self._pending[snapshot_id] = parent_id

    def discard(self, snapshot_id: int) -> None:
        """Forget ``snapshot_id`` (its Commit failed, or it was removed)."""
        with self._lock:
            self._pending.pop(snapshot_id, None)

    def schedule(self, snapshot_id: int, *, delayed: bool = True) -> None:
        """Queue a background build of ``snapshot_id`` (and its pending parents), to start
        after the delay (``delayed``) or as soon as the worker is free."""
        due = time.monotonic() + (self._delay if delayed else 0.0)
        self._worker.submit(lambda: self._background(snapshot_id, due))

    def ensure(self, snapshot_ids: Iterable[int]) -> None:
        """Return once the CIM of every layer in ``snapshot_ids`` exists (built here if
        pending, base first, or waited for if the worker is building it).

        IDs that are not pending (including IDs of actives, views and removed snapshots)
        are ignored, so callers may pass a whole parent chain. Raises the build's errors
        (FailedPrecondition if a parent's CIM is missing or damaged, Unavailable if another
        CIM writer holds the directory too long, OSError); the layer then stays pending.
        """
        if not self._pending:
            return
        with self._lock:
            order: list[int] = []
            for snapshot_id in snapshot_ids:
                chain: list[int] = []
                current: int | None = snapshot_id
                while current is not None and current in self._pending and current not in order:
                    chain.append(current)
                    current = self._pending[current]
                order.extend(reversed(chain))
        for snapshot_id in order:
            self._build(snapshot_id)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the queued background builds have run; False if ``timeout`` passed."""
        return self._worker.wait_idle(timeout)

    def close(self) -> None:
        """Stop the worker after its running build (idempotent)."""
        self._stop.set()
        self._worker.close()

    def _build(self, snapshot_id: int) -> None:
        with self._build_lock:
            with self._lock:
                if snapshot_id not in self._pending:
                    return  # built meanwhile (by the worker or another caller), or removed
                parent_id = self._pending[snapshot_id]
            with self._store.read() as tx:
                state = layer_pending(tx, snapshot_id)
            if state:
                build_empty_layer(self._dirs, snapshot_id, parent_id)
                with self._store.write() as wtx:
                    clear_layer_pending(wtx, snapshot_id)
            self.discard(snapshot_id)
        if state and self._built is not None:
            self._built(snapshot_id)

    def _background(self, snapshot_id: int, due: float) -> None:
        remaining = due - time.monotonic()
        if remaining > 0 and self._stop.wait(remaining):
            return  # closing: the row stays pending, the next start builds it
        try:
            self.ensure((snapshot_id,))
        except NotFound:
            self.discard(snapshot_id)  # removed while it was being built
        except (CimsnapError, OSError) as e:
            _log.warning(
                "empty layer of snapshot %d not built (retried when needed and at the next "
                "start): %s",
                snapshot_id,
                e,
            )
