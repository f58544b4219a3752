"""A lean gRPC server: unary gRPC over a hand-rolled asyncio HTTP/2 (h2c or TLS with ALPN h2).

Why hand-rolled, like the REST front end: grpcio's server spends most of a small request in its
own machinery (completion queues, polling threads handing events to the asyncio loop, several
tasks and awaits per call). Measured with a C load generator (h2load) on 2 shared cores, a
grpc.aio server that returns a canned answer without doing anything used 390-555 us of CPU per
call; the model server on grpc.aio used 474-565 us per call, and on this transport, running the
model with auth, metrics and drift on, 55-126 us (benchmarks/README.md). python-hyper's ``h2``
state machine was measured too, for the framing alone (one unary exchange fed to
``H2Connection.receive_data`` and answered with ``send_headers``/``send_data``): 118 us of CPU per
call, more than this whole server spends on a call, so the frame handling stays here and follows
RFC 9113 itself. This one parses frames on the event loop, decodes each distinct header block
with hpack once per connection (cached while the dynamic table is unchanged: clients repeat the
same block call after call), runs the servicer coroutine in one task per call and writes every
frame that is ready in one loop turn with one send per connection.

Conformance: h2spec 2.6 passes 146 of 146 (tests/integration/test_grpc_conformance.py). Stream
states are tracked (frames on idle streams are PROTOCOL_ERROR, DATA or HEADERS on a half-closed or
closed stream STREAM_CLOSED; frames on streams this server reset are ignored, as RFC 9113 §5.4.2
asks), SETTINGS/PING/RST_STREAM/WINDOW_UPDATE/PRIORITY are validated, and request heads follow
§8 (h2_wire.Head). A request that is not gRPC gets a plain 405 or 415 with a body.

Limits (``ServerLimits``, one object with the REST front end; docs/security.md lists them):

- ``max_header_bytes``: advertised as SETTINGS_MAX_HEADER_LIST_SIZE; a header block whose
  compressed bytes or decoded size exceed it ends the connection with ENHANCE_YOUR_CALM (the HPACK
  state cannot be kept in step once a block is abandoned). ``max_header_count``: more fields get a
  RESOURCE_EXHAUSTED answer on that stream.
- ``max_continuation_frames``: more CONTINUATION frames in one block end the connection with
  ENHANCE_YOUR_CALM; their bytes are summed as they come (no quadratic work on empty ones).
- ``max_concurrent_streams``: advertised and enforced, REFUSED_STREAM past it.
- ``max_body_bytes``: a message larger (as received, or decompressed) gets RESOURCE_EXHAUSTED as
  soon as it is seen; the rest of its DATA is discarded.
- ``max_connection_buffer_bytes``: the connection's receive window. Body bytes are given back to
  the client's window only when a call has taken them (or they were discarded), so a connection
  never holds more buffered request bytes than this; DATA past the window is FLOW_CONTROL_ERROR.
- Authentication is decided from the HEADERS frame (``authorize(path, authorization)``): a call
  without a valid token gets a trailers-only UNAUTHENTICATED answer at once and its DATA is
  discarded, never buffered or inflated.
- ``header_timeout_s``: the preface and first SETTINGS, and every header block (HEADERS through
  its last CONTINUATION), must arrive within it, or the connection is closed (slowloris).
  ``body_timeout_s``: a request body not complete within it gets DEADLINE_EXCEEDED.
  ``idle_timeout_s``: a connection with no call for that long gets GOAWAY and is closed.
- ``max_connections``: a connection past it gets GOAWAY ENHANCE_YOUR_CALM and is closed at once.
- ``max_pending_write_bytes``: the transport's write high-water mark; while a connection has more
  unsent answer bytes the server stops reading from it (a client that never reads cannot make
  the server queue without bound: at most its open streams' answers wait).
- RST_STREAM from the client cancels the call's task; so does a lost connection. Resets are
  rate-limited (rapid reset): 1000 at once, then 33 a second, else GOAWAY ENHANCE_YOUR_CALM.

Modules: this one is the connection (frames, stream states, flow control, limits, timers);
h2_wire holds the wire constants, the HPACK we send and the request-head rules; h2_calls the
servicer's side of a call (context, method table, message framing and gzip).

Scope: unary methods of one generated servicer (all of GRPCInferenceService is unary), identity
or gzip message encoding, HTTP/2 flow control both ways, graceful stop. Not done: server
streaming, server push, deadlines (grpc-timeout is ignored).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import struct
from collections.abc import Collection
from typing import cast

import grpc
from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from appliance.workloads.serving import h2_wire as w
from appliance.workloads.serving.h2_calls import (
    AbortError,
    Authorize,
    CallError,
    Context,
    Handler,
    Methods,
    methods_of,
    request_message,
    run_call,
)
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.peer import Peer

# the servicer side lives in h2_calls; these names are grpc_h2's API as before
__all__ = ["AbortError", "Authorize", "Context", "H2GrpcServer", "Handler", "Methods", "methods_of"]

log = logging.getLogger(__name__)

OUR_MAX_FRAME = 1 << 20  # frames we accept (SETTINGS_MAX_FRAME_SIZE); the peer's is its own
RESET_MEMORY = 1024  # stream ids we reset, remembered so that their frames in flight are ignored
SKIP_MEMORY = 16  # ranges of stream ids a client skipped (never opened), remembered
CACHED_BLOCKS = 64  # decoded header blocks kept per connection (each cache), for repeated requests
CACHED_BLOCK_BYTES = 1024  # larger blocks are decoded every time (they rarely repeat)
# Rapid reset (CVE-2023-44487): streams a client opens and resets cost work and never count
# against the concurrent-stream cap. As nghttp2 does, a token bucket: 1000 resets at once, then
# 33 a second; past it GOAWAY ENHANCE_YOUR_CALM.
RESET_BURST, RESET_RATE = 1000.0, 33.0
SMALL_MESSAGE = 1024  # the largest request message of the methods anyone may call (``small_calls``)
LINGER_S = 1.0  # after a GOAWAY for an error: read and drop for this long, then close


class _Stream:
    __slots__ = (
        "body",
        "discard",
        "flow",
        "head",
        "id",
        "local_closed",
        "opened",
        "received",
        "remote_closed",
        "send_window",
        "task",
    )

    def __init__(self, stream_id: int, head: w.Head, send_window: int, opened: float) -> None:
        self.id = stream_id
        self.head = head
        self.body: list[bytes] = []
        self.received = 0  # DATA payload bytes (content-length and message size checks)
        self.flow = 0  # flow-controlled bytes held for this stream, given back when released
        self.send_window = send_window
        self.remote_closed = False  # the client sent END_STREAM
        self.local_closed = False  # we sent END_STREAM (or reset it)
        self.discard = False  # answered early or not gRPC: DATA is counted, not kept
        self.task: asyncio.Task[None] | None = None
        self.opened = opened


class _ConnectionError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class _StreamError(Exception):
    def __init__(self, stream: int, code: int, message: str) -> None:
        super().__init__(message)
        self.stream = stream
        self.code = code


class H2GrpcProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: H2GrpcServer) -> None:
        self.server = server
        self.methods = server.methods
        self.limits = limits = server.limits
        self.max_message = limits.max_body_bytes
        self.authorize = server.authorize
        self.small_calls = server.small_calls
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.loop = asyncio.get_running_loop()
        self.born = self.loop.time()
        self.buf = b""
        self.parts: list[bytes] = []
        """The pieces of a frame still arriving, kept apart until ``self.need`` bytes are in: joined
        once, not copied again with every piece (a 1 MiB frame sent a few bytes at a time would
        otherwise cost the event loop a copy of all that came before for each)."""
        self.held = 0  # bytes in ``parts``
        self.need = 0  # bytes the frame in ``parts`` takes, its 9-byte head included
        self.preface = False
        self.settled = False  # preface and first SETTINGS received
        self.dead = False  # connection error sent or connection lost: nothing more is read
        self.decoder = Decoder(max_header_list_size=limits.max_header_bytes)
        self.decoder.max_allowed_table_size = 4096
        self._cache: dict[bytes, w.Head] = {}  # blocks that refer to the dynamic table
        self._free: dict[bytes, tuple[w.Head, tuple[tuple[bytes, bytes], ...]]] = {}
        self._table_changes = 0
        table = self.decoder.header_table
        add = table.add

        def counted_add(name: bytes, value: bytes) -> None:
            self._table_changes += 1
            add(name, value)

        table.add = counted_add  # type: ignore[method-assign]
        self.streams: dict[int, _Stream] = {}
        # A stream id at or below last_stream that is not open was closed, unless the client
        # skipped it (rare: clients count up by two) or we reset it (its frames are ignored).
        # Kept that way round so that a normal call adds nothing to either.
        self.reset_ids: dict[int, None] = {}
        self.skipped: list[tuple[int, int]] = []
        self.last_stream = 0
        self.peer_window = w.DEFAULT_WINDOW  # SETTINGS_INITIAL_WINDOW_SIZE of the peer
        self.peer_max_frame = w.DEFAULT_MAX_FRAME
        self.conn_send_window = w.DEFAULT_WINDOW
        self.recv_target = min(limits.max_connection_buffer_bytes, w.MAX_WINDOW)
        self.recv_window = w.DEFAULT_WINDOW  # what the client may still send before an update
        self.recv_release = 0  # bytes taken or dropped, not yet given back
        # header block in progress (stream, flags, fragments), its bytes, frames and start
        self.continuation: tuple[int, int, list[bytes]] | None = None
        self.cont_bytes = 0
        self.cont_frames = 0
        self.cont_since = 0.0
        self.out: list[bytes] = []
        self.flush_scheduled = False
        self.blocked: list[tuple[_Stream, bytes, bytes]] = []  # waiting for send window
        self.blocked_bytes = 0
        self.waiting: list[_Stream] = []  # whole requests not started while answers are blocked
        self.active = 0  # calls being served
        self.calls = 0  # streams opened, ever (the idle timer's activity mark)
        self.going_away = False
        self.reset_budget, self.reset_at = RESET_BURST, self.born
        self.write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._idle_mark = (-1, 0.0)

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport
        self.peer = Peer.of(transport)
        limits = self.limits
        if len(self.server.connections) >= limits.max_connections:
            self.out.append(w.frame(w.SETTINGS, 0, 0))
            self._fail(w.ENHANCE_YOUR_CALM, "too many connections")
            return
        self.server.connections.add(self)
        transport.set_write_buffer_limits(high=limits.max_pending_write_bytes)
        settings = struct.pack(
            ">HLHLHLHL",
            w.MAX_CONCURRENT_STREAMS,
            limits.max_concurrent_streams,
            w.INITIAL_WINDOW_SIZE,
            w.MAX_WINDOW,
            w.MAX_FRAME_SIZE,
            OUR_MAX_FRAME,
            w.MAX_HEADER_LIST_SIZE,
            limits.max_header_bytes,
        )
        self.out.append(w.frame(w.SETTINGS, 0, 0, settings))
        if self.recv_target > w.DEFAULT_WINDOW:
            self.out.append(w.frame(w.WINDOW_UPDATE, 0, 0, w.U32.pack(self.recv_target - w.DEFAULT_WINDOW)))
            self.recv_window = self.recv_target
        self._flush()
        self._arm(self._tick())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.dead = True
        self.server.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        for stream in self.streams.values():
            stream.local_closed = True
            if stream.task is not None:
                stream.task.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.transport is not None and not self.dead:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.dead:
            return
        if self.parts:
            self.parts.append(data)
            self.held += len(data)
            if self.held < self.need:
                return
            buf = b"".join(self.parts)
            self.parts.clear()
        else:
            buf = self.buf + data if self.buf else data
        try:
            if not self.preface:
                if len(buf) < len(w.PREFACE):
                    if not w.PREFACE.startswith(buf):
                        raise _ConnectionError(w.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                    self.buf = buf
                    return
                if not buf.startswith(w.PREFACE):
                    raise _ConnectionError(w.PROTOCOL_ERROR, "not an HTTP/2 connection preface")
                self.preface = True
                buf = buf[len(w.PREFACE) :]
            pos, end = 0, len(buf)
            while end - pos >= 9:
                high, low, kind, flags, stream = w.FRAME.unpack_from(buf, pos)
                length = (high << 16) | low
                if length > OUR_MAX_FRAME:
                    raise _ConnectionError(w.FRAME_SIZE_ERROR, "frame larger than SETTINGS_MAX_FRAME_SIZE")
                if end - pos - 9 < length:
                    break
                payload = buf[pos + 9 : pos + 9 + length]
                pos += 9 + length
                try:
                    self._frame(kind, flags, stream & 0x7FFFFFFF, payload)
                except _StreamError as err:
                    self._reset(err.stream, err.code)
                if self.dead:
                    return
            self._keep(buf[pos:] if pos else buf)
        except _ConnectionError as err:
            self._fail(err.code, str(err))
            return
        self._flush()

    def _keep(self, rest: bytes) -> None:
        """Hold the start of a frame not all in yet: a head and part of a payload go to ``parts``
        until the whole frame is in; less than a head, to ``buf``."""
        if len(rest) < 9:
            self.buf = rest
            return
        self.buf = b""
        self.parts.append(rest)
        self.held = len(rest)
        self.need = 9 + int.from_bytes(rest[:3], "big")

    # frames --------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, sid: int, payload: bytes) -> None:
        if not self.settled:
            if kind != w.SETTINGS or flags & w.ACK:
                raise _ConnectionError(w.PROTOCOL_ERROR, "the first frame must be SETTINGS")
            self.settled = True
        if self.continuation is not None and kind != w.CONTINUATION:
            raise _ConnectionError(w.PROTOCOL_ERROR, "expected CONTINUATION")
        if kind == w.DATA:
            self._data(flags, sid, payload)
        elif kind == w.HEADERS:
            self._headers(flags, sid, payload)
        elif kind == w.CONTINUATION:
            self._continuation(flags, sid, payload)
        elif kind == w.SETTINGS:
            if sid:
                raise _ConnectionError(w.PROTOCOL_ERROR, "SETTINGS on a stream")
            if flags & w.ACK:
                if payload:
                    raise _ConnectionError(w.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            else:
                self._settings(payload)
        elif kind == w.WINDOW_UPDATE:
            self._window_update(sid, payload)
        elif kind == w.PING:
            if sid:
                raise _ConnectionError(w.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise _ConnectionError(w.FRAME_SIZE_ERROR, "PING of the wrong size")
            if not flags & w.ACK:
                self.out.append(w.frame(w.PING, w.ACK, 0, payload))
        elif kind == w.RST_STREAM:
            self._rst_stream(sid, payload)
        elif kind == w.PRIORITY:
            if sid == 0:
                raise _ConnectionError(w.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                raise _StreamError(sid, w.FRAME_SIZE_ERROR, "PRIORITY of the wrong size")
            if w.U32.unpack_from(payload)[0] & 0x7FFFFFFF == sid:
                raise _StreamError(sid, w.PROTOCOL_ERROR, "stream depends on itself")
        elif kind == w.GOAWAY:
            if sid:
                raise _ConnectionError(w.PROTOCOL_ERROR, "GOAWAY on a stream")
            self.going_away = True
            self._close_if_idle()
        elif kind == w.PUSH_PROMISE:
            raise _ConnectionError(w.PROTOCOL_ERROR, "clients must not push")
        # unknown frame types are ignored, as RFC 9113 asks

    def _state_error(self, sid: int, what: str) -> bool:
        """For a frame on a stream that is not open: raise, or True when it is to be ignored."""
        if sid == 0:
            raise _ConnectionError(w.PROTOCOL_ERROR, f"{what} on stream 0")
        if sid > self.last_stream or sid % 2 == 0:
            raise _ConnectionError(w.PROTOCOL_ERROR, f"{what} on an idle stream")
        if sid in self.reset_ids:
            return True  # in flight before our RST_STREAM reached the client
        if any(low <= sid < high for low, high in self.skipped):
            raise _ConnectionError(w.PROTOCOL_ERROR, f"{what} on a stream that was never opened")
        raise _ConnectionError(w.STREAM_CLOSED, f"{what} on a closed stream")

    def _settings(self, payload: bytes) -> None:
        if len(payload) % 6:
            raise _ConnectionError(w.FRAME_SIZE_ERROR, "SETTINGS of the wrong size")
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HL", payload, i)
            if key == w.INITIAL_WINDOW_SIZE:  # applies to open streams too
                if value > w.MAX_WINDOW:
                    raise _ConnectionError(w.FLOW_CONTROL_ERROR, "initial window too large")
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > w.MAX_WINDOW:
                        raise _ConnectionError(w.FLOW_CONTROL_ERROR, "stream window overflow")
            elif key == w.MAX_FRAME_SIZE:
                if not 16384 <= value <= 16777215:
                    raise _ConnectionError(w.PROTOCOL_ERROR, "invalid SETTINGS_MAX_FRAME_SIZE")
                self.peer_max_frame = value
            elif key == w.ENABLE_PUSH and value > 1:
                raise _ConnectionError(w.PROTOCOL_ERROR, "invalid SETTINGS_ENABLE_PUSH")
        self.out.append(w.frame(w.SETTINGS, w.ACK, 0))
        if self.blocked:
            self._unblock()

    def _window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise _ConnectionError(w.FRAME_SIZE_ERROR, "WINDOW_UPDATE of the wrong size")
        increment = w.U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise _ConnectionError(w.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.conn_send_window += increment
            if self.conn_send_window > w.MAX_WINDOW:
                raise _ConnectionError(w.FLOW_CONTROL_ERROR, "connection window overflow")
        else:
            stream = self.streams.get(sid)
            if stream is None:
                if sid > self.last_stream or sid % 2 == 0:
                    raise _ConnectionError(w.PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
                return  # closed: allowed while our END_STREAM or RST_STREAM is in flight
            if not increment:
                raise _StreamError(sid, w.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            stream.send_window += increment
            if stream.send_window > w.MAX_WINDOW:
                raise _StreamError(sid, w.FLOW_CONTROL_ERROR, "stream window overflow")
        if self.blocked:
            self._unblock()

    def _rst_stream(self, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(w.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise _ConnectionError(w.FRAME_SIZE_ERROR, "RST_STREAM of the wrong size")
        stream = self.streams.get(sid)
        if stream is None:
            if sid > self.last_stream or sid % 2 == 0:
                raise _ConnectionError(w.PROTOCOL_ERROR, "RST_STREAM on an idle stream")
            return
        now = self.loop.time()
        self.reset_budget = min(RESET_BURST, self.reset_budget + (now - self.reset_at) * RESET_RATE) - 1
        self.reset_at = now
        if self.reset_budget < 0:
            raise _ConnectionError(w.ENHANCE_YOUR_CALM, "too many streams reset by the client")
        stream.local_closed = True
        self._forget(stream, reset_by_us=False)
        if stream.task is not None:
            stream.task.cancel()  # the call's work stops with it

    def _headers(self, flags: int, sid: int, payload: bytes) -> None:
        if sid == 0:
            raise _ConnectionError(w.PROTOCOL_ERROR, "HEADERS on stream 0")
        start, end = 0, len(payload)
        if flags & w.PADDED:
            if not payload:
                raise _ConnectionError(w.PROTOCOL_ERROR, "bad padding")
            start, end = 1, end - payload[0]
        if flags & w.PRIORITY_FLAG:
            if end - start >= 5 and w.U32.unpack_from(payload, start)[0] & 0x7FFFFFFF == sid:
                raise _ConnectionError(w.PROTOCOL_ERROR, "stream depends on itself")
            start += 5
        if start > end:
            raise _ConnectionError(w.PROTOCOL_ERROR, "bad padding")
        block = payload[start:end]
        if len(block) > self.limits.max_header_bytes:
            raise _ConnectionError(w.ENHANCE_YOUR_CALM, "header block larger than max_header_bytes")
        if flags & w.END_HEADERS:
            self._header_block(flags, sid, block)
        else:
            self.continuation = (sid, flags, [block])
            self.cont_bytes = len(block)
            self.cont_frames = 0
            self.cont_since = self.loop.time()

    def _continuation(self, flags: int, sid: int, payload: bytes) -> None:
        if self.continuation is None or self.continuation[0] != sid:
            raise _ConnectionError(w.PROTOCOL_ERROR, "unexpected CONTINUATION")
        self.cont_frames += 1
        self.cont_bytes += len(payload)
        if self.cont_frames > self.limits.max_continuation_frames:
            raise _ConnectionError(w.ENHANCE_YOUR_CALM, "too many CONTINUATION frames")
        if self.cont_bytes > self.limits.max_header_bytes:
            raise _ConnectionError(w.ENHANCE_YOUR_CALM, "header block larger than max_header_bytes")
        fragments = self.continuation[2]
        fragments.append(payload)
        if flags & w.END_HEADERS:
            stream_flags = self.continuation[1]
            self.continuation = None
            self._header_block(stream_flags, sid, b"".join(fragments))

    def _decode(self, block: bytes) -> w.Head:
        # Clients repeat the same header block call after call, and decoding it costs more than
        # the rest of a small call. Two caches, by what a block's decoding depends on:
        # - ``_free``: blocks that refer only to the static table and literals decode the same
        #   whatever the dynamic table holds; kept with the fields they add to the table, added
        #   again on every hit so that the table stays what the client's encoder expects;
        # - ``_cache``: blocks that refer to dynamic entries and leave the table as it was; they
        #   decode the same until the table changes, so forgotten at every change.
        free = self._free.get(block)
        if free is not None:
            head, inserts = free
            if inserts:
                add = self.decoder.header_table.add
                for name, value in inserts:
                    add(name, value)
                self._cache.clear()
            return head
        cached = self._cache.get(block)
        if cached is not None:
            return cached
        changes, size = self._table_changes, self.decoder.header_table.maxsize
        try:
            fields = list(self.decoder.decode(block, raw=True))
        except OversizedHeaderListError:
            raise _ConnectionError(w.ENHANCE_YOUR_CALM, "header list larger than max_header_bytes") from None
        except HPACKError as err:
            raise _ConnectionError(w.COMPRESSION_ERROR, f"bad header block: {err}") from None
        head = w.Head(fields)
        changed = changes != self._table_changes or size != self.decoder.header_table.maxsize
        if changed:
            self._cache.clear()
        if len(block) > CACHED_BLOCK_BYTES:
            return head
        positions = w.context_free_inserts(block)
        if positions is not None:
            if len(self._free) >= CACHED_BLOCKS:
                self._free.clear()
            self._free[block] = (head, tuple((fields[i][0], fields[i][1]) for i in positions))
        elif not changed:
            if len(self._cache) >= CACHED_BLOCKS:
                self._cache.clear()
            self._cache[block] = head
        return head

    def _header_block(self, flags: int, sid: int, block: bytes) -> None:
        head = self._decode(block)  # always: the decoder's table must see every block
        stream = self.streams.get(sid)
        if stream is not None:  # trailers
            if stream.remote_closed:
                raise _StreamError(sid, w.STREAM_CLOSED, "HEADERS on a half-closed stream")
            if not flags & w.END_STREAM or head.field_error or head.has_pseudo:
                raise _StreamError(sid, w.PROTOCOL_ERROR, "malformed trailers")
            self._end_stream(stream)
            return
        if sid <= self.last_stream or sid % 2 == 0:
            if sid % 2 and self._state_error(sid, "HEADERS"):
                return
            raise _ConnectionError(w.PROTOCOL_ERROR, "invalid stream id")
        if sid > self.last_stream + 2:
            self.skipped.append((self.last_stream + 1, sid))
            del self.skipped[:-SKIP_MEMORY]
        self.last_stream = sid
        self.calls += 1
        if head.field_error or head.request_error:
            raise _StreamError(sid, w.PROTOCOL_ERROR, head.field_error or head.request_error)
        if self.going_away or len(self.streams) >= self.limits.max_concurrent_streams:
            raise _StreamError(sid, w.REFUSED_STREAM, "too many streams")
        stream = _Stream(sid, head, self.peer_window, self.loop.time())
        self.streams[sid] = stream
        if not head.grpc:
            stream.discard = True  # answered (405/415) when the request ends
        else:
            early = self._refusal(head)
            if early is not None:
                stream.discard = True
                stream.remote_closed = bool(flags & w.END_STREAM)
                self._send_status(stream, *early)
                return
        if flags & w.END_STREAM:
            self._end_stream(stream)

    def _max_message(self, head: w.Head) -> int:
        return SMALL_MESSAGE if head.path in self.small_calls else self.max_message

    def _refusal(self, head: w.Head) -> tuple[grpc.StatusCode, str] | None:
        """What a gRPC call is refused with before its body is read, if anything."""
        if head.count > self.limits.max_header_count:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"{head.count} header fields, more than max_header_count ({self.limits.max_header_count})"
            )
        if head.path not in self.methods:
            return grpc.StatusCode.UNIMPLEMENTED, "Method not found!"
        if self.authorize is not None:
            try:
                self.authorize(head.path, head.authorization)
            except Exception as err:
                code = getattr(err, "grpc_code", None)
                if isinstance(code, grpc.StatusCode):
                    return code, str(getattr(err, "message", err))
                log.exception("the authorization check failed on %s", head.path)
                return grpc.StatusCode.INTERNAL, "the authorization check failed (see the server log)"
        return None

    def _data(self, flags: int, sid: int, payload: bytes) -> None:
        n = len(payload)
        self.recv_window -= n
        if self.recv_window < 0:
            raise _ConnectionError(w.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        stream = self.streams.get(sid)
        if stream is None or stream.remote_closed:
            self._release(n)
            if stream is not None:
                raise _StreamError(sid, w.STREAM_CLOSED, "DATA on a half-closed stream")
            self._state_error(sid, "DATA")
            return
        if flags & w.PADDED:
            if not payload or payload[0] >= n:
                raise _ConnectionError(w.PROTOCOL_ERROR, "bad padding")
            payload = payload[1 : n - payload[0]]
        stream.received += len(payload)
        limit = stream.head.content_length
        if limit is not None and stream.received > limit:
            self._release(n)
            raise _StreamError(sid, w.PROTOCOL_ERROR, "DATA longer than content-length")
        largest = self._max_message(stream.head)
        if stream.discard:
            self._release(n)
        elif stream.received > largest + 5:
            self._release(n + stream.flow)
            stream.flow = 0
            stream.body.clear()
            stream.discard = True
            self._send_status(
                stream,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({stream.received - 5}+ vs. {largest})",
            )
        else:
            stream.flow += n
            if payload:
                stream.body.append(payload)
        if flags & w.END_STREAM:
            self._end_stream(stream)

    def _end_stream(self, stream: _Stream) -> None:
        limit = stream.head.content_length
        if limit is not None and stream.received != limit:
            raise _StreamError(stream.id, w.PROTOCOL_ERROR, "DATA shorter than content-length")
        stream.remote_closed = True
        if stream.local_closed:  # answered early; the client has now finished too
            self._forget(stream, reset_by_us=False)
        elif not stream.head.grpc:
            self._send_http_error(stream)
        elif self.blocked_bytes > self.limits.max_pending_write_bytes:
            self.waiting.append(stream)  # started when the client's windows let answers out
        else:
            self._start(stream)

    def _start(self, stream: _Stream) -> None:
        if stream.task is None and not stream.local_closed:
            self.active += 1
            stream.task = self.loop.create_task(self._serve(stream))

    # flow control and stream bookkeeping -----------------------------------------------------
    def _release(self, n: int) -> None:
        """Give ``n`` received bytes back to the client's window (in batches)."""
        self.recv_release += n
        if self.recv_release >= self.recv_target >> 2:
            self.out.append(w.frame(w.WINDOW_UPDATE, 0, 0, w.U32.pack(self.recv_release)))
            self.recv_window += self.recv_release
            self.recv_release = 0
            self._schedule_flush()

    def _forget(self, stream: _Stream, reset_by_us: bool) -> None:
        if self.streams.pop(stream.id, None) is None:
            return
        if stream.flow:
            self._release(stream.flow)
            stream.flow = 0
        stream.body.clear()
        if reset_by_us:
            self._remember_reset(stream.id)
        if self.blocked:
            self.blocked = [b for b in self.blocked if b[0] is not stream]
            self.blocked_bytes = sum(len(b[1]) for b in self.blocked)
        if self.waiting and stream in self.waiting:
            self.waiting.remove(stream)

    def _reset(self, sid: int, code: int) -> None:
        """A stream error: RST_STREAM, and the stream's frames in flight are ignored."""
        self.out.append(w.rst_stream(sid, code))
        stream = self.streams.get(sid)
        if stream is not None:
            stream.local_closed = True
            self._forget(stream, reset_by_us=True)
            if stream.task is not None:
                stream.task.cancel()
        else:
            self._remember_reset(sid)
        self._schedule_flush()

    def _remember_reset(self, sid: int) -> None:
        self.reset_ids[sid] = None
        if len(self.reset_ids) > RESET_MEMORY:
            self.reset_ids = dict.fromkeys(list(self.reset_ids)[RESET_MEMORY // 2 :])

    def _local_end(self, stream: _Stream) -> None:
        """We sent END_STREAM: the stream closes, or the client is asked to stop sending."""
        if stream.remote_closed:
            self._forget(stream, reset_by_us=False)
        else:
            self.out.append(w.rst_stream(stream.id, w.NO_ERROR))
            self._forget(stream, reset_by_us=True)

    # calls ---------------------------------------------------------------------------------
    async def _serve(self, stream: _Stream) -> None:
        try:
            message = await self._call(stream)
        except AbortError as err:
            self._send_status(stream, err.code, err.details)
        except CallError as err:
            self._send_status(stream, err.code, err.details)
        except asyncio.CancelledError:
            pass  # reset by the client, or the connection is gone: nobody to answer
        except Exception as err:
            log.exception("error serving gRPC call on %s", stream.head.path)
            self._send_status(stream, grpc.StatusCode.UNKNOWN, f"Unexpected {type(err).__name__}: {err}")
        else:
            self._send_message(stream, message)
        finally:
            self.active -= 1
            if self.going_away:
                self._close_if_idle()

    async def _call(self, stream: _Stream) -> bytes:
        head = stream.head
        body = stream.body[0] if len(stream.body) == 1 else b"".join(stream.body)
        stream.body.clear()
        if stream.flow:
            self._release(stream.flow)
            stream.flow = 0
        payload = request_message(body, head.encoding, self._max_message(head))
        return await run_call(self.methods[head.path], payload, head.metadata, self.peer)  # known: _refusal

    # writing -------------------------------------------------------------------------------
    def _send_message(self, stream: _Stream, message: bytes) -> None:
        if stream.local_closed or self.dead:
            return
        sid = stream.id
        data = b"\x00" + len(message).to_bytes(4, "big") + message
        n = len(data)
        head = w.frame(w.HEADERS, w.END_HEADERS, sid, w.RESPONSE_HEADERS)
        if n <= self.conn_send_window and n <= stream.send_window and n <= self.peer_max_frame:
            self.conn_send_window -= n
            stream.local_closed = True
            self.out.append(
                head
                + w.FRAME.pack(n >> 16, n & 0xFFFF, w.DATA, 0, sid)
                + data
                + w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, sid, w.OK_TRAILERS)
            )
            self._local_end(stream)
        else:
            self.out.append(head)
            self.blocked.append((stream, data, w.OK_TRAILERS))
            self.blocked_bytes += n
            self._unblock()
        self._schedule_flush()

    def _send_http_error(self, stream: _Stream) -> None:
        """A request that is not gRPC: 405 (not POST) or 415 (not application/grpc), with a body."""
        if stream.head.method != b"POST":
            status, text = 405, b"gRPC only: use POST with content-type application/grpc\n"
        else:
            status, text = 415, b"gRPC only: content-type must be application/grpc\n"
        self.out.append(w.frame(w.HEADERS, w.END_HEADERS, stream.id, w.http_error_head(status)))
        self.blocked.append((stream, text, b""))
        self._unblock()

    def _send_status(self, stream: _Stream, code: grpc.StatusCode, details: str) -> None:
        if stream.local_closed or self.dead:
            return
        stream.local_closed = True
        block = w.RESPONSE_HEADERS + w.status_block(code, details)
        self.out.append(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, stream.id, block))
        self._local_end(stream)
        self._schedule_flush()

    def _unblock(self) -> None:
        """Send what the flow-control windows now allow of answers larger than them."""
        still: list[tuple[_Stream, bytes, bytes]] = []
        for stream, data, trailers in self.blocked:
            while data:
                n = min(len(data), self.conn_send_window, stream.send_window, self.peer_max_frame)
                if n <= 0:
                    break
                last = n == len(data) and not trailers
                self.out.append(w.frame(w.DATA, w.END_STREAM if last else 0, stream.id, data[:n]))
                data = data[n:]
                self.conn_send_window -= n
                stream.send_window -= n
            if data:
                still.append((stream, data, trailers))
                continue
            if trailers:
                self.out.append(w.frame(w.HEADERS, w.END_HEADERS | w.END_STREAM, stream.id, trailers))
            stream.local_closed = True
            if self.streams.get(stream.id) is stream:
                self._local_end(stream)
        self.blocked = still
        self.blocked_bytes = sum(len(b[1]) for b in still)
        if self.waiting and self.blocked_bytes <= self.limits.max_pending_write_bytes:
            waiting, self.waiting = self.waiting, []
            for stream in waiting:
                self._start(stream)
        self._schedule_flush()
        if self.going_away and not still:
            self._close_if_idle()

    def _schedule_flush(self) -> None:
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_scheduled = False
        if self.out and not self.dead and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    # ending --------------------------------------------------------------------------------
    def _fail(self, code: int, message: str) -> None:
        """A connection error: GOAWAY with the code, then stop reading and close.

        The socket is half-closed and read until the client closes (or LINGER_S): closing it
        with unread bytes would send a TCP reset that can destroy the GOAWAY before it is read.
        """
        if self.dead or self.transport is None:
            return
        payload = struct.pack(">LL", self.last_stream, code) + message.encode()[:200]
        self.out.append(w.frame(w.GOAWAY, 0, 0, payload))
        self._flush()
        self.dead = True
        transport = self.transport
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self.loop.call_later(LINGER_S, transport.close)

    def go_away(self) -> None:
        """Graceful: refuse new streams, finish the open ones, then close."""
        if self.dead or self.going_away:
            return
        self.going_away = True
        self.out.append(w.frame(w.GOAWAY, 0, 0, struct.pack(">LL", self.last_stream, w.NO_ERROR)))
        self._flush()
        self._close_if_idle()

    def _close_if_idle(self) -> None:
        if self.transport is not None and not self.dead and not self.active and not self.blocked:
            self._flush()
            self.dead = True
            self.transport.close()

    # timers: one per connection, re-armed from itself (nothing on the request path) ----------
    def _tick(self) -> float:
        limits = self.limits
        return max(0.05, min(limits.header_timeout_s, limits.body_timeout_s, limits.idle_timeout_s) / 4)

    def _arm(self, delay: float) -> None:
        self._timer = self.loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.dead:
            return
        now, limits = self.loop.time(), self.limits
        if not self.settled and now - self.born > limits.header_timeout_s:
            self._fail(w.SETTINGS_TIMEOUT, "no preface and SETTINGS within header_timeout_s")
            return
        if self.continuation is not None and now - self.cont_since > limits.header_timeout_s:
            self._fail(w.ENHANCE_YOUR_CALM, "header block not complete within header_timeout_s")
            return
        for stream in list(self.streams.values()):
            if not stream.remote_closed and now - stream.opened > limits.body_timeout_s:
                stream.discard = True
                self._send_status(
                    stream,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    "request body not received within body_timeout_s",
                )
        if self.streams or self.active or self.blocked or self._idle_mark[0] != self.calls:
            self._idle_mark = (self.calls, now)
        elif now - self._idle_mark[1] > limits.idle_timeout_s:
            self.go_away()
            return
        self._flush()
        self._arm(self._tick())


