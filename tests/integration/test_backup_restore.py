"""Backup and restore on a real lab stack (local runtime): MLflow with its users, the model
server, two datasets and two trained versions of a model with a champion.

One backup is taken while the model server answers a steady light load (no request may fail),
then restored into a fresh state directory and brought up on other free ports: the same registered
versions and champion in MLflow, the same runs, the same predictions for the same rows, and the
same tokens and passwords accepted. Damaged archives (one byte flipped, cut short) are refused
before anything is touched; an encrypted archive needs its passphrase; ``backup list`` and
``verify`` write nothing; an older appliance refuses a state a newer one wrote.

Timings and sizes are printed (``pytest -s``): docs/backup.md quotes them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.conftest import free_ports, run_cli

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
MODEL = "breast_cancer"
ROWS = 5


@dataclass
class Lab:
    answers: Path
    state: Path

    def cli(self, *args: str, check: bool = True, timeout: float = 600) -> Any:
        return run_cli(*args, answers=self.answers, state=self.state, check=check, timeout=timeout)

    @property
    def ports(self) -> dict[str, int]:
        data: dict[str, int] = yaml.safe_load(self.answers.read_text())["ports"]
        return data

    def secret(self, name: str) -> str:
        return (self.state / "secrets" / name).read_text().strip()

    @property
    def serving(self) -> str:
        return f"http://127.0.0.1:{self.ports['serving_http']}/v2/models/{MODEL}"

    @property
    def mlflow(self) -> str:
        return f"http://127.0.0.1:{self.ports['mlflow']}"


def lab_answers(path: Path, state: Path) -> Path:
    data = {
        "profile": "lab",
        "state_dir": str(state),
        "ports": free_ports(),
        "health_timeout_seconds": 240,
        "object_store": {"kind": "filesystem"},
        "components": {"workbench": False, "monitoring": False, "controller": False},
        "serving": {"poll_seconds": 1},
    }
    path.write_text(yaml.safe_dump(data))
    return path


def wait_for(what: str, probe: Any, timeout: float = 180) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def served_version(lab: Lab, token: str) -> str | None:
    try:
        reply = httpx.get(lab.serving, headers={"Authorization": f"Bearer {token}"}, timeout=5)
    except httpx.HTTPError:
        return None
    return str(reply.json()["versions"][0]) if reply.status_code == 200 else None


def rows(lab: Lab) -> list[list[float]]:
    """The first rows of the seeded dataset, features only."""
    csv = next((lab.state / "data" / "datasets" / MODEL).rglob("*.csv"))
    lines = csv.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, name in enumerate(header) if name != "target"]
    return [[float(line.split(",")[i]) for i in keep] for line in lines[1 : 1 + ROWS]]


def predict(lab: Lab, token: str, data: list[list[float]]) -> Any:
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(data), len(data[0])], "data": data}]
    }
    reply = httpx.post(
        f"{lab.serving}/infer", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return [(o["name"], o["data"]) for o in reply.json()["outputs"]]


def registry(lab: Lab, password: str) -> dict[str, Any]:
    """Versions, aliases and runs as MLflow's API returns them to its admin."""
    auth = ("admin", password)
    base = f"{lab.mlflow}/api/2.0/mlflow"
    model = httpx.get(f"{base}/registered-models/get", params={"name": MODEL}, auth=auth, timeout=10)
    model.raise_for_status()
    versions = httpx.get(
        f"{base}/model-versions/search", params={"filter": f"name='{MODEL}'"}, auth=auth, timeout=10
    ).json()["model_versions"]
    experiments = httpx.post(f"{base}/experiments/search", json={"max_results": 100}, auth=auth, timeout=10)
    ids = [e["experiment_id"] for e in experiments.json()["experiments"]]
    runs = httpx.post(
        f"{base}/runs/search", json={"experiment_ids": ids, "max_results": 1000}, auth=auth, timeout=10
    )
    return {
        "aliases": sorted(
            (a["alias"], a["version"]) for a in model.json()["registered_model"].get("aliases", [])
        ),
        "versions": sorted((v["version"], v["run_id"], v["source"]) for v in versions),
        "runs": sorted((r["info"]["run_id"], r["info"]["status"]) for r in runs.json().get("runs", [])),
    }


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under ``root`` with its size, mode and mtime (to prove nothing was written)."""
    if not root.exists():
        return {}
    out = {}
    for path in [root, *root.rglob("*")]:
        info = path.lstat()
        out[str(path.relative_to(root))] = (info.st_size, info.st_mode, info.st_mtime_ns)
    return out


@dataclass
class Load:
    """Threads posting rows to the model server without pause; every failure kept."""

    lab: Lab
    token: str
    data: list[list[float]]
    failures: list[str] = field(default_factory=list)
    ok: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(2):
            thread = threading.Thread(target=self._post, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _post(self) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as client:
            body = {
                "inputs": [
                    {
                        "name": "input",
                        "datatype": "FP32",
                        "shape": [1, len(self.data[0])],
                        "data": self.data[:1],
                    }
                ]
            }
            while not self._stop.is_set():
                try:
                    reply = client.post(f"{self.lab.serving}/infer", json=body)
                    if reply.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{reply.status_code} {reply.text[:200]}")
                except httpx.HTTPError as err:
                    self.failures.append(repr(err))
                time.sleep(0.02)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("backup-lab")
    state = root / "state"
    lab = Lab(lab_answers(root / "appliance.yaml", state), state)
    try:
        lab.cli("up", timeout=900)
        lab.cli("data", "seed", "--dataset", MODEL)
        lab.cli("data", "seed", "--dataset", "wine")
        lab.cli("train", "--dataset", MODEL, timeout=900)
        lab.cli("train", "--dataset", MODEL, timeout=900)
        wait_for("the champion served", lambda: served_version(lab, lab.secret("serving_token")))
        yield lab
    finally:
        lab.cli("down", check=False, timeout=300)


@pytest.fixture(scope="module")
def archive(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A backup taken while the model server answers a steady load; no request may fail."""
    out = tmp_path_factory.mktemp("archives")
    token = lab.secret("serving_token")
    with Load(lab, token, rows(lab)) as load:
        time.sleep(1)
        result = json.loads(lab.cli("backup", "--to", str(out), "--json").stdout.strip().splitlines()[-1])
        time.sleep(1)
    assert load.failures == [], load.failures[:5]
    assert load.ok > 0
    print(
        f"\nbackup: {result['seconds']} s, archive {result['bytes']} bytes, "
        f"content {result['content_bytes']} bytes in {result['members']} files, parts {result['parts']}"
    )
    path = Path(result["path"])
    assert path.stat().st_mode & 0o777 == 0o600
    assert {"secrets", "mlflow-db", "mlflow", "data"} <= set(result["parts"])
    return path, result


