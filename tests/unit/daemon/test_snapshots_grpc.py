"""The Snapshots service over a real unix socket: codes, messages and semantics (§2.2).

Each case goes through gRPC (raw stubs where the status code or the wire shape matters,
``SnapshotsClient`` elsewhere) to the real ``Snapshotter`` on a temporary root.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2

from cimsnap import errdefs
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.client import SnapshotsClient
from cimsnap.daemon.listen import parse_address
from cimsnap.snapshots.snapshotter import Kind
from tests.grpc_harness import ServerThread

C = grpc.StatusCode
GO_ZERO = timestamp_pb2.Timestamp(seconds=-62135596800)


@pytest.fixture
def stub(server: ServerThread) -> Iterator[pb_grpc.SnapshotsStub]:
    with grpc.insecure_channel(parse_address(server.address).grpc_target) as channel:
        yield pb_grpc.SnapshotsStub(channel)


def status(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """Run an RPC expected to fail; return its code and message."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()  # type: ignore[attr-defined]


def committed(client: SnapshotsClient, name: str, parent: str = "") -> str:
    client.prepare(f"{name}-active", parent)
    client.commit(name, f"{name}-active")
    return name


# -- the semantics table, row by row ---------------------------------------------------


def test_prepare_errors(client: SnapshotsClient, stub: pb_grpc.SnapshotsStub) -> None:
    client.prepare("k")
    client.prepare("active-parent")
    cases = [
        (pb.PrepareSnapshotRequest(key="k"), C.ALREADY_EXISTS, "k"),
        (pb.PrepareSnapshotRequest(key="x", parent="missing"), C.NOT_FOUND, "missing"),
        (pb.PrepareSnapshotRequest(key="y", parent="active-parent"), C.INVALID_ARGUMENT, ""),
    ]
    for request, code, subject in cases:
        got, message = status(lambda r=request: stub.Prepare(r))
        assert got == code, request
        assert subject in message


def test_view_errors_and_read_only_mounts(
    client: SnapshotsClient, stub: pb_grpc.SnapshotsStub
) -> None:
    base = committed(client, "base")
    mounts = stub.View(pb.ViewSnapshotRequest(key="v", parent=base)).mounts
    assert "ro" in mounts[0].options and "rw" not in mounts[0].options
    client.prepare("act")
    assert status(lambda: stub.View(pb.ViewSnapshotRequest(key="v")))[0] == C.ALREADY_EXISTS
    req = pb.ViewSnapshotRequest(key="v2", parent="missing")
    assert status(lambda: stub.View(req))[0] == C.NOT_FOUND
    req = pb.ViewSnapshotRequest(key="v3", parent="act")
    assert status(lambda: stub.View(req))[0] == C.INVALID_ARGUMENT


def test_mounts(client: SnapshotsClient, stub: pb_grpc.SnapshotsStub) -> None:
    prepared = stub.Prepare(pb.PrepareSnapshotRequest(key="k")).mounts
    assert stub.Mounts(pb.MountsRequest(key="k")).mounts == prepared
    assert "rw" in prepared[0].options
    code, message = status(lambda: stub.Mounts(pb.MountsRequest(key="missing")))
    assert code == C.NOT_FOUND and "missing" in message
    committed(client, "done")
    code, message = status(lambda: stub.Mounts(pb.MountsRequest(key="done")))
    assert code == C.FAILED_PRECONDITION and "done" in message


def test_commit_errors(client: SnapshotsClient, stub: pb_grpc.SnapshotsStub) -> None:
    committed(client, "c1")
    committed(client, "c2")
    client.prepare("a1", "c1")
    client.prepare("a-noparent")
    client.prepare("a-other")
    client.view("v1", "c1")
    cases = [
        # name exists is checked first, even when the key is missing
        (pb.CommitSnapshotRequest(name="c1", key="missing"), C.ALREADY_EXISTS),
        (pb.CommitSnapshotRequest(name="n1", key="missing"), C.NOT_FOUND),
        (pb.CommitSnapshotRequest(name="n2", key="v1"), C.FAILED_PRECONDITION),
        (pb.CommitSnapshotRequest(name="n3", key="c2"), C.FAILED_PRECONDITION),
        (pb.CommitSnapshotRequest(name="n4", key="a1", parent="c2"), C.INVALID_ARGUMENT),
        (pb.CommitSnapshotRequest(name="n5", key="a-noparent", parent="a-other"),
         C.FAILED_PRECONDITION),
    ]  # fmt: skip
    for request, code in cases:
        assert status(lambda r=request: stub.Commit(r))[0] == code, request
    # Failed commits changed nothing.
    assert {i.name for i in client.list()} == {"c1", "c2", "a1", "a-noparent", "a-other", "v1"}


