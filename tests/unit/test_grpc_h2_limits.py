"""Each limit of the HTTP/2 gRPC transport, hit by a raw client over a real socket.

The server runs in-process (its own event loop in a thread) with a small echo servicer and the
limits each test sets, so a limit can be made small enough to hit in milliseconds. Every test
asserts what the client gets at the limit (a GOAWAY or RST_STREAM code, a grpc-status, a close)
and that a normal call on a new connection still succeeds right after.
"""

from __future__ import annotations

import asyncio
import gzip
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from tests import _h2server
from tests._h2client import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    NO_ERROR,
    PING,
    PREFACE,
    REFUSED_STREAM,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    Closed,
    H2Client,
    frame,
    grpc_message,
)
from tests._h2server import INFER, LIVE, TOKEN, assert_normal_call, infer_request

LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(params=LOOPS, autouse=True)
def loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test on both loops: the model server runs on uvloop when it is installed, whose
    transports differ from asyncio's (no Transport subclass, their own pause/resume and EOF)."""
    if request.param == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (the serving extra has it)")
    global _LOOP_KIND
    _LOOP_KIND = request.param
    yield request.param


_LOOP_KIND = "asyncio"


def running(**limits: Any) -> Any:
    return _h2server.running(_LOOP_KIND, **limits)


def server_settings(client: H2Client) -> dict[int, int]:
    got = client.wait_for(SETTINGS)
    return {
        k: v for k, v in (struct.unpack_from(">HL", got.payload, i) for i in range(0, len(got.payload), 6))
    }


def test_header_block_past_max_header_bytes_ends_the_connection() -> None:
    with running(max_header_bytes=1024) as srv:
        with H2Client(srv.port) as client:
            assert server_settings(client)[0x6] == 1024  # SETTINGS_MAX_HEADER_LIST_SIZE
            client.open_stream(client.request_headers(INFER, TOKEN, [("x-big", "a" * 2000)]))
            assert client.wait_for(GOAWAY).code == ENHANCE_YOUR_CALM
        # small on the wire, large decoded: the second copy is one byte (an HPACK index)
        with H2Client(srv.port) as client:
            client.open_stream(client.request_headers(INFER, TOKEN, [("x-a", "b" * 600)] * 2))
            assert client.wait_for(GOAWAY).code == ENHANCE_YOUR_CALM
        assert_normal_call(srv.port)


def test_more_header_fields_than_max_header_count_are_refused_on_the_stream() -> None:
    with running(max_header_count=10) as srv:
        with H2Client(srv.port) as client:
            extra = [(f"x-{i}", "v") for i in range(10)]
            sid = client.open_stream(client.request_headers(INFER, TOKEN, extra))
            code, message = client.grpc_status(sid)  # answered from the headers alone
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
            assert "max_header_count" in message
        assert srv.servicer.calls == 0
        assert_normal_call(srv.port)


def test_a_continuation_flood_ends_the_connection_at_once() -> None:
    with running(max_continuation_frames=16) as srv:
        with H2Client(srv.port) as client:
            block = client.encoder.encode(client.request_headers(INFER, TOKEN))
            flood = frame(HEADERS, 0, 1, block) + frame(CONTINUATION, 0, 1) * 50_000  # 450 KB
            started = time.monotonic()
            try:
                client.send(flood)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed while we were still sending: as good
            assert client.wait_for(GOAWAY).code == ENHANCE_YOUR_CALM
            assert time.monotonic() - started < 5
        with H2Client(srv.port) as client:  # few frames, too many bytes
            fragment = b"\x00" * 700
            client.send(frame(HEADERS, 0, 1, fragment) + frame(CONTINUATION, 0, 1, fragment) * 30)
            assert client.wait_for(GOAWAY).code == ENHANCE_YOUR_CALM
        assert_normal_call(srv.port)


def test_streams_past_max_concurrent_streams_are_refused() -> None:
    with running(max_concurrent_streams=3) as srv:
        with H2Client(srv.port) as client:
            assert server_settings(client)[0x3] == 3  # SETTINGS_MAX_CONCURRENT_STREAMS
            open_ids = [client.open_stream(client.request_headers(INFER, TOKEN)) for _ in range(3)]
            extra = client.open_stream(client.request_headers(INFER, TOKEN))
            reset = client.wait_for(RST_STREAM, extra)
            assert reset.code == REFUSED_STREAM
            client.send(
                frame(DATA, END_STREAM, open_ids[0], grpc_message(infer_request(10).SerializeToString()))
            )
            assert client.grpc_status(open_ids[0])[0] == 0  # the open ones still work
        assert_normal_call(srv.port)


