"""Transactions, settings, migrations and crash consistency of the metastore."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from cimsnap.errdefs import FailedPrecondition, Internal, NotFound, Unavailable
from cimsnap.store import (
    MIGRATIONS,
    Kind,
    Migration,
    ReadTx,
    Store,
    WouldBlock,
    WriteTx,
    create_snapshot,
    get_info,
    schema_version,
    walk_rows,
)
from tests.unit.store.conftest import T0


def test_settings(store: Store) -> None:
    with store.read() as tx:
        conn = tx.connection
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone() == (1,)
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 1000


def test_clean_exit_commits(store: Store) -> None:
    with store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "a", "", {"l": "v"}, T0)
    with store.read() as tx:
        assert get_info(tx, "a")[1].labels == {"l": "v"}


def test_exception_rolls_back(store: Store) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "a", "", {"l": "v"}, T0)
        raise Boom
    with store.read() as rtx:
        assert walk_rows(rtx) == []
        assert rtx.connection.execute("SELECT COUNT(*) FROM labels").fetchone() == (0,)


def test_read_transaction_always_rolls_back(store: Store) -> None:
    with store.read() as tx:
        # Nothing stops raw SQL on a read connection; the rollback still discards it.
        tx.connection.execute(
            "INSERT INTO snapshots (key, kind, created_ns, updated_ns) VALUES ('x', 2, 0, 0)"
        )
    with store.read() as tx:
        assert walk_rows(tx) == []


def test_transaction_types_are_distinct(store: Store) -> None:
    with store.read() as tx:
        assert type(tx) is ReadTx
        assert not isinstance(tx, WriteTx)
    with store.write() as wtx:
        assert isinstance(wtx, WriteTx)
        assert isinstance(wtx, ReadTx)  # reads are allowed inside a write


def test_transaction_unusable_after_exit(store: Store) -> None:
    with store.read() as tx:
        pass
    with pytest.raises(Internal):
        get_info(tx, "a")
    with store.write() as wtx:
        pass
    with pytest.raises(Internal):
        create_snapshot(wtx, Kind.ACTIVE, "a", "", {}, T0)


def test_readers_see_a_consistent_snapshot_during_a_write(store: Store) -> None:
    with store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "before", "", {}, T0)
    inside = threading.Event()
    release = threading.Event()

    def writer() -> None:
        with store.write() as tx:
            create_snapshot(tx, Kind.ACTIVE, "during", "", {}, T0)
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=writer)
    thread.start()
    assert inside.wait(5)
    with store.read() as rtx:  # WAL: readers never wait for the writer
        names = [i.name for i in walk_rows(rtx)]
    release.set()
    thread.join()
    assert names == ["before"]
    with store.read() as rtx:
        assert [i.name for i in walk_rows(rtx)] == ["before", "during"]


def test_close_is_idempotent_and_final(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    store.close()
    store.close()
    with pytest.raises(Unavailable), store.read():
        pass
    with pytest.raises(Unavailable), store.write():
        pass


def test_fresh_database_is_at_latest_version(store: Store) -> None:
    with store.read() as tx:
        assert schema_version(tx.connection) == len(MIGRATIONS)
    assert store.schema_version == len(MIGRATIONS)


def test_reopen_keeps_data_and_version(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db") as store, store.write() as tx:
        create_snapshot(tx, Kind.VIEW, "v", "", {"a": "b"}, T0)
    with Store(tmp_path / "m.db") as store:
        with store.read() as tx:
            assert get_info(tx, "v")[1].labels == {"a": "b"}
        assert store.schema_version == len(MIGRATIONS)


def test_pending_migrations_apply_in_order(tmp_path: Path) -> None:
    extra = Migration("add notes", ("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)",))
    more = Migration("fill notes", ("INSERT INTO notes (text) VALUES ('hello')",))
    with Store(tmp_path / "m.db") as store, store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "a", "", {}, T0)
    with Store(tmp_path / "m.db", migrations=(*MIGRATIONS, extra, more)) as store:
        assert store.schema_version == len(MIGRATIONS) + 2
        with store.read() as tx:
            assert tx.connection.execute("SELECT text FROM notes").fetchall() == [("hello",)]
            assert get_info(tx, "a")[1].kind == Kind.ACTIVE


def test_failing_migration_leaves_version_unchanged(tmp_path: Path) -> None:
    Store(tmp_path / "m.db").close()
    good = Migration("table", ("CREATE TABLE t (x)",))
    bad = Migration("broken", ("INSERT INTO no_such_table VALUES (1)",))
    with pytest.raises(sqlite3.OperationalError):
        Store(tmp_path / "m.db", migrations=(*MIGRATIONS, good, bad))
    conn = sqlite3.connect(tmp_path / "m.db")
    try:
        assert schema_version(conn) == len(MIGRATIONS)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert "t" not in tables
    finally:
        conn.close()


def test_newer_database_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "m.db").close()
    conn = sqlite3.connect(tmp_path / "m.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(FailedPrecondition):
        Store(tmp_path / "m.db")


_CHILD = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from cimsnap.store import Kind, Store, create_snapshot
    store = Store(Path(sys.argv[1]))
    with store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "committed-before-kill", "", {"a": "b"}, 1)
    with store.write() as tx:
        for i in range(500):
            create_snapshot(tx, Kind.ACTIVE, f"uncommitted-{i}", "", {"x": "y"}, 2)
        sys.stdout.write("inside\\n")
        sys.stdout.flush()
        sys.stdin.readline()  # killed here, mid-transaction
    """
)


