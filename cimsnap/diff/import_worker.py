"""Layer imports run in a worker process, so a CPU-bound import never holds the daemon's GIL.

Decompressing, hashing and importing a layer is pure-Python work that holds the GIL most
of the time. Run in the daemon, it made every other answer wait for its turn: with four
Applies running, List p99 reached 0.4 s. :class:`ImportWorker` runs one import in a child
process (``forkserver`` where the platform has it, else ``spawn``; the server never
``fork``\\ s itself, it has gRPC threads), and the daemon only relays bytes.

The protocol, over three one-way pipes:

* **data** (daemon -> worker): the compressed blob in chunks; an empty chunk ends it.
  The worker detects the compression by magic bytes, imports the tar with
  :func:`~cimsnap.wclayer.importer.import_layer`, drains what follows the tar's end into
  the hash (as containerd's differ does), then reports.
* **cancel** (daemon -> worker): any message, or the pipe closing (the daemon died),
  sets the worker's ``cancelled`` event; the import stops at its next entry, or while it
  waits for the CIM directory, and commits nothing.
* **results** (worker -> daemon): ``("progress", bytes, entries)`` at most every
  ``PROGRESS_INTERVAL`` seconds, then exactly one of ``("done", digest, size)``,
  ``("failed", error)`` with an ``errdefs`` error (a layer error already translated, its
  message naming entry and offset) or ``("crashed", summary, traceback)`` for anything
  else.

A worker that dies without a final message (killed, out of memory) is reported as
Internal; what it may have left is the differ's to undo (a committed CIM and new files
of the layer directory) or invisible temporary files the snapshotter's Cleanup reclaims.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import multiprocessing
import multiprocessing.connection
import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Final

from cimsnap import errdefs
from cimsnap.wclayer.compression import open_decompressed
from cimsnap.wclayer.errors import (
    LayerBusyError,
    LayerCancelledError,
    LayerError,
    LayerExistsError,
    LayerFormatError,
    LayerParentError,
)
from cimsnap.wclayer.importer import import_layer

__all__ = [
    "PROGRESS_INTERVAL",
    "WORKER_OOM_SCORE_ADJ",
    "ImportJob",
    "ImportWorker",
    "Imported",
    "layer_error",
]

log = logging.getLogger(__name__)

#: The worker's OOM score adjustment (-1000..1000; see ``_prefer_for_oom_kill``).
WORKER_OOM_SCORE_ADJ: Final = 500
#: Seconds between two progress messages of a worker.
PROGRESS_INTERVAL: Final = 0.25
#: How often the daemon side looks at the caller's cancel event (seconds).
_CANCEL_POLL: Final = 0.05
#: How long ``close`` waits for a worker told to stop before killing it (seconds).
_EXIT_GRACE: Final = 5.0
_CHUNK: Final = 1024 * 1024

ProgressFn = Callable[[int, int], None]


def layer_error(subject: str, e: LayerError) -> errdefs.CimsnapError:
    """Translate a layer error into its errdefs class (the wclayer.errors contract)."""
    cls: type[errdefs.CimsnapError]
    if isinstance(e, LayerFormatError):
        cls = errdefs.InvalidArgument
    elif isinstance(e, LayerParentError):
        cls = errdefs.FailedPrecondition
    elif isinstance(e, LayerBusyError):
        cls = errdefs.Unavailable
    elif isinstance(e, LayerExistsError):
        cls = errdefs.AlreadyExists
    elif isinstance(e, LayerCancelledError):
        cls = errdefs.Canceled
    else:
        cls = errdefs.Internal
    return cls(f"{subject}: {e}")


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

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
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


def _watch_cancel(conn: multiprocessing.connection.Connection, cancelled: threading.Event) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv_bytes()
    cancelled.set()


def _import(
    job: ImportJob,
    data: multiprocessing.connection.Connection,
    cancelled: threading.Event,
    results: multiprocessing.connection.Connection,
) -> Imported:
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
    return Imported("sha256:" + tar.hash.hexdigest(), tar.size)


def _prefer_for_oom_kill() -> None:
    """[choice] Raise this process's OOM score adjustment to ``WORKER_OOM_SCORE_ADJ`` (Linux),
    so that under memory pressure the kernel ends an import (reported as Internal, nothing
    committed) before the daemon, which the systemd unit protects with -999. Raising one's
    own adjustment needs no privilege; where it cannot be set, nothing changes."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(WORKER_OOM_SCORE_ADJ))


