"""The daemon in-process (pytest-asyncio): error mapping, graceful shutdown, health,
reflection, metrics and TCP, against real sockets and the real snapshotter."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from cimsnap import errdefs
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.config import Config
from cimsnap.daemon.listen import TcpAddress, parse_address
from cimsnap.daemon.metrics import RpcMetrics
from cimsnap.daemon.process import Daemon
from cimsnap.daemon.server import STATUS_CODES, status_code_for
from cimsnap.snapshots.snapshotter import InfoRow, Snapshotter, WouldBlock
from tests.grpc_harness import running_daemon, server_config

SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"


def target(config_address: str) -> str:
    return parse_address(config_address).grpc_target


def test_every_error_class_has_a_status_code() -> None:
    classes = [getattr(errdefs, n) for n in errdefs.__all__ if n != "CimsnapError"]
    assert set(STATUS_CODES) == set(classes)
    assert grpc.StatusCode.UNKNOWN not in STATUS_CODES.values()

    class Sub(errdefs.NotFound):
        pass

    assert status_code_for(Sub("x")) == grpc.StatusCode.NOT_FOUND


class Raising:
    """Wraps the real snapshotter; ``stat_row(key)`` raises the error named by ``key``.

    ``stat_row_nowait`` raises the same way, so these errors come from the event-loop path
    of Stat (``Gated`` below covers the worker-thread path).
    """

    def __init__(self, real: Snapshotter) -> None:
        self._real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def stat_row(self, key: str) -> InfoRow:
        if key == "ValueError":
            raise ValueError("unexpected")
        if key == "OSError":
            raise OSError(5, "Input/output error")
        raise getattr(errdefs, key)(f"snapshot {key!r}: {key.lower()}")

    stat_row_nowait = stat_row


@pytest.mark.parametrize(
    ("key", "code"),
    [(cls.__name__, code) for cls, code in STATUS_CODES.items()]
    + [("ValueError", grpc.StatusCode.INTERNAL), ("OSError", grpc.StatusCode.INTERNAL)],
)
async def test_error_classes_map_to_codes(
    tmp_path: Path,
    sock_dir: Path,
    key: str,
    code: grpc.StatusCode,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = server_config(tmp_path, sock_dir)
    async with (
        running_daemon(config, wrap=Raising),
        grpc.aio.insecure_channel(target(config.address)) as channel,
    ):
        stub = pb_grpc.SnapshotsStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.Stat(pb.StatSnapshotRequest(key=key))
    assert e.value.code() == code
    assert key in (e.value.details() or "")  # the message names the subject / the class
    if code == grpc.StatusCode.INTERNAL and key in ("ValueError", "OSError"):
        assert any(r.exc_info for r in caplog.records), "unexpected errors log a traceback"


class Gated:
    """Wraps the real snapshotter; ``stat_row`` blocks until ``gate`` is set.

    A Stat that has to wait is what ``stat_row_nowait`` refuses (WouldBlock), so the server
    runs the gated ``stat_row`` on a worker thread, as it would a real Stat that must wait.
    """

    def __init__(self, real: Snapshotter) -> None:
        self._real = real
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.nowait_calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)

    def stat_row(self, key: str) -> InfoRow:
        self.entered.set()
        self.gate.wait(30)
        return self._real.stat_row(key)

    def stat_row_nowait(self, key: str) -> InfoRow:
        self.nowait_calls += 1
        raise WouldBlock("gated")


@contextlib.asynccontextmanager
async def stat_held_in_a_worker(
    config: Config,
) -> AsyncIterator[tuple[Daemon, Snapshotter, Gated, asyncio.Future[pb.StatSnapshotResponse]]]:
    """A running daemon whose Stat of "k" (an RPC in flight) waits at its gate in a worker."""
    gated: list[Gated] = []

    def wrap(real: Snapshotter) -> Gated:
        gated.append(Gated(real))
        return gated[0]

    async with (
        running_daemon(config, wrap=wrap) as (daemon, snapshotter),
        grpc.aio.insecure_channel(target(config.address)) as channel,
    ):
        stub = pb_grpc.SnapshotsStub(channel)
        await stub.Prepare(pb.PrepareSnapshotRequest(key="k"))
        inflight = asyncio.ensure_future(stub.Stat(pb.StatSnapshotRequest(key="k")))
        assert await asyncio.to_thread(gated[0].entered.wait, 10)
        yield daemon, snapshotter, gated[0], inflight


async def test_graceful_shutdown_lets_a_running_rpc_finish(tmp_path: Path, sock_dir: Path) -> None:
    config = server_config(tmp_path, sock_dir, shutdown_grace_seconds=30.0)
    async with stat_held_in_a_worker(config) as (daemon, snapshotter, gated, inflight):
        stopping = asyncio.ensure_future(daemon.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waiting for the running RPC
        gated.gate.set()
        response = await inflight
        assert response.info.name == "k"
        assert gated.nowait_calls == 1  # tried on the loop first, then waited in a thread
        await asyncio.wait_for(stopping, 30)
    assert not Path(config.address).exists()  # socket removed
    with pytest.raises(errdefs.Unavailable):
        snapshotter.stat("k")  # closed after the RPCs drained


async def test_grace_period_expiry_cancels_the_rpc(tmp_path: Path, sock_dir: Path) -> None:
    config = server_config(tmp_path, sock_dir, shutdown_grace_seconds=0.2)
    async with stat_held_in_a_worker(config) as (daemon, _, gated, inflight):
        stopping = asyncio.ensure_future(daemon.stop())
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await asyncio.wait_for(inflight, 10)
        assert e.value.code() != grpc.StatusCode.OK
        gated.gate.set()  # the worker thread finishes; stop() waits for it
        await asyncio.wait_for(stopping, 30)


async def test_health_and_reflection(tmp_path: Path, sock_dir: Path) -> None:
    config = server_config(tmp_path, sock_dir)
    async with running_daemon(config):
        async with grpc.aio.insecure_channel(target(config.address)) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", SNAPSHOTS):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING

        def reflect() -> tuple[Sequence[str], list[str]]:
            with grpc.insecure_channel(target(config.address)) as sync_channel:
                db = ProtoReflectionDescriptorDatabase(sync_channel)
                pool = descriptor_pool.DescriptorPool(db)
                services = db.get_services()
                commit = pool.FindMessageTypeByName(
                    "containerd.services.snapshots.v1.CommitSnapshotRequest"
                )
                return services, [f.name for f in commit.fields]

        services, fields = await asyncio.to_thread(reflect)
    assert SNAPSHOTS in services and "grpc.health.v1.Health" in services
    assert "containerd.services.diff.v1.Diff" in services
    assert "parent" in fields


async def test_reflection_can_be_disabled(tmp_path: Path, sock_dir: Path) -> None:
    config = server_config(tmp_path, sock_dir, reflection=False)
    async with running_daemon(config):

        def services() -> Sequence[str]:
            with grpc.insecure_channel(target(config.address)) as channel:
                return ProtoReflectionDescriptorDatabase(channel).get_services()

        with pytest.raises(grpc.RpcError):
            await asyncio.to_thread(services)


async def test_metrics_endpoint_counts_rpcs(tmp_path: Path, sock_dir: Path) -> None:
    config = server_config(tmp_path, sock_dir, metrics_address="127.0.0.1:0")
    async with running_daemon(config, metrics=RpcMetrics()) as (daemon, _):
        async with grpc.aio.insecure_channel(target(config.address)) as channel:
            stub = pb_grpc.SnapshotsStub(channel)
            await stub.Prepare(pb.PrepareSnapshotRequest(key="a"))
            await stub.Prepare(pb.PrepareSnapshotRequest(key="b"))
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Stat(pb.StatSnapshotRequest(key="missing"))
        url = f"http://127.0.0.1:{daemon.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    text = body.decode()
    prepare = f'method="{SNAPSHOTS}/Prepare"'
    stat = f'method="{SNAPSHOTS}/Stat"'
    assert f'cimsnap_grpc_requests_total{{code="OK",{prepare}}} 2.0' in text
    assert f'cimsnap_grpc_errors_total{{code="NOT_FOUND",{stat}}} 1.0' in text
    assert f"cimsnap_grpc_request_duration_seconds_count{{{prepare}}} 2.0" in text


async def test_loopback_tcp(tmp_path: Path, sock_dir: Path) -> None:
    config = replace(server_config(tmp_path, sock_dir), address="tcp://127.0.0.1:0")
    async with running_daemon(config) as (daemon, _):
        bound = daemon.bound
        assert isinstance(bound, TcpAddress) and bound.port > 0
        async with grpc.aio.insecure_channel(bound.grpc_target) as channel:
            stub = pb_grpc.SnapshotsStub(channel)
            await stub.Prepare(pb.PrepareSnapshotRequest(key="over-tcp"))
            info = (await stub.Stat(pb.StatSnapshotRequest(key="over-tcp"))).info
    assert info.name == "over-tcp"


async def test_non_loopback_tcp_is_refused(tmp_path: Path, sock_dir: Path) -> None:
    config = replace(server_config(tmp_path, sock_dir), address="tcp://0.0.0.0:0")
    with pytest.raises(errdefs.InvalidArgument):
        async with running_daemon(config):
            pass


async def test_tcp_port_in_use_is_unavailable(tmp_path: Path, sock_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = replace(server_config(tmp_path, sock_dir), address=f"tcp://127.0.0.1:{port}")
        with pytest.raises(errdefs.Unavailable) as e:
            async with running_daemon(config):
                pass
    assert str(port) in str(e.value)
