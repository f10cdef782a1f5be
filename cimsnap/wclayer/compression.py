"""Layer stream (de)compression: gzip, zstd or none, detected by magic bytes.

:func:`open_decompressed` turns a compressed layer blob into the uncompressed tar stream the
importer reads; :func:`open_compressed` wraps an output stream for the exporter.

Contract of the decompressed stream:

* The kind is chosen from the first bytes: ``1f 8b`` gzip, ``28 b5 2f fd`` zstd, anything
  else (including an empty stream) passes through unchanged. The bytes peeked for the
  decision are never lost.
* gzip: every member is decoded (multi-member files, as ``pigz`` and ``cat a.gz b.gz``
  write). Zero bytes between or after members are skipped, as gzip(1) and Python's ``gzip``
  do; any other trailing byte is an error. ISA-L (``isal``) inflates when it is importable,
  otherwise :mod:`zlib` does; both give the same bytes and the same errors.
* zstd: every frame is decoded; skippable frames are skipped. The frame and block headers
  are walked here (RFC 8878 §3.1) so that a frame cut short is *detected* (libzstd's
  streaming reader returns a short result silently) and so that no single call can expand
  more than a few MiB, whatever the ratio of the input (a 4-byte RLE block expands to
  128 KiB).
* A truncated or corrupt stream raises :class:`LayerFormatError` whose ``offset`` is the
  compressed byte offset of the damage: the exact offset for a truncation, the start of the
  chunk being decoded for corrupt data (the message gives the byte range). A truncated gzip
  is never accepted as a short tar.
* Memory is bounded: decoded data moves in chunks of at most a few MiB; with the default
  ``threaded=True`` a worker thread decodes ahead (at most :data:`_QUEUE_DEPTH` chunks), so
  decompression overlaps with the consumer (the C decoders release the GIL).
"""

from __future__ import annotations

import gzip
import importlib
import io
import queue
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Final, Literal, Protocol, Self, cast

import zstandard

from cimsnap.wclayer.errors import LayerFormatError

#: ISA-L's zlib-compatible inflater and its gzip writer; None when isal is not importable.
_isal_zlib: Any = None
_isal_igzip: Any = None
try:
    _isal_zlib = importlib.import_module("isal.isal_zlib")
    _isal_igzip = importlib.import_module("isal.igzip")
except ImportError:  # pragma: no cover - tested in a subprocess that blocks isal
    _isal_zlib = _isal_igzip = None

__all__ = [
    "GZIP_MAGIC",
    "ZSTD_MAGIC",
    "BinarySink",
    "CompressionKind",
    "detect_compression",
    "open_compressed",
    "open_decompressed",
]

CompressionKind = Literal["gzip", "zstd", "none"]

GZIP_MAGIC: Final = b"\x1f\x8b"
ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
#: Skippable zstd frames: magic 0x184D2A50..0x184D2A5F (little-endian), u32 size, payload.
_ZSTD_SKIPPABLE_LOW: Final = 0x184D2A50
_MAGIC_PEEK: Final = 4

#: Compressed bytes read from the source per call.
_READ_SIZE: Final = 1 << 20
#: Most decoded bytes one decoder call may return (gzip max_length; zstd block batches).
_OUT_CHUNK: Final = 1 << 20
#: zstd: a block never decodes to more than 128 KiB (Block_Maximum_Size).
_ZSTD_BLOCK_MAX: Final = 128 * 1024
_ZSTD_BLOCKS_PER_CALL: Final = 16
#: Decoded chunks a worker thread may hold ahead of the consumer.
_QUEUE_DEPTH: Final = 4


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class BinarySink(Protocol):
    """What :func:`open_compressed` returns: a writable, closable binary stream."""

    def write(self, data: bytes, /) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


def detect_compression(prefix: bytes) -> CompressionKind:
    """Return the kind whose magic starts ``prefix`` ("none" for anything else)."""
    if prefix.startswith(GZIP_MAGIC):
        return "gzip"
    if prefix.startswith(ZSTD_MAGIC):
        return "zstd"
    return "none"


