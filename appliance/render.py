"""From answers + stack declarations to the desired services for this host.

Selection (profile, component switches, ``when`` facts) and templating happen here, in one place,
so the local and container runtimes receive identical, fully rendered services.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.addressing import dial_address
from appliance.context import (
    BUNDLED_KINDS,
    CONTAINER_STATE_DIR,
    GRAFANA_SERVER,
    AppContext,
    find_grafana,
    find_minio,
    find_sbin,
    find_weed,
)
from appliance.errors import ApplianceError
from appliance.gateway import gateway_address, gateway_url
from appliance.mlflow_auth import edge_passwords
from appliance.monitoring.web_auth import receiver_flag
from appliance.objectstore.identities import identity_of
from appliance.stack import STACKS_DIR, RenderedService, ServiceSpec, config_dir, load_stack
from appliance.upgrade.releases import running_python

PROJECT_DIR = STACKS_DIR.parent
CONTAINER_PYTHON = "/opt/appliance/bin/python"
"""The appliance images' Python (a virtualenv, images/*/Containerfile)."""
CONTAINER_MLFLOW_DIR = "/var/lib/mlflow"
"""The mlflow image's data folder (the ``mlflow`` volume)."""


class Deferred:
    """A template value made only when a template formats it: every service's templates get every
    name, and one service uses each of these (a program's path, the edge boxes' passwords)."""

    def __init__(self, make: Callable[[], str]) -> None:
        self._make = make

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __str__(self) -> str:
        return self._make()


def installed(find: Callable[[], str | None], name: str) -> Deferred:
    """``{minio}``, ``{grafana}``, ``{nginx}``: a program's path on this host, else its bare name."""
    return Deferred(lambda: find() or name)


class Hosts:
    """``{host.NAME}``: how one service reaches the service NAME (the bind address on the host,
    the service name on the stack network inside a container)."""

    def __init__(self, ctx: AppContext, inside: bool) -> None:
        self._ctx, self._inside = ctx, inside

    def __getattr__(self, name: str) -> str:
        if name.startswith("__"):
            raise AttributeError(name)
        return self._ctx.host_of(name, self._inside)

    def __getitem__(self, name: str) -> str:
        return self._ctx.host_of(name, self._inside)


@dataclass(frozen=True)
class TemplateVars:
    """Names a stack template may use, e.g. ``{ports.mlflow}`` or ``{secret.jupyter_token}``.

    ``inside``: the values as seen from inside a container (``{bind}`` = ``0.0.0.0``, other
    services by name); otherwise as seen from the host."""

    ctx: AppContext
    inside: bool = False
    chosen: frozenset[str] = frozenset()
    """The services in the stack (what the gateway fronts)."""

    def as_dict(self, service: str) -> dict[str, Any]:
        ctx = self.ctx
        state = Path(CONTAINER_STATE_DIR) if self.inside else ctx.state_dir
        python = Path(CONTAINER_PYTHON) if self.inside else running_python(ctx.state_dir)
        return {
            "bind": "0.0.0.0" if self.inside else ctx.answers.bind_address,
            "host": Hosts(ctx, self.inside),
            "ports": ctx.answers.ports,
            "answers": ctx.answers,
            "secret": ctx.secrets,
            "state": state,
            "data": state / "data",
            # mounted read-only at the host's path (see containers_common)
            "config": config_dir(ctx.state_dir, service),
            "logs": state / "logs",
            "python": python,
            "bin": python.parent,
            "project": PROJECT_DIR,
            "stacks": STACKS_DIR,
            "store": ctx.answers.object_store,
            "store_kind": ctx.store_kind,
            "minio": installed(lambda: find_minio(ctx.answers), "minio"),
            "weed": installed(find_weed, "weed"),
            # The data connection's S3 endpoint as seen from here (host or container), if any.
            "s3_endpoint": ctx.s3_endpoint_from(self.inside) or "",
            "grafana": installed(find_grafana, GRAFANA_SERVER),
            "mlflow_artifacts": _mlflow_artifacts(ctx, self.inside),
            "mlflow_uri": ctx.mlflow_uri_from(self.inside),
            "nginx": installed(lambda: find_sbin("nginx"), "nginx"),
            "gateway_address": "0.0.0.0" if self.inside else gateway_address(ctx),
            "gateway_host": dial_address(gateway_address(ctx)),
            "gateway_url": gateway_url(ctx, self.chosen),
            "edge_passwords": Deferred(lambda: edge_passwords(ctx.answers.edge_box_names, ctx.secrets)),
            "remote_write_receiver": receiver_flag(ctx),
        }


