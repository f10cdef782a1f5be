"""get_value / os_build_number on real hive files (§4.2), including hostile ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimsnap.errdefs import NotFound
from cimsnap.hive import HiveFormatError, HiveReader, read_hive, write_hive
from cimsnap.hive.query import get_value, lookup_value, os_build_number
from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_QWORD,
    REG_SZ,
    Hive,
    Key,
    Value,
)

CV = r"Microsoft\Windows NT\CurrentVersion"


def utf16(text: str) -> bytes:
    return text.encode("utf-16-le")


def software(build: Value | None = None, extra: list[Value] | None = None) -> Hive:
    root = Key("ROOT")
    cv = root.add_subkey(Key("Microsoft")).add_subkey(Key("Windows NT"))
    cv = cv.add_subkey(Key("CurrentVersion"))
    cv.values = [build if build is not None else Value("CurrentBuild", REG_SZ, utf16("20348\0"))]
    cv.values += extra or []
    other = root.add_subkey(Key("Other")).add_subkey(Key("Straße"))
    other.values = [Value("Big", REG_BINARY, bytes(range(256)) * 100)]
    return Hive(root=root)


def put(tmp: Path, hive: Hive, name: str = "SOFTWARE") -> Path:
    path = tmp / name
    path.write_bytes(write_hive(hive))
    return path


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (Value("v", REG_SZ, utf16("hello\0")), "hello"),
        (Value("v", REG_SZ, utf16("no terminator")), "no terminator"),
        (Value("v", REG_SZ, utf16("cut\0here")), "cut"),
        (Value("v", REG_EXPAND_SZ, utf16("%SystemRoot%\\x\0")), "%SystemRoot%\\x"),
        (Value("v", REG_MULTI_SZ, utf16("a\0bb\0\0")), ["a", "bb"]),
        (Value("v", REG_DWORD, (0xDEADBEEF).to_bytes(4, "little")), 0xDEADBEEF),
        (Value("v", REG_QWORD, (2**40 + 3).to_bytes(8, "little")), 2**40 + 3),
        (Value("v", REG_BINARY, b"\x00\x01\xff"), b"\x00\x01\xff"),
        (Value("v", REG_DWORD, b"\x01\x02"), b"\x01\x02"),  # wrong length stays bytes
        (Value("v", 0x1234, b"odd type"), b"odd type"),
    ],
)
def test_get_value_decodes_by_type(tmp_path: Path, value: Value, expected: object) -> None:
    path = put(tmp_path, software(extra=[value]))
    assert get_value(path, CV, "v") == expected
    view = lookup_value(path, CV, "V")
    assert (view.type, view.raw) == (value.type, value.data)


def test_names_are_case_insensitive_by_windows_upcase(tmp_path: Path) -> None:
    path = put(tmp_path, software(extra=[Value("", REG_DWORD, b"\x07\x00\x00\x00")]))
    assert get_value(path, r"MICROSOFT\windows nt\CURRENTversion", "currentbuild") == "20348"
    assert get_value(path, r"\Microsoft\\Windows NT\CurrentVersion\\", "CurrentBuild") == "20348"
    assert get_value(path, CV, "") == 7
    assert get_value(path, r"other\STRAßE", "big") == bytes(range(256)) * 100
    with pytest.raises(NotFound):
        get_value(path, r"other\STRASSE", "big")  # ß is not SS in Windows' table


def test_missing_file_key_and_value_are_not_found_and_named(tmp_path: Path) -> None:
    path = put(tmp_path, software())
    with pytest.raises(NotFound) as exc:
        get_value(tmp_path / "absent", CV, "CurrentBuild")
    assert "absent" in str(exc.value)
    with pytest.raises(NotFound) as exc:
        get_value(path, r"Microsoft\Nope", "CurrentBuild")
    assert "Microsoft\\\\Nope" in str(exc.value)
    with pytest.raises(NotFound) as exc:
        get_value(path, CV, "NoSuchValue")
    assert "NoSuchValue" in str(exc.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (utf16("20348\0"), 20348),
        (utf16("20348"), 20348),  # the seed would read 2034: we cut at the first NUL
        (utf16("17763\0\0\0\0\0\0\0\0"), 17763),  # longer than the seed's 16-byte buffer
        (utf16("26100\0junk"), 26100),
        (utf16("0\0"), 0),
        (utf16("65535\0"), 65535),
    ],
)
def test_os_build_number(tmp_path: Path, data: bytes, expected: int) -> None:
    path = put(tmp_path, software(Value("CurrentBuild", REG_SZ, data)))
    assert os_build_number(path) == expected


@pytest.mark.parametrize(
    "value",
    [
        Value("CurrentBuild", REG_EXPAND_SZ, utf16("20348\0")),  # the seed requires REG_SZ
        Value("CurrentBuild", REG_DWORD, (20348).to_bytes(4, "little")),
        Value("CurrentBuild", REG_SZ, utf16("65536\0")),  # not a uint16
        Value("CurrentBuild", REG_SZ, utf16("20348a\0")),
        Value("CurrentBuild", REG_SZ, utf16("\0")),
        Value("CurrentBuild", REG_SZ, utf16("-1\0")),
        Value("CurrentBuild", REG_SZ, utf16("２０３４８\0")),  # fullwidth digits
    ],
)
def test_os_build_number_refuses_bad_values(tmp_path: Path, value: Value) -> None:
    path = put(tmp_path, software(value))
    with pytest.raises(HiveFormatError):
        os_build_number(path)


def test_os_build_number_without_the_value_or_key_is_not_found(tmp_path: Path) -> None:
    no_value = put(tmp_path, software(Value("ProductName", REG_SZ, utf16("x\0"))), "a")
    with pytest.raises(NotFound):
        os_build_number(no_value)
    no_key = put(tmp_path, Hive(root=Key("ROOT")), "b")
    with pytest.raises(NotFound) as exc:
        os_build_number(no_key)
    assert "SOFTWARE" in str(exc.value)
    with pytest.raises(NotFound):
        os_build_number(tmp_path / "missing")


def test_lookup_is_lazy_a_damaged_unrelated_key_does_not_matter(tmp_path: Path) -> None:
    data = bytearray(write_hive(software()))
    reader = HiveReader(bytes(data))
    big = reader.open_key(r"Other\Straße").value("Big")
    assert big is not None
    # Break the signature of Other\Straße's value cell: a full read now fails...
    pos = 4096 + big.offset + 4
    assert data[pos : pos + 2] == b"vk"
    data[pos : pos + 2] = b"XX"
    path = tmp_path / "SOFTWARE"
    path.write_bytes(bytes(data))
    with pytest.raises(HiveFormatError):
        read_hive(bytes(data))
    # ...but the build number, elsewhere in the hive, still reads.
    assert os_build_number(path) == 20348
    with pytest.raises(HiveFormatError):
        get_value(path, r"Other\Straße", "Big")


@pytest.mark.parametrize("size", [0, 100, 4096, 6000])
def test_truncated_files_raise_the_format_error(tmp_path: Path, size: int) -> None:
    path = tmp_path / "SOFTWARE"
    path.write_bytes(write_hive(software())[:size])
    with pytest.raises(HiveFormatError):
        os_build_number(path)
    with pytest.raises(HiveFormatError):
        get_value(path, CV, "CurrentBuild")
