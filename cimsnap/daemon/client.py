"""A synchronous Snapshots client with the ``Snapshotter`` API, over gRPC.

``SnapshotsClient`` mirrors containerd's ``core/snapshots/proxy``: each method is one RPC,
and a failed RPC raises the ``cimsnap.errdefs`` class its status code stands for (the inverse
of ``cimsnap.daemon.server.STATUS_CODES``), so code written against ``Snapshotter`` - the shared
behaviour suite, the CLI - runs unchanged against a remote server. Codes outside that table
(UNKNOWN, DEADLINE_EXCEEDED, ...) raise ``Internal``; a server that cannot be reached raises
``Unavailable``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Final, TypeVar

import grpc
from google.protobuf import field_mask_pb2

from cimsnap import errdefs
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import MESSAGE_SIZE_OPTIONS, STATUS_CODES, info_from_pb, info_to_pb
from cimsnap.snapshots.snapshotter import Info, Mount, Usage

__all__ = ["NAMESPACE_HEADER", "SnapshotsClient", "error_for"]

#: gRPC metadata key containerd uses for the namespace (§5.4).
NAMESPACE_HEADER: Final = "containerd-namespace"
_CLASSES: Final = {code: cls for cls, code in STATUS_CODES.items()}
T = TypeVar("T")


def error_for(e: grpc.RpcError) -> errdefs.CimsnapError:
    """Return the errdefs exception for a failed RPC, carrying the server's message."""
    code = e.code()
    details = e.details() or ""
    cls = _CLASSES.get(code, errdefs.Internal)
    if cls is errdefs.Internal and code != grpc.StatusCode.INTERNAL:
        details = f"{code.name}: {details}"
    return cls(details)


def _mounts(messages: Sequence[object]) -> list[Mount]:
    return [
        Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))  # type: ignore[attr-defined]
        for m in messages
    ]


class SnapshotsClient:
    """The ``Snapshotter`` API backed by a Snapshots server at ``address``.

    ``address`` takes the server's forms (a socket path, ``unix://``, ``tcp://``).
    ``namespace`` is sent as the ``containerd-namespace`` header when given. ``snapshotter``
    fills the requests' ``snapshotter`` field. Use as a context manager or call ``close()``.
    """

    def __init__(
        self,
        address: str,
        *,
        namespace: str | None = None,
        snapshotter: str = "cimsnap",
        timeout: float | None = 60.0,
    ) -> None:
        self._channel = grpc.insecure_channel(
            parse_address(address).grpc_target,
            options=list(MESSAGE_SIZE_OPTIONS),
        )
        self._stub = pb_grpc.SnapshotsStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = ((NAMESPACE_HEADER, namespace),) if namespace else ()
        self._name = snapshotter
        self._timeout = timeout

    def __enter__(self) -> SnapshotsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel. Idempotent."""
        self._channel.close()

    def _call(self, method: Callable[..., T], request: object) -> T:
        try:
            return method(request, metadata=self._metadata, timeout=self._timeout)
        except grpc.RpcError as e:
            raise error_for(e) from None

    def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = pb.PrepareSnapshotRequest(
            snapshotter=self._name, key=key, parent=parent, labels=dict(labels or {})
        )
        return _mounts(self._call(self._stub.Prepare, request).mounts)

    def view(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        request = pb.ViewSnapshotRequest(
            snapshotter=self._name, key=key, parent=parent, labels=dict(labels or {})
        )
        return _mounts(self._call(self._stub.View, request).mounts)

    def mounts(self, key: str) -> list[Mount]:
        request = pb.MountsRequest(snapshotter=self._name, key=key)
        return _mounts(self._call(self._stub.Mounts, request).mounts)

    def commit(
        self, name: str, key: str, labels: Mapping[str, str] | None = None, parent: str = ""
    ) -> None:
        request = pb.CommitSnapshotRequest(
            snapshotter=self._name, name=name, key=key, labels=dict(labels or {}), parent=parent
        )
        self._call(self._stub.Commit, request)

    def remove(self, key: str) -> None:
        self._call(self._stub.Remove, pb.RemoveSnapshotRequest(snapshotter=self._name, key=key))

    def stat(self, key: str) -> Info:
        request = pb.StatSnapshotRequest(snapshotter=self._name, key=key)
        return info_from_pb(self._call(self._stub.Stat, request).info)

    def update(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        request = pb.UpdateSnapshotRequest(
            snapshotter=self._name,
            info=info_to_pb(info),
            update_mask=field_mask_pb2.FieldMask(paths=list(fieldpaths)),
        )
        return info_from_pb(self._call(self._stub.Update, request).info)

    def usage(self, key: str) -> Usage:
        response = self._call(self._stub.Usage, pb.UsageRequest(snapshotter=self._name, key=key))
        return Usage(size=response.size, inodes=response.inodes)

    def list(self, filters: Sequence[str] = ()) -> list[Info]:
        """Return every matching snapshot (all streamed batches, materialised)."""
        request = pb.ListSnapshotsRequest(snapshotter=self._name, filters=list(filters))
        try:
            stream = self._stub.List(request, metadata=self._metadata, timeout=self._timeout)
            return [info_from_pb(i) for batch in stream for i in batch.info]
        except grpc.RpcError as e:
            raise error_for(e) from None

    def cleanup(self) -> None:
        self._call(self._stub.Cleanup, pb.CleanupRequest(snapshotter=self._name))
