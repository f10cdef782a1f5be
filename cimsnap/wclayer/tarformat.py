"""The tar header format: declarations, field decoding and PAX records (sans-IO).

The 512-byte ustar header is declared once with ``construct`` (:data:`USTAR_HEADER`, plus
the GNU and STAR tails that reuse its last 167 bytes); the reader's fast path is a
``struct.Struct`` derived from that declaration, never a second layout. Field rules follow
Go's ``archive/tar``; :mod:`cimsnap.wclayer.tarstream`
documents the behaviour they add up to.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

import construct as cs

from cimsnap.binfields import leaves
from cimsnap.wclayer.errors import LayerFormatError

__all__ = [
    "BLOCK_SIZE",
    "GNU_HEADER_TAIL",
    "MAX_SPECIAL_SIZE",
    "PAX_OVERRIDE_KEYS",
    "STAR_HEADER_TAIL",
    "USTAR_HEADER",
    "Octets",
    "TarFormatError",
    "TarTruncatedError",
    "check_header_sum",
    "cstr",
    "decode_name",
    "field_spans",
    "header_sum",
    "join_prefix",
    "parse_number",
    "parse_octal",
    "parse_optional_number",
    "parse_pax",
    "pax_overrides",
]

#: What the decoders accept: the reader's buffer is a bytearray, fields unpack as bytes.
Octets = bytes | bytearray

BLOCK_SIZE: Final = 512
#: Largest PAX extended header or GNU long name/link body accepted (Go's maxSpecialFileSize).
MAX_SPECIAL_SIZE: Final = 1 << 20

#: The POSIX ustar header block (POSIX.1-2001 pax/ustar; also the head of GNU and STAR
#: headers, whose last 167 bytes differ: see the tails below). Every field is raw bytes;
#: numbers are octal text or base-256, strings NUL-terminated unless they fill the field.
USTAR_HEADER: Final = cs.Struct(
    "name" / cs.Bytes(100),
    "mode" / cs.Bytes(8),
    "uid" / cs.Bytes(8),
    "gid" / cs.Bytes(8),
    "size" / cs.Bytes(12),
    "mtime" / cs.Bytes(12),
    "chksum" / cs.Bytes(8),
    "typeflag" / cs.Bytes(1),
    "linkname" / cs.Bytes(100),
    "magic" / cs.Bytes(6),
    "version" / cs.Bytes(2),
    "uname" / cs.Bytes(32),
    "gname" / cs.Bytes(32),
    "devmajor" / cs.Bytes(8),
    "devminor" / cs.Bytes(8),
    "prefix" / cs.Bytes(155),
    "pad" / cs.Bytes(12),
)
#: GNU header from offset 345 (old-GNU sparse map of 4 entries, extension flag, real size).
GNU_HEADER_TAIL: Final = cs.Struct(
    "atime" / cs.Bytes(12),
    "ctime" / cs.Bytes(12),
    "offset" / cs.Bytes(12),
    "longnames" / cs.Bytes(4),
    "unused" / cs.Bytes(1),
    "sparse" / cs.Bytes(4 * 24),
    "isextended" / cs.Bytes(1),
    "realsize" / cs.Bytes(12),
    "pad" / cs.Bytes(17),
)
#: STAR header from offset 345 (prefix shortened to 131 bytes, times, "tar\0" trailer).
STAR_HEADER_TAIL: Final = cs.Struct(
    "prefix" / cs.Bytes(131),
    "atime" / cs.Bytes(12),
    "ctime" / cs.Bytes(12),
    "pad" / cs.Bytes(8),
    "trailer" / cs.Bytes(4),
)
#: In an old-GNU sparse extension block (21 sparse entries of 24 bytes), the offset of the
#: flag saying another extension block follows.
GNU_SPARSE_EXT_FLAG: Final = 21 * 24


def _fast(con: Any) -> struct.Struct:
    """The ``struct.Struct`` of a declaration made of fixed ``Bytes`` fields."""
    codes = []
    for leaf in leaves(con):
        if leaf.code is None:
            raise TypeError(f"{leaf.name}: no struct equivalent")
        codes.append(leaf.code)
    return struct.Struct("<" + "".join(codes))


def _fast_subset(con: Any, wanted: tuple[str, ...]) -> struct.Struct:
    """A ``struct.Struct`` of a fixed ``Bytes`` declaration that unpacks only the ``wanted``
    fields (in declaration order) and skips the others as pad bytes."""
    codes = []
    names = []
    for leaf in leaves(con):
        if leaf.code is None:
            raise TypeError(f"{leaf.name}: no struct equivalent")
        if leaf.name in wanted:
            codes.append(leaf.code)
            names.append(leaf.name)
        else:
            codes.append(f"{leaf.size}x")
    if tuple(names) != wanted:
        raise TypeError(f"fields {wanted} are not all in declaration order in {names}")
    return struct.Struct("<" + "".join(codes))


def _fast_run(con: Any, wanted: tuple[str, ...]) -> struct.Struct:
    """A ``struct.Struct`` of the contiguous ``wanted`` fields of a fixed ``Bytes``
    declaration, to unpack a slice holding just those fields."""
    found = [leaf for leaf in leaves(con) if leaf.name in wanted]
    if any(leaf.code is None for leaf in found):
        raise TypeError(f"fields {wanted}: one has no struct equivalent")
    names = tuple(leaf.name for leaf in found)
    spans = field_spans(con)
    if names != wanted or any(spans[a][1] != spans[b][0] for a, b in itertools.pairwise(names)):
        raise TypeError(f"fields {wanted} are not contiguous and in declaration order")
    return struct.Struct("<" + "".join(str(leaf.code) for leaf in found))


def field_spans(con: Any) -> dict[str, tuple[int, int]]:
    """Each leaf field's ``(start, end)`` byte span in a fixed-size declaration."""
    found: dict[str, tuple[int, int]] = {}
    position = 0
    for leaf in leaves(con):
        found[leaf.name] = (position, position + leaf.size)
        position += leaf.size
    return found


