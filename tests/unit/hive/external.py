"""Walk hives with independent readers (hivex via Debian's python3, regipy) for comparison.

Each walker returns a canonical dump ``{path tuple: [(value name, type, data), ...]}`` for
every key (the root is ``()``), so tests compare whole trees with one ``==``.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cimsnap.hive.tree import (
    REG_BINARY,
    REG_DWORD,
    REG_EXPAND_SZ,
    REG_MULTI_SZ,
    REG_NONE,
    REG_QWORD,
    REG_SZ,
    Hive,
    Key,
)

Dump = dict[tuple[str, ...], list[tuple[str, int, bytes]]]

# Runs under Debian's /usr/bin/python3, where the hivex binding lives (not in our venv).
_HIVEX_WALK = r"""
import hivex, json, sys
h = hivex.Hivex(sys.argv[1])
out = []
stack = [((), h.root())]
while stack:
    path, node = stack.pop()
    vals = []
    for v in h.node_values(node):
        t, data = h.value_value(v)
        vals.append([h.value_key(v), t, data.hex()])
    out.append([list(path), vals])
    for child in h.node_children(node):
        stack.append((path + (h.node_name(child),), child))
json.dump(out, sys.stdout)
"""


def hivex_dump(path: Path) -> Dump:
    """Dump a hive with hivex (raw value bytes)."""
    done = subprocess.run(
        ["/usr/bin/python3", "-c", _HIVEX_WALK, str(path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    result: Dump = {}
    for key_path, vals in json.loads(done.stdout):
        result[tuple(key_path)] = [(n, t, bytes.fromhex(d)) for n, t, d in vals]
    return result


def model_dump(hive: Hive) -> Dump:
    """Dump our model in the same raw form."""
    result: Dump = {}
    stack: list[tuple[tuple[str, ...], Key]] = [((), hive.root)]
    while stack:
        path, key = stack.pop()
        result[path] = [(v.name, v.type, v.data) for v in key.values]
        for child in key.subkeys.values():
            stack.append(((*path, child.name), child))
    return result


def _regipy_name(name: str) -> str:
    # regipy decodes compressed (Latin-1) names as ASCII with replacement characters.
    try:
        return name.encode("latin-1").decode("ascii", "replace")
    except UnicodeEncodeError:
        return name


RegipyDump = list[tuple[str, list[tuple[str, object]]]]


def _canonical(entries: RegipyDump) -> RegipyDump:
    # A multiset of (key path, values), not a dict: regipy's lossy name decoding can give
    # two sibling keys (say "Ö" and "ä") the same path, and both must still be compared.
    return sorted(entries, key=repr)


def regipy_expected(hive: Hive) -> RegipyDump:
    """What regipy should report for our model: paths, names and decoded data."""
    result: RegipyDump = []
    for path, vals in model_dump(hive).items():
        key = "\\" + "\\".join(_regipy_name(p) for p in path)
        named = [(_regipy_name(n) if n else "(default)", _regipy_value(t, d)) for n, t, d in vals]
        result.append((key, named))
    return _canonical(result)


def _regipy_value(vtype: int, data: bytes) -> object:
    if vtype in (REG_BINARY, REG_NONE):
        return data
    if vtype == REG_DWORD:
        return int.from_bytes(data, "little")
    if vtype == REG_QWORD:
        return int.from_bytes(data, "little")
    if vtype in (REG_SZ, REG_EXPAND_SZ):
        return data.decode("utf-16-le").rstrip("\0")
    if vtype == REG_MULTI_SZ:
        return [s for s in data.decode("utf-16-le").split("\0") if s]
    return None  # other types: regipy's heuristics, not compared


def regipy_dump(path: Path) -> RegipyDump:
    """Walk with regipy's NK records (iterative), values untrimmed."""
    from regipy.registry import RegistryHive

    reg = RegistryHive(str(path))  # type: ignore[no-untyped-call]
    result: RegipyDump = []
    stack = [("\\", reg.root)]
    while stack:
        key_path, nk = stack.pop()
        vals = []
        if nk.values_count:
            for v in nk.iter_values(trim_values=False):  # type: ignore[no-untyped-call]
                known = v.value_type in (
                    "REG_BINARY",
                    "REG_NONE",
                    "REG_DWORD",
                    "REG_QWORD",
                    "REG_SZ",
                    "REG_EXPAND_SZ",
                    "REG_MULTI_SZ",
                )
                vals.append((v.name, v.value if known else None))
        result.append((key_path, vals))
        if nk.subkey_count:
            for child in nk.iter_subkeys():  # type: ignore[no-untyped-call]
                sep = "" if key_path == "\\" else "\\"
                stack.append((f"{key_path}{sep}{child.name}", child))
    return _canonical(result)
