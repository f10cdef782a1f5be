"""Pins each row of the decision table in ``cimsnap.hive.rules``, and the rules by example.

Each test runs against both engines (the ``merge`` fixture): the whole-tree merge on the
trees, and the incremental merge through files (``merge_files``; the trees are written,
merged, and read back).
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from cimsnap.errdefs import InvalidArgument
from cimsnap.hive.merge import OUTPUT_MINOR_VERSION, HiveMergeError, merge_files
from cimsnap.hive.merge import merge as whole_tree_merge
from cimsnap.hive.reader import read_hive
from cimsnap.hive.tree import (
    REG_DWORD,
    REG_NONE,
    REG_SZ,
    Hive,
    Key,
    LayerSemantics,
    Value,
)
from cimsnap.hive.writer import write_hive

SEM = LayerSemantics
Engine = Callable[[Hive, Hive], Hive]


def incremental_merge(base: Hive, delta: Hive) -> Hive:
    """The incremental merge of two trees, through files."""
    with tempfile.TemporaryDirectory() as tmp:
        base_path, delta_path, out = Path(tmp, "b"), Path(tmp, "d"), Path(tmp, "out")
        base_path.write_bytes(write_hive(base))
        delta_path.write_bytes(write_hive(delta))
        merge_files(base_path, delta_path, out)
        return read_hive(out.read_bytes())


@pytest.fixture(params=["whole-tree", "incremental"])
def merge(request: pytest.FixtureRequest) -> Engine:
    return whole_tree_merge if request.param == "whole-tree" else incremental_merge


def sz(name: str, text: str) -> Value:
    return Value(name, REG_SZ, (text + "\0").encode("utf-16-le"))


def tomb(name: str) -> Value:
    return Value(name, REG_NONE, b"", tombstone=True)


def base_hive() -> Hive:
    root = Key("ROOT", flags=0x8, access_bits=2, class_name="rootcls", security=b"SD-root")
    sw = root.add_subkey(Key("Software", last_written=100, class_name="swcls", security=b"SD-b"))
    sw.values = [sz("A", "a"), sz("B", "b"), sz("C", "c")]
    sw.add_subkey(Key("Child", class_name="childcls")).values = [sz("x", "1")]
    return Hive(root=root, minor_version=3, flags=0, file_name="base-name", last_written=50)


def delta_with(node: Key, *, root_sem: SEM = SEM.MERGE) -> Hive:
    root = Key("root", semantics=root_sem, inherit_class=True)
    root.add_subkey(node)
    return Hive(root=root, minor_version=6, flags=0x2, file_name="delta-name", last_written=70)


def test_timestamp_is_the_max_of_both_sides(merge: Engine) -> None:
    later = merge(base_hive(), delta_with(Key("SOFTWARE", last_written=200)))
    earlier = merge(base_hive(), delta_with(Key("SOFTWARE", last_written=10)))
    assert later.root.subkey("software").last_written == 200  # type: ignore[union-attr]
    assert earlier.root.subkey("software").last_written == 100  # type: ignore[union-attr]


def test_security_is_the_deltas_when_it_has_one(merge: Engine) -> None:
    mine = merge(base_hive(), delta_with(Key("software", security=b"SD-d")))
    assert mine.root.subkey("Software").security == b"SD-d"  # type: ignore[union-attr]


def test_security_is_the_bases_when_the_delta_key_has_none() -> None:
    """Only trees can say "no SD": a key read from a file always has one (§4.5), so this
    row is pinned on the whole-tree merge alone."""
    none = whole_tree_merge(base_hive(), delta_with(Key("software")))
    assert none.root.subkey("Software").security == b"SD-b"  # type: ignore[union-attr]


def test_flags_and_access_bits_come_from_the_delta_except_at_the_root(merge: Engine) -> None:
    delta = delta_with(Key("software", flags=0x10, access_bits=1))
    delta.root.flags, delta.root.access_bits = 0, 0
    merged = merge(base_hive(), delta)
    sw = merged.root.subkey("software")
    assert sw is not None
    assert (sw.flags, sw.access_bits) == (0x10, 1)
    assert (merged.root.flags, merged.root.access_bits) == (0x8, 2)


def test_name_casing_is_the_bases_and_the_root_keeps_its_name(merge: Engine) -> None:
    merged = merge(base_hive(), delta_with(Key("SOFTWARE", semantics=SEM.SUPERSEDE_TREE)))
    assert merged.root.name == "ROOT"
    assert [k.name for k in merged.root.subkeys.values()] == ["Software"]
    new = merge(base_hive(), delta_with(Key("NewKey")))
    assert new.root.subkey("newkey").name == "NewKey"  # type: ignore[union-attr]


def test_replaced_values_keep_place_and_casing_new_ones_append_in_delta_order(
    merge: Engine,
) -> None:
    node = Key("software", inherit_class=True)
    node.values = [sz("z2", "new2"), Value("b", REG_DWORD, b"\x07\x00\x00\x00"), sz("z1", "n1")]
    sw = merge(base_hive(), delta_with(node)).root.subkey("software")
    assert sw is not None
    assert [(v.name, v.type) for v in sw.values] == [
        ("A", REG_SZ),
        ("B", REG_DWORD),
        ("C", REG_SZ),
        ("z2", REG_SZ),
        ("z1", REG_SZ),
    ]
    assert sw.values[1].data == b"\x07\x00\x00\x00"


def test_duplicate_delta_values_only_the_first_counts(merge: Engine) -> None:
    node = Key("software", inherit_class=True)
    node.values = [tomb("a"), sz("A", "ignored"), sz("n", "first"), sz("N", "second")]
    node.values += [sz("q", "x"), tomb("Q")]
    sw = merge(base_hive(), delta_with(node)).root.subkey("software")
    assert sw is not None
    assert [(v.name, v.data) for v in sw.values] == [
        ("B", sz("", "b").data),
        ("C", sz("", "c").data),
        ("n", sz("", "first").data),
        ("q", sz("", "x").data),
    ]


def test_duplicate_base_values_collapse_to_the_first_when_the_delta_changes_the_key(
    merge: Engine,
) -> None:
    base = base_hive()
    sw = base.root.subkey("software")
    assert sw is not None
    sw.values = [sz("d", "one"), sz("D", "two")]
    node = Key("software", inherit_class=True)
    node.values = [sz("other", "o")]
    out = merge(base, delta_with(node)).root.subkey("software")
    assert out is not None
    assert [(v.name, v.data) for v in out.values] == [
        ("d", sz("", "one").data),
        ("other", sz("", "o").data),
    ]
    untouched = merge(base, delta_with(Key("software", inherit_class=True)))
    assert untouched.root.subkey("software").values == sw.values  # type: ignore[union-attr]


def test_inherit_class_under_supersede_tree_gives_no_class(merge: Engine) -> None:
    tree = Key("software", semantics=SEM.SUPERSEDE_TREE, inherit_class=True)
    tree.add_subkey(Key("child", semantics=SEM.SUPERSEDE_TREE, inherit_class=True))
    sw = merge(base_hive(), delta_with(tree)).root.subkey("software")
    assert sw is not None
    assert sw.class_name == "swcls"  # rule 4: the node itself inherits
    assert sw.subkey("child").class_name is None  # type: ignore[union-attr]


def test_new_key_with_inherit_class_has_no_class(merge: Engine) -> None:
    new = merge(base_hive(), delta_with(Key("New", inherit_class=True, class_name="ignored")))
    assert new.root.subkey("new").class_name is None  # type: ignore[union-attr]


def test_inherit_class_takes_the_bases_class_and_without_it_the_deltas(merge: Engine) -> None:
    inherit = merge(base_hive(), delta_with(Key("software", inherit_class=True)))
    own = merge(base_hive(), delta_with(Key("software", class_name="deltacls")))
    empty = merge(base_hive(), delta_with(Key("software")))
    assert inherit.root.subkey("software").class_name == "swcls"  # type: ignore[union-attr]
    assert own.root.subkey("software").class_name == "deltacls"  # type: ignore[union-attr]
    assert empty.root.subkey("software").class_name is None  # type: ignore[union-attr]


def test_output_hive_fields(merge: Engine) -> None:
    merged = merge(base_hive(), delta_with(Key("software")))
    assert merged.minor_version == OUTPUT_MINOR_VERSION == 6
    assert merged.flags == 0
    assert merged.file_name == "base-name"
    assert merged.last_written == 70


def test_a_tombstone_root_is_refused(merge: Engine) -> None:
    delta = Hive(root=Key("ROOT", semantics=SEM.TOMBSTONE), flags=0x2)
    with pytest.raises(HiveMergeError) as exc:
        merge(base_hive(), delta)
    assert isinstance(exc.value, InvalidArgument)
    assert exc.value.path == ""


@pytest.mark.parametrize(
    "mark",
    [
        lambda k: setattr(k, "semantics", SEM.SUPERSEDE_LOCAL),
        lambda k: setattr(k, "inherit_class", True),
        lambda k: k.values.append(tomb("t")),
    ],
)
def test_a_base_with_layer_marks_is_refused_and_the_error_names_the_key(mark: object) -> None:
    base = base_hive()
    child = base.root.subkey("software").subkey("child")  # type: ignore[union-attr]
    mark(child)  # type: ignore[operator]
    with pytest.raises(HiveMergeError) as exc:
        whole_tree_merge(base, delta_with(Key("software")))
    assert exc.value.path == "Software\\Child"


def test_a_delta_without_the_layered_flag_is_a_plain_overlay(merge: Engine) -> None:
    delta = delta_with(Key("software"))
    delta.flags = 0
    delta.root.inherit_class = False  # a normal hive has no marks (the writer refuses them)
    delta.root.subkey("software").values = [sz("A", "over")]  # type: ignore[union-attr]
    sw = merge(base_hive(), delta).root.subkey("software")
    assert sw is not None
    assert [v.name for v in sw.values] == ["A", "B", "C"]
    assert sw.values[0].data == sz("", "over").data


def test_tombstones_without_counterparts_have_no_effect(merge: Engine) -> None:
    node = Key("software", inherit_class=True)
    node.values = [tomb("nope")]
    node.add_subkey(Key("ghost", semantics=SEM.TOMBSTONE))
    root = delta_with(node).root
    root.add_subkey(Key("phantom", semantics=SEM.TOMBSTONE))
    merged = merge(base_hive(), Hive(root=root, flags=0x2))
    assert set(merged.root.subkeys) == {"SOFTWARE"}
    sw = merged.root.subkey("software")
    assert sw is not None
    assert [v.name for v in sw.values] == ["A", "B", "C"]
    assert set(sw.subkeys) == {"CHILD"}


def test_supersede_tree_children_with_other_semantics_act_as_new_keys(merge: Engine) -> None:
    tree = Key("software", semantics=SEM.SUPERSEDE_TREE)
    odd = tree.add_subkey(Key("CHILD", semantics=SEM.MERGE, class_name="own"))
    odd.values = [sz("y", "2"), tomb("x")]
    odd.add_subkey(Key("gone", semantics=SEM.TOMBSTONE))
    out = merge(base_hive(), delta_with(tree)).root.subkey("software")
    assert out is not None
    child = out.subkey("child")
    assert child is not None
    assert child.name == "CHILD"  # the base's "Child" is hidden, not merged
    assert [v.name for v in child.values] == ["y"]
    assert child.subkeys == {}
    assert out.values == []


def test_a_delta_root_with_supersede_tree_replaces_everything_but_root_identity(
    merge: Engine,
) -> None:
    root = Key("other", semantics=SEM.SUPERSEDE_TREE, inherit_class=True)
    root.add_subkey(Key("Only", semantics=SEM.SUPERSEDE_TREE))
    merged = merge(base_hive(), Hive(root=root, flags=0x2))
    assert merged.root.name == "ROOT"
    assert merged.root.class_name == "rootcls"
    assert set(merged.root.subkeys) == {"ONLY"}


@pytest.mark.parametrize(
    ("base_name", "delta_name", "same"),
    [
        ("straße", "STRAßE", True),  # ß has no single-unit uppercase: it stays ß
        ("straße", "STRASSE", False),  # str.upper() would say SS
        ("µs", "µS", True),
        ("µ", "Μ", False),  # MICRO SIGN is not GREEK CAPITAL MU in Windows' table
        ("ı", "I", False),  # dotless i does not upcase to I
        ("i", "I", True),
        ("σ", "Σ", True),
        ("ς", "Σ", False),  # final sigma stays itself
        ("ά", "Ά", True),
        ("ｃｊｋ中文", "ＣＪＫ中文", True),  # fullwidth letters fold; CJK is caseless
        ("ÿ", "Ÿ", True),
        ("ǅ", "Ǆ", False),  # titlecase digraph is left alone
        ("\U00010428", "\U00010400", False),  # outside the BMP: surrogates are not upcased
    ],
)
def test_names_match_by_windows_upcase(
    base_name: str, delta_name: str, same: bool, merge: Engine
) -> None:
    base = Hive(root=Key("ROOT"))
    base.root.add_subkey(Key(base_name)).values = [sz("v", "base")]
    base.root.subkey(base_name).add_subkey(Key("kid"))  # type: ignore[union-attr]
    delta = Hive(root=Key("ROOT", inherit_class=True), flags=0x2)
    node = delta.root.add_subkey(Key(delta_name, semantics=SEM.SUPERSEDE_LOCAL))
    node.values = [sz(delta_name, "delta")]
    merged = merge(base, delta)
    names = sorted(k.name for k in merged.root.subkeys.values())
    if same:
        assert names == [base_name]
        out = merged.root.subkeys[next(iter(merged.root.subkeys))]
        assert [v.name for v in out.values] == [delta_name]
        assert list(out.subkeys) == ["KID"]
    else:
        assert names == sorted([base_name, delta_name])


def test_deep_trees_merge_without_recursion() -> None:
    depth = max(sys.getrecursionlimit() * 3, 5000)
    base_root = Key("ROOT")
    node = base_root
    for i in range(depth):
        node = node.add_subkey(Key(f"k{i}"))
    node.values = [sz("leaf", "old")]
    delta_root = Key("ROOT", inherit_class=True)
    node = delta_root
    for i in range(depth):
        node = node.add_subkey(Key(f"K{i}", inherit_class=True))
    node.values = [sz("LEAF", "new")]
    merged = whole_tree_merge(Hive(root=base_root), Hive(root=delta_root, flags=0x2))
    node = merged.root
    for i in range(depth):
        node = node.subkeys[f"K{i}"]
        assert node.name == f"k{i}"
    assert [(v.name, v.data) for v in node.values] == [("leaf", sz("", "new").data)]
