"""The REST front end's limits against a real server process: each one answers its status code
or closes the connection as docs/security.md says, and a normal request succeeds right after.

The server runs with small limits (1 s header/body timeouts, 2 s idle, a 100 kB body, 4 KiB of
headers) so each case is quick; timing is only ever bounded ("closed within 5 s instead of
hanging"), never compared against an exact figure.
"""

from __future__ import annotations

import gzip
import json
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration._serving_fixtures import (
    ADMIN_TOKEN,
    AUTH,
    TOKEN,
    ServerProcess,
    head,
    read_response,
    start_server,
    write_echo,
    write_mlp,
)

pytestmark = pytest.mark.integration

GOOD = {"name": "input", "datatype": "FP32", "shape": [1, 8], "data": [0.0] * 8}
MAX_CONNECTIONS = 12
LIMITS = {
    "max_body_bytes": 100_000,
    "max_header_bytes": 4096,
    "max_header_count": 20,
    "max_url_bytes": 512,
    "header_timeout_s": 1,
    "body_timeout_s": 1,
    "idle_timeout_s": 2,
    "max_connections": MAX_CONNECTIONS,
    "max_pending_write_bytes": 65536,
    "max_pipelined_requests": 4,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("models")
    write_mlp(root / "mlp")
    write_echo(root / "echo")
    (root / "token").write_text(TOKEN)
    (root / "admin").write_text(ADMIN_TOKEN)
    args = ["--model", str(root / "mlp"), "--model", str(root / "echo"), "--poll-seconds", "0"]
    args += ["--token-file", str(root / "token"), "--admin-token-file", str(root / "admin")]
    for name, value in LIMITS.items():
        args += ["--limit", f"{name}={value}"]
    srv = start_server(args, tmp_path_factory.mktemp("logs"))
    yield srv
    srv.stop()
    log = srv.log.read_text()
    assert "Traceback" not in log and "IndexError" not in log, log[-3000:]


def connect(server: ServerProcess, timeout: float = 10) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout)


def closed_within(s: socket.socket, seconds: float) -> bool:
    """True when the server ends the connection (EOF or reset) within ``seconds``."""
    deadline = time.monotonic() + seconds
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if s.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True
    return False


