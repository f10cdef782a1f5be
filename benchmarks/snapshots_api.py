"""Benchmark: the Snapshots API over the unix socket versus direct snapshotter calls.

    python -m benchmarks.snapshots_api [--cycles N] [--list-size M] [--dir PATH]

Workload (same run, same disk, fresh roots):

* cycle, N times (default 2,000): ``Prepare(default/<i>/extract-<i> sha256:<i>, parent)``,
  ``Mounts``, then (untimed) the layer CIM is written at the mount's ``cimpath`` as the
  differ's Apply would, then ``Commit(default/<i>/sha256:<i>)``, ``Stat``; parents form
  chains of 8 layers (like small images); afterwards ``Remove`` of every committed
  snapshot, children first. This is containerd's unpack sequence, where Commit is pure
  metadata. Between the two, a "Stat sweep" Stats every layer back to back, as containerd
  does for ``ctr snapshots ls``. ``--commit-converts`` skips the Apply step instead, so
  that Commit itself converts the never-written snapshot into an empty CIM (cimsnap's
  extension).
* list: M snapshots (default 10,000, two labels each) created directly, then ``List`` with
  no filter, fully materialised by the client; the best and median of 5 runs.

Measured twice: through gRPC (``cimsnap.daemon.client.SnapshotsClient`` -> unix socket -> a real
``cimsnap serve`` process -> ``Snapshotter``) and, as the baseline, the same calls on a
``Snapshotter`` in this process. The difference is the cost of the gRPC edge (both sides
are Python). The metastore runs with ``synchronous=FULL`` (every Prepare/Commit/Remove
fsyncs the WAL).

Two floors are measured in the same run, because no implementation can beat them: one
``fsync`` of a small append in the state directory (every durable Prepare/Commit/Remove
pays at least one with ``synchronous=FULL``), and one gRPC health ``Check`` over the same
socket, back to back (the Python transport's round trip, which bounds the Stat sweep from
below; interleaved with other calls, as in the cycle, the same Check costs more).

The Python client adds its own cost to every figure (an empty call takes 0.3-0.5 ms on a
2-core machine). containerd's client is grpc-go, so when Debian's ``golang-go`` and
``golang-google-grpc-dev`` are installed, ``benchmarks/gostat`` is built and Stat is also
measured from Go, against a Go health Check on the same server.

Prints p50/p99 latency per RPC for both, the gRPC/direct ratio, the ratios against the
floors, and the ratio against the targets: p50 Stat < 0.5 ms; p50 Prepare and Commit
< 3 ms; List of 10,000 < 300 ms.
(containerd's ``native`` snapshotter through ``ctr`` was not used as a baseline: one
process per call costs far more than the call.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cimsnap.cim import build_from_directory
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import SnapshotterAPI
from cimsnap.snapshots.snapshotter import Mount, Snapshotter
from cimsnap.wclayer.cim_writer import while_directory_busy
from tests.grpc_harness import serving_process

TARGETS_MS = {"Stat": 0.5, "Stat sweep": 0.5, "Prepare": 3.0, "Commit": 3.0}
LIST_TARGET_MS = 300.0
CHAIN = 8


@contextlib.contextmanager
def cimsnap_serve(root: Path, sock_dir: Path) -> Iterator[str]:
    """A real ``cimsnap serve`` process on ``root`` with its embedded defaults, as containerd
    would talk to it; yields its address (a socket in a fresh directory under ``sock_dir``).

    The server runs in its own process so that the client's Python work (this process)
    and the server's do not share one interpreter lock; containerd's side is Go.
    """
    own = Path(tempfile.mkdtemp(prefix="s", dir=sock_dir))
    with serving_process(root, own, config="") as (address, _process):
        yield address


def _timed(
    samples: dict[str, list[float]], name: str, call: Callable[..., object], *args: object
) -> None:
    start = time.perf_counter()
    call(*args)
    samples.setdefault(name, []).append((time.perf_counter() - start) * 1000)


def apply_empty_layer(mounts: list[Mount], empty_dir: Path) -> None:
    """Write an empty layer CIM where the mount says, as the differ's Apply would."""
    options = dict(o.split("=", 1) for o in mounts[0].options if "=" in o)
    parents = options.get("parentCimPaths")
    parent = Path(json.loads(parents)[0]) if parents else None
    while_directory_busy(
        lambda: build_from_directory(empty_dir, Path(options["cimpath"]), parent=parent), 60
    )


