"""An edge box's ``monitoring.remote_write``: the answers check the account's form, the box's
``prometheus.yml`` sends the model server's series to the central write gate labelled with the
box's name, and the centre runs the gate with each box of ``edge_boxes`` and its own password,
while its Prometheus lets no edge account in (the gate writes as the stack's own user)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.mlflow_auth import edge_secret
from appliance.monitoring.catalog import SERVING_METRICS, series_names
from appliance.monitoring.prometheus_config import RemoteWriteTarget, render_prometheus_config
from appliance.monitoring.write_gate import password_digest
from appliance.render import render_stack
from appliance.secrets_store import SecretStore

WRITE = {"url": "https://central.lan:9095/api/v1/write", "username": "appliance-edge-shop-12"}


def _config(tmp_path: Path, monitoring: dict[str, object], **extra: object) -> dict[str, object]:
    data = {"profile": "edge", "object_store": {"kind": "filesystem"}, "monitoring": monitoring} | extra
    ctx = AppContext(Answers.model_validate(data), tmp_path / "state")
    return dict(yaml.safe_load(render_stack(ctx)["prometheus"].files["prometheus.yml"]))


KEPT = "|".join(re.escape(n) for n in sorted(series_names(SERVING_METRICS)))


def test_the_box_sends_its_serving_series_to_the_centre_as_its_own_account(tmp_path: Path) -> None:
    config = _config(tmp_path, {"remote_write": WRITE | {"ca_file": "/etc/central-ca.pem"}})
    assert config["global"]["external_labels"] == {"edge_box": "shop-12"}  # type: ignore[index]
    assert config["remote_write"] == [
        {
            "url": WRITE["url"],
            "basic_auth": {
                "username": "appliance-edge-shop-12",
                "password_file": str(tmp_path / "state" / "secrets" / "mlflow_reader_password"),
            },
            "tls_config": {"ca_file": "/etc/central-ca.pem"},
            "write_relabel_configs": [
                {"source_labels": ["__name__"], "regex": KEPT, "action": "keep"},
            ],
        }
    ]
    kept = re.compile(KEPT)
    assert kept.fullmatch("appliance_feature_psi") and kept.fullmatch(
        "appliance_inference_request_duration_seconds_bucket"
    )
    assert not kept.fullmatch("node_load1") and not kept.fullmatch("up")
    assert "remote_write" not in _config(tmp_path / "plain", {})  # a box without it keeps its samples


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"username": "appliance-reader"}, "must be appliance-edge-NAME"),
        ({"username": "appliance-edge-../x"}, "must be appliance-edge-NAME"),
        ({"url": "central.lan:9090"}, "must start with http:// or https://"),
    ],
)
def test_a_wrong_remote_write_is_refused_with_the_fix(given: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Answers.model_validate({"monitoring": {"remote_write": WRITE | given}})


def test_the_centre_runs_the_write_gate_with_each_box_and_lets_no_box_into_prometheus(tmp_path: Path) -> None:
    boxes = ["shop-12", {"name": "shop-13", "models": ["wine", "breast_cancer"]}]
    data = {"object_store": {"kind": "filesystem"}, "edge_boxes": boxes}
    ctx = AppContext(Answers.model_validate(data), tmp_path / "state")
    services = render_stack(ctx)
    prometheus, gate = services["prometheus"], services["write-gate"]
    assert "--web.enable-remote-write-receiver" in prometheus.command
    assert "--web.enable-remote-write-receiver" in prometheus.container_command
    assert list(yaml.safe_load(prometheus.files["web.yml"])["basic_auth_users"]) == ["appliance"]
    accounts = json.loads(gate.files["accounts.json"])["accounts"]
    secrets = SecretStore(tmp_path / "state" / "secrets")
    assert accounts == {
        f"appliance-edge-{box}": password_digest(secrets.get(edge_secret(box)))
        for box in ("shop-12", "shop-13")
    }
    # the box named with its models writes for those alone; the other for any model
    assert json.loads(gate.files["accounts.json"])["models"] == {
        "appliance-edge-shop-13": ["breast_cancer", "wine"]
    }
    assert ctx.answers.edge_box_names == ["shop-12", "shop-13"]
    upstream = gate.command[gate.command.index("--upstream") + 1]
    assert upstream == f"http://127.0.0.1:{ctx.answers.ports.prometheus}/api/v1/write"
    assert gate.command[gate.command.index("--port") + 1] == str(ctx.answers.ports.write_gate)


def test_remote_write_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="must look like"):
        RemoteWriteTarget("central.lan", ("u", "/f"), ())
    with pytest.raises(ValueError, match="external label"):
        RemoteWriteTarget("http://c:9090/api/v1/write", ("u", "/f"), (("edge-box", "x"),))
    text = render_prometheus_config(
        [], [], None, remote_write=RemoteWriteTarget("http://c:1/w", ("u", "/f"), ())
    )
    assert yaml.safe_load(text)["remote_write"][0]["url"] == "http://c:1/w"


def test_without_edge_boxes_the_receiver_is_off(tmp_path: Path) -> None:
    ctx = AppContext(Answers.model_validate({"object_store": {"kind": "filesystem"}}), tmp_path / "state")
    prometheus = render_stack(ctx)["prometheus"]
    assert "--no-web.enable-remote-write-receiver" in prometheus.command
    assert not any(a == "--web.enable-remote-write-receiver" for a in prometheus.container_command)
    assert list(yaml.safe_load(prometheus.files["web.yml"])["basic_auth_users"]) == ["appliance"]
    assert "write-gate" not in render_stack(ctx)


def test_the_registry_and_the_remote_write_cannot_share_a_file_under_two_accounts() -> None:
    registry = {"url": "https://central.lan:5443"}
    with pytest.raises(ValidationError, match="share the box's password file"):
        Answers.model_validate({"serving": {"registry": registry}, "monitoring": {"remote_write": WRITE}})
    same = registry | {"username": WRITE["username"]}
    Answers.model_validate({"serving": {"registry": same}, "monitoring": {"remote_write": WRITE}})
    own = WRITE | {"password_file": "/var/lib/appliance/secrets/write_password"}
    Answers.model_validate({"serving": {"registry": registry}, "monitoring": {"remote_write": own}})


def test_a_name_cannot_be_both_a_clusters_edge_host_and_a_standalone_box() -> None:
    hosts = [
        {"name": "ctl1", "address": "10.0.0.1", "groups": ["control"]},
        {"name": "shop-12", "address": "10.0.0.9", "groups": ["edge"]},
    ]
    with pytest.raises(ValidationError, match="shop-12 is both an edge host"):
        Answers.model_validate({"cluster": {"hosts": hosts}, "edge_boxes": ["shop-12"]})


def test_with_containers_the_boxs_files_must_be_where_prometheus_sees_them(tmp_path: Path) -> None:
    from appliance.preflight import _remote_write

    state = tmp_path / "state"
    inside, outside = state / "secrets" / "write_password", tmp_path / "write_password"
    for path in (inside, outside):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("pw")
        path.chmod(0o600)
    url = "http://127.0.0.1:9/api/v1/write"  # nothing listens there: a warning, not a failure
    checks = {}
    for runtime, password in (("podman", outside), ("local", outside), ("podman", inside)):
        write = WRITE | {"url": url, "password_file": str(password)}
        answers = Answers.model_validate({"runtime": runtime, "monitoring": {"remote_write": write}})
        desired: dict[str, Any] = {"prometheus": None}
        [checks[runtime, password]] = _remote_write(AppContext(answers, state), desired)
    failed = checks["podman", outside]
    assert failed.status == "fail" and "is all Prometheus's container sees" in failed.detail, failed
    assert checks["local", outside].status == "warn" and checks["podman", inside].status == "warn"
