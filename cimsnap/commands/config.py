"""``cimsnap config default``: print the documented default configuration file."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cimsnap.daemon.config import default_toml


def register(subparsers: Any) -> None:
    """Add ``config`` and its sub-commands to the top-level command parser."""
    p = subparsers.add_parser("config", help="configuration file helpers")
    sub = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    d = sub.add_parser(
        "default",
        help="print the default config.toml, every key documented",
        description="Print a TOML file that sets every key to its default; save it as "
        "/etc/cimsnap/config.toml and edit.",
    )
    d.set_defaults(func=_default)


def _default(args: argparse.Namespace) -> int:
    sys.stdout.write(default_toml())
    return 0
