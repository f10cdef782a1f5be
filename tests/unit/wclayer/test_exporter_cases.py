"""export_layer on hand-built forks: what is emitted for each kind of change, and what is
refused. Each case is checked by importing the tar over the parent again and comparing."""

from __future__ import annotations

import io
import struct
import tarfile
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cimsnap.cim import CimWriter, FileMetadata
from cimsnap.devtools.layergen import SECURITY_DESCRIPTORS, ea_buffer, reparse_buffer
from cimsnap.wclayer.errors import LayerFormatError, LayerParentError
from cimsnap.wclayer.exporter import ExportStats, export_layer
from tests.unit.devtools.tarreplay import model_differences
from tests.unit.wclayer.cimreplay import import_plain, read_cim_model

SD = SECURITY_DESCRIPTORS[0][0]
T = 132_500_000_000_000_000


def _dir(t: int = T, attributes: int = 0x10, **kw: object) -> FileMetadata:
    return FileMetadata(
        attributes=attributes,
        creation_time=t,
        last_write_time=t,
        change_time=t,
        last_access_time=t,
        security_descriptor=SD,
        **kw,
    )  # type: ignore[arg-type]


def _file(size: int, t: int = T, **kw: object) -> FileMetadata:
    return FileMetadata(
        attributes=0x20,
        size=size,
        creation_time=t,
        last_write_time=t + 1,
        change_time=t + 2,
        last_access_time=t + 3,
        security_descriptor=SD,
        **kw,
    )  # type: ignore[arg-type]


def _put(w: CimWriter, path: str, data: bytes, **kw: object) -> None:
    with w.create_file(path, _file(len(data), **kw)) as s:
        if data:
            s.write(data)


Build = Callable[[CimWriter], None]


def _base(w: CimWriter) -> None:
    w.create_file("Files", _dir())
    w.create_file("Files\\d", _dir())
    w.create_file("Files\\d\\sub", _dir())
    _put(w, "Files\\d\\sub\\leaf.txt", b"leaf")
    _put(w, "Files\\d\\a.txt", b"alpha")
    w.create_hard_link("Files\\d\\a-link.txt", "Files\\d\\a.txt")
    _put(w, "Files\\b.txt", b"bravo" * 1000)
    w.create_file("Files\\e", _dir())
    _put(w, "Files\\f", b"was a file")
    _put(w, "Files\\Case.txt", b"case")
    _put(w, "Files\\moved.txt", b"moved")


def _chain(tmp_path: Path, child: Build, base: Build = _base) -> tuple[bytes, ExportStats, Path]:
    with CimWriter(tmp_path, "p.cim", region_set_id=uuid.UUID(int=1)) as w:
        base(w)
        w.commit()
    with CimWriter(tmp_path, "c.cim", parent="p.cim", region_set_id=uuid.UUID(int=2)) as w:
        child(w)
        w.commit()
    out = io.BytesIO()
    stats = export_layer(tmp_path / "c.cim", tmp_path / "p.cim", out)
    data = out.getvalue()
    again = import_plain(io.BytesIO(data), tmp_path, "again.cim", "p.cim")
    assert model_differences(read_cim_model(tmp_path / "c.cim"), read_cim_model(again)) == []
    assert stats.tar_bytes == len(data) and stats.entries == len(_members(data))
    return data, stats, tmp_path


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.getmembers()


def _names(data: bytes) -> list[str]:
    return [m.name for m in _members(data)]


def test_identical_fork_exports_an_empty_tar(tmp_path: Path) -> None:
    data, stats, _ = _chain(tmp_path, lambda w: None)
    assert data == bytes(1024) and stats.entries == 0


def test_new_file_in_an_old_directory_does_not_re_emit_the_directory(tmp_path: Path) -> None:
    data, _, _ = _chain(tmp_path, lambda w: _put(w, "Files\\d\\new.txt", b"new"))
    assert _names(data) == ["Files/d/new.txt"]


