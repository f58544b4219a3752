"""The standard library's threading HTTP server, with the limits a network-facing server needs.

``ThreadingHTTPServer`` starts a thread for every connection and never times one out, so a caller
that opens connections and sends nothing (or a byte a minute) holds threads and memory without
end. The appliance's small HTTP servers built on it (the controller's API, the write gate, the
model server's metrics port) get two
bounds here: at most ``max_connections`` connections at once, past which a new one is answered
``503`` and closed at once (a client retries; Alertmanager and Prometheus do), and a socket
timeout (``Handler.timeout``) that ends a connection idle or stalled for that long, between
requests or inside one. Sizes and credentials stay each server's own business.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAX_CONNECTIONS = 64
SOCKET_TIMEOUT_S = 30.0

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


class BoundedHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, and a connection that sends nothing for ``timeout`` seconds
    (before a request, or inside its body) is closed."""

    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT_S

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
