"""MLflow's app behind the login check made before a body is read (appliance.mlflow_gate), and the
server start that puts it in place of MLflow's ``basic-auth`` app (appliance.mlflow_server)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest

from appliance import mlflow_server
from appliance.mlflow_gate import (
    BODY_LIMIT,
    GATED_APP,
    MLFLOW_AUTH_APP,
    PUBLIC_BODY_LIMIT,
    LoginBeforeBody,
    basic_credentials,
    body_headers,
    carries_body,
)
from appliance.request_body import announced_length

GOOD = ("appliance-writer", "the-password")


def basic(account: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{account}:{password}".encode())


class App:
    """The wrapped app: records the requests that reached it and what it read of their bodies."""

    def __init__(self) -> None:
        self.reached: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.reached.append(scope["path"])
        if scope["type"] == "http":
            await receive()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


def call(
    headers: list[tuple[bytes, bytes]], path: str = "/api/2.0/mlflow/runs/create", kind: str = "http"
) -> tuple[App, list[dict[str, Any]], list[str], int]:
    """One request through the gate: (the app, what was sent back, the logins checked, the number
    of times the body was read)."""
    app, sent, checked, reads = App(), [], [], [0]

    def login_is_good(account: str, password: str) -> bool:
        checked.append(account)
        return (account, password) == GOOD

    async def receive() -> dict[str, Any]:
        reads[0] += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    gate = LoginBeforeBody(app, login_is_good, lambda p: p.startswith("/health"))
    scope = {"type": kind, "path": path, "headers": headers}
    asyncio.run(gate(scope, receive, send))
    return app, sent, checked, reads[0]


def test_a_body_without_a_good_login_is_refused_before_a_byte_of_it_is_read() -> None:
    for authorization in ([], [(b"authorization", basic("appliance-writer", "wrong"))]):
        app, sent, _, reads = call([(b"content-length", b"67108864"), *authorization])
        assert app.reached == [] and reads == 0
        head = sent[0]
        assert head["status"] == 401
        headers = dict(head["headers"])
        assert headers[b"www-authenticate"] == b'Basic realm="mlflow"'
        assert headers[b"connection"] == b"close"  # the unread body ends with the connection
        assert b"MLFLOW_TRACKING_USERNAME" in sent[1]["body"]
        assert int(headers[b"content-length"]) == len(sent[1]["body"])


def test_a_chunked_body_counts_as_a_body() -> None:
    app, sent, _, _ = call([(b"transfer-encoding", b"chunked")])
    assert app.reached == [] and sent[0]["status"] == 401


def test_a_good_login_goes_on_with_its_body() -> None:
    app, sent, checked, reads = call([(b"content-length", b"2"), (b"authorization", basic(*GOOD))])
    assert app.reached == ["/api/2.0/mlflow/runs/create"] and reads == 1
    assert sent[0]["status"] == 200 and checked == ["appliance-writer"]


def test_requests_without_a_body_public_routes_and_other_scopes_are_not_checked() -> None:
    for headers, path, kind in (
        ([], "/api/2.0/mlflow/experiments/search", "http"),  # MLflow checks it itself
        ([(b"content-length", b"0")], "/api/2.0/mlflow/runs/create", "http"),
        ([(b"content-length", b"5")], "/health", "http"),  # public: MLflow answers it
        ([], "/", "lifespan"),
    ):
        app, _, checked, _ = call(headers, path, kind)
        assert app.reached == [path] and checked == [], (headers, path)


def test_a_public_route_takes_only_a_small_announced_body() -> None:
    """MLflow's bridge holds a whole body before Flask answers even a public route."""
    for headers, status in (
        ([(b"content-length", str(PUBLIC_BODY_LIMIT + 1).encode())], 413),
        ([(b"transfer-encoding", b"chunked")], 411),
        ([(b"content-length", b"12abc")], 411),
    ):
        app, sent, checked, reads = call(headers, "/health")
        assert app.reached == [] and reads == 0 and checked == [], headers
        assert sent[0]["status"] == status and dict(sent[0]["headers"])[b"connection"] == b"close"
    app, _, _, _ = call([(b"content-length", str(PUBLIC_BODY_LIMIT).encode())], "/health")
    assert app.reached == ["/health"]


