"""The controller as a real process: drift webhook, cool-down, run API, metrics, restart, cron."""

from __future__ import annotations

import os
import secrets
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.monitoring.catalog import CONTROLLER_METRICS, exposition_metric_names, unknown_metrics
from tests.integration._controller_fixtures import (  # noqa: F401 - fixtures are found by their names
    Controller,
    Home,
    controllers_fixture,
    home_fixture,
    mlflow_children,
    mlflow_run,
    mlflow_server_fixture,
    process_gone,
    wait_for,
)

pytestmark = pytest.mark.integration

# The retrain pipeline of these tests: its train step waits for a gate file, so a test decides
# when a run ends; promote writes the decision the metrics count.
RETRAIN = """\
name: retrain
model: default-model
steps:
  - name: train
    run: ["sh", "-c", "echo $$ > train.pid; while [ ! -e {gate} ]; do sleep 0.1; done; echo 4 > version.txt"]
    outputs: {{version: version.txt}}
  - name: promote
    run: ["sh", "-c", "echo promoted > decision.txt"]
    outputs: {{decision: decision.txt}}
"""


def drift(
    model: str | None, status: str = "firing", name: str = "FeatureDrift", **labels: str
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, **({"model": model} if model else {}), **labels},
        "annotations": {"summary": f"{name} on {model}"},
        "startsAt": "2026-11-24T10:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph",
        "fingerprint": secrets.token_hex(8),
    }


def notification(*alerts: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}/{alertname=~"FeatureDrift|PredictionDrift"}:{model="wine"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "controller",
        "groupLabels": {"model": "wine"},
        "commonLabels": {"model": "wine"},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:9093",
        "alerts": list(alerts),
    }


@pytest.fixture
def setup(home: Home) -> tuple[Home, Path, Path, Path]:
    pipelines = home.root / "pipelines"
    pipelines.mkdir()
    gate = home.root / "gate"
    (pipelines / "retrain.yaml").write_text(RETRAIN.format(gate=gate))
    token = home.root / "controller_webhook_token"
    token.write_text(secrets.token_urlsafe(24) + "\n")
    return home, pipelines, token, gate


