"""Credentials on every service, as rendered: which service asks for which, which client gets which
account, where the container runtimes mount the password files, and the probes that send them.

The running stack is checked in tests/integration/test_service_auth.py; here nothing is started but
a tiny HTTP server that asks for basic auth (to test the health probe itself).
"""

from __future__ import annotations

import base64
import configparser
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import bcrypt
import pytest
import yaml

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.health import probe
from appliance.mlflow_auth import READER_USER, SECRETS, WRITER_USER
from appliance.mlflow_login import AUTHORIZATION_FUNCTION
from appliance.monitoring.web_auth import WEB_PASSWORDS, WEB_USER
from appliance.preflight import _network_exposure
from appliance.render import render_stack
from appliance.runtimes.podman_rt import PodmanRuntime
from appliance.stack import HealthCheck, RenderedService

MONITORING = ("prometheus", "alertmanager", "node-exporter")
MLFLOW_PASSWORDS = set(SECRETS.values())


def ctx(root: Path, **data: object) -> AppContext:
    data.setdefault("object_store", {"kind": "filesystem"})
    return AppContext(Answers.model_validate(data), root / "state")


def texts(svc: RenderedService) -> list[str]:
    return [*svc.command, *svc.container_command, *svc.env.values(), *svc.files.values()]


def secret(c: AppContext, name: str) -> str:
    return (c.state_dir / "secrets" / name).read_text().strip()