#: Fast unpackers derived from the declarations (tuples in declaration order).
USTAR_FAST: Final = _fast(USTAR_HEADER)
GNU_TAIL_FAST: Final = _fast(GNU_HEADER_TAIL)
STAR_TAIL_FAST: Final = _fast(STAR_HEADER_TAIL)
#: The ustar fields an entry needs besides its numbers, the rest skipped as pad bytes.
USTAR_ENTRY_FIELDS: Final = ("name", "linkname", "magic", "version", "prefix")
USTAR_ENTRY_FAST: Final = _fast_subset(USTAR_HEADER, USTAR_ENTRY_FIELDS)
#: The contiguous numeric fields, unpacked from their own span (not from the whole block).
USTAR_NUMBER_FIELDS: Final = ("mode", "uid", "gid", "size", "mtime")
USTAR_NUMBERS_FAST: Final = _fast_run(USTAR_HEADER, USTAR_NUMBER_FIELDS)
USTAR_SPANS: Final = field_spans(USTAR_HEADER)
#: Offset of the part where GNU and STAR headers differ from ustar (``prefix`` onwards).
TAIL_OFFSET: Final = USTAR_SPANS["prefix"][0]
TYPEFLAG_AT: Final = USTAR_SPANS["typeflag"][0]
_STAR_SPANS: Final = field_spans(STAR_HEADER_TAIL)
STAR_TRAILER_START: Final = TAIL_OFFSET + _STAR_SPANS["trailer"][0]
STAR_TRAILER_END: Final = TAIL_OFFSET + _STAR_SPANS["trailer"][1]
GNU_ISEXTENDED_INDEX: Final = [leaf.name for leaf in leaves(GNU_HEADER_TAIL)].index("isextended")

#: magic + version of a POSIX ustar/pax header and of a GNU header.
MAGIC_USTAR: Final = b"ustar\x0000"
MAGIC_GNU: Final = b"ustar  \x00"
STAR_TRAILER: Final = b"tar\x00"
#: Typeflags with no data section, whatever the size field says (Go's isHeaderOnlyType).
HEADER_ONLY_TYPES: Final = frozenset("123456")
#: PAX extended/global headers and GNU long name/link: they describe the next header.
META_TYPES: Final = frozenset("xgLK")
_HALF: Final = BLOCK_SIZE // 2
_NAME_KEYS: Final = frozenset(("path", "linkpath", "uname", "gname"))
#: PAX keys :func:`pax_overrides` acts on; an entry without any of them needs no call.
PAX_OVERRIDE_KEYS: Final = frozenset(
    (
        "size",
        "uid",
        "gid",
        "GNU.sparse.map",
        "GNU.sparse.numblocks",
        "GNU.sparse.major",
        "GNU.sparse.size",
    )
)
_SPARSE_KEYS: Final = (
    "GNU.sparse.map",
    "GNU.sparse.numblocks",
    "GNU.sparse.major",
    "GNU.sparse.size",
)


