"""Scale: 200,000 keys, a 2,000-child key (ri lists), 1 MiB values (db records),
non-ASCII names; written, checked, read back, and dumped by hivexml."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from cimsnap.hive import Hive, HiveReader, Key, Value, check_hive, read_hive, write_hive
from cimsnap.hive.tree import REG_BINARY, REG_DWORD, REG_SZ

MIB = 1024 * 1024


def _big_hive() -> Hive:
    root = Key("ROOT")
    wide = root.add_subkey(Key("Wide"))
    for i in range(2000):
        wide.add_subkey(Key(f"Kïnd{i:05d}"))
    blobs = root.add_subkey(Key("Blobs"))
    for i in range(3):
        blobs.values.append(Value(f"mib{i}", REG_BINARY, bytes([i]) * MIB + b"end"))
    tree = root.add_subkey(Key("Tree"))
    count = 2003 + 3
    for i in range(66):
        mid = tree.add_subkey(Key(f"Ωmid{i}"))
        for j in range(3000):
            leaf = mid.add_subkey(Key(f"leaf{j}"))
            if j % 10 == 0:
                leaf.values.append(Value("v", REG_DWORD, j.to_bytes(4, "little")))
                leaf.values.append(Value("s", REG_SZ, f"text {j}\0".encode("utf-16-le")))
        count += 3001
    assert count >= 200_000
    return Hive(root)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_scale(tmp_path: Path) -> None:
    hive = _big_hive()
    data = write_hive(hive)
    assert check_hive(data) == []
    back = read_hive(data)
    assert back == _normalised_copy(hive, back)
    reader = HiveReader(data)
    assert len(reader.open_key("WIDE").subkey_offsets()) == 2000
    assert (
        reader.image.list_leaf(
            reader.image.node(reader.open_key("wide").offset).subkey_list, False
        )[0]
        == b"ri"
    )
    assert reader.open_key("blobs").value("MIB2").raw[-3:] == b"end"  # type: ignore[union-attr]
    path = tmp_path / "big"
    path.write_bytes(data)
    xml = subprocess.run(["hivexml", str(path)], check=True, capture_output=True, timeout=60).stdout
    assert xml.count(b"<node ") == 2000 + 66 * 3000 + 66 + 4


def _normalised_copy(model: Hive, read: Hive) -> Hive:
    # Only the documented write/read normalisations (default SD, root NO_DELETE) differ.
    stack = [(model.root, read.root)]
    while stack:
        m, r = stack.pop()
        m.security = r.security
        stack.extend((c, r.subkeys[k]) for k, c in m.subkeys.items() if k in r.subkeys)
    model.root.flags = read.root.flags
    return model
