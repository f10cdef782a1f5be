"""On-disk structures and constants of the classic CimFS image, version 2.x.

Every structure is declared here exactly once, with ``construct``, under the name the
project's CimFS format notes use (their sections are cited as §n; ``docs/format-choices.md``
lists the choices made where the format is unknown). Field names are those names in
snake_case. Logic elsewhere imports these declarations; it never re-states a layout.

Hot structures also get a fast path: :func:`derive_fast` turns a fixed-size declaration into
a :class:`FastStruct` (one ``struct.Struct`` over the flattened fields). The derived form is
the *only* second representation; ``tests/unit/cim/test_format_layout.py`` checks that both
paths give the same bytes and values, and that every size and field offset matches §15 and
the section tables.

Conventions (§1): all integers little-endian, no hidden padding, GUIDs in Windows layout
(``uuid.UUID.bytes_le``), RegionOffset = u64 (see :mod:`cimsnap.cim.offsets`).

This module holds no I/O and no policy; it may be extended additively by the writer.
"""

from __future__ import annotations

import enum
import struct
import uuid
from dataclasses import dataclass
from typing import Any, Final

import construct as cs

from cimsnap.binfields import leaves

__all__ = [
    "COMMON_HEADER",
    "COMMON_HEADER_SIZE",
    "EA_LENGTH_MAX",
    "FILESYSTEM_HEADER",
    "FILESYSTEM_HEADER_SIZE",
    "FILESYSTEM_OBJECT",
    "FILESYSTEM_OBJECT_SIZE",
    "FILES_PER_TABLE",
    "FILE_ID",
    "FILE_ID_FAST",
    "FILE_RECORD",
    "FILE_RECORD_FAST",
    "FILE_RECORD_SIZE",
    "FILE_RECORD_SIZE_V1",
    "FILE_TABLE_DIRECTORY_ENTRY",
    "FILE_TABLE_DIRECTORY_ENTRY_FAST",
    "FILE_TABLE_DIRECTORY_ENTRY_SIZE",
    "GUID",
    "LENGTH_MASK",
    "LINK_NAME",
    "LINK_NAME_LENGTH",
    "LINK_NAME_LENGTH_FAST",
    "LINK_NAME_OFFSET",
    "LINK_NAME_OFFSET_FAST",
    "LINK_TABLE_HEADER",
    "LINK_TABLE_HEADER_FAST",
    "LINK_TABLE_HEADER_SIZE",
    "MAGIC",
    "MAX_NAME_LENGTH",
    "MAX_PATH_LENGTH",
    "MAX_REGION_COUNT",
    "MAX_SUPPORTED_MAJOR",
    "METADATA_ALIGNMENT",
    "MIN_SUPPORTED_MAJOR",
    "OBJECTID_ENTRY",
    "OBJECTID_ENTRY_SIZE",
    "OBJECTID_HEADER",
    "OBJECTID_HEADER_SIZE",
    "PAGE_SIZE",
    "PE_IMAGE",
    "PE_IMAGE_MAPPING",
    "PE_IMAGE_MAPPING_FAST",
    "PE_IMAGE_MAPPING_SIZE",
    "PE_IMAGE_SIZE",
    "REGION_HEADER",
    "REGION_HEADER_SIZE",
    "REGION_OFFSET",
    "REGION_OFFSET_FAST",
    "REGION_SET",
    "REGION_SET_SIZE",
    "REPARSE_LENGTH",
    "REPARSE_LENGTH_FAST",
    "SD_LENGTH",
    "SD_LENGTH_FAST",
    "SMALL_DATA_ALIGNMENT",
    "SPARSE_BIT",
    "STREAM_DESCRIPTOR",
    "STREAM_DESCRIPTOR_FAST",
    "STREAM_DESCRIPTOR_SIZE",
    "STREAM_TABLE_LENGTH",
    "STREAM_TABLE_LENGTH_FAST",
    "UPCASE_TABLE_SIZE",
    "VERSION_MAJOR",
    "VERSION_MINOR",
    "FastStruct",
    "FileAttribute",
    "FileType",
    "RecordFlag",
    "RegionType",
    "StreamType",
    "attributes_from_flags",
    "derive_fast",
    "field_offsets",
    "flags_from_attributes",
    "header_length",
    "pack_length_and_type",
    "unpack_length_and_type",
]

