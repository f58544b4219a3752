"""The dashboard's numbers with several served models: each model listed, each drift row named by
its model."""

from __future__ import annotations

from tui.metrics import summarize


def sample(value: float, **labels: str) -> dict:
    return {"metric": labels, "value": [0, str(value)]}


def test_every_served_model_is_listed_and_drift_rows_say_whose_feature() -> None:
    results = {
        "model": [sample(1, model="breast_cancer", version="1"), sample(1, model="wine", version="2")],
        "drift": [
            sample(0.05, model="breast_cancer", feature="mean radius"),
            sample(0.41, model="wine", feature="alcohol"),
        ],
    }
    out = summarize(results)
    assert out["model"] == "breast_cancer v1, wine v2"
    assert out["drift"] == [
        ("wine / alcohol", 0.41, "wine"),
        ("breast_cancer / mean radius", 0.05, "breast_cancer"),
    ]
    one = summarize({"drift": [sample(0.3, model="wine", feature="alcohol")]})
    assert one["drift"] == [("alcohol", 0.3, "wine")]  # one model: the feature alone, as before
