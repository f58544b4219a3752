"""The lifecycle across four hosts from one answers file, through the real CLI, Ansible, SSH,
torchrun, MLflow on PostgreSQL, SeaweedFS, the gateway, Prometheus, Alertmanager and the controller:
``ctl`` (control, gateway, monitoring, and a train worker), ``sto`` (storage: SeaweedFS's volume
server), ``srv`` (serving) and ``trn`` (train worker).

Preflight and plan per host, up to healthy, a second up that changes nothing, status per host;
the dataset seeded into the object store; ``cluster train --hosts 2`` (torchrun on ctl and trn)
registers v1 in MLflow on PostgreSQL; the gateway serves it from srv's two replicas. Then, with a
load through the gateway all along, the traffic and the newest data drift: Prometheus's drift
alert (PSI over both replicas' traffic) reaches the controller through Alertmanager, the
controller's retrain pipeline runs its train step on two hosts (``hosts: 2``: launched from ctl
with the launcher key ``cluster up`` made there), v2 is promoted and both of srv's replicas serve
it, and no request fails.

The model is wine (scikit-learn's 13-feature, 3-class set); the other cluster modules train and
serve breast_cancer and their own test models. Hosts are podman containers running systemd
(tests/integration/_cluster_hosts.py) from the cached image; ``pytest -s`` prints the timings."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pytest

from appliance.monitoring.generate import CONTROLLER_TOKEN_SECRET
from tests.conftest import run_cli
from tests.integration._cluster_lab import LOAD_PACE_S, ClusterLab, cluster_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

GROUPS = {
    "ctl": ["control", "gateway", "monitoring", "train_workers"],
    "sto": ["storage"],
    "srv": ["serving"],
    "trn": ["train_workers"],
}
MODEL = "wine"
PIPELINE = "retrain-hosts"
GATEWAY_PORT, PROMETHEUS, CONTROLLER, MLFLOW, S3 = 8443, 9090, 8090, 5000, 8333
PSI_THRESHOLD = 0.2
DRIFT_FOR_SECONDS = 10
REPLICAS = 2
SHIFT_SIGMAS = 3.0
JOB = ["--dataset", MODEL, "--seed", "3", "--epochs", "30", "--model-name", MODEL]
RETRAIN = f"""\
# The drift retrain across two train workers: the newest dataset file pinned by ingest, then the
# built-in trainer's whole run under torchrun on two hosts, rank 0 registering and promoting.
name: {PIPELINE}
model: {MODEL}
parameters: {{dataset: {MODEL}, epochs: 30}}
steps:
  - name: ingest
    builtin: ingest
    args: {{dataset: "{{params.dataset}}", refresh: "false"}}
  - name: train
    run: ["{{python}}", "-m", "appliance.workloads.trainer", "run", "--dataset", "{{params.dataset}}",
          "--dataset-key", "{{steps.ingest.outputs.dataset_key}}", "--model-name", "{{model}}",
          "--seed", "3", "--epochs", "{{params.epochs}}"]
    hosts: 2
    outputs: {{version: "train.json#version", decision: "train.json#decision"}}
    timeout_seconds: 900
"""
T = TypeVar("T")


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, every: float = 1.0) -> T:
    """Poll ``probe`` until it gives a value: None, False and an empty collection mean "not yet"
    (0 and 0.0 are values: a PSI of 0.0 is an answer)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False and not (isinstance(value, Sized) and len(value) == 0):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@dataclass
