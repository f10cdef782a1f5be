"""``cimsnap fsck`` and check_root: rows, files and layers agree, or the list says why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cimsnap.errdefs import Unavailable
from cimsnap.snapshots.fsck import Level, check_root
from cimsnap.snapshots.snapshotter import Snapshotter
from cimsnap.wclayer.layer_files import cim_layer_files
from tests.snapshotter_suite import commit_layer, snapshot_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    with Snapshotter(root) as sn:
        base = commit_layer(sn, "base", a="1")
        commit_layer(sn, "child", "base", b="2")
        sn.prepare("active", "child")
        sn.view("view", "base")
    assert snapshot_dir(base).name == "1"
    return root


def fsck(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cimsnap", "fsck", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_healthy_root_passes(root: Path) -> None:
    report = check_root(root)
    assert report.findings == []
    assert (report.snapshots, report.layers_verified) == (4, 2)
    proc = fsck(root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 snapshots, 2 layers verified: 0 problems, 0 reclaimable" in proc.stdout


def test_leftovers_are_reclaimable_not_problems(root: Path) -> None:
    layers = root / "snapshots" / "cim-layers"
    (root / "snapshots" / "77").mkdir()
    (root / "snapshots" / "rm-78").mkdir()
    os.symlink("/etc", root / "snapshots" / "rm-79")
    (layers / "region_00000000-0000-0000-0000-000000000001_0").write_bytes(b"x")
    (layers / ".80.cim.00000000-0000-0000-0000-000000000002.tmp").write_bytes(b"x")
    (root / "snapshots" / "lost+found").mkdir()
    report = check_root(root)
    assert report.ok
    assert sorted(f.path for f in report.reclaimable) == [
        "snapshots/77",
        "snapshots/cim-layers/.80.cim.00000000-0000-0000-0000-000000000002.tmp",
        "snapshots/cim-layers/region_00000000-0000-0000-0000-000000000001_0",
        "snapshots/rm-78",
        "snapshots/rm-79",
    ]
    assert [(f.level, f.path) for f in report.findings if f.level == Level.NOTE] == [
        (Level.NOTE, "snapshots/lost+found")
    ]
    assert fsck(root).returncode == 0
    with Snapshotter(root) as sn:  # the start-up cleanup reclaims every one of them
        assert sn.wait_reclaimed(60)
    assert check_root(root).reclaimable == []


def test_damage_is_listed_and_exits_1(root: Path) -> None:
    layers = root / "snapshots" / "cim-layers"
    own = cim_layer_files(layers / "2.cim")
    own[1].unlink()  # a region file of "child" lost
    shutil.rmtree(root / "snapshots" / "3")  # the active's directory lost
    data = bytearray((layers / "1.cim").read_bytes())
    proc = fsck(root, "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["ok"] is False
    problems = {f["path"] for f in result["findings"] if f["level"] == "problem"}
    assert problems == {"snapshots/cim-layers/2.cim", "snapshots/3"}
    text = fsck(root)
    assert text.returncode == 1
    assert "problem: snapshots/3: active snapshot without its directory" in text.stdout
    assert "remove the damaged snapshots and pull them again" in text.stdout
    assert (layers / "1.cim").read_bytes() == data  # read-only


def test_a_corrupt_layer_fails_verification(root: Path) -> None:
    layers = root / "snapshots" / "cim-layers"
    region = cim_layer_files(layers / "1.cim")[1]
    raw = bytearray(region.read_bytes())
    raw[len(raw) // 2 :] = bytes(len(raw) - len(raw) // 2)  # zero the second half
    region.write_bytes(bytes(raw))
    report = check_root(root)
    assert not report.ok
    assert {f.path for f in report.problems} >= {"snapshots/cim-layers/1.cim"}


def test_refuses_a_root_in_use(root: Path) -> None:
    with Snapshotter(root):
        with pytest.raises(Unavailable):
            check_root(root)
        proc = fsck(root)
    assert proc.returncode == 2
    assert "stop it first" in proc.stderr


def test_not_a_root_exits_2(tmp_path: Path) -> None:
    proc = fsck(tmp_path)
    assert proc.returncode == 2
    assert "--root" in proc.stderr


def test_committed_row_whose_cim_is_a_link_is_a_problem(root: Path, tmp_path: Path) -> None:
    layers = root / "snapshots" / "cim-layers"
    os.rename(layers / "1.cim", tmp_path / "moved.cim")
    os.symlink(tmp_path / "moved.cim", layers / "1.cim")
    assert {f.path for f in check_root(root).problems} >= {"snapshots/cim-layers/1.cim"}
