"""The crash suite: SIGKILL at every durable step of Prepare, View, Commit (a scratch
tree, an ``extract`` snapshot whose layer an Apply wrote, and an empty layer whose CIM
Commit defers to the background build), the layer write itself, the deferred build,
Remove (with its background file work) and Cleanup (of planted crash leftovers), then
restart, compare with what was acknowledged, and ``fsck``.

How (the order under test is written in :mod:`cimsnap.snapshots.durability`):

1. A dry run of :func:`scenario` in a forked child counts the kill points: one before each
   call of :data:`~cimsnap.snapshots.durability.DURABLE_CALLS` and one before and after
   each metastore COMMIT, labelled with the operation running.
2. For each point ``n`` a fresh child runs the same scenario on a fresh root and kills
   itself with SIGKILL at point ``n``. It reports each operation on a pipe before it
   starts and once it is acknowledged (returned).
3. The parent reopens the root (recovery, start-up cleanup), and checks every
   acknowledged effect: created snapshots exist with their kind, committed layers hold
   the bytes written (an empty layer: its parent's bytes, read through its rebuilt CIM),
   removed ones are gone; the one operation in flight may have happened or not, but
   entirely. No layer may stay pending once the restarted snapshotter's builds ran. Then
   it closes the root and runs :func:`cimsnap.snapshots.fsck.check_root`: no problem may
   remain (reclaimable leftovers are allowed only before the start-up cleanup; after it,
   none is expected either).

``python -m cimsnap.devtools.crashpoints`` runs it and prints one JSON line.

Children are forked from the calling process (no interpreter start per point), so the
caller must have no other snapshotter open. Linux only. :func:`run_crash_suite` returns a
:class:`CrashSuiteResult` whose ``kill_points`` / ``survived`` figures the reliability
benchmark prints.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cimsnap.cim import build_from_directory
from cimsnap.cim.regions import open_image
from cimsnap.errdefs import NotFound
from cimsnap.snapshots.durability import DURABLE_CALLS
from cimsnap.snapshots.fsck import check_root
from cimsnap.snapshots.snapshotter import Kind, Snapshotter
from cimsnap.store import Store
from cimsnap.wclayer.cim_writer import while_directory_busy

__all__ = ["MIN_KILL_POINTS", "CrashSuiteResult", "Step", "run_crash_suite", "scenario"]

#: Seconds a child may take for the whole scenario before it counts as hung.
CHILD_TIMEOUT: Final = 300.0

#: Kill points the full scenario reaches at least (a guard against an injector that
#: silently stopped seeing the calls).
MIN_KILL_POINTS: Final = 40


@dataclass(frozen=True, slots=True)
class Step:
    """One client call of the scenario and its effect once acknowledged.

    ``creates``: key -> kind it then has; ``deletes``: keys then gone; ``content``:
    committed name -> (file name, bytes) its layer must hold; ``scratch``: files written
    into the new active's ``scratch/`` after the call; ``layer``: for ``apply``, the files
    of the layer written at the snapshot's ``cimpath`` the way the Diff service does.
    """

    op: str
    args: tuple[str, ...]
    creates: tuple[tuple[str, Kind], ...] = ()
    deletes: tuple[str, ...] = ()
    content: tuple[tuple[str, str, bytes], ...] = ()
    scratch: tuple[tuple[str, bytes], ...] = ()
    layer: tuple[tuple[str, bytes], ...] = ()


def scenario() -> tuple[Step, ...]:
    """The calls every child makes, in order: each kind of durable step at least once."""
    return (
        Step("prepare", ("a",), creates=(("a", Kind.ACTIVE),), scratch=(("f", b"one"),)),
        Step(
            "commit",
            ("A", "a"),
            creates=(("A", Kind.COMMITTED),),
            deletes=("a",),
            content=(("A", "f", b"one"),),
        ),
        Step("prepare", ("x/extract-e", "A"), creates=(("x/extract-e", Kind.ACTIVE),)),
        Step("apply", ("x/extract-e",), layer=(("e", b"three"),)),
        Step(
            "commit",
            ("E", "x/extract-e"),
            creates=(("E", Kind.COMMITTED),),
            deletes=("x/extract-e",),
            content=(("E", "e", b"three"), ("E", "f", b"one")),
        ),
        Step("prepare", ("b", "A"), creates=(("b", Kind.ACTIVE),), scratch=(("g", b"two"),)),
        Step(
            "commit",
            ("B", "b"),
            creates=(("B", Kind.COMMITTED),),
            deletes=("b",),
            content=(("B", "g", b"two"), ("B", "f", b"one")),
        ),
        # An empty layer: Commit records it pending; the background build (waited for
        # after the step, so its kill points carry this step's label) makes its CIM.
        Step("prepare", ("z", "B"), creates=(("z", Kind.ACTIVE),)),
        Step(
            "commit",
            ("Z", "z"),
            creates=(("Z", Kind.COMMITTED),),
            deletes=("z",),
            content=(("Z", "g", b"two"), ("Z", "f", b"one")),
        ),
        Step("remove", ("Z",), deletes=("Z",)),
        Step("view", ("v", "B"), creates=(("v", Kind.VIEW),)),
        Step("remove", ("v",), deletes=("v",)),
        Step("prepare", ("c", "B"), creates=(("c", Kind.ACTIVE),), scratch=(("h", b"x"),)),
        Step("remove", ("c",), deletes=("c",)),
        Step("remove", ("B",), deletes=("B",)),
        Step("remove", ("E",), deletes=("E",)),
        Step("cleanup", ()),
    )


@dataclass(slots=True)
class CrashSuiteResult:
    """Kill points tried and survived, and what went wrong where (empty when all is well)."""

    kill_points: int = 0
    survived: int = 0
    labels: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def lost(self) -> int:
        """Kill points after which an acknowledged effect was missing or fsck failed."""
        return self.kill_points - self.survived


class _Injector:
    """Counts kill points in this (child) process and SIGKILLs itself at ``target``."""

    def __init__(self, target: int, report: Callable[[str], None]) -> None:
        self.target = target
        self.count = 0
        self.op = "setup"
        self.labels: list[str] = []
        self._report = report

    def point(self, what: str) -> None:
        self.count += 1
        self.labels.append(f"{self.op}:{what}")
        if self.count == self.target:
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def armed(self) -> Iterator[None]:
        originals = {name: getattr(os, name) for name in DURABLE_CALLS}
        real_write = Store.write

        def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any, **kwargs: Any) -> Any:
                self.point(name)
                return real(*args, **kwargs)

            return call

        @contextlib.contextmanager
        def write(store: Store) -> Iterator[Any]:
            with real_write(store) as tx:
                yield tx
                self.point("before-commit")
            self.point("after-commit")

        for name, real in originals.items():
            setattr(os, name, wrap(name, real))
        Store.write = write  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            for name, real in originals.items():
                setattr(os, name, real)
            Store.write = real_write  # type: ignore[method-assign]


def _child(root: Path, target: int, pipe: int) -> None:
    """Run the scenario on ``root``, reporting on ``pipe``; SIGKILL at point ``target``."""

    def report(line: str) -> None:
        os.write(pipe, (line + "\n").encode())

    injector = _Injector(target, report)
    sn = Snapshotter(root, layer_build_delay=0.0)  # the build's points follow its Commit
    sn.wait_reclaimed()
    # Leftovers of earlier crashes for Cleanup to reclaim: a removal, an orphan directory,
    # an orphan region file.
    (root / "snapshots" / "rm-99").mkdir()
    (root / "snapshots" / "98").mkdir()
    (root / "snapshots" / "98" / "old").write_bytes(b"old")
    orphan = f"region_{uuid.UUID(int=98)}_0"
    (root / "snapshots" / "cim-layers" / orphan).write_bytes(b"orphan")
    with injector.armed():
        for index, step in enumerate(scenario()):
            injector.op = f"{step.op}({','.join(step.args)})"
            report(f"start {index}")
            if step.op == "cleanup":
                sn.cleanup()
            elif step.op == "apply":
                _apply(sn, _layer_source(root) / str(index), step)
            else:
                result = getattr(sn, step.op)(*step.args)
                if step.scratch:
                    scratch = Path(result[0].source) / "scratch"
                    for name, data in step.scratch:
                        (scratch / name).write_bytes(data)
            report(f"ack {index}")  # the call returned (and the scratch files are written)
            sn.wait_reclaimed()  # Remove's file work is part of this step's kill points
            sn.wait_layers()  # and so is the deferred build of an empty layer
    sn.close()
    report("labels " + "|".join(injector.labels))


def _apply(sn: Snapshotter, source: Path, step: Step) -> None:
    """Write the layer of ``step`` at the snapshot's ``cimpath``, forked from its parent,
    with the CIM writer's own durability protocol (what the Diff service's Apply does)."""
    options = sn.mounts(step.args[0])[0].options
    cim = Path(next(o for o in options if o.startswith("cimpath=")).removeprefix("cimpath="))
    parents = [o for o in options if o.startswith("parentCimPaths=")]
    parent = Path(parents[0].split('"')[1]) if parents else None
    source.mkdir(parents=True)
    for name, data in step.layer:
        (source / name).write_bytes(data)
    # Like the differ, wait while the snapshotter's start-up Cleanup holds the directory.
    while_directory_busy(lambda: build_from_directory(source, cim, parent=parent), 60)


def _layer_source(root: Path) -> Path:
    """Where the scenario's ``apply`` steps stage their files (outside the root)."""
    return root.parent / f"{root.name}.layers"


