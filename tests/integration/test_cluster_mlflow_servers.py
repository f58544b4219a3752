"""Two MLflow servers, one per control host, through the real CLI, Ansible, SSH, PostgreSQL,
SeaweedFS and nginx: ``ctl1`` runs PostgreSQL (tracking and accounts databases), the object
store, the accounts job and the TLS gateway; ``ctl2`` an MLflow server on ``ctl1``'s PostgreSQL
and S3 store. Both servers answer; a run logged through one (metrics and an artifact) reads back
through the other; the accounts the accounts job made once log in on both, and an account made or
changed through one server holds on the other at once; through the gateway no request fails while
either server is stopped; a package new in ctl2's virtualenv (what a new bundle brings) restarts
ctl2's server alone on the next up, with no failed request through the gateway; an up after that
changes nothing; a schema last migrated for an older MLflow release is migrated once, on ctl1.

Hosts are podman containers running systemd (tests/integration/_cluster_hosts.py), two of them,
from the cached host image; `pytest tests/integration/test_cluster_mlflow_servers.py -s` prints
the timings."""

from __future__ import annotations

import base64
import hashlib
import ssl
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration._cluster_lab import ClusterLab, cluster_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(900)]

GROUPS = {"ctl1": ["control"], "ctl2": ["control"]}
MLFLOW, GATEWAY = 5000, 5443
SEARCH = "/api/2.0/mlflow/experiments/search"


@dataclass
class MlflowLab(ClusterLab):
    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def server(self, host: str) -> str:
        return f"http://{self.address(host)}:{MLFLOW}"

    def client(self, host: str) -> Any:
        """An MLflow client of ``host``'s server, as the writer account."""
        import os

        from mlflow import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"] = "appliance-writer"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.secret("mlflow_writer_password")
        return MlflowClient(self.server(host))

    def logs_in(self, host: str, user: str, password: str) -> int:
        answer = httpx.get(
            f"{self.server(host)}/api/2.0/mlflow/users/current",
            auth=(user, password),
            timeout=30,
            trust_env=False,
        )
        return answer.status_code

    def admin(self, host: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server(host),
            auth=("admin", self.secret("mlflow_admin_password")),
            timeout=30,
            trust_env=False,
        )

    def systemctl(self, host: str, action: str) -> None:
        done = self.hosts.ssh(host, f"systemctl {action} appliance-mlflow.service", timeout=120)
        assert done.returncode == 0, done.stderr

    def invocation(self, host: str) -> str:
        """systemd's id of the MLflow server's current run (a restart gives a new one)."""
        done = self.hosts.ssh(host, "systemctl show --value --property InvocationID appliance-mlflow.service")
        assert done.returncode == 0 and done.stdout.strip(), done.stderr
        return done.stdout.strip()

    def wait_healthy(self, host: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.server(host)}/health", timeout=5, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"MLflow on {host} did not answer /health within {timeout} s")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowLab]:
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "seaweedfs"},
        "tls": {"enabled": True},
        "components": dict.fromkeys(
            ("workbench", "controller", "dashboards", "monitoring", "serving"), False
        ),
    }
    with cluster_lab(tmp_path_factory, "cluster-mlflow", GROUPS, base, MlflowLab, overlay=("ctl2",)) as lab:
        code, result, output = lab.cli("up", label="cold up")
        assert code == 0, output[-6000:]
        assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
        yield lab


def test_both_servers_answer_with_the_database_on_the_first_control_host_only(lab: MlflowLab) -> None:
    for host in ("ctl1", "ctl2"):
        assert httpx.get(f"{lab.server(host)}/health", timeout=10, trust_env=False).status_code == 200
        env = lab.hosts.ssh(host, "stat -c '%a %U' /etc/appliance-mlflow.env").stdout.strip()
        assert env == "600 root", host
    units = lab.hosts.ssh("ctl2", "ls /etc/systemd/system/ | grep '^appliance-' || true").stdout.split()
    assert units == ["appliance-mlflow.service"]
    assert lab.hosts.ssh("ctl2", "systemctl is-active postgresql.service").stdout.strip() != "active"
    assert lab.hosts.ssh("ctl1", "systemctl is-active postgresql.service").stdout.strip() == "active"
    ini = lab.hosts.ssh("ctl2", "cat /var/lib/appliance/config/mlflow/basic_auth.ini").stdout
    database = f"postgresql+psycopg://mlflow@{lab.address('ctl1')}:5432/mlflow_auth"
    assert f"database_uri = {database}" in ini and "auth_cache_ttl_seconds = 0" in ini, ini
    # PostgreSQL lets ctl2 in, nobody else: pg_hba names its address for both databases
    hba = lab.hosts.ssh("ctl1", "cat /etc/postgresql/*/main/pg_hba.conf").stdout
    for name in ("mlflow", "mlflow_auth"):
        assert f"host    {name}    mlflow    {lab.address('ctl2')}/32    scram-sha-256" in hba, hba


