"""``cimsnap unpack``: containerd's image unpacker, for containerd 1.6 (no diff proxy, §5.5).

:func:`unpack_image` does what containerd's unpacker does, with cimsnap's differ:

1. Resolve the image (containerd's Images service), its index or manifest and its config
   (Content service), picking the manifest for ``platform`` (OS and architecture must
   match; a variant is compared only when both sides name one).
2. Compute the chain IDs of the config's diff IDs (OCI image spec: ``chain[0] = diff[0]``,
   ``chain[i] = sha256(chain[i-1] + " " + diff[i])``); a layer whose chain ID exists in the
   snapshotter already (Stat through containerd) is skipped.
3. For each missing layer, under a lease: Prepare ``extract-<nanos>-<rand> <chainID>`` on
   the parent chain ID through containerd's Snapshots service (so containerd's metadata
   knows the snapshot), with the label ``containerd.io/snapshot.ref=<chainID>``; Apply it
   with cimsnap's Diff service; compare the returned digest with the diff ID
   ("wrong diff id": the extract snapshot is removed and unpack fails); Commit it as the
   chain ID with the same label. An AlreadyExists commit (a concurrent unpack won) counts
   as done.
4. Label the image config ``containerd.io/gc.ref.snapshot.<snapshotter>=<top chain ID>``,
   as containerd's ``Image.Unpack`` does: containerd then counts the image as unpacked for
   that snapshotter and its GC keeps the chain.

Idempotent (a second run skips every layer and rewrites the same label) and resumable:
layers committed before an interruption are kept (they are chain IDs in containerd's
store, held by the unpack's lease until it expires after ``LEASE_TTL``) and skipped next
time; an interrupted layer's extract snapshot is removed (or collected with that lease).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from cimsnap import errdefs
from cimsnap.diff.containerd import Containerd
from cimsnap.diff.mediatypes import Descriptor, check_digest

__all__ = [
    "LEASE_TTL",
    "SNAPSHOT_REF_LABEL",
    "LayerEvent",
    "UnpackResult",
    "chain_ids",
    "select_manifest",
    "unpack_image",
]

SNAPSHOT_REF_LABEL: Final = "containerd.io/snapshot.ref"
GC_SNAPSHOT_LABEL: Final = "containerd.io/gc.ref.snapshot."
LEASE_TTL: Final = timedelta(hours=1)
_INDEX_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
_MANIFEST_TYPES: Final = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
#: How long one layer's Apply may take before the unpack gives up (a 10 GiB layer at the
#: slowest plausible rate).
APPLY_TIMEOUT: Final = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class LayerEvent:
    """Progress of one layer: ``state`` is "exists", "applying" or "done"."""

    index: int
    count: int
    chain_id: str
    layer: Descriptor
    state: str
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class UnpackResult:
    """What an unpack did: the top chain ID, layers applied and layers already there."""

    image: str
    manifest: str
    chain_id: str
    applied: int
    existing: int


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain IDs of ``diff_ids`` (base first)."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def _platform(text: str) -> tuple[str, str, str]:
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise errdefs.InvalidArgument(f"platform {text!r}: expected OS/ARCH[/VARIANT]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else ""


def _matches(want: tuple[str, str, str], os_: str, arch: str, variant: str) -> bool:
    return want[0] == os_ and want[1] == arch and (not want[2] or not variant or want[2] == variant)


def select_manifest(index: Mapping[str, Any], platform: str) -> Descriptor:
    """Pick the first manifest of an image index for ``platform``.

    FailedPrecondition naming the platforms the index has when none matches.
    """
    want = _platform(platform)
    seen = []
    for entry in index.get("manifests") or []:
        p = entry.get("platform") or {}
        os_, arch, variant = p.get("os", ""), p.get("architecture", ""), p.get("variant", "")
        seen.append("/".join(x for x in (os_, arch, variant) if x) or "(none)")
        if entry.get("mediaType") in _MANIFEST_TYPES and _matches(want, os_, arch, variant):
            return _descriptor(entry)
    raise errdefs.FailedPrecondition(
        f"no {platform} platform in the image (it has: {', '.join(seen) or 'none'})"
    )


def _descriptor(entry: Mapping[str, Any]) -> Descriptor:
    try:
        return Descriptor(
            media_type=str(entry["mediaType"]),
            digest=check_digest(str(entry["digest"])),
            size=int(entry["size"]),
            annotations=dict(entry.get("annotations") or {}),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise errdefs.InvalidArgument(f"malformed descriptor {entry!r}: {e}") from e


def _json(ctd: Containerd, desc: Descriptor, what: str) -> dict[str, Any]:
    data = ctd.read_all(desc.digest)
    try:
        value = json.loads(data)
    except ValueError as e:
        raise errdefs.InvalidArgument(f"{what} {desc.digest}: not JSON: {e}") from e
    if not isinstance(value, dict):
        raise errdefs.InvalidArgument(f"{what} {desc.digest}: not a JSON object")
    return value


def _resolve(
    ctd: Containerd, image: str, platform: str
) -> tuple[Descriptor, Descriptor, list[Descriptor], list[str]]:
    """Return (manifest, config, layers, diff IDs) of ``image`` for ``platform``."""
    try:
        target = ctd.get_image(image)
    except errdefs.NotFound:
        raise errdefs.NotFound(
            f"image {image!r}: not found in namespace {ctd.namespace!r} "
            f"(import it first: ctr images import --no-unpack --platform {platform} ...)"
        ) from None
    manifest_desc = target
    if target.media_type in _INDEX_TYPES:
        manifest_desc = select_manifest(_json(ctd, target, "index"), platform)
    elif target.media_type not in _MANIFEST_TYPES:
        raise errdefs.InvalidArgument(
            f"image {image!r}: unsupported media type {target.media_type}"
        )
    manifest = _json(ctd, manifest_desc, "manifest")
    config_desc = _descriptor(manifest.get("config") or {})
    layers = [_descriptor(layer) for layer in manifest.get("layers") or []]
    config = _json(ctd, config_desc, "config")
    want = _platform(platform)
    os_, arch = str(config.get("os", "")), str(config.get("architecture", ""))
    if not _matches(want, os_, arch, str(config.get("variant", ""))):
        raise errdefs.FailedPrecondition(
            f"image {image!r} is {os_}/{arch}, not {platform}: no {platform} platform"
        )
    rootfs = config.get("rootfs") or {}
    diff_ids = [check_digest(str(d)) for d in rootfs.get("diff_ids") or []]
    if len(diff_ids) != len(layers):
        raise errdefs.InvalidArgument(
            f"image {image!r}: {len(layers)} layers but {len(diff_ids)} diff IDs in its config"
        )
    return manifest_desc, config_desc, layers, diff_ids


def _extract_key(chain_id: str) -> str:
    return f"extract-{time.time_ns()}-{secrets.token_urlsafe(3)[:4]} {chain_id}"


def unpack_image(
    containerd_address: str,
    cimsnap_address: str,
    image: str,
    *,
    platform: str = "windows/amd64",
    namespace: str = "default",
    snapshotter: str = "cimsnap",
    progress: Callable[[LayerEvent], None] | None = None,
) -> UnpackResult:
    """Unpack ``image`` into ``snapshotter`` (module docstring); return what was done.

    Errors (errdefs classes): NotFound (image or blob missing), FailedPrecondition (no
    layer for the platform, wrong diff id), InvalidArgument (malformed image), Unavailable
    (containerd or cimsnap unreachable), plus whatever the differ reports for a bad layer.
    """
    report = progress or (lambda _event: None)
    with Containerd(containerd_address, namespace) as ctd:
        manifest, config, layers, diff_ids = _resolve(ctd, image, platform)
        chains = chain_ids(diff_ids)
        lease_id = f"cimsnap-unpack-{uuid.uuid4().hex[:12]}"
        expire = (datetime.now(UTC) + LEASE_TTL).strftime("%Y-%m-%dT%H:%M:%SZ")
        ctd.create_lease(lease_id, expire)
        applied = existing = 0
        with (
            Containerd(containerd_address, namespace, lease=lease_id) as leased,
            Containerd(cimsnap_address, namespace, timeout=APPLY_TIMEOUT) as differ,
        ):
            for i, (layer, chain) in enumerate(zip(layers, chains, strict=True)):
                if _exists(leased, snapshotter, chain):
                    existing += 1
                    report(LayerEvent(i, len(layers), chain, layer, "exists"))
                    continue
                report(LayerEvent(i, len(layers), chain, layer, "applying"))
                started = time.monotonic()
                parent = chains[i - 1] if i else ""
                _unpack_layer(leased, differ, snapshotter, layer, diff_ids[i], chain, parent)
                applied += 1
                seconds = time.monotonic() - started
                report(LayerEvent(i, len(layers), chain, layer, "done", seconds))
            if chains:
                label = {GC_SNAPSHOT_LABEL + snapshotter: chains[-1]}
                leased.update_content_labels(config.digest, label)
        # Only now: until the config label references the chain, the lease is what keeps
        # committed layers from containerd's GC. After a failure or an interruption it
        # stays (expiring after LEASE_TTL), so a rerun finds those layers and resumes.
        with contextlib.suppress(errdefs.CimsnapError):
            ctd.delete_lease(lease_id)
    return UnpackResult(
        image=image,
        manifest=manifest.digest,
        chain_id=chains[-1] if chains else "",
        applied=applied,
        existing=existing,
    )


def _exists(ctd: Containerd, snapshotter: str, chain: str) -> bool:
    try:
        ctd.stat_snapshot(snapshotter, chain)
    except errdefs.NotFound:
        return False
    return True


def _unpack_layer(
    ctd: Containerd,
    differ: Containerd,
    snapshotter: str,
    layer: Descriptor,
    diff_id: str,
    chain: str,
    parent: str,
) -> None:
    """Prepare, Apply, check, Commit one layer; on any failure remove the extract snapshot."""
    key = _extract_key(chain)
    labels = {SNAPSHOT_REF_LABEL: chain}
    try:
        # Inside the try: an interrupt during Prepare may land after containerd made it.
        mounts = ctd.prepare_snapshot(snapshotter, key, parent, labels)
        applied = differ.apply(layer, mounts)
        if applied.digest != diff_id:
            raise errdefs.FailedPrecondition(
                f"layer {layer.digest}: wrong diff id calculated on extraction: got "
                f"{applied.digest}, the image config says {diff_id}"
            )
        try:
            ctd.commit_snapshot(snapshotter, chain, key, labels)
        except errdefs.AlreadyExists:
            ctd.remove_snapshot(snapshotter, key)  # a concurrent unpack committed it
    except BaseException:
        with contextlib.suppress(errdefs.CimsnapError):
            ctd.remove_snapshot(snapshotter, key)
        raise
