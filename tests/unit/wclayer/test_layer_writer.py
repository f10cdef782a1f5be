"""CimLayerWriter: the writer contract, std-file routing, hive processing, all-or-nothing."""

from __future__ import annotations

import fcntl
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from cimsnap.cim import open_image
from cimsnap.hive import read_hive
from cimsnap.wclayer.errors import (
    LayerBusyError,
    LayerCancelledError,
    LayerExistsError,
    LayerFormatError,
    LayerParentError,
    LayerStateError,
)
from cimsnap.wclayer.fileinfo import FileBasicInfo
from cimsnap.wclayer.layer_writer import CimLayerWriter
from cimsnap.wclayer.routing import HIVES
from tests.unit.wclayer.layerkit import (
    BASE_DIRS,
    CONFIG,
    DIR,
    FILE,
    base_hives,
    delta_hive,
    merged_hive,
    small_hive,
    snapshot,
    software_delta_bytes,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "cim-layers").mkdir()
    return tmp_path


def writer(root: Path, name: str, *parents: str, **kw: object) -> CimLayerWriter:
    return CimLayerWriter(
        root / name,
        [root / p for p in parents],
        root / "cim-layers" / f"{name}.cim",
        [root / "cim-layers" / f"{p}.cim" for p in parents],
        **kw,  # type: ignore[arg-type]
    )


def add_file(w: CimLayerWriter, name: str, data: bytes, info: FileBasicInfo = FILE) -> None:
    w.add(name, info, len(data), None, b"", b"")
    if data:
        w.write(data)


def add_dirs(w: CimLayerWriter, *names: str) -> None:
    for name in names:
        w.add(name, DIR, 0, None, b"", b"")


def write_base(w: CimLayerWriter, hives: dict[str, bytes] | None = None) -> None:
    add_dirs(w, *BASE_DIRS)
    for config, data in (hives or base_hives()).items():
        add_file(w, f"{CONFIG}\\{config}", data)


def make_base(root: Path, name: str = "1") -> dict[str, bytes]:
    hives = base_hives()
    with writer(root, name) as w:
        write_base(w, hives)
        add_file(w, "Files\\a.txt", b"base a")
        add_dirs(w, "Files\\d")
        add_file(w, "Files\\d\\x", b"x")
    return hives


def data_of(root: Path, name: str, path: str, stream: str | None = None) -> bytes:
    with open_image(root / "cim-layers" / f"{name}.cim") as image:
        return image.reader.open_stream(path, stream).read()


# --- base layers -------------------------------------------------------------------------


def test_base_layer_hives_links_and_layout(root: Path) -> None:
    hives = make_base(root)
    layer = root / "1"
    assert (layer / "layout").read_bytes() == b"vhd-with-hives\n"
    for hive in HIVES:
        config = layer / "Files/Windows/System32/config" / hive.config
        assert (layer / "Hives" / hive.base).stat().st_ino == config.stat().st_ino
    with open_image(root / "cim-layers" / "1.cim") as image:
        r = image.reader
        hives_dir = r.stat("Hives")
        assert hives_dir.is_directory and hives_dir.last_write_time == 0
        for hive in HIVES:
            base = r.lookup(f"Hives\\{hive.base}")
            assert base.file_id == r.lookup(f"{CONFIG}\\{hive.config}").file_id
            assert r.open_stream(f"Hives\\{hive.base}").read() == hives[hive.config]
        layout = r.stat("layout")
        assert r.open_stream("layout").read() == b"vhd-with-hives\n"
        assert (layout.attributes, layout.creation_time, layout.last_write_time) == (0, 0, 0)
        # The std files are re-added with their tar metadata.
        system = r.stat(f"{CONFIG}\\SYSTEM")
        assert (system.last_write_time, system.change_time, int(system.attributes)) == (7, 8, 0x20)


def test_base_layer_missing_hive_fails_and_leaves_nothing(root: Path) -> None:
    before = snapshot(root)
    hives = base_hives()
    del hives["SAM"]
    w = writer(root, "1")
    write_base(w, hives)
    with pytest.raises(LayerFormatError, match="SAM"):
        w.close()
    assert snapshot(root) == before


