"""Fuzz target: the hive reader and checker on a patched copy of a valid hive.

Input: byte 0 picks the seed hive (the large one, 600 subkeys under one key, only when
bits 0 and 2 are both set: it costs ~40 times the small one per run) and whether the base
block checksum is fixed after patching (bit 1); then 3-byte patches (u16 offset into the
first 48 KiB of hive bins, then the byte to store). Reading may raise only HiveFormatError
(with its what and why); what reads back writes and reads again unless the writer refuses
the model (HiveModelError); ``check_hive`` never raises.
"""

from __future__ import annotations

import contextlib
import struct

from cimsnap.hive import (
    HiveFormatError,
    HiveModelError,
    HiveReader,
    check_hive,
    read_hive,
    write_hive,
)
from cimsnap.hive import cells as C
from tests.unit.hive.forge import delta_hive, sample_hive

SEEDS = (sample_hive(), delta_hive())
BINS = 4096
WINDOW = 0xC000


def test_one_input(data: bytes) -> None:
    control = data[0] if data else 0
    buf = bytearray(SEEDS[0] if control & 5 == 5 else SEEDS[1])
    window = min(WINDOW, len(buf) - BINS)
    for i in range(1, len(data) - 2, 3):
        buf[BINS + int.from_bytes(data[i : i + 2], "little") % window] = data[i + 2]
    if control & 2:
        struct.pack_into("<I", buf, C.CHECKSUM_OFFSET, C.base_block_checksum(buf))
    exercise(bytes(buf))


def exercise(image: bytes) -> None:
    """Read, rewrite, walk and check ``image``; fail on anything but a clean refusal.

    The reader refuses empty and backslashed key names; what the writer may still refuse
    (HiveModelError) is, e.g., a key or value name mutated past 255 units.
    """
    try:
        hive = read_hive(image)
    except HiveFormatError as e:
        assert e.what and e.why
    else:
        with contextlib.suppress(HiveModelError):
            assert read_hive(write_hive(hive)) is not None
    with contextlib.suppress(HiveFormatError):
        for _path, key in HiveReader(image).walk():
            _ = (key.security, key.class_name, [v.data for v in key.values()])
    problems = check_hive(image)
    assert all(p.what and p.why for p in problems)
