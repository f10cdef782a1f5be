"""List and Stat encode ``InfoRow``s straight into their responses; the result must be
exactly what encoding each snapshot's ``Info`` with ``info_to_pb`` gives (for List, batched
by the same rules)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.daemon.server import (
    LIST_BATCH_BYTES,
    LIST_BATCH_SIZE,
    fill_info,
    info_to_pb,
    list_responses,
)
from cimsnap.snapshots.snapshotter import Snapshotter
from cimsnap.store import InfoRow, Kind


def random_rows(rng: random.Random, count: int) -> list[InfoRow]:
    rows = []
    for i in range(count):
        created = rng.randint(-(10**18), 4 * 10**18)  # before 1940 to after 2096
        updated = created if rng.random() < 0.5 else created + rng.randint(0, 10**15)
        labels = {
            f"l{j}.{rng.random()}": "\u00e9" * rng.randint(0, 3) for j in range(rng.randint(0, 4))
        }
        kind = rng.choice([Kind.ACTIVE, Kind.VIEW, Kind.COMMITTED])
        parent = f"p{rng.randint(0, 9)}" if rng.random() < 0.7 else ""
        rows.append(InfoRow(kind, f"ns/{i}/k", parent, labels, created, updated))
    return rows


@pytest.mark.parametrize("count", [0, 1, LIST_BATCH_SIZE, LIST_BATCH_SIZE + 1, 357])
def test_rows_encode_as_their_infos(count: int) -> None:
    rows = random_rows(random.Random(count), count)
    responses = list_responses(rows)
    assert [len(r.info) for r in responses] == [
        min(LIST_BATCH_SIZE, count - start) for start in range(0, count, LIST_BATCH_SIZE)
    ]
    encoded = [info for r in responses for info in r.info]
    assert encoded == [info_to_pb(row.to_info()) for row in rows]


def test_a_batch_ends_before_the_byte_bound() -> None:
    big = "x" * (LIST_BATCH_BYTES // 3)
    rows = [InfoRow(Kind.COMMITTED, f"n{i}", "", {"big": big}, 10**18, 10**18) for i in range(5)]
    responses = list_responses(rows)
    assert [len(r.info) for r in responses] == [2, 2, 1]
    assert all(r.ByteSize() <= LIST_BATCH_BYTES for r in responses)
    assert [i.name for r in responses for i in r.info] == [f"n{i}" for i in range(5)]


def test_an_entry_larger_than_the_bound_travels_alone() -> None:
    huge = "y" * (LIST_BATCH_BYTES + 1)
    rows = [
        InfoRow(Kind.ACTIVE, "a", "", {}, 0, 0),
        InfoRow(Kind.ACTIVE, "huge", "", {"h": huge}, 0, 0),
        InfoRow(Kind.ACTIVE, "b", "", {}, 0, 0),
    ]
    assert [[i.name for i in r.info] for r in list_responses(rows)] == [["a"], ["huge"], ["b"]]


def test_snapshotter_rows_and_infos_agree(tmp_path: Path) -> None:
    with Snapshotter(tmp_path / "root") as sn:
        sn.prepare("ns/1/base-a", labels={"a": "1"})
        sn.commit("ns/2/base", "ns/1/base-a", labels={"b": "2", "c.d": "3"})
        sn.view("ns/3/v", "ns/2/base")
        sn.prepare("ns/4/a", "ns/2/base")
        for filters in ([], ["kind==committed"], ['labels."c.d"==3'], ["parent==ns/2/base"]):
            rows = sn.list_rows(filters)
            assert [row.to_info() for row in rows] == sn.list(filters)
            assert all(
                row.field(path) == row.to_info().field(path)
                for row in rows
                for path in (["name"], ["parent"], ["kind"], ["labels", "c", "d"], ["x"])
            )
        assert [r.name for r in sn.list_rows(["kind==committed"])] == ["ns/2/base"]
        for key in ("ns/2/base", "ns/3/v", "ns/4/a"):
            row = sn.stat_row(key)
            assert row == sn.stat_row_nowait(key)
            assert row.to_info() == sn.stat(key)
            filled = pb.Info()
            fill_info(filled, row)
            assert filled == info_to_pb(sn.stat(key))


def test_fill_info_matches_info_to_pb_for_any_row() -> None:
    for row in random_rows(random.Random(7), 200):
        filled = pb.Info()
        fill_info(filled, row)
        assert filled == info_to_pb(row.to_info())
