"""The .cim header and region-set file names (cimsnap.cim.headers), §2 and §3."""

from __future__ import annotations

import uuid

import pytest

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError
from cimsnap.cim.headers import (
    ImageHeader,
    RegionSet,
    parse_image_header,
    read_image_header,
    region_set_files,
)

OWN = uuid.UUID("6a1c7b4e-0f7e-4d5c-9a3b-2c1d0e9f8a7b")
PARENT = uuid.UUID("11111111-2222-3333-4444-555555555555")


def build_header(own_count=3, parents=(), fs_offset=0x1_0000_0000_0040, major=2, magic=None):
    common = {
        "magic": magic or fmt.MAGIC,
        "header_length": fmt.header_length(fmt.FileType.IMAGE, len(parents)),
        "type": fmt.FileType.IMAGE,
        "reserved": 0,
        "reserved2": 0,
        "major_version": major,
        "minor_version": 0,
        "reserved3": 0,
    }
    fixed = fmt.FILESYSTEM_HEADER.build(
        {
            "common": common,
            "regions": {"id": OWN, "count": own_count, "reserved": 0, "reserved1": 0},
            "filesystem_offset": fs_offset,
            "reserved": 0,
            "reserved1": 0,
            "parent_count": len(parents),
        }
    )
    return fixed + b"".join(
        fmt.REGION_SET.build({"id": g, "count": n, "reserved": 0, "reserved1": 0})
        for g, n in parents
    )


def test_parse_with_parents(tmp_path):
    data = build_header(parents=[(PARENT, 3)])
    path = tmp_path / "layer.cim"
    path.write_bytes(data)
    header = read_image_header(path)
    assert header == ImageHeader(
        own=RegionSet(OWN, 3), parents=(RegionSet(PARENT, 3),), filesystem_offset=0x1_0000_0000_0040
    )
    assert header.region_sets == (RegionSet(PARENT, 3), RegionSet(OWN, 3))


@pytest.mark.parametrize("major", [2, 3])
def test_supported_versions(major):
    assert parse_image_header(build_header(major=major)).own.count == 3


@pytest.mark.parametrize(
    "data",
    [
        build_header(major=1),
        build_header(major=4),
        build_header(magic=b"cimfile1"),
        build_header()[:71],
        build_header(parents=[(PARENT, 2)])[:90],
        build_header(own_count=0),
        build_header(own_count=0xFFFF, parents=[(PARENT, 2)]),
        b"",
    ],
)
def test_bad_headers(data):
    with pytest.raises(CimFormatError):
        parse_image_header(data)


def test_error_names_file(tmp_path):
    path = tmp_path / "x.cim"
    path.write_bytes(build_header(major=9))
    with pytest.raises(CimFormatError) as info:
        read_image_header(path)
    assert "x.cim" in str(info.value) and info.value.offset == 16


def test_every_truncation_is_a_format_error():
    data = build_header(parents=[(PARENT, 1)])
    for cut in range(len(data)):
        with pytest.raises(CimFormatError):
            parse_image_header(data[:cut])


def test_region_set_files_lowercase(tmp_path):
    files = region_set_files(tmp_path, RegionSet(uuid.UUID(str(OWN).upper()), 2))
    assert [p.name for p in files] == [
        f"region_{OWN}_0",
        f"objectid_{OWN}_0",
        f"region_{OWN}_1",
        f"objectid_{OWN}_1",
    ]
    assert all(p.parent == tmp_path for p in files)
