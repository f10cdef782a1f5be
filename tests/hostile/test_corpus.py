"""The hostile corpus (``corpus.py``) against the real server: exact code, state unchanged.

Also: Unicode edge cases are accepted and round-trip exactly, random wire bytes never get
UNKNOWN or INTERNAL, and a 200-deep chain works end to end.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2 as pb
from cimsnap.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as pb_grpc
from cimsnap.daemon.client import SnapshotsClient
from tests.hostile.corpus import CASES, Case, seed, send
from tests.hostile.corpus import SNAPSHOTS as SERVICE_NAME
from tests.snapshotter_suite import state

C = grpc.StatusCode


@pytest.fixture(scope="module")
def seeded(client: SnapshotsClient, hostile_root: Path) -> Path:
    seed(client)
    client.cleanup()  # background file work (start-up cleanup) done: the files hold still
    return hostile_root / "root"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_case(case: Case, seeded: Path, channel: grpc.Channel) -> None:
    before = state(seeded)
    assert send(channel, case) == case.expected
    assert state(seeded) == before


@pytest.mark.timeout(120)
def test_regex_bomb_leaves_health_answering(
    seeded: Path, channel: grpc.Channel, client: SnapshotsClient
) -> None:
    """Defect 1: Python ``re`` froze every answer for 67 s; RE2 answers, health keeps going."""
    keys = [f"bomb-{i}" for i in range(50)]
    for key in keys:
        client.prepare(key, "", {"a": "a" * 4000 + "!"})
    health = health_pb2_grpc.HealthStub(channel)
    stub = pb_grpc.SnapshotsStub(channel)
    bombs = [
        "(a+)+$",
        "(a|aa)*$",
        "(a*)*b",
        "[ab]*a[ab]{900}c",
        "(" * 300 + "a+" + ")+" * 300 + "!$",
    ]
    request = pb.ListSnapshotsRequest()
    done = threading.Event()
    found: list[list[str]] = []

    def lister() -> None:
        try:
            for bomb in bombs:
                request.filters[:] = [f"labels.a~={_quote(bomb)}"]
                names = [i.name for r in stub.List(request, timeout=60) for i in r.info]
                found.append(sorted(names))
        finally:
            done.set()

    thread = threading.Thread(target=lister)
    thread.start()
    checks = 0
    while not done.is_set():
        reply = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        checks += 1
    thread.join()
    assert checks >= 1
    assert len(found) == len(bombs)
    assert found[0] == []  # "(a+)+$" does not match "aaa...!"
    assert found[4] == sorted(["base", *keys])  # the last bomb matches "a...a!"
    for key in keys:
        client.remove(key)
    client.cleanup()  # Remove's file work is done in the background; Cleanup finishes it


def _quote(pattern: str) -> str:
    return '"' + pattern.replace("\\", "\\\\").replace('"', '\\"') + '"'


UNICODE_KEYS = [
    "caf\u00e9",  # NFC
    "cafe\u0301",  # NFD: a different key
    "\u202eevil\u202c",  # right-to-left override
    "\ufeffbom",
    "\uffff\U0010ffff",  # noncharacters are valid UTF-8
    "\U0001f600" * 100,
    "k" * 4096,  # exactly the key limit
    "é" * 2048,  # 4096 bytes
    "ä/../../etc/passwd",
    "with space and ,.~=!\"' quotes",
]


def test_unicode_edge_case_keys_round_trip(seeded: Path, client: SnapshotsClient) -> None:
    for key in UNICODE_KEYS:
        client.prepare(key, "base", {key[:100]: key[:100]})
    for key in UNICODE_KEYS:
        info = client.stat(key)
        assert info.name == key and info.labels == {key[:100]: key[:100]}
    names = {i.name for i in client.list()}
    assert set(UNICODE_KEYS) <= names
    assert {i.name for i in client.list([f'name=="{UNICODE_KEYS[1]}"'])} == {UNICODE_KEYS[1]}
    for key in UNICODE_KEYS:
        client.remove(key)
    assert not set(UNICODE_KEYS) & {i.name for i in client.list()}
    # Labels are stored verbatim, control characters included (containerd checks only size).
    odd = {"a\0b": "c\nd", "\x1b[31m": "\x7f", "é": "\U0010ffff"}
    client.prepare("odd-labels", "base", odd)
    assert client.stat("odd-labels").labels == odd
    client.remove("odd-labels")
    client.cleanup()


@pytest.mark.timeout(300)
def test_random_wire_bytes_never_unknown(seeded: Path, channel: grpc.Channel) -> None:
    """Seeded random payloads for the read-only RPCs: a deliberate code, never UNKNOWN."""
    rng = random.Random(11)
    before = state(seeded)
    seen: set[grpc.StatusCode] = set()
    for i in range(300):
        method = ("Stat", "Mounts", "Usage", "List")[i % 4]
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
        code = send(channel, Case(f"random-{i}", method, lambda p=payload: p, C.OK))
        assert code not in (C.UNKNOWN, C.INTERNAL), (method, payload)
        seen.add(code)
    assert C.INVALID_ARGUMENT in seen
    assert state(seeded) == before


@pytest.mark.timeout(600)
def test_200_deep_chain_works(seeded: Path, client: SnapshotsClient, channel: grpc.Channel) -> None:
    parent = ""
    for i in range(200):
        client.prepare(f"chain-{i}-active", parent)
        client.commit(f"chain-{i}", f"chain-{i}-active")
        parent = f"chain-{i}"
    mounts = client.prepare("chain-top", parent)
    (layers,) = [o for o in mounts[0].options if o.startswith("parentLayerPaths=")]
    assert layers.count('"') == 2 * 200
    assert client.stat("chain-top").parent == "chain-199"
    assert len(client.list(['name~="^chain-"'])) == 201
    stub = pb_grpc.SnapshotsStub(channel)
    request = pb.UpdateSnapshotRequest(
        info=pb.Info(name="chain-0", labels={"x": "y"}),
        update_mask=field_mask_pb2.FieldMask(paths=["labels.x"]),
    )
    assert dict(stub.Update(request).info.labels) == {"x": "y"}
    assert (
        send(
            channel,
            Case("rm-mid", "Remove", lambda: pb.RemoveSnapshotRequest(key="chain-100"), C.OK),
        )
        == C.FAILED_PRECONDITION
    )
    client.remove("chain-top")
    for i in reversed(range(200)):
        client.remove(f"chain-{i}")
    assert not [i for i in client.list() if i.name.startswith("chain-")]
    client.cleanup()


REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def test_every_handler_kind_refuses_undecodable_requests(channel: grpc.Channel) -> None:
    """Unary-stream coroutines (health Watch) and stream-stream (reflection) too."""
    bad = b"\x0a\x02\xff\xff"  # field 1, a string of invalid UTF-8
    watch = channel.unary_stream("/grpc.health.v1.Health/Watch")
    with pytest.raises(grpc.RpcError) as e:
        next(iter(watch(bad, timeout=10)))
    assert e.value.code() == C.INVALID_ARGUMENT  # type: ignore[attr-defined]
    reflect = channel.stream_stream(REFLECTION)
    with pytest.raises(grpc.RpcError) as e:
        list(reflect(iter([bad]), timeout=10))
    assert e.value.code() == C.INVALID_ARGUMENT  # type: ignore[attr-defined]
    # Decodable requests still work through the wrappers.
    good = health_pb2.HealthCheckRequest().SerializeToString()
    first = next(iter(watch(good, timeout=10)))
    assert health_pb2.HealthCheckResponse.FromString(first).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    list_services = b"\x3a\x00"  # ServerReflectionRequest.list_services = ""
    (answer,) = list(reflect(iter([list_services]), timeout=10))
    assert SERVICE_NAME.encode() in answer
