"""The TLS answers, the CA and server certificate made at install, and the gateway's nginx config."""

from __future__ import annotations

import socket
import stat
from pathlib import Path

import pytest
from cryptography import x509

from appliance.answers import Answers
from appliance.answers_file import parse_answers
from appliance.context import AppContext
from appliance.errors import InvalidInputError
from appliance.render import render_stack
from appliance.secrets_store import SecretStore
from appliance.tls import CA_CERT, SERVER_CERT, certificate_names, ensure_certificates
from appliance.workloads.serving.peer import FORWARDED_HEADER


def ctx(tmp_path: Path, **data: object) -> AppContext:
    data.setdefault("object_store", {"kind": "filesystem"})
    return AppContext(Answers.model_validate(data), tmp_path / "state")


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(names.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in names.get_values_for_type(x509.IPAddress)
    }


def test_bad_tls_answers_name_the_key_and_the_fix() -> None:
    text = "tls:\n  enabled: yes\n  listen_address: everywhere\n  hostnames: ['ok.example', 'bad_name!']\n"
    with pytest.raises(InvalidInputError) as info:
        parse_answers(text, "appliance.yaml")
    problems = {p.path: p.message for p in info.value.problems}
    assert set(problems) == {"tls.listen_address", "tls.hostnames"}
    assert "not an IP address" in problems["tls.listen_address"]
    assert "'bad_name!' is not a DNS name" in problems["tls.hostnames"]


