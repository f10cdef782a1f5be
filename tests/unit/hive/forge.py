"""Build a sample hive and patch fields of its cells, for the bad-input tests.

Field positions come from the construct declarations in ``cimsnap.hive.cells`` (no layout
is restated here); cell offsets are found with the lazy reader.
"""

from __future__ import annotations

import struct
from typing import Any

from cimsnap.hive import Hive, HiveReader, Key, LayerSemantics, Value, write_hive
from cimsnap.hive import cells as C
from cimsnap.hive.tree import REG_BINARY, REG_DWORD, REG_NONE, REG_SZ


def sample_hive() -> bytes:
    """Root -> A (values incl. a db value, children B, C; B has D) and Many (600 children)."""
    root = Key("ROOT")
    a = root.add_subkey(Key("A", class_name="klass"))
    a.values += [
        Value("s", REG_SZ, "hello\0".encode("utf-16-le")),
        Value("d", REG_DWORD, b"\x01\x00\x00\x00"),
        Value("big", REG_BINARY, bytes(40000)),
    ]
    b = a.add_subkey(Key("B"))
    b.add_subkey(Key("D"))
    a.add_subkey(Key("C"))
    many = root.add_subkey(Key("Many"))
    for i in range(600):
        many.add_subkey(Key(f"k{i:04d}"))
    return write_hive(Hive(root))


def delta_hive() -> bytes:
    """A small differencing hive: every layer semantics, InheritClass, tombstone values."""
    root = Key("ROOT")
    svc = root.add_subkey(Key("Services", inherit_class=True))
    svc.add_subkey(Key("gone", semantics=LayerSemantics.TOMBSTONE))
    tree = svc.add_subkey(
        Key("tree", semantics=LayerSemantics.SUPERSEDE_TREE, inherit_class=True, class_name="k")
    )
    tree.add_subkey(Key("leaf", semantics=LayerSemantics.SUPERSEDE_TREE))
    local = svc.add_subkey(Key("local", semantics=LayerSemantics.SUPERSEDE_LOCAL))
    local.values += [
        Value("dead", REG_NONE, b"", tombstone=True),
        Value("live", REG_SZ, "x\0".encode("utf-16-le")),
        Value("big", REG_BINARY, bytes(20000)),
    ]
    return write_hive(Hive(root, minor_version=6, flags=int(C.BaseBlockFlags.LAYERED_KEYS)))


def field_pos(decl: Any, name: str) -> int:
    """Offset of field ``name`` inside a fixed-size construct Struct."""
    off = 0
    for sub in decl.subcons:
        if sub.name == name:
            return off
        off += sub.sizeof()
    raise KeyError(name)


def patch_u32(data: bytes, cell: int, decl: Any, name: str, value: int) -> bytes:
    """Return ``data`` with field ``name`` (u32) of the cell at ``cell`` set to ``value``."""
    buf = bytearray(data)
    struct.pack_into("<I", buf, C.BASE_BLOCK_SIZE + cell + 4 + field_pos(decl, name), value)
    return bytes(buf)


def patch_u16(data: bytes, cell: int, decl: Any, name: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into("<H", buf, C.BASE_BLOCK_SIZE + cell + 4 + field_pos(decl, name), value)
    return bytes(buf)


def reseal(data: bytes) -> bytes:
    """Recompute the base-block checksum after a base-block patch."""
    buf = bytearray(data)
    struct.pack_into("<I", buf, C.CHECKSUM_OFFSET, C.base_block_checksum(buf))
    return bytes(buf)


def offsets(data: bytes) -> dict[str, int]:
    """Cell offsets of interesting cells in :func:`sample_hive`."""
    r = HiveReader(data)
    image = r.image
    a = r.open_key("A")
    many = r.open_key("Many")
    big = a.value("big")
    assert big is not None
    return {
        "root": r.root.offset,
        "A": a.offset,
        "B": r.open_key(r"A\B").offset,
        "D": r.open_key(r"A\B\D").offset,
        "A.list": image.node(a.offset).subkey_list,
        "A.values": image.node(a.offset).value_list,
        "Many": many.offset,
        "Many.ri": image.node(many.offset).subkey_list,
        "big.vk": big.offset,
        "big.db": image.node(a.offset).value_list and _data_offset(data, big.offset),
    }


def _data_offset(data: bytes, vk: int) -> int:
    pos = C.BASE_BLOCK_SIZE + vk + 4 + field_pos(C.VK_HEADER, "data_offset")
    return int.from_bytes(data[pos : pos + 4], "little")
