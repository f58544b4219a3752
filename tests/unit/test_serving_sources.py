"""Where a model comes from: local paths (a file, a folder holding model.onnx, a path that does not
exist yet), and that a download which fails or does not load leaves nothing on disk."""

from __future__ import annotations

import asyncio
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest

from appliance.workloads.serving import downloads, failed_versions, registry_client
from appliance.workloads.serving.errors import BadRequest, Unavailable
from appliance.workloads.serving.model import SessionOptions
from appliance.workloads.serving.repository import Entry, ModelRepository
from appliance.workloads.serving.sources import MODEL_FILE, Fetched, LocalSource, Source, source_for
from tests.integration._serving_fixtures import write_mlp


def test_a_folder_or_a_file_given_as_they_are(tmp_path: Path) -> None:
    (tmp_path / "mlp").mkdir()
    assert LocalSource(str(tmp_path / "mlp")).onnx == tmp_path / "mlp" / MODEL_FILE
    (tmp_path / "other.bin").write_bytes(b"")
    source = LocalSource(f"file://{tmp_path / 'other.bin'}")
    assert source.onnx == tmp_path / "other.bin" and source.default_name() == "other"


def test_a_missing_path_is_a_folder_unless_it_names_an_onnx_file(tmp_path: Path) -> None:
    later = LocalSource(str(tmp_path / "models" / "mlp"))
    assert later.onnx == tmp_path / "models" / "mlp" / MODEL_FILE and later.default_name() == "mlp"
    named = LocalSource(str(tmp_path / "models" / "fraud.onnx"))
    assert named.onnx == tmp_path / "models" / "fraud.onnx" and named.default_name() == "fraud"


def _left_in(tmp: Path) -> list[Path]:
    """What downloads left in the temporary folder ``tmp``, besides the process's own (empty)
    downloads folders."""
    return [p for p in tmp.rglob("*") if not (p.parent == tmp and p.name.startswith(downloads.PREFIX))]


def test_a_failed_registry_download_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller fetches a version that failed again next round: a partial copy left each
    round would fill the disk (a broken champion, a registry gone mid-download)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def partial(model: str, version: str, dest: Path, stopping: object) -> Path:
        (dest / "MLmodel").write_bytes(b"x" * 1000)
        raise registry_client.RegistryError(f"models:/{model}/{version}: the registry went away")

    monkeypatch.setattr(registry_client, "download", partial)
    with pytest.raises(registry_client.RegistryError, match="went away"):
        source_for("models:/fraud/3").fetch("3")
    assert _left_in(tmp_path) == []

    def no_model(model: str, version: str, dest: Path, stopping: object) -> Path:
        (dest / "MLmodel").write_bytes(b"flavors: {}")
        return dest

    monkeypatch.setattr(registry_client, "download", no_model)
    with pytest.raises(FileNotFoundError, match=r"holds no model\.onnx"):
        source_for("models:/fraud/3").fetch("3")
    assert _left_in(tmp_path) == []


class _BrokenVersion(Source):
    """A source whose every version downloads fine but is no ONNX model."""

    def __init__(self, folder: Path) -> None:
        super().__init__("models:/broken@champion")
        self.folder = folder
        self.fetched: list[Path] = []

    def fingerprint(self) -> str:
        return "7"

    def fetch(self, fingerprint: str) -> Fetched:
        scratch = Path(tempfile.mkdtemp(dir=self.folder))
        (scratch / MODEL_FILE).write_bytes(b"not an onnx model")
        self.fetched.append(scratch)
        return Fetched(scratch / MODEL_FILE, None, fingerprint, scratch)


def test_a_version_that_does_not_load_leaves_no_download_behind(tmp_path: Path) -> None:
    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    source = _BrokenVersion(tmp_path)
    entry = Entry("broken", source)
    for _ in range(2):  # two poll rounds, two downloads of the same broken version
        with pytest.raises(Exception, match=r"(?i)protobuf|invalid|load"):
            repository.load_blocking(entry)
    assert len(source.fetched) == 2 and list(tmp_path.iterdir()) == []
    assert entry.model is None


