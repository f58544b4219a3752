"""Deterministic train/validation/test split and the scaling statistics fitted on train only.

The split is seeded (and stratified for classification) so that a retrain on the same bytes
sees the same test rows, which is what lets the champion and a challenger be compared fairly.
Scaling statistics come from the training rows alone and travel inside the model (and its ONNX
graph), so serving takes raw features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from appliance.workloads.trainer.schema import DatasetSpec

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """Feature matrices (float32, raw) and targets (class index int64 or float32) per split."""

    x: dict[str, np.ndarray]
    y: dict[str, np.ndarray]

    def save(self, path: Path) -> None:
        arrays = {f"x_{s}": self.x[s] for s in SPLITS} | {f"y_{s}": self.y[s] for s in SPLITS}
        np.savez(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> Split:
        with np.load(path) as data:
            return cls({s: data[f"x_{s}"] for s in SPLITS}, {s: data[f"y_{s}"] for s in SPLITS})


def encode_target(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """Class labels as indices into ``spec.classes``; regression targets as float32."""
    values = frame[spec.target].to_numpy(dtype="float64")
    if spec.task == "classification":
        return np.searchsorted(np.asarray(spec.classes), values).astype(np.int64)
    return values.astype(np.float32)


def split(frame: pd.DataFrame, spec: DatasetSpec, seed: int, val: float = 0.15, test: float = 0.15) -> Split:
    """Split rows into train/val/test with a fixed seed, stratified by class for classification."""
    from sklearn.model_selection import train_test_split

    x = frame[spec.features].to_numpy(dtype="float32")
    y = encode_target(frame, spec)
    strat = y if spec.task == "classification" else None
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=test, random_state=seed, stratify=strat)
    strat_rest = y_rest if spec.task == "classification" else None
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val / (1.0 - test), random_state=seed, stratify=strat_rest
    )
    return Split(
        {"train": x_train, "val": x_val, "test": x_test}, {"train": y_train, "val": y_val, "test": y_test}
    )


def scaling(x_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature; constant features get a scale of 1."""
    mean = x_train.mean(axis=0).astype(np.float32)
    std = x_train.std(axis=0).astype(np.float32)
    std[std < 1e-8] = 1.0
    return mean, std
