"""Where a model comes from: local paths (a file, a folder holding model.onnx, a path that does not
exist yet), and that a download which fails or does not load leaves nothing on disk."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from appliance.workloads.serving import registry_client
from appliance.workloads.serving.model import SessionOptions
from appliance.workloads.serving.repository import Entry, ModelRepository
from appliance.workloads.serving.sources import MODEL_FILE, Fetched, LocalSource, Source, source_for


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


def test_a_failed_registry_download_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The poller fetches a version that failed again next round: a partial copy left each
    round would fill the disk (a broken champion, a registry gone mid-download)."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

    def partial(model: str, version: str, dest: Path) -> Path:
        (dest / "MLmodel").write_bytes(b"x" * 1000)
        raise registry_client.RegistryError(f"models:/{model}/{version}: the registry went away")

    monkeypatch.setattr(registry_client, "download", partial)
    with pytest.raises(registry_client.RegistryError, match="went away"):
        source_for("models:/fraud/3").fetch("3")
    assert list(tmp_path.iterdir()) == []

    def no_model(model: str, version: str, dest: Path) -> Path:
        (dest / "MLmodel").write_bytes(b"flavors: {}")
        return dest

    monkeypatch.setattr(registry_client, "download", no_model)
    with pytest.raises(FileNotFoundError, match=r"holds no model\.onnx"):
        source_for("models:/fraud/3").fetch("3")
    assert list(tmp_path.iterdir()) == []


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