def test_a_call_without_a_token_is_refused_from_its_headers_and_its_body_is_not_kept() -> None:
    with running() as srv:
        with H2Client(srv.port) as client:
            sid = client.open_stream(
                client.request_headers(INFER, None, [("grpc-encoding", "gzip")])
            )  # no DATA sent yet
            code, message = client.grpc_status(sid)
            assert code == grpc.StatusCode.UNAUTHENTICATED.value[0] and "token" in message
            assert client.wait_for(RST_STREAM, sid).code == NO_ERROR  # asked to stop sending
            body = gzip.compress(infer_request(4 << 20).SerializeToString())
            for i in range(0, len(body), 16384):  # sent anyway: dropped, the window given back
                client.send(frame(DATA, 0, sid, body[i : i + 16384]))
            client.send(frame(DATA, END_STREAM, sid) + frame(PING, 0, 0, b"12345678"))
            assert client.wait_for(PING).payload == b"12345678"
            conn = srv.connection()
            assert not conn.streams and conn.recv_window + conn.recv_release == conn.recv_target
        assert srv.servicer.calls == 0
        assert_normal_call(srv.port)


def test_a_health_probe_takes_a_small_message_only_and_inflates_no_more() -> None:
    """Anyone may call ServerLive: its message is empty, so one past SMALL_MESSAGE (as received,
    or inflated: a 4 KiB gzip of 4 MiB of zeros) is refused, not taken up to max_body_bytes."""
    with running() as srv:
        with H2Client(srv.port) as client:
            sid = client.open_stream(client.request_headers(LIVE, None, [("grpc-encoding", "gzip")]))
            bomb = gzip.compress(bytes(4 << 20))
            assert len(bomb) < 8192
            client.send(frame(DATA, END_STREAM, sid, grpc_message(bomb, compressed=True)))
            code, message = client.grpc_status(sid)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "larger than max" in message
            sid = client.open_stream(client.request_headers(LIVE, None))
            client.send(frame(DATA, END_STREAM, sid, grpc_message(b"x" * 2048)))
            code, message = client.grpc_status(sid)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "vs. 1024" in message
            sid = client.open_stream(client.request_headers(LIVE, None))
            client.send(frame(DATA, END_STREAM, sid, grpc_message(b"")))
            assert client.grpc_status(sid)[0] == 0  # an empty one, as probes send, is answered
        assert_normal_call(srv.port)


def test_a_message_past_max_body_bytes_is_refused_before_it_ends() -> None:
    with running(max_body_bytes=4096) as srv:
        with H2Client(srv.port) as client:
            sid = client.open_stream(client.request_headers(INFER, TOKEN))
            client.send(frame(DATA, 0, sid, grpc_message(b"x" * 8192)))  # no END_STREAM
            code, message = client.grpc_status(sid)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0] and "larger than max" in message
        assert_normal_call(srv.port)


