"""Commit-time placement: file IDs, link tables, stream tables, records, file tables (§6-§7).

Sans-IO: everything goes through a :class:`MetadataPlacer`, which appends 8-aligned objects
to the image's metadata region sink and returns their RegionOffsets. All byte layouts come
from :mod:`cimsnap.cim.format` (the ``*_FAST`` packers derived from its declarations).

Order of work (§14 steps 1, 3, 4):

1. :func:`assign_ids` walks the tree breadth first, children in link-table order, and gives
   every new node the next ID (root first in a new image: root = 1, §4 recommendation,
   [U] q5). A hard-linked node gets one ID, and its ParentFileId is the directory it was
   first reached through (§7 recommendation; the root's is 0).
2. Dirty directories get a sorted link table, nodes with changed streams a stream table.
3. Records are packed into file tables of up to 1024; in a fork a parent table that holds
   no changed record is referenced in place, others are copied and patched (§11).
4. The file table directory, the upcase table (a fork references the parent's) and the
   Filesystem object close the image.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from cimsnap.cim.format import (
    FILE_ID_FAST,
    FILE_RECORD_SIZE,
    FILE_TABLE_DIRECTORY_ENTRY_FAST,
    FILES_PER_TABLE,
    FILESYSTEM_HEADER,
    FILESYSTEM_OBJECT,
    LINK_NAME_LENGTH_FAST,
    LINK_NAME_OFFSET_FAST,
    LINK_TABLE_HEADER_FAST,
    MAGIC,
    METADATA_ALIGNMENT,
    OBJECTID_HEADER,
    OBJECTID_HEADER_SIZE,
    REGION_HEADER,
    REGION_SET,
    STREAM_DESCRIPTOR_FAST,
    STREAM_TABLE_LENGTH,
    VERSION_MAJOR,
    VERSION_MINOR,
    FastStruct,
    FileType,
    RegionType,
    StreamType,
    header_length,
    pack_length_and_type,
)
from cimsnap.cim.headers import RegionSet
from cimsnap.cim.image_files import RegionSink
from cimsnap.cim.offsets import NULL_OFFSET, RegionOffset, make_region_offset
from cimsnap.cim.pending import Node, PendingTree, RecordField
from cimsnap.cim.upcase import encode_name

__all__ = [
    "ForkBase",
    "MetadataPlacer",
    "assign_ids",
    "image_header_bytes",
    "lay_out",
    "link_table_bytes",
    "objectid_header_bytes",
    "region_header_bytes",
]

_EMPTY_DIRECTORY: Final = pack_length_and_type(0, StreamType.LINK_TABLE)


def _repeated_format(fast: FastStruct, count: int) -> str:
    """Struct format for ``count`` consecutive ``fast`` structures, derived from its own."""
    code = fast.packer.format.lstrip("<")
    return "<" + (f"{count}{code}" if len(code) == 1 else code * count)


class MetadataPlacer:
    """Places metadata objects (8-aligned, §3.4) in one region; ``region_index`` is global."""

    __slots__ = ("region_index", "sink")

    def __init__(self, sink: RegionSink, region_index: int) -> None:
        self.sink = sink
        self.region_index = region_index

    def put(self, data: bytes | bytearray | memoryview) -> RegionOffset:
        """Append ``data`` 8-aligned; return its RegionOffset."""
        self.sink.align(METADATA_ALIGNMENT)
        return make_region_offset(self.region_index, self.sink.append(data))


def link_table_bytes(names: Sequence[str], values: bytes, value_size: int) -> bytes:
    """Return a link table (§7.2) for ``names`` (already sorted) and their packed values.

    ``values`` holds ``len(names)`` values of ``value_size`` bytes each (FILE_ID or
    STREAM_DESCRIPTOR). Names are written contiguously in entry order after the offsets.
    """
    count = len(names)
    encoded = [encode_name(name) for name in names]
    header_size = LINK_TABLE_HEADER_FAST.size
    position = header_size + count * (value_size + LINK_NAME_OFFSET_FAST.size)
    offsets = []
    prefix = LINK_NAME_LENGTH_FAST.size
    pieces = []
    pack_length = LINK_NAME_LENGTH_FAST.packer.pack
    for data in encoded:
        offsets.append(position)
        pieces.append(pack_length(len(data) // 2))
        pieces.append(data)
        position += prefix + len(data)
    return b"".join(
        (
            LINK_TABLE_HEADER_FAST.pack(position, count),
            values,
            struct.pack(_repeated_format(LINK_NAME_OFFSET_FAST, count), *offsets),
            *pieces,
        )
    )


@dataclass(frozen=True, slots=True)
class ForkBase:
    """What a fork reuses from its parent (§11).

    ``tables``: the parent's file table directory as ``(RegionOffset, Count)`` pairs;
    ``upcase_offset``: the parent's upcase table; ``read_table(t)`` returns table ``t``'s
    ``Count × 96`` record bytes.
    """

    tables: tuple[tuple[int, int], ...]
    upcase_offset: int
    read_table: Callable[[int], bytes]

    @property
    def next_id(self) -> int:
        """First file ID after the parent's last valid one (continuing its last table)."""
        if not self.tables:
            return 1
        return (len(self.tables) - 1) * FILES_PER_TABLE + self.tables[-1][1] + 1


