"""Read a classic CimFS image from its region buffers.

:class:`CimReader` is sans-IO: it takes the regions in global order (§3.3) as buffers
(``memoryview`` of bytes or of an ``mmap``) and the Filesystem object's RegionOffset.
:mod:`cimsnap.cim.regions` opens the files. Headers are parsed eagerly (Filesystem object,
upcase table, root record); everything else on demand through :meth:`CimReader.object_at`,
which bounds-checks every offset and length, with bounded per-instance LRU caches.

Every structural problem raises :class:`CimFormatError` naming the object, its region and
offset. Lookups of absent names raise :class:`CimNotFoundError` (or its subclass
:class:`CimPathNotFoundError` for a missing intermediate directory) and
:class:`CimNotADirectoryError`. Paths use ``\\`` or ``/`` as separators, relative to the
root; empty components are ignored.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import (
    CimFormatError,
    CimInvalidArgumentError,
    CimNotADirectoryError,
    CimNotFoundError,
    CimPathNotFoundError,
)
from cimsnap.cim.linktable import DIRECTORY_VALUE_SIZE, STREAM_VALUE_SIZE, LinkTable
from cimsnap.cim.offsets import split_region_offset
from cimsnap.cim.records import (
    FileRecord,
    StreamDescriptor,
    decode_file_record,
    decode_stream_descriptor,
)
from cimsnap.cim.streams import StreamReader, stream_runs
from cimsnap.cim.upcase import NameOrder

__all__ = ["CimReader", "DirEntry", "FileInfo", "StreamInfo", "split_path"]

#: Cache sizes per reader instance.
RECORD_CACHE_SIZE = 4096
TABLE_CACHE_SIZE = 1024

#: Where a file table directory entry's Count lies (named in errors).
_TABLE_COUNT_AT = fmt.field_offsets(fmt.FILE_TABLE_DIRECTORY_ENTRY)["count"]


def split_path(path: str) -> list[str]:
    """Split a path on ``\\`` and ``/`` into its non-empty components."""
    return [part for part in path.replace("/", "\\").split("\\") if part]


@dataclass(frozen=True, slots=True)
class DirEntry:
    """One directory link: ``name`` refers to file ``file_id``."""

    name: str
    file_id: int


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """An alternate data stream of a file (§7.4)."""

    name: str
    size: int
    sparse: bool


@dataclass(frozen=True, slots=True)
class FileInfo:
    """What ``stat`` reports for a path; ``size`` is the default stream's length (0 for dirs)."""

    path: str
    file_id: int
    attributes: fmt.FileAttribute
    size: int
    is_directory: bool
    sparse: bool
    stream_type: fmt.StreamType
    reparse_tag: int
    creation_time: int
    last_write_time: int
    change_time: int
    last_access_time: int


