"""A real containerd (Debian's 1.6.20) on a private root, state and sockets, for tests.

``running_containerd(base, proxy_socket)`` writes a ``version = 2`` config under ``base``
with ``[proxy_plugins.cimsnap]`` pointing at ``proxy_socket``, starts the daemon, waits
until ``ctr version`` answers, and on exit stops it by PID and waits for it, so no process
is left behind; a host containerd is never touched. containerd is required: when it (or
root) is missing, ``require`` fails the test if the ``CI`` environment variable is set and
skips it otherwise.

What 1.6.20 does around a proxy: backend keys are ``<ns>/<seq>/<key>``; no namespace header
is sent; only ``containerd.io/snapshot/*`` labels are forwarded; ``ctr snapshots rm`` only
drops containerd's record and the backend Remove arrives later from the GC.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.snapshots.snapshotter import Info

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


def require(condition: bool, why: str) -> None:
    """Fail (under ``CI``) or skip unless ``condition`` holds."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required in CI: install it with scripts/system-deps.sh)")
    pytest.skip(why)


def require_containerd() -> None:
    require(shutil.which("containerd") is not None, "containerd is not installed")
    require(shutil.which("ctr") is not None, "ctr is not installed")
    require(os.geteuid() == 0, "containerd needs root")


def containerd_config(
    base: Path,
    proxy_socket: str,
    log_level: str = "debug",
    more_snapshotters: Mapping[str, str] | None = None,
) -> str:
    """The test daemon's config. Debug logging shows each garbage collection ("garbage
    collected"), which ``Containerd.gc_runs`` counts and ``running_containerd`` relies on.
    ``more_snapshotters`` maps further snapshot proxy names to their sockets."""
    disabled = ", ".join(f'"{p}"' for p in DISABLED_PLUGINS)
    more = "".join(
        f'  [proxy_plugins.{name}]\n    type = "snapshot"\n    address = "{socket}"\n'
        for name, socket in (more_snapshotters or {}).items()
    )
    return f"""version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = [{disabled}]

[grpc]
  address = "{base}/containerd.sock"
[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  level = "{log_level}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[proxy_plugins]
  [proxy_plugins.cimsnap]
    type = "snapshot"
    address = "{proxy_socket}"
{more}"""


class Containerd:
    """A running test daemon: its socket, ``ctr`` runner, and cimsnap's address."""

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

    def log(self) -> str:
        return (self.base / "containerd.log").read_text(errors="replace")

    def gc_runs(self) -> int:
        """How many garbage collections the daemon has finished so far."""
        return self.log().count("garbage collected")


@contextlib.contextmanager
def running_containerd(
    base: Path,
    proxy_socket: str,
    *,
    wait_for_gc: bool = True,
    more_snapshotters: Mapping[str, str] | None = None,
) -> Iterator[Containerd]:
    """containerd with cimsnap at ``proxy_socket`` as snapshot proxy ``cimsnap``.

    ``wait_for_gc=False`` (benchmarks) logs at info level and does not wait for the
    start-up garbage collection. ``more_snapshotters``: see ``containerd_config``.
    """
    require_containerd()
    config = base / "containerd.toml"
    level = "debug" if wait_for_gc else "info"
    config.write_text(containerd_config(base, proxy_socket, level, more_snapshotters))
    with (base / "containerd.log").open("wb") as log:
        proc = subprocess.Popen(
            ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
        )
        daemon = Containerd(base, proc, proxy_socket)
        try:
            deadline = time.monotonic() + 20
            while daemon.ctr("version", check=False).returncode != 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("containerd did not start:\n" + daemon.log())
                time.sleep(0.05)
            # containerd collects garbage once shortly after start-up: let that pass, so
            # it cannot remove a snapshot a test has just created without a reference.
            deadline = time.monotonic() + 20
            while wait_for_gc and daemon.gc_runs() == 0:
                if time.monotonic() > deadline:
                    raise AssertionError("containerd's start-up GC did not run:\n" + daemon.log())
                time.sleep(0.05)
            yield daemon
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def backend(client: SnapshotsClient, key: str, namespace: str = "default") -> Info:
    """Our record of containerd's client key ``key`` (backend key ``<ns>/<seq>/<key>``)."""
    matches = [
        i
        for i in client.list()
        if i.name.startswith(f"{namespace}/") and i.name.split("/", 2)[2] == key
    ]
    assert len(matches) == 1, (key, [i.name for i in client.list()])
    return matches[0]


def wait_for(predicate: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)
