"""``appliance models import`` against real services: the bundled SeaweedFS behind an
``mlflow server``, the data connection's datasets written by ``appliance data seed``
(breast_cancer, a classifier; diabetes, a regressor), and the real model server.

Each framework's model is trained and logged to MLflow here as a notebook would do it, imported
through the CLI, served from ``models:/NAME@champion``, and its served answers compared with the
original model's on the same rows. The refusals (parity, columns, flavour, dataset) each leave
the registry without the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest

from tests.integration._lifecycle_fixtures import Services, answers, cli, services, summary
from tests.integration._serving_fixtures import infer_body, start_server

pytestmark = pytest.mark.integration
__all__ = ["services"]  # the module-scoped fixture, imported to be used here

PIP = ["scikit-learn"]  # stated, so that logging does not spend ~10 s inferring requirements


@dataclass
class Lab:
    answers: Path
    state: Path
    services: Services
    root: Path

    def frame(self, dataset: str) -> pd.DataFrame:
        return pd.read_csv(self.state / "data" / "datasets" / dataset / f"{dataset}.csv")

    def xy(self, dataset: str) -> tuple[pd.DataFrame, pd.Series]:
        frame = self.frame(dataset)
        return frame.drop(columns="target"), frame["target"]

    def run(self, *args: str) -> Any:
        return cli(self.answers, self.state, *args)


@pytest.fixture(scope="module")
def lab(services: Services, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("import")
    ans = answers(root / "appliance.yaml", services, "filesystem")
    state = root / "state"
    seeded = cli(ans, state, "data", "seed", "--dataset", "breast_cancer", "--dataset", "diabetes")
    assert seeded.returncode == 0, seeded.stderr
    yield Lab(ans, state, services, root)


def log(lab: Lab, make: Callable[[], Any]) -> str:
    """Run ``make`` (a ``mlflow.<flavour>.log_model`` call) in a run of its own; the model's URI."""
    import mlflow

    mlflow.set_tracking_uri(lab.services.mlflow_uri)
    try:
        mlflow.set_experiment("notebook")
        with mlflow.start_run():
            uri: str = make().model_uri
        return uri
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


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


def served(lab: Lab, name: str, x: np.ndarray) -> np.ndarray:
    """What the real model server answers for ``x`` from ``models:/NAME@champion``."""
    env = {"MLFLOW_TRACKING_URI": lab.services.mlflow_uri}
    server = start_server(["--model", f"models:/{name}@champion", "--name", name], lab.root, env=env)
    try:
        answer = httpx.post(f"{server.url}/v2/models/{name}/infer", json=infer_body(x), timeout=30)
        assert answer.status_code == 200, answer.text
        out = answer.json()["outputs"][0]
        return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
    finally:
        server.stop()


def imported(lab: Lab, uri: str, name: str, dataset: str, *extra: str) -> dict[str, Any]:
    proc = lab.run("models", "import", uri, "--name", name, "--dataset", dataset, *extra)
    data = summary(proc)
    assert "1/6 load" in proc.stderr and "4/6 parity" in proc.stderr and "6/6 register" in proc.stderr
    return data


def check_version(lab: Lab, name: str, framework: str, dataset: str, n_features: int) -> None:
    """The layout the server downloads, and the trainer's tags."""
    import mlflow

    c = client(lab)
    assert c.get_registered_model(name).aliases["champion"] == "1"
    tags = c.get_model_version(name, "1").tags
    assert tags["appliance.framework"] == framework and tags["appliance.dataset"] == dataset
    assert tags["appliance.decision"] == "promoted" and tags["appliance.dataset_sha256"]
    assert float(tags["appliance.parity_max_abs_diff"]) <= 1e-3
    mlflow.set_tracking_uri(lab.services.mlflow_uri)
    try:
        folder = Path(
            mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=tempfile.mkdtemp())
        )
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    assert {"model.onnx", "drift_profile.json", "metrics.json"} <= {p.name for p in folder.iterdir()}
    profile = json.loads((folder / "drift_profile.json").read_text())
    assert profile["input_name"] == "input" and len(profile["features"]) == n_features


