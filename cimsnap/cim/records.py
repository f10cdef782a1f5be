"""Decoded file records and stream descriptors.

Pure functions from bytes to frozen records; bounds are the caller's (the reader slices
exactly the structure's size before calling). A bad stream type raises CimFormatError.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError

__all__ = ["FileRecord", "StreamDescriptor", "decode_file_record", "decode_stream_descriptor"]

_DIRECTORY = int(fmt.FileAttribute.DIRECTORY)
_REPARSE_POINT = int(fmt.FileAttribute.REPARSE_POINT)
_DEFAULT_STREAM_AT = fmt.field_offsets(fmt.FILE_RECORD)["default_stream.data_offset"]


@dataclass(frozen=True, slots=True)
class StreamDescriptor:
    """A stream descriptor (§7.1) with LengthAndType split.

    ``reserved_bits`` holds bits 57-63 (should be 0 [I]; readers ignore them, ``verify``
    reports them).
    """

    data_offset: int
    length: int
    type: fmt.StreamType
    sparse: bool
    reserved_bits: int = 0


@dataclass(frozen=True, slots=True)
class FileRecord:
    """A file record (§7) of file ``file_id``; ``region``/``offset`` locate it for errors."""

    file_id: int
    flags: int
    ea_length: int
    reparse_tag: int
    creation_time: int
    last_write_time: int
    change_time: int
    last_access_time: int
    stream: StreamDescriptor
    sd_offset: int
    ea_offset: int
    reparse_offset: int
    stream_table_offset: int
    parent_file_id: int
    base_region_index: int
    reserved: int
    region: int
    offset: int

    @property
    def is_directory(self) -> bool:
        """True if the default stream is a link table (§7.4)."""
        return self.stream.type is fmt.StreamType.LINK_TABLE

    @property
    def attributes(self) -> fmt.FileAttribute:
        """Win32 attributes as a reader reports them (§7): flags + DIRECTORY + REPARSE_POINT."""
        attributes = fmt.attributes_from_flags(self.flags)
        if self.stream.type is fmt.StreamType.LINK_TABLE or self.reparse_offset:
            value = int(attributes)  # plain int arithmetic: IntFlag operators are slow
            if self.stream.type is fmt.StreamType.LINK_TABLE:
                value |= _DIRECTORY
            if self.reparse_offset:
                value |= _REPARSE_POINT
            return fmt.FileAttribute(value)
        return attributes


def decode_stream_descriptor(
    data_offset: int, length_and_type: int, what: str, region: int, offset: int
) -> StreamDescriptor:
    """Build a StreamDescriptor; raises CimFormatError naming ``what`` for a type > 2."""
    length, raw_type, sparse, reserved = fmt.unpack_length_and_type(length_and_type)
    try:
        stream_type = fmt.StreamType(raw_type)
    except ValueError:
        raise CimFormatError(
            what, region=region, offset=offset, why=f"unknown stream type {raw_type}"
        ) from None
    return StreamDescriptor(data_offset, length, stream_type, sparse, reserved)


def decode_file_record(
    data: bytes | memoryview, file_id: int, region: int, offset: int
) -> FileRecord:
    """Decode a 96-byte record (shorter input is zero-filled, §6); raises CimFormatError."""
    if len(data) < fmt.FILE_RECORD_SIZE:
        data = bytes(data) + bytes(fmt.FILE_RECORD_SIZE - len(data))
    (
        flags,
        ea_length,
        reparse_tag,
        creation_time,
        last_write_time,
        change_time,
        last_access_time,
        data_offset,
        length_and_type,
        sd_offset,
        ea_offset,
        reparse_offset,
        stream_table_offset,
        parent_file_id,
        base_region_index,
        reserved,
    ) = fmt.FILE_RECORD_FAST.unpack_from(data)
    stream = decode_stream_descriptor(
        data_offset,
        length_and_type,
        f"default stream of file {file_id}",
        region,
        offset + _DEFAULT_STREAM_AT,
    )
    return FileRecord(
        file_id=file_id,
        flags=flags,
        ea_length=ea_length,
        reparse_tag=reparse_tag,
        creation_time=creation_time,
        last_write_time=last_write_time,
        change_time=change_time,
        last_access_time=last_access_time,
        stream=stream,
        sd_offset=sd_offset,
        ea_offset=ea_offset,
        reparse_offset=reparse_offset,
        stream_table_offset=stream_table_offset,
        parent_file_id=parent_file_id,
        base_region_index=base_region_index,
        reserved=reserved,
        region=region,
        offset=offset,
    )
