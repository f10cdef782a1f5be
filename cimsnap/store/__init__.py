"""The SQLite metastore for snapshots: explicit transactions, versioned schema, queries.

Usage::

    with store.write() as tx:
        ref = create_snapshot(tx, Kind.ACTIVE, key, parent, labels, now_ns)

Only a clean exit commits; a read transaction always rolls back.
"""

from cimsnap.store.db import (
    DEFAULT_BUSY_TIMEOUT_MS,
    ReadTx,
    Store,
    WouldBlock,
    WriteTx,
    read_only,
)
from cimsnap.store.model import (
    Info,
    InfoRow,
    Kind,
    SnapshotRef,
    Usage,
    datetime_from_ns,
    ns_from_datetime,
)
from cimsnap.store.schema import MIGRATIONS, Migration, migrate, schema_version
from cimsnap.store.snapshots import (
    check_commit,
    clear_layer_pending,
    commit_active,
    create_snapshot,
    get_info,
    get_info_row,
    get_snapshot,
    id_kinds,
    id_map,
    key_of,
    layer_pending,
    pending_layers,
    remove,
    update_info,
    walk_rows,
)

__all__ = [
    "DEFAULT_BUSY_TIMEOUT_MS",
    "MIGRATIONS",
    "Info",
    "InfoRow",
    "Kind",
    "Migration",
    "ReadTx",
    "SnapshotRef",
    "Store",
    "Usage",
    "WouldBlock",
    "WriteTx",
    "check_commit",
    "clear_layer_pending",
    "commit_active",
    "create_snapshot",
    "datetime_from_ns",
    "get_info",
    "get_info_row",
    "get_snapshot",
    "id_kinds",
    "id_map",
    "key_of",
    "layer_pending",
    "migrate",
    "ns_from_datetime",
    "pending_layers",
    "read_only",
    "remove",
    "schema_version",
    "update_info",
    "walk_rows",
]
