"""How one service reaches another: one host, a wildcard bind, containers, a cluster's host map."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.addressing import Addressing, HostMap, dial_address
from appliance.answers import Answers
from appliance.context import AppContext
from appliance.gateway import gateway_nginx
from appliance.monitoring.generate import alertmanager_url, controller_webhook_url, monitoring_targets
from appliance.render import render_stack


@pytest.mark.parametrize(
    ("listen", "dial"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "[::1]"),
        ("127.0.0.1", "127.0.0.1"),
        ("192.168.7.20", "192.168.7.20"),
        ("fd00::5", "[fd00::5]"),
        ("[fd00::5]", "[fd00::5]"),
        ("node1.lab", "node1.lab"),
    ],
)
def test_a_client_dials_loopback_for_a_wildcard_and_brackets_ipv6(listen: str, dial: str) -> None:
    assert dial_address(listen) == dial


def test_same_host_container_network_and_other_host() -> None:
    hosts = HostMap(
        addresses={"ctl1": "10.0.0.1", "srv1": "10.0.0.2"},
        services={"serving": "srv1"},
        default="ctl1",
    )
    on_serving_host = Addressing("0.0.0.0", hosts=hosts, here="srv1")
    # MLflow is unlisted: it runs on the default (first control) host, another host from here.
    assert on_serving_host.url("mlflow", 5000) == "http://10.0.0.1:5000"
    # The model server runs here: loopback, even though it listens on every address.
    assert on_serving_host.url("serving", 8080) == "http://127.0.0.1:8080"
    # From inside a container here, a service on this host by its name on the stack network,
    # one on another host still by that host's address.
    assert on_serving_host.host("serving", inside=True) == "serving"
    assert on_serving_host.host("mlflow", inside=True) == "10.0.0.1"
    on_control = Addressing("0.0.0.0", hosts=hosts, here="ctl1")
    assert on_control.url("serving", 8082) == "http://10.0.0.2:8082"
    assert on_control.url("mlflow", 5000) == "http://127.0.0.1:5000"


def test_a_host_without_an_address_is_dialled_by_its_name() -> None:
    hosts = HostMap(addresses={}, services={"serving": "edge-7.example"}, default="ctl")
    assert Addressing("127.0.0.1", hosts=hosts, here="ctl").host("serving") == "edge-7.example"


def test_the_gateway_through_a_host_map() -> None:
    hosts = HostMap(addresses={"gw": "10.0.0.9"}, services={"gateway": "gw"}, default="ctl")
    assert Addressing("0.0.0.0", hosts=hosts, here="ctl").gateway_url("0.0.0.0", 8443, "/v2") == (
        "https://10.0.0.9:8443/v2"
    )
    assert Addressing("0.0.0.0").gateway_url("0.0.0.0", 8443) == "https://127.0.0.1:8443"


def _everything_a_client_reads(ctx: AppContext) -> list[str]:
    services = render_stack(ctx)
    texts = [ctx.mlflow_uri, *ctx.connection_env(mlflow_account=False).values()]
    for svc in services.values():
        texts += [
            *svc.env.values(),
            svc.url or "",
            svc.metrics or "",
            svc.health.http or "",
            svc.health.tcp or "",
        ]
        texts += [*(svc.health.command or [])]
        # a config file's listen directives are where a server listens, not where a client dials
        texts += [line for text in svc.files.values() for line in text.splitlines() if "listen" not in line]
    return texts


@pytest.mark.parametrize("runtime", ["local", "podman"])
def test_a_wildcard_bind_never_reaches_a_client(tmp_path: Path, runtime: str) -> None:
    answers = Answers.model_validate(
        {
            "bind_address": "0.0.0.0",
            "runtime": runtime,
            "tls": {"enabled": True},
            "object_store": {"kind": "filesystem"},
        }
    )
    ctx = AppContext(answers, tmp_path / "state")
    assert ctx.mlflow_uri == "http://127.0.0.1:5000"
    assert controller_webhook_url(answers) == "http://127.0.0.1:8090/alerts"
    assert alertmanager_url(answers) == "http://127.0.0.1:9093"
    assert {t.address.split(":")[0] for t in monitoring_targets(answers)} == {"127.0.0.1"}
    for text in _everything_a_client_reads(ctx):
        assert "//0.0.0.0" not in text and "0.0.0.0:" not in text, text
    services = render_stack(ctx)
    assert services["mlflow"].url == "http://127.0.0.1:5000"
    assert services["mlflow"].health.http == "http://127.0.0.1:5000/health"
    # Servers still listen on every address: the wildcard stays where it means "listen".
    assert services["mlflow"].publish_address == "0.0.0.0"
    if runtime == "local":
        assert "0.0.0.0" in services["mlflow"].command
    nginx = gateway_nginx(ctx, services)
    assert "server 0.0.0.0" not in nginx


def test_a_cluster_context_renders_other_hosts_addresses(tmp_path: Path) -> None:
    answers = Answers.model_validate({"bind_address": "0.0.0.0", "object_store": {"kind": "filesystem"}})
    hosts = HostMap(
        addresses={"ctl1": "10.0.0.1", "srv1": "10.0.0.2"}, services={"serving": "srv1"}, default="ctl1"
    )
    on_serving = AppContext(answers, tmp_path / "state", hosts=hosts, here="srv1")
    assert on_serving.connection_env(mlflow_account=False)["MLFLOW_TRACKING_URI"] == "http://10.0.0.1:5000"
    on_control = AppContext(answers, tmp_path / "state", hosts=hosts, here="ctl1")
    services = render_stack(on_control)
    # Prometheus on the control host scrapes the model server on its own host.
    assert services["serving"].metrics == "10.0.0.2:8082"
    assert services["serving"].health.http == "http://10.0.0.2:8080/v2/health/live"
    assert services["mlflow"].url == "http://127.0.0.1:5000"
