"""The registry a cluster shares, and an edge host that follows it, through the real CLI, Ansible,
SSH, PostgreSQL, SeaweedFS, nginx and Prometheus. Three hosts: ``ctl1`` runs PostgreSQL (tracking
and accounts databases), the object store, the accounts job, the TLS gateway and monitoring;
``ctl2`` a second MLflow server on ``ctl1``'s PostgreSQL and S3 store; ``edge1`` (the edge group)
a model server alone, reading the registry through the gateway with an account of its own.

The two MLflow servers: both answer; a run logged through one (metrics and an artifact) reads back
through the other; the accounts the accounts job made once log in on both, and an account made or
changed through one server holds on the other at once; through the gateway no request fails while
either server is stopped; a package new in ctl2's virtualenv (what a new bundle brings) restarts
ctl2's server alone on the next up, with no failed request through the gateway; the up after that,
with the schema's record naming an older MLflow release, migrates it once, on ctl1, and changes
nothing else on any host.

The edge: two models of different shapes are registered and promoted; the edge serves both. Its
network link is then cut (``podman network disconnect``): it keeps answering, a new champion
promoted meanwhile does not reach it, and a restart of its model server loads the cached versions.
Reconnected, it serves the new champion, and ctl1's Prometheus scrapes its model server again.
Its account goes when its line leaves the inventory, and no one else's does; the object store's
HTTP guard drops its address by a reload, the store's process kept.

Hosts are podman containers running systemd (tests/integration/_cluster_hosts.py) from the cached
host image; `pytest tests/integration/test_cluster_registry.py -s` prints the timings."""

from __future__ import annotations

import base64
import hashlib
import json
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
import numpy as np
import pytest

from appliance.mlflow_auth import READER_USER, edge_account, edge_secret
from tests.integration._cluster_lab import LOAD_PACE_S, ClusterLab, cluster_lab
from tests.integration._serving_fixtures import write_mlp
from tests.integration.test_edge_follows_registry import LIN_X, MLP_X, expected, register, write_linear

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

GROUPS = {"ctl1": ["control", "monitoring"], "ctl2": ["control"], "edge1": ["edge"]}
SERVERS = ("ctl1", "ctl2")
"""The hosts running an MLflow server (the control group)."""
MLFLOW, GATEWAY = 5000, 5443
STATE = "/var/lib/appliance"
SEARCH = "/api/2.0/mlflow/experiments/search"


@dataclass
class MlflowLab(ClusterLab):
    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def server(self, host: str) -> str:
        return f"http://{self.address(host)}:{MLFLOW}"

    def client(self, host: str) -> Any:
        """An MLflow client of ``host``'s server, as the writer account (the ``lab`` fixture sets
        its credentials for the module's tests alone)."""
        from mlflow import MlflowClient

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
        "tls": {"enabled": True},  # the edge reads the registry through the gateway
        "components": {"workbench": False, "controller": False, "dashboards": False},
        "models": [{"name": "fraud"}, {"name": "churn"}],
        "serving": {"poll_seconds": 1},
        "monitoring": {"scrape_interval": "2s"},  # the edge's target up again in seconds
    }
    with (
        cluster_lab(tmp_path_factory, "cluster-registry", GROUPS, base, MlflowLab, overlay=("ctl2",)) as lab,
        pytest.MonkeyPatch.context() as env,
    ):
        code, result, output = lab.cli("up", label="cold up")
        assert code == 0, output[-6000:]
        assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
        # MLflow's clients read their account from the environment: the writer's, while this
        # module runs and not in the modules after it
        env.setenv("MLFLOW_TRACKING_USERNAME", "appliance-writer")
        env.setenv("MLFLOW_TRACKING_PASSWORD", lab.secret("mlflow_writer_password"))
        yield lab