def assign_ids(tree: PendingTree, next_id: int) -> tuple[list[Node], int]:
    """Give IDs to new reachable nodes; return (dirty nodes in ID order, next free ID)."""
    root = tree.root
    if not root.file_id:
        root.file_id = next_id
        next_id += 1
    dirty = [root] if root.dirty else []
    seen = {id(root)}
    queue = deque([root])
    while queue:
        directory = queue.popleft()
        children = directory.children
        if children is None:
            continue
        for key in sorted(children):
            target = children[key][1]
            if isinstance(target, int):
                # An unchanged name of a parent object; if another name materialised the
                # object (a hard link changed through that name), it must be visited too.
                node = tree.materialized(target)
                if node is None:
                    continue
                target = node
            if id(target) in seen:
                continue
            seen.add(id(target))
            if not target.file_id:
                target.file_id = next_id
                next_id += 1
                target.set_parent(directory.file_id)
            if target.dirty:
                dirty.append(target)
            if target.is_dir:
                queue.append(target)
    # A changed parent *file* may be reachable only through names in directories that
    # were never loaded (a hard link changed through a name that was later deleted): its
    # record must be rewritten all the same. Directories cannot be hard-linked, so an
    # unvisited materialised directory is unreachable and is left out.
    for node in tree.materialized_nodes():
        if node.dirty and not node.is_dir and id(node) not in seen:
            dirty.append(node)
    dirty.sort(key=lambda node: node.file_id)
    return dirty, next_id


def _directory_table(tree: PendingTree, node: Node) -> bytes:
    children = node.children or {}
    keys = sorted(children)
    names = []
    ids = []
    for key in keys:
        name, target = children[key]
        names.append(name)
        ids.append(target if isinstance(target, int) else target.file_id)
    values = struct.pack(_repeated_format(FILE_ID_FAST, len(ids)), *ids)
    return link_table_bytes(names, values, FILE_ID_FAST.size)


def _stream_table(tree: PendingTree, node: Node) -> bytes:
    streams = tree.streams_of(node)
    keys = sorted(streams)
    flat: list[int] = []
    for key in keys:
        flat += streams[key][1:]
    values = struct.pack(_repeated_format(STREAM_DESCRIPTOR_FAST, len(keys)), *flat)
    table = link_table_bytes([streams[k][0] for k in keys], values, STREAM_DESCRIPTOR_FAST.size)
    return bytes(STREAM_TABLE_LENGTH.build(len(table))) + table


def lay_out(
    tree: PendingTree,
    placer: MetadataPlacer,
    *,
    upcase: bytes,
    fork: ForkBase | None = None,
) -> RegionOffset:
    """Write every changed object of ``tree``; return the Filesystem object's offset.

    ``upcase`` is the table to store in a new image (a fork references its parent's).
    Mutates the nodes (IDs, offsets); call once, at commit.
    """
    dirty, next_id = assign_ids(tree, fork.next_id if fork else 1)
    data_field = RecordField.DATA_OFFSET
    length_field = RecordField.LENGTH_AND_TYPE
    for node in dirty:
        if node.is_dir and node.children is not None:
            if node.children:
                table = _directory_table(tree, node)
                node.set_u64(data_field, placer.put(table))
                node.set_u64(length_field, pack_length_and_type(len(table), StreamType.LINK_TABLE))
            else:
                node.set_u64(data_field, NULL_OFFSET)
                node.set_u64(length_field, _EMPTY_DIRECTORY)
        if node.streams_dirty:
            streams = tree.streams_of(node)
            node.set_u64(
                RecordField.STREAM_TABLE_OFFSET,
                placer.put(_stream_table(tree, node)) if streams else NULL_OFFSET,
            )
    table_entries = _write_file_tables(placer, dirty, next_id - 1, fork)
    directory = b"".join(
        FILE_TABLE_DIRECTORY_ENTRY_FAST.pack(offset, count, FILE_RECORD_SIZE, 0)
        for offset, count in table_entries
    )
    directory_offset = placer.put(directory)
    upcase_offset = fork.upcase_offset if fork else placer.put(upcase)
    return placer.put(
        FILESYSTEM_OBJECT.build(
            {
                "upcase_table_offset": upcase_offset,
                "file_table_directory_offset": directory_offset,
                "file_table_directory_length": len(table_entries),
                "root_directory": tree.root.file_id,
            }
        )
    )


