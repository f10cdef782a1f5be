"""``cimsnap unpack IMAGE``: unpack an imported image into cimsnap (containerd 1.6).

containerd 1.6 cannot load a diff proxy (§0), so ``ctr image import --snapshotter
cimsnap`` would apply Windows layers with its ``walking`` differ. Instead import without
unpacking and let this command do containerd's unpack with cimsnap's differ::

    ctr images import --no-unpack --platform windows/amd64 image.tar
    cimsnap unpack docker.io/library/app:1

Exit status: 0 done (also when everything was unpacked already), 1 on an error (one line
naming the image or layer), 130 when interrupted (rerun to resume).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cimsnap.errdefs import CimsnapError


def register(subparsers: Any) -> None:
    """Add ``unpack`` to the top-level command parser."""
    p = subparsers.add_parser(
        "unpack",
        help="unpack an image in containerd into cimsnap layers (for containerd 1.6)",
        description="Resolve IMAGE in containerd, then Prepare/Apply/Commit each missing "
        "layer through containerd's Snapshots service and cimsnap's differ, as containerd's "
        "unpacker does. Idempotent; rerun after an interruption to resume.",
    )
    p.add_argument("image", metavar="IMAGE", help="image name as containerd lists it")
    p.add_argument("--platform", default="windows/amd64", help="OS/ARCH (default windows/amd64)")
    p.add_argument("--namespace", "-n", default="default", help="containerd namespace")
    p.add_argument(
        "--containerd-address",
        default="/run/containerd/containerd.sock",
        help="containerd's socket (default /run/containerd/containerd.sock)",
    )
    p.add_argument(
        "--address",
        default="/run/cimsnap/cimsnap.sock",
        help="cimsnap's socket, whose Diff service applies the layers",
    )
    p.add_argument(
        "--snapshotter", default="cimsnap", help="cimsnap's proxy name in containerd's config"
    )
    p.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    p.set_defaults(func=run)


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    raise AssertionError("unreachable")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``cimsnap unpack``."""
    from cimsnap.diff.unpack import LayerEvent, unpack_image

    def show(event: LayerEvent) -> None:
        if args.quiet:
            return
        where = f"[{event.index + 1}/{event.count}]"
        size = _size(event.layer.size)
        if event.state == "exists":
            print(f"{where} {event.layer.digest} ({size}): already unpacked", flush=True)
        elif event.state == "applying":
            print(f"{where} {event.layer.digest} ({size}): applying...", flush=True)
        else:
            rate = event.layer.size / event.seconds / 2**20 if event.seconds else 0.0
            print(
                f"{where} {event.layer.digest}: done in {event.seconds:.1f} s "
                f"({rate:.1f} MiB/s compressed) -> {event.chain_id}",
                flush=True,
            )

    try:
        result = unpack_image(
            args.containerd_address,
            args.address,
            args.image,
            platform=args.platform,
            namespace=args.namespace,
            snapshotter=args.snapshotter,
            progress=show,
        )
    except CimsnapError as e:
        print(f"cimsnap unpack: {args.image}: {e}", file=sys.stderr)
        return 1
    if not args.quiet:
        total = result.applied + result.existing
        print(
            f"unpacked {result.image} ({args.platform}) into {args.snapshotter}: "
            f"{result.applied} of {total} layers applied, {result.existing} already there; "
            f"top snapshot {result.chain_id}"
        )
    return 0
