"""A mixed concurrent workload against a running server: many clients, every RPC.

``run_workload(address, clients, seconds)`` runs ``clients`` client threads spread over a
few processes (so the clients' own Python does not serialise them all on one GIL). Each
client loops over a random mix of all ten Snapshots RPCs on chains that overlap: parents
are picked from the committed snapshots every client sees through ``List``. Every call has
a deadline; a code outside the set expected for its operation (a lock error would be
INTERNAL or UNAVAILABLE, a deadlock DEADLINE_EXCEEDED) is recorded as unexpected.

Each client keeps a model of what it did successfully: the snapshots it owns (key, kind,
parent, whether removed), the ``seq`` label it last set on its committed snapshots, and
the ``t<client>`` label it last set on anybody's committed snapshot. ``check_state``
compares the server with the union of the models afterwards: no lost update, no lost or
leaked snapshot.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import field_mask_pb2

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import MESSAGE_SIZE_OPTIONS

C = grpc.StatusCode
OK = frozenset({C.OK})
OK_OR_GONE = frozenset({C.OK, C.NOT_FOUND})
OK_GONE_OR_COMMITTED = frozenset({C.OK, C.NOT_FOUND, C.FAILED_PRECONDITION})
CALL_TIMEOUT = 30.0
SEEDS = ("seed-0", "seed-1", "seed-2")
#: Seconds between two rounds of the probe client (``_probe_main``).
PROBE_PAUSE = 0.05
#: The latency target of Stat and List p99 while the writes run (milliseconds).
P99_TARGET_MS = 100.0
#: The List calls of the mix: committed snapshots (how clients find parents), everything
#: (containerd's garbage collector), and a regex filter.
LIST_FILTERS: tuple[list[str], ...] = (
    ["kind==committed"],
    [],
    ['labels.owner~="^[0-9]+$",kind==committed'],
)


@dataclass
class Owned:
    """A snapshot a client created: what the server must show for it."""

    kind: int
    parent: str
    removed: bool = False
    seq: int = 0  # the last "seq" label set (committed snapshots)


@dataclass
class ClientReport:
    """One process's clients: call counts, latencies, unexpected codes and their models."""

    calls: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    stat_ms: list[float] = field(default_factory=list)
    list_ms: list[float] = field(default_factory=list)
    probe_stat_ms: list[float] = field(default_factory=list)
    probe_list_ms: list[float] = field(default_factory=list)
    owned: dict[str, Owned] = field(default_factory=dict)
    touches: dict[tuple[str, str], int] = field(default_factory=dict)  # (key, label) -> value