class CimReader:
    """Read-only access to one image over its region buffers.

    ``regions[i]`` is global region ``i``, header included. The reader does not own the
    buffers; whoever opened them closes them after the reader (and any StreamReader it
    returned) is dropped. Not thread-safe (its caches are unsynchronised).

    Raises CimFormatError from the constructor if the Filesystem object, the upcase table
    or the root record is bad (§13 step 3).
    """

    def __init__(self, regions: Sequence[memoryview], filesystem_offset: int) -> None:
        self._regions = regions
        self.record = functools.lru_cache(maxsize=RECORD_CACHE_SIZE)(self._load_record)
        self._table_entry = functools.lru_cache(maxsize=TABLE_CACHE_SIZE)(self._load_table_entry)
        self._directory = functools.lru_cache(maxsize=TABLE_CACHE_SIZE)(self._load_directory)
        self._keys = functools.lru_cache(maxsize=TABLE_CACHE_SIZE)(self._load_keys)
        view = self.object_at(filesystem_offset, fmt.FILESYSTEM_OBJECT_SIZE, "Filesystem object")
        filesystem = fmt.FILESYSTEM_OBJECT.parse(bytes(view))
        self.filesystem_offset = filesystem_offset
        self.file_table_directory_offset: int = filesystem.file_table_directory_offset
        self.file_table_count: int = filesystem.file_table_directory_length
        self.upcase_table_offset: int = filesystem.upcase_table_offset
        self.root_id: int = filesystem.root_directory
        # Bounds of the whole file table directory are checked once, here.
        if self.file_table_count:
            self.object_at(
                self.file_table_directory_offset,
                self.file_table_count * fmt.FILE_TABLE_DIRECTORY_ENTRY_SIZE,
                "file table directory",
            )
        table = self.object_at(self.upcase_table_offset, fmt.UPCASE_TABLE_SIZE, "upcase table")
        self.order = NameOrder.from_table(table)
        root = self.record(self.root_id)
        if not root.is_directory:
            raise CimFormatError(
                f"root directory (file {self.root_id})",
                region=root.region,
                offset=root.offset,
                why="its default stream is not a link table",
            )

    def clear_caches(self) -> None:
        """Drop every cached record and table (and with them their region slices)."""
        for cache in (self.record, self._table_entry, self._directory, self._keys):
            cache.cache_clear()

    @property
    def region_count(self) -> int:
        """Number of regions (global numbering, §3.3)."""
        return len(self._regions)

    def region_size(self, index: int) -> int:
        """Byte size of global region ``index`` (header included)."""
        return len(self._regions[index])

    def region(self, index: int) -> memoryview:
        """The whole buffer of global region ``index`` (for ``verify``)."""
        return self._regions[index]

    def object_at(self, offset: int, length: int, what: str, skip: int = 0) -> memoryview:
        """Return a zero-copy slice of ``length`` bytes, ``skip`` bytes past RegionOffset
        ``offset``; the one accessor for every object (§1).

        Raises CimFormatError naming ``what`` if the offset is null, its byte part is 0,
        its region index does not exist, or the range passes the region's end.
        """
        region, byte_offset = split_region_offset(offset)
        if offset == 0 or byte_offset == 0:
            raise CimFormatError(what, region=region, offset=byte_offset, why="null offset")
        if region >= len(self._regions):
            raise CimFormatError(
                what,
                region=region,
                offset=byte_offset,
                why=f"region index {region} does not exist (image has {len(self._regions)})",
            )
        buffer = self._regions[region]
        start = byte_offset + skip
        if length < 0 or skip < 0 or start + length > len(buffer):
            raise CimFormatError(
                what,
                region=region,
                offset=start,
                why=f"{length} bytes run past the region's end ({len(buffer)} bytes)",
            )
        return buffer[start : start + length]

    def counted_object(self, offset: int, count: fmt.FastStruct, what: str) -> memoryview:
        """Return the bytes of a counted object (§7.4, §8), count excluded.

        ``count`` is the fast form of the object's byte-count declaration
        (``fmt.STREAM_TABLE_LENGTH_FAST``, ``fmt.SD_LENGTH_FAST``, ``fmt.REPARSE_LENGTH_FAST``).
        Raises CimFormatError naming ``what`` if the count or the bytes are out of bounds.
        """
        (length,) = count.unpack_from(self.object_at(offset, count.size, what))
        return self.object_at(offset, length, what, skip=count.size)

    # -- file tables and records (§6, §7) -----------------------------------------------

    def _load_table_entry(self, table: int) -> tuple[int, int, int]:
        at = self.file_table_directory_offset
        skip = table * fmt.FILE_TABLE_DIRECTORY_ENTRY_SIZE
        view = self.object_at(at, fmt.FILE_TABLE_DIRECTORY_ENTRY_SIZE, "file table entry", skip)
        offset, count, entry_size, _ = fmt.FILE_TABLE_DIRECTORY_ENTRY_FAST.unpack_from(view)
        if count > fmt.FILES_PER_TABLE:
            region, byte_offset = split_region_offset(at)
            raise CimFormatError(
                f"file table directory entry {table}",
                region=region,
                offset=byte_offset + skip + _TABLE_COUNT_AT,
                why=f"Count {count} exceeds {fmt.FILES_PER_TABLE}",
            )
        if count:
            self.object_at(offset, count * entry_size, f"file table {table}")
        return offset, count, entry_size

    def file_table_entry(self, table: int) -> tuple[int, int, int]:
        """(Offset, Count, EntrySize) of file table ``table``, bounds-checked (§6)."""
        return self._table_entry(table)

    def file_count(self) -> int:
        """Number of file IDs the tables hold (valid IDs are those whose slot is < Count)."""
        return sum(self._table_entry(t)[1] for t in range(self.file_table_count))

    def _load_record(self, file_id: int) -> FileRecord:
        """Record of ``file_id`` (§6): table (id-1)/1024, slot (id-1)%1024; min(EntrySize, 96)
        bytes zero-filled. Raises CimFormatError for an invalid ID."""
        table, slot = divmod(file_id - 1, fmt.FILES_PER_TABLE)
        if file_id <= 0 or table >= self.file_table_count:
            raise CimFormatError(f"file {file_id}", why="file ID has no file table")
        offset, count, entry_size = self._table_entry(table)
        if slot >= count:
            raise CimFormatError(
                f"file {file_id}", why=f"slot {slot} is beyond table {table}'s {count} records"
            )
        size = min(entry_size, fmt.FILE_RECORD_SIZE)
        view = self.object_at(offset, size, f"file record {file_id}", skip=slot * entry_size)
        region, byte_offset = split_region_offset(offset)
        return decode_file_record(view, file_id, region, byte_offset + slot * entry_size)

    # -- directories and streams (§7.2-§7.4) --------------------------------------------

    def _load_directory(self, file_id: int) -> LinkTable:
        record = self.record(file_id)
        if not record.is_directory:
            raise CimNotADirectoryError(f"file {file_id} is not a directory")
        return self._link_table(record.stream, DIRECTORY_VALUE_SIZE, f"directory {file_id}")

    def _load_keys(self, file_id: int) -> list[str]:
        """Sort keys of every name of directory ``file_id`` in stored order (one pass, so
        lookups bisect without re-decoding names; proportional to the table's real size)."""
        return [self.order.key(name) for name in self.directory(file_id).names()]

    def directory(self, file_id: int) -> LinkTable:
        """The link table of directory ``file_id``; CimNotADirectoryError for a file."""
        return self._directory(file_id)

    def _link_table(self, stream: StreamDescriptor, value_size: int, what: str) -> LinkTable:
        if stream.length == 0:
            return LinkTable.parse(memoryview(b""), value_size, what, 0, 0)
        view = self.object_at(stream.data_offset, stream.length, what)
        region, offset = split_region_offset(stream.data_offset)
        return LinkTable.parse(view, value_size, what, region, offset)

    def stream_table(self, record: FileRecord) -> LinkTable:
        """The alternate-stream table of ``record`` (empty if it has none, §7.4)."""
        what = f"stream table of file {record.file_id}"
        if record.stream_table_offset == 0:
            return LinkTable.parse(memoryview(b""), STREAM_VALUE_SIZE, what, 0, 0)
        count = fmt.STREAM_TABLE_LENGTH_FAST
        view = self.counted_object(record.stream_table_offset, count, what)
        region, offset = split_region_offset(record.stream_table_offset)
        return LinkTable.parse(view, STREAM_VALUE_SIZE, what, region, offset + count.size)

    def stream_descriptor(self, table: LinkTable, index: int) -> StreamDescriptor:
        """Decoded descriptor ``index`` of a stream table; ADS must be type Data (§7.4)."""
        what = f"{table.what}, stream {index}"
        data_offset, length_and_type = table.descriptor_at(index)
        stream = decode_stream_descriptor(
            data_offset, length_and_type, what, table.region, table.value_offset(index)
        )
        if stream.type is not fmt.StreamType.DATA:
            raise CimFormatError(
                what,
                region=table.region,
                offset=table.value_offset(index),
                why=f"alternate stream has type {stream.type.name}, not DATA",
            )
        return stream

    # -- security descriptor, EA, reparse data (§8) -----------------------------------

    def security_descriptor(self, record: FileRecord) -> bytes:
        """The self-relative SD of ``record`` (b"" if SdOffset is null); CimFormatError."""
        if record.sd_offset == 0:
            return b""
        what = f"security descriptor of file {record.file_id}"
        return bytes(self.counted_object(record.sd_offset, fmt.SD_LENGTH_FAST, what))

    def extended_attributes(self, record: FileRecord) -> bytes:
        """The FILE_FULL_EA_INFORMATION chain of ``record`` (EaLength bytes, b"" if none)."""
        if record.ea_offset == 0 or record.ea_length == 0:
            return b""
        return bytes(
            self.object_at(record.ea_offset, record.ea_length, f"EA of file {record.file_id}")
        )

    def reparse_data(self, record: FileRecord) -> bytes:
        """The REPARSE_DATA_BUFFER of ``record``, header included (b"" if none)."""
        if record.reparse_offset == 0:
            return b""
        what = f"reparse data of file {record.file_id}"
        return bytes(self.counted_object(record.reparse_offset, fmt.REPARSE_LENGTH_FAST, what))

    # -- paths ---------------------------------------------------------------------------

    def lookup(self, path: str) -> FileRecord:
        """Record of ``path`` by binary search per component (§13 step 4).

        Raises CimNotFoundError (last component missing), CimPathNotFoundError (a
        directory on the way is missing), CimNotADirectoryError, CimFormatError.
        """
        record = self.record(self.root_id)
        parts = split_path(path)
        for depth, name in enumerate(parts):
            if not record.is_directory:
                raise CimNotADirectoryError(f"{'/'.join(parts[:depth])}: not a directory")
            table = self.directory(record.file_id)
            keys = self._keys(record.file_id)
            key = self.order.key(name)
            index = bisect.bisect_left(keys, key)
            if index == len(keys) or keys[index] != key:
                error = CimNotFoundError if depth == len(parts) - 1 else CimPathNotFoundError
                raise error(f"{'/'.join(parts[: depth + 1])}: no such file or directory")
            record = self.record(table.file_id_at(index))
        return record

    def stat(self, path: str) -> FileInfo:
        """FileInfo of ``path``; raises as :meth:`lookup`."""
        record = self.lookup(path)
        return self.info(record, "\\".join(split_path(path)))

    def info(self, record: FileRecord, path: str) -> FileInfo:
        """FileInfo of a record reached by ``path``."""
        return FileInfo(
            path=path,
            file_id=record.file_id,
            attributes=record.attributes,
            size=0 if record.is_directory else record.stream.length,
            is_directory=record.is_directory,
            sparse=record.stream.sparse,
            stream_type=record.stream.type,
            reparse_tag=record.reparse_tag,
            creation_time=record.creation_time,
            last_write_time=record.last_write_time,
            change_time=record.change_time,
            last_access_time=record.last_access_time,
        )

    def listdir(self, path: str = "") -> list[DirEntry]:
        """Entries of directory ``path`` in stored (§7.3) order; raises as :meth:`lookup`."""
        record = self.lookup(path)
        if not record.is_directory:
            raise CimNotADirectoryError(f"{path}: not a directory")
        table = self.directory(record.file_id)
        return [DirEntry(name, file_id) for name, file_id in table.directory_entries()]

    def streams(self, path: str) -> list[StreamInfo]:
        """Alternate data streams of ``path`` (the default stream is never listed)."""
        table = self.stream_table(self.lookup(path))
        result = []
        for index in range(table.count):
            stream = self.stream_descriptor(table, index)
            result.append(StreamInfo(table.name_at(index), stream.length, stream.sparse))
        return result

    def open_stream(self, path: str, stream_name: str | None = None) -> StreamReader:
        """Open the default stream of file ``path``, or its alternate stream ``stream_name``.

        Raises as :meth:`lookup`; CimNotFoundError for a missing alternate stream;
        CimInvalidArgumentError for a directory's default stream (it has no data);
        CimFormatError if the stream's data is out of bounds (checked here, not on read).
        """
        record = self.lookup(path)
        return self.open_record_stream(record, stream_name)

    def open_record_stream(self, record: FileRecord, stream_name: str | None) -> StreamReader:
        """Open a stream of ``record`` (see :meth:`open_stream`)."""
        if stream_name is None:
            if record.is_directory:
                raise CimInvalidArgumentError(f"file {record.file_id} is a directory, not data")
            stream = record.stream
            what = f"data of file {record.file_id}"
        else:
            table = self.stream_table(record)
            index = table.find(stream_name, self.order)
            if index is None:
                raise CimNotFoundError(f"file {record.file_id}: no stream {stream_name!r}")
            stream = self.stream_descriptor(table, index)
            what = f"stream {stream_name!r} of file {record.file_id}"
        return StreamReader(stream_runs(self, stream, what), stream.length)

    def walk(
        self, path: str = "", on_error: Callable[[CimFormatError], None] | None = None
    ) -> Iterator[tuple[str, FileRecord]]:
        """Yield (path, record) for ``path`` and everything below it, depth first, in
        stored order; iterative, so depth is unbounded by the Python stack.

        A directory reached twice (a cycle, or a hard-linked directory, §10) is a
        CimFormatError. With ``on_error``, each CimFormatError is passed to it and that
        entry (or subtree) is skipped; without, it is raised.
        """
        start = self.lookup(path)
        seen: set[int] = set()
        stack: list[tuple[str, FileRecord]] = [("\\".join(split_path(path)), start)]
        while stack:
            here, record = stack.pop()
            yield here, record
            if not record.is_directory:
                continue
            try:
                if record.file_id in seen:
                    raise CimFormatError(
                        f"directory {here!r} (file {record.file_id})",
                        region=record.region,
                        offset=record.offset,
                        why="reached twice: directory cycle or hard-linked directory",
                    )
                seen.add(record.file_id)
                children = []
                for name, file_id in self.directory(record.file_id).directory_entries():
                    children.append((f"{here}\\{name}" if here else name, self.record(file_id)))
            except CimFormatError as e:
                if on_error is None:
                    raise
                on_error(e)
                continue
            stack.extend(reversed(children))
