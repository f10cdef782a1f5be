"""Security cells (sk) for the regf writer and the default descriptor (§4.1, §4.5).

Section numbers refer to windows-layer-import.md.
"""

from __future__ import annotations

from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.bins import CellAllocator

__all__ = ["DEFAULT_SECURITY_DESCRIPTOR", "SecurityCells"]

_SK = C.SK_HEADER_FAST.struct
C.SK_HEADER_FAST.require_order(
    ("signature", "reserved", "flink", "blink", "reference_count", "descriptor_size")
)

#: Self-relative SD given to keys that carry none (§4.5 "every key needs a valid sk"):
#: revision 1, control SE_SELF_RELATIVE | SE_DACL_PRESENT (0x8004), owner BUILTIN\
#: Administrators (S-1-5-32-544), group SYSTEM (S-1-5-18), no SACL, and a DACL (revision 2)
#: of three container-inherit ACCESS_ALLOWED ACEs: SYSTEM KEY_ALL_ACCESS (0xF003F),
#: Administrators KEY_ALL_ACCESS, BUILTIN\Users KEY_READ (0x20019).
DEFAULT_SECURITY_DESCRIPTOR: Final = bytes.fromhex(
    "01000480"
    "60000000"
    "70000000"
    "00000000"
    "14000000"  # header: owner 96, group 112, dacl 20
    "02004c00"
    "03000000"  # ACL: revision 2, size 76, 3 ACEs
    "00021400"
    "3f000f00"
    "010100000000000512000000"  # allow SY KEY_ALL_ACCESS
    "00021800"
    "3f000f00"
    "01020000000000052000000020020000"  # allow BA KEY_ALL_ACCESS
    "00021800"
    "19000200"
    "01020000000000052000000021020000"  # allow BU KEY_READ
    "01020000000000052000000020020000"  # owner S-1-5-32-544
    "010100000000000512000000"  # group S-1-5-18
)


class SecurityCells:
    """Shared sk cells (§4.5): one per distinct SD, linked and counted after all keys.

    :meth:`use` allocates the sk cell for a new SD (writing the descriptor) and counts a
    reference; :meth:`finish` writes every header: flink/blink in allocation order forming
    one circular list, reference count = number of :meth:`use` calls for that SD.
    """

    __slots__ = ("counts", "index", "offsets", "sizes")

    def __init__(self) -> None:
        self.index: dict[bytes, int] = {}
        self.offsets: list[int] = []
        self.counts: list[int] = []
        self.sizes: list[int] = []

    def use(self, cells: CellAllocator, sd: bytes) -> int:
        """Return the sk cell offset for ``sd``, allocating it on first use."""
        i = self.index.get(sd)
        if i is None:
            off = cells.alloc(_SK.size + len(sd))
            pos = off + C.BASE_BLOCK_SIZE + 4 + _SK.size
            cells.buf[pos : pos + len(sd)] = sd
            i = len(self.offsets)
            self.index[sd] = i
            self.offsets.append(off)
            self.counts.append(0)
            self.sizes.append(len(sd))
        self.counts[i] += 1
        return self.offsets[i]

    def finish(self, buf: bytearray) -> None:
        """Write every sk header: circular flink/blink in allocation order, final counts."""
        offs = self.offsets
        n = len(offs)
        for i, off in enumerate(offs):
            _SK.pack_into(
                buf,
                off + C.BASE_BLOCK_SIZE + 4,
                b"sk",
                0,
                offs[(i + 1) % n],
                offs[(i - 1) % n],
                self.counts[i],
                self.sizes[i],
            )
