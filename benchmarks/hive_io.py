"""Hive read/write throughput on a large synthetic hive.

Run: ``python -m benchmarks.hive_io [--keys N] [--values N]``. Builds a random tree
(default 200,000 keys and 300,000 values, ~100 MB, some non-ASCII names, a few db values),
then times write_hive, read_hive, check_hive and a lazy HiveReader walk, and compares each
with hivex's C ``hivexml`` dumping the same file (the baseline, measured in the same run).
Peak RSS of read_hive is measured in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import gc
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cimsnap.hive import Hive, HiveReader, Key, Value, check_hive, read_hive, write_hive
from cimsnap.hive.tree import REG_BINARY, REG_DWORD, REG_SZ

T = TypeVar("T")


# Current RSS (MiB) of a fresh interpreter holding the file, then its peak after read_hive.
_RSS_PROBE = """
import os, resource, sys
from cimsnap.hive import read_hive
data = open(sys.argv[1], "rb").read()
with open("/proc/self/statm") as f:
    before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
hive = read_hive(data)
print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def build(keys: int, values: int, seed: int = 1) -> Hive:
    rnd = random.Random(seed)
    root = Key("ROOT")
    nodes = [root]
    for i in range(keys):
        parent = nodes[rnd.randrange(len(nodes))] if i > 50 else root
        name = f"Key{i}_Ü" if i % 7 == 0 else f"Key{i}"
        nodes.append(parent.add_subkey(Key(name, last_written=i)))
    for j in range(values):
        key = nodes[rnd.randrange(len(nodes))]
        r = j % 10
        if r < 3:
            key.values.append(Value(f"v{j}", REG_DWORD, j.to_bytes(4, "little")))
        elif r < 8:
            text = f"value number {j} " * 3 + "\0"
            key.values.append(Value(f"v{j}", REG_SZ, text.encode("utf-16-le")))
        else:
            size = 40000 if j % 1000 == 8 else 1000
            key.values.append(Value(f"v{j}", REG_BINARY, rnd.randbytes(size)))
    return Hive(root)


def _timed(fn: Callable[..., T], *args: object) -> tuple[T, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--values", type=int, default=300_000)
    args = parser.parse_args()
    hive = build(args.keys, args.values)
    data, t_write = _timed(write_hive, hive)
    del hive
    gc.collect()
    mb = len(data) / 1e6
    _tree, t_read = _timed(read_hive, data)
    del _tree
    problems, t_check = _timed(check_hive, data)

    def lazy_walk() -> int:
        return sum(len(k.values()) for _p, k in HiveReader(data).walk())

    _n, t_lazy = _timed(lazy_walk)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hive"
        path.write_bytes(data)
        _out, t_hivex = _timed(
            lambda: subprocess.run(["hivexml", str(path)], check=True, stdout=subprocess.DEVNULL)
        )
        rss = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, str(path)], check=True, capture_output=True
        ).stdout.split()
    print(f"hive: {mb:.1f} MB, {args.keys} keys, {args.values} values, problems={len(problems)}")
    print(f"baseline hivexml (C) dump: {t_hivex:6.2f} s  {mb / t_hivex:6.1f} MB/s")
    for label, t in (
        ("write_hive", t_write),
        ("read_hive", t_read),
        ("check_hive", t_check),
        ("lazy walk", t_lazy),
    ):
        print(f"{label:>10}: {t:6.2f} s  {mb / t:6.1f} MB/s  ({t / t_hivex:4.2f}x hivexml time)")
    print(
        f"read_hive peak RSS in a fresh process: {float(rss[1]):.0f} MB "
        f"({float(rss[0]):.0f} MB with only the file loaded)"
    )


if __name__ == "__main__":
    main()
