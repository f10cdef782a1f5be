"""Mutation fuzzing of hive images: readers either succeed or raise HiveFormatError, the
checker never raises, and nothing runs away in time."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(SEEDS))
    buf = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["byte", "u32", "u16", "offset"]))
        # Mostly hit the first bins, where the nk/vk/list cells of the sample live.
        pos = draw(st.integers(4096, min(len(seed) - 4, 4096 + 0x3000)))
        if kind == "byte":
            buf[pos] = draw(st.integers(0, 255))
        elif kind == "u16":
            struct.pack_into("<H", buf, pos, draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF])))
        elif kind == "u32":
            struct.pack_into(
                "<I", buf, pos, draw(st.sampled_from([0, 0x20, 0x7FFFFFFF, 0xFFFFFFFF]))
            )
        else:
            struct.pack_into("<I", buf, pos, draw(st.integers(0, len(seed) - 4096)) & ~7)
    if draw(st.booleans()):
        struct.pack_into("<I", buf, C.CHECKSUM_OFFSET, C.base_block_checksum(buf))
    return bytes(buf)


@pytest.mark.timeout(300)
@given(mutations())
@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_hives(data: bytes) -> None:
    try:
        hive = read_hive(data)
    except HiveFormatError as e:
        assert e.what and e.why
    else:
        # The reader refuses empty and backslashed key names; what the writer may still
        # refuse (HiveModelError) is, e.g., a key or value name mutated past 255 units.
        with contextlib.suppress(HiveModelError):
            assert read_hive(write_hive(hive)) is not None
    with contextlib.suppress(HiveFormatError):
        for _path, key in HiveReader(data).walk():
            _ = (key.security, key.class_name, [v.data for v in key.values()])
    problems = check_hive(data)
    assert all(p.what and p.why for p in problems)
