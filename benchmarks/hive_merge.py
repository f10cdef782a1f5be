"""Benchmark: ORMergeHives of a ~100 MB SOFTWARE-like base with a ~2 MB delta.

``python -m benchmarks.hive_merge [--scale 1.0] [--base-mb N] [--repeat 3] [--no-old]
[--profile] [--keep DIR]``

Generates the hives with :mod:`cimsnap.devtools.synthetic_hive` (not timed; ``--keep DIR``
keeps them and reuses them on the next run), then measures, each in a fresh child process
so that peak RSS belongs to the measured work alone, side by side in one run:

1. **new**: ``cimsnap hive merge BASE DELTA OUT``, the incremental merge (copy the base,
   edit the copy where the delta leads), interpreter start and fsync included;
2. **old**: the whole-tree merge, as ``merge_files`` did it before: read both hives
   whole, merge the trees, write a fresh hive, fsync (with its phases);
3. **baseline**: Debian hivex's ``hivexml BASE > /dev/null``, which opens and walks the
   same base in C.

New and baseline run ``--repeat`` times, interleaved, and their medians are compared (the
machine is shared). Prints wall and CPU time, peak RSS, output size against the base's,
and the ratios. Targets: the new merge's wall time at most 1.0x the hivexml walk, and its
peak RSS under 150 MB whatever the base's size: ``--base-mb 400`` builds a ~400 MB base
(the delta stays the ~2 MB one of scale 1.0; generating it takes about a minute and 2 GB
of RAM; the old merge is skipped there unless ``--old`` is given, it needs ~2 GB too).
``--profile`` prints the new merge's 20 hottest functions (cProfile, in a child).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_RATIO = 1.0
TARGET_RSS_MB = 150.0

# The old merge_files, step by step: whole reads, the tree merge, a fresh write, fsync.
_OLD = """
import gc, json, os, sys, time
gc.disable()
from cimsnap.hive.merge import merge
from cimsnap.hive.reader import read_hive
from cimsnap.hive.writer import write_hive_to
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
with open(out, "wb") as f:
    write_hive_to(m, f.write)
    f.flush()
    os.fsync(f.fileno())
