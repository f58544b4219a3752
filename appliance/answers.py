"""The answers file (``appliance.yaml``): every choice a user makes, as one validated model.

The wizard and ``appliance up --answers FILE`` both end here, so a wizard run can always be
reproduced from the file it wrote. Models are frozen and forbid unknown keys; each field's
docstring becomes its description in the committed JSON schema (``schemas/answers.schema.json``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from appliance.cron import check_cron
from appliance.mlflow_auth import EDGE_PREFIX, READER_USER, SECRETS
from appliance.monitoring.durations import check_duration
from appliance.names import RULE, name_problem
from appliance.workloads.serving.limits import ServerLimits


class Strict(BaseModel):
    """Base for every answers-file section: immutable, no unknown keys, docstrings as descriptions."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


Port = int
SEAWEEDFS_GRPC_OFFSET = 10000
"""SeaweedFS's master, volume server, filer and S3 gateway each listen for gRPC on their port plus
this (upstream's fixed rule; a port above 55535 makes ``weed`` exit with "invalid port")."""
SEAWEEDFS_GRPC_PAIRED = ("s3", "seaweedfs_master", "seaweedfs_volume", "seaweedfs_filer")


class Ports(Strict):
    """Host ports of the services. Every service binds to ``bind_address`` only."""

    mlflow: Port = Field(5000, ge=1, le=65535)
    """MLflow tracking server, model registry and artifact proxy (HTTP)."""
    workbench: Port = Field(8888, ge=1, le=65535)
    """JupyterLab workbench (HTTP, token protected)."""
    prometheus: Port = Field(9090, ge=1, le=65535)
    """Prometheus web UI and API."""
    alertmanager: Port = Field(9093, ge=1, le=65535)
    """Alertmanager web UI and API."""
    write_gate: Port = Field(9095, ge=1, le=65535)
    """The write gate: edge boxes' remote write to this stack's Prometheus (only with
    ``edge_boxes``; ``appliance.monitoring.write_gate``)."""
    node_exporter: Port = Field(9100, ge=1, le=65535)
    """Prometheus node exporter (host metrics)."""
    grafana: Port = Field(3000, ge=1, le=65535)
    """Grafana dashboards (HTTP, admin password in ``STATE/secrets/grafana_admin_password``; only
    when ``components.dashboards`` and Grafana runs: always on a container runtime, on the local
    runtime where a Grafana server is installed)."""
    minio: Port = Field(9000, ge=1, le=65535)
    """MinIO S3 API (only when the object store is MinIO)."""
    minio_console: Port = Field(9001, ge=1, le=65535)
    """MinIO web console (only when the object store is MinIO)."""
    s3: Port = Field(8333, ge=1, le=65535)
    """SeaweedFS's S3 API, the stack's data connection (only when the object store is SeaweedFS)."""
    seaweedfs_master: Port = Field(9333, ge=1, le=65535)
    """SeaweedFS master (HTTP; its gRPC port is this plus 10000). Internal to the store."""
    seaweedfs_volume: Port = Field(8334, ge=1, le=65535)
    """SeaweedFS volume server (HTTP; gRPC on this plus 10000). Internal to the store."""
    seaweedfs_filer: Port = Field(8335, ge=1, le=65535)
    """SeaweedFS filer (HTTP; gRPC on this plus 10000). Internal to the store."""
    seaweedfs_metrics: Port = Field(9327, ge=1, le=65535)
    """SeaweedFS's Prometheus metrics (master, volume, filer and S3 gateway in one process)."""
    serving_http: Port = Field(8080, ge=1, le=65535)
    """ONNX model server, Open Inference Protocol over REST."""
    serving_grpc: Port = Field(8081, ge=1, le=65535)
    """ONNX model server, Open Inference Protocol over gRPC."""
    serving_metrics: Port = Field(8082, ge=1, le=65535)
    """ONNX model server, Prometheus metrics."""
    controller: Port = Field(8090, ge=1, le=65535)
    """Retraining controller: Alertmanager webhook, pipeline API and metrics."""
    gateway_serving: Port = Field(8443, ge=1, le=65535)
    """TLS gateway in front of the model server: REST over HTTPS and gRPC over TLS on one port
    (only when ``tls.enabled``)."""
    gateway_mlflow: Port = Field(5443, ge=1, le=65535)
    """TLS gateway in front of MLflow (HTTPS; only when ``tls.enabled`` and MLflow runs)."""
    gateway_workbench: Port = Field(8843, ge=1, le=65535)
    """TLS gateway in front of the workbench (HTTPS and WebSockets; only when ``tls.enabled`` and
    the workbench runs)."""

    @model_validator(mode="after")
    def _distinct(self) -> Ports:
        seen: dict[int, str] = {}
        for name, port in self.model_dump().items():
            if port in seen:
                raise ValueError(f"ports.{name} and ports.{seen[port]} are both {port}: give each its own")
            seen[port] = name
        for name in SEAWEEDFS_GRPC_PAIRED:
            port = getattr(self, name)
            if port + SEAWEEDFS_GRPC_OFFSET > 65535:
                raise ValueError(
                    f"ports.{name} is {port}: SeaweedFS also listens for gRPC on that port plus "
                    f"{SEAWEEDFS_GRPC_OFFSET}, so it must be at most {65535 - SEAWEEDFS_GRPC_OFFSET}"
                )
            if port + SEAWEEDFS_GRPC_OFFSET in seen:
                other = seen[port + SEAWEEDFS_GRPC_OFFSET]
                raise ValueError(
                    f"ports.{other} is {port + SEAWEEDFS_GRPC_OFFSET}, the gRPC port SeaweedFS opens "
                    f"beside ports.{name} ({port} plus {SEAWEEDFS_GRPC_OFFSET}): move one of them"
                )
        return self


