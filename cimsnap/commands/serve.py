"""``cimsnap serve``: run the containerd proxy plugin (Snapshots and Diff) until signalled.

Exit status: 0 after a clean shutdown, 2 for a configuration error, 1 when start-up fails
(address in use, database cannot be opened, ...). Errors are printed as one line naming the
subject (``cimsnap serve: socket '/run/...': another server is listening on it``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

from cimsnap import __version__
from cimsnap.daemon.config import DEFAULT_CONFIG_PATH, LOG_FORMATS, LOG_LEVELS, Config, load_config
from cimsnap.daemon.logconfig import configure_logging
from cimsnap.errdefs import CimsnapError

log = logging.getLogger("cimsnap.serve")


def register(subparsers: Any) -> None:
    """Add ``serve`` to the top-level command parser."""
    p = subparsers.add_parser(
        "serve",
        help="run the gRPC proxy plugin for containerd",
        description="Serve containerd's Snapshots and Diff APIs on a unix socket "
        "(or loopback TCP). "
        "Settings come from defaults, then the config file, then these flags.",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML config file (default /etc/cimsnap/config.toml, if it exists)",
    )
    p.add_argument("--address", help="unix socket path, unix:///path, or tcp://127.0.0.1:PORT")
    p.add_argument("--root", help="state directory (default /var/lib/cimsnap)")
    p.add_argument("--log-level", choices=LOG_LEVELS)
    p.add_argument("--log-format", choices=LOG_FORMATS)
    p.add_argument("--metrics-address", help="HOST:PORT for Prometheus /metrics")
    p.add_argument(
        "--insecure-listen",
        action="store_true",
        default=None,
        help="allow a non-loopback tcp:// address (no authentication)",
    )
    p.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> dict[str, object]:
    return {
        "address": args.address,
        "root": args.root,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "metrics_address": args.metrics_address,
        "insecure_listen": args.insecure_listen,
    }


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cimsnap serve``; returns the exit status."""
    try:
        config = load_config(args.config, _overrides(args))
    except CimsnapError as e:
        print(f"cimsnap serve: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    source = args.config or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    log.info(
        "cimsnap %s starting: root %s, config %s",
        __version__,
        config.root,
        source if source is not None else "(defaults)",
    )
    try:
        asyncio.run(serve(config))
    except CimsnapError as e:
        log.error("cannot start: %s", e)
        return 1
    return 0


async def serve(config: Config) -> None:
    """Open the snapshotter and serve until SIGTERM/SIGINT; raises ``CimsnapError`` on start."""
    # Imported here so `cimsnap config`/`--help` work without loading the storage stack.
    from cimsnap.daemon.metrics import RpcMetrics
    from cimsnap.daemon.process import Daemon, check_address
    from cimsnap.daemon.services import build_services
    from cimsnap.snapshots.snapshotter import Snapshotter

    address = check_address(config)
    snapshotter = Snapshotter(config.root_path)
    try:
        services, calls, close = build_services(config, snapshotter, RpcMetrics())
        daemon = Daemon(config, address, services, calls, close=close)
        await daemon.serve_forever()
    finally:
        snapshotter.close()
