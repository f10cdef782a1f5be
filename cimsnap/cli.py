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
from typing import Final

from cimsnap import __version__
from cimsnap.commands import failed

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


#: Modules only POSIX systems have. The snapshot store and the CIM writer need them (file
#: locks; with directory descriptors, which Windows lacks as well), so on Windows the
#: commands built on them explain that instead of failing with a traceback.
POSIX_ONLY_MODULES: Final = frozenset({"fcntl"})


def needs_posix(command: str, module: str) -> int:
    """Say that ``command`` cannot run here because ``module`` is missing; exit status 1."""
    return failed(
        f"'{command}' needs Linux (or another POSIX system): this Python has no {module} "
        "module, and cimsnap's snapshot store and CIM writer are built on POSIX file calls "
        "(file locks, directory descriptors). Run it on Linux; deploy/windows.md in the "
        "project says what works on a Windows host."
    )


def _unavailable(sub: argparse._SubParsersAction, name: str, module: str) -> None:  # type: ignore[type-arg]
    """Register ``name`` as a command that only explains why it cannot run here."""
    parser = sub.add_parser(name, help=f"(needs Linux: no {module} module here)")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=lambda args: needs_posix(name, module))


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
            if e.name in POSIX_ONLY_MODULES:
                _unavailable(sub, name, e.name)
                continue
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
    except ModuleNotFoundError as e:  # a command that imports what it needs when it runs
        if e.name not in POSIX_ONLY_MODULES:
            raise
        return needs_posix(args.command, e.name)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 141


if __name__ == "__main__":
    sys.exit(main())
