"""Hypothesis strategies for registry trees: normal base trees and deltas laid over them.

Names come from a small pool of case-sensitive and non-ASCII spellings (``ß`` vs ``ss``,
``µ`` vs ``Μ``, ``ı`` vs ``i``, ``σ`` vs ``ς``, CJK, a titlecase digraph), and each use
picks, code unit by code unit, the spelling or its Windows uppercase. So deltas often hit
base paths under another casing, and names that Python's ``str.upper()`` would confuse
but Windows keeps apart appear side by side.
"""

from __future__ import annotations

from hypothesis import strategies as st

from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_NONE,
    REG_SZ,
    Hive,
    Key,
    LayerSemantics,
    Value,
    name_key,
)

KEY_NAMES = ("a", "Ab", "ß", "ss", "µ", "Μ", "ı", "i", "σ", "ς", "中文", "ǅ", "é")
VALUE_NAMES = ("", "v", "ß", "SS", "σ", "ς", "x")
CLASSES = (None, "", "cls", "Klasse")
SECURITY = (b"", b"\x01\x00\x04\x80sd-one", b"\x01\x00\x04\x80sd-two")
FLAGS = (0, 0x8, 0x10)


@st.composite
def spelling(draw: st.DrawFn, pool: tuple[str, ...]) -> str:
    """A name from ``pool``, each code unit as written or upcased (same identity)."""
    base = draw(st.sampled_from(pool))
    return "".join(c if draw(st.booleans()) else name_key(c) for c in base)


def _variant(draw: st.DrawFn, name: str) -> str:
    return "".join(c if draw(st.booleans()) else name_key(c) for c in name)


@st.composite
def values(draw: st.DrawFn, *, tombstones: bool) -> list[Value]:
    """A short value list; with ``tombstones``, some entries are tombstone values."""
    out: list[Value] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(spelling(VALUE_NAMES))
        if tombstones and draw(st.integers(0, 3)) == 0:
            out.append(Value(name, REG_NONE, b"", tombstone=True))
        else:
            vtype = draw(st.sampled_from((REG_SZ, REG_DWORD, REG_BINARY)))
            out.append(Value(name, vtype, draw(st.binary(max_size=6))))
    return out


def _common(draw: st.DrawFn) -> dict[str, object]:
    return {
        "last_written": draw(st.integers(0, 4)),
        "flags": draw(st.sampled_from(FLAGS)),
        "security": draw(st.sampled_from(SECURITY)),
        "access_bits": draw(st.integers(0, 3)),
    }


@st.composite
def normal_key(draw: st.DrawFn, name: str, depth: int) -> Key:
    """A normal (unlayered) subtree of at most ``depth`` further levels."""
    key = Key(name, class_name=draw(st.sampled_from(CLASSES)), **_common(draw))  # type: ignore[arg-type]
    key.values = draw(values(tombstones=False))
    for _ in range(draw(st.integers(0, 3 if depth else 0))):
        key.add_subkey(draw(normal_key(draw(spelling(KEY_NAMES)), depth - 1)))
    return key


@st.composite
def normal_hives(draw: st.DrawFn, depth: int = 3) -> Hive:
    """A normal hive with a random tree under a root named ``ROOT``."""
    return Hive(root=draw(normal_key("ROOT", depth)), minor_version=5)


@st.composite
def delta_key(
    draw: st.DrawFn, name: str, lower: Key | None, depth: int, *, root: bool = False
) -> Key:
    """A delta node at a path whose lower node is ``lower`` (None: not in the base).

    Children reuse ``lower``'s child names (re-spelled) about half the time. Tombstones
    get no class, values or subkeys (§4.3); descendants of SupersedeTree nodes are mostly
    3 or 1 as real deltas have them, sometimes not (rule 8).
    """
    choices = list(LayerSemantics)
    if root:
        choices.remove(LayerSemantics.TOMBSTONE)
    sem = draw(st.sampled_from(choices))
    key = Key(name, semantics=sem, **_common(draw))  # type: ignore[arg-type]
    if sem == LayerSemantics.TOMBSTONE:
        return key
    key.inherit_class = draw(st.booleans())
    key.class_name = draw(st.sampled_from(CLASSES))
    key.values = draw(values(tombstones=True))
    lower_children = list(lower.subkeys.values()) if lower is not None else []
    for _ in range(draw(st.integers(0, 3 if depth else 0))):
        reuse: bool = draw(st.booleans())
        if lower_children and reuse:
            child_name = _variant(draw, draw(st.sampled_from(lower_children)).name)
        else:
            child_name = draw(spelling(KEY_NAMES))
        under = lower.subkey(child_name) if lower is not None else None
        child = draw(delta_key(child_name, under, depth - 1))
        if sem == LayerSemantics.SUPERSEDE_TREE and draw(st.integers(0, 4)) != 0:
            _force_tree(child)
        key.add_subkey(child)
    return key


def _force_tree(key: Key) -> None:
    """Make a subtree look like a real SupersedeTree one: every non-tombstone node is 3."""
    todo = [key]
    while todo:
        node = todo.pop()
        if node.semantics != LayerSemantics.TOMBSTONE:
            node.semantics = LayerSemantics.SUPERSEDE_TREE
        todo.extend(node.subkeys.values())


@st.composite
def deltas_over(draw: st.DrawFn, base: Hive, depth: int = 3) -> Hive:
    """A differencing hive whose paths often coincide with ``base``'s."""
    root = draw(delta_key("ROOT", base.root, depth, root=True))
    return Hive(root=root, minor_version=6, flags=0x2)
