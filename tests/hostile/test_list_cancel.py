"""A costly List stops when its client's deadline passes: the read workers come back.

Each of the 16 regular expressions below costs ~25 ms per 4 KB label value (linear, but
with a large constant), so one List over 300 such snapshots would occupy a read worker
for about two minutes. Four of them (as many as there are read workers) with a short
deadline must not keep the next List from being answered.
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import READ_WORKERS
from cimsnap.snapshots.filters import MAX_REGEX_SELECTORS
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


@pytest.mark.timeout(300)
def test_deadline_stops_a_costly_list(stub: pb_grpc.SnapshotsStub) -> None:
    rng = random.Random(5)
    for i in range(SNAPSHOTS):
        value = "".join(rng.choice("ab") for _ in range(4000))
        stub.Prepare(pb.PrepareSnapshotRequest(key=f"s{i}", labels={"a": value}))
    costly = ",".join(f'labels.a~="[ab]*a[ab]{{{900 + n}}}c"' for n in range(MAX_REGEX_SELECTORS))
    request = pb.ListSnapshotsRequest(filters=[costly])

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
