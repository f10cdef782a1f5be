"""Classic CimFS (v2.x) images: format declarations, reader, verifier and writer.

See ``/work/shared/docs/cim-format.md``. This package knows nothing of containers.
"""

from __future__ import annotations

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
from cimsnap.cim.headers import ImageHeader, RegionSet, read_image_header, region_set_files
from cimsnap.cim.offsets import RegionOffset
from cimsnap.cim.upcase import NameOrder, check_name

__all__ = [
    "CimApiError",
    "CimError",
    "CimFileExistsError",
    "CimFormatError",
    "CimInvalidNameError",
    "CimLinkToDirectoryError",
    "CimNotADirectoryError",
    "CimNotFoundError",
    "CimPathNotFoundError",
    "CimWriteBeyondSizeError",
    "ImageHeader",
    "NameOrder",
    "RegionOffset",
    "RegionSet",
    "check_name",
    "read_image_header",
    "region_set_files",
]
