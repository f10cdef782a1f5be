"""sd_notify datagrams reach a real unix datagram socket, by path and abstract name."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from cimsnap.daemon.sdnotify import notify


def test_unset_socket_sends_nothing() -> None:
    assert notify("READY=1", {}) is False
    assert notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_path_socket_receives_state(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(str(path))
        receiver.settimeout(5)
        assert notify("READY=1", {"NOTIFY_SOCKET": str(path)}) is True
        assert receiver.recv(4096) == b"READY=1"


def test_abstract_socket_receives_state() -> None:
    name = f"cimsnap-test-{os.getpid()}-{id(object())}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind("\0" + name)
        receiver.settimeout(5)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name}) is True
        assert receiver.recv(4096) == b"STOPPING=1"
