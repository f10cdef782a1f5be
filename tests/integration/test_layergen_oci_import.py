"""layergen's OCI image archive is what containerd (Debian's 1.6.20) imports: ``ctr image
import`` names the image from the index annotation, reports windows/amd64, and stores the
generated gzip layers and a config whose diff_ids are the uncompressed tars' digests.

A private containerd (own root, state and socket, no CRI) is started for the module;
containerd is required: missing, the test fails when ``CI`` is set and skips otherwise.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.devtools.layergen import generate_chain, write_oci_image
from tests.grpc_harness import short_socket_dir

pytestmark = pytest.mark.integration


def _require(condition: bool, why: str) -> None:
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{why} (required in CI: install it with scripts/system-deps.sh)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def ctr() -> Iterator[list[str]]:
    _require(shutil.which("containerd") is not None, "containerd is not installed")
    _require(shutil.which("ctr") is not None, "ctr is not installed")
    _require(os.geteuid() == 0, "containerd needs root")
    base = short_socket_dir()
    config = base / "containerd.toml"
    config.write_text(
        f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{base}/c.sock"\n[ttrpc]\n  address = "{base}/c.sock.ttrpc"\n'
    )
    log = (base / "containerd.log").open("wb")
    proc = subprocess.Popen(
        ["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT
    )
    command = ["ctr", "--address", str(base / "c.sock")]
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([*command, "version"], capture_output=True).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    "containerd did not start:\n" + (base / "containerd.log").read_text()
                )
            time.sleep(0.05)
        yield command
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
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
