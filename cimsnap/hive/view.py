"""Lazy, read-only browsing of a regf image.

:class:`HiveReader` validates the base block and bin chain up front and then decodes cells
only when asked: ``reader.open_key(r"Microsoft\\Windows NT\\CurrentVersion")`` touches the
cells on that path and nothing else. Names compare case-insensitively with Windows'
upcase table. Every decode is bounds-checked and raises :class:`HiveFormatError` with the
cell offset; :meth:`HiveReader.walk` tracks visited keys so a cyclic hive cannot loop.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.errors import HiveFormatError, KeyNotFoundError
from cimsnap.hive.image import HiveImage, NodeRecord
from cimsnap.hive.tree import (
    REG_DWORD,
    REG_DWORD_BIG_ENDIAN,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_QWORD,
    REG_SZ,
    LayerSemantics,
    name_key,
)

__all__ = [
    "HiveReader",
    "KeyView",
    "TypedData",
    "ValueView",
    "decode_value",
    "read_current_build",
]

TypedData = str | list[str] | int | bytes

_CURRENT_VERSION: Final = r"Microsoft\Windows NT\CurrentVersion"


def decode_value(vtype: int, raw: bytes) -> TypedData:
    """Decode value data by type.

    REG_SZ / REG_EXPAND_SZ -> str cut at the first NUL; REG_MULTI_SZ -> list of the strings
    before the first empty one; REG_DWORD / REG_DWORD_BIG_ENDIAN (4 bytes) and REG_QWORD
    (8 bytes) -> int. Anything else, and integers of the wrong length, stay bytes. UTF-16
    of odd length loses its last byte; unpaired surrogates are kept.
    """
    if vtype in (REG_SZ, REG_EXPAND_SZ):
        return _utf16(raw).split("\0", 1)[0]
    if vtype == REG_MULTI_SZ:
        result = []
        for part in _utf16(raw).split("\0"):
            if not part:
                break
            result.append(part)
        return result
    if vtype == REG_DWORD and len(raw) == 4:
        return int.from_bytes(raw, "little")
    if vtype == REG_DWORD_BIG_ENDIAN and len(raw) == 4:
        return int.from_bytes(raw, "big")
    if vtype == REG_QWORD and len(raw) == 8:
        return int.from_bytes(raw, "little")
    return raw


def _utf16(raw: bytes) -> str:
    return raw[: len(raw) & ~1].decode("utf-16-le", "surrogatepass")


@dataclass(frozen=True, slots=True)
class ValueView:
    """One value as stored: ``raw`` bytes, REG_* ``type``, and the tombstone mark (§4.3)."""

    offset: int
    name: str
    type: int
    raw: bytes
    tombstone: bool

    @property
    def data(self) -> TypedData:
        """The data decoded by :func:`decode_value`."""
        return decode_value(self.type, self.raw)


class KeyView:
    """A key inside a :class:`HiveReader`; decodes its cells on demand."""

    __slots__ = ("_image", "_rec", "offset")

    def __init__(self, image: HiveImage, offset: int) -> None:
        self._image = image
        self.offset = offset
        self._rec: NodeRecord = image.node(offset)

    @property
    def name(self) -> str:
        return self._rec.name

    @property
    def last_written(self) -> int:
        return self._rec.last_written

    @property
    def class_name(self) -> str | None:
        return self._image.class_name(self._rec, self.offset)

    @property
    def semantics(self) -> LayerSemantics:
        """Layer semantics (§4.3); MERGE unless the hive supports layered keys."""
        layer = self._rec.layer if self._image.layered else 0
        return LayerSemantics(layer & C.LAYER_SEMANTICS_MASK)

    @property
    def inherit_class(self) -> bool:
        return self._image.layered and bool(self._rec.layer & C.INHERIT_CLASS)

    @property
    def security(self) -> bytes:
        return self._image.security(self._rec.security)

    def subkey_offsets(self) -> list[int]:
        """Cell offsets of the children, in stored order (checked against the nk count)."""
        rec = self._rec
        return self._image.subkey_offsets(self.offset, rec.subkey_count, rec.subkey_list)

    def subkeys(self) -> list[KeyView]:
        """The children, in stored (sorted) order."""
        return [KeyView(self._image, off) for off in self.subkey_offsets()]

    def subkey(self, name: str) -> KeyView | None:
        """The child named ``name`` (case-insensitive), or None."""
        wanted = name_key(name)
        for off in self.subkey_offsets():
            child = KeyView(self._image, off)
            if name_key(child.name) == wanted:
                return child
        return None

    def values(self) -> list[ValueView]:
        """The values in stored order, data resolved."""
        rec = self._rec
        if rec.value_count == 0:
            return []
        image = self._image
        result = []
        for off in image.offsets(rec.value_list, rec.value_count, "value list"):
            v = image.value(off)
            result.append(ValueView(off, v.name, v.type, v.data, v.tombstone))
        return result

    def value(self, name: str) -> ValueView | None:
        """The value named ``name`` (case-insensitive; ``""`` is the default), or None."""
        wanted = name_key(name)
        for v in self.values():
            if name_key(v.name) == wanted:
                return v
        return None


class HiveReader:
    """Read-only lazy access to a hive image.

    ``data`` is not copied and must stay unchanged while the reader is used. The
    constructor raises :class:`HiveFormatError` (or DirtyHiveError/ChecksumMismatchError)
    for a bad base block or bin chain; later calls raise it for the cells they touch.
    """

    __slots__ = ("image", "root")

    def __init__(self, data: bytes | memoryview | mmap.mmap) -> None:
        self.image = HiveImage(data)
        self.root = KeyView(self.image, self.image.base.root_cell_offset)

    @property
    def is_differencing(self) -> bool:
        return self.image.layered

    def find_key(self, path: str) -> KeyView | None:
        """The key at the backslash-separated ``path`` below the root, or None.

        Empty components are ignored, so ``""`` and ``"\\"`` name the root.
        """
        key = self.root
        for part in path.split("\\"):
            if not part:
                continue
            child = key.subkey(part)
            if child is None:
                return None
            key = child
        return key

    def open_key(self, path: str) -> KeyView:
        """Like :meth:`find_key`, but raises :class:`KeyNotFoundError` when absent."""
        key = self.find_key(path)
        if key is None:
            raise KeyNotFoundError(path)
        return key

    def walk(self) -> Iterator[tuple[str, KeyView]]:
        """Yield (path, key) for every key, depth first, root first (path ``""``).

        Raises HiveFormatError if a key is reached twice (a cycle) or nesting exceeds
        :data:`~cimsnap.hive.cells.MAX_KEY_DEPTH`.
        """
        seen = {self.root.offset}
        stack: list[tuple[str, KeyView, int]] = [("", self.root, 0)]
        while stack:
            path, key, depth = stack.pop()
            yield path, key
            children = key.subkeys()
            if children and depth >= C.MAX_KEY_DEPTH:
                raise HiveFormatError("nk cell", key.offset, "keys nested too deep")
            for child in reversed(children):
                if child.offset in seen:
                    raise HiveFormatError("nk cell", child.offset, "key reached twice (cycle)")
                seen.add(child.offset)
                stack.append((f"{path}\\{child.name}" if path else child.name, child, depth + 1))


def read_current_build(data: bytes | memoryview) -> int:
    r"""Return ``CurrentBuild`` from a SOFTWARE hive image (§4.2).

    Reads ``Microsoft\Windows NT\CurrentVersion`` value ``CurrentBuild``, which must be
    REG_SZ (as in the seed; REG_EXPAND_SZ is refused) holding a decimal 0..65535; the
    string is cut at its first NUL (the seed's "drop the last 2 bytes" is not copied).
    Raises KeyNotFoundError when the key or value is missing, HiveFormatError otherwise.
    """
    key = HiveReader(data).open_key(_CURRENT_VERSION)
    value = key.value("CurrentBuild")
    if value is None:
        raise KeyNotFoundError(_CURRENT_VERSION + "\\CurrentBuild")
    if value.type != REG_SZ:
        raise HiveFormatError("CurrentBuild value", value.offset, f"type {value.type}, not REG_SZ")
    text = decode_value(REG_SZ, value.raw)
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or int(text) > 0xFFFF:
        raise HiveFormatError("CurrentBuild value", value.offset, f"{text!r} is not a build number")
    return int(text)
