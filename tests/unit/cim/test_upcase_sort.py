"""The §7.3 sort key and the name rules (cimsnap.cim.upcase)."""

from __future__ import annotations

import pytest

from cimsnap.cim.errors import CimInvalidNameError
from cimsnap.cim.upcase import (
    NameOrder,
    check_name,
    decode_name,
    encode_name,
    invalid_name_reason,
    name_units,
)
from tests.unit.cim.imagebuilder import case_sensitive_upcase

ORDER = NameOrder.default()


def test_case_insensitive_equality_uses_windows_table():
    assert ORDER.equal("readme.TXT", "README.txt")
    assert ORDER.equal("ä", "Ä")
    assert not ORDER.equal("ß", "SS")  # per code unit, no expansion
    assert not ORDER.equal("µ", "Μ")  # Windows leaves U+00B5 alone; Python would not


def test_proper_prefix_sorts_first_and_order_is_strict():
    names = ["ab", "a", "B", "aB0", "_", "Z"]
    assert sorted(names, key=ORDER.key) == ["a", "ab", "aB0", "B", "Z", "_"]
    assert ORDER.key("a") < ORDER.key("ab")
    # '_' (0x5F) sorts after upcased letters (0x41-0x5A), as on NTFS
    assert ORDER.key("Z") < ORDER.key("_") < ORDER.key("\x7f")


def test_supplementary_code_points_compare_by_full_value():
    # §7.3 example: U+FF21 sorts before U+1F600 (code-point order, not code-unit order)
    assert ORDER.key("\uff21") < ORDER.key("\U0001f600")
    # a surrogate pair given as two code points is the same name as the joined character
    assert ORDER.key("\ud83d\ude00") == ORDER.key("\U0001f600")


def test_lone_surrogates_round_trip_through_utf16():
    raw = b"\x3d\xd8a\x00"
    assert decode_name(raw) == "\ud83da"
    assert encode_name(decode_name(raw)) == raw
    assert name_units("\U0001f600x") == 3


def test_image_table_is_used_not_the_default():
    # A table that maps 'a'..'z' to themselves (no folding) makes 'a' and 'A' distinct.
    table = case_sensitive_upcase()
    own = NameOrder.from_table(table)
    assert not own.equal("a", "A")
    assert own.key("B") < own.key("a")
    with pytest.raises(ValueError):
        NameOrder.from_table(table[:-2])


@pytest.mark.parametrize(
    "name",
    [
        *["", ".", "..", "a\\b", "a/b", "a:b", "nul\x00", "tab\t", "q?", "star*", 'q"', "<"],
        *[">", "|", "x" * 256, "\U0001f600" * 128, "bad\udc80"],
    ],
)
def test_invalid_names(name):
    assert invalid_name_reason(name) is not None
    with pytest.raises(CimInvalidNameError):
        check_name(name)


@pytest.mark.parametrize(
    "name", ["a", "x" * 255, "\U0001f600" * 127, "trailing. ", "Ümlaut", "$UpCase", "a.b.c"]
)
def test_valid_names(name):
    assert invalid_name_reason(name) is None
    check_name(name)
