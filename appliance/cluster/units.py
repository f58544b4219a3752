"""Each host's units, rendered from stacks/services.yaml with the one-host stack's own renderer.

For each host the stack is rendered as seen from that host (``AppContext(hosts=..., here=host)``):
a service on another host is reached at that host's address, one on the same host at loopback
(``appliance.addressing``). Paths are the hosts' (``cluster.state_dir``, ``cluster.venv``); the
secrets come from this machine's secret store, and each host receives only those its units name.
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from appliance.addressing import is_loopback
from appliance.answers import Answers
from appliance.context import AppContext
from appliance.errors import ApplianceError
from appliance.gateway import gateway_address, members_files, serving_members
from appliance.mlflow_auth import EDGE_PASSWORDS_ENV, edge_account, edge_passwords, edge_secret
from appliance.objectstore import grpc_tls
from appliance.render import render_stack
from appliance.secrets_store import SecretStore
from appliance.stack import RenderedService

from .inventory import EVERY_HOST, SERVICE_GROUP, Inventory, role_of
from .requirements import host_no_deps, host_requirements

SECRET_FILE = re.compile(r"/secrets/([A-Za-z0-9_]+)")
DB_PASSWORD = "mlflow_db_password"
"""The secret MLflow's PostgreSQL role logs in with (``roles/appliance_mlflow``)."""
DB_USER = "mlflow"
"""MLflow's PostgreSQL role (``appliance_mlflow_db_user``)."""
PG_PORT = 5432
POSTGRESQL = "postgresql"
"""MLflow's database server as a name for the addressing rule: no service of the stack file, so
it is on the first control host (``HostMap.default``), where ``roles/appliance_mlflow`` installs it."""
FILE_SD = {service: ("all",) for service in EVERY_HOST} | {"serving": SERVICE_GROUP["serving"]}
"""Scrape jobs whose service runs on several hosts, and the inventory groups those hosts are in:
Prometheus finds them in a targets file the monitoring role writes from the inventory."""


def host_context(
    answers: Answers, inventory: Inventory, host: str, services: list[str], secrets: Path
) -> AppContext:
    """The context ``host``'s units render in: the hosts' state folder, this machine's secrets."""
    assert answers.cluster is not None
    ctx = AppContext(
        answers, Path(answers.cluster.state_dir), hosts=inventory.host_map(services, host), here=host
    )
    ctx.__dict__["secrets"] = SecretStore(secrets)  # cached_property: the controller's store
    return ctx


def _venv_paths(text: str, venv: str) -> str:
    """This machine's virtualenv in a rendered command becomes the hosts' (``cluster.venv``)."""
    here = str(Path(sys.prefix))
    return text if here == venv else text.replace(here + "/", venv + "/")


def unit(svc: RenderedService, on_host: set[str], venv: str, secrets: SecretStore) -> dict[str, Any]:
    """What ``roles/appliance_common/tasks/units.yml`` takes for one service."""
    health: dict[str, Any] = {}
    if svc.health.http:
        health["url"] = svc.health.http
        if svc.health.ca:  # an https probe trusts the stack's own CA (the gateway's)
            health["ca"] = svc.health.ca
        if svc.health.auth_user and svc.health.auth_password_file:
            health["user"] = svc.health.auth_user
            health["password"] = secrets.get(Path(svc.health.auth_password_file).name)
    return {
        "name": svc.name,
        "description": svc.description,
        "command": [_venv_paths(a, venv) for a in svc.command],
        "env": {k: _venv_paths(v, venv) for k, v in svc.env.items()},
        # Not marked as reload files (``host_plan``) though one host reloads them (``reloads``):
        # nothing in the roles confirms that a reload took yet, and a restart fails loudly on a
        # file the server refuses, where a reload would go on with the old config unseen.
        "files": [{"key": k, "value": v} for k, v in sorted(svc.files.items())],
        "oneshot": svc.oneshot,
        "restart": svc.restart,
        "after": [d for d in svc.depends_on if d in on_host],
        "health": health,
    }


def unit_of(roles: dict[str, list[dict[str, Any]]], service: str) -> dict[str, Any]:
    """The rendered unit of ``service`` among a host's units, grouped by the role that installs
    them (``role_of``)."""
    return next(u for u in roles[role_of(service)] if u["name"] == service)