class LifecycleLab(ClusterLab):
    phases: dict[str, float] = field(default_factory=dict)

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def get(
        self, port: int, path: str, user: str | None = None, password: str | None = None, bearer: str = ""
    ) -> Any:
        import httpx

        auth = (user, password) if user and password else None
        headers = {"Authorization": f"Bearer {self.secret(bearer)}"} if bearer else {}
        reply = httpx.get(
            f"http://{self.address('ctl')}:{port}{path}", auth=auth, headers=headers, timeout=10
        )
        reply.raise_for_status()
        return reply.json()

    def prom(self, query: str) -> list[dict[str, Any]]:
        found = self.get(
            PROMETHEUS, f"/api/v1/query?query={query}", "appliance", self.secret("prometheus_web_password")
        )
        return list(found["data"]["result"])

    def mlflow(self) -> Any:
        import os

        from mlflow import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"] = "appliance-reader"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = self.secret("mlflow_reader_password")
        return MlflowClient(f"http://{self.address('ctl')}:{MLFLOW}")

    def s3(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=f"http://{self.address('ctl')}:{S3}",
            aws_access_key_id="appliance-writer",
            aws_secret_access_key=self.secret("seaweedfs_writer_secret_key"),
            region_name="us-east-1",
            config=Config(retries={"max_attempts": 3}, connect_timeout=10, read_timeout=60),
        )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LifecycleLab]:
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "health_timeout_seconds": 300,
        "object_store": {"kind": "seaweedfs", "replication": 1},
        "tls": {"enabled": True},
        "components": {"workbench": False, "dashboards": False},
        "models": [{"name": MODEL, "dataset": MODEL, "pipeline": PIPELINE}],
        # Two replicas on srv behind its balancer: the drift alert reads PSI over both replicas'
        # traffic, and the hot reload of v2 swaps both.
        "serving": {"poll_seconds": 1, "min_replicas": REPLICAS, "max_replicas": REPLICAS},
        "monitoring": {
            "drift_psi_threshold": PSI_THRESHOLD,
            "drift_for": f"{DRIFT_FOR_SECONDS}s",
            "scrape_interval": "2s",
            "evaluation_interval": "2s",
            "alert_group_wait": "1s",
            "retrain_cooldown_seconds": 600,
        },
        "cluster": {"train": {"nproc_per_node": 1, "rdzv_port": 29412}},
    }
    with cluster_lab(tmp_path_factory, "cluster-lifecycle", GROUPS, base, LifecycleLab) as lab:
        yield lab


def _units_on(lab: LifecycleLab, host: str) -> list[str]:
    done = lab.hosts.ssh(host, "ls /etc/systemd/system/ | grep '^appliance-' || true")
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_four_hosts_from_one_answers_file_preflight_plan_up_a_second_up_and_status(lab: LifecycleLab) -> None:
    code, checked, output = lab.cli("preflight")
    assert code == 0, output
    assert {h: r["state"] for h, r in checked.items()} == dict.fromkeys(GROUPS, "ok"), checked
    code, planned, output = lab.cli("plan")
    assert code == 0, output
    assert all(planned[h]["changed"] > 0 for h in GROUPS), planned
    assert all(_units_on(lab, h) == [] for h in GROUPS)  # check mode: nothing written yet
    created = {h: {a["service"] for a in r["services"] if a["verb"] == "create"} for h, r in planned.items()}
    assert {"serving", "node-exporter"} <= created["srv"] and "serving" not in created["ctl"], created
    assert "seaweedfs-volume" in created["sto"] and {"mlflow", "gateway"} <= created["ctl"], created

    code, result, output = lab.cli("up", timeout=1500)
    assert code == 0, output[-6000:]
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
    assert "appliance-seaweedfs-volume.service" in _units_on(lab, "sto")
    assert "appliance-serving.service" in _units_on(lab, "srv")
    assert {"appliance-controller.service", "appliance-gateway.service"} <= set(_units_on(lab, "ctl"))

    # the second up as a person runs it: a table of the hosts, and each service's progress
    code, out, err = lab.run("cluster", "up", label="second up")
    assert code == 0, (out + err)[-6000:]
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in GROUPS]
    assert {row[0]: int(row[3]) for row in rows} == dict.fromkeys(GROUPS, 0), out  # changed=0
    lines = [line.split() for line in err.splitlines()]
    services = [row for row in lines if len(row) == 8 and row[2] == "service" and row[-1] == "ready)"]
    last = {row[0]: row for row in services}  # HOST STATE service NAME (READY of TOTAL ready)
    assert set(last) == set(GROUPS), err[-6000:]
    assert all(row[4].lstrip("(") == row[6] for row in last.values()), last  # all ready on each host
    assert all(row[1] in ("running", "healthy") for row in services), services  # none (re)started
    assert ["srv", "healthy", "service", "serving"] in [row[:4] for row in services], services

    code, status, output = lab.cli("status")
    assert code == 0, output
    assert set(status) == set(GROUPS), status
    for host, units in status.items():
        assert all(state.startswith("active") for state in units.values()), (host, units)
    assert status["srv"]["serving"].startswith("active") and status["sto"]["seaweedfs-volume"].startswith(
        "active"
    )


