"""check_hive finds structural faults that the readers tolerate or do not look at."""

from __future__ import annotations

import struct

from cimsnap.hive import Hive, HiveReader, Key, Problem, check_hive, read_hive, write_hive
from cimsnap.hive import cells as C
from tests.unit.hive.forge import field_pos, offsets, patch_u16, patch_u32, sample_hive

GOOD = sample_hive()
OFF = offsets(GOOD)


def _errors(data: bytes) -> list[Problem]:
    return [p for p in check_hive(data) if p.severity == "error"]


def _lh_pair(data: bytes, lh: int, index: int) -> tuple[int, int]:
    return struct.unpack_from("<II", data, 4096 + lh + 4 + 4 + 8 * index)


def test_swapped_lh_entries_are_out_of_order() -> None:
    buf = bytearray(GOOD)
    a, b = _lh_pair(GOOD, OFF["A.list"], 0), _lh_pair(GOOD, OFF["A.list"], 1)
    struct.pack_into("<IIII", buf, 4096 + OFF["A.list"] + 8, *b, *a)
    problems = _errors(bytes(buf))
    assert any(
        p.what == "subkey list" and p.offset == OFF["A.list"] and "order" in p.why for p in problems
    )


def test_wrong_hash() -> None:
    buf = bytearray(GOOD)
    struct.pack_into("<I", buf, 4096 + OFF["A.list"] + 8 + 4, 12345)
    assert any("hash" in p.why and p.offset == OFF["A.list"] for p in _errors(bytes(buf)))


def test_wrong_reference_count() -> None:
    nk = C.NK_HEADER_FAST.unpack_named(GOOD, 4096 + OFF["A"] + 4)
    bad = patch_u32(GOOD, nk["security"], C.SK_HEADER, "reference_count", 1)
    assert any(p.what == "sk cell" and "reference count" in p.why for p in _errors(bad))


def test_broken_sk_list() -> None:
    nk = C.NK_HEADER_FAST.unpack_named(GOOD, 4096 + OFF["A"] + 4)
    bad = patch_u32(GOOD, nk["security"], C.SK_HEADER, "flink", nk["security"] + 8)
    assert any(p.what == "sk cell" for p in _errors(bad))


def test_understated_max_lengths() -> None:
    bad = patch_u32(GOOD, OFF["A"], C.NK_HEADER, "max_value_data", 1)
    assert any("max value data" in p.why and p.offset == OFF["A"] for p in _errors(bad))
    over = patch_u32(GOOD, OFF["A"], C.NK_HEADER, "max_value_data", 10**6)
    assert not _errors(over) and any(p.severity == "warning" for p in check_hive(over))


def test_wrong_parent() -> None:
    bad = patch_u32(GOOD, OFF["B"], C.NK_HEADER, "parent", OFF["root"])
    assert any("parent" in p.why and p.offset == OFF["B"] for p in _errors(bad))


def test_cell_crossing_bin_boundary() -> None:
    buf = bytearray(GOOD)
    struct.pack_into("<i", buf, 4096 + 32, -(0x10000))  # root cell claims 64 KiB
    assert any(p.what == "cell" for p in _errors(bytes(buf)))


def test_leaked_cell_is_a_warning() -> None:
    nk_pos = 4096 + OFF["A"] + 4 + field_pos(C.NK_HEADER, "class_offset")
    buf = bytearray(GOOD)
    struct.pack_into("<I", buf, nk_pos, C.NO_CELL)
    struct.pack_into("<H", buf, 4096 + OFF["A"] + 4 + field_pos(C.NK_HEADER, "class_length"), 0)
    problems = check_hive(bytes(buf))
    assert [p.severity for p in problems if p.why == "allocated but unreferenced"] == ["warning"]


def test_problem_str_names_object_and_offset() -> None:
    text = str(Problem("nk cell", 0x20, "bad"))
    assert "nk cell" in text and "0x20" in text


def test_empty_value_with_data_offset() -> None:
    reader = HiveReader(GOOD)
    dword = reader.open_key("A").value("d")
    assert dword is not None
    bad = patch_u32(GOOD, dword.offset, C.VK_HEADER, "data_size", 0)  # offset field holds 1
    assert any(p.what == "vk cell" and p.offset == dword.offset for p in _errors(bad))
    assert read_hive(bad).root.subkey("A") is not None  # the reader tolerates it


def _sd_with(offset: int, fmt: str, value: int) -> bytes:
    from cimsnap.hive.security import DEFAULT_SECURITY_DESCRIPTOR

    buf = bytearray(DEFAULT_SECURITY_DESCRIPTOR)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


def test_security_descriptor_validation() -> None:
    from cimsnap.hive.security import DEFAULT_SECURITY_DESCRIPTOR, security_descriptor_problem

    sd = DEFAULT_SECURITY_DESCRIPTOR
    assert security_descriptor_problem(sd) is None
    bad = [
        sd[:19],  # shorter than the header
        _sd_with(0, "<B", 2),  # revision
        _sd_with(2, "<H", 0x0004),  # not self-relative
        _sd_with(4, "<I", len(sd) - 4),  # owner SID runs past the end
        _sd_with(96 + 1, "<B", 16),  # owner SID with 16 sub-authorities
        _sd_with(20 + 2, "<H", 200),  # DACL size past the end
        _sd_with(20 + 8 + 2, "<H", 22),  # first ACE size not a multiple of 4
        _sd_with(20 + 4, "<H", 9),  # more ACEs than the ACL holds
        sd[:-1],  # group SID cut
    ]
    assert all(security_descriptor_problem(b) for b in bad)


def test_invalid_descriptor_is_reported() -> None:
    root = Key("ROOT", security=b"\x01\x00\x04\x80garbage")
    data = write_hive(Hive(root))
    problems = check_hive(data)
    assert [(p.what, p.severity) for p in problems] == [("sk cell", "warning")]


def test_key_name_rules() -> None:
    reader = HiveReader(GOOD)
    b = reader.open_key(r"A\B")
    empty = patch_u16(GOOD, b.offset, C.NK_HEADER, "name_length", 0)
    assert any(p.offset == b.offset and "empty" in p.why for p in _errors(empty))
    buf = bytearray(GOOD)
    buf[4096 + b.offset + 4 + C.NK_HEADER_FAST.size] = ord("\\")  # name "B" -> "\\"
    assert any(p.offset == b.offset and "backslash" in p.why for p in _errors(bytes(buf)))
