"""Every service of a real lab stack (local runtime) refuses a caller without a credential, and the
stack itself, holding its credentials, still works end to end.

One stack for the module: MLflow with its authentication, the mlflow-users job, the model server,
the controller, Prometheus, Alertmanager and node exporter (the workbench is off: its Jupyter token
is older than this test and checked in the lab stack test). A champion is trained through the CLI
(MLflow's writer account) and the model server loads it with the read-only account. Two standalone
edge boxes (``edge_boxes``) get read-only accounts of their own; one taken out loses its account.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.mlflow_auth import AUTH_DB, PASSWORD_ENV, READER_USER, SECRETS, WRITER_USER
from appliance.mlflow_gate import BODY_LIMIT
from tests.conftest import run_cli, write_answers
from tests.integration._http_probes import partial_upload

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
MODEL = "breast_cancer"
RUN_CREATE = "/api/2.0/mlflow/runs/create"
SET_ALIAS = "/api/2.0/mlflow/registered-models/alias"
BOXES = ("shop-12", "shop-13")
"""Standalone edge boxes following this stack's registry, each with an account of its own."""


@dataclass(frozen=True)
class Stack:
    answers: Path
    state: Path
    ports: dict[str, int]
    trained: dict[str, Any]

    def cli(self, *args: str) -> str:
        return run_cli(*args, answers=self.answers, state=self.state, timeout=600).stdout

    def url(self, port: str) -> str:
        return f"http://127.0.0.1:{self.ports[port]}"

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    def web(self, service: str) -> tuple[str, str]:
        """The monitoring services' basic auth, as the stack's own clients send it."""
        return "appliance", self.secret(f"{service.replace('-', '_')}_web_password")

    def mlflow_account(self, user: str) -> tuple[str, str]:
        name = {WRITER_USER: "mlflow_writer_password", READER_USER: "mlflow_reader_password"}[user]
        return user, self.secret(name)


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("auth")
    answers = write_answers(
        root / "appliance.yaml",
        object_store={"kind": "filesystem"},
        components={"workbench": False},
        serving={"poll_seconds": 1},
        monitoring={"scrape_interval": "2s", "evaluation_interval": "2s"},
        edge_boxes=list(BOXES),
    )
    state = root / "state"
    ports = yaml.safe_load(answers.read_text())["ports"]
    try:
        run_cli("up", answers=answers, state=state, timeout=600)
        run_cli("data", "seed", "--dataset", MODEL, answers=answers, state=state)
        out = run_cli("train", "--dataset", MODEL, "--epochs", "5", answers=answers, state=state, timeout=600)
        yield Stack(answers, state, ports, json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        run_cli("down", answers=answers, state=state, check=False, timeout=300)


def test_mlflow_refuses_runs_alias_moves_and_artifact_writes_without_an_account(stack: Stack) -> None:
    mlflow = stack.url("mlflow")
    assert httpx.get(f"{mlflow}/health").status_code == 200  # the probe's path stays public
    refused = {
        "create run": httpx.post(f"{mlflow}{RUN_CREATE}", json={"experiment_id": "0"}),
        "set alias": httpx.post(
            f"{mlflow}{SET_ALIAS}", json={"name": MODEL, "alias": "champion", "version": "1"}
        ),
        "upload artifact": httpx.put(f"{mlflow}/api/2.0/mlflow-artifacts/artifacts/0/x.txt", content=b"x"),
        "delete artifact": httpx.delete(f"{mlflow}/api/2.0/mlflow-artifacts/artifacts/0/x.txt"),
        "read registry": httpx.get(f"{mlflow}/api/2.0/mlflow/registered-models/search"),
        "wrong password": httpx.post(
            f"{mlflow}{RUN_CREATE}", json={"experiment_id": "0"}, auth=(WRITER_USER, "not-the-password")
        ),
    }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 401)


