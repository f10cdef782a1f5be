"""``cimsnap apply``: call a running cimsnap server's Diff.Apply (debugging, tests).

The mounts are given either as containerd's JSON (``--mounts '[{"type": "CimFS", ...}]'``)
or by naming an active snapshot of the server (``--snapshot KEY``: its Mounts are fetched
from the same server). Prints the applied descriptor as JSON. Exit status: 0 applied,
1 the server refused (the gRPC code and message are printed), 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cimsnap.errdefs import CimsnapError


def register(subparsers: Any) -> None:
    """Add ``apply`` to the top-level command parser."""
    p = subparsers.add_parser(
        "apply",
        help="apply a layer blob through a running server's Diff service",
        description="Send Diff.Apply(descriptor, mounts) to a cimsnap server. The blob is "
        "read by the server from containerd's content store.",
    )
    p.add_argument("--address", default="/run/cimsnap/cimsnap.sock", help="cimsnap's socket")
    p.add_argument("--namespace", "-n", default=None, help="send this containerd namespace")
    p.add_argument("--digest", required=True, help="the blob's digest (sha256:...)")
    p.add_argument(
        "--media-type",
        default="application/vnd.oci.image.layer.v1.tar+gzip",
        help="the blob's media type",
    )
    p.add_argument("--size", type=int, default=0, help="the blob's size in bytes")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--mounts", help="JSON list of {type, source, options}")
    where.add_argument("--snapshot", help="an active snapshot key of the server")
    p.set_defaults(func=run)


def _mounts(text: str) -> list[Any]:
    from cimsnap.snapshots.mounts import Mount

    value = json.loads(text)
    if not isinstance(value, list):
        raise ValueError("--mounts must be a JSON list")
    return [
        Mount(
            type=str(m["type"]),
            source=str(m.get("source", "")),
            target=str(m.get("target", "")),
            options=tuple(str(o) for o in m.get("options") or ()),
        )
        for m in value
    ]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cimsnap apply``."""
    from cimsnap.diff.containerd import Containerd
    from cimsnap.diff.mediatypes import Descriptor

    try:
        mounts = _mounts(args.mounts) if args.mounts else None
    except (ValueError, KeyError, TypeError) as e:
        print(f"cimsnap apply: --mounts: {e}", file=sys.stderr)
        return 2
    desc = Descriptor(media_type=args.media_type, digest=args.digest, size=args.size)
    with Containerd(args.address, args.namespace or "") as server:
        try:
            if mounts is None:
                mounts = server.snapshot_mounts("cimsnap", args.snapshot)
            applied = server.apply(desc, mounts)
        except CimsnapError as e:
            print(f"cimsnap apply: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
    print(
        json.dumps(
            {"mediaType": applied.media_type, "digest": applied.digest, "size": applied.size}
        )
    )
    return 0
