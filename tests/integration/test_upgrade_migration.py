"""``appliance upgrade --current-bundle OLD --bundle NEW`` migrates MLflow's tracking database.

Both releases of the upgrade test share one set of Python packages, so MLflow's schema never
changes there. Here the tracking database is at an older schema revision, as an older MLflow left
it: built with MLflow's own migration scripts (alembic) up to ``OLD_REVISION``, which is what
that MLflow ran (a migration history is append-only), then filled with an experiment and runs
through plain SQL at that schema. The stack (MLflow and the bundled SeaweedFS holding its
artifacts) is described by release tarballs made in the test from the working tree: the running
version (a pre-release of this one), this version, and a broken later one.

The upgrade shows the schema change, takes its backup (the database at the old revision), runs
``mlflow db upgrade`` with the new release's MLflow, and brings MLflow up on the migrated
database, which would refuse to start on the old one: the runs, their parameters and metrics
come back from its API. A ``--current-bundle`` of another version than the state's is refused
and removed. Then an upgrade to a release whose store never becomes healthy rolls back by itself:
the restore of its backup starts SeaweedFS alone to put the objects back, and this version runs
again with the same runs and objects.
"""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from appliance.upgrade import releases
from tests.conftest import free_ports, run_cli
from tests.integration.test_backup_restore import Lab
from tests.integration.test_restore_seaweedfs import objects, store

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
REPO = Path(__file__).resolve().parents[2]
NEW = releases.source_version(REPO)
OLD = f"{NEW}.dev0"
"""The running version: a pre-release of this one (older, as ``packaging`` orders versions)."""
OLD_REVISION = "acf3f17fdcc7"
"""MLflow's schema revision "add storage location field to model versions" (MLflow 2.13)."""
RUNS = {"0a1b2c3d4e5f60718293a4b5c6d7e8f9": 0.91, "1f2e3d4c5b6a79880716a5b4c3d2e1f0": 0.87}
"""Run id -> the accuracy metric logged for it."""


def release_tarball(path: Path, version: str, stack: Callable[[str], str] | None = None) -> Path:
    """A release tarball of the working tree (as ``git archive`` lays it out) declaring ``version``;
    ``stack`` rewrites its stacks/services.yaml."""
    replaced = {"appliance/__init__.py": (REPO / "appliance" / "__init__.py").read_text()}
    replaced["appliance/__init__.py"] = releases.VERSION_RE.sub(
        f'__version__ = "{version}"', replaced["appliance/__init__.py"]
    )
    if stack is not None:
        replaced["stacks/services.yaml"] = stack((REPO / "stacks" / "services.yaml").read_text())

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        inside = info.name.split("/", 1)[-1]
        return None if "__pycache__" in info.name or inside in replaced else info

    with tarfile.open(path, "w:gz") as tar:
        for name in ("appliance", "tui", "stacks", "pyproject.toml"):
            tar.add(REPO / name, arcname=f"appliance-{version}/{name}", filter=keep)
        for name, text in replaced.items():
            data = text.encode()
            info = tarfile.TarInfo(f"appliance-{version}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def broken_store(stack: str) -> str:
    """The local SeaweedFS command with a flag weed refuses: the store never becomes healthy."""
    flag = '"-metricsPort={ports.seaweedfs_metrics}"]'
    assert stack.count(flag) == 2  # the local command first, then the containers'
    return stack.replace(flag, flag[:-1] + ', "-no-such-flag"]', 1)


def old_tracking_db(db: Path) -> None:
    """MLflow's tables at ``OLD_REVISION`` with one experiment and the runs of ``RUNS``."""
    from alembic import command
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base
    from sqlalchemy import create_engine

    db.parent.mkdir(parents=True, mode=0o700)
    engine = create_engine(f"sqlite:///{db}")
    Base.metadata.create_all(engine)
    config = _get_alembic_config(str(engine.url))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, OLD_REVISION)
    engine.dispose()
    con = sqlite3.connect(db)
    with con:
        for eid, name in ((0, "Default"), (1, "legacy")):
            con.execute(
                "INSERT INTO experiments (experiment_id, name, artifact_location, lifecycle_stage, "
                "creation_time, last_update_time) VALUES (?, ?, ?, 'active', 1700000000000, 1700000000000)",
                (eid, name, f"mlflow-artifacts:/{eid}"),
            )
        for run, accuracy in RUNS.items():
            con.execute(
                "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
                "status, start_time, end_time, source_version, lifecycle_stage, artifact_uri, "
                "experiment_id) VALUES (?, ?, 'LOCAL', '', '', 'appliance-writer', 'FINISHED', "
                "1700000000000, 1700000060000, '', 'active', ?, 1)",
                (run, f"run-{run[:4]}", f"mlflow-artifacts:/1/{run}/artifacts"),
            )
            con.execute("INSERT INTO params VALUES ('epochs', '20', ?)", (run,))
            con.execute("INSERT INTO metrics VALUES ('accuracy', ?, 1700000050000, ?, 0, 0)", (accuracy, run))
            con.execute(
                "INSERT INTO latest_metrics VALUES ('accuracy', ?, 1700000050000, 0, 0, ?)", (accuracy, run)
            )
    con.close()
    db.chmod(0o600)


