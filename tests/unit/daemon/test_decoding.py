"""cimsnap.daemon.decoding: which handlers are wrapped, and how (end to end in
tests/hostile: every service answers INVALID_ARGUMENT to undecodable bytes)."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2

from cimsnap.daemon.decoding import checked_handler


async def _unary(request: object, context: object) -> object:
    return request


def _sync(request: object, context: object) -> object:
    return request


def test_handlers_left_alone() -> None:
    assert checked_handler(None) is None
    raw = grpc.unary_unary_rpc_method_handler(_unary)  # no deserializer: bytes pass through
    assert checked_handler(raw) is raw
    sync = grpc.unary_unary_rpc_method_handler(
        _sync, request_deserializer=health_pb2.HealthCheckRequest.FromString
    )
    assert checked_handler(sync) is sync  # not a grpc.aio behaviour


def test_wrapped_deserializer_marks_undecodable_bytes() -> None:
    handler = grpc.unary_unary_rpc_method_handler(
        _unary, request_deserializer=health_pb2.HealthCheckRequest.FromString
    )
    checked = checked_handler(handler)
    assert checked is not None and checked is not handler
    good = health_pb2.HealthCheckRequest(service="x")
    assert checked.request_deserializer(good.SerializeToString()) == good
    marker = checked.request_deserializer(b"\x0a\x02\xff\xff")
    assert not isinstance(marker, health_pb2.HealthCheckRequest)
    assert checked.unary_unary is not _unary and checked.response_serializer is None
