"""The model server's alias lookup over MLflow's REST API (``serving.registry_client``), against
a small HTTP server in the test that answers as MLflow's does: what is sent (path, query,
credentials), what is retried and what is final, and that each failure names its cause."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from appliance.workloads.serving import registry_client
from appliance.workloads.serving.registry_client import RegistryError, alias_version

Answer = tuple[int, bytes]


class Registry:
    """Answers each request with the next of ``answers`` (the last one repeats); records them."""

    def __init__(self, answers: list[Answer], tls: ssl.SSLContext | None = None) -> None:
        self.answers = answers
        self.seen: list[tuple[str, dict[str, str]]] = []
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                registry.seen.append((self.path, dict(self.headers)))
                status, body = registry.answers[min(len(registry.seen), len(registry.answers)) - 1]
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_port}"


Make = Callable[[list[Answer]], Registry]


@pytest.fixture
def registry() -> Iterator[Make]:
    made: list[Registry] = []

    def make(answers: list[Answer]) -> Registry:
        made.append(Registry(answers))
        return made[-1]

    yield make
    for r in made:
        r.server.shutdown()


def version_doc(version: object) -> bytes:
    return json.dumps(
        {"model_version": {"name": "fraud", "version": version, "aliases": ["champion"]}}
    ).encode()


def env_for(url: str, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": url, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"} | extra


def test_asks_the_alias_endpoint_with_the_account(registry: Make) -> None:
    r = registry([(200, version_doc("7"))])
    env = env_for(r.url + "/", MLFLOW_TRACKING_USERNAME="appliance-reader", MLFLOW_TRACKING_PASSWORD="pw")
    assert alias_version("fraud model", "champion", env) == "7"
    path, headers = r.seen[0]
    assert path == "/api/2.0/mlflow/registered-models/alias?name=fraud+model&alias=champion"
    assert headers["Authorization"] == "Basic YXBwbGlhbmNlLXJlYWRlcjpwdw=="  # appliance-reader:pw
    token = registry([(200, version_doc(3))])  # a number in the JSON is taken too
    assert alias_version("m", "a", env_for(token.url, MLFLOW_TRACKING_TOKEN="t0k")) == "3"
    assert token.seen[0][1]["Authorization"] == "Bearer t0k"


def test_a_refusal_is_final_and_names_mlflows_error(registry: Make) -> None:
    missing = (
        b'{"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Registered model alias champion not found."}'
    )
    r = registry([(404, missing)])
    with pytest.raises(
        RegistryError, match=r"models:/fraud@champion: HTTP 404 \(RESOURCE_DOES_NOT_EXIST: .*not found"
    ):
        alias_version("fraud", "champion", env_for(r.url))
    assert len(r.seen) == 1  # a 4xx is not asked again
    denied = registry([(401, b"You are not authenticated.")])
    with pytest.raises(RegistryError, match=r"HTTP 401"):
        alias_version("fraud", "champion", env_for(denied.url))


def test_a_server_error_is_retried_as_mlflow_s_settings_say(
    registry: Make,
) -> None:
    r = registry([(503, b"busy"), (200, version_doc("2"))])
    assert alias_version("fraud", "champion", env_for(r.url)) == "2" and len(r.seen) == 2
    always = registry([(500, b"broken")])
    with pytest.raises(RegistryError, match="HTTP 500"):
        alias_version("fraud", "champion", env_for(always.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1"))
    assert len(always.seen) == 2  # the first ask and one retry


def test_an_unreachable_registry_and_odd_answers_are_named(
    registry: Make,
) -> None:
    closed = registry([(200, b"")])
    closed.server.shutdown()
    closed.server.server_close()
    with pytest.raises(RegistryError, match=r"unreachable for models:/fraud@champion"):
        alias_version("fraud", "champion", env_for(closed.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"))
    for body, said in (
        (b"<html>a proxy's page</html>", "no model version"),
        (version_doc("../2"), "not a number"),
        (b"x" * (registry_client.MAX_ANSWER_BYTES + 2), "over"),
    ):
        r = registry([(200, body)])
        with pytest.raises(RegistryError, match=said):
            alias_version("fraud", "champion", env_for(r.url))
    with pytest.raises(RegistryError, match="MLFLOW_TRACKING_URI is unset"):
        alias_version("fraud", "champion", {})


def test_an_https_registry_is_checked_against_the_given_ca(tmp_path: Path) -> None:
    """The CA file (an edge box's --registry-ca-file) is the trust root: without it the
    registry's certificate is refused; MLFLOW_TRACKING_INSECURE_TLS=true skips the check."""
    from appliance.secrets_store import SecretStore
    from appliance.tls import ensure_certificates

    files = ensure_certificates(SecretStore(tmp_path / "secrets"), ["127.0.0.1"])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.cert, files.key)
    r = Registry([(200, version_doc("4"))], tls=context)
    try:
        trusted = env_for(r.url, MLFLOW_TRACKING_SERVER_CERT_PATH=str(files.ca_cert))
        assert alias_version("fraud", "champion", trusted) == "4"
        with pytest.raises(RegistryError, match=r"unreachable .*CERTIFICATE_VERIFY_FAILED"):
            alias_version("fraud", "champion", env_for(r.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0"))
        insecure = env_for(r.url, MLFLOW_TRACKING_INSECURE_TLS="true")
        assert alias_version("fraud", "champion", insecure) == "4"
    finally:
        r.server.shutdown()


def test_following_an_alias_never_imports_mlflow_into_the_server(
    registry: Make,
) -> None:
    """The point of the module: the server's process asks the registry without MLflow (about
    140 MB resident); checked in a fresh interpreter, as a model server starts."""
    r = registry([(200, version_doc("5"))])
    code = (
        "import sys; from appliance.workloads.serving.sources import source_for; "
        "print(source_for('models:/fraud@champion').fingerprint(), 'mlflow' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=os.environ | env_for(r.url),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.split() == ["5", "False"], done.stderr[-2000:]


def test_a_download_failure_is_one_line_naming_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match=r"^models:/fraud/1: download failed: ") as caught:
        registry_client.download("fraud", "1", tmp_path)
    assert "\n" not in str(caught.value)
