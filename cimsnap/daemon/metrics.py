"""Prometheus metrics of the gRPC server: one registry per server, served over HTTP.

Exposed series (all labelled with the full gRPC method name ``service/Method``):

- ``cimsnap_grpc_requests_total{method, code}``: finished RPCs by status code;
- ``cimsnap_grpc_errors_total{method, code}``: the subset that did not end OK;
- ``cimsnap_grpc_request_duration_seconds{method}``: latency histogram.

Recording is always on (it is cheap); the HTTP endpoint only exists when
``metrics_address`` is configured (the convention of other containerd proxy plugins).
"""

from __future__ import annotations

import threading
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from cimsnap.daemon.listen import split_host_port
from cimsnap.errdefs import InvalidArgument

__all__ = ["RpcMetrics", "parse_metrics_address"]

# Latency buckets (seconds) sized for sub-millisecond metadata calls up to slow applies.
_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip


def parse_metrics_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); raise ``InvalidArgument`` if malformed."""
    host_port = split_host_port(text)
    if host_port is None or host_port[1] > 65535:
        raise InvalidArgument(f"metrics_address {text!r}: expected HOST:PORT")
    return host_port


class RpcMetrics:
    """Counters and histograms for one server; ``serve()`` exposes them at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "cimsnap_grpc_requests",
            "Finished gRPC requests by method and status code.",
            ("method", "code"),
            registry=self.registry,
        )
        self._errors = Counter(
            "cimsnap_grpc_errors",
            "gRPC requests that ended with a status other than OK.",
            ("method", "code"),
            registry=self.registry,
        )
        self._latency = Histogram(
            "cimsnap_grpc_request_duration_seconds",
            "gRPC request latency by method.",
            ("method",),
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self._http: tuple[WSGIServer, threading.Thread] | None = None
        # The labelled series per (method, code): labels() costs a lock and a tuple per call.
        self._children: dict[tuple[str, str], tuple[Counter, Counter | None, Histogram]] = {}

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Record one finished RPC; ``code`` is the status name, e.g. ``"OK"``."""
        children = self._children.get((method, code))
        if children is None:  # first RPC of this method and code: look the series up once
            errors = self._errors.labels(method, code) if code != "OK" else None
            children = (self._requests.labels(method, code), errors, self._latency.labels(method))
            self._children[(method, code)] = children
        requests, errors, latency = children
        requests.inc()
        if errors is not None:
            errors.inc()
        latency.observe(seconds)

    def serve(self, address: str) -> int:
        """Start the HTTP endpoint on ``HOST:PORT``; return the bound port (for port 0)."""
        host, port = parse_metrics_address(address)
        server, thread = start_http_server(port, host, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint if it runs. Idempotent."""
        if self._http is not None:
            server, thread = self._http
            self._http = None
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
