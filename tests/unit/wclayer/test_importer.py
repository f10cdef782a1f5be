"""import_layer: real PAX tars in, CIM layers out; hostile tars commit nothing."""

from __future__ import annotations

import base64
import io
import os
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cimsnap.cim import open_image
from cimsnap.hive import Hive, Key, write_hive
from cimsnap.hive import cells as hive_cells
from cimsnap.hive.writer import DEFAULT_SECURITY_DESCRIPTOR
from cimsnap.wclayer import winmeta
from cimsnap.wclayer.compression import open_compressed, open_decompressed
from cimsnap.wclayer.errors import (
    LayerCancelledError,
    LayerExistsError,
    LayerFormatError,
)
from cimsnap.wclayer.importer import import_layer
from tests.unit.wclayer.layerkit import (
    LayerTar,
    base_hives,
    delta_hive,
    filetime,
    merged_hive,
    snapshot,
)

SD = DEFAULT_SECURITY_DESCRIPTOR
RAWSD = base64.b64encode(SD).decode()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "cim-layers").mkdir()
    return tmp_path


def run(root: Path, name: str, data: bytes, *parents: str, **kw: object) -> int:
    return import_layer(
        io.BytesIO(data),
        root / name,
        root / "cim-layers" / f"{name}.cim",
        [root / p for p in parents],
        [root / "cim-layers" / f"{p}.cim" for p in parents],
        **kw,  # type: ignore[arg-type]
    )


def base_tar(hives: dict[str, bytes] | None = None) -> LayerTar:
    return LayerTar().base_layout(hives or base_hives())


def import_base(root: Path, name: str = "1") -> dict[str, bytes]:
    hives = base_hives()
    tar = base_tar(hives).file("Files/a.txt", b"base a").dir("Files/d").file("Files/d/x", b"x")
    run(root, name, tar.bytes())
    return hives


def cim_data(root: Path, name: str, path: str, stream: str | None = None) -> bytes:
    with open_image(root / "cim-layers" / f"{name}.cim") as image:
        return image.reader.open_stream(path, stream).read()


# --- what an import stores ----------------------------------------------------------------


def test_base_layer_import_and_size(root: Path) -> None:
    hives = base_hives()
    body = os.urandom(300_000)
    tar = base_tar(hives)
    tar.file(
        "Files/big.bin",
        body,
        attributes=0x20 | 0x1 | 0x80,
        **{
            "MSWINDOWS.rawsd": RAWSD,
            "MSWINDOWS.xattr.user.one": base64.b64encode(b"v1").decode(),
            "LIBARCHIVE.creationtime": "1500000000",
            "atime": "1600000001",
            "ctime": "1600000002",
        },
    )
    tar.file("Files/big.bin:zone:$DATA", b"[ZoneTransfer]")
    tar.file("Files/big.bin:plain", b"p" * 5000)
    tar.symlink("Files/link", "big.bin")
    tar.symlink(
        "Files/junction", "C:\\Windows", attributes=0x10 | 0x400, **{"MSWINDOWS.mountpoint": "1"}
    )
    tar.link("Files/hard", "Files/big.bin")
    tar.file("Files/contig", b"c" * 10, kind=tarfile.CONTTYPE)
    size = run(root, "1", tar.bytes())
    assert size == sum(len(h) for h in hives.values()) + len(body) + 10
    with open_image(root / "cim-layers/1.cim") as image:
        r = image.reader
        record = r.lookup("Files\\big.bin")
        info = r.stat("Files\\big.bin")
        assert int(info.attributes) == 0x21  # NORMAL dropped
        assert info.last_write_time == filetime(1_600_000_000)
        assert info.creation_time == filetime(1_500_000_000)
        assert (info.last_access_time, info.change_time) == (
            filetime(1_600_000_001),
            filetime(1_600_000_002),
        )
        assert r.security_descriptor(record) == SD
        assert r.extended_attributes(record) == winmeta.ea_buffer(
            {"MSWINDOWS.xattr.user.one": base64.b64encode(b"v1").decode()}
        )
        assert r.open_stream("Files\\big.bin").read() == body
        assert r.open_stream("Files\\big.bin", "zone").read() == b"[ZoneTransfer]"
        assert r.open_stream("Files\\big.bin", "plain").read() == b"p" * 5000
        assert r.lookup("Files\\hard").file_id == record.file_id
        assert r.reparse_data(r.lookup("Files\\link")) == winmeta.reparse_buffer(
            "big.bin", mountpoint=False
        )
        junction = r.stat("Files\\junction")
        assert junction.is_directory and int(junction.attributes) == 0x410
        assert r.open_stream("Files\\contig").read() == b"c" * 10
        assert r.open_stream("layout").read() == b"vhd-with-hives\n"


