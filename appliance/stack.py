"""The stack model: services declared in ``stacks/*.yaml``, validated, then rendered for a host.

A service declaration is generic (templates such as ``{ports.mlflow}`` or ``{secret.jupyter_token}``);
rendering it against an AppContext gives a ``RenderedService`` whose ``config_hash`` is what the
planner compares with what is running. Anything that changes what a service would do (command,
environment, generated config files) changes the hash and so recreates the service, but for the
files a service declares it reads again on a signal (``ReloadSpec``): their change reloads it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from appliance.errors import InvalidInputError, Problem


def _stacks_dir() -> Path:
    """The checkout's stacks/ (source tree, editable install), else the copy a wheel installs under
    ``{prefix}/share/mlops-appliance/stacks`` (pyproject.toml's data-files)."""
    checkout = Path(__file__).resolve().parent.parent / "stacks"
    return checkout if checkout.is_dir() else Path(sys.prefix) / "share" / "mlops-appliance" / "stacks"


STACKS_DIR = _stacks_dir()
ROLES_DIR = STACKS_DIR.parent / "roles"
"""The Ansible roles and playbooks of ``appliance cluster``, beside the stacks."""


def config_dir(state_dir: Path, service: str) -> Path:
    """``STATE/config/<service>``: where a service's generated files are written and read from
    (``{config}`` in its templates; a container mounts it at the same path)."""
    return Path(state_dir) / "config" / service


class Spec(BaseModel):
    """Base of the stack declarations: immutable, no unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class HealthCheck(Spec):
    """How the engine knows a service works. Exactly one of http, tcp, command."""

    http: str | None = None
    """URL template that must answer 2xx/3xx (e.g. ``http://{bind}:{ports.mlflow}/health``)."""
    tcp: str | None = None
    """``host:port`` template that must accept a connection."""
    command: list[str] | None = None
    """Command template that must exit 0."""
    ca: str | None = None
    """CA certificate file template an ``https`` probe trusts (the stack's own CA)."""
    auth_user: str | None = None
    """Basic-auth user an ``http`` probe sends, for services that ask for one on every endpoint."""
    auth_password_file: str | None = None
    """File template holding that user's password (``{state}/secrets/NAME``), read at probe time
    so the password is in no rendered service."""
    interval: float = 0.5
    """Seconds between probes while waiting."""
    timeout: float = 3.0
    """Seconds one probe may take."""

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        given = [k for k in ("http", "tcp", "command") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(
                f"a health check needs exactly one of http, tcp, command (got {given or 'none'})"
            )
        return self


class ReloadSpec(Spec):
    """How a running service reads some of its config files again without a restart: on ``SIGHUP``
    (Prometheus and Alertmanager), confirmed by the pair of gauges such a server keeps,
    ``METRIC_successful`` and ``METRIC_success_timestamp_seconds``. A change of these files alone
    reloads the service instead of recreating it (``appliance.runtimes.reloads``)."""

    files: list[str]
    """Names of its ``config_files`` it reads again on the signal."""
    confirm: str
    """URL template of its metrics page (``http://{bind}:{ports.prometheus}/metrics``), asked with
    the health check's credentials."""
    metric: str
    """Prefix of the gauge pair that says the last reload took (``prometheus_config_last_reload``)."""


class ServiceSpec(Spec):
    """One service of the stack, as declared."""

    description: str
    """What the service is, shown in status and the wizard."""
    component: str
    """The answers-file component (``components.<name>``) that switches it on."""
    profiles: list[str]
    """Profiles that include the service."""
    when: dict[str, str] = Field(default_factory=dict)
    """Extra conditions on resolved facts, e.g. ``{store: minio}``."""
    image: str | None = None
    """Container image (container runtimes)."""
    command: list[str]
    """Command template for the local runtime."""
    optional_args: dict[str, str] = Field(default_factory=dict)
    """Flag -> value template, appended to the command only when the value is set (not empty/None),
    e.g. ``{--schedule: "{answers.monitoring.retrain_schedule}"}``."""
    host_dirs: dict[str, str] = Field(default_factory=dict)
    """Host folder template -> path in the container: a host folder the service reads, mounted
    read-only on container runtimes (created when missing), e.g. the user's ``STATE/pipelines``
    for the controller. The local runtime reads the host folder itself."""
    repeated_args: dict[str, str] = Field(default_factory=dict)
    """Flag -> name of a list the render computes (``appliance.render.LISTS``), appended as the
    flag once per item, e.g. ``{--model: served_models}`` gives ``--model NAME=URI`` per model."""
    container_command: list[str] | None = None
    """Command template inside the container; the local command when absent."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment templates."""
    secrets: list[str] = Field(default_factory=list)
    """Secrets generated (``STATE/secrets/NAME``, 0600) before the service starts, for services that
    read them from a file (``{state}/secrets/NAME``) rather than from their environment."""
    data_connection: bool = False
    """Inject the data connection (docs/interfaces.md) into the environment."""
    ports: dict[str, str] = Field(default_factory=dict)
    """Named ports: name -> port template (``{ports.mlflow}``)."""
    publish_on: str | None = None
    """Address template the ports are published on (container runtimes) and checked free on;
    ``bind_address`` when absent. The TLS gateway faces outward through it."""
    volumes: dict[str, str] = Field(default_factory=dict)
    """Named volumes: state sub-folder -> path inside a container."""
    config_files: dict[str, str] = Field(default_factory=dict)
    """Files generated into ``STATE/config/<service>/``: file name -> generator name."""
    reload: ReloadSpec | None = None
    """Config files the running service reads again on a signal (``ReloadSpec``); a change of any
    other file, or of anything else, recreates it."""
    health: HealthCheck
    """Health check."""
    depends_on: list[str] = Field(default_factory=list)
    """Services that must be healthy before this one starts."""
    restart: Literal["always", "on-failure", "no"] = "always"
    """Restart policy."""
    oneshot: bool = False
    """A job that runs to completion once per config (e.g. bucket creation); checked before it acts."""
    gpu: bool = False
    """Wants a GPU when the host has one and the answers allow it."""
    container_user: str | None = None
    """``uid[:gid]`` a container runtime runs it as; the image's own user when absent."""
    url: str | None = None
    """What ``status`` shows as the service's address."""
    metrics: str | None = None
    """``host:port`` template of a Prometheus scrape target."""
    footprint_mb: int = 256
    """Typical memory use, for preflight and the wizard."""

    @model_validator(mode="after")
    def _reload_files_are_config_files(self) -> ServiceSpec:
        if self.reload is not None:
            unknown = sorted(set(self.reload.files) - set(self.config_files))
            if unknown or not self.reload.files:
                raise ValueError(
                    f"reload.files must name some of this service's config_files "
                    f"({', '.join(sorted(self.config_files)) or 'none'}), got {unknown or 'none'}"
                )
            if self.oneshot:
                raise ValueError("a oneshot job runs once per config: it has nothing to reload")
        return self


class StackFile(Spec):
    """A ``stacks/*.yaml`` file."""

    services: dict[str, ServiceSpec]
    """Services by name."""


class RenderedService(BaseModel):
    """A service rendered for this host: everything a runtime needs, nothing left to template."""

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    command: list[str]
    container_command: list[str]
    image: str | None
    env: dict[str, str]
    ports: dict[str, int]
    publish_address: str
    volumes: dict[str, str]
    files: dict[str, str]
    health: HealthCheck
    depends_on: list[str]
    restart: str
    oneshot: bool
    gpu: bool
    url: str | None
    metrics: str | None
    container_user: str | None = None
    host_dirs: dict[str, str] = Field(default_factory=dict)
    """Host folder -> path in the container, mounted read-only (container runtimes)."""
    reload: ReloadSpec | None = None
    """The config files it reads again without a restart, its metrics URL rendered."""

    @property
    def config_hash(self) -> str:
        """Digest of everything that defines the service's behaviour but the contents of the files
        it reads again on a reload (``reload_digests``): a change of those reloads it instead."""
        data = self.model_dump(mode="json")
        if self.reload is None:  # absent: the hashes of services without one stay as they were
            del data["reload"]
        else:
            data["files"] = {k: v for k, v in data["files"].items() if k not in self.reload.files}
        if data["container_user"] is None:  # absent: the hashes of services without one stay as they were
            del data["container_user"]
        if not data["host_dirs"]:  # likewise for services that mount no host folder
            del data["host_dirs"]
        for key in ("auth_user", "auth_password_file"):  # likewise for probes without basic auth
            if data["health"].get(key) is None:
                data["health"].pop(key, None)
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @property
    def reload_digests(self) -> dict[str, str]:
        """Digest of each file it reads again on a reload (none without ``reload``)."""
        names = self.reload.files if self.reload else []
        return {n: hashlib.sha256(self.files[n].encode()).hexdigest()[:16] for n in names if n in self.files}


def load_stack(path: Path | None = None) -> dict[str, ServiceSpec]:
    """Read and validate a stack file (default ``stacks/services.yaml``)."""
    path = path or STACKS_DIR / "services.yaml"
    try:
        data = yaml.safe_load(path.read_text())
        stack = StackFile.model_validate(data)
    except ValidationError as err:
        problems = [Problem(".".join(str(p) for p in e["loc"]), e["msg"]) for e in err.errors()]
        raise InvalidInputError(str(path), problems) from err
    names = set(stack.services)
    problems = [
        Problem(f"services.{name}.depends_on", f"unknown service {dep!r}")
        for name, svc in stack.services.items()
        for dep in svc.depends_on
        if dep not in names
    ]
    if problems:
        raise InvalidInputError(str(path), problems)
    return stack.services
