"""Compare's export in a worker process (:mod:`cimsnap.diff.worker` explains why and how).

The worker exports the layer a CIM adds over its parent as a Windows layer tar
(:func:`~cimsnap.wclayer.exporter.export_layer`), compresses it, hashes both the tar and
the compressed stream, and sends the compressed bytes through the data pipe in chunks of
about ``CHUNK`` bytes, ending with an empty chunk; then it reports the compressed digest
and size and the tar's digest and size. The daemon streams the chunks to containerd's
Content.Write as they come.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final, cast

from cimsnap.diff.worker import Connection, Worker
from cimsnap.wclayer.compression import CompressionKind, open_compressed
from cimsnap.wclayer.exporter import export_layer

__all__ = ["CHUNK", "ExportJob", "ExportWorker", "Exported"]

#: About how many compressed bytes one data-pipe message carries.
CHUNK: Final = 1024 * 1024


@dataclass(frozen=True)
class ExportJob:
    """What one export needs (picklable). ``parent_cim``: None for a base layer.

    ``source_date_epoch``: a FILETIME that clamps later times (see ``export_layer``).
    """

    subject: str
    cim: str
    parent_cim: str | None
    compression: CompressionKind
    source_date_epoch: int | None


@dataclass(frozen=True)
class Exported:
    """The blob written: compressed digest and size, and the uncompressed tar's."""

    digest: str
    size: int
    uncompressed_digest: str
    uncompressed_size: int


class _CompressedSink:
    """The compressor's output: hashed, counted and sent in chunks of about CHUNK bytes."""

    def __init__(self, data: Connection) -> None:
        self._data = data
        self._pending = bytearray()
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes | bytearray | memoryview) -> int:
        n = len(chunk)
        if n:
            self.hash.update(chunk)
            self.size += n
            self._pending += chunk
            if len(self._pending) >= CHUNK:
                self.flush_pending()
        return n

    def flush_pending(self) -> None:
        if self._pending:
            self._data.send_bytes(self._pending)
            self._pending.clear()

    def flush(self) -> None:
        """Called by compressors; chunks leave when full (``flush_pending`` at the end)."""

    def close(self) -> None:
        """Called by compressors that close their output: nothing to release."""


class _Tee:
    """The exporter's output: hashes and counts the tar, forwards it to the compressor."""

    def __init__(self, compressor: BinaryIO) -> None:
        self._compressor = compressor
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._compressor.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass


def _export(
    job: ExportJob, data: Connection, cancelled: threading.Event, results: Connection
) -> tuple[str, int, str, int]:
    """The job function (in the worker): export, compress and send; return the figures."""
    sink = _CompressedSink(data)
    with contextlib.ExitStack() as stack:
        compressor = cast(BinaryIO, open_compressed(sink, job.compression))
        stack.callback(compressor.close)
        tee = _Tee(compressor)
        export_layer(
            Path(job.cim),
            None if job.parent_cim is None else Path(job.parent_cim),
            cast(BinaryIO, tee),
            cancelled=cancelled,
            source_date_epoch=job.source_date_epoch,
        )
    sink.flush_pending()
    data.send_bytes(b"")
    return "sha256:" + sink.hash.hexdigest(), sink.size, "sha256:" + tee.hash.hexdigest(), tee.size


class ExportWorker(Worker):
    """One export in a worker process: iterate ``chunks()``, then ``result()``;
    ``close()`` always (it stops a worker still running)."""

    what = "export"

    def __init__(self, job: ExportJob, cancelled: threading.Event) -> None:
        super().__init__(_export, job, cancelled, to_worker=False)  # type: ignore[arg-type]
        self._result: Exported | None = None

    def chunks(self) -> Iterator[bytes]:
        """The compressed blob as the worker sends it. Raises the worker's failure."""
        while True:
            try:
                chunk = self._data.recv_bytes()
            except EOFError:  # the worker ended without the end marker: its outcome says why
                chunk = b""
            if not chunk:
                self.result()
                return
            yield chunk

    def result(self) -> Exported:
        """Wait for the outcome (after ``chunks()`` ended). Raises the worker's failure."""
        if self._result is None:
            digest, size, tar_digest, tar_size = self.outcome()
            self._result = Exported(str(digest), int(size), str(tar_digest), int(tar_size))  # type: ignore[call-overload]
        return self._result

    def expected(self) -> tuple[str, int]:
        """(digest, size) of the compressed blob: ``write_content``'s ``expected``."""
        result = self.result()
        return result.digest, result.size
