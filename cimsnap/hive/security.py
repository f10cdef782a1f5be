"""Security cells (sk) for the regf writer and the default descriptor (§4.1, §4.5)."""

from __future__ import annotations

from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.bins import CellAllocator

__all__ = ["DEFAULT_SECURITY_DESCRIPTOR", "SecurityCells", "security_descriptor_problem"]

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


def _sid_problem(sd: bytes, offset: int, what: str) -> str | None:
    head = C.SID_HEADER_FAST
    if offset + head.size > len(sd):
        return f"{what} SID at {offset} runs past the descriptor"
    fields = head.unpack_named(sd, offset)
    count = fields["sub_authority_count"]
    if fields["revision"] != 1 or count > 15:
        return f"{what} SID at {offset}: revision {fields['revision']}, {count} sub-authorities"
    if offset + head.size + 4 * count > len(sd):
        return f"{what} SID at {offset} runs past the descriptor"
    return None


def _acl_problem(sd: bytes, offset: int, what: str) -> str | None:
    head = C.ACL_HEADER_FAST
    if offset + head.size > len(sd):
        return f"{what} at {offset} runs past the descriptor"
    acl = head.unpack_named(sd, offset)
    size = acl["size"]
    if not 2 <= acl["revision"] <= 4 or size < head.size or offset + size > len(sd):
        return f"{what} at {offset}: revision {acl['revision']}, size {size}"
    pos, end = offset + head.size, offset + size
    for index in range(acl["ace_count"]):
        if pos + C.ACE_HEADER_FAST.size > end:
            return f"{what} ACE {index} runs past the ACL"
        ace_size = C.ACE_HEADER_FAST.unpack_named(sd, pos)["size"]
        if ace_size < C.ACE_HEADER_FAST.size or ace_size % 4 or pos + ace_size > end:
            return f"{what} ACE {index} has size {ace_size}"
        pos += ace_size
    return None


def security_descriptor_problem(sd: bytes) -> str | None:
    """Return why ``sd`` is not a valid self-relative security descriptor, or None.

    The structural rules Windows applies to every sk cell when it loads a hive (an invalid
    one is reset by self-healing or fails the load): revision 1, the self-relative control
    bit, owner/group SIDs (revision 1, at most 15 sub-authorities) and SACL/DACL (revision
    2..4, ACEs of 4-byte multiples filling no more than the ACL) inside the buffer.
    Access-mask and ACE-type semantics are not judged.
    """
    head = C.SD_HEADER_FAST
    if len(sd) < head.size:
        return f"{len(sd)} bytes, shorter than the {head.size}-byte header"
    f = head.unpack_named(sd)
    if f["revision"] != 1:
        return f"revision {f['revision']}, not 1"
    if not f["control"] & C.SE_SELF_RELATIVE:
        return "not self-relative"
    for name in ("owner", "group"):
        if f[name] and (problem := _sid_problem(sd, f[name], name)):
            return problem
    for name, bit in (("sacl", C.SE_SACL_PRESENT), ("dacl", C.SE_DACL_PRESENT)):
        if f["control"] & bit and f[name] and (problem := _acl_problem(sd, f[name], name)):
            return problem
    return None
