"""One MLflow server per control host, sharing the first control host's PostgreSQL (tracking and
accounts) and the S3 artifact store, behind the gateway: what each host's units, the mlflow role
and the gateway's nginx.conf are rendered with (no hosts needed; nginx checks its config)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.cluster.units import render_hosts
from appliance.errors import ApplianceError
from appliance.gateway import EMPTY_MEMBERS, MEMBERS
from appliance.mlflow_login import AUTHORIZATION_FUNCTION

ROLE = Path(__file__).resolve().parents[2] / "roles" / "appliance_mlflow"
STATE = "/var/lib/appliance"
HOSTS = [
    {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
    {"name": "ctl2", "address": "10.0.0.2", "groups": ["control"]},
    {"name": "ctl3", "address": "10.0.0.3", "groups": ["control"]},
]


def answers(hosts: list[dict[str, Any]] = HOSTS, store: str = "seaweedfs", **cluster: Any) -> Answers:
    return Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "object_store": {"kind": store},
            "tls": {"enabled": True},
            "components": {"workbench": False, "monitoring": False, "controller": False, "dashboards": False},
            "cluster": {"hosts": hosts, "venv": "/opt/appliance/venv"} | cluster,
        }
    )


def unit(host_vars: dict[str, Any], role: str, name: str) -> dict[str, Any]:
    return next(u for u in host_vars[f"appliance_{role}_units"] if u["name"] == name)


def auth_ini(host_vars: dict[str, Any]) -> configparser.SectionProxy:
    mlflow = unit(host_vars, "mlflow", "mlflow")
    parser = configparser.ConfigParser()
    parser.read_string(next(f["value"] for f in mlflow["files"] if f["key"] == "basic_auth.ini"))
    return parser["mlflow"]


def test_every_control_host_runs_mlflow_on_the_first_ones_postgresql(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    password = (tmp_path / "secrets" / "mlflow_db_password").read_text().strip()
    for host, database in (("ctl1", "127.0.0.1"), ("ctl2", "10.0.0.1"), ("ctl3", "10.0.0.1")):
        mlflow = unit(per_host[host], "mlflow", "mlflow")
        env = mlflow["env"]
        assert env["MLFLOW_BACKEND_STORE_URI"].endswith(f"@{database}:5432/mlflow"), host
        assert env["PGPASSWORD"] == password and password not in repr(mlflow["command"])
        ini = auth_ini(per_host[host])
        # the accounts in the same PostgreSQL, the password not in the (0644) config file
        assert ini["database_uri"] == f"postgresql+psycopg://mlflow@{database}:5432/mlflow_auth", host
        assert password not in repr(mlflow["files"])
        # an account changed on one server holds on all: a login checked, never kept for a time
        assert ini["authorization_function"] == AUTHORIZATION_FUNCTION
        assert ini["auth_cache_ttl_seconds"] == "0"
        # presigned download URLs name the store as every host dials it, never loopback
        assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://10.0.0.1:8333", host
        assert "s3://mlflow" in mlflow["command"]
        assert per_host[host]["appliance_common_secrets"]["mlflow_db_password"] == password
    # the same admin password and CSRF key on every server (a form signed by one checks on another)
    envs = [unit(per_host[h], "mlflow", "mlflow")["env"] for h in ("ctl1", "ctl2", "ctl3")]
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert len({env[key] for env in envs}) == 1
    # the database and the accounts job on the first control host only; it lets the others in
    assert per_host["ctl1"]["appliance_mlflow_db_server"] is True
    assert per_host["ctl1"]["appliance_mlflow_db_clients"] == ["10.0.0.2", "10.0.0.3"]
    for host in ("ctl2", "ctl3"):
        assert per_host[host]["appliance_mlflow_db_server"] is False
        assert "appliance_mlflow_db_clients" not in per_host[host]
        assert [u["name"] for u in per_host[host]["appliance_mlflow_units"]] == ["mlflow"]
        assert "appliance_seaweedfs_units" not in per_host[host]
    assert [u["name"] for u in per_host["ctl1"]["appliance_mlflow_units"]] == ["mlflow", "mlflow-users"]


def test_one_host_keeps_its_accounts_beside_mlflow_and_checks_logins_the_same_way(tmp_path: Path) -> None:
    alone = render_hosts(answers(HOSTS[:1]), tmp_path / "a")["ctl1"]
    assert alone["appliance_mlflow_db_clients"] == [] and alone["appliance_mlflow_db_server"] is True
    assert auth_ini(alone)["database_uri"].startswith("postgresql+psycopg://mlflow@127.0.0.1:5432/")
    sqlite = render_hosts(answers(HOSTS[:1], store="filesystem", mlflow_backend="sqlite"), tmp_path / "b")[
        "ctl1"
    ]
    ini = auth_ini(sqlite)
    assert ini["database_uri"] == f"sqlite:///{STATE}/mlflow/basic_auth.db"
    assert ini["authorization_function"] == AUTHORIZATION_FUNCTION
    assert ini["auth_cache_ttl_seconds"] == "0"
    assert "PGPASSWORD" not in unit(sqlite, "mlflow", "mlflow")["env"]


def test_several_control_hosts_need_shared_stores_and_say_how(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match=r"set object_store\.kind: seaweedfs") as err:
        answers(store="filesystem")
    assert "ctl1, ctl2, ctl3" in str(err.value)
    with pytest.raises(ValidationError, match=r"set cluster\.mlflow_backend: postgresql"):
        answers(mlflow_backend="sqlite")
    # one control host may keep a folder and SQLite, as before
    answers(HOSTS[:1], store="filesystem", mlflow_backend="sqlite")
    # auto that resolves to a folder is refused when the hosts are rendered
    chosen = answers(store="auto")
    if chosen.object_store.kind == "auto":
        from appliance.context import resolve_store_kind

        if resolve_store_kind(chosen) == "filesystem":
            with pytest.raises(ApplianceError, match="artifact store resolves to filesystem"):
                render_hosts(chosen, tmp_path / "c")


def test_postgresql_lets_exactly_the_mlflow_hosts_into_both_databases() -> None:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True)
    text = env.get_template("pg_hba_mlflow.conf.j2").render(
        ansible_managed="managed",
        appliance_mlflow_database="mlflow",
        appliance_mlflow_auth_database="mlflow_auth",
        appliance_mlflow_db_user="mlflow",
        appliance_mlflow_db_clients=["10.0.0.2", "fd00::3"],
    )
    rules = [line.split() for line in text.splitlines() if line.startswith("host")]
    expected = ["127.0.0.1/32", "::1/128", "10.0.0.2/32", "fd00::3/128"]
    for database in ("mlflow", "mlflow_auth"):
        assert [r[3] for r in rules if r[1] == database] == expected
    assert all(r[2] == "mlflow" and r[4] == "scram-sha-256" for r in rules)


def gateway_conf(per_host: dict[str, Any]) -> str:
    gateway = unit(per_host["ctl1"], "gateway", "gateway")
    return str(next(f["value"] for f in gateway["files"] if f["key"] == "nginx.conf"))


def test_the_gateway_sends_mlflow_requests_to_every_server_with_failover(tmp_path: Path) -> None:
    conf = gateway_conf(render_hosts(answers(), tmp_path / "secrets"))
    block = conf[conf.index("upstream mlflow {") :]
    block = block[: block.index("}")]
    servers = [line.strip() for line in block.splitlines() if line.strip().startswith("server ")]
    assert servers == [
        "server 127.0.0.1:5000 max_fails=1 fail_timeout=5s;",
        "server 10.0.0.2:5000 max_fails=1 fail_timeout=5s;",
        "server 10.0.0.3:5000 max_fails=1 fail_timeout=5s;",
        "server 127.0.0.1:5000 backup max_fails=0;",
        "server 10.0.0.2:5000 backup max_fails=0;",
        "server 10.0.0.3:5000 backup max_fails=0;",
    ]
    proxied = conf[conf.index("proxy_pass http://mlflow;") - 600 : conf.index("proxy_pass http://mlflow;")]
    # a refused connection goes to another server; a request already sent is not repeated
    assert "proxy_next_upstream error timeout;" in proxied and "non_idempotent" not in proxied
    one = gateway_conf(render_hosts(answers(HOSTS[:1]), tmp_path / "one"))
    lone = one[one.index("upstream mlflow {") :]
    assert lone[: lone.index("}")].count("server ") == 2  # its one server, primary and backup


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None, reason="nginx not installed")
def test_nginx_accepts_the_gateway_with_several_mlflow_servers(tmp_path: Path) -> None:
    per_host = render_hosts(answers(), tmp_path / "secrets")
    state = tmp_path / "host"
    for folder in ("config/gateway", "gateway", "secrets"):
        (state / folder).mkdir(parents=True)
    for name, value in per_host["ctl1"]["appliance_common_secrets"].items():
        (state / "secrets" / name).write_text(value)
    for upstream in MEMBERS:  # the model server's upstreams (the gateway role writes these)
        (state / "config" / "gateway" / f"{upstream}.members").write_text(EMPTY_MEMBERS)
    config = state / "config" / "gateway" / "nginx.conf"
    config.write_text(gateway_conf(per_host).replace(STATE, str(state)))
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    assert nginx is not None
    done = subprocess.run(
        [nginx, "-t", "-p", str(state / "gateway"), "-c", str(config), "-e", "stderr"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
