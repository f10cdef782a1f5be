"""The ``.cim`` file header and region-set file names.

:func:`parse_image_header` and :func:`parse_region_header` are sans-IO; the two path
functions are the only file access here (the ``.cim`` is tiny and read once).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import construct as cs

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError

__all__ = [
    "ImageHeader",
    "RegionSet",
    "check_common_header",
    "objectid_file_name",
    "parse_image_header",
    "parse_region_header",
    "read_image_header",
    "region_file_name",
    "region_set_files",
]

#: Largest possible ``.cim`` file: the fixed header plus 65535 parent sets (§3.2).
_MAX_IMAGE_FILE_SIZE: Final = fmt.FILESYSTEM_HEADER_SIZE + 0xFFFF * fmt.REGION_SET_SIZE
#: Field offsets named in errors: the version, and the image's own region set.
_VERSION_AT: Final = fmt.field_offsets(fmt.COMMON_HEADER)["major_version"]
_OWN_SET_AT: Final = fmt.field_offsets(fmt.FILESYSTEM_HEADER)["regions.id"]


@dataclass(frozen=True, slots=True)
class RegionSet:
    """A region set (§3.2): ``count`` region files named after ``guid``."""

    guid: uuid.UUID
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.count <= 0xFFFF:
            raise ValueError(f"region set count {self.count} is not a u16")


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """The ``.cim`` header (§3.2): the image's own set, its parents and the Filesystem object.

    ``parents`` are in stored order, which is also global region order (§3.3).
    """

    own: RegionSet
    parents: tuple[RegionSet, ...]
    filesystem_offset: int

    @property
    def region_sets(self) -> tuple[RegionSet, ...]:
        """All sets in global region numbering order: parents first, own set last (§3.3)."""
        return (*self.parents, self.own)


def check_common_header(data: bytes | memoryview, what: str, region: int | None = None) -> None:
    """Check magic and major version of a common header (§3.1), as the readers do.

    Raises CimFormatError naming ``what``. Type and reserved fields are left to ``verify``.
    """
    if len(data) < fmt.COMMON_HEADER_SIZE:
        raise CimFormatError(
            what, region=region, offset=0, why=f"{len(data)} bytes, shorter than a header"
        )
    header = fmt.COMMON_HEADER.parse(bytes(data[: fmt.COMMON_HEADER_SIZE]))
    if header.magic != fmt.MAGIC:
        raise CimFormatError(
            what, region=region, offset=0, why=f"magic is {bytes(header.magic)!r}, not 'cimfile0'"
        )
    if not fmt.MIN_SUPPORTED_MAJOR <= header.major_version <= fmt.MAX_SUPPORTED_MAJOR:
        raise CimFormatError(
            what,
            region=region,
            offset=_VERSION_AT,
            why=f"version {header.major_version}.{header.minor_version} is not supported "
            f"(need {fmt.MIN_SUPPORTED_MAJOR}.x to {fmt.MAX_SUPPORTED_MAJOR}.x)",
        )


def parse_image_header(data: bytes | memoryview, what: str = "image header") -> ImageHeader:
    """Parse the whole content of a ``.cim`` file (§3.2, §13 step 1).

    Raises CimFormatError if it is short, has a bad magic or version, lists more parent
    sets than it holds, or its region sets total 0 or more than 65536 regions (§3.3).
    Trailing bytes after the parent sets are ignored, like the readers do.
    """
    check_common_header(data, what)
    if len(data) < fmt.FILESYSTEM_HEADER_SIZE:
        raise CimFormatError(
            what, offset=0, why=f"{len(data)} bytes, need {fmt.FILESYSTEM_HEADER_SIZE}"
        )
    fixed = fmt.FILESYSTEM_HEADER.parse(bytes(data[: fmt.FILESYSTEM_HEADER_SIZE]))
    end = fmt.FILESYSTEM_HEADER_SIZE + fixed.parent_count * fmt.REGION_SET_SIZE
    if len(data) < end:
        raise CimFormatError(
            what,
            offset=fmt.FILESYSTEM_HEADER_SIZE,
            why=f"ParentCount {fixed.parent_count} needs {end} bytes, file has {len(data)}",
        )
    parents = tuple(
        _region_set(fmt.REGION_SET.parse(bytes(data[at : at + fmt.REGION_SET_SIZE])))
        for at in range(fmt.FILESYSTEM_HEADER_SIZE, end, fmt.REGION_SET_SIZE)
    )
    header = ImageHeader(
        own=_region_set(fixed.regions),
        parents=parents,
        filesystem_offset=fixed.filesystem_offset,
    )
    total = sum(s.count for s in header.region_sets)
    if not 1 <= total <= fmt.MAX_REGION_COUNT:
        raise CimFormatError(
            what,
            offset=_OWN_SET_AT,
            why=f"{total} regions in all sets, need 1 to {fmt.MAX_REGION_COUNT}",
        )
    return header


def _region_set(parsed: cs.Container) -> RegionSet:
    return RegionSet(guid=parsed.id, count=parsed.count)


def read_image_header(cim_path: Path) -> ImageHeader:
    """Read and parse the ``.cim`` file at ``cim_path``.

    Raises CimFormatError if the file is not a valid image header (a missing or unreadable
    file raises the OSError from ``open``). Reads at most the largest possible header.
    """
    with open(cim_path, "rb") as file:
        data = file.read(_MAX_IMAGE_FILE_SIZE)
    return parse_image_header(data, what=f"image header of {cim_path.name}")


def parse_region_header(data: bytes | memoryview, what: str, region: int) -> cs.Container:
    """Check and parse a region file's 40-byte header (§3.4); raises CimFormatError."""
    check_common_header(data, what, region)
    if len(data) < fmt.REGION_HEADER_SIZE:
        raise CimFormatError(
            what, region=region, offset=0, why=f"{len(data)} bytes, shorter than a region header"
        )
    return fmt.REGION_HEADER.parse(bytes(data[: fmt.REGION_HEADER_SIZE]))


def region_file_name(region_set: RegionSet, index: int) -> str:
    """``region_<guid>_<n>`` with the lowercase GUID (§2)."""
    return f"region_{region_set.guid}_{index}"


def objectid_file_name(region_set: RegionSet, index: int) -> str:
    """``objectid_<guid>_<n>`` with the lowercase GUID (§2)."""
    return f"objectid_{region_set.guid}_{index}"


def region_set_files(directory: Path, region_set: RegionSet) -> list[Path]:
    """Return the region and objectid file paths of ``region_set`` in ``directory``.

    Order: ``region_<guid>_0``, ``objectid_<guid>_0``, ``region_<guid>_1``, ... for
    n < count. The GUID is lowercase without braces (§2; the Windows writer's case is [U]
    q2, and a Linux reader opens this exact string). Pure path computation: existence is
    not checked.
    """
    files: list[Path] = []
    for n in range(region_set.count):
        files.append(directory / region_file_name(region_set, n))
        files.append(directory / objectid_file_name(region_set, n))
    return files
