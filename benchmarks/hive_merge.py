"""Benchmark: ORMergeHives of a ~100 MB SOFTWARE-like base with a ~2 MB delta.

``python -m benchmarks.hive_merge [--scale 1.0] [--keep DIR]``

Generates the hives with :mod:`cimsnap.devtools.synthetic_hive` (not timed), then measures,
each in a fresh child process so that peak RSS belongs to the measured work alone:

1. ``cimsnap hive merge BASE DELTA OUT``: reading both files, merging, writing and
   fsyncing the result, interpreter start included (the figure that counts);
2. the same work in phases (read base, read delta, merge, write) to show where time goes;
3. the baseline: Debian hivex's ``hivexml BASE > /dev/null``, which opens and walks the
   same base in C.

Prints wall time, keys/s and peak RSS of each, and the ratio to the baseline. Targets on the
2-core reference machine: merge under 20 s and under 1.5 GB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cimsnap.devtools.synthetic_hive import count_keys, software_base, software_delta
from cimsnap.hive.query import os_build_number
from cimsnap.hive.writer import write_hive

TARGET_SECONDS = 20.0
TARGET_RSS_MB = 1536.0

# The same steps as merge_files, timed one by one (with its GC pause, see merge.py).
_PHASES = """
import gc, json, os, sys, time
gc.disable()
from cimsnap.hive.merge import merge
from cimsnap.hive.reader import read_hive
from cimsnap.hive.writer import write_hive
base, delta, out = sys.argv[1:4]
t = [time.perf_counter()]
with open(base, "rb") as f:
    b = read_hive(f.read())
t.append(time.perf_counter())
with open(delta, "rb") as f:
    d = read_hive(f.read())
t.append(time.perf_counter())
m = merge(b, d)
t.append(time.perf_counter())
data = write_hive(m)
with open(out, "wb") as f:
    f.write(data)
    os.fsync(f.fileno())
t.append(time.perf_counter())
names = ["read base", "read delta", "merge", "write"]
print(json.dumps({n: t[i + 1] - t[i] for i, n in enumerate(names)}))
"""


def _run(argv: list[str], stdout: int | None = None) -> tuple[float, float, bytes, float]:
    """Run ``argv``; return (wall seconds, peak RSS in MB, stdout bytes, CPU seconds)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout if stdout is not None else subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout is not None else b""
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hive_merge")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = ~100 MB base")
    parser.add_argument("--keep", type=Path, help="write the hives here and keep them")
    parser.add_argument("--generate-into", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.generate_into is not None:
        _generate(args.generate_into, args.scale)
        return 0
    work = Path(args.keep or tempfile.mkdtemp(prefix="hive-merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(work, args.scale)
    finally:
        if args.keep is None:
            shutil.rmtree(work)


def _generate(work: Path, scale: float) -> None:
    """Write both hives into ``work``; print their key counts as JSON (runs in a child)."""
    base = software_base(scale)
    delta, _plan = software_delta(base, scale)
    (work / "SOFTWARE_BASE").write_bytes(write_hive(base))
    (work / "Software_Delta").write_bytes(write_hive(delta))
    print(json.dumps([count_keys(base.root), count_keys(delta.root)]))


def _bench(work: Path, scale: float) -> int:
    base_path, delta_path = work / "SOFTWARE_BASE", work / "Software_Delta"
    py = sys.executable
    # Generated in a child so that this process stays small: a child's peak RSS counts
    # the parent's pages it was forked from.
    gen_wall, _r, raw_counts, _c = _run(
        [py, "-m", "benchmarks.hive_merge", "--generate-into", str(work), "--scale", str(scale)]
    )
    base_keys, delta_keys = json.loads(raw_counts)
    print(f"generated in {gen_wall:.1f} s (not timed below)")
    print(
        f"base:  {base_path.stat().st_size / 1e6:7.1f} MB, {base_keys:,} keys\n"
        f"delta: {delta_path.stat().st_size / 1e6:7.1f} MB, {delta_keys:,} keys"
    )
    out = work / "SOFTWARE_MERGED"
    print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    wall, rss, _, cpu = _run(
        [py, "-m", "cimsnap", "hive", "merge", str(base_path), str(delta_path), str(out)]
    )
    keys_per_s = (base_keys + delta_keys) / wall
    build = os_build_number(out)
    print(
        f"cimsnap hive merge: {wall:6.2f} s wall ({cpu:.2f} s CPU), {keys_per_s:,.0f} keys/s, "
        f"peak RSS {rss:,.0f} MB, output {out.stat().st_size / 1e6:.1f} MB (CurrentBuild {build})"
    )
    out.unlink()
    _w, phase_rss, raw, _c = _run([py, "-c", _PHASES, str(base_path), str(delta_path), str(out)])
    phases = json.loads(raw)
    shown = ", ".join(f"{name} {secs:.2f} s" for name, secs in phases.items())
    print(f"  phases: {shown} (peak RSS {phase_rss:,.0f} MB)")
    hivexml = shutil.which("hivexml")
    if hivexml is None:
        print("baseline: hivexml not installed (apt-get install libhivex-bin); no ratio")
    else:
        with open(os.devnull, "wb") as null:
            base_wall, base_rss, _, base_cpu = _run([hivexml, str(base_path)], stdout=null.fileno())
        print(
            f"baseline hivexml (open + walk base, C): {base_wall:6.2f} s wall "
            f"({base_cpu:.2f} s CPU), peak RSS {base_rss:,.0f} MB"
        )
        print(
            f"ratio merge / hivexml walk: {wall / base_wall:.1f}x wall, "
            f"{cpu / max(base_cpu, 1e-3):.1f}x CPU"
        )
    if scale != 1.0:
        print("targets apply at --scale 1.0 only")
        return 0
    ok = wall < TARGET_SECONDS and rss < TARGET_RSS_MB
    verdict = "met" if ok else "MISSED (see the load average: wall time on a busy machine)"
    print(f"targets (< {TARGET_SECONDS:.0f} s, < {TARGET_RSS_MB:.0f} MB): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
