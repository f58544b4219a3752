"""An edge box's ``monitoring.remote_write``: the answers check the account's form, the box's
``prometheus.yml`` sends every sample to the central receiver labelled with the box's name, and
the central web config lets each box of ``edge_boxes`` in with its own password."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
import yaml
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.mlflow_auth import edge_secret
from appliance.monitoring.prometheus_config import RemoteWriteTarget, render_prometheus_config
from appliance.render import render_stack
from appliance.secrets_store import SecretStore

WRITE = {"url": "https://central.lan:9090/api/v1/write", "username": "appliance-edge-shop-12"}


def _config(tmp_path: Path, monitoring: dict[str, object], **extra: object) -> dict[str, object]:
    data = {"profile": "edge", "object_store": {"kind": "filesystem"}, "monitoring": monitoring} | extra
    ctx = AppContext(Answers.model_validate(data), tmp_path / "state")
    return dict(yaml.safe_load(render_stack(ctx)["prometheus"].files["prometheus.yml"]))


def test_the_box_sends_every_sample_to_the_centre_as_its_own_account(tmp_path: Path) -> None:
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
        }
    ]
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


def test_the_centre_lets_each_edge_box_write_with_its_own_password(tmp_path: Path) -> None:
    data = {"object_store": {"kind": "filesystem"}, "edge_boxes": ["shop-12"]}
    ctx = AppContext(Answers.model_validate(data), tmp_path / "state")
    prometheus = render_stack(ctx)["prometheus"]
    assert "--web.enable-remote-write-receiver" in prometheus.command
    users = yaml.safe_load(prometheus.files["web.yml"])["basic_auth_users"]
    assert set(users) == {"appliance", "appliance-edge-shop-12"}
    password = SecretStore(tmp_path / "state" / "secrets").get(edge_secret("shop-12"))
    assert bcrypt.checkpw(password.encode(), users["appliance-edge-shop-12"].encode())


def test_remote_write_targets_are_checked() -> None:
    with pytest.raises(ValueError, match="must look like"):
        RemoteWriteTarget("central.lan", ("u", "/f"), ())
    with pytest.raises(ValueError, match="external label"):
        RemoteWriteTarget("http://c:9090/api/v1/write", ("u", "/f"), (("edge-box", "x"),))
    text = render_prometheus_config(
        [], [], None, remote_write=RemoteWriteTarget("http://c:1/w", ("u", "/f"), ())
    )
    assert yaml.safe_load(text)["remote_write"][0]["url"] == "http://c:1/w"
