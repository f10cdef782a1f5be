"""Snapshot queries: free functions that take the transaction first (containerd bolt.go).

Every function validates its preconditions inside the caller's transaction and raises one
of :mod:`cimsnap.errdefs`' classes with a containerd-style message (subject first, class
text last: ``snapshot "k": not found``). Nothing here touches files; on any raised error
the caller's transaction is rolled back by ``Store.write()``, so the store is unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Final

from cimsnap.errdefs import AlreadyExists, FailedPrecondition, Internal, InvalidArgument, NotFound
from cimsnap.store.db import ReadTx, WriteTx
from cimsnap.store.model import Info, InfoRow, Kind, SnapshotRef, Usage

__all__ = [
    "check_commit",
    "clear_layer_pending",
    "commit_active",
    "create_snapshot",
    "get_info",
    "get_info_row",
    "get_snapshot",
    "id_kinds",
    "id_map",
    "key_of",
    "layer_pending",
    "pending_layers",
    "remove",
    "update_info",
    "walk_rows",
]

_INFO_COLUMNS: Final = """
    s.id, s.key, s.kind, p.key, s.created_ns, s.updated_ns, s.size_bytes, s.inode_count,
    (SELECT json_group_object(l.name, l.value) FROM labels l WHERE l.snapshot_id = s.id)
"""
_SELECT_INFO_BY_KEY: Final = (
    f"SELECT {_INFO_COLUMNS} FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id "
    "WHERE s.key = ?"
)
_SELECT_ALL_ROWS: Final = (
    "SELECT s.id, s.key, s.kind, p.key, s.created_ns, s.updated_ns "
    "FROM snapshots s LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id"
)
_SELECT_ALL_LABELS: Final = "SELECT snapshot_id, name, value FROM labels ORDER BY snapshot_id"
_KINDS: Final = {int(k): k for k in Kind}
# ``key`` and its ancestors, ``key`` first: (id, kind, key) rows.
_SELECT_CHAIN: Final = """
    WITH RECURSIVE chain(id, kind, key, parent_id, depth) AS (
        SELECT id, kind, key, parent_id, 0 FROM snapshots WHERE key = ?
        UNION ALL
        SELECT s.id, s.kind, s.key, s.parent_id, chain.depth + 1
        FROM snapshots s JOIN chain ON s.id = chain.parent_id
    )
    SELECT id, kind, key FROM chain ORDER BY depth
