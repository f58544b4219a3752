"""The controller with several models: each trigger runs the model's own pipeline on its own data,
an alert for a model with no binding is refused (counted, no run, no cool-down), schedules are per
model, and pipelines are found in STATE/pipelines before the built-ins."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import pytest

from appliance.answers import Answers, ModelEntry
from appliance.pipelines.loader import builtin_pipelines_dir, find_pipeline, search_dirs, user_pipelines_dir
from appliance.workloads.binding import (
    BindingMismatchError,
    UnboundModelError,
    load_models,
    models_json,
    run_params,
    workdir_problems,
)
from appliance.workloads.controller import metrics
from appliance.workloads.controller.__main__ import schedules
from appliance.workloads.controller.cooldown import Cooldown
from appliance.workloads.controller.service import REFUSED, STARTED, Controller

# A pipeline shaped like the built-in retrain (a dataset and a target parameter) whose one step
# writes the parameters it was given, so a test reads what a run trained on.
ECHO = f"""
name: retrain
model: breast_cancer
parameters: {{dataset: breast_cancer, target: "", epochs: 60}}
steps:
  - name: show
    run: ["{sys.executable}", "-c", "import json,sys; json.dump(sys.argv[1:], open('seen.json','w'))",
          "{{params.dataset}}", "{{params.target}}", "{{params.epochs}}", "{{model}}"]
    outputs: {{seen: seen.json}}
