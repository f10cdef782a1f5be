"""Pure rules of the differ and the unpacker: mounts, media types, digests, platforms."""

from __future__ import annotations

import hashlib

import pytest

from cimsnap import errdefs
from cimsnap.daemon.config import Config
from cimsnap.diff.differ import Differ, cimfs_mount_of
from cimsnap.diff.mediatypes import (
    OCI_LAYER_GZIP,
    Descriptor,
    check_digest,
    check_layer_media_type,
    compression_for,
)
from cimsnap.diff.unpack import chain_ids, select_manifest
from cimsnap.snapshots.mounts import Mount

CIMFS = Mount("CimFS", "/r/snapshots/3", "", ("rw", "cimpath=/r/snapshots/cim-layers/3.cim"))
OVERLAY = Mount("overlay", "overlay", "", ("lowerdir=/a",))
DIGEST = "sha256:" + "0" * 64


def test_mount_rules() -> None:
    assert cimfs_mount_of([CIMFS]) is not None
    with pytest.raises(errdefs.Unimplemented):
        cimfs_mount_of([OVERLAY])
    with pytest.raises(errdefs.Unimplemented):  # mixed: not ours, walking may take it
        cimfs_mount_of([CIMFS, OVERLAY])
    with pytest.raises(errdefs.InvalidArgument):
        cimfs_mount_of([CIMFS, CIMFS])
    with pytest.raises(errdefs.InvalidArgument):
        cimfs_mount_of([])
    assert cimfs_mount_of([], allow_none=True) is None


@pytest.mark.parametrize(
    "media_type",
    [
        "application/vnd.oci.image.layer.v1.tar",
        OCI_LAYER_GZIP,
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    ],
)
def test_layer_media_types_accepted(media_type: str) -> None:
    check_layer_media_type(media_type)


@pytest.mark.parametrize(
    "media_type",
    [OCI_LAYER_GZIP + "+encrypted", "application/vnd.oci.image.config.v1+json", ""],
)
def test_other_media_types_unimplemented(media_type: str) -> None:
    with pytest.raises(errdefs.Unimplemented):
        check_layer_media_type(media_type)


def test_payloads_and_digests() -> None:
    with pytest.raises(errdefs.Unimplemented):
        Differ.check_apply(Descriptor(OCI_LAYER_GZIP, DIGEST, 1), [CIMFS], payload_count=1)
    for bad in ("sha256:" + "0" * 63, "sha512:" + "0" * 128, "sha256:../../etc", DIGEST.upper()):
        with pytest.raises(errdefs.InvalidArgument):
            check_digest(bad)
        with pytest.raises(errdefs.InvalidArgument):
            Differ.check_apply(Descriptor(OCI_LAYER_GZIP, bad, 1), [CIMFS], payload_count=0)


def test_compare_compression() -> None:
    assert compression_for("") == "gzip"
    assert compression_for("application/vnd.oci.image.layer.v1.tar+zstd") == "zstd"
    assert compression_for("application/vnd.oci.image.layer.v1.tar") == "none"
    with pytest.raises(errdefs.Unimplemented):
        compression_for(OCI_LAYER_GZIP + "+encrypted")


def test_chain_ids_follow_the_definition() -> None:
    diffs = ["sha256:" + hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    chains = chain_ids(diffs)
    assert chains[0] == diffs[0]
    for i in (1, 2):
        text = f"{chains[i - 1]} {diffs[i]}".encode()
        assert chains[i] == "sha256:" + hashlib.sha256(text).hexdigest()
    assert chain_ids([]) == []


def entry(os_: str, arch: str, n: int, variant: str = "") -> dict[str, object]:
    platform = {"os": os_, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + f"{n:064x}",
        "size": 100 + n,
        "platform": platform,
    }


def test_select_manifest() -> None:
    index = {"manifests": [entry("linux", "amd64", 1), entry("windows", "amd64", 2)]}
    assert select_manifest(index, "windows/amd64").size == 102
    arm = {"manifests": [entry("linux", "arm64", 3, "v8")]}
    assert select_manifest(arm, "linux/arm64").size == 103
    assert select_manifest(arm, "linux/arm64/v8").size == 103
    with pytest.raises(errdefs.FailedPrecondition, match="linux/amd64, windows/amd64"):
        select_manifest(index, "windows/arm64")
    with pytest.raises(errdefs.InvalidArgument):
        select_manifest(index, "windows")


def test_config_keys() -> None:
    assert Config().max_concurrent_applies == 2 and Config().containerd_content_dir == ""
    with pytest.raises(errdefs.InvalidArgument):
        Config(max_concurrent_applies=0)
    with pytest.raises(errdefs.InvalidArgument):
        Config(containerd_address="")
