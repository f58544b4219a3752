"""``appliance pipeline validate`` and flag checks, through click without starting a process."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli import cli
from appliance.cli.pipeline_cmds import _parse_params


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), obj={}, catch_exceptions=True)
    text = result.output + (str(result.exception) if result.exception else "")
    return result.exit_code, text


def test_validate_accepts_the_default_retrain_pipeline() -> None:
    default = Path(__file__).resolve().parents[2] / "stacks" / "pipelines" / "retrain.yaml"
    code, text = invoke("pipeline", "validate", str(default))
    assert code == 0 and "ok, pipeline 'retrain'" in text and "ingest, validate, train" in text


def test_validate_lists_the_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nmodel: m\nsteps:\n  - name: a\n    rn: [ls]\n")
    code, text = invoke("pipeline", "validate", str(bad))
    assert code != 0
    assert "bad.yaml:5: steps.0.rn: unknown key 'rn' (did you mean 'run'?)" in text
    assert "needs exactly one of run, notebook or builtin" in text


@pytest.mark.parametrize("flag", ["dataset", "=wine", ""])
def test_a_param_flag_must_be_name_equals_value(flag: str) -> None:
    import click

    with pytest.raises(click.BadParameter, match="is not NAME=VALUE"):
        _parse_params((flag,))
    assert _parse_params(("dataset=wine", "note=a=b")) == {"dataset": "wine", "note": "a=b"}


def test_show_names_a_run_that_does_not_exist(tmp_path: Path) -> None:
    code, text = invoke("--state-dir", str(tmp_path), "pipeline", "show", "nope")
    assert code != 0 and "no single run matches 'nope'" in text


def test_a_run_for_a_model_gets_its_binding_and_an_unbound_or_contrary_one_is_refused(tmp_path: Path) -> None:
    answers = tmp_path / "appliance.yaml"
    answers.write_text(
        "object_store: {kind: filesystem}\n"
        "models:\n  - {name: breast_cancer, dataset: breast_cancer}\n  - {name: wine, dataset: wine}\n"
    )
    base = ("--answers", str(answers), "--state-dir", str(tmp_path / "state"), "pipeline", "run", "retrain")
    code, text = invoke(*base, "--model", "diabetes")
    assert code != 0 and "model 'diabetes' has no dataset binding" in text and "models[].dataset" in text
    code, text = invoke(*base, "--model", "wine", "--param", "dataset=breast_cancer")
    assert code != 0 and "model 'wine' is bound to dataset 'wine'" in text
    assert not (tmp_path / "state" / "controller" / "runs").exists()  # nothing started
