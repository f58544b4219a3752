"""A pipeline drawn in Elyra runs on the appliance's runner like its YAML form: by hand, on a
model's schedule and from a drift alert, with the same records and MLflow runs."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from tests.integration._controller_fixtures import (  # noqa: F401 - fixtures are found by their names
    Controller,
    Home,
    controllers_fixture,
    home_fixture,
    mlflow_children,
    mlflow_run,
    mlflow_server_fixture,
    wait_for,
)
from tests.integration._elyra_fixtures import retrain_drawing

pytestmark = pytest.mark.integration

STEPS = ["prepare", "train"]
VOLATILE_RUN = {"id", "started", "finished", "workdir", "pid", "mlflow_run_id", "duration", "source"}
VOLATILE_STEP = {"started", "finished", "log_path", "mlflow_run_id", "child_pid", "duration", "run_id"}


def _shape(record: dict[str, Any]) -> dict[str, Any]:
    """A run record without what differs between any two runs (ids, times, paths)."""
    run = {k: v for k, v in record.items() if k not in VOLATILE_RUN}
    run["steps"] = [{k: v for k, v in s.items() if k not in VOLATILE_STEP} for s in record["steps"]]
    return run


def _check_mlflow(home: Home, record: dict[str, Any], trigger: str) -> None:
    parent = mlflow_run(home.mlflow_url, record["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["appliance.pipeline"] == "drawn"
    assert parent.data.tags["appliance.trigger"] == trigger
    children = mlflow_children(home.mlflow_url, parent)
    assert {n: c.info.status for n, c in children.items()} == dict.fromkeys(STEPS, "FINISHED")


def test_a_drawing_runs_by_hand_with_the_same_records_as_its_yaml_form(home: Home) -> None:
    drawing = retrain_drawing(home.root / "work", name="drawn", model="drawn-model")
    drawn = json.loads(home.cli("pipeline", "run", str(drawing), "--json").stdout)
    assert drawn["state"] == "succeeded", drawn
    assert (drawn["pipeline"], drawn["model"], drawn["version"]) == ("drawn", "drawn-model", "3")
    assert [s["name"] for s in drawn["steps"]] == STEPS
    workdir = Path(drawn["steps"][0]["log_path"]).parents[1] / "work"
    trained = json.loads((workdir / "registration.json").read_text())
    assert trained == {"version": "3", "trained_on": "datasets/iris/latest.csv", "step": "train"}
    assert (workdir / "train.ipynb").is_file()  # papermill's executed copy, as for a YAML notebook step
    _check_mlflow(home, drawn, "manual")

    exported = home.root / "review" / "drawn.yaml"
    exported.parent.mkdir()
    home.cli("pipeline", "export", str(drawing), "-o", str(exported))
    as_yaml = json.loads(home.cli("pipeline", "run", str(exported), "--json").stdout)
    assert _shape(as_yaml) == _shape(drawn)

    listed = home.cli("pipeline", "runs").stdout
    assert drawn["id"] in listed and as_yaml["id"] in listed
    assert "prepare" in home.cli("pipeline", "show", drawn["id"]).stdout


def test_a_drawing_bound_to_a_model_runs_on_its_schedule_and_on_a_drift_alert(
    home: Home, controllers: list[Controller]
) -> None:
    pipelines = home.root / "pipelines"
    retrain_drawing(pipelines, name="drawn", model="drawn-model")
    iris = home.state / "data" / "datasets" / "iris"  # a bound model's dataset must be in the store
    iris.mkdir(parents=True)
    (iris / "latest.csv").write_text("a,b,target\n1,2,0\n")
    models = home.root / "models.json"
    binding = {
        "name": "drawn-model",
        "dataset": "iris",
        "pipeline": "drawn",
        "retrain_schedule": "* * * * * */2",
    }
    models.write_text(json.dumps({"models": [binding]}))
    token = home.root / "token"
    token.write_text(secrets.token_urlsafe(24))
    controller = Controller(home, pipelines, token, "--models-file", str(models), "--cooldown-seconds", "0")
    controllers.append(controller.start())

    def finished(trigger: str) -> dict[str, Any] | None:
        runs = controller.get("/runs").json()["runs"]
        done = [r for r in runs if r["trigger"] == trigger and r["state"] != "running"]
        return done[0] if done else None

    scheduled = wait_for("a scheduled run of the drawing to finish", lambda: finished("cron"), 120)
    assert scheduled["state"] == "succeeded", scheduled
    assert (scheduled["pipeline"], scheduled["model"], scheduled["version"]) == ("drawn", "drawn-model", "3")
    assert scheduled["params"] == {}
    _check_mlflow(home, scheduled, "cron")

    alert = {
        "version": "4",
        "status": "firing",
        "receiver": "controller",
        "groupKey": "{}:{model='drawn-model'}",
        "alerts": [{"status": "firing", "labels": {"alertname": "PredictionDrift", "model": "drawn-model"}}],
    }

    def started() -> str | None:  # the schedule fires every 2 s, so the model may be busy
        results = controller.post("/alerts", alert).json().get("results") or [{}]
        return results[0].get("run_id") if results[0].get("status") == "started" else None

    run_id = wait_for("the drift alert to start the drawing", started, 120, 0.5)
    run = wait_for("the alert's run", lambda: (r := controller.run(run_id))["state"] != "running" and r, 120)
    assert run["state"] == "succeeded", run
    assert (run["trigger"], run["pipeline"], run["version"]) == ("alert", "drawn", "3")
    assert _shape(run) | {"trigger": "cron"} == _shape(scheduled)
    _check_mlflow(home, run, "alert")
