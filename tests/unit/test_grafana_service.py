"""Grafana as a service of the stack: selected where it can run (always on a container runtime, on
the local runtime where a Grafana server is installed), provisioned against the stack's Prometheus
as Grafana reaches it, its admin password a 0600 secret that no rendered text contains.

No Grafana can run here: the local cases put a stub ``grafana-server`` on ``PATH`` for selection
only (it is never started)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.monitoring.dashboards import build_dashboards
from appliance.monitoring.grafana import DATASOURCE_UID, FOLDER_UID
from appliance.render import render_stack
from appliance.runtimes.podman_rt import PodmanRuntime
from appliance.stack import RenderedService, load_stack

SECRET = "grafana_admin_password"
DATASOURCES = "provisioning/datasources/appliance.yaml"
PROVIDER = "provisioning/dashboards/appliance.yaml"


@pytest.fixture
def no_grafana(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH (and sbin search path) without any Grafana."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr("appliance.context.SBIN_PATH", str(empty))
    return empty


@pytest.fixture
def stub_grafana(no_grafana: Path) -> Path:
    """An executable named ``grafana-server`` on PATH, for selection only."""
    stub = no_grafana / "grafana-server"
    stub.write_text("#!/bin/sh\nexit 1\n")
    stub.chmod(0o755)
    return stub


def ctx(tmp_path: Path, **data: object) -> AppContext:
    data.setdefault("object_store", {"kind": "filesystem"})
    return AppContext(Answers.model_validate(data), tmp_path / "state")


def texts(svc: RenderedService) -> list[str]:
    """Everything of a rendered service a password could leak into."""
    return [
        *svc.command,
        *svc.container_command,
        *svc.env.values(),
        *svc.files.values(),
        svc.url or "",
        svc.health.http or "",
    ]


def test_the_port_is_an_answer_and_dashboards_a_component() -> None:
    answers = Answers()
    assert answers.ports.grafana == 3000 and answers.components.dashboards is True
    assert "Grafana" in (Answers.model_fields["ports"].annotation.model_fields["grafana"].description or "")  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="both 9090"):
        Answers.model_validate({"ports": {"grafana": 9090}})


def test_local_runtime_without_a_grafana_binary_leaves_it_out(tmp_path: Path, no_grafana: Path) -> None:
    services = render_stack(ctx(tmp_path))
    assert "grafana" not in services and "prometheus" in services
    assert "grafana" not in services["prometheus"].files["prometheus.yml"]
    assert not (tmp_path / "state" / "secrets" / SECRET).exists()


def test_local_runtime_with_a_grafana_server_runs_it_against_prometheus_on_the_host(
    tmp_path: Path, stub_grafana: Path
) -> None:
    context = ctx(tmp_path, bind_address="127.0.0.2", ports={"grafana": 3300, "prometheus": 9190})
    services = render_stack(context)
    grafana = services["grafana"]
    assert grafana.command[0] == str(stub_grafana)
    config = tmp_path / "state" / "config" / "grafana"
    assert f"cfg:default.paths.provisioning={config}/provisioning" in grafana.command
    assert f"cfg:default.paths.data={tmp_path / 'state'}/grafana" in grafana.command
    assert grafana.env["GF_SERVER_HTTP_ADDR"] == "127.0.0.2" and grafana.env["GF_SERVER_HTTP_PORT"] == "3300"
    assert grafana.depends_on == ["prometheus"]
    assert grafana.health.http == "http://127.0.0.2:3300/api/health"
    assert grafana.url == "http://127.0.0.2:3300" and grafana.metrics == "127.0.0.2:3300"
    assert grafana.ports == {"http": 3300} and grafana.publish_address == "127.0.0.2"

    (source,) = yaml.safe_load(grafana.files[DATASOURCES])["datasources"]
    assert source["url"] == "http://127.0.0.2:9190"
    assert source["type"] == "prometheus" and source["uid"] == DATASOURCE_UID and source["isDefault"]
    (provider,) = yaml.safe_load(grafana.files[PROVIDER])["providers"]
    assert provider["options"]["path"] == str(config / "dashboards")
    assert provider["type"] == "file" and provider["folderUid"] == FOLDER_UID
    # Prometheus scrapes Grafana's /metrics, on the host
    scrape = yaml.safe_load(services["prometheus"].files["prometheus.yml"])
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert jobs["grafana"]["static_configs"][0]["targets"] == ["127.0.0.2:3300"]


def test_dashboards_are_the_appliances_with_the_answers_thresholds(
    tmp_path: Path, stub_grafana: Path
) -> None:
    context = ctx(tmp_path, monitoring={"drift_psi_threshold": 0.35, "latency_p99_slo_seconds": 0.2})
    grafana = render_stack(context)["grafana"]
    expected = build_dashboards(0.35, 0.2)
    dashboards = {
        name.removeprefix("dashboards/"): text
        for name, text in grafana.files.items()
        if name.startswith("dashboards/")
    }
    assert set(dashboards) == set(expected)
    for name, text in dashboards.items():
        assert json.loads(text) == expected[name]
    assert json.loads(dashboards["drift.json"]) != build_dashboards()["drift.json"]


@pytest.mark.parametrize("runtime", ["podman", "docker"])
def test_container_runtimes_always_run_it_from_the_pinned_upstream_image(
    tmp_path: Path, no_grafana: Path, runtime: str
) -> None:
    services = render_stack(ctx(tmp_path, runtime=runtime, ports={"grafana": 3300, "prometheus": 9190}))
    grafana = services["grafana"]
    assert grafana.image and grafana.image.startswith("docker.io/grafana/grafana:11.3.0@sha256:")
    argv = grafana.container_command
    assert argv[:2] == ["/usr/share/grafana/bin/grafana", "server"]
    config = tmp_path / "state" / "config" / "grafana"
    assert f"cfg:default.paths.provisioning={config}/provisioning" in argv
    assert "cfg:default.paths.data=/var/lib/grafana" in argv
    assert grafana.volumes == {"grafana": "/var/lib/grafana"} and grafana.container_user == "0"
    # inside its container: listens on the wildcard, reaches Prometheus by name
    assert grafana.env["GF_SERVER_HTTP_ADDR"] == "0.0.0.0"
    (source,) = yaml.safe_load(grafana.files[DATASOURCES])["datasources"]
    assert source["url"] == "http://prometheus:9190"
    (provider,) = yaml.safe_load(grafana.files[PROVIDER])["providers"]
    assert provider["options"]["path"] == str(config / "dashboards")  # config is mounted at its host path
    # from the host: probes and URL at the published port; Prometheus scrapes it by name
    assert grafana.health.http == "http://127.0.0.1:3300/api/health"
    assert grafana.url == "http://127.0.0.1:3300"
    assert grafana.metrics == "grafana:3300"
    assert "grafana:3300" in services["prometheus"].files["prometheus.yml"]


def test_edge_profile_on_containers_has_grafana(tmp_path: Path, no_grafana: Path) -> None:
    assert "grafana" in render_stack(ctx(tmp_path, runtime="podman", profile="edge"))


def test_the_switches_leave_it_out(tmp_path: Path, stub_grafana: Path) -> None:
    for runtime in ("local", "podman"):
        off = render_stack(ctx(tmp_path / runtime, runtime=runtime, components={"dashboards": False}))
        assert "grafana" not in off and "prometheus" in off
        # it reads Prometheus: no monitoring, no Grafana
        alone = render_stack(ctx(tmp_path / runtime, runtime=runtime, components={"monitoring": False}))
        assert "grafana" not in alone and "prometheus" not in alone


def test_anonymous_access_sign_up_and_phoning_home_are_off(tmp_path: Path, no_grafana: Path) -> None:
    env = render_stack(ctx(tmp_path, runtime="podman"))["grafana"].env
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    assert env["GF_ANALYTICS_REPORTING_ENABLED"] == "false"
    assert env["GF_ANALYTICS_CHECK_FOR_UPDATES"] == "false"
    assert env["GF_SECURITY_ADMIN_USER"] == "admin"


def test_the_admin_password_is_a_0600_secret_grafana_reads_from_its_file(
    tmp_path: Path, stub_grafana: Path
) -> None:
    local_ctx = ctx(tmp_path / "local")
    local = render_stack(local_ctx)["grafana"]
    secret = local_ctx.state_dir / "secrets" / SECRET
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    password = secret.read_text().strip()
    assert len(password) >= 24
    # Grafana expands $__file{PATH} itself; the value is never in the environment or a file
    assert local.env["GF_SECURITY_ADMIN_PASSWORD"] == f"$__file{{{secret}}}"
    assert not any(password in text for text in texts(local))

    podman_ctx = ctx(tmp_path / "podman", runtime="podman")
    inside = render_stack(podman_ctx)["grafana"]
    path = "/var/lib/appliance/secrets/" + SECRET
    assert inside.env["GF_SECURITY_ADMIN_PASSWORD"] == f"$__file{{{path}}}"
    password = (podman_ctx.state_dir / "secrets" / SECRET).read_text().strip()
    assert not any(password in text for text in texts(inside))
    # the secret file is mounted read-only where the environment names it, and runs as root to read it
    runtime = PodmanRuntime(podman_ctx.state_dir, podman_ctx.answers)
    runtime._client = SimpleNamespace(volumes=SimpleNamespace(get=lambda name: name))  # no engine is asked
    prometheus_password = podman_ctx.state_dir / "secrets" / "prometheus_web_password"
    assert runtime.secret_files(inside) == {
        path: podman_ctx.state_dir / "secrets" / SECRET,
        # the data source's Prometheus password, named by its host path in the provisioning file
        str(prometheus_password): prometheus_password,
    }
    spec = runtime._spec(inside, "img")
    assert spec["volumes"][str(podman_ctx.state_dir / "secrets" / SECRET)] == {"bind": path, "mode": "ro"}
    assert spec["user"] == "0"
    assert not any(password in value for value in spec["environment"].values())
    # the provisioning files land under the config folder (0600), mounted read-only at its host path
    config = podman_ctx.state_dir / "config" / "grafana"
    assert spec["volumes"][str(config)] == {"bind": str(config), "mode": "ro"}
    written = config / DATASOURCES
    assert yaml.safe_load(written.read_text()) == yaml.safe_load(inside.files[DATASOURCES])
    assert stat.S_IMODE(os.stat(written).st_mode) == 0o600


def test_every_dashboard_has_a_config_file_of_the_grafana_service() -> None:
    spec = load_stack()["grafana"]
    assert spec.component == "dashboards" and set(spec.profiles) == {"lab", "edge"}
    assert spec.secrets == ["grafana_admin_password", "prometheus_web_password"]
    dashboards = {
        name.removeprefix("dashboards/") for name in spec.config_files if name.startswith("dashboards/")
    }
    assert dashboards == set(build_dashboards())


def test_the_container_test_answers_switch_grafana_off(tmp_path: Path, no_grafana: Path) -> None:
    """Its image cannot be pulled here: the container and bundle tests' answers leave it out."""
    from tests.integration import test_bundle_offline, test_bundle_offline_podman
    from tests.integration._container_fixtures import lab_answers

    for data in (
        lab_answers("podman"),
        lab_answers("docker"),
        test_bundle_offline_podman.EDGE,
        test_bundle_offline.EDGE | {"runtime": "podman"},
    ):
        assert "grafana" not in render_stack(ctx(tmp_path / str(id(data)), **data))