def _run_child(root: Path, target: int) -> tuple[list[str], int]:
    """Fork a child running :func:`_child`; return its report lines and wait status."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller's code
        code = 0
        try:
            os.close(read_end)
            _child(root, target, write_end)
        except BaseException:  # the parent sees the missing "labels" line
            code = 1
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_end], [], [], max(remaining, 0))
            if not ready:  # hung (a deadlock would otherwise stall the suite forever)
                os.kill(pid, signal.SIGKILL)
                chunks.append(b"\nhung\n")
                break
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return b"".join(chunks).decode().splitlines(), status


_Model = tuple[dict[str, Kind | None], dict[str, list[tuple[str, bytes]]]]


def _model(steps: tuple[Step, ...], done: set[int], partial: int | None = None) -> _Model:
    """Kinds and file contents after ``done`` steps, plus the metadata effect of
    ``partial`` (an operation whose call returned but whose report never came: its scratch
    files may not have been written)."""
    kinds: dict[str, Kind | None] = {}
    content: dict[str, list[tuple[str, bytes]]] = {}
    for index in sorted(done | ({partial} if partial is not None else set())):
        step = steps[index]
        for key in step.deletes:
            kinds[key] = None
            content.pop(key, None)
        for key, kind in step.creates:
            kinds[key] = kind
        if step.scratch and index != partial:
            content[step.args[0]] = list(step.scratch)
        for name, file, data in step.content:
            content.setdefault(name, []).append((file, data))
    return kinds, content


def _check(root: Path, lines: list[str]) -> list[str]:
    """Compare the reopened root with the acknowledged steps; return what is wrong.

    Every key must be exactly as the acknowledged steps left it, or (for the keys of the
    one operation in flight) exactly as that operation would leave it: kind and bytes.
    """
    steps = scenario()
    acked = {int(line.split()[1]) for line in lines if line.startswith("ack ")}
    started = [int(line.split()[1]) for line in lines if line.startswith("start ")]
    in_flight = started[-1] if started and started[-1] not in acked else None
    candidates = [_model(steps, acked)]
    if in_flight is not None:
        candidates.append(_model(steps, acked, in_flight))
    keys = sorted({key for kinds, _ in candidates for key in kinds})
    wrong: list[str] = []
    with Snapshotter(root) as sn:
        if not sn.wait_reclaimed(120):
            wrong.append("start-up cleanup did not finish")
        if not sn.wait_layers(120):
            wrong.append("start-up builds of pending layers did not finish")
        if sn.pending_layer_ids():
            wrong.append(f"layers still pending after restart: {sorted(sn.pending_layer_ids())}")
        for key in keys:
            try:
                kind: Kind | None = sn.stat(key).kind
            except NotFound:
                kind = None
            if not any(
                kinds.get(key) == kind and _holds(sn, key, kind, content.get(key, []))
                for kinds, content in candidates
            ):
                expected = " or ".join(_name(kinds.get(key)) for kinds, _ in candidates)
                wrong.append(
                    f"{key}: found {_name(kind)} (or other bytes), acknowledged {expected}"
                )
    report = check_root(root)
    wrong.extend(str(finding) for finding in report.problems)
    wrong.extend(f"after start-up cleanup: {finding}" for finding in report.reclaimable)
    return wrong


def _name(kind: Kind | None) -> str:
    return "absent" if kind is None else kind.name.lower()


def _holds(sn: Snapshotter, key: str, kind: Kind | None, files: list[tuple[str, bytes]]) -> bool:
    """True if snapshot ``key`` holds exactly the bytes in ``files``."""
    if not files or kind in (None, Kind.VIEW):
        return True
    if kind == Kind.ACTIVE:
        scratch = Path(sn.mounts(key)[0].source) / "scratch"
        return all(
            (scratch / name).is_file() and (scratch / name).read_bytes() == data
            for name, data in files
        )
    view = f"crash-check-{key}"
    mounts = sn.view(view, key)
    try:
        option = next(o for o in mounts[0].options if o.startswith("parentCimPaths="))
        with open_image(Path(option.split('"')[1])) as image:
            return all(image.reader.open_stream(name).read() == data for name, data in files)
    finally:
        sn.remove(view)
        sn.wait_reclaimed()


def run_crash_suite(
    workdir: Path | None = None,
    *,
    stride: int = 1,
    select: Callable[[str], bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CrashSuiteResult:
    """Kill the scenario at every ``stride``-th durable step; see the module docstring.

    ``workdir`` holds the scratch roots (a temporary directory by default; each root is
    deleted after its check). ``select`` keeps only the points whose label (``op(args):
    call``, e.g. ``remove(c):before-commit``) it accepts. ``progress(done, total)`` is
    called after each point.
    """
    result = CrashSuiteResult()
    with contextlib.ExitStack() as stack:
        base = workdir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        dry = base / "dry-run"
        lines, status = _run_child(dry, 0)
        label_lines = [line for line in lines if line.startswith("labels ")]
        if status != 0 or not label_lines:
            result.failures.append(f"the scenario itself failed (wait status {status})")
            return result
        result.labels = label_lines[0].removeprefix("labels ").split("|")
        wrong = _check(dry, lines)
        if wrong:
            result.failures.extend(f"no crash: {w}" for w in wrong)
        shutil.rmtree(dry)
        shutil.rmtree(_layer_source(dry), ignore_errors=True)
        targets = [
            n
            for n in range(1, len(result.labels) + 1, stride)
            if select is None or select(result.labels[n - 1])
        ]
        for done, target in enumerate(targets, 1):
            root = base / f"kill-{target}"
            lines, status = _run_child(root, target)
            label = result.labels[target - 1]
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
            wrong = [] if killed else [f"was not killed (wait status {status})"]
            if "hung" in lines:
                wrong.append(f"hung for {CHILD_TIMEOUT:.0f} s before its kill point")
            wrong.extend(_check(root, lines))
            result.kill_points += 1
            if wrong:
                result.failures.extend(f"kill {target} at {label}: {w}" for w in wrong)
            else:
                result.survived += 1
            shutil.rmtree(root)
            shutil.rmtree(_layer_source(root), ignore_errors=True)
            if progress is not None:
                progress(done, len(targets))
    return result


def main() -> int:
    """``python -m cimsnap.devtools.crashpoints``: run the suite, print one JSON summary
    line (``kill_points``, ``survived``, ``lost``) and the failures; exit 1 on any."""
    import json
    import sys

    result = run_crash_suite()
    summary = {"kill_points": result.kill_points, "survived": result.survived, "lost": result.lost}
    print(json.dumps(summary))
    for failure in result.failures:
        print(failure, file=sys.stderr)
    return 1 if result.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
