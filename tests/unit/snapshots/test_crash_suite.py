"""The crash suite (cimsnap.devtools.crashpoints): SIGKILL before every durable step of
Prepare, View, Commit (of a scratch tree and of an applied extract layer), the layer
write of an Apply, Remove (with its background file work) and Cleanup, then restart,
check every acknowledged snapshot and its bytes, and fsck.

The suite forks a child per kill point. It runs in a fresh interpreter, never in the
pytest process: by the time this file runs, earlier tests have left gRPC and other
threads there, and forking a process whose threads hold locks can hang the child.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.devtools.crashpoints import MIN_KILL_POINTS

_RUNNER = """
import json, sys
from pathlib import Path
import cimsnap.snapshots.recovery as recovery
from cimsnap.devtools.crashpoints import run_crash_suite

workdir, prefixes, break_recovery = Path(sys.argv[1]), tuple(json.loads(sys.argv[2])), sys.argv[3]
if break_recovery == "1":
    # A Remove killed before its COMMIT leaves rm-<id> with a live row, which recovery
    # must rename back; without that, the snapshot's files are reclaimed.
    real = recovery.entry_mode
    recovery.entry_mode = lambda fd, name: None if name.startswith("rm-") else real(fd, name)
select = (lambda label: label.startswith(prefixes)) if prefixes else None
r = run_crash_suite(workdir, select=select)
print(json.dumps({"kill_points": r.kill_points, "survived": r.survived,
                  "labels": r.labels, "failures": r.failures}))
"""


@dataclass(frozen=True)
class Outcome:
    kill_points: int
    survived: int
    labels: list[str]
    failures: list[str]

    @property
    def lost(self) -> int:
        return self.kill_points - self.survived


def run_suite(workdir: Path, *prefixes: str, break_recovery: bool = False) -> Outcome:
    """Run the crash suite (the points whose label starts with one of ``prefixes``, or all)
    in a fresh interpreter and return its outcome."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _RUNNER,
            str(workdir),
            json.dumps(prefixes),
            str(int(break_recovery)),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return Outcome(**json.loads(done.stdout.strip().splitlines()[-1]))


def test_every_kill_point_is_survived(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_suite(tmp_path)
    assert result.failures == []
    assert result.kill_points >= MIN_KILL_POINTS
    assert result.survived == result.kill_points
    operations = {label.split(":")[0].split("(")[0] for label in result.labels}
    assert operations >= {"prepare", "view", "commit", "apply", "remove", "cleanup"}
    calls = {label.split(":")[1] for label in result.labels}
    assert calls >= {"rename", "unlink", "rmdir", "mkdir", "fsync", "before-commit"}
    # The deferred build of an empty layer: kill points before, during and after it, and
    # around the COMMIT clearing its flag; after each kill the restart rebuilds it.
    deferred = [label for label in result.labels if label.startswith("commit(Z,z)")]
    assert deferred.count("commit(Z,z):before-commit") == 2  # the row, then the flag
    assert "commit(Z,z):rename" in deferred  # the .cim appearing, after the Commit
    with capsys.disabled():
        print(f"\ncrash suite: kill points survived {result.survived}/{result.kill_points}")


def test_the_suite_detects_a_lost_snapshot(tmp_path: Path) -> None:
    result = run_suite(tmp_path, "remove(", break_recovery=True)
    assert result.lost >= 1
    assert any("remove(c)" in failure for failure in result.failures)
