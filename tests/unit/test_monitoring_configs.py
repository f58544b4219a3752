"""The rendered ``prometheus.yml`` and ``alertmanager.yml``, checked by promtool and amtool.

``amtool config routes test`` resolves an alert's labels to a receiver with the real routing
code, so the routing contract (drift alerts to the controller, the rest to the user) is tested
without starting Alertmanager.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.monitoring.alertmanager_config import render_alertmanager_config
from appliance.monitoring.catalog import CONTROLLER_METRICS, SERVING_INTERNAL, SERVING_METRICS, series_names
from appliance.monitoring.prometheus_config import ScrapeTarget, provenance_rules, render_prometheus_config
from appliance.monitoring.rules import render_alert_rules

PROMTOOL = shutil.which("promtool") or ""
AMTOOL = shutil.which("amtool") or ""
needs_promtool = pytest.mark.skipif(not PROMTOOL, reason="promtool (package prometheus) not installed")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool (package prometheus-alertmanager) not installed"
)

TARGETS = [
    ScrapeTarget("prometheus", "127.0.0.1:9090"),
    ScrapeTarget("alertmanager", "127.0.0.1:9093"),
    ScrapeTarget("node", "127.0.0.1:9100"),
    ScrapeTarget("serving", "127.0.0.1:8082"),
    ScrapeTarget("serving", "127.0.0.1:8182"),
    ScrapeTarget("controller", "127.0.0.1:8090"),
]


def test_replicas_of_a_job_share_one_scrape_config() -> None:
    config = yaml.safe_load(render_prometheus_config(TARGETS, ["rules.yml"], "http://127.0.0.1:9093"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert list(jobs) == ["prometheus", "alertmanager", "node", "serving", "controller"]
    assert jobs["serving"]["static_configs"] == [{"targets": ["127.0.0.1:8082", "127.0.0.1:8182"]}]
    assert config["alerting"]["alertmanagers"] == [
        {"scheme": "http", "static_configs": [{"targets": ["127.0.0.1:9093"]}]}
    ]


def test_alertmanager_path_prefix_and_no_alertmanager() -> None:
    config = yaml.safe_load(render_prometheus_config(TARGETS, [], "https://am.internal:443/am/"))
    assert config["alerting"]["alertmanagers"][0]["path_prefix"] == "/am/"
    assert config["alerting"]["alertmanagers"][0]["scheme"] == "https"
    assert "alerting" not in yaml.safe_load(render_prometheus_config(TARGETS, [], None))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: ScrapeTarget("serving", "localhost"), "host:port"),
        (lambda: ScrapeTarget("serving", "localhost:65536"), "host:port"),
        (lambda: ScrapeTarget("serving", "localhost:0"), "host:port"),
        (lambda: ScrapeTarget("serving", "http://localhost:80"), "host:port"),
        (lambda: ScrapeTarget("bad job", "localhost:80"), "letters"),
        (lambda: ScrapeTarget("serving", "localhost:80", scheme="ftp"), "http or https"),
        (lambda: ScrapeTarget("serving", "localhost:80", metrics_path="metrics"), "start with /"),
        (lambda: render_prometheus_config(TARGETS, [], None, scrape_interval="15"), "scrape_interval"),
        (lambda: render_prometheus_config(TARGETS, [], "127.0.0.1:9093"), "alertmanager URL"),
        (
            lambda: render_prometheus_config(
                [ScrapeTarget("s", "a:1"), ScrapeTarget("s", "b:1", metrics_path="/m")], [], None
            ),
            "disagree",
        ),
    ],
)
def test_bad_targets_and_settings_are_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@needs_promtool
def test_promtool_accepts_the_config_with_its_rules(tmp_path: Path) -> None:
    rules = tmp_path / "alert_rules.yml"
    rules.write_text(render_alert_rules(0.2, "5m", 0.05))
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(TARGETS, [str(rules)], "http://127.0.0.1:9093", "5s", "5s"))
    result = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout
    assert "6 rules found" in result.stdout


@needs_promtool
def test_basic_auth_targets_and_alertmanager_pass_promtool(tmp_path: Path) -> None:
    """Targets behind basic auth (the stack's monitoring services) and an Alertmanager that asks
    for it: the password stays in its file, named by path."""
    password = tmp_path / "am_password"
    password.write_text("s3cret")
    auth = ("appliance", str(password))
    targets = [ScrapeTarget("alertmanager", "127.0.0.1:9093", basic_auth=auth), *TARGETS[3:]]
    text = render_prometheus_config(targets, [], "http://127.0.0.1:9093", alertmanager_auth=auth)
    assert "s3cret" not in text
    config = yaml.safe_load(text)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["alertmanager"]["basic_auth"] == {"username": "appliance", "password_file": str(password)}
    assert "basic_auth" not in jobs["serving"]
    assert config["alerting"]["alertmanagers"][0]["basic_auth"]["password_file"] == str(password)
    path = tmp_path / "prometheus.yml"
    path.write_text(text)
    result = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_replicas_of_a_job_must_agree_on_basic_auth() -> None:
    with pytest.raises(ValueError, match="basic auth"):
        render_prometheus_config(
            [
                ScrapeTarget("serving", "127.0.0.1:8082", basic_auth=("appliance", "/a")),
                ScrapeTarget("serving", "127.0.0.1:8182"),
            ],
            [],
            None,
        )


@needs_promtool
def test_promtool_check_fails_on_a_missing_rule_file(tmp_path: Path) -> None:
    """Guards the check above: promtool really reads the rule files the config names."""
    config = tmp_path / "prometheus.yml"
    config.write_text(render_prometheus_config(TARGETS, [str(tmp_path / "absent.yml")], None))
    result = subprocess.run([PROMTOOL, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode != 0


def render_am(tmp_path: Path, user_webhook: str | None) -> Path:
    path = tmp_path / "alertmanager.yml"
    text = render_alertmanager_config("http://127.0.0.1:8090/alerts", str(tmp_path / "token"), user_webhook)
    path.write_text(text)
    return path


def test_controller_receiver_reads_its_bearer_token_from_a_file(tmp_path: Path) -> None:
    config = yaml.safe_load(render_am(tmp_path, None).read_text())
    controller = next(r for r in config["receivers"] if r["name"] == "controller")
    hook = controller["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:8090/alerts"
    assert hook["http_config"]["authorization"] == {
        "type": "Bearer",
        "credentials_file": str(tmp_path / "token"),
    }
    assert hook["send_resolved"] is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"controller_webhook_url": "127.0.0.1:8090/alerts"}, "controller webhook URL"),
        ({"user_webhook_url": "hooks.example.com"}, "alert_webhook_url"),
        ({"controller_token_file": ""}, "controller_token_file"),
        ({"repeat_interval": "4 hours"}, "repeat_interval"),
    ],
)
def test_bad_alertmanager_settings_are_refused(kwargs: dict, message: str) -> None:
    args: dict = {
        "controller_webhook_url": "http://127.0.0.1:8090/alerts",
        "controller_token_file": "/state/secrets/controller_webhook_token",
        "user_webhook_url": None,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        render_alertmanager_config(**args)


@needs_amtool
@pytest.mark.parametrize("user_webhook", [None, "https://hooks.example.com/appliance"])
def test_amtool_accepts_the_config(tmp_path: Path, user_webhook: str | None) -> None:
    path = render_am(tmp_path, user_webhook)
    result = subprocess.run([AMTOOL, "check-config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def route(path: Path, *labels: str) -> str:
    result = subprocess.run(
        [AMTOOL, "config", "routes", "test", f"--config.file={path}", *labels],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


@needs_amtool
@pytest.mark.parametrize(
    ("user_webhook", "alert", "receiver"),
    [
        ("https://hooks.example.com/a", "FeatureDrift", "controller"),
        ("https://hooks.example.com/a", "PredictionDrift", "controller"),
        ("https://hooks.example.com/a", "ServingLatencyHigh", "user-webhook"),
        ("https://hooks.example.com/a", "ServingErrorRatio", "user-webhook"),
        ("https://hooks.example.com/a", "TargetDown", "user-webhook"),
        (None, "FeatureDrift", "controller"),
        (None, "TargetDown", "null"),
        (None, "FeatureDriftish", "null"),
    ],
)
def test_routing_sends_drift_to_the_controller(
    tmp_path: Path, user_webhook: str | None, alert: str, receiver: str
) -> None:
    path = render_am(tmp_path, user_webhook)
    assert route(path, f"alertname={alert}", "model=breast_cancer", "severity=warning") == receiver


def _kept(rules: list[dict], name: str) -> bool:
    """What Prometheus does with a series ``name`` under ``rules`` (its regexes are anchored)."""
    for rule in rules:
        matched = re.fullmatch(rule["regex"], name) is not None
        if matched != (rule["action"] == "keep"):
            return False
    return True


def test_each_job_keeps_only_the_series_its_exporter_owns() -> None:
    config = yaml.safe_load(render_prometheus_config(TARGETS, [], None))
    rules = {job["job_name"]: job["metric_relabel_configs"] for job in config["scrape_configs"]}
    assert rules["serving"] == provenance_rules("serving")
    serving = series_names(SERVING_METRICS)
    controller = series_names(CONTROLLER_METRICS)
    assert {n for n in serving | controller if _kept(rules["serving"], n)} == serving
    assert {n for n in serving | controller if _kept(rules["controller"], n)} == controller
    for other in ("prometheus", "alertmanager", "node"):
        assert not any(_kept(rules[other], n) for n in serving | controller | {"appliance_made_up"})
        assert _kept(rules[other], "node_load1") and _kept(rules[other], "prometheus_build_info")
    # what a model server writes for its supervisor alone is not stored either
    assert not any(_kept(rules["serving"], n) for n in series_names(SERVING_INTERNAL))
    # a name that only looks like one of the owned: the regex is the names, escaped and whole
    assert not _kept(rules["serving"], "appliance_feature_psiX")
    assert not _kept(rules["serving"], "appliance_inference_requests_created")


def test_the_internal_serving_series_are_those_the_server_writes_for_its_supervisor() -> None:
    from appliance.workloads.serving.replica_metrics import BIN_ROWS, CONCURRENCY, EXPECTED

    assert set(SERVING_INTERNAL) == {f"{CONCURRENCY}_total", BIN_ROWS, EXPECTED}
    assert not set(SERVING_INTERNAL) & set(SERVING_METRICS)
