"""The serving supervisor's own port (``/metrics``, ``/replicas``) at the wire: a client that
never reads its answer is cut off and gives its slot back."""

from __future__ import annotations

import asyncio
import socket
from types import SimpleNamespace

import pytest

from appliance.workloads.serving import admin_http
from appliance.workloads.serving.admin_http import AdminServer

BIG = 32 * 1024 * 1024
"""A /metrics answer past what the transport and both kernels buffer on loopback."""


def supervisor(metrics: bytes) -> SimpleNamespace:
    return SimpleNamespace(admin_tokens=[], aggregator=SimpleNamespace(exposition=lambda: metrics))


async def received_until_closed(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int:
    """Bytes read before the server's end of the connection is gone (reset or closed)."""
    total = 0
    try:
        while chunk := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


def test_a_client_that_never_reads_its_answer_is_cut_off_and_frees_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(admin_http, "WRITE_TIMEOUT_S", 0.3)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server = AdminServer(supervisor(b"x" * BIG))  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # no receive window to speak of
            sock.setblocking(False)
            await loop.sock_connect(sock, ("127.0.0.1", port))
            await loop.sock_sendall(sock, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            for _ in range(40):  # reads nothing for up to 2 s
                await asyncio.sleep(0.05)
                if server._open == 0:
                    break
            assert server._open == 0, "the slot is still held by a client that reads nothing"
            assert await received_until_closed(loop, sock) < BIG, "cut off, not sent in full"
        server.close()

    asyncio.run(scenario())


def test_a_client_that_reads_its_answer_gets_all_of_it() -> None:
    async def scenario() -> None:
        server = AdminServer(supervisor(b"y" * (4 * 1024 * 1024)))  # type: ignore[arg-type]
        await server.start("127.0.0.1", 0)
        assert server.server is not None
        port = server.server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"y" * 1000)
        assert len(answer.partition(b"\r\n\r\n")[2]) == 4 * 1024 * 1024
        assert server._open == 0
        server.close()

    asyncio.run(scenario())
