"""A small in-memory CIM builder for reader tests, built on cimsnap.cim.format's declarations.

It is deliberately independent of cimsnap.cim.writer so reader and writer test each other,
and it exposes the offsets of what it wrote so corruption tests can aim precisely. Not a
second layout: every structure is built with the format module's construct declarations.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cimsnap.cim import format as fmt
from cimsnap.cim.headers import RegionSet, objectid_file_name, region_file_name
from cimsnap.cim.offsets import make_region_offset, split_region_offset
from cimsnap.cim.upcase import NameOrder, encode_name
from cimsnap.upcase import upcase_table_bytes

NULL_DACL_SD = bytes.fromhex("01000480") + bytes(16)
ORDER = NameOrder.default()


def case_sensitive_upcase() -> bytes:
    """Windows' table with 'a'..'z' mapped to themselves: 'a' and 'A' become distinct names,
    and 'B' sorts before 'a'."""
    table = bytearray(upcase_table_bytes())
    for c in range(ord("a"), ord("z") + 1):
        struct.pack_into("<H", table, 2 * c, c)
    return bytes(table)


def common(file_type, parent_count=0):
    return {
        "magic": fmt.MAGIC,
        "header_length": fmt.header_length(file_type, parent_count),
        "type": file_type,
        "reserved": 0,
        "reserved2": 0,
        "major_version": fmt.VERSION_MAJOR,
        "minor_version": fmt.VERSION_MINOR,
        "reserved3": 0,
    }


@dataclass
class Entry:
    file_id: int
    is_directory: bool
    data: bytes = b""
    sparse_size: int | None = None
    raw_stream: tuple[int, int] | None = None  # (DataOffset, LengthAndType) verbatim
    pe: tuple[bytes, list[tuple[int, int]], int] | None = None  # expanded, mappings, size
    flags: int = 0
    times: tuple[int, int, int, int] = (1, 2, 3, 4)
    reparse: bytes | None = None
    ea: bytes | None = None
    sd: bytes = NULL_DACL_SD
    streams: dict[str, bytes] = field(default_factory=dict)
    children: list[tuple[str, int]] = field(default_factory=list)
    parent_id: int = 0


class Region:
    def __init__(self, region_type, index):
        self.type = region_type
        self.index = index
        self.data = bytearray(fmt.REGION_HEADER_SIZE)

    def append(self, blob, align):
        position = -(-len(self.data) // align) * align
        self.data += bytes(position - len(self.data)) + blob
        return position


@dataclass
class BuiltImage:
    cim: bytes
    own: RegionSet
    regions: list[bytearray]  # own regions: metadata, data, small data
    offsets: dict[str, int]  # name -> RegionOffset of what was written
    base: int  # global index of the own set's first region

    def write(self, directory: Path, name: str = "image.cim") -> Path:
        for n, data in enumerate(self.regions):
            (directory / region_file_name(self.own, n)).write_bytes(bytes(data))
            objectid = fmt.OBJECTID_HEADER.build(
                {
                    "common": common(fmt.FileType.OBJECTID),
                    "index": n,
                    "type": n,
                    "reserved": 0,
                    "reserved2": 0,
                    "table_offset": fmt.OBJECTID_HEADER_SIZE,
                    "count": 0,
                }
            )
            (directory / objectid_file_name(self.own, n)).write_bytes(objectid)
        path = directory / name
        path.write_bytes(self.cim)
        return path

    def views(self, parents=()):
        return [memoryview(bytes(r)) for r in [*parents, *self.regions]]

    def locate(self, name):
        """(own region list index, byte offset) of a named object."""
        region, offset = split_region_offset(self.offsets[name])
        return region - self.base, offset


class ImageBuilder:
    """Files are added by parent ID; IDs are dense from 1 (the root)."""

    def __init__(self, parents=(), sort=True, guid=None, upcase=None):
        self.upcase = upcase or upcase_table_bytes()
        self.order = NameOrder.from_table(self.upcase)
        self.parents = tuple(parents)
        self.base = sum(p.count for p in self.parents)
        self.guid = guid or uuid.UUID(int=0x1234_5678_9ABC_DEF0_0FED_CBA9_8765_4321)
        self.sort = sort
        self.entries = [Entry(1, True)]

    def _add(self, parent, name, entry):
        self.entries.append(entry)
        entry.parent_id = parent
        self.entries[parent - 1].children.append((name, entry.file_id))
        return entry.file_id

    def mkdir(self, parent, name, **kw):
        return self._add(parent, name, Entry(len(self.entries) + 1, True, **kw))

    def add_file(self, parent, name, data=b"", **kw):
        return self._add(parent, name, Entry(len(self.entries) + 1, False, data=data, **kw))

    def link(self, parent, name, file_id):
        self.entries[parent - 1].children.append((name, file_id))

    def entry(self, file_id):
        return self.entries[file_id - 1]

    def build(self) -> BuiltImage:
        meta = Region(fmt.RegionType.METADATA, 0)
        data = Region(fmt.RegionType.DATA, 1)
        small = Region(fmt.RegionType.SMALL_DATA, 2)
        offsets: dict[str, int] = {}

        def put(region, blob, align, name=None):
            offset = make_region_offset(self.base + region.index, region.append(blob, align))
            if name:
                offsets[name] = offset
            return offset

        def data_stream(blob, name):
            if not blob:
                return 0, fmt.pack_length_and_type(0, fmt.StreamType.DATA)
            region, align = (small, 8) if len(blob) < fmt.PAGE_SIZE else (data, fmt.PAGE_SIZE)
            offset = put(region, blob, align, name)
            return offset, fmt.pack_length_and_type(len(blob), fmt.StreamType.DATA)

        def link_table(items, value_builder):
            if self.sort:
                items = sorted(items, key=lambda item: self.order.key(item[0]))
            count = len(items)
            values = b"".join(value_builder(v) for _, v in items)
            names_at = fmt.LINK_TABLE_HEADER_SIZE + len(values) + 4 * count
            name_offsets, names = [], b""
            for name, _ in items:
                name_offsets.append(names_at + len(names))
                raw = encode_name(name)
                names += fmt.LINK_NAME.build({"length": len(raw) // 2, "name": raw})
            length = names_at + len(names)
            header = fmt.LINK_TABLE_HEADER.build({"length": length, "link_count": count})
            offs = b"".join(fmt.LINK_NAME_OFFSET.build(o) for o in name_offsets)
            return header + values + offs + names

        sd_cache: dict[bytes, int] = {}
        records = []
        for e in self.entries:
            fid = e.file_id
            if e.is_directory:
                if e.children:
                    table = link_table(e.children, fmt.FILE_ID.build)
                    offset = put(meta, table, 8, f"dir:{fid}")
                    stream = (
                        offset,
                        fmt.pack_length_and_type(len(table), fmt.StreamType.LINK_TABLE),
                    )
                else:
                    stream = (0, fmt.pack_length_and_type(0, fmt.StreamType.LINK_TABLE))
            elif e.raw_stream is not None:
                stream = e.raw_stream
            elif e.sparse_size is not None:
                stream = (
                    0,
                    fmt.pack_length_and_type(e.sparse_size, fmt.StreamType.DATA, sparse=True),
                )
            elif e.pe is not None:
                expanded, mappings, size = e.pe
                image_offset = put(data, expanded, fmt.PAGE_SIZE, f"pedata:{fid}")
                pe = fmt.PE_IMAGE.build(
                    {
                        "data_offset": image_offset,
                        "data_length": size,
                        "image_length": len(expanded),
                        "mapping_count": len(mappings),
                        "flags": 0,
                    }
                ) + b"".join(
                    fmt.PE_IMAGE_MAPPING.build({"file_offset": a, "delta": d}) for a, d in mappings
                )
                stream = (
                    put(meta, pe, 8, f"pe:{fid}"),
                    fmt.pack_length_and_type(size, fmt.StreamType.PE_IMAGE),
                )
            else:
                stream = data_stream(e.data, f"data:{fid}")
            if e.sd not in sd_cache:
                sd_cache[e.sd] = put(meta, fmt.SD_LENGTH.build(len(e.sd)) + e.sd, 8, f"sd:{fid}")
            reparse = 0
            if e.reparse is not None:
                reparse = put(
                    meta, fmt.REPARSE_LENGTH.build(len(e.reparse)) + e.reparse, 8, f"reparse:{fid}"
                )
            ea = put(meta, e.ea, 8, f"ea:{fid}") if e.ea else 0
            stream_table = 0
            if e.streams:
                descriptors = {n: data_stream(b, f"ads:{fid}:{n}") for n, b in e.streams.items()}
                table = link_table(
                    list(descriptors.items()),
                    lambda v: fmt.STREAM_DESCRIPTOR.build(
                        {"data_offset": v[0], "length_and_type": v[1]}
                    ),
                )
                stream_table = put(
                    meta, fmt.STREAM_TABLE_LENGTH.build(len(table)) + table, 8, f"streams:{fid}"
                )
            records.append(
                fmt.FILE_RECORD.build(
                    {
                        "flags": e.flags,
                        "ea_length": len(e.ea or b""),
                        "reparse_tag": int.from_bytes(e.reparse[:4], "little") if e.reparse else 0,
                        "creation_time": e.times[0],
                        "last_write_time": e.times[1],
                        "change_time": e.times[2],
                        "last_access_time": e.times[3],
                        "default_stream": {"data_offset": stream[0], "length_and_type": stream[1]},
                        "sd_offset": sd_cache[e.sd],
                        "ea_offset": ea,
                        "reparse_offset": reparse,
                        "stream_table_offset": stream_table,
                        "parent_file_id": e.parent_id,
                        "base_region_index": 0,
                        "reserved": 0,
                    }
                )
            )
        directory = b""
        for t in range(0, len(records), fmt.FILES_PER_TABLE):
            chunk = records[t : t + fmt.FILES_PER_TABLE]
            table_offset = put(meta, b"".join(chunk), 8, f"table:{t // fmt.FILES_PER_TABLE}")
            directory += fmt.FILE_TABLE_DIRECTORY_ENTRY.build(
                {"offset": table_offset, "count": len(chunk), "entry_size": 96, "reserved": 0}
            )
        directory_offset = put(meta, directory, 8, "file_table_directory")
        upcase = put(meta, self.upcase, 8, "upcase")
        filesystem = put(
            meta,
            fmt.FILESYSTEM_OBJECT.build(
                {
                    "upcase_table_offset": upcase,
                    "file_table_directory_offset": directory_offset,
                    "file_table_directory_length": len(directory) // 16,
                    "root_directory": 1,
                }
            ),
            8,
            "filesystem",
        )
        regions = [meta, data, small]
        for r in regions:
            r.data[: fmt.REGION_HEADER_SIZE] = fmt.REGION_HEADER.build(
                {
                    "common": common(fmt.FileType.REGION),
                    "index": r.index,
                    "type": r.type,
                    "reserved": 0,
                    "reserved2": 0,
                }
            )
        own = RegionSet(self.guid, len(regions))
        cim = fmt.FILESYSTEM_HEADER.build(
            {
                "common": common(fmt.FileType.IMAGE, len(self.parents)),
                "regions": {"id": own.guid, "count": own.count, "reserved": 0, "reserved1": 0},
                "filesystem_offset": filesystem,
                "reserved": 0,
                "reserved1": 0,
                "parent_count": len(self.parents),
            }
        ) + b"".join(
            fmt.REGION_SET.build({"id": p.guid, "count": p.count, "reserved": 0, "reserved1": 0})
            for p in self.parents
        )
        return BuiltImage(cim, own, [r.data for r in regions], offsets, self.base)
