"""An edge box's metrics reach the central Prometheus by remote write, with no gap for an outage,
through the write gate, which labels them with the box's own name.

Two real stacks on the local runtime: a central one running Prometheus (its remote-write receiver
behind basic auth) and the write gate in front of it, whose answers name the box in
``edge_boxes``, and an edge box (edge profile: the model server and its own Prometheus) whose
``monitoring.remote_write`` names the central gate and the box's own account. The box's ``up``
names the central secret to copy until it is there (making no password of its own), and its
preflight fails on a wrong password; requests served on the box show up centrally, labelled
``edge_box``; with the central stack down, the box keeps serving, and once it is back the samples
scraped during the outage arrive too (the box's write-ahead log), so the series has no gap. A box
that forges another's name, or writes what is not a serving series, has that rewritten or dropped
at the gate, and cannot query the central Prometheus at all.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.mlflow_auth import edge_secret
from appliance.monitoring.catalog import SERVING_METRICS, series_names
from appliance.monitoring.remote_write_wire import Series, sample, snappy_encode, write_request
from tests.conftest import run_cli, runtime_params, use_runtime, write_answers
from tests.integration._container_fixtures import MONITORING_IMAGE, ensure_images
from tests.integration._controller_fixtures import wait_for
from tests.integration._serving_fixtures import training_data, write_mlp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BOX = "shop-12"
SCOPED = "shop-13"
"""A box whose ``edge_boxes`` entry names the one model it serves, wine."""
SELECTOR = f'appliance_inference_requests_total{{edge_box="{BOX}",outcome="success"}}'
SERIES = f"sum({SELECTOR})"
X = training_data(2, seed=3)


@dataclass
class Stack:
    answers: Path
    state: Path

    @property
    def ports(self) -> dict[str, int]:
        return dict(yaml.safe_load(self.answers.read_text())["ports"])

    def cli(self, *args: str, check: bool = True) -> Any:
        return run_cli(*args, answers=self.answers, state=self.state, check=check, timeout=600)

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()


def central_stack(root: Path, **answers: Any) -> Stack:
    """The central stack under ``root``: monitoring alone (Prometheus, and the write gate for its
    ``edge_boxes``)."""
    off = dict.fromkeys(("object_store", "mlflow", "workbench", "serving", "controller", "dashboards"), False)
    written = write_answers(
        root / "central.yaml",
        profile="custom",
        object_store={"kind": "filesystem"},
        components=off | {"monitoring": True},
        **answers,
    )
    return Stack(written, root / "central")


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    root = tmp_path_factory.mktemp("remote-write")
    central = central_stack(root, edge_boxes=[BOX, {"name": SCOPED, "models": ["wine"]}])
    model = write_mlp(root / "fraud", seed=4)
    box = Stack(
        write_answers(
            root / "box.yaml",
            profile="edge",  # object_store.kind auto: no store of its own on an edge box
            components={"dashboards": False},
            models=[{"name": "fraud", "uri": str(model)}],
            monitoring={
                "scrape_interval": "1s",
                "remote_write": {
                    "url": f"http://127.0.0.1:{central.ports['write_gate']}/api/v1/write",
                    "username": f"appliance-edge-{BOX}",
                },
            },
        ),
        root / "box",
    )
    try:
        central.cli("up")
        yield central, box
    finally:
        box.cli("down", check=False)
        central.cli("down", check=False)


def infer(box: Stack, count: int) -> None:
    token = {"Authorization": f"Bearer {box.secret('serving_token')}"}
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(X.shape), "data": X.ravel().tolist()}]
    }
    url = f"http://127.0.0.1:{box.ports['serving_http']}/v2/models/fraud/infer"
    for _ in range(count):
        assert httpx.post(url, json=body, headers=token, timeout=10).status_code == 200


def central_value(central: Stack, query: str, at: float | None = None) -> float | None:
    auth = ("appliance", central.secret("prometheus_web_password"))
    params: dict[str, Any] = {"query": query} | ({"time": at} if at is not None else {})
    url = f"http://127.0.0.1:{central.ports['prometheus']}/api/v1/query"
    try:
        result = httpx.get(url, params=params, auth=auth, timeout=10).json()["data"]["result"]
    except httpx.HTTPError:
        return None
    return float(result[0]["value"][1]) if result else None


def test_the_box_refuses_to_start_without_its_password_then_with_a_wrong_one(
    stacks: tuple[Stack, Stack],
) -> None:
    central, box = stacks
    copy = box.state / "secrets" / "mlflow_reader_password"
    missing = box.cli("up", check=False)  # up runs the same checks first, and makes no password
    said = missing.stdout + missing.stderr
    assert missing.returncode == 3, said
    assert "remote write credential" in said and edge_secret(BOX) in said, said
    assert not copy.exists(), "up made up the box's copy of the central password"
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text("not-the-password")
    copy.chmod(0o600)
    wrong = box.cli("preflight", check=False)
    assert wrong.returncode == 3 and f"refuses appliance-edge-{BOX} (401)" in wrong.stdout + wrong.stderr
    shutil.copyfile(central.state / "secrets" / edge_secret(BOX), copy)
    right = box.cli("preflight", check=False)
    assert right.returncode == 0, right.stdout + right.stderr
    # a box still naming the central Prometheus (as before the write gate) is refused there, and told
    data = yaml.safe_load(box.answers.read_text())
    data["monitoring"]["remote_write"]["url"] = f"http://127.0.0.1:{central.ports['prometheus']}/api/v1/write"
    old = Stack(box.answers.with_name("box-old-url.yaml"), box.state)
    old.answers.write_text(yaml.safe_dump(data))
    before = old.cli("preflight", check=False)
    said = before.stdout + before.stderr
    assert before.returncode == 3 and "refuses" in said and "write gate" in said, said


def test_the_boxs_requests_reach_the_centre_and_an_outage_leaves_no_gap(stacks: tuple[Stack, Stack]) -> None:
    central, box = stacks
    box.cli("up")
    running = set(json.loads(box.cli("status", "--json").stdout)["services"])
    assert running == {"serving", "prometheus", "alertmanager", "node-exporter"}, running  # no store
    infer(box, 5)
    wait_for("the box's 5 requests at the centre", lambda: central_value(central, SERIES) == 5, 60)

    central.cli("down")
    started = time.time()
    infer(box, 7)  # served while the centre is gone, scraped on the box every second
    time.sleep(6)
    during = time.time() - 3
    central.cli("up")
    wait_for("the outage's requests at the centre", lambda: central_value(central, SERIES) == 12, 120)
    # the centre holds samples from inside the outage, when it was not running: the box sent them
    assert central_value(central, SERIES, at=during) == 12
    window = f"{int(during - started) + 1}s"
    samples = central_value(
        central,
        f"count_over_time({SELECTOR}[{window}])",
        at=during,
    )
    assert samples is not None and samples >= 2, samples


def test_a_box_writes_only_serving_series_under_its_own_name_and_reads_nothing(
    stacks: tuple[Stack, Stack],
) -> None:
    central, box = stacks
    box.cli("up")
    account = (f"appliance-edge-{BOX}", central.secret(edge_secret(BOX)))
    gate = f"http://127.0.0.1:{central.ports['write_gate']}/api/v1/write"
    write_forged(central, account)
    # what the box's own Prometheus sends: the model server's series alone (no node or Prometheus ones)
    wait_for("the box's series at the centre", lambda: central_value(central, SERIES) is not None, 60)
    names = central_names(central, f'{{edge_box="{BOX}"}}')
    assert names and names <= series_names(SERVING_METRICS), names
    # and the account reads nothing there
    query = f"http://127.0.0.1:{central.ports['prometheus']}/api/v1/query"
    assert httpx.get(query, params={"query": "up"}, auth=account, timeout=10).status_code == 401
    assert (
        httpx.get(gate.replace("/api/v1/write", "/api/v1/query"), auth=account, timeout=10).status_code == 404
    )


def write_forged(central: Stack, account: tuple[str, str]) -> None:
    """Send, as ``account``, a drift statistic under the other box's name and a series of the
    centre's own straight to the gate; wait for the first to arrive under the sender's name."""
    now = int(time.time() * 1000)
    forged = [
        Series(
            {"__name__": "appliance_feature_psi", "model": "forged", "feature": "f0", "edge_box": SCOPED},
            [sample(0.9, now)],
        ),
        Series({"__name__": "appliance_pipeline_runs_total", "pipeline": "forged"}, [sample(1.0, now)]),
    ]
    gate = f"http://127.0.0.1:{central.ports['write_gate']}/api/v1/write"
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    body = snappy_encode(write_request(forged))
    assert (
        httpx.post(gate, content=body, headers=headers, auth=(account[0], "wrong"), timeout=10).status_code
        == 401
    )
    assert httpx.post(gate, content=body, headers=headers, auth=account, timeout=10).status_code == 204
    wait_for(
        "the forged drift statistic, under the box's own name",
        lambda: central_value(central, f'appliance_feature_psi{{model="forged",edge_box="{BOX}"}}') == 0.9,
        60,
    )
    assert central_value(central, f'count(appliance_feature_psi{{edge_box="{SCOPED}"}})') is None
    assert central_value(central, 'count(appliance_pipeline_runs_total{pipeline="forged"})') is None


def test_a_box_named_with_its_models_writes_for_those_alone(stacks: tuple[Stack, Stack]) -> None:
    central, _ = stacks
    account = (f"appliance-edge-{SCOPED}", central.secret(edge_secret(SCOPED)))
    now = int(time.time() * 1000)
    sent = [
        Series({"__name__": "appliance_prediction_psi", "model": "wine"}, [sample(0.7, now)]),
        # the drift of a model it does not serve would start that model's retraining
        Series({"__name__": "appliance_prediction_psi", "model": "fraud"}, [sample(0.9, now)]),
        Series({"__name__": "appliance_drift_window_rows"}, [sample(500.0, now)]),  # names no model
    ]
    gate = f"http://127.0.0.1:{central.ports['write_gate']}/api/v1/write"
    headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf"}
    body = snappy_encode(write_request(sent))
    assert httpx.post(gate, content=body, headers=headers, auth=account, timeout=10).status_code == 204
    wait_for(
        "the served model's drift statistic, under the box's name",
        lambda: (
            central_value(central, f'appliance_prediction_psi{{model="wine",edge_box="{SCOPED}"}}') == 0.7
        ),
        60,
    )
    # written in the same request as the one that arrived: left out, not late
    assert (
        central_value(central, f'count(appliance_prediction_psi{{edge_box="{SCOPED}",model="fraud"}})')
        is None
    )
    assert central_value(central, f'count(appliance_drift_window_rows{{edge_box="{SCOPED}"}})') is None
    log = (central.state / "logs" / "write-gate.log").read_text()
    assert f"box {SCOPED}: left out 2 series of models it does not serve ('', 'fraud')" in log


@pytest.fixture(scope="module", params=runtime_params("podman"))
def central_in_containers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The centre alone on podman: Prometheus in the prometheus-debian image, the gate in the
    serving image."""
    use_runtime("podman")
    ensure_images("podman", ("prometheus-debian", "serving"))
    root = tmp_path_factory.mktemp("remote-write-podman")
    images = dict.fromkeys(("prometheus", "node-exporter", "alertmanager"), MONITORING_IMAGE)
    central = central_stack(root, edge_boxes=[BOX], runtime="podman", images=images)
    try:
        central.cli("up")
        yield central
    finally:
        central.cli("down", "--purge", "--yes", check=False)


def test_the_gate_in_a_container_labels_what_a_box_writes_with_its_name(central_in_containers: Stack) -> None:
    central = central_in_containers
    write_forged(central, (f"appliance-edge-{BOX}", central.secret(edge_secret(BOX))))


def central_names(central: Stack, selector: str) -> set[str]:
    auth = ("appliance", central.secret("prometheus_web_password"))
    url = f"http://127.0.0.1:{central.ports['prometheus']}/api/v1/label/__name__/values"
    return set(httpx.get(url, params={"match[]": selector}, auth=auth, timeout=10).json()["data"])
