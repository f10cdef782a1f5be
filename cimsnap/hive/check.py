"""Full structural validation of a regf image.

:func:`check_hive` never raises for bad input: it returns every :class:`Problem` it finds.
It is the self-consistency checker §4.5 asks for, run on everything the writer produces.
Checks: base block (signature, checksum, sequence numbers, version, sizes); hive bins tile
the data and their cells tile each bin; every referenced cell is an allocated cell start
and (sk cells excepted) referenced once; nk/vk/sk/list signatures; subkey lists strictly
sorted by folded name with correct lh hashes and counts matching the nk; parent links;
value data and db segments; the sk cells form one circular flink/blink list whose reference
counts equal their users; max name/class/value lengths; unreferenced allocated cells.

Severity ``"error"`` marks what Windows or our reader would reject or misread; ``"warning"``
marks what is legal but untidy (stale larger max lengths, leaked cells, reference counts
above usage).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, TypeVar

from cimsnap.hive import cells as C
from cimsnap.hive.errors import HiveFormatError, OffsetKind
from cimsnap.hive.gcpause import gc_paused
from cimsnap.hive.image import HiveImage, NodeRecord
from cimsnap.hive.security import security_descriptor_problem
from cimsnap.hive.tree import name_key

__all__ = ["Problem", "check_hive"]

Severity = Literal["error", "warning"]
_B: Final = C.BASE_BLOCK_SIZE
#: The kernel refuses key-node cells larger than the fixed part plus a 255-unit UTF-16
#: name plus 16 bytes (its REG_MAX_PLAUSIBLE_KEY_SIZE).
_MAX_PLAUSIBLE_NK: Final = C.NK_HEADER_FAST.size + 2 * C.MAX_KEY_NAME_LENGTH + 16
# Plain ints: IntFlag arithmetic costs a Python-level call per cell.
_HIVE_ENTRY: Final = int(C.KeyFlags.HIVE_ENTRY)
_VALUE_COMP_NAME: Final = int(C.ValueFlags.COMP_NAME)
_VALUE_TOMBSTONE: Final = int(C.ValueFlags.TOMBSTONE)
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding: the structure (``what``), where it is (``offset``: a cell offset
    relative to the first bin, or a file offset per ``offset_kind``; None if no position
    applies), the explanation and its severity."""

    what: str
    offset: int | None
    why: str
    severity: Severity = "error"
    offset_kind: OffsetKind = "cell"

    def __str__(self) -> str:
        where = "" if self.offset is None else f" at {self.offset_kind} offset {self.offset:#x}"
        return f"{self.severity}: {self.what}{where}: {self.why}"


