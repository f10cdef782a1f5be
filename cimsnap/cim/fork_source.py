"""The parent of a fork, seen through the reader (§3.3, §11).

:func:`open_parent` opens the parent ``.cim`` with :func:`cimsnap.cim.regions.open_image`
and exposes what the writer reuses: the region sets a fork must list (the parent's parent
sets, then the parent's own set, so every parent RegionOffset stays valid, §3.3), the
parent's file tables (:class:`~cimsnap.cim.layout.ForkBase`), the name order of its stored
upcase table (a fork references the table and sorts with it, §5), and a
:class:`~cimsnap.cim.pending.ParentSource` giving raw records, directory entries and stream
tables on demand.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from cimsnap.cim.errors import CimFormatError
from cimsnap.cim.format import FILE_RECORD_SIZE, FILES_PER_TABLE
from cimsnap.cim.headers import RegionSet
from cimsnap.cim.layout import ForkBase
from cimsnap.cim.pending import StreamEntry
from cimsnap.cim.reader import CimReader
from cimsnap.cim.regions import CimImage, open_image
from cimsnap.cim.upcase import NameOrder

__all__ = ["ParentImage", "open_parent"]


class _ReaderSource:
    """ParentSource over a CimReader; records are read raw so they can be copied as-is."""

    __slots__ = ("_reader", "_tables")

    def __init__(self, reader: CimReader, tables: tuple[tuple[int, int], ...]) -> None:
        self._reader = reader
        self._tables = tables

    def record_bytes(self, file_id: int) -> bytes:
        table, slot = divmod(file_id - 1, FILES_PER_TABLE)
        if file_id <= 0 or table >= len(self._tables) or slot >= self._tables[table][1]:
            raise CimFormatError(f"file {file_id}", why="file ID is not in the parent's tables")
        view = self._reader.object_at(
            self._tables[table][0],
            FILE_RECORD_SIZE,
            f"file record {file_id}",
            slot * FILE_RECORD_SIZE,
        )
        return bytes(view)

    def directory_entries(self, file_id: int) -> Iterator[tuple[str, int]]:
        return self._reader.directory(file_id).directory_entries()

    def stream_entries(self, file_id: int) -> Iterator[StreamEntry]:
        table = self._reader.stream_table(self._reader.record(file_id))
        for index in range(table.count):
            data_offset, length_and_type = table.descriptor_at(index)
            yield table.name_at(index), data_offset, length_and_type

    def read_table(self, table: int) -> bytes:
        offset, count = self._tables[table]
        return bytes(
            self._reader.object_at(offset, count * FILE_RECORD_SIZE, f"file table {table}")
        )


class ParentImage:
    """An open parent image; ``close()`` (idempotent) releases its mappings."""

    def __init__(self, image: CimImage) -> None:
        self._image = image
        reader = image.reader
        header = image.header
        self.region_sets: tuple[RegionSet, ...] = header.region_sets
        self.root_id = reader.root_id
        tables = []
        for t in range(reader.file_table_count):
            offset, count, entry_size = reader.file_table_entry(t)
            if entry_size != FILE_RECORD_SIZE:
                raise CimFormatError(
                    f"file table {t} of parent {image.path.name}",
                    why=f"EntrySize {entry_size}: only v2 tables can be forked",
                )
            tables.append((offset, count))
        #: The order of the parent's stored upcase table, which the fork keeps (§5).
        self.order: NameOrder = reader.order
        self.source = _ReaderSource(reader, tuple(tables))
        self.fork_base = ForkBase(tuple(tables), reader.upcase_table_offset, self.source.read_table)

    def close(self) -> None:
        """Release the parent's mappings."""
        self._image.close()


def open_parent(cim_path: Path) -> ParentImage:
    """Open ``cim_path`` as the parent of a fork; raises CimFormatError, OSError."""
    image = open_image(cim_path)
    try:
        return ParentImage(image)
    except BaseException:
        image.close()
        raise
