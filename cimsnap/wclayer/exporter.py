r"""Export a CIM layer as the Windows layer tar that reproduces it over its parent.

:func:`export_layer` compares a layer's CIM with its parent's (the CIM it was forked from)
and writes, to a binary stream, an uncompressed PAX tar in the dialect of
the Windows layer format: importing it over the parent (``import_layer``) yields a CIM
with the same paths, attributes, times, security descriptors, EAs, reparse points,
alternate streams, hard-link groups and data.

Representation (what the tar holds):

* **Order and form.** Depth first from the root in the CIM's stored (upcase) order, so a
  directory precedes its children; in each directory the whiteouts come first, then the
  entries. Names use ``/``; directories have no trailing slash. Every header is ustar with
  uid/gid 0, empty uname/gname, mode 0644 (0755 for directories and reparse points) and the
  ustar mtime set to whole seconds (0 before 1970); output is byte-for-byte deterministic.
* **Metadata** (PAX records, in this order): ``path``/``linkpath``/``size`` when ustar
  cannot hold them, ``MSWINDOWS.fileattr`` (the attributes a CIM reports, DIRECTORY and
  REPARSE_POINT included), ``MSWINDOWS.rawsd`` (base64 of the stored self-relative SD;
  omitted only if the record has none), ``MSWINDOWS.xattr.<name>`` per EA (sorted by name),
  ``MSWINDOWS.mountpoint=1`` for junctions, ``LIBARCHIVE.creationtime``, ``mtime``,
  ``atime`` and ``ctime`` as exact 100 ns PAX times (Go's form: trailing zeros trimmed,
  negative values for FILETIMEs before 1970).
* **Entries.** A directory is typeflag 5; a file typeflag 0 with its data (sparse ranges
  and PE-image streams expanded, as a reader sees them); symlinks (tag 0xA000000C) and
  junctions (0xA0000003) typeflag 2 whose link name is the reparse buffer's print name
  (the substitute name without ``\??\`` when the print name is empty). Each alternate
  stream follows its file as ``<file>:<stream>:$DATA``.
* **What is emitted.** Directories new in the layer, or whose own metadata or streams
  changed (a directory that only gained or lost entries is not re-emitted); every name of
  a file object that is new or changed (the first name in tar order carries the data, the
  others are typeflag 1 links to it); new names of unchanged parent files (typeflag 1 to a
  name that the layer kept, so the target exists throughout the import); whiteouts
  (``.wh.<name>``) for names the layer removed, for directories it replaced by another
  object, and for names whose case changed.
* **Unchanged** is decided without reading data: a fork keeps every inherited object's
  file ID and record in place (cim.pending), so an object is unchanged iff its 96 record
  bytes (data, SD, EA and stream-table offsets included) are equal in both images. The
  changed records are found by comparing the two images' file tables (a fork references
  the parent's unchanged tables in place), and only the directories holding them and their
  ancestors are walked, so a small layer over a large parent exports in time proportional
  to the layer. A link to an unchanged file takes as target a name the layer kept, found
  through the file's ParentFileId chain, else during the walk, else (rarely) by one walk
  of the directories the layer kept; a file with no kept name is emitted whole at its first
  new name.
* **Hives.** A non-base layer's ``Hives\*_Delta`` files are ordinary content (a layer
  that re-imported a delta has a new object there, so it is emitted), while
  ``Hives\*_BASE`` is never emitted nor whited out: the importer regenerates it by merging
  the delta into the parent's. For a base layer (no parent), the root's ``Hives`` directory
  and ``layout`` file are omitted (the importer regenerates them and links
  ``Hives\*_BASE`` to the config hives, which are exported as files under
  ``Files\Windows\System32\config``).

Refused, with :class:`LayerFormatError` naming the path (the tar dialect cannot carry
them): reparse tags other than symlink and mount point, a reparse directory that has
entries, EAs with non-zero flags or names that are not UTF-8, names starting with ``.wh.``, and a
directory that lost an alternate stream. A damaged child CIM raises LayerFormatError, a
missing or damaged parent, or a child that is not a fork of it (the parent must be the CIM
it was forked from, not an older ancestor: a tar over that would lose the hive deltas of
the layers in between), LayerParentError; cancellation LayerCancelledError; on error
part of the tar may have been written to ``out`` (the caller discards it).

Memory is bounded by the plan of changed entries (no data) plus one directory's entries;
data is read from the region files with ``pread`` into one 1 MiB buffer (the mapped
regions are never faulted in), so ``out.write`` must consume each chunk before returning.
"""

from __future__ import annotations

import base64
import errno
import fcntl
import io
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