def _write_file_tables(
    placer: MetadataPlacer, dirty: list[Node], last_id: int, fork: ForkBase | None
) -> list[tuple[int, int]]:
    by_table: dict[int, list[Node]] = {}
    for node in dirty:
        by_table.setdefault((node.file_id - 1) // FILES_PER_TABLE, []).append(node)
    parent_tables = fork.tables if fork else ()
    entries: list[tuple[int, int]] = []
    table_count = (last_id + FILES_PER_TABLE - 1) // FILES_PER_TABLE
    for t in range(table_count):
        count = min(FILES_PER_TABLE, last_id - t * FILES_PER_TABLE)
        changed = by_table.get(t)
        inherited = parent_tables[t] if t < len(parent_tables) else None
        if inherited is not None and changed is None and inherited[1] == count:
            entries.append(inherited)
            continue
        table = bytearray(count * FILE_RECORD_SIZE)
        if inherited is not None and fork is not None:
            table[: inherited[1] * FILE_RECORD_SIZE] = fork.read_table(t)
        base = t * FILES_PER_TABLE + 1
        for node in changed or ():
            start = (node.file_id - base) * FILE_RECORD_SIZE
            table[start : start + FILE_RECORD_SIZE] = node.record
        entries.append((placer.put(table), count))
    return entries


def _common(file_type: FileType, parent_count: int = 0) -> dict[str, object]:
    return {
        "magic": MAGIC,
        "header_length": header_length(file_type, parent_count),
        "type": int(file_type),
        "reserved": 0,
        "reserved2": 0,
        "major_version": VERSION_MAJOR,
        "minor_version": VERSION_MINOR,
        "reserved3": 0,
    }


def region_header_bytes(index: int, region_type: RegionType) -> bytes:
    """The 40-byte header of region ``index`` of a set (§3.4)."""
    return bytes(
        REGION_HEADER.build(
            {
                "common": _common(FileType.REGION),
                "index": index,
                "type": int(region_type),
                "reserved": 0,
                "reserved2": 0,
            }
        )
    )


def objectid_header_bytes(index: int, region_type: RegionType) -> bytes:
    """A whole objectid file with no entries (§3.5).

    [U] q4/q15: the digest algorithm is unknown, so cimsnap writes Count = 0 and
    TableOffset = 48 (right after the header, where an entry table would start). No reader
    uses the entries at runtime; writing guessed digests could make a Windows writer that
    later forks this image "deduplicate" new content onto the wrong object, while an empty
    table only costs sharing with such a fork. Our own dedup lives in the writer's memory.
    """
    return bytes(
        OBJECTID_HEADER.build(
            {
                "common": _common(FileType.OBJECTID),
                "index": index,
                "type": int(region_type),
                "reserved": 0,
                "reserved2": 0,
                "table_offset": OBJECTID_HEADER_SIZE,
                "count": 0,
            }
        )
    )


def _region_set_dict(region_set: RegionSet) -> dict[str, object]:
    return {"id": region_set.guid, "count": region_set.count, "reserved": 0, "reserved1": 0}


def image_header_bytes(
    own: RegionSet, parents: Sequence[RegionSet], filesystem_offset: int
) -> bytes:
    """The whole ``.cim`` file (§3.2): header plus the parent sets in global order."""
    fixed = FILESYSTEM_HEADER.build(
        {
            "common": _common(FileType.IMAGE, len(parents)),
            "regions": _region_set_dict(own),
            "filesystem_offset": filesystem_offset,
            "reserved": 0,
            "reserved1": 0,
            "parent_count": len(parents),
        }
    )
    return bytes(fixed) + b"".join(REGION_SET.build(_region_set_dict(p)) for p in parents)