def test_global_header_and_unknown_pax_keys_are_ignored(root: Path) -> None:
    tar = LayerTar(global_pax={"comment": "made by a test"}).base_layout(base_hives())
    tar.file("Files/x", b"x", **{"VENDOR.unknown": "whatever"})
    run(root, "1", tar.bytes())
    with open_image(root / "cim-layers/1.cim") as image:
        names = {e.name for e in image.reader.listdir("")}
    assert names == {"Files", "Hives", "layout"}


def test_delta_layer_hives_and_whiteouts(root: Path) -> None:
    hives = import_base(root)
    delta = delta_hive("Layer2")
    tar = LayerTar().dir("Files").dir("Hives")
    tar.file("Hives/System_Delta", delta)
    tar.whiteout("Files/d/.wh.x").whiteout("Files/.wh.never").file("Files/b", b"b")
    tar.whiteout("Files/.wh..wh..opq")
    run(root, "2", tar.bytes(), "1")
    expected = merged_hive(hives["SYSTEM"], delta)
    assert cim_data(root, "2", "Hives\\SYSTEM_BASE") == expected
    with open_image(root / "cim-layers/2.cim") as image:
        assert image.reader.listdir("Files\\d") == []
        assert image.reader.open_stream("Files\\a.txt").read() == b"base a"


def test_three_layer_chain(root: Path) -> None:
    hives = import_base(root)
    d2, d3 = delta_hive("Two"), delta_hive("Three")
    run(
        root,
        "2",
        LayerTar()
        .dir("Files")
        .dir("Hives")
        .file("Hives/Software_Delta", d2)
        .file("Files/a.txt", b"changed in 2")
        .whiteout("Files/.wh.d")
        .dir("Files/two")
        .bytes(),
        "1",
    )
    run(
        root,
        "3",
        LayerTar()
        .dir("Files")
        .dir("Hives")
        .file("Hives/SOFTWARE_DELTA", d3)
        .file("Files/two/three", b"3")
        .link("Files/a-link", "Files/a.txt")
        .bytes(),
        "2",
        "1",
    )
    sw2 = merged_hive(hives["SOFTWARE"], d2)
    sw3 = merged_hive(sw2, d3)
    assert cim_data(root, "2", "Hives\\SOFTWARE_BASE") == sw2
    assert cim_data(root, "3", "Hives\\SOFTWARE_BASE") == sw3
    assert cim_data(root, "1", "Hives\\SOFTWARE_BASE") == hives["SOFTWARE"]
    with open_image(root / "cim-layers/3.cim") as image:
        r = image.reader
        assert {e.name for e in r.listdir("Files")} == {"Windows", "a.txt", "two", "a-link"}
        assert r.open_stream("Files\\a-link").read() == b"changed in 2"
        assert r.open_stream("Files\\two\\three").read() == b"3"
    with open_image(root / "cim-layers/1.cim") as image:
        assert image.reader.open_stream("Files\\a.txt").read() == b"base a"


# --- hostile tars -------------------------------------------------------------------------

Build = Callable[[LayerTar], LayerTar]