def test_restore_serves_the_same_champion_with_the_same_tokens(
    lab: Lab, archive: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = archive
    token = lab.secret("serving_token")
    data = rows(lab)
    before = {
        "registry": registry(lab, lab.secret("mlflow_admin_password")),
        "answer": predict(lab, token, data),
    }
    assert len(before["registry"]["versions"]) == 2
    assert "champion" in dict(before["registry"]["aliases"])

    target = tmp_path / "restored"
    started = time.monotonic()
    lab.cli("restore", str(path), "--state-dir", str(target))
    print(f"restore: {time.monotonic() - started:.1f} s")
    answers = target / "appliance.yaml"
    assert answers.stat().st_mode & 0o777 == 0o600
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in (target / "secrets").iterdir())
    restored_answers = yaml.safe_load(answers.read_text())
    assert restored_answers["state_dir"] == str(target)
    restored_answers["ports"] = free_ports()  # the original stack still runs on its ports
    answers.write_text(yaml.safe_dump(restored_answers))
    twin = Lab(answers, target)
    try:
        started = time.monotonic()
        twin.cli("up", timeout=900)
        print(f"up after restore: {time.monotonic() - started:.1f} s")
        assert twin.secret("serving_token") == token
        wait_for("the restored champion served", lambda: served_version(twin, token))
        after = {
            "registry": registry(twin, lab.secret("mlflow_admin_password")),
            "answer": predict(twin, token, data),
        }
        assert after == before
        # The other accounts' passwords from the original stack work on the restored MLflow.
        for user, secret in (
            ("appliance-reader", "mlflow_reader_password"),
            ("appliance-writer", "mlflow_writer_password"),
        ):
            reply = httpx.get(
                f"{twin.mlflow}/api/2.0/mlflow/registered-models/get",
                params={"name": MODEL},
                auth=(user, lab.secret(secret)),
                timeout=10,
            )
            assert reply.status_code == 200, (user, reply.text)
        wrong = httpx.get(f"{twin.serving}", headers={"Authorization": "Bearer not-the-token"}, timeout=10)
        assert wrong.status_code == 401
    finally:
        twin.cli("down", check=False, timeout=300)


