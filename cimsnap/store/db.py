"""The SQLite metastore: connections, settings and explicit transactions.

Mirrors containerd's ``storage.MetaStore``: it handles persistence and transactions only;
the queries live in :mod:`cimsnap.store.snapshots` and take the transaction first.

Settings:

* ``journal_mode=WAL`` so readers never block the writer and vice versa;
* ``synchronous=FULL`` so a committed transaction survives an OS crash or power loss
  (cimsnap's database must agree with containerd's own meta.db);
* ``busy_timeout`` for other processes opening the same file; ``foreign_keys=ON``.

One writer: a process-wide lock serialises :meth:`Store.write`, which uses a single
connection and ``BEGIN IMMEDIATE`` (so no lock upgrade can deadlock). Readers each borrow
a connection from a small pool and run a deferred transaction that is always rolled back.
Both context managers commit nothing unless the ``with`` block exits cleanly.

For callers that must never wait (the gRPC server's event loop), :meth:`Store.try_read`
reads on one dedicated connection with ``busy_timeout = 0`` and raises :class:`WouldBlock`
instead of waiting; the caller then retries with :meth:`Store.read` on a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from cimsnap.errdefs import Internal, Unavailable
from cimsnap.store.schema import MIGRATIONS, Migration, migrate

__all__ = ["DEFAULT_BUSY_TIMEOUT_MS", "ReadTx", "Store", "WouldBlock", "WriteTx", "read_only"]

#: How long a connection waits for another process's lock before failing.
DEFAULT_BUSY_TIMEOUT_MS: Final = 10_000

#: Read connections kept open for reuse; more may exist briefly under load.
_READ_POOL_SIZE: Final = 8


class WouldBlock(Exception):
    """A non-blocking read would have had to wait; retry it with a blocking read.

    Raised only by :meth:`Store.try_read` (and the snapshotter's ``*_nowait`` calls built
    on it). It never crosses the gRPC edge: the server falls back to a worker thread.
    """


class ReadTx:
    """A read-only transaction: query functions that only read accept it.

    Valid only inside its ``with store.read()`` (or ``store.write()``) block; using it
    afterwards raises Internal.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn: sqlite3.Connection | None = conn

    @property
    def connection(self) -> sqlite3.Connection:
        """The connection of this transaction (for :mod:`cimsnap.store` queries only)."""
        conn = self._conn
        if conn is None:
            raise Internal("metastore transaction used after it ended")
        return conn

    def _end(self) -> None:
        self._conn = None


class WriteTx(ReadTx):
    """A writable transaction; only functions that modify the store demand this type."""

    __slots__ = ()


class Store:
    """The metastore file ``path``, created and migrated on open.

    Thread-safe. ``close()`` is idempotent; afterwards ``read()``/``write()`` raise
    Unavailable. Raises FailedPrecondition if the file's schema is newer than this code,
    and ``sqlite3.Error`` if the file is not a usable database.
    """

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS,
        migrations: Sequence[Migration] = MIGRATIONS,
    ) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._write_lock = threading.Lock()
        self._pool_lock = threading.Lock()
        self._pool: list[sqlite3.Connection] = []
        self._nowait_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        try:
            self._writer.execute("PRAGMA journal_mode=WAL").fetchone()
            self.schema_version = migrate(self._writer, migrations)
            self._nowait = self._connect(busy_timeout_ms=0)
        except BaseException:
            self._writer.close()
            raise

    def _connect(self, busy_timeout_ms: int | None = None) -> sqlite3.Connection:
        timeout_ms = self._busy_timeout_ms if busy_timeout_ms is None else busy_timeout_ms
        conn = sqlite3.connect(
            self.path,
            timeout=timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_ms)}")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @contextmanager
    def read(self) -> Iterator[ReadTx]:
        """Yield a read transaction; it is always rolled back at the end."""
        conn = self._borrow()
        try:
            with _rolled_back(conn) as tx:
                yield tx
        finally:
            self._give_back(conn)

    @contextmanager
    def try_read(self) -> Iterator[ReadTx]:
        """Yield a read transaction without ever waiting, or raise :class:`WouldBlock`.

        For callers on an event loop. It uses one dedicated connection whose
        ``busy_timeout`` is 0: if another caller is using that connection, or SQLite
        reports the database busy or locked (another process's exclusive lock, WAL
        recovery), it raises WouldBlock at once and the caller should retry with
        :meth:`read` where waiting is allowed. Otherwise it behaves like :meth:`read`
        (always rolled back). Raises Unavailable once the store is closed.
        """
        if not self._nowait_lock.acquire(blocking=False):
            raise WouldBlock("the non-blocking read connection is in use")
        try:
            if self._closed:
                raise Unavailable("metastore is closed: unavailable")
            try:
                with _rolled_back(self._nowait) as tx:
                    yield tx
            except sqlite3.OperationalError as e:
                # The primary code (low byte): BUSY_RECOVERY, BUSY_SNAPSHOT etc. count too.
                if e.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                    raise WouldBlock(str(e)) from e
                raise
        finally:
            self._nowait_lock.release()

    @contextmanager
    def write(self) -> Iterator[WriteTx]:
        """Yield the single write transaction (``BEGIN IMMEDIATE``), serialised by a lock.

        A clean exit commits; an exception rolls back and propagates. Not re-entrant: a
        nested ``write()`` in the same thread deadlocks, so callers never nest. A database
        locked by another process beyond ``busy_timeout`` raises Unavailable.
        """
        with self._write_lock:
            if self._closed:
                raise Unavailable("metastore is closed: unavailable")
            conn = self._writer
            tx = WriteTx(conn)
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as e:
                raise Unavailable(f"metastore {self.path}: {e}: unavailable") from e
            try:
                yield tx
            except BaseException:
                tx._end()
                conn.execute("ROLLBACK")
                raise
            tx._end()
            try:
                conn.execute("COMMIT")
            except sqlite3.Error:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _borrow(self) -> sqlite3.Connection:
        with self._pool_lock:
            if self._closed:
                raise Unavailable("metastore is closed: unavailable")
            if self._pool:
                return self._pool.pop()
        return self._connect()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._pool_lock:
            if not self._closed and len(self._pool) < _READ_POOL_SIZE:
                self._pool.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close every connection (idempotent). Waits for a running write to finish."""
        with self._write_lock, self._pool_lock, self._nowait_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, []
            for conn in pool:
                conn.close()
            self._nowait.close()
            self._writer.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def _rolled_back(conn: sqlite3.Connection) -> Iterator[ReadTx]:
    """Yield a deferred read transaction on ``conn``; always end and roll it back."""
    tx = ReadTx(conn)
    try:
        conn.execute("BEGIN")
        yield tx
    finally:
        tx._end()
        if conn.in_transaction:
            conn.execute("ROLLBACK")


@contextmanager
def read_only(path: Path, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS) -> Iterator[ReadTx]:
    """Yield a read transaction on the metastore file ``path``, opened read-only.

    For inspection tools (``cimsnap fsck``): nothing is created, migrated or written, and
    the file must exist. Raises ``sqlite3.Error`` if it is missing or not a usable
    database.
    """
    uri = f"{Path(path).absolute().as_uri()}?mode=ro"
    conn = sqlite3.connect(
        uri, uri=True, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
    )
    try:
        with _rolled_back(conn) as tx:
            yield tx
    finally:
        conn.close()