#: (id, is the layer a delta over a base, tar builder, the offending entry's name)
HOSTILE: list[tuple[str, bool, Build, str]] = [
    ("dotdot", True, lambda t: t.file("Files/../../evil", b"x"), "Files/../../evil"),
    ("absolute", True, lambda t: t.file("/Files/x", b"x"), "/Files/x"),
    ("drive", True, lambda t: t.file("C:/Files/x", b"x"), "C:/Files/x"),
    ("backslash", True, lambda t: t.file("Files\\x", b"x"), "Files\\x"),
    ("unc", True, lambda t: t.file("\\\\?\\C:\\x", b"x"), "\\\\?\\C:\\x"),
    ("reserved", True, lambda t: t.file("Files/aux.txt", b"x"), "Files/aux.txt"),
    ("trailing-dot", True, lambda t: t.file("Files/x.", b"x"), "Files/x."),
    ("control", True, lambda t: t.file("Files/a\x01b", b"x"), "Files/a\x01b"),
    ("star", True, lambda t: t.file("Files/a*b", b"x"), "Files/a*b"),
    ("root", True, lambda t: t.dir("."), "."),
    ("case-dup", True, lambda t: t.file("Files/Same", b"1").file("Files/same", b"2"), "Files/same"),
    (
        "case-parent",
        True,
        lambda t: t.dir("Files/New").file("Files/NEW/x", b"2"),
        "Files/NEW/x",
    ),
    ("link-missing", True, lambda t: t.link("Files/l", "Files/missing"), "Files/l"),
    ("link-dir", True, lambda t: t.link("Files/l", "Files/d"), "Files/l"),
    ("link-out", True, lambda t: t.link("Files/l", "../outside"), "Files/l"),
    ("link-abs", True, lambda t: t.link("Files/l", "/etc/passwd"), "Files/l"),
    ("wh-files", True, lambda t: t.whiteout(".wh.Files"), ".wh.Files"),
    ("wh-root", True, lambda t: t.whiteout("Files/.wh..."), "Files/.wh..."),
    ("wh-parent", True, lambda t: t.whiteout("Files/d/.wh."), "Files/d/.wh."),
    ("wh-hives", True, lambda t: t.whiteout(".wh.Hives"), ".wh.Hives"),
    ("wh-escape", True, lambda t: t.whiteout("../../.wh.evil"), "../../.wh.evil"),
    ("wh-in-base", False, lambda t: t.whiteout("Files/.wh.x"), "Files/.wh.x"),
    ("chardev", True, lambda t: t.special("Files/dev", tarfile.CHRTYPE), "Files/dev"),
    ("blockdev", True, lambda t: t.special("Files/dev", tarfile.BLKTYPE), "Files/dev"),
    ("fifo", True, lambda t: t.special("Files/fifo", tarfile.FIFOTYPE), "Files/fifo"),
    ("dir-attr-data", True, lambda t: t.file("Files/x", b"data", attributes=0x10), "Files/x"),
    ("file-attr-dir", True, lambda t: t.dir("Files/x", attributes=0x20), "Files/x"),
    ("ads-orphan", True, lambda t: t.file("Files/a.txt:s:$DATA", b"s"), "Files/a.txt:s:$DATA"),
    (
        "ads-type",
        True,
        lambda t: t.file("Files/n", b"1").file("Files/n:s:$EA", b"s"),
        "Files/n:s:$EA",
    ),
    (
        "bad-fileattr",
        True,
        lambda t: t.file("Files/x", b"x", attributes=None, **{"MSWINDOWS.fileattr": "dir"}),
        "Files/x",
    ),
    ("bad-rawsd", True, lambda t: t.file("Files/x", b"x", **{"MSWINDOWS.rawsd": "!!"}), "Files/x"),
    (
        "hive-twice",
        True,
        lambda t: t.file("Hives/System_Delta", delta_hive("a")).file(
            "Hives/SYSTEM_DELTA", delta_hive("b")
        ),
        "Hives/SYSTEM_DELTA",
    ),
    (
        "hive-link",
        True,
        lambda t: t.link("Hives/System_Delta", "Files/a.txt"),
        "Hives/System_Delta",
    ),
    (
        "delta-in-base",
        False,
        lambda t: t.dir("Hives").file("Hives/System_Delta", delta_hive("a")),
        "Hives/System_Delta",
    ),
]


