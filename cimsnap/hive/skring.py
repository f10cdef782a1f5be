"""The sk cells of an existing hive, edited in place.

:class:`SecurityRing` is the incremental merge's counterpart of the writer's
:class:`~cimsnap.hive.security.SecurityCells`: keys gain and lose references to sk cells,
new descriptors get new cells, and :meth:`SecurityRing.finish` leaves every reference
count exact (base count plus the uses added minus the uses dropped), frees the cells no
key uses any more and keeps all used cells on one circular flink/blink list.

The base's list is read only when it must be (a descriptor not already on the key, or a
cell added or freed): it is walked from the root key's sk cell, so its cost is the number
of distinct descriptors, not the hive's size. Two base cells with identical bytes (legal,
untidy) stay as they are; a new use of those bytes goes to the first one on the list.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.bins import CellAllocator
from cimsnap.hive.errors import HiveFormatError
from cimsnap.hive.image import HiveImage

__all__ = ["SecurityRing"]

_SK = C.SK_HEADER_FAST.struct
_B: Final = C.BASE_BLOCK_SIZE
C.SK_HEADER_FAST.require_order(
    ("signature", "reserved", "flink", "blink", "reference_count", "descriptor_size")
)


class SecurityRing:
    """Reference counting over the base's sk cells plus new ones (see the module docstring).

    ``image`` is the base (read-only); ``anchor`` is an sk cell of the base's list (the
    root key's). Methods raise :class:`HiveFormatError` for a malformed base sk cell or
    list (naming the cell); the output is then unusable, as with any failed merge.
    """

    __slots__ = ("_anchor", "_changes", "_image", "_index", "_new", "_ring")

    def __init__(self, image: HiveImage, anchor: int) -> None:
        self._image = image
        self._anchor = anchor
        self._changes: dict[int, int] = {}  # sk offset -> uses added minus uses dropped
        self._new: list[tuple[int, int]] = []  # (offset, descriptor size) of new cells
        self._index: dict[bytes, int] | None = None
        self._ring: list[int] = []

    def descriptor(self, off: int) -> bytes:
        """The security descriptor of the base sk cell at ``off``."""
        return self._image.security(off)

    def use(self, cells: CellAllocator, sd: bytes) -> int:
        """Count a use of ``sd``; return its sk cell, allocating a new one if it is new."""
        index = self._load()
        off = index.get(sd)
        if off is None:
            off = cells.alloc(_SK.size + len(sd))
            pos = off + _B + 4 + _SK.size
            cells.buf[pos : pos + len(sd)] = sd
            index[sd] = off
            self._new.append((off, len(sd)))
        self._changes[off] = self._changes.get(off, 0) + 1
        return off

    def release(self, off: int) -> None:
        """Drop one use of the sk cell at ``off``."""
        self._changes[off] = self._changes.get(off, 0) - 1

    def _load(self) -> dict[bytes, int]:
        if self._index is not None:
            return self._index
        index: dict[bytes, int] = {}
        ring: list[int] = []
        seen: set[int] = set()
        off = self._anchor
        while True:
            sd = self._image.security(off)
            index.setdefault(sd, off)
            ring.append(off)
            seen.add(off)
            flink, _blink = self._links(off)
            if flink == self._anchor:
                break
            if flink in seen:
                raise HiveFormatError("sk cell", off, f"flink {flink:#x} closes a loop early")
            if self._links(flink)[1] != off:
                raise HiveFormatError("sk cell", flink, f"blink does not point back to {off:#x}")
            off = flink
        self._index, self._ring = index, ring
        return index

    def _links(self, off: int) -> tuple[int, int]:
        pos, _n = self._image.cell(off, "sk cell")
        _sig, _r, flink, blink, _refs, _size = _SK.unpack_from(self._image.data, pos)
        return flink, blink

    def finish(self, buf: bytearray | mmap.mmap, free: Callable[[int], None]) -> None:
        """Write the final counts and links into ``buf``; pass unused base cells to ``free``.

        Raises :class:`HiveFormatError` when a base cell would drop below zero uses (its
        stored count was too low).
        """
        image = self._image
        new = {off: size for off, size in self._new}
        counts: dict[int, int] = {}
        for off, change in self._changes.items():
            if not change and off not in new:
                continue
            base = 0
            if off not in new:
                pos, _n = image.cell(off, "sk cell")
                base = _SK.unpack_from(image.data, pos)[4]
            counts[off] = base + change
            if counts[off] < 0:
                raise HiveFormatError("sk cell", off, f"reference count {base} below its users")
        dropped = {off for off, count in counts.items() if count == 0}
        if not new and not dropped:
            for off, count in counts.items():
                buf[_B + off + 4 + 12 : _B + off + 4 + 16] = count.to_bytes(4, "little")
            return
        self._load()
        ring = [off for off in self._ring if off not in dropped]
        ring += [off for off in new if off not in dropped]
        if not ring:
            raise HiveFormatError("sk cell", self._anchor, "no key uses any security cell")
        n = len(ring)
        for i, off in enumerate(ring):
            flink, blink = ring[(i + 1) % n], ring[(i - 1) % n]
            if off in new:
                refs = counts[off]
                size = new[off]
            else:
                pos, _n = image.cell(off, "sk cell")
                _sig, _r, old_f, old_b, refs, size = _SK.unpack_from(image.data, pos)
                refs = counts.get(off, refs)
                if (old_f, old_b) == (flink, blink) and off not in counts:
                    continue
            _SK.pack_into(buf, _B + off + 4, b"sk", 0, flink, blink, refs, size)
        for off in dropped:
            free(off)
