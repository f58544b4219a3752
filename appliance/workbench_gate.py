"""JupyterLab whose own port checks a caller's login before it reads a request body, and bounds
its connections.

Tornado, Jupyter's server, reads a request's whole body into memory (up to Jupyter's
``max_body_size``, 512 MiB) before a handler runs, and Jupyter checks the token or login cookie in
the handler. So anyone who can reach the workbench's port could make it hold half a gigabyte per
connection without a token. The TLS gateway checks first (``gateway._web_block``), but the
workbench's own port (loopback by default, the private network when ``bind_address`` says so) had
nothing in front, as MLflow's had before ``mlflow_gate``.

``LoginBeforeBody`` sits between Tornado's HTTP server and Jupyter's application. When a request's
head announces a body (a length above zero, or chunked), it asks Jupyter's own identity provider,
the code every Jupyter handler uses, whether the head's credentials (``Authorization: token``, the
``token`` query argument or the login cookie) name a user. If not, it answers 403 as Jupyter's own
API does and closes the connection without reading the body. Routes Jupyter marks public
(``@allow_unauthenticated``: the login form) keep their bodies, bounded to ``PUBLIC_BODY_LIMIT``.
Requests without a body (reads, WebSockets) pass untouched: Jupyter checks them as before.

Tornado's server also came without the other bounds a network-facing server needs: no cap on
open connections, an hour for a request's head (which is also how long an idle keep-alive
connection stays open), no limit on the time a body takes. ``bound`` gives it
``ConnectionLimits``: past ``max_connections`` open HTTP connections a new one is answered 503
and closed (WebSockets, which only a logged-in caller opens, are no longer counted once
upgraded); a head must arrive within ``header_timeout_s``, a body within ``body_timeout_s``.

Run as ``python -m appliance.workbench_gate [jupyter lab options]``: JupyterLab with this gate.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from tornado import gen, httpserver, httputil, iostream
from tornado.httputil import HTTPHeaders, RequestStartLine, ResponseStartLine
from tornado.ioloop import IOLoop
from tornado.web import Application

from appliance.request_body import announces_body

PUBLIC_BODY_LIMIT = 64 * 1024
"""The largest body a public route (the login form: a token or password and an XSRF value) takes
without a login."""
LINGER_SECONDS = 2.0
"""How long a refused connection's unread body is read and dropped after the answer, so that the
caller reads the 403 rather than a reset (nginx's lingering close); then the connection closes."""
LINGER_BYTES = 4 << 20
"""How much of a refused body is read and dropped at most while lingering."""


@dataclass(frozen=True)
class ConnectionLimits:
    """The bounds of the workbench's own port (``bound``)."""

    max_connections: int = 256
    """Open HTTP connections at once: a JupyterLab tab keeps a handful, one person uses the
    workbench; one more is answered 503."""
    header_timeout_s: float = 60.0
    """For a request's head, counted from the connection's start or the last answer: a silent
    or idle connection is closed after it (a browser opens a new one as it needs)."""
    body_timeout_s: float = 600.0
    """For a request's body once its head is in: JupyterLab sends files over 15 MB in 1 MiB
    pieces, so only a single request of up to 15 MB (20 MB in base64) needs to fit, on any link."""


_BUSY_TEXT = b"the workbench has too many connections open: try again in a moment\n"
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
    + f"Content-Length: {len(_BUSY_TEXT)}\r\nConnection: close\r\n\r\n".encode()
    + _BUSY_TEXT
)
"""The answer to a connection past ``max_connections``."""


LoginCheck = Callable[[httputil.HTTPServerRequest], Awaitable[bool]]
"""Whether a request's head (no body yet) carries credentials that name a user."""
PublicCheck = Callable[[httputil.HTTPServerRequest], bool]
"""Whether a request goes to a route its server lets anyone call."""


def carries_body(headers: HTTPHeaders) -> bool:
    """Whether a request's head announces a body (``request_body.announces_body``)."""
    return announces_body(headers.get("Content-Length"), headers.get("Transfer-Encoding"))


