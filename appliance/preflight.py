"""Preflight: can this host run the chosen stack? Each check passes, warns or fails with a fix.

Checks read the host only; they never change it. Blocking failures stop ``up`` before anything
starts, so a busy port or a missing binary leaves nothing half-applied.
"""

from __future__ import annotations

import ipaddress
import os
import platform
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from appliance.answers import Ports
from appliance.context import AppContext
from appliance.mlflow_auth import EDGE_PREFIX, READER_USER, SECRETS, edge_secret
from appliance.runtimes.base import ObservedService
from appliance.stack import RenderedService

Status = Literal["pass", "warn", "fail"]
APT_HINTS = {
    "prometheus": "apt-get install prometheus",
    "prometheus-node-exporter": "apt-get install prometheus-node-exporter",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager",
    "nginx": "apt-get install nginx (the TLS gateway)",
    "minio": "install the MinIO server binary (or set object_store.kind: filesystem)",
}


@dataclass(frozen=True)
class Check:
    """The outcome of one preflight check."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def _os() -> Check:
    if platform.system() != "Linux":
        return Check("os", "fail", f"{platform.system()} is not supported", "use Debian 12+ or Ubuntu 22.04+")
    info = platform.freedesktop_os_release() if hasattr(platform, "freedesktop_os_release") else {}
    name = info.get("PRETTY_NAME", "Linux")
    known = info.get("ID") in ("debian", "ubuntu") or "debian" in info.get("ID_LIKE", "")
    return Check("os", "pass" if known else "warn", name, "" if known else "tested on Debian and Ubuntu only")


def _python() -> Check:
    ok = sys.version_info >= (3, 11)
    return Check(
        "python", "pass" if ok else "fail", platform.python_version(), "" if ok else "use Python 3.11+"
    )


def _cpu() -> Check:
    count = os.cpu_count() or 1
    status: Status = "pass" if count >= 2 else "warn"
    return Check("cpu", status, f"{count} cores", "" if count >= 2 else "2 or more cores recommended")


def _memory(desired: Mapping[str, RenderedService], footprints: Mapping[str, int]) -> Check:
    need = sum(footprints.get(n, 256) for n in desired)
    try:
        pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return Check("memory", "warn", "cannot read memory size")
    have_mb, total_mb = pages // 2**20, total // 2**20
    detail = f"{have_mb} MiB free of {total_mb} MiB; the stack needs about {need} MiB"
    if total_mb < need:
        return Check("memory", "fail", detail, "choose the edge profile or switch components off")
    return Check(
        "memory", "pass" if have_mb >= need else "warn", detail, "" if have_mb >= need else "free memory"
    )


def _disk(state_dir: Path) -> Check:
    probe = state_dir
    while not probe.exists():
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 2**30
    detail = f"{free_gb:.1f} GiB free at {probe}"
    if free_gb < 2:
        return Check("disk", "fail", detail, "free disk space or choose another --state-dir")
    return Check(
        "disk", "pass" if free_gb >= 10 else "warn", detail, "" if free_gb >= 10 else "10 GiB+ advised"
    )


def port_free(host: str, port: int) -> bool:
    """Whether ``host:port`` can be bound now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _ports(
    ctx: AppContext, desired: Mapping[str, RenderedService], observed: Mapping[str, ObservedService]
) -> list[Check]:
    checks = []
    for name, svc in desired.items():
        seen = observed.get(name)
        # A running service of ours holds its own ports; a changed one is stopped before its
        # replacement starts, so its ports count as free for it.
        ours = seen is not None and seen.running
        for label, port in svc.ports.items():
            if ours or port_free(svc.publish_address, port):
                checks.append(Check(f"port {port}", "pass", f"{name} {label}: free or already ours"))
            else:
                checks.append(
                    Check(
                        f"port {port}",
                        "fail",
                        f"{name} {label}: {port} is in use by another program",
                        "stop that program or set another port in the answers file",
                    )
                )
    return checks


