"""All monitoring files from an answers file, checked by the real tools."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.monitoring.generate import (
    GENERATORS,
    controller_webhook_url,
    monitoring_targets,
    write_monitoring_configs,
)

PROMTOOL = shutil.which("promtool") or ""
AMTOOL = shutil.which("amtool") or ""


def jobs(answers: Answers) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for target in monitoring_targets(answers):
        result.setdefault(target.job, []).append(target.address)
    return result


def test_targets_follow_components_and_ports() -> None:
    answers = Answers.model_validate({"ports": {"serving_metrics": 18082, "controller": 18090}})
    assert jobs(answers) == {
        "prometheus": ["127.0.0.1:9090"],
        "alertmanager": ["127.0.0.1:9093"],
        "node-exporter": ["127.0.0.1:9100"],
        "serving": ["127.0.0.1:18082"],
        "controller": ["127.0.0.1:18090"],
    }
    edge = Answers.model_validate({"components": {"controller": False, "serving": False}})
    assert set(jobs(edge)) == {"prometheus", "alertmanager", "node-exporter"}


def test_wildcard_bind_addresses_are_scraped_on_loopback() -> None:
    assert jobs(Answers.model_validate({"bind_address": "0.0.0.0"}))["node-exporter"] == ["127.0.0.1:9100"]
    assert jobs(Answers.model_validate({"bind_address": "::"}))["node-exporter"] == ["[::1]:9100"]
    assert jobs(Answers.model_validate({"bind_address": "10.0.0.5"}))["node-exporter"] == ["10.0.0.5:9100"]
    assert (
        controller_webhook_url(Answers.model_validate({"bind_address": "::1"})) == "http://[::1]:8090/alerts"
    )


def answers_with(**monitoring: object) -> Answers:
    return Answers.model_validate({"monitoring": monitoring})


def test_files_carry_the_answers(tmp_path: Path) -> None:
    answers = answers_with(
        drift_psi_threshold=0.3,
        drift_for="90s",
        drift_min_rows=450,
        alert_webhook_url="https://hooks.example.com/x",
    )
    files = write_monitoring_configs(answers, tmp_path)
    rules = {r["alert"]: r for r in yaml.safe_load(files.alert_rules.read_text())["groups"][0]["rules"]}
    assert rules["FeatureDrift"]["for"] == "90s"
    assert "appliance_feature_psi) > 0.3)" in rules["FeatureDrift"]["expr"]
    assert rules["FeatureDrift"]["expr"].endswith("(appliance_drift_window_rows) >= 450)")
    prometheus = yaml.safe_load(files.prometheus_config.read_text())
    assert prometheus["rule_files"] == ["alert_rules.yml"]
    assert files.alert_rules.parent == files.prometheus_config.parent
    alertmanager = yaml.safe_load(files.alertmanager_config.read_text())
    receivers = {r["name"]: r for r in alertmanager["receivers"]}
    assert receivers["user-webhook"]["webhook_configs"][0]["url"] == "https://hooks.example.com/x"
    hook = receivers["controller"]["webhook_configs"][0]
    assert hook["http_config"]["authorization"]["credentials_file"] == str(files.controller_token_file)
    assert "0.3" in (files.dashboards_dir / "drift.json").read_text()


def test_the_controller_token_is_a_private_file_that_survives_rerenders(tmp_path: Path) -> None:
    first = write_monitoring_configs(Answers.model_validate({}), tmp_path)
    token = first.controller_token_file.read_text()
    assert len(token) >= 24
    assert stat.S_IMODE(first.controller_token_file.stat().st_mode) == 0o600
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    write_monitoring_configs(Answers.model_validate({}), tmp_path)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.skipif(not (PROMTOOL and AMTOOL), reason="promtool/amtool (prometheus packages) not installed")
@pytest.mark.parametrize("webhook", [None, "https://hooks.example.com/x"])
def test_promtool_and_amtool_accept_the_written_files(tmp_path: Path, webhook: str | None) -> None:
    files = write_monitoring_configs(answers_with(alert_webhook_url=webhook), tmp_path)
    checks = [
        [PROMTOOL, "check", "config", str(files.prometheus_config)],
        [AMTOOL, "check-config", str(files.alertmanager_config)],
    ]
    for command in checks:
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def stack_services(*names: str) -> dict[str, SimpleNamespace]:
    ports = {"prometheus": 9090, "alertmanager": 9093, "serving": 8082, "mlflow": None}
    return {n: SimpleNamespace(metrics=f"127.0.0.1:{ports[n]}" if ports[n] else None) for n in names}


def test_stack_generators_scrape_services_that_declare_metrics(tmp_path: Path) -> None:
    ctx = AppContext.create(answers_with(drift_for="3m"), None, tmp_path)
    services = stack_services("prometheus", "alertmanager", "serving", "mlflow")
    config = yaml.safe_load(GENERATORS["prometheus_yml"](ctx, services))
    assert [job["job_name"] for job in config["scrape_configs"]] == ["alertmanager", "prometheus", "serving"]
    assert config["rule_files"] == ["alert_rules.yml"]
    assert config["alerting"]["alertmanagers"][0]["static_configs"] == [{"targets": ["127.0.0.1:9093"]}]
    without_am = yaml.safe_load(GENERATORS["prometheus_yml"](ctx, stack_services("prometheus")))
    assert "alerting" not in without_am
    rules = yaml.safe_load(GENERATORS["alert_rules_yml"](ctx, services))
    assert rules["groups"][0]["rules"][0]["for"] == "3m"
    alertmanager = yaml.safe_load(GENERATORS["alertmanager_yml"](ctx, services))
    token = alertmanager["receivers"][0]["webhook_configs"][0]["http_config"]["authorization"][
        "credentials_file"
    ]
    assert Path(token) == ctx.secrets.root / "controller_webhook_token"
    assert Path(token).read_text() == ctx.secrets.get("controller_webhook_token")


@pytest.mark.skipif(not PROMTOOL, reason="promtool (package prometheus) not installed")
def test_stack_generated_files_pass_promtool_in_their_config_folder(tmp_path: Path) -> None:
    ctx = AppContext.create(answers_with(), None, tmp_path)
    services = stack_services("prometheus", "alertmanager", "serving")
    folder = tmp_path / "config" / "prometheus"
    folder.mkdir(parents=True)
    (folder / "prometheus.yml").write_text(GENERATORS["prometheus_yml"](ctx, services))
    (folder / "alert_rules.yml").write_text(GENERATORS["alert_rules_yml"](ctx, services))
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(folder / "prometheus.yml")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 rules found" in result.stdout