# --- §1, §3.1: constants of every file -------------------------------------------------

#: ASCII magic at offset 0 of every file of an image (§3.1).
MAGIC: Final = b"cimfile0"
#: Version this package writes (§3.1).
VERSION_MAJOR: Final = 2
VERSION_MINOR: Final = 0
#: Versions this package reads. §3.1: later hcsshim accepts 2 <= Major <= 3 with unchanged
#: structures; what v3 added is [U]. Choice: accept 3 like hcsshim's current reader, since
#: every structure we read is identical; tests pin both bounds.
MIN_SUPPORTED_MAJOR: Final = 2
MAX_SUPPORTED_MAJOR: Final = 3


class FileType(enum.IntEnum):
    """Common header ``Type`` (§3.1): which kind of file carries the header."""

    IMAGE = 0
    REGION = 1
    OBJECTID = 2


class RegionType(enum.IntEnum):
    """Region header ``Type`` (§3.4). Readers accept any object in any region type."""

    METADATA = 0
    DATA = 1
    SMALL_DATA = 2


class StreamType(enum.IntEnum):
    """Stream descriptor type, bits 48-55 of LengthAndType (§7.1)."""

    DATA = 0
    LINK_TABLE = 1
    PE_IMAGE = 2


#: Page-aligned data region alignment, counted from the region file's start (§3.4).
PAGE_SIZE: Final = 4096
#: Alignment of objects in metadata regions [I] and small-data regions [K comment] (§3.4).
METADATA_ALIGNMENT: Final = 8
SMALL_DATA_ALIGNMENT: Final = 8
#: Records per file table (§6).
FILES_PER_TABLE: Final = 1024
#: Bytes per file record: v2 (§7) and the older v1 (§3.1, §6).
FILE_RECORD_SIZE: Final = 96
FILE_RECORD_SIZE_V1: Final = 88
#: 0x10000 u16 entries (§5).
UPCASE_TABLE_SIZE: Final = 0x10000 * 2
#: Longest name component and path, in UTF-16 code units (§7.2).
MAX_NAME_LENGTH: Final = 0xFF
MAX_PATH_LENGTH: Final = 0x7FFF
#: Largest EA buffer (§8).
EA_LENGTH_MAX: Final = 0xFFFF
#: Regions across the image and all its parents: 1 ... 65536 (§3.3).
MAX_REGION_COUNT: Final = 0x10000

#: LengthAndType layout (§7.1): bits 0-47 length, 48-55 type, bit 56 sparse, 57-63 zero.
LENGTH_MASK: Final = (1 << 48) - 1
SPARSE_BIT: Final = 1 << 56
_TYPE_SHIFT: Final = 48
_RESERVED_MASK: Final = ~((1 << 57) - 1) & 0xFFFF_FFFF_FFFF_FFFF


class RecordFlag(enum.IntFlag):
    """File record ``Flags`` bits (§7)."""

    READONLY = 0x1
    HIDDEN = 0x2
    SYSTEM = 0x4
    ARCHIVE = 0x8
    SPARSE_FILE = 0x10


class FileAttribute(enum.IntFlag):
    """The Win32 FILE_ATTRIBUTE_* values a CIM can represent or a reader derives (§7)."""

    READONLY = 0x1
    HIDDEN = 0x2
    SYSTEM = 0x4
    DIRECTORY = 0x10
    ARCHIVE = 0x20
    SPARSE_FILE = 0x200
    REPARSE_POINT = 0x400