def _binaries(desired: Mapping[str, RenderedService]) -> list[Check]:
    checks = []
    for name, svc in desired.items():
        exe = svc.command[0]
        found = shutil.which(exe) if "/" not in exe else (exe if os.access(exe, os.X_OK) else None)
        base = Path(exe).name
        if found:
            checks.append(Check(f"binary {base}", "pass", f"{name}: {found}"))
        else:
            hint = APT_HINTS.get(base, f"install {base}")
            checks.append(Check(f"binary {base}", "fail", f"{name} needs {exe}, which is missing", hint))
    return checks


def _gpu(ctx: AppContext) -> Check:
    mode = ctx.answers.gpu.mode
    smi = shutil.which("nvidia-smi")
    devices = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    if smi and devices:
        return Check("gpu", "pass", f"NVIDIA driver present ({len(devices)} device(s))")
    if mode == "on":
        return Check(
            "gpu",
            "fail",
            "gpu.mode is 'on' but no NVIDIA GPU/driver was found",
            "install the NVIDIA driver (nvidia-smi) or set gpu.mode: auto",
        )
    return Check("gpu", "pass", "no NVIDIA GPU found: services run on the CPU")


def _runtime(ctx: AppContext) -> Check:
    exe = Path(sys.executable).parent / "supervisord"
    if exe.exists() or shutil.which("supervisord"):
        return Check("runtime", "pass", "local: supervisord available")
    return Check(
        "runtime", "fail", "local runtime needs supervisord", "pip install supervisor (make up does)"
    )


def _runtime_checks(ctx: AppContext, desired: Mapping[str, RenderedService]) -> list[Check]:
    """What runs the services: supervisord and each service's binary on this host, or for podman
    and docker the engine, each service's image (holding this appliance's code) and GPU access."""
    if ctx.answers.runtime == "local":
        return [_runtime(ctx), *_binaries(desired)]
    # imported here: the container checks build on this module's Check
    from appliance.images.preflight import container_checks

    return container_checks(ctx, desired)


def _model_source(
    ctx: AppContext,
    desired: Mapping[str, RenderedService],
    observed: Mapping[str, ObservedService] | None = None,
) -> list[Check]:
    """A registry URI needs a registry. The edge profile runs none, so a stack serving from one
    it cannot reach would start, never turn ready and end in a health timeout: it fails here,
    before anything starts. In a cluster MLflow may run on the control host instead. An
    ``s3://`` URI needs an S3 store (``_no_s3_store``)."""
    served = [m.served_uri for m in ctx.answers.served_models()]
    in_s3 = [uri for uri in served if uri.startswith("s3://")]
    s3 = [_no_s3_store(ctx, in_s3)] if "serving" in desired and in_s3 and not ctx.store_is_s3 else []
    return s3 + _registry_source(ctx, desired, observed, [u for u in served if u.startswith("models:/")])


def _registry_source(
    ctx: AppContext,
    desired: Mapping[str, RenderedService],
    observed: Mapping[str, ObservedService] | None,
    registry: list[str],
) -> list[Check]:
    """The ``models:/`` URIs' registry: the stack's own MLflow, a cluster's, or a central one."""
    if "serving" in desired and registry and ctx.answers.serving.registry is not None:
        return _edge_registry(ctx, observed or {})
    if "serving" not in desired or not registry or "mlflow" in desired:
        return []
    model = ", ".join(registry)
    if ctx.hosts is not None and ctx.hosts.host_of("mlflow") not in (None, ctx.here):
        return [Check("serving model", "pass", f"{model} from the cluster's MLflow at {ctx.mlflow_uri}")]
    why = "the edge profile" if ctx.answers.profile == "edge" else "this stack (components.mlflow is off)"
    return [
        Check(
            "serving model",
            "fail",
            f"the stack serves {model} from the MLflow registry, which {why} does not run: "
            "the model server would never turn ready",
            "set serving.model (or models[].uri) to a model folder, an .onnx file or an s3:// URI "
            "(of the stack's S3 store: object_store.kind), "
            "or run this host in a cluster (a cluster: section) whose control host runs MLflow, "
            "or follow a central registry (serving.registry.url; docs/cluster.md, Edge boxes)",
        )
    ]