class _Client:
    def __init__(self, number: int, stub: pb_grpc.SnapshotsStub, report: ClientReport) -> None:
        self.number = number
        self.stub = stub
        self.report = report
        self.rng = random.Random(number)
        self.count = 0
        self.actives: list[str] = []
        self.committed: list[str] = []
        self.views: list[str] = []
        self.parents: list[str] = list(SEEDS)
        self.lock = threading.Lock()

    def call(self, name: str, expected: frozenset[grpc.StatusCode], fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        code, result = C.OK, None
        try:
            result = fn()
        except grpc.RpcError as e:
            code = e.code()  # type: ignore[attr-defined]
        elapsed_ms = (time.perf_counter() - started) * 1000
        if name == "Stat":
            self.report.stat_ms.append(elapsed_ms)
        elif name == "List":
            self.report.list_ms.append(elapsed_ms)
        with self.lock:
            self.report.calls[f"{name}:{code.name}"] += 1
            if code not in expected:
                self.report.unexpected.append(f"client {self.number} {name}: {code.name}")
        return result if code == C.OK else None

    def key(self) -> str:
        self.count += 1
        return f"c{self.number}-{self.count}"

    def step(self) -> None:
        ops = [
            self.prepare,
            self.prepare,
            self.commit,
            self.commit,
            self.view,
            self.stat,
            self.stat,
            self.mounts,
            self.usage,
            self.update_own,
            self.touch,
            self.list,
            self.remove,
            self.cleanup,
        ]
        self.rng.choice(ops)()

    def prepare(self) -> None:
        key, parent = self.key(), self.rng.choice(self.parents)
        req = pb.PrepareSnapshotRequest(key=key, parent=parent, labels={"owner": str(self.number)})
        if self.call("Prepare", OK_OR_GONE, lambda: self.stub.Prepare(req, timeout=CALL_TIMEOUT)):
            self.actives.append(key)
            self.report.owned[key] = Owned(pb.ACTIVE, parent)

    def commit(self) -> None:
        if not self.actives:
            return self.prepare()
        active = self.actives.pop(self.rng.randrange(len(self.actives)))
        name = self.key()
        req = pb.CommitSnapshotRequest(name=name, key=active, labels={"owner": str(self.number)})
        if self.call("Commit", OK, lambda: self.stub.Commit(req, timeout=CALL_TIMEOUT)):
            model = self.report.owned.pop(active)
            self.report.owned[name] = Owned(pb.COMMITTED, model.parent)
            self.committed.append(name)

    def view(self) -> None:
        key, parent = self.key(), self.rng.choice(self.parents)
        req = pb.ViewSnapshotRequest(key=key, parent=parent)
        if self.call("View", OK_OR_GONE, lambda: self.stub.View(req, timeout=CALL_TIMEOUT)):
            self.views.append(key)
            self.report.owned[key] = Owned(pb.VIEW, parent)

    def _any_key(self) -> str:
        return self.rng.choice([*self.parents, *self.actives, *self.views] or list(SEEDS))

    def stat(self) -> None:
        req = pb.StatSnapshotRequest(key=self._any_key())
        self.call("Stat", OK_OR_GONE, lambda: self.stub.Stat(req, timeout=CALL_TIMEOUT))

    def mounts(self) -> None:
        req = pb.MountsRequest(key=self._any_key())  # committed: FAILED_PRECONDITION
        self.call(
            "Mounts", OK_GONE_OR_COMMITTED, lambda: self.stub.Mounts(req, timeout=CALL_TIMEOUT)
        )

    def usage(self) -> None:
        req = pb.UsageRequest(key=self._any_key())
        self.call("Usage", OK_OR_GONE, lambda: self.stub.Usage(req, timeout=CALL_TIMEOUT))

    def _update(self, key: str, label: str, value: int) -> bool:
        req = pb.UpdateSnapshotRequest(
            info=pb.Info(name=key, labels={label: str(value)}),
            update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{label}"]),
        )
        return bool(
            self.call("Update", OK_OR_GONE, lambda: self.stub.Update(req, timeout=CALL_TIMEOUT))
        )

    def update_own(self) -> None:
        if not self.committed:
            return self.stat()
        key = self.rng.choice(self.committed)
        owned = self.report.owned[key]
        if self._update(key, "seq", owned.seq + 1):
            owned.seq += 1

    def touch(self) -> None:
        key = self.rng.choice(self.parents)
        if key in SEEDS:
            return
        label = f"t{self.number}"
        value = self.report.touches.get((key, label), 0) + 1
        if self._update(key, label, value):
            self.report.touches[key, label] = value

    def list(self) -> None:
        filters = self.rng.choice(LIST_FILTERS)
        req = pb.ListSnapshotsRequest(filters=filters)

        def run() -> list[pb.Info]:
            return [i for r in self.stub.List(req, timeout=CALL_TIMEOUT) for i in r.info]

        infos = self.call("List", OK, run)
        if infos is not None and filters:
            committed = [i.name for i in infos if i.kind == pb.COMMITTED]
            self.parents = committed[-200:] or list(SEEDS)

    def remove(self) -> None:
        pools = [p for p in (self.actives, self.views, self.committed) if p]
        if not pools:
            return self.prepare()
        pool = self.rng.choice(pools)
        key = pool[self.rng.randrange(len(pool))]
        expected = frozenset({C.OK, C.FAILED_PRECONDITION}) if pool is self.committed else OK
        req = pb.RemoveSnapshotRequest(key=key)
        result = self.call("Remove", expected, lambda: self.stub.Remove(req, timeout=CALL_TIMEOUT))
        if result is not None:
            pool.remove(key)
            self.report.owned[key].removed = True

    def cleanup(self) -> None:
        req = pb.CleanupRequest()
        self.call("Cleanup", OK, lambda: self.stub.Cleanup(req, timeout=CALL_TIMEOUT))


def _process_main(address: str, first: int, count: int, seconds: float) -> ClientReport:
    report = ClientReport()
    target = parse_address(address).grpc_target
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(target, options=list(MESSAGE_SIZE_OPTIONS)) as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        clients = [_Client(n, stub, report) for n in range(first, first + count)]
        for client in clients:  # they share one lock: the report
            client.lock = clients[0].lock

        def loop(client: _Client) -> None:
            while time.monotonic() < deadline:
                client.step()

        threads = [threading.Thread(target=loop, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return report


def _probe_main(address: str, seconds: float) -> ClientReport:
    """One client alone in its process: a Stat and a List (all snapshots) every PROBE_PAUSE.

    The workload's clients share their process's GIL ten at a time, so their own latencies
    include queueing for it; this client's are what the server delivers while the writes
    run, as a client such as containerd (Go) sees it.
    """
    report = ClientReport()
    target = parse_address(address).grpc_target
    deadline = time.monotonic() + seconds
    with grpc.insecure_channel(target, options=list(MESSAGE_SIZE_OPTIONS)) as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        while time.monotonic() < deadline:
            started = time.perf_counter()
            with contextlib.suppress(grpc.RpcError):
                stub.Stat(pb.StatSnapshotRequest(key=SEEDS[0]), timeout=CALL_TIMEOUT)
            report.probe_stat_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            with contextlib.suppress(grpc.RpcError):
                list(stub.List(pb.ListSnapshotsRequest(), timeout=CALL_TIMEOUT))
            report.probe_list_ms.append((time.perf_counter() - started) * 1000)
            time.sleep(PROBE_PAUSE)
    return report


def seed(address: str) -> None:
    """The committed bases every chain starts from."""
    with grpc.insecure_channel(parse_address(address).grpc_target) as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        for name in SEEDS:
            stub.Prepare(pb.PrepareSnapshotRequest(key=f"{name}-active"), timeout=CALL_TIMEOUT)
            stub.Commit(pb.CommitSnapshotRequest(name=name, key=f"{name}-active"), timeout=60)


def run_workload(
    address: str, clients: int = 50, seconds: float = 20.0, processes: int = 5
) -> ClientReport:
    """Seed, run the clients (plus the probe of ``_probe_main``), return their merged report."""
    seed(address)
    per = -(-clients // processes)
    context = multiprocessing.get_context("spawn")  # no forking of gRPC's threads
    merged = ClientReport()
    with ProcessPoolExecutor(processes + 1, mp_context=context) as pool:
        futures = [
            pool.submit(_process_main, address, first, min(per, clients - first), seconds)
            for first in range(0, clients, per)
        ]
        futures.append(pool.submit(_probe_main, address, seconds))
        for future in futures:
            part = future.result(timeout=seconds + 240)
            merged.calls.update(part.calls)
            merged.unexpected += part.unexpected
            merged.stat_ms += part.stat_ms
            merged.list_ms += part.list_ms
            merged.probe_stat_ms += part.probe_stat_ms
            merged.probe_list_ms += part.probe_list_ms
            merged.owned.update(part.owned)
            merged.touches.update(part.touches)
    return merged


def check_state(address: str, report: ClientReport) -> list[str]:
    """Compare the server with the clients' models; return the differences."""
    with grpc.insecure_channel(
        parse_address(address).grpc_target, options=list(MESSAGE_SIZE_OPTIONS)
    ) as channel:
        stub = pb_grpc.SnapshotsStub(channel)
        infos = {
            i.name: i for r in stub.List(pb.ListSnapshotsRequest(), timeout=60) for i in r.info
        }
    problems: list[str] = []
    for key, owned in report.owned.items():
        info = infos.get(key)
        if owned.removed:
            if info is not None:
                problems.append(f"{key}: removed, but still listed")
            continue
        if info is None:
            problems.append(f"{key}: lost")
            continue
        if (info.kind, info.parent) != (owned.kind, owned.parent):
            problems.append(f"{key}: kind/parent {info.kind}/{info.parent}, not {owned}")
        if owned.kind == pb.COMMITTED and int(info.labels.get("seq", "0")) != owned.seq:
            problems.append(f"{key}: seq {info.labels.get('seq')}, last set {owned.seq}")
    for (key, label), value in report.touches.items():
        info = infos.get(key)
        if info is not None and info.labels.get(label) != str(value):
            problems.append(f"{key}: {label}={info.labels.get(label)}, last set {value}")
    known = set(report.owned) | set(SEEDS)
    problems += [f"{name}: leaked (nobody created it)" for name in infos if name not in known]
    return problems


def percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (0 when empty)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def latency_summary(report: ClientReport) -> str:
    """One line: the probe's Stat and List p99 against the target, then the clients'."""

    def p99(values: list[float]) -> str:
        return f"{percentile(values, 0.99):.1f} ms ({len(values)} calls)"

    return (
        f"probe (one client alone in its process): Stat p99 {p99(report.probe_stat_ms)}, "
        f"List of all p99 {p99(report.probe_list_ms)}; target p99 < {P99_TARGET_MS:.0f} ms; "
        f"the mixed clients (10 threads per process, so their figures include their own "
        f"GIL queue): Stat p99 {p99(report.stat_ms)}, List p99 {p99(report.list_ms)}"
    )
