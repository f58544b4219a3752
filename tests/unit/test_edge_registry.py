"""Edge boxes following a central registry: the cache of the last good version, the answers key
and what it renders, and preflight's verdict on what the box can serve."""

from __future__ import annotations

import json
import shutil
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from appliance.answers import Answers
from appliance.context import AppContext
from appliance.preflight import _model_source
from appliance.render import render_stack
from appliance.secrets_store import read_only
from appliance.workloads.serving import edge_cache, registry_client
from appliance.workloads.serving.edge_cache import CURRENT, CachedSource
from appliance.workloads.serving.sources import MODEL_FILE, PROFILE_FILE, Fetched, Source


class Registry(Source):
    """A registry alias that answers with ``version`` or raises while ``down``."""

    def __init__(self, uri: str, folder: Path) -> None:
        super().__init__(uri)
        self.folder, self.version, self.down, self.fetched = folder, "1", False, 0

    def fingerprint(self) -> str:
        if self.down:
            raise ConnectionError("Connection refused\nretries exhausted")
        return self.version

    def fetch(self, fingerprint: str) -> Fetched:
        self.fetched += 1
        out = self.folder / f"download-{fingerprint}"
        out.mkdir()
        (out / MODEL_FILE).write_text(f"onnx v{fingerprint}")
        (out / PROFILE_FILE).write_text("{}")
        return Fetched(out / MODEL_FILE, out / PROFILE_FILE, fingerprint, out)


def _load(source: CachedSource) -> Fetched:
    fingerprint = source.fingerprint()
    fetched = source.fetch(fingerprint)
    source.keep(fetched, fingerprint, fetched.version or "?")
    return fetched


def test_a_registry_that_refuses_is_named_so_and_the_cached_version_is_served(tmp_path: Path) -> None:
    """An alias deleted or an account revoked (a 4xx) is not an outage: the note says refused."""
    registry = Registry("models:/fraud@champion", tmp_path)
    cached = CachedSource(registry, tmp_path / "cache" / "fraud")
    _load(cached)

    def refused() -> str:
        raise registry_client.RegistryError("http://reg: models:/fraud@champion: HTTP 404 (no alias)", 404)

    registry.fingerprint = refused  # type: ignore[method-assign]
    assert cached.fingerprint() == "1"
    assert cached.note.startswith("source refused (http://reg: models:/fraud@champion: HTTP 404")
    assert cached.note.endswith("; serving the cached version 1")


def test_a_copy_into_the_cache_that_fails_leaves_nothing_half_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry("models:/fraud@champion", tmp_path)
    cached = CachedSource(registry, tmp_path / "cache" / "fraud")

    def full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(edge_cache.shutil, "copyfile", full)
    _load(cached)  # logged, not raised: the version is served all the same
    assert list((tmp_path / "cache" / "fraud").iterdir()) == []


def test_the_last_good_version_is_served_while_the_registry_is_down(tmp_path: Path) -> None:
    registry = Registry("models:/fraud@champion", tmp_path)
    cached = CachedSource(registry, tmp_path / "cache" / "fraud")
    with pytest.raises(ConnectionError):  # nothing cached yet: the outage is the server's problem
        registry.down = True
        cached.fingerprint()
    registry.down = False
    _load(cached)
    registry.version = "2"
    _load(cached)
    assert json.loads((tmp_path / "cache" / "fraud" / CURRENT).read_text())["version"] == "2"

    registry.down = True
    assert cached.fingerprint() == "2"
    assert cached.note == "source unreachable (Connection refused); serving the cached version 2"
    again = cached.fetch("2")
    assert again.onnx_path.read_text() == "onnx v2" and again.scratch is None
    assert again.onnx_path.parent.parent == tmp_path / "cache" / "fraud"

    # a restarted server: a new source object finds the same copy, downloads nothing
    restarted = CachedSource(
        Registry("models:/fraud@champion", tmp_path / "none"), tmp_path / "cache" / "fraud"
    )
    restarted.inner.down = True  # type: ignore[attr-defined]
    assert restarted.fingerprint() == "2" and restarted.fetch("2").onnx_path.read_text() == "onnx v2"
    assert restarted.inner.fetched == 0  # type: ignore[attr-defined]

    registry.down = False
    assert cached.fingerprint() == "2" and cached.note == ""