from cimsnap.cim import CimError, CimFormatError, CimReader, FileRecord, open_image
from cimsnap.cim.format import (
    FILE_RECORD,
    FILE_RECORD_SIZE,
    FILES_PER_TABLE,
    IO_REPARSE_TAG_SYMLINK,
    REPARSE_DATA_HEADER_FAST,
    STREAM_DESCRIPTOR_FAST,
    SYMLINK_REPARSE_HEADER,
    StreamType,
    derive_fast,
    field_offsets,
    unpack_length_and_type,
)
from cimsnap.cim.linktable import LinkTable
from cimsnap.cim.offsets import split_region_offset
from cimsnap.cim.records import StreamDescriptor
from cimsnap.cim.regions import CimImage
from cimsnap.cim.streams import stream_runs
from cimsnap.wclayer.errors import LayerCancelledError, LayerFormatError, LayerParentError
from cimsnap.wclayer.tarformat import BLOCK_SIZE, MAGIC_USTAR, USTAR_SPANS
from cimsnap.wclayer.winmeta import (
    FILE_FULL_EA_INFORMATION,
    IO_REPARSE_TAG_MOUNT_POINT,
    MOUNT_POINT_REPARSE_HEADER,
    PAX_CREATION_TIME,
    PAX_EA_PREFIX,
    PAX_FILE_ATTRIBUTES,
    PAX_MOUNT_POINT,
    PAX_RAW_SD,
)

__all__ = ["ExportStats", "export_layer", "filetime_from_unix_ns", "filetime_to_pax"]

_EPOCH_AS_FILETIME: Final = 116_444_736_000_000_000
_CHUNK: Final = 1 << 20
_BLOCK: Final = BLOCK_SIZE
_ZEROS: Final = bytes(_CHUNK)
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_SEND_CHUNK: Final = 1 << 30
_USTAR_MAX: Final = 8**11 - 1
_HIVE_BASES: Final = frozenset(
    ("SYSTEM_BASE", "SOFTWARE_BASE", "SAM_BASE", "SECURITY_BASE", "DEFAULTUSER_BASE")
)
_BASE_LAYER_OMITTED: Final = frozenset(("HIVES", "LAYOUT"))


@dataclass(slots=True)
class ExportStats:
    """What :func:`export_layer` wrote: entry counts by kind, data bytes (main streams and
    alternate streams) and the tar's total size."""

    directories: int = 0
    files: int = 0
    links: int = 0
    symlinks: int = 0
    streams: int = 0
    whiteouts: int = 0
    data_bytes: int = 0
    tar_bytes: int = 0

    @property
    def entries(self) -> int:
        """Tar entries written (alternate streams included)."""
        return (
            self.directories + self.files + self.links + self.symlinks + self.streams
        ) + self.whiteouts


def filetime_from_unix_ns(ns: int) -> int:
    """Unix nanoseconds as a FILETIME (100 ns ticks since 1601), rounded down to a tick."""
    return _EPOCH_AS_FILETIME + ns // 100


def filetime_to_pax(filetime: int) -> str:
    """A FILETIME as an exact PAX time: ``[-]secs[.fraction]``, trailing zeros trimmed."""
    ticks = filetime - _EPOCH_AS_FILETIME
    sign = "-" if ticks < 0 else ""
    secs, frac = divmod(abs(ticks), 10_000_000)
    if not frac:
        return f"{sign}{secs}"
    return f"{sign}{secs}.{frac:07d}".rstrip("0")


# -- tar encoding ------------------------------------------------------------------------

_NAME = slice(*USTAR_SPANS["name"])
_MODE = slice(*USTAR_SPANS["mode"])
_SIZE = slice(*USTAR_SPANS["size"])
_MTIME = slice(*USTAR_SPANS["mtime"])
_CHKSUM = slice(*USTAR_SPANS["chksum"])
_TYPEFLAG = slice(*USTAR_SPANS["typeflag"])
_LINKNAME = slice(*USTAR_SPANS["linkname"])
_ZERO_OCTAL: Final = b"0000000\0"
_TEMPLATE: Final = bytearray(_BLOCK)
for _field in ("uid", "gid", "devmajor", "devminor"):
    _TEMPLATE[slice(*USTAR_SPANS[_field])] = _ZERO_OCTAL
_TEMPLATE[USTAR_SPANS["magic"][0] : USTAR_SPANS["version"][1]] = MAGIC_USTAR


def _pax_record(key: str, value: str) -> bytes:
    """``"<length> key=value\\n"``, the length counting its own digits."""
    body = f" {key}={value}\n".encode()
    digits = len(str(len(body)))
    size = len(body) + digits
    if len(str(size)) != digits:  # adding the digits carried into one more digit
        size += 1
    return b"%d" % size + body


def _ustar(name: bytes, typeflag: bytes, size: int, mtime: int, mode: int, link: bytes) -> bytes:
    header = bytearray(_TEMPLATE)
    header[_NAME.start : _NAME.start + len(name)] = name
    header[_MODE] = b"%07o\0" % mode
    header[_SIZE] = b"%011o\0" % size
    header[_MTIME] = b"%011o\0" % mtime
    header[_CHKSUM] = b"        "
    header[_TYPEFLAG] = typeflag
    header[_LINKNAME.start : _LINKNAME.start + len(link)] = link
    header[_CHKSUM] = b"%06o\0 " % sum(header)
    return bytes(header)


