"""The login check Jupyter's port makes before it reads a body, and the bounds of its connections
(appliance.workbench_gate), in front of a small Tornado application served by Tornado's own HTTP
server on a loopback port: the login and public-route checks are the test's own here; Jupyter's
are used in tests/integration/test_elyra_workbench.py."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from tornado import httpserver, httputil, web

from appliance.workbench_gate import (
    LINGER_SECONDS,
    PUBLIC_BODY_LIMIT,
    ConnectionLimits,
    LoginBeforeBody,
    bound,
    carries_body,
)
from tests.conftest import free_port

TOKEN = "the-token"


class Echo(web.RequestHandler):
    """Answers with the length of the body it was given."""

    def put(self) -> None:
        self.write(str(len(self.request.body)))

    post = put

    def get(self) -> None:
        self.write("read")


class Server:
    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits
        self.port = free_port()
        self.checked: list[str] = []
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None

    async def logged_in(self, request: httputil.HTTPServerRequest) -> bool:
        self.checked.append(request.path)
        return request.headers.get("Authorization") == f"token {TOKEN}"

    def run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        app = web.Application([(r"/login", Echo), (r"/api/.*", Echo)])
        server = httpserver.HTTPServer(app)
        server.request_callback = LoginBeforeBody(
            app, self.logged_in, lambda request: request.path == "/login"
        )
        if self.limits:
            bound(server, self.limits)
        server.listen(self.port, "127.0.0.1")
        self.loop.call_soon(self.ready.set)
        self.loop.run_forever()


def serve(limits: ConnectionLimits | None = None) -> Iterator[Server]:
    server = Server(limits)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert server.ready.wait(10)
    yield server
    assert server.loop is not None
    server.loop.call_soon_threadsafe(server.loop.stop)


@pytest.fixture(name="server", scope="module")
def server_fixture() -> Iterator[Server]:
    yield from serve()


LIMITS = ConnectionLimits(max_connections=3, header_timeout_s=1.0, body_timeout_s=1.0)


@pytest.fixture(name="bounded", scope="module")
def bounded_fixture() -> Iterator[Server]:
    yield from serve(LIMITS)


def raw(port: int, head: str, body: bytes = b"", wait: float = 5.0) -> tuple[str, float]:
    """Send a request head and part of a body on one connection; (the answer, seconds it took)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as conn:
        start = time.monotonic()
        try:
            conn.sendall(head.encode() + b"\r\n" + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused and closed before taking the rest
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"Connection: close" not in answer:
                break
        return answer.decode(errors="replace"), time.monotonic() - start


def head(method: str, path: str, *lines: str) -> str:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(line + "\r\n" for line in lines)


def test_a_body_without_a_login_is_refused_before_it_is_sent(server: Server) -> None:
    """64 MiB announced, 1 MiB sent: the 403 comes at once, not after a body that never comes."""
    for auth in ("", "Authorization: token wrong", "Authorization: Basic the-token"):
        lines = ["Content-Length: 67108864"] + ([auth] if auth else [])
        answer, took = raw(server.port, head("PUT", "/api/contents/a.txt", *lines), b"x" * (1 << 20))
        assert answer.startswith("HTTP/1.1 403 "), answer
        assert "needs a login first" in answer and "Connection: close" in answer
        assert took < LINGER_SECONDS + 2, took  # lingered at most, never waited for the body


def test_a_chunked_body_without_a_login_is_refused(server: Server) -> None:
    answer, _ = raw(server.port, head("POST", "/api/sessions", "Transfer-Encoding: chunked"), b"10\r\n")
    assert answer.startswith("HTTP/1.1 403 "), answer


def test_a_zero_length_beside_chunked_is_still_a_body(server: Server) -> None:
    lines = ("Content-Length: 0", "Transfer-Encoding: chunked")
    answer, _ = raw(server.port, head("POST", "/api/sessions", *lines), b"10\r\n")
    assert answer.startswith("HTTP/1.1 403 "), answer


def test_a_logged_in_body_reaches_the_handler_whole(server: Server) -> None:
    body = b"y" * (3 << 20)
    answer = httpx.put(
        f"http://127.0.0.1:{server.port}/api/contents/a.txt",
        content=body,
        headers={"Authorization": f"token {TOKEN}"},
    )
    assert answer.status_code == 200 and answer.text == str(len(body))
    with httpx.Client(headers={"Authorization": f"token {TOKEN}"}) as client:  # keep-alive: one connection
        assert [
            client.post(f"http://127.0.0.1:{server.port}/api/x", content=b"ab").text for _ in range(3)
        ] == ["2"] * 3


def test_requests_without_a_body_are_not_checked(server: Server) -> None:
    before = len(server.checked)
    assert httpx.get(f"http://127.0.0.1:{server.port}/api/contents").text == "read"
    assert httpx.put(f"http://127.0.0.1:{server.port}/api/x", headers={"Content-Length": "0"}).text == "0"
    assert len(server.checked) == before  # the application checks those itself, as before


def test_a_public_route_takes_a_small_body_without_a_login_and_no_large_one(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/login"
    assert httpx.post(url, content=b"password=x").text == "10"
    assert httpx.post(url, content=b"p" * PUBLIC_BODY_LIMIT).text == str(PUBLIC_BODY_LIMIT)
    answer, _ = raw(
        server.port, head("POST", "/login", f"Content-Length: {PUBLIC_BODY_LIMIT + 1}"), b"p" * 10
    )
    assert answer.startswith("HTTP/1.1 400 "), answer  # Tornado's own refusal of a body over the limit
    # A logged-in caller's body to the same route is not held to the public limit.
    logged_in = {"Authorization": f"token {TOKEN}"}
    large = httpx.post(url, content=b"p" * (PUBLIC_BODY_LIMIT * 4), headers=logged_in)
    assert large.text == str(PUBLIC_BODY_LIMIT * 4)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ({}, False),
        ({"Content-Length": "0"}, False),
        ({"Content-Length": "12"}, True),
        ({"Content-Length": "x"}, True),
        ({"Transfer-Encoding": "chunked"}, True),
        ({"Content-Length": "0", "Transfer-Encoding": "chunked"}, True),
    ],
)
def test_carries_body(lines: dict[str, str], expected: bool) -> None:
    assert carries_body(httputil.HTTPHeaders(lines)) is expected


