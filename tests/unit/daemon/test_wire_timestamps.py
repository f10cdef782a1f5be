"""Stat's timestamps are built by integer arithmetic; they must equal protobuf's own
``Timestamp.FromDatetime`` for every datetime a snapshot can carry."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2

from cimsnap.daemon.server import _set_timestamp, info_to_pb
from cimsnap.store import Info, Kind


def reference(value: datetime) -> tuple[int, int]:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value if value.tzinfo is not None else value.replace(tzinfo=UTC))
    return ts.seconds, ts.nanos


def test_timestamps_match_protobuf_from_datetime() -> None:
    rng = random.Random(7)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    values = [
        epoch,
        datetime(1970, 1, 1),  # naive: UTC
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),  # negative, nanos > 0
        datetime(1, 1, 1, tzinfo=UTC),  # Go's zero time
        datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime(2026, 12, 5, 1, 2, 3, 456_789, tzinfo=timezone(timedelta(hours=-5))),
    ]
    values += [
        epoch + timedelta(microseconds=rng.randint(-6 * 10**16, 6 * 10**16)) for _ in range(5000)
    ]
    for value in values:
        ts = timestamp_pb2.Timestamp()
        _set_timestamp(ts, value)
        assert (ts.seconds, ts.nanos) == reference(value), value


def test_info_to_pb_carries_both_times() -> None:
    created = datetime(2026, 12, 5, 1, 2, 3, 456_789, tzinfo=UTC)
    info = Info(Kind.COMMITTED, "n", "p", {"a": "b"}, created, created + timedelta(seconds=1))
    message = info_to_pb(info)
    assert message.created_at.ToDatetime(tzinfo=UTC) == created
    assert message.updated_at.ToDatetime(tzinfo=UTC) == created + timedelta(seconds=1)
    assert (message.name, message.parent, dict(message.labels)) == ("n", "p", {"a": "b"})
