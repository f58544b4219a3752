"""Every monitoring file of a stack, from the answers file and the stack's services.

Two entry points share one layout (the engine's ``STATE/config/<service>/``):

- the generators :func:`prometheus_yml`, :func:`alert_rules_yml` and :func:`alertmanager_yml`
  have the signature of the engine's ``config_files`` generators ``(ctx, services) -> str``:
  Prometheus scrapes every service that declares ``metrics``;
- :func:`write_monitoring_configs` writes the same files (and the dashboards) straight from an
  answers file, for installs without the stack engine (fleet roles, a user's own Prometheus).

The rule file is referenced by a relative path, which Prometheus resolves against its config
file's folder, so the same text works on the host and inside a container. The controller's
webhook token is created in the secret store here (if absent) so that Alertmanager's
``credentials_file`` exists before Alertmanager starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.addressing import Addressing, dial_address
from appliance.answers import Answers
from appliance.monitoring.alertmanager_config import render_alertmanager_config
from appliance.monitoring.catalog import SERVING_METRICS, series_names
from appliance.monitoring.dashboards import write_dashboards
from appliance.monitoring.prometheus_config import RemoteWriteTarget, ScrapeTarget, render_prometheus_config
from appliance.monitoring.rules import render_alert_rules
from appliance.monitoring.web_auth import GENERATORS as WEB_CONFIG_GENERATORS
from appliance.monitoring.web_auth import WEB_PASSWORDS, WEB_USER, password_file
from appliance.monitoring.write_gate import BOX_LABEL
from appliance.secrets_store import SecretStore

CONTROLLER_TOKEN_SECRET = "controller_webhook_token"
"""Secret name of the bearer token the controller expects on ``POST /alerts``."""
RULES_FILE = "alert_rules.yml"
"""File name of the alert rules, next to ``prometheus.yml``."""


class _Context(Protocol):
    answers: Answers
    state_dir: Path

    @property
    def secrets(self) -> SecretStore: ...


class _Service(Protocol):
    @property
    def metrics(self) -> str | None: ...


def _reach(answers: Answers, service: str, inside: bool) -> str:
    """How Prometheus or Alertmanager reaches ``service`` (``appliance.addressing``, the rule
    ``{host.NAME}`` renders with in the stack file)."""
    return Addressing(answers.bind_address).host(service, inside)


def _inside(answers: Answers) -> bool:
    return answers.runtime != "local"


def controller_webhook_url(answers: Answers, inside: bool = False) -> str:
    """The controller's Alertmanager webhook (``docs/interfaces.md``: ``POST /alerts``)."""
    return f"http://{_reach(answers, 'controller', inside)}:{answers.ports.controller}/alerts"


def alertmanager_url(answers: Answers, inside: bool = False) -> str:
    """Where Prometheus sends alerts."""
    return f"http://{_reach(answers, 'alertmanager', inside)}:{answers.ports.alertmanager}"


def controller_token_file(state_dir: Path) -> Path:
    """The controller's webhook token file, created (0600) on first use."""
    secrets = SecretStore(state_dir / "secrets")
    secrets.get(CONTROLLER_TOKEN_SECRET)
    return secrets.root / CONTROLLER_TOKEN_SECRET


def monitoring_targets(answers: Answers, extra: list[ScrapeTarget] | None = None) -> list[ScrapeTarget]:
    """What Prometheus scrapes when there is no stack to ask: itself, Alertmanager, node
    exporter, the model server and the controller when those run, plus ``extra`` (serving
    replicas, a DCGM exporter). MLflow is not scraped: it exposes no metrics unless started
    with ``--expose-prometheus``. Job names are the stack's service names."""
    host, ports, parts = dial_address(answers.bind_address), answers.ports, answers.components
    targets = [
        ScrapeTarget("prometheus", f"{host}:{ports.prometheus}"),
        ScrapeTarget("alertmanager", f"{host}:{ports.alertmanager}"),
        ScrapeTarget("node-exporter", f"{host}:{ports.node_exporter}"),
    ]
    if parts.serving:
        targets.append(ScrapeTarget("serving", f"{host}:{ports.serving_metrics}"))
    if parts.controller:
        targets.append(ScrapeTarget("controller", f"{host}:{ports.controller}"))
    return targets + list(extra or [])


def web_auth(ctx: _Context, service: str) -> tuple[str, str] | None:
    """``(user, password file)`` for calling ``service`` when it asks for basic auth (Prometheus,
    Alertmanager, node exporter); the password is generated here if it does not exist yet. The
    file is named by its host path, where a container runtime mounts it too."""
    if service not in WEB_PASSWORDS:
        return None
    ctx.secrets.get(WEB_PASSWORDS[service])
    return WEB_USER, str(password_file(ctx.state_dir, service))


