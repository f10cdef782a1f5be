"""``cimsnap unpack`` against Debian's containerd 1.6.20 (which cannot load a diff proxy).

The image is imported with ``ctr images import --no-unpack``; ``cimsnap unpack`` (run as a
process, as users run it) then Prepares/Commits through containerd's Snapshots service and
Applies through cimsnap's Diff service, which reads the blobs from containerd's Content
service in the image's namespace.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain, write_oci_image
from cimsnap.diff.unpack import chain_ids
from cimsnap.snapshots.mounts import parse_cimfs_mount
from cimsnap.snapshots.snapshotter import Kind
from tests.grpc_harness import REPO_ROOT, ServerThread
from tests.integration.cimcheck import cim_differences
from tests.integration.containerd_daemon import (
    Containerd,
    cimsnap_beside_containerd,
    containerd16_bin,
    tree_depths,
)
from tests.integration.containerd_harness import containerd_config
from tests.integration.ociarchive import Layer, gzip_layer, write_oci_archive

pytestmark = pytest.mark.integration


@dataclass
class Env:
    containerd: Containerd
    server: ServerThread

    def unpack_args(self, image: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "cimsnap",
            "unpack",
            image,
            "--containerd-address",
            self.containerd.socket,
            "--address",
            self.server.address,
        ]

    def unpack(self, image: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.unpack_args(image), capture_output=True, text=True, timeout=600, cwd=REPO_ROOT
        )

    def import_image(self, tmp: Path, name: str, **kw: object) -> list[GeneratedLayer]:
        layers = generate_chain(tmp / name.replace("/", "_"), **kw)  # type: ignore[arg-type]
        archive = tmp / (name.replace("/", "_") + ".tar")
        write_oci_image(archive, layers, name)
        self.containerd.ctr(
            "images", "import", "--no-unpack", "--platform", "windows/amd64", str(archive)
        )
        return layers

    def backend(self) -> dict[str, Kind]:
        with SnapshotsClient(self.server.address) as sn:
            return {i.name: i.kind for i in sn.list()}

    def top_cim(self, chain: str) -> Path:
        [name] = [n for n in self.backend() if n.endswith("/" + chain)]
        with SnapshotsClient(self.server.address) as sn:
            key = f"default/999/view-of {chain}"
            [mount] = sn.view(key, name)
            sn.remove(key)
        return Path(parse_cimfs_mount(mount).parent_cim_paths[0])


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with cimsnap_beside_containerd(
        containerd16_bin(), lambda base, server: containerd_config(base, server.address, "info")
    ) as (containerd, server, _):
        yield Env(containerd, server)


def test_unpack_then_rerun_changes_nothing(env: Env, tmp_path: Path) -> None:
    layers = env.import_image(tmp_path, "example.test/unpack:1", layers=3, seed=21)
    chains = chain_ids([layer.diff_id for layer in layers])
    done = env.unpack("example.test/unpack:1")
    assert done.returncode == 0, done.stderr
    assert "3 of 3 layers applied" in done.stdout
    assert done.stdout.count("applying...") == 3 and "[3/3]" in done.stdout
    ctd = env.containerd
    listed = ctd.snapshots("ls").stdout
    rows = {line.split()[0]: line.split() for line in listed.splitlines()[1:]}
    assert rows[chains[0]][1:] == ["Committed"]
    assert rows[chains[1]][1:] == [chains[0], "Committed"]
    assert rows[chains[2]][1:] == [chains[1], "Committed"]
    tree = ctd.snapshots("tree").stdout
    depth = tree_depths(tree)
    assert depth[chains[0]] < depth[chains[1]] < depth[chains[2]]
    info = json.loads(ctd.snapshots("info", chains[2]).stdout)
    assert info["Parent"] == chains[1]
    assert info["Labels"]["containerd.io/snapshot.ref"] == chains[2]
    content = ctd.ctr("content", "ls").stdout
    assert f"containerd.io/gc.ref.snapshot.cimsnap={chains[2]}" in content
    assert cim_differences(env.top_cim(chains[2]), layers[-1].model) == []
    # No extract snapshot is left behind, in containerd or in cimsnap.
    assert "extract" not in listed
    assert all(kind == Kind.COMMITTED for kind in env.backend().values())

    before = env.backend()
    again = env.unpack("example.test/unpack:1")
    assert again.returncode == 0, again.stderr
    assert "0 of 3 layers applied, 3 already there" in again.stdout
    assert env.backend() == before


def test_interrupted_unpack_resumes(env: Env, tmp_path: Path) -> None:
    # Layers of some size, so that the interrupt lands inside an Apply.
    layers = env.import_image(
        tmp_path, "example.test/resume:1", layers=3, seed=22, size=160 * 2**20, entries=1200
    )
    chains = chain_ids([layer.diff_id for layer in layers])
    proc = subprocess.Popen(
        env.unpack_args("example.test/resume:1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[2/3]") and "applying" in line:
            proc.send_signal(signal.SIGINT)
            break
    rest, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (lines, rest, err)
    committed = env.containerd.snapshots("ls").stdout
    why = (lines, rest, err, committed)
    assert chains[0] in committed and chains[2] not in committed, why
    assert "extract" not in committed, why  # the interrupted layer's snapshot was removed

    resumed = env.unpack("example.test/resume:1")
    assert resumed.returncode == 0, resumed.stderr
    assert "already unpacked" in resumed.stdout.splitlines()[0], resumed.stdout
    assert "2 of 3 layers applied, 1 already there" in resumed.stdout, resumed.stdout
    assert cim_differences(env.top_cim(chains[2]), layers[-1].model) == []


def test_clear_errors(env: Env, tmp_path: Path) -> None:
    missing = env.unpack("example.test/no-such-image:1")
    assert missing.returncode == 1 and "not found" in missing.stderr
    env.import_image(tmp_path, "example.test/windows-only:1", layers=1, seed=23)
    wrong = subprocess.run(
        [*env.unpack_args("example.test/windows-only:1"), "--platform", "linux/amd64"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert wrong.returncode == 1 and "no linux/amd64 platform" in wrong.stderr
    # A config whose diff ID does not match the layer: refused, nothing left behind.
    [real] = generate_chain(tmp_path / "mismatch", layers=1, seed=24)
    tar = real.path.read_bytes()
    lying = Layer(tar=tar + b"\0" * 512, blob=gzip_layer(tar).blob)
    archive = tmp_path / "mismatch.tar"
    write_oci_archive(archive, "example.test/mismatch:1", [lying])
    env.containerd.ctr(
        "images", "import", "--no-unpack", "--platform", "windows/amd64", str(archive)
    )
    mismatch = env.unpack("example.test/mismatch:1")
    assert mismatch.returncode == 1 and "wrong diff id" in mismatch.stderr
    assert real.diff_id in mismatch.stderr and lying.diff_id in mismatch.stderr
    assert lying.diff_id not in env.containerd.snapshots("ls").stdout  # its extract key
