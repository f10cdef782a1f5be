"""Metastore queries against the populated store (containerd metastore_test.go shape)."""

from __future__ import annotations

import pytest

from cimsnap.errdefs import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from cimsnap.store import (
    Kind,
    Store,
    Usage,
    check_commit,
    commit_active,
    create_snapshot,
    datetime_from_ns,
    get_info,
    get_snapshot,
    id_kinds,
    id_map,
    remove,
    update_info,
    walk_rows,
)
from tests.unit.store.conftest import T0


def dump(store: Store) -> list[tuple[object, ...]]:
    with store.read() as tx:
        conn = tx.connection
        return [
            *conn.execute("SELECT * FROM snapshots ORDER BY id").fetchall(),
            *conn.execute("SELECT * FROM labels ORDER BY snapshot_id, name").fetchall(),
            *conn.execute("SELECT * FROM sqlite_sequence").fetchall(),
        ]


@pytest.mark.parametrize(
    ("key", "kind", "parent", "labels"),
    [
        ("committed-1", Kind.COMMITTED, "", {"l": "c1"}),
        ("committed-2", Kind.COMMITTED, "committed-1", {}),
        ("active-1", Kind.ACTIVE, "", {"a": "1"}),
        ("active-2", Kind.ACTIVE, "committed-1", {}),
        ("active-3", Kind.ACTIVE, "committed-2", {}),
        ("view-1", Kind.VIEW, "", {}),
        ("view-2", Kind.VIEW, "committed-1", {"v": "2"}),
    ],
)
def test_get_info(
    populated: Store, key: str, kind: Kind, parent: str, labels: dict[str, str]
) -> None:
    with populated.read() as tx:
        _, info, _ = get_info(tx, key)
    assert (info.name, info.kind, info.parent, dict(info.labels)) == (key, kind, parent, labels)
    assert info.created == info.updated


def test_get_info_usage_and_times(populated: Store) -> None:
    with populated.read() as tx:
        snapshot_id, info, usage = get_info(tx, "committed-2")
    assert usage == Usage(20, 2)
    assert info.created == datetime_from_ns(T0 + 3)
    assert snapshot_id == 2  # commit keeps the ID of committed-tmp-2


def test_get_missing(populated: Store) -> None:
    with populated.read() as tx:
        with pytest.raises(NotFound):
            get_info(tx, "missing")
        with pytest.raises(NotFound):
            get_snapshot(tx, "missing")


def test_get_snapshot_parent_chain(populated: Store) -> None:
    with populated.read() as tx:
        c1 = get_snapshot(tx, "committed-1")
        c2 = get_snapshot(tx, "committed-2")
        a3 = get_snapshot(tx, "active-3")
        v1 = get_snapshot(tx, "view-1")
    assert c1.parent_ids == ()
    assert c2.parent_ids == (c1.id,)
    assert a3.parent_ids == (c2.id, c1.id)
    assert (a3.kind, v1.kind, v1.parent_ids) == (Kind.ACTIVE, Kind.VIEW, ())


def test_create_returns_parent_chain(populated: Store) -> None:
    with populated.write() as tx:
        ref = create_snapshot(tx, Kind.ACTIVE, "new", "committed-2", {}, T0)
    assert ref.parent_ids == (2, 1)
    assert ref.id == 8


@pytest.mark.parametrize(
    ("kind", "key", "parent", "error"),
    [
        (Kind.ACTIVE, "active-1", "", AlreadyExists),
        (Kind.VIEW, "committed-1", "", AlreadyExists),
        (Kind.ACTIVE, "x", "missing", NotFound),
        (Kind.ACTIVE, "x", "active-1", InvalidArgument),
        (Kind.VIEW, "x", "view-1", InvalidArgument),
        (Kind.COMMITTED, "x", "", InvalidArgument),
        (Kind.ACTIVE, "active-1", "missing", AlreadyExists),  # key checked before parent
    ],
)
def test_create_errors_leave_store_unchanged(
    populated: Store, kind: Kind, key: str, parent: str, error: type[Exception]
) -> None:
    before = dump(populated)
    with pytest.raises(error), populated.write() as tx:
        create_snapshot(tx, kind, key, parent, {"x": "y"}, T0)
    assert dump(populated) == before


def test_commit_active_keeps_id_replaces_labels(populated: Store) -> None:
    with populated.write() as tx:
        before = get_snapshot(tx, "active-2")
        snapshot_id = commit_active(
            tx, "active-2", "committed-3", Usage(5, 6), {"n": "1"}, "", T0 + 9
        )
        _, info, usage = get_info(tx, "committed-3")
    assert snapshot_id == before.id
    assert info.labels == {"n": "1"}
    assert (info.kind, info.parent, usage) == (Kind.COMMITTED, "committed-1", Usage(5, 6))
    assert info.created == info.updated == datetime_from_ns(T0 + 9)


