"""FileBasicInfo: the Win32 times and attributes a layer entry carries (go-winio's type)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FileBasicInfo"]


@dataclass(frozen=True, slots=True)
class FileBasicInfo:
    """Times as FILETIMEs (100 ns since 1601-01-01 UTC, u64) and FILE_ATTRIBUTE_* bits.

    This is what the tar decoder produces and what :class:`CimLayerWriter.add` takes; the
    writer decides which attribute bits a CIM can store.
    """

    creation_time: int = 0
    last_access_time: int = 0
    last_write_time: int = 0
    change_time: int = 0
    file_attributes: int = 0