def _ustar_name(name: str, key: str, pax: list[bytes]) -> bytes:
    """The ustar form of ``name``; adds a PAX record when ustar cannot hold it exactly."""
    raw = name.encode()
    if len(raw) <= 100 and name.isascii():
        return raw
    pax.append(_pax_record(key, name))
    return name.encode("ascii", "replace")[:100]


def _direct_fd(out: BinaryIO) -> int | None:
    """The descriptor data can be sent to in the kernel: only for a plain write-only file
    object (``open(..., "wb")`` or its raw FileIO) on a regular file or a pipe."""
    if not hasattr(os, "sendfile") or type(out) not in (io.BufferedWriter, io.FileIO):
        return None
    if out.readable():
        return None
    try:
        fd = out.fileno()
        mode = os.fstat(fd).st_mode
        append = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND
    except (OSError, ValueError):
        return None
    if append:  # the kernel refuses to splice into an O_APPEND file
        return None
    return fd if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) else None


class _RegionFiles:
    """Region files opened on demand for ``pread``; ``close()`` closes them."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._fds: dict[int, int] = {}
        self._buffer = memoryview(bytearray(_CHUNK))

    def copy(
        self, region: int, offset: int, length: int, write: Callable[[memoryview], None]
    ) -> None:
        """Pass ``length`` bytes at ``offset`` of region ``region`` to ``write`` in chunks
        (each chunk is reused afterwards: ``write`` must consume it)."""
        fd = self._fd(region)
        view = self._buffer
        while length:
            n = os.preadv(fd, [view[: min(length, _CHUNK)]], offset)
            if n <= 0:
                raise CimFormatError(
                    f"region file {self._paths[region].name}",
                    region=region,
                    offset=offset,
                    why="ends before the data it should hold",
                )
            write(view[:n])
            offset += n
            length -= n

    def send(self, region: int, offset: int, length: int, out_fd: int) -> int:
        """Copy ``length`` bytes at ``offset`` of region ``region`` to ``out_fd`` in the
        kernel (``sendfile``), at ``out_fd``'s position; return the count sent, short only
        if the kernel refuses this pair of files (EINVAL, ENOSYS, EOPNOTSUPP)."""
        fd = self._fd(region)
        sent = 0
        while sent < length:
            try:
                n = os.sendfile(out_fd, fd, offset + sent, min(length - sent, _SEND_CHUNK))
            except OSError as e:
                if e.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return sent
                raise
            if n <= 0:
                raise CimFormatError(
                    f"region file {self._paths[region].name}",
                    region=region,
                    offset=offset + sent,
                    why="ends before the data it should hold",
                )
            sent += n
        return sent

    def _fd(self, region: int) -> int:
        fd = self._fds.get(region)
        if fd is None:
            fd = self._fds[region] = os.open(self._paths[region], os.O_RDONLY | _O_CLOEXEC)
        return fd

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


class _TarWriter:
    """Writes headers and data to ``out`` and counts the bytes."""

    def __init__(self, out: BinaryIO, stats: ExportStats, regions: _RegionFiles) -> None:
        self._write = out.write
        self._flush = out.flush
        self._direct = _direct_fd(out)
        self.cache = _RecordCache()
        self.stats = stats
        self._regions = regions

    def write(self, data: bytes | memoryview) -> None:
        self._write(data)
        self.stats.tar_bytes += len(data)

    def header(
        self,
        name: str,
        typeflag: bytes,
        *,
        size: int = 0,
        records: list[bytes] | None = None,
        link: str = "",
        mtime: int = 0,
        mode: int = 0o644,
    ) -> None:
        pax: list[bytes] = []
        ustar_name = _ustar_name(name, "path", pax)
        ustar_link = _ustar_name(link, "linkpath", pax) if link else b""
        if size > _USTAR_MAX:
            pax.append(_pax_record("size", str(size)))
        if records:
            pax.extend(records)
        ustar_size = size if size <= _USTAR_MAX else 0
        header = _ustar(ustar_name, typeflag, ustar_size, mtime, mode, ustar_link)
        if pax:
            body = b"".join(pax)
            self.write(
                b"".join(
                    (
                        _ustar(b"././@PaxHeader", b"x", len(body), 0, 0o644, b""),
                        body,
                        _ZEROS[: -len(body) % _BLOCK],
                        header,
                    )
                )
            )
        else:
            self.write(header)

    def pad(self, size: int) -> None:
        rest = -size % _BLOCK
        if rest:
            self.write(_ZEROS[:rest])

    def data(self, reader: CimReader, what: str, stream: StreamDescriptor) -> int:
        """Copy a stream's bytes (holes as zeros); return its length.

        Plain data streams are read with ``pread`` from the region file into one reused
        buffer, so the mapped regions are never faulted in (RSS stays bounded); sparse and
        PE-image streams go through their runs.
        """
        runs = stream_runs(reader, stream, what)  # bounds-checks the stream
        length = stream.length
        if stream.type is StreamType.DATA and not stream.sparse and length:
            region, offset = split_region_offset(stream.data_offset)
            if self._direct is not None:
                self._flush()
                sent = self._regions.send(region, offset, length, self._direct)
                self.stats.tar_bytes += sent
                if sent < length:  # the kernel declined (sendfile unsupported here)
                    self._direct = None
                    self._regions.copy(region, offset + sent, length - sent, self.write)
            else:
                self._regions.copy(region, offset, length, self.write)
        else:
            at = 0
            for run in sorted(runs, key=lambda r: r.start):
                if run.start > at:
                    self._zeros(run.start - at)
                if run.source is None:
                    self._zeros(run.length)
                else:
                    for start in range(0, run.length, _CHUNK):
                        self.write(run.source[start : start + _CHUNK])
                at = run.start + run.length
            if at < length:
                self._zeros(length - at)
        self.pad(length)
        self.stats.data_bytes += length
        return length

    def _zeros(self, count: int) -> None:
        while count:
            n = min(count, _CHUNK)
            self.write(_ZEROS[:n])
            count -= n

    def close(self) -> None:
        self.write(bytes(2 * _BLOCK))


# -- metadata decoding -------------------------------------------------------------------


_EA_HEADER: Final = derive_fast(FILE_FULL_EA_INFORMATION)
_REPARSE_HEADERS: Final = {
    IO_REPARSE_TAG_SYMLINK: derive_fast(SYMLINK_REPARSE_HEADER),
    IO_REPARSE_TAG_MOUNT_POINT: derive_fast(MOUNT_POINT_REPARSE_HEADER),
}


def _ea_records(buffer: bytes, path: str) -> list[bytes]:
    """PAX records of a FILE_FULL_EA_INFORMATION chain, sorted by EA name."""
    out: dict[str, bytes] = {}
    at = 0
    while at < len(buffer):
        if at + _EA_HEADER.size > len(buffer):
            raise LayerFormatError(f"EA buffer truncated at byte {at}", entry=path)
        next_offset, flags, name_length, value_length = _EA_HEADER.unpack_from(buffer, at)
        start = at + _EA_HEADER.size
        end = start + name_length + 1 + value_length
        if end > len(buffer):
            raise LayerFormatError(f"EA entry at byte {at} runs past the buffer", entry=path)
        raw_name = buffer[start : start + name_length]
        if flags:
            raise LayerFormatError(
                f"EA {raw_name!r} has flags {flags:#x}, which a layer tar cannot carry",
                entry=path,
            )
        try:
            name = raw_name.decode("utf-8")  # as import_layer encodes EA names
        except UnicodeDecodeError:
            name = ""
        if not name or "=" in name or "\0" in name:
            raise LayerFormatError(f"EA name {raw_name!r} cannot be a PAX key", entry=path)
        out[name] = buffer[start + name_length + 1 : end]
        if next_offset == 0:
            break
        at += next_offset
    return [
        _pax_record(PAX_EA_PREFIX + name, base64.b64encode(value).decode("ascii"))
        for name, value in sorted(out.items())
    ]


def _reparse_target(buffer: bytes, path: str) -> tuple[str, bool]:
    """(link name, is junction) of a symlink or mount-point reparse buffer."""
    if len(buffer) < REPARSE_DATA_HEADER_FAST.size:
        raise LayerFormatError(f"reparse buffer of {len(buffer)} bytes", entry=path)
    tag = REPARSE_DATA_HEADER_FAST.unpack_from(buffer)[0]
    if tag not in _REPARSE_HEADERS:
        raise LayerFormatError(
            f"reparse tag {tag:#010x} is neither a symlink nor a mount point; "
            "a layer tar cannot carry it",
            entry=path,
        )
    header = _REPARSE_HEADERS[tag]
    if len(buffer) < header.size:
        raise LayerFormatError(f"reparse buffer of {len(buffer)} bytes", entry=path)
    _, _, _, sub_off, sub_len, print_off, print_len, *_ = header.unpack_from(buffer)
    names = header.size
    if print_len:
        raw = buffer[names + print_off : names + print_off + print_len]
        target = raw.decode("utf-16-le", "replace")
    else:
        raw = buffer[names + sub_off : names + sub_off + sub_len]
        target = raw.decode("utf-16-le", "replace").removeprefix("\\??\\")
    if len(raw) != (print_len or sub_len) or not target:
        raise LayerFormatError("reparse buffer names no target", entry=path)
    return target, tag == IO_REPARSE_TAG_MOUNT_POINT


# -- planning ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Item:
    """One planned tar entry: ``kind`` dir/file/link/whiteout; ``target`` a link's tar name
    (None until resolved for links to unchanged parent files)."""

    kind: str
    path: str
    file_id: int = 0
    target: str | None = None


def _raw_record(reader: CimReader, file_id: int) -> memoryview | None:
    table, slot = divmod(file_id - 1, FILES_PER_TABLE)
    if file_id <= 0 or table >= reader.file_table_count:
        return None
    offset, count, entry_size = reader.file_table_entry(table)
    if slot >= count:
        return None
    size = min(entry_size, FILE_RECORD_SIZE)
    return reader.object_at(offset, size, f"file record {file_id}", skip=slot * entry_size)


_DEFAULT_STREAM_AT: Final = field_offsets(FILE_RECORD)["default_stream.data_offset"]
_LINK_TABLE_TYPE: Final = int(StreamType.LINK_TABLE)


def _is_directory(reader: CimReader, file_id: int) -> bool:
    """Whether ``file_id``'s default stream is a link table, from the raw record (the walk
    asks this of every entry; decoding whole records is several times slower)."""
    raw = _raw_record(reader, file_id)
    if raw is None or len(raw) < _DEFAULT_STREAM_AT + STREAM_DESCRIPTOR_FAST.size:
        return reader.record(file_id).is_directory  # raises the reader's precise error
    _, length_and_type = STREAM_DESCRIPTOR_FAST.unpack_from(raw, _DEFAULT_STREAM_AT)
    return bool(unpack_length_and_type(length_and_type)[1] == _LINK_TABLE_TYPE)


def _id_limit(reader: CimReader) -> int:
    """The highest file ID ``reader``'s tables can hold."""
    if not reader.file_table_count:
        return 0
    last = reader.file_table_count - 1
    return last * FILES_PER_TABLE + reader.file_table_entry(last)[1]


