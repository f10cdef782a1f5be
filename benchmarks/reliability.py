"""Benchmark: the reliability guarantees, measured in one run and printed as one table.

    python -m benchmarks.reliability [--fuzz-seconds S] [--clients N] [--seconds T]

Each section is a function returning table rows; ``SECTIONS`` lists them in print order
(a new one is one more function taking the parsed arguments and returning ``Row``s).

* crash: the crash suite (``python -m cimsnap.devtools.crashpoints``): SIGKILL at every
  durable step of Prepare, View, Commit, the layer write, Remove and Cleanup, then
  restart, check what was acknowledged and ``fsck``; kill points survived and data lost.
* hostile: every case of the hostile gRPC corpus (``tests/hostile/corpus.py``) against a
  real server on a unix socket; a case counts as rejected correctly when the status is
  the expected one and the root (rows, labels, sequence, files) is unchanged.
* fuzz: each coverage-guided target (``tests/fuzz/targets``) under atheris for its share
  of ``--fuzz-seconds``; executions and crashes.
* concurrency: ``--clients`` clients mixing every RPC for ``--seconds`` through a real
  ``cimsnap serve`` process; unexpected codes, data lost (lost or leaked snapshots, lost
  label updates), and Stat and List p99 while writes run, as a probe client alone in
  its process sees them (the mixed clients' own figures, which include their queue for
  their process's GIL, beside them), against the same calls from one client on the same
  server once the writers stopped (the baseline: ratio = loaded / idle). Target: p99 <
  100 ms under load.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.daemon.listen import parse_address
from tests.fuzz.runner import atheris_available, run_atheris
from tests.fuzz.targets import TARGETS
from tests.grpc_harness import ServerThread, server_config, serving_process, short_socket_dir
from tests.hostile import corpus
from tests.hostile.workload import (
    LIST_FILTERS,
    P99_TARGET_MS,
    check_state,
    percentile,
    run_workload,
)
from tests.snapshotter_suite import state


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured, the figure, and how to read it."""

    measure: str
    value: str
    note: str = ""


Section = Callable[[argparse.Namespace], list[Row]]


class _Server:
    """A real server on a fresh root and socket, stopped and removed on exit."""

    def __enter__(self) -> _Server:
        self.tmp = Path(tempfile.mkdtemp(prefix="cimsnap-rel-"))
        self.sock_dir = short_socket_dir()
        self.server = ServerThread(server_config(self.tmp, self.sock_dir)).start()
        self.root = self.tmp / "root"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.sock_dir, ignore_errors=True)