class Components(Strict):
    """Which parts of the stack to run. A profile decides which of these it can offer at all."""

    object_store: bool = True
    """Run a local object store when ``object_store.kind`` is ``seaweedfs`` or ``minio``."""
    mlflow: bool = True
    """MLflow tracking server and model registry."""
    workbench: bool = True
    """JupyterLab workbench with the data science libraries and the data connection preset."""
    monitoring: bool = True
    """Prometheus, Alertmanager and node exporter."""
    serving: bool = True
    """ONNX model server for the registered champion."""
    controller: bool = True
    """Retraining controller (cron schedule and drift-alert webhook)."""
    dashboards: bool = True
    """Grafana with the appliance's dashboards. It reads the stack's Prometheus, so it runs only
    with ``monitoring``; on the local runtime only where a Grafana server is installed."""


ObjectStoreKind = Literal["auto", "seaweedfs", "minio", "s3", "filesystem"]


class ObjectStore(Strict):
    """Where datasets, models and MLflow artifacts live: the stack's data connection."""

    kind: ObjectStoreKind = "auto"
    """``seaweedfs`` runs the bundled SeaweedFS (its S3 gateway, a key per workload class);
    ``minio`` runs a local MinIO; ``s3`` uses an external S3 endpoint; ``filesystem`` keeps
    everything on local disk under the state directory; ``auto`` picks ``minio`` when a MinIO
    binary is configured or found and ``seaweedfs`` otherwise, and ``filesystem`` on the edge
    profile (no store of its own unless named; an edge state that already ran one keeps it)."""
    endpoint: str | None = None
    """S3 endpoint URL (``kind: s3`` only), e.g. ``https://s3.eu-west-1.amazonaws.com``."""
    region: str = "us-east-1"
    """S3 region name passed to clients."""
    access_key: str | None = None
    """S3 access key id for ``kind: s3``; when absent, taken from ``AWS_ACCESS_KEY_ID`` at install."""
    secret_key_env: str = "AWS_SECRET_ACCESS_KEY"
    """Environment variable that holds the S3 secret key at install (``kind: s3``). The secret
    is copied into the state directory (mode 0600), never written into this file."""
    minio_binary: str | None = None
    """Path of the ``minio`` server binary; searched on ``PATH`` when absent."""
    datasets_bucket: str = "datasets"
    """Bucket (or folder, for ``filesystem``) for datasets."""
    models_bucket: str = "models"
    """Bucket (or folder) for exported models."""
    mlflow_bucket: str = "mlflow"
    """Bucket (or folder) for MLflow artifacts."""
    replication: int = Field(1, ge=1, le=10)
    """Copies SeaweedFS keeps of every object, each on another volume server (``kind:
    seaweedfs``): more than 1 needs that many hosts in the cluster's ``storage`` group; one
    host, or a cluster without storage hosts, has one volume server, so 1."""

    @property
    def seaweedfs_replication(self) -> str:
        """SeaweedFS's placement code for ``replication`` (``-defaultReplication``): its digits
        count extra copies in other data centres, other racks, and other servers of the same
        rack; ``00N`` asks for N more copies on other servers, which needs no rack names."""
        return f"00{self.replication - 1}"

    @model_validator(mode="after")
    def _endpoint_for_s3(self) -> ObjectStore:
        if self.kind == "s3" and not self.endpoint:
            raise ValueError("object_store.kind is 's3' but no endpoint is set: add object_store.endpoint")
        if self.endpoint and not self.endpoint.startswith(("http://", "https://")):
            raise ValueError(f"endpoint {self.endpoint!r} must start with http:// or https://")
        if self.replication > 1 and self.kind != "seaweedfs":
            raise ValueError(
                f"object_store.replication is {self.replication} but only SeaweedFS keeps copies: "
                "set object_store.kind: seaweedfs, or remove object_store.replication"
            )
        return self


