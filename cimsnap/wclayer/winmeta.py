"""Windows metadata of a layer tar entry: times, attributes, SD, EAs and reparse data.

What go-winio's ``backuptar.FileInfoFromHeader`` and ``EncodeReparsePoint`` compute for
hcsshim, restated as pure functions. Every function raises
:class:`LayerFormatError` *without* an entry name; the importer re-raises with the entry
and its offset.

Choices where the spec leaves room (each pinned by ``tests/unit/wclayer/test_winmeta.py``):

* **Missing atime/ctime.** Go leaves them at Go's zero time, which converts to FILETIME
  :data:`GO_ZERO_TIME_FILETIME` (48491090211286549, ≈ 1754). We reproduce that for byte
  parity with layers imported by hcsshim (a CIM written by cimsnap equals one written on
  Windows). Whole-second atime/ctime from a GNU or STAR header are used when present, as Go
  does.
* **Empty PAX time values** (``mtime=``) are skipped like Go's ``mergePAX`` (the ustar value
  stays); an empty ``LIBARCHIVE.creationtime`` is an error, as in go-winio.
* **Empty ``MSWINDOWS.rawsd``** is refused: go-winio would pass an empty SD, for which the
  CIM writer substitutes a NULL DACL granting everyone full access. A layer that names a
  descriptor gets that descriptor or an error, never an open one.
* **EA names**: sorted by their UTF-8 bytes (Go's map order is random); an empty name is
  refused; the whole buffer must fit the CIM's 64 KiB limit.
* **Reparse targets**: ``/`` becomes ``\\`` (FromSlash on Windows); an empty target and
  buffers over 16 KiB are refused.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from typing import Final

import construct as cs

from cimsnap.cim.format import (
    EA_LENGTH_MAX,
    IO_REPARSE_TAG_SYMLINK,
    REPARSE_DATA_HEADER,
    REPARSE_DATA_HEADER_SIZE,
    SYMLINK_FLAG_RELATIVE,
    SYMLINK_REPARSE_HEADER,
    derive_fast,
)
from cimsnap.hive.security import security_descriptor_problem
from cimsnap.wclayer.errors import LayerFormatError
from cimsnap.wclayer.fileinfo import FileBasicInfo
from cimsnap.wclayer.sddl import sddl_to_security_descriptor
from cimsnap.wclayer.tarstream import TarHeader

__all__ = [
    "FILE_FULL_EA_INFORMATION",
    "GO_ZERO_TIME_FILETIME",
    "IO_REPARSE_TAG_MOUNT_POINT",
    "MAX_REPARSE_BUFFER",
    "MOUNT_POINT_REPARSE_HEADER",
    "basic_info",
    "ea_buffer",
    "file_attributes",
    "filetime_from_pax",
    "filetime_from_unix",
    "reparse_buffer",
    "security_descriptor",
]

PAX_FILE_ATTRIBUTES: Final = "MSWINDOWS.fileattr"
PAX_RAW_SD: Final = "MSWINDOWS.rawsd"
PAX_SDDL: Final = "MSWINDOWS.sd"
PAX_MOUNT_POINT: Final = "MSWINDOWS.mountpoint"
PAX_EA_PREFIX: Final = "MSWINDOWS.xattr."
PAX_CREATION_TIME: Final = "LIBARCHIVE.creationtime"

FILE_ATTRIBUTE_DIRECTORY: Final = 0x10
#: 100 ns intervals between 1601-01-01 and 1970-01-01.
_EPOCH_DELTA: Final = 116444736000000000
_U64: Final = (1 << 64) - 1
#: Seconds of Go's zero time (0001-01-01 UTC) relative to the Unix epoch.
_GO_ZERO_SECONDS: Final = -62135596800

#: FILE_FULL_EA_INFORMATION entry header; the name, a NUL, the value and zero padding to a
#: multiple of 4 follow (the last entry is padded too).
FILE_FULL_EA_INFORMATION: Final = cs.Struct(
    "next_entry_offset" / cs.Int32ul,
    "flags" / cs.Int8ul,
    "ea_name_length" / cs.Int8ul,
    "ea_value_length" / cs.Int16ul,
)
_EA_HEADER: Final = derive_fast(FILE_FULL_EA_INFORMATION)

#: Mount point (junction) REPARSE_DATA_BUFFER head: like the symlink one, without flags.
IO_REPARSE_TAG_MOUNT_POINT: Final = 0xA0000003
MOUNT_POINT_REPARSE_HEADER: Final = cs.Struct(
    *REPARSE_DATA_HEADER.subcons,
    "substitute_name_offset" / cs.Int16ul,
    "substitute_name_length" / cs.Int16ul,
    "print_name_offset" / cs.Int16ul,
    "print_name_length" / cs.Int16ul,
)
_SYMLINK_HEADER: Final = derive_fast(SYMLINK_REPARSE_HEADER)
_MOUNT_POINT_HEADER: Final = derive_fast(MOUNT_POINT_REPARSE_HEADER)
#: Largest reparse buffer accepted (the spec's policy; the format's u16 length allows more).
MAX_REPARSE_BUFFER: Final = 16 * 1024


def filetime_from_unix(seconds: int, nanoseconds: int = 0) -> int:
    """FILETIME of a Unix time, exactly as go-winio computes it from a Go ``time.Time``.

    ``UnixNano()`` wraps to int64, is divided by 100 truncating toward zero, offset to
    1601, and only the low 64 bits are kept.
    """
    ns = (seconds * 1_000_000_000 + nanoseconds + (1 << 63)) % (1 << 64) - (1 << 63)
    ticks = -(-ns // 100) if ns < 0 else ns // 100
    return (ticks + _EPOCH_DELTA) & _U64


#: FILETIME of Go's zero time, what hcsshim stores for a missing atime or ctime.
GO_ZERO_TIME_FILETIME: Final = filetime_from_unix(_GO_ZERO_SECONDS)


def _parse_pax_time(value: str, key: str) -> tuple[int, int]:
    """Go's parsePAXTime: ``secs[.frac]``, at most 9 fraction digits used (truncated)."""
    seconds_text, dot, fraction = value.partition(".")
    body = seconds_text[1:] if seconds_text[:1] in ("-", "+") else seconds_text
    if not body.isascii() or not body.isdigit():
        raise LayerFormatError(f"PAX {key} {value!r} is not a time (secs[.frac])")
    seconds = int(seconds_text)
    if not -(1 << 63) <= seconds < 1 << 63:
        raise LayerFormatError(f"PAX {key} {value!r} is out of range")
    if not dot:
        return seconds, 0
    if fraction and not (fraction.isascii() and fraction.isdigit()):
        raise LayerFormatError(f"PAX {key} {value!r} is not a time (secs[.frac])")
    nanoseconds = int(fraction[:9].ljust(9, "0"))
    if seconds_text.startswith("-"):
        nanoseconds = -nanoseconds
    return seconds, nanoseconds


