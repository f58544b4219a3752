"""Bad inputs against real services, and the single-step entry points the pipeline runs.

Each bad input (missing dataset, wrong schema, one-class target, empty column, unreachable
object store, unreachable MLflow) must end with its one message, a non-zero exit, a FAILED MLflow
run when one was started, and no registered version. The CLI runs in this process here (the
same ``main`` as the script) to keep the module fast; test_lifecycle.py runs it as a process.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.integration._lifecycle_fixtures import S3_KEYS, Services, answers, free_port, services

pytestmark = pytest.mark.integration
__all__ = ["services"]


@pytest.fixture
def clean_env() -> Iterator[None]:
    """The commands write the data connection into os.environ; put it back afterwards."""
    saved = dict(os.environ)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "APPLIANCE_STATE_DIR", "APPLIANCE_ANSWERS"):
        os.environ.pop(name, None)
    os.environ.update(S3_KEYS)
    yield
    os.environ.clear()
    os.environ.update(saved)
    # In-process trainer calls choose MLflow experiments; later tests talk to other servers.
    import mlflow.tracking.fluent

    mlflow.tracking.fluent._active_experiment_id = None


def run_cli(args: list[str], capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from appliance.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    out, err = capfd.readouterr()
    return code, out, err


def breast_cancer() -> pd.DataFrame:
    from sklearn.datasets import load_breast_cancer

    frame: pd.DataFrame = load_breast_cancer(as_frame=True).frame
    return frame


def bad_frames() -> dict[str, tuple[pd.DataFrame, str]]:
    base = breast_cancer()
    return {
        "bad_schema": (
            base.assign(color=["red", "blue"] * (len(base) // 2) + ["red"]),
            "'color' is not numeric",
        ),
        "one_class": (base.assign(target=1), "has a single class"),
        "empty_col": (base.assign(empty=float("nan")), "'empty' is empty (all values NaN)"),
    }


CASES = ["missing", "bad_schema", "one_class", "empty_col", "store_down", "mlflow_down"]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_fails_with_message_and_registers_nothing(
    case: str, services: Services, tmp_path: Path, clean_env: None, capfd: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "state"
    kind = "s3" if case == "store_down" else "filesystem"
    mlflow_port = free_port() if case == "mlflow_down" else None
    ans = answers(tmp_path / "appliance.yaml", services, kind, mlflow_port)
    if case == "store_down":
        ans.write_text(ans.read_text().replace(services.s3_endpoint, f"http://127.0.0.1:{free_port()}"))
    name, expected = (
        f"{case}_{tmp_path.name[-8:]}",
        {
            "missing": "not found",
            "store_down": "cannot reach the object store",
            "mlflow_down": "cannot reach MLflow",
        }.get(case, ""),
    )
    if case in bad_frames():
        frame, expected = bad_frames()[case]
        folder = state / "data" / "datasets" / name
        folder.mkdir(parents=True)
        frame.to_csv(folder / f"{name}.csv", index=False)
    code, _out, err = run_cli(
        ["--answers", str(ans), "--state-dir", str(state), "train", "--dataset", name], capfd
    )
    assert code != 0
    assert expected in err and "fix:" in err, err
    assert "Traceback" not in err
    client = MlflowClient(tracking_uri=services.mlflow_uri)
    assert client.search_registered_models(filter_string=f"name='{name}'") == []
    experiment = client.get_experiment_by_name(name)
    if case == "mlflow_down":
        assert experiment is None
        return
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert expected in runs[0].data.tags["appliance.error"]


def test_pipeline_steps_log_into_the_given_run(
    services: Services, tmp_path: Path, clean_env: None, capfd: pytest.CaptureFixture[str]
) -> None:
    """validate..promote as separate calls sharing --workdir, each in its own MLFLOW_RUN_ID run."""
    from appliance.dataconn import DataConnection
    from appliance.dataconn.seed import seed
    from appliance.workloads.trainer.__main__ import main as trainer

    os.environ |= {
        "APPLIANCE_DATA_KIND": "filesystem",
        "APPLIANCE_DATA_ROOT": str(tmp_path / "data"),
        "MLFLOW_TRACKING_URI": services.mlflow_uri,
    }
    key, _ = seed(DataConnection.from_env(), "wine")
    client = MlflowClient(tracking_uri=services.mlflow_uri)
    experiment = client.create_experiment(f"pipeline-{tmp_path.name}")
    parent = client.create_run(experiment).info.run_id
    work = str(tmp_path / "work")
    steps = {
        "validate": ["--dataset", "wine", "--key", key, "--epochs", "15"],
        "train": ["--epochs", "15"],
        "evaluate": ["--model", "wine_steps"],
        "export": [],
        "register": ["--model", "wine_steps"],
        "promote": ["--model", "wine_steps"],
    }
    results = {}
    for step, extra in steps.items():
        child = client.create_run(experiment, tags={"mlflow.parentRunId": parent}).info.run_id
        os.environ["MLFLOW_RUN_ID"] = child
        assert trainer([step, "--workdir", work, *extra]) == 0, capfd.readouterr().err
        results[step] = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
        assert results[step]["run_id"] == child
        assert client.get_run(child).info.status == "FINISHED"
    assert results["evaluate"]["metrics"]["accuracy"] > 0.8
    assert results["promote"]["promoted"] is True
    assert dict(client.get_registered_model("wine_steps").aliases) == {"champion": "1"}
    train_run = client.get_run(results["train"]["run_id"])
    assert "training_curve.png" in {a.path for a in client.list_artifacts(train_run.info.run_id)}
    os.environ.pop("MLFLOW_RUN_ID", None)  # MLflow consumes it when it resumes the run
    assert trainer(["register", "--workdir", str(tmp_path / "empty")]) == 2
    assert "run the 'validate' step first" in capfd.readouterr().err
