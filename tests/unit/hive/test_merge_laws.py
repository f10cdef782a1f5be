"""Property-based laws of ``merge`` on random trees.

The laws, for a normal hive B and differencing hives D, D1, D2 (random, with names that
differ only in Windows case, or that ``str.upper()`` would confuse but Windows does not):

* **layered view**: ``merge(B, D)`` shows, path by path, what the stack [B, D] shows when
  each path is resolved on its own through the layers (``layer_model.layered_view``, the
  kernel's reading of layered keys, written without trees, sharing or stacks);
* **sequence**: ``merge(merge(B, D1), D2)`` shows what the three-layer stack [B, D1, D2]
  shows; i.e. merging deltas one after another is the same as layering them;
* **idempotence**: ``merge(merge(B, D), D) == merge(B, D)`` exactly (value order included);
* **identity**: an empty delta (root only, sem 0) leaves B unchanged (see the test for the
  one rule-6 exception: the root's class without InheritClass);
* **normal output**, **inputs untouched**, **untouched subtrees shared by reference**;
* **tombstone**, **SupersedeTree**, **SupersedeLocal** at a random existing path do what
  §4.4 rules 2, 4 and 5 say, checked directly rather than through the oracle.

"What a path shows" compares keys, names, classes, values by folded name, timestamps,
SDs and flags; value *order* is pinned by the idempotence law and the decision tests.
"""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cimsnap.hive.merge import merge
from cimsnap.hive.tree import REG_SZ, Hive, Key, LayerSemantics, Value, name_key
from tests.unit.hive.layer_model import flatten, hive_view, layer_marks, layered_view
from tests.unit.hive.layer_strategies import deltas_over, normal_hives

LAWS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def base_and_delta(draw: st.DrawFn) -> tuple[Hive, Hive]:
    base = draw(normal_hives())
    return base, draw(deltas_over(base))


@LAWS
@given(base_and_delta())
def test_one_delta_matches_the_layered_view(pair: tuple[Hive, Hive]) -> None:
    base, delta = pair
    assert hive_view(merge(base, delta)) == layered_view([base.root, delta.root])


@LAWS
@given(st.data())
def test_deltas_in_sequence_match_the_three_layer_view(data: st.DataObject) -> None:
    """merge(merge(B, D1), D2) is what the stack [B, D1, D2] shows, path by path."""
    base = data.draw(normal_hives())
    d1 = data.draw(deltas_over(base))
    d2 = data.draw(deltas_over(base))
    merged = merge(merge(base, d1), d2)
    assert hive_view(merged) == layered_view([base.root, d1.root, d2.root])


@LAWS
@given(base_and_delta())
def test_merging_the_same_delta_twice_changes_nothing(pair: tuple[Hive, Hive]) -> None:
    base, delta = pair
    once = merge(base, delta)
    assert merge(once, delta) == once


@LAWS
@given(base_and_delta())
def test_output_is_a_normal_hive(pair: tuple[Hive, Hive]) -> None:
    base, delta = pair
    merged = merge(base, delta)
    assert layer_marks(merged.root) == []
    assert merged.flags == 0
    assert not merged.is_differencing


@LAWS
@given(base_and_delta())
def test_inputs_are_not_modified(pair: tuple[Hive, Hive]) -> None:
    base, delta = pair
    before = copy.deepcopy((base, delta))
    merged = merge(base, delta)
    merge(merged, delta)
    assert (base, delta) == before


@LAWS
@given(normal_hives(), st.booleans())
def test_an_empty_delta_returns_the_base_unchanged(base: Hive, inherit: bool) -> None:
    """Law: a root-only sem-0 delta (FILETIME 0, no SD) leaves every key as it was.

    With InheritClass on the delta root (how real deltas mark pass-through keys) the root
    is equal too; without it the root's class becomes the delta root's (none), rule 6.
    """
    empty = Hive(root=Key("ROOT", inherit_class=inherit), flags=0x2)
    merged = merge(base, empty)
    for name, child in base.root.subkeys.items():
        assert merged.root.subkeys[name] is child
    assert merged.root.subkeys.keys() == base.root.subkeys.keys()
    expected = copy.copy(base.root)
    if not inherit:
        expected.class_name = None
    assert merged.root == expected


