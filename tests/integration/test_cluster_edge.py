"""An edge host of a cluster follows the control host's champion, keeps serving with its link cut,
and catches up when it returns.

Two hosts (podman containers running systemd, tests/integration/_cluster_hosts.py): ``ctl``
(control and monitoring: MLflow on PostgreSQL, Prometheus) and ``edge1`` (the edge group: the
model server alone), brought up by ``appliance cluster up``. Two models of different shapes are
registered and promoted on the control host's MLflow; the edge serves both. Its network link is
then cut (``podman network disconnect``): it keeps answering, a new champion promoted meanwhile
does not reach it, and a restart of its model server loads the cached versions. Reconnected, it
serves the new champion, and the control host's Prometheus scrapes its model server again. The
edge reads the registry through the TLS gateway with an account of its own, which goes when its
line leaves the inventory.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from appliance.mlflow_auth import READER_USER, edge_account, edge_secret
from tests.conftest import run_cli, use_runtime
from tests.integration._cluster_hosts import ClusterHosts, cluster_hosts
from tests.integration._serving_fixtures import write_mlp
from tests.integration.test_edge_follows_registry import LIN_X, MLP_X, expected, register, write_linear

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]

STATE = "/var/lib/appliance"


@dataclass
class Edge:
    hosts: ClusterHosts
    state: Path
    work: Path
    answers: dict[str, Any]

    @property
    def mlflow(self) -> str:
        return f"http://{self.hosts.hosts['ctl'].address}:5000"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    use_runtime("podman")
    work = tmp_path_factory.mktemp("cluster-edge")
    with cluster_hosts(("ctl", "edge1"), work) as hosts:
        answers = {
            "profile": "lab",
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "components": {"workbench": False, "controller": False, "dashboards": False},
            "tls": {"enabled": True},  # the edge reads the registry through the gateway
            "models": [{"name": "fraud"}, {"name": "churn"}],
            "serving": {"poll_seconds": 1},
            "monitoring": {"scrape_interval": "2s"},  # the edge's target up again in seconds
            "cluster": {
                "ssh_key": str(hosts.key),
                "venv": sys.prefix,
                "hosts": [
                    {
                        "name": "ctl",
                        "address": hosts.hosts["ctl"].address,
                        "groups": ["control", "monitoring"],
                    },
                    {"name": "edge1", "address": hosts.hosts["edge1"].address, "groups": ["edge"]},
                ],
            },
        }
        (work / "appliance.yaml").write_text(yaml.safe_dump(answers))
        started = time.monotonic()
        done = run_cli(
            "cluster",
            "up",
            "--json",
            answers=work / "appliance.yaml",
            state=work / "state",
            check=False,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        print(f"\ncluster up (control + edge): {time.monotonic() - started:.0f} s")
        yield Edge(hosts, work / "state", work, answers)


def _writer(lab: Edge, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", lab.mlflow)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "appliance-writer")
    monkeypatch.setenv(
        "MLFLOW_TRACKING_PASSWORD", (lab.state / "secrets" / "mlflow_writer_password").read_text().strip()
    )


def _register(folder: Path, name: str) -> str:
    """A new version of ``name``, made the champion."""
    from mlflow import MlflowClient

    version = register(folder, name, experiment="cluster-edge")
    MlflowClient().set_registered_model_alias(name, "champion", version)
    return version


def _infer(lab: Edge, model: str) -> tuple[str, np.ndarray] | None:
    """One inference on the edge host, from inside it (a cut link cuts this machine off too)."""
    x, input_name = (MLP_X, "input") if model == "fraud" else (LIN_X, "x")
    token = (lab.state / "secrets" / "serving_token").read_text().strip()
    body = {
        "inputs": [
            {"name": input_name, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}
        ]
    }
    script = (
        "import json,sys,urllib.request as u\n"
        f"r=u.Request('http://127.0.0.1:8080/v2/models/{model}/infer',data=sys.stdin.buffer.read(),"
        f"headers={{'Authorization':'Bearer {token}','Content-Type':'application/json'}})\n"
        "print(u.urlopen(r,timeout=10).read().decode())"
    )
    done = subprocess.run(
        ["podman", "exec", "-i", lab.hosts.hosts["edge1"].name, "python3", "-c", script],
        input=json.dumps(body), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return None
    out = json.loads(done.stdout)
    return out["model_version"], np.array(out["outputs"][0]["data"]).reshape(x.shape[0], -1)


def _serves(lab: Edge, model: str, version: str, folder: Path, timeout: float = 90) -> None:
    x, input_name = (MLP_X, "input") if model == "fraud" else (LIN_X, "x")
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = _infer(lab, model)
        if got is not None and got[0] == version:
            np.testing.assert_allclose(got[1], expected(folder, input_name, x), rtol=1e-5, atol=1e-6)
            return
        time.sleep(1)
    journal = lab.hosts.ssh("edge1", "journalctl -u appliance-serving --no-pager | tail -30").stdout
    raise AssertionError(f"edge1 does not serve {model} version {version} (last answer {got})\n{journal}")


def _link(lab: Edge, up: bool) -> None:
    host = lab.hosts.hosts["edge1"]
    if up:  # back at its inventory address, where the control host's Prometheus scrapes it
        cmd = ["podman", "network", "connect", "--ip", host.address, lab.hosts.network, host.name]
    else:
        cmd = ["podman", "network", "disconnect", lab.hosts.network, host.name]
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


def test_the_edge_host_follows_the_champion_through_an_outage(
    edge: Edge, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _writer(edge, monkeypatch)
    folders = {
        ("fraud", 1): write_mlp(tmp_path / "fraud1", seed=3),
        ("fraud", 2): write_mlp(tmp_path / "fraud2", seed=4),
        ("churn", 1): write_linear(tmp_path / "churn1", seed=5),
        ("churn", 2): write_linear(tmp_path / "churn2", seed=6),
    }
    v = {
        ("fraud", 1): _register(folders["fraud", 1], "fraud"),
        ("churn", 1): _register(folders["churn", 1], "churn"),
    }
    _serves(edge, "fraud", v["fraud", 1], folders["fraud", 1])
    _serves(edge, "churn", v["churn", 1], folders["churn", 1])
    # the edge reads with its own read-only account: not the writer's, not the other model servers'
    env = edge.hosts.ssh("edge1", "cat /etc/appliance-serving.env").stdout
    assert f'MLFLOW_TRACKING_USERNAME="{edge_account("edge1")}"' in env and "writer" not in env
    assert (edge.state / "secrets" / edge_secret("edge1")).read_text().strip() in env
    assert (edge.state / "secrets" / "mlflow_reader_password").read_text().strip() not in env
    gateway = f"https://{edge.hosts.hosts['ctl'].address}:5443"  # MLflow through the TLS gateway
    assert f'MLFLOW_TRACKING_URI="{gateway}"' in env, env

    _link(edge, up=False)
    try:
        v["fraud", 2] = _register(folders["fraud", 2], "fraud")  # promoted while the edge is cut off
        time.sleep(3)  # a few polls
        _serves(edge, "fraud", v["fraud", 1], folders["fraud", 1], timeout=10)
        restart = subprocess.run(
            ["podman", "exec", edge.hosts.hosts["edge1"].name, "systemctl", "restart", "appliance-serving"],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert restart.returncode == 0, restart.stderr
        _serves(edge, "fraud", v["fraud", 1], folders["fraud", 1], timeout=60)  # from its cache
        _serves(edge, "churn", v["churn", 1], folders["churn", 1], timeout=10)
        pointer = f"{STATE}/serving/cache/fraud/current.json"
        cached = subprocess.run(
            ["podman", "exec", edge.hosts.hosts["edge1"].name, "cat", pointer],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert json.loads(cached.stdout)["version"] == v["fraud", 1]
    finally:
        _link(edge, up=True)

    _serves(edge, "fraud", v["fraud", 2], folders["fraud", 2])
    v["churn", 2] = _register(folders["churn", 2], "churn")
    _serves(edge, "churn", v["churn", 2], folders["churn", 2])
    assert _edge_scraped(edge), "the control host's Prometheus does not scrape edge1's model server"


def _edge_scraped(lab: Edge, timeout: float = 90) -> bool:
    """The control host's Prometheus has edge1's model server as a healthy ``serving`` target."""
    url = f"http://{lab.hosts.hosts['ctl'].address}:9090/api/v1/targets?state=active"
    password = (lab.state / "secrets" / "prometheus_web_password").read_text().strip()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = httpx.get(url, auth=("appliance", password), timeout=10).json()
        for target in found["data"]["activeTargets"]:
            labels = target["labels"]
            if labels.get("job") == "serving" and labels.get("host") == "edge1" and target["health"] == "up":
                return True
        time.sleep(1)
    return False


def _logs_in(lab: Edge, user: str, password: str) -> int:
    answer = httpx.get(
        f"{lab.mlflow}/api/2.0/mlflow/users/current", auth=(user, password), timeout=30, trust_env=False
    )
    return answer.status_code


def test_an_edge_host_taken_out_of_the_inventory_loses_its_account_and_no_one_else_does(edge: Edge) -> None:
    password = (edge.state / "secrets" / edge_secret("edge1")).read_text().strip()
    reader = (edge.state / "secrets" / "mlflow_reader_password").read_text().strip()
    assert _logs_in(edge, edge_account("edge1"), password) == 200
    cluster = edge.answers["cluster"]
    answers = edge.answers | {
        "cluster": cluster | {"hosts": [h for h in cluster["hosts"] if h["name"] != "edge1"]}
    }
    (edge.work / "appliance.yaml").write_text(yaml.safe_dump(answers))
    done = run_cli(
        "cluster",
        "up",
        "--json",
        answers=edge.work / "appliance.yaml",
        state=edge.state,
        check=False,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _logs_in(edge, edge_account("edge1"), password) == 401
    assert _logs_in(edge, READER_USER, reader) == 200
    # its password went with its account: a host given the name again gets a new one
    assert not (edge.state / "secrets" / edge_secret("edge1")).exists()
    assert (edge.state / "secrets" / "mlflow_reader_password").read_text().strip() == reader
    stopped = edge.hosts.ssh("edge1", "systemctl is-active appliance-serving.service").stdout.strip()
    assert stopped != "active", stopped  # the host leaving was stopped, drained first
