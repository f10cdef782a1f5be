"""The hostile gRPC corpus: one table of requests, each with the status it must get.

Every case is something an attacker or a broken client can send over the socket. Each row
names the RPC, builds its request (a protobuf message, or raw wire bytes for requests that
must not even decode) and gives the one expected status. A case passes when the server
answers exactly that status and the root (metastore rows, labels, ID sequence and the files
under ``snapshots/``) is unchanged. ``OK`` rows are requests that must be served (a regex
bomb must answer, and promptly). The limits behind the codes are in ``docs/limits.md``.

The cases expect the state made by :func:`seed` (a committed ``base``, an active ``act`` on
it, a view ``view``, and ``full``, an active with the maximum number of labels).
Used by ``tests/hostile/test_corpus.py`` and ``benchmarks/reliability.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.daemon.server import MAX_MESSAGE_BYTES
from cimsnap.snapshots.filters import MAX_FILTER_BYTES, MAX_REGEX_SELECTORS
from cimsnap.snapshots.labels import (
    MAX_KEY_SIZE,
    MAX_LABEL_COUNT,
    MAX_LABEL_SIZE,
    MAX_LABELS_SIZE,
    MAX_UPDATE_PATHS,
)

C = grpc.StatusCode
SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"
HEALTH = "grpc.health.v1.Health"
STREAMING = frozenset({"List"})
MIB = 1024 * 1024


@dataclass(frozen=True)
class Case:
    """One hostile request: ``method`` of ``service``, its request and the status it gets."""

    id: str
    method: str
    request: Callable[[], Message | bytes]
    expected: grpc.StatusCode
    service: str = SNAPSHOTS


def seed(client: SnapshotsClient) -> None:
    """The state every case runs against."""
    client.prepare("base-active", "", {"containerd.io/gc.root": "x", "a": "a" * 4000 + "!"})
    client.commit("base", "base-active", {"a": "a" * 4000 + "!"})
    client.prepare("act", "base")
    client.view("view", "base")
    client.prepare("full", "", {f"k{i}": "v" for i in range(MAX_LABEL_COUNT)})


def send(channel: grpc.Channel, case: Case, timeout: float = 60) -> grpc.StatusCode:
    """Send ``case`` over ``channel``; return the status (streams are read to the end)."""
    request = case.request()
    path = f"/{case.service}/{case.method}"
    serialize = None if isinstance(request, bytes) else type(request).SerializeToString
    try:
        if case.method in STREAMING:
            call = channel.unary_stream(path, request_serializer=serialize)
            for _ in call(request, timeout=timeout):
                pass
        else:
            channel.unary_unary(path, request_serializer=serialize)(request, timeout=timeout)
    except grpc.RpcError as e:
        return e.code()  # type: ignore[attr-defined,no-any-return]
    return C.OK


def _corrupt(message: Message, marker: bytes, replacement: bytes) -> bytes:
    """``message``'s wire bytes with ``marker`` (in one string field) replaced."""
    data = message.SerializeToString()
    assert data.count(marker) == 1 and len(marker) == len(replacement)
    return data.replace(marker, replacement)


def _labels(count: int, value_size: int = 1) -> dict[str, str]:
    return {f"k{i}": "v" * value_size for i in range(count)}


def _update(
    name: str,
    labels: dict[str, str] | None = None,
    paths: list[str] | None = None,
    **times: timestamp_pb2.Timestamp,
) -> pb.UpdateSnapshotRequest:
    return pb.UpdateSnapshotRequest(
        info=pb.Info(name=name, labels=labels or {}, **times),
        update_mask=field_mask_pb2.FieldMask(paths=paths or []),
    )


def _list(*filters: str) -> pb.ListSnapshotsRequest:
    return pb.ListSnapshotsRequest(filters=list(filters))


KEY_VALUES = {  # (id, key): every creation refuses them, every lookup does not find them
    "nul": "a\0b",
    "newline": "forged\nlog line",
    "escape": "\x1b[31mred",
    "del": "a\x7fb",
    "tab": "a\tb",
    "over-limit": "k" * (MAX_KEY_SIZE + 1),
    "1MiB": "k" * MIB,
}

CASES: list[Case] = []
for _id, _key in KEY_VALUES.items():
    CASES += [
        Case(
            f"prepare-key-{_id}",
            "Prepare",
            lambda k=_key: pb.PrepareSnapshotRequest(key=k),
            C.INVALID_ARGUMENT,
        ),
        Case(
            f"view-key-{_id}",
            "View",
            lambda k=_key: pb.ViewSnapshotRequest(key=k, parent="base"),
            C.INVALID_ARGUMENT,
        ),
        Case(
            f"commit-name-{_id}",
            "Commit",
            lambda k=_key: pb.CommitSnapshotRequest(name=k, key="act"),
            C.INVALID_ARGUMENT,
        ),
        Case(f"stat-{_id}", "Stat", lambda k=_key: pb.StatSnapshotRequest(key=k), C.NOT_FOUND),
        Case(f"mounts-{_id}", "Mounts", lambda k=_key: pb.MountsRequest(key=k), C.NOT_FOUND),
        Case(f"usage-{_id}", "Usage", lambda k=_key: pb.UsageRequest(key=k), C.NOT_FOUND),
        Case(
            f"remove-{_id}", "Remove", lambda k=_key: pb.RemoveSnapshotRequest(key=k), C.NOT_FOUND
        ),
        Case(
            f"prepare-parent-{_id}",
            "Prepare",
            lambda k=_key: pb.PrepareSnapshotRequest(key="p", parent=k),
            C.NOT_FOUND,
        ),
        Case(f"update-name-{_id}", "Update", lambda k=_key: _update(k, {"a": "b"}), C.NOT_FOUND),
    ]

