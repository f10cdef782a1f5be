"""Benchmark: in-process Snapshotter latency against the storage floor measured in this run.

    python -m benchmarks.snapshots_inproc [--ops N] [--list-size M] [--layers L] [--dir PATH]

What is measured (fresh root under ``--dir``, default the system temp dir):

* ``Stat`` p50/p99 over N calls, against the floor: one raw ``SELECT`` by key on the same
  database with a fresh connection-less loop (``sqlite3`` directly).
* ``Prepare``/``Remove`` p50/p99 (N each), against the floor: one raw ``INSERT`` + ``COMMIT``
  with ``journal_mode=WAL, synchronous=FULL`` on a scratch database (one WAL fsync), i.e.
  what any durable metadata change costs on this disk.
* ``Commit`` of an ``extract`` snapshot whose CIM was pre-written (pure metadata plus the
  fsync of the layer's files), and ``Commit`` of a never-written active (metadata only:
  its empty CIM is built later), against the same floor.
* ``View`` of that empty layer right after its Commit, which must build the empty forked
  CIM first (region files, the ``.cim``, their fsyncs), against the same floor.
* ``Remove`` of the views and of the committed empty layers (directory and own CIM files
  destroyed).
* ``List`` of M snapshots (default 10,000, two labels each, created directly through the
  metastore), best and median of 5, against a raw ``SELECT`` of the same rows.
* ``Cleanup`` of a root holding L committed layers (default 1,000, in chains of 10, each
  with its empty CIM built) and nothing to reclaim, p50 of 20: containerd's garbage
  collector calls it after every collection. Against the floor of any complete sweep:
  listing ``snapshots/`` and ``cim-layers/`` once each.

Prints each figure, its ratio to the floor, and the server helper's targets (p50 Stat
< 0.5 ms, Prepare/Commit < 3 ms, List of 10,000 < 300 ms). The gRPC edge is measured by
``benchmarks/snapshots_api.py``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cimsnap.cim import build_from_directory
from cimsnap.snapshots.snapshotter import Snapshotter
from cimsnap.store import Kind, Store, create_snapshot
from cimsnap.wclayer.cim_writer import while_directory_busy

TARGETS_MS = {"Stat": 0.5, "Prepare": 3.0, "Commit": 3.0, "List": 300.0}


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def durable_insert_floor(directory: Path, n: int) -> list[float]:
    conn = sqlite3.connect(directory / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, key TEXT UNIQUE)")
    samples = []
    for i in range(n):

        def one(i: int = i) -> None:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (key) VALUES (?)", (f"k{i}",))
            conn.execute("COMMIT")

        samples.append(timed(one))
    conn.close()
    return samples


def report(name: str, samples: list[float], floor: float) -> None:
    p50, p99 = pct(samples, 0.5), pct(samples, 0.99)
    target = TARGETS_MS.get(name.split()[0])
    line = f"{name:<28} p50 {p50:8.3f} ms  p99 {p99:8.3f} ms  x{p50 / floor:6.1f} of floor"
    if target is not None:
        line += f"  target {target} ms ({p50 / target:.2f} of it)"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument("--list-size", type=int, default=10_000)
    parser.add_argument("--layers", type=int, default=1000, help="committed layers for Cleanup")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cimsnap-bench-", dir=args.dir))
    try:
        run(work, args.ops, args.list_size)
        cleanup(work / "cleanup-root", args.layers)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(work: Path, n: int, list_size: int) -> None:
    floor_write = durable_insert_floor(work, n)
    write_floor = pct(floor_write, 0.5)
    print(f"floor: durable SQLite insert (WAL, FULL) p50 {write_floor:.3f} ms")

    sn = Snapshotter(work / "root")
    base_mounts = sn.prepare("base-active")
    sn.commit("base", "base-active")

    prepare = [timed(lambda i=i: sn.prepare(f"ns/{i}/k", "base", {"a": "b"})) for i in range(n)]
    stat = [timed(lambda i=i: sn.stat(f"ns/{i}/k")) for i in range(n)]
    remove = [timed(lambda i=i: sn.remove(f"ns/{i}/k")) for i in range(n)]

    db = sqlite3.connect(work / "root" / "metadata.db")
    raw_stat = [
        timed(lambda: db.execute("SELECT * FROM snapshots WHERE key = ?", ("base",)).fetchone())
        for _ in range(n)
    ]
    stat_floor = pct(raw_stat, 0.5)
    print(f"floor: raw SELECT by key p50 {stat_floor:.3f} ms")

    # Commit of an extract snapshot whose CIM the differ already wrote (fork of base).
    src = work / "empty"
    src.mkdir()
    base_cim = Path(base_mounts[0].options[1].removeprefix("cimpath="))
    extract_commit = []
    empty_commit = []
    needed_view = []
    for i in range(max(10, n // 10)):
        key = f"ns/{i}/extract-{i} sha256:{i}"
        mounts = sn.prepare(key, "base")
        cim = Path(mounts[0].options[1].removeprefix("cimpath="))
        while_directory_busy(lambda c=cim: build_from_directory(src, c, parent=base_cim), 60)
        extract_commit.append(timed(lambda k=key, i=i: sn.commit(f"ns/{i}/sha256:{i}", k)))
        sn.prepare(f"scratch-{i}", "base")
        empty_commit.append(timed(lambda i=i: sn.commit(f"empty-{i}", f"scratch-{i}")))
        needed_view.append(timed(lambda i=i: sn.view(f"view-{i}", f"empty-{i}")))
        sn.remove(f"view-{i}")

    remove_layer = [timed(lambda i=i: sn.remove(f"empty-{i}")) for i in range(len(empty_commit))]

    report("Stat", stat, stat_floor)
    report("Prepare", prepare, write_floor)
    report("Remove", remove, write_floor)
    report("Commit (extract, prewritten)", extract_commit, write_floor)
    report("Commit (empty, deferred)", empty_commit, write_floor)
    report("View (builds the empty CIM)", needed_view, write_floor)
    report("Remove (committed layer)", remove_layer, write_floor)
    sn.close()

    list_root = work / "list-root"
    list_root.mkdir()
    with Store(list_root / "metadata.db") as store, store.write() as tx:
        for i in range(list_size):
            create_snapshot(tx, Kind.ACTIVE, f"default/{i}/k", "", {"a": str(i), "b": "x"}, i)
    with Snapshotter(list_root) as big:
        runs = [timed(big.list) for _ in range(5)]
        count = len(big.list())
    raw = sqlite3.connect(list_root / "metadata.db")
    raw_runs = [timed(lambda: raw.execute("SELECT * FROM snapshots").fetchall()) for _ in range(5)]
    best, median = min(runs), statistics.median(runs)
    print(
        f"List of {count:<19} best {best:8.1f} ms  median {median:8.1f} ms  "
        f"x{best / min(raw_runs):6.1f} of raw SELECT ({min(raw_runs):.1f} ms)  "
        f"target {TARGETS_MS['List']} ms ({best / TARGETS_MS['List']:.2f} of it)"
    )
    print(f"(disk: {os.statvfs(work).f_bsize}-byte blocks at {work})")


def cleanup(root: Path, layers: int) -> None:
    """Cleanup with ``layers`` committed layers and nothing to reclaim, against listings."""
    with Snapshotter(root, layer_build_delay=0.0) as sn:
        for i in range(layers):
            parent = "" if i % 10 == 0 else f"ns/{i - 1}/layer"
            sn.prepare(f"ns/{i}/active", parent)
            sn.commit(f"ns/{i}/layer", f"ns/{i}/active")
            if i % 10 == 9:
                sn.wait_layers()  # the next chain forks from built CIMs
        sn.wait_layers()
        sn.cleanup()  # reclaims the scratch/ trees of the commits, remembers the headers
        runs = [timed(sn.cleanup) for _ in range(20)]

    def listings() -> None:
        for directory in (root / "snapshots", root / "snapshots" / "cim-layers"):
            with os.scandir(directory) as entries:
                for entry in entries:
                    entry.is_file(follow_symlinks=False)

    floor = pct([timed(listings) for _ in range(20)], 0.5)
    entries = len(os.listdir(root / "snapshots" / "cim-layers"))
    report(f"Cleanup ({layers} layers)", runs, floor)
    print(f"floor: listing snapshots/ and cim-layers/ ({entries} entries) p50 {floor:.3f} ms")


if __name__ == "__main__":
    main()