def test_commit_with_parent_rebases_a_parentless_active(client: SnapshotsClient) -> None:
    base = committed(client, "base")
    client.prepare("a")
    client.commit("layer", "a", parent=base)  # CommitSnapshotRequest.parent = 5
    assert client.stat("layer").parent == "base"


def test_commit_replaces_labels_and_deletes_key(client: SnapshotsClient) -> None:
    client.prepare("a", labels={"old": "1"})
    client.commit("c", "a", labels={"new": "2"})
    info = client.stat("c")
    assert info.kind == Kind.COMMITTED and dict(info.labels) == {"new": "2"}
    with pytest.raises(errdefs.NotFound):
        client.stat("a")


def test_remove_errors_and_ordering(client: SnapshotsClient, stub: pb_grpc.SnapshotsStub) -> None:
    base = committed(client, "base")
    mid = committed(client, "mid", base)
    client.prepare("top", mid)
    client.view("look", base)
    code, message = status(lambda: stub.Remove(pb.RemoveSnapshotRequest(key="missing")))
    assert code == C.NOT_FOUND and "missing" in message
    for parent in ("base", "mid"):
        code, message = status(lambda p=parent: stub.Remove(pb.RemoveSnapshotRequest(key=p)))
        assert code == C.FAILED_PRECONDITION and "remove" in message
    # children first, then parents: like containerd's GC
    for key in ("top", "mid", "look", "base"):
        client.remove(key)
    assert client.list() == []


def test_stat_usage_update_list_errors(stub: pb_grpc.SnapshotsStub) -> None:
    assert status(lambda: stub.Stat(pb.StatSnapshotRequest(key="m")))[0] == C.NOT_FOUND
    assert status(lambda: stub.Usage(pb.UsageRequest(key="m")))[0] == C.NOT_FOUND
    missing = pb.UpdateSnapshotRequest(info=pb.Info(name="m"))
    assert status(lambda: stub.Update(missing))[0] == C.NOT_FOUND
    bad_filter = pb.ListSnapshotsRequest(filters=['name=="unterminated'])
    assert status(lambda: list(stub.List(bad_filter)))[0] == C.INVALID_ARGUMENT


def test_update_of_parent_is_invalid_argument(
    client: SnapshotsClient, stub: pb_grpc.SnapshotsStub
) -> None:
    client.prepare("k")
    request = pb.UpdateSnapshotRequest(
        info=pb.Info(name="k", parent="other"),
        update_mask=field_mask_pb2.FieldMask(paths=["parent"]),
    )
    assert status(lambda: stub.Update(request))[0] == C.INVALID_ARGUMENT


def test_cleanup_answers_ok_or_unimplemented(stub: pb_grpc.SnapshotsStub) -> None:
    try:
        stub.Cleanup(pb.CleanupRequest())
    except grpc.RpcError as e:
        assert e.code() == C.UNIMPLEMENTED  # type: ignore[attr-defined]


# -- wire shape ---------------------------------------------------------------------------


def test_info_always_has_timestamps(client: SnapshotsClient, stub: pb_grpc.SnapshotsStub) -> None:
    client.prepare("k", labels={"a": "b"})
    info = stub.Stat(pb.StatSnapshotRequest(snapshotter="anything", key="k")).info
    assert info.HasField("created_at") and info.HasField("updated_at")
    assert info.created_at == info.updated_at  # Prepare sets created == updated
    assert info.kind == pb.ACTIVE and dict(info.labels) == {"a": "b"}


def test_requests_with_and_without_namespace_header(server: ServerThread) -> None:
    with (
        SnapshotsClient(server.address) as plain,
        SnapshotsClient(server.address, namespace="default") as namespaced,
    ):
        plain.prepare("default/1/a")
        namespaced.prepare("default/2/b")
        assert {i.name for i in plain.list()} == {"default/1/a", "default/2/b"}


# -- Update label semantics (§2.2) ---------------------------------------------------------


def update(
    stub: pb_grpc.SnapshotsStub, name: str, labels: dict[str, str], paths: list[str]
) -> pb.Info:
    # As containerd sends it: name, labels, Go-zero timestamps, a mask.
    info = pb.Info(name=name, labels=labels, created_at=GO_ZERO, updated_at=GO_ZERO)
    mask = field_mask_pb2.FieldMask(paths=paths)
    return stub.Update(pb.UpdateSnapshotRequest(info=info, update_mask=mask)).info


