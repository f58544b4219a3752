"""Starting a job across hosts, without hosts: the rendezvous read from the train_worker role's
``torchrun.env``, the torchrun command line each host runs, the interface gloo is pinned to, the
answers' ``cluster.train`` and the host variables it becomes, and the failed host's message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.cluster.train import Rendezvous, _error_line, interface_of, read_env_file, torchrun_argv

ENV = {
    "APPLIANCE_TRAIN_NNODES": "3",
    "APPLIANCE_TRAIN_NPROC_PER_NODE": "2",
    "APPLIANCE_TRAIN_RDZV_ENDPOINT": "10.0.0.12:29400",
    "APPLIANCE_TRAIN_RDZV_IS_HOST": "false",
    "APPLIANCE_TRAIN_LOCAL_ADDR": "10.0.0.13",
}


def test_the_env_file_gives_the_rendezvous_and_the_job_may_use_fewer_hosts(tmp_path: Path) -> None:
    path = tmp_path / "torchrun.env"
    path.write_text("# managed\n\n" + "".join(f"{k}={v}\n" for k, v in ENV.items()))
    rdzv = Rendezvous.from_env(read_env_file(path))
    assert rdzv == Rendezvous(3, 2, "10.0.0.12:29400", False, "10.0.0.13")
    assert Rendezvous.from_env(ENV, nnodes=2, nproc_per_node=1).nnodes == 2
    argv = torchrun_argv(Rendezvous.from_env(ENV, nnodes=2), "job-1", ["--dataset", "wine"])
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {
        "--nnodes=2",
        "--nproc-per-node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=10.0.0.12:29400",
    } <= set(argv)
    assert {
        "--rdzv-id=job-1",
        "--rdzv-conf=is_host=false",
        "--local-addr=10.0.0.13",
        "--max-restarts=0",
    } <= set(argv)
    assert argv[-5:] == ["--module", "appliance.workloads.trainer", "run", "--dataset", "wine"]


def test_a_missing_setting_or_file_names_cluster_up_as_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cluster up"):
        Rendezvous.from_env({k: v for k, v in ENV.items() if "ENDPOINT" not in k})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.cluster.train",
            "--env-file",
            str(tmp_path / "none.env"),
            "--job-id",
            "j",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "appliance cluster up" in done.stderr


def test_gloo_is_pinned_to_the_interface_holding_the_local_address() -> None:
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("192.0.2.77") is None  # TEST-NET: on no interface here


def test_the_failed_hosts_message_is_the_trainers_error_line() -> None:
    lines = [
        "[rank1]: Traceback ...",
        "error: dataset 'wine' not found (fix: appliance data seed)",
        "ChildFailedError",
    ]
    assert _error_line(lines) == "error: dataset 'wine' not found (fix: appliance data seed)"
    assert _error_line(["", "torch.distributed.DistNetworkError: timed out", ""]) == (
        "torch.distributed.DistNetworkError: timed out"
    )


def _cluster(**train: object) -> dict[str, object]:
    hosts = [{"name": "ctl1", "address": "10.0.0.10", "groups": ["control"]}]
    hosts += [{"name": "trn1", "address": "10.0.0.12", "groups": ["train_workers"]}]
    return {"bind_address": "0.0.0.0", "cluster": {"hosts": hosts} | ({"train": train} if train else {})}


def test_cluster_train_defaults_and_limits() -> None:
    assert Answers.model_validate(_cluster()).cluster.train.nproc_per_node == 1  # type: ignore[union-attr]
    assert (
        Answers.model_validate(_cluster(nproc_per_node=8, rdzv_port=29500)).cluster.train.rdzv_port == 29500
    )  # type: ignore[union-attr]
    for bad in ({"nproc_per_node": 0}, {"rdzv_port": 80}, {"procs": 2}):
        with pytest.raises(ValidationError):
            Answers.model_validate(_cluster(**bad))


def test_only_train_workers_get_the_rendezvous_variables(tmp_path: Path) -> None:
    from appliance.cluster.units import render_hosts

    answers = Answers.model_validate(_cluster(nproc_per_node=4, rdzv_port=29555))
    found = render_hosts(answers, tmp_path / "secrets")
    assert found["trn1"]["appliance_train_worker_nproc"] == 4
    assert found["trn1"]["appliance_train_worker_rdzv_port"] == 29555
    assert "appliance_train_worker_nproc" not in found["ctl1"]


def test_the_progress_follows_the_playbooks_torchrun_task() -> None:
    import yaml

    from appliance.cluster.run import ROLES_DIR
    from appliance.cluster.train import PLAYBOOK, TASK

    (play,) = yaml.safe_load((ROLES_DIR / PLAYBOOK).read_text())
    names = [task["name"] for task in play["tasks"]]
    assert TASK in names and play["hosts"] == "train_workers"
    command = next(t for t in play["tasks"] if t["name"] == TASK)["ansible.builtin.command"]["argv"]
    assert "appliance.cluster.train" in command and "torchrun.env" in command
