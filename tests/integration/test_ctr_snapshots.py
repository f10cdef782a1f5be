"""Every ``ctr snapshots --snapshotter cimsnap`` sub-command against containerd 1.6.20.

One workflow in one test (each step builds on the previous one): prepare, commit, view,
mounts, ls, tree, info, label, usage, a commit of a written snapshot, and rm. The output
of each ``ctr`` call is compared with what it must be; the effects are checked through our
own API and on disk.

containerd's garbage collector removes snapshots that nothing references (``ctr`` gives
prepared and viewed snapshots no lease); it runs once after start-up (the harness waits for
that) and then after deletions. The view and the active snapshot are therefore marked as
GC roots (``containerd.io/gc.root``) right away, as ``ctr snapshots commit`` does for
committed ones, so the ``rm`` steps cannot take them along.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.snapshots.snapshotter import Kind
from tests.grpc_harness import REPO_ROOT
from tests.integration.containerd_harness import Containerd, backend, wait_for

pytestmark = pytest.mark.integration

GC_ROOT = "containerd.io/gc.root"


def table(text: str) -> list[list[str]]:
    """Rows of a ctr table (header dropped), split on runs of spaces."""
    return [line.split() for line in text.strip().splitlines()[1:]]


def rooted(containerd: Containerd, key: str) -> None:
    containerd.snapshots("label", key, f"{GC_ROOT}=2099-01-01T00:00:00Z")


def test_ctr_snapshots_workflow(containerd: Containerd, ours: SnapshotsClient) -> None:
    root = Path(containerd.base) / "cimsnap" / "root"
    ctr = containerd.snapshots

    # prepare + commit, twice: a chain l1 <- l2. Commits are GC roots (ctr labels them).
    for parent, active, layer in (("", "a1", "l1"), ("l1", "a2", "l2")):
        assert ctr("prepare", active, *([parent] if parent else [])).stdout == ""
        assert ctr("commit", layer, active).stdout == ""
        assert backend(ours, layer).kind == Kind.COMMITTED
    l1, l2 = backend(ours, "l1"), backend(ours, "l2")
    assert l2.parent == l1.name

    # view and prepare on top of l2, made GC roots before anything else can be collected.
    assert ctr("view", "v1", "l2").stdout == ""
    rooted(containerd, "v1")
    assert ctr("prepare", "a3", "l2").stdout == ""
    rooted(containerd, "a3")

    # mounts: the CimFS mount, exactly as containerd's cimfs snapshotter formats it.
    view_src = ours.mounts(backend(ours, "v1").name)[0].source
    active_src = ours.mounts(backend(ours, "a3").name)[0].source
    parent_option = ours.mounts(backend(ours, "a3").name)[0].options[2]
    assert parent_option.startswith("parentLayerPaths=")
    l2_dir, l1_dir = json.loads(parent_option.split("=", 1)[1])
    cims = root / "snapshots" / "cim-layers"
    expected = (
        f"mount -t CimFS {view_src} /mnt/t -o ro,"
        f"cimpath={cims}/{Path(view_src).name}.cim,"
        f'parentLayerPaths=["{l2_dir}","{l1_dir}"],'
        f'parentCimPaths=["{cims}/{Path(l2_dir).name}.cim","{cims}/{Path(l1_dir).name}.cim"]'
    )
    assert ctr("mounts", "/mnt/t", "v1").stdout.strip() == expected
    for layer_dir in (l1_dir, l2_dir):  # the parents are real committed layers on disk
        assert Path(layer_dir).is_dir() and (cims / f"{Path(layer_dir).name}.cim").is_file()
    assert Path(view_src).parent == root / "snapshots"
    rw = ctr("mounts", "/mnt/a", "a3").stdout
    assert rw.startswith(f"mount -t CimFS {active_src} /mnt/a -o rw,cimpath=")

    # ls and tree.
    assert sorted(table(ctr("ls").stdout)) == [
        ["a3", "l2", "Active"],
        ["l1", "Committed"],
        ["l2", "l1", "Committed"],
        ["v1", "l2", "View"],
    ]
    tree = ctr("tree").stdout.splitlines()
    assert tree[:2] == [" l1", "  \\_ l2"]
    assert sorted(tree[2:]) == ["    \\_ a3", "    \\_ v1"]

    # info and label: only containerd.io/snapshot/* labels reach cimsnap.
    info = json.loads(ctr("info", "l2").stdout)
    assert (info["Kind"], info["Name"], info["Parent"]) == ("Committed", "l2", "l1")
    assert GC_ROOT in info["Labels"]
    printed = ctr("label", "l2", "containerd.io/snapshot/team=red", "local=x").stdout.strip()
    assert set(printed.split(",")) == {
        f"{GC_ROOT}={info['Labels'][GC_ROOT]}",
        "containerd.io/snapshot/team=red",
        "local=x",
    }
    labels = json.loads(ctr("info", "l2").stdout)["Labels"]
    assert labels["containerd.io/snapshot/team"] == "red" and labels["local"] == "x"
    ours_labels = ours.stat(l2.name).labels
    assert ours_labels.get("containerd.io/snapshot/team") == "red" and "local" not in ours_labels

    # usage: ctr shows cimsnap's figures (inodes exactly; size in ctr's units).
    rows = {r[0]: r[1:] for r in table(ctr("usage").stdout)}
    assert set(rows) == {"l1", "l2", "a3", "v1"}
    for key in ("l1", "l2", "a3"):
        usage = ours.usage(backend(ours, key).name)
        size, unit, inodes = rows[key]
        assert int(inodes) == usage.inodes, key
        scale = {"B": 1, "KiB": 1024, "MiB": 1024**2}[unit]
        assert abs(float(size) * scale - usage.size) <= 0.05 * scale + 1, (key, rows[key])
    assert table(ctr("usage", "l1").stdout)[0][0] == "l1"

    # commit of a written snapshot: a file in scratch/ becomes a file of the layer.
    (Path(active_src) / "scratch" / "hello.txt").write_text("from ctr\n")
    ctr("commit", "l3", "a3")
    l3 = backend(ours, "l3")
    assert l3.kind == Kind.COMMITTED and l3.parent == l2.name
    cim = cims / f"{Path(active_src).name}.cim"
    cat = subprocess.run(
        [sys.executable, "-m", "cimsnap", "cim", "cat", str(cim), "hello.txt"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cat.returncode == 0 and cat.stdout == "from ctr\n", cat.stderr

    # rm: containerd drops its record at once; its GC then removes ours, and the disk.
    refused = ctr("rm", "l2", check=False)
    assert refused.returncode != 0 and "failed precondition" in refused.stderr
    view_key = backend(ours, "v1").name
    assert ctr("rm", "v1").stdout == ""
    assert "v1" not in ctr("ls").stdout.split()
    wait_for(lambda: view_key not in {i.name for i in ours.list()})
    wait_for(lambda: not Path(view_src).exists())
    started = time.monotonic()
    for key in ("l3", "l2", "l1"):
        name = backend(ours, key).name
        ctr("rm", key)
        wait_for(lambda n=name: n not in {i.name for i in ours.list()})
    assert time.monotonic() - started < 60
    wait_for(lambda: not any(cims.glob("*.cim")))
    assert table(ctr("ls").stdout) == []