def prometheus_yml(ctx: _Context, services: Mapping[str, _Service]) -> str:
    """``config_files`` generator: scrape every service that declares ``metrics`` (job = service
    name, with the basic auth of those that ask for it), load ``alert_rules.yml`` beside it,
    notify Alertmanager (with its credentials) when the stack runs one."""
    targets = [
        ScrapeTarget(name, svc.metrics, basic_auth=web_auth(ctx, name))
        for name, svc in sorted(services.items())
        if svc.metrics
    ]
    manager = alertmanager_url(ctx.answers, _inside(ctx.answers)) if "alertmanager" in services else None
    mon = ctx.answers.monitoring
    return render_prometheus_config(
        targets,
        [RULES_FILE],
        manager,
        mon.scrape_interval,
        mon.evaluation_interval,
        alertmanager_auth=web_auth(ctx, "alertmanager") if manager else None,
        remote_write=remote_write_target(ctx),
    )


def remote_write_target(ctx: _Context) -> RemoteWriteTarget | None:
    """An edge box's ``monitoring.remote_write``: the central write gate, the box's account and
    the file holding its password, its samples labelled ``edge_box``; only the model server's
    series go (the gate would drop the rest: the box's own Prometheus keeps them)."""
    wanted = ctx.answers.monitoring.remote_write
    if wanted is None:
        return None
    return RemoteWriteTarget(
        wanted.url,
        (wanted.username, str(wanted.password_path(ctx.state_dir))),
        ((BOX_LABEL, wanted.box),),
        str(wanted.ca_file) if wanted.ca_file else None,
        tuple(sorted(series_names(SERVING_METRICS))),
    )


def _rules_text(answers: Answers) -> str:
    mon = answers.monitoring
    # A model's own drift settings (models[].drift_psi_threshold, .drift_min_rows) get its own rules.
    own = {
        m.name: (m.drift_psi_threshold or mon.drift_psi_threshold, m.drift_min_rows or mon.drift_min_rows)
        for m in answers.served_models()
        if m.drift_psi_threshold is not None or m.drift_min_rows is not None
    }
    return render_alert_rules(
        mon.drift_psi_threshold,
        mon.drift_for,
        mon.latency_p99_slo_seconds,
        drift_min_rows=mon.drift_min_rows,
        per_model=own,
    )


def _alertmanager_text(answers: Answers, state_dir: Path, inside: bool = False) -> str:
    return render_alertmanager_config(
        controller_webhook_url(answers, inside),
        str(controller_token_file(state_dir)),
        answers.monitoring.alert_webhook_url,
        group_wait=answers.monitoring.alert_group_wait,
    )


def alert_rules_yml(ctx: _Context, services: Mapping[str, _Service]) -> str:
    """``config_files`` generator: the alert rules with the answers' thresholds."""
    return _rules_text(ctx.answers)


def alertmanager_yml(ctx: _Context, services: Mapping[str, _Service]) -> str:
    """``config_files`` generator: drift alerts to the controller, the rest to the user."""
    return _alertmanager_text(ctx.answers, ctx.state_dir, _inside(ctx.answers))


GENERATORS = {
    "prometheus_yml": prometheus_yml,
    "alert_rules_yml": alert_rules_yml,
    "alertmanager_yml": alertmanager_yml,
    **WEB_CONFIG_GENERATORS,
}
"""Generator name (as used in ``stacks/services.yaml``) to generator."""


@dataclass(frozen=True)
class MonitoringFiles:
    """Paths of the files :func:`write_monitoring_configs` wrote."""

    prometheus_config: Path
    alert_rules: Path
    alertmanager_config: Path
    dashboards_dir: Path
    controller_token_file: Path


def write_monitoring_configs(
    answers: Answers, state_dir: Path, extra_targets: list[ScrapeTarget] | None = None
) -> MonitoringFiles:
    """Write every monitoring file of ``answers`` under ``state_dir/config/`` (``prometheus/``,
    ``alertmanager/``, ``grafana/dashboards/``) and return their paths. Same answers, same
    files: re-running it changes nothing."""
    targets = monitoring_targets(answers, extra_targets)
    config = state_dir / "config"
    prometheus_dir, alertmanager_dir = config / "prometheus", config / "alertmanager"
    prometheus_dir.mkdir(parents=True, exist_ok=True)
    alertmanager_dir.mkdir(parents=True, exist_ok=True)
    prometheus = prometheus_dir / "prometheus.yml"
    mon = answers.monitoring
    prometheus.write_text(
        render_prometheus_config(
            targets, [RULES_FILE], alertmanager_url(answers), mon.scrape_interval, mon.evaluation_interval
        )
    )
    rules = prometheus_dir / RULES_FILE
    rules.write_text(_rules_text(answers))
    alertmanager = alertmanager_dir / "alertmanager.yml"
    alertmanager.write_text(_alertmanager_text(answers, state_dir))
    dashboards = config / "grafana" / "dashboards"
    write_dashboards(dashboards, mon.drift_psi_threshold, mon.latency_p99_slo_seconds)
    return MonitoringFiles(prometheus, rules, alertmanager, dashboards, controller_token_file(state_dir))
