"""A raw HTTP/2 client for the transport tests: frames as bytes, so a test can break the rules.

grpcio's client cannot send a CONTINUATION flood, a header block past the advertised limit or a
request it never finishes, and it hides the GOAWAY and RST_STREAM codes a server sends; these
tests need all of that. Blocking sockets, one connection per object, frames parsed as they come.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpack import Decoder, Encoder

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, END_HEADERS = 0x1, 0x4
NO_ERROR, PROTOCOL_ERROR, FLOW_CONTROL_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = 0x0, 0x1, 0x3, 0x7, 0xB

H2SPEC = Path(__file__).resolve().parents[1].parent / "shared/tools/h2spec"
"""h2spec, where the project's tooling keeps it (../shared/tools from the project root)."""


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return struct.pack(">BHBBL", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def grpc_message(body: bytes, compressed: bool = False) -> bytes:
    return bytes((1 if compressed else 0,)) + len(body).to_bytes(4, "big") + body


@dataclass
class Frame:
    kind: int
    flags: int
    stream: int
    payload: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def code(self) -> int:
        """The error code of a GOAWAY or RST_STREAM."""
        offset = 4 if self.kind == GOAWAY else 0
        return int(struct.unpack_from(">L", self.payload, offset)[0])


class Closed(Exception):
    """The server closed the connection."""


class H2Client:
    """One HTTP/2 connection (h2c, or TLS with ALPN h2)."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        tls: ssl.SSLContext | None = None,
        handshake: bool = True,
        sock: socket.socket | None = None,
    ) -> None:
        sock = sock or socket.create_connection((host, port), timeout=10)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=host)
        self.sock = sock
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buf = b""
        self.next_stream = 1
        self.frames: list[Frame] = []
        if handshake:
            self.send(PREFACE + frame(SETTINGS, 0, 0))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def request_headers(
        self, path: str, token: str | None = None, extra: list[tuple[str, str]] | None = None
    ) -> list[tuple[str, str]]:
        headers = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "127.0.0.1"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        if token is not None:
            headers.append(("authorization", f"Bearer {token}"))
        return headers + (extra or [])

    def open_stream(
        self, headers: list[tuple[str, str]], end_stream: bool = False, end_headers: bool = True
    ) -> int:
        sid = self.next_stream
        self.next_stream += 2
        flags = (END_STREAM if end_stream else 0) | (END_HEADERS if end_headers else 0)
        self.send(frame(HEADERS, flags, sid, self.encoder.encode(headers)))
        return sid

    def call(self, path: str, body: bytes, token: str | None = None) -> int:
        """A whole unary call (HEADERS, one DATA with END_STREAM); returns its stream id."""
        sid = self.open_stream(self.request_headers(path, token))
        self.send(frame(DATA, END_STREAM, sid, grpc_message(body)))
        return sid

    def read_frame(self, timeout: float = 10) -> Frame:
        """The next frame; raises Closed when the server closes, TimeoutError past ``timeout``."""
        deadline = time.monotonic() + timeout
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no frame from the server")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as err:
                raise Closed(str(err)) from None
            except TimeoutError:
                raise TimeoutError("no frame from the server") from None
            if not chunk:
                raise Closed("connection closed")
            self.buf += chunk
        length = int.from_bytes(self.buf[:3], "big")
        kind, flags, sid = self.buf[3], self.buf[4], int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
        payload = self.buf[9 : 9 + length]
        self.buf = self.buf[9 + length :]
        got = Frame(kind, flags, sid, payload)
        if kind == HEADERS:
            got.headers = [(k, v) for k, v in self.decoder.decode(payload)]
        self.frames.append(got)
        return got

    def wait_for(self, kind: int, stream: int | None = None, timeout: float = 10) -> Frame:
        """Read until a frame of ``kind`` (on ``stream`` when given) arrives."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.read_frame(max(0.0, deadline - time.monotonic()))
            if got.kind == kind and (stream is None or got.stream == stream):
                return got

    def grpc_status(self, stream: int, timeout: float = 10) -> tuple[int, str]:
        """The grpc-status and grpc-message of a stream's last HEADERS (with END_STREAM)."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.wait_for(HEADERS, stream, max(0.0, deadline - time.monotonic()))
            if got.flags & END_STREAM:
                fields = dict(got.headers)
                return int(fields["grpc-status"]), fields.get("grpc-message", "")

    def closed_within(self, timeout: float) -> list[Frame]:
        """Read until the server closes the connection; the frames read. TimeoutError if it does not."""
        deadline = time.monotonic() + timeout
        seen: list[Frame] = []
        while True:
            try:
                seen.append(self.read_frame(max(0.0, deadline - time.monotonic())))
            except Closed:
                return seen
