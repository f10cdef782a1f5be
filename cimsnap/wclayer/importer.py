r"""import_layer: one uncompressed Windows layer tar into a CIM layer (§0, §1.6).

The loop of hcsshim's ``writeCimLayerFromTar`` over :class:`TarReader` entries, feeding a
:class:`CimLayerWriter`, with the safe-input policy of §5 ("Recommend") and one big
difference: **a failed import commits nothing.** hcsshim always closes (commits) the
writer, even after an error; here any error, cancellation included, aborts it, which
removes the uncommitted CIM files and every host file or directory the import created
(the layer directory too, if it did not exist), and leaves everything else untouched.

Entry kinds (§1.3), after the tar reader's normalisation:

==================  ===================================================================
entry               action
==================  ===================================================================
whiteout            basename ``.wh.<name>``: :meth:`CimLayerWriter.remove` of
                    ``<dir>\<name>``; type, data and PAX are ignored. ``<name>`` must be
                    a valid component (so ``.wh.``, ``.wh..``, ``.wh...`` are refused);
                    the writer refuses the root, ``Files``, ``Hives``, std files and
                    every whiteout of a base layer. ``.wh..wh..opq`` (OCI opaque marker,
                    a no-op in hcsshim) is ignored with a warning (refused in a base).
``1`` hard link     ``add_link(name, linkname)``; PAX ignored; the target must exist and
                    not be a directory; contributes nothing to the size.
``0``, ``7``        a file (``7`` contiguous is a regular file, as in Python's tarfile;
                    hcsshim makes it empty): ``add`` + exactly ``size`` bytes of data.
``5``               a directory: ``add`` with size 0.
``2``               a symbolic link or, with ``MSWINDOWS.mountpoint``, a junction: ``add``
                    with the reparse buffer, size 0.
``g``               a global PAX header: ignored (Go returns it; hcsshim would make a file
                    ``pax_global_header`` of it).
``3 4 6 S`` other   refused: devices and FIFOs have no CIM form; old GNU sparse ``S``
                    would lose data in hcsshim (the PAX sparse formats are expanded by
                    the reader and are fine).
ADS                 a ``0``/``7`` entry right after an added entry ``N`` and named
                    ``N:<stream>[:$DATA]``: ``add_alternate_stream`` + data (written, not
                    counted in the size). A ``:`` anywhere else is refused.
==================  ===================================================================

The PAX ``MSWINDOWS.fileattr`` decides file versus directory, as in hcsshim, except that
contradictions are refused: a ``0`` entry whose attributes say directory but which has
data, and a ``5`` entry whose attributes lack DIRECTORY. A ``0`` entry with DIRECTORY and
no data is a directory (hcsshim compatible).

Names go through :class:`cimsnap.wclayer.names.ImagePaths`. Two entries whose paths are
equal only case-insensitively (with the CIM's own name key, i.e. Windows upcase) are
refused, and so is an entry below a directory spelled differently than the directory's
own entry (``Files/Windows`` then ``Files/windows/x``): a case-insensitive Windows file
system would merge them, so the tar is ambiguous. Exact duplicates are allowed, the last
one wins (§5 #9, #11). The check keeps one pair of 64-bit hashes per entry (the folded
path and its spelling), not the names: memory stays small at 250,000 entries, and a hash
collision between two *different* folded paths would at worst refuse a valid layer, with
probability below 1e-8 at that size.

Every error that concerns an entry is a :class:`LayerFormatError` naming it and the offset
of its first header block; errors found at close (a missing base hive, a bad delta hive)
name the offset of the end of the stream. A truncated stream is an error only mid-entry
(§1.1: at an entry boundary it is indistinguishable from the end); callers verify digests.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, Protocol

from cimsnap.wclayer.errors import LayerCancelledError, LayerFormatError
from cimsnap.wclayer.layer_writer import CimLayerWriter
from cimsnap.wclayer.names import ImagePaths, component_problem
from cimsnap.wclayer.tarstream import TarEntry, TarHeader, TarReader
from cimsnap.wclayer.winmeta import basic_info, ea_buffer, reparse_buffer, security_descriptor

__all__ = ["import_layer"]

_log = logging.getLogger(__name__)

_CHUNK: Final = 1 << 20
_WHITEOUT: Final = ".wh."
_OPAQUE: Final = ".wh..wh..opq"
_MOUNTPOINT: Final = "MSWINDOWS.mountpoint"
_DIRECTORY: Final = 0x10
_REPARSE_POINT: Final = 0x400
_REGULAR: Final = frozenset("07")


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def import_layer(
    stream: _Readable,
    layer_path: Path | str,
    cim_path: Path | str,
    parent_layer_paths: Sequence[Path | str],
    parent_cim_paths: Sequence[Path | str],
    *,
    cancelled: threading.Event | None = None,
    progress: Callable[[int, int], None] | None = None,
    busy_timeout: float = 60.0,
) -> int:
    """Import the uncompressed layer tar ``stream``; return hcsshim's size total (§1.7).

    The size is the sum of the data sizes of regular-file entries (std files included,
    alternate streams, links, directories and whiteouts not). Parents are listed nearest
    first; the CIM is a fork of ``parent_cim_paths[0]``, in ``cim_path``'s directory,
    which must exist. Another CIM writer of that directory is waited for, with backoff,
    up to ``busy_timeout`` seconds. ``cancelled`` is checked between entries (and while
    waiting); ``progress(bytes_read, entries_done)`` is called after each entry.

    Raises LayerFormatError (bad stream, naming entry and offset), LayerParentError,
    LayerExistsError (the CIM exists, or a host file the layer needs), LayerBusyError,
    LayerCancelledError, OSError. On any error nothing is committed (module docstring).
    """
    writer = CimLayerWriter(
        layer_path,
        parent_layer_paths,
        cim_path,
        parent_cim_paths,
        busy_timeout=busy_timeout,
        cancelled=cancelled,
    )
    try:
        reader = TarReader(stream)
        size = _Import(writer, reader, cancelled, progress).run()
        try:
            writer.close()
        except LayerFormatError as e:
            if e.entry is not None or e.offset is not None:
                raise
            raise LayerFormatError(e.reason, offset=reader.position) from e
    except BaseException:
        writer.abort()
        raise
    return size


class _Import:
    """State of one import loop (§1.6): the writer, the reader, names seen, the total."""

    def __init__(
        self,
        writer: CimLayerWriter,
        reader: TarReader,
        cancelled: threading.Event | None,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.writer = writer
        self.reader = reader
        self.cancelled = cancelled
        self.progress = progress
        self.paths = ImagePaths()
        self.fold = writer.name_key
        self.seen: dict[int, int] = {}  # hash(folded path) -> hash(path as spelled)
        self.buffer = bytearray(_CHUNK)
        self.size = 0
        self.entries = 0
        self.last_added: str | None = None  # tar name of the previous added entry
        self.last_added_path = ""

    def run(self) -> int:
        cancelled, progress = self.cancelled, self.progress
        for entry in self.reader:
            if cancelled is not None and cancelled.is_set():
                raise LayerCancelledError("layer import cancelled")
            header = entry.header
            try:
                self.entry(entry, header)
            except LayerFormatError as e:
                if e.entry is not None:
                    raise
                raise LayerFormatError(e.reason, entry=header.name, offset=header.offset) from e
            self.entries += 1
            if progress is not None:
                progress(self.reader.position, self.entries)
        return self.size

    def entry(self, entry: TarEntry, header: TarHeader) -> None:
        name = header.name
        typeflag = header.typeflag
        last = self.last_added
        if (
            last is not None
            and typeflag in _REGULAR
            and name.startswith(last)
            and name[len(last) : len(last) + 1] == ":"
        ):
            self.alternate_stream(entry, header, name[len(last) + 1 :])
            return
        self.last_added = None
        base = name.rpartition("/")[2]
        if base.startswith(_WHITEOUT):
            self.whiteout(name, base)
        elif typeflag == "1":
            self.link(header)
        elif typeflag in _REGULAR or typeflag in "25":
            self.add(entry, header)
        elif typeflag != "g":
            raise LayerFormatError(f"entry type {typeflag!r} is not supported in a layer")

    # --- entry kinds ----------------------------------------------------------------------

    def add(self, entry: TarEntry, header: TarHeader) -> None:
        path = self.paths.convert(header.name)
        self.remember(path)
        typeflag = header.typeflag
        pax = header.pax
        info = basic_info(header)
        attributes = info.file_attributes & ~_REPARSE_POINT
        reparse = b""
        size = 0
        if typeflag == "2":
            target = header.linkname.replace("/", "\\")
            reparse = reparse_buffer(target, mountpoint=_MOUNTPOINT in pax)
            attributes |= _REPARSE_POINT
        elif typeflag == "5":
            if not attributes & _DIRECTORY:
                raise LayerFormatError(
                    f"directory entry whose attributes {attributes:#x} say it is a file"
                )
        elif attributes & _DIRECTORY:
            if header.size:
                raise LayerFormatError(
                    f"file entry with {header.size} bytes whose attributes say directory"
                )
        else:
            size = header.size
        if attributes != info.file_attributes:
            info = dataclasses.replace(info, file_attributes=attributes)
        self.writer.add(
            path,
            info,
            size,
            security_descriptor(pax),
            ea_buffer(pax),
            reparse,
        )
        if size:
            self.copy(entry, size)
        if typeflag in _REGULAR:
            self.size += header.size
        self.last_added = header.name
        self.last_added_path = path

    def alternate_stream(self, entry: TarEntry, header: TarHeader, suffix: str) -> None:
        size = header.size
        self.writer.add_alternate_stream(f"{self.last_added_path}:{suffix}", size)
        if size:
            self.copy(entry, size)

    def link(self, header: TarHeader) -> None:
        if not header.linkname:
            raise LayerFormatError("hard link without a target")
        path = self.paths.convert(header.name)
        target = self.paths.convert(header.linkname)
        self.remember(path)
        self.writer.add_link(path, target)

    def whiteout(self, name: str, base: str) -> None:
        directory = name[: len(name) - len(base)]
        if base == _OPAQUE:
            if self.writer.is_base:
                raise LayerFormatError("a base layer cannot contain whiteouts")
            if directory:
                self.paths.convert(directory)
            _log.warning("ignoring opaque whiteout %r: Windows layers do not use them", name)
            return
        removed = base[len(_WHITEOUT) :]
        problem = component_problem(removed)
        if problem is not None:
            raise LayerFormatError(f"whiteout of {removed!r}: {problem}")
        path = self.paths.convert(directory + removed)
        self.writer.remove(path)
        self.seen.pop(hash(self.fold(path)), None)

    # --- helpers --------------------------------------------------------------------------

    def remember(self, path: str) -> None:
        """Refuse case-variant spellings of a path or of its parent (module docstring)."""
        fold, seen = self.fold, self.seen
        spelled = hash(path)
        key = hash(fold(path))
        known = seen.get(key)
        if known is not None and known != spelled:
            raise LayerFormatError(f"{path!r} differs only in case from an earlier entry")
        parent = path.rpartition("\\")[0]
        if parent:
            known = seen.get(hash(fold(parent)))
            if known is not None and known != hash(parent):
                raise LayerFormatError(
                    f"{path!r}: its directory is spelled differently from its own entry"
                )
        seen[key] = spelled

    def copy(self, entry: TarEntry, size: int) -> None:
        """Stream exactly ``size`` bytes of ``entry`` into the writer, 1 MiB at a time."""
        buffer = self.buffer
        view = memoryview(buffer)
        write = self.writer.write
        left = size
        while left:
            n = entry.readinto(view[: min(left, _CHUNK)])
            if not n:
                raise LayerFormatError(f"data ends {left} bytes short of its size {size}")
            write(view[:n])
            left -= n
