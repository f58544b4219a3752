"""The pipeline file is checked as a whole before anything runs: every problem, with its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import InvalidInputError
from appliance.pipelines.loader import builtin_pipelines_dir, find_pipeline, load_pipeline, parse_pipeline
from appliance.pipelines.runner import UnknownParameterError, resolve_params

GOOD = """\
name: demo
model: wine
parameters: {dataset: wine, epochs: 5, fast: true}
steps:
  - name: ingest
    builtin: ingest
    args: {dataset: "{params.dataset}"}
  - name: train
    run: ["{python}", "-m", "trainer", "--key", "{steps.ingest.outputs.dataset_key}",
          "--epochs", "{params.epochs}"]
    inputs: [dataset_key.txt]
    outputs: {version: version.txt}
  - name: promote
    run: ["echo", "{steps.train.outputs.version}"]
    when: "{params.fast} == true"
"""

BAD = """\
name: demo
model: wine
parameters: {dataset: wine}
steps:
  - name: ingest
    builtin: ingest
    args: {dataset: "{params.datset}"}
    retries: -1
  - name: ingest
    run: ["echo", "{steps.later.outputs.x}"]
    timout_seconds: 5
  - name: promote
    run: ["true"]
  - name: later
    notebook: nb.ipynb
    run: ["true"]
    inputs: [nobody_writes_this.csv]
"""


def problems(text: str) -> list[str]:
    with pytest.raises(InvalidInputError) as caught:
        parse_pipeline(text, "p.yaml")
    return [p.render("p.yaml") for p in caught.value.problems]


def test_a_good_file_loads_with_defaults() -> None:
    pipeline = parse_pipeline(GOOD, "p.yaml")
    assert [s.name for s in pipeline.steps] == ["ingest", "train", "promote"]
    assert pipeline.steps[0].all_outputs == {
        "dataset_key": "dataset_key.txt",
        "dataset_uri": "dataset_uri.txt",
    }
    assert pipeline.steps[1].timeout_seconds == 3600 and pipeline.steps[1].retries == 0


def test_every_problem_is_listed_at_once_with_its_line() -> None:
    found = problems(BAD)
    expected = [
        "p.yaml:7: steps.0.args: unknown parameter 'datset' in {params.datset}: "
        "did you mean {params.dataset}?",
        "p.yaml:8: steps.0.retries: Input should be greater than or equal to 0 (got -1)",
        "p.yaml:9: steps.1.name: duplicate step name 'ingest' (also steps.0) (give every step its own name)",
        "p.yaml:10: steps.1.run: {steps.later.outputs.x} refers to step 'later', "
        "which is not an earlier step (earlier: ingest)",
        "p.yaml:11: steps.1.timout_seconds: unknown key 'timout_seconds' (did you mean 'timeout_seconds'?)",
        "p.yaml:12: steps.2.name: the promote step must be the last step "
        "(move it to the end so that a failed step never moves the champion alias)",
        "p.yaml:14: steps.3: a step needs exactly one of run, notebook or builtin (found: run, notebook)",
        "p.yaml:17: steps.3.inputs.0: input 'nobody_writes_this.csv' is not an output of any earlier step "
        "(declare it under an earlier step's outputs, or fix the file name)",
    ]
    assert found == expected


def test_top_level_typos_and_missing_keys_are_named() -> None:
    found = problems("name: x\nmodle: wine\nsteps: []\n")
    assert "p.yaml:2: modle: unknown key 'modle' (did you mean 'model'?)" in found
    assert "p.yaml: model: Field required" in found
    assert any(p.startswith("p.yaml:3: steps: List should have at least 1 item") for p in found)


def test_unknown_placeholders_and_outputs_are_refused() -> None:
    text = GOOD.replace("{steps.train.outputs.version}", "{steps.train.outputs.verison}").replace(
        '"{params.epochs}"', '"{epochs}"'
    )
    found = problems(text)
    assert any("step 'train' has no output 'verison' (its outputs: version)" in p for p in found)
    assert any("unknown placeholder {epochs}" in p for p in found)


def test_yaml_syntax_errors_give_the_line() -> None:
    found = problems("name: x\nsteps: [\n  - a: b\n")
    assert len(found) == 1 and "not valid YAML" in found[0] and found[0].startswith("p.yaml:")


def test_a_step_must_not_escape_the_workdir() -> None:
    text = GOOD.replace("inputs: [dataset_key.txt]", "inputs: [../secrets/x]")
    assert any("must be a path relative to the run's workdir" in p for p in problems(text))


def test_parameters_override_and_unknown_ones_get_a_suggestion() -> None:
    pipeline = parse_pipeline(GOOD, "p.yaml")
    assert resolve_params(pipeline, {"epochs": "9"}) == {"dataset": "wine", "epochs": "9", "fast": "true"}
    with pytest.raises(UnknownParameterError) as caught:
        resolve_params(pipeline, {"epoch": "9"})
    assert "no parameter 'epoch'" in str(caught.value) and "did you mean 'epochs'?" in str(caught.value)


def test_the_default_retrain_pipeline_runs_the_trainer_steps_with_promote_last() -> None:
    path = find_pipeline("retrain", [builtin_pipelines_dir()])
    pipeline = load_pipeline(path)
    names = [s.name for s in pipeline.steps]
    assert names == ["ingest", "validate", "train", "evaluate", "export", "register", "promote"]
    assert pipeline.steps[0].builtin == "ingest"
    for step in pipeline.steps[1:]:
        assert step.run is not None
        assert step.run[:4] == ["{python}", "-m", "appliance.workloads.trainer", step.name]
        assert "--workdir" in step.run


def test_finding_a_pipeline_suggests_close_names(tmp_path: Path) -> None:
    (tmp_path / "retrain.yaml").write_text(GOOD)
    with pytest.raises(Exception) as caught:
        find_pipeline("retrian", [tmp_path])
    assert "did you mean 'retrain'?" in str(caught.value)
    assert find_pipeline(str(tmp_path / "retrain.yaml"), []) == tmp_path / "retrain.yaml"