def run_cycles(
    api: SnapshotterAPI, cycles: int, empty_dir: Path, *, apply: bool
) -> dict[str, list[float]]:
    """The Prepare/Mounts/(Apply)/Commit/Stat cycle, then Remove; latencies in ms."""
    samples: dict[str, list[float]] = {}
    names: list[str] = []
    for i in range(cycles):
        key = f"default/{2 * i}/extract-{i} sha256:{i:064x}"
        name = f"default/{2 * i + 1}/sha256:{i:064x}"
        parent = names[-1] if i % CHAIN else ""
        labels = {"containerd.io/snapshot.ref": f"sha256:{i:064x}"}
        _timed(samples, "Prepare", api.prepare, key, parent, labels)
        start = time.perf_counter()
        mounts = api.mounts(key)
        samples.setdefault("Mounts", []).append((time.perf_counter() - start) * 1000)
        if apply:
            apply_empty_layer(mounts, empty_dir)
        _timed(samples, "Commit", api.commit, name, key, labels)
        _timed(samples, "Stat", api.stat, name)
        names.append(name)
    # Back-to-back Stats of every layer: what ``ctr snapshots ls/info`` makes containerd
    # send (one backend Stat per key, §2.4 of the integration notes).
    for name in names:
        _timed(samples, "Stat sweep", api.stat, name)
    for name in reversed(names):
        _timed(samples, "Remove", api.remove, name)
    return samples


