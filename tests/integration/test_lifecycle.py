"""The model lifecycle against real services: the bundled SeaweedFS and an ``mlflow server`` with
its artifact proxy writing to it.

breast_cancer trains through the CLI from a filesystem data connection and becomes champion; a
second identical run stays challenger; promote and rollback move the alias. diabetes trains from
the S3 data connection (regression). Bad inputs each give their message and register nothing.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from tests.integration._lifecycle_fixtures import Services, answers, cli, s3_client, services, summary

pytestmark = pytest.mark.integration
__all__ = ["services"]  # the module-scoped fixture, imported to be used here


def download(services: Services, uri: str) -> Path:
    import mlflow

    mlflow.set_tracking_uri(services.mlflow_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tempfile.mkdtemp()))
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return dict(client.get_registered_model(name).aliases)


@pytest.mark.slow
def test_filesystem_breast_cancer_champion_challenger_promote_rollback(
    services: Services, tmp_path: Path
) -> None:
    ans = answers(tmp_path / "appliance.yaml", services, "filesystem")
    state = tmp_path / "state"
    first = cli(ans, state, "data", "seed")
    assert first.returncode == 0, first.stderr
    assert "breast_cancer" in first.stdout and "(written)" in first.stdout
    again = cli(ans, state, "data", "seed", "--dataset", "breast_cancer")
    assert "(unchanged)" in again.stdout
    listing = cli(ans, state, "data", "ls")
    assert "breast_cancer/breast_cancer.csv" in listing.stdout
    assert (state / "data" / "datasets" / "breast_cancer" / "breast_cancer.csv").is_file()

    run1 = summary(cli(ans, state, "train", "--dataset", "breast_cancer"))
    metrics = run1["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["accuracy"] >= 0.95 and {"f1", "auc"} <= set(metrics)
    assert float(run1["parity_max_abs_diff"]) <= 1e-4  # type: ignore[arg-type]
    assert run1["promoted"] is True and run1["version"] == "1"
    client = MlflowClient(tracking_uri=services.mlflow_uri)
    assert aliases(client, "breast_cancer") == {"champion": "1"}

    folder = download(services, "models:/breast_cancer@champion")
    assert {"model.onnx", "drift_profile.json", "metrics.json", "MLmodel"} <= {
        p.name for p in folder.iterdir()
    }
    profile = json.loads((folder / "drift_profile.json").read_text())
    assert profile["input_name"] == "input" and len(profile["features"]) == 30
    for feature in profile["features"]:
        assert feature["edges"] == sorted(feature["edges"]) and len(feature["edges"]) <= 9
        assert sum(feature["counts"]) == profile["n_rows"]
        assert len(feature["counts"]) == len(feature["edges"]) + 1
    assert profile["prediction"]["kind"] == "class" and profile["prediction"]["edges"] == [0.5]
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probabilities"]
    for batch in (1, 7):
        probs = session.run(None, {"input": np.full((batch, 30), 10.0, dtype=np.float32)})[0]
        assert probs.shape == (batch, 2) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert "signature" in (folder / "MLmodel").read_text()

    run = client.get_run(str(run1["run_id"]))
    assert run.info.status == "FINISHED"
    assert run.data.tags["appliance.dataset_sha256"] == run1["dataset"]["sha256"]  # type: ignore[index]
    assert run.data.tags["appliance.version"] and "epochs" in run.data.params
    assert "training_curve.png" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert len(client.get_metric_history(run.info.run_id, "val_loss")) == run1["epochs_run"]

    run2 = summary(cli(ans, state, "train", "--dataset", "breast_cancer"))
    assert run2["promoted"] is False and run2["decision"] == "kept_challenger"
    assert run2["champion_score"] == pytest.approx(run2["challenger_score"])
    assert aliases(client, "breast_cancer") == {"champion": "1", "challenger": "2"}
    tags = client.get_model_version("breast_cancer", "2").tags
    assert tags["appliance.decision"] == "kept_challenger" and tags["appliance.metric"] == "accuracy"
    assert tags["appliance.champion_version"] == "1" and tags["appliance.champion_score"] != "none"

    promoted = cli(ans, state, "models", "promote", "breast_cancer", "2")
    assert promoted.returncode == 0, promoted.stderr
    assert aliases(client, "breast_cancer")["champion"] == "2"
    assert client.get_model_version("breast_cancer", "2").tags["appliance.decision"] == "promoted_manually"
    rolled = cli(ans, state, "models", "rollback", "breast_cancer")
    assert rolled.returncode == 0 and "v2 -> v1" in rolled.stdout
    assert aliases(client, "breast_cancer")["champion"] == "1"
    assert client.get_registered_model("breast_cancer").tags["appliance.last_rollback"] == "2->1"
    nothing_left = cli(ans, state, "models", "rollback", "breast_cancer")
    assert nothing_left.returncode != 0 and "no earlier champion" in nothing_left.stderr
    listed = cli(ans, state, "models", "list", "breast_cancer")
    lines = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert [(row[1], row[2]) for row in lines] == [("1", "champion"), ("2", "-")]


@pytest.mark.slow
def test_s3_diabetes_regression(services: Services, tmp_path: Path) -> None:
    ans = answers(tmp_path / "appliance.yaml", services, "s3")
    state = tmp_path / "state"
    seeded = cli(ans, state, "data", "seed", "--dataset", "diabetes", "--format", "parquet")
    assert seeded.returncode == 0, seeded.stderr
    assert "s3://datasets/diabetes/diabetes.parquet" in seeded.stdout
    keys = [o["Key"] for o in s3_client(services).list_objects_v2(Bucket="datasets")["Contents"]]
    assert keys == ["diabetes/diabetes.parquet"]
    assert "diabetes/diabetes.parquet" in cli(ans, state, "data", "ls").stdout

    result = summary(cli(ans, state, "train", "--dataset", "diabetes", "--model-name", "diabetes_s3"))
    metrics = result["metrics"]
    assert isinstance(metrics, dict) and {"rmse", "mae", "r2"} <= set(metrics)
    assert metrics["r2"] > 0.3 and result["task"] == "regression" and result["metric"] == "rmse"
    assert float(result["parity_max_abs_diff"]) <= 1e-4  # type: ignore[arg-type]
    folder = download(services, "models:/diabetes_s3@champion")
    profile = json.loads((folder / "drift_profile.json").read_text())
    assert profile["prediction"]["kind"] == "value" and len(profile["features"]) == 10
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["prediction"]
    assert session.run(None, {"input": np.zeros((3, 10), dtype=np.float32)})[0].shape == (3, 1)
    # The artifacts went through MLflow's proxy into the S3 bucket, not onto the client's disk.
    stored = s3_client(services).list_objects_v2(Bucket="mlflow").get("Contents", [])
    assert any(o["Key"].endswith("drift_profile.json") for o in stored)
