"""Open an image's files: the edge module of the reader.

:func:`open_image` reads the ``.cim`` header, maps every region file of the parents and
the image (parents first, §3.3) read-only, checks each region header, and hands the
buffers to a :class:`~cimsnap.cim.reader.CimReader`. All files must be in the ``.cim``'s
directory (§2).
"""

from __future__ import annotations

import contextlib
import mmap
import os
from pathlib import Path
from types import TracebackType

from cimsnap.cim.errors import CimFormatError
from cimsnap.cim.headers import (
    ImageHeader,
    parse_region_header,
    read_image_header,
    region_file_name,
)
from cimsnap.cim.reader import CimReader

__all__ = ["CimImage", "open_image"]


class CimImage:
    """An open image: its header, region paths and reader. A context manager.

    ``close()`` is idempotent. StreamReaders obtained from ``reader`` must not be used
    after it; a mapping still referenced by one is unmapped when that reference goes.
    """

    def __init__(
        self,
        path: Path,
        header: ImageHeader,
        region_paths: list[Path],
        maps: list[mmap.mmap | None],
        views: list[memoryview],
    ) -> None:
        self.path = path
        self.header = header
        self.region_paths = region_paths
        self._maps = maps
        self._views = views
        self.reader = CimReader(views, header.filesystem_offset)

    def close(self) -> None:
        """Release the region mappings (idempotent)."""
        views, maps = self._views, self._maps
        self._views, self._maps = [], []
        # Cached tables hold slices of the mappings; dropping them lets the maps close now.
        self.reader.clear_caches()
        _release(views, maps)

    def __enter__(self) -> CimImage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _release(views: list[memoryview], maps: list[mmap.mmap | None]) -> None:
    for view in views:
        view.release()
    for mapping in maps:
        if mapping is None:
            continue
        # BufferError: a caller still holds a slice (an open StreamReader); the mapping
        # is unmapped when that last reference is dropped.
        with contextlib.suppress(BufferError):
            mapping.close()


def _map_region(path: Path, index: int) -> tuple[mmap.mmap | None, memoryview]:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CimFormatError(
            f"region file {path.name}",
            region=index,
            why="missing; an image and all its parents' files must share one directory",
        ) from None
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            return None, memoryview(b"")
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    return mapping, memoryview(mapping)


def open_image(cim_path: Path) -> CimImage:
    """Open the image ``cim_path`` with its parents for reading (§13 steps 1-3).

    Raises CimFormatError for a bad header, a missing or bad region file, or a bad
    Filesystem object, upcase table or root; OSError if the ``.cim`` cannot be read.
    Nothing stays open after a failure.
    """
    header = read_image_header(cim_path)
    directory = cim_path.parent
    paths: list[Path] = []
    maps: list[mmap.mmap | None] = []
    views: list[memoryview] = []
    try:
        for region_set in header.region_sets:
            for n in range(region_set.count):
                path = directory / region_file_name(region_set, n)
                index = len(paths)
                mapping, view = _map_region(path, index)
                paths.append(path)
                maps.append(mapping)
                views.append(view)
                parse_region_header(view, f"region file {path.name}", index)
        return CimImage(cim_path, header, paths, maps, views)
    except BaseException:
        _release(views, maps)
        raise
