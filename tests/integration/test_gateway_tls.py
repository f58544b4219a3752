"""The TLS gateway on the local runtime, with real nginx, MLflow, JupyterLab and the model server.

What a user relies on when ``tls.enabled`` is on: keys generated at install and kept 0600; the
model server over HTTPS and gRPC over TLS through one port, verified against the stack's own CA
(by httpx, tritonclient and a raw grpcio channel); MLflow and the workbench (WebSockets included)
over HTTPS; clients that do not trust the CA, or speak plain text, are refused. Changing the TLS
answers recreates the gateway alone (a re-issued certificate under the same CA), and switching
TLS off removes it without touching the services behind it. The model server runs two replicas
behind its balancer, and requests through the gateway reach both on both protocols.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import yaml
from cryptography import x509
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

from tests.conftest import run_cli, write_answers
from tests.integration._http_probes import partial_upload
from tests.integration._serving_fixtures import reference, training_data, write_mlp

pytestmark = pytest.mark.integration


def stack_answers(models: Path, **tls: object) -> dict[str, object]:
    return {
        "profile": "custom",
        "object_store": {"kind": "filesystem"},
        "components": {"monitoring": False, "controller": False},
        # two replicas behind the serving balancer: the gateway reaches them through it
        "serving": {"model": str(models / "mlp"), "poll_seconds": 0, "min_replicas": 2, "max_replicas": 2},
        "tls": {"enabled": True, **tls},
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    write_mlp(folder / "mlp")
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models: Path) -> Iterator[tuple[Path, Path]]:
    root = tmp_path_factory.mktemp("tls")
    answers = write_answers(root / "appliance.yaml", **stack_answers(models))
    state = root / "state"
    run_cli("up", answers=answers, state=state)
    yield answers, state
    run_cli("down", answers=answers, state=state, check=False)


def ports(answers: Path) -> dict[str, int]:
    return yaml.safe_load(answers.read_text())["ports"]


def token(state: Path) -> str:
    return (state / "secrets" / "serving_token").read_text().strip()


def ca(state: Path) -> str:
    return str(state / "secrets" / "tls_ca_cert")


def trusting(state: Path) -> ssl.SSLContext:
    """A client context that trusts the stack's CA and nothing else."""
    return ssl.create_default_context(cafile=ca(state))


def test_keys_are_generated_private_and_the_certificate_chains_to_the_ca(stack: tuple[Path, Path]) -> None:
    answers, state = stack
    services = json.loads(run_cli("status", "--json", answers=answers, state=state).stdout)["services"]
    assert {n: s["health"] for n, s in services.items()} == dict.fromkeys(services, "healthy")
    assert "gateway" in services
    for name in ("tls_ca_key", "gateway_tls_key", "tls_ca_cert", "gateway_tls_cert"):
        assert stat.S_IMODE(os.stat(state / "secrets" / name).st_mode) == 0o600, name
    # The served certificate is the one on disk, and it verifies against the CA (with the name).
    context = ssl.create_default_context(cafile=ca(state))
    with (
        socket.create_connection(("127.0.0.1", ports(answers)["gateway_serving"])) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        served = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    on_disk = x509.load_pem_x509_certificate((state / "secrets" / "gateway_tls_cert").read_bytes())
    assert served == on_disk
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname()} <= set(names.get_values_for_type(x509.DNSName))