def test_mlflow_refuses_a_body_without_a_login_before_it_is_sent(stack: Stack) -> None:
    """MLflow's Flask routes take a request's whole body into memory before its own login check:
    on MLflow's own port (no gateway in front) the appliance checks the login first
    (appliance/mlflow_gate.py). A caller announcing 64 MiB and sending 1 MiB, with no login or a
    wrong one, is refused at once (MLflow would wait for the rest), on Flask routes and on MLflow's
    own FastAPI artifact route; logged-in calls with bodies go through as before. Bodies are
    bounded from the head too: a public route's, and a logged-in API call's past ``BODY_LIMIT``."""
    port = stack.ports["mlflow"]
    wrong = "Basic " + base64.b64encode(f"{WRITER_USER}:not-the-password".encode()).decode()
    for method, path, authorization in (
        ("POST", RUN_CREATE, ""),
        ("POST", RUN_CREATE, wrong),
        ("POST", "/api/2.0/mlflow/runs/log-batch", "Bearer not-basic"),
        ("PUT", "/api/2.0/mlflow-artifacts/artifacts/0/x/big.bin", ""),
    ):
        for _ in range(3):
            status = partial_upload(port, None, method, path, authorization, announced=64 << 20, sent=1 << 20)
            assert status == 401, (method, path, authorization, status)
    # A public route needs no body, and MLflow's bridge would hold one whole before Flask answered.
    for path in ("/health", "/static-files/x.js"):
        status = partial_upload(port, None, "POST", path, "", announced=64 << 20, sent=1 << 20)
        assert status == 413, (path, status)
    writer = stack.mlflow_account(WRITER_USER)
    # A logged-in API call over the gate's bound: refused from its head as well.
    writer_basic = "Basic " + base64.b64encode(":".join(writer).encode()).decode()
    over = BODY_LIMIT + 1
    status = partial_upload(port, None, "POST", RUN_CREATE, writer_basic, announced=over, sent=1 << 20)
    assert status == 413, status
    mlflow = stack.url("mlflow")
    run = httpx.post(f"{mlflow}{RUN_CREATE}", json={"experiment_id": "0"}, auth=writer)
    assert run.status_code == 200, run.text
    batch = {"run_id": run.json()["run"]["info"]["run_id"], "metrics": [
        {"key": "m", "value": float(i), "timestamp": 0, "step": i} for i in range(500)
    ]}  # fmt: skip
    assert httpx.post(f"{mlflow}/api/2.0/mlflow/runs/log-batch", json=batch, auth=writer).status_code == 200
    # A good login without the right: MLflow's own 403, as before.
    reader = stack.mlflow_account(READER_USER)
    assert httpx.post(f"{mlflow}{RUN_CREATE}", json={"experiment_id": "0"}, auth=reader).status_code == 403


def test_the_writer_registered_the_champion_and_the_server_loads_it_with_the_read_only_account(
    stack: Stack,
) -> None:
    assert stack.trained["promoted"] is True and stack.trained["version"] == "1", stack.trained
    token = {"Authorization": f"Bearer {stack.secret('serving_token')}"}

    def served() -> list[str]:
        reply = httpx.get(f"{stack.url('serving_http')}/v2/models/{MODEL}", headers=token, timeout=10)
        return list(reply.json().get("versions", [])) if reply.status_code == 200 else []

    assert wait_for("the server to load champion v1", served, 120) == ["1"]
    # the stack is as rendered (the model server holding the read-only account alone, see
    # tests/unit/test_service_auth.py): nothing to change
    assert json.loads(stack.cli("plan", "--json")) == {"actions": []}
    reader = stack.mlflow_account(READER_USER)
    alias = httpx.get(
        f"{stack.url('mlflow')}{SET_ALIAS}", params={"name": MODEL, "alias": "champion"}, auth=reader
    )
    assert alias.status_code == 200 and alias.json()["model_version"]["version"] == "1"


def test_the_read_only_account_reads_but_cannot_move_an_alias_log_a_run_or_upload(stack: Stack) -> None:
    mlflow, reader = stack.url("mlflow"), stack.mlflow_account(READER_USER)
    move = {"name": MODEL, "alias": "champion", "version": "1"}
    assert httpx.post(f"{mlflow}{SET_ALIAS}", json=move, auth=reader).status_code == 403
    assert httpx.post(f"{mlflow}{RUN_CREATE}", json={"experiment_id": "0"}, auth=reader).status_code == 403
    upload = httpx.put(f"{mlflow}/api/2.0/mlflow-artifacts/artifacts/0/x.txt", content=b"x", auth=reader)
    assert upload.status_code == 403
    # the writer may move it (to where it already is: the served model does not change)
    writer = stack.mlflow_account(WRITER_USER)
    assert httpx.post(f"{mlflow}{SET_ALIAS}", json=move, auth=writer).status_code == 200
    assert httpx.post(f"{mlflow}{RUN_CREATE}", json={"experiment_id": "0"}, auth=writer).status_code == 200


