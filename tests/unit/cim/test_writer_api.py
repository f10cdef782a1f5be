"""CimWriter API behaviour: what it stores, and the errors mirroring the CimFS API (§12)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from cimsnap.cim import errors
from cimsnap.cim.content import State
from cimsnap.cim.file_metadata import NULL_DACL_SECURITY_DESCRIPTOR, FileMetadata
from cimsnap.cim.format import REPARSE_LENGTH_FAST, SD_LENGTH_FAST, FileAttribute
from cimsnap.cim.image_paths import MEMO_LIMIT, PathParser, split_components
from cimsnap.cim.regions import open_image
from cimsnap.cim.writer import CimWriter

DIR = FileMetadata(attributes=FileAttribute.DIRECTORY)
GUID = uuid.UUID("6f0c3c2e-0000-4000-8000-000000000001")


def write_file(writer: CimWriter, path: str, data: bytes, **kw: object) -> None:
    with writer.create_file(path, FileMetadata(size=len(data), **kw)) as stream:  # type: ignore[arg-type]
        stream.write(data)


def read(cim: Path, path: str, stream: str | None = None) -> bytes:
    with open_image(cim) as image:
        return image.reader.open_stream(path, stream).read()


def test_full_metadata_round_trips(tmp_path: Path) -> None:
    sd = bytes([1, 0, 4, 0x80]) + bytes(16) + b"owner-sid-bytes!"
    ea = bytes(range(40))
    reparse = (0xA000000C).to_bytes(4, "little") + (4).to_bytes(2, "little") + bytes(2) + b"abcd"
    metadata = FileMetadata(
        attributes=FileAttribute.READONLY
        | FileAttribute.HIDDEN
        | FileAttribute.SYSTEM
        | FileAttribute.ARCHIVE
        | FileAttribute.REPARSE_POINT,
        size=3,
        creation_time=1,
        last_write_time=2,
        change_time=3,
        last_access_time=(1 << 64) - 1,
        security_descriptor=sd,
        ea=ea,
        reparse=reparse,
    )
    with CimWriter(tmp_path, "a.cim") as writer:
        with writer.create_file("\\f\\", metadata) as stream:
            stream.write(b"abc")
        writer.commit()
    with open_image(tmp_path / "a.cim") as image:
        reader = image.reader
        info = reader.stat("f")
        record = reader.lookup("f")
        assert info.attributes == metadata.attributes
        assert (info.creation_time, info.last_write_time, info.change_time) == (1, 2, 3)
        assert info.last_access_time == (1 << 64) - 1
        assert info.reparse_tag == 0xA000000C
        assert bytes(reader.counted_object(record.sd_offset, SD_LENGTH_FAST, "sd")) == sd
        assert (
            bytes(reader.counted_object(record.reparse_offset, REPARSE_LENGTH_FAST, "rp"))
            == reparse
        )
        assert bytes(reader.object_at(record.ea_offset, record.ea_length, "ea")) == ea
        assert reader.open_stream("f").read() == b"abc"
        root = reader.lookup("")
        assert bytes(reader.counted_object(root.sd_offset, SD_LENGTH_FAST, "sd")) == (
            NULL_DACL_SECURITY_DESCRIPTOR
        )


def test_chunked_writes_partial_sparse_and_empty(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        with writer.create_file("big", FileMetadata(size=300_000)) as stream:
            for i in range(0, 300_000, 7_000):
                stream.write(bytes([i % 251]) * min(7_000, 300_000 - i))
        with writer.create_file("partial", FileMetadata(size=10_000)) as stream:
            stream.write(b"x" * 100)
        writer.create_file("sparse", FileMetadata(size=1 << 40, attributes=0x200)).close()
        assert writer.create_file("empty", FileMetadata()).closed
        writer.create_file("emptydir", DIR)
        writer.commit()
    expected = b"".join(
        bytes([i % 251]) * min(7_000, 300_000 - i) for i in range(0, 300_000, 7_000)
    )
    assert read(tmp_path / "a.cim", "big") == expected
    assert read(tmp_path / "a.cim", "partial") == b"x" * 100 + bytes(9_900)
    assert read(tmp_path / "a.cim", "empty") == b""
    with open_image(tmp_path / "a.cim") as image:
        info = image.reader.stat("sparse")
        assert info.sparse and info.size == 1 << 40
        assert image.reader.listdir("emptydir") == []


def test_alternate_streams_and_hard_links(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        writer.create_file("d", DIR)
        write_file(writer, "d\\f", b"data")
        with writer.create_alternate_stream("d\\f:s1", 2) as stream:
            stream.write(b"s1")
        writer.create_alternate_stream("d\\f:unwritten", 5000).close()
        with writer.create_alternate_stream("d:dirstream", 1) as stream:
            stream.write(b"!")
        writer.create_hard_link("other", "d\\f")
        writer.commit()
    with open_image(tmp_path / "a.cim") as image:
        reader = image.reader
        assert reader.lookup("other").file_id == reader.lookup("d\\F").file_id
        assert reader.open_stream("other", "S1").read() == b"s1"
        assert reader.open_stream("d\\f", "unwritten").read() == bytes(5000)
        assert {s.name for s in reader.streams("other")} == {"s1", "unwritten"}
        assert reader.open_stream("d", "dirstream").read() == b"!"


def test_replace_delete_and_directory_merge(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        write_file(writer, "f", b"old")
        writer.create_hard_link("g", "f")
        write_file(writer, "F", b"new!")  # replaces, case-insensitively; "g" keeps the old file
        writer.create_file("d", DIR)
        write_file(writer, "d\\inner", b"i")
        writer.create_file("d", FileMetadata(attributes=0x10 | 0x2))  # merge, keeps children
        writer.create_file("gone", DIR)
        writer.create_file("gone\\sub", DIR)
        write_file(writer, "gone\\sub\\x", b"x")
        writer.delete_path("gone")
        write_file(writer, "f2", b"2")
        with writer.create_alternate_stream("f2:s", 1) as stream:
            stream.write(b"s")
        writer.delete_path("f2:s")
        writer.commit()
    with open_image(tmp_path / "a.cim") as image:
        reader = image.reader
        assert reader.open_stream("f").read() == b"new!"
        assert reader.open_stream("g").read() == b"old"
        assert [e.name for e in reader.listdir("")] == ["d", "F", "f2", "g"]
        assert reader.listdir("d")[0].name == "inner"
        assert reader.stat("d").attributes & FileAttribute.HIDDEN
        assert reader.streams("f2") == []


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda w: w.create_file("missing\\f", FileMetadata()), errors.CimPathNotFoundError),
        (lambda w: w.create_file("file\\f", FileMetadata()), errors.CimNotADirectoryError),
        (lambda w: w.create_file("a" * 256, FileMetadata()), errors.CimInvalidNameError),
        (lambda w: w.create_file("bad:name", FileMetadata()), errors.CimInvalidNameError),
        (lambda w: w.create_file("a\\\\b", FileMetadata()), errors.CimInvalidNameError),
        (lambda w: w.create_file("a/b", FileMetadata()), errors.CimInvalidNameError),
        (lambda w: w.create_file("", FileMetadata()), errors.CimAccessDeniedError),
        (lambda w: w.create_hard_link("l", "dir"), errors.CimLinkToDirectoryError),
        (lambda w: w.create_hard_link("l", "nope"), errors.CimNotFoundError),
        (lambda w: w.create_hard_link("dir", "file"), errors.CimAccessDeniedError),
        (lambda w: w.delete_path("nope"), errors.CimNotFoundError),
        (lambda w: w.delete_path(""), errors.CimAccessDeniedError),
        (lambda w: w.delete_path("file:nostream"), errors.CimNotFoundError),
        (lambda w: w.create_alternate_stream("nope:s", 1), errors.CimNotFoundError),
        (lambda w: w.create_alternate_stream("file", 1), errors.CimInvalidNameError),
    ],
)
def test_api_errors_fail_the_writer_closed(tmp_path: Path, call, error) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        writer.create_file("dir", DIR)
        writer.create_file("file", FileMetadata())
        with pytest.raises(error):
            call(writer)
        assert writer.state is State.FAILED
        with pytest.raises(errors.CimWriterStateError):
            writer.create_file("other", FileMetadata())
        with pytest.raises(errors.CimWriterStateError):
            writer.commit()
    assert os.listdir(tmp_path) == []


def test_stream_errors(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        stream = writer.create_file("f", FileMetadata(size=4))
        stream.write(b"ab")
        with pytest.raises(errors.CimWriteBeyondSizeError):
            stream.write(b"cde")
        assert writer.state is State.FAILED
    with CimWriter(tmp_path, "a.cim") as writer:
        handle = writer.create_file("d", DIR)
        with pytest.raises(errors.CimInvalidArgumentError):
            handle.write(b"x")
    with CimWriter(tmp_path, "a.cim") as writer:
        writer.create_file("f", FileMetadata(size=4))
        with pytest.raises(errors.CimSharingViolationError):
            writer.create_file("g", FileMetadata())
    with CimWriter(tmp_path, "a.cim") as writer:
        writer.create_file("f", FileMetadata(size=4))
        with pytest.raises(errors.CimSharingViolationError):
            writer.commit()
    with CimWriter(tmp_path, "a.cim") as writer:
        stream = writer.create_file("f", FileMetadata(size=4))
        stream.close()
        with pytest.raises(errors.CimWriterStateError):
            stream.write(b"x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attributes": 0x80},  # NORMAL cannot be stored
        {"attributes": 0x10, "size": 1},
        {"size": 1 << 48},
        {"creation_time": -1},
        {"security_descriptor": b"x" * 65536},
        {"ea": b"x" * 65536},
        {"reparse": b"short"},
        {"attributes": 0x400},
    ],
)
def test_invalid_metadata(kwargs: dict[str, object]) -> None:
    with pytest.raises(errors.CimInvalidArgumentError):
        FileMetadata(**kwargs)  # type: ignore[arg-type]


def test_image_creation_errors(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        writer.commit()
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(errors.CimFileExistsError):
        CimWriter(tmp_path, "a.cim")
    with pytest.raises(errors.CimNotFoundError):
        CimWriter(tmp_path, "b.cim", parent="missing.cim")
    with pytest.raises(errors.CimInvalidNameError):
        CimWriter(tmp_path, "x/y.cim")
    with CimWriter(tmp_path, "b.cim"), pytest.raises(errors.CimSharingViolationError):
        CimWriter(tmp_path, "c.cim")
    assert sorted(os.listdir(tmp_path)) == before


def test_close_is_idempotent_and_commit_is_final(tmp_path: Path) -> None:
    writer = CimWriter(tmp_path, "a.cim", region_set_id=GUID)
    path = writer.commit()
    assert path == tmp_path / "a.cim"
    assert writer.state is State.COMMITTED
    with pytest.raises(errors.CimWriterStateError):
        writer.create_file("x", FileMetadata())
    writer.close()
    writer.close()
    assert writer.state is State.CLOSED
    assert len(os.listdir(tmp_path)) == 7


def test_overwrite_in_place_extends_the_image(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        write_file(writer, "one", b"1")
        writer.commit()
    with CimWriter(tmp_path, "a.cim", parent="a.cim") as writer:
        write_file(writer, "two", b"2")
        writer.commit()
    assert read(tmp_path / "a.cim", "one") == b"1"
    assert read(tmp_path / "a.cim", "two") == b"2"


def test_exists(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "a.cim") as writer:
        writer.create_file("d", DIR)
        writer.create_file("d\\f", FileMetadata())
        assert writer.exists("") and writer.exists("D\\F") and writer.exists("\\d\\")
        assert not writer.exists("d\\g")
        assert not writer.exists("missing\\g")
        assert not writer.exists("d\\f\\under-a-file")
        assert writer.state is State.OPEN


def test_path_parser_memo_is_bounded_and_starts_over() -> None:
    """More distinct parents than the memo holds: every path still splits and validates the
    same, and the memo never grows past its limit."""
    parser = PathParser()
    for i in range(MEMO_LIMIT * 2 + 3):
        path = f"Files\\d{i}\\sub\\f{i}.txt"
        assert parser.components(path) == split_components(path)
        assert len(parser._valid_parents) <= MEMO_LIMIT
    with pytest.raises(errors.CimInvalidNameError):
        parser.components("Files\\d1\\bad:name\\x")