def still_serving(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/v2/models/mlp/infer", json={"inputs": [GOOD]}, headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text


def test_long_request_target_is_414(server: ServerProcess) -> None:
    with connect(server) as s:
        s.sendall(head("GET", "/v2/models/" + "a" * 600))
        status, headers, body = read_response(s)
        assert status == 414 and "request target" in json.loads(body)["error"]
        assert headers["connection"] == "close" and closed_within(s, 5)
    still_serving(server)


@pytest.mark.parametrize(
    "lines",
    [
        [f"X-Pad: {'a' * 5000}"],  # one big field
        [f"X-Pad-{i}: b" for i in range(25)],  # too many fields
    ],
    ids=["bytes", "count"],
)
def test_header_block_over_the_limits_is_431(server: ServerProcess, lines: list[str]) -> None:
    with connect(server) as s:
        s.sendall(head("GET", "/v2", *lines))
        status, _, body = read_response(s)
        assert status == 431 and "header block" in json.loads(body)["error"]
        assert closed_within(s, 5)
    still_serving(server)


def test_a_header_line_that_never_ends_is_431_before_it_is_buffered(server: ServerProcess) -> None:
    """One header value that keeps growing with no line end: refused (431, not a 408 at the header
    timeout) once the head is past max_header_bytes, while it is still incomplete."""
    with connect(server) as s:
        s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        sent = 0
        started = time.monotonic()
        while sent < 1 << 20 and time.monotonic() - started < 0.9:  # inside the header timeout
            s.sendall(b"a" * 3000)
            sent += 3000
            if select.select([s], [], [], 0.05)[0]:
                break
        status, _, body = read_response(s)
        assert status == 431 and "header block" in json.loads(body)["error"]
        assert sent <= 8 * LIMITS["max_header_bytes"], f"refused only after {sent} bytes"
        assert closed_within(s, 5)
    still_serving(server)


def test_body_over_the_limit_is_413_from_content_length_with_no_100_continue(server: ServerProcess) -> None:
    with connect(server) as s:
        s.sendall(head("POST", "/v2/models/mlp/infer", "Content-Length: 5000000", "Expect: 100-continue"))
        status, _, body = read_response(s)  # answered from the head: no body byte was sent
        assert status == 413 and "5000000 bytes" in json.loads(body)["error"]
        assert closed_within(s, 5)
    still_serving(server)


def test_chunked_body_past_the_limit_is_413_and_closed(server: ServerProcess) -> None:
    chunk = b"a" * 30_000
    with connect(server) as s:
        s.sendall(head("POST", "/v2/models/mlp/infer", "Transfer-Encoding: chunked"))
        try:
            for _ in range(5):  # 150 kB against a 100 kB limit
                s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, _, body = read_response(s)
        assert status == 413 and "exceeds" in json.loads(body)["error"]
        assert closed_within(s, 5)
    still_serving(server)


@pytest.mark.parametrize(
    ("target", "token", "status"),
    [
        ("/v2/models/mlp/infer", None, 401),
        ("/v2/models/mlp/infer", "wrong", 401),
        ("/v2/repository/models/mlp/load", TOKEN, 403),  # the inference token on the admin API
        ("/v2/health/live", None, 405),  # open to anyone: a probe is a GET without a body
        ("/v2/health/ready", TOKEN, 405),
    ],
)
def test_refused_credentials_are_answered_from_the_head_before_the_body(
    server: ServerProcess, target: str, token: str | None, status: int
) -> None:
    """A gzip body announced but not sent: the refusal comes at once, with no 100 Continue (the
    health routes too, which take no token: nothing of a body is read, held or inflated there)."""
    body = gzip.compress(b'{"inputs": []}' + b" " * 500_000)  # ~0.5 kB compressed, 500 kB inflated
    with connect(server) as s:
        s.sendall(
            head(
                "POST",
                target,
                f"Content-Length: {len(body)}",
                "Content-Encoding: gzip",
                "Expect: 100-continue",
                token=token,
            )
        )
        got, headers, answer = read_response(s)
        assert got == status, answer
        assert headers["connection"] == "close"
        try:
            s.sendall(body)  # the server drains what a client sends anyway, then closes
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert closed_within(s, 5)
    still_serving(server)


def test_a_health_probe_with_a_body_is_refused_from_its_head(server: ServerProcess) -> None:
    body = gzip.compress(b" " * 500_000)
    with connect(server) as s:
        s.sendall(head("GET", "/v2/health/live", f"Content-Length: {len(body)}", "Content-Encoding: gzip"))
        got, headers, answer = read_response(s)
        assert got == 400 and "no request body" in answer.decode(), answer
        assert headers["connection"] == "close"
    assert httpx.get(f"{server.url}/v2/health/live", timeout=10).status_code == 200
    still_serving(server)


def test_slowloris_heads_are_closed_within_the_header_timeout(server: ServerProcess) -> None:
    """Eight clients each dribble a header line every 0.3 s: all are answered 408 and closed."""
    socks = [connect(server) for _ in range(8)]
    try:
        for s in socks:
            s.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answered: dict[int, bytes] = {}
        while len(answered) < len(socks) and time.monotonic() - started < 8:
            for i, s in enumerate(socks):
                if i in answered:
                    continue
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                    r, _, _ = select.select([s], [], [], 0)
                    if r:
                        answered[i] = s.recv(65536)
                except (BrokenPipeError, ConnectionResetError):
                    answered[i] = b""
            time.sleep(0.3)
        elapsed = time.monotonic() - started
        assert len(answered) == len(socks), f"{len(socks) - len(answered)} still open after {elapsed:.1f}s"
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408") for a in answered.values()), answered
        assert any(a.startswith(b"HTTP/1.1 408") for a in answered.values())
        assert all(closed_within(s, 5) for s in socks)
    finally:
        for s in socks:
            s.close()
    still_serving(server)


def test_a_connection_that_sends_nothing_is_closed(server: ServerProcess) -> None:
    with connect(server) as s:
        assert closed_within(s, 6)
    still_serving(server)


def test_a_slow_body_is_408(server: ServerProcess) -> None:
    with connect(server) as s:
        s.sendall(head("POST", "/v2/models/mlp/infer", "Content-Length: 100") + b'{"inputs"')
        started = time.monotonic()
        status, _, body = read_response(s)
        assert status == 408 and "body" in json.loads(body)["error"]
        assert time.monotonic() - started < 6
        assert closed_within(s, 5)
    still_serving(server)


def test_an_idle_keep_alive_connection_is_closed(server: ServerProcess) -> None:
    with connect(server) as s:
        s.sendall(head("GET", "/v2/health/live"))
        assert read_response(s)[0] == 200
        s.sendall(head("GET", "/v2/health/live"))  # kept alive: a second request works
        assert read_response(s)[0] == 200
        assert closed_within(s, 8)  # idle_timeout_s=2, then closed without a word
    still_serving(server)


def test_connections_past_the_cap_are_refused(server: ServerProcess) -> None:
    time.sleep(0.5)  # the earlier tests' closed connections leave the server's count
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            s = connect(server)
            s.sendall(head("GET", "/v2/health/live"))
            assert read_response(s)[0] == 200  # accepted and counted
            held.append(s)
        with connect(server) as extra:
            try:
                extra.sendall(head("GET", "/v2/health/live"))
                data = extra.recv(65536)
            except ConnectionResetError:
                data = b""
            assert data == b"" or data.startswith(b"HTTP/1.1 503"), data
            assert closed_within(extra, 5)
    finally:
        for s in held:
            s.close()
    time.sleep(0.5)  # the server sees the closes
    still_serving(server)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_cannot_grow_the_server(server: ServerProcess) -> None:
    """Pipelined requests with answers never read: the server stops reading from the client
    once its unsent answers pass max_pending_write_bytes, so the client stalls, not the server."""
    body = json.dumps({"inputs": [{**GOOD, "shape": [500, 8], "data": [0.0] * 4000}]}).encode()
    one = head("POST", "/v2/models/mlp/infer", f"Content-Length: {len(body)}") + body  # ~6 kB answer
    before = _rss_kib(server.proc.pid)
    budget = 200 * len(one) * 100  # unbounded, this would queue some 600 MB of answers
    with connect(server) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setblocking(False)
        sent, stalled = 0, False
        deadline = time.monotonic() + 20
        while sent < budget and time.monotonic() < deadline:
            _, w, _ = select.select([], [s], [], 1.5)
            if not w:
                stalled = True
                break
            try:
                sent += s.send(one * 20)
            except BlockingIOError:
                continue
        grown = _rss_kib(server.proc.pid) - before
        assert stalled, f"the server kept reading: {sent} bytes accepted"
        assert sent < 64 * 1024 * 1024
        assert grown < 64 * 1024, f"server RSS grew {grown} KiB"
        health = httpx.get(f"{server.url}/v2/health/live", timeout=10)  # other clients are served
        assert health.status_code == 200
    still_serving(server)


def test_pipelined_requests_then_garbage_keep_their_answers(server: ServerProcess) -> None:
    live = head("GET", "/v2/health/live")
    meta = head("GET", "/v2/models/mlp")
    with connect(server) as s:
        s.sendall(live + meta + live + b"NOT HTTP AT ALL\r\n\r\n")
        buf = bytearray()
        answers = [read_response(s, buf) for _ in range(4)]
        assert [a[0] for a in answers] == [200, 200, 200, 400]
        assert b'"live"' in answers[0][2] and b"onnxruntime" in answers[1][2]
        assert b"malformed HTTP request" in answers[3][2]
        assert closed_within(s, 5)
    still_serving(server)


def test_many_pipelined_requests_are_all_answered_in_order(server: ServerProcess) -> None:
    """More than max_pipelined_requests at once: reading pauses and resumes, nothing is lost."""
    with connect(server) as s:
        s.sendall(b"".join(head("GET", f"/v2/models/{m}") for m in ["mlp", "echo"] * 20))
        buf = bytearray()
        names = [json.loads(read_response(s, buf)[2])["name"] for _ in range(40)]
        assert names == ["mlp", "echo"] * 20
