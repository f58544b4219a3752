"""One name rule for models, pipelines and datasets, refused at every entry that is not a server:
the rule itself, the CLI (exit 2 naming the rule), pipeline files, the run lock, the data
connection and Alertmanager labels. The controller's HTTP API is tested with a real controller
(tests/integration/test_controller_names.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.dataconn import DataConnection, read_dataset, write_dataset
from appliance.errors import InvalidInputError
from appliance.names import RULE, InvalidNameError, check_name, child_path, name_problem
from appliance.pipelines.loader import find_pipeline, parse_pipeline
from appliance.pipelines.locks import ModelLock, holder, lock_dir
from appliance.pipelines.runner import PipelineRunner
from appliance.workloads.controller.alerts import drift_targets, models_to_retrain, parse_notification

BAD_NAMES = ["../x", "a/b", "", "x" * 65, "..", ".hidden", "-rf", "a..b", "a b", "wine\n", "é"]
GOOD_NAMES = ["breast_cancer", "wine", "wine-v2", "model.v1", "7up", "x" * 64]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_names_are_refused_naming_the_value_and_the_rule(name: str) -> None:
    assert name_problem(name) is not None
    with pytest.raises(InvalidNameError) as caught:
        check_name(name, "model name")
    text = str(caught.value)
    assert repr(name) in text and RULE in text and "fix:" in text
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_names_pass(name: str) -> None:
    assert check_name(name) == name and name_problem(name) is None


def test_a_non_string_is_refused() -> None:
    assert name_problem(3) == "must be a string, not int"


def test_child_path_stays_in_its_folder_even_through_a_symlink(tmp_path: Path) -> None:
    folder = tmp_path / "locks"
    folder.mkdir()
    assert child_path(folder, "wine", ".lock") == folder / "wine.lock"
    (folder / "evil.lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(InvalidNameError):
        child_path(folder, "evil", ".lock")


@pytest.mark.parametrize("name", ["../escape", "a/b", ""])
def test_the_run_lock_refuses_a_traversal_name_before_any_file(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        ModelLock(tmp_path, name)
    with pytest.raises(InvalidNameError):
        holder(tmp_path, name)
    assert not tmp_path.joinpath("controller").exists()
    lock = ModelLock(tmp_path, "wine")
    assert lock.acquire("run-1") and lock.path.parent == lock_dir(tmp_path)
    lock.release()


PIPELINE = """\
name: {name}
model: {model}
parameters: {{dataset: {dataset}}}
steps:
  - name: ingest
    builtin: ingest
    args: {{dataset: {ingest}}}
"""


@pytest.mark.parametrize(("field", "line"), [("name", 1), ("model", 2), ("dataset", 3), ("ingest", 5)])
def test_a_pipeline_file_with_a_bad_name_is_refused_at_load_with_its_line(field: str, line: int) -> None:
    values = {"name": "demo", "model": "wine", "dataset": "wine", "ingest": '"{params.dataset}"'}
    values[field] = '"../x"'
    with pytest.raises(InvalidInputError) as caught:
        parse_pipeline(PIPELINE.format(**values), "p.yaml")
    rendered = [p.render("p.yaml") for p in caught.value.problems]
    assert any(f"p.yaml:{line}:" in r and "'../x'" in r and RULE in r for r in rendered), rendered
    values[field] = "wine"
    assert parse_pipeline(PIPELINE.format(**values), "p.yaml").model == "wine"


def test_find_pipeline_refuses_a_traversal_name(tmp_path: Path) -> None:
    (tmp_path / "evil.yaml").write_text("name: evil\n")
    with pytest.raises(InvalidNameError):
        find_pipeline("../" + tmp_path.name + "/evil", [tmp_path / "sub"])


def test_a_run_with_a_bad_model_or_dataset_override_is_refused_before_a_lock(tmp_path: Path) -> None:
    pipeline = parse_pipeline(PIPELINE.format(name="demo", model="wine", dataset="wine", ingest="wine"), "p")
    runner = PipelineRunner(tmp_path, {})
    with pytest.raises(InvalidNameError, match=re.escape("model name '../../x'")):
        runner.prepare(pipeline, tmp_path / "p.yaml", model="../../x")
    with pytest.raises(InvalidNameError, match="dataset name 'a/b'"):
        runner.prepare(pipeline, tmp_path / "p.yaml", params={"dataset": "a/b"})
    assert not lock_dir(tmp_path).exists() or not any(lock_dir(tmp_path).iterdir())
    assert runner.store.recent() == []


def test_the_data_connection_refuses_a_dataset_name_that_leaves_its_folder(tmp_path: Path) -> None:
    import pandas as pd

    env = {"APPLIANCE_DATA_KIND": "filesystem", "APPLIANCE_DATA_ROOT": str(tmp_path)}
    conn = DataConnection.from_env(env)
    frame = pd.DataFrame({"a": [1, 2], "target": [0, 1]})
    for name in ("../outside", "a/b", ""):
        with pytest.raises(InvalidNameError, match="dataset name"):
            write_dataset(conn, name, frame)
        with pytest.raises(InvalidNameError, match="dataset name"):
            read_dataset(conn, name)
    assert not (tmp_path / "outside").exists()
    write_dataset(conn, "wine", frame)
    assert read_dataset(conn, "wine").frame.shape == (2, 2)


def alert(model: str, alertname: str = "FeatureDrift") -> dict[str, object]:
    return {"status": "firing", "labels": {"alertname": alertname, "model": model}}


def test_a_drift_alert_with_a_traversal_model_label_is_not_acted_on() -> None:
    body = {"version": "4", "status": "firing", "alerts": [alert("../../etc/x"), alert("wine"), alert("a/b")]}
    models, refused = drift_targets(parse_notification(json.dumps(body).encode()))
    assert models == ["wine"]
    assert len(refused) == 2 and "alerts.0.labels.model '../../etc/x'" in refused[0] and RULE in refused[0]
    assert models_to_retrain(parse_notification(json.dumps(body).encode())) == ["wine"]


@pytest.mark.parametrize(
    "args",
    [
        ["pipeline", "run", "../x"],
        ["pipeline", "run", "retrain", "--model", "../x"],
        ["pipeline", "run", "retrain", "--param", "dataset=a/b"],
        ["train", "--dataset", "../x"],
        ["train", "--dataset", "wine", "--model-name", "x" * 65],
    ],
)
def test_cli_commands_refuse_a_bad_name_with_exit_2_and_the_rule(
    args: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--state-dir", str(tmp_path / "state"), *args])
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "is not a valid name" in err and RULE in err and "fix:" in err
    assert not (tmp_path / "state").exists()