def test_a_model_with_external_data_loads_from_the_cache_while_the_registry_is_down(tmp_path: Path) -> None:
    """MLflow's ``log_model`` saves an ONNX model's weights beside it by default (a file named by a
    uuid): the cache keeps the whole folder, so ONNX Runtime finds them when the registry is down
    and the download is gone. Links in a download are not followed into the cache."""
    import numpy as np
    import onnxruntime as ort

    from tests.integration._serving_fixtures import matmul_weights, write_external_matmul

    weights = matmul_weights()
    download = write_external_matmul(tmp_path / "download" / "model")  # the weights' name: a uuid
    data_files = [p.name for p in download.iterdir() if p.name != MODEL_FILE]
    assert len(data_files) == 1 and (download / data_files[0]).stat().st_size == weights.nbytes
    (download / PROFILE_FILE).write_text("{}")
    (download / "secret-link").symlink_to(tmp_path / "outside")
    (tmp_path / "outside").write_text("not part of the version")

    class Registry(Source):
        down = False

        def fingerprint(self) -> str:
            if self.down:
                raise ConnectionError("Connection refused")
            return "4"

        def fetch(self, fingerprint: str) -> Fetched:
            return Fetched(download / MODEL_FILE, download / PROFILE_FILE, fingerprint, download.parent)

    registry = Registry("models:/ext@champion")
    _load(CachedSource(registry, tmp_path / "cache" / "ext"))
    shutil.rmtree(tmp_path / "download")  # the server drops its download once the session holds it

    registry.down = True
    restarted = CachedSource(registry, tmp_path / "cache" / "ext")
    fetched = restarted.fetch(restarted.fingerprint())
    assert fetched.scratch is None and fetched.profile_path is not None
    assert sorted(p.name for p in fetched.onnx_path.parent.iterdir()) == sorted(
        [MODEL_FILE, PROFILE_FILE, *data_files]
    )
    session = ort.InferenceSession(str(fetched.onnx_path), providers=["CPUExecutionProvider"])
    rows = np.ones((2, 3), dtype=np.float32)
    np.testing.assert_allclose(session.run(None, {"x": rows})[0], rows @ weights)


def test_the_cache_keeps_two_versions_and_belongs_to_one_uri(tmp_path: Path) -> None:
    registry = Registry("models:/fraud@champion", tmp_path)
    root = tmp_path / "cache" / "fraud"
    cached = CachedSource(registry, root)
    for version in ("1", "2", "3"):
        registry.version = version
        _load(cached)
    assert sorted(p.name for p in root.glob("v-*")) == ["v-2", "v-3"]
    assert registry.fetched == 3
    _load(cached)  # the cached version again: loaded from the cache, not downloaded
    assert registry.fetched == 3

    other = CachedSource(Registry("models:/fraud@challenger", tmp_path), root)
    other.inner.down = True  # type: ignore[attr-defined]
    assert other.cached() is None
    with pytest.raises(ConnectionError):
        other.fingerprint()
    (root / "v-3" / MODEL_FILE).unlink()  # a copy whose files are gone is no copy
    assert cached.cached() is None


def test_a_failed_cache_write_is_logged_and_the_version_still_counts(tmp_path: Path) -> None:
    registry = Registry("models:/fraud@champion", tmp_path)
    (tmp_path / "cache").write_text("a file where the folder should be")
    cached = CachedSource(registry, tmp_path / "cache" / "fraud")
    fetched = _load(cached)
    assert fetched.version == "1" and cached.cached() is None


# --- the answers key and what it renders ---


def _ctx(tmp_path: Path, **serving: object) -> AppContext:
    data = {"profile": "edge", "object_store": {"kind": "filesystem"}, "serving": serving}
    return AppContext(Answers.model_validate(data), tmp_path / "state")


def test_the_registry_url_and_account_reach_the_model_server(tmp_path: Path) -> None:
    ca = tmp_path / "state" / "secrets" / "registry_ca_cert"
    ctx = _ctx(tmp_path, registry={"url": "https://central.lan:5443/", "ca_file": str(ca)})
    command = render_stack(ctx)["serving"].command
    flags = dict(pairwise(command))
    assert flags["--registry-url"] == "https://central.lan:5443"
    assert flags["--registry-user"] == "appliance-reader"
    assert flags["--registry-ca-file"] == str(ca)
    assert flags["--cache-dir"] == str(tmp_path / "state" / "serving" / "cache")
    plain = render_stack(_ctx(tmp_path, model="/models/mlp"))["serving"].command
    assert "--registry-url" not in plain and "--registry-user" not in plain and "--cache-dir" in plain


