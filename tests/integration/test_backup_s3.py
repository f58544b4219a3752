"""Backup and restore with an S3 object store, against the bundled SeaweedFS started as the
product starts it, reached as an external ``s3`` store with its admin key (the backup writes a
``backups`` bucket of its own).

The datasets, models and MLflow buckets are read into the archive through the data connection
and written back by restore; the archive itself can live in S3 (``--to s3://...``), be listed
there and restored from there.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_ports, run_cli
from tests.integration._lifecycle_fixtures import S3_KEYS, seaweedfs_keys
from tests.integration._object_store_fixtures import seaweedfs

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
OBJECTS = {
    ("datasets", "wine/wine.csv"): b"a,b,target\n1,2,0\n",
    ("models", "wine/1/model.onnx"): os.urandom(70_000),
    ("mlflow", "1/abc/artifacts/model/MLmodel"): b"flavors: {}\n",
}


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[tuple[str, Any]]:
    with seaweedfs(tmp_path / "store") as store:
        seaweedfs_keys(store, "admin")
        yield store.endpoint, store.client("admin")


def _answers(path: Path, endpoint: str) -> Path:
    store = {"kind": "s3", "endpoint": endpoint, "access_key": S3_KEYS["AWS_ACCESS_KEY_ID"]}
    path.write_text(
        yaml.safe_dump({"ports": free_ports(), "object_store": store | {"secret_key_env": "T_S3"}})
    )
    return path


def _objects(client: Any) -> dict[tuple[str, str], bytes]:
    found = {}
    for bucket in ("datasets", "models", "mlflow"):
        for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            found[(bucket, obj["Key"])] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return found


def test_s3_store_round_trip_through_an_archive_kept_in_s3(s3: tuple[str, Any], tmp_path: Path) -> None:
    endpoint, client = s3
    client.create_bucket(Bucket="backups")  # the store's buckets job made the other three
    for (bucket, key), body in OBJECTS.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    state = tmp_path / "state"
    (state / "secrets").mkdir(parents=True)
    answers = _answers(tmp_path / "appliance.yaml", endpoint)
    env = {"T_S3": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}

    def cli(*args: str, check: bool = True) -> Any:
        return run_cli(*args, answers=answers, state=state, env=env, check=check)

    done = json.loads(cli("backup", "--to", "s3://backups/nightly", "--json").stdout.splitlines()[-1])
    assert done["path"].startswith("s3://backups/nightly/appliance-backup-")
    assert done["parts"]["object-store"] == {"files": 3, "bytes": sum(len(b) for b in OBJECTS.values())}
    listed = json.loads(cli("backup", "list", "--in", "s3://backups/nightly", "--json").stdout)
    assert [row["path"] for row in listed] == [done["path"]]
    assert not (state / "backups").exists()  # nothing left behind locally

    for bucket, key in OBJECTS:  # the store loses its data
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket="mlflow")
    target = tmp_path / "restored"
    cli("restore", done["path"], "--state-dir", str(target))
    assert _objects(client) == OBJECTS
    # The store's keys were copied into the secrets at backup time and came back 0600.
    keys = target / "secrets" / "s3_secret_key"
    assert keys.read_text() == S3_KEYS["AWS_SECRET_ACCESS_KEY"] and keys.stat().st_mode & 0o777 == 0o600
