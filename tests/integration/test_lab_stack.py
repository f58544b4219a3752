"""The lab stack through the real CLI, once per runtime (local processes, podman and docker
containers, through the ``runtime`` fixture): up, zero-action plan, Prometheus scraping the node
exporter, crash recovery, persistence across down + up, and a clean failure on a busy port.

On the local runtime the lab runs its own services (serving and the controller off); as containers
it runs what tests/integration/test_container_lab.py runs (the monitoring services in the
prometheus-debian image, no workbench). There ``down`` must leave nothing of the stack but its data
volumes, touch no other container, and ``down --purge`` remove the volumes as well. CI's tier runs
it on the local runtime; on containers it is in the extended tier (tests/conftest.py: EXTENDED),
test_container_lab making the same checks through the CLI on the lab it brings up on podman.
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.answers_file import load_answers
from appliance.context import AppContext
from appliance.dataconn.client import s3_client
from appliance.engine import Engine
from appliance.mlflow_gate import GATED_APP
from appliance.runtimes.containers_common import ContainerRuntime
from appliance.runtimes.procscan import pids_with_marker
from tests.conftest import run_cli, write_answers
from tests.integration._container_fixtures import (
    LAB_IMAGES,
    LAB_VOLUMES,
    assert_down_left_only_volumes,
    bystander,
    ensure_images,
    kill_and_wait_for_restart,
    lab_answers,
    owned,
)
from tests.integration._reload_checks import assert_tuned_alerting_reloads_in_place

# As containers, up takes about a minute once the images are there; building them the first time
# (base, wheelhouse, mlflow, serving, controller) takes ~20 min on a fresh 2-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]
# The object store is the default's (auto): the bundled SeaweedFS, its buckets made by the job.
LOCAL_LAB = {"components": {"serving": False, "controller": False}}
MONITORING = {"prometheus", "node-exporter", "alertmanager"}
SERVICES = {
    "local": {"seaweedfs", "buckets", "mlflow", "mlflow-users", "workbench", *MONITORING},
    "containers": {"seaweedfs", "buckets", "mlflow", "mlflow-users", "serving", "controller", *MONITORING},
}
ONESHOT = {"mlflow-users", "buckets"}
"""Jobs that ran to completion: healthy (their check passes), no process left."""


@dataclass(frozen=True)
class Lab:
    """One lab stack: its runtime, answers file and state directory."""

    runtime: str
    answers: Path
    state: Path

    @property
    def in_containers(self) -> bool:
        return self.runtime != "local"

    def cli(self, *args: str, check: bool = True) -> Any:
        return run_cli(*args, answers=self.answers, state=self.state, check=check)

    def status(self) -> dict[str, Any]:
        services: dict[str, Any] = json.loads(self.cli("status", "--json").stdout)["services"]
        return services

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def engine(self) -> Engine:
        """The engine the CLI builds from the same answers and state (to look at the runtime)."""
        return Engine(AppContext.create(load_answers(self.answers), self.answers, self.state))

    def containers(self) -> ContainerRuntime:
        runtime = self.engine().runtime
        assert isinstance(runtime, ContainerRuntime)
        return runtime


def new_lab(runtime: str, root: Path) -> Lab:
    """Answers on free ports for the lab stack on ``runtime`` (images built first for containers)."""
    if runtime == "local":
        overrides: dict[str, Any] = LOCAL_LAB
    else:
        ensure_images(runtime, LAB_IMAGES)
        overrides = lab_answers(runtime)
    return Lab(runtime, write_answers(root / "appliance.yaml", **overrides), root / "state")


def stack_pids(state: Path) -> list[int]:
    return pids_with_marker(hashlib.sha1(str(state.resolve()).encode()).hexdigest()[:12] + "/")


@pytest.fixture(scope="module")
def lab(runtime: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    stack = new_lab(runtime, tmp_path_factory.mktemp(f"lab-{runtime}"))
    started = time.monotonic()
    try:
        stack.cli("up")
        print(f"{runtime}: lab stack up in {time.monotonic() - started:.1f}s")
        yield stack
    finally:
        stack.cli("down", "--purge", "--yes", check=False)
        if stack.in_containers:
            assert owned(stack.containers()) == {"containers": [], "networks": [], "volumes": []}


def test_up_brings_every_service_to_healthy(lab: Lab) -> None:
    services = lab.status()
    assert set(services) == SERVICES["containers" if lab.in_containers else "local"]
    assert {name: s["health"] for name, s in services.items()} == dict.fromkeys(services, "healthy")
    assert all(s["pid"] for name, s in services.items() if name not in ONESHOT)
    assert {services[name]["state"] for name in ONESHOT if name in services} == {"done"}


def test_status_reports_the_memory_of_every_running_service(lab: Lab) -> None:
    doc = json.loads(lab.cli("status", "--json").stdout)
    running = {name: s for name, s in doc["services"].items() if name not in ONESHOT}
    memory = {name: s["memory_bytes"] for name, s in running.items()}
    assert all(isinstance(v, int) and v > 0 for v in memory.values()), memory
    assert doc["memory_total_bytes"] == sum(memory.values())
    finished = {doc["services"][name]["memory_bytes"] for name in ONESHOT if name in doc["services"]}
    assert finished == {None}  # a finished job
    text = lab.cli("status").stdout
    assert "memory" in text and "MiB" in text


def test_mlflow_is_one_process(lab: Lab) -> None:
    """appliance.mlflow_server puts uvicorn in place of ``mlflow server``: the service's process
    is the server itself, with no parent holding the CLI's imports (nor a child doing the work),
    serving MLflow's basic-auth app behind the login check made before a body (mlflow_gate)."""
    if lab.in_containers:
        pytest.skip("the container's processes are the runtime's to show; the image runs the same command")
    pid = lab.status()["mlflow"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"uvicorn" in cmdline and GATED_APP.encode() in cmdline, cmdline
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert children == [], f"mlflow's process {pid} has children {children}"


def test_plan_right_after_up_has_zero_actions(lab: Lab) -> None:
    assert json.loads(lab.cli("plan", "--json").stdout) == {"actions": []}
    assert "0 actions" in lab.cli("up").stdout


def test_prometheus_scrapes_node_exporter(lab: Lab) -> None:
    url = lab.status()["prometheus"]["url"]
    result: Any = None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        # Prometheus asks for basic auth, like every monitoring service (user appliance)
        auth = ("appliance", lab.secret("prometheus_web_password"))
        query = {"query": 'up{job="node-exporter"}'}
        result = httpx.get(f"{url}/api/v1/query", params=query, auth=auth).json()
        if result["data"]["result"] and result["data"]["result"][0]["value"][1] == "1":
            return
        time.sleep(2)
    pytest.fail(f"node exporter never scraped: {result}")


def test_tuned_alerting_reloads_prometheus_and_alertmanager_in_place(lab: Lab) -> None:
    assert_tuned_alerting_reloads_in_place(lab.answers, lab.state, lab.cli)


def test_kill_9_of_a_service_is_healed(lab: Lab) -> None:
    """The supervisor (local) or the restart policy (containers, the same container) brings it back."""
    kill_and_wait_for_restart(lab.engine(), "mlflow")


def test_data_survive_down_and_up(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    # MLflow's writer account, as the CLI's lifecycle commands use it
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "appliance-writer")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", lab.secret("mlflow_writer_password"))

    uri = lab.status()["mlflow"]["url"]
    experiment = MlflowClient(uri).create_experiment(f"persist-{time.time_ns()}")
    store = None
    if "seaweedfs" in lab.status():  # the bundled store keeps its objects too
        ctx = lab.engine().ctx
        store = s3_client(ctx.s3_endpoint, *ctx.s3_credentials("writer"))
        store.put_object(Bucket="datasets", Key="persist/kept.csv", Body=b"a,target\n1,0\n")
    if lab.in_containers:
        runtime = lab.containers()
        with bystander(runtime) as other:
            lab.cli("down")
            assert_down_left_only_volumes(runtime, LAB_VOLUMES, other)
    else:
        lab.cli("down")
        assert stack_pids(lab.state) == [], "processes of the stack outlived down"
    assert lab.status()["mlflow"]["health"] == "stopped"
    lab.cli("up")
    assert MlflowClient(uri).get_experiment(experiment).experiment_id == experiment
    if store is not None:
        kept = store.get_object(Bucket="datasets", Key="persist/kept.csv")["Body"].read()
        assert kept == b"a,target\n1,0\n"


def test_busy_port_fails_cleanly_and_starts_nothing(runtime: str, tmp_path: Path) -> None:
    stack = new_lab(runtime, tmp_path)
    port = yaml.safe_load(stack.answers.read_text())["ports"]["prometheus"]
    try:
        with socket.socket() as blocker:
            blocker.bind(("127.0.0.1", port))
            blocker.listen()
            proc = stack.cli("up", check=False)
        assert proc.returncode == 3, proc.stderr
        assert f"{port} is in use" in proc.stderr and "set another port" in proc.stderr
        if stack.in_containers:
            assert owned(stack.containers()) == {"containers": [], "networks": [], "volumes": []}
        else:
            assert stack_pids(stack.state) == []
    finally:
        stack.cli("down", "--purge", "--yes", check=False)
