"""``appliance pipeline run`` end to end: real step processes, a real MLflow server, the real CLI."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import APPLIANCE
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

# A step that logs into the MLflow run the runner gave it, and records what it was handed.
LOGGING_STEP = (
    "import json, os, mlflow\n"
    "names = ('MLFLOW_RUN_ID', 'APPLIANCE_PIPELINE_RUN_ID', 'APPLIANCE_DATA_KIND')\n"
    "given = dict((k, os.environ[k]) for k in names)\n"
    "with mlflow.start_run() as run:\n"
    "    mlflow.log_metric('accuracy', 0.93)\n"
    "    given['active'] = run.info.run_id\n"
    "json.dump(given, open('given.json', 'w'))\n"
)

GOOD = f"""\
name: demo
model: demo-model
parameters: {{dataset: iris, version: "7"}}
steps:
  - name: ingest
    builtin: ingest
    args: {{dataset: "{{params.dataset}}"}}
  - name: train
    run: ["{{python}}", "-c", {json.dumps(LOGGING_STEP)}]
    inputs: [dataset_key.txt]
    outputs: {{given: given.json}}
  - name: register
    run: ["sh", "-c", "echo 'trained on {{steps.ingest.outputs.dataset_key}}';
                       echo {{params.version}} > version.txt"]
    outputs: {{version: version.txt}}
  - name: promote
    run: ["sh", "-c", "echo promoted > decision.txt"]
    outputs: {{decision: decision.txt}}
    when: "{{params.version}} != 0"
"""


def put_dataset(home: Home, name: str, files: dict[str, float]) -> None:
    """Dataset files with chosen modification times (seconds ago)."""
    folder = home.state / "data" / "datasets" / name
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for file, age in files.items():
        (folder / file).write_text("a,b,target\n1,2,0\n")
        os.utime(folder / file, (now - age, now - age))


def drift(model: str) -> dict:
    labels = {"alertname": "FeatureDrift", "model": model, "feature": "a"}
    return {"status": "firing", "labels": labels, "annotations": {}, "fingerprint": secrets.token_hex(8)}


def notification(*alerts: dict) -> dict:
    return {"version": "4", "status": "firing", "receiver": "controller", "alerts": list(alerts)}


def show(home: Home, run_id: str) -> dict:
    return json.loads(home.cli("pipeline", "show", run_id, "--json").stdout)


def last_run(home: Home) -> dict:
    runs = json.loads(home.cli("pipeline", "runs", "--json").stdout)
    return runs[0]


def test_a_pipeline_runs_with_one_mlflow_child_run_per_step(home: Home) -> None:
    put_dataset(home, "iris", {"old.csv": 3600, "new.csv": 10, "notes.txt": 0})
    path = home.pipeline("demo", GOOD)

    done = home.cli("pipeline", "run", str(path), "--param", "dataset=iris")

    assert "succeeded" in done.stdout and "promoted, version 7" in done.stdout
    for step in ("ingest", "train", "register", "promote"):
        assert f"{step}" in done.stderr and "running" in done.stderr
    run = last_run(home)
    assert (run["state"], run["outcome"], run["version"], run["trigger"]) == (
        "succeeded",
        "promoted",
        "7",
        "manual",
    )
    assert [s["state"] for s in run["steps"]] == ["succeeded"] * 4
    workdir = Path(run["workdir"])
    assert (workdir / "dataset_key.txt").read_text().strip() == "iris/new.csv", (
        "the newest .csv is the version"
    )

    parent = mlflow_run(home.mlflow_url, run["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["appliance.pipeline"] == "demo" and parent.data.params == {
        "dataset": "iris",
        "version": "7",
    }
    children = mlflow_children(home.mlflow_url, parent)
    assert set(children) == {"ingest", "train", "register", "promote"}
    assert {c.info.status for c in children.values()} == {"FINISHED"}
    given = json.loads((workdir / "given.json").read_text())
    train = children["train"]
    assert given["MLFLOW_RUN_ID"] == given["active"] == train.info.run_id
    assert given["APPLIANCE_PIPELINE_RUN_ID"] == parent.info.run_id
    assert given["APPLIANCE_DATA_KIND"] == "filesystem"
    assert train.data.metrics["accuracy"] == pytest.approx(0.93)
    step_ids = {s["name"]: s["mlflow_run_id"] for s in run["steps"]}
    assert step_ids == {name: child.info.run_id for name, child in children.items()}


def test_a_failing_step_is_retried_then_fails_the_run_and_later_steps_never_run(home: Home) -> None:
    path = home.pipeline("flaky", """\
name: flaky
model: flaky-model
steps:
  - name: prepare
    run: ["sh", "-c", "echo prepared"]
  - name: train
    run: ["sh", "-c", "echo attempt on $APPLIANCE_STEP; echo 'boom: the data is bad' >&2; exit 3"]
    retries: 2
  - name: promote
    run: ["sh", "-c", "touch promoted"]
""")  # fmt: skip
    failed = home.cli("pipeline", "run", str(path), check=False)

    assert failed.returncode == 1
    assert "retrying (attempt 1/3): exit code 3" in failed.stderr
    assert "pipeline run" in failed.stderr and "step 'train' failed: exit code 3" in failed.stderr
    run = show(home, last_run(home)["id"])
    assert run["state"] == "failed" and run["outcome"] == "failed at train"
    steps = {s["name"]: s for s in run["steps"]}
    assert (steps["train"]["state"], steps["train"]["attempts"], steps["train"]["exit_code"]) == (
        "failed",
        3,
        3,
    )
    assert steps["promote"]["state"] == "not run"
    assert not (Path(run["workdir"]) / "promoted").exists(), "the promote step must not run after a failure"
    assert run["log_step"] == "train" and "boom: the data is bad" in run["log_tail"]
    assert run["log_tail"].rstrip().endswith("=== exit code 3 ==="), "the tail is the end of the last attempt"
    assert "=== attempt 3/3 ===" in run["log_tail"]
    human = home.cli("pipeline", "show", run["id"]).stdout
    assert "boom: the data is bad" in human and "attempts 3" in human

    parent = mlflow_run(home.mlflow_url, run["mlflow_run_id"])
    assert parent.info.status == "FAILED"
    children = mlflow_children(home.mlflow_url, parent)
    assert {n: c.info.status for n, c in children.items()} == {"prepare": "FINISHED", "train": "FAILED"}
    assert children["train"].data.metrics["step_attempts"] == 3


def test_a_step_past_its_timeout_is_killed_with_its_children_and_retried(home: Home) -> None:
    pids = home.root / "pids"
    path = home.pipeline("slow", f"""\
name: slow
model: slow-model
steps:
  - name: hang
    run: ["sh", "-c", "sleep 300 & echo $! >> {pids}; wait"]
    timeout_seconds: 1
    retries: 1
""")  # fmt: skip
    started = time.monotonic()
    failed = home.cli("pipeline", "run", str(path), check=False)

    assert failed.returncode == 1 and time.monotonic() - started < 60
    assert "retrying (attempt 1/2): timed out after 1 s" in failed.stderr
    run = show(home, last_run(home)["id"])
    step = run["steps"][0]
    assert (step["state"], step["attempts"], step["error"]) == ("failed", 2, "timed out after 1 s")
    assert "timed out after 1 s: killed" in run["log_tail"]
    sleepers = [int(p) for p in pids.read_text().split()]
    assert len(sleepers) == 2
    wait_for("the steps' background sleeps to be killed", lambda: all(process_gone(p) for p in sleepers), 10)


def test_a_second_run_for_the_same_model_is_refused_while_the_first_holds_the_lock(home: Home) -> None:
    gate = home.root / "gate"
    path = home.pipeline("hold", f"""\
name: hold
model: locked-model
steps:
  - name: wait
    run: ["sh", "-c", "while [ ! -e {gate} ]; do sleep 0.1; done"]
""")  # fmt: skip
    cmd = [
        APPLIANCE,
        "--answers",
        str(home.answers),
        "--state-dir",
        str(home.state),
        "pipeline",
        "run",
        str(path),
    ]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            "the first run to hold the lock", lambda: "held by pid" in home.cli("pipeline", "runs").stdout
        )
        listing = home.cli("pipeline", "runs").stdout
        assert f"running, held by pid {first.pid}" in listing

        second = home.cli("pipeline", "run", str(path), check=False)
        assert second.returncode == 1
        assert "already running" in second.stderr and f"held by pid {first.pid}" in second.stderr
    finally:
        gate.touch()
        _, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    runs = json.loads(home.cli("pipeline", "runs", "--json").stdout)
    assert [(r["model"], r["state"]) for r in runs if r["model"] == "locked-model"] == [
        ("locked-model", "succeeded")
    ]


def test_a_notebook_step_runs_headless_with_its_parameters(home: Home) -> None:
    import nbformat

    notebook = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("threshold = 0.1\nlabel = 'default'")
    params.metadata["tags"] = ["parameters"]
    notebook.cells = [
        params,
        nbformat.v4.new_code_cell(
            "import os\n"
            "open('report.txt', 'w').write(f'{label} {threshold * 2} {os.environ[\"APPLIANCE_STEP\"]}')"
        ),
    ]
    nbformat.write(notebook, home.root / "report.ipynb")
    path = home.pipeline("nb", """\
name: nb
model: nb-model
parameters: {threshold: "0.25"}
steps:
  - name: report
    notebook: report.ipynb
    args: {threshold: "{params.threshold}", label: "{run_id}"}
    outputs: {report: report.txt}
    timeout_seconds: 240
""")  # fmt: skip
    home.cli("pipeline", "run", str(path))

    run = json.loads(home.cli("pipeline", "runs", "--json").stdout)[0]
    assert run["state"] == "succeeded"
    workdir = Path(run["workdir"])
    assert (workdir / "report.txt").read_text() == f"{run['id']} 0.5 report"
    assert (workdir / "report.ipynb").is_file(), "the executed notebook is kept beside the outputs"


# A user's own retrain pipeline, placed in STATE/pipelines after the controller started. Its
# validate step writes dataset.json as the trainer does (what it trained on), from a dataset it
# is told (`{params.dataset}`, the model's binding) or, in the wrong one, a fixed other dataset.
USER_RETRAIN = """\
name: {name}
model: breast_cancer
parameters: {{dataset: breast_cancer, target: ""}}
steps:
  - name: ingest
    builtin: ingest
    args: {{dataset: "{{params.dataset}}"}}
  - name: validate
    run: ["sh", "-c", "echo user-pipeline {{model}} {trained_on} > trained.txt; printf '%s' '{{{{\\"name\\":
          \\"{trained_on}\\", \\"model_name\\": \\"{{model}}\\", \\"spec\\": {{{{\\"target\\": \\"target\\",
          \\"features\\": [\\"a\\", \\"b\\"]}}}}}}}}' > dataset.json"]
    outputs: {{trained: trained.txt}}
  - name: register
    run: ["sh", "-c", "echo 1 > version.txt"]
    outputs: {{version: version.txt}}
