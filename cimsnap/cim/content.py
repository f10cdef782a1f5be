"""Stream data placement and content dedup for the writer (§3.4, §7.1, §12 CimWriteStream).

A :class:`CimStream` is the handle ``create_file``/``create_alternate_stream`` return. Its
declared size is fixed; successive ``write`` calls fill it front to back, and ``close``
finishes it:

* size < :data:`SMALL_DATA_LIMIT` (4096, §3.4 recommendation, [U] q3): the bytes are kept
  in memory (at most 4095) and appended 8-aligned to the small-data region at close;
* otherwise the bytes go straight to the data region, page-aligned, checksummed as they
  pass, never buffered whole. If an earlier object has the same content (see Dedup), the
  region is truncated back at close (the just-written bytes and their alignment padding
  are reclaimed) and the earlier object is reused.
* A stream closed before it is full is padded with zeros (docs: "ranges never written read
  as zero"), except when *nothing* was written and the stream is sparse-capable (an
  alternate stream, or a file with FILE_ATTRIBUTE_SPARSE_FILE): then it is stored as a
  sparse descriptor with no data (§7.1 bit 56). [U] q8: whether Windows stores partially
  written files sparsely; materialising zeros always reads back the same bytes.
* Length 0: null DataOffset (§7.1 [I]).

Dedup: identical content is stored once per image, small and large alike (objectid files
stay empty, see layout.py). Small content is keyed by SHA-256 and length. Large content is
keyed by CRC-32 and length while it streams (CRC-32 runs at several GB/s; SHA-256 at about
disk speed would halve large-file throughput on one core), and a key match is confirmed by
comparing the bytes in the region before the new copy is reclaimed.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Final
from zlib import crc32

from cimsnap.cim.errors import (
    CimInvalidArgumentError,
    CimWriteBeyondSizeError,
    CimWriterStateError,
)
from cimsnap.cim.format import PAGE_SIZE, SMALL_DATA_ALIGNMENT, StreamType, pack_length_and_type
from cimsnap.cim.image_files import RegionSink
from cimsnap.cim.offsets import NULL_OFFSET, make_region_offset

__all__ = ["SMALL_DATA_LIMIT", "CimStream", "ContentStore", "Lifecycle", "State"]

#: Streams shorter than this go to the small-data region (§3.4 recommendation).
SMALL_DATA_LIMIT: Final = 4096
_ZEROS: Final = bytes(1 << 16)
_PARALLEL_MIN: Final = 256 << 10


class State(enum.Enum):
    """Writer states. Only OPEN accepts work; FAILED/COMMITTED accept only close/abort."""

    OPEN = "open"
    COMMITTED = "committed"
    FAILED = "failed"
    CLOSED = "closed"


class Lifecycle:
    """The writer's state and its one active stream (§12: one stream handle at a time)."""

    __slots__ = ("active", "state")

    def __init__(self) -> None:
        self.state = State.OPEN
        self.active: CimStream | None = None

    def require_open(self) -> None:
        """Raise CimWriterStateError unless the writer accepts work."""
        if self.state is not State.OPEN:
            raise CimWriterStateError(f"the CIM writer is {self.state.value}")


#: Called once at close with the stream's (DataOffset, LengthAndType).
Finisher = Callable[[int, int], None]


class ContentStore:
    """The data and small-data regions of one image, with the content dedup tables."""

    __slots__ = (
        "_data",
        "_data_index",
        "_large",
        "_small",
        "_small_index",
        "_small_known",
        "_worker",
    )

    def __init__(
        self, data: RegionSink, data_index: int, small: RegionSink, small_index: int
    ) -> None:
        self._data = data
        self._data_index = data_index
        self._small = small
        self._small_index = small_index
        self._small_known: dict[bytes, int] = {}
        #: (size << 32 | crc32) -> byte offsets in the data region of objects with that key.
        self._large: dict[int, list[int]] = {}
        self._worker: ThreadPoolExecutor | None = None

    def open_stream(
        self, lifecycle: Lifecycle, size: int, *, sparse_capable: bool, finish: Finisher
    ) -> CimStream:
        """Return a stream of ``size`` bytes; ``finish`` receives its descriptor at close."""
        return CimStream(self, lifecycle, size, sparse_capable, finish)

    def store_small(self, data: bytes | bytearray) -> int:
        """Place (or reuse) small content; return its RegionOffset."""
        key = hashlib.sha256(data).digest() + len(data).to_bytes(2, "little")
        offset = self._small_known.get(key)
        if offset is None:
            small = self._small
            small.align(SMALL_DATA_ALIGNMENT)
            offset = make_region_offset(self._small_index, small.append(data))
            self._small_known[key] = offset
        return offset

    def begin_large(self) -> tuple[int, int]:
        """Page-align the data region; return (end before padding, object start)."""
        before = self._data.end
        return before, self._data.align(PAGE_SIZE)

    def checksum_and_append(self, data: bytes | bytearray | memoryview, crc: int) -> int:
        """Append bytes of the current large object; return the running CRC-32.

        Chunks of 256 KiB or more are checksummed on a worker thread while this thread
        writes them (both release the GIL); returns when both are done, so the caller may
        reuse its buffer at once.
        """
        if len(data) < _PARALLEL_MIN:
            self._data.append(data)
            return crc32(data, crc)
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cim-crc")
        future = self._worker.submit(crc32, data, crc)
        try:
            self._data.append(data)
        finally:
            crc = future.result()
        return crc

    def close(self) -> None:
        """Stop the worker thread, if one was started (idempotent)."""
        if self._worker is not None:
            self._worker.shutdown(wait=True)
            self._worker = None

    def finish_large(self, crc: int, size: int, before: int, start: int) -> int:
        """Register the large object at ``start``, or reclaim it if its content is known.

        A CRC-32 match only nominates candidates: the bytes are compared before anything
        is reused, so a collision costs a read, never a wrong file.
        """
        key = size << 32 | crc
        candidates = self._large.setdefault(key, [])
        for candidate in candidates:
            if self._data.same_bytes(candidate, start, size):
                self._data.truncate(before)
                return make_region_offset(self._data_index, candidate)
        candidates.append(start)
        return make_region_offset(self._data_index, start)


