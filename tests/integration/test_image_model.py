"""An image classifier through the whole loop: train -> register -> serve -> prediction-drift alert.

scikit-learn's digits, seeded as a table of 64 ``pixel_ROW_COL`` columns, is recognised as 1x8x8
images: ``appliance train`` fits the built-in CNN, exports it with a [batch, 1, 8, 8] input and
registers it in a real ``mlflow server``; the real model server serves ``models:/digits@champion``
over REST with 4-D tensors; traffic of two digits only moves the distribution of its predicted
classes, which the server exports as ``appliance_prediction_psi``, and a real Prometheus with the
appliance's generated rules fires ``PredictionDrift`` for the model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from appliance.monitoring.catalog import (
    SERVING_INTERNAL,
    SERVING_METRICS,
    exposition_metric_names,
    unknown_metrics,
)
from appliance.monitoring.prometheus_config import ScrapeTarget, render_prometheus_config
from appliance.monitoring.rules import render_alert_rules
from tests.integration._lifecycle_fixtures import (
    Services,
    answers,
    cli,
    free_port,
    services,
    start,
    stop,
    summary,
    wait_http,
)
from tests.integration._serving_fixtures import ServerProcess, infer_body, start_server

pytestmark = pytest.mark.integration
__all__ = ["services"]

PROMETHEUS = shutil.which("prometheus") or ""
TOKEN = "digits-token"
WINDOW, MIN_ROWS, THRESHOLD = 400, 300, 0.2


def gauge(text: str, name: str, model: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(f'{name}{{model="{model}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def trained(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("image")
    ans = answers(root / "appliance.yaml", services, "filesystem")
    state = root / "state"
    seeded = cli(ans, state, "data", "seed", "--dataset", "digits")
    assert seeded.returncode == 0, seeded.stderr
    result = summary(cli(ans, state, "train", "--dataset", "digits", "--epochs", "15", "--json", timeout=600))
    frame = pd.read_csv(state / "data" / "datasets" / "digits" / "digits.csv")
    return {"summary": result, "frame": frame, "root": root}


@pytest.fixture(scope="module")
def server(services: Services, trained: dict) -> Iterator[ServerProcess]:
    env = {"MLFLOW_TRACKING_URI": services.mlflow_uri}
    args = ["--model", "models:/digits@champion", "--name", "digits", "--token", TOKEN]
    srv = start_server(
        [*args, "--drift-window", str(WINDOW), "--poll-seconds", "0"], trained["root"], env=env
    )
    yield srv
    srv.stop()


def infer(srv: ServerProcess, images: np.ndarray) -> np.ndarray:
    answer = httpx.post(
        f"{srv.url}/v2/models/digits/infer",
        json=infer_body(images.astype(np.float32)),
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    out = answer.json()["outputs"][0]
    return np.asarray(out["data"]).reshape(out["shape"])


def test_digits_trains_a_cnn_registered_with_an_output_only_profile(
    services: Services, trained: dict
) -> None:
    import mlflow

    result = trained["summary"]
    assert result["model_kind"] == "cnn" and result["task"] == "classification"
    assert result["decision"] == "promoted" and result["version"] == "1"
    assert result["metrics"]["accuracy"] > 0.85  # ten classes
    assert result["parity_max_abs_diff"] <= 1e-4
    mlflow.set_tracking_uri(services.mlflow_uri)
    try:
        folder = Path(
            mlflow.artifacts.download_artifacts("models:/digits@champion", dst_path=tempfile.mkdtemp())
        )
        tags = mlflow.MlflowClient().get_model_version("digits", "1").tags
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    profile = json.loads((folder / "drift_profile.json").read_text())
    assert profile["features"] == [] and profile["input_shape"] == [1, 8, 8]
    assert profile["columns"] == [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    assert profile["prediction"]["kind"] == "class" and len(profile["prediction"]["counts"]) == 10
    assert tags["appliance.dataset"] == "digits"


def test_served_with_a_4d_input_and_its_prediction_drift_alert_fires(
    server: ServerProcess, trained: dict, tmp_path: Path
) -> None:
    meta = httpx.get(f"{server.url}/v2/models/digits", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert meta["inputs"][0]["shape"] == [-1, 1, 8, 8]
    frame = trained["frame"]
    x = frame.drop(columns="target").to_numpy(np.float32).reshape(-1, 1, 8, 8)
    y = frame["target"].to_numpy()
    rng = np.random.default_rng(0)
    calm = rng.choice(len(x), size=WINDOW, replace=False)
    answers_ = np.concatenate([infer(server, x[part]) for part in np.array_split(calm, 20)])
    assert answers_.shape == (WINDOW, 10)
    assert float((answers_.argmax(axis=1) == y[calm]).mean()) > 0.85
    # gRPC takes the same 4-D tensor and gives the same answers.
    import tritonclient.grpc as triton_grpc

    grpc_client = triton_grpc.InferenceServerClient(server.grpc_target)
    try:
        tensor = triton_grpc.InferInput("input", [5, 1, 8, 8], "FP32")
        tensor.set_data_from_numpy(x[calm[:5]])
        auth = {"authorization": f"Bearer {TOKEN}"}
        over_grpc = grpc_client.infer("digits", [tensor], headers=auth).as_numpy("probabilities")
    finally:
        grpc_client.close()
    np.testing.assert_allclose(over_grpc, answers_[:5], rtol=1e-5, atol=1e-6)
    text = httpx.get(server.metrics_url).text
    assert gauge(text, "appliance_drift_window_rows", "digits") == WINDOW
    calm_psi = gauge(text, "appliance_prediction_psi", "digits")
    assert calm_psi is not None and calm_psi < THRESHOLD
    # Shifted traffic: only zeros and ones; the window fills with two predicted classes.
    shifted = rng.choice(np.flatnonzero(y <= 1), size=WINDOW)
    for part in np.array_split(shifted, 20):
        infer(server, x[part])
    text = httpx.get(server.metrics_url).text
    # every family the server writes is in the catalog, so the serving job's keep rule hides only
    # what it means to: the supervisor's own inputs, and prometheus_client's *_created series
    written = {n for n in exposition_metric_names(text) if not n.endswith("_created")}
    assert written and unknown_metrics(written, SERVING_METRICS | SERVING_INTERNAL) == set()
    moved = gauge(text, "appliance_prediction_psi", "digits")
    assert moved is not None and moved > 5 * THRESHOLD
    assert gauge(text, "appliance_drift_window_rows", "digits") == WINDOW
    firing = prediction_drift_alerts(server, tmp_path)
    assert [a["labels"]["model"] for a in firing] == ["digits"]
    assert float(firing[0]["value"]) > THRESHOLD


def prediction_drift_alerts(server: ServerProcess, tmp_path: Path) -> list[dict]:
    """Firing PredictionDrift alerts of a real Prometheus scraping the server with the generated rules."""
    if not PROMETHEUS:
        pytest.fail("prometheus is not installed: run scripts/bootstrap.sh (it installs Debian's prometheus)")
    rules = tmp_path / "rules.yml"
    rules.write_text(render_alert_rules(THRESHOLD, "2s", 1.0, drift_min_rows=MIN_ROWS))
    # the stack's own config: the serving job keeps only the model server's families
    # (prometheus_config.provenance_rules), and the rule must still see what it reads
    target = ScrapeTarget("serving", f"127.0.0.1:{server.metrics_port}")
    (tmp_path / "prometheus.yml").write_text(
        render_prometheus_config([target], [str(rules)], None, "1s", "1s")
    )
    port = free_port()
    log = tmp_path / "prometheus.log"
    cmd = [
        PROMETHEUS,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
    ]
    proc = start([*cmd, f"--web.listen-address=127.0.0.1:{port}"], log)
    try:
        wait_http(f"http://127.0.0.1:{port}/-/ready", proc, log, 60)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alerts = httpx.get(f"http://127.0.0.1:{port}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            firing = [
                a for a in alerts if a["labels"]["alertname"] == "PredictionDrift" and a["state"] == "firing"
            ]
            if firing:
                return firing
            time.sleep(1)
        raise AssertionError(f"PredictionDrift did not fire within 60 s: {alerts}\n{log.read_text()[-2000:]}")
    finally:
        stop(proc)


def test_a_table_cannot_be_trained_as_a_cnn(services: Services, trained: dict) -> None:
    ans = trained["root"] / "appliance.yaml"
    state = trained["root"] / "state"
    assert cli(ans, state, "data", "seed", "--dataset", "wine").returncode == 0
    proc = cli(ans, state, "train", "--dataset", "wine", "--model-kind", "cnn", "--epochs", "1")
    assert proc.returncode == 2, proc.stderr
    assert "not an image dataset" in proc.stderr and "--model-kind mlp" in proc.stderr