class Gpu(Strict):
    """GPU use. ``auto`` gives GPUs to the services that ask for one when the host has any."""

    mode: Literal["auto", "on", "off"] = "auto"
    """``on`` fails preflight without a usable NVIDIA GPU; ``off`` never passes one through."""
    services: list[str] = Field(default_factory=lambda: ["trainer", "serving", "workbench"])
    """Services that get the GPU when one is used."""

    @property
    def serving_provider(self) -> str:
        """The model server's ``--execution-provider``, from the two keys above: ``cpu`` when the
        GPU is off or not given to serving, ``cuda`` (the server refuses to start without it)
        when it is ``on``, ``auto`` (CUDA where onnxruntime-gpu finds a GPU) otherwise."""
        if self.mode == "off" or "serving" not in self.services:
            return "cpu"
        return "cuda" if self.mode == "on" else "auto"


class Resources(Strict):
    """Resource limits applied per service by runtimes that support them (containers)."""

    memory_mb: int | None = Field(None, ge=128)
    """Memory limit per service in MiB; none when absent."""
    cpus: float | None = Field(None, gt=0)
    """CPU limit per service (fractional cores); none when absent."""


DEFAULT_MODEL = "breast_cancer"
"""The demo model served when the answers name none (``make up`` trains it)."""
BUILTIN_PIPELINE = "retrain"


class ModelEntry(Strict):
    """One served model and its own retraining loop (``models:`` list). The model server serves
    every entry at once; drift alerts, the cron schedule and ``appliance pipeline run`` for a model
    retrain it on its own dataset with its own parameters."""

    name: str
    """The model's name: its registered model in MLflow, its path on the server
    (``/v2/models/NAME``) and the ``model`` label of its metrics and alerts."""
    uri: str | None = None
    """What to serve (like KServe's ``storageUri`` or MLflow's model URI): ``models:/NAME@ALIAS``,
    ``models:/NAME/VERSION``, ``s3://BUCKET/KEY`` or a local ONNX file or folder;
    ``models:/<name>@champion`` when absent."""
    dataset: str | None = None
    """The dataset this model learns from (a name in the datasets store, ``appliance data ls``).
    Retraining reads it, and a new version is registered only from its columns and target.
    Without it, drift alerts and scheduled runs for this model are refused (nothing to retrain on)."""
    target: str | None = None
    """Target column of ``dataset``; the dataset's default when absent (``target``, else its last
    column)."""
    pipeline: str = BUILTIN_PIPELINE
    """Pipeline that retrains this model: ``STATE/pipelines/NAME.yaml`` first, then the built-in
    ones (``stacks/pipelines``)."""
    parameters: dict[str, str | int | float | bool] = Field(default_factory=dict)
    """Parameters of this model's pipeline runs (e.g. ``{epochs: 30}``), over the pipeline's own
    defaults. ``dataset`` and ``target`` come from the keys above, not from here."""
    drift_psi_threshold: float | None = Field(None, gt=0)
    """This model's PSI threshold for its drift alerts; ``monitoring.drift_psi_threshold`` when
    absent."""
    drift_min_rows: int | None = Field(None, ge=1, le=1000)
    """Rows this model's drift window must hold before its drift alerts may fire;
    ``monitoring.drift_min_rows`` when absent."""
    retrain_schedule: str | None = None
    """Cron expression for this model's scheduled retraining; ``monitoring.retrain_schedule`` when
    absent."""

    @field_validator("name", "dataset", "pipeline")
    @classmethod
    def _names(cls, value: str | None, info: ValidationInfo) -> str | None:
        # These become lock files, object-store prefixes and URL segments (appliance.names).
        if value is not None and (problem := name_problem(value)) is not None:
            raise ValueError(f"{info.field_name} {value!r} {problem}: it must be {RULE}")
        return value

    @field_validator("parameters")
    @classmethod
    def _own_keys(cls, value: dict[str, str | int | float | bool]) -> dict[str, str | int | float | bool]:
        for key in ("dataset", "target"):
            if key in value:
                raise ValueError(f"parameters.{key}: set the model's own `{key}:` key instead")
        return value

    @field_validator("retrain_schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value, "retrain_schedule")

    @property
    def served_uri(self) -> str:
        """What the model server loads for this entry."""
        return self.uri or f"models:/{self.name}@champion"


class Registry(Strict):
    """A central MLflow registry an edge box follows (``serving.registry``): the ``models:/`` URIs
    it serves are read there with a read-only account, and the last good version of each is kept
    on the box to serve through outages (docs/cluster.md, "Edge boxes")."""

    url: str
    """The registry: the central stack's TLS gateway in front of MLflow (``https://HOST:5443``) or
    MLflow itself on a private network (``http://HOST:5000``)."""
    username: str = "appliance-reader"
    """The account the box reads with: its own, ``appliance-edge-NAME``, when the central stack's
    answers list NAME in ``edge_boxes`` (copy the central secret ``mlflow_edge_NAME_<hash>_password``),
    else the central stack's shared read-only one (its ``mlflow_reader_password``). The password
    goes in this box's ``STATE/secrets/mlflow_reader_password`` (mode 0600)."""
    ca_file: Path | None = None
    """CA certificate an ``https`` URL is checked against: copy the central stack's
    ``STATE/secrets/tls_ca_cert`` to this box's ``STATE/secrets/registry_ca_cert`` and name that
    path; absent: the system's CAs."""

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"serving.registry.url {value!r} must start with http:// or https://")
        return value.rstrip("/")


