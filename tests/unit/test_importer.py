"""The importer's rules without a server: the served layout a converted graph is brought to, the
parity verdict and its message, column matching, and what a source that is no model gets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from appliance.workloads.importer import contract, parity, rows, source
from appliance.workloads.importer.contract import Columns
from appliance.workloads.importer.errors import (
    ColumnMismatchError,
    ParityFailedError,
    SourceNotFoundError,
    TaskMismatchError,
    UnsupportedFlavourError,
)


def run(model: object, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]
    assert [i.name for i in session.get_inputs()] == ["input"]
    out: np.ndarray = session.run(None, {"input": x.astype(np.float32)})[0]
    return out


def per_column_double_graph() -> object:
    """Two double inputs named after columns, in reverse order; outputs a label and [N] sum."""
    nodes = [
        helper.make_node("Add", ["b", "a"], ["s"]),
        helper.make_node("Flatten", ["s"], ["flat"], axis=0),
        helper.make_node("Cast", ["s"], ["label"], to=TensorProto.INT64),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("b", TensorProto.DOUBLE, [None, 1]),
            helper.make_tensor_value_info("a", TensorProto.DOUBLE, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None, 1]),
            helper.make_tensor_value_info("s", TensorProto.DOUBLE, [None, 1]),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_per_column_double_inputs_become_one_float_input_and_one_prediction() -> None:
    cols = Columns("m", "d", ["a", "b", "unused"], "regression")
    normalized = contract.normalize(per_column_double_graph(), cols)  # type: ignore[arg-type]
    assert [o.name for o in normalized.graph.output] == ["prediction"]
    x = np.array([[1.0, 2.0, 100.0], [3.0, -1.0, 5.0]])
    assert run(normalized, x).tolist() == [[3.0], [2.0]]


def test_a_zipmap_output_is_read_from_its_probability_tensor() -> None:
    zip_out = helper.make_value_info(
        "output_probability",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(
                TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
            )
        ),
    )
    nodes = [
        helper.make_node("Softmax", ["x"], ["probabilities"], axis=1),
        helper.make_node(
            "ZipMap",
            ["probabilities"],
            ["output_probability"],
            domain="ai.onnx.ml",
            classlabels_int64s=[0, 1],
        ),
    ]
    graph = helper.make_graph(
        nodes, "z", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])], [zip_out]
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)]
    )
    cols = Columns("m", "d", ["f0", "f1"], "classification", 2)
    assert contract.pick_output(model, cols) == "probabilities"
    normalized = contract.normalize(model, cols)
    assert not any(n.op_type == "ZipMap" for n in normalized.graph.node)  # pruned with its output
    out = run(normalized, np.array([[0.0, 0.0], [1.0, 3.0]]))
    assert out.shape == (2, 2) and np.allclose(out.sum(axis=1), 1.0) and out[1, 1] > out[1, 0]


def test_a_graph_without_a_float_output_is_refused_for_its_task() -> None:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["label"], to=TensorProto.INT64)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None, 2])],
    )
    with pytest.raises(TaskMismatchError, match="no float output for classification"):
        contract.pick_output(helper.make_model(graph), Columns("m", "d", ["a", "b"], "classification", 2))


def test_parity_names_the_worst_row_both_outputs_and_the_tolerance() -> None:
    cols = Columns("m", "d", ["a"], "regression")
    original = np.array([[1.0], [100.0], [5.0]])
    close = original * (1 + 1e-7)
    assert parity.check(cols, original, close, np.array([7, 8, 9])) < 1e-4
    far = original.copy()
    far[2, 0] = 5.5
    far[1, 0] = 100.0005  # within 1e-4 + 1e-5 * 100
    with pytest.raises(ParityFailedError) as err:
        parity.check(cols, original, far, np.array([7, 8, 9]))
    text = str(err.value)
    assert err.value.row == 9 and "worst row 9" in text and "original [5]" in text and "ONNX [5.5]" in text
    assert "tolerance 0.0001 + 1e-05" in text and "nothing was registered" in text
    with pytest.raises(ParityFailedError):
        parity.check(cols, original, np.where(original > 50, np.nan, original), np.array([0, 1, 2]))


def test_parity_refuses_outputs_of_the_wrong_width() -> None:
    cols = Columns("m", "d", ["a"], "classification", 2)
    with pytest.raises(TaskMismatchError, match="needs \\(2,\\)"):
        parity.check(cols, np.zeros((4, 3)), np.zeros((4, 3)), np.arange(4))


def test_columns_match_by_name_and_by_count() -> None:
    assert rows.match_columns("m", "d", ["a", "b", "c"], ["c", "a", "b"], None) == ["c", "a", "b"]
    with pytest.raises(ColumnMismatchError) as err:
        rows.match_columns("m", "d", ["a", "b", "z"], ["a", "b", "c"], None)
    assert err.value.missing == ["c"] and err.value.extra == ["z"]
    assert "missing from the dataset: c" in str(err.value) and "not taken by the model: z" in str(err.value)
    assert rows.match_columns("m", "d", ["a", "b"], None, 2) == ["a", "b"]
    with pytest.raises(ColumnMismatchError, match="takes 3 features and the dataset has 2"):
        rows.match_columns("m", "d", ["a", "b"], None, 3)


def test_sources_that_are_no_model(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no such file"):
        source.local_folder(str(tmp_path / "nothing"), tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(SourceNotFoundError, match=r"not \.onnx"):
        source.detect("notes.txt", tmp_path / "notes.txt")
    with pytest.raises(SourceNotFoundError, match="no MLmodel"):
        source.detect(str(tmp_path), tmp_path)
    folder = tmp_path / "keras"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  keras: {}\n  python_function: {}\n")
    with pytest.raises(UnsupportedFlavourError) as err:
        source.detect(str(folder), folder)
    assert err.value.flavours == ["keras", "python_function"] and err.value.exit_code == 2
    assert "supported: sklearn, xgboost, lightgbm, pytorch, onnx" in str(err.value)


def test_the_import_command_loads_no_converter_until_it_runs() -> None:
    """`appliance models ...` imports the import command's module; the converters, the ML runtimes
    and MLflow come only when an import runs."""
    import json
    import subprocess
    import sys

    heavy = ["torch", "onnxruntime", "onnx", "skl2onnx", "onnxmltools", "xgboost", "lightgbm", "mlflow"]
    probe = (
        "import json, sys\n"
        "import appliance.cli.model_cmds, appliance.cli.import_cmd\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
