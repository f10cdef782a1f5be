"""Requests that cannot be decoded answer INVALID_ARGUMENT, for every service of the server.

grpcio decodes a request with the method's ``request_deserializer`` before the handler
runs; when that raises (corrupt wire bytes, a string field that is not UTF-8), grpcio
answers UNKNOWN, which containerd 1.6 turns into an opaque error. :class:`DecodeChecked`
wraps a ``grpc.aio.Server`` for registration only: every method handler registered through
it gets a deserializer that turns protobuf's ``DecodeError`` into a marker, and a behaviour
that aborts with INVALID_ARGUMENT when it sees the marker, before the servicer runs. The
generated ``add_*_to_server`` functions, health and reflection all register through it, so
the rule holds for every RPC without touching any servicer.

Only coroutine and async-generator behaviours (what ``grpc.aio`` servicers are) are
wrapped; a method registered with another kind of behaviour is left as it is.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Final

import grpc
from google.protobuf.message import DecodeError

__all__ = ["DecodeChecked", "checked_handler"]

_CODE: Final = grpc.StatusCode.INVALID_ARGUMENT


class _Undecodable:
    """Stands for a request whose bytes did not decode; ``why`` is protobuf's message."""

    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _checked_deserializer(deserialize: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        try:
            return deserialize(data)
        except DecodeError as e:
            return _Undecodable(str(e) or "malformed message")

    return run


async def _refuse(request: _Undecodable, context: grpc.aio.ServicerContext) -> None:
    await context.abort(_CODE, f"request cannot be decoded: {request.why}: invalid argument")


async def _checked_stream(
    requests: AsyncIterator[object], context: grpc.aio.ServicerContext
) -> AsyncIterator[object]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        yield request


def _checked_behavior(behavior: Callable[..., object], streaming_request: bool) -> object | None:
    """A behaviour that refuses undecodable requests first, or None if ``behavior`` is of
    a kind left alone (neither a coroutine nor an async generator function)."""

    async def arguments(request: object, context: grpc.aio.ServicerContext) -> object:
        if streaming_request:
            return _checked_stream(request, context)  # type: ignore[arg-type]
        if isinstance(request, _Undecodable):
            await _refuse(request, context)
        return request

    if inspect.isasyncgenfunction(behavior):

        async def generator(request: object, context: grpc.aio.ServicerContext) -> object:
            checked = await arguments(request, context)
            async for response in behavior(checked, context):
                yield response

        return generator
    if inspect.iscoroutinefunction(behavior):

        async def coroutine(request: object, context: grpc.aio.ServicerContext) -> object:
            checked = await arguments(request, context)
            return await behavior(checked, context)

        return coroutine
    return None


_KINDS: Final = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")


def checked_handler(handler: grpc.RpcMethodHandler | None) -> grpc.RpcMethodHandler | None:
    """``handler`` with decode failures answered INVALID_ARGUMENT (see the module doc)."""
    if handler is None or handler.request_deserializer is None:
        return handler
    for kind in _KINDS:
        behavior = getattr(handler, kind)
        if behavior is None:
            continue
        wrapped = _checked_behavior(behavior, kind.startswith("stream_"))
        if wrapped is None:
            return handler
        return handler._replace(  # a namedtuple in grpcio
            request_deserializer=_checked_deserializer(handler.request_deserializer),
            **{kind: wrapped},
        )
    return handler


class _CheckedGenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        return checked_handler(self._inner.service(handler_call_details))


class DecodeChecked:
    """The registration face of ``server``: what is added through it is decode-checked.

    Pass it wherever a ``grpc.aio.Server`` is expected by an ``add_*_to_server`` function
    (it forwards ``add_generic_rpc_handlers`` and ``add_registered_method_handlers``).
    """

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_CheckedGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler]
    ) -> None:
        checked = {name: checked_handler(h) for name, h in method_handlers.items()}
        self._server.add_registered_method_handlers(service_name, checked)