_FLAG_TO_ATTRIBUTE: Final = (
    (RecordFlag.READONLY, FileAttribute.READONLY),
    (RecordFlag.HIDDEN, FileAttribute.HIDDEN),
    (RecordFlag.SYSTEM, FileAttribute.SYSTEM),
    (RecordFlag.ARCHIVE, FileAttribute.ARCHIVE),
    (RecordFlag.SPARSE_FILE, FileAttribute.SPARSE_FILE),
)


def _attributes_of(flags: int) -> FileAttribute:
    result = FileAttribute(0)
    for flag, attribute in _FLAG_TO_ATTRIBUTE:
        if flags & flag:
            result |= attribute
    return result


#: attributes_from_flags for each of the 32 defined flag combinations (hot in the reader).
_ATTRIBUTES_BY_FLAGS: Final = tuple(_attributes_of(flags) for flags in range(0x20))


def attributes_from_flags(flags: int) -> FileAttribute:
    """Map record Flags to Win32 attributes (§7); undefined flag bits are ignored.

    DIRECTORY and REPARSE_POINT are not flags: the reader adds them from the stream type
    and the reparse offset.
    """
    return _ATTRIBUTES_BY_FLAGS[flags & 0x1F]


def flags_from_attributes(attributes: int) -> RecordFlag:
    """Map Win32 attributes to record Flags (§7); unrepresentable attributes are dropped.

    §18 q11 asks whether Windows drops or rejects other attributes; dropping matches what
    the reader can report back, so callers that care must check before calling.
    """
    result = RecordFlag(0)
    for flag, attribute in _FLAG_TO_ATTRIBUTE:
        if attributes & attribute:
            result |= flag
    return result


def pack_length_and_type(length: int, stream_type: StreamType, *, sparse: bool = False) -> int:
    """Return the u64 LengthAndType for a stream descriptor (§7.1).

    Raises ValueError if ``length`` does not fit in 48 bits.
    """
    if not 0 <= length <= LENGTH_MASK:
        raise ValueError(f"stream length {length} does not fit in 48 bits")
    return length | (int(stream_type) << _TYPE_SHIFT) | (SPARSE_BIT if sparse else 0)


def unpack_length_and_type(value: int) -> tuple[int, int, bool, int]:
    """Split a LengthAndType into (length, raw type, sparse, reserved bits 57-63) (§7.1).

    The raw type is returned unchecked so a reader can name a bad value in its error.
    """
    return (
        value & LENGTH_MASK,
        (value >> _TYPE_SHIFT) & 0xFF,
        bool(value & SPARSE_BIT),
        value & _RESERVED_MASK,
    )


# --- construct declarations --------------------------------------------------------------


