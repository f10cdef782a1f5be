"""The ``cimsnap serve`` process: one gRPC server, its socket, signals and shutdown.

Start-up order (a failure at any step exits before anything listens):

1. check the address (TCP: loopback unless ``insecure_listen``; unix: refuse a live socket,
   replace a stale one, never delete a non-socket);
2. open the snapshotter (its database);
3. bind, start, set the socket mode, start the metrics endpoint;
4. mark health SERVING and send ``READY=1`` to systemd.

Shutdown (SIGTERM or SIGINT; both keep all state - unlike stargz, SIGINT does not wipe
snapshots, §8.4): send ``STOPPING=1``, mark health NOT_SERVING, stop accepting, give running
RPCs ``shutdown_grace_seconds`` to finish (then cancel them), wait for worker threads, close
the snapshotter, remove the socket file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from cimsnap.daemon.config import Config
from cimsnap.daemon.decoding import DecodeChecked
from cimsnap.daemon.listen import (
    ListenAddress,
    TcpAddress,
    UnixAddress,
    check_tcp_allowed,
    parse_address,
    prepare_unix_socket,
)
from cimsnap.daemon.sdnotify import notify
from cimsnap.daemon.server import MESSAGE_SIZE_OPTIONS, BlockingCalls, GrpcService
from cimsnap.errdefs import Unavailable

__all__ = ["Daemon", "check_address"]

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def check_address(config: Config) -> ListenAddress:
    """Parse and vet ``config.address`` before anything is opened (steps 1 above).

    Raises ``InvalidArgument`` (malformed or refused TCP address), ``AlreadyExists`` (a live
    socket) or ``FailedPrecondition`` (path is not a socket).
    """
    address = parse_address(config.address)
    check_tcp_allowed(address, config.insecure_listen)
    if isinstance(address, UnixAddress):
        prepare_unix_socket(address.path)
    return address


class Daemon:
    """A started-once gRPC server over ``services``; ``close`` runs after RPCs have drained.

    ``close`` is typically ``snapshotter.close``. Not restartable: build a new one.
    """

    def __init__(
        self,
        config: Config,
        address: ListenAddress,
        services: Sequence[GrpcService],
        calls: BlockingCalls,
        close: Callable[[], None],
    ) -> None:
        self._config = config
        self._address = address
        self._services = services
        self._calls = calls
        self._close = close
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._stop_requested = asyncio.Event()
        self.bound: ListenAddress = address
        self.metrics_port: int | None = None

    async def start(self) -> None:
        """Bind and start serving; raises ``Unavailable`` if the address cannot be bound."""
        server = grpc.aio.server(options=[*MESSAGE_SIZE_OPTIONS, ("grpc.so_reuseport", 0)])
        checked = DecodeChecked(server)  # undecodable requests answer INVALID_ARGUMENT
        for service in self._services:
            service.add_to_server(checked)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, checked)
        if self._config.reflection:
            names = [s.service_name for s in self._services]
            names += [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
            reflector = reflection.aio.ReflectionServicer([*names, reflection.SERVICE_NAME])
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflector, checked)
        self._bind(server)
        await server.start()
        self._server = server
        if isinstance(self._address, UnixAddress):
            os.chmod(self._address.path, self._config.socket_mode)
        if self._config.metrics_address:
            self.metrics_port = self._calls.metrics.serve(self._config.metrics_address)
        for service in self._services:
            await self._health.set(service.service_name, health_pb2.HealthCheckResponse.SERVING)
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s on %s", ", ".join(s.service_name for s in self._services), self.bound)
        notify("READY=1")

    def _bind(self, server: grpc.aio.Server) -> None:
        """Bind ``server``; raise ``Unavailable`` naming the address if that fails."""
        address = self._address
        # Create a unix socket without access bits beyond socket_mode (umask cannot add
        # bits); start() then chmods it to exactly socket_mode.
        old = os.umask(0o777 & ~self._config.socket_mode)
        try:
            port = server.add_insecure_port(address.grpc_target)
        except RuntimeError as e:  # grpcio's "Failed to bind to address ..."
            raise Unavailable(f"address {address}: cannot listen: {e}") from e
        finally:
            os.umask(old)
        if port == 0:
            raise Unavailable(f"address {address}: cannot listen")
        if isinstance(address, TcpAddress):
            self.bound = TcpAddress(address.host, port)

    def request_stop(self) -> None:
        """Ask ``serve_forever`` to shut down (signal-handler safe on the loop thread)."""
        self._stop_requested.set()

    async def serve_forever(self) -> None:
        """Start, wait for SIGTERM/SIGINT (or ``request_stop``), then stop gracefully.

        The handlers are installed before ``start()`` sends ``READY=1``: a stop signal that
        arrives right after readiness (``systemctl stop`` just after start) still drains.
        """
        loop = asyncio.get_running_loop()
        for signum in _STOP_SIGNALS:
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
            except NotImplementedError:  # Windows: no loop signal handlers
                signal.signal(signum, lambda s, _f: loop.call_soon_threadsafe(self._on_signal, s))
        try:
            await self.start()
            await self._stop_requested.wait()
            await self.stop()
        finally:
            # Handlers stay during stop(): a second signal must not kill a draining server.
            for signum in _STOP_SIGNALS:
                try:
                    loop.remove_signal_handler(signum)
                except NotImplementedError:
                    signal.signal(signum, signal.SIG_DFL)
            await self.stop()

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stop_requested.is_set():
            log.warning("received %s again: shutdown already in progress", name)
            return
        log.info("received %s, shutting down", name)
        self.request_stop()

    async def stop(self) -> None:
        """Drain and stop (see the module docstring). Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        notify("STOPPING=1")
        await self._health.enter_graceful_shutdown()
        grace = self._config.shutdown_grace_seconds
        log.info("stopping: running RPCs have %.1f s to finish", grace)
        await server.stop(grace)
        await asyncio.to_thread(self._calls.shutdown)
        self._calls.metrics.close()
        self._close()
        if isinstance(self._address, UnixAddress):
            _remove_socket(self._address.path)
        log.info("stopped")


def _remove_socket(path: Path) -> None:
    """Remove our socket file if it is still there (gRPC may already have removed it)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