@pytest.mark.runtime("podman")
def test_restore_onto_podman_puts_the_data_where_its_containers_read_them(
    lab: Lab, archive: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """The local stack's archive restored with ``--runtime podman``: MLflow's folder lands in the
    stack's ``mlflow`` volume, and MLflow in its container serves the same registry to the same
    passwords. (MLflow alone: the serving image's build does not fit this test's time.)"""
    from tests.conftest import use_runtime
    from tests.integration._container_fixtures import ensure_images

    use_runtime("podman")
    ensure_images("podman", ("mlflow",))
    path, _ = archive
    password = lab.secret("mlflow_admin_password")
    before = registry(lab, password)
    target = tmp_path / "on-podman"
    lab.cli("restore", str(path), "--state-dir", str(target), "--runtime", "podman")
    answers = target / "appliance.yaml"
    data = yaml.safe_load(answers.read_text())
    assert data["runtime"] == "podman"
    data["ports"] = free_ports()
    data["components"] = {
        "workbench": False,
        "monitoring": False,
        "controller": False,
        "serving": False,
        "dashboards": False,
    }
    answers.write_text(yaml.safe_dump(data))
    twin = Lab(answers, target)
    assert not (target / "mlflow").exists()  # it went into the volume, not the state directory
    try:
        twin.cli("up", timeout=900)
        assert registry(twin, password) == before
        # And back: a backup of the podman stack reads MLflow from its volume.
        again = json.loads(twin.cli("backup", "--to", f"{tmp_path}/again/", "--json").stdout.splitlines()[-1])
        assert again["parts"]["mlflow-db"]["files"] == 2 and again["parts"]["mlflow"]["files"] > 0
    finally:
        twin.cli("down", "--purge", "--yes", check=False, timeout=300)


def test_damaged_archives_are_refused_before_anything_is_touched(
    lab: Lab, archive: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = archive
    blob = path.read_bytes()
    flipped = bytearray(blob)
    flipped[len(blob) // 2] ^= 0x01
    damaged = {"flipped": bytes(flipped), "truncated": blob[: len(blob) * 2 // 3]}
    target = tmp_path / "target"
    (target / "secrets").mkdir(parents=True)
    (target / "secrets" / "serving_token").write_text("the old token")
    before = tree(target)
    for kind, content in damaged.items():
        bad = tmp_path / f"{kind}.tar.gz"
        bad.write_bytes(content)
        verify = lab.cli("backup", "verify", str(bad), check=False)
        assert verify.returncode == 2, (kind, verify.stdout, verify.stderr)
        assert str(bad) in verify.stderr and "fix:" in verify.stderr
        proc = lab.cli("restore", str(bad), "--state-dir", str(target), "--yes", check=False)
        assert proc.returncode == 2, (kind, proc.stderr)
        assert tree(target) == before, kind
        fresh = tmp_path / f"fresh-{kind}"
        assert lab.cli("restore", str(bad), "--state-dir", str(fresh), check=False).returncode == 2
        assert not fresh.exists()
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".appliance-restore-")]


def test_restore_never_replaces_a_running_stack(lab: Lab, archive: tuple[Path, dict[str, Any]]) -> None:
    path, _ = archive
    secrets = tree(lab.state / "secrets")
    proc = lab.cli("restore", str(path), "--state-dir", str(lab.state), "--yes", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "is running" in proc.stderr and "down" in proc.stderr
    assert tree(lab.state / "secrets") == secrets
    assert served_version(lab, lab.secret("serving_token"))


def test_encrypted_archive_needs_its_passphrase(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "pass").write_text("correct horse battery staple\n")
    (tmp_path / "wrong").write_text("incorrect\n")
    out = tmp_path / "enc"
    result = json.loads(
        lab.cli(
            "backup", "--to", f"{out}/", "--passphrase-file", str(tmp_path / "pass"), "--json"
        ).stdout.splitlines()[-1]
    )
    path = Path(result["path"])
    assert path.name.endswith(".enc") and path.stat().st_mode & 0o777 == 0o600
    assert b"serving_token" not in path.read_bytes()
    for args in ([], ["--passphrase-file", str(tmp_path / "wrong")]):
        proc = lab.cli("backup", "verify", str(path), *args, check=False)
        assert proc.returncode == 2, proc.stderr
        proc = lab.cli("restore", str(path), "--state-dir", str(tmp_path / "r"), *args, check=False)
        assert proc.returncode == 2 and not (tmp_path / "r").exists(), proc.stderr
    proc = lab.cli("backup", "verify", str(path), "--passphrase-file", str(tmp_path / "pass"))
    assert "match the manifest" in proc.stdout


def test_list_and_verify_write_nothing(
    lab: Lab, archive: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    path, _ = archive
    empty = tmp_path / "no-state"

    # The running stack writes its logs and databases all the time: watch what these commands
    # could write (the archive folder, the state's top level, its secrets and backups folder).
    def watched() -> object:
        top = sorted(p.name for p in lab.state.iterdir() if not p.name.endswith("-journal"))
        return tree(path.parent), top, tree(lab.state / "secrets"), tree(lab.state / "backups")

    before = watched()
    listed = lab.cli("backup", "list", "--in", str(path.parent), "--json")
    rows = json.loads(listed.stdout)
    assert rows[0]["path"] == str(path) and rows[0]["appliance_version"]
    assert "no backups" in lab.cli("backup", "list").stdout  # STATE/backups: none there, none made
    lab.cli("backup", "verify", str(path))
    run_cli("--state-dir", str(empty), "backup", "list")
    run_cli("--state-dir", str(empty), "backup", "verify", str(path))
    assert not empty.exists()
    assert watched() == before


def test_an_older_appliance_refuses_a_newer_state(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "state.json").write_text(json.dumps({"appliance_version": "99.0.0", "state_format": 1}))
    answers = lab_answers(tmp_path / "appliance.yaml", state)
    proc = run_cli("--answers", str(answers), "up", check=False, env={"APPLIANCE_STATE_DIR": ""})
    assert proc.returncode == 2, proc.stderr
    assert "99.0.0" in proc.stderr and "restore a backup" in proc.stderr
    assert sorted(p.name for p in state.iterdir()) in (["state.json"], [".lock", "state.json"])
