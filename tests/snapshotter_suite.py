"""The snapshotter behaviour suite, written once and run against every implementation.

Modelled on containerd's ``core/snapshots/testsuite`` plus
the API contract of §2.2 and cimsnap's own commit/cleanup rules. Every test takes the
fixture ``snapshotter_factory``: a callable ``factory(root: Path)`` returning a fresh object
with the :class:`cimsnap.snapshots.snapshotter.Snapshotter` API on ``root`` (the in-process suite
passes the class; the server suite passes a client talking to ``cimsnap serve`` over a unix
socket). ``close()`` on that object must release ``root`` so that calling the factory again
on the same root sees the persisted state. The fixture closes whatever is left open.

To run the suite against another implementation::

    from tests.snapshotter_suite import *  # noqa: F403  (collects the test_* functions)

    @pytest.fixture
    def snapshotter_factory(): ...

Tests assert error *classes* (cimsnap.errdefs), and that bad input leaves the metastore
rows and the files under ``<root>/snapshots`` exactly as they were.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import pytest

from cimsnap.cim import build_from_directory, read_image_header
from cimsnap.cim.regions import open_image
from cimsnap.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cimsnap.snapshots.snapshotter import Info, Kind, Mount, Usage
from cimsnap.wclayer.cim_writer import while_directory_busy

GC_ROOT = {"containerd.io/gc.root": "2026-01-01T00:00:00Z"}


class SnapshotterAPI(Protocol):
    def prepare(self, key: str, parent: str = "", labels: Any = None) -> list[Mount]: ...
    def view(self, key: str, parent: str = "", labels: Any = None) -> list[Mount]: ...
    def mounts(self, key: str) -> list[Mount]: ...
    def commit(self, name: str, key: str, labels: Any = None, parent: str = "") -> None: ...
    def remove(self, key: str) -> None: ...
    def stat(self, key: str) -> Info: ...
    def update(self, info: Info, fieldpaths: Sequence[str]) -> Info: ...
    def usage(self, key: str) -> Usage: ...
    def list(self, filters: Sequence[str] = ()) -> list[Info]: ...
    def cleanup(self) -> None: ...
    def close(self) -> None: ...


Factory = Callable[[Path], SnapshotterAPI]


# -- helpers -------------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "root"


#: The ``sn`` of each root, for :func:`settle_layers`.
_OPEN: dict[Path, SnapshotterAPI] = {}


@pytest.fixture
def sn(snapshotter_factory: Factory, root: Path) -> Iterator[SnapshotterAPI]:
    snapshotter = snapshotter_factory(root)
    _OPEN[root] = snapshotter
    yield snapshotter
    _OPEN.pop(root, None)


State = tuple[list[Any], list[Any], list[Any], list[str]]


def state(root: Path) -> State:
    """Everything an error must leave unchanged: rows, labels, sequence, files."""
    conn = sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT * FROM snapshots ORDER BY id").fetchall()
        labels = conn.execute("SELECT * FROM labels ORDER BY snapshot_id, name").fetchall()
        seq = conn.execute("SELECT * FROM sqlite_sequence").fetchall()
    finally:
        conn.close()
    files = sorted(str(p.relative_to(root)) for p in (root / "snapshots").rglob("*"))
    return rows, labels, seq, files


def snapshot_dir(mounts: list[Mount]) -> Path:
    assert len(mounts) == 1
    return Path(mounts[0].source)


def write_layer(source: Path, cim: Path) -> None:
    """Build ``cim`` from ``source`` the way the differ writes a layer: waiting for the CIM
    directory's writer lock, which the snapshotter's own start-up Cleanup may hold briefly."""
    while_directory_busy(lambda: build_from_directory(source, cim), busy_timeout=60)


def cim_path(mounts: list[Mount]) -> Path:
    (option,) = [o for o in mounts[0].options if o.startswith("cimpath=")]
    return Path(option.removeprefix("cimpath="))


def commit_layer(sn: SnapshotterAPI, name: str, parent: str = "", **files: str) -> list[Mount]:
    """Prepare ``name``-active on ``parent``, write ``files`` into scratch, commit.

    Returns the active's mounts: commit keeps the ID, so their source and ``cimpath`` are
    the committed layer's directory and CIM. The layer's CIM exists when this returns: a
    Commit without files defers its empty CIM, and Usage of the layer builds it.
    """
    key = f"{name}-active"
    mounts = sn.prepare(key, parent, GC_ROOT)
    for rel, text in files.items():
        (snapshot_dir(mounts) / "scratch" / rel).write_text(text)
    sn.commit(name, key, GC_ROOT)
    if not files:
        sn.usage(name)
    return mounts


def settle(sn: SnapshotterAPI) -> None:
    """Let Remove's background file work finish: ``wait_reclaimed`` where the object has it
    (in-process), else a Cleanup, which reclaims the same entries before it returns."""
    wait = getattr(sn, "wait_reclaimed", None)
    if wait is not None:
        assert wait(60)
    else:
        sn.cleanup()


def _pending_keys(root: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{root / 'metadata.db'}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT key FROM snapshots WHERE layer_pending = 1")]
    finally:
        conn.close()


def settle_layers(root: Path, timeout: float = 60.0) -> None:
    """Return once no committed layer of ``root`` is pending: Commit defers an empty
    layer's CIM to a background build, which changes files and the row when it runs.
    The fixture's ``sn`` of ``root`` builds them at once (Usage needs the CIM) and waits
    for its reaper; otherwise this waits for the background builds."""
    sn = _OPEN.get(root)
    if sn is not None:
        for key in _pending_keys(root):
            sn.usage(key)
        wait = getattr(sn, "wait_reclaimed", None)
        if wait is not None:  # a build hands the committed snapshot's scratch/ to the reaper
            assert wait(60)
    deadline = time.monotonic() + timeout
    while True:
        pending = len(_pending_keys(root))
        if not pending:
            return
        assert time.monotonic() < deadline, f"{pending} layers still pending after {timeout} s"
        time.sleep(0.01)


def expect_unchanged(root: Path, error: type[Exception], call: Callable[[], object]) -> Exception:
    settle_layers(root)
    before = state(root)
    with pytest.raises(error) as info:
        call()
    assert state(root) == before
    return info.value


def now() -> datetime:
    return datetime.now(UTC)


# -- mounts --------------------------------------------------------------------------------


def test_prepare_returns_one_rw_cimfs_mount(sn: SnapshotterAPI, root: Path) -> None:
    mounts = sn.prepare("default/1/k", "", GC_ROOT)
    assert len(mounts) == 1
    m = mounts[0]
    assert m.type == "CimFS"
    source = Path(m.source)
    assert source.parent == root / "snapshots"
    assert source.name.isdigit()
    assert m.options == ("rw", f"cimpath={root}/snapshots/cim-layers/{source.name}.cim")
    assert source.is_dir()
    assert (source / "scratch").is_dir()
    assert (root / "snapshots" / "cim-layers").is_dir()


def test_extract_snapshot_gets_no_scratch_and_rw(sn: SnapshotterAPI) -> None:
    mounts = sn.prepare("default/7/extract-305082288-s3Np sha256:abc", "")
    assert mounts[0].options[0] == "rw"
    assert not (snapshot_dir(mounts) / "scratch").exists()


def test_mount_parents_run_from_immediate_parent_as_go_json(sn: SnapshotterAPI, root: Path) -> None:
    base_id = snapshot_dir(commit_layer(sn, "base")).name
    mid_id = snapshot_dir(commit_layer(sn, "mid", "base")).name
    mounts = sn.view("top-view", "mid")
    own = snapshot_dir(mounts).name
    s = f"{root}/snapshots"
    assert mounts[0].options == (
        "ro",
        f"cimpath={s}/cim-layers/{own}.cim",
        f'parentLayerPaths=["{s}/{mid_id}","{s}/{base_id}"]',
        f'parentCimPaths=["{s}/cim-layers/{mid_id}.cim","{s}/cim-layers/{base_id}.cim"]',
    )
    assert sn.mounts("top-view") == mounts


def test_mounts_errors(sn: SnapshotterAPI, root: Path) -> None:
    commit_layer(sn, "c")
    expect_unchanged(root, NotFound, lambda: sn.mounts("missing"))
    expect_unchanged(root, FailedPrecondition, lambda: sn.mounts("c"))
    mounts = sn.prepare("a", "c")
    assert sn.mounts("a") == mounts


# -- prepare / view preconditions ------------------------------------------------------------


def test_prepare_view_same_key_fails(sn: SnapshotterAPI, root: Path) -> None:
    sn.prepare("k")
    expect_unchanged(root, AlreadyExists, lambda: sn.view("k"))
    expect_unchanged(root, AlreadyExists, lambda: sn.prepare("k"))
    sn.view("v")
    expect_unchanged(root, AlreadyExists, lambda: sn.view("v"))
    expect_unchanged(root, AlreadyExists, lambda: sn.prepare("v"))


def test_keys_and_names_share_one_space(sn: SnapshotterAPI, root: Path) -> None:
    commit_layer(sn, "name")
    expect_unchanged(root, AlreadyExists, lambda: sn.prepare("name"))
    sn.prepare("key")
    expect_unchanged(root, AlreadyExists, lambda: sn.commit("key", "key"))


def test_prepare_parent_errors(sn: SnapshotterAPI, root: Path) -> None:
    sn.prepare("active")
    commit_layer(sn, "c")
    sn.view("view", "c")
    for create in (sn.prepare, sn.view):
        expect_unchanged(root, NotFound, partial(create, "x", "missing"))
        expect_unchanged(root, InvalidArgument, partial(create, "x", "active"))
        expect_unchanged(root, InvalidArgument, partial(create, "x", "view"))


def test_label_size_limit(sn: SnapshotterAPI, root: Path) -> None:
    fits = {"k": "v" * 4095}
    sn.prepare("ok", "", fits)
    assert sn.stat("ok").labels == fits
    big = {"k": "v" * 4096}
    multibyte = {"k": "é" * 2048}  # 4096 bytes of value, 4097 with the key
    for labels in (big, multibyte):
        expect_unchanged(root, InvalidArgument, partial(sn.prepare, "x", "", labels))
        expect_unchanged(root, InvalidArgument, partial(sn.view, "x", "", labels))
        expect_unchanged(root, InvalidArgument, partial(sn.commit, "x", "ok", labels))
        info = sn.stat("ok")
        bad = Info(info.kind, info.name, info.parent, labels, info.created, info.updated)
        expect_unchanged(root, InvalidArgument, partial(sn.update, bad, []))


def test_errors_name_their_subject(sn: SnapshotterAPI, root: Path) -> None:
    # containerd style: subject first, e.g. `snapshot "k": not found`.
    key = "default/9/no such key"
    for call in (sn.stat, sn.mounts, sn.remove, sn.usage):
        assert key in str(expect_unchanged(root, NotFound, partial(call, key)))
    sn.prepare("dup")
    assert "dup" in str(expect_unchanged(root, AlreadyExists, partial(sn.prepare, "dup")))
    missing_parent = expect_unchanged(root, NotFound, partial(sn.prepare, "x", "no-parent"))
    assert "no-parent" in str(missing_parent)
    assert "parent" in str(expect_unchanged(root, InvalidArgument, partial(sn.prepare, "x", "dup")))


# -- stat -------------------------------------------------------------------------------------


def test_stat_active_and_committed(sn: SnapshotterAPI, root: Path) -> None:
    sn.prepare("a", "", GC_ROOT)
    info = sn.stat("a")
    assert (info.name, info.kind, info.parent) == ("a", Kind.ACTIVE, "")
    assert info.labels == GC_ROOT
    sn.commit("c", "a")
    info = sn.stat("c")
    assert (info.name, info.kind, info.parent) == ("c", Kind.COMMITTED, "")
    expect_unchanged(root, NotFound, lambda: sn.stat("a"))
    assert info.created.tzinfo is not None


def test_transitivity(sn: SnapshotterAPI) -> None:
    commit_layer(sn, "A")
    commit_layer(sn, "B", "A")
    assert sn.stat("B").parent == "A"
    assert sn.stat("A").parent == ""


# -- commit -----------------------------------------------------------------------------------


def test_commit_semantics(sn: SnapshotterAPI) -> None:
    commit_layer(sn, "base")
    mounts = sn.prepare("k", "base", {"old": "1", **GC_ROOT})
    active = sn.stat("k")
    t1 = now()
    sn.commit("name", "k", {"new": "2"})
    t2 = now()
    info = sn.stat("name")
    assert info.kind == Kind.COMMITTED
    assert info.parent == "base"
    assert info.labels == {"new": "2"}
    assert info.created == info.updated
    assert t1 <= info.created <= t2
    assert info.created > active.created
    with pytest.raises(NotFound):
        sn.stat("k")
    # The ID is kept: the committed layer is the active's directory and CIM.
    child = sn.view("child", "name")
    opts = child[0].options
    assert f'parentLayerPaths=["{snapshot_dir(mounts)}"' in opts[2]
    assert opts[3].startswith(f'parentCimPaths=["{cim_path(mounts)}"')
    assert cim_path(mounts).is_file()


def test_commit_precedence(sn: SnapshotterAPI, root: Path) -> None:
    commit_layer(sn, "c")
    commit_layer(sn, "c2")
    sn.prepare("a", "c")
    sn.prepare("orphan")
    sn.view("v", "c")
    sn.prepare("a-on-active-parent")
    # name exists wins over everything, even a missing key
    expect_unchanged(root, AlreadyExists, lambda: sn.commit("c", "missing"))
    expect_unchanged(root, AlreadyExists, lambda: sn.commit("c", "v"))
    expect_unchanged(root, NotFound, lambda: sn.commit("new", "missing"))
    expect_unchanged(root, FailedPrecondition, lambda: sn.commit("new", "v"))
    expect_unchanged(root, FailedPrecondition, lambda: sn.commit("new", "c"))
    expect_unchanged(root, InvalidArgument, lambda: sn.commit("new", "a", None, "c2"))
    expect_unchanged(root, NotFound, lambda: sn.commit("new", "orphan", None, "missing"))
    expect_unchanged(
        root, FailedPrecondition, lambda: sn.commit("new", "orphan", None, "a-on-active-parent")
    )
    expect_unchanged(root, InvalidArgument, lambda: sn.commit("", "a"))
    sn.commit("same-parent", "a", None, "c")
    assert sn.stat("same-parent").parent == "c"


def test_commit_rebases_parentless_active(sn: SnapshotterAPI) -> None:
    base = commit_layer(sn, "base", **{"a.txt": "a"})
    mounts = sn.prepare("k")
    (snapshot_dir(mounts) / "scratch" / "b.txt").write_text("b")
    sn.commit("rebased", "k", None, "base")
    assert sn.stat("rebased").parent == "base"
    header = read_image_header(cim_path(mounts))
    base_header = read_image_header(cim_path(base))
    assert header.parents == (*base_header.parents, base_header.own)


def test_never_written_active_commits_as_empty_layer(sn: SnapshotterAPI) -> None:
    base_mounts = commit_layer(sn, "base", **{"f.txt": "data"})
    mounts = sn.prepare("k", "base")
    sn.commit("empty", "k")
    sn.usage("empty")  # builds the deferred empty layer (or waits for its build)
    header = read_image_header(cim_path(mounts))
    base = read_image_header(cim_path(base_mounts))
    assert header.parents == (*base.parents, base.own)
    settle(sn)  # the empty scratch/ is deleted in the background after the build
    assert not (snapshot_dir(mounts) / "scratch").exists()


def test_parentless_empty_commit_is_a_base_layer(sn: SnapshotterAPI) -> None:
    mounts = sn.prepare("k")
    sn.commit("empty", "k")
    sn.view("v", "empty")  # a view mounts the layer: its deferred CIM is built first
    header = read_image_header(cim_path(mounts))
    assert header.parents == ()


def test_extract_commit_keeps_the_differs_cim(sn: SnapshotterAPI, tmp_path: Path) -> None:
    mounts = sn.prepare("default/3/extract-1 sha256:x", "")
    src = tmp_path / "layer"
    src.mkdir()
    (src / "file").write_text("from the differ")
    write_layer(src, cim_path(mounts))
    before = os.stat(cim_path(mounts))
    sn.commit("default/4/sha256:x", "default/3/extract-1 sha256:x")
    after = os.stat(cim_path(mounts))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert sn.stat("default/4/sha256:x").kind == Kind.COMMITTED


def test_extract_commit_without_cim_gives_empty_layer(sn: SnapshotterAPI) -> None:
    mounts = sn.prepare("default/3/extract-2 sha256:y", "")
    sn.commit("default/4/sha256:y", "default/3/extract-2 sha256:y")
    sn.prepare("child", "default/4/sha256:y")  # mounts the layer: its CIM is built first
    assert read_image_header(cim_path(mounts)).parents == ()


def test_commit_with_unrepresentable_scratch_fails_cleanly(sn: SnapshotterAPI, root: Path) -> None:
    mounts = sn.prepare("k")
    scratch = snapshot_dir(mounts) / "scratch"
    (scratch / "ok.txt").write_text("fine")
    os.mkfifo(scratch / "pipe")
    expect_unchanged(root, FailedPrecondition, lambda: sn.commit("name", "k"))
    assert sn.stat("k").kind == Kind.ACTIVE
    assert not cim_path(mounts).exists()
    (scratch / "pipe").unlink()
    sn.commit("name", "k")
    assert cim_path(mounts).is_file()


def test_commit_on_a_parent_whose_cim_vanished_fails_cleanly(
    sn: SnapshotterAPI, root: Path
) -> None:
    base = commit_layer(sn, "base")
    sn.prepare("default/1/extract-9 sha256:q", "base")
    cim_path(base).unlink()  # e.g. deleted by hand
    expect_unchanged(
        root, FailedPrecondition, lambda: sn.commit("n", "default/1/extract-9 sha256:q")
    )


def test_commit_of_damaged_extract_cim_fails(sn: SnapshotterAPI, root: Path) -> None:
    mounts = sn.prepare("default/3/extract-3 sha256:z", "")
    cim_path(mounts).write_bytes(b"not a cim")
    expect_unchanged(
        root, FailedPrecondition, lambda: sn.commit("n", "default/3/extract-3 sha256:z")
    )


def layer_tree(cim: Path) -> dict[str, bytes | None]:
    """The merged tree an image presents: path (``\\``-separated) -> data, None for dirs."""
    with open_image(cim) as image:
        reader = image.reader
        return {
            path: None if rec.is_directory else reader.open_record_stream(rec, None).read()
            for path, rec in reader.walk()
            if path
        }


def test_layers_content_like_check_snapshots(sn: SnapshotterAPI) -> None:
    # containerd testsuite LayerFileupdate, RemoveDirectoryInLowerLayer,
    # DeletedFilesInChildSnapshot and MoveFileFromLowerLayer, on the committed CIMs.
    base = sn.prepare("base-a")
    scratch = snapshot_dir(base) / "scratch"
    (scratch / "keep").write_text("k")
    (scratch / "update").write_text("v1")
    (scratch / "gone").write_text("g")
    (scratch / "dir").mkdir()
    (scratch / "dir" / "inner").write_text("i")
    (scratch / "move-me").write_text("m")
    sn.commit("base", "base-a")
    assert not scratch.exists()  # converted, then deleted

    child = sn.prepare("child-a", "base")
    scratch = snapshot_dir(child) / "scratch"
    (scratch / "update").write_text("v2")
    (scratch / ".wh.gone").write_text("")
    (scratch / ".wh.dir").write_text("")
    (scratch / ".wh.move-me").write_text("")
    (scratch / "moved").write_text("m")
    (scratch / "new").write_text("n")
    sn.commit("child", "child-a")

    assert layer_tree(cim_path(base)) == {
        "keep": b"k",
        "update": b"v1",
        "gone": b"g",
        "dir": None,
        "dir\\inner": b"i",
        "move-me": b"m",
    }
    assert layer_tree(cim_path(child)) == {
        "keep": b"k",
        "update": b"v2",
        "moved": b"m",
        "new": b"n",
    }


# -- remove -----------------------------------------------------------------------------------


def test_remove_with_children_fails_for_every_child_kind(sn: SnapshotterAPI, root: Path) -> None:
    commit_layer(sn, "base")
    for make in ("active", "view", "committed"):
        if make == "active":
            sn.prepare("child", "base")
        elif make == "view":
            sn.view("child", "base")
        else:
            commit_layer(sn, "child", "base")
        err = expect_unchanged(root, FailedPrecondition, lambda: sn.remove("base"))
        assert "remove" in str(err)
        sn.remove("child")
        settle(sn)
    sn.remove("base")
    settle(sn)
    expect_unchanged(root, NotFound, lambda: sn.remove("base"))


def test_remove_intermediate_snapshot(sn: SnapshotterAPI, root: Path) -> None:
    commit_layer(sn, "base")
    commit_layer(sn, "inter", "base")
    sn.prepare("top", "inter")
    expect_unchanged(root, FailedPrecondition, lambda: sn.remove("inter"))
    sn.remove("top")
    sn.remove("inter")
    sn.remove("base")
    assert sn.list() == []


def test_remove_deletes_directory_and_own_cim_only(sn: SnapshotterAPI, root: Path) -> None:
    base = commit_layer(sn, "base", **{"a": "1"})
    mounts = sn.prepare("k", "base")
    (snapshot_dir(mounts) / "scratch" / "b").write_text("2")
    sn.commit("child", "k")
    child_files = {str(p) for p in _own_files(cim_path(mounts))}
    base_files = _own_files(cim_path(base))
    sn.remove("child")
    assert not snapshot_dir(mounts).exists()  # renamed within the call
    settle(sn)
    assert not any(Path(p).exists() for p in child_files)
    assert all(p.exists() for p in base_files)
    assert not any(p.name.startswith("rm-") for p in (root / "snapshots").iterdir())


def _own_files(cim: Path) -> list[Path]:
    from cimsnap.cim import region_set_files

    header = read_image_header(cim)
    return [cim, *region_set_files(cim.parent, header.own)]


def test_remove_allows_key_reuse(sn: SnapshotterAPI) -> None:
    # containerd testsuite "Remove"
    sn.prepare("k")
    sn.remove("k")
    sn.view("k")
    sn.remove("k")
    sn.prepare("k")
    sn.commit("name", "k")
    sn.remove("name")
    sn.prepare("k")
    sn.commit("name", "k")
    assert sn.stat("name").kind == Kind.COMMITTED


def test_ids_are_never_reused(sn: SnapshotterAPI) -> None:
    first = int(snapshot_dir(sn.prepare("a")).name)
    sn.remove("a")
    second = int(snapshot_dir(sn.prepare("b")).name)
    assert second > first


# -- update -----------------------------------------------------------------------------------


def test_update_conformance(sn: SnapshotterAPI, root: Path) -> None:
    t1 = now()
    commit_layer(sn, "c1")
    commit_layer(sn, "c2", "c1")
    sn.prepare("a1")
    sn.prepare("a2", "c2")
    sn.view("v1")
    sn.view("v2", "c2")
    t2 = now()
    expected = {
        "c1": (Kind.COMMITTED, ""),
        "c2": (Kind.COMMITTED, "c1"),
        "a1": (Kind.ACTIVE, ""),
        "a2": (Kind.ACTIVE, "c2"),
        "v1": (Kind.VIEW, ""),
        "v2": (Kind.VIEW, "c2"),
    }
    for key, (kind, parent) in expected.items():
        info = sn.stat(key)
        assert (info.name, info.kind, info.parent) == (key, kind, parent)
        assert t1 <= info.created <= t2
        assert info.created == info.updated

    info = sn.stat("a2")
    request = Info(
        Kind.ACTIVE,
        "a2",
        "ignored-parent",
        {"l1": "v1", "l2": "v2"},
        datetime(2000, 1, 1, tzinfo=UTC),
        datetime(2000, 1, 1, tzinfo=UTC),
    )
    updated = sn.update(request, [])
    assert updated.labels == {"l1": "v1", "l2": "v2"}
    assert updated.parent == "c2"
    assert updated.created == info.created
    assert updated.updated > info.updated
    assert sn.stat("a2") == updated

    request = Info(Kind.ACTIVE, "a2", "", {"l1": "v1-new", "l3": "v3"}, info.created, info.updated)
    updated = sn.update(request, ["labels.l1", "labels.l2"])
    assert updated.labels == {"l1": "v1-new"}  # l2 absent from the request: deleted; l3 not in mask

    request = Info(Kind.ACTIVE, "a2", "", {"l4": "v4"}, info.created, info.updated)
    assert sn.update(request, ["labels"]).labels == {"l4": "v4"}

    expect_unchanged(root, InvalidArgument, lambda: sn.update(request, ["parent"]))
    expect_unchanged(root, InvalidArgument, lambda: sn.update(request, ["labels.x", "name"]))
    missing = Info(Kind.ACTIVE, "missing", "", {}, info.created, info.updated)
    expect_unchanged(root, NotFound, lambda: sn.update(missing, []))


def test_update_never_stores_empty_values(sn: SnapshotterAPI) -> None:
    sn.prepare("k", "", {"a": "1", "b": "2"})
    info = sn.stat("k")
    request = Info(info.kind, "k", "", {"a": "", "c": "3"}, info.created, info.updated)
    assert sn.update(request, ["labels.a", "labels.c"]).labels == {"b": "2", "c": "3"}
    assert sn.update(request, []).labels == {"c": "3"}


def test_update_like_containerd_metadata_layer(sn: SnapshotterAPI) -> None:
    sn.prepare("k", "", {"containerd.io/snapshot/x": "1", "keep": "yes"})
    info = sn.stat("k")
    request = Info(
        Kind.UNKNOWN,
        "k",
        "",
        {"foo": "bar"},
        datetime.fromtimestamp(0, UTC),
        datetime.fromtimestamp(0, UTC),
    )
    got = sn.update(request, ["labels.foo", "labels.containerd.io/snapshot/x"])
    assert got.labels == {"foo": "bar", "keep": "yes"}
    assert got.kind == Kind.ACTIVE
    assert got.created == info.created


# -- list / walk ------------------------------------------------------------------------------


@pytest.fixture
def walk_corpus(sn: SnapshotterAPI) -> SnapshotterAPI:
    # The containerd testsuite "Walk" shape: a committed chain plus actives and views.
    sn.prepare("a-root", "", {"a": "1", **GC_ROOT})
    sn.commit("c-root", "a-root", {"a": "1", "b": "x", **GC_ROOT})
    sn.prepare("a-child", "c-root", {"a": "2", "odd label": "q"})
    sn.commit("c-child", "a-child", {"b": "y", "path/like.key": "v"})
    sn.prepare("active-1", "c-child", {"a": "3"})
    sn.view("view-1", "c-root", {"b": "z"})
    return sn


WALK_CASES: list[tuple[list[str], set[str]]] = [
    ([], {"c-root", "c-child", "active-1", "view-1"}),
    ([""], {"c-root", "c-child", "active-1", "view-1"}),
    (["name==c-root"], {"c-root"}),
    (["name!=c-root"], {"c-child", "active-1", "view-1"}),
    (['parent!=""'], {"c-child", "active-1", "view-1"}),
    (['parent==""'], {"c-root"}),
    (["parent==c-root"], {"c-child", "view-1"}),
    (["kind==committed"], {"c-root", "c-child"}),
    (["kind==active"], {"active-1"}),
    (["kind==view"], {"view-1"}),
    (["labels.a"], {"c-root", "active-1"}),
    (["labels.b==x"], {"c-root"}),
    (["labels.b!=x"], {"c-child", "active-1", "view-1"}),
    (["labels.b==y,kind==committed"], {"c-child"}),
    (["kind==active", "kind==view"], {"active-1", "view-1"}),
    (["name==c-root", "labels.b==z"], {"c-root", "view-1"}),
    (['labels."containerd.io/gc.root"'], {"c-root"}),
    (['labels."path/like.key"==v'], {"c-child"}),
    (["labels.path"], set()),
    (["name~=^c-"], {"c-root", "c-child"}),
    (["name~=/-1$/"], {"active-1", "view-1"}),
    (["name~=|^(view\\|active)|"], {"active-1", "view-1"}),
    (["labels.b~=[xy]"], {"c-root", "c-child"}),
    (['name=="c-root"'], {"c-root"}),
    (['name=="c\\x2droot"'], {"c-root"}),
    ([" name==c-root"], {"c-root"}),
    (["name~=(unclosed"], set()),
]


@pytest.mark.parametrize(("filters", "expected"), WALK_CASES)
def test_list_filters(walk_corpus: SnapshotterAPI, filters: list[str], expected: set[str]) -> None:
    assert {i.name for i in walk_corpus.list(filters)} == expected


@pytest.mark.parametrize(
    "bad",
    [
        "name==c-root,",
        "labels.",
        "name~=,x",
        "labels.ns/key==v",
        "name==/v",
        "name=c",
        "labels.|a|==1",
        "name==a b",
        '"unterminated',
        "name===x",
    ],
)
def test_list_bad_filter_is_invalid_argument(walk_corpus: SnapshotterAPI, bad: str) -> None:
    with pytest.raises(InvalidArgument):
        walk_corpus.list([bad])
    with pytest.raises(InvalidArgument):
        walk_corpus.list(["name==c-root", bad])


def test_list_equals_stat(walk_corpus: SnapshotterAPI) -> None:
    infos = walk_corpus.list()
    assert len(infos) == 4
    for info in infos:
        assert walk_corpus.stat(info.name) == info  # StatInWalk, deep-equal incl. times


def test_stat_and_mutation_while_iterating_list(walk_corpus: SnapshotterAPI) -> None:
    seen = []
    for info in walk_corpus.list():
        seen.append(walk_corpus.stat(info.name))
        walk_corpus.prepare(f"during-{info.name}")
    assert len(seen) == 4
    assert len(walk_corpus.list(["name~=^during-"])) == 4


# -- usage ------------------------------------------------------------------------------------


def test_usage_active_is_live(sn: SnapshotterAPI, root: Path) -> None:
    mounts = sn.prepare("k")
    empty = sn.usage("k")
    scratch = snapshot_dir(mounts) / "scratch"
    (scratch / "big").write_bytes(os.urandom(100_000))
    os.link(scratch / "big", scratch / "link")
    grown = sn.usage("k")
    assert grown.inodes == empty.inodes + 1  # the hard link counts once
    assert grown.size - empty.size >= 100_000
    expect_unchanged(root, NotFound, lambda: sn.usage("missing"))


def test_usage_committed_counts_own_cim_files_not_parents(sn: SnapshotterAPI) -> None:
    mounts = sn.prepare("k")
    (snapshot_dir(mounts) / "scratch" / "big").write_bytes(os.urandom(200_000))
    sn.commit("base", "k")
    base_usage = sn.usage("base")
    own = sum(p.stat().st_size for p in _own_files(cim_path(mounts)))
    assert base_usage.size >= own >= 200_000
    child = sn.prepare("c", "base")
    sn.commit("child", "c")
    child_usage = sn.usage("child")
    child_own = sum(p.stat().st_size for p in _own_files(cim_path(child)))
    assert child_own <= child_usage.size < 200_000


def test_usage_view_is_zero(sn: SnapshotterAPI) -> None:
    commit_layer(sn, "base", **{"f": "x" * 10_000})
    sn.view("v", "base")
    assert sn.usage("v") == Usage(0, 0)


# -- lifecycle --------------------------------------------------------------------------------


def test_close_twice(sn: SnapshotterAPI) -> None:
    sn.close()
    sn.close()


def test_restart_keeps_everything(snapshotter_factory: Factory, root: Path) -> None:
    first = snapshotter_factory(root)
    commit_layer(first, "base", **{"a": "1"})
    first.prepare("active", "base", {"l": "v"})
    first.view("view", "base")
    first.prepare("gone")
    first.remove("gone")
    before = sorted(first.list(), key=lambda i: i.name)
    last_id = int(snapshot_dir(first.mounts("active")).name)
    mounts = first.mounts("view")
    first.close()

    second = snapshotter_factory(root)
    assert sorted(second.list(), key=lambda i: i.name) == before
    assert second.mounts("view") == mounts
    assert int(snapshot_dir(second.prepare("new")).name) > last_id + 1
    second.commit("committed-after-restart", "active")
    assert second.stat("committed-after-restart").parent == "base"


def test_damaged_layer_is_refused_as_parent_after_restart(
    snapshotter_factory: Factory, root: Path
) -> None:
    first = snapshotter_factory(root)
    base = commit_layer(first, "base", **{"a": "1"})
    commit_layer(first, "healthy")
    first.close()
    _own_files(cim_path(base))[1].unlink()  # a region file lost in a crash
    second = snapshotter_factory(root)
    expect_unchanged(root, FailedPrecondition, lambda: second.prepare("x", "base"))
    expect_unchanged(root, FailedPrecondition, lambda: second.view("x", "base"))
    second.prepare("y", "healthy")
    second.remove("base")  # the repair path stays open
    commit_layer(second, "base", **{"a": "1"})
    second.prepare("x", "base")


# -- cleanup ----------------------------------------------------------------------------------


def test_cleanup_reclaims_leftovers_only(sn: SnapshotterAPI, root: Path, tmp_path: Path) -> None:
    commit_layer(sn, "base", **{"a": "1"})
    commit_layer(sn, "child", "base", **{"b": "2"})
    active = sn.prepare("active", "child")
    (snapshot_dir(active) / "scratch" / "wip").write_text("keep me")
    snapshots = root / "snapshots"
    cims = snapshots / "cim-layers"
    live_before = state(root)

    (snapshots / "rm-3").mkdir()
    (snapshots / "rm-3" / "file").write_text("x")
    (snapshots / "9999").mkdir()
    src = tmp_path / "orphan-src"
    src.mkdir()
    (src / "f").write_text("orphan")
    write_layer(src, cims / "9999.cim")  # a CIM left by a crashed import
    orphan_files = _own_files(cims / "9999.cim")
    (cims / "rm-12.cim").write_bytes(b"junk")  # unreadable: removed, no regions touched
    stray = cims / "region_0badc0de-0000-4000-8000-000000000000_0"
    stray.write_bytes(b"x")
    (cims / "objectid_0badc0de-0000-4000-8000-000000000000_0").write_bytes(b"x")
    (cims / ".55.cim.0badc0de-0000-4000-8000-000000000000.tmp").write_bytes(b"x")
    (snapshots / "not-ours.txt").write_text("left alone")

    sn.cleanup()
    after = state(root)
    assert after[:3] == live_before[:3]
    assert set(after[3]) == set(live_before[3]) | {"snapshots/not-ours.txt"}
    assert not any(p.exists() for p in orphan_files)
    assert (snapshot_dir(active) / "scratch" / "wip").read_text() == "keep me"
    sn.cleanup()
    assert state(root) == after
    sn.commit("active-done", "active")  # live layers are still intact
    assert sn.stat("active-done").parent == "child"


def test_cleanup_concurrent_with_prepare_and_commit(sn: SnapshotterAPI) -> None:
    commit_layer(sn, "base")
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn(n: int) -> None:
        try:
            for i in range(8):
                key = f"t{n}-{i}"
                sn.prepare(key, "base")
                sn.commit(f"{key}-c", key)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    def clean() -> None:
        while not stop.is_set():
            sn.cleanup()

    cleaner = threading.Thread(target=clean)
    cleaner.start()
    workers = [threading.Thread(target=churn, args=(n,)) for n in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    cleaner.join()
    assert errors == []
    committed = sn.list(["kind==committed"])
    assert len(committed) == 1 + 4 * 8
    for info in committed:
        view = sn.view(f"v-{info.name}", info.name)
        assert all(Path(p).is_file() for p in _parent_cims(view))


def _parent_cims(mounts: list[Mount]) -> list[str]:
    import json

    (option,) = [o for o in mounts[0].options if o.startswith("parentCimPaths=")]
    return list(json.loads(option.removeprefix("parentCimPaths=")))


# -- scale ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_128_layer_chain(sn: SnapshotterAPI) -> None:
    parent = ""
    names = []
    for i in range(128):
        key = f"layer-{i}-active"
        mounts = sn.prepare(key, parent)
        (snapshot_dir(mounts) / "scratch" / f"f{i}").write_text(str(i))
        sn.commit(f"layer-{i}", key)
        parent = f"layer-{i}"
        names.append(parent)
    view = sn.view("top", parent)
    cims = _parent_cims(view)
    assert len(cims) == 128
    assert layer_tree(Path(cims[0])) == {f"f{i}": str(i).encode() for i in range(128)}
    header = read_image_header(Path(cims[0]))
    assert len(header.parents) == 127
    info = sn.stat("layer-127")
    assert info.parent == "layer-126"


def test_concurrent_readers_and_writers(sn: SnapshotterAPI) -> None:
    commit_layer(sn, "base")
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(20):
                key = f"w{n}-{i}"
                sn.prepare(key, "base", {"n": str(n)})
                assert sn.stat(key).labels == {"n": str(n)}
                sn.list([f"labels.n=={n}"])
                if i % 2:
                    sn.remove(key)
        except BaseException as e:  # collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(sn.list(["kind==active"])) == 6 * 10
