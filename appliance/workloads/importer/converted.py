"""What every converter returns: the ONNX graph and the original model as a function of rows.

Parity compares ``original`` and the normalized graph on the same held-out rows, so ``original``
gives what the served graph is meant to give: class probabilities [rows, classes] or the
prediction [rows, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import onnx
    import pandas as pd


@dataclass
class Converted:
    onnx: onnx.ModelProto
    original: Callable[[pd.DataFrame], np.ndarray]
    converter: str


def frame_for(model: Any, frame: pd.DataFrame) -> Any:
    """The rows as the model was fitted on them: a DataFrame when it knows column names (it
    checks them), else a plain array."""
    if getattr(model, "feature_names_in_", None) is not None:
        return frame
    return frame.to_numpy()
