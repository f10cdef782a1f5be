"""Checking a stopped snapshotter root: every row has its files, every file has its row or
is reclaimable, every committed CIM verifies (``cimsnap fsck``).

Read-only: it opens the metastore read-only, never follows a link, and changes nothing.
It refuses a root a running snapshotter holds (its answers would race the daemon's work;
Unavailable). What it reports:

* **problems** (the root is damaged; ``ok`` is False): a row without its directory, a
  committed row whose layer is missing, damaged or fails :func:`cimsnap.cim.verify_path`
  (errors only; warnings are conventions a Windows-written image may break), a link or
  file where a live snapshot's directory should be, the root's own directories being links.
* **reclaimable** leftovers (``Cleanup``, run at every start, removes them; not damage):
  directories and ``.cim`` files of IDs without a row, ``rm-*`` entries, region and
  objectid files no image references, temporary images, links and strays named like ours.
* **notes**: entries whose names are not the snapshotter's (left alone by everyone), and
  committed empty layers whose CIM is still pending (Commit deferred it; the next start
  builds it from the parent, :mod:`cimsnap.snapshots.pending`). A pending layer is not
  damage: its CIM is missing, half-written or complete, and its files count like any
  other image's (a complete one protects its regions; a half-written one's are
  reclaimable).
"""

from __future__ import annotations

import fcntl
import os
import re
import stat
from collections.abc import Iterator, Mapping, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Final

from cimsnap.cim import CimFormatError, Severity, read_image_header, verify_path
from cimsnap.errdefs import Unavailable
from cimsnap.snapshots.reclaim import snapshot_id
from cimsnap.snapshots.rootdir import REMOVAL_PREFIX
from cimsnap.store import Kind, id_kinds, pending_layers, read_only
from cimsnap.wclayer.layer_files import CIM_LAYERS_DIR, cim_layer_problem

__all__ = ["Finding", "FsckReport", "Level", "check_root", "findings_as_json"]

_WRITER_FILE: Final = re.compile(
    r"(?:region|objectid)_(?P<guid>[0-9a-f-]{36})_\d+|\..+\.[0-9a-f-]{36}\.tmp"
)


class Level(Enum):
    """How a finding counts (see the module docstring)."""

    PROBLEM = "problem"
    RECLAIMABLE = "reclaimable"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Finding:
    """One observation: its level, the path relative to the root, and why."""

    level: Level
    path: str
    why: str

    def __str__(self) -> str:
        return f"{self.level.value}: {self.path}: {self.why}"


@dataclass(slots=True)
class FsckReport:
    """Everything :func:`check_root` found, plus what it looked at."""

    findings: list[Finding] = field(default_factory=list)
    snapshots: int = 0
    layers_verified: int = 0

    @property
    def problems(self) -> list[Finding]:
        return [f for f in self.findings if f.level == Level.PROBLEM]

    @property
    def reclaimable(self) -> list[Finding]:
        return [f for f in self.findings if f.level == Level.RECLAIMABLE]

    @property
    def ok(self) -> bool:
        """True if nothing is damaged (reclaimable leftovers and notes are fine)."""
        return not self.problems

    def add(self, level: Level, path: str, why: str) -> None:
        self.findings.append(Finding(level, path, why))


def check_root(root: Path, *, verify: bool = True) -> FsckReport:
    """Check the stopped snapshotter root ``root``; see the module docstring.

    ``verify`` False skips the full CIM verification (header and own files are still
    checked). Raises Unavailable if a snapshotter holds the root, ``sqlite3.Error`` if the
    metastore cannot be read.
    """
    report = FsckReport()
    root = Path(root)
    layers = root / "snapshots" / CIM_LAYERS_DIR
    for path in (root, root / "snapshots", layers):
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            report.add(Level.PROBLEM, str(path), "missing")
            return report
        if not stat.S_ISDIR(mode):
            report.add(Level.PROBLEM, str(path), "is a link or not a directory")
            return report
    with _root_unused(root), read_only(root / "metadata.db") as tx:
        kinds = id_kinds(tx)
        pending = pending_layers(tx).keys()
    report.snapshots = len(kinds)
    _check_rows(root, kinds, pending, report, verify)
    _check_snapshot_entries(root, kinds, report)
    _check_layer_entries(layers, kinds, pending, report)
    return report


@contextmanager
def _root_unused(root: Path) -> Iterator[None]:
    """Hold ``<root>/lock`` shared for the check; Unavailable if a snapshotter has it."""
    try:
        fd = os.open(root / "lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Unavailable(
                f"{root} is in use by a running snapshotter; stop it first: unavailable"
            ) from None
        yield
    finally:
        os.close(fd)


