"""Mutation fuzzing of hive images: readers either succeed or raise HiveFormatError, the
checker never raises, and nothing runs away in time."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.hive import (
    Hive,
    HiveFormatError,
    HiveMergeError,
    HiveModelError,
    Key,
    LayerSemantics,
    Value,
    merge_files,
    write_hive,
)
from cimsnap.hive import cells as C
from cimsnap.hive.tree import REG_NONE, REG_SZ
from tests.fuzz.targets.hive_reader import exercise
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
    exercise(data)


def _merge_delta() -> bytes:
    """A delta over ``sample_hive`` touching most of it: edits, tombstones, supersedes."""
    root = Key("ROOT", inherit_class=True)
    a = root.add_subkey(Key("a", inherit_class=True, class_name="new"))
    a.values = [
        Value("S", REG_SZ, "changed\0".encode("utf-16-le")),
        Value("big", REG_NONE, b"", tombstone=True),
    ]
    a.add_subkey(Key("b", semantics=LayerSemantics.TOMBSTONE))
    a.add_subkey(Key("c", semantics=LayerSemantics.SUPERSEDE_TREE)).add_subkey(
        Key("fresh", semantics=LayerSemantics.SUPERSEDE_TREE)
    )
    many = root.add_subkey(Key("many", semantics=LayerSemantics.SUPERSEDE_LOCAL))
    many.add_subkey(Key("k0100", semantics=LayerSemantics.TOMBSTONE))
    many.add_subkey(Key("k0599a", security=b"\x01\x00\x04\x80" + bytes(16)))
    return write_hive(Hive(root, minor_version=6, flags=int(C.BaseBlockFlags.LAYERED_KEYS)))


_DELTA = _merge_delta()


@pytest.mark.timeout(300)
@given(mutations())
@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.too_slow])
def test_merging_into_a_mutated_base_fails_cleanly_or_succeeds(
    tmp_path_factory: pytest.TempPathFactory, data: bytes
) -> None:
    """The incremental merge reads the base lazily: a damaged base gives one of the merge's
    error classes and no output, never another exception or a hang."""
    tmp = tmp_path_factory.mktemp("m")
    (tmp / "b").write_bytes(data)
    (tmp / "d").write_bytes(_DELTA)
    try:
        merge_files(tmp / "b", tmp / "d", tmp / "out")
    except (HiveFormatError, HiveMergeError, HiveModelError):
        assert sorted(os.listdir(tmp)) == ["b", "d"]
    else:
        assert (tmp / "out").exists()
