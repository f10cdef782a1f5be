"""Commit of an empty layer is metadata only; its CIM is built afterwards (pending.py).

The build lock is the one real seam: holding it keeps every build (background or inline)
from running, which proves that Commit never waits for one and that the callers which
need the file do.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.cim import Severity, read_image_header, verify_path
from cimsnap.cim.regions import open_image
from cimsnap.errdefs import FailedPrecondition, NotFound
from cimsnap.snapshots.fsck import Level, check_root
from cimsnap.snapshots.pending import PendingLayers
from cimsnap.snapshots.snapshotter import Kind, Snapshotter
from cimsnap.store import MIGRATIONS, Store, migrate, pending_layers
from cimsnap.wclayer.layer_files import cim_layer_files, cim_layer_problem
from tests.snapshotter_suite import cim_path, commit_layer, snapshot_dir


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


@pytest.fixture
def sn(root: Path) -> Iterator[Snapshotter]:
    with Snapshotter(root) as snapshotter:
        yield snapshotter


def pending_rows(root: Path) -> list[int]:
    conn = sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM snapshots WHERE layer_pending = 1")]
    finally:
        conn.close()


def valid(cim: Path) -> bool:
    return cim_layer_problem(cim) is None and not [
        p for p in verify_path(cim) if p.severity == Severity.ERROR
    ]


def test_commit_returns_before_the_cim_exists_and_ensure_builds_it(
    sn: Snapshotter, root: Path
) -> None:
    base = commit_layer(sn, "base", f="data")
    mounts = sn.prepare("k", "base")
    sid = int(snapshot_dir(mounts).name)
    with sn._build_lock:  # no build can run: Commit must not need one
        sn.commit("empty", "k")
        assert sn.stat("empty").kind == Kind.COMMITTED
        assert not cim_path(mounts).exists()
        assert sn.pending_layer_ids() == {sid}
        assert pending_rows(root) == [sid]
        assert (snapshot_dir(mounts) / "scratch").is_dir()  # the build deletes it
    sn.ensure_layer_cims((sid, 12345))  # unknown IDs are ignored
    assert valid(cim_path(mounts))
    header = read_image_header(cim_path(mounts))
    base_header = read_image_header(cim_path(base))
    assert header.parents == (*base_header.parents, base_header.own)
    assert sn.pending_layer_ids() == frozenset()
    assert pending_rows(root) == []
    assert sn.wait_reclaimed(30)  # the reaper deletes the committed snapshot's scratch/
    assert sorted(p.name for p in snapshot_dir(mounts).iterdir()) == []
    assert sorted((root / "empty").iterdir()) == []  # the build's source stays empty


def test_background_build_needs_no_caller(sn: Snapshotter, root: Path) -> None:
    mounts = sn.prepare("k")
    sn.commit("empty", "k")
    assert sn.wait_layers(60)
    assert valid(cim_path(mounts))
    assert read_image_header(cim_path(mounts)).parents == ()
    assert pending_rows(root) == []


@pytest.mark.parametrize("create", ["prepare", "view"])
def test_prepare_or_view_of_a_child_waits_for_the_parent_cim(sn: Snapshotter, create: str) -> None:
    commit_layer(sn, "base", f="data")
    mounts = sn.prepare("k", "base")
    seen: list[bool] = []
    lock = sn._build_lock
    lock.acquire()
    try:
        sn.commit("empty", "k")

        def child() -> None:
            getattr(sn, create)("child", "empty")
            seen.append(cim_path(mounts).is_file())

        thread = threading.Thread(target=child)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive() and seen == []  # waiting for the build
        assert not cim_path(mounts).exists()
    finally:
        lock.release()
    thread.join(60)
    assert seen == [True]
    assert valid(cim_path(mounts))


def test_a_chain_of_pending_layers_builds_base_first(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        PendingLayers, "schedule", lambda self, sid, delayed=True: None
    )  # no worker
    # Parentless actives rebased by their Commit: a Prepare on a pending parent would
    # build it, a Commit only records it.
    a = sn.prepare("a")
    sn.commit("A", "a")
    b = sn.prepare("ns/2/extract-b")
    sn.commit("B", "ns/2/extract-b", None, "A")
    c = sn.prepare("c")
    sn.commit("C", "c", None, "B")
    assert len(sn.pending_layer_ids()) == 3
    assert not cim_path(a).exists()
    sn.ensure_layer_cims((int(snapshot_dir(c).name),))
    assert sn.pending_layer_ids() == frozenset()
    ha, hb, hc = (read_image_header(cim_path(m)) for m in (a, b, c))
    assert hb.parents == (ha.own,)
    assert hc.parents == (ha.own, hb.own)
    assert all(valid(cim_path(m)) for m in (a, b, c))


def test_scratch_commit_on_a_pending_parent_builds_the_parent_first(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PendingLayers, "schedule", lambda self, sid, delayed=True: None)
    empty = sn.prepare("e")
    sn.commit("E", "e")
    mounts = sn.prepare("k")  # parentless, rebased onto E by its commit
    (snapshot_dir(mounts) / "scratch" / "f").write_text("x")
    sn.commit("K", "k", None, "E")
    assert sn.pending_layer_ids() == frozenset()
    parent = read_image_header(cim_path(empty))
    assert read_image_header(cim_path(mounts)).parents == (parent.own,)


def test_usage_and_an_extract_prepare_build_a_pending_layer(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PendingLayers, "schedule", lambda self, sid, delayed=True: None)
    a = sn.prepare("a")
    sn.commit("A", "a")
    usage = sn.usage("A")
    assert cim_path(a).is_file()
    assert usage.size >= sum(p.stat().st_size for p in cim_layer_files(cim_path(a)))
    b = sn.prepare("default/1/extract-b sha256:b", "")
    sn.commit("B", "default/1/extract-b sha256:b")  # extract without a CIM: empty, pending
    assert not cim_path(b).exists()
    # The unpacker's next layer: its mounts name B's CIM, which the differ forks from.
    mounts = sn.prepare("default/2/extract-c sha256:c", "B")
    assert valid(cim_path(b))
    assert sn.mounts("default/2/extract-c sha256:c") == mounts


def test_restart_builds_what_is_pending_and_fsck_says_so(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch, Snapshotter(root) as sn:
        patch.setattr(
            PendingLayers, "schedule", lambda self, sid, delayed=True: None
        )  # "crash" before
        commit_layer(sn, "base", f="data")
        other = sn.prepare("o", "base")
        sn.commit("other", "o")
    assert not cim_path(other).exists()
    cim_path(other).write_bytes(b"half-written leftover of a killed build")
    report = check_root(root)
    assert report.ok, report.problems
    notes = [f for f in report.findings if f.level == Level.NOTE]
    assert [f.path for f in notes] == [f"snapshots/cim-layers/{snapshot_dir(other).name}.cim"]
    with Snapshotter(root) as sn:
        assert sn.wait_layers(60)
        assert sn.pending_layer_ids() == frozenset()
        assert sn.wait_reclaimed(60)
    assert valid(cim_path(other))
    report = check_root(root)
    assert report.findings == []


def test_remove_of_a_pending_layer(sn: Snapshotter, root: Path) -> None:
    commit_layer(sn, "base", f="data")
    mounts = sn.prepare("k", "base")
    with sn._build_lock:
        sn.commit("empty", "k")
        sn.remove("empty")  # never waits for the build
        assert sn.pending_layer_ids() == frozenset()
    assert sn.wait_layers(60) and sn.wait_reclaimed(60)
    assert not cim_path(mounts).exists()
    assert not snapshot_dir(mounts).exists()
    sn.close()
    report = check_root(root)
    assert report.findings == []


def test_deferred_commit_refuses_a_parent_whose_cim_is_gone(sn: Snapshotter, root: Path) -> None:
    base = commit_layer(sn, "base", f="data")
    sn.prepare("k", "base")
    for path in cim_layer_files(cim_path(base)):
        path.unlink()
    with pytest.raises(FailedPrecondition):
        sn.commit("empty", "k")
    assert sn.stat("k").kind == Kind.ACTIVE
    assert pending_rows(root) == []


def test_the_empty_source_is_remade_if_anything_is_in_it(
    sn: Snapshotter, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(PendingLayers, "schedule", lambda self, sid, delayed=True: None)
    (root / "empty").mkdir(mode=0o700)
    (root / "empty" / "intruder").write_text("never part of a layer")
    mounts = sn.prepare("k")
    sn.commit("empty-layer", "k")
    sn.usage("empty-layer")
    with open_image(cim_path(mounts)) as image:
        assert [path for path, _ in image.reader.walk() if path] == []
    assert sorted((root / "empty").iterdir()) == []


def test_cleanup_never_reclaims_a_layer_being_built(sn: Snapshotter, root: Path) -> None:
    commit_layer(sn, "base", f="data")
    stop = threading.Event()
    errors: list[BaseException] = []

    def cleaner() -> None:
        try:
            while not stop.is_set():
                sn.cleanup()
        except BaseException as e:  # reported by the assertion below
            errors.append(e)

    thread = threading.Thread(target=cleaner)
    thread.start()
    try:
        mounts = []
        for i in range(12):
            mounts.append(sn.prepare(f"k{i}", "base"))
            sn.commit(f"empty{i}", f"k{i}")
            if i % 3 == 0:
                sn.view(f"v{i}", f"empty{i}")  # an inline build racing the worker
    finally:
        stop.set()
        thread.join(120)
    assert errors == []
    assert sn.wait_layers(60) and sn.wait_reclaimed(60)
    assert sn.pending_layer_ids() == frozenset()
    assert all(valid(cim_path(m)) for m in mounts)
    sn.close()
    report = check_root(root)
    assert report.ok, report.problems
    assert report.reclaimable == []


def test_a_version_1_metastore_is_migrated_with_nothing_pending(tmp_path: Path) -> None:
    path = tmp_path / "metadata.db"
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, MIGRATIONS[:1])
    conn.execute("INSERT INTO snapshots (key, kind, created_ns, updated_ns) VALUES ('c', 3, 1, 1)")
    conn.close()
    with Store(path) as store:
        assert store.schema_version == len(MIGRATIONS) == 2
        with store.read() as tx:
            assert pending_layers(tx) == {}


def test_a_prepare_racing_its_parents_commit_still_gets_the_parent_cim(
    sn: Snapshotter, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check before the create transaction saw the parent still active (its Commit
    # had not returned); the create then found it committed and pending.
    monkeypatch.setattr(PendingLayers, "schedule", lambda self, sid, delayed=True: None)
    monkeypatch.setattr(Snapshotter, "_ensure_parent", lambda self, parent: None)
    base = commit_layer(sn, "base", f="data")
    mounts = sn.prepare("k", "base")
    sn.commit("empty", "k")
    sn.view("v", "empty")
    assert valid(cim_path(mounts))
    # If that build fails, the new snapshot is undone and the error returned.
    sn.prepare("k2", "base")
    sn.commit("empty2", "k2")
    for path in cim_layer_files(cim_path(base)):
        path.unlink()
    with pytest.raises(FailedPrecondition):
        sn.prepare("child", "empty2")
    with pytest.raises(NotFound):
        sn.stat("child")
    assert sn.stat("empty2").kind == Kind.COMMITTED