def test_certificates_are_made_once_private_and_reissued_only_for_new_names(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    names = certificate_names("127.0.0.1", "0.0.0.0", ["models.example"])
    assert "0.0.0.0" not in names and {"localhost", "127.0.0.1", socket.gethostname()} <= set(names)
    first = ensure_certificates(store, names)
    for path in store.root.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
    assert {"models.example", "127.0.0.1", "localhost"} <= sans(first.cert)
    ca_bytes = (store.root / CA_CERT).read_bytes()
    assert ensure_certificates(store, names) == first  # nothing to do: same files, same fingerprint
    second = ensure_certificates(store, [*names, "10.1.2.3"])
    assert second.fingerprint != first.fingerprint and "10.1.2.3" in sans(second.cert)
    assert (store.root / CA_CERT).read_bytes() == ca_bytes  # clients keep trusting the same CA
    ca = x509.load_pem_x509_certificate(ca_bytes)
    x509.load_pem_x509_certificate((store.root / SERVER_CERT).read_bytes()).verify_directly_issued_by(ca)


def test_gateway_is_in_the_stack_only_with_tls(tmp_path: Path) -> None:
    assert "gateway" not in render_stack(ctx(tmp_path))
    services = render_stack(ctx(tmp_path, tls={"enabled": True, "listen_address": "0.0.0.0"}))
    gateway = services["gateway"]
    assert gateway.publish_address == "0.0.0.0"  # it alone faces outward
    assert services["mlflow"].publish_address == "127.0.0.1"
    assert gateway.health.http == "https://127.0.0.1:8443/-/gateway/health"
    assert gateway.health.ca == str(tmp_path / "state" / "secrets" / "tls_ca_cert")
    conf = gateway.files["nginx.conf"]
    assert "listen 0.0.0.0:8443 ssl http2;" in conf
    assert "grpc_pass grpc://serving_grpc;" in conf and "server 127.0.0.1:8081;" in conf
    # what the model server reads as "forwarded": never a local caller of shared memory
    assert conf.count(f"grpc_set_header {FORWARDED_HEADER} https;") == 1
    assert conf.count(f"proxy_set_header {FORWARDED_HEADER} https;") == 1  # the serving REST location
    assert "server 127.0.0.1:5000;" in conf and "server 127.0.0.1:8888;" in conf
    assert "limit_req" not in conf.replace("limit_req_status", "")


def test_gateway_config_follows_the_stack(tmp_path: Path) -> None:
    edge = render_stack(ctx(tmp_path, profile="edge", tls={"enabled": True, "rate_limit_rps": 50}))
    conf = edge["gateway"].files["nginx.conf"]
    assert "proxy_pass http://mlflow" not in conf and "proxy_pass http://workbench" not in conf
    assert "rate=50r/s" in conf and "burst=100" in conf
    no_serving = render_stack(
        ctx(tmp_path, profile="edge", components={"serving": False}, tls={"enabled": True})
    )
    assert "this stack runs no model server" in no_serving["gateway"].files["nginx.conf"]
    containers = render_stack(ctx(tmp_path, runtime="podman", tls={"enabled": True}))
    conf = containers["gateway"].files["nginx.conf"]
    assert "listen 8443 ssl http2;" in conf and "server serving:8081;" in conf
    assert containers["gateway"].publish_address == "127.0.0.1"


def test_a_reissued_certificate_changes_the_gateway_config_hash(tmp_path: Path) -> None:
    before = render_stack(ctx(tmp_path, tls={"enabled": True}))
    after = render_stack(ctx(tmp_path, tls={"enabled": True, "hostnames": ["new.example"]}))
    assert before["gateway"].config_hash != after["gateway"].config_hash
    assert before["serving"].config_hash == after["serving"].config_hash


def test_init_tls_writes_a_file_that_switches_the_gateway_on(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from appliance.cli import cli

    out = tmp_path / "appliance.yaml"
    result = CliRunner().invoke(cli, ["init", "--profile", "edge", "--tls", "-o", str(out)])
    assert result.exit_code == 0, result.output
    answers = parse_answers(out.read_text(), str(out))
    assert answers.tls.enabled and answers.profile == "edge"
    assert "gateway" in render_stack(AppContext(answers, tmp_path / "state"))


def test_the_gateway_url_points_at_the_first_service_it_fronts(tmp_path: Path) -> None:
    lab = render_stack(ctx(tmp_path, tls={"enabled": True}))
    assert lab["gateway"].url == "https://127.0.0.1:8443/v2"
    no_serving = render_stack(ctx(tmp_path, components={"serving": False}, tls={"enabled": True}))
    assert no_serving["gateway"].url == "https://127.0.0.1:5443"


def _server_blocks(conf: str) -> dict[str, str]:
    """The gateway's server blocks by the upstream their main location proxies to."""
    blocks = conf.split("\n    server {")[1:]
    named = {}
    for block in blocks:
        for upstream in ("serving_rest", "mlflow", "workbench"):
            if f"proxy_pass http://{upstream};" in block:
                named[upstream] = block
    return named


def test_the_model_servers_api_takes_a_body_only_a_little_past_the_model_servers_limit(
    tmp_path: Path,
) -> None:
    """nginx buffers a body before sending it on: past the model server's own limit (and a little
    slack) it refuses it itself, in the model server's JSON form, before holding it on disk."""
    lab = render_stack(
        ctx(tmp_path, tls={"enabled": True}, serving={"limits": {"max_body_bytes": 1_000_000}})
    )
    blocks = _server_blocks(lab["gateway"].files["nginx.conf"])
    assert set(blocks) == {"serving_rest", "mlflow", "workbench"}
    serving = blocks["serving_rest"]
    assert f"client_max_body_size {1_000_000 + 64 * 1024};" in serving
    assert "error_page 413 = @too_large;" in serving and "over 1000000 bytes" in serving
    assert "client_max_body_size" not in blocks["mlflow"] + blocks["workbench"]  # artifacts, files


def test_mlflow_and_the_workbench_take_a_large_body_only_after_the_service_checked_the_login(
    tmp_path: Path,
) -> None:
    """Reads pass no body on; a small announced body goes on from memory; a large or unknown one
    goes to a location that asks the service about the credentials first (``auth_request``,
    before nginx reads the body)."""
    from appliance.gateway import LOGIN_CHECK_PATH, LOGIN_CHECKS, SMALL_BODY_BUFFER

    conf = render_stack(ctx(tmp_path, tls={"enabled": True}))["gateway"].files["nginx.conf"]
    assert '"~^(GET|HEAD):$" none;' in conf and '"~^[A-Z]+:[0-9]{1,5}$" small;' in conf
    blocks = _server_blocks(conf)
    for upstream in ("mlflow", "workbench"):
        block = blocks[upstream]
        read, rest = block.split("location @small {")
        small, large = rest.split("location @large {")
        assert "if ($body_class = large) { return 418; }" in read and "proxy_pass_request_body off;" in read
        assert f"client_body_buffer_size {SMALL_BODY_BUFFER};" in small and "auth_request" not in small
        assert f"auth_request {LOGIN_CHECK_PATH};" in large
        assert f"proxy_pass http://{upstream}{LOGIN_CHECKS[upstream]};" in large
    assert "auth_request" not in blocks["serving_rest"]  # the model server checks its token from the head


@pytest.mark.parametrize(("euid", "line"), [(0, True), (1000, False)])
def test_nginx_workers_run_as_the_account_that_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, euid: int, line: bool
) -> None:
    """Started by root with no ``user`` line, nginx's workers are ``nobody``, who cannot reach the
    temporary folders in the 0700 state folder: the gateway and the balancer name root then."""
    from appliance.workloads.serving import balancer

    monkeypatch.setattr("os.geteuid", lambda: euid)
    conf = render_stack(ctx(tmp_path, tls={"enabled": True}))["gateway"].files["nginx.conf"]
    assert ("\nuser root;\n" in conf) is line
    assert ("\nuser root;\n" in balancer.render("127.0.0.1", 8080, 8081, [18080], [18081])) is line