def test_monitoring_services_ask_for_basic_auth_with_a_hash_that_does_not_change(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    first = render_stack(c)
    again = render_stack(c)
    for name in MONITORING:
        svc = first[name]
        password = secret(c, WEB_PASSWORDS[name])
        assert f"--web.config.file={c.state_dir}/config/{name}/web.yml" in svc.command
        users = yaml.safe_load(svc.files["web.yml"])["basic_auth_users"]
        assert list(users) == [WEB_USER]
        assert bcrypt.checkpw(password.encode(), users[WEB_USER].encode())
        assert not bcrypt.checkpw(b"wrong" + password.encode(), users[WEB_USER].encode())
        # the same password renders the same hash: an unchanged stack plans nothing
        assert again[name].config_hash == svc.config_hash
        assert not any(password in text for s in first.values() for text in texts(s)), name
        # the probe sends the user, and reads the password from its file at probe time
        assert svc.health.auth_user == WEB_USER
        assert svc.health.auth_password_file == str(c.state_dir / "secrets" / WEB_PASSWORDS[name])
    assert "--web.enable-lifecycle" not in first["prometheus"].command


def test_prometheus_scrapes_and_alerts_with_each_services_password_file(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    config = yaml.safe_load(render_stack(c)["prometheus"].files["prometheus.yml"])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name in MONITORING:
        assert jobs[name]["basic_auth"] == {
            "username": WEB_USER,
            "password_file": str(c.state_dir / "secrets" / WEB_PASSWORDS[name]),
        }
    assert "basic_auth" not in jobs["serving"] and "basic_auth" not in jobs["controller"]
    (manager,) = config["alerting"]["alertmanagers"]
    assert manager["basic_auth"]["password_file"] == str(
        c.state_dir / "secrets" / "alertmanager_web_password"
    )


def test_container_runtimes_mount_the_password_files_where_prometheus_names_them(tmp_path: Path) -> None:
    c = ctx(tmp_path, runtime="podman")
    stack = render_stack(c)
    runtime = PodmanRuntime(c.state_dir, c.answers)
    runtime._client = SimpleNamespace(volumes=SimpleNamespace(get=lambda name: name))  # no engine asked
    root = c.state_dir / "secrets"
    mounted = runtime.secret_files(stack["prometheus"])
    assert mounted == {str(root / WEB_PASSWORDS[name]): root / WEB_PASSWORDS[name] for name in MONITORING}
    # inside, the web config is read from the config folder, mounted read-only at its host path
    config = c.state_dir / "config" / "node-exporter"
    assert f"--web.config.file={config}/web.yml" in stack["node-exporter"].container_command
    spec = runtime._spec(stack["node-exporter"], "img")
    assert spec["volumes"][str(config)] == {"bind": str(config), "mode": "ro"}
    assert spec["user"] == "0"


class _BasicAuthHandler(http.server.BaseHTTPRequestHandler):
    expected = ""

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[str]:
    _BasicAuthHandler.expected = "Basic " + base64.b64encode(b"appliance:s3cret-pw").decode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BasicAuthHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/-/ready"
    server.shutdown()


def test_the_health_probe_sends_basic_auth_from_the_password_file(tmp_path: Path, auth_server: str) -> None:
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_text("s3cret-pw\n")
    bad.write_text("guess")
    ok, detail = probe(HealthCheck(http=auth_server, auth_user="appliance", auth_password_file=str(good)))
    assert ok, detail
    ok, detail = probe(HealthCheck(http=auth_server, auth_user="appliance", auth_password_file=str(bad)))
    assert not ok and "401" in detail and "guess" not in detail
    ok, detail = probe(HealthCheck(http=auth_server))
    assert not ok and "401" in detail
    missing = str(tmp_path / "absent")
    ok, detail = probe(HealthCheck(http=auth_server, auth_user="appliance", auth_password_file=missing))
    assert not ok and "password file" in detail


def test_each_mlflow_client_gets_its_own_account_and_no_other(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    stack = render_stack(c)
    mlflow = stack["mlflow"]
    for command in (mlflow.command, mlflow.container_command):  # mlflow server's options, one process
        assert command[1:5] == ["-m", "appliance.mlflow_server", "--app-name", "basic-auth"], command
    assert mlflow.env["MLFLOW_AUTH_ADMIN_PASSWORD"] == secret(c, "mlflow_admin_password")
    assert mlflow.env["MLFLOW_AUTH_CONFIG_PATH"] == str(c.state_dir / "config" / "mlflow" / "basic_auth.ini")
    assert mlflow.health.http and mlflow.health.http.endswith("/health") and not mlflow.health.auth_user
    accounts = {
        name: svc.env.get("MLFLOW_TRACKING_USERNAME") for name, svc in stack.items() if name != "mlflow-users"
    }
    assert accounts == {
        "mlflow": None,
        "workbench": WRITER_USER,
        "node-exporter": None,
        "prometheus": None,
        "alertmanager": None,
        "serving": READER_USER,
        "controller": WRITER_USER,
    }
    writer, reader = secret(c, "mlflow_writer_password"), secret(c, "mlflow_reader_password")
    assert stack["serving"].env["MLFLOW_TRACKING_PASSWORD"] == reader
    for name in ("controller", "workbench"):
        assert stack[name].env["MLFLOW_TRACKING_PASSWORD"] == writer
    # no service holds a password of an account it does not use
    for name, svc in stack.items():
        held = {s for s in MLFLOW_PASSWORDS if any(secret(c, s) in text for text in texts(svc))}
        expected = {
            "mlflow": {"mlflow_admin_password"},
            "mlflow-users": MLFLOW_PASSWORDS,
            "serving": {"mlflow_reader_password"},
            "controller": {"mlflow_writer_password"},
            "workbench": {"mlflow_writer_password"},
        }.get(name, set())
        assert held == expected, name
    users = stack["mlflow-users"]
    assert users.oneshot and users.depends_on == ["mlflow"]
    assert users.health.command and "--check" in users.health.command
    assert stack["controller"].depends_on == ["mlflow-users"] and stack["workbench"].depends_on == [
        "mlflow-users"
    ]


def test_mlflows_user_store_sits_beside_its_database_on_every_runtime(tmp_path: Path) -> None:
    for runtime, folder in (
        ("local", str(tmp_path / "local" / "state" / "mlflow")),
        ("docker", "/var/lib/mlflow"),
    ):
        text = render_stack(ctx(tmp_path / runtime, runtime=runtime))["mlflow"].files["basic_auth.ini"]
        config = configparser.ConfigParser()
        config.read_string(text)
        assert config["mlflow"]["database_uri"] == f"sqlite:///{folder}/basic_auth.db"
        assert config["mlflow"]["default_permission"] == "READ"
        assert "admin_password" not in config["mlflow"]  # from the environment, never in a file
        # the appliance's login check, importable wherever MLflow runs (the image has the package)
        assert config["mlflow"]["authorization_function"] == AUTHORIZATION_FUNCTION


def test_the_cli_uses_the_writer_account_once_up_has_made_it(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    assert "MLFLOW_TRACKING_USERNAME" not in c.connection_env()
    c.secrets.put("mlflow_writer_password", "pw-of-the-writer")
    env = c.connection_env()
    assert env["MLFLOW_TRACKING_USERNAME"] == WRITER_USER
    assert env["MLFLOW_TRACKING_PASSWORD"] == "pw-of-the-writer"
    assert c.mlflow_env()["MLFLOW_TRACKING_URI"] == c.mlflow_uri
    assert "MLFLOW_TRACKING_USERNAME" not in c.connection_env(inside=True)


def test_preflight_names_what_a_non_loopback_address_exposes_and_with_which_credential(
    tmp_path: Path,
) -> None:
    assert _network_exposure(render_stack(ctx(tmp_path / "loopback"))) == []
    (check,) = _network_exposure(render_stack(ctx(tmp_path / "open", bind_address="0.0.0.0")))
    assert check.status == "warn" and check.fix
    assert "0.0.0.0" in check.detail
    assert "prometheus (basic auth, user appliance (prometheus_web_password))" in check.detail
    assert "mlflow (MLflow accounts" in check.detail and "serving (bearer tokens" in check.detail
    gateway_only = ctx(tmp_path / "tls", tls={"enabled": True, "listen_address": "0.0.0.0"})
    (check,) = _network_exposure(render_stack(gateway_only))
    assert check.detail.startswith("listening on 0.0.0.0, reachable from the network: gateway (TLS")
    assert "mlflow" not in check.detail.split("gateway", 1)[0]


class _MlflowAuthHandler(http.server.BaseHTTPRequestHandler):
    """MLflow with its authentication: /health public, everything else 401 without an account."""

    def do_GET(self) -> None:
        public = self.path == "/health"
        good = (
            self.headers.get("Authorization") == "Basic " + base64.b64encode(b"appliance-writer:pw").decode()
        )
        self.send_response(200 if public or good else 401)
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


def test_the_trainer_says_which_account_mlflow_wants_before_it_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from appliance.workloads.trainer import tracking
    from appliance.workloads.trainer.errors import MlflowAuthError

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _MlflowAuthHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        with pytest.raises(MlflowAuthError) as none_given:
            tracking.check_reachable(uri)
        assert (
            "asks for an account" in str(none_given.value)
            and "mlflow_writer_password" in none_given.value.fix
        )
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "appliance-writer")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
        with pytest.raises(MlflowAuthError, match="refuses the account 'appliance-writer'"):
            tracking.check_reachable(uri)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
        tracking.check_reachable(uri)  # the right account passes
    finally:
        server.shutdown()
