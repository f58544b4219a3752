"""A stand-in for a SeaweedFS master's HTTP, for the unit tests of the checks that read it
(appliance.objectstore.ready, appliance.objectstore.copies): ``/healthz`` answers empty, any other
path the JSON the test puts in ``answer["status"]``. The integration tests use the real master."""

from __future__ import annotations

import json
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from tests.unit._fake_http import fake_http


@pytest.fixture
def master() -> Iterator[tuple[str, dict[str, Any]]]:
    """The stand-in's URL and the answer it gives (change ``answer["status"]`` between calls)."""
    answer: dict[str, Any] = {"status": {}}

    def status(request: BaseHTTPRequestHandler) -> tuple[int, bytes]:
        return 200, b"" if request.path == "/healthz" else json.dumps(answer["status"]).encode()

    with fake_http(status) as port:
        yield f"http://127.0.0.1:{port}", answer