def test_prometheus_refuses_quit_reload_and_queries_without_credentials(stack: Stack) -> None:
    prometheus = stack.url("prometheus")
    refused = {
        "quit": httpx.post(f"{prometheus}/-/quit"),
        "reload": httpx.post(f"{prometheus}/-/reload"),
        "query": httpx.get(f"{prometheus}/api/v1/query", params={"query": "up"}),
        "wrong password": httpx.get(
            f"{prometheus}/api/v1/query", params={"query": "up"}, auth=("appliance", "x")
        ),
    }
    assert {what: r.status_code for what, r in refused.items()} == dict.fromkeys(refused, 401)
    # with the credential the lifecycle API is still off (nothing here needs it): nobody can stop it
    assert httpx.post(f"{prometheus}/-/quit", auth=stack.web("prometheus")).status_code == 403
    assert httpx.get(f"{prometheus}/-/ready", auth=stack.web("prometheus")).status_code == 200


def test_prometheus_scrapes_every_target_with_its_credentials(stack: Stack) -> None:
    auth = stack.web("prometheus")

    def targets() -> dict[str, str] | None:
        reply = httpx.get(f"{stack.url('prometheus')}/api/v1/targets", auth=auth, timeout=10).json()
        seen = {t["labels"]["job"]: t["health"] for t in reply["data"]["activeTargets"]}
        return seen if seen and all(h == "up" for h in seen.values()) else None

    seen = wait_for("every scrape target up", targets, 90)
    assert set(seen) == {"prometheus", "alertmanager", "node-exporter", "serving", "controller"}


def test_alertmanager_takes_alerts_only_with_credentials(stack: Stack) -> None:
    alertmanager, auth = stack.url("alertmanager"), stack.web("alertmanager")
    name = f"AuthProbe{uuid.uuid4().hex[:8]}"  # not a drift alert: routed to no receiver
    alert = [{"labels": {"alertname": name, "severity": "info"}, "annotations": {"summary": "auth test"}}]
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=alert).status_code == 401
    assert httpx.get(f"{alertmanager}/api/v2/alerts").status_code == 401
    assert httpx.post(f"{alertmanager}/api/v2/alerts", json=alert, auth=auth).status_code == 200
    listed = httpx.get(f"{alertmanager}/api/v2/alerts", params={"filter": f'alertname="{name}"'}, auth=auth)
    assert [a["labels"]["alertname"] for a in listed.json()] == [name]


def test_node_exporter_the_controller_and_the_write_gate_refuse_callers_without_credentials(
    stack: Stack,
) -> None:
    node = f"{stack.url('node_exporter')}/metrics"
    assert httpx.get(node).status_code == 401
    reply = httpx.get(node, auth=stack.web("node-exporter"))
    assert reply.status_code == 200 and "node_cpu_seconds_total" in reply.text
    alerts = {"alerts": [{"status": "firing", "labels": {"alertname": "FeatureDrift", "model": MODEL}}]}
    assert httpx.post(f"{stack.url('controller')}/alerts", json=alerts).status_code == 401
    gate = f"{stack.url('write_gate')}/api/v1/write"  # edge_boxes: the write gate runs
    assert httpx.post(gate, content=b"\x00", headers={"Content-Encoding": "snappy"}).status_code == 401
    assert httpx.post(gate, content=b"\x00", auth=stack.web("prometheus")).status_code == 401  # not a box


def test_status_probes_every_service_with_its_credentials(stack: Stack) -> None:
    services = json.loads(stack.cli("status", "--json"))["services"]
    assert {name: s["health"] for name, s in services.items()} == dict.fromkeys(services, "healthy")
    assert services["mlflow-users"]["state"] == "done"


def test_the_accounts_job_checks_before_it_creates_and_repairs_a_changed_password(stack: Stack) -> None:
    env = {var: stack.secret(SECRETS[user]) for user, var in PASSWORD_ENV.items()}
    env |= {"MLFLOW_TRACKING_URI": stack.url("mlflow")}

    def job(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "appliance.mlflow_auth", *args]
        return subprocess.run(
            cmd, env=os.environ | env, capture_output=True, text=True, timeout=120, check=False
        )

    again = job()
    assert again.returncode == 0 and again.stdout.strip() == "every MLflow account is already in place"
    admin = ("admin", stack.secret("mlflow_admin_password"))
    changed = {"username": READER_USER, "password": f"changed-{uuid.uuid4().hex}"}
    url = f"{stack.url('mlflow')}/api/2.0/mlflow/users/update-password"
    assert httpx.patch(url, json=changed, auth=admin).status_code == 200
    broken = job("--check")
    assert broken.returncode == 1 and f"{READER_USER} cannot log in" in broken.stderr
    repaired = job()
    assert repaired.returncode == 0 and f"reset the password of {READER_USER}" in repaired.stdout
    assert job("--check").returncode == 0


