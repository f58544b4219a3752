"""The lab stack on the local runtime, with real processes: up, zero-action plan, crash recovery,
down, persistence across down + up, and a clean failure on a busy port."""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.runtimes.procscan import pids_with_marker
from tests.conftest import run_cli, write_answers

pytestmark = pytest.mark.integration
LAB = {"object_store": {"kind": "filesystem"}, "components": {"serving": False, "controller": False}}


def status(answers: Path, state: Path) -> dict:
    return json.loads(run_cli("status", "--json", answers=answers, state=state).stdout)["services"]


def stack_pids(state: Path) -> list[int]:
    import hashlib

    return pids_with_marker(hashlib.sha1(str(state.resolve()).encode()).hexdigest()[:12] + "/")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("lab")
    answers = write_answers(root / "appliance.yaml", **LAB)
    state = root / "state"
    run_cli("up", answers=answers, state=state)
    yield answers, state
    run_cli("down", answers=answers, state=state, check=False)


def test_up_brings_every_service_to_healthy(lab: tuple[Path, Path]) -> None:
    services = status(*lab)
    assert set(services) == {"mlflow", "workbench", "prometheus", "node-exporter", "alertmanager"}
    assert {name: s["health"] for name, s in services.items()} == dict.fromkeys(services, "healthy")
    assert all(s["pid"] for s in services.values())


def test_plan_right_after_up_has_zero_actions(lab: tuple[Path, Path]) -> None:
    assert json.loads(run_cli("plan", "--json", answers=lab[0], state=lab[1]).stdout) == {"actions": []}
    again = run_cli("up", answers=lab[0], state=lab[1])
    assert "0 actions" in again.stdout


def test_prometheus_scrapes_node_exporter(lab: tuple[Path, Path]) -> None:
    import httpx

    url = status(*lab)["prometheus"]["url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        result = httpx.get(f"{url}/api/v1/query", params={"query": 'up{job="node-exporter"}'}).json()
        if result["data"]["result"] and result["data"]["result"][0]["value"][1] == "1":
            return
        time.sleep(2)
    pytest.fail(f"node exporter never scraped: {result}")


def test_kill_9_of_a_service_is_healed(lab: tuple[Path, Path]) -> None:
    before = status(*lab)["mlflow"]["pid"]
    os.kill(before, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = status(*lab)["mlflow"]
        if now["health"] == "healthy" and now["pid"] != before:
            return
        time.sleep(1)
    pytest.fail(f"mlflow not healthy again after kill -9: {now}")


def test_data_survive_down_and_up(lab: tuple[Path, Path]) -> None:
    from mlflow.tracking import MlflowClient

    answers, state = lab
    uri = status(answers, state)["mlflow"]["url"]
    experiment = MlflowClient(uri).create_experiment(f"persist-{time.time_ns()}")
    run_cli("down", answers=answers, state=state)
    assert stack_pids(state) == [], "processes of the stack outlived down"
    assert (
        json.loads(run_cli("status", "--json", answers=answers, state=state).stdout)["services"]["mlflow"][
            "health"
        ]
        == "stopped"
    )
    run_cli("up", answers=answers, state=state)
    assert MlflowClient(uri).get_experiment(experiment).experiment_id == experiment


def test_busy_port_fails_cleanly_and_starts_nothing(tmp_path: Path) -> None:
    answers = write_answers(tmp_path / "appliance.yaml", **LAB)
    import yaml

    port = yaml.safe_load(answers.read_text())["ports"]["prometheus"]
    state = tmp_path / "state"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        proc = run_cli("up", answers=answers, state=state, check=False)
    assert proc.returncode == 3, proc.stderr
    assert f"{port} is in use" in proc.stderr and "set another port" in proc.stderr
    assert stack_pids(state) == []
