"""Pin the wire facts of containerd's API that cimsnap relies on.

The .proto files are re-declared, not copied, so these numbers are checked here against the
spec rather than trusted.
"""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from cimsnap.api.containerd.services.content.v1 import content_pb2
from cimsnap.api.containerd.services.diff.v1 import diff_pb2
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2
from cimsnap.api.containerd.types import descriptor_pb2, mount_pb2

F = FieldDescriptor

FIELDS = [
    (mount_pb2.Mount, {"type": 1, "source": 2, "target": 3, "options": 4}),
    (descriptor_pb2.Descriptor, {"media_type": 1, "digest": 2, "size": 3, "annotations": 5}),
    (snapshots_pb2.PrepareSnapshotRequest, {"snapshotter": 1, "key": 2, "parent": 3, "labels": 4}),
    (snapshots_pb2.ViewSnapshotRequest, {"snapshotter": 1, "key": 2, "parent": 3, "labels": 4}),
    (
        snapshots_pb2.CommitSnapshotRequest,
        {"snapshotter": 1, "name": 2, "key": 3, "labels": 4, "parent": 5},
    ),
    (
        snapshots_pb2.Info,
        {"name": 1, "parent": 2, "kind": 3, "created_at": 4, "updated_at": 5, "labels": 6},
    ),
    (snapshots_pb2.UpdateSnapshotRequest, {"snapshotter": 1, "info": 2, "update_mask": 3}),
    (snapshots_pb2.ListSnapshotsRequest, {"snapshotter": 1, "filters": 2}),
    (snapshots_pb2.ListSnapshotsResponse, {"info": 1}),
    (snapshots_pb2.UsageResponse, {"size": 1, "inodes": 2}),
    (diff_pb2.ApplyRequest, {"diff": 1, "mounts": 2, "payloads": 3, "sync_fs": 4}),
    (diff_pb2.ApplyResponse, {"applied": 1}),
    (
        diff_pb2.DiffRequest,
        {"left": 1, "right": 2, "media_type": 3, "ref": 4, "labels": 5, "source_date_epoch": 6},
    ),
    (diff_pb2.DiffResponse, {"diff": 3}),
    (content_pb2.ReadContentRequest, {"digest": 1, "offset": 2, "size": 3}),
    (content_pb2.ReadContentResponse, {"offset": 1, "data": 2}),
]


@pytest.mark.parametrize(("message", "numbers"), FIELDS, ids=lambda v: getattr(v, "__name__", ""))
def test_field_numbers(message: type, numbers: dict[str, int]) -> None:
    descriptor: Descriptor = message.DESCRIPTOR  # type: ignore[attr-defined]
    assert {f.name: f.number for f in descriptor.fields} == numbers


def test_full_names_and_types_are_containerds() -> None:
    assert mount_pb2.Mount.DESCRIPTOR.full_name == "containerd.types.Mount"
    info = snapshots_pb2.Info.DESCRIPTOR
    assert info.fields_by_name["created_at"].message_type.full_name == "google.protobuf.Timestamp"
    assert (
        info.fields_by_name["kind"].enum_type.full_name == "containerd.services.snapshots.v1.Kind"
    )
    usage = snapshots_pb2.UsageResponse.DESCRIPTOR
    assert usage.fields_by_name["size"].type == F.TYPE_INT64
    assert diff_pb2.ApplyRequest.DESCRIPTOR.fields_by_name["sync_fs"].type == F.TYPE_BOOL
    assert {v.name: v.number for v in snapshots_pb2.Kind.DESCRIPTOR.values} == {
        "UNKNOWN": 0,
        "VIEW": 1,
        "ACTIVE": 2,
        "COMMITTED": 3,
    }


def test_snapshots_service_methods_and_streaming() -> None:
    service = snapshots_pb2.DESCRIPTOR.services_by_name["Snapshots"]
    assert service.full_name == "containerd.services.snapshots.v1.Snapshots"
    names = [m.name for m in service.methods]
    expected = ["Prepare", "View", "Mounts", "Commit", "Remove", "Stat", "Update", "List"]
    assert names == [*expected, "Usage", "Cleanup"]
    streaming = {m.name for m in service.methods if m.server_streaming or m.client_streaming}
    assert streaming == {"List"}


def test_generated_modules_do_not_import_top_level_types() -> None:
    assert snapshots_pb2.DESCRIPTOR.dependencies[-1].name == (
        "cimsnap/api/containerd/types/mount.proto"
    )
