"""Classic CimFS (v2.x) images: format declarations, reader, verifier and writer.

See ``/work/shared/docs/cim-format.md``. This package knows nothing of containers.
"""

from __future__ import annotations

from cimsnap.cim.build import BuildReport, build_from_directory
from cimsnap.cim.content import CimStream
from cimsnap.cim.errors import (
    CimApiError,
    CimError,
    CimFileExistsError,
    CimFormatError,
    CimInvalidNameError,
    CimLinkToDirectoryError,
    CimNotADirectoryError,
    CimNotFoundError,
    CimPathNotFoundError,
    CimWriteBeyondSizeError,
)
from cimsnap.cim.file_metadata import FileMetadata
from cimsnap.cim.headers import ImageHeader, RegionSet, read_image_header, region_set_files
from cimsnap.cim.offsets import RegionOffset
from cimsnap.cim.upcase import NameOrder, check_name
from cimsnap.cim.writer import CimWriter

__all__ = [
    "BuildReport",
    "CimApiError",
    "CimError",
    "CimFileExistsError",
    "CimFormatError",
    "CimInvalidNameError",
    "CimLinkToDirectoryError",
    "CimNotADirectoryError",
    "CimNotFoundError",
    "CimPathNotFoundError",
    "CimStream",
    "CimWriteBeyondSizeError",
    "CimWriter",
    "FileMetadata",
    "ImageHeader",
    "NameOrder",
    "RegionOffset",
    "RegionSet",
    "build_from_directory",
    "check_name",
    "read_image_header",
    "region_set_files",
]
