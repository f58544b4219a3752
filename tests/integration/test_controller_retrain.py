"""The whole loop with the real trainer: a drift alert retrains, registers and promotes a model.

Slow (torch training and six step processes), so it is marked ``slow`` as well as ``integration``.
"""

from __future__ import annotations

import secrets

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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = ["ingest", "validate", "train", "evaluate", "export", "register", "promote"]


def test_a_drift_alert_runs_the_default_retrain_pipeline_to_a_promoted_version(
    home: Home, controllers: list[Controller]
) -> None:
    home.cli("data", "seed")
    token = home.root / "token"
    token.write_text(secrets.token_urlsafe(24))
    empty = home.root / "pipelines"
    empty.mkdir()
    controller = Controller(home, empty, token).start()
    controllers.append(controller)
    alert = {
        "version": "4",
        "status": "firing",
        "receiver": "controller",
        "groupKey": "{}:{model='breast_cancer'}",
        "alerts": [
            {"status": "firing", "labels": {"alertname": "PredictionDrift", "model": "breast_cancer"}}
        ],
    }
    response = controller.post("/alerts", alert)
    assert response.status_code == 202, response.text
    run_id = response.json()["results"][0]["run_id"]

    run = wait_for(
        "the retrain run", lambda: (r := controller.run(run_id))["state"] != "running" and r, 900, 2
    )
    assert run["state"] == "succeeded", run
    assert (run["outcome"], run["version"], run["trigger"]) == ("promoted", "1", "alert")
    assert [s["name"] for s in run["steps"]] == STEPS
    parent = mlflow_run(home.mlflow_url, run["mlflow_run_id"])
    children = mlflow_children(home.mlflow_url, parent)
    assert {n: c.info.status for n, c in children.items()} == dict.fromkeys(STEPS, "FINISHED")
    assert "test_accuracy" in children["evaluate"].data.metrics

    from mlflow.tracking import MlflowClient

    champion = MlflowClient(home.mlflow_url).get_model_version_by_alias("breast_cancer", "champion")
    assert champion.version == "1"
    assert 'appliance_model_promotions_total{model="breast_cancer"} 1.0' in controller.get("/metrics").text
