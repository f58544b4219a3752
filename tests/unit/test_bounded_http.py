"""The bounded threading HTTP server (the controller's, the write gate's and the model server's
metrics port): a connection past the limit is answered 503 at once, a silent connection is closed
after the timeout and gives its slot back, and one that stays in use keeps it."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from appliance.bounded_http import BoundedHandler, BoundedHTTPServer


class Hello(BoundedHandler):
    timeout = 0.5

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[BoundedHTTPServer]:
    one = BoundedHTTPServer(("127.0.0.1", 0), Hello, max_connections=2)
    threading.Thread(target=one.serve_forever, args=(0.05,), daemon=True).start()
    yield one
    one.shutdown()
    one.server_close()


def connect(server: BoundedHTTPServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=5)  # type: ignore[arg-type]


def get(server: BoundedHTTPServer) -> bytes:
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return read_all(sock)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_connection_past_the_limit_is_refused_at_once_and_served_once_a_slot_frees(
    server: BoundedHTTPServer,
) -> None:
    idle = [connect(server), connect(server)]  # both slots, sending nothing
    time.sleep(0.1)
    refused = get(server)
    assert refused.startswith(b"HTTP/1.1 503") and b"too many connections" in refused, refused
    for sock in idle:  # refused while both still held their slots, not after they timed out
        sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        sock.setblocking(True)
    time.sleep(0.8)  # the idle connections pass the 0.5 s timeout: closed, their slots back
    for sock in idle:
        assert read_all(sock) == b""  # closed by the server, nothing answered
        sock.close()
    assert get(server).endswith(b"hello")


def ask_on(sock: socket.socket, request: bytes, ending: bytes) -> None:
    """Send ``request`` on a kept-alive connection and read until its answer ends with ``ending``."""
    sock.sendall(request)
    answer = b""
    while not answer.endswith(ending):
        chunk = sock.recv(4096)
        assert chunk, f"closed after {answer!r}"
        answer += chunk


def test_a_connection_in_use_keeps_its_slot_past_the_timeout(server: BoundedHTTPServer) -> None:
    with connect(server) as busy:
        for _ in range(4):  # 4 requests 0.3 s apart: 1.2 s in all, each gap under the timeout
            ask_on(busy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"hello")
            time.sleep(0.3)


def test_the_model_servers_metrics_port_serves_the_registry_in_the_format_asked_and_nothing_else() -> None:
    import httpx

    from appliance.workloads.serving.metrics import ServingMetrics

    metrics = ServingMetrics(lambda: [])
    metrics.child(metrics.requests, "fraud", "3", "rest", "success").inc(2)
    server = metrics.serve(0, "127.0.0.1")
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        text = httpx.get(f"{url}/metrics", timeout=5)
        assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
        labels = 'model="fraud",outcome="success",protocol="rest",version="3"'
        assert f"appliance_inference_requests_total{{{labels}}} 2.0" in text.text
        open_metrics = httpx.get(
            f"{url}/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=5
        )
        assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
        assert open_metrics.text.rstrip().endswith("# EOF")
        assert httpx.get(f"{url}/v2/models", timeout=5).status_code == 404
        assert server.max_connections == 16
    finally:
        server.shutdown()
        server.server_close()


class Slow(BoundedHandler):
    """A short deadline, and a POST that records the bodies it was given whole."""

    timeout = 0.5
    request_deadline = 1.0
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        Slow.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.respond(200, b"taken")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def slow_server() -> Iterator[BoundedHTTPServer]:
    Slow.bodies = []
    one = BoundedHTTPServer(("127.0.0.1", 0), Slow, max_connections=2)
    threading.Thread(target=one.serve_forever, args=(0.05,), daemon=True).start()
    yield one
    one.shutdown()
    one.server_close()


def trickle(sock: socket.socket, data: bytes, every: float) -> float:
    """Sends ``data`` a byte every ``every`` seconds (each gap inside the socket timeout) until
    the server closes the connection; the seconds that took (all of ``data`` sent: -1)."""
    began = time.monotonic()
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            return time.monotonic() - began
        sock.settimeout(every)
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - began
        except TimeoutError:
            pass
    return -1.0


def test_a_request_trickled_in_a_byte_inside_each_timeout_is_cut_off_at_its_deadline(
    slow_server: BoundedHTTPServer,
) -> None:
    with connect(slow_server) as sock:
        took = trickle(sock, b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 40 + b"\r\n\r\n", 0.3)
    assert 0.9 < took < 2.0, took  # closed at the 1 s deadline, not after the 20 s of bytes


def test_a_body_cut_off_at_the_deadline_is_not_taken_for_a_whole_one(slow_server: BoundedHTTPServer) -> None:
    with connect(slow_server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n\r\n")
        took = trickle(sock, b"b" * 40, 0.3)
    assert 0.6 < took < 2.0, took
    assert Slow.bodies == [], "nothing acted on: no short body, no answer"
    with connect(slow_server) as sock:  # a request sent at once is served, its slot free again
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody")
        assert read_all(sock).endswith(b"taken")
    assert Slow.bodies == [b"body"]


def test_each_request_on_a_kept_alive_connection_gets_its_own_deadline(
    slow_server: BoundedHTTPServer,
) -> None:
    with connect(slow_server) as sock:
        for _ in range(4):  # 4 quick requests 0.4 s apart: 1.6 s in all, past one deadline
            ask_on(sock, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok", b"taken")
            time.sleep(0.4)
    assert Slow.bodies == [b"ok"] * 4
