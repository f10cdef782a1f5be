"""Windows metadata decoding on bytes: FILETIMEs, attributes, SDs (rawsd and SDDL), EA
buffers and reparse buffers."""

from __future__ import annotations

import base64
import io
import tarfile
from decimal import Decimal
from types import MappingProxyType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cimsnap.cim.file_metadata import NULL_DACL_SECURITY_DESCRIPTOR
from cimsnap.cim.format import IO_REPARSE_TAG_SYMLINK, SYMLINK_REPARSE_HEADER
from cimsnap.hive.security import DEFAULT_SECURITY_DESCRIPTOR, security_descriptor_problem
from cimsnap.wclayer.errors import LayerFormatError
from cimsnap.wclayer.sddl import sddl_to_security_descriptor, sid_to_bytes
from cimsnap.wclayer.tarstream import TarHeader, TarReader
from cimsnap.wclayer.winmeta import (
    FILE_FULL_EA_INFORMATION,
    GO_ZERO_TIME_FILETIME,
    IO_REPARSE_TAG_MOUNT_POINT,
    MOUNT_POINT_REPARSE_HEADER,
    basic_info,
    ea_buffer,
    file_attributes,
    filetime_from_pax,
    filetime_from_unix,
    reparse_buffer,
    security_descriptor,
)

EPOCH = 116444736000000000


def header(typeflag: str = "0", mtime: int = 0, pax: dict[str, str] | None = None) -> TarHeader:
    return TarHeader("f", typeflag, 0, "", 0, 0, 0, mtime, MappingProxyType(pax or {}), 0, 512)


# --- FILETIME ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", EPOCH),
        ("1", EPOCH + 10_000_000),
        ("1.5", EPOCH + 15_000_000),
        ("1.0000001", EPOCH + 10_000_001),
        ("1.00000019", EPOCH + 10_000_001),  # 100 ns ticks truncate
        ("1.1234567899999", EPOCH + 11_234_567),  # > 9 digits truncated
        ("-1.5", EPOCH - 15_000_000),
        ("-0.00000015", EPOCH - 1),  # toward zero, not floor
        ("+2", EPOCH + 20_000_000),
        ("5.", EPOCH + 50_000_000),
    ],
)
def test_filetime_from_pax(text: str, expected: int) -> None:
    assert filetime_from_pax(text) == expected


@pytest.mark.parametrize("text", ["", ".5", "1.2.3", "1e9", "0x10", " 1", "1.-5", "١٢"])
def test_filetime_from_pax_rejects(text: str) -> None:
    with pytest.raises(LayerFormatError):
        filetime_from_pax(text)


@given(st.integers(-(2**40), 2**40), st.integers(0, 999_999_999))
def test_filetime_matches_exact_decimal_arithmetic(seconds: int, nanos: int) -> None:
    """Inside Go's int64 nanosecond range the result is floor-free exact arithmetic."""
    total = Decimal(seconds) * 10**9 + nanos
    if abs(total) >= 2**63:
        return
    ticks = int(total / 100)  # Decimal division then int(): truncation toward zero
    assert filetime_from_unix(seconds, nanos) == (ticks + EPOCH) % 2**64


def test_go_zero_time_value() -> None:
    assert GO_ZERO_TIME_FILETIME == 48491090211286549 == 0x00AC4663BED0AE15


def test_basic_info_rules() -> None:
    info = basic_info(header(mtime=10))
    assert info.last_write_time == info.creation_time == EPOCH + 100_000_000
    assert info.last_access_time == info.change_time == GO_ZERO_TIME_FILETIME
    assert info.file_attributes == 0
    pax = {"mtime": "20.5", "atime": "30", "ctime": "40", "LIBARCHIVE.creationtime": "5"}
    full = basic_info(header("5", mtime=10, pax=pax))
    assert full.last_write_time == EPOCH + 205_000_000
    assert full.last_access_time == EPOCH + 300_000_000
    assert full.change_time == EPOCH + 400_000_000
    assert full.creation_time == EPOCH + 50_000_000
    assert full.file_attributes == 0x10
    assert basic_info(header(mtime=10, pax={"mtime": ""})).last_write_time == (EPOCH + 100_000_000)
    with pytest.raises(LayerFormatError):
        basic_info(header(pax={"LIBARCHIVE.creationtime": ""}))
    with pytest.raises(LayerFormatError):
        basic_info(header(pax={"atime": "yesterday"}))


def test_gnu_header_times_are_used() -> None:
    ti = tarfile.TarInfo("x")
    block = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
    block[345:357] = b"%011o\0" % 7
    block[357:369] = b"%011o\0" % 8
    unsigned_sum, _ = tarfile.calc_chksums(bytes(block))  # type: ignore[attr-defined]
    block[148:156] = b"%06o\0 " % unsigned_sum
    (entry,) = TarReader(io.BytesIO(bytes(block) + bytes(1024)))
    info = basic_info(entry.header)
    assert info.last_access_time == EPOCH + 70_000_000
    assert info.change_time == EPOCH + 80_000_000


