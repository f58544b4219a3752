"""Two hosts (control + serving) from one answers file, through the real CLI, Ansible and SSH: a
first up that loses the serving host midway (reported unreachable; the next up completes it),
both hosts healthy with the serving host reaching MLflow on the control
host, status per host, MLflow's registry in PostgreSQL, one Prometheus scraping both hosts from
targets written from the inventory, a serving host added (``up --limit`` with it), drained and
removed (planned first), monitoring turned off (its units retired on every host), the serving
host moved to another group (its model server drained and retired), and down.
Preflight and plan are test_cluster_lifecycle.py's.

The hosts are podman containers running systemd (tests/integration/_cluster_hosts.py); the image
is built once (about a minute, more on a busy machine) and reused while its recipe is unchanged."""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration._cluster_hosts import _wait_for_ssh
from tests.integration._cluster_lab import ClusterLab, cluster_lab

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(2400)]


GROUPS = {"ctl": ["control"], "srv1": ["serving"], "srv2": ["serving"]}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterLab]:
    # Host names differ from group names (a host named like a group is refused: Ansible would read
    # the group's pattern as the host). srv2 joins and leaves the cluster in the last tests.
    base = {
        "profile": "lab",
        "bind_address": "0.0.0.0",
        "object_store": {"kind": "filesystem"},
        "components": {"workbench": False, "controller": False, "dashboards": False},
        "monitoring": {"scrape_interval": "2s"},  # a host's targets up in seconds, not 15-30
    }
    with cluster_lab(tmp_path_factory, "cluster", GROUPS, base) as lab:
        lab.write_answers(["ctl", "srv1"])
        yield lab


def _units_on(lab: ClusterLab, host: str) -> str:
    done = lab.hosts.ssh(host, "ls /etc/systemd/system/ | grep '^appliance-' || true")
    assert done.returncode == 0, done.stderr
    return done.stdout


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=120, check=False)


def _serving_play_begun(lab: ClusterLab) -> bool:
    """The serving play has started on srv1: its state folder exists (no earlier play touches srv1
    beyond gathering facts). Asked through podman, not SSH, to keep the poll cheap."""
    done = _podman("exec", lab.hosts.hosts["srv1"].name, "test", "-d", "/var/lib/appliance")
    return done.returncode == 0


def test_a_host_stopped_mid_up_is_reported_unreachable_and_the_next_up_completes(lab: ClusterLab) -> None:
    """The first up loses srv1 in the middle: the run ends non-zero with srv1 unreachable in its
    per-host results and ctl not failed; once srv1 is back, the next up completes every play the
    interrupted one left (the serving play runs one host at a time, so the lost host ends the run
    before monitoring and the gateway). (A no-op up is the other labs': CI time.)"""
    srv1 = lab.hosts.hosts["srv1"].name
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(lab.cli, "up")
        deadline = time.monotonic() + 300
        while not _serving_play_begun(lab) and not first.done() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not first.done(), f"up ended before the serving play began: {first.result()[2][-3000:]}"
        assert _serving_play_begun(lab), "the serving play did not begin on srv1 within 300 s"
        stopped = time.monotonic()
        done = _podman("stop", "--time", "5", srv1)
        assert done.returncode == 0, done.stderr
        code, result, output = first.result(timeout=600)
    lab.timings["stop to the end of the interrupted up"] = time.monotonic() - stopped
    assert code == 4, output  # a host could not be reached
    assert result is not None, output  # the per-host results are still printed as data
    assert result["srv1"]["state"] == "unreachable" and result["srv1"]["messages"], result
    assert result["ctl"]["failed"] == 0 and result["ctl"]["unreachable"] == 0, result
    assert "srv1: unreachable" in output, output  # the message names the host
    # The serving play stopped at the lost host: the plays after it never ran on ctl.
    assert "appliance-prometheus.service" not in _units_on(lab, "ctl")

    done = _podman("start", srv1)
    assert done.returncode == 0, done.stderr
    # podman may give the restarted container another address on its network (a host coming back
    # from DHCP with a new lease does the same): its inventory line follows it.
    address = _podman(
        "inspect", "--format", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", srv1
    ).stdout.strip()
    if address != lab.hosts.hosts["srv1"].address:
        print(f"\nsrv1 came back at {address} (was {lab.hosts.hosts['srv1'].address})")
        lab.hosts.hosts["srv1"].address = address
        lab.write_answers(["ctl", "srv1"])
    _wait_for_ssh(lab.hosts, "srv1")
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert all(r["failed"] == 0 and r["unreachable"] == 0 for r in result.values()), result
    assert result["ctl"]["changed"] > 0, result  # the plays the first up never reached
    assert "appliance-prometheus.service" in _units_on(lab, "ctl")


