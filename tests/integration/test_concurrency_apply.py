"""The 50-client mix of every Snapshots RPC, plus real Diff.Apply calls, on one server.

A real ``cimsnap serve`` process (unix socket) reads blobs from a private containerd 1.6.
While the mixed workload of ``tests/hostile/workload.py`` runs (50 clients in 5
processes, overlapping chains), ``APPLIERS`` threads loop: Prepare an extract snapshot,
Apply a generated Windows layer blob ingested into containerd's content store, Commit.
Base layers are applied on no parent, delta layers on a committed applied base (shared by
every applier), and the workload's clients pick the applied snapshots up as parents through
List. Every ``CANCEL_EVERY``-th Apply uses a larger layer and a short client deadline.

Fails on: a status outside the expected set (UNKNOWN, INTERNAL, a lock error, a deadline
on an ordinary call), an Apply digest that is not the layer's diff ID, a cancelled Apply
that left a CIM (or a snapshot no longer active), a lost update or lost/leaked snapshot,
and an ``fsck`` problem once the server stopped. Stat/List p99 and the Apply counts are
printed, not asserted. ``CIMSNAP_STRESS_SECONDS`` sets the duration.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import random
import re
import shutil
import socket
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from cimsnap import errdefs
from cimsnap.api.containerd.services.diff.v1 import diff_pb2
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain
from cimsnap.diff.containerd import Containerd as ContainerdClient
from cimsnap.diff.containerd import descriptor_to_pb, mounts_to_pb
from cimsnap.diff.mediatypes import OCI_LAYER_GZIP, Descriptor
from cimsnap.snapshots.fsck import check_root
from cimsnap.snapshots.mounts import parse_cimfs_mount
from tests.grpc_harness import ServeProcess, serving_process, short_socket_dir
from tests.hostile.workload import Owned, check_state, latency_summary, run_workload
from tests.integration.containerd_daemon import Containerd, containerd16_bin
from tests.integration.containerd_harness import containerd_config

pytestmark = pytest.mark.integration

CLIENTS = 50
APPLIERS = 4
CANCEL_EVERY = 3
CANCEL_DEADLINE = 0.2  # seconds; the "big" layer takes several times that to import
SECONDS = float(os.environ.get("CIMSNAP_STRESS_SECONDS", "20"))
LEASE = "cimsnap-tests"


@dataclass
class Stack:
    containerd: Containerd
    server: ServeProcess
    address: str
    root: Path
    metrics_port: int

    def server_codes(self) -> Counter[tuple[str, str]]:
        """The server's finished requests by (method, status code), from its /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as response:
            text = response.read().decode()
        codes: Counter[tuple[str, str]] = Counter()
        for match in re.finditer(
            r'^cimsnap_grpc_requests_total\{(?=[^}]*code="([A-Z_]+)")'
            r'(?=[^}]*method="[^"]*/(\w+)")[^}]*\} ([0-9.e+]+)$',
            text,
            re.MULTILINE,
        ):
            codes[match[2], match[1]] += int(float(match[3]))
        return codes

    def put_blob(self, data: bytes) -> Descriptor:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with ContainerdClient(self.containerd.socket, "default") as ctd:
            with contextlib.suppress(errdefs.AlreadyExists):
                ctd.create_lease(LEASE, "2999-01-01T00:00:00Z")
            ctd.lease = LEASE
            ctd.write_content(f"test-{digest}", [data], lambda: (digest, len(data)))
        return Descriptor(media_type=OCI_LAYER_GZIP, digest=digest, size=len(data))


@pytest.fixture
def stack() -> Iterator[Stack]:
    bin_dir = containerd16_bin()
    base = short_socket_dir()
    root = base / "root"
    with socket.socket() as probe:  # a free port for /metrics
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    config = f'containerd_address = "{base}/containerd.sock"\nmax_workers = 8\n'
    metrics = ["--metrics-address", f"127.0.0.1:{metrics_port}"]
    try:
        with serving_process(root, base, config=config, args=metrics) as (address, server):
            containerd = Containerd(
                bin_dir, base, containerd_config(base, address, "info"), cimsnap=address
            )
            try:
                yield Stack(containerd, server, address, root, metrics_port)
            finally:
                containerd.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class Layer:
    generated: GeneratedLayer
    desc: Descriptor


@dataclass
class ApplyReport:
    """What the appliers did; shared by their threads (under ``lock``)."""

    calls: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    owned: dict[str, Owned] = field(default_factory=dict)
    bases: list[str] = field(default_factory=list)  # committed applied base layers
    cancelled: dict[str, Path] = field(default_factory=dict)  # active key -> its CIM path
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, what: str, unexpected: str | None = None) -> None:
        with self.lock:
            self.calls[what] += 1
            if unexpected:
                self.unexpected.append(unexpected)


