"""The in-memory model's own lookups: name identity and path lookup."""

from __future__ import annotations

from cimsnap.hive.tree import Key, name_key
from cimsnap.upcase import fold_code_units


def test_name_key_ascii_fast_path_agrees_with_the_upcase_table() -> None:
    ascii_text = "".join(map(chr, range(128)))
    assert name_key(ascii_text) == fold_code_units(ascii_text)
    assert name_key("aé") == fold_code_units("aé") == "AÉ"


def test_find_walks_a_path_case_insensitively() -> None:
    root = Key("ROOT")
    leaf = root.add_subkey(Key("Microsoft")).add_subkey(Key("Windows NT"))
    assert root.find("") is root and root.find("\\") is root
    assert root.find(r"MICROSOFT\windows nt") is leaf
    assert root.find(r"\Microsoft\\Windows NT\\") is leaf  # empty components are ignored
    assert root.find(r"Microsoft\Missing") is None
    assert root.find(r"Missing\Windows NT") is None