def _mlflow_artifacts(ctx: AppContext, inside: bool = False) -> str:
    if ctx.store_is_s3:
        return f"s3://{ctx.answers.object_store.mlflow_bucket}"
    if inside:
        return f"{CONTAINER_MLFLOW_DIR}/artifacts"
    return str(ctx.state_dir / "mlflow" / "artifacts")


def facts(ctx: AppContext) -> dict[str, str]:
    """Resolved facts that ``when:`` conditions test."""
    return {
        "store": ctx.store_kind,
        # SeaweedFS or MinIO: the stack runs the store, so also its buckets job.
        "bundled_store": "yes" if ctx.store_kind in BUNDLED_KINDS else "no",
        "profile": ctx.answers.profile,
        "tls": "on" if ctx.answers.tls.enabled else "off",
        "monitoring": "on" if ctx.answers.components.monitoring else "off",
        # Standalone edge boxes send their samples here: the write gate runs in front of Prometheus.
        "edge_writers": "yes" if ctx.answers.edge_boxes else "no",
        # Containers run Grafana's image; host processes need Grafana installed (its Debian package).
        "grafana": "found" if ctx.in_containers or find_grafana() else "absent",
        # A cluster with storage hosts: SeaweedFS's volume servers run there (appliance.cluster.units).
        "storage_hosts": "yes" if ctx.here is not None and _storage_hosts(ctx) else "no",
    }


def _storage_hosts(ctx: AppContext) -> bool:
    cluster = ctx.answers.cluster
    return cluster is not None and any("storage" in h.groups for h in cluster.hosts)


def selected(ctx: AppContext, specs: dict[str, ServiceSpec]) -> dict[str, ServiceSpec]:
    """The services this answers file asks for."""
    known = facts(ctx)
    components = ctx.answers.components.model_dump()
    chosen: dict[str, ServiceSpec] = {}
    for name, spec in specs.items():
        if ctx.answers.profile != "custom" and ctx.answers.profile not in spec.profiles:
            continue
        if not components.get(spec.component, True):
            continue
        if any(known.get(key) != value for key, value in spec.when.items()):
            continue
        chosen[name] = spec
    return chosen


def served_models(ctx: AppContext) -> list[str]:
    """``NAME=URI`` of every model the stack serves (``models``, or the ``serving.model``
    shorthand), for the model server's repeated ``--model``."""
    return [f"{m.name}={m.served_uri}" for m in ctx.answers.served_models()]


LISTS: dict[str, Callable[[AppContext], list[str]]] = {"served_models": served_models}
"""Lists a stack's ``repeated_args`` may expand into one flag per item."""


def _fmt(template: str, variables: dict[str, Any], where: str) -> str:
    try:
        return string.Formatter().vformat(template, (), variables)
    except (KeyError, AttributeError, IndexError) as err:
        raise ApplianceError(
            f"stack template {template!r} in {where} uses an unknown name: {err}",
            fix="correct the template in stacks/services.yaml",
        ) from err


