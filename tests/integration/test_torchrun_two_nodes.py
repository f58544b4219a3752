"""Two torchrun nodes on this machine over loopback, the c10d rendezvous hosted by the first, each
started the way a train worker starts its part of a job (``python -m appliance.cluster.train``
with its own ``torchrun.env``), against a real ``mlflow server`` and the filesystem data connection
seeded by ``appliance data seed``.

One job registers exactly one version, its run's params show a world of two processes on two
nodes over gloo, and its test metrics are close to one process's on the same data and seed. A
rank that cannot read the dataset stops the job on both nodes (non-zero, its error on its
stderr), and nothing is registered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration._lifecycle_fixtures import BIN, REPO, cli, free_port, start, stop, wait_http

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

DATASET = "wine"
ARGS = ["--dataset", DATASET, "--epochs", "25", "--seed", "11", "--batch-size", "16"]


@dataclass
class Lab:
    root: Path
    state: Path
    mlflow_uri: str

    def env(self, data_root: Path | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "APPLIANCE_", "AWS_"))}
        return env | {
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
            "APPLIANCE_DATA_KIND": "filesystem",
            "APPLIANCE_DATA_ROOT": str(data_root or self.state / "data"),
            "APPLIANCE_STATE_DIR": str(self.state),
            "PYTHONPATH": str(REPO),
            "MPLCONFIGDIR": str(self.root / "mpl"),
        }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("torchrun")
    port = free_port()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db"]
    cmd += ["--serve-artifacts", "--artifacts-destination", str(root / "artifacts")]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server = start(cmd, root / "mlflow.log")
    try:
        uri = f"http://127.0.0.1:{port}"
        wait_http(f"{uri}/health", server, root / "mlflow.log")
        answers = root / "appliance.yaml"
        answers.write_text(json.dumps({"object_store": {"kind": "filesystem"}, "ports": {"mlflow": port}}))
        seeded = cli(answers, root / "state", "data", "seed", "--dataset", DATASET)
        assert seeded.returncode == 0, seeded.stderr
        yield Lab(root, root / "state", uri)
    finally:
        stop(server)


def _env_file(lab: Lab, name: str, port: int, is_host: bool) -> Path:
    path = lab.root / f"{name}.env"
    path.write_text(
        "# as roles/appliance_train_worker writes it\n"
        "APPLIANCE_TRAIN_NNODES=2\nAPPLIANCE_TRAIN_NPROC_PER_NODE=1\n"
        f"APPLIANCE_TRAIN_RDZV_ENDPOINT=127.0.0.1:{port}\n"
        f"APPLIANCE_TRAIN_RDZV_IS_HOST={'true' if is_host else 'false'}\n"
        "APPLIANCE_TRAIN_LOCAL_ADDR=127.0.0.1\n"
    )
    return path


def _two_nodes(
    lab: Lab, model: str, follower_data: Path | None = None
) -> tuple[list[subprocess.CompletedProcess[str]], float]:
    """Node 0 (rendezvous host, rank 0) and node 1 as two processes; both results and the time."""
    port, job = free_port(), f"job-{model}-{time.monotonic_ns()}"
    procs = []
    started = time.monotonic()
    for node in (0, 1):
        argv = [sys.executable, "-m", "appliance.cluster.train", "--job-id", job, "--timeout", "600"]
        argv += ["--env-file", str(_env_file(lab, f"{model}-node{node}", port, node == 0))]
        argv += ["--", *ARGS, "--model-name", model]
        env = lab.env(follower_data if node == 1 else None)
        procs.append(
            subprocess.Popen(
                argv, env=env, cwd=lab.root, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
        )
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=700)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done, time.monotonic() - started


def _last_json(text: str) -> dict[str, Any]:
    line = next(line for line in reversed(text.strip().splitlines()) if line.startswith("{"))
    found: dict[str, Any] = json.loads(line)
    return found


def _client(lab: Lab) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(lab.mlflow_uri)


def test_two_nodes_register_one_version_with_a_world_of_two_and_one_process_metrics(lab: Lab) -> None:
    nodes, seconds = _two_nodes(lab, "wine_ddp")
    # one node's failure shows both nodes' ends: the other's tells what it was doing then
    both = "\n".join(
        f"node {n} (exit {d.returncode}, {seconds:.0f} s):\n{d.stdout[-3000:]}\n{d.stderr[-3000:]}"
        for n, d in enumerate(nodes)
    )
    assert all(done.returncode == 0 for done in nodes), both
    # The c10d rendezvous gives rank 0 to whichever node joins first, not always its host.
    leader, follower = sorted((_last_json(n.stdout) for n in nodes), key=lambda found: "run_id" not in found)
    assert leader["world_size"] == 2 and leader["version"] == "1", leader
    assert follower["rank"] == 1 and follower["dataset_sha256"] == leader["dataset"]["sha256"], follower
    assert follower["epochs_run"] == leader["epochs_run"]  # rank 0's early stopping, followed

    client = _client(lab)
    versions = client.search_model_versions("name='wine_ddp'")
    assert [v.version for v in versions] == ["1"]
    params = client.get_run(leader["run_id"]).data.params
    assert params["world_size"] == "2" and params["nodes"] == "2" and params["nproc_per_node"] == "1"
    assert params["dist_backend"] == "gloo" and params["rank_batch_size"] == "8", params
    # One run only: rank 1 wrote nothing to MLflow.
    experiment = client.get_experiment_by_name("wine_ddp")
    assert len(client.search_runs([experiment.experiment_id])) == 1

    started = time.monotonic()
    one = subprocess.run(
        [sys.executable, "-m", "appliance.workloads.trainer", "run", *ARGS, "--model-name", "wine_one"],
        env=lab.env(),
        cwd=lab.root,
        capture_output=True,
        text=True,
        timeout=600,
    )
    one_seconds = time.monotonic() - started
    assert one.returncode == 0, one.stderr[-3000:]
    single = _last_json(one.stdout)
    print(
        f"\nwine: two torchrun nodes {seconds:.1f} s {leader['metrics']}; "
        f"one process {one_seconds:.1f} s {single['metrics']}"
    )
    assert client.get_run(single["run_id"]).data.params["world_size"] == "1"
    for metric in ("accuracy", "f1"):
        assert abs(leader["metrics"][metric] - single["metrics"][metric]) <= 0.08, (leader, single)
    assert leader["metrics"]["accuracy"] >= 0.85


def test_a_rank_that_cannot_read_the_data_stops_the_job_on_both_nodes(lab: Lab) -> None:
    empty = lab.root / "empty-data"
    empty.mkdir()
    started = time.monotonic()
    nodes, _ = _two_nodes(lab, "wine_broken", follower_data=empty)
    assert time.monotonic() - started < 240
    assert nodes[1].returncode != 0 and "error:" in nodes[1].stderr, nodes[1].stderr[-2000:]
    assert DATASET in nodes[1].stderr.split("error:", 1)[1].splitlines()[0]
    assert nodes[0].returncode != 0, nodes[0].stderr[-2000:]
    assert _client(lab).search_model_versions("name='wine_broken'") == []
