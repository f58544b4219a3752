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
    # its scrape config is a file it reads again on SIGHUP: the change reloads it, not recreates it
    before = render_stack(ctx(tmp_path))["prometheus"]
    assert services["prometheus"].config_hash == before.config_hash
    assert services["prometheus"].reload_digests["prometheus.yml"] != before.reload_digests["prometheus.yml"]


def test_tuned_alerting_reloads_prometheus_and_alertmanager_anything_else_recreates(tmp_path: Path) -> None:
    base = render_stack(ctx(tmp_path))
    tuned = render_stack(ctx(tmp_path, monitoring={"drift_psi_threshold": 0.35, "alert_group_wait": "5s"}))
    for name, changed in (("prometheus", "alert_rules.yml"), ("alertmanager", "alertmanager.yml")):
        assert tuned[name].config_hash == base[name].config_hash, name
        assert tuned[name].reload_digests[changed] != base[name].reload_digests[changed], name
        assert tuned[name].reload is not None and tuned[name].reload.confirm.startswith("http://127.0.0.1:")
    assert "0.35" in tuned["prometheus"].files["alert_rules.yml"]
    # web.yml (its password's hash) is read at its start: not a reload file
    assert set(base["prometheus"].reload_digests) == {"prometheus.yml", "alert_rules.yml"}
    moved = render_stack(ctx(tmp_path, ports={"prometheus": 9555}))["prometheus"]
    assert moved.config_hash != base["prometheus"].config_hash  # its listen address is a flag
    assert all(not s.reload_digests for n, s in base.items() if n not in ("prometheus", "alertmanager"))


def test_edge_serving_from_the_registry_is_flagged_and_a_file_is_not(tmp_path: Path, monkeypatch) -> None:
    from appliance.preflight import _model_source

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    edge = ctx(tmp_path, profile="edge")
    (check,) = _model_source(edge, render_stack(edge))
    assert check.status == "fail" and "edge profile does not run" in check.detail and "s3://" in check.fix
    local = ctx(tmp_path, profile="edge", serving={"model": "/models/breast_cancer"})
    assert _model_source(local, render_stack(local)) == []
    lab = ctx(tmp_path)
    assert _model_source(lab, render_stack(lab)) == []


def test_an_s3_model_needs_an_s3_store(tmp_path: Path) -> None:
    """On the edge profile ``auto`` runs no store: an s3:// model there is warned about before
    anything starts (read from AWS, if at all), naming the store kinds that would serve it."""
    from appliance.preflight import _model_source

    for answers in ({"object_store": {"kind": "auto"}}, {}):  # auto on the edge, or a folder by name
        edge = ctx(tmp_path, profile="edge", serving={"model": "s3://models/mlp"}, **answers)
        (check,) = _model_source(edge, render_stack(edge))
        assert check.status == "warn" and "s3://models/mlp" in check.detail and "a folder" in check.detail
        assert "object_store.kind: seaweedfs" in check.fix and "object_store.endpoint" in check.fix
    for kind in ("seaweedfs", "minio"):
        stored = ctx(
            tmp_path, profile="edge", serving={"model": "s3://models/mlp"}, object_store={"kind": kind}
        )
        assert _model_source(stored, render_stack(stored)) == []


def test_local_runtime_renders_every_address_as_the_bind_address(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path, bind_address="127.0.0.2", ports={"mlflow": 5555}))
    assert services["serving"].env["MLFLOW_TRACKING_URI"] == "http://127.0.0.2:5555"
    assert services["serving"].metrics and services["serving"].metrics.startswith("127.0.0.2:")
    mlflow = services["mlflow"]
    assert mlflow.container_command[mlflow.container_command.index("--host") + 1] == "127.0.0.2"
    config = services["prometheus"].files["prometheus.yml"]
    assert "127.0.0.2:" in config and "serving:" not in config
    assert "http://127.0.0.2:" in services["alertmanager"].files["alertmanager.yml"]


def test_container_runtimes_listen_on_the_wildcard_and_name_other_services(tmp_path: Path) -> None:
    for runtime in ("podman", "docker"):
        services = render_stack(
            ctx(tmp_path / runtime, runtime=runtime, ports={"mlflow": 5555, "controller": 8999})
        )
        mlflow = services["mlflow"]
        assert mlflow.container_command[mlflow.container_command.index("--host") + 1] == "0.0.0.0"
        argv = mlflow.container_command
        listen = argv[: argv.index("--allowed-hosts")]
        assert "127.0.0.1" not in " ".join(listen)
        # Host headers MLflow accepts: its name on the stack network and the host's bind address
        hosts = argv[argv.index("--allowed-hosts") + 1].split(",")
        assert {"mlflow:5555", "127.0.0.1:5555"} <= set(hosts)
        assert mlflow.command[mlflow.command.index("--host") + 1] == "127.0.0.1"
        # probes and URLs are used from the host, where the ports are published
        assert mlflow.health.http == "http://127.0.0.1:5555/health"
        assert mlflow.url == "http://127.0.0.1:5555"
        serving = services["serving"]
        assert serving.env["MLFLOW_TRACKING_URI"] == "http://mlflow:5555"
        assert serving.env["APPLIANCE_DATA_ROOT"] == "/var/lib/appliance/data"
        assert serving.metrics and serving.metrics.startswith("serving:")
        config = services["prometheus"].files["prometheus.yml"]
        assert "serving:" in config and "controller:8999" in config and "alertmanager:" in config
        assert "127.0.0.1" not in config
        assert "http://controller:8999/alerts" in services["alertmanager"].files["alertmanager.yml"]