def test_commit_rebase_of_parentless_active(populated: Store) -> None:
    with populated.write() as tx:
        ref = check_commit(tx, "active-1", "c", "committed-2")
        commit_active(tx, "active-1", "c", Usage(0, 0), {}, "committed-2", T0)
        assert get_info(tx, "c")[1].parent == "committed-2"
    assert ref.parent_ids == (2, 1)


@pytest.mark.parametrize(
    ("name", "key", "parent", "error"),
    [
        ("committed-1", "missing", "", AlreadyExists),
        ("view-1", "active-1", "", AlreadyExists),
        ("new", "missing", "", NotFound),
        ("new", "view-1", "", FailedPrecondition),
        ("new", "committed-2", "", FailedPrecondition),
        ("new", "active-2", "committed-2", InvalidArgument),
        ("new", "active-1", "missing", NotFound),
        ("new", "active-1", "active-2", FailedPrecondition),
    ],
)
def test_commit_errors_in_order(
    populated: Store, name: str, key: str, parent: str, error: type[Exception]
) -> None:
    before = dump(populated)
    with pytest.raises(error), populated.write() as tx:
        commit_active(tx, key, name, Usage(1, 1), {}, parent, T0)
    assert dump(populated) == before


def test_remove(populated: Store) -> None:
    with populated.write() as tx:
        assert remove(tx, "active-3") == (5, Kind.ACTIVE)
        with pytest.raises(NotFound):
            get_info(tx, "active-3")
        assert remove(tx, "committed-2") == (2, Kind.COMMITTED)


@pytest.mark.parametrize("key", ["committed-1", "committed-2"])
def test_remove_with_children_refused(populated: Store, key: str) -> None:
    before = dump(populated)
    with pytest.raises(FailedPrecondition, match="remove"), populated.write() as tx:
        remove(tx, key)
    assert dump(populated) == before


def test_remove_missing(populated: Store) -> None:
    with pytest.raises(NotFound), populated.write() as tx:
        remove(tx, "missing")


def test_remove_deletes_labels(populated: Store) -> None:
    with populated.write() as tx:
        snapshot_id, _ = remove(tx, "view-2")
    with populated.read() as tx:
        rows = tx.connection.execute(
            "SELECT COUNT(*) FROM labels WHERE snapshot_id = ?", (snapshot_id,)
        ).fetchone()
    assert rows == (0,)


def test_ids_never_reused(store: Store) -> None:
    with store.write() as tx:
        first = create_snapshot(tx, Kind.ACTIVE, "a", "", {}, T0).id
        remove(tx, "a")
    with store.write() as tx:
        second = create_snapshot(tx, Kind.ACTIVE, "a", "", {}, T0).id
    assert second == first + 1


def test_update_paths(populated: Store) -> None:
    with populated.write() as tx:
        info = update_info(tx, "active-1", {"b": "2", "c": "3"}, [], T0 + 100)
        assert info.labels == {"b": "2", "c": "3"}
        assert info.updated == datetime_from_ns(T0 + 100)
        assert info.created == datetime_from_ns(T0 + 4)
        info = update_info(
            tx, "active-1", {"b": "20", "d": "4"}, ["labels.b", "labels.c"], T0 + 101
        )
        assert info.labels == {"b": "20"}
        info = update_info(tx, "active-1", {"x": "1", "y": ""}, ["labels"], T0 + 102)
        assert info.labels == {"x": "1"}
        info = update_info(tx, "active-1", {"x.y": "1"}, ["labels.x.y"], T0 + 103)
        assert info.labels == {"x": "1", "x.y": "1"}


@pytest.mark.parametrize("paths", [["parent"], ["name"], ["labels.a", "kind"], ["label"]])
def test_update_bad_path(populated: Store, paths: list[str]) -> None:
    before = dump(populated)
    with pytest.raises(InvalidArgument), populated.write() as tx:
        update_info(tx, "active-1", {}, paths, T0)
    assert dump(populated) == before


def test_update_missing(populated: Store) -> None:
    with pytest.raises(NotFound), populated.write() as tx:
        update_info(tx, "missing", {}, [], T0)


def test_walk_and_maps(populated: Store) -> None:
    with populated.read() as tx:
        infos = [row.to_info() for row in walk_rows(tx)]
        ids = id_map(tx)
        kinds = id_kinds(tx)
        singles = [get_info(tx, i.name)[1] for i in infos]
    assert infos == singles
    assert sorted(ids.values()) == sorted(i.name for i in infos)
    assert sorted(k for k in kinds.values() if k == Kind.COMMITTED) == [Kind.COMMITTED] * 2


def test_labels_verbatim(store: Store) -> None:
    odd = {"": "empty key", "ключ": "значение", "a\x00b": "nul", "sp ace": "v\nw"}
    with store.write() as tx:
        create_snapshot(tx, Kind.ACTIVE, "k \x00/:", "", odd, T0)
    with store.read() as tx:
        assert get_info(tx, "k \x00/:")[1].labels == odd