def _streams(reader: CimReader, record: FileRecord) -> list[tuple[str, int, int]]:
    table = reader.stream_table(record)
    return [(table.name_at(i), *table.descriptor_at(i)) for i in range(table.count)]


class _Planner:
    """The merged walk of child and parent (see the module docstring)."""

    def __init__(self, child: CimReader, parent: CimReader | None) -> None:
        self.child = child
        self.parent = parent
        self.items: list[_Item] = []
        self.emitted: dict[int, str] = {}  # changed object -> its first tar name
        self.unresolved: dict[int, list[_Item]] = {}  # unchanged object -> links to it
        self._unchanged: dict[int, bool] = {}
        self._names_in: dict[int, dict[int, str]] = {}  # parent dir -> file ID -> a name
        #: With a parent: the IDs whose records differ (or are new) and the directories on
        #: the way to them; None when the whole tree must be walked (see _prune).
        self.changed: set[int] | None = None
        self.interesting: set[int] = set()

    def skipped(self, path: str) -> bool:
        head, _, name = path.rpartition("\\")
        if self.parent is None:
            return not head and name.upper() in _BASE_LAYER_OMITTED
        return head.upper() == "HIVES" and name.upper() in _HIVE_BASES

    def unchanged(self, file_id: int) -> bool:
        known = self._unchanged.get(file_id)
        if known is None:
            if self.parent is None:
                known = False
            else:
                mine = _raw_record(self.child, file_id)
                theirs = _raw_record(self.parent, file_id)
                known = mine is not None and theirs is not None and mine == theirs
            self._unchanged[file_id] = known
        return known

    def dir_changed(self, file_id: int, path: str) -> bool:
        """Whether an inherited directory's own metadata or streams changed."""
        assert self.parent is not None
        mine, theirs = self.child.record(file_id), self.parent.record(file_id)
        if _raw_record(self.child, file_id) == _raw_record(self.parent, file_id):
            return False
        same = (
            mine.flags == theirs.flags
            and mine.reparse_tag == theirs.reparse_tag
            and mine.creation_time == theirs.creation_time
            and mine.last_write_time == theirs.last_write_time
            and mine.change_time == theirs.change_time
            and mine.last_access_time == theirs.last_access_time
            and self.child.security_descriptor(mine) == self.parent.security_descriptor(theirs)
            and self.child.extended_attributes(mine) == self.parent.extended_attributes(theirs)
            and self.child.reparse_data(mine) == self.parent.reparse_data(theirs)
        )
        if mine.stream_table_offset == theirs.stream_table_offset:
            return not same
        now = {name.upper(): (d, t) for name, d, t in _streams(self.child, mine)}
        before = {name.upper(): (d, t) for name, d, t in _streams(self.parent, theirs)}
        if before.keys() - now.keys():
            raise LayerFormatError(
                "the directory lost an alternate stream, which a layer tar cannot express",
                entry=path,
            )
        return not same or now != before

    def walk(self) -> None:
        child, parent = self.child, self.parent
        root = child.root_id
        if parent is not None and parent.root_id != root:
            raise LayerParentError("the child's root is not its parent's: not a fork")
        if parent is not None:
            self._prune(parent)
        stack: list[Iterator[Any]] = [self._directory("", root, parent is not None)]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
            else:
                stack.append(step)

    def _prune(self, parent: CimReader) -> None:
        """Find the records that differ from the parent's by comparing file tables (a fork
        references unchanged parent tables in place), and the directories above them.

        Every new or re-stated name lives in a directory whose link table, hence record,
        changed; so only those directories and their ancestors need visiting. The one
        exception, a parent *file* changed in place (an alternate stream added to it, which
        import_layer never does: it re-adds the file), may have names in untouched
        directories; then the whole tree is walked.
        """
        child = self.child
        changed: set[int] = set()
        for table in range(child.file_table_count):
            offset, count, size = child.file_table_entry(table)
            first = table * FILES_PER_TABLE + 1
            if table >= parent.file_table_count:
                changed.update(range(first, first + count))
                continue
            theirs = parent.file_table_entry(table)
            if (offset, count, size) == theirs:
                continue
            for file_id in range(first, first + count):
                if not self.unchanged(file_id):
                    changed.add(file_id)
        interesting = self.interesting
        limit = _id_limit(parent)
        for file_id in changed:
            record = child.record(file_id)
            if not record.is_directory and file_id <= limit:
                self.changed = None  # a parent file changed in place: walk everything
                interesting.clear()
                return
            up = file_id if record.is_directory else record.parent_file_id
            while up and up not in interesting:
                interesting.add(up)
                up = child.record(up).parent_file_id if up != child.root_id else 0
        self.changed = changed

    def _directory(self, path: str, dir_id: int, inherited: bool) -> Iterator[Any]:
        """Plan the entries of one directory; yields the iterators of its subdirectories
        (the caller runs each to completion before resuming this one)."""
        child = self.child
        order = child.order
        table = child.directory(dir_id)
        before: dict[str, tuple[str, int]] = {}
        same_table = False
        if inherited:
            assert self.parent is not None
            parent_table = self.parent.directory(dir_id)
            same_table = (
                child.record(dir_id).stream == self.parent.record(dir_id).stream
                or parent_table.buffer[: parent_table.length] == table.buffer[: table.length]
            )
            if not same_table:
                before = {order.key(n): (n, i) for n, i in parent_table.directory_entries()}
                self._whiteouts(path, table, before)
        changed = self.changed
        entries: Iterator[tuple[str, int]]
        if same_table and changed is not None:
            wanted = [
                i
                for i in range(table.count)
                if table.file_id_at(i) in changed or table.file_id_at(i) in self.interesting
            ]
            entries = ((table.name_at(i), table.file_id_at(i)) for i in wanted)
        else:
            entries = table.directory_entries()
        for name, file_id in entries:
            sub = f"{path}\\{name}" if path else name
            if self.skipped(sub):
                continue
            if name.startswith(".wh."):
                raise LayerFormatError("a name starting with '.wh.' reads as a whiteout", entry=sub)
            if same_table:
                kept = True
            else:
                old = before.get(order.key(name))
                kept = old is not None and old == (name, file_id)
            if _is_directory(child, file_id):
                record = child.record(file_id)
                if record.reparse_offset:
                    if child.directory(file_id).count:
                        raise LayerFormatError(
                            "a reparse-point directory with entries cannot be exported",
                            entry=sub,
                        )
                    if not (kept and self.unchanged(file_id)):
                        self.items.append(_Item("file", sub, file_id))
                    continue
                if not kept or self.dir_changed(file_id, sub):
                    self.items.append(_Item("dir", sub, file_id))
                if kept and changed is not None and file_id not in self.interesting:
                    continue  # nothing below it changed
                yield self._directory(sub, file_id, kept)
            else:
                self._file(sub, file_id, kept)

    def _whiteouts(self, path: str, table: LinkTable, before: dict[str, tuple[str, int]]) -> None:
        assert self.parent is not None
        now = {self.child.order.key(n): (n, i) for n, i in table.directory_entries()}
        for key, (name, file_id) in before.items():
            sub = f"{path}\\{name}" if path else name
            if self.skipped(sub):
                continue
            current = now.get(key)
            if current is None or current[0] != name:
                gone = True
            else:
                gone = current[1] != file_id and self.parent.record(file_id).is_directory
            if gone:
                head = f"{path}\\" if path else ""
                self.items.append(_Item("whiteout", f"{head}.wh.{name}"))

    def _file(self, path: str, file_id: int, kept: bool) -> None:
        first = self.emitted.get(file_id)
        if first is not None:
            self.items.append(_Item("link", path, file_id, first))
        elif self.unchanged(file_id):
            if not kept:
                item = _Item("link", path, file_id)
                self.items.append(item)
                self.unresolved.setdefault(file_id, []).append(item)
            elif file_id in self.unresolved and not self.skipped(path):
                self._settle(file_id, path)  # a kept name after the new one
        else:
            self.items.append(_Item("file", path, file_id))
            self.emitted[file_id] = path

    # -- link targets for unchanged parent files ---------------------------------------

    def resolve(self) -> None:
        """Give every link to an unchanged parent file a kept name as target; an object
        with no kept name is re-emitted whole at its first new name instead."""
        if not self.unresolved:
            return
        for file_id in list(self.unresolved):
            target = self._parent_name(file_id)
            if target is not None:
                self._settle(file_id, target)
        if self.unresolved:
            self._search_kept_names()
        for links in self.unresolved.values():
            first, *rest = links
            first.kind = "file"
            for item in rest:
                item.target = first.path
        self.unresolved.clear()

    def _search_kept_names(self) -> None:
        """Settle the remaining links by walking the kept part of the image (directories
        with the same name and ID in both), reading names only where an ID matches."""
        parent = self.parent
        assert parent is not None
        child = self.child
        stack = [("", child.root_id)]
        while stack and self.unresolved:
            path, dir_id = stack.pop()
            table, before = child.directory(dir_id), parent.directory(dir_id)
            same = table.buffer[: table.length] == before.buffer[: before.length]
            for index in range(table.count):
                file_id = table.file_id_at(index)
                is_dir = _is_directory(child, file_id)
                if not is_dir and file_id not in self.unresolved:
                    continue
                name = table.name_at(index)
                if not same:
                    at = before.find(name, parent.order)
                    if at is None or (before.name_at(at), before.file_id_at(at)) != (
                        name,
                        file_id,
                    ):
                        continue
                sub = f"{path}\\{name}" if path else name
                if self.skipped(sub):
                    continue
                if is_dir:
                    stack.append((sub, file_id))
                else:
                    self._settle(file_id, sub)
                    if not self.unresolved:
                        return

    def _settle(self, file_id: int, target: str) -> None:
        for item in self.unresolved.pop(file_id):
            item.target = target

    def _parent_name(self, file_id: int) -> str | None:
        """A name of ``file_id`` in the parent (through its ParentFileId chain), if the
        child kept it."""
        parent = self.parent
        assert parent is not None
        chain = [file_id]
        seen = {file_id}
        while chain[-1] != parent.root_id:
            up = parent.record(chain[-1]).parent_file_id
            if up in seen or up == 0:
                return None
            chain.append(up)
            seen.add(up)
        names = []
        for upper, lower in zip(chain[:0:-1], chain[-2::-1], strict=True):
            by_id = self._names_in.get(upper)
            if by_id is None:
                by_id = self._names_in[upper] = {}
                for n, i in parent.directory(upper).directory_entries():
                    by_id.setdefault(i, n)
            found = by_id.get(lower)
            if found is None:
                return None
            names.append(found)
        path = "\\".join(names)
        return path if self._kept(path, file_id) else None

    def _kept(self, path: str, file_id: int) -> bool:
        """Whether ``path`` names ``file_id`` in both images through the same objects."""
        parent = self.parent
        assert parent is not None
        if self.skipped(path):
            return False
        parts = path.split("\\")
        mine, theirs = self.child.root_id, parent.root_id
        for part in parts:
            a = self.child.directory(mine).find(part, self.child.order)
            b = parent.directory(theirs).find(part, parent.order)
            if a is None or b is None:
                return False
            ta, tb = self.child.directory(mine), parent.directory(theirs)
            if ta.name_at(a) != tb.name_at(b) or ta.file_id_at(a) != tb.file_id_at(b):
                return False
            mine, theirs = ta.file_id_at(a), tb.file_id_at(b)
        return mine == file_id


