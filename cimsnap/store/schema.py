"""The metastore schema as an ordered list of migrations, versioned by ``PRAGMA user_version``.

``user_version`` holds the number of migrations applied. Opening a store applies the pending
ones in order inside one ``BEGIN IMMEDIATE`` transaction, so a crash or a failing migration
leaves the database at its previous version. A database whose version is newer than this
code knows is refused (``FailedPrecondition``) rather than guessed at.

Append new migrations at the end; never edit or reorder a released one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from cimsnap.errdefs import FailedPrecondition

__all__ = ["MIGRATIONS", "Migration", "migrate", "schema_version"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: the SQL statements that take version ``n - 1`` to ``n``."""

    description: str
    statements: tuple[str, ...]


#: Schema history. Modelled on containerd's bolt metastore (core/snapshots/storage/bolt.go):
#: a numeric ID from a sequence (``AUTOINCREMENT``: a committed ID is never handed out
#: again, even after the row is deleted), a unique key shared by keys and committed names,
#: the kind, a parent link, nanosecond timestamps, recorded usage, labels in their own table.
#: Version 2 adds ``layer_pending`` (1: a committed empty layer whose CIM, a fork of its
#: parent's, is still to be built; see :mod:`cimsnap.snapshots.pending`).
MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "snapshots and labels",
        (
            """
            CREATE TABLE snapshots (
                id          INTEGER PRIMARY KEY AUTOINCREMENT,
                key         TEXT    NOT NULL UNIQUE,
                kind        INTEGER NOT NULL CHECK (kind IN (1, 2, 3)),
                parent_id   INTEGER REFERENCES snapshots (id) ON DELETE RESTRICT,
                created_ns  INTEGER NOT NULL,
                updated_ns  INTEGER NOT NULL,
                size_bytes  INTEGER NOT NULL DEFAULT 0,
                inode_count INTEGER NOT NULL DEFAULT 0
            ) STRICT
            """,
            "CREATE INDEX snapshots_by_parent ON snapshots (parent_id)",
            """
            CREATE TABLE labels (
                snapshot_id INTEGER NOT NULL REFERENCES snapshots (id) ON DELETE CASCADE,
                name        TEXT    NOT NULL,
                value       TEXT    NOT NULL CHECK (value <> ''),
                PRIMARY KEY (snapshot_id, name)
            ) STRICT, WITHOUT ROWID
            """,
        ),
    ),
    Migration(
        "layer_pending: committed empty layers whose CIM is built after the Commit",
        (
            "ALTER TABLE snapshots ADD COLUMN layer_pending INTEGER NOT NULL DEFAULT 0 "
            "CHECK (layer_pending IN (0, 1))",
            "CREATE INDEX snapshots_layer_pending ON snapshots (id) WHERE layer_pending = 1",
        ),
    ),
)


def schema_version(conn: sqlite3.Connection) -> int:
    """Return ``PRAGMA user_version``: the number of migrations applied."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the pending ``migrations`` in one immediate transaction; return the new version.

    ``conn`` must be in autocommit mode (``isolation_level=None``) with no open transaction.
    Raises FailedPrecondition if the database is newer than ``migrations``; any
    ``sqlite3.Error`` from a statement rolls everything back and propagates, leaving the
    version unchanged.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = schema_version(conn)
        if current > len(migrations):
            raise FailedPrecondition(
                f"metadata schema version {current} is newer than this cimsnap supports "
                f"({len(migrations)}): failed precondition"
            )
        for migration in migrations[current:]:
            for statement in migration.statements:
                conn.execute(statement)
        # PRAGMA takes no parameters; the value is an int we computed.
        conn.execute(f"PRAGMA user_version = {len(migrations)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(migrations)
