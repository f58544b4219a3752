"""An edge answers file that cannot serve anything fails preflight with the fix, before ``up``
starts anything; one that names a model file, or a cluster whose control host runs MLflow, passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.addressing import HostMap
from appliance.answers import Answers
from appliance.cli import cli, main
from appliance.context import AppContext
from appliance.preflight import _model_source
from appliance.render import render_stack


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The CLI's entry point as the ``appliance`` command runs it (errors become exit codes)."""
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out = capsys.readouterr()
    return int(ended.value.code or 0), out.out + out.err


def test_init_edge_then_up_fails_preflight_naming_the_registry_and_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    answers, state = tmp_path / "appliance.yaml", tmp_path / "state"
    assert CliRunner().invoke(cli, ["init", "--profile", "edge", "-o", str(answers)]).exit_code == 0
    base = ["--answers", str(answers), "--state-dir", str(state)]
    code, output = _run([*base, "preflight"], capsys)
    assert code == 3, output
    assert "models:/breast_cancer@champion" in output and "edge profile" in output
    assert "s3://" in output and "cluster" in output
    code, output = _run([*base, "up"], capsys)
    assert code == 3, output
    assert "models:/breast_cancer@champion" in output
    # Nothing started: no supervisor socket, no service logs, no generated configs.
    assert not list(state.rglob("*.sock")) and not list(state.rglob("*.log"))
    assert not (state / "config").exists()


def _check(tmp_path: Path, **answers: object) -> list[str]:
    ctx = AppContext(Answers.model_validate({"object_store": {"kind": "filesystem"}} | answers), tmp_path)
    return [c.status for c in _model_source(ctx, render_stack(ctx))]


def test_what_an_edge_box_can_serve(tmp_path: Path) -> None:
    assert _check(tmp_path, profile="edge") == ["fail"]
    in_s3 = {"model": "s3://models/breast_cancer/model.onnx"}
    assert _check(tmp_path, profile="edge", serving=in_s3) == ["warn"]  # a folder store: AWS's, if any
    assert _check(tmp_path, profile="edge", serving=in_s3, object_store={"kind": "seaweedfs"}) == []
    assert _check(tmp_path, profile="edge", serving={"model": str(tmp_path / "model.onnx")}) == []
    assert _check(tmp_path, profile="custom", components={"mlflow": False}) == ["fail"]
    assert _check(tmp_path, profile="lab") == []


def test_an_edge_host_of_a_cluster_reads_the_control_hosts_registry(tmp_path: Path) -> None:
    answers = Answers.model_validate({"profile": "edge", "object_store": {"kind": "filesystem"}})
    hosts = HostMap(addresses={"ctl1": "10.0.0.1", "edge1": "10.0.0.7"}, default="ctl1")
    ctx = AppContext(answers, tmp_path, hosts=hosts, here="edge1")
    (check,) = _model_source(ctx, render_stack(ctx))
    assert check.status == "pass" and "http://10.0.0.1:5000" in check.detail
