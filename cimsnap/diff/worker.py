"""CPU-heavy layer work (import, export) in a worker process, so it never holds the daemon's GIL.

Decompressing, hashing and importing a layer, or exporting and compressing one, is
pure-Python work that holds the GIL most of the time. Run in the daemon, it made every
other answer wait for its turn: with four Applies running, List p99 reached 0.4 s. A
:class:`Worker` runs one such job in a child process (``forkserver`` where the platform
has it, preloaded with the job modules; else ``spawn``: the server never ``fork``\\ s
itself, it has gRPC threads), and the daemon only moves bytes.

The protocol, over three one-way pipes:

* **data**: the job's byte stream, in chunks; an empty chunk ends it. Towards the worker
  for an import (the compressed blob), from it for an export (the compressed tar).
* **cancel** (daemon -> worker): any message, or the pipe closing (the daemon died), sets
  the worker's ``cancelled`` event; the job stops at its next entry, or while it waits for
  the CIM directory, and commits nothing.
* **results** (worker -> daemon): ``("progress", a, b)`` messages, then exactly one of
  ``("done", *values)``, ``("failed", error)`` with an ``errdefs`` error (a layer error
  already translated, its message naming entry and offset) or ``("crashed", summary,
  traceback)`` for anything else.

A worker that dies without a final message (killed, out of memory) is reported as
Internal; what an import may have left is the differ's to undo, or invisible temporary
files the snapshotter's Cleanup reclaims.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import threading
import traceback
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Final, Protocol

from cimsnap import errdefs
from cimsnap.wclayer.errors import (
    LayerBusyError,
    LayerCancelledError,
    LayerError,
    LayerExistsError,
    LayerFormatError,
    LayerParentError,
)

__all__ = [
    "WORKER_MODULES",
    "WORKER_NICE",
    "WORKER_OOM_SCORE_ADJ",
    "Connection",
    "Job",
    "Worker",
    "layer_error",
]

log = logging.getLogger(__name__)

#: The modules whose job functions workers run (preloaded by the fork server).
WORKER_MODULES: Final = ("cimsnap.diff.import_worker", "cimsnap.diff.export_worker")
#: The worker's OOM score adjustment (-1000..1000; see ``_prefer_for_oom_kill``).
WORKER_OOM_SCORE_ADJ: Final = 500
#: How much lower a worker's CPU priority is than the daemon's (``nice`` steps).
WORKER_NICE: Final = 10
#: How often the daemon side looks at the caller's cancel event (seconds).
_CANCEL_POLL: Final = 0.05
#: How long ``close`` waits for a worker told to stop before killing it (seconds).
_EXIT_GRACE: Final = 5.0

Connection = multiprocessing.connection.Connection


class Job(Protocol):
    """A worker's job: picklable; ``subject`` prefixes its error messages."""

    @property
    def subject(self) -> str: ...


#: A job function, run in the worker: (job, data, cancelled, results) -> the done values.
JobFn = Callable[[Job, Connection, threading.Event, Connection], tuple[object, ...]]


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


# -- the worker's side ------------------------------------------------------------------


def _watch_cancel(conn: Connection, cancelled: threading.Event) -> None:
    with contextlib.suppress(EOFError, OSError):
        conn.recv_bytes()
    cancelled.set()


