"""List and Stat never queue behind reads that can wait for seconds.

Mounts may build a deferred layer behind an Apply's import, and Usage walks a layer's
files; both once shared the read pool with List, and four of them stuck together held
every List back (p99 0.24-0.37 s in runs with Applies). Here Mounts and Usage are made to
block (the only way to hold them for a known time) while List and Stat must still answer.
"""

from __future__ import annotations

import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import READ_WORKERS
from cimsnap.snapshots.snapshotter import Snapshotter
from tests.grpc_harness import ServerThread, server_config, short_socket_dir


class SlowReads:
    """The real snapshotter, with Mounts and Usage held until ``release`` is set."""

    def __init__(self, real: Snapshotter) -> None:
        self._real = real
        self.release = threading.Event()
        self.waiting = threading.Semaphore(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def _hold(self) -> None:
        self.waiting.release()
        assert self.release.wait(60)

    def mounts(self, key: str) -> Any:
        self._hold()
        return self._real.mounts(key)

    def usage(self, key: str) -> Any:
        self._hold()
        return self._real.usage(key)


def test_list_and_stat_answer_while_mounts_and_usage_wait(tmp_path: Path) -> None:
    wrapped: list[SlowReads] = []

    def wrap(real: Snapshotter) -> SlowReads:
        wrapped.append(SlowReads(real))
        return wrapped[0]

    sock_dir = short_socket_dir()
    server = ServerThread(server_config(tmp_path, sock_dir, max_workers=8), wrap=wrap).start()
    try:
        target = parse_address(server.address).grpc_target
        slow = READ_WORKERS  # of each: together as many as the read pool has threads, twice
        with grpc.insecure_channel(target) as channel, ThreadPoolExecutor(2 * slow) as pool:
            stub = pb_grpc.SnapshotsStub(channel)
            stub.Prepare(pb.PrepareSnapshotRequest(key="a"))
            held = [pool.submit(stub.Usage, pb.UsageRequest(key="a")) for _ in range(slow)]
            held += [pool.submit(stub.Mounts, pb.MountsRequest(key="a")) for _ in range(slow)]
            for _ in range(2 * slow):  # every one of them is in the snapshotter, waiting
                assert wrapped[0].waiting.acquire(timeout=30)
            listed = [
                i.name for r in stub.List(pb.ListSnapshotsRequest(), timeout=5) for i in r.info
            ]
            assert listed == ["a"]
            stat = stub.Stat(pb.StatSnapshotRequest(key="a"), timeout=5)
            assert stat.info.name == "a"
            wrapped[0].release.set()
            for call in held:
                call.result(timeout=30)
    finally:
        wrapped[0].release.set()
        server.stop()
        shutil.rmtree(sock_dir, ignore_errors=True)