def postgresql_backend(
    command: list[str], env: dict[str, str], password: str, host: str = "127.0.0.1"
) -> None:
    """MLflow's backend store becomes the control host's PostgreSQL (``cluster.mlflow_backend``),
    at ``host`` (as this MLflow server dials the first control host): the stack's
    ``--backend-store-uri`` goes from the command line, where ``ps`` would show the password, into
    the 0600 environment file (``MLFLOW_BACKEND_STORE_URI``, which mlflow reads). The accounts'
    database (``appliance.mlflow_auth.shared_auth_uri``) names no password: libpq reads
    ``PGPASSWORD`` from the same file."""
    if "--backend-store-uri" in command:
        at = command.index("--backend-store-uri")
        del command[at : at + 2]
    env["MLFLOW_BACKEND_STORE_URI"] = f"postgresql+psycopg://{DB_USER}:{password}@{host}:{PG_PORT}/mlflow"
    env["PGPASSWORD"] = password


def advertised_s3(env: dict[str, str], ctx: AppContext) -> None:
    """MLflow hands its clients presigned URLs of the S3 store (artifact downloads go straight to
    the store, bypassing the server), built from ``MLFLOW_S3_ENDPOINT_URL``: on the host that runs
    the store too, that URL is the host's cluster address instead of loopback, which only the host
    itself could dial."""
    url = env.get("MLFLOW_S3_ENDPOINT_URL")
    if not url or ctx.hosts is None:
        return
    parts = urlsplit(url)
    if not is_loopback(parts.hostname or ""):
        return  # another host's address already, or an external store
    store = ctx.hosts.host_of(ctx.store_kind)
    if store is not None:
        netloc = f"{ctx.hosts.address_of(store)}:{parts.port}"
        env["MLFLOW_S3_ENDPOINT_URL"] = parts._replace(netloc=netloc).geturl()


def mlflow_servers(
    answers: Answers, inventory: Inventory, host: str, ctx: AppContext, host_vars: dict[str, Any]
) -> None:
    """What the mlflow role needs for this host's MLflow server: whether it runs the database
    (and so starts first, creating or migrating both schemas before any other server starts),
    and, there, the other MLflow hosts PostgreSQL lets in."""
    servers = inventory.hosts_of("mlflow")
    owner = host == inventory.first_control
    host_vars["appliance_mlflow_db_server"] = owner
    if owner:
        host_vars["appliance_mlflow_db_clients"] = [inventory.hosts[h].address for h in servers if h != host]
    if len(servers) > 1 and not ctx.store_is_s3:
        raise ApplianceError(
            f"{len(servers)} control hosts run MLflow servers but the artifact store resolves to "
            f"{ctx.store_kind}, a folder the other hosts do not see",
            fix="set object_store.kind: seaweedfs in appliance.yaml (docs/cluster.md), or keep one host "
            "in the control group",
        )


def advertise(command: list[str], address: str) -> None:
    """A SeaweedFS server's ``-ip`` (the address it gives the master, which tells the filer and
    the other servers where it is) becomes its host's cluster address: the renderer gives a
    service on the same host loopback, which no other host can dial."""
    for at, arg in enumerate(command):
        if arg.startswith("-ip="):
            command[at] = f"-ip={address}"


def spread_seaweedfs(command: list[str], replication: str) -> None:
    """The control host's ``weed server`` when storage hosts run the volume servers: master,
    filer and S3 gateway only (``-volume=false``), the master placing every new volume with
    ``replication`` (``-master.defaultReplication``, e.g. 001: one more copy on another server;
    the filer and S3 gateway use the master's)."""
    at = command.index("server") + 1
    command[at:at] = ["-volume=false", f"-master.defaultReplication={replication}"]


def seaweedfs_shell(server: dict[str, Any], address: str, master_port: int) -> list[str]:
    """``weed shell`` against the control host's master, with the ``weed`` its unit runs: the
    seaweedfs role asks it for volumes with fewer copies than the replication places
    (``volume.fix.replication``; a storage host that came back empty, or one lost for good) and
    has it copy them back from the servers that still hold them."""
    command = server["command"]
    weed = command[command.index("--") + 1] if "--" in command else command[0]
    # the unit's -config_dir: its security.toml gives the shell the client certificate the
    # master's mutual TLS asks for (seaweedfs_mutual_tls)
    config = [a for a in command if a.startswith("-config_dir=")]
    return [weed, *config[:1], "shell", f"-master={address}:{master_port}"]