class _Versions(Source):
    """A registry alias whose version the test moves; each version downloads as the test says:
    ``good`` ones are a real model, the others no ONNX model at all."""

    def __init__(self, folder: Path, model: Path) -> None:
        super().__init__("models:/fraud@champion")
        self.folder, self.model = folder, model
        self.version, self.good = "7", False
        self.fetched: list[str] = []

    def fingerprint(self) -> str:
        return self.version

    def fetch(self, fingerprint: str) -> Fetched:
        scratch = Path(tempfile.mkdtemp(dir=self.folder))
        body = (self.model / MODEL_FILE).read_bytes() if self.good else b"not an onnx model"
        (scratch / MODEL_FILE).write_bytes(body)
        self.fetched.append(fingerprint)
        return Fetched(scratch / MODEL_FILE, None, fingerprint, scratch)


def _poll_round(repository: ModelRepository, entry: Entry) -> bool | None:
    """What one poller round does with the entry: True loaded, False nothing, None failed."""
    try:
        return repository.load_blocking(entry, None, retry_now=False)
    except Exception:
        return None


def test_a_version_that_failed_is_fetched_again_later_and_later_until_the_alias_moves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broken champion is not downloaded every poll round: the next round after its first failure
    (30 s by default), then two rounds later, four, ... at most 15 minutes apart; a new version named
    by the alias is fetched at once."""
    clock = [1000.0]
    monkeypatch.setattr(failed_versions, "clock", lambda: clock[0])
    (tmp_path / "downloads").mkdir()
    source = _Versions(tmp_path / "downloads", write_mlp(tmp_path / "mlp"))
    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    entry = Entry("fraud", source)

    assert _poll_round(repository, entry) is None and source.fetched == ["7"]
    waits = []
    for _ in range(7):
        assert entry.failed is not None
        wait = entry.failed.retry_at - clock[0]
        clock[0] += wait - 1  # a round just before the wait is over: nothing fetched
        assert _poll_round(repository, entry) is False
        clock[0] += 1
        assert _poll_round(repository, entry) is None  # tried again, failed again
        waits.append(wait)
    assert waits == [30, 60, 120, 240, 480, 900, 900]
    assert source.fetched == ["7"] * 8 and entry.model is None
    assert list((tmp_path / "downloads").iterdir()) == []

    source.version, source.good = "8", True  # the alias moves: fetched in the same round
    assert _poll_round(repository, entry) is True
    assert entry.model is not None and entry.model.version == "8" and entry.failed is None

    source.version, source.good = "9", False  # a broken successor: version 8 stays served
    assert _poll_round(repository, entry) is None
    assert _poll_round(repository, entry) is False and source.fetched[-2:] == ["8", "9"]
    assert entry.model.version == "8"


def test_a_load_through_the_api_tries_a_failed_version_at_once(tmp_path: Path) -> None:
    """The repository API's load (an operator's, or the server's own at start) is not held back."""
    source = _Versions(tmp_path, tmp_path)
    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    entry = Entry("fraud", source)
    assert _poll_round(repository, entry) is None
    with pytest.raises(Exception, match=r"(?i)protobuf|invalid|load"):
        repository.load_blocking(entry)
    assert source.fetched == ["7", "7"] and entry.failed is not None and entry.failed.failures == 2


def test_the_waits_double_from_one_poll_round_to_a_quarter_hour(monkeypatch: pytest.MonkeyPatch) -> None:
    assert [failed_versions.wait_after(n) for n in range(1, 8)] == [30, 60, 120, 240, 480, 900, 900]
    assert [failed_versions.wait_after(n, first=1.0) for n in (1, 2, 10, 11)] == [1, 2, 512, 900]
    assert failed_versions.wait_after(3, first=3600.0) == 3600  # a round longer than the cap: a round
    clock = [0.0]
    monkeypatch.setattr(failed_versions, "clock", lambda: clock[0])
    record = failed_versions.failed_again(None, "7")

    def held_at(fingerprint: str, now: float) -> bool:
        clock[0] = now
        return record.held_back(fingerprint)

    assert held_at("7", 29.9) and not held_at("7", 30.0)
    assert not held_at("7", 29.999)  # a round whose timer fires a millisecond early
    assert not held_at("8", 1.0)  # another version is never held back
    clock[0] = 0.0
    assert failed_versions.failed_again(record, "8").failures == 1