def test_buffered_request_bytes_are_bounded_by_the_connection_window() -> None:
    limit = 1 << 20
    with running(max_connection_buffer_bytes=limit, max_body_bytes=900_000) as srv:
        with H2Client(srv.port) as client:
            update = client.wait_for(WINDOW_UPDATE, 0)
            assert 65535 + struct.unpack(">L", update.payload)[0] == limit
            chunk = b"\x00" * 16384
            for _ in range(2):  # two unfinished requests of 40 x 16 KiB: past 1 MiB together
                sid = client.open_stream(client.request_headers(INFER, TOKEN))
                try:
                    for _ in range(40):
                        client.send(frame(DATA, 0, sid, chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break
            assert client.wait_for(GOAWAY).code == FLOW_CONTROL_ERROR
        assert_normal_call(srv.port)


def test_slow_prefaces_and_header_blocks_are_closed_after_header_timeout() -> None:
    with running(header_timeout_s=0.5) as srv:
        started = time.monotonic()
        slow = [H2Client(srv.port, handshake=False) for _ in range(20)]
        for client in slow:
            client.send(PREFACE[:10])  # and never the rest
        dribbling = H2Client(srv.port)
        block = dribbling.encoder.encode(dribbling.request_headers(INFER, TOKEN))
        dribbling.send(frame(HEADERS, 0, 1, block[:5]))  # a header block never finished
        for client in [*slow, dribbling]:
            client.closed_within(5)
        assert time.monotonic() - started < 5
        assert dribbling.frames[-1].kind == GOAWAY and dribbling.frames[-1].code == ENHANCE_YOUR_CALM
        for client in [*slow, dribbling]:
            client.close()
        assert_normal_call(srv.port)


def test_a_body_not_sent_within_body_timeout_gets_deadline_exceeded() -> None:
    with running(body_timeout_s=0.5) as srv:
        with H2Client(srv.port) as client:
            sid = client.open_stream(client.request_headers(INFER, TOKEN))
            client.send(frame(DATA, 0, sid, b"\x00\x00\x00"))
            code, message = client.grpc_status(sid, timeout=5)
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0] and "body_timeout_s" in message
        assert_normal_call(srv.port)


def test_an_idle_connection_gets_goaway_and_is_closed() -> None:
    with running(idle_timeout_s=0.6) as srv:
        with H2Client(srv.port) as busy, H2Client(srv.port) as idle:
            started = time.monotonic()
            while time.monotonic() - started < 1.5:  # a call every 0.2 s keeps a connection open
                busy.call(LIVE, b"")
                time.sleep(0.2)
            frames = idle.closed_within(5)
            assert [f.code for f in frames if f.kind == GOAWAY] == [NO_ERROR]
            sid = busy.call(LIVE, b"")
            assert busy.grpc_status(sid)[0] == 0
        assert_normal_call(srv.port)


def test_connections_past_max_connections_are_closed_at_once() -> None:
    with running(max_connections=3) as srv:
        held = [H2Client(srv.port) for _ in range(3)]
        for client in held:
            server_settings(client)
        with H2Client(srv.port) as extra:
            frames = extra.closed_within(5)
            assert [f.code for f in frames if f.kind == GOAWAY] == [ENHANCE_YOUR_CALM]
        held.pop().close()
        time.sleep(0.2)
        assert_normal_call(srv.port)
        for client in held:
            client.close()


def raw_client(port: int, small_buffers: bool) -> H2Client:
    """A client whose socket buffers are tiny (so that what the server queues shows)."""
    sock = socket.socket()
    if small_buffers:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return H2Client(port, sock=sock)


def send_call(client: H2Client, message: bytes) -> int:
    sid = client.open_stream(client.request_headers(INFER, TOKEN))
    for i in range(0, len(message), 16384):
        last = i + 16384 >= len(message)
        client.send(frame(DATA, END_STREAM if last else 0, sid, message[i : i + 16384]))
    return sid


def test_a_client_that_never_reads_stops_being_read() -> None:
    pending = 64 * 1024
    with running(max_pending_write_bytes=pending) as srv:
        client = raw_client(srv.port, small_buffers=True)
        # it opens every window wide, so nothing waits on flow control: answers go to the socket
        client.send(
            frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 2**31 - 1))
            + frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1 - 65535))
        )
        message = grpc_message(infer_request(256 * 1024).SerializeToString())
        sent = 0
        client.sock.settimeout(3)
        with pytest.raises(TimeoutError):  # the server stopped reading: our sends block
            for _ in range(400):  # 100 MiB of answers owed if it kept reading
                send_call(client, message)
                sent += 1
                time.sleep(0.005)
        conn = srv.connection()
        assert conn.transport is not None and conn.write_paused
        assert sent < 400
        # paused past the mark: at most the answers of the calls already running go over it
        assert conn.transport.get_write_buffer_size() < pending + 8 * len(message)
        client.close()
        assert_normal_call(srv.port)


def test_answers_held_by_flow_control_stop_new_calls_from_starting() -> None:
    pending = 64 * 1024
    with running(max_pending_write_bytes=pending, max_connection_buffer_bytes=4 << 20) as srv:
        with raw_client(srv.port, small_buffers=False) as client:  # never sends a WINDOW_UPDATE
            message = grpc_message(infer_request(100 * 1024).SerializeToString())
            for _ in range(20):  # 2 MB of requests, within the 4 MiB connection window
                send_call(client, message)
            client.send(frame(PING, 0, 0, b"12345678"))
            assert client.wait_for(PING).payload == b"12345678"  # still read and answered
            conn = srv.connection()
            # the first answers wait for the window; calls not started by then wait for them (how
            # many started first depends on how fast the model answered: a handful, more on a
            # loaded machine)
            started = srv.servicer.calls
            assert started < 20 and len(conn.waiting) == 20 - started
            assert conn.blocked_bytes <= started * len(message)
            client.send(frame(WINDOW_UPDATE, 0, 0, struct.pack(">L", 2**31 - 1 - 65535)))
            client.send(frame(SETTINGS, 0, 0, struct.pack(">HL", 0x4, 2**31 - 1)))
            statuses = [client.grpc_status(sid)[0] for sid in range(1, 41, 2)]
            assert statuses == [0] * 20  # all served once the windows opened
        assert_normal_call(srv.port)


