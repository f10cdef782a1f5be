"""A streaming, bounded-memory reader of ustar, PAX and GNU tar streams (no ``tarfile``).

The reader reproduces what Go's ``archive/tar`` hands hcsshim, because that is the
contract a Windows layer was written against:

* PAX ``x`` records apply to the next header (``path``, ``linkpath``, ``size``, ``uid``,
  ``gid``; an empty value keeps the ustar value) and *all* records, known or not, stay in
  :attr:`TarHeader.pax`. Each record must be ``"<len> <key>=<value>\\n"`` with len >= 5 (plain
  ASCII digits), a non-empty key without NUL, and ``path``/``linkpath``/``uname``/``gname``
  without NUL. A later ``x`` header before the same entry replaces the earlier one.
* GNU ``L``/``K`` long names apply to the next header and take precedence over PAX.
* A global ``g`` header is yielded as an entry of its own (typeflag ``g``, its records in
  ``pax``, no data) and is **not** applied to later entries.
* A PAX or GNU long-name body over 1 MiB is refused (:data:`MAX_SPECIAL_SIZE`).
* Typeflag ``'\\0'`` becomes ``'5'`` if the name ends in ``/``, else ``'0'``.
* Header-only types (``1`` ``2`` ``3`` ``4`` ``5`` ``6``) have no data section whatever the
  size field says; :attr:`TarHeader.size` still reports the declared size, as Go does.
* Numeric fields are octal (leading/trailing spaces and NULs ignored, nothing else allowed)
  or base-256 (first byte 0x80/0xff). The header checksum must match its unsigned or signed
  sum.
* End of archive: two zero blocks; one zero block then end of stream; or end of stream at a
  header boundary. A zero block followed by a non-zero block is a format error. End of stream
  inside a header, a special body or entry data is :class:`TarTruncatedError`. Nothing after
  the end marker is read.

Choices where Go differs or the spec is silent (each pinned by a test in
``tests/unit/wclayer/test_tarstream.py``):

* Names (``path``, ``linkpath``, ustar name/prefix/linkname, GNU long names) must be strict
  UTF-8, and the record keys too. Values of other PAX keys that are not UTF-8 are kept
  with ``surrogateescape`` (``value.encode("utf-8", "surrogateescape")`` gives the bytes
  back), so a binary ``SCHILY.xattr.*`` value does not reject a layer that never uses it.
* A PAX ``x`` or GNU ``L``/``K`` header that is the last thing in the stream (no entry
  follows) is :class:`TarTruncatedError` (Go silently drops it).
* Old-GNU sparse (``S``) entries: their extension blocks are consumed, the entry is yielded
  with typeflag ``S`` and its data is the *physical* chunk data (not expanded). Contiguous
  files (``7``) are yielded with their data and typeflag. The importer decides.
* PAX GNU sparse files (``GNU.sparse.*`` format 0.0, 0.1 and 1.0) are refused with
  :class:`TarFormatError`: expanding them is not implemented, and silently yielding the
  sparse map as data would corrupt the file.
* One trailing ``/`` is removed from names and recorded in :attr:`TarHeader.trailing_slash`.
* Skipped data is read and discarded, except that on a seekable source (a regular file) a
  long skip seeks to the last byte of the skipped range and reads that byte, as Go does:
  a seek alone past the end of a file succeeds, the read then detects the truncation.

The reader never creates a host path; entry names are data for the caller to validate.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple, Protocol
from zlib import adler32

from cimsnap.wclayer.errors import LayerStateError
from cimsnap.wclayer.tarformat import (
    BLOCK_SIZE,
    GNU_ISEXTENDED_INDEX,
    GNU_SPARSE_EXT_FLAG,
    GNU_TAIL_FAST,
    HEADER_ONLY_TYPES,
    MAGIC_GNU,
    MAGIC_USTAR,
    MAX_SPECIAL_SIZE,
    META_TYPES,
    PAX_OVERRIDE_KEYS,
    STAR_TAIL_FAST,
    STAR_TRAILER,
    STAR_TRAILER_END,
    STAR_TRAILER_START,
    TAIL_OFFSET,
    TYPEFLAG_AT,
    USTAR_ENTRY_FAST,
    USTAR_NUMBER_FIELDS,
    USTAR_NUMBERS_FAST,
    USTAR_SPANS,
    Octets,
    TarFormatError,
    TarTruncatedError,
    check_header_sum,
    cstr,
    decode_name,
    join_prefix,
    parse_number,
    parse_optional_number,
    parse_pax,
    pax_overrides,
)

_READ_SIZE: Final = 1 << 20
_DIRECT_READ_MIN: Final = 64 * 1024
#: Skips longer than this seek instead of reading, when the source is seekable.
_SEEK_MIN: Final = 256 * 1024
_REFILL_AFTER_SEEK: Final = 16 * 1024
_EMPTY_PAX: Final[Mapping[str, str]] = MappingProxyType({})
_NAME_END: Final = USTAR_SPANS["name"][1]
_SIZE_START, _SIZE_END = USTAR_SPANS["size"]
_CHKSUM_START, _CHKSUM_END = USTAR_SPANS["chksum"]
#: mode, uid, gid, size and mtime are contiguous; one translate() checks them all.
_NUMBERS_START = USTAR_SPANS[USTAR_NUMBER_FIELDS[0]][0]
_NUMBERS_END = USTAR_SPANS[USTAR_NUMBER_FIELDS[-1]][1]
_HALF: Final = BLOCK_SIZE // 2
#: Eight spaces (the checksum field as counted) minus the 1 of the field's own adler32.
_SPACES_SUM_MINUS_ONE: Final = 8 * 0x20 - 1
_MAGIC, _VERSION = MAGIC_USTAR[:6], MAGIC_USTAR[6:]
_PLAIN_OCTAL: Final = b"01234567 \0"
_NUL_TO_SPACE: Final = bytes.maketrans(b"\0", b" ")
_OCTAL_BASES: Final = (8,) * len(USTAR_NUMBER_FIELDS)
_OCTAL_DIGITS: Final = b"01234567"

__all__ = [
    "TarEntry",
    "TarFormatError",
    "TarHeader",
    "TarReader",
    "TarTruncatedError",
]


class TarHeader(NamedTuple):
    """One entry's header after PAX and GNU long-name processing (Go's ``tar.Header``).

    Immutable. A NamedTuple rather than a frozen dataclass: it is built once per entry on
    the hot path, and a tuple is built four times faster (``_replace`` replaces
    ``dataclasses.replace``).

    ``name``/``linkname``: strict UTF-8, one trailing ``/`` of ``name`` removed and noted in
    ``trailing_slash``. ``typeflag``: one character, ``'\\0'`` normalised. ``size``: the
    declared size (PAX ``size`` wins); header-only types have no data whatever it says.
    ``mtime``: whole seconds from the ustar field (exact times are in ``pax``). ``pax``: every
    record of the entry's own PAX header. ``offset``: stream offset of the entry's first
    header block (its PAX/GNU headers included); ``data_offset``: offset of its data.
    ``atime``/``ctime``: whole seconds from a GNU or STAR header, else None.
    """

    name: str
    typeflag: str
    size: int
    linkname: str
    mode: int
    uid: int
    gid: int
    mtime: int
    pax: Mapping[str, str]
    offset: int
    data_offset: int
    trailing_slash: bool = False
    atime: int | None = None
    ctime: int | None = None


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _seek_of(stream: object) -> Callable[[int, int], int] | None:
    """The source's ``seek`` if it says it is seekable (regular files), else None."""
    seekable = getattr(stream, "seekable", None)
    try:
        if seekable is None or not seekable():
            return None
    except (OSError, ValueError):
        return None
    seek: Callable[[int, int], int] | None = getattr(stream, "seek", None)
    return seek