def metric(controller: Controller, line_start: str) -> float | None:
    for line in controller.get("/metrics").text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_a_firing_drift_alert_starts_one_retrain_and_a_flapping_one_does_not(
    setup: tuple[Home, Path, Path, Path], controllers: list[Controller]
) -> None:
    home, pipelines, token, gate = setup
    controller = Controller(home, pipelines, token, "--cooldown-seconds", "600").start()
    controllers.append(controller)
    alert = notification(drift("wine", feature="alcohol"), drift("wine", feature="ash"))

    refused = controller.post("/alerts", alert, token="wrong-token")
    assert refused.status_code == 401 and "bearer token" in refused.json()["error"]
    assert controller.post("/alerts", alert, token="").status_code == 401
    # the token is checked before the body is read: a caller announcing a megabyte and sending
    # none of it is refused at once, and the connection closed
    with socket.create_connection(("127.0.0.1", controller.port), timeout=10) as sock:
        sock.sendall(b"POST /alerts HTTP/1.1\r\nHost: c\r\nContent-Length: 1000000\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 401") and b"bearer token" in answer, answer
    malformed = controller.post(
        "/alerts", raw=b'{"version": "4", "status": "firing", "alerts": [{"labels": {}}]}'
    )
    assert malformed.status_code == 400 and "alerts.0.status: Field required" in malformed.json()["error"]
    no_model = controller.post("/alerts", notification(drift(None)))
    assert no_model.status_code == 400 and "alerts.0.labels.model" in no_model.json()["error"]
    assert controller.get("/runs").json()["runs"] == [], "refused requests start nothing"

    started = controller.post("/alerts", alert)
    assert started.status_code == 202, started.text
    [result] = started.json()["results"]
    assert (result["status"], result["model"]) == ("started", "wine")
    again = controller.post("/alerts", notification(drift("wine", name="PredictionDrift")))
    assert again.status_code == 200 and again.json()["results"][0]["status"] == "cooling down"
    manual = controller.post("/pipelines/retrain/run", {"model": "wine"})
    assert manual.status_code == 409 and manual.json()["status"] == "already running"
    ignored = controller.post(
        "/alerts", notification(drift("wine", status="resolved"), drift("x", name="TargetDown"))
    )
    assert ignored.status_code == 200 and ignored.json()["status"] == "ignored"

    runs = controller.get("/runs").json()["runs"]
    assert [(r["id"], r["model"], r["trigger"], r["state"]) for r in runs] == [
        (result["run_id"], "wine", "alert", "running")
    ]
    # the records (parameters, error text, folders, pids) are the token's too
    for path in ("/runs", f"/runs/{result['run_id']}"):
        for token in ("", "wrong-token"):
            refused = controller.get(path, token=token)
            assert refused.status_code == 401 and result["run_id"] not in refused.text, (path, token)
            assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert httpx.get(f"{controller.url}/healthz", timeout=10).is_success, "health stays open"
    assert controller.proc is not None and runs[0]["held_by_pid"] == controller.proc.pid
    cli_view = home.cli("pipeline", "runs").stdout
    assert f"running, held by pid {controller.proc.pid}" in cli_view
    assert metric(controller, 'appliance_pipeline_running{pipeline="retrain"}') == 1
    # every family the controller writes is in the catalog, so the controller job's keep rule
    # (prometheus_config.provenance_rules) hides none of them
    written = exposition_metric_names(controller.get("/metrics").text)
    assert written and unknown_metrics(written, CONTROLLER_METRICS) == set(), written

    gate.touch()
    run = wait_for(
        "the run to finish", lambda: (r := controller.run(result["run_id"]))["state"] != "running" and r
    )
    assert (run["state"], run["outcome"], run["version"]) == ("succeeded", "promoted", "4")
    assert controller.post("/alerts", alert).json()["results"][0]["status"] == "cooling down"
    parent = mlflow_run(home.mlflow_url, run["mlflow_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["appliance.trigger"] == "alert"

    assert metric(controller, 'appliance_pipeline_runs_total{outcome="succeeded",pipeline="retrain"}') == 1
    assert metric(controller, 'appliance_retrain_triggers_total{pipeline="retrain",trigger="alert"}') == 1
    assert metric(controller, 'appliance_model_promotions_total{model="wine"}') == 1
    assert metric(controller, 'appliance_pipeline_running{pipeline="retrain"}') == 0
    duration = metric(controller, 'appliance_pipeline_last_duration_seconds{pipeline="retrain"}')
    assert duration is not None and 0 < duration < 300


def test_a_run_cut_by_kill_9_is_failed_at_restart_and_a_new_run_can_start(
    setup: tuple[Home, Path, Path, Path], controllers: list[Controller]
) -> None:
    home, pipelines, token, gate = setup
    first = Controller(home, pipelines, token).start()
    controllers.append(first)
    response = first.post("/pipelines/retrain/run", {"model": "wine"})
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    run = wait_for(
        "the train step to start", lambda: (r := first.run(run_id))["steps"][0]["state"] == "running" and r
    )
    workdir = Path(run["workdir"])
    pid_file = workdir / "train.pid"
    wait_for("the step's pid file", lambda: pid_file.is_file() and pid_file.read_text().strip())
    step_pid = int(pid_file.read_text())

    first.kill9()
    assert not process_gone(step_pid), "kill -9 leaves the step process orphaned"
    second = Controller(home, pipelines, token).start()
    controllers.append(second)

    run = second.run(run_id)
    assert (run["state"], run["error"]) == ("failed", "controller restarted mid-run")
    assert [s["state"] for s in run["steps"]] == ["failed", "not run"]
    wait_for("the orphaned step to be killed", lambda: process_gone(step_pid), 15)
    parent = mlflow_run(home.mlflow_url, run["mlflow_run_id"])
    assert parent.info.status == "FAILED"
    assert {n: c.info.status for n, c in mlflow_children(home.mlflow_url, parent).items()} == {
        "train": "FAILED"
    }

    gate.touch()
    again = second.post("/pipelines/retrain/run", {"model": "wine"})
    assert again.status_code == 202, again.text
    new_run = wait_for(
        "the new run to finish", lambda: (r := second.run(again.json()["run_id"]))["state"] != "running" and r
    )
    assert new_run["state"] == "succeeded"


def test_the_cron_schedule_starts_the_retrain_pipeline(
    setup: tuple[Home, Path, Path, Path], controllers: list[Controller]
) -> None:
    home, pipelines, token, gate = setup
    gate.touch()
    controller = Controller(home, pipelines, token, "--schedule", "* * * * * */2").start()
    controllers.append(controller)
    health = controller.get("/healthz").json()
    assert health["schedule"] == "* * * * * */2" and health["next_fire"]
    runs = wait_for("a scheduled run", lambda: controller.get("/runs").json()["runs"], 60)
    assert runs[-1]["trigger"] == "cron" and runs[-1]["model"] == "default-model"


def test_bad_flags_and_requests_get_messages_that_say_what_to_fix(
    setup: tuple[Home, Path, Path, Path], controllers: list[Controller]
) -> None:
    import subprocess
    import sys

    home, pipelines, token, _ = setup
    bad = subprocess.run(
        [sys.executable, "-m", "appliance.workloads.controller", "--state-dir", str(home.state),
         "--pipelines-dir", str(pipelines), "--schedule", "every night", "--port", "1"],
        capture_output=True, text=True, timeout=120, env=os.environ | home.env(),
    )  # fmt: skip
    assert bad.returncode == 2 and "--schedule 'every night' is not a cron expression" in bad.stderr

    controller = Controller(home, pipelines, token).start()
    controllers.append(controller)
    unknown = controller.post("/pipelines/retrian/run", {})
    assert unknown.status_code == 404 and "known: retrain" in unknown.json()["fix"]
    bad_param = controller.post("/pipelines/retrain/run", {"params": {"epochs": 3}})
    assert bad_param.status_code == 400 and "no parameter 'epochs'" in bad_param.json()["error"]
    bad_body = controller.post("/pipelines/retrain/run", raw=b"[1]")
    assert bad_body.status_code == 400 and "'model' and 'params'" in bad_body.json()["error"]
    assert controller.get("/nowhere").status_code == 404