def _no_s3_store(ctx: AppContext, uris: list[str]) -> Check:
    """An ``s3://`` model on a stack whose data connection is a folder: the model server gets no
    endpoint and no key, so it reads with boto3's own (AWS, credentials from the environment or
    an instance role). That is a setup of its own (a box on EC2), so a warning, not a refusal;
    otherwise the server would never turn ready."""
    kind = ctx.answers.object_store.kind
    why = "the edge profile runs no store unless asked" if kind == "auto" else f"object_store.kind is {kind}"
    return Check(
        "serving model",
        "warn",
        f"the stack serves {', '.join(uris)} from S3, but its data connection is a folder ({why}): "
        "the model server will read it from AWS with the credentials of its environment, if any",
        "set object_store.kind: seaweedfs to run a store on this host (and put the model there), or "
        "s3 with object_store.endpoint for a store elsewhere; or set serving.model (or models[].uri) "
        "to a model folder or an .onnx file",
    )


REGISTRY_PASSWORD = SECRETS[READER_USER]
"""The secret an edge box reads the central registry with (a copy of the central one), and sends
its samples to the central Prometheus with (``monitoring.remote_write``)."""


def central_secret(account: str) -> str:
    """The central stack's secret holding ``account``'s password: a box's own account
    (``appliance-edge-NAME``, the central answers' ``edge_boxes``) or the shared reader's."""
    if account.startswith(EDGE_PREFIX):
        return edge_secret(account.removeprefix(EDGE_PREFIX))
    return REGISTRY_PASSWORD


def _copy_fix(path: Path, account: str) -> str:
    return (
        f"copy the central stack's STATE/secrets/{central_secret(account)} (the password of its "
        f"{account} account) to {path} with mode 0600"
    )


def _credential(what: str, path: Path, account: str, ca_file: Path | None, key: str) -> Check | None:
    """The failed check (``WHAT credential`` or ``WHAT CA``) when the file holding ``account``'s
    password (a copy of the central stack's secret) is missing, empty or readable by others, or
    the CA file named at ``KEY.ca_file`` does not exist; None when both are in place."""
    name = f"{what} credential"
    if not path.is_file() or not path.read_text().strip():
        return Check(name, "fail", f"no password for {account} at {path}", _copy_fix(path, account))
    if path.stat().st_mode & 0o077:
        return Check(name, "fail", f"{path} is readable by others", f"chmod 600 {path}")
    if ca_file is not None and not ca_file.is_file():
        fix = "copy the central stack's STATE/secrets/tls_ca_cert there, or remove ca_file"
        return Check(f"{what} CA", "fail", f"{key}.ca_file {ca_file} does not exist", fix)
    return None


GATE_URL = f"http://CENTRAL:{Ports.model_fields['write_gate'].default}/api/v1/write"
"""Where a box's remote write goes, with the central stack's default port."""


def _remote_write(ctx: AppContext, desired: Mapping[str, RenderedService]) -> list[Check]:
    """An edge box sending its samples to the central stack (``monitoring.remote_write``, its
    write gate): its credential is in place and the gate takes it. A receiver that cannot be reached only
    warns (the box keeps its samples and sends them when the link returns); one that refuses the
    account fails, as its samples would never arrive."""
    wanted = ctx.answers.monitoring.remote_write
    if wanted is None or "prometheus" not in desired:
        return []
    path = wanted.password_path(ctx.state_dir)
    missing = _credential("remote write", path, wanted.username, wanted.ca_file, "monitoring.remote_write")
    if missing is not None:
        return [missing]
    secrets = ctx.state_dir / "secrets"
    outside = [
        f
        for f in (path, wanted.ca_file)
        if f is not None and not f.resolve().is_relative_to(secrets.resolve())
    ]
    if ctx.in_containers and outside:  # the containers see STATE/secrets alone
        return [
            Check(
                "remote write",
                "fail",
                f"{outside[0]} is outside {secrets}, which is all Prometheus's container sees",
                f"copy it into {secrets} (mode 0600) and name that path in monitoring.remote_write",
            )
        ]
    import httpx

    verify: str | bool = str(wanted.ca_file) if wanted.ca_file else True
    try:  # an empty body: the receiver checks the account first (401), then refuses the body (400)
        answer = httpx.post(
            wanted.url, auth=(wanted.username, path.read_text().strip()), verify=verify, timeout=5
        )
    except httpx.HTTPError as err:
        return [
            Check(
                "remote write",
                "warn",
                f"{wanted.url} cannot be reached ({type(err).__name__}): samples wait on this box",
                "they are sent when the central Prometheus answers; check the URL if it never does",
            )
        ]
    if answer.status_code in (401, 403):
        return [
            Check(
                "remote write",
                "fail",
                f"{wanted.url} refuses {wanted.username} ({answer.status_code})",
                f"list {wanted.box} in the central edge_boxes, run up there, copy the password again; "
                f"the URL must be the central write gate's ({GATE_URL}), not its Prometheus's, which "
                "takes no edge account",
            )
        ]
    if answer.status_code == 404:
        return [
            Check(
                "remote write",
                "fail",
                f"{wanted.url} has no remote-write receiver (404)",
                f"name the central stack's write gate, {GATE_URL} (or the port of its ports.write_gate, "
                "if changed)",
            )
        ]
    return [Check("remote write", "pass", f"samples go to {wanted.url} as {wanted.username}")]