class TarFormatError(LayerFormatError):
    """The stream is not a valid tar: bad checksum, field, PAX record, name or structure."""


class TarTruncatedError(LayerFormatError):
    """The stream ended inside a header, a PAX/GNU body or an entry's data."""


# --- field decoding ------------------------------------------------------------------------


def header_sum(block: Octets, at: int = 0) -> int:
    """Unsigned byte sum of the 512-byte block at ``at`` (checksum field included)."""
    # Each 256-byte half sums to at most 65280 < 65521, so adler32's low half is exactly
    # 1 + sum: two C calls instead of a Python loop over 512 bytes.
    view = memoryview(block)
    return (
        (zlib.adler32(view[at : at + _HALF]) & 0xFFFF)
        + (zlib.adler32(view[at + _HALF : at + BLOCK_SIZE]) & 0xFFFF)
        - 2
    )


def check_header_sum(block: Octets, at: int, field: Octets, offset: int) -> None:
    """Raise TarFormatError unless the chksum ``field`` matches the unsigned or signed sum
    of the block (the field itself counted as eight spaces)."""
    stored = parse_octal(field, "chksum", offset)
    view = memoryview(block)  # header_sum, inlined: this runs for every header block
    unsigned = (
        (zlib.adler32(view[at : at + _HALF]) & 0xFFFF)
        + (zlib.adler32(view[at + _HALF : at + BLOCK_SIZE]) & 0xFFFF)
        - 2
        - sum(field)
        + 8 * 0x20
    )
    if stored == unsigned:
        return
    signed = sum(b - 256 if b > 127 else b for b in block[at : at + BLOCK_SIZE])
    signed -= sum(b - 256 if b > 127 else b for b in field)
    if stored != signed + 8 * 0x20:
        raise TarFormatError(
            f"header checksum {stored} does not match the header (computed {unsigned})",
            offset=offset,
        )


def cstr(raw: Octets) -> Octets:
    """The bytes of a NUL-terminated field up to its first NUL."""
    end = raw.find(0)
    return raw if end < 0 else raw[:end]


def join_prefix(raw_prefix: bytes, raw_name: bytes) -> Octets:
    """ustar ``prefix/name`` (just ``name`` when the prefix is empty)."""
    name = cstr(raw_name)
    if raw_prefix[:1] not in (b"", b"\0"):
        return cstr(raw_prefix) + b"/" + name
    return name


def decode_name(raw: Octets, what: str, offset: int) -> str:
    """Strict UTF-8 decoding of a name; TarFormatError naming the bad byte otherwise."""
    try:
        return raw.decode()
    except UnicodeDecodeError as e:
        raise TarFormatError(
            f"{what} is not valid UTF-8 (byte {e.start}: {raw[e.start : e.start + 1]!r})",
            entry=raw.decode(errors="replace"),
            offset=offset,
        ) from e


def parse_octal(raw: Octets, what: str, offset: int) -> int:
    """Octal text with leading/trailing spaces and NULs ignored (Go's parseOctal)."""
    digits = raw.strip(b" \0")
    if not digits:
        return 0
    if digits.isdigit():  # ASCII digits only: no sign, underscore or inner space for int()
        try:
            return int(digits, 8)
        except ValueError:
            pass
    raise TarFormatError(f"{what} field {raw!r} is not an octal number", offset=offset)


def parse_number(raw: Octets, what: str, offset: int) -> int:
    """A numeric field: base-256 if the first byte has bit 7 set, else octal (Go's
    parseNumeric). Base-256 values are two's complement when bit 6 is set too."""
    if raw and raw[0] & 0x80:
        negative = bool(raw[0] & 0x40)
        inverted = bytes(b ^ 0xFF for b in raw) if negative else raw
        value = int.from_bytes(inverted, "big") & ((1 << (8 * len(raw) - 1)) - 1)
        if value >> 63:
            raise TarFormatError(f"{what} field overflows 64 bits", offset=offset)
        return ~value if negative else value
    return parse_octal(raw, what, offset)


