"""The lab stack from the project's own stack file (stacks/services.yaml) as real containers, on
podman and on docker: MLflow, the model server, the retraining controller, Prometheus,
Alertmanager and the node exporter (the workbench is switched off here; test_container_images.py
runs it). Up to healthy, a zero-action plan, the controller answering, Prometheus scraping the
model server and the controller by service name, a retrain started through the controller's API
that trains in the controller's container, registers a version in MLflow and is then served (by
two model-server replicas behind the serving image's nginx, both reached over REST and gRPC), a
killed container restarted by its policy, and, through the CLI as a user runs it: status with each
service's memory, a zero-action plan, a clean failure on a busy port, and a down that removes every
container and network of the stack, keeps its volumes and touches nothing else, the next up finding
the data as they were.

The model server starts with no champion model, so it is live but not ready until the retrain; its
health probe is ``/v2/health/live``. The same tests run on both runtimes (skipped only where an
engine is absent).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.dataconn.client import s3_client
from appliance.engine import Engine
from appliance.runtimes.containers_common import ContainerRuntime
from tests.conftest import run_cli
from tests.integration._container_fixtures import (
    LAB_IMAGES,
    LAB_VOLUMES,
    RUNTIMES,
    assert_down_left_only_volumes,
    bystander,
    ensure_images,
    health,
    kill_and_wait_for_restart,
    lab_engine,
    owned,
    runtime_available,
)
from tests.integration._reload_checks import assert_tuned_alerting_reloads_in_place

# The first test may build the images (base, wheelhouse, mlflow, serving, controller): ~20 min on a
# fresh 2-core machine; with the images present, up takes about a minute.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]

LAB_SERVICES = {
    "seaweedfs",
    "buckets",
    "mlflow",
    "mlflow-users",
    "serving",
    "controller",
    "prometheus",
    "alertmanager",
    "node-exporter",
}
REPLICAS = {"min_replicas": 2, "max_replicas": 2}
ONESHOT = {"mlflow-users", "buckets"}
"""Jobs that ran to completion in their container (no process left)."""


@pytest.fixture(scope="module", params=[pytest.param(r, marks=pytest.mark.runtime(r)) for r in RUNTIMES])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    name = str(request.param)
    if not runtime_available(name):
        pytest.skip(f"{name} is not installed or its daemon does not answer")
    ensure_images(name, LAB_IMAGES)
    # two model-server replicas behind the balancer in the serving container
    engine = lab_engine(name, tmp_path_factory.mktemp(name), {"serving": REPLICAS})
    runtime: Any = engine.runtime
    started = time.monotonic()
    try:
        engine.up()
        print(f"{name}: lab stack up in {time.monotonic() - started:.1f}s")
        yield engine
    finally:
        engine.down()
        runtime.purge()


def prometheus_auth(engine: Engine) -> tuple[str, str]:
    """Prometheus asks for basic auth (user appliance, its generated password)."""
    return "appliance", (engine.ctx.state_dir / "secrets" / "prometheus_web_password").read_text().strip()


def prometheus_query(engine: Engine, query: str) -> list[dict[str, Any]]:
    url = engine.desired["prometheus"].url
    result = httpx.get(
        f"{url}/api/v1/query", params={"query": query}, auth=prometheus_auth(engine), timeout=10
    )
    return list(result.json()["data"]["result"])


def test_up_makes_every_lab_service_healthy(lab: Engine) -> None:
    assert set(lab.desired) == LAB_SERVICES
    assert health(lab) == dict.fromkeys(LAB_SERVICES, "healthy")
    for name, seen in lab.observed().items():
        assert seen.config_hash == lab.desired[name].config_hash
        assert seen.ref and (seen.pid or name in ONESHOT)


def test_plan_after_up_is_empty_and_up_again_changes_nothing(lab: Engine) -> None:
    assert not lab.plan().actions
    assert lab.up().changed == []


def test_the_controller_answers_and_the_server_is_live(lab: Engine) -> None:
    controller = httpx.get(f"{lab.desired['controller'].url}/healthz", timeout=10)
    assert controller.status_code == 200
    live = httpx.get(f"{lab.desired['serving'].url}/health/live", timeout=10)
    assert live.status_code == 200


def test_prometheus_scrapes_serving_and_controller_by_service_name(lab: Engine) -> None:
    deadline = time.monotonic() + 120
    up: dict[str, str] = {}
    while time.monotonic() < deadline:
        up = {s["metric"]["job"]: s["value"][1] for s in prometheus_query(lab, "up")}
        if up.get("serving") == "1" and up.get("controller") == "1":
            break
        time.sleep(2)
    else:
        pytest.fail(f"serving and controller were not both scraped over the stack network: {up}")
    auth = prometheus_auth(lab)
    targets = httpx.get(f"{lab.desired['prometheus'].url}/api/v1/targets", auth=auth, timeout=10).json()
    instances = {t["labels"]["job"]: t["labels"]["instance"] for t in targets["data"]["activeTargets"]}
    assert instances["serving"].startswith("serving:") and instances["controller"].startswith("controller:")
    managers = httpx.get(
        f"{lab.desired['prometheus'].url}/api/v1/alertmanagers", auth=auth, timeout=10
    ).json()
    urls = [m["url"] for m in managers["data"]["activeAlertmanagers"]]
    assert any(u.startswith("http://alertmanager:") for u in urls), urls


def test_a_retrain_through_the_controller_registers_a_version_the_server_then_serves(
    lab: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data seeded into the stack's object store (as the workloads see it, from inside the
    controller's container), a retrain started through the controller's API with its token: the
    trainer steps run in the controller's container, the version lands in MLflow's registry, and the
    model server loads the new champion."""
    runtime: Any = lab.runtime
    controller = runtime._find("controller")
    seed = (
        "import os; from appliance.dataconn import DataConnection; from appliance.dataconn.seed import seed; "
        "print(seed(DataConnection.from_env(os.environ), 'breast_cancer'))"
    )
    code, output = controller.exec_run(["/opt/appliance/bin/python", "-c", seed])
    assert code == 0, output
    token = (lab.ctx.state_dir / "secrets" / "controller_webhook_token").read_text().strip()
    url = lab.desired["controller"].url
    started = time.monotonic()
    reply = httpx.post(
        f"{url}/pipelines/retrain/run",
        json={"params": {"epochs": 20}},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert reply.status_code == 202, reply.text
    run_id = reply.json()["run_id"]
    deadline = time.monotonic() + 900
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = httpx.get(
            f"{url}/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        if run["state"] != "running":
            break
        time.sleep(2)
    print(f"retrain in the controller container: {run['state']} in {time.monotonic() - started:.1f}s")
    assert run["state"] == "succeeded", run
    assert (run["outcome"], run["version"]) == ("promoted", "1"), run

    from mlflow.tracking import MlflowClient

    # MLflow's read-only account is enough to check the registry
    reader = (lab.ctx.state_dir / "secrets" / "mlflow_reader_password").read_text().strip()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "appliance-reader")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", reader)
    client = MlflowClient(lab.desired["mlflow"].url)
    version = client.get_model_version("breast_cancer", "1")
    assert version.status == "READY" and version.run_id
    assert client.get_model_version_by_alias("breast_cancer", "champion").version == "1"
    serving = lab.desired["serving"].url
    deadline = time.monotonic() + 180
    while httpx.get(f"{serving}/health/ready", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "the model server did not load the new champion"
        time.sleep(2)
    print(f"served by the model server {time.monotonic() - started:.1f}s after the retrain started")
    # Everything went through the stack's SeaweedFS: the dataset, and MLflow's artifacts by its proxy.
    store = s3_client(lab.ctx.s3_endpoint, *lab.ctx.s3_credentials("admin"))
    datasets = [o["Key"] for o in store.list_objects_v2(Bucket="datasets").get("Contents", [])]
    assert "breast_cancer/breast_cancer.csv" in datasets
    artifacts = [o["Key"] for o in store.list_objects_v2(Bucket="mlflow").get("Contents", [])]
    assert any(key.endswith("model.onnx") for key in artifacts), artifacts


def test_both_replicas_in_the_serving_container_answer_rest_and_grpc(lab: Engine) -> None:
    """serving.max_replicas 2: the serving container runs the balancer (its image's nginx) and two
    model servers, and requests over REST and gRPC from the host reach both (after the retrain
    above, both serve the champion)."""
    import grpc
    import numpy as np
    from tritonclient.grpc import service_pb2 as pb
    from tritonclient.grpc import service_pb2_grpc as pb_grpc

    ports = lab.ctx.answers.ports
    secrets = lab.ctx.state_dir / "secrets"
    admin = {"Authorization": f"Bearer {(secrets / 'serving_admin_token').read_text().strip()}"}
    auth = {"Authorization": f"Bearer {(secrets / 'serving_token').read_text().strip()}"}
    supervisor = f"http://127.0.0.1:{ports.serving_metrics}"
    deadline = time.monotonic() + 120
    while (state := httpx.get(f"{supervisor}/replicas", headers=admin, timeout=10).json())["ready"] < 2:
        assert time.monotonic() < deadline, state
        time.sleep(1)
    assert len(state["replicas"]) == 2 and len({r["pid"] for r in state["replicas"]}) == 2, state
    serving = lab.desired["serving"].url
    meta = httpx.get(f"{serving}/models/breast_cancer", headers=auth, timeout=10).json()
    features = meta["inputs"][0]["shape"][-1]
    x = np.random.default_rng(5).normal(size=(1, features)).astype(np.float32)
    body = {"inputs": [{"name": meta["inputs"][0]["name"], "datatype": "FP32", "shape": [1, features],
                        "data": x.ravel().tolist()}]}  # fmt: skip
    before = httpx.get(f"{supervisor}/metrics", timeout=30).text
    with httpx.Client(headers=auth, timeout=30) as client:
        for _ in range(30):
            r = client.post(f"{serving}/models/breast_cancer/infer", json=body)
            assert r.status_code == 200, r.text
    with grpc.insecure_channel(f"127.0.0.1:{ports.serving_grpc}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="breast_cancer")
        req.inputs.add(name=meta["inputs"][0]["name"], datatype="FP32", shape=[1, features])
        req.raw_input_contents.append(x.tobytes())
        for _ in range(30):
            stub.ModelInfer(req, metadata=(("authorization", auth["Authorization"]),), timeout=30)
    after = httpx.get(f"{supervisor}/metrics", timeout=30).text
    for protocol in ("rest", "grpc"):
        was, now = _per_replica(before, protocol), _per_replica(after, protocol)
        sent = {k: v - was.get(k, 0.0) for k, v in now.items()}
        assert sum(sent.values()) == 30 and len([v for v in sent.values() if v > 0]) == 2, (protocol, sent)


def _per_replica(text: str, protocol: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("appliance_inference_requests_total{") and all(
            f in line for f in (f'protocol="{protocol}"', 'outcome="success"', 'model="breast_cancer"')
        ):
            replica = line.split('replica="', 1)[1].split('"', 1)[0]
            out[replica] = out.get(replica, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_a_pipeline_the_user_writes_in_state_pipelines_after_up_runs_in_the_controller(
    lab: Engine,
) -> None:
    """STATE/pipelines on the host is where the docs tell users to put their pipelines; the
    controller's container reads it (mounted read-only) on every run, so a file written after
    ``up`` runs there, under its own name, without a restart."""
    name = f"user-{lab.ctx.answers.runtime}"
    folder = lab.ctx.state_dir / "pipelines"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.yaml").write_text(
        f"""
name: {name}
model: breast_cancer
steps:
  - name: hello
    run: ["{{python}}", "-c", "import sys; open('hello.txt', 'w').write(sys.prefix)"]
    outputs: {{where: hello.txt}}
"""
    )
    token = (lab.ctx.state_dir / "secrets" / "controller_webhook_token").read_text().strip()
    url = lab.desired["controller"].url
    reply = httpx.post(
        f"{url}/pipelines/{name}/run", json={}, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert reply.status_code == 202, reply.text
    run_id = reply.json()["run_id"]
    deadline = time.monotonic() + 300
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = httpx.get(
            f"{url}/runs/{run_id}", headers={"Authorization": f"Bearer {token}"}, timeout=10
        ).json()
        if run["state"] != "running":
            break
        time.sleep(1)
    assert run["state"] == "succeeded", run
    assert run["pipeline"] == name, run


def test_a_killed_container_is_restarted_by_its_policy(lab: Engine) -> None:
    kill_and_wait_for_restart(lab, "controller")


def cli(engine: Engine, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The ``appliance`` command a user runs, on the engine's answers file and state directory."""
    return run_cli(*args, answers=engine.ctx.answers_path, state=engine.ctx.state_dir, check=check)


def test_the_clis_status_reports_the_memory_of_every_running_service_and_plan_nothing(lab: Engine) -> None:
    doc = json.loads(cli(lab, "status", "--json").stdout)
    running = {name: s for name, s in doc["services"].items() if name not in ONESHOT}
    memory = {name: s["memory_bytes"] for name, s in running.items()}
    assert set(memory) == LAB_SERVICES - ONESHOT
    assert all(isinstance(v, int) and v > 0 for v in memory.values()), memory
    assert doc["memory_total_bytes"] == sum(memory.values())
    assert {doc["services"][name]["memory_bytes"] for name in ONESHOT} == {None}  # finished jobs
    text = cli(lab, "status").stdout
    assert "memory" in text and "MiB" in text
    # the stack came up in this process (bin/python), the CLI runs bin/python3 (its script's shebang)
    assert json.loads(cli(lab, "plan", "--json").stdout) == {"actions": []}


def test_tuned_alerting_reloads_prometheus_and_alertmanager_in_their_containers(lab: Engine) -> None:
    """The container runtime's SIGHUP reaches each server through the container's init."""
    assert lab.ctx.answers_path is not None
    assert_tuned_alerting_reloads_in_place(lab.ctx.answers_path, lab.ctx.state_dir, lambda *a: cli(lab, *a))


def test_busy_port_fails_cleanly_and_starts_nothing(lab: Engine, tmp_path: Path) -> None:
    """A second lab on the same runtime whose Prometheus port is taken: preflight refuses it with
    exit 3 and a message naming the port, and nothing of that stack is created."""
    other = lab_engine(lab.ctx.answers.runtime, tmp_path)
    port = other.ctx.answers.ports.prometheus
    runtime = other.runtime
    assert isinstance(runtime, ContainerRuntime)
    try:
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", port))
            blocker.listen()
            proc = cli(other, "up", check=False)
        assert proc.returncode == 3, proc.stderr
        assert f"{port} is in use" in proc.stderr and "set another port" in proc.stderr
        assert owned(runtime) == {"containers": [], "networks": [], "volumes": []}
    finally:
        cli(other, "down", "--purge", "--yes", check=False)


def test_down_keeps_the_data_leaves_others_alone_and_up_brings_them_back(
    lab: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``appliance down`` removes every container and network of the stack, keeps its named volumes
    and touches no other container; the next ``up`` finds the experiments and objects as they were."""
    from mlflow.tracking import MlflowClient

    # MLflow's writer account, as the CLI's lifecycle commands use it
    writer = (lab.ctx.state_dir / "secrets" / "mlflow_writer_password").read_text().strip()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "appliance-writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", writer)
    uri = lab.desired["mlflow"].url
    experiment = MlflowClient(uri).create_experiment(f"persist-{time.time_ns()}")
    store = s3_client(lab.ctx.s3_endpoint, *lab.ctx.s3_credentials("writer"))
    store.put_object(Bucket="datasets", Key="persist/kept.csv", Body=b"a,target\n1,0\n")
    runtime = lab.runtime
    assert isinstance(runtime, ContainerRuntime)
    with bystander(runtime) as other:
        cli(lab, "down")
        assert_down_left_only_volumes(runtime, LAB_VOLUMES, other)
    assert json.loads(cli(lab, "status", "--json").stdout)["services"]["mlflow"]["health"] == "stopped"
    cli(lab, "up")
    assert MlflowClient(uri).get_experiment(experiment).experiment_id == experiment
    kept = store.get_object(Bucket="datasets", Key="persist/kept.csv")["Body"].read()
    assert kept == b"a,target\n1,0\n"
