"""Grafana API provisioning: the requests it builds, and its errors against no Grafana at all.

No Grafana runs here and a fake server would only echo our own assumptions back, so the
requests are checked as data against Grafana's documented HTTP API, and the sending path is
checked where it can fail for real: a closed port.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import pytest

from appliance.errors import ApplianceError
from appliance.monitoring.dashboards import write_dashboards
from appliance.monitoring.grafana import (
    DATASOURCE_UID,
    FOLDER_UID,
    _auth_headers,
    provision_grafana,
    provision_requests,
)


@pytest.fixture
def dashboards(tmp_path: Path) -> Path:
    write_dashboards(tmp_path / "dashboards")
    return tmp_path / "dashboards"


def test_requests_create_datasource_folder_then_every_dashboard(dashboards: Path) -> None:
    requests = provision_requests("http://grafana:3000/", dashboards, "http://127.0.0.1:9090")
    assert [(r.method, r.url.path) for r in requests] == [
        ("POST", "/api/datasources"),
        ("POST", "/api/folders"),
    ] + [("POST", "/api/dashboards/db")] * 4
    datasource = json.loads(requests[0].content)
    assert datasource["uid"] == DATASOURCE_UID
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://127.0.0.1:9090"
    assert json.loads(requests[1].content)["uid"] == FOLDER_UID
    bodies = [json.loads(r.content) for r in requests[2:]]
    assert sorted(body["dashboard"]["uid"] for body in bodies) == [
        "appliance-drift",
        "appliance-host",
        "appliance-pipelines",
        "appliance-serving",
    ]
    for body in bodies:
        assert body["overwrite"] is True
        assert body["folderUid"] == FOLDER_UID
        assert "id" not in body["dashboard"]


def test_without_prometheus_url_the_datasource_is_left_alone(dashboards: Path) -> None:
    paths = [r.url.path for r in provision_requests("http://grafana:3000", dashboards)]
    assert "/api/datasources" not in paths


def test_an_empty_dashboard_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no dashboard JSON"):
        provision_requests("http://grafana:3000", tmp_path)


def test_token_and_basic_auth() -> None:
    headers, basic = _auth_headers("glsa_abc")
    assert headers == {"Authorization": "Bearer glsa_abc"} and basic is None
    headers, basic = _auth_headers(("admin", "s3cret"))
    assert headers == {}
    assert isinstance(basic, httpx.BasicAuth)
    request = next(basic.auth_flow(httpx.Request("GET", "http://grafana:3000/api/health")))
    assert request.headers["Authorization"] == "Basic YWRtaW46czNjcmV0"
    with pytest.raises(ValueError, match="empty"):
        _auth_headers("")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_grafana_is_a_user_facing_error(dashboards: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(ApplianceError, match="cannot reach Grafana") as caught:
        provision_grafana(url, "token", dashboards, timeout=2)
    assert caught.value.fix
