"""Small synchronous clients of containerd's own gRPC services (Content, Images, Leases,
Snapshots, Diff), as the differ and ``cimsnap unpack`` need them.

Every call carries ``containerd-namespace`` (and ``containerd-lease`` when a lease is
given). A failed RPC raises the :mod:`cimsnap.errdefs` class of its status code, with
containerd's message; an unreachable daemon raises ``Unavailable`` naming the address.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Final, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from cimsnap import errdefs
from cimsnap.api.containerd.services.content.v1 import content_pb2 as content_pb
from cimsnap.api.containerd.services.content.v1 import content_pb2_grpc as content_grpc
from cimsnap.api.containerd.services.diff.v1 import diff_pb2 as diff_pb
from cimsnap.api.containerd.services.diff.v1 import diff_pb2_grpc as diff_grpc
from cimsnap.api.containerd.services.images.v1 import images_pb2 as images_pb
from cimsnap.api.containerd.services.images.v1 import images_pb2_grpc as images_grpc
from cimsnap.api.containerd.services.leases.v1 import leases_pb2 as leases_pb
from cimsnap.api.containerd.services.leases.v1 import leases_pb2_grpc as leases_grpc
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as snap_pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as snap_grpc
from cimsnap.api.containerd.types import descriptor_pb2, mount_pb2
from cimsnap.diff.mediatypes import Descriptor
from cimsnap.snapshots.mounts import Mount

__all__ = [
    "LEASE_HEADER",
    "MESSAGE_BYTES",
    "NAMESPACE_HEADER",
    "Containerd",
    "ContentInfo",
    "descriptor_from_pb",
    "descriptor_to_pb",
    "error_for",
    "grpc_target",
    "mounts_from_pb",
    "mounts_to_pb",
]

NAMESPACE_HEADER: Final = "containerd-namespace"
LEASE_HEADER: Final = "containerd-lease"
#: containerd's proxy clients allow 16 MiB messages each way (§5.1).
MESSAGE_BYTES: Final = 16 * 1024 * 1024
#: Chunk size of Content.Write requests (containerd's own remote writer uses 1 MiB).
WRITE_CHUNK: Final = 1024 * 1024

_CODES: Final[Mapping[grpc.StatusCode, type[errdefs.CimsnapError]]] = {
    grpc.StatusCode.NOT_FOUND: errdefs.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errdefs.AlreadyExists,
    grpc.StatusCode.INVALID_ARGUMENT: errdefs.InvalidArgument,
    grpc.StatusCode.FAILED_PRECONDITION: errdefs.FailedPrecondition,
    grpc.StatusCode.UNAVAILABLE: errdefs.Unavailable,
    grpc.StatusCode.UNIMPLEMENTED: errdefs.Unimplemented,
    grpc.StatusCode.CANCELLED: errdefs.Canceled,
}
T = TypeVar("T")
ContentInfo = tuple[str, int, dict[str, str]]


def error_for(e: grpc.RpcError, subject: str) -> errdefs.CimsnapError:
    """The errdefs exception for a failed call about ``subject`` (other codes: Internal)."""
    code = e.code()
    cls = _CODES.get(code, errdefs.Internal)
    return cls(f"{subject}: {e.details() or code.name} ({code.name})")


def grpc_target(address: str) -> str:
    """A gRPC target for containerd's address: a socket path, ``unix://``, or ``tcp://``."""
    if address.startswith("tcp://"):
        return address[len("tcp://") :]
    if address.startswith("unix://"):
        return "unix:" + address[len("unix://") :]
    if address.startswith("unix:"):
        return address
    return "unix:" + address


def descriptor_from_pb(d: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def descriptor_to_pb(d: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=d.media_type, digest=d.digest, size=d.size, annotations=dict(d.annotations)
    )


def mounts_from_pb(messages: Iterable[mount_pb2.Mount]) -> list[Mount]:
    return [
        Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))
        for m in messages
    ]


def mounts_to_pb(mounts: Sequence[Mount]) -> list[mount_pb2.Mount]:
    return [
        mount_pb2.Mount(type=m.type, source=m.source, target=m.target, options=list(m.options))
        for m in mounts
    ]