def filetime_from_pax(value: str, key: str = "time") -> int:
    """FILETIME of a raw PAX time string (``mtime``, ``atime``, ``ctime``,
    ``LIBARCHIVE.creationtime``); negative times allowed; LayerFormatError if malformed."""
    return filetime_from_unix(*_parse_pax_time(value, key))


def file_attributes(header: TarHeader) -> int:
    """``MSWINDOWS.fileattr`` (decimal uint32), else DIRECTORY for a directory entry, else 0."""
    text = header.pax.get(PAX_FILE_ATTRIBUTES)
    if text is None:
        return FILE_ATTRIBUTE_DIRECTORY if header.typeflag == "5" else 0
    if not (text.isascii() and text.isdigit()) or int(text) > 0xFFFFFFFF:
        raise LayerFormatError(f"{PAX_FILE_ATTRIBUTES} {text!r} is not a decimal uint32")
    return int(text)


def basic_info(header: TarHeader) -> FileBasicInfo:
    """The entry's FileBasicInfo: FILETIMEs and attributes (see the module docstring)."""
    pax = header.pax
    mtime = pax.get("mtime")
    write_time = filetime_from_pax(mtime, "mtime") if mtime else filetime_from_unix(header.mtime)
    times = []
    for key, fallback in (("atime", header.atime), ("ctime", header.ctime)):
        value = pax.get(key)
        if value:
            times.append(filetime_from_pax(value, key))
        elif fallback is not None:
            times.append(filetime_from_unix(fallback))
        else:
            times.append(GO_ZERO_TIME_FILETIME)
    creation = pax.get(PAX_CREATION_TIME)
    creation_time = (
        write_time if creation is None else filetime_from_pax(creation, PAX_CREATION_TIME)
    )
    return FileBasicInfo(
        creation_time=creation_time,
        last_access_time=times[0],
        last_write_time=write_time,
        change_time=times[1],
        file_attributes=file_attributes(header),
    )


