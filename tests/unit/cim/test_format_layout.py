"""Sizes and field offsets of every CimFS structure, against the CimFS format's tables (§3-§9,
§15), and agreement of the derived struct fast paths with the construct declarations."""

from __future__ import annotations

import random
import struct
import uuid

import construct as cs
import pytest

from cimsnap.cim import format as f

# (declaration, size from §15, [(dotted field, offset, size)] from the section tables)
LAYOUTS = {
    "COMMON_HEADER §3.1": (
        f.COMMON_HEADER,
        32,
        [
            ("magic", 0, 8),
            ("header_length", 8, 4),
            ("type", 12, 1),
            ("reserved", 13, 1),
            ("reserved2", 14, 2),
            ("major_version", 16, 4),
            ("minor_version", 20, 4),
            ("reserved3", 24, 8),
        ],
    ),
    "REGION_SET §3.2": (
        f.REGION_SET,
        24,
        [("id", 0, 16), ("count", 16, 2), ("reserved", 18, 2), ("reserved1", 20, 4)],
    ),
    "FILESYSTEM_HEADER §3.2": (
        f.FILESYSTEM_HEADER,
        72,
        [
            ("common.magic", 0, 8),
            ("common.reserved3", 24, 8),
            ("regions.id", 32, 16),
            ("regions.count", 48, 2),
            ("filesystem_offset", 56, 8),
            ("reserved", 64, 4),
            ("reserved1", 68, 2),
            ("parent_count", 70, 2),
        ],
    ),
    "REGION_HEADER §3.4": (
        f.REGION_HEADER,
        40,
        [("index", 32, 2), ("type", 34, 1), ("reserved", 35, 1), ("reserved2", 36, 4)],
    ),
    "OBJECTID_HEADER §3.5": (
        f.OBJECTID_HEADER,
        48,
        [
            ("index", 32, 2),
            ("type", 34, 1),
            ("reserved", 35, 1),
            ("reserved2", 36, 4),
            ("table_offset", 40, 4),
            ("count", 44, 4),
        ],
    ),
    "OBJECTID_ENTRY §3.5": (
        f.OBJECTID_ENTRY,
        40,
        [("object_id.length", 0, 8), ("object_id.digest", 8, 24), ("offset", 32, 8)],
    ),
    "FILESYSTEM_OBJECT §4": (
        f.FILESYSTEM_OBJECT,
        24,
        [
            ("upcase_table_offset", 0, 8),
            ("file_table_directory_offset", 8, 8),
            ("file_table_directory_length", 16, 4),
            ("root_directory", 20, 4),
        ],
    ),
    "FILE_TABLE_DIRECTORY_ENTRY §6": (
        f.FILE_TABLE_DIRECTORY_ENTRY,
        16,
        [("offset", 0, 8), ("count", 8, 2), ("entry_size", 10, 2), ("reserved", 12, 4)],
    ),
    "FILE_RECORD §7": (
        f.FILE_RECORD,
        96,
        [
            ("flags", 0, 2),
            ("ea_length", 2, 2),
            ("reparse_tag", 4, 4),
            ("creation_time", 8, 8),
            ("last_write_time", 16, 8),
            ("change_time", 24, 8),
            ("last_access_time", 32, 8),
            ("default_stream.data_offset", 40, 8),
            ("default_stream.length_and_type", 48, 8),
            ("sd_offset", 56, 8),
            ("ea_offset", 64, 8),
            ("reparse_offset", 72, 8),
            ("stream_table_offset", 80, 8),
            ("parent_file_id", 88, 4),
            ("base_region_index", 92, 2),
            ("reserved", 94, 2),
        ],
    ),
    "STREAM_DESCRIPTOR §7.1": (
        f.STREAM_DESCRIPTOR,
        16,
        [("data_offset", 0, 8), ("length_and_type", 8, 8)],
    ),
    "LINK_TABLE_HEADER §7.2": (
        f.LINK_TABLE_HEADER,
        8,
        [("length", 0, 4), ("link_count", 4, 4)],
    ),
    "PE_IMAGE §9": (
        f.PE_IMAGE,
        24,
        [
            ("data_offset", 0, 8),
            ("data_length", 8, 8),
            ("image_length", 16, 4),
            ("mapping_count", 20, 2),
            ("flags", 22, 2),
        ],
    ),
    "PE_IMAGE_MAPPING §9": (
        f.PE_IMAGE_MAPPING,
        8,
        [("file_offset", 0, 4), ("delta", 4, 4)],
    ),
}


def _leaf_sizes(con) -> dict[str, int]:
    offsets = f.field_offsets(con)
    names = list(offsets)
    ends = [*[offsets[n] for n in names[1:]], con.sizeof()]
    return {n: end - offsets[n] for n, end in zip(names, ends, strict=True)}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_size_and_field_offsets_match_spec(name):
    con, size, fields = LAYOUTS[name]
    assert con.sizeof() == size
    offsets = f.field_offsets(con)
    sizes = _leaf_sizes(con)
    for field, offset, field_size in fields:
        assert (field, offsets[field], sizes[field]) == (field, offset, field_size)


def test_every_leaf_is_covered_without_gaps():
    for con, size, _ in LAYOUTS.values():
        sizes = _leaf_sizes(con)
        assert sum(sizes.values()) == size


