"""A pipeline step that trains across the cluster's train workers (``hosts``, ``nproc_per_node``):
which steps may ask for it, what it runs (the cluster launcher, the same ``appliance cluster
train`` uses), what a non-cluster appliance answers, and the launcher's view of the workers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.errors import ApplianceError, InvalidInputError
from appliance.pipelines.loader import parse_pipeline
from appliance.pipelines.model import Pipeline, Step
from appliance.pipelines.runner import PipelineRunner
from appliance.pipelines.stepexec import StepFailure, command_for

TRAINER = ["{python}", "-m", "appliance.workloads.trainer", "run", "--dataset", "{params.dataset}"]

SPREAD = """\
name: spread
model: wine
parameters: {dataset: wine}
steps:
  - name: train
    run: ["{python}", "-m", "appliance.workloads.trainer", "run", "--dataset", "{params.dataset}",
          "--epochs", "3"]
    hosts: 2
    nproc_per_node: 2
    outputs: {version: "train.json#version", decision: "train.json#decision"}
  - name: after
    run: ["echo", "{steps.train.outputs.version}"]
"""


def test_a_trainer_run_step_may_ask_for_hosts_and_processes() -> None:
    pipeline = parse_pipeline(SPREAD, "spread.yaml")
    assert (pipeline.steps[0].hosts, pipeline.steps[0].nproc_per_node) == (2, 2)
    assert (pipeline.steps[1].hosts, pipeline.steps[1].nproc_per_node) == (1, 1)  # the default


@pytest.mark.parametrize("field", ["hosts", "nproc_per_node"])
def test_fewer_than_one_host_or_process_is_refused(field: str) -> None:
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        Step(name="train", run=TRAINER, **{field: 0})


@pytest.mark.parametrize(
    "step",
    [
        {
            "hosts": 2,
            "run": ["{python}", "-m", "appliance.workloads.trainer", "train", "--workdir", "{workdir}"],
        },
        {"hosts": 2, "run": ["torchrun", "my_script.py", "-m", "appliance.workloads.trainer", "run"]},
        {"nproc_per_node": 3, "run": ["echo", "x"]},
        {"hosts": 2, "builtin": "ingest", "args": {"dataset": "wine"}},
        {"hosts": 2, "notebook": "train.ipynb"},
    ],
)
def test_only_the_built_in_trainers_run_may_spread_and_the_refusal_names_the_fix(step: dict) -> None:
    with pytest.raises(ValidationError) as err:
        Step.model_validate({"name": "train", **step})
    text = str(err.value)
    assert "built-in trainer's run" in text and "set hosts: 1 and nproc_per_node: 1" in text, text


def test_the_loader_reports_a_spread_step_that_is_not_the_trainer_with_its_place() -> None:
    text = SPREAD.replace('"appliance.workloads.trainer", "run"', '"appliance.workloads.trainer", "train"')
    with pytest.raises(InvalidInputError) as err:
        parse_pipeline(text, "spread.yaml")
    assert "steps.0" in str(err.value) and "built-in trainer's run" in str(err.value), str(err.value)


def _resolver(workdir: Path, state: Path) -> object:
    values = {
        "python": sys.executable,
        "params.dataset": "wine",
        "workdir": str(workdir),
        "state_dir": str(state),
    }
    return values.__getitem__


def test_on_an_appliance_that_is_not_a_cluster_the_step_is_refused_with_the_fix(tmp_path: Path) -> None:
    step = parse_pipeline(SPREAD, "spread.yaml").steps[0]
    with pytest.raises(StepFailure) as err:
        command_for(step, tmp_path / "p.yaml", tmp_path / "work", _resolver(tmp_path / "work", tmp_path))
    text = str(err.value)
    assert "2 host(s) x 2 process(es)" in text and "not a cluster" in text, text
    assert "appliance cluster up" in text and "set hosts: 1" in text, text


def test_on_a_control_host_the_step_runs_the_cluster_launcher_with_the_trainers_arguments(
    tmp_path: Path,
) -> None:
    launcher = tmp_path / "train-launcher"
    launcher.mkdir()
    (launcher / "inventory.yml").write_text("all: {}\n")
    step = parse_pipeline(SPREAD, "spread.yaml").steps[0]
    argv = command_for(step, tmp_path / "p.yaml", tmp_path / "work", _resolver(tmp_path / "work", tmp_path))
    assert argv[:4] == [sys.executable, "-m", "appliance.cluster.train", "launch"]
    opts = dict(zip(argv[4:14:2], argv[5:14:2], strict=True))
    assert opts == {
        "--launcher": str(launcher),
        "--hosts": "2",
        "--nproc-per-node": "2",
        "--timeout": "3600",
        "--summary": str(tmp_path / "work" / "train.json"),
    }
    assert argv[14:] == ["--", "--dataset", "wine", "--epochs", "3"]


def test_a_pipeline_run_records_the_refused_step_and_runs_nothing_after_it(tmp_path: Path) -> None:
    pipeline: Pipeline = parse_pipeline(SPREAD, "spread.yaml")
    runner = PipelineRunner(tmp_path / "state", {})
    record = runner.run(pipeline, tmp_path / "spread.yaml")
    assert record["state"] == "failed", record
    steps = {s["name"]: s for s in record["steps"]}
    assert steps["train"]["state"] == "failed" and "not a cluster" in steps["train"]["error"], steps
    assert steps["after"]["state"] != "succeeded", steps


def _launcher(tmp_path: Path, workers: list[str]) -> Path:
    launcher = tmp_path / "train-launcher"
    launcher.mkdir()
    hosts = {h: {"ansible_host": f"10.0.0.{i + 20}"} for i, h in enumerate(workers)}
    inventory = {"all": {"children": {"train_workers": {"hosts": hosts}}}}
    (launcher / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    return launcher


def test_the_launcher_takes_the_first_workers_in_the_groups_order(tmp_path: Path) -> None:
    from appliance.cluster.train import launcher_env, launcher_workers

    launcher = _launcher(tmp_path, ["trn", "ctl"])
    assert launcher_workers(launcher, 2) == ["trn", "ctl"] and launcher_workers(launcher, 1) == ["trn"]
    with pytest.raises(ApplianceError) as err:
        launcher_workers(launcher, 3)
    assert "has 2 host(s) (trn, ctl)" in err.value.message and "1..2" in (err.value.fix or ""), err.value
    ssh = launcher_env(launcher)["ANSIBLE_SSH_ARGS"]
    # Only the host keys `cluster up` recorded are trusted: no key is accepted on first sight.
    assert "StrictHostKeyChecking=yes" in ssh and f"UserKnownHostsFile={launcher / 'known_hosts'}" in ssh


def test_a_launch_without_the_launcher_folder_exits_non_zero_with_the_fix(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(
                sys.executable,
                "-m",
                "appliance.cluster.train",
                "launch",
                "--launcher",
                str(tmp_path / "none"),
            ),
            *("--hosts", "2", "--summary", str(tmp_path / "s.json"), "--", "--dataset", "wine"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "cannot read the train workers" in done.stderr and "appliance cluster up" in done.stderr
    assert not (tmp_path / "s.json").exists()


def test_a_worker_with_an_unreadable_job_environment_says_so_and_exits_2(tmp_path: Path) -> None:
    (tmp_path / "torchrun.env").write_text("")
    (tmp_path / "job.json").write_text("not json")
    done = subprocess.run(
        [
            *(sys.executable, "-m", "appliance.cluster.train", "--env-file", str(tmp_path / "torchrun.env")),
            *("--job-id", "j", "--job-env", str(tmp_path / "job.json"), "--", "--dataset", "wine"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2 and "cannot read the job environment" in done.stderr, done.stderr


def test_every_train_worker_gets_its_job_environment_and_no_other_host_does(tmp_path: Path) -> None:
    from appliance.cluster.units import render_hosts

    hosts = [{"name": "ctl1", "address": "10.0.0.10", "groups": ["control", "train_workers"]}]
    hosts += [{"name": "trn1", "address": "10.0.0.12", "groups": ["train_workers"]}]
    hosts += [{"name": "srv1", "address": "10.0.0.13", "groups": ["serving"]}]
    answers = Answers.model_validate({"bind_address": "0.0.0.0", "cluster": {"hosts": hosts}})
    found = render_hosts(answers, tmp_path / "secrets")
    for name, mlflow in (("ctl1", "127.0.0.1"), ("trn1", "10.0.0.10")):
        env = found[name]["appliance_train_worker_job_env"]
        assert env["MLFLOW_TRACKING_URI"].startswith(f"http://{mlflow}:"), (name, env)
        assert env["MLFLOW_TRACKING_PASSWORD"], env  # the writer account travels to the worker
    assert "appliance_train_worker_job_env" not in found["srv1"]
    json.dumps(found["trn1"]["appliance_train_worker_job_env"])  # what the role writes as JSON
