"""The upgrade's MLflow migration step judged by its outcome: a failing ``mlflow db upgrade`` and
one that exits 0 but leaves the database short of the new head both stop the upgrade, naming why;
a running MLflow is stopped first. A stand-in ``mlflow`` script plays the release's MLflow and a
stand-in runtime the stack (the real migration runs in
tests/integration/test_upgrade_migration.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.errors import ApplianceError
from appliance.upgrade.releases import Release
from appliance.upgrade.run import migrate_tracking_db, stop_tracking_server


def _release(root: Path, script: str) -> Release:
    mlflow = root / "venv" / "bin" / "mlflow"
    mlflow.parent.mkdir(parents=True)
    mlflow.write_text("#!/bin/sh\n" + script)
    mlflow.chmod(0o755)
    return Release("9.9.9", root)


def _db(path: Path, revision: str) -> Path:
    con = sqlite3.connect(path)
    with con:
        con.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        con.execute("INSERT INTO alembic_version VALUES (?)", (revision,))
    con.close()
    return path


def test_a_failing_migration_names_its_output(tmp_path: Path) -> None:
    release = _release(tmp_path, 'echo "sqlite3.OperationalError: database is locked" >&2\nexit 1\n')
    said: list[str] = []
    with pytest.raises(ApplianceError) as err:
        migrate_tracking_db(release, _db(tmp_path / "mlflow.db", "old1"), "new2", said.append)
    assert "exited 1" in str(err.value) and "database is locked" in str(err.value)
    assert said == ["mlflow: migrating the tracking database's schema old1 -> new2"]


def test_a_migration_that_stops_short_of_the_head_is_a_failure(tmp_path: Path) -> None:
    release = _release(tmp_path, "exit 0\n")
    with pytest.raises(ApplianceError, match="at revision old1, not new2"):
        migrate_tracking_db(release, _db(tmp_path / "mlflow.db", "old1"), "new2", lambda _: None)


def test_the_release_mlflow_gets_the_database_uri(tmp_path: Path) -> None:
    db = _db(tmp_path / "mlflow.db", "old1")
    bump = tmp_path / "bump.py"
    bump.write_text(
        "import sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1])\n"
        "con.execute(\"UPDATE alembic_version SET version_num = 'new2'\")\n"
        "con.commit()\n"
    )
    script = f'[ "$1 $2 $3" = "db upgrade sqlite:///{db}" ] || exit 3\nexec python3 {bump} {db}\n'
    said: list[str] = []
    migrate_tracking_db(_release(tmp_path, script), db, "new2", said.append)
    assert said[-1] == "mlflow: the tracking database is at schema new2"


class _Runtime:
    def __init__(self, running: bool) -> None:
        self.running = running
        self.stopped: list[str] = []

    def observe(self) -> dict[str, Any]:
        return {"mlflow": SimpleNamespace(running=self.running)}

    def stop(self, name: str) -> None:
        self.stopped.append(name)


@pytest.mark.parametrize("running", [True, False])
def test_a_running_mlflow_is_stopped_before_the_migration(
    running: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import appliance.runtimes

    runtime = _Runtime(running)
    monkeypatch.setattr(appliance.runtimes, "get_runtime", lambda ctx: runtime)
    said: list[str] = []
    stop_tracking_server(SimpleNamespace(), said.append)  # type: ignore[arg-type]
    assert runtime.stopped == (["mlflow"] if running else [])
    assert bool(said) == running
