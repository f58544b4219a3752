"""The model's dataset, read and split the way the built-in trainer does it.

The data connection gives the newest file of the dataset (``--dataset-key`` picks another); its
columns are checked against the model's (its MLflow signature, else what the model itself
records), the target's kind against the model's, and the rows are split with the trainer's own
seeded split, so that the held-out rows an import is checked and scored on are the very rows a
retrain of the same model would be compared on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.workloads.importer.contract import Columns
from appliance.workloads.importer.errors import ColumnMismatchError, TaskMismatchError
from appliance.workloads.trainer.prepare import Split
from appliance.workloads.trainer.schema import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class Rows:
    """The dataset's identity, the model's columns and task, and the split (float32, raw)."""

    info: dict[str, str]
    cols: Columns
    spec: DatasetSpec
    split: Split
    row_ids: dict[str, np.ndarray]

    def frame(self, part: str) -> pd.DataFrame:
        """The rows of a split as a DataFrame with the dataset's column names and integer columns,
        holding exactly the float32 values the served model receives."""
        import pandas as pd

        frame = pd.DataFrame(self.split.x[part].astype(np.float64), columns=self.cols.features)
        for column in self.cols.int_features:
            frame[column] = frame[column].astype(np.int64)
        return frame


def match_columns(
    name: str, dataset: str, available: list[str], wanted: list[str] | None, count: int | None
) -> list[str]:
    """The model's feature columns in its own order, or ColumnMismatchError naming the difference."""
    if wanted is not None:
        missing = [c for c in wanted if c not in available]
        extra = [c for c in available if c not in wanted]
        if missing or extra:
            raise ColumnMismatchError(name, dataset, missing, extra)
        return list(wanted)
    if count is not None and count != len(available):
        shown = ", ".join(available[:12]) + (", ..." if len(available) > 12 else "")
        raise ColumnMismatchError(
            name,
            dataset,
            [],
            [],
            f"the model takes {count} features and the dataset has {len(available)} ({shown})",
        )
    return list(available)


def _row_ids(frame: pd.DataFrame, features: list[str], split: Split) -> dict[str, np.ndarray]:
    """Each split row's index in the dataset file, so that a message can point at the row."""
    table = frame[features].to_numpy(dtype=np.float32)
    lookup: dict[bytes, int] = {}
    for index in range(len(table) - 1, -1, -1):
        lookup[table[index].tobytes()] = index
    return {part: np.array([lookup.get(r.tobytes(), -1) for r in x]) for part, x in split.x.items()}


def load(
    name: str,
    dataset: str,
    dataset_key: str | None,
    target: str | None,
    task: str,
    seed: int,
    model_task: str | None,
    model_columns: tuple[list[str] | None, int | None],
) -> Rows:
    """Read, check and split; every refusal names the model, the dataset and the fix."""
    import pandas as pd

    from appliance.dataconn import DataConnection, read_dataset
    from appliance.workloads.trainer import prepare, schema

    loaded = read_dataset(DataConnection.from_env(), dataset, dataset_key)
    frame = loaded.frame
    target = target or schema.default_target(frame)
    if target not in frame.columns:
        raise TaskMismatchError(
            name, dataset, f"the target column {target!r} is not in the dataset (columns: "
            f"{', '.join(map(str, frame.columns[:20]))})",
        )  # fmt: skip
    available = [str(c) for c in frame.columns if str(c) != target]
    features = match_columns(name, dataset, available, *model_columns)
    if model_task is not None and task not in ("auto", model_task):
        raise TaskMismatchError(name, dataset, f"--task {task} but the model is a {model_task} model")
    chosen = model_task or task
    spec = schema.validate(frame[[*features, target]], dataset, target, chosen)
    spec.features = features
    data = prepare.split(frame, spec, seed)
    ints = {c for c in features if pd.api.types.is_integer_dtype(frame[c])}
    cols = Columns(name, dataset, features, spec.task, len(spec.classes), ints)
    info = {"name": loaded.name, "key": loaded.key, "uri": loaded.uri, "sha256": loaded.sha256}
    return Rows(info, cols, spec, data, _row_ids(frame, features, data))


def check_classes(rows: Rows, model_classes: list[Any] | None) -> None:
    """A classifier's classes must be the target's, in the same order (its probability columns)."""
    if rows.cols.task != "classification" or model_classes is None:
        return
    if [float(c) for c in model_classes] != [float(c) for c in rows.spec.classes]:
        raise TaskMismatchError(
            rows.cols.name,
            rows.cols.dataset,
            f"the model's classes {model_classes} are not the target {rows.spec.target!r}'s classes "
            f"{[int(c) if float(c).is_integer() else c for c in rows.spec.classes]}",
        )
