"""The in-memory registry tree shared by the hive reader, writer and merge.

A :class:`Hive` is what a regf file means, free of cell layout: the reader produces one,
the writer serializes one, and ``merge(base, delta)`` maps two of them to a third. Names
keep their stored casing; lookups use :func:`name_key`, Windows' per-code-unit
uppercase, never ``str.upper()``.

Layer fields (``semantics``, ``inherit_class``, ``Value.tombstone``) are only meaningful
in differencing hives (§4.3); in a normal hive they are all zero/False.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Final

from cimsnap.upcase import fold_code_units

__all__ = [
    "REG_BINARY",
    "REG_DWORD",
    "REG_DWORD_BIG_ENDIAN",
    "REG_EXPAND_SZ",
    "REG_LINK",
    "REG_MULTI_SZ",
    "REG_NONE",
    "REG_QWORD",
    "REG_SZ",
    "Hive",
    "Key",
    "LayerSemantics",
    "Value",
    "name_key",
]

REG_NONE: Final = 0
REG_SZ: Final = 1
REG_EXPAND_SZ: Final = 2
REG_BINARY: Final = 3
REG_DWORD: Final = 4
REG_DWORD_BIG_ENDIAN: Final = 5
REG_LINK: Final = 6
REG_MULTI_SZ: Final = 7
REG_QWORD: Final = 11


class LayerSemantics(IntEnum):
    """Low two bits of an nk cell's layered-key byte (offset 13)."""

    MERGE = 0
    TOMBSTONE = 1
    SUPERSEDE_LOCAL = 2
    SUPERSEDE_TREE = 3


def name_key(name: str) -> str:
    """Return the case-insensitive identity of a key or value name (Windows upcase)."""
    # ASCII fast path (several times faster than the table): below U+0080 Windows' table
    # maps exactly a-z to A-Z, as str.upper() does (pinned by a test).
    return name.upper() if name.isascii() else fold_code_units(name)


@dataclass(slots=True)
class Value:
    """A registry value. ``name == ""`` is the key's default value.

    ``data`` is the raw value bytes exactly as stored (no decoding); ``type`` is the
    REG_* type, kept even when it is not one of the known constants.
    """

    name: str
    type: int
    data: bytes
    tombstone: bool = False


@dataclass(slots=True)
class Key:
    """A registry key and its subtree.

    ``subkeys`` maps :func:`name_key` of each child's name to the child, in insertion
    order (serializers sort; the order here carries no meaning). ``values`` keeps the
    stored order. ``security`` is a self-relative security descriptor; keys that share
    identical bytes share one sk cell when written. ``class_name`` is ``None`` when the key
    has no class. ``flags`` holds the nk flags other than the layout bits the writer
    derives itself (HIVE_ENTRY, COMP_NAME).
    """

    name: str
    last_written: int = 0
    flags: int = 0
    class_name: str | None = None
    security: bytes = b""
    semantics: LayerSemantics = LayerSemantics.MERGE
    inherit_class: bool = False
    access_bits: int = 0
    values: list[Value] = field(default_factory=list)
    subkeys: dict[str, Key] = field(default_factory=dict)

    def add_subkey(self, key: Key) -> Key:
        """Add ``key`` as a child, replacing a child with the same folded name; return it."""
        self.subkeys[name_key(key.name)] = key
        return key

    def subkey(self, name: str) -> Key | None:
        """Return the child named ``name`` (case-insensitively), or None."""
        return self.subkeys.get(name_key(name))

    def find(self, path: str) -> Key | None:
        """Return the key at the ``\\``-separated ``path`` below this one, or None.

        Names match case-insensitively; empty components are ignored, so ``""`` is this key
        (as :meth:`cimsnap.hive.view.HiveReader.find_key` does for an image).
        """
        key: Key | None = self
        for part in path.split("\\"):
            if part and key is not None:
                key = key.subkeys.get(name_key(part))
        return key

    def value(self, name: str) -> Value | None:
        """Return the value named ``name`` (case-insensitively), or None."""
        wanted = name_key(name)
        for v in self.values:
            if name_key(v.name) == wanted:
                return v
        return None


@dataclass(slots=True)
class Hive:
    """A whole hive: its root key plus the base-block fields worth keeping.

    ``flags`` is the base block's flags word (offset 144; 0x2 = layered keys supported, set
    on differencing hives). ``minor_version`` is 3..6. ``file_name`` is the base block's
    64-byte UTF-16 file-name tail, decoded. ``last_written`` is the base block FILETIME.
    """

    root: Key
    minor_version: int = 5
    flags: int = 0
    file_name: str = ""
    last_written: int = 0

    @property
    def is_differencing(self) -> bool:
        """True when the base block declares layered-key support (a ``*_DELTA`` hive)."""
        return bool(self.flags & 0x2)