def test_rst_stream_cancels_the_call() -> None:
    with running() as srv:
        srv.servicer.hold = asyncio.Event()
        with H2Client(srv.port) as client:
            sid = client.call(INFER, infer_request(10).SerializeToString(), TOKEN)
            assert srv.servicer.started.wait(5)
            client.send(frame(RST_STREAM, 0, sid, struct.pack(">L", 0x8)))  # CANCEL
            deadline = time.monotonic() + 5
            while srv.servicer.cancelled == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.servicer.cancelled == 1
            assert srv.connection().active == 0
        srv.servicer.hold = None
        assert_normal_call(srv.port)


def test_a_request_that_is_not_grpc_gets_415_with_a_body() -> None:
    with running() as srv, H2Client(srv.port) as client:
        headers = [(":method", "POST"), (":scheme", "http"), (":path", "/"), ("content-type", "text/plain")]
        sid = client.open_stream(headers, end_stream=True)
        head = client.wait_for(HEADERS, sid)
        assert dict(head.headers)[":status"] == "415"
        body = client.wait_for(DATA, sid)
        assert body.flags & END_STREAM and b"application/grpc" in body.payload


def test_frames_after_a_connection_error_do_not_reset_away_the_goaway() -> None:
    with running() as srv:
        with H2Client(srv.port) as client:
            client.send(frame(PING, 0, 3, b"12345678") + frame(DATA, 0, 1, b"x" * 60_000))
            try:
                goaway = client.wait_for(GOAWAY)
            except Closed:
                pytest.fail("connection closed before the GOAWAY could be read")
            assert goaway.code == 0x1  # PROTOCOL_ERROR: PING on a stream
        assert_normal_call(srv.port)


def test_an_authorization_check_that_breaks_refuses_the_call_and_keeps_the_connection() -> None:
    def broken(path: str, authorization: str | None) -> None:
        raise RuntimeError("token store unreadable")

    with running() as srv:
        srv.server.authorize = broken
        with H2Client(srv.port) as client:
            sid = client.call(INFER, infer_request(10).SerializeToString(), TOKEN)
            code, message = client.grpc_status(sid)
            assert code == grpc.StatusCode.INTERNAL.value[0] and "authorization" in message
            client.send(frame(PING, 0, 0, b"abcdefgh"))
            assert client.wait_for(PING).payload == b"abcdefgh"
        assert srv.servicer.calls == 0


def test_rapid_reset_ends_the_connection() -> None:
    with running() as srv:
        with H2Client(srv.port) as client:
            headers = client.request_headers(INFER, TOKEN)
            burst = b""
            for _ in range(1100):  # open and reset at once: past the 1000-reset bucket
                sid = client.next_stream
                client.next_stream += 2
                burst += frame(HEADERS, END_HEADERS, sid, client.encoder.encode(headers))
                burst += frame(RST_STREAM, 0, sid, struct.pack(">L", 0x8))
            try:
                client.send(burst)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert client.wait_for(GOAWAY).code == ENHANCE_YOUR_CALM
        with H2Client(srv.port) as client:  # a few cancels are nothing unusual
            for _ in range(20):
                sid = client.open_stream(client.request_headers(INFER, TOKEN))
                client.send(frame(RST_STREAM, 0, sid, struct.pack(">L", 0x8)))
            sid = client.call(INFER, infer_request(10).SerializeToString(), TOKEN)
            assert client.grpc_status(sid)[0] == 0
        assert_normal_call(srv.port)


def test_a_frame_sent_a_few_bytes_at_a_time_is_joined_once_it_is_all_in() -> None:
    """The pieces of a frame still arriving are kept apart, not copied together again with each
    new piece (quadratic in the frame's size for a client sending a few bytes at a time)."""
    with running() as srv:
        with H2Client(srv.port) as client:
            sid = client.open_stream(client.request_headers(INFER, TOKEN))
            data = frame(DATA, END_STREAM, sid, grpc_message(infer_request(20_000).SerializeToString()))
            for i in range(0, len(data) - 1, 500):
                client.send(data[i : min(i + 500, len(data) - 1)])
            deadline = time.monotonic() + 10
            while not srv.server.connections:  # accepted on the server's loop, in its own time
                assert time.monotonic() < deadline
                time.sleep(0.01)
            conn = srv.connection()
            while conn.held != len(data) - 1:  # all but the last byte, in pieces, not yet joined
                assert time.monotonic() < deadline, (conn.held, len(data))
                time.sleep(0.01)
            assert conn.parts and conn.need == len(data) and conn.buf == b""
            client.send(data[-1:])
            assert client.grpc_status(sid)[0] == 0
            assert not conn.parts
        assert_normal_call(srv.port)