def test_sklearn_pipeline_with_preprocessing(lab: Lab) -> None:
    """Columns picked by name (StandardScaler, one-hot bins) then Ridge, on the diabetes regressor."""
    import mlflow
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import KBinsDiscretizer, StandardScaler

    x, y = lab.xy("diabetes")
    others = [c for c in x.columns if c != "bmi"]
    prep = ColumnTransformer(
        [
            ("scale", StandardScaler(), others),
            ("bins", KBinsDiscretizer(n_bins=4, encode="onehot-dense"), ["bmi"]),
        ]
    )
    model = Pipeline([("prep", prep), ("ridge", Ridge(alpha=0.1))]).fit(x, y)
    uri = log(
        lab,
        lambda: mlflow.sklearn.log_model(
            model,
            name="model",
            input_example=x.iloc[:3],
            pip_requirements=PIP,
            skops_trusted_types=["numpy.dtype"],
        ),
    )
    result = imported(lab, uri, "diabetes_sklearn", "diabetes")
    assert result["framework"] == "sklearn" and result["task"] == "regression" and result["promoted"] is True
    assert result["features"] == list(x.columns) and result["parity_max_abs_diff"] < 1e-3
    check_version(lab, "diabetes_sklearn", "sklearn", "diabetes", 10)
    rows = x.iloc[:25].to_numpy(dtype=np.float32)
    expected = model.predict(pd.DataFrame(rows.astype(np.float64), columns=x.columns)).reshape(-1, 1)
    np.testing.assert_allclose(served(lab, "diabetes_sklearn", rows), expected, rtol=1e-5, atol=1e-3)


def test_xgboost_classifier(lab: Lab) -> None:
    import mlflow
    import xgboost

    x, y = lab.xy("breast_cancer")
    model = xgboost.XGBClassifier(n_estimators=25, max_depth=3, random_state=0).fit(x, y)
    uri = log(
        lab,
        lambda: mlflow.xgboost.log_model(model, name="model", input_example=x.iloc[:3], pip_requirements=PIP),
    )
    result = imported(lab, uri, "bc_xgboost", "breast_cancer")
    assert result["framework"] == "xgboost" and result["task"] == "classification"
    assert result["metrics"]["accuracy"] > 0.9
    check_version(lab, "bc_xgboost", "xgboost", "breast_cancer", 30)
    # The same trees through the native API (a Booster): onnxmltools, the same test scores.
    booster = model.get_booster()
    native_uri = log(lab, lambda: mlflow.xgboost.log_model(booster, name="model", pip_requirements=PIP))
    native = imported(lab, native_uri, "bc_xgboost_booster", "breast_cancer")
    assert native["converter"] == "onnxmltools" and native["task"] == "classification"
    assert native["metrics"] == pytest.approx(result["metrics"])
    rows = x.iloc[100:130].to_numpy(dtype=np.float32)
    expected = model.predict_proba(pd.DataFrame(rows, columns=x.columns))
    np.testing.assert_allclose(served(lab, "bc_xgboost", rows), expected, atol=1e-5)


def test_lightgbm_regressor(lab: Lab) -> None:
    import lightgbm
    import mlflow

    x, y = lab.xy("diabetes")
    model = lightgbm.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1, random_state=0).fit(x, y)
    uri = log(
        lab,
        lambda: mlflow.lightgbm.log_model(
            model, name="model", input_example=x.iloc[:3], pip_requirements=PIP
        ),
    )
    result = imported(lab, uri, "diabetes_lightgbm", "diabetes")
    assert result["framework"] == "lightgbm" and result["metric"] == "rmse"
    check_version(lab, "diabetes_lightgbm", "lightgbm", "diabetes", 10)
    native_uri = log(
        lab, lambda: mlflow.lightgbm.log_model(model.booster_, name="model", pip_requirements=PIP)
    )
    native = imported(lab, native_uri, "diabetes_lightgbm_booster", "diabetes")
    assert native["converter"] == "onnxmltools" and native["task"] == "regression"
    assert native["metrics"] == pytest.approx(result["metrics"])
    rows = x.iloc[:20].to_numpy(dtype=np.float32)
    expected = np.asarray(model.predict(pd.DataFrame(rows.astype(np.float64), columns=x.columns))).reshape(
        -1, 1
    )
    np.testing.assert_allclose(served(lab, "diabetes_lightgbm", rows), expected, rtol=1e-5, atol=1e-3)