"""


def entries(*models: dict) -> dict[str, ModelEntry]:
    return {e.name: e for e in (ModelEntry.model_validate(d) for d in models)}


def bound() -> dict[str, ModelEntry]:
    return {
        e.name: e
        for e in (
            ModelEntry(name="breast_cancer", dataset="breast_cancer"),
            ModelEntry(name="wine", dataset="wine", target="target", parameters={"epochs": 5}),
            ModelEntry(name="orphan", uri="/models/orphan.onnx"),
        )
    }


@pytest.fixture
def controller(tmp_path: Path) -> Controller:
    user = user_pipelines_dir(tmp_path / "state")
    user.mkdir(parents=True)
    (user / "retrain.yaml").write_text(ECHO)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    return Controller(tmp_path / "state", user, env, Cooldown(600), models=bound())


def seen(controller: Controller, run_id: str) -> list[str]:
    deadline = time.monotonic() + 30
    while (run := controller.store.get(run_id)) is None or run["state"] == "running":
        assert time.monotonic() < deadline, "the run did not finish within 30 s"
        time.sleep(0.05)
    assert run["state"] == "succeeded", run
    return list(json.loads((Path(run["workdir"]) / "seen.json").read_text()))


def test_an_alert_for_each_model_runs_on_that_models_own_data(controller: Controller) -> None:
    wine = controller.trigger_retrain("wine")
    cancer = controller.trigger_retrain("breast_cancer")
    assert wine.status == cancer.status == STARTED
    assert seen(controller, str(wine.run_id)) == ["wine", "target", "5", "wine"]
    assert seen(controller, str(cancer.run_id)) == ["breast_cancer", "", "60", "breast_cancer"]


def test_an_alert_for_a_model_without_binding_is_refused_counted_and_costs_no_cooldown(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    for model in ("orphan", "unknown"):
        with caplog.at_level(logging.WARNING):
            result = controller.trigger_retrain(model)
        assert result.status == REFUSED and result.run_id is None
        assert (
            f"model {model!r} has no dataset binding" in result.detail and "models[].dataset" in result.detail
        )
        assert model in caplog.text
        assert controller.cooldown.remaining(model) == 0.0
    assert controller.store.recent(limit=10) == []
    assert controller.refusals == {"breast_cancer": 0, "wine": 0, "orphan": 1, "unknown": 1}
    text = metrics.render(metrics.registry_for(controller.store, lambda: [], lambda: controller.refusals))
    assert b'appliance_retrain_refusals_total{model="orphan"} 1.0' in text


def test_a_manual_run_may_name_the_dataset_but_not_against_a_binding(controller: Controller) -> None:
    with pytest.raises(BindingMismatchError, match="bound to dataset 'wine'"):
        controller.trigger("retrain", "wine", "manual", {"dataset": "breast_cancer"}, explicit=True)
    with pytest.raises(UnboundModelError, match=r"models\[\]\.dataset"):
        controller.trigger("retrain", "orphan", "manual")
    result = controller.trigger("retrain", "orphan", "manual", {"dataset": "iris"}, explicit=True)
    assert seen(controller, str(result.run_id))[0] == "iris"


def test_run_params_never_hand_one_models_defaults_to_another() -> None:
    models = bound()
    pipeline = {"dataset": "breast_cancer", "target": "", "epochs": 60}
    assert run_params("wine", "breast_cancer", pipeline, models) == {
        "dataset": "wine",
        "target": "target",
        "epochs": "5",
    }
    # The pipeline's own model keeps its defaults; any other unbound model is refused.
    assert run_params("breast_cancer", "breast_cancer", pipeline, {}) == {}
    with pytest.raises(UnboundModelError, match="'diabetes' has no dataset binding"):
        run_params("diabetes", "breast_cancer", pipeline, models)
    # A pipeline that reads no dataset needs no binding, and gets none passed.
    assert run_params("diabetes", "x", {"epochs": 1}, models) == {}
    assert run_params("wine", "x", {"epochs": 1}, models) == {"epochs": "5"}


def test_schedules_are_per_model_and_an_unbound_models_schedule_is_not_started(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    controller.models = entries(
        {"name": "wine", "dataset": "wine", "retrain_schedule": "0 4 * * *"},
        {"name": "breast_cancer", "dataset": "breast_cancer", "retrain_schedule": "0 3 * * *"},
        {"name": "orphan", "uri": "/m.onnx", "retrain_schedule": "0 5 * * *"},
    )
    log = logging.getLogger("test")
    with caplog.at_level(logging.ERROR):
        found = schedules(controller, None, log)
    assert {m: s.expression for m, s in found.items()} == {"wine": "0 4 * * *", "breast_cancer": "0 3 * * *"}
    assert "schedule of model orphan not started" in caplog.text
    found["wine"].fire()  # what the cron tick calls: the model's own run
    run = controller.store.recent(limit=1)[0]
    assert (run["model"], run["trigger"]) == ("wine", "cron")
    assert seen(controller, run["id"])[0] == "wine"


def test_user_pipelines_come_before_the_built_ins_and_are_read_at_every_lookup(tmp_path: Path) -> None:
    user = user_pipelines_dir(tmp_path)
    dirs = search_dirs(user)
    assert dirs == [user, builtin_pipelines_dir()]
    assert find_pipeline("retrain", dirs) == builtin_pipelines_dir() / "retrain.yaml"
    user.mkdir()
    (user / "retrain.yaml").write_text(ECHO)  # added after the search path was made
    assert find_pipeline("retrain", dirs) == user / "retrain.yaml"
    assert search_dirs([user, tmp_path / "config"]) == [user, tmp_path / "config", builtin_pipelines_dir()]


def test_models_file_round_trips_every_binding_with_the_answers_defaults(tmp_path: Path) -> None:
    answers = Answers.model_validate(
        {
            "models": [
                {"name": "wine", "dataset": "wine"},
                {"name": "a", "dataset": "b", "drift_min_rows": 9},
            ],
            "monitoring": {"retrain_schedule": "0 3 * * *", "drift_psi_threshold": 0.25},
        }
    )
    path = tmp_path / "models.json"
    path.write_text(models_json(answers))
    loaded = load_models(path)
    assert loaded["wine"].uri == "models:/wine@champion" and loaded["wine"].retrain_schedule == "0 3 * * *"
    assert loaded["a"].drift_min_rows == 9 and loaded["a"].drift_psi_threshold == 0.25
    path.write_text("{}")
    with pytest.raises(Exception, match="not a models list"):
        load_models(path)


def test_a_runs_data_is_checked_against_its_binding() -> None:
    info = {"name": "breast_cancer", "model_name": "wine", "spec": {"target": "target", "features": ["a"]}}
    problems = workdir_problems(info, "wine", "wine", "target")
    assert problems == ["the run trained on dataset 'breast_cancer', but 'wine' is bound to 'wine'"]
    ok = {"name": "wine", "model_name": "wine", "spec": {"target": "target", "features": ["a"]}}
    assert workdir_problems(ok, "wine", "wine", "target") == []
    assert workdir_problems(ok, "wine", "wine", "class") == [
        "the run's target is 'target', but 'wine' is bound to target 'class'"
    ]


def test_a_run_for_a_model_whose_bound_dataset_is_missing_fails_before_any_step(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "datasets" / "breast_cancer").mkdir(parents=True)
    (data / "datasets" / "breast_cancer" / "breast_cancer.csv").write_text("a,target\n1,0\n")
    user = user_pipelines_dir(tmp_path / "state")
    user.mkdir(parents=True)
    (user / "retrain.yaml").write_text(ECHO)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_", "APPLIANCE_"))}
    env |= {"APPLIANCE_DATA_KIND": "filesystem", "APPLIANCE_DATA_ROOT": str(data)}
    controller = Controller(tmp_path / "state", user, env, Cooldown(600), models=bound())
    result = controller.trigger_retrain("wine")
    assert result.status == STARTED
    deadline = time.monotonic() + 30
    while (run := controller.store.get(str(result.run_id))) is None or run["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert run["state"] == "failed" and run["outcome"] == "failed at show", run
    assert (
        "model 'wine' is bound to dataset 'wine'" in run["error"]
        and "available: breast_cancer" in run["error"]
    )
    assert not (Path(run["workdir"]) / "seen.json").exists()  # the step never ran