def open_decompressed(stream: _Readable, *, threaded: bool = True) -> io.RawIOBase:
    """Return a readable binary stream of ``stream``'s decompressed bytes (see module doc).

    ``stream`` needs only ``read(n)``. Reads of the result may be short; ``b""`` means the
    end of the data. Decoding errors surface from ``read``/``readinto`` as
    :class:`LayerFormatError`. Closing the result stops the worker thread; it does not close
    ``stream``.
    """
    prefix = _read_exactly(stream, _MAGIC_PEEK)
    kind = detect_compression(prefix)
    if kind == "none":
        return _PrefixedStream(prefix, stream)
    chunks = _gunzip(stream, prefix) if kind == "gzip" else _unzstd(stream, prefix)
    if threaded:
        return _ChunkStream(_threaded(chunks))
    return _ChunkStream(chunks)


def open_compressed(out: Any, kind: CompressionKind, *, level: int | None = None) -> BinarySink:
    """Return a writable binary stream compressing into ``out`` with ``kind``.

    Closing the result writes the trailer (gzip member end, zstd frame end) but does not
    close ``out``. ``level`` defaults to a fast setting (gzip 6 / ISA-L 2, zstd 3).
    """
    if kind == "gzip":
        if _isal_igzip is not None:
            isal_level = 2 if level is None else min(max(level, 0), 3)
            sink: Any = _isal_igzip.IGzipFile(fileobj=out, mode="wb", compresslevel=isal_level)
        else:
            sink = gzip.GzipFile(
                fileobj=out, mode="wb", compresslevel=6 if level is None else level
            )
        return cast(BinarySink, sink)
    if kind == "zstd":
        compressor = zstandard.ZstdCompressor(level=3 if level is None else level)
        return cast(BinarySink, compressor.stream_writer(out, closefd=False))
    if kind == "none":
        return cast(BinarySink, _UnclosingWriter(out))
    raise ValueError(f"unknown compression {kind!r} (expected gzip, zstd or none)")


# --- sources -------------------------------------------------------------------------------


def _read_exactly(stream: _Readable, size: int) -> bytes:
    """Read up to ``size`` bytes, looping over short reads; fewer only at end of stream."""
    data = stream.read(size)
    if len(data) == size or not data:
        return bytes(data)
    parts = [data]
    got = len(data)
    while got < size:
        more = stream.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


class _PrefixedStream(io.RawIOBase):
    """``prefix`` followed by the rest of ``stream`` (the pass-through case)."""

    def __init__(self, prefix: bytes, stream: _Readable) -> None:
        self._prefix = prefix
        self._stream = stream

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        if self._prefix:
            if size < 0:
                data = self._prefix + self._stream.read()
                self._prefix = b""
                return data
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._stream.read(size)

    def readinto(self, buffer: Any, /) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)


class _UnclosingWriter(io.RawIOBase):
    """Writes through to ``out``; ``close`` flushes but leaves ``out`` open."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def writable(self) -> bool:
        return True

    def write(self, data: Any, /) -> int:
        self._out.write(data)
        return len(memoryview(data).cast("B"))

    def flush(self) -> None:
        if not self.closed:
            self._out.flush()


# --- decoders: generators of decoded chunks ------------------------------------------------


def _damage(message: str, *, offset: int) -> LayerFormatError:
    """The error for damage at compressed ``offset``; the offset is in the message too, so
    it survives a caller re-raising with the tar entry's own (uncompressed) offset."""
    return LayerFormatError(f"{message} (compressed offset {offset})", offset=offset)