def test_a_connection_past_the_limit_is_answered_503_and_one_closing_makes_room(bounded: Server) -> None:
    held = [
        socket.create_connection(("127.0.0.1", bounded.port), timeout=5)
        for _ in range(LIMITS.max_connections)
    ]
    try:
        # Retried for a while: the server may not have accepted every held connection yet.
        answer = until(lambda: raw(bounded.port, head("GET", "/api/x"))[0], "HTTP/1.1 503 ")
        assert "too many connections" in answer, answer
        held.pop().close()
        answer = until(
            lambda: raw(bounded.port, head("GET", "/api/x", "Connection: close"))[0], "HTTP/1.1 200 "
        )
        assert answer.endswith("read"), answer
    finally:
        for conn in held:
            conn.close()


def until(ask: Callable[[], str], start: str, seconds: float = 10) -> str:
    """``ask()`` again until its answer starts with ``start`` (returned), at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            answer = ask()
        except OSError as err:
            answer = f"{type(err).__name__}: {err}"
        if answer.startswith(start) or time.monotonic() > deadline:
            assert answer.startswith(start), answer
            return answer
        time.sleep(0.1)


def test_a_silent_connection_and_a_stalled_body_are_closed_after_their_timeouts(bounded: Server) -> None:
    with socket.create_connection(("127.0.0.1", bounded.port), timeout=20) as silent:
        started = time.monotonic()
        assert silent.recv(100) == b""  # closed by the server, no head ever sent
        assert LIMITS.header_timeout_s - 0.2 < time.monotonic() - started < LIMITS.header_timeout_s + 10
    with socket.create_connection(("127.0.0.1", bounded.port), timeout=20) as stalled:
        lines = ("Content-Length: 100", f"Authorization: token {TOKEN}")
        stalled.sendall(head("PUT", "/api/x", *lines).encode() + b"\r\n" + b"x" * 10)
        started = time.monotonic()
        assert stalled.recv(100) == b""  # the rest of the body never came
        assert LIMITS.body_timeout_s - 0.2 < time.monotonic() - started < LIMITS.body_timeout_s + 10
