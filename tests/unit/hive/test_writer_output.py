"""Writer output is pinned (deterministic layout) and readable from every input kind."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cimsnap.hive import Hive, Key, Value, open_hive, read_hive, write_hive
from cimsnap.hive.tree import REG_BINARY, REG_DWORD, REG_MULTI_SZ, REG_SZ


def _model() -> Hive:
    root = Key("ROOT", last_written=0x01D9_0000_0000_0000)
    cv = root.add_subkey(Key("Microsoft", class_name="Klasse")).add_subkey(Key("Windows NT"))
    cv = cv.add_subkey(Key("CurrentVersion", last_written=1))
    cv.values += [
        Value("CurrentBuild", REG_SZ, "20348\0".encode("utf-16-le")),
        Value("Ünicode ☃", REG_DWORD, b"\x01\x00\x00\x00"),
        Value("", REG_MULTI_SZ, "a\0b\0\0".encode("utf-16-le")),
        Value("big", REG_BINARY, bytes(range(256)) * 100),
    ]
    many = root.add_subkey(Key("Many"))
    for i in range(1100):
        many.add_subkey(Key(f"k{i}"))
    return Hive(root, minor_version=6, file_name=r"\??\C:\Windows\System32\config\SOFTWARE")


# Changing this hash means the on-disk layout changed: make sure that was intended (and that
# hivex/regipy/check tests still pass), then update it.
GOLDEN_SHA256 = "ce5ded6de16a2dd9464931149dca2087e84ed4e4c59920efcfed2fb5c54458b7"


def test_output_is_pinned() -> None:
    data = write_hive(_model())
    assert write_hive(_model()) == data
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256


def test_inputs_bytes_memoryview_and_path(tmp_path: Path) -> None:
    data = write_hive(_model())
    path = tmp_path / "SOFTWARE"
    path.write_bytes(data)
    expected = read_hive(data)
    assert read_hive(memoryview(data)) == expected
    assert open_hive(path) == expected
    # the base block keeps the last 31 UTF-16 units of the file name
    assert expected.file_name == r"indows\System32\config\SOFTWARE"


def test_unpaired_surrogates_round_trip() -> None:
    """UTF-16 names may hold unpaired surrogates (Windows does not validate UTF-16)."""
    from cimsnap.hive import check_hive
    from cimsnap.hive.cells import lh_hash

    root = Key("ROOT")
    odd = root.add_subkey(Key("a\ud800b", class_name="c\udc00"))
    odd.values.append(Value("v\udfff", REG_SZ, "x\ud800\0".encode("utf-16-le", "surrogatepass")))
    data = write_hive(Hive(root))
    assert check_hive(data) == []
    back = read_hive(data)
    key = back.root.subkey("A\ud800B")
    assert key is not None and key.name == "a\ud800b" and key.class_name == "c\udc00"
    assert [v.name for v in key.values] == ["v\udfff"]
    assert lh_hash("a\ud800b") == ((65 * 37 + 0xD800) * 37 + 66)


def test_mapped_file_input(tmp_path: Path) -> None:
    """A read-only mmap works wherever bytes do (the lazy reader's intended input)."""
    import mmap

    from cimsnap.hive import HiveReader, read_current_build

    path = tmp_path / "SOFTWARE"
    path.write_bytes(write_hive(_model()))
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            assert read_current_build(view) == 20348
            assert HiveReader(view).open_key(r"microsoft\windows nt\currentversion").name == (
                "CurrentVersion"
            )
            assert read_hive(view) == open_hive(path)
        finally:
            view.release()


def test_base_block_flags() -> None:
    from cimsnap.hive import cells as C

    hive = _model()
    hive.flags = 0x1 | 0x2  # KTM locked + layered keys
    assert read_hive(write_hive(hive)).flags == 0x2
    named = C.BASE_BLOCK_FAST.unpack_named(write_hive(_model()))
    assert named["primary_sequence"] == named["secondary_sequence"] == 1
    assert (named["major_version"], named["minor_version"]) == (1, 6)
    assert (named["file_type"], named["file_format"], named["clustering_factor"]) == (0, 1, 1)
