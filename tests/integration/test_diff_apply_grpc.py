"""Diff.Apply over gRPC against cimsnap's server, with blobs in a real containerd.

The calls are made the way containerd 2.x (or ``cimsnap unpack``) makes them: one
``Diff/Apply`` with the CimFS mount of an extract snapshot and the layer's descriptor;
the server reads the blob from containerd's Content service (Debian's 1.6.20 daemon here,
on a private root). Blobs are put into containerd's content store with Content.Write under
a test lease, in the namespaces the tests name.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from cimsnap import errdefs
from cimsnap.api.containerd.services.diff.v1 import diff_pb2
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.devtools.layergen import GeneratedLayer, generate_chain
from cimsnap.diff.containerd import Containerd as ContainerdClient
from cimsnap.diff.containerd import descriptor_to_pb, mounts_to_pb
from cimsnap.diff.content import ContainerdContent, blob_path
from cimsnap.diff.mediatypes import OCI_LAYER_GZIP, OCI_LAYER_ZSTD, Descriptor
from cimsnap.snapshots.mounts import Mount, parse_cimfs_mount
from cimsnap.wclayer.compression import open_decompressed
from tests.grpc_harness import REPO_ROOT, ServerThread, server_config, short_socket_dir
from tests.integration.cimcheck import cim_differences, cim_listing
from tests.integration.containerd_daemon import (
    Containerd,
    cimsnap_beside_containerd,
    containerd16_bin,
)
from tests.integration.containerd_harness import containerd_config
from tests.unit.wclayer.layerkit import pax_times

pytestmark = pytest.mark.integration

LEASE = "cimsnap-tests"


@dataclass
class Env:
    containerd: Containerd
    server: ServerThread
    base: Path

    def put_blob(self, namespace: str, data: bytes) -> Descriptor:
        """Store ``data`` in containerd's content store of ``namespace`` (held by a lease)."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with ContainerdClient(self.containerd.socket, namespace) as ctd:
            with contextlib.suppress(errdefs.AlreadyExists):
                ctd.create_lease(LEASE, "2999-01-01T00:00:00Z")
            ctd.lease = LEASE
            ctd.write_content(f"test-{digest}", [data], lambda: (digest, len(data)))
        return Descriptor(media_type=OCI_LAYER_GZIP, digest=digest, size=len(data))

    def differ(self, namespace: str = "") -> ContainerdClient:
        """A Diff client of cimsnap's server (no namespace header when ``namespace`` is "")."""
        return ContainerdClient(self.server.address, namespace)

    def snapshots(self) -> SnapshotsClient:
        return SnapshotsClient(self.server.address)


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with cimsnap_beside_containerd(
        containerd16_bin(), lambda base, server: containerd_config(base, server.address, "info")
    ) as (containerd, server, base):
        yield Env(containerd, server, base)


def layer_files(env: Env) -> set[str]:
    """Every file under cimsnap's root that a layer could leave behind."""
    root = env.server.config.root_path / "snapshots"
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_wrong_mount_type_is_unimplemented(env: Env) -> None:
    desc = env.put_blob("default", gzip.compress(b"\0" * 1024))
    overlay = Mount("overlay", "overlay", "", ("lowerdir=/a", "upperdir=/b", "workdir=/c"))
    with env.differ("default") as differ, pytest.raises(errdefs.Unimplemented):
        differ.apply(desc, [overlay])
    bind = Mount("bind", "/tmp", "", ("rbind", "rw"))
    with env.differ() as differ, pytest.raises(errdefs.Unimplemented):
        differ.apply(desc, [bind])


def test_two_cimfs_mounts_are_invalid(env: Env) -> None:
    with env.snapshots() as sn:
        [mount] = sn.prepare("default/1/extract-two sha256:aa")
    desc = env.put_blob("default", gzip.compress(b"\0" * 1024))
    with env.differ("default") as differ, pytest.raises(errdefs.InvalidArgument):
        differ.apply(desc, [mount, mount])
    with env.differ("default") as differ, pytest.raises(errdefs.InvalidArgument):
        differ.apply(desc, [])


def test_encrypted_layer_is_unimplemented(env: Env) -> None:
    with env.snapshots() as sn:
        [mount] = sn.prepare("default/2/extract-enc sha256:bb")
    desc = Descriptor(OCI_LAYER_GZIP + "+encrypted", "sha256:" + "0" * 64, 10)
    with env.differ("default") as differ, pytest.raises(errdefs.Unimplemented):
        differ.apply(desc, [mount])


