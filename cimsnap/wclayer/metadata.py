"""From a layer entry's Win32 metadata to the CIM writer's :class:`FileMetadata`.

**Attribute masking** (the Windows layer format, the CimFS format). A layer tar may
carry any FILE_ATTRIBUTE_* bit (NORMAL 0x80, COMPRESSED 0x800, NOT_CONTENT_INDEXED
0x2000, ...), and hcsshim passes them all to CimFS, but a CIM file record can hold only
READONLY, HIDDEN, SYSTEM, ARCHIVE and SPARSE_FILE (as record flags), DIRECTORY (as the
stream type) and REPARSE_POINT (as the presence of reparse data). Choice: every other bit
is dropped, because it is all a CIM can store and Windows' own CimFS reader reports no
other bit either; REPARSE_POINT follows the reparse buffer (set with one, cleared
without), so the record is always self-consistent. Pinned by ``test_layer_writer``.
"""

from __future__ import annotations

from typing import Final

from cimsnap.cim import FileMetadata
from cimsnap.cim.file_metadata import STORABLE_ATTRIBUTES as CIM_STORABLE_ATTRIBUTES
from cimsnap.cim.format import FileAttribute
from cimsnap.wclayer.fileinfo import FileBasicInfo

__all__ = ["STORABLE_ATTRIBUTES", "file_metadata", "storable_attributes"]

_REPARSE_POINT: Final = int(FileAttribute.REPARSE_POINT)
#: The attribute bits kept from a layer entry (see the module docstring): what a CIM file
#: record can store, but REPARSE_POINT, which follows the reparse buffer instead.
STORABLE_ATTRIBUTES: Final = CIM_STORABLE_ATTRIBUTES & ~_REPARSE_POINT


def storable_attributes(attributes: int, *, has_reparse: bool) -> int:
    """Return ``attributes`` reduced to what a CIM stores (module docstring)."""
    masked = attributes & STORABLE_ATTRIBUTES
    return masked | _REPARSE_POINT if has_reparse else masked


def file_metadata(
    info: FileBasicInfo,
    size: int,
    security_descriptor: bytes | None,
    extended_attributes: bytes,
    reparse_data: bytes,
) -> FileMetadata:
    """Build the CIM metadata of one entry; an empty SD becomes the writer's NULL-DACL SD.

    Raises :class:`cimsnap.cim.CimApiError` (CimInvalidArgumentError) for values a CIM
    cannot hold (oversized SD/EA/reparse buffer, a directory with a size, bad times).
    """
    return FileMetadata(
        attributes=storable_attributes(info.file_attributes, has_reparse=bool(reparse_data)),
        size=size,
        creation_time=info.creation_time,
        last_write_time=info.last_write_time,
        change_time=info.change_time,
        last_access_time=info.last_access_time,
        security_descriptor=security_descriptor or None,
        ea=extended_attributes,
        reparse=reparse_data,
    )
