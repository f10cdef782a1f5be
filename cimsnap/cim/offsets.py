"""RegionOffset: the u64 address of every CimFS object.

Bits 0-47 are the byte offset inside one region file, bits 48-63 the *global* region index
(parents' regions first, the image's own last, §3.3). The value 0 is the null offset
("object absent"); byte offset 0 of any region is its header, so a non-null offset whose
byte part is 0 is invalid.

This module only packs and splits values; whether an offset is in range for a given image
is the reader's business (it knows the regions and raises ``CimFormatError``).
"""

from __future__ import annotations

from typing import Final, NewType

__all__ = [
    "MAX_BYTE_OFFSET",
    "MAX_REGION_INDEX",
    "NULL_OFFSET",
    "RegionOffset",
    "is_null",
    "make_region_offset",
    "split_region_offset",
]

RegionOffset = NewType("RegionOffset", int)

#: The null RegionOffset: "no object".
NULL_OFFSET: Final = RegionOffset(0)
_BYTE_BITS: Final = 48
#: Largest byte offset inside a region (48 bits).
MAX_BYTE_OFFSET: Final = (1 << _BYTE_BITS) - 1
#: Largest global region index (16 bits).
MAX_REGION_INDEX: Final = 0xFFFF


def make_region_offset(region_index: int, byte_offset: int) -> RegionOffset:
    """Pack a global region index and a byte offset into a RegionOffset.

    Raises ValueError if the index is not 0 ... 65535 or the byte offset is not
    1 ... 2**48 - 1 (0 would be the region header, and it would make a null offset in
    region 0).
    """
    if not 0 <= region_index <= MAX_REGION_INDEX:
        raise ValueError(f"region index {region_index} is not in 0..{MAX_REGION_INDEX}")
    if not 0 < byte_offset <= MAX_BYTE_OFFSET:
        raise ValueError(f"byte offset {byte_offset} is not in 1..{MAX_BYTE_OFFSET}")
    return RegionOffset((region_index << _BYTE_BITS) | byte_offset)


def split_region_offset(value: int) -> tuple[int, int]:
    """Return ``(region_index, byte_offset)`` of a u64 RegionOffset (no range checks).

    Raises ValueError if ``value`` is not a u64.
    """
    if not 0 <= value <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"region offset {value} is not a u64")
    return value >> _BYTE_BITS, value & MAX_BYTE_OFFSET


def is_null(value: int) -> bool:
    """True if ``value`` is the null RegionOffset."""
    return value == 0
