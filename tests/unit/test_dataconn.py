"""The data connection without any server: environment parsing, the filesystem store, dataset
resolution (newest file wins), parsing errors, idempotent seeding, an S3 endpoint that is down."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import pytest

from appliance.dataconn import (
    ConnectionConfigError,
    DataConnection,
    DatasetFormatError,
    DatasetNotFoundError,
    StoreUnreachableError,
    list_datasets,
    read_dataset,
    write_dataset,
)
from appliance.dataconn.seed import UnknownSeedDatasetError, seed


def fs_env(root: Path) -> dict[str, str]:
    return {"APPLIANCE_DATA_KIND": "filesystem", "APPLIANCE_DATA_ROOT": str(root)}


def test_env_without_kind_names_the_variable() -> None:
    with pytest.raises(ConnectionConfigError, match="APPLIANCE_DATA_KIND is unset"):
        DataConnection.from_env({})


def test_s3_env_lists_every_missing_variable() -> None:
    with pytest.raises(ConnectionConfigError) as err:
        DataConnection.from_env({"APPLIANCE_DATA_KIND": "s3", "AWS_S3_ENDPOINT": "http://x:1"})
    assert "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in str(err.value) and err.value.fix


def test_s3_endpoint_must_be_a_url() -> None:
    env = {"APPLIANCE_DATA_KIND": "s3", "AWS_S3_ENDPOINT": "minio:9000"} | {
        "AWS_ACCESS_KEY_ID": "a",
        "AWS_SECRET_ACCESS_KEY": "b",
    }
    with pytest.raises(ConnectionConfigError, match="must start with http"):
        DataConnection.from_env(env)


def test_filesystem_layout_uses_bucket_names_as_folders(tmp_path: Path) -> None:
    env = fs_env(tmp_path) | {"APPLIANCE_DATASETS_BUCKET": "ds", "APPLIANCE_MODELS_BUCKET": "ms"}
    conn = DataConnection.from_env(env)
    key, written = write_dataset(conn, "toy", pd.DataFrame({"a": [1, 2], "target": [0, 1]}))
    assert (key, written) == ("toy/toy.csv", True)
    assert (tmp_path / "ds" / "toy" / "toy.csv").is_file()
    assert conn.models.location == str(tmp_path / "ms")


def test_write_is_idempotent_and_read_returns_hash(tmp_path: Path) -> None:
    conn = DataConnection.from_env(fs_env(tmp_path))
    frame = pd.DataFrame({"x": [0.5, 1.5, 2.5], "target": [0, 1, 0]})
    write_dataset(conn, "toy", frame, "parquet")
    assert write_dataset(conn, "toy", frame, "parquet") == ("toy/toy.parquet", False)
    loaded = read_dataset(conn, "toy")
    pd.testing.assert_frame_equal(loaded.frame, frame)
    assert len(loaded.sha256) == 64 and loaded.uri.endswith("datasets/toy/toy.parquet")


def test_newest_file_is_current_and_key_selects_a_version(tmp_path: Path) -> None:
    conn = DataConnection.from_env(fs_env(tmp_path))
    folder = tmp_path / "datasets" / "toy"
    folder.mkdir(parents=True)
    (folder / "v1.csv").write_text("x,target\n1,0\n")
    (folder / "v2.csv").write_text("x,target\n2,1\n")
    (folder / "notes.txt").write_text("ignored")
    old = time.time() - 100
    os.utime(folder / "v1.csv", (old, old))
    assert read_dataset(conn, "toy").key == "toy/v2.csv"
    assert read_dataset(conn, "toy", "toy/v1.csv").frame["x"].tolist() == [1]
    assert [e.key for e in list_datasets(conn)] == ["toy/v1.csv", "toy/v2.csv"]


def test_missing_dataset_lists_what_exists(tmp_path: Path) -> None:
    conn = DataConnection.from_env(fs_env(tmp_path))
    write_dataset(conn, "toy", pd.DataFrame({"x": [1], "target": [0]}))
    with pytest.raises(DatasetNotFoundError) as err:
        read_dataset(conn, "nope")
    assert "available: toy" in str(err.value) and "appliance data seed --dataset nope" in str(err.value)


def test_unparseable_file_names_the_file(tmp_path: Path) -> None:
    conn = DataConnection.from_env(fs_env(tmp_path))
    folder = tmp_path / "datasets" / "broken"
    folder.mkdir(parents=True)
    (folder / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetFormatError, match=r"broken\.parquet"):
        read_dataset(conn, "broken")


def test_seed_writes_real_sklearn_data_once(tmp_path: Path) -> None:
    conn = DataConnection.from_env(fs_env(tmp_path))
    assert seed(conn, "wine") == ("wine/wine.csv", True)
    assert seed(conn, "wine") == ("wine/wine.csv", False)
    frame = read_dataset(conn, "wine").frame
    assert frame.shape == (178, 14) and sorted(frame["target"].unique()) == [0, 1, 2]
    with pytest.raises(UnknownSeedDatasetError, match="breast_cancer, wine"):
        seed(conn, "iris")


def test_s3_endpoint_down_is_named(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"APPLIANCE_DATA_KIND": "s3", "AWS_S3_ENDPOINT": f"http://127.0.0.1:{port}"}
    conn = DataConnection.from_env(env | {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"})
    with pytest.raises(StoreUnreachableError, match=f"127.0.0.1:{port}"):
        read_dataset(conn, "breast_cancer")
