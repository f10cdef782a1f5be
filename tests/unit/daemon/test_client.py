"""SnapshotsClient's mapping of status codes back to error classes."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from cimsnap import errdefs
from cimsnap.daemon.client import SnapshotsClient, error_for
from cimsnap.daemon.server import STATUS_CODES


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(("cls", "code"), list(STATUS_CODES.items()))
def test_codes_map_back_to_their_class(
    cls: type[errdefs.CimsnapError], code: grpc.StatusCode
) -> None:
    error = error_for(FakeRpcError(code, 'snapshot "k": x'))
    assert type(error) is cls and str(error) == 'snapshot "k": x'


def test_codes_outside_the_table_are_internal_and_named() -> None:
    error = error_for(FakeRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "slow"))
    assert type(error) is errdefs.Internal and "DEADLINE_EXCEEDED" in str(error)


def test_unreachable_server_is_unavailable(sock_dir: Path) -> None:
    with (
        SnapshotsClient(str(sock_dir / "nobody.sock"), timeout=5) as client,
        pytest.raises(errdefs.Unavailable),
    ):
        client.stat("k")