@pytest.mark.parametrize(
    ("delta", "build", "entry"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_tar_names_the_entry_and_commits_nothing(
    root: Path, delta: bool, build: Build, entry: str
) -> None:
    if delta:
        import_base(root)
        tar = build(LayerTar().dir("Files").dir("Hives"))
        parents: tuple[str, ...] = ("1",)
    else:
        tar = build(base_tar())
        parents = ()
    data = tar.bytes()
    before = snapshot(root)
    with pytest.raises(LayerFormatError) as raised:
        run(root, "2", data, *parents)
    assert raised.value.entry == entry
    assert raised.value.offset is not None and 0 <= raised.value.offset < len(data)
    assert snapshot(root) == before


def test_sparse_gnu_entry_is_refused(root: Path) -> None:
    import_base(root)
    tar = LayerTar().dir("Files")
    info = tarfile.TarInfo("Files/sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    tar.tar.addfile(info)
    data = tar.bytes()
    before = snapshot(root)
    with pytest.raises(LayerFormatError) as raised:
        run(root, "2", data, "1")
    assert raised.value.entry == "Files/sparse"
    assert snapshot(root) == before


def test_missing_base_hive_fails_at_the_end(root: Path) -> None:
    hives = base_hives()
    del hives["SECURITY"]
    before = snapshot(root)
    with pytest.raises(LayerFormatError) as raised:
        run(root, "1", base_tar(hives).bytes())
    assert raised.value.offset is not None
    assert snapshot(root) == before


@pytest.mark.parametrize("cut", [0.3, 0.6, 0.95])
def test_truncated_tar_mid_entry(root: Path, cut: float) -> None:
    import_base(root)
    data = LayerTar().dir("Files").file("Files/big", os.urandom(200_000)).bytes()
    end = int(len(data) * cut)
    before = snapshot(root)
    with pytest.raises(LayerFormatError):
        run(root, "2", data[:end], "1")
    assert snapshot(root) == before


def test_reimport_is_refused(root: Path) -> None:
    import_base(root)
    before = snapshot(root)
    with pytest.raises(LayerExistsError):
        run(root, "1", base_tar().bytes())
    assert snapshot(root) == before


def test_cancellation_between_entries(root: Path) -> None:
    import_base(root)
    (root / "2").mkdir()
    (root / "2" / "mine").write_text("keep")
    tar = LayerTar().dir("Files").dir("Hives").file("Hives/System_Delta", delta_hive("c"))
    for i in range(50):
        tar.file(f"Files/f{i}", b"x" * i)
    data = tar.bytes()
    before = snapshot(root)
    cancelled = threading.Event()
    seen: list[int] = []

    def progress(position: int, entries: int) -> None:
        seen.append(entries)
        if entries == 10:
            cancelled.set()

    with pytest.raises(LayerCancelledError):
        run(root, "2", data, "1", cancelled=cancelled, progress=progress)
    assert seen[-1] == 10
    assert snapshot(root) == before


class SlowStream(io.RawIOBase):
    """A stream that sleeps before each read, so an import holds the CIM directory a while."""

    def __init__(self, data: bytes, delay: float) -> None:
        self._data = io.BytesIO(data)
        self._delay = delay

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        time.sleep(self._delay)
        return self._data.readinto(b)


def test_two_concurrent_imports_into_one_directory(root: Path) -> None:
    import_base(root)
    payloads = {name: os.urandom(100_000) for name in ("2", "3")}
    tars = {
        name: LayerTar().dir("Files").file(f"Files/{name}", payload).bytes()
        for name, payload in payloads.items()
    }
    errors: list[BaseException] = []

    def one(name: str) -> None:
        try:
            import_layer(
                SlowStream(tars[name], 0.002),
                root / name,
                root / "cim-layers" / f"{name}.cim",
                [root / "1"],
                [root / "cim-layers" / "1.cim"],
                busy_timeout=30,
            )
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(name,)) for name in tars]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for name, payload in payloads.items():
        assert cim_data(root, name, f"Files\\{name}") == payload


def raw_entry(name: bytes, size: int, data: bytes) -> bytes:
    """One ustar entry with a raw (possibly non-UTF-8) name and any declared size."""
    info = tarfile.TarInfo("placeholder")
    info.size = size
    info.mtime = 1_600_000_000
    header = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    header[0:100] = name.ljust(100, b"\0")
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    return bytes(header) + data + bytes(-len(data) % 512)


@pytest.mark.parametrize(
    ("entry", "declared", "data"),
    [
        (b"Files/caf\xe9", 1, b"x"),  # not UTF-8
        (b"Files/huge", 10 * 10**9, b"only a little data"),  # 10 GB declared
    ],
    ids=["non-utf8", "10GB-declared"],
)
def test_bad_entries_from_raw_bytes(root: Path, entry: bytes, declared: int, data: bytes) -> None:
    import_base(root)
    directory = tarfile.TarInfo("Files")
    directory.type = tarfile.DIRTYPE
    directory.pax_headers = {"MSWINDOWS.fileattr": "16"}
    head = directory.tobuf(tarfile.PAX_FORMAT)
    stream = head + raw_entry(entry, declared, data) + bytes(1024)
    before = snapshot(root)
    with pytest.raises(LayerFormatError) as raised:
        run(root, "2", stream, "1")
    assert raised.value.offset is not None and raised.value.offset >= len(head) - 512
    assert snapshot(root) == before


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_truncated_compressed_stream(root: Path, kind: str) -> None:
    import_base(root)
    tar = LayerTar().dir("Files")
    for i in range(20):
        tar.file(f"Files/f{i}", os.urandom(20_000))
    packed = io.BytesIO()
    out = open_compressed(packed, kind)  # type: ignore[arg-type]
    out.write(tar.bytes())
    out.close()
    data = packed.getvalue()[: len(packed.getvalue()) * 2 // 3]
    before = snapshot(root)
    with pytest.raises(LayerFormatError):
        import_layer(
            open_decompressed(io.BytesIO(data)),
            root / "2",
            root / "cim-layers/2.cim",
            [root / "1"],
            [root / "cim-layers/1.cim"],
        )
    assert snapshot(root) == before


def test_delta_key_a_hive_cannot_store_is_the_layers_fault(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hive reader accepts a 300-unit key name; merging it must fail as bad input."""
    import_base(root)
    before = snapshot(root)
    delta_root = Key("ROOT", inherit_class=True)
    delta_root.add_subkey(Key("k" * 300))
    with monkeypatch.context() as m:  # forge the delta: only the writer refuses such names
        m.setattr(hive_cells, "MAX_KEY_NAME_LENGTH", 1000)
        delta = write_hive(Hive(root=delta_root, minor_version=6, flags=0x2, file_name="d"))
    tar = LayerTar().dir("Files").dir("Hives").file("Hives/Software_Delta", delta)
    with pytest.raises(LayerFormatError, match="Software_Delta holds a key a hive cannot store"):
        run(root, "2", tar.bytes(), "1")
    assert snapshot(root) == before
