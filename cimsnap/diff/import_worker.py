"""Apply's import in a worker process (:mod:`cimsnap.diff.worker` explains why and how).

The daemon feeds the compressed blob through the data pipe; the worker detects the
compression by magic bytes, imports the tar with
:func:`~cimsnap.wclayer.importer.import_layer` while hashing it, drains what follows the
tar's end into the hash (as containerd's differ does), and reports the uncompressed
digest and size. Progress is ``("progress", bytes, entries)`` at most every
``PROGRESS_INTERVAL`` seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from cimsnap.diff.worker import Connection, Worker
from cimsnap.wclayer.compression import open_decompressed
from cimsnap.wclayer.errors import LayerCancelledError
from cimsnap.wclayer.importer import import_layer

__all__ = ["PROGRESS_INTERVAL", "ImportJob", "ImportWorker", "Imported"]

#: Seconds between two progress messages of a worker.
PROGRESS_INTERVAL: Final = 0.25
_CHUNK: Final = 1024 * 1024

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class ImportJob:
    """What one import needs: ``import_layer``'s arguments (paths as strings, picklable).

    ``subject`` prefixes error messages (``"layer sha256:..."``).
    """

    subject: str
    layer_path: str
    cim_path: str
    parent_layer_paths: tuple[str, ...]
    parent_cim_paths: tuple[str, ...]
    busy_timeout: float


@dataclass(frozen=True)
class Imported:
    """The uncompressed tar that was imported: ``sha256:<hex>`` and its size in bytes."""

    digest: str
    size: int


# -- the worker's side ------------------------------------------------------------------


class _Sha256Thread:
    """SHA-256 of a byte stream, computed on its own thread.

    ``hashlib`` releases the GIL on large buffers, so hashing the uncompressed tar here
    overlaps the import (which holds the GIL most of the time) instead of adding to it.
    At most ``depth`` chunks wait (bounded memory); chunks must be immutable ``bytes``.
    """

    def __init__(self, depth: int = 8) -> None:
        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._thread = threading.Thread(target=self._run, name="cimsnap-sha256", daemon=True)
        self._thread.start()
        self._digest: str | None = None

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._hash.update(chunk)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def close(self) -> None:
        """Stop the thread (idempotent)."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        """Finish and return the digest of everything updated so far."""
        if self._digest is None:
            self.close()
            self._digest = self._hash.hexdigest()
        return self._digest


class _PipeReader:
    """The data pipe as a binary stream; an empty chunk is the end, a closed pipe a cancel."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._buffer = memoryview(b"")
        self._ended = False

    def read(self, n: int = -1, /) -> bytes:
        if not self._buffer and not self._ended:
            try:
                chunk = self._conn.recv_bytes()
            except EOFError:
                raise LayerCancelledError("the daemon went away during the import") from None
            self._ended = not chunk
            self._buffer = memoryview(chunk)
        if n < 0 or n >= len(self._buffer):
            data, self._buffer = bytes(self._buffer), memoryview(b"")
        else:
            data, self._buffer = bytes(self._buffer[:n]), self._buffer[n:]
        return data

    def close(self) -> None:
        """Nothing to release: the connection belongs to the worker."""


class _HashingReader:
    """Reads ``source`` while hashing and counting the bytes; checks ``cancelled``."""

    def __init__(self, source: object, cancelled: threading.Event) -> None:
        self._read: Callable[[int], bytes] = source.read  # type: ignore[attr-defined]
        self._cancelled = cancelled
        self.hash = _Sha256Thread()
        self.size = 0

    def read(self, n: int = -1, /) -> bytes:
        if self._cancelled.is_set():
            raise LayerCancelledError("cancelled by the caller")
        data = bytes(self._read(n))
        self.hash.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass

    def close(self) -> None:
        self.hash.close()


def _import(
    job: ImportJob, data: Connection, cancelled: threading.Event, results: Connection
) -> tuple[str, int]:
    """The job function (in the worker): import the blob; return (digest, size)."""
    last = 0.0

    def progress(done: int, entries: int) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_INTERVAL:
            last = now
            results.send(("progress", done, entries))

    stream = open_decompressed(_PipeReader(data))
    tar = _HashingReader(stream, cancelled)
    with contextlib.ExitStack() as stack:
        stack.callback(stream.close)
        stack.callback(tar.close)
        import_layer(
            tar,
            job.layer_path,
            job.cim_path,
            list(job.parent_layer_paths),
            list(job.parent_cim_paths),
            cancelled=cancelled,
            progress=progress,
            busy_timeout=job.busy_timeout,
        )
        tar.drain()
        if cancelled.is_set():
            raise LayerCancelledError("cancelled by the caller")
    return "sha256:" + tar.hash.hexdigest(), tar.size


class ImportWorker(Worker):
    """One import in a worker process: ``feed()`` the compressed blob, then ``finish()``;
    ``close()`` always (it stops a worker still running)."""

    what = "import"

    def __init__(
        self, job: ImportJob, cancelled: threading.Event, progress: ProgressFn | None = None
    ) -> None:
        super().__init__(_import, job, cancelled, to_worker=True, progress=progress)  # type: ignore[arg-type]

    def feed(self, chunk: bytes) -> bool:
        """Send a chunk of the blob (non-empty); False once the worker stopped reading."""
        self._drain_results(0)
        if self._final is not None:
            return False
        try:
            self._data.send_bytes(chunk)
        except OSError:  # the worker ended (its outcome is on the results pipe)
            return False
        return True

    def finish(self) -> Imported:
        """End the blob and wait for the outcome. Raises the worker's errdefs error."""
        if self._final is None:
            with contextlib.suppress(OSError):
                self._data.send_bytes(b"")
        digest, size = self.outcome()
        return Imported(str(digest), int(size))  # type: ignore[call-overload]
