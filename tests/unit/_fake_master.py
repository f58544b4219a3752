"""A stand-in for a SeaweedFS master's HTTP, for the unit tests of the checks that read it
(appliance.objectstore.ready, appliance.objectstore.copies): ``/healthz`` answers empty, any other
path the JSON the test puts in ``answer["status"]``. The integration tests use the real master."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest


@pytest.fixture
def master() -> Iterator[tuple[str, dict[str, Any]]]:
    """The stand-in's URL and the answer it gives (change ``answer["status"]`` between calls)."""
    answer: dict[str, Any] = {"status": {}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"" if self.path == "/healthz" else json.dumps(answer["status"]).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", answer
    finally:
        server.shutdown()
        server.server_close()