def test_a_password_changed_in_the_account_store_is_refused_at_once(stack: Stack) -> None:
    """MLflow's server runs the slow password hash once per password and then checks only that the
    account's stored hash is still the one it matched (appliance/mlflow_login.py). So a password
    changed where this server hears nothing of it (by another server sharing the accounts, as a
    cluster's control hosts do; here written into the account store directly) is refused on the
    very next request, where a login cached for a time would still pass."""
    import sqlite3
    from contextlib import closing

    from werkzeug.security import generate_password_hash

    from appliance.mlflow_auth import edge_account, edge_secret

    user = edge_account(BOXES[1])  # an account no running service uses
    old = (user, stack.secret(edge_secret(BOXES[1])))
    new = (user, f"changed-{uuid.uuid4().hex}")
    current = f"{stack.url('mlflow')}/api/2.0/mlflow/users/current"
    assert [httpx.get(current, auth=old, timeout=10).status_code for _ in range(3)] == [200] * 3

    def store_hash(value: str | None = None) -> str:
        with closing(sqlite3.connect(stack.state / "mlflow" / AUTH_DB)) as db, db:
            if value is not None:
                db.execute("UPDATE users SET password_hash = ? WHERE username = ?", (value, user))
            return str(
                db.execute("SELECT password_hash FROM users WHERE username = ?", (user,)).fetchone()[0]
            )

    kept = store_hash()
    store_hash(generate_password_hash(new[1]))
    try:
        assert httpx.get(current, auth=old, timeout=10).status_code == 401
        assert httpx.get(current, auth=new, timeout=10).status_code == 200
    finally:
        store_hash(kept)
    assert httpx.get(current, auth=old, timeout=10).status_code == 200
    assert httpx.get(current, auth=new, timeout=10).status_code == 401


def test_each_edge_box_reads_with_its_own_account_and_one_taken_out_is_cut_off_alone(stack: Stack) -> None:
    from appliance.mlflow_auth import edge_account, edge_secret

    mlflow = f"{stack.url('mlflow')}/api/2.0/mlflow"
    boxes = {box: (edge_account(box), stack.secret(edge_secret(box))) for box in BOXES}
    assert len({pw for _, pw in boxes.values()} | {stack.secret("mlflow_reader_password")}) == 3
    for box, auth in boxes.items():
        assert (stack.state / "secrets" / edge_secret(box)).stat().st_mode & 0o777 == 0o600
        alias = httpx.get(
            f"{mlflow}/registered-models/alias", params={"name": MODEL, "alias": "champion"}, auth=auth
        )
        assert alias.status_code == 200 and alias.json()["model_version"]["version"] == "1", (box, alias.text)
        move = {"name": MODEL, "alias": "champion", "version": "1"}
        assert httpx.post(f"{mlflow}/registered-models/alias", json=move, auth=auth).status_code == 403, box
        assert httpx.post(f"{mlflow}/runs/create", json={"experiment_id": "0"}, auth=auth).status_code == 403
    lost, kept = BOXES
    data = yaml.safe_load(stack.answers.read_text())
    stack.answers.write_text(yaml.safe_dump(data | {"edge_boxes": [kept]}))
    try:
        stack.cli("up")

        def status(auth: tuple[str, str]) -> int:
            return httpx.get(f"{mlflow}/users/current", auth=auth, timeout=10).status_code

        assert status(boxes[lost]) == 401, "the box taken out of edge_boxes still logs in"
        assert status(boxes[kept]) == 200
        assert status(stack.mlflow_account(READER_USER)) == 200
        assert status(stack.mlflow_account(WRITER_USER)) == 200
        # its password went with its account (given back, the name gets a new one); the other's stays
        assert not (stack.state / "secrets" / edge_secret(lost)).exists()
        assert stack.secret(edge_secret(kept)) == boxes[kept][1]
    finally:
        stack.answers.write_text(yaml.safe_dump(data))
