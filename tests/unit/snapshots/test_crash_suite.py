"""The crash suite (cimsnap.devtools.crashpoints): SIGKILL before every durable step of
Prepare, View, Commit (of a scratch tree and of an applied extract layer), the layer
write of an Apply, Remove (with its background file work) and Cleanup, then restart,
check every acknowledged snapshot and its bytes, and fsck."""

from __future__ import annotations

from pathlib import Path

import pytest

import cimsnap.snapshots.recovery as recovery
from cimsnap.devtools.crashpoints import MIN_KILL_POINTS, run_crash_suite


def test_every_kill_point_is_survived(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = run_crash_suite(tmp_path)
    assert result.failures == []
    assert result.kill_points >= MIN_KILL_POINTS
    assert result.survived == result.kill_points
    operations = {label.split(":")[0].split("(")[0] for label in result.labels}
    assert operations >= {"prepare", "view", "commit", "apply", "remove", "cleanup"}
    calls = {label.split(":")[1] for label in result.labels}
    assert calls >= {"rename", "unlink", "rmdir", "mkdir", "fsync", "before-commit"}
    with capsys.disabled():
        print(f"\ncrash suite: kill points survived {result.survived}/{result.kill_points}")


def test_the_suite_detects_a_lost_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Break recovery: a Remove killed before its COMMIT leaves rm-<id> with a live row,
    # which recovery must rename back. Without that, the snapshot's files are reclaimed.
    real = recovery.entry_mode
    monkeypatch.setattr(
        recovery,
        "entry_mode",
        lambda fd, name: None if name.startswith("rm-") else real(fd, name),
    )
    result = run_crash_suite(tmp_path, select=lambda label: label.startswith("remove("))
    assert result.lost >= 1
    assert any("remove(c)" in failure for failure in result.failures)


def test_the_deferred_build_of_an_empty_layer_survives_every_kill(tmp_path: Path) -> None:
    # Commit(Z) records an empty layer as pending and returns; the background build (kill
    # points before, during and after it, and around the COMMIT clearing the flag) and a
    # Remove of the layer. After each kill the restart must rebuild whatever is pending.
    result = run_crash_suite(
        tmp_path, select=lambda label: label.startswith(("commit(Z,z)", "remove(Z)"))
    )
    assert result.failures == []
    labels = [label for label in result.labels if label.startswith("commit(Z,z)")]
    assert labels.count("commit(Z,z):before-commit") == 2  # the row, then the flag
    assert "commit(Z,z):rename" in labels  # the .cim appearing, after the Commit
    assert result.kill_points >= 20 and result.survived == result.kill_points
