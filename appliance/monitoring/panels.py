"""Small builders for Grafana dashboard JSON (schema 39, Grafana 10/11).

Dashboards are generated rather than hand-edited so that panel ids stay unique, the grid never
overlaps, every query goes through the ``$datasource`` variable, and thresholds from the answers
file (drift PSI, latency SLO) are drawn on the panels they concern.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
TAG = "mlops-appliance"


@dataclass
class Query:
    """One PromQL query of a panel and its legend."""

    expr: str
    legend: str = ""
    instant: bool = False


@dataclass
class Panel:
    """A panel before layout: what it shows and how wide/tall it is on the 24-column grid."""

    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"
    description: str = ""
    threshold: float | None = None
    """Drawn as a dashed red line (time series) or turns the value red (stat, gauge)."""
    bad_below: bool = False
    """Red below ``threshold`` and green from it on (``up``), instead of red above it."""
    mappings: list[dict[str, Any]] = field(default_factory=list)
    """Grafana value mappings, e.g. 0 -> "down"."""
    width: int = 12
    height: int = 8
    options: dict[str, Any] = field(default_factory=dict)
    custom: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    """A row header; ``collapsed`` rows carry their panels inside them (Grafana's format)."""

    title: str
    panels: list[Panel]
    collapsed: bool = False


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    good, bad = ("green", "red") if not panel.bad_below else ("red", "green")
    steps: list[dict[str, Any]] = [{"color": good, "value": None}]
    if panel.threshold is not None:
        steps.append({"color": bad, "value": panel.threshold})
    custom = dict(panel.custom)
    if panel.kind == "timeseries":
        custom.setdefault("thresholdsStyle", {"mode": "dashed" if panel.threshold is not None else "off"})
    targets = [
        {
            "datasource": DATASOURCE,
            "refId": chr(ord("A") + index),
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "instant": query.instant,
            "range": not query.instant,
        }
        for index, query in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {
            "defaults": {
                "unit": panel.unit,
                "thresholds": {"mode": "absolute", "steps": steps},
                "mappings": panel.mappings,
                "custom": custom,
            },
            "overrides": [],
        },
        "options": panel.options,
        "targets": targets,
    }


def layout(rows: list[Row]) -> list[dict[str, Any]]:
    """Panels JSON: ids from 1, rows full width, panels filling each row left to right."""
    result: list[dict[str, Any]] = []
    next_id = 1
    y = 0
    for row in rows:
        header: dict[str, Any] = {
            "id": next_id,
            "type": "row",
            "title": row.title,
            "collapsed": row.collapsed,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            "panels": [],
        }
        next_id += 1
        y += 1
        result.append(header)
        x, row_height = 0, 0
        for panel in row.panels:
            if x + panel.width > 24:
                x, y = 0, y + row_height
                row_height = 0
            built = _panel_json(panel, next_id, x, y)
            next_id += 1
            (header["panels"] if row.collapsed else result).append(built)
            x += panel.width
            row_height = max(row_height, panel.height)
        y += row_height
    return result


UP_DOWN = [{"type": "value", "options": {"0": {"text": "down"}, "1": {"text": "up"}}}]
"""Value mapping for ``up``-style series."""


def model_variable() -> dict[str, Any]:
    """``$model``: every model the server reports, multi-select, "All" by default."""
    query = "label_values(appliance_model_info, model)"
    return {
        "name": "model",
        "label": "Model",
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def datasource_variable() -> dict[str, Any]:
    """``$datasource``: any Prometheus data source, so imported dashboards work unchanged."""
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "refresh": 1,
        "current": {},
        "hide": 0,
    }


def dashboard(uid: str, title: str, rows: list[Row], variables: list[dict[str, Any]]) -> dict[str, Any]:
    """A complete dashboard, linked to its siblings through the common tag."""
    return {
        "uid": uid,
        "title": title,
        "tags": [TAG],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "tags": [TAG],
                "asDropdown": True,
                "title": "Appliance",
                "icon": "external link",
            }
        ],
        "templating": {"list": [datasource_variable(), *variables]},
        "panels": layout(rows),
    }
