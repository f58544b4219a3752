"""``appliance status``'s replicas line asks the serving supervisor where the addressing rule says
it is, with the admin token, and reports a supervisor that does not answer instead of failing."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.workloads.serving.replica_status import describe, replicas_status
from tests.unit._fake_http import fake_http

STATE = {"ready": 2, "desired": 3, "min_replicas": 1, "max_replicas": 4, "replaced": 1,
         "decision": {"reason": "panic: 12.0 in flight over 6 s"}}  # fmt: skip


@pytest.fixture
def supervisor() -> Iterator[tuple[int, list[str]]]:
    seen: list[str] = []

    def state(request: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        seen.append(f"{request.path} {request.headers.get('Authorization')}")
        ok = request.headers.get("Authorization") == "Bearer admin-secret"
        return (200 if ok else 401), json.dumps(STATE if ok else {"error": "no"}).encode()

    with fake_http(state) as port:
        yield port, seen


def _ctx(tmp_path: Path, bind: str, port: int, max_replicas: int = 4) -> AppContext:
    answers = Answers.model_validate(
        {"bind_address": bind, "ports": {"serving_metrics": port}, "serving": {"max_replicas": max_replicas}}
    )
    ctx = AppContext(answers, tmp_path)
    ctx.secrets.put("serving_admin_token", "admin-secret")
    return ctx


def test_a_wildcard_bind_is_dialled_at_loopback_with_the_admin_token(
    tmp_path: Path, supervisor: tuple[int, list[str]]
) -> None:
    port, seen = supervisor
    state = replicas_status(_ctx(tmp_path, "0.0.0.0", port), running=True)
    assert state == STATE
    assert seen == ["/replicas Bearer admin-secret"]
    line = describe(state)
    assert "2 ready, 3 asked (min 1, max 4; 1 replaced)" in line and "panic: 12.0" in line


def test_one_replica_or_a_stopped_server_asks_nothing(
    tmp_path: Path, supervisor: tuple[int, list[str]]
) -> None:
    port, seen = supervisor
    assert replicas_status(_ctx(tmp_path, "127.0.0.1", port, max_replicas=1), running=True) is None
    assert replicas_status(_ctx(tmp_path, "127.0.0.1", port), running=False) is None
    assert seen == []


def test_a_supervisor_that_does_not_answer_is_reported(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state = replicas_status(_ctx(tmp_path, "127.0.0.1", port), running=True)
    assert state is not None and "did not answer" in state["error"]
    assert describe(state).startswith("serving replicas: the serving supervisor did not answer")
