"""``appliance data import`` from SQLite (a real file, no server) and the ingest step's refresh.

The same code path as PostgreSQL from the version onwards (tests/integration/test_data_import_db.py
covers the server): the result lands as a Parquet version the trainer's checks accept, an identical
result writes nothing, new rows make a new version that ingest pins, and every bad input exits
non-zero with its message while the newest version and the saved query stay as they were.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.dataconn import DataConnection, read_dataset, write_dataset
from appliance.dataconn.dbimport import load_saved, stored_password
from appliance.errors import ApplianceError
from appliance.pipelines.ingest import ingest
from appliance.pipelines.model import action_problems
from appliance.secrets_store import SecretStore


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A filesystem-store answers file and an SQLite ``wine.db`` holding 150 of wine's rows."""
    from sklearn.datasets import load_wine

    (tmp_path / "appliance.yaml").write_text('{"object_store": {"kind": "filesystem"}}')
    frame = load_wine(as_frame=True).frame.rename(columns={"target": "cultivar"})
    with sqlite3.connect(tmp_path / "wine.db") as db:
        frame.iloc[:150].to_sql("wine", db, index=False)
        frame.iloc[150:].to_sql("later", db, index=False)
        db.execute("CREATE TABLE mixed (a, b)")
        db.executemany("INSERT INTO mixed VALUES (?, ?)", [(1, "x"), ("y", 2)])
    return tmp_path


FOREVER = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT max(i) FROM n"
"""A query that never ends (SQLite has no statement timeout; the import's progress handler stops it)."""