def test_kill_mid_transaction_keeps_committed_and_drops_the_rest(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline() == "inside\n"
    child.kill()
    child.wait()
    assert child.stdin is not None
    child.stdin.close()
    child.stdout.close()
    with Store(db) as store:
        with store.read() as tx:
            assert [i.name for i in walk_rows(tx)] == ["committed-before-kill"]
            assert tx.connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            with pytest.raises(NotFound):
                get_info(tx, "uncommitted-0")
        with store.write() as tx:
            ref = create_snapshot(tx, Kind.ACTIVE, "after", "", {}, 3)
        assert ref.id == 2  # the rolled-back IDs were never visible


def test_try_read_reads_like_read(store: Store) -> None:
    with store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "k", "", {}, T0)
    with store.try_read() as tx:
        assert get_info(tx, "k")[1].name == "k"
        assert tx.connection.execute("PRAGMA busy_timeout").fetchone() == (0,)
    with store.try_read() as tx, pytest.raises(NotFound):
        get_info(tx, "missing")


def test_try_read_never_waits_for_its_connection(store: Store) -> None:
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with store.try_read():
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(10)
        with pytest.raises(WouldBlock), store.try_read():
            pass
        with store.read() as tx:  # the blocking path is unaffected
            walk_rows(tx)
    finally:
        release.set()
        holder.join()
    with store.try_read():  # free again
        pass


def _sqlite_error(code: int, message: str) -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code
    return error


@pytest.mark.parametrize(
    "code", [sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_BUSY_RECOVERY]
)
def test_try_read_turns_busy_into_would_block(store: Store, code: int) -> None:
    # A WAL database cannot be locked against readers while the store has it open, so the
    # BUSY that SQLite would raise (with busy_timeout 0) is raised here by hand.
    with pytest.raises(WouldBlock), store.try_read():
        raise _sqlite_error(code, "database is locked")
    with store.try_read() as tx, pytest.raises(NotFound):  # the connection is usable again
        get_info(tx, "k")


def test_try_read_passes_other_errors_through(store: Store) -> None:
    with pytest.raises(sqlite3.OperationalError), store.try_read():
        raise _sqlite_error(sqlite3.SQLITE_IOERR, "disk I/O error")


def test_try_read_after_close_is_unavailable(tmp_path: Path) -> None:
    store = Store(tmp_path / "m.db")
    store.close()
    with pytest.raises(Unavailable), store.try_read():
        pass
