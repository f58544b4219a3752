"""A drawn ``.pipeline`` converts to the runner's model, or is refused naming the node and property."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.errors import InvalidInputError
from appliance.pipelines.elyra import convert, load_elyra, to_yaml_document
from appliance.pipelines.loader import parse_pipeline
from tests.integration._elyra_fixtures import drawing, node, notebook_file, retrain_drawing


def _refusal(doc: dict[str, Any], folder: Path) -> str:
    with pytest.raises(InvalidInputError) as err:
        convert(doc, folder / "p.pipeline")
    return str(err.value)


def _two_nodes(folder: Path, **train: Any) -> dict[str, Any]:
    (folder / "prepare.py").write_text("print('hi')\n")
    notebook_file(folder / "train.ipynb", "print(1)")
    return drawing(
        "p",
        [
            node("a", "prepare.py", outputs=("key.txt",)),
            node("b", "train.ipynb", parents=("a",), **train),
        ],
        env={"APPLIANCE_MODEL": "wine"},
    )


def test_a_drawing_becomes_the_runners_pipeline(tmp_path: Path) -> None:
    path = retrain_drawing(tmp_path, name="drawn", model="drawn-model")
    pipeline = load_elyra(path)
    assert (pipeline.name, pipeline.model) == ("drawn", "drawn-model")
    prepare, train = pipeline.steps
    assert prepare.name == "prepare"
    assert prepare.run == ["{python}", str((tmp_path / "prepare.py").resolve())]
    assert prepare.env == {"STAGE": "prepare"}
    assert pipeline.env == {"DATASET": "iris"} and pipeline.parameters == {}
    assert prepare.outputs == {"dataset_key": "dataset_key.txt"}
    assert train.name == "train" and train.notebook == "train.ipynb"
    assert train.inputs == ["dataset_key.txt"]  # the parent's output must exist before it starts
    assert train.outputs == {"version": "registration.json#version"}
    assert (train.timeout_seconds, train.retries) == (300, 1)
    assert "APPLIANCE_TIMEOUT_SECONDS" not in train.env


def test_links_decide_the_order_not_the_file(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path)
    doc["pipelines"][0]["nodes"].reverse()
    assert [s.name for s in convert(doc, tmp_path / "p.pipeline").steps] == ["prepare", "train"]


def test_parameters_reach_notebooks_as_parameters_and_scripts_as_env(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path, pipeline_parameters=["dataset"])
    doc["pipelines"][0]["nodes"][0]["app_data"]["component_parameters"]["pipeline_parameters"] = ["dataset"]
    doc["pipelines"][0]["app_data"]["properties"]["pipeline_parameters"] = [
        {"name": "dataset", "description": "", "default_value": {"type": "String", "value": "wine"},
         "required": False},
    ]  # fmt: skip
    pipeline = convert(doc, tmp_path / "p.pipeline")
    assert pipeline.parameters == {"dataset": "wine"}
    assert pipeline.steps[0].env == {"dataset": "{params.dataset}"}
    assert pipeline.steps[1].args == {"dataset": "{params.dataset}"}


@pytest.mark.parametrize(
    ("prop", "value", "expected"),
    [
        ("runtime_image", "tensorflow/tensorflow:2.8.0", "runtime_image 'tensorflow/tensorflow:2.8.0'"),
        ("kubernetes_secrets", [{"env_var": "A", "name": "s", "key": "k"}], "kubernetes_secrets is set"),
        ("mounted_volumes", [{"path": "/v", "pvc_name": "p", "read_only": False}], "mounted_volumes is set"),
        ("kubernetes_tolerations", [{"operator": "Exists"}], "kubernetes_tolerations is set"),
        ("kubernetes_shared_mem_size", {"size": 0.5}, "kubernetes_shared_mem_size is set"),
        ("memory", 4, "memory 4"),
        ("gpu", 64, "gpu 64: this host has"),
        ("dependencies", ["helper.py"], "dependencies is set"),
    ],
)
def test_what_the_runner_cannot_honour_is_refused_naming_node_and_property(
    tmp_path: Path, prop: str, value: Any, expected: str
) -> None:
    message = _refusal(_two_nodes(tmp_path, **{prop: value}), tmp_path)
    assert "node 'train.ipynb'" in message and expected in message


def test_the_appliance_image_is_accepted(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path, runtime_image="localhost/appliance-controller:latest")
    assert convert(doc, tmp_path / "p.pipeline").steps[1].notebook == "train.ipynb"


def test_a_missing_notebook_is_refused_naming_the_node(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path)
    (tmp_path / "train.ipynb").unlink()
    message = _refusal(doc, tmp_path)
    assert "node 'train.ipynb': filename 'train.ipynb' not found" in message


def test_a_cycle_is_refused_naming_the_nodes(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path)
    first = doc["pipelines"][0]["nodes"][0]
    first["inputs"][0]["links"] = [{"id": "l", "node_id_ref": "b", "port_id_ref": "outPort"}]
    message = _refusal(doc, tmp_path)
    assert "is part of a cycle" in message
    assert "prepare.py -> train.ipynb" in message or "train.ipynb -> prepare.py" in message


def test_every_problem_at_once_and_the_model_is_required(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path, runtime_image="other:1", cpu=2)
    doc["pipelines"][0]["app_data"]["properties"]["pipeline_defaults"]["env_vars"] = []
    message = _refusal(doc, tmp_path)
    assert "3 problems" in message
    assert "no APPLIANCE_MODEL" in message and "runtime_image 'other:1'" in message and "cpu 2" in message


def test_other_node_kinds_are_refused(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path)
    doc["pipelines"][0]["nodes"][1]["op"] = "execute-r-node"
    assert "op 'execute-r-node'" in _refusal(doc, tmp_path)


def test_runner_rules_are_reported_per_node(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path, env={"X": "{params.nope}"})
    message = _refusal(doc, tmp_path)
    assert "node 'train.ipynb': env" in message and "nope" in message


def test_another_elyra_version_is_refused_with_the_fix(tmp_path: Path) -> None:
    doc = _two_nodes(tmp_path)
    doc["pipelines"][0]["app_data"]["version"] = 7
    assert "save it to migrate it" in _refusal(doc, tmp_path)


def test_export_is_a_yaml_pipeline_the_loader_reads_back(tmp_path: Path) -> None:
    path = retrain_drawing(tmp_path / "drawn", name="drawn")
    target = tmp_path / "review" / "drawn.yaml"
    target.parent.mkdir()
    document = to_yaml_document(load_elyra(path), path, target)
    assert document["steps"][1]["notebook"] == "../drawn/train.ipynb"
    again = parse_pipeline(yaml.safe_dump(document, sort_keys=False), str(target)).model_dump()
    original = load_elyra(path).model_dump()
    original["steps"][1]["notebook"] = "../drawn/train.ipynb"
    assert again == original
    assert json.loads(path.read_text())["pipelines"][0]["id"] == "primary"  # the drawing is untouched


def test_the_loader_finds_a_drawing_by_name_like_a_yaml_file(tmp_path: Path) -> None:
    from appliance.pipelines.loader import available, find_pipeline, load_pipeline

    path = retrain_drawing(tmp_path, name="drawn")
    assert find_pipeline("drawn", [tmp_path]) == path
    assert load_pipeline(path).steps[1].notebook == "train.ipynb"
    (tmp_path / "drawn.yaml").write_text("name: drawn\n")
    assert available([tmp_path])["drawn"] == tmp_path / "drawn.yaml"  # the YAML form wins


def test_the_cli_refuses_a_bad_drawing_before_running_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli

    path = retrain_drawing(tmp_path / "work", name="drawn")
    (path.parent / "train.ipynb").unlink()
    state = tmp_path / "state"
    result = CliRunner().invoke(
        cli, ["--state-dir", str(state), "pipeline", "run", str(path)], obj={}, catch_exceptions=True
    )
    text = result.output + str(result.exception or "")
    assert result.exit_code != 0
    assert "node 'train.ipynb': filename 'train.ipynb' not found" in text
    assert not (state / "controller" / "runs").exists()  # no run was recorded