def refusal(message: str) -> bytes:
    """A whole HTTP/1.1 403 answer that closes the connection, its body as Jupyter's API writes one."""
    body = json.dumps({"message": message, "reason": None}).encode()
    head = (
        "HTTP/1.1 403 Forbidden\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


REFUSED = refusal(
    "a request with a body needs a login first: send 'Authorization: token <token>' (the "
    "workbench token, `appliance secrets show jupyter_token`) or log in at /login"
)


class LoginBeforeBody(httputil.HTTPServerConnectionDelegate):
    """Tornado's connection delegate wrapped: each request's head is seen before its body."""

    def __init__(
        self, inner: httputil.HTTPServerConnectionDelegate, logged_in: LoginCheck, public: PublicCheck
    ) -> None:
        self.inner = inner
        self.logged_in = logged_in
        self.public = public

    def start_request(
        self, server_conn: object, request_conn: httputil.HTTPConnection
    ) -> httputil.HTTPMessageDelegate:
        return _GatedMessage(self.inner.start_request(server_conn, request_conn), request_conn, self)

    def on_close(self, server_conn: object) -> None:
        self.inner.on_close(server_conn)


class _GatedMessage(httputil.HTTPMessageDelegate):
    """One request: its head checked, then handed on whole, or refused before its body."""

    def __init__(
        self, inner: httputil.HTTPMessageDelegate, conn: httputil.HTTPConnection, gate: LoginBeforeBody
    ) -> None:
        self.inner = inner
        self.conn = conn
        self.gate = gate

    async def headers_received(
        self, start_line: RequestStartLine | ResponseStartLine, headers: HTTPHeaders
    ) -> None:
        if isinstance(start_line, RequestStartLine) and carries_body(headers):
            request = httputil.HTTPServerRequest(connection=self.conn, start_line=start_line, headers=headers)
            if await self.gate.logged_in(request):
                pass
            elif self.gate.public(request):
                self.conn.set_max_body_size(PUBLIC_BODY_LIMIT)  # type: ignore[attr-defined]
            else:
                await _refuse(self.conn)
                return
        result = self.inner.headers_received(start_line, headers)
        if result is not None:
            await result

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.inner.data_received(chunk)

    def finish(self) -> None:
        self.inner.finish()

    def on_connection_close(self) -> None:
        self.inner.on_connection_close()


async def _refuse(conn: httputil.HTTPConnection) -> None:
    """Answer 403 and close, the body unread: taking the stream from Tornado (``detach``) stops it
    reading the body."""
    await _answer_and_close(conn.detach(), REFUSED)  # type: ignore[attr-defined]


async def _answer_and_close(stream: iostream.IOStream, answer: bytes) -> None:
    """Write ``answer``, stop sending, drop what the caller still sends for a moment, then close:
    closing at once, with unread data queued, would reset the connection and could lose the answer
    on its way."""
    try:
        await stream.write(answer)
        stream.socket.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        dropped = 0
        while dropped < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            chunk = await _read_some(stream, left)
            if not chunk:
                break
            dropped += len(chunk)
    except (iostream.StreamClosedError, OSError):
        pass  # the caller left first
    finally:
        stream.close()


async def _read_some(stream: iostream.IOStream, timeout: float) -> bytes:
    """Up to 64 KiB the caller sent, b"" once it closed or ``timeout`` passed."""
    try:
        return await gen.with_timeout(
            stream.io_loop.time() + timeout,
            stream.read_bytes(64 * 1024, partial=True),
            quiet_exceptions=iostream.StreamClosedError,
        )
    except (TimeoutError, iostream.StreamClosedError):
        return b""


def jupyter_checks(serverapp: Any) -> tuple[LoginCheck, PublicCheck]:
    """Jupyter's own answers for a request's head: its identity provider (the code every handler
    asks, with a handler built on the head alone), and its public marks (``@allow_unauthenticated``
    on the method of the handler the route leads to)."""
    from jupyter_server.base.handlers import JupyterHandler

    app: Application = serverapp.web_app

    async def logged_in(request: httputil.HTTPServerRequest) -> bool:
        handler = JupyterHandler(app, request)
        # The handler registered itself for the connection's close; the real one will again.
        request.connection.set_close_callback(None)  # type: ignore[union-attr]
        user = serverapp.identity_provider.get_user(handler)
        if isinstance(user, Awaitable):
            user = await user
        return user is not None

    def public(request: httputil.HTTPServerRequest) -> bool:
        delegate = app.find_handler(request)
        handler_class = getattr(delegate, "handler_class", None)
        method = getattr(handler_class, (request.method or "").lower(), None)
        return bool(getattr(method, "__allow_unauthenticated", False))

    return logged_in, public


def bound(server: httpserver.HTTPServer, limits: ConnectionLimits) -> None:
    """Give a Tornado HTTP server ``limits``, before it accepts a connection."""
    server.conn_params.header_timeout = limits.header_timeout_s
    server.conn_params.body_timeout = limits.body_timeout_s
    connections = server._connections  # Tornado's own open HTTP connections, each removed on close
    accept = server.handle_stream

    def handle_stream(stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        if len(connections) >= limits.max_connections:
            IOLoop.current().spawn_callback(_answer_and_close, stream, BUSY)
            return
        accept(stream, address)

    server.handle_stream = handle_stream  # type: ignore[method-assign]


def gate(serverapp: Any, limits: ConnectionLimits | None = None) -> None:
    """Put ``LoginBeforeBody`` in front of a Jupyter server's application and give its HTTP server
    ``limits``, before it listens."""
    logged_in, public = jupyter_checks(serverapp)
    server = serverapp.http_server
    server.request_callback = LoginBeforeBody(server.request_callback, logged_in, public)
    bound(server, limits or ConnectionLimits())


def main(argv: list[str]) -> None:
    """JupyterLab started as ``jupyter lab`` starts it (``ExtensionApp.launch_instance``), with the
    gate put in once its HTTP server exists and before the server binds its port (on start)."""
    from jupyter_core.application import NoStart
    from jupyterlab.labapp import LabApp

    serverapp = LabApp.initialize_server(argv=argv)
    gate(serverapp)
    try:
        serverapp.start()
    except NoStart:
        pass


if __name__ == "__main__":
    main(sys.argv[1:])