"""
_SELECT_ROW: Final = "SELECT id, kind, parent_id FROM snapshots WHERE key = ?"
_INSERT_LABEL: Final = "INSERT INTO labels (snapshot_id, name, value) VALUES (?, ?, ?)"

# One row of _SELECT_INFO_BY_KEY: id, key, kind, parent key, created, updated, size,
# inodes, labels as JSON.
_StatRow = tuple[int, str, int, str | None, int, int, int, int, str | None]


def _info_row(row: _StatRow) -> InfoRow:
    _, key, kind, parent, created_ns, updated_ns, _, _, labels_json = row
    labels: dict[str, str] = json.loads(labels_json) if labels_json else {}
    return InfoRow(Kind(kind), key, parent or "", labels, created_ns, updated_ns)


def _put_labels(tx: WriteTx, snapshot_id: int, labels: Mapping[str, str]) -> None:
    # An empty value means "no label" (containerd's writer drops it), so never store one.
    tx.connection.executemany(
        _INSERT_LABEL, [(snapshot_id, k, v) for k, v in labels.items() if v != ""]
    )


def _row(tx: ReadTx, key: str) -> tuple[int, Kind, int | None] | None:
    row = tx.connection.execute(_SELECT_ROW, (key,)).fetchone()
    if row is None:
        return None
    return int(row[0]), Kind(row[1]), row[2]


def get_info(tx: ReadTx, key: str) -> tuple[int, Info, Usage]:
    """Return the ID, Info and recorded Usage of ``key``; NotFound if there is none."""
    row = _stat_row(tx, key)
    return int(row[0]), _info_row(row).to_info(), Usage(size=row[6], inodes=row[7])


def get_info_row(tx: ReadTx, key: str) -> InfoRow:
    """The Info of ``key`` as an :class:`InfoRow` (no datetimes); NotFound if none."""
    return _info_row(_stat_row(tx, key))


def _stat_row(tx: ReadTx, key: str) -> _StatRow:
    row: _StatRow | None = tx.connection.execute(_SELECT_INFO_BY_KEY, (key,)).fetchone()
    if row is None:
        raise NotFound(f'snapshot "{key}": not found')
    return row


def get_snapshot(tx: ReadTx, key: str) -> SnapshotRef:
    """Return ID, kind and parent IDs (immediate parent first) of ``key``; NotFound if none."""
    rows = tx.connection.execute(_SELECT_CHAIN, (key,)).fetchall()
    if not rows:
        raise NotFound(f'snapshot "{key}": not found')
    return SnapshotRef(
        id=int(rows[0][0]), kind=Kind(rows[0][1]), parent_ids=tuple(int(r[0]) for r in rows[1:])
    )


def create_snapshot(
    tx: WriteTx,
    kind: Kind,
    key: str,
    parent: str,
    labels: Mapping[str, str],
    now_ns: int,
) -> SnapshotRef:
    """Create an active or view snapshot ``key`` on ``parent`` (``""`` = none).

    Raises InvalidArgument for another ``kind``, AlreadyExists if ``key`` is taken (by a
    key or a committed name), NotFound if ``parent`` is missing, InvalidArgument if the
    parent is not committed. Checks run in that order, as in containerd.
    """
    if kind not in (Kind.ACTIVE, Kind.VIEW):
        raise InvalidArgument(
            f"snapshot type {kind.name} invalid; only view or active: invalid argument"
        )
    if _row(tx, key) is not None:
        raise AlreadyExists(f"snapshot {key}: already exists")
    parent_ids: tuple[int, ...] = ()
    parent_id: int | None = None
    if parent:
        try:
            chain = get_snapshot(tx, parent)
        except NotFound:
            raise NotFound(f'missing parent "{parent}" bucket: not found') from None
        if chain.kind != Kind.COMMITTED:
            raise InvalidArgument(f'parent "{parent}" is not committed snapshot: invalid argument')
        parent_id = chain.id
        parent_ids = (chain.id, *chain.parent_ids)
    cursor = tx.connection.execute(
        "INSERT INTO snapshots (key, kind, parent_id, created_ns, updated_ns) "
        "VALUES (?, ?, ?, ?, ?)",
        (key, int(kind), parent_id, now_ns, now_ns),
    )
    snapshot_id = cursor.lastrowid
    if snapshot_id is None:  # sqlite sets it after every INSERT; guard the type only
        raise Internal(f'snapshot "{key}": insert returned no row id')
    _put_labels(tx, snapshot_id, labels)
    return SnapshotRef(id=snapshot_id, kind=kind, parent_ids=parent_ids)


def update_info(
    tx: WriteTx,
    key: str,
    labels: Mapping[str, str],
    fieldpaths: Sequence[str],
    now_ns: int,
) -> Info:
    """Update the labels of ``key`` as selected by ``fieldpaths``; set ``updated=now_ns``.

    An empty mask or the path ``labels`` replaces every label with ``labels``;
    ``labels.<k>`` sets ``k`` from ``labels`` or deletes it when absent (or empty). Any
    other path raises InvalidArgument (checked before anything changes); a missing
    ``key`` raises NotFound.
    """
    for path in fieldpaths:
        if path != "labels" and not path.startswith("labels."):
            raise InvalidArgument(
                f'cannot update "{path}" field on snapshot "{key}": invalid argument'
            )
    row = _row(tx, key)
    if row is None:
        raise NotFound(f'snapshot "{key}": not found')
    snapshot_id = row[0]
    conn = tx.connection
    if not fieldpaths or "labels" in fieldpaths:
        conn.execute("DELETE FROM labels WHERE snapshot_id = ?", (snapshot_id,))
        _put_labels(tx, snapshot_id, labels)
    for path in fieldpaths:
        if path == "labels":
            continue
        name = path[len("labels.") :]
        value = labels.get(name, "")
        if value:
            conn.execute(
                "INSERT INTO labels (snapshot_id, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (snapshot_id, name) DO UPDATE SET value = excluded.value",
                (snapshot_id, name, value),
            )
        else:
            conn.execute(
                "DELETE FROM labels WHERE snapshot_id = ? AND name = ?", (snapshot_id, name)
            )
    conn.execute("UPDATE snapshots SET updated_ns = ? WHERE id = ?", (now_ns, snapshot_id))
    return get_info(tx, key)[1]


def check_commit(tx: ReadTx, key: str, name: str, parent: str) -> SnapshotRef:
    """Check that active ``key`` may be committed as ``name``; return its future identity.

    The returned ref has the active's ID and the parent chain the committed snapshot will
    have (``parent`` may rebase a snapshot created without one). Raises, in this order:
    AlreadyExists if ``name`` exists; NotFound if ``key`` is missing; FailedPrecondition
    if ``key`` is a view or committed; InvalidArgument if ``parent`` would change an
    existing parent; NotFound if the new parent is missing; FailedPrecondition if it is not
    committed (containerd bolt.go ``CommitActive``).
    """
    if _row(tx, name) is not None:
        raise AlreadyExists(f"committed snapshot {name}: already exists")
    chain = tx.connection.execute(_SELECT_CHAIN, (key,)).fetchall()
    if not chain:
        raise NotFound(f'failed to get active snapshot "{key}": not found')
    snapshot_id, kind = int(chain[0][0]), Kind(chain[0][1])
    if kind != Kind.ACTIVE:
        raise FailedPrecondition(f'snapshot "{key}" is not active: failed precondition')
    parent_ids = tuple(int(r[0]) for r in chain[1:])
    if parent and (not parent_ids or chain[1][2] != parent):
        if parent_ids:
            raise InvalidArgument(
                f'cannot change parent of active snapshot "{key}" on commit: invalid argument'
            )
        try:
            new_parent = get_snapshot(tx, parent)
        except NotFound:
            raise NotFound(f'missing parent "{parent}" of snapshot "{key}": not found') from None
        if new_parent.kind != Kind.COMMITTED:
            raise FailedPrecondition(f'parent "{parent}" is not committed: failed precondition')
        parent_ids = (new_parent.id, *new_parent.parent_ids)
    return SnapshotRef(id=snapshot_id, kind=kind, parent_ids=parent_ids)


def commit_active(
    tx: WriteTx,
    key: str,
    name: str,
    usage: Usage,
    labels: Mapping[str, str],
    parent: str,
    now_ns: int,
    *,
    layer_pending: bool = False,
) -> int:
    """Turn active ``key`` into committed ``name`` keeping its ID; return the ID.

    Labels are replaced (not inherited), ``created == updated == now_ns``, ``usage`` is
    recorded. ``layer_pending`` marks the layer as an empty one whose CIM is still to be
    built (:func:`clear_layer_pending` once it is). Preconditions and errors are those of
    :func:`check_commit`.
    """
    ref = check_commit(tx, key, name, parent)
    conn = tx.connection
    conn.execute(
        "UPDATE snapshots SET key = ?, kind = ?, parent_id = ?, created_ns = ?, updated_ns = ?, "
        "size_bytes = ?, inode_count = ?, layer_pending = ? WHERE id = ?",
        (
            name,
            int(Kind.COMMITTED),
            ref.parent_ids[0] if ref.parent_ids else None,
            now_ns,
            now_ns,
            usage.size,
            usage.inodes,
            int(layer_pending),
            ref.id,
        ),
    )
    conn.execute("DELETE FROM labels WHERE snapshot_id = ?", (ref.id,))
    _put_labels(tx, ref.id, labels)
    return ref.id


def remove(tx: WriteTx, key: str) -> tuple[int, Kind]:
    """Delete ``key`` (any kind) and its labels; return its ID and kind.

    Raises NotFound if missing, FailedPrecondition (``cannot remove snapshot with child``)
    if any snapshot names it as parent.
    """
    row = _row(tx, key)
    if row is None:
        raise NotFound(f"snapshot {key}: not found")
    snapshot_id, kind, _ = row
    conn = tx.connection
    child = conn.execute(
        "SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (snapshot_id,)
    ).fetchone()
    if child is not None:
        raise FailedPrecondition(
            f'snapshot "{key}": cannot remove snapshot with child: failed precondition'
        )
    conn.execute("DELETE FROM snapshots WHERE id = ?", (snapshot_id,))
    return snapshot_id, kind


def walk_rows(tx: ReadTx) -> list[InfoRow]:
    """Return every snapshot as an :class:`InfoRow`, materialised, in ID order.

    Two queries (snapshots with their parent's key, then all labels in ID order) joined
    here: cheaper than a per-row label subquery for large lists.
    """
    conn = tx.connection
    labels: dict[int, dict[str, str]] = {}
    for snapshot_id, name, value in conn.execute(_SELECT_ALL_LABELS):
        entry = labels.get(snapshot_id)
        if entry is None:
            labels[snapshot_id] = entry = {}
        entry[name] = value
    return [
        InfoRow(_KINDS[kind], key, parent or "", labels.get(snapshot_id) or {}, created, updated)
        for snapshot_id, key, kind, parent, created, updated in conn.execute(_SELECT_ALL_ROWS)
    ]


def id_map(tx: ReadTx) -> dict[int, str]:
    """Return every snapshot ID mapped to its key (containerd ``storage.IDMap``)."""
    return {int(i): k for i, k in tx.connection.execute("SELECT id, key FROM snapshots")}


def id_kinds(tx: ReadTx) -> dict[int, Kind]:
    """Return every snapshot ID mapped to its kind."""
    return {int(i): Kind(k) for i, k in tx.connection.execute("SELECT id, kind FROM snapshots")}


def key_of(tx: ReadTx, snapshot_id: int) -> str:
    """Return the key (or name) of snapshot ``snapshot_id``; NotFound if no such ID."""
    row = tx.connection.execute("SELECT key FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
    if row is None:
        raise NotFound(f"snapshot id {snapshot_id}: not found")
    return str(row[0])


def pending_layers(tx: ReadTx) -> dict[int, int | None]:
    """Return every committed snapshot whose layer is pending, mapped to its parent's ID.

    A metastore older than schema version 2 (read by ``cimsnap fsck`` without migrating)
    has none.
    """
    conn = tx.connection
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) < 2:
        return {}
    rows = conn.execute(
        "SELECT id, parent_id FROM snapshots WHERE layer_pending = 1 AND kind = ?",
        (int(Kind.COMMITTED),),
    )
    return {int(i): None if p is None else int(p) for i, p in rows}


def layer_pending(tx: ReadTx, snapshot_id: int) -> bool | None:
    """True if the layer of ``snapshot_id`` is pending, False if not, None if no such row."""
    row = tx.connection.execute(
        "SELECT layer_pending FROM snapshots WHERE id = ?", (snapshot_id,)
    ).fetchone()
    return None if row is None else bool(row[0])


def clear_layer_pending(tx: WriteTx, snapshot_id: int) -> bool:
    """Record that the layer of ``snapshot_id`` now exists; False if the row is gone."""
    cursor = tx.connection.execute(
        "UPDATE snapshots SET layer_pending = 0 WHERE id = ?", (snapshot_id,)
    )
    return cursor.rowcount == 1
