"""Two hosts (control + serving) from one answers file, through the real CLI, Ansible and SSH:
preflight and plan per host, up to healthy with the serving host reaching MLflow on the control
host, a second up that changes nothing, status per host, and down.

The hosts are podman containers running systemd (tests/integration/_cluster_hosts.py); the image
is built once (about a minute, more on a busy machine) and reused while its recipe is unchanged."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import run_cli, use_runtime
from tests.integration._cluster_hosts import ClusterHosts, cluster_hosts

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]


@dataclass
class Lab:
    hosts: ClusterHosts
    answers: Path
    state: Path
    timings: dict[str, float]

    def cli(self, *args: str) -> tuple[int, Any, str]:
        started = time.monotonic()
        done = run_cli(
            "cluster", *args, "--json", answers=self.answers, state=self.state, check=False, timeout=1500
        )
        runs = sum(1 for key in self.timings if key.startswith(args[0]))
        self.timings[f"{args[0]} {runs + 1}"] = time.monotonic() - started
        try:
            data = json.loads(done.stdout)
        except json.JSONDecodeError:
            data = None
        return done.returncode, data, done.stdout + done.stderr


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    use_runtime("podman")
    work = tmp_path_factory.mktemp("cluster")
    with cluster_hosts(("control", "serving"), work) as hosts:
        answers = {
            "profile": "lab",
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "components": {"workbench": False, "monitoring": False, "controller": False, "dashboards": False},
            "cluster": {
                "ssh_key": str(hosts.key),
                "venv": sys.prefix,  # mounted read-only at the same path on every host
                "hosts": [
                    {"name": "control", "address": hosts.hosts["control"].address, "groups": ["control"]},
                    {"name": "serving", "address": hosts.hosts["serving"].address, "groups": ["serving"]},
                ],
            },
        }
        path = work / "appliance.yaml"
        path.write_text(yaml.safe_dump(answers))
        lab = Lab(hosts, path, work / "state", {})
        yield lab
        print(f"\ncluster timings (s): {json.dumps({k: round(v, 1) for k, v in lab.timings.items()})}")


def _units_on(lab: Lab, host: str) -> str:
    done = lab.hosts.ssh(host, "ls /etc/systemd/system/ | grep '^appliance-' || true")
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_preflight_and_plan_report_every_host_and_change_nothing(lab: Lab) -> None:
    code, checked, output = lab.cli("preflight")
    assert code == 0, output
    assert {h: r["state"] for h, r in checked.items()} == {"control": "ok", "serving": "ok"}
    code, planned, output = lab.cli("plan")
    assert code == 0, output
    # Check mode: the unit files would be written (changed) but nothing is, on either host.
    assert planned["control"]["changed"] > 0 and planned["serving"]["changed"] > 0, planned
    assert _units_on(lab, "control") == "" and _units_on(lab, "serving") == ""


def test_up_brings_both_hosts_to_healthy_with_the_serving_host_using_the_control_hosts_mlflow(
    lab: Lab,
) -> None:
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
    assert "appliance-mlflow.service" in _units_on(lab, "control")
    assert "appliance-serving.service" in _units_on(lab, "serving") and "mlflow" not in _units_on(
        lab, "serving"
    )
    control = lab.hosts.hosts["control"].address
    env = lab.hosts.ssh("serving", "cat /etc/appliance-serving.env").stdout
    assert f'MLFLOW_TRACKING_URI="http://{control}:5000"' in env
    probe = f"{sys.executable} -c \"import urllib.request as u; print(u.urlopen('http://{control}:5000/health').read())\""
    reached = lab.hosts.ssh("serving", probe)
    assert reached.returncode == 0 and "OK" in reached.stdout, reached.stderr
    live = lab.hosts.ssh(
        "serving", "stat -c '%a %U' /etc/appliance-serving.env /var/lib/appliance/secrets/serving_token"
    )
    assert live.stdout.split("\n")[:2] == ["600 root", "600 appliance"], live.stdout
    code, status, output = lab.cli("status")
    assert code == 0, output
    assert status["control"]["mlflow"].startswith("active") and status["control"]["mlflow-users"].startswith(
        "active"
    )
    assert status["serving"] == {"serving": "active (running)"}


def test_a_second_up_changes_nothing_on_any_host(lab: Lab) -> None:
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert {h: r["changed"] for h, r in result.items()} == {"control": 0, "serving": 0}


def _mlflow(lab: Lab, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One MLflow REST call from this machine to the control host, as the writer account."""
    import base64
    import urllib.request

    password = (lab.state / "secrets" / "mlflow_writer_password").read_text().strip()
    request = urllib.request.Request(
        f"http://{lab.hosts.hosts['control'].address}:5000/api/2.0/mlflow/{path}",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"appliance-writer:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return dict(json.loads(answer.read()))


def _psql(lab: Lab, query: str) -> str:
    done = lab.hosts.ssh("control", f'runuser -u postgres -- psql -d mlflow -tAc "{query}"')
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_mlflow_keeps_runs_and_registered_models_in_postgresql_on_the_control_host(lab: Lab) -> None:
    experiment = _mlflow(lab, "experiments/create", {"name": "cluster-postgresql"})["experiment_id"]
    run = _mlflow(lab, "runs/create", {"experiment_id": experiment})["run"]["info"]["run_id"]
    _mlflow(lab, "runs/log-metric", {"run_id": run, "key": "auc", "value": 0.93, "timestamp": 0, "step": 0})
    _mlflow(lab, "registered-models/create", {"name": "cluster_pg_model"})
    version = _mlflow(
        lab,
        "model-versions/create",
        {"name": "cluster_pg_model", "source": f"runs:/{run}/model", "run_id": run},
    )["model_version"]["version"]
    # The rows are in PostgreSQL's tables (no SQLite file on the host), written through MLflow.
    assert _psql(lab, f"SELECT value FROM metrics WHERE run_uuid = '{run}' AND key = 'auc'") == "0.93"
    assert _psql(lab, "SELECT version FROM model_versions WHERE name = 'cluster_pg_model'") == str(version)
    assert "sqlite" not in lab.hosts.ssh("control", "cat /etc/appliance-mlflow.env").stdout
    assert lab.hosts.ssh("control", "test -e /var/lib/appliance/mlflow/mlflow.db").returncode == 1
    # PostgreSQL listens on loopback and the cluster address only, and asks MLflow's role for a password.
    listen = _psql(lab, "SHOW listen_addresses")
    assert listen == f"localhost,{lab.hosts.hosts['control'].address}", listen
    rules = _psql(lab, "SELECT auth_method FROM pg_hba_file_rules WHERE 'mlflow' = ANY(user_name)")
    assert set(rules.split()) == {"scram-sha-256"}, rules
    mode = lab.hosts.ssh("control", "stat -c '%a %U' /var/lib/appliance/secrets/mlflow_db_password").stdout
    assert mode.strip() == "600 appliance"


def test_down_stops_every_unit_and_keeps_the_data(lab: Lab) -> None:
    code, result, output = lab.cli("down")
    assert code == 0 and all(r["failed"] == 0 for r in result.values()), output
    code, status, output = lab.cli("status")
    assert code == 0, output
    assert all(state.startswith("inactive") for units in status.values() for state in units.values()), status
    kept = lab.hosts.ssh(
        "control", "systemctl is-active postgresql; ls /var/lib/postgresql/15/main/base | wc -l"
    ).stdout.split()
    assert kept[0] == "inactive" and int(kept[1]) >= 4, kept  # stopped, MLflow's database still there