def applier(
    number: int,
    stack: Stack,
    layers: dict[str, Layer],
    report: ApplyReport,
    stop_at: float,
) -> None:
    """Prepare, Apply, Commit in a loop until ``stop_at``; every call's outcome recorded."""
    rng = random.Random(number)
    with (
        SnapshotsClient(stack.address) as sn,
        ContainerdClient(stack.address, "default") as differ,
    ):
        for i in itertools.count():
            if time.monotonic() >= stop_at:
                return
            cancel = i % CANCEL_EVERY == CANCEL_EVERY - 1
            with report.lock:
                bases = list(report.bases)
            if cancel:
                which, parent = "big", ""
            elif bases and rng.random() < 0.6:
                which, parent = "delta", rng.choice(bases)
            else:
                which, parent = "base", ""
            layer = layers[which]
            key = f"default/{number}{i:04d}/extract-a{number}-{i} sha256:{which}"
            try:
                [mount] = sn.prepare(key, parent)
            except errdefs.CimsnapError as e:
                report.record("Prepare:error", f"applier {number} Prepare {key}: {e!r}")
                continue
            with report.lock:
                report.owned[key] = Owned(pb.ACTIVE, parent)
            request = diff_pb2.ApplyRequest(
                diff=descriptor_to_pb(layer.desc), mounts=mounts_to_pb([mount])
            )
            try:
                applied = differ.diff.Apply(
                    request, metadata=differ.metadata, timeout=CANCEL_DEADLINE if cancel else 120
                ).applied
            except grpc.RpcError as e:
                code = e.code()
                if cancel and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                    report.record("Apply:cancelled")
                    with report.lock:
                        report.cancelled[key] = Path(parse_cimfs_mount(mount).cim_path)
                else:
                    report.record("Apply:error", f"applier {number} Apply {key}: {code.name}")
                continue
            if applied.digest != layer.generated.diff_id:
                report.record(
                    "Apply:wrong-digest",
                    f"applier {number} Apply {key}: {applied.digest} != {layer.generated.diff_id}",
                )
                continue
            report.record(f"Apply:OK:{which}")
            name = f"applied-{number}-{i}-{which}"
            try:
                sn.commit(name, key)
            except errdefs.CimsnapError as e:
                report.record("Commit:error", f"applier {number} Commit {key}: {e!r}")
                continue
            with report.lock:
                del report.owned[key]
                report.owned[name] = Owned(pb.COMMITTED, parent)
                if which == "base":
                    report.bases.append(name)


@pytest.mark.timeout(int(SECONDS) + 600)
def test_fifty_clients_with_applies(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = generate_chain(tmp_path / "small", layers=2, seed=71, compress=True)
    [big] = generate_chain(
        tmp_path / "big", layers=1, seed=72, compress=True, size=96 * 2**20, entries=1500
    )
    layers = {
        "base": Layer(small[0], stack.put_blob(small[0].path.read_bytes())),
        "delta": Layer(small[1], stack.put_blob(small[1].path.read_bytes())),
        "big": Layer(big, stack.put_blob(big.path.read_bytes())),
    }
    applies = ApplyReport()
    # One big Apply alone first: its time is printed next to CANCEL_DEADLINE (the cancelled
    # Applies must stop mid-import, not after it) and its result is checked like the others.
    with SnapshotsClient(stack.address) as sn, ContainerdClient(stack.address, "default") as d:
        [mount] = sn.prepare("default/9999/extract-alone sha256:big")
        started = time.perf_counter()
        assert d.apply(layers["big"].desc, [mount], timeout=120).digest == big.diff_id
        alone = time.perf_counter() - started
        sn.commit("applied-alone-big", "default/9999/extract-alone sha256:big")
    applies.owned["applied-alone-big"] = Owned(pb.COMMITTED, "")
    stop_at = time.monotonic() + SECONDS
    threads = [
        threading.Thread(target=applier, args=(n, stack, layers, applies, stop_at))
        for n in range(APPLIERS)
    ]
    for t in threads:
        t.start()
    try:
        report = run_workload(stack.address, clients=CLIENTS, seconds=SECONDS)
    finally:
        for t in threads:
            t.join(300)
    report.owned.update(applies.owned)
    problems = check_state(stack.address, report)
    with SnapshotsClient(stack.address) as sn:
        for key in applies.cancelled:
            if sn.stat(key).kind.name != "ACTIVE":
                problems.append(f"{key}: cancelled Apply, but no longer active")
    server_codes = stack.server_codes()
    code, err = stack.server.terminate()  # waits for running calls: nothing runs afterwards
    assert code == 0, err
    leftovers = [str(key) for key, cim in applies.cancelled.items() if cim.exists()]
    fsck = check_root(stack.root)

    total = sum(report.calls.values())
    ok = {k.split(":")[2]: v for k, v in applies.calls.items() if k.startswith("Apply:OK:")}
    with capsys.disabled():
        print(
            f"\nconcurrency+apply: {CLIENTS} clients, {total} calls in {SECONDS:.0f} s; "
            f"{latency_summary(report)}; "
            f"{APPLIERS} appliers: Apply OK {sum(ok.values())} {dict(sorted(ok.items()))}, "
            f"cancelled {applies.calls['Apply:cancelled']} (deadline {CANCEL_DEADLINE} s; "
            f"the big layer alone takes {alone:.2f} s); server's Apply codes "
            f"{ {c: n for (m, c), n in sorted(server_codes.items()) if m == 'Apply'} }; "
            f"fsck {fsck.snapshots} snapshots"
        )
    bad = {k: v for k, v in server_codes.items() if k[1] in ("UNKNOWN", "INTERNAL")}
    assert not bad, bad
    # No Apply the client gave up on finished on the server (the one alone is the +1).
    assert server_codes["Apply", "OK"] == sum(ok.values()) + 1, server_codes
    assert not report.unexpected, report.unexpected[:20]
    assert not applies.unexpected, applies.unexpected[:20]
    assert not problems, problems[:20]
    assert not leftovers, f"cancelled Applies left a CIM: {leftovers[:10]}"
    assert fsck.ok, fsck.problems[:20]
    # Every kind of Apply happened: the check above is not vacuous.
    assert ok.get("base") and ok.get("delta"), applies.calls
    assert applies.calls["Apply:cancelled"] > 0, applies.calls
    assert report.calls["Commit:OK"] > 0 and report.calls["Remove:OK"] > 0
