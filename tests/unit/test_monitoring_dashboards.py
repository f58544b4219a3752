"""The Grafana dashboards and provisioning files, checked as files.

No Grafana can run here, so the checks are structural (valid JSON, unique ids, a grid that fits),
semantic (every query is PromQL that promtool accepts and names only metrics the stack exports)
and contractual (the committed files are what the generator writes, and every metric of
``docs/interfaces.md`` appears on some dashboard).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.monitoring import catalog
from appliance.monitoring.dashboards import build_dashboards, dump
from appliance.monitoring.grafana import (
    dashboard_metric_names,
    dashboard_queries,
    iter_panels,
    metric_names_of,
)

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "stacks" / "monitoring" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROMTOOL = shutil.which("promtool") or ""


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_the_four_dashboards_are_committed() -> None:
    assert [p.name for p in DASHBOARDS] == ["drift.json", "host.json", "pipelines.json", "serving.json"]


def test_committed_dashboards_are_the_generated_ones() -> None:
    generated = build_dashboards()
    for path in DASHBOARDS:
        assert path.read_text() == dump(generated[path.name]), (
            f"{path} is stale: run python -m appliance.monitoring.dashboards {path.parent}"
        )


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    board = load(path)
    panels = list(iter_panels(board))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids in {path.name}"
    assert board["uid"].startswith("appliance-") and len(board["uid"]) <= 40
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_do_not_overlap(path: Path) -> None:
    board = load(path)
    cells: dict[tuple[int, int], str] = {}
    top = [p for p in board["panels"]]
    nested = [child for p in board["panels"] for child in p.get("panels", [])]
    # Collapsed rows keep their panels' positions for when they open; check both layers.
    for layer in (top, nested):
        cells.clear()
        for panel in layer:
            grid = panel["gridPos"]
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                    cells[(x, y)] = panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboards_query_only_exported_metrics(path: Path) -> None:
    names = dashboard_metric_names(path)
    assert names, f"{path.name} queries no metric at all"
    assert catalog.unknown_metrics(names) == set()


def test_unknown_metric_check_catches_typos_and_bare_histograms() -> None:
    names = {"appliance_feature_psy", "appliance_inference_request_duration_seconds", "up"}
    assert catalog.unknown_metrics(names) == {
        "appliance_feature_psy",
        "appliance_inference_request_duration_seconds",
    }


def test_every_appliance_metric_is_on_some_dashboard() -> None:
    used = {catalog_name(name) for path in DASHBOARDS for name in dashboard_metric_names(path)}
    missing = (set(catalog.SERVING_METRICS) | set(catalog.CONTROLLER_METRICS)) - used
    assert missing == set()


def catalog_name(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        if series.endswith(suffix) and catalog.ALL_METRICS.get(series.removesuffix(suffix)) == "histogram":
            return series.removesuffix(suffix)
    return series


def test_catalog_matches_the_interfaces_document() -> None:
    text = (ROOT / "docs" / "interfaces.md").read_text()
    section = text.split("## Prometheus metrics", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([a-z_]+)` \| (counter|gauge|histogram)", section, re.MULTILINE)
    documented = {name: kind for name, kind in rows}
    assert documented == catalog.SERVING_METRICS | catalog.CONTROLLER_METRICS


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables with values Prometheus accepts, for a syntax check."""
    for variable, value in (("$__rate_interval", "1m"), ("$__range", "1h"), ("$model", ".*")):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"unhandled Grafana variable in {expr}"
    return expr


@pytest.mark.skipif(not PROMTOOL, reason="promtool (package prometheus) not installed")
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = []
    for path in DASHBOARDS:
        for index, (where, query) in enumerate(dashboard_queries(load(path))):
            if where.startswith("variable"):
                continue
            rules.append({"record": f"check:{path.stem}:{index}", "expr": grafana_to_promql(query)})
    assert len(rules) > 30
    file = tmp_path / "queries.yml"
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not PROMTOOL, reason="promtool (package prometheus) not installed")
def test_the_promql_check_rejects_a_broken_query(tmp_path: Path) -> None:
    file = tmp_path / "queries.yml"
    broken = {"record": "check:broken", "expr": grafana_to_promql("sum by (le (rate(x[$__rate_interval]))")}
    file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": [broken]}]}))
    result = subprocess.run([PROMTOOL, "check", "rules", str(file)], capture_output=True, text=True)
    assert result.returncode != 0


def thresholds(board: dict[str, Any], title: str) -> list[float]:
    panel = next(p for p in iter_panels(board) if p["title"] == title)
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return [step["value"] for step in steps if step["value"] is not None]


def test_answers_thresholds_are_drawn_on_the_panels() -> None:
    boards = build_dashboards(psi_threshold=0.35, latency_slo=0.125, error_ratio=0.02)
    assert thresholds(boards["drift.json"], "Feature PSI") == [0.35]
    assert thresholds(boards["drift.json"], "Prediction PSI") == [0.35]
    assert thresholds(boards["serving.json"], "Request latency") == [0.125]
    assert thresholds(boards["serving.json"], "Server error ratio") == [0.02]
    feature_psi = next(p for p in iter_panels(boards["drift.json"]) if p["title"] == "Feature PSI")
    assert feature_psi["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {"mode": "dashed"}


def test_gpu_panels_sit_in_a_collapsed_row() -> None:
    board = build_dashboards()["host.json"]
    gpu_row = next(p for p in board["panels"] if p["type"] == "row" and p["title"] == "GPU")
    assert gpu_row["collapsed"] is True
    assert {name for name in metric_names_of({"panels": gpu_row["panels"]})} == set(catalog.DCGM_METRICS)


def test_provisioning_files() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert datasources["apiVersion"] == 1
    assert source["type"] == "prometheus" and source["url"] == "${PROMETHEUS_URL}"
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "appliance.yaml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "${APPLIANCE_GRAFANA_DASHBOARDS}"


def test_exposition_metric_names() -> None:
    text = (
        "# HELP up x\n# TYPE up gauge\nup 1\n"
        'appliance_inference_batch_size_bucket{model="m",le="+Inf"} 3.0\n'
        "node_load1 0.5 1700000000000\n\n"
    )
    assert catalog.exposition_metric_names(text) == {
        "up",
        "appliance_inference_batch_size_bucket",
        "node_load1",
    }


def test_up_panels_turn_red_when_a_target_is_down() -> None:
    board = build_dashboards()["host.json"]
    panel = next(p for p in iter_panels(board) if p["title"] == "Targets up")
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps == [{"color": "red", "value": None}, {"color": "green", "value": 1}]
