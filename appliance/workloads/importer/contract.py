"""The served layout every imported graph is brought to (docs/interfaces.md).

The model server, the drift profile and the champion comparison all expect one float32 input
``input`` [batch, n_features] of raw features and one output: ``probabilities`` [batch,
n_classes] for a classifier or ``prediction`` [batch, 1] for a regressor. Converters emit what
their framework emits (one input per column, a ``label`` output beside the probabilities, a
ZipMap of dicts, a [batch] vector, doubles); ``normalize`` wraps the graph, without touching its
nodes, so that it takes and gives exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from appliance.workloads.importer.errors import TaskMismatchError

if TYPE_CHECKING:
    import onnx

INPUT = "input"
PREFIX = "imported/"
OPSET = 18


@dataclass
class Columns:
    """The model's inputs and what it predicts, learned from the model and its dataset."""

    name: str
    dataset: str
    features: list[str]
    task: str
    n_classes: int = 0
    int_features: set[str] = field(default_factory=set)

    @property
    def output(self) -> str:
        return "probabilities" if self.task == "classification" else "prediction"

    @property
    def n_outputs(self) -> int:
        return self.n_classes if self.task == "classification" else 1


def _elem_type(value: onnx.ValueInfoProto) -> int:
    return int(value.type.tensor_type.elem_type)


def _is_tensor(value: onnx.ValueInfoProto) -> bool:
    return value.type.HasField("tensor_type")


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    return next((n for n in graph.node if name in n.output), None)


def pick_output(model: onnx.ModelProto, cols: Columns) -> str:
    """The graph output (or, behind a ZipMap, the tensor) that holds what the task predicts."""
    from onnx import TensorProto

    graph = model.graph
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
    for out in graph.output:
        node = _producer(graph, out.name)
        zipmap = not _is_tensor(out) and node is not None and node.op_type == "ZipMap"
        if zipmap and node is not None and cols.task == "classification":
            return str(node.input[0])
    candidates = [o for o in graph.output if _is_tensor(o) and _elem_type(o) in floats]
    if cols.task == "classification":
        named = [o for o in candidates if "prob" in o.name.lower()]
        candidates = named or candidates
    if not candidates:
        names = ", ".join(o.name for o in graph.output)
        raise TaskMismatchError(
            cols.name, cols.dataset, f"its ONNX graph has no float output for {cols.task} (outputs: {names})"
        )
    return str(candidates[0].name)


def normalize(model: onnx.ModelProto, cols: Columns) -> onnx.ModelProto:
    """``model`` wrapped to take ``input`` float32 [batch, n] and give the one output of its task."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    chosen = pick_output(model, cols)
    inner = onnx.compose.add_prefix(model, PREFIX)
    graph = inner.graph
    inputs = list(graph.input)
    initial = {i.name for i in graph.initializer}
    feeds = [i for i in inputs if i.name not in initial]
    head: list[onnx.NodeProto] = []
    if len(feeds) == 1:
        head += _cast(INPUT, feeds[0].name, _elem_type(feeds[0]))
    else:
        by_name = {i.name.removeprefix(PREFIX): i for i in feeds}
        unknown = [c for c in by_name if c not in cols.features]
        if unknown:
            raise TaskMismatchError(
                cols.name, cols.dataset, f"its ONNX inputs {', '.join(unknown)} are not dataset columns"
            )
        for index, column in enumerate(cols.features):
            if column not in by_name:
                continue  # a column the graph does not read
            picked = f"{PREFIX}gather/{index}"
            graph.initializer.append(
                numpy_helper.from_array(np.array([index], dtype=np.int64), f"{picked}/i")
            )
            head.append(helper.make_node("Gather", [INPUT, f"{picked}/i"], [picked], axis=1))
            head += _cast(picked, by_name[column].name, _elem_type(by_name[column]))
    as_float, shape = f"{PREFIX}result/float", f"{PREFIX}result/shape"
    graph.initializer.append(numpy_helper.from_array(np.array([-1, cols.n_outputs], dtype=np.int64), shape))
    tail = [
        helper.make_node("Cast", [PREFIX + chosen], [as_float], to=TensorProto.FLOAT),
        helper.make_node("Reshape", [as_float, shape], [cols.output]),
    ]
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(head + body + tail)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", len(cols.features)]))
    graph.input.extend(i for i in inputs if i.name in initial)
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(cols.output, TensorProto.FLOAT, ["batch", cols.n_outputs])
    )
    _ensure_opset(inner)
    _prune(inner)
    onnx.checker.check_model(inner)
    return inner


def _cast(source: str, target: str, elem_type: int) -> list[onnx.NodeProto]:
    from onnx import TensorProto, helper

    if elem_type == TensorProto.FLOAT:
        return [helper.make_node("Identity", [source], [target])]
    return [helper.make_node("Cast", [source], [target], to=elem_type)]


def _ensure_opset(model: onnx.ModelProto) -> None:
    """One entry per domain (some converters write the default domain twice), at least opset 13
    for Reshape with -1 and Gather as used here."""
    seen: dict[str, int] = {}
    for entry in model.opset_import:
        seen[entry.domain] = max(seen.get(entry.domain, 0), int(entry.version))
    seen[""] = max(seen.get("", 0), 13)
    del model.opset_import[:]
    from onnx import helper

    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in sorted(seen.items()))


def _prune(model: onnx.ModelProto) -> None:
    """Drop the nodes that fed only the outputs left out (a ``label``, a ZipMap)."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    kept: list[onnx.NodeProto] = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            kept.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If, Loop, Scan) read outer names too
                for sub in [attr.g, *attr.graphs]:
                    needed.update(i for n in sub.node for i in n.input)
    del graph.node[:]
    graph.node.extend(reversed(kept))
    used = needed
    keep_init = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep_init)
    keep_vi = [v for v in graph.value_info if v.name in used]
    del graph.value_info[:]
    graph.value_info.extend(keep_vi)