SECURITY_DIGEST = "security.toml.sha256"
"""A cluster SeaweedFS unit's file that no process reads: the digest of its ``security.toml``
without the guard. Its change (a certificate or signing key) restarts the unit; ``security.toml``
itself is a reload file, so a change of the guard alone reloads it (``appliance_files``)."""


def seaweedfs_mutual_tls(
    svc: dict[str, Any], components: tuple[str, ...], secrets_dir: str, white_list: list[str], stamp: str
) -> None:
    """A cluster SeaweedFS unit's ``security.toml`` gains its gRPC mutual TLS (the certificates
    of ``components``, files of the host's secrets folder, which the role writes 0600) and the
    HTTP guard admitting loopback and the cluster's hosts alone (``appliance.objectstore.grpc_tls``).
    The guard changes whenever a host joins or leaves; SeaweedFS reads it again on SIGHUP, so
    that change reloads the unit, and only a change of the rest restarts it (SECURITY_DIGEST)."""
    files = svc["files"]
    at = next(i for i, entry in enumerate(files) if entry["key"] == "security.toml")
    start_part = files[at]["value"] + "\n" + grpc_tls.security_sections(secrets_dir, components, stamp)
    guarded = start_part + "\n" + grpc_tls.guard_section(white_list)
    files[at] = {"key": "security.toml", "value": guarded, "reload": True}
    digest = hashlib.sha256(start_part.encode()).hexdigest()
    files.insert(at + 1, {"key": SECURITY_DIGEST, "value": digest + "\n"})


def seaweedfs_ready(svc: RenderedService, venv: str, volume_servers: int) -> list[str]:
    """The store's readiness rule as the stack declares it (``appliance.objectstore.ready``), waiting
    for as many volume servers as the replication places copies on."""
    command = [_venv_paths(a, venv) for a in svc.health.command or []]
    return [*command, "--volume-servers", str(volume_servers)] if command else []


def seaweedfs_copies(svc: RenderedService, venv: str) -> list[str]:
    """The check of every volume's copies against the replication (``appliance.objectstore.copies``),
    against the master the store's readiness rule asks."""
    ready = seaweedfs_ready(svc, venv, 1)
    master = ready[ready.index("--master") + 1]
    return [ready[0], "-m", "appliance.objectstore.copies", "--master", master]


def serving_rollout(answers: Answers, host_vars: dict[str, Any], svc: RenderedService) -> None:
    """What the serving role rolls a host's model server over with (``roles/appliance_serving``):
    the readiness URL it waits for before the next host goes, and whether a new server waits for
    it. Whether the server restarts (drained first) is the units machinery's record of what it
    read against what it is given (``roles/appliance_common/tasks/unit_changes.yml``)."""
    live = svc.health.http or ""
    host_vars["appliance_serving_ready_url"] = live.replace("/v2/health/live", "/v2/health/ready")
    host_vars["appliance_serving_wait_ready"] = not any(
        m.served_uri.startswith("models:/") for m in answers.served_models()
    )


def edge_reader(env: dict[str, str], host: str, ctx: AppContext, services: dict[str, Any]) -> None:
    """An edge host's model server reads the registry with the host's own read-only account
    (``appliance.mlflow_auth.edge_account``), not the serving hosts' shared one: removing the host
    from the inventory deletes its account, and no other host's password changes. With the TLS
    gateway on, it reads through the gateway (https, checked against the stack's CA, which the
    host then receives): an edge box sits on a network the cluster's own hosts do not, and MLflow
    itself need not be reachable from there."""
    env["MLFLOW_TRACKING_USERNAME"] = edge_account(host)
    env["MLFLOW_TRACKING_PASSWORD"] = ctx.secrets.get(edge_secret(host))
    if "gateway" in services and "mlflow" in services:
        from appliance.tls import CA_CERT  # cryptography: only with TLS on

        port = ctx.answers.ports.gateway_mlflow
        env["MLFLOW_TRACKING_URI"] = ctx.addressing.gateway_url(gateway_address(ctx), port)
        env["MLFLOW_TRACKING_SERVER_CERT_PATH"] = f"{ctx.state_dir}/secrets/{CA_CERT}"