def test_the_launcher_key_stays_on_the_control_host_and_workers_admit_it_from_there_only(
    lab: LifecycleLab,
) -> None:
    folder = "/var/lib/appliance/train-launcher"
    mode = lab.hosts.ssh("ctl", f"stat -c '%a %U' {folder}/id_ed25519 {folder}/inventory.yml").stdout.split(
        "\n"
    )
    assert mode[:2] == ["600 appliance", "600 appliance"], mode
    for worker in ("ctl", "trn"):
        keys = lab.hosts.ssh(worker, "cat /var/lib/appliance-launch/.ssh/authorized_keys").stdout
        assert keys.startswith(f'from="{lab.address("ctl")}",'), keys
        env = lab.hosts.ssh(worker, "stat -c '%a %U' /var/lib/appliance/secrets/train_job_env.json").stdout
        assert env.strip() == "600 appliance", env
    assert lab.hosts.ssh("trn", f"test -e {folder}").returncode != 0  # the key pair never left ctl
    # Each worker's rendezvous settings: the first train worker (ctl) hosts it.
    for name, is_host in (("ctl", "true"), ("trn", "false")):
        env = lab.hosts.ssh(name, "cat /var/lib/appliance/config/torchrun.env").stdout
        assert f"APPLIANCE_TRAIN_RDZV_ENDPOINT={lab.address('ctl')}:29412" in env, env
        assert f"APPLIANCE_TRAIN_RDZV_IS_HOST={is_host}" in env and "APPLIANCE_TRAIN_NNODES=2" in env, env
        assert f"APPLIANCE_TRAIN_LOCAL_ADDR={lab.address(name)}" in env, env
    assert "torchrun.env" not in lab.hosts.ssh("srv", "ls /var/lib/appliance/config").stdout
    assert lab.hosts.ssh("srv", "id appliance-launch").returncode != 0  # only train workers admit it


def _seed(lab: LifecycleLab) -> tuple[list[str], np.ndarray, np.ndarray]:
    """wine's CSV (``appliance data seed``, here) in the cluster's object store; its columns."""
    local = lab.work / "seed"
    answers = lab.work / "seed.yaml"
    answers.write_text(json.dumps({"object_store": {"kind": "filesystem"}}))
    seeded = run_cli("data", "seed", "--dataset", MODEL, answers=answers, state=local, check=False)
    assert seeded.returncode == 0, seeded.stderr
    (csv,) = (local / "data" / "datasets" / MODEL).glob("*.csv")
    lab.s3().put_object(Bucket="datasets", Key=f"{MODEL}/{csv.name}", Body=csv.read_bytes())
    frame = pd.read_csv(csv)
    names = [c for c in frame.columns if c != "target"]
    return names, frame[names].to_numpy(np.float32), frame["target"].to_numpy()


class Load:
    """Keep-alive HTTPS clients through the gateway posting batches of rows for the model; every
    failure and every answering version counted."""

    def __init__(self, lab: LifecycleLab, rows: np.ndarray, clients: int = 3) -> None:
        self.rows = rows
        self.context = ssl.create_default_context(cadata=lab.secret("tls_ca_cert") + "\n")
        self.token = lab.secret("serving_token")
        self.address = lab.address("ctl")
        self.stop = threading.Event()
        self.failures: list[str] = []
        self.versions: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=15)

    def _connect(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.address, GATEWAY_PORT, context=self.context, timeout=10)

    def _client(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        connection = self._connect()
        while not self.stop.is_set():
            rows = self.rows[rng.integers(0, len(self.rows), 8)]
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": list(rows.shape),
                            "datatype": "FP32",
                            "data": rows.ravel().tolist(),
                        }
                    ]
                }
            )
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.token}"}
            try:
                connection.request("POST", f"/v2/models/{MODEL}/infer", body, headers)
                answer = connection.getresponse()
                payload = answer.read()
                with self.lock:
                    if answer.status == 200:
                        self.versions[str(json.loads(payload)["model_version"])] += 1
                    else:
                        self.failures.append(f"{answer.status}: {payload[:200]!r}")
            except (OSError, http.client.HTTPException) as err:
                with self.lock:
                    self.failures.append(f"{type(err).__name__}: {err}")
                connection.close()
                connection = self._connect()
            time.sleep(LOAD_PACE_S)


def _full_window_psi(lab: LifecycleLab) -> float | None:
    """The model's largest feature PSI once its drift window is full (a few rows' PSI is noise)."""
    if not lab.prom(f'appliance_drift_window_rows{{model="{MODEL}"}} >= 1000'):
        return None
    rows = lab.prom(f'max(appliance_feature_psi{{model="{MODEL}"}})')
    return float(rows[0]["value"][1]) if rows else None


