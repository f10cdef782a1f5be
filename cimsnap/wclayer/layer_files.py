"""The files that make up one layer's CIM: its ``.cim`` plus its own region set.

Parents' region files are shared with other images and are never
counted or synced as part of a child layer.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cimsnap.cim import CimFormatError, read_image_header, region_set_files

__all__ = [
    "CIM_LAYERS_DIR",
    "cim_layer_files",
    "cim_layer_problem",
    "cim_layer_size",
    "cim_path_for_layer",
]

_log = logging.getLogger(__name__)

#: The directory beside the layer directories that holds every layer's CIM and region files
#: (containerd's cimfs layout; forks must sit beside their parents).
CIM_LAYERS_DIR = "cim-layers"


def cim_path_for_layer(layer_dir: Path) -> Path:
    """``<layer_dir's parent>/cim-layers/<layer_dir's name>.cim`` (hcsshim's
    ``GetCimPathFromLayer``); ``layer_dir`` is made absolute first."""
    layer_dir = Path(os.path.abspath(layer_dir))
    return layer_dir.parent / CIM_LAYERS_DIR / f"{layer_dir.name}.cim"


def cim_layer_files(cim_path: Path) -> list[Path]:
    """Return ``cim_path`` followed by its own region and objectid files.

    Raises CimFormatError if the header is invalid, OSError if it cannot be read.
    """
    header = read_image_header(cim_path)
    return [cim_path, *region_set_files(cim_path.parent, header.own)]


def cim_layer_size(cim_path: Path) -> int:
    """Apparent bytes of the layer's own files (containerd ``cimfs.GetCimUsage``).

    0 if there is no ``.cim`` (or something other than a regular file is in its place);
    only the ``.cim`` itself if its header is unreadable (logged). Files of parent region
    sets never count; links are never followed.
    """
    try:
        paths = cim_layer_files(cim_path) if _is_regular(cim_path) else []
    except FileNotFoundError:
        return 0
    except (CimFormatError, OSError) as e:
        _log.warning("size of %s: unreadable header: %s", cim_path, e)
        paths = [cim_path]
    total = 0
    for path in paths:
        try:
            st = os.lstat(path)  # a link in a layer file's place counts nothing
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def cim_layer_problem(cim_path: Path) -> str | None:
    """Describe why the layer at ``cim_path`` is unusable, or None if it looks intact.

    The startup check: the ``.cim`` exists with a valid
    header (magic ``cimfile0``, supported version) and each of its own region and objectid
    files exists and is non-empty, all of them regular files (a symbolic link in their
    place is a problem, never followed). Parents are checked as layers of their own.
    """
    try:
        paths = cim_layer_files(cim_path) if _is_regular(cim_path) else [cim_path]
    except FileNotFoundError:
        return f"{cim_path} is missing"
    except (CimFormatError, OSError) as e:
        return f"{cim_path}: {e}"
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return f"{path} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{path} is not a regular file"
        if st.st_size == 0 and path != cim_path:
            return f"{path} is empty"
    return None


def _is_regular(path: Path) -> bool:
    """True if ``path`` itself (not a link's target) is a regular file; raises
    FileNotFoundError if it is missing."""
    return stat.S_ISREG(os.lstat(path).st_mode)
