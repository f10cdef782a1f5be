"""CimWriter: build a classic CimFS image the way the Windows CimFS API does (§12, §14).

Method map (Windows -> here): CimCreateImage -> ``CimWriter(directory, name, parent=...)``;
CimCreateFile -> :meth:`CimWriter.create_file`; CimWriteStream / CimCloseStream ->
:class:`~cimsnap.cim.content.CimStream` ``write`` / ``close``; CimCreateAlternateStream ->
:meth:`create_alternate_stream`; CimCreateHardLink -> :meth:`create_hard_link`;
CimDeletePath -> :meth:`delete_path`; CimCommitImage -> :meth:`commit`; CimCloseImage ->
:meth:`close` (without a commit it discards everything, leaving no file behind).

Paths are relative to the image root, components separated by ``\\``; a leading and one
trailing ``\\`` are ignored; ``""`` is the root. ``file:stream`` names an alternate stream.

Lifecycle: the writer is a context manager. Any error raised by a method (an API error of
:mod:`cimsnap.cim.errors` or an OSError) fails it closed: afterwards only ``close``/``abort``
are accepted, and every other call raises CimWriterStateError. ``close`` is idempotent.

Output is deterministic: the same calls with the same ``region_set_id`` give the same bytes
(no clock is read; IDs and layout follow sorted names, never hash order).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Final

from cimsnap.cim.content import CimStream, ContentStore, Lifecycle, State
from cimsnap.cim.errors import (
    CimAccessDeniedError,
    CimError,
    CimFileExistsError,
    CimInvalidArgumentError,
    CimNotADirectoryError,
    CimNotFoundError,
    CimSharingViolationError,
)
from cimsnap.cim.file_metadata import NULL_DACL_SECURITY_DESCRIPTOR, FileMetadata
from cimsnap.cim.fork_source import ParentImage, open_parent
from cimsnap.cim.format import (
    FILE_RECORD_FAST,
    FILE_RECORD_SIZE,
    LENGTH_MASK,
    MAX_REGION_COUNT,
    REPARSE_LENGTH,
    SD_LENGTH,
    FileAttribute,
    RegionType,
    StreamType,
    flags_from_attributes,
    pack_length_and_type,
)
from cimsnap.cim.headers import RegionSet
from cimsnap.cim.image_files import ImageFiles
from cimsnap.cim.image_paths import SEPARATOR, PathParser, check_image_name
from cimsnap.cim.layout import (
    ForkBase,
    MetadataPlacer,
    image_header_bytes,
    lay_out,
    objectid_header_bytes,
    region_header_bytes,
)
from cimsnap.cim.offsets import NULL_OFFSET
from cimsnap.cim.pending import Node, PendingTree, RecordField
from cimsnap.cim.upcase import NameOrder
from cimsnap.upcase import upcase_table_bytes

__all__ = ["CimWriter"]

#: The image's own region set (§3.4 recommendation, [U] q3): one metadata, one data and
#: one small-data region, in this order.
REGION_TYPES: Final = (RegionType.METADATA, RegionType.DATA, RegionType.SMALL_DATA)
_SPARSE: Final = int(FileAttribute.SPARSE_FILE)
_DIRECTORY: Final = int(FileAttribute.DIRECTORY)
_pack_record: Final = FILE_RECORD_FAST.packer.pack
_EMPTY_DIRECTORY: Final = pack_length_and_type(0, StreamType.LINK_TABLE)
_EMPTY_DATA: Final = pack_length_and_type(0, StreamType.DATA)


class CimWriter:
    """Writer of one new image or fork in ``directory`` (see the module docstring).

    * ``parent=None``: a new image. ``image_name`` must not exist (CimFileExistsError).
    * ``parent="x.cim"``: a fork of that image, in the same directory (CimNotFoundError if
      missing). The fork lists the parent's parent sets, then the parent's own set (§3.3),
      so every parent object is reused in place. ``parent == image_name`` extends an image
      in place: the result is a fork of the old image that replaces its ``.cim`` at commit.
    * ``region_set_id``: the GUID naming the new region files (default: random).

    Raises CimSharingViolationError if another writer has the directory, OSError if it
    cannot be used. A failed constructor leaves no file behind.
    """

    def __init__(
        self,
        directory: Path | str,
        image_name: str,
        *,
        parent: str | None = None,
        region_set_id: uuid.UUID | None = None,
    ) -> None:
        self.directory = Path(directory)
        check_image_name(image_name)
        if parent is not None:
            check_image_name(parent)
        self.image_name = image_name
        self._lifecycle = Lifecycle()
        self._objects: dict[bytes, int] = {}
        self._paths = PathParser()
        # Record Flags per attributes value, derived once from format.flags_from_attributes.
        self._flags: dict[int, int] = {}
        self._own = RegionSet(region_set_id or uuid.uuid4(), len(REGION_TYPES))
        self._parent_sets: tuple[RegionSet, ...] = ()
        self._fork: ForkBase | None = None
        self._files = ImageFiles(self.directory, image_name, self._own)
        try:
            # Checked under the directory lock, so no other writer can race us to the name.
            if (self.directory / image_name).exists() and parent != image_name:
                raise CimFileExistsError(f"{image_name}: the image exists already")
            if parent is not None and not (self.directory / parent).is_file():
                raise CimNotFoundError(f"{parent}: parent image not found")
            self._open(parent)
        except BaseException:
            self._files.discard()
            self._close_parent()
            raise

    def _open(self, parent: str | None) -> None:
        self._parent_image: ParentImage | None = None
        if parent is None:
            order = NameOrder.default()
            root = Node(_directory_record(), is_dir=True)
            self._tree = PendingTree(root, order.key)
            self._upcase = upcase_table_bytes()
        else:
            self._parent_image = open_parent(self.directory / parent)
            self._parent_sets = self._parent_image.region_sets
            self._fork = self._parent_image.fork_base
            order = self._parent_image.order
            root_id = self._parent_image.root_id
            source = self._parent_image.source
            record = bytearray(source.record_bytes(root_id))
            self._tree = PendingTree(Node(record, is_dir=True, file_id=root_id), order.key, source)
            self._upcase = b""
        base = sum(s.count for s in self._parent_sets)
        if base + len(REGION_TYPES) > MAX_REGION_COUNT:
            raise CimInvalidArgumentError(
                f"a fork of {parent} would need more than {MAX_REGION_COUNT} regions"
            )
        sinks = [
            self._files.create_region(i, region_header_bytes(i, kind))
            for i, kind in enumerate(REGION_TYPES)
        ]
        self._placer = MetadataPlacer(sinks[0], base)
        self._content = ContentStore(sinks[1], base + 1, sinks[2], base + 2)
        if self._fork is None:
            self._tree.root.set_u64(
                RecordField.SD_OFFSET, self._put_counted(b"sd", NULL_DACL_SECURITY_DESCRIPTOR)
            )

    # --- context management ----------------------------------------------------------------

    def __enter__(self) -> CimWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def region_set_id(self) -> uuid.UUID:
        """The GUID in the names of this image's region and objectid files."""
        return self._own.guid

    @property
    def name_key(self) -> Callable[[str], str]:
        """The §7.3 key this image's link tables are sorted with: two names are the same
        entry of a directory iff their keys are equal. A fork keeps its parent's upcase
        table (§5), so its key may differ from :meth:`NameOrder.default`'s."""
        return self._tree.fold

    @property
    def state(self) -> State:
        """The writer's state (OPEN, COMMITTED, FAILED or CLOSED)."""
        return self._lifecycle.state

    def close(self) -> None:
        """Release the writer (idempotent). Without a commit, every created file is removed."""
        if self._lifecycle.state is State.CLOSED:
            return
        if self._lifecycle.state is not State.COMMITTED:
            self._files.discard()
        content = getattr(self, "_content", None)
        if content is not None:
            content.close()
        self._close_parent()
        self._lifecycle.state = State.CLOSED
        self._lifecycle.active = None

    abort = close

    def _close_parent(self) -> None:
        parent = getattr(self, "_parent_image", None)
        if parent is not None:
            parent.close()
            self._parent_image = None

    # --- internal helpers --------------------------------------------------------------------

    def _begin(self) -> None:
        self._lifecycle.require_open()
        if self._lifecycle.active is not None:
            self._lifecycle.state = State.FAILED
            raise CimSharingViolationError("a stream handle is still open")

    def _put_counted(self, kind: bytes, data: bytes) -> int:
        """Place an SD (u16-counted), reparse buffer (u16-counted) or EA buffer, shared."""
        key = kind + data
        offset = self._objects.get(key)
        if offset is None:
            if kind == b"sd":
                data = SD_LENGTH.build(len(data)) + data
            elif kind == b"rp":
                data = REPARSE_LENGTH.build(len(data)) + data
            offset = self._placer.put(data)
            self._objects[key] = offset
        return offset

    def _record(self, metadata: FileMetadata) -> bytearray:
        sd = metadata.security_descriptor or NULL_DACL_SECURITY_DESCRIPTOR
        attributes = metadata.attributes
        is_dir = attributes & _DIRECTORY
        flags = self._flags.get(attributes)
        if flags is None:
            flags = self._flags[attributes] = int(flags_from_attributes(attributes))
        return bytearray(
            _pack_record(
                flags,
                len(metadata.ea),
                metadata.reparse_tag,
                metadata.creation_time,
                metadata.last_write_time,
                metadata.change_time,
                metadata.last_access_time,
                NULL_OFFSET,
                _EMPTY_DIRECTORY if is_dir else _EMPTY_DATA,
                self._put_counted(b"sd", sd),
                self._put_counted(b"ea", metadata.ea) if metadata.ea else NULL_OFFSET,
                self._put_counted(b"rp", metadata.reparse) if metadata.reparse else NULL_OFFSET,
                NULL_OFFSET,
                0,
                0,
                0,
            )
        )

    def _fail(self) -> None:
        if self._lifecycle.state is State.OPEN:
            self._lifecycle.state = State.FAILED

    # --- the API -----------------------------------------------------------------------------

    def create_file(self, path: str, metadata: FileMetadata) -> CimStream:
        """Add (or replace) a file or directory at ``path`` (CimCreateFile).

        Returns the handle of its default stream, of ``metadata.size`` bytes. A directory's
        or an empty file's handle is returned closed (nothing to write; ``write`` of data
        raises). Replacing: see :mod:`cimsnap.cim.pending` (a directory over a directory
        keeps its children). ``""`` updates the root directory's metadata.

        Raises CimInvalidNameError, CimPathNotFoundError (missing parent),
        CimNotADirectoryError, CimAccessDeniedError (a file as the root),
        CimSharingViolationError (a stream is open), CimWriterStateError.
        """
        self._begin()
        try:
            components = self._paths.components(path)
            record = self._record(metadata)
            if not components:
                if not metadata.is_directory:
                    raise CimAccessDeniedError("the root must be a directory")
                self._tree.update_directory(self._tree.root, record)
                return CimStream(None, self._lifecycle, 0, False, None)
            is_dir = bool(metadata.attributes & _DIRECTORY)
            node = self._tree.place(components, Node(record, is_dir=is_dir))
        except (CimError, OSError):
            self._fail()
            raise
        if is_dir:
            return CimStream(None, self._lifecycle, 0, False, None)

        def finish(data_offset: int, length_and_type: int) -> None:
            node.set_u64(RecordField.DATA_OFFSET, data_offset)
            node.set_u64(RecordField.LENGTH_AND_TYPE, length_and_type)

        return self._content.open_stream(
            self._lifecycle,
            metadata.size,
            sparse_capable=bool(metadata.attributes & _SPARSE),
            finish=finish,
        )

    def create_alternate_stream(self, path: str, size: int) -> CimStream:
        """Add (or replace) alternate stream ``file:stream`` of ``size`` bytes.

        The file or directory must exist (CimNotFoundError). Never-written streams read as
        sparse zeros. Raises CimInvalidNameError for a path without a stream name.
        """
        self._begin()
        try:
            components, stream = self._paths.stream_path(path)
            if not 0 <= size <= LENGTH_MASK:
                raise CimInvalidArgumentError(f"stream size {size} does not fit in 48 bits")
            node = self._tree.lookup(components)
        except (CimError, OSError):
            self._fail()
            raise
        tree = self._tree

        def finish(data_offset: int, length_and_type: int) -> None:
            tree.set_stream(node, (stream, data_offset, length_and_type))

        return self._content.open_stream(self._lifecycle, size, sparse_capable=True, finish=finish)

    def create_hard_link(self, new_path: str, existing_path: str) -> None:
        """Give the file at ``existing_path`` the additional name ``new_path``.

        Raises CimLinkToDirectoryError for a directory, CimNotFoundError if missing,
        CimAccessDeniedError if ``new_path`` is a directory; a file there is replaced.
        """
        self._begin()
        try:
            self._tree.link(self._paths.components(new_path), self._paths.components(existing_path))
        except (CimError, OSError):
            self._fail()
            raise

    def delete_path(self, path: str) -> None:
        """Remove a file, a directory with its subtree, a hard link or ``file:stream``.

        Raises CimNotFoundError if absent, CimAccessDeniedError for the root.
        """
        self._begin()
        try:
            last = path.rstrip(SEPARATOR).rpartition(SEPARATOR)[2]
            if ":" in last:
                components, stream = self._paths.stream_path(path)
                self._tree.delete_stream(self._tree.lookup(components), stream)
            else:
                self._tree.delete(self._paths.components(path))
        except (CimError, OSError):
            self._fail()
            raise

    def exists(self, path: str) -> bool:
        """True if ``path`` names a file or directory in the image being written (False if
        it, or a directory on the way, is missing or a file). Raises CimInvalidNameError."""
        self._lifecycle.require_open()
        try:
            self._tree.lookup(self._paths.components(path))
        except (CimNotFoundError, CimNotADirectoryError):
            return False
        except (CimError, OSError):
            self._fail()
            raise
        return True

    def commit(self) -> Path:
        """Write the image and make it visible atomically (CimCommitImage); return its path.

        Raises CimSharingViolationError while a stream is open, OSError on I/O failure
        (then no ``.cim`` refers to the new regions, and ``close`` removes them).
        """
        self._begin()
        try:
            filesystem_offset = lay_out(
                self._tree, self._placer, upcase=self._upcase, fork=self._fork
            )
            for index, kind in enumerate(REGION_TYPES):
                self._files.write_objectid(index, objectid_header_bytes(index, kind))
            image = image_header_bytes(self._own, self._parent_sets, filesystem_offset)
            path = self._files.commit(image)
        except (CimError, OSError):
            self._fail()
            raise
        self._lifecycle.state = State.COMMITTED
        self._content.close()
        self._close_parent()
        return path


def _directory_record() -> bytearray:
    node = Node(bytearray(FILE_RECORD_SIZE), is_dir=True)
    node.set_u64(RecordField.LENGTH_AND_TYPE, _EMPTY_DIRECTORY)
    return node.record
