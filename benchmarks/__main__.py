"""Run every benchmark (``make bench``), or list them.

    python -m benchmarks [--list] [NAME ...]

A benchmark is any module ``benchmarks/<name>.py`` whose name does not start with ``_``;
each is also runnable on its own as ``python -m benchmarks.<name> [its options]``. With no
NAME every benchmark runs, one after another, each in its own interpreter (so one's memory
and threads cannot disturb the next) with its default options. Their output is passed
through unchanged under a ``== benchmarks.<name> ==`` heading.

Exit status: 0 when every selected benchmark exited 0; 1 otherwise (the failed ones are
named at the end, and the remaining benchmarks still run); 2 for an unknown NAME.
"""

from __future__ import annotations

import argparse
import pkgutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def discover() -> list[str]:
    """Return the benchmark module names, sorted."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(PACKAGE_DIR)])
        if not info.name.startswith("_") and not info.ispkg
    )


def main(argv: list[str] | None = None) -> int:
    names = discover()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Run every benchmark (default) or the named ones; each prints ratios "
        "against a baseline measured in the same run.",
    )
    parser.add_argument("--list", action="store_true", help="print the benchmark names and exit")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"one of: {', '.join(names)}")
    args = parser.parse_args(argv)
    if args.list:
        for name in names:
            print(name)
        return 0
    unknown = [n for n in args.names if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)} (see --list)")
    failed: list[str] = []
    for name in args.names or names:
        print(f"== benchmarks.{name} ==", flush=True)
        start = time.monotonic()
        code = subprocess.call([sys.executable, "-m", f"benchmarks.{name}"], cwd=PACKAGE_DIR.parent)
        print(f"== benchmarks.{name}: exit {code}, {time.monotonic() - start:.0f} s ==", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