def _gunzip(stream: _Readable, prefix: bytes) -> Iterator[bytes]:
    """Decode every gzip member of ``prefix + stream``, yielding chunks of <= _OUT_CHUNK."""
    zmod: Any = _isal_zlib if _isal_zlib is not None else zlib
    errors: tuple[type[BaseException], ...] = (zlib.error,)
    if _isal_zlib is not None:
        errors = (zlib.error, cast("type[BaseException]", _isal_zlib.error))
    buf = prefix
    pos = 0  # compressed offset of buf[0]
    member_start = 0
    decoder: Any = None  # None: between members
    while True:
        if not buf:
            buf = stream.read(_READ_SIZE)
            if not buf:
                if decoder is not None:
                    raise _damage(
                        f"gzip stream truncated: the member starting at compressed offset "
                        f"{member_start} ends before its end-of-stream marker",
                        offset=pos,
                    )
                return
        if decoder is None:
            # Between members: skip zero padding; anything else must start a member.
            stripped = buf.lstrip(b"\0")
            pos += len(buf) - len(stripped)
            buf = stripped
            if not buf:
                continue
            if buf[0] != GZIP_MAGIC[0] or (len(buf) > 1 and buf[1] != GZIP_MAGIC[1]):
                raise _damage(
                    "trailing data after the gzip stream is not a gzip member", offset=pos
                )
            decoder = zmod.decompressobj(31)
            member_start = pos
        try:
            out = decoder.decompress(buf, _OUT_CHUNK)
        except errors as e:
            raise _damage(
                f"corrupt gzip data in compressed bytes {pos}..{pos + len(buf)} "
                f"(member starting at {member_start}): {e}",
                offset=pos,
            ) from e
        if decoder.eof:
            rest = decoder.unused_data
            decoder = None
        else:
            rest = decoder.unconsumed_tail
        pos += len(buf) - len(rest)
        buf = rest
        if out:
            yield out


class _ZstdInput:
    """A compressed input buffer with the absolute offset of its first byte."""

    def __init__(self, stream: _Readable, prefix: bytes) -> None:
        self._stream = stream
        self.buf = bytearray(prefix)
        self.start = 0  # index in buf of the next unconsumed byte
        self.base = 0  # absolute offset of buf[0]
        self.eof = False

    @property
    def offset(self) -> int:
        return self.base + self.start

    def ensure(self, size: int) -> bool:
        """Make ``size`` unconsumed bytes available; False if the stream ends first."""
        while len(self.buf) - self.start < size:
            if self.eof:
                return False
            if self.start:
                del self.buf[: self.start]
                self.base += self.start
                self.start = 0
            more = self._stream.read(max(_READ_SIZE, size))
            if not more:
                self.eof = True
                return len(self.buf) - self.start >= size
            self.buf += more
        return True

    def take(self, size: int) -> bytes:
        data = bytes(self.buf[self.start : self.start + size])
        self.start += size
        return data


def _unzstd(stream: _Readable, prefix: bytes) -> Iterator[bytes]:
    """Decode every zstd frame of ``prefix + stream`` (skippable frames skipped)."""
    src = _ZstdInput(stream, prefix)
    dctx = zstandard.ZstdDecompressor()
    while src.ensure(1):
        frame_start = src.offset
        if not src.ensure(4):
            raise _zstd_truncated(frame_start, src.offset + len(src.buf) - src.start)
        magic = int.from_bytes(src.buf[src.start : src.start + 4], "little")
        if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE_LOW:
            if not src.ensure(8):
                raise _zstd_truncated(frame_start, src.offset)
            skip = 8 + int.from_bytes(src.buf[src.start + 4 : src.start + 8], "little")
            while skip:
                if not src.ensure(1):
                    raise _zstd_truncated(frame_start, src.offset)
                step = min(skip, len(src.buf) - src.start)
                src.start += step
                skip -= step
            continue
        if src.buf[src.start : src.start + 4] != ZSTD_MAGIC:
            raise _damage(
                "data after the zstd stream is neither a zstd frame nor a skippable frame",
                offset=frame_start,
            )
        yield from _zstd_frame(src, dctx, frame_start)


def _zstd_truncated(frame_start: int, end: int) -> LayerFormatError:
    return _damage(
        f"zstd stream truncated: the frame starting at compressed offset {frame_start} ends early",
        offset=end,
    )