def _check_rows(
    root: Path, kinds: Mapping[int, Kind], pending: Set[int], report: FsckReport, verify: bool
) -> None:
    snapshots = root / "snapshots"
    for sid, kind in sorted(kinds.items()):
        directory = snapshots / str(sid)
        try:
            mode = os.lstat(directory).st_mode
        except FileNotFoundError:
            mode = 0
        if not stat.S_ISDIR(mode):
            removing = (snapshots / f"{REMOVAL_PREFIX}{sid}").is_dir()
            why = f"{kind.name.lower()} snapshot without its directory"
            if removing:
                why += f" (rm-{sid} holds it: the next start restores it)"
            if mode != 0:
                why += ": a link or file is in its place"
            report.add(Level.PROBLEM, f"snapshots/{sid}", why)
        if kind != Kind.COMMITTED:
            continue
        cim = snapshots / CIM_LAYERS_DIR / f"{sid}.cim"
        if sid in pending:
            report.add(
                Level.NOTE,
                f"snapshots/cim-layers/{sid}.cim",
                "empty layer pending (Commit deferred its CIM): the next start builds it",
            )
            continue
        problem = cim_layer_problem(cim)
        if problem is not None:
            report.add(Level.PROBLEM, f"snapshots/cim-layers/{sid}.cim", problem)
            continue
        if not verify:
            continue
        try:
            errors = [p for p in verify_path(cim) if p.severity == Severity.ERROR]
        except OSError as e:
            errors = []
            report.add(Level.PROBLEM, f"snapshots/cim-layers/{sid}.cim", f"unreadable: {e}")
        report.layers_verified += 1
        for error in errors[:5]:
            report.add(Level.PROBLEM, f"snapshots/cim-layers/{sid}.cim", str(error))


def _check_snapshot_entries(root: Path, kinds: Mapping[int, Kind], report: FsckReport) -> None:
    for entry in sorted(os.scandir(root / "snapshots"), key=lambda e: e.name):
        name = entry.name
        if name == CIM_LAYERS_DIR:
            continue
        where = f"snapshots/{name}"
        if name.startswith(REMOVAL_PREFIX):
            report.add(Level.RECLAIMABLE, where, "set aside for removal")
            continue
        sid = snapshot_id(name)
        if sid is None:
            report.add(Level.NOTE, where, "not a snapshotter name; left alone")
        elif sid not in kinds:
            report.add(Level.RECLAIMABLE, where, "no snapshot has this ID")


def _check_layer_entries(
    layers: Path, kinds: Mapping[int, Kind], pending: Set[int], report: FsckReport
) -> None:
    referenced: set[str] = set()
    images: list[os.DirEntry[str]] = []
    others: list[os.DirEntry[str]] = []
    for entry in sorted(os.scandir(layers), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) and entry.name.endswith(".cim"):
            images.append(entry)
        else:
            others.append(entry)
    for entry in images:
        where = f"snapshots/cim-layers/{entry.name}"
        sid = snapshot_id(entry.name[: -len(".cim")])
        if sid is None or sid not in kinds:
            report.add(Level.RECLAIMABLE, where, "no snapshot owns this image")
        try:
            header = read_image_header(Path(entry.path))
        except (CimFormatError, OSError) as e:
            if sid is None or sid not in kinds or sid in pending:
                continue  # a pending layer's image is rebuilt at the next start
            report.add(Level.PROBLEM, where, f"unreadable header: {e}")
            continue
        if sid is not None and sid in kinds:
            referenced.update(str(rs.guid) for rs in header.region_sets)
    for entry in others:
        where = f"snapshots/cim-layers/{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            if entry.name.startswith(REMOVAL_PREFIX) or entry.name.endswith(".cim"):
                report.add(Level.RECLAIMABLE, where, "a directory named like an image")
            else:
                report.add(Level.NOTE, where, "a directory; left alone")
            continue
        if not entry.is_file(follow_symlinks=False):
            report.add(Level.RECLAIMABLE, where, "not a regular file (cleanup unlinks it)")
            continue
        match = _WRITER_FILE.fullmatch(entry.name)
        if match is None:
            report.add(Level.NOTE, where, "not a snapshotter name; left alone")
        elif match.group("guid") is None:
            report.add(Level.RECLAIMABLE, where, "temporary image of an interrupted write")
        elif match.group("guid") not in referenced:
            report.add(Level.RECLAIMABLE, where, "no live image references it")


def findings_as_json(report: FsckReport) -> dict[str, object]:
    """The report as plain data (``cimsnap fsck --json``)."""
    return {
        "ok": report.ok,
        "snapshots": report.snapshots,
        "layers_verified": report.layers_verified,
        "problems": len(report.problems),
        "reclaimable": len(report.reclaimable),
        "findings": [
            {"level": f.level.value, "path": f.path, "why": f.why} for f in report.findings
        ],
    }