def test_both_servers_answer_with_the_database_on_the_first_control_host_only(lab: MlflowLab) -> None:
    for host in SERVERS:
        assert httpx.get(f"{lab.server(host)}/health", timeout=10, trust_env=False).status_code == 200
        env = lab.hosts.ssh(host, "stat -c '%a %U' /etc/appliance-mlflow.env").stdout.strip()
        assert env == "600 root", host
    units = lab.hosts.ssh("ctl2", "ls /etc/systemd/system/ | grep '^appliance-' || true").stdout.split()
    assert units == ["appliance-mlflow.service", "appliance-node-exporter.service"], units
    state = lab.hosts.ssh("ctl2", "systemctl is-active postgresql.service").stdout.strip()
    assert state and state != "active", state  # an empty answer: SSH itself failed
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
    before = {host: lab.invocation(host) for host in SERVERS}
    with Load(lab, clients=1) as load:  # one client: the up itself needs the two cores here
        code, result, output = lab.cli("up", label="up after ctl2's virtualenv changed")
    assert code == 0, output[-6000:]
    assert result["ctl1"]["changed"] == 0 and result["edge1"]["changed"] == 0, result
    assert result["ctl2"]["changed"] > 0, result
    after = {host: lab.invocation(host) for host in SERVERS}
    assert after["ctl1"] == before["ctl1"], "ctl1's server restarted though its virtualenv is unchanged"
    assert after["ctl2"] != before["ctl2"], "ctl2's server still runs the virtualenv it started with"
    assert load.count() > 20
    assert load.failed() == [], load.failed()[:10]


SCHEMA_RELEASE = "/var/lib/appliance/mlflow-schema-release"


def test_a_new_mlflow_release_migrates_the_schema_once_on_the_database_host(lab: MlflowLab) -> None:
    """What an upgrade to another MLflow release does to the schema: with the release the schema
    was last migrated for older than the installed one, the next up runs ``mlflow db upgrade`` on
    ctl1 (the database's host) alone, before any server would start on the new release, and
    records the release; ctl2 runs no migration. The schema is already the newest here, so the
    migration keeps its alembic head and neither server restarts for it. Run right after the up
    that restarted ctl2's server for its new package, it also shows that up to be the last one
    needed: nothing else changes on any host (each unit remembered the virtualenv it restarted
    with)."""
    from importlib.metadata import version

    head = "runuser -u postgres -- psql -tA -d mlflow -c 'select version_num from alembic_version'"
    assert lab.hosts.ssh("ctl1", f"cat {SCHEMA_RELEASE}").stdout.strip() == version("mlflow")
    assert lab.hosts.ssh("ctl2", f"test -e {SCHEMA_RELEASE}").returncode != 0, "ctl2 holds no database"
    schema = lab.hosts.ssh("ctl1", head).stdout.strip()
    assert schema, "no alembic_version row in ctl1's mlflow database"
    assert lab.hosts.ssh("ctl1", f"echo 2.0.0 > {SCHEMA_RELEASE}").returncode == 0
    before = {host: lab.invocation(host) for host in SERVERS}
    code, result, output = lab.cli("up", label="up after the MLflow release changed")
    assert code == 0, output[-6000:]
    assert result["ctl1"]["changed_tasks"] == [
        "Migrate MLflow's tracking schema (mlflow db upgrade)",
        "Remember the MLflow release the schema is at",
    ], result["ctl1"]
    assert result["ctl2"]["changed"] == 0 and result["edge1"]["changed"] == 0, result
    assert lab.hosts.ssh("ctl1", f"cat {SCHEMA_RELEASE}").stdout.strip() == version("mlflow")
    assert lab.hosts.ssh("ctl1", head).stdout.strip() == schema
    assert {host: lab.invocation(host) for host in SERVERS} == before
    for host in SERVERS:
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
        for host in SERVERS:
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
                time.sleep(LOAD_PACE_S)

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
        for host in SERVERS:  # ctl1's is the gateway's own host, ctl2's across the network
            before = load.count()
            lab.systemctl(host, "stop")
            # the load runs on while the server is down: at least 20 answers (a fixed few seconds
            # held fewer on a slow machine)
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
    assert load.failed() == [], load.failed()[:10]
    names = {e.name for e in lab.client("ctl2").search_experiments()}
    assert {"while-ctl1-stopped", "while-ctl2-stopped"} <= names


EDGE_INPUTS = {"fraud": (MLP_X, "input"), "churn": (LIN_X, "x")}
"""Each model the edge serves: the rows it is asked about and its input's name."""


