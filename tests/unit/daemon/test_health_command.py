"""``cimsnap health`` against a real ``cimsnap serve`` process and against broken sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.grpc_harness import REPO_ROOT, serving_process


def health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cimsnap", "health", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def served(tmp_path: Path, sock_dir: Path):
    config = "shutdown_grace_seconds = 5.0\n"
    with serving_process(tmp_path / "root", sock_dir, config=config) as (address, proc):
        yield Path(address), proc


def test_serving_server_exits_0(served) -> None:
    sock, _ = served
    out = health("--address", str(sock))
    assert out.returncode == 0, out.stderr
    assert "SERVING" in out.stdout
    assert health("--address", f"unix://{sock}", "--quiet").stdout == ""


def test_each_registered_service_is_checked_by_name(served) -> None:
    sock, _ = served
    ok = health("--address", str(sock), "--service", "containerd.services.snapshots.v1.Snapshots")
    assert ok.returncode == 0, ok.stderr
    unknown = health("--address", str(sock), "--service", "no.such.Service")
    assert unknown.returncode == 1
    assert "no.such.Service" in unknown.stderr


def test_address_from_the_config_file(served, tmp_path: Path) -> None:
    sock, _ = served
    config = tmp_path / "health.toml"
    config.write_text(f'address = "{sock}"\n')
    assert health("--config", str(config)).returncode == 0


def test_stopped_server_exits_1_with_advice(served) -> None:
    sock, proc = served
    code, err = proc.terminate()
    assert code == 0, err
    out = health("--address", str(sock))
    assert out.returncode == 1
    assert f"no socket at {sock}" in out.stderr and "cimsnap serve" in out.stderr


def test_stale_socket_exits_1(sock_dir: Path) -> None:
    sock = sock_dir / "cimsnap.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock))
    stale.close()  # left behind, as after a crash
    out = health("--address", str(sock), "--timeout", "2")
    assert out.returncode == 1
    assert "nothing answers" in out.stderr


def test_silent_listener_times_out(sock_dir: Path) -> None:
    sock = sock_dir / "silent.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
        silent.bind(str(sock))
        silent.listen()  # accepts connections (backlog) but never speaks HTTP/2
        out = health("--address", str(sock), "--timeout", "1")
    assert out.returncode == 1
    assert "no answer within 1 s" in out.stderr


@pytest.mark.parametrize(
    "args", [["--address", "tcp://nohost"], ["--timeout", "0"], ["--address", "ftp://x"]]
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    out = health(*args)
    assert out.returncode == 2
    assert out.stderr.startswith("cimsnap health:")
