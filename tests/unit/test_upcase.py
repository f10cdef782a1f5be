"""Windows' upcase table: shape, provenance hash, and the known differences from Python."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import sys

import pytest

from cimsnap import upcase
from cimsnap.upcase import (
    UPCASE_SHA256,
    fold_code_units,
    translation_from_table,
    upcase_table,
    upcase_table_bytes,
    windows_translation,
)


def test_table_is_131072_bytes_with_pinned_hash() -> None:
    data = upcase_table_bytes()
    assert len(data) == 131072
    assert hashlib.sha256(data).hexdigest() == UPCASE_SHA256


def test_table_entries_match_bytes() -> None:
    table = upcase_table()
    data = upcase_table_bytes()
    assert len(table) == 0x10000
    for c in (0, 0x61, 0xE9, 0x3B1, 0xFF41, 0xFFFF):
        assert table[c] == int.from_bytes(data[2 * c : 2 * c + 2], "little")


@pytest.mark.parametrize(
    ("lower", "upper"),
    [("a", "A"), ("z", "Z"), ("é", "É"), ("ÿ", "Ÿ"), ("α", "Α"), ("я", "Я"), ("ａ", "Ａ")],
)
def test_ordinary_letters_upcase(lower: str, upper: str) -> None:
    assert upcase_table()[ord(lower)] == ord(upper)


def test_windows_differs_from_python_where_documented() -> None:
    table = upcase_table()
    # Windows leaves these alone, although Python uppercases them.
    for c in (0xB5, 0x131, 0x17F, 0x1C5):
        assert table[c] == c
        assert chr(c).upper() != chr(c)
    # ß has no single-character uppercase: it stays.
    assert table[0xDF] == 0xDF


def test_surrogates_map_to_themselves() -> None:
    table = upcase_table()
    assert all(table[c] == c for c in range(0xD800, 0xE000))


def test_fold_keeps_length_and_leaves_astral_alone() -> None:
    name = "straße-µ-ı-αβγ-😀-ａ"
    folded = fold_code_units(name)
    assert len(folded) == len(name)
    assert folded == "STRAßE-µ-ı-ΑΒΓ-😀-Ａ"


def test_damaged_resource_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    class Fake:
        def joinpath(self, _name: str) -> Fake:
            return self

        def read_bytes(self) -> bytes:
            return gzip.compress(b"\x00" * 131072)

    upcase.upcase_table_bytes.cache_clear()
    monkeypatch.setattr(upcase.resources, "files", lambda _pkg: Fake())
    try:
        with pytest.raises(RuntimeError, match="damaged"):
            upcase_table_bytes()
    finally:
        upcase.upcase_table_bytes.cache_clear()


def test_regenerating_with_mkntfs_matches() -> None:
    # ntfs-3g is a test dependency (scripts/system-deps.sh installs it).
    assert shutil.which("mkntfs"), "install Debian's ntfs-3g (make system-deps)"
    out = subprocess.run(
        [sys.executable, "-m", "cimsnap.devtools.genupcase"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_translation_maps_exactly_the_changed_code_units() -> None:
    table = upcase_table()
    mapping = translation_from_table(upcase_table_bytes())
    assert mapping == {c: u for c, u in enumerate(table) if c != u}
    assert mapping == windows_translation()
    assert 0x61 in mapping and 0xB5 not in mapping  # a -> A; µ stays


def test_translation_refuses_a_table_of_the_wrong_size() -> None:
    with pytest.raises(ValueError):
        translation_from_table(bytes(131070))
