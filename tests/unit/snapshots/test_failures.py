"""Failure paths of the in-process Snapshotter: metadata commits that fail, and crashes.

These reach inside (the metastore's ``write``) to make the final COMMIT fail, which no
client can provoke; the shared suite covers the behaviour a client can see.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cimsnap.cim import build_from_directory, read_image_header, region_set_files
from cimsnap.errdefs import NotFound, Unavailable
from cimsnap.snapshots.snapshotter import Kind, Snapshotter
from cimsnap.store import WriteTx
from tests.snapshotter_suite import cim_path, snapshot_dir, state


def fail_next_commit(sn: Snapshotter, monkeypatch: pytest.MonkeyPatch) -> None:
    store = sn._store
    real = store.write

    @contextmanager
    def failing() -> Iterator[WriteTx]:
        monkeypatch.setattr(store, "write", real)
        with real() as tx:
            yield tx
            raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "write", failing)


@pytest.fixture
def sn(tmp_path: Path) -> Iterator[Snapshotter]:
    with Snapshotter(tmp_path / "root") as s:
        yield s


def test_prepare_whose_commit_fails_leaves_nothing(
    sn: Snapshotter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sn.prepare("existing")
    before = state(tmp_path / "root")
    fail_next_commit(sn, monkeypatch)
    with pytest.raises(sqlite3.OperationalError):
        sn.prepare("new")
    assert state(tmp_path / "root") == before


def test_remove_whose_commit_fails_renames_back(
    sn: Snapshotter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts = sn.prepare("k")
    (snapshot_dir(mounts) / "scratch" / "f").write_text("data")
    before = state(tmp_path / "root")
    fail_next_commit(sn, monkeypatch)
    with pytest.raises(sqlite3.OperationalError):
        sn.remove("k")
    assert state(tmp_path / "root") == before
    assert (snapshot_dir(mounts) / "scratch" / "f").read_text() == "data"


def test_commit_whose_metadata_fails_destroys_the_new_cim(
    sn: Snapshotter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mounts = sn.prepare("k")
    (snapshot_dir(mounts) / "scratch" / "f").write_text("data")
    before = state(tmp_path / "root")
    fail_next_commit(sn, monkeypatch)
    with pytest.raises(sqlite3.OperationalError):
        sn.commit("name", "k")
    assert state(tmp_path / "root") == before
    assert sn.stat("k").kind == Kind.ACTIVE
    sn.commit("name", "k")
    assert cim_path(mounts).is_file()


_CRASH_IN_PREPARE = textwrap.dedent(
    """
    import sys
    from contextlib import contextmanager
    from pathlib import Path
    from cimsnap.snapshots.snapshotter import Snapshotter
    sn = Snapshotter(Path(sys.argv[1]))
    sn.prepare("first")
    real = sn._store.write

    @contextmanager
    def stall():
        with real() as tx:
            yield tx
            # The row and the directory exist, the COMMIT has not happened: die here.
            (Path(sys.argv[1]) / "snapshots" / "2" / "scratch" / "half").write_text("x")
            print("inside", flush=True)
            sys.stdin.readline()

    sn._store.write = stall
    sn.prepare("second")
    """
)


def test_crash_between_mkdir_and_commit(tmp_path: Path) -> None:
    root = tmp_path / "root"
    child = subprocess.Popen(
        [sys.executable, "-c", _CRASH_IN_PREPARE, str(root)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdin is not None
    assert child.stdout.readline() == "inside\n"
    child.kill()
    child.wait()
    child.stdin.close()
    child.stdout.close()
    assert (root / "snapshots" / "2" / "scratch" / "half").exists()  # the leftover

    with Snapshotter(root) as sn:
        with pytest.raises(NotFound):
            sn.stat("second")
        assert [i.name for i in sn.list()] == ["first"]
        mounts = sn.prepare("third")  # the rolled-back ID comes round again, cleared
        assert snapshot_dir(mounts).name == "2"
        assert sorted(p.name for p in snapshot_dir(mounts).iterdir()) == ["scratch"]
        assert list((snapshot_dir(mounts) / "scratch").iterdir()) == []


def test_prepare_destroys_a_leftover_image_of_its_fresh_id(tmp_path: Path) -> None:
    # What a crash after an Apply wrote <id>.cim but before the Prepare's row committed can
    # leave for the same ID to come round again (the start-up cleanup may not have run yet).
    root = tmp_path / "root"
    with Snapshotter(root) as sn:
        sn.prepare("first")
        assert sn.wait_reclaimed(30)
        empty = tmp_path / "empty"
        empty.mkdir()
        leftover = root / "snapshots" / "cim-layers" / "2.cim"
        build_from_directory(empty, leftover)
        own = set(region_set_files(leftover.parent, read_image_header(leftover).own))
        assert own and all(p.exists() for p in own)
        mounts = sn.prepare("second")
        assert snapshot_dir(mounts).name == "2"
        assert cim_path(mounts) == leftover and not leftover.exists()
        assert not any(p.exists() for p in own)


def test_startup_restores_directory_of_an_uncommitted_remove(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Snapshotter(root) as sn:
        mounts = sn.prepare("k")
        (snapshot_dir(mounts) / "scratch" / "f").write_text("data")
    # What a crash after Remove's rename but before its COMMIT leaves behind:
    snapshot_dir(mounts).rename(root / "snapshots" / f"rm-{snapshot_dir(mounts).name}")
    with Snapshotter(root) as sn:
        assert sn.stat("k").kind == Kind.ACTIVE
        sn.cleanup()
        assert (snapshot_dir(mounts) / "scratch" / "f").read_text() == "data"


def test_second_snapshotter_on_the_same_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with Snapshotter(root) as first:
        first.prepare("k")
        with pytest.raises(Unavailable):
            Snapshotter(root)
        other_process = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; "
                "from cimsnap.snapshots.snapshotter import Snapshotter; "
                "Snapshotter(Path(sys.argv[1]))",
                str(root),
            ],
            capture_output=True,
            text=True,
        )
        assert "Unavailable" in other_process.stderr
    with Snapshotter(root) as again:
        assert again.stat("k").kind == Kind.ACTIVE


def test_remove_replaces_a_stale_rm_directory(sn: Snapshotter, tmp_path: Path) -> None:
    mounts = sn.prepare("k")
    stale = tmp_path / "root" / "snapshots" / f"rm-{snapshot_dir(mounts).name}"
    stale.mkdir()
    (stale / "old").write_text("x")
    sn.remove("k")
    assert sn.wait_reclaimed(30)
    assert not stale.exists()
    assert not snapshot_dir(mounts).exists()
