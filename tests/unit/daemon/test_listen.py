"""Listening addresses: parsing, the loopback rule and stale-socket handling (real sockets)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cimsnap.daemon.listen import (
    TcpAddress,
    UnixAddress,
    check_tcp_allowed,
    parse_address,
    prepare_unix_socket,
    socket_is_live,
    split_host_port,
)
from cimsnap.daemon.metrics import parse_metrics_address
from cimsnap.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/run/cimsnap/cimsnap.sock", UnixAddress(Path("/run/cimsnap/cimsnap.sock"))),
        ("unix:///run/x.sock", UnixAddress(Path("/run/x.sock"))),
        ("unix:/run/x.sock", UnixAddress(Path("/run/x.sock"))),
        ("tcp://127.0.0.1:7000", TcpAddress("127.0.0.1", 7000)),
        ("tcp://[::1]:7000", TcpAddress("::1", 7000)),
        ("tcp://localhost:0", TcpAddress("localhost", 0)),
    ],
)
def test_parse(text: str, expected: object) -> None:
    assert parse_address(text) == expected


def test_grpc_targets() -> None:
    assert parse_address("/a/b.sock").grpc_target == "unix:/a/b.sock"
    assert parse_address("tcp://[::1]:5").grpc_target == "[::1]:5"


@pytest.mark.parametrize(
    "text",
    [
        "tcp://127.0.0.1",
        "tcp://:80",
        "tcp://h:port",
        "http://x:1",
        "unix://",
        "tcp://h:99999",
        "tcp://h:\u00b2",  # a digit to str.isdigit, not to int()
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_address(text)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "localhost"])
def test_loopback_allowed(host: str) -> None:
    check_tcp_allowed(TcpAddress(host, 1), insecure_listen=False)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "::", "example.com"])
def test_non_loopback_refused_unless_insecure(host: str) -> None:
    with pytest.raises(InvalidArgument):
        check_tcp_allowed(TcpAddress(host, 1), insecure_listen=False)
    check_tcp_allowed(TcpAddress(host, 1), insecure_listen=True)


def test_prepare_creates_parent(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "s.sock"
    prepare_unix_socket(path)
    assert path.parent.is_dir() and not path.exists()


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    assert path.is_socket() and not socket_is_live(path)
    prepare_unix_socket(path)
    assert not path.exists()


def test_live_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as live:
        live.bind(str(path))
        live.listen()
        with pytest.raises(AlreadyExists) as e:
            prepare_unix_socket(path)
        assert str(path) in str(e.value)
        assert path.is_socket()


def test_regular_file_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    path.write_text("precious")
    with pytest.raises(FailedPrecondition):
        prepare_unix_socket(path)
    assert path.read_text() == "precious"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("h:1", ("h", 1)), ("[::1]:80", ("::1", 80)), ("h:", None), (":1", None), ("h:\u00b2", None)],
)
def test_split_host_port(text: str, expected: tuple[str, int] | None) -> None:
    assert split_host_port(text) == expected


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:65536", "h:x", "h:\u00b2"])
def test_metrics_address_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_metrics_address(text)
    assert parse_metrics_address("[::1]:9110") == ("::1", 9110)