def test_base_layer_refuses_deltas_and_whiteouts(root: Path) -> None:
    w = writer(root, "1")
    add_dirs(w, "Hives")
    with pytest.raises(LayerFormatError):
        add_file(w, "Hives\\System_Delta", delta_hive("x"))
    w.abort()
    w = writer(root, "1")
    add_dirs(w, "Files")
    with pytest.raises(LayerFormatError):
        w.remove("Files\\gone")
    w.abort()
    assert sorted(os.listdir(root)) == ["cim-layers"]
    assert os.listdir(root / "cim-layers") == []


def test_case_insensitive_hive_names_and_duplicates(root: Path) -> None:
    hives = base_hives()
    w = writer(root, "1")
    add_dirs(
        w, "files", "files\\windows", "files\\windows\\SYSTEM32", "files\\windows\\SYSTEM32\\Config"
    )
    for config, data in hives.items():
        add_file(w, f"files\\windows\\SYSTEM32\\Config\\{config.lower()}", data)
    with pytest.raises(LayerFormatError, match="twice"):
        add_file(w, "Files\\Windows\\System32\\config\\SYSTEM", hives["SYSTEM"])
    w.abort()
    with writer(root, "1") as w:
        add_dirs(
            w,
            "files",
            "files\\windows",
            "files\\windows\\SYSTEM32",
            "files\\windows\\SYSTEM32\\Config",
        )
        for config, data in hives.items():
            add_file(w, f"files\\windows\\SYSTEM32\\Config\\{config.lower()}", data)
    assert (root / "1/Hives/DEFAULTUSER_BASE").read_bytes() == hives["DEFAULT"]
    assert data_of(root, "1", "Hives\\SYSTEM_BASE") == hives["SYSTEM"]


# --- non-base layers: delta merges --------------------------------------------------------


def test_delta_layer_merges_with_parent_base(root: Path) -> None:
    hives = make_base(root)
    software_delta = software_delta_bytes()
    system_delta = delta_hive("Layer2")
    with writer(root, "2", "1") as w:
        add_dirs(w, "Files", "Hives")
        add_file(w, "Hives\\Software_Delta", software_delta)
        add_file(w, "Hives\\system_delta", system_delta)
        add_file(w, "Files\\b.txt", b"layer 2")
    expected_software = merged_hive(hives["SOFTWARE"], software_delta)
    expected_system = merged_hive(hives["SYSTEM"], system_delta)
    assert data_of(root, "2", "Hives\\SOFTWARE_BASE") == expected_software
    assert data_of(root, "2", "Hives\\SYSTEM_BASE") == expected_system
    assert (root / "2/Hives/SOFTWARE_BASE").read_bytes() == expected_software
    assert data_of(root, "2", "Hives\\Software_Delta") == software_delta
    # Hives without a delta are inherited through the fork; parent content survives.
    assert data_of(root, "2", "Hives\\SAM_BASE") == hives["SAM"]
    assert data_of(root, "2", "Files\\a.txt") == b"base a"
    assert not (root / "2/Hives/SAM_BASE").exists()
    assert not (root / "2/layout").exists()
    merged = read_hive(expected_system).root
    assert merged.find("Layer2") is not None and merged.find("SYSTEM") is None


def test_delta_base_is_searched_up_the_parent_chain(root: Path) -> None:
    hives = make_base(root)
    with writer(root, "2", "1") as w:  # no SYSTEM delta: no host Hives\SYSTEM_BASE in 2
        add_file(w, "Files\\b.txt", b"2")
    delta = delta_hive("Layer3")
    with writer(root, "3", "2", "1") as w:
        add_dirs(w, "Hives")
        add_file(w, "Hives\\SYSTEM_DELTA", delta)
    expected = merged_hive(hives["SYSTEM"], delta)
    assert data_of(root, "3", "Hives\\SYSTEM_BASE") == expected


def test_delta_without_any_parent_base_is_a_parent_error(root: Path) -> None:
    make_base(root)
    for path in (root / "1/Hives").iterdir():
        if path.name.startswith("SAM"):
            path.unlink()
    before = snapshot(root)
    w = writer(root, "2", "1")
    add_file(w, "Hives\\Sam_Delta", delta_hive("x"))
    with pytest.raises(LayerParentError, match="SAM_BASE"):
        w.close()
    assert snapshot(root) == before


