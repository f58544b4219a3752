"""Stopping the model server cuts no request short with a reset.

HTTP/1.1 lets a server close a kept-alive connection at any moment; a client whose request
crosses that close must be able to tell "the server closed before reading it" (a clean end of
stream: send it again on a new connection) from "the connection broke" (a reset: the request may
have been acted on). A server that exits with a request unread in a socket's buffer makes the
kernel answer with a reset, which is what an upgrade's load saw once in 2,000 requests. So a
stopping server answers what it has read with ``Connection: close``, ends idle connections by
shutting only its own side, and reads and drops what still comes for a moment before it exits.
"""

from __future__ import annotations

import signal
import socket
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration._serving_fixtures import TOKEN, head, read_response, start_server, write_echo

pytestmark = pytest.mark.integration

CONNECTIONS = 700
AT_ONCE = 100
"""Requests sent at once after the stop signal: they cross the server's first moves."""
SPACING_S = 0.002
"""The rest go out one every 2 ms: past the moment the server exits (0.5-1.5 s)."""


def _outcome(s: socket.socket) -> str:
    """What one request sent around the stop got: an answer, a clean close or a reset."""
    try:
        status, headers, _ = read_response(s)
    except ConnectionResetError:
        return "reset"
    except ConnectionError:
        return "closed before an answer"
    assert status == 200
    # before the signal was handled: kept alive (then closed cleanly), else ``Connection: close``
    return "answered" if headers.get("connection") == "close" else "answered, kept alive"


def test_requests_crossing_a_stop_get_an_answer_or_a_clean_close(tmp_path: Path) -> None:
    write_echo(tmp_path / "echo")
    (tmp_path / "token").write_text(TOKEN)
    args = ["--model", str(tmp_path / "echo"), "--poll-seconds", "0", "--token-file", str(tmp_path / "token")]
    srv = start_server(args, tmp_path)
    request = head("GET", "/v2/health/live")
    conns = []
    try:
        for _ in range(CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", srv.http_port), timeout=10)
            s.sendall(request)
            assert read_response(s)[0] == 200  # kept alive, idle from here
            conns.append(s)
        srv.proc.send_signal(signal.SIGTERM)
        stopped = time.monotonic()
        sent: Counter[str] = Counter()
        for i, s in enumerate(conns):  # each request races the server's end of its connection
            if i >= AT_ONCE:
                time.sleep(SPACING_S)
            if srv.proc.poll() is not None:
                sent["after the exit"] += 1
            try:
                s.sendall(request)
                sent["sent"] += 1
            except (BrokenPipeError, ConnectionResetError):
                sent["reset on sending"] += 1
        outcomes = Counter(_outcome(s) for s in conns)
        srv.proc.wait(30)
        exited = time.monotonic() - stopped
    finally:
        for s in conns:
            s.close()
        srv.stop()
    print(f"exit {exited:.2f} s after the stop signal: {dict(sent)}, {dict(outcomes)}")
    assert srv.proc.returncode == 0, srv.log.read_text()[-3000:]
    assert sent["reset on sending"] == 0 and outcomes["reset"] == 0, (dict(sent), dict(outcomes))
    assert sum(outcomes.values()) == CONNECTIONS