def test_size_constants_match_section_15():
    assert (f.COMMON_HEADER_SIZE, f.REGION_HEADER_SIZE, f.OBJECTID_HEADER_SIZE) == (32, 40, 48)
    assert (f.OBJECTID_ENTRY_SIZE, f.REGION_SET_SIZE, f.FILESYSTEM_HEADER_SIZE) == (40, 24, 72)
    assert (f.FILESYSTEM_OBJECT_SIZE, f.FILE_TABLE_DIRECTORY_ENTRY_SIZE) == (24, 16)
    assert (f.FILE_RECORD_SIZE, f.FILE_RECORD.sizeof(), f.FILE_RECORD_SIZE_V1) == (96, 96, 88)
    assert (f.STREAM_DESCRIPTOR_SIZE, f.PE_IMAGE_SIZE, f.PE_IMAGE_MAPPING_SIZE) == (16, 24, 8)
    assert f.LINK_TABLE_HEADER_SIZE == 8
    assert f.UPCASE_TABLE_SIZE == 131072
    assert f.header_length(f.FileType.IMAGE, 2) == 72 + 48


def test_guid_is_windows_layout():
    guid = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    raw = f.REGION_SET.build({"id": guid, "count": 3, "reserved": 0, "reserved1": 0})
    assert raw[:16] == bytes.fromhex("33221100554477668899aabbccddeeff")
    assert f.REGION_SET.parse(raw).id == guid


def _flatten(obj, prefix=""):
    if isinstance(obj, cs.Container):
        out = []
        for key, value in obj.items():
            if key.startswith("_"):
                continue
            out += _flatten(value, f"{prefix}.{key}" if prefix else key)
        return out
    return [(prefix or "value", obj)]


FAST = [
    (f.FILE_RECORD, f.FILE_RECORD_FAST),
    (f.STREAM_DESCRIPTOR, f.STREAM_DESCRIPTOR_FAST),
    (f.FILE_TABLE_DIRECTORY_ENTRY, f.FILE_TABLE_DIRECTORY_ENTRY_FAST),
    (f.LINK_TABLE_HEADER, f.LINK_TABLE_HEADER_FAST),
    (f.FILE_ID, f.FILE_ID_FAST),
    (f.LINK_NAME_OFFSET, f.LINK_NAME_OFFSET_FAST),
    (f.LINK_NAME_LENGTH, f.LINK_NAME_LENGTH_FAST),
    (f.REGION_OFFSET, f.REGION_OFFSET_FAST),
    (f.PE_IMAGE_MAPPING, f.PE_IMAGE_MAPPING_FAST),
    (f.STREAM_TABLE_LENGTH, f.STREAM_TABLE_LENGTH_FAST),
    (f.SD_LENGTH, f.SD_LENGTH_FAST),
    (f.REPARSE_LENGTH, f.REPARSE_LENGTH_FAST),
    (f.REPARSE_DATA_HEADER, f.REPARSE_DATA_HEADER_FAST),
]


@pytest.mark.parametrize(("con", "fast"), FAST, ids=lambda x: getattr(x, "fields", [""])[0])
def test_fast_path_agrees_with_declaration(con, fast):
    rng = random.Random(1234)
    assert fast.size == con.sizeof()
    for _ in range(200):
        raw = bytes(rng.randrange(256) for _ in range(fast.size))
        parsed = con.parse(raw)
        flat = _flatten(parsed)
        assert tuple(name for name, _ in flat) == fast.fields
        values = fast.unpack_from(raw)
        assert tuple(v for _, v in flat) == values
        assert fast.pack(*values) == raw == con.build(parsed)
        buffer = bytearray(fast.size + 3)
        fast.pack_into(buffer, 3, *values)
        assert bytes(buffer[3:]) == raw


def test_fast_path_refuses_variable_declarations():
    with pytest.raises(TypeError):
        f.derive_fast(f.LINK_NAME)
    with pytest.raises(TypeError):
        f.derive_fast(f.REGION_SET)  # the GUID adapter has no struct code


def test_length_and_type_bits():
    value = f.pack_length_and_type(0x1234, f.StreamType.LINK_TABLE, sparse=True)
    assert value == 0x1234 | (1 << 48) | (1 << 56)
    assert f.unpack_length_and_type(value) == (0x1234, 1, True, 0)
    assert f.unpack_length_and_type(1 << 63) == (0, 0, False, 1 << 63)
    assert f.unpack_length_and_type(0x00FF_0000_0000_0000)[1] == 0xFF
    with pytest.raises(ValueError):
        f.pack_length_and_type(1 << 48, f.StreamType.DATA)


def test_flag_attribute_mapping():
    assert f.attributes_from_flags(0x1F) == 0x1 | 0x2 | 0x4 | 0x20 | 0x200
    assert f.flags_from_attributes(0x1 | 0x2 | 0x4 | 0x20 | 0x200 | 0x80 | 0x10) == 0x1F
    assert f.attributes_from_flags(0xFFE0) == 0


def test_fast_struct_is_little_endian_struct():
    assert f.FILE_RECORD_FAST.packer.format == "<HHLQQQQQQQQQQLHH"
    assert struct.calcsize(f.FILE_RECORD_FAST.packer.format) == 96
