"""Corrupt and hostile images: only CimFormatError, in bounded time and memory (§1, §13)."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
import uuid

import pytest

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError, CimNotFoundError
from cimsnap.cim.offsets import make_region_offset
from cimsnap.cim.reader import CimReader
from cimsnap.cim.regions import open_image
from cimsnap.cim.verify import Severity, verify_reader
from tests.unit.cim.hostile import exercise, survive
from tests.unit.cim.imagebuilder import ImageBuilder
from tests.unit.cim.test_reader import sample

pytestmark = pytest.mark.timeout(60)


def built_sample():
    return sample().build()


def reader(built):
    return CimReader(built.views(), built.offsets["filesystem"])


def patch(built, name, skip, fmt_code, value):
    region, offset = built.locate(name)
    struct.pack_into(fmt_code, built.regions[region], offset + skip, value)


def errors_of(built):
    try:
        problems = verify_reader(reader(built))
    except CimFormatError as e:
        return [e]
    return [p for p in problems if p.severity is Severity.ERROR]


def record_location(built, file_id):
    region, offset = built.locate(f"table:{(file_id - 1) // 1024}")
    return region, offset + ((file_id - 1) % 1024) * fmt.FILE_RECORD_SIZE


def test_intact_sample_has_no_problems():
    built = built_sample()
    assert verify_reader(reader(built)) == []
    assert exercise(reader(built)) > 12 * 1024


def test_every_truncation_of_the_metadata_region():
    built = built_sample()
    full = bytes(built.regions[0])
    outcomes = set()
    for cut in range(0, len(full), max(1, len(full) // 400)):
        built.regions[0] = bytearray(full[:cut])
        outcomes.add(survive(built.views(), built.offsets["filesystem"]))
    assert "format" in outcomes


def test_truncated_data_region_fails_at_open_of_the_stream():
    built = built_sample()
    built.regions[1] = built.regions[1][: len(built.regions[1]) - 100]
    r = reader(built)
    with pytest.raises(CimFormatError) as info:
        r.open_stream("big.bin")
    assert info.value.region == 1 and info.value.offset == 4096
    assert "data of file" in str(info.value) and "0x1000" in str(info.value)


@pytest.mark.parametrize(
    "offset",
    [0, make_region_offset(7, 64), make_region_offset(0, 1 << 40), (0 << 48) | 0, 1 << 48],
)
def test_bad_filesystem_offsets(offset):
    built = built_sample()
    with pytest.raises(CimFormatError):
        CimReader(built.views(), offset)


def test_root_that_is_not_a_directory():
    built = built_sample()
    patch(built, "filesystem", 20, "<I", 3)  # root = dir/file.txt
    with pytest.raises(CimFormatError) as info:
        reader(built)
    assert "root" in str(info.value)


@pytest.mark.parametrize(
    ("name", "skip", "code", "value"),
    [
        ("filesystem", 16, "<I", 0xFFFF_FFFF),  # file table directory length
        ("file_table_directory", 8, "<H", 1025),  # Count > 1024
        ("file_table_directory", 10, "<H", 0xFFFF),  # EntrySize forged
        ("dir:2", 4, "<I", 0xFFFF_FFFF),  # LinkCount
        ("dir:2", 0, "<I", 0xFFFF_FFF0),  # Length
        ("dir:2", 0, "<I", 3),  # Length < 8
        ("dir:2", 12, "<I", 0xFFFF_FF00),  # name offset
        ("streams:2", 0, "<I", 0xFFFF_FFFF),  # stream table count prefix
        ("streams:3", 8, "<I", 0xFFFF_FFFF),  # ADS LinkCount
    ],
)
def test_forged_counts_and_lengths(name, skip, code, value):
    built = built_sample()
    patch(built, name, skip, code, value)
    tracemalloc.start()
    try:
        assert survive(built.views(), built.offsets["filesystem"]) in ("format", "ok")
        assert errors_of(built)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024


def test_forged_stream_length_is_refused_without_allocation():
    built = built_sample()
    # set big.bin's stream length to 2**47 - 1 bytes
    table_region, record = record_location(built, reader(built).stat("big.bin").file_id)
    lat = fmt.pack_length_and_type((1 << 47) - 1, fmt.StreamType.DATA)
    struct.pack_into("<Q", built.regions[table_region], record + 48, lat)
    r = reader(built)
    tracemalloc.start()
    try:
        with pytest.raises(CimFormatError):
            r.open_stream("big.bin")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024 * 1024


def test_sparse_stream_with_forged_length_streams_in_bounded_memory():
    b = ImageBuilder()
    b.add_file(1, "huge", sparse_size=1 << 40)
    r = reader(b.build())
    tracemalloc.start()
    try:
        with r.open_stream("huge") as stream:
            assert stream.length == 1 << 40
            assert stream.read(1 << 20) == bytes(1 << 20)
            stream.seek(-5, 2)
            assert stream.read() == bytes(5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024


def test_unknown_stream_type():
    built = built_sample()
    region, record = record_location(built, 3)  # dir\\file.txt
    struct.pack_into("<Q", built.regions[region], record + 48, (5 << 48) | 5)
    r = reader(built)
    with pytest.raises(CimFormatError) as info:
        r.stat("dir/file.txt")
    assert "stream type 5" in str(info.value)


def test_invalid_file_ids_in_a_directory():
    built = built_sample()
    patch(built, "dir:2", 8, "<I", 0)
    with pytest.raises(CimFormatError):
        reader(built).stat("dir/file.txt")
    patch(built, "dir:2", 8, "<I", 99_999)
    with pytest.raises(CimFormatError):
        reader(built).stat("dir/file.txt")
    assert errors_of(built)


def test_unsorted_link_table_makes_names_unreachable_and_verify_reports_it():
    b = ImageBuilder(sort=False)
    for name in ["c", "b", "a", "d", "e"]:
        b.add_file(1, name, name.encode())
    built = b.build()
    r = reader(built)
    found = []
    for name in "abcde":
        with contextlib.suppress(CimNotFoundError):
            found.append(r.open_stream(name).read())
    assert len(found) < 5
    problems = errors_of(built)
    assert any("out of order" in p.why and p.offset is not None for p in problems)


def test_case_insensitive_duplicates_are_reported():
    b = ImageBuilder()
    b.add_file(1, "Readme", b"1")
    b.add_file(1, "README", b"2")
    problems = errors_of(b.build())
    assert [p.why for p in problems] == ["duplicate name (case-insensitive)"]


def test_cyclic_directories_terminate():
    b = ImageBuilder()
    a = b.mkdir(1, "a")
    inner = b.mkdir(a, "b")
    b.link(inner, "loop", a)  # a\b\loop -> a
    b.link(inner, "root", 1)
    built = b.build()
    r = reader(built)
    with pytest.raises(CimFormatError) as info:
        list(r.walk())
    assert "reached twice" in str(info.value)
    skipped = []
    paths = [p for p, _ in r.walk(on_error=skipped.append)]
    assert paths == ["", "a", "a\\b", "a\\b\\loop", "a\\b\\root"] and len(skipped) == 2
    # a path lookup through the loop is bounded by the path's length
    assert r.stat("a\\b\\loop\\b\\loop\\b").file_id == inner
    assert sum("reached twice" in p.why for p in errors_of(built)) == 2


def test_hard_linked_directory_is_an_error():
    b = ImageBuilder()
    d = b.mkdir(1, "d")
    b.link(1, "e", d)
    assert any("reached twice" in p.why for p in errors_of(b.build()))


def test_bad_names_are_reported():
    b = ImageBuilder()
    b.add_file(1, "a:b", b"")
    b.add_file(1, "x" * 256, b"")
    assert len(errors_of(b.build())) == 2


def test_pe_mapping_out_of_order_or_out_of_range():
    b = ImageBuilder()
    b.add_file(1, "a.exe", pe=(bytes(8192), [(0, 0), (2048, 2048)], 6000))
    built = b.build()
    assert survive(built.views(), built.offsets["filesystem"]) == "ok"
    patch(built, "pe:2", 24 + 8 + 4, "<I", 0xFFFF_0000)  # delta far past the region
    with pytest.raises(CimFormatError):
        reader(built).open_stream("a.exe")
    patch(built, "pe:2", 20, "<H", 0xFFFF)  # mapping count past the region
    with pytest.raises(CimFormatError):
        reader(built).open_stream("a.exe")


def test_ads_of_wrong_type():
    built = built_sample()
    region, offset = built.locate("streams:3")
    # stream table: u32 C, then header (8), first descriptor at +12: LengthAndType at +20
    struct.pack_into("<Q", built.regions[region], offset + 20, (1 << 48) | 9)
    with pytest.raises(CimFormatError):
        reader(built).open_stream("dir/file.txt", "ads")


def test_bad_region_headers_through_files(tmp_path):
    built = built_sample()
    built.regions[2][0:8] = b"notacim!"
    cim = built.write(tmp_path, "x.cim")
    with pytest.raises(CimFormatError) as info:
        open_image(cim)
    assert info.value.region == 2
    built = built_sample()
    built.regions[1] = built.regions[1][:20]
    cim = built.write(tmp_path, "y.cim")
    with pytest.raises(CimFormatError):
        open_image(cim)


def test_parent_set_that_does_not_exist(tmp_path):
    b = ImageBuilder(parents=[fmt_region_set()])
    cim = b.build().write(tmp_path, "child.cim")
    with pytest.raises(CimFormatError) as info:
        open_image(cim)
    assert info.value.region == 0


def fmt_region_set():
    from cimsnap.cim.headers import RegionSet

    return RegionSet(uuid.UUID(int=77), 2)
