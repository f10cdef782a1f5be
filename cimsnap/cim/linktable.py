"""Link tables: directory entries and alternate-stream tables.

:class:`LinkTable` validates the header eagerly and entries lazily; every name offset and
length is checked against the buffer before it is read, so a hostile table raises
CimFormatError (naming the table, its region and offset) and never reads out of bounds or
allocates more than one name (at most 128 KiB) at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError
from cimsnap.cim.upcase import NameOrder, decode_name

__all__ = ["DIRECTORY_VALUE_SIZE", "STREAM_VALUE_SIZE", "LinkTable"]

#: Value sizes (E in §7.2): a file ID for directories, a stream descriptor for streams.
DIRECTORY_VALUE_SIZE = fmt.FILE_ID_FAST.size
STREAM_VALUE_SIZE = fmt.STREAM_DESCRIPTOR_SIZE
_OFFSET_SIZE = fmt.LINK_NAME_OFFSET_FAST.size
_PREFIX_SIZE = fmt.LINK_NAME_LENGTH_FAST.size
_LINK_COUNT_AT = fmt.field_offsets(fmt.LINK_TABLE_HEADER)["link_count"]


@dataclass(frozen=True, slots=True)
class LinkTable:
    """A parsed link table over ``buffer`` (the bytes the table came in, §7.2).

    ``region``/``offset`` locate ``buffer[0]``; ``what`` names the table in errors.
    Entries are in the stored order, which must be the §7.3 order for lookups to work.
    """

    buffer: memoryview
    value_size: int
    count: int
    length: int
    what: str
    region: int
    offset: int

    @classmethod
    def parse(
        cls, buffer: memoryview, value_size: int, what: str, region: int, offset: int
    ) -> LinkTable:
        """Validate the header: 8 <= Length <= len(buffer), 8 + N(E+4) <= Length.

        An empty buffer is an empty table (§7.4, a length-0 stream). Raises CimFormatError.
        """
        if len(buffer) == 0:
            return cls(buffer, value_size, 0, 0, what, region, offset)
        if len(buffer) < fmt.LINK_TABLE_HEADER_SIZE:
            raise CimFormatError(
                what, region=region, offset=offset, why=f"{len(buffer)} bytes, no room for header"
            )
        length, count = fmt.LINK_TABLE_HEADER_FAST.unpack_from(buffer)
        if not fmt.LINK_TABLE_HEADER_SIZE <= length <= len(buffer):
            raise CimFormatError(
                what,
                region=region,
                offset=offset,
                why=f"Length {length} is outside 8..{len(buffer)} (the stream's length)",
            )
        if fmt.LINK_TABLE_HEADER_SIZE + count * (value_size + _OFFSET_SIZE) > length:
            raise CimFormatError(
                what,
                region=region,
                offset=offset + _LINK_COUNT_AT,
                why=f"LinkCount {count} does not fit in Length {length}",
            )
        return cls(buffer, value_size, count, length, what, region, offset)

    def file_id_at(self, index: int) -> int:
        """Value ``index`` of a directory table: a file ID."""
        at = fmt.LINK_TABLE_HEADER_SIZE + index * self.value_size
        (file_id,) = fmt.FILE_ID_FAST.unpack_from(self.buffer, at)
        return int(file_id)

    def descriptor_at(self, index: int) -> tuple[int, int]:
        """Value ``index`` of a stream table: (DataOffset, LengthAndType)."""
        at = fmt.LINK_TABLE_HEADER_SIZE + index * self.value_size
        data_offset, length_and_type = fmt.STREAM_DESCRIPTOR_FAST.unpack_from(self.buffer, at)
        return int(data_offset), int(length_and_type)

    def value_offset(self, index: int) -> int:
        """Byte offset (within the region) of value ``index``, for error messages."""
        return self.offset + fmt.LINK_TABLE_HEADER_SIZE + index * self.value_size

    def name_location(self, index: int) -> tuple[int, int]:
        """Return (offset of the name's u16 length, length in units) relative to the table.

        Raises CimFormatError if the name lies outside the buffer (§7.2 reader validation).
        """
        slot = fmt.LINK_TABLE_HEADER_SIZE + self.count * self.value_size + _OFFSET_SIZE * index
        (name_offset,) = fmt.LINK_NAME_OFFSET_FAST.unpack_from(self.buffer, slot)
        if name_offset + _PREFIX_SIZE > len(self.buffer):
            raise CimFormatError(
                f"{self.what}, name offset {index}",
                region=self.region,
                offset=self.offset + slot,
                why=f"name offset {name_offset} is beyond the table's {len(self.buffer)} bytes",
            )
        (units,) = fmt.LINK_NAME_LENGTH_FAST.unpack_from(self.buffer, name_offset)
        if name_offset + _PREFIX_SIZE + 2 * units > len(self.buffer):
            raise CimFormatError(
                f"{self.what}, name {index}",
                region=self.region,
                offset=self.offset + name_offset,
                why=f"name of {units} units runs past the table's {len(self.buffer)} bytes",
            )
        return name_offset, units

    def name_at(self, index: int) -> str:
        """Name ``index``; raises CimFormatError if it is out of bounds."""
        name_offset, units = self.name_location(index)
        start = name_offset + _PREFIX_SIZE
        return decode_name(self.buffer[start : start + 2 * units])

    def names(self) -> Iterator[str]:
        """Yield the names in stored order; raises CimFormatError on a bad name."""
        for index in range(self.count):
            yield self.name_at(index)

    def directory_entries(self) -> Iterator[tuple[str, int]]:
        """Yield (name, file ID) of a directory table in stored order."""
        for index in range(self.count):
            yield self.name_at(index), self.file_id_at(index)

    def find(self, name: str, order: NameOrder) -> int | None:
        """Binary-search ``name`` with the §7.3 order (§13 step 4); None if absent.

        Like the Windows readers, relies on the table being sorted; ``verify`` checks that.
        """
        key = order.key(name)
        low, high = 0, self.count
        while low < high:
            middle = (low + high) // 2
            probe = order.key(self.name_at(middle))
            if probe == key:
                return middle
            if probe < key:
                low = middle + 1
            else:
                high = middle
        return None
