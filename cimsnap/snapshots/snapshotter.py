"""The cimfs Snapshotter: containerd's snapshot model on a SQLite metastore and CimFS layers.

Model (containerd ``core/snapshots/snapshotter.go``):

* *Active* snapshots (``prepare``) are writable and can be committed; *views* (``view``)
  are read-only and can never be committed; *committed* snapshots (``commit``) are
  immutable and are the only possible parents. ``""`` is the empty parent.
* Keys (active, view) and names (committed) share one key space. ``key`` names an active
  or view snapshot, ``name`` a committed one, ``parent`` the name of a committed one.
* Keys are opaque strings (containerd sends ``default/7/extract-… sha256:…``); they are
  never used as file names. Namespaces are not interpreted.

Layout under ``root`` (containerd's cimfs snapshotter, §3.1-3.2):

* ``metadata.db``: the metastore (:mod:`cimsnap.store`).
* ``snapshots/<id>/``: one directory per snapshot, ``<id>`` from the metastore sequence.
* ``snapshots/cim-layers/<id>.cim`` plus its ``region_*``/``objectid_*`` files: the layer
  of committed snapshot ``<id>`` (forks sit beside their parents).
* ``snapshots/<id>/scratch/`` [cimsnap extension]: a plain writable directory created by
  ``prepare`` for active snapshots whose key does not contain ``extract``. On Linux,
  containers can't mount CimFS, so this is where files for a new layer are written;
  ``commit`` converts its content into a CIM forked from the parent and then deletes it.
  The conversion is :func:`cimsnap.cim.build_from_directory`: regular files, directories,
  hard links and relative symlinks are stored; OCI whiteouts (``.wh.<name>``,
  ``.wh..wh..opq``) delete from the parent; anything else (FIFOs, sockets, devices,
  absolute symlinks, names Windows cannot hold) fails the commit with FailedPrecondition.
  [choice] Unlike containerd's cimfs snapshotter, a parentless non-extract ``prepare`` is
  allowed (its commit produces a base layer).
* ``empty/`` [cimsnap]: a private directory kept empty, the source of deferred empty
  layers (:func:`cimsnap.snapshots.layer_commit.build_empty_layer`).
* ``snapshots/rm-<id>/``: a snapshot being removed; reclaimed by the background reaper
  (``remove``'s file work), ``cleanup``, or the cleanup run at every start.

Path safety and permissions: :mod:`cimsnap.snapshots.rootdir` (the root's own directories
are refused if they are links or not directories; nothing inside is ever followed through
a link; directories ``0700``, files ``0600``). Durability order and crash points:
:mod:`cimsnap.snapshots.durability`.

Commit (going beyond containerd, which only commits ``extract`` snapshots):

* Key containing ``extract`` whose ``<id>.cim`` exists (the differ's Apply wrote it): the
  layer is checked (header, own region files present) and the commit is pure metadata;
  the CIM writer made it durable before the ``.cim`` became visible.
* An empty layer (an ``extract`` snapshot whose ``.cim`` was never written, [choice] for
  the spec's open case: commit it as an empty layer rather than fail; or any other active
  whose ``scratch/`` is absent or empty) commits as metadata only: the row is committed
  with ``layer_pending`` set, and the CIM, an empty fork of the parent's, is built later
  (:mod:`cimsnap.snapshots.pending`): by a background worker about a second later, or
  at once by whoever needs the file first (:meth:`Snapshotter.ensure_layer_cims`: Prepare
  and View of any child, since the mounts they return name the parents' CIMs; Mounts;
  Usage; a scratch Commit on it; the differ).
  The parent's CIM must exist (or be pending) or Commit fails with FailedPrecondition,
  as the synchronous build would have.
* An active with content in ``scratch/``: the CIM builder converts it into ``<id>.cim``
  forked from the parent's CIM before the metadata commits (the parent's CIM is built
  first if it is pending).
* The builder writes region files under fresh GUIDs and renames the ``.cim`` into place
  after fsyncing everything, so a crash leaves no half-visible layer; the metadata commits
  only after the data is durable (§8.2). If the metadata commit fails the new CIM is
  destroyed again, leaving the store as it was.

Not implemented [choice]: the remote-snapshot shortcut (answering a Prepare that carries
``containerd.io/snapshot.ref`` with AlreadyExists when the chain is already committed);
containerd then simply fetches and applies the layer (§2.4 allows either).

All methods are synchronous and thread-safe; errors are :mod:`cimsnap.errdefs` classes with
containerd-style messages. ``OSError`` from the filesystem propagates unchanged.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cimsnap.clock import MicrosecondClock
from cimsnap.errdefs import (
    AlreadyExists,
    Canceled,
    CimsnapError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from cimsnap.snapshots.filters import parse_all
from cimsnap.snapshots.labels import (
    MAX_LABEL_SIZE,
    checked_key,
    checked_label_set,
    checked_labels,
    checked_update_paths,
)
from cimsnap.snapshots.layer_commit import SCRATCH_DIR, can_defer_layer, materialise_layer
from cimsnap.snapshots.mounts import CimfsMountSpec, Mount, cimfs_mount
from cimsnap.snapshots.pending import DEFAULT_BUILD_DELAY, PendingLayers
from cimsnap.snapshots.reclaim import (
    CleanupReport,
    Reaper,
    destroy_retired,
    remove_scratch,
    retire_orphans,
)
from cimsnap.snapshots.recovery import recover_snapshot_files
from cimsnap.snapshots.rootdir import (
    DIR_MODE,
    REMOVAL_PREFIX,
    RootDirs,
    entry_mode,
    open_subdir,
    remove_entry,
    retire_entry,
)
from cimsnap.snapshots.usage import disk_usage
from cimsnap.store import (
    Info,
    InfoRow,
    Kind,
    SnapshotRef,
    Store,
    Usage,
    WouldBlock,
    check_commit,
    commit_active,
    create_snapshot,
    get_info,
    get_info_row,
    get_snapshot,
    id_kinds,
    key_of,
    pending_layers,
    remove,
    update_info,
    walk_rows,
)
from cimsnap.wclayer import destroy_cim_layer
from cimsnap.wclayer.layer_files import cim_layer_size

__all__ = [
    "MAX_LABEL_SIZE",
    "ExtractTarget",
    "Info",
    "InfoRow",
    "Kind",
    "LayerStack",
    "Mount",
    "Snapshotter",
    "Usage",
    "WouldBlock",
]

_log = logging.getLogger(__name__)

#: The substring containerd's unpacker puts in layer-extraction keys.
UNPACK_KEY_MARKER: Final = "extract"


@dataclass(frozen=True, slots=True)
class ExtractTarget:
    """Where the differ writes the layer of an active extract snapshot (its mount, checked).

    ``key`` is the backend key (``<ns>/<seq>/extract-...``); parent paths run from the
    immediate parent to the base.
    """

    key: str
    layer_path: Path
    cim_path: Path
    parent_layer_paths: tuple[Path, ...]
    parent_cim_paths: tuple[Path, ...]


@dataclass(frozen=True, slots=True)
class LayerStack:
    """The layer CIMs visible through a mount of snapshot ``key``, top layer first.

    An active snapshot's own CIM is included only once the differ has written it; a
    view's own (never written) CIM never is.
    """

    key: str
    cim_paths: tuple[Path, ...]


class Snapshotter:
    """Snapshots of ``root``; see the module docstring for layout and semantics.

    The constructor opens the root (:class:`cimsnap.snapshots.rootdir.RootDirs`:
    FailedPrecondition if the root, ``snapshots`` or ``snapshots/cim-layers`` is a link or
    not a directory), takes ``<root>/lock`` (Unavailable if another snapshotter holds the
    root), creates ``<root>/metadata.db`` (``0600``), then runs
    :func:`cimsnap.snapshots.recovery.recover_snapshot_files` (directories restored, damaged
    committed layers refused as parents), queues one :meth:`cleanup` on the background
    reaper (leftovers of a crash are reclaimed without delaying the start) and the build
    of every layer still pending. ``layer_build_delay``: seconds between a Commit and the
    background build of its empty layer (:mod:`cimsnap.snapshots.pending`). ``close()`` is
    idempotent; the object is also a context manager.
    """

    def __init__(self, root: Path, *, layer_build_delay: float = DEFAULT_BUILD_DELAY) -> None:
        self.root = Path(root)
        self._dirs = RootDirs.open(self.root)
        self.snapshots_dir = self._dirs.snapshots
        self.cim_dir = self._dirs.cim_layers
        try:
            self._root_lock = _lock_root(self._dirs)
        except BaseException:
            self._dirs.close()
            raise
        try:
            self._dirs.create_private_file("metadata.db")
            self._store = Store(self.root / "metadata.db")
            self._dirs.tighten_metastore()
        except BaseException:
            os.close(self._root_lock)
            self._dirs.close()
            raise
        self._clock = MicrosecondClock()
        # One CIM writer per directory: builds and cleanup take this.
        self._build_lock = threading.Lock()
        # Held by Remove across its transaction and a rename back, and by cleanup's
        # retirement, so cleanup never sees an rm-<id> whose row is coming back.
        self._names_lock = threading.Lock()
        self._busy_lock = threading.Lock()
        self._busy: set[int] = set()
        self._reaper = Reaper()
        self._layers: PendingLayers | None = None
        try:
            with self._store.read() as tx:
                kinds = id_kinds(tx)
                pending = pending_layers(tx)
            self._damaged = recover_snapshot_files(self._dirs, kinds, pending=pending.keys())
            self._layers = PendingLayers(
                self._dirs,
                self._store,
                self._build_lock,
                pending,
                delay=layer_build_delay,
                built=self._reclaim_scratch,
            )
        except BaseException:
            self.close()
            raise
        self._reaper.submit(self._startup_cleanup)

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Stop the layer builder and the reaper (after their running items), release the
        metastore and the root (idempotent); later calls raise Unavailable. Layers still
        pending stay pending in the metastore: the next start builds them."""
        if self._layers is not None:
            self._layers.close()
        self._reaper.close()
        self._store.close()
        with self._busy_lock:
            fd, self._root_lock = self._root_lock, -1
        if fd >= 0:
            os.close(fd)  # releases the flock
            with self._build_lock, self._names_lock:
                self._dirs.close()

    def wait_reclaimed(self, timeout: float | None = None) -> bool:
        """Wait until the background reaper has finished the work queued so far (Remove's
        file work, the start-up cleanup); False if ``timeout`` passed first."""
        return self._reaper.wait_idle(timeout)

    # -- deferred empty layers (cimsnap.snapshots.pending) ---------------------------

    def ensure_layer_cims(self, snapshot_ids: Iterable[int]) -> None:
        """Return once the layer CIM of every committed snapshot in ``snapshot_ids`` exists.

        The one call for anything about to read, mount or fork from layer CIMs (the
        differ's Apply before forking from ``parent_ids``, Compare before reading them):
        a layer whose Commit deferred its empty CIM is built here (its pending parents
        first), or waited for if the background worker is building it. Other IDs are
        ignored, so a whole parent chain (immediate parent first, as in
        :class:`cimsnap.store.SnapshotRef`) may be passed. Costs nothing when no layer is
        pending. Raises FailedPrecondition if a parent's CIM is missing or damaged,
        Unavailable if another CIM writer holds the layer directory too long, OSError on
        I/O failure; the layer then stays pending (retried later).
        """
        layers = self._layers
        if layers is not None and layers:
            layers.ensure(snapshot_ids)

    def wait_layers(self, timeout: float | None = None) -> bool:
        """Wait until the background builds queued so far have run; False on timeout."""
        return self._layers is None or self._layers.wait_idle(timeout)

    def pending_layer_ids(self) -> frozenset[int]:
        """IDs of committed snapshots whose (empty) layer CIM is not built yet."""
        return frozenset() if self._layers is None else self._layers.ids()

    def __enter__(self) -> Snapshotter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- paths -----------------------------------------------------------------------

    def _dir(self, snapshot_id: int) -> Path:
        return self.snapshots_dir / str(snapshot_id)

    def _cim(self, snapshot_id: int) -> Path:
        return self.cim_dir / f"{snapshot_id}.cim"

    def _mount(self, ref: SnapshotRef) -> list[Mount]:
        return [
            cimfs_mount(
                self.snapshots_dir,
                self.cim_dir,
                ref.id,
                ref.parent_ids,
                readonly=ref.kind == Kind.VIEW,
            )
        ]

    # -- create ----------------------------------------------------------------------

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create active snapshot ``key`` on ``parent``; return its mounts (``rw``).

        Raises InvalidArgument for an empty key or an oversized label, AlreadyExists if
        ``key`` exists, NotFound if ``parent`` is missing, InvalidArgument if ``parent`` is
        not committed. On error nothing is created.
        """
        return self._create(Kind.ACTIVE, key, parent, labels)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create read-only view ``key`` of ``parent``; return its mounts (``ro``).

        Errors as :meth:`prepare`.
        """
        return self._create(Kind.VIEW, key, parent, labels)

    def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        checked_key("key", key)
        checked = checked_labels(labels)
        if parent:
            # Every mount returned names the parents' CIMs, and whoever uses it (runhcs,
            # our differ, containerd's own cimfs differ on Windows) reads them.
            self._ensure_parent(parent)
        created: str | None = None
        try:
            with self._store.write() as tx:
                ref = create_snapshot(tx, kind, key, parent, checked, self._clock.now_ns())
                if self._damaged.intersection(ref.parent_ids):
                    raise FailedPrecondition(
                        f'parent "{parent}" has a damaged layer; remove it and pull again: '
                        "failed precondition"
                    )
                scratch = kind == Kind.ACTIVE and UNPACK_KEY_MARKER not in key
                self._make_dir(ref.id, scratch=scratch)
                created = str(ref.id)  # ours now: garbage if the transaction fails
        except BaseException:
            if created is not None:
                remove_entry(self._dirs.snapshots_fd, created)
            raise
        if ref.parent_ids and self.pending_layer_ids().intersection(ref.parent_ids):
            # The parent's Commit (pending) raced the check above: build it now, or undo.
            try:
                self.ensure_layer_cims(ref.parent_ids)
            except BaseException:
                with contextlib.suppress(CimsnapError, OSError):
                    self.remove(key)
                raise
        return self._mount(ref)

    def _ensure_parent(self, parent: str) -> None:
        """Build the pending layers of ``parent``'s chain before a snapshot is created on it
        (nothing to do in the common case: no layer pending)."""
        if not self.pending_layer_ids():
            return
        try:
            with self._store.read() as tx:
                chain = get_snapshot(tx, parent)
        except CimsnapError:
            return  # the create reports the missing parent with containerd's message
        self.ensure_layer_cims((chain.id, *chain.parent_ids))

    def _make_dir(self, snapshot_id: int, *, scratch: bool) -> None:
        """Create the directory of a fresh ID, clearing leftovers of a crashed transaction.

        A fresh ID is referenced by no row, yet a crash after ``mkdir`` but before the
        commit rolls the sequence back and leaves the directory (or a CIM) behind: that
        content is garbage by construction. Whatever holds the name (that leftover, or a
        stray file or symbolic link) is retired to ``rm-<id>[.n]`` without being followed
        and reclaimed in the background [choice: retire and proceed, rather than skip to
        another ID: IDs come from the metastore sequence and must match the row].
        """
        name = str(snapshot_id)
        fd = self._dirs.snapshots_fd
        if entry_mode(fd, name) is not None:
            _log.warning("retiring leftover snapshots/%s of a rolled-back snapshot", name)
            retired = retire_entry(fd, name, name)
            if retired is not None:
                self._reaper.submit(lambda: remove_entry(fd, retired))
        image = f"{name}.cim"
        image_mode = entry_mode(self._dirs.cim_fd, image)
        if image_mode is not None and stat.S_ISDIR(image_mode):
            _log.warning("retiring the directory cim-layers/%s", image)
            retired_image = retire_entry(self._dirs.cim_fd, image, name, ".cim")
            if retired_image is not None:
                self._reaper.submit(lambda: remove_entry(self._dirs.cim_fd, retired_image))
        elif image_mode is not None:
            destroy_cim_layer(self._cim(snapshot_id), referenced_elsewhere=frozenset())
        os.mkdir(name, DIR_MODE, dir_fd=fd)
        if scratch:
            own = open_subdir(fd, name)
            try:
                os.mkdir(SCRATCH_DIR, DIR_MODE, dir_fd=own)
            finally:
                os.close(own)

    # -- read ------------------------------------------------------------------------

    def mounts(self, key: str) -> list[Mount]:
        """Return the mounts of active or view ``key``.

        Raises NotFound if missing, FailedPrecondition if ``key`` is committed.
        """
        with self._store.read() as tx:
            ref = get_snapshot(tx, key)
        if ref.kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(
                f"requested snapshot {key} not active or view: failed precondition"
            )
        self.ensure_layer_cims(ref.parent_ids)
        return self._mount(ref)

    def stat(self, key: str) -> Info:
        """Return the Info of ``key`` (any kind); NotFound if missing."""
        return self.stat_row(key).to_info()

    def stat_row(self, key: str) -> InfoRow:
        """:meth:`stat` as an :class:`InfoRow` (times in nanoseconds, no datetimes): what
        the server encodes, the same way it encodes List."""
        with self._store.read() as tx:
            return get_info_row(tx, key)

    def stat_row_nowait(self, key: str) -> InfoRow:
        """:meth:`stat_row` for a caller that must never wait (the server's event loop).

        Raises WouldBlock, having changed nothing, when answering would mean waiting for a
        lock; the caller then uses :meth:`stat_row` where waiting is allowed. Otherwise the
        same result and errors as :meth:`stat_row`.
        """
        with self._store.try_read() as tx:
            return get_info_row(tx, key)

    def usage(self, key: str) -> Usage:
        """Return the usage of ``key`` alone (parents never count); NotFound if missing.

        Active: a live walk of ``snapshots/<id>`` (allocated blocks, inodes once each).
        Committed: the figure recorded at commit plus the bytes of the layer's own CIM
        files (its ``.cim``, region and objectid files; not its parents'). View: the
        recorded figure (zero), as containerd's snapshotters report.
        """
        with self._store.read() as tx:
            snapshot_id, info, recorded = get_info(tx, key)
        if info.kind == Kind.ACTIVE:
            return disk_usage(self._dir(snapshot_id))
        if info.kind == Kind.COMMITTED:
            self.ensure_layer_cims((snapshot_id,))
            own = cim_layer_size(self._cim(snapshot_id))
            return Usage(size=recorded.size + own, inodes=recorded.inodes)
        return recorded

    def list_rows(
        self, filters: Sequence[str] = (), *, cancelled: threading.Event | None = None
    ) -> list[InfoRow]:
        """The snapshots matching ``filters``, as ``InfoRow``\\ s (what the server's List
        encodes directly); :meth:`list` documents the contract."""
        matcher = parse_all(filters)
        with self._store.read() as tx:
            rows = walk_rows(tx)
        if not matcher.alternatives:
            return rows
        matched = []
        for row in rows:
            if cancelled is not None and cancelled.is_set():
                raise Canceled("list: canceled by the caller: canceled")
            if matcher.match(row.field):
                matched.append(row)
        return matched

    def list(
        self, filters: Sequence[str] = (), *, cancelled: threading.Event | None = None
    ) -> list[Info]:
        """Return the Info of every snapshot matching ``filters`` (containerd filters).

        Several filter strings are OR-ed. The result is materialised: no lock is held
        once this returns, so callers may Stat while streaming it. Raises InvalidArgument
        for bad filter syntax or a filter over the request limits (before reading
        anything). Matching checks ``cancelled`` before each snapshot and raises Canceled
        once it is set: regular expressions cost linear time, but a List with many costly
        ones over many snapshots still takes a while, and nobody may be waiting for it.
        """
        return [row.to_info() for row in self.list_rows(filters, cancelled=cancelled)]

    # -- mounts handed back by the differ ---------------------------------------------

    def _checked_mount(self, spec: CimfsMountSpec) -> tuple[str, SnapshotRef]:
        """Return key and ref of the snapshot ``spec`` names, after checking every path.

        InvalidArgument if the source is not a snapshot directory of this root or the
        CIM/parent paths are not the ones that snapshot's mount has; FailedPrecondition if
        no snapshot has that ID (removed, or never created here).
        """
        source = os.path.normpath(spec.source)
        parent_dir, _, name = source.rpartition(os.sep)
        if parent_dir != os.path.normpath(self.snapshots_dir) or not name.isdecimal():
            raise InvalidArgument(
                f"mount source {spec.source}: not a snapshot of the cimsnap root {self.root}"
            )
        snapshot_id = int(name)
        try:
            with self._store.read() as tx:
                key = key_of(tx, snapshot_id)
                ref = get_snapshot(tx, key)
        except NotFound:
            raise FailedPrecondition(
                f"mount source {spec.source}: no snapshot {snapshot_id} in {self.root}: "
                "failed precondition"
            ) from None
        expected = self._mount(ref)[0]
        wanted = CimfsMountSpec(
            source=spec.source,
            readonly=spec.readonly,
            cim_path=expected.options[1].partition("=")[2],
            parent_layer_paths=tuple(str(self._dir(i)) for i in ref.parent_ids),
            parent_cim_paths=tuple(str(self._cim(i)) for i in ref.parent_ids),
        )
        for field in ("cim_path", "parent_layer_paths", "parent_cim_paths"):
            got, want = getattr(spec, field), getattr(wanted, field)
            if tuple(map(os.path.normpath, [got] if isinstance(got, str) else got)) != tuple(
                map(os.path.normpath, [want] if isinstance(want, str) else want)
            ):
                raise InvalidArgument(
                    f"mount of snapshot {key!r}: {field} {got!r} is not the snapshot's {want!r}"
                )
        return key, ref

    @contextlib.contextmanager
    def extract_target(self, spec: CimfsMountSpec) -> Iterator[ExtractTarget]:
        """Check that ``spec`` names an active extract snapshot with no layer yet; claim it.

        While the block runs, Commit and Remove of that snapshot fail with
        FailedPrecondition (``commit in progress``), so the layer cannot vanish or be
        committed half-written. Raises (nothing claimed, nothing written): the errors of
        :meth:`_checked_mount`; FailedPrecondition if the snapshot is not active, its key
        has no ``extract``, or it is claimed already; AlreadyExists if its CIM exists
        (the layer was applied already).
        """
        key, ref = self._checked_mount(spec)
        if ref.kind != Kind.ACTIVE or UNPACK_KEY_MARKER not in key:
            raise FailedPrecondition(
                f"snapshot {key!r}: a layer can only be applied to an active extract "
                "snapshot: failed precondition"
            )
        target = ExtractTarget(
            key=key,
            layer_path=self._dir(ref.id),
            cim_path=self._cim(ref.id),
            parent_layer_paths=tuple(self._dir(i) for i in ref.parent_ids),
            parent_cim_paths=tuple(self._cim(i) for i in ref.parent_ids),
        )
        self._claim(ref.id, key)
        try:
            self.ensure_layer_cims(ref.parent_ids)  # the import forks from the parent's CIM
            if target.cim_path.exists():
                raise AlreadyExists(f"snapshot {key!r}: its layer was applied already")
            yield target
        finally:
            self._release(ref.id)

    def layer_stack(self, spec: CimfsMountSpec) -> LayerStack:
        """Return the layer CIMs that the mount ``spec`` shows (checked like extract_target)."""
        key, ref = self._checked_mount(spec)
        self.ensure_layer_cims(ref.parent_ids)  # the export reads these CIMs
        own = self._cim(ref.id)
        cims = tuple(self._cim(i) for i in ref.parent_ids)
        if ref.kind == Kind.ACTIVE and own.exists():
            cims = (own, *cims)
        return LayerStack(key=key, cim_paths=cims)

    # -- write -----------------------------------------------------------------------

    def update(self, info: Info, fieldpaths: Sequence[str]) -> Info:
        """Update the labels of ``info.name`` and return the new Info (``updated=now``).

        Mask semantics: empty or ``labels`` replaces all labels; ``labels.<k>`` sets ``k``
        from ``info.labels`` or deletes it when absent; empty values are never stored.
        ``info``'s kind, parent and times are ignored. Raises InvalidArgument for any other
        path, too many paths, or an oversized label or label set (also after merging, see
        ``labels``),
        NotFound if the snapshot is missing.
        """
        checked_update_paths(fieldpaths)
        labels = checked_labels(info.labels)
        with self._store.write() as tx:
            updated = update_info(tx, info.name, labels, fieldpaths, self._clock.now_ns())
            checked_label_set(updated.labels)  # raising rolls the update back
            return updated

    def commit(
        self,
        name: str,
        key: str,
        labels: Mapping[str, str] | None = None,
        parent: str = "",
    ) -> None:
        """Commit active ``key`` as ``name`` (same ID, new created time, labels replaced).

        Raises, in this order: InvalidArgument (empty name, oversized label);
        AlreadyExists if ``name`` exists; NotFound if ``key`` is missing;
        FailedPrecondition if ``key`` is a view or committed, or is being committed or
        removed concurrently; InvalidArgument if ``parent`` differs from the active's
        parent; FailedPrecondition if the scratch content cannot become a layer (the
        builder reported problems) or the parent's CIM is missing; Unavailable if another
        CIM writer holds the layer directory. On error the metastore is unchanged and no
        new CIM remains.
        """
        checked_key("name", name)
        checked = checked_labels(labels)
        with self._store.read() as tx:
            ref = check_commit(tx, key, name, parent)
        self._claim(ref.id, key)
        extract = UNPACK_KEY_MARKER in key
        try:
            deferred = can_defer_layer(self._dirs, ref.id, extract=extract)
            if deferred:
                self._commit_pending(ref, key, name, checked, parent)
            else:
                self._commit_built(ref, key, name, checked, parent, extract=extract)
        finally:
            self._release(ref.id)
        if not deferred:
            remove_scratch(self._dirs, ref.id, SCRATCH_DIR)  # failures: logged, cleanup's
        elif self._layers is not None:  # the empty scratch/ goes after the build (a rmdir
            self._layers.schedule(ref.id)  # costs ~1 ms under load: off the request path)

    def _commit_built(
        self,
        ref: SnapshotRef,
        key: str,
        name: str,
        labels: Mapping[str, str],
        parent: str,
        *,
        extract: bool,
    ) -> None:
        """Commit whose layer exists (Apply wrote it) or is built now from ``scratch/``."""
        self.ensure_layer_cims(ref.parent_ids)  # the build forks from the parent's CIM
        built = materialise_layer(self._dirs, self._build_lock, ref, extract=extract)
        recorded = disk_usage(self._dir(ref.id), exclude=frozenset({SCRATCH_DIR}))
        try:
            with self._store.write() as tx:
                commit_active(tx, key, name, recorded, labels, parent, self._clock.now_ns())
        except BaseException:
            if built:  # still active, so no child can have forked from it
                destroy_cim_layer(self._cim(ref.id), referenced_elsewhere=frozenset())
            raise

    def _commit_pending(
        self, ref: SnapshotRef, key: str, name: str, labels: Mapping[str, str], parent: str
    ) -> None:
        """Commit of an empty layer: metadata only, the CIM is built afterwards
        (:mod:`cimsnap.snapshots.pending`)."""
        layers = self._layers
        if layers is None:
            raise Unavailable("snapshotter is closed: unavailable")
        if ref.parent_ids:  # what the synchronous build would have refused, cheaply
            parent_id = ref.parent_ids[0]
            missing = parent_id not in layers.ids() and (
                entry_mode(self._dirs.cim_fd, f"{parent_id}.cim") is None
            )
            if missing or parent_id in self._damaged:
                raise FailedPrecondition(
                    f"parent layer {self._cim(parent_id)} is missing or damaged: "
                    "failed precondition"
                )
        recorded = disk_usage(self._dir(ref.id), exclude=frozenset({SCRATCH_DIR}))
        try:
            with self._store.write() as tx:
                commit_active(
                    tx,
                    key,
                    name,
                    recorded,
                    labels,
                    parent,
                    self._clock.now_ns(),
                    layer_pending=True,
                )
                layers.add(ref.id, ref.parent_ids[0] if ref.parent_ids else None)
        except BaseException:
            layers.discard(ref.id)
            raise

    def remove(self, key: str) -> None:
        """Remove ``key`` (any kind); fast, whatever the size of the snapshot.

        Raises NotFound if missing; FailedPrecondition if it has children (message
        ``cannot remove snapshot with child``), is being committed, or its directory
        cannot be renamed. The row is deleted and ``snapshots/<id>`` renamed to
        ``rm-<id>`` in one step (renamed back if the transaction fails). The file work
        (destroying the CIM, deleting ``rm-<id>``) is handed to the background reaper, so
        the call never waits for heavy I/O under containerd's GC lock (§8.4); if the
        process dies first, the cleanup run at the next start reclaims the files (no row
        references them). :meth:`wait_reclaimed` waits for that work.
        """
        renamed: tuple[str, str] | None = None
        fd = self._dirs.snapshots_fd
        with self._names_lock:
            try:
                with self._store.write() as tx:
                    snapshot_id, _ = remove(tx, key)
                    with self._busy_lock:
                        self._refuse_busy(snapshot_id, key)
                    renamed = self._rename_for_removal(snapshot_id)
            except BaseException:
                if renamed is not None:
                    try:
                        os.rename(renamed[1], renamed[0], src_dir_fd=fd, dst_dir_fd=fd)
                    except OSError as e:  # the row is back; cleanup must not reap the dir
                        _log.error("remove %s: cannot rename %s back: %s", key, renamed[1], e)
                raise
        if self._layers is not None:
            self._layers.discard(snapshot_id)
        self._reaper.submit(lambda: self._reclaim_removed(key, snapshot_id, renamed))

    def _reclaim_removed(self, key: str, snapshot_id: int, renamed: tuple[str, str] | None) -> None:
        """The reaper's part of a Remove: the CIM, then the retired directory."""
        try:
            with self._build_lock:
                # Only a descendant's CIM forks from this layer's region set, and Remove
                # refused a snapshot with children: no other live image references it, so
                # the header scan (O(layers) reads) is skipped. Orphan CIMs that might
                # still name it are garbage for cleanup.
                destroy_cim_layer(self._cim(snapshot_id), referenced_elsewhere=frozenset())
        except (CimsnapError, OSError) as e:
            _log.warning("remove %s: CIM of %d left for cleanup: %s", key, snapshot_id, e)
        if renamed is not None:
            remove_entry(self._dirs.snapshots_fd, renamed[1])

    def _rename_for_removal(self, snapshot_id: int) -> tuple[str, str] | None:
        fd = self._dirs.snapshots_fd
        source = str(snapshot_id)
        target = f"{REMOVAL_PREFIX}{snapshot_id}"
        if entry_mode(fd, source) is None:
            return None
        if entry_mode(fd, target) is not None:
            # Stale leftover of an earlier interrupted removal of this ID (IDs are never
            # reused, so nothing else can own the name); rename() cannot replace it. Set
            # aside (cheap) and reclaimed with the rest, never deleted under the lock.
            stale = retire_entry(fd, target, str(snapshot_id))
            if stale is not None:
                self._reaper.submit(lambda: remove_entry(fd, stale))
        try:
            os.rename(source, target, src_dir_fd=fd, dst_dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise FailedPrecondition(
                f"failed to rename {self._dir(snapshot_id)} for removal: {e}: failed precondition"
            ) from e
        return source, target

    def cleanup(self) -> None:
        """Reclaim every directory, CIM, region and objectid file no snapshot references.

        See :meth:`reclaim`, which also reports what it did.
        """
        self.reclaim()

    def reclaim(self) -> CleanupReport:
        """Reclaim every directory, CIM, region and objectid file no snapshot references.

        Idempotent and safe while other calls run: the decision is taken under the
        metastore's write lock and the build lock (no snapshot can be created, removed or
        committed meanwhile); deletion happens after the write lock is released, on
        entries already renamed out of the way (:mod:`cimsnap.snapshots.reclaim`); an
        entry already gone (a concurrent Remove's reaper) counts as reclaimed. Entries named
        like snapshots that are links or files are retired, never followed. Also removes
        the ``scratch/`` left in committed snapshots by a failed post-commit deletion.
        Raises FailedPrecondition if the root's own directories were replaced while the
        daemon ran (nothing is deleted then).
        """
        with self._build_lock:
            self._dirs.check()
            with self._names_lock, self._store.write() as tx:
                kinds = id_kinds(tx)
                retired = retire_orphans(self._dirs, kinds.keys())
                committed = [i for i, kind in kinds.items() if kind == Kind.COMMITTED]
            report = destroy_retired(self._dirs, retired)
        for snapshot_id in committed:
            remove_scratch(self._dirs, snapshot_id, SCRATCH_DIR)
        return report

    def _reclaim_scratch(self, snapshot_id: int) -> None:
        """Hand the deletion of a committed snapshot's ``scratch/`` to the reaper."""
        self._reaper.submit(lambda: remove_scratch(self._dirs, snapshot_id, SCRATCH_DIR))

    def _startup_cleanup(self) -> None:
        """The reaper's first item: reclaim what a crash left (Remove's pending work)."""
        try:
            report = self.reclaim()
        except (CimsnapError, OSError) as e:
            _log.warning("start-up cleanup failed, left for the next cleanup: %s", e)
            return
        if report.reclaimed:
            _log.info("start-up cleanup reclaimed %d entries", report.reclaimed)

    # -- concurrency -----------------------------------------------------------------

    def _refuse_busy(self, snapshot_id: int, key: str) -> None:
        """FailedPrecondition if ``snapshot_id`` is being committed; caller holds the lock."""
        if snapshot_id in self._busy:
            raise FailedPrecondition(f'snapshot "{key}": commit in progress: failed precondition')

    def _claim(self, snapshot_id: int, key: str) -> None:
        with self._busy_lock:
            self._refuse_busy(snapshot_id, key)
            self._busy.add(snapshot_id)

    def _release(self, snapshot_id: int) -> None:
        with self._busy_lock:
            self._busy.discard(snapshot_id)


def _lock_root(dirs: RootDirs) -> int:
    """Take ``<root>/lock`` exclusively for this object's lifetime; return the descriptor.

    Two snapshotters on one root would each reap the other's in-flight files (cleanup,
    leftover clearing) and break the one-CIM-writer rule, so a second one is refused with
    Unavailable, whether in this process or another. The kernel drops the lock when the
    process dies, so a crash never leaves the root locked.
    """
    fd = os.open(
        "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirs.root_fd
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Unavailable(f"{dirs.root} is in use by another snapshotter: unavailable") from None
    os.fchmod(fd, 0o600)  # a lock file made by an older version may be 0644
    return fd
