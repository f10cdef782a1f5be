"""A snapshot proxy that stores nothing: the floor of any Python gRPC snapshotter.

    python -m benchmarks._floor_snapshotter SOCKET

``benchmarks.ops_containerd`` registers it with containerd beside cimsnap, so that the
cost of the hop itself (containerd's Go client -> grpcio's server in Python -> back) is
measured for Prepare, Stat, Commit and Remove in the same run: no Python snapshotter
served through grpcio can answer faster than this one, which keeps its snapshots in a
dict and answers on the event loop. It implements what containerd calls during the
benchmark (and its garbage collector's Walk); the rest answers Unimplemented.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import grpc
from google.protobuf import empty_pb2

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.server import MESSAGE_SIZE_OPTIONS


class FloorSnapshots(pb_grpc.SnapshotsServicer):
    """Snapshots in memory: no files, no database, no checks beyond existence."""

    def __init__(self) -> None:
        self._infos: dict[str, pb.Info] = {}

    def _create(self, key: str, parent: str, kind: int) -> None:
        self._infos[key] = pb.Info(name=key, parent=parent, kind=kind)  # type: ignore[arg-type]

    async def Prepare(
        self, request: pb.PrepareSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrepareSnapshotResponse:
        self._create(request.key, request.parent, pb.ACTIVE)
        return pb.PrepareSnapshotResponse()

    async def View(
        self, request: pb.ViewSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.ViewSnapshotResponse:
        self._create(request.key, request.parent, pb.VIEW)
        return pb.ViewSnapshotResponse()

    async def Mounts(
        self, request: pb.MountsRequest, context: grpc.aio.ServicerContext
    ) -> pb.MountsResponse:
        return pb.MountsResponse()

    async def Commit(
        self, request: pb.CommitSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        active = self._infos.pop(request.key, None)
        if active is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.key}: not found")
        self._create(request.name, active.parent, pb.COMMITTED)
        return empty_pb2.Empty()

    async def Remove(
        self, request: pb.RemoveSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        if self._infos.pop(request.key, None) is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.key}: not found")
        return empty_pb2.Empty()

    async def Stat(
        self, request: pb.StatSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatSnapshotResponse:
        info = self._infos.get(request.key)
        if info is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{request.key}: not found")
        return pb.StatSnapshotResponse(info=info)

    async def List(
        self, request: pb.ListSnapshotsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ListSnapshotsResponse]:
        infos = list(self._infos.values())
        for start in range(0, len(infos), 100):
            yield pb.ListSnapshotsResponse(info=infos[start : start + 100])

    async def Cleanup(
        self, request: pb.CleanupRequest, context: grpc.aio.ServicerContext
    ) -> empty_pb2.Empty:
        return empty_pb2.Empty()


async def serve(socket: str) -> None:
    server = grpc.aio.server(options=list(MESSAGE_SIZE_OPTIONS))
    pb_grpc.add_SnapshotsServicer_to_server(FloorSnapshots(), server)  # type: ignore[no-untyped-call]
    server.add_insecure_port(f"unix:{socket}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