def test_pytorch_classifier_logits_become_probabilities(lab: Lab) -> None:
    import mlflow
    import torch

    x, y = lab.xy("breast_cancer")
    features = torch.as_tensor(x.to_numpy(dtype=np.float32))
    mean, std = features.mean(0), features.std(0)

    class Net(torch.nn.Module):
        mean: torch.Tensor
        std: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)
            self.body = torch.nn.Sequential(torch.nn.Linear(30, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.body((inputs - self.mean) / self.std)  # logits

    torch.manual_seed(0)
    net = Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    labels = torch.as_tensor(y.to_numpy())
    for _ in range(150):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(features), labels).backward()
        optimizer.step()
    net.eval()
    example = x.to_numpy(dtype=np.float32)[:3]
    uri = log(
        lab,
        lambda: mlflow.pytorch.log_model(
            net, name="model", input_example=example, pip_requirements=["torch"]
        ),
    )
    result = imported(lab, uri, "bc_torch", "breast_cancer")
    assert result["framework"] == "pytorch" and result["converter"] == "torch.onnx"
    assert result["metrics"]["accuracy"] > 0.9
    check_version(lab, "bc_torch", "pytorch", "breast_cancer", 30)
    rows = x.to_numpy(dtype=np.float32)[200:240]
    with torch.no_grad():
        expected = torch.softmax(net(torch.as_tensor(rows)), dim=1).numpy()
    np.testing.assert_allclose(served(lab, "bc_torch", rows), expected, atol=1e-5)


def test_onnx_model_with_zipmap_and_a_local_file(lab: Lab, tmp_path: Path) -> None:
    """An ONNX classifier as skl2onnx writes it by default (a label and a ZipMap of dicts):
    logged with mlflow.onnx and imported; the same file from a local path is a second version."""
    import mlflow
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = lab.xy("breast_cancer")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x.to_numpy(), y)
    graph = to_onnx(model, x.to_numpy(dtype=np.float32)[:2], target_opset={"": 18, "ai.onnx.ml": 3})
    assert any(node.op_type == "ZipMap" for node in graph.graph.node)
    uri = log(lab, lambda: mlflow.onnx.log_model(graph, name="model", pip_requirements=["onnx"]))
    result = imported(lab, uri, "bc_onnx", "breast_cancer")
    assert result["framework"] == "onnx" and result["parity_max_abs_diff"] < 1e-4
    check_version(lab, "bc_onnx", "onnx", "breast_cancer", 30)
    rows = x.to_numpy(dtype=np.float32)[:30]
    expected = model.predict_proba(rows.astype(np.float64))
    np.testing.assert_allclose(served(lab, "bc_onnx", rows), expected, atol=1e-5)

    path = tmp_path / "model.onnx"
    path.write_bytes(graph.SerializeToString())
    again = imported(lab, str(path), "bc_onnx", "breast_cancer")
    assert again["version"] == "2" and again["decision"] == "kept_challenger"  # equal, not better


def test_failing_parity_registers_nothing(lab: Lab) -> None:
    """Tolerance 0 against a float64 model: float32 rounding alone is a difference, so the import is
    refused, naming the tolerance and the worst row with both outputs."""
    import mlflow
    from sklearn.linear_model import Ridge

    x, y = lab.xy("diabetes")
    model = Ridge(alpha=0.1).fit(x, y)
    uri = log(
        lab,
        lambda: mlflow.sklearn.log_model(model, name="model", input_example=x.iloc[:3], pip_requirements=PIP),
    )
    proc = lab.run(
        "models", "import", uri, "--name", "strict", "--dataset", "diabetes", "--atol", "0", "--rtol", "0"
    )
    assert proc.returncode == 1, proc.stderr
    assert "does not match the original" in proc.stderr and "worst row" in proc.stderr
    assert (
        "tolerance 0 + 0 x |original|" in proc.stderr
        and "original [" in proc.stderr
        and "ONNX [" in proc.stderr
    )
    assert not registered(lab, "strict")
    assert client(lab).search_experiments(filter_string="name = 'strict'") == []  # no run either
    # The same model within the default tolerance passes.
    assert imported(lab, uri, "strict", "diabetes")["version"] == "1"