def test_both_hosts_are_healthy_with_the_serving_host_using_the_control_hosts_mlflow(
    lab: ClusterLab,
) -> None:
    assert "appliance-mlflow.service" in _units_on(lab, "ctl")
    assert "appliance-serving.service" in _units_on(lab, "srv1") and "mlflow" not in _units_on(lab, "srv1")
    control = lab.hosts.hosts["ctl"].address
    env = lab.hosts.ssh("srv1", "cat /etc/appliance-serving.env").stdout
    assert f'MLFLOW_TRACKING_URI="http://{control}:5000"' in env
    probe = f"{sys.executable} -c \"import urllib.request as u; print(u.urlopen('http://{control}:5000/health').read())\""
    reached = lab.hosts.ssh("srv1", probe)
    assert reached.returncode == 0 and "OK" in reached.stdout, reached.stderr
    live = lab.hosts.ssh(
        "srv1", "stat -c '%a %U' /etc/appliance-serving.env /var/lib/appliance/secrets/serving_token"
    )
    assert live.stdout.split("\n")[:2] == ["600 root", "600 appliance"], live.stdout
    code, status, output = lab.cli("status")
    assert code == 0, output
    assert status["ctl"]["mlflow"].startswith("active") and status["ctl"]["mlflow-users"].startswith("active")
    assert status["srv1"] == {"serving": "active (running)", "node-exporter": "active (running)"}


