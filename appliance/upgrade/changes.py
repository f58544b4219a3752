"""What an upgrade will change, shown before anything is touched.

Each side is described by the same facts (``Facts``): the appliance's version, the Python
packages its interpreter loads, the container image of each service (tag and digest, from that
release's own ``stacks/services.yaml``) and the newest MLflow schema revision its MLflow knows.
``diff`` compares two of them; it is pure, so the unit tests feed it facts directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from appliance.upgrade.releases import Release, probe


@dataclass(frozen=True)
class Facts:
    version: str
    packages: dict[str, str] = field(default_factory=dict)
    images: dict[str, str] = field(default_factory=dict)
    mlflow_schema: str | None = None


@dataclass(frozen=True)
class Change:
    """One component that differs: ``kind`` is appliance, package, image or mlflow-schema."""

    kind: str
    name: str
    before: str | None
    after: str | None

    def line(self) -> str:
        return f"{self.kind:13} {self.name:28} {self.before or '(none)'} -> {self.after or '(none)'}"


def images_of(stack_file: Path) -> dict[str, str]:
    """Each service's image reference in a stack file (services without one are left out)."""
    data = yaml.safe_load(stack_file.read_text()) or {}
    services = data.get("services") or {}
    return {name: str(spec["image"]) for name, spec in services.items() if spec.get("image")}


def facts_of(release: Release) -> Facts:
    found = probe(release)
    packages = found.get("packages")
    head = found.get("mlflow_schema_head")
    return Facts(
        version=str(found["version"]),
        packages=dict(packages) if isinstance(packages, dict) else {},
        images=images_of(release.root / "src" / "stacks" / "services.yaml"),
        mlflow_schema=str(head) if head else None,
    )


def _pairs(kind: str, before: dict[str, str], after: dict[str, str]) -> list[Change]:
    names = sorted(set(before) | set(after))
    return [Change(kind, n, before.get(n), after.get(n)) for n in names if before.get(n) != after.get(n)]


def diff(before: Facts, after: Facts, database_schema: str | None = None) -> list[Change]:
    """Every component that differs between two releases. ``database_schema`` is the revision the
    tracking database is at now; MLflow's migration runs when the new side's head differs."""
    changes: list[Change] = []
    if before.version != after.version:
        changes.append(Change("appliance", "appliance", before.version, after.version))
    changes += _pairs("package", before.packages, after.packages)
    changes += _pairs("image", before.images, after.images)
    current = database_schema or before.mlflow_schema
    if after.mlflow_schema and current != after.mlflow_schema:
        changes.append(Change("mlflow-schema", "tracking database", current, after.mlflow_schema))
    return changes


def needs_migration(changes: list[Change]) -> bool:
    return any(c.kind == "mlflow-schema" for c in changes)
