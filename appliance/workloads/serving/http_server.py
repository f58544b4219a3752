"""The REST front end: a lean asyncio.Protocol HTTP/1.1 server with httptools parsing.

Why hand-rolled: for a small model the HTTP layer dominates latency. A framework stack (ASGI
server + router + request objects) costs 100-700 us per request on these cores; this protocol
parses with httptools (llhttp), routes on the split path, and writes one bytes object per
response, which keeps a whole request well under the 0.3 ms target. Keep-alive and pipelining
are supported (responses are written in request order); bodies over ``max_body`` get a 413.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools

from appliance.workloads.serving.errors import InferenceError, PayloadTooLarge
from appliance.workloads.serving.limits import ServerLimits

log = logging.getLogger(__name__)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}


@dataclass
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass
class Response:
    """One HTTP response; ``headers`` are extra lines besides Content-Type/Length."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def error_response(err: InferenceError) -> Response:
    import orjson

    headers = [("WWW-Authenticate", "Bearer")] if err.http_status == 401 else []
    return Response(err.http_status, orjson.dumps({"error": err.message}), headers=headers)


class Router:
    """What the protocol calls: returns a Response now, or an awaitable of one."""

    def dispatch(self, req: Request) -> Response | Awaitable[Response]:
        raise NotImplementedError


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, router: Router, max_body: int) -> None:
        self.router = router
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.running = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, "protocol upgrades are not supported")
            return
        except httptools.HttpParserError as err:
            self._fail(400, f"malformed HTTP request: {err}")
            return
        if self.queue and not self.running:
            self._process()

    # httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._reset()

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        length = self._headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            self._too_large = True
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport is not None:
            # curl sends this for bodies over 1 KiB and waits a second for it unless answered
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            self._too_large = True
        if not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = httptools.parse_url(self._url).path.decode("latin-1")
        body = b"".join(self._body)
        req = Request(method, path, self._headers, body, self.parser.should_keep_alive())
        if self._too_large:
            req.method = "TOO_LARGE"
        self.queue.append(req)

    # request processing --------------------------------------------------------------------
    def _process(self) -> None:
        while self.queue and self.transport is not None:
            req = self.queue[0]
            result = self._dispatch(req)
            if isinstance(result, Response):
                self.queue.popleft()
                self._write(result, req.keep_alive)
                continue
            self.running = True
            asyncio.get_running_loop().create_task(self._finish(req, result))
            return

    def _dispatch(self, req: Request) -> Response | Awaitable[Response]:
        try:
            if req.method == "TOO_LARGE":
                raise PayloadTooLarge(f"request body exceeds the server's limit of {self.max_body} bytes")
            encoding = req.headers.get("content-encoding")
            if encoding in ("gzip", "deflate"):
                req.body = _inflate(req.body, encoding, self.max_body)
            return self.router.dispatch(req)
        except InferenceError as err:
            return error_response(err)
        except Exception as err:  # a bug, not the client's fault: 500, logged, connection kept
            log.exception("error serving %s %s", req.method, req.path)
            return error_response(InferenceError(f"internal error: {err}"))

    async def _finish(self, req: Request, pending: Awaitable[Response]) -> None:
        try:
            response = await pending
        except InferenceError as err:
            response = error_response(err)
        except Exception as err:
            log.exception("error serving %s %s", req.method, req.path)
            response = error_response(InferenceError(f"internal error: {err}"))
        self.queue.popleft()
        self.running = False
        self._write(response, req.keep_alive)
        if self.queue:
            self._process()

    def _write(self, resp: Response, keep_alive: bool) -> None:
        if self.transport is None:
            return
        head = [
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            % (resp.status, _REASONS.get(resp.status, b"Unknown"), resp.content_type, len(resp.body))
        ]
        for name, value in resp.headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        head.append(resp.body)
        self.transport.write(b"".join(head))
        if not keep_alive:
            self.transport.close()
            self.transport = None

    def _fail(self, status: int, message: str) -> None:
        import orjson

        self.queue.clear()
        self._write(Response(status, orjson.dumps({"error": message})), keep_alive=False)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip/deflate request body without letting it grow past ``limit``."""
    wbits = 31 if encoding == "gzip" else 15
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        from appliance.workloads.serving.errors import BadRequest

        raise BadRequest(f"request body is not valid {encoding}: {err}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the server's limit of {limit} bytes")
    return out


async def start(router: Router, host: str, port: int, limits: ServerLimits) -> asyncio.Server:
    """Listen on host:port (port 0: any free one)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        lambda: HttpProtocol(router, limits.max_body_bytes), host, port, backlog=1024
    )


def bound_port(server: asyncio.Server) -> Any:
    return server.sockets[0].getsockname()[1]
