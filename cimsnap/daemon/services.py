"""The services ``cimsnap serve`` puts on its one socket: Snapshots and Diff."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cimsnap.daemon.config import Config
from cimsnap.daemon.diff_service import DiffService
from cimsnap.daemon.metrics import RpcMetrics
from cimsnap.daemon.server import BlockingCalls, GrpcService, SnapshotsService, SnapshotterAPI
from cimsnap.diff.content import ContainerdContent
from cimsnap.diff.differ import Differ
from cimsnap.snapshots.snapshotter import Snapshotter

__all__ = ["build_services"]


def build_services(
    config: Config,
    snapshotter: Snapshotter,
    metrics: RpcMetrics,
    api: SnapshotterAPI | None = None,
) -> tuple[list[GrpcService], BlockingCalls, Callable[[], None]]:
    """Return (services, the snapshot call pool, close) for ``Daemon``.

    ``api`` may wrap ``snapshotter`` for the Snapshots service (tests); the differ always
    uses ``snapshotter`` itself. ``close`` stops the apply pool (after the server drained
    and cancelled running RPCs), then closes the snapshotter.
    """
    calls = BlockingCalls(config.max_workers, metrics)
    apply_calls = BlockingCalls(config.max_concurrent_applies, metrics)
    content_dir = Path(config.containerd_content_dir) if config.containerd_content_dir else None
    differ = Differ(snapshotter, ContainerdContent(config.containerd_address, content_dir))
    services: list[GrpcService] = [
        SnapshotsService(api if api is not None else snapshotter, calls),
        DiffService(differ, apply_calls),
    ]

    def close() -> None:
        apply_calls.shutdown()
        snapshotter.close()

    return services, calls, close
