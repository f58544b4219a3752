"""Every monitoring file of a stack, from the answers file, in one call.

This is the engine's entry point: it decides which services Prometheus scrapes (from
``components`` and ``ports``), and writes ``prometheus.yml``, ``alert_rules.yml``,
``alertmanager.yml`` and the Grafana dashboards under ``STATE/monitoring/`` with the thresholds
of the ``monitoring`` section. The controller's webhook token is created in the secret store
here (if absent) so that Alertmanager's ``credentials_file`` exists before it starts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from appliance.answers import Answers
from appliance.monitoring.alertmanager_config import render_alertmanager_config
from appliance.monitoring.dashboards import write_dashboards
from appliance.monitoring.prometheus_config import ScrapeTarget, render_prometheus_config
from appliance.monitoring.rules import render_alert_rules
from appliance.secrets_store import SecretStore

CONTROLLER_TOKEN_SECRET = "controller_webhook_token"
"""Secret name of the bearer token the controller expects on ``POST /alerts``."""


def _host(bind_address: str) -> str:
    """Address to reach a service bound to ``bind_address`` (wildcards mean loopback)."""
    ip = ipaddress.ip_address(bind_address)
    if ip.is_unspecified:
        ip = ipaddress.ip_address("::1" if ip.version == 6 else "127.0.0.1")
    return f"[{ip}]" if ip.version == 6 else str(ip)


def monitoring_targets(answers: Answers, extra: list[ScrapeTarget] | None = None) -> list[ScrapeTarget]:
    """What Prometheus scrapes: itself, Alertmanager, node exporter, the model server and the
    controller when those run, plus ``extra`` (e.g. serving replicas added by the autoscaler,
    or a DCGM exporter). MLflow is not scraped: it exposes no metrics unless started with
    ``--expose-prometheus``."""
    host, ports, parts = _host(answers.bind_address), answers.ports, answers.components
    targets = [
        ScrapeTarget("prometheus", f"{host}:{ports.prometheus}"),
        ScrapeTarget("alertmanager", f"{host}:{ports.alertmanager}"),
        ScrapeTarget("node", f"{host}:{ports.node_exporter}"),
    ]
    if parts.serving:
        targets.append(ScrapeTarget("serving", f"{host}:{ports.serving_metrics}"))
    if parts.controller:
        targets.append(ScrapeTarget("controller", f"{host}:{ports.controller}"))
    return targets + list(extra or [])


@dataclass(frozen=True)
class MonitoringFiles:
    """Paths of the files :func:`write_monitoring_configs` wrote."""

    prometheus_config: Path
    alert_rules: Path
    alertmanager_config: Path
    dashboards_dir: Path
    controller_token_file: Path


def controller_webhook_url(answers: Answers) -> str:
    """The controller's Alertmanager webhook (``docs/interfaces.md``: ``POST /alerts``)."""
    return f"http://{_host(answers.bind_address)}:{answers.ports.controller}/alerts"


def write_monitoring_configs(
    answers: Answers,
    state_dir: Path,
    extra_targets: list[ScrapeTarget] | None = None,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
) -> MonitoringFiles:
    """Write the monitoring configs of ``answers`` under ``state_dir/monitoring`` and return
    their paths. Running it twice with the same answers writes identical files."""
    out = state_dir / "monitoring"
    out.mkdir(parents=True, exist_ok=True)
    mon = answers.monitoring
    secrets = SecretStore(state_dir / "secrets")
    secrets.get(CONTROLLER_TOKEN_SECRET)
    token_file = secrets.root / CONTROLLER_TOKEN_SECRET

    rules = out / "alert_rules.yml"
    rules.write_text(render_alert_rules(mon.drift_psi_threshold, mon.drift_for, mon.latency_p99_slo_seconds))
    alertmanager_url = f"http://{_host(answers.bind_address)}:{answers.ports.alertmanager}"
    prometheus = out / "prometheus.yml"
    prometheus.write_text(
        render_prometheus_config(
            monitoring_targets(answers, extra_targets),
            [str(rules)],
            alertmanager_url,
            scrape_interval,
            evaluation_interval,
        )
    )
    alertmanager = out / "alertmanager.yml"
    alertmanager.write_text(
        render_alertmanager_config(controller_webhook_url(answers), str(token_file), mon.alert_webhook_url)
    )
    dashboards = out / "grafana" / "dashboards"
    write_dashboards(dashboards, mon.drift_psi_threshold, mon.latency_p99_slo_seconds)
    return MonitoringFiles(prometheus, rules, alertmanager, dashboards, token_file)
