"""The reader and verify on images written by cimsnap.cim.writer (the two sides check each
other: neither test suite re-implements the format)."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest

from cimsnap.cim.errors import CimNotFoundError
from cimsnap.cim.file_metadata import FileMetadata
from cimsnap.cim.format import FileAttribute
from cimsnap.cim.regions import open_image
from cimsnap.cim.verify import verify_path
from cimsnap.cim.writer import CimWriter

DIR = int(FileAttribute.DIRECTORY)
SYMLINK = (0xA000000C).to_bytes(4, "little") + (12).to_bytes(2, "little") + bytes(2) + bytes(12)


def write_file(writer, path, data, **kw):
    with writer.create_file(path, FileMetadata(size=len(data), **kw)) as stream:
        stream.write(data)


@pytest.fixture
def big():
    return os.urandom(3 * 4096 + 17)


def test_writer_output_reads_back_and_verifies(tmp_path, big):
    with CimWriter(tmp_path, "base.cim", region_set_id=uuid.UUID(int=1)) as w:
        w.create_file("dir", FileMetadata(attributes=DIR, last_write_time=5))
        write_file(w, "dir\\file.txt", b"hello", attributes=0x21, creation_time=7)
        with w.create_alternate_stream("dir\\file.txt:ads", 3) as s:
            s.write(b"abc")
        write_file(w, "big.bin", big)
        write_file(w, "empty", b"")
        w.create_file("Other", FileMetadata(attributes=DIR))
        w.create_hard_link("Other\\HARD.txt", "dir\\file.txt")
        w.create_file("link", FileMetadata(attributes=0x400, reparse=SYMLINK))
        w.create_file("many", FileMetadata(attributes=DIR))
        for i in range(1100):
            write_file(w, f"many\\f{i}", str(i).encode())
        w.commit()
    cim = tmp_path / "base.cim"
    assert verify_path(cim) == []
    with open_image(cim) as image:
        r = image.reader
        assert [e.name for e in r.listdir()] == ["big.bin", "dir", "empty", "link", "many", "Other"]
        assert r.open_stream("DIR/FILE.TXT").read() == b"hello"
        assert r.open_stream("other/hard.txt").read() == b"hello"
        assert r.stat("other/hard.txt").file_id == r.stat("dir/file.txt").file_id
        assert r.open_stream("dir/file.txt", "ads").read() == b"abc"
        digest = hashlib.sha256(b"".join(r.open_stream("big.bin").chunks(4096))).digest()
        assert digest == hashlib.sha256(big).digest()
        assert r.open_stream("empty").read() == b""
        info = r.stat("dir/file.txt")
        assert (info.attributes, info.creation_time) == (0x21, 7)
        assert r.stat("dir").last_write_time == 5
        assert r.stat("link").reparse_tag == 0xA000000C
        assert r.open_stream("many/f1099").read() == b"1099"
        assert r.file_table_count == 2
        assert len(list(r.walk())) == 1 + 6 + 1 + 1100 + 1  # root, top, file.txt, many, HARD


def test_fork_reads_parent_and_own_regions(tmp_path, big):
    with CimWriter(tmp_path, "base.cim", region_set_id=uuid.UUID(int=1)) as w:
        write_file(w, "keep", b"kept")
        write_file(w, "gone", b"deleted")
        write_file(w, "big.bin", big)
        w.commit()
    with CimWriter(tmp_path, "fork.cim", parent="base.cim", region_set_id=uuid.UUID(int=2)) as w:
        w.delete_path("gone")
        write_file(w, "new", b"new data")
        w.commit()
    assert verify_path(tmp_path / "fork.cim") == []
    with open_image(tmp_path / "fork.cim") as image:
        r = image.reader
        assert r.region_count == 6
        assert [e.name for e in r.listdir()] == ["big.bin", "keep", "new"]
        assert r.open_stream("big.bin").read() == big
        with pytest.raises(CimNotFoundError):
            r.stat("gone")
    with open_image(tmp_path / "base.cim") as image:
        assert image.reader.open_stream("gone").read() == b"deleted"
