r"""A reference reading of Windows layer tars with Python's tarfile, for tests.

:func:`replay` applies one uncompressed layer tar to a :class:`LayerModel` the way the
import loop of the Windows layer format does (whiteouts, hard links, symlinks and
junctions, alternate streams after their file, PAX metadata), masking attributes as a CIM
stores them. It is deliberately simple and independent of cimsnap.wclayer, so the
generator's model, the importer and the exporter can all be checked against it.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
import tarfile
from typing import IO, NamedTuple

from cimsnap.devtools.layergen import (
    EPOCH_AS_FILETIME,
    NULL_DACL_SECURITY_DESCRIPTOR,
    STORED_ATTRIBUTES,
    LayerModel,
    ModelFile,
    ea_buffer,
    reparse_buffer,
)


def pax_filetime(value: str) -> int:
    """FILETIME of a PAX ``[-]secs[.frac]`` time, truncated (toward zero) to 100 ns."""
    negative = value.startswith("-")
    secs, _, frac = value.removeprefix("-").partition(".")
    ticks = int(secs) * 10_000_000 + int((frac + "0000000")[:7])
    return (-ticks if negative else ticks) + EPOCH_AS_FILETIME


class PaxMetadata(NamedTuple):
    """What a layer tar entry's header and PAX records declare, as a CIM stores it
    (attributes masked; ``security_descriptor`` None when the entry carries none)."""

    attributes: int
    creation_time: int
    last_access_time: int
    last_write_time: int
    change_time: int
    security_descriptor: bytes | None
    ea: bytes
    reparse: bytes


def pax_metadata(member: tarfile.TarInfo) -> PaxMetadata:
    """Decode ``member``'s Windows metadata (the reference reading, see the module)."""
    pax = member.pax_headers
    default = 0x10 if member.isdir() else 0
    attributes = int(pax.get("MSWINDOWS.fileattr", default)) & STORED_ATTRIBUTES & ~0x400
    reparse = b""
    if member.issym():
        reparse = reparse_buffer(member.linkname, mountpoint="MSWINDOWS.mountpoint" in pax)
        attributes |= 0x400
    eas = {
        key.removeprefix("MSWINDOWS.xattr."): base64.b64decode(value)
        for key, value in pax.items()
        if key.startswith("MSWINDOWS.xattr.")
    }
    sd = pax.get("MSWINDOWS.rawsd")
    return PaxMetadata(
        attributes=attributes,
        creation_time=pax_filetime(pax.get("LIBARCHIVE.creationtime", pax["mtime"])),
        last_access_time=pax_filetime(pax["atime"]),
        last_write_time=pax_filetime(pax["mtime"]),
        change_time=pax_filetime(pax["ctime"]),
        security_descriptor=base64.b64decode(sd) if sd else None,
        ea=ea_buffer(eas),
        reparse=reparse,
    )


def _file(member: tarfile.TarInfo, data: bytes, streams: dict[str, bytes]) -> ModelFile:
    m = pax_metadata(member)
    return ModelFile(
        attributes=m.attributes,
        creation_time=m.creation_time,
        last_access_time=m.last_access_time,
        last_write_time=m.last_write_time,
        change_time=m.change_time,
        security_descriptor=m.security_descriptor or NULL_DACL_SECURITY_DESCRIPTOR,
        ea=m.ea,
        reparse=m.reparse,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        data=data,
        streams=streams,
    )


def replay(stream: IO[bytes], below: LayerModel) -> tuple[LayerModel, list[str]]:
    """Apply the layer tar ``stream`` to a copy of ``below``; return it and the tar names
    in order (for ordering checks)."""
    model = below.copy()
    files = model.files
    names: list[str] = []
    current: tuple[tarfile.TarInfo, bytes, dict[str, bytes]] | None = None

    def finish() -> None:
        nonlocal current
        if current is not None:
            member, data, streams = current
            files[member.name.replace("/", "\\")] = _file(member, data, streams)
            current = None

    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            names.append(member.name)
            if (
                current is not None
                and member.isreg()
                and member.name.startswith(current[0].name + ":")
            ):
                stream_name = member.name[len(current[0].name) + 1 :].removesuffix(":$DATA")
                reader = tar.extractfile(member)
                assert reader is not None
                current[2][stream_name] = reader.read()
                continue
            finish()
            parent, base = posixpath.split(member.name)
            if base.startswith(".wh."):
                gone = posixpath.join(parent, base[4:]).replace("/", "\\")
                for path in [p for p in files if p == gone or p.startswith(gone + "\\")]:
                    del files[path]
                continue
            if member.islnk():
                files[member.name.replace("/", "\\")] = files[member.linkname.replace("/", "\\")]
                continue
            data = b""
            if member.isreg():
                reader = tar.extractfile(member)
                assert reader is not None
                data = reader.read()
            current = (member, data, {})
        finish()
    return model, names


def model_differences(expected: LayerModel, actual: LayerModel, limit: int = 20) -> list[str]:
    """Human-readable differences (paths, every ModelFile field, link groups); [] if equal.
    ``data`` is compared only when both sides kept it (``sha256`` always is)."""
    out: list[str] = []
    for path in sorted(expected.files.keys() ^ actual.files.keys()):
        side = "missing" if path in expected.files else "unexpected"
        out.append(f"{side}: {path}")
    for path in sorted(expected.files.keys() & actual.files.keys()):
        a, b = expected.files[path], actual.files[path]
        for name in ModelFile.__slots__:
            va, vb = getattr(a, name), getattr(b, name)
            if name == "data" and (va is None or vb is None):
                continue
            if name == "streams":
                va, vb = dict(va), dict(vb)
            if va != vb:
                out.append(f"{path}: {name} {str(va)[:80]} != {str(vb)[:80]}")
    if expected.link_groups() != actual.link_groups():
        out.append(f"link groups {expected.link_groups()} != {actual.link_groups()}")
    return out[:limit]
