"""The shared snapshotter suite (tests/snapshotter_suite.py), run through the gRPC server.

Each object the factory returns is a ``SnapshotsClient`` talking to a real server (its own
thread and event loop, a real ``Snapshotter`` on ``root``) over a unix socket; errors come
back as status codes and are mapped to the same ``cimsnap.errdefs`` classes. ``close()``
stops that server, which closes the snapshotter and releases ``root``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from tests.grpc_harness import ServerThread, server_config, short_socket_dir
from tests.snapshotter_suite import *  # noqa: F403 - collects the suite's test_* functions


class RemoteSnapshotter(SnapshotsClient):
    """A client that owns the server it talks to."""

    def __init__(self, root: Path, sock_dir: Path) -> None:
        self._server = ServerThread(server_config(root.parent, sock_dir, root=str(root)))
        self._server.start()
        super().__init__(self._server.address)
        self._closed = False

    def wait_reclaimed(self, timeout: float | None = None) -> bool:
        """Wait for the served snapshotter's reaper (it runs in this process)."""
        return self._server.snapshotter.wait_reclaimed(timeout)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        super().close()
        self._server.stop()


@pytest.fixture
def snapshotter_factory() -> Iterator[Callable[[Path], RemoteSnapshotter]]:
    opened: list[RemoteSnapshotter] = []
    sock_dirs: list[Path] = []

    def make(root: Path) -> RemoteSnapshotter:
        sock_dirs.append(short_socket_dir())
        remote = RemoteSnapshotter(root, sock_dirs[-1])
        opened.append(remote)
        return remote

    yield make
    for remote in opened:
        remote.close()
    for path in sock_dirs:
        shutil.rmtree(path, ignore_errors=True)
