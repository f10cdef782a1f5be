"""The fast packers agree with the construct declarations they are derived from."""

from __future__ import annotations

from typing import Any

import pytest

from cimsnap.hive import cells as C

# (declaration, fast layout, sample object)
ROWS: list[tuple[Any, C.FastLayout, dict[str, Any]]] = [
    (C.CELL_HEADER, C.CELL_HEADER_FAST, {"size": -96}),
    (
        C.HBIN_HEADER,
        C.HBIN_HEADER_FAST,
        {"offset": 0x1000, "size": 0x2000, "reserved": bytes(8), "timestamp": 7, "spare": 0},
    ),
    (C.LIST_HEADER, C.LIST_HEADER_FAST, {"signature": b"lh", "count": 3}),
    (
        C.SD_HEADER,
        C.SD_HEADER_FAST,
        {
            "revision": 1,
            "sbz1": 0,
            "control": 0x8004,
            "owner": 96,
            "group": 112,
            "sacl": 0,
            "dacl": 20,
        },
    ),
    (
        C.ACL_HEADER,
        C.ACL_HEADER_FAST,
        {"revision": 2, "sbz1": 0, "size": 76, "ace_count": 3, "sbz2": 0},
    ),
    (C.ACE_HEADER, C.ACE_HEADER_FAST, {"type": 0, "flags": 2, "size": 20}),
    (
        C.SID_HEADER,
        C.SID_HEADER_FAST,
        {"revision": 1, "sub_authority_count": 2, "identifier_authority": b"\0\0\0\0\0\x05"},
    ),
    (C.DB, C.DB_FAST, {"segment_count": 2, "segment_list": 0x120}),
    (
        C.SK_HEADER,
        C.SK_HEADER_FAST,
        {"reserved": 0, "flink": 8, "blink": 16, "reference_count": 3, "descriptor_size": 20},
    ),
    (
        C.VK_HEADER,
        C.VK_HEADER_FAST,
        {
            "name_length": 3,
            "data_size": 0x80000004,
            "data_offset": 5,
            "type": 4,
            "flags": 1,
            "spare": 0,
        },
    ),
    (
        C.NK_HEADER,
        C.NK_HEADER_FAST,
        {
            "flags": 0x2C,
            "last_written": 2**60,
            "access_bits": 2,
            "layer": 0x83,
            "spare": 0,
            "parent": 0,
            "subkey_count": 1,
            "volatile_subkey_count": 0,
            "subkey_list": 0x80,
            "volatile_subkey_list": C.NO_CELL,
            "value_count": 0,
            "value_list": C.NO_CELL,
            "security": 0x100,
            "class_offset": C.NO_CELL,
            "max_subkey_name": 10,
            "max_class": 0,
            "max_value_name": 0,
            "max_value_data": 0,
            "work_var": 0,
            "name_length": 4,
            "class_length": 0,
        },
    ),
]


@pytest.mark.parametrize(("decl", "fast", "obj"), ROWS, ids=[r[1].names[-1] for r in ROWS])
def test_fast_layout_matches_declaration(
    decl: Any, fast: C.FastLayout, obj: dict[str, Any]
) -> None:
    built = decl.build(obj)
    assert fast.size == decl.sizeof() == len(built)
    parsed = decl.parse(built)
    values = [parsed[name] for name in fast.names]
    assert fast.struct.pack(*values) == built
    assert fast.struct.unpack(built) == tuple(values)
    assert fast.unpack_named(built) == {n: parsed[n] for n in fast.names}
    for index, const in fast.consts:
        assert values[index] == const


def test_sizes_match_the_spec() -> None:
    assert C.BASE_BLOCK.sizeof() == C.BASE_BLOCK_SIZE == 4096
    assert C.HBIN_HEADER.sizeof() == C.HBIN_HEADER_SIZE == 32
    assert C.NK_HEADER.sizeof() == 76
    assert C.VK_HEADER.sizeof() == 20
    assert C.SK_HEADER.sizeof() == 20


def test_base_block_fast_and_construct_agree() -> None:
    obj = {
        "primary_sequence": 5,
        "secondary_sequence": 5,
        "last_written": 1,
        "major_version": 1,
        "minor_version": 6,
        "file_type": 0,
        "file_format": 1,
        "root_cell_offset": 0x20,
        "hive_bins_data_size": 0x1000,
        "clustering_factor": 1,
        "file_name": bytes(64),
        "reserved_guids": bytes(32),
        "flags": 2,
        "reserved_tm": bytes(360),
        "checksum": 0,
        "reserved_tail": bytes(3584),
    }
    built = C.BASE_BLOCK.build(obj)
    named = C.BASE_BLOCK_FAST.unpack_named(built)
    assert {k: named[k] for k in obj} == obj


def test_array_layout() -> None:
    pairs = C.LH.build(
        {"count": 2, "elements": [{"offset": 8, "hash": 9}, {"offset": 16, "hash": 17}]}
    )
    assert C.fast_array(C.LH_ELEMENT_FAST, 2).unpack_from(pairs, 4) == (8, 9, 16, 17)


def test_checksum_special_values() -> None:
    block = bytearray(512)
    assert C.base_block_checksum(block) == 1  # XOR 0 is stored as 1
    block[0:4] = b"\xff\xff\xff\xff"
    assert C.base_block_checksum(block) == 0xFFFFFFFE


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("", 0),
        ("A", 65),
        ("a", 65),
        ("ab", 65 * 37 + 66),
        ("ä", 0xC4),
        ("ß", 0xDF),
        ("😀", (0xD83D * 37 + 0xDE00) & 0xFFFFFFFF),
    ],
)
def test_lh_hash(name: str, expected: int) -> None:
    assert C.lh_hash(name) == expected


def test_fast_layout_rejects_variable_parts() -> None:
    with pytest.raises(TypeError):
        C.fast_layout(C.NK)
