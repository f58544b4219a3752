"""An edge box's metrics reach the central Prometheus by remote write, with no gap for an outage.

Two real stacks on the local runtime: a central one running Prometheus (its remote-write receiver
behind basic auth) whose answers name the box in ``edge_boxes``, and an edge box (edge profile:
the model server and its own Prometheus) whose ``monitoring.remote_write`` names the central
receiver and the box's own account. The box's ``up`` names the central secret to copy until it is
there (making no password of its own), and its preflight fails on a wrong password; requests
served on the box show up centrally, labelled ``edge_box``; with the central stack down, the box
keeps serving, and once it is back the samples scraped during the outage arrive too (the box's
write-ahead log), so the series has no gap.
"""

from __future__ import annotations

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
from tests.conftest import run_cli, write_answers
from tests.integration._controller_fixtures import wait_for
from tests.integration._serving_fixtures import training_data, write_mlp

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

BOX = "shop-12"
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


@pytest.fixture(scope="module")
def stacks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Stack]]:
    root = tmp_path_factory.mktemp("remote-write")
    off = dict.fromkeys(("object_store", "mlflow", "workbench", "serving", "controller", "dashboards"), False)
    central = Stack(
        write_answers(
            root / "central.yaml",
            profile="custom",
            object_store={"kind": "filesystem"},
            components=off | {"monitoring": True},
            edge_boxes=[BOX, "shop-13"],
        ),
        root / "central",
    )
    model = write_mlp(root / "fraud", seed=4)
    box = Stack(
        write_answers(
            root / "box.yaml",
            profile="edge",
            object_store={"kind": "filesystem"},
            components={"dashboards": False},
            models=[{"name": "fraud", "uri": str(model)}],
            monitoring={
                "scrape_interval": "1s",
                "remote_write": {
                    "url": f"http://127.0.0.1:{central.ports['prometheus']}/api/v1/write",
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


def test_the_boxs_requests_reach_the_centre_and_an_outage_leaves_no_gap(stacks: tuple[Stack, Stack]) -> None:
    central, box = stacks
    box.cli("up")
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