def parse_optional_number(raw: Octets, what: str, offset: int) -> int | None:
    """Like :func:`parse_number`, but None for an all-space/NUL field."""
    if not raw.strip(b" \0"):
        return None
    return parse_number(raw, what, offset)


def pax_overrides(
    pax: Mapping[str, str], size: int, uid: int, gid: int, offset: int
) -> tuple[int, int, int]:
    """Apply PAX ``size``/``uid``/``gid`` (empty values keep the ustar value); refuse PAX
    GNU sparse files."""
    for key in _SPARSE_KEYS:
        if key in pax:
            raise TarFormatError(
                f"PAX GNU sparse files ({key}) are not supported; re-create the layer "
                "without sparse files",
                entry=pax.get("path") or pax.get("GNU.sparse.name"),
                offset=offset,
            )
    values = []
    for key, current in (("size", size), ("uid", uid), ("gid", gid)):
        text = pax.get(key)
        if text:
            if not text.isascii() or not text.isdigit():
                raise TarFormatError(f"PAX {key} {text!r} is not a decimal number", offset=offset)
            current = int(text)
            if current >= 1 << 63:
                raise TarFormatError(f"PAX {key} {text!r} overflows 64 bits", offset=offset)
        values.append(current)
    return values[0], values[1], values[2]


def parse_pax(body: Octets, offset: int) -> Mapping[str, str]:
    """Parse a PAX header body into its records (Go's parsePAX); later duplicates win.

    Each record is ``"<len> <key>=<value>\\n"``: ``len`` plain ASCII digits counting the
    whole record, >= 5; key non-empty, UTF-8, without NUL; ``path``, ``linkpath``,
    ``uname``, ``gname`` strict UTF-8 without NUL; other values decoded with
    ``surrogateescape``. Raises TarFormatError naming the header's ``offset``.
    """
    if body.isascii() and body.find(0) < 0:
        # Fast path for the common case: every line is one record whose length matches.
        lines = body.decode("ascii").split("\n")
        if lines.pop() == "":
            records: dict[str, str] = {}
            for line in lines:
                length, _, record = line.partition(" ")
                key, equals, value = record.partition("=")
                # The canonical spelling of the length only (no sign, space or leading zero:
                # those records take the exact path, which decides on them).
                if not (equals and key and str(len(line) + 1) == length):
                    break
                records[key] = value
            else:
                # A matching length implies len >= 5: a record has at least "d k=\n".
                return MappingProxyType(records)
    return _parse_pax_exact(body, offset)


def _parse_pax_exact(body: Octets, offset: int) -> Mapping[str, str]:
    records: dict[str, str] = {}
    position = 0
    end = len(body)
    while position < end:
        space = body.find(b" ", position, min(end, position + 21))
        if space < 0:
            raise TarFormatError(
                f"PAX record at body offset {position} has no length", offset=offset
            )
        length_text = body[position:space]
        if not length_text.isdigit():
            raise TarFormatError(f"PAX record length {length_text!r} is not decimal", offset=offset)
        length = int(length_text)
        record_end = position + length
        if length < 5 or record_end > end or record_end <= space + 1:
            raise TarFormatError(f"PAX record length {length} is out of range", offset=offset)
        if body[record_end - 1] != 0x0A:
            raise TarFormatError("PAX record does not end with a newline", offset=offset)
        equals = body.find(b"=", space + 1, record_end - 1)
        if equals <= space + 1:
            raise TarFormatError(
                "PAX record has no key" if equals == space + 1 else "PAX record has no '='",
                offset=offset,
            )
        raw_key = body[space + 1 : equals]
        raw_value = body[equals + 1 : record_end - 1]
        if 0 in raw_key:
            raise TarFormatError(f"PAX key {raw_key!r} contains NUL", offset=offset)
        try:
            key = raw_key.decode()
        except UnicodeDecodeError as e:
            raise TarFormatError(f"PAX key {raw_key!r} is not UTF-8", offset=offset) from e
        if key in _NAME_KEYS:
            if 0 in raw_value:
                raise TarFormatError(f"PAX {key} contains NUL", offset=offset)
            records[key] = decode_name(raw_value, f"PAX {key}", offset)
        else:
            records[key] = raw_value.decode("utf-8", "surrogateescape")
        position = record_end
    return MappingProxyType(records)
