"""A real containerd (Debian's 1.6.20) using cimsnap as its snapshot proxy, driven by ctr.

The daemons come from ``conftest.py`` (see ``containerd_harness``). We check the effects of
each ``ctr`` call through our own List/Stat.
"""

from __future__ import annotations

import json

import pytest

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.snapshots.snapshotter import Kind
from tests.integration.containerd_harness import Containerd, backend, wait_for

pytestmark = pytest.mark.integration


def test_plugin_is_loaded(containerd: Containerd) -> None:
    out = containerd.ctr("plugins", "ls").stdout
    rows = [line.split() for line in out.splitlines()]
    assert ["io.containerd.snapshotter.v1", "cimsnap", "-", "ok"] in rows


def test_prepare_ls_info_mounts_usage(containerd: Containerd, ours: SnapshotsClient) -> None:
    containerd.snapshots("prepare", "p1")
    info = backend(ours, "p1")
    assert info.kind == Kind.ACTIVE and info.parent == ""
    assert info.name.startswith("default/")  # the metadata layer's key rewriting
    ls = containerd.snapshots("ls").stdout.split()
    assert "p1" in ls and "Active" in ls
    described = json.loads(containerd.snapshots("info", "p1").stdout)
    assert described["Kind"] == "Active" and described["Name"] == "p1"
    mount = containerd.snapshots("mounts", "/mnt/x", "p1").stdout
    assert "-t CimFS" in mount and "rw" in mount
    usage = containerd.snapshots("usage", "p1").stdout
    assert "p1" in usage


def test_commit_view_label(containerd: Containerd, ours: SnapshotsClient) -> None:
    containerd.snapshots("prepare", "c-active")
    containerd.snapshots("commit", "c-layer", "c-active")
    layer = backend(ours, "c-layer")
    assert layer.kind == Kind.COMMITTED
    containerd.snapshots("view", "c-view", "c-layer")
    view = backend(ours, "c-view")
    assert view.kind == Kind.VIEW and view.parent == layer.name
    mount = containerd.snapshots("mounts", "/mnt/v", "c-view").stdout
    assert "ro" in mount.split("-o", 1)[1]
    # Labels under containerd.io/snapshot/ reach the proxy; others stay in containerd.
    containerd.snapshots("label", "c-view", "containerd.io/snapshot/team=red", "local=x")
    labels = ours.stat(view.name).labels
    assert labels.get("containerd.io/snapshot/team") == "red" and "local" not in labels


def test_remove_reaches_the_proxy_through_gc(containerd: Containerd, ours: SnapshotsClient) -> None:
    containerd.snapshots("prepare", "r-active")
    containerd.snapshots("commit", "r-parent", "r-active")
    containerd.snapshots("prepare", "r-child", "r-parent")
    child = backend(ours, "r-child").name
    # A parent with a child is refused inside containerd.
    refused = containerd.snapshots("rm", "r-parent", check=False)
    assert refused.returncode != 0 and "failed precondition" in refused.stderr
    containerd.snapshots("rm", "r-child")
    # The backend Remove comes from the GC (about 2 s on 1.6.20).
    wait_for(lambda: child not in {i.name for i in ours.list()})
    parent = backend(ours, "r-parent").name
    containerd.snapshots("rm", "r-parent")
    wait_for(lambda: parent not in {i.name for i in ours.list()})
