"""A regf image read on demand through ``read_at``, never mapped (§4.1).

Used by the incremental merge
(:mod:`cimsnap.hive.incremental`) to read a base hive of any size in bounded memory.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.image import PAGE_SHIFT, HiveImage

__all__ = ["LazyImage"]

_B: Final = C.BASE_BLOCK_SIZE


class LazyImage(HiveImage):
    """A :class:`HiveImage` over a file read on demand, never mapped.

    ``read_at(offset, size)`` returns file bytes (short only at the end of the file);
    ``file_size`` is the file's length. Bytes are copied into a private anonymous map of
    the file's size only when a cell (or a bin looked up by :meth:`bin_holding`) is
    read, 4 KiB page by page, so memory follows the cells read rather than the file; past
    ``max_pages`` pages the copies are dropped and read again when needed, which bounds
    the memory whatever the file's size.
    (Mapping the file instead would let the kernel map whole page-cache folios around
    every touched byte: a few thousand scattered reads then count ~100 MB of RSS.) The
    bin chain is not walked (see ``walk_bins``). Call :meth:`close` when done.
    """

    __slots__ = ("_budget", "_count", "_read_at", "_size")

    def __init__(
        self, read_at: Callable[[int, int], bytes], file_size: int, *, max_pages: int = 2048
    ) -> None:
        self._read_at = read_at
        self._size = file_size
        self._budget = max_pages
        self._count = 0
        self.loaded = bytearray((file_size >> PAGE_SHIFT) + 1)
        buf = mmap.mmap(-1, max(file_size, 1), flags=mmap.MAP_PRIVATE)
        if hasattr(mmap, "MADV_NOHUGEPAGE"):
            buf.madvise(mmap.MADV_NOHUGEPAGE)
        self.data = buf
        self._need(0, min(file_size, _B))
        try:
            super().__init__(buf if file_size else b"", walk_bins=False)
        except BaseException:
            buf.close()
            raise

    def _drop(self) -> None:
        """Forget every page copy (zeroed by the kernel, reloaded when read again).

        Called only at the start of :meth:`_need`, before its pages are loaded: every
        method reads a cell's bytes right after its own :meth:`cell` call, never after
        another one, so no reader is left holding a position into a dropped page.
        """
        if isinstance(self.data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            self.data.madvise(mmap.MADV_DONTNEED)
            loaded = self.loaded
            if loaded is not None:
                loaded[:] = bytes(len(loaded))
            self._count = 0

    def close(self) -> None:
        """Release the page copies (the image is unusable afterwards)."""
        if isinstance(self.data, mmap.mmap):
            self.data.close()

    def _need(self, pos: int, size: int) -> None:
        end = min(pos + size, self._size)
        first, last = pos >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT
        loaded = self.loaded
        if loaded is None or (last - first <= 1 and loaded[first] and loaded[last]):
            return
        if self._count + last - first + 1 > self._budget:
            self._drop()
        page = first
        while page <= last:
            if loaded[page]:
                page += 1
                continue
            run = page
            while run <= last and not loaded[run]:
                loaded[run] = 1
                run += 1
            self._count += run - page
            start = page << PAGE_SHIFT
            chunk = self._read_at(start, min(run << PAGE_SHIFT, self._size) - start)
            self.data[start : start + len(chunk)] = chunk  # type: ignore[index]
            page = run