def test_a_logged_in_api_call_is_bounded_and_an_artifact_upload_is_not() -> None:
    login = (b"authorization", basic(*GOOD))
    app, sent, checked, reads = call([(b"content-length", str(BODY_LIMIT + 1).encode()), login])
    assert app.reached == [] and reads == 0 and checked == ["appliance-writer"]
    assert sent[0]["status"] == 413 and str(BODY_LIMIT).encode() in sent[1]["body"]
    app, sent, _, _ = call([(b"transfer-encoding", b"chunked"), login])
    assert app.reached == [] and sent[0]["status"] == 411
    for path in (
        "/api/2.0/mlflow-artifacts/artifacts/1/abc/model.onnx",
        "/ajax-api/2.0/mlflow-artifacts/artifacts/x",
    ):
        for length in (
            [(b"content-length", str(BODY_LIMIT * 4).encode())],
            [(b"transfer-encoding", b"chunked")],
        ):
            app, sent, _, _ = call([*length, login], path)
            assert app.reached == [path] and sent[0]["status"] == 200, (path, length)
    # Without a login an artifact upload is refused like any other body.
    app, sent, _, _ = call([(b"content-length", b"10")], "/api/2.0/mlflow-artifacts/artifacts/x")
    assert app.reached == [] and sent[0]["status"] == 401


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"content-length", b"12")], 12),
        ([(b"content-length", b" 7 ")], 7),
        ([(b"content-length", b"-1")], None),
        ([(b"content-length", b"1e3")], None),
        ([(b"transfer-encoding", b"chunked")], None),
        ([(b"content-length", b"12"), (b"transfer-encoding", b"chunked")], None),
    ],
)
def test_announced_length(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert announced_length(*body_headers(headers)) == expected


def test_gateway_routes_take_mlflows_own_header_first() -> None:
    provider_key = (b"authorization", b"Bearer sk-provider")
    app, _, _, _ = call(
        [(b"content-length", b"2"), provider_key, (b"x-mlflow-authorization", basic(*GOOD))],
        "/gateway/chat/invocations",
    )
    assert app.reached == ["/gateway/chat/invocations"]
    # Elsewhere that header is not MLflow's: the Authorization header decides.
    app, _, _, _ = call([(b"content-length", b"2"), provider_key, (b"x-mlflow-authorization", basic(*GOOD))])
    assert app.reached == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (basic(*GOOD), GOOD),
        (b"basic " + base64.b64encode(b"a:b:c"), ("a", "b:c")),  # the password may hold colons
        (b"Bearer abc", None),
        (b"Basic not-base64!", None),
        (b"Basic " + base64.b64encode(b"no-colon"), None),
        (b"Basic " + base64.b64encode(b":password"), None),
        (b"Basic " + base64.b64encode(b"\xff:x"), None),
        (b"", None),
    ],
)
def test_basic_credentials(value: bytes, expected: tuple[str, str] | None) -> None:
    assert basic_credentials([(b"authorization", value)], "/api/2.0/mlflow/runs/create") == expected


def test_carries_body() -> None:
    assert not carries_body([])
    assert not carries_body([(b"content-length", b"0")])
    assert carries_body([(b"content-length", b"1")])
    assert carries_body([(b"content-length", b"x")])  # malformed: not taken on trust
    assert carries_body([(b"transfer-encoding", b"chunked")])
    # A zero length beside a transfer coding, in either order: the coding wins, as HTTP says.
    assert carries_body([(b"content-length", b"0"), (b"transfer-encoding", b"chunked")])
    assert carries_body([(b"transfer-encoding", b"chunked"), (b"content-length", b"0")])


def test_the_server_serves_the_gated_app_in_place_of_mlflows_basic_auth_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(mlflow_server.os, "execvpe", lambda _file, cmd, _env: started.append(cmd))
    tail = ["--workers", "1", "--factory"]
    mlflow_server.exec_in_place(["python", "-m", "uvicorn", *tail, MLFLOW_AUTH_APP])
    mlflow_server.exec_in_place(["python", "-m", "uvicorn", *tail[:2], "mlflow.server.fastapi_app:app"])
    assert started == [
        ["python", "-m", "uvicorn", *tail, GATED_APP],
        # without auth: as MLflow built it
        ["python", "-m", "uvicorn", *tail[:2], "mlflow.server.fastapi_app:app"],
    ]
    assert GATED_APP == "appliance.mlflow_gate:create_app"