def fsync_floor(directory: Path, count: int = 200) -> list[float]:
    """Latency of appending 100 bytes to a file in ``directory`` and fsyncing it, in ms."""
    samples = []
    fd = os.open(directory / "fsync-probe", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(count):
            start = time.perf_counter()
            os.write(fd, b"x" * 100)
            os.fsync(fd)
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        os.close(fd)
    return samples


def transport_floor(address: str, count: int = 2000) -> list[float]:
    """Latency of a gRPC health Check on the server's socket, in ms."""
    with grpc.insecure_channel(parse_address(address).grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        samples = []
        for _ in range(count):
            start = time.perf_counter()
            stub.Check(request, timeout=10)
            samples.append((time.perf_counter() - start) * 1000)
    return samples


GOSTAT_SOURCE = Path(__file__).resolve().parent / "gostat" / "main.go"
DEBIAN_GOPATH = Path("/usr/share/gocode")


def build_gostat(into: Path) -> Path | None:
    """Build ``benchmarks/gostat`` with Debian's Go and grpc-go; None if they are absent."""
    go = shutil.which("go")
    if go is None or not (DEBIAN_GOPATH / "src/google.golang.org/grpc").is_dir():
        return None
    package = into / "src" / "gostat"
    package.mkdir(parents=True)
    shutil.copy(GOSTAT_SOURCE, package / "main.go")
    binary = into / "gostat"
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{into}:{DEBIAN_GOPATH}")
    env.setdefault("GOCACHE", str(into / "cache"))
    subprocess.run([go, "build", "-o", str(binary), "gostat"], check=True, env=env, cwd=into)
    return binary


def gostat(binary: Path, address: str, *call: str, count: int = 5000) -> dict[str, float]:
    """Run the Go client; returns its p50/p99 in ms."""
    out = subprocess.run(
        [str(binary), address, str(count), *call], check=True, capture_output=True, text=True
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def go_client_section(base: Path, sock_dir: Path) -> None:
    """Stat as containerd's client stack (grpc-go) sees it, against a Go health Check."""
    binary = build_gostat(base / "go")
    if binary is None:
        print(
            "Go client: skipped (install Debian's golang-go and golang-google-grpc-dev to "
            "measure Stat with containerd's client stack)"
        )
        return
    with Snapshotter(base / "go-root") as sn:
        sn.prepare("default/1/k", labels={"containerd.io/snapshot.ref": "sha256:00"})
    with cimsnap_serve(base / "go-root", sock_dir) as address:
        floor = gostat(binary, address, "health")
        stat = gostat(binary, address, "stat", "default/1/k")
    print(
        f"Go client (grpc-go, as containerd): Stat p50 {stat['p50']:.3f} ms, "
        f"p99 {stat['p99']:.3f} ms; health Check p50 {floor['p50']:.3f} ms; "
        f"Stat / health {stat['p50'] / floor['p50']:.2f}; "
        f"Stat / target {stat['p50'] / TARGETS_MS['Stat']:.2f}"
    )


def populate(root: Path, count: int) -> None:
    with Snapshotter(root) as sn:
        for i in range(count):
            sn.prepare(f"default/{i}/k{i}", labels={"a": str(i), "containerd.io/gc.root": "x"})


def time_list(api: SnapshotterAPI, expected: int) -> list[float]:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        got = len(api.list())
        times.append((time.perf_counter() - start) * 1000)
        if got != expected:
            raise SystemExit(f"List returned {got} snapshots, expected {expected}")
    return times


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--list-size", type=int, default=10_000)
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory")
    parser.add_argument(
        "--commit-converts",
        action="store_true",
        help="skip the Apply step, so Commit converts each snapshot into an empty CIM",
    )
    args = parser.parse_args()
    apply = not args.commit_converts
    base = Path(tempfile.mkdtemp(prefix="cimsnap-bench-", dir=args.dir))
    sock_dir = Path(tempfile.mkdtemp(prefix="cs-bench-", dir="/tmp"))
    empty_dir = base / "empty-layer"
    empty_dir.mkdir()
    try:
        fsync_ms = statistics.median(fsync_floor(base))
        with Snapshotter(base / "direct") as direct:
            direct_samples = run_cycles(direct, args.cycles, empty_dir, apply=apply)
        with (
            cimsnap_serve(base / "grpc", sock_dir) as address,
            SnapshotsClient(address) as client,
        ):
            grpc_samples = run_cycles(client, args.cycles, empty_dir, apply=apply)
            rtt_ms = statistics.median(transport_floor(address))
        mode = "Commit after Apply (metadata only)" if apply else "Commit converts (empty CIM)"
        print(f"cycles: {args.cycles} (chains of {CHAIN}), {mode}, latency in ms")
        print(f"{'RPC':10} {'gRPC p50':>9} {'p99':>8} {'direct p50':>11} {'p99':>8} {'ratio':>6}")
        for rpc in ("Prepare", "Mounts", "Commit", "Stat", "Stat sweep", "Remove"):
            g, d = grpc_samples[rpc], direct_samples[rpc]
            ratio = statistics.median(g) / statistics.median(d)
            print(
                f"{rpc:10} {pct(g, 0.5):9.3f} {pct(g, 0.99):8.3f} "
                f"{pct(d, 0.5):11.3f} {pct(d, 0.99):8.3f} {ratio:6.1f}x"
            )

        populate(base / "list", args.list_size)
        with Snapshotter(base / "list") as direct:
            direct_list = time_list(direct, args.list_size)
        with (
            cimsnap_serve(base / "list", sock_dir) as address,
            SnapshotsClient(address) as client,
        ):
            grpc_list = time_list(client, args.list_size)
        print(
            f"List of {args.list_size}: gRPC best {min(grpc_list):.1f} ms, median "
            f"{statistics.median(grpc_list):.1f} ms; direct best {min(direct_list):.1f} ms "
            f"(ratio {min(grpc_list) / min(direct_list):.1f}x)"
        )
        print(
            f"floors: fsync of a small append {fsync_ms:.3f} ms; gRPC health Check {rtt_ms:.3f} ms"
        )
        print("against the floors (gRPC p50 / floor):")
        for rpc, floor in (
            ("Prepare", fsync_ms),
            ("Commit", fsync_ms),
            ("Remove", fsync_ms),
            ("Stat sweep", rtt_ms),
        ):
            p50 = pct(grpc_samples[rpc], 0.5)
            print(f"  {rpc:10} {p50:.3f} ms / {floor:.3f} ms = {p50 / floor:.2f}")
        print("targets (gRPC p50 / target; <= 1.0 meets it):")
        for rpc, target in TARGETS_MS.items():
            p50 = pct(grpc_samples[rpc], 0.5)
            print(f"  {rpc:10} p50 {p50:.3f} ms / {target} ms = {p50 / target:.2f}")
        best = min(grpc_list)
        print(f"  List       {best:.1f} ms / {LIST_TARGET_MS} ms = {best / LIST_TARGET_MS:.2f}")
        go_client_section(base, sock_dir)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
