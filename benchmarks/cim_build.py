"""Benchmark: building a CIM versus writing the same bytes as plain files.

    python -m benchmarks.cim_build [--small-files N] [--large-bytes B] [--dir PATH]

Two workloads, each measured twice in the same run, on the same disk (``--dir``, default a
temporary directory under the current one):

* small: N files (default 100,000) of random sizes 0 ... 8192 bytes (mean 4 KiB, seed 0),
  100 files per directory;
* large: B bytes (default 2 GiB) in files of 256 MiB, written in 1 MiB chunks.

Baseline = one plain file per file (``open``/``write``/``close``). CIM = the same bytes
through :class:`cimsnap.cim.CimWriter` (``create_file``/``write``/``close``, then
``commit``). Contents come from a pre-generated random buffer, distinct per file, so
content dedup does not flatter the CIM.

Fsync policy, equal for both: no per-file fsync; each timed section ends with
``os.sync()``. The CIM's commit additionally fsyncs its region, objectid and ``.cim``
files and the directory (part of its timed section).

With ``--repeat R`` each side runs R times (alternating is not needed: every run starts
from an empty, synced directory) and the best time is kept; the machine may be shared.

``--from-directory`` adds a third small-file figure: :func:`build_from_directory` over the
same tree written as plain files (the snapshotter's path; it reads every file back).

Prints files/s and MB/s for each, the CIM/baseline ratios, and the process's peak RSS
(``ru_maxrss``). Targets: small >= 2x, large >= 0.7x, peak RSS < 200 MB.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cimsnap.cim import CimWriter, FileMetadata, build_from_directory
from cimsnap.cim.format import FileAttribute

RANDOM_POOL = 32 << 20
CHUNK = 1 << 20
LARGE_FILE = 256 << 20
PER_DIRECTORY = 100
DIR = FileMetadata(attributes=FileAttribute.DIRECTORY)


def small_files(count: int, pool: bytes) -> Iterator[tuple[str, str, memoryview]]:
    """Yield (directory, name, content) for the small workload, deterministically."""
    rng = random.Random(0)
    view = memoryview(pool)
    for i in range(count):
        size = rng.randint(0, 8192)
        start = rng.randrange(0, len(pool) - size)
        yield f"d{i // PER_DIRECTORY:05d}", f"f{i:07d}.bin", view[start : start + size]


def large_files(total: int, pool: bytes) -> Iterator[tuple[str, Iterator[memoryview]]]:
    """Yield (name, chunks) for the large workload; chunks differ per file and position."""
    view = memoryview(pool)
    slots = len(pool) // CHUNK

    def chunks(k: int, size: int) -> Iterator[memoryview]:
        for j in range(0, size, CHUNK):
            at = ((k * 7919 + j // CHUNK) % slots) * CHUNK + k % 4096
            yield view[at : at + min(CHUNK, size - j)]

    done = 0
    k = 0
    while done < total:
        size = min(LARGE_FILE, total - done)
        yield f"large{k:03d}.bin", chunks(k, size)
        done += size
        k += 1


def plain_small(root: Path, count: int, pool: bytes) -> float:
    start = time.perf_counter()
    made: set[str] = set()
    for directory, name, data in small_files(count, pool):
        if directory not in made:
            (root / directory).mkdir()
            made.add(directory)
        with open(root / directory / name, "wb") as file:
            file.write(data)
    os.sync()
    return time.perf_counter() - start


def cim_small(root: Path, count: int, pool: bytes) -> float:
    start = time.perf_counter()
    made: set[str] = set()
    with CimWriter(root, "small.cim") as writer:
        for directory, name, data in small_files(count, pool):
            if directory not in made:
                writer.create_file(directory, DIR)
                made.add(directory)
            stream = writer.create_file(f"{directory}\\{name}", FileMetadata(size=len(data)))
            stream.write(data)
            stream.close()
        writer.commit()
    os.sync()
    return time.perf_counter() - start


def plain_large(root: Path, total: int, pool: bytes) -> float:
    start = time.perf_counter()
    for name, chunks in large_files(total, pool):
        with open(root / name, "wb") as file:
            for chunk in chunks:
                file.write(chunk)
    os.sync()
    return time.perf_counter() - start


def cim_large(root: Path, total: int, pool: bytes) -> float:
    start = time.perf_counter()
    with CimWriter(root, "large.cim") as writer:
        for name, chunks in large_files(total, pool):
            size = min(LARGE_FILE, total - int(name[5:8]) * LARGE_FILE)
            with writer.create_file(name, FileMetadata(size=size)) as stream:
                for chunk in chunks:
                    stream.write(chunk)
        writer.commit()
    os.sync()
    return time.perf_counter() - start


def _from_directory(tree: Path) -> Callable[[Path, int, bytes], float]:
    def run(root: Path, count: int, pool: bytes) -> float:
        start = time.perf_counter()
        build_from_directory(tree, root / "tree.cim")
        os.sync()
        return time.perf_counter() - start

    return run


def _fresh(base: Path, name: str) -> Path:
    path = base / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir()
    return path


def _best(
    repeat: int,
    base: Path,
    runs: dict[str, Callable[[Path, int, bytes], float]],
    size: int,
    pool: bytes,
) -> dict[str, float]:
    """Best time of each side over ``repeat`` rounds.

    The sides alternate within each round (plain, cim, plain, cim, ...), so a slow spell of
    the disk or of the host's writeback falls on both sides alike. Each run gets a fresh
    directory, removed and synced after it.
    """
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(max(1, repeat)):
        for name, run in runs.items():
            times[name].append(run(_fresh(base, name), size, pool))
            shutil.rmtree(base / name)
            os.sync()
    return {name: min(values) for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-files", type=int, default=100_000)
    parser.add_argument("--large-bytes", type=int, default=2 << 30)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (same disk)")
    parser.add_argument(
        "--from-directory",
        action="store_true",
        help="also time build_from_directory over the small tree written as plain files",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds (sides alternate); best per side is kept"
    )
    args = parser.parse_args(argv)
    pool = random.Random(1).randbytes(RANDOM_POOL)
    small_bytes = sum(len(d) for _, _, d in small_files(args.small_files, pool))
    base = Path(tempfile.mkdtemp(prefix="cim-bench-", dir=args.dir))
    try:
        print(f"scratch: {base}; fsync policy: no per-file fsync, os.sync() ends each run")
        if args.small_files:
            best = _best(
                args.repeat, base, {"plain": plain_small, "cim": cim_small}, args.small_files, pool
            )
            plain, cim = best["plain"], best["cim"]
            n = args.small_files
            print(
                f"small: {n} files, {small_bytes / 1e6:.1f} MB\n"
                f"  plain files: {plain:7.2f} s  {n / plain:9.0f} files/s  "
                f"{small_bytes / plain / 1e6:7.1f} MB/s\n"
                f"  cim:         {cim:7.2f} s  {n / cim:9.0f} files/s  "
                f"{small_bytes / cim / 1e6:7.1f} MB/s\n"
                f"  ratio cim/plain (throughput): {plain / cim:.2f}x (target >= 2x)"
            )
            if args.from_directory:
                tree = _fresh(base, "tree")
                plain_small(tree, n, pool)
                built = _best(args.repeat, base, {"cim": _from_directory(tree)}, n, pool)["cim"]
                print(
                    f"  build_from_directory of that tree (reads it back, page cache warm): "
                    f"{built:7.2f} s  {n / built:9.0f} files/s  ratio vs plain {plain / built:.2f}x"
                )
                shutil.rmtree(tree)
        if args.large_bytes:
            best = _best(
                args.repeat, base, {"plain": plain_large, "cim": cim_large}, args.large_bytes, pool
            )
            plain, cim = best["plain"], best["cim"]
            b = args.large_bytes
            print(
                f"large: {b / 2**20:.0f} MiB\n"
                f"  plain files: {plain:7.2f} s  {b / plain / 1e6:7.1f} MB/s\n"
                f"  cim:         {cim:7.2f} s  {b / cim / 1e6:7.1f} MB/s\n"
                f"  ratio cim/plain (throughput): {plain / cim:.2f}x (target >= 0.7x)"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB (target < 200 MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
