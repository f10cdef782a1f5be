"""Plain records shared by the metastore and the snapshotter (containerd ``snapshots.Info``).

These types carry no SQL and no gRPC. The metastore produces them; ``cimsnap.snapshots.snapshotter``
re-exports them as part of its public API, the way containerd's ``storage`` package returns
``snapshots.Info``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, NamedTuple

__all__ = [
    "EPOCH",
    "Info",
    "InfoRow",
    "Kind",
    "SnapshotRef",
    "Usage",
    "datetime_from_ns",
    "ns_from_datetime",
    "snapshot_field",
]

#: The Unix epoch, UTC-aware; timestamps are stored as integer nanoseconds since it.
EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class Kind(enum.IntEnum):
    """Snapshot kinds; the values match containerd's ``snapshots.v1.Kind`` proto enum."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3

    @property
    def filter_name(self) -> str:
        """The word containerd's filter adaptor uses for this kind (``active`` ...)."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Info:
    """What ``Stat`` returns: ``name`` is the key (active/view) or the committed name.

    ``parent`` is the parent's *name* (``""`` for none). ``created`` and ``updated`` are
    UTC-aware datetimes; the metastore stores whole microseconds, so converting back and
    forth is exact.
    """

    kind: Kind
    name: str
    parent: str
    labels: Mapping[str, str]
    created: datetime
    updated: datetime

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        """The filter adaptor: see :func:`snapshot_field`."""
        return snapshot_field(self.kind, self.name, self.parent, self.labels, path)


def snapshot_field(
    kind: Kind, name: str, parent: str, labels: Mapping[str, str], path: Sequence[str]
) -> tuple[str, bool]:
    """The filter adaptor (containerd bolt.go ``adaptSnapshot``): ``(value, present)``.

    ``name`` and ``parent`` are always present (``parent`` may be ``""``); ``kind`` is
    ``active``/``view``/``committed``; ``labels.<key>`` looks up the key formed by
    joining the rest of the path with ``.``. Anything else is absent.
    """
    match path[0] if path else "":
        case "name":
            return name, True
        case "parent":
            return parent, True
        case "kind":
            if kind == Kind.UNKNOWN:
                return "", False
            return kind.filter_name, True
        case "labels":
            value = labels.get(".".join(path[1:]))
            return ("", False) if value is None else (value, True)
    return "", False


class InfoRow(NamedTuple):
    """One snapshot as List reads it: Info's fields, times as nanoseconds since the epoch.

    Costs a fraction of an :class:`Info` to build (no datetimes, a plain tuple), for
    callers that only pass the fields on: the server's List encodes them straight into
    its responses. ``to_info()`` gives the Info; ``field`` is the same filter adaptor.
    """

    kind: Kind
    name: str
    parent: str
    labels: Mapping[str, str]
    created_ns: int
    updated_ns: int

    def field(self, path: Sequence[str]) -> tuple[str, bool]:
        """The filter adaptor: see :func:`snapshot_field`."""
        return snapshot_field(self.kind, self.name, self.parent, self.labels, path)

    def to_info(self) -> Info:
        created = datetime_from_ns(self.created_ns)
        return Info(
            kind=self.kind,
            name=self.name,
            parent=self.parent,
            labels=self.labels,
            created=created,
            updated=created
            if self.updated_ns == self.created_ns
            else datetime_from_ns(self.updated_ns),
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """Disk usage of one snapshot, parents excluded: bytes allocated and inodes."""

    size: int
    inodes: int


@dataclass(frozen=True, slots=True)
class SnapshotRef:
    """The metastore's identity of a snapshot (containerd ``storage.Snapshot``).

    ``id`` is the numeric ID from the sequence (never reused, kept by Commit);
    ``parent_ids`` runs from the immediate parent down to the base layer.
    """

    id: int
    kind: Kind
    parent_ids: tuple[int, ...]


def datetime_from_ns(ns: int) -> datetime:
    """Convert integer nanoseconds since the epoch to a UTC datetime (microsecond floor)."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def ns_from_datetime(value: datetime) -> int:
    """Convert an aware datetime to integer nanoseconds since the epoch (exact to 1 µs)."""
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
