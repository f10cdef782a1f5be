"""systemd's readiness protocol (sd_notify), without a dependency.

When systemd starts a ``Type=notify`` service it sets ``NOTIFY_SOCKET`` to a unix datagram
socket path; a leading ``@`` means a Linux abstract socket (the ``@`` stands for a NUL
byte). The service sends newline-separated ``KEY=VALUE`` assignments as one datagram:
``READY=1`` once it serves, ``STOPPING=1`` when shutting down.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

__all__ = ["notify"]


def notify(state: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``NOTIFY_SOCKET``; return whether it was sent.

    Returns False without error when ``NOTIFY_SOCKET`` is unset or empty. A socket that cannot
    be reached raises ``OSError``: systemd waiting for a notification that never comes is a
    failure the caller should see in its logs.
    """
    env = os.environ if environ is None else environ
    target = env.get("NOTIFY_SOCKET", "")
    if not target:
        return False
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode("utf-8"), address)
    return True