def _replicas_answering(lab: LifecycleLab, version: str, window: str = "20s") -> int:
    """How many of srv's replicas answered ``version`` of the model within ``window``, from the
    supervisor's exposition that Prometheus scrapes (one ``replica`` label each)."""
    rows = lab.prom(
        "count(sum by (replica) (increase(appliance_inference_requests_total"
        f'{{model="{MODEL}", version="{version}", outcome="success", replica!=""}}[{window}])) > 0)'
    )
    return int(float(rows[0]["value"][1])) if rows else 0


def _drift_alerts(lab: LifecycleLab, state: str | None = None) -> list[dict[str, Any]]:
    """The model's drift alerts Prometheus holds (pending or firing; ``state`` picks one)."""
    found = lab.get(PROMETHEUS, "/api/v1/alerts", "appliance", lab.secret("prometheus_web_password"))
    return [
        a
        for a in found["data"]["alerts"]
        if a["labels"].get("alertname") in ("FeatureDrift", "PredictionDrift")
        and a["labels"].get("model") == MODEL
        and (state is None or a["state"] == state)
    ]


def _runs(lab: LifecycleLab) -> list[dict[str, Any]]:
    return list(lab.get(CONTROLLER, f"/runs?model={MODEL}", bearer=CONTROLLER_TOKEN_SECRET)["runs"])


