"""A loopback HTTP server answering GETs as a test says, for the unit tests of clients of a
service's HTTP (a SeaweedFS master, the serving supervisor, a metrics page); the integration tests
use the real servers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[BaseHTTPRequestHandler], tuple[int, bytes]]
"""The request (its ``path`` and ``headers``) -> the status and body to answer with."""


@contextmanager
def fake_http(answer: Answer) -> Iterator[int]:
    """Serve ``answer`` on a free loopback port (yielded) until the block ends."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = answer(self)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