CASES += [
    # -- keys and parents that exist but may not be used that way
    Case("prepare-empty-key", "Prepare", lambda: pb.PrepareSnapshotRequest(), C.INVALID_ARGUMENT),
    Case(
        "commit-empty-name",
        "Commit",
        lambda: pb.CommitSnapshotRequest(key="act"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "prepare-on-active",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(key="p", parent="act"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "prepare-existing",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(key="act"),
        C.ALREADY_EXISTS,
    ),
    Case(
        "commit-view",
        "Commit",
        lambda: pb.CommitSnapshotRequest(name="n", key="view"),
        C.FAILED_PRECONDITION,
    ),
    Case(
        "commit-onto-existing",
        "Commit",
        lambda: pb.CommitSnapshotRequest(name="base", key="act"),
        C.ALREADY_EXISTS,
    ),
    Case(
        "commit-reparent",
        "Commit",
        lambda: pb.CommitSnapshotRequest(name="n", key="act", parent="view"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "remove-with-children",
        "Remove",
        lambda: pb.RemoveSnapshotRequest(key="base"),
        C.FAILED_PRECONDITION,
    ),
    # -- labels
    Case(
        "labels-100000",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(key="p", labels=_labels(100_000)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "labels-count+1",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(key="p", labels=_labels(MAX_LABEL_COUNT + 1)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "labels-total-bytes",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(
            key="p", labels=_labels(MAX_LABELS_SIZE // 4000 + 1, 4000)
        ),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "label-4097-bytes",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(key="p", labels={"k": "v" * MAX_LABEL_SIZE}),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "label-multibyte-over",
        "View",
        lambda: pb.ViewSnapshotRequest(key="p", parent="base", labels={"k": "é" * 2048}),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "commit-labels-100000",
        "Commit",
        lambda: pb.CommitSnapshotRequest(name="n", key="act", labels=_labels(100_000)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-labels-100000",
        "Update",
        lambda: _update("base", _labels(100_000)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-merge-over-count",
        "Update",
        lambda: _update("full", {"extra": "x"}, ["labels.extra"]),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-label-too-big",
        "Update",
        lambda: _update("base", {"k": "v" * MAX_LABEL_SIZE}, ["labels.k"]),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-mask-100000-paths",
        "Update",
        lambda: _update("base", paths=[f"labels.x{i}" for i in range(100_000)]),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-mask-over-limit",
        "Update",
        lambda: _update("base", paths=["labels"] * (MAX_UPDATE_PATHS + 1)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-path-parent",
        "Update",
        lambda: _update("base", paths=["parent"]),
        C.INVALID_ARGUMENT,
    ),
    Case("update-path-kind", "Update", lambda: _update("base", paths=["kind"]), C.INVALID_ARGUMENT),
    # -- timestamps and kinds
    Case(
        "update-year-10000",
        "Update",
        lambda: _update(
            "base", {"a": "b"}, created_at=timestamp_pb2.Timestamp(seconds=253402300800)
        ),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-seconds-max",
        "Update",
        lambda: _update("base", updated_at=timestamp_pb2.Timestamp(seconds=2**63 - 1)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-nanos-negative",
        "Update",
        lambda: _update("base", created_at=timestamp_pb2.Timestamp(seconds=5, nanos=-1)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-nanos-over",
        "Update",
        lambda: _update("base", updated_at=timestamp_pb2.Timestamp(seconds=5, nanos=10**9)),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "update-kind-999-bad-path",
        "Update",
        lambda: pb.UpdateSnapshotRequest(
            info=pb.Info(name="base", kind=999),
            update_mask=field_mask_pb2.FieldMask(paths=["parent"]),
        ),
        C.INVALID_ARGUMENT,
    ),  # type: ignore[arg-type]
    Case("list-kind-bogus", "List", lambda: _list("kind==bogus"), C.OK),
    # -- filters: malformed, huge, and regex bombs (these must answer, and promptly)
    Case("filter-empty-op", "List", lambda: _list("name=="), C.INVALID_ARGUMENT),
    Case("filter-bad-quote", "List", lambda: _list("labels.|x|==y"), C.INVALID_ARGUMENT),
    Case("filter-nul", "List", lambda: _list("name==a\0b"), C.INVALID_ARGUMENT),
    Case("filter-bad-escape", "List", lambda: _list('name=="\\q"'), C.INVALID_ARGUMENT),
    Case("filter-unterminated", "List", lambda: _list('name=="abc'), C.INVALID_ARGUMENT),
    Case("filter-trailing-comma", "List", lambda: _list("name==a,"), C.INVALID_ARGUMENT),
    Case(
        "filter-huge", "List", lambda: _list("name==" + "x" * MAX_FILTER_BYTES), C.INVALID_ARGUMENT
    ),
    Case("filter-many-strings", "List", lambda: _list(*["name==x"] * 20_000), C.INVALID_ARGUMENT),
    Case(
        "filter-many-regexes",
        "List",
        lambda: _list(",".join(["name~=x"] * (MAX_REGEX_SELECTORS + 1))),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "filter-deep-parens-100000",
        "List",
        lambda: _list("name~=" + "(" * 100_000),
        C.INVALID_ARGUMENT,
    ),
    Case("regex-bomb-nested-plus", "List", lambda: _list('labels.a~="(a+)+$"'), C.OK),
    Case("regex-bomb-alternation", "List", lambda: _list('labels.a~="(a|aa|a?)*$"'), C.OK),
    Case("regex-bomb-dfa-states", "List", lambda: _list('labels.a~="[ab]*a[ab]{900}c"'), C.OK),
    Case("regex-deep-parens-1000", "List", lambda: _list("name~=" + "(" * 1000), C.OK),
    Case("regex-too-long", "List", lambda: _list("name~=" + "a" * 5000), C.OK),
    Case("regex-backreference", "List", lambda: _list('name~="(a)\\\\1"'), C.OK),
    Case("regex-repeat-1001", "List", lambda: _list('name~="a{1001}"'), C.OK),
    Case("regex-byte-escape", "List", lambda: _list('name~="\\\\C"'), C.OK),
    # -- messages over the 16 MiB limit: refused by gRPC before any handler runs
    Case(
        "message-50MB-labels",
        "Prepare",
        lambda: pb.PrepareSnapshotRequest(
            key="p", labels={f"k{i}": "v" * 4000 for i in range(50 * MIB // 4010)}
        ),
        C.RESOURCE_EXHAUSTED,
    ),
    Case(
        "message-50MB-key",
        "Stat",
        lambda: pb.StatSnapshotRequest(key="k" * (50 * MIB)),
        C.RESOURCE_EXHAUSTED,
    ),
    Case(
        "message-just-over-limit",
        "List",
        lambda: _list("x" * MAX_MESSAGE_BYTES),
        C.RESOURCE_EXHAUSTED,
    ),
    # -- wire bytes that do not decode: INVALID_ARGUMENT, never UNKNOWN
    Case(
        "wire-bad-utf8-key",
        "Prepare",
        lambda: _corrupt(pb.PrepareSnapshotRequest(key="@@"), b"@@", b"\xff\xfe"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "wire-bad-utf8-label",
        "Prepare",
        lambda: _corrupt(
            pb.PrepareSnapshotRequest(key="p", labels={"k": "@@"}), b"@@", b"\xc3\x28"
        ),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "wire-bad-utf8-filter",
        "List",
        lambda: _corrupt(_list("name==@@@"), b"@@@", b"\xed\xa0\x80"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "wire-bad-utf8-update",
        "Update",
        lambda: _corrupt(_update("@@"), b"@@", b"\xc0\xaf"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "wire-bad-utf8-stat",
        "Stat",
        lambda: _corrupt(pb.StatSnapshotRequest(key="@@"), b"@@", b"\x80\x80"),
        C.INVALID_ARGUMENT,
    ),
    Case(
        "wire-truncated",
        "Commit",
        lambda: pb.CommitSnapshotRequest(name="n", key="act").SerializeToString()[:-1],
        C.INVALID_ARGUMENT,
    ),
    Case("wire-length-past-end", "Remove", lambda: b"\x12\x7fabc", C.INVALID_ARGUMENT),
    Case("wire-bad-wire-type", "Mounts", lambda: b"\x0f\x00", C.INVALID_ARGUMENT),
    Case("wire-unterminated-group", "Usage", lambda: b"\x0b" * 200, C.INVALID_ARGUMENT),
    Case("wire-varint-overlong", "Cleanup", lambda: b"\x08" + b"\xff" * 11, C.INVALID_ARGUMENT),
    Case(
        "wire-health-bad-utf8",
        "Check",
        lambda: _corrupt(health_pb2.HealthCheckRequest(service="@@"), b"@@", b"\xff\xff"),
        C.INVALID_ARGUMENT,
        HEALTH,
    ),
    Case(
        "wire-unknown-fields-ok",
        "Stat",
        lambda: pb.StatSnapshotRequest(key="base").SerializeToString() + b"\xf8\x07\x01",
        C.OK,
    ),
]
