"""A user's own training code as the trainer: a script by hand (``appliance train --script``) and
a notebook as the train step of the shipped ``retrain-custom`` pipeline, through the real runner.

Real services (moto S3 behind an ``mlflow server``, the data connection seeded by ``appliance data
seed``, the real model server). The scripts are written here as a user would write them: read
``train.csv``, fit a scikit-learn pipeline, log to MLflow, save ``user_model/``. What the
appliance does after them (convert with the importer, parity, evaluate against the champion,
export, register, promote) is checked in MLflow and against the served answers; the refusals
(the script fails, the script leaves no model, not a script) register nothing.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration._lifecycle_fixtures import REPO, Services, answers, cli, services, summary
from tests.integration._serving_fixtures import infer_body, start_server

pytestmark = pytest.mark.integration
__all__ = ["services"]

SCRIPT = """
import os

import mlflow
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

target = os.environ["APPLIANCE_TARGET"]
frame = pd.read_csv(os.environ["APPLIANCE_TRAIN_CSV"])
x, y = frame.drop(columns=target), frame[target]
model = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=1000)).fit(x, y)
with mlflow.start_run():
    mlflow.log_param("C", 0.5)
    mlflow.log_metric("train_rows", len(frame))
mlflow.sklearn.save_model(model, "user_model")
print("user script: trained on", len(frame), "rows of", os.environ["APPLIANCE_DATASET"])
"""


@dataclass
class Lab:
    answers: Path
    state: Path
    services: Services
    root: Path

    def run(self, *args: str, timeout: float = 600) -> Any:
        return cli(self.answers, self.state, *args, timeout=timeout)

    def script(self, name: str, text: str) -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(text))
        return path


@pytest.fixture(scope="module")
def lab(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("usertrain")
    ans = answers(root / "appliance.yaml", services, "filesystem")
    state = root / "state"
    seeded = cli(ans, state, "data", "seed", "--dataset", "breast_cancer")
    assert seeded.returncode == 0, seeded.stderr
    yield Lab(ans, state, services, root)


def client(lab: Lab) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=lab.services.mlflow_uri)


def registered(lab: Lab, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client(lab).get_registered_model(name)
    except MlflowException:
        return False
    return True


def test_a_users_script_trains_and_the_same_steps_release_it(lab: Lab) -> None:
    import mlflow

    script = lab.script("train_lr.py", SCRIPT)
    workdir = lab.root / "work-script"
    proc = lab.run("train", "--dataset", "breast_cancer", "--model-name", "user_lr", "--script", str(script),
                   "--workdir", str(workdir))  # fmt: skip
    result = summary(proc)
    assert "user script: trained on" in proc.stderr  # its output is shown as it runs
    assert (
        result["decision"] == "promoted" and result["version"] == "1" and result["task"] == "classification"
    )
    assert result["model_kind"] == "user" and result["parity_max_abs_diff"] <= 1e-4
    assert result["metrics"]["accuracy"] > 0.9
    run = client(lab).get_run(result["run_id"])
    # The script's own logging landed in the training run, next to the appliance's.
    assert run.data.params["C"] == "0.5" and run.data.params["framework"] == "sklearn"
    assert run.data.metrics["train_rows"] == len(pd.read_csv(workdir / "train.csv"))
    tags = client(lab).get_model_version("user_lr", "1").tags
    assert tags["appliance.dataset"] == "breast_cancer" and tags["appliance.decision"] == "promoted"
    # Served from the registry, the answers are the script's model's.
    frame = pd.read_csv(lab.state / "data" / "datasets" / "breast_cancer" / "breast_cancer.csv")
    x = frame.drop(columns="target").iloc[:25]
    original = mlflow.sklearn.load_model(str(workdir / "user_model")).predict_proba(x)
    server = start_server(["--model", "models:/user_lr@champion", "--name", "user_lr"], lab.root,
                          env={"MLFLOW_TRACKING_URI": lab.services.mlflow_uri})  # fmt: skip
    try:
        answer = httpx.post(f"{server.url}/v2/models/user_lr/infer", json=infer_body(x.to_numpy(np.float32)))
        assert answer.status_code == 200, answer.text
        out = answer.json()["outputs"][0]
        served = np.asarray(out["data"]).reshape(out["shape"])
    finally:
        server.stop()
    assert np.abs(served - original).max() < 1e-4


def test_a_failing_script_shows_its_log_tail_and_registers_nothing(lab: Lab) -> None:
    script = lab.script("broken.py", """
        print("loading the data")
        raise ValueError("C must be positive, got -1")
    """)  # fmt: skip
    proc = lab.run(
        "train", "--dataset", "breast_cancer", "--model-name", "user_broken", "--script", str(script)
    )
    assert proc.returncode == 1, proc.stderr
    assert "broken.py exited with 1" in proc.stderr
    assert "loading the data" in proc.stderr and "C must be positive, got -1" in proc.stderr
    assert not registered(lab, "user_broken")


def test_a_script_that_leaves_no_model_names_the_contract_file(lab: Lab) -> None:
    script = lab.script("forgot.py", "print('trained, but saved nothing')\n")
    proc = lab.run(
        "train", "--dataset", "breast_cancer", "--model-name", "user_forgot", "--script", str(script)
    )
    assert proc.returncode != 0
    assert "left no model" in proc.stderr and "user_model/MLmodel" in proc.stderr
    assert "save_model(model, 'user_model')" in proc.stderr
    assert not registered(lab, "user_forgot")


def test_not_a_script_is_refused_before_anything_runs(lab: Lab) -> None:
    data = lab.script("notes.txt", "not code\n")
    proc = lab.run("train", "--dataset", "breast_cancer", "--model-name", "user_txt", "--script", str(data))
    assert proc.returncode == 2, proc.stderr
    assert "is not a .py or .ipynb file" in proc.stderr
    missing = lab.run("train", "--dataset", "breast_cancer", "--script", str(lab.root / "nope.py"))
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    assert not registered(lab, "user_txt")


@pytest.mark.slow  # seven steps, each its own process (papermill's kernel among them)
def test_a_users_notebook_is_the_train_step_of_the_retrain_pipeline(lab: Lab) -> None:
    import json

    pipeline = REPO / "stacks" / "pipelines" / "retrain-custom.yaml"
    params = ["--param", "dataset=breast_cancer", "--param", "C=2.0"]
    proc = lab.run(
        "pipeline", "run", str(pipeline), "--model", "custom_model", *params, "--json", timeout=900
    )
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    record = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert record["state"] == "succeeded" and record["version"] == "1"
    steps = {s["name"]: s["state"] for s in record["steps"]}
    assert list(steps) == ["ingest", "validate", "train", "evaluate", "export", "register", "promote"]
    assert set(steps.values()) == {"succeeded"}
    c = client(lab)
    assert c.get_registered_model("custom_model").aliases["champion"] == "1"
    version = c.get_model_version("custom_model", "1")
    assert version.tags["appliance.dataset"] == "breast_cancer"
    # The notebook's parameter reached it, and its logging went into the train step's run.
    train_runs = c.search_runs(
        [c.get_run(version.run_id).info.experiment_id], "params.C = '2.0'", max_results=5
    )
    assert train_runs, "the notebook's mlflow.log_param did not reach the pipeline's train step run"
    assert train_runs[0].data.metrics["train_accuracy"] > 0.9
