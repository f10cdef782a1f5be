"""Minimal OCI image archives (``oci-layout`` + ``index.json`` + blobs) for ``ctr import``.

Written by the tests themselves from layer tars, so that an archive is a real one
(gzip-compressed layers, config with diff IDs, manifest, index naming the image).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Layer:
    """One layer: its uncompressed tar and the gzip blob stored in the image."""

    tar: bytes
    blob: bytes

    @property
    def diff_id(self) -> str:
        return sha256(self.tar)

    @property
    def digest(self) -> str:
        return sha256(self.blob)


def gzip_layer(tar: bytes) -> Layer:
    return Layer(tar=tar, blob=gzip.compress(tar, compresslevel=1, mtime=0))


def tar_of(files: dict[str, bytes]) -> bytes:
    """A plain POSIX tar of regular files (for Linux test images)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write_oci_archive(
    path: Path,
    name: str,
    layers: Sequence[Layer],
    *,
    os_: str = "windows",
    arch: str = "amd64",
    os_version: str = "10.0.20348.1",
) -> dict[str, str]:
    """Write an image archive at ``path``; return the digests (manifest, config)."""
    config = {
        "architecture": arch,
        "os": os_,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "config": {},
    }
    if os_ == "windows":
        config["os.version"] = os_version
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": sha256(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": len(layer.blob)}
            for layer in layers
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    platform = {"architecture": arch, "os": os_}
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": sha256(manifest_bytes),
                "size": len(manifest_bytes),
                "platform": platform,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rpartition(":")[2],
                },
            }
        ],
    }
    blobs = {sha256(b): b for b in [config_bytes, manifest_bytes, *(x.blob for x in layers)]}
    with tarfile.open(path, "w") as tar:

        def add(member: str, data: bytes) -> None:
            info = tarfile.TarInfo(member)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))

        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("index.json", json.dumps(index).encode())
        for digest, data in blobs.items():
            add("blobs/sha256/" + digest.partition(":")[2], data)
    return {"manifest": sha256(manifest_bytes), "config": sha256(config_bytes)}
