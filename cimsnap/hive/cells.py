"""regf on-disk structures, declared once with construct, plus their derived fast packers.

Every structure of a registry hive file is
declared here under the names used by Suhanov's specification; logic modules import these
declarations and never restate a layout. Hot paths (the reader walking ~10^6 cells, the
writer emitting them) use :class:`FastLayout` objects built from the same declarations by
:func:`fast_layout`, so the ``struct`` format can never drift from the declaration (a unit
test parses and builds every structure both ways and demands identical results).

All integers are little-endian. Cell offsets are relative to the first hive bin, i.e. file
offset ``BASE_BLOCK_SIZE``.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntFlag
from functools import lru_cache, reduce
from operator import xor
from typing import Any, Final

import construct as c

from cimsnap.binfields import leaves
from cimsnap.upcase import fold_code_units

__all__ = [
    "ACE_HEADER",
    "ACE_HEADER_FAST",
    "ACL_HEADER",
    "ACL_HEADER_FAST",
    "BASE_BLOCK",
    "BASE_BLOCK_FAST",
    "BASE_BLOCK_SIZE",
    "BIG_DATA_SEGMENT_SIZE",
    "CELL_ALIGN",
    "CELL_HEADER",
    "CELL_HEADER_FAST",
    "CHECKSUM_OFFSET",
    "DATA_INLINE_FLAG",
    "DB",
    "DB_FAST",
    "HBIN_ALIGN",
    "HBIN_HEADER",
    "HBIN_HEADER_FAST",
    "HBIN_HEADER_SIZE",
    "INHERIT_CLASS",
    "INLINE_DATA_MAX",
    "LAYER_SEMANTICS_MASK",
    "LF",
    "LH",
    "LH_ELEMENT",
    "LH_ELEMENT_FAST",
    "LI",
    "LIST_HEADER",
    "LIST_HEADER_FAST",
    "MAX_KEY_DEPTH",
    "MAX_KEY_NAME_LENGTH",
    "MAX_VALUE_NAME_LENGTH",
    "NK",
    "NK_HEADER",
    "NK_HEADER_FAST",
    "NO_CELL",
    "OFFSET_ELEMENT",
    "OFFSET_ELEMENT_FAST",
    "RI",
    "SD_HEADER",
    "SD_HEADER_FAST",
    "SE_DACL_PRESENT",
    "SE_SACL_PRESENT",
    "SE_SELF_RELATIVE",
    "SID_HEADER",
    "SID_HEADER_FAST",
    "SK",
    "SK_HEADER",
    "SK_HEADER_FAST",
    "VALUE_LIST",
    "VK",
    "VK_HEADER",
    "VK_HEADER_FAST",
    "BaseBlockFlags",
    "FastLayout",
    "KeyFlags",
    "ValueFlags",
    "base_block_checksum",
    "fast_array",
    "fast_layout",
    "lh_hash",
    "lh_hash_folded",
]

# --- sizes and sentinels (§4.1, §4.5) --------------------------------------------------

#: The base block occupies the first 4096 bytes; cell offsets are relative to its end.
BASE_BLOCK_SIZE: Final = 4096
#: Hive bins are multiples of 4096 bytes and start with a 32-byte ``hbin`` header.
HBIN_ALIGN: Final = 4096
HBIN_HEADER_SIZE: Final = 32
#: Cells (including their 4-byte size field) are 8-byte aligned.
CELL_ALIGN: Final = 8
#: Offset of the base-block checksum: XOR of the 127 dwords before it.
CHECKSUM_OFFSET: Final = 508
#: "No cell" in any offset field.
NO_CELL: Final = 0xFFFFFFFF
#: vk data size MSB: the data (<= 4 bytes) sits in the data-offset field itself.
DATA_INLINE_FLAG: Final = 0x80000000
INLINE_DATA_MAX: Final = 4
#: Value data above this size is stored in a db record (minor version > 3), in segments
#: of exactly this many bytes (the last one truncated to the remaining size).
BIG_DATA_SEGMENT_SIZE: Final = 16344
#: Deepest key accepted by the reader and writer, counted below the root (depth 0). The
#: kernel's hive checker walks with a 512-entry stack (CMP_MAX_REGISTRY_DEPTH, root
#: included) and rejects a hive with a key at depth 512, so 511 is the deepest loadable key;
#: the reader uses the same bound to stop forged trees.
MAX_KEY_DEPTH: Final = 511
#: Longest key name (UTF-16 units) and value name Windows accepts.
MAX_KEY_NAME_LENGTH: Final = 255
MAX_VALUE_NAME_LENGTH: Final = 16383
#: nk layered-key byte (offset 13): low two bits are the layer semantics (§4.3).
LAYER_SEMANTICS_MASK: Final = 0x03
#: nk layered-key byte: take the class name from the lower layer (§4.3).
INHERIT_CLASS: Final = 0x80


class BaseBlockFlags(IntFlag):
    """Base block flags word at offset 144 (§4.1)."""

    KTM_LOCKED = 0x1
    #: RS1+: the hive supports layered keys (set on differencing ``*_Delta`` hives, §4.3).
    LAYERED_KEYS = 0x2


class KeyFlags(IntFlag):
    """nk flags at cell offset 2 (§4.1; Suhanov's names)."""

    VOLATILE = 0x1
    HIVE_EXIT = 0x2
    HIVE_ENTRY = 0x4
    NO_DELETE = 0x8
    SYM_LINK = 0x10
    COMP_NAME = 0x20
    PREDEF_HANDLE = 0x40
    VIRTUAL_SOURCE = 0x80
    VIRTUAL_TARGET = 0x100
    VIRTUAL_STORE = 0x200


class ValueFlags(IntFlag):
    """vk flags at cell offset 16 (§4.1, §4.3)."""

    COMP_NAME = 0x1
    TOMBSTONE = 0x2


# --- declarations ----------------------------------------------------------------------

#: Base block, 4096 bytes (§4.1). Reserved areas keep RmId/LogId/TmId GUIDs, ``rmtm``,
#: the offreg ``OfRg`` marker (offset 176) and the thaw fields; they are carried as bytes.
BASE_BLOCK = c.Struct(
    "signature" / c.Const(b"regf"),
    "primary_sequence" / c.Int32ul,
    "secondary_sequence" / c.Int32ul,
    "last_written" / c.Int64ul,
    "major_version" / c.Int32ul,
    "minor_version" / c.Int32ul,
    "file_type" / c.Int32ul,
    "file_format" / c.Int32ul,
    "root_cell_offset" / c.Int32ul,
    "hive_bins_data_size" / c.Int32ul,
    "clustering_factor" / c.Int32ul,
    "file_name" / c.Bytes(64),
    "reserved_guids" / c.Bytes(32),
    "flags" / c.Int32ul,
    "reserved_tm" / c.Bytes(360),
    "checksum" / c.Int32ul,
    "reserved_tail" / c.Bytes(3584),
)

#: ``hbin`` header, 32 bytes; ``offset`` is the bin's own cell offset (§4.1).
HBIN_HEADER = c.Struct(
    "signature" / c.Const(b"hbin"),
    "offset" / c.Int32ul,
    "size" / c.Int32ul,
    "reserved" / c.Bytes(8),
    "timestamp" / c.Int64ul,
    "spare" / c.Int32ul,
)

#: Every cell starts with a signed size: negative = allocated, positive = free (§4.1).
CELL_HEADER = c.Struct("size" / c.Int32sl)

_NK_FIELDS: tuple[Any, ...] = (
    "signature" / c.Const(b"nk"),
    "flags" / c.Int16ul,
    "last_written" / c.Int64ul,
    "access_bits" / c.Int8ul,
    "layer" / c.Int8ul,  # §4.3: INHERIT_CLASS | LAYER_SEMANTICS_MASK
    "spare" / c.Int16ul,
    "parent" / c.Int32ul,
    "subkey_count" / c.Int32ul,
    "volatile_subkey_count" / c.Int32ul,
    "subkey_list" / c.Int32ul,
    "volatile_subkey_list" / c.Int32ul,
    "value_count" / c.Int32ul,
    "value_list" / c.Int32ul,
    "security" / c.Int32ul,
    "class_offset" / c.Int32ul,
    "max_subkey_name" / c.Int32ul,  # low 16 bits; the rest are user/virt/debug flags
    "max_class" / c.Int32ul,
    "max_value_name" / c.Int32ul,
    "max_value_data" / c.Int32ul,
    "work_var" / c.Int32ul,
    "name_length" / c.Int16ul,
    "class_length" / c.Int16ul,
)
#: nk fixed part (76 bytes) and the whole nk cell data (§4.1).
NK_HEADER = c.Struct(*_NK_FIELDS)
NK = c.Struct(*_NK_FIELDS, "name" / c.Bytes(c.this.name_length))

_VK_FIELDS: tuple[Any, ...] = (
    "signature" / c.Const(b"vk"),
    "name_length" / c.Int16ul,
    "data_size" / c.Int32ul,  # DATA_INLINE_FLAG | size when inline
    "data_offset" / c.Int32ul,
    "type" / c.Int32ul,
    "flags" / c.Int16ul,  # ValueFlags
    "spare" / c.Int16ul,
)
#: vk fixed part (20 bytes) and the whole vk cell data (§4.1, tombstones §4.3).
VK_HEADER = c.Struct(*_VK_FIELDS)
VK = c.Struct(*_VK_FIELDS, "name" / c.Bytes(c.this.name_length))

_SK_FIELDS: tuple[Any, ...] = (
    "signature" / c.Const(b"sk"),
    "reserved" / c.Int16ul,
    "flink" / c.Int32ul,
    "blink" / c.Int32ul,
    "reference_count" / c.Int32ul,
    "descriptor_size" / c.Int32ul,
)
#: sk fixed part (20 bytes) and the whole sk cell data (§4.1).
SK_HEADER = c.Struct(*_SK_FIELDS)
SK = c.Struct(*_SK_FIELDS, "descriptor" / c.Bytes(c.this.descriptor_size))

#: Common 4-byte head of li/lf/lh/ri lists: 2-byte signature, u16 element count.
LIST_HEADER = c.Struct("signature" / c.Bytes(2), "count" / c.Int16ul)
#: One element of an lf/lh list: key-node offset and hint (lf) or hash (lh).
LH_ELEMENT = c.Struct("offset" / c.Int32ul, "hash" / c.Int32ul)
#: One element of li/ri/value/segment lists: a cell offset.
OFFSET_ELEMENT = c.Struct("offset" / c.Int32ul)


def _subkey_list(signature: bytes, element: c.Struct) -> c.Struct:
    """A subkey list: LIST_HEADER with its signature fixed, then ``count`` elements."""
    return c.Struct(
        "signature" / c.Const(signature),
        "count" / c.Int16ul,
        "elements" / c.Array(c.this.count, element),
    )


LF = _subkey_list(b"lf", LH_ELEMENT)
LH = _subkey_list(b"lh", LH_ELEMENT)
LI = _subkey_list(b"li", OFFSET_ELEMENT)
#: ri: a list of li/lf/lh leaves (never of other ri lists).
RI = _subkey_list(b"ri", OFFSET_ELEMENT)
#: db (big data) record: segment count and the offset of the segment list (§4.1).
DB = c.Struct(
    "signature" / c.Const(b"db"),
    "segment_count" / c.Int16ul,
    "segment_list" / c.Int32ul,
)
#: A value list (nk ``value_count`` entries) or db segment list: offsets, unsorted.
VALUE_LIST = c.Array(c.this._.count, OFFSET_ELEMENT)

# --- the security descriptor an sk cell carries (self-relative form, [MS-DTYP] 2.4.6) ----

#: SECURITY_DESCRIPTOR_RELATIVE header; offsets are from the start of the descriptor,
#: 0 = absent.
SD_HEADER = c.Struct(
    "revision" / c.Int8ul,
    "sbz1" / c.Int8ul,
    "control" / c.Int16ul,
    "owner" / c.Int32ul,
    "group" / c.Int32ul,
    "sacl" / c.Int32ul,
    "dacl" / c.Int32ul,
)
#: ACL header ([MS-DTYP] 2.4.5); ``size`` covers the header and all ACEs.
ACL_HEADER = c.Struct(
    "revision" / c.Int8ul,
    "sbz1" / c.Int8ul,
    "size" / c.Int16ul,
    "ace_count" / c.Int16ul,
    "sbz2" / c.Int16ul,
)
#: ACE header ([MS-DTYP] 2.4.4.1); ``size`` covers the whole ACE.
ACE_HEADER = c.Struct("type" / c.Int8ul, "flags" / c.Int8ul, "size" / c.Int16ul)
#: SID head ([MS-DTYP] 2.4.2.2); ``sub_authority_count`` u32 sub-authorities follow.
SID_HEADER = c.Struct(
    "revision" / c.Int8ul,
    "sub_authority_count" / c.Int8ul,
    "identifier_authority" / c.Bytes(6),
)
#: SECURITY_DESCRIPTOR control bits used by the validator.
SE_DACL_PRESENT: Final = 0x0004
SE_SACL_PRESENT: Final = 0x0010
SE_SELF_RELATIVE: Final = 0x8000


# --- fast packers derived from the declarations ----------------------------------------


@dataclass(frozen=True, slots=True)
class FastLayout:
    """A ``struct.Struct`` equivalent to a fixed-size construct ``Struct``.

    ``names`` lists the fields in order; ``consts`` maps the index of each ``Const`` field
    to its expected bytes (the fast path checks them itself, see the reader).
    """

    struct: struct.Struct
    names: tuple[str, ...]
    consts: tuple[tuple[int, bytes], ...]

    @property
    def size(self) -> int:
        """Bytes occupied by the layout."""
        return self.struct.size

    def require_order(self, names: tuple[str, ...]) -> None:
        """Raise ImportError unless the fields are exactly ``names`` in this order.

        Hot code packs and unpacks positionally; modules call this at import time for each
        layout they use that way, so a changed declaration stops them loudly.
        """
        if self.names != names:
            raise ImportError(f"regf layout changed: {self.names} != {names}")

    def unpack_named(
        self, buf: bytes | bytearray | memoryview | mmap.mmap, offset: int = 0
    ) -> dict[str, Any]:
        """Unpack one record at ``offset`` into a field-name -> value dict (not for hot paths)."""
        return dict(zip(self.names, self.struct.unpack_from(buf, offset), strict=True))


def fast_layout(decl: c.Struct) -> FastLayout:
    """Derive a little-endian ``struct.Struct`` from a fixed-size construct declaration.

    The leaves come from :func:`cimsnap.binfields.leaves`, the rules the CIM format's fast
    paths use too (``FormatField``, ``Const``, fixed ``Bytes``); raises TypeError for
    anything else, so a declaration that grows a variable
    part cannot silently get a wrong fast form.
    """
    fmt = ["<"]
    names: list[str] = []
    consts: list[tuple[int, bytes]] = []
    for i, leaf in enumerate(leaves(decl)):
        if leaf.code is None:
            raise TypeError(f"{leaf.name}: no fast form")
        fmt.append(leaf.code)
        names.append(leaf.name)
        if leaf.const is not None:
            consts.append((i, leaf.const))
    return FastLayout(struct.Struct("".join(fmt)), tuple(names), tuple(consts))


@lru_cache(maxsize=512)
def _array_struct(element_format: str, count: int) -> struct.Struct:
    return struct.Struct("<" + element_format * count)


def fast_array(element: FastLayout, count: int) -> struct.Struct:
    """Return a (cached) ``struct.Struct`` for ``count`` consecutive ``element`` records."""
    return _array_struct(element.struct.format[1:], count)


BASE_BLOCK_FAST: Final = fast_layout(BASE_BLOCK)
HBIN_HEADER_FAST: Final = fast_layout(HBIN_HEADER)
CELL_HEADER_FAST: Final = fast_layout(CELL_HEADER)
NK_HEADER_FAST: Final = fast_layout(NK_HEADER)
VK_HEADER_FAST: Final = fast_layout(VK_HEADER)
SK_HEADER_FAST: Final = fast_layout(SK_HEADER)
LIST_HEADER_FAST: Final = fast_layout(LIST_HEADER)
DB_FAST: Final = fast_layout(DB)
LH_ELEMENT_FAST: Final = fast_layout(LH_ELEMENT)
OFFSET_ELEMENT_FAST: Final = fast_layout(OFFSET_ELEMENT)
SD_HEADER_FAST: Final = fast_layout(SD_HEADER)
ACL_HEADER_FAST: Final = fast_layout(ACL_HEADER)
ACE_HEADER_FAST: Final = fast_layout(ACE_HEADER)
SID_HEADER_FAST: Final = fast_layout(SID_HEADER)


# --- format rules -------------------------------------------------------------------


def base_block_checksum(block: bytes | bytearray | memoryview | mmap.mmap) -> int:
    """Checksum of a base block (§4.1): XOR of the first 127 dwords, 0 -> 1, ~0 -> ~0 - 1.

    ``block`` must hold at least ``CHECKSUM_OFFSET`` bytes.
    """
    value = reduce(xor, struct.unpack_from("<127I", block, 0), 0)
    if value == 0xFFFFFFFF:
        return 0xFFFFFFFE
    if value == 0:
        return 1
    return value


def lh_hash(name: str) -> int:
    """lh hash of a key name (§4.1): ``h = 37*h + unit`` over its upcased UTF-16 units."""
    return lh_hash_folded(fold_code_units(name))


def lh_hash_folded(folded: str) -> int:
    """:func:`lh_hash` of a name that is already upcased with ``fold_code_units``."""
    units: Iterable[int]
    if folded.isascii():
        units = folded.encode("ascii")
    else:
        units = (
            u for (u,) in struct.iter_unpack("<H", folded.encode("utf-16-le", "surrogatepass"))
        )
    h = 0
    for unit in units:
        h = (h * 37 + unit) & 0xFFFFFFFF
    return h
