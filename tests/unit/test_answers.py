"""The answers file: defaults, every problem reported at once with lines and hints, the schema."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.answers import Answers
from appliance.answers_file import answers_schema, parse_answers, render_answers
from appliance.errors import InvalidInputError

ROOT = Path(__file__).resolve().parents[2]


def test_empty_file_means_defaults() -> None:
    assert parse_answers("") == Answers()


def test_every_problem_is_listed_with_path_line_and_hint() -> None:
    text = "profile: lab\nprots:\n  mlflow: 5000\nports:\n  mlflow: 70000\nbind_address: localhost\n"
    with pytest.raises(InvalidInputError) as info:
        parse_answers(text, "appliance.yaml")
    problems = {p.path: p for p in info.value.problems}
    assert set(problems) == {"prots", "ports.mlflow", "bind_address"}
    assert problems["prots"].hint == "did you mean 'ports'?"
    assert problems["prots"].line == 2
    assert problems["ports.mlflow"].line == 5
    assert "65535" in problems["ports.mlflow"].message
    assert problems["bind_address"].line == 6
    message = str(info.value)
    assert "appliance.yaml:2: prots: unknown key 'prots' (did you mean 'ports'?)" in message
    assert "3 problems" in message


def test_nested_unknown_key_suggests_sibling() -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_answers("object_store:\n  knd: minio\n")
    (problem,) = info.value.problems
    assert problem.path == "object_store.knd" and problem.hint == "did you mean 'kind'?"


def test_s3_needs_endpoint_and_ports_must_differ() -> None:
    with pytest.raises(InvalidInputError) as info:
        parse_answers("object_store: {kind: s3}\nports: {mlflow: 9090}\n")
    text = str(info.value)
    assert "no endpoint is set" in text and "ports.prometheus" in text


def test_seaweedfs_ports_leave_room_for_their_grpc_twins() -> None:
    """weed opens gRPC on each of these ports plus 10000: a port above 55535, or another service on
    the twin, is refused here instead of the store exiting with "invalid port" at up."""
    with pytest.raises(InvalidInputError) as info:
        parse_answers("ports: {seaweedfs_master: 60000}\n")
    assert "ports.seaweedfs_master is 60000" in str(info.value) and "at most 55535" in str(info.value)
    with pytest.raises(InvalidInputError) as info:
        parse_answers("ports: {s3: 18080, serving_http: 28080}\n")
    assert "ports.serving_http is 28080" in str(info.value) and "ports.s3" in str(info.value)
    assert parse_answers("ports: {s3: 55535}\n").ports.s3 == 55535


def test_not_yaml_and_not_a_mapping_are_reported() -> None:
    with pytest.raises(InvalidInputError, match="not valid YAML"):
        parse_answers("ports: [1, 2\n")
    with pytest.raises(InvalidInputError, match="mapping"):
        parse_answers("- a\n- b\n")


def test_rendered_defaults_are_commented_and_read_back() -> None:
    answers = Answers.model_validate({"profile": "edge", "ports": {"mlflow": 5123}})
    text = render_answers(answers)
    assert "# Host ports." in text
    assert parse_answers(text) == answers


def test_committed_schema_is_fresh() -> None:
    committed = json.loads((ROOT / "schemas" / "answers.schema.json").read_text())
    assert committed == answers_schema(), "run: appliance schema > schemas/answers.schema.json"
    assert committed["properties"]["profile"]["description"]
