"""How often a drift window of in-distribution rows reads as drift, by the rows it holds.

Why: the drift alert rules require ``monitoring.drift_min_rows`` rows in the model server's
window before they fire; this measures the chance that a window of N rows drawn from the
training distribution shows a feature PSI above 0.2 anyway, with the trainer's profile and the
server's own ``DriftMonitor``. Run: ``.venv/bin/python benchmarks/drift_window_noise.py``.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from appliance.workloads.serving.drift import DriftMonitor
from appliance.workloads.trainer import profile

SIZES = (50, 100, 200, 300, 500, 1000)
WINDOWS = 200
THRESHOLD = 0.2


def main() -> None:
    rng = np.random.default_rng(0)
    print("| rows in the window | " + " | ".join(str(n) for n in SIZES) + " |")
    print("| --- |" + " --- |" * len(SIZES))
    for name, loader in (
        ("wine", load_wine),
        ("breast_cancer", load_breast_cancer),
        ("diabetes", load_diabetes),
    ):
        x = loader().data.astype(np.float32)
        train = x[rng.permutation(len(x))[: len(x) * 7 // 10]]
        features = [f"f{i}" for i in range(x.shape[1])]
        prof = profile.build(features, train, rng.normal(size=(len(train), 1)), "regression")
        shares = []
        for n in SIZES:
            hits = 0
            for _ in range(WINDOWS):
                monitor = DriftMonitor(prof, window=1000)
                monitor.observe(x[rng.integers(0, len(x), n)], None)
                monitor.flush()
                psi, _, _ = monitor.snapshot()
                hits += max(psi.values()) > THRESHOLD
            shares.append(f"{hits / WINDOWS:.0%}")
        print(f"| {name} ({x.shape[1]} features) | " + " | ".join(shares) + " |")


if __name__ == "__main__":
    main()
