"""The writer's layout code: derived packers agree with the declarations, tables parse."""

from __future__ import annotations

import struct

import pytest

from cimsnap.cim import format as fmt
from cimsnap.cim.format import RegionType
from cimsnap.cim.headers import parse_region_header
from cimsnap.cim.layout import (
    _repeated_format,
    link_table_bytes,
    objectid_header_bytes,
    region_header_bytes,
)
from cimsnap.cim.linktable import DIRECTORY_VALUE_SIZE, STREAM_VALUE_SIZE, LinkTable
from cimsnap.cim.upcase import NameOrder


@pytest.mark.parametrize("count", [0, 1, 5, 1000])
def test_repeated_formats_match_the_declarations(count: int) -> None:
    ids = [(i * 2654435761) & 0xFFFFFFFF for i in range(count)]
    packed = struct.pack(_repeated_format(fmt.FILE_ID_FAST, count), *ids)
    assert packed == b"".join(fmt.FILE_ID.build(i) for i in ids)
    descriptors = [(i << 3, (i * 7) | (1 << 48)) for i in range(count)]
    flat = [v for pair in descriptors for v in pair]
    packed = struct.pack(_repeated_format(fmt.STREAM_DESCRIPTOR_FAST, count), *flat)
    assert packed == b"".join(
        fmt.STREAM_DESCRIPTOR.build({"data_offset": o, "length_and_type": t})
        for o, t in descriptors
    )


def test_link_tables_parse_back_with_the_reader() -> None:
    order = NameOrder.default()
    names = sorted(["b", "A", "😀", "ǅ", "ü" * 255, "z"], key=order.key)
    ids = list(range(10, 10 + len(names)))
    values = struct.pack(_repeated_format(fmt.FILE_ID_FAST, len(ids)), *ids)
    data = link_table_bytes(names, values, DIRECTORY_VALUE_SIZE)
    table = LinkTable.parse(memoryview(data), DIRECTORY_VALUE_SIZE, "t", 0, 8)
    assert table.length == len(data)
    assert list(table.directory_entries()) == list(zip(names, ids, strict=True))
    for name, file_id in zip(names, ids, strict=True):
        index = table.find(name.upper() if name.isascii() else name, order)
        assert index is not None and table.file_id_at(index) == file_id
    streams = link_table_bytes(["s"], bytes(STREAM_VALUE_SIZE), STREAM_VALUE_SIZE)
    table = LinkTable.parse(memoryview(streams), STREAM_VALUE_SIZE, "s", 0, 8)
    assert table.name_at(0) == "s" and table.descriptor_at(0) == (0, 0)


def test_header_builders_match_section_3() -> None:
    header = parse_region_header(region_header_bytes(2, RegionType.SMALL_DATA), "r", 0)
    assert (header.index, header.type, header.common.header_length) == (2, 2, 40)
    objectid = fmt.OBJECTID_HEADER.parse(objectid_header_bytes(1, RegionType.DATA))
    assert len(objectid_header_bytes(1, RegionType.DATA)) == fmt.OBJECTID_HEADER_SIZE
    assert (objectid.index, objectid.type, objectid.count, objectid.table_offset) == (1, 1, 0, 48)
    assert objectid.common.type == fmt.FileType.OBJECTID
