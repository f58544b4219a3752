"""Who runs what: the answers' ``cluster`` section as groups with their defaults, and the host map
the addressing rule (``appliance.addressing``) renders every URL with.

A group nobody is in falls to the first control host (the first host when none is in ``control``),
so one host is the all-in-one case of the same plan. A service runs on the hosts of its group:
the model server on every ``serving`` and ``edge`` host, node exporter on every host, the rest on
the first host of theirs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from appliance.addressing import HostMap
from appliance.answers import Cluster, ClusterHost
from appliance.errors import ApplianceError

GROUPS = ("control", "storage", "serving", "train_workers", "monitoring", "gateway", "edge")
SERVICE_GROUP = {
    "serving": ("serving", "edge"),
    "prometheus": ("monitoring",),
    "write-gate": ("monitoring",),
    "alertmanager": ("monitoring",),
    "grafana": ("monitoring",),
    "gateway": ("gateway",),
    "seaweedfs-volume": ("storage",),
    # Stateless servers sharing the first control host's PostgreSQL (tracking and accounts) and
    # the S3 artifact store, all behind the gateway's mlflow upstream.
    "mlflow": ("control",),
}
"""The group(s) whose hosts run a service; a service not listed runs on the first control host."""
EVERY_HOST = ("node-exporter",)
"""Services every host runs (each host's own metrics)."""
ROLE_OF = {
    "mlflow": "mlflow",
    "mlflow-users": "mlflow",
    "serving": "serving",
    "controller": "controller",
    "workbench": "controller",
    "prometheus": "monitoring",
    "write-gate": "monitoring",
    "alertmanager": "monitoring",
    "node-exporter": "monitoring",
    "grafana": "monitoring",
    "gateway": "gateway",
}
"""The role (``roles/appliance_<role>``) that installs a service; object-store services go to
``seaweedfs``."""


def role_of(service: str) -> str:
    return ROLE_OF.get(
        service, "seaweedfs" if service in ("minio", "buckets") or "seaweed" in service else "controller"
    )


def units_by_name(host_vars: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """A host's rendered units by name, across its roles' ``appliance_<role>_units`` lists (as
    ``units.render_hosts`` groups them), in the stack file's order: dependencies first."""
    found: dict[str, dict[str, Any]] = {}
    for key, value in host_vars.items():
        if key.startswith("appliance_") and key.endswith("_units") and isinstance(value, list):
            for unit in value:
                found[str(unit["name"])] = dict(unit)
    return found


@dataclass(frozen=True)
class Inventory:
    """The hosts and their effective groups (empty groups filled with the first control host)."""

    cluster: Cluster

    @property
    def hosts(self) -> dict[str, ClusterHost]:
        return {h.name: h for h in self.cluster.hosts}

    @property
    def first_control(self) -> str:
        control = [h.name for h in self.cluster.hosts if "control" in h.groups]
        return (control or [self.cluster.hosts[0].name])[0]

    def group(self, name: str) -> list[str]:
        """Hosts in ``name`` (the first control host when nobody is)."""
        members = [h.name for h in self.cluster.hosts if name in h.groups]
        if name == "edge":  # edge boxes are only ever the hosts named so
            return members
        return members or [self.first_control]

    def groups(self) -> dict[str, list[str]]:
        return {g: self.group(g) for g in GROUPS}

    def hosts_of(self, service: str) -> list[str]:
        """The hosts that run ``service``."""
        if service in EVERY_HOST:
            return list(self.hosts)
        groups = SERVICE_GROUP.get(service)
        if groups is None:
            return [self.first_control]
        found: list[str] = []
        for group in groups:
            found += [h for h in self.group(group) if h not in found]
        return found

    def host_map(self, services: list[str], here: str | None = None) -> HostMap:
        """Addresses and the host each service is reached at from ``here``: ``here`` itself when
        it runs one of the service's replicas (every host runs node exporter), else the
        service's first host."""

        def reached_at(service: str) -> str:
            hosts = self.hosts_of(service)
            return here if here in hosts else hosts[0]

        return HostMap(
            addresses={h.name: h.address for h in self.cluster.hosts},
            # a service every host runs (node exporter) is its own host's, health check included
            services={s: here if s in EVERY_HOST and here else reached_at(s) for s in services},
            default=self.first_control,
        )

    def knowing(self, joining: list[str]) -> list[str]:
        """The hosts whose configuration lists ``joining``, hosts new to the cluster: the
        monitoring host (Prometheus's targets), the gateway (its serving members, when one
        joining serves) and, for a new edge host, the first control host (its MLflow account).
        ``up --limit NEW`` runs there too, or the new host would run unseen and unreached."""
        if not joining:
            return []
        found = list(self.hosts_of("prometheus"))
        if any(h in self.hosts_of("serving") for h in joining):
            found += self.hosts_of("gateway")
        if any(h in self.group("edge") for h in joining):
            found.append(self.first_control)
        return [h for h in dict.fromkeys(found) if h not in joining]

    def check_limit(self, limit: list[str]) -> None:
        unknown = [h for h in limit if h not in self.hosts]
        if unknown:
            raise ApplianceError(
                f"--limit names hosts not in cluster.hosts: {', '.join(unknown)}",
                fix=f"use one of: {', '.join(self.hosts)}",
            )


def this_host() -> dict[str, object]:
    """This machine as the first control host of a new cluster section (``appliance init
    --cluster``): its name (made to fit the name rule) and the address it reaches others from."""
    import re
    import socket

    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip(".-_") or "control1"
    address = "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
            address = probe.getsockname()[0]
        except OSError:
            pass
    return {"name": name, "address": address, "groups": ["control"]}
