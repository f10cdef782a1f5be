"""A real containerd (Debian's 1.6.20) using cimsnap as its snapshot proxy, driven by ctr.

The fixture starts our server on a private socket and containerd with a private root, state
dir, sockets and a generated config (``version = 2``, ``[proxy_plugins.cimsnap]``), so a
host containerd is never touched. containerd is required: when it is missing the fixture
fails if the ``CI`` environment variable is set, and skips otherwise.

What 1.6.20 does around a proxy (containerd-integration §0, §2.4): backend keys are
``<ns>/<seq>/<key>``; no namespace header is sent; only ``containerd.io/snapshot/*`` labels
are forwarded; ``ctr snapshots rm`` only drops containerd's record and the backend Remove
arrives later from the GC. We check the effects through our own List/Stat.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.snapshots.snapshotter import Info, Kind
from tests.grpc_harness import ServerThread, server_config, short_socket_dir

pytestmark = pytest.mark.integration

# Plugins the test daemon does not need (CRI is slow to start and wants a CNI setup).
DISABLED_PLUGINS = [
    "io.containerd.grpc.v1.cri",
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.internal.v1.tracing",
    "io.containerd.tracing.processor.v1.otlp",
]


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required in CI: install it with scripts/system-deps.sh)")
    pytest.skip(why)


def containerd_config(base: Path, proxy_socket: str) -> str:
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    return f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[proxy_plugins]
  [proxy_plugins.cimsnap]
    type = "snapshot"
    address = "{proxy_socket}"
"""


class Containerd:
    def __init__(self, base: Path, proc: subprocess.Popen[bytes], cimsnap: str) -> None:
        self.base = base
        self.proc = proc
        self.socket = str(base / "containerd.sock")
        self.cimsnap = cimsnap

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["ctr", "--address", self.socket, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {out.stderr}")
        return out

    def snapshots(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctr("snapshots", "--snapshotter", "cimsnap", *args, check=check)


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    _require(shutil.which("containerd") is not None, "containerd is not installed")
    _require(shutil.which("ctr") is not None, "ctr is not installed")
    _require(os.geteuid() == 0, "containerd needs root")
    base = short_socket_dir()
    server = ServerThread(server_config(base / "cimsnap", base))
    server.start()
    config = base / "containerd.toml"
    config.write_text(containerd_config(base, server.address))
    log = (base / "containerd.log").open("wb")
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    daemon = Containerd(base, proc, server.address)
    try:
        deadline = time.monotonic() + 20
        while daemon.ctr("version", check=False).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "containerd did not start:\n" + (base / "containerd.log").read_text()
                )
            time.sleep(0.05)
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ours(containerd: Containerd) -> Iterator[SnapshotsClient]:
    """A direct client to our server, to see what containerd did."""
    with SnapshotsClient(containerd.cimsnap) as client:
        yield client


def backend(client: SnapshotsClient, key: str) -> Info:
    """Our record of containerd's client key ``key`` (backend key ``<ns>/<seq>/<key>``)."""
    matches = [
        i for i in client.list() if i.name.startswith("default/") and i.name.split("/", 2)[2] == key
    ]
    assert len(matches) == 1, (key, [i.name for i in client.list()])
    return matches[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_plugin_is_loaded(containerd: Containerd) -> None:
    out = containerd.ctr("plugins", "ls").stdout
    rows = [line.split() for line in out.splitlines()]
    assert ["io.containerd.snapshotter.v1", "cimsnap", "-", "ok"] in rows


def test_prepare_ls_info_mounts_usage(containerd: Containerd, ours: SnapshotsClient) -> None:
    containerd.snapshots("prepare", "p1")
    info = backend(ours, "p1")
    assert info.kind == Kind.ACTIVE and info.parent == ""
    assert info.name.startswith("default/")  # the metadata layer's key rewriting
    ls = containerd.snapshots("ls").stdout.split()
    assert "p1" in ls and "Active" in ls
    described = json.loads(containerd.snapshots("info", "p1").stdout)
    assert described["Kind"] == "Active" and described["Name"] == "p1"
    mount = containerd.snapshots("mounts", "/mnt/x", "p1").stdout
    assert "-t CimFS" in mount and "rw" in mount
    usage = containerd.snapshots("usage", "p1").stdout
    assert "p1" in usage


def test_commit_view_label(containerd: Containerd, ours: SnapshotsClient) -> None:
    containerd.snapshots("prepare", "c-active")
    containerd.snapshots("commit", "c-layer", "c-active")
    layer = backend(ours, "c-layer")
    assert layer.kind == Kind.COMMITTED
    containerd.snapshots("view", "c-view", "c-layer")
    view = backend(ours, "c-view")
    assert view.kind == Kind.VIEW and view.parent == layer.name
    mount = containerd.snapshots("mounts", "/mnt/v", "c-view").stdout
    assert "ro" in mount.split("-o", 1)[1]
    # Labels under containerd.io/snapshot/ reach the proxy; others stay in containerd.
    containerd.snapshots("label", "c-view", "containerd.io/snapshot/team=red", "local=x")
    labels = ours.stat(view.name).labels
    assert labels.get("containerd.io/snapshot/team") == "red" and "local" not in labels


def test_remove_reaches_the_proxy_through_gc(containerd: Containerd, ours: SnapshotsClient) -> None:
    containerd.snapshots("prepare", "r-active")
    containerd.snapshots("commit", "r-parent", "r-active")
    containerd.snapshots("prepare", "r-child", "r-parent")
    child = backend(ours, "r-child").name
    # A parent with a child is refused inside containerd.
    refused = containerd.snapshots("rm", "r-parent", check=False)
    assert refused.returncode != 0 and "failed precondition" in refused.stderr
    containerd.snapshots("rm", "r-child")
    # The backend Remove comes from the GC (about 2 s on 1.6.20).
    wait_for(lambda: child not in {i.name for i in ours.list()})
    parent = backend(ours, "r-parent").name
    containerd.snapshots("rm", "r-parent")
    wait_for(lambda: parent not in {i.name for i in ours.list()})
