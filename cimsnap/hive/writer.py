"""Serialize a :class:`~cimsnap.hive.tree.Hive` as a fresh regf file.

Output contract (checked by :func:`cimsnap.hive.check.check_hive` and by hivex and regipy
in the tests):

* base block: ``seq1 == seq2 == 1``, major 1, minor 5 or 6 (see :func:`output_minor_version`),
  type 0, format 1, clustering 1, the model's flags (minus KTM_LOCKED) and FILETIME, the
  last 31 UTF-16 units of the model's file name (NUL-terminated), checksum;
* hive bins of 4096-byte multiples (see :class:`~cimsnap.hive.bins.CellAllocator`); the
  unused tail of every bin is one free cell (positive size); every cell is 8-byte aligned;
* the root nk is the first cell and carries HIVE_ENTRY | NO_DELETE (| COMP_NAME);
  COMP_NAME (and vk flag 0x1) is set when every character of the name is <= U+00FF and the
  name is then stored as Latin-1, else UTF-16LE;
* subkey lists are lh lists sorted by the UTF-16 code units of the upcased name with
  ``h = 37*h + unit`` hashes; more than :data:`LH_LEAF_MAX` children are split into lh
  leaves of at most that many entries under one ri list;
* identical security descriptors share one sk cell, the sk cells form one circular
  flink/blink list in allocation order, and each reference count equals the number of keys
  using it; keys without an SD get :data:`DEFAULT_SECURITY_DESCRIPTOR`;
* value data of <= 4 bytes is inline, up to 16,344 bytes one cell, above that a db record
  with 16,344-byte segments; tombstone values (differencing hives only) are flag 0x2,
  REG_NONE, size 0, offset 0xFFFFFFFF;
* an empty class name is stored as "no class" (it reads back as ``None``);
* max subkey-name / class / value-name / value-data lengths are recomputed, names counted
  in UTF-16 bytes.

Output is deterministic: the same model gives the same bytes (no clock reads).
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Final, NamedTuple, Protocol

from cimsnap.hive import cells as C
from cimsnap.hive.bins import CellAllocator, put_bytes, put_offsets
from cimsnap.hive.errors import HiveModelError
from cimsnap.hive.security import DEFAULT_SECURITY_DESCRIPTOR, SecurityCells
from cimsnap.hive.tree import REG_NONE, Hive, Key, Value, name_key

__all__ = [
    "DEFAULT_SECURITY_DESCRIPTOR",
    "LH_LEAF_MAX",
    "SecuritySink",
    "ValueCell",
    "output_minor_version",
    "pack_base_block",
    "put_subkey_list",
    "write_hive",
    "write_hive_to",
    "write_subtree",
    "write_value",
]

#: Most entries in one lh leaf. Windows' own split threshold is not documented (§4.5
#: "unknown"); 512 keeps every leaf cell under 4 KiB (4 + 512 * 8 bytes) and up to
#: 65,535 leaves under one ri gives far more than any real key has.
LH_LEAF_MAX: Final = 512

_NK = C.NK_HEADER_FAST.struct
_VK = C.VK_HEADER_FAST.struct
_LIST = C.LIST_HEADER_FAST.struct
_DB = C.DB_FAST.struct
_BASE = C.BASE_BLOCK_FAST.struct
_U32 = C.fast_array(C.OFFSET_ELEMENT_FAST, 1)
_NO_CELL: Final = C.NO_CELL
# The packers below are called positionally in these field orders.
C.NK_HEADER_FAST.require_order(
    (
        "signature",
        "flags",
        "last_written",
        "access_bits",
        "layer",
        "spare",
        "parent",
        "subkey_count",
        "volatile_subkey_count",
        "subkey_list",
        "volatile_subkey_list",
        "value_count",
        "value_list",
        "security",
        "class_offset",
        "max_subkey_name",
        "max_class",
        "max_value_name",
        "max_value_data",
        "work_var",
        "name_length",
        "class_length",
    )
)
C.VK_HEADER_FAST.require_order(
    ("signature", "name_length", "data_size", "data_offset", "type", "flags", "spare")
)
C.DB_FAST.require_order(("signature", "segment_count", "segment_list"))
_SEG: Final = C.BIG_DATA_SEGMENT_SIZE
# Plain ints: IntFlag arithmetic costs a Python-level call per key on the hot path.
_ROOT_FLAGS: Final = int(C.KeyFlags.HIVE_ENTRY | C.KeyFlags.NO_DELETE)
_KEY_COMP_NAME: Final = int(C.KeyFlags.COMP_NAME)
_VALUE_COMP_NAME: Final = int(C.ValueFlags.COMP_NAME)
_VALUE_TOMBSTONE: Final = int(C.ValueFlags.TOMBSTONE)
#: Base-block flags carried from the model: all but KTM_LOCKED (a fresh file holds no
#: transaction-manager state, so claiming a KTM lock would be false).
_WRITTEN_BASE_FLAGS: Final = 0xFFFFFFFF & ~int(C.BaseBlockFlags.KTM_LOCKED)
_DERIVED_KEY_FLAGS: Final = int(C.KeyFlags.HIVE_ENTRY | C.KeyFlags.COMP_NAME)


class ValueCell(NamedTuple):
    """A stored value: its vk offset, name size (UTF-16 bytes) and data size (bytes)."""

    offset: int
    name_size: int
    data_size: int


def output_minor_version(hive: Hive) -> int:
    """Minor version written for ``hive``: 6 if the model says 6 or is a differencing
    hive, else 5.

    Both use lh lists and db records (§4.5). Models read from v1.3/v1.4 files are
    upgraded to 1.5 because the writer always emits lh lists. Whether Windows accepts
    layered keys in a v1.5 file is unknown (§7); every real delta we know is v1.6, so
    differencing hives are always written as v1.6.
    """
    return 6 if hive.minor_version >= 6 or hive.is_differencing else 5


def _stored_name(name: str) -> tuple[bytes, bool]:
    """Return (stored bytes, compressed?) for a key or value name (§4.5 COMP_NAME rule)."""
    try:
        return name.encode("latin-1"), True
    except UnicodeEncodeError:
        return name.encode("utf-16-le", "surrogatepass"), False


def _put_data(cells: CellAllocator, data: bytes) -> int:
    """Store value data of more than 4 bytes: one cell, or a db record (§4.1)."""
    if len(data) <= _SEG:
        return put_bytes(cells, data)
    # Each segment cell gets 4 spare bytes after its data: hivex 1.3.23 copies "cell size - 8"
    # bytes per segment, which loses the tail of a tightly sized last segment. Full segments
    # get the spare bytes from 8-byte alignment anyway (16344 + 4 -> 16352).
    segments = [put_bytes(cells, data[i : i + _SEG], spare=4) for i in range(0, len(data), _SEG)]
    seg_list = put_offsets(cells, segments)
    off = cells.alloc(_DB.size)
    _DB.pack_into(cells.buf, off + C.BASE_BLOCK_SIZE + 4, b"db", len(segments), seg_list)
    return off


def put_subkey_list(cells: CellAllocator, entries: list[tuple[int, int]], path: str) -> int:
    """Store sorted (nk offset, hash) pairs as one lh list or an ri of lh leaves."""
    if not entries:
        return _NO_CELL
    leaves = [entries[i : i + LH_LEAF_MAX] for i in range(0, len(entries), LH_LEAF_MAX)]
    if len(leaves) > 0xFFFF:
        raise HiveModelError(path, f"more than {0xFFFF * LH_LEAF_MAX} subkeys")
    leaf_offsets = []
    for leaf in leaves:
        off = cells.alloc(_LIST.size + 8 * len(leaf))
        pos = off + C.BASE_BLOCK_SIZE + 4
        _LIST.pack_into(cells.buf, pos, b"lh", len(leaf))
        flat = [x for pair in leaf for x in pair]
        C.fast_array(C.LH_ELEMENT_FAST, len(leaf)).pack_into(cells.buf, pos + _LIST.size, *flat)
        leaf_offsets.append(off)
    if len(leaf_offsets) == 1:
        return leaf_offsets[0]
    off = cells.alloc(_LIST.size + 4 * len(leaf_offsets))
    pos = off + C.BASE_BLOCK_SIZE + 4
    _LIST.pack_into(cells.buf, pos, b"ri", len(leaf_offsets))
    C.fast_array(C.OFFSET_ELEMENT_FAST, len(leaf_offsets)).pack_into(
        cells.buf, pos + _LIST.size, *leaf_offsets
    )
    return off


def _check_key(key: Key, path: str, differencing: bool, depth: int, name_size: int) -> None:
    """Refuse what Windows cannot load; ``name_size`` is the name's UTF-16 byte count."""
    if not key.name or "\\" in key.name:
        raise HiveModelError(path, "a key name must be non-empty and contain no backslash")
    if name_size > 2 * C.MAX_KEY_NAME_LENGTH:
        raise HiveModelError(path, f"key name longer than {C.MAX_KEY_NAME_LENGTH} units")
    if depth > C.MAX_KEY_DEPTH:
        raise HiveModelError(path, f"deeper than {C.MAX_KEY_DEPTH} levels")
    if not differencing and (key.semantics or key.inherit_class):
        raise HiveModelError(path, "layer semantics in a hive without layered-key support")
    if key.class_name is not None and len(key.class_name) > 0x7FFF:
        raise HiveModelError(path, "class name longer than 32767 units")