def test_missing_blob_is_not_found(env: Env) -> None:
    with env.snapshots() as sn:
        [mount] = sn.prepare("default/3/extract-missing sha256:cc")
    before = layer_files(env)
    desc = Descriptor(OCI_LAYER_GZIP, "sha256:" + "ab" * 32, 123)
    with env.differ("default") as differ, pytest.raises(errdefs.NotFound):
        differ.apply(desc, [mount])
    # A blob of another namespace is not visible either.
    other = env.put_blob("elsewhere", gzip.compress(b"only elsewhere" * 100))
    with env.differ("default") as differ, pytest.raises(errdefs.NotFound):
        differ.apply(other, [mount])
    assert layer_files(env) == before


def corrupt_gzip() -> bytes:
    """A gzip stream whose deflate data is damaged after a valid start."""
    data = bytearray(gzip.compress(bytes(range(256)) * 4096, compresslevel=6))
    for i in range(200, 260):
        data[i] ^= 0x5A
    return bytes(data)


def test_corrupt_gzip_commits_nothing(env: Env) -> None:
    with env.snapshots() as sn:
        [mount] = sn.prepare("default/4/extract-corrupt sha256:dd")
    desc = env.put_blob("default", corrupt_gzip())
    before = layer_files(env)
    with env.differ("default") as differ, pytest.raises(errdefs.InvalidArgument):
        differ.apply(desc, [mount])
    assert layer_files(env) == before
    assert not Path(mount.options[1].partition("=")[2]).exists()
    # The snapshot is still an active extract snapshot: the same call can be retried.
    with env.snapshots() as sn:
        assert sn.stat("default/4/extract-corrupt sha256:dd").kind.name == "ACTIVE"


def test_namespace_derived_from_the_snapshot_key(env: Env) -> None:
    # The blob exists only in "team-a"; no header is sent: the server must take the
    # namespace from the backend key "team-a/5/...". A wrong derivation gives NotFound.
    desc = env.put_blob("team-a", corrupt_gzip() + b"team-a")
    with env.snapshots() as sn:
        [mount] = sn.prepare("team-a/5/extract-derive sha256:ee")
    with env.differ() as differ, pytest.raises(errdefs.InvalidArgument):
        differ.apply(desc, [mount])
    # A header naming another namespace wins over the key (and there the blob is missing).
    with env.differ("default") as differ, pytest.raises(errdefs.NotFound):
        differ.apply(desc, [mount])


def test_mount_of_another_root_is_refused(env: Env, tmp_path: Path) -> None:
    desc = env.put_blob("default", gzip.compress(b"\0" * 1024))
    foreign = Mount("CimFS", str(tmp_path / "7"), "", ("rw", f"cimpath={tmp_path}/7.cim"))
    with env.differ("default") as differ, pytest.raises(errdefs.InvalidArgument):
        differ.apply(desc, [foreign])
    assert not (tmp_path / "7.cim").exists()


def apply_chain(env: Env, layers: list[GeneratedLayer], tag: int) -> list[str]:
    """Apply and commit ``layers`` on cimsnap directly; return the committed names."""
    names: list[str] = []
    with env.snapshots() as sn:
        for layer in layers:
            desc = env.put_blob("default", layer.path.read_bytes())
            key = f"default/{tag}{layer.index}/extract-{tag} sha256:{layer.index}"
            [mount] = sn.prepare(key, names[-1] if names else "")
            with env.differ() as differ:
                applied = differ.apply(desc, [mount])
            assert (applied.digest, applied.size) == (layer.diff_id, layer.tar_size)
            assert applied.media_type == "application/vnd.oci.image.layer.v1.tar"
            names.append(f"default/{tag}{layer.index}/sha256:{tag}-{layer.index}")
            sn.commit(names[-1], key)
    return names


def test_apply_writes_the_declared_layers(env: Env, tmp_path: Path) -> None:
    layers = generate_chain(tmp_path, layers=2, seed=31, compress=True)
    names = apply_chain(env, layers, 40)
    with env.snapshots() as sn:
        [view] = sn.view("default/499/v", names[-1])
        sn.remove("default/499/v")
    top = Path(parse_cimfs_mount(view).parent_cim_paths[0])
    assert cim_differences(top, layers[-1].model) == []