def _base64(value: str, key: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as e:
        raise LayerFormatError(f"{key} is not valid base64: {e}") from e


@functools.lru_cache(maxsize=256)
def _raw_security_descriptor(raw: str) -> bytes:
    """Decode and validate one ``MSWINDOWS.rawsd`` value. Memoised: a layer reuses a
    handful of descriptors across thousands of entries (a pure function of the text)."""
    sd = _base64(raw, PAX_RAW_SD)
    problem = security_descriptor_problem(sd)
    if problem:
        raise LayerFormatError(f"{PAX_RAW_SD} is not a self-relative descriptor: {problem}")
    if len(sd) > 0xFFFF:
        raise LayerFormatError(f"{PAX_RAW_SD} is {len(sd)} bytes, over 65535")
    return sd


def security_descriptor(pax: Mapping[str, str]) -> bytes | None:
    """The entry's self-relative SD: ``MSWINDOWS.rawsd`` (strict base64, structure
    validated) first, else the SDDL of ``MSWINDOWS.sd`` converted, else None."""
    raw = pax.get(PAX_RAW_SD)
    if raw is not None:
        return _raw_security_descriptor(raw)
    sddl = pax.get(PAX_SDDL)
    if sddl is not None:
        return _sddl_security_descriptor(sddl)
    return None


@functools.lru_cache(maxsize=256)
def _sddl_security_descriptor(sddl: str) -> bytes:
    return sddl_to_security_descriptor(sddl)


def ea_buffer(pax: Mapping[str, str]) -> bytes:
    """The FILE_FULL_EA_INFORMATION chain of every ``MSWINDOWS.xattr.<name>`` record,
    sorted by name bytes; b"" when there is none."""
    entries = []
    for key, value in pax.items():
        if key.startswith(PAX_EA_PREFIX):
            name = key[len(PAX_EA_PREFIX) :].encode("utf-8", "surrogateescape")
            if not name:
                raise LayerFormatError(f"{key!r}: empty extended attribute name")
            if len(name) > 255:
                raise LayerFormatError(f"{key!r}: EA name of {len(name)} bytes, over 255")
            data = _base64(value, key)
            if len(data) > 0xFFFF:
                raise LayerFormatError(f"{key!r}: EA value of {len(data)} bytes, over 65535")
            entries.append((name, data))
    if not entries:
        return b""
    entries.sort()
    out = bytearray()
    for index, (name, data) in enumerate(entries):
        size = _EA_HEADER.size + len(name) + 1 + len(data)
        padded = (size + 3) & ~3
        next_offset = 0 if index == len(entries) - 1 else padded
        out += _EA_HEADER.pack(next_offset, 0, len(name), len(data))
        out += name + b"\0" + data + bytes(padded - size)
    if len(out) > EA_LENGTH_MAX:
        raise LayerFormatError(f"extended attributes need {len(out)} bytes, over {EA_LENGTH_MAX}")
    return bytes(out)


def _nt_target(target: str) -> tuple[str, bool]:
    """go-winio's substitute name and whether the target counts as relative."""
    if target.startswith("\\\\?\\"):
        return "\\??\\" + target[4:], False
    if target.startswith("\\\\"):
        return "\\??\\UNC\\" + target[2:], False
    if len(target) >= 2 and target[0].isascii() and target[0].isalpha() and target[1] == ":":
        return "\\??\\" + target, False
    return target, True


def reparse_buffer(target: str, *, mountpoint: bool) -> bytes:
    """REPARSE_DATA_BUFFER of a symlink (IO_REPARSE_TAG_SYMLINK, relative flag) or, with
    ``mountpoint``, a junction (IO_REPARSE_TAG_MOUNT_POINT) to ``target``.

    ``/`` in ``target`` becomes ``\\``. Raises LayerFormatError for an empty target or a
    buffer over :data:`MAX_REPARSE_BUFFER` bytes.
    """
    if not target:
        raise LayerFormatError("link target is empty")
    target = target.replace("/", "\\")
    nt_name, relative = _nt_target(target)
    nt16 = (nt_name + "\0").encode("utf-16-le")
    print16 = (target + "\0").encode("utf-16-le")
    header = _MOUNT_POINT_HEADER if mountpoint else _SYMLINK_HEADER
    size = header.size + len(nt16) + len(print16)
    if size > MAX_REPARSE_BUFFER:
        raise LayerFormatError(
            f"reparse buffer of {size} bytes for a {len(target)}-character target exceeds "
            f"{MAX_REPARSE_BUFFER}"
        )
    fields = [
        IO_REPARSE_TAG_MOUNT_POINT if mountpoint else IO_REPARSE_TAG_SYMLINK,
        size - REPARSE_DATA_HEADER_SIZE,
        0,
        0,
        len(nt16) - 2,
        len(nt16),
        len(print16) - 2,
    ]
    if not mountpoint:
        fields.append(SYMLINK_FLAG_RELATIVE if relative else 0)
    return header.pack(*fields) + nt16 + print16
