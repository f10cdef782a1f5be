"""Hostile input: every failure is a HiveFormatError naming the structure and offset,
reached in bounded time and memory; check_hive reports instead of raising."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable

import pytest

from cimsnap.hive import (
    ChecksumMismatchError,
    DirtyHiveError,
    HiveFormatError,
    HiveReader,
    check_hive,
    read_hive,
)
from cimsnap.hive import cells as C
from tests.unit.hive.forge import offsets, patch_u16, patch_u32, reseal, sample_hive

GOOD = sample_hive()
OFF = offsets(GOOD)
MEMORY_LIMIT = 32 * 1024 * 1024


def _walk_lazily(data: bytes) -> None:
    reader = HiveReader(data)
    for _path, key in reader.walk():
        _ = (key.security, key.class_name)
        for v in key.values():
            _ = v.data


def _fails_cleanly(data: bytes) -> HiveFormatError:
    """Both readers raise HiveFormatError within the memory limit; check_hive reports."""
    tracemalloc.start()
    try:
        with pytest.raises(HiveFormatError) as eager:
            read_hive(data)
        with pytest.raises(HiveFormatError):
            _walk_lazily(data)
        problems = check_hive(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT
    assert [p for p in problems if p.severity == "error"]
    return eager.value


def test_sample_is_valid() -> None:
    assert check_hive(GOOD) == []
    _walk_lazily(GOOD)


@pytest.mark.timeout(60)
def test_every_truncation_is_rejected() -> None:
    cuts = sorted({*range(0, 4200, 61), *range(4096, len(GOOD), 997), len(GOOD) - 1})
    for n in cuts:
        with pytest.raises(HiveFormatError):
            read_hive(GOOD[:n])
        assert check_hive(GOOD[:n])


def test_trailing_bytes_are_ignored() -> None:
    assert read_hive(GOOD + b"\xff" * 5000) == read_hive(GOOD)


def test_bad_checksum() -> None:
    bad = bytearray(GOOD)
    bad[100] ^= 1
    err = _fails_cleanly(bytes(bad))
    assert isinstance(err, ChecksumMismatchError)
    assert err.offset == C.CHECKSUM_OFFSET and err.offset_kind == "file"
    assert "0x1fc" in str(err) and "base block" in str(err)


def test_dirty_hive() -> None:
    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, 8, 2)
    err = _fails_cleanly(reseal(bytes(bad)))
    assert isinstance(err, DirtyHiveError)
    assert "replay" in str(err)


@pytest.mark.parametrize(
    ("field", "value"),
    [("signature", 0), ("major_version", 2), ("minor_version", 9), ("hive_bins_data_size", 0x1001)],
)
def test_bad_base_block_fields(field: str, value: int) -> None:
    from tests.unit.hive.forge import field_pos

    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, field_pos(C.BASE_BLOCK, field), value)
    err = _fails_cleanly(reseal(bytes(bad)))
    assert err.what == "base block"


def test_broken_bin_chain() -> None:
    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, 4096 + 8, 0)  # first bin's size
    err = _fails_cleanly(bytes(bad))
    assert err.what == "hbin header" and err.offset == 0


def _ri_self(data: bytes) -> bytes:
    buf = bytearray(data)
    struct.pack_into("<I", buf, 4096 + OFF["Many.ri"] + 4 + 4, OFF["Many.ri"])
    return bytes(buf)


def _lh_entry(data: bytes, lh: int, index: int, target: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into("<I", buf, 4096 + lh + 4 + 4 + 8 * index, target)
    return bytes(buf)


Patch = Callable[[bytes], bytes]

CASES: dict[str, tuple[Patch, int | None]] = {
    "subkey list out of range": (
        lambda d: patch_u32(d, OFF["A"], C.NK_HEADER, "subkey_list", 0x7FFFFFF8),
        0x7FFFFFF8,
    ),
    "misaligned value list": (
        lambda d: patch_u32(d, OFF["A"], C.NK_HEADER, "value_list", OFF["A.values"] + 2),
        OFF["A.values"] + 2,
    ),
    "sk points into a free cell": (
        lambda d: patch_u32(d, OFF["B"], C.NK_HEADER, "security", len(d) - 4096 - 8),
        None,
    ),
    "child list points back at its own parent list (cycle)": (
        lambda d: patch_u32(
            patch_u32(d, OFF["D"], C.NK_HEADER, "subkey_list", OFF["A.list"]),
            OFF["D"],
            C.NK_HEADER,
            "subkey_count",
            2,
        ),
        OFF["A.list"],
    ),
    "ri entry points at the ri itself": (
        _ri_self,
        OFF["Many.ri"],
    ),
    "key lists its own ancestor": (
        lambda d: _lh_entry(d, OFF["A.list"], 0, OFF["root"]),
        OFF["root"],
    ),
    "huge value count": (
        lambda d: patch_u32(d, OFF["A"], C.NK_HEADER, "value_count", 0xFFFFFFFF),
        OFF["A.values"],
    ),
    "huge subkey count": (
        lambda d: patch_u32(d, OFF["A"], C.NK_HEADER, "subkey_count", 0xFFFFFFFF),
        OFF["A"],
    ),
    "huge lh count": (
        lambda d: patch_u16(d, OFF["A.list"], C.LIST_HEADER, "count", 0xFFFF),
        OFF["A.list"],
    ),
    "huge ri count": (
        lambda d: patch_u16(d, OFF["Many.ri"], C.LIST_HEADER, "count", 0xFFFF),
        OFF["Many.ri"],
    ),
    "huge data size": (
        lambda d: patch_u32(d, OFF["big.vk"], C.VK_HEADER, "data_size", 0x7FFFFFFF),
        OFF["big.db"],
    ),
    "huge db segment count": (
        lambda d: patch_u16(d, OFF["big.db"], C.DB, "segment_count", 0xFFFF),
        None,
    ),
    "huge name length": (
        lambda d: patch_u16(d, OFF["B"], C.NK_HEADER, "name_length", 0xFFFF),
        OFF["B"],
    ),
    "nk signature": (lambda d: patch_u16(d, OFF["B"], C.NK_HEADER, "signature", 0x4141), OFF["B"]),
}


@pytest.mark.timeout(20)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forged_cells(case: str) -> None:
    patch, offset = CASES[case]
    err = _fails_cleanly(patch(GOOD))
    if offset is not None:
        assert err.offset == offset
        assert f"{offset:#x}" in str(err)
    assert err.what in str(err)


def test_a_backslash_in_a_key_name_is_a_format_error_naming_the_cell() -> None:
    """The writer refuses such a name (HiveModelError), so the reader refuses it first."""
    buf = bytearray(GOOD)
    buf[4096 + OFF["B"] + 4 + C.NK_HEADER_FAST.size] = ord("\\")  # name "B" -> "\\"
    with pytest.raises(HiveFormatError) as exc:
        read_hive(bytes(buf))
    assert (exc.value.what, exc.value.offset) == ("nk cell", OFF["B"])
    assert f"{OFF['B']:#x}" in str(exc.value)


def test_an_empty_key_name_is_a_format_error_naming_the_cell() -> None:
    """The writer refuses an empty name (HiveModelError), so the reader refuses it first."""
    buf = bytearray(GOOD)
    names = C.NK_HEADER_FAST.names
    at = C.NK_HEADER_FAST.struct.size - 4  # name_length, then class_length, end the header
    assert names[-2:] == ("name_length", "class_length")
    struct.pack_into("<H", buf, 4096 + OFF["B"] + 4 + at, 0)  # name "B" -> ""
    with pytest.raises(HiveFormatError) as exc:
        read_hive(bytes(buf))
    assert (exc.value.what, exc.value.offset) == ("nk cell", OFF["B"])
    assert f"{OFF['B']:#x}" in str(exc.value)


def test_lf_and_li_leaves_are_read() -> None:
    """Older leaf kinds: lf (hint instead of hash) and li (offsets only)."""
    expected = read_hive(GOOD)
    lf = bytearray(GOOD)
    lf[4096 + OFF["A.list"] + 4 : 4096 + OFF["A.list"] + 6] = b"lf"
    assert read_hive(bytes(lf)) == expected
    assert not [p for p in check_hive(bytes(lf)) if p.severity == "error"]
    li = bytearray(GOOD)
    pos = 4096 + OFF["A.list"] + 4
    count = struct.unpack_from("<H", li, pos + 2)[0]
    children = struct.unpack_from(f"<{2 * count}I", li, pos + 4)[0::2]
    li[pos : pos + 4 + 4 * count] = C.LI.build(
        {"count": count, "elements": [{"offset": c} for c in children]}
    )
    assert read_hive(bytes(li)) == expected


def test_errors_pickle_with_their_fields() -> None:
    import pickle

    err = DirtyHiveError("base block", 4, "dirty", offset_kind="file")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is DirtyHiveError
    assert (back.what, back.offset, back.why, back.offset_kind) == (
        "base block",
        4,
        "dirty",
        "file",
    )
    assert back.file_offset == 4 and HiveFormatError("x", 0x20, "y").file_offset == 0x1020


def test_read_hive_restores_the_garbage_collector() -> None:
    import gc

    assert gc.isenabled()
    with pytest.raises(HiveFormatError):
        read_hive(GOOD[:5000])
    assert gc.isenabled()
    read_hive(GOOD)
    assert gc.isenabled()
    gc.disable()
    try:
        read_hive(GOOD)
        assert not gc.isenabled()  # a caller's choice is kept
    finally:
        gc.enable()


@pytest.mark.parametrize("root", [0x7FFFFFF0, 0x24, 0])
def test_bad_root_cell_offset(root: int) -> None:
    from tests.unit.hive.forge import field_pos

    bad = bytearray(GOOD)
    struct.pack_into("<I", bad, field_pos(C.BASE_BLOCK, "root_cell_offset"), root)
    err = _fails_cleanly(reseal(bytes(bad)))
    assert err.offset == root and err.offset_kind == "cell"
