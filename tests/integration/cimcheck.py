"""Read a CIM layer back and compare it with what layergen's model declares."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cimsnap.cim import open_image
from cimsnap.devtools.layergen import STORED_ATTRIBUTES, LayerModel
from cimsnap.wclayer.routing import HIVES

#: What the importer adds beyond the tars (base: Hives, the *_BASE links, layout; deltas:
#: the merged *_BASE hives).
SYNTHESISED = frozenset({"Hives", "layout", *(f"Hives\\{h.base}" for h in HIVES)})


def cim_differences(cim_path: Path, model: LayerModel, limit: int = 20) -> list[str]:
    """Every way (up to ``limit``) in which the CIM differs from ``model``.

    Compared per path: presence, attributes (masked), the four times, security descriptor,
    extended attributes, reparse buffer, size and SHA-256 of the data, alternate streams,
    and hard-link groups. Only what the importer synthesises may be extra (``SYNTHESISED``).
    """
    problems: list[str] = []
    with open_image(cim_path) as image:
        reader = image.reader
        seen: dict[str, int] = {}
        for path, record in reader.walk():
            if path:
                seen[path] = record.file_id
        for path in sorted(set(seen) - set(model.files) - SYNTHESISED):
            problems.append(f"{path}: in the CIM, not in the model")
        groups: dict[int, set[str]] = {}
        for path, file_id in seen.items():
            if path in model.files and not model.files[path].is_directory:
                groups.setdefault(file_id, set()).add(path)
        links = sorted((frozenset(g) for g in groups.values() if len(g) > 1), key=sorted)
        if links != model.link_groups():
            problems.append("hard-link groups differ")
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


def cim_listing(cim_path: Path) -> list[tuple[object, ...]]:
    """Everything a reader sees in the image, path by path (for CIM-vs-CIM comparisons)."""
    rows: list[tuple[object, ...]] = []
    with open_image(cim_path) as image:
        reader = image.reader
        for path, record in reader.walk():
            data = b""
            if not record.is_directory:
                data = hashlib.sha256(reader.open_record_stream(record, None).read()).digest()
            rows.append(
                (
                    path,
                    int(record.attributes),
                    record.creation_time,
                    record.last_write_time,
                    record.change_time,
                    record.last_access_time,
                    reader.security_descriptor(record),
                    reader.extended_attributes(record),
                    reader.reparse_data(record),
                    data,
                    tuple((s.name, s.size) for s in reader.streams(path)),
                )
            )
    return sorted(rows, key=lambda row: str(row[0]))