class TarEntry:
    """One entry: its :attr:`header` and a bounded stream of its data.

    :meth:`read` and :meth:`readinto` never go past the entry's data; they return fewer
    bytes than asked only at the end of the data. A stream that ends early raises
    :class:`TarTruncatedError`. Once the reader moves to the next entry, the unread rest is
    skipped and further reads raise :class:`LayerStateError`.
    """

    __slots__ = ("_reader", "header", "remaining")

    def __init__(self, reader: TarReader, header: TarHeader, data_size: int) -> None:
        self._reader: TarReader | None = reader
        self.header = header
        #: Bytes of data not read yet.
        self.remaining = data_size

    def read(self, size: int = -1) -> bytes:
        """Return the next ``min(size, remaining)`` bytes (all remaining if ``size`` < 0)."""
        if size < 0 or size > self.remaining:
            size = self.remaining
        if size == 0:
            return b""
        reader = self._reader
        if reader is not None and len(reader._buf) - reader._pos >= size:
            start = reader._pos
            reader._pos = start + size
            self.remaining -= size
            with memoryview(reader._buf) as buffered:
                return bytes(buffered[start : start + size])
        buffer = bytearray(size) if size <= _READ_SIZE else None
        if buffer is not None:
            self.readinto(buffer)
            return bytes(buffer)
        parts = []
        while size:
            step = min(size, _READ_SIZE)
            chunk = bytearray(step)
            self.readinto(chunk)
            parts.append(chunk)
            size -= step
        return b"".join(parts)

    def readinto(self, buffer: Any) -> int:
        """Fill ``buffer`` with up to ``remaining`` bytes; return the count (0 at the end)."""
        reader = self._reader
        if reader is None:
            raise LayerStateError(
                f"entry {self.header.name!r}: the reader has moved past this entry's data"
            )
        view = memoryview(buffer).cast("B")
        want = min(len(view), self.remaining)
        done = 0
        while done < want:
            got = reader._read_into(view[done:want])
            if not got:
                self.remaining -= done
                raise TarTruncatedError(
                    f"stream ends {self.header.size - self.remaining} bytes into the entry's "
                    f"data ({self.remaining} of {self.header.size} bytes missing)",
                    entry=self.header.name,
                    offset=reader.position,
                )
            done += got
        self.remaining -= done
        return done

    def _detach(self) -> None:
        self._reader = None


