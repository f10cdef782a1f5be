"""Read a whole regf file into a :class:`~cimsnap.hive.tree.Hive` (§4.1, §4.3).


:func:`read_hive` materialises every key and value; :func:`open_hive` does the same for a
file path. For browsing without materialising, use :class:`cimsnap.hive.view.HiveReader`.

Strictness (all raise :class:`HiveFormatError` with the cell offset, or the dirty/checksum
subclasses from the base block):

* every referenced cell must be allocated, aligned and inside the hive bins, and may be
  referenced only once (sk cells excepted), and the referenced cells may not add up to
  more than the hive-bins size: this stops cycles, self-referencing lists and overlapping
  forged cells, and bounds the work and memory by the file size;
* a key's subkey count must equal the entries of its lists; ri lists may hold only leaves;
* two subkeys of one key with the same folded name are an error (Windows cannot create
  them; which one it would use is unknown, so we refuse);
* keys nested deeper than :data:`~cimsnap.hive.cells.MAX_KEY_DEPTH` are an error;
* an empty key name, or one containing a backslash, is an error (Windows cannot create
  one, and the writer refuses it with HiveModelError, so a damaged hive fails here as a
  format error instead).

Layer marks (nk byte 13, vk tombstone flag) are decoded only when the base block has flag
0x2 (§4.3); in other hives they are ignored and read as zero.

An empty class name (length 0) reads as ``None``. Names are decoded from Latin-1 (COMP_NAME)
or UTF-16LE with unpaired surrogates preserved.
"""

from __future__ import annotations

import os
from typing import Final

from cimsnap.hive import cells as C
from cimsnap.hive.errors import HiveFormatError
from cimsnap.hive.gcpause import gc_paused
from cimsnap.hive.image import HiveImage
from cimsnap.hive.tree import Hive, Key, LayerSemantics, Value, name_key

__all__ = ["open_hive", "read_hive"]

_B: Final = C.BASE_BLOCK_SIZE
_DERIVED_FLAGS: Final = int(C.KeyFlags.HIVE_ENTRY | C.KeyFlags.COMP_NAME)
_SEMANTICS: Final = tuple(LayerSemantics(i) for i in range(4))


def read_hive(data: bytes | memoryview) -> Hive:
    """Parse a complete regf image into a :class:`Hive`.

    ``data`` is only read during the call. Raises :class:`HiveFormatError` (see the module
    docstring); nothing is returned on failure.

    The cyclic garbage collector is paused during the call (see
    :mod:`cimsnap.hive.gcpause`); the tree built holds no reference cycles.
    """
    with gc_paused():
        return _read(data)


def _read(data: bytes | memoryview) -> Hive:
    image = HiveImage(data, track_cells=True)
    layered = image.layered
    security: dict[int, bytes] = {}
    root_off = image.base.root_cell_offset
    root, count, list_off = _key(image, root_off, security, layered)
    # Keys whose children are still to be read: (nk offset, Key, subkey count, list, depth).
    stack = [(root_off, root, count, list_off, 0)]
    while stack:
        off, key, count, list_off, depth = stack.pop()
        if depth >= C.MAX_KEY_DEPTH:
            raise HiveFormatError("nk cell", off, f"keys nested deeper than {C.MAX_KEY_DEPTH}")
        subkeys = key.subkeys
        for child_off in image.subkey_offsets(off, count, list_off):
            child, child_count, child_list = _key(image, child_off, security, layered)
            folded = name_key(child.name)
            if folded in subkeys:
                raise HiveFormatError("nk cell", child_off, f"duplicate subkey {child.name!r}")
            subkeys[folded] = child
            if child_count:
                stack.append((child_off, child, child_count, child_list, depth + 1))
    base = image.base
    return Hive(
        root=root,
        minor_version=base.minor_version,
        flags=base.flags,
        file_name=base.file_name,
        last_written=base.last_written,
    )


def _key(
    image: HiveImage, off: int, security: dict[int, bytes], layered: bool
) -> tuple[Key, int, int]:
    """Decode the nk at ``off`` with its values; return (key, subkey count, list offset)."""
    rec = image.node(off)
    if not rec.name:
        raise HiveFormatError("nk cell", off, "empty key name")
    if "\\" in rec.name:
        raise HiveFormatError("nk cell", off, f"backslash in key name {rec.name!r}")
    sd = security.get(rec.security)
    if sd is None:
        sd = security[rec.security] = image.security(rec.security)
    values = []
    if rec.value_count:
        for vk in image.offsets(rec.value_list, rec.value_count, "value list"):
            v = image.value(vk)
            values.append(Value(name=v.name, type=v.type, data=v.data, tombstone=v.tombstone))
    layer = rec.layer if layered else 0
    key = Key(
        name=rec.name,
        last_written=rec.last_written,
        flags=rec.flags & ~_DERIVED_FLAGS,
        class_name=image.class_name(rec, off),
        security=sd,
        semantics=_SEMANTICS[layer & C.LAYER_SEMANTICS_MASK],
        inherit_class=bool(layer & C.INHERIT_CLASS),
        access_bits=rec.access_bits,
        values=values,
    )
    return key, rec.subkey_count, rec.subkey_list


def open_hive(path: str | os.PathLike[str]) -> Hive:
    """Read the hive file at ``path`` (see :func:`read_hive`; OSError if unreadable)."""
    with open(path, "rb") as f:
        return read_hive(f.read())
