"""The one derivation of leaf fields that both format packages' fast paths use."""

from __future__ import annotations

import construct as cs
import pytest

from cimsnap.binfields import Leaf, leaves


def test_nested_structs_flatten_to_dotted_leaves() -> None:
    decl = cs.Struct(
        "magic" / cs.Const(b"ab"),
        "inner" / cs.Struct("x" / cs.Int16ul, "raw" / cs.Bytes(3)),
        "y" / cs.Int64ul,
    )
    assert leaves(decl) == [
        Leaf("magic", 2, "2s", b"ab"),
        Leaf("inner.x", 2, "H"),
        Leaf("inner.raw", 3, "3s"),
        Leaf("y", 8, "Q"),
    ]


def test_adapters_and_big_endian_fields_have_no_struct_code() -> None:
    decl = cs.Struct("flag" / cs.Flag, "be" / cs.Int32ub)
    assert [(leaf.name, leaf.size, leaf.code) for leaf in leaves(decl)] == [
        ("flag", 1, None),
        ("be", 4, None),
    ]


def test_variable_size_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="tail"):
        leaves(cs.Struct("n" / cs.Int8ul, "tail" / cs.Bytes(cs.this.n)))


def test_unnamed_fields_are_refused() -> None:
    with pytest.raises(TypeError, match="unnamed"):
        leaves(cs.Struct(cs.Int8ul))
