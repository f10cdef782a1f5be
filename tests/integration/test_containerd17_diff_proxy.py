"""containerd 1.7.24 with cimsnap as snapshot proxy AND diff proxy, end to end.

The daemon runs deploy/containerd/config-1.7.toml as shipped (only cimsnap's socket and
root changed), embedded in a private root/state/socket config; cimsnap's server runs
in-process on a private socket with ``containerd_address`` pointing at that daemon.
ctr 1.7 unpacks client-side through the daemon's diff service, whose order
``["cimsnap-diff", "walking"]`` sends every layer to cimsnap first (§6.3a): CimFS layers
are applied by cimsnap, anything else is answered Unimplemented and goes to ``walking``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.devtools.layergen import generate_chain, write_oci_image
from cimsnap.diff.unpack import chain_ids
from cimsnap.snapshots.mounts import parse_cimfs_mount
from tests.grpc_harness import ServerThread
from tests.integration.cimcheck import cim_differences
from tests.integration.containerd_daemon import (
    Containerd,
    cimsnap_beside_containerd,
    containerd17_bin,
    deploy_config,
    tree_depths,
)
from tests.integration.ociarchive import gzip_layer, tar_of, write_oci_archive

pytestmark = pytest.mark.integration


@dataclass
class Stack:
    containerd: Containerd
    server: ServerThread
    base: Path

    def apply_count(self, code: str) -> float:
        value = self.server.metrics.registry.get_sample_value(
            "cimsnap_grpc_requests_total",
            {"method": "containerd.services.diff.v1.Diff/Apply", "code": code},
        )
        return value or 0.0


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    with cimsnap_beside_containerd(
        containerd17_bin(),
        lambda base, server: deploy_config(
            "config-1.7.toml", base, server.address, server.config.root_path
        ),
    ) as (containerd, server, base):
        assert containerd.version() == "1.7.24"
        yield Stack(containerd, server, base)


def test_both_proxies_load(stack: Stack) -> None:
    rows = [line.split() for line in stack.containerd.ctr("plugins", "ls").stdout.splitlines()]
    assert ["io.containerd.snapshotter.v1", "cimsnap", "linux/amd64", "ok"] in rows, [
        r for r in rows if "cimsnap" in " ".join(r)
    ]
    diff_rows = [r for r in rows if len(r) >= 4 and r[1] == "cimsnap-diff"]
    assert diff_rows and diff_rows[0][0] == "io.containerd.differ.v1" and diff_rows[0][-1] == "ok"


def test_linux_image_still_unpacks_through_walking(stack: Stack, tmp_path: Path) -> None:
    layer = gzip_layer(tar_of({"etc/hello": b"hello from linux\n", "bin/tool": b"#!x\n"}))
    archive = tmp_path / "linux.tar"
    write_oci_archive(archive, "example.test/linux:1", [layer], os_="linux")
    before = stack.apply_count("UNIMPLEMENTED")
    ctd = stack.containerd
    ctd.ctr("image", "import", "--platform", "linux/amd64", "--snapshotter", "native", str(archive))
    # cimsnap was asked first and declined; walking applied the layer into native.
    assert stack.apply_count("UNIMPLEMENTED") == before + 1
    listed = ctd.ctr("snapshots", "--snapshotter", "native", "ls").stdout
    assert layer.diff_id in listed  # the one layer's chain ID is its diff ID
    native = ctd.base / "root" / "io.containerd.snapshotter.v1.native" / "snapshots"
    assert [p.joinpath("etc/hello").read_bytes() for p in native.iterdir()] == [
        b"hello from linux\n"
    ]
    info = json.loads(ctd.ctr("snapshots", "--snapshotter", "native", "info", layer.diff_id).stdout)
    assert info["Kind"] == "Committed"


def top_cim(server: ServerThread, top_name: str) -> Path:
    """The CIM of committed snapshot ``top_name`` (backend name), via a throw-away view."""
    with SnapshotsClient(server.address) as sn:
        key = f"default/999/view-of {top_name}"
        [mount] = sn.view(key, top_name)
        try:
            return Path(parse_cimfs_mount(mount).parent_cim_paths[0])
        finally:
            sn.remove(key)


def test_windows_image_unpacks_through_cimsnap(stack: Stack, tmp_path: Path) -> None:
    layers = generate_chain(tmp_path / "layers", layers=3, seed=11)
    archive = tmp_path / "win.tar"
    write_oci_image(archive, layers, "example.test/win:1")
    chains = chain_ids([layer.diff_id for layer in layers])
    before = stack.apply_count("OK")
    ctd = stack.containerd
    ctd.ctr(
        "image", "import", "--platform", "windows/amd64", "--snapshotter", "cimsnap", str(archive)
    )
    assert stack.apply_count("OK") == before + 3
    listed = ctd.snapshots("ls").stdout
    for chain in chains:
        assert chain in listed
    rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
    assert rows[chains[1]][1] == chains[0] and rows[chains[2]][1] == chains[1]
    assert all(row[-1] == "Committed" for row in rows.values())
    tree = ctd.snapshots("tree").stdout
    depth = tree_depths(tree)
    assert depth[chains[0]] < depth[chains[1]] < depth[chains[2]]
    info = json.loads(ctd.snapshots("info", chains[2]).stdout)
    assert info["Kind"] == "Committed" and info["Parent"] == chains[1]
    # The top CIM, read back, holds what the generator declared for the whole chain.
    with SnapshotsClient(stack.server.address) as sn:
        [top] = [i.name for i in sn.list() if i.name.endswith("/" + chains[2])]
    assert cim_differences(top_cim(stack.server, top), layers[-1].model) == []
    # ctr sees the image as unpacked for cimsnap.
    check = ctd.ctr("image", "check").stdout
    assert "example.test/win:1" in check