def test_rest_over_https_predicts_and_keeps_auth(stack: tuple[Path, Path], models: Path) -> None:
    answers, state = stack
    base = f"https://127.0.0.1:{ports(answers)['gateway_serving']}"
    x = training_data(rows=4)
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]}
    with httpx.Client(verify=trusting(state), timeout=10) as client:
        assert client.get(f"{base}/v2/health/ready").status_code == 200
        assert client.post(f"{base}/v2/models/mlp/infer", json=body).status_code == 401
        resp = client.post(
            f"{base}/v2/models/mlp/infer", json=body, headers={"Authorization": f"Bearer {token(state)}"}
        )
        assert resp.status_code == 200, resp.text
        got = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(4, -1)
        np.testing.assert_allclose(got, reference(models, x), atol=1e-6)
        bad = client.post(
            f"{base}/v2/models/nope/infer", json=body, headers={"Authorization": f"Bearer {token(state)}"}
        )
        assert bad.status_code == 404 and "nope" in bad.json()["error"]
        # a body past nginx's memory buffers (the gateway's 16 KB, the balancer's 1 MiB) goes
        # through their temporary files, which nginx's workers must reach (a 500 when they could not)
        many = training_data(rows=30_000)
        big = {
            "inputs": [
                {"name": "input", "datatype": "FP32", "shape": list(many.shape), "data": many.tolist()}
            ]
        }
        resp = client.post(
            f"{base}/v2/models/mlp/infer", json=big, headers={"Authorization": f"Bearer {token(state)}"}
        )
        assert resp.status_code == 200 and len(resp.request.content) > 2 << 20, resp.text[:300]
        got = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(len(many), -1)
        np.testing.assert_allclose(got, reference(models, many), atol=1e-5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{base}/v2/health/live")  # the system's trust store does not know our CA
    plain = httpx.get(f"http://127.0.0.1:{ports(answers)['gateway_serving']}/v2/health/live")
    assert plain.status_code == 400  # plain HTTP on the TLS port is refused


def test_grpc_over_tls_with_tritonclient_and_a_raw_channel(stack: tuple[Path, Path], models: Path) -> None:
    answers, state = stack
    target = f"localhost:{ports(answers)['gateway_serving']}"
    x = training_data(rows=3)
    expected = reference(models, x)
    headers = {"authorization": f"Bearer {token(state)}"}
    client = triton_grpc.InferenceServerClient(target, ssl=True, root_certificates=ca(state))
    try:
        assert client.is_server_live(headers=headers)
        tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("mlp", [tensor], headers=headers)
        out = result.get_response().outputs[0].name
        np.testing.assert_allclose(result.as_numpy(out), expected, atol=1e-6)
    finally:
        client.close()
    credentials = grpc.ssl_channel_credentials(Path(ca(state)).read_bytes())
    with grpc.secure_channel(target, credentials) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="mlp")
        req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        with pytest.raises(grpc.RpcError) as denied:
            stub.ModelInfer(req, timeout=10)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = stub.ModelInfer(req, metadata=tuple(headers.items()), timeout=10)
        got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(expected.shape)
        np.testing.assert_allclose(got, expected, atol=1e-6)
    with grpc.insecure_channel(target) as channel:  # plain text to the TLS port never gets through
        with pytest.raises(grpc.RpcError) as plain:
            pb_grpc.GRPCInferenceServiceStub(channel).ServerLive(pb.ServerLiveRequest(), timeout=5)
        assert plain.value.code() != grpc.StatusCode.OK


