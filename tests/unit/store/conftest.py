"""Shared fixtures of the metastore suite: a fresh store and a populated one.

``populate`` mirrors containerd's ``storage/metastore_test.go`` populate: two committed
snapshots in a chain, actives on each and on none, and views.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.store import Kind, Store, Usage, commit_active, create_snapshot

#: Fixed clock values so tests can assert stored times exactly.
T0 = 1_700_000_000_000_000_000


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "metadata.db")
    yield s
    s.close()


@pytest.fixture
def populated(store: Store) -> Store:
    """committed-1 <- committed-2; active-1 (no parent), active-2 on committed-1,
    active-3 on committed-2, view-1 (no parent), view-2 on committed-1."""
    with store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "committed-tmp-1", "", {"l": "c1"}, T0)
        commit_active(tx, "committed-tmp-1", "committed-1", Usage(10, 1), {"l": "c1"}, "", T0 + 1)
        create_snapshot(tx, Kind.ACTIVE, "committed-tmp-2", "committed-1", {}, T0 + 2)
        commit_active(tx, "committed-tmp-2", "committed-2", Usage(20, 2), {}, "", T0 + 3)
        create_snapshot(tx, Kind.ACTIVE, "active-1", "", {"a": "1"}, T0 + 4)
        create_snapshot(tx, Kind.ACTIVE, "active-2", "committed-1", {}, T0 + 5)
        create_snapshot(tx, Kind.ACTIVE, "active-3", "committed-2", {}, T0 + 6)
        create_snapshot(tx, Kind.VIEW, "view-1", "", {}, T0 + 7)
        create_snapshot(tx, Kind.VIEW, "view-2", "committed-1", {"v": "2"}, T0 + 8)
    return store
