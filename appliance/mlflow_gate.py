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

``appliance.mlflow_server`` has uvicorn serve ``create_app`` (this module's) in place of MLflow's
``basic-auth`` app factory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from appliance.request_body import announces_body

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


def carries_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's head announces a body (``request_body.announces_body``)."""
    text = {name: value.decode("latin-1") for name, value in headers}
    return announces_body(text.get(b"content-length"), text.get(b"transfer-encoding"))


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
    ``login_is_good`` accepts its basic credentials (see the module's docstring)."""

    def __init__(self, app: App, login_is_good: LoginCheck, is_public: Callable[[str], bool]) -> None:
        self.app = app
        self.login_is_good = login_is_good
        self.is_public = is_public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not carries_body(scope["headers"]) or self.is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        credentials = basic_credentials(scope["headers"], scope["path"])
        # The check reads the account's row and, for a password not verified before, runs the slow
        # hash: in a thread, so the event loop serves other requests meanwhile.
        if credentials is not None and await asyncio.to_thread(self.login_is_good, *credentials):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", str(len(REFUSAL)).encode()),
                    (b"www-authenticate", b'Basic realm="mlflow"'),
                    (b"connection", b"close"),  # the body is never read: the connection ends here
                ],
            }
        )
        await send({"type": "http.response.body", "body": REFUSAL})


def create_app() -> App:
    """uvicorn's app factory: MLflow's ``basic-auth`` app behind ``LoginBeforeBody``."""
    from mlflow.server.auth import create_app as mlflow_auth_app
    from mlflow.server.auth import is_unprotected_route

    from appliance.mlflow_login import login_is_good

    return LoginBeforeBody(mlflow_auth_app(), login_is_good, is_unprotected_route)
