"""``containerd.services.diff.v1.Diff`` over cimsnap's :class:`~cimsnap.diff.differ.Differ`.

A pure adapter, like ``SnapshotsService``: request -> differ call -> response, error class
-> status code (``BlockingCalls``). Served on the same socket as Snapshots, so containerd's
``cimsnap-diff`` proxy entry may name the same address (§5.1).

* The cheap checks (mount types, media type, payloads) run on the event loop before a call
  is queued, so a Linux layer's Apply gets Unimplemented at once even while Windows layers
  occupy every apply slot (containerd then uses ``walking``, §5.3).
* Apply and Compare run on their own pool of ``max_concurrent_applies`` threads; further
  calls wait in its queue without holding a thread.
* Cancellation: when the client goes away (or the server's shutdown grace ends) the
  handler is cancelled and sets the call's ``threading.Event``; the import stops at its
  next read and commits nothing.
* Namespace: the ``containerd-namespace`` header when present, else the differ derives it
  from the snapshot's backend key. A ``containerd-lease`` header is forwarded to the
  Content.Write of Compare.
"""

from __future__ import annotations

import threading
from typing import Final

import grpc

from cimsnap import errdefs
from cimsnap.api.containerd.services.diff.v1 import diff_pb2 as pb
from cimsnap.api.containerd.services.diff.v1 import diff_pb2_grpc as pb_grpc
from cimsnap.daemon.server import BlockingCalls, status_code_for
from cimsnap.diff.containerd import (
    LEASE_HEADER,
    NAMESPACE_HEADER,
    descriptor_from_pb,
    descriptor_to_pb,
    mounts_from_pb,
)
from cimsnap.diff.differ import Differ

__all__ = ["DiffService"]


def _header(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str) and value:
            return value
    return None


class DiffService(pb_grpc.DiffServicer):
    """The Diff service; ``calls`` is the apply pool (``max_concurrent_applies`` threads)."""

    service_name: Final = "containerd.services.diff.v1.Diff"

    def __init__(self, differ: Differ, calls: BlockingCalls) -> None:
        self._differ = differ
        self._calls = calls

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_DiffServicer_to_server(self, server)  # type: ignore[no-untyped-call]

    async def _refuse(
        self, method: str, context: grpc.aio.ServicerContext, e: errdefs.CimsnapError
    ) -> None:
        code = status_code_for(e)
        self._calls.metrics.observe(f"{self.service_name}/{method}", code.name, 0.0)
        await context.abort(code, str(e) or type(e).__name__)

    async def Apply(
        self, request: pb.ApplyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ApplyResponse:
        desc = descriptor_from_pb(request.diff)
        mounts = mounts_from_pb(request.mounts)
        payloads = len(request.payloads)
        try:
            self._differ.check_apply(desc, mounts, payloads)
        except errdefs.CimsnapError as e:
            await self._refuse("Apply", context, e)
        namespace = _header(context, NAMESPACE_HEADER)
        cancelled = threading.Event()

        def apply() -> pb.ApplyResponse:
            applied = self._differ.apply(
                desc, mounts, namespace=namespace, payload_count=payloads, cancelled=cancelled
            )
            return pb.ApplyResponse(applied=descriptor_to_pb(applied))

        try:
            return await self._calls.run(f"{self.service_name}/Apply", context, apply)
        finally:
            cancelled.set()  # after completion a no-op; on cancellation it stops the import

    async def Diff(
        self, request: pb.DiffRequest, context: grpc.aio.ServicerContext
    ) -> pb.DiffResponse:
        lower = mounts_from_pb(request.left)
        upper = mounts_from_pb(request.right)
        namespace = _header(context, NAMESPACE_HEADER)
        lease = _header(context, LEASE_HEADER)
        cancelled = threading.Event()
        epoch_ns: int | None = None
        if request.HasField("source_date_epoch"):  # containerd 1.7+; a Timestamp
            stamp = request.source_date_epoch
            epoch_ns = stamp.seconds * 1_000_000_000 + stamp.nanos

        def compare() -> pb.DiffResponse:
            desc = self._differ.compare(
                lower,
                upper,
                media_type=request.media_type,
                ref=request.ref,
                labels=dict(request.labels),
                namespace=namespace,
                lease=lease,
                cancelled=cancelled,
                source_date_epoch_ns=epoch_ns,
            )
            return pb.DiffResponse(diff=descriptor_to_pb(desc))

        try:
            return await self._calls.run(f"{self.service_name}/Diff", context, compare)
        finally:
            cancelled.set()
