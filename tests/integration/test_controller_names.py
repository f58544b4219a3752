"""The controller as a real process refuses names that break the name rule at every HTTP entry:
the pipeline in the path, the model and the dataset in a POST body, the model query parameter,
an alert's model label. None reaches a path, and a good request still works right after."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.names import RULE
from tests.integration._controller_fixtures import Controller, Home, wait_for

pytestmark = pytest.mark.integration

RETRAIN = """\
name: retrain
model: wine
parameters: {dataset: wine}
steps:
  - name: work
    run: ["sh", "-c", "echo done > out.txt"]
    outputs: {out: out.txt}
"""


class NoTrackingHome(Home):
    """A state directory with the filesystem data connection and no MLflow (runs are not tracked)."""

    def env(self) -> dict[str, str]:
        env = super().env()
        del env["MLFLOW_TRACKING_URI"]
        return env


@pytest.fixture(name="controller")
def controller_fixture(tmp_path: Path) -> Iterator[Controller]:
    home = NoTrackingHome(tmp_path, "http://127.0.0.1:1")
    pipelines = tmp_path / "pipelines"
    pipelines.mkdir()
    (pipelines / "retrain.yaml").write_text(RETRAIN)
    token = tmp_path / "token"
    token.write_text(secrets.token_urlsafe(24))
    controller = Controller(home, pipelines, token).start()
    try:
        yield controller
    finally:
        controller.stop()


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def alert(model: str) -> dict[str, object]:
    return {"status": "firing", "labels": {"alertname": "FeatureDrift", "model": model}}


def test_every_http_entry_refuses_a_bad_name_and_a_good_one_still_runs(controller: Controller) -> None:
    state = controller.home.state
    before = files_under(state.parent)
    for body in (
        {"model": "../../escaped"},
        {"model": "a/b"},
        {"model": ""},
        {"model": "x" * 65},
        {"params": {"dataset": "../x"}},
    ):
        response = controller.post("/pipelines/retrain/run", body)
        assert response.status_code == 400, (body, response.text)
        assert "is not a valid name" in response.json()["error"] and RULE in response.json()["error"]
    for path in ("/pipelines/..%2F..%2Fx/run", "/pipelines/a..b/run", "/pipelines/.hidden/run"):
        response = controller.post(path, {})
        assert response.status_code == 400 and "pipeline name" in response.json()["error"], path
    runs = controller.get("/runs?model=../x")
    assert runs.status_code == 400 and "model name '../x'" in runs.json()["error"]

    ignored = controller.post(
        "/alerts", {"version": "4", "status": "firing", "alerts": [alert("../../escaped"), alert("a/b")]}
    )
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"
    assert len(ignored.json()["refused"]) == 2 and RULE in ignored.json()["refused"][0]
    assert files_under(state.parent) - before <= {"state/controller", "state/controller/runs.db"}
    assert controller.get("/runs").json()["runs"] == []
    assert "drift alert not acted on" in controller.log_path.read_text()

    started = controller.post("/pipelines/retrain/run", {"model": "wine"})
    assert started.status_code == 202, started.text
    run = wait_for("the run to finish", lambda: controller.run(started.json()["run_id"])["finished"])
    record = controller.run(started.json()["run_id"])
    assert run and record["state"] == "succeeded", (record, controller.log_path.read_text()[-3000:])
    assert not (state.parent / "escaped.lock").exists() and not (state / "escaped.lock").exists()