class Serving(Strict):
    """How the model server serves (what it serves: ``models``)."""

    model: str | None = None
    """Shorthand for one served model: a registry URI (``models:/NAME@ALIAS``), an S3 URI or a
    local ONNX path. It means ``models: [{name: NAME, uri: ...}]``, bound to the dataset of the
    same name for a registry URI (as ``appliance train --dataset NAME`` registers it). Use
    ``models`` for more than one model or another binding; setting both is refused."""
    max_batch_size: int = Field(32, ge=1)
    """Largest batch the dynamic batcher forms across concurrent requests."""
    max_queue_delay_us: int = Field(200, ge=0)
    """Longest a request waits for others to join its batch, in microseconds."""
    poll_seconds: float = Field(10.0, ge=0)
    """How often the server checks the registry alias for a new version to hot-reload (0: never)."""
    limits: ServerLimits = ServerLimits()
    """Sizes, counts, timeouts and connections every client of the model server lives under
    (REST and gRPC alike); docs/security.md says what a client gets past each."""
    min_replicas: int = Field(1, ge=1)
    """Fewest model-server processes the serving service runs (KServe's ``minReplicas``). At least
    1: scale to zero is not offered (a cold replica loads and calibrates its model for seconds)."""
    max_replicas: int = Field(1, ge=1)
    """Most model-server processes (KServe's ``maxReplicas``); above 1 a load balancer fronts them
    on the serving ports and the controller scales between the two bounds."""
    target_concurrency: float = Field(8.0, gt=0)
    """In-flight requests each replica should carry (Knative's ``autoscaling.knative.dev/target``)."""
    target_utilization: float = Field(0.7, gt=0, le=1)
    """Fraction of ``target_concurrency`` the autoscaler aims at, leaving headroom for bursts
    (Knative's ``target-utilization-percentage`` / 100)."""
    stable_window: float = Field(60.0, ge=6, le=3600)
    """Seconds over which concurrency is averaged for ordinary decisions (Knative's stable window)."""
    panic_window_percentage: float = Field(10.0, ge=1, le=100)
    """The panic window as a percentage of the stable window (10 %: 6 s of 60 s)."""
    panic_threshold_percentage: float = Field(200.0, ge=110, le=1000)
    """Panic (scale up at once, never down) when the panic window asks for this percentage of the
    replicas running now."""
    scale_down_delay: float = Field(30.0, ge=0, le=3600)
    """Seconds a lower replica count must have been wanted before replicas go (Knative's default
    is 0; 30 s here because a new replica costs seconds of model load and warm-up, so a short dip
    should not cost a replica that the next burst needs again)."""
    registry: Registry | None = None
    """The central MLflow registry this box serves ``models:/`` URIs from (an edge box);
    absent: this stack's or this cluster's own MLflow."""
    allow_client_shm: bool = False
    """Take Triton's system shared-memory extension (the server's ``--allow-client-shm``):
    clients on this host, running as the serving user, pass tensors through POSIX shared memory
    instead of the request. Needs the local runtime (a container has its own ``/dev/shm``) and
    one replica (a region is registered with one process)."""

    @property
    def allow_client_shm_arg(self) -> str:
        """The model server's ``--allow-client-shm`` value (empty: the flag is left out)."""
        return "true" if self.allow_client_shm else ""

    @property
    def registry_url(self) -> str:
        """The model server's ``--registry-url`` (empty: none)."""
        return self.registry.url if self.registry else ""

    @property
    def registry_user(self) -> str:
        """The model server's ``--registry-user`` (empty: the stack's reader account)."""
        return self.registry.username if self.registry else ""

    @property
    def registry_ca_file(self) -> str:
        """The model server's ``--registry-ca-file`` (empty: the system's CAs)."""
        return str(self.registry.ca_file) if self.registry and self.registry.ca_file else ""

    @property
    def autoscale_json(self) -> str:
        """The controller's ``--autoscale`` argument: the knobs above as JSON, or empty (no
        autoscaler) when the count cannot change (``max_replicas`` equal to ``min_replicas``)."""
        if self.max_replicas <= self.min_replicas:
            return ""
        # The knobs' names are the autoscaler's (one list, its dataclass); it imports nothing heavy.
        from appliance.workloads.controller.autoscale import KpaSettings

        return KpaSettings.from_serving(self).as_json()

    @model_validator(mode="after")
    def _replica_bounds(self) -> Serving:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"serving.min_replicas ({self.min_replicas}) is above serving.max_replicas "
                f"({self.max_replicas}): raise max_replicas or lower min_replicas"
            )
        if self.allow_client_shm and self.max_replicas > 1:
            raise ValueError(
                f"serving.allow_client_shm needs serving.max_replicas 1 (it is {self.max_replicas}): a "
                "shared-memory region is registered with one replica and unknown to the others behind "
                "the balancer; set max_replicas: 1 or allow_client_shm: false"
            )
        return self


