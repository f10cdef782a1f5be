"""Benchmark: cimsnap against containerd's built-in ``native`` snapshotter, through containerd.

    python -m benchmarks.ops_containerd [--cycles N] [--ls-count M] [--dir PATH]

Both snapshotters are driven through the same containerd 1.6 daemon (Debian's package,
private root and socket, started here) over its Snapshots API on containerd's socket, with
cimsnap's generated gRPC stubs: exactly the calls containerd's clients make, including
containerd's metadata layer (bolt) in front of both. cimsnap runs as a real ``cimsnap
serve`` process registered as snapshot proxy ``cimsnap``.

Workload, interleaved in one run (each cycle rotates which snapshotter goes first, so
drift and caches hit both alike):

* cycle, N times (default 500) per snapshotter: ``Prepare(k_i, parent=base)``,
  ``Stat(k_i)``, ``Commit(n_i, k_i)``, ``Remove(n_i)``. ``base`` is one committed layer
  per snapshotter. Nothing writes the snapshot between Prepare and Commit, so for cimsnap
  the Commit records a pending empty layer (metadata only); its CIM, an empty fork of the
  parent's, is built in the background about a second later, or at once by the first
  call that needs it. Here Remove comes first, so those builds never run. All calls carry a lease
  (as containerd's unpacker does), so the garbage collector never removes a snapshot
  under the benchmark; Remove through containerd deletes containerd's record and the
  backend Remove follows from the GC, for both.
* what a deferred build costs when the layer is needed at once: ``--needed`` cycles
  (default 100) per snapshotter of ``Prepare``, ``Commit``, then a timed ``View`` of the
  new layer (for cimsnap it builds the empty CIM before answering; for ``native`` it is a
  plain View), ``Remove`` of both. Printed without a target, beside Commit + View.
* the floor of every call: the same cycle through a third proxy snapshotter, ``floor``
  (``benchmarks/_floor_snapshotter.py``), a grpcio server in Python that stores nothing
  and answers on its event loop. containerd -> cimsnap is one extra gRPC hop to a Python
  server; no snapshotter served that way can answer faster than ``floor``, so
  ``floor/native`` is the best ratio any Python proxy can reach on this machine, and
  ``cimsnap - floor`` is what cimsnap's own work (files, SQLite) adds.
* a gRPC health ``Check`` sent straight to cimsnap's socket (by this Python client).
* ``ctr snapshots --snapshotter X ls`` with M snapshots (default 1,000) in a namespace of
  their own; best and median of 5 runs.

Prints p50/p99 per call for both, the cimsnap/native ratio of the p50s and its target
(<= 1.5x for Prepare, Commit and Remove; <= 2.5x for Stat), the floor's p50 and ratio,
the range of the ratios over the five consecutive fifths of the run (this machine's
drift), and the ls times and ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from benchmarks.snapshots_api import cimsnap_serve
from cimsnap.api.containerd.services.leases.v1 import leases_pb2, leases_pb2_grpc
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from tests.integration.containerd_harness import Containerd, running_containerd

SNAPSHOTTERS = ("native", "cimsnap")
#: The do-nothing Python proxy (``benchmarks._floor_snapshotter``), cycled beside the two.
FLOOR = "floor"
TARGETS = {"Prepare": 1.5, "Stat": 2.5, "Commit": 1.5, "Remove": 1.5}
NAMESPACE = "bench"


def _ms(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Client:
    """Snapshots calls through containerd's socket, in one namespace and lease."""

    def __init__(self, channel: grpc.Channel, namespace: str, lease: str) -> None:
        self.stub = pb_grpc.SnapshotsStub(channel)
        self.md = (("containerd-namespace", namespace), ("containerd-lease", lease))

    def prepare(self, sn: str, key: str, parent: str = "") -> None:
        req = pb.PrepareSnapshotRequest(snapshotter=sn, key=key, parent=parent)
        self.stub.Prepare(req, metadata=self.md, timeout=60)

    def stat(self, sn: str, key: str) -> None:
        self.stub.Stat(pb.StatSnapshotRequest(snapshotter=sn, key=key), metadata=self.md)

    def view(self, sn: str, key: str, parent: str) -> None:
        req = pb.ViewSnapshotRequest(snapshotter=sn, key=key, parent=parent)
        self.stub.View(req, metadata=self.md, timeout=60)

    def commit(self, sn: str, name: str, key: str) -> None:
        req = pb.CommitSnapshotRequest(snapshotter=sn, name=name, key=key)
        self.stub.Commit(req, metadata=self.md, timeout=60)

    def remove(self, sn: str, key: str) -> None:
        req = pb.RemoveSnapshotRequest(snapshotter=sn, key=key)
        self.stub.Remove(req, metadata=self.md, timeout=60)


