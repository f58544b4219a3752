"""Dataset validation: every rule stops with the column and the problem named."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from appliance.workloads.trainer.errors import SchemaError
from appliance.workloads.trainer.prepare import scaling, split
from appliance.workloads.trainer.schema import infer_task, validate


def frame(rows: int = 60, classes: int = 2) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {"a": rng.normal(size=rows), "b": rng.normal(size=rows), "target": np.arange(rows) % classes}
    )


def test_valid_classification_spec() -> None:
    spec = validate(frame(classes=3), "toy")
    assert spec.task == "classification" and spec.features == ["a", "b"] and spec.classes == [0, 1, 2]


def test_regression_is_inferred_for_many_float_values() -> None:
    data = frame().assign(target=np.linspace(0, 10, 60))
    assert validate(data, "toy").task == "regression"
    assert infer_task(pd.Series([1, 2, 1, 2])) == "classification"


@pytest.mark.parametrize(
    ("data", "target", "column", "message"),
    [
        (frame().assign(c="x"), None, "c", "is not numeric"),
        (frame().assign(c=np.nan), None, "c", "is empty (all values NaN)"),
        (frame().assign(a=[np.nan] + [1.0] * 59), None, "a", "has 1 missing value(s)"),
        (frame().assign(a=[np.inf] + [1.0] * 59), None, "a", "has infinite values"),
        (frame(), "label", "label", "is not in the dataset"),
        (frame().assign(target=1), None, "target", "has a single class (1)"),
        (frame().assign(target=[0] * 57 + [1] * 3), None, "target", "class 1 has only 3 row(s)"),
        (frame(rows=10), None, None, "has 10 rows"),
    ],
)
def test_each_rule_names_column_and_problem(
    data: pd.DataFrame, target: str | None, column: str | None, message: str
) -> None:
    with pytest.raises(SchemaError) as err:
        validate(data, "toy", target)
    assert err.value.column == column
    assert message in err.value.message and err.value.fix
    assert err.value.message.startswith("dataset 'toy': ")


def test_task_override_regression_on_constant_target_fails() -> None:
    with pytest.raises(SchemaError, match="is constant"):
        validate(frame().assign(target=3.0), "toy", task="regression")


def test_split_is_seeded_stratified_and_disjoint() -> None:
    data = frame(rows=200, classes=2)
    spec = validate(data, "toy")
    one, two, other = split(data, spec, 1), split(data, spec, 1), split(data, spec, 2)
    assert np.array_equal(one.x["test"], two.x["test"]) and not np.array_equal(one.x["test"], other.x["test"])
    assert sum(len(one.y[s]) for s in one.y) == 200 and len(one.y["test"]) == 30
    assert abs(one.y["test"].mean() - 0.5) < 0.05  # stratified
    rows = {tuple(r) for s in one.x for r in one.x[s]}
    assert len(rows) == 200


def test_scaling_guards_constant_features() -> None:
    mean, std = scaling(np.array([[1.0, 5.0], [3.0, 5.0]], dtype=np.float32))
    assert mean.tolist() == [2.0, 5.0] and std.tolist() == [1.0, 1.0]