class _Checker:
    def __init__(self, image: HiveImage) -> None:
        self.image = image
        self.problems: list[Problem] = []
        self.cells: dict[int, tuple[int, bool]] = {}  # offset -> (size, allocated)
        self.refs: set[int] = set()
        self.sk_users: dict[int, int] = {}

    def add(self, what: str, off: int | None, why: str, severity: Severity = "error") -> None:
        self.problems.append(Problem(what, off, why, severity))

    def scan_cells(self) -> None:
        data, cell_struct = self.image.data, C.CELL_HEADER_FAST.struct
        for start, size in self.image.bins:
            pos, end = start + C.HBIN_HEADER_SIZE, start + size
            while pos < end:
                (raw,) = cell_struct.unpack_from(data, _B + pos)
                length = abs(raw)
                if length < 8 or length % C.CELL_ALIGN or pos + length > end:
                    self.add("cell", pos, f"size {raw} breaks the bin starting at {start:#x}")
                    break
                self.cells[pos] = (length, raw < 0)
                pos += length

    def ref(self, off: int, what: str, shared: bool = False) -> bool:
        """Record a reference; report and return False unless ``off`` is a usable cell."""
        entry = self.cells.get(off)
        if entry is None:
            self.add(what, off, "offset is not the start of a cell")
            return False
        if not entry[1]:
            self.add(what, off, "refers to a free cell")
            return False
        if off in self.refs and not shared:
            self.add(what, off, "cell referenced twice")
            return False
        self.refs.add(off)
        return True

    def guard(self, fn: Callable[..., _T], *args: object) -> _T | None:
        """Call ``fn(*args)``; turn a HiveFormatError into a problem and return None."""
        try:
            return fn(*args)
        except HiveFormatError as e:
            self.add(e.what, e.offset, e.why)
            return None

    def walk(self) -> None:
        root = self.image.base.root_cell_offset
        if not self.ref(root, "root nk cell"):
            return
        rec = self.guard(self.image.node, root)
        if rec is None:
            return
        # (nk offset, its decoded record, parent offset or -1, depth)
        stack = [(root, rec, -1, 0)]
        while stack:
            off, rec, parent, depth = stack.pop()
            for child, crec in self.key(off, rec, parent, depth):
                stack.append((child, crec, off, depth + 1))

    def key(
        self, off: int, rec: NodeRecord, parent: int, depth: int
    ) -> list[tuple[int, NodeRecord]]:
        image = self.image
        is_root = parent < 0
        if bool(rec.flags & _HIVE_ENTRY) != is_root:
            self.add("nk cell", off, "HIVE_ENTRY flag must be set on the root only")
        if not is_root and rec.parent != parent:
            self.add("nk cell", off, f"parent {rec.parent:#x}, expected {parent:#x}")
        if not rec.name:
            self.add("nk cell", off, "empty key name")
        elif "\\" in rec.name:
            self.add("nk cell", off, f"backslash in key name {rec.name!r}")
        cell_size = self.cells.get(off, (0, True))[0] - 4
        if cell_size > _MAX_PLAUSIBLE_NK:
            self.add("nk cell", off, f"cell of {cell_size} bytes is larger than any key node")
        if rec.layer and not image.layered:
            self.add("nk cell", off, "layer bits in a hive without layered keys", "warning")
        if depth > C.MAX_KEY_DEPTH:
            self.add("nk cell", off, "nested too deep")
            return []
        if self.ref(rec.security, "sk cell", shared=True):
            self.sk_users[rec.security] = self.sk_users.get(rec.security, 0) + 1
        if rec.class_offset != C.NO_CELL and self.ref(rec.class_offset, "class name"):
            self.guard(image.class_name, rec, off)
        max_name, max_value = self.values(off, rec)
        children = self.subkeys(off, rec)
        child_name = child_class = 0
        for _child, crec in children:
            child_name = max(child_name, len(crec.name.encode("utf-16-le", "surrogatepass")))
            child_class = max(child_class, crec.class_length)
        stored = (
            rec.max_subkey_name & 0xFFFF,
            rec.max_class,
            rec.max_value_name,
            rec.max_value_data,
        )
        actual = (child_name, child_class, max_name, max_value)
        labels = ("max subkey name", "max class", "max value name", "max value data")
        for label, have, need in zip(labels, stored, actual, strict=True):
            if have < need:
                self.add("nk cell", off, f"{label} {have} < actual {need}")
            elif have > need:
                self.add("nk cell", off, f"{label} {have} > actual {need}", "warning")
        return children

    def values(self, off: int, rec: NodeRecord) -> tuple[int, int]:
        if rec.value_count == 0:
            return 0, 0
        if not self.ref(rec.value_list, "value list"):
            return 0, 0
        offsets = self.guard(self.image.offsets, rec.value_list, rec.value_count, "value list")
        max_name = max_data = 0
        for vk in offsets or ():
            if not self.ref(vk, "vk cell"):
                continue
            v = self.guard(self.image.value, vk)
            if v is None:
                continue
            self.value_data_refs(vk)
            compressed = v.flags & _VALUE_COMP_NAME
            max_name = max(
                max_name,
                2 * len(v.name) if compressed else len(v.name.encode("utf-16-le", "surrogatepass")),
            )
            max_data = max(max_data, len(v.data))
            if v.flags & _VALUE_TOMBSTONE and not self.image.layered:
                self.add("vk cell", vk, "tombstone flag in a hive without layered keys", "warning")
        return max_name, max_data

    def value_data_refs(self, vk: int) -> None:
        fields = C.VK_HEADER_FAST.unpack_named(self.image.data, _B + vk + 4)
        size, data_off, flags = fields["data_size"], fields["data_offset"], fields["flags"]
        if size & C.DATA_INLINE_FLAG:
            return
        if size == 0:
            if data_off != C.NO_CELL:
                # Windows' value-list check rejects this: an empty value is inline or has
                # HCELL_NIL (tombstones included).
                self.add("vk cell", vk, f"zero-length data with data offset {data_off:#x}")
            return
        if self.image.layered and flags & _VALUE_TOMBSTONE:
            return
        if not self.ref(data_off, "value data"):
            return
        pos = _B + data_off + 4
        if size > C.BIG_DATA_SEGMENT_SIZE and self.image.data[pos : pos + 2] == b"db":
            _sig, count, seg_list = C.DB_FAST.struct.unpack_from(self.image.data, pos)
            if self.ref(seg_list, "db segment list"):
                segs = self.guard(self.image.offsets, seg_list, count, "db segment list")
                for seg in segs or ():
                    self.ref(seg, "db segment")

    def subkeys(self, off: int, rec: NodeRecord) -> list[tuple[int, NodeRecord]]:
        if rec.subkey_count == 0:
            if rec.subkey_list != C.NO_CELL:
                self.add("nk cell", off, "no subkeys but a subkey list offset", "warning")
            return []
        if not self.ref(rec.subkey_list, "subkey list"):
            return []
        top = self.guard(self.image.list_leaf, rec.subkey_list, False)
        if top is None:
            return []
        leaves = [(rec.subkey_list, top)]
        if top[0] == b"ri":
            leaves = []
            for leaf in top[1]:
                if self.ref(leaf, "subkey list leaf"):
                    got = self.guard(self.image.list_leaf, leaf, True)
                    if got is not None:
                        leaves.append((leaf, got))
        children: list[tuple[int, NodeRecord]] = []
        previous: bytes | None = None
        for leaf_off, (sig, entries) in leaves:
            hashes = self.leaf_hashes(leaf_off, sig, len(entries))
            for i, child in enumerate(entries):
                if not self.ref(child, "nk cell"):
                    continue
                crec = self.guard(self.image.node, child)
                if crec is None:
                    continue
                folded = name_key(crec.name)
                order = folded.encode("utf-16-be", "surrogatepass")
                if previous is not None and order <= previous:
                    self.add(
                        "subkey list", leaf_off, f"entry {crec.name!r} out of order or duplicate"
                    )
                previous = order
                if hashes is not None and hashes[i] != C.lh_hash_folded(folded):
                    self.add("subkey list", leaf_off, f"wrong lh hash for {crec.name!r}")
                children.append((child, crec))
        if len(children) != rec.subkey_count:
            self.add("nk cell", off, f"{rec.subkey_count} subkeys declared, {len(children)} listed")
        return children

    def leaf_hashes(self, leaf_off: int, sig: bytes, count: int) -> tuple[int, ...] | None:
        if sig != b"lh":
            return None
        pairs = C.fast_array(C.LH_ELEMENT_FAST, count).unpack_from(
            self.image.data, _B + leaf_off + 8
        )
        return tuple(pairs[1::2])

    def security_list(self) -> None:
        sk_fast = C.SK_HEADER_FAST.struct
        if not self.sk_users:
            return
        links: dict[int, tuple[int, int, int]] = {}
        for off, users in self.sk_users.items():
            sd = self.guard(self.image.security, off)
            if sd is None:
                continue
            if problem := security_descriptor_problem(sd):
                # Windows resets such an SD when it self-heals a hive, else refuses it; a
                # warning, because the bytes come from the model (e.g. a layer's hive).
                self.add("sk cell", off, f"invalid security descriptor: {problem}", "warning")
            _sig, _r, flink, blink, refs, _size = sk_fast.unpack_from(self.image.data, _B + off + 4)
            links[off] = (flink, blink, refs)
            if refs < users:
                self.add("sk cell", off, f"reference count {refs} < {users} users")
            elif refs > users:
                self.add("sk cell", off, f"reference count {refs} > {users} users", "warning")
        if not links:
            return
        start = cur = next(iter(links))
        seen: set[int] = set()
        for _ in range(len(links)):
            seen.add(cur)
            flink = links[cur][0]
            if flink not in links:
                self.add("sk cell", cur, f"flink {flink:#x} is not a used sk cell")
                break
            if links[flink][1] != cur:
                self.add("sk cell", flink, f"blink does not point back to {cur:#x}")
            cur = flink
            if cur == start:
                break
        if cur != start or seen != set(links):
            self.add("sk cell", start, "sk cells do not form one circular list of all used SDs")

    def leaks(self) -> None:
        for off, (_size, allocated) in self.cells.items():
            if allocated and off not in self.refs:
                self.add("cell", off, "allocated but unreferenced", "warning")


def check_hive(data: bytes | memoryview) -> list[Problem]:
    """Validate a regf image; return all problems found (an empty list means valid).

    Never raises for bad input. Pauses the cyclic GC while it runs (see ``gcpause``).
    """
    try:
        image = HiveImage(data)
    except HiveFormatError as e:
        return [Problem(e.what, e.offset, e.why, "error", e.offset_kind)]
    checker = _Checker(image)
    with gc_paused():
        checker.scan_cells()
        checker.walk()
        checker.security_list()
        checker.leaks()
    return checker.problems
