"""Checks a dataset against what a tabular model needs, before any training starts.

Every rule stops with the column and the problem named, because a retraining pipeline fed a bad
upload must fail loudly at ``validate`` rather than register a model trained on garbage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from appliance.workloads.trainer.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

Task = Literal["classification", "regression"]
MIN_ROWS = 30
MIN_ROWS_PER_CLASS = 5
MAX_CLASSES = 100


@dataclass
class DatasetSpec:
    """What validation learned about a dataset: its columns, target, task and classes."""

    features: list[str]
    target: str
    task: Task
    classes: list[float] = field(default_factory=list)
    n_rows: int = 0

    @property
    def n_outputs(self) -> int:
        return len(self.classes) if self.task == "classification" else 1


def _plain(value: object) -> object:
    """numpy scalars as Python values, so messages read ``1`` rather than ``np.int64(1)``."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def default_target(frame: pd.DataFrame) -> str:
    """``target`` when the table has it, else its last column."""
    return "target" if "target" in frame.columns else str(frame.columns[-1])


def infer_task(values: pd.Series) -> Task:
    """Classification for text, booleans or few integer values; regression otherwise."""
    import pandas as pd

    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    clean = values.dropna()
    integral = bool((clean == clean.round()).all())
    return "classification" if integral and clean.nunique() <= 20 else "regression"


def validate(frame: pd.DataFrame, name: str, target: str | None = None, task: str = "auto") -> DatasetSpec:
    """Check ``frame`` and return its spec, or raise SchemaError naming the column at fault."""
    import numpy as np
    import pandas as pd

    columns = [str(c) for c in frame.columns]
    if len(frame.columns) < 2:
        raise SchemaError(
            name, None, f"has {len(frame.columns)} column(s)", "need feature columns and a target"
        )
    target = target or default_target(frame)
    if target not in columns:
        raise SchemaError(
            name, target, "is not in the dataset", f"pass --target with one of: {', '.join(columns[:20])}"
        )
    if len(frame) < MIN_ROWS:
        raise SchemaError(name, None, f"has {len(frame)} rows", f"provide at least {MIN_ROWS} rows")
    features = [c for c in columns if c != target]
    for col in features:
        values = frame[col]
        if values.isna().all():
            raise SchemaError(name, col, "is empty (all values NaN)", "drop the column or fill it in")
        if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            sample = values.dropna().iloc[0]
            raise SchemaError(
                name,
                col,
                f"is not numeric (type {values.dtype}, e.g. {sample!r})",
                "encode it as numbers or drop the column",
            )
        missing = int(values.isna().sum())
        if missing:
            raise SchemaError(name, col, f"has {missing} missing value(s)", "fill or drop those rows")
        if not np.isfinite(values.to_numpy(dtype="float64")).all():
            raise SchemaError(name, col, "has infinite values", "replace them with finite numbers")
    labels = frame[target]
    if labels.isna().all():
        raise SchemaError(name, target, "(the target) is empty (all values NaN)", "fill in the target column")
    if int(labels.isna().sum()):
        raise SchemaError(
            name, target, f"(the target) has {int(labels.isna().sum())} missing value(s)", "drop those rows"
        )
    chosen: Task = infer_task(labels) if task == "auto" else task  # type: ignore[assignment]
    if chosen not in ("classification", "regression"):
        raise SchemaError(
            name, None, f"cannot be trained for task {task!r}", "use classification or regression"
        )
    spec = DatasetSpec(features=features, target=target, task=chosen, n_rows=len(frame))
    if chosen == "regression":
        if not pd.api.types.is_numeric_dtype(labels) or pd.api.types.is_bool_dtype(labels):
            raise SchemaError(name, target, "(the target) is not numeric", "use --task classification")
        if labels.nunique() < 2:
            raise SchemaError(name, target, "(the target) is constant", "a regression target must vary")
        return spec
    if not pd.api.types.is_numeric_dtype(labels):
        raise SchemaError(name, target, "(the target) is not numeric", "encode the classes as numbers")
    counts = labels.value_counts()
    if len(counts) < 2:
        raise SchemaError(
            name,
            target,
            f"(the target) has a single class ({_plain(counts.index[0])!r})",
            "classification needs at least two classes: add rows of another class",
        )
    if len(counts) > MAX_CLASSES:
        raise SchemaError(
            name,
            target,
            f"(the target) has {len(counts)} classes",
            "use --task regression for a numeric target",
        )
    rare = counts[counts < MIN_ROWS_PER_CLASS]
    if len(rare):
        raise SchemaError(
            name,
            target,
            f"class {_plain(rare.index[0])!r} has only {int(rare.iloc[0])} row(s)",
            f"each class needs at least {MIN_ROWS_PER_CLASS} rows: add rows or drop the class",
        )
    spec.classes = sorted(float(c) for c in counts.index)
    return spec
