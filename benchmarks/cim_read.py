"""Benchmark: reading a CIM with cimsnap's reader versus reading the same tree as plain files.

    python -m benchmarks.cim_read [--files N] [--large-bytes B] [--dir PATH] [--repeat R]

Workload (seed 0): N files (default 20,000) of random sizes 0 ... 8192 bytes in
directories of 100, plus one file of B bytes (default 256 MiB). The tree is written as
plain files, and the CIM is built from it with ``build_from_directory``. Both sides are
read warm (page cache), best of R runs:

* walk+read: every path enumerated and every small file read whole
  (baseline: ``os.walk`` + ``open().read()``; CIM: ``CimReader.walk`` + ``open_stream``);
* lookups: stat of every small file by path in random order
  (baseline: ``os.stat``; CIM: ``CimReader.stat``, which binary-searches each directory);
* large: the big file streamed in 1 MiB chunks (baseline: ``readinto`` of a plain file).

Prints the figures, the CIM/baseline ratios and the peak RSS (``ru_maxrss``).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cimsnap.cim.build import build_from_directory
from cimsnap.cim.regions import open_image

CHUNK = 1 << 20
PER_DIRECTORY = 100


def make_tree(root: Path, count: int, large: int) -> list[str]:
    rng = random.Random(0)
    pool = rng.randbytes(1 << 20)
    names = []
    for i in range(count):
        directory = root / f"d{i // PER_DIRECTORY:05d}"
        if i % PER_DIRECTORY == 0:
            directory.mkdir()
        size = rng.randint(0, 8192)
        start = rng.randrange(0, len(pool) - size)
        (directory / f"f{i:07d}.bin").write_bytes(pool[start : start + size])
        names.append(f"d{i // PER_DIRECTORY:05d}/f{i:07d}.bin")
    with open(root / "large.bin", "wb") as file:
        for _ in range(large // CHUNK):
            file.write(pool)
    return names


def best(repeat: int, run: Callable[[], int]) -> tuple[float, int]:
    times, result = [], 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--large-bytes", type=int, default=256 << 20)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    base = Path(tempfile.mkdtemp(prefix="cim-read-", dir=args.dir))
    try:
        tree = base / "tree"
        tree.mkdir()
        names = make_tree(tree, args.files, args.large_bytes)
        (base / "cim").mkdir()
        cim = base / "cim" / "bench.cim"
        report = build_from_directory(tree, cim)
        print(f"scratch: {base}; {report.files} files, {report.bytes / 1e6:.1f} MB in the CIM")
        order = list(names)
        random.Random(1).shuffle(order)

        def plain_walk() -> int:
            total = 0
            for here, _, files in os.walk(tree):
                for name in files:
                    if name != "large.bin":
                        with open(os.path.join(here, name), "rb") as file:
                            total += len(file.read())
            return total

        def plain_stat() -> int:
            return sum(os.stat(tree / name).st_size for name in order)

        def plain_large() -> int:
            buffer, total = bytearray(CHUNK), 0
            with open(tree / "large.bin", "rb", buffering=0) as file:
                while count := file.readinto(buffer):
                    total += count
            return total

        with open_image(cim) as image:
            reader = image.reader

            def cim_walk() -> int:
                total = 0
                for path, record in reader.walk():
                    if not record.is_directory and path != "large.bin":
                        with reader.open_record_stream(record, None) as stream:
                            total += len(stream.read())
                return total

            def cim_stat() -> int:
                return sum(reader.stat(name).size for name in order)

            def cim_large() -> int:
                buffer, total = bytearray(CHUNK), 0
                with reader.open_stream("large.bin") as stream:
                    while count := stream.readinto(buffer):
                        total += count
                return total

            rows = [
                ("walk+read", args.files, plain_walk, cim_walk, "files/s"),
                ("lookups", args.files, plain_stat, cim_stat, "stats/s"),
                ("large", args.large_bytes / 1e6, plain_large, cim_large, "MB/s"),
            ]
            for label, amount, plain, ours, unit in rows:
                plain_time, plain_result = best(args.repeat, plain)
                cim_time, cim_result = best(args.repeat, ours)
                if plain_result != cim_result:
                    print(f"{label}: MISMATCH {plain_result} != {cim_result}")
                    return 1
                print(
                    f"{label:<10} plain {amount / plain_time:>12,.0f} {unit}   "
                    f"cim {amount / cim_time:>12,.0f} {unit}   "
                    f"cim/plain {plain_time / cim_time:5.2f}x"
                )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS {peak:.0f} MB")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