def revision(db: Path) -> str:
    con = sqlite3.connect(db)
    try:
        return str(con.execute("SELECT version_num FROM alembic_version").fetchone()[0])
    finally:
        con.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, Path, Path]]:
    """A state directory written by OLD (its stamp, its tracking database), stack down; the
    running version's and this version's tarballs."""
    root = tmp_path_factory.mktemp("migration")
    state = root / "state"
    state.mkdir(mode=0o700)
    (state / "state.json").write_text(json.dumps({"appliance_version": OLD, "state_format": 1}))
    old_tracking_db(state / "mlflow" / "mlflow.db")
    answers = root / "appliance.yaml"
    off = ("workbench", "monitoring", "serving", "controller", "dashboards")
    answers.write_text(
        yaml.safe_dump(
            {
                "profile": "lab",
                "state_dir": str(state),
                "ports": free_ports(),
                "health_timeout_seconds": 240,
                "object_store": {"kind": "seaweedfs"},
                "components": dict.fromkeys(off, False),
            }
        )
    )
    lab = Lab(answers, state)
    old = release_tarball(root / "old.tar.gz", OLD)
    new = release_tarball(root / "new.tar.gz", NEW)
    try:
        yield lab, old, new
    finally:
        lab.cli("down", check=False, timeout=300)


def test_a_current_bundle_of_another_version_is_refused(stack: tuple[Lab, Path, Path]) -> None:
    lab, _old, new = stack
    proc = lab.cli("upgrade", "--current-bundle", str(new), "--dry-run", check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"is appliance {NEW}, but {lab.state} was written by {OLD}" in proc.stderr, proc.stderr
    assert "fix:" in proc.stderr
    assert releases.installed(lab.state) == {}
    assert releases.active(lab.state) is None


def test_upgrade_migrates_the_tracking_database_and_keeps_the_runs(stack: tuple[Lab, Path, Path]) -> None:
    lab, old, new = stack
    db = lab.state / "mlflow" / "mlflow.db"
    dry = lab.cli("upgrade", "--current-bundle", str(old), "--bundle", str(new), "--dry-run")
    assert f"upgrade {OLD} -> {NEW}" in dry.stdout, dry.stdout
    head = releases.probe(releases.get(lab.state, NEW))["mlflow_schema_head"]
    assert head and head != OLD_REVISION
    schema = next(line for line in dry.stdout.splitlines() if "mlflow-schema" in line)
    assert OLD_REVISION in schema and str(head) in schema, schema
    assert revision(db) == OLD_REVISION  # a dry run migrates nothing
    assert releases.active(lab.state) == releases.get(lab.state, OLD)

    started = time.monotonic()
    proc = lab.cli("upgrade", "--bundle", str(new), "--yes", check=False, timeout=900)
    print(f"\nupgrade with MLflow's migration ({OLD_REVISION} -> {head}): {time.monotonic() - started:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"migrating the tracking database's schema {OLD_REVISION} -> {head}" in proc.stderr
    assert revision(db) == head
    journal = json.loads((lab.state / "upgrade.json").read_text())
    assert journal["phase"] == "done"
    assert releases.active(lab.state) == releases.get(lab.state, NEW)
    # The rollback point holds the database as it was: at the old revision.
    verify = lab.cli("backup", "verify", journal["backup"])
    assert f"(schema {OLD_REVISION})" in verify.stdout, verify.stdout

    auth = ("admin", lab.secret("mlflow_admin_password"))
    base = f"{lab.mlflow}/api/2.0/mlflow"
    reply = httpx.post(f"{base}/runs/search", json={"experiment_ids": ["1"]}, auth=auth, timeout=30)
    assert reply.status_code == 200, reply.text
    found: dict[str, Any] = {r["info"]["run_id"]: r["data"] for r in reply.json()["runs"]}
    assert set(found) == set(RUNS)
    for run, accuracy in RUNS.items():
        assert {m["key"]: m["value"] for m in found[run]["metrics"]} == {"accuracy": accuracy}
        assert {p["key"]: p["value"] for p in found[run]["params"]} == {"epochs": "20"}
    second = run_cli("upgrade", "--dry-run", answers=lab.answers, state=lab.state, check=False)
    assert second.returncode == 1 and f"already runs appliance {NEW}" in second.stderr, second.stderr


def test_a_failing_upgrade_of_a_seaweedfs_stack_rolls_back_with_its_objects(
    stack: tuple[Lab, Path, Path], tmp_path: Path
) -> None:
    lab, _old, _new = stack
    if releases.active(lab.state) != releases.get(lab.state, NEW):
        pytest.skip("the migration's upgrade before it did not finish")
    store(lab, "writer").put_object(Bucket="datasets", Key="wine/wine.csv", Body=b"a,b,target\n1,2,0\n")
    before = {"objects": objects(lab), "runs": _runs(lab)}
    assert "datasets/wine/wine.csv" in before["objects"] and set(before["runs"]) == set(RUNS)
    broken = release_tarball(tmp_path / "broken.tar.gz", f"{NEW}.post1", broken_store)
    started = time.monotonic()
    proc = lab.cli("upgrade", "--bundle", str(broken), "--yes", check=False, timeout=900)
    print(f"failed upgrade of the SeaweedFS stack and its rollback: {time.monotonic() - started:.1f} s")
    assert proc.returncode == 5, proc.stdout + proc.stderr
    assert "rolled back" in proc.stderr and "seaweedfs" in proc.stderr, proc.stderr
    assert json.loads((lab.state / "upgrade.json").read_text())["phase"] == "rolled-back"
    assert releases.active(lab.state) == releases.get(lab.state, NEW)
    assert {"objects": objects(lab), "runs": _runs(lab)} == before


def _runs(lab: Lab) -> dict[str, Any]:
    auth = ("admin", lab.secret("mlflow_admin_password"))
    reply = httpx.post(
        f"{lab.mlflow}/api/2.0/mlflow/runs/search", json={"experiment_ids": ["1"]}, auth=auth, timeout=30
    )
    assert reply.status_code == 200, reply.text
    return {r["info"]["run_id"]: r["data"] for r in reply.json()["runs"]}
