"""The writer's in-memory model of an image being built: nodes, directory entries, forks.

Sans-IO. A :class:`Node` is one file object (one future file record); a directory maps
folded names to entries ``(name, target)``. In a fork (§11) the tree starts as the parent's
root and is materialised lazily through a :class:`ParentSource`: a directory entry whose
target is a plain ``int`` is an unchanged object of the parent, known only by its file ID;
it becomes a :class:`Node` only when a path goes through it or it is modified. Unchanged
subtrees therefore cost nothing, and their records stay in the parent's file tables.

Only directories that gained or lost an entry, and nodes whose record changed, are
``dirty``: the layout (:mod:`cimsnap.cim.layout`) rewrites exactly those.

Choices for questions the spec leaves open (§11, §12, §18 q5):

* Replacing a path with a *file* (or a directory with a file, or a file with a directory)
  makes a new object with a new ID: other hard links to the old file keep the old file,
  as ``CimCreateFile`` = delete + create would. Replacing a directory with a directory
  keeps its children and alternate streams and updates only its metadata, which is what
  a layer that re-states a parent directory needs (pinned by the writer tests).
* Inherited objects keep their parent file IDs; records of deleted objects stay in the
  reused parent tables, unreachable ("readers only need reachable IDs to be valid").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final, Protocol

from cimsnap.cim.errors import (
    CimAccessDeniedError,
    CimLinkToDirectoryError,
    CimNotADirectoryError,
    CimNotFoundError,
    CimPathNotFoundError,
)
from cimsnap.cim.format import (
    FILE_ID_FAST,
    FILE_RECORD,
    REGION_OFFSET_FAST,
    StreamType,
    field_offsets,
    unpack_length_and_type,
)

__all__ = ["Entry", "Node", "ParentSource", "PendingTree", "RecordField"]


def _show(components: list[str]) -> str:
    return "\\".join(components)


class RecordField:
    """Byte offsets of the FILE_RECORD fields the writer changes, from the declaration.

    A node keeps its record packed (a 96-byte ``bytearray``, a third of the memory of a
    list of ints), so every change goes through :meth:`Node.set_u64` or
    :meth:`Node.set_parent` at one of these offsets.
    """

    _OFFSETS: Final = field_offsets(FILE_RECORD)
    DATA_OFFSET: Final = _OFFSETS["default_stream.data_offset"]
    LENGTH_AND_TYPE: Final = _OFFSETS["default_stream.length_and_type"]
    SD_OFFSET: Final = _OFFSETS["sd_offset"]
    STREAM_TABLE_OFFSET: Final = _OFFSETS["stream_table_offset"]
    PARENT_FILE_ID: Final = _OFFSETS["parent_file_id"]


#: Record byte ranges a directory keeps when a directory is created over it: its entries
#: (default stream), its alternate streams and its parent.
_KEPT_ON_DIRECTORY_UPDATE: Final = (
    (RecordField.DATA_OFFSET, RecordField.LENGTH_AND_TYPE + REGION_OFFSET_FAST.size),
    (RecordField.STREAM_TABLE_OFFSET, RecordField.PARENT_FILE_ID + FILE_ID_FAST.size),
)
_U64: Final = REGION_OFFSET_FAST.packer
_U32: Final = FILE_ID_FAST.packer

#: One stream of a node's stream table: (name, data offset, LengthAndType).
StreamEntry = tuple[str, int, int]


class ParentSource(Protocol):
    """What a fork needs from its parent image (implemented over the reader)."""

    def record_bytes(self, file_id: int) -> bytes:
        """Return the 96 record bytes of ``file_id``."""
        ...

    def directory_entries(self, file_id: int) -> Iterable[tuple[str, int]]:
        """Return ``(name, file ID)`` of each entry of directory ``file_id``."""
        ...

    def stream_entries(self, file_id: int) -> Iterable[StreamEntry]:
        """Return the alternate streams of ``file_id`` as stored."""
        ...


class Node:
    """One file object; ``record`` holds its FILE_RECORD bytes (mutable, 96 bytes)."""

    __slots__ = ("children", "dirty", "file_id", "is_dir", "record", "streams", "streams_dirty")

    def __init__(self, record: bytearray, *, is_dir: bool, file_id: int = 0) -> None:
        self.record = record
        self.is_dir = is_dir
        self.file_id = file_id
        #: key -> Entry for a loaded directory; None for a file or a not yet loaded one.
        self.children: dict[str, Entry] | None = {} if is_dir and not file_id else None
        #: key -> StreamEntry once loaded or created; None = none yet, or as in the record.
        self.streams: dict[str, StreamEntry] | None = None
        self.dirty = not file_id
        self.streams_dirty = False

    def get_u64(self, offset: int) -> int:
        """The u64 record field at byte ``offset`` (a RecordField)."""
        value: int = _U64.unpack_from(self.record, offset)[0]
        return value

    def set_u64(self, offset: int, value: int) -> None:
        """Set the u64 record field at byte ``offset`` (a RecordField)."""
        _U64.pack_into(self.record, offset, value)

    def set_parent(self, file_id: int) -> None:
        """Set ParentFileId."""
        _U32.pack_into(self.record, RecordField.PARENT_FILE_ID, file_id)


#: A directory entry: (name as given, target). ``int`` = unchanged parent object by ID.
Entry = tuple[str, "Node | int"]


class PendingTree:
    """The directory tree being written. ``fold`` maps a name to its case-insensitive key.

    Every method raises an API error (:mod:`cimsnap.cim.errors`) before changing anything,
    so a failed call leaves the tree as it was.
    """

    def __init__(
        self, root: Node, fold: Callable[[str], str], source: ParentSource | None = None
    ) -> None:
        self.root = root
        self.fold = fold
        self._source = source
        # One Node per inherited file ID: a hard-linked parent file reached through two
        # names must be one object, or two copies of its record would race at commit.
        self._materialized: dict[int, Node] = {root.file_id: root} if root.file_id else {}
        # Memo of the last directory lookup (builds add many files to one directory). Any
        # change that can take a directory out of the tree bumps the generation.
        self._generation = 0
        self._last_directory: tuple[int, list[str], Node] | None = None

    # --- materialising parent objects ---------------------------------------------------

    def _load(self, file_id: int) -> Node:
        node = self._materialized.get(file_id)
        if node is not None:
            return node
        if self._source is None:
            raise AssertionError("an inherited entry without a parent source")
        node = self._materialized[file_id] = Node(
            bytearray(self._source.record_bytes(file_id)), is_dir=False, file_id=file_id
        )
        _, stream_type, _, _ = unpack_length_and_type(node.get_u64(RecordField.LENGTH_AND_TYPE))
        node.is_dir = stream_type == StreamType.LINK_TABLE
        return node

    def materialized(self, file_id: int) -> Node | None:
        """The Node of inherited ``file_id`` if some path already materialised it."""
        return self._materialized.get(file_id)

    def materialized_nodes(self) -> list[Node]:
        """Every materialised inherited node, in file ID order."""
        return [self._materialized[file_id] for file_id in sorted(self._materialized)]

    def children_of(self, node: Node) -> dict[str, Entry]:
        """Return the (loaded) entries of directory ``node``."""
        if node.children is None:
            if self._source is None or not node.is_dir:
                raise CimNotADirectoryError(f"file ID {node.file_id} is not a directory")
            fold = self.fold
            node.children = {
                fold(name): (name, file_id)
                for name, file_id in self._source.directory_entries(node.file_id)
            }
        return node.children

    def streams_of(self, node: Node) -> dict[str, StreamEntry]:
        """Return the (loaded) alternate streams of ``node``."""
        if node.streams is None:
            node.streams = {}
            if node.get_u64(RecordField.STREAM_TABLE_OFFSET) and self._source is not None:
                for entry in self._source.stream_entries(node.file_id):
                    node.streams[self.fold(entry[0])] = entry
        return node.streams

    def _resolve_entry(self, directory: Node, key: str) -> Node | None:
        entry = self.children_of(directory).get(key)
        if entry is None:
            return None
        name, target = entry
        if isinstance(target, int):
            target = self._load(target)
            directory.children[key] = (name, target)  # type: ignore[index]
        return target

    # --- lookups --------------------------------------------------------------------------

    def directory(self, components: list[str]) -> Node:
        """Return the directory at ``components`` (all must exist and be directories).

        Raises CimPathNotFoundError for a missing component, CimNotADirectoryError for a
        file in the middle.
        """
        last = self._last_directory
        if last is not None and last[0] == self._generation and last[1] == components:
            return last[2]
        node = self.root
        for i, name in enumerate(components):
            child = self._resolve_entry(node, self.fold(name))
            if child is None:
                raise CimPathNotFoundError(f"{_show(components[: i + 1])}: not found")
            if not child.is_dir:
                raise CimNotADirectoryError(f"{_show(components[: i + 1])}: not a directory")
            node = child
        self._last_directory = (self._generation, list(components), node)
        return node

    def lookup(self, components: list[str]) -> Node:
        """Return the object at ``components``; the root for ``[]``.

        Raises CimNotFoundError if the last component is missing, CimPathNotFoundError or
        CimNotADirectoryError for the directories before it.
        """
        if not components:
            return self.root
        parent = self.directory(components[:-1])
        node = self._resolve_entry(parent, self.fold(components[-1]))
        if node is None:
            raise CimNotFoundError(f"{_show(components)}: not found")
        return node

    # --- changes --------------------------------------------------------------------------

    def _touch_directory(self, directory: Node) -> None:
        directory.dirty = True

    def place(self, components: list[str], node: Node) -> Node:
        """Put ``node`` at ``components`` (which must not be ``[]``); return the node now there.

        An existing entry is replaced, except that a directory placed over a directory only
        takes the new metadata (see the module docstring): then the existing node is
        returned, updated, and ``node`` is discarded.
        """
        parent = self.directory(components[:-1])
        key = self.fold(components[-1])
        existing = self._resolve_entry(parent, key)
        if existing is not None and existing.is_dir and node.is_dir:
            self.update_directory(existing, node.record)
            return existing
        if existing is not None and existing.is_dir:
            self._generation += 1  # a directory left the tree: forget the memo
        self.children_of(parent)[key] = (components[-1], node)
        self._touch_directory(parent)
        return node

    def update_directory(self, directory: Node, record: bytearray) -> None:
        """Give ``directory`` new metadata, keeping its entries, streams and parent."""
        updated = bytearray(record)
        for start, end in _KEPT_ON_DIRECTORY_UPDATE:
            updated[start:end] = directory.record[start:end]
        directory.record = updated
        directory.dirty = True

    def link(self, components: list[str], existing: list[str]) -> None:
        """Add the name ``components`` for the file at ``existing`` (CimCreateHardLink).

        Raises CimLinkToDirectoryError if ``existing`` is a directory, CimNotFoundError if it
        is missing; an existing file at ``components`` is replaced, an existing directory
        there raises CimAccessDeniedError.
        """
        target = self.lookup(existing)
        if target.is_dir:
            raise CimLinkToDirectoryError(f"{_show(existing)}: is a directory")
        if not components:
            raise CimAccessDeniedError("cannot link onto the root directory")
        parent = self.directory(components[:-1])
        key = self.fold(components[-1])
        current = self._resolve_entry(parent, key)
        if current is target:
            return
        if current is not None and current.is_dir:
            raise CimAccessDeniedError(f"{_show(components)}: is a directory")
        self.children_of(parent)[key] = (components[-1], target)
        self._touch_directory(parent)

    def delete(self, components: list[str]) -> None:
        """Remove the name ``components`` (a directory with its whole subtree).

        Raises CimAccessDeniedError for the root, CimNotFoundError if missing.
        """
        if not components:
            raise CimAccessDeniedError("cannot delete the root directory")
        parent = self.directory(components[:-1])
        key = self.fold(components[-1])
        children = self.children_of(parent)
        if key not in children:
            raise CimNotFoundError(f"{_show(components)}: not found")
        del children[key]
        self._generation += 1
        self._touch_directory(parent)

    def delete_stream(self, node: Node, stream: str) -> None:
        """Remove alternate stream ``stream`` of ``node``; raises CimNotFoundError."""
        streams = self.streams_of(node)
        key = self.fold(stream)
        if key not in streams:
            raise CimNotFoundError(f"stream {stream!r}: not found")
        del streams[key]
        node.streams_dirty = True
        node.dirty = True

    def set_stream(self, node: Node, entry: StreamEntry) -> None:
        """Add or replace an alternate stream of ``node``."""
        self.streams_of(node)[self.fold(entry[0])] = entry
        node.streams_dirty = True
        node.dirty = True