# -- emitting ----------------------------------------------------------------------------


class _RecordCache:
    """PAX records of attribute values and of stored SDs (a CIM stores each distinct SD
    once, so its offset identifies it); bounded, since an image may hold many SDs."""

    LIMIT: Final = 4096

    def __init__(self) -> None:
        self._attributes: dict[int, bytes] = {}
        self._sds: dict[int, bytes | None] = {}

    def metadata(self, reader: CimReader, record: FileRecord, path: str) -> list[bytes]:
        attributes = int(record.attributes)
        first = self._attributes.get(attributes)
        if first is None:
            first = self._attributes[attributes] = _pax_record(PAX_FILE_ATTRIBUTES, str(attributes))
        records = [first]
        sd_record = self._sds.get(record.sd_offset, b"")
        if sd_record == b"":
            sd = reader.security_descriptor(record)
            sd_record = (
                _pax_record(PAX_RAW_SD, base64.b64encode(sd).decode("ascii")) if sd else None
            )
            if len(self._sds) >= self.LIMIT:
                self._sds.clear()
            self._sds[record.sd_offset] = sd_record
        if sd_record is not None:
            records.append(sd_record)
        if record.ea_offset:
            records.extend(_ea_records(reader.extended_attributes(record), path))
        return records


def _clamp(filetime: int, epoch: int | None) -> int:
    return filetime if epoch is None else min(filetime, epoch)