def _yield_cpu() -> None:
    """[choice] Lower this process's CPU priority by ``WORKER_NICE``: an import or export
    is bulk work, and on a busy host the daemon's own answers (containerd's Stat, List,
    Commit, its garbage collector's Remove) should win the CPU; on an idle host it costs
    nothing. Where priorities cannot be changed, nothing changes."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(WORKER_NICE)


def _prefer_for_oom_kill() -> None:
    """[choice] Raise this process's OOM score adjustment to ``WORKER_OOM_SCORE_ADJ`` (Linux),
    so that under memory pressure the kernel ends a worker (reported as Internal, nothing
    committed) before the daemon, which the systemd unit protects with -999. Raising one's
    own adjustment needs no privilege; where it cannot be set, nothing changes."""
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(WORKER_OOM_SCORE_ADJ))


def _worker_main(
    run: JobFn, job: Job, data: Connection, cancel: Connection, results: Connection
) -> None:
    """The worker process: run the job, then send exactly one final message."""
    _prefer_for_oom_kill()
    _yield_cpu()
    cancelled = threading.Event()
    threading.Thread(
        target=_watch_cancel, args=(cancel, cancelled), name="cimsnap-cancel", daemon=True
    ).start()
    message: tuple[object, ...]
    try:
        message = ("done", *run(job, data, cancelled, results))
    except LayerError as e:
        message = ("failed", layer_error(job.subject, e))
    except errdefs.CimsnapError as e:
        message = ("failed", e)
    except BaseException as e:  # a bug or an OS error: the daemon logs it as INTERNAL
        message = ("crashed", f"{type(e).__name__}: {e}", traceback.format_exc())
    data.close()  # the daemon reading an export sees the end even after a failure
    with contextlib.suppress(OSError):
        results.send(message)


# -- the daemon's side ------------------------------------------------------------------

_context_lock = threading.Lock()
_context: BaseContext | None = None


def _worker_context() -> BaseContext:
    """``forkserver`` (preloaded with ``WORKER_MODULES``) where available, else ``spawn``."""
    global _context
    with _context_lock:
        if _context is None:
            if "forkserver" in multiprocessing.get_all_start_methods():
                forkserver = multiprocessing.get_context("forkserver")
                forkserver.set_forkserver_preload(list(WORKER_MODULES))
                _context = forkserver
            else:
                _context = multiprocessing.get_context("spawn")
        return _context


class Worker:
    """One job in a worker process (see the module docstring); subclasses add the data flow.

    ``to_worker`` says which way the data pipe runs; ``self._data`` is the daemon's end.
    ``cancelled`` (the caller's event) is relayed to the worker while it is open;
    ``progress(a, b)`` is called for the worker's progress messages. ``close()`` always.
    """

    #: What the job is called in messages ("import", "export").
    what: str = "job"

    def __init__(
        self,
        run: JobFn,
        job: Job,
        cancelled: threading.Event,
        *,
        to_worker: bool,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        self._job = job
        self._progress = progress
        self._cancelled = cancelled
        context = _worker_context()
        reader, writer = context.Pipe(duplex=False)
        worker_data, self._data = (reader, writer) if to_worker else (writer, reader)
        cancel_r, self._cancel = context.Pipe(duplex=False)
        self._results, results_w = context.Pipe(duplex=False)
        self._process = context.Process(  # type: ignore[attr-defined]
            target=_worker_main,
            args=(run, job, worker_data, cancel_r, results_w),
            name=f"cimsnap-{self.what}",
            daemon=True,
        )
        try:
            self._process.start()
        finally:
            for end in (worker_data, cancel_r, results_w):
                end.close()
        self._final: tuple[object, ...] | None = None
        self._exitcode: int | None = None
        self._closed = threading.Event()
        self._relay = threading.Thread(
            target=self._relay_cancel, name=f"cimsnap-{self.what}-cancel", daemon=True
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

    def outcome(self) -> tuple[object, ...]:
        """Wait for the final message; return the ``done`` values or raise the failure
        (the worker's errdefs error; Internal for a crash or a worker that died)."""
        while self._final is None:
            self._drain_results(None)
        final = self._final
        subject = self._job.subject
        if final[0] == "done":
            return final[1:]
        if final[0] == "failed":
            error = final[1]
            assert isinstance(error, errdefs.CimsnapError)
            raise error
        if final[0] == "crashed":
            log.error("%s: the %s worker failed:\n%s", subject, self.what, final[2])
            raise errdefs.Internal(f"{subject}: {self.what} failed: {final[1]}")
        self._process.join(_EXIT_GRACE)
        raise errdefs.Internal(
            f"{subject}: the {self.what} worker exited (code {self._process.exitcode}) "
            "before finishing; nothing was committed"
        )

    def raise_if_failed(self) -> None:
        """Raise the worker's failure if its final message already says it failed (no wait).

        For a caller whose own stream broke: when the worker's failure broke it, that
        failure explains more than the stream's error."""
        self._drain_results(0)
        if self._final is not None and self._final[0] != "done":
            self.outcome()

    def close(self) -> None:
        """Stop the cancel relay, stop the worker if it still runs, release the pipes."""
        self._closed.set()
        if self._process.is_alive():
            self.cancel()
            self._data.close()  # a worker blocked on the data pipe sees the end at once
            self._process.join(_EXIT_GRACE)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
        self._relay.join()
        for conn in (self._data, self._cancel, self._results):
            conn.close()
        self._exitcode = self._process.exitcode
        self._process.close()