def test_directory_metadata_change_re_emits_only_the_directory(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        w.create_file("Files\\d", _dir(T + 99, attributes=0x12))

    data, stats, _ = _chain(tmp_path, child)
    (m,) = _members(data)
    assert m.name == "Files/d" and m.isdir() and m.pax_headers["MSWINDOWS.fileattr"] == "18"
    assert stats.directories == 1


def test_deletions_become_whiteouts_before_the_directory_entries(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        w.delete_path("Files\\d\\sub")
        w.delete_path("Files\\b.txt")
        _put(w, "Files\\a-new.txt", b"x")

    data, stats, _ = _chain(tmp_path, child)
    assert _names(data) == ["Files/.wh.b.txt", "Files/a-new.txt", "Files/d/.wh.sub"]
    assert stats.whiteouts == 2


def test_replaced_directory_is_whited_out_and_rebuilt(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        w.delete_path("Files\\d")
        w.create_file("Files\\d", _dir())
        _put(w, "Files\\d\\only.txt", b"only")

    data, _, _ = _chain(tmp_path, child)
    assert _names(data) == ["Files/.wh.d", "Files/d", "Files/d/only.txt"]


def test_kind_changes_and_case_changes(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        w.delete_path("Files\\e")
        _put(w, "Files\\e", b"dir became file")
        w.delete_path("Files\\f")
        w.create_file("Files\\f", _dir())
        w.delete_path("Files\\Case.txt")
        _put(w, "Files\\CASE.TXT", b"case")

    data, _, _ = _chain(tmp_path, child)
    names = _names(data)
    assert "Files/.wh.e" in names and "Files/.wh.Case.txt" in names
    assert names.index("Files/.wh.Case.txt") < names.index("Files/CASE.TXT")
    assert "Files/.wh.f" not in names  # a directory over a file needs no whiteout


def test_new_name_of_an_unchanged_file_links_to_a_kept_name(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        w.create_file("Files\\n", _dir())
        w.create_hard_link("Files\\n\\third.txt", "Files\\d\\a.txt")

    data, stats, _ = _chain(tmp_path, child)
    members = _members(data)
    assert [m.name for m in members] == ["Files/n", "Files/n/third.txt"]
    assert members[1].islnk() and members[1].linkname in ("Files/d/a.txt", "Files/d/a-link.txt")
    assert stats.links == 1 and stats.data_bytes == 0


def test_file_whose_every_old_name_is_gone_is_emitted_whole(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        w.create_hard_link("Files\\renamed.txt", "Files\\moved.txt")
        w.delete_path("Files\\moved.txt")

    data, _, _ = _chain(tmp_path, child)
    members = {m.name: m for m in _members(data)}
    assert members["Files/renamed.txt"].isreg() and members["Files/renamed.txt"].size == 5
    assert "Files/.wh.moved.txt" in members


def test_stream_added_in_place_re_emits_every_name_of_the_file(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        with w.create_alternate_stream("Files\\d\\a.txt:extra", 3) as s:
            s.write(b"ads")

    data, _, _ = _chain(tmp_path, child)
    members = _members(data)
    assert [m.name for m in members] == [
        "Files/d/a-link.txt",
        "Files/d/a-link.txt:extra:$DATA",
        "Files/d/a.txt",
    ]
    assert members[2].islnk() and members[2].linkname == "Files/d/a-link.txt"


def test_directory_streams_and_reparse_points(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        with w.create_alternate_stream("Files\\e:note", 4) as s:
            s.write(b"note")
        w.create_file(
            "Files\\j", _dir(attributes=0x410, reparse=reparse_buffer("C:\\x", mountpoint=True))
        )
        w.create_file(
            "Files\\s",
            FileMetadata(
                attributes=0x420,
                reparse=reparse_buffer("..\\b.txt", mountpoint=False),
                security_descriptor=SD,
            ),
        )

    data, _, _ = _chain(tmp_path, child)
    members = {m.name: m for m in _members(data)}
    assert members["Files/e"].isdir() and "Files/e:note:$DATA" in members
    assert members["Files/j"].issym() and members["Files/j"].linkname == "C:\\x"
    assert members["Files/j"].pax_headers["MSWINDOWS.mountpoint"] == "1"
    assert (
        members["Files/s"].issym() and "MSWINDOWS.mountpoint" not in members["Files/s"].pax_headers
    )


def test_times_before_1970_and_eas_round_trip(tmp_path: Path) -> None:
    def child(w: CimWriter) -> None:
        _put(w, "Files\\old.txt", b"old", t=0, ea=ea_buffer({"Z": b"1", "A": b"22", "ÜBER": b"3"}))

    data, _, _ = _chain(tmp_path, child)
    (m,) = _members(data)
    assert m.pax_headers["LIBARCHIVE.creationtime"] == "-11644473600"
    assert list(k for k in m.pax_headers if k.startswith("MSWINDOWS.xattr.")) == [
        "MSWINDOWS.xattr.A",
        "MSWINDOWS.xattr.Z",
        "MSWINDOWS.xattr.ÜBER",
    ]


def test_long_and_unicode_names_use_pax_path(tmp_path: Path) -> None:
    long_name = "n" * 200

    def child(w: CimWriter) -> None:
        w.create_file(f"Files\\{long_name}", _dir())
        _put(w, f"Files\\{long_name}\\日本語😀.txt", b"u")
        w.create_hard_link(f"Files\\{long_name}\\ünï.txt", f"Files\\{long_name}\\日本語😀.txt")

    data, _, _ = _chain(tmp_path, child)
    members = _members(data)
    assert members[1].name == f"Files/{long_name}/ünï.txt" and members[1].isreg()
    assert members[2].islnk() and members[2].linkname == members[1].name


def test_base_layer_omits_regenerated_hives_and_layout(tmp_path: Path) -> None:
    with CimWriter(tmp_path, "base.cim", region_set_id=uuid.UUID(int=3)) as w:
        w.create_file("Files", _dir())
        w.create_file("Files\\Windows", _dir())
        _put(w, "Files\\Windows\\SYSTEM", b"regf...")
        w.create_file("Hives", _dir())
        w.create_hard_link("Hives\\SYSTEM_BASE", "Files\\Windows\\SYSTEM")
        _put(w, "layout", b"vhd-with-hives\n")
        _put(w, "Files\\layout", b"an ordinary file")
        w.commit()
    out = io.BytesIO()
    export_layer(tmp_path / "base.cim", None, out)
    assert _names(out.getvalue()) == [
        "Files",
        "Files/layout",
        "Files/Windows",
        "Files/Windows/SYSTEM",
    ]


def test_delta_layer_never_emits_hive_bases(tmp_path: Path) -> None:
    def base(w: CimWriter) -> None:
        w.create_file("Hives", _dir())
        _put(w, "Hives\\SYSTEM_BASE", b"base")
        _put(w, "Hives\\Software_BASE", b"base")

    def child(w: CimWriter) -> None:
        _put(w, "Hives\\SYSTEM_BASE", b"merged")
        w.delete_path("Hives\\Software_BASE")
        _put(w, "Hives\\System_Delta", b"delta")

    with CimWriter(tmp_path, "p.cim", region_set_id=uuid.UUID(int=1)) as w:
        base(w)
        w.commit()
    with CimWriter(tmp_path, "c.cim", parent="p.cim", region_set_id=uuid.UUID(int=2)) as w:
        child(w)
        w.commit()
    out = io.BytesIO()
    export_layer(tmp_path / "c.cim", tmp_path / "p.cim", out)
    assert _names(out.getvalue()) == ["Hives/System_Delta"]


@pytest.mark.parametrize(
    ("child", "message"),
    [
        (
            lambda w: w.create_file(
                "Files\\wof",
                FileMetadata(
                    attributes=0x420, reparse=struct.pack("<IHH", 0x80000017, 8, 0) + bytes(8)
                ),
            ),
            "reparse tag 0x80000017",
        ),
        (
            lambda w: _put(w, "Files\\ea", b"", ea=struct.pack("<IBBH", 0, 0x80, 1, 1) + b"N\0v\0"),
            "flags 0x80",
        ),
        (lambda w: _put(w, "Files\\.wh.x", b""), "whiteout"),
        (
            lambda w: _put(
                w, "Files\\ea2", b"", ea=struct.pack("<IBBH", 0, 0, 1, 1) + b"\xff\0v\0"
            ),
            "cannot be a PAX key",
        ),
    ],
)
def test_refusals_name_the_entry(tmp_path: Path, child: Build, message: str) -> None:
    with CimWriter(tmp_path, "p.cim", region_set_id=uuid.UUID(int=1)) as w:
        _base(w)
        w.commit()
    with CimWriter(tmp_path, "c.cim", parent="p.cim", region_set_id=uuid.UUID(int=2)) as w:
        child(w)
        w.commit()
    with pytest.raises(LayerFormatError, match=message) as info:
        export_layer(tmp_path / "c.cim", tmp_path / "p.cim", io.BytesIO())
    assert info.value.entry is not None and info.value.entry.startswith("Files\\")


def test_parent_problems(tmp_path: Path) -> None:
    for name, n in (("p.cim", 1), ("other.cim", 4)):
        with CimWriter(tmp_path, name, region_set_id=uuid.UUID(int=n)) as w:
            _base(w)
            w.commit()
    with CimWriter(tmp_path, "c.cim", parent="p.cim", region_set_id=uuid.UUID(int=2)) as w:
        w.commit()
    with pytest.raises(LayerParentError, match="not a fork"):
        export_layer(tmp_path / "c.cim", tmp_path / "other.cim", io.BytesIO())
    with pytest.raises(LayerParentError, match="not a fork"):
        export_layer(tmp_path / "c.cim", tmp_path / "c.cim", io.BytesIO())
    with pytest.raises(LayerParentError, match=r"missing\.cim"):
        export_layer(tmp_path / "c.cim", tmp_path / "missing.cim", io.BytesIO())
    (tmp_path / "junk.cim").write_bytes(b"not a cim")
    with pytest.raises(LayerFormatError, match=r"junk\.cim"):
        export_layer(tmp_path / "junk.cim", None, io.BytesIO())


def test_link_target_found_when_the_first_parent_name_was_replaced(tmp_path: Path) -> None:
    def base(w: CimWriter) -> None:
        _base(w)
        w.create_file("Files\\z", _dir())
        w.create_hard_link("Files\\z\\other-name.txt", "Files\\d\\a.txt")

    def child(w: CimWriter) -> None:
        _put(w, "Files\\d\\a.txt", b"replaced")  # a new object at the first name
        w.delete_path("Files\\d\\a-link.txt")
        w.create_hard_link("Files\\new-name.txt", "Files\\z\\other-name.txt")

    data, _, _ = _chain(tmp_path, child, base)
    members = {m.name: m for m in _members(data)}
    assert members["Files/new-name.txt"].islnk()
    assert members["Files/new-name.txt"].linkname == "Files/z/other-name.txt"
    assert members["Files/d/a.txt"].isreg() and members["Files/d/a.txt"].size == 8
