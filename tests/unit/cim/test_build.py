"""build_from_directory: a Linux tree to a CIM or a fork, with every problem reported."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from cimsnap.cim import build as build_module
from cimsnap.cim.build import BuildReport, build_from_directory, symlink_reparse_buffer
from cimsnap.cim.errors import CimFileExistsError, CimInvalidArgumentError
from cimsnap.cim.format import (
    IO_REPARSE_TAG_SYMLINK,
    REPARSE_LENGTH_FAST,
    SYMLINK_REPARSE_HEADER,
    FileAttribute,
)
from cimsnap.cim.regions import open_image
from tests.unit.cim.imagebuilder import ImageBuilder, case_sensitive_upcase


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "data.bin").write_bytes(bytes(range(256)) * 100)
    (root / "small.txt").write_text("hello")
    (root / "empty").write_bytes(b"")
    (root / "emptydir").mkdir()
    os.link(root / "small.txt", root / "dir" / "hardlink.txt")
    os.symlink("dir/sub", root / "to-dir")
    os.symlink("small.txt", root / "to-file")
    ro = root / "readonly"
    ro.write_text("r")
    ro.chmod(0o444)
    os.utime(root / "small.txt", ns=(1_600_000_000_000_000_000, 1_500_000_000_123_456_700))
    return root


def test_builds_tree_with_links_times_and_attributes(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    calls: list[tuple[int, int]] = []
    report = build_from_directory(src, out / "img.cim", progress=lambda f, b: calls.append((f, b)))
    # The hard link adds a name, not bytes: data is counted once per file object.
    assert report == BuildReport(files=10, bytes=25_600 + 5 + 1, problems=[])
    assert calls[-1] == (report.files, report.bytes)
    with open_image(out / "img.cim") as image:
        reader = image.reader
        assert reader.open_stream("dir\\sub\\data.bin").read() == bytes(range(256)) * 100
        assert reader.lookup("dir\\hardlink.txt").file_id == reader.lookup("small.txt").file_id
        info = reader.stat("small.txt")
        assert info.last_write_time == 1_500_000_000_123_456_700 // 100 + 116_444_736_000_000_000
        assert info.last_access_time == 1_600_000_000_000_000_000 // 100 + 116_444_736_000_000_000
        assert info.attributes == FileAttribute.ARCHIVE
        assert reader.stat("readonly").attributes == FileAttribute.ARCHIVE | FileAttribute.READONLY
        assert reader.stat("emptydir").is_directory
        assert reader.listdir("emptydir") == []
        to_dir = reader.stat("to-dir")
        assert to_dir.is_directory and to_dir.reparse_tag == IO_REPARSE_TAG_SYMLINK
        assert to_dir.attributes & FileAttribute.REPARSE_POINT
        record = reader.lookup("to-file")
        buffer = bytes(reader.counted_object(record.reparse_offset, REPARSE_LENGTH_FAST, "reparse"))
        assert buffer == symlink_reparse_buffer("small.txt")
        header = SYMLINK_REPARSE_HEADER.parse(buffer)
        assert header.flags == 1 and header.reparse_data_length == len(buffer) - 8
        assert buffer[20:].decode("utf-16-le") == "small.txtsmall.txt"
        assert not reader.stat("to-file").is_directory


def test_problems_are_reported_never_skipped_silently(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "ok").write_text("ok")
    (src / "Case").write_text("1")
    (src / "case").write_text("2")
    (src / "co:lon").write_text("x")
    (src / "back\\slash").write_text("x")
    (src / "undecodable-\udcff").write_text("x")
    os.mkfifo(src / "fifo")
    os.symlink("/etc/passwd", src / "absolute")
    (src / "locked").mkdir()
    (src / "locked" / "hidden").write_text("x")
    (src / "unreadable").write_text("secret")
    real_open = os.open

    # The walk reaches every directory and file through its parent's descriptor.
    def open_(path: object, *args: object, **kwargs: object) -> int:
        if Path(str(path)).name in ("locked", "unreadable"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    mp = pytest.MonkeyPatch()
    mp.setattr(build_module.os, "open", open_)
    try:
        report = build_from_directory(src, tmp_path / "img.cim")
    finally:
        mp.undo()
    problems = {path.name: why for path, why in report.problems}
    assert set(problems) == {
        "case",
        "co:lon",
        "back\\slash",
        "undecodable-\udcff",
        "fifo",
        "absolute",
        "locked",
        "unreadable",
    }
    with open_image(tmp_path / "img.cim") as image:
        names = [e.name for e in image.reader.listdir("")]
        assert names == ["Case", "locked", "ok"]
        assert image.reader.listdir("locked") == []


def test_fork_adds_replaces_and_applies_whiteouts(src: Path, tmp_path: Path) -> None:
    build_from_directory(src, tmp_path / "base.cim")
    layer = tmp_path / "layer"
    (layer / "dir").mkdir(parents=True)
    (layer / "dir" / ".wh.sub").write_text("")
    (layer / ".wh.small.txt").write_text("")
    (layer / ".wh.not-there").write_text("")
    (layer / "EMPTY").write_text("now with data")
    (layer / "emptydir").mkdir()
    (layer / "emptydir" / "new").write_text("n")
    report = build_from_directory(layer, tmp_path / "l1.cim", parent=tmp_path / "base.cim")
    assert report.problems == []
    assert report.files == 4
    opaque = tmp_path / "layer2"
    (opaque / "dir").mkdir(parents=True)
    (opaque / "dir" / ".wh..wh..opq").write_text("")
    (opaque / "dir" / "only").write_text("o")
    build_from_directory(opaque, tmp_path / "l2.cim", parent=tmp_path / "l1.cim")
    with open_image(tmp_path / "l1.cim") as image:
        reader = image.reader
        assert [e.name for e in reader.listdir("")] == [
            "dir",
            "EMPTY",
            "emptydir",
            "readonly",
            "to-dir",
            "to-file",
        ]
        assert [e.name for e in reader.listdir("dir")] == ["hardlink.txt"]
        assert reader.open_stream("dir\\hardlink.txt").read() == b"hello"
        assert reader.open_stream("empty").read() == b"now with data"
        assert [e.name for e in reader.listdir("emptydir")] == ["new"]
    with open_image(tmp_path / "l2.cim") as image:
        assert [e.name for e in image.reader.listdir("dir")] == ["only"]
        assert [e.name for e in image.reader.listdir("emptydir")] == ["new"]
    with open_image(tmp_path / "base.cim") as image:
        assert image.reader.open_stream("small.txt").read() == b"hello"


def test_whiteouts_without_parent_are_not_stored(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / ".wh.x").write_text("")
    (src / "y").write_text("y")
    report = build_from_directory(src, tmp_path / "img.cim")
    assert report.files == 1
    with open_image(tmp_path / "img.cim") as image:
        assert [e.name for e in image.reader.listdir("")] == ["y"]


def test_build_errors_leave_no_files(src: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    build_from_directory(src, out / "a.cim")
    before = sorted(os.listdir(out))
    with pytest.raises(CimFileExistsError):
        build_from_directory(src, out / "a.cim")
    with pytest.raises(CimInvalidArgumentError):
        build_from_directory(src, out / "b.cim", parent=tmp_path / "a.cim")
    with pytest.raises(FileNotFoundError):
        build_from_directory(tmp_path / "missing", out / "c.cim")
    assert sorted(os.listdir(out)) == before


def test_output_directory_inside_the_source_is_not_stored(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    (tmp_path / "out").mkdir()
    report = build_from_directory(tmp_path, tmp_path / "out" / "img.cim")
    assert [path.name for path, _ in report.problems] == ["out"]
    with open_image(tmp_path / "out" / "img.cim") as image:
        assert [e.name for e in image.reader.listdir("")] == ["file"]


def test_output_directory_equal_to_the_source(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    report = build_from_directory(tmp_path, tmp_path / "img.cim")
    assert len(report.problems) == 3  # its region files (objectid files come at commit)
    assert all("own file" in why for _, why in report.problems)
    with open_image(tmp_path / "img.cim") as image:
        assert [e.name for e in image.reader.listdir("")] == ["file"]


def test_fork_detects_name_collisions_with_the_parents_upcase_table(tmp_path: Path) -> None:
    # A parent whose stored table does not fold a-z: the fork keeps that table (§5), so
    # "a" and "A" are two entries, and the build must not report them as colliding.
    parent = ImageBuilder(upcase=case_sensitive_upcase())
    parent.add_file(1, "old", b"o")
    parent.build().write(tmp_path, "parent.cim")
    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "A").write_text("upper")
    (layer / "a").write_text("lower")
    report = build_from_directory(layer, tmp_path / "child.cim", parent=tmp_path / "parent.cim")
    assert report.problems == []
    with open_image(tmp_path / "child.cim") as image:
        reader = image.reader
        assert [e.name for e in reader.listdir("")] == ["A", "a", "old"]
        assert reader.open_stream("A").read() == b"upper"
        assert reader.open_stream("a").read() == b"lower"
