"""Benchmark: importing a Windows layer into a CIM versus GNU tar extracting it.

    python -m benchmarks.layer_import [--size 1GiB] [--entries 30000] [--repeat 2]
                                      [--dir PATH] [--layer FILE.tar.gz]

Workload: a generated gzip layer (:mod:`cimsnap.devtools.layergen`, profile ``bench``:
``--size`` bytes of file data in ``--entries`` entries, ~9% directories, ~30% hard links,
real hives, PAX metadata on every entry), or an existing ``--layer``. Everything runs on
the same disk (``--dir``, default a temporary directory under the current one).

Figures, all against a baseline measured in the same run:

* (a) ``cimsnap layer import`` (a child process) versus ``tar -xzf`` into an empty
  directory, interleaved, ``--repeat`` times each, best time kept; both timed sections end
  with ``sync``. Target: ratio import/tar <= 1.0.
* (b) headers only: entries/s of :class:`cimsnap.wclayer.tarstream.TarReader` versus
  Python's ``tarfile`` (stream mode ``r|``) over the same uncompressed tar file, data
  skipped by both. Target >= 5x.
* (c) MB/s: import (uncompressed tar bytes / time), ``tar -xzf``, and decompression alone
  (ISA-L, zlib fallback, and ``gzip -dc`` for reference).
* (d) peak RSS of the import child (its own ``VmHWM``). Target < 250 MB, also with
  ``--size 4GiB`` and ``--entries 250000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cimsnap.devtools.layergen import parse_size
from cimsnap.wclayer import compression
from cimsnap.wclayer.compression import open_decompressed
from cimsnap.wclayer.tarstream import TarReader

CHUNK = 1 << 20


#: Runs the cimsnap CLI, then writes the process's own peak RSS (VmHWM, kB) to argv[1].
#: ``ru_maxrss`` from ``wait4`` is not used: Linux folds the *parent's* peak at fork/exec
#: time into it, which inflated the figure by the benchmark's own memory.
_IMPORT_CHILD = (
    "import sys\n"
    "from cimsnap.cli import main\n"
    "code = main(sys.argv[2:])\n"
    "with open('/proc/self/status') as status:\n"
    "    hwm = [line.split()[1] for line in status if line.startswith('VmHWM')][0]\n"
    "with open(sys.argv[1], 'w') as out:\n"
    "    out.write(hwm)\n"
    "sys.exit(code)\n"
)


def run_child(argv: list[str]) -> float:
    """Run ``argv`` then ``sync``; return the seconds taken."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, check=False)
    os.sync()
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {result.returncode}")
    return elapsed


def run_import(layer: Path, layer_dir: Path, hwm_file: Path) -> tuple[float, int]:
    """``cimsnap layer import`` in a child; return (seconds, its peak RSS in bytes)."""
    argv = [sys.executable, "-c", _IMPORT_CHILD, str(hwm_file), "layer", "import", str(layer)]
    seconds = run_child([*argv, "--layer-dir", str(layer_dir)])
    return seconds, int(hwm_file.read_text()) * 1024


def headers_ours(path: Path) -> int:
    with path.open("rb", buffering=0) as f:
        return sum(1 for _ in TarReader(f))


def headers_tarfile(path: Path) -> int:
    with path.open("rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return sum(1 for _ in tar)


def best(repeat: int, func: Callable[[], int]) -> tuple[float, int]:
    """Best time of ``repeat`` calls, and the call's result."""
    times = []
    result = 0
    for _ in range(repeat):
        start = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - start)
    return min(times), result