def create_lease(channel: grpc.Channel, namespace: str, lease: str) -> None:
    stub = leases_pb2_grpc.LeasesStub(channel)
    stub.Create(leases_pb2.CreateRequest(id=lease), metadata=(("containerd-namespace", namespace),))


def block_ratios(samples: list[float], baseline: list[float], blocks: int = 5) -> list[float]:
    """The ratio of p50s in each of ``blocks`` consecutive stretches of the run (the cycles
    are interleaved, so each stretch compares calls made at the same time): how much of a
    ratio is the machine's drift rather than the code."""
    size = max(1, len(samples) // blocks)
    return [
        statistics.median(samples[i : i + size]) / statistics.median(baseline[i : i + size])
        for i in range(0, size * blocks, size)
        if samples[i : i + size]
    ]


def run_cycles(client: Client, cycles: int) -> dict[str, dict[str, list[float]]]:
    names = (*SNAPSHOTTERS, FLOOR)
    samples: dict[str, dict[str, list[float]]] = {sn: {} for sn in names}
    for sn in names:
        client.prepare(sn, "base-active")
        client.commit(sn, "base", "base-active")
    for i in range(cycles):
        order = names[i % 3 :] + names[: i % 3]
        for sn in order:
            s = samples[sn]
            key, name = f"active-{i}", f"layer-{i}"
            s.setdefault("Prepare", []).append(_ms(lambda: client.prepare(sn, key, "base")))  # noqa: B023
            s.setdefault("Stat", []).append(_ms(lambda: client.stat(sn, key)))  # noqa: B023
            s.setdefault("Commit", []).append(_ms(lambda: client.commit(sn, name, key)))  # noqa: B023
            s.setdefault("Remove", []).append(_ms(lambda: client.remove(sn, name)))  # noqa: B023
    return samples


def needed_cycles(client: Client, cycles: int) -> dict[str, dict[str, list[float]]]:
    """Commit of an empty layer, then a View that needs its CIM at once (see the docstring)."""
    samples: dict[str, dict[str, list[float]]] = {sn: {} for sn in SNAPSHOTTERS}
    for i in range(cycles):
        order = SNAPSHOTTERS if i % 2 == 0 else SNAPSHOTTERS[::-1]
        for sn in order:
            s = samples[sn]
            key, name, view = f"needed-{i}", f"needed-layer-{i}", f"needed-view-{i}"
            client.prepare(sn, key, "base")
            s.setdefault("Commit", []).append(_ms(lambda: client.commit(sn, name, key)))  # noqa: B023
            s.setdefault("View", []).append(_ms(lambda: client.view(sn, view, name)))  # noqa: B023
            client.remove(sn, view)
            client.remove(sn, name)
    return samples


@contextlib.contextmanager
def _floor(socket: Path) -> Iterator[str]:
    """``benchmarks._floor_snapshotter`` serving on ``socket`` (its address)."""
    process = subprocess.Popen([sys.executable, "-m", "benchmarks._floor_snapshotter", str(socket)])
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("benchmarks._floor_snapshotter did not start")
            time.sleep(0.05)
        yield str(socket)
    finally:
        process.terminate()
        process.wait(30)


def health_floor(address: str, cycles: int) -> list[float]:
    with grpc.insecure_channel(f"unix:{address}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        stub.Check(request)
        return [_ms(lambda: stub.Check(request, timeout=10)) for _ in range(cycles)]


def ls_times(containerd: Containerd, client: Client, count: int) -> dict[str, list[float]]:
    names = (*SNAPSHOTTERS, FLOOR)
    for sn in names:
        for i in range(count):
            client.prepare(sn, f"ls-{i}")
    times: dict[str, list[float]] = {sn: [] for sn in names}
    for _ in range(5):
        for sn in names:
            cmd = [
                "ctr",
                "--address",
                containerd.socket,
                "--namespace",
                "ls",
                "snapshots",
                "--snapshotter",
                sn,
                "ls",
            ]
            start = time.perf_counter()
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            times[sn].append((time.perf_counter() - start) * 1000)
            rows = len(out.stdout.strip().splitlines()) - 1
            if rows != count:
                raise SystemExit(f"ctr ls {sn}: {rows} rows, expected {count}")
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--ls-count", type=int, default=1000)
    parser.add_argument("--needed", type=int, default=100, help="cycles needing the layer")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (short path)")
    args = parser.parse_args()
    missing = [tool for tool in ("containerd", "ctr") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        raise SystemExit(
            f"benchmarks.ops_containerd needs root and Debian's containerd package "
            f"(missing: {', '.join(missing) or 'root'}; scripts/system-deps.sh installs it)"
        )
    base = Path(tempfile.mkdtemp(prefix="cs-ops-", dir=args.dir or "/tmp"))
    try:
        with (
            cimsnap_serve(base / "cimsnap-root", base) as cimsnap_address,
            _floor(base / "floor.sock") as floor_socket,
            running_containerd(
                base, cimsnap_address, wait_for_gc=False, more_snapshotters={FLOOR: floor_socket}
            ) as containerd,
            grpc.insecure_channel(f"unix:{containerd.socket}") as channel,
        ):
            create_lease(channel, NAMESPACE, "bench")
            create_lease(channel, "ls", "bench")
            client = Client(channel, NAMESPACE, "bench")
            floor = health_floor(cimsnap_address, 50)  # warm-up of the direct channel
            samples = run_cycles(client, args.cycles)
            needed = needed_cycles(client, args.needed) if args.needed else None
            floor = health_floor(cimsnap_address, args.cycles)
            ls = ls_times(containerd, Client(channel, "ls", "bench"), args.ls_count)
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print(f"containerd 1.6 Snapshots API, {args.cycles} cycles per snapshotter, interleaved")
    print(
        f"{'call':<8} {'native p50':>11} {'p99':>8} {'cimsnap p50':>12} {'p99':>8} "
        f"{'ratio':>7} {'target':>7}        {'floor p50':>10} {'ratio':>7} {'cimsnap-floor':>14}"
    )
    spreads = []
    for call, target in TARGETS.items():
        nat, cim = samples["native"][call], samples["cimsnap"][call]
        flo = statistics.median(samples[FLOOR][call])
        ratio = statistics.median(cim) / statistics.median(nat)
        verdict = "ok" if ratio <= target else "MISSED"
        print(
            f"{call:<8} {statistics.median(nat):>9.2f}ms {_p(nat, 0.99):>6.2f}ms "
            f"{statistics.median(cim):>10.2f}ms {_p(cim, 0.99):>6.2f}ms "
            f"{ratio:>6.2f}x {target:>5.1f}x {verdict:<6} {flo:>8.2f}ms "
            f"{flo / statistics.median(nat):>6.2f}x {statistics.median(cim) - flo:>+12.2f}ms"
        )
        cim_blocks = block_ratios(cim, nat)
        floor_blocks = block_ratios(samples[FLOOR][call], nat)
        spreads.append(
            f"{call} {min(cim_blocks):.2f}-{max(cim_blocks):.2f}x "
            f"(floor {min(floor_blocks):.2f}-{max(floor_blocks):.2f}x)"
        )
    print(f"ratio in each fifth of the run: {'; '.join(spreads)}")
    print(
        "floor: the same calls through containerd to a Python grpcio snapshotter that stores "
        "nothing (the best any Python proxy can do here); gRPC health Check straight to "
        f"cimsnap's socket from this client, p50 {statistics.median(floor):.2f} ms"
    )
    if needed is not None:
        nat_c, cim_c = needed["native"]["Commit"], needed["cimsnap"]["Commit"]
        nat_v, cim_v = needed["native"]["View"], needed["cimsnap"]["View"]
        nat_sum = statistics.median([c + v for c, v in zip(nat_c, nat_v, strict=True)])
        cim_sum = statistics.median([c + v for c, v in zip(cim_c, cim_v, strict=True)])
        print(
            f"layer needed at once ({args.needed} cycles, no target): View right after the "
            f"Commit, native p50 {statistics.median(nat_v):.2f} ms, cimsnap "
            f"{statistics.median(cim_v):.2f} ms (builds the empty CIM); Commit + View native "
            f"{nat_sum:.2f} ms, cimsnap {cim_sum:.2f} ms, {cim_sum / nat_sum:.2f}x"
        )
    nat_ls, cim_ls = ls["native"], ls["cimsnap"]
    print(
        f"ctr snapshots ls, {args.ls_count} snapshots: native best {min(nat_ls):.0f} ms "
        f"(median {statistics.median(nat_ls):.0f}), cimsnap best {min(cim_ls):.0f} ms "
        f"(median {statistics.median(cim_ls):.0f}); ratio of medians "
        f"{statistics.median(cim_ls) / statistics.median(nat_ls):.2f}x; floor median "
        f"{statistics.median(ls[FLOOR]):.0f} ms (containerd 1.6 Stats every snapshot of a "
        "proxy one call at a time)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
