"""Fixtures for the hostile corpus: one real server per module over a unix socket.

Every case sends what an attacker or a broken client could send through a real gRPC
channel (no mocks) and checks the status code and that the root is exactly as before.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.daemon.listen import parse_address
from tests.grpc_harness import ServerThread, server_config, short_socket_dir


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


@pytest.fixture(scope="module")
def hostile_server(hostile_root: Path) -> Iterator[ServerThread]:
    sock_dir = short_socket_dir()
    try:
        with ServerThread(server_config(hostile_root, sock_dir)) as running:
            yield running
    finally:
        shutil.rmtree(sock_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def channel(hostile_server: ServerThread) -> Iterator[grpc.Channel]:
    # No client-side size limits: the server's own limits are under test.
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
    target = parse_address(hostile_server.address).grpc_target
    with grpc.insecure_channel(target, options=options) as ch:
        yield ch


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.SnapshotsStub:
    return pb_grpc.SnapshotsStub(channel)


@pytest.fixture(scope="module")
def client(hostile_server: ServerThread) -> Iterator[SnapshotsClient]:
    with SnapshotsClient(hostile_server.address) as c:
        yield c
