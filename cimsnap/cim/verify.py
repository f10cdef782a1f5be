"""Check every invariant of the CimFS format on an open image and list the problems.

:func:`verify_reader` is sans-IO (it walks a :class:`CimReader`); :func:`verify_image`
adds the file-level checks (region and objectid headers); :func:`verify_path` opens an
image and never raises for a bad image: failures to open become problems.

Severity: ``ERROR`` breaks the format as the readers use it ([K] rules: bounds, counts,
sort order, unique names, stream types, acyclic tree), or a rule cimsnap relies on.
``WARNING`` departs from a recommended or inferred convention ([I]/[U] in the spec) that a
Windows-written image might legitimately break (HeaderLength, ParentFileId, alignment,
missing SD). Work is bounded: each directory is visited once, each record decoded once, and
verification stops after ``max_problems``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimApiError, CimFormatError
from cimsnap.cim.headers import objectid_file_name
from cimsnap.cim.linktable import LinkTable
from cimsnap.cim.offsets import make_region_offset, split_region_offset
from cimsnap.cim.reader import CimReader
from cimsnap.cim.records import FileRecord, StreamDescriptor
from cimsnap.cim.regions import CimImage, open_image
from cimsnap.cim.streams import stream_runs
from cimsnap.cim.upcase import invalid_name_reason, name_units

__all__ = ["Problem", "Severity", "verify_image", "verify_path", "verify_reader"]

#: Default cap on reported problems (bounds time on hostile images).
MAX_PROBLEMS = 1000
#: Where a region header's region Type byte lies (§3.4).
_REGION_TYPE_AT = fmt.field_offsets(fmt.REGION_HEADER)["type"]


class Severity(enum.Enum):
    """How bad a problem is (see the module docstring)."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One broken invariant: ``what`` at ``region``/``offset`` (None if not in a region)."""

    severity: Severity
    what: str
    why: str
    region: int | None = None
    offset: int | None = None

    @classmethod
    def from_error(cls, error: CimFormatError) -> Problem:
        """An ERROR from a reader exception."""
        return cls(Severity.ERROR, error.what, error.why, error.region, error.offset)

    def __str__(self) -> str:
        error = CimFormatError(self.what, why=self.why, region=self.region, offset=self.offset)
        return f"{self.severity.value}: {error}"


class _TooMany(Exception):
    """Internal: the problem cap was reached."""