def write_value(cells: CellAllocator, value: Value, path: str, differencing: bool) -> ValueCell:
    """Store one value (vk cell plus its data); return its offset and max-length figures.

    Raises :class:`HiveModelError` (nothing allocated) for a value the format cannot hold.
    """
    stored, compressed = _stored_name(value.name)
    if len(value.name) > C.MAX_VALUE_NAME_LENGTH:
        raise HiveModelError(path, f"value name longer than {C.MAX_VALUE_NAME_LENGTH}")
    name_size = 2 * len(value.name) if compressed else len(stored)
    flags = _VALUE_COMP_NAME if compressed else 0
    data = value.data
    data_size = 0
    if value.tombstone:
        if not differencing:
            raise HiveModelError(path, f"tombstone value {value.name!r} in a normal hive")
        flags |= _VALUE_TOMBSTONE
        vtype, size, data_off = REG_NONE, 0, _NO_CELL
    else:
        vtype = value.type
        if not 0 <= vtype <= 0xFFFFFFFF:
            raise HiveModelError(path, f"value {value.name!r} type out of range")
        size = data_size = len(data)
        if size > 0x7FFFFFFF or -(-size // _SEG) > 0xFFFF:
            raise HiveModelError(path, f"value {value.name!r} data too large")
        if size <= C.INLINE_DATA_MAX:
            data_off = int.from_bytes(data, "little")
            size |= C.DATA_INLINE_FLAG
        else:
            data_off = _put_data(cells, data)
    off = cells.alloc(_VK.size + len(stored))
    pos = off + C.BASE_BLOCK_SIZE + 4
    _VK.pack_into(cells.buf, pos, b"vk", len(stored), size, data_off, vtype, int(flags), 0)
    cells.buf[pos + _VK.size : pos + _VK.size + len(stored)] = stored
    return ValueCell(off, name_size, data_size)


def _write_values(
    cells: CellAllocator, key: Key, path: str, differencing: bool
) -> tuple[int, int, int]:
    """Store ``key``'s values; return (value list offset, max name bytes, max data bytes)."""
    vk_offsets = []
    max_name = max_data = 0
    for value in key.values:
        vk = write_value(cells, value, path, differencing)
        vk_offsets.append(vk.offset)
        max_name = max(max_name, vk.name_size)
        max_data = max(max_data, vk.data_size)
    list_off = put_offsets(cells, vk_offsets) if vk_offsets else _NO_CELL
    return list_off, max_name, max_data


def write_hive(hive: Hive) -> bytes:
    """Serialize ``hive`` as a complete regf file (see the module docstring).

    Raises :class:`HiveModelError` (nothing is returned) when the model cannot be stored:
    empty or over-long names, backslashes in key names, two children with the same folded
    name, layer marks or tombstones in a hive whose flags lack 0x2, over-deep trees.
    """
    return bytes(_serialize(hive))


def write_hive_to(
    hive: Hive, write: Callable[[memoryview], object], chunk_size: int = 1 << 20
) -> int:
    """Serialize ``hive`` and pass it to ``write`` in chunks; return the byte count.

    The image is still built in memory first (cells point backwards and forwards), so this
    saves only the final copy that :func:`write_hive` makes. ``write`` must consume each
    chunk before returning (the buffer is released afterwards). Raises HiveModelError
    before anything is written, or whatever ``write`` raises.
    """
    buf = _serialize(hive)
    with memoryview(buf) as view:
        for start in range(0, len(buf), chunk_size):
            write(view[start : start + chunk_size])
    return len(buf)


class SecuritySink(Protocol):
    """Where a key's security descriptor goes: returns its sk cell offset, counting a use."""

    def use(self, cells: CellAllocator, sd: bytes) -> int: ...


def write_subtree(
    cells: CellAllocator,
    security: SecuritySink,
    top: Key,
    *,
    parent_offset: int,
    path: str,
    depth: int,
    differencing: bool,
    hive_root: bool = False,
) -> int:
    """Store ``top`` and everything below it as fresh cells; return ``top``'s nk offset.

    ``parent_offset`` goes into ``top``'s nk; ``path`` and ``depth`` (below the hive root)
    name and bound it in errors; ``hive_root`` gives ``top`` the root's flags. Cells are
    allocated in a fixed order (a key's nk before its lists, values and sk), so the same
    subtree gives the same bytes. Raises :class:`HiveModelError` for a model the format
    cannot hold; the cells allocated so far are then garbage (callers discard the buffer).
    """
    top_name, top_compressed = _stored_name(top.name)
    top_off = cells.alloc(_NK.size + len(top_name))
    # Stack entries: (key, nk offset, parent nk offset, path, depth, stored name, compressed).
    stack: list[tuple[Key, int, int, str, int, bytes, bool]] = [
        (top, top_off, parent_offset, path, depth, top_name, top_compressed)
    ]
    while stack:
        key, nk_off, parent_off, path, depth, stored, compressed = stack.pop()
        _check_key(key, path, differencing, depth, 2 * len(stored) if compressed else len(stored))
        children = []
        for child in key.subkeys.values():
            folded = name_key(child.name)
            children.append((folded.encode("utf-16-be", "surrogatepass"), folded, child))
        children.sort(key=lambda t: t[0])
        entries: list[tuple[int, int]] = []
        max_child_name = max_child_class = 0
        previous = None
        for sort_key, folded, child in children:
            if sort_key == previous:
                raise HiveModelError(path, f"two subkeys named {child.name!r} (case-insensitive)")
            previous = sort_key
            child_stored, child_compressed = _stored_name(child.name)
            child_off = cells.alloc(_NK.size + len(child_stored))
            entries.append((child_off, C.lh_hash_folded(folded)))
            size = 2 * len(child_stored) if child_compressed else len(child_stored)
            max_child_name = max(max_child_name, size)
            if child.class_name:
                max_child_class = max(
                    max_child_class, len(child.class_name.encode("utf-16-le", "surrogatepass"))
                )
            stack.append(
                (
                    child,
                    child_off,
                    nk_off,
                    path + "\\" + child.name,
                    depth + 1,
                    child_stored,
                    child_compressed,
                )
            )
        subkey_list = put_subkey_list(cells, entries, path)
        class_off, class_len = _NO_CELL, 0
        if key.class_name:
            class_bytes = key.class_name.encode("utf-16-le", "surrogatepass")
            class_off, class_len = put_bytes(cells, class_bytes), len(class_bytes)
        value_list, max_value_name, max_value_data = _write_values(cells, key, path, differencing)
        sk_off = security.use(cells, key.security or DEFAULT_SECURITY_DESCRIPTOR)
        flags = key.flags & ~_DERIVED_KEY_FLAGS
        if hive_root and key is top:
            flags |= _ROOT_FLAGS
        if compressed:
            flags |= _KEY_COMP_NAME
        layer = int(key.semantics) | (C.INHERIT_CLASS if key.inherit_class else 0)
        pos = nk_off + C.BASE_BLOCK_SIZE + 4
        _NK.pack_into(
            cells.buf,
            pos,
            b"nk",
            int(flags) & 0xFFFF,
            key.last_written,
            key.access_bits & 0xFF,
            layer,
            0,
            parent_off,
            len(entries),
            0,
            subkey_list,
            _NO_CELL,
            len(key.values),
            value_list,
            sk_off,
            class_off,
            max_child_name & 0xFFFF,
            max_child_class,
            max_value_name,
            max_value_data,
            0,
            len(stored),
            class_len,
        )
        cells.buf[pos + _NK.size : pos + _NK.size + len(stored)] = stored
    return top_off


def pack_base_block(
    buf: bytearray | mmap.mmap,
    *,
    sequence: int,
    last_written: int,
    minor_version: int,
    root_offset: int,
    hive_bins_size: int,
    file_name: str,
    flags: int,
) -> None:
    """Write a complete base block (§4.1, §4.5) at ``buf[0:4096]``, checksum included.

    Both sequence numbers get ``sequence`` (a clean hive); reserved areas are zeroed; the
    file name keeps its last 31 UTF-16 units so the 64-byte field stays NUL-terminated;
    KTM_LOCKED is never written (no transaction-manager state exists for the file).
    """
    name_tail = file_name.encode("utf-16-le", "surrogatepass")[-62:]
    _BASE.pack_into(
        buf,
        0,
        b"regf",
        sequence,
        sequence,
        last_written,
        1,
        minor_version,
        0,
        1,
        root_offset,
        hive_bins_size,
        1,
        name_tail.ljust(64, b"\0"),
        bytes(32),
        flags & _WRITTEN_BASE_FLAGS,
        bytes(360),
        0,
        bytes(3584),
    )
    _U32.pack_into(buf, C.CHECKSUM_OFFSET, C.base_block_checksum(buf[: C.CHECKSUM_OFFSET]))


def _serialize(hive: Hive) -> bytearray:
    cells = CellAllocator(hive.last_written)
    security = SecurityCells()
    root_off = write_subtree(
        cells,
        security,
        hive.root,
        parent_offset=0,
        path=hive.root.name,
        depth=0,
        differencing=hive.is_differencing,
        hive_root=True,
    )
    cells.close_bin()
    buf = cells.buf
    if not isinstance(buf, bytearray):
        raise TypeError("the fresh writer's allocator holds a bytearray")
    security.finish(buf)
    pack_base_block(
        buf,
        sequence=1,
        last_written=hive.last_written,
        minor_version=output_minor_version(hive),
        root_offset=root_off,
        hive_bins_size=len(buf) - C.BASE_BLOCK_SIZE,
        file_name=hive.file_name,
        flags=hive.flags,
    )
    return buf
