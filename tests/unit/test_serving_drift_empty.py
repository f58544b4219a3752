"""A batch with no rows must not break the drift statistics (it used to make the next /metrics
scrape fail with a 500, so one such request per scrape interval blinded monitoring)."""

from __future__ import annotations

import numpy as np

from appliance.workloads.serving.drift import DriftMonitor


def test_zero_row_batches_are_skipped_and_the_snapshot_still_works() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 2))
    profile = {
        "features": [
            {
                "name": f"f{j}",
                "edges": [-1.0, 0.0, 1.0],
                "counts": np.bincount(
                    np.searchsorted([-1.0, 0.0, 1.0], x[:, j], side="right"), minlength=4
                ).tolist(),
            }
            for j in range(2)
        ],
        "prediction": {"kind": "class", "edges": [0.5], "counts": [250, 250]},
    }
    mon = DriftMonitor(profile, window=100)
    mon.observe(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    assert mon.snapshot()[2] == 0
    mon.observe(x[:10].astype(np.float32), np.eye(2)[rng.integers(0, 2, 10)])
    mon.observe(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32))
    features, pred, rows = mon.snapshot()
    assert rows == 10 and set(features) == {"f0", "f1"} and pred is not None
