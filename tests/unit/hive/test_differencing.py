"""Differencing hives (§4.3): the writer emits layer marks and tombstones, the reader keeps
them, and normal hives refuse them."""

from __future__ import annotations

import pytest

from cimsnap.hive import (
    Hive,
    HiveModelError,
    HiveReader,
    Key,
    LayerSemantics,
    Value,
    check_hive,
    read_hive,
    write_hive,
)
from cimsnap.hive import cells as C
from cimsnap.hive.tree import REG_NONE, REG_SZ


def _delta() -> Hive:
    root = Key("ROOT")
    svc = root.add_subkey(Key("Services", inherit_class=True))
    svc.add_subkey(Key("gone", semantics=LayerSemantics.TOMBSTONE))
    tree = svc.add_subkey(
        Key("xboxgipsvc", semantics=LayerSemantics.SUPERSEDE_TREE, inherit_class=True)
    )
    tree.add_subkey(Key("a_subkey", semantics=LayerSemantics.SUPERSEDE_TREE))
    local = svc.add_subkey(Key("local", semantics=LayerSemantics.SUPERSEDE_LOCAL, class_name="c"))
    local.values += [
        Value("displayname", REG_NONE, b"", tombstone=True),
        Value("x", REG_SZ, b"x\x00\x00\x00"),
    ]
    return Hive(root, minor_version=6, flags=int(C.BaseBlockFlags.LAYERED_KEYS))


def test_delta_round_trip() -> None:
    hive = _delta()
    data = write_hive(hive)
    assert check_hive(data) == []
    back = read_hive(data)
    assert back.is_differencing and back.minor_version == 6
    svc = back.root.subkey("services")
    assert svc is not None and svc.inherit_class and svc.semantics is LayerSemantics.MERGE
    assert svc.subkey("GONE").semantics is LayerSemantics.TOMBSTONE  # type: ignore[union-attr]
    xbox = svc.subkey("XboxGipSvc")
    assert (
        xbox is not None and xbox.semantics is LayerSemantics.SUPERSEDE_TREE and xbox.inherit_class
    )
    local = svc.subkey("local")
    assert local is not None and [(v.name, v.tombstone) for v in local.values] == [
        ("displayname", True),
        ("x", False),
    ]
    assert write_hive(back) == data


def test_delta_raw_marks() -> None:
    data = write_hive(_delta())
    reader = HiveReader(data)
    xbox = reader.open_key(r"Services\xboxgipsvc")
    assert reader.image.node(xbox.offset).layer == 0x83  # InheritClass | SupersedeTree
    tomb = reader.open_key(r"Services\local").value("displayname")
    assert tomb is not None and tomb.tombstone and tomb.type == REG_NONE and tomb.raw == b""
    fields = C.VK_HEADER_FAST.unpack_named(data, C.BASE_BLOCK_SIZE + tomb.offset + 4)
    assert (fields["flags"] & 2, fields["data_size"], fields["data_offset"]) == (2, 0, 0xFFFFFFFF)
    assert C.BASE_BLOCK_FAST.unpack_named(data)["flags"] == 2


def test_layer_marks_ignored_in_normal_hive() -> None:
    data = bytearray(write_hive(_delta()))
    data[144] = 0  # clear "layered keys supported"
    from tests.unit.hive.forge import reseal

    hive = read_hive(reseal(bytes(data)))
    stack = [hive.root]
    while stack:
        key = stack.pop()
        assert key.semantics is LayerSemantics.MERGE and not key.inherit_class
        assert not any(v.tombstone for v in key.values)
        stack.extend(key.subkeys.values())


def test_normal_hive_refuses_layer_marks() -> None:
    root = Key("ROOT")
    root.add_subkey(Key("t", semantics=LayerSemantics.TOMBSTONE))
    with pytest.raises(HiveModelError):
        write_hive(Hive(root))
    root = Key("ROOT")
    root.values.append(Value("v", REG_NONE, b"", tombstone=True))
    with pytest.raises(HiveModelError):
        write_hive(Hive(root))


@pytest.mark.parametrize("name", ["", "a\\b", "x" * 256])
def test_bad_key_names(name: str) -> None:
    root = Key("ROOT")
    root.subkeys["X"] = Key(name)
    with pytest.raises(HiveModelError):
        write_hive(Hive(root))


def test_case_duplicates_rejected() -> None:
    root = Key("ROOT")
    root.subkeys["1"] = Key("Abc")
    root.subkeys["2"] = Key("aBC")
    with pytest.raises(HiveModelError):
        write_hive(Hive(root))


def _chain(depth: int) -> Hive:
    root = key = Key("ROOT")
    for i in range(depth):
        key = key.add_subkey(Key(f"d{i}"))
    return Hive(root)


def test_depth_limit() -> None:
    deepest = _chain(C.MAX_KEY_DEPTH)
    data = write_hive(deepest)
    back = read_hive(data)
    key, depth = back.root, 0
    while key.subkeys:
        (key,) = key.subkeys.values()
        depth += 1
    assert depth == C.MAX_KEY_DEPTH
    assert sum(1 for _ in HiveReader(data).walk()) == C.MAX_KEY_DEPTH + 1
    with pytest.raises(HiveModelError):
        write_hive(_chain(C.MAX_KEY_DEPTH + 1))


def test_differencing_hives_are_written_as_v1_6() -> None:
    hive = _delta()
    hive.minor_version = 5
    assert read_hive(write_hive(hive)).minor_version == 6
    assert read_hive(write_hive(Hive(Key("ROOT"), minor_version=3))).minor_version == 5