class _GuidAdapter(cs.Adapter):  # type: ignore[misc]
    """16 bytes in Windows GUID layout <-> ``uuid.UUID`` (§1)."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> uuid.UUID:
        return uuid.UUID(bytes_le=bytes(obj))

    def _encode(self, obj: uuid.UUID, context: Any, path: Any) -> bytes:
        return obj.bytes_le


GUID: Final = _GuidAdapter(cs.Bytes(16))

#: RegionOffset (§1): bits 0-47 byte offset, 48-63 global region index; 0 = null.
REGION_OFFSET: Final = cs.Int64ul

#: §3.1 Common header, 32 bytes, at offset 0 of every file.
COMMON_HEADER: Final = cs.Struct(
    "magic" / cs.Bytes(8),
    "header_length" / cs.Int32ul,
    "type" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "reserved2" / cs.Int16ul,
    "major_version" / cs.Int32ul,
    "minor_version" / cs.Int32ul,
    "reserved3" / cs.Int64ul,
)

#: §3.2 RegionSet, 24 bytes.
REGION_SET: Final = cs.Struct(
    "id" / GUID,
    "count" / cs.Int16ul,
    "reserved" / cs.Int16ul,
    "reserved1" / cs.Int32ul,
)

#: §3.2 Filesystem (.cim) header, fixed part of 72 bytes. It is followed directly by
#: ``parent_count`` × REGION_SET (ParentRegionSets); nothing else is in the file.
FILESYSTEM_HEADER: Final = cs.Struct(
    "common" / COMMON_HEADER,
    "regions" / REGION_SET,
    "filesystem_offset" / REGION_OFFSET,
    "reserved" / cs.Int32ul,
    "reserved1" / cs.Int16ul,
    "parent_count" / cs.Int16ul,
)

#: §3.4 Region file header, 40 bytes.
REGION_HEADER: Final = cs.Struct(
    "common" / COMMON_HEADER,
    "index" / cs.Int16ul,
    "type" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "reserved2" / cs.Int32ul,
)

#: §3.5 Object ID file header, 48 bytes.
OBJECTID_HEADER: Final = cs.Struct(
    "common" / COMMON_HEADER,
    "index" / cs.Int16ul,
    "type" / cs.Int8ul,
    "reserved" / cs.Int8ul,
    "reserved2" / cs.Int32ul,
    "table_offset" / cs.Int32ul,
    "count" / cs.Int32ul,
)

#: §3.5 Object ID entry, 40 bytes. The digest algorithm is [U]; cimsnap writes none.
OBJECTID_ENTRY: Final = cs.Struct(
    "object_id" / cs.Struct("length" / cs.Int64ul, "digest" / cs.Bytes(24)),
    "offset" / cs.Int64ul,
)

#: §4 Filesystem object, 24 bytes.
FILESYSTEM_OBJECT: Final = cs.Struct(
    "upcase_table_offset" / REGION_OFFSET,
    "file_table_directory_offset" / REGION_OFFSET,
    "file_table_directory_length" / cs.Int32ul,
    "root_directory" / cs.Int32ul,
)

#: §6 File table directory entry, 16 bytes.
FILE_TABLE_DIRECTORY_ENTRY: Final = cs.Struct(
    "offset" / REGION_OFFSET,
    "count" / cs.Int16ul,
    "entry_size" / cs.Int16ul,
    "reserved" / cs.Int32ul,
)

#: §7.1 Stream descriptor, 16 bytes. See :func:`unpack_length_and_type`.
STREAM_DESCRIPTOR: Final = cs.Struct(
    "data_offset" / REGION_OFFSET,
    "length_and_type" / cs.Int64ul,
)

#: §7 File record, 96 bytes (v2 field placement, ParentFileId at the end).
FILE_RECORD: Final = cs.Struct(
    "flags" / cs.Int16ul,
    "ea_length" / cs.Int16ul,
    "reparse_tag" / cs.Int32ul,
    "creation_time" / cs.Int64ul,
    "last_write_time" / cs.Int64ul,
    "change_time" / cs.Int64ul,
    "last_access_time" / cs.Int64ul,
    "default_stream" / STREAM_DESCRIPTOR,
    "sd_offset" / REGION_OFFSET,
    "ea_offset" / REGION_OFFSET,
    "reparse_offset" / REGION_OFFSET,
    "stream_table_offset" / REGION_OFFSET,
    "parent_file_id" / cs.Int32ul,
    "base_region_index" / cs.Int16ul,
    "reserved" / cs.Int16ul,
)

#: §7.2 Link table header, 8 bytes: Length includes these 8 bytes; LinkCount = N.
#: Layout after it: N values (FILE_ID or STREAM_DESCRIPTOR), N × LINK_NAME_OFFSET (relative
#: to byte 0 of the table), then names, each LINK_NAME_LENGTH + that many UTF-16LE units.
LINK_TABLE_HEADER: Final = cs.Struct(
    "length" / cs.Int32ul,
    "link_count" / cs.Int32ul,
)
#: §7.2 / §7.4 directory link table value: a file ID (0 is invalid, §6).
FILE_ID: Final = cs.Int32ul
#: §7.2 name offset entry.
LINK_NAME_OFFSET: Final = cs.Int32ul
#: §7.2 name prefix: length in UTF-16 code units.
LINK_NAME_LENGTH: Final = cs.Int16ul
#: §7.2 a whole name: prefix + UTF-16LE units, no terminator.
LINK_NAME: Final = cs.Struct(
    "length" / LINK_NAME_LENGTH,
    "name" / cs.Bytes(cs.this.length * 2),
)
#: §7.4 stream table: a u32 byte count C, then C bytes holding a link table (E = 16).
STREAM_TABLE_LENGTH: Final = cs.Int32ul
#: §8 SD and reparse buffers: a u16 byte count, then the bytes.
SD_LENGTH: Final = cs.Int16ul
REPARSE_LENGTH: Final = cs.Int16ul

#: §9 PeImage object, 24 bytes, followed by ``mapping_count`` × PE_IMAGE_MAPPING.
PE_IMAGE: Final = cs.Struct(
    "data_offset" / REGION_OFFSET,
    "data_length" / cs.Int64ul,
    "image_length" / cs.Int32ul,
    "mapping_count" / cs.Int16ul,
    "flags" / cs.Int16ul,
)
#: §9 PeImageMapping, 8 bytes.
PE_IMAGE_MAPPING: Final = cs.Struct(
    "file_offset" / cs.Int32ul,
    "delta" / cs.Int32ul,
)

# Sizes derived from the declarations (the layout test pins them to §15).
COMMON_HEADER_SIZE: Final[int] = COMMON_HEADER.sizeof()
REGION_HEADER_SIZE: Final[int] = REGION_HEADER.sizeof()
OBJECTID_HEADER_SIZE: Final[int] = OBJECTID_HEADER.sizeof()
OBJECTID_ENTRY_SIZE: Final[int] = OBJECTID_ENTRY.sizeof()
FILESYSTEM_HEADER_SIZE: Final[int] = FILESYSTEM_HEADER.sizeof()
FILESYSTEM_OBJECT_SIZE: Final[int] = FILESYSTEM_OBJECT.sizeof()
FILE_TABLE_DIRECTORY_ENTRY_SIZE: Final[int] = FILE_TABLE_DIRECTORY_ENTRY.sizeof()
REGION_SET_SIZE: Final[int] = REGION_SET.sizeof()
STREAM_DESCRIPTOR_SIZE: Final[int] = STREAM_DESCRIPTOR.sizeof()
LINK_TABLE_HEADER_SIZE: Final[int] = LINK_TABLE_HEADER.sizeof()
PE_IMAGE_SIZE: Final[int] = PE_IMAGE.sizeof()
PE_IMAGE_MAPPING_SIZE: Final[int] = PE_IMAGE_MAPPING.sizeof()


def header_length(file_type: FileType, parent_count: int = 0) -> int:
    """Return the HeaderLength cimsnap writes (§3.1, recommended values; [U] q1).

    Choice for the open question: 40 for regions, 48 for objectid files and
    72 + 24 × ParentCount for the ``.cim``. No public reader reads the field.
    """
    if file_type is FileType.REGION:
        return REGION_HEADER_SIZE
    if file_type is FileType.OBJECTID:
        return OBJECTID_HEADER_SIZE
    return FILESYSTEM_HEADER_SIZE + REGION_SET_SIZE * parent_count


# --- derived fast paths --------------------------------------------------------------------


def field_offsets(con: Any) -> dict[str, int]:
    """Return each leaf field's byte offset (dotted names) of a fixed-size declaration.

    Raises TypeError if the declaration's size is not fixed.
    """
    offsets: dict[str, int] = {}
    position = 0
    for leaf in leaves(con):
        offsets[leaf.name] = position
        position += leaf.size
    return offsets


@dataclass(frozen=True, slots=True)
class FastStruct:
    """A ``struct.Struct`` derived from one fixed-size construct declaration.

    ``fields`` are the flattened leaf names in order (nested structs dotted, e.g.
    ``default_stream.data_offset``); tuples from :meth:`unpack_from` follow that order.
    Use only on bytes already bounds-checked: it performs no semantic checks.
    """

    fields: tuple[str, ...]
    packer: struct.Struct

    @property
    def size(self) -> int:
        """Byte size of the structure."""
        return self.packer.size

    def unpack_from(
        self, buffer: bytes | bytearray | memoryview, offset: int = 0
    ) -> tuple[Any, ...]:
        """Return the leaf values at ``offset``; raises struct.error if the buffer is short."""
        return self.packer.unpack_from(buffer, offset)

    def pack(self, *values: Any) -> bytes:
        """Return the bytes for leaf values in :attr:`fields` order."""
        return self.packer.pack(*values)

    def pack_into(self, buffer: bytearray | memoryview, offset: int, *values: Any) -> None:
        """Write the leaf values into ``buffer`` at ``offset``."""
        self.packer.pack_into(buffer, offset, *values)


def derive_fast(con: Any) -> FastStruct:
    """Derive the :class:`FastStruct` of a fixed-size declaration made of little-endian
    integers, fixed ``Bytes`` and nested ``Struct``s.

    Raises TypeError for any other construct (adapters, arrays, computed lengths).
    """
    fields: list[str] = []
    codes: list[str] = []
    for leaf in leaves(con):
        if leaf.code is None:
            raise TypeError(f"{leaf.name}: no struct equivalent, so no fast path")
        fields.append(leaf.name)
        codes.append(leaf.code)
    return FastStruct(fields=tuple(fields), packer=struct.Struct("<" + "".join(codes)))


FILE_RECORD_FAST: Final = derive_fast(FILE_RECORD)
STREAM_DESCRIPTOR_FAST: Final = derive_fast(STREAM_DESCRIPTOR)
FILE_TABLE_DIRECTORY_ENTRY_FAST: Final = derive_fast(FILE_TABLE_DIRECTORY_ENTRY)
LINK_TABLE_HEADER_FAST: Final = derive_fast(LINK_TABLE_HEADER)
FILE_ID_FAST: Final = derive_fast(FILE_ID)
LINK_NAME_OFFSET_FAST: Final = derive_fast(LINK_NAME_OFFSET)
LINK_NAME_LENGTH_FAST: Final = derive_fast(LINK_NAME_LENGTH)
REGION_OFFSET_FAST: Final = derive_fast(REGION_OFFSET)
PE_IMAGE_MAPPING_FAST: Final = derive_fast(PE_IMAGE_MAPPING)
STREAM_TABLE_LENGTH_FAST: Final = derive_fast(STREAM_TABLE_LENGTH)
SD_LENGTH_FAST: Final = derive_fast(SD_LENGTH)
REPARSE_LENGTH_FAST: Final = derive_fast(REPARSE_LENGTH)

# --- additions by the writer ---------------------------------------------------------------

#: §8 reparse data: the symbolic-link REPARSE_DATA_BUFFER (tag IO_REPARSE_TAG_SYMLINK).
#: ``reparse_data_length`` counts the bytes after the first 8; the name offsets and lengths
#: are in bytes, relative to the PathBuffer that follows this 20-byte header (UTF-16LE).
IO_REPARSE_TAG_SYMLINK: Final = 0xA000000C
SYMLINK_FLAG_RELATIVE: Final = 0x1
#: §8 the part of every REPARSE_DATA_BUFFER before its type-specific data.
REPARSE_DATA_HEADER: Final = cs.Struct(
    "reparse_tag" / cs.Int32ul,
    "reparse_data_length" / cs.Int16ul,
    "reserved" / cs.Int16ul,
)
SYMLINK_REPARSE_HEADER: Final = cs.Struct(
    *REPARSE_DATA_HEADER.subcons,
    "substitute_name_offset" / cs.Int16ul,
    "substitute_name_length" / cs.Int16ul,
    "print_name_offset" / cs.Int16ul,
    "print_name_length" / cs.Int16ul,
    "flags" / cs.Int32ul,
)
#: Bytes of REPARSE_DATA_BUFFER before its type-specific part (tag, length, reserved).
REPARSE_DATA_HEADER_SIZE: Final[int] = REPARSE_DATA_HEADER.sizeof()
REPARSE_DATA_HEADER_FAST: Final = derive_fast(REPARSE_DATA_HEADER)
