"""The cluster section as groups, placement and per-host units (no hosts needed)."""

from __future__ import annotations

import re
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.answers import Answers
from appliance.cluster.inventory import Inventory
from appliance.cluster.run import write_inventory
from appliance.cluster.units import render_hosts
from appliance.errors import ApplianceError

HOSTS = [
    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
    {"name": "srv1", "address": "10.0.0.2", "groups": ["serving"]},
    {"name": "srv2", "address": "10.0.0.3", "groups": ["serving"]},
]


def answers(hosts: list[dict[str, Any]] = HOSTS, **extra: Any) -> Answers:
    return Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "components": {"workbench": False, "monitoring": False, "controller": False, "dashboards": False},
            "cluster": {"hosts": hosts, "venv": "/opt/appliance/venv"},
        }
        | extra
    )


def test_every_group_nobody_is_in_falls_to_the_first_control_host() -> None:
    cluster = answers().cluster
    assert cluster is not None
    inventory = Inventory(cluster)
    groups = inventory.groups()
    assert groups["control"] == ["ctl1"] and groups["serving"] == ["srv1", "srv2"]
    assert groups["monitoring"] == groups["storage"] == groups["train_workers"] == ["ctl1"]
    assert groups["edge"] == []  # edge boxes are only the hosts named so
    assert inventory.hosts_of("serving") == ["srv1", "srv2"] and inventory.hosts_of("mlflow") == ["ctl1"]
    alone = answers([{"name": "box", "address": "192.168.1.9"}]).cluster
    assert alone is not None
    one = Inventory(alone).groups()  # one host is the all-in-one case of the same plan
    assert all(one[g] == ["box"] for g in one if g != "edge")
    with pytest.raises(ApplianceError, match="srv9"):
        inventory.check_limit(["srv9"])


def test_a_host_named_like_a_group_is_refused_with_the_fix() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'serving' is also a group name") as err:
        answers([{"name": "serving", "address": "10.0.0.2", "groups": ["serving"]}])
    assert "serving1" in str(err.value)


