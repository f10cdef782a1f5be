"""``cimsnap serve`` as a real process: sd_notify, signals, socket policy, JSON logs."""

from __future__ import annotations

import json
import signal
import socket
import stat
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.grpc_harness import ServeProcess


def serve_args(tmp_path: Path, sock: Path, *extra: str) -> list[str]:
    config = tmp_path / "config.toml"
    config.write_text("shutdown_grace_seconds = 5.0\n")
    return [
        "--config",
        str(config),
        "--address",
        str(sock),
        "--root",
        str(tmp_path / "root"),
        *extra,
    ]


def health_status(sock: Path) -> int:
    with grpc.insecure_channel(f"unix:{sock}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_ready_serve_and_clean_stop(tmp_path: Path, sock_dir: Path, signum: int) -> None:
    sock = sock_dir / "run" / "cimsnap.sock"  # parent created by the server
    proc = ServeProcess(serve_args(tmp_path, sock, "--log-format", "json"), sock_dir)
    try:
        assert proc.next_notification() == "READY=1"
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert health_status(sock) == health_pb2.HealthCheckResponse.SERVING
        proc.proc.send_signal(signum)
        assert proc.next_notification() == "STOPPING=1"
        proc.proc.send_signal(signum)  # a second signal does not abort the drain
        code, err = proc.wait()
    finally:
        proc.terminate()
    assert code == 0, err
    assert not sock.exists()
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert any(r["msg"] == "stopped" for r in records)
    assert all({"time", "level", "logger", "msg"} <= set(r) for r in records)


def test_stale_socket_is_replaced(tmp_path: Path, sock_dir: Path) -> None:
    sock = sock_dir / "cimsnap.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # left behind, as after a crash
    proc = ServeProcess(serve_args(tmp_path, sock), sock_dir)
    try:
        assert proc.next_notification() == "READY=1"
        assert health_status(sock) == health_pb2.HealthCheckResponse.SERVING
    finally:
        code, err = proc.terminate()
    assert code == 0, err


def test_live_socket_is_refused(tmp_path: Path, sock_dir: Path) -> None:
    sock = sock_dir / "cimsnap.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(sock))
        other.listen()
        proc = ServeProcess(serve_args(tmp_path, sock), sock_dir)
        code, err = proc.wait()
        assert sock.is_socket()  # the other server's socket is untouched
    assert code == 1
    assert "another server is listening" in err and str(sock) in err


def test_non_loopback_tcp_is_refused(tmp_path: Path, sock_dir: Path) -> None:
    args = serve_args(tmp_path, sock_dir / "unused.sock")
    args[args.index("--address") + 1] = "tcp://0.0.0.0:0"
    code, err = ServeProcess(args, sock_dir).wait()
    assert code == 1 and "non-loopback" in err


def test_stop_signal_right_after_ready_still_drains(tmp_path: Path, sock_dir: Path) -> None:
    # Regression: the handlers were installed after READY=1, so an immediate SIGTERM
    # (systemctl stop just after start) killed the process instead of stopping it.
    sock = sock_dir / "cimsnap.sock"
    proc = ServeProcess(serve_args(tmp_path, sock), sock_dir)
    try:
        assert proc.next_notification() == "READY=1"
        proc.proc.send_signal(signal.SIGTERM)
        code, err = proc.wait()
    finally:
        proc.terminate()
    assert code == 0, err
    assert not sock.exists()
