"""Cell placement for the regf writer: hive bins, 8-byte cells, free tails (§4.5).

Section numbers refer to windows-layer-import.md.
"""

from __future__ import annotations

from typing import Final

from cimsnap.hive import cells as C

__all__ = ["CellAllocator", "put_bytes", "put_offsets"]

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
        self.buf = bytearray(C.BASE_BLOCK_SIZE)
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
        self.buf.extend(bytes(bin_size))
        stamp = self.first_bin_time if start == C.BASE_BLOCK_SIZE else 0
        _HBIN.pack_into(
            self.buf, start, b"hbin", start - C.BASE_BLOCK_SIZE, bin_size, bytes(8), stamp, 0
        )
        self.bin_end = start + bin_size
        return start + C.HBIN_HEADER_SIZE

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
