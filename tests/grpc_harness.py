"""Run the real cimsnap gRPC server for tests: in a background thread or as a process.

``ServerThread`` runs ``Daemon`` + the Snapshots and Diff services over a real
``Snapshotter`` on its own event loop in a thread, so synchronous clients (the shared
behaviour suite through ``SnapshotsClient``) can call it from the test thread. ``ServeProcess`` runs
``python -m cimsnap serve`` and waits for its sd_notify ``READY=1`` on a datagram socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from cimsnap.daemon.config import Config
from cimsnap.daemon.metrics import RpcMetrics
from cimsnap.daemon.process import Daemon, check_address
from cimsnap.daemon.server import SnapshotterAPI
from cimsnap.daemon.services import build_services
from cimsnap.snapshots.snapshotter import Snapshotter

REPO_ROOT = Path(__file__).resolve().parents[1]


def short_socket_dir() -> Path:
    """A fresh directory with a short path: unix socket paths are limited to ~107 bytes."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="cs-", dir="/tmp"))


class ServerThread:
    """The daemon on a private event loop in a thread; ``stop()`` shuts it down gracefully.

    ``wrap`` may decorate the real snapshotter (e.g. to slow a call down) before serving.
    """

    def __init__(
        self,
        config: Config,
        wrap: Callable[[Snapshotter], SnapshotterAPI] | None = None,
    ) -> None:
        self.config = config
        self._wrap = wrap
        self._thread = threading.Thread(target=self._main, name="cimsnap-test-server")
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.daemon: Daemon | None = None
        self.metrics = RpcMetrics()

    @property
    def address(self) -> str:
        return self.config.address

    def start(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # handed to the test thread by start()/stop()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        address = check_address(self.config)
        snapshotter = Snapshotter(self.config.root_path)
        self.snapshotter = snapshotter  # for tests that wait for its background work
        try:
            api: SnapshotterAPI = self._wrap(snapshotter) if self._wrap else snapshotter
            services, calls, close = build_services(self.config, snapshotter, self.metrics, api)
            self.daemon = Daemon(self.config, address, services, calls, close)
            await self.daemon.start()
            self._ready.set()
            await self._stop.wait()
            await self.daemon.stop()
        finally:
            snapshotter.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)
        if self._error is not None:
            raise self._error

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def server_config(tmp_path: Path, sock_dir: Path, **changes: object) -> Config:
    """A config with a socket in ``sock_dir`` and state under ``tmp_path/root``."""
    base = Config(address=str(sock_dir / "cimsnap.sock"), root=str(tmp_path / "root"))
    return replace(base, **changes)  # type: ignore[arg-type]


class ServeProcess:
    """``python -m cimsnap serve ARGS`` with ``NOTIFY_SOCKET`` pointing at a test socket."""

    def __init__(self, args: Sequence[str], notify_dir: Path) -> None:
        self.notify_path = notify_dir / "notify.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cimsnap", "serve", *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr = ""

    def next_notification(self, timeout: float = 30) -> str:
        """Return the next datagram, or raise ``TimeoutError``."""
        self.notify.settimeout(timeout)
        return self.notify.recv(4096).decode()

    def terminate(self, signum: int = signal.SIGTERM, timeout: float = 30) -> tuple[int, str]:
        """Send ``signum``, wait, and return (exit code, stderr)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> tuple[int, str]:
        """Wait for exit; return (exit code, stderr). Safe to call more than once."""
        if self.proc.returncode is None:
            _, self.stderr = self.proc.communicate(timeout=timeout)
        self.notify.close()
        return self.proc.returncode, self.stderr


@contextlib.contextmanager
def serving_process(
    root: Path,
    sock_dir: Path,
    *,
    config: str = "max_workers = 8\n",
    args: Sequence[str] = (),
) -> Iterator[tuple[str, ServeProcess]]:
    """A ``cimsnap serve`` process on ``root`` (socket in ``sock_dir``), as deployed: its own
    interpreter, configured by the TOML text ``config`` plus the extra ``args``. Yields the
    address and the process once READY=1 came; on exit SIGTERM (unless the caller already
    stopped it), and the process must have exited 0."""
    config_path = sock_dir / "cimsnap.toml"
    config_path.write_text(config)
    address = str(sock_dir / "cimsnap.sock")
    base_args = ["--config", str(config_path), "--address", address, "--root", str(root)]
    server = ServeProcess([*base_args, "--log-level", "warning", *args], sock_dir)
    try:
        assert server.next_notification() == "READY=1"
        yield address, server
    finally:
        code, err = server.terminate()
        assert code == 0, err


@contextlib.asynccontextmanager
async def running_daemon(
    config: Config,
    wrap: Callable[[Snapshotter], SnapshotterAPI] | None = None,
    metrics: RpcMetrics | None = None,
) -> AsyncIterator[tuple[Daemon, Snapshotter]]:
    """The daemon in the current event loop (for pytest-asyncio tests); stopped on exit."""
    address = check_address(config)
    snapshotter = Snapshotter(config.root_path)
    api: SnapshotterAPI = wrap(snapshotter) if wrap else snapshotter
    services, calls, close = build_services(config, snapshotter, metrics or RpcMetrics(), api)
    daemon = Daemon(config, address, services, calls, close)
    try:
        await daemon.start()
        yield daemon, snapshotter
    finally:
        await daemon.stop()
        snapshotter.close()
