"""Freeing the cells of a base hive edited in place.

:class:`CellRelease` is the incremental merge's side of a cell's life: a cell the merged
hive no longer uses is marked free and pooled for reuse by the
:class:`~cimsnap.hive.bins.AppendAllocator`, together with the free cells already in its
bin (found once per bin, so space freed by earlier merges of a chain is reused too).
Freeing one cell twice is refused as a format error: the base shares a cell between two
owners, or has a cycle. :meth:`CellRelease.subtree` frees a whole base subtree and drops
its keys' uses of their sk cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.bins import FreeCells
from cimsnap.hive.errors import HiveFormatError
from cimsnap.hive.image import HiveImage
from cimsnap.hive.skring import SecurityRing

__all__ = ["CellRelease"]

_NO_CELL: Final = C.NO_CELL


class CellRelease:
    """Frees base cells into ``pool`` (see the module docstring).

    ``image`` is the base (read-only); ``pool`` marks cells free in the output;
    ``on_free`` is called once per freed cell (the merge counts its steps with it).
    """

    __slots__ = ("bin_pages", "bytes_freed", "freed", "image", "on_free", "pool", "security")

    def __init__(
        self,
        image: HiveImage,
        pool: FreeCells,
        security: SecurityRing,
        on_free: Callable[[], None],
    ) -> None:
        self.image = image
        self.pool = pool
        self.security = security
        self.on_free = on_free
        self.freed: set[int] = set()
        self.bin_pages: set[int] = set()  # 4 KiB pages of the bins already scanned
        self.bytes_freed = 0

    def cell(self, off: int) -> None:
        """Mark the base cell at ``off`` free and pool it (with its bin's free cells).

        Raises :class:`HiveFormatError` if ``off`` is not an allocated base cell or was
        freed already.
        """
        if off in self.freed:
            raise HiveFormatError("cell", off, "referenced twice (shared or cyclic cells)")
        _pos, size = self.image.cell(off, "cell")
        self.freed.add(off)
        self.bytes_freed += size + 4
        self.on_free()
        self._adopt_bin(off)
        self.pool.add(off, size + 4)

    def _adopt_bin(self, off: int) -> None:
        """Pool the free cells of the base bin holding ``off`` (once per bin).

        Must run before any cell of that bin is pooled: until then the bin's cell sizes in
        the output are the base's, so the base is what is scanned.
        """
        page = off // C.HBIN_ALIGN
        if page in self.bin_pages:
            return
        found = self.image.bin_holding(off)
        if found is None:
            return  # an unrecognisable bin only loses the reuse of its other free cells
        start, size, free_cells = found
        self.bin_pages.update(range(start // C.HBIN_ALIGN, (start + size) // C.HBIN_ALIGN))
        for cell, cell_size in free_cells:
            self.pool.add(cell, cell_size)

    def values(self, value_list: int, count: int) -> None:
        """Free a value list, its vk cells and their data."""
        image = self.image
        for vk in image.offsets(value_list, count, "value list"):
            self.value(vk)
        self.cell(value_list)

    def value(self, vk: int) -> None:
        """Free one vk cell and its data cells."""
        for cell in self.image.value_cells(vk):
            self.cell(cell)
        self.cell(vk)

    def subkey_list(self, list_off: int) -> None:
        """Free a subkey list (an ri with its leaves, or one leaf); not the keys."""
        for cell in self.image.subkey_list_cells(list_off):
            self.cell(cell)

    def subtree(self, top: int) -> None:
        """Free every cell of the base subtree at ``top`` and drop its sk uses."""
        image = self.image
        stack = [top]
        while stack:
            off = stack.pop()
            rec = image.node(off)
            self.security.release(rec.security)
            if rec.class_offset != _NO_CELL:
                self.cell(rec.class_offset)
            if rec.value_count:
                self.values(rec.value_list, rec.value_count)
            if rec.subkey_count:
                stack.extend(image.subkey_offsets(off, rec.subkey_count, rec.subkey_list))
                self.subkey_list(rec.subkey_list)
            self.cell(off)