def test_container_minio_endpoint_is_the_service_name(tmp_path: Path) -> None:
    services = render_stack(ctx(tmp_path, runtime="podman", object_store={"kind": "minio"}))
    assert services["mlflow"].env["AWS_S3_ENDPOINT"] == "http://minio:9000"
    assert services["mlflow"].env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_host_template_variable(tmp_path: Path) -> None:
    from appliance.render import TemplateVars

    local = TemplateVars(ctx(tmp_path, bind_address="10.0.0.5")).as_dict("x")
    assert "{host.node-exporter}:{bind}".format(**local) == "10.0.0.5:10.0.0.5"
    inside = TemplateVars(ctx(tmp_path), inside=True).as_dict("x")
    assert "{host.node-exporter}:{bind}".format(**inside) == "node-exporter:0.0.0.0"


def test_container_controller_reads_its_pipeline_from_config_and_keeps_state_in_the_volume(
    tmp_path: Path,
) -> None:
    controller = render_stack(ctx(tmp_path, runtime="docker"))["controller"]
    args = controller.container_command
    config = str(tmp_path / "state" / "config" / "controller")
    dirs = [args[i + 1] for i, a in enumerate(args) if a == "--pipelines-dir"]
    assert dirs == ["/var/lib/appliance/pipelines", config]  # the user's first, then the built-ins
    assert args[args.index("--models-file") + 1] == f"{config}/models.json"
    # The host's STATE/pipelines is mounted (read-only) where that first folder is looked up.
    assert controller.host_dirs == {str(tmp_path / "state" / "pipelines"): "/var/lib/appliance/pipelines"}
    assert args[args.index("--state-dir") + 1] == "/var/lib/appliance"
    assert args[0] == "/opt/appliance/bin/python"
    assert "name: retrain" in controller.files["retrain.yaml"]
    assert controller.volumes == {"state": "/var/lib/appliance"}
    serving = render_stack(ctx(tmp_path, runtime="docker"))["serving"].container_command
    assert serving[serving.index("--token-file") + 1] == "/var/lib/appliance/secrets/serving_token"


def test_serving_serves_every_model_and_the_controller_gets_every_binding(tmp_path: Path) -> None:
    import json

    models = [
        {"name": "breast_cancer", "dataset": "breast_cancer"},
        {
            "name": "wine",
            "dataset": "wine",
            "target": "target",
            "drift_psi_threshold": 0.3,
            "parameters": {"epochs": 5},
            "retrain_schedule": "0 4 * * *",
        },
        {"name": "edge_file", "uri": "/models/edge/model.onnx"},
    ]
    services = render_stack(ctx(tmp_path, models=models, monitoring={"retrain_schedule": "0 3 * * *"}))
    command = services["serving"].command
    served = [command[i + 1] for i, a in enumerate(command) if a == "--model"]
    assert served == [
        "breast_cancer=models:/breast_cancer@champion",
        "wine=models:/wine@champion",
        "edge_file=/models/edge/model.onnx",
    ]
    controller = services["controller"]
    local_dirs = [
        controller.command[i + 1] for i, a in enumerate(controller.command) if a == "--pipelines-dir"
    ]
    assert local_dirs == [str(tmp_path / "state" / "pipelines")]  # then the built-ins (loader.search_dirs)
    assert "--schedule" not in controller.command  # schedules are per model, in models.json
    bindings = {m["name"]: m for m in json.loads(controller.files["models.json"])["models"]}
    assert bindings["wine"]["dataset"] == "wine" and bindings["wine"]["parameters"] == {"epochs": 5}
    assert bindings["wine"]["retrain_schedule"] == "0 4 * * *"
    assert bindings["breast_cancer"]["retrain_schedule"] == "0 3 * * *"  # monitoring's, by default
    assert (
        bindings["wine"]["drift_psi_threshold"] == 0.3
        and bindings["breast_cancer"]["drift_psi_threshold"] == 0.2
    )
    assert bindings["edge_file"]["dataset"] is None


def test_the_serving_model_shorthand_is_one_model_bound_to_its_own_dataset(tmp_path: Path) -> None:
    command = render_stack(ctx(tmp_path, serving={"model": "models:/wine@champion"}))["serving"].command
    assert [command[i + 1] for i, a in enumerate(command) if a == "--model"] == ["wine=models:/wine@champion"]
    default = render_stack(ctx(tmp_path))["serving"].command
    assert default[default.index("--model") + 1] == "breast_cancer=models:/breast_cancer@champion"


def test_a_container_controller_sees_the_hosts_state_pipelines_read_only(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from appliance.runtimes.podman_rt import PodmanRuntime

    c = ctx(tmp_path, runtime="podman")
    controller = render_stack(c)["controller"]
    runtime = PodmanRuntime(c.state_dir, c.answers)
    runtime._client = SimpleNamespace(volumes=SimpleNamespace(get=lambda name: name))  # no engine asked
    spec = runtime._spec(controller, "img")
    host = tmp_path / "state" / "pipelines"
    assert spec["volumes"][str(host)] == {"bind": "/var/lib/appliance/pipelines", "mode": "ro"}
    assert host.is_dir()  # created, so a user can drop a file there after `up`