class CimStream:
    """A write handle on one stream of fixed size (CimWriteStream / CimCloseStream, §12).

    ``write`` raises CimWriteBeyondSizeError past the declared size (after storing what
    fits), CimInvalidArgumentError on a directory's handle, CimWriterStateError after
    close or once the writer stopped accepting work. Any such error fails the writer.
    ``close`` is idempotent. The stream never keeps a reference to the caller's buffers.
    """

    __slots__ = (
        "_before",
        "_buffer",
        "_content",
        "_crc",
        "_finish",
        "_lifecycle",
        "_size",
        "_sparse_capable",
        "_start",
        "_started",
        "_written",
        "closed",
        "is_directory",
    )

    def __init__(
        self,
        content: ContentStore | None,
        lifecycle: Lifecycle,
        size: int,
        sparse_capable: bool,
        finish: Finisher | None,
    ) -> None:
        self._content = content
        self._lifecycle = lifecycle
        self._size = size
        self._sparse_capable = sparse_capable
        self._finish = finish
        self._written = 0
        self._buffer = bytearray()
        self._crc = 0
        self._started = False
        self._before = self._start = 0
        self.is_directory = content is None
        self.closed = content is None or size == 0
        if self.closed:
            if finish is not None:
                finish(NULL_OFFSET, pack_length_and_type(0, StreamType.DATA))
        else:
            lifecycle.active = self

    @property
    def size(self) -> int:
        """The declared size in bytes."""
        return self._size

    def __enter__(self) -> CimStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fail(self, error: Exception) -> Exception:
        self._lifecycle.state = State.FAILED
        self._lifecycle.active = None
        self.closed = True
        return error

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` to the stream (see the class docstring for errors)."""
        self._lifecycle.require_open()
        length = len(data)
        if not length:
            return
        if self.is_directory:
            raise self._fail(CimInvalidArgumentError("cannot write data to a directory"))
        if self.closed:
            raise self._fail(CimWriterStateError("the stream is closed"))
        room = self._size - self._written
        if length > room:
            self._store_or_fail(memoryview(data)[:room])
            raise self._fail(
                CimWriteBeyondSizeError(
                    f"write of {length} bytes at offset {self._written} passes the declared "
                    f"size {self._size}"
                )
            )
        self._store_or_fail(data)

    def _store_or_fail(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._store(data)
        except OSError as e:
            raise self._fail(e) from None

    def _store(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if self._size < SMALL_DATA_LIMIT:
            self._buffer += data
        else:
            content = self._content
            if content is None:
                raise AssertionError("unreachable: directory streams are closed")
            if not self._started:
                self._started = True
                self._before, self._start = content.begin_large()
            self._crc = content.checksum_and_append(data, self._crc)
        self._written += len(data)

    def close(self) -> None:
        """Finish the stream: pad or mark sparse, dedup, record its descriptor (idempotent).

        Raises CimWriterStateError if the writer failed meanwhile (the data is discarded).
        """
        if self.closed:
            return
        self.closed = True
        self._lifecycle.active = None
        self._lifecycle.require_open()
        try:
            self._complete()
        except OSError as e:
            raise self._fail(e) from None

    def _complete(self) -> None:
        content = self._content
        finish = self._finish
        if content is None or finish is None:
            raise AssertionError("unreachable: directory streams are closed")
        if self._written == 0 and self._sparse_capable:
            finish(NULL_OFFSET, pack_length_and_type(self._size, StreamType.DATA, sparse=True))
            return
        while self._written < self._size:
            self._store(_ZEROS[: self._size - self._written])
        if self._size < SMALL_DATA_LIMIT:
            offset = content.store_small(self._buffer)
            self._buffer = bytearray()
        else:
            offset = content.finish_large(self._crc, self._size, self._before, self._start)
        finish(offset, pack_length_and_type(self._size, StreamType.DATA))
