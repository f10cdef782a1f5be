"""cimsnap's differ: Apply (layer blob -> CIM layer) and Compare (CIM layer -> blob).

Plain types only (``Descriptor``, ``Mount``); ``cimsnap.daemon.diff_service`` adapts it to
gRPC. Contracts follow containerd's cimfs differ.

**Apply** (:meth:`Differ.apply`):

* Mounts (:func:`cimfs_mount_of`): if any mount is not ``CimFS`` the answer is
  Unimplemented, so containerd's diff service falls back to its next differ (``walking``
  for Linux layers, §5.3). No mount, or more than one ``CimFS`` mount, is InvalidArgument.
  [choice] A mixed list (CimFS plus another type) counts as "not ours" (Unimplemented),
  never as InvalidArgument, so a Linux snapshotter returning several mounts still reaches
  ``walking``.
* Encrypted or unknown media types, and non-empty ``payloads`` (stream-processor data,
  only used for decryption), are Unimplemented.
* The mount must name an active extract snapshot of this root with no layer yet
  (``Snapshotter.extract_target``: InvalidArgument / FailedPrecondition / AlreadyExists,
  nothing written); the snapshot is claimed (no Commit/Remove) while the layer is written.
* The namespace is the ``containerd-namespace`` header when the caller sent one, else the
  first segment of the snapshot's backend key ``<ns>/<seq>/...`` (§0; Debian's 1.6/1.7
  send no header).
* The blob (:mod:`cimsnap.diff.content`) is relayed to an import worker process
  (:mod:`cimsnap.diff.import_worker`), which decompresses it by magic bytes, streams it
  through ``import_layer`` while hashing the uncompressed bytes, and drains trailing
  bytes after the tar's end into the hash (containerd's differ does the same); the
  daemon's threads only move bytes, so a running import never delays other calls. Then
  the blob's size (and, read from the content directory, its digest) is checked. A
  failure after the import committed (trailing damage, digest mismatch, cancellation, a
  worker that died) destroys the new CIM and what the import put in the layer directory:
  on any error nothing stays committed.
* Returns ``{application/vnd.oci.image.layer.v1.tar, sha256:<uncompressed>, size}``.

**Compare** (:meth:`Differ.compare`): see its docstring.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Final, Protocol

from cimsnap import errdefs
from cimsnap.diff.content import ContainerdContent
from cimsnap.diff.export_worker import ExportJob, ExportWorker
from cimsnap.diff.import_worker import ImportJob, ImportWorker
from cimsnap.diff.mediatypes import (
    OCI_LAYER_GZIP,
    OCI_LAYER_TAR,
    Descriptor,
    check_digest,
    check_layer_media_type,
    compression_for,
)
from cimsnap.snapshots.mounts import CIMFS_MOUNT_TYPE, CimfsMountSpec, Mount, parse_cimfs_mount
from cimsnap.snapshots.snapshotter import ExtractTarget, LayerStack
from cimsnap.wclayer import destroy_cim_layer
from cimsnap.wclayer.exporter import filetime_from_unix_ns

__all__ = [
    "IMPORT_LOCK_WAIT",
    "UNCOMPRESSED_LABEL",
    "Differ",
    "LayerSnapshots",
    "ProgressFn",
    "cimfs_mount_of",
]

log = logging.getLogger(__name__)

#: containerd's label on a compressed blob naming its uncompressed digest.
UNCOMPRESSED_LABEL: Final = "containerd.io/uncompressed"
_CHUNK: Final = 1024 * 1024
#: How long an import waits for another import of the same root to finish (seconds).
IMPORT_LOCK_WAIT: Final = 6 * 3600.0

ProgressFn = Callable[[int, int], None]


class LayerSnapshots(Protocol):
    """What the differ needs from the snapshotter (``cimsnap.snapshots.Snapshotter``)."""

    def extract_target(self, spec: CimfsMountSpec) -> AbstractContextManager[ExtractTarget]: ...
    def layer_stack(self, spec: CimfsMountSpec) -> LayerStack: ...


def cimfs_mount_of(mounts: Sequence[Mount], *, allow_none: bool = False) -> CimfsMountSpec | None:
    """Return the one CimFS mount of ``mounts`` (see the module docstring for the rules).

    ``allow_none``: an empty list is valid and gives None (Compare's empty lower side).
    """
    if not mounts:
        if allow_none:
            return None
        raise errdefs.InvalidArgument("no mount given: exactly one CimFS mount is required")
    foreign = sorted({m.type for m in mounts if m.type != CIMFS_MOUNT_TYPE})
    if foreign:
        raise errdefs.Unimplemented(
            f"mount type {', '.join(repr(t) for t in foreign)}: cimsnap applies only "
            f"{CIMFS_MOUNT_TYPE} mounts"
        )
    if len(mounts) > 1:
        raise errdefs.InvalidArgument(
            f"{len(mounts)} {CIMFS_MOUNT_TYPE} mounts: exactly one is required"
        )
    return parse_cimfs_mount(mounts[0])


class Differ:
    """Apply and Compare over a snapshotter and containerd's content store.

    ``busy_timeout`` is how long an import waits for the CIM directory (passed to
    ``import_layer``). Thread-safe: the server runs up to ``max_concurrent_applies`` calls
    at once; the snapshotter's claims keep two applies off one snapshot. CimFS allows one
    writer per directory (all layer CIMs of a root share ``cim-layers``), so imports into
    one root run one after the other: [choice] an Apply waits for the directory as long as
    ``IMPORT_LOCK_WAIT`` (cancellable) rather than fail with Unavailable after a minute
    behind a large layer.
    """

    def __init__(
        self,
        snapshots: LayerSnapshots,
        content: ContainerdContent,
        *,
        busy_timeout: float = IMPORT_LOCK_WAIT,
    ) -> None:
        self._snapshots = snapshots
        self._content = content
        self._busy_timeout = busy_timeout

    # -- Apply ---------------------------------------------------------------------

    @staticmethod
    def check_apply(
        desc: Descriptor, mounts: Sequence[Mount], payload_count: int
    ) -> CimfsMountSpec:
        """The cheap checks of Apply, without I/O (the server runs them before queueing)."""
        spec = cimfs_mount_of(mounts)
        assert spec is not None
        check_layer_media_type(desc.media_type)
        if payload_count:
            raise errdefs.Unimplemented(
                f"layer {desc.digest}: stream processor payloads are not supported by cimsnap"
            )
        check_digest(desc.digest)
        return spec

    def apply(
        self,
        desc: Descriptor,
        mounts: Sequence[Mount],
        *,
        namespace: str | None = None,
        payload_count: int = 0,
        cancelled: threading.Event | None = None,
        progress: ProgressFn | None = None,
    ) -> Descriptor:
        """Apply layer blob ``desc`` onto the extract snapshot ``mounts`` name.

        Returns the uncompressed tar's descriptor. Raises (the store unchanged): see the
        module docstring; NotFound if the blob is missing in the namespace; Unavailable if
        containerd cannot be reached; InvalidArgument for a corrupt blob or layer (the
        message names the entry and offset); Canceled if ``cancelled`` was set.
        """
        spec = self.check_apply(desc, mounts, payload_count)
        cancelled = cancelled if cancelled is not None else threading.Event()
        with self._snapshots.extract_target(spec) as target:
            ns = namespace or target.key.partition("/")[0]
            job = ImportJob(
                subject=f"layer {desc.digest}",
                layer_path=str(target.layer_path),
                cim_path=str(target.cim_path),
                parent_layer_paths=tuple(map(str, target.parent_layer_paths)),
                parent_cim_paths=tuple(map(str, target.parent_cim_paths)),
                busy_timeout=self._busy_timeout,
            )
            with self._content.open(ns, desc.digest) as blob:
                log.debug("apply %s (%s) into %s via %s", desc.digest, ns, target.key, blob.via)
                before = {p.name for p in target.layer_path.iterdir()}
                worker = ImportWorker(job, cancelled, progress)
                try:
                    while chunk := blob.read(_CHUNK):
                        if cancelled.is_set():
                            raise errdefs.Canceled(f"{job.subject}: cancelled by the caller")
                        if not worker.feed(chunk):
                            break
                    imported = worker.finish()
                    blob.verify()
                    if cancelled.is_set():
                        raise errdefs.Canceled(f"{job.subject}: cancelled by the caller")
                except BaseException:
                    worker.close()
                    _undo_import(target, before)
                    raise
                worker.close()
        return Descriptor(media_type=OCI_LAYER_TAR, digest=imported.digest, size=imported.size)

    # -- Compare -------------------------------------------------------------------

    def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
        namespace: str | None = None,
        lease: str | None = None,
        cancelled: threading.Event | None = None,
        source_date_epoch_ns: int | None = None,
    ) -> Descriptor:
        """Export the layer ``upper`` adds over ``lower`` into containerd's content store.

        ``upper`` is one CimFS mount whose top layer exists (a view of a committed layer, or
        an applied extract snapshot); ``lower`` is empty (``upper``'s top is a base layer)
        or one CimFS mount showing exactly ``upper``'s parent chain. [choice] Anything else
        (a gap of several layers) is InvalidArgument: the exporter writes one layer against
        its immediate parent. The tar is exported and compressed per ``media_type`` (empty:
        OCI gzip) in an export worker process (:mod:`cimsnap.diff.export_worker`) and
        streamed as it comes to Content.Write under ``ref`` (generated when empty) with the
        expected digest and size, labelled ``containerd.io/uncompressed`` plus ``labels``.
        ``lease`` (the caller's ``containerd-lease``) holds the new blob.
        ``source_date_epoch_ns`` (Unix nanoseconds, from DiffRequest.source_date_epoch;
        None: unset) clamps every time in the tar that is later than it to it, as
        containerd's differs do (see ``export_layer``; rounded down to 100 ns). [choice] An
        epoch before 1601, which no FILETIME can hold, is InvalidArgument.
        Returns the blob's descriptor.
        """
        epoch = (
            None if source_date_epoch_ns is None else filetime_from_unix_ns(source_date_epoch_ns)
        )
        if epoch is not None and epoch < 0:
            raise errdefs.InvalidArgument(
                f"compare: source_date_epoch {source_date_epoch_ns} ns is before 1601, "
                "the earliest time a Windows layer can hold"
            )
        upper_spec = cimfs_mount_of(upper)
        assert upper_spec is not None
        lower_spec = cimfs_mount_of(lower, allow_none=True)
        out_type = media_type or OCI_LAYER_GZIP
        kind = compression_for(out_type)
        top = self._snapshots.layer_stack(upper_spec)
        if not top.cim_paths:
            raise errdefs.FailedPrecondition(
                f"snapshot {top.key!r}: has no layer to export yet: failed precondition"
            )
        below: tuple[Path, ...] = ()
        if lower_spec is not None:
            below = self._snapshots.layer_stack(lower_spec).cim_paths
        if below != top.cim_paths[1:]:
            raise errdefs.InvalidArgument(
                "compare: the lower mount must show exactly the upper layer's parents "
                f"({len(top.cim_paths) - 1} layers), it shows {len(below)}"
            )
        ns = namespace or top.key.partition("/")[0]
        ref = ref or f"cimsnap-compare-{uuid.uuid4().hex}"
        cancelled = cancelled if cancelled is not None else threading.Event()
        job = ExportJob(
            subject=f"export {top.cim_paths[0].name}",
            cim=str(top.cim_paths[0]),
            parent_cim=str(below[0]) if below else None,
            compression=kind,
            source_date_epoch=epoch,
        )
        worker = ExportWorker(job, cancelled)
        try:
            with self._content.client(ns, lease=lease) as ctd:
                try:
                    digest = ctd.write_content(ref, worker.chunks(), worker.expected)
                except BaseException:
                    ctd.abort_write(ref)
                    worker.raise_if_failed()
                    raise
                exported = worker.result()
                all_labels = {UNCOMPRESSED_LABEL: exported.uncompressed_digest, **(labels or {})}
                ctd.update_content_labels(digest, all_labels)
        finally:
            worker.close()
        return Descriptor(media_type=out_type, digest=digest, size=exported.size)


def _undo_import(target: ExtractTarget, before: set[str]) -> None:
    """Destroy what a committed import wrote: the CIM and new entries of the layer dir."""
    destroy_cim_layer(target.cim_path, referenced_elsewhere=frozenset())
    for path in target.layer_path.iterdir():
        if path.name in before:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