def _edge_registry(ctx: AppContext, observed: Mapping[str, ObservedService]) -> list[Check]:
    """An edge box following a central registry (``serving.registry``): its credential is in
    place, and each ``models:/`` model can be served: the registry answers with a version, or a
    version is cached on the box (``appliance.workloads.serving.edge_cache``). One the registry
    refuses, or nothing servable at all, fails; a model served from the cache only warns."""
    from appliance.workloads.serving.edge_cache import CachedSource
    from appliance.workloads.serving.sources import MlflowSource

    registry = ctx.answers.serving.registry
    assert registry is not None
    secret = ctx.state_dir / "secrets" / REGISTRY_PASSWORD
    missing = _credential("registry", secret, registry.username, registry.ca_file, "serving.registry")
    if missing is not None:
        return [missing]
    import httpx

    auth = (registry.username, secret.read_text().strip())
    verify: str | bool = str(registry.ca_file) if registry.ca_file else True
    cache = ctx.state_dir / "serving" / "cache"
    checks, servable = [], 0
    for model in ctx.answers.served_models():
        if not model.served_uri.startswith("models:/"):
            servable += 1
            continue
        source = MlflowSource(model.served_uri)
        cached = CachedSource(source, cache / model.name).cached() if not ctx.in_containers else None
        name = f"serving model {model.name}"
        if source.version is not None:
            path, params = "model-versions/get", {"name": source.model, "version": source.version}
        else:
            path, params = "registered-models/alias", {"name": source.model, "alias": str(source.alias)}
        try:
            answer = httpx.get(
                f"{registry.url}/api/2.0/mlflow/{path}", params=params, auth=auth, verify=verify, timeout=5
            )
        except (httpx.HTTPError, OSError) as err:
            if cached is not None or (ctx.in_containers and observed.get("serving")):
                servable += 1
                have = f"version {cached['version']} cached" if cached else "the running server's cache"
                checks.append(
                    Check(
                        name,
                        "warn",
                        f"{registry.url} cannot be reached ({err}); serving {have} until it can",
                        "",
                    )
                )
            else:
                checks.append(
                    Check(
                        name,
                        "fail",
                        f"{registry.url} cannot be reached ({err}) and no version of "
                        f"{model.served_uri} is cached on this box",
                        "connect the box to the registry for its first `up` (it serves the cached "
                        "version through later outages), or serve a model file or s3:// URI",
                    )
                )
            continue
        if answer.status_code in (401, 403):
            return [
                Check(
                    "registry credential",
                    "fail",
                    f"{registry.url} refuses {registry.username}'s password ({answer.status_code})",
                    _copy_fix(secret, registry.username),
                )
            ]
        if answer.status_code == 200:
            servable += 1
            version = answer.json().get("model_version", {}).get("version", "?")
            checks.append(Check(name, "pass", f"{model.served_uri}: version {version} at {registry.url}"))
        elif cached is not None:
            servable += 1
            checks.append(
                Check(
                    name,
                    "warn",
                    f"{registry.url} has no {model.served_uri} ({answer.status_code}); "
                    f"serving the cached version {cached['version']}",
                    "register the model and set its alias in the central registry",
                )
            )
        else:
            checks.append(
                Check(
                    name,
                    "fail",
                    f"{registry.url} has no {model.served_uri} ({answer.status_code}: {answer.text[:200]})",
                    "register the model and set its alias in the central registry, or correct "
                    "models[].uri (serving.model)",
                )
            )
    if servable and any(c.status == "fail" for c in checks):
        # a box that serves some of its models starts; the others load when they appear
        checks = [Check(c.name, "warn", c.detail, c.fix) if c.status == "fail" else c for c in checks]
    return checks