def test_bad_delta_is_a_format_error_and_leaves_nothing(root: Path) -> None:
    make_base(root)
    before = snapshot(root)
    w = writer(root, "2", "1")
    add_file(w, "Hives\\System_Delta", b"regf" + bytes(100))
    with pytest.raises(LayerFormatError, match="System_Delta"):
        w.close()
    assert snapshot(root) == before


# --- parents and existing targets ---------------------------------------------------------


def test_parent_cim_in_another_directory(root: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(LayerParentError):
        CimLayerWriter(root / "2", [root / "1"], root / "cim-layers/2.cim", [other / "1.cim"])
    with pytest.raises(LayerParentError):
        writer(root, "2", "missing")
    with pytest.raises(LayerParentError):
        CimLayerWriter(root / "2", [root / "1"], root / "cim-layers/2.cim", [])
    assert sorted(os.listdir(root)) == ["cim-layers", "elsewhere"]


def test_existing_cim_and_existing_host_files(root: Path) -> None:
    make_base(root)
    before = snapshot(root)
    with pytest.raises(LayerExistsError):
        writer(root, "1")
    assert snapshot(root) == before
    # A stray host hive in the new layer's directory is never overwritten.
    (root / "2/Hives").mkdir(parents=True)
    (root / "2/Hives/System_Delta").write_bytes(b"old")
    before = snapshot(root)
    w = writer(root, "2", "1")
    with pytest.raises(LayerExistsError):
        add_file(w, "Hives\\System_Delta", delta_hive("x"))
    w.abort()
    assert snapshot(root) == before


# --- the writer contract ------------------------------------------------------------------


def test_alternate_streams_both_forms_with_data(root: Path) -> None:
    with writer(root, "1") as w:
        write_base(w)
        add_file(w, "Files\\a.txt", b"main data")
        w.add_alternate_stream("Files\\a.txt:one:$DATA", 5)
        w.write(b"first")
        w.add_alternate_stream("Files\\a.txt:two", 6000)
        w.write(b"s" * 1000)
        w.write(b"t" * 5000)
        add_dirs(w, "Files\\dir")
        w.add_alternate_stream("Files\\dir:zone", 3)
        w.write(b"dir")
    assert data_of(root, "1", "Files\\a.txt") == b"main data"
    assert data_of(root, "1", "Files\\a.txt", "one") == b"first"
    assert data_of(root, "1", "Files\\a.txt", "two") == b"s" * 1000 + b"t" * 5000
    assert data_of(root, "1", "Files\\dir", "zone") == b"dir"


@pytest.mark.parametrize(
    "name",
    ["Files\\a.txt:s:$INDEX_ALLOCATION", "Files\\a.txt::$DATA", "Files\\a.txt", "Files\\a:b:c:d"],
)
def test_bad_stream_names(root: Path, name: str) -> None:
    w = writer(root, "1")
    add_dirs(w, "Files")
    add_file(w, "Files\\a.txt", b"x")
    with pytest.raises(LayerFormatError):
        w.add_alternate_stream(name, 1)
    w.abort()


def test_stream_on_std_file_or_missing_file(root: Path) -> None:
    w = writer(root, "1")
    write_base(w)
    with pytest.raises(LayerFormatError):
        w.add_alternate_stream(f"{CONFIG}\\SYSTEM:s", 1)
    w.abort()
    w = writer(root, "1")
    add_dirs(w, "Files")
    with pytest.raises(LayerFormatError):
        w.add_alternate_stream("Files\\nothing:s", 1)
    w.abort()


def test_write_out_of_order(root: Path) -> None:
    make_base(root)
    for step in ("link", "remove", "dir", "none"):
        w = writer(root, "2", "1")
        if step == "link":
            w.add_link("Files\\b", "Files\\a.txt")
        elif step == "remove":
            w.remove("Files\\a.txt")
        elif step == "dir":
            add_dirs(w, "Files\\new")
        with pytest.raises(LayerStateError):
            w.write(b"x")
        with pytest.raises(LayerStateError):  # failed closed: nothing else is accepted
            add_dirs(w, "Files\\other")
        w.abort()
    assert not (root / "cim-layers/2.cim").exists()


def test_too_much_and_too_little_data(root: Path) -> None:
    w = writer(root, "1")
    add_dirs(w, "Files")
    w.add("Files\\a", FILE, 3, None, b"", b"")
    with pytest.raises(LayerFormatError):
        w.write(b"four")
    w.abort()
    w = writer(root, "1")
    add_dirs(w, "Files")
    w.add("Files\\a", FILE, 3, None, b"", b"")
    w.write(b"ab")
    with pytest.raises(LayerFormatError, match="1 bytes missing"):
        add_dirs(w, "Files\\b")
    w.abort()
    w = writer(root, "1")
    add_dirs(w, *BASE_DIRS)
    w.add(f"{CONFIG}\\SYSTEM", FILE, 10, None, b"", b"")
    w.write(b"12345")
    with pytest.raises(LayerFormatError):
        w.close()
    assert sorted(os.listdir(root)) == ["cim-layers"]


def test_directory_with_data_is_refused(root: Path) -> None:
    w = writer(root, "1")
    with pytest.raises(LayerFormatError):
        w.add("Files", DIR, 10, None, b"", b"")
    w.abort()


def test_attribute_masking(root: Path) -> None:
    normal_compressed = FileBasicInfo(
        last_write_time=9, file_attributes=0x80 | 0x800 | 0x2000 | 0x27
    )
    with writer(root, "1") as w:
        write_base(w)
        add_file(w, "Files\\m", b"m", normal_compressed)
        # REPARSE_POINT without reparse data is dropped, not refused.
        add_file(w, "Files\\r", b"r", FileBasicInfo(file_attributes=0x400 | 0x1))
    with open_image(root / "cim-layers/1.cim") as image:
        assert int(image.reader.stat("Files\\m").attributes) == 0x27
        assert int(image.reader.stat("Files\\r").attributes) == 0x1


def test_links(root: Path) -> None:
    make_base(root)
    with writer(root, "2", "1") as w:
        w.add_link("Files\\a-link", "Files\\a.txt")  # inherited target
        add_file(w, "Files\\new", b"new")
        w.add_link("Files\\new-link", "Files\\new")
        w.add_link("Files\\sys-link", f"{CONFIG}\\SYSTEM")  # std target, inherited: deferred
    with open_image(root / "cim-layers/2.cim") as image:
        r = image.reader
        assert r.lookup("Files\\a-link").file_id == r.lookup("Files\\a.txt").file_id
        assert r.lookup("Files\\new-link").file_id == r.lookup("Files\\new").file_id
        assert r.lookup("Files\\sys-link").file_id == r.lookup(f"{CONFIG}\\SYSTEM").file_id
    for name, target in (
        ("Files\\x", "Files\\missing"),
        ("Files\\x", "Files\\d"),  # a directory
        ("Files\\x", "Files\\..\\Files\\a.txt"),
        (f"{CONFIG}\\SAM", "Files\\a.txt"),  # named like a std file
        ("Files\\x", "Hives\\SYSTEM_DELTA"),  # std target that does not exist
    ):
        w = writer(root, "3", "2")
        with pytest.raises(LayerFormatError):
            w.add_link(name, target)
        w.abort()


def test_base_layer_link_to_std_file_is_deferred(root: Path) -> None:
    with writer(root, "1") as w:
        write_base(w)
        w.add_link("Files\\system-copy", f"{CONFIG}\\SYSTEM")
    with open_image(root / "cim-layers/1.cim") as image:
        r = image.reader
        assert r.lookup("Files\\system-copy").file_id == r.lookup("Hives\\SYSTEM_BASE").file_id


@pytest.mark.parametrize(
    "name", ["", "Files", "files", "HIVES", "Files\\..", "..\\x", "Files\\a:s", f"{CONFIG}\\SYSTEM"]
)
def test_refused_removals(root: Path, name: str) -> None:
    make_base(root)
    w = writer(root, "2", "1")
    with pytest.raises(LayerFormatError):
        w.remove(name)
    w.abort()


def test_removals_keep_directory_times(root: Path) -> None:
    make_base(root)
    with open_image(root / "cim-layers/1.cim") as image:
        before = image.reader.stat("Files\\d")
    with writer(root, "2", "1") as w:
        w.remove("Files\\d\\x")
        w.remove("Files\\d\\never-existed")
        w.remove("Files\\nowhere\\deeper")
        add_file(w, "Files\\late", b"1")
        w.remove("Files\\late")  # added earlier in the same layer: deleted
    with open_image(root / "cim-layers/2.cim") as image:
        r = image.reader
        after = r.stat("Files\\d")
        assert [e.name for e in r.listdir("Files\\d")] == []
        assert "late" not in [e.name for e in r.listdir("Files")]
    assert (after.last_write_time, after.change_time, after.creation_time) == (
        before.last_write_time,
        before.change_time,
        before.creation_time,
    )


def test_abort_mid_layer_leaves_the_directory_as_it_was(root: Path) -> None:
    make_base(root)
    (root / "2").mkdir()
    (root / "2" / "keep").write_text("pre-existing")
    before = snapshot(root)
    w = writer(root, "2", "1")
    add_dirs(w, "Hives", "UtilityVM", "UtilityVM\\Files")
    add_file(w, "Hives\\Software_Delta", software_delta_bytes())
    add_file(w, "Files\\big", os.urandom(1 << 20))
    w.abort()
    w.abort()
    assert snapshot(root) == before


# --- utility VM ---------------------------------------------------------------------------


def add_uvm(w: CimLayerWriter, build: str | None) -> None:
    add_dirs(w, "UtilityVM", "UtilityVM\\Files")
    if build is not None:
        add_dirs(w, *(f"UtilityVM\\{d}" for d in BASE_DIRS[1:]))
        add_file(w, f"UtilityVM\\{CONFIG}\\SOFTWARE", small_hive("SOFTWARE", build))


@pytest.mark.parametrize("build", ["17763", "20348", "26100"])
def test_utility_vm_build_file(root: Path, build: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING), writer(root, "1") as w:
        write_base(w)
        add_uvm(w, build)
    assert (root / "1/uvmbuildversion").read_bytes() == build.encode()
    assert w.uvm_build == int(build)
    assert ("only Windows can do" in caplog.text) == (int(build) > 20348)
    # The UVM hive is a std file: on the host, and re-added to the CIM.
    assert data_of(root, "1", f"UtilityVM\\{CONFIG}\\SOFTWARE") == small_hive("SOFTWARE", build)


def test_utility_vm_without_software_hive_is_skipped(root: Path) -> None:
    with writer(root, "1") as w:
        write_base(w)
        add_uvm(w, None)
    assert w.has_utility_vm and w.uvm_build is None
    assert not (root / "1/uvmbuildversion").exists()


def test_utility_vm_bad_build_fails(root: Path) -> None:
    before = snapshot(root)
    w = writer(root, "1")
    write_base(w)
    add_uvm(w, "not-a-number")
    with pytest.raises(LayerFormatError):
        w.close()
    assert snapshot(root) == before


def test_uvm_paths_are_case_sensitive(root: Path) -> None:
    with writer(root, "1") as w:
        write_base(w)
        add_dirs(w, "utilityvm", "utilityvm\\Files")
        add_dirs(w, *(f"utilityvm\\{d}" for d in BASE_DIRS[1:]))
        add_file(w, f"utilityvm\\{CONFIG}\\SOFTWARE", b"not a std file")
    assert not w.has_utility_vm
    assert not (root / "1/utilityvm").exists()
    assert data_of(root, "1", f"utilityvm\\{CONFIG}\\SOFTWARE") == b"not a std file"


# --- the directory lock -------------------------------------------------------------------


def test_busy_directory(root: Path) -> None:
    fd = os.open(root / "cim-layers", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(LayerBusyError):
            writer(root, "1", busy_timeout=0.05)
        cancelled = threading.Event()
        cancelled.set()
        with pytest.raises(LayerCancelledError):
            writer(root, "1", busy_timeout=5, cancelled=cancelled)
        threading.Timer(0.1, fcntl.flock, (fd, fcntl.LOCK_UN)).start()
        started = time.monotonic()
        with writer(root, "1", busy_timeout=10) as w:
            write_base(w)
        assert time.monotonic() - started >= 0.05
    finally:
        os.close(fd)
    assert (root / "cim-layers/1.cim").exists()
    assert sorted(os.listdir(root)) == ["1", "cim-layers"]


def test_interrupted_after_the_commit_leaves_nothing(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault that cannot be produced otherwise: an interrupt between the CIM commit and
    # the end of close. The committed image must go with the host files.
    before = snapshot(root)
    w = writer(root, "1")
    write_base(w)

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(w._host, "forget", interrupted)
    with pytest.raises(KeyboardInterrupt):
        w.close()
    assert snapshot(root) == before
