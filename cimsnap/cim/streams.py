"""Streaming reads of CimFS streams: data, sparse and PE-image streams (§7.1, §9).

:class:`StreamReader` is a read-only, seekable ``io.RawIOBase``. It never holds a copy of
the file: each ``readinto`` copies from zero-copy region slices validated when the stream
was opened. Runs of a PE image are validated at open too, so reads cannot fail later.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from cimsnap.cim import format as fmt
from cimsnap.cim.errors import CimFormatError
from cimsnap.cim.records import StreamDescriptor

__all__ = ["ObjectSource", "Run", "StreamReader", "stream_runs"]

#: Default chunk size of :meth:`StreamReader.chunks`.
CHUNK_SIZE = 1 << 20


class ObjectSource(Protocol):
    """Resolves RegionOffsets to bounds-checked, zero-copy slices (the reader)."""

    def object_at(self, offset: int, length: int, what: str, skip: int = 0) -> memoryview:
        """Return ``length`` bytes at byte ``skip`` past ``offset``; raise CimFormatError."""
        ...


@dataclass(frozen=True, slots=True)
class Run:
    """Logical bytes [start, start + len(source)) come from ``source``; None means zeros."""

    start: int
    length: int
    source: memoryview | None


def stream_runs(objects: ObjectSource, stream: StreamDescriptor, what: str) -> list[Run]:
    """Return the runs of a data, sparse or PE-image stream; raises CimFormatError.

    A link-table stream is not file data and is refused. Zero-length streams have no runs
    and need no DataOffset (§7.1; hcsshim's reader fails there, §16 item 3).
    """
    if stream.length == 0 and not stream.sparse:
        return []
    if stream.sparse:
        return [Run(0, stream.length, None)]
    if stream.type is fmt.StreamType.DATA:
        return [Run(0, stream.length, objects.object_at(stream.data_offset, stream.length, what))]
    if stream.type is fmt.StreamType.PE_IMAGE:
        return _pe_runs(objects, stream, what)
    raise CimFormatError(what, why="is a directory's link table, not file data")


def _pe_runs(objects: ObjectSource, stream: StreamDescriptor, what: str) -> list[Run]:
    """Runs of a PE image stream (§9): each mapping moves a section forward by Delta."""
    header = objects.object_at(stream.data_offset, fmt.PE_IMAGE_SIZE, f"PE image of {what}")
    pe_image = fmt.PE_IMAGE.parse(bytes(header))
    data_offset, mapping_count = pe_image.data_offset, pe_image.mapping_count
    table = objects.object_at(
        stream.data_offset,
        mapping_count * fmt.PE_IMAGE_MAPPING_SIZE,
        f"PE image mappings of {what}",
        skip=fmt.PE_IMAGE_SIZE,
    )
    mappings = [
        fmt.PE_IMAGE_MAPPING_FAST.unpack_from(table, i * fmt.PE_IMAGE_MAPPING_SIZE)
        for i in range(mapping_count)
    ]
    if not mappings or mappings[0][0] > 0:
        mappings.insert(0, (0, 0))
    runs: list[Run] = []
    for index, (start, delta) in enumerate(mappings):
        end = mappings[index + 1][0] if index + 1 < len(mappings) else stream.length
        if end < start:
            raise CimFormatError(
                f"PE image mappings of {what}", why=f"mapping {index} is out of order"
            )
        end = min(end, stream.length)
        if end > start:
            source = objects.object_at(
                data_offset, end - start, f"PE image section of {what}", skip=start + delta
            )
            runs.append(Run(start, end - start, source))
        if end >= stream.length:
            break
    return runs


class StreamReader(io.RawIOBase):
    """A read-only, seekable view of one stream's bytes; construct with :func:`stream_runs`.

    Ranges not covered by a run (sparse streams) read as zeros. Closing drops the slices.
    """

    def __init__(self, runs: list[Run], length: int) -> None:
        super().__init__()
        self._runs = runs
        self._starts = [run.start for run in runs]
        self._length = length
        self._position = 0

    @property
    def length(self) -> int:
        """The stream's logical size in bytes."""
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        """Copy up to ``len(buffer)`` bytes at the current position; 0 at the end."""
        if self.closed:
            raise ValueError("read of closed stream")
        target = memoryview(buffer).cast("B")
        size = max(0, min(len(target), self._length - self._position))
        done = 0
        while done < size:
            position = self._position + done
            index = bisect.bisect_right(self._starts, position) - 1
            run = self._runs[index] if index >= 0 else None
            if run is not None and position < run.start + run.length:
                take = min(size - done, run.start + run.length - position)
                if run.source is None:
                    target[done : done + take] = bytes(take)
                else:
                    skip = position - run.start
                    target[done : done + take] = run.source[skip : skip + take]
            else:
                following = self._starts[index + 1] if index + 1 < len(self._runs) else self._length
                take = max(1, min(size - done, following - position))
                target[done : done + take] = bytes(take)
            done += take
        self._position += size
        return size

    def chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
        """Yield the rest of the stream in chunks of at most ``chunk_size`` bytes."""
        while True:
            chunk = self.read(chunk_size)
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        self._runs = []
        super().close()
