"""Cell placement for the regf writer: hive bins, 8-byte cells, free tails (§4.5)."""

from __future__ import annotations

import mmap
from bisect import bisect_left, insort
from typing import Final

from cimsnap.hive import cells as C

__all__ = ["AppendAllocator", "CellAllocator", "FreeCells", "put_bytes", "put_offsets"]

_HBIN = C.HBIN_HEADER_FAST.struct
_CELL = C.CELL_HEADER_FAST.struct
C.HBIN_HEADER_FAST.require_order(("signature", "offset", "size", "reserved", "timestamp", "spare"))

#: Bin size used when a cell of more than 2 KiB does not fit the open bin.
_LARGE_BIN_SIZE: Final = 16 * C.HBIN_ALIGN


class CellAllocator:
    """Bump allocator laying cells into hive bins inside one growing buffer (§4.5).

    ``buf`` starts with a zeroed 4096-byte base block; cells are placed in allocation
    order, 8-byte aligned; a cell that does not fit the open bin closes it (its rest
    becomes one free cell) and opens a new bin of 4 KiB, or 64 KiB for cells over 2 KiB,
    or the next 4 KiB multiple that fits. Call :meth:`close_bin` once at the end.
    """

    __slots__ = ("bin_end", "buf", "first_bin_time", "pos")

    def __init__(self, first_bin_time: int) -> None:
        self.buf: bytearray | mmap.mmap = bytearray(C.BASE_BLOCK_SIZE)
        self.pos = C.BASE_BLOCK_SIZE  # next free byte (absolute)
        self.bin_end = C.BASE_BLOCK_SIZE  # end of the open bin (absolute)
        self.first_bin_time = first_bin_time

    def alloc(self, data_size: int) -> int:
        """Reserve an allocated cell for ``data_size`` bytes; return its cell offset."""
        size = (data_size + 4 + 7) & ~7
        pos = self.pos
        if pos + size > self.bin_end:
            pos = self._open_bin(size)
        _CELL.pack_into(self.buf, pos, -size)
        self.pos = pos + size
        return pos - C.BASE_BLOCK_SIZE

    def _open_bin(self, cell_size: int) -> int:
        self.close_bin()
        start = self.bin_end
        fit = -(-(cell_size + C.HBIN_HEADER_SIZE) // C.HBIN_ALIGN) * C.HBIN_ALIGN
        # Big cells (db segments, large lists) open 64 KiB bins so that several share one
        # bin instead of each wasting the rest of a 4 KiB multiple.
        bin_size = max(fit, _LARGE_BIN_SIZE if cell_size > C.HBIN_ALIGN // 2 else C.HBIN_ALIGN)
        self._grow(start, bin_size)
        stamp = self.first_bin_time if start == C.BASE_BLOCK_SIZE else 0
        _HBIN.pack_into(
            self.buf, start, b"hbin", start - C.BASE_BLOCK_SIZE, bin_size, bytes(8), stamp, 0
        )
        self.bin_end = start + bin_size
        return start + C.HBIN_HEADER_SIZE

    def _grow(self, start: int, size: int) -> None:
        """Make ``buf[start : start + size]`` exist and hold zeros (``start`` is its end)."""
        if not isinstance(self.buf, bytearray):
            raise TypeError("CellAllocator grows only a bytearray; subclass it for others")
        self.buf.extend(bytes(size))

    def close_bin(self) -> None:
        """Turn the rest of the open bin into one free cell (positive size)."""
        rest = self.bin_end - self.pos
        if rest > 0:
            _CELL.pack_into(self.buf, self.pos, rest)
        self.pos = self.bin_end


def put_bytes(cells: CellAllocator, data: bytes, spare: int = 0) -> int:
    """Allocate a cell holding ``data`` (plus ``spare`` zero bytes); return its offset."""
    off = cells.alloc(len(data) + spare)
    pos = off + C.BASE_BLOCK_SIZE + 4
    cells.buf[pos : pos + len(data)] = data
    return off


def put_offsets(cells: CellAllocator, offsets: list[int]) -> int:
    """Allocate a value/segment list cell holding ``offsets``."""
    off = cells.alloc(4 * len(offsets))
    C.fast_array(C.OFFSET_ELEMENT_FAST, len(offsets)).pack_into(
        cells.buf, off + C.BASE_BLOCK_SIZE + 4, *offsets
    )
    return off


class FreeCells:
    """Free cells that an in-place edit may reuse, coalesced with their free neighbours.

    ``add`` marks a cell free in ``buf`` (positive size) and merges it with a pooled cell
    that ends where it starts or starts where it ends (cells never span bins, and a bin's
    first cell starts after its header, so merged cells stay inside one bin). ``take``
    hands out the smallest pooled cell that fits, splitting off the rest as a free cell.
    """

    __slots__ = ("buf", "by_end", "order", "sizes")

    def __init__(self, buf: bytearray | mmap.mmap) -> None:
        self.buf = buf
        self.sizes: dict[int, int] = {}  # cell offset -> size
        self.by_end: dict[int, int] = {}  # cell offset + size -> cell offset
        self.order: list[tuple[int, int]] = []  # (size, offset), sorted; stale entries skipped

    def __len__(self) -> int:
        return len(self.sizes)

    def add(self, off: int, size: int) -> None:
        """Pool the cell at ``off`` (``size`` bytes, header included) and mark it free."""
        after = self.sizes.pop(off + size, None)
        if after is not None:
            del self.by_end[off + size + after]
            size += after
        before = self.by_end.pop(off, None)
        if before is not None:
            size += self.sizes.pop(before)
            off = before
        self._put(off, size)

    def _put(self, off: int, size: int) -> None:
        self.sizes[off] = size
        self.by_end[off + size] = off
        insort(self.order, (size, off))
        _CELL.pack_into(self.buf, off + C.BASE_BLOCK_SIZE, size)

    def take(self, size: int) -> int | None:
        """Allocate ``size`` bytes (a multiple of 8) from the pool; None when nothing fits."""
        order = self.order
        i = bisect_left(order, (size, -1))
        while i < len(order):
            have, off = order.pop(i)
            if self.sizes.get(off) != have:
                continue  # merged into a neighbour or taken since it was queued
            del self.sizes[off], self.by_end[off + have]
            if have > size:
                self._put(off + size, have - size)
            _CELL.pack_into(self.buf, off + C.BASE_BLOCK_SIZE, -size)
            return off
        return None


class AppendAllocator(CellAllocator):
    """A :class:`CellAllocator` over a copy of an existing hive, for editing it in place.

    ``buf`` is the whole writable image (a shared ``mmap`` of the output file), whose hive
    bins end at file offset ``end``. New cells first reuse :attr:`free` cells, then go to
    new bins appended after ``end``; ``buf`` grows in steps of at least ``grow_step`` bytes
    (call :meth:`finish` to cut it to the bins' end). Growing uses ``mmap.resize``, so no
    buffer export (``memoryview``) of ``buf`` may be alive while cells are allocated.
    """

    __slots__ = ("bins_opened", "bytes_reused", "bytes_written", "free", "grow_step")

    def __init__(self, buf: mmap.mmap, end: int, *, grow_step: int = 1 << 20) -> None:
        super().__init__(0)
        self.buf = buf
        self.pos = self.bin_end = end
        self.free = FreeCells(buf)
        self.grow_step = grow_step
        self.bytes_written = 0  # cell bytes allocated, header included
        self.bytes_reused = 0  # of which in reused free cells
        self.bins_opened = 0

    def alloc(self, data_size: int) -> int:
        """Reserve an allocated cell for ``data_size`` bytes; return its cell offset."""
        size = (data_size + 4 + 7) & ~7
        self.bytes_written += size
        off = self.free.take(size)
        if off is None:
            return super().alloc(data_size)
        self.bytes_reused += size
        return off

    def _grow(self, start: int, size: int) -> None:
        buf = self.buf
        if not isinstance(buf, mmap.mmap):
            raise TypeError("AppendAllocator edits an mmap")
        self.bins_opened += 1
        if len(buf) < start + size:
            buf.resize(max(start + size, len(buf) + self.grow_step))
        buf[start : start + size] = bytes(size)

    def finish(self) -> int:
        """Close the open bin, cut ``buf`` to the end of the bins; return that length."""
        self.close_bin()
        buf = self.buf
        if isinstance(buf, mmap.mmap) and len(buf) != self.bin_end:
            buf.resize(self.bin_end)
        return self.bin_end
