"""The gRPC edge's own limits, over a real unix socket: List batches bounded in bytes,
status messages bounded in length, invalid timestamps refused (not UNKNOWN); and the
fast timestamp conversion agreeing with protobuf's."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.daemon.listen import parse_address
from cimsnap.daemon.server import (
    LIST_BATCH_BYTES,
    LIST_BATCH_SIZE,
    MAX_STATUS_MESSAGE_CHARS,
    info_to_pb,
    shortened,
)
from cimsnap.snapshots.labels import MAX_LABEL_SIZE, MAX_LABELS_SIZE
from cimsnap.snapshots.snapshotter import Info, Kind
from tests.grpc_harness import ServerThread


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.SnapshotsStub]:
    with grpc.insecure_channel(parse_address(server.address).grpc_target) as channel:
        yield pb_grpc.SnapshotsStub(channel)


def test_list_batches_stay_under_the_byte_bound(
    client: SnapshotsClient, stub: pb_grpc.SnapshotsStub
) -> None:
    per_label = MAX_LABEL_SIZE - 10
    labels = {f"k{i:03d}": "v" * (per_label - 4) for i in range(MAX_LABELS_SIZE // per_label)}
    for i in range(LIST_BATCH_SIZE):
        client.prepare(f"big-{i}", "", labels)
    responses = list(stub.List(pb.ListSnapshotsRequest()))
    assert len(responses) >= 2  # 100 entries of ~64 KiB do not fit one 4 MiB response
    assert all(r.ByteSize() <= LIST_BATCH_BYTES for r in responses)
    assert all(len(r.info) <= LIST_BATCH_SIZE for r in responses)
    names = [i.name for r in responses for i in r.info]
    assert sorted(names) == sorted(f"big-{i}" for i in range(LIST_BATCH_SIZE))


def test_status_message_of_a_huge_key_is_shortened(stub: pb_grpc.SnapshotsStub) -> None:
    key = "k" * (1 << 20)
    with pytest.raises(grpc.RpcError) as e:
        stub.Stat(pb.StatSnapshotRequest(key=key))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]
    details = e.value.details()  # type: ignore[attr-defined]
    assert len(details) <= MAX_STATUS_MESSAGE_CHARS and details.endswith("not found")


def test_shortened_keeps_head_and_tail() -> None:
    assert shortened("short: not found") == "short: not found"
    long = "a" * 5000 + ": not found"
    cut = shortened(long)
    assert len(cut) <= MAX_STATUS_MESSAGE_CHARS
    assert cut.startswith("aaaa") and cut.endswith(": not found") and " ... " in cut


@pytest.mark.parametrize(
    "stamp",
    [
        timestamp_pb2.Timestamp(seconds=253402300800),  # year 10000
        timestamp_pb2.Timestamp(seconds=10, nanos=-1),
        timestamp_pb2.Timestamp(seconds=10, nanos=1_000_000_000),
    ],
)
def test_update_with_an_invalid_timestamp_is_invalid_argument(
    client: SnapshotsClient, stub: pb_grpc.SnapshotsStub, stamp: timestamp_pb2.Timestamp
) -> None:
    client.prepare("k", "", {"a": "1"})
    before = client.stat("k")
    request = pb.UpdateSnapshotRequest(
        info=pb.Info(name="k", labels={"a": "2"}, updated_at=stamp),
        update_mask=field_mask_pb2.FieldMask(paths=["labels.a"]),
    )
    with pytest.raises(grpc.RpcError) as e:
        stub.Update(request)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert client.stat("k") == before


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1970, 1, 1, tzinfo=UTC),
        datetime(2026, 12, 5, 1, 2, 3, 456789, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=5))),
        datetime(2026, 1, 1, 1, 2, 3, 4),  # naive: UTC
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ],
)
def test_info_timestamps_equal_protobufs_own_conversion(value: datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    info = Info(Kind.ACTIVE, "k", "", {}, value, value)
    assert info_to_pb(info).created_at == expected
    assert info_to_pb(info).updated_at == expected