def _worker_main(
    job: ImportJob,
    data: multiprocessing.connection.Connection,
    cancel: multiprocessing.connection.Connection,
    results: multiprocessing.connection.Connection,
) -> None:
    """The worker process: import, then send exactly one final message."""
    _prefer_for_oom_kill()
    cancelled = threading.Event()
    threading.Thread(
        target=_watch_cancel, args=(cancel, cancelled), name="cimsnap-cancel", daemon=True
    ).start()
    message: tuple[object, ...]
    try:
        imported = _import(job, data, cancelled, results)
        message = ("done", imported.digest, imported.size)
    except LayerError as e:
        message = ("failed", layer_error(job.subject, e))
    except errdefs.CimsnapError as e:
        message = ("failed", e)
    except BaseException as e:  # a bug or an OS error: the daemon logs it as INTERNAL
        message = ("crashed", f"{type(e).__name__}: {e}", traceback.format_exc())
    with contextlib.suppress(OSError):
        results.send(message)


# -- the daemon's side ------------------------------------------------------------------

_context_lock = threading.Lock()
_context: BaseContext | None = None


def _worker_context() -> BaseContext:
    """``forkserver`` (preloaded with this module) where available, else ``spawn``."""
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                forkserver = multiprocessing.get_context("forkserver")
                forkserver.set_forkserver_preload([__name__])
                _context = forkserver
            else:
                _context = multiprocessing.get_context("spawn")
        return _context


class ImportWorker:
    """One import in a worker process (see the module docstring).

    ``feed()`` the compressed blob, then ``finish()``; ``close()`` always (it stops a worker
    still running). ``cancelled`` (the caller's event) is relayed to the worker while the
    worker is open. ``progress(bytes, entries)`` is called from ``feed``/``finish``.
    """

    def __init__(
        self,
        job: ImportJob,
        cancelled: threading.Event,
        progress: ProgressFn | None = None,
    ) -> None:
        self._job = job
        self._progress = progress
        self._cancelled = cancelled
        context = _worker_context()
        data_r, self._data = context.Pipe(duplex=False)
        cancel_r, self._cancel = context.Pipe(duplex=False)
        self._results, results_w = context.Pipe(duplex=False)
        self._process = context.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(job, data_r, cancel_r, results_w),
            name="cimsnap-import",
            daemon=True,
        )
        try:
            self._process.start()
        finally:
            for end in (data_r, cancel_r, results_w):
                end.close()
        self._final: tuple[object, ...] | None = None
        self._exitcode: int | None = None
        self._closed = threading.Event()
        self._relay = threading.Thread(
            target=self._relay_cancel, name="cimsnap-import-cancel", daemon=True
        )
        self._relay.start()

    @property
    def pid(self) -> int:
        """The worker's process ID (for logs and tests)."""
        pid: int | None = self._process.pid
        assert pid is not None
        return pid

    @property
    def exitcode(self) -> int | None:
        """The worker's exit code once it ended (negative: killed by that signal)."""
        return self._exitcode if self._exitcode is not None else self._process.exitcode

    def _relay_cancel(self) -> None:
        while not self._closed.is_set():
            if self._cancelled.wait(_CANCEL_POLL):
                self.cancel()
                return

    def cancel(self) -> None:
        """Tell the worker to stop (idempotent; harmless once it finished)."""
        with contextlib.suppress(OSError, ValueError):
            self._cancel.send_bytes(b"x")

    def _drain_results(self, timeout: float | None) -> None:
        """Handle the worker's messages; wait up to ``timeout`` for the first one."""
        while self._final is None and self._results.poll(timeout):
            timeout = 0
            try:
                message = self._results.recv()
            except EOFError:
                self._final = ("exited",)
                return
            if message[0] == "progress":
                if self._progress is not None:
                    self._progress(message[1], message[2])
            else:
                self._final = message

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
        while self._final is None:
            self._drain_results(None)
        final = self._final
        if final[0] == "done":
            return Imported(str(final[1]), int(final[2]))  # type: ignore[call-overload]
        if final[0] == "failed":
            error = final[1]
            assert isinstance(error, errdefs.CimsnapError)
            raise error
        if final[0] == "crashed":
            log.error("%s: the import worker failed:\n%s", self._job.subject, final[2])
            raise errdefs.Internal(f"{self._job.subject}: import failed: {final[1]}")
        self._process.join(_EXIT_GRACE)
        raise errdefs.Internal(
            f"{self._job.subject}: the import worker exited (code {self._process.exitcode}) "
            "before finishing; nothing was committed"
        )

    def close(self) -> None:
        """Stop the cancel relay, stop the worker if it still runs, release the pipes."""
        self._closed.set()
        if self._process.is_alive():
            self.cancel()
            self._data.close()  # a worker waiting for data sees the end at once
            self._process.join(_EXIT_GRACE)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._relay.join()
        for conn in (self._data, self._cancel, self._results):
            conn.close()
        self._exitcode = self._process.exitcode
        self._process.close()
