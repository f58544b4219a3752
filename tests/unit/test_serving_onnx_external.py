"""The external data files an ONNX model names, read from its protobuf by the model server's own
reader, against what the ``onnx`` package finds in the same files; and the locations it refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import ExternalDataInfo, uses_external_data

from appliance.workloads.serving.onnx_external import external_locations
from tests.integration._serving_fixtures import matmul_graph, write_external_matmul


def _branches() -> onnx.GraphProto:
    """Tensors in a node attribute (Constant), in both subgraphs of an If, and a sparse
    initializer: every place the reader has to look."""

    def branch(name: str, value: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Constant", [], [f"{name}_out"], value=numpy_helper.from_array(
                np.full((4, 4), value, dtype=np.float32), f"{name}_c"
            ))],
            name,
            [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [4, 4])],
        )  # fmt: skip

    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.arange(40, dtype=np.float32), "s_values"),
        numpy_helper.from_array(np.arange(40, dtype=np.int64), "s_indices"),
        [64],
    )
    flag = numpy_helper.from_array(np.array(True), "flag_c")
    branches = {"then_branch": branch("then", 1.0), "else_branch": branch("else", 2.0)}
    return helper.make_graph(
        [
            helper.make_node("Constant", [], ["flag"], value=flag),
            helper.make_node("If", ["flag"], ["y"], **branches),
        ],
        "branches",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        sparse_initializer=[sparse],
    )


def _onnx_reading(path: Path) -> list[str]:
    """The locations the onnx package reads from the same file (first seen order, distinct)."""
    model = onnx.load(str(path), load_external_data=False)
    found: dict[str, None] = {}
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop(0)
        tensors = list(graph.initializer)
        for sparse in graph.sparse_initializer:
            tensors += [sparse.values, sparse.indices]
        for node in graph.node:
            for attribute in node.attribute:
                tensors += [attribute.t, *attribute.tensors]
                graphs += [attribute.g, *attribute.graphs]
        for tensor in tensors:
            if uses_external_data(tensor):
                found[ExternalDataInfo(tensor).location] = None
    return list(found)


@pytest.mark.parametrize(
    ("graph", "options"),
    [
        (matmul_graph(), {}),  # MLflow's log_model: one file named by a uuid
        (matmul_graph(), {"location": "weights.bin"}),
        (matmul_graph(), {"all_tensors_to_one_file": False}),  # a file per tensor
        (_branches(), {"all_tensors_to_one_file": False, "convert_attribute": True}),
        (_branches(), {"location": "data/all.bin", "convert_attribute": True}),
    ],
    ids=["uuid-file", "named-file", "file-per-tensor", "subgraphs-sparse-attributes", "in-a-subfolder"],
)
def test_the_files_named_are_those_onnx_reads(tmp_path: Path, graph: onnx.GraphProto, options: dict) -> None:
    (tmp_path / "data").mkdir()
    path = tmp_path / "model.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(path), save_as_external_data=True, size_threshold=0, **options)
    expected = _onnx_reading(path)
    assert expected, "the model keeps tensors outside it"
    assert external_locations(path) == expected
    for location in expected:
        assert (tmp_path / location).is_file()


def test_a_model_without_external_data_names_none(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    onnx.save_model(helper.make_model(_branches()), str(path))
    assert external_locations(path) == [] == _onnx_reading(path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert external_locations(tmp_path / "empty.onnx") == []


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/passwd", "data/../../x", "a\\b.bin"])
def test_a_location_outside_the_models_folder_is_refused_naming_it(tmp_path: Path, location: str) -> None:
    write_external_matmul(tmp_path)
    edited = onnx.load(str(tmp_path / "model.onnx"), load_external_data=False)
    for entry in edited.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    (tmp_path / "model.onnx").write_bytes(edited.SerializeToString())
    with pytest.raises(ValueError, match="is not a file beside the model") as refused:
        external_locations(tmp_path / "model.onnx")
    assert repr(location) in str(refused.value)


def test_a_file_that_is_no_onnx_model_is_refused(tmp_path: Path) -> None:
    path = write_external_matmul(tmp_path) / "model.onnx"
    whole = path.read_bytes()
    path.write_bytes(whole[: len(whole) - 7])
    with pytest.raises(ValueError, match="not an ONNX model"):
        external_locations(path)
    path.write_bytes(b"\x0f" * 64)  # wire type 7 does not exist
    with pytest.raises(ValueError, match="not an ONNX model: wire type 7"):
        external_locations(path)


def test_a_sparse_initializer_kept_outside_is_named(tmp_path: Path) -> None:
    """onnx's save leaves sparse tensors inside the model; another writer may not."""
    from onnx.external_data_helper import set_external_data

    path = tmp_path / "model.onnx"
    model = helper.make_model(_branches(), opset_imports=[helper.make_opsetid("", 17)])
    values = model.graph.sparse_initializer[0].values
    (tmp_path / "sparse.bin").write_bytes(values.raw_data or np.arange(40, dtype=np.float32).tobytes())
    set_external_data(values, "sparse.bin", offset=0, length=160)
    values.data_location = TensorProto.EXTERNAL
    values.ClearField("raw_data")
    values.ClearField("float_data")
    path.write_bytes(model.SerializeToString())
    assert external_locations(path) == ["sparse.bin"] == _onnx_reading(path)
