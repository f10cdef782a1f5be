"""A minimal OCI image archive (``ctr images import`` input), built from real tar/gzip bytes.

``write_oci_archive(path, name, files, platform)`` writes an OCI layout tar holding one
image: one gzip layer with ``files`` (name -> bytes), its config (``rootfs.diff_ids`` = the
sha256 of the uncompressed layer tar) and manifest, and an ``index.json`` whose manifest
carries the ``io.containerd.image.name`` annotation ctr names the image from. Returns the
descriptors a test needs (config digest, diff ID = the chain ID of a one-layer image).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OciImage:
    name: str
    config_digest: str
    manifest_digest: str
    diff_id: str  # also the chain ID: the image has one layer


def _tar(files: Mapping[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_oci_archive(
    path: Path, name: str, files: Mapping[str, bytes], platform: str = "windows/amd64"
) -> OciImage:
    os_name, arch = platform.split("/")
    layer_tar = _tar(files)
    layer = gzip.compress(layer_tar, mtime=0)
    diff_id = _digest(layer_tar)
    config = json.dumps(
        {
            "architecture": arch,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "config": {},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "platform": {"architecture": arch, "os": os_name},
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    ).encode()
    blobs = {_digest(b).replace(":", "/"): b for b in (layer, config, manifest)}
    entries = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": index,
        **{f"blobs/{k}": v for k, v in blobs.items()},
    }
    path.write_bytes(_tar(entries))
    return OciImage(name, _digest(config), _digest(manifest), diff_id)
