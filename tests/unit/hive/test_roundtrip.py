"""Writer output read back by us, hivex and regipy; hivex-modified hives read by us."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from cimsnap.hive import (
    Hive,
    HiveReader,
    Key,
    Value,
    check_hive,
    read_current_build,
    read_hive,
    write_hive,
    write_hive_to,
)
from cimsnap.hive.tree import REG_BINARY, REG_DWORD, REG_EXPAND_SZ, REG_QWORD, REG_SZ
from cimsnap.hive.writer import DEFAULT_SECURITY_DESCRIPTOR
from tests.unit.hive.external import (
    hivex_dump,
    model_dump,
    regipy_dump,
    regipy_expected,
)
from tests.unit.hive.tree_strategies import hives, utf16z

EXTERNAL = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _normalised(hive: Hive) -> Hive:
    """What a write/read cycle is documented to change: default SD, empty class, root
    NO_DELETE, minor version >= 5 (6 for differencing hives), file name cut to its last
    31 units."""
    stack = [hive.root]
    while stack:
        key = stack.pop()
        key.security = key.security or DEFAULT_SECURITY_DESCRIPTOR
        key.class_name = key.class_name or None
        stack.extend(key.subkeys.values())
    hive.root.flags |= 0x8
    hive.minor_version = 6 if hive.is_differencing else max(hive.minor_version, 5)
    hive.file_name = hive.file_name[-31:]
    return hive


@given(hives())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_write_read_round_trip(hive: Hive) -> None:
    data = write_hive(hive)
    assert check_hive(data) == []
    first = read_hive(data)
    assert first == _normalised(hive)
    again = write_hive(first)
    assert again == data  # deterministic and stable
    assert read_hive(again) == first


@given(hives(layered=True))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_differencing_round_trip(hive: Hive) -> None:
    data = write_hive(hive)
    assert check_hive(data) == []
    first = read_hive(data)
    assert first.is_differencing
    assert first == _normalised(hive)
    assert write_hive(first) == data


@given(hives())
@EXTERNAL
def test_hivex_reads_writer_output(tmp_path_factory: pytest.TempPathFactory, hive: Hive) -> None:
    path = tmp_path_factory.mktemp("hx") / "hive"
    path.write_bytes(write_hive(hive))
    assert hivex_dump(path) == model_dump(hive)


@given(hives())
@EXTERNAL
def test_regipy_reads_writer_output(tmp_path_factory: pytest.TempPathFactory, hive: Hive) -> None:
    path = tmp_path_factory.mktemp("rg") / "hive"
    path.write_bytes(write_hive(hive))
    assert regipy_dump(path) == regipy_expected(hive)


def test_hivexml_dumps_writer_output(tmp_path: Path) -> None:
    root = Key("ROOT")
    root.add_subkey(Key("Ünïcødé ☃")).values.append(Value("big", REG_BINARY, bytes(70000)))
    path = tmp_path / "hive"
    path.write_bytes(write_hive(Hive(root)))
    xml = subprocess.run(["hivexml", str(path)], check=True, capture_output=True).stdout
    assert "Ünïcødé ☃".encode() in xml
    assert xml.count(b"<node ") == 2


def _hivexsh(script: str, hive: Path) -> None:
    subprocess.run(["hivexsh", "-w", str(hive)], input=script.encode(), check=True, timeout=60)


def test_hivexsh_modified_hive_reads_back(tmp_path: Path) -> None:
    """hivex writes cells its own way (its own allocation, lf/lh choice): an independent
    writer for our reader. The base hive comes from our writer (hivex cannot create one).
    (hivexsh's qword parser leaves junk in the high dword, so qwords go through the binding
    test below; its line buffer limits hex values to ~1 KB.)"""
    base = tmp_path / "minimal"
    base.write_bytes(write_hive(Hive(Key("ROOT"))))
    out = tmp_path / "modified"
    blob = bytes((i * 13 + 5) & 0xFF for i in range(1000))
    script = "\n".join(
        [
            "add Microsoft",
            "cd Microsoft",
            "add Windows NT",
            "cd Windows NT",
            "add CurrentVersion",
            "cd CurrentVersion",
            "setval 4",
            "CurrentBuild",
            "string:20348",
            "Path",
            "expandstring:%SystemRoot%",
            "Count",
            "dword:0x12345678",
            "Blob",
            f"hex:3:{blob.hex(',')}",
            "cd \\",
            "add Empty",
            f"commit {out}",
            "",
        ]
    )
    _hivexsh(script, base)
    data = out.read_bytes()
    hive = read_hive(data)
    ms = hive.root.subkey("MICROSOFT")
    nt = ms.subkey("windows nt") if ms else None
    cv = nt.subkey("CurrentVersion") if nt else None
    assert cv is not None
    assert [(v.name, v.type, v.data) for v in cv.values] == [
        ("CurrentBuild", REG_SZ, utf16z("20348")),
        ("Path", REG_EXPAND_SZ, utf16z("%SystemRoot%")),
        ("Count", REG_DWORD, (0x12345678).to_bytes(4, "little")),
        ("Blob", REG_BINARY, blob),
    ]
    assert set(hive.root.subkeys) == {"MICROSOFT", "EMPTY"}
    assert hivex_dump(out) == model_dump(hive)
    assert read_current_build(data) == 20348
    count = HiveReader(data).open_key(r"microsoft\WINDOWS NT\currentversion").value("count")
    assert count is not None and count.data == 0x12345678
    # and our writer can take over hivex's tree
    assert read_hive(write_hive(hive)) == _normalised(hive)


_HIVEX_EDIT = r"""
import hivex, sys
h = hivex.Hivex(sys.argv[1], write=True)
root = h.root()
a = h.node_add_child(root, "Größe ☃")
b = h.node_add_child(a, "child")
big = bytes((i * 13 + 5) & 0xFF for i in range(200000))
h.node_set_values(a, [
    {"key": "big", "t": 3, "value": big},
    {"key": "", "t": 1, "value": "default\0".encode("utf-16-le")},
    {"key": "dw", "t": 4, "value": (7).to_bytes(4, "little")},
    {"key": "qw", "t": 11, "value": (2**40 + 3).to_bytes(8, "little")},
])
h.node_set_value(b, {"key": "Ünï", "t": 7, "value": "a\0b\0\0".encode("utf-16-le")})
h.commit(sys.argv[2])
"""


def test_hivex_binding_modified_hive_reads_back(tmp_path: Path) -> None:
    """hivex stores a 200 KB value as one cell (no db record) and non-ASCII names its way."""
    base = tmp_path / "minimal"
    base.write_bytes(write_hive(Hive(Key("ROOT"))))
    out = tmp_path / "modified"
    subprocess.run(
        ["/usr/bin/python3", "-c", _HIVEX_EDIT, str(base), str(out)], check=True, timeout=60
    )
    data = out.read_bytes()
    hive = read_hive(data)
    key = hive.root.subkey("GRÖSSE ☃") or hive.root.subkey("größe ☃")
    assert key is not None and key.name == "Größe ☃"
    big = bytes((i * 13 + 5) & 0xFF for i in range(200000))
    assert {v.name: (v.type, v.data) for v in key.values} == {
        "big": (REG_BINARY, big),
        "": (REG_SZ, utf16z("default")),
        "dw": (REG_DWORD, (7).to_bytes(4, "little")),
        "qw": (REG_QWORD, (2**40 + 3).to_bytes(8, "little")),
    }
    child = key.subkey("CHILD")
    assert child is not None and [(v.name, v.type) for v in child.values] == [("Ünï", 7)]
    assert hivex_dump(out) == model_dump(hive)
    # hivex hashes the UTF-8 bytes of a name (ASCII-only upcase) instead of its upcased UTF-16
    # units, so its lh hash for the non-ASCII key is wrong; the checker must notice exactly
    # that and nothing else.
    reader = HiveReader(data)
    root_list = reader.image.node(reader.root.offset).subkey_list
    assert [(p.what, p.offset, p.severity) for p in check_hive(data)] == [
        ("subkey list", root_list, "error")
    ]
    rewritten = write_hive(hive)
    assert check_hive(rewritten) == []
    assert read_hive(rewritten) == _normalised(hive)


def test_write_hive_to_matches_write_hive() -> None:
    root = Key("ROOT")
    root.values.append(Value("big", REG_BINARY, bytes(range(256)) * 4000))
    chunks: list[bytes] = []
    size = write_hive_to(Hive(root), lambda view: chunks.append(bytes(view)), chunk_size=4096)
    assert size == sum(map(len, chunks)) and b"".join(chunks) == write_hive(Hive(root))
    assert max(map(len, chunks)) == 4096