class ContentReader:
    """One Content.Read stream as a file-like ``read(n)``, prefetched by a thread.

    A background thread pulls up to ``depth`` chunks ahead (bounded memory: containerd
    sends 1 MiB chunks), so the network overlaps the caller's work. ``close()`` cancels
    the stream. Errors of the stream are raised by ``read``.
    """

    def __init__(
        self,
        call: grpc.Call,
        responses: Iterator[content_pb.ReadContentResponse],
        subject: str,
        depth: int = 4,
    ) -> None:
        self._call = call
        self._responses = responses
        self._subject = subject
        self._cond = threading.Condition()
        self._chunks: list[bytes] = []
        self._depth = depth
        self._done = False
        self._error: BaseException | None = None
        self._closed = False
        self._buffer = memoryview(b"")
        self._thread = threading.Thread(target=self._pump, name="cimsnap-content-read", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for response in self._responses:
                with self._cond:
                    while len(self._chunks) >= self._depth and not self._closed:
                        self._cond.wait()
                    if self._closed:
                        return
                    if response.data:
                        self._chunks.append(response.data)
                    self._cond.notify_all()
        except grpc.RpcError as e:
            if not self._closed:
                self._error = error_for(e, self._subject)
        except BaseException as e:  # handed to the reader
            self._error = e
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def _next_chunk(self) -> bool:
        with self._cond:
            while not self._chunks and not self._done:
                self._cond.wait()
            if self._chunks:
                self._buffer = memoryview(self._chunks.pop(0))
                self._cond.notify_all()
                return True
            if self._error is not None:
                raise self._error
            return False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            parts = [bytes(self._buffer)]
            self._buffer = memoryview(b"")
            while self._next_chunk():
                parts.append(bytes(self._buffer))
                self._buffer = memoryview(b"")
            return b"".join(parts)
        if not self._buffer and not self._next_chunk():
            return b""
        out = bytes(self._buffer[:n])
        self._buffer = self._buffer[n:]
        return out

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._call.cancel()
        self._thread.join(10)


class Containerd:
    """A connection to containerd's gRPC ``address`` acting in ``namespace``.

    ``lease`` (optional) is sent as ``containerd-lease`` with every call, so what the
    calls create is held by that lease. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        address: str,
        namespace: str,
        *,
        lease: str | None = None,
        timeout: float | None = 60.0,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self._channel = grpc.insecure_channel(
            grpc_target(address),
            options=[
                ("grpc.max_receive_message_length", MESSAGE_BYTES),
                ("grpc.max_send_message_length", MESSAGE_BYTES),
            ],
        )
        self._timeout = timeout
        self.lease = lease
        self.content = content_grpc.ContentStub(self._channel)  # type: ignore[no-untyped-call]
        self.images = images_grpc.ImagesStub(self._channel)  # type: ignore[no-untyped-call]
        self.leases = leases_grpc.LeasesStub(self._channel)  # type: ignore[no-untyped-call]
        self.snapshots = snap_grpc.SnapshotsStub(self._channel)  # type: ignore[no-untyped-call]
        self.diff = diff_grpc.DiffStub(self._channel)  # type: ignore[no-untyped-call]

    def __enter__(self) -> Containerd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The headers of every call (no namespace header when ``namespace`` is empty)."""
        headers = [(NAMESPACE_HEADER, self.namespace)] if self.namespace else []
        if self.lease:
            headers.append((LEASE_HEADER, self.lease))
        return tuple(headers)

    def _call(
        self, method: Callable[..., T], request: object, subject: str, timeout: float | None = None
    ) -> T:
        try:
            return method(request, metadata=self.metadata, timeout=timeout or self._timeout)
        except grpc.RpcError as e:
            raise error_for(e, subject) from None

    # -- content -------------------------------------------------------------------

    def content_info(self, digest: str) -> ContentInfo:
        """Return (digest, size, labels) of a blob; NotFound if this namespace lacks it."""
        info = self._call(
            self.content.Info, content_pb.InfoRequest(digest=digest), f"content {digest}"
        ).info
        return info.digest, info.size, dict(info.labels)

    def read_content(self, digest: str) -> ContentReader:
        """Stream a whole blob (the caller closes the reader)."""
        call = self.content.Read(
            content_pb.ReadContentRequest(digest=digest), metadata=self.metadata
        )
        return ContentReader(call, call, f"content {digest}")

    def read_all(self, digest: str, limit: int = 16 * 1024 * 1024) -> bytes:
        """Read a small blob (manifest, index, config) whole; InvalidArgument past ``limit``."""
        _, size, _ = self.content_info(digest)
        if size > limit:
            raise errdefs.InvalidArgument(f"content {digest}: {size} bytes, too large")
        reader = self.read_content(digest)
        try:
            data = reader.read()
        finally:
            reader.close()
        return data

    def update_content_labels(self, digest: str, labels: Mapping[str, str]) -> None:
        """Set ``labels`` on a blob (only those keys; others stay)."""
        request = content_pb.UpdateRequest(
            info=content_pb.Info(digest=digest, labels=dict(labels)),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{k}" for k in labels]),
        )
        self._call(self.content.Update, request, f"content {digest}")

    def write_content(
        self, ref: str, chunks: Iterable[bytes], expected: Callable[[], tuple[str, int]]
    ) -> str:
        """Write a blob through Content.Write under ``ref``; return its digest.

        ``chunks`` is consumed lazily while the stream is open; ``expected()`` is asked for
        (digest, size) after the last chunk, and the commit carries them, so containerd
        verifies both. AlreadyExists from containerd (the blob is there) is success.
        """

        def requests() -> Iterator[content_pb.WriteContentRequest]:
            offset = 0
            for data in chunks:
                for start in range(0, len(data), WRITE_CHUNK):
                    piece = data[start : start + WRITE_CHUNK]
                    yield content_pb.WriteContentRequest(
                        action=content_pb.WRITE, ref=ref, offset=offset, data=piece
                    )
                    offset += len(piece)
            digest, size = expected()
            yield content_pb.WriteContentRequest(
                action=content_pb.COMMIT, ref=ref, offset=offset, total=size, expected=digest
            )

        digest = ""
        try:
            for response in self.content.Write(requests(), metadata=self.metadata):
                if response.action == content_pb.COMMIT:
                    digest = response.digest
        except grpc.RpcError as e:
            error = error_for(e, f"content write {ref}")
            if not isinstance(error, errdefs.AlreadyExists):
                raise error from None
            digest = expected()[0]
        return digest or expected()[0]

    def abort_write(self, ref: str) -> None:
        with contextlib.suppress(grpc.RpcError):  # nothing to abort
            self.content.Abort(content_pb.AbortRequest(ref=ref), metadata=self.metadata)

    # -- images and leases -----------------------------------------------------------

    def get_image(self, name: str) -> Descriptor:
        """Return the target descriptor of image ``name``; NotFound if there is none."""
        image = self._call(
            self.images.Get, images_pb.GetImageRequest(name=name), f"image {name!r}"
        ).image
        return descriptor_from_pb(image.target)

    def create_lease(self, lease_id: str, expire: str) -> None:
        """Create lease ``lease_id`` that containerd's GC drops at RFC 3339 time ``expire``."""
        request = leases_pb.CreateRequest(id=lease_id, labels={"containerd.io/gc.expire": expire})
        self._call(self.leases.Create, request, f"lease {lease_id}")

    def delete_lease(self, lease_id: str) -> None:
        request = leases_pb.DeleteRequest(id=lease_id)
        self._call(self.leases.Delete, request, f"lease {lease_id}")

    # -- snapshots (through containerd's metadata layer) --------------------------------

    def stat_snapshot(self, snapshotter: str, key: str) -> snap_pb.Info:
        request = snap_pb.StatSnapshotRequest(snapshotter=snapshotter, key=key)
        response: snap_pb.StatSnapshotResponse = self._call(
            self.snapshots.Stat, request, f"snapshot {key!r}"
        )
        return response.info

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str]
    ) -> list[Mount]:
        request = snap_pb.PrepareSnapshotRequest(
            snapshotter=snapshotter, key=key, parent=parent, labels=dict(labels)
        )
        return mounts_from_pb(
            self._call(self.snapshots.Prepare, request, f"snapshot {key!r}").mounts
        )

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        request = snap_pb.MountsRequest(snapshotter=snapshotter, key=key)
        return mounts_from_pb(
            self._call(self.snapshots.Mounts, request, f"snapshot {key!r}").mounts
        )

    def commit_snapshot(
        self, snapshotter: str, name: str, key: str, labels: Mapping[str, str]
    ) -> None:
        request = snap_pb.CommitSnapshotRequest(
            snapshotter=snapshotter, name=name, key=key, labels=dict(labels)
        )
        self._call(self.snapshots.Commit, request, f"snapshot {name!r}")

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        request = snap_pb.RemoveSnapshotRequest(snapshotter=snapshotter, key=key)
        self._call(self.snapshots.Remove, request, f"snapshot {key!r}")

    # -- a differ (containerd's or cimsnap's) -------------------------------------------

    def apply(
        self, desc: Descriptor, mounts: Sequence[Mount], timeout: float | None = None
    ) -> Descriptor:
        """Diff.Apply of ``desc`` onto ``mounts``; return the applied (uncompressed) descriptor."""
        request = diff_pb.ApplyRequest(diff=descriptor_to_pb(desc), mounts=mounts_to_pb(mounts))
        response = self._call(self.diff.Apply, request, f"apply {desc.digest}", timeout)
        return descriptor_from_pb(response.applied)

    def compare(
        self,
        lower: Sequence[Mount],
        upper: Sequence[Mount],
        *,
        media_type: str = "",
        ref: str = "",
        labels: Mapping[str, str] | None = None,
        timeout: float | None = None,
        source_date_epoch_ns: int | None = None,
    ) -> Descriptor:
        """Diff.Diff (containerd's Compare): the blob of ``upper`` over ``lower``;
        ``source_date_epoch_ns`` (Unix ns) is sent as the request's source_date_epoch."""
        request = diff_pb.DiffRequest(
            left=mounts_to_pb(lower),
            right=mounts_to_pb(upper),
            media_type=media_type,
            ref=ref,
            labels=dict(labels or {}),
        )
        if source_date_epoch_ns is not None:
            seconds, nanos = divmod(source_date_epoch_ns, 1_000_000_000)
            request.source_date_epoch.seconds = seconds
            request.source_date_epoch.nanos = nanos
        response = self._call(self.diff.Diff, request, "compare", timeout)
        return descriptor_from_pb(response.diff)
