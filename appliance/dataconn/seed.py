"""Demo datasets: scikit-learn's bundled tabular sets, written into the datasets store.

Nothing can be downloaded at run time on an appliance, but scikit-learn ships these inside the
package, so every fresh stack can train something real right after ``appliance up``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from appliance.dataconn.connection import DataConnection
from appliance.dataconn.datasets import write_dataset
from appliance.errors import ApplianceError

if TYPE_CHECKING:
    import pandas as pd

SEED_DATASETS: dict[str, str] = {
    "breast_cancer": "load_breast_cancer",
    "wine": "load_wine",
    "diabetes": "load_diabetes",
    "digits": "load_digits",
}
DEFAULT_DATASET = "breast_cancer"


class UnknownSeedDatasetError(ApplianceError):
    """The requested demo dataset is not one scikit-learn bundles."""

    exit_code = 2

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no bundled dataset named {name!r}",
            fix=f"use one of: {', '.join(SEED_DATASETS)}",
        )


def load_frame(name: str) -> pd.DataFrame:
    """The bundled dataset as one DataFrame: feature columns plus ``target``."""
    if name not in SEED_DATASETS:
        raise UnknownSeedDatasetError(name)
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SEED_DATASETS[name])(as_frame=True)
    frame: pd.DataFrame = bunch.frame
    return frame


def seed(conn: DataConnection, name: str = DEFAULT_DATASET, fmt: str = "csv") -> tuple[str, bool]:
    """Write dataset ``name`` as ``<name>/<name>.<fmt>``; returns (key, written)."""
    return write_dataset(conn, name, load_frame(name), fmt)