class _Checker:
    def __init__(self, reader: CimReader, max_problems: int) -> None:
        self.reader = reader
        self.max_problems = max_problems
        self.problems: list[Problem] = []
        self.region_types = [self._region_type(i) for i in range(reader.region_count)]

    def _region_type(self, index: int) -> int | None:
        buffer = self.reader.region(index)
        return buffer[_REGION_TYPE_AT] if len(buffer) >= fmt.REGION_HEADER_SIZE else None

    def add(self, severity: Severity, what: str, why: str, at: int | None = None) -> None:
        region, offset = split_region_offset(at) if at else (None, None)
        self.problems.append(Problem(severity, what, why, region, offset))
        if len(self.problems) >= self.max_problems:
            raise _TooMany

    def error(self, e: CimFormatError) -> None:
        self.problems.append(Problem.from_error(e))
        if len(self.problems) >= self.max_problems:
            raise _TooMany

    def aligned(self, offset: int, what: str) -> None:
        region, byte_offset = split_region_offset(offset)
        if region >= len(self.region_types):
            return
        align = (
            fmt.PAGE_SIZE
            if self.region_types[region] == fmt.RegionType.DATA
            else fmt.METADATA_ALIGNMENT
        )
        if byte_offset % align:
            self.add(Severity.WARNING, what, f"offset is not {align}-byte aligned", offset)
        if 0 < byte_offset < fmt.REGION_HEADER_SIZE:
            self.add(Severity.ERROR, what, "object overlaps the region header", offset)

    # -- tables and records -------------------------------------------------------------

    def file_tables(self) -> Iterator[int]:
        """Check the file table directory; yield each valid file ID."""
        reader = self.reader
        self.aligned(reader.file_table_directory_offset, "file table directory")
        for table in range(reader.file_table_count):
            try:
                offset, count, entry_size = reader.file_table_entry(table)
            except CimFormatError as e:
                self.error(e)
                continue
            what = f"file table {table}"
            if count and entry_size != fmt.FILE_RECORD_SIZE:
                self.add(Severity.WARNING, what, f"EntrySize {entry_size}, not 96", offset)
            if count < fmt.FILES_PER_TABLE and table + 1 < reader.file_table_count:
                self.add(Severity.WARNING, what, f"only the last table may be partial ({count})")
            if count:
                self.aligned(offset, what)
            for slot in range(count):
                yield table * fmt.FILES_PER_TABLE + slot + 1

    def record(self, file_id: int) -> FileRecord | None:
        try:
            record = self.reader.record(file_id)
        except CimFormatError as e:
            self.error(e)
            return None
        what = f"file record {file_id}"
        at = make_region_offset(record.region, record.offset)
        if record.flags & ~0x1F:
            self.add(Severity.WARNING, what, f"undefined Flags bits {record.flags:#x}", at)
        if record.reserved or record.stream.reserved_bits:
            self.add(Severity.WARNING, what, "reserved bits are set", at)
        self.metadata(record, what)
        if not record.is_directory:
            self.data_stream(record.stream, f"data of file {file_id}")
        self.streams(record)
        return record

    def metadata(self, record: FileRecord, what: str) -> None:
        reader = self.reader
        if record.sd_offset == 0:
            self.add(Severity.WARNING, what, "no security descriptor")
        else:
            self.aligned(record.sd_offset, f"security descriptor of {what}")
            try:
                sd = reader.counted_object(
                    record.sd_offset, fmt.SD_LENGTH_FAST, f"security descriptor of {what}"
                )
                if len(sd) < 20 or sd[0] != 1:
                    self.add(Severity.ERROR, what, "SD is not a self-relative descriptor")
            except CimFormatError as e:
                self.error(e)
        if (record.ea_offset == 0) != (record.ea_length == 0):
            self.add(Severity.ERROR, what, "EaOffset and EaLength disagree about an EA")
        elif record.ea_offset:
            try:
                reader.object_at(record.ea_offset, record.ea_length, f"EA of {what}")
            except CimFormatError as e:
                self.error(e)
        if record.reparse_offset:
            try:
                data = reader.counted_object(
                    record.reparse_offset, fmt.REPARSE_LENGTH_FAST, f"reparse data of {what}"
                )
                header = fmt.REPARSE_DATA_HEADER_FAST
                tag = header.unpack_from(data)[0] if len(data) >= header.size else None
                if tag is None:
                    self.add(Severity.ERROR, what, "reparse buffer shorter than its header")
                elif tag != record.reparse_tag:
                    self.add(
                        Severity.WARNING,
                        what,
                        f"ReparseTag {record.reparse_tag:#x} != buffer {tag:#x}",
                    )
            except CimFormatError as e:
                self.error(e)
        elif record.reparse_tag:
            self.add(Severity.WARNING, what, "ReparseTag set without reparse data")

    def data_stream(self, stream: StreamDescriptor, what: str) -> None:
        if stream.type is fmt.StreamType.LINK_TABLE:
            self.add(Severity.ERROR, what, "a file's stream is a link table")
            return
        try:
            stream_runs(self.reader, stream, what)
        except CimFormatError as e:
            self.error(e)
            return
        if stream.sparse and stream.data_offset:
            self.add(Severity.WARNING, what, "sparse stream has a DataOffset")
        if stream.data_offset and not stream.sparse:
            self.aligned(stream.data_offset, what)
        if stream.type is fmt.StreamType.PE_IMAGE and not stream.sparse and stream.length:
            view = self.reader.object_at(stream.data_offset, fmt.PE_IMAGE_SIZE, what)
            pe = fmt.PE_IMAGE.parse(bytes(view))
            if pe.data_length & ~(1 << 63) != stream.length:
                self.add(Severity.ERROR, what, "PE image DataLength differs from the stream length")

    def names(self, table: LinkTable, what: str) -> None:
        """Names valid, strictly ascending under the image's order (so unique), in Length."""
        previous: str | None = None
        for index in range(table.count):
            try:
                name_offset, units = table.name_location(index)
                name = table.name_at(index)
            except CimFormatError as e:
                self.error(e)
                previous = None
                continue
            at = make_region_offset(table.region, table.offset + name_offset)
            reason = invalid_name_reason(name)
            if reason is not None:
                self.add(Severity.ERROR, f"{what}, name {name!r}", reason, at)
            if name_offset + fmt.LINK_NAME_LENGTH_FAST.size + 2 * units > table.length:
                self.add(Severity.WARNING, f"{what}, name {name!r}", "name lies beyond Length", at)
            key = self.reader.order.key(name)
            if previous is not None and key <= previous:
                why = "duplicate name (case-insensitive)" if key == previous else "out of order"
                self.add(Severity.ERROR, f"{what}, name {name!r}", why, at)
            previous = key

    def streams(self, record: FileRecord) -> None:
        what = f"stream table of file {record.file_id}"
        try:
            table = self.reader.stream_table(record)
        except CimFormatError as e:
            self.error(e)
            return
        if table.count == 0 and record.stream_table_offset == 0:
            return
        self.aligned(record.stream_table_offset, what)
        if table.length != len(table.buffer):
            self.add(Severity.WARNING, what, "count prefix differs from the table Length")
        self.names(table, what)
        for index in range(table.count):
            try:
                stream = self.reader.stream_descriptor(table, index)
            except CimFormatError as e:
                self.error(e)
                continue
            self.data_stream(stream, f"{what}, stream {index}")

    # -- the tree -------------------------------------------------------------------------

    def tree(self) -> None:
        reader = self.reader
        root = reader.record(reader.root_id)
        if root.parent_file_id not in (0, root.file_id):
            self.add(Severity.WARNING, "root directory", f"ParentFileId {root.parent_file_id}")
        seen_directories: set[int] = set()
        seen_tables: dict[int, int] = {}
        stack: list[tuple[str, FileRecord]] = [("", root)]
        while stack:
            path, record = stack.pop()
            seen_directories.add(record.file_id)
            what = f"directory {path or '(root)'!r} (file {record.file_id})"
            stream = record.stream
            if stream.length and stream.data_offset in seen_tables:
                self.add(
                    Severity.ERROR,
                    what,
                    f"shares its link table with file {seen_tables[stream.data_offset]}",
                    stream.data_offset,
                )
                continue
            if stream.length:
                seen_tables[stream.data_offset] = record.file_id
                self.aligned(stream.data_offset, what)
            try:
                table = reader.directory(record.file_id)
            except (CimFormatError, CimApiError) as e:
                if isinstance(e, CimFormatError):
                    self.error(e)
                continue
            if stream.length and table.length != stream.length:
                self.add(Severity.WARNING, what, "stream length differs from the table Length")
            self.names(table, what)
            for index in range(table.count):
                file_id = table.file_id_at(index)
                try:
                    name = table.name_at(index)
                    child = reader.record(file_id)
                except CimFormatError as e:
                    self.error(e)
                    continue
                child_path = f"{path}\\{name}"
                if name_units(child_path) > fmt.MAX_PATH_LENGTH:
                    self.add(Severity.ERROR, child_path[:80] + "...", "path is too long")
                    continue
                if not child.is_directory:
                    continue
                if child.file_id in seen_directories or child.file_id == reader.root_id:
                    self.add(
                        Severity.ERROR,
                        f"{what}, entry {name!r}",
                        f"directory {child.file_id} is reached twice (cycle or hard link)",
                        make_region_offset(table.region, table.value_offset(index)),
                    )
                    continue
                if child.parent_file_id != record.file_id:
                    self.add(
                        Severity.WARNING,
                        f"directory {child_path!r}",
                        f"ParentFileId {child.parent_file_id}, contained in {record.file_id}",
                    )
                seen_directories.add(child.file_id)
                stack.append((child_path, child))


