"""Selecting and rendering the stack for a host: profiles, components, conditions, templates."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.render import render_stack


def ctx(tmp_path: Path, **data: object) -> AppContext:
    data.setdefault("object_store", {"kind": "filesystem"})
    return AppContext(Answers.model_validate(data), tmp_path / "state")


def test_lab_profile_on_filesystem_store(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path))
    assert {"mlflow", "workbench", "prometheus", "node-exporter"} <= set(services)
    assert "minio" not in services and "buckets" not in services
    mlflow = services["mlflow"]
    assert mlflow.depends_on == []  # its bucket job is not selected without MinIO
    assert "--host" in mlflow.command and mlflow.command[mlflow.command.index("--host") + 1] == "127.0.0.1"
    assert mlflow.env["APPLIANCE_DATA_KIND"] == "filesystem"


def test_edge_profile_has_no_mlflow_or_workbench(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path, profile="edge"))
    assert "mlflow" not in services and "workbench" not in services
    assert "prometheus" in services


def test_components_switch_services_off(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path, components={"workbench": False, "monitoring": False}))
    assert "workbench" not in services and "prometheus" not in services and "mlflow" in services


def test_minio_store_adds_minio_and_bucket_job(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path, object_store={"kind": "minio"}))
    assert services["mlflow"].depends_on == ["buckets"]
    assert services["buckets"].oneshot
    assert services["mlflow"].env["AWS_S3_ENDPOINT"].endswith(":9000")
    assert "--artifacts-destination" in services["mlflow"].command
    assert "s3://mlflow" in services["mlflow"].command


def test_secrets_are_generated_once_with_mode_0600(tmp_path: Path) -> None:
    context = ctx(tmp_path)
    first = render_stack(context)["workbench"].env["JUPYTER_TOKEN"]
    second = render_stack(ctx(tmp_path))["workbench"].env["JUPYTER_TOKEN"]
    assert first == second and len(first) >= 32
    path = context.state_dir / "secrets" / "jupyter_token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_prometheus_scrapes_every_metrics_target(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path, ports={"node_exporter": 9555}))
    config = services["prometheus"].files["prometheus.yml"]
    assert "127.0.0.1:9555" in config
    assert services["prometheus"].config_hash != render_stack(ctx(tmp_path))["prometheus"].config_hash


def test_edge_serving_from_the_registry_is_flagged_and_a_file_is_not(tmp_path: Path, monkeypatch) -> None:
    from appliance.preflight import _model_source

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    edge = ctx(tmp_path, profile="edge")
    (check,) = _model_source(edge, render_stack(edge))
    assert check.status == "warn" and "no MLflow" in check.detail and "s3://" in check.fix
    local = ctx(tmp_path, profile="edge", serving={"model": "/models/breast_cancer"})
    assert _model_source(local, render_stack(local)) == []
    lab = ctx(tmp_path)
    assert _model_source(lab, render_stack(lab)) == []
