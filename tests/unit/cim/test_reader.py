"""Reading images built by the test builder (the CimFS format baseline vectors)."""

from __future__ import annotations

import hashlib
import io
import os
import uuid

import pytest

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import (
    CimApiError,
    CimFormatError,
    CimNotADirectoryError,
    CimNotFoundError,
    CimPathNotFoundError,
)
from cimsnap.cim.reader import CimReader, DirEntry, StreamInfo
from cimsnap.cim.regions import open_image
from cimsnap.cim.verify import verify_reader
from tests.unit.cim.imagebuilder import ImageBuilder, case_sensitive_upcase

SYMLINK = (0xA000000C).to_bytes(4, "little") + bytes(12) + "target".encode("utf-16-le")


def reader_of(built, parents=()):
    return CimReader(built.views(parents), built.offsets["filesystem"])


def sample():
    b = ImageBuilder()
    d = b.mkdir(1, "dir", streams={"dirads": b"on a directory"})
    f = b.add_file(d, "file.txt", b"hello", streams={"ads": b"alternate", "zero": b""})
    other = b.mkdir(1, "Other")
    b.link(other, "hardlink.txt", f)
    b.add_file(1, "empty", b"")
    b.add_file(1, "big.bin", os.urandom(12 * 1024))
    b.add_file(1, "sparse.bin", sparse_size=10_000, flags=fmt.RecordFlag.SPARSE_FILE)
    b.add_file(1, "link", reparse=SYMLINK, flags=0x1F)
    b.add_file(1, "withea", b"x", ea=b"\x00" * 12 + b"EANAME\x00ab")
    b.mkdir(1, "emptydir")
    return b


def test_empty_root():
    r = reader_of(ImageBuilder().build())
    assert r.listdir("") == []
    assert r.stat("").is_directory and r.stat("").file_id == 1
    assert list(r.walk()) == [("", r.record(1))]


def test_sample_tree_and_data():
    b = sample()
    r = reader_of(b.build())
    names = [e.name for e in r.listdir("\\")]
    assert names == ["big.bin", "dir", "empty", "emptydir", "link", "Other", "sparse.bin", "withea"]
    assert r.listdir("dir") == [DirEntry("file.txt", 3)]
    assert r.open_stream("dir/file.txt").read() == b"hello"
    assert r.open_stream("OTHER\\HARDLINK.TXT").read() == b"hello"
    assert r.stat("other/hardlink.txt").file_id == r.stat("dir/file.txt").file_id
    big = b.entry(r.stat("big.bin").file_id).data
    stream = r.open_stream("big.bin")
    assert stream.length == 12 * 1024
    assert hashlib.sha256(b"".join(stream.chunks(1000))).digest() == hashlib.sha256(big).digest()
    assert r.open_stream("empty").read() == b""
    assert r.open_stream("sparse.bin").read() == bytes(10_000)
    assert r.stat("sparse.bin").sparse and r.stat("sparse.bin").size == 10_000
    assert r.listdir("emptydir") == []


def test_streams_attributes_and_metadata():
    r = reader_of(sample().build())
    assert r.streams("dir/file.txt") == [StreamInfo("ads", 9, False), StreamInfo("zero", 0, False)]
    assert r.open_stream("dir/file.txt", "ADS").read() == b"alternate"
    assert r.open_stream("dir/file.txt", "zero").read() == b""
    assert r.open_stream("dir", "dirads").read() == b"on a directory"
    with pytest.raises(CimNotFoundError):
        r.open_stream("dir/file.txt", "missing")
    link = r.stat("link")
    assert link.reparse_tag == 0xA000000C
    assert link.attributes == 0x1 | 0x2 | 0x4 | 0x20 | 0x200 | 0x400
    assert r.stat("dir").attributes == fmt.FileAttribute.DIRECTORY
    assert (link.creation_time, link.last_write_time, link.change_time, link.last_access_time) == (
        1,
        2,
        3,
        4,
    )


def test_lookup_errors_are_classes():
    r = reader_of(sample().build())
    with pytest.raises(CimNotFoundError) as info:
        r.stat("dir/nope")
    assert not isinstance(info.value, CimPathNotFoundError)
    with pytest.raises(CimPathNotFoundError):
        r.stat("nope/file.txt")
    with pytest.raises(CimNotADirectoryError):
        r.stat("empty/x")
    with pytest.raises(CimNotADirectoryError):
        r.listdir("empty")
    with pytest.raises(CimApiError):
        r.open_stream("dir")


def test_unicode_case_and_supplementary_sorting():
    b = ImageBuilder()
    names = ["a", "B", "ä", "Ä1", "\uff21", "\U0001f600", "ß", "Z_", "z"]
    for i, name in enumerate(names):
        b.add_file(1, name, str(i).encode())
    r = reader_of(b.build())
    for i, name in enumerate(names):
        assert r.open_stream(name.upper() if name != "ß" else name).read() == str(i).encode()
    assert r.open_stream("\ud83d\ude00").read() == b"5"  # pair written as two code points


