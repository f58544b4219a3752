"""Prediction drift: PSI of the served outputs against the profile's, for tables and for images.

The reference is the trainer's own ``profile.build`` (what export writes), and the expected PSI
is computed here directly from the formula, so the server's bulk binning is checked, not trusted.
"""

from __future__ import annotations

import numpy as np

from appliance.workloads.serving.drift import FLOOR, DriftMonitor
from appliance.workloads.trainer import profile

CLASSES = 10


def psi_of(reference: list[int], live: np.ndarray) -> float:
    e = np.maximum(np.asarray(reference) / sum(reference), FLOOR)
    a = np.maximum(np.bincount(live, minlength=len(reference)) / len(live), FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


def probabilities(classes: np.ndarray) -> np.ndarray:
    out = np.full((len(classes), CLASSES), 0.01)
    out[np.arange(len(classes)), classes] = 0.91
    return out


def image_profile(rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    train_classes = rng.integers(0, CLASSES, size=2000)
    x = rng.uniform(0, 16, size=(2000, 64))
    pixels = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    return profile.build(pixels, x, probabilities(train_classes), "classification", (1, 8, 8)), train_classes


def test_image_profile_has_no_features_and_records_the_input_shape() -> None:
    prof, train_classes = image_profile(np.random.default_rng(0))
    assert prof["features"] == []
    assert prof["input_shape"] == [1, 8, 8]
    assert prof["columns"][:2] == ["pixel_0_0", "pixel_0_1"] and len(prof["columns"]) == 64
    assert prof["prediction"]["kind"] == "class"
    assert prof["prediction"]["counts"] == np.bincount(train_classes, minlength=CLASSES).tolist()


def test_image_model_outputs_are_watched_from_a_4d_input() -> None:
    rng = np.random.default_rng(1)
    prof, _ = image_profile(rng)
    mon = DriftMonitor(prof, window=600)
    same = rng.integers(0, CLASSES, size=600)
    for chunk in np.array_split(same, 30):
        mon.observe(rng.uniform(0, 16, size=(len(chunk), 1, 8, 8)).astype(np.float32), probabilities(chunk))
    features, pred, rows = mon.snapshot()
    assert features == {}
    assert rows == 600
    assert pred is not None
    assert abs(pred - psi_of(prof["prediction"]["counts"], same)) < 1e-9
    assert pred < 0.1
    # Traffic that is mostly one digit: the window's class frequencies move far from the reference.
    shifted = np.where(rng.random(600) < 0.8, 3, rng.integers(0, CLASSES, size=600))
    for chunk in np.array_split(shifted, 20):
        mon.observe(np.zeros((len(chunk), 1, 8, 8), np.float32), probabilities(chunk))
    _, pred, rows = mon.snapshot()
    assert rows == 600
    assert abs(pred - psi_of(prof["prediction"]["counts"], shifted)) < 1e-9
    assert pred > 1.0


def test_image_profile_ignores_batches_without_outputs_or_rows() -> None:
    prof, _ = image_profile(np.random.default_rng(2))
    mon = DriftMonitor(prof, window=100)
    mon.observe(np.zeros((5, 1, 8, 8), np.float32), None)
    mon.observe(np.zeros((0, 1, 8, 8), np.float32), np.zeros((0, CLASSES)))
    assert mon.snapshot() == ({}, 0.0, 0)


def test_table_prediction_drift_moves_while_features_stay() -> None:
    """The same feature distribution with other predicted classes: only the prediction PSI rises."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 3))
    train_classes = rng.integers(0, CLASSES, size=3000)
    prof = profile.build(["a", "b", "c"], x, probabilities(train_classes), "classification")
    mon = DriftMonitor(prof, window=1000)
    live = np.full(1000, 7)
    mon.observe(rng.normal(size=(1000, 3)), probabilities(live))
    features, pred, rows = mon.snapshot()
    assert rows == 1000
    assert max(features.values()) < 0.1
    assert pred is not None and abs(pred - psi_of(prof["prediction"]["counts"], live)) < 1e-9
    assert pred > 2.0


def test_regression_prediction_psi_uses_the_value_histogram() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3000, 2))
    values = rng.normal(100, 10, size=(3000, 1))
    prof = profile.build(["a", "b"], x, values, "regression")
    assert prof["prediction"]["kind"] == "value"
    mon = DriftMonitor(prof, window=500)
    mon.observe(rng.normal(size=(500, 2)), rng.normal(100, 10, size=(500, 1)))
    _, calm, _ = mon.snapshot()
    mon.observe(rng.normal(size=(500, 2)), rng.normal(130, 10, size=(500, 1)))
    _, moved, _ = mon.snapshot()
    assert calm is not None and moved is not None
    assert calm < 0.1 < 1.0 < moved
