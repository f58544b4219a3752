"""A model that is ONNX already: kept as it is, its original outputs read with ONNX Runtime.

Parity here checks ``contract``'s wrapping (input layout, chosen output, casts) against the
graph as logged; the nodes themselves are not touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from appliance.workloads.importer import contract
from appliance.workloads.importer.contract import Columns
from appliance.workloads.importer.converted import Converted

if TYPE_CHECKING:
    import pandas as pd

CONVERTER = "onnx (as logged)"
_NUMPY = {1: np.float32, 11: np.float64, 7: np.int64, 6: np.int32, 10: np.float16}


def handles(model: Any) -> bool:
    import onnx

    return isinstance(model, onnx.ModelProto)


def feeds(model: Any) -> list[Any]:
    initial = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initial]


def columns_of(model: Any) -> tuple[list[str] | None, int | None]:
    """One input per column names the columns; one [batch, n] input gives the count."""
    inputs = feeds(model)
    if len(inputs) > 1:
        return [str(i.name) for i in inputs], None
    dims = inputs[0].type.tensor_type.shape.dim if inputs else []
    if len(dims) == 2 and dims[1].HasField("dim_value"):
        return None, int(dims[1].dim_value)
    return None, None


def convert(model: Any, cols: Columns, sample: pd.DataFrame) -> Converted:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    chosen = contract.pick_output(model, cols)
    outputs = [o.name for o in session.get_outputs()]
    zipmap = next((n for n in model.graph.node if n.op_type == "ZipMap" and n.input[0] == chosen), None)
    fetch = zipmap.output[0] if zipmap is not None else chosen

    def original(frame: pd.DataFrame) -> np.ndarray:
        x = frame.to_numpy(dtype=np.float64)
        inputs = feeds(model)
        if len(inputs) == 1:
            dtype = _NUMPY.get(inputs[0].type.tensor_type.elem_type, np.float32)
            feed = {inputs[0].name: x.astype(dtype)}
        else:
            feed = {
                i.name: x[:, [cols.features.index(i.name)]].astype(
                    _NUMPY.get(i.type.tensor_type.elem_type, np.float32)
                )
                for i in inputs
            }
        (out,) = session.run([fetch], feed)
        if zipmap is not None:
            return np.array([[row[k] for k in sorted(row)] for row in out], dtype=np.float64)
        return np.asarray(out, dtype=np.float64).reshape(len(frame), -1)

    assert fetch in outputs, f"{fetch} is not an output of the logged graph"
    return Converted(model, original, CONVERTER)
