"""Step outputs: a file's text, or one key of a JSON result (``registration.json#version``)."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.pipelines.loader import parse_pipeline
from appliance.pipelines.stepexec import output_file, read_output


def test_text_and_json_outputs_are_read(tmp_path: Path) -> None:
    (tmp_path / "key.txt").write_text("wine/b.csv\n")
    (tmp_path / "registration.json").write_text(
        json.dumps({"version": 3, "promoted": True, "tags": {"a": 1}})
    )
    assert read_output(tmp_path, "key.txt") == "wine/b.csv"
    assert read_output(tmp_path, "registration.json#version") == "3"
    assert read_output(tmp_path, "registration.json#promoted") == "true"
    assert read_output(tmp_path, "registration.json#tags") == '{"a": 1}'
    assert read_output(tmp_path, "registration.json#missing") is None
    assert read_output(tmp_path, "absent.json#version") is None
    assert output_file("registration.json#version") == "registration.json"


def test_a_json_output_counts_as_its_file_for_later_inputs() -> None:
    text = """\
name: p
model: m
steps:
  - name: register
    run: ["true"]
    outputs: {version: "registration.json#version"}
  - name: promote
    run: ["echo", "{steps.register.outputs.version}"]
    inputs: [registration.json]
"""
    assert parse_pipeline(text, "p.yaml").steps[0].all_outputs == {"version": "registration.json#version"}