def served_per_replica(answers: Path, protocol: str) -> dict[str, float]:
    """Successful inferences per replica, from the serving supervisor's metrics."""
    text = httpx.get(f"http://127.0.0.1:{ports(answers)['serving_metrics']}/metrics", timeout=30).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if (
            line.startswith("appliance_inference_requests_total{")
            and f'protocol="{protocol}"' in line
            and 'outcome="success"' in line
        ):
            replica = line.split('replica="', 1)[1].split('"', 1)[0]
            out[replica] = out.get(replica, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_https_and_grpc_over_tls_spread_over_both_replicas(stack: tuple[Path, Path], models: Path) -> None:
    answers, state = stack
    before = {p: served_per_replica(answers, p) for p in ("rest", "grpc")}
    x = training_data(rows=2)
    expected = reference(models, x)
    auth = {"Authorization": f"Bearer {token(state)}"}
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    base = f"https://127.0.0.1:{ports(answers)['gateway_serving']}"
    with httpx.Client(verify=trusting(state), headers=auth, timeout=10) as client:  # one connection
        for _ in range(40):
            resp = client.post(f"{base}/v2/models/mlp/infer", json=body)
            assert resp.status_code == 200, resp.text
            got = np.array(resp.json()["outputs"][0]["data"], dtype=np.float32).reshape(expected.shape)
            np.testing.assert_allclose(got, expected, atol=1e-6)
    credentials = grpc.ssl_channel_credentials(Path(ca(state)).read_bytes())
    target = f"localhost:{ports(answers)['gateway_serving']}"
    with grpc.secure_channel(target, credentials) as channel:  # one HTTP/2 connection
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        req = pb.ModelInferRequest(model_name="mlp")
        req.inputs.add(name="input", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        for _ in range(40):
            reply = stub.ModelInfer(req, metadata=(("authorization", auth["Authorization"]),), timeout=10)
            got = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32).reshape(expected.shape)
            np.testing.assert_allclose(got, expected, atol=1e-6)
    for protocol in ("rest", "grpc"):
        after = served_per_replica(answers, protocol)
        sent = {k: v - before[protocol].get(k, 0.0) for k, v in after.items()}
        assert sum(sent.values()) == 40, (protocol, sent)
        assert len([v for v in sent.values() if v > 0]) == 2, (protocol, sent)  # both replicas


def test_mlflow_and_workbench_over_https(stack: tuple[Path, Path]) -> None:
    answers, state = stack
    p = ports(answers)
    search = f"https://127.0.0.1:{p['gateway_mlflow']}/api/2.0/mlflow/experiments/search"
    reader = ("appliance-reader", (state / "secrets" / "mlflow_reader_password").read_text().strip())
    with httpx.Client(verify=trusting(state), timeout=20) as client:
        # MLflow checks its own accounts behind the gateway: nothing reaches it without one
        assert client.get(search, params={"max_results": 5}).status_code == 401
        runs = client.get(search, params={"max_results": 5}, auth=reader)
        assert runs.status_code == 200 and "experiments" in runs.json()
        create = client.post(
            f"https://127.0.0.1:{p['gateway_mlflow']}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"}
        )
        assert create.status_code == 401
        jupyter = (state / "secrets" / "jupyter_token").read_text().strip()
        api = client.get(
            f"https://127.0.0.1:{p['gateway_workbench']}/api/status",
            headers={"Authorization": f"token {jupyter}"},
        )
        assert api.status_code == 200 and "started" in api.json()
        # What a browser holds after logging in with the token: the login cookie.
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    assert cookie, "Jupyter set no login cookie"
    # A fresh client (no login cookie) without the token is refused.
    anonymous = httpx.get(f"https://127.0.0.1:{p['gateway_workbench']}/api/status", verify=trusting(state))
    assert anonymous.status_code == 403
    # The browser's page, served through the gateway, opens WebSockets with the gateway's origin...
    own_origin = f"https://127.0.0.1:{p['gateway_workbench']}"
    assert websocket_handshake(p["gateway_workbench"], ca(state), cookie, own_origin) == 101
    # ... while a page from anywhere else is still refused by Jupyter's origin check.
    assert websocket_handshake(p["gateway_workbench"], ca(state), cookie, "https://evil.example") == 403


def test_mlflow_and_the_workbench_refuse_a_body_without_a_login_before_it_is_sent(
    stack: tuple[Path, Path],
) -> None:
    """MLflow reads a whole body into memory before its login check, and nginx would write it to
    disk first: the gateway asks the service about the credentials before it takes a large body.
    A caller announcing 64 MiB and sending 1 MiB is refused at once (buffered, nginx would wait
    for the rest); logged-in uploads of several MiB go through, byte for byte, and small JSON
    calls go on without the check (MLflow's own 401 for a wrong login)."""
    answers, state = stack
    p = ports(answers)
    wrong = "Basic " + base64.b64encode(b"appliance-writer:not-the-password").decode()
    for port, method, path, authorization, refused in (
        (p["gateway_mlflow"], "PUT", "/api/2.0/mlflow-artifacts/artifacts/0/x/big.bin", "", 401),
        (p["gateway_mlflow"], "POST", "/api/2.0/mlflow/runs/create", wrong, 401),
        (p["gateway_workbench"], "PUT", "/api/contents/big.txt", "", 403),
        (p["gateway_workbench"], "PUT", "/api/contents/big.txt", "token not-the-token", 403),
    ):
        status = partial_upload(
            port, ca(state), method, path, authorization, announced=64 << 20, sent=1 << 20
        )
        assert status == refused, (port, method, path, authorization, status)

    writer = ("appliance-writer", (state / "secrets" / "mlflow_writer_password").read_text().strip())
    blob = os.urandom(3 << 20)
    base = f"https://127.0.0.1:{p['gateway_mlflow']}"
    with httpx.Client(verify=trusting(state), timeout=60, auth=writer) as client:
        run = client.post(f"{base}/api/2.0/mlflow/runs/create", json={"experiment_id": "0"})
        assert run.status_code == 200, run.text
        artifacts = run.json()["run"]["info"]["artifact_uri"].removeprefix("mlflow-artifacts:")
        url = f"{base}/api/2.0/mlflow-artifacts/artifacts/{artifacts.strip('/')}/blob.bin"
        assert client.put(url, content=blob).status_code == 200
        assert client.get(url).content == blob
    jupyter = {"Authorization": f"token {(state / 'secrets' / 'jupyter_token').read_text().strip()}"}
    text = "written through the gateway\n" * 100_000  # 2.7 MiB
    notebook = f"https://127.0.0.1:{p['gateway_workbench']}/api/contents/gateway-upload.txt"
    with httpx.Client(verify=trusting(state), timeout=60, headers=jupyter) as client:
        saved = client.put(notebook, json={"type": "file", "format": "text", "content": text})
        assert saved.status_code in (200, 201), saved.text
        assert client.get(notebook, params={"content": 1}).json()["content"] == text
        assert client.delete(notebook).status_code == 204


