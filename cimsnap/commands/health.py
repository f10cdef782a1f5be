"""``cimsnap health``: is a cimsnap server up and serving? (for scripts, systemd, Docker).

Exit status: 0 when the server answers the gRPC health check with SERVING; 1 otherwise,
with one line on stderr saying what is wrong and what to do next; 2 for a usage or
configuration error. The address comes from ``--address``, else from the config file
(``--config``, or ``/etc/cimsnap/config.toml`` if it exists), else the default socket.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from cimsnap.daemon.config import load_config
from cimsnap.errdefs import CimsnapError


def register(subparsers: Any) -> None:
    """Add ``health`` to the top-level command parser."""
    p = subparsers.add_parser(
        "health",
        help="check that a running cimsnap server is serving (exit 0) or say why not",
        description="Call the gRPC health service of a running cimsnap over its socket. "
        "Exit 0 when it is SERVING, 1 otherwise (with advice), 2 on usage errors.",
    )
    p.add_argument(
        "--address",
        help="the server's address: a socket path, unix:///path or tcp://127.0.0.1:PORT "
        "(default: the config file's address, else /run/cimsnap/cimsnap.sock)",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="config file to read the address from (default /etc/cimsnap/config.toml, if it "
        "exists)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="how long to wait for the answer (default 5)",
    )
    p.add_argument(
        "--service",
        default="",
        help="a service's full name (e.g. containerd.services.snapshots.v1.Snapshots); "
        "default: the whole server",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing when serving")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cimsnap health``; returns the exit status."""
    # Imported here: grpc is only needed once the arguments are known to be usable.
    from cimsnap.daemon.healthcheck import probe

    if not args.timeout > 0:
        print("cimsnap health: --timeout must be positive", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, {"address": args.address})
        report = probe(config.address, args.timeout, args.service)
    except CimsnapError as e:
        print(f"cimsnap health: {e}", file=sys.stderr)
        return 2
    if report.serving:
        if not args.quiet:
            print(report.message)
        return 0
    print(f"cimsnap health: {report.message}", file=sys.stderr)
    return 1
