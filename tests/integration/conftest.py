"""Fixtures shared by the integration tests: cimsnap (in a thread) behind a real containerd.

``containerd`` is module-scoped: one daemon pair per test module, stopped and deleted at
the end (no process, socket or directory is left behind).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from cimsnap.daemon.client import SnapshotsClient
from tests.grpc_harness import ServerThread, server_config, short_socket_dir
from tests.integration.containerd_harness import Containerd, require_containerd, running_containerd


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    require_containerd()
    base = short_socket_dir()
    server = ServerThread(server_config(base / "cimsnap", base))
    server.start()
    try:
        with running_containerd(base, server.address) as daemon:
            yield daemon
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ours(containerd: Containerd) -> Iterator[SnapshotsClient]:
    """A direct client to our server, to see what containerd did."""
    with SnapshotsClient(containerd.cimsnap) as client:
        yield client