def test_columns_that_do_not_match_and_a_missing_dataset_are_refused(lab: Lab) -> None:
    import mlflow
    from sklearn.linear_model import LogisticRegression

    x, y = lab.xy("breast_cancer")
    model = LogisticRegression(max_iter=2000).fit(x, y)
    uri = log(
        lab,
        lambda: mlflow.sklearn.log_model(model, name="model", input_example=x.iloc[:3], pip_requirements=PIP),
    )
    wrong = lab.run("models", "import", uri, "--name", "mismatch", "--dataset", "diabetes")
    assert wrong.returncode == 2, wrong.stderr
    assert "model 'mismatch' does not match dataset 'diabetes'" in wrong.stderr
    assert (
        "missing from the dataset: mean radius" in wrong.stderr
        and "not taken by the model: age" in wrong.stderr
    )
    nothing = lab.run("models", "import", uri, "--name", "mismatch", "--dataset", "nosuchdata")
    assert nothing.returncode != 0 and "nosuchdata" in nothing.stderr and "breast_cancer" in nothing.stderr
    traversal = lab.run("models", "import", uri, "--name", "../escape", "--dataset", "breast_cancer")
    assert traversal.returncode == 2 and "not a valid name" in traversal.stderr
    assert not registered(lab, "mismatch")


def test_a_flavour_without_converter_is_refused(lab: Lab) -> None:
    import mlflow
    from mlflow.pyfunc import PythonModel

    class Echo(PythonModel):
        def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> Any:
            return model_input

    uri = log(lab, lambda: mlflow.pyfunc.log_model(name="model", python_model=Echo(), pip_requirements=PIP))
    proc = lab.run("models", "import", uri, "--name", "custom", "--dataset", "breast_cancer")
    assert proc.returncode == 2, proc.stderr
    assert (
        "python_function" in proc.stderr
        and "supported: sklearn, xgboost, lightgbm, pytorch, onnx" in proc.stderr
    )
    assert "mlflow.onnx" in proc.stderr  # the fix
    assert not registered(lab, "custom")


def test_a_second_import_becomes_champion_only_when_better(lab: Lab) -> None:
    """Scored on the same held-out rows as the champion: weak -> champion (none yet); strong ->
    champion; weak again -> challenger only."""
    import mlflow
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = lab.xy("breast_cancer")
    weak_all = make_pipeline(StandardScaler(), LogisticRegression(C=1e-4, max_iter=500)).fit(x, y)
    strong = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    assert weak_all.score(x, y) < strong.score(x, y)

    def logged(model: Any) -> str:
        return log(
            lab,
            lambda: mlflow.sklearn.log_model(
                model, name="model", input_example=x.iloc[:3], pip_requirements=PIP
            ),
        )

    first = imported(lab, logged(weak_all), "bc_ranked", "breast_cancer")
    second = imported(lab, logged(strong), "bc_ranked", "breast_cancer")
    third = imported(lab, logged(weak_all), "bc_ranked", "breast_cancer")
    assert first["decision"] == "promoted" and first["reason"] == "no champion yet"
    assert second["decision"] == "promoted" and second["champion_version"] == "1"
    assert second["challenger_score"] > second["champion_score"]
    assert third["decision"] == "kept_challenger" and third["champion_version"] == "2"
    assert third["champion_score"] == pytest.approx(second["challenger_score"])
    assert dict(client(lab).get_registered_model("bc_ranked").aliases) == {"champion": "2", "challenger": "3"}
    assert os.environ.get("MLFLOW_TRACKING_URI") is None  # the CLI ran in its own process
