"""Operations against a real containerd 1.6.20: cimsnap restarts, and garbage collection.

* cimsnap (a real ``cimsnap serve`` process) stops and starts again while containerd runs:
  calls fail while it is down, and containerd's next call after its reconnect backoff
  succeeds, with every snapshot kept.
* ``ctr images rm`` of an image whose layer snapshot is in cimsnap makes containerd's GC
  call cimsnap's Remove, which destroys the layer's CIM on disk. The snapshot is made as
  containerd's unpacker makes it (Prepare of an extract key and Commit under the chain ID,
  through containerd's Snapshots API, inside a lease), and tied to the image by the label
  containerd's unpacker puts on the image config (``containerd.io/gc.ref.snapshot.cimsnap``).
  containerd 1.6 cannot apply a Windows layer itself, so nothing writes the layer: it
  commits as an empty layer.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.snapshots.snapshotter import Kind
from tests.grpc_harness import ServeProcess, short_socket_dir
from tests.integration.containerd_harness import (
    Containerd,
    backend,
    require_containerd,
    running_containerd,
    wait_for,
)
from tests.integration.ociarchive import gzip_layer, tar_of, write_oci_archive

pytestmark = pytest.mark.integration


class Cimsnap:
    """``cimsnap serve`` as a process that can be stopped and started on the same root."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.socket = base / "cimsnap.sock"
        self.root = base / "cimsnap-root"
        self.proc: ServeProcess | None = None

    def start(self) -> None:
        notify = self.base / "notify"
        notify.mkdir(exist_ok=True)
        self.proc = ServeProcess(["--address", str(self.socket), "--root", str(self.root)], notify)
        assert self.proc.next_notification() == "READY=1"

    def stop(self) -> None:
        if self.proc is not None:
            code, err = self.proc.terminate()
            (self.proc.notify_path).unlink(missing_ok=True)
            self.proc = None
            assert code == 0, err


@pytest.fixture
def stack() -> Iterator[tuple[Containerd, Cimsnap]]:
    require_containerd()
    base = short_socket_dir()
    cimsnap = Cimsnap(base)
    cimsnap.start()
    try:
        with running_containerd(base, str(cimsnap.socket)) as daemon:
            yield daemon, cimsnap
    finally:
        cimsnap.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_cimsnap_restarts_while_containerd_runs(stack: tuple[Containerd, Cimsnap]) -> None:
    containerd, cimsnap = stack
    containerd.snapshots("prepare", "before")
    cimsnap.stop()
    down = containerd.snapshots("prepare", "while-down", check=False)
    assert down.returncode != 0
    assert "unavailable" in down.stderr.lower() or "connection" in down.stderr.lower()
    cimsnap.start()
    # containerd's gRPC client redials with backoff (capped at a few seconds); its next
    # call after that succeeds without restarting containerd.
    started = time.monotonic()
    while True:
        attempt = containerd.snapshots("prepare", "after", check=False)
        if attempt.returncode == 0:
            break
        assert time.monotonic() - started < 15, attempt.stderr
        time.sleep(0.5)
    with SnapshotsClient(str(cimsnap.socket)) as ours:
        keys = {i.name.split("/", 2)[2] for i in ours.list()}
        assert keys == {"before", "after"}  # kept across the restart; nothing half-made
        assert backend(ours, "before").kind == Kind.ACTIVE
    assert sorted(containerd.snapshots("ls").stdout.split()[3:]) == [
        "Active",
        "Active",
        "after",
        "before",
    ]


def test_image_removal_collects_the_layer_snapshot(
    stack: tuple[Containerd, Cimsnap], tmp_path: Path
) -> None:
    containerd, cimsnap = stack
    name = "docker.io/cimsnap/gc-test:1"
    layer = gzip_layer(tar_of({"Files/hello.txt": b"hi\n"}))
    digests = write_oci_archive(tmp_path / "image.tar", name, [layer])
    containerd.ctr(
        "images",
        "import",
        "--no-unpack",
        "--platform",
        "windows/amd64",
        str(tmp_path / "image.tar"),
    )
    assert name in containerd.ctr("images", "ls", "-q").stdout.split()
    lease = "cimsnap-gc-test"
    containerd.ctr("leases", "create", "--id", lease)
    chain_id = layer.diff_id  # one layer: the chain ID is its diff ID
    metadata = (("containerd-namespace", "default"), ("containerd-lease", lease))
    with grpc.insecure_channel(f"unix:{containerd.socket}") as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        stub.Prepare(
            pb.PrepareSnapshotRequest(
                snapshotter="cimsnap", key=f"extract-1 {chain_id}", parent=""
            ),
            metadata=metadata,
            timeout=30,
        )
        stub.Commit(
            pb.CommitSnapshotRequest(
                snapshotter="cimsnap", name=chain_id, key=f"extract-1 {chain_id}"
            ),
            metadata=metadata,
            timeout=30,
        )
    # What containerd's unpacker records: the image config references the layer chain.
    containerd.ctr(
        "content", "label", digests["config"], f"containerd.io/gc.ref.snapshot.cimsnap={chain_id}"
    )
    with SnapshotsClient(str(cimsnap.socket)) as ours:
        layer = backend(ours, chain_id)
        # A Commit without Apply defers the empty layer's CIM; Usage needs it, so builds it.
        ours.usage(layer.name)
        cims = cimsnap.root / "snapshots" / "cim-layers"
        on_disk = sorted(p.name for p in cims.iterdir())
        assert any(n.endswith(".cim") for n in on_disk) and any(
            n.startswith("region_") for n in on_disk
        )
        # Without the lease the image alone keeps the layer alive through a collection.
        runs = containerd.gc_runs()
        containerd.ctr("leases", "rm", lease)
        wait_for(lambda: containerd.gc_runs() > runs)
        assert backend(ours, chain_id).name == layer.name
        # Removing the image lets the GC remove the snapshot, and cimsnap its CIM.
        containerd.ctr("images", "rm", "--sync", name)
        wait_for(lambda: layer.name not in {i.name for i in ours.list()})
        wait_for(lambda: not any(cims.iterdir()))
    assert containerd.snapshots("ls").stdout.split()[3:] == []