def verify_reader(reader: CimReader, max_problems: int = MAX_PROBLEMS) -> list[Problem]:
    """Check the filesystem metadata reachable through ``reader``; never raises CimFormatError."""
    checker = _Checker(reader, max_problems)
    try:
        for file_id in checker.file_tables():
            checker.record(file_id)
        checker.tree()
    except _TooMany:
        checker.problems.append(
            Problem(Severity.ERROR, "image", f"stopped after {max_problems} problems")
        )
    except CimFormatError as e:
        checker.problems.append(Problem.from_error(e))
    return checker.problems


def verify_image(image: CimImage, max_problems: int = MAX_PROBLEMS) -> list[Problem]:
    """:func:`verify_reader` plus region and objectid file headers (§3.4, §3.5)."""
    problems: list[Problem] = []
    index = 0
    for region_set in image.header.region_sets:
        for n in range(region_set.count):
            objectid = image.path.parent / objectid_file_name(region_set, n)
            problems += _region_file_problems(image, index, n, objectid)
            index += 1
    return problems + verify_reader(image.reader, max_problems)


def _region_file_problems(image: CimImage, index: int, n: int, objectid: Path) -> list[Problem]:
    problems = []
    name = image.region_paths[index].name
    header = fmt.REGION_HEADER.parse(bytes(image.reader.region(index)[: fmt.REGION_HEADER_SIZE]))
    if header.common.type != fmt.FileType.REGION or header.index != n or header.type > 2:
        why = "header Type, Index or region type is wrong"
        problems.append(Problem(Severity.ERROR, f"region file {name}", why, index, 0))
    what = f"objectid file {objectid.name}"
    try:
        with open(objectid, "rb") as file:
            data = file.read(fmt.OBJECTID_HEADER_SIZE)
    except OSError as e:
        return [*problems, Problem(Severity.WARNING, what, f"unreadable: {e.strerror}")]
    if len(data) < fmt.OBJECTID_HEADER_SIZE or not data.startswith(fmt.MAGIC):
        problems.append(Problem(Severity.WARNING, what, "bad header"))
    else:
        parsed = fmt.OBJECTID_HEADER.parse(data)
        if parsed.index != n or parsed.common.type != fmt.FileType.OBJECTID:
            problems.append(Problem(Severity.WARNING, what, "wrong Type or Index"))
        end = parsed.table_offset + parsed.count * fmt.OBJECTID_ENTRY_SIZE
        if parsed.count and end > objectid.stat().st_size:
            why = f"{parsed.count} entries at {parsed.table_offset} run past the file's end"
            problems.append(Problem(Severity.WARNING, what, why))
    return problems


def verify_path(cim_path: Path, max_problems: int = MAX_PROBLEMS) -> list[Problem]:
    """Open and verify ``cim_path``; a failure to open is reported as a problem.

    Raises OSError only if the ``.cim`` file itself cannot be read.
    """
    try:
        image = open_image(cim_path)
    except CimFormatError as e:
        return [Problem.from_error(e)]
    with image:
        return verify_image(image, max_problems)
