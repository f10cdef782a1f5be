"""``cimsnap fsck``: check a stopped snapshotter root (:mod:`cimsnap.snapshots.fsck`).

Prints one line per finding (``problem:``, ``reclaimable:``, ``note:``) and a summary.
Exit codes: 0 no problem (reclaimable leftovers are fine: the next start or a Cleanup
removes them); 1 problems found; 2 the root cannot be checked (in use by a running
daemon, no metastore, bad usage).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

from cimsnap.errdefs import CimsnapError

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``fsck`` to the top-level parser's subparsers."""
    parser = subparsers.add_parser(
        "fsck", help="check a stopped snapshotter root: rows, files and layers agree"
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="the snapshotter root (default: root from the configuration)",
    )
    parser.add_argument("--config", type=Path, default=None, help="configuration file")
    parser.add_argument(
        "--no-verify", action="store_true", help="skip the full verification of every CIM"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cimsnap fsck``; returns the exit status."""
    from cimsnap.snapshots.fsck import check_root, findings_as_json

    root = args.root
    if root is None:
        from cimsnap.daemon.config import load_config

        try:
            root = load_config(args.config, {}).root_path
        except CimsnapError as e:
            print(f"cimsnap fsck: {e}", file=sys.stderr)
            return 2
    if not (root / "metadata.db").is_file():
        print(
            f"cimsnap fsck: {root} holds no metadata.db; pass the snapshotter root with --root",
            file=sys.stderr,
        )
        return 2
    try:
        report = check_root(root, verify=not args.no_verify)
    except CimsnapError as e:
        print(f"cimsnap fsck: {e}", file=sys.stderr)
        return 2
    except sqlite3.Error as e:
        print(f"cimsnap fsck: {root / 'metadata.db'}: {e}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(findings_as_json(report), sys.stdout, indent=2)
        print()
    else:
        for finding in report.findings:
            print(finding)
        print(
            f"{report.snapshots} snapshots, {report.layers_verified} layers verified: "
            f"{len(report.problems)} problems, {len(report.reclaimable)} reclaimable"
            + ("" if report.ok else "; remove the damaged snapshots and pull them again")
        )
    return 0 if report.ok else 1