def test_a_registry_url_must_be_http(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="must start with http:// or https://"):
        _ctx(tmp_path, registry={"url": "central.lan:5000"})


# --- preflight ---


def _preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: object, **serving: object) -> list:
    """``_model_source`` of an edge box whose registry answers ``answer`` (a status code or an
    exception) to every request."""

    def fake_get(url: str, **kw: object) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        assert kw["auth"] == ("appliance-reader", "central-reader-pw")
        body = {"model_version": {"version": "7"}} if answer == 200 else {"error_code": "NOT_FOUND"}
        return httpx.Response(int(answer), json=body)  # type: ignore[call-overload]

    monkeypatch.setattr(httpx, "get", fake_get)
    serving.setdefault("registry", {"url": "http://central.lan:5000"})
    ctx = _ctx(tmp_path, **serving)
    with read_only():  # as `appliance preflight` renders: no secret is made
        return _model_source(ctx, render_stack(ctx))


def _password(tmp_path: Path, mode: int = 0o600) -> None:
    secret = tmp_path / "state" / "secrets" / "mlflow_reader_password"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("central-reader-pw\n")
    secret.chmod(mode)


def _cache(tmp_path: Path, name: str, uri: str) -> None:
    folder = tmp_path / "state" / "serving" / "cache" / name
    (folder / "v-4").mkdir(parents=True)
    (folder / "v-4" / MODEL_FILE).write_text("onnx")
    meta = {"uri": uri, "fingerprint": "4", "version": "4", "folder": "v-4"}
    (folder / CURRENT).write_text(json.dumps(meta))


def test_preflight_needs_the_central_reader_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (check,) = _preflight(tmp_path, monkeypatch, 200)
    assert check.status == "fail" and "mlflow_reader_password" in check.fix and "0600" in check.fix
    _password(tmp_path, 0o644)
    (check,) = _preflight(tmp_path, monkeypatch, 200)
    assert check.status == "fail" and check.fix.startswith("chmod 600")
    _password(tmp_path)
    (check,) = _preflight(tmp_path, monkeypatch, 401)
    assert check.status == "fail" and "refuses appliance-reader's password (401)" in check.detail
    (check,) = _preflight(tmp_path, monkeypatch, 200)
    assert check.status == "pass" and "version 7 at http://central.lan:5000" in check.detail


def test_preflight_fails_an_edge_box_with_nothing_to_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _password(tmp_path)
    down = httpx.ConnectError("Connection refused")
    (check,) = _preflight(tmp_path, monkeypatch, down)
    assert check.status == "fail" and "no version of models:/breast_cancer@champion is cached" in check.detail
    assert "connect the box" in check.fix
    (check,) = _preflight(tmp_path, monkeypatch, 404)
    assert check.status == "fail" and "register the model" in check.fix
    (check,) = _preflight(tmp_path, monkeypatch, down, registry={"url": "https://c:5443", "ca_file": "/none"})
    assert check.status == "fail" and check.name == "registry CA"


def test_preflight_warns_when_the_cache_carries_the_box(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _password(tmp_path)
    _cache(tmp_path, "breast_cancer", "models:/breast_cancer@champion")
    (check,) = _preflight(tmp_path, monkeypatch, httpx.ConnectError("Connection refused"))
    assert check.status == "warn" and "version 4 cached" in check.detail
    (check,) = _preflight(tmp_path, monkeypatch, 404)
    assert check.status == "warn" and "cached version 4" in check.detail


def test_preflight_lets_a_box_start_that_serves_some_of_its_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _password(tmp_path)
    _cache(tmp_path, "fraud", "models:/fraud@champion")
    models = [{"name": "fraud"}, {"name": "churn"}]
    data = {"profile": "edge", "object_store": {"kind": "filesystem"}, "models": models}
    data["serving"] = {"registry": {"url": "http://central.lan:5000"}}
    ctx = AppContext(Answers.model_validate(data), tmp_path / "state")

    def down(url: str, **kw: object) -> httpx.Response:
        raise httpx.ConnectError("Connection refused")

    monkeypatch.setattr(httpx, "get", down)
    checks = {c.name: c for c in _model_source(ctx, render_stack(ctx))}
    assert checks["serving model fraud"].status == "warn"
    assert checks["serving model churn"].status == "warn"  # loads once the link is back


def test_without_a_registry_the_fix_names_it(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    (check,) = _model_source(ctx, render_stack(ctx))
    assert check.status == "fail" and "serving.registry.url" in check.fix