def _probe_wheel(folder: Path, version: str) -> Path:
    """A one-module wheel, what a new bundle brings into a virtualenv in miniature."""
    name = "appliance_release_probe"
    info = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": f'VERSION = "{version}"\n',
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join([*record, f"{info}/RECORD,,"]) + "\n"
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def test_a_new_package_in_one_hosts_virtualenv_restarts_its_server_alone_with_no_failed_request(
    lab: MlflowLab, tmp_path: Path
) -> None:
    """What a new bundle does to a running cluster: the virtualenv changes under a unit whose
    own files do not. Only ctl2's changes here (its mount is an overlay of this machine's)."""
    ctl2 = lab.hosts.hosts["ctl2"].name
    wheel = _probe_wheel(tmp_path, "1.0")
    subprocess.run(["podman", "cp", str(wheel), f"{ctl2}:/tmp/{wheel.name}"], check=True, timeout=60)
    installed = subprocess.run(
        ["podman", "exec", ctl2, f"{sys.prefix}/bin/python", "-m", "pip", "install", "--no-index",
         "--no-deps", "--quiet", f"/tmp/{wheel.name}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr
    assert not any(Path(sys.prefix).glob("lib/python*/site-packages/appliance_release_probe*")), (
        "the probe reached this machine's virtualenv"
    )
    before = {host: lab.invocation(host) for host in GROUPS}
    with Load(lab, clients=1) as load:  # one client: the up itself needs the two cores here
        code, result, output = lab.cli("up", label="up after ctl2's virtualenv changed")
    assert code == 0, output[-6000:]
    assert result["ctl1"]["changed"] == 0, result
    assert result["ctl2"]["changed"] > 0, result
    after = {host: lab.invocation(host) for host in GROUPS}
    assert after["ctl1"] == before["ctl1"], "ctl1's server restarted though its virtualenv is unchanged"
    assert after["ctl2"] != before["ctl2"], "ctl2's server still runs the virtualenv it started with"
    assert load.count() > 20
    assert load.failed() == [], load.failed()[:10]


def test_a_second_up_changes_nothing_on_either_host(lab: MlflowLab) -> None:
    """After the up above, too: each unit remembered the virtualenv it restarted with."""
    code, result, output = lab.cli("up", label="second up")
    assert code == 0, output[-6000:]
    assert {h: r["changed"] for h, r in result.items()} == {"ctl1": 0, "ctl2": 0}, result


SCHEMA_RELEASE = "/var/lib/appliance/mlflow-schema-release"


def test_a_new_mlflow_release_migrates_the_schema_once_on_the_database_host(lab: MlflowLab) -> None:
    """What an upgrade to another MLflow release does to the schema: with the release the schema
    was last migrated for older than the installed one, the next up runs ``mlflow db upgrade`` on
    ctl1 (the database's host) alone, before any server would start on the new release, and
    records the release; ctl2 runs no migration. The schema is already the newest here, so the
    migration keeps its alembic head and neither server restarts for it."""
    from importlib.metadata import version

    head = "runuser -u postgres -- psql -tA -d mlflow -c 'select version_num from alembic_version'"
    assert lab.hosts.ssh("ctl1", f"cat {SCHEMA_RELEASE}").stdout.strip() == version("mlflow")
    assert lab.hosts.ssh("ctl2", f"test -e {SCHEMA_RELEASE}").returncode != 0, "ctl2 holds no database"
    schema = lab.hosts.ssh("ctl1", head).stdout.strip()
    assert schema, "no alembic_version row in ctl1's mlflow database"
    assert lab.hosts.ssh("ctl1", f"echo 2.0.0 > {SCHEMA_RELEASE}").returncode == 0
    before = {host: lab.invocation(host) for host in GROUPS}
    code, result, output = lab.cli("up", label="up after the MLflow release changed")
    assert code == 0, output[-6000:]
    assert result["ctl1"]["changed_tasks"] == [
        "Migrate MLflow's tracking schema (mlflow db upgrade)",
        "Remember the MLflow release the schema is at",
    ], result["ctl1"]
    assert result["ctl2"]["changed"] == 0, result["ctl2"]
    assert lab.hosts.ssh("ctl1", f"cat {SCHEMA_RELEASE}").stdout.strip() == version("mlflow")
    assert lab.hosts.ssh("ctl1", head).stdout.strip() == schema
    assert {host: lab.invocation(host) for host in GROUPS} == before
    for host in GROUPS:
        lab.wait_healthy(host, timeout=30)


def test_a_run_logged_through_one_server_reads_back_through_the_other(lab: MlflowLab, tmp_path: Path) -> None:
    writer = lab.client("ctl2")
    experiment = writer.create_experiment("two-servers")
    run = writer.create_run(experiment)
    for step in range(3):
        writer.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
    note = tmp_path / "note.txt"
    note.write_text("written through ctl2\n")
    writer.log_artifact(run.info.run_id, str(note))  # through ctl2's artifact proxy into S3
    writer.set_terminated(run.info.run_id)

    reader = lab.client("ctl1")
    again = reader.get_run(run.info.run_id)
    assert again.info.experiment_id == experiment and again.info.status == "FINISHED"
    history = reader.get_metric_history(run.info.run_id, "loss")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [1.0, 0.5, 1.0 / 3]
    fetched = Path(reader.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back")))
    assert fetched.read_text() == "written through ctl2\n"


def test_accounts_made_once_log_in_on_both_and_changes_hold_at_once(lab: MlflowLab) -> None:
    # the accounts job (python -m appliance.mlflow_auth) ran once, on ctl1
    assert "appliance-mlflow-users.service" not in lab.hosts.ssh("ctl2", "ls /etc/systemd/system/").stdout
    for user, secret in (
        ("appliance-writer", "mlflow_writer_password"),
        ("appliance-reader", "mlflow_reader_password"),
    ):
        for host in ("ctl1", "ctl2"):
            assert lab.logs_in(host, user, lab.secret(secret)) == 200, (user, host)
            assert lab.logs_in(host, user, "not-the-password") == 401, (user, host)
    # an account made through ctl2 logs in on ctl1 at once; a new password made through ctl1 is
    # the only one ctl2 accepts right after (no cached login outlives it)
    with lab.admin("ctl2") as ctl2, lab.admin("ctl1") as ctl1:
        made = ctl2.post(
            "/api/2.0/mlflow/users/create", json={"username": "analyst", "password": "first-Pass-1234"}
        )
        assert made.status_code == 200, made.text
        assert lab.logs_in("ctl1", "analyst", "first-Pass-1234") == 200
        assert lab.logs_in("ctl2", "analyst", "first-Pass-1234") == 200
        body = {"username": "analyst", "password": "second-Pass-5678"}
        changed = ctl1.patch("/api/2.0/mlflow/users/update-password", json=body)
        assert changed.status_code == 200, changed.text
    assert lab.logs_in("ctl2", "analyst", "first-Pass-1234") == 401
    assert lab.logs_in("ctl2", "analyst", "second-Pass-5678") == 200


class Load:
    """Clients searching experiments through the gateway as the writer, each on its own
    keep-alive HTTPS connection, every answer recorded."""

    def __init__(self, lab: MlflowLab, clients: int = 3) -> None:
        context = ssl.create_default_context(cadata=lab.secret("tls_ca_cert") + "\n")
        self.url = f"https://{lab.address('ctl1')}:{GATEWAY}"
        self.auth = ("appliance-writer", lab.secret("mlflow_writer_password"))
        self.context = context
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answers: list[tuple[float, int | str]] = []
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _client(self) -> None:
        with httpx.Client(
            base_url=self.url, auth=self.auth, verify=self.context, timeout=10, trust_env=False
        ) as client:
            while not self.stop.is_set():
                try:
                    status: int | str = client.get(SEARCH, params={"max_results": 5}).status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                with self.lock:
                    self.answers.append((time.monotonic(), status))

    def failed(self) -> list[tuple[float, int | str]]:
        with self.lock:
            return [a for a in self.answers if a[1] != 200]

    def count(self) -> int:
        with self.lock:
            return len(self.answers)


def test_through_the_gateway_no_request_fails_while_either_server_is_stopped(lab: MlflowLab) -> None:
    started = time.monotonic()
    with Load(lab) as load:
        time.sleep(2)
        for host in ("ctl1", "ctl2"):  # ctl1's is the gateway's own host, ctl2's across the network
            before = load.count()
            lab.systemctl(host, "stop")
            # the load runs on while the server is down: at least 20 answers (on a slow machine a
            # fixed few seconds held fewer: every request checks its password's scrypt hash)
            deadline = time.monotonic() + 60
            while load.count() - before <= 20 and time.monotonic() < deadline:
                time.sleep(0.5)
            # a write through the gateway while the server is down lands on the other one
            gateway = httpx.Client(
                base_url=load.url, auth=load.auth, verify=load.context, timeout=10, trust_env=False
            )
            with gateway:
                made = gateway.post(
                    "/api/2.0/mlflow/experiments/create", json={"name": f"while-{host}-stopped"}
                )
            assert made.status_code == 200, made.text
            assert load.count() - before > 20, "the load kept running while the server was stopped"
            lab.systemctl(host, "start")
            lab.wait_healthy(host)
            time.sleep(2)
    lab.timings["gateway load, each server stopped in turn"] = time.monotonic() - started
    assert load.count() > 100
    assert load.failed() == [], load.failed()[:10]
    names = {e.name for e in lab.client("ctl2").search_experiments()}
    assert {"while-ctl1-stopped", "while-ctl2-stopped"} <= names
