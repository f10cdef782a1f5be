"""Fixtures: the real gRPC server (real Snapshotter, real unix socket) and a client to it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from tests.grpc_harness import ServerThread, server_config, short_socket_dir


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    path = short_socket_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(tmp_path: Path, sock_dir: Path) -> Iterator[ServerThread]:
    with ServerThread(server_config(tmp_path, sock_dir)) as running:
        yield running


@pytest.fixture
def client(server: ServerThread) -> Iterator[SnapshotsClient]:
    with SnapshotsClient(server.address) as c:
        yield c