class TarReader:
    """Iterate over the entries of a tar stream (any object with ``read(n)``).

    Yields :class:`TarEntry` objects; requesting the next entry skips the unread data of the
    previous one. :attr:`position` is the number of stream bytes consumed so far (for
    progress). Errors: :class:`TarFormatError`, :class:`TarTruncatedError` (both
    :class:`LayerFormatError`, naming the entry when known and the stream offset).
    """

    def __init__(self, stream: _Source) -> None:
        self._stream = stream
        self._readinto = getattr(stream, "readinto", None)
        self._seek = _seek_of(stream)
        self._refill = _READ_SIZE
        self._buf: bytes | bytearray = b""
        self._pos = 0
        self._base = 0
        self._current: TarEntry | None = None
        self._pad = 0
        self._done = False

    @property
    def position(self) -> int:
        """Stream bytes consumed so far (headers, data and padding handed out or skipped)."""
        return self._base + self._pos

    def __iter__(self) -> Iterator[TarEntry]:
        return self

    def next(self) -> TarEntry | None:
        """Return the next entry, or None at the end of the archive."""
        try:
            return self.__next__()
        except StopIteration:
            return None

    # -- buffer ----------------------------------------------------------------------------

    def _fill(self, size: int) -> bool:
        """Make ``size`` bytes available at ``_pos``; False if the stream ends first.

        The unread rest moves to the front of a fresh buffer and the source reads straight
        into the space after it: one copy per stream byte (a ``bytes`` join would copy
        every refill a second time). Buffers are replaced, never resized, so a memoryview
        of an old one can never pin it.
        """
        leftover = len(self._buf) - self._pos
        refill = self._refill
        self._refill = _READ_SIZE
        fresh = bytearray(leftover + max(refill, size - leftover))
        have = leftover
        with memoryview(fresh) as view:
            if leftover:
                with memoryview(self._buf) as old:
                    view[:leftover] = old[self._pos :]
            readinto = self._readinto
            while have < size:
                if readinto is not None:
                    got = readinto(view[have:]) or 0
                else:
                    chunk = self._stream.read(len(fresh) - have)
                    got = len(chunk)
                    view[have : have + got] = chunk
                if not got:
                    break
                have += got
        if have < len(fresh):
            del fresh[have:]
        self._base += self._pos
        self._buf = fresh
        self._pos = 0
        return have >= size

    def _read_into(self, view: memoryview) -> int:
        """Copy up to ``len(view)`` stream bytes into ``view``; 0 only at end of stream."""
        available = len(self._buf) - self._pos
        if available:
            size = min(available, len(view))
            with memoryview(self._buf) as source:  # one copy, straight into the caller's buffer
                view[:size] = source[self._pos : self._pos + size]
            self._pos += size
            return size
        self._base += self._pos
        self._buf = b""
        self._pos = 0
        if len(view) >= _DIRECT_READ_MIN and self._readinto is not None:
            got = self._readinto(view) or 0
            self._base += got
            return got
        if not self._fill(1):
            return 0
        return self._read_into(view)

    def _skip(self, size: int, name: str) -> None:
        available = len(self._buf) - self._pos
        if size <= available:
            self._pos += size
            return
        size -= available
        self._base += len(self._buf)
        self._buf = b""
        self._pos = 0
        if self._seek is not None and size > _SEEK_MIN:
            # Go's trick: seek to the last byte and read it, so a stream that is too short
            # still fails here (a seek past the end of a file succeeds silently). The next
            # refill reads little: the entry after this one may be skipped by a seek too.
            self._seek(size - 1, 1)
            self._base += size - 1
            size = 1
            self._refill = _REFILL_AFTER_SEEK
        scratch = memoryview(bytearray(min(size, _READ_SIZE)))
        while size:
            step = min(size, len(scratch))
            if self._readinto is not None:
                got = self._readinto(scratch[:step]) or 0
            else:
                got = len(self._stream.read(step))
            if not got:
                raise TarTruncatedError(
                    f"stream ends with {size} bytes of the entry's data and padding missing",
                    entry=name,
                    offset=self._base,
                )
            self._base += got
            size -= got

    # -- headers ---------------------------------------------------------------------------

    def _block(self, what: str, entry: str | None) -> int | None:
        """Position of the next 512-byte block in ``_buf`` (consumed), None at a clean end."""
        if len(self._buf) - self._pos < BLOCK_SIZE and not self._fill(BLOCK_SIZE):
            if len(self._buf) == self._pos:
                return None
            raise TarTruncatedError(
                f"stream ends inside {what} ({len(self._buf) - self._pos} of 512 bytes)",
                entry=entry,
                offset=self.position,
            )
        at = self._pos
        self._pos = at + BLOCK_SIZE
        return at

    def _body(self, size: int, kind: str, offset: int) -> Octets:
        """Read a PAX/GNU special body of ``size`` bytes plus its padding."""
        if size > MAX_SPECIAL_SIZE:
            raise TarFormatError(
                f"{kind} body of {size} bytes exceeds the {MAX_SPECIAL_SIZE}-byte limit",
                offset=offset,
            )
        padded = size + (-size) % BLOCK_SIZE
        if len(self._buf) - self._pos < padded and not self._fill(padded):
            raise TarTruncatedError(f"stream ends inside the {kind} body", offset=offset)
        body = self._buf[self._pos : self._pos + size]
        self._pos += padded
        return body

    def __next__(self) -> TarEntry:
        """Return the next entry; StopIteration at the end of the archive."""
        entry = self._current
        if entry is not None:
            self._current = None
            entry._reader = None
            skip = entry.remaining + self._pad
            if skip:
                if len(self._buf) - self._pos >= skip:
                    self._pos += skip
                else:
                    self._skip(skip, entry.header.name)
        if self._done:
            raise StopIteration
        pax: Mapping[str, str] | None = None
        long_name: str | None = None
        long_link: str | None = None
        first_offset: int | None = None
        while True:
            buf = self._buf
            at = self._pos
            if len(buf) - at >= BLOCK_SIZE:
                self._pos = at + BLOCK_SIZE
            else:
                block = self._block("a header", None)
                if block is None:
                    if first_offset is not None:
                        raise TarTruncatedError(
                            "stream ends after a PAX or GNU long-name header, before its entry",
                            offset=self.position,
                        )
                    self._done = True
                    raise StopIteration
                buf = self._buf
                at = block
            block_offset = self._base + at
            if buf[at] == 0 and buf.count(0, at, at + BLOCK_SIZE) == BLOCK_SIZE:
                self._end_of_archive(block_offset, first_offset)
                raise StopIteration
            if first_offset is None:
                first_offset = block_offset
            # Fast path: the field holds exactly what tar writers put there ("%06o\0 " of the
            # unsigned sum, the field counted as spaces); anything else gets the full check.
            # adler32's low half of <= 256 bytes is 1 + their plain sum (see header_sum).
            field = buf[at + _CHKSUM_START : at + _CHKSUM_END]
            if field != b"%06o\0 " % (
                (adler32(buf[at : at + _HALF]) & 0xFFFF)
                + (adler32(buf[at + _HALF : at + BLOCK_SIZE]) & 0xFFFF)
                - (adler32(field) & 0xFFFF)
                + _SPACES_SUM_MINUS_ONE
            ):
                check_header_sum(buf, at, field, block_offset)
            typeflag = chr(buf[at + TYPEFLAG_AT])
            if typeflag not in META_TYPES:
                return self._entry(
                    buf, at, typeflag, block_offset, first_offset, pax, long_name, long_link
                )
            raw_size = buf[at + _SIZE_START : at + _SIZE_END]
            digits = raw_size.strip(b" \0")
            if digits.isdigit() and digits.translate(None, _OCTAL_DIGITS) == b"":
                size = int(digits, 8)
            else:
                size = parse_number(raw_size, "size", block_offset)
                if size < 0:
                    raise TarFormatError("negative size", offset=block_offset)
            padded = size + (-size) % BLOCK_SIZE
            if size <= MAX_SPECIAL_SIZE and len(buf) - self._pos >= padded:
                body: Octets = buf[self._pos : self._pos + size]  # _body's common case
                self._pos += padded
            else:
                kind = "PAX header" if typeflag in "xg" else "GNU long name"
                body = self._body(size, kind, block_offset)
            if typeflag == "x" or typeflag == "g":
                records = parse_pax(body, block_offset)
                if typeflag == "g":
                    self._pad = 0
                    raw_name = cstr(buf[at : at + _NAME_END])
                    name = decode_name(raw_name, "name", block_offset)
                    header = TarHeader(
                        name, "g", 0, "", 0, 0, 0, 0, records, first_offset, self.position
                    )
                    entry = TarEntry(self, header, 0)
                    self._current = entry
                    return entry
                pax = records
            elif typeflag == "L":
                long_name = decode_name(cstr(body), "GNU long name", block_offset)
            else:
                long_link = decode_name(cstr(body), "GNU long link name", block_offset)

    def _end_of_archive(self, block_offset: int, first_offset: int | None) -> None:
        if first_offset is not None:
            raise TarFormatError(
                "zero block where the entry announced by a PAX or GNU header should be",
                offset=block_offset,
            )
        self._done = True
        at = self._block("the end-of-archive marker", None)
        if at is None:
            return
        if self._buf.count(0, at, at + BLOCK_SIZE) != BLOCK_SIZE:
            raise TarFormatError(
                "a zero block is followed by a non-zero block", offset=block_offset + BLOCK_SIZE
            )

    def _entry(
        self,
        buf: Octets,
        at: int,
        typeflag: str,
        block_offset: int,
        first_offset: int,
        pax: Mapping[str, str] | None,
        long_name: str | None,
        long_link: str | None,
    ) -> TarEntry:
        raw_name, raw_link, magic, version, raw_prefix = USTAR_ENTRY_FAST.unpack_from(buf, at)
        numbers = buf[at + _NUMBERS_START : at + _NUMBERS_END]
        mode = uid = gid = size = mtime = -1
        if not numbers.translate(None, _PLAIN_OCTAL):
            # Only octal digits, spaces and NULs: with NULs made spaces, int() accepts exactly
            # the fields Go's parseOctal does, except an empty one (ValueError, strict path).
            try:
                mode, uid, gid, size, mtime = map(
                    int, USTAR_NUMBERS_FAST.unpack(numbers.translate(_NUL_TO_SPACE)), _OCTAL_BASES
                )
            except ValueError:
                mode = -1
        if mode < 0:
            raw_mode, raw_uid, raw_gid, raw_size, raw_mtime = USTAR_NUMBERS_FAST.unpack(numbers)
            mode = parse_number(raw_mode, "mode", block_offset)
            uid = parse_number(raw_uid, "uid", block_offset)
            gid = parse_number(raw_gid, "gid", block_offset)
            size = parse_number(raw_size, "size", block_offset)
            mtime = parse_number(raw_mtime, "mtime", block_offset)
        atime = ctime = None
        if magic == _MAGIC and version == _VERSION:
            if buf.startswith(STAR_TRAILER, at + STAR_TRAILER_START, at + STAR_TRAILER_END):
                star = STAR_TAIL_FAST.unpack_from(buf, at + TAIL_OFFSET)
                raw_prefix = star[0]
                atime = parse_optional_number(star[1], "atime", block_offset)
                ctime = parse_optional_number(star[2], "ctime", block_offset)
        else:
            raw_prefix = b"\0"  # GNU and v7 headers have no prefix
            if magic + version == MAGIC_GNU:
                gnu = GNU_TAIL_FAST.unpack_from(buf, at + TAIL_OFFSET)
                atime = parse_optional_number(gnu[0], "atime", block_offset)
                ctime = parse_optional_number(gnu[1], "ctime", block_offset)
                if typeflag == "S" and gnu[GNU_ISEXTENDED_INDEX] != b"\0":
                    self._skip_sparse_extensions(block_offset)
        # Overrides first (GNU long names win over PAX, as in Go): the ustar field they
        # replace is never decoded, so a long name cut mid-character there is harmless.
        if pax:
            if not PAX_OVERRIDE_KEYS.isdisjoint(pax):
                size, uid, gid = pax_overrides(pax, size, uid, gid, block_offset)
            name = long_name or pax.get("path") or ""
            linkname = long_link or pax.get("linkpath") or ""
        else:
            pax = _EMPTY_PAX
            name = long_name or ""
            linkname = long_link or ""
        if not name:
            # The ustar name: NUL-terminated, ``prefix/name`` when the prefix is set.
            end = raw_name.find(0)
            if end >= 0:
                raw_name = raw_name[:end]
            if raw_prefix[0]:
                raw_name = join_prefix(raw_prefix, raw_name)
            try:
                name = raw_name.decode()
            except UnicodeDecodeError:
                name = decode_name(raw_name, "name", block_offset)  # raises, naming the byte
        if not linkname and raw_link[0]:
            linkname = decode_name(cstr(raw_link), "linkname", block_offset)
        if size < 0:
            raise TarFormatError(f"negative size {size}", entry=name, offset=block_offset)
        trailing = name.endswith("/")
        if typeflag == "\0":
            typeflag = "5" if trailing else "0"
        if trailing:
            name = name[:-1]
        data_size = 0 if typeflag in HEADER_ONLY_TYPES else size
        self._pad = (-data_size) % BLOCK_SIZE
        header = TarHeader(
            name,
            typeflag,
            size,
            linkname,
            mode,
            uid,
            gid,
            mtime,
            pax,
            first_offset,
            self._base + self._pos,
            trailing,
            atime,
            ctime,
        )
        entry = TarEntry(self, header, data_size)
        self._current = entry
        return entry

    def _skip_sparse_extensions(self, block_offset: int) -> None:
        while True:
            at = self._block("an old-GNU sparse extension block", None)
            if at is None:
                raise TarTruncatedError(
                    "stream ends inside the old-GNU sparse extension blocks",
                    offset=block_offset,
                )
            if self._buf[at + GNU_SPARSE_EXT_FLAG] == 0:
                return