t.append(time.perf_counter())
names = ["read base", "read delta", "merge", "write"]
print(json.dumps({n: t[i + 1] - t[i] for i, n in enumerate(names)}))
"""

_PROFILE = """
import cProfile, pstats, sys
from cimsnap.hive.mergefiles import merge_files
cProfile.run("merge_files(sys.argv[1], sys.argv[2], sys.argv[3])", sys.argv[4])
pstats.Stats(sys.argv[4]).sort_stats("tottime").print_stats(20)
"""


class _Failed(Exception):
    """A measured child exited with an error."""


def _run(argv: list[str], stdout: int | None = None) -> tuple[float, float, bytes, float]:
    """Run ``argv``; return (wall seconds, peak RSS in MB, stdout bytes, CPU seconds).

    Raises :class:`_Failed` when the child fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=stdout if stdout is not None else subprocess.PIPE)
    out = proc.stdout.read() if proc.stdout is not None else b""
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise _Failed(f"{argv[0]} failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 1024, out, usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except _Failed as e:
        raise SystemExit(str(e)) from e


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hive_merge")
    parser.add_argument("--scale", type=float, default=1.0, help="1.0 = ~100 MB base")
    parser.add_argument(
        "--base-mb", type=float, help="base of about this many MB; the delta stays scale 1.0"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of new and baseline")
    old = parser.add_mutually_exclusive_group()
    old.add_argument("--old", dest="old", action="store_true", default=None)
    old.add_argument("--no-old", dest="old", action="store_false")
    parser.add_argument("--profile", action="store_true", help="cProfile the new merge")
    parser.add_argument("--keep", type=Path, help="write the hives here, keep and reuse them")
    parser.add_argument("--generate-into", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--delta-scale", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    base_scale = args.scale if args.base_mb is None else args.base_mb / 100.0
    delta_scale = args.scale if args.base_mb is None else 1.0
    if args.generate_into is not None:
        _generate(args.generate_into, base_scale, args.delta_scale or delta_scale)
        return 0
    run_old = args.old if args.old is not None else base_scale <= 1.5
    work = Path(args.keep or tempfile.mkdtemp(prefix="hive-merge-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(work, base_scale, delta_scale, args.repeat, run_old, args.profile)
    finally:
        if args.keep is None:
            shutil.rmtree(work)


def _generate(work: Path, base_scale: float, delta_scale: float) -> None:
    """Write both hives into ``work``; print their key counts as JSON (runs in a child)."""
    import gc

    from cimsnap.devtools.synthetic_hive import count_keys, software_base, software_delta
    from cimsnap.hive.writer import write_hive

    gc.disable()
    base = software_base(base_scale)
    delta, _plan = software_delta(base, delta_scale)
    (work / "Software_Delta").write_bytes(write_hive(delta))
    (work / "SOFTWARE_BASE").write_bytes(write_hive(base))
    counts = [count_keys(base.root), count_keys(delta.root)]
    (work / "counts.json").write_text(json.dumps(counts))


def _bench(
    work: Path, base_scale: float, delta_scale: float, repeat: int, run_old: bool, profile: bool
) -> int:
    from cimsnap.hive.query import os_build_number

    base_path, delta_path = work / "SOFTWARE_BASE", work / "Software_Delta"
    py = sys.executable
    counts_path = work / "counts.json"
    if counts_path.exists() and base_path.exists() and delta_path.exists():
        print(f"reusing the hives in {work}")
    else:
        # Generated in a child so that this process stays small: a child's peak RSS counts
        # the parent's pages it was forked from.
        generate = ["--generate-into", str(work), "--scale", str(base_scale)]
        gen_wall, _r, _o, _c = _run(
            [py, "-m", "benchmarks.hive_merge", *generate, "--delta-scale", str(delta_scale)]
        )
        print(f"generated in {gen_wall:.1f} s (not timed below)")
    base_keys, delta_keys = json.loads(counts_path.read_text())
    base_size = base_path.stat().st_size
    print(
        f"base:  {base_size / 1e6:7.1f} MB, {base_keys:,} keys\n"
        f"delta: {delta_path.stat().st_size / 1e6:7.1f} MB, {delta_keys:,} keys"
    )
    print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    out = work / "SOFTWARE_MERGED"
    hivexml = shutil.which("hivexml")
    new_runs: list[tuple[float, float, float]] = []
    base_runs: list[tuple[float, float, float]] = []
    out_size = 0
    for _ in range(max(1, repeat)):
        out.unlink(missing_ok=True)
        wall, rss, _o, cpu = _run(
            [py, "-m", "cimsnap", "hive", "merge", str(base_path), str(delta_path), str(out)]
        )
        new_runs.append((wall, cpu, rss))
        out_size = out.stat().st_size
        if hivexml is not None:
            try:
                with open(os.devnull, "wb") as null:
                    b_wall, b_rss, _o, b_cpu = _run([hivexml, str(base_path)], stdout=null.fileno())
            except _Failed as e:
                print(f"baseline: hivexml cannot walk this base ({e}); no ratio")
                hivexml = None
            else:
                base_runs.append((b_wall, b_cpu, b_rss))
    build = os_build_number(out)
    new_wall, new_cpu, new_rss = _medians(new_runs)
    print(
        f"new (incremental) merge: {new_wall:6.2f} s wall ({new_cpu:.2f} s CPU), "
        f"{base_size / 1e6 / new_wall:,.0f} MB/s of base, peak RSS {new_rss:,.0f} MB "
        f"(max {max(r for _w, _c, r in new_runs):,.0f}), median of {len(new_runs)}"
    )
    print(
        f"  output {out_size / 1e6:.1f} MB = base {base_size / 1e6:.1f} MB "
        f"{(out_size - base_size) / 1e6:+.2f} MB ({out_size / base_size:.3f}x); "
        f"CurrentBuild {build}"
    )
    if profile:
        out.unlink()
        _w, _r, raw, _c = _run(
            [py, "-c", _PROFILE, str(base_path), str(delta_path), str(out), str(work / "prof")]
        )
        print(raw.decode())
    old_wall = old_cpu = 0.0
    if run_old:
        old_out = work / "SOFTWARE_MERGED_OLD"
        old_out.unlink(missing_ok=True)
        old_wall, old_rss, raw, old_cpu = _run(
            [py, "-c", _OLD, str(base_path), str(delta_path), str(old_out)]
        )
        phases = ", ".join(f"{name} {secs:.2f} s" for name, secs in json.loads(raw).items())
        print(
            f"old (whole-tree) merge:  {old_wall:6.2f} s wall ({old_cpu:.2f} s CPU), peak RSS "
            f"{old_rss:,.0f} MB, output {old_out.stat().st_size / 1e6:.1f} MB\n"
            f"  phases: {phases}"
        )
        print(f"new / old: {new_wall / old_wall:.2f}x wall, {new_cpu / old_cpu:.2f}x CPU")
        old_out.unlink()
    else:
        print("old (whole-tree) merge: skipped (--old to run it)")
    if not base_runs:
        print("baseline: no hivexml run (not installed, or it cannot walk this base); no ratio")
        ok = new_rss < TARGET_RSS_MB
        print(f"RSS target (< {TARGET_RSS_MB:.0f} MB): {'met' if ok else 'MISSED'}")
        return 0
    b_wall, b_cpu, b_rss = _medians(base_runs)
    print(
        f"baseline hivexml (open + walk base, C): {b_wall:6.2f} s wall ({b_cpu:.2f} s CPU), "
        f"peak RSS {b_rss:,.0f} MB, median of {len(base_runs)}"
    )
    print(
        f"ratio new merge / hivexml walk: {new_wall / b_wall:.2f}x wall, "
        f"{new_cpu / max(b_cpu, 1e-3):.2f}x CPU"
    )
    if run_old:
        print(f"ratio old merge / hivexml walk: {old_wall / b_wall:.2f}x wall")
    ok = new_wall <= TARGET_RATIO * b_wall and new_rss < TARGET_RSS_MB
    verdict = "met" if ok else "MISSED (see the load average: wall time on a busy machine)"
    print(f"targets (<= {TARGET_RATIO:.1f}x hivexml, < {TARGET_RSS_MB:.0f} MB RSS): {verdict}")
    return 0


def _medians(runs: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    return (
        statistics.median(r[0] for r in runs),
        statistics.median(r[1] for r in runs),
        statistics.median(r[2] for r in runs),
    )


if __name__ == "__main__":
    sys.exit(main())