def test_update_label_semantics(client: SnapshotsClient, stub: pb_grpc.SnapshotsStub) -> None:
    client.prepare("k", labels={"a": "1", "b": "2"})
    before = client.stat("k")
    # labels.<k> sets present keys and deletes absent ones; other labels stay.
    out = update(stub, "k", {"a": "10", "c": "3"}, ["labels.a", "labels.b", "labels.c"])
    assert dict(out.labels) == {"a": "10", "c": "3"}
    # mask "labels" replaces all
    out = update(stub, "k", {"z": "26"}, ["labels"])
    assert dict(out.labels) == {"z": "26"}
    # an empty mask replaces all mutable fields, i.e. the labels
    out = update(stub, "k", {"y": "25"}, [])
    assert dict(out.labels) == {"y": "25"}
    # an empty value is not stored
    out = update(stub, "k", {"y": "25", "e": ""}, ["labels"])
    assert dict(out.labels) == {"y": "25"}
    after = client.stat("k")
    # Go-zero timestamps in the request were ignored; only `updated` moved.
    assert after.created == before.created
    assert after.updated >= before.updated and after.updated > datetime(2000, 1, 1, tzinfo=UTC)
    assert after.kind == Kind.ACTIVE and after.parent == ""


# -- List: filters, batching, Stat while streaming -----------------------------------------


def test_filters(client: SnapshotsClient) -> None:
    base = committed(client, "base")
    client.prepare("default/1/a", base, labels={"containerd.io/gc.root": "x", "team": "red"})
    client.prepare("default/2/b", labels={"team": "blue"})
    client.view("default/3/v", base)

    def names(*filters: str) -> set[str]:
        return {i.name for i in client.list(filters)}

    assert names() == {"base", "default/1/a", "default/2/b", "default/3/v"}
    assert names('name=="default/2/b"') == {"default/2/b"}
    assert names("parent==base") == {"default/1/a", "default/3/v"}
    assert names("kind==committed") == {"base"}
    assert names("kind==view") == {"default/3/v"}
    assert names('labels."containerd.io/gc.root"==x') == {"default/1/a"}
    assert names("labels.team") == {"default/1/a", "default/2/b"}  # presence
    # != also matches snapshots without the label (containerd's filter semantics)
    assert names("labels.team!=red") == {"base", "default/2/b", "default/3/v"}
    assert names("name~=^default/[12]/") == {"default/1/a", "default/2/b"}
    assert names("name~=/^base$/") == {"base"}  # / as a quote character
    assert names("kind==active,labels.team==red") == {"default/1/a"}  # AND
    assert names("kind==committed", "kind==view") == {"base", "default/3/v"}  # OR
    assert names('labels."containerd.io/snapshot.ref"==nope,parent=="base"') == set()


def test_list_streams_batches_of_100_and_stat_inside(
    client: SnapshotsClient, stub: pb_grpc.SnapshotsStub
) -> None:
    for i in range(250):
        client.prepare(f"k{i:03d}", labels={"i": str(i)})
    seen = 0
    batch_sizes = []
    for response in stub.List(pb.ListSnapshotsRequest()):
        batch_sizes.append(len(response.info))
        for info in response.info:
            # Stat (and a write) while the stream is open must not deadlock.
            assert stub.Stat(pb.StatSnapshotRequest(key=info.name)).info.name == info.name
            seen += 1
        client.prepare(f"during-{len(batch_sizes)}")
    assert batch_sizes == [100, 100, 50] and seen == 250


# -- cleanup, restart (the 128-deep chain: test_suite_over_grpc.py) ---------------------


def test_cleanup_reclaims_leftovers(server: ServerThread, client: SnapshotsClient) -> None:
    client.prepare("keep")
    snapshots = server.config.root_path / "snapshots"
    (snapshots / "9999").mkdir()
    (snapshots / "9999" / "junk").write_text("x")
    (snapshots / "rm-9998").mkdir()
    try:
        client.cleanup()
    except errdefs.Unimplemented:
        pytest.fail("cimsnap's snapshotter implements Cleanup")
    assert not (snapshots / "9999").exists() and not (snapshots / "rm-9998").exists()
    assert client.stat("keep").kind == Kind.ACTIVE
    assert client.mounts("keep")


def test_restart_keeps_state(server: ServerThread) -> None:
    with SnapshotsClient(server.address) as c:
        committed(c, "base")
        c.prepare("a", "base", labels={"l": "v"})
        c.view("v", "base")
        before = sorted(c.list(), key=lambda i: i.name)
        mounts = c.mounts("a")
    server.stop()
    with ServerThread(server.config) as again, SnapshotsClient(again.address) as c:
        assert sorted(c.list(), key=lambda i: i.name) == before
        assert c.mounts("a") == mounts
