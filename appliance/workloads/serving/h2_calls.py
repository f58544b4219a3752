"""What a unary gRPC call is to the servicer, apart from HTTP/2: context, method table, message.

Why separate from grpc_h2: the transport deals in frames and streams; this is the other side of
the line, the part of grpc.aio's server API the servicers use (``Context``, ``abort``), the table
of methods by HTTP/2 path, and one request message taken out of its length-prefixed (possibly
gzip) framing and parsed, with the status code a client gets for each way that can fail.
"""

from __future__ import annotations

import zlib
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

import grpc

from appliance.workloads.serving.peer import Peer


class AbortError(Exception):
    """Raised by ``context.abort``: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """The part of grpc.aio's ServicerContext that the servicers here use."""

    __slots__ = ("_metadata", "code", "details", "peer")

    def __init__(self, metadata: tuple[tuple[str, Any], ...], peer: Peer | None = None) -> None:
        self._metadata = metadata
        self.peer = peer
        """Who is at the other end of the connection (not grpc.aio's: its peer() is a string)."""
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        raise AbortError(code, details)


Handler = Callable[[Any, Context], Awaitable[Any]]
# path -> (request deserializer, handler)
Methods = dict[str, tuple[Callable[[bytes], Any], Handler]]
# (method path, authorization header or None) -> None, or raises an exception with ``grpc_code``
# and ``message`` (errors.InferenceError) to refuse the call before its body is read
Authorize = Callable[[str, str | None], None]


def methods_of(servicer: Any, service_descriptor: Any, message_classes: Any) -> Methods:
    """The unary methods of a generated servicer, by their HTTP/2 path."""
    out: Methods = {}
    for method in service_descriptor.methods:
        if method.client_streaming or method.server_streaming:
            continue  # unary only: a streaming method answers UNIMPLEMENTED
        request_class = getattr(message_classes, method.input_type.name)
        path = f"/{service_descriptor.full_name}/{method.name}"
        out[path] = (request_class.FromString, getattr(servicer, method.name))
    return out


class CallError(Exception):
    """A call ends with this status (bad framing, encoding or message; a method not written)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def request_message(body: bytes, encoding: bytes, max_message: int) -> bytes:
    """The one message in a unary request body (gRPC's 5-byte prefix, then the bytes)."""
    if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
        raise CallError(grpc.StatusCode.INTERNAL, "expected exactly one length-prefixed request message")
    payload = body[5:]
    if body[0]:
        payload = decompress(payload, encoding, max_message)
    return payload


def decompress(payload: bytes, encoding: bytes, max_message: int) -> bytes:
    """Inflate a compressed message, never past ``max_message`` bytes."""
    if encoding not in (b"gzip", b"deflate"):
        name = encoding.decode("latin-1")
        raise CallError(grpc.StatusCode.UNIMPLEMENTED, f"message encoding '{name}' not supported")
    d = zlib.decompressobj(31 if encoding == b"gzip" else 15)
    try:
        out = d.decompress(payload, max_message + 1)
    except zlib.error as err:
        raise CallError(grpc.StatusCode.INTERNAL, f"bad {encoding.decode()} message: {err}") from None
    if len(out) > max_message:
        raise CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "decompressed message larger than max")
    return out


async def run_call(
    entry: tuple[Callable[[bytes], Any], Handler], payload: bytes, metadata: Any, peer: Peer | None = None
) -> bytes:
    """Parse the request, run the servicer's method, return the serialized answer."""
    try:
        request = entry[0](payload)
    except Exception as err:
        raise CallError(grpc.StatusCode.INTERNAL, f"could not parse the request: {err}") from None
    context = Context(metadata, peer)
    try:
        response = await entry[1](request, context)
    except NotImplementedError:  # the generated servicer's default for a method not written
        raise CallError(
            context.code or grpc.StatusCode.UNIMPLEMENTED, context.details or "Method not implemented!"
        ) from None
    return bytes(response.SerializeToString())
