"""The REST front end: a lean asyncio.Protocol HTTP/1.1 server with httptools parsing, bounded.

Why hand-rolled: for a small model the HTTP layer dominates latency. A framework stack (ASGI
server + router + request objects) costs 100-700 us per request on these cores; this protocol
parses with httptools (llhttp), routes on the split path, and writes one bytes object per
response, which keeps a whole request well under the 0.3 ms target. Keep-alive and pipelining
are supported (responses are written in request order).

Every connection lives under the server's ``ServerLimits`` (docs/security.md lists them):

- the request head: target longer than ``max_url_bytes`` -> 414; header block larger than
  ``max_header_bytes`` or more than ``max_header_count`` fields -> 431;
- the body: a Content-Length over ``max_body_bytes`` -> 413 decided from the head, before a byte
  of body is read (and no ``100 Continue``); a chunked body growing past it -> 413;
- authentication is decided from the head (``Router.admit``): a refused request gets its 401/403
  before its body is read, buffered or inflated;
- a refusal whose body is still on the way ends the connection: the answer is written, the
  write side shut, and whatever the client still sends is read and thrown away (no parsing, no
  buffering) for at most ``LINGER_S`` seconds so its TCP stack does not reset the answer away;
- timeouts, checked by one sweeper per listener rather than a timer per request: a head must
  arrive within ``header_timeout_s`` of its first byte (or of the connection opening), a body
  within ``body_timeout_s`` of its head (408 then close), and a keep-alive connection with nothing
  in flight is closed after ``idle_timeout_s``; a client that reads nothing of its answers for
  ``idle_timeout_s`` is cut off;
- ``max_connections`` open connections: one more is answered 503 and closed at once;
- back-pressure: while a connection's unsent answers exceed ``max_pending_write_bytes``, the
  server stops reading from it and answers nothing more on it; while more than
  ``max_pipelined_requests`` requests or ``max_connection_buffer_bytes`` of request bodies wait,
  it stops reading too (reading resumes once they drain);
- a malformed request after good pipelined ones: the good ones are answered in order, then a
  400, then the connection closes.

Stopping (``close_gracefully``) cuts no request with a reset: the listener stops accepting, what
was read is answered with ``Connection: close``, an idle connection gets its end of stream with
only the server's side shut, and what crosses it is read and dropped for ``STOP_LINGER_S``. A
process that exited with a request unread in a socket's buffer would make the kernel reset the
connection, and a client could not tell "never read, send it again" from "broken while served".
"""

from __future__ import annotations

import asyncio
import logging
import socket
import zlib
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import httptools
import orjson

from appliance.workloads.serving.errors import BadRequest, InferenceError, PayloadTooLarge
from appliance.workloads.serving.limits import ServerLimits
from appliance.workloads.serving.peer import Peer

log = logging.getLogger(__name__)
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
LINGER_S = 2.0
"""How long a refused connection's remaining input is drained before the socket is closed."""
STOP_LINGER_S = 1.0
"""How long a stopping server reads and drops what crosses its end of a connection: a request
sent as the end of stream left meets it within a round trip."""

_HEAD, _BODY, _IDLE = 0, 1, 2  # what the connection waits for from the client
_TOO_MANY_BODY = b'{"error":"too many open connections to this server, retry later"}'
_TOO_MANY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
    b"Connection: close\r\nRetry-After: 1\r\n\r\n%s" % (len(_TOO_MANY_BODY), _TOO_MANY_BODY)
)


_LISTENERS: dict[asyncio.Server, _Listener] = {}
"""Each running server's listener, for ``close_gracefully``."""


@dataclass(slots=True)
class Request:
    """One parsed HTTP request; ``response`` set: already answered from its head (a refusal)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool
    response: Response | None = None
    parts: list[str] | None = None
    """The decoded path segments, set by the router's ``admit`` and reused by ``dispatch``."""
    peer: Peer | None = None
    """Who is at the other end of the connection (asked only by what needs it)."""

    def has_body(self) -> bool:
        """Its head announces a body (chunked, or a Content-Length other than 0)."""
        length = self.headers.get("content-length")
        return "transfer-encoding" in self.headers or (length is not None and length != "0")


