"""The lazy reader: case-insensitive paths, typed data, CurrentBuild (§4.2)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from cimsnap.hive import (
    Hive,
    HiveFormatError,
    HiveReader,
    Key,
    KeyNotFoundError,
    Value,
    decode_value,
    name_key,
    read_current_build,
    read_hive,
    write_hive,
)
from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_DWORD_BIG_ENDIAN,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_QWORD,
    REG_SZ,
)
from tests.unit.hive.tree_strategies import hives


def _software(value: Value) -> bytes:
    root = Key("ROOT")
    cv = (
        root.add_subkey(Key("Microsoft"))
        .add_subkey(Key("Windows NT"))
        .add_subkey(Key("CurrentVersion"))
    )
    cv.values.append(value)
    return write_hive(Hive(root))


def test_open_key_is_case_insensitive_with_windows_rules() -> None:
    root = Key("ROOT")
    root.add_subkey(Key("Äpfel")).add_subkey(Key("straße"))
    reader = HiveReader(write_hive(Hive(root)))
    assert reader.open_key(r"äPFEL\STRAßE").name == "straße"
    assert reader.find_key(r"äpfel\STRASSE") is None  # ß does not fold to SS
    found = reader.find_key("\\")
    assert found is not None and found.offset == reader.root.offset
    with pytest.raises(KeyNotFoundError):
        reader.open_key("missing")


def test_typed_values() -> None:
    root = Key("ROOT")
    root.values += [
        Value("sz", REG_SZ, "abc\0junk".encode("utf-16-le")),
        Value("ex", REG_EXPAND_SZ, "%x%".encode("utf-16-le")),
        Value("multi", REG_MULTI_SZ, "a\0bc\0\0zz\0".encode("utf-16-le")),
        Value("dw", REG_DWORD, b"\x01\x02\x00\x00"),
        Value("be", REG_DWORD_BIG_ENDIAN, b"\x00\x00\x01\x02"),
        Value("qw", REG_QWORD, (2**40).to_bytes(8, "little")),
        Value("bin", REG_BINARY, b"\x00\x01"),
        Value("short", REG_DWORD, b"\x01"),
    ]
    reader = HiveReader(write_hive(Hive(root)))
    got = {v.name: v.data for v in reader.root.values()}
    assert got == {
        "sz": "abc",
        "ex": "%x%",
        "multi": ["a", "bc"],
        "dw": 0x201,
        "be": 0x102,
        "qw": 2**40,
        "bin": b"\x00\x01",
        "short": b"\x01",
    }
    assert reader.root.value("SZ") is not None


def test_decode_value_odd_utf16() -> None:
    assert decode_value(REG_SZ, b"a\x00b") == "a"


def test_current_build() -> None:
    assert (
        read_current_build(_software(Value("CurrentBuild", REG_SZ, "20348\0".encode("utf-16-le"))))
        == 20348
    )
    # unterminated: the seed would drop the last character; we keep it (§4.2)
    assert (
        read_current_build(_software(Value("currentbuild", REG_SZ, "26100".encode("utf-16-le"))))
        == 26100
    )


@pytest.mark.parametrize(
    "value",
    [
        Value("CurrentBuild", REG_EXPAND_SZ, "20348\0".encode("utf-16-le")),
        Value("CurrentBuild", REG_SZ, "20x48\0".encode("utf-16-le")),
        Value("CurrentBuild", REG_SZ, "70000\0".encode("utf-16-le")),
    ],
)
def test_current_build_rejects(value: Value) -> None:
    with pytest.raises(HiveFormatError):
        read_current_build(_software(value))


def test_current_build_missing() -> None:
    with pytest.raises(KeyNotFoundError):
        read_current_build(_software(Value("Other", REG_SZ, b"")))
    with pytest.raises(KeyNotFoundError):
        read_current_build(write_hive(Hive(Key("ROOT"))))


def test_walk_paths() -> None:
    root = Key("ROOT")
    root.add_subkey(Key("b")).add_subkey(Key("c"))
    root.add_subkey(Key("a"))
    paths = [p for p, _ in HiveReader(write_hive(Hive(root))).walk()]
    assert paths == ["", "a", "b", "b\\c"]


@given(hives(layered=True))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_lazy_view_agrees_with_read_hive(hive: Hive) -> None:
    data = write_hive(hive)
    eager = read_hive(data)
    reader = HiveReader(data)
    for path, view in reader.walk():
        key = eager.root.find(path)
        assert key is not None
        assert view.name == key.name and view.class_name == key.class_name
        assert (view.semantics, view.inherit_class) == (key.semantics, key.inherit_class)
        assert view.security == key.security and view.last_written == key.last_written
        assert [(v.name, v.type, v.raw, v.tombstone) for v in view.values()] == [
            (v.name, v.type, v.data, v.tombstone) for v in key.values
        ]
        assert [c.name for c in view.subkeys()] == sorted(
            (c.name for c in key.subkeys.values()),
            key=lambda n: name_key(n).encode("utf-16-be", "surrogatepass"),
        )
