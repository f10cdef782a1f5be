"""The CimFS mount format and Go-compatible JSON arrays."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimsnap.snapshots.mounts import Mount, cimfs_mount, go_json_strings


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([], "[]"),
        (["a"], '["a"]'),
        (["a", "b"], '["a","b"]'),
        (["C:\\x\\y"], '["C:\\\\x\\\\y"]'),
        (['q"q'], '["q\\"q"]'),
        (["<a>&"], '["\\u003ca\\u003e\\u0026"]'),
        (["\u2028\u2029"], '["\\u2028\\u2029"]'),
        (["\n\r\t\x01\x7f"], '["\\n\\r\\t\\u0001\x7f"]'),
        (["é中🙂"], '["é中🙂"]'),
        (["/"], '["/"]'),
    ],
)
def test_go_json_strings(values: list[str], expected: str) -> None:
    assert go_json_strings(values) == expected


def test_mount_without_parents() -> None:
    m = cimfs_mount(Path("/r/snapshots"), Path("/r/snapshots/cim-layers"), 5, (), readonly=False)
    assert m == Mount(
        "CimFS", "/r/snapshots/5", "", ("rw", "cimpath=/r/snapshots/cim-layers/5.cim")
    )


def test_mount_with_parents_in_order() -> None:
    m = cimfs_mount(Path("/r/s"), Path("/r/s/cim-layers"), 9, (7, 3), readonly=True)
    assert m.options == (
        "ro",
        "cimpath=/r/s/cim-layers/9.cim",
        'parentLayerPaths=["/r/s/7","/r/s/3"]',
        'parentCimPaths=["/r/s/cim-layers/7.cim","/r/s/cim-layers/3.cim"]',
    )


def test_mount_escapes_root_like_go() -> None:
    m = cimfs_mount(Path("/a<b>/s"), Path("/a<b>/s/cim-layers"), 2, (1,), readonly=False)
    assert m.options[2] == 'parentLayerPaths=["/a\\u003cb\\u003e/s/1"]'
    assert m.options[1] == "cimpath=/a<b>/s/cim-layers/2.cim"