def test_generated_provisioning_matches_the_committed_files_but_for_the_filled_in_values(
    tmp_path: Path, no_grafana: Path
) -> None:
    """The stack's Grafana and a user's own (``stacks/monitoring/grafana/provisioning``) get the same
    data source and provider; only the Prometheus URL, its password and the dashboards path are
    filled in (the password as the path of its secret file, which Grafana reads itself)."""
    committed = Path(__file__).resolve().parents[2] / "stacks" / "monitoring" / "grafana" / "provisioning"
    grafana = render_stack(ctx(tmp_path, runtime="podman"))["grafana"]
    (ours,) = yaml.safe_load(grafana.files[DATASOURCES])["datasources"]
    (theirs,) = yaml.safe_load((committed / "datasources" / "prometheus.yaml").read_text())["datasources"]
    password_file = tmp_path / "state" / "secrets" / "prometheus_web_password"
    assert ours["secureJsonData"] == {"basicAuthPassword": f"$__file{{{password_file}}}"}
    assert theirs["secureJsonData"] == {"basicAuthPassword": "${PROMETHEUS_PASSWORD}"}
    filled = {"url": None, "secureJsonData": None}
    assert ours | filled == theirs | filled
    (ours,) = yaml.safe_load(grafana.files[PROVIDER])["providers"]
    (theirs,) = yaml.safe_load((committed / "dashboards" / "appliance.yaml").read_text())["providers"]
    assert {**ours, "options": {**ours["options"], "path": None}} == {
        **theirs,
        "options": {**theirs["options"], "path": None},
    }