def test_two_file_tables():
    b = ImageBuilder()
    for i in range(1100):
        b.add_file(1, f"f{i:04}", i.to_bytes(2, "little"))
    r = reader_of(b.build())
    assert r.file_table_count == 2 and r.file_count() == 1101
    assert r.open_stream("f1099").read() == (1099).to_bytes(2, "little")
    assert r.stat("F1099").file_id == 1101
    assert len(list(r.walk())) == 1101


def test_pe_image_stream():
    logical = os.urandom(3000)
    # sections at 0..1024 (delta 0) and 1024.. moved forward to 4096 (delta 3072)
    expanded = logical[:1024] + bytes(3072) + logical[1024:]
    b = ImageBuilder()
    b.add_file(1, "app.exe", pe=(expanded, [(0, 0), (1024, 3072)], len(logical)))
    r = reader_of(b.build())
    stream = r.open_stream("app.exe")
    assert stream.read() == logical
    stream.seek(1000)
    assert stream.read(100) == logical[1000:1100]
    assert r.stat("app.exe").stream_type is fmt.StreamType.PE_IMAGE


def test_stream_reader_is_seekable_file_like():
    b = ImageBuilder()
    b.add_file(1, "f", bytes(range(256)) * 40)
    r = reader_of(b.build())
    with r.open_stream("f") as stream:
        assert isinstance(stream, io.RawIOBase)
        stream.seek(-10, io.SEEK_END)
        assert stream.read() == (bytes(range(256)) * 40)[-10:]
        assert stream.read() == b""
        buffered = io.BufferedReader(stream)
        buffered.seek(5)
        assert buffered.read(3) == bytes([5, 6, 7])


def test_fork_references_parent_regions(tmp_path):
    parent = ImageBuilder(guid=uuid.UUID(int=1))
    parent.add_file(1, "keep", b"parent data")
    parent.add_file(1, "gone", b"deleted in child")
    built_parent = parent.build()
    child = ImageBuilder(parents=[built_parent.own], guid=uuid.UUID(int=2))
    keep_stream = (
        built_parent.offsets["data:2"],
        fmt.pack_length_and_type(len(b"parent data"), fmt.StreamType.DATA),
    )
    child.add_file(1, "keep", raw_stream=keep_stream)
    child.add_file(1, "new", b"child data")
    built_child = child.build()
    built_parent.write(tmp_path, "parent.cim")
    cim = built_child.write(tmp_path, "child.cim")
    with open_image(cim) as image:
        r = image.reader
        assert image.header.parents == (built_parent.own,)
        assert r.region_count == 6
        assert [e.name for e in r.listdir()] == ["keep", "new"]
        assert r.open_stream("keep").read() == b"parent data"
        assert r.open_stream("new").read() == b"child data"


def test_open_image_from_files(tmp_path):
    cim = sample().build().write(tmp_path, "layer.cim")
    with open_image(cim) as image:
        assert image.reader.open_stream("dir/file.txt").read() == b"hello"
        stream = image.reader.open_stream("big.bin")
    image.close()  # idempotent, even with a stream still referencing a mapping
    assert len(stream.read()) == 12 * 1024
    del stream


def test_close_unmaps_regions_when_no_stream_is_open(tmp_path):
    cim = sample().build().write(tmp_path, "layer.cim")
    image = open_image(cim)
    assert image.reader.open_stream("dir/file.txt").read() == b"hello"
    list(image.reader.walk())
    maps = list(image._maps)
    image.close()
    assert all(m is None or m.closed for m in maps)


def test_missing_region_file_is_named(tmp_path):
    built = sample().build()
    cim = built.write(tmp_path, "layer.cim")
    victim = next(tmp_path.glob("region_*_1"))
    victim.unlink()
    with pytest.raises(CimFormatError) as info:
        open_image(cim)
    assert victim.name in str(info.value) and info.value.region == 1


def test_lookups_use_the_images_own_upcase_table():
    # A stored table that does not fold a-z: names become case-sensitive, and the link
    # table is sorted with that table ('B' < 'a'), which the default table would not find.
    b = ImageBuilder(upcase=case_sensitive_upcase())
    for name in ["a", "A", "b", "B", "zz"]:
        b.add_file(1, name, name.encode())
    built = b.build()
    r = reader_of(built)
    assert [e.name for e in r.listdir()] == ["A", "B", "a", "b", "zz"]
    for name in ["a", "A", "b", "B", "zz"]:
        assert r.open_stream(name).read() == name.encode()
    with pytest.raises(CimNotFoundError):
        r.stat("ZZ")
    assert verify_reader(r) == []


def test_pe_image_with_implicit_first_run_and_short_tail():
    logical = os.urandom(5000)
    # No mapping at 0: bytes 0..512 come from delta 0; from 512 on, delta 3584.
    expanded = logical[:512] + bytes(3584) + logical[512:]
    b = ImageBuilder()
    b.add_file(1, "drv.sys", pe=(expanded, [(512, 3584)], len(logical)))
    r = reader_of(b.build())
    assert r.open_stream("drv.sys").read() == logical
    assert verify_reader(r) == []
