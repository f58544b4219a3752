"""The appliance's Elyra runtime: generated at install, and what Run publishes and refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.errors import ApplianceError, InvalidInputError
from appliance.pipelines.elyra import load_elyra
from appliance.pipelines.elyra_runtime import RUNTIME_NAME, RUNTIME_TYPE, find_drawing, publish, schema
from appliance.render import render_stack
from tests.integration._elyra_fixtures import APPLIANCE_IMAGE, retrain_drawing


def test_the_workbench_gets_the_runtime_and_image_configs_at_install(tmp_path: Path) -> None:
    ctx = AppContext(
        Answers.model_validate({"object_store": {"kind": "filesystem"}, "ports": {"controller": 18123}}),
        tmp_path / "state",
    )
    workbench = render_stack(ctx)["workbench"]
    runtime = json.loads(workbench.files["metadata/runtimes/appliance.json"])
    assert runtime["schema_name"] == RUNTIME_NAME == schema()["name"]
    assert runtime["metadata"] == runtime["metadata"] | {
        "runtime_type": RUNTIME_TYPE,
        "api_endpoint": "http://127.0.0.1:18123",
    }
    image = json.loads(workbench.files["metadata/runtime-images/appliance.json"])
    assert image["metadata"]["image_name"] == APPLIANCE_IMAGE
    env = workbench.env
    assert env["APPLIANCE_CONTROLLER_TOKEN_FILE"] == str(tmp_path / "state/secrets/controller_webhook_token")
    assert env["APPLIANCE_PIPELINES_DIR"] == str(tmp_path / "state/pipelines")
    assert env["ELYRA_METADATA_PATH"].split(":")[1] == str(tmp_path / "state/config/workbench")
    assert "controller_webhook_token" not in json.dumps(runtime)  # the token stays in its file


def test_publish_copies_a_snapshot_the_controller_runs_from_anywhere(tmp_path: Path) -> None:
    drawing = retrain_drawing(tmp_path / "work" / "retrain", name="drawn")
    published = publish(drawing, "drawn", tmp_path / "pipelines")
    assert published == tmp_path / "pipelines" / "drawn.pipeline"
    (drawing.parent / "train.ipynb").unlink()  # later edits in the workbench do not touch it
    pipeline = load_elyra(published)
    assert pipeline.steps[1].notebook == "drawn.files/01-train.ipynb"
    assert (tmp_path / "pipelines" / "drawn.files" / "01-train.ipynb").is_file()
    assert sorted(p.name for p in (tmp_path / "pipelines").iterdir()) == ["drawn.files", "drawn.pipeline"]


def test_a_refused_drawing_publishes_nothing(tmp_path: Path) -> None:
    drawing = retrain_drawing(tmp_path / "work", name="drawn")
    (drawing.parent / "prepare.py").unlink()
    with pytest.raises(
        InvalidInputError, match=re.escape("node 'prepare.py': filename 'prepare.py' not found")
    ):
        publish(drawing, "drawn", tmp_path / "pipelines")
    assert not (tmp_path / "pipelines").exists() or not any((tmp_path / "pipelines").iterdir())


def test_the_submitted_drawing_is_found_by_name_and_nodes(tmp_path: Path) -> None:
    root = tmp_path / "work"
    first = retrain_drawing(root / "a", name="drawn")
    retrain_drawing(root / "b", name="drawn")
    assert find_drawing(root, "drawn.pipeline", ["a/prepare.py", "a/train.ipynb"]) == first
    with pytest.raises(ApplianceError, match=r"save the pipeline"):
        find_drawing(root, "drawn.pipeline", ["a/prepare.py"])
    with pytest.raises(ApplianceError, match=re.escape("not a .pipeline file name")):
        find_drawing(root, "../drawn.pipeline", [])