def edge_names(ctx: AppContext, inventory: Inventory) -> list[str]:
    """Every edge box the cluster's registry has an account for: the ``edge`` hosts and the
    standalone boxes of ``edge_boxes``."""
    return [*inventory.group("edge"), *ctx.answers.edge_box_names]


def edge_accounts(env: dict[str, str], ctx: AppContext, inventory: Inventory) -> None:
    """The accounts job's edge accounts (``edge_names``; ``{}`` with none, so it deletes any
    left)."""
    env[EDGE_PASSWORDS_ENV] = edge_passwords(edge_names(ctx, inventory), ctx.secrets)


def file_sd_targets(prometheus: dict[str, Any], targets_dir: str) -> list[dict[str, Any]]:
    """Prometheus's config (the one-host renderer's ``prometheus.yml``) with each ``FILE_SD`` job
    reading ``targets_dir/JOB.yml`` instead of its one static target; returns what the monitoring
    role writes those files from (job, inventory groups, port)."""
    files = {f["key"]: f for f in prometheus["files"]}
    config = yaml.safe_load(files["prometheus.yml"]["value"])
    jobs: list[dict[str, Any]] = []
    for scrape in config.get("scrape_configs", []):
        groups = FILE_SD.get(scrape["job_name"])
        if groups is None or "static_configs" not in scrape:
            continue
        (static,) = scrape.pop("static_configs")
        port = int(static["targets"][0].rsplit(":", 1)[1])
        scrape["file_sd_configs"] = [{"files": [f"{targets_dir}/{scrape['job_name']}.yml"]}]
        jobs.append({"job": scrape["job_name"], "groups": list(groups), "port": port})
    header = "# Rendered by `appliance cluster`: jobs on several hosts read the inventory's targets files.\n"
    files["prometheus.yml"]["value"] = header + yaml.safe_dump(config, sort_keys=False)
    return jobs


