"""Fuzz target: the CIM reader on a patched copy of a small valid image (cimsnap.cim).

Input: byte 0 picks truncations (bit 0: cut the metadata region at the u16 in bytes 1-2;
bit 1: cut the second region to bytes 1-2 as a length); then 3-byte patches (u16 index
into the metadata bytes outside the upcase table, then the byte to store). Opening,
walking, reading every stream and verifying may raise only CimFormatError (and
CimApiError for lookups): see ``tests.unit.cim.hostile.survive``.
"""

from __future__ import annotations

from cimsnap.cim import format as fmt
from tests.unit.cim.hostile import survive
from tests.unit.cim.imagebuilder import ImageBuilder

SYMLINK = (0xA000000C).to_bytes(4, "little") + bytes(12) + "target".encode("utf-16-le")


def _sample() -> ImageBuilder:
    """Like tests.unit.cim.test_reader.sample, but deterministic."""
    b = ImageBuilder()
    d = b.mkdir(1, "dir", streams={"dirads": b"on a directory"})
    f = b.add_file(d, "file.txt", b"hello", streams={"ads": b"alternate", "zero": b""})
    other = b.mkdir(1, "Other")
    b.link(other, "hardlink.txt", f)
    b.add_file(1, "empty", b"")
    b.add_file(1, "big.bin", bytes(range(256)) * 48)
    b.add_file(1, "sparse.bin", sparse_size=10_000, flags=fmt.RecordFlag.SPARSE_FILE)
    b.add_file(1, "link", reparse=SYMLINK, flags=0x1F)
    b.add_file(1, "withea", b"x", ea=b"\x00" * 12 + b"EANAME\x00ab")
    b.mkdir(1, "emptydir")
    return b


BUILT = _sample().build()
FILESYSTEM = BUILT.offsets["filesystem"]
META = bytes(BUILT.regions[0])
OTHER = [bytes(r) for r in BUILT.regions[1:]]
_UPCASE = BUILT.locate("upcase")[1]
HOT = [*range(_UPCASE), *range(_UPCASE + fmt.UPCASE_TABLE_SIZE, len(META))]


def test_one_input(data: bytes) -> None:
    control = data[0] if data else 0
    value = int.from_bytes(data[1:3], "little")
    meta = bytearray(META)
    for i in range(3, len(data) - 2, 3):
        meta[HOT[int.from_bytes(data[i : i + 2], "little") % len(HOT)]] = data[i + 2]
    if control & 1:
        del meta[value % (len(meta) + 1) :]
    others = list(OTHER)
    if control & 2:
        others[0] = others[0][:value]
    views = [memoryview(bytes(meta)), *(memoryview(o) for o in others)]
    assert survive(views, FILESYSTEM) in ("ok", "format", "api")