def crash_rows(args: argparse.Namespace) -> list[Row]:
    """The crash suite (``cimsnap.devtools.crashpoints``) in its own interpreter: it forks a
    child per kill point, which must not happen in a process that runs gRPC threads."""
    done = subprocess.run(
        [sys.executable, "-m", "cimsnap.devtools.crashpoints"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return [Row("kill points survived", "not run", f"exit {done.returncode}")]
    summary = json.loads(lines[-1])
    survived, points, lost = summary["survived"], summary["kill_points"], summary["lost"]
    note = f"SIGKILL at every durable step, restart, fsck; {lost} acknowledged operations lost"
    return [Row("kill points survived", f"{survived}/{points}", note)]


def hostile_rows(args: argparse.Namespace) -> list[Row]:
    with _Server() as s:
        with SnapshotsClient(s.server.address) as client:
            corpus.seed(client)
        target = parse_address(s.server.address).grpc_target
        options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
        wrong: list[str] = []
        with grpc.insecure_channel(target, options=options) as channel:
            for case in corpus.CASES:
                before = state(s.root)
                code = corpus.send(channel, case)
                if code != case.expected or state(s.root) != before:
                    wrong.append(f"{case.id}: {code.name}")
    total = len(corpus.CASES)
    note = "expected code and unchanged state" + (f"; WRONG: {', '.join(wrong)}" if wrong else "")
    return [Row("hostile gRPC cases rejected correctly", f"{total - len(wrong)}/{total}", note)]


def fuzz_rows(args: argparse.Namespace) -> list[Row]:
    if not atheris_available():
        return [Row("fuzz executions", "not run", "atheris is not installed")]
    rows: list[Row] = []
    total, crashes = 0, 0
    with tempfile.TemporaryDirectory(prefix="cimsnap-fuzz-") as tmp:
        for target, share in sorted(TARGETS.items()):
            seconds = args.fuzz_seconds * share / sum(TARGETS.values())
            code, executions, _ = run_atheris(target, seconds, Path(tmp) / target)
            total += executions
            crashes += code != 0
            rows.append(Row(f"  fuzz {target}", f"{executions:,}", f"{seconds:.0f} s, exit {code}"))
    head = Row("fuzz executions (atheris)", f"{total:,}", f"{crashes} crashing target(s)")
    return [head, *rows]


def _timed(calls: int, call: Callable[[], object]) -> list[float]:
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return times


@contextlib.contextmanager
def _served() -> Iterator[str]:
    """A ``cimsnap serve`` process (its own interpreter, as deployed) on a fresh root."""
    tmp = Path(tempfile.mkdtemp(prefix="cimsnap-rel-"))
    sock_dir = short_socket_dir()
    try:
        with serving_process(tmp / "root", sock_dir) as (address, _):
            yield address
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(sock_dir, ignore_errors=True)


def concurrency_rows(args: argparse.Namespace) -> list[Row]:
    with _served() as address:
        report = run_workload(address, clients=args.clients, seconds=args.seconds)
        problems = check_state(address, report)
        # Baseline: the same Stat and List calls (the workload's mix of filters) from one
        # client, nothing else running.
        with grpc.insecure_channel(parse_address(address).grpc_target) as channel:
            stub = pb_grpc.SnapshotsStub(channel)
            stub.Cleanup(pb.CleanupRequest())  # Remove's background file work done first
            idle_stat = _timed(300, lambda: stub.Stat(pb.StatSnapshotRequest(key="seed-0")))
            listings = [pb.ListSnapshotsRequest(filters=f) for f in LIST_FILTERS] * 34
            idle_list = [t for r in listings for t in _timed(1, lambda r=r: list(stub.List(r)))]
            count = sum(len(r.info) for r in stub.List(pb.ListSnapshotsRequest()))
    calls = sum(report.calls.values())
    stat99, list99 = percentile(report.stat_ms, 0.99), percentile(report.list_ms, 0.99)
    probe_stat99 = percentile(report.probe_stat_ms, 0.99)
    probe_list99 = percentile(report.probe_list_ms, 0.99)
    idle_stat99, idle_list99 = percentile(idle_stat, 0.99), percentile(idle_list, 0.99)
    return [
        Row("concurrent clients", str(args.clients), f"every RPC, {args.seconds:.0f} s"),
        Row("calls", f"{calls:,}", f"{len(report.unexpected)} with an unexpected code"),
        Row("data lost", str(len(problems)), "lost/leaked snapshots and lost label updates"),
        Row(
            "Stat p99 under writes",
            f"{probe_stat99:.1f} ms",
            f"probe client; x{probe_stat99 / idle_stat99:.1f} idle ({idle_stat99:.2f} ms); "
            f"the mixed clients see {stat99:.1f} ms; target < {P99_TARGET_MS:.0f} ms",
        ),
        Row(
            "List p99 under writes",
            f"{probe_list99:.1f} ms",
            f"probe client, List of all; x{probe_list99 / idle_list99:.1f} idle "
            f"({idle_list99:.1f} ms, {count} snapshots); the mixed clients see "
            f"{list99:.1f} ms; target < {P99_TARGET_MS:.0f} ms",
        ),
    ]


#: The table's sections in order.
SECTIONS: tuple[Section, ...] = (crash_rows, hostile_rows, fuzz_rows, concurrency_rows)


def render(rows: Sequence[Row]) -> str:
    """The rows as a Markdown table (the README's form)."""
    lines = ["| measure | value | note |", "| --- | --- | --- |"]
    lines += [f"| {r.measure} | {r.value} | {r.note} |" for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fuzz-seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args(argv)
    rows: list[Row] = []
    for section in SECTIONS:
        started = time.perf_counter()
        rows += section(args)
        print(f"{section.__name__}: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