def test_file_attributes() -> None:
    assert file_attributes(header("5")) == 0x10
    assert file_attributes(header("0")) == 0
    assert file_attributes(header("5", pax={"MSWINDOWS.fileattr": "32"})) == 32
    assert file_attributes(header("0", pax={"MSWINDOWS.fileattr": "4294967295"})) == 2**32 - 1
    for bad in ("", "-1", "4294967296", "0x10", "1 ", "+5"):
        with pytest.raises(LayerFormatError):
            file_attributes(header(pax={"MSWINDOWS.fileattr": bad}))


# --- security descriptors ------------------------------------------------------------------


def test_rawsd_is_decoded_and_validated() -> None:
    encoded = base64.b64encode(DEFAULT_SECURITY_DESCRIPTOR).decode()
    assert security_descriptor({"MSWINDOWS.rawsd": encoded}) == DEFAULT_SECURITY_DESCRIPTOR
    assert security_descriptor({}) is None
    broken = bytearray(DEFAULT_SECURITY_DESCRIPTOR)
    broken[0] = 2  # revision
    not_relative = bytearray(DEFAULT_SECURITY_DESCRIPTOR)
    not_relative[3] = 0
    out_of_range = bytearray(DEFAULT_SECURITY_DESCRIPTOR)
    out_of_range[4:8] = (4000).to_bytes(4, "little")  # owner offset
    for bad in (bytes(broken), bytes(not_relative), bytes(out_of_range), b"", b"\x01\x00"):
        with pytest.raises(LayerFormatError):
            security_descriptor({"MSWINDOWS.rawsd": base64.b64encode(bad).decode()})
    for text in (encoded[:-1], encoded + "\n", "!!!!", "AQ=A"):
        with pytest.raises(LayerFormatError):
            security_descriptor({"MSWINDOWS.rawsd": text})


def test_rawsd_wins_over_sddl() -> None:
    encoded = base64.b64encode(DEFAULT_SECURITY_DESCRIPTOR).decode()
    got = security_descriptor({"MSWINDOWS.rawsd": encoded, "MSWINDOWS.sd": "D:NO_ACCESS_CONTROL"})
    assert got == DEFAULT_SECURITY_DESCRIPTOR
    assert security_descriptor({"MSWINDOWS.sd": "D:NO_ACCESS_CONTROL"}) == (
        NULL_DACL_SECURITY_DESCRIPTOR
    )


def test_sddl_reproduces_a_windows_descriptor() -> None:
    """The hive engine's default SD was taken from a Windows-written hive; its SDDL is
    O:BAG:SYD:(A;CI;KA;;;SY)(A;CI;KA;;;BA)(A;CI;KR;;;BU)."""
    sd = sddl_to_security_descriptor("O:BAG:SYD:(A;CI;KA;;;SY)(A;CI;KA;;;BA)(A;CI;KR;;;BU)")
    assert sd == DEFAULT_SECURITY_DESCRIPTOR


def test_sddl_flags_sacl_and_literals() -> None:
    sd = sddl_to_security_descriptor(
        "O:S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464"
        "G:SYD:PAI(A;OICIIO;GA;;;CO)(D;;0x1F01FF;;;AN)S:AI(AU;SAFA;FA;;;WD)(ML;;NW;;;LW)"
    )
    assert security_descriptor_problem(sd) is None
    control = int.from_bytes(sd[2:4], "little")
    assert control == 0x8000 | 0x4 | 0x10 | 0x1000 | 0x400 | 0x800
    assert sid_to_bytes("SY") == bytes.fromhex("010100000000000512000000")
    assert sid_to_bytes("S-1-0x10-5") == bytes.fromhex("010100000000001005000000")
    assert sddl_to_security_descriptor("D:") == bytes.fromhex(
        "0100 0480 00000000 00000000 00000000 14000000 0200 0800 0000 0000".replace(" ", "")
    )


@pytest.mark.parametrize(
    ("sddl", "construct"),
    [
        ("D:(OA;;RP;bf967aba-0de6-11d0-a285-00aa003049e2;;BA)", "OA"),
        ("D:(XA;;FA;;;WD;(Member_of {SID(BA)}))", "fields"),
        ("O:DA", "DA"),
        ("D:(A;;FA;;;S-1-5-)", "SID"),
        ("D:(A;;123;;;SY)", "rights"),
        ("D:(A;QQ;FA;;;SY)", "flag"),
        ("D:(A;;FA;;;SY", "closing"),
        ("X:SY", "expected"),
        ("O:SYO:BA", "twice"),
        ("D:Q(A;;FA;;;SY)", "ACL flag"),
        ("", "empty"),
        ("D:(A;;FA;;;SY) ", "expected"),
    ],
)
def test_sddl_unsupported_constructs_are_named(sddl: str, construct: str) -> None:
    with pytest.raises(LayerFormatError) as info:
        sddl_to_security_descriptor(sddl)
    assert construct in str(info.value)
    assert "position" in str(info.value)


