"""A client-side ``grpc.health.v1`` probe of a running cimsnap, with advice for operators.

``probe(address, timeout)`` makes one ``Health/Check`` call over the server's socket (or
loopback TCP address) and returns a ``HealthReport``: whether the server answered SERVING,
and otherwise a one-line diagnosis that says what to do next. It never raises for a server
that is absent, stuck or not cimsnap; only a malformed address raises ``InvalidArgument``
(from ``parse_address``). Used by ``cimsnap health``, the Dockerfile's ``HEALTHCHECK`` and
scripts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cimsnap.daemon.listen import UnixAddress, parse_address

__all__ = ["HealthReport", "probe"]

_SERVING: Final = health_pb2.HealthCheckResponse.SERVING
_START_HINT: Final = (
    "start it (`systemctl start cimsnap`, or `cimsnap serve`) or pass the address it "
    "listens on with --address"
)


@dataclass(frozen=True, slots=True)
class HealthReport:
    """Outcome of one probe: ``serving`` and a human-readable ``message``."""

    address: str
    serving: bool
    message: str


def _precheck_unix(address: str, path: str) -> HealthReport | None:
    """Diagnose a unix socket path that cannot work before dialing (clearer than gRPC's text)."""
    if not os.path.lexists(path):
        return HealthReport(
            address, False, f"no socket at {path}: cimsnap is not running; " + _START_HINT
        )
    if not os.access(path, os.R_OK | os.W_OK):
        return HealthReport(
            address,
            False,
            f"permission denied on {path}: run as root or as a member of the socket's group "
            "(socket_mode in the config)",
        )
    return None


def probe(address: str, timeout: float, service: str = "") -> HealthReport:
    """Check ``service`` ("" = the whole server) at ``address``, waiting at most ``timeout``."""
    parsed = parse_address(address)
    if isinstance(parsed, UnixAddress):
        early = _precheck_unix(address, str(parsed.path))
        if early is not None:
            return early
    with grpc.insecure_channel(parsed.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as e:
            return HealthReport(address, False, _explain(parsed, e, timeout, service))
    if reply.status == _SERVING:
        return HealthReport(address, True, f"{parsed}: SERVING")
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return HealthReport(
        address,
        False,
        f"{parsed}: {status}: the server is shutting down (or not started yet); wait for it "
        "to exit and start it again, and check its log (journalctl -u cimsnap)",
    )


def _explain(address: object, e: grpc.RpcError, timeout: float, service: str) -> str:
    code = e.code()
    if code == grpc.StatusCode.UNAVAILABLE:
        return (
            f"{address}: nothing answers (UNAVAILABLE: {e.details()}); a stale socket after a "
            f"crash? {_START_HINT[0].upper()}{_START_HINT[1:]}"
        )
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return (
            f"{address}: no answer within {timeout:g} s: the server is overloaded or stuck "
            "(or this is not a gRPC server); check its log (journalctl -u cimsnap) and retry "
            "with a larger --timeout"
        )
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return f"{address}: a gRPC server without the health service answers; is it cimsnap?"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{address}: the server does not know service {service!r}"
    return f"{address}: health check failed: {code.name}: {e.details()}"
