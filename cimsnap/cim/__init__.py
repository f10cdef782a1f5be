"""Classic CimFS (v2.x) images: format declarations, reader, verifier and writer.

``docs/format-choices.md`` lists the choices made where the format is not publicly known.
This package knows nothing of containers.
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
    CimSharingViolationError,
    CimWriteBeyondSizeError,
)
from cimsnap.cim.file_metadata import FileMetadata
from cimsnap.cim.headers import ImageHeader, RegionSet, read_image_header, region_set_files
from cimsnap.cim.image_files import reclaim_unreferenced
from cimsnap.cim.offsets import RegionOffset
from cimsnap.cim.reader import CimReader, DirEntry, FileInfo, StreamInfo
from cimsnap.cim.records import FileRecord, StreamDescriptor
from cimsnap.cim.regions import CimImage, open_image
from cimsnap.cim.streams import StreamReader
from cimsnap.cim.upcase import NameOrder, check_name
from cimsnap.cim.verify import Problem, Severity, verify_image, verify_path, verify_reader
from cimsnap.cim.writer import CimWriter

__all__ = [
    "BuildReport",
    "CimApiError",
    "CimError",
    "CimFileExistsError",
    "CimFormatError",
    "CimImage",
    "CimInvalidNameError",
    "CimLinkToDirectoryError",
    "CimNotADirectoryError",
    "CimNotFoundError",
    "CimPathNotFoundError",
    "CimReader",
    "CimSharingViolationError",
    "CimStream",
    "CimWriteBeyondSizeError",
    "CimWriter",
    "DirEntry",
    "FileInfo",
    "FileMetadata",
    "FileRecord",
    "ImageHeader",
    "NameOrder",
    "Problem",
    "RegionOffset",
    "RegionSet",
    "Severity",
    "StreamDescriptor",
    "StreamInfo",
    "StreamReader",
    "build_from_directory",
    "check_name",
    "open_image",
    "read_image_header",
    "reclaim_unreferenced",
    "region_set_files",
    "verify_image",
    "verify_path",
    "verify_reader",
]