def appliance(home: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI in-process against ``home``; (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(["--answers", str(home / "appliance.yaml"), "--state-dir", str(home / "state"), *args])
        code = 0
    except SystemExit as done:
        code = int(done.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def connection(home: Path) -> DataConnection:
    return DataConnection.from_env(
        {"APPLIANCE_DATA_KIND": "filesystem", "APPLIANCE_DATA_ROOT": str(home / "state" / "data")}
    )


def versions(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "state" / "data" / "datasets" / "wine").glob("*.parquet"))


def import_wine(home: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str, str]:
    url = f"sqlite:///{home / 'wine.db'}"
    return appliance(home, capsys, "data", "import", "--dataset", "wine", "--from", url, *extra)


def test_a_query_becomes_a_parquet_version_the_trainer_accepts(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.workloads.trainer import schema

    code, out, err = import_wine(
        home, capsys, "--query", "SELECT * FROM wine", "--target", "cultivar", "--json"
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["written"] and result["rows"] == 150 and result["columns"] == 14
    loaded = read_dataset(connection(home), "wine")
    assert loaded.key == result["key"] and loaded.sha256 == result["sha256"]
    assert loaded.key.startswith("wine/wine-") and loaded.key.endswith(".parquet")
    assert list(loaded.frame.columns)[-1] == "cultivar" and len(loaded.frame) == 150
    spec = schema.validate(loaded.frame, "wine")
    assert spec.target == "cultivar" and spec.task == "classification" and len(spec.features) == 13
    saved = load_saved(connection(home), "wine")
    assert saved is not None and saved.url == f"sqlite:///{home / 'wine.db'}" and saved.target == "cultivar"

    code, out, _ = import_wine(home, capsys, "--query", "SELECT * FROM wine", "--target", "cultivar")
    assert code == 0 and "unchanged, same as the newest version" in out and len(versions(home)) == 1

    with sqlite3.connect(home / "wine.db") as db:
        db.execute("INSERT INTO wine SELECT * FROM later")
    code, out, _ = import_wine(home, capsys, "--query", "SELECT * FROM wine", "--target", "cultivar")
    assert code == 0 and "(written; 178 rows" in out and len(versions(home)) == 2
    newest = read_dataset(connection(home), "wine")
    assert newest.key != loaded.key and len(newest.frame) == 178


def test_bad_input_exits_non_zero_and_changes_nothing(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert import_wine(home, capsys, "--query", "SELECT * FROM wine")[0] == 0
    before = versions(home)
    saved_before = load_saved(connection(home), "wine")
    url = f"sqlite:///{home / 'wine.db'}"
    cases: list[tuple[list[str], str]] = [
        (["--query", "SELECT * FROM mixed"], "column 'a' (sqlite value) holds values Parquet cannot store"),
        (["--query", "SELECT * FROM wine WHERE cultivar > 9"], "returned no rows"),
        (["--query", "DELETE FROM wine"], "the query tries to change"),
        (["--query", "SELECT * FROM nowhere"], "no such table: nowhere"),
        (["--query", "  "], "the query is empty"),
        (["--query", "SELECT * FROM wine", "--max-rows", "10"], "more than 10 rows"),
        (["--query", "SELECT * FROM wine", "--target", "colour"], "--target 'colour' is not a column"),
        (["--query", "SELECT * FROM wine", "--connection", "a.b"], "connection name 'a.b' is not valid"),
        (["--query", "SELECT * FROM wine", "--max-mb", "1", "--query-file", "-"], "exactly one of --query"),
        (["--query", f"{FOREVER}", "--timeout", "1"], "ran past 1 s"),
    ]
    for args, message in cases:
        code, _, err = import_wine(home, capsys, *args)
        assert code == 2 and message in err, (args, code, err)
    other = [
        (["--from", "sqlite:///missing.db"], "no SQLite database at"),
        (["--from", "mysql://u@h/db"], "is not a database URL this appliance reads"),
        (["--from", "postgresql://u:hunter2@h/db"], "holds a password"),
        (
            ["--from", url, "--password-file", str(home / "appliance.yaml")],
            "a password was given for a SQLite",
        ),
        (["--from", url, "--password-file", str(home / "wine.db")], "is not UTF-8 text"),
    ]
    for args, message in other:
        code, _, err = appliance(
            home, capsys, "data", "import", "--dataset", "wine", "--query", "SELECT 1", *args
        )
        assert code == 2 and message in err and "hunter2" not in err, (args, err)
    code, _, err = appliance(
        home, capsys, "data", "import", "--dataset", "../up", "--from", url, "--query", "SELECT 1"
    )
    assert code == 2 and "dataset name '../up' is not a valid name" in err
    assert not (home / "up").exists() and not (home / "state" / "data" / "up").exists()
    assert versions(home) == before and load_saved(connection(home), "wine") == saved_before
    assert not (home / "state" / "secrets").exists()  # no password was ever stored


def test_ingest_refresh_reruns_the_saved_query_only_when_asked(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pandas as pd

    conn, state = connection(home), home / "state"
    env = {"APPLIANCE_DATA_KIND": "filesystem", "APPLIANCE_DATA_ROOT": str(state / "data")}
    write_dataset(conn, "plain", pd.DataFrame({"x": [1.0, 2.0], "target": [0, 1]}))
    assert ingest(env, "plain", home / "w1", "auto", state) == "plain/plain.csv"  # no saved query: as before
    with pytest.raises(ApplianceError, match="dataset 'plain' has no saved query"):
        ingest(env, "plain", home / "w2", "true", state)

    assert import_wine(home, capsys, "--query", "SELECT * FROM wine")[0] == 0
    first = versions(home)
    with sqlite3.connect(home / "wine.db") as db:
        db.execute("INSERT INTO wine SELECT * FROM later")
    assert (
        ingest(env, "wine", home / "w3", "false", state) == f"wine/{first[0]}"
    )  # the snapshot, not the table
    assert versions(home) == first
    pinned = ingest(env, "wine", home / "w4", "auto", state)
    assert len(versions(home)) == 2 and pinned == f"wine/{versions(home)[-1]}"
    assert (home / "w4" / "dataset_key.txt").read_text().strip() == pinned
    assert len(read_dataset(conn, "wine", pinned).frame) == 178
    assert ingest(env, "wine", home / "w5", "true", state) == pinned  # same rows again: no third copy
    assert len(versions(home)) == 2


def test_the_ingest_step_checks_its_args_and_passes_refresh_on() -> None:
    from appliance.pipelines.model import Step
    from appliance.pipelines.stepexec import command_for

    ok = {"name": "ingest", "builtin": "ingest", "args": {"dataset": "wine", "refresh": "{params.refresh}"}}
    assert action_problems(ok) == []
    assert action_problems({**ok, "args": {"dataset": "wine", "refresh": "sometimes"}}) == [
        "args.refresh 'sometimes' must be one of auto, true, false"
    ]
    assert action_problems({**ok, "args": {"dataset": "wine", "refesh": "true"}}) == [
        "builtin ingest takes args dataset, refresh, not refesh"
    ]
    step = Step.model_validate({**ok, "args": {"dataset": "wine", "refresh": "TRUE"}})
    argv = command_for(step, Path("p.yaml"), Path("/w"), {"state_dir": "/state"}.__getitem__)
    assert argv[argv.index("--refresh") + 1] == "true" and argv[argv.index("--state-dir") + 1] == "/state"


def test_a_missing_password_is_never_generated(tmp_path: Path) -> None:
    store = SecretStore(tmp_path / "secrets")
    assert stored_password(store, "warehouse") is None and store.names() == []
    store.put("db_warehouse_password", "s3cret")
    assert stored_password(store, "warehouse") == "s3cret"