@pytest.mark.parametrize("media_type", [OCI_LAYER_GZIP, OCI_LAYER_ZSTD])
def test_compare_exports_into_containerd(env: Env, tmp_path: Path, media_type: str) -> None:
    tag = 50 if media_type == OCI_LAYER_GZIP else 60
    layers = generate_chain(tmp_path / "chain", layers=2, seed=32, compress=True)
    names = apply_chain(env, layers, tag)
    with env.snapshots() as sn:
        lower = sn.view(f"default/{tag}8/lower", names[0])
        upper = sn.view(f"default/{tag}9/upper", names[1])
    ref = f"compare-{tag}"
    with env.differ() as differ:  # no header: the namespace comes from the snapshot key
        desc = differ.compare(lower, upper, media_type=media_type, ref=ref)
    assert desc.media_type == media_type
    # The blob is in containerd's content store, with the uncompressed label.
    ctr = [str(env.containerd.bin_dir / "ctr"), "--address", env.containerd.socket]
    blob = subprocess.run(
        [*ctr, "content", "get", desc.digest],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(blob).hexdigest() == desc.digest
    assert len(blob) == desc.size
    uncompressed = open_decompressed(io.BytesIO(blob)).read()
    listed = env.containerd.ctr("content", "ls").stdout
    label = f"containerd.io/uncompressed=sha256:{hashlib.sha256(uncompressed).hexdigest()}"
    assert label in next(line for line in listed.splitlines() if desc.digest in line)
    # Re-imported elsewhere (on the same parent), it gives the same layer.
    with env.snapshots() as sn:
        key = f"default/{tag}7/extract-reimport sha256:x"
        [mount] = sn.prepare(key, names[0])
        with env.differ("default") as differ:
            applied = differ.apply(desc, [mount])
        assert applied.digest == "sha256:" + hashlib.sha256(uncompressed).hexdigest()
        cim = Path(parse_cimfs_mount(mount).cim_path)
        assert cim_differences(cim, layers[1].model) == []
        original = Path(parse_cimfs_mount(upper[0]).parent_cim_paths[0])
        assert cim_listing(cim) == cim_listing(original)
        # Only one layer against its parent: a gap is refused.
        with env.differ("default") as differ, pytest.raises(errdefs.InvalidArgument):
            differ.compare([], upper)
    # source_date_epoch clamps the later times of the tar to it, and only those.
    plain_times = pax_times(uncompressed)
    seconds = sorted(plain_times)[len(plain_times) // 2] // 10_000_000 - 11_644_473_600
    with env.differ() as differ:
        clamped_desc = differ.compare(
            lower, upper, media_type=media_type, source_date_epoch_ns=seconds * 1_000_000_000
        )
    blob = subprocess.run(
        [*ctr, "content", "get", clamped_desc.digest], capture_output=True, check=True
    ).stdout
    epoch = (seconds + 11_644_473_600) * 10_000_000
    clamped = pax_times(open_decompressed(io.BytesIO(blob)).read())
    assert clamped == [min(t, epoch) for t in plain_times] != plain_times
    with env.differ() as differ, pytest.raises(errdefs.InvalidArgument, match="before 1601"):
        differ.compare(lower, upper, source_date_epoch_ns=-11_644_473_601 * 1_000_000_000)


def test_client_cancellation_commits_nothing(env: Env, tmp_path: Path) -> None:
    [layer] = generate_chain(
        tmp_path, layers=1, seed=33, compress=True, size=256 * 2**20, entries=2000
    )
    desc = env.put_blob("default", layer.path.read_bytes())
    probe = env.put_blob("default", corrupt_gzip() + b"probe")
    key = "default/70/extract-cancel sha256:70"
    with env.snapshots() as sn:
        [mount] = sn.prepare(key)
    request = diff_pb2.ApplyRequest(diff=descriptor_to_pb(desc), mounts=mounts_to_pb([mount]))
    cim_dir = Path(parse_cimfs_mount(mount).cim_path).parent
    idle = set(cim_dir.iterdir())
    with env.differ("default") as differ:
        call = differ.diff.Apply.future(request, metadata=differ.metadata)
        # Cancel once the import is writing (its region files appear).
        deadline = time.monotonic() + 60
        while set(cim_dir.iterdir()) == idle and time.monotonic() < deadline:
            time.sleep(0.005)
        assert call.cancel(), "the Apply finished before it could be cancelled"
    # The import stops at its next read and releases the snapshot; then a new Apply gets
    # past the claim and fails on the corrupt probe blob instead.
    deadline = time.monotonic() + 60
    while True:
        with env.differ("default") as differ:
            try:
                differ.apply(probe, [mount])
            except errdefs.FailedPrecondition:
                assert time.monotonic() < deadline, "the cancelled Apply never finished"
                time.sleep(0.1)
                continue
            except errdefs.InvalidArgument:
                break
    assert not Path(parse_cimfs_mount(mount).cim_path).exists()
    assert list(Path(mount.source).iterdir()) == []
    cancelled = env.server.metrics.registry.get_sample_value(
        "cimsnap_grpc_requests_total",
        {"method": "containerd.services.diff.v1.Diff/Apply", "code": "CANCELLED"},
    )
    assert cancelled and cancelled >= 1


def test_content_dir_fast_path_verifies_while_reading(env: Env) -> None:
    data = gzip.compress(b"fast path " * 50_000)
    desc = env.put_blob("default", data)
    fast = ContainerdContent(env.containerd.socket, env.containerd.content_dir)
    with fast.open("default", desc.digest) as blob:
        assert blob.via == "content-dir"
        assert blob.read(len(data) + 1) == data
        blob.verify()
    # The directory is shared by all namespaces; the namespace is still checked.
    with pytest.raises(errdefs.NotFound):
        fast.open("elsewhere", desc.digest)
    # A file changed underneath (same size) is caught by the digest check.
    path = blob_path(env.containerd.content_dir, desc.digest)
    original = path.read_bytes()
    try:
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with fast.open("default", desc.digest) as blob, pytest.raises(errdefs.InvalidArgument):
            blob.verify()
        # Without the fast path the gRPC stream is used; its size is still checked.
        with ContainerdContent(env.containerd.socket).open("default", desc.digest) as blob:
            assert blob.via == "grpc"
            assert blob.read(1) == original[:1]
    finally:
        path.write_bytes(original)


def test_cimsnap_apply_command(env: Env, tmp_path: Path) -> None:
    [layer] = generate_chain(tmp_path, layers=1, seed=34, compress=True)
    desc = env.put_blob("default", layer.path.read_bytes())
    key = "default/80/extract-cli sha256:80"
    with env.snapshots() as sn:
        sn.prepare(key)
    base = [sys.executable, "-m", "cimsnap", "apply", "--address", env.server.address]
    done = subprocess.run(
        [*base, "--digest", desc.digest, "--size", str(desc.size), "--snapshot", key],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr
    applied = json.loads(done.stdout)
    assert applied["digest"] == layer.diff_id and applied["size"] == layer.tar_size
    refused = subprocess.run(
        [*base, "--digest", desc.digest, "--mounts", '[{"type": "bind", "source": "/x"}]'],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert refused.returncode == 1 and "Unimplemented" in refused.stderr


def test_max_concurrent_applies_queues_the_rest(env: Env, tmp_path: Path) -> None:
    [big] = generate_chain(
        tmp_path, layers=1, seed=35, compress=True, size=192 * 2**20, entries=1500
    )
    desc = env.put_blob("default", big.path.read_bytes())
    sock_dir = short_socket_dir()
    config = server_config(
        sock_dir / "one",
        sock_dir,
        containerd_address=env.containerd.socket,
        max_concurrent_applies=1,
    )
    finished: list[str] = []
    with ServerThread(config) as server, SnapshotsClient(server.address) as sn:
        [mount] = sn.prepare("default/1/extract-q1 sha256:q1")
        # A CimFS mount of a snapshot this root does not have: refused by the worker (after
        # the queue), not by the cheap checks before it.
        stranger = Mount(
            "CimFS",
            str(Path(mount.source).with_name("99")),
            "",
            ("rw", f"cimpath={Path(mount.options[1][8:]).with_name('99.cim')}"),
        )
        cim_dir = Path(parse_cimfs_mount(mount).cim_path).parent
        idle = set(cim_dir.iterdir())
        with ContainerdClient(server.address, "default") as differ:
            calls = []
            for name, mounts in (("big", [mount]), ("stranger", [stranger])):
                request = diff_pb2.ApplyRequest(
                    diff=descriptor_to_pb(desc), mounts=mounts_to_pb(mounts)
                )
                call = differ.diff.Apply.future(request, metadata=differ.metadata)
                call.add_done_callback(lambda _c, name=name: finished.append(name))
                calls.append(call)
                if name == "big":  # the big import holds the only slot before the next
                    while set(cim_dir.iterdir()) == idle:
                        time.sleep(0.005)
            # A foreign mount is answered at once, even with every slot busy.
            overlay = Mount("overlay", "overlay", "", ("lowerdir=/a",))
            with pytest.raises(errdefs.Unimplemented):
                differ.apply(desc, [overlay])
            assert calls[0].result(timeout=300).applied.digest == big.diff_id
            assert calls[1].exception(timeout=300).code() == grpc.StatusCode.FAILED_PRECONDITION
    shutil.rmtree(sock_dir, ignore_errors=True)
    # With one slot, the refusal waited for the import to finish.
    assert finished == ["big", "stranger"]