def test_each_host_gets_its_own_units_seeing_the_others_at_their_addresses(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    assert [u["name"] for u in per_host["ctl1"]["appliance_mlflow_units"]] == ["mlflow", "mlflow-users"]
    assert "appliance_serving_units" not in per_host["ctl1"]
    for host in ("srv1", "srv2"):
        (serving,) = per_host[host]["appliance_serving_units"]
        assert serving["env"]["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"  # the control host's MLflow
        assert serving["health"]["url"].startswith("http://127.0.0.1:")  # its own server, from itself
        assert serving["after"] == []  # MLflow is on another host: no systemd ordering across hosts
        assert all(a.startswith("/opt/appliance/venv/") for a in serving["command"][:1])
        # only the secrets its units name, generated once on this machine and shared
        assert set(per_host[host]["appliance_common_secrets"]) == {"serving_token", "serving_admin_token"}
    assert per_host["srv1"]["appliance_common_secrets"] == per_host["srv2"]["appliance_common_secrets"]
    mlflow = per_host["ctl1"]["appliance_mlflow_units"][0]
    assert "0.0.0.0" in mlflow["command"] and mlflow["health"]["url"] == "http://127.0.0.1:5000/health"
    assert per_host["ctl1"]["appliance_mlflow_units"][1]["after"] == ["mlflow"]
    assert sys.prefix + "/" not in repr(per_host) or sys.prefix == "/opt/appliance/venv"


def test_mlflow_on_postgresql_takes_its_uri_from_the_0600_environment_not_the_command_line(
    tmp_path: Path,
) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    mlflow = per_host["ctl1"]["appliance_mlflow_units"][0]
    password = (tmp_path / "secrets" / "mlflow_db_password").read_text().strip()
    assert (
        len(password) >= 16
        and stat.S_IMODE((tmp_path / "secrets" / "mlflow_db_password").stat().st_mode) == 0o600
    )
    assert "--backend-store-uri" not in mlflow["command"] and password not in repr(mlflow["command"])
    assert (
        mlflow["env"]["MLFLOW_BACKEND_STORE_URI"]
        == f"postgresql+psycopg://mlflow:{password}@127.0.0.1:5432/mlflow"
    )
    assert per_host["ctl1"]["appliance_mlflow_backend"] == "postgresql"
    assert per_host["ctl1"]["appliance_common_secrets"]["mlflow_db_password"] == password
    assert "mlflow_db_password" not in per_host["srv1"]["appliance_common_secrets"]  # only where MLflow runs
    sqlite = render_hosts(answers(cluster={"hosts": HOSTS, "mlflow_backend": "sqlite"}), tmp_path / "s2")
    kept = sqlite["ctl1"]["appliance_mlflow_units"][0]
    assert (
        "MLFLOW_BACKEND_STORE_URI" not in kept["env"]
        and "mlflow_db_password" not in sqlite["ctl1"]["appliance_common_secrets"]
    )
    assert kept["command"][kept["command"].index("--backend-store-uri") + 1].startswith("sqlite:///")


def test_the_inventory_holds_secrets_so_it_is_0600_with_the_groups_and_ssh_settings(tmp_path: Path) -> None:
    chosen = answers()
    per_host = render_hosts(chosen, tmp_path / "secrets")
    path = write_inventory(chosen, per_host, tmp_path / "cluster")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data = yaml.safe_load(path.read_text())["all"]
    assert (
        data["hosts"]["srv2"]["ansible_host"] == "10.0.0.3"
        and data["hosts"]["srv2"]["ansible_user"] == "root"
    )
    assert set(data["children"]["serving"]["hosts"]) == {"srv1", "srv2"}
    assert set(data["children"]["gateway"]["hosts"]) == {"ctl1"}


def test_rendered_text_that_looks_like_jinja_reaches_ansible_marked_unsafe(tmp_path: Path) -> None:
    chosen = answers(components={"workbench": False, "controller": False, "dashboards": False})
    path = write_inventory(chosen, render_hosts(chosen, tmp_path / "secrets"), tmp_path / "cluster")
    text = path.read_text()
    assert "!unsafe" in text  # Prometheus's alert rules hold {{ $labels... }} of their own

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!unsafe", lambda loader, node: ("unsafe", loader.construct_scalar(node)))
    hosts = yaml.load(text, Loader=Loader)["all"]["hosts"]
    (prometheus,) = [u for u in hosts["ctl1"]["appliance_monitoring_units"] if u["name"] == "prometheus"]
    rules = {f["key"]: f["value"] for f in prometheus["files"]}["alert_rules.yml"]
    assert rules[0] == "unsafe" and "{{" in rules[1]
    assert isinstance(hosts["ctl1"]["ansible_host"], str)  # plain values stay plain
    for host in ("ctl1", "srv1", "srv2"):  # every host's node exporter, checked on that host
        (exporter,) = [u for u in hosts[host]["appliance_monitoring_units"] if u["name"] == "node-exporter"]
        assert exporter["health"]["url"] == "http://127.0.0.1:9100/metrics", (host, exporter["health"])


def test_a_cluster_on_loopback_fails_preflight_before_ansible_runs(tmp_path: Path) -> None:
    from appliance.cluster.engine import run
    from appliance.context import AppContext
    from appliance.errors import PreflightError

    ctx = AppContext(answers(bind_address="127.0.0.1"), tmp_path / "state")
    with pytest.raises(PreflightError, match=re.escape("bind_address: 0.0.0.0")):
        run(ctx, "preflight")
    assert not (tmp_path / "state" / "cluster").exists()


@pytest.mark.parametrize(
    ("replicas", "hosts", "refused"),
    [
        ({"min_replicas": 1, "max_replicas": 3}, HOSTS, True),  # two serving hosts, one autoscaler
        ({"min_replicas": 2, "max_replicas": 2}, HOSTS, False),  # a fixed count on each host
        ({"min_replicas": 1, "max_replicas": 3}, HOSTS[:2], False),  # one serving host: it scales
        ({"min_replicas": 1, "max_replicas": 3}, HOSTS[:1], False),  # the control host serves alone
        (  # an edge host serves too: two serving hosts
            {"min_replicas": 1, "max_replicas": 3},
            [*HOSTS[:2], {"name": "edge1", "address": "10.0.0.9", "groups": ["edge"]}],
            True,
        ),
    ],
)
def test_autoscaled_replicas_on_several_serving_hosts_fail_preflight_with_the_fix(
    tmp_path: Path, replicas: dict[str, int], hosts: list[dict[str, Any]], refused: bool
) -> None:
    from appliance.cluster.engine import local_checks
    from appliance.context import AppContext

    ctx = AppContext(answers(hosts, serving=replicas), tmp_path / "state")
    problems = [
        p for p in local_checks(ctx, render_hosts(ctx.answers, tmp_path / "s")) if p[0] == "serving replicas"
    ]
    assert bool(problems) is refused, problems
    if refused:
        assert "2 serving hosts" in problems[0][1] and "serving.min_replicas to 3" in problems[0][2]


def test_autoscaling_knobs_without_a_model_server_are_not_a_preflight_problem(tmp_path: Path) -> None:
    from appliance.cluster.engine import local_checks
    from appliance.context import AppContext

    off = dict.fromkeys(("workbench", "monitoring", "controller", "dashboards", "serving"), False)
    ctx = AppContext(
        answers(serving={"min_replicas": 1, "max_replicas": 3}, components=off), tmp_path / "state"
    )
    problems = local_checks(ctx, render_hosts(ctx.answers, tmp_path / "s"))
    assert [p for p in problems if p[0] == "serving replicas"] == [], problems


def test_without_a_cluster_section_the_commands_say_what_to_add(tmp_path: Path) -> None:
    from appliance.cluster.engine import run
    from appliance.context import AppContext

    with pytest.raises(ApplianceError, match="no cluster section") as err:
        run(AppContext(Answers(), tmp_path / "state"), "up")
    assert "cluster.hosts" in str(err.value)


def test_init_cluster_writes_an_answers_file_with_this_host_as_the_control_host(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.answers_file import load_answers
    from appliance.cli import cli

    out = tmp_path / "appliance.yaml"
    done = CliRunner().invoke(cli, ["init", "--cluster", "-o", str(out)])
    assert done.exit_code == 0 and "cluster up" in done.output, done.output
    written = load_answers(out)
    assert written.bind_address == "0.0.0.0" and written.cluster is not None
    (host,) = written.cluster.hosts
    assert host.groups == ["control"] and host.address and host.address != "0.0.0.0"


def test_a_host_new_to_the_cluster_brings_the_hosts_that_list_it_into_a_limit() -> None:
    hosts = [
        {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
        {"name": "mon1", "address": "10.0.0.5", "groups": ["monitoring", "gateway"]},
        {"name": "srv1", "address": "10.0.0.2", "groups": ["serving"]},
        {"name": "trn1", "address": "10.0.0.3", "groups": ["train_workers"]},
        {"name": "edg1", "address": "10.0.0.4", "groups": ["edge"]},
    ]
    cluster = answers(hosts).cluster
    assert cluster is not None
    inventory = Inventory(cluster)
    assert inventory.knowing([]) == []
    assert inventory.knowing(["trn1"]) == ["mon1"]  # scraped, not behind the gateway
    assert inventory.knowing(["srv1"]) == ["mon1"]  # its gateway is the same host
    assert inventory.knowing(["edg1"]) == ["mon1", "ctl1"]  # and its MLflow account
    assert inventory.knowing(["mon1"]) == []  # a host never waits on itself


def test_every_host_knows_how_a_model_server_is_drained_so_one_leaving_the_serving_group_is(
    tmp_path: Path,
) -> None:
    per_host = render_hosts(answers(components={"workbench": False, "controller": False}), tmp_path / "s")
    for host in ("ctl1", "srv1", "srv2"):
        assert per_host[host]["appliance_serving_drain_ports"] == [8080, 8081], host
        assert per_host[host]["appliance_serving_drain_signal"] == "SIGUSR1"
    assert "serving" not in per_host["ctl1"]["appliance_common_host_unit_names"]
    assert "serving" in per_host["srv1"]["appliance_common_host_unit_names"]
    assert "appliance_serving_replicas" not in per_host["ctl1"]
