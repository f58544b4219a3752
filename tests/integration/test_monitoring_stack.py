"""The rendered monitoring configs driving a real Prometheus and a real Alertmanager.

An in-test exporter publishes a drifted feature; Prometheus (rules rendered with
``drift_for: 0s`` and 1 s intervals) must raise FeatureDrift, and Alertmanager (rendered
routing) must deliver it to the controller's webhook with the bearer token read from the token
file, while TargetDown (a dead target) goes to the user's webhook and never to the controller.
A node exporter started with the stack's collectors proves the host dashboard's metric names.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from appliance.monitoring import catalog
from appliance.monitoring.alertmanager_config import render_alertmanager_config
from appliance.monitoring.grafana import dashboard_metric_names
from appliance.monitoring.prometheus_config import ScrapeTarget, render_prometheus_config
from appliance.monitoring.rules import render_alert_rules

pytestmark = pytest.mark.integration

PROMETHEUS = shutil.which("prometheus") or ""
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager") or ""
NODE_EXPORTER = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter") or ""
DASHBOARDS = Path(__file__).resolve().parents[2] / "stacks" / "monitoring" / "grafana" / "dashboards"
WAIT_SECONDS = 40


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Any], timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except httpx.HTTPError as err:
            last = err
        else:
            if last:
                return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


class Process:
    """A started binary, stopped and its log shown when the test ends."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(args, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