def websocket_handshake(port: int, cafile: str, cookie: str, origin: str) -> int:
    """Status of a browser's WebSocket upgrade (login cookie, page origin) to Jupyter's event
    stream through the gateway."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /api/events/subscribe HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: {origin}\r\nCookie: {cookie}\r\n\r\n"
    )
    context = ssl.create_default_context(cafile=cafile)
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(request.encode())
        head = tls.recv(4096).decode(errors="replace")
    return int(head.split()[1])


def test_changing_tls_answers_recreates_the_gateway_alone(stack: tuple[Path, Path], tmp_path: Path) -> None:
    answers, state = stack
    data = yaml.safe_load(answers.read_text())
    ca_before = Path(ca(state)).read_bytes()
    pids = {
        n: s["pid"]
        for n, s in json.loads(run_cli("status", "--json", answers=answers, state=state).stdout)[
            "services"
        ].items()
    }
    data["tls"].update({"hostnames": ["models.example.internal"], "rate_limit_rps": 2})
    changed = tmp_path / "changed.yaml"
    changed.write_text(yaml.safe_dump(data))
    plan = json.loads(run_cli("plan", "--json", answers=changed, state=state).stdout)["actions"]
    assert [(a["service"], a["verb"]) for a in plan] == [("gateway", "recreate")]
    run_cli("up", answers=changed, state=state)
    after = json.loads(run_cli("status", "--json", answers=changed, state=state).stdout)["services"]
    assert {n: s["pid"] for n, s in after.items() if n != "gateway"} == {
        n: p for n, p in pids.items() if n != "gateway"
    }
    assert Path(ca(state)).read_bytes() == ca_before  # clients keep trusting the same CA file
    cert = x509.load_pem_x509_certificate((state / "secrets" / "gateway_tls_cert").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "models.example.internal" in names.get_values_for_type(x509.DNSName)
    # Rate limit: a burst well over 2/s (burst 4) gets 429s, and the gateway still answers after.
    url = f"https://127.0.0.1:{ports(changed)['gateway_serving']}/v2/health/live"
    with httpx.Client(verify=trusting(state), timeout=10) as client:
        codes = [client.get(url).status_code for _ in range(20)]
        assert 429 in codes and 200 in codes, codes
        time.sleep(1.5)
        assert client.get(url).status_code == 200
    # TLS off: the gateway goes, the services behind it stay as they are.
    data["tls"] = {"enabled": False}
    off = tmp_path / "off.yaml"
    off.write_text(yaml.safe_dump(data))
    plan = json.loads(run_cli("plan", "--json", answers=off, state=state).stdout)["actions"]
    assert [(a["service"], a["verb"]) for a in plan] == [("gateway", "remove")]
    run_cli("up", answers=off, state=state)
    run_cli("up", answers=changed, state=state)  # back on for the module's teardown
