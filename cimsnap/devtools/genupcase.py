"""Regenerate Windows' upcase table with ntfs-3g and compare it to the shipped copy.

Usage: ``python -m cimsnap.devtools.genupcase [--write]``. Formats a scratch NTFS image
with ``mkntfs``, reads ``$UpCase`` back with ``ntfscat`` and checks it against
``cimsnap/data/upcase-delta.bin.gz``; ``--write`` replaces the shipped copy (then update
``UPCASE_SHA256`` in ``cimsnap/upcase.py``). Needs Debian's ``ntfs-3g`` package.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

from cimsnap.upcase import DATA_RESOURCE, UPCASE_SHA256, UPCASE_TABLE_SIZE

DATA = Path(__file__).resolve().parent.parent / DATA_RESOURCE


def extract_table() -> bytes:
    """Format a 16 MiB NTFS image in a temporary directory and return its ``$UpCase``."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "ntfs.img"
        with image.open("wb") as f:
            f.truncate(16 * 1024 * 1024)
        subprocess.run(["mkntfs", "-F", "-q", "-f", str(image)], check=True, capture_output=True)
        out = subprocess.run(["ntfscat", str(image), "$UpCase"], check=True, capture_output=True)
    if len(out.stdout) != UPCASE_TABLE_SIZE:
        raise SystemExit(f"ntfscat returned {len(out.stdout)} bytes, not {UPCASE_TABLE_SIZE}")
    return out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="replace the shipped table")
    args = parser.parse_args()
    table = extract_table()
    digest = hashlib.sha256(table).hexdigest()
    print(f"mkntfs $UpCase sha256 {digest}")
    if args.write:
        codes = struct.unpack(f"<{UPCASE_TABLE_SIZE // 2}H", table)
        deltas = struct.pack(
            f"<{UPCASE_TABLE_SIZE // 2}H", *((u - c) & 0xFFFF for c, u in enumerate(codes))
        )
        DATA.write_bytes(gzip.compress(deltas, compresslevel=9, mtime=0))
        print(f"wrote {DATA}")
        return 0
    if digest != UPCASE_SHA256:
        print(f"differs from the shipped table ({UPCASE_SHA256})", file=sys.stderr)
        return 1
    print("matches the shipped table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
