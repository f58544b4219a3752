"""The gateway in a cluster: every serving host behind its model-server upstreams, with passive
failover, in members files of the gateway's unit (reloaded, never restarted, when they change) and
the drain role's copies without the hosts leaving; and what the serving role rolls hosts over
with. The rendered nginx.conf and members files are checked by the real nginx (``nginx -t``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from appliance.answers import Answers
from appliance.cluster.unit_records import reloaded_record
from appliance.cluster.units import render_hosts
from appliance.gateway import CONNECT_TIMEOUT_S, FAIL_TIMEOUT_S
from tests.unit.test_cluster_roles import _env, _tool, role_filters

ROLE = Path(__file__).resolve().parents[2] / "roles" / "appliance_gateway"
STATE = "/var/lib/appliance"
HOSTS = [
    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
    {"name": "srv1", "address": "10.0.0.2", "groups": ["serving"]},
    {"name": "srv2", "address": "10.0.0.3", "groups": ["serving"]},
    {"name": "edge1", "address": "10.0.0.9", "groups": ["edge"]},
]
MODELS = [{"name": "iris", "uri": "/srv/models/iris.onnx"}, {"name": "wine", "uri": "/srv/models/wine.onnx"}]


def answers(hosts: list[dict[str, Any]] = HOSTS, **extra: Any) -> Answers:
    return Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "object_store": {"kind": "filesystem"},
            "tls": {"enabled": True},
            "models": MODELS,
            "components": {"workbench": False, "monitoring": False, "controller": False, "dashboards": False},
            "cluster": {"hosts": hosts, "venv": "/opt/appliance/venv"},
        }
        | extra
    )


def unit(host_vars: dict[str, Any], role: str, name: str) -> dict[str, Any]:
    return next(u for u in host_vars[f"appliance_{role}_units"] if u["name"] == name)


DRAIN_FILTERS = role_filters("appliance_serving_drain", "appliance_gateway_leave")
leave: Callable[..., dict[str, Any]] = DRAIN_FILTERS["appliance_gateway_leave"]


def members(host_vars: dict[str, Any], upstream: str, out: list[str] | None = None) -> str:
    """The members file: the gateway unit's own (what ``up`` writes), or with the hosts in ``out``
    taken out, as the drain role writes it."""
    if out:
        units, serving = host_vars["appliance_gateway_units"], host_vars["appliance_gateway_serving_members"]
        given = leave(units, serving, out)
        return str(given["files"][f"{upstream}.members"])
    files = unit(host_vars, "gateway", "gateway")["files"]
    return str(next(f["value"] for f in files if f["key"] == f"{upstream}.members"))


def test_the_gateway_lists_every_serving_host_not_edge_boxes_with_passive_failover(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    gateways = [h for h, v in per_host.items() if "appliance_gateway_units" in v]
    assert gateways == ["ctl1"]  # no gateway group: the first control host
    ctl = per_host["ctl1"]
    assert [m["host"] for m in ctl["appliance_gateway_serving_members"]] == ["srv1", "srv2"]
    rest = members(ctl, "serving_rest").splitlines()
    assert f"server 10.0.0.2:8080 max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;" in rest
    assert f"server 10.0.0.3:8080 max_fails=1 fail_timeout={FAIL_TIMEOUT_S}s;" in rest
    assert "server 10.0.0.3:8080 backup max_fails=0;" in rest
    assert not any("10.0.0.9" in line or "10.0.0.1:" in line for line in rest)  # no edge box, no control
    grpc = members(ctl, "serving_grpc")
    assert "server 10.0.0.2:8081 max_fails=1" in grpc and ":8080" not in grpc
    # A host taken out is gone from both kinds of line; nobody left: one server marked down.
    assert "10.0.0.2" not in members(ctl, "serving_rest", ["srv1"])
    assert "server 127.0.0.1:1 down;" in members(ctl, "serving_rest", ["srv1", "srv2"])

    conf = next(f["value"] for f in unit(ctl, "gateway", "gateway")["files"] if f["key"] == "nginx.conf")
    assert f"include {STATE}/config/gateway/serving_rest.members;" in conf
    assert f"include {STATE}/config/gateway/serving_grpc.members;" in conf
    assert "proxy_next_upstream error timeout non_idempotent;" in conf
    assert "grpc_next_upstream error timeout non_idempotent;" in conf
    assert f"proxy_connect_timeout {CONNECT_TIMEOUT_S}s;" in conf
    # the model server's API holds each body (up to its limit) to send it to another host again
    serving = next(b for b in conf.split("\n    server {") if "proxy_pass http://serving_rest;" in b)
    assert "client_max_body_size 0;" not in serving
    # The certificate and key are the host's own copies, shipped 0600 with its secrets.
    assert f"ssl_certificate {STATE}/secrets/gateway_tls_cert;" in conf
    assert f"ssl_certificate_key {STATE}/secrets/gateway_tls_key;" in conf
    assert {"gateway_tls_cert", "gateway_tls_key", "tls_ca_cert"} <= set(ctl["appliance_common_secrets"])
    assert "gateway_tls_key" not in per_host["srv1"]["appliance_common_secrets"]
    health = unit(ctl, "gateway", "gateway")["health"]
    assert health["url"].startswith("https://127.0.0.1:") and health["ca"] == f"{STATE}/secrets/tls_ca_cert"


def test_the_members_files_are_reloaded_not_restarted_and_the_drain_records_what_up_then_gives(
    tmp_path: Path,
) -> None:
    """The members files are the gateway unit's reload files: a serving host joining or leaving
    changes only its reload record. The drain's files and record for srv2 leaving are byte for
    byte what the next ``up`` gives the gateway once srv2 is out of the answers, so that ``up``
    neither writes nor reloads again."""
    ctl = render_hosts(answers(), tmp_path / "secrets")["ctl1"]
    gateway = unit(ctl, "gateway", "gateway")
    kinds = {f["key"]: bool(f.get("reload")) for f in gateway["files"]}
    assert kinds == {"nginx.conf": False, "serving_rest.members": True, "serving_grpc.members": True}
    left = leave(ctl["appliance_gateway_units"], ctl["appliance_gateway_serving_members"], ["srv2", "edge1"])
    without_srv2 = render_hosts(answers([h for h in HOSTS if h["name"] != "srv2"]), tmp_path / "secrets")
    after = unit(without_srv2["ctl1"], "gateway", "gateway")
    assert left["files"] == {f["key"]: f["value"] for f in after["files"] if f.get("reload")}
    assert left["record"] == reloaded_record(after) != reloaded_record(gateway)
    assert "10.0.0.3" not in left["files"]["serving_rest.members"]
    # a gateway whose unit, from a release before, lacks the members files: no record to write
    older = [dict(gateway) | {"files": [f for f in gateway["files"] if not f.get("reload")]}]
    assert leave(older, ctl["appliance_gateway_serving_members"], ["srv2"])["record"] is None


def test_a_gateway_host_that_also_serves_reaches_itself_on_loopback(tmp_path: Path) -> None:
    hosts = [
        {"name": "ctl1", "address": "10.0.0.1", "groups": ["control", "serving"]},
        {"name": "srv1", "address": "10.0.0.2", "groups": ["serving"]},
    ]
    ctl = render_hosts(answers(hosts), tmp_path / "secrets")["ctl1"]
    rest = members(ctl, "serving_rest")
    assert "server 127.0.0.1:8080 max_fails=1" in rest and "server 10.0.0.2:8080 max_fails=1" in rest


def test_the_certificate_covers_the_gateway_hosts_address(tmp_path: Path) -> None:
    from cryptography import x509

    hosts = [*HOSTS[:3], {"name": "gw1", "address": "10.0.0.5", "groups": ["gateway"]}]
    per_host = render_hosts(answers(hosts), tmp_path / "secrets")
    assert [h for h, v in per_host.items() if "appliance_gateway_units" in v] == ["gw1"]
    cert = x509.load_pem_x509_certificate((tmp_path / "secrets" / "gateway_tls_cert").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "10.0.0.5" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    again = render_hosts(answers(hosts), tmp_path / "secrets")  # every host's render: one certificate
    assert again["gw1"]["appliance_common_secrets"] == per_host["gw1"]["appliance_common_secrets"]


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None, reason="nginx not installed")
def test_nginx_accepts_the_rendered_config_and_members_files(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    ctl = per_host["ctl1"]
    state = tmp_path / "host"
    (state / "config" / "gateway").mkdir(parents=True)
    (state / "gateway").mkdir()
    (state / "secrets").mkdir()
    for name, value in ctl["appliance_common_secrets"].items():
        (state / "secrets" / name).write_text(value)
    conf = next(f["value"] for f in unit(ctl, "gateway", "gateway")["files"] if f["key"] == "nginx.conf")
    (state / "config" / "gateway" / "nginx.conf").write_text(conf.replace(STATE, str(state)))
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    assert nginx is not None
    for out in ([], ["srv1"], ["srv1", "srv2"]):
        for upstream in ("serving_rest", "serving_grpc"):
            (state / "config" / "gateway" / f"{upstream}.members").write_text(members(ctl, upstream, out))
        config = state / "config" / "gateway" / "nginx.conf"
        done = subprocess.run(
            [nginx, "-t", "-p", str(state / "gateway"), "-c", str(config), "-e", "stderr"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert done.returncode == 0, (out, done.stderr)


def test_a_serving_host_waits_for_readiness_unless_its_models_need_a_registry_alias(tmp_path: Path) -> None:
    srv1 = render_hosts(answers(), tmp_path / "secrets")["srv1"]
    assert srv1["appliance_serving_ready_url"] == "http://127.0.0.1:8080/v2/health/ready"
    assert srv1["appliance_serving_wait_ready"] is True  # local files: ready as soon as loaded
    registry = render_hosts(answers(models=[{"name": "iris"}]), tmp_path / "secrets")
    assert registry["srv1"]["appliance_serving_wait_ready"] is False  # an alias may not exist yet


def test_a_serving_host_with_replicas_gets_their_balancer_and_lets_their_supervisor_drain(
    tmp_path: Path,
) -> None:
    """One model server: the drain role signals it, no nginx. Several: the serving role installs
    the nginx their supervisor balances with, and the supervisor drains each replica itself."""
    one = render_hosts(answers(), tmp_path / "secrets")["srv1"]
    assert (one["appliance_serving_replicas"], one["appliance_serving_drain_signal"]) == (1, "SIGUSR1")
    several = answers(serving={"min_replicas": 3, "max_replicas": 3})
    srv1 = render_hosts(several, tmp_path / "secrets")["srv1"]
    assert (srv1["appliance_serving_replicas"], srv1["appliance_serving_drain_signal"]) == (3, "")
    command = unit(srv1, "serving", "serving")["command"]
    assert command[1:3] == ["-m", "appliance.workloads.serving.supervisor"], command
    assert command[command.index("--max-replicas") + 1] == "3", command


FAKE_SYSTEMCTL = """#!/bin/sh
# systemctl as the drain role calls it, for a test: each call logged, no service signalled.
echo "$*" >> "$(dirname "$0")/calls"
case "$1" in is-active) echo inactive; exit 3;; esac
exit 0
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the drain writes the gateway's record as root, as on a host")
def test_the_drain_takes_every_host_leaving_in_one_run_out_of_the_gateway_at_once(tmp_path: Path) -> None:
    """The drain role run (Ansible, local connections) for srv1 and srv2 leaving together: one
    write of the members files without both and one reload, not one per host each leaving the other
    in (their copies raced before); the gateway's record is what ``up`` gives it without them."""
    hosts = [*HOSTS[:3], {"name": "srv3", "address": "10.0.0.4", "groups": ["serving"]}]
    rendered = render_hosts(answers(hosts), tmp_path / "secrets")
    state, fake = tmp_path / "state", tmp_path / "bin"
    (state / "config" / "gateway").mkdir(parents=True)
    for upstream in ("serving_rest", "serving_grpc"):  # as `up` left them: every serving host
        (state / "config" / "gateway" / f"{upstream}.members").write_text(members(rendered["ctl1"], upstream))
    fake.mkdir()
    (fake / "systemctl").write_text(FAKE_SYSTEMCTL)
    (fake / "systemctl").chmod(0o755)
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory = {
        "all": {
            "vars": local | {"appliance_common_state_dir": str(state)},
            "hosts": {
                host: {k: v for k, v in rendered[host].items() if k.startswith("appliance_")}
                for host in ("ctl1", "srv1", "srv2", "srv3")
            },
            "children": {
                "gateway": {"hosts": {"ctl1": {}}},
                "serving": {"hosts": {name: {} for name in ("srv1", "srv2", "srv3")}},
            },
        }
    }
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory))
    play = {
        "hosts": "srv1,srv2",
        "gather_facts": False,
        "roles": [{"role": "appliance_serving_drain", "appliance_serving_drain_timeout": 1}],
    }
    (tmp_path / "drain.yml").write_text(yaml.safe_dump([play]))
    env = _env(tmp_path) | {
        "ANSIBLE_ROLES_PATH": str(ROLE.parent),
        "PATH": f"{fake}:{_env(tmp_path)['PATH']}",
    }
    done = subprocess.run(
        [_tool("ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), str(tmp_path / "drain.yml")],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    rest = (state / "config" / "gateway" / "serving_rest.members").read_text()
    assert "10.0.0.2:" not in rest and "10.0.0.3:" not in rest and "server 10.0.0.4:8080 max_fails=1" in rest
    reloads = [c for c in (fake / "calls").read_text().splitlines() if c.startswith("kill")]
    assert reloads == ["kill --kill-whom=main --signal=SIGHUP appliance-gateway.service"], reloads
    after = render_hosts(
        answers([h for h in hosts if h["name"] not in ("srv1", "srv2")]), tmp_path / "secrets"
    )
    gateway = unit(after["ctl1"], "gateway", "gateway")
    assert (state / "config" / "gateway.reloaded").read_text() == reloaded_record(gateway)
    assert rest == next(f["value"] for f in gateway["files"] if f["key"] == "serving_rest.members")