class Webhooks:
    """An HTTP server recording every POST: (path, Authorization header, JSON body)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, dict[str, Any]]] = []
        calls = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                calls.append((self.path, self.headers.get("Authorization"), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, path: str) -> list[tuple[str | None, dict[str, Any]]]:
        return [(auth, alert) for p, auth, body in list(self.calls) if p == path for alert in body["alerts"]]


@pytest.fixture
def webhooks() -> Iterator[Webhooks]:
    hooks = Webhooks()
    yield hooks
    hooks.server.shutdown()
    hooks.server.server_close()


@pytest.fixture
def exporter() -> Iterator[str]:
    """A stand-in model server publishing one drifted and one stable feature."""
    registry = CollectorRegistry()
    psi = Gauge("appliance_feature_psi", "PSI per feature", ["model", "feature"], registry=registry)
    psi.labels("breast_cancer", "mean radius").set(0.61)
    psi.labels("breast_cancer", "mean area").set(0.05)
    rows = Gauge("appliance_drift_window_rows", "Rows in the drift window", ["model"], registry=registry)
    rows.labels("breast_cancer").set(1000)  # a full window: the drift rules need enough rows
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def active_alerts(prometheus_url: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/alerts", timeout=5)
    response.raise_for_status()
    return list(response.json()["data"]["alerts"])


@pytest.mark.skipif(
    not (PROMETHEUS and ALERTMANAGER), reason="prometheus / prometheus-alertmanager not installed"
)
@pytest.mark.timeout(120)
def test_drift_alert_reaches_the_controller_with_its_token(
    tmp_path: Path, processes: list[Process], webhooks: Webhooks, exporter: str
) -> None:
    token = "t0ken-" + "x" * 20
    token_file = tmp_path / "secrets" / "controller_webhook_token"
    token_file.parent.mkdir()
    token_file.write_text(token)
    dead_target = f"127.0.0.1:{free_port()}"
    am_port, prom_port = free_port(), free_port()

    (tmp_path / "alertmanager.yml").write_text(
        render_alertmanager_config(
            f"{webhooks.url}/alerts",
            str(token_file),
            f"{webhooks.url}/user",
            group_wait="1s",
            group_interval="1s",
        )
    )
    (tmp_path / "alert_rules.yml").write_text(
        render_alert_rules(0.2, "0s", 0.05, target_down_for="0s", rate_window="10s")
    )
    targets = [
        ScrapeTarget("serving", exporter),
        ScrapeTarget("controller", dead_target),
        ScrapeTarget("prometheus", f"127.0.0.1:{prom_port}"),
    ]
    (tmp_path / "prometheus.yml").write_text(
        render_prometheus_config(targets, ["alert_rules.yml"], f"http://127.0.0.1:{am_port}", "1s", "1s")
    )

    processes.append(
        Process(
            [
                ALERTMANAGER,
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp_path / "alertmanager.log",
        )
    )
    processes.append(
        Process(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
        )
    )
    prometheus_url = f"http://127.0.0.1:{prom_port}"

    def firing_drift() -> list[dict[str, Any]]:
        return [
            a
            for a in active_alerts(prometheus_url)
            if a["labels"]["alertname"] == "FeatureDrift" and a["state"] == "firing"
        ]

    try:
        drift = wait_for("FeatureDrift to fire in Prometheus", firing_drift)
        assert [a["labels"]["feature"] for a in drift] == ["mean radius"]
        assert drift[0]["labels"]["model"] == "breast_cancer"
        assert drift[0]["annotations"]["description"].startswith('PSI of feature "mean radius" is 0.610')

        controller = wait_for(
            "the controller webhook to get FeatureDrift", lambda: webhooks.alerts("/alerts")
        )
        user = wait_for("the user webhook to get TargetDown", lambda: webhooks.alerts("/user"))
    except AssertionError:
        for process in processes:
            process.stop()
            print(process.log.name, process.log.read_text()[-3000:])
        raise

    assert {auth for auth, _ in controller} == {f"Bearer {token}"}
    assert {alert["labels"]["alertname"] for _, alert in controller} == {"FeatureDrift"}
    assert {alert["labels"]["feature"] for _, alert in controller} == {"mean radius"}
    assert {alert["status"] for _, alert in controller} == {"firing"}
    down = [alert for _, alert in user if alert["labels"]["alertname"] == "TargetDown"]
    assert {alert["labels"]["instance"] for alert in down} == {dead_target}
    assert all(auth is None for auth, _ in user), "the controller's token must not leak to the user's webhook"
    assert "FeatureDrift" not in {alert["labels"]["alertname"] for _, alert in user}


@pytest.mark.skipif(not NODE_EXPORTER, reason="prometheus-node-exporter not installed")
@pytest.mark.timeout(60)
def test_host_dashboard_metrics_exist_in_a_real_node_exporter(
    tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    # The collectors stacks/services.yaml enables for the node-exporter service.
    collectors = ["cpu", "meminfo", "filesystem", "netdev", "loadavg", "diskstats"]
    processes.append(
        Process(
            [
                NODE_EXPORTER,
                f"--web.listen-address=127.0.0.1:{port}",
                "--collector.disable-defaults",
                *(f"--collector.{name}" for name in collectors),
            ],
            tmp_path / "node-exporter.log",
        )
    )

    def scrape() -> str:
        response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        response.raise_for_status()
        return response.text

    text = wait_for("node exporter to answer", scrape, timeout=20)
    exported = catalog.exposition_metric_names(text)
    wanted = {
        name
        for name in dashboard_metric_names(DASHBOARDS / "host.json")
        if name in catalog.NODE_EXPORTER_METRICS
    }
    assert wanted == set(catalog.NODE_EXPORTER_METRICS)
    assert wanted - exported == set()


@pytest.fixture
def forger() -> Iterator[str]:
    """A stand-in exporter publishing the series of every exporter at once: what a stolen edge
    host could make its node exporter's or model server's port answer."""
    registry = CollectorRegistry()
    for name, labels in (
        ("appliance_feature_psi", {"model": "wine", "feature": "alcohol"}),
        ("appliance_drift_window_rows", {"model": "wine"}),
        ("appliance_backup_last_success_timestamp_seconds", {}),
        ("appliance_made_up_total", {}),
        ("node_load1", {}),
    ):
        gauge = Gauge(name, "a forged series", list(labels), registry=registry)
        (gauge.labels(**labels) if labels else gauge).set(1)
    port = free_port()
    server, _thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.mark.skipif(not PROMETHEUS, reason="prometheus not installed")
@pytest.mark.timeout(90)
def test_each_job_stores_only_the_series_its_exporter_owns(
    tmp_path: Path, processes: list[Process], forger: str
) -> None:
    """The same endpoint scraped as three jobs: as the model server it gives the drift series
    alone, as the controller the backup series alone, as a node exporter no ``appliance_`` series
    at all. A host cannot raise the centre's drift alert, or hide a stale backup, through a port
    whose exporter does not write those series."""
    port = free_port()
    targets = [ScrapeTarget(job, forger) for job in ("serving", "controller", "node-exporter")]
    (tmp_path / "prometheus.yml").write_text(render_prometheus_config(targets, [], None, "1s", "1s"))
    processes.append(
        Process(
            [
                PROMETHEUS,
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            tmp_path / "prometheus.log",
        )
    )

    def stored() -> dict[str, set[str]]:
        response = httpx.get(
            f"http://127.0.0.1:{port}/api/v1/series", params={"match[]": '{__name__!=""}'}, timeout=5
        )
        response.raise_for_status()
        jobs: dict[str, set[str]] = {}
        for series in response.json()["data"]:
            if series["__name__"] != "up" and not series["__name__"].startswith("scrape_"):
                jobs.setdefault(series["job"], set()).add(series["__name__"])
        return jobs

    # two scrapes of every job after all three answered `up`, so what is missing was dropped
    wait_for("every job scraped", lambda: len(active_targets_up(port)) == 3)
    time.sleep(2.5)
    assert stored() == {
        "serving": {"appliance_feature_psi", "appliance_drift_window_rows"},
        "controller": {"appliance_backup_last_success_timestamp_seconds"},
        "node-exporter": {"node_load1"},
    }


def active_targets_up(port: int) -> list[str]:
    response = httpx.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5)
    response.raise_for_status()
    return [t["labels"]["job"] for t in response.json()["data"]["activeTargets"] if t["health"] == "up"]