def _registry(monkeypatch: pytest.MonkeyPatch, model: Path, versions: dict[str, str]) -> list[str]:
    """A registry whose aliases name ``versions`` (model -> version) and whose every version is the
    model in ``model``; returns the downloads made, as MODEL/VERSION."""
    downloads: list[str] = []
    monkeypatch.setattr(tempfile, "tempdir", str(model.parent))  # the downloads' folders: the test's

    def download(name: str, version: str, dest: Path, stopping: object) -> Path:
        downloads.append(f"{name}/{version}")
        (dest / MODEL_FILE).write_bytes((model / MODEL_FILE).read_bytes())
        return dest

    monkeypatch.setattr(registry_client, "alias_version", lambda name, alias, stopping: versions[name])
    monkeypatch.setattr(registry_client, "download", download)
    return downloads


def test_a_load_from_another_source_fetches_it_even_when_its_version_number_is_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3 of models:/b is not version 3 of models:/a: switching sources loads b."""
    downloads = _registry(monkeypatch, write_mlp(tmp_path / "mlp"), {"a": "3", "b": "3"})
    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    entry = repository.add("fraud", "models:/a@champion")
    assert repository.load_blocking(entry) is True and downloads == ["a/3"]
    assert repository.load_blocking(entry, "models:/b@champion") is True
    assert downloads == ["a/3", "b/3"] and entry.model is not None
    assert entry.model.source == "models:/b@champion"


@pytest.mark.asyncio
async def test_a_new_model_name_given_to_load_must_be_a_valid_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name new to the server becomes its cache folder: a path in it is refused, nothing written."""
    downloads = _registry(monkeypatch, write_mlp(tmp_path / "mlp"), {"a": "3"})
    cache = tmp_path / "cache"
    repository = ModelRepository(
        SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100, cache_dir=cache
    )
    repository.add("fraud", "models:/a@champion")
    for name in ("../../escaped", "/tmp/x", "a/../fraud", ".hidden", ""):
        with pytest.raises(BadRequest, match=r"is not|contains|holds|is empty"):
            await repository.load(name, "models:/a@champion")
    assert downloads == [] and set(repository.entries) == {"fraud"} and not (tmp_path / "escaped").exists()
    await repository.load("fraud-2", "models:/a@champion")
    assert downloads == ["a/3"] and (cache / "fraud-2").is_dir()


def test_each_process_downloads_into_its_own_folder_and_removes_it_at_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stopped server leaves no copy of its model; one killed leaves its folder to the next."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = tmp_path / f"{downloads.PREFIX}{dead.pid}-abc"
    (killed / "fraud-v3-x").mkdir(parents=True)
    (killed / "fraud-v3-x" / MODEL_FILE).write_bytes(b"a model")
    parent = tmp_path / f"{downloads.PREFIX}{os.getppid()}-def"  # a server still running
    parent.mkdir()
    elsewhere = tmp_path / "other"
    elsewhere.mkdir()
    link = tmp_path / f"{downloads.PREFIX}{dead.pid}-link"
    link.symlink_to(elsewhere)
    earlier = tmp_path / f"{downloads.PREFIX}{os.getpid()}-old"  # a restarted container's same PID
    earlier.mkdir()

    first = downloads.new_download("fraud-v4-")
    second = downloads.new_download("fraud-v5-")
    own = first.parent
    assert (
        second.parent == own
        and own.parent == tmp_path
        and own.name.startswith(f"{downloads.PREFIX}{os.getpid()}-")
    )
    assert not killed.exists() and parent.is_dir() and link.is_symlink() and elsewhere.is_dir()
    assert not earlier.exists()

    downloads.remove_all()  # what atexit runs
    assert not own.exists() and parent.is_dir()
    assert downloads.new_download("fraud-v6-").parent != own  # a new folder once the old one is gone
    downloads.remove_all()


