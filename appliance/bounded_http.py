"""The standard library's threading HTTP server, with the limits a network-facing server needs.

``ThreadingHTTPServer`` starts a thread for every connection and never times one out, so a caller
that opens connections and sends nothing (or a byte a minute) holds threads and memory without
end. The appliance's small HTTP servers built on it (the controller's API, the write gate, the
model server's metrics port) get three
bounds here: at most ``max_connections`` connections at once, past which a new one is answered
``503`` and closed at once (a client retries; Alertmanager and Prometheus do); a socket timeout
(``Handler.timeout``) that ends a connection idle or stalled for that long, between requests or
inside one; and a deadline for reading each request (``Handler.request_deadline``, counted from
its first byte: request line, headers and body together), since a client sending a byte just
inside every timeout would otherwise hold a thread, before any credential is checked, for as
long as it likes. Sizes and credentials stay each server's own business.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_CONNECTIONS = 64
SOCKET_TIMEOUT_S = 30.0
REQUEST_DEADLINE_S = 60.0
"""Time to send one whole request: the controller's 1 MiB body or the write gate's 8 MiB need
well under it on any link an edge box uses; the metrics port's GET a few milliseconds."""

_BUSY_TEXT = b"too many connections at once; try again soon"
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BUSY_TEXT), _BUSY_TEXT)
)
"""The whole answer to a connection past the limit (written before any of its request is read)."""


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server holding at most ``max_connections`` connections at once."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(address, handler)
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            try:
                request.settimeout(1.0)
                request.sendall(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # the thread never started: give its slot back
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _DeadlineReader(io.RawIOBase):
    """The socket's reads, each waiting at most the socket timeout and none ending past the
    request's deadline (``None``: no request begun; the first bytes received start it).

    A read past the deadline raises ``TimeoutError`` exactly as a stalled one does, so the handler
    drops the connection without acting on the request: ``BaseHTTPRequestHandler`` catches it
    around the request line and headers, and a body read inside ``do_POST`` lets it through to
    that same catch. (A timer shutting the socket down would need a thread per request, and the
    end of file it causes reads as a complete request with fewer headers or a shorter body.)"""

    def __init__(self, sock: socket.socket, deadline_s: float) -> None:
        super().__init__()
        self.sock = sock
        self.deadline_s = deadline_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.deadline is None:
            received = self.sock.recv_into(buffer)
            if received:
                self.deadline = time.monotonic() + self.deadline_s
            return received
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not received within its deadline")
        usual = self.sock.gettimeout()
        if usual is not None and usual <= left:
            return self.sock.recv_into(buffer)
        self.sock.settimeout(left)  # only for this read: the answer's writes keep the usual timeout
        try:
            return self.sock.recv_into(buffer)
        finally:
            self.sock.settimeout(usual)


class BoundedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive; a connection that sends nothing for ``timeout`` seconds (before
    a request, or inside its body) is closed, and so is one whose request (line, headers, body)
    takes longer than ``request_deadline`` seconds from its first byte, unanswered and not acted
    on. Once the body is read the deadline no longer matters: no read follows until the next
    request, which starts its own."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S
    request_deadline = REQUEST_DEADLINE_S

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # the socket's own reader, replaced by one that keeps the deadline
        self._reader = _DeadlineReader(self.connection, self.request_deadline)
        self.rfile = io.BufferedReader(self._reader)

    def handle_one_request(self) -> None:
        self._reader.deadline = None
        super().handle_one_request()

    def respond(
        self,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        headers: tuple[tuple[str, str], ...] = (),
        close: bool = False,
    ) -> None:
        """The whole answer: status, ``headers``, the body with its type and length; ``close``
        ends the connection after it (a request whose body was left unread)."""
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        if body:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