class RemoteWrite(Strict):
    """Where an edge box's Prometheus sends its samples (``monitoring.remote_write``): the central
    stack's write gate, which checks the box's account, labels the series with the box's name and
    passes them to its Prometheus's remote-write receiver. The box keeps them in its
    write-ahead log through an outage and sends them when the link returns, so the central series
    have no gap (docs/cluster.md, "Edge boxes")."""

    url: str
    """The central write gate, ``http://HOST:9095/api/v1/write`` (the central ``ports.write_gate``
    on its ``bind_address``, which must be one the box reaches)."""
    username: str
    """The box's own account, ``appliance-edge-NAME``, that the central answers' ``edge_boxes``
    make (the same account reads the registry). The central series get ``edge_box="NAME"``."""
    password_file: Path | None = None
    """The file holding that account's password; absent: this box's
    ``STATE/secrets/mlflow_reader_password`` (the copy of the central secret the registry uses)."""
    ca_file: Path | None = None
    """CA certificate an ``https`` URL is checked against; absent: the system's CAs."""

    @field_validator("url")
    @classmethod
    def _http(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"monitoring.remote_write.url {value!r} must start with http:// or https://")
        return value

    @field_validator("username")
    @classmethod
    def _edge_account(cls, value: str) -> str:
        name = value.removeprefix(EDGE_PREFIX)
        if not value.startswith(EDGE_PREFIX) or name_problem(name) is not None:
            raise ValueError(
                f"monitoring.remote_write.username {value!r} must be {EDGE_PREFIX}NAME, the account the "
                "central answers' edge_boxes make for this box (e.g. appliance-edge-shop-12)"
            )
        return value

    @property
    def box(self) -> str:
        """This box's name, the ``edge_box`` label its samples carry centrally."""
        return self.username.removeprefix(EDGE_PREFIX)

    def password_path(self, state_dir: Path) -> Path:
        """The file the box's Prometheus reads the password from (``password_file``, else the
        box's copy of the central secret the registry reads with too)."""
        return self.password_file or state_dir / "secrets" / SECRETS[READER_USER]