def _call(url: str, user: str, secret: Path, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """One HTTP call from this machine with basic auth (the password from a secret file)."""
    password = secret.read_text().strip()
    request = urllib.request.Request(
        url,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return dict(json.loads(answer.read()))


def _mlflow(lab: ClusterLab, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One MLflow REST call to the control host, as the writer account."""
    url = f"http://{lab.hosts.hosts['ctl'].address}:5000/api/2.0/mlflow/{path}"
    return _call(url, "appliance-writer", lab.state / "secrets" / "mlflow_writer_password", body)


def _scraped(lab: ClusterLab) -> dict[tuple[str, str], str]:
    """Prometheus's active targets on the monitoring host: (job, host label) -> health."""
    url = f"http://{lab.hosts.hosts['ctl'].address}:9090/api/v1/targets?state=active"
    found = _call(url, "appliance", lab.state / "secrets" / "prometheus_web_password")
    return {
        (t["labels"]["job"], t["labels"].get("host", "")): t["health"] for t in found["data"]["activeTargets"]
    }


def test_one_prometheus_scrapes_every_host_from_the_targets_written_from_the_inventory(
    lab: ClusterLab,
) -> None:
    wanted = {("node-exporter", "ctl"), ("node-exporter", "srv1"), ("serving", "srv1")}
    deadline = time.monotonic() + 120  # a first scrape within seconds once discovered (2 s interval)
    while True:
        scraped = _scraped(lab)
        if all(scraped.get(target) == "up" for target in wanted) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(scraped.get(target) == "up" for target in wanted), scraped
    assert "prometheus" not in _units_on(lab, "srv1")  # one Prometheus, on the monitoring host
    targets = lab.hosts.ssh("ctl", "cat /var/lib/appliance/config/prometheus/targets/node-exporter.yml")
    assert lab.hosts.hosts["srv1"].address + ":9100" in targets.stdout, targets.stdout


def _psql(lab: ClusterLab, query: str) -> str:
    done = lab.hosts.ssh("ctl", f'runuser -u postgres -- psql -d mlflow -tAc "{query}"')
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_mlflow_keeps_runs_and_registered_models_in_postgresql_on_the_control_host(lab: ClusterLab) -> None:
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
    assert "sqlite" not in lab.hosts.ssh("ctl", "cat /etc/appliance-mlflow.env").stdout
    assert lab.hosts.ssh("ctl", "test -e /var/lib/appliance/mlflow/mlflow.db").returncode == 1
    # PostgreSQL listens on loopback and the cluster address only, and asks MLflow's role for a password.
    listen = _psql(lab, "SHOW listen_addresses")
    assert listen == f"localhost,{lab.hosts.hosts['ctl'].address}", listen
    rules = _psql(lab, "SELECT auth_method FROM pg_hba_file_rules WHERE 'mlflow' = ANY(user_name)")
    assert set(rules.split()) == {"scram-sha-256"}, rules
    mode = lab.hosts.ssh("ctl", "stat -c '%a %U' /var/lib/appliance/secrets/mlflow_db_password").stdout
    assert mode.strip() == "600 appliance"


def test_an_added_serving_host_brought_up_with_limit_also_reaches_prometheus_and_nothing_else(
    lab: ClusterLab,
) -> None:
    """A new line in the answers and ``up --limit srv2``: srv2 is set up, and the limit takes in
    the monitoring host, whose targets must list srv2 (the one change there); srv1 is not
    touched. (A full ``up`` after a new line: test_cluster_serving_gateway's joining host.)"""
    lab.write_answers(["ctl", "srv1", "srv2"])
    code, result, output = lab.cli("up", "--limit", "srv2")
    assert code == 0, output
    assert result["srv2"]["changed"] > 0 and result["srv2"]["failed"] == 0, result
    assert set(result) == {"srv2", "ctl"}, result  # srv1 untouched
    # The monitoring host only learns the new targets; Prometheus reads the file again by itself.
    assert result["ctl"]["changed_tasks"] == ["Write each job's targets from the inventory"], result
    assert "appliance-serving.service" in _units_on(lab, "srv2")
    wanted = {("node-exporter", "srv2"), ("serving", "srv2")}
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        scraped = _scraped(lab)
        if all(scraped.get(target) == "up" for target in wanted):
            break
        time.sleep(1)
    assert all(scraped.get(target) == "up" for target in wanted), scraped


def _refused(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return False
    except OSError:  # refused, or dropped (timed out) while the server stops listening
        return True


def test_a_serving_host_taken_down_stops_taking_requests_before_it_stops_and_nothing_else_changes(
    lab: ClusterLab,
) -> None:
    address = lab.hosts.hosts["srv2"].address
    kept = http.client.HTTPConnection(address, 8080, timeout=10)  # a client in the middle of its work
    kept.request("GET", "/v2/health/live")
    answer = kept.getresponse()
    answer.read()
    assert answer.status == 200
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        down = pool.submit(lab.cli, "down", "--limit", "srv2")
        deadline = time.monotonic() + 120
        while not _refused(address, 8080) and time.monotonic() < deadline and not down.done():
            time.sleep(0.5)
        assert _refused(address, 8080) and not down.done(), "new connections were still taken"
        # Draining: no new connection, the open one still served, the unit still running.
        kept.request("GET", "/v2/health/live")
        answer = kept.getresponse()
        answer.read()
        assert answer.status == 200  # the open connection is still served
        assert lab.hosts.ssh("srv2", "systemctl is-active appliance-serving").stdout.strip() == "active"
        assert not down.done()
        kept.close()  # its last client is done: the host stops
        code, result, output = down.result(timeout=180)
    assert code == 0, output
    assert set(result) == {"srv2"}, result  # nothing else touched
    state = lab.hosts.ssh("srv2", "systemctl is-active appliance-serving").stdout.strip()
    assert state == "inactive", state
    code, status, output = lab.cli("status")
    assert status["srv1"]["serving"].startswith("active") and status["ctl"]["mlflow"].startswith("active")


def test_a_host_removed_from_the_inventory_is_stopped_by_the_next_up_and_leaves_prometheus(
    lab: ClusterLab,
) -> None:
    lab.cli("up", "--limit", "srv2")  # running again, then taken out of the answers
    lab.write_answers(["ctl", "srv1"])
    # Planned first, as a careful person does: the plan names srv2's services stopping, and the
    # up after it still finds srv2 to stop (the plan's own inventory does not hide it).
    code, planned, output = lab.cli("plan")
    assert code == 0, output
    assert {a["verb"] for a in planned["srv2"]["services"]} == {"stop"}, planned["srv2"]
    assert "serving" in {a["service"] for a in planned["srv2"]["services"]}
    assert planned["srv1"]["services"] == [], planned["srv1"]
    code, result, output = lab.cli("up")
    assert code == 0, output
    assert result["srv1"]["changed"] == 0 and result["srv2"]["state"] == "changed", result
    assert result["ctl"]["changed_tasks"] == ["Write each job's targets from the inventory"], result
    state = lab.hosts.ssh("srv2", "systemctl is-active appliance-serving").stdout.strip()
    assert state == "inactive", state
    targets = lab.hosts.ssh("ctl", "cat /var/lib/appliance/config/prometheus/targets/node-exporter.yml")
    assert lab.hosts.hosts["srv2"].address not in targets.stdout


def test_a_component_turned_off_has_its_units_retired_on_every_host_and_its_data_kept(
    lab: ClusterLab,
) -> None:
    components = lab.base["components"] | {"monitoring": False}
    lab.write_answers(["ctl", "srv1"], components=components)
    code, result, output = lab.cli("up")
    assert code == 0, output
    for host in ("ctl", "srv1"):
        assert "Stop and disable each unit this host no longer runs" in result[host]["changed_tasks"], result
        assert "appliance-node-exporter.service" not in _units_on(lab, host)
        state = lab.hosts.ssh(host, "systemctl is-active appliance-node-exporter").stdout.strip()
        assert state in ("inactive", "unknown"), (host, state)
    assert "appliance-prometheus.service" not in _units_on(lab, "ctl")
    assert "appliance-mlflow.service" in _units_on(lab, "ctl")  # the rest keeps running
    assert "appliance-serving.service" in _units_on(lab, "srv1")
    kept = lab.hosts.ssh("ctl", "test -d /var/lib/appliance/prometheus && echo kept").stdout.strip()
    assert kept == "kept"  # the metrics stay, for when monitoring is turned on again


def test_a_host_leaving_the_serving_group_drains_its_model_server_and_the_service_moves(
    lab: ClusterLab,
) -> None:
    """srv1 moved to the storage group (which runs nothing with a filesystem store): the serving
    group is empty, so the model server falls to the control host; srv1's is drained, then
    retired, after ctl's is up."""
    lab.groups["srv1"] = ["storage"]
    lab.write_answers(["ctl", "srv1"], components=lab.base["components"] | {"monitoring": False})
    code, result, output = lab.cli("up")
    assert code == 0, output
    moved = result["srv1"]["changed_tasks"]
    drained = "Stop taking new connections (readiness off, open connections still served)"
    assert drained in moved and "Stop and disable each unit this host no longer runs" in moved, moved
    assert moved.index(drained) < moved.index("Stop and disable each unit this host no longer runs")
    assert "appliance-serving.service" not in _units_on(lab, "srv1")
    assert lab.hosts.ssh("ctl", "systemctl is-active appliance-serving").stdout.strip() == "active"


def test_down_stops_every_unit_and_keeps_the_data(lab: ClusterLab) -> None:
    code, result, output = lab.cli("down")
    assert code == 0 and all(r["failed"] == 0 for r in result.values()), output
    code, status, output = lab.cli("status")
    assert code == 0, output
    assert all(state.startswith("inactive") for units in status.values() for state in units.values()), status
    kept = lab.hosts.ssh(
        "ctl", "systemctl is-active postgresql; ls /var/lib/postgresql/15/main/base | wc -l"
    ).stdout.split()
    assert kept[0] == "inactive" and int(kept[1]) >= 4, kept  # stopped, MLflow's database still there