# --- EA buffers ----------------------------------------------------------------------------


def test_ea_buffer_layout_and_order() -> None:
    pax = {
        "MSWINDOWS.xattr.ZED": base64.b64encode(b"z" * 5).decode(),
        "MSWINDOWS.xattr.$KERNEL.PURGE": "",
        "SCHILY.xattr.user.x": "aWdub3JlZA==",
        "MSWINDOWS.xattr.A": base64.b64encode(b"\x01\x02").decode(),
    }
    buf = ea_buffer(pax)
    entries = []
    pos = 0
    while True:
        head = FILE_FULL_EA_INFORMATION.parse(buf[pos:])
        start = pos + FILE_FULL_EA_INFORMATION.sizeof()
        name = buf[start : start + head.ea_name_length]
        assert buf[start + head.ea_name_length] == 0
        value_at = start + head.ea_name_length + 1
        entries.append((name, buf[value_at : value_at + head.ea_value_length]))
        if head.next_entry_offset == 0:
            end = value_at + head.ea_value_length
            assert len(buf) == (end + 3) & ~3  # the last entry is padded too
            assert buf[end:] == bytes(len(buf) - end)
            break
        assert head.next_entry_offset % 4 == 0
        pos += head.next_entry_offset
    assert entries == [(b"$KERNEL.PURGE", b""), (b"A", b"\x01\x02"), (b"ZED", b"zzzzz")]
    assert ea_buffer({"SCHILY.xattr.a": "AA=="}) == b""


def test_ea_buffer_limits() -> None:
    with pytest.raises(LayerFormatError):
        ea_buffer({"MSWINDOWS.xattr." + "N" * 256: ""})
    assert ea_buffer({"MSWINDOWS.xattr." + "N" * 255: ""})
    with pytest.raises(LayerFormatError):
        ea_buffer({"MSWINDOWS.xattr.BIG": base64.b64encode(bytes(65536)).decode()})
    with pytest.raises(LayerFormatError):
        ea_buffer({"MSWINDOWS.xattr.": ""})
    with pytest.raises(LayerFormatError):
        ea_buffer({"MSWINDOWS.xattr.A": "not base64"})


# --- reparse buffers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "nt_name", "relative"),
    [
        ("C:/Windows", "\\??\\C:\\Windows", False),
        ("\\\\?\\Volume{x}\\", "\\??\\Volume{x}\\", False),
        ("\\\\srv\\share", "\\??\\UNC\\srv\\share", False),
        ("../sibling", "..\\sibling", True),
        ("\\rooted", "\\rooted", True),
        ("ünïcode", "ünïcode", True),
    ],
)
def test_symlink_reparse_buffer(target: str, nt_name: str, relative: bool) -> None:
    buf = reparse_buffer(target, mountpoint=False)
    head = SYMLINK_REPARSE_HEADER.parse(buf)
    body = buf[SYMLINK_REPARSE_HEADER.sizeof() :]
    assert head.reparse_tag == IO_REPARSE_TAG_SYMLINK
    assert head.reparse_data_length == len(buf) - 8
    assert head.flags == (1 if relative else 0)
    sub = body[
        head.substitute_name_offset : head.substitute_name_offset + head.substitute_name_length
    ]
    printed = body[head.print_name_offset : head.print_name_offset + head.print_name_length]
    assert sub.decode("utf-16-le") == nt_name
    assert printed.decode("utf-16-le") == target.replace("/", "\\")
    assert body[head.print_name_offset - 2 : head.print_name_offset] == b"\0\0"
    assert buf.endswith(b"\0\0")


def test_mount_point_reparse_buffer() -> None:
    buf = reparse_buffer("C:\\data", mountpoint=True)
    head = MOUNT_POINT_REPARSE_HEADER.parse(buf)
    assert head.reparse_tag == IO_REPARSE_TAG_MOUNT_POINT
    body = buf[MOUNT_POINT_REPARSE_HEADER.sizeof() :]
    assert body[: head.substitute_name_length].decode("utf-16-le") == "\\??\\C:\\data"
    assert head.reparse_data_length == len(buf) - 8


def test_reparse_buffer_limits() -> None:
    with pytest.raises(LayerFormatError):
        reparse_buffer("", mountpoint=False)
    with pytest.raises(LayerFormatError):
        reparse_buffer("x" * 8200, mountpoint=False)
    assert len(reparse_buffer("x" * 4000, mountpoint=False)) < 16 * 1024
