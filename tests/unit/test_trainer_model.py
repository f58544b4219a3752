"""Training determinism, ONNX export and parity, the drift profile and the promotion rule,
all in process on small synthetic data (no server)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from appliance.workloads.trainer import metrics, profile, registry
from appliance.workloads.trainer.errors import ParityError
from appliance.workloads.trainer.export import check_parity, export, onnx_predict
from appliance.workloads.trainer.fit import FitConfig, fit, predict
from appliance.workloads.trainer.prepare import Split, split
from appliance.workloads.trainer.schema import validate


def blobs(task: str, rows: int = 240) -> tuple[Split, int]:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(rows, 4)) * [1, 10, 100, 0.1] + [0, 50, -300, 1]
    if task == "classification":
        y = (x[:, 0] + x[:, 1] / 10 > 0).astype(int) + (x[:, 2] > -300).astype(int)
    else:
        y = 3 * x[:, 0] + x[:, 1] / 5 + 200.0
    data = pd.DataFrame(x, columns=["a", "b", "c", "d"]).assign(target=y)
    spec = validate(data, "toy", task=task)
    return split(data, spec, 0), spec.n_outputs


CFG = FitConfig(epochs=8, seed=5, patience=3)


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_fit_is_deterministic_and_exports_with_parity(task: str, tmp_path: Path) -> None:
    data, n_out = blobs(task)
    rows: list[dict[str, float]] = []
    first = fit(data, task, n_out, CFG, rows.append)
    second = fit(data, task, n_out, CFG, lambda row: None)
    assert [r["val_loss"] for r in first.history] == [r["val_loss"] for r in second.history]
    assert rows == first.history and first.device == "cpu" and 1 <= first.best_epoch <= len(rows)
    path = export(first.model, task, tmp_path / "model.onnx")
    assert check_parity(first.model, task, path, data.x["test"]) <= 1e-4
    out = onnx_predict(path, data.x["test"][:1])  # dynamic batch: one row works as well
    assert out.shape == (1, n_out)
    scores = metrics.compute(task, data.y["test"], predict(first.model, task, data.x["test"]))
    if task == "classification":
        assert np.allclose(onnx_predict(path, data.x["test"]).sum(axis=1), 1.0, atol=1e-5)
        assert scores["accuracy"] > 0.6 and {"f1", "auc"} <= set(scores)
    else:
        assert scores["r2"] > 0.5 and scores["rmse"] > 0


def test_parity_failure_raises(tmp_path: Path) -> None:
    data, n_out = blobs("classification")
    result = fit(data, "classification", n_out, FitConfig(epochs=2, seed=1), lambda row: None)
    path = export(result.model, "classification", tmp_path / "model.onnx")
    import torch

    first_layer = result.model.net[0]
    assert isinstance(first_layer, torch.nn.Linear)
    with torch.no_grad():
        first_layer.bias.add_(1.0)  # the PyTorch model moves, the exported graph does not
    with pytest.raises(ParityError, match="nothing was registered"):
        check_parity(result.model, "classification", path, data.x["test"])


def test_profile_follows_the_documented_format() -> None:
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=500), np.repeat([0.0, 1.0], 250)]).astype(np.float32)
    out = np.column_stack([np.linspace(0, 1, 500), np.linspace(1, 0, 500)])
    prof = profile.build(["n", "flag"], x, out, "classification")
    normal, flag = prof["features"]
    assert len(normal["edges"]) == 9 and sum(normal["counts"]) == 500 == prof["n_rows"]
    assert max(normal["counts"]) - min(normal["counts"]) <= 1  # quantile bins are even
    assert flag["edges"] == [0.0, 0.5, 1.0] and flag["counts"] == [0, 250, 0, 250]  # de-duplicated
    assert prof["prediction"] == {"kind": "class", "edges": [0.5], "counts": [250, 250]}
    value = profile.build(["n"], x[:, :1], out[:, :1], "regression")["prediction"]
    assert value["kind"] == "value" and sum(value["counts"]) == 500


@pytest.mark.parametrize(
    ("metric", "challenger", "champion", "margin", "decision"),
    [
        ("accuracy", 0.95, 0.95, 0.0, "kept_challenger"),
        ("accuracy", 0.96, 0.95, 0.0, "promoted"),
        ("accuracy", 0.96, 0.95, 0.02, "kept_challenger"),
        ("rmse", 50.0, 55.0, 0.0, "promoted"),
        ("rmse", 56.0, 55.0, 0.0, "kept_challenger"),
    ],
)
def test_promotion_rule(
    metric: str, challenger: float, champion: float, margin: float, decision: str
) -> None:
    result = registry.decide(metric, challenger, champion, "3", margin)
    assert result.decision == decision
    tags = result.tags()
    assert tags["appliance.champion_version"] == "3" and tags["appliance.metric"] == metric


def test_no_champion_promotes_and_incomparable_champion_does_not() -> None:
    assert registry.decide("accuracy", 0.5, None, None, 0.0).decision == "promoted"
    kept = registry.decide("accuracy", 0.99, None, "2", 0.0)
    assert kept.decision == "kept_challenger" and "different features" in kept.reason
    assert kept.tags()["appliance.champion_score"] == "none"
