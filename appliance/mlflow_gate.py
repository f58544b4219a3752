"""MLflow's server app with the login checked before a request's body is read.

MLflow serves most of its API (runs, metrics, the registry) from its Flask app, bridged into its
FastAPI app by an ASGI-to-WSGI adapter that reads a request's whole body into memory before Flask
runs, and Flask's ``before_request`` is where the login is checked. So anyone who can reach
MLflow's port (loopback, or the private network of a cluster) could make it hold any amount of
memory without an account: measured, an unauthenticated ``runs/create`` announcing 400 MiB and
sending 300 MiB grew the server from 254 to 555 MiB resident, no answer before the body ended.
(Its own FastAPI routes, the artifact proxy among them, already check first; the TLS gateway
checks large bodies itself, ``gateway._web_block``, but MLflow's own port has no gateway.)

``LoginBeforeBody`` wraps the app uvicorn serves: a request that carries a body (an announced
length above zero, or a chunked one) to a route MLflow protects goes on only when its basic
credentials log in, checked by the same function MLflow's own check calls
(``mlflow_login.login_is_good``), before a byte of the body is read; anyone else gets MLflow's
401 at once and the connection is closed, so the unread body is never taken. Requests without a
body, and MLflow's public routes (``/health``, static files, server info: MLflow's own
``is_unprotected_route``), go on untouched; MLflow still checks every request itself, and decides
permissions (a good login without the right gets MLflow's 403 after its body, as before).

Bodies are bounded too, from the head, since the bridge holds each whole (MLflow sets no limit):
a public route takes at most ``PUBLIC_BODY_LIMIT`` (its routes need none; measured, an
unauthenticated ``POST /health`` of 300 MiB grew the server by 300 MiB), a logged-in caller's
API call at most ``BODY_LIMIT``, both 413 past it and 411 for a body of no announced length
(chunked: MLflow's clients and browsers announce theirs). Artifact uploads
(``ARTIFACT_UPLOADS``), which MLflow streams to a file, stay unbounded.

``appliance.mlflow_server`` has uvicorn serve ``create_app`` (this module's) in place of MLflow's
``basic-auth`` app factory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from appliance.request_body import announced_length, announces_body

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]
LoginCheck = Callable[[str, str], bool]

MLFLOW_AUTH_APP = "mlflow.server.auth:create_app"
"""MLflow's ``basic-auth`` app factory, as ``mlflow server`` names it to uvicorn."""
GATED_APP = f"{__name__}:create_app"
"""This module's factory, which uvicorn serves in its place."""
GATEWAY_PREFIX = "/gateway/"
GATEWAY_AUTH_HEADER = b"x-mlflow-authorization"
"""On MLflow's ``/gateway/`` routes its credentials ride in this header (a client's own provider
key holds ``Authorization``), as MLflow's own check reads them."""
REFUSAL = (
    b"You are not authenticated: this request carries a body, which MLflow takes only from a "
    b"caller whose login is good. Send basic credentials of an MLflow account "
    b"(MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD for MLflow's client).\n"
)
PUBLIC_BODY_LIMIT = 64 * 1024
"""The largest body a public route (health, static files, server info: all reads) takes."""
BODY_LIMIT = 64 << 20
"""The largest body of a logged-in API call: MLflow's largest (a batch of 1,000 metrics, a
dataset's 1 MB schema, a span batch) are far under it; MLflow's own UI upload stops at 10 MB."""
ARTIFACT_UPLOADS = ("/api/2.0/mlflow-artifacts/artifacts/", "/ajax-api/2.0/mlflow-artifacts/artifacts/")
"""Routes whose body MLflow streams to a file rather than holding it: no limit of the gate's."""


def body_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, str | None]:
    """A head's ``Content-Length`` and ``Transfer-Encoding`` values, as ``request_body`` takes them."""
    found = dict(headers)
    length, coding = found.get(b"content-length"), found.get(b"transfer-encoding")
    return (
        None if length is None else length.decode("latin-1"),
        None if coding is None else coding.decode("latin-1"),
    )


def body_refusal(headers: list[tuple[bytes, bytes]], limit: int) -> tuple[int, bytes] | None:
    """(status, text) refusing a body over ``limit`` or of no announced length; None if it fits."""
    length = announced_length(*body_headers(headers))
    if length is None:
        return 411, b"Length required: send this request's body with a Content-Length.\n"
    if length > limit:
        return 413, f"Request body too large: {length} bytes, at most {limit} here.\n".encode()
    return None


def carries_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head announces a body (``request_body.announces_body``)."""
    return announces_body(*body_headers(headers))


def basic_credentials(headers: list[tuple[bytes, bytes]], path: str) -> tuple[str, str] | None:
    """The (account, password) of a request's basic credentials, None when it has none or they are
    malformed. On ``/gateway/`` routes MLflow's own header comes first, when present and not empty."""
    found = dict(headers)
    value = found.get(GATEWAY_AUTH_HEADER) if path.startswith(GATEWAY_PREFIX) else None
    value = value or found.get(b"authorization")
    if not value:
        return None
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    account, sep, password = decoded.partition(":")
    return (account, password) if sep and account else None


class LoginBeforeBody:
    """ASGI middleware: a request with a body to a protected route goes on to ``app`` only once
    ``login_is_good`` accepts its basic credentials, and any body only within its route's bound
    (see the module's docstring)."""

    def __init__(self, app: App, login_is_good: LoginCheck, is_public: Callable[[str], bool]) -> None:
        self.app = app
        self.login_is_good = login_is_good
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not carries_body(scope["headers"]):
            await self.app(scope, receive, send)
            return
        headers, path = scope["headers"], scope["path"]
        if self.is_public(path):
            refused = body_refusal(headers, PUBLIC_BODY_LIMIT)
        else:
            credentials = basic_credentials(headers, path)
            # The check reads the account's row and, for a password not verified before, runs the
            # slow hash: in a thread, so the event loop serves other requests meanwhile.
            if credentials is None or not await asyncio.to_thread(self.login_is_good, *credentials):
                await _answer(send, 401, REFUSAL, [(b"www-authenticate", b'Basic realm="mlflow"')])
                return
            refused = None if path.startswith(ARTIFACT_UPLOADS) else body_refusal(headers, BODY_LIMIT)
        if refused:
            await _answer(send, *refused)
            return
        await self.app(scope, receive, send)


async def _answer(
    send: Send, status: int, text: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Answer from the head and end the connection: the body is never read."""
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(text)).encode()),
        *(extra or []),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": text})


def create_app() -> App:
    """uvicorn's app factory: MLflow's ``basic-auth`` app behind ``LoginBeforeBody``."""
    from mlflow.server.auth import create_app as mlflow_auth_app
    from mlflow.server.auth import is_unprotected_route

    from appliance.mlflow_login import login_is_good

    return LoginBeforeBody(mlflow_auth_app(), login_is_good, is_unprotected_route)