@dataclass
class Response:
    """One HTTP response; ``headers`` are extra lines besides Content-Type/Length."""

    status: int
    body: bytes
    content_type: bytes = b"application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


def error_response(err: InferenceError) -> Response:
    headers = [("WWW-Authenticate", "Bearer")] if err.http_status == 401 else []
    return Response(err.http_status, orjson.dumps({"error": err.message}), headers=headers)


def _plain(status: int, message: str) -> Response:
    return Response(status, orjson.dumps({"error": message}))


class Router:
    """What the protocol calls.

    ``admit`` runs when a request's head is complete, before any of its body is read: it returns
    the refusal (401, 403, ...) or None. ``dispatch`` runs on admitted requests only, with the
    whole body: a Response now, or an awaitable of one.
    """

    def admit(self, req: Request) -> InferenceError | None:
        return None

    def dispatch(self, req: Request) -> Response | Awaitable[Response]:
        raise NotImplementedError


class _Refuse(Exception):
    """Raised inside a parser callback: answer ``status`` and stop reading this connection."""

    def __init__(self, status: int, message: str, response: Response | None = None) -> None:
        super().__init__(message)
        self.response = response or _plain(status, message)


class _Listener:
    """What every connection of one listening socket shares: the limits, the router, the open
    connections (for the cap) and one sweeper that enforces the timeouts of all of them."""

    def __init__(self, router: Router, limits: ServerLimits, loop: asyncio.AbstractEventLoop) -> None:
        self.router = router
        self.limits = limits
        self.loop = loop
        self.conns: set[HttpProtocol] = set()
        self.lingering: set[HttpProtocol] = set()
        """Connections whose answer is written and side shut, dropping what still comes."""
        self.stopping = False
        shortest = min(limits.header_timeout_s, limits.body_timeout_s, limits.idle_timeout_s)
        self.tick = min(1.0, max(0.05, shortest / 4))
        self.handle = loop.call_later(self.tick, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        for conn in list(self.conns):
            conn.check_timeouts(now)
        self.handle = self.loop.call_later(self.tick, self.sweep)


class HttpProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, listener: _Listener) -> None:
        self.listener = listener
        limits = self.limits = listener.limits
        self.router = listener.router
        self.max_body = limits.max_body_bytes
        self.max_header_bytes = limits.max_header_bytes
        self.max_header_count = limits.max_header_count
        self.max_pipelined = limits.max_pipelined_requests
        self.max_buffered = limits.max_connection_buffer_bytes
        self.time = listener.loop.time
        self.transport: asyncio.Transport | None = None
        self.peer: Peer | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.queued_bytes = 0
        self.running = False
        self.closing = False  # a refusal is queued: no more input is parsed
        self.write_paused = False
        self.read_paused = False
        self.paused_since = 0.0
        self.phase = _HEAD
        self.since = self.time()
        self.in_message = False
        self.began = False
        self.head_raw = 0
        self._req: Request | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._hbytes = 0
        self._hcount = 0
        self._body: list[bytes] = []
        self._size = 0

    # asyncio.Protocol ----------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        conns = self.listener.conns
        if len(conns) >= self.limits.max_connections:
            transport.write(_TOO_MANY)  # type: ignore[attr-defined]
            transport.close()
            return
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport
        self.peer = Peer.of(transport)
        conns.add(self)
        transport.set_write_buffer_limits(high=self.limits.max_pending_write_bytes)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.listener.conns.discard(self)
        self.listener.lingering.discard(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.paused_since = self.time()
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and not self.running:
            self._process()
        else:
            self._flow()

    def data_received(self, data: bytes) -> None:
        if self.closing or self.transport is None:
            return  # a refused connection's leftovers, or a lingering close: thrown away
        self.began = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__
            if isinstance(cause, _Refuse):
                self._refuse(cause.response)
            else:
                log.error("HTTP parser callback failed", exc_info=cause)
                self._refuse(_plain(500, f"internal error: {cause}"))
        except httptools.HttpParserUpgrade:
            self._refuse(_plain(400, "protocol upgrades are not supported"))
        except httptools.HttpParserError as err:
            self._refuse(_plain(400, f"malformed HTTP request: {err}"))
        else:
            if self.phase == _HEAD:
                # a head still incomplete: httptools buffers a partial header line out of our
                # sight, so bound the raw bytes (a message begun in this read counts from the next)
                self.head_raw = 0 if self.began else self.head_raw + len(data)
                if self.head_raw > self.limits.max_header_bytes:
                    self._refuse(_header_too_large(self.limits))
        if self.queue and not self.running:
            self._process()
        else:
            self._flow()

    # httptools callbacks -------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._hbytes = 0
        self._hcount = 0
        self._body = []
        self._size = 0
        self.phase = _HEAD
        self.since = self.time()
        self.in_message = self.began = True
        self.head_raw = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self.limits.max_url_bytes:
            raise _Refuse(
                414,
                f"request target longer than the server's limit of {self.limits.max_url_bytes} bytes",
            )

    def on_header(self, name: bytes, value: bytes) -> None:
        self._hbytes += len(name) + len(value) + 4
        self._hcount += 1
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        if self._hbytes > self.max_header_bytes or self._hcount > self.max_header_count:
            raise _Refuse(431, "", _header_too_large(self.limits))

    def on_headers_complete(self) -> None:
        headers = self._headers
        try:
            path = httptools.parse_url(self._url).path.decode("latin-1")
        except httptools.HttpParserInvalidURLError:
            raise _Refuse(400, "malformed request target") from None
        req = Request(
            self.parser.get_method().decode(),
            path,
            headers,
            b"",
            self.parser.should_keep_alive(),
            peer=self.peer,
        )
        length = headers.get("content-length")
        has_body = req.has_body()
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise _Refuse(
                413, f"request body of {length} bytes exceeds the server's limit of {self.max_body}"
            )
        refusal = self.router.admit(req)
        if refusal is not None:
            if has_body:  # do not read, buffer or inflate the body of a refused request
                raise _Refuse(refusal.http_status, "", error_response(refusal))
            req.response = error_response(refusal)
        elif (
            "expect" in headers
            and headers["expect"].lower() == "100-continue"
            and not self.queue
            and not self.running
            and self.transport is not None
        ):
            # curl sends this for bodies over 1 KiB and waits a second for it unless answered; sent
            # only once the request is known to be read, and only when no earlier answer is due
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._req = req
        self.phase = _BODY
        self.since = self.time()

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self.max_body:
            raise _Refuse(413, f"request body exceeds the server's limit of {self.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        req = self._req
        assert req is not None
        body = self._body
        req.body = body[0] if len(body) == 1 else b"".join(body)
        self.queue.append(req)
        self.queued_bytes += len(req.body)
        self.phase = _IDLE
        self.since = self.time()
        self.in_message = False

    # limits ----------------------------------------------------------------------------------
    def _refuse(self, response: Response) -> None:
        """Queue a final answer after the requests already read; nothing more is parsed."""
        self.closing = True
        self.queue.append(Request("", "", {}, b"", False, response))

    def _flow(self) -> None:
        """Stop reading while answers or requests pile up on this connection; resume after."""
        if self.transport is None:
            return
        pause = self.write_paused or (
            not self.closing
            and (len(self.queue) >= self.max_pipelined or self.queued_bytes > self.max_buffered)
        )
        if pause != self.read_paused:
            self.read_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def check_timeouts(self, now: float) -> None:
        """Called by the listener's sweeper: close what waits on the client for too long."""
        transport, limits = self.transport, self.limits
        if transport is None:
            return
        if self.write_paused:
            if now - self.paused_since > limits.idle_timeout_s:
                log.info("closing a connection whose client read nothing for %ss", limits.idle_timeout_s)
                transport.abort()
            return
        if self.closing:
            return
        if self.phase == _IDLE:
            if not self.queue and not self.running and now - self.since > limits.idle_timeout_s:
                transport.close()
            return
        timeout = limits.header_timeout_s if self.phase == _HEAD else limits.body_timeout_s
        if now - self.since <= timeout:
            return
        if not self.in_message and not self.queue and not self.running:
            transport.close()  # a connection that never sent a byte: nothing to answer
            return
        what = "head" if self.phase == _HEAD else "body"
        self._refuse(_plain(408, f"request {what} not received within {timeout:g} s"))
        if not self.running:
            self._process()

    def end_if_idle(self) -> None:
        """A stopping server's end of a connection with nothing read and nothing owed."""
        if self.transport is None or self.in_message or self.queue or self.running:
            return
        self._end(self.transport, STOP_LINGER_S)

    def _end(self, transport: asyncio.Transport, linger_s: float) -> None:
        """Shut our side, then read and drop the client's for ``linger_s``: a request crossing
        the end of stream meets an open socket (no reset), and the client sees a clean close.
        ``transport`` None from here is what makes every later read, flow or timeout a no-op."""
        self.transport = None
        listener = self.listener
        listener.conns.discard(self)
        if not transport.can_write_eof():
            transport.close()
            return
        listener.lingering.add(self)
        transport.write_eof()
        if self.read_paused:
            transport.resume_reading()
        listener.loop.call_later(linger_s, transport.close)

    # request processing --------------------------------------------------------------------
    def _process(self) -> None:
        queue = self.queue
        while queue and self.transport is not None and not self.write_paused:
            req = queue[0]
            result = req.response if req.response is not None else self._dispatch(req)
            if isinstance(result, Response):
                queue.popleft()
                self.queued_bytes -= len(req.body)
                self._write(result, req.keep_alive)
                continue
            self.running = True
            self.listener.loop.create_task(self._finish(req, result))
            break
        self._flow()

    def _dispatch(self, req: Request) -> Response | Awaitable[Response]:
        try:
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
        self.queued_bytes -= len(req.body)
        self.running = False
        self._write(response, req.keep_alive)
        if self.queue:
            self._process()
        else:
            self._flow()

    def _write(self, resp: Response, keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        head = [
            b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
            % (resp.status, _REASONS.get(resp.status, b"Unknown"), resp.content_type, len(resp.body))
        ]
        for name, value in resp.headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        if self.listener.stopping and not self.queue:
            keep_alive = False  # the last answer owed on it: the connection ends with it
        if not keep_alive:
            head.append(b"Connection: close\r\n")
        head.append(b"\r\n")
        head.append(resp.body)
        transport.write(b"".join(head))
        if keep_alive:
            if self.phase == _IDLE and not self.queue:
                self.since = self.time()
            return
        if self.closing:  # the client may still be sending what was refused: drain it briefly
            self._end(transport, LINGER_S)
        elif self.listener.stopping:
            self._end(transport, STOP_LINGER_S)
        else:
            self.transport = None
            self.listener.conns.discard(self)
            transport.close()


def _header_too_large(limits: ServerLimits) -> Response:
    return _plain(
        431,
        f"request header block exceeds the server's limits ({limits.max_header_bytes} bytes, "
        f"{limits.max_header_count} fields)",
    )


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Decompress a gzip/deflate request body without letting it grow past ``limit``."""
    wbits = 31 if encoding == "gzip" else 15
    d = zlib.decompressobj(wbits)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as err:
        raise BadRequest(f"request body is not valid {encoding}: {err}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body exceeds the server's limit of {limit} bytes")
    return out


async def start(
    router: Router, host: str, port: int, limits: ServerLimits, sock: socket.socket | None = None
) -> asyncio.Server:
    """Listen on host:port (port 0: any free one), or accept on ``sock``, a listening socket
    taken over from the previous server (runtimes/handover.py)."""
    loop = asyncio.get_running_loop()
    listener = _Listener(router, limits, loop)
    if sock is not None:
        server = await loop.create_server(lambda: HttpProtocol(listener), sock=sock, backlog=1024)
    else:
        server = await loop.create_server(lambda: HttpProtocol(listener), host, port, backlog=1024)
    _LISTENERS[server] = listener
    return server


async def close_gracefully(server: asyncio.Server, grace_s: float) -> None:
    """Stop accepting, answer what was read (``Connection: close``), end idle connections
    cleanly; return once every connection is closed or ``grace_s`` has passed."""
    listener = _LISTENERS.pop(server, None)
    server.close()
    if listener is None:
        return
    listener.stopping = True
    loop = listener.loop
    deadline = loop.time() + grace_s
    while (listener.conns or listener.lingering) and loop.time() < deadline:
        for conn in list(listener.conns):
            conn.end_if_idle()
        await asyncio.sleep(0.01)
    listener.handle.cancel()


def bound_port(server: asyncio.Server) -> Any:
    return server.sockets[0].getsockname()[1]
