"""``prometheus.yml`` from the list of services that expose metrics.

Targets come from the stack (one per service with a metrics endpoint), so adding a serving
replica or turning a component off changes the scrape config without anyone editing YAML.
Targets that share a job (serving replicas) become one job with several addresses, which is
what lets dashboards and alerts aggregate ``by (model)`` across replicas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml

from appliance.monitoring.catalog import APPLIANCE_PREFIX, OWN_JOB_METRICS, series_names
from appliance.monitoring.durations import check_duration

_JOB = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_-]*$")
_ADDRESS = re.compile(r"^[^\s/:]+:\d{1,5}$|^\[[0-9a-fA-F:.]+\]:\d{1,5}$")


@dataclass(frozen=True)
class ScrapeTarget:
    """One metrics endpoint Prometheus scrapes."""

    job: str
    """Job label, e.g. ``serving``; targets with the same job are scraped as one job."""
    address: str
    """``host:port`` of the endpoint."""
    metrics_path: str = "/metrics"
    """HTTP path of the metrics."""
    scheme: str = "http"
    """``http`` or ``https``."""
    basic_auth: tuple[str, str] | None = None
    """``(user, password file)`` when the endpoint asks for basic auth (``--web.config.file``)."""

    def __post_init__(self) -> None:
        if not _JOB.match(self.job):
            raise ValueError(f"scrape job {self.job!r} must be letters, digits, '_' or '-'")
        if not _ADDRESS.match(self.address) or not 0 < int(self.address.rsplit(":", 1)[1]) < 65536:
            raise ValueError(f"scrape target {self.address!r} of job {self.job!r} must be host:port")
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scrape scheme {self.scheme!r} of job {self.job!r} must be http or https")
        if not self.metrics_path.startswith("/"):
            raise ValueError(f"metrics path {self.metrics_path!r} of job {self.job!r} must start with /")


@dataclass(frozen=True)
class RemoteWriteTarget:
    """Another Prometheus's remote-write receiver this one sends every sample to (an edge box's
    to the central one), as ``basic_auth`` user and password file, and the labels that tell this
    sender's series apart there."""

    url: str
    auth: tuple[str, str]
    labels: tuple[tuple[str, str], ...]
    ca_file: str | None = None
    keep: tuple[str, ...] = ()
    """Series names sent (``write_relabel_configs``); empty: every series."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"remote write URL {self.url!r} must look like http://host:9095/api/v1/write")
        for name, _ in self.labels:
            if not re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", name):
                raise ValueError(f"external label {name!r} must be letters, digits and '_'")

    def config(self) -> dict[str, object]:
        entry: dict[str, object] = {"url": self.url, "basic_auth": _basic_auth(self.auth)}
        if self.keep:
            entry["write_relabel_configs"] = [_names_rule(self.keep, "keep")]
        if self.ca_file:
            entry["tls_config"] = {"ca_file": self.ca_file}
        return entry


def _names_rule(names: Iterable[str], action: str) -> dict[str, object]:
    """A relabel rule that keeps or drops the series named (``regex`` is anchored by Prometheus)."""
    return {
        "source_labels": ["__name__"],
        "regex": "|".join(re.escape(n) for n in sorted(names)),
        "action": action,
    }


def provenance_rules(job: str) -> list[dict[str, object]]:
    """``metric_relabel_configs`` of a scrape job: the appliance's own exporters
    (``catalog.OWN_JOB_METRICS``) keep only their families' series; every other job drops the
    ``appliance_`` series, which only those write. A series with the names the centre's alerts
    and the retrain trigger read so arrives only from the exporter that owns it."""
    own = OWN_JOB_METRICS.get(job)
    if own is not None:
        return [_names_rule(series_names(own), "keep")]
    return [{"source_labels": ["__name__"], "regex": f"{re.escape(APPLIANCE_PREFIX)}.*", "action": "drop"}]


def _scrape_configs(targets: list[ScrapeTarget]) -> list[dict[str, object]]:
    jobs: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    configs: list[dict[str, object]] = []
    for job, members in jobs.items():
        first = members[0]
        for other in members[1:]:
            if (other.metrics_path, other.scheme, other.basic_auth) != (
                first.metrics_path,
                first.scheme,
                first.basic_auth,
            ):
                raise ValueError(f"targets of job {job!r} disagree on metrics path, scheme or basic auth")
        addresses = list(dict.fromkeys(t.address for t in members))
        config: dict[str, object] = {
            "job_name": job,
            "metrics_path": first.metrics_path,
            "scheme": first.scheme,
        }
        if first.basic_auth:
            config["basic_auth"] = _basic_auth(first.basic_auth)
        config["metric_relabel_configs"] = provenance_rules(job)
        configs.append(config | {"static_configs": [{"targets": addresses}]})
    return configs


def _basic_auth(auth: tuple[str, str]) -> dict[str, str]:
    user, password_file = auth
    if not user or not password_file:
        raise ValueError("basic auth needs a user and the file holding its password")
    return {"username": user, "password_file": password_file}


def _alerting(alertmanager_url: str, auth: tuple[str, str] | None = None) -> dict[str, object]:
    parts = urlsplit(alertmanager_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"alertmanager URL {alertmanager_url!r} must look like http://host:port")
    manager: dict[str, object] = {"scheme": parts.scheme, "static_configs": [{"targets": [parts.netloc]}]}
    if parts.path.strip("/"):
        manager["path_prefix"] = parts.path
    if auth:
        manager["basic_auth"] = _basic_auth(auth)
    return {"alertmanagers": [manager]}


def render_prometheus_config(
    targets: list[ScrapeTarget],
    rule_files: list[str],
    alertmanager_url: str | None,
    scrape_interval: str = "15s",
    evaluation_interval: str = "15s",
    alertmanager_auth: tuple[str, str] | None = None,
    remote_write: RemoteWriteTarget | None = None,
) -> str:
    """The text of ``prometheus.yml``: one scrape job per distinct ``job``, the rule files, and
    the Alertmanager to notify (none when ``alertmanager_url`` is ``None``; with basic auth
    ``(user, password file)`` when ``alertmanager_auth`` is given); with ``remote_write``, every
    sample is also sent there, labelled with the sender's external labels."""
    settings: dict[str, object] = {
        "scrape_interval": check_duration(scrape_interval, "scrape_interval"),
        "evaluation_interval": check_duration(evaluation_interval, "evaluation_interval"),
    }
    if remote_write is not None:
        settings["external_labels"] = dict(remote_write.labels)
    config: dict[str, object] = {"global": settings, "rule_files": list(rule_files)}
    if remote_write is not None:
        config["remote_write"] = [remote_write.config()]
    if alertmanager_url is not None:
        config["alerting"] = _alerting(alertmanager_url, alertmanager_auth)
    config["scrape_configs"] = _scrape_configs(targets)
    return "# Generated by the appliance from the answers file; edits are overwritten.\n" + yaml.safe_dump(
        config, sort_keys=False, default_flow_style=False
    )