def test_seed_train_on_two_hosts_serve_then_a_drift_alert_retrains_on_two_hosts_and_rolls_out(
    lab: LifecycleLab,
) -> None:
    started = time.monotonic()
    names, x, y = _seed(lab)
    code, out, err = lab.run("cluster", "train", "--hosts", "2", "--json", *JOB, timeout=900)
    assert code == 0, out[-3000:] + err[-3000:]
    job = json.loads(out)
    assert {h: r["state"] for h, r in job["hosts"].items()} == {"ctl": "ok", "trn": "ok"}, job
    first = job["summary"]
    assert first["version"] == "1" and first["world_size"] == 2 and first["promoted"] is True, first
    lab.phases["seed and train v1 on two hosts"] = time.monotonic() - started
    tails = [line for host in ("ctl", "trn") for line in job["hosts"][host]["stdout_tail"]]
    assert any("rank 1/2" in line for line in tails), job["hosts"]  # the other node trained rank 1
    # Registered in MLflow, whose rows are in the control host's PostgreSQL.
    rows = lab.hosts.ssh(
        "ctl",
        "runuser -u postgres -- psql -d mlflow -tAc "
        f"\"SELECT version FROM model_versions WHERE name = '{MODEL}'\"",
    )
    assert rows.returncode == 0 and rows.stdout.split() == ["1"], rows.stdout + rows.stderr

    # The retrain pipeline the controller finds first (STATE/pipelines on the control host).
    pipeline = lab.work / f"{PIPELINE}.yaml"
    pipeline.write_text(RETRAIN)
    ctl = lab.hosts.hosts["ctl"].name
    lab.hosts.ssh("ctl", "install -d -o appliance -g appliance -m 0750 /var/lib/appliance/pipelines")
    subprocess.run(["podman", "cp", str(pipeline), f"{ctl}:/var/lib/appliance/pipelines/"], check=True)
    lab.hosts.ssh("ctl", "chown appliance:appliance /var/lib/appliance/pipelines/*")

    shifted = (x + SHIFT_SIGMAS * x.std(axis=0)).astype(np.float32)
    with Load(lab, x) as load:
        wait_for("v1 answering through the gateway", lambda: load.versions["1"] > 20, 180)
        lab.phases["v1 served through the gateway"] = time.monotonic() - started
        wait_for("both replicas answering v1", lambda: _replicas_answering(lab, "1") == REPLICAS, 60, 2)

        # In distribution first: a full drift window, its PSI under the threshold, no drift alert.
        def settled() -> float | None:
            psi = _full_window_psi(lab)
            return psi if psi is not None and psi < PSI_THRESHOLD and _drift_alerts(lab) == [] else None

        psi = wait_for("a full in-distribution window, PSI under the threshold, no alert", settled, 300, 2)
        assert _runs(lab) == [], "a run started before the drift"
        print(f"\nin-distribution PSI with a full window: {psi:.3f}")
        # Drift: the live traffic and the newest data shift together.
        drift, shifted_at = time.monotonic(), time.time()
        load.rows = shifted
        frame = pd.DataFrame(shifted, columns=names).assign(target=y)
        time.sleep(1.1)  # a later LastModified than the seeded file
        lab.s3().put_object(
            Bucket="datasets", Key=f"{MODEL}/{MODEL}-shifted.csv", Body=frame.to_csv(index=False)
        )
        states: set[str] = set()

        def firing_alerts() -> list[dict[str, Any]]:
            alerts = _drift_alerts(lab)
            states.update(a["state"] for a in alerts)
            return [a for a in alerts if a["state"] == "firing"]

        firing = wait_for("the drift alert firing", firing_alerts, 300, 2)
        lab.phases["drift to alert"] = time.monotonic() - drift
        assert {a["labels"]["alertname"] for a in firing} <= {"FeatureDrift", "PredictionDrift"}, firing
        # The alert went through drift_for's pending first: its expression turned true after the
        # shift (not already on in-distribution traffic), and it fired no sooner than drift_for
        # later. Containers share this machine's clock, so activeAt compares with time.time().
        assert "pending" in states, (states, firing)
        active = min(datetime.fromisoformat(a["activeAt"]).timestamp() for a in firing)
        assert active > shifted_at - 1, (active - shifted_at, firing)
        assert lab.phases["drift to alert"] >= DRIFT_FOR_SECONDS, (lab.phases["drift to alert"], firing)
        lab.phases["shift to drift expression true"] = active - shifted_at
        run = wait_for("the controller's run from the alert", lambda: next(iter(_runs(lab)), None), 120, 2)
        assert run["trigger"] == "alert" and run["params"]["dataset"] == MODEL, run

        def finished() -> dict[str, Any] | None:
            found: dict[str, Any] = lab.get(CONTROLLER, f"/runs/{run['id']}", bearer=CONTROLLER_TOKEN_SECRET)
            return None if found["state"] == "running" else found

        done = wait_for("the retrain run to finish", finished, 900, 3)
        assert done["state"] == "succeeded", json.dumps(done, indent=1)[-4000:]
        assert (done["outcome"], done["version"]) == ("promoted", "2"), done
        lab.phases["alert to promoted"] = time.monotonic() - drift - lab.phases["drift to alert"]
        wait_for("v2 answering through the gateway", lambda: load.versions["2"] > 50, 180)
        lab.phases["drift to v2 served"] = time.monotonic() - drift
        wait_for("both replicas answering v2", lambda: _replicas_answering(lab, "2") == REPLICAS, 60, 2)
        wait_for("no replica answering v1 any more", lambda: _replicas_answering(lab, "1", "8s") == 0, 60, 2)
    print(f"\nlifecycle phases (s): {json.dumps({k: round(v, 1) for k, v in lab.phases.items()})}")
    print(f"requests through the gateway: {dict(load.versions)}, failed: {len(load.failures)}")
    assert load.failures == [], load.failures[:10]
    assert load.versions["1"] > 100 and load.versions["2"] > 50, load.versions

    # v2 came from the train step on two hosts: torchrun's world of two, rank 0 registering.
    steps = {s["name"]: s for s in done["steps"]}
    assert steps["train"]["state"] == "succeeded", steps
    client = lab.mlflow()
    version = client.get_model_version(MODEL, "2")
    params = client.get_run(version.run_id).data.params
    assert params["world_size"] == "2" and params["nodes"] == "2", params
    assert client.get_model_version_by_alias(MODEL, "champion").version == "2"


def test_a_job_that_cannot_run_names_the_failing_hosts_and_exits_non_zero(lab: LifecycleLab) -> None:
    code, out, err = lab.run("cluster", "train", "--hosts", "3", "--dataset", MODEL)
    assert code != 0 and "train_workers group has 2 host(s)" in err and "--hosts 1..2" in err, err
    code, out, err = lab.run("cluster", "train", "--hosts", "2", "--dataset", "no_such_data")
    assert code == 1, out + err
    assert "failed on" in err and "ctl (node 0): failed" in err, err
    assert "no_such_data" in err and "fix:" in err, err
    # Progress per host as the job goes: each started as its node, then its end.
    assert "torchrun node 0 of 2" in err and "torchrun node 1 of 2" in err, err
    # The control host's launcher, as a pipeline step runs it, refuses more hosts than its inventory.
    done = lab.hosts.ssh(
        "ctl",
        f"cd /tmp && runuser -u appliance -- {sys.prefix}/bin/python -m appliance.cluster.train launch "
        "--launcher /var/lib/appliance/train-launcher --hosts 3 --summary /tmp/s.json -- --dataset wine",
    )
    assert done.returncode == 1 and "has 2 host(s) (ctl, trn)" in done.stderr, done.stdout + done.stderr
