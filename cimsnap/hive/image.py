"""Bounds-checked access to the cells of a regf image.

:class:`HiveImage` validates the base block and the hive-bin chain once, then hands out
cells by offset, each checked before use: in range, 8-byte aligned, allocated, inside the
hive-bins data. It decodes the cell kinds shared by the eager reader (``reader.py``) and
the lazy view (``view.py``): nk, vk (with big data), sk, subkey and value lists.

Every malformed input raises :class:`HiveFormatError` naming the structure and offset.
Work is bounded by the file size: list counts are checked against their cell sizes, ri
lists may only point to leaves, and a db record's segments must cover its size.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from operator import itemgetter
from typing import Any, Final, NamedTuple

from cimsnap.hive import cells as C
from cimsnap.hive.errors import ChecksumMismatchError, DirtyHiveError, HiveFormatError

__all__ = ["BaseBlock", "HiveImage", "NodeRecord", "ValueHead", "ValueRecord"]

_NK = C.NK_HEADER_FAST.struct
_VK = C.VK_HEADER_FAST.struct
_SK = C.SK_HEADER_FAST.struct
_LIST = C.LIST_HEADER_FAST.struct
_DB = C.DB_FAST.struct
_HBIN = C.HBIN_HEADER_FAST.struct
_CELL = C.CELL_HEADER_FAST.struct
_B: Final = C.BASE_BLOCK_SIZE
_SEG: Final = C.BIG_DATA_SEGMENT_SIZE
_NO_CELL: Final = C.NO_CELL
_COMP_NAME: Final = int(C.KeyFlags.COMP_NAME)
_VALUE_COMP_NAME: Final = int(C.ValueFlags.COMP_NAME)
_VALUE_TOMBSTONE: Final = int(C.ValueFlags.TOMBSTONE)
_LEAF_SIGNATURES: Final = (b"lh", b"lf", b"li")
_PAIR_LISTS: Final = (b"lh", b"lf")
#: log2 of the page size of :attr:`HiveImage.loaded` (4 KiB pages).
PAGE_SHIFT: Final = 12


class BaseBlock(NamedTuple):
    """The base-block fields the reader keeps (§4.1)."""

    minor_version: int
    flags: int
    last_written: int
    root_cell_offset: int
    hive_bins_data_size: int
    file_name: str
    sequence: int  # the primary sequence number (equal to the secondary: a clean hive)


class NodeRecord(NamedTuple):
    """The fields of one nk cell (§4.1), named as in ``cells.NK_HEADER``, name decoded."""

    name: str
    flags: int
    last_written: int
    access_bits: int
    layer: int
    subkey_count: int
    subkey_list: int
    value_count: int
    value_list: int
    security: int
    class_offset: int
    class_length: int
    parent: int
    max_subkey_name: int
    max_class: int
    max_value_name: int
    max_value_data: int


def _picker(layout: C.FastLayout, fields: tuple[str, ...]) -> Callable[[tuple[Any, ...]], Any]:
    """itemgetter for ``fields`` of an unpacked ``layout`` tuple (positions by name)."""
    return itemgetter(*(layout.names.index(name) for name in fields))


_NK_PICK = _picker(C.NK_HEADER_FAST, NodeRecord._fields[1:])
_NK_SIGNATURE = C.NK_HEADER_FAST.names.index("signature")
_NK_NAME_LENGTH = C.NK_HEADER_FAST.names.index("name_length")
C.VK_HEADER_FAST.require_order(
    ("signature", "name_length", "data_size", "data_offset", "type", "flags", "spare"),
)
C.SK_HEADER_FAST.require_order(
    ("signature", "reserved", "flink", "blink", "reference_count", "descriptor_size"),
)
C.LIST_HEADER_FAST.require_order(("signature", "count"))
C.DB_FAST.require_order(("signature", "segment_count", "segment_list"))
C.HBIN_HEADER_FAST.require_order(("signature", "offset", "size", "reserved", "timestamp", "spare"))


class ValueHead(NamedTuple):
    """A vk cell without its data: name, name size in UTF-16 bytes (what the max-length
    fields count), data size in bytes (0 for a tombstone) and the tombstone mark."""

    name: str
    name_size: int
    data_size: int
    tombstone: bool


class ValueRecord(NamedTuple):
    """One vk cell (§4.1) with its data resolved (``b""`` for tombstones).

    ``tombstone`` is the vk tombstone flag (§4.3), honoured only in a hive whose base block
    declares layered keys; elsewhere it reads False (``flags`` keeps the raw bit).
    """

    name: str
    type: int
    data: bytes
    flags: int
    tombstone: bool


def _parse_base_block(data: bytes | memoryview | mmap.mmap) -> BaseBlock:
    if len(data) < _B:
        raise HiveFormatError(
            "base block", 0, f"file holds {len(data)} bytes, needs 4096", offset_kind="file"
        )
    f = C.BASE_BLOCK_FAST.unpack_named(data)
    sig, seq1, seq2 = f["signature"], f["primary_sequence"], f["secondary_sequence"]
    major, minor, size = f["major_version"], f["minor_version"], f["hive_bins_data_size"]
    ftype, fmt, checksum = f["file_type"], f["file_format"], f["checksum"]
    if sig != b"regf":
        raise HiveFormatError(
            "base block", 0, f"signature {sig!r}, not b'regf'", offset_kind="file"
        )
    expected = C.base_block_checksum(data)
    if checksum != expected:
        raise ChecksumMismatchError(
            "base block",
            C.CHECKSUM_OFFSET,
            f"checksum {checksum:#010x}, computed {expected:#010x}",
            offset_kind="file",
        )
    if seq1 != seq2:
        raise DirtyHiveError(
            "base block",
            4,
            f"dirty hive: sequence numbers {seq1} != {seq2}; replay its transaction logs "
            "on Windows (load and unload the hive) before using it",
            offset_kind="file",
        )
    if major != 1 or not 3 <= minor <= 6:
        raise HiveFormatError(
            "base block", 20, f"unsupported version {major}.{minor}", offset_kind="file"
        )
    if ftype != 0 or fmt != 1:
        raise HiveFormatError(
            "base block",
            28,
            f"file type {ftype} / format {fmt} is not a primary hive",
            offset_kind="file",
        )
    if size == 0 or size % C.HBIN_ALIGN or _B + size > len(data):
        raise HiveFormatError(
            "base block",
            40,
            f"hive bins data size {size:#x} does not fit a {len(data)}-byte file",
            offset_kind="file",
        )
    file_name = f["file_name"].decode("utf-16-le", "surrogatepass").split("\0", 1)[0]
    return BaseBlock(
        minor, f["flags"], f["last_written"], f["root_cell_offset"], size, file_name, seq1
    )


class HiveImage:
    """A validated regf image: base block parsed, hive bins walked.

    ``data`` is not copied (a ``memoryview`` or ``mmap`` of a file works); the caller must
    keep it alive and unchanged. ``walk_bins=False`` skips walking (and checking) the bin
    chain, which touches every bin of the file: :attr:`bins` is then empty, and cells are
    still bounds-checked against the hive-bins size (the incremental merge's lazy mode).
    ``track_cells`` makes :meth:`cell` refuse a second reference to any cell (the eager
    reader's cycle and amplification guard; callers must then cache shared sk cells
    themselves). Raises :class:`HiveFormatError` (or its dirty/checksum
    subclasses) from the constructor when the base block or bin chain is bad.
    """

    __slots__ = ("base", "bins", "consumed", "data", "end", "layered", "loaded", "used")

    def __init__(
        self,
        data: bytes | memoryview | mmap.mmap,
        *,
        track_cells: bool = False,
        walk_bins: bool = True,
    ) -> None:
        self.data = data
        # Pages of ``data`` already filled, for the lazy subclass; None: all of them.
        self.loaded: bytearray | None = getattr(self, "loaded", None)
        self.base = _parse_base_block(data)
        self.end = self.base.hive_bins_data_size  # cell offsets must stay below this
        self.layered = bool(self.base.flags & C.BaseBlockFlags.LAYERED_KEYS)
        self.bins = self._walk_bins() if walk_bins else []
        # With track_cells, :meth:`cell` hands out each cell once and the cells handed out
        # may not add up to more than the bins: one byte per 8-byte slot, ~1/8 of the file.
        self.used = bytearray((self.end >> 3) + 1) if track_cells else None
        self.consumed = 0

    def _walk_bins(self) -> list[tuple[int, int]]:
        bins = []
        off = 0
        while off < self.end:
            if off + C.HBIN_HEADER_SIZE > self.end:
                raise HiveFormatError("hbin header", off, "truncated")
            sig, own, size = _HBIN.unpack_from(self.data, _B + off)[:3]
            if sig != b"hbin":
                raise HiveFormatError("hbin header", off, f"signature {sig!r}, not b'hbin'")
            if own != off:
                raise HiveFormatError("hbin header", off, f"claims offset {own:#x}")
            if size < C.HBIN_ALIGN or size % C.HBIN_ALIGN or off + size > self.end:
                raise HiveFormatError("hbin header", off, f"bad bin size {size:#x}")
            bins.append((off, size))
            off += size
        return bins

    def bin_holding(self, off: int) -> tuple[int, int, list[tuple[int, int]]] | None:
        """The hive bin holding cell ``off``, found without walking the bin chain: (start,
        size, the (offset, size) of its free cells).

        The bin is the nearest 4 KiB boundary at or below ``off`` whose ``hbin`` header
        claims that offset and a size reaching past ``off``, and whose cells, walked from
        the header, tile it and land exactly on ``off``. None when no boundary passes (a
        damaged base, or ``off`` not a cell start)."""
        start = off & ~(C.HBIN_ALIGN - 1)
        while start >= 0:
            self._need(_B + start, C.HBIN_HEADER_SIZE)
            sig, own, size = _HBIN.unpack_from(self.data, _B + start)[:3]
            if sig == b"hbin" and own == start:
                break
            start -= C.HBIN_ALIGN
        else:
            return None
        end = start + size
        if size < C.HBIN_ALIGN or size % C.HBIN_ALIGN or end > self.end or end <= off:
            return None
        self._need(_B + start, size)
        free = []
        hit = False
        pos = start + C.HBIN_HEADER_SIZE
        data = self.data
        while pos < end:
            (raw,) = _CELL.unpack_from(data, _B + pos)
            length = raw if raw > 0 else -raw
            if length < 8 or length & 7 or pos + length > end:
                return None
            if raw > 0:
                free.append((pos, length))
            hit = hit or pos == off
            pos += length
        return (start, size, free) if hit else None

    def _need(self, pos: int, size: int) -> None:
        """Hook: ``data[pos : pos + size]`` is about to be read (see
        :class:`~cimsnap.hive.lazyimage.LazyImage`)."""

    def cell(self, off: int, what: str) -> tuple[int, int]:
        """Return (file position of the cell data, data size) of the allocated cell ``off``."""
        if off & 7 or not C.HBIN_HEADER_SIZE <= off <= self.end - 8:
            raise HiveFormatError(what, off, "cell offset out of range or misaligned")
        loaded = self.loaded
        pos = _B + off
        if loaded is not None and not loaded[pos >> PAGE_SHIFT]:
            self._need(pos, 4)
        (size,) = _CELL.unpack_from(self.data, pos)
        if size >= 0:
            raise HiveFormatError(what, off, "refers to a free cell")
        size = -size
        if size < 8 or off + size > self.end:
            raise HiveFormatError(what, off, f"cell size {size} runs past the hive bins")
        if loaded is not None:
            last = (pos + size - 1) >> PAGE_SHIFT
            if last - (pos >> PAGE_SHIFT) > 1 or not loaded[last]:
                self._need(pos, size)
        used = self.used
        if used is not None:
            slot = off >> 3
            if used[slot]:
                raise HiveFormatError(what, off, "cell referenced twice (cycle or shared cell)")
            used[slot] = 1
            self.consumed += size
            if self.consumed > self.end:
                raise HiveFormatError(what, off, "referenced cells overlap")
        return _B + off + 4, size - 4

    def node(self, off: int) -> NodeRecord:
        """Decode the nk cell at ``off``."""
        pos, n = self.cell(off, "nk cell")
        data = self.data
        if n < _NK.size:
            raise HiveFormatError("nk cell", off, f"cell of {n} bytes is too small")
        f = _NK.unpack_from(data, pos)
        if f[_NK_SIGNATURE] != b"nk":
            raise HiveFormatError("nk cell", off, f"signature {f[_NK_SIGNATURE]!r}, not b'nk'")
        name_len = f[_NK_NAME_LENGTH]
        start = pos + _NK.size
        if _NK.size + name_len > n:
            raise HiveFormatError("nk cell", off, f"name of {name_len} bytes overruns the cell")
        fields = _NK_PICK(f)
        name = _decode_name(data[start : start + name_len], fields[0] & _COMP_NAME, "nk cell", off)
        return NodeRecord(name, *fields)

    def class_name(self, rec: NodeRecord, off: int) -> str | None:
        """Decode a key's class name (None when absent or empty)."""
        if rec.class_offset == _NO_CELL or rec.class_length == 0:
            return None
        pos, n = self.cell(rec.class_offset, "class name")
        if rec.class_length > n or rec.class_length & 1:
            raise HiveFormatError("nk cell", off, f"class length {rec.class_length} is bad")
        return _decode_utf16(self.data[pos : pos + rec.class_length], "class name", off)

    def security(self, off: int) -> bytes:
        """Return the security descriptor bytes of the sk cell at ``off``."""
        pos, n = self.cell(off, "sk cell")
        if n < _SK.size:
            raise HiveFormatError("sk cell", off, f"cell of {n} bytes is too small")
        sig, _r, _fl, _bl, _refs, sd_size = _SK.unpack_from(self.data, pos)
        if sig != b"sk":
            raise HiveFormatError("sk cell", off, f"signature {sig!r}, not b'sk'")
        if sd_size > n - _SK.size:
            raise HiveFormatError("sk cell", off, f"descriptor of {sd_size} bytes overruns")
        return bytes(self.data[pos + _SK.size : pos + _SK.size + sd_size])

    def offsets(self, off: int, count: int, what: str) -> tuple[int, ...]:
        """Read a value list or segment list of ``count`` u32 offsets."""
        pos, n = self.cell(off, what)
        if 4 * count > n:
            raise HiveFormatError(what, off, f"{count} entries overrun a {n}-byte cell")
        return C.fast_array(C.OFFSET_ELEMENT_FAST, count).unpack_from(self.data, pos)

    def list_leaf(self, off: int, leaf_only: bool) -> tuple[bytes, tuple[int, ...]]:
        """Read a subkey list cell; return (signature, offsets). ri entries are leaves."""
        pos, n = self.cell(off, "subkey list")
        if n < 4:
            raise HiveFormatError("subkey list", off, "cell too small")
        sig, count = _LIST.unpack_from(self.data, pos)
        if sig in _PAIR_LISTS:
            if 4 + 8 * count > n:
                raise HiveFormatError("subkey list", off, f"{count} entries overrun the cell")
            pairs = C.fast_array(C.LH_ELEMENT_FAST, count).unpack_from(self.data, pos + 4)
            return sig, pairs[0::2]
        if sig == b"li" or (sig == b"ri" and not leaf_only):
            if 4 + 4 * count > n:
                raise HiveFormatError("subkey list", off, f"{count} entries overrun the cell")
            return sig, C.fast_array(C.OFFSET_ELEMENT_FAST, count).unpack_from(self.data, pos + 4)
        raise HiveFormatError("subkey list", off, f"unexpected signature {sig!r}")

    def subkey_offsets(self, off: int, count: int, list_off: int) -> list[int]:
        """Cell offsets of the ``count`` children listed from ``list_off`` (of the nk at
        ``off``), in stored order; raises HiveFormatError when the lists hold another
        number of entries."""
        if count == 0:
            return []
        sig, entries = self.list_leaf(list_off, leaf_only=False)
        if sig == b"ri":
            result: list[int] = []
            for leaf in entries:
                result.extend(self.list_leaf(leaf, leaf_only=True)[1])
                if len(result) > count:
                    break
        else:
            result = list(entries)
        if len(result) != count:
            raise HiveFormatError(
                "nk cell", off, f"{count} subkeys declared, lists hold {len(result)}"
            )
        return result

    def subkey_entries(self, off: int, count: int, list_off: int) -> list[tuple[int, int | None]]:
        """(child nk offset, lh hash or None for lf/li leaves) of the ``count`` children of
        the nk at ``off``, in stored order; raises HiveFormatError as :meth:`subkey_offsets`."""
        if count == 0:
            return []
        sig, entries = self.list_leaf(list_off, leaf_only=False)
        leaves = [(list_off, sig)] if sig != b"ri" else []
        if sig == b"ri":
            for leaf in entries:
                leaves.append((leaf, self.list_leaf(leaf, leaf_only=True)[0]))
        result: list[tuple[int, int | None]] = []
        for leaf, leaf_sig in leaves:
            pos, _n = self.cell(leaf, "subkey list")
            (leaf_count,) = _LIST.unpack_from(self.data, pos)[1:]
            if leaf_sig == b"lh":
                pairs = C.fast_array(C.LH_ELEMENT_FAST, leaf_count).unpack_from(self.data, pos + 4)
                result.extend(zip(pairs[0::2], pairs[1::2], strict=True))
            else:
                result.extend((o, None) for o in self.list_leaf(leaf, leaf_only=True)[1])
            if len(result) > count:
                break
        if len(result) != count:
            raise HiveFormatError(
                "nk cell", off, f"{count} subkeys declared, lists hold {len(result)}"
            )
        return result

    def subkey_list_cells(self, list_off: int) -> list[int]:
        """The cells of the subkey list at ``list_off``: the list itself and an ri's leaves."""
        sig, entries = self.list_leaf(list_off, leaf_only=False)
        return [list_off, *entries] if sig == b"ri" else [list_off]

    def _vk(self, off: int) -> tuple[str, int, int, int, int, int, bool]:
        """The checked vk cell at ``off``: name, stored name length, size field, data
        offset, type, flags, and whether it is a tombstone (only in a layered hive)."""
        pos, n = self.cell(off, "vk cell")
        data = self.data
        if n < _VK.size:
            raise HiveFormatError("vk cell", off, f"cell of {n} bytes is too small")
        sig, name_len, size, data_off, vtype, flags, _spare = _VK.unpack_from(data, pos)
        if sig != b"vk":
            raise HiveFormatError("vk cell", off, f"signature {sig!r}, not b'vk'")
        if _VK.size + name_len > n:
            raise HiveFormatError("vk cell", off, f"name of {name_len} bytes overruns the cell")
        raw = data[pos + _VK.size : pos + _VK.size + name_len]
        name = _decode_name(raw, flags & _VALUE_COMP_NAME, "vk cell", off)
        tombstone = self.layered and bool(flags & _VALUE_TOMBSTONE)
        return name, name_len, size, data_off, vtype, flags, tombstone

    def value_head(self, off: int) -> ValueHead:
        """Decode the vk cell at ``off`` without its data (see :class:`ValueHead`)."""
        name, name_len, size, _data_off, _vtype, flags, tombstone = self._vk(off)
        data_size = 0 if tombstone else size & 0x7FFFFFFF
        name_size = 2 * name_len if flags & _VALUE_COMP_NAME else name_len
        return ValueHead(name, name_size, data_size, tombstone)

    def value_cells(self, off: int) -> list[int]:
        """The cells holding the data of the vk at ``off``: none (inline, empty or a
        tombstone), one data cell, or a db record with its segment list and segments."""
        pos, _n = self.cell(off, "vk cell")
        _sig, _nl, size, data_off, _t, flags, _s = _VK.unpack_from(self.data, pos)
        if size & C.DATA_INLINE_FLAG or size == 0:
            return []
        if self.layered and flags & _VALUE_TOMBSTONE:
            return []
        dpos, n = self.cell(data_off, "value data")
        if size > _SEG and self.base.minor_version > 3 and self.data[dpos : dpos + 2] == b"db":
            if n < _DB.size:
                raise HiveFormatError("db record", data_off, "cell too small")
            _dsig, count, list_off = _DB.unpack_from(self.data, dpos)
            return [data_off, list_off, *self.offsets(list_off, count, "db segment list")]
        return [data_off]

    def value(self, off: int) -> ValueRecord:
        """Decode the vk cell at ``off`` including its data (inline, cell or db)."""
        name, _name_len, size, data_off, vtype, flags, tombstone = self._vk(off)
        if size & C.DATA_INLINE_FLAG:
            size &= 0x7FFFFFFF
            if size > C.INLINE_DATA_MAX:
                raise HiveFormatError("vk cell", off, f"inline data of {size} bytes")
            value = data_off.to_bytes(4, "little")[:size]
        elif size == 0 or tombstone:
            value = b""
        else:
            value = self._data(data_off, size, off)
        return ValueRecord(name, vtype, value, flags, tombstone)

    def _data(self, off: int, size: int, vk_off: int) -> bytes:
        pos, n = self.cell(off, "value data")
        data = self.data
        if size > _SEG and self.base.minor_version > 3 and data[pos : pos + 2] == b"db":
            return self._big_data(off, pos, n, size)
        if size > n:
            raise HiveFormatError("vk cell", vk_off, f"data size {size} overruns a {n}-byte cell")
        return bytes(data[pos : pos + size])

    def _big_data(self, off: int, pos: int, n: int, size: int) -> bytes:
        if n < _DB.size:
            raise HiveFormatError("db record", off, "cell too small")
        _sig, count, list_off = _DB.unpack_from(self.data, pos)
        if count * _SEG < size:
            raise HiveFormatError("db record", off, f"{count} segments cannot hold {size} bytes")
        parts = []
        remaining = size
        for seg in self.offsets(list_off, count, "db segment list"):
            if remaining <= 0:
                break
            spos, sn = self.cell(seg, "db segment")
            take = min(remaining, sn, _SEG)
            parts.append(self.data[spos : spos + take])
            remaining -= take
        if remaining:
            raise HiveFormatError("db record", off, f"segments hold {size - remaining} of {size}")
        return b"".join(parts)


def _decode_name(raw: bytes | memoryview, compressed: int, what: str, off: int) -> str:
    if compressed:
        return bytes(raw).decode("latin-1")
    return _decode_utf16(raw, what, off)


def _decode_utf16(raw: bytes | memoryview, what: str, off: int) -> str:
    if len(raw) & 1:
        raise HiveFormatError(what, off, "UTF-16 name of odd length")
    # surrogatepass: unpaired surrogates are legal in registry names and must round-trip.
    return bytes(raw).decode("utf-16-le", "surrogatepass")