CREDENTIALS = {
    "seaweedfs": "an S3 key per workload class: admin, writer, reader (seaweedfs_*_secret_key)",
    "minio": "MinIO's root keys (minio_root_password)",
    "mlflow": "MLflow accounts admin, appliance-writer, appliance-reader (mlflow_*_password)",
    "workbench": "the Jupyter token (jupyter_token)",
    "serving": "bearer tokens: serving_token (inference), serving_admin_token (repository API)",
    "controller": "the bearer token controller_webhook_token",
    "prometheus": "basic auth, user appliance (prometheus_web_password)",
    "alertmanager": "basic auth, user appliance (alertmanager_web_password)",
    "node-exporter": "basic auth, user appliance (node_exporter_web_password)",
    "grafana": "Grafana's admin password (grafana_admin_password)",
    "gateway": "TLS with the stack's CA; each service behind it checks its own credential",
}
"""What an unauthenticated caller needs to get past each service: named by the network warning."""


def _is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def _network_exposure(desired: Mapping[str, RenderedService]) -> list[Check]:
    """A non-loopback ``bind_address`` or ``tls.listen_address``: which services other machines
    can reach, and with which credential (every one checks its own; nothing is open)."""
    exposed: dict[str, list[str]] = {}
    for name, svc in desired.items():
        if svc.ports and not _is_loopback(svc.publish_address):
            exposed.setdefault(svc.publish_address, []).append(name)
    checks = []
    for address, names in exposed.items():
        listed = "; ".join(f"{n} ({CREDENTIALS.get(n, 'its own credential')})" for n in names)
        checks.append(
            Check(
                f"network {address}",
                "warn",
                f"listening on {address}, reachable from the network: {listed}",
                "keep bind_address (and tls.listen_address) at 127.0.0.1 unless other machines "
                "must reach these; with TLS on, only tls.listen_address needs to face outward",
            )
        )
    return checks


def _model_datasets(ctx: AppContext, desired: Mapping[str, RenderedService]) -> list[Check]:
    """A model bound to a dataset the store does not hold, where the store can be read without
    starting anything (the filesystem store) and already holds datasets: its retraining would
    fail. A fresh store is left alone (``make up`` seeds after ``up``); runs check it again."""
    if "controller" not in desired or ctx.store_kind != "filesystem":
        return []
    root = ctx.state_dir / "data" / ctx.answers.object_store.datasets_bucket
    present = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    if not present:
        return []
    return [
        Check(
            f"dataset of model {m.name}",
            "warn",
            f"model {m.name!r} is bound to dataset {m.dataset!r}, which the datasets store does not "
            f"hold (it holds: {', '.join(sorted(present)[:10])}): its retraining would fail",
            f"upload it (`appliance data seed --dataset {m.dataset}` for scikit-learn's sets) or "
            "correct models[].dataset",
        )
        for m in ctx.answers.served_models()
        if m.dataset is not None and m.dataset not in present
    ]


def run_preflight(
    ctx: AppContext,
    desired: Mapping[str, RenderedService],
    observed: Mapping[str, ObservedService],
    footprints: Mapping[str, int],
) -> list[Check]:
    """Every check, in the order the user reads them."""
    return [
        _os(),
        _python(),
        _cpu(),
        _memory(desired, footprints),
        _disk(ctx.state_dir),
        *_runtime_checks(ctx, desired),
        *_ports(ctx, desired, observed),
        _gpu(ctx),
        *_model_source(ctx, desired, observed),
        *_remote_write(ctx, desired),
        *_model_datasets(ctx, desired),
        *_network_exposure(desired),
    ]


def as_json(checks: list[Check]) -> dict[str, object]:
    """The stable JSON form of ``preflight --json``."""
    return {"ok": not any(c.status == "fail" for c in checks), "checks": [asdict(c) for c in checks]}