def _register(folder: Path, name: str) -> str:
    """A new version of ``name``, made the champion."""
    from mlflow import MlflowClient

    version = register(folder, name, experiment="cluster-edge")
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def _infer(lab: MlflowLab, model: str) -> tuple[str, np.ndarray] | None:
    """One inference on the edge host, from inside it (a cut link cuts this machine off too)."""
    x, input_name = EDGE_INPUTS[model]
    token = lab.secret("serving_token")
    body = {
        "inputs": [
            {"name": input_name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    script = (
        "import json,sys,urllib.request as u\n"
        f"r=u.Request('http://127.0.0.1:8080/v2/models/{model}/infer',data=sys.stdin.buffer.read(),"
        f"headers={{'Authorization':'Bearer {token}','Content-Type':'application/json'}})\n"
        "print(u.urlopen(r,timeout=10).read().decode())"
    )
    done = subprocess.run(
        ["podman", "exec", "-i", lab.hosts.hosts["edge1"].name, "python3", "-c", script],
        input=json.dumps(body), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    out = json.loads(done.stdout)
    return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(x.shape[0], -1)


def _serves(lab: MlflowLab, model: str, version: str, folder: Path, timeout: float = 90) -> None:
    x, input_name = EDGE_INPUTS[model]
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = _infer(lab, model)
        if got is not None and got[0] == version:
            np.testing.assert_allclose(got[1], expected(folder, input_name, x), rtol=1e-5, atol=1e-6)
            return
        time.sleep(1)
    journal = lab.hosts.ssh("edge1", "journalctl -u appliance-serving --no-pager | tail -30").stdout
    raise AssertionError(f"edge1 does not serve {model} version {version} (last answer {got})\n{journal}")


def _link(lab: MlflowLab, up: bool) -> None:
    host = lab.hosts.hosts["edge1"]
    if up:  # back at its inventory address, where the control host's Prometheus scrapes it
        cmd = ["podman", "network", "connect", "--ip", host.address, lab.hosts.network, host.name]
    else:
        cmd = ["podman", "network", "disconnect", lab.hosts.network, host.name]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def test_the_edge_host_follows_the_champion_through_an_outage(
    lab: MlflowLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # registered through ctl1's server, as the writer (the lab fixture's account)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lab.server("ctl1"))
    folders = {
        ("fraud", 1): write_mlp(tmp_path / "fraud1", seed=3),
        ("fraud", 2): write_mlp(tmp_path / "fraud2", seed=4),
        ("churn", 1): write_linear(tmp_path / "churn1", seed=5),
        ("churn", 2): write_linear(tmp_path / "churn2", seed=6),
    }
    v = {
        ("fraud", 1): _register(folders["fraud", 1], "fraud"),
        ("churn", 1): _register(folders["churn", 1], "churn"),
    }
    _serves(lab, "fraud", v["fraud", 1], folders["fraud", 1])
    _serves(lab, "churn", v["churn", 1], folders["churn", 1])
    # the edge reads with its own read-only account: not the writer's, not the other model servers'
    env = lab.hosts.ssh("edge1", "cat /etc/appliance-serving.env").stdout
    assert f'MLFLOW_TRACKING_USERNAME="{edge_account("edge1")}"' in env and "writer" not in env
    assert lab.secret(edge_secret("edge1")) in env
    assert lab.secret("mlflow_reader_password") not in env
    gateway = f"https://{lab.address('ctl1')}:{GATEWAY}"  # MLflow (both servers) through the TLS gateway
    assert f'MLFLOW_TRACKING_URI="{gateway}"' in env, env

    _link(lab, up=False)
    try:
        v["fraud", 2] = _register(folders["fraud", 2], "fraud")  # promoted while the edge is cut off
        time.sleep(3)  # a few polls
        _serves(lab, "fraud", v["fraud", 1], folders["fraud", 1], timeout=10)
        restart = subprocess.run(
            ["podman", "exec", lab.hosts.hosts["edge1"].name, "systemctl", "restart", "appliance-serving"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert restart.returncode == 0, restart.stderr
        _serves(lab, "fraud", v["fraud", 1], folders["fraud", 1], timeout=60)  # from its cache
        _serves(lab, "churn", v["churn", 1], folders["churn", 1], timeout=10)
        pointer = f"{STATE}/serving/cache/fraud/current.json"
        cached = subprocess.run(
            ["podman", "exec", lab.hosts.hosts["edge1"].name, "cat", pointer],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(cached.stdout)["version"] == v["fraud", 1]
    finally:
        _link(lab, up=True)

    _serves(lab, "fraud", v["fraud", 2], folders["fraud", 2])
    v["churn", 2] = _register(folders["churn", 2], "churn")
    _serves(lab, "churn", v["churn", 2], folders["churn", 2])
    assert _edge_scraped(lab), "the control host's Prometheus does not scrape edge1's model server"


def _edge_scraped(lab: MlflowLab, timeout: float = 90) -> bool:
    """ctl1's Prometheus has edge1's model server as a healthy ``serving`` target."""
    url = f"http://{lab.address('ctl1')}:9090/api/v1/targets?state=active"
    password = lab.secret("prometheus_web_password")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = httpx.get(url, auth=("appliance", password), timeout=10, trust_env=False).json()
        for target in found["data"]["activeTargets"]:
            labels = target["labels"]
            if labels.get("job") == "serving" and labels.get("host") == "edge1" and target["health"] == "up":
                return True
        time.sleep(1)
    return False


def _store_process(lab: MlflowLab) -> str:
    """ctl1's object store unit's main process and when it started: the same after a reload."""
    keys = "-p MainPID -p ExecMainStartTimestampMonotonic"
    shown = lab.hosts.ssh("ctl1", f"systemctl show {keys} appliance-seaweedfs.service")
    assert shown.returncode == 0 and "MainPID=0" not in shown.stdout, shown.stdout + shown.stderr
    return shown.stdout


def _master_status_from(lab: MlflowLab, host: str) -> int:
    """The status ctl1's SeaweedFS master answers ``host`` on an admin handler its guard keeps to
    the cluster's addresses (``/dir/status``)."""
    url = f"http://{lab.address('ctl1')}:9333/dir/status"
    fetch = (
        "import sys, urllib.error, urllib.request\n"
        "try:\n print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
        "except urllib.error.HTTPError as err:\n print(err.code)"
    )
    done = lab.hosts.ssh(host, f"python3 -c '{fetch}' '{url}'")
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.strip())


def test_an_edge_host_taken_out_of_the_inventory_loses_its_account_and_no_one_else_does(
    lab: MlflowLab,
) -> None:
    """Last: the edge host leaves the lab's inventory for good. The object store's HTTP guard
    drops its address by a reload: the store's process is the one it was, and refuses edge1's
    call to the master's admin handler that it answered before."""
    password = lab.secret(edge_secret("edge1"))
    reader = lab.secret("mlflow_reader_password")
    for server in SERVERS:
        assert lab.logs_in(server, edge_account("edge1"), password) == 200, server
    store = _store_process(lab)
    assert _master_status_from(lab, "edge1") == 200
    lab.write_answers(members=SERVERS)
    code, result, output = lab.cli("up", label="up without edge1", timeout=600)
    assert code == 0, output[-6000:]
    assert _store_process(lab) == store, "the store restarted: its guard needs a reload only"
    assert _master_status_from(lab, "edge1") == 401
    assert _master_status_from(lab, "ctl2") == 200
    # edge1 is drained and stopped; ctl2 knew nothing of it; ctl1 drops it from the accounts, the
    # store's allowed addresses and Prometheus's targets
    assert "Stop and disable each unit" in result["edge1"]["changed_tasks"], result
    assert result["ctl2"]["changed"] == 0, result["ctl2"]
    assert "Write each job's targets from the inventory" in result["ctl1"]["changed_tasks"], result["ctl1"]
    for server in SERVERS:
        assert lab.logs_in(server, edge_account("edge1"), password) == 401, server
        assert lab.logs_in(server, READER_USER, reader) == 200, server
    # its password went with its account: a host given the name again gets a new one
    assert not (lab.state / "secrets" / edge_secret("edge1")).exists()
    assert lab.secret("mlflow_reader_password") == reader
    stopped = lab.hosts.ssh("edge1", "systemctl is-active appliance-serving.service").stdout.strip()
    assert stopped == "inactive", stopped  # the host leaving was stopped, drained first
