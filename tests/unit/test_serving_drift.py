"""PSI over a sliding window, checked against a direct numpy computation of the formula."""

from __future__ import annotations

import numpy as np
import pytest

from appliance.workloads.serving.drift import FLOOR, DriftMonitor


def profile_from(x: np.ndarray, preds: np.ndarray, bins: int = 10) -> dict:
    feats = []
    for j in range(x.shape[1]):
        edges = np.unique(np.quantile(x[:, j], np.linspace(0, 1, bins + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, x[:, j], side="right"), minlength=len(edges) + 1)
        feats.append({"name": f"f{j}", "edges": edges.tolist(), "counts": counts.tolist()})
    counts = np.bincount(preds, minlength=3)
    return {
        "version": 1,
        "input_name": "input",
        "n_rows": len(x),
        "features": feats,
        "prediction": {"kind": "class", "edges": [0.5, 1.5], "counts": counts.tolist()},
    }


def psi(edges: list[float], ref_counts: list[int], live: np.ndarray) -> float:
    e = np.maximum(np.asarray(ref_counts) / sum(ref_counts), FLOOR)
    a = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1) / len(live)
    a = np.maximum(a, FLOOR)
    return float(((a - e) * np.log(a / e)).sum())


@pytest.fixture
def ref():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 4))
    preds = rng.integers(0, 3, size=5000)
    return profile_from(x, preds), rng


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.eye(3)[classes]


def test_in_distribution_is_near_zero_and_shift_is_raised(ref) -> None:
    profile, rng = ref
    mon = DriftMonitor(profile, window=1000)
    for _ in range(50):
        x = rng.normal(size=(20, 4))
        mon.observe(x, one_hot(rng.integers(0, 3, size=20)))
    features, pred, rows = mon.snapshot()
    assert rows == 1000
    assert pred is not None
    assert max(features.values()) < 0.05 and pred < 0.02
    for _ in range(50):
        x = rng.normal(size=(20, 4))
        x[:, 2] += 2.0
        mon.observe(x, one_hot(np.zeros(20, dtype=int)))
    features, pred, rows = mon.snapshot()
    assert rows == 1000
    assert features["f2"] > 1.0 and max(features["f0"], features["f1"], features["f3"]) < 0.05
    assert pred is not None and pred > 1.0


def test_matches_the_formula_and_slides(ref) -> None:
    profile, rng = ref
    mon = DriftMonitor(profile, window=300)
    batches = [rng.normal(loc=0.3 * i, size=(70, 4)) for i in range(10)]
    for i, b in enumerate(batches):
        mon.observe(b, one_hot(rng.integers(0, 3, size=70)))
        if i % 3 == 0:
            mon.snapshot()  # flush in the middle: the ring must slide correctly across flushes
    features, _, rows = mon.snapshot()
    assert rows == 300
    last = np.concatenate(batches)[-300:]
    for j in range(4):
        f = profile["features"][j]
        assert features[f"f{j}"] == pytest.approx(psi(f["edges"], f["counts"], last[:, j]), rel=1e-9)


def test_empty_window_and_wrong_width_are_ignored(ref) -> None:
    profile, _ = ref
    mon = DriftMonitor(profile, window=10)
    assert mon.snapshot()[2] == 0
    mon.observe(np.zeros((5, 3)), None)  # not the profile's features: not counted
    assert mon.snapshot()[2] == 0