def _zstd_frame(src: _ZstdInput, dctx: Any, frame_start: int) -> Iterator[bytes]:
    """Decode one zstd frame, feeding the decoder whole blocks (RFC 8878 §3.1.1)."""
    if not src.ensure(5):
        raise _zstd_truncated(frame_start, src.offset)
    descriptor = src.buf[src.start + 4]
    fcs_flag = descriptor >> 6
    single_segment = descriptor >> 5 & 1
    checksum = descriptor >> 2 & 1
    if descriptor & 0x08:
        raise _damage("zstd frame header: reserved bit set", offset=frame_start + 4)
    dict_id_size = (0, 1, 2, 4)[descriptor & 3]
    fcs_size = (1 if single_segment else 0, 2, 4, 8)[fcs_flag]
    header_size = 5 + (0 if single_segment else 1) + dict_id_size + fcs_size
    if not src.ensure(header_size):
        raise _zstd_truncated(frame_start, src.offset)
    decoder = dctx.decompressobj()
    pending = [src.take(header_size)]
    pending_blocks = 0
    last = False
    while not last:
        if not src.ensure(3):
            raise _zstd_truncated(frame_start, src.offset + len(src.buf) - src.start)
        block_header = int.from_bytes(src.buf[src.start : src.start + 3], "little")
        last = bool(block_header & 1)
        block_type = block_header >> 1 & 3
        block_size = block_header >> 3
        if block_type == 3:
            raise _damage("zstd block of reserved type", offset=src.offset)
        body = 1 if block_type == 1 else block_size
        if block_size > _ZSTD_BLOCK_MAX:
            raise _damage(f"zstd block larger than 128 KiB ({block_size})", offset=src.offset)
        tail = 4 if last and checksum else 0
        if not src.ensure(3 + body + tail):
            raise _zstd_truncated(frame_start, src.offset + len(src.buf) - src.start)
        pending.append(src.take(3 + body + tail))
        pending_blocks += 1
        if last or pending_blocks >= _ZSTD_BLOCKS_PER_CALL:
            data = b"".join(pending)
            fed_at = src.offset - len(data)
            try:
                out = decoder.decompress(data)
            except zstandard.ZstdError as e:
                raise _damage(
                    f"corrupt zstd data in compressed bytes {fed_at}..{src.offset} "
                    f"(frame starting at {frame_start}): {e}",
                    offset=fed_at,
                ) from e
            pending = []
            pending_blocks = 0
            if out:
                yield out
    if not decoder.eof:
        raise _damage(
            f"zstd frame starting at {frame_start} did not end where its last block ends",
            offset=src.offset,
        )


# --- consumers -----------------------------------------------------------------------------


class _WorkerFailure:
    """An exception raised in the worker, carried to the consumer."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Threaded:
    """Run a chunk generator in a daemon thread, at most _QUEUE_DEPTH chunks ahead."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._queue: queue.Queue[bytes | _WorkerFailure | None] = queue.Queue(_QUEUE_DEPTH)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(
            target=self._run, args=(chunks,), name="layer-decompress", daemon=True
        )
        self._thread.start()

    def _put(self, item: bytes | _WorkerFailure | None) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks: Iterator[bytes]) -> None:
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
        except BaseException as e:  # carried to and re-raised by the consumer
            self._put(_WorkerFailure(e))
            return
        self._put(None)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        item = self._queue.get()
        if item is None:
            self._done = True
            raise StopIteration
        if isinstance(item, _WorkerFailure):
            self._done = True
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        self._done = True
        self._thread.join(timeout=5)


def _threaded(chunks: Iterator[bytes]) -> _Threaded:
    return _Threaded(chunks)


class _ChunkStream(io.RawIOBase):
    """A readable stream over an iterator of decoded chunks."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._current = memoryview(b"")
        self._eof = False

    def readable(self) -> bool:
        return True

    def _fill(self) -> bool:
        while not self._current:
            if self._eof:
                return False
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                return False
            self._current = memoryview(chunk)
        return True

    def readinto(self, buffer: Any, /) -> int:
        if not self._fill():
            return 0
        view = memoryview(buffer).cast("B")
        size = min(len(view), len(self._current))
        view[:size] = self._current[:size]
        self._current = self._current[size:]
        return size

    def read(self, size: int = -1, /) -> bytes:
        if size < 0:
            return self.readall()
        if not self._fill():
            return b""
        data = self._current[:size]
        self._current = self._current[size:]
        return bytes(data)

    def readall(self) -> bytes:
        parts = []
        while self._fill():
            parts.append(bytes(self._current))
            self._current = memoryview(b"")
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            stop: Callable[[], None] | None = getattr(self._chunks, "close", None)
            if stop is not None:
                stop()
        super().close()
