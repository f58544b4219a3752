"""A lean gRPC server: unary gRPC over a hand-rolled asyncio HTTP/2 (h2c or TLS with ALPN h2).

Why hand-rolled, like the REST front end: grpcio's server spends most of a small request in its
own machinery (completion queues, polling threads handing events to the asyncio loop, several
tasks and awaits per call). Measured with a C load generator (h2load) on 2 shared cores, a
grpc.aio server that returns a canned answer without doing anything used 390-555 us of CPU per
call and topped out at 1100-2800 calls/s; the model server on grpc.aio used 474-565 us per call,
and on this transport, running the model with auth, metrics and drift on, 55-126 us
(benchmarks/README.md). This one parses frames on the event loop, decodes each distinct header
block with hpack once per connection (cached while the dynamic table is unchanged: clients repeat
the same block call after call), runs the servicer coroutine in one task per call and writes
every frame that is ready in one loop turn with one send per connection.

Scope: unary methods of one generated servicer (all of GRPCInferenceService is unary), identity
or gzip message encoding, HTTP/2 flow control both ways, PING, SETTINGS, RST_STREAM, GOAWAY and
graceful stop. Not done: server streaming, server push, deadlines (grpc-timeout is ignored).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import struct
import zlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, NoReturn

import grpc
from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, COMPRESSION_ERROR = 0x0, 0x1, 0x3, 0x6, 0x9
MAX_WINDOW = 2**31 - 1
OUR_MAX_FRAME = 1 << 20  # frames we accept (SETTINGS_MAX_FRAME_SIZE); the peer's is its own
MAX_HEADER_BLOCK = 64 << 10
MAX_STREAMS = 1024

_FRAME = struct.Struct(">BHBBL")  # 24-bit length as (high byte, low 16 bits), type, flags, stream


def _frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _FRAME.pack(n >> 16, n & 0xFFFF, kind, flags, stream) + payload


# HPACK encoding of what we send: no Huffman, no dynamic table, so every block is a constant or
# a concatenation of constants plus literal values.
def _int(value: int, prefix_bits: int, first: int) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = [first | limit]
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: bytes, value: bytes) -> bytes:
    """A literal header field without indexing, new name."""
    return b"\x00" + _int(len(name), 7, 0) + name + _int(len(value), 7, 0) + value


_STATUS_200 = b"\x88"  # static table entry 8
_CONTENT_TYPE = b"\x0f\x10" + _int(16, 7, 0) + b"application/grpc"  # name: static entry 31
RESPONSE_HEADERS = _STATUS_200 + _CONTENT_TYPE
OK_TRAILERS = _literal(b"grpc-status", b"0")
_OK_HEAD = _frame(HEADERS, END_HEADERS, 0, RESPONSE_HEADERS)  # stream id patched in per call


def _status_block(code: grpc.StatusCode, message: str) -> bytes:
    block = _literal(b"grpc-status", str(code.value[0]).encode())
    if message:
        block += _literal(b"grpc-message", _percent_encode(message))
    return block


def _percent_encode(message: str) -> bytes:
    out = bytearray()
    for byte in message.encode():
        if 0x20 <= byte <= 0x7E and byte != 0x25:
            out.append(byte)
        else:
            out += b"%%%02X" % byte
    return bytes(out)


class AbortError(Exception):
    """Raised by ``context.abort``: ends the call with this status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class Context:
    """The part of grpc.aio's ServicerContext that the servicers here use."""

    __slots__ = ("_metadata", "code", "details")

    def __init__(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self._metadata = metadata
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


class _Head:
    """What a call needs from its request headers, parsed once per distinct header block."""

    __slots__ = ("encoding", "metadata", "ok", "path")

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        method = path = None
        metadata: list[tuple[str, Any]] = []
        self.encoding = b"identity"
        content_type = b""
        for name, value in headers:
            if name[:1] == b":":
                if name == b":path":
                    path = value
                elif name == b":method":
                    method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-encoding":
                self.encoding = value
            elif name.endswith(b"-bin"):
                metadata.append((name.decode("latin-1"), base64.b64decode(value + b"==")))
            elif name != b"te" and not name.startswith(b"grpc-"):
                metadata.append((name.decode("latin-1"), value.decode("latin-1")))
        self.path = path.decode("latin-1") if path else ""
        self.ok = method == b"POST" and content_type.startswith(b"application/grpc")
        self.metadata = tuple(metadata)


class _Stream:
    __slots__ = ("body", "closed", "head", "id", "reset", "send_window", "size", "started", "too_large")

    def __init__(self, stream_id: int, head: _Head, send_window: int) -> None:
        self.id = stream_id
        self.head = head
        self.body: list[bytes] = []
        self.size = 0
        self.send_window = send_window
        self.closed = False  # reset by the client, or answered
        self.reset = False  # reset by the client
        self.started = False  # the call is running
        self.too_large = False


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class H2GrpcProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.methods = server.methods
        self.max_message = server.max_message
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.buf = b""
        self.preface = False
        self.decoder = Decoder()
        self.decoder.max_allowed_table_size = 4096
        self._cache: dict[bytes, _Head] = {}
        self._table_changes = 0
        table = self.decoder.header_table
        add = table.add

        def counted_add(name: bytes, value: bytes) -> None:
            self._table_changes += 1
            add(name, value)

        table.add = counted_add  # type: ignore[method-assign]
        self.streams: dict[int, _Stream] = {}
        self.last_stream = 0
        self.peer_window = 65535  # SETTINGS_INITIAL_WINDOW_SIZE of the peer: our send windows
        self.peer_max_frame = 16384
        self.conn_send_window = 65535
        self.recv_unacked = 0
        self.continuation: tuple[int, int, list[bytes]] | None = None  # stream, flags, fragments
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.blocked: list[tuple[_Stream, bytes, bytes]] = []  # waiting for send window
        self.active = 0  # calls being served
        self.going_away = False

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)
        settings = struct.pack(
            ">HLHLHLHL", 3, MAX_STREAMS, 4, MAX_WINDOW, 5, OUR_MAX_FRAME, 6, MAX_HEADER_BLOCK
        )
        self.out.append(_frame(SETTINGS, 0, 0, settings))
        self.out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", MAX_WINDOW - 65535)))
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)
        for stream in self.streams.values():
            stream.closed = True

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        try:
            if not self.preface:
                if len(buf) < len(PREFACE):
                    if not PREFACE.startswith(buf):
                        raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self.buf = buf
                    return
                if not buf.startswith(PREFACE):
                    raise _ConnectionError(PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.preface = True
                buf = buf[len(PREFACE) :]
            pos, end = 0, len(buf)
            while end - pos >= 9:
                high, low, kind, flags, stream = _FRAME.unpack_from(buf, pos)
                length = (high << 16) | low
                if length > OUR_MAX_FRAME:
                    raise _ConnectionError(FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                if end - pos - 9 < length:
                    break
                payload = buf[pos + 9 : pos + 9 + length]
                pos += 9 + length
                self._frame(kind, flags, stream & 0x7FFFFFFF, payload)
                if self.transport is None:
                    return
            self.buf = buf[pos:]
        except _ConnectionError as err:
            self._goaway(err.code, str(err))
            return
        self._flush()

    # frames --------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if self.continuation is not None and kind != CONTINUATION:
            raise _ConnectionError(PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == DATA:
            self._data(flags, sid, payload)
        elif kind == HEADERS:
            self._headers(flags, sid, payload)
        elif kind == CONTINUATION:
            if self.continuation is None or self.continuation[0] != sid:
                raise _ConnectionError(PROTOCOL_ERROR, "unexpected CONTINUATION")
            fragments = self.continuation[2]
            fragments.append(payload)
            if sum(map(len, fragments)) > MAX_HEADER_BLOCK:
                raise _ConnectionError(PROTOCOL_ERROR, "header block too large")
            if flags & END_HEADERS:
                stream_flags = self.continuation[1]
                self.continuation = None
                self._header_block(stream_flags, sid, b"".join(fragments))
        elif kind == SETTINGS:
            if sid:
                raise _ConnectionError(PROTOCOL_ERROR, "SETTINGS on a stream")
            if not flags & ACK:
                self._settings(payload)
        elif kind == WINDOW_UPDATE:
            if len(payload) != 4:
                raise _ConnectionError(FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
            increment = struct.unpack(">L", payload)[0] & 0x7FFFFFFF
            if sid == 0:
                self.conn_send_window += increment
                if self.conn_send_window > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "connection window overflow")
            elif sid in self.streams:
                self.streams[sid].send_window += increment
                if self.streams[sid].send_window > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "stream window overflow")
            if self.blocked:
                self._unblock()
        elif kind == PING:
            if len(payload) != 8:
                raise _ConnectionError(FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & ACK:
                self.out.append(_frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            stream_obj = self.streams.pop(sid, None)
            if stream_obj is not None:
                stream_obj.closed = stream_obj.reset = True
                self.blocked = [b for b in self.blocked if b[0] is not stream_obj]
        elif kind == GOAWAY:
            self.going_away = True
            self._close_if_idle()
        elif kind == PUSH_PROMISE:
            raise _ConnectionError(PROTOCOL_ERROR, "clients must not push")
        # PRIORITY and unknown frame types are ignored, as RFC 9113 asks

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, i)
            if key == 4:  # SETTINGS_INITIAL_WINDOW_SIZE: applies to open streams too
                if value > MAX_WINDOW:
                    raise _ConnectionError(FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == 5:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
        self.out.append(_frame(SETTINGS, ACK, 0))
        if self.blocked:
            self._unblock()

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & PADDED:
            if not payload:
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
        block = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(flags, sid, block)
        else:
            self.continuation = (sid, flags, [block])

    def _decode(self, block: bytes) -> _Head:
        # Clients repeat the same header block call after call. Decoding a block depends only on
        # the dynamic table, and a block that left the table as it was (indexed fields and
        # literals without indexing) decodes the same way until the table changes: cache those,
        # and forget the cache whenever a block changes the table (an insert or a size update).
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        changes, size = self._table_changes, self.decoder.header_table.maxsize
        try:
            head = _Head(self.decoder.decode(block, raw=True))
        except HPACKError as err:
            raise _ConnectionError(COMPRESSION_ERROR, f"bad header block: {err}") from None
        if changes != self._table_changes or size != self.decoder.header_table.maxsize:
            self._cache.clear()
        elif len(block) <= 1024:
            if len(self._cache) >= 64:
                self._cache.clear()
            self._cache[block] = head
        return head

    def _header_block(self, flags: int, sid: int, block: bytes) -> None:
        head = self._decode(block)  # always: the decoder's table must see every block
        stream = self.streams.get(sid)
        if stream is not None:  # trailers of a request: unary calls have none that matter
            if flags & END_STREAM:
                self._request_done(stream)
            return
        if sid % 2 == 0 or sid <= self.last_stream:
            if sid <= self.last_stream:
                return  # a stream we already closed or reset
            raise _ConnectionError(PROTOCOL_ERROR, "invalid stream id")
        self.last_stream = sid
        if self.going_away:
            self.out.append(_frame(RST_STREAM, 0, sid, struct.pack(">L", 7)))  # REFUSED_STREAM
            return
        stream = _Stream(sid, head, self.peer_window)
        self.streams[sid] = stream
        if flags & END_STREAM:
            self._request_done(stream)

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(PROTOCOL_ERROR, "DATA on stream 0")
        self.recv_unacked += len(payload)
        if self.recv_unacked > MAX_WINDOW // 2:
            self.out.append(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", self.recv_unacked)))
            self.recv_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.closed:
            return
        if flags & PADDED:
            if not payload or payload[0] >= len(payload):
                raise _ConnectionError(PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : len(payload) - payload[0]]
        stream.size += len(payload)
        if stream.size > self.max_message + 5:
            stream.too_large = True
        elif payload:
            stream.body.append(payload)
        # the stream window we gave (2**31 - 1) outlasts any message we accept: no stream updates
        if flags & END_STREAM:
            self._request_done(stream)

    # calls ---------------------------------------------------------------------------------
    def _request_done(self, stream: _Stream) -> None:
        if stream.started:
            return
        stream.started = True
        self.active += 1
        self.loop.create_task(self._serve(stream))

    async def _serve(self, stream: _Stream) -> None:
        try:
            message = await self._call(stream)
        except AbortError as err:
            self._send_status(stream, err.code, err.details)
        except _CallError as err:
            self._send_status(stream, err.code, err.details)
        except Exception as err:
            log.exception("error serving gRPC call on %s", stream.head.path)
            self._send_status(stream, grpc.StatusCode.UNKNOWN, f"Unexpected {type(err).__name__}: {err}")
        else:
            self._send_message(stream, message)
        finally:
            self.active -= 1
            if not any(b[0] is stream for b in self.blocked):
                self.streams.pop(stream.id, None)
            if self.going_away:
                self._close_if_idle()

    async def _call(self, stream: _Stream) -> bytes:
        head = stream.head
        if not head.ok:
            raise _CallError(grpc.StatusCode.UNIMPLEMENTED, "not a gRPC request (POST application/grpc)")
        entry = self.methods.get(head.path)
        if entry is None:
            raise _CallError(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if stream.too_large:
            raise _CallError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({stream.size - 5} vs. {self.max_message})",
            )
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        if len(body) < 5 or len(body) != 5 + int.from_bytes(body[1:5], "big"):
            raise _CallError(grpc.StatusCode.INTERNAL, "expected exactly one length-prefixed request message")
        payload = body[5:]
        if body[0]:
            payload = self._decompress(payload, head.encoding)
        try:
            request = entry[0](payload)
        except Exception as err:
            raise _CallError(grpc.StatusCode.INTERNAL, f"could not parse the request: {err}") from None
        context = Context(head.metadata)
        try:
            response = await entry[1](request, context)
        except NotImplementedError:  # the generated servicer's default for a method not written
            raise _CallError(
                context.code or grpc.StatusCode.UNIMPLEMENTED, context.details or "Method not implemented!"
            ) from None
        return bytes(response.SerializeToString())

    def _decompress(self, payload: bytes, encoding: bytes) -> bytes:
        if encoding not in (b"gzip", b"deflate"):
            name = encoding.decode("latin-1")
            raise _CallError(grpc.StatusCode.UNIMPLEMENTED, f"message encoding '{name}' not supported")
        d = zlib.decompressobj(31 if encoding == b"gzip" else 15)
        try:
            out = d.decompress(payload, self.max_message + 1)
        except zlib.error as err:
            raise _CallError(grpc.StatusCode.INTERNAL, f"bad {encoding.decode()} message: {err}") from None
        if len(out) > self.max_message:
            raise _CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, "decompressed message larger than max")
        return out

    # writing -------------------------------------------------------------------------------
    def _send_message(self, stream: _Stream, message: bytes) -> None:
        if stream.closed or self.transport is None:
            return
        stream.closed = True
        sid = stream.id
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        n = len(data)
        head = _frame(HEADERS, END_HEADERS, sid, RESPONSE_HEADERS)
        if n <= self.conn_send_window and n <= stream.send_window and n <= self.peer_max_frame:
            self.conn_send_window -= n
            self.out.append(
                head
                + _FRAME.pack(n >> 16, n & 0xFFFF, DATA, 0, sid)
                + data
                + _frame(HEADERS, END_HEADERS | END_STREAM, sid, OK_TRAILERS)
            )
        else:
            self.out.append(head)
            self.blocked.append((stream, data, OK_TRAILERS))
            self._unblock()
        self._schedule_flush()

    def _send_status(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        if stream.closed or self.transport is None:
            return
        stream.closed = True
        block = RESPONSE_HEADERS + _status_block(code, details)
        self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, block))
        self._schedule_flush()

    def _unblock(self) -> None:
        """Send what the flow-control windows now allow of answers larger than them."""
        still: list[tuple[_Stream, bytes, bytes]] = []
        for stream, data, trailers in self.blocked:
            if self.transport is None:
                return
            while data:
                n = min(len(data), self.conn_send_window, stream.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                self.out.append(_frame(DATA, 0, stream.id, data[:n]))
                data = data[n:]
                self.conn_send_window -= n
                stream.send_window -= n
            if data:
                still.append((stream, data, trailers))
            else:
                self.out.append(_frame(HEADERS, END_HEADERS | END_STREAM, stream.id, trailers))
                self.streams.pop(stream.id, None)
        self.blocked = still
        self._schedule_flush()
        if self.going_away and not still:
            self._close_if_idle()

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def _goaway(self, code: int, message: str) -> None:
        if self.transport is None:
            return
        payload = struct.pack(">LL", self.last_stream, code) + message.encode()[:200]
        self.out.append(_frame(GOAWAY, 0, 0, payload))
        self._flush()
        self.transport.close()
        self.transport = None

    def go_away(self) -> None:
        """Graceful: refuse new streams, finish the open ones, then close."""
        if self.transport is None or self.going_away:
            return
        self.going_away = True
        self.out.append(_frame(GOAWAY, 0, 0, struct.pack(">LL", self.last_stream, NO_ERROR)))
        self._flush()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.transport is not None and not self.active and not self.blocked:
            self._flush()
            self.transport.close()
            self.transport = None


class _CallError(Exception):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class H2GrpcServer:
    """The listening server; ``stop(grace)`` as grpc.aio's."""

    def __init__(self, methods: Methods, max_message: int) -> None:
        self.methods = methods
        self.max_message = max_message
        self.connections: set[H2GrpcProtocol] = set()
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        """Listen on host:port (0: any free port), TLS when given a context; returns the port."""
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])  # gRPC clients insist on h2 by ALPN
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: H2GrpcProtocol(self), host, port, backlog=1024, ssl=ssl_context
        )
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace: float | None) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.go_away()
        deadline = asyncio.get_running_loop().time() + (grace or 0)
        while any(c.active for c in self.connections) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
                conn.transport = None
        self.connections.clear()
