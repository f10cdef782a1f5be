"""A costly List stops when its client's deadline passes: the read workers come back.

Each of the 16 regular expressions below costs ~25 ms per 4 KB label value (linear, but
with a large constant), so one List over 300 such snapshots would occupy a read worker
for about two minutes. Four of them (as many as there are read workers) with a short
deadline must not keep the next List from being answered.
"""

from __future__ import annotations

import random
import shutil
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import READ_WORKERS
from cimsnap.snapshots.filters import MAX_REGEX_SELECTORS
from cimsnap.snapshots.snapshotter import InfoRow, Snapshotter
from tests.grpc_harness import ServerThread, server_config, short_socket_dir

SNAPSHOTS = 300


@pytest.fixture
def stub(tmp_path: Path) -> Iterator[pb_grpc.SnapshotsStub]:
    sock_dir = short_socket_dir()
    try:
        with ServerThread(server_config(tmp_path, sock_dir)) as server:
            target = parse_address(server.address).grpc_target
            with grpc.insecure_channel(target) as channel:
                yield pb_grpc.SnapshotsStub(channel)
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


def populate(stub: pb_grpc.SnapshotsStub, count: int = SNAPSHOTS) -> pb.ListSnapshotsRequest:
    """Create ``count`` snapshots; return a List request that would take minutes over them."""
    rng = random.Random(5)
    for i in range(count):
        value = "".join(rng.choice("ab") for _ in range(4000))
        stub.Prepare(pb.PrepareSnapshotRequest(key=f"s{i}", labels={"a": value}))
    costly = ",".join(f'labels.a~="[ab]*a[ab]{{{900 + n}}}c"' for n in range(MAX_REGEX_SELECTORS))
    return pb.ListSnapshotsRequest(filters=[costly])


@pytest.mark.timeout(300)
def test_deadline_stops_a_costly_list(stub: pb_grpc.SnapshotsStub) -> None:
    request = populate(stub)

    def expire() -> grpc.StatusCode:
        try:
            list(stub.List(request, timeout=0.5))
        except grpc.RpcError as e:
            return e.code()  # type: ignore[attr-defined,no-any-return]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(READ_WORKERS) as pool:
        codes = list(pool.map(lambda _: expire(), range(READ_WORKERS)))
    assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * READ_WORKERS
    # Without cancellation every read worker would still be matching for minutes.
    plain = pb.ListSnapshotsRequest(filters=["kind==active"])
    answered = [i.name for r in stub.List(plain, timeout=30) for i in r.info]
    assert len(answered) == SNAPSHOTS


class ListStarted:
    """The real snapshotter, with an event set when a List starts."""

    def __init__(self, real: Snapshotter) -> None:
        self._real = real
        self.started = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def list_rows(
        self, filters: Sequence[str] = (), *, cancelled: threading.Event | None = None
    ) -> list[InfoRow]:
        self.started.set()
        return self._real.list_rows(filters, cancelled=cancelled)


@pytest.mark.timeout(300)
def test_shutdown_does_not_wait_for_a_costly_list(tmp_path: Path) -> None:
    """Defect 1 also had SIGTERM wait for the running match; the grace period bounds it."""
    wrapped: list[ListStarted] = []

    def wrap(real: Snapshotter) -> ListStarted:
        wrapped.append(ListStarted(real))
        return wrapped[0]

    sock_dir = short_socket_dir()
    config = server_config(tmp_path, sock_dir, shutdown_grace_seconds=1.0)
    server = ServerThread(config, wrap=wrap).start()
    try:
        target = parse_address(server.address).grpc_target
        with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(1) as pool:
            stub = pb_grpc.SnapshotsStub(channel)
            request = populate(stub, 2 * SNAPSHOTS)  # minutes of matching
            running = pool.submit(lambda: list(stub.List(request)))  # no deadline
            assert wrapped[0].started.wait(30)
            stopper = threading.Thread(target=server.stop)
            stopper.start()
            stopper.join(60)  # a failure bound, not a measurement
            assert not stopper.is_alive(), "shutdown waited for the List"
            with pytest.raises(grpc.RpcError):
                running.result(timeout=60)
    finally:
        server.stop()  # idempotent; on a failure above, the server must not outlive the test
        shutil.rmtree(sock_dir, ignore_errors=True)
