"""Listening addresses of the gRPC server: parsing, policy and unix-socket preparation.

Forms accepted: a unix socket path (``/run/x.sock``,
``unix:///run/x.sock``, ``unix:/run/x.sock``) or ``tcp://HOST:PORT`` for Windows hosts,
where grpcio has no named-pipe transport. TCP has no authentication, so a host that is not
loopback is refused unless the operator opts in (``insecure_listen``).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from cimsnap.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument

__all__ = [
    "TcpAddress",
    "UnixAddress",
    "check_tcp_allowed",
    "parse_address",
    "prepare_unix_socket",
    "socket_is_live",
    "split_host_port",
]


@dataclass(frozen=True, slots=True)
class UnixAddress:
    """A unix socket path (absolute after parsing)."""

    path: Path

    @property
    def grpc_target(self) -> str:
        return f"unix:{self.path}"

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True, slots=True)
class TcpAddress:
    """A TCP host (name or IP literal) and port; port 0 asks for an ephemeral port."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise InvalidArgument(f"address tcp://{self.host}:{self.port}: port out of range")

    @property
    def grpc_target(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"tcp://{self.grpc_target}"


ListenAddress = UnixAddress | TcpAddress


def split_host_port(text: str) -> tuple[str, int] | None:
    """Split ``HOST:PORT`` (``[v6]:PORT`` too); None if a part is missing or not a number.

    The port is not range-checked. Only decimal digits count (``int()`` refuses others
    such as ``"²"``).
    """
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdecimal():
        return None
    return host, int(port)


def parse_address(text: str) -> ListenAddress:
    """Parse a configured address; raise ``InvalidArgument`` naming it when malformed."""
    if text.startswith("tcp://"):
        host_port = split_host_port(text[len("tcp://") :])
        if host_port is None:
            raise InvalidArgument(f"address {text!r}: expected tcp://HOST:PORT")
        return TcpAddress(*host_port)
    if text.startswith("unix://"):
        path = text[len("unix://") :]
    elif text.startswith("unix:"):
        path = text[len("unix:") :]
    elif "://" in text:
        raise InvalidArgument(f"address {text!r}: unsupported scheme (use a path or tcp://)")
    else:
        path = text
    if not path:
        raise InvalidArgument(f"address {text!r}: empty socket path")
    return UnixAddress(Path(path).absolute())


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost: could resolve anywhere


def check_tcp_allowed(address: ListenAddress, insecure_listen: bool) -> None:
    """Refuse a TCP address that is not loopback unless ``insecure_listen`` is set.

    Raises ``InvalidArgument``. Host names other than ``localhost`` count as non-loopback,
    because what they resolve to can change.
    """
    if isinstance(address, TcpAddress) and not insecure_listen and not _is_loopback(address.host):
        raise InvalidArgument(
            f"address {address}: refusing to listen on a non-loopback address without "
            "authentication (set insecure_listen / --insecure-listen to override)"
        )


def socket_is_live(path: Path) -> bool:
    """Return whether something accepts connections on the unix socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as e:
        if e.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def prepare_unix_socket(path: Path) -> None:
    """Make ``path`` ready to bind: create its parent, replace a stale socket file.

    A stale socket (nothing listening) is removed. Raises ``AlreadyExists`` if a server is
    listening on it, and ``FailedPrecondition`` if ``path`` exists but is not a socket (it is
    never deleted). On error nothing has been removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FailedPrecondition(f"socket {str(path)!r}: exists and is not a socket")
    if socket_is_live(path):
        raise AlreadyExists(
            f"socket {str(path)!r}: another server is listening on it (is cimsnap already running?)"
        )
    os.unlink(path)
