r"""Test helpers: a plain tarfile -> CimWriter importer, and the model a CIM holds.

:func:`import_plain` applies a layer tar to a fork of a CIM with :class:`CimWriter` only,
following the import loop of the Windows layer format (whiteouts, hard links, reparse
points, alternate streams after their file) but without hive routing: every entry,
hives included, is stored where the tar says. It lets the exporter be tested on CIMs that
hold exactly what generated tars declare. :func:`cim_model` reads a CIM back into a
:class:`LayerModel`, so CIMs compare with :func:`model_differences`.
"""

from __future__ import annotations

import contextlib
import hashlib
import posixpath
import tarfile
import uuid
from pathlib import Path
from typing import IO

from cimsnap.cim import CimNotFoundError, CimReader, CimWriter, FileMetadata, open_image
from cimsnap.devtools.layergen import (
    LayerModel,
    ModelFile,
)
from tests.unit.devtools.tarreplay import pax_metadata


def _metadata(member: tarfile.TarInfo, size: int) -> FileMetadata:
    m = pax_metadata(member)
    return FileMetadata(
        attributes=m.attributes,
        size=0 if m.attributes & 0x10 else size,
        creation_time=m.creation_time,
        last_write_time=m.last_write_time,
        change_time=m.change_time,
        last_access_time=m.last_access_time,
        security_descriptor=m.security_descriptor,
        ea=m.ea,
        reparse=m.reparse,
    )


def import_plain(
    stream: IO[bytes], directory: Path, name: str, parent: str | None, seed: int = 0
) -> Path:
    """Import the tar ``stream`` into ``directory/name`` (a fork of ``parent``)."""
    region = uuid.UUID(bytes=hashlib.sha256(f"{name}/{seed}".encode()).digest()[:16])
    with CimWriter(directory, name, parent=parent, region_set_id=region) as writer:
        last: str | None = None
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                path = member.name.replace("/", "\\")
                if last is not None and member.isreg() and member.name.startswith(last + ":"):
                    stream_name = member.name[len(last) + 1 :].removesuffix(":$DATA")
                    reader = tar.extractfile(member)
                    assert reader is not None
                    with writer.create_alternate_stream(
                        f"{last.replace('/', chr(92))}:{stream_name}", member.size
                    ) as out:
                        out.write(reader.read())
                    continue
                last = None
                head, base = posixpath.split(member.name)
                if base.startswith(".wh."):
                    with contextlib.suppress(CimNotFoundError):
                        writer.delete_path(posixpath.join(head, base[4:]).replace("/", "\\"))
                    continue
                if member.islnk():
                    writer.create_hard_link(path, member.linkname.replace("/", "\\"))
                    continue
                data = b""
                if member.isreg():
                    reader = tar.extractfile(member)
                    assert reader is not None
                    data = reader.read()
                with writer.create_file(path, _metadata(member, len(data))) as out:
                    if data:
                        out.write(data)
                last = member.name
        return writer.commit()


def cim_model(reader: CimReader) -> LayerModel:
    """Every path of the image (root excluded) as a LayerModel; hard links share objects."""
    by_id: dict[int, ModelFile] = {}
    model = LayerModel()
    for path, record in reader.walk():
        if not path:
            continue
        known = by_id.get(record.file_id)
        if known is None:
            data = b""
            if not record.is_directory:
                with reader.open_record_stream(record, None) as s:
                    data = s.read()
            streams = {}
            for info in reader.streams(path):
                with reader.open_record_stream(record, info.name) as s:
                    streams[info.name] = s.read()
            known = by_id[record.file_id] = ModelFile(
                attributes=int(record.attributes),
                creation_time=record.creation_time,
                last_access_time=record.last_access_time,
                last_write_time=record.last_write_time,
                change_time=record.change_time,
                security_descriptor=reader.security_descriptor(record),
                ea=reader.extended_attributes(record),
                reparse=reader.reparse_data(record),
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                data=data,
                streams=streams,
            )
        model.files[path] = known
    return model


def read_cim_model(path: Path) -> LayerModel:
    with open_image(path) as image:
        return cim_model(image.reader)
