"""The contract with a user's training code, in process: what it is given (train.csv without the
test rows, with the target's own values) and the refusals that name what is wrong."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from appliance.workloads.trainer import user_model
from appliance.workloads.trainer.prepare import split
from appliance.workloads.trainer.schema import validate
from appliance.workloads.trainer.workdir import Options


def test_train_csv_holds_train_and_validation_rows_with_the_original_labels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(200, 3)), columns=["a", "b", "c"])
    frame["label"] = np.where(frame["a"] > 0, 7, 3)  # classes that are not 0..k-1
    spec = validate(frame, "toy", "label")
    data = split(frame, spec, 1)
    path = user_model.write_train_csv(tmp_path, spec, data)
    written = pd.read_csv(path)
    assert list(written.columns) == ["a", "b", "c", "label"]
    assert len(written) == len(data.y["train"]) + len(data.y["val"])
    assert set(written["label"]) == {3, 7}
    test_rows = {tuple(np.round(r, 5)) for r in data.x["test"]}
    assert not test_rows & {tuple(np.round(r, 5)) for r in written[["a", "b", "c"]].to_numpy(np.float32)}
    # The labels still belong to their rows.
    assert ((written["a"] > 0) == (written["label"] == 7)).all()


@pytest.mark.parametrize(
    ("name", "problem"), [("train.txt", "is not a .py or .ipynb file"), ("gone.py", "does not exist")]
)
def test_only_an_existing_script_or_notebook_can_train(tmp_path: Path, name: str, problem: str) -> None:
    if name.endswith(".txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(user_model.ScriptError) as err:
        user_model.check_script(tmp_path / name)
    assert problem in err.value.message and err.value.exit_code == 2
    assert ".ipynb" in (err.value.fix or "")
    ok = tmp_path / "train.py"
    ok.write_text("pass\n")
    assert user_model.check_script(ok) == ok.resolve()


def test_a_missing_model_names_the_contract_file_and_the_call_that_writes_it(tmp_path: Path) -> None:
    with pytest.raises(user_model.ScriptError) as err:
        user_model.require_model(Options(workdir=tmp_path), "evaluate")
    assert str(tmp_path / "user_model" / "MLmodel") in err.value.message
    assert "save_model(model, 'user_model')" in (err.value.fix or "")
    (tmp_path / "user_model").mkdir()
    (tmp_path / "user_model" / "MLmodel").write_text("flavors: {}\n")
    assert user_model.require_model(Options(workdir=tmp_path), "evaluate") == tmp_path / "user_model"


def test_a_script_runs_with_this_interpreter_and_a_notebook_with_papermill(tmp_path: Path) -> None:
    assert user_model.command(tmp_path / "t.py", tmp_path) == [sys.executable, str(tmp_path / "t.py")]
    nb = user_model.command(tmp_path / "t.ipynb", tmp_path)
    assert nb[1:3] == ["-m", "papermill"] and nb[nb.index("--cwd") + 1] == str(tmp_path)
