"""A training job across two train workers, through the real CLI, Ansible, SSH and torchrun: three
hosts from one answers file (``ctl`` control with MLflow on PostgreSQL, ``trn1`` and ``trn2``
train workers), brought up with ``cluster up``; ``cluster train --hosts 2`` runs the built-in
trainer under torchrun on both workers with the c10d rendezvous on ``trn1``, rank 0 logging to
the control host's MLflow and registering one version; the same job on one host for comparison
(both times are printed: the closing note's "two-host training run against one host"); and a job
whose data is missing fails with the failing hosts named and non-zero.

The data connection is the filesystem store, which across hosts means ``STATE/data`` on every
train worker (a shared mount, or a copy as here); the hosts are podman containers running
systemd (tests/integration/_cluster_hosts.py), the image built once and reused."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_cli
from tests.integration._cluster_hosts import ClusterHosts
from tests.integration._cluster_lab import ClusterLab, cluster_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1500)]

GROUPS = {"ctl": ["control"], "trn1": ["train_workers"], "trn2": ["train_workers"]}
DATASET = "breast_cancer"
JOB = ["--dataset", DATASET, "--model-name", "bc_cluster", "--seed", "5", "--batch-size", "32"]
JOB += ["--epochs", "40", "--patience", "40"]  # every epoch runs: both jobs do the same work


@dataclass
class TrainingLab(ClusterLab):
    def writer(self) -> Any:
        """An MLflow client on the control host, as the writer account."""
        import os

        from mlflow import MlflowClient

        os.environ["MLFLOW_TRACKING_USERNAME"] = "appliance-writer"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = (
            (self.state / "secrets" / "mlflow_writer_password").read_text().strip()
        )
        return MlflowClient(f"http://{self.address('ctl')}:5000")


def _seed_workers(hosts: ClusterHosts, work: Path) -> None:
    """The dataset in STATE/data of each train worker, written by `appliance data seed` here."""
    local = work / "seed"
    answers = work / "seed.yaml"
    answers.write_text(json.dumps({"object_store": {"kind": "filesystem"}}))
    seeded = run_cli("data", "seed", "--dataset", DATASET, answers=answers, state=local, check=False)
    assert seeded.returncode == 0, seeded.stderr
    for name in ("trn1", "trn2"):
        host = hosts.hosts[name]
        copied = subprocess.run(
            ["podman", "cp", str(local / "data" / "datasets"), f"{host.name}:/var/lib/appliance/data/"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert copied.returncode == 0, copied.stderr
        owned = hosts.ssh(name, "chown -R appliance:appliance /var/lib/appliance/data/datasets")
        assert owned.returncode == 0, owned.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrainingLab]:
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "filesystem"},
        "components": dict.fromkeys(
            ("workbench", "controller", "dashboards", "monitoring", "serving"), False
        ),
        "cluster": {"train": {"nproc_per_node": 1, "rdzv_port": 29411}},
    }
    with cluster_lab(tmp_path_factory, "cluster-train", GROUPS, base, TrainingLab) as lab:
        code, _, output = lab.cli("up", timeout=1200)
        assert code == 0, output[-6000:]
        _seed_workers(lab.hosts, lab.work)
        yield lab


def test_up_writes_each_workers_rendezvous_with_the_first_hosting_it(lab: TrainingLab) -> None:
    first = lab.hosts.hosts["trn1"].address
    for name, is_host in (("trn1", "true"), ("trn2", "false")):
        env = lab.hosts.ssh(name, "cat /var/lib/appliance/config/torchrun.env").stdout
        assert f"APPLIANCE_TRAIN_RDZV_ENDPOINT={first}:29411" in env, env
        assert f"APPLIANCE_TRAIN_RDZV_IS_HOST={is_host}" in env and "APPLIANCE_TRAIN_NNODES=2" in env, env
        assert f"APPLIANCE_TRAIN_LOCAL_ADDR={lab.hosts.hosts[name].address}" in env, env
    assert "torchrun.env" not in lab.hosts.ssh("ctl", "ls /var/lib/appliance/config").stdout


def test_a_two_host_job_registers_one_version_and_one_host_runs_the_same_job(lab: TrainingLab) -> None:
    code, out, err = lab.run("cluster", "train", "--hosts", "2", "--json", *JOB)
    assert code == 0, out[-3000:] + err[-3000:]
    two = json.loads(out)
    assert {h: r["state"] for h, r in two["hosts"].items()} == {"trn1": "ok", "trn2": "ok"}, two
    assert two["hosts"]["trn1"]["node"] == 0 and two["nnodes"] == 2
    summary = two["summary"]
    assert summary["version"] == "1" and summary["world_size"] == 2, summary
    # Rank 0 lands on whichever node joins the rendezvous first; the other node trains rank 1.
    tails = [line for host in ("trn1", "trn2") for line in two["hosts"][host]["stdout_tail"]]
    assert any("rank 1/2" in line for line in tails), two["hosts"]

    code, out, err = lab.run("cluster", "train", "--hosts", "1", "--json", *JOB)
    assert code == 0, out[-3000:] + err[-3000:]
    one = json.loads(out)
    assert list(one["hosts"]) == ["trn1"] and one["summary"]["version"] == "2", one
    for label, job in (("two hosts", two), ("one host", one)):
        done = job["summary"]
        print(
            f"\n{label}: job {job['seconds']} s, train step {done['train_seconds']} s "
            f"({done['epochs_run']} epochs), {done['metrics']}"
        )

    client = lab.writer()
    assert sorted(v.version for v in client.search_model_versions("name='bc_cluster'")) == ["1", "2"]
    params = client.get_run(summary["run_id"]).data.params
    assert params["world_size"] == "2" and params["nodes"] == "2" and params["dist_backend"] == "gloo", params
    assert client.get_run(one["summary"]["run_id"]).data.params["world_size"] == "1"
    for metric in ("accuracy", "auc"):
        assert abs(summary["metrics"][metric] - one["summary"]["metrics"][metric]) <= 0.05


def test_a_job_that_cannot_run_names_the_failing_hosts_and_exits_non_zero(lab: TrainingLab) -> None:
    code, out, err = lab.run("cluster", "train", "--hosts", "3", "--dataset", DATASET)
    assert code != 0 and "train_workers group has 2 host(s)" in err and "--hosts 1..2" in err, err
    code, out, err = lab.run("cluster", "train", "--hosts", "2", "--dataset", "no_such_data")
    assert code == 1, out + err
    assert "failed on" in err and "trn1 (node 0): failed" in err, err
    assert "no_such_data" in err and "fix:" in err, err
    # Progress per host as the job goes: each started as its node, then its end.
    assert "torchrun node 0 of 2" in err and "torchrun node 1 of 2" in err, err
