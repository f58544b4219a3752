"""The supervisor's own port (the service's metrics port): ``/metrics`` and ``/replicas``.

A deliberately small HTTP/1.1 server: one request per connection, the request line and headers
capped at 16 KiB, a body at 64 KiB, 10 s to send them, 10 s to take the answer (then the
connection is cut), 64 connections at once (more get 503).
``/metrics`` is open like every scrape target of the stack; ``/replicas`` needs the admin token
(``serving_admin_token``), GET to read the state and PUT ``{"replicas": N}`` to set the count
(the autoscaler adds ``"decision"``, which the state then shows).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.workloads.serving.supervisor import Supervisor

log = logging.getLogger(__name__)
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
TIMEOUT_S = 10.0
WRITE_TIMEOUT_S = 10.0
"""Time for a client to take its whole answer; one that reads nothing would otherwise hold its
connection and its slot for good."""
MAX_CONNECTIONS = 64
REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    503: "Service Unavailable",
}


class AdminServer:
    def __init__(self, supervisor: Supervisor) -> None:
        self.sup = supervisor
        self.server: asyncio.Server | None = None
        self._open = 0

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._handle, host, port, limit=MAX_HEAD)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        try:
            if self._open > MAX_CONNECTIONS:
                await _respond(writer, 503, {"error": "too many connections; retry"})
                return
            try:
                status, body, ctype = await asyncio.wait_for(self._request(reader), TIMEOUT_S)
            except TimeoutError:
                status, body, ctype = 408, {"error": "request not received within 10 s"}, None
            except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as err:
                status, body, ctype = 400, {"error": f"bad request: {err}"}, None
            await _respond(writer, status, body, ctype)
        except ConnectionError:
            pass
        finally:
            self._open -= 1
            writer.close()

    async def _request(self, reader: asyncio.StreamReader) -> tuple[int, Any, str | None]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        if length < 0 or length > MAX_BODY:
            return 413, {"error": f"body over {MAX_BODY} bytes"}, None
        body = await reader.readexactly(length) if length else b""
        path = target.split("?", 1)[0]
        if path == "/metrics" and method == "GET":
            text = await asyncio.to_thread(self.sup.aggregator.exposition)
            return 200, text, "text/plain; version=0.0.4; charset=utf-8"
        if path != "/replicas":
            return 404, {"error": f"no route {path} (routes: /metrics, /replicas)"}, None
        denied = self._check_admin(headers.get("authorization"))
        if denied is not None:
            return denied
        if method == "GET":
            return 200, self.sup.status(), None
        if method not in ("PUT", "POST"):
            return 405, {"error": "use GET or PUT on /replicas"}, None
        try:
            data = json.loads(body or b"null")
            count = data["replicas"]
            if not isinstance(count, int) or isinstance(count, bool):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return 400, {"error": 'send JSON {"replicas": N} with N an integer'}, None
        decision = data.get("decision")
        try:
            self.sup.set_desired(count, decision if isinstance(decision, dict) else None)
        except ValueError as err:
            return 400, {"error": str(err)}, None
        return 200, self.sup.status(), None

    def _check_admin(self, authorization: str | None) -> tuple[int, Any, None] | None:
        tokens = self.sup.admin_tokens
        if not tokens:
            return None
        given = authorization[7:].strip() if authorization and authorization[:7].lower() == "bearer " else ""
        ok = False
        for token in tokens:
            ok |= hmac.compare_digest(given.encode(), token.encode())
        if ok:
            return None
        why = "/replicas needs the admin token (Authorization: Bearer <serving_admin_token>)"
        return 401, {"error": why}, None


async def _respond(writer: asyncio.StreamWriter, status: int, body: Any, ctype: str | None = None) -> None:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    reason = REASONS.get(status, "")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype or 'application/json'}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await _flush(writer)


async def _flush(writer: asyncio.StreamWriter) -> None:
    """Waits until the answer is sent and the connection closed, at most ``WRITE_TIMEOUT_S``, then
    aborts it, dropping what is unsent. Both waits need the bound: ``drain`` (an answer past the
    transport's buffer, like a long ``/metrics``) holds the slot while the client reads nothing,
    and ``close`` keeps the connection, and the unsent bytes, until they are all sent."""
    try:
        await asyncio.wait_for(_drain_and_close(writer), WRITE_TIMEOUT_S)
    except TimeoutError:
        writer.transport.abort()


async def _drain_and_close(writer: asyncio.StreamWriter) -> None:
    await writer.drain()
    writer.close()
    await writer.wait_closed()
