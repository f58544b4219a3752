"""The model server's alias lookup over MLflow's REST API (``serving.registry_client``), against
a small HTTP server in the test that answers as MLflow's does: what is sent (path, query,
credentials), what is retried and what is final, and that each failure names its cause."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
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
                registry.reply(self, *registry.answer(self.path))

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_port}"

    def answer(self, path: str) -> Answer:
        return self.answers[min(len(self.seen), len(self.answers)) - 1]

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        handler.send_response(status)
        if 300 <= status < 400:
            handler.send_header("Location", "/elsewhere")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


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


def test_a_redirect_is_not_followed_with_the_account(registry: Make) -> None:
    r = registry([(302, b""), (200, version_doc("9"))])
    env = env_for(r.url, MLFLOW_TRACKING_USERNAME="appliance-reader", MLFLOW_TRACKING_PASSWORD="pw")
    with pytest.raises(RegistryError, match="HTTP 302"):
        alias_version("fraud", "champion", env)
    asked = [path for path, _ in r.seen]
    assert asked == ["/api/2.0/mlflow/registered-models/alias?name=fraud&alias=champion"]  # not /elsewhere


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


class ArtifactStore(Registry):
    """MLflow's answers for one registered version whose files are in the registry's own store
    (``--serve-artifacts``): get-download-uri, the folder listings (an empty file without a
    size, as MLflow lists it), the files. Any other path is a 404, as MLflow answers; every
    request is recorded with its headers. ``odd`` sends a file its own way (``Send``)."""

    ROOT = "1/models/m-abc/artifacts"

    def __init__(
        self,
        files: dict[str, bytes],
        listings: dict[str, list[dict[str, Any]]] | None = None,
        uri: str = f"mlflow-artifacts:/{ROOT}",
        odd: dict[str, Send] | None = None,
    ) -> None:
        routes: dict[str, bytes] = {
            "/api/2.0/mlflow/model-versions/get-download-uri?name=fraud&version=3": json.dumps(
                {"artifact_uri": uri}
            ).encode()
        }
        folders: dict[str, list[dict[str, Any]]] = {}
        for rel, data in files.items():
            parts = rel.split("/")
            for depth in range(len(parts)):
                folder = "/".join([self.ROOT, *parts[:depth]])
                entry = {"path": parts[depth], "is_dir": depth < len(parts) - 1}
                if not entry["is_dir"] and data:  # MLflow leaves a size of 0 out
                    entry["file_size"] = len(data)
                if entry not in folders.setdefault(folder, []):
                    folders[folder].append(entry)
            routes[f"{registry_client.ARTIFACTS_API}/{self.ROOT}/{rel}"] = data
        for folder, entries in (folders | (listings or {})).items():
            query = urllib.parse.urlencode({"path": folder})
            routes[f"{registry_client.ARTIFACTS_API}?{query}"] = json.dumps({"files": entries}).encode()
        self.routes = routes
        self.odd = {
            f"{registry_client.ARTIFACTS_API}/{self.ROOT}/{rel}": send for rel, send in (odd or {}).items()
        }
        super().__init__([])

    def answer(self, path: str) -> Answer:
        body = self.routes.get(path)
        return (404, b'{"error_code": "RESOURCE_DOES_NOT_EXIST"}') if body is None else (200, body)

    def reply(self, handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
        send = self.odd.get(handler.path)
        if send is None:
            return super().reply(handler, status, body)
        try:
            send(handler, body, sum(path == handler.path for path, _ in self.seen))
        except OSError:  # the client gave up first
            handler.close_connection = True


Send = Callable[[BaseHTTPRequestHandler, bytes, int], None]
"""Sends ``body`` as the answer to the ``n``th request for it (from 1), its own way."""


def cut_off(times: int, chunked: bool) -> Send:
    """The first ``times`` answers stop halfway and the connection closes (a registry or proxy
    restarting): a chunked answer without its last chunk, or one short of its Content-Length."""

    def send(handler: BaseHTTPRequestHandler, body: bytes, n: int) -> None:
        sent = body[: len(body) // 2] if n <= times else body
        handler.send_response(200)
        handler.send_header(
            *(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(len(body))))
        )
        handler.end_headers()
        handler.wfile.write(b"%x\r\n%s\r\n" % (len(sent), sent) if chunked else sent)
        if chunked and n > times:
            handler.wfile.write(b"0\r\n\r\n")
        handler.close_connection = True

    return send


def trickle(every_s: float) -> Send:
    """One byte every ``every_s`` seconds: never silent for a whole request timeout."""

    def send(handler: BaseHTTPRequestHandler, body: bytes, n: int) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        for byte in body:
            handler.wfile.write(bytes([byte]))
            time.sleep(every_s)

    return send


@pytest.fixture
def stores() -> Iterator[list[ArtifactStore]]:
    made: list[ArtifactStore] = []
    yield made
    for store in made:
        store.server.shutdown()


def test_a_version_in_the_registry_s_own_store_is_fetched_over_its_rest_api(
    stores: list[ArtifactStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The layout, every byte, and the account on every request; MLflow's client (the child
    process) is never started for the appliance's own registry."""
    files = {
        "model.onnx": os.urandom(3 * registry_client.CHUNK_BYTES + 7),  # more than one chunk
        "drift_profile.json": b'{"features": []}',
        "MLmodel": b"flavors: {}",
        "extra/nested/notes.txt": b"a folder two deep",
        "requirements.txt": b"",  # listed without a size, as MLflow lists an empty file
    }
    store = ArtifactStore(files)
    stores.append(store)
    monkeypatch.setattr(registry_client, "_download_with_mlflow", lambda *a: pytest.fail(f"child for {a}"))
    env = env_for(store.url, MLFLOW_TRACKING_TOKEN="t0k")
    assert registry_client.download("fraud", "3", tmp_path, env) == tmp_path
    got = {str(p.relative_to(tmp_path)): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert got == files
    assert all(headers["Authorization"] == "Bearer t0k" for _, headers in store.seen), store.seen


def test_a_version_elsewhere_goes_to_mlflow_s_own_client(
    stores: list[ArtifactStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An external registry whose artifacts are in S3, or a store on another host, or a version
    that is not a number (``models:/NAME/latest``): MLflow's client resolves it, in the child."""
    asked: list[tuple[str, str]] = []

    def child(model: str, version: str, dest: Path, stopping: threading.Event) -> Path:
        asked.append((model, version))
        return dest

    monkeypatch.setattr(registry_client, "_download_with_mlflow", child)
    for uri in ("s3://bucket/models/m-abc/artifacts", "mlflow-artifacts://other-host:5000/1/x"):
        store = ArtifactStore({"model.onnx": b"x"}, uri=uri)
        stores.append(store)
        assert registry_client.download("fraud", "3", tmp_path, env_for(store.url)) == tmp_path
        assert len(store.seen) == 1  # the download URI only, not the files
    registry_client.download("fraud", "latest", tmp_path, env_for(store.url))
    assert asked == [("fraud", "3"), ("fraud", "3"), ("fraud", "latest")]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("entry", "said"),
    [
        ({"path": "..", "is_dir": True}, "not a file name"),
        ({"path": "../../escape.onnx", "is_dir": False, "file_size": 1}, "not a file name"),
        ({"path": "", "is_dir": False}, "not a file name"),
        ({"path": "model.onnx", "is_dir": False, "file_size": 2}, "1 B of the 2 B"),
        ({"path": "model.onnx", "is_dir": False, "file_size": 0}, "more than the 0 B"),
        ({"path": "model.onnx", "is_dir": False, "file_size": -1}, r"model.onnx the size -1, not a number"),
        ({"path": "model.onnx", "is_dir": False, "file_size": "1.0"}, r"the size '1.0', not a number"),
    ],
)
def test_a_hostile_listing_writes_nothing_outside_and_names_what_is_wrong(
    stores: list[ArtifactStore], tmp_path: Path, entry: dict[str, Any], said: str
) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    store = ArtifactStore({"model.onnx": b"x"}, listings={ArtifactStore.ROOT: [entry]})
    stores.append(store)
    with pytest.raises(RegistryError, match=said):
        registry_client.download("fraud", "3", dest, env_for(store.url))
    assert [p.name for p in tmp_path.rglob("*")] in (["dest"], ["dest", "model.onnx"])


def test_a_listing_past_the_bounds_is_refused(
    stores: list[ArtifactStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    twice = [{"path": "a", "is_dir": False, "file_size": 1}] * 2
    store = ArtifactStore({"model.onnx": b"x"}, listings={ArtifactStore.ROOT: twice})
    stores.append(store)
    with pytest.raises(RegistryError, match="names a file twice"):
        registry_client.download("fraud", "3", tmp_path / "a", env_for(store.url))
    deep = "/".join(f"d{n}" for n in range(registry_client.MAX_DEPTH + 1)) + "/model.onnx"
    store = ArtifactStore({deep: b"x"})
    stores.append(store)
    (tmp_path / "b").mkdir()
    with pytest.raises(RegistryError, match="folders deep"):
        registry_client.download("fraud", "3", tmp_path / "b", env_for(store.url))
    monkeypatch.setattr(registry_client, "MAX_FILES", 3)
    store = ArtifactStore({f"f{n}": b"x" for n in range(4)})
    stores.append(store)
    (tmp_path / "c").mkdir()
    with pytest.raises(RegistryError, match="over 3 files"):
        registry_client.download("fraud", "3", tmp_path / "c", env_for(store.url))


def test_a_download_failure_is_one_line_naming_the_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(RegistryError, match=r"unreachable for models:/fraud/1: ") as caught:
        registry_client.download("fraud", "1", tmp_path)
    assert "\n" not in str(caught.value)
    with pytest.raises(RegistryError, match=r"^models:/fraud/latest: download failed: ") as caught:
        registry_client.download("fraud", "latest", tmp_path)  # MLflow's client, in the child
    assert "\n" not in str(caught.value)


def test_a_full_disk_is_this_host_s_problem_and_not_asked_again(
    stores: list[ArtifactStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writing the download fails here (ENOSPC): not an unreachable registry, not retried; the
    message names the file, the download folder and what to do."""
    store = ArtifactStore({"model.onnx": os.urandom(2 * registry_client.CHUNK_BYTES)})
    stores.append(store)

    class FullDisk(io.FileIO):
        def write(self, data: Any) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(registry_client, "open", lambda file, mode: FullDisk(file, mode), raising=False)
    with pytest.raises(registry_client.DownloadDiskError) as caught:
        registry_client.download("fraud", "3", tmp_path, env_for(store.url))
    said = str(caught.value)
    assert said == (
        f"models:/fraud/3 ({ArtifactStore.ROOT}/model.onnx): writing {tmp_path / 'model.onnx'} failed "
        f"on this host, not at the registry (No space left on device): free disk space where the "
        f"download folder {tmp_path} lies"
    )
    asked = [path for path, _ in store.seen]
    assert asked.count(f"{registry_client.ARTIFACTS_API}/{ArtifactStore.ROOT}/model.onnx") == 1


@pytest.mark.parametrize("chunked", [True, False])
def test_an_answer_that_breaks_off_is_asked_again_then_named(
    stores: list[ArtifactStore], tmp_path: Path, chunked: bool
) -> None:
    """A file's answer cut off (a chunked one raises http.client.IncompleteRead, one short of
    its Content-Length ends quietly) is a network failure: asked again, then named with the
    registry and the file. Listed without a size, the short one would pass unnoticed."""
    data = os.urandom(100)
    listing = {ArtifactStore.ROOT: [{"path": "model.onnx", "is_dir": False}]}
    store = ArtifactStore({"model.onnx": data}, listing, odd={"model.onnx": cut_off(1, chunked)})
    stores.append(store)
    (tmp_path / "a").mkdir()
    registry_client.download("fraud", "3", tmp_path / "a", env_for(store.url))
    assert (tmp_path / "a" / "model.onnx").read_bytes() == data
    file = f"{registry_client.ARTIFACTS_API}/{ArtifactStore.ROOT}/model.onnx"
    assert [path for path, _ in store.seen].count(file) == 2
    store = ArtifactStore({"model.onnx": data}, listing, odd={"model.onnx": cut_off(9, chunked)})
    stores.append(store)
    (tmp_path / "b").mkdir()
    broke = "IncompleteRead" if chunked else "the connection closed 50 B before the end"
    with pytest.raises(
        RegistryError,
        match=rf"^{re.escape(store.url)}: models:/fraud/3 \({ArtifactStore.ROOT}/model.onnx\): "
        rf"the answer broke off: {broke}",
    ):
        registry_client.download(
            "fraud", "3", tmp_path / "b", env_for(store.url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1")
        )
    assert [path for path, _ in store.seen].count(file) == 2


def test_a_trickling_registry_meets_the_version_s_deadline(
    stores: list[ArtifactStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte now and then resets every read's timeout; the whole download still ends at
    FETCH_TIMEOUT_S, named with the registry, the version and the file."""
    monkeypatch.setattr(registry_client, "FETCH_TIMEOUT_S", 1.0)
    store = ArtifactStore({"model.onnx": b"x" * 30}, odd={"model.onnx": trickle(0.2)})  # 6 s in all
    stores.append(store)
    started = time.monotonic()
    with pytest.raises(
        RegistryError,
        match=rf"^{re.escape(store.url)}: models:/fraud/3 \({ArtifactStore.ROOT}/model.onnx\): "
        r"not done after 1 s, the most one version's download may take",
    ):
        registry_client.download("fraud", "3", tmp_path, env_for(store.url, MLFLOW_HTTP_REQUEST_TIMEOUT="5"))
    assert time.monotonic() - started < 3


def test_a_download_in_progress_gives_up_when_the_server_stops(
    stores: list[ArtifactStore], tmp_path: Path
) -> None:
    """The server's exit joins the thread of a running download: stopping ends it at its next
    read, not at FETCH_TIMEOUT_S (30 minutes)."""
    store = ArtifactStore({"model.onnx": b"x" * 300}, odd={"model.onnx": trickle(0.1)})  # 30 s in all
    stores.append(store)
    stopping, failed = threading.Event(), []

    def fetch() -> None:
        try:
            registry_client.download("fraud", "3", tmp_path, env_for(store.url), stopping=stopping)
        except RegistryError as err:
            failed.append(str(err))

    worker = threading.Thread(target=fetch)
    worker.start()
    time.sleep(1.0)
    assert worker.is_alive(), "still downloading"
    stopping.set()
    started = time.monotonic()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - started < 2
    assert failed == [
        f"models:/fraud/3 ({ArtifactStore.ROOT}/model.onnx): given up, the model server is stopping"
    ]


def test_a_version_over_its_byte_cap_is_refused(
    stores: list[ArtifactStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listing's sizes together, before a file is asked for; a file listed without a size
    (MLflow's way for an empty file) may take what the listed ones leave, no more."""
    monkeypatch.setattr(registry_client, "MAX_VERSION_BYTES", 10)
    store = ArtifactStore({"model.onnx": b"x" * 8, "extra/profile.json": b"y" * 3})
    stores.append(store)
    (tmp_path / "a").mkdir()
    with pytest.raises(RegistryError, match=r"models:/fraud/3 lists 11 B of files, over the 10 B a version"):
        registry_client.download("fraud", "3", tmp_path / "a", env_for(store.url))
    assert not [p for p, _ in store.seen if p.startswith(f"{registry_client.ARTIFACTS_API}/")]
    assert list((tmp_path / "a").iterdir()) == []
    unsized = [{"path": "model.onnx", "is_dir": False, "file_size": 4}, {"path": "blob", "is_dir": False}]
    store = ArtifactStore({"model.onnx": b"x" * 4, "blob": b"y" * 7}, {ArtifactStore.ROOT: unsized})
    stores.append(store)
    (tmp_path / "b").mkdir()
    with pytest.raises(
        RegistryError,
        match=rf"models:/fraud/3 \({ArtifactStore.ROOT}/blob\): listed without a size, and over the 6 B "
        r"left of the 10 B",
    ):
        registry_client.download("fraud", "3", tmp_path / "b", env_for(store.url))
    store = ArtifactStore({"model.onnx": b"x" * 4, "blob": b"y" * 6}, {ArtifactStore.ROOT: unsized})
    stores.append(store)
    (tmp_path / "c").mkdir()
    registry_client.download("fraud", "3", tmp_path / "c", env_for(store.url))
    assert (tmp_path / "c" / "blob").read_bytes() == b"y" * 6