def render_hosts(answers: Answers, secrets_dir: Path) -> dict[str, dict[str, Any]]:
    """Per host: ``appliance_<role>_units`` for each role with units there, and the secrets its
    units name (``appliance_common_secrets``)."""
    if answers.cluster is None:
        raise ApplianceError(
            "the answers file has no cluster section",
            fix="add cluster.hosts (appliance init --cluster writes an example)",
        )
    inventory = Inventory(answers.cluster)
    store = SecretStore(secrets_dir)
    first = render_stack(host_context(answers, inventory, inventory.first_control, [], secrets_dir))
    names = list(first)
    certificates = ""
    if "seaweedfs" in first:  # the store's gRPC certificates (seaweedfs_mutual_tls)
        grpc_tls.ensure_certificates(store)
        certificates = grpc_tls.fingerprint(store)
    # loopback, the hosts, and "@": the peer address SeaweedFS reads for its own processes on one
    # host, which dial each other's gRPC over a unix socket (an all-in-one store's master growing
    # volumes on its volume server; refused, no volume is ever made)
    guarded = ["127.0.0.1", "@", *(h.address for h in inventory.hosts.values())]
    secrets_on_hosts = f"{answers.cluster.state_dir}/secrets"
    result: dict[str, dict[str, Any]] = {}
    for host in inventory.hosts:
        ctx = host_context(answers, inventory, host, names, secrets_dir)
        services = render_stack(ctx)
        mine = {n for n in services if host in inventory.hosts_of(n)}
        roles: dict[str, list[dict[str, Any]]] = {}
        for name in services:  # the stack file's order: dependencies first
            if name in mine:
                roles.setdefault(role_of(name), []).append(
                    unit(services[name], mine, answers.cluster.venv, store)
                )
        host_vars: dict[str, Any] = {f"appliance_{role}_units": units for role, units in roles.items()}
        # every unit of the host: any other appliance unit found there is retired (tasks/retire.yml)
        host_vars["appliance_common_host_unit_names"] = [u["name"] for units in roles.values() for u in units]
        host_vars["appliance_common_requirements"] = host_requirements(n for n in services if n in mine)
        no_deps = host_no_deps(n for n in services if n in mine)
        if no_deps:
            host_vars["appliance_common_requirements_no_deps"] = no_deps
        if "mlflow" in mine:
            host_vars["appliance_mlflow_backend"] = answers.cluster.mlflow_backend
            mlflow_servers(answers, inventory, host, ctx, host_vars)
            if answers.cluster.mlflow_backend == "postgresql":
                mlflow = unit_of(roles, "mlflow")
                database = ctx.addressing.host(POSTGRESQL)
                postgresql_backend(mlflow["command"], mlflow["env"], store.get(DB_PASSWORD), database)
            advertised_s3(unit_of(roles, "mlflow")["env"], ctx)
        # how a model server is drained on the way out (roles/appliance_serving_drain), on every
        # host: one that leaves the serving group drains its server before it is retired
        one_server = answers.serving.max_replicas == 1  # several: their supervisor drains them
        host_vars["appliance_serving_drain_signal"] = "SIGUSR1" if one_server else ""
        host_vars["appliance_serving_drain_ports"] = [answers.ports.serving_http, answers.ports.serving_grpc]
        if "serving" in mine:
            host_vars["appliance_serving_replicas"] = answers.serving.max_replicas  # several: nginx
            serving_rollout(answers, host_vars, services["serving"])
            if host in inventory.group("edge"):
                edge_reader(unit_of(roles, "serving")["env"], host, ctx, services)
        if "mlflow-users" in mine:  # the accounts job makes every edge host's, deletes the rest
            edge_accounts(unit_of(roles, "mlflow-users")["env"], ctx, inventory)
        if "gateway" in mine and "serving" in services:  # the serving hosts behind it
            members = serving_members(ctx)
            host_vars["appliance_gateway_serving_members"] = members
            unit_of(roles, "gateway")["files"] += members_files(members)
        if "seaweedfs" in mine:
            server = unit_of(roles, "seaweedfs")
            copies = answers.object_store.replication
            if "seaweedfs-volume" in services:  # volume servers on the storage hosts
                spread_seaweedfs(server["command"], answers.object_store.seaweedfs_replication)
                advertise(server["command"], inventory.hosts[host].address)
                if copies > 1:
                    host_vars["appliance_seaweedfs_shell"] = seaweedfs_shell(
                        server, inventory.hosts[host].address, answers.ports.seaweedfs_master
                    )
                    host_vars["appliance_seaweedfs_copies"] = seaweedfs_copies(
                        services["seaweedfs"], answers.cluster.venv
                    )
            host_vars["appliance_seaweedfs_ready"] = seaweedfs_ready(
                services["seaweedfs"], answers.cluster.venv, copies
            )
            parts: tuple[str, ...] = ("master", "filer", "s3", "client")  # all-in-one: its volume server too
            parts += () if "seaweedfs-volume" in services else ("volume",)
            seaweedfs_mutual_tls(server, parts, secrets_on_hosts, guarded, certificates)
        if "seaweedfs-volume" in mine:
            volume = unit_of(roles, "seaweedfs-volume")
            advertise(volume["command"], inventory.hosts[host].address)
            # the rolling restart's wait, run on the store's host: the master lists this one again
            store_host = inventory.hosts_of("seaweedfs")[0]
            host_vars["appliance_seaweedfs_store_host"] = store_host
            host_vars["appliance_seaweedfs_rejoined"] = [
                *seaweedfs_ready(services["seaweedfs"], answers.cluster.venv, 1),
                "--volume-server",
                f"{inventory.hosts[host].address}:{answers.ports.seaweedfs_volume}",
            ]
            seaweedfs_mutual_tls(volume, ("volume", "client"), secrets_on_hosts, guarded, certificates)
        if "prometheus" in mine:
            prometheus = unit_of(roles, "prometheus")
            targets = f"{answers.cluster.state_dir}/config/prometheus/targets"
            host_vars["appliance_monitoring_file_sd"] = file_sd_targets(prometheus, targets)
        if host in inventory.group("train_workers"):  # torchrun's settings (roles/appliance_train_worker)
            host_vars["appliance_train_worker_nproc"] = answers.cluster.train.nproc_per_node
            host_vars["appliance_train_worker_rdzv_port"] = answers.cluster.train.rdzv_port
            # The job's connections as this host reaches them, kept on the host for every job's ranks.
            host_vars["appliance_train_worker_job_env"] = ctx.connection_env()
        text = repr(roles)
        needed = sorted(
            set(SECRET_FILE.findall(text)) | ({DB_PASSWORD} if "MLFLOW_BACKEND_STORE_URI" in text else set())
        )
        host_vars["appliance_common_secrets"] = {n: store.get(n) for n in needed}
        result[host] = host_vars
    return result
