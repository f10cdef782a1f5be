"""The ``cimsnap`` command line: one dispatcher, one module per command group.

Each module in ``cimsnap.commands`` exposes ``register(subparsers)``, which adds its
sub-commands and sets ``func`` on each parser to a callable ``(args) -> int``. Command
modules own their argument parsing and output; the libraries they call never print.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from cimsnap import __version__

# Command groups, in help order. Each names a module under cimsnap.commands.
COMMAND_MODULES: tuple[str, ...] = (
    "serve",
    "health",
    "config",
    "unpack",
    "apply",
    "layer",
    "cim",
    "hive",
    "fsck",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser, with every available command group registered."""
    parser = argparse.ArgumentParser(
        prog="cimsnap",
        description="Windows container layers as CimFS images: a containerd proxy "
        "snapshotter and differ, plus tools to build, inspect and convert layers.",
    )
    parser.add_argument("--version", action="version", version=f"cimsnap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"cimsnap.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"cimsnap.commands.{name}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``cimsnap`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
