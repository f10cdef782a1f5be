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
import re
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
    """A running containerd from ``bin_dir`` with the config text ``config``, its files
    (config, log, the socket it is configured with) under ``base``, and its ``ctr``.

    The constructor starts it and returns once ``ctr version`` answers (AssertionError with
    the log otherwise, the daemon stopped); ``stop()`` stops it by PID and waits for it.
    ``cimsnap`` is the address of the cimsnap proxy in its config, for the tests' own clients.
    """

    def __init__(self, bin_dir: Path, base: Path, config: str, *, cimsnap: str = "") -> None:
        self.bin_dir = bin_dir
        self.base = base
        self.cimsnap = cimsnap
        self.socket = str(base / "containerd.sock")
        self.content_dir = base / "root" / "io.containerd.content.v1.content"
        self.config_path = base / "containerd.toml"
        self.config_path.write_text(config)
        self.log_path = base / "containerd.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(bin_dir / "containerd"), "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while self.ctr("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("containerd did not start:\n" + self.log())
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def gc_runs(self) -> int:
        """How many garbage collections the daemon has finished so far (debug log level)."""
        return self.log().count("garbage collected")

    def version(self) -> str:
        out = subprocess.run(
            [str(self.bin_dir / "containerd"), "--version"], capture_output=True, text=True
        ).stdout
        match = re.search(r" (\d+\.\d+\.\d+)", out)
        return match.group(1) if match else out

    def ctr(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / "ctr"), "--address", self.socket, *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr}\n--- containerd log:\n"
                + self.log()[-4000:]
            )
        return out

    def snapshots(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.ctr("snapshots", "--snapshotter", "cimsnap", *args, check=check)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, SIGKILL after 20 s) and wait for it; idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def containerd16_bin() -> Path:
    """The directory of Debian's containerd 1.6 binaries (on PATH)."""
    require_containerd()
    found = shutil.which("containerd")
    assert found is not None
    return Path(found).parent


@contextlib.contextmanager
def running_containerd(
    base: Path,
    proxy_socket: str,
    *,
    wait_for_gc: bool = True,
    more_snapshotters: Mapping[str, str] | None = None,
) -> Iterator[Containerd]:
    """containerd 1.6 with cimsnap at ``proxy_socket`` as snapshot proxy ``cimsnap``.

    ``wait_for_gc=False`` (benchmarks) logs at info level and does not wait for the
    start-up garbage collection. ``more_snapshotters``: see ``containerd_config``.
    """
    level = "debug" if wait_for_gc else "info"
    config = containerd_config(base, proxy_socket, level, more_snapshotters)
    daemon = Containerd(containerd16_bin(), base, config, cimsnap=proxy_socket)
    try:
        # containerd collects garbage once shortly after start-up: let that pass, so it
        # cannot remove a snapshot a test has just created without a reference.
        deadline = time.monotonic() + 20
        while wait_for_gc and daemon.gc_runs() == 0:
            if time.monotonic() > deadline:
                raise AssertionError("containerd's start-up GC did not run:\n" + daemon.log())
            time.sleep(0.05)
        yield daemon
    finally:
        daemon.stop()


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