"""


def test_the_controller_runs_the_users_pipeline_from_state_pipelines_for_each_models_own_data(
    home: Home, controllers: list[Controller]
) -> None:
    from appliance.answers import Answers
    from appliance.workloads.binding import models_json

    put_dataset(home, "wine", {"wine.csv": 5})
    put_dataset(home, "breast_cancer", {"breast_cancer.csv": 5})
    models = home.root / "models.json"
    models.write_text(
        models_json(
            Answers.model_validate(
                {
                    "models": [
                        {"name": "breast_cancer", "dataset": "breast_cancer"},
                        {"name": "wine", "dataset": "wine"},
                        {"name": "orphan", "uri": str(home.root / "orphan.onnx")},
                    ]
                }
            )
        )
    )
    token = home.root / "token"
    token.write_text(secrets.token_urlsafe(24))
    user = home.state / "pipelines"  # where the stack points the controller (--pipelines-dir)
    controller = Controller(home, user, token, "--models-file", str(models)).start()
    controllers.append(controller)
    # Added after the controller started: the next trigger reads it.
    user.mkdir(parents=True, exist_ok=True)
    (user / "retrain.yaml").write_text(USER_RETRAIN.format(name="retrain", trained_on="{params.dataset}"))

    started = controller.post("/alerts", notification(drift("wine")))
    assert started.status_code == 202, started.text
    run_id = started.json()["results"][0]["run_id"]
    done = wait_for("the wine run", lambda: (r := controller.run(run_id))["state"] != "running" and r)
    assert done["state"] == "succeeded", done
    workdir = Path(done["workdir"])
    assert (workdir / "trained.txt").read_text().split() == ["user-pipeline", "wine", "wine"]
    assert done["params"]["dataset"] == "wine" and done["model"] == "wine"

    # A model with no binding: acknowledged (Alertmanager must not retry), refused, counted.
    refused = controller.post("/alerts", notification(drift("orphan")))
    assert refused.status_code == 200, refused.text
    result = refused.json()["results"][0]
    assert result["status"] == "refused" and "models[].dataset" in result["detail"], result
    assert 'appliance_retrain_refusals_total{model="orphan"} 1.0' in controller.get("/metrics").text
    assert [r["model"] for r in controller.get("/runs").json()["runs"]] == ["wine"]

    # A pipeline that trains wine on another model's data never reaches its register step.
    (user / "wrong.yaml").write_text(USER_RETRAIN.format(name="wrong", trained_on="breast_cancer"))
    wrong = controller.post("/pipelines/wrong/run", {"model": "wine"})
    assert wrong.status_code == 202, wrong.text
    run_id = wrong.json()["run_id"]
    failed = wait_for("the wrong run", lambda: (r := controller.run(run_id))["state"] != "running" and r)
    assert failed["state"] == "failed" and failed["outcome"] == "failed at register", failed
    assert "the run trained on dataset 'breast_cancer', but 'wine' is bound to 'wine'" in failed["error"]
    assert not (Path(failed["workdir"]) / "version.txt").exists()
