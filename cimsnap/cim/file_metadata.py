"""FileMetadata: what the writer is told about a file, mirroring CIMFS_FILE_METADATA (§12).

One frozen record per ``create_file`` call, validated when built so the writer never
stores a value the format cannot hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cimsnap.cim.errors import CimInvalidArgumentError
from cimsnap.cim.format import (
    EA_LENGTH_MAX,
    LENGTH_MASK,
    REPARSE_DATA_HEADER_FAST,
    REPARSE_DATA_HEADER_SIZE,
    FileAttribute,
)

__all__ = ["NULL_DACL_SECURITY_DESCRIPTOR", "STORABLE_ATTRIBUTES", "FileMetadata"]

#: Self-relative SECURITY_DESCRIPTOR with a NULL DACL (SDDL ``D:NO_ACCESS_CONTROL``):
#: revision 1, control SE_SELF_RELATIVE | SE_DACL_PRESENT, no owner, group, SACL or DACL.
#: §8: hcsshim substitutes exactly this when a file has no SD ("an empty security
#: descriptor creates a CIM in a weird state"); the writer does the same.
NULL_DACL_SECURITY_DESCRIPTOR: Final = bytes([1, 0, 4, 0x80]) + bytes(16)

_U64_MAX: Final = (1 << 64) - 1
_U16_MAX: Final = 0xFFFF
#: The attribute bits a file record can store (record flags, the stream type, reparse data).
STORABLE_ATTRIBUTES: Final = int(
    FileAttribute.READONLY
    | FileAttribute.HIDDEN
    | FileAttribute.SYSTEM
    | FileAttribute.DIRECTORY
    | FileAttribute.ARCHIVE
    | FileAttribute.SPARSE_FILE
    | FileAttribute.REPARSE_POINT
)
_DIRECTORY: Final = int(FileAttribute.DIRECTORY)
_REPARSE_POINT: Final = int(FileAttribute.REPARSE_POINT)


@dataclass(frozen=True, slots=True)
class FileMetadata:
    """Metadata of one file or directory (CIMFS_FILE_METADATA, §12).

    * ``attributes``: Win32 FILE_ATTRIBUTE_* bits. DIRECTORY makes a directory. Only
      READONLY, HIDDEN, SYSTEM, ARCHIVE and SPARSE_FILE are stored (§7); REPARSE_POINT is
      derived from ``reparse``. Any other bit raises (§18 q11: rather than silently drop a
      bit the caller expects to read back, we refuse it).
    * ``size``: FileSize, the fixed length of the default stream; 0 for directories.
    * the four FILETIMEs, stored verbatim.
    * ``security_descriptor``: a self-relative SD (<= 65535 bytes), or None for the NULL-DACL
      descriptor above.
    * ``ea``: the FILE_FULL_EA_INFORMATION chain (<= 65535 bytes), b"" for none.
    * ``reparse``: a whole REPARSE_DATA_BUFFER with its 8-byte header (<= 65535 bytes),
      b"" for none.

    Raises :class:`CimInvalidArgumentError` for a value the format cannot hold.
    """

    attributes: int = 0
    size: int = 0
    creation_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    last_access_time: int = 0
    security_descriptor: bytes | None = None
    ea: bytes = b""
    reparse: bytes = b""

    def __post_init__(self) -> None:
        # Plain ints, not IntFlag arithmetic: this runs once per file on the hot path.
        if self.attributes & ~STORABLE_ATTRIBUTES or self.attributes < 0:
            raise CimInvalidArgumentError(
                f"attributes {self.attributes:#x} hold bits a CIM cannot store"
            )
        if self.attributes & _REPARSE_POINT and not self.reparse:
            raise CimInvalidArgumentError("REPARSE_POINT attribute without a reparse buffer")
        if not 0 <= self.size <= LENGTH_MASK:
            raise CimInvalidArgumentError(f"file size {self.size} does not fit in 48 bits")
        if self.attributes & _DIRECTORY and self.size:
            raise CimInvalidArgumentError(f"a directory must have size 0, not {self.size}")
        times = (self.creation_time, self.last_write_time, self.change_time, self.last_access_time)
        if not (min(times) >= 0 and max(times) <= _U64_MAX):
            raise CimInvalidArgumentError(f"times {times} are not all FILETIMEs")
        sd = self.security_descriptor
        if sd is not None and not 0 < len(sd) <= _U16_MAX:
            raise CimInvalidArgumentError(f"security descriptor of {len(sd)} bytes")
        if len(self.ea) > EA_LENGTH_MAX:
            raise CimInvalidArgumentError(f"EA buffer of {len(self.ea)} bytes")
        if self.reparse and not REPARSE_DATA_HEADER_SIZE <= len(self.reparse) <= _U16_MAX:
            raise CimInvalidArgumentError(f"reparse buffer of {len(self.reparse)} bytes")

    @property
    def is_directory(self) -> bool:
        """True if DIRECTORY is set."""
        return bool(self.attributes & _DIRECTORY)

    @property
    def reparse_tag(self) -> int:
        """The tag of the reparse buffer (its first u32), or 0 without one."""
        if not self.reparse:
            return 0
        tag: int = REPARSE_DATA_HEADER_FAST.unpack_from(self.reparse)[0]
        return tag
