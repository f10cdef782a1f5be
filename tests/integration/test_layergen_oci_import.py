"""layergen's OCI image archive is what containerd (Debian's 1.6.20) imports: ``ctr image
import`` names the image from the index annotation, reports windows/amd64, and stores the
generated gzip layers and a config whose diff_ids are the uncompressed tars' digests.

A private containerd (``running_containerd``: own root, state and socket, no CRI) is
started for the module; containerd is required: missing, the test fails when ``CI`` is set
and skips otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.devtools.layergen import generate_chain, write_oci_image
from tests.grpc_harness import short_socket_dir
from tests.integration.containerd_harness import running_containerd

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def ctr() -> Iterator[list[str]]:
    base = short_socket_dir()
    try:
        # No cimsnap serves the proxy's socket: importing with --no-unpack never calls it.
        with running_containerd(base, str(base / "unused.sock"), wait_for_gc=False) as daemon:
            yield ["ctr", "--address", daemon.socket]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=120).stdout


def test_ctr_imports_the_generated_image(ctr: list[str], tmp_path: Path) -> None:
    layers = generate_chain(tmp_path / "layers", layers=2, seed=4, compress=True)
    archive = tmp_path / "image.tar"
    manifest = write_oci_image(archive, layers, ref="docker.io/library/cimsnap-gen:v2")
    _run(*ctr, "images", "import", "--all-platforms", "--no-unpack", str(archive))
    listing = _run(*ctr, "images", "ls").splitlines()
    (row,) = [line.split() for line in listing if "cimsnap-gen" in line]
    assert row[0] == "docker.io/library/cimsnap-gen:v2" and row[2] == manifest
    assert "windows/amd64" in row
    stored = json.loads(_run(*ctr, "content", "get", manifest))
    for desc, layer in zip(stored["layers"], layers, strict=True):
        assert desc["digest"] == layer.digest
        blob = subprocess.run(
            [*ctr, "content", "get", desc["digest"]], check=True, capture_output=True
        ).stdout
        assert blob == layer.path.read_bytes()
    config = json.loads(_run(*ctr, "content", "get", stored["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [layer.diff_id for layer in layers]
    assert config["os"] == "windows"