@pytest.mark.asyncio
async def test_a_load_stuck_on_a_slow_registry_takes_none_of_the_inference_threads(tmp_path: Path) -> None:
    """Loads run on threads of their own: while one waits on a registry, every inference thread
    (the batches') is free."""
    release = threading.Event()

    class Slow(_Versions):
        def fetch(self, fingerprint: str) -> Fetched:
            release.wait(10)
            return super().fetch(fingerprint)

    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    repository.entries["fraud"] = entry = Entry("fraud", Slow(tmp_path, tmp_path))
    loading = asyncio.ensure_future(repository.load("fraud"))
    await asyncio.sleep(0.2)
    all_four = threading.Barrier(4, timeout=5)  # the four inference threads at once
    batches = [
        asyncio.get_running_loop().run_in_executor(repository.executor, all_four.wait) for _ in range(4)
    ]
    await asyncio.gather(*batches)
    release.set()
    with pytest.raises(Unavailable):  # that version is no model: the load itself fails, later
        await loading
    assert entry.failed is not None


@pytest.mark.asyncio
@pytest.mark.parametrize("good", [True, False], ids=["version loads", "version fails"])
async def test_an_unload_during_a_poll_round_load_is_not_undone_by_it(tmp_path: Path, good: bool) -> None:
    """The repository API's unload answers at once, even while the poller fetches a new version
    (its lock held), and that load, finishing later, serves nothing and keeps no download; a
    failed one leaves the entry's reason as ``unloaded``."""
    fetching, release = threading.Event(), threading.Event()

    class Slow(_Versions):
        def fetch(self, fingerprint: str) -> Fetched:
            if self.version == "8":
                fetching.set()
                release.wait(10)
            return super().fetch(fingerprint)

    (tmp_path / "downloads").mkdir()
    source = Slow(tmp_path / "downloads", write_mlp(tmp_path / "mlp"))
    source.good = True
    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    repository.entries["fraud"] = entry = Entry("fraud", source)
    await repository.load("fraud")
    assert entry.model is not None and entry.model.version == "7"

    source.version, source.good = "8", good  # the alias moves: the next round fetches v8
    polling = asyncio.get_running_loop().run_in_executor(
        repository.loader, lambda: _poll_round(repository, entry)
    )
    assert await asyncio.to_thread(fetching.wait, 10)
    repository.unload("fraud")  # the load lock is held by the round: unload does not wait for it
    assert (entry.model, entry.state, entry.reason) == (None, "UNAVAILABLE", "unloaded")
    release.set()
    assert await polling is (False if good else None)
    assert (entry.model, entry.batcher, entry.state, entry.reason) == (None, None, "UNAVAILABLE", "unloaded")
    assert entry.scratch is None and list((tmp_path / "downloads").iterdir()) == []
    assert repository.all_ready(), "an unloaded model does not hold back readiness"
    assert _poll_round(repository, entry) is False and source.fetched == ["7", "8"], "unloaded: left alone"

    source.good = True  # loaded again through the API: v8 is served
    await repository.load("fraud")
    assert entry.model is not None and entry.model.version == "8" and entry.state == "READY"


def test_a_local_model_with_external_data_reloads_when_only_its_weights_change(tmp_path: Path) -> None:
    """A folder whose model.onnx keeps its weights in ``weights.bin``: new weights written under
    the same name are a new version, though model.onnx is untouched; unchanged files are not."""
    import numpy as np

    from tests.integration._serving_fixtures import matmul_weights, write_external_matmul

    write_external_matmul(tmp_path, 1.0, "weights.bin")
    repository = ModelRepository(SessionOptions(), max_batch_size=1, max_queue_delay_s=0.0, drift_window=100)
    entry = Entry("ext", source_for(str(tmp_path)))
    assert repository.load_blocking(entry) is True
    assert repository.load_blocking(entry, None, retry_now=False) is False, "the same files: no reload"
    model_file = (tmp_path / MODEL_FILE).stat()

    weights = tmp_path / "weights.bin"  # one tensor, its raw bytes from offset 0
    before = weights.stat().st_mtime_ns
    weights.write_bytes(matmul_weights(3.0).tobytes())
    os.utime(weights, ns=(before + 10**9, before + 10**9))  # a clock that did not tick between writes
    assert (tmp_path / MODEL_FILE).stat().st_mtime_ns == model_file.st_mtime_ns
    assert repository.load_blocking(entry, None, retry_now=False) is True
    assert entry.model is not None and entry.model.version == "2"
    rows = np.ones((1, 3), dtype=np.float32)
    got = entry.model.session.run(None, {"x": rows})[0]
    np.testing.assert_allclose(got, rows @ matmul_weights(3.0))
    assert repository.load_blocking(entry, None, retry_now=False) is False
