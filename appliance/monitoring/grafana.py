"""Grafana dashboards: the metric names they query, and upload over the HTTP API.

Where the appliance runs Grafana itself, file provisioning (``stacks/monitoring/grafana/``) is
enough. :func:`provision_grafana` is for users who already have a Grafana: it creates (or
updates) the Prometheus data source, a folder, and every dashboard, through the documented
HTTP API (``/api/datasources``, ``/api/folders``, ``/api/dashboards/db``). The requests are
built by :func:`provision_requests`, a pure function, so they can be checked without a server.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from appliance.errors import ApplianceError
from appliance.monitoring.promql import metric_names, variable_query_metric_names

DATASOURCE_UID = "appliance-prometheus"
DATASOURCE_NAME = "Appliance Prometheus"
FOLDER_UID = "mlops-appliance"
FOLDER_TITLE = "MLOps Appliance"

Auth = str | tuple[str, str]
"""A Grafana service-account token, or a (user, password) pair for basic auth."""


def iter_panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and every query-type template variable."""
    for panel in iter_panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel.get('id')} ({panel.get('title')!r})", target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else query or ""
            if text:
                yield f"variable {variable.get('name')!r}", text


def metric_names_of(dashboard: dict[str, Any]) -> set[str]:
    """Metric names used by every query of ``dashboard`` (a parsed dashboard JSON)."""
    names: set[str] = set()
    for where, query in dashboard_queries(dashboard):
        names |= variable_query_metric_names(query) if where.startswith("variable") else metric_names(query)
    return names


def dashboard_metric_names(path: str | Path) -> set[str]:
    """Metric names used by every query of the dashboard JSON file at ``path``."""
    return metric_names_of(json.loads(Path(path).read_text()))


def _auth_headers(auth: Auth) -> tuple[dict[str, str], httpx.BasicAuth | None]:
    if isinstance(auth, str):
        if not auth:
            raise ValueError("the Grafana token is empty")
        return {"Authorization": f"Bearer {auth}"}, None
    user, password = auth
    return {}, httpx.BasicAuth(user, password)


def provision_requests(
    url: str, dashboards_dir: str | Path, prometheus_url: str | None = None
) -> list[httpx.Request]:
    """The requests that install the data source (when ``prometheus_url`` is given), the folder
    and every ``*.json`` dashboard in ``dashboards_dir``, in that order, without auth headers."""
    base = url.rstrip("/")
    requests: list[httpx.Request] = []
    if prometheus_url is not None:
        datasource = {
            "uid": DATASOURCE_UID,
            "name": DATASOURCE_NAME,
            "type": "prometheus",
            "access": "proxy",
            "url": prometheus_url,
            "isDefault": True,
            "jsonData": {"httpMethod": "POST"},
        }
        requests.append(httpx.Request("POST", f"{base}/api/datasources", json=datasource))
    requests.append(
        httpx.Request("POST", f"{base}/api/folders", json={"uid": FOLDER_UID, "title": FOLDER_TITLE})
    )
    files = sorted(Path(dashboards_dir).glob("*.json"))
    if not files:
        raise ValueError(f"no dashboard JSON files in {dashboards_dir}")
    for path in files:
        dashboard = json.loads(path.read_text())
        dashboard.pop("id", None)
        body = {
            "dashboard": dashboard,
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "provisioned by mlops-appliance",
        }
        requests.append(httpx.Request("POST", f"{base}/api/dashboards/db", json=body))
    return requests


def _send(client: httpx.Client, base: str, request: httpx.Request) -> httpx.Response:
    """Send one request; an existing folder is fine, an existing data source is updated by uid."""
    response = client.send(request)
    # Grafana answers 409 for an existing data source and 409/412 for an existing folder.
    if response.status_code in (409, 412):
        if request.url.path.endswith("/api/folders"):
            return httpx.Response(200, request=request)
        if request.url.path.endswith("/api/datasources"):
            update = httpx.Request(
                "PUT",
                f"{base}/api/datasources/uid/{DATASOURCE_UID}",
                content=request.content,
                headers=request.headers,
            )
            return client.send(update)
    return response


def provision_grafana(
    url: str,
    token_or_basic_auth: Auth,
    dashboards_dir: str | Path,
    prometheus_url: str | None = None,
    timeout: float = 10.0,
) -> list[str]:
    """Install the appliance's dashboards (and data source) into the Grafana at ``url``.

    Existing objects are updated (the data source by uid, dashboards with ``overwrite``).
    Returns the dashboard URLs Grafana reports. Raises :class:`ApplianceError` naming the
    request that failed.
    """
    headers, basic = _auth_headers(token_or_basic_auth)
    base = url.rstrip("/")
    created: list[str] = []
    with httpx.Client(auth=basic, timeout=timeout) as client:
        for request in provision_requests(url, dashboards_dir, prometheus_url):
            request.headers.update(headers)
            try:
                response = _send(client, base, request)
            except httpx.HTTPError as err:
                raise ApplianceError(
                    f"cannot reach Grafana at {url}: {err}", fix="check the Grafana URL and that Grafana runs"
                ) from err
            if response.status_code >= 400:
                raise ApplianceError(
                    f"Grafana refused {request.method} {request.url.path}: "
                    f"{response.status_code} {response.text[:200]}",
                    fix="check that the token or user may edit data sources and dashboards (Editor or Admin)",
                )
            if request.url.path.endswith("/api/dashboards/db"):
                created.append(str(response.json().get("url", "")))
    return created
