"""Layer media types and descriptors (OCI image spec, Docker schema 2).

Compression is never decided by the media type (``compression.open_decompressed`` sniffs
magic bytes, as containerd does, §5.4); the media type only decides whether a blob is a
layer at all and whether it is encrypted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from cimsnap.errdefs import InvalidArgument, Unimplemented
from cimsnap.wclayer.compression import CompressionKind

__all__ = [
    "DOCKER_LAYER_GZIP",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_TAR",
    "OCI_LAYER_ZSTD",
    "Descriptor",
    "check_digest",
    "check_layer_media_type",
    "compression_for",
]

OCI_LAYER_TAR: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"

#: Every layer media type Apply accepts, before any "+encrypted" suffix: OCI (also the
#: non-distributable variants) and Docker (also foreign layers).
_LAYER_TYPES: Final = frozenset(
    {
        OCI_LAYER_TAR,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        DOCKER_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.foreign.diff.tar",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
_ENCRYPTED_SUFFIX: Final = "+encrypted"
_SHA256: Final = re.compile(r"sha256:[0-9a-f]{64}")

#: What ``Compare`` may be asked to produce, by requested media type.
_COMPRESSION_BY_TYPE: Final[Mapping[str, CompressionKind]] = {
    OCI_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
    "application/vnd.docker.image.rootfs.diff.tar": "none",
}


@dataclass(frozen=True, slots=True)
class Descriptor:
    """containerd's ``types.Descriptor``: media type, digest, size, annotations."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


def check_digest(digest: str) -> str:
    """Return ``digest`` if it is ``sha256:<64 lowercase hex>``; else InvalidArgument.

    [choice] Only sha256 is accepted: it is what containerd writes for image content, and a
    digest is joined to a content-directory path, so anything looser is refused.
    """
    if not _SHA256.fullmatch(digest):
        raise InvalidArgument(f"digest {digest!r}: not a sha256 digest")
    return digest


def check_layer_media_type(media_type: str) -> None:
    """Refuse what Apply cannot read: Unimplemented for encrypted or non-layer types.

    Unimplemented (not InvalidArgument) lets containerd's diff service try its next differ,
    as its own processor chain does for media types it has no processor for.
    """
    if media_type.endswith(_ENCRYPTED_SUFFIX):
        raise Unimplemented(
            f"media type {media_type}: encrypted layers are not supported by cimsnap "
            "(decrypt the image first)"
        )
    if media_type not in _LAYER_TYPES:
        raise Unimplemented(f"media type {media_type!r}: not a layer media type cimsnap applies")


def compression_for(media_type: str) -> CompressionKind:
    """Return the compression ("gzip", "zstd" or "none") Compare must produce for ``media_type``.

    An empty media type means the OCI gzip layer (containerd's default). Unimplemented
    for anything else (encrypted, unknown).
    """
    kind = _COMPRESSION_BY_TYPE.get(media_type or OCI_LAYER_GZIP)
    if kind is None:
        raise Unimplemented(f"media type {media_type!r}: cimsnap cannot produce it")
    return kind