def _time_records(record: FileRecord, epoch: int | None) -> list[bytes]:
    return [
        _pax_record(PAX_CREATION_TIME, filetime_to_pax(_clamp(record.creation_time, epoch))),
        _pax_record("mtime", filetime_to_pax(_clamp(record.last_write_time, epoch))),
        _pax_record("atime", filetime_to_pax(_clamp(record.last_access_time, epoch))),
        _pax_record("ctime", filetime_to_pax(_clamp(record.change_time, epoch))),
    ]


def _ustar_mtime(filetime: int) -> int:
    return min(max(0, (filetime - _EPOCH_AS_FILETIME) // 10_000_000), _USTAR_MAX)


def _emit(tar: _TarWriter, reader: CimReader, item: _Item, epoch: int | None) -> None:
    name = item.path.replace("\\", "/")
    stats = tar.stats
    if item.kind == "whiteout":
        tar.header(name, b"0")
        stats.whiteouts += 1
        return
    if item.kind == "link":
        assert item.target is not None
        tar.header(name, b"1", link=item.target.replace("\\", "/"))
        stats.links += 1
        return
    record = reader.record(item.file_id)
    records = tar.cache.metadata(reader, record, item.path)
    mtime = _ustar_mtime(_clamp(record.last_write_time, epoch))
    if record.reparse_offset:
        target, junction = _reparse_target(reader.reparse_data(record), item.path)
        if junction:
            records.append(_pax_record(PAX_MOUNT_POINT, "1"))
        records.extend(_time_records(record, epoch))
        tar.header(name, b"2", records=records, link=target, mtime=mtime, mode=0o755)
        stats.symlinks += 1
    elif record.is_directory:
        records.extend(_time_records(record, epoch))
        tar.header(name, b"5", records=records, mtime=mtime, mode=0o755)
        stats.directories += 1
    else:
        records.extend(_time_records(record, epoch))
        size = record.stream.length
        tar.header(name, b"0", size=size, records=records, mtime=mtime)
        tar.data(reader, f"data of {item.path!r}", record.stream)
        stats.files += 1
    if record.stream_table_offset:
        table = reader.stream_table(record)
        for index in range(table.count):
            stream = reader.stream_descriptor(table, index)
            stream_name = table.name_at(index)
            tar.header(f"{name}:{stream_name}:$DATA", b"0", size=stream.length)
            tar.data(reader, f"stream {stream_name!r} of {item.path!r}", stream)
            stats.streams += 1


def _open(path: Path, role: str) -> CimImage:
    try:
        return open_image(path)
    except (CimError, OSError) as e:
        if role == "parent":
            raise LayerParentError(f"parent CIM {path}: {e}") from e
        raise LayerFormatError(f"CIM {path}: {e}") from e


def export_layer(
    cim_path: str | Path,
    parent_cim_path: str | Path | None,
    out: BinaryIO,
    *,
    progress: Callable[[int, int], None] | None = None,
    cancelled: threading.Event | None = None,
    source_date_epoch: int | None = None,
) -> ExportStats:
    """Write the layer tar of ``cim_path`` over ``parent_cim_path`` (None: a base layer)
    to ``out`` (uncompressed); return what was written. See the module docstring.

    ``progress(tar bytes, entries)`` is called after each entry; ``cancelled`` is checked
    before each entry (LayerCancelledError; the tar is then incomplete). Raises
    LayerFormatError, LayerParentError, LayerCancelledError, or what ``out.write`` raises.

    ``source_date_epoch`` (a FILETIME: 100 ns ticks since 1601, the unit of every time in a
    CIM and of :func:`filetime_from_unix_ns`), when given, clamps every time the tar
    carries (``LIBARCHIVE.creationtime``, ``mtime``, ``atime``, ``ctime`` and the ustar
    mtime) to at most the epoch, as containerd's differs do for reproducible builds;
    times at or before it are written unchanged. The CIM is not modified.
    """
    child_image = _open(Path(cim_path), "layer")
    parent_image: CimImage | None = None
    try:
        if parent_cim_path is not None:
            parent_image = _open(Path(parent_cim_path), "parent")
            mine, theirs = child_image.header.region_sets, parent_image.header.region_sets
            # A fork lists its parent's region sets, then its own (cim.writer): the
            # immediate parent's sets plus exactly one. An older ancestor is refused, since
            # a tar over it would lose the hive deltas of the layers in between.
            if tuple(mine[: len(theirs)]) != tuple(theirs) or len(mine) != len(theirs) + 1:
                raise LayerParentError(
                    f"{Path(cim_path).name} is not a fork of {Path(parent_cim_path).name} "
                    "(the CIM it was forked from, its immediate parent)"
                )
        child = child_image.reader
        parent = parent_image.reader if parent_image is not None else None
        try:
            planner = _Planner(child, parent)
            planner.walk()
            planner.resolve()
            stats = ExportStats()
            regions = _RegionFiles(child_image.region_paths)
            try:
                tar = _TarWriter(out, stats, regions)
                for item in planner.items:
                    if cancelled is not None and cancelled.is_set():
                        raise LayerCancelledError(
                            f"export of {Path(cim_path).name} cancelled after "
                            f"{stats.entries} entries"
                        )
                    _emit(tar, child, item, source_date_epoch)
                    if progress is not None:
                        progress(stats.tar_bytes, stats.entries)
                tar.close()
            finally:
                regions.close()
        except CimError as e:
            raise LayerFormatError(f"CIM {Path(cim_path).name}: {e}") from e
        return stats
    finally:
        if parent_image is not None:
            parent_image.close()
        child_image.close()
