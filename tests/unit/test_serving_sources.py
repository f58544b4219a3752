"""Local model paths: a file, a folder holding model.onnx, and a path that does not exist yet."""

from __future__ import annotations

from pathlib import Path

from appliance.workloads.serving.sources import MODEL_FILE, LocalSource


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