def decompress_rate(layer: Path, *, isal: bool) -> float:
    saved = compression._isal_zlib
    if not isal:
        compression._isal_zlib = None
    try:
        buf = bytearray(CHUNK)
        start = time.perf_counter()
        total = 0
        with layer.open("rb") as f, open_decompressed(f) as stream:
            while n := stream.readinto(buf):
                total += n
        return total / (time.perf_counter() - start) / 1e6
    finally:
        compression._isal_zlib = saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layer_import")
    parser.add_argument("--size", type=parse_size, default=1 << 30, help="file bytes (1GiB)")
    parser.add_argument("--entries", type=int, default=30_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path.cwd())
    parser.add_argument("--layer", type=Path, help="use this .tar.gz instead of generating")
    parser.add_argument("--no-tar", action="store_true", help="skip the GNU tar baseline (a)")
    args = parser.parse_args(argv)
    if shutil.which("tar") is None and not args.no_tar:
        raise SystemExit("GNU tar is needed for the baseline (or pass --no-tar)")

    work = Path(tempfile.mkdtemp(prefix="layer-import-bench-", dir=args.dir))
    try:
        if args.layer is None:
            # In a child, so this process stays small (the generator keeps its model).
            start = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "cimsnap.devtools.layergen",
                    str(work / "gen"),
                    "--profile",
                    "bench",
                    "--size",
                    str(args.size),
                    "--entries",
                    str(args.entries),
                    "--gzip",
                ],
                stdout=subprocess.DEVNULL,
                check=True,
            )
            layer = work / "gen" / "layer0.tar.gz"
            print(
                f"generated {layer.name}: {layer.stat().st_size / 1e6:.0f} MB gzip in "
                f"{time.perf_counter() - start:.0f} s"
            )
        else:
            layer = args.layer
        plain = work / "layer.tar"
        with layer.open("rb") as f, open_decompressed(f) as stream, plain.open("wb") as out:
            shutil.copyfileobj(stream, out, CHUNK)
        tar_size = plain.stat().st_size

        # (b) headers only, same uncompressed stream (page cache warm for both)
        headers_ours(plain)
        ours_s, count = best(args.repeat + 1, lambda: headers_ours(plain))
        theirs_s, their_count = best(args.repeat + 1, lambda: headers_tarfile(plain))
        entries = count
        print(
            f"(b) headers only: TarReader {count / ours_s:,.0f} entries/s "
            f"({tar_size / ours_s / 1e6:,.0f} MB/s), tarfile {their_count / theirs_s:,.0f} "
            f"entries/s; ratio {theirs_s / ours_s:.1f}x (target >= 5x)"
        )
        plain.unlink()

        # (c) decompression alone
        rates = {
            "isal": decompress_rate(layer, isal=True),
            "zlib": decompress_rate(layer, isal=False),
        }
        start = time.perf_counter()
        subprocess.run(["gzip", "-dc", str(layer)], stdout=subprocess.DEVNULL, check=True)
        rates["gzip -dc"] = tar_size / (time.perf_counter() - start) / 1e6
        print(
            "(c) decompression: "
            + ", ".join(f"{name} {rate:,.0f} MB/s" for name, rate in rates.items())
        )

        # (a) + (d): interleaved, each into a fresh directory on the same disk
        import_times, tar_times, rss = [], [], []
        for round_ in range(args.repeat):
            if not args.no_tar:
                target = work / f"tar{round_}"
                target.mkdir()
                seconds = run_child(
                    ["tar", "--warning=no-unknown-keyword", "-xzf", str(layer), "-C", str(target)]
                )
                tar_times.append(seconds)
                shutil.rmtree(target)
            snapshots = work / f"snapshots{round_}"
            snapshots.mkdir()
            seconds, peak = run_import(layer, snapshots / "1", work / "hwm")
            import_times.append(seconds)
            rss.append(peak)
            shutil.rmtree(snapshots)
        imp = min(import_times)
        print(
            f"(a) import {imp:.1f} s ({tar_size / imp / 1e6:,.0f} MB/s, {entries / imp:,.0f} "
            f"entries/s)"
            + (
                f" vs tar -xzf {min(tar_times):.1f} s ({tar_size / min(tar_times) / 1e6:,.0f}"
                f" MB/s); ratio import/tar {imp / min(tar_times):.2f} (target <= 1.0)"
                if tar_times
                else ""
            )
        )
        print(f"(d) peak RSS of the import: {max(rss) / 1e6:.0f} MB (target < 250 MB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