class H2GrpcServer:
    """The listening server; ``stop(grace)`` as grpc.aio's."""

    def __init__(
        self,
        methods: Methods,
        limits: ServerLimits | None = None,
        authorize: Authorize | None = None,
        small_calls: Collection[str] = (),
    ) -> None:
        self.methods = methods
        self.limits = limits or ServerLimits()
        self.authorize = authorize
        self.small_calls = frozenset(small_calls)
        """Methods whose request message is at most ``SMALL_MESSAGE`` bytes (as received and
        inflated): the ones anyone may call, whose messages are empty, so that a caller with no
        credential cannot have ``max_body_bytes`` received and inflated for a health probe."""
        self.connections: set[H2GrpcProtocol] = set()
        self.server: asyncio.Server | None = None

    async def start(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None = None,
        sock: socket.socket | None = None,
    ) -> int:
        """Listen on host:port (0: any free port), or accept on ``sock`` (a listening socket taken
        over from the previous server), TLS when given a context; returns the port."""
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])  # gRPC clients insist on h2 by ALPN
        loop = asyncio.get_running_loop()
        where = {"sock": sock} if sock is not None else {"host": host, "port": port}
        self.server = await loop.create_server(
            lambda: H2GrpcProtocol(self),
            **where,
            backlog=1024,
            ssl=ssl_context,
            ssl_handshake_timeout=self.limits.header_timeout_s if ssl_context is not None else None,
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
            conn.dead = True
            if conn.transport is not None:
                conn.transport.close()
        self.connections.clear()