@LAWS
@given(base_and_delta())
def test_untouched_base_subtrees_are_shared(pair: tuple[Hive, Hive]) -> None:
    base, delta = pair
    merged = merge(base, delta)
    touched = set(flatten(delta.root))
    out = flatten(merged.root)
    for path, key in flatten(base.root).items():
        if path not in touched and path[:-1] in touched and path in out:
            assert out[path] is key


@LAWS
@given(st.data())
def test_a_tombstone_deletes_the_key_and_its_subtree(data: st.DataObject) -> None:
    base = data.draw(normal_hives())
    paths = sorted(p for p in flatten(base.root) if p)
    if not paths:
        return
    target = data.draw(st.sampled_from(paths))
    delta = _delta_along(
        base, target, Key(_spell(base, target), semantics=LayerSemantics.TOMBSTONE)
    )
    merged = flatten(merge(base, delta).root)
    assert not [p for p in merged if p[: len(target)] == target]
    kept = {p for p in flatten(base.root) if p[: len(target)] != target}
    assert set(merged) == kept


@LAWS
@given(st.data())
def test_supersede_tree_replaces_the_whole_subtree(data: st.DataObject) -> None:
    base = data.draw(normal_hives())
    paths = sorted(p for p in flatten(base.root) if p)
    if not paths:
        return
    target = data.draw(st.sampled_from(paths))
    new = Key(_spell(base, target), semantics=LayerSemantics.SUPERSEDE_TREE, class_name="N")
    new.values = [Value("fresh", REG_SZ, b"x\x00")]
    new.add_subkey(Key("only", semantics=LayerSemantics.SUPERSEDE_TREE))
    merged = flatten(merge(base, _delta_along(base, target, new)).root)
    below = {p[len(target) :] for p in merged if p[: len(target)] == target}
    assert below == {(), ("ONLY",)}
    assert [v.name for v in merged[target].values] == ["fresh"]
    assert merged[target].class_name == "N"


@LAWS
@given(st.data())
def test_supersede_local_replaces_values_and_class_but_children_merge(
    data: st.DataObject,
) -> None:
    base = data.draw(normal_hives())
    paths = sorted(flatten(base.root))
    target = data.draw(st.sampled_from(paths))
    new = Key(_spell(base, target), semantics=LayerSemantics.SUPERSEDE_LOCAL, class_name="L")
    new.values = [Value("mine", REG_SZ, b"m\x00")]
    new.add_subkey(Key("added"))
    merged = merge(base, _delta_along(base, target, new))
    flat_out, flat_base = flatten(merged.root), flatten(base.root)
    assert [v.name for v in flat_out[target].values] == ["mine"]
    assert flat_out[target].class_name == "L"
    old_children = set(flat_base[target].subkeys)
    assert set(flat_out[target].subkeys) == old_children | {"ADDED"}
    for slot in old_children - {"ADDED"}:
        assert flat_out[target].subkeys[slot] is flat_base[target].subkeys[slot]


def _spell(base: Hive, path: tuple[str, ...]) -> str:
    """The stored name of the base key at ``path``, re-cased when that is possible."""
    return _recase(flatten(base.root)[path].name if path else "ROOT")


def _recase(name: str) -> str:
    """``name`` with its case swapped where Windows still sees the same name.

    ``str.swapcase`` alone is wrong here: ``"ǅ".swapcase()`` is ``"ǆ"``, another name.
    """
    return "".join(c.swapcase() if name_key(c.swapcase()) == name_key(c) else c for c in name)


def _delta_along(base: Hive, path: tuple[str, ...], leaf: Key) -> Hive:
    """A delta with pass-through keys (sem 0 + InheritClass, §4.3) down to ``leaf``."""
    flat = flatten(base.root)
    if not path:
        return Hive(root=leaf, flags=0x2)
    root = Key("ROOT", inherit_class=True)
    node = root
    for depth in range(1, len(path)):
        node = node.add_subkey(Key(_recase(flat[path[:depth]].name), inherit_class=True))
    node.add_subkey(leaf)
    return Hive(root=root, flags=0x2)
