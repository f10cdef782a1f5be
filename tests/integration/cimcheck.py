"""Read a CIM layer back and compare it with what layergen's model declares."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cimsnap.cim import open_image
from cimsnap.devtools.layergen import STORED_ATTRIBUTES, LayerModel


def cim_differences(cim_path: Path, model: LayerModel, limit: int = 20) -> list[str]:
    """Every way (up to ``limit``) in which the CIM's ``Files`` tree differs from ``model``.

    Compared per path: presence, attributes (masked), the four times, security descriptor,
    extended attributes, reparse buffer, size and SHA-256 of the data, alternate streams.
    """
    problems: list[str] = []
    with open_image(cim_path) as image:
        reader = image.reader
        seen: dict[str, object] = {}
        for path, record in reader.walk("Files"):
            seen[path] = record
        for path in sorted(set(seen) - set(model.files)):
            problems.append(f"{path}: in the CIM, not in the model")
        for path, want in sorted(model.files.items()):
            if len(problems) >= limit:
                break
            if path not in seen:
                problems.append(f"{path}: missing from the CIM")
                continue
            record = reader.lookup(path)
            got_attr = int(record.attributes) & STORED_ATTRIBUTES
            checks = {
                "attributes": (got_attr, want.attributes),
                "creation_time": (record.creation_time, want.creation_time),
                "last_write_time": (record.last_write_time, want.last_write_time),
                "change_time": (record.change_time, want.change_time),
                "last_access_time": (record.last_access_time, want.last_access_time),
                "security_descriptor": (
                    reader.security_descriptor(record),
                    want.security_descriptor,
                ),
                "ea": (reader.extended_attributes(record), want.ea),
                "reparse": (reader.reparse_data(record), want.reparse),
            }
            if not want.is_directory and not want.reparse:
                stream = reader.open_record_stream(record, None)
                digest = hashlib.sha256()
                size = 0
                while chunk := stream.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                checks["size"] = (size, want.size)
                checks["sha256"] = (digest.hexdigest(), want.sha256)
                streams = {}
                for info in reader.streams(path):
                    streams[info.name] = reader.open_stream(path, info.name).read()
                checks["streams"] = (streams, dict(want.streams))
            for name, (got, expected) in checks.items():
                if got != expected:
                    problems.append(f"{path}: {name} differs: {got!r:.80} != {expected!r:.80}")
    return problems[:limit]