class Monitoring(Strict):
    """Alerting and retraining triggers."""

    drift_psi_threshold: float = Field(0.2, gt=0)
    """PSI above which a feature counts as drifted."""
    drift_min_rows: int = Field(300, ge=1, le=1000)
    """Rows the model server's drift window (the last 1000 rows served) must hold before drift
    alerts may fire: a nearly empty window after a restart or a reload reads as drift by chance
    (with 100 in-distribution rows, 36-64 % of windows of scikit-learn's tabular sets show a PSI
    above 0.2; with 300, none did)."""
    drift_for: str = "5m"
    """How long drift must last before the alert fires (Prometheus duration)."""
    latency_p99_slo_seconds: float = Field(0.05, gt=0)
    """Serving p99 latency objective; above it the latency alert fires."""
    retrain_schedule: str | None = None
    """Cron expression for scheduled retraining (e.g. ``0 3 * * *``); none disables it."""
    alert_webhook_url: str | None = None
    """Where non-drift alerts go (a webhook URL); none keeps them in Alertmanager only."""
    scrape_interval: str = "15s"
    """How often Prometheus scrapes every service (Prometheus duration)."""
    evaluation_interval: str = "15s"
    """How often Prometheus evaluates the alert rules (Prometheus duration)."""
    alert_group_wait: str = "10s"
    """How long Alertmanager waits to group a new alert before it notifies."""
    retrain_cooldown_seconds: int = Field(900, ge=0)
    """After a drift alert starts a retraining run, further drift alerts for the same model are
    ignored for this long, so a flapping alert cannot start a storm of runs."""
    remote_write: RemoteWrite | None = None
    """An edge box: send this Prometheus's samples to the central one as well; absent: they stay
    here."""

    @field_validator("drift_for", "scrape_interval", "evaluation_interval", "alert_group_wait")
    @classmethod
    def _duration(cls, value: str, info: ValidationInfo) -> str:
        # Prometheus and Alertmanager would refuse their config only when the service starts.
        return check_duration(value, f"monitoring.{info.field_name}")

    @field_validator("retrain_schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        # The controller would refuse it only when it starts (appliance.cron: one rule for both).
        return None if value is None else check_cron(value, "monitoring.retrain_schedule")


class BackupSchedule(Strict):
    """Backups taken by the controller on a schedule (docs/backup.md)."""

    schedule: str | None = None
    """Cron expression (UTC), e.g. ``0 2 * * *``; absent: no scheduled backups."""
    retention: int = Field(7, ge=1, le=1000)
    """How many archives to keep in ``to``; older ones are deleted after each good backup."""
    to: str | None = None
    """Folder or ``s3://BUCKET/PREFIX`` for the archives; absent: ``STATE/backups``."""
    stale_after_periods: float = Field(2.0, ge=1.0, le=100.0)
    """The ``BackupTooOld`` alert fires when the last good backup is older than this many
    schedule periods."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value, "backup.schedule")


class Tls(Strict):
    """TLS for the endpoints people and clients use: an nginx gateway terminates HTTPS and gRPC over
    TLS with a certificate signed by a CA generated at install, and proxies to the services, which
    stay on ``bind_address``."""

    enabled: bool = False
    """Run the gateway: the model server (REST and gRPC), MLflow and the workbench over TLS on the
    ``ports.gateway_*`` ports. Clients trust ``STATE/secrets/tls_ca_cert``."""
    listen_address: str | None = None
    """Address the gateway listens on; ``bind_address`` when absent. ``0.0.0.0`` (or a LAN
    address) lets other machines in while every service itself stays on loopback."""
    hostnames: list[str] = Field(default_factory=list)
    """Extra DNS names the certificate is valid for; ``localhost``, this host's name and the
    listen and bind addresses always are."""
    rate_limit_rps: int | None = Field(None, ge=1)
    """Requests per second per client address the gateway lets through (bursts of twice that);
    more get 429. None: no limit."""

    @field_validator("listen_address")
    @classmethod
    def _listen_ip(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ipaddress.ip_address(value)
            except ValueError as err:
                raise ValueError(f"{value!r} is not an IP address (e.g. 0.0.0.0)") from err
        return value

    @field_validator("hostnames")
    @classmethod
    def _dns_names(cls, value: list[str]) -> list[str]:
        for name in value:
            labels = name.split(".")
            if (
                not name
                or len(name) > 253
                or not all(
                    label and len(label) <= 63 and label.replace("-", "").isalnum() for label in labels
                )
            ):
                raise ValueError(f"{name!r} is not a DNS name (letters, digits, '-' and dots)")
        return value


ClusterGroup = Literal["control", "storage", "serving", "train_workers", "monitoring", "gateway", "edge"]
"""Host groups of a cluster (docs/cluster.md); a group nobody is in falls to the first control host."""


class ClusterHost(Strict):
    """One host of the cluster, as Ansible reaches it over SSH."""

    name: str
    """Inventory name (letters, digits, ``.``, ``_``, ``-``); also the host's folder in the state."""
    address: str
    """IP address or DNS name the controller and the other hosts reach it at."""
    groups: list[ClusterGroup] = Field(default_factory=list)
    """What the host does; none: it only gets the common role (and whatever falls to it as the first
    control host)."""
    ssh_user: str | None = None
    """SSH user; ``cluster.ssh_user`` when absent."""
    ssh_port: int = Field(22, ge=1, le=65535)
    """SSH port."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        problem = name_problem(value)
        if problem:
            raise ValueError(problem)
        if value in (*get_args(ClusterGroup), "all", "ungrouped"):
            # Ansible reads a play's pattern `serving` as the host of that name, not the group.
            raise ValueError(
                f"host name {value!r} is also a group name: name the host after the machine "
                f"(e.g. {value}1), and list {value!r} in its groups"
            )
        return value


class ClusterTrain(Strict):
    """Training jobs across the ``train_workers`` hosts (``appliance cluster train``, torchrun)."""

    nproc_per_node: int = Field(1, ge=1, le=64)
    """Processes per host (torchrun ``--nproc-per-node``): one per GPU on GPU hosts, 1 on CPU hosts;
    ``cluster train --nproc-per-node`` overrides it for one job."""
    rdzv_port: int = Field(29400, ge=1024, le=65535)
    """Port of the c10d rendezvous the first train worker hosts (open between the train workers)."""


class Cluster(Strict):
    """The hosts the same stack spreads over (``appliance cluster up``); absent: one host."""

    hosts: list[ClusterHost] = Field(min_length=1)
    """The inventory. The first host in the ``control`` group (else the first host) runs everything
    no other group claims."""
    ssh_user: str = "root"
    """SSH user for hosts that do not name one (it needs sudo without a password unless root)."""
    ssh_key: Path | None = None
    """Private key Ansible logs in with; the SSH agent's keys when absent."""
    state_dir: str = "/var/lib/appliance"
    """The appliance's state folder on every host."""
    venv: str = "/opt/appliance/venv"
    """Virtualenv the services run from on every host."""
    wheelhouse: Path | None = None
    """Folder of wheels on this machine (an offline bundle's wheelhouse) the hosts install the
    virtualenv from, without a network; absent: ``venv`` already exists on every host."""
    bundle: Path | None = None
    """Offline bundle on this machine (``appliance bundle create --debs``) the hosts install their
    Debian packages from, with no network: ``cluster plan`` and ``up`` check its signature and
    every file's sha256 first, then send each host the debs it lacks; absent: the hosts' own apt
    sources."""
    mlflow_backend: Literal["postgresql", "sqlite"] = "postgresql"
    """MLflow's backend store: ``postgresql``, a PostgreSQL server on the first control host
    (listening on that host's cluster address, password authentication, the password a generated
    secret), which several stateless MLflow servers can share; ``sqlite``, a file on that host."""
    train: ClusterTrain = ClusterTrain()
    """Training across hosts: processes per host and the rendezvous port (docs/training.md)."""

    @model_validator(mode="after")
    def _unique(self) -> Cluster:
        names = [h.name for h in self.hosts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"host names must be unique: {', '.join(twice)} appear more than once")
        for path in (self.state_dir, self.venv):
            if not path.startswith("/"):
                raise ValueError(f"{path!r} must be an absolute path on the hosts")
        return self


class EdgeBox(Strict):
    """An edge box named with the models it serves (``edge_boxes``)."""

    name: str
    """The box's name: its account is ``appliance-edge-NAME``."""
    models: list[str] = Field(min_length=1)
    """The registered models the box serves (its answers' ``models[].name``). The write gate keeps
    only series of these models from the box; one naming another model, or none where its metric
    always names one, is left out and logged. A box with the password of another cannot write
    drift for a model it does not serve, so cannot start that model's retraining."""

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if (problem := name_problem(name)) is not None:
                raise ValueError(f"edge box model {name!r} {problem}: it must be {RULE}")
        if len(set(value)) != len(value):
            raise ValueError(f"edge box models must be unique: {', '.join(value)}")
        return value


def _box_names(boxes: list[str | EdgeBox]) -> list[str]:
    """The names of ``edge_boxes`` entries (a name alone, or an ``EdgeBox``), in their order."""
    return [box if isinstance(box, str) else box.name for box in boxes]


class Answers(Strict):
    """Everything the appliance needs to know to provision a stack on this machine."""

    version: Literal[1] = 1
    """Format version of this file."""
    profile: Literal["lab", "edge", "custom"] = "lab"
    """``lab``: the whole lifecycle on one machine; ``edge``: serving and monitoring alone;
    ``custom``: the components you choose."""
    runtime: Literal["local", "podman", "docker"] = "local"
    """How services run: ``local`` host processes supervised by supervisord; ``podman`` or
    ``docker`` containers on a private network, ports published on ``bind_address``."""
    state_dir: Path | None = None
    """Where data, logs, secrets and configs live; ``APPLIANCE_STATE_DIR`` or
    ``~/.local/share/mlops-appliance`` when absent."""
    bind_address: str = "127.0.0.1"
    """Address every service listens on. Keep loopback unless a gateway fronts the stack."""
    components: Components = Components()
    """Which parts of the stack to run."""
    ports: Ports = Ports()
    """Host ports."""
    object_store: ObjectStore = ObjectStore()
    """Object store and data connection."""
    gpu: Gpu = Gpu()
    """GPU use."""
    resources: Resources = Resources()
    """Resource limits per service."""
    models: list[ModelEntry] = Field(default_factory=list)
    """The models the stack serves, each with its dataset binding and retraining loop. Empty:
    ``serving.model`` alone, or the demo model ``breast_cancer`` bound to its dataset."""
    serving: Serving = Serving()
    """Model serving."""
    monitoring: Monitoring = Monitoring()
    """Alerting and retraining."""
    tls: Tls = Tls()
    """The TLS gateway."""
    backup: BackupSchedule = BackupSchedule()
    """Scheduled backups by the controller."""
    health_timeout_seconds: int = Field(180, ge=5)
    """How long ``up`` waits for a service to turn healthy before it fails."""
    images: dict[str, str] = Field(default_factory=dict)
    """Container image per service name, replacing the stack's default (container runtimes
    only), e.g. ``{prometheus: localhost/appliance-prometheus-debian:latest}`` where the
    upstream image cannot be pulled."""
    cluster: Cluster | None = None
    """Several hosts (``appliance cluster ...``, docs/cluster.md); absent: this machine alone."""
    edge_boxes: list[str | EdgeBox] = Field(default_factory=list)
    """Standalone edge boxes (each its own ``appliance up``, edge profile) that follow this stack's
    registry: each gets a read-only MLflow account of its own, ``appliance-edge-NAME``, its password
    this stack's secret ``mlflow_edge_NAME_<hash>_password`` (``appliance secrets show``) to copy to
    the box. A name taken out deletes its account on the next ``up``, cutting that box off alone.
    An entry is the box's name, or ``{name: NAME, models: [...]}`` to limit the model series the
    box may write through the write gate to the models it serves."""

    @field_validator("edge_boxes")
    @classmethod
    def _edge_box_names(cls, value: list[str | EdgeBox]) -> list[str | EdgeBox]:
        names = _box_names(value)
        for name in names:
            problem = name_problem(name)
            if problem:
                raise ValueError(f"edge box name {name!r} {problem}: name it after the box (e.g. shop-12)")
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"edge box names must be unique: {', '.join(twice)} appear more than once")
        return value

    @property
    def edge_box_names(self) -> list[str]:
        """The names of ``edge_boxes``, in their order."""
        return _box_names(self.edge_boxes)

    def edge_box_models(self) -> dict[str, list[str]]:
        """Each edge box whose entry names its models, and those models (a box named alone is
        absent: it may write the series of any model)."""
        return {box.name: box.models for box in self.edge_boxes if isinstance(box, EdgeBox)}

    @model_validator(mode="after")
    def _one_account_per_box(self) -> Answers:
        write, registry = self.monitoring.remote_write, self.serving.registry
        if write and registry and write.password_file is None and write.username != registry.username:
            raise ValueError(
                f"monitoring.remote_write.username ({write.username}) and serving.registry.username "
                f"({registry.username}) share the box's password file: set both to {write.username}, "
                "or give remote_write a password_file of its own"
            )
        if self.cluster is not None:
            hosts = {h.name for h in self.cluster.hosts if "edge" in h.groups}
            both = sorted(hosts & set(self.edge_box_names))
            if both:
                raise ValueError(
                    f"{', '.join(both)} is both an edge host of the cluster and in edge_boxes: one "
                    "account would serve two boxes; name the standalone box differently"
                )
        return self

    @model_validator(mode="after")
    def _one_model_list(self) -> Answers:
        if self.models and self.serving.model is not None:
            raise ValueError(
                f"serving.model ({self.serving.model}) and models are both set: move it into models "
                f"as an entry (name: ..., uri: {self.serving.model}) and remove serving.model"
            )
        seen: dict[str, int] = {}
        for index, entry in enumerate(self.models):
            if entry.name in seen:
                raise ValueError(
                    f"models.{seen[entry.name]} and models.{index} are both named {entry.name!r}: "
                    "give each model its own name (it is the registered model and the served path)"
                )
            seen[entry.name] = index
        self.served_models()  # a shorthand whose URI gives no valid model name fails here
        return self

    @model_validator(mode="after")
    def _client_shm_is_local(self) -> Answers:
        if self.serving.allow_client_shm and self.runtime != "local":
            raise ValueError(
                f"serving.allow_client_shm needs runtime: local (it is {self.runtime}): the model server "
                "in a container has its own /dev/shm, which clients on the host cannot reach"
            )
        return self

    @model_validator(mode="after")
    def _replication_fits(self) -> Answers:
        copies = self.object_store.replication
        storage = [h.name for h in self.cluster.hosts if "storage" in h.groups] if self.cluster else []
        servers = max(len(storage), 1)  # without storage hosts, one volume server (weed server's own)
        if copies > servers:
            if storage:
                where = f"only {', '.join(storage)} of cluster.hosts in the storage group"
            elif self.cluster:
                where = "no host of cluster.hosts in the storage group (one volume server)"
            else:
                where = "no cluster section (one host, one volume server)"
            raise ValueError(
                f"object_store.replication is {copies} with {where}, and each copy needs its own "
                f"volume server: list 'storage' in the groups of {copies} hosts of cluster.hosts "
                f"(docs/cluster.md), or set object_store.replication to {servers}"
            )
        return self

    @model_validator(mode="after")
    def _mlflow_servers_share_their_stores(self) -> Answers:
        """Several control hosts run one MLflow server each: they must share the tracking store
        (PostgreSQL) and the artifact store (S3), or each would see only its own runs."""
        control = [h.name for h in self.cluster.hosts if "control" in h.groups] if self.cluster else []
        if len(control) < 2 or not self.components.mlflow:
            return self
        assert self.cluster is not None
        if self.cluster.mlflow_backend != "postgresql":
            raise ValueError(
                f"cluster.mlflow_backend is {self.cluster.mlflow_backend} with {len(control)} control hosts "
                f"({', '.join(control)}), each running an MLflow server that must share one database: "
                "set cluster.mlflow_backend: postgresql, or keep one host in the control group"
            )
        if self.object_store.kind == "filesystem":
            raise ValueError(
                f"object_store.kind is filesystem with {len(control)} control hosts ({', '.join(control)}), "
                "each running an MLflow server, and a folder on one host is not seen by the others: "
                "set object_store.kind: seaweedfs (docs/cluster.md), or keep one host in the control group"
            )
        return self

    def served_models(self) -> list[ModelEntry]:
        """Every model the stack serves, the ``serving.model`` shorthand expanded (one rule for the
        render, the controller, preflight and the monitoring)."""
        if self.models:
            return list(self.models)
        uri = self.serving.model or f"models:/{DEFAULT_MODEL}@champion"
        if uri.startswith("models:/"):
            name = uri.removeprefix("models:/").split("@", 1)[0].split("/", 1)[0]
            if name_problem(name) is None:
                return [ModelEntry(name=name, uri=uri, dataset=name)]
        from appliance.workloads.serving.sources import source_for

        return [ModelEntry(name=source_for(uri).default_name(), uri=uri)]

    @field_validator("bind_address")
    @classmethod
    def _ip(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as err:
            raise ValueError(f"{value!r} is not an IP address (e.g. 127.0.0.1)") from err
        return value
