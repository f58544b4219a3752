"""The controller's HTTP API at the wire: what it does with a request's declared length before it
reads any body."""

from __future__ import annotations

import http.client
import json
import socket
import threading
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.workloads.controller.http import ControllerServer

TOKEN = "t0ken"


@pytest.fixture
def server() -> Iterator[ControllerServer]:
    controller: Any = SimpleNamespace(store=None, pipeline_names=lambda: ["retrain"], refusals={})
    one = ControllerServer(("127.0.0.1", 0), controller, TOKEN)
    threading.Thread(target=one.serve_forever, args=(0.05,), daemon=True).start()
    yield one
    one.shutdown()
    one.server_close()


def answer(server: ControllerServer, head: bytes, body: bytes) -> tuple[bytes, dict[str, Any]]:
    """The status line and JSON body answered to ``head`` + ``body``, the connection left open
    (a server waiting for more of the body would time this out)."""
    with socket.create_connection(server.server_address[:2], timeout=3) as sock:  # type: ignore[arg-type]
        sock.sendall(head + b"\r\n" + body)
        reply = http.client.HTTPResponse(sock)
        reply.begin()
        status = f"{reply.status} {reply.reason}".encode()
        return status, json.loads(reply.read())


def post(length: str) -> bytes:
    return b"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: %s\r\n" % (
        TOKEN.encode(),
        length.encode(),
    )


@pytest.mark.parametrize("length", ["-1", "-5", "+2", "1_0", "two", "0x2"])
def test_a_content_length_that_is_not_a_whole_number_of_bytes_is_refused_before_the_body_is_read(
    server: ControllerServer, length: str
) -> None:
    status, error = answer(server, post(length), b"{}")
    assert status == b"400 Bad Request"
    assert "Content-Length" in error["error"] and error["fix"]


def test_a_body_of_its_declared_length_reaches_the_route(server: ControllerServer) -> None:
    status, reply = answer(server, post("2"), b"{}")
    assert status.startswith(b"400") and "Content-Length" not in reply["error"], reply