def render_service(ctx: AppContext, name: str, spec: ServiceSpec, chosen: set[str]) -> RenderedService:
    """Render one service's templates (config files are added by ``render_stack``).

    On a container runtime, what the service itself reads (container command, env, its metrics
    target, which Prometheus scrapes from its own container) is rendered as seen from inside a
    container; health probes and URLs stay as seen from the host, where the ports are published."""
    v = TemplateVars(ctx, chosen=frozenset(chosen)).as_dict(name)
    inside = ctx.in_containers
    c = TemplateVars(ctx, inside=True, chosen=frozenset(chosen)).as_dict(name) if inside else v
    for secret in spec.secrets:
        ctx.secrets.get(secret)
    env = {k: _fmt(t, c, f"{name}.env.{k}") for k, t in spec.env.items()}
    if spec.data_connection:
        identity = identity_of(name)
        env = ctx.connection_env(inside=inside, mlflow_account=False, identity=identity) | env
    extra: list[str] = []
    for flag, template in spec.optional_args.items():
        value = _fmt(template, v, f"{name}.optional_args.{flag}")
        if value not in ("", "None"):
            extra += [flag, value]
    for flag, list_name in spec.repeated_args.items():
        if list_name not in LISTS:
            raise ApplianceError(
                f"service {name!r} repeats {flag} over {list_name!r}, which is not a list the render knows",
                fix=f"use one of: {', '.join(sorted(LISTS))}",
            )
        for item in LISTS[list_name](ctx):
            extra += [flag, item]
    command = [_fmt(a, v, f"{name}.command") for a in spec.command] + extra
    container = [_fmt(a, c, f"{name}.container_command") for a in spec.container_command or spec.command]
    container += extra
    # Health probes and URLs are clients: their {bind} is where a client dials the service
    # (loopback for a wildcard bind, the service's host in a cluster), never 0.0.0.0.
    d = v | {"bind": ctx.host_of(name)}
    health = spec.health.model_copy(
        update={
            "http": spec.health.http and _fmt(spec.health.http, d, f"{name}.health"),
            "tcp": spec.health.tcp and _fmt(spec.health.tcp, d, f"{name}.health"),
            "command": spec.health.command and [_fmt(a, d, f"{name}.health") for a in spec.health.command],
            "ca": spec.health.ca and _fmt(spec.health.ca, v, f"{name}.health"),
            "auth_password_file": spec.health.auth_password_file
            and _fmt(spec.health.auth_password_file, v, f"{name}.health"),
        }
    )
    return RenderedService(
        name=name,
        description=spec.description,
        command=command,
        container_command=container,
        image=spec.image,
        env=env,
        ports={k: int(_fmt(t, v, f"{name}.ports")) for k, t in spec.ports.items()},
        publish_address=_fmt(spec.publish_on or "{bind}", v, f"{name}.publish_on"),
        volumes=dict(spec.volumes),
        host_dirs={_fmt(h, v, f"{name}.host_dirs"): inside for h, inside in spec.host_dirs.items()},
        files={},
        health=health,
        depends_on=[d for d in spec.depends_on if d in chosen],
        restart=spec.restart,
        oneshot=spec.oneshot,
        gpu=spec.gpu,
        container_user=spec.container_user,
        url=spec.url and _fmt(spec.url, d, f"{name}.url"),
        metrics=spec.metrics and _fmt(spec.metrics, c, f"{name}.metrics"),
        reload=spec.reload
        and spec.reload.model_copy(update={"confirm": _fmt(spec.reload.confirm, d, f"{name}.reload")}),
    )


def render_stack(ctx: AppContext, stack_file: Path | None = None) -> dict[str, RenderedService]:
    """Every desired service, rendered, with its generated config files."""
    from appliance.config_files import GENERATORS

    specs = selected(ctx, load_stack(stack_file))
    services = {name: render_service(ctx, name, spec, set(specs)) for name, spec in specs.items()}
    rendered: dict[str, RenderedService] = {}
    for name, svc in services.items():
        files = {}
        for file_name, generator in specs[name].config_files.items():
            if generator not in GENERATORS:
                raise ApplianceError(
                    f"service {name!r} asks for config generator {generator!r}, which does not exist",
                    fix=f"use one of: {', '.join(sorted(GENERATORS))}",
                )
            files[file_name] = GENERATORS[generator](ctx, services)
        rendered[name] = svc.model_copy(update={"files": files})
    return rendered
